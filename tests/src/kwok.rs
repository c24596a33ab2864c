//! What stands in for kubelet on the bench's KWOK nodes (`make bench`; the
//! tests run on the real nodes):
//!
//! | file (`kwok/`) | what it holds |
//! | --- | --- |
//! | `runner.rs` | the pod runner (`baton-runner`, `src/bin/runner.rs`): watches the KWOK nodes' pods and runs our images' containers as local processes, with the pod's own service account token |
//! | `podenv.rs` | how the runner turns a container spec into a process: the binary for an image, the env as kubelet would resolve it, wildcard and loopback addresses rewritten to the pod IP |

pub mod podenv;
pub mod runner;
