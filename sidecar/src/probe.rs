//! The app's health: probe it over the pod's loopback, once per period, and
//! fold the outcomes through the failure and success thresholds.

use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{
    metrics::Metrics,
    settings::{ProbeKind, ProbeScheme, Settings},
    telemetry::ErrorChain,
};

/// The outcome of one probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Failure(String),
    Timeout,
}

impl Outcome {
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Failure(_) => "failure",
            Outcome::Timeout => "timeout",
        }
    }
}

/// Health as folded through the thresholds. Starts unhealthy, as kubelet's
/// readiness does: a pod is not eligible before its app has answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    pub healthy: bool,
    consecutive_successes: u32,
    consecutive_failures: u32,
    pub last_failure: Option<String>,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            healthy: false,
            consecutive_successes: 0,
            consecutive_failures: 0,
            last_failure: Some("not probed yet".into()),
        }
    }
}

impl Health {
    /// Whether any probe has answered yet.
    pub fn probed(&self) -> bool {
        self.consecutive_successes + self.consecutive_failures > 0
    }

    /// The health after one more outcome.
    pub fn fold(
        &self,
        outcome: &Outcome,
        failure_threshold: u32,
        success_threshold: u32,
    ) -> Health {
        let mut next = self.clone();
        match outcome {
            Outcome::Success => {
                next.consecutive_successes += 1;
                next.consecutive_failures = 0;
                if next.consecutive_successes >= success_threshold {
                    next.healthy = true;
                    next.last_failure = None;
                }
            }
            Outcome::Failure(_) | Outcome::Timeout => {
                next.consecutive_failures += 1;
                next.consecutive_successes = 0;
                next.last_failure = Some(match outcome {
                    Outcome::Failure(why) => why.clone(),
                    _ => "timed out".into(),
                });
                if next.consecutive_failures >= failure_threshold {
                    next.healthy = false;
                }
            }
        }
        next
    }
}

/// Probes the app as the settings say.
pub struct Prober {
    kind: ProbeKind,
    /// Parsed once: parsing it for each request was a tenth of an idle
    /// sidecar's CPU.
    url: reqwest::Url,
    target: String,
    timeout: Duration,
    http: reqwest::Client,
}

impl Prober {
    pub fn new(s: &Settings) -> Result<Self, reqwest::Error> {
        let scheme = match s.probe_scheme {
            ProbeScheme::Http => "http",
            ProbeScheme::Https => "https",
        };
        let target = format!("{}:{}", s.probe_host, s.probe_port);
        // One process-wide provider (ring, as kube uses); a second install is a no-op.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            // As kubelet: HTTPS probes do not verify the app's certificate.
            .tls_danger_accept_invalid_certs(true)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            // One connection, kept while the app keeps it (as Envoy's
            // health checks do): a new TCP (and TLS) connection per probe
            // was most of the sidecar's CPU at rest (docs/decisions.md §12).
            .pool_max_idle_per_host(1)
            .build()?;
        // reqwest's own parse, so that a bad URL is the same error as before.
        let url = http
            .get(format!("{scheme}://{target}{}", s.probe_path))
            .build()?
            .url()
            .clone();
        Ok(Prober {
            kind: s.probe_kind,
            url,
            target,
            timeout: s.probe_timeout,
            http,
        })
    }

    /// One GET. A transport error is tried once more at once: the kept
    /// connection may have been closed by the app between two probes (an
    /// idle timeout shorter than the probe period), and the second try
    /// goes out on a new connection. A dead app refuses both.
    async fn get(&self) -> reqwest::Result<reqwest::Response> {
        match self.http.get(self.url.clone()).send().await {
            Err(e) if !e.is_timeout() => self.http.get(self.url.clone()).send().await,
            answered => answered,
        }
    }

    pub async fn probe_once(&self) -> Outcome {
        let attempt = async {
            match self.kind {
                ProbeKind::Tcp => tokio::net::TcpStream::connect(&self.target)
                    .await
                    .map(|_| Outcome::Success)
                    .unwrap_or_else(|e| Outcome::Failure(format!("connect {}: {e}", self.target))),
                ProbeKind::Http => match self.get().await {
                    Ok(r) => {
                        let status = r.status();
                        drain(r).await;
                        if status.is_success() || status.is_redirection() {
                            Outcome::Success
                        } else {
                            Outcome::Failure(format!("GET {} answered {status}", self.url))
                        }
                    }
                    // With its sources: reqwest's own text is only "error
                    // sending request"; the cause (connection refused, ...)
                    // is what an operator needs in /status and Events.
                    Err(e) => Outcome::Failure(format!("GET {}: {}", self.url, ErrorChain(&e))),
                },
            }
        };
        tokio::time::timeout(self.timeout, attempt)
            .await
            .unwrap_or(Outcome::Timeout)
    }
}

/// Reads the answer's body, as kubelet does up to 10 KiB: a connection
/// goes back for the next probe only once its answer was read whole. A
/// longer body is left, and its connection closed.
async fn drain(mut answer: reqwest::Response) {
    const LIMIT: usize = 10 * 1024;
    let mut read = 0;
    while read <= LIMIT {
        match answer.chunk().await {
            Ok(Some(chunk)) => read += chunk.len(),
            Ok(None) | Err(_) => return,
        }
    }
}

/// Probes every period until cancelled, publishing health on `tx`.
pub async fn run(
    prober: Prober,
    settings: Settings,
    tx: watch::Sender<Health>,
    metrics: Metrics,
    stop: CancellationToken,
) {
    let mut ticks = tokio::time::interval(settings.probe_period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let started = Instant::now();
        let outcome = prober.probe_once().await;
        metrics.observe_probe(outcome.label(), started.elapsed());
        let before = tx.borrow().clone();
        let after = before.fold(
            &outcome,
            settings.failure_threshold,
            settings.success_threshold,
        );
        if after.healthy != before.healthy {
            if after.healthy {
                info!("app healthy");
            } else {
                warn!(
                    reason = after.last_failure.as_deref().unwrap_or(""),
                    "app unhealthy"
                );
            }
        }
        tx.send_if_modified(|h| {
            let changed = h.healthy != after.healthy;
            *h = after;
            changed
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fold_all(outcomes: &[Outcome], fail: u32, succ: u32) -> Vec<bool> {
        let mut h = Health::default();
        outcomes
            .iter()
            .map(|o| {
                h = h.fold(o, fail, succ);
                h.healthy
            })
            .collect()
    }

    #[test]
    fn starts_unhealthy_until_success_threshold() {
        let s = Outcome::Success;
        assert_eq!(
            fold_all(&[s.clone(), s.clone(), s], 3, 2),
            [false, true, true]
        );
    }

    #[test]
    fn turns_unhealthy_after_failure_threshold_consecutive_failures() {
        let (s, f) = (Outcome::Success, Outcome::Failure("500".into()));
        assert_eq!(
            fold_all(
                &[s.clone(), f.clone(), s.clone(), f.clone(), Outcome::Timeout],
                2,
                1
            ),
            [true, true, true, true, false]
        );
    }

    #[test]
    fn last_failure_is_kept_for_status_and_cleared_when_healthy() {
        let h = Health::default().fold(&Outcome::Timeout, 1, 1);
        assert_eq!(h.last_failure.as_deref(), Some("timed out"));
        let h = h.fold(&Outcome::Success, 1, 1);
        assert_eq!(h.last_failure, None);
    }

    fn settings_for(port: u16, kind: &str) -> Settings {
        use clap::Parser;
        Settings::try_parse_from([
            "baton-sidecar",
            "--pod-name=p",
            "--pod-namespace=n",
            "--lease-name=l",
            &format!("--probe-port={port}"),
            &format!("--probe-kind={kind}"),
            "--probe-timeout=200ms",
        ])
        .expect("valid settings")
    }

    #[tokio::test]
    async fn http_probe_reads_status_and_times_out_on_a_hung_app() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        tokio::spawn(async move {
            // First connection answers 500, the second 200, the third hangs.
            for reply in ["500 Internal Server Error", "200 OK", "hang"] {
                let (mut sock, _) = listener.accept().await.expect("accept");
                let mut buf = [0u8; 1024];
                let _ = sock.read(&mut buf).await;
                if reply == "hang" {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                } else {
                    let _ = sock
                        .write_all(
                            format!("HTTP/1.1 {reply}\r\ncontent-length: 0\r\n\r\n").as_bytes(),
                        )
                        .await;
                }
            }
        });
        let prober = Prober::new(&settings_for(port, "http")).expect("client");
        assert!(matches!(prober.probe_once().await, Outcome::Failure(m) if m.contains("500")));
        assert_eq!(prober.probe_once().await, Outcome::Success);
        assert_eq!(prober.probe_once().await, Outcome::Timeout);
    }

    #[tokio::test]
    async fn http_probes_keep_one_connection_and_reconnect_when_the_app_closed_it() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let (accepted_tx, mut accepted) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            // The first connection answers two requests, then the app
            // closes it as an idle timeout would. The second reads a
            // request and closes unanswered (the close raced the probe);
            // the third answers.
            for answers in [2, 0, 1] {
                let (mut sock, _) = listener.accept().await.expect("accept");
                accepted_tx.send(()).expect("the test listens");
                let mut buf = [0u8; 1024];
                if answers == 0 {
                    let _ = sock.read(&mut buf).await;
                }
                for _ in 0..answers {
                    let _ = sock.read(&mut buf).await;
                    // The body comes after the head, as from a busy app:
                    // the connection is reusable only once it is read.
                    let _ = sock
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\n")
                        .await;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    let _ = sock.write_all(b"ok\n").await;
                }
            }
        });
        let prober = Prober::new(&settings_for(port, "http")).expect("client");
        assert_eq!(prober.probe_once().await, Outcome::Success);
        assert_eq!(prober.probe_once().await, Outcome::Success);
        assert_eq!(accepted.try_recv(), Ok(()));
        assert!(
            accepted.try_recv().is_err(),
            "the second probe reused the connection"
        );
        // Closed by the app: the next probe goes out on a new connection,
        // which closes unanswered, and is tried once more on a third.
        assert_eq!(prober.probe_once().await, Outcome::Success);
        assert_eq!(accepted.try_recv(), Ok(()));
        assert_eq!(accepted.try_recv(), Ok(()));
    }

    #[tokio::test]
    async fn tcp_probe_fails_when_nothing_listens() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let prober = Prober::new(&settings_for(port, "tcp")).expect("client");
        assert_eq!(prober.probe_once().await, Outcome::Success);
        drop(listener);
        assert!(matches!(prober.probe_once().await, Outcome::Failure(_)));
    }

    #[tokio::test]
    async fn http_probe_failure_names_the_cause() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        drop(listener);
        let prober = Prober::new(&settings_for(port, "http")).expect("client");
        match prober.probe_once().await {
            Outcome::Failure(why) => assert!(why.contains("onnection refused"), "{why}"),
            other => panic!("nothing listens, got {other:?}"),
        }
    }
}
