//! The node daemon and the driver's cluster wiring on one host, against the real dev
//! cluster with the real userspace mapper (as root): release requests answered from the
//! driver's state, reconcile of a fenced mapper's device that no mapper lists any more
//! (found through the state file), registry repair, a device of an image another node
//! holds, and create after a remove elsewhere (the old device cleaned by id, never taken
//! for the new image).
//!
//! Each test's "nodes" are drivers with their own state dir, mount root and mapper run
//! dir, in a cluster-layer namespace of their own (so parallel tests never answer each
//! other).

mod volume_support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use rbd_core::EntityAddr;
use rbd_driver::cluster::{
    HolderRecord, ImageRef, Mode, PingResult, ReleaseAnswer, StaleReason, Verdict,
};
use rbd_driver::daemon::{DaemonOptions, NodeDaemon};
use rbd_driver::mapper;
use rbd_driver::volume::{AccessMode, Driver, DriverConfig, ReconcileOptions};
use volume_support::attach::{
    assert_detached, mappings, mount_at, node_config, pid_alive, sha256, write_file,
};
use volume_support::{Env, POOL, env, spec};

fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A node: its config, driver and daemon.
struct TestNode {
    cfg: DriverConfig,
    driver: Arc<Driver>,
    daemon: Option<NodeDaemon>,
}

fn start(env: &Env, name: &str) -> TestNode {
    let mut cfg = node_config(env, name);
    // A short I/O deadline: the mapper's watchdog (half of it) notices a fence quickly.
    cfg.map_options.io_timeout_secs = Some(4);
    let driver = Arc::new(env.driver_with(cfg.clone()));
    let daemon = NodeDaemon::start(
        driver.clone(),
        DaemonOptions {
            reconcile_interval: Duration::from_secs(3600),
            ..DaemonOptions::default()
        },
    )
    .unwrap();
    TestNode {
        cfg,
        driver,
        daemon: Some(daemon),
    }
}

fn image_of(d: &Driver, name: &str) -> ImageRef {
    let i = d.get(name).unwrap();
    ImageRef::new(&i.pool, &i.namespace, &i.image, &i.image_id)
}

/// Lifts blocklist entries a test made by hand.
struct Unblock(rbd_core::Rados, Vec<EntityAddr>);

impl Drop for Unblock {
    fn drop(&mut self) {
        for a in &self.1 {
            let _ = self.0.blocklist_rm(a);
        }
    }
}

#[test]
fn release_requests_are_answered_from_the_drivers_state() {
    let Some(env) = env(true) else { return };
    let a = start(&env, "a");
    let b = start(&env, "b");
    let name = env.name("rel");
    a.driver.create(&name, &spec(&[("size", "32M")])).unwrap();
    let mp = a.driver.attach(&name, "ctr-1", None).unwrap();
    let sum = write_file(&mp.join("f"), 1 << 20, 3);
    let image = image_of(&a.driver, &name);
    let ctl = b.driver.cluster().control(POOL).unwrap();
    let t = Duration::from_secs(10);

    assert_eq!(
        ctl.ping(a.driver.node(), Duration::from_secs(2)).unwrap(),
        PingResult::Alive
    );
    // In use: refused, naming the mount IDs; nothing changes.
    match ctl.release(a.driver.node(), &image, false, t).unwrap() {
        ReleaseAnswer::Refused { mount_ids, reason } => {
            assert_eq!(mount_ids, vec!["ctr-1".to_string()]);
            assert!(reason.contains(&mp.display().to_string()), "{reason}");
            assert!(reason.contains("read-write"), "{reason}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(mount_at(&mp).is_some());
    let entry = a
        .driver
        .status(&name)
        .unwrap()
        .registry
        .expect("registered");
    let h = &entry.holders[0];
    assert_eq!(h.node.as_str(), "test-a");
    assert_eq!(h.mode, Mode::Rw);
    assert_eq!(h.mount_ids.iter().collect::<Vec<_>>(), vec!["ctr-1"]);
    assert_eq!(h.mount_path.as_deref(), Some(mp.as_path()));
    let m = &mappings(&a.cfg, POOL, &image.image_id)[0];
    assert_eq!(h.client_addr, m.client_addr);
    assert_eq!(h.device.as_deref(), Some(m.device.as_path()));

    // Forced: unmounted, unmapped, state entry and registry record gone.
    assert_eq!(
        ctl.release(a.driver.node(), &image, true, t).unwrap(),
        ReleaseAnswer::Released
    );
    assert_detached(&env, &a.cfg, &name, &image.image_id, &[]);
    assert!(a.driver.status(&name).unwrap().registry.is_none());
    // Nothing of it left: not held.
    assert_eq!(
        ctl.release(a.driver.node(), &image, false, t).unwrap(),
        ReleaseAnswer::NotHeld
    );
    // B takes it with no fencing, and has the data.
    let r = b.driver.attach_with_report(&name, "ctr-b", None).unwrap();
    assert!(r.claim.as_ref().unwrap().fenced.is_empty(), "{r:?}");
    assert_eq!(sha256(&r.mountpoint.join("f")), sum);
    b.driver.detach(&name, "ctr-b").unwrap();

    // A node whose daemon stopped is silent.
    let mut a = a;
    a.daemon.take().unwrap().stop();
    assert!(matches!(
        ctl.ping(a.driver.node(), Duration::from_secs(1)).unwrap(),
        PingResult::Silent { .. }
    ));
    b.driver.remove(&name, false).unwrap();
}

#[test]
fn a_fenced_mapper_that_exited_is_found_through_the_state_file_and_cleaned() {
    let Some(env) = env(true) else { return };
    let a = start(&env, "a");
    let name = env.name("fmx");
    a.driver.create(&name, &spec(&[("size", "32M")])).unwrap();
    let mp = a.driver.attach(&name, "ctr-1", None).unwrap();
    let image = image_of(&a.driver, &name);
    let m = mappings(&a.cfg, POOL, &image.image_id).remove(0);
    let addr = m.client_addr.unwrap();
    let pid = m.pid.unwrap();
    // Fence the mapping's exact client, as another node would.
    let _unblock = Unblock(env.rados.clone(), vec![addr]);
    env.rados
        .blocklist_add(&addr, Some(Duration::from_secs(600)))
        .unwrap();
    // The mapper notices, fails all I/O, exits and removes its record, while the mounted
    // filesystem keeps its loop device: no mapper lists the device any more.
    assert!(
        wait_until(Duration::from_secs(30), || !pid_alive(pid)),
        "the fenced mapper did not exit"
    );
    assert!(
        wait_until(Duration::from_secs(10), || mapper::list_all(&a.cfg.mapper)
            .unwrap()
            .is_empty()),
        "{:?}",
        mapper::list_all(&a.cfg.mapper)
    );
    assert!(mount_at(&mp).is_some(), "the filesystem stays mounted");

    // A dry run reports the device as stale (its mapper is gone), changing nothing.
    let dry = a
        .driver
        .reconcile(&ReconcileOptions {
            dry_run: true,
            ..Default::default()
        })
        .unwrap();
    let c = dry
        .check
        .checks
        .iter()
        .find(|c| c.mapping.image_id == image.image_id)
        .unwrap_or_else(|| panic!("{dry:?}"));
    assert!(
        c.reasons()
            .iter()
            .any(|r| matches!(r, StaleReason::MapperGone { device } if *device == m.device)),
        "{c:?}"
    );
    assert!(
        dry.summary().iter().any(|l| l.contains("mapper process")),
        "{:?}",
        dry.summary()
    );
    assert!(mount_at(&mp).is_some());
    assert!(env.state(&a.cfg).volumes.contains_key(&name));

    // The daemon's reconcile cleans it: unmounted, state entry and registry record gone.
    let rep = a.daemon.as_ref().unwrap().reconcile_now(false).unwrap();
    eprintln!("{:#?}", rep.summary());
    assert!(mount_at(&mp).is_none(), "{rep:?}");
    assert!(!env.state(&a.cfg).volumes.contains_key(&name));
    assert!(a.driver.status(&name).unwrap().registry.is_none());
    assert!(
        rep.summary().iter().any(|l| l.contains(&name)),
        "the report names the volume: {:?}",
        rep.summary()
    );
    // And the volume attaches again at once (a new mapper, a new client address): the
    // exclusive lock the fenced client left is broken (it can never use it again).
    let r = a.driver.attach_with_report(&name, "ctr-2", None).unwrap();
    assert_eq!(r.mountpoint, mp);
    assert!(
        r.cleaned_locks.iter().any(|o| o
            .parse::<EntityAddr>()
            .is_ok_and(|x| x.same_instance(&addr))),
        "{r:?}"
    );
    let m2 = mappings(&a.cfg, POOL, &image.image_id).remove(0);
    assert_ne!(m2.client_addr, Some(addr));
    a.driver.detach(&name, "ctr-2").unwrap();
    a.driver.remove(&name, false).unwrap();
}

#[test]
fn reconcile_repairs_the_registry_and_cleans_devices_other_nodes_hold() {
    let Some(env) = env(true) else { return };
    let a = start(&env, "a");
    let name = env.name("rep");
    a.driver.create(&name, &spec(&[("size", "32M")])).unwrap();
    let mp = a.driver.attach(&name, "ctr-1", None).unwrap();
    let image = image_of(&a.driver, &name);
    let reg = a.driver.cluster().registry(POOL).unwrap();
    let daemon = a.daemon.as_ref().unwrap();

    // A lost record of a healthy attachment is made again, with its address.
    assert!(reg.unregister(&image, a.driver.node()).unwrap());
    let rep = daemon.reconcile_now(false).unwrap();
    assert_eq!(rep.reregistered.len(), 1, "{rep:?}");
    let e = reg.get(&image).unwrap().expect("re-registered");
    assert_eq!(e.holders[0].node.as_str(), "test-a");
    assert_eq!(
        e.holders[0].client_addr,
        mappings(&a.cfg, POOL, &image.image_id)[0].client_addr
    );
    assert_eq!(
        e.holders[0].mount_ids.iter().collect::<Vec<_>>(),
        vec!["ctr-1"]
    );
    // A record of this node for an image it does not map is removed.
    let other = ImageRef::new(POOL, "", "not-mapped-here", "feedface1234");
    reg.register(&other, HolderRecord::new(a.driver.node().clone(), Mode::Rw))
        .unwrap();
    let rep = daemon.reconcile_now(false).unwrap();
    assert_eq!(rep.unregistered.len(), 1, "{rep:?}");
    assert!(reg.get(&other).unwrap().is_none());
    assert!(mount_at(&mp).is_some(), "a current attachment is kept");

    // The registry says another node holds the image now: this node's device is stale.
    assert!(reg.unregister(&image, a.driver.node()).unwrap());
    reg.register(
        &image,
        HolderRecord::new("elsewhere".parse().unwrap(), Mode::Rw),
    )
    .unwrap();
    let rep = daemon.reconcile_now(false).unwrap();
    let cleaned = rep
        .cleaned
        .iter()
        .find(|c| c.mapping.image_id == image.image_id)
        .unwrap_or_else(|| panic!("{rep:?}"));
    assert!(
        cleaned
            .reasons
            .iter()
            .any(|r| matches!(r, StaleReason::HeldByOther { nodes, .. } if nodes[0].as_str() == "elsewhere")),
        "{cleaned:?}"
    );
    assert!(
        cleaned.log_line.contains("registered rw to node elsewhere"),
        "{}",
        cleaned.log_line
    );
    assert_detached(&env, &a.cfg, &name, &image.image_id, &[]);
    // The other node's record is never touched.
    let e = reg.get(&image).unwrap().unwrap();
    assert_eq!(e.holders.len(), 1);
    assert_eq!(e.holders[0].node.as_str(), "elsewhere");
    assert!(
        reg.unregister(&image, &"elsewhere".parse().unwrap())
            .unwrap()
    );
    a.driver.remove(&name, false).unwrap();
}

#[test]
fn create_after_a_remove_elsewhere_cleans_the_old_device_by_id() {
    let Some(env) = env(true) else { return };
    let mut a = start(&env, "a");
    let b = start(&env, "b");
    let name = env.name("reuse");
    let old = a.driver.create(&name, &spec(&[("size", "32M")])).unwrap();
    let mp = a
        .driver
        .attach(&name, "ctr-1", Some(AccessMode::ReadWrite))
        .unwrap();
    write_file(&mp.join("old"), 1 << 20, 1);
    let old_map = mappings(&a.cfg, POOL, &old.image_id).remove(0);
    // A's daemon dies; its mapper keeps running (a long watchdog period would hide the
    // fence from it for a while; here it may or may not notice).
    a.daemon.take().unwrap().stop();

    // B removes the volume (A is silent: fenced) and creates it again.
    b.driver.remove(&name, false).unwrap();
    let fences = b
        .driver
        .cluster()
        .registry(POOL)
        .unwrap()
        .fences(true)
        .unwrap();
    assert_eq!(fences.len(), 1, "{fences:?}");
    assert_eq!(fences[0].fenced_node.as_ref().unwrap().as_str(), "test-a");
    assert!(
        fences[0]
            .addrs
            .iter()
            .any(|x| Some(*x) == old_map.client_addr)
    );
    let new = b.driver.create(&name, &spec(&[("size", "32M")])).unwrap();
    assert_ne!(new.image_id, old.image_id);

    // On A, a create of the same name (what `docker volume create` does before a run)
    // returns the new volume and cleans the old device (its image id is gone).
    let again = a.driver.create(&name, &spec(&[("size", "32M")])).unwrap();
    assert_eq!(again.image_id, new.image_id);
    assert!(mount_at(&mp).is_none(), "the old device is still mounted");
    assert!(!env.state(&a.cfg).volumes.contains_key(&name));
    assert!(
        mappings(&a.cfg, POOL, &old.image_id).is_empty(),
        "the old mapping is left"
    );
    // Attaching on A gives the new, empty volume: never the old device.
    let r = a.driver.attach_with_report(&name, "ctr-2", None).unwrap();
    assert!(!r.mountpoint.join("old").exists());
    let m = mappings(&a.cfg, POOL, &new.image_id);
    assert_eq!(m.len(), 1);
    assert_eq!(r.device.as_ref(), Some(&m[0].device));
    a.driver.detach(&name, "ctr-2").unwrap();
    a.driver.remove(&name, false).unwrap();
}

#[test]
fn attach_reports_steps_and_the_check_finds_nothing_stale_when_all_is_current() {
    let Some(env) = env(true) else { return };
    let a = start(&env, "a");
    let name = env.name("rpt");
    a.driver.create(&name, &spec(&[("size", "32M")])).unwrap();
    let r = a.driver.attach_with_report(&name, "ctr-1", None).unwrap();
    assert!(!r.shared);
    assert!(r.cleaned.is_empty());
    let claim = r.claim.as_ref().unwrap();
    assert!(claim.fenced.is_empty() && claim.released_by.is_empty());
    assert_eq!(claim.entry.holders[0].node.as_str(), "test-a");
    assert!(r.client_addr.is_some() && r.device.is_some());
    assert!(r.warnings.is_empty(), "{:?}", r.warnings);
    let t = r.timings;
    assert!(
        t.total_ms >= t.check_ms + t.claim_ms + t.map_ms + t.mount_ms,
        "{t:?}"
    );
    // A second mount ID shares the mount: no claim; the registry lists both mount IDs.
    let r2 = a.driver.attach_with_report(&name, "ctr-2", None).unwrap();
    assert!(r2.shared && r2.claim.is_none());
    let e = a.driver.status(&name).unwrap().registry.unwrap();
    assert_eq!(
        e.holders[0].mount_ids.iter().collect::<Vec<_>>(),
        vec!["ctr-1", "ctr-2"]
    );
    let rep = a.daemon.as_ref().unwrap().reconcile_now(true).unwrap();
    let c = rep
        .check
        .checks
        .iter()
        .find(|c| c.mapping.image_id == claim.entry.image_id)
        .unwrap();
    assert_eq!(c.verdict, Verdict::Current);
    a.driver.detach(&name, "ctr-1").unwrap();
    let e = a.driver.status(&name).unwrap().registry.unwrap();
    assert_eq!(
        e.holders[0].mount_ids.iter().collect::<Vec<_>>(),
        vec!["ctr-2"]
    );
    a.driver.detach(&name, "ctr-2").unwrap();
    assert!(a.driver.status(&name).unwrap().registry.is_none());
    a.driver.remove(&name, false).unwrap();
}

#[test]
fn an_attach_without_a_node_daemon_warns_that_other_nodes_will_fence_it() {
    let Some(env) = env(true) else { return };
    let mut a = start(&env, "a");
    a.daemon.take().unwrap().stop();
    let name = env.name("nod");
    a.driver.create(&name, &spec(&[("size", "32M")])).unwrap();
    let r = a.driver.attach_with_report(&name, "ctr-1", None).unwrap();
    assert!(
        r.warnings
            .iter()
            .any(|w| w.contains("no node daemon answers") && w.contains("test-a")),
        "{:?}",
        r.warnings
    );
    assert!(!a.driver.daemon_answers(POOL).unwrap());
    a.driver.detach(&name, "ctr-1").unwrap();
    a.driver.remove(&name, false).unwrap();
}

/// A reconcile pass scans this node's mappings once, however many volumes are attached:
/// recovery's health check of each attachment, the cluster check and re-registration all
/// use the one listing (`mapper::list_all_calls` counts the scans). Three attached
/// volumes, one of them with its registry record lost (re-registered from the same
/// listing, with its mapping's address); a dry run scans once too.
#[test]
fn a_reconcile_pass_lists_the_nodes_mappings_once() {
    let Some(env) = env(true) else { return };
    let a = start(&env, "a");
    let daemon = a.daemon.as_ref().unwrap();
    let mut names = Vec::new();
    for i in 0..3 {
        let name = env.name(&format!("once{i}"));
        a.driver.create(&name, &spec(&[("size", "32M")])).unwrap();
        a.driver.attach(&name, "ctr-1", None).unwrap();
        names.push(name);
    }
    let image = image_of(&a.driver, &names[1]);
    let reg = a.driver.cluster().registry(POOL).unwrap();
    assert!(reg.unregister(&image, a.driver.node()).unwrap());

    let (calls, passes) = (mapper::list_all_calls(), daemon.reconcile_count());
    let rep = daemon.reconcile_now(false).unwrap();
    assert_eq!(daemon.reconcile_count() - passes, 1);
    assert_eq!(
        mapper::list_all_calls() - calls,
        1,
        "one pass over 3 attached volumes listed the mappings more than once"
    );
    let recovery = rep.recovery.as_ref().expect("a real pass recovers");
    assert_eq!(recovery.kept.len(), 3, "{recovery:?}");
    assert!(recovery.actions.is_empty(), "{recovery:?}");
    assert_eq!(rep.check.checks.len(), 3, "{rep:?}");
    assert_eq!(rep.reregistered.len(), 1, "{rep:?}");
    assert_eq!(
        reg.get(&image).unwrap().expect("re-registered").holders[0].client_addr,
        mappings(&a.cfg, POOL, &image.image_id)[0].client_addr
    );

    let calls = mapper::list_all_calls();
    daemon.reconcile_now(true).unwrap();
    assert_eq!(mapper::list_all_calls() - calls, 1);
    for n in &names {
        a.driver.detach(n, "ctr-1").unwrap();
        a.driver.remove(n, false).unwrap();
    }
}
