//! The status server: `/healthz` (the sidecar's own liveness), `/readyz`
//! (ready once a role is decided; a passive pod is ready), `/status` (JSON)
//! and `/metrics` (Prometheus text).

use axum::{
    Json, Router,
    extract::State,
    http::{StatusCode, header},
    response::IntoResponse,
    routing::get,
};
use serde::Serialize;
use tokio::sync::watch;

use crate::metrics::Metrics;

/// The role a pod carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Active,
    Passive,
}

/// What `/status` shows.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Status {
    pub pod: String,
    pub namespace: String,
    pub pod_ip: Option<String>,
    pub lease: String,
    /// The role to act on: active only while labelled active and within the
    /// leadership deadline (`election::outward_role`), so a holder past its
    /// deadline says passive even while its label cannot be changed. None
    /// until the first decision.
    pub role: Option<Role>,
    /// The role label on the pod as last seen (None: no or a foreign value).
    /// It lags `role` while the API server refuses or misses the relabel.
    pub label_role: Option<Role>,
    pub holder: Option<String>,
    /// Why no pod of the group can hold the Lease now, if that is so: it is
    /// held by something that is not a pod of the group.
    pub lease_problem: Option<String>,
    pub app_healthy: bool,
    pub app_last_failure: Option<String>,
    pub lease_transitions: i32,
    /// Whether the last Kubernetes API call succeeded.
    pub api_reachable: bool,
    /// Wall-clock time of the last role change (RFC 3339), for people.
    pub last_change: Option<String>,
    pub terminating: bool,
}

#[derive(Clone)]
struct AppState {
    status: watch::Receiver<Status>,
    metrics: Metrics,
}

pub fn router(status: watch::Receiver<Status>, metrics: Metrics) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/status", get(status_json))
        .route("/metrics", get(metrics_text))
        .with_state(AppState { status, metrics })
}

async fn readyz(State(s): State<AppState>) -> (StatusCode, String) {
    match s.status.borrow().role {
        Some(role) => (StatusCode::OK, format!("ready: {role:?}\n").to_lowercase()),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "no role decided yet\n".into(),
        ),
    }
}

async fn status_json(State(s): State<AppState>) -> Json<Status> {
    Json(s.status.borrow().clone())
}

async fn metrics_text(State(s): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.encode(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::{Body, to_bytes};
    use axum::http::Request;
    use tower::ServiceExt;

    async fn get(router: Router, path: &str) -> (StatusCode, String) {
        let res = router
            .oneshot(Request::get(path).body(Body::empty()).expect("request"))
            .await
            .expect("infallible");
        let code = res.status();
        let body = to_bytes(res.into_body(), 1 << 20).await.expect("body");
        (code, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn readiness_waits_for_a_role_and_passive_is_ready() {
        let (tx, rx) = watch::channel(Status::default());
        let app = router(rx, Metrics::new());
        assert_eq!(
            get(app.clone(), "/readyz").await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(get(app.clone(), "/healthz").await.0, StatusCode::OK);
        tx.send_modify(|s| s.role = Some(Role::Passive));
        assert_eq!(
            get(app.clone(), "/readyz").await,
            (StatusCode::OK, "ready: passive\n".into())
        );
    }

    #[tokio::test]
    async fn status_is_json_with_role_and_holder() {
        let (tx, rx) = watch::channel(Status::default());
        tx.send_modify(|s| {
            s.role = Some(Role::Active);
            s.holder = Some("web-0".into());
            s.lease_transitions = 4;
        });
        let (code, body) = get(router(rx, Metrics::new()), "/status").await;
        assert_eq!(code, StatusCode::OK);
        let v: serde_json::Value = serde_json::from_str(&body).expect("json");
        assert_eq!(v["role"], "active");
        assert_eq!(v["holder"], "web-0");
        assert_eq!(v["lease_transitions"], 4);
    }
}
