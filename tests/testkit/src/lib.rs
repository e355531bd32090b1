//! Test harness shared by the workspace's tests.
//!
//! Owns one policy: tests that need the real Ceph cluster or the real dockerd get them from
//! the environment that `scripts/test.sh` (README command 2) sets up. When `CI=true` and one
//! is missing, the test **fails**. Outside CI it is skipped with a printed reason.
//!
//! ```
//! // In a test that needs Ceph:
//! let Some(conf) = testkit::ceph_conf() else { return };
//! assert!(conf.exists());
//! # let _ = conf;
//! ```

use std::path::{Path, PathBuf};

pub mod cluster;
pub mod cmd;
pub mod docker;
pub mod testbed;

/// True when running under CI (`CI=true` or `CI=1`).
pub fn in_ci() -> bool {
    matches!(
        std::env::var("CI").as_deref(),
        Ok("true") | Ok("1") | Ok("TRUE") | Ok("yes")
    )
}

/// Fail under CI, skip with a printed reason otherwise. Returns `None` for callers to
/// `return` early.
fn missing<T>(what: &str, how: &str) -> Option<T> {
    if in_ci() {
        panic!("{what} is required when CI=true but is missing: {how}");
    }
    eprintln!("SKIPPED: {what} is missing ({how}); run scripts/test.sh to provide it");
    None
}

/// The dev cluster's ceph.conf from `CEPH_CONF`, if it exists.
///
/// Under CI a missing cluster is a test failure (panic), never a skip.
pub fn ceph_conf() -> Option<PathBuf> {
    match std::env::var_os("CEPH_CONF") {
        Some(p) if PathBuf::from(&p).is_file() => Some(PathBuf::from(p)),
        Some(p) => missing(
            "the dev Ceph cluster",
            &format!("CEPH_CONF={} does not exist", PathBuf::from(p).display()),
        ),
        None => missing("the dev Ceph cluster", "CEPH_CONF is not set"),
    }
}

/// The dev dockerd's socket (`DOCKER_HOST=unix://...`), if it exists.
///
/// Under CI a missing dockerd is a test failure (panic), never a skip.
pub fn docker_host() -> Option<String> {
    match std::env::var("DOCKER_HOST") {
        Ok(h) => {
            let path = h.strip_prefix("unix://").unwrap_or(&h);
            if std::path::Path::new(path).exists() {
                Some(h)
            } else {
                missing("dockerd", &format!("DOCKER_HOST={h} does not exist"))
            }
        }
        Err(_) => missing("dockerd", "DOCKER_HOST is not set"),
    }
}

/// True when the test process runs as root (needed for loop devices, mounts and FUSE).
///
/// Under CI, not being root is a failure.
pub fn require_root() -> bool {
    // Read the effective uid from /proc to avoid a libc dependency.
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let root = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .and_then(|l| l.split_whitespace().nth(2))
        == Some("0");
    if root {
        true
    } else {
        missing::<()>(
            "root privileges",
            "tests need root for loop devices and mounts",
        )
        .is_some()
    }
}

/// A unique name with the given prefix, safe for images, volumes and objects, so tests can
/// run in parallel against one cluster.
pub fn unique(prefix: &str) -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("{prefix}-{}", &id[..12])
}

/// `len` deterministic, position-dependent bytes (an xorshift stream seeded by `seed`), so
/// that misplaced or stale bytes are caught when data is read back.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Path to a workspace-level file (scripts, fixtures), from any crate's tests.
pub fn workspace_root() -> PathBuf {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    // tests/testkit -> workspace root
    here.parent()
        .and_then(|p| p.parent())
        .map(PathBuf::from)
        .expect("testkit lives two levels below the workspace root")
}

/// A directory `/tmp/<prefix>-<unique>` (short, so socket paths under it fit), removed with
/// everything in it in `Drop`, pass or fail.
#[derive(Debug)]
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// Creates it (panics when it cannot).
    pub fn new(prefix: &str) -> Self {
        let p = PathBuf::from("/tmp").join(unique(prefix));
        std::fs::create_dir_all(&p)
            .unwrap_or_else(|e| panic!("create temp dir {}: {e}", p.display()));
        TempDir(p)
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use std::process::Command;
    use std::time::{Duration, Instant};

    #[test]
    fn cmd_run_captures_like_output() {
        let out = super::cmd::run(
            Command::new("sh").args(["-c", "echo out; echo err >&2; exit 3"]),
            Duration::from_secs(30),
        );
        assert_eq!(out.status.code(), Some(3));
        assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
        assert_eq!(String::from_utf8_lossy(&out.stderr), "err\n");
    }

    #[test]
    fn cmd_run_terminates_a_child_past_its_limit() {
        let dir = std::env::temp_dir().join(super::unique("testkit-term"));
        std::fs::create_dir_all(&dir).unwrap();
        let marker = dir.join("trap-ran");
        let script = format!(
            "trap 'kill $! 2>/dev/null; echo cleaned > {m}; exit 143' TERM; echo started; sleep 60 & wait $!",
            m = marker.display()
        );
        let t = Instant::now();
        let r = std::panic::catch_unwind(|| {
            super::cmd::run(
                Command::new("sh").args(["-c", &script]),
                Duration::from_secs(1),
            )
        });
        let took = t.elapsed();
        let msg = r
            .expect_err("a child past its limit must make the call panic")
            .downcast::<String>()
            .map(|s| *s)
            .unwrap_or_default();
        assert!(msg.contains("did not finish within 1s"), "{msg}");
        assert!(msg.contains("started"), "partial stdout is shown: {msg}");
        assert!(
            took < Duration::from_secs(9),
            "SIGTERM was enough: {took:?}"
        );
        // SIGTERM first: the child's trap ran.
        assert_eq!(
            std::fs::read_to_string(&marker).unwrap_or_default(),
            "cleaned\n"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
