//! Helpers for tests of the webhook as users install it (tests/src/install.rs
//! installs it): waiting until the API server calls it, reading what it
//! injected, and the certificates it serves and is given.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::Arc,
    time::Duration,
};

use k8s_openapi::api::core::v1::{Container, Pod};
use kube::{Api, api::PostParams};
use serde_json::json;

use crate::harness::TestNamespace;

/// Image the webhook injects: the one `make image` built and the node imported.
pub use crate::workload::SIDECAR_IMAGE;

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

/// The certificate (DER) a TLS server at `addr` presents, checked against
/// `roots` (PEM) for `name` (a DNS name or an IP address): a pod's, say,
/// behind its Service's name.
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

/// A CA and a serving certificate for 127.0.0.1 and the installed webhook's
/// Service (`baton-webhook.baton-system.svc`) made with `openssl` in `dir`:
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
        "subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:baton-webhook.baton-system.svc\nextendedKeyUsage=serverAuth\nkeyUsage=critical,digitalSignature\nbasicConstraints=CA:FALSE\n",
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

/// Standard base64 with padding (the caBundle's encoding), from the
/// `base64` crate the webhook uses for its patches.
pub fn base64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}
