//! Docker for tests: the docker CLI with a time limit against a given daemon, a private
//! dockerd per test ([`Dockerd`], from `scripts/dev-docker.sh`), and containers of the
//! test image ([`Container`]). Everything started here is stopped in `Drop`, pass or fail.
//!
//! ```no_run
//! let Some(host) = testkit::docker_host() else { return };
//! let v = testkit::docker::docker_ok(&host, &["version", "--format", "{{.Server.Version}}"]);
//! assert!(!v.trim().is_empty());
//! ```

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use crate::cmd::{check, run, text};

/// The test image `scripts/dev-docker.sh up` imports into every dockerd it starts.
pub const IMAGE: &str = "rbd-test/busybox:latest";

/// How long a docker call may take by default.
pub const DOCKER_TIMEOUT: Duration = Duration::from_secs(120);

/// `docker ARGS` against `host` (`DOCKER_HOST`; any `DOCKER_CONTEXT` is dropped), killed
/// when it exceeds `limit` (see [`crate::cmd::run`]).
pub fn docker(host: &str, args: &[&str], limit: Duration) -> Output {
    run(
        Command::new("docker")
            .args(args)
            .env("DOCKER_HOST", host)
            .env_remove("DOCKER_CONTEXT"),
        limit,
    )
}

/// `docker ARGS` against `host`, which must succeed within [`DOCKER_TIMEOUT`]; its stdout.
pub fn docker_ok(host: &str, args: &[&str]) -> String {
    let out = docker(host, args, DOCKER_TIMEOUT);
    check(&format!("docker {}", args.join(" ")), &out)
}

/// A private dockerd for one test, from scripts/dev-docker.sh (DEV_DOCKER_OWN=1, its own
/// directory), stopped and wiped in `Drop`.
///
/// Why not the shared dev dockerd: dockerd keeps every legacy plugin it has talked to in a
/// cache for its lifetime and asks each of them on every `docker volume ls`. A test's plugin
/// is gone after the test, and each later `docker volume ls` on that dockerd then waits
/// about 15 s for it (measured). A dockerd per test keeps the shared one clean.
#[derive(Debug)]
pub struct Dockerd {
    /// Its directory (sockets, data, logs, pid files).
    pub dir: PathBuf,
    /// Its `DOCKER_HOST` (`unix://DIR/docker.sock`).
    pub host: String,
    /// The network namespace it runs in (`None`: the host's).
    pub netns: Option<PathBuf>,
}

impl Dockerd {
    /// Starts one in the host's network namespace (up to 3 minutes; failing is a panic).
    pub fn start() -> Dockerd {
        Self::start_in(None)
    }

    /// A dockerd (and its containerd) started inside the network namespace `netns`
    /// (`nsenter --net`, as the test bed runs node daemons): only its network is the
    /// node's; its socket, data and the mounts it makes stay visible to the host.
    pub fn start_in(netns: Option<&Path>) -> Dockerd {
        // Short: the exec root under it holds unix sockets.
        let dir = PathBuf::from("/tmp").join(crate::unique("dk"));
        let d = Dockerd {
            host: format!("unix://{}/docker.sock", dir.display()),
            dir,
            netns: netns.map(Path::to_path_buf),
        };
        let out = run(
            d.script_command()
                .arg("up")
                .arg(&d.dir)
                .env("DEV_DOCKER_OWN", "1")
                .env_remove("DOCKER_HOST")
                .env_remove("DEV_DOCKER_DIR"),
            Duration::from_secs(180),
        );
        check("scripts/dev-docker.sh up", &out);
        d
    }

    /// `scripts/dev-docker.sh`, in this dockerd's network namespace.
    fn script_command(&self) -> Command {
        let script = crate::workspace_root().join("scripts/dev-docker.sh");
        match &self.netns {
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net={}", ns.display()))
                    .arg("--")
                    .arg(script);
                c
            }
            None => Command::new(script),
        }
    }

    /// `docker ARGS` against this dockerd (within [`DOCKER_TIMEOUT`]).
    pub fn docker(&self, args: &[&str]) -> Output {
        self.docker_for(args, DOCKER_TIMEOUT)
    }

    /// `docker ARGS` against this dockerd, within `limit`.
    pub fn docker_for(&self, args: &[&str], limit: Duration) -> Output {
        docker(&self.host, args, limit)
    }

    /// `docker ARGS`, which must succeed; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.docker(args);
        check(&format!("docker {}", args.join(" ")), &out)
    }

    /// `docker ARGS`, which must fail; returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.docker(args);
        assert!(
            !out.status.success(),
            "docker {} should have failed; stdout: {}",
            args.join(" "),
            text(&out.stdout)
        );
        text(&out.stderr)
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        if let Some(ns) = &self.netns
            && !ns.exists()
        {
            // The namespace is gone (and with it whatever ran there). `down` from the
            // host must not compare the host's links with those recorded inside the
            // namespace: without the record it leaves links alone.
            let _ = std::fs::remove_file(self.dir.join("links-before"));
            self.netns = None;
        }
        let mut cmd = self.script_command();
        cmd.arg("down").arg(&self.dir);
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
            run(&mut cmd, Duration::from_secs(180))
        }));
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A container of the test image, removed (`docker rm -f`) in `Drop`.
#[derive(Debug)]
pub struct Container {
    /// The dockerd it runs on.
    pub host: String,
    /// Its name (unique).
    pub name: String,
}

impl Container {
    /// `docker run -d --name NAME --network none --pull never ARGS... IMAGE sh -c SCRIPT`
    /// on `dockerd`.
    pub fn run(dockerd: &Dockerd, args: &[&str], script: &str) -> Container {
        let c = Container {
            host: dockerd.host.clone(),
            name: crate::unique("c"),
        };
        let mut full = vec![
            "run",
            "-d",
            "--name",
            &c.name,
            "--network",
            "none",
            "--pull",
            "never",
        ];
        full.extend_from_slice(args);
        full.extend_from_slice(&[IMAGE, "sh", "-c", script]);
        docker_ok(&c.host, &full);
        c
    }

    /// `docker exec NAME sh -c SCRIPT`, which must succeed; its stdout.
    pub fn exec(&self, script: &str) -> String {
        docker_ok(&self.host, &["exec", &self.name, "sh", "-c", script])
    }

    /// `docker stop -t 1 NAME`, which must succeed.
    pub fn stop(&self) {
        docker_ok(&self.host, &["stop", "-t", "1", &self.name]);
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = std::panic::catch_unwind(|| {
            docker(&self.host, &["rm", "-f", &self.name], DOCKER_TIMEOUT)
        });
    }
}
