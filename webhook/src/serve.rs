//! Both servers: HTTPS (rustls) for the API server's admission calls, plain
//! HTTP for health and metrics; both stop on one shutdown signal.

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use baton_sidecar::telemetry::ErrorChain;
use hyper_util::{rt::TokioIo, server::graceful::GracefulShutdown, service::TowerToHyperService};
use rustls::ServerConfig;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::{
    admission::{self, Admission},
    events::EventSink,
    group::GroupPods,
    health,
    inject::Config,
    metrics::Metrics,
    owner::OwnerLookup,
    settings::Settings,
    tls::{self, TlsError},
};

/// A client that has not finished its TLS handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Requests in flight at shutdown get this long to finish.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("TLS")]
    Tls(#[from] TlsError),
    #[error("binding {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("serving HTTP on {addr}")]
    Http {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// The webhook with its listeners bound: ask for the addresses (port 0 works), then serve.
pub struct Webhook {
    https: TcpListener,
    http: TcpListener,
    https_addr: SocketAddr,
    http_addr: SocketAddr,
    tls: Arc<ServerConfig>,
    admission: Arc<Admission>,
    metrics: Metrics,
}

impl Webhook {
    /// Loads or makes the certificate (writing the CA to `--ca-out-file`), then binds both addresses.
    pub async fn bind(
        settings: &Settings,
        owners: Arc<dyn OwnerLookup>,
        groups: Arc<dyn GroupPods>,
        events: Arc<dyn EventSink>,
        metrics: Metrics,
    ) -> Result<Self, ServeError> {
        let tls = match (&settings.tls_cert_file, &settings.tls_key_file) {
            (Some(cert), Some(key)) => tls::from_files(cert, key)?,
            _ => tls::from_self_signed(&settings.tls_san, settings.ca_out_file.as_deref())?,
        };
        Self::bind_with(settings, tls, owners, groups, events, metrics).await
    }

    /// Binds both addresses, serving HTTPS with `tls` (e.g. self-managed
    /// certificates) and `metrics` on /metrics.
    pub async fn bind_with(
        settings: &Settings,
        tls: Arc<ServerConfig>,
        owners: Arc<dyn OwnerLookup>,
        groups: Arc<dyn GroupPods>,
        events: Arc<dyn EventSink>,
        metrics: Metrics,
    ) -> Result<Self, ServeError> {
        let bind = |addr: SocketAddr| async move {
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|source| ServeError::Bind { addr, source })?;
            let local = listener
                .local_addr()
                .map_err(|source| ServeError::Bind { addr, source })?;
            Ok::<_, ServeError>((listener, local))
        };
        let (https, https_addr) = bind(settings.listen_addr).await?;
        let (http, http_addr) = bind(settings.http_addr).await?;
        let admission = Arc::new(Admission {
            config: Config::from(settings),
            owners,
            groups,
            events,
            metrics: metrics.clone(),
        });
        Ok(Self {
            https,
            http,
            https_addr,
            http_addr,
            tls,
            admission,
            metrics,
        })
    }

    /// Where the HTTPS server (/mutate, /validate) listens.
    pub fn https_addr(&self) -> SocketAddr {
        self.https_addr
    }

    /// Where the plain-HTTP server (/healthz, /metrics) listens.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// Serves until `shutdown` completes, then drains requests in flight.
    pub async fn serve(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServeError> {
        let token = CancellationToken::new();
        let trigger = token.clone();
        tokio::spawn(async move {
            shutdown.await;
            trigger.cancel();
        });
        tracing::info!(https = %self.https_addr, http = %self.http_addr, "serving");

        let http_addr = self.http_addr;
        let http = axum::serve(self.http, health::router(self.metrics))
            .with_graceful_shutdown(token.clone().cancelled_owned());
        let https = serve_tls(
            self.https,
            self.tls,
            admission::router(self.admission),
            token,
        );
        let (http, ()) = tokio::join!(http.into_future(), https);
        http.map_err(|source| ServeError::Http {
            addr: http_addr,
            source,
        })
    }
}

async fn serve_tls(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    router: axum::Router,
    token: CancellationToken,
) {
    let acceptor = TlsAcceptor::from(tls);
    let service = TowerToHyperService::new(router);
    let graceful = GracefulShutdown::new();
    loop {
        let (tcp, peer) = tokio::select! {
            () = token.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: back off, don't spin.
                    tracing::warn!(%error, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let acceptor = acceptor.clone();
        let service = service.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(error)) => {
                    tracing::debug!(%peer, %error, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HANDSHAKE_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            if let Err(error) = watcher.watch(conn).await {
                tracing::debug!(%peer, error = %ErrorChain(&error), "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("requests still in flight after {DRAIN_TIMEOUT:?}; closing anyway");
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use clap::Parser as _;
    use rustls::pki_types::ServerName;
    use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

    use super::*;
    use crate::testing::{NoEvents, NoGroupPods, StaticOwners, owner};

    async fn exchange(
        mut stream: impl AsyncRead + AsyncWrite + Unpin,
        method: &str,
        path: &str,
        body: &[u8],
    ) -> String {
        let head = format!(
            "{method} {path} HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).await.expect("write head");
        stream.write_all(body).await.expect("write body");
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await.expect("read answer");
        String::from_utf8_lossy(&answer).into_owned()
    }

    #[tokio::test]
    async fn serves_mutate_over_https_trusted_by_the_written_ca_and_stops_on_shutdown() {
        let ca_out = std::env::temp_dir().join(format!(
            "baton-webhook-ca-{}-{}.crt",
            std::process::id(),
            fastrand::u64(..)
        ));
        let settings = Settings::try_parse_from([
            "baton-webhook",
            "--listen-addr=127.0.0.1:0",
            "--http-addr=127.0.0.1:0",
            &format!("--ca-out-file={}", ca_out.display()),
        ])
        .expect("settings");
        let mut web = owner("StatefulSet", "web");
        web.namespace = "shop".into();
        let webhook = Webhook::bind(
            &settings,
            Arc::new(StaticOwners(Some(web))),
            Arc::new(NoGroupPods),
            Arc::new(NoEvents),
            Metrics::new(),
        )
        .await
        .expect("binds");
        let (https_addr, http_addr) = (webhook.https_addr(), webhook.http_addr());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(webhook.serve(async {
            let _ = stopped.await;
        }));

        // A client that trusts only the CA the webhook wrote.
        let ca_pem = std::fs::read(&ca_out).expect("CA written");
        let _ = std::fs::remove_file(&ca_out);
        let mut roots = rustls::RootCertStore::empty();
        use rustls::pki_types::{CertificateDer, pem::PemObject as _};
        for der in CertificateDer::pem_slice_iter(&ca_pem) {
            roots.add(der.expect("pem")).expect("adds");
        }
        let client = rustls::ClientConfig::builder_with_provider(tls::provider())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
        let tcp = tokio::net::TcpStream::connect(https_addr)
            .await
            .expect("connects");
        let tls = connector
            .connect(ServerName::try_from("localhost").expect("name"), tcp)
            .await
            .expect("handshake with the written CA");
        let fixture: PathBuf = [
            env!("CARGO_MANIFEST_DIR"),
            "../tests/fixtures/webhook/pod-of-statefulset.json",
        ]
        .iter()
        .collect();
        let body = std::fs::read(fixture).expect("fixture");
        let answer = exchange(tls, "POST", "/mutate", &body).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.contains("\"patchType\":\"JSONPatch\""), "{answer}");

        let tcp = tokio::net::TcpStream::connect(http_addr)
            .await
            .expect("connects");
        let health = exchange(tcp, "GET", "/healthz", b"").await;
        assert!(
            health.starts_with("HTTP/1.1 200") && health.ends_with("ok"),
            "{health}"
        );
        let tcp = tokio::net::TcpStream::connect(http_addr)
            .await
            .expect("connects");
        let metrics = exchange(tcp, "GET", "/metrics", b"").await;
        assert!(
            metrics.contains(
                "baton_webhook_admissions_total{operation=\"mutate\",result=\"injected\"} 1"
            ),
            "{metrics}"
        );

        stop.send(()).expect("server waits");
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .expect("stops on shutdown")
            .expect("task")
            .expect("serve ends cleanly");
        assert!(
            tokio::net::TcpStream::connect(https_addr).await.is_err(),
            "HTTPS listener closed"
        );
    }
}
