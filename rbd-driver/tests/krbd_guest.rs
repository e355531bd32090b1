//! The krbd backend for real: a qemu guest with a Debian kernel (rbd module) maps images
//! of the dev cluster with our `KrbdMapper` (through `rbd-map-probe`), and the host checks
//! the results against the cluster. One guest boot; see `tests/guest/krbd.sh`.

mod krbd_nbd_support;

use krbd_nbd_support as support;
use rbd_core::EntityAddr;

#[test]
fn krbd_in_a_qemu_guest() {
    let Some(env) = support::env() else { return };
    let conf = env.conf.clone();
    let img_a = testkit::unique("krbd-a");
    let img_b = testkit::unique("krbd-b");
    let ns = testkit::unique("krbd-ns");
    let img_n = testkit::unique("krbd-n");
    let spec_a = format!("rbd/{img_a}");
    let spec_b = format!("rbd/{img_b}");
    let spec_n = format!("rbd/{ns}/{img_n}");
    let _ns = support::Namespace::create(&conf, "rbd", &ns);
    let _cleanup = support::Images {
        conf: conf.clone(),
        specs: vec![spec_a.clone(), spec_b.clone(), spec_n.clone()],
    };
    // No object-map on B and N: krbd then locks on reads only with lock_on_read.
    let no_object_map = ["--image-feature", "layering,exclusive-lock"];
    support::ceph_cli(&conf, "rbd", &["create", "--size", "16M", &spec_a]);
    support::ceph_cli(
        &conf,
        "rbd",
        &[&["create", "--size", "64M"][..], &no_object_map, &[&spec_b]].concat(),
    );
    support::ceph_cli(&conf, "rbd", &["snap", "create", &format!("{spec_b}@s1")]);
    support::ceph_cli(
        &conf,
        "rbd",
        &[&["create", "--size", "16M"][..], &no_object_map, &[&spec_n]].concat(),
    );
    let id_a = support::image_id(&conf, &spec_a);
    let id_b = support::image_id(&conf, &spec_b);
    let id_n = support::image_id(&conf, &spec_n);

    let script = testkit::workspace_root().join("rbd-driver/tests/guest/krbd.sh");
    let run = support::run_guest(
        &env,
        &script,
        &[
            ("POOL", "rbd".into()),
            ("IMG_A", img_a.clone()),
            ("ID_A", id_a.clone()),
            ("IMG_B", img_b.clone()),
            ("ID_B", id_b.clone()),
            ("SNAP_B", "s1".into()),
            ("NS", ns.clone()),
            ("IMG_N", img_n.clone()),
            ("ID_N", id_n.clone()),
        ],
    );
    assert!(
        run.has("END"),
        "the guest script did not finish (exit {}); console:\n{}",
        run.code,
        run.console
    );
    assert_eq!(run.code, 0, "guest exit code; console:\n{}", run.console);

    // Availability, and automatic selection: with the rbd module loaded, krbd comes first.
    assert!(run.step("check").ok(), "{:?}", run.step("check"));
    let auto = run.step("checkAuto");
    assert!(auto.ok(), "{auto:?}");
    assert_eq!(auto.result()["selected"], "krbd", "{auto:?}");
    assert_eq!(auto.json["backend"], "krbd", "{auto:?}");

    // The three mappings carry the image ids the host sees.
    let map_a = run.step("mapA");
    let map_b = run.step("mapB");
    let map_bs = run.step("mapBsnap");
    for (s, id) in [(map_a, &id_a), (map_b, &id_b), (map_bs, &id_b)] {
        assert!(s.ok(), "{s:?}");
        assert_eq!(s.result()["image_id"].as_str(), Some(id.as_str()), "{s:?}");
        assert_eq!(s.result()["backend"], "krbd");
        assert!(
            s.result()["device"]
                .as_str()
                .unwrap()
                .starts_with("/dev/rbd")
        );
    }
    assert_eq!(map_a.result()["image"].as_str(), Some(img_a.as_str()));
    assert_eq!(map_a.result()["read_only"], false);
    assert_eq!(map_bs.result()["snap"], "s1");
    assert_eq!(map_bs.result()["read_only"], true);

    // A name that no longer refers to the requested id is refused, and no device stays.
    let wrong = run.step("mapWrongId");
    assert!(!wrong.ok(), "{wrong:?}");
    assert!(
        wrong.error().contains("0000bad0000") && wrong.error().contains(&id_a),
        "{}",
        wrong.error()
    );

    // list: exactly the three mappings, by image id; noshare gives three client instances.
    let list = run.step("list");
    assert!(list.ok(), "{list:?}");
    let mappings = list.result().as_array().unwrap();
    assert_eq!(mappings.len(), 3, "{mappings:#?}");
    let addr_of = |s: &support::Step| -> EntityAddr {
        s.result()["client_addr"]
            .as_str()
            .unwrap_or_else(|| panic!("no client_addr in {s:?}"))
            .parse()
            .unwrap()
    };
    let (addr_a, addr_b, addr_bs) = (addr_of(map_a), addr_of(map_b), addr_of(map_bs));
    assert!(
        !addr_a.same_instance(&addr_b),
        "noshare: {addr_a} vs {addr_b}"
    );
    assert!(
        !addr_a.same_instance(&addr_bs),
        "noshare: {addr_a} vs {addr_bs}"
    );
    assert!(
        !addr_b.same_instance(&addr_bs),
        "noshare: {addr_b} vs {addr_bs}"
    );
    for m in mappings {
        let dev = m["device"].as_str().unwrap();
        let want = [map_a, map_b, map_bs]
            .into_iter()
            .find(|s| s.result()["device"] == dev)
            .unwrap_or_else(|| panic!("listed {dev} was not mapped by us"));
        assert_eq!(m, want.result(), "list and map agree on {dev}");
    }

    // Map options, as the kernel and the cluster see them. (This kernel takes the exclusive
    // lock at map time for every read-write head mapping of an image with exclusive-lock.)
    // A: `exclusive` holds the lock and refuses to hand it over; queue_depth=32 sizes the
    // tag set.
    support::assert_lock_owner(run.step("lockA_map"), &addr_a, "exclusive map of A");
    let words = |tag: &str| -> Vec<String> {
        run.step(tag)
            .out
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    };
    let opts_a = words("optsA");
    for o in [
        "exclusive",
        "noshare",
        "queue_depth=32",
        "osd_request_timeout=60",
    ] {
        assert!(opts_a.iter().any(|w| w == o), "{o}: {opts_a:?}");
    }
    assert!(!opts_a.iter().any(|w| w == "lock_on_read"), "{opts_a:?}");
    assert!(
        !run.step("optsA").out.contains("secret"),
        "the secret never leaves the guest's sysfs"
    );
    let qd = &run.step("qdA").out;
    assert!(qd.contains("tags=32 "), "nr_tags of A's queue: {qd}");
    eprintln!("krbd guest: A's queue with queue_depth=32: {qd}");
    let steal_a = run.step("stealA");
    assert!(
        steal_a.rc != 0 && steal_a.rc != 124,
        "another client's write to exclusively mapped A must fail, not hang: {steal_a:?}"
    );
    support::assert_lock_owner(run.step("lockA_kept"), &addr_a, "A after a lock request");
    // B: lock_on_read. Another client can take the lock (B is not exclusive); then a read
    // through B takes it back.
    let opts_b = words("optsB");
    assert!(opts_b.iter().any(|w| w == "lock_on_read"), "{opts_b:?}");
    assert!(!opts_b.iter().any(|w| w == "exclusive"), "{opts_b:?}");
    support::assert_lock_owner(run.step("lockB_map"), &addr_b, "map of B");
    assert_eq!(run.step("stealB").rc, 0, "{:?}", run.step("stealB"));
    let stolen = run.step("lockB_stolen");
    assert!(
        support::lockers(&stolen.out).is_empty(),
        "the other client took B's lock and released it: {stolen:?}"
    );
    assert_eq!(run.step("readB").rc, 0, "{:?}", run.step("readB"));
    support::assert_lock_owner(run.step("lockB_read"), &addr_b, "lock_on_read read of B");

    // A read-only mapping of A's head: read-only device, reads the head's data, no writes.
    let map_ar = run.step("mapAro");
    assert!(map_ar.ok(), "{map_ar:?}");
    assert_eq!(map_ar.result()["image_id"].as_str(), Some(id_a.as_str()));
    assert_eq!(map_ar.result()["read_only"], true, "{map_ar:?}");
    assert!(map_ar.result()["snap"].is_null(), "{map_ar:?}");
    assert_eq!(
        run.step("roflagAro").out.trim(),
        "1",
        "{:?}",
        run.step("roflagAro")
    );
    assert_ne!(
        run.step("ro_write_refused").rc,
        0,
        "writing to the read-only head mapping must fail"
    );
    assert!(run.step("unmapAro").ok(), "{:?}", run.step("unmapAro"));

    // An image in a namespace, mapped with the automatic backend: krbd, `_pool_ns`, listed
    // with its namespace, watched by the mapping's client. Without lock_on_read (and no
    // object-map), once another client took the lock, a read does not take it back; the
    // next write does.
    let map_n = run.step("mapNs");
    assert!(map_n.ok(), "{map_n:?}");
    assert_eq!(map_n.json["backend"], "krbd", "{map_n:?}");
    assert_eq!(map_n.result()["backend"], "krbd", "{map_n:?}");
    assert_eq!(map_n.result()["namespace"].as_str(), Some(ns.as_str()));
    assert_eq!(map_n.result()["image"].as_str(), Some(img_n.as_str()));
    assert_eq!(map_n.result()["image_id"].as_str(), Some(id_n.as_str()));
    let opts_n = words("optsNs");
    assert!(
        opts_n.contains(&format!("_pool_ns={ns}")) && !opts_n.iter().any(|w| w == "lock_on_read"),
        "{opts_n:?}"
    );
    let listed_n = run.step("listNs");
    assert!(
        listed_n
            .result()
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m == map_n.result()),
        "the namespace mapping is listed as mapped: {listed_n:?}"
    );
    let addr_n = addr_of(map_n);
    let watch_n = support::watcher_addrs(&run.step("statusNs").out);
    assert!(
        watch_n.len() == 1 && watch_n[0].same_instance(&addr_n),
        "{addr_n} vs {watch_n:?}"
    );
    support::assert_lock_owner(run.step("lockNs_map"), &addr_n, "map of N");
    assert_eq!(run.step("stealNs").rc, 0, "{:?}", run.step("stealNs"));
    assert!(
        support::lockers(&run.step("lockNs_stolen").out).is_empty(),
        "{:?}",
        run.step("lockNs_stolen")
    );
    assert_eq!(run.step("readNs").rc, 0, "{:?}", run.step("readNs"));
    assert!(
        support::lockers(&run.step("lockNs_read").out).is_empty(),
        "a read without lock_on_read takes no lock: {:?}",
        run.step("lockNs_read")
    );
    assert_eq!(run.step("writeNs").rc, 0, "{:?}", run.step("writeNs"));
    support::assert_lock_owner(run.step("lockNs_write"), &addr_n, "first write to N");
    assert!(run.step("unmapNs").ok(), "{:?}", run.step("unmapNs"));

    // The cluster sees those client instances as the images' watchers: the sysfs address
    // is the exact one to fence. (A snapshot mapping does not watch the header, so it is
    // not among the watchers; its address is still its own.)
    let watch_a = support::watcher_addrs(&run.step("statusA").out);
    let watch_b = support::watcher_addrs(&run.step("statusB").out);
    assert_eq!(watch_a.len(), 1, "{watch_a:?}");
    assert!(
        watch_a[0].same_instance(&addr_a),
        "{addr_a} is not A's watcher {watch_a:?}"
    );
    assert_eq!(watch_b.len(), 1, "{watch_b:?}");
    assert!(
        watch_b[0].same_instance(&addr_b),
        "{addr_b} is not B's watcher {watch_b:?}"
    );

    // Data written through /dev/rbdN is in the image.
    let sha_data = support::first_word(run.step("sha_data"));
    assert_eq!(sha_data.len(), 64, "{:?}", run.step("sha_data"));
    assert_eq!(run.step("dd_write").rc, 0, "{:?}", run.step("dd_write"));
    assert_eq!(support::first_word(run.step("sha_readback")), sha_data);
    assert_eq!(
        support::first_word(run.step("sha_ro")),
        sha_data,
        "the read-only head mapping reads what A's read-write mapping wrote"
    );
    let tmp = tempfile::tempdir().unwrap();
    let export_a = tmp.path().join("a.img");
    support::ceph_cli(
        &conf,
        "rbd",
        &[
            "export",
            "--no-progress",
            &spec_a,
            export_a.to_str().unwrap(),
        ],
    );
    assert_eq!(
        support::sha256_range(&export_a, 1 << 20, 4 << 20),
        sha_data,
        "rbd export sees the data written in the guest"
    );

    // ext4 over msgr2: mkfs, mount, write; unmap refused while mounted.
    for t in ["mkfs", "mount", "umount"] {
        assert_eq!(run.step(t).rc, 0, "{t}: {:?}", run.step(t));
    }
    let mounted = run.step("unmapB_mounted");
    assert!(!mounted.ok() && mounted.variant() == "InUse", "{mounted:?}");
    let export_b = tmp.path().join("b.img");
    support::ceph_cli(
        &conf,
        "rbd",
        &[
            "export",
            "--no-progress",
            &spec_b,
            export_b.to_str().unwrap(),
        ],
    );
    let fsck = std::process::Command::new("e2fsck")
        .args(["-fn"])
        .arg(&export_b)
        .output()
        .unwrap();
    assert!(
        fsck.status.success(),
        "e2fsck: {}",
        String::from_utf8_lossy(&fsck.stdout)
    );
    let cat = std::process::Command::new("debugfs")
        .args(["-R", "cat /hello.txt"])
        .arg(&export_b)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&cat.stdout).trim(),
        format!("hello from the krbd guest: {img_b}")
    );

    // Held open: refused without force, removed with force.
    let busy = run.step("unmapA_busy");
    assert!(!busy.ok(), "{busy:?}");
    assert_eq!(busy.variant(), "InUse", "{busy:?}");
    assert!(
        run.step("unmapA_force").ok(),
        "{:?}",
        run.step("unmapA_force")
    );
    assert!(run.step("unmapB").ok(), "{:?}", run.step("unmapB"));
    assert!(run.step("unmapBsnap").ok(), "{:?}", run.step("unmapBsnap"));
    let end = run.step("listEnd");
    assert!(
        end.ok() && end.result().as_array().unwrap().is_empty(),
        "{end:?}"
    );

    // After the guest: no watcher is left on any image, and the data written to N through
    // the namespace mapping is in N.
    for spec in [&spec_a, &spec_b, &spec_n] {
        let st = support::ceph_cli(&conf, "rbd", &["status", "--format", "json", spec]);
        assert!(support::watcher_addrs(&st).is_empty(), "{spec}: {st}");
    }
    let export_n = tmp.path().join("n.img");
    support::ceph_cli(
        &conf,
        "rbd",
        &[
            "export",
            "--no-progress",
            &spec_n,
            export_n.to_str().unwrap(),
        ],
    );
    let sha1 = support::first_word(run.step("sha_data1"));
    assert_eq!(sha1.len(), 64, "{:?}", run.step("sha_data1"));
    assert_eq!(
        support::sha256_range(&export_n, 0, 1 << 20),
        sha1,
        "rbd export of {spec_n} sees the data written through the namespace mapping"
    );
    eprintln!(
        "krbd guest: total {:.1} s; probe map A {} ms, map B (msgr2) {} ms, list {} ms",
        run.secs,
        map_a.probe_ms(),
        map_b.probe_ms(),
        list.probe_ms()
    );
}
