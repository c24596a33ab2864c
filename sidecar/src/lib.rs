//! baton's sidecar: probes the app beside it, competes for the group's Lease
//! and labels its own Pod active or passive.

pub(crate) mod backoff;
pub(crate) mod candidate;
pub mod contract;
pub mod election;
pub(crate) mod endpoints;
pub mod events;
pub(crate) mod labels;
pub mod metrics;
pub(crate) mod probe;
pub(crate) mod proxy;
pub(crate) mod relisted;
pub mod rolefile;
pub mod settings;
pub(crate) mod status;
pub(crate) mod tasks;
pub mod telemetry;

#[cfg(any(test, feature = "testing"))]
pub mod testing;

use std::future::Future;

use futures::StreamExt;
use k8s_openapi::api::{coordination::v1::Lease, core::v1::Pod};
use kube::{
    Api, Client,
    runtime::{WatchStreamExt, watcher},
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, info_span, warn};

pub use settings::Settings;
// The bench and the end-to-end tests name the control annotations by
// this path.
pub use contract::controls;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid settings")]
    Settings(#[from] settings::SettingsError),
    #[error("setting up the app probe")]
    Probe(#[from] probe::SetupError),
    #[error("serving status on {addr}")]
    Status {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    TaskEnded(#[from] tasks::TaskEnded),
    #[error(transparent)]
    Proxy(#[from] proxy::Error),
}

/// Runs the sidecar until `shutdown` resolves, then hands over and returns.
pub async fn run(
    settings: Settings,
    client: Client,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    settings.validate()?;
    let span = info_span!("sidecar", pod = %settings.pod_name, namespace = %settings.pod_namespace, lease = %settings.lease_name);
    let stop = CancellationToken::new();
    let metrics = metrics::Metrics::new();
    let (status_tx, status_rx) = watch::channel(contract::Status::default());

    let listener = tokio::net::TcpListener::bind(settings.status_addr)
        .await
        .map_err(|source| Error::Status {
            addr: settings.status_addr,
            source,
        })?;
    // The longest a deleted holder can drain, plus the calls around it.
    let prestop_bound =
        settings.lease_duration + settings.handover_drain + settings.api_timeout * 2;
    // Bound before anything starts: a port in use fails the sidecar at once.
    let proxy = match settings.proxy {
        true => Some(proxy::Proxy::bind(proxy::Config::from_settings(&settings)).await?),
        false => None,
    };
    let proxy_status = status_rx.clone();
    let router = status::router(status_rx, metrics.clone(), prestop_bound);
    let server_stop = stop.clone();
    let mut tasks = tasks::Tasks::default();
    tasks.spawn(
        "status server",
        axum::serve(listener, router)
            .with_graceful_shutdown(async move { server_stop.cancelled().await })
            .into_future()
            .instrument(span.clone()),
    );

    let (health_tx, health_rx) = watch::channel(probe::Health::default());
    let prober = probe::Prober::new(&settings)?;
    let probe = probe::run(
        prober,
        settings.clone(),
        health_tx,
        metrics.clone(),
        stop.clone(),
    );
    tasks.spawn(
        "app probe",
        async move {
            probe.await;
            Ok::<(), std::convert::Infallible>(())
        }
        .instrument(span.clone()),
    );

    let ns = &settings.pod_namespace;
    let leases: Api<Lease> = Api::namespaced(client.clone(), ns);
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let lease_events = watcher(
        leases.clone(),
        watcher::Config::default().fields(&format!("metadata.name={}", settings.lease_name)),
    )
    .backoff(backoff::WatchBackoff::new(settings.retry_period))
    .boxed();
    // The proxy learns the Lease's holder as the watch's event arrives, not
    // once the candidate, maybe busy with a call, takes it (decisions §24).
    let (lease_holder_tx, lease_holder_rx) = watch::channel(None);
    let lease_events = match &proxy {
        Some(_) => proxy::tee_lease_holder(lease_events, lease_holder_tx),
        None => lease_events,
    };
    let pod_events = watcher(
        pods.clone(),
        watcher::Config::default().fields(&format!("metadata.name={}", settings.pod_name)),
    )
    .backoff(backoff::WatchBackoff::new(settings.retry_period))
    .boxed();

    let labeller = labels::Labeller::new(
        pods.clone(),
        settings.labels.for_group(&settings.lease_name),
    );
    if let Some(proxy) = proxy {
        // Its own watch of the group: every sidecar's proxy must know where
        // the next holder is before the Lease names it (decisions §24).
        let group = labeller.group_events(settings.retry_period);
        let run = proxy.run(
            proxy_status,
            lease_holder_rx,
            group,
            pods,
            metrics.clone(),
            stop.clone(),
        );
        tasks.spawn(
            "proxy",
            async move {
                run.await;
                Ok::<(), std::convert::Infallible>(())
            }
            .instrument(span.clone()),
        );
    }

    let candidate = candidate::Candidate::new(
        settings.clone(),
        election::LeaseClient::new(leases, settings.lease_name.clone()),
        labeller,
        events::Events::new(client.clone(), &settings.pod_name),
        metrics,
        health_rx,
        status_tx,
    )
    .with_service_endpoints(settings.service.clone().map(|service| {
        endpoints::ServiceEndpoints::new(
            client,
            ns,
            service,
            (
                settings.labels.group_label.clone(),
                settings.lease_name.clone(),
            ),
        )
    }))
    .with_health_condition(true)
    .with_group_watch(true);
    info!(parent: &span, status_addr = %settings.status_addr, "sidecar started");
    // A task that ends early ends the sidecar, after the handover that
    // SIGTERM would get (rule 6), with the task and its cause.
    let mut ended = None;
    let until_stop = async {
        tokio::select! {
            () = shutdown => {}
            task = tasks.first_end() => {
                warn!(error = %telemetry::ErrorChain(&task), "a task the sidecar needs ended; handing over, then exiting");
                ended = Some(task);
            }
        }
    };
    candidate
        .run(lease_events, pod_events, until_stop)
        .instrument(span)
        .await;
    stop.cancel();
    tasks.join().await;
    match ended {
        Some(task) => Err(task.into()),
        None => Ok(()),
    }
}
