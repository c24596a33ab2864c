//! Whether and how a pod gets the sidecar: a pure function from the pod, its
//! owner and the webhook's settings to a [`Decision`].

use std::collections::BTreeMap;

use k8s_openapi::{
    api::core::v1::{
        Capabilities, ConfigMapProjection, Container, ContainerPort, DownwardAPIProjection,
        DownwardAPIVolumeFile, EnvVar, EnvVarSource, HTTPGetAction, KeyToPath, LifecycleHandler,
        ObjectFieldSelector, Pod, PodSpec, Probe, ProjectedVolumeSource, ResourceRequirements,
        SeccompProfile, SecurityContext, ServiceAccountTokenProjection, Volume, VolumeMount,
        VolumeProjection,
    },
    apimachinery::pkg::{api::resource::Quantity, util::intstr::IntOrString},
};

use baton_sidecar::contract::env;

use crate::{
    annotations::{self, Denial, OptIn, Plan, Resources, Sources},
    owner::Owner,
    settings::Settings,
};

/// The sidecar's endpoint for the app containers' preStop hook.
pub const PRESTOP_PATH: &str = "/prestop";

/// Name of the injected container; its presence marks a pod as injected.
pub const SIDECAR_NAME: &str = "baton-sidecar";
/// Records what was injected (JSON: webhook version, image, native, lease).
pub const INJECTED: &str = "baton.dev/injected";
/// Name of the sidecar's container port (the status server).
pub const STATUS_PORT_NAME: &str = "baton-status";
/// Name of the proxy's front port, the one a Service targets.
pub const PROXY_PORT_NAME: &str = "baton-proxy";
/// Name of the proxy's peer port, reached by the other pods of the group.
pub const PEER_PORT_NAME: &str = "baton-peer";
/// The projected API credentials of the sidecar when the pod's own are not mounted.
pub const TOKEN_VOLUME: &str = "baton-api-token";
/// Where clients (kube's in-cluster config among them) look for API credentials.
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// The user and group of the sidecar's image (`USER 65532:65532`).
const NONROOT_UID: i64 = 65532;
const NONROOT_GID: i64 = 65532;
const TOKEN_EXPIRATION_SECONDS: i64 = 3607;

/// What the webhook was started with; annotations may override `native` and `resources`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub image: String,
    pub native: bool,
    pub resources: Resources,
}

impl From<&Settings> for Config {
    fn from(s: &Settings) -> Self {
        Self {
            image: s.sidecar_image.clone(),
            native: s.native_sidecar,
            resources: Resources {
                cpu_request: Some(s.sidecar_cpu_request.clone()),
                memory_request: Some(s.sidecar_memory_request.clone()),
                cpu_limit: s.sidecar_cpu_limit.clone(),
                memory_limit: Some(s.sidecar_memory_limit.clone()),
            },
        }
    }
}

/// Why a pod is left as it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// `baton.dev/inject: "false"` on the pod.
    OptedOut,
    /// No `baton.dev/inject: "true"` on the pod or its owner.
    NotOptedIn,
    /// The pod shares the node's network: its loopback is not its own.
    HostNetwork,
    /// The sidecar is already there (a container named `baton-sidecar` and
    /// our `baton.dev/injected` annotation).
    AlreadyInjected,
}

impl Skip {
    pub fn reason(self) -> &'static str {
        match self {
            Skip::OptedOut => "opted out (baton.dev/inject: \"false\" on the pod)",
            Skip::NotOptedIn => "not opted in",
            Skip::HostNetwork => "hostNetwork pods are not injected",
            Skip::AlreadyInjected => "already injected",
        }
    }

    /// Whether the pod asked for injection (and so deserves an Event saying why not).
    pub fn opted_in(self) -> bool {
        matches!(self, Skip::HostNetwork | Skip::AlreadyInjected)
    }
}

/// A pod with the sidecar, and what went in.
#[derive(Debug, Clone, PartialEq)]
pub struct Injection {
    pub pod: Box<Pod>,
    pub lease: String,
    pub native: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    Inject(Injection),
    Skip(Skip),
    Deny(Denial),
}

/// Decides for one pod: opted in, injectable, valid settings, then the mutated pod.
pub fn decide(pod: &Pod, owner: Option<&Owner>, config: &Config) -> Decision {
    match annotations::opt_in(&Sources::new(pod, owner)) {
        Err(denial) => return Decision::Deny(denial),
        Ok(OptIn::OptedOut) => return Decision::Skip(Skip::OptedOut),
        Ok(OptIn::NotAsked) => return Decision::Skip(Skip::NotOptedIn),
        Ok(OptIn::In) => {}
    }
    match precheck(pod) {
        Err(denial) => return Decision::Deny(denial),
        Ok(Some(skip)) => return Decision::Skip(skip),
        Ok(None) => {}
    }
    match annotations::plan(pod, owner, config.native, &config.resources) {
        Err(denial) => Decision::Deny(denial),
        Ok(plan) => Decision::Inject(Injection {
            pod: Box::new(mutate(pod, &plan, &config.image)),
            lease: plan.lease,
            native: plan.native,
        }),
    }
}

/// The skips that depend on the pod alone; a container of ours without our
/// annotation is someone else's, and denied.
pub fn precheck(pod: &Pod) -> Result<Option<Skip>, Denial> {
    let Some(spec) = pod.spec.as_ref() else {
        return Ok(None);
    };
    if is_injected(spec) {
        let ours = pod
            .metadata
            .annotations
            .as_ref()
            .is_some_and(|a| a.contains_key(INJECTED));
        return if ours {
            Ok(Some(Skip::AlreadyInjected))
        } else {
            Err(Denial::ForeignSidecar {
                name: SIDECAR_NAME.to_owned(),
            })
        };
    }
    Ok((spec.host_network == Some(true)).then_some(Skip::HostNetwork))
}

fn is_injected(spec: &PodSpec) -> bool {
    spec.containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .any(|c| c.name == SIDECAR_NAME)
}

fn mutate(pod: &Pod, plan: &Plan, image: &str) -> Pod {
    let mut pod = pod.clone();
    let labels = pod.metadata.labels.get_or_insert_default();
    labels.insert(plan.sidecar.labels.group_label.clone(), plan.lease.clone());
    // Passive until the sidecar decides: a new pod is never selected by accident.
    labels.insert(
        plan.sidecar.labels.role_label.clone(),
        plan.sidecar.labels.passive_value.clone(),
    );
    pod.metadata.annotations.get_or_insert_default().insert(
        INJECTED.to_owned(),
        serde_json::json!({
            "version": env!("CARGO_PKG_VERSION"),
            "image": image,
            "native": plan.native,
            "lease": plan.lease,
        })
        .to_string(),
    );

    let spec = pod.spec.get_or_insert_default();
    let mut sidecar = container(plan, image);
    sidecar.volume_mounts = Some(vec![api_credentials(spec)]);
    if plan.native {
        sidecar.restart_policy = Some("Always".to_owned());
        spec.init_containers
            .get_or_insert_default()
            .insert(0, sidecar);
        hold_apps_until_drained(spec, plan.sidecar.status_addr.port());
    } else {
        spec.containers.push(sidecar);
    }
    pod
}

/// A preStop hook on each app container that has none: kubelet runs it
/// before it sends the app SIGTERM, and the sidecar answers it once a
/// deleted active pod has drained (`docs/design.md`, rule 8), so the app
/// serves until clients are routed to the new active pod. A preStop the
/// user wrote is left as it is. Only with the native sidecar: a regular
/// sidecar container gets its SIGTERM as the deletion starts and hands over
/// at once.
fn hold_apps_until_drained(spec: &mut PodSpec, status_port: u16) {
    for app in spec.containers.iter_mut() {
        let lifecycle = app.lifecycle.get_or_insert_default();
        if lifecycle.pre_stop.is_none() {
            lifecycle.pre_stop = Some(LifecycleHandler {
                http_get: Some(HTTPGetAction {
                    path: Some(PRESTOP_PATH.to_owned()),
                    port: IntOrString::Int(i32::from(status_port)),
                    ..Default::default()
                }),
                ..Default::default()
            });
        }
    }
}

/// The sidecar's mount of API credentials: the pod's own token mount when an app
/// container has one, else a projected token only the sidecar sees (the
/// ServiceAccount admission plugin runs before webhooks and never mounts into
/// containers added later; with `automountServiceAccountToken: false` the app
/// never sees credentials at all).
fn api_credentials(spec: &mut PodSpec) -> VolumeMount {
    let existing = (spec.automount_service_account_token != Some(false))
        .then(|| {
            spec.containers
                .iter()
                .chain(spec.init_containers.iter().flatten())
                .flat_map(|c| c.volume_mounts.iter().flatten())
                .find(|m| m.mount_path.trim_end_matches('/') == SERVICE_ACCOUNT_DIR)
        })
        .flatten();
    if let Some(mount) = existing {
        return VolumeMount {
            name: mount.name.clone(),
            mount_path: SERVICE_ACCOUNT_DIR.to_owned(),
            read_only: Some(true),
            ..Default::default()
        };
    }
    spec.volumes.get_or_insert_default().push(token_volume());
    VolumeMount {
        name: TOKEN_VOLUME.to_owned(),
        mount_path: SERVICE_ACCOUNT_DIR.to_owned(),
        read_only: Some(true),
        ..Default::default()
    }
}

fn token_volume() -> Volume {
    Volume {
        name: TOKEN_VOLUME.to_owned(),
        projected: Some(ProjectedVolumeSource {
            default_mode: Some(0o644),
            sources: Some(vec![
                VolumeProjection {
                    service_account_token: Some(ServiceAccountTokenProjection {
                        path: "token".to_owned(),
                        expiration_seconds: Some(TOKEN_EXPIRATION_SECONDS),
                        audience: None,
                    }),
                    ..Default::default()
                },
                VolumeProjection {
                    config_map: Some(ConfigMapProjection {
                        name: "kube-root-ca.crt".to_owned(),
                        items: Some(vec![KeyToPath {
                            key: "ca.crt".to_owned(),
                            path: "ca.crt".to_owned(),
                            mode: None,
                        }]),
                        optional: None,
                    }),
                    ..Default::default()
                },
                VolumeProjection {
                    downward_api: Some(DownwardAPIProjection {
                        items: Some(vec![DownwardAPIVolumeFile {
                            path: "namespace".to_owned(),
                            field_ref: Some(field("metadata.namespace")),
                            ..Default::default()
                        }]),
                    }),
                    ..Default::default()
                },
            ]),
        }),
        ..Default::default()
    }
}

fn field(path: &str) -> ObjectFieldSelector {
    ObjectFieldSelector {
        api_version: Some("v1".to_owned()),
        field_path: path.to_owned(),
    }
}

fn env_from_field(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value_from: Some(EnvVarSource {
            field_ref: Some(field(path)),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn env_value(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: Some(value.into()),
        ..Default::default()
    }
}

fn http_probe(path: &str, period_seconds: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::String(STATUS_PORT_NAME.to_owned()),
            ..Default::default()
        }),
        period_seconds: Some(period_seconds),
        ..Default::default()
    }
}

fn quantities(pairs: [(&str, &Option<String>); 2]) -> Option<BTreeMap<String, Quantity>> {
    let map: BTreeMap<String, Quantity> = pairs
        .into_iter()
        .filter_map(|(name, q)| Some((name.to_owned(), Quantity(q.clone()?))))
        .collect();
    (!map.is_empty()).then_some(map)
}

fn container(plan: &Plan, image: &str) -> Container {
    let s = &plan.sidecar;
    let mut env = vec![
        env_from_field(env::POD_NAME, "metadata.name"),
        env_from_field(env::POD_NAMESPACE, "metadata.namespace"),
        env_from_field(env::POD_IP, "status.podIP"),
        env_value(env::LEASE_NAME, plan.lease.clone()),
        // Explicit, not the sidecar's defaults: the end-to-end harness runs
        // "pods" as local processes and rewrites these addresses to the pod IP.
        env_value(env::PROBE_HOST, s.probe_host.clone()),
        env_value(env::STATUS_ADDR, s.status_addr.to_string()),
    ];
    let port = |name: &str, port: u16| ContainerPort {
        name: Some(name.to_owned()),
        container_port: i32::from(port),
        protocol: Some("TCP".to_owned()),
        ..Default::default()
    };
    let mut ports = vec![port(STATUS_PORT_NAME, s.status_addr.port())];
    if s.proxy {
        env.push(env_value(env::PROXY_ADDR, s.proxy_addr.to_string()));
        env.push(env_value(
            env::PROXY_PEER_ADDR,
            s.proxy_peer_addr.to_string(),
        ));
        ports.push(port(PROXY_PORT_NAME, s.proxy_addr.port()));
        ports.push(port(PEER_PORT_NAME, s.proxy_peer_addr.port()));
    }
    env.extend(
        plan.env
            .iter()
            .map(|(name, value)| env_value(name, value.clone())),
    );
    let r = &plan.resources;
    Container {
        name: SIDECAR_NAME.to_owned(),
        image: Some(image.to_owned()),
        env: Some(env),
        ports: Some(ports),
        liveness_probe: Some(http_probe("/healthz", 10)),
        readiness_probe: Some(http_probe("/readyz", 2)),
        resources: Some(ResourceRequirements {
            requests: quantities([("cpu", &r.cpu_request), ("memory", &r.memory_request)]),
            limits: quantities([("cpu", &r.cpu_limit), ("memory", &r.memory_limit)]),
            ..Default::default()
        }),
        security_context: Some(SecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(NONROOT_UID),
            // Set with the user: on an image without /etc/passwd the
            // runtime would otherwise run the sidecar with group 0.
            run_as_group: Some(NONROOT_GID),
            read_only_root_filesystem: Some(true),
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".to_owned()]),
                add: None,
            }),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".to_owned(),
                localhost_profile: None,
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{Annotated, PodExt, owner, pod};
    use k8s_openapi::api::core::v1::VolumeMount;

    fn config() -> Config {
        Config {
            image: "baton-sidecar:test".into(),
            native: true,
            resources: Resources {
                cpu_request: Some("10m".into()),
                memory_request: Some("16Mi".into()),
                cpu_limit: None,
                memory_limit: Some("64Mi".into()),
            },
        }
    }

    fn opted_in() -> Pod {
        pod()
            .annotated("baton.dev/inject", "true")
            .owned_by("StatefulSet", "web")
    }

    fn inject(pod: &Pod, owner: Option<&Owner>) -> Injection {
        match decide(pod, owner, &config()) {
            Decision::Inject(injection) => injection,
            other => panic!("expected injection, got {other:?}"),
        }
    }

    fn sidecar(pod: &Pod) -> &Container {
        let spec = pod.spec.as_ref().expect("spec");
        spec.init_containers
            .iter()
            .flatten()
            .chain(spec.containers.iter())
            .find(|c| c.name == SIDECAR_NAME)
            .expect("sidecar present")
    }

    fn env_of(c: &Container) -> Vec<(String, Option<String>)> {
        c.env
            .iter()
            .flatten()
            .map(|e| (e.name.clone(), e.value.clone()))
            .collect()
    }

    #[test]
    fn pod_without_annotation_is_skipped_as_not_opted_in() {
        let d = decide(&pod(), Some(&owner("StatefulSet", "web")), &config());
        assert_eq!(d, Decision::Skip(Skip::NotOptedIn));
        assert!(!Skip::NotOptedIn.opted_in());
    }

    #[test]
    fn pod_opt_out_is_skipped_even_when_owner_opts_in() {
        let p = pod().annotated("baton.dev/inject", "false");
        let o = owner("StatefulSet", "web").annotated("baton.dev/inject", "true");
        assert_eq!(
            decide(&p, Some(&o), &config()),
            Decision::Skip(Skip::OptedOut)
        );
    }

    #[test]
    fn owner_opt_in_injects_a_pod_without_annotations() {
        let o = owner("StatefulSet", "web").annotated("baton.dev/inject", "true");
        let injection = inject(&pod(), Some(&o));
        assert_eq!(injection.lease, "web");
    }

    #[test]
    fn invalid_inject_value_denies() {
        let p = pod().annotated("baton.dev/inject", "on");
        assert!(matches!(
            decide(&p, None, &config()),
            Decision::Deny(Denial::InvalidAnnotation { .. })
        ));
    }

    #[test]
    fn host_network_pod_is_skipped() {
        let p = opted_in().host_network();
        let d = decide(&p, Some(&owner("StatefulSet", "web")), &config());
        assert_eq!(d, Decision::Skip(Skip::HostNetwork));
        assert!(Skip::HostNetwork.opted_in());
    }

    #[test]
    fn reinjection_changes_nothing() {
        let o = owner("StatefulSet", "web");
        let once = inject(&opted_in(), Some(&o));
        let again = decide(&once.pod, Some(&o), &config());
        assert_eq!(again, Decision::Skip(Skip::AlreadyInjected));
        assert_eq!(Skip::AlreadyInjected.reason(), "already injected");
    }

    #[test]
    fn a_container_of_the_users_own_named_like_the_sidecar_is_denied_naming_it() {
        let mut p = opted_in();
        p.spec_mut().containers.push(Container {
            name: SIDECAR_NAME.into(),
            ..Default::default()
        });
        let d = decide(&p, Some(&owner("StatefulSet", "web")), &config());
        let Decision::Deny(denial) = d else {
            panic!("denied, not {d:?}")
        };
        let msg = denial.to_string();
        assert!(
            msg.contains("\"baton-sidecar\"") && msg.contains("baton.dev/injected"),
            "{msg}"
        );
    }

    #[test]
    fn regular_sidecar_container_counts_as_injected() {
        let o = owner("StatefulSet", "web");
        let p = opted_in().annotated("baton.dev/native-sidecar", "false");
        let once = inject(&p, Some(&o));
        assert_eq!(
            decide(&once.pod, Some(&o), &config()),
            Decision::Skip(Skip::AlreadyInjected)
        );
    }

    #[test]
    fn native_sidecar_is_the_first_init_container_with_restart_always() {
        let mut p = opted_in();
        p.spec_mut().init_containers = Some(vec![Container {
            name: "migrate".into(),
            ..Default::default()
        }]);
        let out = inject(&p, Some(&owner("StatefulSet", "web"))).pod;
        let spec = out.spec.as_ref().expect("spec");
        let inits = spec.init_containers.as_ref().expect("init containers");
        assert_eq!(inits[0].name, SIDECAR_NAME);
        assert_eq!(inits[0].restart_policy.as_deref(), Some("Always"));
        assert_eq!(inits[1].name, "migrate");
        assert_eq!(spec.containers.len(), 1);
    }

    #[test]
    fn app_containers_wait_for_the_drain_in_a_prestop_hook_unless_they_have_their_own() {
        use k8s_openapi::api::core::v1::Lifecycle;
        let mut p = opted_in();
        let spec = p.spec_mut();
        spec.containers.push(Container {
            name: "own-hook".into(),
            lifecycle: Some(Lifecycle {
                pre_stop: Some(LifecycleHandler {
                    sleep: Some(k8s_openapi::api::core::v1::SleepAction { seconds: 7 }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
        let out = inject(&p, Some(&owner("StatefulSet", "web"))).pod;
        let spec = out.spec.as_ref().expect("spec");
        let hook = |name: &str| {
            let c = spec.containers.iter().find(|c| c.name == name).expect(name);
            c.lifecycle.as_ref().and_then(|l| l.pre_stop.clone())
        };
        let ours = hook("app")
            .and_then(|h| h.http_get)
            .expect("an httpGet preStop");
        assert_eq!(ours.path.as_deref(), Some("/prestop"));
        assert_eq!(ours.port, IntOrString::Int(9095));
        assert_eq!(
            hook("own-hook").and_then(|h| h.sleep).map(|s| s.seconds),
            Some(7),
            "the user's hook is kept"
        );
        let sidecar = &spec.init_containers.as_ref().expect("inits")[0];
        assert!(sidecar.lifecycle.is_none(), "the sidecar itself gets none");

        // A regular sidecar container stops with the app: no hook.
        let spec = inject_regular().pod.spec.expect("spec");
        assert!(spec.containers.iter().all(|c| c.lifecycle.is_none()));
    }

    /// An opted-in pod of StatefulSet `web`, injected with the native
    /// sidecar off.
    fn inject_regular() -> Injection {
        let mut cfg = config();
        cfg.native = false;
        let Decision::Inject(injection) =
            decide(&opted_in(), Some(&owner("StatefulSet", "web")), &cfg)
        else {
            panic!("expected injection");
        };
        injection
    }

    #[test]
    fn regular_sidecar_is_appended_to_containers_when_native_is_off() {
        let injection = inject_regular();
        let spec = injection.pod.spec.as_ref().expect("spec");
        assert_eq!(
            spec.containers.last().map(|c| c.name.as_str()),
            Some(SIDECAR_NAME)
        );
        assert_eq!(
            spec.containers
                .last()
                .and_then(|c| c.restart_policy.clone()),
            None
        );
        assert!(spec.init_containers.is_none());
        assert!(!injection.native);
    }

    #[test]
    fn sidecar_env_has_identity_lease_and_explicit_addresses_then_annotations_sorted() {
        let p = opted_in()
            .with_port(8080)
            .annotated("baton.dev/probe-path", "/ready");
        let out = inject(&p, Some(&owner("StatefulSet", "web"))).pod;
        let c = sidecar(&out);
        let env = env_of(c);
        let names: Vec<&str> = env.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "BATON_POD_NAME",
                "BATON_POD_NAMESPACE",
                "BATON_POD_IP",
                "BATON_LEASE_NAME",
                "BATON_PROBE_HOST",
                "BATON_STATUS_ADDR",
                "BATON_PROXY_ADDR",
                "BATON_PROXY_PEER_ADDR",
                "BATON_PROBE_PATH",
                "BATON_PROBE_PORT",
            ]
        );
        assert_eq!(env[3].1.as_deref(), Some("web"));
        assert_eq!(env[4].1.as_deref(), Some("127.0.0.1"));
        assert_eq!(env[5].1.as_deref(), Some("0.0.0.0:9095"));
        assert_eq!(env[6].1.as_deref(), Some("0.0.0.0:9096"));
        assert_eq!(env[7].1.as_deref(), Some("0.0.0.0:9097"));
        assert_eq!(env[9].1.as_deref(), Some("8080"));
        let field_of = |i: usize| {
            c.env.as_ref().expect("env")[i]
                .value_from
                .as_ref()
                .and_then(|v| v.field_ref.as_ref())
                .map(|f| f.field_path.clone())
        };
        assert_eq!(field_of(0).as_deref(), Some("metadata.name"));
        assert_eq!(field_of(1).as_deref(), Some("metadata.namespace"));
        assert_eq!(field_of(2).as_deref(), Some("status.podIP"));
    }

    #[test]
    fn sidecar_is_locked_down_and_probed_on_its_status_port() {
        let out = inject(&opted_in(), Some(&owner("StatefulSet", "web"))).pod;
        let c = sidecar(&out);
        assert_eq!(c.image.as_deref(), Some("baton-sidecar:test"));
        let sc = c.security_context.as_ref().expect("security context");
        assert_eq!(sc.run_as_non_root, Some(true));
        assert_eq!(sc.run_as_user, Some(65532));
        assert_eq!(sc.run_as_group, Some(65532), "not root's group 0");
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(
            sc.capabilities.as_ref().and_then(|c| c.drop.clone()),
            Some(vec!["ALL".to_owned()])
        );
        assert_eq!(
            sc.seccomp_profile.as_ref().map(|p| p.type_.as_str()),
            Some("RuntimeDefault")
        );
        let ports: Vec<_> = c
            .ports
            .iter()
            .flatten()
            .map(|p| (p.name.as_deref(), p.container_port))
            .collect();
        assert_eq!(
            ports,
            [
                (Some("baton-status"), 9095),
                (Some("baton-proxy"), 9096),
                (Some("baton-peer"), 9097)
            ],
            "the proxy is on by default"
        );
        let path = |p: &Option<Probe>| {
            p.as_ref()
                .and_then(|p| p.http_get.as_ref())
                .and_then(|h| h.path.clone())
        };
        assert_eq!(path(&c.liveness_probe).as_deref(), Some("/healthz"));
        assert_eq!(path(&c.readiness_probe).as_deref(), Some("/readyz"));
    }

    #[test]
    fn resources_default_from_settings_and_follow_annotations() {
        let out = inject(&opted_in(), Some(&owner("StatefulSet", "web"))).pod;
        let r = sidecar(&out).resources.clone().expect("resources");
        let get = |m: &Option<BTreeMap<String, Quantity>>, k: &str| {
            m.as_ref().and_then(|m| m.get(k)).map(|q| q.0.clone())
        };
        assert_eq!(get(&r.requests, "cpu").as_deref(), Some("10m"));
        assert_eq!(get(&r.requests, "memory").as_deref(), Some("16Mi"));
        assert_eq!(get(&r.limits, "memory").as_deref(), Some("64Mi"));
        assert_eq!(get(&r.limits, "cpu"), None);

        let p = opted_in().annotated("baton.dev/sidecar-cpu-limit", "200m");
        let out = inject(&p, Some(&owner("StatefulSet", "web"))).pod;
        let r = sidecar(&out).resources.clone().expect("resources");
        assert_eq!(get(&r.limits, "cpu").as_deref(), Some("200m"));
    }

    #[test]
    fn new_pod_is_labelled_passive_in_its_group() {
        let out = inject(&opted_in(), Some(&owner("StatefulSet", "web"))).pod;
        let labels = out.metadata.labels.expect("labels");
        assert_eq!(
            labels.get("baton.dev/group").map(String::as_str),
            Some("web")
        );
        assert_eq!(labels.get("role").map(String::as_str), Some("passive"));
        assert_eq!(labels.get("app").map(String::as_str), Some("web"));
    }

    #[test]
    fn custom_role_label_and_passive_value_are_used() {
        let p = opted_in()
            .annotated("baton.dev/role-label", "baton.dev/role")
            .annotated("baton.dev/passive-value", "standby");
        let out = inject(&p, Some(&owner("StatefulSet", "web"))).pod;
        let labels = out.metadata.labels.expect("labels");
        assert_eq!(
            labels.get("baton.dev/role").map(String::as_str),
            Some("standby")
        );
        assert_eq!(labels.get("role"), None);
    }

    #[test]
    fn injected_annotation_records_version_image_native_and_lease() {
        let p = opted_in().annotated("baton.dev/lease-name", "shop");
        let out = inject(&p, Some(&owner("StatefulSet", "web"))).pod;
        let raw = out
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(INJECTED))
            .expect("injected annotation");
        let v: serde_json::Value = serde_json::from_str(raw).expect("json");
        assert_eq!(
            v,
            serde_json::json!({
                "version": env!("CARGO_PKG_VERSION"),
                "image": "baton-sidecar:test",
                "native": true,
                "lease": "shop",
            })
        );
    }

    fn mounts(c: &Container) -> Vec<VolumeMount> {
        c.volume_mounts.clone().unwrap_or_default()
    }

    #[test]
    fn pod_without_token_gets_a_token_only_the_sidecar_sees() {
        let p = opted_in().without_token();
        let out = inject(&p, Some(&owner("StatefulSet", "web"))).pod;
        let spec = out.spec.as_ref().expect("spec");
        let volume = spec
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == TOKEN_VOLUME)
            .expect("token volume");
        let sources = volume
            .projected
            .as_ref()
            .and_then(|p| p.sources.clone())
            .expect("projected sources");
        let token = sources[0].service_account_token.as_ref().expect("token");
        assert_eq!(
            (token.path.as_str(), token.expiration_seconds),
            ("token", Some(3607))
        );
        assert_eq!(
            sources[1].config_map.as_ref().map(|c| c.name.as_str()),
            Some("kube-root-ca.crt")
        );
        assert!(sources[2].downward_api.is_some());

        let m = mounts(sidecar(&out));
        assert_eq!(m.len(), 1);
        assert_eq!(
            (m[0].name.as_str(), m[0].mount_path.as_str(), m[0].read_only),
            (TOKEN_VOLUME, SERVICE_ACCOUNT_DIR, Some(true))
        );
        assert!(
            mounts(&spec.containers[0]).is_empty(),
            "the app sees no credentials"
        );
    }

    #[test]
    fn sidecar_shares_the_pods_own_token_mount_when_there_is_one() {
        let mut p = opted_in();
        p.spec_mut().containers[0].volume_mounts = Some(vec![VolumeMount {
            name: "kube-api-access-abcde".into(),
            mount_path: SERVICE_ACCOUNT_DIR.into(),
            read_only: Some(true),
            ..Default::default()
        }]);
        let out = inject(&p, Some(&owner("StatefulSet", "web"))).pod;
        let m = mounts(sidecar(&out));
        assert_eq!(m[0].name, "kube-api-access-abcde");
        assert!(out.spec.as_ref().and_then(|s| s.volumes.as_ref()).is_none());
    }

    #[test]
    fn invalid_setting_denies_before_anything_is_injected() {
        let p = opted_in().annotated("baton.dev/probe-period", "fast");
        let Decision::Deny(denial) = decide(&p, Some(&owner("StatefulSet", "web")), &config())
        else {
            panic!("expected a denial");
        };
        assert!(
            denial
                .to_string()
                .contains("baton.dev/probe-period=\"fast\"")
        );
    }

    #[test]
    fn config_takes_defaults_from_settings() {
        use clap::Parser;
        let s =
            Settings::try_parse_from(["baton-webhook", "--sidecar-image=img:1"]).expect("parses");
        let c = Config::from(&s);
        assert_eq!(c.image, "img:1");
        assert!(c.native);
        assert_eq!(c.resources.memory_limit.as_deref(), Some("64Mi"));
    }
}
