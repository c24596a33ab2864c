//! The status server: `/healthz` (the sidecar's own liveness), `/readyz`
//! (ready once a role is decided; a passive pod is ready), `/status` (JSON),
//! `/metrics` (Prometheus text) and `/prestop` (the app containers' injected
//! preStop hook: answers once a deleted active pod has drained).

use axum::{
    Json, Router,
    extract::State,
    http::{StatusCode, header},
    response::IntoResponse,
    routing::get,
};
use std::time::Duration;

use tokio::sync::watch;

use crate::{
    contract::{Role, Status},
    metrics::Metrics,
};

#[derive(Clone)]
struct AppState {
    status: watch::Receiver<Status>,
    metrics: Metrics,
    prestop_bound: Duration,
}

/// `prestop_bound`: the longest `/prestop` holds a request (kubelet runs the
/// hook before it sends the app SIGTERM, within the grace period).
pub fn router(
    status: watch::Receiver<Status>,
    metrics: Metrics,
    prestop_bound: Duration,
) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/status", get(status_json))
        .route("/metrics", get(metrics_text))
        .route("/prestop", get(prestop))
        .with_state(AppState {
            status,
            metrics,
            prestop_bound,
        })
}

/// What `/prestop` waits for, as the status says it.
fn prestop_answer(s: &Status) -> Option<&'static str> {
    let active = s.role == Some(Role::Active) || s.label_role == Some(Role::Active);
    match (s.terminating, s.draining) {
        (true, false) => Some("handed over\n"),
        (false, _) if !active => Some("not active\n"),
        // Active and not yet told of the deletion (kubelet may call before
        // the pod watch says so), or draining.
        _ => None,
    }
}

/// Holds the app's preStop hook while its pod drains (`docs/design.md`,
/// rule 8), so that the app stops only once clients are sent elsewhere.
async fn prestop(State(s): State<AppState>) -> (StatusCode, String) {
    let mut status = s.status.clone();
    let waited = tokio::time::timeout(
        s.prestop_bound,
        status.wait_for(|st| prestop_answer(st).is_some()),
    )
    .await;
    match waited {
        Ok(Ok(st)) => (
            StatusCode::OK,
            prestop_answer(&st).unwrap_or_default().to_owned(),
        ),
        // The candidate ended (SIGTERM): nothing left to wait for.
        Ok(Err(_)) => (StatusCode::OK, "sidecar stopping\n".to_owned()),
        Err(_) => (
            StatusCode::OK,
            format!(
                "no handover within {:?}; the app stops now\n",
                s.prestop_bound
            ),
        ),
    }
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
    use crate::testing::get;

    #[tokio::test]
    async fn readiness_waits_for_a_role_and_passive_is_ready() {
        let (tx, rx) = watch::channel(Status::default());
        let app = router(rx, Metrics::new(), Duration::from_secs(5));
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
        let (code, body) = get(
            router(rx, Metrics::new(), Duration::from_secs(5)),
            "/status",
        )
        .await;
        assert_eq!(code, StatusCode::OK);
        let v: serde_json::Value = serde_json::from_str(&body).expect("json");
        assert_eq!(v["role"], "active");
        assert_eq!(v["holder"], "web-0");
        assert_eq!(v["lease_transitions"], 4);
    }

    /// The app's preStop hook: at once on a passive pod; on the active one,
    /// held until its deletion is known and its drain is over.
    #[tokio::test]
    async fn prestop_answers_a_passive_pod_at_once_and_an_active_one_once_drained() {
        let (tx, rx) = watch::channel(Status {
            role: Some(Role::Passive),
            label_role: Some(Role::Passive),
            ..Status::default()
        });
        let app = router(rx, Metrics::new(), Duration::from_secs(30));
        assert_eq!(
            get(app.clone(), "/prestop").await,
            (StatusCode::OK, "not active\n".into())
        );

        tx.send_modify(|s| {
            s.role = Some(Role::Active);
            s.label_role = Some(Role::Active);
        });
        let held = tokio::spawn(get(app.clone(), "/prestop"));
        tokio::time::sleep(Duration::from_millis(50)).await;
        // Deleted: no longer leading, still labelled active, draining.
        tx.send_modify(|s| {
            s.role = Some(Role::Passive);
            s.terminating = true;
            s.draining = true;
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!held.is_finished(), "held while the pod drains");
        tx.send_modify(|s| s.draining = false);
        assert_eq!(
            held.await.expect("answered"),
            (StatusCode::OK, "handed over\n".into())
        );
    }

    #[tokio::test]
    async fn prestop_lets_the_app_stop_after_its_bound() {
        let (_tx, rx) = watch::channel(Status {
            role: Some(Role::Active),
            ..Status::default()
        });
        let app = router(rx, Metrics::new(), Duration::from_millis(100));
        let (code, body) = get(app, "/prestop").await;
        assert_eq!(code, StatusCode::OK);
        assert!(body.starts_with("no handover within"), "{body}");
    }
}
