//! The small pure helpers.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;

use crate::{
    candidate::{GiveUp, handed_over_note, is_newer, state::is_stale, stranger_reason},
    labels::Membership,
};

#[test]
fn a_stranger_is_another_groups_pod_or_no_pod_that_renews_or_claims_more() {
    let own = Duration::from_secs(6);
    let r = |m, renewed, claimed| stranger_reason(m, renewed, Duration::from_secs(claimed), own);
    assert_eq!(r(Membership::Member, true, 3600), None);
    assert!(r(Membership::OtherPod, false, 6).is_some());
    assert!(r(Membership::NoSuchPod, true, 6).is_some(), "renews");
    assert!(
        r(Membership::NoSuchPod, false, 3600).is_some(),
        "claims more"
    );
    assert_eq!(
        r(Membership::NoSuchPod, false, 6),
        None,
        "a member lost with its node"
    );
}

#[test]
fn a_conflicted_promotion_waits_for_a_newer_pod_version() {
    let mut pod = Pod::default();
    pod.metadata.resource_version = Some("41".into());
    assert!(!is_stale(Some(&pod), None), "no conflict yet");
    assert!(
        is_stale(Some(&pod), Some("41")),
        "the version that conflicted"
    );
    pod.metadata.resource_version = Some("42".into());
    assert!(
        !is_stale(Some(&pod), Some("41")),
        "the watch showed a newer pod"
    );
    assert!(!is_stale(None, Some("41")));
}

#[test]
fn handed_over_says_what_made_the_pod_give_up() {
    // Never "app unhealthy": an unhealthy app releases without this Event.
    let cases = [
        (GiveUp::PodTerminating, "pod terminating"),
        (GiveUp::PodDeleted, "pod deleted"),
        (GiveUp::ProbeStopped, "app probe stopped"),
        (GiveUp::Shutdown, "sidecar shutting down"),
    ];
    for (why, said) in cases {
        assert_eq!(
            handed_over_note("web", why),
            format!("released lease web ({said})")
        );
    }
}

#[test]
fn watch_events_older_than_our_own_write_are_ignored() {
    assert!(is_newer(&Some("10".into()), Some(&"9".to_string())));
    assert!(is_newer(&Some("10".into()), Some(&"10".to_string())));
    assert!(!is_newer(&Some("9".into()), Some(&"10".to_string())));
    assert!(
        is_newer(&Some("abc".into()), Some(&"10".to_string())),
        "opaque: accept"
    );
    assert!(is_newer(&Some("1".into()), None));
}
