use baton_sidecar::Settings;
use clap::Parser;

fn main() -> anyhow::Result<()> {
    let settings = Settings::parse();
    settings.validate()?;
    Ok(())
}
