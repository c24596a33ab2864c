//! The I/O half of self-managed certificates: [`SelfManaged`] keeps the
//! Secret (through [`super::next_step`] and [`super::issue`]), the served
//! certificate ([`Swappable`], the TLS resolver) and the caBundles of both
//! webhook configurations up to date, one bounded pass at a time.

use super::*;

/// The certificate to serve, swapped when the Secret changes.
#[derive(Debug)]
pub struct Swappable(pub(super) Mutex<Arc<CertifiedKey>>);

impl Swappable {
    pub(super) fn set(&self, key: Arc<CertifiedKey>) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = key;
    }

    pub(super) fn get(&self) -> Arc<CertifiedKey> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl ResolvesServerCert for Swappable {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.get())
    }
}

/// Keeps the Secret, the served certificate and the caBundles up to date.
pub struct SelfManaged {
    pub(super) secrets: Api<Secret>,
    pub(super) mutating: Api<MutatingWebhookConfiguration>,
    pub(super) validating: Api<ValidatingWebhookConfiguration>,
    pub(super) namespace: String,
    pub(super) secret: String,
    pub(super) configuration: String,
    pub(super) policy: Policy,
    pub(super) serving: Arc<Swappable>,
    pub(super) served_pem: Mutex<String>,
    /// Bound of one maintenance pass.
    pub(super) pass_timeout: Duration,
}

impl SelfManaged {
    /// Reads (or makes) the Secret once, so that the webhook starts with a certificate.
    pub async fn start(client: Client, settings: &Settings) -> Result<Self, CertError> {
        let secret = settings.cert_secret.clone().unwrap_or_default();
        let namespace = settings.cert_secret_namespace.clone();
        let policy = Policy::from_settings(settings);
        policy.check()?;
        let pass_timeout = settings.api_timeout * PASS_CALLS;
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
        let mut tries = 0;
        let bundle = loop {
            let first = ensure(&secrets, &namespace, &secret, &policy);
            match tokio::time::timeout(pass_timeout, first)
                .await
                .unwrap_or(Err(CertError::Timeout {
                    after: pass_timeout,
                })) {
                Ok((bundle, _)) => break bundle,
                // Two replicas starting at once: the loser reads the winner's.
                Err(CertError::Conflict { .. }) if tries < 3 => tries += 1,
                Err(e) => return Err(e),
            }
        };
        let serving = Arc::new(Swappable(Mutex::new(Arc::new(certified_key(&bundle)?))));
        Ok(Self {
            secrets,
            mutating: Api::all(client.clone()),
            validating: Api::all(client),
            namespace,
            secret,
            configuration: settings.webhook_configuration.clone(),
            policy,
            serving,
            served_pem: Mutex::new(bundle.cert_pem),
            pass_timeout,
        })
    }

    /// What the HTTPS server serves.
    pub fn resolver(&self) -> Arc<dyn ResolvesServerCert> {
        self.serving.clone()
    }

    /// Watches the Secret and renews on time until `stop` is cancelled.
    pub async fn run(self, stop: CancellationToken) {
        let config = watcher::Config::default().fields(&format!("metadata.name={}", self.secret));
        let changes = watcher(self.secrets.clone(), config)
            .default_backoff()
            .applied_objects();
        self.run_with(changes, stop).await;
    }

    /// [`SelfManaged::run`] over any stream of the Secret's changes.
    pub(super) async fn run_with(
        self,
        changes: impl Stream<Item = Result<Secret, watcher::Error>>,
        stop: CancellationToken,
    ) {
        let mut changes = pin!(changes);
        // When the next pass is due. Only passes move it: watch events and
        // errors, however frequent, never push a renewal back.
        let mut due = tokio::time::Instant::now();
        let mut retry = RETRY_FIRST;
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                change = changes.next() => match change {
                    None => return,
                    Some(Err(error)) => {
                        // The watcher retries with backoff; the timer still renews.
                        tracing::warn!(error = %ErrorChain(&error), secret = %self.secret, "watching the certificate Secret failed");
                        continue;
                    }
                    Some(Ok(_)) => {}
                },
                () = tokio::time::sleep_until(due) => {}
            }
            let pass = tokio::time::timeout(self.pass_timeout, self.reconcile())
                .await
                .unwrap_or(Err(CertError::Timeout {
                    after: self.pass_timeout,
                }));
            let wait = match pass {
                Ok(next) => {
                    retry = RETRY_FIRST;
                    let until = next.duration_since(SystemTime::now()).unwrap_or_default();
                    // Replicas look at slightly different times: one renews,
                    // the others see its write through their watch.
                    if until.is_zero() {
                        until
                    } else {
                        (until + jitter(self.policy.renew_before / 10)).min(MAX_RECHECK)
                    }
                }
                // A conflict is another replica's write: read it at once.
                Err(CertError::Conflict { .. }) => Duration::ZERO,
                Err(error) => {
                    tracing::warn!(error = %ErrorChain(&error), retry_in = ?retry, "certificate maintenance failed");
                    let wait = retry;
                    retry = (retry * 2).min(RETRY_MAX);
                    wait
                }
            };
            due = tokio::time::Instant::now() + wait;
        }
    }

    /// One pass: the Secret, the served certificate, the caBundles. Returns when to look again.
    pub(super) async fn reconcile(&self) -> Result<SystemTime, CertError> {
        let (bundle, next) =
            ensure(&self.secrets, &self.namespace, &self.secret, &self.policy).await?;
        let changed = {
            let mut served = self.served_pem.lock().unwrap_or_else(|p| p.into_inner());
            let changed = *served != bundle.cert_pem;
            if changed {
                *served = bundle.cert_pem.clone();
            }
            changed
        };
        if changed {
            self.serving.set(Arc::new(certified_key(&bundle)?));
            tracing::info!(ca = %bundle.cert_ca, not_after = %time_text(bundle.cert_not_after), "serving certificate renewed");
        }
        self.publish(bundle.trusted_pem.as_bytes()).await?;
        Ok(next)
    }

    /// Sets the caBundle of every webhook of both configurations.
    pub(super) async fn publish(&self, ca: &[u8]) -> Result<(), CertError> {
        self.publish_to(&self.mutating, "MutatingWebhookConfiguration", ca, |m| {
            m.webhooks
                .iter_mut()
                .flatten()
                .map(|w| &mut w.client_config)
                .collect()
        })
        .await?;
        self.publish_to(
            &self.validating,
            "ValidatingWebhookConfiguration",
            ca,
            |v| {
                v.webhooks
                    .iter_mut()
                    .flatten()
                    .map(|w| &mut w.client_config)
                    .collect()
            },
        )
        .await
    }

    /// Sets `ca` as the caBundle of each client config of one configuration,
    /// replacing it (with the resourceVersion read) only if one differed.
    pub(super) async fn publish_to<K>(
        &self,
        api: &Api<K>,
        kind: &'static str,
        ca: &[u8],
        client_configs: fn(&mut K) -> Vec<&mut WebhookClientConfig>,
    ) -> Result<(), CertError>
    where
        K: kube::Resource
            + Clone
            + serde::Serialize
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
    {
        let name = &self.configuration;
        let err = |action| {
            move |source| CertError::Configuration {
                action,
                kind,
                name: name.clone(),
                source: Box::new(source),
            }
        };
        let mut configuration = api
            .get_opt(name)
            .await
            .map_err(err("reading"))?
            .ok_or_else(|| CertError::NoConfiguration {
                kind,
                name: name.clone(),
            })?;
        let mut stale = false;
        for config in client_configs(&mut configuration) {
            if config.ca_bundle.as_ref().map(|b| b.0.as_slice()) != Some(ca) {
                config.ca_bundle = Some(ByteString(ca.to_vec()));
                stale = true;
            }
        }
        if stale {
            replace(api, name, &configuration)
                .await
                .map_err(err("updating"))?
                .ok_or_else(|| CertError::Conflict {
                    what: format!("{kind} {name}"),
                })?;
            tracing::info!(configuration = %name, kind, "caBundle updated");
        }
        Ok(())
    }
}

/// A duration in `[0, max.min(60 s))`, different from one replica to the next.
fn jitter(max: Duration) -> Duration {
    let max_ms = max.min(Duration::from_secs(60)).as_millis().max(1) as u64;
    let seed =
        u64::from(since_epoch(SystemTime::now()).subsec_nanos()) ^ u64::from(std::process::id());
    Duration::from_millis(seed % max_ms)
}

/// Replaces with the read object's resourceVersion; `None` on a conflict.
async fn replace<K>(api: &Api<K>, name: &str, object: &K) -> Result<Option<K>, kube::Error>
where
    K: kube::Resource + Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.replace(name, &PostParams::default(), object).await {
        Ok(o) => Ok(Some(o)),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(None),
        Err(e) => Err(e),
    }
}

/// Reads the Secret, writes what [`next_step`] asks for (create, or replace
/// with the resourceVersion read), and returns the bundle now in force and
/// when to look again.
async fn ensure(
    api: &Api<Secret>,
    namespace: &str,
    name: &str,
    policy: &Policy,
) -> Result<(Bundle, SystemTime), CertError> {
    let err = |action| {
        move |source| CertError::Secret {
            action,
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            source: Box::new(source),
        }
    };
    let existing = api.get_opt(name).await.map_err(err("reading"))?;
    let old = existing.as_ref().and_then(from_secret);
    let now = SystemTime::now();
    let step = next_step(old.as_ref(), policy, now);
    let new = match (step, old) {
        (Step::Keep { recheck_at }, Some(old)) => return Ok((old, recheck_at)),
        (step, old) => {
            tracing::info!(?step, secret = %name, "writing certificates");
            issue(&step, old.as_ref(), policy, now)?
        }
    };
    let conflict = || CertError::Conflict {
        what: format!("Secret {namespace}/{name}"),
    };
    match existing {
        Some(secret) => {
            // The read resourceVersion stays in metadata: a precondition.
            let updated = into_secret(&new, secret);
            if replace(api, name, &updated)
                .await
                .map_err(err("replacing"))?
                .is_none()
            {
                return Err(conflict());
            }
        }
        None => {
            let secret = into_secret(
                &new,
                Secret {
                    metadata: ObjectMeta {
                        name: Some(name.to_owned()),
                        namespace: Some(namespace.to_owned()),
                        labels: Some(BTreeMap::from([(
                            "app.kubernetes.io/name".to_owned(),
                            "baton-webhook".to_owned(),
                        )])),
                        ..Default::default()
                    },
                    ..Default::default()
                },
            );
            match api.create(&PostParams::default(), &secret).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 409 => return Err(conflict()),
                Err(e) => return Err(err("creating")(e)),
            }
        }
    }
    // Look again at once: a new CA is followed by a new serving certificate.
    Ok((new, now))
}
