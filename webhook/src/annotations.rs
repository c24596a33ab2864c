//! `baton.dev/*` annotations, read from the pod (template) first and its owner
//! workload second, turned into the sidecar's settings and checked with the
//! sidecar's own schema ([`baton_sidecar::Settings`]): defaults and checks are
//! never written twice.

use std::{collections::BTreeMap, fmt};

use baton_sidecar::{contract::ANNOTATION_PREFIX, settings::Settings as SidecarSettings};
use clap::{ColorChoice, CommandFactory, FromArgMatches, error::ContextKind, error::ContextValue};
use k8s_openapi::api::core::v1::Pod;

use crate::{
    keys::{
        INJECT, NATIVE_SIDECAR, SIDECAR_CPU_LIMIT, SIDECAR_CPU_REQUEST, SIDECAR_MEMORY_LIMIT,
        SIDECAR_MEMORY_REQUEST,
    },
    owner::Owner,
    quantity,
};

const LEASE_NAME_FLAG: &str = "lease-name";
const PROBE_PORT_FLAG: &str = "probe-port";
const LONGEST_SHOWN_VALUE: usize = 80;

/// Where a value was found: on the pod (template) or on its owner workload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    Pod,
    Owner { kind: String, name: String },
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Pod => Ok(()),
            Origin::Owner { kind, name } => write!(f, " (on {kind} {name})"),
        }
    }
}

/// Why a pod is refused; the message goes back to whoever created the pod.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denial {
    #[error("annotation {key}={value:?}{origin}: {reason}", value = shown(value))]
    InvalidAnnotation {
        key: String,
        value: String,
        origin: Origin,
        reason: String,
    },
    #[error("baton.dev/* annotations conflict: {0}")]
    Conflict(String),
    #[error("bare pods must set baton.dev/lease-name (no StatefulSet or Deployment owns this pod)")]
    NoLeaseName,
    #[error(
        "lease name {name:?} (the {kind} name) {reason}; set baton.dev/lease-name to a shorter name"
    )]
    BadOwnerLeaseName {
        name: String,
        kind: String,
        reason: String,
    },
    #[error(
        "container {container:?} uses port {port}, one of the sidecar's ports (status, proxy, proxy peer); move the app or its port, or set baton.dev/proxy: \"false\" if it is a proxy port"
    )]
    PortConflict { container: String, port: u16 },
    /// Every invalid annotation of the pod at once: fixing them one apply
    /// at a time would be tedious.
    #[error("{} invalid baton.dev annotations: {}", .0.len(), .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Several(Vec<Denial>),
    /// A container of the user's own carries the sidecar's name: skipping
    /// it as "already injected" would leave a group that never elects.
    #[error(
        "the pod already has a container named {name:?} that baton did not inject (no baton.dev/injected annotation); rename that container, or set baton.dev/inject: \"false\" on the pod"
    )]
    ForeignSidecar { name: String },
}

/// Long values are cut in messages: a denial stays one readable line.
fn shown(value: &str) -> String {
    if value.chars().count() <= LONGEST_SHOWN_VALUE {
        value.to_owned()
    } else {
        let cut: String = value.chars().take(LONGEST_SHOWN_VALUE).collect();
        format!("{cut}...")
    }
}

/// The pod's annotations, then its owner's.
#[derive(Debug, Clone, Copy)]
pub struct Sources<'a> {
    pub pod: Option<&'a BTreeMap<String, String>>,
    pub owner: Option<&'a Owner>,
}

/// One annotation value and where it was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found<'a> {
    pub key: String,
    pub value: &'a str,
    pub origin: Origin,
}

impl Found<'_> {
    fn invalid(&self, reason: impl Into<String>) -> Denial {
        Denial::InvalidAnnotation {
            key: self.key.clone(),
            value: self.value.to_owned(),
            origin: self.origin.clone(),
            reason: reason.into(),
        }
    }
}

impl<'a> Sources<'a> {
    pub fn new(pod: &'a Pod, owner: Option<&'a Owner>) -> Self {
        Self {
            pod: pod.metadata.annotations.as_ref(),
            owner,
        }
    }

    fn on_pod(&self, key: &str) -> Option<Found<'a>> {
        let value = self.pod?.get(key)?;
        Some(Found {
            key: key.to_owned(),
            value,
            origin: Origin::Pod,
        })
    }

    fn on_owner(&self, key: &str) -> Option<Found<'a>> {
        let owner = self.owner?;
        let value = owner.annotations.get(key)?;
        Some(Found {
            key: key.to_owned(),
            value,
            origin: Origin::Owner {
                kind: owner.kind.clone(),
                name: owner.name.clone(),
            },
        })
    }

    /// The pod's value of `key`, else the owner's.
    pub fn get(&self, key: &str) -> Option<Found<'a>> {
        self.on_pod(key).or_else(|| self.on_owner(key))
    }
}

/// What `baton.dev/inject` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OptIn {
    /// `"true"` on the pod, or on the owner with nothing on the pod.
    In,
    /// `"false"` on the pod: it wins over the owner.
    OptedOut,
    /// No `"true"` anywhere.
    NotAsked,
}

fn parse_bool(found: &Found<'_>) -> Result<bool, Denial> {
    match found.value {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(found.invalid("must be \"true\" or \"false\"")),
    }
}

/// Reads `baton.dev/inject`: the pod's value wins, the owner's counts when the pod has none.
pub fn opt_in(sources: &Sources<'_>) -> Result<OptIn, Denial> {
    if let Some(found) = sources.on_pod(INJECT) {
        return Ok(if parse_bool(&found)? {
            OptIn::In
        } else {
            OptIn::OptedOut
        });
    }
    match sources.on_owner(INJECT) {
        Some(found) if parse_bool(&found)? => Ok(OptIn::In),
        _ => Ok(OptIn::NotAsked),
    }
}

/// Requests and limits of the sidecar; `None` leaves one unset.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Resources {
    pub cpu_request: Option<String>,
    pub memory_request: Option<String>,
    pub cpu_limit: Option<String>,
    pub memory_limit: Option<String>,
}

/// Everything the annotations decide about one injection, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The sidecar's settings as it will parse them (the annotated values over its defaults).
    pub sidecar: SidecarSettings,
    /// Name of the group's Lease (always set explicitly in env).
    pub lease: String,
    /// Env from annotations (and the probe port guessed from the app), sorted by name.
    pub env: Vec<(String, String)>,
    /// Native sidecar or regular container.
    pub native: bool,
    pub resources: Resources,
}

/// Reads, combines and validates every `baton.dev/*` setting of the pod.
///
/// `native` and `resources` are the webhook's defaults, overridden by annotations.
pub fn plan(
    pod: &Pod,
    owner: Option<&Owner>,
    native: bool,
    resources: &Resources,
) -> Result<Plan, Denial> {
    let sources = Sources::new(pod, owner);
    // Each annotation is checked alone first, and all of them are reported.
    let mut problems: Vec<Denial> = Vec::new();
    let lease = keep(lease_name(&sources), &mut problems);
    let mut base = vec![
        "baton-sidecar".to_owned(),
        "--pod-name=x".to_owned(),
        "--pod-namespace=x".to_owned(),
    ];
    // (flag, env, value): every annotated setting, each parsed alone first so
    // that a bad value is denied naming its own annotation.
    let mut chosen: Vec<(String, String, String)> = Vec::new();
    for (flag, env) in SidecarSettings::annotatable() {
        if flag == LEASE_NAME_FLAG {
            continue;
        }
        let value = match sources.get(&format!("{ANNOTATION_PREFIX}{flag}")) {
            Some(found) => {
                let args = [base.clone(), vec![format!("--{LEASE_NAME_FLAG}=x")]].concat();
                let parsed = parse_sidecar(
                    args.into_iter()
                        .chain([format!("--{flag}={}", found.value)]),
                );
                if let Err(e) = parsed {
                    problems.push(found.invalid(clap_reason(&e)));
                    continue;
                }
                found.value.to_owned()
            }
            None if flag == PROBE_PORT_FLAG => match first_container_port(pod) {
                Some(port) => port.to_string(),
                None => continue,
            },
            None => continue,
        };
        chosen.push((flag, env, value));
    }
    let native = match sources.get(NATIVE_SIDECAR) {
        Some(found) => keep(parse_bool(&found), &mut problems),
        None => Some(native),
    };
    let mut quantity = |key, default| keep(quantity_or(&sources, key, default), &mut problems);
    let (cpu_request, memory_request, cpu_limit, memory_limit) = (
        quantity(SIDECAR_CPU_REQUEST, &resources.cpu_request),
        quantity(SIDECAR_MEMORY_REQUEST, &resources.memory_request),
        quantity(SIDECAR_CPU_LIMIT, &resources.cpu_limit),
        quantity(SIDECAR_MEMORY_LIMIT, &resources.memory_limit),
    );
    let (
        Some(lease),
        Some(native),
        Some(cpu_request),
        Some(memory_request),
        Some(cpu_limit),
        Some(memory_limit),
    ) = (
        lease,
        native,
        cpu_request,
        memory_request,
        cpu_limit,
        memory_limit,
    )
    else {
        return Err(Denial::all(problems));
    };
    if !problems.is_empty() {
        return Err(Denial::all(problems));
    }
    let resources = Resources {
        cpu_request,
        memory_request,
        cpu_limit,
        memory_limit,
    };

    // Then the settings together.
    base.push(format!("--{LEASE_NAME_FLAG}={lease}"));
    let args = base.into_iter().chain(
        chosen
            .iter()
            .map(|(flag, _, value)| format!("--{flag}={value}")),
    );
    let sidecar = parse_sidecar(args).map_err(|e| Denial::Conflict(clap_reason(&e)))?;
    sidecar
        .validate()
        .map_err(|e| Denial::Conflict(flags_to_annotations(&e.to_string())))?;

    let mut ours = vec![sidecar.status_addr.port()];
    if sidecar.proxy {
        ours.extend([sidecar.proxy_addr.port(), sidecar.proxy_peer_addr.port()]);
    }
    for port in ours {
        if let Some(container) = pod_containers(pod).find(|c| {
            c.ports
                .iter()
                .flatten()
                .any(|p| p.container_port == i32::from(port))
        }) {
            return Err(Denial::PortConflict {
                container: container.name.clone(),
                port,
            });
        }
    }

    let mut env: Vec<(String, String)> = chosen
        .into_iter()
        .map(|(_, env, value)| (env, value))
        .collect();
    env.sort();
    Ok(Plan {
        sidecar,
        lease,
        env,
        native,
        resources,
    })
}

/// The value, or `None` with the denial kept in `problems`.
fn keep<T>(result: Result<T, Denial>, problems: &mut Vec<Denial>) -> Option<T> {
    result.map_err(|denial| problems.push(denial)).ok()
}

impl Denial {
    /// One denial for `problems` (never empty): itself when alone.
    fn all(mut problems: Vec<Denial>) -> Denial {
        if problems.len() == 1 {
            problems.remove(0)
        } else {
            Denial::Several(problems)
        }
    }
}

fn pod_containers(pod: &Pod) -> impl Iterator<Item = &k8s_openapi::api::core::v1::Container> {
    pod.spec.iter().flat_map(|spec| {
        spec.init_containers
            .iter()
            .flatten()
            .chain(spec.containers.iter())
    })
}

/// The first containerPort of the first app container: what the app most likely serves.
fn first_container_port(pod: &Pod) -> Option<i32> {
    let container = pod.spec.as_ref()?.containers.first()?;
    Some(container.ports.as_ref()?.first()?.container_port)
}

/// `baton.dev/lease-name`, else the owner workload's name; it also becomes a label value.
fn lease_name(sources: &Sources<'_>) -> Result<String, Denial> {
    let key = format!("{ANNOTATION_PREFIX}{LEASE_NAME_FLAG}");
    if let Some(found) = sources.get(&key) {
        check_lease_name(found.value).map_err(|reason| found.invalid(reason))?;
        return Ok(found.value.to_owned());
    }
    let owner = sources.owner.ok_or(Denial::NoLeaseName)?;
    check_lease_name(&owner.name).map_err(|reason| Denial::BadOwnerLeaseName {
        name: owner.name.clone(),
        kind: owner.kind.clone(),
        reason,
    })?;
    Ok(owner.name.clone())
}

/// A Lease name (DNS subdomain) that is also a label value: 1-63 of `[a-z0-9.-]`.
fn check_lease_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err("must be 1-63 of [a-z0-9.-], starting and ending alphanumeric".to_owned())
    }
}

fn quantity_or(
    sources: &Sources<'_>,
    key: &str,
    default: &Option<String>,
) -> Result<Option<String>, Denial> {
    match sources.get(key) {
        Some(found) => {
            quantity::check(found.value).map_err(|reason| found.invalid(reason))?;
            Ok(Some(found.value.to_owned()))
        }
        None => Ok(default.clone()),
    }
}

/// The sidecar's schema without env vars: a pod's settings never depend on the webhook's environment.
fn sidecar_command() -> clap::Command {
    SidecarSettings::command()
        .color(ColorChoice::Never)
        .mut_args(|arg| arg.env(None::<&'static str>))
}

/// Parses with the sidecar's schema.
fn parse_sidecar(args: impl IntoIterator<Item = String>) -> Result<SidecarSettings, clap::Error> {
    let mut command = sidecar_command();
    let matches = command.try_get_matches_from_mut(args)?;
    SidecarSettings::from_arg_matches(&matches).map_err(|e| e.with_cmd(&command))
}

/// The reason of a clap error in one line, without usage or the flag name.
fn clap_reason(err: &clap::Error) -> String {
    use std::error::Error as _;
    if let Some(source) = err.source() {
        return format!("invalid value: {source}");
    }
    if let Some(ContextValue::Strings(valid)) = err.get(ContextKind::ValidValue) {
        return format!("invalid value: expected one of {}", valid.join(", "));
    }
    let text = err.to_string();
    let first = text.lines().next().unwrap_or_default();
    first.strip_prefix("error: ").unwrap_or(first).to_owned()
}

/// Rewrites `--flag` in a sidecar message as `baton.dev/flag` for the annotatable flags.
fn flags_to_annotations(message: &str) -> String {
    let mut flags: Vec<String> = SidecarSettings::annotatable()
        .into_iter()
        .map(|(flag, _)| flag)
        .collect();
    flags.sort_by_key(|f| std::cmp::Reverse(f.len()));
    flags.iter().fold(message.to_owned(), |msg, flag| {
        msg.replace(&format!("--{flag}"), &format!("{ANNOTATION_PREFIX}{flag}"))
    })
}

/// What the webhook itself reads, beyond the sidecar's settings: (annotation, meaning).
pub const WEBHOOK_ANNOTATIONS: [(&str, &str); 6] = [
    (
        INJECT,
        "\"true\" injects the sidecar; on the pod (template), or on the owning StatefulSet or Deployment. \"false\" on the pod wins over its owner",
    ),
    (
        NATIVE_SIDECAR,
        "\"true\": an init container with restartPolicy Always (a native sidecar); \"false\": a regular container",
    ),
    (SIDECAR_CPU_REQUEST, "CPU request of the sidecar"),
    (SIDECAR_MEMORY_REQUEST, "Memory request of the sidecar"),
    (SIDECAR_CPU_LIMIT, "CPU limit of the sidecar"),
    (SIDECAR_MEMORY_LIMIT, "Memory limit of the sidecar"),
];

/// The annotations reference of docs/webhook.md, as a Markdown table
/// generated from the sidecar's settings schema and the webhook's flags.
pub fn reference_table() -> String {
    use crate::settings::Settings as WebhookSettings;
    fn cell(text: &str) -> String {
        text.replace('|', "\\|").replace('\n', " ")
    }
    fn defaults(arg: &clap::Arg) -> String {
        let values: Vec<String> = arg
            .get_default_values()
            .iter()
            .map(|v| v.to_string_lossy().into_owned())
            .collect();
        if values.is_empty() {
            String::new()
        } else {
            format!("`{}`", values.join(","))
        }
    }
    let mut rows = vec![
        "| annotation | sidecar env | default | meaning |".to_owned(),
        "| --- | --- | --- | --- |".to_owned(),
    ];
    let webhook = WebhookSettings::command();
    for (key, meaning) in WEBHOOK_ANNOTATIONS {
        let flag = key.trim_start_matches(ANNOTATION_PREFIX);
        let default = match webhook.get_arguments().find(|a| a.get_long() == Some(flag)) {
            Some(arg) => format!("the webhook's `--{flag}` ({})", {
                let d = defaults(arg);
                if d.is_empty() { "none".to_owned() } else { d }
            }),
            None => "not injected".to_owned(),
        };
        rows.push(format!("| `{key}` | | {default} | {} |", cell(meaning)));
    }
    let sidecar = SidecarSettings::command();
    for (flag, env) in SidecarSettings::annotatable() {
        let Some(arg) = sidecar
            .get_arguments()
            .find(|a| a.get_long() == Some(flag.as_str()))
        else {
            continue;
        };
        let default = match flag.as_str() {
            LEASE_NAME_FLAG => "the owner's name (required on bare pods)".to_owned(),
            PROBE_PORT_FLAG => format!(
                "the first containerPort of the first container, else {}",
                defaults(arg)
            ),
            _ if defaults(arg).is_empty() => "unset".to_owned(),
            _ => defaults(arg),
        };
        let help = arg.get_help().map(ToString::to_string).unwrap_or_default();
        rows.push(format!(
            "| `{ANNOTATION_PREFIX}{flag}` | `{env}` | {default} | {} |",
            cell(&help)
        ));
    }
    rows.join("\n") + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{Annotated, PodExt, owner, pod};

    fn defaults() -> Resources {
        Resources {
            cpu_request: Some("10m".into()),
            memory_request: Some("16Mi".into()),
            cpu_limit: None,
            memory_limit: Some("64Mi".into()),
        }
    }

    #[test]
    fn docs_webhook_md_carries_the_generated_annotations_reference() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/webhook.md");
        let doc = std::fs::read_to_string(path).expect("docs/webhook.md");
        let table = reference_table();
        for (flag, _) in SidecarSettings::annotatable() {
            assert!(
                table.contains(&format!("| `{ANNOTATION_PREFIX}{flag}` |")),
                "{flag}"
            );
        }
        assert!(
            doc.contains(&table),
            "docs/webhook.md's annotations table is out of date; replace it with:\n\n{table}"
        );
    }

    fn plan_of(pod: &Pod, owner: Option<&Owner>) -> Result<Plan, Denial> {
        plan(pod, owner, true, &defaults())
    }

    #[test]
    fn pod_opt_out_wins_over_owner_opt_in() {
        let p = pod().annotated(INJECT, "false");
        let o = owner("StatefulSet", "web").annotated(INJECT, "true");
        assert_eq!(opt_in(&Sources::new(&p, Some(&o))), Ok(OptIn::OptedOut));
    }

    #[test]
    fn owner_opt_in_counts_when_pod_says_nothing() {
        let p = pod();
        let o = owner("StatefulSet", "web").annotated(INJECT, "true");
        assert_eq!(opt_in(&Sources::new(&p, Some(&o))), Ok(OptIn::In));
        assert_eq!(opt_in(&Sources::new(&p, None)), Ok(OptIn::NotAsked));
    }

    #[test]
    fn inject_value_other_than_true_or_false_denies_naming_it() {
        let p = pod().annotated(INJECT, "yes");
        let err = opt_in(&Sources::new(&p, None)).expect_err("yes is not a bool");
        assert_eq!(
            err.to_string(),
            "annotation baton.dev/inject=\"yes\": must be \"true\" or \"false\""
        );
        let o = owner("StatefulSet", "web").annotated(INJECT, "TRUE");
        let err = opt_in(&Sources::new(&pod(), Some(&o))).expect_err("TRUE is not a bool");
        assert!(err.to_string().contains("(on StatefulSet web)"), "{err}");
    }

    #[test]
    fn every_invalid_annotation_is_named_at_once() {
        let p = pod()
            .annotated("baton.dev/probe-period", "fast")
            .annotated("baton.dev/native-sidecar", "maybe")
            .annotated("baton.dev/sidecar-memory-limit", "lots");
        let err = plan_of(&p, Some(&owner("StatefulSet", "web"))).expect_err("three bad");
        let msg = err.to_string();
        assert!(
            msg.starts_with("3 invalid baton.dev annotations: "),
            "{msg}"
        );
        for named in [
            "baton.dev/probe-period=\"fast\"",
            "baton.dev/native-sidecar=\"maybe\"",
            "baton.dev/sidecar-memory-limit=\"lots\"",
        ] {
            assert!(msg.contains(named), "{named} in {msg}");
        }
        assert_eq!(msg.lines().count(), 1, "{msg}");
    }

    #[test]
    fn invalid_period_annotation_denies_naming_it() {
        let p = pod().annotated("baton.dev/probe-period", "fast");
        let err = plan_of(&p, Some(&owner("StatefulSet", "web"))).expect_err("fast");
        let msg = err.to_string();
        assert!(
            msg.starts_with("annotation baton.dev/probe-period=\"fast\": invalid value"),
            "{msg}"
        );
        assert!(!msg.contains("Usage"), "no clap usage block: {msg}");
        assert_eq!(msg.lines().count(), 1, "{msg}");
    }

    #[test]
    fn invalid_enum_annotation_lists_the_choices() {
        let p = pod().annotated("baton.dev/probe-kind", "grpc");
        let msg = plan_of(&p, Some(&owner("StatefulSet", "web")))
            .expect_err("grpc")
            .to_string();
        assert!(msg.contains("baton.dev/probe-kind=\"grpc\""), "{msg}");
        assert!(msg.contains("http") && msg.contains("tcp"), "{msg}");
    }

    #[test]
    fn zero_threshold_on_owner_denies_naming_owner() {
        let o = owner("StatefulSet", "web").annotated("baton.dev/failure-threshold", "0");
        let msg = plan_of(&pod(), Some(&o)).expect_err("zero").to_string();
        assert!(
            msg.starts_with(
                "annotation baton.dev/failure-threshold=\"0\" (on StatefulSet web): invalid value"
            ),
            "{msg}"
        );
    }

    #[test]
    fn values_that_conflict_name_the_annotations() {
        let p = pod()
            .annotated("baton.dev/probe-period", "1s")
            .annotated("baton.dev/probe-timeout", "2s");
        let msg = plan_of(&p, Some(&owner("StatefulSet", "web")))
            .expect_err("timeout > period")
            .to_string();
        assert!(msg.contains("baton.dev/probe-timeout"), "{msg}");
        assert!(msg.contains("baton.dev/probe-period"), "{msg}");
        assert!(!msg.contains("--probe"), "{msg}");
    }

    #[test]
    fn pod_value_wins_over_owner_value() {
        let p = pod().annotated("baton.dev/probe-path", "/pod");
        let o = owner("StatefulSet", "web")
            .annotated("baton.dev/probe-path", "/owner")
            .annotated("baton.dev/probe-kind", "tcp");
        let plan = plan_of(&p, Some(&o)).expect("valid");
        assert_eq!(plan.sidecar.probe_path, "/pod");
        assert!(
            plan.env
                .contains(&("BATON_PROBE_PATH".into(), "/pod".into()))
        );
        assert!(
            plan.env
                .contains(&("BATON_PROBE_KIND".into(), "tcp".into()))
        );
    }

    #[test]
    fn env_is_sorted_and_holds_only_what_was_annotated() {
        let p = pod()
            .annotated("baton.dev/retry-period", "500ms")
            .annotated("baton.dev/active-value", "primary");
        let plan = plan_of(&p, Some(&owner("StatefulSet", "web"))).expect("valid");
        assert_eq!(
            plan.env,
            [
                ("BATON_ACTIVE_VALUE".to_owned(), "primary".to_owned()),
                ("BATON_RETRY_PERIOD".to_owned(), "500ms".to_owned()),
            ]
        );
    }

    #[test]
    fn lease_name_defaults_to_owner_and_annotation_overrides() {
        let o = owner("Deployment", "api");
        assert_eq!(plan_of(&pod(), Some(&o)).expect("valid").lease, "api");
        let p = pod().annotated("baton.dev/lease-name", "shared");
        let plan = plan_of(&p, Some(&o)).expect("valid");
        assert_eq!(plan.lease, "shared");
        assert_eq!(plan.sidecar.lease_name, "shared");
        assert!(!plan.env.iter().any(|(k, _)| k == "BATON_LEASE_NAME"));
    }

    #[test]
    fn bare_pod_without_lease_name_is_denied() {
        assert_eq!(plan_of(&pod(), None), Err(Denial::NoLeaseName));
        let msg = Denial::NoLeaseName.to_string();
        assert!(
            msg.contains("bare pods must set baton.dev/lease-name"),
            "{msg}"
        );
    }

    #[test]
    fn lease_name_that_is_not_a_label_value_is_denied() {
        let p = pod().annotated("baton.dev/lease-name", "Web_1");
        let msg = plan_of(&p, None).expect_err("uppercase").to_string();
        assert!(
            msg.starts_with("annotation baton.dev/lease-name=\"Web_1\""),
            "{msg}"
        );
        let long = "a".repeat(64);
        let err = plan_of(&pod(), Some(&owner("Deployment", &long))).expect_err("too long");
        assert!(matches!(err, Denial::BadOwnerLeaseName { .. }), "{err}");
    }

    #[test]
    fn probe_port_comes_from_the_first_app_container_unless_annotated() {
        let p = pod().with_port(8081);
        let plan = plan_of(&p, Some(&owner("StatefulSet", "web"))).expect("valid");
        assert_eq!(plan.sidecar.probe_port, 8081);
        assert!(
            plan.env
                .contains(&("BATON_PROBE_PORT".into(), "8081".into()))
        );

        let p = pod()
            .with_port(8081)
            .annotated("baton.dev/probe-port", "9000");
        let plan = plan_of(&p, Some(&owner("StatefulSet", "web"))).expect("valid");
        assert_eq!(plan.sidecar.probe_port, 9000);

        let plan = plan_of(&pod(), Some(&owner("StatefulSet", "web"))).expect("valid");
        assert!(!plan.env.iter().any(|(k, _)| k == "BATON_PROBE_PORT"));
    }

    #[test]
    fn app_on_the_status_port_is_denied() {
        let p = pod().with_port(9095);
        let err = plan_of(&p, Some(&owner("StatefulSet", "web"))).expect_err("conflict");
        assert!(
            matches!(err, Denial::PortConflict { port: 9095, .. }),
            "{err}"
        );
    }

    #[test]
    fn app_on_a_proxy_port_is_denied_unless_the_proxy_is_off() {
        let p = pod().with_port(9096);
        let err = plan_of(&p, Some(&owner("StatefulSet", "web"))).expect_err("conflict");
        assert!(
            matches!(err, Denial::PortConflict { port: 9096, .. }),
            "{err}"
        );
        let p = pod().with_port(9097).annotated("baton.dev/proxy", "false");
        let plan = plan_of(&p, Some(&owner("StatefulSet", "web"))).expect("no proxy ports");
        assert!(!plan.sidecar.proxy);
        let p = pod().annotated("baton.dev/proxy", "maybe");
        assert!(plan_of(&p, Some(&owner("StatefulSet", "web"))).is_err());
    }

    #[test]
    fn native_sidecar_annotation_overrides_the_default() {
        let p = pod().annotated(NATIVE_SIDECAR, "false");
        let plan = plan_of(&p, Some(&owner("StatefulSet", "web"))).expect("valid");
        assert!(!plan.native);
        let p = pod().annotated(NATIVE_SIDECAR, "no");
        let msg = plan_of(&p, Some(&owner("StatefulSet", "web")))
            .expect_err("no")
            .to_string();
        assert!(msg.contains("baton.dev/native-sidecar=\"no\""), "{msg}");
    }

    #[test]
    fn resource_annotations_override_and_are_checked() {
        let p = pod()
            .annotated(SIDECAR_CPU_LIMIT, "100m")
            .annotated(SIDECAR_MEMORY_REQUEST, "32Mi");
        let plan = plan_of(&p, Some(&owner("StatefulSet", "web"))).expect("valid");
        assert_eq!(plan.resources.cpu_limit.as_deref(), Some("100m"));
        assert_eq!(plan.resources.memory_request.as_deref(), Some("32Mi"));
        assert_eq!(plan.resources.memory_limit.as_deref(), Some("64Mi"));

        let p = pod().annotated(SIDECAR_MEMORY_LIMIT, "64MB");
        let msg = plan_of(&p, Some(&owner("StatefulSet", "web")))
            .expect_err("MB")
            .to_string();
        assert!(
            msg.starts_with("annotation baton.dev/sidecar-memory-limit=\"64MB\":"),
            "{msg}"
        );
    }

    #[test]
    fn webhook_environment_does_not_leak_into_validation() {
        let with_env: Vec<_> = sidecar_command()
            .get_arguments()
            .filter(|a| a.get_env().is_some())
            .map(|a| a.get_id().to_string())
            .collect();
        assert!(with_env.is_empty(), "{with_env:?}");
        assert!(
            SidecarSettings::command()
                .get_arguments()
                .any(|a| a.get_env().is_some())
        );
    }

    #[test]
    fn long_values_are_cut_in_messages() {
        let p = pod().annotated("baton.dev/probe-path", &"x".repeat(500));
        let msg = plan_of(&p, Some(&owner("StatefulSet", "web")))
            .expect_err("no slash")
            .to_string();
        assert!(msg.len() < 300, "{msg}");
    }
}
