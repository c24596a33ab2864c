//! The plain-HTTP router for the kubelet and Prometheus: `/healthz`, `/metrics`.

use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};

use crate::metrics::Metrics;

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

pub fn router(metrics: Metrics) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(metrics_text))
        .with_state(metrics)
}

async fn metrics_text(State(metrics): State<Metrics>) -> Response {
    match metrics.encode() {
        Ok(text) => ([(header::CONTENT_TYPE, OPENMETRICS)], text).into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use baton_sidecar::testing::get as get_text;

    use super::*;
    use crate::metrics::{Operation, Outcome};

    #[tokio::test]
    async fn healthz_is_ok_and_metrics_show_admissions() {
        let metrics = Metrics::new();
        metrics.observe(Operation::Mutate, Outcome::Skipped, 0.001);
        let app = router(metrics);
        assert_eq!(
            get_text(app.clone(), "/healthz").await,
            (StatusCode::OK, "ok".into())
        );
        let (status, text) = get_text(app, "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert!(
            text.contains(
                "baton_webhook_admissions_total{operation=\"mutate\",result=\"skipped\"} 1"
            ),
            "{text}"
        );
    }
}
