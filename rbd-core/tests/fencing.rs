//! Fencing: once client A's exact address is blocklisted by client B, A's next operations
//! fail promptly (never hang), B is unaffected, and A's watch reports an error.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use rbd_core::rados::with_deadline;
use rbd_core::rbd::{self, Features, ImageOptions};
use rbd_core::watch::WatchEvent;
use rbd_core::{
    ConnectOptions, Context, EntityAddr, Error, ErrorKind, Image, IoCtx, OpenOptions, Rados,
    Timeouts,
};

/// A's configured timeout for every operation.
const A_TIMEOUT: Duration = Duration::from_secs(5);
/// How much later than its timeout a fenced call may return.
const MARGIN: Duration = Duration::from_secs(5);

/// Removes the test objects when dropped, even on failure. (The blocklist entries go with
/// [`common::Unfence`], made before A so that A is gone first.)
struct Cleanup {
    b: Rados,
    oids: Vec<String>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Ok(io) = self.b.ioctx(common::POOL) {
            for o in &self.oids {
                let _ = io.remove_object(o);
            }
        }
    }
}

/// Runs one of A's calls on a helper thread with a hard deadline, so a hang fails the test
/// instead of hanging it. Returns the call's result and how long it took.
fn fenced_call<T, F>(what: &'static str, f: F) -> (Result<T, Error>, Duration)
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, Error> + Send + 'static,
{
    let t = Instant::now();
    let r = with_deadline(what, Context::none(), A_TIMEOUT + MARGIN * 2, f);
    (r, t.elapsed())
}

fn assert_fenced<T: std::fmt::Debug>(what: &str, r: Result<T, Error>, elapsed: Duration) {
    let e = r.expect_err(&format!("{what}: a blocklisted client's call succeeded"));
    eprintln!("{what}: failed after {elapsed:?} with: {e}");
    assert!(
        matches!(e, Error::Ceph { .. }),
        "{what}: the call hung until our hard deadline: {e}"
    );
    assert!(
        matches!(e.kind(), ErrorKind::Blocklisted | ErrorKind::Timeout),
        "{what}: unexpected error {e}"
    );
    assert!(
        elapsed <= A_TIMEOUT + MARGIN,
        "{what}: took {elapsed:?}, more than {A_TIMEOUT:?} + {MARGIN:?}"
    );
}

#[test]
fn blocklisted_client_is_fenced_promptly() {
    let Some((b, conf)) = common::connect() else {
        return;
    };
    // A's blocklist entry goes once A is gone, pass or fail.
    let unfence = common::Unfence::new(&b);
    let a = Rados::connect(
        &ConnectOptions::new()
            .conf_file(&conf)
            .timeouts(Timeouts::uniform(A_TIMEOUT)),
    )
    .unwrap();
    unfence.client(&a);
    let io_a = Arc::new(a.ioctx(common::POOL).unwrap());
    let data_oid = testkit::unique("fence-data");
    let watch_oid = testkit::unique("fence-watch");
    let b_oid = testkit::unique("fence-b");
    let addr = *a.getaddrs().unwrap().primary().unwrap();
    let _cleanup = Cleanup {
        b: b.clone(),
        oids: vec![data_oid.clone(), watch_oid.clone(), b_oid.clone()],
    };

    // Before fencing, A works normally.
    io_a.write_full(&data_oid, b"before").unwrap();
    io_a.omap_set(&data_oid, &[("owner", b"a")]).unwrap();
    io_a.write_full(&watch_oid, b"w").unwrap();
    let mut watch = io_a.watch(&watch_oid).unwrap();
    assert!(watch.check().is_ok());

    // B fences A's exact address.
    b.blocklist_add(&addr, Some(Duration::from_secs(600)))
        .unwrap();
    let list = b.blocklist_ls().unwrap();
    assert!(
        list.iter().any(|e| !e.range && e.addr.same_instance(&addr)),
        "{addr} not in {list:?}"
    );
    let cli = common::cli(&conf, "ceph", &["osd", "blocklist", "ls"]);
    assert!(cli.contains(&addr.to_legacy_string()), "{cli}");

    // B is unaffected; its write also brings the OSD up to the blocklisting map.
    let io_b = b.ioctx(common::POOL).unwrap();
    io_b.write_full(&b_oid, b"b still works").unwrap();
    assert_eq!(io_b.read_full(&b_oid).unwrap(), b"b still works");

    // A's next data write fails promptly.
    let (r, took) = fenced_call("fenced write_full", {
        let io = io_a.clone();
        let oid = data_oid.clone();
        move || io.write_full(&oid, b"after")
    });
    assert_fenced("write_full", r, took);

    // And so does an omap transaction.
    let (r, took) = fenced_call("fenced omap_compare_and_swap", {
        let io = io_a.clone();
        let oid = data_oid.clone();
        move || io.omap_compare_and_swap(&oid, "owner", b"a", b"a-again")
    });
    assert_fenced("omap_compare_and_swap", r, took);

    // Nothing A tried after being fenced reached the object.
    assert_eq!(io_b.read_full(&data_oid).unwrap(), b"before");
    assert_eq!(io_b.omap_get(&data_oid, "owner").unwrap().unwrap(), b"a");

    // A's watch reports the fencing as an error event.
    let t = Instant::now();
    let ev = watch.recv_timeout(Duration::from_secs(60));
    match ev {
        Some(WatchEvent::Error(e)) => {
            eprintln!("watch error after {:?}: {e}", t.elapsed());
            assert!(
                matches!(
                    e.kind(),
                    ErrorKind::NotConnected | ErrorKind::Blocklisted | ErrorKind::Timeout
                ),
                "{e}"
            );
            assert!(e.to_string().contains(&watch_oid), "{e}");
        }
        other => panic!(
            "expected a watch error after {:?}, got {other:?}",
            t.elapsed()
        ),
    }
    assert!(
        watch.check().is_err(),
        "watch_check still reports a live watch"
    );

    // Tear A down under a deadline too: unwatch and shutdown must not hang.
    let (r, took) = fenced_call("fenced teardown", move || {
        drop(watch);
        drop(io_a);
        drop(a);
        Ok(())
    });
    r.unwrap();
    assert!(took <= A_TIMEOUT + MARGIN, "teardown took {took:?}");

    // Unfence and check the cluster is clean again.
    b.blocklist_rm(&addr).unwrap();
    assert!(!b.is_blocklisted(&addr).unwrap());
    let cli = common::cli(&conf, "ceph", &["osd", "blocklist", "ls"]);
    assert!(!cli.contains(&addr.to_legacy_string()), "{cli}");
}

#[test]
fn blocklisting_another_address_leaves_us_alone() {
    let Some((b, conf)) = common::connect() else {
        return;
    };
    // A's blocklist entry goes once A is gone, pass or fail.
    let unfence = common::Unfence::new(&b);
    let a = Rados::connect(
        &ConnectOptions::new()
            .conf_file(&conf)
            .timeouts(Timeouts::uniform(A_TIMEOUT)),
    )
    .unwrap();
    unfence.client(&a);
    let mine = *a.getaddrs().unwrap().primary().unwrap();
    // Same IP, another nonce: a different client instance.
    let other = EntityAddr {
        nonce: mine.nonce.wrapping_add(1).max(1),
        ..mine
    };
    let oid = testkit::unique("fence-other");
    unfence.addr(other);
    let _cleanup = Cleanup {
        b: b.clone(),
        oids: vec![oid.clone()],
    };
    b.blocklist_add(&other, Some(Duration::from_secs(60)))
        .unwrap();
    let io: IoCtx = a.ioctx(common::POOL).unwrap();
    io.write_full(&oid, b"fine").unwrap();
    assert_eq!(io.read_full(&oid).unwrap(), b"fine");
    assert!(!b.is_blocklisted(&mine).unwrap());
}

/// Runs an async operation of A's on a helper thread with a hard deadline.
fn fenced_aio<T: Send + 'static>(
    what: &'static str,
    f: rbd_core::AioFuture<T>,
) -> (Result<T, Error>, Duration) {
    fenced_call(what, move || f.wait())
}

fn write_then_flush(img: &Image, data: &[u8]) -> Result<(), Error> {
    img.write_at(0, data)?;
    img.flush()
}

#[test]
fn blocklisted_client_image_io_fails_promptly() {
    let Some((b, conf)) = common::connect() else {
        return;
    };
    // A's blocklist entry goes once A is gone, pass or fail.
    let unfence = common::Unfence::new(&b);
    let a = Rados::connect(
        &ConnectOptions::new()
            .conf_file(&conf)
            .timeouts(Timeouts::uniform(A_TIMEOUT)),
    )
    .unwrap();
    unfence.client(&a);
    let addr = *a.getaddrs().unwrap().primary().unwrap();
    let io_b = b.ioctx(common::POOL).unwrap();
    // One image with the default features (exclusive lock, object map), one without.
    let locked = testkit::unique("fence-img-lock");
    let plain = testkit::unique("fence-img-plain");
    rbd::create(&io_b, &locked, 8 << 20, &ImageOptions::new()).unwrap();
    rbd::create(
        &io_b,
        &plain,
        8 << 20,
        &ImageOptions::new().features(Features::LAYERING),
    )
    .unwrap();
    struct Images(IoCtx, Vec<String>);
    impl Drop for Images {
        fn drop(&mut self) {
            for n in &self.1 {
                for _ in 0..30 {
                    match rbd::remove(&self.0, n) {
                        Err(e) if e.kind() == ErrorKind::Busy => {
                            std::thread::sleep(Duration::from_secs(1))
                        }
                        _ => break,
                    }
                }
            }
        }
    }
    let _images = Images(io_b, vec![locked.clone(), plain.clone()]);

    let io_a = a.ioctx(common::POOL).unwrap();
    let imgs: Vec<Arc<Image>> = [&locked, &plain]
        .iter()
        .map(|n| Arc::new(Image::open(&io_a, n, &OpenOptions::new()).unwrap()))
        .collect();
    for img in &imgs {
        write_then_flush(img, b"before").unwrap();
        img.aio_write(4096, b"aio before".to_vec()).wait().unwrap();
    }

    b.blocklist_add(&addr, Some(Duration::from_secs(600)))
        .unwrap();
    // B's own I/O brings the OSD to the blocklisting map, and B is unaffected.
    let b_img = Image::open(
        &b.ioctx(common::POOL).unwrap(),
        &plain,
        &OpenOptions::new().read_only(true),
    )
    .unwrap();
    let mut buf = [0u8; 6];
    b_img.read_exact_at(0, &mut buf).unwrap();
    assert_eq!(&buf, b"before");

    for (img, name) in imgs.iter().zip([&locked, &plain]) {
        // Each write fails by itself: with librbd's write-around cache (which
        // Rados::connect turns off) it would be acknowledged early and its error lost.
        let (r, took) = fenced_call("fenced image write", {
            let img = img.clone();
            move || img.write_at(0, b"after!")
        });
        assert_fenced(&format!("write_at on {name}"), r, took);
        let (r, took) = fenced_aio("fenced aio_write", img.aio_write(8192, vec![9; 4096]));
        assert_fenced(&format!("aio_write on {name}"), r, took);
        // The zero-copy write fails the same way, and librbd lets go of the bytes it
        // shared (an early failure must not keep them, or hang).
        let mut shared = rbd_core::Buffer::from_slice(&[9; 4096]).unwrap();
        let (r, took) = fenced_aio(
            "fenced aio_write_buffer",
            img.aio_write_buffer(12288, &shared),
        );
        assert_fenced(&format!("aio_write_buffer on {name}"), r, took);
        let t0 = Instant::now();
        while shared.get_mut().is_none() {
            assert!(
                t0.elapsed() < A_TIMEOUT,
                "{name}: librbd kept a failed write's bytes for {A_TIMEOUT:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let (r, took) = fenced_aio("fenced aio_discard", img.aio_discard(0, 1 << 20));
        assert_fenced(&format!("aio_discard on {name}"), r, took);
        let (r, took) = fenced_aio("fenced aio_flush", img.aio_flush());
        // A flush with nothing in flight has nothing to fail on; if it fails, promptly.
        if let Err(e) = r {
            assert_fenced(&format!("aio_flush on {name}"), Err::<(), _>(e), took);
        }
        // Reads go to the OSD too (nothing is cached for them here).
        let (r, took) = fenced_aio("fenced aio_read", img.aio_read(1 << 20, vec![0; 4096]));
        assert_fenced(&format!("aio_read on {name}"), r, took);
        let (r, took) = fenced_aio("fenced aio_read_buffer", img.aio_read_buffer(3 << 20, 4096));
        assert_fenced(&format!("aio_read_buffer on {name}"), r, took);
        let (r, took) = fenced_call("fenced read_at", {
            let img = img.clone();
            move || {
                let mut b = vec![0u8; 4096];
                img.read_at(2 << 20, &mut b)
            }
        });
        assert_fenced(&format!("read_at on {name}"), r, took);
    }

    // Nothing A wrote after the fencing reached the images.
    for name in [&locked, &plain] {
        let img = Image::open(
            &b.ioctx(common::POOL).unwrap(),
            name,
            &OpenOptions::new().read_only(true),
        )
        .unwrap();
        let mut buf = [0u8; 6];
        img.read_exact_at(0, &mut buf).unwrap();
        assert_eq!(&buf, b"before", "{name}");
        let mut buf = [0u8; 4096];
        img.read_exact_at(8192, &mut buf).unwrap();
        assert!(
            buf.iter().all(|&x| x == 0),
            "{name}: a fenced aio write landed"
        );
    }

    // Closing A's images and connection is bounded too.
    let (r, took) = fenced_call("fenced image close", move || {
        for img in imgs {
            let _ = Arc::into_inner(img).map(Image::close);
        }
        drop(io_a);
        drop(a);
        Ok(())
    });
    r.unwrap();
    assert!(took <= A_TIMEOUT + MARGIN, "close took {took:?}");
}

#[test]
fn blocklisted_client_management_calls_fail_promptly() {
    let Some((b, conf)) = common::connect() else {
        return;
    };
    // A's blocklist entry goes once A is gone, pass or fail.
    let unfence = common::Unfence::new(&b);
    let a = Rados::connect(
        &ConnectOptions::new()
            .conf_file(&conf)
            .timeouts(Timeouts::uniform(A_TIMEOUT)),
    )
    .unwrap();
    unfence.client(&a);
    let addr = *a.getaddrs().unwrap().primary().unwrap();
    let io_b = b.ioctx(common::POOL).unwrap();
    // The default features: exclusive-lock, object-map (every management call below needs
    // the lock, which a fenced client cannot get).
    let name = testkit::unique("fence-mgmt");
    const SIZE: u64 = 8 << 20;
    rbd::create(&io_b, &name, SIZE, &ImageOptions::new()).unwrap();
    struct Image1(IoCtx, String);
    impl Drop for Image1 {
        fn drop(&mut self) {
            // A snapshot exists only if the fenced snap_create wrongly succeeded.
            if let Ok(i) = Image::open(&self.0, &self.1, &OpenOptions::new()) {
                let _ = i.snap_remove("fenced");
            }
            for _ in 0..30 {
                match rbd::remove(&self.0, &self.1) {
                    Err(e) if e.kind() == ErrorKind::Busy => {
                        std::thread::sleep(Duration::from_secs(1))
                    }
                    _ => break,
                }
            }
        }
    }
    let _image = Image1(b.ioctx(common::POOL).unwrap(), name.clone());
    let io_a = Arc::new(a.ioctx(common::POOL).unwrap());
    // Opened (and used) before the fencing.
    let img = Arc::new(Image::open(&io_a, &name, &OpenOptions::new()).unwrap());
    img.metadata_set("before", "1").unwrap();

    b.blocklist_add(&addr, Some(Duration::from_secs(600)))
        .unwrap();
    // B's write brings the OSD to the blocklisting map.
    Image::open(&io_b, &name, &OpenOptions::new())
        .unwrap()
        .metadata_set("b", "works")
        .unwrap();

    let (r, took) = fenced_call("fenced open", {
        let io = io_a.clone();
        let name = name.clone();
        move || Image::open(&io, &name, &OpenOptions::new()).map(|_| ())
    });
    assert_fenced("Image::open", r, took);
    let (r, took) = fenced_call("fenced snap_create", {
        let img = img.clone();
        move || img.snap_create("fenced")
    });
    assert_fenced("snap_create", r, took);
    let (r, took) = fenced_call("fenced resize", {
        let img = img.clone();
        move || img.resize(2 * SIZE, rbd_core::rbd::Shrink::Forbid)
    });
    assert_fenced("resize", r, took);
    let (r, took) = fenced_call("fenced lock_acquire", {
        let img = img.clone();
        move || img.lock_acquire(rbd_core::rbd::LockMode::Exclusive)
    });
    assert_fenced("lock_acquire", r, took);
    let (r, took) = fenced_call("fenced metadata_set", {
        let img = img.clone();
        move || img.metadata_set("after", "1")
    });
    assert_fenced("metadata_set", r, took);

    // None of it reached the image; A holds no lock.
    // (Read-write: librbd lists lock owners only through a read-write handle.)
    let seen = Image::open(&io_b, &name, &OpenOptions::new()).unwrap();
    assert_eq!(seen.size().unwrap(), SIZE);
    assert!(seen.snap_list().unwrap().is_empty());
    assert_eq!(seen.metadata_get("after").unwrap(), None);
    assert_eq!(seen.metadata_get("before").unwrap().as_deref(), Some("1"));
    let owners = seen.lock_get_owners().unwrap();
    assert!(
        !owners
            .addrs()
            .unwrap()
            .iter()
            .any(|o| o.same_instance(&addr)),
        "the fenced client owns the lock: {owners:?}"
    );
    drop(seen);

    let (r, took) = fenced_call("fenced image close", move || {
        drop(img);
        drop(io_a);
        drop(a);
        Ok(())
    });
    r.unwrap();
    assert!(took <= A_TIMEOUT + MARGIN, "close took {took:?}");
}
