//! Shared helpers for rbd-core's integration tests against the real dev cluster.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use rbd_core::{ConnectOptions, Rados, Timeouts};

/// The pool every test uses.
pub const POOL: &str = "rbd";

/// Connects to the dev cluster, or returns None (outside CI) when it is missing.
/// Under CI=true a missing cluster panics (the test fails).
pub fn connect() -> Option<(Rados, PathBuf)> {
    let conf = testkit::ceph_conf()?;
    let rados = Rados::connect(
        &ConnectOptions::new()
            .conf_file(&conf)
            .timeouts(Timeouts::uniform(Duration::from_secs(20))),
    )
    .expect("connect to the dev cluster");
    Some((rados, conf))
}

/// Runs Ceph's own CLI tool (`rbd`, `ceph`, `rados`) against the dev cluster, with a
/// timeout; returns stdout, panics with stderr on failure.
pub fn cli(conf: &PathBuf, tool: &str, args: &[&str]) -> String {
    let out = Command::new("timeout")
        .arg("60")
        .arg(tool)
        .arg("-c")
        .arg(conf)
        .args(args)
        .output()
        .expect("run ceph CLI");
    assert!(
        out.status.success(),
        "{tool} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Like [`cli`], but returns the exit status and both outputs instead of panicking.
pub fn cli_status(conf: &PathBuf, tool: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new("timeout")
        .arg("60")
        .arg(tool)
        .arg("-c")
        .arg(conf)
        .args(args)
        .output()
        .expect("run ceph CLI");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs Ceph's CLI and parses its `--format json` output.
pub fn cli_json(conf: &PathBuf, tool: &str, args: &[&str]) -> serde_json::Value {
    let mut a = args.to_vec();
    a.extend(["--format", "json"]);
    let s = cli(conf, tool, &a);
    serde_json::from_str(&s).unwrap_or_else(|e| panic!("{tool} {a:?}: bad JSON {e}: {s}"))
}
