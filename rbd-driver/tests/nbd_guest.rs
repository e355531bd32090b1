//! The rbd-nbd backend for real: a qemu guest with a Debian kernel (nbd module) maps
//! images of the dev cluster with our `NbdMapper` (through `rbd-map-probe`, driving
//! Debian's `rbd-nbd`), and the host checks the results against the cluster. One guest
//! boot; see `tests/guest/nbd.sh`.

mod krbd_nbd_support;

use krbd_nbd_support as support;
use rbd_core::EntityAddr;

#[test]
fn nbd_in_a_qemu_guest() {
    let Some(env) = support::env() else { return };
    let conf = env.conf.clone();
    let img_c = testkit::unique("nbd-c");
    let img_d = testkit::unique("nbd-d");
    let spec_c = format!("rbd/{img_c}");
    let spec_d = format!("rbd/{img_d}");
    let _cleanup = support::Images {
        conf: conf.clone(),
        specs: vec![spec_c.clone(), spec_d.clone()],
    };
    support::ceph_cli(&conf, "rbd", &["create", "--size", "16M", &spec_c]);
    support::ceph_cli(&conf, "rbd", &["snap", "create", &format!("{spec_c}@s1")]);
    support::ceph_cli(&conf, "rbd", &["create", "--size", "32M", &spec_d]);
    let id_c = support::image_id(&conf, &spec_c);
    let id_d = support::image_id(&conf, &spec_d);

    let script = testkit::workspace_root().join("rbd-driver/tests/guest/nbd.sh");
    let run = support::run_guest(
        &env,
        &script,
        &[
            ("POOL", "rbd".into()),
            ("IMG_C", img_c.clone()),
            ("ID_C", id_c.clone()),
            ("SNAP_C", "s1".into()),
            ("IMG_D", img_d.clone()),
            ("ID_D", id_d.clone()),
        ],
    );
    assert!(
        run.has("END"),
        "the guest script did not finish (exit {}); console:\n{}",
        run.code,
        run.console
    );
    assert_eq!(run.code, 0, "guest exit code; console:\n{}", run.console);
    assert!(run.step("check").ok(), "{:?}", run.step("check"));

    // Automatic selection: with the rbd module unloaded, krbd is unavailable (and says
    // why), and auto falls through to nbd.
    assert_eq!(run.step("rmmod_rbd").rc, 0, "{:?}", run.step("rmmod_rbd"));
    let krbd = run.step("checkKrbd");
    assert!(!krbd.ok(), "{krbd:?}");
    assert_eq!(krbd.variant(), "BackendUnavailable", "{krbd:?}");
    assert!(
        krbd.error().contains("rbd kernel module is not loaded"),
        "{}",
        krbd.error()
    );
    let auto = run.step("checkAuto");
    assert!(auto.ok(), "{auto:?}");
    assert_eq!(auto.result()["selected"], "nbd", "{auto:?}");

    // Mappings carry the host's image ids and the serving rbd-nbd pid.
    let map_c = run.step("mapC");
    let map_cs = run.step("mapCsnap");
    let map_d = run.step("mapD");
    for (s, id) in [(map_c, &id_c), (map_cs, &id_c), (map_d, &id_d)] {
        assert!(s.ok(), "{s:?}");
        let r = s.result();
        assert_eq!(r["image_id"].as_str(), Some(id.as_str()), "{s:?}");
        assert_eq!(r["backend"], "nbd");
        assert!(
            r["device"].as_str().unwrap().starts_with("/dev/nbd"),
            "{s:?}"
        );
        assert!(r["pid"].as_u64().is_some_and(|p| p > 1), "{s:?}");
    }
    assert_eq!(map_c.result()["read_only"], false);
    assert_eq!(map_cs.result()["read_only"], true);
    assert_eq!(map_cs.result()["snap"], "s1");
    // D was mapped with `auto`.
    assert_eq!(map_d.json["backend"], "nbd", "{map_d:?}");

    // The wrong image id is refused and leaves no mapping.
    let wrong = run.step("mapWrongId");
    assert!(!wrong.ok(), "{wrong:?}");
    assert!(
        wrong.error().contains("0000bad0000") && wrong.error().contains(&id_d),
        "{}",
        wrong.error()
    );

    // list: the two mappings, joined with their records (image id, address, pid).
    let list = run.step("list");
    assert!(list.ok(), "{list:?}");
    let mappings = list.result().as_array().unwrap();
    assert_eq!(mappings.len(), 2, "{mappings:#?}");
    for m in mappings {
        let dev = m["device"].as_str().unwrap();
        let want = [map_c, map_cs]
            .into_iter()
            .find(|s| s.result()["device"] == dev)
            .unwrap_or_else(|| panic!("listed {dev} was not mapped by us"));
        assert_eq!(m, want.result(), "list and map agree on {dev}");
    }
    let listed_raw = &run.step("list_mapped").out;
    assert!(listed_raw.contains(&img_c), "{listed_raw}");
    assert!(
        !listed_raw.contains(&img_d),
        "the refused mapping is gone: {listed_raw}"
    );

    // Both mappings' client addresses are the image's watchers, as the cluster sees
    // them (rbd-nbd watches the header even for a read-only snapshot mapping), and
    // they differ: one client instance per rbd-nbd process.
    let watchers = support::watcher_addrs(&run.step("statusC").out);
    let addr_of = |s: &support::Step| -> EntityAddr {
        s.result()["client_addr"]
            .as_str()
            .unwrap_or_else(|| panic!("no client address: {s:?}"))
            .parse()
            .unwrap()
    };
    let (addr_c, addr_cs) = (addr_of(map_c), addr_of(map_cs));
    assert!(!addr_c.same_instance(&addr_cs), "{addr_c} vs {addr_cs}");
    assert_eq!(watchers.len(), 2, "{watchers:?}");
    for a in [addr_c, addr_cs] {
        assert!(
            watchers.iter().any(|w| w.same_instance(&a)),
            "{a} not among {watchers:?}"
        );
    }
    // --exclusive: C's rbd-nbd owns the exclusive lock right after the map; D (not
    // exclusive, no I/O yet) has no locker.
    support::assert_lock_owner(run.step("lockC_map"), &addr_c, "rbd-nbd --exclusive");
    assert!(
        support::lockers(&run.step("lockD_map").out).is_empty(),
        "{:?}",
        run.step("lockD_map")
    );
    // --io-timeout 60 is the nbd device's request timeout; D, without it, has another.
    let t_c = run.step("timeoutC");
    assert_eq!(
        t_c.out.trim(),
        "60000",
        "io_timeout (ms) of C's device: {t_c:?}"
    );
    let t_d = run.step("timeoutD");
    assert!(
        t_d.rc == 0 && t_d.out.trim().parse::<u64>().is_ok_and(|ms| ms != 60000),
        "io_timeout (ms) of D's device, mapped without --io-timeout: {t_d:?}"
    );
    eprintln!(
        "nbd guest: queue io_timeout with --io-timeout 60: {} ms, without: {} ms",
        t_c.out.trim(),
        t_d.out.trim()
    );
    assert!(
        run.step("procs").out.contains("count=2"),
        "{:?}",
        run.step("procs")
    );

    // Data.
    let sha_data = support::first_word(run.step("sha_data"));
    assert_eq!(sha_data.len(), 64);
    assert_eq!(run.step("dd_write").rc, 0, "{:?}", run.step("dd_write"));
    assert_eq!(support::first_word(run.step("sha_readback")), sha_data);
    assert_ne!(
        run.step("snap_write_refused").rc,
        0,
        "writing to the snapshot mapping must fail"
    );
    let tmp = tempfile::tempdir().unwrap();
    let export_c = tmp.path().join("c.img");
    support::ceph_cli(
        &conf,
        "rbd",
        &[
            "export",
            "--no-progress",
            &spec_c,
            export_c.to_str().unwrap(),
        ],
    );
    assert_eq!(
        support::sha256_range(&export_c, 1 << 20, 4 << 20),
        sha_data,
        "rbd export sees the data written in the guest"
    );

    // ext4 on D; unmap refused while mounted.
    for t in ["mkfs", "mount", "umount"] {
        assert_eq!(run.step(t).rc, 0, "{t}: {:?}", run.step(t));
    }
    let mounted = run.step("unmapD_mounted");
    assert!(!mounted.ok(), "{mounted:?}");
    assert_eq!(mounted.variant(), "InUse", "{mounted:?}");
    assert!(mounted.error().contains("mounted"), "{}", mounted.error());
    assert!(run.step("unmapD").ok(), "{:?}", run.step("unmapD"));
    let export_d = tmp.path().join("d.img");
    support::ceph_cli(
        &conf,
        "rbd",
        &[
            "export",
            "--no-progress",
            &spec_d,
            export_d.to_str().unwrap(),
        ],
    );
    let cat = std::process::Command::new("debugfs")
        .args(["-R", "cat /hello.txt"])
        .arg(&export_d)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&cat.stdout).trim(),
        format!("hello from the nbd guest: {img_d}")
    );

    // Held open: refused without force, unmapped with force.
    let busy = run.step("unmapC_busy");
    assert!(!busy.ok(), "{busy:?}");
    assert_eq!(busy.variant(), "InUse", "{busy:?}");
    assert!(busy.error().contains("open by pid"), "{}", busy.error());
    assert!(
        run.step("unmapC_force").ok(),
        "{:?}",
        run.step("unmapC_force")
    );
    assert!(run.step("unmapCsnap").ok(), "{:?}", run.step("unmapCsnap"));

    // Nothing left: no mapping, no rbd-nbd process, no record.
    let end = run.step("listEnd");
    assert!(
        end.ok() && end.result().as_array().unwrap().is_empty(),
        "{end:?}"
    );
    assert!(
        run.step("procsEnd").out.contains("count=0"),
        "{:?}",
        run.step("procsEnd")
    );
    assert_eq!(
        run.step("recordsEnd").out.trim(),
        "0",
        "{:?}",
        run.step("recordsEnd")
    );
    for spec in [&spec_c, &spec_d] {
        let st = support::ceph_cli(&conf, "rbd", &["status", "--format", "json", spec]);
        assert!(support::watcher_addrs(&st).is_empty(), "{spec}: {st}");
    }
    eprintln!(
        "nbd guest: total {:.1} s; probe map C {} ms, map C@s1 {} ms, list {} ms, unmap {} ms",
        run.secs,
        map_c.probe_ms(),
        map_cs.probe_ms(),
        list.probe_ms(),
        run.step("unmapCsnap").probe_ms()
    );
}
