//! A private dev cluster for tests that must break it (stop its mon or OSD): started with
//! `DEV_CLUSTER_DIR=<tmp> scripts/dev-cluster.sh up` on ports of its own, so stopping its
//! daemons disturbs no other test, and brought down and wiped on drop, pass or fail.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// A dev cluster of the test's own (one mon `mon.a`, one OSD `osd.0`).
pub struct PrivateCluster {
    /// Its state directory (under `/tmp`).
    pub dir: PathBuf,
    /// Its ceph.conf.
    pub conf: PathBuf,
}

impl PrivateCluster {
    /// Starts it (about 6-20 s); panics if it does not come up within 180 s.
    pub fn start() -> PrivateCluster {
        let dir = std::env::temp_dir().join(crate::unique("pdc"));
        let mut c = PrivateCluster {
            conf: dir.join("ceph.conf"),
            dir,
        };
        let out = crate::output_within(
            Command::new(crate::workspace_root().join("scripts/dev-cluster.sh"))
                .arg("up")
                .env("DEV_CLUSTER_DIR", &c.dir)
                .env_remove("DEV_CLUSTER_PORT")
                .env_remove("CEPH_CONF"),
            Duration::from_secs(180),
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "scripts/dev-cluster.sh up ({}): {stdout}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        if let Some(conf) = stdout
            .lines()
            .find_map(|l| l.strip_prefix("export CEPH_CONF="))
        {
            c.conf = PathBuf::from(conf.trim().trim_matches('\'').trim_matches('"'));
        }
        assert!(c.conf.is_file(), "no ceph.conf at {}", c.conf.display());
        c
    }

    /// The pid of one of its daemons (`mon.a`, `osd.0`), from the script's pid file.
    pub fn pid(&self, daemon: &str) -> i32 {
        let pidfile = self.dir.join(format!("run/{daemon}.pid"));
        std::fs::read_to_string(&pidfile)
            .unwrap_or_else(|e| panic!("{}: {e}", pidfile.display()))
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("{}: not a pid: {e}", pidfile.display()))
    }

    /// Stops a daemon with SIGTERM, by its pid file (never by name), and waits until it
    /// is gone (30 s at most).
    pub fn stop(&self, daemon: &str) {
        let pid = self.pid(daemon);
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap_or_else(|e| panic!("kill {daemon} ({pid}): {e}"));
        let deadline = Instant::now() + Duration::from_secs(30);
        while Path::new(&format!("/proc/{pid}")).exists() {
            assert!(Instant::now() < deadline, "{daemon} ({pid}) did not stop");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        // (`timeout`, not output_within: no panic in drop.)
        let _ = Command::new("timeout")
            .args(["-k", "10", "120"])
            .arg(crate::workspace_root().join("scripts/dev-cluster.sh"))
            .arg("down")
            .env("DEV_CLUSTER_DIR", &self.dir)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
