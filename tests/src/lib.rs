//! The end-to-end harness: the helpers the tests in `tests/tests/` use
//! against the local cluster and its real node, the installed webhook, and
//! (for the bench's KWOK nodes) the pod runner and the env its processes get
//! (`kwok`); and what `make release` decides from the repository's files
//! (`release`).

pub mod app_env;
pub mod brownout;
pub mod clients;
pub mod group;
pub mod harness;
pub mod install;
pub mod kwok;
pub mod prometheus;
pub mod release;
pub mod spread;
pub mod webhook;
pub mod workload;

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {},
        _ = tokio::signal::ctrl_c() => {},
    }
}
