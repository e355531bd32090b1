//! The dev dockerd (`scripts/dev-docker.sh up`) runs the `rbd-test/busybox:latest` test image
//! with a host directory bind-mounted, and what the container writes lands on the host.
//!
//! Needs `DOCKER_HOST` (from `eval "$(scripts/dev-docker.sh env)"`): skipped outside CI when
//! it is missing, a failure under CI (see `testkit::docker_host`).

use std::time::Duration;

use testkit::TempDir;
use testkit::cmd::check;
use testkit::docker::{IMAGE, docker};

const DOCKER_TIMEOUT: Duration = Duration::from_secs(60);

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

    let dir = TempDir::new("dev-docker");
    let volume = format!("{}:/data", dir.path().display());
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

    let content = std::fs::read_to_string(dir.path().join("f"))
        .expect("container did not create /data/f on the host");
    assert_eq!(content, "hello\n");
}
