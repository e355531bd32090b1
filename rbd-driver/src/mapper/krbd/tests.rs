//! The krbd backend against a fake sysfs tree in a temp dir.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::auth::{ClusterAccess, Secret};
use super::*;
use crate::mapper::{CephAuth, MapOptions};

const KEY: &str = "AQDoZ2ZoAAAAABAAdGhpcy1pcy1ub3QtYS1yZWFsLWtleQ==";

struct Fake {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    run: PathBuf,
}

impl Fake {
    /// An rbd bus with the control files and no devices.
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("sys");
        let run = tmp.path().join("run");
        fs::create_dir_all(root.join("bus/rbd/devices")).unwrap();
        for f in ["add_single_major", "remove_single_major", "add", "remove"] {
            fs::write(root.join("bus/rbd").join(f), "").unwrap();
        }
        Fake {
            _tmp: tmp,
            root,
            run,
        }
    }

    fn mapper(&self) -> KrbdMapper {
        let cfg = MapperConfig {
            sysfs: self.root.clone(),
            run_dir: self.run.clone(),
            ..MapperConfig::default()
        };
        let mut m = KrbdMapper::new(&cfg).with_dev_dir(self.root.join("dev"));
        m.remove_wait = Duration::from_secs(5);
        m
    }

    fn add_device(&self, id: u32, attrs: &[(&str, &str)], ro: bool) {
        let dir = self.root.join(format!("bus/rbd/devices/{id}"));
        fs::create_dir_all(&dir).unwrap();
        for (k, v) in attrs {
            fs::write(dir.join(k), format!("{v}\n")).unwrap();
        }
        let block = self.root.join(format!("block/rbd{id}"));
        fs::create_dir_all(&block).unwrap();
        fs::write(block.join("ro"), if ro { "1\n" } else { "0\n" }).unwrap();
        fs::write(block.join("dev"), format!("251:{}\n", id * 16)).unwrap();
    }

    fn control(&self, name: &str) -> String {
        fs::read_to_string(self.root.join("bus/rbd").join(name)).unwrap()
    }
}

/// A change that makes a request invalid.
type Change = Box<dyn Fn(&mut MapRequest)>;

fn request() -> MapRequest {
    MapRequest {
        pool: "rbd".into(),
        namespace: String::new(),
        image: "vol1".into(),
        image_id: "10a2b3c4d5e6".into(),
        snap: None,
        read_only: false,
        exclusive: false,
        auth: CephAuth {
            conf: "/etc/ceph/ceph.conf".into(),
            id: "admin".into(),
            keyring: None,
        },
        options: MapOptions::default(),
    }
}

fn access(mon_host: &str) -> ClusterAccess {
    ClusterAccess {
        id: "admin".into(),
        mon_host: mon_host.into(),
        secret: Secret::new(KEY).unwrap(),
    }
}

#[test]
fn lists_devices_from_sysfs() {
    let f = Fake::new();
    f.add_device(
        0,
        &[
            ("pool", "rbd"),
            ("pool_ns", ""),
            ("name", "vol1"),
            ("image_id", "10a2b3c4d5e6"),
            ("current_snap", "-"),
            ("client_addr", "127.0.0.1:0/3942412392"),
            ("client_id", "client4170"),
        ],
        false,
    );
    f.add_device(
        3,
        &[
            ("pool", "data"),
            ("pool_ns", "tenant-a"),
            ("name", "db"),
            ("image_id", "5f1e2d3c"),
            ("current_snap", "daily"),
            ("client_addr", "10.1.2.3:0/77"),
        ],
        true,
    );
    // An old kernel: no pool_ns, no client_addr; read-only by the block flag.
    f.add_device(
        12,
        &[
            ("pool", "rbd"),
            ("name", "old"),
            ("image_id", "abc"),
            ("current_snap", "-"),
        ],
        true,
    );
    // Not a device.
    fs::create_dir_all(f.root.join("bus/rbd/devices/junk")).unwrap();

    let mut list = f.mapper().list().unwrap();
    list.sort_by(|a, b| a.device.cmp(&b.device));
    assert_eq!(list.len(), 3, "{list:#?}");
    let dev = |n: &str| list.iter().find(|m| m.device.ends_with(n)).unwrap();

    let a = dev("rbd0");
    assert_eq!(a.backend, Backend::Krbd);
    assert_eq!(a.device, f.root.join("dev/rbd0"));
    assert_eq!(a.spec(), "rbd/vol1");
    assert_eq!(a.image_id, "10a2b3c4d5e6");
    assert_eq!(a.snap, None);
    assert!(!a.read_only);
    assert_eq!(
        a.client_addr.unwrap().to_legacy_string(),
        "127.0.0.1:0/3942412392"
    );
    assert_eq!(a.pid, None);
    assert!(a.is_image("rbd", "", "10a2b3c4d5e6"));

    let b = dev("rbd3");
    assert_eq!(b.spec(), "data/tenant-a/db@daily");
    assert_eq!(b.namespace, "tenant-a");
    assert_eq!(b.snap.as_deref(), Some("daily"));
    assert!(b.read_only);
    assert_eq!(b.client_addr.unwrap().nonce, 77);

    let c = dev("rbd12");
    assert_eq!(c.namespace, "");
    assert_eq!(c.client_addr, None);
    assert!(c.read_only);
}

#[test]
fn list_without_bus_is_empty() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = MapperConfig {
        sysfs: tmp.path().to_path_buf(),
        ..MapperConfig::default()
    };
    assert!(KrbdMapper::new(&cfg).list().unwrap().is_empty());
}

#[test]
fn availability() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = MapperConfig {
        sysfs: tmp.path().to_path_buf(),
        ..MapperConfig::default()
    };
    let e = KrbdMapper::new(&cfg).check_available().unwrap_err();
    assert!(e.to_string().contains("modprobe rbd"), "{e}");

    fs::create_dir_all(tmp.path().join("bus/rbd")).unwrap();
    let e = KrbdMapper::new(&cfg).check_available().unwrap_err();
    assert!(e.to_string().contains("add_single_major"), "{e}");

    fs::write(tmp.path().join("bus/rbd/add"), "").unwrap();
    fs::write(tmp.path().join("bus/rbd/remove"), "").unwrap();
    KrbdMapper::new(&cfg).check_available().unwrap();

    let f = Fake::new();
    f.mapper().check_available().unwrap();
}

#[test]
fn writes_the_kernel_line_and_never_leaks_the_key() {
    let f = Fake::new();
    let mut req = request();
    req.exclusive = true;
    req.namespace = "ns1".into();
    req.options.queue_depth = Some(64);
    req.options.io_timeout_secs = Some(20);
    req.options.lock_on_read = true;
    // The fake kernel accepts the write but makes no device.
    let err = f
        .mapper()
        .map_with(&req, &access("[v2:127.0.0.1:28600,v1:127.0.0.1:28601]"))
        .unwrap_err();
    let line = f.control("add_single_major");
    assert_eq!(
        line,
        format!(
            "127.0.0.1:28601 name=admin,noshare,exclusive,lock_on_read,queue_depth=64,\
             osd_request_timeout=20,mount_timeout=30,lock_timeout=30,_pool_ns=ns1,secret={KEY} rbd vol1 -"
        )
    );
    assert_eq!(f.control("add"), "", "add_single_major is preferred");
    let msg = format!("{err} {err:?}");
    assert!(!msg.contains(KEY), "{msg}");
    assert!(msg.contains("no new device"), "{msg}");
    assert!(msg.contains("secret=<redacted>"), "{msg}");
}

#[test]
fn msgr2_snapshot_read_only_line() {
    let f = Fake::new();
    let mut req = request();
    req.snap = Some("s1".into());
    req.options.noshare = false;
    req.options.ms_mode = Some("crc".into());
    let m = f.mapper().with_mount_timeout(7);
    let _ = m.map_with(
        &req,
        &access("[v2:10.0.0.1:3300,v1:10.0.0.1:6789] [v2:10.0.0.2:3300,v1:10.0.0.2:6789]"),
    );
    assert_eq!(
        f.control("add_single_major"),
        format!(
            "10.0.0.1:3300,10.0.0.2:3300 name=admin,mount_timeout=7,ro,ms_mode=crc,\
             secret={KEY} rbd vol1 s1"
        )
    );
}

#[test]
fn failed_sysfs_write_does_not_leak_the_key() {
    let f = Fake::new();
    // A directory cannot be opened for writing: the write fails with EISDIR.
    let add = f.root.join("bus/rbd/add_single_major");
    fs::remove_file(&add).unwrap();
    fs::create_dir(&add).unwrap();
    let err = f
        .mapper()
        .map_with(&request(), &access("127.0.0.1:6789"))
        .unwrap_err();
    let shown = err.to_string();
    let debug = format!("{err:?}");
    for s in [&shown, &debug] {
        assert!(!s.contains(KEY), "key leaked: {s}");
        assert!(!s.contains(&KEY[..12]), "key prefix leaked: {s}");
    }
    assert!(shown.contains("secret=<redacted>"), "{shown}");
    assert!(shown.contains("add_single_major"), "{shown}");
    assert!(shown.contains("name=admin"), "{shown}");
}

/// A fake kernel thread: when `file` gets written, runs `act` and returns what was written.
fn fake_kernel(
    root: &Path,
    file: &'static str,
    act: impl FnOnce(&Path) + Send + 'static,
) -> std::thread::JoinHandle<String> {
    let root = root.to_path_buf();
    std::thread::spawn(move || {
        let path = root.join("bus/rbd").join(file);
        for _ in 0..2500 {
            let s = fs::read_to_string(&path).unwrap_or_default();
            if !s.is_empty() {
                act(&root);
                return s;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        String::new()
    })
}

#[test]
fn adopts_the_new_device_of_the_requested_image_id() {
    let f = Fake::new();
    let attrs = [
        ("pool", "rbd"),
        ("name", "vol1"),
        ("image_id", "10a2b3c4d5e6"),
        ("current_snap", "-"),
        ("client_addr", "127.0.0.1:0/99"),
    ];
    // Device 0 existed before (another image); device 1 is new and ours.
    f.add_device(
        0,
        &[("pool", "rbd"), ("name", "x"), ("image_id", "aa")],
        false,
    );
    f.add_device(1, &attrs, false);
    fs::create_dir_all(f.root.join("dev")).unwrap();
    let m = f.mapper();
    let mapping = m.adopt_new_device(&request(), &[0], "shown").unwrap();
    assert_eq!(mapping.device, f.root.join("dev/rbd1"));
    assert_eq!(mapping.image_id, "10a2b3c4d5e6");
    assert_eq!(mapping.client_addr.unwrap().nonce, 99);
    // The node was made from /sys/block/rbd1/dev (251:16).
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let md = fs::metadata(f.root.join("dev/rbd1")).unwrap();
    assert!(md.file_type().is_block_device());
    assert_eq!(md.rdev(), nix::sys::stat::makedev(251, 16));
    // A second call finds the node in place.
    m.adopt_new_device(&request(), &[0], "shown").unwrap();

    // Nothing new: an error that names what was written (redacted by the caller).
    let e = m.adopt_new_device(&request(), &[0, 1], "LINE").unwrap_err();
    assert!(e.to_string().contains("no new device") && e.to_string().contains("LINE"));
}

#[test]
fn removes_a_new_device_of_another_image_id() {
    let f = Fake::new();
    // The name now points at another image (removed and recreated under the same name).
    f.add_device(
        4,
        &[
            ("pool", "rbd"),
            ("name", "vol1"),
            ("image_id", "99newid99"),
            ("current_snap", "-"),
        ],
        false,
    );
    let kernel = fake_kernel(&f.root, "remove_single_major", |root| {
        fs::remove_dir_all(root.join("bus/rbd/devices/4")).unwrap();
    });
    let e = f
        .mapper()
        .adopt_new_device(&request(), &[], "shown")
        .unwrap_err();
    assert_eq!(kernel.join().unwrap(), "4 force");
    let s = e.to_string();
    assert!(s.contains("99newid99") && s.contains("10a2b3c4d5e6"), "{s}");
    assert!(s.contains("removed again"), "{s}");
}

#[test]
fn unmap_checks_identity_and_writes_force() {
    let f = Fake::new();
    f.add_device(
        2,
        &[
            ("pool", "rbd"),
            ("name", "vol1"),
            ("image_id", "10a2b3c4d5e6"),
            ("current_snap", "-"),
        ],
        false,
    );
    let m = f.mapper();
    let mut mapping = m.list().unwrap().pop().unwrap();

    // Another image id on the same device: refused, nothing written.
    let mut wrong = mapping.clone();
    wrong.image_id = "ffffffff".into();
    let e = m.unmap(&wrong, true).unwrap_err();
    assert!(e.to_string().contains("refusing"), "{e}");
    assert_eq!(f.control("remove_single_major"), "");

    // A fake kernel removes the device when asked.
    let kernel = fake_kernel(&f.root, "remove_single_major", |root| {
        fs::remove_dir_all(root.join("bus/rbd/devices/2")).unwrap();
    });
    m.unmap(&mapping, true).unwrap();
    assert_eq!(kernel.join().unwrap(), "2 force");

    // Gone already: fine.
    m.unmap(&mapping, false).unwrap();
    mapping.device = PathBuf::from("/dev/sda");
    assert!(m.unmap(&mapping, false).is_err());
}

#[test]
fn validation() {
    let bad: Vec<Change> = vec![
        Box::new(|r| r.pool = "my pool".into()),
        Box::new(|r| r.image = "a b".into()),
        Box::new(|r| r.image = String::new()),
        Box::new(|r| r.namespace = "ns,secret=x".into()),
        Box::new(|r| r.snap = Some("-".into())),
        Box::new(|r| r.snap = Some("s 1".into())),
        Box::new(|r| r.image_id = String::new()),
        Box::new(|r| r.image_id = "../x".into()),
        Box::new(|r| r.options.ms_mode = Some("fast".into())),
    ];
    for (i, change) in bad.iter().enumerate() {
        let mut r = request();
        change(&mut r);
        assert!(validate(&r).is_err(), "case {i} accepted: {r:?}");
    }
    validate(&request()).unwrap();
}

#[test]
fn device_ids() {
    assert_eq!(device_id(Path::new("/dev/rbd0")), Some(0));
    assert_eq!(device_id(Path::new("/dev/rbd17")), Some(17));
    assert_eq!(device_id(Path::new("/dev/nbd0")), None);
    assert_eq!(device_id(Path::new("/dev/rbd0p1")), None);
}
