//! Shared by the krbd and nbd guest tests: the harness helpers (`harness.rs`, also used by
//! rbdctl's `volume_guest`), and running a guest script with our probe binary.
//!
//! Policy (as testkit's): when the harness cannot run, the test fails under `CI=true` and
//! is skipped with a printed reason otherwise.

#![allow(dead_code)]

mod harness;

use std::path::{Path, PathBuf};

pub use harness::*;

/// Runs `script` in a guest with the probe binary and `env`. (The harness lets one guest
/// run at a time on the machine; a concurrent test waits for it.)
pub fn run_guest(e: &Env, script: &Path, env: &[(&str, String)]) -> Run {
    let probe = PathBuf::from(env!("CARGO_BIN_EXE_rbd-map-probe"));
    run_guest_with(e, &[probe], &[], script, env)
}
