//! `kubectl baton switchover`: checks the target, asks the holder to hand
//! over by annotating the Lease, and watches the sidecars do it.

use std::pin::pin;

use anyhow::Context;
use baton_sidecar::contract::{
    Role,
    controls::{SWITCHOVER_TO, Target},
    role_labels::LabelFlags,
};
use futures::{Stream, StreamExt};
use k8s_openapi::api::{coordination::v1::Lease, core::v1::Pod};
use kube::{
    Api,
    api::{ListParams, Patch},
    runtime::{WatchStreamExt, watcher, watcher::watch_object},
};
use tokio::time::Instant;

use crate::{
    cli::SwitchoverArgs,
    cluster::{Cluster, annotation_patch, patch_params},
    group::{LeaseState, PodState},
    output,
    refusal::{Refusal, Unfit},
};

/// The group a command is about, and where.
#[derive(Debug, Clone, Copy)]
pub struct GroupRef<'a> {
    pub name: &'a str,
    pub namespace: &'a str,
    pub group_label: &'a str,
}

/// Whom the user asked for.
#[derive(Debug, Clone, Copy)]
pub enum Wanted<'a> {
    /// Any healthy standby among the group's pods.
    Any { pods: &'a [PodState] },
    /// The pod `name`, as read from the namespace (None: there is none).
    Pod {
        name: &'a str,
        pod: Option<&'a PodState>,
    },
}

/// What to do about a switchover that may go ahead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// The pod asked for already holds the Lease.
    AlreadyHolds { holder: String },
    /// Ask `holder` to hand over to `target`.
    Request { holder: String, target: Target },
}

/// Whether a switchover to `wanted` can be asked for: the group has a
/// holder and the target could take the role (the sidecars would refuse an
/// unfit one anyway, but only after the request; saying so now is clearer).
pub fn check_target(
    group: GroupRef<'_>,
    lease: Option<&LeaseState>,
    wanted: Wanted<'_>,
) -> Result<Plan, Refusal> {
    let lease = lease.ok_or_else(|| Refusal::NoLease {
        lease: group.name.to_owned(),
        namespace: group.namespace.to_owned(),
    })?;
    let holder = lease.holder.clone().ok_or_else(|| Refusal::NoHolder {
        group: group.name.to_owned(),
    })?;
    match wanted {
        Wanted::Pod { name, .. } if name == holder => Ok(Plan::AlreadyHolds { holder }),
        Wanted::Pod { name, pod: None } => Err(Refusal::PodNotFound {
            pod: name.to_owned(),
            namespace: group.namespace.to_owned(),
        }),
        Wanted::Pod {
            name,
            pod: Some(pod),
        } => {
            if pod.group.as_deref() != Some(group.name) {
                return Err(Refusal::NotInGroup {
                    pod: name.to_owned(),
                    group: group.name.to_owned(),
                    group_label: group.group_label.to_owned(),
                    label: pod.group.clone(),
                });
            }
            if let Some(why) = Unfit::of(pod) {
                return Err(Refusal::Unfit {
                    pod: name.to_owned(),
                    why,
                });
            }
            Ok(Plan::Request {
                holder,
                target: Target::Pod(name.to_owned()),
            })
        }
        Wanted::Any { pods } => {
            let mut unfit = Vec::new();
            for pod in pods.iter().filter(|p| p.name != holder) {
                match Unfit::of(pod) {
                    None => {
                        return Ok(Plan::Request {
                            holder,
                            target: Target::Any,
                        });
                    }
                    Some(why) => unfit.push((pod.name.clone(), why)),
                }
            }
            if unfit.is_empty() {
                return Err(Refusal::OnlyHolder {
                    group: group.name.to_owned(),
                    holder,
                });
            }
            Err(Refusal::NoStandby {
                group: group.name.to_owned(),
                standbys: unfit,
            })
        }
    }
}

/// Where a requested switchover stands, by the Lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The request is still on the Lease.
    Pending,
    /// The request is gone and the target holds the Lease.
    Switched { holder: String },
    /// The request is gone and the target does not hold the Lease.
    NotSwitched {
        holder: Option<String>,
        reason: Option<String>,
    },
}

/// Judges a switchover from `old_holder` to `target` by the Lease: it ends
/// when the sidecars remove the request, whichever way it went.
pub fn outcome(lease: &LeaseState, old_holder: &str, target: &Target) -> Outcome {
    if lease.switchover_to.is_some() {
        return Outcome::Pending;
    }
    let switched = match (&lease.holder, target) {
        (Some(holder), Target::Pod(pod)) => holder == pod,
        (Some(holder), Target::Any) => holder != old_holder,
        (None, _) => false,
    };
    match &lease.holder {
        Some(holder) if switched => Outcome::Switched {
            holder: holder.clone(),
        },
        _ => Outcome::NotSwitched {
            holder: lease.holder.clone(),
            reason: lease.switch_reason.clone(),
        },
    }
}

/// How waiting for a requested switchover can end badly.
#[derive(Debug, thiserror::Error)]
pub enum WaitError {
    #[error(
        "switchover of {group} to {target} did not happen: {}; {}",
        reason.as_deref().unwrap_or("the sidecars gave no reason"),
        match holder {
            Some(holder) => format!("{holder} holds {group}"),
            None => format!("nobody holds {group}"),
        }
    )]
    NotSwitched {
        group: String,
        target: Target,
        holder: Option<String>,
        reason: Option<String>,
    },
    #[error(
        "{what} waiting for the switchover of {group}; {}",
        left_behind(group, namespace)
    )]
    Pending {
        /// "timed out after 30s" or "interrupted".
        what: String,
        group: String,
        namespace: String,
    },
    #[error("{what} waiting for pod {pod}, which now holds {group}, to be labelled {label}")]
    NotLabelled {
        what: String,
        pod: String,
        group: String,
        label: String,
    },
    #[error("lease {group} was deleted while waiting for the switchover")]
    LeaseDeleted { group: String },
    #[error("pod {pod}, which took {group}, was deleted before it was labelled {label}")]
    PodDeleted {
        pod: String,
        group: String,
        label: String,
    },
}

pub async fn run(
    cluster: &Cluster,
    args: &SwitchoverArgs,
    keys: &LabelFlags,
) -> anyhow::Result<()> {
    let name = args.group.as_str();
    let namespace = cluster.namespace.as_str();
    let leases: Api<Lease> = Api::namespaced(cluster.client.clone(), namespace);
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), namespace);

    let (lease, plan) = plan(cluster, args, keys, &leases, &pods).await?;
    let (old_holder, target) = match plan {
        Plan::AlreadyHolds { holder } => {
            return output::line(format_args!("{holder} already holds {name}; nothing to do"));
        }
        Plan::Request { holder, target } => (holder, target),
    };
    if let Some(pending) = lease.as_ref().and_then(|l| l.switchover_to.as_deref()) {
        eprintln!(
            "Warning: lease {name} already asks for a switchover to {pending:?}; replacing it"
        );
    }

    // No resourceVersion precondition: the holder renews every 2 s, and a
    // merge patch of one annotation cannot undo its renewals.
    let requested = Instant::now();
    let patch = annotation_patch(SWITCHOVER_TO, Some(target.annotation_value()));
    cluster
        .call(leases.patch(name, &patch_params(), &Patch::Merge(&patch)))
        .await
        .with_context(|| format!("annotating lease {name} in namespace {namespace:?}"))?;
    output::line(format_args!("switchover of {name} to {target} requested"))?;
    if args.no_wait {
        return Ok(());
    }

    let deadline = requested + args.timeout;
    let timed_out = format!(
        "timed out after {}",
        humantime::format_duration(args.timeout)
    );
    let new_holder = match until(deadline, lease_outcome(leases, name, &old_holder, &target)).await
    {
        Ok(Ok(holder)) => holder,
        Ok(Err(err)) => {
            // The watch failed (no right to watch, say), not the switchover:
            // the error printed will not say that the request is left behind.
            if err.downcast_ref::<WaitError>().is_none() {
                eprintln!(
                    "Warning: cannot follow the switchover; {}",
                    left_behind(name, namespace)
                );
            }
            return Err(err);
        }
        Err(cut) => {
            return Err(WaitError::Pending {
                what: cut.describe(&timed_out),
                group: name.to_owned(),
                namespace: namespace.to_owned(),
            }
            .into());
        }
    };
    match until(deadline, labelled_active(pods, name, &new_holder, keys)).await {
        Ok(done) => done?,
        Err(cut) => {
            return Err(WaitError::NotLabelled {
                what: cut.describe(&timed_out),
                pod: new_holder,
                group: name.to_owned(),
                label: keys.for_group(name).label(Role::Active),
            }
            .into());
        }
    }
    output::line(format_args!(
        "{name} switched over from {old_holder} to {new_holder} in {:.2}s",
        requested.elapsed().as_secs_f64()
    ))
}

/// Reads the Lease and the target (or the group's pods) and checks them.
async fn plan(
    cluster: &Cluster,
    args: &SwitchoverArgs,
    keys: &LabelFlags,
    leases: &Api<Lease>,
    pods: &Api<Pod>,
) -> anyhow::Result<(Option<LeaseState>, Plan)> {
    let name = args.group.as_str();
    let namespace = cluster.namespace.as_str();
    let group = GroupRef {
        name,
        namespace,
        group_label: &keys.group_label,
    };
    let lease = cluster
        .call(leases.get_opt(name))
        .await
        .with_context(|| format!("getting lease {name} in namespace {namespace:?}"))?
        .map(|lease| LeaseState::from_lease(&lease));
    let plan = match &args.to {
        Some(to) => {
            let pod = cluster
                .call(pods.get_opt(to))
                .await
                .with_context(|| format!("getting pod {to} in namespace {namespace:?}"))?
                .map(|pod| PodState::from_pod(&pod, keys));
            let wanted = Wanted::Pod {
                name: to,
                pod: pod.as_ref(),
            };
            check_target(group, lease.as_ref(), wanted)?
        }
        None => {
            let selector = format!("{}={name}", keys.group_label);
            let listed = cluster
                .call(pods.list(&ListParams::default().labels(&selector)))
                .await
                .with_context(|| format!("listing the pods of group {name}"))?;
            let states: Vec<PodState> = listed
                .items
                .iter()
                .map(|pod| PodState::from_pod(pod, keys))
                .collect();
            check_target(group, lease.as_ref(), Wanted::Any { pods: &states })?
        }
    };
    Ok((lease, plan))
}

/// What is left when we stop waiting before the request ended, and how to
/// take it back.
fn left_behind(group: &str, namespace: &str) -> String {
    format!(
        "the request stays on lease {group} (withdraw it: kubectl annotate lease {group} -n {namespace} {SWITCHOVER_TO}-)"
    )
}

/// Why a wait stopped before its end.
enum Cut {
    Deadline,
    Interrupted,
}

impl Cut {
    fn describe(&self, timed_out: &str) -> String {
        match self {
            Cut::Deadline => timed_out.to_owned(),
            Cut::Interrupted => "interrupted".to_owned(),
        }
    }
}

/// Runs `wait` until it ends, `deadline` passes or the user presses ^C
/// (caught, so that we can say what is left behind).
async fn until<T>(deadline: Instant, wait: impl Future<Output = T>) -> Result<T, Cut> {
    tokio::select! {
        done = tokio::time::timeout_at(deadline, wait) => done.map_err(|_| Cut::Deadline),
        _ = tokio::signal::ctrl_c() => Err(Cut::Interrupted),
    }
}

/// Watches the Lease until the request is gone; the new holder on success.
async fn lease_outcome(
    leases: Api<Lease>,
    group: &str,
    old_holder: &str,
    target: &Target,
) -> anyhow::Result<String> {
    // watch_object lists first with a consistent read, so a switchover that
    // ended before the watch started is seen too.
    let mut states = pin!(watched(watch_object(leases, group)));
    while let Some(state) = states.next().await {
        let Some(lease) = state.with_context(|| format!("watching lease {group}"))? else {
            return Err(WaitError::LeaseDeleted {
                group: group.to_owned(),
            }
            .into());
        };
        match outcome(&LeaseState::from_lease(&lease), old_holder, target) {
            Outcome::Pending => {}
            Outcome::Switched { holder } => return Ok(holder),
            Outcome::NotSwitched { holder, reason } => {
                return Err(WaitError::NotSwitched {
                    group: group.to_owned(),
                    target: target.clone(),
                    holder,
                    reason,
                }
                .into());
            }
        }
    }
    anyhow::bail!("the watch of lease {group} ended")
}

/// Watches the new holder's Pod until it carries the active label.
async fn labelled_active(
    pods: Api<Pod>,
    group: &str,
    holder: &str,
    keys: &LabelFlags,
) -> anyhow::Result<()> {
    let labels = keys.for_group(group);
    let mut states = pin!(watched(watch_object(pods, holder)));
    while let Some(state) = states.next().await {
        match state.with_context(|| format!("watching pod {holder}"))? {
            Some(pod) if labels.role_of(&pod) == Some(Role::Active) => return Ok(()),
            Some(_) => {}
            None => {
                return Err(WaitError::PodDeleted {
                    pod: holder.to_owned(),
                    group: group.to_owned(),
                    label: labels.label(Role::Active),
                }
                .into());
            }
        }
    }
    anyhow::bail!("the watch of pod {holder} ended")
}

/// A watch that retries, after a back-off, what may pass (a dropped
/// connection, an expired resourceVersion) and stops at what will not (no
/// right to watch, say).
fn watched<K>(
    events: impl Stream<Item = Result<Option<K>, watcher::Error>>,
) -> impl Stream<Item = Result<Option<K>, watcher::Error>> {
    events.default_backoff().filter(|event| {
        let keep = match event {
            Ok(_) => true,
            Err(err) => is_lasting(err),
        };
        std::future::ready(keep)
    })
}

/// An error that retrying will not cure: the server refused the request
/// itself (4xx), other than for an expired resourceVersion or throttling.
fn is_lasting(err: &watcher::Error) -> bool {
    let code = match err {
        watcher::Error::InitialListFailed(kube::Error::Api(status))
        | watcher::Error::WatchStartFailed(kube::Error::Api(status))
        | watcher::Error::WatchFailed(kube::Error::Api(status))
        | watcher::Error::WatchError(status) => status.code,
        _ => return false,
    };
    (400..500).contains(&code) && code != 410 && code != 429
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::group::fixtures::*;
    use baton_sidecar::contract::controls::{APP_HEALTHY_CONDITION, CORDONED, SWITCH_REASON};
    use kube::core::Status;

    const WEB: GroupRef<'static> = GroupRef {
        name: "web",
        namespace: "shop",
        group_label: "baton.dev/group",
    };

    fn held_by(holder: &str) -> LeaseState {
        LeaseState::from_lease(&lease(Some(holder), &[]))
    }

    fn to<'a>(name: &'a str, pod: Option<&'a PodState>) -> Wanted<'a> {
        Wanted::Pod { name, pod }
    }

    #[test]
    fn a_group_without_lease_or_holder_has_nothing_to_switch_over() {
        let web1 = state(&pod("web-1"));
        assert_eq!(
            check_target(WEB, None, to("web-1", Some(&web1))),
            Err(Refusal::NoLease {
                lease: "web".into(),
                namespace: "shop".into()
            })
        );
        let released = LeaseState::from_lease(&lease(None, &[]));
        let refusal = check_target(WEB, Some(&released), to("web-1", Some(&web1))).unwrap_err();
        assert_eq!(
            refusal.to_string(),
            "group web has no holder: nothing to switch over"
        );
    }

    #[test]
    fn the_holder_itself_is_nothing_to_do() {
        assert_eq!(
            check_target(WEB, Some(&held_by("web-1")), to("web-1", None)),
            Ok(Plan::AlreadyHolds {
                holder: "web-1".into()
            })
        );
    }

    #[test]
    fn a_named_pod_must_exist_be_in_the_group_and_be_fit() {
        let lease = held_by("web-0");
        let refused = |pod: &PodState| {
            check_target(WEB, Some(&lease), to(&pod.name, Some(pod)))
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            check_target(WEB, Some(&lease), to("x", None))
                .unwrap_err()
                .to_string(),
            r#"pod "x" not found in namespace "shop""#
        );
        assert_eq!(
            refused(&state(&with_label(pod("x"), "baton.dev/group", "api"))),
            r#"pod "x" is not in group "web" (its baton.dev/group label is "api")"#
        );
        let mut loner = pod("y");
        loner.metadata.labels = None;
        assert_eq!(
            refused(&state(&loner)),
            r#"pod "y" is not in group "web" (it has no baton.dev/group label)"#
        );
        assert_eq!(
            refused(&state(&terminating(pod("web-1")))),
            r#"pod "web-1" is terminating"#
        );
        assert_eq!(
            refused(&state(&with_annotation(pod("web-1"), CORDONED, "true"))),
            r#"pod "web-1" is cordoned"#
        );
        let failing = with_conditions(
            pod("web-1"),
            vec![condition(
                APP_HEALTHY_CONDITION,
                "False",
                Some("GET /healthz: 503"),
            )],
        );
        assert_eq!(
            refused(&state(&failing)),
            r#"pod "web-1" is unhealthy: GET /healthz: 503"#
        );
        assert!(refused(&state(&with_conditions(pod("web-1"), vec![]))).contains("unknown health"));
        let web1 = state(&pod("web-1"));
        assert_eq!(
            check_target(WEB, Some(&lease), to("web-1", Some(&web1))),
            Ok(Plan::Request {
                holder: "web-0".into(),
                target: Target::Pod("web-1".into())
            })
        );
    }

    #[test]
    fn any_standby_needs_one_fit_pod_besides_the_holder() {
        let lease = held_by("web-0");
        let holder = state(&with_label(pod("web-0"), "role", "active"));
        let cordoned = state(&with_annotation(pod("web-1"), CORDONED, "true"));
        let fit = state(&pod("web-2"));

        let refusal = check_target(
            WEB,
            Some(&lease),
            Wanted::Any {
                pods: std::slice::from_ref(&holder),
            },
        )
        .unwrap_err();
        assert_eq!(
            refusal.to_string(),
            "group web has no pod besides its holder web-0: nothing to switch over to"
        );
        let pods = [holder.clone(), cordoned.clone()];
        let refusal = check_target(WEB, Some(&lease), Wanted::Any { pods: &pods }).unwrap_err();
        assert_eq!(
            refusal,
            Refusal::NoStandby {
                group: "web".into(),
                standbys: vec![("web-1".into(), Unfit::Cordoned)]
            }
        );
        let pods = [holder, cordoned, fit];
        assert_eq!(
            check_target(WEB, Some(&lease), Wanted::Any { pods: &pods }),
            Ok(Plan::Request {
                holder: "web-0".into(),
                target: Target::Any
            })
        );
    }

    #[test]
    fn a_switchover_is_pending_while_the_request_is_on_the_lease() {
        let l = LeaseState::from_lease(&lease(Some("web-0"), &[(SWITCHOVER_TO, "web-1")]));
        assert_eq!(
            outcome(&l, "web-0", &Target::Pod("web-1".into())),
            Outcome::Pending
        );
        // Even when it already names the target: the new holder removes it.
        let l = LeaseState::from_lease(&lease(Some("web-1"), &[(SWITCHOVER_TO, "web-1")]));
        assert_eq!(
            outcome(&l, "web-0", &Target::Pod("web-1".into())),
            Outcome::Pending
        );
    }

    #[test]
    fn a_switchover_happened_when_the_target_holds_the_lease() {
        let web1 = held_by("web-1");
        assert_eq!(
            outcome(&web1, "web-0", &Target::Pod("web-1".into())),
            Outcome::Switched {
                holder: "web-1".into()
            }
        );
        assert_eq!(
            outcome(&web1, "web-0", &Target::Any),
            Outcome::Switched {
                holder: "web-1".into()
            }
        );
        // Another pod took it: not what was asked for.
        let web2 = held_by("web-2");
        assert!(matches!(
            outcome(&web2, "web-0", &Target::Pod("web-1".into())),
            Outcome::NotSwitched { .. }
        ));
    }

    #[test]
    fn a_switchover_that_did_not_happen_says_why_and_who_holds() {
        let kept = LeaseState::from_lease(&lease(
            Some("web-0"),
            &[(
                SWITCH_REASON,
                "switchover to web-1 refused: web-1 is unhealthy",
            )],
        ));
        let Outcome::NotSwitched { holder, reason } = outcome(&kept, "web-0", &Target::Any) else {
            panic!("switched");
        };
        let err = WaitError::NotSwitched {
            group: "web".into(),
            target: Target::Pod("web-1".into()),
            holder,
            reason,
        };
        assert_eq!(
            err.to_string(),
            "switchover of web to web-1 did not happen: switchover to web-1 refused: web-1 is unhealthy; web-0 holds web"
        );
        let released = LeaseState::from_lease(&lease(None, &[]));
        let Outcome::NotSwitched { holder, reason } = outcome(&released, "web-0", &Target::Any)
        else {
            panic!("switched");
        };
        let err = WaitError::NotSwitched {
            group: "web".into(),
            target: Target::Any,
            holder,
            reason,
        };
        assert_eq!(
            err.to_string(),
            "switchover of web to any healthy standby did not happen: the sidecars gave no reason; nobody holds web"
        );
    }

    #[test]
    fn a_timeout_says_how_to_withdraw_the_request() {
        let err = WaitError::Pending {
            what: "timed out after 30s".into(),
            group: "web".into(),
            namespace: "shop".into(),
        };
        assert_eq!(
            err.to_string(),
            "timed out after 30s waiting for the switchover of web; the request stays on lease web (withdraw it: kubectl annotate lease web -n shop baton.dev/switchover-to-)"
        );
    }

    #[test]
    fn refusals_stop_the_wait_and_passing_troubles_do_not() {
        let api = |code: u16| kube::Error::Api(Status::failure("", "").with_code(code).boxed());
        assert!(is_lasting(&watcher::Error::InitialListFailed(api(403))));
        assert!(is_lasting(&watcher::Error::WatchStartFailed(api(401))));
        assert!(!is_lasting(&watcher::Error::WatchError(
            Status::failure("too old", "Expired").with_code(410).boxed()
        )));
        assert!(!is_lasting(&watcher::Error::WatchFailed(api(503))));
        assert!(!is_lasting(&watcher::Error::NoResourceVersion));
    }
}
