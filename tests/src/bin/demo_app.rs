//! The demo app of the tests and the demo: a tiny HTTP server whose
//! `/healthz` can be switched to fail (500) or hang through `/control`.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use axum::{
    Router,
    extract::{Query, State},
    http::{HeaderValue, StatusCode, header},
    response::Response,
    routing::{get, post},
};
use clap::Parser;
use tokio::sync::RwLock;

#[derive(Parser, Debug)]
#[command(
    name = "baton-demo-app",
    about = "Hello-world app with switchable health"
)]
struct Settings {
    /// Address to serve on.
    #[arg(long, env = "LISTEN_ADDR", default_value = "0.0.0.0:8080")]
    listen_addr: SocketAddr,
    /// Name to greet with (downward API: metadata.name).
    #[arg(long, env = "POD_NAME", default_value = "demo")]
    pod_name: String,
    /// Also serve a plain line protocol here: every line received on a
    /// connection is answered with a line holding the pod's name (a
    /// long-lived TCP client of the tests).
    #[arg(long, env = "TCP_LISTEN_ADDR")]
    tcp_addr: Option<SocketAddr>,
    /// Also serve the HTTP routes over cleartext HTTP/2 with prior
    /// knowledge here, as gRPC servers do (a multiplexing client of the
    /// tests).
    #[arg(long, env = "H2C_LISTEN_ADDR")]
    h2c_addr: Option<SocketAddr>,
    /// Close every HTTP/1.1 connection this often (e.g. `1s`), gracefully:
    /// after the request in flight, as a server with a short idle timeout
    /// or a maximum connection age does. Unset: connections are kept as
    /// long as clients keep them.
    #[arg(long, env = "CLOSE_CONNECTIONS_EVERY", value_parser = positive_duration)]
    close_connections_every: Option<Duration>,
}

fn positive_duration(s: &str) -> Result<Duration, String> {
    match humantime::parse_duration(s) {
        Ok(d) if d.is_zero() => Err("must be longer than zero".into()),
        Ok(d) => Ok(d),
        Err(e) => Err(e.to_string()),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
enum Health {
    Ok,
    Fail,
    Hang,
}

#[derive(serde::Deserialize)]
struct SetHealth {
    health: Health,
}

struct App {
    name: String,
    health: RwLock<Health>,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let settings = Settings::parse();
    let app = Arc::new(App {
        name: settings.pod_name,
        health: RwLock::new(Health::Ok),
    });
    if let Some(addr) = settings.tcp_addr {
        let socket = tokio::net::TcpListener::bind(addr).await?;
        eprintln!("demo app serving lines on {addr}");
        tokio::spawn(serve_lines(socket, app.name.clone()));
    }
    let stopping = Arc::new(AtomicBool::new(false));
    let router = Router::new()
        .route(
            "/",
            get(|State(app): State<Arc<App>>| async move { format!("hello from {}\n", app.name) }),
        )
        .route("/healthz", get(healthz))
        .route("/control", post(control))
        .with_state(app)
        .layer(axum::middleware::map_response_with_state(
            stopping.clone(),
            say_goodbye,
        ));
    if let Some(addr) = settings.h2c_addr {
        let socket = tokio::net::TcpListener::bind(addr).await?;
        eprintln!("demo app serving HTTP/2 (prior knowledge) on {addr}");
        tokio::spawn(serve_h2c(socket, router.clone()));
    }
    let socket = tokio::net::TcpListener::bind(settings.listen_addr).await?;
    let (stop_accepting, stopped) = tokio::sync::watch::channel(false);
    let listener = ClosingListener {
        addr: socket.local_addr()?,
        socket: Some(socket),
        stopped,
    };
    eprintln!("demo app listening on {}", settings.listen_addr);
    // As a well-behaved app: on SIGTERM (kubelet) or Ctrl-C, stop accepting
    // (new connections are refused at once), finish the requests in flight,
    // exit. As PID 1 of its container the default action of SIGTERM does
    // not apply: without a handler, every pod deletion would wait out its
    // grace period. Before it closes its idle keep-alive connections it
    // answers on them for a moment with `Connection: close`: a client that
    // sends a request on an idle connection just as the server closes it
    // gets an error, and most HTTP clients (reqwest among them) do not
    // retry it.
    let shutdown = async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("a SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        stopping.store(true, Ordering::Relaxed);
        let _ = stop_accepting.send(true);
        eprintln!("demo app stopping: no new connections; asking keep-alive clients to leave");
        tokio::time::sleep(GOODBYE).await;
        eprintln!("demo app stopping: finishing requests in flight");
    };
    match settings.close_connections_every {
        None => {
            axum::serve(listener, router)
                .with_graceful_shutdown(shutdown)
                .await?;
        }
        Some(every) => {
            eprintln!(
                "demo app closing every HTTP/1.1 connection every {}",
                humantime::format_duration(every)
            );
            serve_closing(listener, router, every, shutdown).await;
        }
    }
    Ok(())
}

/// The line protocol: each line in, the pod's name out, until the client closes.
async fn serve_lines(socket: tokio::net::TcpListener, name: String) {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    loop {
        let Ok((conn, _)) = socket.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let answer = format!("{name}\n");
        tokio::spawn(async move {
            let (read, mut write) = conn.into_split();
            let mut lines = BufReader::new(read).lines();
            while let Ok(Some(_)) = lines.next_line().await {
                if write.write_all(answer.as_bytes()).await.is_err() {
                    return;
                }
            }
        });
    }
}

/// The HTTP routes over HTTP/2 with prior knowledge, a connection per task.
async fn serve_h2c(socket: tokio::net::TcpListener, router: Router) {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    loop {
        let Ok((conn, _)) = socket.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let service = hyper_util::service::TowerToHyperService::new(router.clone());
        tokio::spawn(async move {
            let served = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(conn), service)
                .await;
            if let Err(e) = served {
                eprintln!("HTTP/2 connection: {e}");
            }
        });
    }
}

/// Serves the HTTP routes over HTTP/1.1 as `axum::serve` does (the same
/// listener, the same graceful shutdown), and besides closes every
/// connection gracefully every `every`: each ends once the request in
/// flight, if any, is answered. hyper's per-connection graceful shutdown,
/// which `axum::serve` only offers for the whole server.
async fn serve_closing(
    mut listener: ClosingListener,
    router: Router,
    every: Duration,
    shutdown: impl std::future::Future<Output = ()>,
) {
    use axum::serve::Listener as _;
    use hyper_util::rt::TokioIo;
    // Each round bumps the number; every connection watches it.
    let (close_all, _) = tokio::sync::watch::channel(0u64);
    let mut connections = tokio::task::JoinSet::new();
    let mut rounds = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    rounds.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            (io, _) = listener.accept() => {
                let service = hyper_util::service::TowerToHyperService::new(router.clone());
                let mut told = close_all.subscribe();
                connections.spawn(async move {
                    let connection = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(io), service);
                    tokio::pin!(connection);
                    loop {
                        tokio::select! {
                            // Errors are the clients' (a reset, a bad
                            // request): not logged, as `axum::serve` does.
                            _ = connection.as_mut() => return,
                            Ok(()) = told.changed() => connection.as_mut().graceful_shutdown(),
                        }
                    }
                });
            }
            _ = rounds.tick() => close_all.send_modify(|round| *round += 1),
            Some(_) = connections.join_next() => {}
            () = &mut shutdown => break,
        }
    }
    // As `axum::serve`'s graceful shutdown: close them all, wait for them.
    close_all.send_modify(|round| *round += 1);
    while connections.join_next().await.is_some() {}
}

/// The app's listening socket, closed as soon as the app is told to stop:
/// new connections are refused from then on, while those already open are
/// served for [`GOODBYE`].
struct ClosingListener {
    socket: Option<tokio::net::TcpListener>,
    addr: SocketAddr,
    stopped: tokio::sync::watch::Receiver<bool>,
}

impl axum::serve::Listener for ClosingListener {
    type Io = tokio::net::TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let stop = match &self.socket {
                None => return std::future::pending().await,
                Some(socket) => tokio::select! {
                    accepted = socket.accept() => match accepted {
                        Ok(connection) => return connection,
                        Err(e) => {
                            eprintln!("accept: {e}");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            false
                        }
                    },
                    () = told_to_stop(&mut self.stopped) => true,
                },
            };
            if stop {
                // Closed: the kernel refuses new connections from now on.
                self.socket = None;
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.addr)
    }
}

/// Resolves once `stopped` says true (never if its sender is gone first).
async fn told_to_stop(stopped: &mut tokio::sync::watch::Receiver<bool>) {
    loop {
        if *stopped.borrow_and_update() {
            return;
        }
        if stopped.changed().await.is_err() {
            return std::future::pending().await;
        }
    }
}

/// How long a stopping app answers with `Connection: close` before it
/// closes the connections that are still idle.
const GOODBYE: Duration = Duration::from_secs(1);

/// Once stopping: every answer closes its connection.
async fn say_goodbye(State(stopping): State<Arc<AtomicBool>>, mut response: Response) -> Response {
    if stopping.load(Ordering::Relaxed) {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

async fn healthz(State(app): State<Arc<App>>) -> (StatusCode, &'static str) {
    match *app.health.read().await {
        Health::Ok => (StatusCode::OK, "ok\n"),
        Health::Fail => (StatusCode::INTERNAL_SERVER_ERROR, "failing on purpose\n"),
        Health::Hang => std::future::pending().await,
    }
}

/// `POST /control?health=ok|fail|hang`
async fn control(State(app): State<Arc<App>>, Query(set): Query<SetHealth>) -> String {
    *app.health.write().await = set.health;
    eprintln!("health set to {:?}", set.health);
    format!("health={:?}\n", set.health)
}
