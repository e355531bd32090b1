//! The image trash against the real dev cluster, cross-checked with `rbd trash ls`.

mod common;
mod mgmt;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use mgmt::{TestImage, bench_write, plain_opts};
use rbd_core::rbd::{self, TrashSource};
use rbd_core::{ErrorKind, Image, OpenOptions};

#[test]
fn move_list_restore_remove() {
    let Some((rados, conf)) = common::connect() else {
        return;
    };
    let mut t = TestImage::create(&rados, "mgmt-trash", 4 << 20, &plain_opts());
    let id = rbd::image_id_by_name(&t.io, &t.name).unwrap();

    rbd::trash_move(&t.io, &t.name, Duration::from_secs(3600)).unwrap();
    assert!(!rbd::list(&t.io).unwrap().iter().any(|s| s.name == t.name));
    assert_eq!(
        Image::open(&t.io, &t.name, &OpenOptions::new())
            .unwrap_err()
            .kind(),
        ErrorKind::NotFound
    );

    let entries = rbd::trash_list(&t.io).unwrap();
    let e = entries
        .iter()
        .find(|e| e.id == id)
        .unwrap_or_else(|| panic!("{id} not in {entries:?}"));
    assert_eq!(e.name, t.name);
    assert_eq!(e.source, TrashSource::User);
    let deferment = e
        .deferment_end_time
        .duration_since(e.deletion_time)
        .unwrap();
    assert_eq!(deferment, Duration::from_secs(3600));
    assert_eq!(&rbd::trash_get(&t.io, &id).unwrap(), e);

    // Ceph's CLI lists the same entry.
    let cli = trash_ls_long(&conf);
    let c = cli
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == id.as_str())
        .unwrap_or_else(|| panic!("{id} not in {cli}"));
    assert_eq!(c["name"], t.name.as_str());
    assert_eq!(c["source"], "USER");

    // Deferred: removal needs force.
    let err = rbd::trash_remove(&t.io, &id, false).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");

    // Restore under a new name; the id stays.
    let new = testkit::unique("mgmt-restored");
    rbd::trash_restore(&t.io, &id, Some(&new)).unwrap();
    t.name = new.clone();
    assert_eq!(rbd::image_id_by_name(&t.io, &new).unwrap(), id);
    assert!(!rbd::trash_list(&t.io).unwrap().iter().any(|e| e.id == id));
    assert_eq!(
        rbd::trash_get(&t.io, &id).unwrap_err().kind(),
        ErrorKind::NotFound
    );

    // Trash again with data and no delay, then remove with progress.
    bench_write(&conf, &t.spec(), "4M", "4M");
    rbd::trash_move(&t.io, &new, Duration::ZERO).unwrap();
    let calls = AtomicU64::new(0);
    rbd::trash_remove_with_progress(&t.io, &id, false, |_, _| {
        calls.fetch_add(1, Ordering::Relaxed);
    })
    .unwrap();
    assert!(calls.load(Ordering::Relaxed) > 0);
    assert!(!rbd::trash_list(&t.io).unwrap().iter().any(|e| e.id == id));
    assert_eq!(
        rbd::image_id_by_name(&t.io, &new).unwrap_err().kind(),
        ErrorKind::NotFound
    );
}

#[test]
fn restore_to_original_name_and_forced_remove() {
    let Some((rados, _conf)) = common::connect() else {
        return;
    };
    let t = TestImage::create(&rados, "mgmt-trash2", 1 << 20, &plain_opts());
    let id = rbd::image_id_by_name(&t.io, &t.name).unwrap();
    rbd::trash_move(&t.io, &t.name, Duration::from_secs(600)).unwrap();
    rbd::trash_restore(&t.io, &id, None).unwrap();
    assert_eq!(rbd::image_id_by_name(&t.io, &t.name).unwrap(), id);

    rbd::trash_move(&t.io, &t.name, Duration::from_secs(600)).unwrap();
    rbd::trash_remove(&t.io, &id, true).unwrap();
    assert!(!rbd::trash_list(&t.io).unwrap().iter().any(|e| e.id == id));

    let e = rbd::trash_remove(&t.io, &id, true).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    let e = rbd::trash_restore(&t.io, "no-such-id", None).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    let e = rbd::trash_move(&t.io, &testkit::unique("mgmt-none"), Duration::ZERO).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
}

#[test]
fn an_open_image_can_be_trashed_but_not_removed() {
    let Some((rados, _conf)) = common::connect() else {
        return;
    };
    let t = TestImage::create(&rados, "mgmt-trash3", 1 << 20, &plain_opts());
    let id = rbd::image_id_by_name(&t.io, &t.name).unwrap();
    let img = t.open();
    // librbd lets an open image go to the trash (it keeps working for its users)...
    rbd::trash_move(&t.io, &t.name, Duration::ZERO).unwrap();
    assert!(rbd::trash_list(&t.io).unwrap().iter().any(|e| e.id == id));
    assert_eq!(img.size().unwrap(), 1 << 20);
    // ...but not out of it for good while a watcher remains.
    let e = rbd::trash_remove(&t.io, &id, true).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Busy, "{e}");
    img.close().unwrap();
    rbd::trash_remove(&t.io, &id, true).unwrap();
    assert!(!rbd::trash_list(&t.io).unwrap().iter().any(|e| e.id == id));
}

/// `rbd trash ls --long`, retried: it opens every entry, so it fails when another test
/// removes one of them meanwhile.
fn trash_ls_long(conf: &std::path::PathBuf) -> serde_json::Value {
    let args = [
        "trash",
        "ls",
        "--all",
        "--long",
        common::POOL,
        "--format",
        "json",
    ];
    for _ in 0..10 {
        let (ok, out, _) = common::cli_status(conf, "rbd", &args);
        if ok {
            return serde_json::from_str(&out).unwrap();
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    common::cli_json(conf, "rbd", &args[..5])
}
