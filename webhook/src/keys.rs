//! The annotation keys the webhook reads itself, beyond the sidecar's
//! settings (`baton.dev/<flag>`). Their own module, below both `owner` (which
//! re-reads an owner that does not opt in) and `annotations` (which reads
//! them all), so that neither depends on the other for a name.

/// Opts a pod in (`"true"`) or out (`"false"`).
pub const INJECT: &str = "baton.dev/inject";
/// Native sidecar (`"true"`) or regular container (`"false"`); the webhook's flag decides otherwise.
pub const NATIVE_SIDECAR: &str = "baton.dev/native-sidecar";
pub const SIDECAR_CPU_REQUEST: &str = "baton.dev/sidecar-cpu-request";
pub const SIDECAR_MEMORY_REQUEST: &str = "baton.dev/sidecar-memory-request";
pub const SIDECAR_CPU_LIMIT: &str = "baton.dev/sidecar-cpu-limit";
pub const SIDECAR_MEMORY_LIMIT: &str = "baton.dev/sidecar-memory-limit";
