//! HTTP to the pods: the shared client (never through a proxy), the
//! sidecar's `/status`, and the demo app's health switch.

use std::time::Duration;

use super::{TestNamespace, pod_ip};

/// An HTTP client for pod IPs (loopback: never a proxy).
pub fn http() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("an HTTP client")
}

/// The body of a GET of `path` on `pod`'s sidecar status server.
pub async fn sidecar_get(ns: &TestNamespace, pod: &str, path: &str) -> String {
    let ip = pod_ip(ns, pod).await;
    http()
        .get(format!("http://{ip}:9095{path}"))
        .send()
        .await
        .expect("the sidecar's status server answers")
        .text()
        .await
        .expect("a body")
}

/// The `/status` of `pod`'s sidecar, once it answers.
pub async fn sidecar_status(ns: &TestNamespace, pod: &str) -> serde_json::Value {
    let ip = pod_ip(ns, pod).await;
    for _ in 0..100 {
        if let Ok(r) = http().get(format!("http://{ip}:9095/status")).send().await
            && let Ok(v) = r.json::<serde_json::Value>().await
        {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{pod}'s sidecar never answered /status");
}

/// Tells the demo app in `pod` to answer `/healthz` with `health`: `ok`,
/// `fail` (500) or `hang`.
pub async fn set_app_health(ns: &TestNamespace, pod: &str, health: &str) {
    let ip = pod_ip(ns, pod).await;
    let r = http()
        .post(format!("http://{ip}:8080/control?health={health}"))
        .send()
        .await
        .expect("the demo app answers");
    assert!(r.status().is_success(), "{pod}'s demo app: {}", r.status());
}

/// Waits (bounded) until `pod`'s sidecar reports its app healthy.
pub async fn wait_app_healthy(ns: &TestNamespace, pod: &str) {
    let ip = pod_ip(ns, pod).await;
    // The sidecar may not be listening yet: poll_status keeps asking.
    let last = poll_status(&ip, Duration::from_secs(20), |s| s["app_healthy"] == true).await;
    assert!(
        last["app_healthy"] == true,
        "{pod}'s app never turned healthy: {last}"
    );
}

/// Asks the sidecar at `ip` for its `/status` until `done` holds for it or
/// `timeout` has passed; returns the last status it answered (Null if none).
pub async fn poll_status(
    ip: &str,
    timeout: Duration,
    mut done: impl FnMut(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last = serde_json::Value::Null;
    while tokio::time::Instant::now() < deadline {
        if let Ok(r) = http().get(format!("http://{ip}:9095/status")).send().await {
            last = r.json().await.unwrap_or_default();
            if done(&last) {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    last
}
