//! baton's sidecar: probes the app beside it, competes for the group's Lease
//! and labels its own Pod active or passive.

pub mod settings;

pub use settings::Settings;
