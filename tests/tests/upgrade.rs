//! Upgrades as users run them (docs/install.md, "Upgrading"): the webhook
//! moved to a new image tag while opted-in pods are being created, then the
//! group rolled onto the new sidecar; and a group whose sidecars come from
//! two builds, as it is in the middle of that roll, switching both ways
//! with clients through the proxied Services.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use baton_e2e::{
    clients::{Client, Connections, Sample, client_through, now},
    group::Group,
    harness::{
        self, Cluster, NeverTwoActive, TestNamespace, repo_root, wait_endpoints, wait_for_holder,
        wait_until,
    },
    install::{HelmRelease, InstalledWebhook},
    workload::{self, ProxiedService},
};
use baton_sidecar::{
    contract::{PEER_PROTOCOL, PEER_PROTOCOL_ANNOTATION},
    controls::SWITCHOVER_TO,
};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::{
    ResourceExt,
    runtime::{WatchStreamExt, watcher},
};

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

/// The clients of a mixed group: each Service shape that passes through
/// the sidecars' proxies, kept-alive, and the whole group's also with a new
/// connection per request (about half of which reach the standby's proxy,
/// which forwards them to the holder's: the path where two builds meet).
struct Clients(Vec<(&'static str, Client)>);

impl Clients {
    async fn start(group: &Group) -> Clients {
        let _ = harness::http(); // installs the TLS provider reqwest needs
        let group_ip = group
            .ns
            .cluster_ip(&workload::proxied_service_name("web"))
            .await;
        let role_ip = group.ns.cluster_ip("web-proxied-active").await;
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
/// requests, none of which may fail. It begins once every client is
/// answered by the holder and the role-label Service lists the holder
/// alone: until the endpoint controller has dropped the former holder, a
/// new connection of the role-label client may still be sent to it, which
/// is the switch's cost (measured by `switch`), not the steady state's.
async fn steady(group: &Group, clients: &Clients, what: &str, holder: &str, secs: u64) -> usize {
    wait_endpoints(
        &group.ns,
        "web-proxied-active",
        &[holder],
        Duration::from_secs(60),
    )
    .await;
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
    // next connection takes the new route). Between builds more do: what
    // the earlier build forwards, or what is forwarded to it, is spliced at
    // once and cannot take the next route, so the requests sent through
    // that path during the handover fail (about a second's at a failover,
    // docs/install.md "Upgrading"); three seconds' would be the route wait
    // passing with connections hung. The role-label Service's endpoints
    // move too, which kube-proxy follows at its own pace: counted, not
    // bounded.
    for (name, f) in &failed {
        if name.starts_with("whole group") {
            assert!(
                f.len() < 3 * RATE as usize,
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
    // The earlier build predates the new-holder mark on the Lease writes
    // that create or take it, which the confinement policies ask of every
    // such write: during a roll from it, the namespace is left out of them
    // (docs/operations.md, Upgrading), as a user does.
    group
        .ns
        .label_namespace("baton.dev/sidecar-policy=disabled");
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

    let mut sent = steady(&group, &clients, "old holder, new standby", old, 5).await;
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
    sent += steady(&group, &clients, "new holder, old standby", new, 5).await;

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
    sent += steady(&group, &clients, "old holder again", old, 3).await;

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
    sent += steady(&group, &clients, "new holder again", new, 3).await;
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

/// The images `make image` built, as the manifests name them.
const VERSION: &str = env!("CARGO_PKG_VERSION");
const REPO: &str = "ghcr.io/baton-dev";
/// What an upgrade's release is tagged here: the same images under a
/// second tag, on every node, so that the new tag is a new image to
/// Kubernetes (no registry is reachable: `IfNotPresent` finds it there).
fn next_tag() -> String {
    format!("{VERSION}-next")
}

/// Tags our sidecar and webhook images `<version>-next` on every real node.
fn tag_next_on_every_node(cluster: &Cluster) {
    for node in &cluster.nodes {
        for name in ["baton-sidecar", "baton-webhook"] {
            let (from, to) = (
                format!("{REPO}/{name}:{VERSION}"),
                format!("{REPO}/{name}:{}", next_tag()),
            );
            let out = cluster.ctr(&node.name, &["images", "tag", "--force", &from, &to]);
            assert!(
                out.status.success(),
                "ctr images tag {from} {to} on {}: {}",
                node.name,
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

/// A kustomize overlay of `manifests/webhook` in a folder of its own under
/// target/: as installed (`next` false), or moved to the next tags as a
/// newer release's manifests are (`images:` for the webhook's image; the
/// sidecar image it injects is its env, set by a patch).
fn overlay(name: &str, next: bool) -> PathBuf {
    let dir = repo_root().join(format!("target/upgrade-overlays/{name}"));
    std::fs::create_dir_all(&dir).expect("the overlay's folder");
    let mut k = "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n- ../../../manifests/webhook\n".to_owned();
    if next {
        let tag = next_tag();
        k.push_str(&format!(
            r#"images:
- name: {REPO}/baton-webhook
  newTag: {tag}
patches:
- patch: |-
    apiVersion: apps/v1
    kind: Deployment
    metadata: {{name: baton-webhook, namespace: baton-system}}
    spec:
      template:
        spec:
          containers:
          - name: webhook
            env:
            - {{name: BATON_WEBHOOK_SIDECAR_IMAGE, value: "{REPO}/baton-sidecar:{tag}"}}
"#
        ));
    }
    std::fs::write(dir.join("kustomization.yaml"), k).expect("the overlay");
    dir
}

/// A pod as first seen by the test's watch: admission has run, and a
/// pod's containers never change after.
#[derive(Debug, Clone)]
struct Seen {
    name: String,
    created: i64,
    /// The image of its container `baton-sidecar`, if it has one.
    sidecar: Option<String>,
}

fn sidecar_image(pod: &Pod) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    spec.init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter())
        .find(|c| c.name == "baton-sidecar")
        .and_then(|c| c.image.clone())
}

/// Every pod of `ns` the watch sees, by uid.
struct PodsSeen {
    seen: Arc<Mutex<BTreeMap<String, Seen>>>,
    errors: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl PodsSeen {
    fn start(ns: &TestNamespace) -> PodsSeen {
        let seen = Arc::new(Mutex::new(BTreeMap::new()));
        let errors = Arc::new(Mutex::new(Vec::new()));
        let (s, e) = (seen.clone(), errors.clone());
        let stream = watcher(ns.api::<Pod>(), watcher::Config::default()).applied_objects();
        let task = tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            while let Some(event) = stream.next().await {
                match event {
                    Ok(pod) => {
                        let uid = pod.uid().unwrap_or_default();
                        let created = pod
                            .creation_timestamp()
                            .map(|t| t.0.as_second())
                            .unwrap_or_default();
                        s.lock().expect("not poisoned").entry(uid).or_insert(Seen {
                            name: pod.name_any(),
                            created,
                            sidecar: sidecar_image(&pod),
                        });
                    }
                    Err(err) => e.lock().expect("not poisoned").push(err.to_string()),
                }
            }
            e.lock()
                .expect("not poisoned")
                .push("the watch ended".to_owned());
        });
        PodsSeen { seen, errors, task }
    }

    fn all(&self) -> Vec<Seen> {
        self.seen
            .lock()
            .expect("not poisoned")
            .values()
            .cloned()
            .collect()
    }

    /// Fails if the watch stopped seeing (it could have missed a pod).
    fn finish(self) -> Vec<Seen> {
        self.task.abort();
        let errors = self.errors.lock().expect("not poisoned").clone();
        assert!(
            errors.is_empty(),
            "the pods' watch stopped seeing: {errors:?}"
        );
        self.all()
    }
}

/// An opted-in Deployment of the demo app, scaled up and down by
/// [`churn`] so that opted-in pods are created throughout an upgrade.
fn churn_deployment() -> String {
    let app = workload::DEMO_APP_IMAGE;
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: churn
  annotations: {{baton.dev/inject: "true"}}
spec:
  replicas: 0
  selector:
    matchLabels: {{app: churn}}
  template:
    metadata:
      labels: {{app: churn}}
    spec:
      terminationGracePeriodSeconds: 2
      containers:
      - name: app
        image: {app}
        ports: [{{name: http, containerPort: 8080}}]
        env:
        - name: POD_NAME
          valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}
        - {{name: LISTEN_ADDR, value: "0.0.0.0:8080"}}
"#
    )
}

/// Scales `churn` between 0 and 2 every 2 s until `stop`.
fn churn(
    ns: &TestNamespace,
    stop: tokio_util::sync::CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let (cluster, ns) = (ns.cluster.clone(), ns.name.clone());
    tokio::spawn(async move {
        let mut up = true;
        while !stop.is_cancelled() {
            let replicas = format!("--replicas={}", if up { 2 } else { 0 });
            let args = ["-n", &ns, "scale", "deployment", "churn", &replicas];
            let out = tokio::task::block_in_place(|| cluster.kubectl(&args, None));
            assert!(
                out.status.success(),
                "kubectl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            up = !up;
            tokio::select! {
                () = tokio::time::sleep(Duration::from_secs(2)) => {}
                () = stop.cancelled() => {}
            }
        }
    })
}

/// The clients' requests since `from` that failed, printed and returned.
fn failed_since(client: &Client, from: f64, what: &str) -> Vec<Sample> {
    let samples: Vec<Sample> = client
        .samples()
        .into_iter()
        .filter(|s| s.sent >= from)
        .collect();
    let failed: Vec<Sample> = samples
        .iter()
        .filter(|s| s.answer.is_err())
        .cloned()
        .collect();
    eprintln!(
        "{what}: {} requests, {} failed: {:?}",
        samples.len(),
        failed.len(),
        failed.iter().take(5).collect::<Vec<_>>()
    );
    failed
}

/// How the webhook is installed and upgraded, as docs/install.md offers.
#[derive(Clone, Copy, Debug)]
enum Way {
    /// `kubectl apply -k` of an overlay of `manifests/webhook`, then of one
    /// that moves the image tags (as a newer release's manifests do).
    Kustomize,
    /// `helm install`, then `helm upgrade --set image.tag=... --set
    /// sidecar.image=...` (as a newer chart's appVersion does).
    Helm,
}

enum Installed {
    Kustomize(InstalledWebhook),
    Helm(HelmRelease),
}

/// One install in `baton-system` at a time: the tests of this file that
/// install share its names.
static ONE_INSTALL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

impl Installed {
    async fn install(way: Way, ns: &TestNamespace) -> Installed {
        match way {
            Way::Kustomize => Installed::Kustomize(
                InstalledWebhook::install_from(ns, &overlay("installed", false)).await,
            ),
            // The harness applies manifests/rbac/policy for every test
            // namespace: the chart leaves them to it, as for a user who
            // applied them with kustomize.
            Way::Helm => Installed::Helm(
                HelmRelease::install(ns, &["--set", "policies.enabled=false"]).await,
            ),
        }
    }

    /// Moves the webhook and the sidecar it injects to the next tags and
    /// returns once the webhook's Deployment has rolled out.
    fn upgrade(&mut self) {
        match self {
            Installed::Kustomize(w) => w.upgrade(&overlay("next", true)),
            Installed::Helm(h) => h.upgrade(&[
                "--set",
                &format!("image.tag={}", next_tag()),
                "--set",
                &format!("sidecar.image={REPO}/baton-sidecar:{}", next_tag()),
            ]),
        }
    }

    fn uninstall(self) {
        match self {
            Installed::Kustomize(w) => w.uninstall(),
            Installed::Helm(h) => h.uninstall(),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_webhook_upgraded_by_kustomize_under_load_injects_every_pod_and_the_group_rolls_onto_the_new_sidecar()
 {
    upgraded_under_load(Way::Kustomize).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_webhook_upgraded_by_helm_under_load_injects_every_pod_and_the_group_rolls_onto_the_new_sidecar()
 {
    upgraded_under_load(Way::Helm).await;
}

/// The webhook moved to the next tags (by `way`) while opted-in pods are
/// created and a client calls the helloworld example's Service (the whole
/// group, through the proxies) 200 times a second on kept-alive connections: no
/// request fails, no opted-in pod is created without its sidecar, every
/// pod created after the rollout carries the new sidecar image; then the
/// group is rolled onto it (only requests in flight at a handover's cut
/// fail) and ends with one active pod.
async fn upgraded_under_load(way: Way) {
    const RATE: u32 = 200;
    let cluster = Cluster::connect().await;
    tag_next_on_every_node(&cluster);
    let _one = ONE_INSTALL.lock().await;
    let way_name = format!("{way:?}").to_lowercase();
    let ns = cluster.namespace(&format!("upgrade-{way_name}")).await;
    let mut webhook = Installed::install(way, &ns).await;
    let seen = PodsSeen::start(&ns);
    let guard = NeverTwoActive::start(ns.api(), "app=helloworld", "role", "active").await;
    let example = repo_root().join("manifests/examples/helloworld");
    ns.kubectl_ok(
        &["apply", "-k", example.to_str().expect("utf-8 path")],
        None,
    );
    ns.apply(&churn_deployment());
    let holder = wait_for_holder(&ns, "helloworld", None).await;
    for pod in ["helloworld-0", "helloworld-1"] {
        harness::wait_app_healthy(&ns, pod).await;
    }
    let client = client_through(&ns, "helloworld", Connections::KeepAlive, RATE, &holder).await;

    // The upgrade, with pods being created all along.
    let stop = tokio_util::sync::CancellationToken::new();
    let churning = churn(&ns, stop.clone());
    let from = now();
    tokio::time::sleep(Duration::from_secs(4)).await;
    // kubectl waits for the rollout: not on the clients' threads.
    tokio::task::block_in_place(|| webhook.upgrade());
    let next_webhook = format!("{REPO}/baton-webhook:{}", next_tag());
    let system: kube::Api<Pod> = kube::Api::namespaced(cluster.client.clone(), "baton-system");
    wait_until::<Pod, _>(
        system,
        "app.kubernetes.io/name=baton-webhook",
        Duration::from_secs(120),
        "only webhook replicas of the next tag",
        |pods| {
            !pods.is_empty()
                && pods.iter().all(|p| {
                    p.metadata.deletion_timestamp.is_none()
                        && p.spec.as_ref().is_some_and(|s| {
                            s.containers
                                .iter()
                                .all(|c| c.image.as_deref() == Some(next_webhook.as_str()))
                        })
                })
        },
    )
    .await;
    let finished = now().ceil() as i64;
    // Pods created once the upgrade is over: at least one scale-up more.
    tokio::time::sleep(Duration::from_secs(8)).await;
    stop.cancel();
    churning.await.expect("the churn loop");
    let failed = failed_since(&client, from, "webhook upgrade");
    assert!(
        failed.is_empty(),
        "requests failed while the webhook was upgraded: {failed:?}"
    );

    let next_sidecar = format!("{REPO}/baton-sidecar:{}", next_tag());
    let pods = seen.all();
    let without: Vec<&Seen> = pods.iter().filter(|p| p.sidecar.is_none()).collect();
    assert!(
        without.is_empty(),
        "opted-in pods created without the sidecar: {without:?}"
    );
    let after: Vec<&Seen> = pods
        .iter()
        .filter(|p| p.name.starts_with("churn-") && p.created > finished)
        .collect();
    assert!(
        !after.is_empty(),
        "no pod was created after the upgrade finished: {pods:?}"
    );
    let stale: Vec<&&Seen> = after
        .iter()
        .filter(|p| p.sidecar.as_deref() != Some(next_sidecar.as_str()))
        .collect();
    assert!(
        stale.is_empty(),
        "pods created after the upgrade with another sidecar than {next_sidecar}: {stale:?}"
    );
    eprintln!(
        "webhook upgrade: {} pods seen, {} created after it finished, all with {next_sidecar}",
        pods.len(),
        after.len()
    );
    ns.kubectl_ok(&["scale", "deployment", "churn", "--replicas=0"], None);

    // The group rolled onto the new sidecar.
    let from = now();
    ns.kubectl_ok(&["rollout", "restart", "statefulset", "helloworld"], None);
    tokio::task::block_in_place(|| {
        ns.kubectl_ok(
            &[
                "rollout",
                "status",
                "statefulset",
                "helloworld",
                "--timeout=180s",
            ],
            None,
        )
    });
    let rolled = wait_until::<Pod, _>(
        ns.api(),
        "app=helloworld",
        Duration::from_secs(60),
        "both helloworld pods on the new sidecar, one active",
        |pods| {
            pods.len() == 2
                && pods.iter().all(|p| {
                    p.metadata.deletion_timestamp.is_none()
                        && sidecar_image(p).as_deref() == Some(next_sidecar.as_str())
                })
                && harness::labelled(pods, "role", "active").len() == 1
        },
    )
    .await;
    let active = harness::labelled(&rolled, "role", "active");
    // Each new sidecar announced its proxy's peer protocol on its pod: the
    // admission policies (applied for every test namespace) let it.
    let annotated = |p: &Pod| {
        p.annotations()
            .get(PEER_PROTOCOL_ANNOTATION)
            .map(String::as_str)
            == Some(PEER_PROTOCOL)
    };
    wait_until::<Pod, _>(
        ns.api(),
        "app=helloworld",
        Duration::from_secs(60),
        "both helloworld pods announcing the peer protocol",
        |pods| pods.len() == 2 && pods.iter().all(annotated),
    )
    .await;
    client
        .wait_steady_on(&active[0], 20)
        .await
        .expect("the client ends on the active pod");
    // Each pod deleted hands over (rule 8) and its proxy cuts the kept-alive
    // connections it carried (rule 11): a request in flight on one at that
    // instant fails, far fewer than a second's.
    let failed = failed_since(&client, from, "rolling restart onto the new sidecar");
    assert!(
        failed.len() < RATE as usize,
        "requests failed while the group rolled: {failed:?}"
    );
    drop(client);
    assert_eq!(guard.assert_held().await, 1);
    let pods = seen.finish();
    assert!(pods.iter().all(|p| p.sidecar.is_some()), "{pods:?}");
    ns.delete().await;
    webhook.uninstall();
}
