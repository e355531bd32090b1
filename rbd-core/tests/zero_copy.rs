//! Zero-copy image I/O ([`rbd_core::Buffer`], through librbd's C++ bufferlist API) against
//! the real dev cluster: one buffer written to many places and read back by the `rbd` CLI,
//! reads inside and across objects, split requests, short reads, the sharing rule
//! (`get_mut` only once librbd let go), errors, and futures dropped before completion.

mod common;
mod mgmt;

use std::sync::Arc;
use std::time::{Duration, Instant};

use mgmt::{TestImage, plain_opts};
use rbd_core::rbd::{Features, ImageOptions};
use rbd_core::{Buffer, ErrorKind, Image, IoFlags, OpenOptions};
use testkit::pattern;

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Waits (bounded) until librbd has released every reference to `b`'s bytes.
fn wait_writable(b: &mut Buffer) {
    let t0 = Instant::now();
    while b.get_mut().is_none() {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "librbd still holds the buffer 10 s after its writes completed"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn one_buffer_written_to_many_places_reads_back_everywhere() {
    let Some((rados, conf)) = common::connect() else {
        return;
    };
    const COPIES: u64 = 16;
    let len = 4 * MIB as usize;
    let t = TestImage::create(&rados, "zc-many", COPIES * len as u64, &plain_opts());
    let img = Arc::new(t.open());
    let mut block = Buffer::from_slice(&pattern(1, len)).unwrap();
    runtime().block_on(async {
        // The same bytes, in flight 16 times at once.
        let writes: Vec<_> = (0..COPIES)
            .map(|i| img.aio_write_buffer(i * len as u64, &block))
            .collect();
        // librbd holds the caller's own bytes (it did not copy them): 64 MiB are still in
        // flight, so the buffer cannot be written now.
        assert!(
            block.get_mut().is_none(),
            "librbd does not reference the buffer: the write was copied"
        );
        for r in futures::future::join_all(writes).await {
            assert_eq!(r.unwrap(), len);
        }
        img.aio_flush().await.unwrap();
        // Reads of whole objects come back as the reply's own bytes.
        let reads: Vec<_> = (0..COPIES)
            .map(|i| img.aio_read_buffer(i * len as u64, len))
            .collect();
        for (i, r) in futures::future::join_all(reads)
            .await
            .into_iter()
            .enumerate()
        {
            let b = r.unwrap();
            assert_eq!(b.len(), len);
            assert!(b[..] == block[..], "copy {i} differs");
        }
    });
    // The `rbd` CLI sees exactly the same bytes.
    let exported = mgmt::export(&conf, &t.spec());
    for i in 0..COPIES as usize {
        assert!(
            exported[i * len..(i + 1) * len] == block[..],
            "copy {i} in rbd export"
        );
    }
    // Once librbd is done with the writes, the buffer is ours to change again, and a new
    // write carries the new bytes.
    wait_writable(&mut block);
    block.get_mut().unwrap()[..5].copy_from_slice(b"fresh");
    img.aio_write_buffer(0, &block).wait().unwrap();
    let mut head = [0u8; 5];
    img.read_exact_at(0, &mut head).unwrap();
    assert_eq!(&head, b"fresh");
    // The second copy still holds the old bytes: nothing aliased them.
    img.read_exact_at(len as u64, &mut head).unwrap();
    assert_eq!(head[..], pattern(1, 5)[..]);
}

#[test]
fn reads_across_objects_split_requests_and_short_reads() {
    let Some((rados, conf)) = common::connect() else {
        return;
    };
    let opts = ImageOptions::new()
        .features(Features::LAYERING)
        .object_size(64 * KIB)
        .unwrap();
    let size = 8 * MIB;
    let t = TestImage::create(&rados, "zc-split", size, &opts);
    let mut img = t.open();
    img.set_max_request_size(8192).unwrap();
    let data = pattern(7, 3 * MIB as usize + 11);
    let off = MIB + 12_345;
    let mut model = vec![0u8; size as usize];
    runtime().block_on(async {
        // ~400 librbd requests behind one future each way, sharing one buffer.
        let b = Buffer::from_slice(&data).unwrap();
        assert_eq!(img.aio_write_buffer(off, &b).await.unwrap(), data.len());
        model[off as usize..off as usize + data.len()].copy_from_slice(&data);
        let back = img.aio_read_buffer(off, data.len()).await.unwrap();
        assert!(back[..] == data[..]);
        // Across objects with one request per read, and with flags.
        img.set_max_request_size(rbd_core::rbd::io::DEFAULT_MAX_REQUEST)
            .unwrap();
        let back = img
            .aio_read_buffer_with(off + 1000, 200_000, IoFlags::FADVISE_SEQUENTIAL)
            .await
            .unwrap();
        assert!(back[..] == model[off as usize + 1000..off as usize + 201_000]);
        // Holes read as zeros.
        let hole = img.aio_read_buffer(6 * MIB, 100_000).await.unwrap();
        assert!(hole.iter().all(|&x| x == 0));
        // A read running past the end is short, split or not.
        let tail = img.aio_read_buffer(size - 20_000, 50_000).await.unwrap();
        assert_eq!(tail.len(), 20_000);
        img.set_max_request_size(8192).unwrap();
        let tail = img.aio_read_buffer(size - 20_000, 50_000).await.unwrap();
        assert_eq!(tail.len(), 20_000);
        img.aio_flush().await.unwrap();
    });
    assert!(mgmt::export(&conf, &t.spec()) == model);
}

#[test]
fn zero_copy_errors_come_back_through_the_future() {
    let Some((rados, _conf)) = common::connect() else {
        return;
    };
    let size = 4 * MIB;
    let t = TestImage::create(&rados, "zc-err", size, &plain_opts());
    let img = t.open();
    img.write_at(size - 8, b"the end!").unwrap();
    img.snap_create("s").unwrap();
    let ro = Image::open(&t.io, &t.name, &OpenOptions::new().read_only(true)).unwrap();
    let snap = Image::open(&t.io, &t.name, &OpenOptions::new().snapshot("s")).unwrap();
    runtime().block_on(async {
        let mut b = Buffer::from_slice(&[1; 512]).unwrap();
        for (what, h) in [("read-only", &ro), ("snapshot", &snap)] {
            let e = h.aio_write_buffer(0, &b).await.unwrap_err();
            assert_eq!(e.kind(), ErrorKind::ReadOnly, "{what}: {e}");
            assert_eq!(e.op(), Some("librbd::Image::aio_write2"));
            assert!(e.to_string().contains(&t.name), "{e}");
            // Reads work, and a refused write does not keep the bytes.
            let d = h.aio_read_buffer(size - 8, 8).await.unwrap();
            assert_eq!(&d[..], b"the end!");
        }
        wait_writable(&mut b);
        // Out of range: refused before submission, nothing written, by name.
        let e = img
            .aio_write_buffer(size - 4, &Buffer::from_slice(&[0; 8]).unwrap())
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
        assert!(e.to_string().contains("past the end"), "{e}");
        let e = img.aio_read_buffer(size, 1).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
        let e = img.aio_read_buffer(0, usize::MAX).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
        assert!(e.to_string().contains(&usize::MAX.to_string()), "{e}");
        // Empty requests resolve at once.
        assert!(img.aio_read_buffer(0, 0).await.unwrap().is_empty());
        let empty = Buffer::zeroed(0).unwrap();
        assert_eq!(img.aio_write_buffer(size, &empty).await.unwrap(), 0);
        // The refused write left the end alone.
        assert_eq!(
            &img.aio_read_buffer(size - 8, 8).await.unwrap()[..],
            b"the end!"
        );
    });
}

#[test]
fn dropped_zero_copy_futures_then_close_are_safe() {
    let Some((rados, conf)) = common::connect() else {
        return;
    };
    const N: u64 = 32;
    let len = 256 * KIB as usize;
    let t = TestImage::create(&rados, "zc-drop", N * len as u64, &plain_opts());
    let img = t.open();
    for i in 0..N {
        let b = Buffer::from_slice(&pattern(i, len)).unwrap();
        // The future and the caller's buffer both go at once; librbd keeps its own
        // reference to the bytes until it has written them.
        drop(img.aio_write_buffer(i * len as u64, &b));
        drop(b);
        drop(img.aio_read_buffer(i * len as u64, len));
    }
    img.close().unwrap();
    let exported = mgmt::export(&conf, &t.spec());
    for i in 0..N as usize {
        assert!(
            exported[i * len..(i + 1) * len] == pattern(i as u64, len)[..],
            "block {i}"
        );
    }
    // A buffer outlives the image it was read from.
    let img = t.open();
    let b = img.aio_read_buffer(0, 4096).wait().unwrap();
    drop(img);
    assert!(b[..] == pattern(0, len)[..4096]);
}
