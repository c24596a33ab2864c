//! The holder's group census as synchronous calls: the watch's events in,
//! notices and `/status` out, once per change.

use std::time::Instant;

use k8s_openapi::{api::core::v1::PodSpec, apimachinery::pkg::apis::meta::v1::OwnerReference};
use kube::runtime::watcher::Event;

use super::*;
use crate::candidate::say::status;

/// Pod `name` of StatefulSet `owner`, scheduled on `node`.
fn member(name: &str, node: &str, owner: &str) -> Pod {
    let mut p = Pod::default();
    p.metadata.name = Some(name.into());
    p.metadata.owner_references = Some(vec![OwnerReference {
        api_version: "apps/v1".into(),
        kind: "StatefulSet".into(),
        name: owner.into(),
        controller: Some(true),
        ..Default::default()
    }]);
    p.spec = Some(PodSpec {
        node_name: Some(node.into()),
        ..Default::default()
    });
    p
}

/// The group watch lists `pods`.
fn listed(s: &mut State, pods: &[Pod], at: Instant) -> Vec<Notice> {
    let mut n = s.handle_group_event(Ok(Event::Init), at);
    for p in pods {
        n.extend(s.handle_group_event(Ok(Event::InitApply(p.clone())), at));
    }
    n.extend(s.handle_group_event(Ok(Event::InitDone), at));
    n
}

fn events(n: &[Notice]) -> Vec<(bool, &'static str)> {
    n.iter()
        .filter_map(|n| match n {
            Notice::Event {
                warning, reason, ..
            } => Some((*warning, *reason)),
            _ => None,
        })
        .collect()
}

#[test]
fn only_the_holder_wants_to_watch_its_group() {
    let t0 = Instant::now();
    assert!(holder(t0, &[]).wants_group_view());
    assert!(!standby(t0, &[]).wants_group_view());
    let mut s = holder(t0, &[]);
    s.start_giving_up(crate::candidate::GiveUp::Shutdown, t0);
    assert!(!s.wants_group_view(), "a holder on its way out stops");
    let mut s = holder(t0, &[]);
    s.observe_lease(Some(&held_by("web-1", "8", 6)), t0, &mut Vec::new());
    assert!(!s.wants_group_view(), "nor one whose lease another took");
}

#[test]
fn standbys_on_the_holders_node_are_said_once_and_their_spreading_once() {
    let t0 = Instant::now();
    let mut s = holder(t0, &[]);
    listed(
        &mut s,
        &[member("web-0", "n1", "web"), member("web-1", "n1", "web")],
        t0,
    );
    let n = s.note(t0);
    assert!(
        n.contains(&Notice::GroupOnOneNode(Some("n1".into()))),
        "{n:?}"
    );
    assert_eq!(events(&n), [(true, "GroupOnOneNode")]);
    let shown = status(&s, t0);
    assert_eq!(shown.group_pods, Some(2));
    assert!(shown.standbys_on_own_node);
    assert_eq!(shown.group_nodes, ["n1"]);
    assert_eq!(shown.group_owners, ["StatefulSet/web"]);
    assert_eq!(shown.group_warnings.len(), 1);
    assert!(events(&s.note(t0)).is_empty(), "said once");

    // The standby comes back on another node.
    let moved = member("web-1", "n2", "web");
    s.handle_group_event(Ok(Event::Delete(member("web-1", "n1", "web"))), t0);
    assert!(
        !status(&s, t0).group_warnings.is_empty(),
        "until the next turn"
    );
    assert!(s.note(t0).is_empty(), "a group of one: no news");
    let mut pending = moved.clone();
    pending.spec = Some(PodSpec::default());
    s.handle_group_event(Ok(Event::Apply(pending)), t0);
    assert!(
        s.note(t0).is_empty(),
        "a standby not scheduled yet: no news"
    );
    s.handle_group_event(Ok(Event::Apply(moved)), t0);
    let n = s.note(t0);
    assert!(n.contains(&Notice::GroupOnOneNode(None)), "{n:?}");
    assert_eq!(events(&n), [(false, "GroupSpread")]);
    let shown = status(&s, t0);
    assert!(!shown.standbys_on_own_node && shown.group_warnings.is_empty());
    assert_eq!(shown.group_nodes, ["n1", "n2"]);
}

#[test]
fn pods_of_several_workloads_are_said_with_their_owners_and_once() {
    let t0 = Instant::now();
    let mut s = holder(t0, &[]);
    let other = member("api-0", "n2", "api");
    listed(&mut s, &[member("web-0", "n1", "web"), other.clone()], t0);
    let n = s.note(t0);
    let owners = vec!["StatefulSet/api".to_owned(), "StatefulSet/web".to_owned()];
    assert!(
        n.contains(&Notice::GroupOwners(Some(owners.clone()))),
        "{n:?}"
    );
    assert_eq!(events(&n), [(true, "GroupHasSeveralOwners")]);
    let Some(Notice::Event { note, .. }) = n.iter().find(|n| matches!(n, Notice::Event { .. }))
    else {
        unreachable!("an Event, asserted above");
    };
    assert!(
        note.contains("StatefulSet/api, StatefulSet/web") && note.contains("baton.dev/lease-name"),
        "{note}"
    );
    assert_eq!(status(&s, t0).group_owners, owners);
    assert!(events(&s.note(t0)).is_empty(), "said once");

    s.handle_group_event(Ok(Event::Delete(other)), t0);
    let n = s.note(t0);
    assert!(n.contains(&Notice::GroupOwners(None)), "{n:?}");
    assert_eq!(events(&n), [(false, "GroupHasOneOwner")]);
}

#[test]
fn a_relist_replaces_the_view_only_once_it_is_complete() {
    let t0 = Instant::now();
    let mut s = holder(t0, &[]);
    let pods = [member("web-0", "n1", "web"), member("web-1", "n1", "web")];
    listed(&mut s, &pods, t0);
    s.note(t0);
    s.handle_group_event(Ok(Event::Init), t0);
    s.handle_group_event(Ok(Event::InitApply(pods[0].clone())), t0);
    assert!(s.note(t0).is_empty(), "half a relist changes nothing");
    assert_eq!(status(&s, t0).group_pods, Some(2));
    s.handle_group_event(Ok(Event::InitApply(member("web-1", "n2", "web"))), t0);
    s.handle_group_event(Ok(Event::InitDone), t0);
    assert_eq!(events(&s.note(t0)), [(false, "GroupSpread")]);
}

#[test]
fn a_closed_view_shows_nothing_and_the_next_one_says_afresh() {
    let t0 = Instant::now();
    let mut s = holder(t0, &[]);
    let pods = [member("web-0", "n1", "web"), member("web-1", "n1", "web")];
    listed(&mut s, &pods, t0);
    s.note(t0);
    s.close_group_view();
    assert!(s.note(t0).is_empty(), "no Event when the view closes");
    let shown = status(&s, t0);
    assert_eq!(shown.group_pods, None);
    assert!(shown.group_nodes.is_empty() && !shown.standbys_on_own_node);
    listed(&mut s, &pods, t0);
    assert_eq!(events(&s.note(t0)), [(true, "GroupOnOneNode")]);
}

#[test]
fn a_failing_group_watch_is_counted_said_once_and_no_api_outage() {
    let t0 = Instant::now();
    let mut s = holder(t0, &[]);
    let failed = |s: &mut State| {
        let err = kube::runtime::watcher::Error::NoResourceVersion;
        s.handle_group_event(Err(err), t0)
    };
    let n = failed(&mut s);
    assert!(n.contains(&Notice::ApiError("watch group pods")), "{n:?}");
    assert!(
        n.iter()
            .any(|n| matches!(n, Notice::GroupWatchFailing { .. })),
        "{n:?}"
    );
    assert_eq!(failed(&mut s), [Notice::ApiError("watch group pods")]);
    assert!(
        s.api.calls.reachable(),
        "the Lease's calls judge the API server, and a shutdown still hands over"
    );
    let n = listed(&mut s, &[member("web-0", "n1", "web")], t0);
    assert_eq!(n, [Notice::GroupWatchLanded { failed_attempts: 2 }]);
}
