//! Every setting of the sidecar: its flag, env var, default and doc.
//!
//! This struct is the one schema. The webhook turns `baton.dev/<flag>`
//! annotations into `BATON_<FLAG>` env through it (the arguments under the
//! [`ANNOTATION_HEADING`] help heading) and validates them by parsing them
//! with it, so defaults and checks are never written twice.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Parser, ValueEnum};

use crate::contract::{
    ANNOTATION_HEADING, env,
    role_labels::{LabelFlags, SameRoleValues},
};

#[derive(Parser, Debug, Clone, PartialEq)]
#[command(
    name = "baton-sidecar",
    version,
    about = "Probes the app beside it, competes for the group's Lease and labels its own Pod active or passive"
)]
pub struct Settings {
    /// Name of this Pod (downward API: metadata.name); the Lease holder identity.
    #[arg(long, env = env::POD_NAME)]
    pub pod_name: String,

    /// Namespace of this Pod (downward API: metadata.namespace).
    #[arg(long, env = env::POD_NAMESPACE)]
    pub pod_namespace: String,

    /// IP of this Pod (downward API: status.podIP), reported in /status.
    #[arg(long, env = env::POD_IP)]
    pub pod_ip: Option<String>,

    /// Name of the group's Lease; also the value of the group label.
    #[arg(long, env = env::LEASE_NAME, help_heading = ANNOTATION_HEADING)]
    pub lease_name: String,

    /// How long a Lease stays valid without renewal, judged on the local monotonic clock.
    #[arg(long, env = "BATON_LEASE_DURATION", default_value = "6s", value_parser = parse_duration, help_heading = ANNOTATION_HEADING)]
    pub lease_duration: Duration,

    /// A holder stops acting as holder this long after it sent its last successful renewal.
    #[arg(long, env = "BATON_RENEW_DEADLINE", default_value = "4s", value_parser = parse_duration, help_heading = ANNOTATION_HEADING)]
    pub renew_deadline: Duration,

    /// How often a holder renews the Lease (each renewal is one write to the API server).
    #[arg(long, env = "BATON_RENEW_PERIOD", default_value = "2s", value_parser = parse_duration, help_heading = ANNOTATION_HEADING)]
    pub renew_period: Duration,

    /// How long to wait before retrying a failed API call (the back-off grows from half of it).
    #[arg(long, env = "BATON_RETRY_PERIOD", default_value = "1s", value_parser = parse_duration, help_heading = ANNOTATION_HEADING)]
    pub retry_period: Duration,

    /// Upper bound of one API request; shortened further to the time a holder has left. A
    /// renewal may wait longer, until the Lease it renews would expire.
    #[arg(long, env = "BATON_API_TIMEOUT", default_value = "2s", value_parser = parse_duration)]
    pub api_timeout: Duration,

    /// How the app's health is checked.
    #[arg(long, env = "BATON_PROBE_KIND", value_enum, default_value_t = ProbeKind::Http, help_heading = ANNOTATION_HEADING)]
    pub probe_kind: ProbeKind,

    /// Scheme of the HTTP probe (certificates are not verified, as kubelet does).
    #[arg(long, env = "BATON_PROBE_SCHEME", value_enum, default_value_t = ProbeScheme::Http, help_heading = ANNOTATION_HEADING)]
    pub probe_scheme: ProbeScheme,

    /// Host the probe connects to: the app shares the Pod's network namespace.
    #[arg(long, env = env::PROBE_HOST, default_value = "127.0.0.1")]
    pub probe_host: String,

    /// Port of the app to probe.
    #[arg(long, env = "BATON_PROBE_PORT", default_value_t = 8080, value_parser = clap::value_parser!(u16).range(1..), help_heading = ANNOTATION_HEADING)]
    pub probe_port: u16,

    /// Path of the HTTP probe; a 2xx or 3xx answer is healthy.
    #[arg(long, env = "BATON_PROBE_PATH", default_value = "/healthz", value_parser = parse_path, help_heading = ANNOTATION_HEADING)]
    pub probe_path: String,

    /// Time between the starts of two probes.
    #[arg(long, env = "BATON_PROBE_PERIOD", default_value = "500ms", value_parser = parse_duration, help_heading = ANNOTATION_HEADING)]
    pub probe_period: Duration,

    /// A probe that has not answered after this long has failed (a hung app).
    #[arg(long, env = "BATON_PROBE_TIMEOUT", default_value = "400ms", value_parser = parse_duration, help_heading = ANNOTATION_HEADING)]
    pub probe_timeout: Duration,

    /// Consecutive failed probes that make a healthy app unhealthy.
    #[arg(long, env = "BATON_FAILURE_THRESHOLD", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..), help_heading = ANNOTATION_HEADING)]
    pub failure_threshold: u32,

    /// Consecutive good probes that make an unhealthy app healthy.
    #[arg(long, env = "BATON_SUCCESS_THRESHOLD", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..), help_heading = ANNOTATION_HEADING)]
    pub success_threshold: u32,

    // The role label's key and values, and the group label.
    #[command(flatten)]
    pub labels: LabelFlags,

    /// Address of the status server (/healthz, /readyz, /status, /metrics).
    #[arg(long, env = env::STATUS_ADDR, default_value = "0.0.0.0:9095")]
    pub status_addr: SocketAddr,

    /// File the app may read: the role and leaseTransitions (a fencing token), replaced atomically.
    #[arg(long, env = "BATON_ROLE_FILE")]
    pub role_file: Option<PathBuf>,

    /// After its pod is deleted, an active pod's app keeps serving this long after another pod took the Lease, so that kube-proxy (one sync per second by default) routes new connections there before the app stops; the injected preStop hook waits for it.
    #[arg(long, env = "BATON_HANDOVER_DRAIN", default_value = "2s", value_parser = parse_duration, help_heading = ANNOTATION_HEADING)]
    pub handover_drain: Duration,

    /// A Service without a selector whose one endpoint the Lease holder writes (an EndpointSlice it owns): a switch reaches kube-proxy as one change, and the endpoint does not follow the pods' Ready condition. Unset, the Service selects the role label.
    #[arg(long, env = "BATON_SERVICE", value_parser = parse_service_name, help_heading = ANNOTATION_HEADING)]
    pub service: Option<String>,

    /// Put the sidecar in the data path: the Service targets its port `baton-proxy`, which splices connections to the app while this pod is active, forwards them to the holder otherwise, and closes every connection it carries when its route changes, so that only the holder's app answers, kept-alive connections included.
    #[arg(long, env = "BATON_PROXY", default_value_t = true, action = clap::ArgAction::Set, help_heading = ANNOTATION_HEADING)]
    pub proxy: bool,

    /// Port of the app that the proxy sends connections to, on probe-host. Unset: probe-port.
    #[arg(long, env = "BATON_PROXY_APP_PORT", value_parser = clap::value_parser!(u16).range(1..), help_heading = ANNOTATION_HEADING)]
    pub proxy_app_port: Option<u16>,

    /// How long a new connection waits for a route (no holder known, or this pod about to become active) before the proxy closes it.
    #[arg(long, env = "BATON_PROXY_ROUTE_WAIT", default_value = "2s", value_parser = parse_duration, help_heading = ANNOTATION_HEADING)]
    pub proxy_route_wait: Duration,

    /// Address of the proxy's front port (the container port `baton-proxy`, which the Service targets).
    #[arg(long, env = env::PROXY_ADDR, default_value = "0.0.0.0:9096")]
    pub proxy_addr: SocketAddr,

    /// Address of the proxy's peer port (the container port `baton-peer`): connections forwarded by other pods of the group, served only while this pod is active.
    #[arg(long, env = env::PROXY_PEER_ADDR, default_value = "0.0.0.0:9097")]
    pub proxy_peer_addr: SocketAddr,

    /// Log format.
    #[arg(long, env = "BATON_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProbeKind {
    /// HTTP GET; healthy on 2xx or 3xx.
    Http,
    /// TCP connect; healthy when the connection opens.
    Tcp,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeScheme {
    Http,
    Https,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// Settings that parse one by one but make no sense together.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SettingsError {
    #[error(
        "--lease-duration ({lease:?}) must be longer than --renew-deadline ({renew:?}) by at least --api-timeout ({api:?}), so that one slow renewal cannot outlive the lease"
    )]
    LeaseNotLongerThanDeadline {
        lease: Duration,
        renew: Duration,
        api: Duration,
    },
    #[error(
        "--renew-deadline ({deadline:?}) must be longer than --renew-period ({renew:?}) plus --retry-period ({retry:?}), so that a failed renewal is retried once before the deadline"
    )]
    DeadlineTooShortForRenewals {
        deadline: Duration,
        renew: Duration,
        retry: Duration,
    },
    #[error("--probe-timeout ({timeout:?}) must not be longer than --probe-period ({period:?})")]
    ProbeTimeoutLongerThanPeriod { timeout: Duration, period: Duration },
    #[error(transparent)]
    SameRoleValues(#[from] SameRoleValues),
    #[error(
        "--status-addr, --proxy-addr and --proxy-peer-addr need three different ports (port {0} twice)"
    )]
    SamePort(u16),
    #[error("{flag} must be more than zero")]
    Zero { flag: &'static str },
}

impl Settings {
    /// Checks the relations between settings (each was checked alone by clap).
    pub fn validate(&self) -> Result<(), SettingsError> {
        for (flag, d) in [
            ("--lease-duration", self.lease_duration),
            ("--renew-deadline", self.renew_deadline),
            ("--renew-period", self.renew_period),
            ("--retry-period", self.retry_period),
            ("--api-timeout", self.api_timeout),
            ("--probe-period", self.probe_period),
            ("--probe-timeout", self.probe_timeout),
            ("--proxy-route-wait", self.proxy_route_wait),
        ] {
            if d.is_zero() {
                return Err(SettingsError::Zero { flag });
            }
        }
        if self.lease_duration < self.renew_deadline + self.api_timeout {
            return Err(SettingsError::LeaseNotLongerThanDeadline {
                lease: self.lease_duration,
                renew: self.renew_deadline,
                api: self.api_timeout,
            });
        }
        if self.renew_deadline <= self.renew_period + self.retry_period {
            return Err(SettingsError::DeadlineTooShortForRenewals {
                deadline: self.renew_deadline,
                renew: self.renew_period,
                retry: self.retry_period,
            });
        }
        if self.probe_timeout > self.probe_period {
            return Err(SettingsError::ProbeTimeoutLongerThanPeriod {
                timeout: self.probe_timeout,
                period: self.probe_period,
            });
        }
        if self.proxy {
            let ports = [
                self.status_addr.port(),
                self.proxy_addr.port(),
                self.proxy_peer_addr.port(),
            ];
            for (i, p) in ports.iter().enumerate() {
                if ports[i + 1..].contains(p) {
                    return Err(SettingsError::SamePort(*p));
                }
            }
        }
        self.labels.validate()?;
        Ok(())
    }

    /// The settings a pod may set by annotation: (flag, env var).
    pub fn annotatable() -> Vec<(String, String)> {
        use clap::CommandFactory;
        Self::command()
            .get_arguments()
            .filter(|a| a.get_help_heading() == Some(ANNOTATION_HEADING))
            .filter_map(|a| {
                let env = a.get_env()?.to_str()?.to_owned();
                Some((a.get_long()?.to_owned(), env))
            })
            .collect()
    }
}

/// A duration as people write it (`500ms`, `2s`, `1m`); shared with the
/// webhook's flags.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (write e.g. 500ms, 2s, 1m)"))
}

fn parse_path(s: &str) -> Result<String, String> {
    if s.starts_with('/') && !s.chars().any(char::is_whitespace) {
        Ok(s.to_owned())
    } else {
        Err("must start with '/' and contain no spaces".to_owned())
    }
}

/// A Service name: a DNS-1035 label (lowercase alphanumerics and '-',
/// starting with a letter, at most 63).
fn parse_service_name(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.starts_with(|c: char| c.is_ascii_lowercase())
        && !s.ends_with('-')
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(s.to_owned())
    } else {
        Err("must be a Service name: 1-63 of [a-z0-9-], starting with a letter and ending alphanumeric".to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &[&str]) -> Result<Settings, clap::Error> {
        let mut args = vec![
            "baton-sidecar",
            "--pod-name=web-0",
            "--pod-namespace=default",
            "--lease-name=web",
        ];
        args.extend_from_slice(extra);
        Settings::try_parse_from(args)
    }

    #[test]
    fn defaults_are_valid_and_ordered() {
        let s = parse(&[]).expect("defaults parse");
        assert_eq!(s.validate(), Ok(()));
        assert!(s.lease_duration > s.renew_deadline);
        assert!(s.renew_deadline > s.renew_period + s.retry_period);
        assert_eq!(
            (s.labels.role_label.as_str(), s.labels.active_value.as_str()),
            ("role", "active")
        );
    }

    #[test]
    fn bad_duration_names_the_flag_and_value() {
        let err = parse(&["--lease-duration=soon"]).unwrap_err().to_string();
        assert!(err.contains("--lease-duration"), "{err}");
        assert!(err.contains("soon"), "{err}");
    }

    #[test]
    fn zero_threshold_is_rejected() {
        let err = parse(&["--failure-threshold=0"]).unwrap_err().to_string();
        assert!(err.contains("--failure-threshold"), "{err}");
    }

    #[test]
    fn lease_must_outlast_deadline_plus_one_request() {
        let s = parse(&[
            "--lease-duration=5s",
            "--renew-deadline=4s",
            "--api-timeout=2s",
        ])
        .expect("each parses");
        assert!(matches!(
            s.validate(),
            Err(SettingsError::LeaseNotLongerThanDeadline { .. })
        ));
    }

    #[test]
    fn deadline_leaves_room_for_one_retried_renewal() {
        // 2s + 1s < 4s by default; 3s + 1s leaves no retry before the deadline.
        let s = parse(&["--renew-period=3s"]).expect("each parses");
        let err = s.validate().expect_err("no room for a retry");
        assert!(
            matches!(err, SettingsError::DeadlineTooShortForRenewals { .. }),
            "{err}"
        );
        assert!(err.to_string().contains("--renew-period"), "{err}");
        let s = parse(&["--renew-period=1s", "--renew-deadline=2500ms"]).expect("each parses");
        assert_eq!(s.validate(), Ok(()));
    }

    #[test]
    fn label_syntax_is_checked() {
        assert!(parse(&["--role-label=baton.dev/role"]).is_ok());
        assert!(parse(&["--role-label=Bad_Prefix/role"]).is_err());
        assert!(parse(&["--active-value=-leading"]).is_err());
        assert!(parse(&["--active-value=primary.v1"]).is_ok());
        let s = parse(&["--active-value=same", "--passive-value=same"]).expect("each parses");
        assert_eq!(
            s.validate(),
            Err(SettingsError::SameRoleValues(SameRoleValues("same".into())))
        );
    }

    #[test]
    fn a_service_name_is_a_dns_label() {
        let s = parse(&["--service=web-active"]).expect("a DNS label");
        assert_eq!(s.service.as_deref(), Some("web-active"));
        for bad in ["Web", "1web", "web-", "web.active", ""] {
            let err = parse(&[&format!("--service={bad}")])
                .unwrap_err()
                .to_string();
            assert!(err.contains("--service"), "{bad}: {err}");
        }
    }

    #[test]
    fn the_proxy_is_on_by_default_and_its_ports_must_differ() {
        let s = parse(&[]).expect("defaults parse");
        assert!(s.proxy);
        assert_eq!(s.proxy_app_port, None, "the probed port unless set");
        let s = parse(&["--proxy-peer-addr=0.0.0.0:9096"]).expect("each parses");
        assert_eq!(s.validate(), Err(SettingsError::SamePort(9096)));
        let s = parse(&["--proxy=false", "--proxy-peer-addr=0.0.0.0:9096"]).expect("each parses");
        assert_eq!(s.validate(), Ok(()), "no proxy, no ports of its own");
    }

    #[test]
    fn annotatable_settings_have_env_vars_and_exclude_identity() {
        let names = Settings::annotatable();
        assert!(names.contains(&("probe-path".into(), "BATON_PROBE_PATH".into())));
        assert!(names.contains(&("lease-name".into(), "BATON_LEASE_NAME".into())));
        assert!(!names.iter().any(|(flag, _)| flag == "pod-name"));
    }
}
