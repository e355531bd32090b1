//! The dev dockerd (`scripts/dev-docker.sh up`) runs the `rbd-test/busybox:latest` test image
//! with a host directory bind-mounted, and what the container writes lands on the host.
//!
//! Needs `DOCKER_HOST` (from `eval "$(scripts/dev-docker.sh env)"`): skipped outside CI when
//! it is missing, a failure under CI (see `testkit::docker_host`).

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

const IMAGE: &str = "rbd-test/busybox:latest";
const DOCKER_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs `docker ARGS` against `host`, killing it when it exceeds `limit`.
fn docker(host: &str, args: &[&str], limit: Duration) -> Output {
    let mut cmd = Command::new("docker");
    cmd.args(args)
        .env("DOCKER_HOST", host)
        .env_remove("DOCKER_CONTEXT")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let what = format!("docker {}", args.join(" "));
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e} (is the docker CLI installed?)"));

    // Drain both pipes on their own threads so a chatty child cannot block on a full pipe.
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut buf);
            }
            buf
        })
    };
    let out = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let err = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );

    let deadline = Instant::now() + limit;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{what} did not finish within {limit:?}; killed");
            }
            Ok(None) => thread::sleep(Duration::from_millis(50)),
            Err(e) => panic!("waiting for {what}: {e}"),
        }
    };
    Output {
        status,
        stdout: out.join().expect("stdout reader panicked"),
        stderr: err.join().expect("stderr reader panicked"),
    }
}

fn check(what: &str, out: &Output) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
}

/// A host directory removed when the test ends, pass or fail.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        let p = std::env::temp_dir().join(testkit::unique("dev-docker"));
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn container_writes_into_bind_mounted_host_dir() {
    let Some(host) = testkit::docker_host() else {
        return;
    };

    let version = docker(
        &host,
        &["version", "--format", "{{.Server.Version}}"],
        Duration::from_secs(15),
    );
    check(
        "docker version (is dockerd answering at DOCKER_HOST?)",
        &version,
    );

    let inspect = docker(
        &host,
        &["image", "inspect", "--format", "{{.Id}}", IMAGE],
        DOCKER_TIMEOUT,
    );
    check(
        &format!("docker image inspect {IMAGE} (run scripts/dev-docker.sh up to import it)"),
        &inspect,
    );

    let dir = TempDir::new();
    let volume = format!("{}:/data", dir.0.display());
    let run = docker(
        &host,
        &[
            "run",
            "--rm",
            "--pull",
            "never",
            "--network",
            "none",
            "-v",
            &volume,
            IMAGE,
            "sh",
            "-c",
            "echo hello > /data/f",
        ],
        DOCKER_TIMEOUT,
    );
    check("docker run", &run);

    let content = std::fs::read_to_string(dir.0.join("f"))
        .expect("container did not create /data/f on the host");
    assert_eq!(content, "hello\n");
}
