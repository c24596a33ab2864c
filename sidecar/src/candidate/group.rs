//! The holder's view of its group's pods: the events of the watch the
//! driver keeps open while we hold the Lease, and what the census of those
//! pods says once per change (`contract::census`). No I/O.

use std::time::Instant;

use k8s_openapi::api::core::v1::{Pod, PodSpec, PodStatus};
use kube::runtime::watcher;

use super::{Notice, readiness, state::State};
use crate::{
    contract::census::{self, Census},
    contract::controls::CORDONED,
    telemetry::ErrorChain,
};

impl State {
    /// An event of the group watch. A (re)list replaces the view only once
    /// it is complete, so that a relist never shows half a group.
    pub fn handle_group_event(
        &mut self,
        event: Result<watcher::Event<Pod>, watcher::Error>,
        _now: Instant,
    ) -> Vec<Notice> {
        let mut n = Vec::new();
        let g = &mut self.group;
        match event {
            Ok(event) => {
                g.pods.handle(&event, slim);
                if matches!(event, watcher::Event::InitDone)
                    && let Some(failed_attempts) = g.watch_failures.succeeded()
                {
                    n.push(Notice::GroupWatchLanded { failed_attempts });
                }
            }
            // Counted and said once per streak, but not an outage of the API
            // server: the census holds up nothing, and the Lease's calls
            // say whether the API server answers (a shutdown skips its
            // handover when they do not).
            Err(err) => {
                n.push(Notice::ApiError("watch group pods"));
                if g.watch_failures.failed() {
                    let error = ErrorChain(&err).to_string();
                    n.push(Notice::GroupWatchFailing { error });
                }
            }
        }
        n
    }

    /// The driver closed the watch (we no longer hold the Lease): nothing
    /// is known of the group any more, and the next holder says what holds.
    pub fn close_group_view(&mut self) {
        self.group = Default::default();
    }

    /// Says once per change whether every standby shares the holder's node
    /// and whether the pods belong to several workloads: a Warning Event
    /// when it begins or changes, a Normal one when it ends. Where the
    /// standbys run is judged only once it is known (`placement_known`): a
    /// standby deleted and not yet scheduled again changes nothing said.
    pub(super) fn note_group(&mut self, n: &mut Vec<Notice>) {
        let me = self.settings.pod_name.clone();
        let group = self.labels.group.clone();
        let Some(pods) = self.group.pods.table() else {
            self.group.census = None;
            return;
        };
        let c: Census = census::census(&me, pods.values());
        let one_node = c.on_one_node().map(str::to_owned);
        if c.placement_known() && one_node != self.group.one_node_said {
            n.push(Notice::GroupOnOneNode(one_node.clone()));
            match (&one_node, &self.group.one_node_said) {
                (Some(node), _) => n.push(Notice::event(
                    true,
                    "GroupOnOneNode",
                    census::on_one_node_warning(&group, node, c.standbys),
                )),
                (None, Some(node)) => n.push(Notice::event(
                    false,
                    "GroupSpread",
                    format!(
                        "the standbys of group {group} no longer all run on node {node} with the holder (nodes: {})",
                        join(c.nodes.iter())
                    ),
                )),
                (None, None) => {}
            }
            self.group.one_node_said = one_node;
        }
        let owners = c.several_owners().then(|| c.owner_names());
        if owners != self.group.owners_said {
            n.push(Notice::GroupOwners(owners.clone()));
            match &owners {
                Some(owners) => n.push(Notice::event(
                    true,
                    "GroupHasSeveralOwners",
                    census::several_owners_warning(&group, owners),
                )),
                None => n.push(Notice::event(
                    false,
                    "GroupHasOneOwner",
                    format!(
                        "the pods of group {group} no longer belong to several workloads (now: {})",
                        join(c.owners.iter())
                    ),
                )),
            }
            self.group.owners_said = owners;
        }
        self.group.census = Some(c);
    }
}

/// What the census and the choice of a handover's target read of a pod is
/// kept (its node, owners, labels, the cordon, the conditions of
/// `readiness`); the rest (managed fields, other annotations, the rest of
/// its status) is not, to keep the view small.
fn slim(p: &Pod) -> Pod {
    let mut metadata = p.metadata.clone();
    metadata.managed_fields = None;
    if let Some(a) = &mut metadata.annotations {
        a.retain(|k, _| k == CORDONED);
    }
    Pod {
        metadata,
        spec: p.spec.as_ref().map(|s| PodSpec {
            node_name: s.node_name.clone(),
            ..Default::default()
        }),
        status: p.status.as_ref().map(|s| PodStatus {
            conditions: s.conditions.as_ref().map(|c| {
                c.iter()
                    .filter(|c| readiness::kept_condition(c))
                    .cloned()
                    .collect()
            }),
            ..Default::default()
        }),
    }
}

fn join<T: ToString>(items: impl Iterator<Item = T>) -> String {
    let items: Vec<String> = items.map(|i| i.to_string()).collect();
    if items.is_empty() {
        "none".to_owned()
    } else {
        items.join(", ")
    }
}
