//! The mapping registry against the real dev cluster: register/update/unregister, RO
//! sharing, RW exclusion, a real race between two client connections, and the fence log.

mod cluster_support;

use std::collections::BTreeSet;
use std::sync::{Arc, Barrier};
use std::time::Duration;

use cluster_support::*;
use rbd_driver::DriverError;
use rbd_driver::cluster::registry::{FENCE_OBJECT, REGISTRY_OBJECT};
use rbd_driver::cluster::{FenceRecord, HolderRecord, ImageRef, Mode, NodeId, Registry};

fn n(s: &str) -> NodeId {
    NodeId::new(s).unwrap()
}

#[test]
fn register_update_unregister_roundtrip() {
    let Some(conf) = conf() else { return };
    let ns = test_namespace();
    let admin = connect(&conf);
    let _g = NsGuard {
        admin: admin.clone(),
        ns: ns.clone(),
    };
    let reg = Registry::open(&admin, POOL, &ns).unwrap();
    let img = ImageRef::new(POOL, "", "vol1", "abc123");
    assert!(reg.get(&img).unwrap().is_none());
    assert!(reg.list().unwrap().entries.is_empty());

    let mut h = HolderRecord::new(n("a"), Mode::Rw);
    h.client_addr = Some("127.0.0.1:0/4242".parse().unwrap());
    let e = reg.register(&img, h.clone()).unwrap();
    assert_eq!(e.epoch, 1);
    assert_eq!(e.mode, Mode::Rw);
    assert_eq!(e.holders.len(), 1);

    // The raw omap value is the documented JSON, under the image id key.
    let raw = admin
        .ioctx(POOL)
        .unwrap()
        .with_namespace(&ns)
        .unwrap()
        .omap_get(REGISTRY_OBJECT, "abc123")
        .unwrap()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&raw).unwrap();
    assert_eq!(v["version"], 1);
    assert_eq!(v["image_id"], "abc123");
    assert_eq!(v["image"], "vol1");
    assert_eq!(v["holders"][0]["node"], "a");
    assert_eq!(v["holders"][0]["client_addr"], "127.0.0.1:0/4242");

    // Re-registering by the same node is idempotent (epoch moves on, since_ms kept).
    let e2 = reg.register(&img, h.clone()).unwrap();
    assert_eq!(e2.epoch, 2);
    assert_eq!(e2.holders[0].since_ms, e.holders[0].since_ms);

    // Mount ids.
    let ids: BTreeSet<String> = ["m1", "m2"].iter().map(|s| s.to_string()).collect();
    let e3 = reg
        .set_mount_ids(&img, &n("a"), ids.clone(), Some("/mnt/x".into()))
        .unwrap();
    assert_eq!(e3.holders[0].mount_ids, ids);
    assert_eq!(e3.epoch, 3);
    assert_eq!(reg.get(&img).unwrap().unwrap(), e3);
    // Only a holder can update its record.
    let err = reg
        .set_mount_ids(&img, &n("b"), BTreeSet::new(), None)
        .unwrap_err();
    assert!(err.to_string().contains("node b does not hold"), "{err}");

    // Another node cannot register while a holds it rw, in either mode; the error names a.
    for mode in [Mode::Rw, Mode::Ro] {
        let err = reg
            .register(&img, HolderRecord::new(n("b"), mode))
            .unwrap_err();
        match &err {
            DriverError::Held {
                node, mount_ids, ..
            } => {
                assert_eq!(node, "a");
                assert_eq!(mount_ids, &vec!["m1".to_string(), "m2".to_string()]);
            }
            other => panic!("expected Held, got {other:?}"),
        }
        assert!(err.to_string().contains("held rw by node a"), "{err}");
    }

    // Unregister only our own: b's attempt changes nothing.
    assert!(!reg.unregister(&img, &n("b")).unwrap());
    assert_eq!(reg.get(&img).unwrap().unwrap(), e3);
    assert!(reg.unregister(&img, &n("a")).unwrap());
    assert!(reg.get(&img).unwrap().is_none());
    assert!(!reg.unregister(&img, &n("a")).unwrap());
}

#[test]
fn read_only_holders_share_and_block_rw() {
    let Some(conf) = conf() else { return };
    let ns = test_namespace();
    let admin = connect(&conf);
    let _g = NsGuard {
        admin: admin.clone(),
        ns: ns.clone(),
    };
    let reg = Registry::open(&admin, POOL, &ns).unwrap();
    let img = ImageRef::new(POOL, "", "shared", "ro0001");
    reg.register(&img, HolderRecord::new(n("a"), Mode::Ro))
        .unwrap();
    let e = reg
        .register(&img, HolderRecord::new(n("b"), Mode::Ro))
        .unwrap();
    assert_eq!(e.mode, Mode::Ro);
    assert_eq!(e.holders.len(), 2);
    // rw by a third node conflicts and names a holder.
    let err = reg
        .register(&img, HolderRecord::new(n("c"), Mode::Rw))
        .unwrap_err();
    assert!(matches!(err, DriverError::Held { ref node, .. } if node == "a" || node == "b"));
    // a cannot upgrade to rw while b also holds it.
    let c = reg
        .try_register(&img, HolderRecord::new(n("a"), Mode::Rw))
        .unwrap()
        .unwrap_err();
    assert_eq!(c.blocking.len(), 1);
    assert_eq!(c.blocking[0].node, n("b"));
    // Once b leaves, a can upgrade.
    assert!(reg.unregister(&img, &n("b")).unwrap());
    let e = reg
        .register(&img, HolderRecord::new(n("a"), Mode::Rw))
        .unwrap();
    assert_eq!(e.mode, Mode::Rw);
    assert_eq!(e.holders.len(), 1);
    // Listing and held_by.
    let l = reg.list().unwrap();
    assert_eq!(l.entries.len(), 1);
    assert!(l.corrupt.is_empty());
    assert_eq!(reg.held_by(&n("a")).unwrap().len(), 1);
    assert!(reg.held_by(&n("b")).unwrap().is_empty());
    let many = reg
        .get_many(&[img.clone(), ImageRef::new(POOL, "", "x", "missing1")])
        .unwrap();
    assert_eq!(many.len(), 1);
    assert!(many.contains_key("ro0001"));
}

/// Two nodes, each with its own client connection, register the same image read-write at
/// the same moment: exactly one wins and the loser's error names the winner. Repeated to
/// exercise the compare-and-swap under real contention.
#[test]
fn rw_race_has_exactly_one_winner() {
    let Some(conf) = conf() else { return };
    let ns = test_namespace();
    let admin = connect(&conf);
    let _g = NsGuard {
        admin: admin.clone(),
        ns: ns.clone(),
    };
    let nodes = ["race-a", "race-b", "race-c"];
    let regs: Vec<Arc<Registry>> = nodes
        .iter()
        .map(|_| Arc::new(Registry::open(&connect(&conf), POOL, &ns).unwrap()))
        .collect();
    for round in 0..15 {
        let img = ImageRef::new(POOL, "", "race", format!("race{round:04}"));
        let barrier = Arc::new(Barrier::new(nodes.len()));
        let handles: Vec<_> = nodes
            .iter()
            .zip(&regs)
            .map(|(name, reg)| {
                let (reg, img, b) = (reg.clone(), img.clone(), barrier.clone());
                let name = n(name);
                std::thread::spawn(move || {
                    b.wait();
                    (
                        name.clone(),
                        reg.register(&img, HolderRecord::new(name, Mode::Rw)),
                    )
                })
            })
            .collect();
        let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let winners: Vec<&NodeId> = results
            .iter()
            .filter(|(_, r)| r.is_ok())
            .map(|(n, _)| n)
            .collect();
        assert_eq!(winners.len(), 1, "round {round}: {results:?}");
        let winner = winners[0].as_str();
        for (name, r) in &results {
            if let Err(e) = r {
                match e {
                    DriverError::Held { node, mode, .. } => {
                        assert_eq!(node, winner, "{name}'s error names {node}");
                        assert_eq!(mode, "rw");
                    }
                    other => panic!("{name}: expected Held, got {other}"),
                }
                assert!(e.to_string().contains(&format!("node {winner}")), "{e}");
            }
        }
        let e = regs[0].get(&img).unwrap().unwrap();
        assert_eq!(e.holders.len(), 1);
        assert_eq!(e.holders[0].node.as_str(), winner);
    }
}

#[test]
fn fence_log_records_lists_and_prunes() {
    let Some(conf) = conf() else { return };
    let ns = test_namespace();
    let admin = connect(&conf);
    let _g = NsGuard {
        admin: admin.clone(),
        ns: ns.clone(),
    };
    let reg = Registry::open(&admin, POOL, &ns).unwrap();
    assert!(reg.fences(true).unwrap().is_empty());
    let img = ImageRef::new(POOL, "", "f", "fence01");
    let mut live = FenceRecord::new(
        img.clone(),
        Some(n("a")),
        n("b"),
        "a did not answer",
        Duration::from_secs(600),
    );
    live.addrs.push("127.0.0.1:0/77".parse().unwrap());
    let mut old = FenceRecord::new(img, None, n("b"), "old", Duration::from_secs(600));
    old.expires_ms = old.at_ms - 1;
    reg.record_fence(&live).unwrap();
    reg.record_fence(&old).unwrap();
    assert_eq!(reg.fences(false).unwrap(), vec![live.clone()]);
    assert_eq!(reg.fences(true).unwrap().len(), 2);
    assert_eq!(reg.prune_fences().unwrap(), 1);
    assert_eq!(reg.fences(true).unwrap(), vec![live]);
    // The fence log is a sibling object, not part of the registry listing.
    assert!(reg.list().unwrap().entries.is_empty());
    let keys = admin
        .ioctx(POOL)
        .unwrap()
        .with_namespace(&ns)
        .unwrap()
        .omap_get_keys(FENCE_OBJECT)
        .unwrap();
    assert_eq!(keys.len(), 1);
}

#[test]
fn corrupt_entries_are_reported_not_fatal() {
    let Some(conf) = conf() else { return };
    let ns = test_namespace();
    let admin = connect(&conf);
    let _g = NsGuard {
        admin: admin.clone(),
        ns: ns.clone(),
    };
    let reg = Registry::open(&admin, POOL, &ns).unwrap();
    let good = ImageRef::new(POOL, "", "g", "good01");
    reg.register(&good, HolderRecord::new(n("a"), Mode::Rw))
        .unwrap();
    reg.ioctx()
        .omap_set(REGISTRY_OBJECT, &[("bad001", b"{not json")])
        .unwrap();
    let l = reg.list().unwrap();
    assert_eq!(l.entries.len(), 1);
    assert_eq!(l.corrupt.len(), 1);
    assert_eq!(l.corrupt[0].0, "bad001");
    // Registering over a corrupt entry is refused with a message naming it.
    let bad = ImageRef::new(POOL, "", "b", "bad001");
    let e = reg
        .register(&bad, HolderRecord::new(n("a"), Mode::Rw))
        .unwrap_err();
    assert!(e.to_string().contains("registry entry bad001"), "{e}");
    // Bad input is rejected before anything is sent.
    let e = reg
        .register(
            &ImageRef::new(POOL, "", "x", "bad id"),
            HolderRecord::new(n("a"), Mode::Rw),
        )
        .unwrap_err();
    assert!(e.to_string().contains("\"bad id\""), "{e}");
}
