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
    let spec_a = format!("rbd/{img_a}");
    let spec_b = format!("rbd/{img_b}");
    let _cleanup = support::Images {
        conf: conf.clone(),
        specs: vec![spec_a.clone(), spec_b.clone()],
    };
    support::ceph_cli(&conf, "rbd", &["create", "--size", "16M", &spec_a]);
    support::ceph_cli(&conf, "rbd", &["create", "--size", "64M", &spec_b]);
    support::ceph_cli(&conf, "rbd", &["snap", "create", &format!("{spec_b}@s1")]);
    let id_a = support::image_id(&conf, &spec_a);
    let id_b = support::image_id(&conf, &spec_b);

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

    // After the guest: no watcher is left on either image.
    for spec in [&spec_a, &spec_b] {
        let st = support::ceph_cli(&conf, "rbd", &["status", "--format", "json", spec]);
        assert!(support::watcher_addrs(&st).is_empty(), "{spec}: {st}");
    }
    eprintln!(
        "krbd guest: total {:.1} s; probe map A {} ms, map B (msgr2) {} ms, list {} ms",
        run.secs,
        map_a.probe_ms(),
        map_b.probe_ms(),
        list.probe_ms()
    );
}
