//! A Ceph cluster of a test's own, for tests that stop its daemons (mons down, OSD down):
//! [`PrivateCluster::start`] runs `scripts/dev-cluster.sh up` in a fresh directory (its
//! own free ports), and `Drop` runs `down` (daemons stopped by their pid files) and
//! removes the directory, also when the test panics. The shared dev cluster of the other
//! tests is never touched.
//!
//! ```no_run
//! let Some(_shared) = testkit::ceph_conf() else { return };
//! let c = testkit::cluster::PrivateCluster::start();
//! // ... use c.conf() ...
//! c.stop("osd.0");
//! // dropped: the cluster is torn down
//! ```

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::cmd;

/// A running dev cluster in a directory of its own; brought down and removed on drop.
#[derive(Debug)]
pub struct PrivateCluster {
    dir: PathBuf,
    conf: PathBuf,
}

impl PrivateCluster {
    /// Starts a one-mon, one-OSD cluster under `/tmp/<unique>` (up to 3 minutes; a
    /// cluster that does not come up is a panic).
    pub fn start() -> PrivateCluster {
        let dir = PathBuf::from("/tmp").join(crate::unique("pdc"));
        let mut c = PrivateCluster {
            conf: dir.join("ceph.conf"),
            dir,
        };
        let out = cmd::run(
            Command::new(crate::workspace_root().join("scripts/dev-cluster.sh"))
                .arg("up")
                .env("DEV_CLUSTER_DIR", &c.dir)
                .env_remove("DEV_CLUSTER_PORT")
                .env_remove("CEPH_CONF"),
            Duration::from_secs(180),
        );
        let stdout = cmd::check("scripts/dev-cluster.sh up", &out);
        if let Some(conf) = stdout
            .lines()
            .find_map(|l| l.strip_prefix("export CEPH_CONF="))
        {
            c.conf = PathBuf::from(conf.trim().trim_matches('\'').trim_matches('"'));
        }
        assert!(c.conf.is_file(), "no ceph.conf at {}", c.conf.display());
        c
    }

    /// Its ceph.conf.
    pub fn conf(&self) -> &Path {
        &self.conf
    }

    /// Its directory (state, logs, pid files).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The pid of one of its daemons (`mon.a`, `osd.0`), from its pid file.
    pub fn pid(&self, daemon: &str) -> i32 {
        let pidfile = self.dir.join(format!("run/{daemon}.pid"));
        std::fs::read_to_string(&pidfile)
            .unwrap_or_else(|e| panic!("{}: {e}", pidfile.display()))
            .trim()
            .parse()
            .expect("daemon pid")
    }

    /// Stops a daemon (`mon.a`, `osd.0`) with SIGTERM, by its pid file, and waits (up to
    /// 30 s) until it is gone.
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
        let _ = std::panic::catch_unwind(|| {
            cmd::run(
                Command::new(crate::workspace_root().join("scripts/dev-cluster.sh"))
                    .arg("down")
                    .env("DEV_CLUSTER_DIR", &self.dir),
                Duration::from_secs(120),
            )
        });
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
