//! Self-managed certificates: a CA and a serving certificate made with
//! rcgen, kept in one Secret that every replica shares (created once, then
//! replaced only with the `resourceVersion` that was read, so two replicas
//! never each make their own), the CA published as the `caBundle` of the
//! webhook configurations, and both renewed before they expire.
//!
//! Renewal never breaks the API server's trust:
//! - a new serving certificate is signed by the CA already in the caBundle;
//! - a new CA first joins the caBundle beside the old one, and the serving
//!   certificate it signs is made only after an overlap, once the API server
//!   has had time to load the new caBundle.
//!
//! Deciding is pure ([`next_step`], [`issue`]); [`SelfManaged`] does the I/O.

use std::{
    collections::BTreeMap,
    pin::pin,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use baton_sidecar::telemetry::ErrorChain;
use futures::{Stream, StreamExt as _};
use k8s_openapi::{
    ByteString,
    api::{
        admissionregistration::v1::{
            MutatingWebhookConfiguration, ValidatingWebhookConfiguration, WebhookClientConfig,
        },
        core::v1::Secret,
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::{
    Api, Client,
    api::PostParams,
    runtime::{WatchStreamExt as _, watcher},
};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::{
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _},
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};
use tokio_util::sync::CancellationToken;

use crate::{settings::Settings, tls};

const TRUSTED: &str = "ca.crt";
const CA_KEY: &str = "ca.key";
const CERT: &str = "tls.crt";
const KEY: &str = "tls.key";
const CA_NAME: &str = "baton.dev/ca-name";
const CA_NOT_AFTER: &str = "baton.dev/ca-not-after";
const CA_SINCE: &str = "baton.dev/ca-since";
const CERT_NOT_AFTER: &str = "baton.dev/cert-not-after";
const CERT_CA: &str = "baton.dev/cert-ca";
const CERT_NAMES: &str = "baton.dev/cert-names";
/// Certificates start a little in the past: clocks of the API server and
/// the webhook differ.
const BACKDATE: Duration = Duration::from_secs(60);
/// The longest wait between two looks at the Secret.
const MAX_RECHECK: Duration = Duration::from_secs(3600);
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(30);
/// API calls one maintenance pass makes at most (the Secret read and
/// written, each configuration read and written): a pass gets this many
/// `--api-timeout`s.
const PASS_CALLS: u32 = 6;

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("generating a certificate")]
    Generate(#[from] rcgen::Error),
    #[error("loading the generated certificate")]
    Load(#[source] rustls::Error),
    #[error("the Secret's {0} is not a usable PEM")]
    Pem(&'static str),
    #[error("{action} Secret {namespace}/{name}")]
    Secret {
        action: &'static str,
        namespace: String,
        name: String,
        #[source]
        source: Box<kube::Error>,
    },
    #[error("{action} {kind} {name}")]
    Configuration {
        action: &'static str,
        kind: &'static str,
        name: String,
        #[source]
        source: Box<kube::Error>,
    },
    #[error("{kind} {name} does not exist (yet)")]
    NoConfiguration { kind: &'static str, name: String },
    #[error("another replica changed {what} first")]
    Conflict { what: String },
    #[error("no answer from the API server within {after:?}")]
    Timeout { after: Duration },
    #[error(
        "certificate lifetimes would renew forever: need --cert-renew-before < --cert-validity and --cert-validity + --cert-renew-before < --ca-validity"
    )]
    Lifetimes,
}

/// How certificates are made and when they are renewed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// DNS names or IP addresses of the serving certificate.
    pub names: Vec<String>,
    pub validity: Duration,
    pub renew_before: Duration,
    pub ca_validity: Duration,
}

impl Policy {
    pub fn from_settings(s: &Settings) -> Self {
        Self {
            names: s.tls_san.clone(),
            validity: s.cert_validity,
            renew_before: s.cert_renew_before,
            ca_validity: s.ca_validity,
        }
    }

    /// Lifetimes for which renewal settles: each certificate outlives its renewal window.
    pub fn check(&self) -> Result<(), CertError> {
        let settles = self.renew_before < self.validity
            && self.validity + self.renew_before < self.ca_validity;
        settles.then_some(()).ok_or(CertError::Lifetimes)
    }

    /// How long a new CA sits in the caBundle before it signs the serving certificate.
    pub fn overlap(&self) -> Duration {
        (self.renew_before / 2).min(Duration::from_secs(600))
    }
}

/// What the Secret holds, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bundle {
    /// Every CA clients should trust (the caBundle), newest first.
    pub trusted_pem: String,
    /// Key of the CA that signs new serving certificates.
    pub ca_key_pem: String,
    /// Common name of that CA (unique per CA).
    pub ca_name: String,
    pub ca_not_after: SystemTime,
    /// When that CA joined the caBundle.
    pub ca_since: SystemTime,
    pub cert_pem: String,
    pub key_pem: String,
    pub cert_not_after: SystemTime,
    /// Common name of the CA that signed the serving certificate.
    pub cert_ca: String,
    pub names: Vec<String>,
}

/// What to do with the Secret now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Nothing until then.
    Keep { recheck_at: SystemTime },
    /// No usable Secret: a new CA and serving certificate.
    Create,
    /// The CA expires too soon: a new one joins the caBundle.
    NewCa,
    /// A new serving certificate from the current CA.
    NewServing,
}

/// Decides from the Secret's content alone.
pub fn next_step(bundle: Option<&Bundle>, policy: &Policy, now: SystemTime) -> Step {
    let Some(b) = bundle else {
        return Step::Create;
    };
    // A CA must outlive every certificate it signs, with room to renew.
    let ca_renew_at = sub(b.ca_not_after, policy.validity + policy.renew_before);
    if now >= ca_renew_at {
        return Step::NewCa;
    }
    let cert_renew_at = sub(b.cert_not_after, policy.renew_before);
    if now >= cert_renew_at || b.names != policy.names {
        return Step::NewServing;
    }
    let mut recheck_at = cert_renew_at.min(ca_renew_at);
    if b.cert_ca != b.ca_name {
        let switch_at = b.ca_since + policy.overlap();
        if now >= switch_at {
            return Step::NewServing;
        }
        recheck_at = recheck_at.min(switch_at);
    }
    Step::Keep { recheck_at }
}

fn sub(t: SystemTime, d: Duration) -> SystemTime {
    t.checked_sub(d).unwrap_or(UNIX_EPOCH)
}

/// Makes what `step` asks for from the old bundle (`Keep` keeps it).
pub fn issue(
    step: &Step,
    old: Option<&Bundle>,
    policy: &Policy,
    now: SystemTime,
) -> Result<Bundle, CertError> {
    // Whole milliseconds: what the Secret's annotations keep.
    let now = UNIX_EPOCH + Duration::from_millis(since_epoch(now).as_millis() as u64);
    let bundle = match (step, old) {
        (Step::Keep { .. }, Some(old)) => old.clone(),
        (_, None) | (Step::Create, _) => {
            let ca = new_ca(policy, now)?;
            let mut b = serving(policy, now, &ca, ca.pem.clone())?;
            b.ca_since = now;
            b
        }
        (Step::NewCa, Some(old)) => {
            let ca = new_ca(policy, now)?;
            // The new CA first, then the one that signed the certificate
            // served now: both are trusted through the switch.
            let previous = first_pem(&old.trusted_pem).unwrap_or_default();
            Bundle {
                trusted_pem: format!("{}{}", ca.pem, previous),
                ca_key_pem: ca.key.serialize_pem(),
                ca_name: ca.name.clone(),
                ca_not_after: ca.not_after,
                ca_since: now,
                ..old.clone()
            }
        }
        (Step::NewServing, Some(old)) => {
            let ca = SigningCa::from_bundle(old)?;
            let mut b = serving(policy, now, &ca, old.trusted_pem.clone())?;
            b.ca_since = old.ca_since;
            b
        }
    };
    Ok(bundle)
}

/// The first PEM block of a text.
fn first_pem(text: &str) -> Option<String> {
    const END: &str = "-----END CERTIFICATE-----";
    let end = text.find(END)? + END.len();
    Some(format!("{}\n", &text[..end]))
}

struct SigningCa {
    name: String,
    key: KeyPair,
    pem: String,
    not_after: SystemTime,
}

impl SigningCa {
    fn params(name: &str) -> Result<CertificateParams, CertError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        Ok(params)
    }

    /// The signing CA of a bundle: its key, and its name for the issuer field.
    fn from_bundle(b: &Bundle) -> Result<Self, CertError> {
        Ok(Self {
            name: b.ca_name.clone(),
            key: KeyPair::from_pem(&b.ca_key_pem).map_err(|_| CertError::Pem(CA_KEY))?,
            pem: String::new(),
            not_after: b.ca_not_after,
        })
    }
}

fn since_epoch(t: SystemTime) -> Duration {
    t.duration_since(UNIX_EPOCH).unwrap_or_default()
}

fn new_ca(policy: &Policy, now: SystemTime) -> Result<SigningCa, CertError> {
    let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let name = format!(
        "baton-webhook CA {}.{:03}",
        since.as_secs(),
        since.subsec_millis()
    );
    let key = KeyPair::generate()?;
    let mut params = SigningCa::params(&name)?;
    params.not_before = rcgen::date_time_ymd(1970, 1, 1) + since_epoch(sub(now, BACKDATE));
    let not_after = now + policy.ca_validity;
    params.not_after = rcgen::date_time_ymd(1970, 1, 1) + since_epoch(not_after);
    let cert = params.self_signed(&key)?;
    Ok(SigningCa {
        name,
        key,
        pem: cert.pem(),
        not_after,
    })
}

fn serving(
    policy: &Policy,
    now: SystemTime,
    ca: &SigningCa,
    trusted_pem: String,
) -> Result<Bundle, CertError> {
    let issuer = Issuer::new(SigningCa::params(&ca.name)?, &ca.key);
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(policy.names.clone())?;
    params.distinguished_name.push(
        DnType::CommonName,
        policy.names.first().map_or("baton-webhook", String::as_str),
    );
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.not_before = rcgen::date_time_ymd(1970, 1, 1) + since_epoch(sub(now, BACKDATE));
    // Never beyond the CA.
    let not_after = (now + policy.validity).min(ca.not_after);
    params.not_after = rcgen::date_time_ymd(1970, 1, 1) + since_epoch(not_after);
    let cert = params.signed_by(&key, &issuer)?;
    Ok(Bundle {
        trusted_pem,
        ca_key_pem: ca.key.serialize_pem(),
        ca_name: ca.name.clone(),
        ca_not_after: ca.not_after,
        ca_since: now,
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        cert_not_after: not_after,
        cert_ca: ca.name.clone(),
        names: policy.names.clone(),
    })
}

fn time_text(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// Reads a bundle from a Secret; `None` when anything is missing or unreadable.
pub fn from_secret(secret: &Secret) -> Option<Bundle> {
    let data = secret.data.as_ref()?;
    let text = |key: &str| {
        data.get(key)
            .and_then(|b| String::from_utf8(b.0.clone()).ok())
    };
    let notes = secret.metadata.annotations.as_ref()?;
    let note = |key: &str| notes.get(key).cloned();
    let time = |key: &str| {
        notes
            .get(key)
            .and_then(|t| humantime::parse_rfc3339_weak(t).ok())
    };
    Some(Bundle {
        trusted_pem: text(TRUSTED)?,
        ca_key_pem: text(CA_KEY)?,
        ca_name: note(CA_NAME)?,
        ca_not_after: time(CA_NOT_AFTER)?,
        ca_since: time(CA_SINCE)?,
        cert_pem: text(CERT)?,
        key_pem: text(KEY)?,
        cert_not_after: time(CERT_NOT_AFTER)?,
        cert_ca: note(CERT_CA)?,
        names: note(CERT_NAMES)?
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
    })
}

/// Writes a bundle into a Secret's data and annotations (other fields kept).
pub fn into_secret(bundle: &Bundle, mut secret: Secret) -> Secret {
    let bytes = |s: &str| ByteString(s.as_bytes().to_vec());
    secret.type_ = Some("kubernetes.io/tls".to_owned());
    secret.data = Some(BTreeMap::from([
        (TRUSTED.to_owned(), bytes(&bundle.trusted_pem)),
        (CA_KEY.to_owned(), bytes(&bundle.ca_key_pem)),
        (CERT.to_owned(), bytes(&bundle.cert_pem)),
        (KEY.to_owned(), bytes(&bundle.key_pem)),
    ]));
    let notes = secret.metadata.annotations.get_or_insert_default();
    for (key, value) in [
        (CA_NAME, bundle.ca_name.clone()),
        (CA_NOT_AFTER, time_text(bundle.ca_not_after)),
        (CA_SINCE, time_text(bundle.ca_since)),
        (CERT_NOT_AFTER, time_text(bundle.cert_not_after)),
        (CERT_CA, bundle.cert_ca.clone()),
        (CERT_NAMES, bundle.names.join(",")),
    ] {
        notes.insert(key.to_owned(), value);
    }
    secret
}

/// The serving key of a bundle, for rustls.
pub fn certified_key(bundle: &Bundle) -> Result<CertifiedKey, CertError> {
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(bundle.cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|_| CertError::Pem(CERT))?;
    let key = PrivateKeyDer::from_pem_slice(bundle.key_pem.as_bytes())
        .map_err(|_| CertError::Pem(KEY))?;
    CertifiedKey::from_der(chain, key, &tls::provider()).map_err(CertError::Load)
}

mod maintain;

pub use maintain::{SelfManaged, Swappable};

#[cfg(test)]
mod tests {
    use rustls::{
        client::{WebPkiServerVerifier, danger::ServerCertVerifier as _},
        pki_types::{ServerName, UnixTime},
    };

    use base64::Engine as _;
    use baton_sidecar::testing::ScriptedApi;

    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    fn policy() -> Policy {
        Policy {
            names: vec!["127.0.0.1".into(), "baton-webhook.baton-system.svc".into()],
            validity: 90 * DAY,
            renew_before: 30 * DAY,
            ca_validity: 3650 * DAY,
        }
    }

    fn t0() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_800_000_000)
    }

    /// Whether `trusted` (PEM, one or more CAs) verifies the bundle's serving cert at `at`.
    fn verifies(b: &Bundle, trusted: &str, at: SystemTime) -> bool {
        let mut roots = rustls::RootCertStore::empty();
        for der in CertificateDer::pem_slice_iter(trusted.as_bytes()) {
            roots.add(der.expect("pem")).expect("adds");
        }
        let verifier =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), tls::provider())
                .build()
                .expect("verifier");
        let cert = CertificateDer::from_pem_slice(b.cert_pem.as_bytes()).expect("cert");
        policy().names.iter().all(|name| {
            verifier
                .verify_server_cert(
                    &cert,
                    &[],
                    &ServerName::try_from(name.as_str()).expect("name"),
                    &[],
                    UnixTime::since_unix_epoch(since_epoch(at)),
                )
                .is_ok()
        })
    }

    /// A replica whose Secret (served by `api`) holds `bundle`, renewed
    /// with `policy`, each pass bounded by `pass_timeout`.
    fn replica(
        api: &ScriptedApi,
        bundle: &Bundle,
        policy: Policy,
        pass_timeout: Duration,
    ) -> SelfManaged {
        let client = api.client();
        SelfManaged {
            secrets: Api::namespaced(client.clone(), "baton-system"),
            mutating: Api::all(client.clone()),
            validating: Api::all(client),
            namespace: "baton-system".into(),
            secret: "tls".into(),
            configuration: "baton-webhook".into(),
            policy,
            serving: Arc::new(Swappable(Mutex::new(Arc::new(
                certified_key(bundle).expect("a key"),
            )))),
            served_pem: Mutex::new(bundle.cert_pem.clone()),
            pass_timeout,
        }
    }

    /// The API server of a steady replica: its Secret, and both
    /// configurations already trusting its CA.
    fn steady_api(bundle: &Bundle) -> ScriptedApi {
        let mut secret = into_secret(bundle, Secret::default());
        secret.metadata.name = Some("tls".into());
        secret.metadata.resource_version = Some("1".into());
        let mut secret = serde_json::to_value(&secret).expect("json");
        secret["apiVersion"] = "v1".into();
        secret["kind"] = "Secret".into();
        let ca = base64::engine::general_purpose::STANDARD.encode(&bundle.trusted_pem);
        ScriptedApi::new(move |r| {
            let config = |kind: &str| {
                serde_json::json!({
                    "apiVersion": "admissionregistration.k8s.io/v1", "kind": kind,
                    "metadata": {"name": "baton-webhook", "resourceVersion": "1"},
                    "webhooks": [{"name": "w.baton.dev", "clientConfig": {"caBundle": ca},
                                  "sideEffects": "None", "admissionReviewVersions": ["v1"]}]
                })
            };
            if r.path.ends_with("/secrets/tls") {
                (200, secret.clone())
            } else if r.path.contains("mutatingwebhookconfigurations") {
                (200, config("MutatingWebhookConfiguration"))
            } else if r.path.contains("validatingwebhookconfigurations") {
                (200, config("ValidatingWebhookConfiguration"))
            } else {
                (
                    404,
                    serde_json::json!({"kind": "Status", "apiVersion": "v1", "code": 404}),
                )
            }
        })
    }

    fn secret_reads(api: &ScriptedApi) -> usize {
        api.requests()
            .iter()
            .filter(|r| r.method == "GET" && r.path.ends_with("/secrets/tls"))
            .count()
    }

    /// Waits (10 s at most) for a second pass, which reads the Secret
    /// again, then stops the loop.
    async fn assert_second_pass(
        api: &ScriptedApi,
        run: tokio::task::JoinHandle<()>,
        stop: CancellationToken,
    ) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while secret_reads(api) < 2 && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(10), run)
            .await
            .expect("the loop heeds stop")
            .expect("the loop did not panic");
        assert!(secret_reads(api) >= 2, "{:?}", api.sent("kind"));
    }

    /// Watch errors every 50 ms, as from an API server that keeps dropping
    /// the watch.
    fn failing_watch() -> impl Stream<Item = Result<Secret, watcher::Error>> {
        futures::stream::unfold((), |()| async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            Some((Err(watcher::Error::NoResourceVersion), ()))
        })
    }

    /// Each watch error used to restart the wait for the next pass, so
    /// errors more frequent than the wait put renewal off for ever.
    #[tokio::test]
    async fn watch_errors_never_put_the_next_pass_off() {
        // Renewal due 1 s after the certificate is made.
        let short = Policy {
            validity: Duration::from_secs(4),
            renew_before: Duration::from_secs(3),
            ..policy()
        };
        let now = SystemTime::now();
        let bundle = issue(&Step::Create, None, &short, now).expect("issues");
        let api = steady_api(&bundle);
        let stop = CancellationToken::new();
        let run = tokio::spawn(
            replica(&api, &bundle, short, Duration::from_secs(5))
                .run_with(failing_watch(), stop.clone()),
        );
        // The first pass at once, the next about 1 s later (plus jitter).
        assert_second_pass(&api, run, stop).await;
    }

    /// A pass that hangs is cut at its bound and tried again.
    #[tokio::test]
    async fn a_hanging_pass_is_cut_and_retried() {
        let bundle = created();
        let api = steady_api(&bundle).hanging_when(|_| true);
        let stop = CancellationToken::new();
        let run = tokio::spawn(
            replica(&api, &bundle, policy(), Duration::from_millis(100))
                .run_with(futures::stream::pending(), stop.clone()),
        );
        // The first pass hangs; the retry comes RETRY_FIRST after its bound.
        assert_second_pass(&api, run, stop).await;
    }

    fn created() -> Bundle {
        let step = next_step(None, &policy(), t0());
        assert_eq!(step, Step::Create);
        issue(&step, None, &policy(), t0()).expect("issues")
    }

    #[test]
    fn a_missing_secret_gets_a_ca_and_a_serving_certificate_it_signs() {
        let b = created();
        assert_eq!(b.cert_ca, b.ca_name);
        assert_eq!(b.cert_not_after, t0() + 90 * DAY);
        assert!(verifies(&b, &b.trusted_pem, t0()));
        assert!(
            verifies(&b, &b.trusted_pem, t0() - Duration::from_secs(30)),
            "backdated"
        );
        assert!(!verifies(&b, &b.trusted_pem, t0() + 91 * DAY), "expires");
        assert_eq!(
            next_step(Some(&b), &policy(), t0()),
            Step::Keep {
                recheck_at: t0() + 60 * DAY
            }
        );
    }

    #[test]
    fn the_secret_round_trips_through_data_and_annotations() {
        let b = created();
        let secret = into_secret(&b, Secret::default());
        assert_eq!(secret.type_.as_deref(), Some("kubernetes.io/tls"));
        assert_eq!(from_secret(&secret), Some(b));
        assert_eq!(from_secret(&Secret::default()), None, "nothing to read");
    }

    #[test]
    fn the_serving_certificate_is_renewed_before_expiry_by_the_same_ca() {
        let old = created();
        let at = t0() + 60 * DAY;
        let step = next_step(Some(&old), &policy(), at);
        assert_eq!(step, Step::NewServing);
        let new = issue(&step, Some(&old), &policy(), at).expect("renews");
        assert_ne!(new.cert_pem, old.cert_pem);
        assert_eq!(new.trusted_pem, old.trusted_pem, "caBundle unchanged");
        // Both old and new are trusted by the same caBundle: no gap.
        assert!(verifies(&old, &new.trusted_pem, at));
        assert!(verifies(&new, &new.trusted_pem, at));
        assert!(matches!(
            next_step(Some(&new), &policy(), at),
            Step::Keep { .. }
        ));
    }

    #[test]
    fn lifetimes_that_would_renew_forever_are_refused() {
        assert!(policy().check().is_ok());
        let mut p = policy();
        p.renew_before = p.validity;
        assert!(p.check().is_err());
        let mut p = policy();
        p.ca_validity = p.validity + p.renew_before;
        assert!(p.check().is_err());
    }

    #[test]
    fn other_names_get_a_new_serving_certificate() {
        let b = created();
        let mut p = policy();
        p.names.push("localhost".into());
        assert_eq!(next_step(Some(&b), &p, t0()), Step::NewServing);
    }

    #[test]
    fn a_new_ca_joins_the_ca_bundle_before_it_signs_the_served_certificate() {
        let first = created();
        // Years later, with the serving certificate renewed on time so far,
        // the CA would not outlive a new serving certificate plus its renewal.
        let at = first.ca_not_after - 100 * DAY;
        let old = issue(&Step::NewServing, Some(&first), &policy(), at - 10 * DAY).expect("renews");
        let step = next_step(Some(&old), &policy(), at);
        assert_eq!(step, Step::NewCa);
        let joined = issue(&step, Some(&old), &policy(), at).expect("new CA");
        assert_eq!(
            joined.cert_pem, old.cert_pem,
            "still serving the old certificate"
        );
        assert_ne!(joined.ca_name, old.ca_name);
        assert!(
            joined.trusted_pem.ends_with(&old.trusted_pem),
            "old CA kept"
        );
        assert!(verifies(&joined, &joined.trusted_pem, at));

        // Until the overlap has passed, nothing changes.
        let overlap = policy().overlap();
        assert_eq!(
            next_step(Some(&joined), &policy(), at + overlap / 2),
            Step::Keep {
                recheck_at: joined.ca_since + overlap
            }
        );
        let later = at + overlap;
        let step = next_step(Some(&joined), &policy(), later);
        assert_eq!(step, Step::NewServing);
        let switched = issue(&step, Some(&joined), &policy(), later).expect("switches");
        assert_eq!(switched.cert_ca, joined.ca_name);
        let new_ca_only = first_pem(&joined.trusted_pem).expect("a PEM");
        assert!(
            verifies(&switched, &new_ca_only, later),
            "signed by the new CA"
        );
        assert!(!verifies(&switched, &old.trusted_pem, later));
        assert!(matches!(
            next_step(Some(&switched), &policy(), later),
            Step::Keep { .. }
        ));
    }
}
