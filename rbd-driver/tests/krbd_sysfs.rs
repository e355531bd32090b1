//! The krbd mapper's public path against the real dev cluster and a fake sysfs: the key
//! is really read from the cluster's keyring, the monitor list really comes from its
//! conf, and neither a failed sysfs write nor any other error shows the key.

use std::fs;
use std::path::Path;

use rbd_driver::DriverError;
use rbd_driver::mapper::{
    CephAuth, MapOptions, MapRequest, Mapper, MapperConfig, krbd::KrbdMapper,
};

/// The admin key from a keyring file (for the assertions only).
fn admin_key(keyring: &Path) -> String {
    let text = fs::read_to_string(keyring).unwrap();
    let mut in_admin = false;
    for line in text.lines() {
        let l = line.trim();
        if l.starts_with('[') {
            in_admin = l == "[client.admin]";
        } else if in_admin
            && let Some((k, v)) = l.split_once('=')
            && k.trim() == "key"
        {
            return v.trim().to_owned();
        }
    }
    panic!("no client.admin key in {}", keyring.display());
}

fn conf_value(conf: &Path, key: &str) -> String {
    fs::read_to_string(conf)
        .unwrap()
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once('=')?;
            (k.trim() == key).then(|| v.trim().to_owned())
        })
        .unwrap_or_else(|| panic!("no {key} in {}", conf.display()))
}

fn fake_sysfs(root: &Path, add_is_dir: bool) {
    let bus = root.join("bus/rbd");
    fs::create_dir_all(bus.join("devices")).unwrap();
    fs::write(bus.join("remove_single_major"), "").unwrap();
    if add_is_dir {
        fs::create_dir_all(bus.join("add_single_major")).unwrap();
    } else {
        fs::write(bus.join("add_single_major"), "").unwrap();
    }
}

fn request(conf: &Path, keyring: Option<&Path>) -> MapRequest {
    MapRequest {
        pool: "rbd".into(),
        namespace: String::new(),
        image: "not-mapped-for-real".into(),
        image_id: "abcdef012345".into(),
        snap: None,
        read_only: false,
        exclusive: false,
        auth: CephAuth {
            conf: conf.to_path_buf(),
            id: "admin".into(),
            keyring: keyring.map(Path::to_path_buf),
        },
        options: MapOptions::default(),
    }
}

fn assert_no_key(e: &DriverError, key: &str) {
    let mut all = format!("{e} | {e:?}");
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        all.push_str(&format!(" | {s}"));
        src = s.source();
    }
    assert!(!all.contains(key), "the key leaked: {all}");
    assert!(!all.contains(&key[..16]), "part of the key leaked: {all}");
}

#[test]
fn failed_sysfs_write_never_shows_the_key() {
    let Some(conf) = testkit::ceph_conf() else {
        return;
    };
    let keyring = std::path::PathBuf::from(conf_value(&conf, "keyring"));
    let key = admin_key(&keyring);
    let tmp = tempfile::tempdir().unwrap();
    let sys = tmp.path().join("sys");
    fake_sysfs(&sys, true);
    let cfg = MapperConfig {
        sysfs: sys,
        run_dir: tmp.path().join("run"),
        ..MapperConfig::default()
    };
    let m = KrbdMapper::new(&cfg);
    m.check_available().unwrap();
    // Key found through the conf's keyring option, and through an explicit keyring.
    for kr in [None, Some(keyring.as_path())] {
        let e = m.map(&request(&conf, kr)).unwrap_err();
        assert_no_key(&e, &key);
        let s = e.to_string();
        assert!(s.contains("secret=<redacted>"), "{s}");
        assert!(s.contains("add_single_major"), "{s}");
    }
}

#[test]
fn writes_conf_monitors_and_keyring_key() {
    let Some(conf) = testkit::ceph_conf() else {
        return;
    };
    let keyring = std::path::PathBuf::from(conf_value(&conf, "keyring"));
    let key = admin_key(&keyring);
    let tmp = tempfile::tempdir().unwrap();
    let sys = tmp.path().join("sys");
    fake_sysfs(&sys, false);
    let cfg = MapperConfig {
        sysfs: sys.clone(),
        run_dir: tmp.path().join("run"),
        ..MapperConfig::default()
    };
    // mon host = [v2:IP:P,v1:IP:P+1] in the dev cluster's conf.
    let mon_host = conf_value(&conf, "mon host");
    let v: rbd_core::AddrVec = mon_host.parse().unwrap();
    let v1 =
        v.0.iter()
            .find(|a| a.kind == Some(rbd_core::AddrType::V1))
            .unwrap();
    let v2 =
        v.0.iter()
            .find(|a| a.kind == Some(rbd_core::AddrType::V2))
            .unwrap();

    let m = KrbdMapper::new(&cfg);
    let e = m.map(&request(&conf, None)).unwrap_err();
    assert_no_key(&e, &key);
    let line = fs::read_to_string(sys.join("bus/rbd/add_single_major")).unwrap();
    assert_eq!(
        line,
        format!(
            "{}:{} name=admin,noshare,mount_timeout=30,secret={key} rbd not-mapped-for-real -",
            v1.ip, v1.port
        )
    );

    let mut req = request(&conf, Some(&keyring));
    req.options.ms_mode = Some("secure".into());
    req.exclusive = true;
    let _ = m.map(&req).unwrap_err();
    let line = fs::read_to_string(sys.join("bus/rbd/add_single_major")).unwrap();
    assert!(
        line.starts_with(&format!("{}:{} name=admin,", v2.ip, v2.port)),
        "{line}"
    );
    assert!(line.contains(",ms_mode=secure,"), "{line}");
}

#[test]
fn bad_credentials_fail_before_the_kernel_is_asked() {
    let Some(conf) = testkit::ceph_conf() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let sys = tmp.path().join("sys");
    fake_sysfs(&sys, false);
    let cfg = MapperConfig {
        sysfs: sys.clone(),
        run_dir: tmp.path().join("run"),
        ..MapperConfig::default()
    };
    let bad = tmp.path().join("bad.keyring");
    fs::write(
        &bad,
        "[client.admin]\n\tkey = AQBAAAAAAAAAABAAAAAAAAAAAAAAAAAAAAAAAA==\n",
    )
    .unwrap();
    let e = KrbdMapper::new(&cfg)
        .map(&request(&conf, Some(&bad)))
        .unwrap_err();
    assert!(
        matches!(e, DriverError::Ceph { .. }),
        "expected a connect error, got {e:?}"
    );
    assert_no_key(&e, "AQBAAAAAAAAAABAAAAAAAAAAAAAAAAAAAAAAAA==");
    assert_eq!(
        fs::read_to_string(sys.join("bus/rbd/add_single_major")).unwrap(),
        "",
        "nothing was written to the kernel"
    );
}
