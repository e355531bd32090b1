//! Helpers for the image-management tests: a guard that removes a test image whatever
//! happens, and CLI shortcuts to put data into images (the I/O module is tested
//! elsewhere; these tests write with Ceph's own tools).
#![allow(dead_code)]

use std::path::PathBuf;
use std::time::Duration;

use rbd_core::rbd::{self, ImageOptions};
use rbd_core::{ErrorKind, Image, IoCtx, OpenOptions, Rados};

use crate::common;

/// A test image that is removed on drop, even when the test fails: advisory locks are
/// broken, snapshots unprotected and removed, then the image is removed (or purged from
/// the trash).
pub struct TestImage {
    /// An I/O context on the test pool.
    pub io: IoCtx,
    /// The image name.
    pub name: String,
}

impl TestImage {
    /// Creates a unique image `<prefix>-<random>` of `size` bytes with `opts`.
    pub fn create(rados: &Rados, prefix: &str, size: u64, opts: &ImageOptions) -> TestImage {
        let io = rados.ioctx(common::POOL).unwrap();
        let name = testkit::unique(prefix);
        rbd::create(&io, &name, size, opts).unwrap();
        TestImage { io, name }
    }

    /// Takes responsibility for removing an image created some other way (e.g. the CLI).
    pub fn adopt(rados: &Rados, name: &str) -> TestImage {
        TestImage {
            io: rados.ioctx(common::POOL).unwrap(),
            name: name.to_owned(),
        }
    }

    /// Opens it read-write at the head.
    pub fn open(&self) -> Image {
        Image::open(&self.io, &self.name, &OpenOptions::new()).unwrap()
    }

    /// `pool/name`, as the CLI takes it.
    pub fn spec(&self) -> String {
        format!("{}/{}", common::POOL, self.name)
    }
}

impl Drop for TestImage {
    fn drop(&mut self) {
        remove_everything(&self.io, &self.name);
    }
}

/// Best-effort removal of an image and everything that would block it. Never panics.
pub fn remove_everything(io: &IoCtx, name: &str) {
    if let Ok(img) = Image::open(io, name, &OpenOptions::new()) {
        if let Ok(l) = img.list_lockers() {
            for locker in l.lockers {
                let _ = img.break_lock(&locker.client, &locker.cookie);
            }
        }
        if let Ok(snaps) = img.snap_list() {
            for s in snaps {
                if img.snap_is_protected(&s.name).unwrap_or(false) {
                    let _ = img.snap_unprotect(&s.name);
                }
                let _ = img.snap_remove(&s.name);
            }
        }
        let _ = img.close();
    }
    // Watchers of handles dropped a moment ago can linger briefly; retry a few times.
    for _ in 0..10 {
        match rbd::remove(io, name) {
            Ok(()) => return,
            Err(e) if e.kind() == ErrorKind::NotFound => break,
            Err(e) if e.kind() == ErrorKind::Busy => std::thread::sleep(Duration::from_secs(1)),
            Err(e) => {
                eprintln!("cleanup of image {name} failed: {e}");
                break;
            }
        }
    }
    // It may have been left in the trash by a test.
    if let Ok(entries) = rbd::trash_list(io) {
        for e in entries.into_iter().filter(|e| e.name == name) {
            let _ = rbd::trash_remove(io, &e.id, true);
        }
    }
}

/// Writes `total` bytes of data from offset 0 with `rbd bench` (sequential, `io_size`
/// per write).
pub fn bench_write(conf: &PathBuf, spec: &str, io_size: &str, total: &str) {
    common::cli(
        conf,
        "rbd",
        &[
            "bench",
            "--io-type",
            "write",
            "--io-pattern",
            "seq",
            "--io-threads",
            "1",
            "--io-size",
            io_size,
            "--io-total",
            total,
            spec,
        ],
    );
}

/// The image's content through `rbd export` (use on small images only).
pub fn export(conf: &PathBuf, spec: &str) -> Vec<u8> {
    let out = std::process::Command::new("timeout")
        .arg("60")
        .arg("rbd")
        .arg("-c")
        .arg(conf)
        .args(["export", "--no-progress", spec, "-"])
        .output()
        .expect("run rbd export");
    assert!(
        out.status.success(),
        "rbd export {spec}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// A second, independent connection (another client instance) to the dev cluster.
pub fn second_client(conf: &PathBuf) -> Rados {
    Rados::connect(
        &rbd_core::ConnectOptions::new()
            .conf_file(conf)
            .timeouts(rbd_core::Timeouts::uniform(Duration::from_secs(20))),
    )
    .unwrap()
}

/// Options for a plain image: layering only (no exclusive lock), 4 MiB objects.
pub fn plain_opts() -> ImageOptions {
    ImageOptions::new().features(rbd::Features::LAYERING)
}
