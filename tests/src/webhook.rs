//! The webhook as a local process beside the control plane, registered for
//! one test namespace with the webhook configurations that ship in
//! `manifests/webhook`: only their names (the configuration's, and each
//! webhook's prefixed with the namespace), `clientConfig` and
//! `namespaceSelector` change, so the rules, `matchConditions`,
//! `failurePolicy`, `sideEffects` and timeouts under test are the shipped ones.
//!
//! The process runs as a ServiceAccount of the test namespace bound to
//! copies of the roles that ship with the install of its certificate mode,
//! so a permission missing from `manifests/webhook` fails the tests (an
//! in-cluster install runs with exactly those roles).

use std::{
    io::Write as _,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Arc,
    time::Duration,
};

use k8s_openapi::api::core::v1::{Container, Pod};
use kube::{Api, api::PostParams};
use serde_json::{Value, json};

use crate::harness::{Cluster, TestNamespace, http, repo_root};

/// Image the webhook injects: the one `make image` built and the node imported.
pub use crate::workload::SIDECAR_IMAGE;
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Where the webhook's serving certificate comes from.
pub enum Tls {
    /// `--ca-out-file`: the webhook makes its own CA and certificate for 127.0.0.1.
    SelfSigned,
    /// `--tls-cert-file/--tls-key-file`, with the CA that signed them.
    Files {
        cert: PathBuf,
        key: PathBuf,
        ca_pem: Vec<u8>,
    },
}

/// The API server picks webhook configurations (and their caBundle) up
/// asynchronously, with no object to watch: dry-run an opted-in pod in `ns`
/// until it comes back injected. Err: what the last try got.
pub async fn dry_run_until_injected(ns: &TestNamespace, timeout: Duration) -> Result<(), String> {
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "webhook-probe", "annotations": {
            "baton.dev/inject": "true", "baton.dev/lease-name": "webhook-probe"}},
        "spec": {"containers": [{"name": "app", "image": crate::workload::DEMO_APP_IMAGE}]}
    }))
    .expect("a pod");
    let api: Api<Pod> = ns.api();
    let params = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let last = match api.create(&params, &pod).await {
            Ok(p) if sidecars(&p) == 1 => return Ok(()),
            Ok(_) => "created without the sidecar".to_owned(),
            Err(e) => e.to_string(),
        };
        if tokio::time::Instant::now() >= deadline {
            return Err(last);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The Secret of self-managed certificates.
pub const CERT_SECRET: &str = "baton-webhook-tls";

/// A running `baton-webhook` and the webhook configurations that send it
/// this namespace's requests; both go away on drop.
pub struct LocalWebhook {
    child: Child,
    pub https_addr: SocketAddr,
    pub http_addr: SocketAddr,
    /// The CA the configurations trust now (empty when self-managed).
    pub ca_pem: Vec<u8>,
    /// Name of both webhook configurations: `baton-<namespace>`.
    pub config_name: String,
    pub log: PathBuf,
    namespace: String,
    cluster: Cluster,
    scratch: PathBuf,
    /// The per-test copies of the shipped roles and their bindings, as (kind, name).
    grants: Vec<(String, String)>,
}

impl LocalWebhook {
    /// Starts a webhook with a self-signed certificate and registers it.
    pub async fn start(ns: &TestNamespace) -> LocalWebhook {
        Self::start_with(ns, Tls::SelfSigned).await
    }

    /// Starts the webhook, registers it for `ns` and waits until the API server calls it.
    pub async fn start_with(ns: &TestNamespace, tls: Tls) -> LocalWebhook {
        let scratch = ns.cluster.dir.join("webhook").join(&ns.name);
        std::fs::create_dir_all(&scratch).expect("the webhook's scratch directory");
        let config_name = format!("baton-{}", ns.name);
        // Exactly the permissions of the install with certificates from files.
        let grants = grant(ns, "manifests/webhook/base", &config_name);
        let kubeconfig = webhook_kubeconfig(ns, &scratch);
        let log = ns
            .cluster
            .dir
            .join("logs")
            .join(format!("webhook-{}.log", ns.name));
        let ca_file = scratch.join("ca.pem");
        let mut args = vec![
            "--listen-addr=127.0.0.1:0".to_owned(),
            "--http-addr=127.0.0.1:0".to_owned(),
            "--log-format=json".to_owned(),
            format!("--sidecar-image={SIDECAR_IMAGE}"),
            format!("--pod-name=webhook-{}", ns.name),
        ];
        match &tls {
            Tls::SelfSigned => {
                args.push("--tls-san=127.0.0.1,localhost".to_owned());
                args.push(format!("--ca-out-file={}", ca_file.display()));
            }
            Tls::Files { cert, key, .. } => {
                args.push(format!("--tls-cert-file={}", cert.display()));
                args.push(format!("--tls-key-file={}", key.display()));
            }
        }
        let (child, https_addr, http_addr) = spawn(&kubeconfig, &args, &log).await;
        let ca_pem = match tls {
            Tls::SelfSigned => std::fs::read(&ca_file).expect("the webhook wrote its CA"),
            Tls::Files { ca_pem, .. } => ca_pem,
        };
        let webhook = LocalWebhook {
            child,
            https_addr,
            http_addr,
            ca_pem,
            config_name,
            log,
            namespace: ns.name.clone(),
            cluster: ns.cluster.clone(),
            scratch,
            grants,
        };
        let ca = (!webhook.ca_pem.is_empty()).then_some(webhook.ca_pem.as_slice());
        webhook.register(ca);
        webhook.wait_until_injecting(ns).await;
        webhook
    }

    /// Creates or updates both configurations for this namespace, trusting
    /// `ca_pem` (`None`: no caBundle, the webhook sets it).
    pub fn register(&self, ca_pem: Option<&[u8]>) {
        let url = format!("https://{}", self.https_addr);
        let configs = configurations_for(
            &self.cluster,
            &self.config_name,
            &self.namespace,
            &url,
            ca_pem,
        );
        let list = json!({"apiVersion": "v1", "kind": "List", "items": configs});
        let out = self
            .cluster
            .kubectl(&["apply", "-f", "-"], Some(&list.to_string()));
        assert!(
            out.status.success(),
            "registering the webhook: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Waits until the API server calls this webhook for `ns`'s pods.
    pub async fn wait_until_injecting(&self, ns: &TestNamespace) {
        if let Err(last) = dry_run_until_injected(ns, START_TIMEOUT).await {
            panic!(
                "the API server never called the webhook at {} within {START_TIMEOUT:?}; last: {last}\n{}",
                self.https_addr,
                self.log_tail()
            );
        }
    }

    /// The webhook's own `/metrics` text.
    pub async fn metrics(&self) -> String {
        http()
            .get(format!("http://{}/metrics", self.http_addr))
            .send()
            .await
            .expect("the webhook's /metrics")
            .text()
            .await
            .expect("metrics text")
    }

    /// The process id: unchanged means not restarted.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process still runs.
    pub fn running(&mut self) -> bool {
        self.child
            .try_wait()
            .expect("the webhook's status")
            .is_none()
    }

    /// The last lines of the webhook's log, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for LocalWebhook {
    fn drop(&mut self) {
        // Configurations first: with failurePolicy Fail, a webhook that is
        // gone would block this namespace's pods until they are deleted.
        for kind in [
            "mutatingwebhookconfiguration",
            "validatingwebhookconfiguration",
        ] {
            let _ = self.cluster.kubectl(
                &["delete", kind, &self.config_name, "--ignore-not-found"],
                None,
            );
        }
        for (kind, name) in &self.grants {
            let _ = self.cluster.kubectl(
                &[
                    "delete",
                    kind,
                    name,
                    "--ignore-not-found",
                    "-n",
                    &self.namespace,
                ],
                None,
            );
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.scratch);
    }
}

fn bin_dir() -> PathBuf {
    std::env::var_os("BATON_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/debug"))
}

/// Starts `baton-webhook` with `args`, returning once it serves.
async fn spawn(kubeconfig: &Path, args: &[String], log: &Path) -> (Child, SocketAddr, SocketAddr) {
    let out = std::fs::File::create(log).expect("the webhook's log file");
    let child = Command::new(bin_dir().join("baton-webhook"))
        .env("KUBECONFIG", kubeconfig)
        .env("RUST_LOG", "info,baton_webhook=debug")
        .args(args)
        .stdout(out.try_clone().expect("log file"))
        .stderr(out)
        .spawn()
        .expect("starting target/debug/baton-webhook (cargo build --workspace --bins)");
    let mut child = Some(child);
    let (https, http) = wait_serving(log, &mut child).await;
    (child.take().expect("running"), https, http)
}

/// Waits for the webhook's "serving" log line and reads both addresses from it.
async fn wait_serving(log: &Path, child: &mut Option<Child>) -> (SocketAddr, SocketAddr) {
    let deadline = tokio::time::Instant::now() + START_TIMEOUT;
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let serving = text
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|v| v.pointer("/fields/message").and_then(Value::as_str) == Some("serving"));
        if let Some(v) = serving {
            let addr = |name: &str| -> SocketAddr {
                v.pointer(&format!("/fields/{name}"))
                    .and_then(Value::as_str)
                    .and_then(|s| s.parse().ok())
                    .unwrap_or_else(|| panic!("no {name} address in {v}"))
            };
            return (addr("https"), addr("http"));
        }
        let exited = child
            .as_mut()
            .and_then(|c| c.try_wait().expect("the webhook's status"));
        assert!(exited.is_none(), "baton-webhook exited at start: {text}");
        assert!(
            tokio::time::Instant::now() < deadline,
            "baton-webhook did not serve within {START_TIMEOUT:?}: {text}"
        );
        // A local process's log file: nothing to watch through the API.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Copies of the roles `install` ships (ClusterRoles and Roles), named and
/// bound for this test: the ServiceAccount `baton-webhook` of the test
/// namespace, the Secret in that namespace, the configurations named
/// `config_name`. Returns what to delete at the end, as (kind, name).
fn grant(ns: &TestNamespace, install: &str, config_name: &str) -> Vec<(String, String)> {
    let account = json!({
        "apiVersion": "v1", "kind": "ServiceAccount",
        "metadata": {"name": "baton-webhook", "namespace": ns.name},
    });
    ns.apply(&account.to_string());
    let subject =
        json!([{"kind": "ServiceAccount", "name": "baton-webhook", "namespace": ns.name}]);
    let mut grants = Vec::new();
    for mut role in shipped_from(&ns.cluster, install)
        .into_iter()
        .filter(|o| matches!(o["kind"].as_str(), Some("ClusterRole" | "Role")))
    {
        let kind = role["kind"].as_str().expect("a kind").to_owned();
        let name = format!(
            "{}-{}",
            ns.name,
            role["metadata"]["name"].as_str().expect("a name")
        );
        role["metadata"] = json!({"name": name, "namespace": ns.name});
        for rule in role["rules"].as_array_mut().into_iter().flatten() {
            for resource in rule["resourceNames"].as_array_mut().into_iter().flatten() {
                if resource == "baton-webhook" {
                    *resource = json!(config_name);
                }
            }
        }
        let binding_kind = if kind == "Role" {
            "RoleBinding"
        } else {
            "ClusterRoleBinding"
        };
        let binding = json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": binding_kind,
            "metadata": {"name": name, "namespace": ns.name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": name},
            "subjects": subject,
        });
        for object in [&role, &binding] {
            ns.apply(&object.to_string());
        }
        grants.push((binding_kind.to_owned(), name.clone()));
        grants.push((kind, name));
    }
    assert!(!grants.is_empty(), "{install} ships roles");
    grants
}

/// A kubeconfig for the ServiceAccount `baton-webhook` of the test namespace.
fn webhook_kubeconfig(ns: &TestNamespace, scratch: &Path) -> PathBuf {
    let token = token_for(ns, "baton-webhook");
    let server = ns.cluster.config.cluster_url.to_string();
    let ca = ns.cluster.dir.join("pki/ca.crt");
    let path = scratch.join("kubeconfig");
    let mut file = std::fs::File::create(&path).expect("kubeconfig file");
    write!(
        file,
        "apiVersion: v1\nkind: Config\nclusters:\n- name: local\n  cluster:\n    server: {server}\n    certificate-authority: {}\nusers:\n- name: baton-webhook\n  user:\n    token: {token}\ncontexts:\n- name: local\n  context: {{cluster: local, user: baton-webhook}}\ncurrent-context: local\n",
        ca.display()
    )
    .expect("writing the kubeconfig");
    path
}

/// A token of a ServiceAccount of the namespace (`kubectl create token`).
fn token_for(ns: &TestNamespace, account: &str) -> String {
    ns.kubectl_ok(&["create", "token", account, "--duration=1h"], None)
        .trim()
        .to_owned()
}

/// Every object `kubectl kustomize <dir>` builds, as JSON.
pub fn shipped_from(cluster: &Cluster, dir: &str) -> Vec<Value> {
    let path = repo_root().join(dir);
    let built = cluster.kubectl(&["kustomize", path.to_str().expect("utf-8 path")], None);
    assert!(
        built.status.success(),
        "kustomize {dir}: {}",
        String::from_utf8_lossy(&built.stderr)
    );
    let yaml = String::from_utf8_lossy(&built.stdout).into_owned();
    let json = cluster.kubectl(
        &["create", "--dry-run=client", "-o", "json", "-f", "-"],
        Some(&yaml),
    );
    assert!(
        json.status.success(),
        "converting {dir} to JSON: {}",
        String::from_utf8_lossy(&json.stderr)
    );
    // One JSON document per object, one after the other.
    serde_json::Deserializer::from_slice(&json.stdout)
        .into_iter::<Value>()
        .map(|v| v.expect("kubectl prints JSON"))
        .collect()
}

/// The shipped webhook configurations, pointed at `url` for `namespace` only.
pub fn configurations_for(
    cluster: &Cluster,
    name: &str,
    namespace: &str,
    url: &str,
    ca_pem: Option<&[u8]>,
) -> Vec<Value> {
    let mut configs: Vec<Value> = shipped_from(cluster, "manifests/webhook")
        .into_iter()
        .filter(|o| {
            matches!(
                o["kind"].as_str(),
                Some("MutatingWebhookConfiguration" | "ValidatingWebhookConfiguration")
            )
        })
        .collect();
    assert_eq!(
        configs.len(),
        2,
        "a mutating and a validating configuration"
    );
    for config in &mut configs {
        config["metadata"]["name"] = json!(name);
        for webhook in config["webhooks"]
            .as_array_mut()
            .expect("webhooks")
            .iter_mut()
        {
            let path = webhook["clientConfig"]["service"]["path"]
                .as_str()
                .expect("the shipped clientConfig names a path")
                .to_owned();
            // Unique per test: the API server's metrics are labelled by webhook name.
            let shipped = webhook["name"].as_str().expect("a webhook name").to_owned();
            webhook["name"] = json!(webhook_name(namespace, &shipped));
            webhook["clientConfig"] = match ca_pem {
                Some(ca) => json!({"url": format!("{url}{path}"), "caBundle": base64(ca)}),
                None => json!({"url": format!("{url}{path}")}),
            };
            webhook["namespaceSelector"] = json!({"matchExpressions": [{
                "key": "kubernetes.io/metadata.name", "operator": "In", "values": [namespace]}]});
        }
    }
    configs
}

/// The name a shipped webhook (`inject.baton.dev`) gets in a test namespace.
pub fn webhook_name(namespace: &str, shipped: &str) -> String {
    format!("{namespace}.{shipped}")
}

/// The containers named `baton-sidecar` in a pod.
pub fn sidecars(pod: &Pod) -> usize {
    all_containers(pod)
        .filter(|c| c.name == "baton-sidecar")
        .count()
}

/// Init containers, then containers.
pub fn all_containers(pod: &Pod) -> impl Iterator<Item = &Container> {
    pod.spec.iter().flat_map(|s| {
        s.init_containers
            .iter()
            .flatten()
            .chain(s.containers.iter())
    })
}

/// The certificate (DER) a TLS server presents, checked against `roots` (PEM).
pub fn served_certificate(addr: SocketAddr, roots_pem: &[&[u8]]) -> Vec<u8> {
    served_certificate_as(addr, &addr.ip().to_string(), roots_pem)
}

/// [`served_certificate`], the certificate checked for `name` (a DNS name
/// or an IP address) rather than the address dialled: a pod's, say, behind
/// its Service's name.
pub fn served_certificate_as(addr: SocketAddr, name: &str, roots_pem: &[&[u8]]) -> Vec<u8> {
    use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject as _};
    let mut roots = rustls::RootCertStore::empty();
    for pem in roots_pem {
        for der in CertificateDer::pem_slice_iter(pem) {
            roots.add(der.expect("a PEM certificate")).expect("a CA");
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = ServerName::try_from(name.to_owned()).expect("a server name");
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name).expect("a TLS client");
    let mut tcp = std::net::TcpStream::connect(addr).expect("connecting to the webhook");
    tcp.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp)
            .expect("a TLS handshake verified by the given CAs");
    }
    conn.peer_certificates()
        .and_then(|c| c.first())
        .expect("the server's certificate")
        .to_vec()
}

/// DER of the first certificate of a PEM text.
pub fn der_of(pem: &[u8]) -> Vec<u8> {
    use rustls::pki_types::{CertificateDer, pem::PemObject as _};
    CertificateDer::from_pem_slice(pem)
        .expect("a PEM certificate")
        .to_vec()
}

/// A CA and a serving certificate for 127.0.0.1 made with `openssl` in `dir`:
/// (CA PEM, cert path, key path).
pub fn openssl_pair(dir: &Path, name: &str) -> (Vec<u8>, PathBuf, PathBuf) {
    std::fs::create_dir_all(dir).expect("a directory for certificates");
    let p = |f: &str| dir.join(format!("{name}-{f}"));
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("running openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let s = |p: PathBuf| p.to_str().expect("utf-8 path").to_owned();
    let (ca_key, ca_crt, key, csr, crt, ext) = (
        s(p("ca.key")),
        s(p("ca.crt")),
        s(p("tls.key")),
        s(p("tls.csr")),
        s(p("tls.crt")),
        s(p("ext")),
    );
    run(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        &ca_key,
        "-out",
        &ca_crt,
        "-days",
        "1",
        "-subj",
        &format!("/CN={name} CA"),
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign",
    ]);
    run(&[
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        &key,
        "-out",
        &csr,
        "-subj",
        &format!("/CN={name}"),
    ]);
    std::fs::write(
        &ext,
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\nkeyUsage=critical,digitalSignature\nbasicConstraints=CA:FALSE\n",
    )
    .expect("extensions file");
    run(&[
        "x509",
        "-req",
        "-in",
        &csr,
        "-CA",
        &ca_crt,
        "-CAkey",
        &ca_key,
        "-CAcreateserial",
        "-out",
        &crt,
        "-days",
        "1",
        "-extfile",
        &ext,
    ]);
    (
        std::fs::read(&ca_crt).expect("the CA"),
        PathBuf::from(crt),
        PathBuf::from(key),
    )
}

/// Standard base64 with padding (the caBundle's encoding).
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_pads_like_the_api_server_expects() {
        assert_eq!(base64(b"a"), "YQ==");
        assert_eq!(base64(b"ab"), "YWI=");
        assert_eq!(base64(b"abc"), "YWJj");
        assert_eq!(base64(b""), "");
    }
}
