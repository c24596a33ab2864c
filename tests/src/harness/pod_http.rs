//! HTTP to the pods: the shared client (never through a proxy), the
//! sidecar's `/status`, and the demo app's health switch.

use std::time::Duration;

use baton_sidecar::contract::{Role, Status};

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
pub async fn sidecar_status(ns: &TestNamespace, pod: &str) -> Status {
    let ip = pod_ip(ns, pod).await;
    for _ in 0..100 {
        if let Some(status) = get_status(&ip).await {
            return status;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{pod}'s sidecar never answered /status");
}

/// One GET of the `/status` of the sidecar at `ip`: None if it does not
/// answer (not listening yet, stopped, restarting).
pub async fn get_status(ip: &str) -> Option<Status> {
    let r = http()
        .get(format!("http://{ip}:9095/status"))
        .send()
        .await
        .ok()?;
    let body = r.text().await.ok()?;
    Some(parse_status(ip, &body))
}

/// A `/status` body from the sidecar at `from` read as the contract's
/// [`Status`]. The tests compare the fields of the struct the sidecar
/// serves, so a renamed field is a compile error, not a comparison with
/// null; a body that is not a `Status` (a sidecar image older than this
/// code, say) panics here with the body. Fields unknown to this build are
/// ignored (serde's default), so a sidecar that reports more still reads.
pub fn parse_status(from: &str, body: &str) -> Status {
    serde_json::from_str(body).unwrap_or_else(|e| {
        panic!("the sidecar at {from} answered /status with something that is not a Status ({e}): {body}")
    })
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
    let what = format!("{pod}'s app healthy");
    wait_status(&ip, Duration::from_secs(20), &what, |s| s.app_healthy).await;
}

/// Waits (bounded) until the sidecar at `ip` reports `role`.
pub async fn wait_role(ip: &str, role: Role, timeout: Duration) {
    let what = format!("the sidecar at {ip} reporting {role:?}");
    wait_status(ip, timeout, &what, |s| s.role == Some(role)).await;
}

/// Polls the sidecar at `ip` ([`poll_status`]) until `done` holds for its
/// `/status`, and returns that status; panics with `what` and the last
/// status it answered if that does not happen within `timeout`.
pub async fn wait_status(
    ip: &str,
    timeout: Duration,
    what: &str,
    done: impl Fn(&Status) -> bool,
) -> Status {
    match poll_status(ip, timeout, &done).await {
        Some(status) if done(&status) => status,
        last => panic!("{what}: not within {timeout:?}; the last status of {ip}: {last:?}"),
    }
}

/// Asks the sidecar at `ip` for its `/status` until `done` holds for it or
/// `timeout` has passed; returns the last status it answered (None if it
/// never answered).
pub async fn poll_status(
    ip: &str,
    timeout: Duration,
    mut done: impl FnMut(&Status) -> bool,
) -> Option<Status> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last = None;
    while tokio::time::Instant::now() < deadline {
        if let Some(status) = get_status(ip).await {
            let finished = done(&status);
            last = Some(status);
            if finished {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    last
}

#[cfg(test)]
mod tests {
    use baton_sidecar::contract::{Role, Status};

    use super::parse_status;

    #[test]
    fn a_served_status_reads_back_typed_even_with_fields_added_later() {
        let served = Status {
            pod: "web-0".into(),
            role: Some(Role::Active),
            holder: Some("web-0".into()),
            app_healthy: true,
            api_reachable: true,
            ..Status::default()
        };
        let mut json = serde_json::to_value(&served).expect("serializes");
        json["added_later"] = serde_json::json!({"by": "a newer sidecar"});
        assert_eq!(parse_status("10.0.0.1", &json.to_string()), served);
    }

    #[test]
    fn a_body_that_is_not_a_status_fails_with_the_body() {
        let mut renamed = serde_json::to_value(Status::default()).expect("serializes");
        let healthy = renamed
            .as_object_mut()
            .expect("an object")
            .remove("app_healthy")
            .expect("app_healthy is served");
        renamed["healthy"] = healthy;
        let mut unknown_role = serde_json::to_value(Status::default()).expect("serializes");
        unknown_role["role"] = "leader".into();
        for body in [
            renamed.to_string(),
            unknown_role.to_string(),
            "not found".to_owned(),
        ] {
            let panic = std::panic::catch_unwind(|| parse_status("10.0.0.1", &body))
                .expect_err("not a Status");
            let message = panic.downcast_ref::<String>().expect("a formatted message");
            assert!(
                message.contains("10.0.0.1") && message.contains(&body),
                "names the sidecar and shows the body: {message}"
            );
        }
    }
}
