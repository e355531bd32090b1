//! The volume worker (`docker_volume_rbd::worker`) against the real dev cluster: the plugin
//! process never loads librbd, whatever it serves (Create, Get, Mount with the userspace
//! mapper, Unmount, Remove, its node daemon's reconciles); the worker that did the work has
//! librbd and exits once idle; a worker that dies fails its calls with a message saying
//! so, and the next call gets a new one.
//!
//! Needs `CEPH_CONF` (the dev cluster), root, FUSE and loop devices; skipped outside CI
//! when missing, a failure under `CI=true` (see testkit).

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

fn maps_librbd(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .unwrap_or_default()
        .contains("/librbd.so")
}

/// The running volume workers of the plugin `pid`: its children started with
/// `--volume-worker`.
fn workers(pid: u32) -> Vec<u32> {
    children(pid)
        .into_iter()
        .filter(|c| {
            let cmd = std::fs::read(format!("/proc/{c}/cmdline")).unwrap_or_default();
            !is_zombie(*c) && cmd.split(|b| *b == 0).any(|a| a == b"--volume-worker")
        })
        .collect()
}

#[test]
fn librbd_stays_out_of_the_plugin_and_the_idle_worker_exits() {
    let Some((conf, dir)) = setup("worker-idle") else {
        return;
    };
    let ceph = Ceph::new(&conf);
    let mut spec = PluginSpec::new(&conf, dir.path());
    spec.env.insert("RBD_WORKER_IDLE".into(), "2".into());
    // Reconciles often, so several run while a volume is mapped.
    spec.env.insert("RBD_RECONCILE_INTERVAL".into(), "1".into());
    let plugin = Plugin::start(&spec);
    let pid = plugin.pid();
    assert!(!maps_librbd(pid), "librbd loaded at start");
    assert!(workers(pid).is_empty(), "a worker before any call");

    let name = testkit::unique("wk");
    let _guard = VolumeGuard {
        socket: plugin.socket.clone(),
        ceph: conf.clone(),
        pool: "rbd".into(),
        name: name.clone(),
    };
    let r = call(
        &plugin.socket,
        "VolumeDriver.Create",
        json!({"Name": name, "Opts": {"size": "64M"}}),
    );
    assert_eq!(r.err(), "", "create: {}\n{}", r.err(), plugin.log_text());
    assert!(ceph.image_exists("rbd", &name));
    let w = workers(pid);
    assert_eq!(w.len(), 1, "one worker after Create: {w:?}");
    assert!(maps_librbd(w[0]), "the worker runs librbd");
    assert!(!maps_librbd(pid), "the plugin loaded librbd for Create");

    let r = call(&plugin.socket, "VolumeDriver.Get", json!({"Name": name}));
    assert_eq!(r.err(), "");
    assert_eq!(r.json()["Volume"]["Status"]["size"], json!(64 << 20));
    assert_eq!(workers(pid), w, "Get used the same worker");

    // Mount: the worker maps (userspace mapper), formats and mounts; the mountpoint is
    // real and writable; Path (local state) and List see it.
    let r = call(
        &plugin.socket,
        "VolumeDriver.Mount",
        json!({"Name": name, "ID": "c1"}),
    );
    assert_eq!(r.err(), "", "mount: {}\n{}", r.err(), plugin.log_text());
    let mp = r.json()["Mountpoint"]
        .as_str()
        .expect("Mountpoint")
        .to_string();
    std::fs::write(format!("{mp}/f"), b"data").expect("write into the volume");
    let r = call(&plugin.socket, "VolumeDriver.Path", json!({"Name": name}));
    assert_eq!(r.json()["Mountpoint"], json!(mp));

    // The worker retires while the volume stays mounted; the mapper keeps serving it.
    assert!(
        wait_until(Duration::from_secs(20), || workers(pid).is_empty()),
        "the idle worker did not exit: {:?}",
        workers(pid)
    );
    assert_eq!(std::fs::read(format!("{mp}/f")).unwrap(), b"data");
    // Reconciles with a mapped volume (rbd_directory is read with librados) keep
    // librbd out of the plugin.
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        !maps_librbd(pid),
        "the plugin loaded librbd (reconcile?)\n{}",
        plugin.log_text()
    );

    // Unmount and Remove start a new worker.
    let r = call(
        &plugin.socket,
        "VolumeDriver.Unmount",
        json!({"Name": name, "ID": "c1"}),
    );
    assert_eq!(r.err(), "", "unmount: {}\n{}", r.err(), plugin.log_text());
    let w2 = workers(pid);
    assert_eq!(w2.len(), 1, "{w2:?}");
    assert_ne!(w2, w, "a new worker");
    let r = call(&plugin.socket, "VolumeDriver.Remove", json!({"Name": name}));
    assert_eq!(r.err(), "", "remove: {}", r.err());
    assert!(!ceph.image_exists("rbd", &name));
    assert!(!maps_librbd(pid), "the plugin loaded librbd");
    assert!(
        wait_until(Duration::from_secs(20), || workers(pid).is_empty()),
        "the idle worker did not exit: {:?}",
        workers(pid)
    );
}

#[test]
fn a_dead_worker_fails_its_calls_and_the_next_call_gets_a_new_one() {
    let Some((conf, dir)) = setup("worker-dead") else {
        return;
    };
    let plugin = Plugin::start(&PluginSpec::new(&conf, dir.path()));
    let pid = plugin.pid();
    let name = testkit::unique("wd");
    let _guard = VolumeGuard {
        socket: plugin.socket.clone(),
        ceph: conf.clone(),
        pool: "rbd".into(),
        name: name.clone(),
    };
    let r = call(
        &plugin.socket,
        "VolumeDriver.Create",
        json!({"Name": name, "Opts": {"size": "32M"}}),
    );
    assert_eq!(r.err(), "", "create: {}", r.err());
    let w = workers(pid);
    assert_eq!(w.len(), 1, "{w:?}");

    // Stopped, it cannot answer; killed, its call fails at once with a message saying so.
    // SAFETY: kill(2) on the worker's pid, a child of our plugin that has not been reaped
    // (its parent reaps it only after it exits), so the pid is not reused.
    assert_eq!(unsafe { libc::kill(w[0] as i32, libc::SIGSTOP) }, 0);
    let sock = plugin.socket.clone();
    let n = name.clone();
    let get = std::thread::spawn(move || call(&sock, "VolumeDriver.Get", json!({"Name": n})));
    std::thread::sleep(Duration::from_millis(500));
    assert!(!get.is_finished(), "a stopped worker answered");
    let t0 = Instant::now();
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(w[0] as i32, libc::SIGKILL) }, 0);
    let r = get.join().unwrap();
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "the failed call took {:?}",
        t0.elapsed()
    );
    let err = r.err();
    assert!(
        err.contains("volume worker") && err.contains(&format!("pid {}", w[0])),
        "{err}"
    );
    assert!(err.contains("exited"), "{err}");

    // The next call starts a new worker and works.
    let r = call(&plugin.socket, "VolumeDriver.Get", json!({"Name": name}));
    assert_eq!(r.err(), "", "{}", plugin.log_text());
    assert_eq!(r.json()["Volume"]["Name"], json!(name));
    let w2 = workers(pid);
    assert_eq!(w2.len(), 1, "{w2:?}");
    assert_ne!(w2, w);
    assert!(!maps_librbd(pid));
}

/// Removes a pool (test cleanup, also on failure).
struct PoolGuard<'a> {
    ceph: &'a Ceph,
    pool: String,
}

impl Drop for PoolGuard<'_> {
    fn drop(&mut self) {
        let p = self.pool.as_str();
        let _ = self
            .ceph
            .ceph(&["osd", "pool", "rm", p, p, "--yes-i-really-really-mean-it"]);
    }
}

/// A volume mounted in a pool the node daemon did not answer in: the worker asks the
/// plugin (`serve-pool`), whose daemon watches that pool's control object before the
/// mapping is registered there.
#[test]
fn the_worker_has_the_plugins_daemon_serve_a_new_pool_before_registering() {
    let Some((conf, dir)) = setup("worker-pool") else {
        return;
    };
    let ceph = Ceph::new(&conf);
    let pool = testkit::unique("wpool");
    let _pool_guard = PoolGuard {
        ceph: &ceph,
        pool: pool.clone(),
    };
    check(
        "ceph osd pool create",
        &ceph.ceph(&["osd", "pool", "create", &pool, "8"]),
    );
    check("rbd pool init", &ceph.rbd(&["pool", "init", &pool]));
    let mut spec = PluginSpec::new(&conf, dir.path());
    // No periodic reconcile during the test: only the worker's request can add the pool.
    spec.env
        .insert("RBD_RECONCILE_INTERVAL".into(), "3600".into());
    let plugin = Plugin::start(&spec);
    let name = testkit::unique("wp");
    let _guard = VolumeGuard {
        socket: plugin.socket.clone(),
        ceph: conf.clone(),
        pool: pool.clone(),
        name: name.clone(),
    };
    let serving = format!("answering control requests in pool {pool}");
    let r = call(
        &plugin.socket,
        "VolumeDriver.Create",
        json!({"Name": name, "Opts": {"size": "32M", "pool": pool}}),
    );
    assert_eq!(r.err(), "", "create: {}", r.err());
    assert!(
        !plugin.log_text().contains(&serving),
        "served before any mount"
    );
    let r = call(
        &plugin.socket,
        "VolumeDriver.Mount",
        json!({"Name": name, "ID": "m1"}),
    );
    assert_eq!(r.err(), "", "mount: {}\n{}", r.err(), plugin.log_text());
    // The daemon (in the plugin process) serves the pool by the time the attach is done:
    // nothing else could have asked it to (no reconcile ran since the start).
    let log = plugin.log_text();
    assert!(log.contains(&serving), "{serving:?} not in\n{log}");
    let r = call(
        &plugin.socket,
        "VolumeDriver.Unmount",
        json!({"Name": name, "ID": "m1"}),
    );
    assert_eq!(r.err(), "", "unmount: {}", r.err());
    let r = call(&plugin.socket, "VolumeDriver.Remove", json!({"Name": name}));
    assert_eq!(r.err(), "", "remove: {}", r.err());
}
