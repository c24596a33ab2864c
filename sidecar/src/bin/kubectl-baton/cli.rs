//! The command line: every flag, argument and help text of `kubectl baton`.

use std::{path::PathBuf, time::Duration};

use baton_sidecar::contract::role_labels::LabelFlags;
use clap::{Arg, Args, Parser, Subcommand, ValueEnum};

const GLOBAL_HEADING: &str = "Global Options";

/// Every option before the subcommand, the sidecars' label flags included
/// (declared under their own heading), goes after it too, like kubectl's.
fn as_global_option(arg: Arg) -> Arg {
    arg.global(true).help_heading(GLOBAL_HEADING)
}

#[derive(Parser, Debug)]
#[command(
    name = "kubectl-baton",
    bin_name = "kubectl baton",
    version,
    about = "Inspect and steer baton's active/passive groups",
    long_about = "Inspect and steer baton's active/passive groups.

 A baton group is the set of pods labelled baton.dev/group=<name>. The
 sidecar in each pod competes for the Lease <name> of the same namespace;
 the holder labels its pod role=active, the others role=passive. These
 commands read the group, and write only annotations that the sidecars act
 on: they never label a pod or take the Lease themselves.",
    after_help = "Examples:
  # Show the groups of the current namespace
  kubectl baton status

  # Hand the active role of group web to the pod web-1, and wait for it
  kubectl baton switchover web --to web-1

  # Keep the pod web-0 from ever becoming active
  kubectl baton cordon web-0",
    subcommand_required = true,
    arg_required_else_help = true,
    mut_args = as_global_option
)]
pub struct Cli {
    #[command(flatten)]
    pub connection: Connection,

    // The label keys and values the sidecars were configured with (their
    // own flags and env vars).
    #[command(flatten)]
    pub labels: LabelFlags,

    #[command(subcommand)]
    pub command: Command,
}

/// Where the API server is and who we are, as kubectl takes it.
#[derive(Args, Debug, Clone, PartialEq, Eq)]
pub struct Connection {
    /// The namespace to act in (default: the kubeconfig context's, else
    /// "default").
    #[arg(short = 'n', long, global = true, help_heading = GLOBAL_HEADING)]
    pub namespace: Option<String>,

    /// The name of the kubeconfig context to use.
    #[arg(long, global = true, help_heading = GLOBAL_HEADING)]
    pub context: Option<String>,

    /// The kubeconfig file to use (default: KUBECONFIG, else ~/.kube/config).
    #[arg(long, global = true, help_heading = GLOBAL_HEADING)]
    pub kubeconfig: Option<PathBuf>,

    /// Give up on one API request after this long; 0 waits forever (5, 5s, 1m).
    #[arg(long, global = true, value_name = "DURATION", value_parser = parse_request_timeout, help_heading = GLOBAL_HEADING)]
    pub request_timeout: Option<Duration>,
}

impl Connection {
    /// The bound of one request, if any ("0" means none, as for kubectl).
    pub fn request_timeout(&self) -> Option<Duration> {
        self.request_timeout.filter(|d| !d.is_zero())
    }
}

#[derive(Subcommand, Debug)]
pub enum Command {
    #[command(
        about = "Show each group's holder, healthy pods, last switch and pause",
        long_about = "Show each group's holder, healthy pods, last switch and pause.

 Groups are found by listing the pods that carry the baton.dev/group label,
 in the namespace or, with -A, in all namespaces; each group's Lease has the
 group's name. PODS counts the pods whose sidecar reports their app healthy
 (the pod condition baton.dev/app-healthy) out of all pods of the group.
 -o wide adds one line per pod; -o json and -o yaml print everything.",
        after_help = "Examples:
  # Show the groups of the current namespace
  kubectl baton status

  # Show the group web and each of its pods
  kubectl baton status web -o wide

  # Show the groups of all namespaces, as JSON
  kubectl baton status -A -o json"
    )]
    Status(StatusArgs),

    #[command(
        about = "Ask a group's holder to hand the active role to a healthy standby",
        long_about = "Ask a group's holder to hand the active role to a healthy standby.

 Checks that the group has a holder and that the pod asked for (--to), or
 any other pod when --to is not given, is healthy, not cordoned and not
 terminating; then sets the annotation baton.dev/switchover-to on the
 group's Lease. The holder hands over; the sidecars remove the annotation
 when the switchover ends, whether it happened or not, and record why in
 baton.dev/switch-reason. Unless --no-wait, waits (watching the Lease, then
 the new holder's pod) until the new holder is labelled active, and fails
 if the switchover did not happen or --timeout passed.",
        after_help = "Examples:
  # Hand the role of group web to any healthy standby, and wait for it
  kubectl baton switchover web

  # Hand it to the pod web-1
  kubectl baton switchover web --to web-1

  # Only ask; do not wait
  kubectl baton switchover web --to web-1 --no-wait"
    )]
    Switchover(SwitchoverArgs),

    #[command(
        about = "Keep a pod from becoming active; an active one hands over",
        long_about = "Keep a pod from becoming active; an active one hands over.

 Sets the annotation baton.dev/cordoned=true on the pod. Its sidecar never
 takes the group's Lease while it is there; if the pod holds the Lease, it
 hands the role to a healthy standby. The pod keeps running (and serving
 whatever does not go through the group's Service).",
        after_help = "Examples:
  # Take the pod web-0 out of the running for the active role
  kubectl baton cordon web-0 -n shop"
    )]
    Cordon(PodArgs),

    #[command(
        about = "Let a cordoned pod become active again",
        long_about = "Let a cordoned pod become active again.

 Removes the annotation baton.dev/cordoned from the pod. It does not take
 the role back: it becomes active again only when the holder hands over or
 fails.",
        after_help = "Examples:
  # Let the pod web-0 compete for the active role again
  kubectl baton uncordon web-0 -n shop"
    )]
    Uncordon(PodArgs),

    #[command(
        about = "Stop a group from failing over on its own",
        long_about = "Stop a group from failing over on its own.

 Sets the annotation baton.dev/paused=true on the group's Lease. While it
 is there, a holder whose app fails its probe reports it (its pod's
 condition baton.dev/app-healthy turns False, a Warning Event) but keeps
 the role, and no pod takes an expired Lease. What is asked for still
 happens: switchovers, cordons, and the handover of a pod that is deleted
 or shut down.",
        after_help = "Examples:
  # Pause automatic failover of group web during maintenance of its backend
  kubectl baton pause web"
    )]
    Pause(GroupArgs),

    #[command(
        about = "Let a paused group fail over on its own again",
        long_about = "Let a paused group fail over on its own again.

 Removes the annotation baton.dev/paused from the group's Lease. A holder
 whose app is failing hands over at once.",
        after_help = "Examples:
  # Resume automatic failover of group web
  kubectl baton resume web"
    )]
    Resume(GroupArgs),
}

#[derive(Args, Debug, Clone, PartialEq, Eq)]
pub struct StatusArgs {
    /// Show only this group.
    #[arg(value_name = "GROUP")]
    pub group: Option<String>,

    /// List the groups across all namespaces (-n is ignored).
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,

    /// Output format: wide (add a line per pod), json or yaml.
    #[arg(short = 'o', long, value_enum)]
    pub output: Option<Output>,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    Wide,
    Json,
    Yaml,
}

#[derive(Args, Debug, Clone, PartialEq, Eq)]
pub struct SwitchoverArgs {
    /// The group (its Lease's name).
    #[arg(value_name = "GROUP")]
    pub group: String,

    /// The pod to hand the role to (default: any healthy standby).
    #[arg(long, value_name = "POD")]
    pub to: Option<String>,

    /// Return once the switchover is requested, without waiting for it.
    #[arg(long)]
    pub no_wait: bool,

    /// How long to wait for the switchover (e.g. 30s, 2m).
    #[arg(long, default_value = "30s", value_name = "DURATION", value_parser = baton_sidecar::settings::parse_duration)]
    pub timeout: Duration,
}

#[derive(Args, Debug, Clone, PartialEq, Eq)]
pub struct PodArgs {
    /// The pod (in the namespace of -n).
    #[arg(value_name = "POD")]
    pub pod: String,
}

#[derive(Args, Debug, Clone, PartialEq, Eq)]
pub struct GroupArgs {
    /// The group (its Lease's name).
    #[arg(value_name = "GROUP")]
    pub group: String,
}

/// kubectl's `--request-timeout`: a bare number is seconds.
fn parse_request_timeout(s: &str) -> Result<Duration, String> {
    if let Ok(seconds) = s.parse::<u64>() {
        return Ok(Duration::from_secs(seconds));
    }
    baton_sidecar::settings::parse_duration(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn global_flags_go_after_the_command_too() {
        let cli = Cli::try_parse_from([
            "kubectl-baton",
            "switchover",
            "web",
            "-n",
            "shop",
            "--to",
            "web-1",
            "--context",
            "prod",
            "--role-label",
            "tier",
        ])
        .unwrap();
        assert_eq!(cli.connection.namespace.as_deref(), Some("shop"));
        assert_eq!(cli.connection.context.as_deref(), Some("prod"));
        assert_eq!(cli.labels.role_label, "tier");
        let Command::Switchover(args) = cli.command else {
            panic!("not a switchover: {:?}", cli.command);
        };
        assert_eq!(args.to.as_deref(), Some("web-1"));
        assert_eq!(args.timeout, Duration::from_secs(30));
        assert!(!args.no_wait);
    }

    #[test]
    fn a_request_timeout_is_seconds_or_a_duration_and_zero_is_none() {
        assert_eq!(parse_request_timeout("5"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_request_timeout("1m"), Ok(Duration::from_secs(60)));
        assert!(parse_request_timeout("soon").is_err());
        let cli =
            Cli::try_parse_from(["kubectl-baton", "status", "--request-timeout", "0"]).unwrap();
        assert_eq!(cli.connection.request_timeout(), None);
    }

    #[test]
    fn status_takes_all_namespaces_and_an_output_format() {
        let cli = Cli::try_parse_from(["kubectl-baton", "status", "-A", "-o", "wide"]).unwrap();
        let Command::Status(args) = cli.command else {
            panic!("not status: {:?}", cli.command);
        };
        assert!(args.all_namespaces);
        assert_eq!(args.output, Some(Output::Wide));
        assert!(Cli::try_parse_from(["kubectl-baton", "status", "-o", "table"]).is_err());
    }

    #[test]
    fn the_label_flags_are_the_sidecars_as_global_options() {
        let cli = Cli::try_parse_from(["kubectl-baton", "status"]).unwrap();
        assert_eq!(
            cli.labels.for_group("web").active_selector(),
            "baton.dev/group=web,role=active"
        );
        let command = Cli::command();
        let flag = command
            .get_arguments()
            .find(|a| a.get_id() == "active_value")
            .expect("--active-value");
        assert!(flag.is_global_set());
        assert_eq!(flag.get_help_heading(), Some(GLOBAL_HEADING));
        let cli = Cli::try_parse_from([
            "kubectl-baton",
            "status",
            "--active-value",
            "on",
            "--passive-value",
            "on",
        ])
        .unwrap();
        assert!(cli.labels.validate().is_err());
    }

    #[test]
    fn version_is_the_workspace_version() {
        let toml = include_str!("../../../../Cargo.toml");
        let package = toml
            .split("[workspace.package]")
            .nth(1)
            .expect("Cargo.toml has [workspace.package]");
        let version = package
            .lines()
            .find_map(|l| l.strip_prefix("version = "))
            .expect("[workspace.package] has a version")
            .trim_matches('"');
        let err = Cli::try_parse_from(["kubectl-baton", "--version"]).expect_err("--version exits");
        assert_eq!(err.kind(), clap::error::ErrorKind::DisplayVersion);
        assert_eq!(err.to_string().trim(), format!("kubectl-baton {version}"));
    }
}
