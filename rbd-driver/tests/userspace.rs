//! The userspace mapper (`rbd-umap`: FUSE + loop) against the real dev cluster, as root.
//!
//! Every test uses its own run directory under `/run`, its own images, and a [`Fixture`]
//! whose `Drop` kills the test's mappers (by their own pids), detaches their loop devices,
//! unmounts what was mounted, lifts blocklist entries it added and removes its images,
//! even when the test fails. I/O that could block (on a fenced or dead mapper) runs on a
//! helper thread with a hard deadline, so no test can hang.

use std::fs::File;
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rbd_core::rbd::{ImageOptions, Shrink};
use rbd_core::{ConnectOptions, EntityAddr, Image, IoCtx, OpenOptions, Rados, Timeouts};
use rbd_driver::DriverError;
use rbd_driver::mapper::userspace::daemon::exit;
use rbd_driver::mapper::userspace::record::{self, Paths};
use rbd_driver::mapper::userspace::{EntryState, UserspaceMapper};
use rbd_driver::mapper::{
    self, Backend, CephAuth, MapOptions, MapRequest, Mapper, MapperConfig, Mapping, loopdev,
};
use testkit::pattern;

const MIB: u64 = 1 << 20;
const POOL: &str = "rbd";
/// The per-I/O deadline the tests map with.
const IO_TIMEOUT: u32 = 3;

/// FNV-1a, to compare large buffers in messages.
fn checksum(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &x| {
        (h ^ u64::from(x)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A page-aligned buffer for O_DIRECT.
struct Aligned {
    v: Vec<u8>,
    off: usize,
    len: usize,
}

impl Aligned {
    fn new(len: usize) -> Self {
        let v = vec![0u8; len + 4096];
        let off = v.as_ptr().align_offset(4096);
        Self { v, off, len }
    }
    fn from(data: &[u8]) -> Self {
        let mut a = Self::new(data.len());
        a.as_mut().copy_from_slice(data);
        a
    }
    fn as_ref(&self) -> &[u8] {
        &self.v[self.off..self.off + self.len]
    }
    fn as_mut(&mut self) -> &mut [u8] {
        &mut self.v[self.off..self.off + self.len]
    }
}

fn open_direct(dev: &Path, write: bool) -> std::io::Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(write)
        .custom_flags(libc::O_DIRECT)
        .open(dev)
}

fn direct_write(dev: &Path, off: u64, data: &[u8]) -> std::io::Result<()> {
    let f = open_direct(dev, true)?;
    f.write_all_at(Aligned::from(data).as_ref(), off)?;
    f.sync_all()
}

fn direct_read(dev: &Path, off: u64, len: usize) -> std::io::Result<Vec<u8>> {
    let f = open_direct(dev, false)?;
    let mut a = Aligned::new(len);
    f.read_exact_at(a.as_mut(), off)?;
    Ok(a.as_ref().to_vec())
}

/// Runs blocking I/O on a helper thread; `None` if it did not finish within `limit` (the
/// thread is abandoned, the test goes on and fails).
fn bounded<T: Send + 'static>(
    limit: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> Option<(T, Duration)> {
    let (tx, rx) = std::sync::mpsc::channel();
    let start = Instant::now();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(limit).ok().map(|v| (v, start.elapsed()))
}

/// Ceph's CLI against the dev cluster, with a timeout.
fn cli(conf: &Path, tool: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new("timeout")
        .arg("60")
        .arg(tool)
        .arg("-c")
        .arg(conf)
        .args(args)
        .output()
        .expect("run the ceph CLI");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn cli_ok(conf: &Path, tool: &str, args: &[&str]) -> String {
    let (ok, out, err) = cli(conf, tool, args);
    assert!(ok, "{tool} {args:?} failed: {err}");
    out
}

/// An external command with a timeout, which must succeed.
fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new("timeout")
        .arg("120")
        .arg(cmd)
        .args(args)
        .output()
        .expect("run command");
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Watcher addresses of an image, from `rbd status`.
fn watchers(conf: &Path, image: &str) -> Vec<EntityAddr> {
    let out = cli_ok(
        conf,
        "rbd",
        &["status", "--format", "json", &format!("{POOL}/{image}")],
    );
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    v["watchers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|w| w["address"].as_str())
        .map(|a| a.parse().unwrap())
        .collect()
}

fn is_mounted(p: &Path) -> bool {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(p.to_str().unwrap()))
}

fn proc_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .and_then(|(_, r)| r.split_whitespace().next().map(str::to_owned))
        })
        .is_some_and(|st| st != "Z" && st != "X")
}

fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

struct TestImage {
    name: String,
    id: String,
}

/// One test's cluster connection, run directory, mapper, and everything to clean up.
struct Fixture {
    conf: PathBuf,
    rados: Rados,
    io: IoCtx,
    run: tempfile::TempDir,
    mapper: UserspaceMapper,
    images: Mutex<Vec<String>>,
    mounts: Mutex<Vec<PathBuf>>,
    blocklisted: Mutex<Vec<EntityAddr>>,
}

impl Fixture {
    fn new() -> Option<Fixture> {
        let conf = testkit::ceph_conf()?;
        if !testkit::require_root() {
            return None;
        }
        let rados = Rados::connect(
            &ConnectOptions::new()
                .conf_file(&conf)
                .timeouts(Timeouts::uniform(Duration::from_secs(20))),
        )
        .expect("connect to the dev cluster");
        let io = rados.ioctx(POOL).unwrap();
        let run = tempfile::Builder::new()
            .prefix("umap-t")
            .tempdir_in("/run")
            .unwrap();
        let cfg = MapperConfig {
            run_dir: run.path().to_path_buf(),
            umap_bin: Some(PathBuf::from(env!("CARGO_BIN_EXE_rbd-umap"))),
            ..MapperConfig::default()
        };
        let mapper = UserspaceMapper::new(&cfg)
            .with_timeouts(Duration::from_secs(60), Duration::from_secs(30))
            .with_check_interval(Duration::from_millis(500));
        Some(Fixture {
            conf,
            rados,
            io,
            run,
            mapper,
            images: Mutex::new(Vec::new()),
            mounts: Mutex::new(Vec::new()),
            blocklisted: Mutex::new(Vec::new()),
        })
    }

    fn cfg(&self) -> MapperConfig {
        MapperConfig {
            run_dir: self.run.path().to_path_buf(),
            umap_bin: Some(PathBuf::from(env!("CARGO_BIN_EXE_rbd-umap"))),
            ..MapperConfig::default()
        }
    }

    fn image(&self, prefix: &str, size: u64) -> TestImage {
        let name = testkit::unique(prefix);
        rbd_core::rbd::create(&self.io, &name, size, &ImageOptions::new()).unwrap();
        self.images.lock().unwrap().push(name.clone());
        let id = rbd_core::rbd::image_id_by_name(&self.io, &name).unwrap();
        TestImage { name, id }
    }

    fn open(&self, img: &TestImage) -> Image {
        Image::open_by_id(&self.io, &img.id, &OpenOptions::new()).unwrap()
    }

    fn req(&self, img: &TestImage) -> MapRequest {
        MapRequest {
            pool: POOL.into(),
            namespace: String::new(),
            image: img.name.clone(),
            image_id: img.id.clone(),
            snap: None,
            read_only: false,
            exclusive: false,
            auth: CephAuth {
                conf: self.conf.clone(),
                id: "admin".into(),
                keyring: None,
            },
            options: MapOptions {
                io_timeout_secs: Some(IO_TIMEOUT),
                ..MapOptions::default()
            },
        }
    }

    fn map(&self, img: &TestImage) -> Mapping {
        self.mapper.map(&self.req(img)).unwrap()
    }

    fn blocklist(&self, addr: &EntityAddr) {
        self.blocklisted.lock().unwrap().push(*addr);
        self.rados
            .blocklist_add(addr, Some(Duration::from_secs(600)))
            .unwrap();
    }

    fn mount(&self, dev: &Path, ro: bool) -> PathBuf {
        let dir = self
            .run
            .path()
            .join(format!("fs{}", self.mounts.lock().unwrap().len()));
        std::fs::create_dir_all(&dir).unwrap();
        let flags = if ro {
            nix::mount::MsFlags::MS_RDONLY
        } else {
            nix::mount::MsFlags::empty()
        };
        nix::mount::mount(
            Some(dev),
            &dir,
            Some("ext4"),
            flags,
            if ro { Some("noload") } else { None },
        )
        .unwrap();
        self.mounts.lock().unwrap().push(dir.clone());
        dir
    }

    fn umount(&self, dir: &Path) {
        nix::mount::umount(dir).unwrap();
        self.mounts.lock().unwrap().retain(|d| d != dir);
    }

    fn paths(&self, token: &str) -> Paths {
        Paths::new(self.run.path(), token)
    }

    /// The token of a mapping, from its record.
    fn token_of(&self, m: &Mapping) -> String {
        self.mapper
            .entries()
            .unwrap()
            .into_iter()
            .find(|e| e.record.device == m.device && e.record.image_id == m.image_id)
            .expect("a record for the mapping")
            .record
            .token
    }

    /// Checks that nothing of a mapping is left: record, FUSE mount, loop binding, process.
    fn assert_gone(&self, m: &Mapping, token: &str) {
        let p = self.paths(token);
        assert!(!p.record().exists(), "record {} left", p.record().display());
        assert!(!is_mounted(&p.mountpoint()), "FUSE mount left");
        let n = loopdev::parse_device(&m.device).unwrap();
        assert_ne!(
            loopdev::backing_file(n),
            Some(p.fuse_file()),
            "{} still bound to the mapper's file",
            m.device.display()
        );
        if let Some(pid) = m.pid {
            assert!(!proc_alive(pid), "mapper pid {pid} still runs");
        }
        assert!(
            !self
                .mapper
                .list()
                .unwrap()
                .iter()
                .any(|x| x.device == m.device),
            "still listed"
        );
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        for d in self.mounts.lock().unwrap().drain(..) {
            let _ = nix::mount::umount2(&d, nix::mount::MntFlags::MNT_DETACH);
        }
        // Kill our mappers by their own pids, then undo what they left.
        for e in self.mapper.entries().unwrap_or_default() {
            let r = &e.record;
            if matches!(e.state, EntryState::Running | EntryState::Detaching) && proc_alive(r.pid) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(r.pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
                wait_until(Duration::from_secs(5), || !proc_alive(r.pid));
                // Its watch would linger until the OSD times it out: fence it.
                if let Some(a) = r.client_addr
                    && self
                        .rados
                        .blocklist_add(&a, Some(Duration::from_secs(120)))
                        .is_ok()
                {
                    self.blocklisted.lock().unwrap().push(a);
                }
            }
        }
        let dir = record::dir(self.run.path());
        if let Ok(loops) = loopdev::list() {
            for l in loops.iter().filter(|l| l.backing_file.starts_with(&dir)) {
                let _ = loopdev::detach(l.number);
            }
        }
        if let Ok(mi) = std::fs::read_to_string("/proc/self/mountinfo") {
            for l in mi.lines() {
                if let Some(mp) = l.split(' ').nth(4)
                    && Path::new(mp).starts_with(self.run.path())
                {
                    let _ = nix::mount::umount2(mp, nix::mount::MntFlags::MNT_DETACH);
                }
            }
        }
        for name in self.images.lock().unwrap().drain(..) {
            let _ = cli(
                &self.conf,
                "rbd",
                &["snap", "purge", &format!("{POOL}/{name}")],
            );
            // A killed mapper's watch lingers until the OSD times it out.
            wait_until(Duration::from_secs(60), || {
                rbd_core::rbd::remove(&self.io, &name).is_ok()
                    || rbd_core::rbd::image_id_by_name(&self.io, &name).is_err()
            });
        }
        for a in self.blocklisted.lock().unwrap().drain(..) {
            let _ = self.rados.blocklist_rm(&a);
        }
    }
}

#[test]
fn maps_by_image_id_with_direct_io_and_data_reaches_the_image() {
    let Some(fx) = Fixture::new() else { return };
    let img = fx.image("umap-io", 64 * MIB);
    let m = fx.map(&img);
    assert_eq!(m.backend, Backend::Userspace);
    assert_eq!(m.image_id, img.id);
    assert!(
        std::fs::metadata(&m.device)
            .unwrap()
            .file_type()
            .is_block_device(),
        "{} is not a block device",
        m.device.display()
    );
    let n = loopdev::parse_device(&m.device).expect("a /dev/loopN device");
    assert_eq!(loopdev::direct_io(n), Some(true), "direct I/O is off");
    let info = loopdev::info(n).unwrap();
    assert!(info.autoclear);
    let size: u64 = std::fs::read_to_string(format!("/sys/block/loop{n}/size"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(size * 512, 64 * MIB);

    // O_DIRECT writes through the loop device...
    let a = pattern(1, 4 * MIB as usize);
    let b = pattern(2, 64 * 1024);
    direct_write(&m.device, MIB, &a).unwrap();
    direct_write(&m.device, 63 * MIB, &b).unwrap();
    // ...are in the image, through rbd-core...
    let image = fx.open(&img);
    let mut got = vec![0u8; a.len()];
    image.read_exact_at(MIB, &mut got).unwrap();
    assert_eq!(checksum(&got), checksum(&a), "rbd-core sees other data");
    // ...and through `rbd export`.
    let out = Command::new("timeout")
        .args(["60", "rbd", "-c"])
        .arg(&fx.conf)
        .args([
            "export",
            "--no-progress",
            &format!("{POOL}/{}", img.name),
            "-",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let exported = out.stdout;
    assert_eq!(exported.len() as u64, 64 * MIB);
    assert_eq!(
        checksum(&exported[MIB as usize..MIB as usize + a.len()]),
        checksum(&a)
    );
    assert_eq!(
        &exported[63 * MIB as usize..63 * MIB as usize + b.len()],
        &b[..]
    );
    assert!(exported[..MIB as usize].iter().all(|&x| x == 0));
    // Data written through rbd-core reads back through the device.
    let c = pattern(3, 1 << 20);
    image.write_all_at(10 * MIB, &c).unwrap();
    image.flush().unwrap();
    assert_eq!(direct_read(&m.device, 10 * MIB, c.len()).unwrap(), c);
    drop(image);

    // The record has what `list` needs.
    let token = fx.token_of(&m);
    let rec = record::read(&fx.paths(&token).record()).unwrap();
    assert_eq!(rec.image_id, img.id);
    assert_eq!(rec.device, m.device);
    assert_eq!(Some(rec.pid), m.pid);
    assert_eq!(rec.client_addr, m.client_addr);
    assert!(is_mounted(&rec.mountpoint));
    fx.mapper.unmap(&m, false).unwrap();
    fx.assert_gone(&m, &token);
}

#[test]
fn mkfs_mount_write_unmount_unmap_leaves_nothing_behind() {
    let Some(fx) = Fixture::new() else { return };
    let img = fx.image("umap-fs", 256 * MIB);
    let m = fx.map(&img);
    let token = fx.token_of(&m);
    let dev = m.device.to_str().unwrap().to_owned();
    run(
        "mkfs.ext4",
        &[
            "-q",
            "-F",
            "-E",
            "nodiscard,lazy_itable_init=1,lazy_journal_init=1",
            &dev,
        ],
    );
    let dir = fx.mount(&m.device, false);
    let data = pattern(7, 3 * MIB as usize + 123);
    std::fs::write(dir.join("hello.bin"), &data).unwrap();
    File::open(dir.join("hello.bin"))
        .unwrap()
        .sync_all()
        .unwrap();
    // A mounted device is not unmapped without force.
    match fx.mapper.unmap(&m, false) {
        Err(DriverError::InUse { detail, .. }) => {
            assert!(detail.contains("mounted"), "{detail}")
        }
        other => panic!("unmap of a mounted device: {other:?}"),
    }
    assert!(
        fx.mapper
            .list()
            .unwrap()
            .iter()
            .any(|x| x.device == m.device)
    );
    fx.umount(&dir);
    fx.mapper.unmap(&m, false).unwrap();
    fx.assert_gone(&m, &token);
    assert!(
        watchers(&fx.conf, &img.name).is_empty(),
        "a watcher is left: {:?}",
        watchers(&fx.conf, &img.name)
    );
    // The file is in the image: map again read-only and look.
    let mut req = fx.req(&img);
    req.read_only = true;
    let m2 = fx.mapper.map(&req).unwrap();
    assert!(m2.read_only);
    let dir = fx.mount(&m2.device, true);
    assert_eq!(std::fs::read(dir.join("hello.bin")).unwrap(), data);
    fx.umount(&dir);
    let t2 = fx.token_of(&m2);
    fx.mapper.unmap(&m2, false).unwrap();
    fx.assert_gone(&m2, &t2);
}

#[test]
fn two_images_at_once_are_listed_by_image_id_with_client_addresses() {
    let Some(fx) = Fixture::new() else { return };
    let i1 = fx.image("umap-l1", 32 * MIB);
    let i2 = fx.image("umap-l2", 48 * MIB);
    let m1 = fx.map(&i1);
    let m2 = fx.map(&i2);
    assert_ne!(m1.device, m2.device);
    assert_ne!(m1.client_addr, m2.client_addr, "one client per mapping");
    let list = fx.mapper.list().unwrap();
    assert_eq!(list.len(), 2, "{list:?}");
    for (m, img) in [(&m1, &i1), (&m2, &i2)] {
        let l = list.iter().find(|x| x.image_id == img.id).expect("listed");
        assert_eq!(l.backend, Backend::Userspace);
        assert_eq!(l.device, m.device);
        assert_eq!(l.image, img.name);
        assert_eq!(l.pool, POOL);
        assert!(l.pid.is_some());
        let addr = l.client_addr.expect("a client address");
        assert!(
            watchers(&fx.conf, &img.name)
                .iter()
                .any(|w| w.same_instance(&addr)),
            "{addr} is not a watcher of {}",
            img.name
        );
    }
    // Found by image id through the generic API, never by name.
    let found = mapper::find_by_image_id(&fx.cfg(), POOL, "", &i2.id).unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].device, m2.device);
    // Independent data.
    direct_write(&m1.device, 0, &pattern(11, 65536)).unwrap();
    direct_write(&m2.device, 0, &pattern(12, 65536)).unwrap();
    assert_eq!(
        direct_read(&m1.device, 0, 65536).unwrap(),
        pattern(11, 65536)
    );
    assert_eq!(
        direct_read(&m2.device, 0, 65536).unwrap(),
        pattern(12, 65536)
    );
    let sz2: u64 = std::fs::read_to_string(format!(
        "/sys/block/loop{}/size",
        loopdev::parse_device(&m2.device).unwrap()
    ))
    .unwrap()
    .trim()
    .parse()
    .unwrap();
    assert_eq!(sz2 * 512, 48 * MIB);
    for m in [&m1, &m2] {
        let t = fx.token_of(m);
        fx.mapper.unmap(m, false).unwrap();
        fx.assert_gone(m, &t);
    }
    assert!(fx.mapper.list().unwrap().is_empty());
}

#[test]
fn read_only_and_snapshot_maps_reject_writes() {
    let Some(fx) = Fixture::new() else { return };
    let img = fx.image("umap-ro", 16 * MIB);
    let image = fx.open(&img);
    image.write_all_at(0, &pattern(21, 65536)).unwrap();
    image.flush().unwrap();
    image.snap_create("s1").unwrap();
    image.write_all_at(0, &pattern(22, 65536)).unwrap();
    image.flush().unwrap();
    drop(image);

    // Read-only head.
    let mut req = fx.req(&img);
    req.read_only = true;
    let ro = fx.mapper.map(&req).unwrap();
    assert!(ro.read_only);
    let n = loopdev::parse_device(&ro.device).unwrap();
    assert_eq!(loopdev::read_only(n), Some(true));
    assert_eq!(
        direct_read(&ro.device, 0, 65536).unwrap(),
        pattern(22, 65536)
    );
    let w = direct_write(&ro.device, 0, &pattern(23, 4096));
    assert!(w.is_err(), "a write to a read-only mapping succeeded");
    // Snapshot: the data as of the snapshot, read-only even if not asked.
    let mut req = fx.req(&img);
    req.snap = Some("s1".into());
    let snap = fx.mapper.map(&req).unwrap();
    assert_eq!(snap.snap.as_deref(), Some("s1"));
    assert!(snap.read_only);
    assert_eq!(
        direct_read(&snap.device, 0, 65536).unwrap(),
        pattern(21, 65536)
    );
    assert!(direct_write(&snap.device, 0, &pattern(24, 4096)).is_err());
    let listed = fx.mapper.list().unwrap();
    assert!(
        listed
            .iter()
            .any(|m| m.snap.as_deref() == Some("s1") && m.image_id == img.id)
    );
    // Nothing reached the image.
    let image = fx.open(&img);
    let mut got = vec![0u8; 65536];
    image.read_exact_at(0, &mut got).unwrap();
    assert_eq!(got, pattern(22, 65536));
    for m in [&ro, &snap] {
        let t = fx.token_of(m);
        fx.mapper.unmap(m, false).unwrap();
        fx.assert_gone(m, &t);
    }
}

#[test]
fn blocklisted_mapper_fails_io_with_eio_and_exits() {
    let Some(fx) = Fixture::new() else { return };
    let img = fx.image("umap-bl", 32 * MIB);
    let m = fx.map(&img);
    let token = fx.token_of(&m);
    let pid = m.pid.unwrap();
    direct_write(&m.device, 0, &pattern(31, 1 << 20)).unwrap();
    let addr = m.client_addr.expect("client address");
    assert!(
        watchers(&fx.conf, &img.name)
            .iter()
            .any(|w| w.same_instance(&addr))
    );
    let n = loopdev::parse_device(&m.device).unwrap();
    let id = loopdev::binding_id(n).expect("bound");
    // Fence exactly this mapper, from our own (second) connection.
    fx.blocklist(&addr);
    // Keep the device open, so that the I/O below reaches the dead mapping.
    let held = open_direct(&m.device, true).unwrap();
    let held2 = held.try_clone().unwrap();
    let limit = Duration::from_secs(u64::from(IO_TIMEOUT) + 15);
    let (r, took) = bounded(limit, move || {
        let mut a = Aligned::from(&pattern(32, 65536));
        let w = held2.write_all_at(a.as_ref(), 4 * MIB);
        let r = held2.read_exact_at(a.as_mut(), 0);
        (w, r)
    })
    .expect("I/O on a blocklisted mapping hung");
    let (w, rd) = r;
    assert_eq!(w.unwrap_err().raw_os_error(), Some(libc::EIO));
    assert_eq!(rd.unwrap_err().raw_os_error(), Some(libc::EIO));
    assert!(took < limit, "{took:?}");
    // The mapper exits by itself, saying why.
    assert!(
        wait_until(Duration::from_secs(20), || !proc_alive(pid)),
        "the fenced mapper is still running"
    );
    let paths = fx.paths(&token);
    let report: record::ExitReport =
        serde_json::from_slice(&std::fs::read(paths.exit()).unwrap()).unwrap();
    assert_eq!(report.code, exit::BLOCKLISTED, "{report:?}");
    assert!(report.reason.contains("blocklisted"), "{report:?}");
    let log = std::fs::read_to_string(paths.log()).unwrap();
    assert!(log.contains("stopping: blocklisted"), "{log}");
    assert!(!paths.record().exists());
    assert!(!is_mounted(&paths.mountpoint()));
    // Our open descriptor keeps the loop device bound (to the file of the lazily
    // unmounted FUSE mount, which sysfs no longer names by its path); it goes once we
    // close it.
    eprintln!("backing file now: {:?}", loopdev::backing_file(n));
    assert!(loopdev::is_bound_to(n, &id));
    assert!(!loopdev::wait_detached(n, &id, Duration::from_millis(300)));
    drop(held);
    assert!(loopdev::wait_detached(n, &id, Duration::from_secs(10)));
    assert!(fx.mapper.list().unwrap().is_empty());
}

#[test]
fn blocklisted_idle_mapper_notices_and_exits() {
    let Some(fx) = Fixture::new() else { return };
    let img = fx.image("umap-bl2", 16 * MIB);
    let m = fx.map(&img);
    let token = fx.token_of(&m);
    let pid = m.pid.unwrap();
    fx.blocklist(&m.client_addr.unwrap());
    // No I/O at all: the watchdog sees our address on the blocklist.
    assert!(
        wait_until(Duration::from_secs(20), || !proc_alive(pid)),
        "the fenced idle mapper is still running"
    );
    let report: record::ExitReport =
        serde_json::from_slice(&std::fs::read(fx.paths(&token).exit()).unwrap()).unwrap();
    assert_eq!(report.code, exit::BLOCKLISTED, "{report:?}");
    assert!(report.reason.contains("blocklist"), "{report:?}");
    fx.assert_gone(&m, &token);
}

#[test]
fn killed_mapper_gives_eio_and_force_unmap_cleans_up() {
    let Some(fx) = Fixture::new() else { return };
    let img = fx.image("umap-kill", 16 * MIB);
    let m = fx.map(&img);
    let token = fx.token_of(&m);
    let pid = m.pid.unwrap();
    direct_write(&m.device, 0, &pattern(41, 65536)).unwrap();
    // Another process keeps the device open, as a user would.
    let mut holder = Command::new("sh")
        .arg("-c")
        .arg(format!("exec 3<>{}; exec sleep 60", m.device.display()))
        .spawn()
        .unwrap();
    let n = loopdev::parse_device(&m.device).unwrap();
    assert!(wait_until(Duration::from_secs(5), || loopdev::in_use(
        n,
        &[pid]
    )
    .is_some()));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    assert!(wait_until(Duration::from_secs(5), || !proc_alive(pid)));
    let dev = m.device.clone();
    let ((w, r), took) = bounded(Duration::from_secs(15), move || {
        let f = open_direct(&dev, true).unwrap();
        let mut a = Aligned::from(&pattern(42, 4096));
        (
            f.write_all_at(a.as_ref(), 0),
            f.read_exact_at(a.as_mut(), 0),
        )
    })
    .expect("I/O on a killed mapper's device hung");
    assert_eq!(w.unwrap_err().raw_os_error(), Some(libc::EIO));
    assert_eq!(r.unwrap_err().raw_os_error(), Some(libc::EIO));
    assert!(took < Duration::from_secs(2), "EIO took {took:?}");
    // Listed as dead (no pid), and what is left is visible.
    let list = fx.mapper.list().unwrap();
    let dead = list.iter().find(|x| x.device == m.device).expect("listed");
    assert_eq!(dead.pid, None);
    assert_eq!(dead.image_id, img.id);
    let e = fx
        .mapper
        .entries()
        .unwrap()
        .into_iter()
        .find(|e| e.record.token == token)
        .unwrap();
    assert_eq!(
        e.state,
        EntryState::Dead {
            loop_bound: true,
            fuse_mounted: true
        }
    );
    // Its FUSE mount lazily unmounted (as the mapper's own teardown does, or an
    // operator): sysfs now names the backing file by its path inside the detached mount,
    // and the binding is still recognised, by the file's recorded identity.
    let paths = fx.paths(&token);
    let id = e
        .record
        .backing
        .expect("the record names the file's identity");
    nix::mount::umount2(&paths.mountpoint(), nix::mount::MntFlags::MNT_DETACH).unwrap();
    eprintln!("backing file now: {:?}", loopdev::backing_file(n));
    assert_ne!(
        loopdev::backing_file(n).as_deref(),
        Some(paths.fuse_file().as_path())
    );
    let e = fx
        .mapper
        .entries()
        .unwrap()
        .into_iter()
        .find(|e| e.record.token == token)
        .unwrap();
    assert_eq!(
        e.state,
        EntryState::Dead {
            loop_bound: true,
            fuse_mounted: false
        }
    );
    // Not without force while someone holds the device; with force, yes.
    assert!(matches!(
        fx.mapper.unmap(dead, false),
        Err(DriverError::InUse { .. })
    ));
    fx.mapper.unmap(dead, true).unwrap();
    assert!(!paths.record().exists());
    assert!(!is_mounted(&paths.mountpoint()));
    let _ = holder.kill();
    let _ = holder.wait();
    assert!(loopdev::wait_detached(n, &id, Duration::from_secs(10)));
    assert!(fx.mapper.list().unwrap().is_empty());
    // Fence the dead client so its watch goes and the image can be removed.
    fx.blocklist(&m.client_addr.unwrap());
}

#[test]
fn mapping_outlives_the_process_that_mapped_it() {
    let Some(fx) = Fixture::new() else { return };
    let img = fx.image("umap-surv", 16 * MIB);
    // Another process maps (through the same library code) and exits.
    let out = Command::new("timeout")
        .arg("60")
        .arg(env!("CARGO_BIN_EXE_rbd-map-probe"))
        .args(["map", "userspace", "--pool", POOL, "--image", &img.name])
        .args(["--image-id", &img.id, "--io-timeout", "3", "--conf"])
        .arg(&fx.conf)
        .arg("--run-dir")
        .arg(fx.run.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "probe: {} {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mapped: Mapping = serde_json::from_value(v["result"].clone()).unwrap();
    let pid = mapped.pid.unwrap();
    assert!(proc_alive(pid), "the mapper died with its parent");
    // This process sees it, and it works.
    let list = fx.mapper.list().unwrap();
    assert_eq!(list, vec![mapped.clone()]);
    direct_write(&mapped.device, 0, &pattern(51, 65536)).unwrap();
    assert_eq!(
        direct_read(&mapped.device, 0, 65536).unwrap(),
        pattern(51, 65536)
    );
    let token = fx.token_of(&mapped);
    fx.mapper.unmap(&mapped, false).unwrap();
    fx.assert_gone(&mapped, &token);
}

#[test]
fn resizing_the_image_grows_the_device() {
    let Some(fx) = Fixture::new() else { return };
    let img = fx.image("umap-grow", 16 * MIB);
    let m = fx.map(&img);
    let n = loopdev::parse_device(&m.device).unwrap();
    let size = || -> u64 {
        std::fs::read_to_string(format!("/sys/block/loop{n}/size"))
            .unwrap()
            .trim()
            .parse::<u64>()
            .unwrap()
            * 512
    };
    assert_eq!(size(), 16 * MIB);
    fx.open(&img).resize(40 * MIB, Shrink::Forbid).unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || size() == 40 * MIB),
        "device size {} after the resize",
        size()
    );
    direct_write(&m.device, 39 * MIB, &pattern(61, 65536)).unwrap();
    assert_eq!(
        direct_read(&m.device, 39 * MIB, 65536).unwrap(),
        pattern(61, 65536)
    );
    fx.mapper.unmap(&m, false).unwrap();
}

#[test]
fn a_wrong_image_id_fails_and_leaves_nothing() {
    let Some(fx) = Fixture::new() else { return };
    let img = fx.image("umap-bad", 16 * MIB);
    let mut req = fx.req(&img);
    req.image_id = "deadbeef0001".into();
    let e = fx.mapper.map(&req).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, DriverError::Map { .. }), "{e:?}");
    assert!(msg.contains("deadbeef0001"), "{msg}");
    // Nothing left: no record, mount, loop or file of ours.
    let dir = record::dir(fx.run.path());
    let left: Vec<_> = std::fs::read_dir(&dir)
        .map(|rd| rd.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "left in {}: {left:?}", dir.display());
    assert!(
        !loopdev::list()
            .unwrap()
            .iter()
            .any(|l| l.backing_file.starts_with(&dir))
    );
    assert!(fx.mapper.list().unwrap().is_empty());
    // A bad id is refused before anything runs.
    req.image_id = "../x".into();
    assert!(matches!(
        fx.mapper.map(&req),
        Err(DriverError::InvalidInput { .. })
    ));
}

#[test]
fn exclusive_map_holds_the_lock_and_releases_it_on_unmap() {
    let Some(fx) = Fixture::new() else { return };
    let img = fx.image("umap-excl", 16 * MIB);
    let mut req = fx.req(&img);
    req.exclusive = true;
    let m = fx.mapper.map(&req).unwrap();
    let image = fx.open(&img);
    let owners = image.lock_get_owners().unwrap();
    let addr = m.client_addr.unwrap();
    assert!(
        owners
            .addrs()
            .unwrap()
            .iter()
            .any(|a| a.same_instance(&addr)),
        "{owners:?} vs {addr}"
    );
    direct_write(&m.device, 0, &pattern(71, 4096)).unwrap();
    fx.mapper.unmap(&m, false).unwrap();
    let owners = image.lock_get_owners().unwrap();
    assert!(owners.owners.is_empty(), "{owners:?}");
}

#[test]
fn unmapping_an_unknown_mapping_is_an_error() {
    let Some(fx) = Fixture::new() else { return };
    let m = Mapping {
        backend: Backend::Userspace,
        pool: POOL.into(),
        namespace: String::new(),
        image: "nope".into(),
        image_id: "0123456789ab".into(),
        snap: None,
        device: "/dev/loop250".into(),
        client_addr: None,
        read_only: false,
        pid: None,
    };
    let e = fx.mapper.unmap(&m, true).unwrap_err();
    assert!(e.to_string().contains("0123456789ab"), "{e}");
    fx.mapper.check_available().unwrap();
}

#[test]
fn a_run_dir_behind_a_symlink_works() {
    let Some(fx) = Fixture::new() else { return };
    let img = fx.image("umap-link", 16 * MIB);
    let link = fx.run.path().with_extension("link");
    std::os::unix::fs::symlink(fx.run.path(), &link).unwrap();
    struct Unlink(PathBuf);
    impl Drop for Unlink {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
    let _u = Unlink(link.clone());
    let mapper = UserspaceMapper::new(&MapperConfig {
        run_dir: link,
        umap_bin: Some(PathBuf::from(env!("CARGO_BIN_EXE_rbd-umap"))),
        ..MapperConfig::default()
    });
    let m = mapper.map(&fx.req(&img)).unwrap();
    assert_eq!(mapper.list().unwrap(), vec![m.clone()]);
    direct_write(&m.device, 0, &pattern(81, 4096)).unwrap();
    mapper.unmap(&m, false).unwrap();
    assert!(mapper.list().unwrap().is_empty());
    assert!(mapper.entries().unwrap().is_empty());
}

#[test]
fn sigterm_right_after_the_map_still_unmaps_cleanly() {
    let Some(fx) = Fixture::new() else { return };
    let img = fx.image("umap-term", 16 * MIB);
    for _ in 0..3 {
        let m = fx.map(&img);
        let token = fx.token_of(&m);
        let pid = m.pid.unwrap();
        // At once: the mapper may still be finishing its post-readiness tuning.
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        assert!(wait_until(Duration::from_secs(20), || !proc_alive(pid)));
        let report: record::ExitReport =
            serde_json::from_slice(&std::fs::read(fx.paths(&token).exit()).unwrap()).unwrap();
        assert_eq!(report.code, exit::OK, "{report:?}");
        assert_eq!(report.reason, "unmap");
        fx.assert_gone(&m, &token);
        assert!(watchers(&fx.conf, &img.name).is_empty());
        let _ = std::fs::remove_file(fx.paths(&token).exit());
        let _ = std::fs::remove_file(fx.paths(&token).log());
    }
}

/// Discards and zero-outs through the loop device reach the FUSE file as hole punches;
/// a punched range must read back as zeros even when it is not aligned to librbd's
/// discard granularity (64 KiB), and the bytes around it must stay.
#[test]
fn unaligned_discard_and_zeroout_read_back_as_zeros() {
    let Some(fx) = Fixture::new() else { return };
    let img = fx.image("umap-zero", 16 * MIB);
    let m = fx.map(&img);
    let data = pattern(7, 4 * MIB as usize);
    direct_write(&m.device, 0, &data).unwrap();
    let dev = m.device.to_str().unwrap().to_owned();
    // 8 KiB at 4 KiB (inside one 64 KiB granule) and 68 KiB at 1 MiB + 12 KiB.
    let ranges = [(4096u64, 8192u64), (MIB + 12 * 1024, 68 * 1024)];
    run(
        "blkdiscard",
        &[
            "-o",
            &ranges[0].0.to_string(),
            "-l",
            &ranges[0].1.to_string(),
            &dev,
        ],
    );
    run(
        "blkdiscard",
        &[
            "-z",
            "-o",
            &ranges[1].0.to_string(),
            "-l",
            &ranges[1].1.to_string(),
            &dev,
        ],
    );
    let mut expect = data.clone();
    for (off, len) in ranges {
        expect[off as usize..(off + len) as usize].fill(0);
    }
    // Through the device...
    let got = direct_read(&m.device, 0, expect.len()).unwrap();
    assert!(
        got == expect,
        "the device does not read back zeros for the punched ranges"
    );
    // ...and in the image itself.
    let image = fx.open(&img);
    let mut got = vec![0u8; expect.len()];
    image.read_exact_at(0, &mut got).unwrap();
    assert!(got == expect, "the image keeps data in a discarded range");
    drop(image);
    fx.mapper.unmap(&m, false).unwrap();
}

/// Binds placeholder loop devices (on `backing`, autoclear: they go when dropped) to
/// every free loop device numbered below `want`, so that the next map gets
/// `/dev/loop<want>`. `None` when `want` itself was taken meanwhile.
fn hold_loops_below(want: u32, backing: &Path) -> Option<Vec<loopdev::LoopDevice>> {
    let opts = loopdev::AttachOptions {
        read_only: true,
        direct_io: false,
        require_direct_io: false,
        autoclear: true,
        block_size: 0,
    };
    let mut held = Vec::new();
    for _ in 0..64 {
        let d = loopdev::LoopDevice::attach(backing, &opts).unwrap();
        match d.number().cmp(&want) {
            std::cmp::Ordering::Less => held.push(d),
            // The lowest free device is the one we want: give it back for the map.
            std::cmp::Ordering::Equal => {
                d.detach().unwrap();
                return Some(held);
            }
            std::cmp::Ordering::Greater => return None,
        }
    }
    None
}

/// A mapper killed with SIGKILL leaves its record and its dead FUSE mount; once nobody
/// holds its loop device, the device is freed and a new mapping (here: the same image
/// mapped again, as a reattach after the crash would) may get the same number. The dead
/// record must then never claim that device: `list` shows the device once, for the live
/// mapping, and unmapping the dead mapping cleans up only what the dead mapper left.
#[test]
fn a_dead_mappers_record_never_claims_its_reused_loop_device() {
    let Some(fx) = Fixture::new() else { return };
    let img = fx.image("umap-reuse", 16 * MIB);
    let filler = fx.run.path().join("filler.img");
    File::create(&filler).unwrap().set_len(MIB).unwrap();
    let entry_of = |pid: u32| {
        fx.mapper
            .entries()
            .unwrap()
            .into_iter()
            .find(|e| e.record.pid == pid)
    };
    let mut attempts = 0;
    let (dead, live) = loop {
        attempts += 1;
        let m1 = fx.map(&img);
        let pid1 = m1.pid.unwrap();
        let bind1 = entry_of(pid1)
            .unwrap()
            .record
            .backing
            .expect("the record names its loop binding");
        direct_write(&m1.device, 0, &pattern(61, 65536)).unwrap();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid1 as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        assert!(wait_until(Duration::from_secs(5), || !proc_alive(pid1)));
        // Its watch would linger until the OSD times it out.
        fx.blocklist(&m1.client_addr.unwrap());
        // Nobody holds the device: autoclear frees it.
        let n = loopdev::parse_device(&m1.device).unwrap();
        assert!(loopdev::wait_detached(n, &bind1, Duration::from_secs(10)));
        let held = hold_loops_below(n, &filler);
        let m2 = fx.map(&img);
        drop(held);
        if m2.device == m1.device {
            break (m1, m2);
        }
        // Another process took the device meanwhile: clean up and try again.
        fx.mapper.unmap(&m2, false).unwrap();
        let leftover = Mapping {
            pid: None,
            device: PathBuf::new(),
            ..m1.clone()
        };
        fx.mapper.unmap(&leftover, true).unwrap();
        assert!(attempts < 5, "could not get {} reused", m1.device.display());
    };
    let pid1 = dead.pid.unwrap();
    let pid2 = live.pid.unwrap();
    let dead_entry = entry_of(pid1).unwrap();
    assert_eq!(
        dead_entry.state,
        EntryState::Dead {
            loop_bound: false,
            fuse_mounted: true
        }
    );
    assert!(!dead_entry.owns_device());
    assert_eq!(entry_of(pid2).unwrap().state, EntryState::Running);

    // The device is listed once: for the live mapping. The dead one is still listed (its
    // client may need fencing, its FUSE mount cleaning), without a device.
    let list = fx.mapper.list().unwrap();
    let on_device: Vec<&Mapping> = list.iter().filter(|m| m.device == live.device).collect();
    assert_eq!(on_device, vec![&live], "{list:#?}");
    let listed_dead = list
        .iter()
        .find(|m| m.pid.is_none() && m.client_addr == dead.client_addr)
        .expect("the dead mapping is listed")
        .clone();
    assert_eq!(listed_dead.device, PathBuf::new());
    assert_eq!(listed_dead.image_id, img.id);
    // So is it by image id (what the volume layer looks for).
    let by_id = mapper::find_by_image_id(&fx.cfg(), POOL, "", &img.id).unwrap();
    assert_eq!(
        by_id.iter().filter(|m| m.device == live.device).count(),
        1,
        "{by_id:#?}"
    );

    // Unmapping the dead mapping, as listed now, cleans up its leftovers only.
    fx.mapper.unmap(&listed_dead, true).unwrap();
    let dead_paths = fx.paths(&dead_entry.record.token);
    assert!(!dead_paths.record().exists());
    assert!(!is_mounted(&dead_paths.mountpoint()));
    // As listed before the device was reused (device set, no pid): no dead record is
    // left, so it is refused, and the live mapping is untouched either way.
    let stale = Mapping {
        pid: None,
        ..dead.clone()
    };
    assert!(matches!(
        fx.mapper.unmap(&stale, true),
        Err(DriverError::Map { .. })
    ));
    assert!(proc_alive(pid2), "the live mapper was killed");
    let n = loopdev::parse_device(&live.device).unwrap();
    let live_entry = entry_of(pid2).unwrap();
    assert_eq!(
        loopdev::backing_file(n),
        Some(live_entry.record.fuse_file.clone())
    );
    direct_write(&live.device, MIB, &pattern(62, 65536)).unwrap();
    assert_eq!(
        direct_read(&live.device, 0, 65536).unwrap(),
        pattern(61, 65536)
    );
    assert_eq!(fx.mapper.list().unwrap(), vec![live.clone()]);
    fx.mapper.unmap(&live, false).unwrap();
    fx.assert_gone(&live, &live_entry.record.token);
}

/// Cleans up after a test that maps from its own cluster: kills its mappers (by their
/// own pids), detaches the loop devices on its files, unmounts its FUSE mounts.
struct OwnRunDir {
    run: tempfile::TempDir,
    mapper: UserspaceMapper,
}

impl Drop for OwnRunDir {
    fn drop(&mut self) {
        for e in self.mapper.entries().unwrap_or_default() {
            if proc_alive(e.record.pid) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(e.record.pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
                wait_until(Duration::from_secs(5), || !proc_alive(e.record.pid));
            }
        }
        let dir = record::dir(self.run.path());
        if let Ok(loops) = loopdev::list() {
            for l in loops.iter().filter(|l| l.backing_file.starts_with(&dir)) {
                let _ = loopdev::detach(l.number);
            }
        }
        if let Ok(mi) = std::fs::read_to_string("/proc/self/mountinfo") {
            for l in mi.lines() {
                if let Some(mp) = l.split(' ').nth(4)
                    && Path::new(mp).starts_with(self.run.path())
                {
                    let _ = nix::mount::umount2(mp, nix::mount::MntFlags::MNT_DETACH);
                }
            }
        }
    }
}

/// When the cluster stops answering (here: the only OSD of a cluster of the test's own
/// is stopped), every I/O fails with EIO at its deadline, and once nothing has reached
/// the cluster for longer than `give_up_after_secs` the mapper fails all I/O, tears the
/// mapping down and exits with its own status, saying why. The I/O runs on a thread
/// with a hard limit, so the test cannot hang.
#[test]
fn an_unreachable_cluster_makes_the_mapper_give_up_and_exit() {
    // Gated like every Ceph test; the cluster used is a private one, so stopping its OSD
    // disturbs no other test.
    let Some(_shared) = testkit::ceph_conf() else {
        return;
    };
    if !testkit::require_root() {
        return;
    }
    const GIVE_UP: u32 = 10;
    let cluster = testkit::cluster::PrivateCluster::start();
    let conf = cluster.conf().to_path_buf();
    let rados = Rados::connect(
        &ConnectOptions::new()
            .conf_file(&conf)
            .timeouts(Timeouts::uniform(Duration::from_secs(20))),
    )
    .expect("connect to the private cluster");
    let io = rados.ioctx(POOL).unwrap();
    let name = testkit::unique("umap-gone");
    rbd_core::rbd::create(&io, &name, 16 * MIB, &ImageOptions::new()).unwrap();
    let id = rbd_core::rbd::image_id_by_name(&io, &name).unwrap();
    let run = tempfile::Builder::new()
        .prefix("umap-g")
        .tempdir_in("/run")
        .unwrap();
    let mapper = UserspaceMapper::new(&MapperConfig {
        run_dir: run.path().to_path_buf(),
        umap_bin: Some(PathBuf::from(env!("CARGO_BIN_EXE_rbd-umap"))),
        ..MapperConfig::default()
    })
    .with_check_interval(Duration::from_millis(500));
    let own = OwnRunDir {
        run,
        mapper: mapper.clone(),
    };
    let m = mapper
        .map(&MapRequest {
            pool: POOL.into(),
            namespace: String::new(),
            image: name.clone(),
            image_id: id,
            snap: None,
            read_only: false,
            exclusive: false,
            auth: CephAuth {
                conf: conf.clone(),
                id: "admin".into(),
                keyring: None,
            },
            options: MapOptions {
                io_timeout_secs: Some(IO_TIMEOUT),
                give_up_after_secs: Some(GIVE_UP),
                ..MapOptions::default()
            },
        })
        .unwrap();
    let pid = m.pid.unwrap();
    let n = loopdev::parse_device(&m.device).unwrap();
    let bind = loopdev::binding_id(n).expect("bound");
    let token = mapper
        .entries()
        .unwrap()
        .into_iter()
        .find(|e| e.record.pid == pid)
        .unwrap()
        .record
        .token;
    let paths = Paths::new(own.run.path(), &token);
    direct_write(&m.device, 0, &pattern(71, 1 << 20)).unwrap();
    assert_eq!(direct_read(&m.device, 0, 4096).unwrap(), pattern(71, 4096));

    cluster.stop("osd.0");
    let stopped = Instant::now();
    // Keep writing, with the device open, until the mapper is gone.
    let dev = m.device.clone();
    let limit = Duration::from_secs(u64::from(GIVE_UP) + 45);
    let (writes, _) = testkit::cmd::bounded(limit, move || {
        let f = open_direct(&dev, true).unwrap();
        let a = Aligned::from(&pattern(72, 4096));
        let mut out = Vec::new();
        while proc_alive(pid) && stopped.elapsed() < Duration::from_secs(40) {
            let t = Instant::now();
            let r = f.write_all_at(a.as_ref(), 8192);
            out.push((t.elapsed(), r.map_err(|e| e.raw_os_error())));
            std::thread::sleep(Duration::from_millis(200));
        }
        out
    })
    .expect("I/O on a mapping of an unreachable cluster hung");
    let gone_after = stopped.elapsed();
    eprintln!(
        "mapper gone {gone_after:?} after the OSD stopped; {} writes, each failed in {:?}",
        writes.len(),
        writes.iter().map(|w| w.0).collect::<Vec<_>>()
    );
    assert!(
        !proc_alive(pid),
        "the mapper still runs after {gone_after:?}"
    );
    assert!(!writes.is_empty());
    for (took, r) in &writes {
        assert_eq!(*r, Err(Some(libc::EIO)), "{writes:?}");
        assert!(
            *took < Duration::from_secs(u64::from(IO_TIMEOUT) + 3),
            "an I/O took {took:?}: {writes:?}"
        );
    }
    assert!(
        gone_after >= Duration::from_secs(u64::from(GIVE_UP))
            && gone_after < Duration::from_secs(u64::from(GIVE_UP) + 25),
        "the mapper exited {gone_after:?} after the OSD stopped"
    );
    // It exited cleanly, with its own status, saying why.
    let report: record::ExitReport =
        serde_json::from_slice(&std::fs::read(paths.exit()).unwrap()).unwrap();
    assert_eq!(report.code, exit::UNREACHABLE, "{report:?}");
    assert!(report.reason.contains("unreachable"), "{report:?}");
    let log = std::fs::read_to_string(paths.log()).unwrap();
    assert!(log.contains("stopping: unreachable"), "{log}");
    assert!(!paths.record().exists());
    assert!(!is_mounted(&paths.mountpoint()));
    assert!(loopdev::wait_detached(n, &bind, Duration::from_secs(10)));
    assert!(mapper.list().unwrap().is_empty());
    drop(own);
    drop(io);
    drop(rados);
    drop(cluster);
}

/// `mapper::select`, as the Driver and `rbdctl map` call it. This host (like the CI host)
/// has neither the rbd nor the nbd kernel module, so automatic selection must fall through
/// krbd and nbd to the userspace mapper, and a request for krbd or nbd by name must fail
/// with `BackendUnavailable` saying which module is missing. (The guest tests,
/// `krbd_guest.rs` and `nbd_guest.rs`, check that `auto` picks krbd, then nbd, where the
/// kernel has them.)
#[test]
fn automatic_selection_picks_userspace_without_rbd_and_nbd_modules() {
    let Some(fx) = Fixture::new() else { return };
    let cfg = fx.cfg();
    let rbd_bus = Path::new("/sys/bus/rbd");
    let nbd_mod = Path::new("/sys/module/nbd");
    assert!(
        !rbd_bus.exists() && !nbd_mod.exists() && !Path::new("/dev/nbd0").exists(),
        "this test expects a host kernel without the rbd and nbd modules (the CI host); \
         found {} or {}: the guest tests cover selection where they exist",
        rbd_bus.display(),
        nbd_mod.display()
    );

    // Asking for a backend by name: it must be available, and the error says why not.
    match mapper::select(Some(Backend::Krbd), &cfg) {
        Err(DriverError::BackendUnavailable { backend, reason }) => {
            assert_eq!(backend, Backend::Krbd);
            assert!(
                reason.contains("/sys/bus/rbd") && reason.contains("rbd kernel module"),
                "{reason}"
            );
        }
        Err(e) => panic!("krbd: expected BackendUnavailable, got {e:?}"),
        Ok(m) => panic!("krbd selected on a host without it: {:?}", m.backend()),
    }
    match mapper::select(Some(Backend::Nbd), &cfg) {
        Err(e @ DriverError::BackendUnavailable { .. }) => {
            let msg = e.to_string();
            assert!(
                msg.contains("the nbd mapper is not available")
                    && msg.contains("nbd kernel module is not loaded"),
                "{msg}"
            );
        }
        Err(e) => panic!("nbd: expected BackendUnavailable, got {e:?}"),
        Ok(m) => panic!("nbd selected on a host without it: {:?}", m.backend()),
    }

    // Automatic: userspace, and it really maps (by image id) and unmaps.
    let auto = mapper::select(None, &cfg).expect("automatic selection");
    assert_eq!(auto.backend(), Backend::Userspace);
    let named = mapper::select(Some(Backend::Userspace), &cfg).unwrap();
    assert_eq!(named.backend(), Backend::Userspace);
    let img = fx.image("umap-auto", 16 * MIB);
    let m = auto.map(&fx.req(&img)).unwrap();
    assert_eq!(m.backend, Backend::Userspace);
    assert_eq!(m.image_id, img.id);
    assert_eq!(
        mapper::find_by_image_id(&cfg, POOL, "", &img.id).unwrap(),
        vec![m.clone()],
        "list_all over every available backend finds the mapping by image id"
    );
    direct_write(&m.device, 0, &pattern(91, 4096)).unwrap();
    let token = fx.token_of(&m);
    auto.unmap(&m, false).unwrap();
    fx.assert_gone(&m, &token);

    // Nothing usable: the error names every backend's reason.
    let none = MapperConfig {
        umap_bin: Some(fx.run.path().join("no-such-rbd-umap")),
        ..cfg
    };
    match mapper::select(None, &none) {
        Err(DriverError::BackendUnavailable { reason, .. }) => {
            assert!(
                reason.starts_with("no mapper backend is usable"),
                "{reason}"
            );
            for want in ["krbd", "nbd", "userspace", "no-such-rbd-umap"] {
                assert!(reason.contains(want), "{want:?} missing from {reason}");
            }
        }
        Err(e) => panic!("expected BackendUnavailable, got {e:?}"),
        Ok(m) => panic!("selected {:?} without a mapper binary", m.backend()),
    }
}

/// A forced unmap that races the mapper's own teardown (a fenced mapper exits by itself
/// while reconcile cleans its device) finds no record of that mapper any more: nothing of
/// the mapping is left (the record goes last), so the forced unmap succeeds. A plain
/// unmap still says the mapping is not there, and a mapping whose mapper still runs is
/// never matched by a wrong image id.
#[test]
fn a_forced_unmap_of_a_mapping_its_mapper_already_tore_down_succeeds() {
    let Some(fx) = Fixture::new() else { return };
    let img = fx.image("umap-gone", 16 * MIB);
    let m = fx.map(&img);
    let pid = m.pid.unwrap();
    // The mapper goes on its own (as a fenced mapper does), leaving nothing behind.
    fx.mapper.unmap(&m, false).unwrap();
    assert!(!proc_alive(pid));
    assert!(fx.mapper.list().unwrap().is_empty());

    assert!(matches!(
        fx.mapper.unmap(&m, false),
        Err(DriverError::Map { .. })
    ));
    fx.mapper.unmap(&m, true).unwrap();

    // A live mapper is never taken for gone: a wrong image id is still refused.
    let live = fx.map(&img);
    let wrong = Mapping {
        image_id: "0000wrongid".into(),
        ..live.clone()
    };
    assert!(matches!(
        fx.mapper.unmap(&wrong, true),
        Err(DriverError::Map { .. })
    ));
    assert!(proc_alive(live.pid.unwrap()));
    fx.mapper.unmap(&live, false).unwrap();
}
