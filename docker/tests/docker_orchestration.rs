//! The plugin under orchestrators: Debian's `docker-compose` (a compose file with
//! `driver: rbd-<unique>` and `driver_opts`: up, write, down, up, the data is still there),
//! and a one-node swarm (a service with `--mount type=volume,...,volume-driver=...`,
//! rescheduled by `docker service update --force`, keeps its data).
//!
//! Each test has a dockerd of its own (see `common::Dockerd`), so `swarm init` and compose
//! projects disturb nothing else. Needs `CEPH_CONF`, `DOCKER_HOST` and root.

mod common;

use std::process::{Command, Output};
use std::thread;
use std::time::{Duration, Instant};

use common::*;

/// A compose project, brought down with its volumes (`down -v`) in `Drop`.
struct Compose<'a> {
    env: &'a DockerEnv,
    project: String,
    file: std::path::PathBuf,
}

impl Compose<'_> {
    fn run(&self, args: &[&str]) -> Output {
        run(
            Command::new("docker-compose")
                .arg("-p")
                .arg(&self.project)
                .arg("-f")
                .arg(&self.file)
                .args(args)
                .env("DOCKER_HOST", &self.env.dockerd.host)
                .env_remove("DOCKER_CONTEXT"),
            Duration::from_secs(180),
        )
    }
    fn ok(&self, args: &[&str]) -> String {
        check(
            &format!("docker-compose {}", args.join(" ")),
            &self.run(args),
        )
    }
}

impl Drop for Compose<'_> {
    fn drop(&mut self) {
        let _ = std::panic::catch_unwind(|| self.run(&["down", "-v", "--timeout", "1"]));
    }
}

fn plugin_path(env: &DockerEnv, name: &str) -> String {
    let r = call(
        &env.plugin.socket,
        "VolumeDriver.Path",
        serde_json::json!({"Name": name}),
    );
    r.json()["Mountpoint"].as_str().unwrap_or("").to_string()
}

#[test]
fn compose_up_write_down_up_keeps_the_data() {
    let Some(env) = DockerEnv::setup("orch-compose") else {
        return;
    };
    let which = run(
        Command::new("docker-compose").arg("version"),
        Duration::from_secs(60),
    );
    check(
        "docker-compose version (install it: scripts/install-deps.sh)",
        &which,
    );
    let ceph = Ceph::new(&env.conf);
    // Compose v1 keeps only [a-z0-9] of the project name.
    let project = testkit::unique("p").replace('-', "");
    let volume = format!("{project}_data");
    let _guard = env.guard(&volume);
    let file = env.dir.path().join("compose.yml");
    std::fs::write(
        &file,
        format!(
            r#"version: "3.7"
services:
  app:
    image: {IMAGE}
    command: ["sh", "-c", "sleep 600"]
    network_mode: none
    volumes:
      - data:/data
volumes:
  data:
    driver: {driver}
    driver_opts:
      size: "320M"
      fstype: xfs
"#,
            driver = env.driver()
        ),
    )
    .unwrap();
    let compose = Compose {
        env: &env,
        project,
        file,
    };

    compose.ok(&["up", "-d"]);
    assert!(
        ceph.image_exists("rbd", &volume),
        "compose did not create {volume}"
    );
    assert_eq!(
        ceph.info(&format!("rbd/{volume}"))["size"].as_u64(),
        Some(320 << 20)
    );
    let fs = compose.ok(&["exec", "-T", "app", "sh", "-c", "df -T /data | tail -1"]);
    assert!(
        fs.contains("xfs"),
        "driver_opts fstype=xfs not applied: {fs}"
    );
    compose.ok(&[
        "exec",
        "-T",
        "app",
        "sh",
        "-c",
        "echo compose-data > /data/f && sync",
    ]);

    compose.ok(&["down", "--timeout", "1"]);
    assert_eq!(plugin_path(&env, &volume), "", "still mounted after down");
    assert!(ceph.image_exists("rbd", &volume), "down removed the volume");

    compose.ok(&["up", "-d"]);
    let out = compose.ok(&["exec", "-T", "app", "cat", "/data/f"]);
    assert_eq!(out, "compose-data\n");

    compose.ok(&["down", "-v", "--timeout", "1"]);
    assert!(
        !ceph.image_exists("rbd", &volume),
        "down -v left the image {volume}"
    );
}

/// A one-node swarm on this test's dockerd, left (`swarm leave --force`) in `Drop`.
struct Swarm<'a> {
    dockerd: &'a Dockerd,
}

impl<'a> Swarm<'a> {
    fn init(dockerd: &'a Dockerd) -> Swarm<'a> {
        // A free port for the swarm listener (2377 may be in use by another test's swarm).
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let s = Swarm { dockerd };
        dockerd.ok(&[
            "swarm",
            "init",
            "--advertise-addr",
            &format!("127.0.0.1:{port}"),
            "--listen-addr",
            &format!("127.0.0.1:{port}"),
        ]);
        s
    }
}

impl Drop for Swarm<'_> {
    fn drop(&mut self) {
        let _ = self.dockerd.docker(&["swarm", "leave", "--force"]);
    }
}

/// The id of the running container of service `svc`, waiting up to `limit` for one that is
/// not `exclude`.
fn running_task(d: &Dockerd, svc: &str, exclude: Option<&str>, limit: Duration) -> String {
    let deadline = Instant::now() + limit;
    loop {
        let out = d.ok(&[
            "ps",
            "-q",
            "--no-trunc",
            "--filter",
            &format!("label=com.docker.swarm.service.name={svc}"),
            "--filter",
            "status=running",
        ]);
        if let Some(id) = out
            .lines()
            .map(str::trim)
            .find(|id| !id.is_empty() && Some(*id) != exclude)
        {
            return id.to_string();
        }
        if Instant::now() > deadline {
            let ps = d.docker(&["service", "ps", "--no-trunc", svc]);
            panic!(
                "no running task of {svc} within {limit:?}:\n{}{}",
                text(&ps.stdout),
                text(&ps.stderr)
            );
        }
        thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn swarm_service_keeps_its_data_across_update_force() {
    let Some(env) = DockerEnv::setup("orch-swarm") else {
        return;
    };
    let d = &env.dockerd;
    let ceph = Ceph::new(&env.conf);
    // Swarm schedules a task only on nodes whose description lists its volume driver, and
    // dockerd lists a legacy plugin only once it has talked to it: `docker volume ls` makes
    // it do so before the node description is built at `swarm init`.
    d.ok(&["volume", "ls"]);
    let info = d.ok(&["info", "--format", "{{json .Plugins.Volume}}"]);
    assert!(
        info.contains(env.driver()),
        "dockerd does not list the plugin: {info}"
    );
    let _swarm = Swarm::init(d);
    let svc = testkit::unique("s");
    let vol = testkit::unique("s1");
    let _guard = env.guard(&vol);
    let mount = format!(
        "type=volume,source={vol},destination=/data,volume-driver={},volume-opt=size=256M",
        env.driver()
    );
    d.ok(&[
        "service",
        "create",
        "--detach",
        "--no-resolve-image",
        "--name",
        &svc,
        "--restart-condition",
        "none",
        "--mount",
        &mount,
        IMAGE,
        "sh",
        "-c",
        "date +%s%N >> /data/log && sync && sleep 600",
    ]);
    struct Service<'a>(&'a Dockerd, String);
    impl Drop for Service<'_> {
        fn drop(&mut self) {
            let _ = self.0.docker(&["service", "rm", &self.1]);
        }
    }
    let service = Service(d, svc.clone());

    let first = running_task(d, &svc, None, Duration::from_secs(120));
    assert!(
        ceph.image_exists("rbd", &vol),
        "the service did not create {vol}"
    );
    let log = d.ok(&["exec", &first, "cat", "/data/log"]);
    assert_eq!(log.lines().count(), 1, "{log}");

    // Rescheduled: a new task (container) on the same volume sees what the first wrote.
    d.ok(&["service", "update", "--force", "--detach", &svc]);
    let second = running_task(d, &svc, Some(&first), Duration::from_secs(120));
    assert_ne!(first, second);
    let deadline = Instant::now() + Duration::from_secs(30);
    let log = loop {
        let log = d.ok(&["exec", &second, "cat", "/data/log"]);
        if log.lines().count() >= 2 || Instant::now() > deadline {
            break log;
        }
        thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(log.lines().count(), 2, "data lost across the update: {log}");

    // Remove the service: its container goes, and the volume is unmounted.
    d.ok(&["service", "rm", &svc]);
    std::mem::forget(service);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !plugin_path_empty(&env, &vol) {
        assert!(
            Instant::now() < deadline,
            "{vol} still mounted after service rm"
        );
        thread::sleep(Duration::from_millis(250));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = d.docker(&["volume", "rm", &vol]);
        if out.status.success() {
            break;
        }
        // The task's container may still be on its way out.
        assert!(
            Instant::now() < deadline,
            "docker volume rm {vol}: {}",
            text(&out.stderr)
        );
        thread::sleep(Duration::from_millis(500));
    }
    assert!(!ceph.image_exists("rbd", &vol));
}

fn plugin_path_empty(env: &DockerEnv, vol: &str) -> bool {
    plugin_path(env, vol).is_empty()
}
