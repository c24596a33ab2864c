//! Upgrades as users run them (docs/install.md, "Upgrading"): the webhook
//! moved to a new image tag while opted-in pods are being created, then the
//! group rolled onto the new sidecar; and a group whose sidecars come from
//! two builds, as it is in the middle of that roll, switching both ways
//! with clients through the proxied Services.

use baton_e2e::{
    clients::{Client, Connections, Sample, now},
    group::Group,
    harness::{self, repo_root},
    workload::{self, ProxiedService},
};
use baton_sidecar::controls::SWITCHOVER_TO;
use k8s_openapi::api::core::v1::Service;

/// Requests a second per client.
const RATE: u32 = 50;

/// The sidecar image of an earlier build that tests/cluster/build-old-sidecar.sh
/// made (`make e2e` runs it) and the nodes imported: its tag, from the note
/// the script leaves beside the archive.
fn old_sidecar_image() -> String {
    let note = repo_root().join("target/image/baton-sidecar-old.tar.tag");
    std::fs::read_to_string(&note)
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e}; build the earlier sidecar with tests/cluster/build-old-sidecar.sh \
                 (make e2e does) before the cluster starts",
                note.display()
            )
        })
        .trim()
        .to_owned()
}

async fn cluster_ip(group: &Group, service: &str) -> String {
    let svc: Service = group.ns.api().get(service).await.expect("the Service");
    svc.spec.and_then(|s| s.cluster_ip).expect("a ClusterIP")
}

/// The clients of a mixed group: each Service shape that passes through
/// the sidecars' proxies, kept-alive, and the whole group's also with a new
/// connection per request (about half of which reach the standby's proxy,
/// which forwards them to the holder's: the path where two builds meet).
struct Clients(Vec<(&'static str, Client)>);

impl Clients {
    async fn start(group: &Group) -> Clients {
        let _ = harness::http(); // installs the TLS provider reqwest needs
        let group_ip = cluster_ip(group, &workload::proxied_service_name("web")).await;
        let role_ip = cluster_ip(group, "web-proxied-active").await;
        let start =
            |c, ip: &str| Client::start(c, format!("http://{ip}/"), RATE).expect("an HTTP client");
        Clients(vec![
            (
                "whole group, kept alive",
                start(Connections::KeepAlive, &group_ip),
            ),
            (
                "whole group, a connection per request",
                start(Connections::New, &group_ip),
            ),
            (
                "role label, kept alive",
                start(Connections::KeepAlive, &role_ip),
            ),
        ])
    }

    async fn wait_steady_on(&self, pod: &str) {
        for (name, c) in &self.0 {
            c.wait_steady_on(pod, 20)
                .await
                .unwrap_or_else(|e| panic!("{name}: not steady on the holder {pod}: {e}"));
        }
    }

    /// Each client's requests sent in `[from, to)` that failed.
    fn failed(&self, from: f64, to: f64) -> Vec<(&'static str, Vec<Sample>)> {
        self.0
            .iter()
            .map(|(name, c)| {
                let failed = c
                    .samples()
                    .into_iter()
                    .filter(|s| s.sent >= from && s.sent < to && s.answer.is_err())
                    .collect();
                (*name, failed)
            })
            .collect()
    }

    /// Requests each client sent in `[from, to)`.
    fn sent(&self, from: f64, to: f64) -> usize {
        self.0
            .iter()
            .flat_map(|(_, c)| c.samples())
            .filter(|s| s.sent >= from && s.sent < to)
            .count()
    }
}

/// A steady stretch with `holder` serving: `secs` seconds of every client's
/// requests, none of which may fail.
async fn steady(clients: &Clients, what: &str, holder: &str, secs: u64) -> usize {
    clients.wait_steady_on(holder).await;
    let from = now();
    tokio::time::sleep(std::time::Duration::from_secs(secs)).await;
    let to = now();
    let failed = clients.failed(from, to);
    let sent = clients.sent(from, to);
    eprintln!(
        "{what}: {sent} requests, failed: {:?}",
        failed.iter().map(|(n, f)| (n, f.len())).collect::<Vec<_>>()
    );
    for (name, f) in &failed {
        assert!(
            f.is_empty(),
            "{what}: {name}: {} of the requests failed while {holder} held the Lease steadily: {:?}",
            f.len(),
            f.iter().take(5).collect::<Vec<_>>()
        );
    }
    sent
}

/// Runs `act`, waits for `new` to hold the Lease and be the one pod
/// labelled active, then for every client to be answered by it alone, and
/// returns the requests that failed meanwhile.
async fn switch(
    group: &Group,
    clients: &Clients,
    what: &str,
    old: &str,
    new: &str,
    act: impl std::future::Future<Output = ()>,
) -> usize {
    let from = now();
    act.await;
    let holder = group.wait_for_new_holder(Some(old)).await;
    assert_eq!(holder, new, "{what}: the Lease went to the pod it had to");
    clients.wait_steady_on(new).await;
    let failed = clients.failed(from, now());
    eprintln!(
        "{what}: {old} -> {new}: failed: {:?}",
        failed.iter().map(|(n, f)| (n, f.len())).collect::<Vec<_>>()
    );
    // Requests in flight on a connection the switch cuts fail (the client's
    // next connection takes the new route); a second of a client's requests
    // is far more than that. The role-label Service's endpoints move too,
    // which kube-proxy follows at its own pace: counted, not bounded.
    for (name, f) in &failed {
        if name.starts_with("whole group") {
            assert!(
                f.len() < RATE as usize,
                "{what}: {name}: {} failed requests: {:?}",
                f.len(),
                f.iter().take(5).collect::<Vec<_>>()
            );
        }
    }
    failed.iter().map(|(_, f)| f.len()).sum()
}

/// A group of two whose sidecars come from two builds, the earlier one
/// from before the proxy's peer port acknowledged a forwarded connection
/// (build-old-sidecar.sh): it elects one pod and labels it, fails over and
/// switches over both ways, and its proxies serve every request of the
/// clients of the whole group's Service and of the role-label Service
/// whichever build holds the Lease.
#[tokio::test]
async fn a_group_with_sidecars_of_two_builds_serves_and_switches_both_ways() {
    let old_image = old_sidecar_image();
    let group = Group::empty("upgrade-mixed").await;
    let role_file = format!("{}/role.json", workload::RUN_DIR);
    let env = [("BATON_ROLE_FILE", role_file.as_str())];
    let (old, new) = ("web-old-0", "web-new-0");
    // The earlier build first: it holds the Lease when the new one joins.
    group.ns.apply(&workload::member_statefulset(
        "web", "old", &old_image, &env,
    ));
    group.ns.apply(&workload::active_service("web"));
    let first = group.wait_for_new_holder(None).await;
    assert_eq!(first, old, "the only pod takes the Lease");
    group.ns.apply(&workload::member_statefulset(
        "web",
        "new",
        workload::SIDECAR_IMAGE,
        &env,
    ));
    group.wait_app_healthy(old).await;
    group.wait_app_healthy(new).await;
    group.ns.apply(&workload::proxied_service(
        "web",
        ProxiedService::WholeGroup,
    ));
    group.ns.apply(
        &workload::proxied_service("web", ProxiedService::RoleLabel)
            .replace("name: web-proxied\n", "name: web-proxied-active\n"),
    );
    let clients = Clients::start(&group).await;

    let mut sent = steady(&clients, "old holder, new standby", old, 5).await;
    let mut switch_failed = Vec::new();
    let to = format!("{SWITCHOVER_TO}={new}");
    switch_failed.push(
        switch(&group, &clients, "switchover", old, new, async {
            group
                .ns
                .kubectl_ok(&["annotate", "lease", "web", &to], None);
        })
        .await,
    );
    sent += steady(&clients, "new holder, old standby", new, 5).await;

    // The new holder's health check fails: the old build takes over.
    switch_failed.push(
        switch(
            &group,
            &clients,
            "failover to the old build",
            new,
            old,
            async {
                group.set_app_health(new, "fail").await;
            },
        )
        .await,
    );
    group.set_app_health(new, "ok").await;
    group.wait_app_healthy(new).await;
    sent += steady(&clients, "old holder again", old, 3).await;

    // And the old holder's: the new build takes over.
    switch_failed.push(
        switch(
            &group,
            &clients,
            "failover to the new build",
            old,
            new,
            async {
                group.set_app_health(old, "fail").await;
            },
        )
        .await,
    );
    group.set_app_health(old, "ok").await;
    group.wait_app_healthy(old).await;
    sent += steady(&clients, "new holder again", new, 3).await;
    eprintln!(
        "mixed group: {sent} requests in the steady stretches, none failed; failed at the switches: {switch_failed:?}"
    );

    // Both builds forwarded through their own proxies, and the new build
    // served forwarded connections at its peer port.
    for pod in [old, new] {
        let metrics = group.sidecar_get(pod, "/metrics").await;
        assert!(
            metrics
                .contains("baton_proxy_connections_total{listener=\"front\",result=\"forward\"}"),
            "{pod} never forwarded a connection of the whole group's Service:\n{metrics}"
        );
    }
    drop(clients);
    group.finish().await;
}
