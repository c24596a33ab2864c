//! The sidecar when the API server cannot be reached, or accepts connections
//! and never answers: it keeps retrying with back-off, says so once (not
//! once per attempt), still serves its status, and still exits promptly on
//! SIGTERM. Needs no cluster: its kubeconfig points at a port where nothing
//! listens, or where a listener accepts and stays silent.

use std::{
    io::Read,
    net::TcpListener,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use baton_e2e::harness::{parse_status, repo_root, signal};

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

fn api_errors(metrics: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("baton_api_errors_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[tokio::test]
async fn unreachable_api_server_is_retried_and_logged_once_per_change() {
    retried_logged_once_and_exits_on_sigterm(free_port()).await;
}

/// Calls that hang until their timeout, as with a frozen API server: a
/// standby used to re-read the Lease at once after each, never looking at
/// SIGTERM.
#[tokio::test]
async fn hanging_api_server_is_retried_and_logged_once_and_sigterm_still_answered() {
    let silent = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = silent.local_addr().expect("addr").port();
    // Accepts every connection and keeps it open, saying nothing.
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in silent.incoming() {
            held.push(stream);
        }
    });
    retried_logged_once_and_exits_on_sigterm(port).await;
}

async fn retried_logged_once_and_exits_on_sigterm(dead: u16) {
    let sidecar = repo_root().join("target/debug/baton-sidecar");
    assert!(
        sidecar.exists(),
        "build it first: make build ({})",
        sidecar.display()
    );
    let dir = std::env::temp_dir().join(format!("baton-offline-{}-{dead}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {{server: 'https://127.0.0.1:{dead}', insecure-skip-tls-verify: true}}\nusers:\n- name: u\n  user: {{token: t}}\ncontexts:\n- name: x\n  context: {{cluster: c, user: u}}\ncurrent-context: x\n"
        ),
    )
    .expect("kubeconfig");
    // A healthy app: something listening for the TCP probe.
    let app = TcpListener::bind("127.0.0.1:0").expect("app");
    let status_port = free_port();
    let mut child = Command::new(&sidecar)
        .env_clear()
        .env("KUBECONFIG", &kubeconfig)
        .env("RUST_LOG", "info")
        .args([
            "--pod-name=web-0",
            "--pod-namespace=default",
            "--lease-name=web",
            "--probe-kind=tcp",
            &format!("--probe-port={}", app.local_addr().expect("addr").port()),
            &format!("--status-addr=127.0.0.1:{status_port}"),
            // Two of these tests run at once on the host: ports of their own.
            &format!("--proxy-addr=127.0.0.1:{}", free_port()),
            &format!("--proxy-peer-addr=127.0.0.1:{}", free_port()),
            "--renew-period=400ms",
            "--retry-period=200ms",
            "--renew-deadline=1s",
            "--lease-duration=2s",
            "--api-timeout=500ms",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the sidecar");

    // Wait (bounded) until it has failed many API calls, by its own metrics.
    let http = baton_e2e::harness::http();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut errors = 0;
    while errors < 8 {
        assert!(
            Instant::now() < deadline,
            "fewer than 8 failed API calls in 30 s: {errors}"
        );
        if let Ok(r) = http
            .get(format!("http://127.0.0.1:{status_port}/metrics"))
            .send()
            .await
        {
            errors = api_errors(&r.text().await.unwrap_or_default());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let body = http
        .get(format!("http://127.0.0.1:{status_port}/status"))
        .send()
        .await
        .expect("status answers while the API is down")
        .text()
        .await
        .expect("a body");
    let status = parse_status(&format!("127.0.0.1:{status_port}"), &body);
    assert!(!status.api_reachable, "{status:?}");
    assert!(status.app_healthy, "{status:?}");

    signal(child.id(), "TERM").await;
    let started = Instant::now();
    let exit = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no exit 10 s after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut log = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut log)
        .expect("log");
    assert!(exit.success(), "exit {exit:?}; log:\n{log}");
    let said = log.matches("Kubernetes API call failed").count();
    assert_eq!(
        said, 1,
        "{errors} failures must be logged once, got {said}:\n{log}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
