//! The HTTPS server's certificate: from mounted PEM files, re-read when they
//! change (Secret volumes swap a symlink), or self-signed for the given names.

use std::{
    fmt,
    fs::File,
    io::BufReader,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::SystemTime,
};

use baton_sidecar::telemetry::ErrorChain;
use rustls::{
    ServerConfig,
    crypto::CryptoProvider,
    pki_types::{
        CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer,
        pem::{self, PemObject as _},
    },
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};

/// ALPN: the server speaks HTTP/1.1 only.
const ALPN_HTTP1: &[u8] = b"http/1.1";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {path}", path = path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not valid PEM", path = path.display())]
    Pem {
        path: PathBuf,
        #[source]
        source: pem::Error,
    },
    #[error("{path} holds no PEM certificate", path = path.display())]
    NoCertificate { path: PathBuf },
    #[error("{path} holds no PEM private key", path = path.display())]
    NoKey { path: PathBuf },
    #[error("certificate {cert} and key {key} do not make a usable pair", cert = cert.display(), key = key.display())]
    Pair {
        cert: PathBuf,
        key: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("generating the self-signed certificate")]
    Generate(#[from] rcgen::Error),
    #[error("writing the CA certificate to {path}", path = path.display())]
    WriteCa {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("building the TLS configuration")]
    Config(#[source] rustls::Error),
}

/// The crypto provider of every TLS config here (ring, as the workspace chose).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn server_config(
    provider: Arc<CryptoProvider>,
    resolver: Arc<dyn ResolvesServerCert>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Config)?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![ALPN_HTTP1.to_vec()];
    Ok(Arc::new(config))
}

/// Serves the certificate of two PEM files, re-read when they change.
pub fn from_files(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = provider();
    let resolver = ReloadingCert::new(cert, key, provider.clone())?;
    server_config(provider, Arc::new(resolver))
}

/// Serves whatever `resolver` chooses (self-managed certificates).
pub fn from_resolver(resolver: Arc<dyn ResolvesServerCert>) -> Result<Arc<ServerConfig>, TlsError> {
    server_config(provider(), resolver)
}

/// A self-signed serving certificate and the CA that signed it.
pub struct SelfSigned {
    /// The CA certificate (PEM): what clients trust, e.g. a webhook's caBundle.
    pub ca_pem: String,
    pub key: Arc<CertifiedKey>,
}

/// Makes a CA and a serving certificate for `names` (DNS names or IP addresses).
pub fn self_signed(names: &[String]) -> Result<SelfSigned, TlsError> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "baton-webhook CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, ca_key);

    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(names.to_vec())?;
    params.distinguished_name.push(
        DnType::CommonName,
        names.first().map_or("baton-webhook", String::as_str),
    );
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let cert = params.signed_by(&key, &issuer)?;

    let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let certified = CertifiedKey::from_der(vec![cert.der().clone()], key_der, &provider())
        .map_err(TlsError::Config)?;
    Ok(SelfSigned {
        ca_pem: ca_cert.pem(),
        key: Arc::new(certified),
    })
}

/// Serves a self-signed certificate for `names`, writing its CA to `ca_out` if given.
pub fn from_self_signed(
    names: &[String],
    ca_out: Option<&Path>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let SelfSigned { ca_pem, key } = self_signed(names)?;
    if let Some(path) = ca_out {
        baton_sidecar::rolefile::write_atomically(path, ca_pem.as_bytes()).map_err(|source| {
            TlsError::WriteCa {
                path: path.to_owned(),
                source,
            }
        })?;
    }
    server_config(provider(), Arc::new(Fixed(key)))
}

/// One certificate for every handshake.
#[derive(Debug)]
struct Fixed(Arc<CertifiedKey>);

impl ResolvesServerCert for Fixed {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// What identifies a file's content without reading it: where its symlinks
/// lead, when it was written and how long it is.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    target: PathBuf,
    modified: Option<SystemTime>,
    len: u64,
}

impl Stamp {
    fn of(path: &Path) -> std::io::Result<Self> {
        let target = std::fs::canonicalize(path)?;
        let meta = std::fs::metadata(&target)?;
        Ok(Self {
            target,
            modified: meta.modified().ok(),
            len: meta.len(),
        })
    }
}

struct Loaded {
    stamps: (Stamp, Stamp),
    key: Arc<CertifiedKey>,
}

/// Re-reads the certificate and key when either file changes, checked on each
/// handshake; a pair that does not load (a rotation half done) keeps the last good one.
pub struct ReloadingCert {
    cert_path: PathBuf,
    key_path: PathBuf,
    provider: Arc<CryptoProvider>,
    loaded: Mutex<Loaded>,
}

impl fmt::Debug for ReloadingCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReloadingCert")
            .field("cert_path", &self.cert_path)
            .field("key_path", &self.key_path)
            .finish_non_exhaustive()
    }
}

impl ReloadingCert {
    /// Loads the pair at once: a webhook that starts without a usable certificate fails.
    pub fn new(
        cert_path: &Path,
        key_path: &Path,
        provider: Arc<CryptoProvider>,
    ) -> Result<Self, TlsError> {
        let stamps = stamps(cert_path, key_path)?;
        let key = Arc::new(load_pair(cert_path, key_path, &provider)?);
        Ok(Self {
            cert_path: cert_path.to_owned(),
            key_path: key_path.to_owned(),
            provider,
            loaded: Mutex::new(Loaded { stamps, key }),
        })
    }

    /// The certificate to serve now, re-read first if the files changed.
    pub fn current(&self) -> Arc<CertifiedKey> {
        let mut loaded = match self.loaded.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        let Ok(now) = stamps(&self.cert_path, &self.key_path) else {
            return loaded.key.clone(); // mid-swap: a file is missing for a moment
        };
        if now != loaded.stamps {
            match load_pair(&self.cert_path, &self.key_path, &self.provider) {
                Ok(key) => {
                    tracing::info!(cert = %self.cert_path.display(), "serving certificate reloaded");
                    loaded.key = Arc::new(key);
                }
                Err(error) => {
                    tracing::warn!(error = %ErrorChain(&error), "new certificate does not load; serving the previous one");
                }
            }
            // Remember the stamps either way: a bad pair is not re-read on every handshake.
            loaded.stamps = now;
        }
        loaded.key.clone()
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

fn stamps(cert: &Path, key: &Path) -> Result<(Stamp, Stamp), TlsError> {
    let stamp = |path: &Path| {
        Stamp::of(path).map_err(|source| TlsError::Read {
            path: path.to_owned(),
            source,
        })
    };
    Ok((stamp(cert)?, stamp(key)?))
}

fn open(path: &Path) -> Result<BufReader<File>, TlsError> {
    File::open(path)
        .map(BufReader::new)
        .map_err(|source| TlsError::Read {
            path: path.to_owned(),
            source,
        })
}

fn load_pair(
    cert_path: &Path,
    key_path: &Path,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, TlsError> {
    let pem_err = |path: &Path| {
        let path = path.to_owned();
        move |source| match source {
            pem::Error::Io(source) => TlsError::Read { path, source },
            source => TlsError::Pem { path, source },
        }
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_reader_iter(open(cert_path)?)
        .collect::<Result<_, _>>()
        .map_err(pem_err(cert_path))?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: cert_path.to_owned(),
        });
    }
    let key = match PrivateKeyDer::from_pem_reader(open(key_path)?) {
        Ok(key) => key,
        Err(pem::Error::NoItemsFound) => {
            return Err(TlsError::NoKey {
                path: key_path.to_owned(),
            });
        }
        Err(e) => return Err(pem_err(key_path)(e)),
    };
    CertifiedKey::from_der(chain, key, provider).map_err(|source| TlsError::Pair {
        cert: cert_path.to_owned(),
        key: key_path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> Self {
            let dir = std::env::temp_dir().join(format!(
                "baton-webhook-{name}-{}-{}",
                std::process::id(),
                fastrand::u64(..)
            ));
            std::fs::create_dir_all(&dir).expect("temp dir");
            Self(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// A self-signed cert for `name`: (cert PEM, key PEM, cert DER).
    fn generated(name: &str) -> (String, String, Vec<u8>) {
        let rcgen::CertifiedKey { cert, signing_key } =
            rcgen::generate_simple_self_signed(vec![name.to_owned()]).expect("generates");
        (cert.pem(), signing_key.serialize_pem(), cert.der().to_vec())
    }

    fn write_pair(dir: &Path, pair: &(String, String, Vec<u8>)) {
        std::fs::create_dir_all(dir).expect("dir");
        std::fs::write(dir.join("tls.crt"), &pair.0).expect("cert");
        std::fs::write(dir.join("tls.key"), &pair.1).expect("key");
    }

    fn served(resolver: &ReloadingCert) -> Vec<u8> {
        resolver.current().cert[0].to_vec()
    }

    /// Points `link` at `target` atomically, as the kubelet does with `..data`.
    fn swap_symlink(target: &Path, link: &Path) {
        let tmp = link.with_file_name("..data_tmp");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(target, &tmp).expect("symlink");
        std::fs::rename(&tmp, link).expect("rename");
    }

    #[test]
    fn secret_volume_symlink_swap_is_picked_up_on_the_next_handshake() {
        let dir = TempDir::new("swap");
        let (a, b) = (generated("a.test"), generated("b.test"));
        write_pair(&dir.0.join("v1"), &a);
        write_pair(&dir.0.join("v2"), &b);
        let data = dir.0.join("..data");
        swap_symlink(&dir.0.join("v1"), &data);
        let (cert, key) = (data.join("tls.crt"), data.join("tls.key"));

        let resolver = ReloadingCert::new(&cert, &key, provider()).expect("loads");
        assert_eq!(served(&resolver), a.2);
        assert_eq!(
            served(&resolver),
            a.2,
            "unchanged files are not re-read into something else"
        );

        swap_symlink(&dir.0.join("v2"), &data);
        assert_eq!(served(&resolver), b.2);
    }

    #[test]
    fn rewritten_files_are_picked_up() {
        let dir = TempDir::new("rewrite");
        let (a, b) = (generated("a.test"), generated("b.test"));
        write_pair(&dir.0, &a);
        let (cert, key) = (dir.0.join("tls.crt"), dir.0.join("tls.key"));
        let resolver = ReloadingCert::new(&cert, &key, provider()).expect("loads");
        assert_eq!(served(&resolver), a.2);

        write_pair(&dir.0, &b);
        // Same length is possible, so make sure the time differs as well.
        let later = SystemTime::now() + std::time::Duration::from_secs(5);
        for path in [&cert, &key] {
            File::options()
                .write(true)
                .open(path)
                .and_then(|f| f.set_modified(later))
                .expect("touch");
        }
        assert_eq!(served(&resolver), b.2);
    }

    #[test]
    fn broken_or_mismatched_new_files_keep_the_last_good_certificate() {
        let dir = TempDir::new("broken");
        let (a, b) = (generated("a.test"), generated("b.test"));
        write_pair(&dir.0, &a);
        let (cert, key) = (dir.0.join("tls.crt"), dir.0.join("tls.key"));
        let resolver = ReloadingCert::new(&cert, &key, provider()).expect("loads");

        // Half a rotation: the new certificate with the old key.
        std::fs::write(&cert, &b.0).expect("cert");
        assert_eq!(served(&resolver), a.2);
        // Garbage, then a missing file: still the last good pair.
        std::fs::write(&cert, "not a pem").expect("cert");
        assert_eq!(served(&resolver), a.2);
        std::fs::remove_file(&key).expect("rm");
        assert_eq!(served(&resolver), a.2);
        // The rotation completes.
        std::fs::write(&cert, &b.0).expect("cert");
        std::fs::write(&key, &b.1).expect("key");
        assert_eq!(served(&resolver), b.2);
    }

    #[test]
    fn unusable_files_fail_at_start_naming_the_file() {
        let dir = TempDir::new("start");
        let (cert, key) = (dir.0.join("tls.crt"), dir.0.join("tls.key"));
        let err = ReloadingCert::new(&cert, &key, provider()).expect_err("missing");
        assert!(err.to_string().contains("tls.crt"), "{err}");
        std::fs::write(&cert, "").expect("cert");
        std::fs::write(&key, "").expect("key");
        let err = ReloadingCert::new(&cert, &key, provider()).expect_err("empty");
        assert!(matches!(err, TlsError::NoCertificate { .. }), "{err}");
    }

    #[test]
    fn self_signed_writes_the_ca_that_verifies_the_serving_cert() {
        let dir = TempDir::new("selfsigned");
        let ca_out = dir.0.join("ca.crt");
        let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
        from_self_signed(&names, Some(&ca_out)).expect("builds");
        let ca_pem = std::fs::read(&ca_out).expect("CA written");
        let ca: Vec<_> = CertificateDer::pem_slice_iter(&ca_pem)
            .collect::<Result<_, _>>()
            .expect("CA is PEM");
        assert_eq!(ca.len(), 1);

        use rustls::client::danger::ServerCertVerifier as _;
        let signed = self_signed(&names).expect("generates");
        let mut roots = rustls::RootCertStore::empty();
        for der in CertificateDer::pem_slice_iter(signed.ca_pem.as_bytes()) {
            roots.add(der.expect("pem")).expect("adds");
        }
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            provider(),
        )
        .build()
        .expect("verifier");
        for name in ["localhost", "127.0.0.1"] {
            let server_name = rustls::pki_types::ServerName::try_from(name).expect("server name");
            verifier
                .verify_server_cert(
                    &signed.key.cert[0],
                    &[],
                    &server_name,
                    &[],
                    rustls::pki_types::UnixTime::now(),
                )
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }
}
