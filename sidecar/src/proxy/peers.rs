//! Where the holder's peer port is: the group's pods as a forwarding side
//! needs them (each one's IP, and whether it announces the peer protocol),
//! kept from a watch of the group that every sidecar with the proxy holds
//! open (`docs/decisions.md` §24). With it the route follows a new holder in
//! the step its name arrives on the Lease, without a Pod GET on the path;
//! the GET stays for a holder the table does not know (the watch not
//! listed yet, or failing) and for an address a forward could not reach.
//!
//! [`Peers`] (the table) and [`Lookups`] (what a GET said, and whether a
//! failed forward put the address in doubt) are pure; [`keep`] is the thin
//! driver that feeds the watch's events into the table.

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::watcher;
use tokio::sync::watch;
use tracing::{debug, warn};

use super::Peer;
use crate::{
    contract::{PEER_PROTOCOL, PEER_PROTOCOL_ANNOTATION},
    relisted::Relisted,
    telemetry::ErrorChain,
};

/// The group's pods by name, each with its peer (None: no IP yet), as the
/// watch last listed and followed them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Peers(Relisted<Option<Peer>>);

impl Peers {
    /// An event of the group watch; whether what [`Peers::get`] answers
    /// may have changed. A relist replaces the table only once complete.
    pub fn handle(&mut self, event: watcher::Event<Pod>) -> bool {
        self.0.handle(&event, peer_of)
    }

    /// What the table says of pod `name`: None when it does not know the
    /// pod (not listed yet, or not of the group), `Some(None)` when the pod
    /// has no IP yet (re-created under its name and not running again).
    pub fn get(&self, name: &str) -> Option<Option<Peer>> {
        self.0.table()?.get(name).copied()
    }
}

/// A pod's IP and protocol, if it has an IP.
pub fn peer_of(pod: &Pod) -> Option<Peer> {
    let ip = pod.status.as_ref()?.pod_ip.as_ref()?.parse().ok()?;
    let acks = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(PEER_PROTOCOL_ANNOTATION))
        .is_some_and(|v| v == PEER_PROTOCOL);
    Some(Peer { ip, acks })
}

/// Where the holder's address comes from now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Known: forward there.
    Known(Peer),
    /// The table knows the pod, without an IP: wait, its watch brings it.
    NoIpYet,
    /// Look the pod up (a Pod GET): the table does not know it, or a
    /// forward to the address it gave failed.
    LookUp,
}

/// What the proxy knows of the holder's address beside the table: the
/// last lookup, and whether a failed forward doubts what it knows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lookups {
    holder: Option<String>,
    /// The holder's peer as looked up, and what the table said of it then.
    looked_up: Option<(Peer, Option<Option<Peer>>)>,
    doubted: bool,
}

impl Lookups {
    /// The Lease names `holder` now. Each time the holder changes, what was
    /// looked up and doubted is forgotten: a StatefulSet pod that handed
    /// over, was re-created under its name with another IP and took the
    /// Lease back is not sought at its old IP.
    pub fn handle_holder(&mut self, holder: Option<&str>) {
        if self.holder.as_deref() != holder {
            *self = Lookups {
                holder: holder.map(str::to_owned),
                ..Lookups::default()
            };
        }
    }

    /// A forward to the holder could not connect: its pod may have been
    /// re-created under the same name with another IP, which a failing
    /// watch would not have told. Look it up again.
    pub fn handle_unreachable(&mut self) {
        self.doubted = true;
    }

    /// A lookup of the holder found it at `peer` while the table said
    /// `table` of it.
    pub fn handle_looked_up(&mut self, holder: &str, peer: Peer, table: Option<Option<Peer>>) {
        if self.holder.as_deref() == Some(holder) {
            self.looked_up = Some((peer, table));
            self.doubted = false;
        }
    }

    /// Where the current holder's address comes from, given the table;
    /// None when there is no holder or it is `me` (nothing to forward to).
    /// A lookup made since the table last changed for the holder wins (it
    /// was made because the table did not know the pod or its address
    /// failed); a change in the table since is newer than it.
    pub fn source(&self, me: &str, peers: &Peers) -> Option<Source> {
        let holder = self.holder.as_deref().filter(|h| *h != me)?;
        if self.doubted {
            return Some(Source::LookUp);
        }
        let table = peers.get(holder);
        if let Some((peer, table_then)) = self.looked_up
            && table_then == table
        {
            return Some(Source::Known(peer));
        }
        Some(match table {
            Some(Some(peer)) => Source::Known(peer),
            Some(None) => Source::NoIpYet,
            None => Source::LookUp,
        })
    }
}

/// Feeds the group watch's events into `peers` until the watch ends or
/// nobody reads the table any more. A failing watch keeps the table as it
/// was (said once per streak); lookups cover what it misses.
pub async fn keep(
    events: impl Stream<Item = Result<watcher::Event<Pod>, watcher::Error>>,
    peers: watch::Sender<Peers>,
) {
    let mut events = std::pin::pin!(events);
    let mut failing = false;
    while let Some(event) = events.next().await {
        match event {
            Ok(event) => {
                if failing {
                    debug!("the group watch of the proxy is back");
                    failing = false;
                }
                peers.send_if_modified(|p| p.handle(event));
            }
            Err(e) => {
                if !failing {
                    warn!(error = %ErrorChain(&e), "watching the group's pods for the proxy; new holders are looked up meanwhile");
                    failing = true;
                }
            }
        }
        if peers.is_closed() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, ip: Option<&str>, announced: bool) -> Pod {
        let annotations = match announced {
            true => serde_json::json!({PEER_PROTOCOL_ANNOTATION: PEER_PROTOCOL}),
            false => serde_json::json!({}),
        };
        let status = match ip {
            Some(ip) => serde_json::json!({"podIP": ip}),
            None => serde_json::json!({}),
        };
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "annotations": annotations},
            "status": status,
        }))
        .expect("a pod")
    }

    fn peer(ip: &str) -> Peer {
        Peer {
            ip: ip.parse().expect("an IP"),
            acks: true,
        }
    }

    /// A table that listed `pods`.
    fn listed(pods: Vec<Pod>) -> Peers {
        let mut p = Peers::default();
        p.handle(watcher::Event::Init);
        for pod in pods {
            p.handle(watcher::Event::InitApply(pod));
        }
        assert!(
            p.handle(watcher::Event::InitDone),
            "the first list changes it"
        );
        p
    }

    #[test]
    fn the_table_keeps_each_pods_ip_and_protocol_once_listed() {
        let mut p = Peers::default();
        p.handle(watcher::Event::Init);
        p.handle(watcher::Event::InitApply(pod(
            "web-0",
            Some("10.0.0.7"),
            true,
        )));
        p.handle(watcher::Event::InitApply(pod(
            "web-1",
            Some("10.0.0.8"),
            false,
        )));
        assert_eq!(p.get("web-0"), None, "not before the list is complete");
        assert!(p.handle(watcher::Event::InitDone));
        assert_eq!(p.get("web-0"), Some(Some(peer("10.0.0.7"))));
        assert_eq!(
            p.get("web-1"),
            Some(Some(Peer {
                acks: false,
                ..peer("10.0.0.8")
            })),
            "an earlier build's pod, not announced"
        );
        assert_eq!(p.get("web-2"), None, "not of the group");
    }

    #[test]
    fn a_pod_recreated_under_its_name_is_followed_to_its_new_ip() {
        let mut p = listed(vec![pod("web-0", Some("10.0.0.7"), true)]);
        assert!(p.handle(watcher::Event::Delete(pod("web-0", Some("10.0.0.7"), true))));
        assert_eq!(p.get("web-0"), None);
        assert!(p.handle(watcher::Event::Apply(pod("web-0", None, false))));
        assert_eq!(p.get("web-0"), Some(None), "known, no IP yet");
        assert!(p.handle(watcher::Event::Apply(pod("web-0", Some("10.0.0.9"), false))));
        assert!(p.handle(watcher::Event::Apply(pod("web-0", Some("10.0.0.9"), true))));
        assert_eq!(p.get("web-0"), Some(Some(peer("10.0.0.9"))));
        assert!(
            !p.handle(watcher::Event::Apply(pod("web-0", Some("10.0.0.9"), true))),
            "another change of the pod (a label, a condition) changes no peer"
        );
    }

    #[test]
    fn a_relist_replaces_the_table_only_once_complete_and_drops_pods_gone() {
        let mut p = listed(vec![
            pod("web-0", Some("10.0.0.7"), true),
            pod("web-1", Some("10.0.0.8"), true),
        ]);
        p.handle(watcher::Event::Init);
        p.handle(watcher::Event::InitApply(pod(
            "web-0",
            Some("10.0.0.7"),
            true,
        )));
        assert_eq!(p.get("web-1"), Some(Some(peer("10.0.0.8"))), "half a list");
        assert!(p.handle(watcher::Event::InitDone));
        assert_eq!(p.get("web-1"), None);
        p.handle(watcher::Event::Init);
        p.handle(watcher::Event::InitApply(pod(
            "web-0",
            Some("10.0.0.7"),
            true,
        )));
        assert!(!p.handle(watcher::Event::InitDone), "the same list again");
    }

    #[test]
    fn events_before_the_first_list_are_not_taken_for_a_table() {
        let mut p = Peers::default();
        assert!(!p.handle(watcher::Event::Apply(pod("web-0", Some("10.0.0.7"), true))));
        assert_eq!(p.get("web-0"), None);
    }

    #[test]
    fn a_holder_in_the_table_needs_no_lookup() {
        let peers = listed(vec![pod("web-0", Some("10.0.0.7"), true)]);
        let mut l = Lookups::default();
        l.handle_holder(Some("web-0"));
        assert_eq!(
            l.source("web-1", &peers),
            Some(Source::Known(peer("10.0.0.7")))
        );
        assert_eq!(l.source("web-0", &peers), None, "never to ourselves");
        l.handle_holder(None);
        assert_eq!(l.source("web-1", &peers), None, "nobody holds it");
    }

    #[test]
    fn a_holder_the_table_does_not_know_is_looked_up() {
        let mut l = Lookups::default();
        l.handle_holder(Some("web-0"));
        // The watch has not listed yet.
        assert_eq!(l.source("web-1", &Peers::default()), Some(Source::LookUp));
        l.handle_looked_up("web-0", peer("10.0.0.7"), None);
        assert_eq!(
            l.source("web-1", &Peers::default()),
            Some(Source::Known(peer("10.0.0.7")))
        );
        // Once the table knows the pod, it is newer than the lookup.
        let peers = listed(vec![pod("web-0", Some("10.0.0.9"), true)]);
        assert_eq!(
            l.source("web-1", &peers),
            Some(Source::Known(peer("10.0.0.9")))
        );
    }

    #[test]
    fn a_holder_without_an_ip_is_waited_for_not_looked_up() {
        let peers = listed(vec![pod("web-0", None, false)]);
        let mut l = Lookups::default();
        l.handle_holder(Some("web-0"));
        assert_eq!(l.source("web-1", &peers), Some(Source::NoIpYet));
    }

    #[test]
    fn an_address_that_failed_is_looked_up_and_the_lookup_wins_until_the_table_changes() {
        let mut peers = listed(vec![pod("web-0", Some("10.0.0.7"), true)]);
        let mut l = Lookups::default();
        l.handle_holder(Some("web-0"));
        l.handle_unreachable();
        assert_eq!(l.source("web-1", &peers), Some(Source::LookUp));
        // The table missed a re-creation (its watch failing): the lookup
        // has the pod's new IP.
        l.handle_looked_up("web-0", peer("10.0.0.9"), peers.get("web-0"));
        assert_eq!(
            l.source("web-1", &peers),
            Some(Source::Known(peer("10.0.0.9")))
        );
        peers.handle(watcher::Event::Apply(pod("web-0", Some("10.0.0.11"), true)));
        assert_eq!(
            l.source("web-1", &peers),
            Some(Source::Known(peer("10.0.0.11"))),
            "a newer table"
        );
    }

    #[test]
    fn a_new_holder_forgets_what_was_looked_up_and_doubted() {
        let mut l = Lookups::default();
        l.handle_holder(Some("web-0"));
        l.handle_looked_up("web-0", peer("10.0.0.7"), None);
        l.handle_holder(Some("web-0"));
        assert_eq!(
            l.source("web-1", &Peers::default()),
            Some(Source::Known(peer("10.0.0.7"))),
            "the same holder: one lookup is enough"
        );
        // web-0 handed over to web-1, was re-created with another IP and
        // took the Lease back: its old IP is forgotten on each change.
        l.handle_holder(Some("web-1"));
        l.handle_unreachable();
        l.handle_holder(Some("web-0"));
        assert_eq!(l.source("web-1", &Peers::default()), Some(Source::LookUp));
        let peers = listed(vec![pod("web-0", Some("10.0.0.9"), true)]);
        assert_eq!(
            l.source("web-1", &peers),
            Some(Source::Known(peer("10.0.0.9"))),
            "no doubt carried over"
        );
        // A lookup of a holder no longer named is not taken.
        l.handle_looked_up("web-2", peer("10.0.0.3"), None);
        assert_eq!(
            l.source("web-1", &peers),
            Some(Source::Known(peer("10.0.0.9")))
        );
    }
}
