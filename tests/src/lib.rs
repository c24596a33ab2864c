//! The end-to-end harness: the pod runner, the env a pod's process gets, and
//! the helpers the tests in `tests/tests/` use against the local control plane.

pub mod harness;
pub mod install;
pub mod podenv;
pub mod prometheus;
pub mod runner;
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
