//! baton's admission webhook: injects the sidecar into the pods of annotated
//! workloads and validates their `baton.dev/*` annotations.

use std::{future::Future, sync::Arc};

pub mod admission;
pub mod annotations;
pub mod certs;
pub mod events;
pub mod group;
pub mod health;
pub mod inject;
pub mod keys;
pub mod metrics;
pub mod owner;
pub mod quantity;
pub mod serve;
pub mod settings;
pub mod tls;

#[cfg(test)]
mod testing;

pub use serve::{ServeError, Webhook};
pub use settings::Settings;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no Kubernetes client configuration (in-cluster or KUBECONFIG)")]
    Client(#[source] kube::Error),
    #[error(transparent)]
    Serve(#[from] ServeError),
    #[error("self-managed certificates")]
    Certs(#[from] certs::CertError),
    #[error("self-managed certificates")]
    Tls(#[from] tls::TlsError),
}

/// Runs the webhook against the API server of the ambient configuration
/// (in-cluster, or `KUBECONFIG`) until `shutdown` completes.
pub async fn run(
    settings: Settings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    // kube's client builds its TLS config from the process default provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = kube::Client::try_default().await.map_err(Error::Client)?;
    let metrics = metrics::Metrics::new();
    let (caches, keep_cached) = owner::OwnerCaches::start(client.clone());
    // Runs as long as the process; it holds no resource a shutdown must release.
    tokio::spawn(keep_cached);
    let owners = Arc::new(owner::KubeOwners::cached(
        client.clone(),
        settings.api_timeout,
        caches,
        metrics.clone(),
    ));
    let groups = Arc::new(group::KubeGroupPods::new(
        client.clone(),
        settings.api_timeout,
    ));
    let events = Arc::new(events::KubeEvents::new(
        client.clone(),
        settings.pod_name.clone(),
    ));
    let Some(_) = &settings.cert_secret else {
        Webhook::bind(&settings, owners, groups, events, metrics)
            .await?
            .serve(shutdown)
            .await?;
        return Ok(());
    };
    let certs = certs::SelfManaged::start(client, &settings).await?;
    let tls = tls::from_resolver(certs.resolver())?;
    let webhook = Webhook::bind_with(&settings, tls, owners, groups, events, metrics).await?;
    let stop = tokio_util::sync::CancellationToken::new();
    let maintenance = tokio::spawn(certs.run(stop.clone()));
    let result = webhook.serve(shutdown).await;
    stop.cancel();
    let _ = maintenance.await;
    result?;
    Ok(())
}
