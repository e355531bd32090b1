//! Volumes in containers, through the real docker CLI, a real dockerd and the real cluster,
//! mapped by the userspace mapper (FUSE + loop): data written in one container is read back
//! with the right checksum in the next; two containers share a mount; a plugin restart
//! does not disturb a running container; `--volume-driver` creates volumes on the fly.
//!
//! dockerd finds the plugin through a unique `/etc/docker/plugins/rbd-<unique>.spec`, and
//! each test has a dockerd of its own (see `common::Dockerd`).
//!
//! Needs `CEPH_CONF`, `DOCKER_HOST` and root.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

fn path_of(env: &DockerEnv, name: &str) -> String {
    let r = call(
        &env.plugin.socket,
        "VolumeDriver.Path",
        json!({"Name": name}),
    );
    assert_eq!(r.err(), "", "Path: {}", r.err());
    r.json()["Mountpoint"].as_str().unwrap_or("").to_string()
}

/// Nothing of the volume is left on this node: no mount, no loop device, no mountpoint.
fn assert_detached(env: &DockerEnv, name: &str) {
    assert_eq!(path_of(env, name), "", "{name} is still mounted");
    let mounts = env.mounts();
    assert!(mounts.is_empty(), "mounts left: {mounts:?}");
    let loops = env.loop_devices();
    assert!(loops.is_empty(), "loop devices left: {loops:?}");
}

#[test]
fn data_written_in_one_container_is_read_back_in_the_next() {
    let Some(env) = DockerEnv::setup("mnt-rw") else {
        return;
    };
    let d = &env.dockerd;
    let v = testkit::unique("v1");
    let _guard = env.guard(&v);
    d.ok(&[
        "volume",
        "create",
        "-d",
        env.driver(),
        "-o",
        "size=256M",
        &v,
    ]);
    let mnt = format!("{v}:/data");

    // Writer: 8 MiB of random data and its checksum, then the container is removed.
    let w = testkit::unique("w");
    let out = d.ok(&[
        "run",
        "--name",
        &w,
        "--network",
        "none",
        "--pull",
        "never",
        "-v",
        &mnt,
        IMAGE,
        "sh",
        "-c",
        "dd if=/dev/urandom of=/data/blob bs=1M count=8 2>/dev/null && sync && \
         sha256sum /data/blob | cut -d' ' -f1 | tee /data/blob.sum",
    ]);
    let sum = out.trim().to_string();
    assert_eq!(sum.len(), 64, "no checksum: {out:?}");
    d.ok(&["rm", &w]);
    assert_detached(&env, &v);

    // Reader: a new container, the same checksum.
    let out = d.ok(&[
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
        "sha256sum /data/blob | cut -d' ' -f1; cat /data/blob.sum; df -T /data | tail -1",
    ]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.first().copied(), Some(sum.as_str()), "{out}");
    assert_eq!(lines.get(1).copied(), Some(sum.as_str()), "{out}");
    assert_detached(&env, &v);

    // The data lives in Ceph: the image is in the pool and nothing is mapped any more.
    let ceph = Ceph::new(&env.conf);
    assert!(ceph.image_exists("rbd", &v));
    d.ok(&["volume", "rm", &v]);
    assert!(!ceph.image_exists("rbd", &v), "rbd ls still shows {v}");
}

#[test]
fn two_containers_share_a_volume_and_the_last_stop_unmounts() {
    let Some(env) = DockerEnv::setup("mnt-share") else {
        return;
    };
    let d = &env.dockerd;
    let v = testkit::unique("vs");
    let _guard = env.guard(&v);
    d.ok(&[
        "volume",
        "create",
        "-d",
        env.driver(),
        "-o",
        "size=128M",
        &v,
    ]);
    let mnt = format!("{v}:/data");

    let a = Container::run(d, &["-v", &mnt], "sleep 600");
    let b = Container::run(d, &["-v", &mnt], "sleep 600");
    let mp = path_of(&env, &v);
    assert!(!mp.is_empty(), "not mounted while two containers run");

    // Removing a volume in use is refused with the reason (dockerd refuses it itself, so
    // ask the plugin directly), and the image stays.
    let r = call(
        &env.plugin.socket,
        "VolumeDriver.Remove",
        json!({"Name": v}),
    );
    assert!(
        r.err().contains("in use"),
        "Remove while mounted: {}",
        text(&r.body)
    );
    assert!(Ceph::new(&env.conf).image_exists("rbd", &v));

    a.exec("echo from-a > /data/a && sync");
    assert_eq!(b.exec("cat /data/a").trim(), "from-a");
    b.exec("echo from-b > /data/b && sync");
    assert_eq!(a.exec("cat /data/b").trim(), "from-b");

    // One stops: the other keeps its mount, and it stays writable.
    a.stop();
    assert_eq!(
        path_of(&env, &v),
        mp,
        "stopping one container changed the mount"
    );
    b.exec("echo still > /data/c && sync");
    assert_eq!(b.exec("cat /data/a /data/c"), "from-a\nstill\n");

    // Both stopped: unmounted and unmapped.
    b.stop();
    assert_detached(&env, &v);
    drop(b);
    drop(a);
    let out = d.ok(&[
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
        "/data/a",
        "/data/b",
        "/data/c",
    ]);
    assert_eq!(out, "from-a\nfrom-b\nstill\n");
    d.ok(&["volume", "rm", &v]);
}

#[test]
fn a_container_keeps_working_across_a_plugin_restart() {
    let Some(mut env) = DockerEnv::setup("mnt-restart") else {
        return;
    };
    let v = testkit::unique("vr");
    let _guard = env.guard(&v);
    env.dockerd.ok(&[
        "volume",
        "create",
        "-d",
        env.driver(),
        "-o",
        "size=128M",
        &v,
    ]);
    let mnt = format!("{v}:/data");
    let c = Container::run(&env.dockerd, &["-v", &mnt], "sleep 600");
    c.exec("echo before > /data/f && sync");
    let mp = path_of(&env, &v);

    // Stop the plugin: the container's I/O does not go through it.
    let status = env.plugin.stop(Duration::from_secs(30)).expect("status");
    assert!(status.success(), "{status}");
    c.exec("echo while-down >> /data/f && sync");

    // Start it again on the same socket and state: it finds the attachment.
    env.plugin = Plugin::start(&env.spec);
    assert_eq!(path_of(&env, &v), mp, "the restarted plugin lost the mount");
    c.exec("echo after >> /data/f && sync");
    assert_eq!(c.exec("cat /data/f"), "before\nwhile-down\nafter\n");
    let r = call(&env.plugin.socket, "VolumeDriver.Get", json!({"Name": v}));
    assert_eq!(
        r.json()["Volume"]["Mountpoint"],
        json!(mp),
        "{}",
        text(&r.body)
    );

    // Docker's Unmount at stop reaches the new plugin, which unmounts and unmaps.
    c.stop();
    drop(c);
    assert_detached(&env, &v);
    let out = env.dockerd.ok(&[
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
    assert_eq!(out, "before\nwhile-down\nafter\n");
    env.dockerd.ok(&["volume", "rm", &v]);
}

#[test]
fn volume_driver_flag_creates_the_volume_on_the_fly() {
    let Some(env) = DockerEnv::setup("mnt-fly") else {
        return;
    };
    let d = &env.dockerd;
    let ceph = Ceph::new(&env.conf);
    let v = testkit::unique("new");
    let _guard = env.guard(&v);
    assert!(!ceph.image_exists("rbd", &v));
    let mnt = format!("{v}:/data");
    d.ok(&[
        "run",
        "--rm",
        "--network",
        "none",
        "--pull",
        "never",
        "--volume-driver",
        env.driver(),
        "-v",
        &mnt,
        IMAGE,
        "sh",
        "-c",
        "echo made-on-the-fly > /data/x",
    ]);
    assert!(
        ceph.image_exists("rbd", &v),
        "no image {v} after docker run"
    );
    // The node default size (1 GiB) applies.
    assert_eq!(
        ceph.info(&format!("rbd/{v}"))["size"].as_u64(),
        Some(1 << 30)
    );
    let out = d.ok(&[
        "run",
        "--rm",
        "--network",
        "none",
        "--pull",
        "never",
        "--volume-driver",
        env.driver(),
        "-v",
        &mnt,
        IMAGE,
        "cat",
        "/data/x",
    ]);
    assert_eq!(out, "made-on-the-fly\n");
    assert_detached(&env, &v);
    d.ok(&["volume", "rm", &v]);
    assert!(!ceph.image_exists("rbd", &v));
}

/// Seed 003: a database-like writer on node A writes and its container is destroyed; a new
/// container on node B reads the same data. Two "nodes" here are two plugin instances
/// (their own node id, state directory and mount root) with a dockerd each, on one cluster.
#[test]
fn data_written_on_node_a_is_read_on_node_b() {
    let Some(a) = DockerEnv::setup("mnt-nodea") else {
        return;
    };
    let Some(b) = DockerEnv::setup("mnt-nodeb") else {
        return;
    };
    assert_ne!(a.spec.node_id, b.spec.node_id);
    let v = testkit::unique("db");
    let _guard = a.guard(&v);
    a.dockerd
        .ok(&["volume", "create", "-d", a.driver(), "-o", "size=256M", &v]);
    // Node B's plugin finds the volume through the cluster-wide index.
    let r = call(&b.plugin.socket, "VolumeDriver.Get", json!({"Name": v}));
    assert_eq!(r.err(), "", "node B cannot see {v}");
    let mnt = format!("{v}:/data");
    let writer = "i=0; while [ $i -lt 200 ]; do echo \"row $i\" >> /data/table; i=$((i+1)); done; \
                  sync; sha256sum /data/table | cut -d' ' -f1";
    let sum_a = a.dockerd.ok(&[
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
        writer,
    ]);
    assert_detached(&a, &v);

    let sum_b = b.dockerd.ok(&[
        "run",
        "--rm",
        "--network",
        "none",
        "--pull",
        "never",
        "--volume-driver",
        b.driver(),
        "-v",
        &mnt,
        IMAGE,
        "sh",
        "-c",
        "wc -l < /data/table; sha256sum /data/table | cut -d' ' -f1",
    ]);
    let lines: Vec<&str> = sum_b.lines().map(str::trim).collect();
    assert_eq!(lines.first().copied(), Some("200"), "{sum_b}");
    assert_eq!(
        lines.get(1).copied(),
        Some(sum_a.trim()),
        "node B read other data"
    );
    assert_detached(&b, &v);

    // Node B's view of the volume: same image, created by node A.
    let r = call(&b.plugin.socket, "VolumeDriver.Get", json!({"Name": v}));
    assert_eq!(r.err(), "");
    assert_eq!(
        r.json()["Volume"]["Status"]["created_by"],
        json!(a.spec.node_id),
        "{}",
        text(&r.body)
    );
    a.dockerd.ok(&["volume", "rm", &v]);
}
