//! Workloads the tests create: the demo app in a StatefulSet, with the
//! sidecar written into the spec by hand as the webhook injects it (a unit
//! test below holds it to the webhook's injection code), and the user's
//! Service that selects the app plus `role: active`. The images are the
//! ones `make image` built and the local node imported.

/// Our images as `make image` tags them (with the workspace version).
pub const SIDECAR_IMAGE: &str = concat!(
    "ghcr.io/baton-dev/baton-sidecar:",
    env!("CARGO_PKG_VERSION")
);
pub const DEMO_APP_IMAGE: &str = concat!(
    "ghcr.io/baton-dev/baton-demo-app:",
    env!("CARGO_PKG_VERSION")
);

/// The demo app's HTTP port, the port of its line protocol (a plain
/// long-lived TCP client's), and its cleartext HTTP/2 port (gRPC's transport).
pub const APP_PORT: u16 = 8080;
pub const LINES_PORT: u16 = 8081;
pub const H2C_PORT: u16 = 8082;
/// The sidecar's proxy port (its default), which a proxied Service targets.
pub const PROXY_PORT: u16 = 9096;

/// The sidecar's emptyDir, mounted at [`RUN_DIR`] (for its role file).
pub const RUN_VOLUME: &str = "baton-run";
pub const RUN_DIR: &str = "/run/baton";

/// A demo-app StatefulSet named `name` with `replicas` pods and, when
/// `sidecar` is set, the baton sidecar as a native sidecar with `env` extra.
pub fn statefulset(name: &str, replicas: u32, sidecar: bool, env: &[(&str, &str)]) -> String {
    statefulset_placed(name, replicas, sidecar, env, "")
}

/// Pod-spec lines that place a pod on the real node `baton-node-0`, also
/// when it carries the taint `baton.dev/real-node` that up.sh sets when
/// KWOK nodes run beside it (`make bench`): then only pods that ask for the
/// real node land there.
pub const ON_REAL_NODE: &str = concat!(
    "      nodeSelector: {kubernetes.io/hostname: baton-node-0}\n",
    "      tolerations: [{key: baton.dev/real-node, operator: Exists, effect: NoSchedule}]\n",
);

/// Pod-spec lines that spread the pods of the group `name` over the real
/// nodes, as the example does: one per node, and a cordoned node still
/// counts, so a drained pod waits Pending for its node rather than land
/// beside the other (decisions §25). Where
/// KWOK nodes run beside them (`make bench`) the pods keep off those and
/// tolerate the real nodes' taint.
pub fn spread_over_nodes(name: &str) -> String {
    let keep_off_kwok = "      affinity: {nodeAffinity: {requiredDuringSchedulingIgnoredDuringExecution: \
         {nodeSelectorTerms: [{matchExpressions: [{key: type, operator: NotIn, values: [kwok]}]}]}}}\n";
    let tolerate =
        "      tolerations: [{key: baton.dev/real-node, operator: Exists, effect: NoSchedule}]\n";
    format!(
        "{keep_off_kwok}{tolerate}      topologySpreadConstraints:\n      - {{maxSkew: 1, topologyKey: kubernetes.io/hostname, \
         whenUnsatisfiable: DoNotSchedule, \
         labelSelector: {{matchLabels: {{app: {name}}}}}}}\n"
    )
}

/// A PodDisruptionBudget that keeps one pod of the group `name` available:
/// evictions (a drain) take one pod at a time.
pub fn pod_disruption_budget(name: &str) -> String {
    format!(
        r#"apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {name}
spec:
  minAvailable: 1
  selector:
    matchLabels: {{app: {name}}}
"#
    )
}

/// [`statefulset`] with `pod_spec` (YAML lines at the pod spec's indent)
/// added to the pod template's spec, e.g. [`ON_REAL_NODE`].
pub fn statefulset_placed(
    name: &str,
    replicas: u32,
    sidecar: bool,
    env: &[(&str, &str)],
    pod_spec: &str,
) -> String {
    let extra: String = env
        .iter()
        .map(|(k, v)| format!("        - {{name: {k}, value: \"{v}\"}}\n"))
        .collect();
    let sidecar_spec = if sidecar {
        format!(
            r#"      initContainers:
      - name: baton-sidecar
        image: {SIDECAR_IMAGE}
        restartPolicy: Always
        volumeMounts: [{{name: {RUN_VOLUME}, mountPath: {RUN_DIR}}}]
        ports:
        - {{name: baton-status, containerPort: 9095}}
        - {{name: baton-proxy, containerPort: {PROXY_PORT}}}
        - {{name: baton-peer, containerPort: 9097}}
        livenessProbe: {{httpGet: {{path: /healthz, port: baton-status}}, periodSeconds: 10}}
        readinessProbe: {{httpGet: {{path: /readyz, port: baton-status}}, periodSeconds: 2}}
        env:
        - name: BATON_POD_NAME
          valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}
        - name: BATON_POD_NAMESPACE
          valueFrom: {{fieldRef: {{fieldPath: metadata.namespace}}}}
        - name: BATON_POD_IP
          valueFrom: {{fieldRef: {{fieldPath: status.podIP}}}}
        - {{name: BATON_LEASE_NAME, value: "{name}"}}
        - {{name: BATON_PROBE_HOST, value: "127.0.0.1"}}
        - {{name: BATON_PROBE_PORT, value: "8080"}}
        - {{name: BATON_STATUS_ADDR, value: "0.0.0.0:9095"}}
        - {{name: BATON_PROXY_ADDR, value: "0.0.0.0:{PROXY_PORT}"}}
        - {{name: BATON_PROXY_PEER_ADDR, value: "0.0.0.0:9097"}}
{extra}"#
        )
    } else {
        String::new()
    };
    let volumes = if sidecar {
        format!("      volumes: [{{name: {RUN_VOLUME}, emptyDir: {{}}}}]\n")
    } else {
        String::new()
    };
    // As the webhook injects it beside a native sidecar: the app waits in
    // its preStop hook until a deleted holder has drained (design rule 8).
    let pre_stop = if sidecar {
        "        lifecycle: {preStop: {httpGet: {path: /prestop, port: 9095}}}\n"
    } else {
        ""
    };
    format!(
        r#"apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: {name}
spec:
  replicas: {replicas}
  serviceName: {name}
  podManagementPolicy: Parallel
  selector:
    matchLabels: {{app: {name}}}
  template:
    metadata:
      # As the webhook admits them: passive until the sidecar decides.
      labels: {{app: {name}, baton.dev/group: {name}, role: passive}}
    spec:
      terminationGracePeriodSeconds: 5
{pod_spec}{sidecar_spec}      containers:
      - name: app
        image: {DEMO_APP_IMAGE}
        ports: [{{name: http, containerPort: 8080}}]
        env:
        - name: POD_NAME
          valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}
        - {{name: LISTEN_ADDR, value: "0.0.0.0:{APP_PORT}"}}
        - {{name: TCP_LISTEN_ADDR, value: "0.0.0.0:{LINES_PORT}"}}
        - {{name: H2C_LISTEN_ADDR, value: "0.0.0.0:{H2C_PORT}"}}
{pre_stop}{volumes}"#
    )
}

/// One member of the group `group` in a StatefulSet of its own: one pod,
/// `{group}-{member}-0`, whose sidecar runs `image` (an upgrade's group
/// runs sidecars of two builds at once: tests/tests/upgrade.rs). Its pods
/// carry `member: {member}` beside the group's labels, so that the
/// members' StatefulSets select only their own.
pub fn member_statefulset(group: &str, member: &str, image: &str, env: &[(&str, &str)]) -> String {
    let set = statefulset(group, 1, true, env);
    let edits = [
        (
            format!("metadata:\n  name: {group}\n"),
            format!("metadata:\n  name: {group}-{member}\n"),
        ),
        (
            format!("matchLabels: {{app: {group}}}"),
            format!("matchLabels: {{app: {group}, member: {member}}}"),
        ),
        (
            format!("labels: {{app: {group}, baton.dev/group: {group}, role: passive}}"),
            format!(
                "labels: {{app: {group}, baton.dev/group: {group}, role: passive, member: {member}}}"
            ),
        ),
        (
            format!("image: {SIDECAR_IMAGE}\n"),
            format!("image: {image}\n"),
        ),
    ];
    edits.iter().fold(set, |set, (from, to)| {
        assert_eq!(
            set.matches(from.as_str()).count(),
            1,
            "{from:?} once in\n{set}"
        );
        set.replace(from.as_str(), to)
    })
}

/// The user's Service: the app's pods that carry `role: active`.
pub fn active_service(name: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Service
metadata:
  name: {name}-active
spec:
  selector: {{app: {name}, role: active}}
  ports: [{{name: http, port: 80, targetPort: 8080}}]
"#
    )
}

/// The user's Service without a selector, for `baton.dev/service` (design
/// rule 9): the holder writes its one endpoint. Named as
/// [`active_service`], so that the same clients and watches serve both.
pub fn holder_endpoint_service(name: &str) -> String {
    active_service(name).replace(&format!("  selector: {{app: {name}, role: active}}\n"), "")
}

/// `statefulset` as the restricted Pod Security profile admits it: non-root,
/// the runtime's seccomp profile, no privilege escalation, no capability
/// (the sidecar and its proxy need none).
pub fn restricted(statefulset: &str) -> String {
    const LOCKED: &str =
        "        securityContext: {allowPrivilegeEscalation: false, capabilities: {drop: [ALL]}}\n";
    statefulset
        .replace(
            "    spec:\n      terminationGracePeriodSeconds",
            "    spec:\n      securityContext: {runAsNonRoot: true, runAsUser: 65532, runAsGroup: 65532, seccompProfile: {type: RuntimeDefault}}\n      terminationGracePeriodSeconds",
        )
        .replace(
            "      - name: baton-sidecar\n",
            &format!("      - name: baton-sidecar\n{LOCKED}"),
        )
        .replace("      - name: app\n", &format!("      - name: app\n{LOCKED}"))
}

/// How a Service through the sidecars' proxy finds the group's pods.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxiedService {
    /// Every pod of the group; the proxies pass connections to the holder.
    WholeGroup,
    /// The pods labelled `role: active` as well.
    RoleLabel,
    /// No selector: the holder writes its endpoint (`baton.dev/service`
    /// names [`proxied_service_name`]); the port is the proxy's by name.
    HolderEndpoint,
}

/// The name of [`proxied_service`]'s Service for the group `name`.
pub fn proxied_service_name(name: &str) -> String {
    format!("{name}-proxied")
}

/// A Service of the group's pods through the sidecar's proxy (its port
/// `baton-proxy`, 9096 by default): port 80 goes to whatever app port the
/// sidecars proxy.
pub fn proxied_service(name: &str, kind: ProxiedService) -> String {
    let (selector, target) = match kind {
        ProxiedService::WholeGroup => (
            format!("  selector: {{app: {name}}}\n"),
            PROXY_PORT.to_string(),
        ),
        ProxiedService::RoleLabel => (
            format!("  selector: {{app: {name}, role: active}}\n"),
            PROXY_PORT.to_string(),
        ),
        ProxiedService::HolderEndpoint => (String::new(), "baton-proxy".to_owned()),
    };
    let service = proxied_service_name(name);
    format!(
        r#"apiVersion: v1
kind: Service
metadata:
  name: {service}
spec:
{selector}  ports: [{{name: proxy, port: 80, targetPort: {target}}}]
"#
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_restricted_statefulset_locks_down_both_containers() {
        let yaml = super::restricted(&super::statefulset("web", 2, true, &[]));
        assert_eq!(
            yaml.matches("allowPrivilegeEscalation: false").count(),
            2,
            "{yaml}"
        );
        assert!(
            yaml.contains("seccompProfile: {type: RuntimeDefault}"),
            "{yaml}"
        );
    }

    #[test]
    fn a_member_statefulset_runs_its_own_sidecar_image_and_selects_its_own_pod() {
        let yaml = super::member_statefulset("web", "old", "sidecar:old", &[]);
        for want in [
            "  name: web-old\n",
            "matchLabels: {app: web, member: old}",
            "baton.dev/group: web, role: passive, member: old}",
            "image: sidecar:old\n",
            "BATON_LEASE_NAME, value: \"web\"",
        ] {
            assert!(yaml.contains(want), "{want:?} in\n{yaml}");
        }
        assert!(!yaml.contains(super::SIDECAR_IMAGE), "{yaml}");
    }

    #[test]
    fn the_holder_endpoint_service_is_the_active_one_without_its_selector() {
        let yaml = super::holder_endpoint_service("web");
        assert!(yaml.contains("name: web-active") && yaml.contains("targetPort: 8080"));
        assert!(!yaml.contains("selector"), "{yaml}");
    }
}

/// The sidecar that [`statefulset`] writes by hand, held to what the
/// webhook's injection code (`baton_webhook::inject::decide`) makes of the
/// same pod written without it: the tests that run without the webhook
/// must run the sidecar as users get it.
#[cfg(test)]
mod as_the_webhook_injects {
    use std::{collections::BTreeMap, fmt::Debug};

    use baton_webhook::{
        annotations::Resources,
        inject::{self, Decision, SERVICE_ACCOUNT_DIR, SIDECAR_NAME},
        owner::Owner,
        settings::DEFAULT_SIDECAR_IMAGE,
    };
    use k8s_openapi::{
        api::{
            apps::v1::StatefulSet,
            core::v1::{Container, HTTPGetAction, Pod, Probe, VolumeMount},
        },
        apimachinery::pkg::util::intstr::IntOrString,
    };

    /// What the ServiceAccount admission plugin mounts into every container
    /// of a pod, before the webhooks run.
    const TOKEN_MOUNT: &str = "kube-api-access-test";

    /// The pod template of [`super::statefulset`]'s `web`, as the API server
    /// admits it: the ServiceAccount plugin has mounted the pod's token into
    /// each container.
    fn admitted(sidecar: bool) -> Pod {
        let yaml = super::statefulset("web", 2, sidecar, &[]);
        let set: StatefulSet =
            serde_saphyr::from_str(&yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
        let template = set.spec.expect("a StatefulSet spec").template;
        let mut pod = Pod {
            metadata: template.metadata.unwrap_or_default(),
            spec: template.spec,
            status: None,
        };
        pod.metadata.name = Some("web-0".into());
        pod.metadata.namespace = Some("default".into());
        let spec = pod.spec.as_mut().expect("a pod spec");
        for c in spec
            .containers
            .iter_mut()
            .chain(spec.init_containers.iter_mut().flatten())
        {
            c.volume_mounts.get_or_insert_default().push(VolumeMount {
                name: TOKEN_MOUNT.into(),
                mount_path: SERVICE_ACCOUNT_DIR.into(),
                read_only: Some(true),
                ..Default::default()
            });
        }
        pod
    }

    /// The same pod without the hand-written sidecar, through the webhook:
    /// opted in on its StatefulSet, with the webhook's default image and a
    /// native sidecar (its defaults).
    fn injected() -> Pod {
        let owner = Owner {
            kind: "StatefulSet".into(),
            api_version: "apps/v1".into(),
            name: "web".into(),
            namespace: "default".into(),
            uid: None,
            annotations: BTreeMap::from([("baton.dev/inject".into(), "true".into())]),
        };
        let config = inject::Config {
            image: DEFAULT_SIDECAR_IMAGE.into(),
            native: true,
            resources: Resources::default(),
        };
        match inject::decide(&admitted(false), Some(&owner), &config) {
            Decision::Inject(injection) => *injection.pod,
            other => panic!("the webhook did not inject the demo pod: {other:?}"),
        }
    }

    fn sidecar(pod: &Pod) -> &Container {
        pod.spec
            .iter()
            .flat_map(|s| s.init_containers.iter().flatten())
            .find(|c| c.name == SIDECAR_NAME)
            .unwrap_or_else(|| panic!("no native sidecar {SIDECAR_NAME}: {pod:?}"))
    }

    fn app(pod: &Pod) -> &Container {
        pod.spec
            .iter()
            .flat_map(|s| s.containers.iter())
            .find(|c| c.name == "app")
            .expect("the app container")
    }

    /// Env by name: its value, or the field it is read from.
    fn env(c: &Container) -> BTreeMap<String, String> {
        c.env
            .iter()
            .flatten()
            .map(|e| {
                let from = e.value_from.as_ref().and_then(|f| f.field_ref.as_ref());
                let value = match (&e.value, from) {
                    (Some(v), _) => v.clone(),
                    (None, Some(f)) => format!("fieldRef {}", f.field_path),
                    (None, None) => String::new(),
                };
                (e.name.clone(), value)
            })
            .collect()
    }

    fn ports(c: &Container) -> Vec<(Option<String>, i32)> {
        let mut ports: Vec<_> = c
            .ports
            .iter()
            .flatten()
            .map(|p| (p.name.clone(), p.container_port))
            .collect();
        ports.sort();
        ports
    }

    /// Mounts by path, leaving out the tests' own: the emptyDir at
    /// [`super::RUN_DIR`], for the role file some tests ask for (the webhook
    /// sets none: not settable by annotation).
    fn mounts(c: &Container) -> BTreeMap<String, (String, Option<bool>)> {
        c.volume_mounts
            .iter()
            .flatten()
            .filter(|m| m.mount_path != super::RUN_DIR)
            .map(|m| (m.mount_path.clone(), (m.name.clone(), m.read_only)))
            .collect()
    }

    /// An HTTP GET's path and port.
    type Get = (Option<String>, IntOrString);

    fn http_get(get: Option<&HTTPGetAction>) -> Option<Get> {
        get.map(|g| (g.path.clone(), g.port.clone()))
    }

    /// A probe's path, port and period.
    fn probe(p: &Option<Probe>) -> Option<(Option<Get>, Option<i32>)> {
        p.as_ref()
            .map(|p| (http_get(p.http_get.as_ref()), p.period_seconds))
    }

    /// Notes `field` in `drift` unless both sides agree on it.
    fn agree<T: PartialEq + Debug>(drift: &mut Vec<String>, field: &str, hand: T, webhook: T) {
        if hand != webhook {
            drift.push(format!(
                "{field}:\n  workload.rs writes   {hand:?}\n  the webhook injects {webhook:?}"
            ));
        }
    }

    #[test]
    fn the_hand_written_sidecar_is_the_one_the_webhook_injects() {
        let (hand_pod, webhook_pod) = (admitted(true), injected());
        let (hand, webhook) = (sidecar(&hand_pod), sidecar(&webhook_pod));
        let mut drift = Vec::new();
        agree(&mut drift, "name", &hand.name, &webhook.name);
        agree(&mut drift, "image", &hand.image, &webhook.image);
        agree(
            &mut drift,
            "restartPolicy",
            &hand.restart_policy,
            &webhook.restart_policy,
        );
        agree(
            &mut drift,
            "ports (name, number)",
            ports(hand),
            ports(webhook),
        );
        let (hand_env, webhook_env) = (env(hand), env(webhook));
        agree(
            &mut drift,
            "env names",
            hand_env.keys().collect::<Vec<_>>(),
            webhook_env.keys().collect(),
        );
        for (name, value) in &hand_env {
            if let Some(injected) = webhook_env.get(name) {
                agree(&mut drift, &format!("env {name}"), value, injected);
            }
        }
        agree(
            &mut drift,
            "volumeMounts (path: name, readOnly)",
            mounts(hand),
            mounts(webhook),
        );
        agree(
            &mut drift,
            "livenessProbe (path, port; period)",
            probe(&hand.liveness_probe),
            probe(&webhook.liveness_probe),
        );
        agree(
            &mut drift,
            "readinessProbe (path, port; period)",
            probe(&hand.readiness_probe),
            probe(&webhook.readiness_probe),
        );
        agree(
            &mut drift,
            "startupProbe (path, port; period)",
            probe(&hand.startup_probe),
            probe(&webhook.startup_probe),
        );
        let pre_stop = |c: &Container| {
            let hook = c.lifecycle.as_ref().and_then(|l| l.pre_stop.as_ref());
            http_get(hook.and_then(|h| h.http_get.as_ref()))
        };
        agree(
            &mut drift,
            "the app's preStop hook (path, port)",
            pre_stop(app(&hand_pod)),
            pre_stop(app(&webhook_pod)),
        );
        agree(
            &mut drift,
            "the pod's labels",
            &hand_pod.metadata.labels,
            &webhook_pod.metadata.labels,
        );
        assert!(
            drift.is_empty(),
            "workload::statefulset's sidecar has drifted from the webhook's \
             (webhook/src/inject.rs):\n{}",
            drift.join("\n")
        );
    }
}
