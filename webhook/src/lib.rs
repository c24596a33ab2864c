//! baton's admission webhook: injects the sidecar into the pods of annotated
//! workloads and validates their `baton.dev/*` annotations.

pub mod admission;
pub mod annotations;
pub mod events;
pub mod inject;
pub mod metrics;
pub mod owner;
pub mod quantity;
pub mod settings;

#[cfg(test)]
mod testing;

pub use settings::Settings;
