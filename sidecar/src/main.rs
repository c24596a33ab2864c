use anyhow::Context;
use baton_sidecar::{Settings, telemetry};
use clap::Parser;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let settings = Settings::parse();
    telemetry::init(settings.log_format);
    settings.validate()?;
    let client = kube::Client::try_default()
        .await
        .context("no Kubernetes API credentials (in-cluster or KUBECONFIG)")?;
    baton_sidecar::run(settings, client, telemetry::shutdown_signal()).await?;
    Ok(())
}
