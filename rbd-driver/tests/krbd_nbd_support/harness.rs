//! The qemu guest harness from a test: finding `scripts/qemu-guest.sh`, running a guest
//! script with our binaries, parsing its `@@ TAG rc=N OUTPUT` lines, and host-side Ceph
//! CLI helpers. Included by rbd-driver's krbd and nbd guest tests (through `mod.rs`) and
//! by rbdctl's `volume_guest` (through `#[path]`), so it names no crate's binaries.
//!
//! Policy (as testkit's): when the harness cannot run, the test fails under `CI=true` and
//! is skipped with a printed reason otherwise.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use serde_json::Value;

/// Fail under CI, skip (print why, return `None`) otherwise.
pub fn unavailable<T>(what: &str) -> Option<T> {
    if testkit::in_ci() {
        panic!("the qemu guest test cannot run (required when CI=true): {what}");
    }
    eprintln!("SKIPPED: {what}");
    None
}

/// Everything a guest test needs from the host.
pub struct Env {
    pub harness: PathBuf,
    pub conf: PathBuf,
}

/// The harness and the dev cluster, or `None` (skip) / panic (CI).
pub fn env() -> Option<Env> {
    let conf = testkit::ceph_conf()?;
    if !testkit::require_root() {
        return None;
    }
    let harness = std::env::var_os("QEMU_GUEST_SH")
        .map(PathBuf::from)
        .unwrap_or_else(|| testkit::workspace_root().join("scripts/qemu-guest.sh"));
    if !harness.is_file() {
        return unavailable(&format!("{} does not exist", harness.display()));
    }
    // Fetch the kernel and qemu once (idempotent; downloads only what is missing).
    let cache = std::env::var_os("QEMU_GUEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| harness.parent().unwrap().parent().unwrap().join(".qemu"));
    if !cache.join(".ready").exists() {
        let t = Instant::now();
        let out = Command::new("timeout")
            .arg("900")
            .arg(&harness)
            .arg("fetch")
            .stdin(Stdio::null())
            .output()
            .expect("running the harness");
        if !out.status.success() {
            return unavailable(&format!(
                "`{} fetch` failed ({}): {}",
                harness.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        eprintln!("qemu guest: fetched in {:?}", t.elapsed());
    }
    Some(Env { harness, conf })
}

/// One `@@ TAG rc=N OUTPUT` line.
#[derive(Debug, Clone)]
pub struct Step {
    pub rc: i32,
    pub out: String,
    /// `out` parsed as JSON, when it is.
    pub json: Value,
}

impl Step {
    /// The probe said `"ok": true`.
    pub fn ok(&self) -> bool {
        self.json.get("ok") == Some(&Value::Bool(true))
    }
    pub fn result(&self) -> &Value {
        &self.json["result"]
    }
    pub fn error(&self) -> String {
        self.json["error"].as_str().unwrap_or("").to_owned()
    }
    pub fn variant(&self) -> String {
        self.json["variant"].as_str().unwrap_or("").to_owned()
    }
    pub fn probe_ms(&self) -> u64 {
        self.json["ms"].as_u64().unwrap_or(0)
    }
}

/// A finished guest run.
pub struct Run {
    pub code: i32,
    pub console: String,
    pub steps: BTreeMap<String, Step>,
    pub secs: f64,
}

impl Run {
    /// The step, or a panic that shows the console.
    pub fn step(&self, tag: &str) -> &Step {
        self.steps.get(tag).unwrap_or_else(|| {
            panic!(
                "the guest printed no step {tag:?}; console:\n{}",
                self.console
            )
        })
    }
    pub fn has(&self, tag: &str) -> bool {
        self.steps.contains_key(tag)
    }
}

/// Parses the console.
pub fn parse_steps(console: &str) -> BTreeMap<String, Step> {
    let mut steps = BTreeMap::new();
    for line in console.lines() {
        let Some(rest) = line.strip_prefix("@@ ") else {
            continue;
        };
        let mut parts = rest.splitn(3, ' ');
        let (Some(tag), Some(rc)) = (parts.next(), parts.next()) else {
            continue;
        };
        let Some(rc) = rc.strip_prefix("rc=").and_then(|r| r.parse().ok()) else {
            continue;
        };
        let out = parts.next().unwrap_or("").trim().to_owned();
        let json = serde_json::from_str(&out).unwrap_or(Value::Null);
        steps.insert(tag.to_owned(), Step { rc, out, json });
    }
    steps
}

/// Runs `script` in a guest with these binaries (`--bin`, with their libraries), extra
/// kernel modules (`--module`, e.g. `xfs`) and `env`.
pub fn run_guest_with(
    e: &Env,
    bins: &[PathBuf],
    modules: &[&str],
    script: &Path,
    env: &[(&str, String)],
) -> Run {
    let mut cmd = Command::new(&e.harness);
    cmd.arg("run");
    for b in bins {
        cmd.arg("--bin").arg(b);
    }
    for m in modules {
        cmd.arg("--module").arg(m);
    }
    for (k, v) in env {
        cmd.arg("--env").arg(format!("{k}={v}"));
    }
    cmd.arg("--").arg(script);
    let secs_var = |name: &str, default: u64| -> u64 {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let qemu_timeout = secs_var("QEMU_GUEST_TIMEOUT", 420);
    let lock_wait = secs_var("QEMU_GUEST_LOCK_WAIT", 900);
    let build_timeout = secs_var("QEMU_GUEST_BUILD_TIMEOUT", 300);
    cmd.env("CEPH_CONF", &e.conf)
        .env("QEMU_GUEST_TIMEOUT", qemu_timeout.to_string())
        .env("QEMU_GUEST_LOCK_WAIT", lock_wait.to_string())
        .env("QEMU_GUEST_BUILD_TIMEOUT", build_timeout.to_string());
    // The harness bounds each of its phases (waiting for another guest, building the
    // initramfs, running qemu); this bounds the whole, with a margin for the harness's own
    // cleanup. Past it, the harness gets SIGTERM (its trap kills qemu), then SIGKILL.
    let limit = std::time::Duration::from_secs(lock_wait + build_timeout + qemu_timeout + 60);
    let t = Instant::now();
    let out = testkit::cmd::run(&mut cmd, limit);
    let secs = t.elapsed().as_secs_f64();
    let console = String::from_utf8_lossy(&out.stdout).replace('\r', "");
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("---- guest console ----\n{console}\n---- harness stderr ----\n{stderr}");
    eprintln!("guest run took {secs:.1} s");
    Run {
        code: out.status.code().unwrap_or(-1),
        steps: parse_steps(&console),
        console: format!("{console}\n{stderr}"),
        secs,
    }
}

/// Runs a Ceph CLI command (`rbd`, `rados`, `ceph`) against the dev cluster with a
/// timeout; panics with its stderr on failure.
pub fn ceph_cli(conf: &Path, program: &str, args: &[&str]) -> String {
    let out = ceph_cli_raw(conf, program, args);
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn ceph_cli_raw(conf: &Path, program: &str, args: &[&str]) -> std::process::Output {
    Command::new("timeout")
        .arg("120")
        .arg(program)
        .arg("-c")
        .arg(conf)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("running a Ceph CLI")
}

/// `rbd info --format json` id of `pool/image`.
pub fn image_id(conf: &Path, spec: &str) -> String {
    let v: Value =
        serde_json::from_str(&ceph_cli(conf, "rbd", &["info", "--format", "json", spec])).unwrap();
    v["id"].as_str().unwrap().to_owned()
}

/// Watcher addresses from `rbd status --format json` output.
pub fn watcher_addrs(status_json: &str) -> Vec<rbd_core::EntityAddr> {
    let v: Value = serde_json::from_str(status_json.trim()).unwrap_or(Value::Null);
    v["watchers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|w| w["address"].as_str())
        .filter_map(|a| a.parse().ok())
        .collect()
}

/// Lockers from `rbd lock ls --format json` output: `(lock id, address)`. The
/// exclusive-lock owner's id starts with `auto `.
pub fn lockers(lock_ls_json: &str) -> Vec<(String, rbd_core::EntityAddr)> {
    let v: Value = serde_json::from_str(lock_ls_json.trim())
        .unwrap_or_else(|e| panic!("`rbd lock ls` printed no JSON ({e}): {lock_ls_json:?}"));
    v.as_array()
        .unwrap_or_else(|| panic!("`rbd lock ls` JSON is not a list: {v}"))
        .iter()
        .map(|l| {
            (
                l["id"].as_str().unwrap_or("").to_owned(),
                l["address"]
                    .as_str()
                    .and_then(|a| a.parse().ok())
                    .unwrap_or_else(|| panic!("locker without an address: {l}")),
            )
        })
        .collect()
}

/// Asserts that `addr` (a mapping's client address) is the image's one exclusive-lock owner.
pub fn assert_lock_owner(step: &Step, addr: &rbd_core::EntityAddr, what: &str) {
    assert_eq!(step.rc, 0, "{what}: {step:?}");
    let l = lockers(&step.out);
    assert_eq!(l.len(), 1, "{what}: one locker expected: {l:?}");
    assert!(
        l[0].0.starts_with("auto ") && l[0].1.same_instance(addr),
        "{what}: the exclusive-lock owner is {:?}, not the mapping's client {addr}",
        l[0]
    );
}

/// Creates a RADOS namespace in a pool and removes it on drop (after the images in it:
/// declare this guard before [`Images`]).
pub struct Namespace {
    pub conf: PathBuf,
    pub pool: String,
    pub name: String,
}

impl Namespace {
    pub fn create(conf: &Path, pool: &str, name: &str) -> Namespace {
        ceph_cli(
            conf,
            "rbd",
            &["namespace", "create", &format!("{pool}/{name}")],
        );
        Namespace {
            conf: conf.to_path_buf(),
            pool: pool.into(),
            name: name.into(),
        }
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = ceph_cli_raw(
            &self.conf,
            "rbd",
            &["namespace", "rm", &format!("{}/{}", self.pool, self.name)],
        );
    }
}

/// Removes the test images on drop (best effort: snapshots first).
pub struct Images {
    pub conf: PathBuf,
    pub specs: Vec<String>,
}

impl Drop for Images {
    fn drop(&mut self) {
        for s in &self.specs {
            let _ = ceph_cli_raw(&self.conf, "rbd", &["snap", "purge", s]);
            let _ = ceph_cli_raw(&self.conf, "rbd", &["rm", "--no-progress", s]);
        }
    }
}

/// The sha256 (hex) of a byte range of a file, via `sha256sum`.
pub fn sha256_range(path: &Path, offset: u64, len: u64) -> String {
    use std::io::{Read, Seek, SeekFrom, Write};
    let mut f = File::open(path).unwrap();
    f.seek(SeekFrom::Start(offset)).unwrap();
    let mut buf = vec![0u8; len as usize];
    f.read_exact(&mut buf).unwrap();
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&buf).unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_owned()
}

/// The first word of a step's output (e.g. a `sha256sum` hash).
pub fn first_word(s: &Step) -> String {
    s.out.split_whitespace().next().unwrap_or("").to_owned()
}
