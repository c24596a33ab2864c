//! `baton-release`: the steps of `make release` that read the repository
//! (tests/release/release.sh runs them): check that every shipped version is
//! the workspace's, write the release notes, the SBOM and the Krew manifest.
//! The decisions are in `baton_e2e::release`; this only reads and writes.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, bail};
use baton_e2e::{harness::repo_root, release};
use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "baton-release",
    version,
    about = "The repository's side of `make release`"
)]
struct Cli {
    #[command(subcommand)]
    step: Step,
}

#[derive(Subcommand, Debug)]
enum Step {
    /// Fail when a shipped file names another version than Cargo.toml's; print the version.
    Check,
    /// Write the CHANGELOG.md section of the workspace version.
    Notes {
        #[arg(long)]
        out: PathBuf,
    },
    /// Write a CycloneDX SBOM of what the shipped crates link for a target.
    Sbom {
        /// Rust target triple the binaries are built for.
        #[arg(long)]
        target: String,
        /// RFC 3339 time the SBOM records (the commit's, for the same file from the same commit).
        #[arg(long)]
        timestamp: String,
        #[arg(long)]
        out: PathBuf,
    },
    /// Write Krew's plugin manifest for the plugin archives of a release folder
    /// (each with its `<archive>.sha256` beside it).
    Krew {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

fn main() -> anyhow::Result<()> {
    let root = repo_root();
    let cargo_toml = fs::read_to_string(root.join("Cargo.toml")).context("reading Cargo.toml")?;
    let version = release::workspace_version(&cargo_toml)?;
    match Cli::parse().step {
        Step::Check => {
            let (version, found) = release::repository_mismatches(&root)?;
            if !found.is_empty() {
                for m in &found {
                    eprintln!("{m}");
                }
                bail!(
                    "{} place(s) differ from the workspace version {version}",
                    found.len()
                );
            }
            println!("{version}");
        }
        Step::Notes { out } => {
            let changelog =
                fs::read_to_string(root.join("CHANGELOG.md")).context("reading CHANGELOG.md")?;
            let Some(notes) = release::changelog_section(&changelog, &version) else {
                bail!("CHANGELOG.md has no section ## [{version}]");
            };
            write(&out, &format!("{notes}\n"))?;
        }
        Step::Sbom {
            target,
            timestamp,
            out,
        } => {
            let output = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
                .args([
                    "metadata",
                    "--format-version",
                    "1",
                    "--locked",
                    "--filter-platform",
                    &target,
                ])
                .current_dir(&root)
                .output()
                .context("running cargo metadata")?;
            if !output.status.success() {
                bail!(
                    "cargo metadata: {}",
                    String::from_utf8_lossy(&output.stderr)
                );
            }
            let metadata: serde_json::Value =
                serde_json::from_slice(&output.stdout).context("parsing cargo metadata")?;
            let lock = fs::read_to_string(root.join("Cargo.lock")).context("reading Cargo.lock")?;
            let bom = release::cyclonedx(
                &metadata,
                &release::lock_checksums(&lock),
                &release::SHIPPED_CRATES,
                &version,
                &timestamp,
            )?;
            write(&out, &format!("{}\n", serde_json::to_string_pretty(&bom)?))?;
        }
        Step::Krew { dir, out } => {
            let repository = release::workspace_repository(&cargo_toml)
                .context("Cargo.toml has no repository in [workspace.package]")?;
            let mut archives = Vec::new();
            let mut names: Vec<String> = fs::read_dir(&dir)
                .with_context(|| format!("reading {}", dir.display()))?
                .filter_map(|e| e.ok().and_then(|e| e.file_name().into_string().ok()))
                .collect();
            names.sort();
            for file in names {
                let Some((os, arch)) = release::plugin_archive_platform(&version, &file) else {
                    continue;
                };
                let sum_file = dir.join(format!("{file}.sha256"));
                let sum = fs::read_to_string(&sum_file)
                    .with_context(|| format!("reading {}", sum_file.display()))?;
                let sha256 = sum.split_whitespace().next().unwrap_or_default().to_owned();
                if sha256.len() != 64 {
                    bail!("{} holds no sha256", sum_file.display());
                }
                archives.push(release::PluginArchive {
                    os,
                    arch,
                    file,
                    sha256,
                });
            }
            if archives.is_empty() {
                bail!(
                    "no kubectl-baton-v{version}-<os>-<arch>.tar.gz in {}",
                    dir.display()
                );
            }
            write(
                &out,
                &release::krew_manifest(&version, &repository, &archives),
            )?;
        }
    }
    Ok(())
}
