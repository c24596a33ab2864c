//! How the runner turns a container spec into a local process: the env as
//! kubelet would resolve it, with the pod's network namespace emulated.
//!
//! Pods here share the host's loopback, each with its own 127.x pod IP. A
//! process in a real pod that binds `0.0.0.0` or dials `127.0.0.1` reaches
//! its own pod; here it must use the pod IP instead, so the runner rewrites
//! wildcard and loopback hosts in env values to the pod IP. Nothing else in
//! the spec changes.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, EnvVar, Pod};

/// What a fieldRef of the downward API resolves to, or None if unsupported.
pub fn field_ref(pod: &Pod, path: &str) -> Option<String> {
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref();
    let status = pod.status.as_ref();
    let label = |map: &Option<BTreeMap<String, String>>, prefix: &str| {
        let key = path.strip_prefix(prefix)?.strip_suffix("']")?;
        map.as_ref()?.get(key).cloned()
    };
    match path {
        "metadata.name" => meta.name.clone(),
        "metadata.namespace" => meta.namespace.clone(),
        "metadata.uid" => meta.uid.clone(),
        "spec.nodeName" => spec?.node_name.clone(),
        "spec.serviceAccountName" => spec?.service_account_name.clone(),
        "status.podIP" => status?.pod_ip.clone(),
        "status.hostIP" => status?.host_ip.clone(),
        p if p.starts_with("metadata.labels['") => label(&meta.labels, "metadata.labels['"),
        p if p.starts_with("metadata.annotations['") => {
            label(&meta.annotations, "metadata.annotations['")
        }
        _ => None,
    }
}

/// Expands `$(NAME)` references to earlier variables, as kubelet does;
/// `$$(NAME)` escapes, unknown references stay as written.
pub fn expand(value: &str, env: &[(String, String)]) -> String {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(escaped) = after.strip_prefix("$(") {
            out.push_str("$(");
            rest = escaped;
        } else if let Some(body) = after.strip_prefix('(')
            && let Some(end) = body.find(')')
        {
            let name = &body[..end];
            match env.iter().rev().find(|(k, _)| k == name) {
                Some((_, v)) => out.push_str(v),
                None => out.push_str(&rest[i..i + 2 + end + 1]),
            }
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// Rewrites a wildcard or loopback host (alone or as `host:port`) to the pod IP.
pub fn localize(value: &str, pod_ip: &str) -> String {
    const LOCAL: [&str; 4] = ["0.0.0.0", "127.0.0.1", "localhost", "::"];
    if LOCAL.contains(&value) {
        return pod_ip.to_owned();
    }
    if let Some((host, port)) = value.rsplit_once(':')
        && LOCAL.contains(&host.trim_start_matches('[').trim_end_matches(']'))
        && !port.is_empty()
        && port.chars().all(|c| c.is_ascii_digit())
    {
        return format!("{pod_ip}:{port}");
    }
    value.to_owned()
}

/// The resolved env of a container; names of variables that could not be
/// resolved (secrets, config maps, resource fields) come back separately.
pub fn container_env(pod: &Pod, container: &Container) -> (Vec<(String, String)>, Vec<String>) {
    let pod_ip = pod
        .status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .unwrap_or_default();
    let mut env: Vec<(String, String)> = Vec::new();
    let mut unresolved = Vec::new();
    for EnvVar {
        name,
        value,
        value_from,
    } in container.env.iter().flatten()
    {
        let resolved = match (value, value_from) {
            (Some(v), _) => Some(expand(v, &env)),
            (None, Some(from)) => from
                .field_ref
                .as_ref()
                .and_then(|f| field_ref(pod, &f.field_path)),
            (None, None) => Some(String::new()),
        };
        match resolved {
            Some(v) => env.push((name.clone(), localize(&v, &pod_ip))),
            None => unresolved.push(name.clone()),
        }
    }
    (env, unresolved)
}

/// The local binary for a container image: the last path segment of the
/// image's repository, if it is one of ours.
pub fn binary_for_image<'a>(image: &str, ours: &'a [&'a str]) -> Option<&'a str> {
    let without_digest = image.split('@').next().unwrap_or(image);
    let repo = match without_digest.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => repo,
        _ => without_digest,
    };
    let name = repo.rsplit('/').next().unwrap_or(repo);
    ours.iter().copied().find(|b| *b == name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{EnvVarSource, ObjectFieldSelector, PodStatus};

    fn pod() -> Pod {
        let mut pod = Pod::default();
        pod.metadata.name = Some("web-0".into());
        pod.metadata.namespace = Some("shop".into());
        pod.metadata.labels = Some([("app".to_string(), "web".to_string())].into());
        pod.status = Some(PodStatus {
            pod_ip: Some("127.64.0.7".into()),
            ..Default::default()
        });
        pod
    }

    fn from_field(name: &str, path: &str) -> EnvVar {
        EnvVar {
            name: name.into(),
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    field_path: path.into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn plain(name: &str, value: &str) -> EnvVar {
        EnvVar {
            name: name.into(),
            value: Some(value.into()),
            ..Default::default()
        }
    }

    #[test]
    fn downward_api_and_references_resolve_like_kubelet() {
        let container = Container {
            env: Some(vec![
                from_field("POD_NAME", "metadata.name"),
                from_field("APP", "metadata.labels['app']"),
                plain(
                    "GREETING",
                    "$(POD_NAME) of $(APP), $$(POD_NAME), $(MISSING)",
                ),
                from_field("SECRET", "spec.unknownField"),
            ]),
            ..Default::default()
        };
        let (env, unresolved) = container_env(&pod(), &container);
        assert_eq!(env[0], ("POD_NAME".into(), "web-0".into()));
        assert_eq!(env[1], ("APP".into(), "web".into()));
        assert_eq!(
            env[2].1, "web-0 of web, $(POD_NAME), $(MISSING)",
            "expansion, escape, unknown"
        );
        assert_eq!(unresolved, vec!["SECRET".to_string()]);
    }

    #[test]
    fn loopback_and_wildcard_hosts_become_the_pod_ip() {
        let ip = "127.64.0.7";
        assert_eq!(localize("0.0.0.0:9095", ip), "127.64.0.7:9095");
        assert_eq!(localize("127.0.0.1", ip), ip);
        assert_eq!(localize("localhost:8080", ip), "127.64.0.7:8080");
        assert_eq!(localize("[::]:80", ip), "127.64.0.7:80");
        assert_eq!(localize("10.0.0.1:80", ip), "10.0.0.1:80");
        assert_eq!(localize("/healthz", ip), "/healthz");
        assert_eq!(localize("localhost:http", ip), "localhost:http");
    }

    #[test]
    fn images_map_to_our_binaries_by_repository_name() {
        let ours = ["baton-sidecar", "baton-demo-app"];
        assert_eq!(
            binary_for_image("ghcr.io/baton-dev/baton-sidecar:0.1.0", &ours),
            Some("baton-sidecar")
        );
        assert_eq!(
            binary_for_image("localhost:5000/baton-demo-app", &ours),
            Some("baton-demo-app")
        );
        assert_eq!(
            binary_for_image("baton-sidecar@sha256:abc", &ours),
            Some("baton-sidecar")
        );
        assert_eq!(binary_for_image("nginx:1.27", &ours), None);
    }
}
