//! The reconcile triggers of the driver's own paths, with NO node daemon running: an
//! attach and a remove on a node clean that node's stale devices of the volume before
//! doing anything else — a device of an older image with the same name (removed and
//! recreated on another node), and a device of the same image id whose client was
//! blocklisted (fenced by another node) — each with a report and a log line saying why.
//!
//! Against the real dev cluster with the real userspace mapper (as root). The two "nodes"
//! are drivers with their own node id, state dir, mount root and mapper run dir, in a
//! cluster-layer namespace of this test's own.

mod volume_support;

use rbd_core::EntityAddr;
use rbd_driver::DriverError;
use rbd_driver::cluster::{FenceTarget, ImageRef, StaleReason};
use rbd_driver::mapper::Mapping;
use rbd_driver::volume::{
    AccessMode, AttachReport, Driver, DriverConfig, RemoveOptions, RemoveReport,
};
use volume_support::attach::{mappings, mount_at, node_config, sha256, write_file};
use volume_support::{Env, POOL, env, spec};

struct TestNode {
    cfg: DriverConfig,
    driver: Driver,
}

/// A node without a daemon.
fn node(env: &Env, name: &str) -> TestNode {
    let cfg = node_config(env, name);
    let driver = env.driver_with(cfg.clone());
    TestNode { cfg, driver }
}

fn image_of(d: &Driver, name: &str) -> ImageRef {
    let i = d.get(name).unwrap();
    ImageRef::new(&i.pool, &i.namespace, &i.image, &i.image_id)
}

/// A's volume `name` attached read-write with a file written; returns the mapping.
fn attach_and_write(env: &Env, a: &TestNode, name: &str) -> (Mapping, String) {
    let mp = a
        .driver
        .attach(name, "ctr-1", Some(AccessMode::ReadWrite))
        .unwrap();
    let sum = write_file(&mp.join("old"), 1 << 20, 11);
    let id = image_of(&a.driver, name).image_id;
    let m = mappings(&a.cfg, POOL, &id).remove(0);
    assert!(m.client_addr.is_some() && m.pid.is_some(), "{m:?}");
    assert!(env.state(&a.cfg).volumes.contains_key(name));
    (m, sum)
}

/// B removes `name` while A (no daemon: silent) holds it — A is fenced — and creates it
/// again. Returns the new image id.
fn remove_and_recreate_on(b: &TestNode, name: &str, old: &Mapping) -> String {
    let r = b
        .driver
        .remove_with(name, &RemoveOptions::default())
        .unwrap();
    let claim = r.claim.as_ref().expect("claimed");
    assert_eq!(claim.fenced.len(), 1, "{r:?}");
    assert!(
        claim.fenced[0]
            .record
            .addrs
            .iter()
            .any(|a| Some(*a) == old.client_addr),
        "{r:?}"
    );
    let new = b.driver.create(name, &spec(&[("size", "32M")])).unwrap();
    assert_ne!(new.image_id, old.image_id);
    new.image_id
}

/// The one cleanup of `old`'s device in `cleaned`, whose reasons include `want`.
fn cleaned_one<'a>(
    cleaned: &'a [rbd_driver::cluster::CleanupReport],
    old: &Mapping,
) -> &'a rbd_driver::cluster::CleanupReport {
    assert_eq!(cleaned.len(), 1, "{cleaned:#?}");
    let c = &cleaned[0];
    assert_eq!(c.mapping.image_id, old.image_id, "{c:#?}");
    assert_eq!(c.mapping.device, old.device, "{c:#?}");
    assert!(c.is_clean(), "{c:#?}");
    let dev = old.device.display().to_string();
    assert!(c.log_line.contains(&dev), "{}", c.log_line);
    assert!(c.log_line.contains(&old.image_id), "{}", c.log_line);
    c
}

fn assert_image_gone(c: &rbd_driver::cluster::CleanupReport) {
    assert!(
        c.reasons.contains(&StaleReason::ImageGone),
        "{:?}",
        c.reasons
    );
    assert!(
        c.log_line.contains("because its image id no longer exists"),
        "{}",
        c.log_line
    );
}

/// A fenced client's device: stale because its client is on the blocklist, or, when the
/// mapper already noticed the fence itself (its watchdog looks every few seconds) and
/// exited, because its mapper is gone.
fn assert_fenced(c: &rbd_driver::cluster::CleanupReport, addr: &EntityAddr) {
    let blocklisted = c
        .reasons
        .iter()
        .any(|r| matches!(r, StaleReason::Blocklisted { addr: a, .. } if a.same_instance(addr)));
    let mapper_gone = c
        .reasons
        .iter()
        .any(|r| matches!(r, StaleReason::MapperGone { .. }));
    assert!(blocklisted || mapper_gone, "{:?}", c.reasons);
    if blocklisted {
        assert!(
            c.log_line
                .contains(&format!("its client {addr} is blocklisted")),
            "{}",
            c.log_line
        );
    } else {
        eprintln!(
            "the fenced mapper exited before the attach looked: {}",
            c.log_line
        );
        assert!(c.log_line.contains("mapper process"), "{}", c.log_line);
    }
}

/// Nothing of `old` is left on node `n`: no mapping of its image id (its loop device may
/// have been reused by the new mapping since).
fn assert_old_gone(n: &TestNode, old: &Mapping) {
    let maps = mappings(&n.cfg, POOL, &old.image_id);
    assert!(maps.is_empty(), "the old mapping is left: {maps:?}");
}

/// Node `by` fences node `holder`'s client `addr` on `image` (what a claim does to a silent
/// holder, or an operator's `rbdctl fence image`).
fn fence_from(
    by: &TestNode,
    holder: &TestNode,
    image: &ImageRef,
    addr: EntityAddr,
) -> rbd_driver::cluster::FenceOutcome {
    by.driver
        .cluster()
        .fence(
            &FenceTarget {
                image: image.clone(),
                node: Some(holder.driver.node().clone()),
                addrs: vec![addr],
                reason: "test: fenced by node b".into(),
            },
            &[],
        )
        .unwrap()
}

fn attach_report(n: &TestNode, name: &str, mount_id: &str) -> AttachReport {
    n.driver
        .attach_with_report(name, mount_id, Some(AccessMode::ReadWrite))
        .unwrap()
}

#[test]
fn attach_cleans_a_device_of_a_removed_and_recreated_image_without_a_daemon() {
    let Some(env) = env(true) else { return };
    let a = node(&env, "a");
    let b = node(&env, "b");
    let name = env.name("rcn-a");
    a.driver.create(&name, &spec(&[("size", "32M")])).unwrap();
    let (old, _) = attach_and_write(&env, &a, &name);
    let new_id = remove_and_recreate_on(&b, &name, &old);

    // A attaches the name again: its device of the removed image is cleaned first, and
    // the attach gets the new image (never the old device).
    let r = attach_report(&a, &name, "ctr-2");
    eprintln!("{:#?}", r.cleaned);
    let c = cleaned_one(&r.cleaned, &old);
    assert_image_gone(c);
    assert!(
        c.unmounted
            .contains(&std::fs::canonicalize(&r.mountpoint).unwrap()),
        "{c:#?}"
    );
    assert!(
        !r.mountpoint.join("old").exists(),
        "the old device was used"
    );
    let m = mappings(&a.cfg, POOL, &new_id);
    assert_eq!(m.len(), 1, "{m:?}");
    assert_eq!(r.device.as_ref(), Some(&m[0].device));
    assert_ne!(r.client_addr, old.client_addr);
    assert_old_gone(&a, &old);
    // The registry names A for the new image, with the new mapping's address.
    let e = a
        .driver
        .status(&name)
        .unwrap()
        .registry
        .expect("registered");
    assert_eq!(e.image_id, new_id);
    assert_eq!(e.holders.len(), 1);
    assert_eq!(e.holders[0].node.as_str(), "test-a");
    assert_eq!(e.holders[0].client_addr, r.client_addr);
    a.driver.detach(&name, "ctr-2").unwrap();
    a.driver.remove(&name, false).unwrap();
}

#[test]
fn attach_cleans_a_device_whose_client_was_blocklisted_without_a_daemon() {
    let Some(env) = env(true) else { return };
    let a = node(&env, "a");
    let b = node(&env, "b");
    let name = env.name("rcn-b");
    a.driver.create(&name, &spec(&[("size", "32M")])).unwrap();
    let (old, sum) = attach_and_write(&env, &a, &name);
    let image = image_of(&a.driver, &name);
    let addr = old.client_addr.unwrap();

    // Another node fences A's hold of the image (what a claim does to a silent holder, or
    // an operator's `rbdctl fence image`): A's exact mapping client is blocklisted.
    let out = fence_from(&b, &a, &image, addr);
    assert_eq!(out.record.addrs.len(), 1, "{out:?}");
    assert!(out.record.addrs[0].same_instance(&addr));

    // A attaches the same volume (a new mount ID): the fenced device is cleaned first,
    // then the image is mapped afresh with a new client, and the data is there.
    let r = attach_report(&a, &name, "ctr-2");
    eprintln!("{:#?}", r.cleaned);
    let c = cleaned_one(&r.cleaned, &old);
    assert_fenced(c, &addr);
    assert!(
        c.log_line.contains("its mount IDs ctr-1 lost the volume"),
        "{}",
        c.log_line
    );
    assert!(!r.shared, "the fenced mount was shared: {r:?}");
    let m = mappings(&a.cfg, POOL, &image.image_id);
    assert_eq!(m.len(), 1, "{m:?}");
    assert!(m[0].pid.is_some());
    let new_addr = m[0].client_addr.unwrap();
    assert!(!new_addr.same_instance(&addr));
    assert_eq!(r.client_addr, Some(new_addr));
    assert_eq!(sha256(&r.mountpoint.join("old")), sum);
    let st = env.state(&a.cfg);
    let ids: Vec<&String> = st.volumes[&name].mount_ids.iter().collect();
    assert_eq!(ids, vec!["ctr-2"], "the fenced mount IDs are gone");
    let e = a
        .driver
        .status(&name)
        .unwrap()
        .registry
        .expect("registered");
    assert_eq!(e.holders.len(), 1);
    assert_eq!(e.holders[0].client_addr, Some(new_addr));
    a.driver.detach(&name, "ctr-2").unwrap();
    a.driver.remove(&name, false).unwrap();
}

#[test]
fn remove_cleans_a_device_of_a_removed_and_recreated_image_without_a_daemon() {
    let Some(env) = env(true) else { return };
    let a = node(&env, "a");
    let b = node(&env, "b");
    let name = env.name("rcn-c");
    a.driver.create(&name, &spec(&[("size", "32M")])).unwrap();
    let (old, _) = attach_and_write(&env, &a, &name);
    let new_id = remove_and_recreate_on(&b, &name, &old);

    // A removes the (new) volume: its old device does not block it; it is cleaned first.
    let r: RemoveReport = a
        .driver
        .remove_with(&name, &RemoveOptions::default())
        .unwrap();
    eprintln!("{:#?}", r.cleaned);
    let c = cleaned_one(&r.cleaned, &old);
    assert_image_gone(c);
    assert!(r.image_removed, "{r:?}");
    let claim = r.claim.as_ref().unwrap();
    assert!(
        claim.fenced.is_empty() && claim.released_by.is_empty(),
        "{r:?}"
    );
    assert_old_gone(&a, &old);
    assert!(!env.state(&a.cfg).volumes.contains_key(&name));
    assert!(
        !rbd_core::rbd::list(&env.io(POOL, ""))
            .unwrap()
            .iter()
            .any(|s| s.id == new_id),
        "the new image is still there"
    );
    env.assert_nothing(POOL, "", &name);
}

#[test]
fn remove_cleans_a_device_whose_client_was_blocklisted_without_a_daemon() {
    let Some(env) = env(true) else { return };
    let a = node(&env, "a");
    let b = node(&env, "b");
    let name = env.name("rcn-d");
    a.driver.create(&name, &spec(&[("size", "32M")])).unwrap();
    let (old, _) = attach_and_write(&env, &a, &name);
    let image = image_of(&a.driver, &name);
    let addr = old.client_addr.unwrap();

    // Without the fence, the remove is refused: the volume is attached here.
    let e = a.driver.remove(&name, false).unwrap_err();
    assert!(matches!(e, DriverError::InUse { .. }), "{e:?}");
    assert!(e.to_string().contains("ctr-1"), "{e}");

    fence_from(&b, &a, &image, addr);
    // The fenced attachment does not block the remove: it is cleaned first.
    let r = a
        .driver
        .remove_with(&name, &RemoveOptions::default())
        .unwrap();
    eprintln!("{:#?}", r.cleaned);
    let c = cleaned_one(&r.cleaned, &old);
    assert_fenced(c, &addr);
    assert!(r.image_removed, "{r:?}");
    assert_old_gone(&a, &old);
    assert!(mount_at(&a.cfg.mount_root.join(&name)).is_none());
    env.assert_nothing(POOL, "", &name);
    assert!(
        b.driver
            .cluster()
            .registry(POOL)
            .unwrap()
            .get(&image)
            .unwrap()
            .is_none(),
        "a registry record is left"
    );
}
