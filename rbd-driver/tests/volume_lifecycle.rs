//! Volume create / get / list / remove / snapshot / clone / resize against the real dev
//! cluster, with assertions on the cluster (image, size, features, metadata, index
//! entry) and on local state. None of these needs a mapper.

mod volume_support;

use std::collections::BTreeMap;
use std::sync::{Arc, Barrier};

use rbd_core::rbd::{self, Features};
use rbd_core::{Image, OpenOptions};
use rbd_driver::DriverError;
use rbd_driver::volume::{AccessMode, CreateSpec, Driver, EntryState, OPTION_KEYS};
use volume_support::{POOL, ceph_cli, env, spec};

#[test]
fn create_records_image_metadata_and_index_then_remove_clears_them() {
    let Some(env) = env(false) else { return };
    let d = env.driver("a");
    let name = env.name("vol");
    let info = d
        .create(
            &name,
            &spec(&[
                ("size", "320M"),
                ("fstype", "xfs"),
                ("features", "layering,object-map,fast-diff"),
                ("object-size", "1M"),
                ("mkfs-options", "-b size=4096"),
                ("mount-options", "noatime,nodev"),
                ("access", "rw"),
            ]),
        )
        .unwrap();
    assert_eq!(info.name, name);
    assert_eq!(info.size, 320 << 20);
    assert_eq!(info.pool, POOL);
    assert_eq!(info.fstype, Some(fs_format::FsType::Xfs));
    assert_eq!(info.access, AccessMode::ReadWrite);
    assert!(info.mountpoint.is_none());
    assert_eq!(info.status["node"], "test-a");

    // The image, with its size, features and object size.
    let img = env.image(POOL, "", &name).expect("image exists");
    assert_eq!(img.size().unwrap(), 320 << 20);
    let f = img.features().unwrap();
    for want in [
        Features::EXCLUSIVE_LOCK,
        Features::LAYERING,
        Features::OBJECT_MAP,
        Features::FAST_DIFF,
    ] {
        assert!(f.contains(want), "features {f} lack {want}");
    }
    assert!(!f.contains(Features::DEEP_FLATTEN), "{f}");
    assert_eq!(img.stat().unwrap().obj_size, 1 << 20);
    let id = img.id().unwrap();
    assert_eq!(info.image_id, id);
    drop(img);

    // Its metadata.
    let meta = env.meta(POOL, "", &name);
    assert_eq!(meta["rbd-volumes.name"], name);
    assert_eq!(meta["rbd-volumes.fstype"], "xfs");
    assert_eq!(meta["rbd-volumes.access"], "rw");
    assert_eq!(meta["rbd-volumes.mkfs-options"], r#"["-b","size=4096"]"#);
    assert_eq!(meta["rbd-volumes.mount-options"], r#"["noatime","nodev"]"#);
    assert_eq!(meta["rbd-volumes.created-by"], "test-a");
    assert!(!meta.contains_key("rbd-volumes.formatted"), "{meta:?}");

    // The index entry points at exactly this image.
    let e = env.index_entry(&name).expect("index entry");
    assert_eq!(e.state, EntryState::Ready);
    assert_eq!(e.pool, POOL);
    assert_eq!(e.image, name);
    assert_eq!(e.image_id, id);
    assert_eq!(e.node, "test-a");
    assert_eq!(meta["rbd-volumes.token"], e.token);

    // get / list / path / status agree.
    assert_eq!(d.get(&name).unwrap().image_id, id);
    assert!(
        d.list()
            .unwrap()
            .iter()
            .any(|v| v.name == name && v.image_id == id)
    );
    assert_eq!(d.path(&name).unwrap(), None);
    let st = d.status(&name).unwrap();
    assert!(st.local.is_none() && st.local_mappings.is_empty());
    assert!(st.watchers.is_empty(), "{:?}", st.watchers);
    // Another node sees it by name alone.
    let d2 = env.driver("b");
    assert_eq!(d2.get(&name).unwrap().image_id, id);

    d.remove(&name, false).unwrap();
    env.assert_nothing(POOL, "", &name);
    assert!(matches!(d.get(&name), Err(DriverError::NoSuchVolume(_))));
    assert!(matches!(
        d.remove(&name, false),
        Err(DriverError::NoSuchVolume(_))
    ));
    assert!(!d.list().unwrap().iter().any(|v| v.name == name));
}

#[test]
fn bad_names_are_rejected_and_nothing_is_created() {
    let Some(env) = env(false) else { return };
    let d = env.driver("a");
    let long = "v".repeat(97);
    let before = rbd::list(&env.io(POOL, "")).unwrap().len();
    for bad in [
        "../x",
        "/",
        "a\0b",
        "",
        "..",
        "a/b",
        ".x",
        "-x",
        "a b",
        long.as_str(),
    ] {
        let e = d.create(bad, &CreateSpec::default()).unwrap_err();
        assert!(
            matches!(
                e,
                DriverError::InvalidInput {
                    what: "volume name",
                    ..
                }
            ),
            "{bad:?}: {e}"
        );
        assert!(e.to_string().contains(&format!("{bad:?}")), "{bad:?}: {e}");
        for e in [
            d.attach(bad, "m1", None).unwrap_err(),
            d.detach(bad, "m1").unwrap_err(),
            d.remove(bad, true).unwrap_err(),
            d.get(bad).unwrap_err(),
            d.resize(bad, 1 << 30).unwrap_err(),
            d.snapshot(bad, "s").unwrap_err(),
        ] {
            assert!(
                matches!(e, DriverError::InvalidInput { .. }),
                "{bad:?}: {e}"
            );
        }
        env.assert_nothing(POOL, "", bad);
    }
    // Nothing escaped under the mount root either (only its owner file is there).
    let cfg = env.config("a");
    let entries: Vec<String> = std::fs::read_dir(&cfg.mount_root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        entries,
        vec![rbd_driver::volume::OWNER_FILE.to_string()],
        "{entries:?}"
    );
    // (Other tests run in parallel, so compare loosely: we created nothing.)
    let after = rbd::list(&env.io(POOL, "")).unwrap();
    assert!(
        !after
            .iter()
            .any(|s| s.name.contains("..") || s.name.is_empty())
    );
    let _ = before;
    // Bad mount ids too.
    let name = env.name("vol");
    for bad_id in ["", "a/b", "x y", &"m".repeat(129)] {
        let e = d.attach(&name, bad_id, None).unwrap_err();
        assert!(
            matches!(
                e,
                DriverError::InvalidInput {
                    what: "mount id",
                    ..
                }
            ),
            "{bad_id:?}: {e}"
        );
    }
}

fn opts(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
    kv.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn bad_options_are_rejected_and_nothing_is_created() {
    let Some(env) = env(false) else { return };
    let d = env.driver("a");
    // Rejected while parsing Docker's options.
    let name = env.name("vol");
    let e = CreateSpec::from_options(&opts(&[("size", "1G"), ("colour", "blue")]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("\"colour\""), "{e}");
    for k in OPTION_KEYS {
        assert!(e.contains(k), "{e} does not list {k}");
    }
    for (k, v) in [
        ("size", "-1"),
        ("size", "1e99"),
        ("size", "2Q"),
        ("size", "0"),
        ("fstype", "../../x"),
        ("mount-options", "exec,nobarrier"),
        ("mount-options", "errors=panic"),
        ("mount-options", "ro"),
        ("mkfs-options", "-F"),
        ("mkfs-options", "$(reboot)"),
        ("features", "journaling,migrating"),
        ("object-size", "3M"),
        ("access", "rwx"),
        ("pool", "../../etc"),
        ("from-snapshot", "no-snapshot-part"),
    ] {
        let e = CreateSpec::from_options(&opts(&[(k, v)])).unwrap_err();
        assert!(
            matches!(e, DriverError::InvalidInput { .. }),
            "{k}={v}: {e}"
        );
        assert!(e.to_string().contains(v), "{k}={v}: {e}");
    }
    env.assert_nothing(POOL, "", &name);

    // Valid syntax, but wrong for this cluster or this filesystem: rejected by create
    // before anything is made.
    let missing_ns = testkit::unique("nons");
    let missing_pool = testkit::unique("nopool");
    let cases: Vec<(CreateSpec, &str)> = vec![
        (spec(&[("pool", &missing_pool)]), "pool"),
        (spec(&[("namespace", &missing_ns)]), "namespace"),
        (spec(&[("data-pool", &missing_pool)]), "data-pool"),
        (
            spec(&[("from-snapshot", "no-such-volume@s1")]),
            "from-snapshot",
        ),
        (
            spec(&[("from-snapshot", &format!("{POOL}/no-such-image@s1"))]),
            "from-snapshot",
        ),
        // Fine for ext4, refused for xfs.
        (
            CreateSpec {
                fstype: Some(fs_format::FsType::Xfs),
                mkfs_options: Some(vec!["-m".into(), "1".into()]),
                ..Default::default()
            },
            "mkfs-options",
        ),
        (
            CreateSpec {
                mount_options: Some(vec!["nobarrier".into()]),
                ..Default::default()
            },
            "mount-options",
        ),
    ];
    for (s, what) in cases {
        let e = d.create(&name, &s).unwrap_err();
        assert!(
            matches!(&e, DriverError::InvalidInput { what: w, .. } if *w == what),
            "{what}: {e:?}"
        );
        env.assert_nothing(POOL, "", &name);
    }
}

/// xfsprogs refuses filesystems under 300 MiB and btrfs-progs under 109 MiB: such a
/// volume would be created, then fail at its first attach. Create refuses it instead,
/// naming the size and the minimum, whether the size and the fstype come from the
/// volume's options or the node defaults, and nothing is created in Ceph.
#[test]
fn a_size_below_the_fstype_minimum_is_refused_and_nothing_is_created() {
    let Some(env) = env(false) else { return };
    let name = env.name("small");
    let invalid_size = |e: &DriverError, size: &str, min: &str| {
        let msg = e.to_string();
        assert!(
            matches!(e, DriverError::InvalidInput { what: "size", .. }),
            "{msg}"
        );
        assert!(msg.contains(size) && msg.contains(min), "{msg}");
    };
    // Docker's options: refused while parsing.
    let e = CreateSpec::from_options(&opts(&[("fstype", "xfs"), ("size", "256M")])).unwrap_err();
    invalid_size(&e, "\"256M\"", "300 MiB");

    // Both in the spec.
    let d = env.driver("a");
    let xfs_256m = CreateSpec {
        fstype: Some(fs_format::FsType::Xfs),
        size: Some(256 << 20),
        ..Default::default()
    };
    invalid_size(
        &d.create(&name, &xfs_256m).unwrap_err(),
        "256 MiB",
        "300 MiB",
    );
    env.assert_nothing(POOL, "", &name);

    // The fstype from the node defaults, the size from the spec.
    let mut cfg = env.config("xfs-node");
    cfg.defaults.fstype = fs_format::FsType::Xfs;
    let d = env.driver_with(cfg);
    let e = d.create(&name, &spec(&[("size", "256M")])).unwrap_err();
    invalid_size(&e, "256 MiB", "300 MiB");
    env.assert_nothing(POOL, "", &name);

    // The size from the node defaults, the fstype from the spec (btrfs with its data
    // written twice needs more than plain btrfs).
    let mut cfg = env.config("small-node");
    cfg.defaults.size = 128 << 20;
    let d = env.driver_with(cfg);
    let e = d
        .create(
            &name,
            &spec(&[("fstype", "btrfs"), ("mkfs-options", "-d dup")]),
        )
        .unwrap_err();
    invalid_size(&e, "128 MiB", "229 MiB");
    env.assert_nothing(POOL, "", &name);
    let e = d.create(&name, &spec(&[("fstype", "xfs")])).unwrap_err();
    invalid_size(&e, "128 MiB", "300 MiB");
    env.assert_nothing(POOL, "", &name);

    // Node defaults that could never make a volume: the driver does not start.
    let mut cfg = env.config("bad-defaults");
    cfg.defaults.fstype = fs_format::FsType::Xfs;
    cfg.defaults.size = 256 << 20;
    invalid_size(&Driver::new(cfg).unwrap_err(), "256 MiB", "300 MiB");

    // At the minimum it is accepted.
    let info = d
        .create(&name, &spec(&[("fstype", "btrfs"), ("size", "109M")]))
        .unwrap();
    assert_eq!(info.size, 109 << 20);
    d.remove(&name, false).unwrap();
    env.assert_nothing(POOL, "", &name);
}

#[test]
fn create_is_idempotent_for_the_same_options_and_refuses_different_ones() {
    let Some(env) = env(false) else { return };
    let d = env.driver("a");
    let name = env.name("vol");
    let s = spec(&[
        ("size", "32M"),
        ("fstype", "ext4"),
        ("mkfs-options", "-L data"),
    ]);
    let first = d.create(&name, &s).unwrap();
    // Same options, from this node or another: the same volume.
    let again = d.create(&name, &s).unwrap();
    assert_eq!(again.image_id, first.image_id);
    let other = env.driver("b").create(&name, &s).unwrap();
    assert_eq!(other.image_id, first.image_id);
    // No options at all (docker on a node that just wants it): the same volume.
    assert_eq!(
        d.create(&name, &CreateSpec::default()).unwrap().image_id,
        first.image_id
    );
    // Different options: refused, saying what differs.
    for (s, says) in [
        (spec(&[("size", "1G")]), "size"),
        (spec(&[("fstype", "xfs")]), "fstype"),
        (spec(&[("access", "ro")]), "access"),
        (spec(&[("mkfs-options", "-L other")]), "mkfs-options"),
    ] {
        let e = d.create(&name, &s).unwrap_err();
        assert!(matches!(e, DriverError::VolumeExists(_)), "{e}");
        assert!(e.to_string().contains(says), "{e}");
    }
    assert_eq!(env.index_entry(&name).unwrap().image_id, first.image_id);
    d.remove(&name, false).unwrap();
    env.assert_nothing(POOL, "", &name);
}

#[test]
fn create_race_between_nodes_has_exactly_one_winner() {
    let Some(env) = env(false) else { return };
    let env = Arc::new(env);
    for round in 0..4 {
        let name = env.name(&format!("race{round}"));
        let drivers: Vec<_> = (0..3)
            .map(|i| Arc::new(env.driver(&format!("n{i}"))))
            .collect();
        let contenders = 6;
        let barrier = Arc::new(Barrier::new(contenders));
        let handles: Vec<_> = (0..contenders)
            .map(|i| {
                let d = drivers[i % drivers.len()].clone();
                let b = barrier.clone();
                let name = name.clone();
                std::thread::spawn(move || {
                    // Each contender asks for a different label, so a loser cannot be
                    // answered "same volume" by idempotence.
                    let s = spec(&[("size", "16M"), ("mkfs-options", &format!("-L c{i}"))]);
                    b.wait();
                    (i, d.create(&name, &s))
                })
            })
            .collect();
        let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let winners: Vec<_> = results.iter().filter(|(_, r)| r.is_ok()).collect();
        assert_eq!(winners.len(), 1, "round {round}: {results:?}");
        for (_, r) in &results {
            if let Err(e) = r {
                assert!(matches!(e, DriverError::VolumeExists(_)), "{e}");
            }
        }
        let (wi, winfo) = winners[0];
        let winfo = winfo.as_ref().unwrap();
        // Exactly one image; the index and the image agree on the winner.
        let e = env.index_entry(&name).unwrap();
        assert_eq!(e.state, EntryState::Ready);
        assert_eq!(e.image_id, winfo.image_id);
        let meta = env.meta(POOL, "", &name);
        assert_eq!(meta["rbd-volumes.token"], e.token);
        assert_eq!(
            meta["rbd-volumes.mkfs-options"],
            format!(r#"["-L","c{wi}"]"#)
        );
        assert_eq!(
            rbd::list(&env.io(POOL, ""))
                .unwrap()
                .iter()
                .filter(|s| s.name == name)
                .count(),
            1
        );
        for d in &drivers {
            let st = env.state(d.config());
            assert!(st.pending.is_empty(), "{st:?}");
        }
        drivers[0].remove(&name, false).unwrap();
        env.assert_nothing(POOL, "", &name);
    }
}

#[test]
fn stale_index_entry_is_replaced_and_foreign_images_are_refused() {
    let Some(env) = env(false) else { return };
    let d = env.driver("a");
    let name = env.name("vol");
    let first = d.create(&name, &spec(&[("size", "16M")])).unwrap();
    // Someone removes the image behind the driver's back.
    rbd::remove(&env.io(POOL, ""), &name).unwrap();
    assert!(matches!(d.get(&name), Err(DriverError::NoSuchVolume(_))));
    assert!(!d.list().unwrap().iter().any(|v| v.name == name));
    // The name can be created again; the new entry points at the new image.
    let second = d.create(&name, &spec(&[("size", "16M")])).unwrap();
    assert_ne!(second.image_id, first.image_id);
    assert_eq!(env.index_entry(&name).unwrap().image_id, second.image_id);
    d.remove(&name, false).unwrap();

    // An image that is not a volume is never adopted or touched.
    let raw = env.name("raw");
    env.raw_image(&raw, 8 << 20);
    let e = d.create(&raw, &CreateSpec::default()).unwrap_err();
    assert!(matches!(e, DriverError::VolumeExists(_)), "{e}");
    assert!(e.to_string().contains("not a volume"), "{e}");
    assert!(env.image(POOL, "", &raw).is_some());
    assert!(env.index_entry(&raw).is_none());
    assert!(matches!(
        d.remove(&raw, true),
        Err(DriverError::NoSuchVolume(_))
    ));
    assert!(env.image(POOL, "", &raw).is_some());
}

#[test]
fn remove_refuses_while_another_client_has_the_image_open() {
    let Some(env) = env(false) else { return };
    let d = env.driver("a");
    let name = env.name("vol");
    d.create(&name, &spec(&[("size", "16M")])).unwrap();
    // Another client (its own connection, like a mapper on another node) opens it.
    let other =
        rbd_core::Rados::connect(&rbd_core::ConnectOptions::new().conf_file(&env.conf)).unwrap();
    let io = other.ioctx(POOL).unwrap();
    let img = Image::open(&io, &name, &OpenOptions::new()).unwrap();
    let addr = other
        .getaddrs()
        .unwrap()
        .primary()
        .unwrap()
        .to_legacy_string();
    for force in [false, true] {
        let e = d.remove(&name, force).unwrap_err();
        assert!(matches!(e, DriverError::InUse { .. }), "{e}");
        let msg = e.to_string();
        assert!(msg.contains(&addr), "{msg} does not name {addr}");
        assert!(
            msg.contains(&format!("client.{}", other.instance_id())),
            "{msg}"
        );
    }
    assert!(env.image(POOL, "", &name).is_some());
    assert_eq!(env.index_entry(&name).unwrap().state, EntryState::Ready);
    // status shows that client.
    let st = d.status(&name).unwrap();
    assert!(
        st.watchers
            .iter()
            .any(|w| w.addr == addr && !w.local_mapping),
        "{st:?}"
    );
    drop(img);
    d.remove(&name, false).unwrap();
    env.assert_nothing(POOL, "", &name);
}

#[test]
fn snapshots_block_remove_unless_forced_and_clones_follow_their_parent() {
    let Some(env) = env(false) else { return };
    let d = env.driver("a");
    let base = env.name("base");
    d.create(&base, &spec(&[("size", "320M"), ("fstype", "xfs")]))
        .unwrap();
    // Pretend base was formatted: a clone must not inherit the parent's volume metadata.
    Image::open(&env.io(POOL, ""), &base, &OpenOptions::new())
        .unwrap()
        .metadata_set("rbd-volumes.formatted", "xfs")
        .unwrap();
    d.snapshot(&base, "s1").unwrap();
    let e = d.snapshot(&base, "s1").unwrap_err();
    assert!(e.to_string().contains("already has a snapshot"), "{e}");
    for bad in ["", "a/b", "x@y", "../s"] {
        assert!(matches!(
            d.snapshot(&base, bad),
            Err(DriverError::InvalidInput { .. })
        ));
    }
    let e = d.remove(&base, false).unwrap_err();
    assert!(
        matches!(e, DriverError::InUse { .. }) && e.to_string().contains("s1"),
        "{e}"
    );

    // Clone it (volume@snap form), bigger than the parent.
    let clone = env.name("clone");
    let info = d
        .create(
            &clone,
            &spec(&[("from-snapshot", &format!("{base}@s1")), ("size", "640M")]),
        )
        .unwrap();
    assert_eq!(info.size, 640 << 20);
    assert_eq!(info.fstype, Some(fs_format::FsType::Xfs));
    let cimg = env.image(POOL, "", &clone).unwrap();
    let parent = cimg.parent().unwrap().expect("a parent");
    assert_eq!(parent.image.image_name, base);
    assert_eq!(parent.snap.name, "s1");
    drop(cimg);
    let meta = env.meta(POOL, "", &clone);
    assert_eq!(meta["rbd-volumes.source"], format!("{POOL}/{base}@s1"));
    assert_eq!(meta["rbd-volumes.name"], clone);
    assert!(!meta.contains_key("rbd-volumes.formatted"), "{meta:?}");
    assert_ne!(
        meta["rbd-volumes.token"],
        env.meta(POOL, "", &base)["rbd-volumes.token"]
    );
    assert_eq!(
        meta["rbd-volumes.token"],
        env.index_entry(&clone).unwrap().token
    );
    let base_img = env.image(POOL, "", &base).unwrap();
    let protected_by_us =
        meta.get("rbd-volumes.protected-parent").map(String::as_str) == Some("true");
    assert_eq!(base_img.snap_is_protected("s1").unwrap(), protected_by_us);
    drop(base_img);

    // The parent cannot go while the clone uses its snapshot, not even with force.
    let e = d.remove(&base, true).unwrap_err();
    assert!(e.to_string().contains(&clone), "{e}");
    assert!(env.image(POOL, "", &base).is_some());

    // The clone is a volume of its own; removing it releases the snapshot.
    d.remove(&clone, false).unwrap();
    env.assert_nothing(POOL, "", &clone);
    assert!(
        !env.image(POOL, "", &base)
            .unwrap()
            .snap_is_protected("s1")
            .unwrap()
    );
    d.remove(&base, true).unwrap();
    env.assert_nothing(POOL, "", &base);

    // A clone of any image's snapshot (pool/image@snap), smaller than it: refused.
    let raw = env.name("raw");
    env.raw_image(&raw, 16 << 20);
    Image::open(&env.io(POOL, ""), &raw, &OpenOptions::new())
        .unwrap()
        .snap_create("golden")
        .unwrap();
    let c2 = env.name("clone");
    let src = format!("{POOL}/{raw}@golden");
    let e = d
        .create(&c2, &spec(&[("from-snapshot", &src), ("size", "8M")]))
        .unwrap_err();
    assert!(
        matches!(e, DriverError::InvalidInput { what: "size", .. }),
        "{e}"
    );
    env.assert_nothing(POOL, "", &c2);
    let e = d
        .create(
            &c2,
            &spec(&[("from-snapshot", &format!("{POOL}/{raw}@nope"))]),
        )
        .unwrap_err();
    assert!(
        e.to_string().contains("golden"),
        "lists existing snapshots: {e}"
    );
    let info = d.create(&c2, &spec(&[("from-snapshot", &src)])).unwrap();
    assert_eq!(info.size, 16 << 20);
    d.remove(&c2, false).unwrap();
    env.assert_nothing(POOL, "", &c2);
}

#[test]
fn resize_grows_the_image_and_refuses_to_shrink() {
    let Some(env) = env(false) else { return };
    let d = env.driver("a");
    let name = env.name("vol");
    d.create(&name, &spec(&[("size", "16M")])).unwrap();
    d.resize(&name, 48 << 20).unwrap();
    assert_eq!(
        env.image(POOL, "", &name).unwrap().size().unwrap(),
        48 << 20
    );
    assert_eq!(d.get(&name).unwrap().size, 48 << 20);
    let e = d.resize(&name, 16 << 20).unwrap_err();
    assert!(e.to_string().contains("shrinking"), "{e}");
    assert!(matches!(
        d.resize(&name, 1000),
        Err(DriverError::InvalidInput { .. })
    ));
    assert_eq!(
        env.image(POOL, "", &name).unwrap().size().unwrap(),
        48 << 20
    );
    d.remove(&name, false).unwrap();
}

#[test]
fn volumes_in_a_namespace_and_with_a_data_pool_are_found_by_name() {
    let Some(env) = env(false) else { return };
    let d = env.driver("a");
    let ns = testkit::unique("ns");
    ceph_cli(
        &env.conf,
        "rbd",
        &["namespace", "create", &format!("{POOL}/{ns}")],
    );
    let data_pool = testkit::unique("data");
    env.rados.pool_create(&data_pool).unwrap();
    ceph_cli(
        &env.conf,
        "ceph",
        &["osd", "pool", "application", "enable", &data_pool, "rbd"],
    );
    let name = env.name("vol");
    let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let info = d
            .create(
                &name,
                &spec(&[
                    ("namespace", &ns),
                    ("data-pool", &data_pool),
                    ("size", "16M"),
                ]),
            )
            .unwrap();
        assert_eq!(info.namespace, ns);
        let img = env.image(POOL, &ns, &name).expect("image in the namespace");
        assert!(img.features().unwrap().contains(Features::DATA_POOL));
        assert_eq!(
            img.data_pool_id().unwrap(),
            env.rados.pool_lookup(&data_pool).unwrap()
        );
        drop(img);
        assert!(env.image(POOL, "", &name).is_none());
        // Found by name alone, from another node.
        let e = env.driver("b").get(&name).unwrap();
        assert_eq!((e.pool.as_str(), e.namespace.as_str()), (POOL, ns.as_str()));
        d.remove(&name, false).unwrap();
        env.assert_nothing(POOL, &ns, &name);
    }));
    let _ = d.remove(&name, true);
    let _ = std::process::Command::new("timeout")
        .args(["60", "rbd", "-c"])
        .arg(&env.conf)
        .args(["namespace", "remove", &format!("{POOL}/{ns}")])
        .output();
    let _ = env.rados.pool_delete(&data_pool);
    if let Err(p) = res {
        std::panic::resume_unwind(p);
    }
}

#[test]
fn an_abandoned_create_of_a_dead_node_blocks_the_name_only_until_it_is_stale() {
    let Some(env) = env(false) else { return };
    let name = env.name("ghost");
    // Node "ghost" claimed the name and made the image, then died.
    let now = rbd_driver::volume::index::now_secs();
    let entry = rbd_driver::volume::IndexEntry {
        pool: POOL.into(),
        namespace: String::new(),
        image: name.clone(),
        image_id: String::new(),
        state: EntryState::Creating,
        node: "ghost".into(),
        token: "ghost-token".into(),
        created_at: now,
        updated_at: now,
    };
    assert!(env.index().claim(&name, &entry).unwrap().is_none());
    env.raw_image(&name, 8 << 20);
    Image::open(&env.io(POOL, ""), &name, &OpenOptions::new())
        .unwrap()
        .metadata_set("rbd-volumes.token", "ghost-token")
        .unwrap();

    let d = env.driver("a");
    let e = d.create(&name, &spec(&[("size", "16M")])).unwrap_err();
    assert!(matches!(e, DriverError::VolumeExists(_)), "{e}");
    assert!(e.to_string().contains("ghost"), "names the node: {e}");
    assert!(matches!(d.get(&name), Err(DriverError::NoSuchVolume(_))));
    let e = d.remove(&name, false).unwrap_err();
    assert!(e.to_string().contains("ghost"), "{e}");

    // Once it is older than stale_after, any node cleans it up and can use the name.
    let mut cfg = env.config("a");
    cfg.stale_after = std::time::Duration::from_secs(1);
    let d = env.driver_with(cfg);
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let info = d.create(&name, &spec(&[("size", "16M")])).unwrap();
    let e = env.index_entry(&name).unwrap();
    assert_eq!(e.state, EntryState::Ready);
    assert_eq!(e.node, "test-a");
    assert_eq!(e.image_id, info.image_id);
    assert_eq!(env.meta(POOL, "", &name)["rbd-volumes.token"], e.token);
    assert_eq!(info.size, 16 << 20);
    d.remove(&name, false).unwrap();
    env.assert_nothing(POOL, "", &name);
}

/// `DriverConfig::client_options` reach the driver's own connection (the plugin runs one
/// messenger thread), and an unknown option is refused at connect, naming it, before
/// anything is created.
#[test]
fn client_options_apply_to_the_drivers_connection() {
    let Some(env) = env(false) else { return };
    let mut cfg = env.config("opts");
    cfg.client_options = vec![("ms_async_op_threads".into(), "1".into())];
    let d = env.driver_with(cfg);
    assert_eq!(d.rados().conf_get("ms_async_op_threads").unwrap(), "1");
    let plain = env.driver("plain");
    assert_eq!(plain.rados().conf_get("ms_async_op_threads").unwrap(), "3");
    drop(plain);
    drop(d);

    let mut cfg = env.config("bad-opts");
    cfg.client_options = vec![("no_such_ceph_option".into(), "1".into())];
    let err = Driver::new(cfg).map(|_| ()).unwrap_err();
    let mut chain = err.to_string();
    let mut src = std::error::Error::source(&err);
    while let Some(e) = src {
        chain.push_str(&format!(": {e}"));
        src = e.source();
    }
    assert!(chain.contains("no_such_ceph_option"), "{chain}");
}
