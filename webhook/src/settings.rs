//! Every setting of the webhook: its flag, env var, default and doc.
//!
//! The sidecar's own settings are not repeated here: they come from
//! [`baton_sidecar::settings::Settings`] through `baton.dev/<flag>` annotations.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{ArgAction, Parser};

pub use baton_sidecar::settings::LogFormat;
use baton_sidecar::settings::parse_duration;

use crate::quantity;

/// Image of the sidecar when `--sidecar-image` is not given: the release that matches this webhook.
pub const DEFAULT_SIDECAR_IMAGE: &str = concat!(
    "ghcr.io/baton-dev/baton-sidecar:",
    env!("CARGO_PKG_VERSION")
);

#[derive(Parser, Debug, Clone, PartialEq)]
#[command(
    name = "baton-webhook",
    version,
    about = "Mutating admission webhook that injects the baton sidecar into annotated workloads"
)]
pub struct Settings {
    /// Address of the HTTPS server that answers the API server (/mutate, /validate).
    #[arg(
        long,
        env = "BATON_WEBHOOK_LISTEN_ADDR",
        default_value = "0.0.0.0:8443"
    )]
    pub listen_addr: SocketAddr,

    /// Address of the plain-HTTP server for /healthz and /metrics.
    #[arg(long, env = "BATON_WEBHOOK_HTTP_ADDR", default_value = "0.0.0.0:8080")]
    pub http_addr: SocketAddr,

    /// PEM certificate chain to serve; re-read when the file (or the symlink target) changes.
    #[arg(long, env = "BATON_WEBHOOK_TLS_CERT_FILE", requires = "tls_key_file")]
    pub tls_cert_file: Option<PathBuf>,

    /// PEM private key of --tls-cert-file.
    #[arg(long, env = "BATON_WEBHOOK_TLS_KEY_FILE", requires = "tls_cert_file")]
    pub tls_key_file: Option<PathBuf>,

    /// Names (DNS or IP) of the self-signed serving certificate made when no cert files are given.
    #[arg(
        long,
        env = "BATON_WEBHOOK_TLS_SAN",
        value_delimiter = ',',
        default_value = "localhost,127.0.0.1"
    )]
    pub tls_san: Vec<String>,

    /// Where to write the PEM of the CA that signed the self-signed certificate (the caBundle).
    #[arg(long, env = "BATON_WEBHOOK_CA_OUT_FILE")]
    pub ca_out_file: Option<PathBuf>,

    /// Self-managed certificates: the Secret in which the replicas keep the CA and serving
    /// certificate they make (for --tls-san), renew and publish as the caBundle of
    /// --webhook-configuration. Replaces --tls-cert-file.
    #[arg(
        long,
        env = "BATON_WEBHOOK_CERT_SECRET",
        conflicts_with = "tls_cert_file"
    )]
    pub cert_secret: Option<String>,

    /// Namespace of --cert-secret (the webhook's own).
    #[arg(
        long,
        env = "BATON_WEBHOOK_CERT_SECRET_NAMESPACE",
        default_value = "baton-system"
    )]
    pub cert_secret_namespace: String,

    /// Name of the Mutating- and ValidatingWebhookConfiguration whose caBundle --cert-secret keeps.
    #[arg(
        long,
        env = "BATON_WEBHOOK_CONFIGURATION",
        default_value = "baton-webhook"
    )]
    pub webhook_configuration: String,

    /// Lifetime of a self-managed serving certificate.
    #[arg(long, env = "BATON_WEBHOOK_CERT_VALIDITY", default_value = "90days", value_parser = parse_duration)]
    pub cert_validity: Duration,

    /// A self-managed serving certificate is replaced this long before it expires.
    #[arg(long, env = "BATON_WEBHOOK_CERT_RENEW_BEFORE", default_value = "30days", value_parser = parse_duration)]
    pub cert_renew_before: Duration,

    /// Lifetime of a self-managed CA; a new one joins the caBundle before the old one expires.
    #[arg(long, env = "BATON_WEBHOOK_CA_VALIDITY", default_value = "3650days", value_parser = parse_duration)]
    pub ca_validity: Duration,

    /// Image of the injected sidecar.
    #[arg(long, env = "BATON_WEBHOOK_SIDECAR_IMAGE", default_value = DEFAULT_SIDECAR_IMAGE)]
    pub sidecar_image: String,

    /// Inject a native sidecar (an init container with restartPolicy Always) unless a pod's
    /// baton.dev/native-sidecar annotation says otherwise; false appends a regular container.
    #[arg(long, env = "BATON_WEBHOOK_NATIVE_SIDECAR", default_value_t = true, action = ArgAction::Set)]
    pub native_sidecar: bool,

    /// CPU request of the sidecar (overridable by baton.dev/sidecar-cpu-request).
    #[arg(long, env = "BATON_WEBHOOK_SIDECAR_CPU_REQUEST", default_value = "10m", value_parser = parse_quantity)]
    pub sidecar_cpu_request: String,

    /// Memory request of the sidecar (overridable by baton.dev/sidecar-memory-request).
    #[arg(long, env = "BATON_WEBHOOK_SIDECAR_MEMORY_REQUEST", default_value = "16Mi", value_parser = parse_quantity)]
    pub sidecar_memory_request: String,

    /// CPU limit of the sidecar, none by default (overridable by baton.dev/sidecar-cpu-limit).
    #[arg(long, env = "BATON_WEBHOOK_SIDECAR_CPU_LIMIT", value_parser = parse_quantity)]
    pub sidecar_cpu_limit: Option<String>,

    /// Memory limit of the sidecar (overridable by baton.dev/sidecar-memory-limit).
    #[arg(long, env = "BATON_WEBHOOK_SIDECAR_MEMORY_LIMIT", default_value = "64Mi", value_parser = parse_quantity)]
    pub sidecar_memory_limit: String,

    /// Upper bound of one API request (owner lookup); keep it below the webhook's timeoutSeconds.
    #[arg(long, env = "BATON_WEBHOOK_API_TIMEOUT", default_value = "3s", value_parser = parse_duration)]
    pub api_timeout: Duration,

    /// Name of this webhook's Pod, reported as the instance of the Events it records.
    #[arg(long, env = "BATON_WEBHOOK_POD_NAME")]
    pub pod_name: Option<String>,

    /// Log format.
    #[arg(long, env = "BATON_WEBHOOK_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

fn parse_quantity(s: &str) -> Result<String, String> {
    quantity::check(s).map(|()| s.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Settings, clap::Error> {
        Settings::try_parse_from(std::iter::once("baton-webhook").chain(args.iter().copied()))
    }

    #[test]
    fn defaults_serve_https_on_8443_with_a_native_sidecar_of_this_version() {
        let s = parse(&[]).expect("defaults parse");
        assert_eq!(s.listen_addr.port(), 8443);
        assert_eq!(s.http_addr.port(), 8080);
        assert!(s.native_sidecar);
        assert!(s.sidecar_image.ends_with(env!("CARGO_PKG_VERSION")));
        assert_eq!(s.tls_san, ["localhost", "127.0.0.1"]);
        assert_eq!(s.sidecar_cpu_limit, None);
    }

    #[test]
    fn native_sidecar_can_be_turned_off() {
        let s = parse(&["--native-sidecar=false"]).expect("parses");
        assert!(!s.native_sidecar);
    }

    #[test]
    fn cert_file_without_key_file_is_rejected() {
        let err = parse(&["--tls-cert-file=/tmp/x.pem"]).expect_err("needs the key");
        assert!(err.to_string().contains("--tls-key-file"), "{err}");
    }

    #[test]
    fn self_managed_certificates_exclude_cert_files_and_default_to_90_days() {
        let s = parse(&["--cert-secret=baton-webhook-tls"]).expect("parses");
        assert_eq!(s.cert_secret.as_deref(), Some("baton-webhook-tls"));
        assert_eq!(s.cert_secret_namespace, "baton-system");
        assert_eq!(s.webhook_configuration, "baton-webhook");
        assert_eq!(s.cert_validity, Duration::from_secs(90 * 86_400));
        assert!(s.cert_renew_before < s.cert_validity);
        let err = parse(&[
            "--cert-secret=x",
            "--tls-cert-file=/tmp/c.pem",
            "--tls-key-file=/tmp/k.pem",
        ])
        .expect_err("one source of certificates");
        assert!(err.to_string().contains("--cert-secret"), "{err}");
    }

    #[test]
    fn bad_resource_quantity_names_flag_and_value() {
        let err = parse(&["--sidecar-memory-limit=lots"]).expect_err("not a quantity");
        let msg = err.to_string();
        assert!(
            msg.contains("--sidecar-memory-limit") && msg.contains("lots"),
            "{msg}"
        );
    }

    /// The workspace's version, read from the root Cargo.toml (the one
    /// version source of a release).
    fn workspace_version() -> String {
        let toml = include_str!("../../Cargo.toml");
        let package = toml
            .split("[workspace.package]")
            .nth(1)
            .expect("Cargo.toml has [workspace.package]");
        let line = package
            .lines()
            .find(|l| l.starts_with("version = "))
            .expect("[workspace.package] has a version");
        line.trim_start_matches("version = ")
            .trim_matches('"')
            .to_owned()
    }

    #[test]
    fn the_default_sidecar_image_is_the_release_of_the_workspace_version() {
        assert_eq!(
            DEFAULT_SIDECAR_IMAGE,
            format!("ghcr.io/baton-dev/baton-sidecar:{}", workspace_version())
        );
        let settings = parse(&[]).expect("defaults parse");
        assert_eq!(settings.sidecar_image, DEFAULT_SIDECAR_IMAGE);
    }
}
