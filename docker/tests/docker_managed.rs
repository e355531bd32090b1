//! The managed plugin: `docker/plugin/build.sh` assembles the rootfs from the built binaries
//! and their shared libraries (no registry), `docker plugin create` + `set` + `enable` it on
//! a dockerd of the test's own, and a container writes to a volume through it that a
//! second container reads back. The plugin runs as PID 1 of its PID namespace: the
//! mapper it adopts from a volume worker that retired while the volume was mounted is
//! reaped once it exits.
//!
//! Needs `CEPH_CONF`, `DOCKER_HOST` (gating), root, and the `rbd-umap` binary next to the
//! plugin binary (`cargo build -p rbd-driver --bins`; a workspace build has it).

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::*;

/// The managed plugin, disabled and removed in `Drop`.
struct ManagedPlugin<'a> {
    dockerd: &'a Dockerd,
    name: String,
}

impl Drop for ManagedPlugin<'_> {
    fn drop(&mut self) {
        let _ = self
            .dockerd
            .docker(&["plugin", "disable", "-f", &self.name]);
        let _ = self.dockerd.docker(&["plugin", "rm", "-f", &self.name]);
    }
}

/// The keyring the dev cluster's ceph.conf names.
fn keyring_of(conf: &std::path::Path) -> PathBuf {
    let text = std::fs::read_to_string(conf).expect("read ceph.conf");
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("keyring"))
        .filter_map(|r| r.trim_start().strip_prefix('='))
        .map(|v| PathBuf::from(v.trim()))
        .next()
        .unwrap_or_else(|| conf.with_file_name("keyring"))
}

#[test]
fn managed_plugin_builds_installs_and_serves_a_container() {
    let Some(conf) = testkit::ceph_conf() else {
        return;
    };
    if testkit::docker_host().is_none() || !testkit::require_root() {
        return;
    }
    let bin_dir = sibling_bin("rbd-umap")
        .parent()
        .expect("bin dir")
        .to_path_buf();
    assert!(
        bin_dir.join("rbd-umap").is_file(),
        "{} missing: cargo build -p rbd-driver --bins",
        bin_dir.join("rbd-umap").display()
    );
    let dir = TempDir::new("managed");
    let d = Dockerd::start();

    // What the plugin sees as /etc/ceph, and its state directory on the host.
    let ceph_dir = dir.path().join("ceph");
    std::fs::create_dir_all(&ceph_dir).unwrap();
    std::fs::copy(&conf, ceph_dir.join("ceph.conf")).expect("copy ceph.conf");
    std::fs::copy(keyring_of(&conf), ceph_dir.join("keyring")).expect("copy keyring");
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    // This VM's kernel has no modules directory; give the plugin's mount a source anyway.
    let modules = if std::path::Path::new("/lib/modules").is_dir() {
        PathBuf::from("/lib/modules")
    } else {
        let m = dir.path().join("modules");
        std::fs::create_dir_all(&m).unwrap();
        m
    };

    let name = format!("{}:latest", testkit::unique("rbdm"));
    let plugin = ManagedPlugin {
        dockerd: &d,
        name: name.clone(),
    };
    let node = testkit::unique("node");
    let sets = [
        format!("ceph.source={}", ceph_dir.display()),
        format!("state.source={}", state.display()),
        format!("modules.source={}", modules.display()),
        "CEPH_KEYRING=/etc/ceph/keyring".to_string(),
        "RBD_BACKEND=userspace".to_string(),
        format!("RBD_NODE_ID={node}"),
        "RBD_LOG=debug".to_string(),
        // Volume workers retire within a second, so the first container's mapper
        // outlives the worker that started it (see the zombie check below).
        "RBD_WORKER_IDLE=1".to_string(),
    ];
    let mut cmd = Command::new(testkit::workspace_root().join("docker/plugin/build.sh"));
    cmd.arg("--name")
        .arg(&name)
        .arg("--bin-dir")
        .arg(&bin_dir)
        .arg("--work")
        .arg(dir.path().join("build"))
        .env("DOCKER_HOST", &d.host);
    for s in &sets {
        cmd.arg("--set").arg(s);
    }
    let out = run(&mut cmd, Duration::from_secs(600));
    let dockerd_log = || std::fs::read_to_string(d.dir.join("log/dockerd.log")).unwrap_or_default();
    assert!(
        out.status.success(),
        "build.sh failed: {}\n{}\ndockerd log:\n{}",
        text(&out.stdout),
        text(&out.stderr),
        dockerd_log()
    );
    let enabled = d.ok(&["plugin", "inspect", "--format", "{{.Enabled}}", &name]);
    assert_eq!(enabled.trim(), "true");

    // A volume through the managed plugin: written by one container, read by the next.
    let ceph = Ceph::new(&conf);
    let v = testkit::unique("vm");
    struct Cleanup<'a>(&'a Dockerd, &'a Ceph, String);
    impl Drop for Cleanup<'_> {
        fn drop(&mut self) {
            let _ = self.0.docker(&["volume", "rm", "-f", &self.2]);
            if self.1.image_exists("rbd", &self.2) {
                let _ = self.1.rbd(&["rm", &format!("rbd/{}", self.2)]);
            }
        }
    }
    let _cleanup = Cleanup(&d, &ceph, v.clone());
    let out = d.docker(&["volume", "create", "-d", &name, "-o", "size=128M", &v]);
    assert!(
        out.status.success(),
        "volume create: {}\ndockerd log:\n{}",
        text(&out.stderr),
        dockerd_log()
    );
    assert!(ceph.image_exists("rbd", &v));
    let mnt = format!("{v}:/data");
    let out = d.docker(&[
        "run",
        "--rm",
        "--network",
        "none",
        "--pull",
        "never",
        "-v",
        &mnt,
        IMAGE,
        "sh",
        "-c",
        // The sleep outlasts the volume worker's idle time: it retires while the volume
        // is mounted, and its mapper is handed to the plugin (PID 1 of its namespace).
        "echo through-the-managed-plugin > /data/f && sync && sleep 3",
    ]);
    assert!(
        out.status.success(),
        "docker run: {}\ndockerd log:\n{}",
        text(&out.stderr),
        dockerd_log()
    );
    let got = d.ok(&[
        "run",
        "--rm",
        "--network",
        "none",
        "--pull",
        "never",
        "-v",
        &mnt,
        IMAGE,
        "cat",
        "/data/f",
    ]);
    assert_eq!(got, "through-the-managed-plugin\n");

    // The state lives on the host, where rbdctl and a reinstalled plugin find it.
    assert!(
        std::fs::read_dir(&state).map(|r| r.count()).unwrap_or(0) > 0,
        "no state written to {}",
        state.display()
    );
    d.ok(&["volume", "rm", &v]);
    assert!(!ceph.image_exists("rbd", &v), "rbd ls still shows {v}");

    // The plugin is PID 1 of its PID namespace: the mappers it adopted from retired
    // workers are reaped once they exit, not left as zombies.
    let pid = plugin_pid(&node).expect("the managed plugin's process");
    assert!(
        dockerd_log().contains("reaping orphaned processes"),
        "the plugin did not start its reaper:\n{}",
        dockerd_log()
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let z: Vec<u32> = children(pid)
            .into_iter()
            .filter(|c| is_zombie(*c))
            .collect();
        if z.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "zombies under the plugin (pid {pid}): {z:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(plugin);
}

/// The host pid of the managed plugin's process: PID 1 of its own PID namespace, whose
/// environment carries this test's unique node id.
fn plugin_pid(node: &str) -> Option<u32> {
    let want = format!("RBD_NODE_ID={node}");
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let ns_init = status
            .lines()
            .find_map(|l| l.strip_prefix("NSpid:"))
            .is_some_and(|v| v.split_whitespace().last() == Some("1"));
        let env = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
        (ns_init && env.split(|b| *b == 0).any(|kv| kv == want.as_bytes())).then_some(pid)
    })
}
