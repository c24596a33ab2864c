//! The demo app of the tests and the demo: a tiny HTTP server whose
//! `/healthz` can be switched to fail (500) or hang through `/control`.

use std::{net::SocketAddr, sync::Arc};

use axum::{
    Router,
    extract::{Query, State},
    http::StatusCode,
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
    let router = Router::new()
        .route(
            "/",
            get(|State(app): State<Arc<App>>| async move { format!("hello from {}\n", app.name) }),
        )
        .route("/healthz", get(healthz))
        .route("/control", post(control))
        .with_state(app);
    let listener = tokio::net::TcpListener::bind(settings.listen_addr).await?;
    eprintln!("demo app listening on {}", settings.listen_addr);
    // As a well-behaved app: on SIGTERM (kubelet) or Ctrl-C, stop accepting,
    // finish the requests in flight, exit. As PID 1 of its container the
    // default action of SIGTERM does not apply: without a handler, every
    // pod deletion would wait out its grace period.
    axum::serve(listener, router)
        .with_graceful_shutdown(async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("a SIGTERM handler");
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            eprintln!("demo app stopping: finishing requests in flight");
        })
        .await?;
    Ok(())
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
