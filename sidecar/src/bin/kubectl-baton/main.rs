//! `kubectl baton`: a kubectl plugin to inspect and steer baton's groups
//! (docs/kubectl-baton.md). It writes only the annotations of
//! `baton_sidecar::contract::controls`; the sidecars act on them.

mod cli;
mod cluster;
mod cordon;
mod group;
mod output;
mod pause;
mod refusal;
mod render;
mod status;
mod switchover;

use std::process::ExitCode;

use clap::Parser;

use crate::{
    cli::{Cli, Command},
    cluster::Cluster,
};

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // Usage errors exit 1 like every other error (clap's own is 2), as
        // kubectl's do; --help and --version exit 0.
        Err(err) => {
            let _ = err.print();
            return if err.use_stderr() {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("{}", cluster::describe(&err));
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    cli.labels.validate()?;
    let cluster = Cluster::connect(&cli.connection).await?;
    let keys = &cli.labels;
    match &cli.command {
        Command::Status(args) => status::run(&cluster, args, keys).await,
        Command::Switchover(args) => switchover::run(&cluster, args, keys).await,
        Command::Cordon(args) => cordon::run(&cluster, &args.pod, true, keys).await,
        Command::Uncordon(args) => cordon::run(&cluster, &args.pod, false, keys).await,
        Command::Pause(args) => pause::run(&cluster, &args.group, true).await,
        Command::Resume(args) => pause::run(&cluster, &args.group, false).await,
    }
}
