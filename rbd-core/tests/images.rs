//! Image lifecycle against the real dev cluster: create, list, info, resize, features,
//! rename, copy, remove, and the error kinds callers match on.

mod common;
mod mgmt;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use mgmt::{TestImage, bench_write, export, plain_opts};
use rbd_core::rbd::{self, Features, ImageFormat, ImageOptions, Shrink};
use rbd_core::{ErrorKind, Image, OpenOptions};

const MIB: u64 = 1 << 20;

#[test]
fn create_stat_info_list_remove() {
    let Some((rados, _conf)) = common::connect() else {
        return;
    };
    let feats = Features::LAYERING | Features::EXCLUSIVE_LOCK;
    let opts = ImageOptions::new()
        .object_size(MIB)
        .unwrap()
        .features(feats);
    let t = TestImage::create(&rados, "mgmt-img", 10 * MIB, &opts);
    let img = t.open();

    let st = img.stat().unwrap();
    assert_eq!(st.size, 10 * MIB);
    assert_eq!(st.obj_size, MIB);
    assert_eq!(st.order, 20);
    assert_eq!(st.num_objs, 10);
    let id = img.id().unwrap();
    assert!(!id.is_empty());
    assert_eq!(st.block_name_prefix, format!("rbd_data.{id}"));
    assert_eq!(img.block_name_prefix().unwrap(), st.block_name_prefix);
    assert_eq!(img.name().unwrap(), t.name);
    assert_eq!(img.size().unwrap(), 10 * MIB);
    assert_eq!(img.features().unwrap(), feats);
    assert_eq!(img.format().unwrap(), ImageFormat::V2);
    assert!(img.flags().unwrap().is_empty());
    assert!(img.op_features().unwrap().is_empty());
    assert_eq!(img.stripe_unit().unwrap(), MIB);
    assert_eq!(img.stripe_count().unwrap(), 1);
    assert_eq!(img.data_pool_id().unwrap(), t.io.pool_id());
    let created = img.create_timestamp().unwrap();
    let age = SystemTime::now()
        .duration_since(created)
        .unwrap_or(Duration::ZERO);
    assert!(age < Duration::from_secs(300), "created {age:?} ago");
    assert!(img.modify_timestamp().unwrap() >= created);
    assert!(img.access_timestamp().unwrap() >= created);

    assert_eq!(rbd::image_id_by_name(&t.io, &t.name).unwrap(), id);
    assert_eq!(rbd::image_name_by_id(&t.io, &id).unwrap(), t.name);
    let by_id = Image::open_by_id(&t.io, &id, &OpenOptions::new().read_only(true)).unwrap();
    assert_eq!(by_id.name().unwrap(), t.name);
    drop(by_id);

    let info = img.info().unwrap();
    assert_eq!(info.name, t.name);
    assert_eq!(info.id, id);
    assert_eq!(info.pool, common::POOL);
    assert_eq!(info.size, 10 * MIB);
    assert_eq!(info.object_size, MIB);
    assert_eq!(info.objects, 10);
    assert_eq!(info.features, feats);
    assert_eq!(info.snapshot_count, 0);
    assert_eq!(info.parent, None);
    let json = serde_json::to_value(&info).unwrap();
    assert_eq!(
        json["features"],
        serde_json::json!(["layering", "exclusive-lock"])
    );
    assert_eq!(json["format"], 2);
    assert_eq!(json["size"], 10 * MIB);

    let listed = rbd::list(&t.io).unwrap();
    let spec = listed
        .iter()
        .find(|s| s.name == t.name)
        .unwrap_or_else(|| panic!("{} not in {listed:?}", t.name));
    assert_eq!(spec.id, id);

    drop(img);
    rbd::remove(&t.io, &t.name).unwrap();
    assert!(!rbd::list(&t.io).unwrap().iter().any(|s| s.name == t.name));
    let e = Image::open(&t.io, &t.name, &OpenOptions::new()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
    let msg = e.to_string();
    assert!(msg.contains(common::POOL) && msg.contains(&t.name), "{msg}");
}

#[test]
fn list_sees_several_images() {
    let Some((rados, _conf)) = common::connect() else {
        return;
    };
    let imgs: Vec<TestImage> = (0..3)
        .map(|_| TestImage::create(&rados, "mgmt-list", MIB, &plain_opts()))
        .collect();
    let listed = rbd::list(&imgs[0].io).unwrap();
    for t in &imgs {
        let id = rbd::image_id_by_name(&t.io, &t.name).unwrap();
        assert!(
            listed.iter().any(|s| s.name == t.name && s.id == id),
            "{} missing from {listed:?}",
            t.name
        );
    }
}

/// `rbd::list_directory` reads a pool's image directory with librados alone, and agrees
/// with `rbd_list2` (and the `rbd` CLI) on the images it lists.
#[test]
fn list_directory_agrees_with_list_and_needs_no_librbd() {
    let Some(conf) = testkit::ceph_conf() else {
        return;
    };
    let rados = rbd_core::Rados::connect(
        &rbd_core::ConnectOptions::new()
            .conf_file(&conf)
            .timeouts(rbd_core::Timeouts::uniform(Duration::from_secs(20)))
            .defer_librbd(),
    )
    .unwrap();
    // nextest runs this test in a process of its own; under plain `cargo test` another
    // test may have loaded librbd already.
    let loaded_before = rbd_core::librbd::is_loaded();
    let io = rados.ioctx(common::POOL).unwrap();
    // A namespace that never held an image has no directory object: an empty list.
    let ns = io.with_namespace(&testkit::unique("nodir")).unwrap();
    assert_eq!(rbd::list_directory(&ns).unwrap(), Vec::new());
    rbd::list_directory(&io).unwrap();
    if !loaded_before {
        assert!(
            !rbd_core::librbd::is_loaded(),
            "list_directory loaded librbd"
        );
    }

    let imgs: Vec<TestImage> = (0..3)
        .map(|_| TestImage::create(&rados, "mgmt-dir", MIB, &plain_opts()))
        .collect();
    let dir = rbd::list_directory(&io).unwrap();
    let listed = rbd::list(&io).unwrap();
    let cli: serde_json::Value = serde_json::from_str(&common::cli(
        &conf,
        "rbd",
        &["ls", "-l", "--format", "json", common::POOL],
    ))
    .unwrap();
    for t in &imgs {
        let spec = rbd::ImageSpec {
            name: t.name.clone(),
            id: rbd::image_id_by_name(&t.io, &t.name).unwrap(),
        };
        assert!(dir.contains(&spec), "{spec:?} missing from {dir:?}");
        assert!(listed.contains(&spec), "{spec:?} missing from {listed:?}");
        assert!(
            cli.as_array()
                .unwrap()
                .iter()
                .any(|i| i["image"] == spec.name.as_str()),
            "{} missing from rbd ls: {cli}",
            spec.name
        );
    }
    // Every image both lists saw has the same id in both (other tests create and remove
    // images in this pool meanwhile, so the lists need not be equal).
    for d in &dir {
        if let Some(l) = listed.iter().find(|l| l.name == d.name) {
            assert_eq!(l.id, d.id, "{}", d.name);
        }
    }
    rbd::remove(&imgs[0].io, &imgs[0].name).unwrap();
    assert!(
        !rbd::list_directory(&io)
            .unwrap()
            .iter()
            .any(|s| s.name == imgs[0].name),
        "a removed image is still listed"
    );
}

#[test]
fn error_kinds() {
    let Some((rados, conf)) = common::connect() else {
        return;
    };
    let t = TestImage::create(&rados, "mgmt-err", 4 * MIB, &ImageOptions::new());

    // Duplicate name.
    let e = rbd::create(&t.io, &t.name, MIB, &ImageOptions::new()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Exists, "{e}");
    assert!(e.to_string().contains(&t.name), "{e}");

    // Open image: its watcher makes removal Busy (and nothing is removed).
    let img = t.open();
    let e = rbd::remove(&t.io, &t.name).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Busy, "{e}");
    assert!(rbd::list(&t.io).unwrap().iter().any(|s| s.name == t.name));

    // Snapshots make removal HasSnapshots.
    img.snap_create("s1").unwrap();
    drop(img);
    let e = retry_busy(|| rbd::remove(&t.io, &t.name)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::HasSnapshots, "{e}");
    let snaps = common::cli_json(&conf, "rbd", &["snap", "ls", &t.spec()]);
    assert_eq!(snaps.as_array().unwrap().len(), 1, "{snaps}");

    // A missing image.
    let missing = testkit::unique("mgmt-missing");
    let e = rbd::remove(&t.io, &missing).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    let e = Image::open(&t.io, &missing, &OpenOptions::new()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
    assert!(
        e.to_string().contains(&format!("pool {}", common::POOL)),
        "{e}"
    );
    assert!(e.to_string().contains(&missing), "{e}");
}

/// Retries while a just-closed handle's watch lingers.
fn retry_busy<T>(mut f: impl FnMut() -> rbd_core::Result<T>) -> rbd_core::Result<T> {
    for _ in 0..20 {
        match f() {
            Err(e) if e.kind() == ErrorKind::Busy => std::thread::sleep(Duration::from_millis(500)),
            r => return r,
        }
    }
    f()
}

#[test]
fn bad_input_is_rejected_before_the_cluster() {
    let Some((rados, _conf)) = common::connect() else {
        return;
    };
    let io = rados.ioctx(common::POOL).unwrap();
    for name in ["", "a/b", "a@b", "x\0y", &"n".repeat(300)] {
        let e = rbd::create(&io, name, MIB, &ImageOptions::new()).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput, "{name:?}: {e}");
    }
    assert!(ImageOptions::new().object_size(3 * MIB).is_err());
    assert!(ImageOptions::new().object_size(64 * MIB).is_err());
    // A stripe unit bigger than the object is caught before the call.
    let opts = ImageOptions::new()
        .order(12)
        .unwrap()
        .striping(MIB, 2)
        .unwrap();
    let name = testkit::unique("mgmt-bad");
    let e = rbd::create(&io, &name, MIB, &opts).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    assert!(!rbd::list(&io).unwrap().iter().any(|s| s.name == name));
}

#[test]
fn striping_and_format_options() {
    let Some((rados, conf)) = common::connect() else {
        return;
    };
    let opts = ImageOptions::new()
        .order(22)
        .unwrap()
        .striping(64 * 1024, 8)
        .unwrap()
        .format(ImageFormat::V2)
        .features(Features::LAYERING | Features::STRIPING);
    let t = TestImage::create(&rados, "mgmt-stripe", 32 * MIB, &opts);
    let img = t.open();
    assert_eq!(img.stripe_unit().unwrap(), 64 * 1024);
    assert_eq!(img.stripe_count().unwrap(), 8);
    assert!(img.features().unwrap().contains(Features::STRIPING));
    let cli = common::cli_json(&conf, "rbd", &["info", &t.spec()]);
    assert_eq!(cli["stripe_unit"], 64 * 1024);
    assert_eq!(cli["stripe_count"], 8);

    // enable/disable relative to the defaults.
    let opts = ImageOptions::new().disable_features(Features::FAST_DIFF | Features::OBJECT_MAP);
    let t2 = TestImage::create(&rados, "mgmt-defaults", MIB, &opts);
    let f = t2.open().features().unwrap();
    assert!(
        f.contains(Features::LAYERING | Features::EXCLUSIVE_LOCK),
        "{f}"
    );
    assert!(
        !f.intersects(Features::FAST_DIFF | Features::OBJECT_MAP),
        "{f}"
    );
}

#[test]
fn resize_grow_and_shrink() {
    let Some((rados, conf)) = common::connect() else {
        return;
    };
    let t = TestImage::create(&rados, "mgmt-resize", 8 * MIB, &plain_opts());
    let img = t.open();
    img.resize(16 * MIB, Shrink::Forbid).unwrap();
    assert_eq!(img.size().unwrap(), 16 * MIB);

    let e = img.resize(4 * MIB, Shrink::Forbid).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    assert_eq!(img.size().unwrap(), 16 * MIB);

    // Shrinking over real objects reports progress.
    bench_write(&conf, &t.spec(), "4M", "16M");
    let calls = AtomicU64::new(0);
    let last = std::sync::Mutex::new((0, 0));
    img.resize_with_progress(4 * MIB, Shrink::Allow, |done, total| {
        calls.fetch_add(1, Ordering::Relaxed);
        *last.lock().unwrap() = (done, total);
    })
    .unwrap();
    assert_eq!(img.size().unwrap(), 4 * MIB);
    assert!(calls.load(Ordering::Relaxed) > 0, "no progress reported");
    let (done, total) = *last.lock().unwrap();
    assert!(total > 0 && done <= total, "{done}/{total}");
    let cli = common::cli_json(&conf, "rbd", &["info", &t.spec()]);
    assert_eq!(cli["size"], 4 * MIB);
}

#[test]
fn update_features() {
    let Some((rados, conf)) = common::connect() else {
        return;
    };
    let t = TestImage::create(&rados, "mgmt-feat", 4 * MIB, &ImageOptions::new());
    let img = t.open();
    assert!(img.features().unwrap().contains(Features::FAST_DIFF));
    img.update_features(Features::FAST_DIFF | Features::OBJECT_MAP, false)
        .unwrap();
    let f = img.features().unwrap();
    assert!(
        !f.intersects(Features::FAST_DIFF | Features::OBJECT_MAP),
        "{f}"
    );
    let cli = common::cli_json(&conf, "rbd", &["info", &t.spec()]);
    let names: Vec<&str> = cli["features"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(
        !names.contains(&"object-map") && names.contains(&"layering"),
        "{names:?}"
    );

    img.update_features(Features::OBJECT_MAP, true).unwrap();
    assert!(img.features().unwrap().contains(Features::OBJECT_MAP));

    let e = img.update_features(Features::LAYERING, false).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    assert!(e.to_string().contains("layering"), "{e}");
    assert!(img.features().unwrap().contains(Features::LAYERING));
}

#[test]
fn rename_keeps_the_id() {
    let Some((rados, _conf)) = common::connect() else {
        return;
    };
    let mut t = TestImage::create(&rados, "mgmt-ren", MIB, &plain_opts());
    let id = rbd::image_id_by_name(&t.io, &t.name).unwrap();
    let new = testkit::unique("mgmt-renamed");
    rbd::rename(&t.io, &t.name, &new).unwrap();
    let old = std::mem::replace(&mut t.name, new.clone());
    assert_eq!(
        Image::open(&t.io, &old, &OpenOptions::new())
            .unwrap_err()
            .kind(),
        ErrorKind::NotFound
    );
    assert_eq!(rbd::image_id_by_name(&t.io, &new).unwrap(), id);
    assert_eq!(rbd::image_name_by_id(&t.io, &id).unwrap(), new);

    let other = TestImage::create(&rados, "mgmt-ren2", MIB, &plain_opts());
    let e = rbd::rename(&t.io, &new, &other.name).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Exists, "{e}");
}

#[test]
fn copy_with_options_and_progress() {
    let Some((rados, conf)) = common::connect() else {
        return;
    };
    let src = TestImage::create(&rados, "mgmt-cpsrc", 8 * MIB, &plain_opts());
    bench_write(&conf, &src.spec(), "64K", "4M");
    let dst_name = testkit::unique("mgmt-cpdst");
    let dst = TestImage::adopt(&rados, &dst_name);
    let img = src.open();
    let calls = AtomicU64::new(0);
    img.copy_with_progress(
        &dst.io,
        &dst_name,
        &ImageOptions::new().order(20).unwrap(),
        |_, _| {
            calls.fetch_add(1, Ordering::Relaxed);
        },
    )
    .unwrap();
    assert!(calls.load(Ordering::Relaxed) > 0);
    let copy = dst.open();
    assert_eq!(copy.size().unwrap(), 8 * MIB);
    assert_eq!(copy.stat().unwrap().order, 20);
    // Unset options come from the source.
    assert_eq!(copy.features().unwrap(), Features::LAYERING);
    let a = export(&conf, &src.spec());
    let b = export(&conf, &dst.spec());
    assert_eq!(a.len(), 8 * MIB as usize);
    assert!(a.iter().any(|&x| x != 0), "bench wrote data");
    assert!(a == b, "copy differs from source");

    // Plain copy, and copying onto an existing name fails.
    let dst2 = TestImage::adopt(&rados, &testkit::unique("mgmt-cpdst2"));
    img.copy(&dst2.io, &dst2.name, &ImageOptions::new())
        .unwrap();
    assert_eq!(export(&conf, &dst2.spec()), a);
    let e = img
        .copy(&dst2.io, &dst2.name, &ImageOptions::new())
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Exists, "{e}");
}

#[test]
fn remove_with_progress_reports() {
    let Some((rados, conf)) = common::connect() else {
        return;
    };
    let t = TestImage::create(&rados, "mgmt-rmprog", 8 * MIB, &plain_opts());
    bench_write(&conf, &t.spec(), "4M", "8M");
    let last = std::sync::Mutex::new(None);
    rbd::remove_with_progress(&t.io, &t.name, |d, total| {
        *last.lock().unwrap() = Some((d, total));
    })
    .unwrap();
    let (d, total) = last.lock().unwrap().expect("progress reported");
    assert!(total > 0 && d > 0 && d <= total, "{d}/{total}");
    let (ok, _, err) = common::cli_status(&conf, "rbd", &["info", &t.spec()]);
    assert!(!ok && err.contains("No such file"), "{err}");
}

#[test]
fn panicking_progress_callback_is_resumed_after_the_call() {
    let Some((rados, conf)) = common::connect() else {
        return;
    };
    let t = TestImage::create(&rados, "mgmt-panic", 8 * MIB, &plain_opts());
    bench_write(&conf, &t.spec(), "4M", "8M");
    let img = t.open();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        img.resize_with_progress(MIB, Shrink::Allow, |_, _| panic!("progress boom"))
    }));
    let p = r.expect_err("the panic is resumed");
    assert_eq!(p.downcast_ref::<&str>(), Some(&"progress boom"));
    // The operation itself ran to completion and the handle still works.
    assert_eq!(img.size().unwrap(), MIB);
}

#[test]
fn data_pool_holds_the_data_objects() {
    let Some((rados, conf)) = common::connect() else {
        return;
    };
    let data_pool = testkit::unique("rbdcore-data");
    struct PoolGuard(rbd_core::Rados, String);
    impl Drop for PoolGuard {
        fn drop(&mut self) {
            let _ = self.0.pool_delete(&self.1);
        }
    }
    rados.pool_create(&data_pool).unwrap();
    let _pool = PoolGuard(rados.clone(), data_pool.clone());
    common::cli(
        &conf,
        "ceph",
        &["osd", "pool", "application", "enable", &data_pool, "rbd"],
    );
    let opts = ImageOptions::new()
        .features(Features::LAYERING)
        .data_pool(&data_pool)
        .unwrap();
    assert_eq!(opts.get_data_pool().as_deref(), Some(data_pool.as_str()));
    let t = TestImage::create(&rados, "mgmt-datapool", 8 * MIB, &opts);
    let img = t.open();
    assert_eq!(
        img.data_pool_id().unwrap(),
        rados.pool_lookup(&data_pool).unwrap()
    );
    assert!(img.features().unwrap().contains(Features::DATA_POOL));
    let cli = common::cli_json(&conf, "rbd", &["info", &t.spec()]);
    assert_eq!(cli["data_pool"], data_pool.as_str(), "{cli}");
    // Data goes to the data pool; the header stays in the image's pool.
    img.write_at(5 * MIB, b"in the data pool").unwrap();
    img.flush().unwrap();
    let prefix = img.block_name_prefix().unwrap();
    // With a data pool the prefix also names the image's own pool
    // (`rbd_data.<pool id>.<image id>`), which can be longer than rbd_stat's fixed
    // 24-byte field: stat must not truncate it.
    let pool_id = t.io.pool_id();
    assert_eq!(prefix, format!("rbd_data.{pool_id}.{}", img.id().unwrap()));
    assert_eq!(img.stat().unwrap().block_name_prefix, prefix);
    let objs = common::cli(&conf, "rados", &["-p", &data_pool, "ls"]);
    assert!(
        objs.lines()
            .any(|o| o == format!("{prefix}.0000000000000001")),
        "{objs}"
    );
    let mut b = [0u8; 16];
    img.read_exact_at(5 * MIB, &mut b).unwrap();
    assert_eq!(&b, b"in the data pool");
    drop(img);
    drop(t); // removes the image before the pool goes
}
