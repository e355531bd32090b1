//! Asynchronous image I/O against the real dev cluster: many operations in flight under a
//! multi-threaded tokio runtime, ordering with flush, futures dropped before completion
//! (then the image closed or dropped), error paths, split requests, and blocking `wait`.

mod common;
mod mgmt;

use std::sync::Arc;
use std::time::Duration;

use mgmt::{TestImage, plain_opts};
use rbd_core::rbd::{Features, ImageOptions, Shrink};
use rbd_core::{AioFuture, ErrorKind, Image, OpenOptions};
use testkit::pattern;

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn many_ops_in_flight_from_many_tasks() {
    let Some((rados, conf)) = common::connect() else {
        return;
    };
    const OPS: u64 = 64;
    const LEN: usize = 64 * KIB as usize;
    let t = TestImage::create(&rados, "aio-many", OPS * LEN as u64, &plain_opts());
    let img = Arc::new(t.open());
    runtime().block_on(async {
        // 64 writes, each from its own task, all in flight together.
        let mut set = tokio::task::JoinSet::new();
        for i in 0..OPS {
            let img = img.clone();
            set.spawn(async move { img.aio_write(i * LEN as u64, pattern(i, LEN)).await });
        }
        while let Some(r) = set.join_next().await {
            assert_eq!(r.unwrap().unwrap(), LEN);
        }
        img.aio_flush().await.unwrap();
        // 64 reads started at once from one task, awaited together.
        let reads: Vec<AioFuture<Vec<u8>>> = (0..OPS)
            .map(|i| img.aio_read(i * LEN as u64, vec![0u8; LEN]))
            .collect();
        for (i, data) in futures::future::join_all(reads)
            .await
            .into_iter()
            .enumerate()
        {
            assert!(data.unwrap() == pattern(i as u64, LEN), "block {i} differs");
        }
    });
    let exported = mgmt::export(&conf, &t.spec());
    for i in 0..OPS as usize {
        assert!(exported[i * LEN..(i + 1) * LEN] == pattern(i as u64, LEN));
    }
}

#[test]
fn flush_completes_after_the_writes_before_it() {
    let Some((rados, _conf)) = common::connect() else {
        return;
    };
    let t = TestImage::create(&rados, "aio-flush", 32 * MIB, &plain_opts());
    let img = t.open();
    runtime().block_on(async {
        for round in 0..3u64 {
            let writes: Vec<_> = (0..32u64)
                .map(|i| img.aio_write(i * MIB, pattern(round * 100 + i, MIB as usize)))
                .collect();
            img.aio_flush().await.unwrap();
            // Every write issued before the flush is complete once the flush is.
            let done = writes.iter().filter(|w| w.is_complete()).count();
            assert_eq!(done, writes.len(), "round {round}: flush finished first");
            for w in writes {
                assert_eq!(w.await.unwrap(), MIB as usize);
            }
        }
    });
    // The last round is what a fresh handle reads.
    let again = t.open();
    for i in 0..32u64 {
        let mut b = vec![0u8; MIB as usize];
        again.read_exact_at(i * MIB, &mut b).unwrap();
        assert!(b == pattern(200 + i, MIB as usize), "MiB {i}");
    }
}

#[test]
fn dropping_futures_early_then_closing_is_safe() {
    let Some((rados, conf)) = common::connect() else {
        return;
    };
    const N: u64 = 48;
    let len = 256 * KIB as usize;
    let t = TestImage::create(&rados, "aio-drop", N * len as u64, &plain_opts());

    // 1. Drop every future at once, then close: close waits for librbd to finish, and
    //    every write landed.
    let img = t.open();
    for i in 0..N {
        drop(img.aio_write(i * len as u64, pattern(i, len)));
        drop(img.aio_read(i * len as u64, vec![0u8; len]));
    }
    drop(img.aio_flush());
    img.close().unwrap();
    let exported = mgmt::export(&conf, &t.spec());
    for i in 0..N as usize {
        assert!(
            exported[i * len..(i + 1) * len] == pattern(i as u64, len),
            "block {i}"
        );
    }

    // 2. Drop the image itself while dropped futures are in flight: the handle stays
    //    open until they complete, then closes (no crash, no leak: the image can be
    //    removed afterwards, which needs its watch gone).
    let img = t.open();
    for i in 0..N {
        drop(img.aio_write(i * len as u64, pattern(1000 + i, len)));
    }
    drop(img);
    // The handle closes (its watch goes) once librbd completes those writes.
    let ro = Image::open(&t.io, &t.name, &OpenOptions::new().read_only(true)).unwrap();
    let t0 = std::time::Instant::now();
    while !ro.watchers().unwrap().is_empty() {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "dropped image never closed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut b = vec![0u8; len];
    for i in 0..N {
        ro.read_exact_at(i * len as u64, &mut b).unwrap();
        assert!(
            b == pattern(1000 + i, len),
            "dropped write {i} did not land"
        );
    }
    drop(ro);
    // 3. Futures that outlive the image and are awaited afterwards still work.
    let img = t.open();
    let pending: Vec<_> = (0..N)
        .map(|i| img.aio_read(i * len as u64, vec![0u8; len]))
        .collect();
    drop(img);
    for (i, f) in pending.into_iter().enumerate() {
        let data = f.wait().unwrap();
        assert!(data == pattern(1000 + i as u64, len), "block {i}");
    }
    // 4. Inside a tokio runtime: futures cancelled by a timeout (select!) mid-flight.
    let img = Arc::new(t.open());
    runtime().block_on(async {
        let mut set = tokio::task::JoinSet::new();
        for i in 0..N {
            let img = img.clone();
            set.spawn(async move {
                let w = img.aio_write(i * len as u64, pattern(2000 + i, len));
                // Usually cancels before completion; either way must be safe.
                let _ = tokio::time::timeout(Duration::from_micros(50), w).await;
            });
        }
        while let Some(r) = set.join_next().await {
            r.unwrap();
        }
    });
    let img = Arc::into_inner(img).unwrap();
    img.close().unwrap();
    // Everything settled: the final data is the last generation, everywhere.
    let exported = mgmt::export(&conf, &t.spec());
    for i in 0..N as usize {
        assert!(
            exported[i * len..(i + 1) * len] == pattern(2000 + i as u64, len),
            "block {i}"
        );
    }
    // The handles really closed: no watcher is left on the image.
    let watchers = t.open().watchers().unwrap();
    assert_eq!(watchers.len(), 1, "{watchers:?}");
}

#[test]
fn errors_come_back_through_the_future() {
    let Some((rados, _conf)) = common::connect() else {
        return;
    };
    let size = 4 * MIB;
    let t = TestImage::create(&rados, "aio-err", size, &plain_opts());
    let img = t.open();
    img.write_at(size - 8, b"the end!").unwrap();
    img.snap_create("s").unwrap();
    let ro = Image::open(&t.io, &t.name, &OpenOptions::new().read_only(true)).unwrap();
    let snap = Image::open(&t.io, &t.name, &OpenOptions::new().snapshot("s")).unwrap();
    assert!(ro.is_read_only() && !img.is_read_only());
    assert_eq!(snap.opened_snapshot(), Some("s"));
    assert_eq!(img.opened_snapshot(), None);
    runtime().block_on(async {
        for (what, h) in [("read-only", &ro), ("snapshot", &snap)] {
            let e = h.aio_write(0, vec![1; 512]).await.unwrap_err();
            assert_eq!(e.kind(), ErrorKind::ReadOnly, "{what}: {e}");
            assert_eq!(e.op(), Some("rbd_aio_write2"));
            assert!(e.to_string().contains(&t.name), "{e}");
            let e = h.aio_discard(0, MIB).await.unwrap_err();
            assert_eq!(e.kind(), ErrorKind::ReadOnly, "{what}: {e}");
            let e = h.aio_write_zeroes(0, 4096).await.unwrap_err();
            assert_eq!(e.kind(), ErrorKind::ReadOnly, "{what}: {e}");
            // Reads work.
            let d = h.aio_read(size - 8, vec![0; 8]).await.unwrap();
            assert_eq!(d, b"the end!");
        }
        // Out of range: refused before submission, nothing written.
        let e = img.aio_write(size - 4, vec![0; 8]).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
        assert!(e.to_string().contains("past the end"), "{e}");
        let e = img.aio_discard(size, 1).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
        let e = img.aio_write_zeroes(1, u64::MAX).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
        let e = img.aio_read(size, vec![0; 1]).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
        // A read running past the end is short: the buffer comes back truncated.
        let d = img.aio_read(size - 8, vec![0; 4096]).await.unwrap();
        assert_eq!(d, b"the end!");
        // Empty requests resolve at once.
        assert!(img.aio_read(0, Vec::new()).await.unwrap().is_empty());
        assert_eq!(img.aio_write(size, Vec::new()).await.unwrap(), 0);
        img.aio_discard(size, 0).await.unwrap();
        // The refused write left the end alone.
        assert_eq!(
            img.aio_read(size - 8, vec![0; 8]).await.unwrap(),
            b"the end!"
        );
    });
}

/// Reads trust the size their handle last saw while they stay inside it (no
/// `rbd_get_size` per read): a resize by another client must still be honoured, with or
/// without the exclusive lock (with it, the resize is proxied to the lock's owner).
#[test]
fn reads_see_a_resize_by_another_client() {
    let Some((rados, conf)) = common::connect() else {
        return;
    };
    let other = mgmt::second_client(&conf);
    for (what, opts) in [("plain", plain_opts()), ("default", ImageOptions::new())] {
        let size = 4 * MIB;
        let t = TestImage::create(&rados, "aio-resize", size, &opts);
        let img = t.open();
        let mut split = t.open();
        split.set_max_request_size(4096).unwrap();
        img.write_at(size - 8, b"the end!").unwrap();
        img.write_at(2 * MIB - 8, b"mid end!").unwrap();
        let theirs =
            Image::open(&other.ioctx("rbd").unwrap(), &t.name, &OpenOptions::new()).unwrap();
        runtime().block_on(async {
            // Both handles learn the size (4 MiB).
            assert_eq!(
                img.aio_read(size - 8, vec![0; 8]).await.unwrap(),
                b"the end!"
            );
            assert_eq!(
                &img.aio_read_buffer(size - 8, 8).await.unwrap()[..],
                b"the end!"
            );
            assert_eq!(
                split.aio_read(size - 8, vec![0; 8]).await.unwrap(),
                b"the end!"
            );

            // Another client shrinks the image to 2 MiB.
            theirs.resize(2 * MIB, Shrink::Allow).unwrap();
            // Straddling the new end: short at it.
            let d = img.aio_read(2 * MIB - 8, vec![0; 4096]).await.unwrap();
            assert_eq!(d, b"mid end!", "{what}");
            let b = img.aio_read_buffer(2 * MIB - 8, 4096).await.unwrap();
            assert_eq!(&b[..], b"mid end!", "{what}");
            // Split into 4 KiB librbd requests, the ones past the new end are refused by
            // librbd: the read is short, not an error.
            let d = split
                .aio_read(2 * MIB - 8, vec![0; 3 * 4096])
                .await
                .unwrap();
            assert_eq!(d, b"mid end!", "{what}");
            // Past the new end (inside the old one): InvalidInput, as for any read there.
            for off in [2 * MIB, 3 * MIB] {
                let e = img.aio_read(off, vec![0; 4096]).await.unwrap_err();
                assert_eq!(e.kind(), ErrorKind::InvalidInput, "{what}: {e}");
                let e = img.aio_read_buffer(off, 4096).await.unwrap_err();
                assert_eq!(e.kind(), ErrorKind::InvalidInput, "{what}: {e}");
                let e = split.aio_read(off, vec![0; 4096]).await.unwrap_err();
                assert_eq!(e.kind(), ErrorKind::InvalidInput, "{what}: {e}");
            }
            // Writes check the current size every time.
            let e = img.aio_write(3 * MIB, vec![0; 8]).await.unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidInput, "{what}: {e}");
            assert!(e.to_string().contains("past the end"), "{e}");

            // Then it grows to 8 MiB and gets new data at its new end.
            theirs.resize(8 * MIB, Shrink::Forbid).unwrap();
            theirs.write_at(8 * MIB - 8, b"new end!").unwrap();
            // Reads past the size last seen see the new size.
            assert_eq!(
                img.aio_read(8 * MIB - 8, vec![0; 8]).await.unwrap(),
                b"new end!",
                "{what}"
            );
            assert_eq!(
                &split.aio_read_buffer(8 * MIB - 8, 8).await.unwrap()[..],
                b"new end!",
                "{what}"
            );
            // Across the old ends, in full: zeros where the shrink cut the data off.
            let d = img.aio_read(2 * MIB - 8, vec![1; 3 * 4096]).await.unwrap();
            assert_eq!(d.len(), 3 * 4096, "{what}");
            assert_eq!(&d[..8], b"mid end!");
            assert!(d[8..].iter().all(|&b| b == 0), "{what}");
            let d = split.aio_read(4 * MIB - 4096, vec![1; 8192]).await.unwrap();
            assert_eq!(d.len(), 8192, "{what}");
            assert!(d.iter().all(|&b| b == 0), "{what}");
        });
        theirs.close().unwrap();
    }
}

#[test]
fn split_requests_and_zeroing() {
    let Some((rados, conf)) = common::connect() else {
        return;
    };
    let opts = ImageOptions::new()
        .features(Features::LAYERING)
        .object_size(64 * KIB)
        .unwrap();
    let size = 8 * MIB;
    let t = TestImage::create(&rados, "aio-split", size, &opts);
    let mut img = t.open();
    img.set_max_request_size(8192).unwrap();
    let data = pattern(42, 3 * MIB as usize + 11);
    let off = MIB + 12_345;
    let mut model = vec![0u8; size as usize];
    runtime().block_on(async {
        // ~400 librbd requests behind one future each way.
        assert_eq!(img.aio_write(off, data.clone()).await.unwrap(), data.len());
        model[off as usize..off as usize + data.len()].copy_from_slice(&data);
        let back = img.aio_read(off, vec![0; data.len()]).await.unwrap();
        assert!(back == data);
        // Whole 64 KiB objects discarded read back as zeros; write-zeroes at any offset.
        img.aio_discard(2 * MIB, MIB).await.unwrap();
        model[2 * MIB as usize..3 * MIB as usize].fill(0);
        img.aio_write_zeroes(off + 7, 100_000).await.unwrap();
        model[off as usize + 7..off as usize + 100_007].fill(0);
        // A split read that runs past the end is short.
        let tail = img.aio_read(size - 20_000, vec![0; 50_000]).await.unwrap();
        assert_eq!(tail.len(), 20_000);
        img.aio_flush().await.unwrap();
    });
    assert!(mgmt::export(&conf, &t.spec()) == model);
}

#[test]
fn wait_blocks_without_a_runtime() {
    let Some((rados, _conf)) = common::connect() else {
        return;
    };
    let t = TestImage::create(&rados, "aio-wait", 4 * MIB, &plain_opts());
    let img = Arc::new(t.open());
    // From several plain threads at once.
    let threads: Vec<_> = (0..4u64)
        .map(|i| {
            let img = img.clone();
            std::thread::spawn(move || {
                let off = i * MIB;
                assert_eq!(img.aio_write(off, pattern(i, 4096)).wait().unwrap(), 4096);
                img.aio_flush().wait().unwrap();
                img.aio_read(off, vec![0; 4096]).wait().unwrap()
            })
        })
        .collect();
    for (i, th) in threads.into_iter().enumerate() {
        assert!(th.join().unwrap() == pattern(i as u64, 4096));
    }
    // And it interoperates with the sync API.
    let mut b = vec![0u8; 4096];
    img.read_exact_at(3 * MIB, &mut b).unwrap();
    assert!(b == pattern(3, 4096));
}

#[test]
fn write_buf_gives_the_buffer_back_for_reuse() {
    let Some((rados, conf)) = common::connect() else {
        return;
    };
    let t = TestImage::create(&rados, "aio-reuse", 4 * MIB, &plain_opts());
    let img = t.open();
    runtime().block_on(async {
        // One buffer, reused for 16 writes one after the other.
        let mut buf = vec![0u8; 64 * KIB as usize];
        for i in 0..16u64 {
            let p = pattern(i, buf.len());
            buf.copy_from_slice(&p);
            let ptr = buf.as_ptr();
            buf = img
                .aio_write_buf_with(i * 64 * KIB, buf, rbd_core::IoFlags::FADVISE_SEQUENTIAL)
                .await
                .unwrap();
            assert_eq!(buf.as_ptr(), ptr, "not the same buffer");
            assert_eq!(buf.len(), 64 * KIB as usize);
        }
        // Past the end: refused, and the buffer is not needed back (it is dropped).
        let e = img.aio_write_buf(4 * MIB - 1, buf).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
        img.aio_flush().await.unwrap();
    });
    let exported = mgmt::export(&conf, &t.spec());
    for i in 0..16usize {
        let l = 64 * KIB as usize;
        assert!(
            exported[i * l..(i + 1) * l] == pattern(i as u64, l),
            "block {i}"
        );
    }
}

#[test]
fn close_waits_for_futures_and_reports_busy_when_they_are_kept() {
    let Some((rados, conf)) = common::connect() else {
        return;
    };
    let t = TestImage::create(&rados, "aio-close", 4 * MIB, &plain_opts());
    // A connection whose OSD op timeout (and so close's wait) is short.
    let short = rbd_core::Rados::connect(
        &rbd_core::ConnectOptions::new()
            .conf_file(&conf)
            .timeouts(rbd_core::Timeouts::uniform(Duration::from_secs(1))),
    )
    .unwrap();
    let io = short.ioctx(common::POOL).unwrap();
    let img = Image::open(&io, &t.name, &OpenOptions::new()).unwrap();
    // A future kept (complete, but neither awaited nor dropped) holds the handle.
    let kept = img.aio_write(0, b"kept".to_vec());
    let t0 = std::time::Instant::now();
    let e = img.close().unwrap_err();
    let waited = t0.elapsed();
    assert_eq!(e.kind(), ErrorKind::Busy, "{e}");
    assert!(e.to_string().contains(&t.name), "{e}");
    assert!(
        waited >= Duration::from_secs(5) && waited < Duration::from_secs(20),
        "close waited {waited:?}"
    );
    // The handle is still open (its watch is there) until the future goes...
    let ro = Image::open(&t.io, &t.name, &OpenOptions::new().read_only(true)).unwrap();
    assert_eq!(ro.watchers().unwrap().len(), 1);
    assert!(kept.is_complete());
    assert_eq!(kept.wait().unwrap(), 4);
    // ...and closed right after.
    assert!(ro.watchers().unwrap().is_empty());
    let mut b = [0u8; 4];
    ro.read_exact_at(0, &mut b).unwrap();
    assert_eq!(&b, b"kept");
}
