//! The webhook's metric families, registered once, and their text exposition.

use std::sync::Arc;

use prometheus_client::{
    encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder},
    metrics::{
        counter::Counter,
        family::Family,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

/// Which endpoint answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    Mutate,
    Validate,
}

/// How an admission ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// A patch that adds the sidecar.
    Injected,
    /// Allowed unchanged: not opted in, opted out, host network, already injected.
    Skipped,
    /// Allowed by /validate.
    Allowed,
    /// Denied: invalid annotations, a group that already has pods of another
    /// workload, or the owner (or the group's pods) could not be looked up.
    Denied,
    /// A malformed request, answered with HTTP 400.
    Invalid,
    /// The webhook failed to build an answer: HTTP 500.
    Error,
}

impl Operation {
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Mutate => "mutate",
            Operation::Validate => "validate",
        }
    }
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Injected => "injected",
            Outcome::Skipped => "skipped",
            Outcome::Allowed => "allowed",
            Outcome::Denied => "denied",
            Outcome::Invalid => "invalid",
            Outcome::Error => "error",
        }
    }
}

impl EncodeLabelValue for Operation {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        EncodeLabelValue::encode(&self.as_str(), encoder)
    }
}

impl EncodeLabelValue for Outcome {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        EncodeLabelValue::encode(&self.as_str(), encoder)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct AdmissionLabels {
    operation: Operation,
    result: Outcome,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct OperationLabels {
    operation: Operation,
}

/// Where an owner's metadata came from (counted in
/// `baton_webhook_owner_lookups_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LookupSource {
    /// The webhook's metadata cache: no API call.
    Cache,
    /// A GET: not cached yet (an owner created a moment ago), or cached
    /// with another uid (deleted and created again under the same name).
    Api,
}

impl EncodeLabelValue for LookupSource {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        let name = match self {
            LookupSource::Cache => "cache",
            LookupSource::Api => "api",
        };
        EncodeLabelValue::encode(&name, encoder)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct SourceLabels {
    source: LookupSource,
}

/// Shared by the admission handlers and the /metrics endpoint.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    admissions: Family<AdmissionLabels, Counter>,
    duration: Family<OperationLabels, Histogram>,
    owner_lookups: Family<SourceLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("baton_webhook");
        let admissions = Family::<AdmissionLabels, Counter>::default();
        registry.register(
            "admissions",
            "Admission requests answered, by endpoint and result",
            admissions.clone(),
        );
        let duration = Family::<OperationLabels, Histogram>::new_with_constructor(
            (|| Histogram::new(exponential_buckets(0.0005, 2.0, 14))) as fn() -> Histogram,
        );
        registry.register(
            "admission_duration_seconds",
            "Time to answer one admission request, owner lookup included",
            duration.clone(),
        );
        let owner_lookups = Family::<SourceLabels, Counter>::default();
        registry.register(
            "owner_lookups",
            "Reads of a pod's owner workload (or of a ReplicaSet's Deployment), by where they were answered: the webhook's cache or the API server",
            owner_lookups.clone(),
        );
        Self {
            registry: Arc::new(registry),
            admissions,
            duration,
            owner_lookups,
        }
    }

    /// Counts one answered request and how long it took.
    pub fn observe(&self, operation: Operation, result: Outcome, seconds: f64) {
        self.admissions
            .get_or_create(&AdmissionLabels { operation, result })
            .inc();
        self.duration
            .get_or_create(&OperationLabels { operation })
            .observe(seconds);
    }

    /// Counts one read of an owner's metadata.
    pub fn owner_lookup(&self, source: LookupSource) {
        self.owner_lookups
            .get_or_create(&SourceLabels { source })
            .inc();
    }

    /// The Prometheus text exposition of every family.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admissions_are_counted_by_operation_and_result_with_durations() {
        let m = Metrics::new();
        m.observe(Operation::Mutate, Outcome::Injected, 0.002);
        m.observe(Operation::Mutate, Outcome::Injected, 0.003);
        m.observe(Operation::Validate, Outcome::Denied, 0.001);
        m.owner_lookup(LookupSource::Cache);
        m.owner_lookup(LookupSource::Cache);
        m.owner_lookup(LookupSource::Api);
        let text = m.encode().expect("encodes");
        assert!(
            text.contains(
                "baton_webhook_admissions_total{operation=\"mutate\",result=\"injected\"} 2"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "baton_webhook_admissions_total{operation=\"validate\",result=\"denied\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("baton_webhook_admission_duration_seconds_count{operation=\"mutate\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("baton_webhook_owner_lookups_total{source=\"cache\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("baton_webhook_owner_lookups_total{source=\"api\"} 1"),
            "{text}"
        );
    }
}
