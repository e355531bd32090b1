//! Snapshots against the real dev cluster.

mod common;
mod mgmt;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use mgmt::{TestImage, bench_write, export, plain_opts};
use rbd_core::rbd::{Shrink, SnapCreateFlags, SnapNamespace, SnapRemoveFlags};
use rbd_core::{ErrorKind, Image, OpenOptions};

const MIB: u64 = 1 << 20;

#[test]
fn create_list_lookup_rename_remove() {
    let Some((rados, conf)) = common::connect() else {
        return;
    };
    let t = TestImage::create(&rados, "mgmt-snap", 8 * MIB, &plain_opts());
    let img = t.open();
    assert!(img.snap_list().unwrap().is_empty());
    assert!(!img.snap_exists("s1").unwrap());

    img.snap_create("s1").unwrap();
    img.resize(16 * MIB, Shrink::Forbid).unwrap();
    img.snap_create_with_flags("s2", SnapCreateFlags::SKIP_QUIESCE)
        .unwrap();

    let snaps = img.snap_list().unwrap();
    assert_eq!(snaps.len(), 2, "{snaps:?}");
    assert_eq!(snaps[0].name, "s1");
    assert_eq!(snaps[0].size, 8 * MIB);
    assert_eq!(snaps[1].name, "s2");
    assert_eq!(snaps[1].size, 16 * MIB);
    assert!(snaps[0].id < snaps[1].id);
    for s in &snaps {
        assert_eq!(s.namespace, SnapNamespace::User);
        let age = SystemTime::now()
            .duration_since(s.timestamp)
            .unwrap_or(Duration::ZERO);
        assert!(age < Duration::from_secs(300), "{s:?}");
        assert_eq!(img.snap_get_id(&s.name).unwrap(), s.id);
        assert_eq!(img.snap_get_name(s.id).unwrap(), s.name);
        assert_eq!(img.snap_get_timestamp(s.id).unwrap(), s.timestamp);
    }
    assert!(img.snap_exists("s1").unwrap());

    // Ceph's CLI agrees on ids, names and sizes.
    let cli = common::cli_json(&conf, "rbd", &["snap", "ls", &t.spec()]);
    let cli: Vec<(u64, String, u64)> = cli
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["id"].as_u64().unwrap(),
                s["name"].as_str().unwrap().to_owned(),
                s["size"].as_u64().unwrap(),
            )
        })
        .collect();
    let ours: Vec<(u64, String, u64)> = snaps
        .iter()
        .map(|s| (s.id, s.name.clone(), s.size))
        .collect();
    assert_eq!(cli, ours);

    let e = img.snap_create("s1").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Exists, "{e}");
    assert!(e.to_string().contains("snapshot s1"), "{e}");

    img.snap_rename("s1", "first").unwrap();
    assert!(!img.snap_exists("s1").unwrap());
    assert_eq!(img.snap_get_id("first").unwrap(), snaps[0].id);

    img.snap_remove("first").unwrap();
    let e = img.snap_get_id("first").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
    let e = img.snap_remove("first").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
    let names: Vec<String> = img
        .snap_list()
        .unwrap()
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(names, vec!["s2"]);

    for bad in ["", "a@b", "a/b"] {
        let e = img.snap_create(bad).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput, "{bad:?}");
    }
}

#[test]
fn protect_unprotect_and_forced_remove() {
    let Some((rados, conf)) = common::connect() else {
        return;
    };
    let t = TestImage::create(&rados, "mgmt-prot", 8 * MIB, &plain_opts());
    bench_write(&conf, &t.spec(), "4M", "8M");
    let img = t.open();
    img.snap_create("p").unwrap();
    assert!(!img.snap_is_protected("p").unwrap());
    img.snap_protect("p").unwrap();
    assert!(img.snap_is_protected("p").unwrap());
    let cli = common::cli_json(&conf, "rbd", &["snap", "ls", &t.spec()]);
    assert_eq!(cli[0]["protected"], "true", "{cli}");

    let e = img.snap_protect("p").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Busy, "{e}");
    let e = img.snap_remove("p").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Busy, "{e}");

    img.snap_unprotect("p").unwrap();
    assert!(!img.snap_is_protected("p").unwrap());
    let e = img.snap_unprotect("p").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");

    // FORCE unprotects and removes in one call, with progress.
    img.snap_protect("p").unwrap();
    let calls = AtomicU64::new(0);
    img.snap_remove_with_progress("p", SnapRemoveFlags::FORCE, |_, _| {
        calls.fetch_add(1, Ordering::Relaxed);
    })
    .unwrap();
    assert!(!img.snap_exists("p").unwrap());
    let cli = common::cli_json(&conf, "rbd", &["snap", "ls", &t.spec()]);
    assert_eq!(cli.as_array().unwrap().len(), 0, "{cli}");
}

#[test]
fn rollback_restores_data() {
    let Some((rados, conf)) = common::connect() else {
        return;
    };
    let t = TestImage::create(&rados, "mgmt-rollback", 8 * MIB, &plain_opts());
    let img = t.open();
    img.snap_create("empty").unwrap();
    drop(img);
    bench_write(&conf, &t.spec(), "1M", "4M");
    assert!(export(&conf, &t.spec()).iter().any(|&b| b != 0));

    let img = t.open();
    let last = std::sync::Mutex::new((0, 0));
    img.snap_rollback_with_progress("empty", |d, total| {
        *last.lock().unwrap() = (d, total);
    })
    .unwrap();
    let (d, total) = *last.lock().unwrap();
    assert!(total > 0 && d > 0 && d <= total, "{d}/{total}");
    drop(img);
    let data = export(&conf, &t.spec());
    assert_eq!(data.len(), 8 * MIB as usize);
    assert!(data.iter().all(|&b| b == 0), "rollback left data behind");

    img_with_data_rolls_back_without_progress(&t, &conf);
}

fn img_with_data_rolls_back_without_progress(t: &TestImage, conf: &std::path::PathBuf) {
    bench_write(conf, &t.spec(), "1M", "2M");
    let img = t.open();
    img.snap_create("full").unwrap();
    let before = export(conf, &t.spec());
    img.resize(4 * MIB, Shrink::Allow).unwrap();
    img.snap_rollback("full").unwrap();
    assert_eq!(img.size().unwrap(), 8 * MIB);
    drop(img);
    assert_eq!(export(conf, &t.spec()), before);
    let e = t.open().snap_rollback("nope").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
}

#[test]
fn snap_set_reads_a_snapshot() {
    let Some((rados, _conf)) = common::connect() else {
        return;
    };
    let t = TestImage::create(&rados, "mgmt-snapset", 8 * MIB, &plain_opts());
    let mut img = t.open();
    img.snap_create("small").unwrap();
    img.resize(32 * MIB, Shrink::Forbid).unwrap();
    let id = img.snap_get_id("small").unwrap();

    img.snap_set(Some("small")).unwrap();
    assert_eq!(img.size().unwrap(), 8 * MIB);
    assert_eq!(img.opened_snapshot(), Some("small"));
    // At a snapshot the handle is read-only.
    let e = img.resize(64 * MIB, Shrink::Forbid).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ReadOnly, "{e}");

    img.snap_set(None).unwrap();
    assert_eq!(img.size().unwrap(), 32 * MIB);
    assert_eq!(img.opened_snapshot(), None);

    img.snap_set_by_id(Some(id)).unwrap();
    assert_eq!(img.size().unwrap(), 8 * MIB);
    assert_eq!(img.opened_snapshot(), Some("small"));
    img.snap_set_by_id(None).unwrap();
    assert_eq!(img.size().unwrap(), 32 * MIB);

    let e = img.snap_set(Some("missing")).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");

    // Opening at a snapshot gives the same view.
    let at = Image::open(&t.io, &t.name, &OpenOptions::new().snapshot("small")).unwrap();
    assert_eq!(at.size().unwrap(), 8 * MIB);
}

#[test]
fn snapshot_limit() {
    let Some((rados, _conf)) = common::connect() else {
        return;
    };
    let t = TestImage::create(&rados, "mgmt-snaplimit", MIB, &plain_opts());
    let img = t.open();
    assert_eq!(img.snap_get_limit().unwrap(), None);
    img.snap_set_limit(Some(1)).unwrap();
    assert_eq!(img.snap_get_limit().unwrap(), Some(1));
    img.snap_create("one").unwrap();
    let e = img.snap_create("two").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NoSpace, "{e}");
    assert!(!img.snap_exists("two").unwrap());
    img.snap_set_limit(None).unwrap();
    assert_eq!(img.snap_get_limit().unwrap(), None);
    img.snap_create("two").unwrap();
    assert_eq!(img.snap_list().unwrap().len(), 2);
}
