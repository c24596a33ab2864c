//! The operator controls (docs/design.md, rule 10) on the real control plane
//! and the real node, driven through `kubectl baton` as a user types it, or
//! through plain `kubectl annotate`; every test under the never-two-active
//! guard of its group.

use std::{process::Output, time::Duration};

use baton_e2e::{
    group::{Group, wait_for_events},
    harness::{pod_ip, wait_for_object, wait_status},
};
use baton_sidecar::controls::{
    APP_HEALTHY_CONDITION, SWITCH_REASON, SWITCHOVER_TO, app_healthy_condition,
};
use k8s_openapi::api::{coordination::v1::Lease, core::v1::Pod};
use kube::{
    ResourceExt,
    api::{DeleteParams, Patch, PatchParams},
};
use serde_json::json;

const T: Duration = Duration::from_secs(60);

/// `kubectl baton ARGS` in the group's namespace: (exit ok, stdout, stderr).
fn baton(group: &Group, args: &[&str]) -> (bool, String, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = group.ns.kubectl_baton(args);
    (
        status.success(),
        String::from_utf8_lossy(&stdout).into_owned(),
        String::from_utf8_lossy(&stderr).into_owned(),
    )
}

/// `kubectl baton ARGS`, which must succeed; its stdout.
fn baton_ok(group: &Group, args: &[&str]) -> String {
    let (ok, out, err) = baton(group, args);
    assert!(ok, "kubectl baton {args:?} failed: {err}{out}");
    out
}

/// `kubectl baton ARGS`, which must be refused; its stderr.
fn baton_refused(group: &Group, args: &[&str]) -> String {
    let (ok, out, err) = baton(group, args);
    assert!(
        !ok,
        "kubectl baton {args:?} should have been refused: {out}"
    );
    assert!(err.starts_with("error: "), "kubectl's manner: {err}");
    err
}

fn annotation(lease: &Lease, key: &str) -> Option<String> {
    lease.annotations().get(key).cloned()
}

fn holder_of(lease: &Lease) -> Option<String> {
    lease
        .spec
        .as_ref()
        .and_then(|s| s.holder_identity.clone())
        .filter(|h| !h.is_empty())
}

/// Waits until `pod`'s sidecar has set its app-healthy condition to `healthy`.
async fn wait_health_condition(group: &Group, pod: &str, healthy: bool) {
    wait_for_object::<Pod, _>(
        group.pods(),
        pod,
        T,
        &format!("{pod}'s {APP_HEALTHY_CONDITION} condition {healthy}"),
        |p| app_healthy_condition(p) == Some(healthy),
    )
    .await;
}

async fn deploy(test: &str, replicas: u32) -> (Group, String) {
    let (group, holder) = Group::deploy(test, replicas).await;
    for i in 0..replicas {
        wait_health_condition(&group, &format!("web-{i}"), true).await;
    }
    (group, holder)
}

fn other_than(group_size: u32, not: &str) -> String {
    (0..group_size)
        .map(|i| format!("web-{i}"))
        .find(|p| p != not)
        .expect("another pod")
}

#[tokio::test]
async fn a_switchover_to_a_named_pod_moves_the_role_and_status_shows_it() {
    let (group, holder) = deploy("controls-switchover", 3).await;
    let target = other_than(3, &holder);

    let out = baton_ok(&group, &["switchover", "web", "--to", &target]);
    assert!(
        out.contains(&format!("web switched over from {holder} to {target} in")),
        "{out}"
    );
    assert_eq!(group.wait_for_new_holder(Some(&holder)).await, target);
    let lease: Lease = group.ns.api().get("web").await.expect("lease");
    assert_eq!(annotation(&lease, SWITCHOVER_TO), None, "the request ended");
    assert_eq!(
        annotation(&lease, SWITCH_REASON).as_deref(),
        Some(format!("{holder} handed over to {target} (switchover requested)").as_str())
    );
    wait_for_events(
        &group.ns,
        &[
            ("SwitchingOver", holder.as_str()),
            ("Promoted", target.as_str()),
        ],
    )
    .await;

    // What an operator reads.
    let table = baton_ok(&group, &["status"]);
    let line = table
        .lines()
        .find(|l| l.starts_with("web "))
        .unwrap_or_else(|| panic!("a line for group web: {table}"));
    assert!(line.contains(&target) && line.contains("3/3"), "{table}");
    let wide = baton_ok(&group, &["status", "web", "-o", "wide"]);
    for i in 0..3 {
        assert!(wide.contains(&format!("web-{i}")), "{wide}");
    }
    let json: serde_json::Value =
        serde_json::from_str(&baton_ok(&group, &["status", "web", "-o", "json"])).expect("JSON");
    let web = &json["groups"][0];
    assert_eq!(web["group"], "web", "{json}");
    assert_eq!(web["holder"], target.as_str(), "{json}");
    assert_eq!(web["paused"], false, "{json}");
    let pods = web["pods"].as_array().expect("pods");
    assert_eq!(pods.len(), 3, "{json}");
    for pod in pods {
        assert_eq!(pod["healthy"], true, "{json}");
        let role = if pod["name"] == target.as_str() {
            "active"
        } else {
            "passive"
        };
        assert_eq!(pod["role"], role, "{json}");
    }
    group.finish().await;
}

#[tokio::test]
async fn switchovers_that_cannot_happen_are_refused_and_the_holder_keeps_the_role() {
    let (group, holder) = deploy("controls-refused", 2).await;
    let standby = other_than(2, &holder);

    let err = baton_refused(&group, &["switchover", "web", "--to", "nosuch"]);
    assert!(err.contains("pod \"nosuch\" not found"), "{err}");
    let out = baton_ok(&group, &["switchover", "web", "--to", &holder]);
    assert!(out.contains("already holds"), "{out}");

    // An unhealthy standby: named or not, refused.
    group.set_app_health(&standby, "fail").await;
    wait_health_condition(&group, &standby, false).await;
    let err = baton_refused(&group, &["switchover", "web", "--to", &standby]);
    assert!(err.contains("unhealthy"), "{err}");
    baton_refused(&group, &["switchover", "web"]);
    group.set_app_health(&standby, "ok").await;
    wait_health_condition(&group, &standby, true).await;

    // Asked with plain kubectl for a pod that cannot take it: the holder
    // hands over, nobody takes the Lease, and the holder takes it back
    // within half a lease duration, its label untouched.
    group.ns.kubectl_ok(
        &[
            "annotate",
            "lease",
            "web",
            &format!("{SWITCHOVER_TO}=ghost-0"),
        ],
        None,
    );
    let lease = wait_for_object::<Lease, _>(
        group.ns.api(),
        "web",
        T,
        "the switchover to ghost-0 ended",
        |l| {
            annotation(l, SWITCHOVER_TO).is_none()
                && annotation(l, SWITCH_REASON).is_some_and(|r| r.contains("ghost-0"))
        },
    )
    .await;
    assert_eq!(holder_of(&lease).as_deref(), Some(holder.as_str()));
    assert_eq!(
        annotation(&lease, SWITCH_REASON).as_deref(),
        Some(
            format!("switchover to ghost-0 not taken within 3s; {holder} keeps the role").as_str()
        )
    );
    let pod: Pod = group.pods().get(&holder).await.expect("holder");
    assert_eq!(pod.labels().get("role").map(String::as_str), Some("active"));
    wait_for_events(&group.ns, &[("SwitchoverFailed", holder.as_str())]).await;

    // A terminating standby (held by a finalizer) is refused too.
    let pods = group.pods();
    let hold = json!({"metadata": {"finalizers": ["baton.dev/test-hold"]}});
    pods.patch(&standby, &PatchParams::default(), &Patch::Merge(&hold))
        .await
        .expect("finalizer added");
    pods.delete(&standby, &DeleteParams::default())
        .await
        .expect("deleted");
    wait_for_object::<Pod, _>(pods.clone(), &standby, T, "a deletionTimestamp", |p| {
        p.metadata.deletion_timestamp.is_some()
    })
    .await;
    let err = baton_refused(&group, &["switchover", "web", "--to", &standby]);
    assert!(err.contains("terminating"), "{err}");
    let release = json!({"metadata": {"finalizers": null}});
    pods.patch(&standby, &PatchParams::default(), &Patch::Merge(&release))
        .await
        .expect("finalizer removed");
    group.finish().await;
}

#[tokio::test]
async fn a_cordoned_active_pod_hands_over_and_takes_nothing_until_uncordoned() {
    let (group, holder) = deploy("controls-cordon", 2).await;
    let out = baton_ok(&group, &["cordon", &holder]);
    assert!(out.contains(&format!("pod/{holder} cordoned")), "{out}");
    let new = group.wait_for_new_holder(Some(&holder)).await;
    let lease: Lease = group.ns.api().get("web").await.expect("lease");
    assert_eq!(
        annotation(&lease, SWITCH_REASON).as_deref(),
        Some(format!("{holder} handed over to any healthy standby (cordoned)").as_str())
    );

    // The new holder fails; the cordoned pod sees the Lease released and
    // does not take it.
    group.set_app_health(&new, "fail").await;
    let ip = pod_ip(&group.ns, &holder).await;
    let what = format!("{holder} seeing the Lease released while cordoned");
    wait_status(&ip, T, &what, |s| s.holder.is_none() && s.cordoned).await;
    let lease: Lease = group.ns.api().get("web").await.expect("lease");
    assert_eq!(holder_of(&lease), None, "nobody may take it");

    let out = baton_ok(&group, &["uncordon", &holder]);
    assert!(out.contains(&format!("pod/{holder} uncordoned")), "{out}");
    assert_eq!(group.wait_for_new_holder(None).await, holder);
    let holders = group.finish().await;
    assert_eq!(
        holders,
        [
            Some(holder.clone()),
            None,
            Some(new.clone()),
            None,
            Some(holder.clone())
        ],
        "released for any standby, taken by {new}; released again, taken only once uncordoned"
    );
}

#[tokio::test]
async fn a_paused_group_keeps_a_failing_holder_switches_over_on_request_and_fails_over_on_resume() {
    let (group, first) = deploy("controls-pause", 2).await;
    let out = baton_ok(&group, &["pause", "web"]);
    assert!(out.contains("group web paused"), "{out}");
    let ip = pod_ip(&group.ns, &first).await;
    let what = format!("{first} reporting the group paused");
    wait_status(&ip, T, &what, |s| s.paused).await;
    wait_for_events(&group.ns, &[("Paused", first.as_str())]).await;

    // A switchover still works while paused.
    let second = baton_ok(&group, &["switchover", "web"]);
    let new = group.wait_for_new_holder(Some(&first)).await;
    assert!(second.contains(&format!("to {new} in")), "{second}");

    // The new holder's app fails: reported, not acted on.
    group.set_app_health(&new, "fail").await;
    wait_for_events(&group.ns, &[("UnhealthyWhilePaused", new.as_str())]).await;
    wait_health_condition(&group, &new, false).await;
    let before: Lease = group.ns.api().get("web").await.expect("lease");
    let renewed_at = before.spec.as_ref().and_then(|s| s.renew_time.clone());
    let after = wait_for_object::<Lease, _>(
        group.ns.api(),
        "web",
        T,
        "a renewal by the failing holder",
        |l| l.spec.as_ref().and_then(|s| s.renew_time.clone()) != renewed_at,
    )
    .await;
    assert_eq!(
        holder_of(&after).as_deref(),
        Some(new.as_str()),
        "kept, renewed"
    );
    let pod: Pod = group.pods().get(&new).await.expect("holder");
    assert_eq!(pod.labels().get("role").map(String::as_str), Some("active"));
    let metrics = group.sidecar_get(&new, "/metrics").await;
    assert!(metrics.contains("baton_group_paused 1"), "{metrics}");
    let json: serde_json::Value =
        serde_json::from_str(&baton_ok(&group, &["status", "web", "-o", "json"])).expect("JSON");
    assert_eq!(json["groups"][0]["paused"], true, "{json}");

    // Resumed: the failing holder gives up at once.
    let out = baton_ok(&group, &["resume", "web"]);
    assert!(out.contains("group web resumed"), "{out}");
    assert_eq!(group.wait_for_new_holder(Some(&new)).await, first);
    wait_for_events(&group.ns, &[("Resumed", new.as_str())]).await;
    group.finish().await;
}
