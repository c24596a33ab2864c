//! What the sidecar and the webhook share at their edges: logs
//! (tracing-subscriber with an env filter, `RUST_LOG`, default info; text
//! for people or JSON for log pipelines; both on stderr), the shutdown
//! signal, and errors shown with their causes. The webhook depends on this
//! crate for these (and for the settings schema and Events): one home.

use tracing_subscriber::EnvFilter;

use crate::settings::LogFormat;

pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .init(),
    }
}

/// Resolves on SIGTERM (kubelet) or SIGINT (a terminal).
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {},
                _ = tokio::signal::ctrl_c() => {},
            }
        }
        Err(error) => {
            tracing::warn!(%error, "cannot listen for SIGTERM; stopping on SIGINT only");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
    tracing::info!("shutting down");
}

/// Displays an error with its sources, `a: b: c`. Our errors say what
/// failed and leave why to their source, so each text is printed once.
/// Some errors of other crates (kube's `ServiceError: {0}`) print their
/// source inside their own text as well: a source whose text ends the
/// one before it is not printed again.
pub struct ErrorChain<'a>(pub &'a dyn std::error::Error);

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut before = self.0.to_string();
        f.write_str(&before)?;
        let mut source = self.0.source();
        while let Some(s) = source {
            let text = s.to_string();
            if !before.ends_with(&text) {
                write!(f, ": {text}")?;
            }
            before = text;
            source = s.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("{0}")]
    struct E(String, #[source] Option<Box<E>>);

    #[test]
    fn an_error_chain_joins_each_cause() {
        let root = E("connection refused".into(), None);
        let mid = E("error sending request".into(), Some(Box::new(root)));
        let top = E("GET /healthz".into(), Some(Box::new(mid)));
        assert_eq!(
            ErrorChain(&top).to_string(),
            "GET /healthz: error sending request: connection refused"
        );
    }

    #[test]
    fn a_foreign_error_that_prints_its_source_is_not_repeated() {
        let root = E("connection refused".into(), None);
        let connect = E("client error (Connect)".into(), Some(Box::new(root)));
        // As kube's `ServiceError: {0}` does.
        let service = E(
            "ServiceError: client error (Connect)".into(),
            Some(Box::new(connect)),
        );
        let top = E("writing lease web".into(), Some(Box::new(service)));
        assert_eq!(
            ErrorChain(&top).to_string(),
            "writing lease web: ServiceError: client error (Connect): connection refused"
        );
    }
}
