//! Synchronous image I/O against the real dev cluster: data integrity at many offsets and
//! sizes, cross-checked with Ceph's `rbd export` / `rbd import`; discard and write-zeroes;
//! range and read-only errors; splitting of large requests; the std::io cursor.

mod common;
mod mgmt;

use std::io::{Read, Seek, SeekFrom, Write};

use mgmt::{TestImage, plain_opts};
use rbd_core::rbd::{Features, ImageOptions, IoFlags};
use rbd_core::{Error, ErrorKind, Image, OpenOptions};
use testkit::pattern;

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;

fn read_all(img: &Image) -> Vec<u8> {
    let size = img.size().unwrap() as usize;
    let mut buf = vec![0u8; size];
    img.read_exact_at(0, &mut buf).unwrap();
    buf
}

fn invalid(e: &Error) {
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
}

/// (offset, len) pairs: aligned, unaligned, tiny, crossing 4 MiB object boundaries, at the
/// very start and the very end of a 16 MiB image.
const CASES: [(u64, usize); 9] = [
    (0, 1),
    (1, 511),
    (4096, 4096),
    (12_345, 70_001),
    (4 * MIB - 100, 300),
    (6 * MIB + 3, MIB as usize + 17),
    (8 * MIB, 4 * MIB as usize),
    (13 * MIB - 1, 2 * MIB as usize + 1),
    (16 * MIB - 7, 7),
];

#[test]
fn patterns_read_back_and_match_rbd_export() {
    let Some((rados, conf)) = common::connect() else {
        return;
    };
    let t = TestImage::create(&rados, "io-patterns", 16 * MIB, &plain_opts());
    let img = t.open();
    // Our model of the image: zeros, then every write applied in order.
    let mut model = vec![0u8; 16 * MIB as usize];
    for (i, &(off, len)) in CASES.iter().enumerate() {
        let data = pattern(i as u64 + 1, len);
        assert_eq!(img.write_at(off, &data).unwrap(), len);
        model[off as usize..off as usize + len].copy_from_slice(&data);
        let mut back = vec![0u8; len];
        assert_eq!(img.read_at(off, &mut back).unwrap(), len);
        assert!(back == data, "read back differs at {off}+{len}");
    }
    img.flush().unwrap();
    // Unwritten space reads as zeros, written space as written: the whole image matches.
    assert!(
        read_all(&img) == model,
        "image content differs from the model"
    );
    // Ceph's own tool sees exactly the same bytes.
    let exported = mgmt::export(&conf, &t.spec());
    assert_eq!(exported.len(), model.len());
    assert!(exported == model, "rbd export differs from what we wrote");
    img.close().unwrap();
}

#[test]
fn data_imported_by_rbd_reads_back() {
    let Some((rados, conf)) = common::connect() else {
        return;
    };
    let dir = std::env::temp_dir().join(testkit::unique("rbd-core-import"));
    std::fs::create_dir_all(&dir).unwrap();
    struct RmDir(std::path::PathBuf);
    impl Drop for RmDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _rm = RmDir(dir.clone());
    let file = dir.join("data.bin");
    // 5 MiB + 3 bytes: rbd import rounds nothing; the image gets exactly this size.
    let data = pattern(99, 5 * MIB as usize + 3);
    std::fs::write(&file, &data).unwrap();
    let name = testkit::unique("io-import");
    let t = TestImage::adopt(&rados, &name);
    common::cli(
        &conf,
        "rbd",
        &["import", "--no-progress", file.to_str().unwrap(), &t.spec()],
    );
    let img = t.open();
    assert_eq!(img.size().unwrap(), data.len() as u64);
    assert!(
        read_all(&img) == data,
        "our read differs from the imported file"
    );
    // And a positional read in the middle.
    let mut mid = vec![0u8; 1000];
    img.read_exact_at(3 * MIB - 500, &mut mid).unwrap();
    assert!(mid[..] == data[3 * MIB as usize - 500..3 * MIB as usize + 500]);
}

#[test]
fn discard_and_write_zeroes_read_back_as_zeros() {
    let Some((rados, conf)) = common::connect() else {
        return;
    };
    let t = TestImage::create(&rados, "io-zero", 12 * MIB, &plain_opts());
    let img = t.open();
    let full = pattern(7, 12 * MIB as usize);
    img.write_all_at(0, &full).unwrap();
    let mut model = full.clone();
    // Discard: a whole object (4-8 MiB), and 64 KiB-aligned blocks inside the first one.
    img.discard(4 * MIB, 4 * MIB).unwrap();
    model[4 * MIB as usize..8 * MIB as usize].fill(0);
    img.discard(64 * KIB, 128 * KIB).unwrap();
    model[64 * KIB as usize..192 * KIB as usize].fill(0);
    // A discard smaller than librbd's discard granularity (rbd_discard_granularity_bytes,
    // 64 KiB) is only a hint: librbd skips it and the data stays, as documented.
    img.discard(1000, 3000).unwrap();
    // Write-zeroes: unaligned, across the 8 MiB object boundary.
    img.write_zeroes(8 * MIB - 12_345, 100_000).unwrap();
    model[(8 * MIB - 12_345) as usize..(8 * MIB - 12_345 + 100_000) as usize].fill(0);
    img.flush().unwrap();
    let got = read_all(&img);
    let diff: Vec<usize> = (0..got.len()).filter(|&i| got[i] != model[i]).collect();
    assert!(
        diff.is_empty(),
        "zeroed ranges or their neighbours are wrong: {} bytes differ, from {:?} to {:?}",
        diff.len(),
        diff.first(),
        diff.last()
    );
    assert!(
        mgmt::export(&conf, &t.spec()) == model,
        "rbd export disagrees"
    );
    // Zero-length requests are no-ops.
    img.discard(0, 0).unwrap();
    img.write_zeroes(12 * MIB, 0).unwrap();
    assert_eq!(img.write_at(0, &[]).unwrap(), 0);
    assert_eq!(img.read_at(12 * MIB, &mut []).unwrap(), 0);
}

#[test]
fn ranges_past_the_end_are_refused_and_change_nothing() {
    let Some((rados, _conf)) = common::connect() else {
        return;
    };
    let size = 2 * MIB;
    let t = TestImage::create(&rados, "io-range", size, &plain_opts());
    let img = t.open();
    let tail = pattern(3, 4096);
    img.write_at(size - 4096, &tail).unwrap();

    // Writes that run past the end: refused, nothing written (librbd would clip).
    let e = img.write_at(size - 10, &[0xee; 20]).unwrap_err();
    invalid(&e);
    let msg = e.to_string();
    assert!(msg.contains(&format!("offset {}", size - 10)), "{msg}");
    assert!(
        msg.contains(&t.name) && msg.contains("2097152 bytes"),
        "{msg}"
    );
    invalid(&img.write_at(size, &[1]).unwrap_err());
    invalid(&img.write_at(u64::MAX, &[1]).unwrap_err());
    invalid(&img.discard(size - 1, 2).unwrap_err());
    invalid(&img.write_zeroes(size, 1).unwrap_err());
    invalid(&img.discard(1, u64::MAX).unwrap_err());
    let mut back = vec![0u8; 4096];
    img.read_exact_at(size - 4096, &mut back).unwrap();
    assert!(back == tail, "a refused write changed the image");

    // Reads: starting at/after the end is an error; running past it is a short read.
    let mut buf = vec![0u8; 100];
    let e = img.read_at(size, &mut buf).unwrap_err();
    invalid(&e);
    assert!(e.to_string().contains("past the end"), "{e}");
    invalid(&img.read_at(size + 12_345, &mut buf).unwrap_err());
    assert_eq!(img.read_at(size - 30, &mut buf).unwrap(), 30);
    assert!(buf[..30] == tail[4096 - 30..]);
    invalid(&img.read_exact_at(size - 30, &mut buf).unwrap_err());

    // Bad tuning values are refused with the value named.
    let mut img = img;
    let e = img.set_max_request_size(3).unwrap_err();
    invalid(&e);
    assert!(e.to_string().contains('3'), "{e}");
    assert!(img.set_max_request_size(usize::MAX).is_err());
    assert_eq!(img.max_request_size(), 1 << 30);
}

#[test]
fn read_only_and_snapshot_handles_refuse_writes() {
    let Some((rados, _conf)) = common::connect() else {
        return;
    };
    let t = TestImage::create(&rados, "io-ro", 4 * MIB, &plain_opts());
    let img = t.open();
    img.write_at(0, b"original").unwrap();
    img.snap_create("s1").unwrap();
    img.write_at(0, b"changed!").unwrap();

    let ro = Image::open(&t.io, &t.name, &OpenOptions::new().read_only(true)).unwrap();
    let at_snap = Image::open(&t.io, &t.name, &OpenOptions::new().snapshot("s1")).unwrap();
    for (what, h) in [("read-only", &ro), ("snapshot", &at_snap)] {
        let e = h.write_at(0, b"nope").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ReadOnly, "{what}: {e}");
        assert!(e.to_string().contains(&t.name), "{e}");
        let e = h.discard(0, 4096).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ReadOnly, "{what}: {e}");
        let e = h.write_zeroes(0, 4096).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ReadOnly, "{what}: {e}");
    }
    let mut buf = [0u8; 8];
    ro.read_exact_at(0, &mut buf).unwrap();
    assert_eq!(&buf, b"changed!");
    at_snap.read_exact_at(0, &mut buf).unwrap();
    assert_eq!(&buf, b"original");

    // A read-write handle switched to the snapshot refuses writes too, and takes them
    // again back at the head.
    let mut img = img;
    img.snap_set(Some("s1")).unwrap();
    assert_eq!(
        img.write_at(0, b"x").unwrap_err().kind(),
        ErrorKind::ReadOnly
    );
    img.snap_set(None).unwrap();
    img.write_at(0, b"x").unwrap();
    drop((ro, at_snap));
}

#[test]
fn requests_larger_than_the_limit_are_split() {
    let Some((rados, conf)) = common::connect() else {
        return;
    };
    let opts = ImageOptions::new()
        .features(Features::LAYERING)
        .object_size(64 * KIB)
        .unwrap();
    let t = TestImage::create(&rados, "io-split", 4 * MIB, &opts);
    let mut img = t.open();
    // 4 KiB pieces: a 1 MiB + 5 write at an odd offset becomes ~258 librbd requests.
    img.set_max_request_size(4096).unwrap();
    let data = pattern(11, MIB as usize + 5);
    let off = 3 * MIB - 777_777;
    assert_eq!(
        img.write_at_with(off, &data, IoFlags::FADVISE_SEQUENTIAL)
            .unwrap(),
        data.len()
    );
    let mut back = vec![0u8; data.len()];
    assert_eq!(
        img.read_at_with(off, &mut back, IoFlags::FADVISE_RANDOM)
            .unwrap(),
        data.len()
    );
    assert!(back == data);
    let mut model = vec![0u8; 4 * MIB as usize];
    model[off as usize..off as usize + data.len()].copy_from_slice(&data);
    // A short read at the end, split too.
    let mut end = vec![0u8; 10_000];
    assert_eq!(img.read_at(4 * MIB - 5000, &mut end).unwrap(), 5000);
    img.flush().unwrap();
    assert!(read_all(&img) == model);
    assert!(mgmt::export(&conf, &t.spec()) == model);
}

#[test]
fn zeroing_more_than_two_gib_is_split() {
    let Some((rados, _conf)) = common::connect() else {
        return;
    };
    // A sparse 5 GiB image: rbd_discard alone refuses lengths above INT_MAX.
    let size = 5 << 30;
    let t = TestImage::create(&rados, "io-bigzero", size, &plain_opts());
    let img = t.open();
    let marks = [0u64, (1 << 30) - 3, 1 << 31, 3 << 30, size - 4096];
    for (i, &m) in marks.iter().enumerate() {
        img.write_at(m, &pattern(i as u64, 4096.min((size - m) as usize)))
            .unwrap();
    }
    img.discard(0, size).unwrap();
    for &m in &marks {
        let mut b = vec![0xffu8; 4096.min((size - m) as usize)];
        img.read_exact_at(m, &mut b).unwrap();
        assert!(
            b.iter().all(|&x| x == 0),
            "discarded data at {m} is not zero"
        );
    }
    for (i, &m) in marks.iter().enumerate() {
        img.write_at(m, &pattern(i as u64, 4096.min((size - m) as usize)))
            .unwrap();
    }
    // 3 GiB + 5 of zeroes from an odd offset.
    img.write_zeroes(100, (3 << 30) + 5).unwrap();
    let mut b = vec![0u8; 4096];
    img.read_exact_at(0, &mut b).unwrap();
    assert!(b[..100] == pattern(0, 4096)[..100] && b[100..].iter().all(|&x| x == 0));
    img.read_exact_at(3 << 30, &mut b).unwrap();
    assert!(b[..105].iter().all(|&x| x == 0) && b[105..] == pattern(3, 4096)[105..]);
    img.read_exact_at(size - 4096, &mut b).unwrap();
    assert!(b == pattern(4, 4096), "data after the zeroed range changed");
}

#[test]
fn cursor_works_with_std_io() {
    let Some((rados, conf)) = common::connect() else {
        return;
    };
    let size = 3 * MIB + 4096;
    let t = TestImage::create(&rados, "io-cursor", size, &plain_opts());
    let img = t.open();
    let data = pattern(5, size as usize);

    // std::io::copy into the image, from the start.
    let mut cur = img.cursor();
    let n = std::io::copy(&mut std::io::Cursor::new(&data), &mut cur).unwrap();
    assert_eq!(n, size);
    assert_eq!(cur.position(), size);
    cur.flush().unwrap();
    // At the end: writing fails (StorageFull), reading gives EOF.
    let e = cur.write(b"more").unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::StorageFull, "{e}");
    assert!(e.to_string().contains(&t.name), "{e}");
    let mut b = [0u8; 4];
    assert_eq!(cur.read(&mut b).unwrap(), 0);
    // A write running past the end is short; write_all then fails with WriteZero.
    cur.seek(SeekFrom::End(-2)).unwrap();
    assert_eq!(cur.write(b"abcd").unwrap(), 2);
    cur.seek(SeekFrom::End(-2)).unwrap();
    assert_eq!(
        cur.write_all(b"abcd").unwrap_err().kind(),
        std::io::ErrorKind::StorageFull
    );

    // std::io::copy out of the image, through a BufReader, from the start.
    let mut cur = std::io::BufReader::new(img.cursor());
    let mut out = Vec::new();
    let n = std::io::copy(&mut cur, &mut out).unwrap();
    assert_eq!(n, size);
    let mut expected = data.clone();
    let l = expected.len();
    expected[l - 2..].copy_from_slice(b"ab");
    assert!(out == expected);
    assert!(mgmt::export(&conf, &t.spec()) == expected);

    // Seeking: relative, from the end, before the start.
    let mut cur = img.cursor();
    assert_eq!(cur.seek(SeekFrom::Start(MIB)).unwrap(), MIB);
    assert_eq!(cur.seek(SeekFrom::Current(-10)).unwrap(), MIB - 10);
    let mut ten = [0u8; 10];
    cur.read_exact(&mut ten).unwrap();
    assert!(ten[..] == data[(MIB - 10) as usize..MIB as usize]);
    assert_eq!(cur.stream_position().unwrap(), MIB);
    assert_eq!(cur.seek(SeekFrom::End(0)).unwrap(), size);
    let e = cur.seek(SeekFrom::Current(-(size as i64) - 1)).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
    assert_eq!(cur.position(), size, "a failed seek moves nothing");
    // Past the end is allowed, and reads there are EOF.
    assert_eq!(cur.seek(SeekFrom::Current(100)).unwrap(), size + 100);
    assert_eq!(cur.read(&mut ten).unwrap(), 0);

    // The owning form, and errors converted to std::io::Error with our error inside.
    let ro = Image::open(&t.io, &t.name, &OpenOptions::new().read_only(true)).unwrap();
    let mut owned = rbd_core::rbd::ImageCursor::new(ro);
    let e = owned.write(b"x").unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::ReadOnlyFilesystem, "{e}");
    let inner = e.get_ref().and_then(|i| i.downcast_ref::<Error>()).unwrap();
    assert_eq!(inner.kind(), ErrorKind::ReadOnly);
    let mut first = [0u8; 16];
    owned.read_exact(&mut first).unwrap();
    assert!(first[..] == data[..16]);
    owned.into_inner().close().unwrap();
}
