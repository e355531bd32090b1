//! RBD namespaces: `rbd::namespace_exists`, and the image operations inside a namespace,
//! cross-checked with Ceph's `rbd` CLI (`pool/namespace/image` specs).

mod common;

use std::path::PathBuf;

use rbd_core::rbd::{self, ImageOptions, Shrink};
use rbd_core::{ErrorKind, Image, IoCtx, OpenOptions};

const MIB: u64 = 1 << 20;

/// Removes the namespace's images (snapshots first) and then the namespace, on drop.
struct Ns {
    io: IoCtx,
    conf: PathBuf,
    name: String,
}

impl Drop for Ns {
    fn drop(&mut self) {
        if let Ok(list) = rbd::list(&self.io) {
            for i in list {
                if let Ok(img) = Image::open(&self.io, &i.name, &OpenOptions::new()) {
                    for s in img.snap_list().unwrap_or_default() {
                        let _ = img.snap_remove(&s.name);
                    }
                }
                let _ = rbd::remove(&self.io, &i.name);
            }
        }
        let _ = common::cli_status(
            &self.conf,
            "rbd",
            &[
                "namespace",
                "rm",
                &format!("{}/{}", common::POOL, self.name),
            ],
        );
    }
}

#[test]
fn namespace_exists_follows_create_and_remove() {
    let Some((rados, conf)) = common::connect() else {
        return;
    };
    let io = rados.ioctx(common::POOL).unwrap();
    let name = testkit::unique("nsx");
    assert!(
        rbd::namespace_exists(&io, "").unwrap(),
        "the default namespace"
    );
    assert!(!rbd::namespace_exists(&io, &name).unwrap());
    let spec = format!("{}/{name}", common::POOL);
    common::cli(&conf, "rbd", &["namespace", "create", &spec]);
    let _ns = Ns {
        io: io.with_namespace(&name).unwrap(),
        conf: conf.clone(),
        name: name.clone(),
    };
    assert!(rbd::namespace_exists(&io, &name).unwrap());
    // Asked through an ioctx in another namespace: the answer is about the pool.
    assert!(rbd::namespace_exists(&io.with_namespace(&name).unwrap(), &name).unwrap());
    common::cli(&conf, "rbd", &["namespace", "rm", &spec]);
    assert!(!rbd::namespace_exists(&io, &name).unwrap());
    // Bad input is refused with the value named, before librbd sees it.
    let e = rbd::namespace_exists(&io, "a\0b").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
}

#[test]
fn images_live_and_work_inside_a_namespace() {
    let Some((rados, conf)) = common::connect() else {
        return;
    };
    let io = rados.ioctx(common::POOL).unwrap();
    let ns_name = testkit::unique("nsi");
    common::cli(
        &conf,
        "rbd",
        &[
            "namespace",
            "create",
            &format!("{}/{ns_name}", common::POOL),
        ],
    );
    let ns_io = io.with_namespace(&ns_name).unwrap();
    assert_eq!(ns_io.namespace(), ns_name);
    assert_eq!(
        io.namespace(),
        "",
        "with_namespace leaves the original alone"
    );
    let _ns = Ns {
        io: ns_io.try_clone().unwrap(),
        conf: conf.clone(),
        name: ns_name.clone(),
    };
    let clone = ns_io.try_clone().unwrap();
    assert_eq!(clone.namespace(), ns_name, "try_clone keeps the namespace");

    // Create in the namespace: listed there, not in the default namespace.
    let img_name = testkit::unique("nsimg");
    rbd::create(&ns_io, &img_name, 16 * MIB, &ImageOptions::new()).unwrap();
    let listed = rbd::list(&ns_io).unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].name, img_name);
    assert!(
        !rbd::list(&io).unwrap().iter().any(|i| i.name == img_name),
        "the image leaked into the default namespace"
    );
    let e = Image::open(&io, &img_name, &OpenOptions::new()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    let id = rbd::image_id_by_name(&ns_io, &img_name).unwrap();
    assert_eq!(listed[0].id, id);

    // The CLI sees it at pool/namespace/image, with the same id and size.
    let spec = format!("{}/{ns_name}/{img_name}", common::POOL);
    let info = common::cli_json(&conf, "rbd", &["info", &spec]);
    assert_eq!(info["id"], id.as_str());
    assert_eq!(info["size"], 16 * MIB);
    let ls = common::cli_json(
        &conf,
        "rbd",
        &["ls", &format!("{}/{ns_name}", common::POOL)],
    );
    assert_eq!(ls, serde_json::json!([img_name]));

    // I/O, snapshots, resize, metadata, by name and by id.
    let img = Image::open(&clone, &img_name, &OpenOptions::new()).unwrap();
    let details = img.info().unwrap();
    assert_eq!(details.namespace, ns_name);
    assert_eq!(details.pool, common::POOL);
    assert_eq!(details.id, id);
    img.write_all_at(MIB, b"inside a namespace").unwrap();
    img.snap_create("s1").unwrap();
    img.write_all_at(MIB, b"after the snapshot").unwrap();
    img.resize(32 * MIB, Shrink::Forbid).unwrap();
    img.metadata_set("k", "v").unwrap();
    drop(img);
    let by_id = Image::open_by_id(&ns_io, &id, &OpenOptions::new()).unwrap();
    assert_eq!(by_id.size().unwrap(), 32 * MIB);
    assert_eq!(by_id.metadata_get("k").unwrap().as_deref(), Some("v"));
    let mut buf = vec![0u8; 18];
    by_id.read_exact_at(MIB, &mut buf).unwrap();
    assert_eq!(&buf, b"after the snapshot");
    drop(by_id);
    let at_snap = Image::open(&ns_io, &img_name, &OpenOptions::new().snapshot("s1")).unwrap();
    at_snap.read_exact_at(MIB, &mut buf).unwrap();
    assert_eq!(&buf, b"inside a namespace");
    drop(at_snap);
    let snaps = common::cli_json(&conf, "rbd", &["snap", "ls", &spec]);
    assert_eq!(snaps[0]["name"], "s1", "{snaps}");
    assert_eq!(
        common::cli_json(&conf, "rbd", &["info", &spec])["size"],
        32 * MIB
    );
    // The exported head has the data.
    let out = std::process::Command::new("timeout")
        .args(["60", "rbd", "-c"])
        .arg(&conf)
        .args(["export", "--no-progress", &spec, "-"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        &out.stdout[MIB as usize..MIB as usize + 18],
        b"after the snapshot"
    );

    // Remove: snapshot first, then the image; the namespace is empty again.
    Image::open(&ns_io, &img_name, &OpenOptions::new())
        .unwrap()
        .snap_remove("s1")
        .unwrap();
    rbd::remove(&ns_io, &img_name).unwrap();
    assert!(rbd::list(&ns_io).unwrap().is_empty());
    let e = rbd::image_id_by_name(&ns_io, &img_name).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    assert!(
        e.to_string().contains(&ns_name),
        "errors name the namespace: {e}"
    );
}
