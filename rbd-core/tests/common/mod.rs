//! Shared helpers for rbd-core's integration tests against the real dev cluster.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use rbd_core::{ConnectOptions, EntityAddr, Rados, Timeouts};

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

/// The blocklist entries of the clients a test fences, itself or through librbd (breaking
/// a lock blocklists its owner), removed when dropped, pass or fail.
///
/// Create it before the clients it will name, so that it is dropped after them: a fenced
/// client stays fenced for as long as it is alive, and only then is its entry removed.
/// (Locks a fenced client still held are broken when the test's images are removed, which
/// blocklists the client again: declare the image guards after this one, too.)
pub struct Unfence {
    rados: Rados,
    addrs: Mutex<Vec<EntityAddr>>,
}

impl Unfence {
    /// A guard removing entries through `rados` (a client the test does not fence).
    pub fn new(rados: &Rados) -> Self {
        Unfence {
            rados: rados.clone(),
            addrs: Mutex::new(Vec::new()),
        }
    }

    /// Removes the entry of `addr` when dropped.
    pub fn addr(&self, addr: EntityAddr) {
        self.addrs.lock().unwrap().push(addr);
    }

    /// Removes the entry of client `client` when dropped.
    pub fn client(&self, client: &Rados) {
        let addrs = client.getaddrs().expect("the client's address");
        self.addr(*addrs.primary().expect("the client has an address"));
    }
}

impl Drop for Unfence {
    fn drop(&mut self) {
        for a in self.addrs.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            if let Err(e) = self.rados.blocklist_rm(a) {
                eprintln!("cleanup: cannot remove the blocklist entry of {a}: {e}");
            }
        }
    }
}
