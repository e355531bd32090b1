//! The plugin process is its node's node daemon (`rbd_driver::daemon::NodeDaemon` over the
//! plugin's driver): it answers other nodes' pings for its node id once connected, reconciles
//! the node when it starts and every `RBD_RECONCILE_INTERVAL`, and stops answering at once
//! when it stops (SIGTERM: its control watch is removed, so another node is not left
//! waiting for a dead watcher).
//!
//! Checked from an observer connection of the test, on the real dev cluster: pings over the
//! control object, and the cluster registry (a stale record of this node is removed by the
//! reconcile on start; a lost record of a mounted volume is made again by a periodic one).
//!
//! Two nodes: two plugin instances (node A and node B: their own node ids, state dirs, mount
//! roots and mapper run dirs) on the same dev cluster, each behind a dockerd of its own
//! (real dockerd, real docker CLI). A container on A uses a volume; on B, `docker volume rm`
//! and `docker run -v` of that volume are refused with an error naming node A and the
//! container's mount ID, nothing is fenced (no blocklist entry, no fence record) and A's
//! container keeps its data. Once A's container is gone, B gets the volume (no fencing).
//! Without A's node daemon nobody would answer B's release request and B would fence A.
//!
//! Needs `CEPH_CONF` and root (and `DOCKER_HOST`, the gate of every Docker test, for the
//! two-node test).

mod common;

use std::time::{Duration, Instant};

use common::*;
use rbd_core::{ConnectOptions, EntityAddr, Rados, Timeouts};
use rbd_driver::cluster::{
    ControlClient, HolderRecord, ImageRef, Mode, NAMESPACE, NodeId, PingResult, Registry,
};
use serde_json::json;
use testkit::cmd::wait_every;

const POOL: &str = "rbd";

fn observer(conf: &std::path::Path) -> Rados {
    Rados::connect(
        &ConnectOptions::new()
            .conf_file(conf)
            .timeouts(Timeouts::uniform(Duration::from_secs(20))),
    )
    .expect("observer connection")
}

fn ping(rados: &Rados, node: &str) -> PingResult {
    ControlClient::new(rados, POOL, NAMESPACE, NodeId::new("observer").unwrap())
        .unwrap()
        .ping(&NodeId::new(node).unwrap(), Duration::from_secs(2))
        .unwrap()
}

/// How often the waits poll (each check asks the cluster).
const POLL: Duration = Duration::from_millis(200);

#[test]
fn the_plugin_answers_for_its_node_and_reconciles_on_start_and_periodically() {
    let Some(conf) = testkit::ceph_conf() else {
        return;
    };
    if !testkit::require_root() {
        return;
    }
    let rados = observer(&conf);
    let reg = Registry::open(&rados, POOL, NAMESPACE).unwrap();
    let dir = TempDir::new("nd");
    let _leftovers = MapperLeftovers {
        run_dirs: vec![dir.path().join("run")],
        mount_roots: vec![dir.path().join("mnt")],
    };
    let mut spec = PluginSpec::new(&conf, dir.path());
    let node = NodeId::new(spec.node_id.clone()).unwrap();
    assert_ne!(ping(&rados, node.as_str()), PingResult::Alive);

    // A record of this node for an image it does not map: the reconcile on start removes
    // it. The interval is long, so only the start-up reconcile can.
    let bogus = ImageRef::new(POOL, "", testkit::unique("gone"), testkit::unique("id"));
    reg.register(&bogus, HolderRecord::new(node.clone(), Mode::Rw))
        .unwrap();
    struct Unregister<'a>(&'a Registry, &'a ImageRef, &'a NodeId);
    impl Drop for Unregister<'_> {
        fn drop(&mut self) {
            let _ = self.0.unregister(self.1, self.2);
        }
    }
    let _unregister = Unregister(&reg, &bogus, &node);
    spec.env
        .insert("RBD_RECONCILE_INTERVAL".into(), "3600".into());
    let mut plugin = Plugin::start(&spec);
    assert_eq!(
        ping(&rados, node.as_str()),
        PingResult::Alive,
        "the plugin does not answer for its node:\n{}",
        plugin.log_text()
    );
    assert!(
        wait_every(Duration::from_secs(20), POLL, || reg
            .get(&bogus)
            .unwrap()
            .is_none()),
        "the reconcile on start did not remove the stale record:\n{}",
        plugin.log_text()
    );
    plugin.stop(Duration::from_secs(30));

    // Periodic reconciles: a lost record of a mounted volume is made again.
    spec.env.insert("RBD_RECONCILE_INTERVAL".into(), "1".into());
    let mut plugin = Plugin::start(&spec);
    let name = testkit::unique("nd");
    let _guard = VolumeGuard {
        socket: plugin.socket.clone(),
        ceph: conf.clone(),
        pool: POOL.into(),
        name: name.clone(),
    };
    let r = call(
        &plugin.socket,
        "VolumeDriver.Create",
        json!({"Name": name, "Opts": {"size": "32M"}}),
    );
    assert_eq!(r.err(), "", "create: {}", r.err());
    let r = call(
        &plugin.socket,
        "VolumeDriver.Mount",
        json!({"Name": name, "ID": "ctr-1"}),
    );
    assert_eq!(r.err(), "", "mount: {}\n{}", r.err(), plugin.log_text());
    let find = || {
        reg.list()
            .unwrap()
            .entries
            .into_values()
            .find(|e| e.image == name)
    };
    let entry = find().expect("registered");
    assert_eq!(entry.holders[0].node, node);
    let image = entry.image_ref();
    assert!(reg.unregister(&image, &node).unwrap());
    assert!(
        wait_every(Duration::from_secs(20), POLL, || find().is_some_and(|e| e
            .holders
            .iter()
            .any(|h| h.node == node && h.mount_ids.contains("ctr-1")))),
        "no periodic reconcile re-registered the mounted volume:\n{}",
        plugin.log_text()
    );
    let r = call(
        &plugin.socket,
        "VolumeDriver.Unmount",
        json!({"Name": name, "ID": "ctr-1"}),
    );
    assert_eq!(r.err(), "");
    let r = call(&plugin.socket, "VolumeDriver.Remove", json!({"Name": name}));
    assert_eq!(r.err(), "");

    // SIGTERM: the daemon stops and its watch goes with it at once; the plugin exits
    // within its shutdown bound (no request is open: well below the 10 s grace + 3 s).
    let t = Instant::now();
    let status = plugin.stop(Duration::from_secs(30)).expect("exit status");
    assert!(status.success(), "{status}:\n{}", plugin.log_text());
    assert!(
        t.elapsed() < Duration::from_secs(13),
        "the plugin took {:?} to stop",
        t.elapsed()
    );
    let t = Instant::now();
    assert_eq!(
        ping(&rados, node.as_str()),
        PingResult::Silent { timed_out: 0 }
    );
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "a ping waited {:?} for the stopped plugin's watch",
        t.elapsed()
    );
    let log = plugin.log_text();
    assert!(log.contains("stopping the node daemon"), "{log}");
}

/// Blocklist entries that cover `addr` (that exact client, or its whole host). Only this
/// test's clients have these addresses: other tests running meanwhile do not disturb it.
fn fenced(rados: &Rados, addr: &EntityAddr) -> Vec<EntityAddr> {
    rados
        .blocklist_ls()
        .unwrap()
        .into_iter()
        .map(|b| b.addr)
        .filter(|b| b.ip == addr.ip && (b.nonce == addr.nonce || b.nonce == 0))
        .collect()
}

fn image_id(rados: &Rados, name: &str) -> Option<String> {
    let io = rados.ioctx(POOL).unwrap();
    rbd_core::rbd::list(&io)
        .unwrap()
        .into_iter()
        .find(|s| s.name == name)
        .map(|s| s.id)
}

#[test]
fn node_b_is_refused_a_volume_that_a_container_on_node_a_uses() {
    let Some(conf) = testkit::ceph_conf() else {
        return;
    };
    if testkit::docker_host().is_none() || !testkit::require_root() {
        return;
    }
    let rados = observer(&conf);
    let reg = Registry::open(&rados, POOL, NAMESPACE).unwrap();
    // Dropped in reverse order: containers, dockerds, the volume, spec files, plugins,
    // mapper leftovers, the directory.
    let dir = TempDir::new("nd2");
    let (da, db) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::create_dir_all(&da).unwrap();
    std::fs::create_dir_all(&db).unwrap();
    let _leftovers = MapperLeftovers {
        run_dirs: vec![da.join("run"), db.join("run")],
        mount_roots: vec![da.join("mnt"), db.join("mnt")],
    };
    let mut spec_a = PluginSpec::new(&conf, &da);
    spec_a.node_id = testkit::unique("node-a");
    let mut spec_b = PluginSpec::new(&conf, &db);
    spec_b.node_id = testkit::unique("node-b");
    let plugin_a = Plugin::start(&spec_a);
    let plugin_b = Plugin::start(&spec_b);
    let (a_id, b_id) = (spec_a.node_id.as_str(), spec_b.node_id.as_str());
    for n in [a_id, b_id] {
        assert_eq!(
            ping(&rados, n),
            PingResult::Alive,
            "node {n} does not answer"
        );
    }
    let spec_file_a = SpecFile::new(&testkit::unique("rbda"), &plugin_a.socket);
    let spec_file_b = SpecFile::new(&testkit::unique("rbdb"), &plugin_b.socket);
    let (drv_a, drv_b) = (spec_file_a.name.as_str(), spec_file_b.name.as_str());
    let v = testkit::unique("ndv");
    let _volume = VolumeGuard {
        socket: plugin_a.socket.clone(),
        ceph: conf.clone(),
        pool: POOL.into(),
        name: v.clone(),
    };
    let dockerd_a = Dockerd::start();
    let dockerd_b = Dockerd::start();
    let logs = || {
        format!(
            "plugin A log:\n{}\nplugin B log:\n{}",
            plugin_a.log_text(),
            plugin_b.log_text()
        )
    };

    dockerd_a.ok(&["volume", "create", "-d", drv_a, "-o", "size=64M", &v]);
    let id = image_id(&rados, &v).expect("the volume's image");
    // B's plugin finds the volume through the cluster-wide index; now B's dockerd knows it
    // as a volume of B's plugin.
    dockerd_b.ok(&["volume", "create", "-d", drv_b, &v]);
    let mnt = format!("{v}:/data");

    // A container on A uses the volume.
    let c = Container::run(
        &dockerd_a,
        &["-v", &mnt],
        "echo from-a > /data/f && sync && sleep 600",
    );
    let entry = || {
        reg.list()
            .unwrap()
            .entries
            .into_values()
            .find(|e| e.image_id == id)
    };
    assert!(
        wait_every(Duration::from_secs(30), POLL, || entry()
            .is_some_and(|e| e.holders.iter().any(|h| !h.mount_ids.is_empty()))),
        "A did not register the mounted volume: {:?}\n{}",
        entry(),
        logs()
    );
    let e = entry().unwrap();
    assert_eq!(e.holders.len(), 1, "{e:?}");
    assert_eq!(e.holders[0].node.as_str(), a_id);
    let mount_ids: Vec<String> = e.holders[0].mount_ids.iter().cloned().collect();
    let a_addr = e.holders[0].client_addr.expect("A's mapping address");
    assert_eq!(c.exec("cat /data/f").trim(), "from-a");
    let before = fenced(&rados, &a_addr);
    let fences = || {
        reg.fences(true)
            .unwrap()
            .into_iter()
            .filter(|f| f.image.image_id == id)
            .count()
    };
    assert_eq!(fences(), 0);

    // On B: removing the volume, and running a container with it, are refused, naming node
    // A and the container's mount ID; nothing is fenced, A keeps the volume.
    let run_b = |script: &str| {
        vec![
            "run".to_string(),
            "--rm".into(),
            "--network".into(),
            "none".into(),
            "--pull".into(),
            "never".into(),
            "--volume-driver".into(),
            drv_b.into(),
            "-v".into(),
            mnt.clone(),
            IMAGE.into(),
            "sh".into(),
            "-c".into(),
            script.into(),
        ]
    };
    let mut want = String::from("from-a\n");
    for args in [
        vec!["volume".to_string(), "rm".into(), v.clone()],
        run_b("cat /data/f"),
    ] {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let t = Instant::now();
        let err = dockerd_b.fails(&args);
        eprintln!(
            "node B: docker {} ({:?}): {}",
            args.join(" "),
            t.elapsed(),
            err.trim()
        );
        assert!(
            err.contains(&format!("node {a_id}")),
            "docker {} on B does not name node A: {err}\n{}",
            args.join(" "),
            logs()
        );
        for m in &mount_ids {
            assert!(err.contains(m.as_str()), "{err} lacks the mount ID {m}");
        }
        assert_eq!(fenced(&rados, &a_addr), before, "B's request fenced A");
        assert_eq!(fences(), 0, "a fence was recorded");
        let e = entry().expect("A's registration");
        assert_eq!(e.holders.len(), 1, "{e:?}");
        assert_eq!(e.holders[0].node.as_str(), a_id);
        assert_eq!(image_id(&rados, &v).as_deref(), Some(id.as_str()));
        // A's container still reads and writes its volume.
        c.exec("echo again >> /data/f && sync");
        want.push_str("again\n");
        assert_eq!(c.exec("cat /data/f"), want);
        let r = call(&plugin_b.socket, "VolumeDriver.Path", json!({"Name": v}));
        assert_eq!(r.json()["Mountpoint"], json!(""), "B mounted it");
    }
    assert_eq!(ping(&rados, a_id), PingResult::Alive);

    // A's container is destroyed: A unmounts and unregisters; B gets the volume and its
    // data without any fencing.
    docker_ok(&dockerd_a.host, &["rm", "-f", &c.name]);
    drop(c);
    assert!(
        wait_every(Duration::from_secs(30), POLL, || entry()
            .is_none_or(|e| e.holders.is_empty())),
        "A is still registered: {:?}",
        entry()
    );
    let args = run_b("cat /data/f");
    let out = dockerd_b.ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(out, want, "{}", logs());
    assert_eq!(fenced(&rados, &a_addr), before, "the move fenced A");
    assert_eq!(fences(), 0);
    dockerd_b.ok(&["volume", "rm", &v]);
    assert_eq!(image_id(&rados, &v), None, "the image is still there");
}
