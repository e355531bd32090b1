//! Management operations from async code through `task::blocking`, under a
//! multi-threaded tokio runtime, against the real dev cluster.

mod common;
mod mgmt;

use std::sync::Arc;

use rbd_core::rbd::{self, ImageOptions};
use rbd_core::task::blocking;
use rbd_core::{ErrorKind, Image, OpenOptions};

/// What each task reports: its image name, snapshot count, final size, data read back.
type Outcome = (String, usize, u64, Vec<u8>);

#[test]
fn image_lifecycles_run_concurrently_from_tasks() {
    let Some((rados, conf)) = common::connect() else {
        return;
    };
    let io = Arc::new(rados.ioctx(common::POOL).unwrap());
    let names: Vec<String> = (0..6).map(|_| testkit::unique("async-mgmt")).collect();
    // Removed whatever happens.
    let _guards: Vec<mgmt::TestImage> = names
        .iter()
        .map(|n| mgmt::TestImage::adopt(&rados, n))
        .collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut set: tokio::task::JoinSet<rbd_core::Result<Outcome>> = tokio::task::JoinSet::new();
        for name in names.clone() {
            let io = io.clone();
            set.spawn(async move {
                let n = name.clone();
                let i = io.clone();
                blocking(move || rbd::create(&i, &n, 8 << 20, &ImageOptions::new())).await?;
                let n = name.clone();
                let i = io.clone();
                let img =
                    Arc::new(blocking(move || Image::open(&i, &n, &OpenOptions::new())).await?);
                // Native aio and blocking management calls mix freely.
                img.aio_write(0, name.as_bytes().to_vec()).await?;
                let s = img.clone();
                blocking(move || s.snap_create("s1")).await?;
                let s = img.clone();
                let snaps = blocking(move || s.snap_list()).await?;
                let s = img.clone();
                blocking(move || s.resize(16 << 20, rbd::Shrink::Forbid)).await?;
                let size = img.size()?;
                let back = img.aio_read(0, vec![0; name.len()]).await?;
                rbd_core::Result::Ok((name, snaps.len(), size, back))
            });
        }
        while let Some(r) = set.join_next().await {
            let (name, snaps, size, back) = r.unwrap().unwrap();
            assert_eq!(snaps, 1, "{name}");
            assert_eq!(size, 16 << 20, "{name}");
            assert_eq!(back, name.as_bytes());
        }
        // Errors come back as our errors.
        let i = io.clone();
        let e = blocking(move || Image::open(&i, "no-such-image-async", &OpenOptions::new()))
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    });
    // The CLI sees what the tasks did.
    for n in &names {
        let info = common::cli_json(&conf, "rbd", &["info", &format!("rbd/{n}")]);
        assert_eq!(info["size"], 16 << 20);
        assert_eq!(info["snapshot_count"], 1);
    }
}

#[test]
fn a_panic_in_the_closure_reaches_the_caller() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        rt.block_on(blocking(|| -> rbd_core::Result<()> {
            panic!("inside blocking")
        }))
    }));
    let p = r.unwrap_err();
    assert_eq!(p.downcast_ref::<&str>(), Some(&"inside blocking"));
}
