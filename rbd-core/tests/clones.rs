//! Clones against the real dev cluster: create, parent, children, flatten, clone v2.

mod common;
mod mgmt;

use std::sync::atomic::{AtomicU64, Ordering};

use mgmt::{TestImage, bench_write, export, plain_opts};
use rbd_core::rbd::{self, CloneFormat, Features, ImageOptions, OpFeatures, SnapNamespace};
use rbd_core::{ErrorKind, Image, OpenOptions};

const MIB: u64 = 1 << 20;

#[test]
fn clone_v1_parent_children_flatten() {
    let Some((rados, conf)) = common::connect() else {
        return;
    };
    let parent = TestImage::create(&rados, "mgmt-parent", 8 * MIB, &plain_opts());
    bench_write(&conf, &parent.spec(), "1M", "4M");
    let p = parent.open();
    p.snap_create("base").unwrap();
    let base_id = p.snap_get_id("base").unwrap();
    let parent_id = p.id().unwrap();

    // Format 1 needs a protected snapshot.
    let child_name = testkit::unique("mgmt-child");
    let child_guard = TestImage::adopt(&rados, &child_name);
    // deep-flatten: flattening the child also detaches its snapshots from the parent.
    let v1 = ImageOptions::new()
        .clone_format(CloneFormat::V1)
        .features(Features::LAYERING | Features::DEEP_FLATTEN);
    let e = rbd::clone_image(
        &parent.io,
        &parent.name,
        "base",
        &child_guard.io,
        &child_name,
        &v1,
    )
    .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    p.snap_protect("base").unwrap();
    rbd::clone_image(
        &parent.io,
        &parent.name,
        "base",
        &child_guard.io,
        &child_name,
        &v1,
    )
    .unwrap();

    let child = child_guard.open();
    let info = child.parent().unwrap().expect("a clone has a parent");
    assert_eq!(info.image.pool_name, common::POOL);
    assert_eq!(info.image.pool_id, parent.io.pool_id());
    assert_eq!(info.image.pool_namespace, "");
    assert_eq!(info.image.image_name, parent.name);
    assert_eq!(info.image.image_id, parent_id);
    assert!(!info.image.trash);
    assert_eq!(info.snap.name, "base");
    assert_eq!(info.snap.id, base_id);
    assert_eq!(info.snap.namespace, SnapNamespace::User);
    assert_eq!(child.parent_overlap().unwrap(), 8 * MIB);
    assert_eq!(child.info().unwrap().parent, Some(info.clone()));
    assert_eq!(p.parent().unwrap(), None);
    assert_eq!(p.parent_overlap().unwrap(), 0);

    // The CLI sees the same parent.
    let cli = common::cli_json(&conf, "rbd", &["info", &child_guard.spec()]);
    assert_eq!(cli["parent"]["image"], parent.name.as_str());
    assert_eq!(cli["parent"]["snapshot"], "base");
    assert_eq!(cli["parent"]["overlap"], 8 * MIB);

    // The clone reads the parent's data.
    assert_eq!(
        export(&conf, &child_guard.spec()),
        export(&conf, &format!("{}@base", parent.spec()))
    );

    // Children and descendants (a grandchild through a snapshot of the child).
    let kids = p.list_children().unwrap();
    assert_eq!(kids.len(), 1, "{kids:?}");
    assert_eq!(kids[0].image_name, child_name);
    assert_eq!(kids[0].image_id, child.id().unwrap());
    assert_eq!(kids[0].pool_name, common::POOL);
    child.snap_create("c").unwrap();
    child.snap_protect("c").unwrap();
    let grand_name = testkit::unique("mgmt-grandchild");
    let grand_guard = TestImage::adopt(&rados, &grand_name);
    rbd::clone_image(
        &child_guard.io,
        &child_name,
        "c",
        &grand_guard.io,
        &grand_name,
        &v1,
    )
    .unwrap();
    let desc: Vec<String> = p
        .list_descendants()
        .unwrap()
        .into_iter()
        .map(|s| s.image_name)
        .collect();
    assert!(
        desc.contains(&child_name) && desc.contains(&grand_name),
        "{desc:?}"
    );
    assert_eq!(p.list_children().unwrap().len(), 1);
    let cli = common::cli_json(
        &conf,
        "rbd",
        &["children", &format!("{}@base", parent.spec())],
    );
    assert_eq!(cli[0]["image"], child_name.as_str(), "{cli}");

    // Protected with children: cannot unprotect.
    let e = p.snap_unprotect("base").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Busy, "{e}");

    // Flatten the child: it keeps its data and forgets its parent.
    let before = export(&conf, &child_guard.spec());
    let calls = AtomicU64::new(0);
    child
        .flatten_with_progress(|_, _| {
            calls.fetch_add(1, Ordering::Relaxed);
        })
        .unwrap();
    assert!(calls.load(Ordering::Relaxed) > 0);
    assert_eq!(child.parent().unwrap(), None);
    assert_eq!(export(&conf, &child_guard.spec()), before);
    assert!(p.list_children().unwrap().is_empty());
    p.snap_unprotect("base").unwrap();

    // Flattening the grandchild without progress.
    let g = grand_guard.open();
    assert!(g.parent().unwrap().is_some());
    g.flatten().unwrap();
    assert_eq!(g.parent().unwrap(), None);
    let e = g.flatten().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
}

#[test]
fn clone_v2_needs_no_protection_and_uses_the_snapshot_trash() {
    let Some((rados, conf)) = common::connect() else {
        return;
    };
    let parent = TestImage::create(&rados, "mgmt-parent2", 4 * MIB, &plain_opts());
    let p = parent.open();
    p.snap_create("s").unwrap();
    let child_name = testkit::unique("mgmt-child2");
    let child_guard = TestImage::adopt(&rados, &child_name);
    let v2 = ImageOptions::new()
        .clone_format(CloneFormat::V2)
        .order(20)
        .unwrap();
    rbd::clone_image(
        &parent.io,
        &parent.name,
        "s",
        &child_guard.io,
        &child_name,
        &v2,
    )
    .unwrap();
    let child = child_guard.open();
    assert_eq!(child.stat().unwrap().order, 20);
    assert!(
        child
            .op_features()
            .unwrap()
            .contains(OpFeatures::CLONE_CHILD)
    );
    assert!(p.op_features().unwrap().contains(OpFeatures::CLONE_PARENT));
    let cli = common::cli_json(&conf, "rbd", &["info", &parent.spec()]);
    assert_eq!(
        cli["op_features"],
        serde_json::json!(["clone-parent"]),
        "{cli}"
    );

    // Removing the parent snapshot moves it to the trash namespace.
    p.snap_remove("s").unwrap();
    let snaps = p.snap_list().unwrap();
    assert_eq!(snaps.len(), 1, "{snaps:?}");
    assert_eq!(snaps[0].namespace, SnapNamespace::Trash);
    // A fresh handle sees the parent snapshot's new namespace (an already open child
    // keeps its cached view of the parent).
    let fresh = child_guard.open();
    let info = fresh.parent().unwrap().unwrap();
    assert_eq!(info.snap.namespace, SnapNamespace::Trash);
    drop(fresh);
    assert_eq!(info.image.image_name, parent.name);

    child.flatten().unwrap();
    drop(child);
    // Once the last child is gone, the trashed snapshot goes too.
    let p2 = Image::open(&parent.io, &parent.name, &OpenOptions::new()).unwrap();
    assert!(p2.snap_list().unwrap().is_empty());
}

#[test]
fn clone_errors() {
    let Some((rados, _conf)) = common::connect() else {
        return;
    };
    let io = rados.ioctx(common::POOL).unwrap();
    let missing = testkit::unique("mgmt-noparent");
    let e = rbd::clone_image(&io, &missing, "s", &io, "x-never", &ImageOptions::new()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    let e = rbd::clone_image(&io, "p", "s", &io, "bad/name", &ImageOptions::new()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");

    let parent = TestImage::create(&rados, "mgmt-parent3", MIB, &plain_opts());
    let e = rbd::clone_image(
        &io,
        &parent.name,
        "nosnap",
        &io,
        &testkit::unique("mgmt-never"),
        &ImageOptions::new(),
    )
    .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
}
