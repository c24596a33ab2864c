//! The app's health: probe it over the pod's loopback, once per period and
//! at once when the app's connection closes, and fold the outcomes through
//! the failure and success thresholds (docs/decisions.md §14).

use std::{
    future::poll_fn,
    io::ErrorKind,
    pin::Pin,
    sync::Arc,
    time::{Duration, Instant},
};

use hyper::{Request, body::Body, client::conn::http1};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::{net::TcpStream, sync::oneshot, sync::watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

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
    /// Nothing listens on the app's port inside the pod: the connect was
    /// refused. Proof that the app cannot serve, not a hint, so it turns
    /// the app unhealthy without waiting for the failure threshold.
    Refused(String),
    Timeout,
}

impl Outcome {
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Failure(_) => "failure",
            Outcome::Refused(_) => "refused",
            Outcome::Timeout => "timeout",
        }
    }
}

/// What started a probe: the period, or the app's kept connection closing
/// (the app may have died: find out now rather than at the next period).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    Period,
    ConnectionClosed,
}

impl Trigger {
    pub fn label(self) -> &'static str {
        match self {
            Trigger::Period => "period",
            Trigger::ConnectionClosed => "connection closed",
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
            Outcome::Failure(_) | Outcome::Refused(_) | Outcome::Timeout => {
                next.consecutive_failures += 1;
                next.consecutive_successes = 0;
                next.last_failure = Some(match outcome {
                    Outcome::Failure(why) | Outcome::Refused(why) => why.clone(),
                    _ => "timed out".into(),
                });
                if next.consecutive_failures >= failure_threshold
                    || matches!(outcome, Outcome::Refused(_))
                {
                    next.healthy = false;
                }
            }
        }
        next
    }
}

/// The probe could not be set up from the settings.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("--probe-host {0:?} is neither a DNS name nor an IP address")]
    Host(String),
    #[error("--probe-host and --probe-path do not make a URL: {0:?}")]
    Url(String),
}

/// Probes the app as the settings say, over one connection kept between
/// probes while the app keeps it: a new TCP (and TLS) connection per probe
/// was most of the sidecar's CPU at rest (docs/decisions.md §12), and the
/// kept connection closing is the first sign of a dead app.
pub struct Prober {
    kind: ProbeKind,
    host: String,
    port: u16,
    /// For messages: the URL of an HTTP probe, `host:port` of a TCP one.
    target: String,
    /// Parsed once: parsing it for each request was a tenth of an idle
    /// sidecar's CPU.
    path: hyper::Uri,
    authority: hyper::header::HeaderValue,
    tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
    timeout: Duration,
    kept: Option<Kept>,
}

/// The connection kept between probes.
enum Kept {
    /// HTTP: requests go out on `sender`; `closed` resolves once the
    /// connection has ended, whoever ended it.
    Http {
        sender: http1::SendRequest<String>,
        closed: oneshot::Receiver<()>,
    },
    /// TCP: the last probe's connection, held until the next one.
    Tcp(TcpStream),
}

impl Prober {
    pub fn new(s: &Settings) -> Result<Self, SetupError> {
        let scheme = match s.probe_scheme {
            ProbeScheme::Http => "http",
            ProbeScheme::Https => "https",
        };
        let authority = if s.probe_host.contains(':') {
            format!("[{}]:{}", s.probe_host, s.probe_port)
        } else {
            format!("{}:{}", s.probe_host, s.probe_port)
        };
        let target = match s.probe_kind {
            ProbeKind::Http => format!("{scheme}://{authority}{}", s.probe_path),
            ProbeKind::Tcp => authority.clone(),
        };
        let path = s
            .probe_path
            .parse::<hyper::Uri>()
            .map_err(|_| SetupError::Url(target.clone()))?;
        let authority = hyper::header::HeaderValue::from_str(&authority)
            .map_err(|_| SetupError::Host(s.probe_host.clone()))?;
        let tls = match s.probe_scheme {
            ProbeScheme::Https => {
                let name = ServerName::try_from(s.probe_host.clone())
                    .map_err(|_| SetupError::Host(s.probe_host.clone()))?;
                Some((tls_connector(), name))
            }
            ProbeScheme::Http => None,
        };
        Ok(Prober {
            kind: s.probe_kind,
            host: s.probe_host.clone(),
            port: s.probe_port,
            target,
            path,
            authority,
            tls,
            timeout: s.probe_timeout,
            kept: None,
        })
    }

    /// One probe, bounded by the probe timeout. A connection that timed out
    /// is not kept: its late answer would be read as the next one's.
    pub async fn probe_once(&mut self) -> Outcome {
        let timeout = self.timeout;
        let attempt = async {
            match self.kind {
                ProbeKind::Tcp => self.probe_tcp().await,
                ProbeKind::Http => self.probe_http().await,
            }
        };
        match tokio::time::timeout(timeout, attempt).await {
            Ok(outcome) => outcome,
            Err(_) => {
                self.kept = None;
                Outcome::Timeout
            }
        }
    }

    /// Resolves when the kept connection is closed by the app (or breaks);
    /// never while there is none. Cancel-safe: a `select!` may drop it.
    pub async fn connection_closed(&mut self) {
        match &mut self.kept {
            Some(Kept::Http { closed, .. }) => {
                let _ = closed.await;
            }
            Some(Kept::Tcp(stream)) => {
                let mut buf = [0u8; 512];
                loop {
                    if stream.readable().await.is_err() {
                        break;
                    }
                    // A greeting (some protocols speak first) is read and
                    // dropped; only the end of the connection counts.
                    match stream.try_read(&mut buf) {
                        Ok(0) => break,
                        Ok(_) => {}
                        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                        Err(_) => break,
                    }
                }
            }
            None => std::future::pending().await,
        }
        self.kept = None;
    }

    async fn connect(&self) -> Result<TcpStream, Outcome> {
        TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| {
                let why = format!("connect {}: {e}", self.target);
                if e.kind() == ErrorKind::ConnectionRefused {
                    Outcome::Refused(why)
                } else {
                    Outcome::Failure(why)
                }
            })
    }

    /// A TCP probe connects anew each time, and holds the connection until
    /// the next probe so that its closing is seen.
    async fn probe_tcp(&mut self) -> Outcome {
        self.kept = None;
        match self.connect().await {
            Ok(stream) => {
                self.kept = Some(Kept::Tcp(stream));
                Outcome::Success
            }
            Err(outcome) => outcome,
        }
    }

    /// One GET on the kept connection, or a new one. A transport error is
    /// tried once more at once on a new connection: the app may have closed
    /// the connection just as the probe went out (an idle timeout shorter
    /// than the probe period). A dead app refuses the new one.
    async fn probe_http(&mut self) -> Outcome {
        let mut tried = false;
        loop {
            if !matches!(&self.kept, Some(Kept::Http { sender, .. }) if !sender.is_closed()) {
                self.kept = None;
                if let Err(outcome) = self.connect_http().await {
                    return outcome;
                }
            }
            match self.get().await {
                Ok(outcome) => return outcome,
                Err(_) if !tried => {
                    tried = true;
                    self.kept = None;
                }
                Err(e) => {
                    self.kept = None;
                    // With its sources: hyper's own text is only the kind
                    // of error; the cause is what an operator needs.
                    return Outcome::Failure(format!("GET {}: {}", self.target, ErrorChain(&e)));
                }
            }
        }
    }

    async fn connect_http(&mut self) -> Result<(), Outcome> {
        let tcp = self.connect().await?;
        let (ended, closed) = oneshot::channel();
        let handshake_failed =
            |e: hyper::Error| Outcome::Failure(format!("GET {}: {}", self.target, ErrorChain(&e)));
        let sender = match &self.tls {
            None => {
                let (sender, connection) = http1::handshake(TokioIo::new(tcp))
                    .await
                    .map_err(handshake_failed)?;
                watch_connection(connection, ended);
                sender
            }
            Some((connector, name)) => {
                let tls = connector
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(|e| Outcome::Failure(format!("TLS to {}: {e}", self.target)))?;
                let (sender, connection) = http1::handshake(TokioIo::new(tls))
                    .await
                    .map_err(handshake_failed)?;
                watch_connection(connection, ended);
                sender
            }
        };
        self.kept = Some(Kept::Http { sender, closed });
        Ok(())
    }

    /// The request on the kept connection. Reads the answer's body, as
    /// kubelet does up to 10 KiB: a connection is reused only once its
    /// answer was read whole. An answer that closes its connection by
    /// design (`Connection: close`, a longer body) drops it here, so that
    /// its end is not taken for the app's.
    async fn get(&mut self) -> Result<Outcome, hyper::Error> {
        let Some(Kept::Http { sender, .. }) = &mut self.kept else {
            unreachable!("get runs on a kept HTTP connection");
        };
        sender.ready().await?;
        let mut request = Request::new(String::new());
        *request.uri_mut() = self.path.clone();
        request
            .headers_mut()
            .insert(hyper::header::HOST, self.authority.clone());
        let answer = sender.send_request(request).await?;
        let status = answer.status();
        let closes = answer
            .headers()
            .get(hyper::header::CONNECTION)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
        if closes || !read_whole(answer.into_body()).await {
            self.kept = None;
        }
        Ok(if status.is_success() || status.is_redirection() {
            Outcome::Success
        } else {
            Outcome::Failure(format!("GET {} answered {status}", self.target))
        })
    }
}

/// Drives a kept connection in the background and says when it ended.
fn watch_connection<C>(connection: C, ended: oneshot::Sender<()>)
where
    C: std::future::Future<Output = Result<(), hyper::Error>> + Send + 'static,
{
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            debug!(error = %ErrorChain(&error), "probe connection ended");
        }
        let _ = ended.send(());
    });
}

/// Reads a body up to 10 KiB; whether it was read whole.
async fn read_whole(mut body: hyper::body::Incoming) -> bool {
    const LIMIT: usize = 10 * 1024;
    let mut read = 0;
    while let Some(frame) = poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
        match frame {
            Ok(frame) => {
                read += frame.data_ref().map_or(0, |d| d.len());
                if read > LIMIT {
                    return false;
                }
            }
            Err(_) => return false,
        }
    }
    true
}

/// TLS as kubelet's HTTPS probes: the app's certificate is not verified
/// (it is the pod's own app, over the pod's loopback).
fn tls_connector() -> tokio_rustls::TlsConnector {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// Accepts any certificate, but still checks the handshake's signatures.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Probes every period, and once more at once when the kept connection
/// closes (at most once between two periodic probes, so that an app that
/// closes every connection costs at most twice the probes), until
/// cancelled; publishes health on `tx`.
pub async fn run(
    mut prober: Prober,
    settings: Settings,
    tx: watch::Sender<Health>,
    metrics: Metrics,
    stop: CancellationToken,
) {
    let mut ticks = tokio::time::interval(settings.probe_period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut early_probe_spent = false;
    loop {
        let trigger = tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticks.tick() => {
                early_probe_spent = false;
                Trigger::Period
            }
            _ = prober.connection_closed(), if !early_probe_spent => {
                early_probe_spent = true;
                Trigger::ConnectionClosed
            }
        };
        let started = Instant::now();
        let outcome = prober.probe_once().await;
        metrics.observe_probe(trigger.label(), outcome.label(), started.elapsed());
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
                    trigger = trigger.label(),
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
    use futures::FutureExt;

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
        let mut prober = Prober::new(&settings_for(port, "http")).expect("client");
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
        let mut prober = Prober::new(&settings_for(port, "http")).expect("client");
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
        let mut prober = Prober::new(&settings_for(port, "tcp")).expect("client");
        assert_eq!(prober.probe_once().await, Outcome::Success);
        drop(listener);
        assert!(matches!(prober.probe_once().await, Outcome::Refused(_)));
    }

    #[tokio::test]
    async fn http_probe_failure_names_the_cause() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        drop(listener);
        let mut prober = Prober::new(&settings_for(port, "http")).expect("client");
        match prober.probe_once().await {
            Outcome::Refused(why) => assert!(why.contains("onnection refused"), "{why}"),
            other => panic!("nothing listens, got {other:?}"),
        }
    }

    #[test]
    fn a_refused_connect_turns_the_app_unhealthy_without_waiting_for_the_threshold() {
        let refused = Outcome::Refused("connect 127.0.0.1:8080: connection refused".into());
        assert_eq!(
            fold_all(&[Outcome::Success, refused.clone()], 3, 1),
            [true, false]
        );
        // A failure that is not a refusal still needs the threshold.
        let failed = Outcome::Failure("500".into());
        assert_eq!(
            fold_all(&[Outcome::Success, failed.clone(), failed], 3, 1),
            [true, true, true]
        );
    }

    /// An app that answers each request with 200 on the connection it came
    /// on; `close_after` answers, then it closes the connection (as an
    /// idle timeout or a crash would). Returns the port and a count of
    /// accepted connections.
    async fn app(
        close_after: usize,
        connection_close: bool,
    ) -> (
        u16,
        Arc<std::sync::atomic::AtomicUsize>,
        tokio::task::JoinHandle<()>,
    ) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = accepted.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else {
                    return;
                };
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let header = if connection_close {
                    "connection: close\r\n"
                } else {
                    ""
                };
                for _ in 0..close_after {
                    let mut buf = [0u8; 1024];
                    if matches!(sock.read(&mut buf).await, Ok(0) | Err(_)) {
                        break;
                    }
                    let answer = format!("HTTP/1.1 200 OK\r\n{header}content-length: 0\r\n\r\n");
                    let _ = sock.write_all(answer.as_bytes()).await;
                }
                drop(sock);
            }
        });
        (port, accepted, task)
    }

    #[tokio::test]
    async fn a_kept_connection_closed_by_the_app_is_seen_at_once() {
        let (port, _, _app) = app(1, false).await;
        let mut prober = Prober::new(&settings_for(port, "http")).expect("client");
        assert_eq!(prober.probe_once().await, Outcome::Success);
        tokio::time::timeout(Duration::from_secs(10), prober.connection_closed())
            .await
            .expect("the app closed the kept connection");
        // Seen once: there is no kept connection to wait on any more.
        assert!(prober.connection_closed().now_or_never().is_none());
    }

    #[tokio::test]
    async fn an_answer_that_closes_its_connection_by_design_is_no_sign_of_death() {
        let (port, _, _app) = app(1, true).await;
        let mut prober = Prober::new(&settings_for(port, "http")).expect("client");
        assert_eq!(prober.probe_once().await, Outcome::Success);
        assert!(
            prober.connection_closed().now_or_never().is_none(),
            "a connection that the answer said it would close is not watched"
        );
    }

    #[tokio::test]
    async fn a_tcp_probe_holds_its_connection_and_sees_it_close() {
        let (port, _, app) = app(0, false).await;
        let mut prober = Prober::new(&settings_for(port, "tcp")).expect("client");
        assert_eq!(prober.probe_once().await, Outcome::Success);
        tokio::time::timeout(Duration::from_secs(10), prober.connection_closed())
            .await
            .expect("the app closed the probe's connection");
        app.abort();
    }

    /// The loop with a period far longer than the test: after the first
    /// probe, only the kept connection closing can start another.
    fn event_only_settings(port: u16, failure_threshold: u32) -> Settings {
        use clap::Parser;
        Settings::try_parse_from([
            "baton-sidecar",
            "--pod-name=p",
            "--pod-namespace=n",
            "--lease-name=l",
            &format!("--probe-port={port}"),
            "--probe-period=1h",
            "--probe-timeout=5s",
            &format!("--failure-threshold={failure_threshold}"),
        ])
        .expect("valid settings")
    }

    async fn health_becomes(rx: &mut watch::Receiver<Health>, healthy: bool) -> Health {
        tokio::time::timeout(
            Duration::from_secs(10),
            rx.wait_for(|h| h.healthy == healthy),
        )
        .await
        .expect("the health changed in time")
        .expect("the probe loop runs")
        .clone()
    }

    #[tokio::test]
    async fn a_dead_app_is_unhealthy_at_the_next_event_not_the_next_period() {
        let (port, _, app) = app(usize::MAX, false).await;
        let settings = event_only_settings(port, 3);
        let (tx, mut rx) = watch::channel(Health::default());
        let metrics = Metrics::new();
        let stop = CancellationToken::new();
        let prober = Prober::new(&settings).expect("client");
        let task = tokio::spawn(run(prober, settings, tx, metrics.clone(), stop.clone()));
        health_becomes(&mut rx, true).await;
        // The app dies: its listener and its connections close together.
        app.abort();
        let health = health_becomes(&mut rx, false).await;
        assert!(
            health
                .last_failure
                .as_deref()
                .is_some_and(|w| w.contains("refused")),
            "{health:?}"
        );
        let text = metrics.encode();
        assert!(
            text.contains(r#"baton_probes_total{trigger="connection closed",result="refused"} 1"#),
            "{text}"
        );
        stop.cancel();
        task.await.expect("the loop ends");
    }

    #[tokio::test]
    async fn an_app_that_closes_idle_connections_stays_healthy() {
        // Each connection answers once, then the app closes it.
        let (port, accepted, _app) = app(1, false).await;
        let settings = event_only_settings(port, 1);
        let (tx, mut rx) = watch::channel(Health::default());
        let stop = CancellationToken::new();
        let prober = Prober::new(&settings).expect("client");
        let metrics = Metrics::new();
        let task = tokio::spawn(run(prober, settings, tx, metrics.clone(), stop.clone()));
        health_becomes(&mut rx, true).await;
        // The close is followed by one probe on a new connection, which
        // succeeds; its own close waits for the next period.
        tokio::time::timeout(Duration::from_secs(10), async {
            while !metrics
                .encode()
                .contains(r#"baton_probes_total{trigger="connection closed",result="success"} 1"#)
            {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the close led to a probe");
        assert!(rx.borrow().healthy);
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 2);
        stop.cancel();
        task.await.expect("the loop ends");
    }

    #[tokio::test]
    async fn an_https_probe_accepts_the_apps_own_certificate_and_keeps_its_connection() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let _ = rustls::crypto::ring::default_provider().install_default();
        let cert =
            rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("a certificate");
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
        let config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(vec![cert.cert.der().clone()], key)
            .expect("a server config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let (accepted_tx, mut accepted) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                accepted_tx.send(()).expect("the test listens");
                let Ok(mut tls) = acceptor.accept(sock).await else {
                    continue;
                };
                let mut buf = [0u8; 1024];
                while matches!(tls.read(&mut buf).await, Ok(n) if n > 0) {
                    let _ = tls.write_all(b"HTTP/1.1 204 No Content\r\n\r\n").await;
                }
            }
        });
        use clap::Parser;
        let settings = Settings::try_parse_from([
            "baton-sidecar",
            "--pod-name=p",
            "--pod-namespace=n",
            "--lease-name=l",
            &format!("--probe-port={port}"),
            "--probe-scheme=https",
            "--probe-host=localhost",
            "--probe-timeout=2s",
            "--probe-period=2s",
        ])
        .expect("valid settings");
        let mut prober = Prober::new(&settings).expect("client");
        assert_eq!(prober.probe_once().await, Outcome::Success);
        assert_eq!(prober.probe_once().await, Outcome::Success);
        assert_eq!(accepted.try_recv(), Ok(()));
        assert!(
            accepted.try_recv().is_err(),
            "one TLS connection for both probes"
        );
    }
}
