//! Integration tests of the deployment files the `ebb` binary is run with: `compose.yaml` names
//! only real `ebb` commands and real files, and the `nats/` configs parse and enforce their
//! subject permissions on a real nats-server; of `ebb dev`'s simulator child process; and the
//! tidy test, which reads the whole repository for what no compiler checks.

mod admin_keys;
mod alerts;
mod compose;
mod dev_sim;
mod nats_auth;
mod tidy;

use std::path::PathBuf;

/// The repository root (two levels above this crate).
pub fn repo_root() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    root.canonicalize().expect("the repository root exists")
}
