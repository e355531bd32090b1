//! The nbd backend with a fake `rbd-nbd` (a shell script) and a fake sysfs.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use super::*;
use crate::mapper::{CephAuth, MapOptions};

/// Pids that cannot exist (above the kernel's PID_MAX_LIMIT of 2^22).
const NO_PID_A: u32 = 4_999_001;
const NO_PID_B: u32 = 4_999_002;

struct Fake {
    _tmp: tempfile::TempDir,
    bin: PathBuf,
    sys: PathBuf,
    run: PathBuf,
}

impl Fake {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let bindir = tmp.path().join("bin");
        fs::create_dir_all(&bindir).unwrap();
        let bin = bindir.join("rbd-nbd");
        fs::write(
            &bin,
            r#"#!/bin/sh
printf '%s\n' "$*" >> "$0.args"
case "$1" in
  list-mapped) cat "$0.list" 2>/dev/null || echo '[]' ;;
  map) echo "rbd-nbd: failed to open image: (2) No such file or directory" >&2; exit 2 ;;
  unmap) exit 0 ;;
  *) exit 9 ;;
esac
"#,
        )
        .unwrap();
        fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).unwrap();
        // The `rbd` next to it fails, so watchers are unknown.
        let rbd = bindir.join("rbd");
        fs::write(&rbd, "#!/bin/sh\necho 'rbd: not here' >&2\nexit 1\n").unwrap();
        fs::set_permissions(&rbd, fs::Permissions::from_mode(0o755)).unwrap();
        let sys = tmp.path().join("sys");
        fs::create_dir_all(sys.join("module/nbd")).unwrap();
        let run = tmp.path().join("run");
        Fake {
            _tmp: tmp,
            bin,
            sys,
            run,
        }
    }

    fn mapper(&self) -> NbdMapper {
        NbdMapper::new(&MapperConfig {
            run_dir: self.run.clone(),
            rbd_nbd_bin: self.bin.clone(),
            sysfs: self.sys.clone(),
            umap_bin: None,
        })
    }

    fn set_list(&self, json: &str) {
        fs::write(self.bin.with_extension("list"), json).unwrap();
    }

    fn args(&self) -> String {
        fs::read_to_string(self.bin.with_extension("args")).unwrap_or_default()
    }

    fn record(&self, device: &str, pid: u32, image_id: &str) -> Record {
        let r = Record {
            device: device.into(),
            pid,
            pool: "rbd".into(),
            namespace: String::new(),
            image: "vol1".into(),
            image_id: image_id.into(),
            snap: None,
            read_only: false,
            exclusive: false,
            asok: None,
            client_addr: Some("127.0.0.1:0/4242".parse().unwrap()),
        };
        fs::create_dir_all(self.run.join("nbd")).unwrap();
        record::write(&self.run.join("nbd"), &r).unwrap();
        r
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
        exclusive: true,
        auth: CephAuth {
            conf: "/etc/ceph/ceph.conf".into(),
            id: "client.admin".into(),
            keyring: Some("/etc/ceph/ceph.client.admin.keyring".into()),
        },
        options: MapOptions {
            io_timeout_secs: Some(45),
            ..MapOptions::default()
        },
    }
}

#[test]
fn availability() {
    let f = Fake::new();
    f.mapper().check_available().unwrap();

    let mut cfg = f.mapper().cfg.clone();
    cfg.rbd_nbd_bin = "/nonexistent/rbd-nbd".into();
    let e = NbdMapper::new(&cfg).check_available().unwrap_err();
    assert!(e.to_string().contains("not installed"), "{e}");

    let mut cfg = f.mapper().cfg.clone();
    cfg.sysfs = f.run.join("empty-sys");
    if !Path::new("/dev/nbd0").exists() {
        let e = NbdMapper::new(&cfg).check_available().unwrap_err();
        assert!(e.to_string().contains("modprobe nbd"), "{e}");
        // Without the driver there is nothing to list (and rbd-nbd is not even run).
        assert!(NbdMapper::new(&cfg).list().unwrap().is_empty());
        assert!(!f.args().contains("list-mapped"));
    }
}

#[test]
fn list_joins_records_on_device_and_pid() {
    let f = Fake::new();
    f.set_list(&format!(
        r#"[{{"id":"{NO_PID_A}","pool":"rbd","namespace":"","image":"vol1","snap":"-","device":"/dev/nbd0"}},
            {{"id":"{NO_PID_B}","pool":"rbd","namespace":"","image":"vol1","snap":"-","device":"/dev/nbd1"}},
            {{"id":"{NO_PID_B}","pool":"rbd","namespace":"ns","image":"db","snap":"s1","device":"/dev/nbd2"}}]"#
    ));
    f.record("/dev/nbd0", NO_PID_A, "10a2b3c4d5e6");
    // A stale record: same device, but written for a process that is gone.
    f.record("/dev/nbd1", 12345, "0ldid");
    let mut list = f.mapper().list().unwrap();
    list.sort_by(|a, b| a.device.cmp(&b.device));
    assert_eq!(list.len(), 3);

    assert_eq!(list[0].image_id, "10a2b3c4d5e6");
    assert_eq!(list[0].pid, Some(NO_PID_A));
    assert_eq!(list[0].backend, Backend::Nbd);
    assert_eq!(list[0].client_addr.unwrap().nonce, 4242);
    assert!(list[0].is_image("rbd", "", "10a2b3c4d5e6"));

    assert_eq!(
        list[1].image_id, "",
        "a stale record must not label a new mapping"
    );
    assert_eq!(list[1].client_addr, None);

    assert_eq!(list[2].spec(), "rbd/ns/db@s1");
    assert!(list[2].read_only);
    assert_eq!(list[2].image_id, "");
    assert!(f.args().contains("list-mapped --format json"));
}

#[test]
fn bad_list_output_is_a_command_error() {
    let f = Fake::new();
    f.set_list("id pool image device\n1 rbd x /dev/nbd0\n");
    let e = f.mapper().list().unwrap_err();
    assert!(
        matches!(e, DriverError::Command { .. }),
        "unexpected error {e:?}"
    );
}

#[test]
fn map_failure_reports_stderr_and_args_carry_no_secret() {
    let f = Fake::new();
    let e = f.mapper().map(&request()).unwrap_err();
    let DriverError::Command {
        command, stderr, ..
    } = &e
    else {
        panic!("unexpected {e:?}")
    };
    assert!(stderr.contains("failed to open image"), "{stderr}");
    assert!(command.contains("map --id admin -c /etc/ceph/ceph.conf --keyring /etc/ceph/ceph.client.admin.keyring --admin-socket "), "{command}");
    assert!(
        command.ends_with(" --exclusive --io-timeout 45 rbd/vol1"),
        "{command}"
    );
    assert!(
        !command.contains("secret") && !command.contains("--key "),
        "{command}"
    );
    // Nothing left behind (but the lock file).
    let left: Vec<_> = fs::read_dir(f.run.join("nbd"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .filter(|n| n != "map.lock")
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn read_only_snapshot_args() {
    let f = Fake::new();
    let mut r = request();
    r.snap = Some("s1".into());
    r.namespace = "ns".into();
    r.exclusive = false;
    r.options.io_timeout_secs = None;
    let _ = f.mapper().map(&r);
    let args = f.args();
    let map_line = args.lines().find(|l| l.starts_with("map ")).unwrap();
    assert!(
        map_line.ends_with("--read-only rbd/ns/vol1@s1"),
        "{map_line}"
    );
}

#[test]
fn unmap_checks_process_and_image_id() {
    let f = Fake::new();
    f.set_list(&format!(
        r#"[{{"id":"{NO_PID_A}","pool":"rbd","namespace":"","image":"vol1","snap":"-","device":"/dev/nbd0"}}]"#
    ));
    f.record("/dev/nbd0", NO_PID_A, "10a2b3c4d5e6");
    let m = f.mapper();
    let mapping = m.list().unwrap().pop().unwrap();

    let mut other_pid = mapping.clone();
    other_pid.pid = Some(NO_PID_B);
    let e = m.unmap(&other_pid, true).unwrap_err();
    assert!(e.to_string().contains("refusing"), "{e}");

    let mut other_id = mapping.clone();
    other_id.image_id = "ffff".into();
    let e = m.unmap(&other_id, true).unwrap_err();
    assert!(e.to_string().contains("refusing"), "{e}");
    assert!(!f.args().contains("unmap"), "nothing was unmapped");

    // The real one: unmapped, the (non-existent) process counts as exited, record gone.
    m.unmap(&mapping, false).unwrap();
    assert!(f.args().contains("unmap /dev/nbd0"));
    assert!(record::read_all(&f.run.join("nbd")).is_empty());

    // Not listed any more: nothing to do.
    f.set_list("[]");
    m.unmap(&mapping, false).unwrap();

    let mut bad = mapping.clone();
    bad.device = "/dev/rbd0".into();
    assert!(m.unmap(&bad, false).is_err());
}

#[test]
fn admin_socket_args() {
    let v = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(
        admin_socket_arg(&v(&[
            "rbd-nbd",
            "map",
            "--admin-socket",
            "/run/x.asok",
            "rbd/a"
        ])),
        Some(PathBuf::from("/run/x.asok"))
    );
    assert_eq!(
        admin_socket_arg(&v(&["rbd-nbd", "--admin_socket=/run/y.asok"])),
        Some(PathBuf::from("/run/y.asok"))
    );
    assert_eq!(admin_socket_arg(&v(&["rbd-nbd", "map", "rbd/a"])), None);
    assert_eq!(admin_socket_arg(&v(&["rbd-nbd", "--admin-socket"])), None);
}

#[test]
fn validation_and_devices() {
    let bad: Vec<Change> = vec![
        Box::new(|r| r.pool = "a/b".into()),
        Box::new(|r| r.image = "x@y".into()),
        Box::new(|r| r.namespace = "n s".into()),
        Box::new(|r| r.snap = Some(String::new())),
        Box::new(|r| r.image_id = String::new()),
        Box::new(|r| r.auth.id = "--key=x".into()),
    ];
    for (i, change) in bad.iter().enumerate() {
        let mut r = request();
        change(&mut r);
        assert!(validate(&r).is_err(), "case {i} accepted: {r:?}");
    }
    validate(&request()).unwrap();
    assert_eq!(nbd_index(Path::new("/dev/nbd3")), Some(3));
    assert_eq!(nbd_index(Path::new("/dev/rbd3")), None);
    assert_eq!(nbd_index(Path::new("/tmp/nbd3")), None);
}

#[test]
fn process_liveness() {
    assert!(alive(std::process::id()));
    assert!(!alive(NO_PID_A));
    assert!(wait_exit(NO_PID_A, Duration::from_millis(10)));
}
