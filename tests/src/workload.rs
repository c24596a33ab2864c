//! Workloads the tests create: the demo app in a StatefulSet, with the
//! sidecar written into the spec by hand as the webhook injects it, and the
//! user's Service that selects the app plus `role: active`. The images are
//! the ones `make image` built and the local node imported.

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
/// nodes, one per node while there are enough: a cordoned node does not
/// count (a drain then places the evicted pod beside the other).
pub fn spread_over_nodes(name: &str) -> String {
    format!(
        "      topologySpreadConstraints:\n      - {{maxSkew: 1, topologyKey: kubernetes.io/hostname, \
         whenUnsatisfiable: DoNotSchedule, nodeTaintsPolicy: Honor, \
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
    fn the_holder_endpoint_service_is_the_active_one_without_its_selector() {
        let yaml = super::holder_endpoint_service("web");
        assert!(yaml.contains("name: web-active") && yaml.contains("targetPort: 8080"));
        assert!(!yaml.contains("selector"), "{yaml}");
    }
}
