//! `kube-leader-election` 0.44's `LeaseLock` in the race that
//! tests/tests/election_race.rs runs with baton's election (three
//! candidates at once for a Lease that expired or was released): the figure
//! docs/decisions.md section 1 cites. The racer is built outside the
//! workspace (tests/kle-race: the crate needs kube 4) by `make bench`.

use std::{fmt::Write as _, path::Path};

use baton_e2e::harness::Cluster;
use serde_json::Value;

pub struct KleRace {
    pub rounds: usize,
    /// The racer's answer, or why there is none.
    pub figures: Result<Value, String>,
}

pub async fn run(cluster: &Cluster, racer: &Path, rounds: usize) -> KleRace {
    let ns = cluster.namespace("bench-kle-race").await;
    let out = tokio::process::Command::new(racer)
        .env("KUBECONFIG", cluster.dir.join("kubeconfig"))
        .arg(&ns.name)
        .arg(rounds.to_string())
        .output()
        .await;
    ns.delete().await;
    let figures = match out {
        Ok(o) if o.status.success() => {
            serde_json::from_slice(&o.stdout).map_err(|e| format!("its output: {e}"))
        }
        Ok(o) => Err(format!(
            "{}: {}",
            o.status,
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Err(format!("{}: {e} (make bench builds it)", racer.display())),
    };
    KleRace { rounds, figures }
}

impl KleRace {
    pub fn markdown(&self) -> String {
        let mut md = String::from(
            "Three candidates call `LeaseLock::try_acquire_or_renew` at once (a barrier) on a Lease that expired or was released, on the real API server; a double holder is a round in which more than one came out holding it. baton's election in the same race is an e2e test (tests/tests/election_race.rs), which fails on any double holder or any round without a winner.\n\n",
        );
        match &self.figures {
            Ok(v) => {
                md.push_str("| Lease | rounds | rounds with two or more holders | most holders in a round |\n| --- | --- | --- | --- |\n");
                for what in ["expired", "released"] {
                    let f = &v[what];
                    let _ = writeln!(
                        md,
                        "| {what} | {} | {} | {} |",
                        f["rounds"], f["double_rounds"], f["most_holders"]
                    );
                }
            }
            Err(e) => {
                let _ = writeln!(md, "- error: {e}");
            }
        }
        md
    }
}
