use anyhow::Context as _;
use baton_sidecar::telemetry;
use baton_webhook::Settings;
use clap::Parser as _;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = Settings::parse();
    telemetry::init(settings.log_format);
    baton_webhook::run(settings, telemetry::shutdown_signal())
        .await
        .context("baton-webhook")
}
