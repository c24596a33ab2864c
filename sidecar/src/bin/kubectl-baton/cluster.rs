//! The connection to the API server, as kubectl makes it, and errors from it
//! as kubectl prints them.

use std::{future::Future, time::Duration};

use anyhow::Context;
use kube::{
    Client, Config,
    api::PatchParams,
    config::{KubeConfigOptions, Kubeconfig, KubeconfigError},
    core::Status,
};

use crate::cli::Connection;
use baton_sidecar::telemetry::ErrorChain;

/// Recorded as the manager of the fields we write (`managedFields`).
pub const FIELD_MANAGER: &str = "kubectl-baton";

/// A client, the namespace commands act in, and the bound of one request.
pub struct Cluster {
    pub client: Client,
    pub namespace: String,
    request_timeout: Option<Duration>,
}

/// A request that failed or took too long.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error(transparent)]
    Kube(#[from] kube::Error),
    #[error("no answer from the API server within {}", humantime::format_duration(*.0))]
    TimedOut(Duration),
}

impl Cluster {
    /// Connects with the kubeconfig (`--kubeconfig`, else KUBECONFIG, else
    /// ~/.kube/config) or, without one, as the pod's service account.
    pub async fn connect(flags: &Connection) -> anyhow::Result<Self> {
        let options = KubeConfigOptions {
            context: flags.context.clone(),
            ..KubeConfigOptions::default()
        };
        let kubeconfig = match &flags.kubeconfig {
            Some(path) => Some(Kubeconfig::read_from(path)?),
            None => match Kubeconfig::read() {
                Ok(kubeconfig) => Some(kubeconfig),
                // No file at all: kubectl then tries the in-cluster config.
                Err(KubeconfigError::FindPath) => None,
                Err(KubeconfigError::ReadConfig(err, _))
                    if err.kind() == std::io::ErrorKind::NotFound
                        && std::env::var_os("KUBECONFIG").is_none() =>
                {
                    None
                }
                Err(err) => return Err(err.into()),
            },
        };
        let config = match kubeconfig {
            Some(kubeconfig) => Config::from_custom_kubeconfig(kubeconfig, &options)
                .await
                .map_err(|err| match err {
                    KubeconfigError::LoadContext(name) => {
                        anyhow::anyhow!("context {name:?} does not exist")
                    }
                    err => err.into(),
                })?,
            None if flags.context.is_some() || !in_a_pod() => {
                anyhow::bail!(
                    "no kubeconfig: none given (--kubeconfig), no KUBECONFIG, no ~/.kube/config"
                )
            }
            None => Config::incluster()
                .context("no kubeconfig, and the pod's service account is not usable")?,
        };
        let namespace = flags
            .namespace
            .clone()
            .unwrap_or_else(|| config.default_namespace.clone());
        let client = Client::try_from(config)?;
        Ok(Cluster {
            client,
            namespace,
            request_timeout: flags.request_timeout(),
        })
    }

    /// Runs one request within `--request-timeout`. Watches are not bound
    /// by it: the commands that watch have a timeout of their own.
    pub async fn call<T>(
        &self,
        request: impl Future<Output = kube::Result<T>>,
    ) -> Result<T, CallError> {
        match self.request_timeout {
            None => Ok(request.await?),
            Some(bound) => match tokio::time::timeout(bound, request).await {
                Ok(answer) => Ok(answer?),
                Err(_) => Err(CallError::TimedOut(bound)),
            },
        }
    }
}

/// Whether we run in a pod, where kubectl falls back to its service account.
fn in_a_pod() -> bool {
    std::env::var_os("KUBERNETES_SERVICE_HOST").is_some()
}

/// How every write is made: a merge patch, recorded as ours.
pub fn patch_params() -> PatchParams {
    PatchParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PatchParams::default()
    }
}

/// The merge patch that sets (`Some`) or removes (`None`) one annotation.
pub fn annotation_patch(key: &str, value: Option<&str>) -> serde_json::Value {
    serde_json::json!({ "metadata": { "annotations": { key: value } } })
}

/// The line to print for a failed command: an error from the API server as
/// kubectl prints it (`Error from server (Forbidden): ...`), anything else
/// as `error: ...` with its causes.
pub fn describe(err: &anyhow::Error) -> String {
    match err.chain().find_map(server_status) {
        Some(status) => from_server(status),
        None => format!("error: {}", ErrorChain(err.as_ref())),
    }
}

/// The API server's answer inside one error of a chain, if it holds one.
fn server_status<'a>(cause: &'a (dyn std::error::Error + 'static)) -> Option<&'a Status> {
    let kube_error = cause.downcast_ref::<kube::Error>().or_else(|| {
        // Transparent: the chain goes past the kube::Error inside it.
        match cause.downcast_ref::<CallError>() {
            Some(CallError::Kube(inner)) => Some(inner),
            _ => None,
        }
    });
    if let Some(kube::Error::Api(status)) = kube_error {
        return Some(status);
    }
    match cause.downcast_ref::<kube::runtime::watcher::Error>() {
        Some(kube::runtime::watcher::Error::WatchError(status)) => Some(status),
        _ => cause.downcast_ref::<Status>(),
    }
}

fn from_server(status: &Status) -> String {
    let message = if status.message.is_empty() {
        format!("the server answered {}", status.code)
    } else {
        status.message.clone()
    };
    if status.reason.is_empty() {
        format!("Error from server: {message}")
    } else {
        format!("Error from server ({}): {message}", status.reason)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_annotation_is_set_or_removed_by_a_merge_patch() {
        assert_eq!(
            annotation_patch("baton.dev/paused", Some("true")),
            serde_json::json!({"metadata": {"annotations": {"baton.dev/paused": "true"}}})
        );
        assert_eq!(
            annotation_patch("baton.dev/paused", None),
            serde_json::json!({"metadata": {"annotations": {"baton.dev/paused": null}}})
        );
    }

    #[test]
    fn server_errors_read_like_kubectl_and_others_keep_their_causes() {
        let status = Status::failure(
            r#"leases.coordination.k8s.io "web" is forbidden: User "jane" cannot patch resource "leases""#,
            "Forbidden",
        )
        .with_code(403);
        let err = anyhow::Error::from(kube::Error::Api(status.boxed())).context("pausing web");
        assert_eq!(
            describe(&err),
            r#"Error from server (Forbidden): leases.coordination.k8s.io "web" is forbidden: User "jane" cannot patch resource "leases""#
        );
        let forbidden = Status::failure("pods is forbidden", "Forbidden").with_code(403);
        let err = anyhow::Error::from(CallError::Kube(kube::Error::Api(forbidden.boxed())))
            .context("listing pods");
        assert_eq!(
            describe(&err),
            "Error from server (Forbidden): pods is forbidden"
        );
        let err = anyhow::Error::from(CallError::TimedOut(Duration::from_secs(5)))
            .context("getting lease web");
        assert_eq!(
            describe(&err),
            "error: getting lease web: no answer from the API server within 5s"
        );
    }
}
