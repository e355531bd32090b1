//! Object I/O, stat, truncate, xattrs and listing against the real dev cluster, checked
//! with Ceph's own `rados` CLI.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use rbd_core::{CreateMode, ErrorKind, IoCtx};

/// Removes the named objects when dropped, even if an assertion failed.
struct Cleanup<'a> {
    io: &'a IoCtx,
    oids: Vec<String>,
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        for o in &self.oids {
            let _ = self.io.remove_object(o);
        }
    }
}

#[test]
fn write_read_stat_truncate_remove() {
    let Some((rados, conf)) = common::connect() else {
        return;
    };
    let io = rados.ioctx(common::POOL).unwrap();
    let oid = testkit::unique("obj-io");
    let _g = Cleanup {
        io: &io,
        oids: vec![oid.clone()],
    };

    let before = SystemTime::now() - Duration::from_secs(2);
    io.write_full(&oid, b"hello").unwrap();
    io.append(&oid, b", world").unwrap();
    io.write(&oid, b"J", 7).unwrap();
    assert_eq!(io.read(&oid, 0, 100).unwrap(), b"hello, Jorld");
    assert_eq!(io.read(&oid, 7, 3).unwrap(), b"Jor");
    assert!(
        io.read(&oid, 100, 10).unwrap().is_empty(),
        "read past the end"
    );
    let mut buf = [0u8; 4];
    assert_eq!(io.read_into(&oid, 2, &mut buf).unwrap(), 4);
    assert_eq!(&buf, b"llo,");

    let st = io.stat(&oid).unwrap();
    assert_eq!(st.size, 12);
    assert!(st.mtime >= before && st.mtime <= SystemTime::now() + Duration::from_secs(2));

    // Ceph's own view: `rados stat` prints "rbd/<oid> mtime ..., size 12".
    let out = common::cli(&conf, "rados", &["-p", common::POOL, "stat", &oid]);
    assert!(out.trim_end().ends_with("size 12"), "{out}");
    let got = common::cli(
        &conf,
        "rados",
        &["-p", common::POOL, "get", &oid, "/dev/stdout"],
    );
    assert_eq!(got, "hello, Jorld");

    io.truncate(&oid, 5).unwrap();
    assert_eq!(io.read_full(&oid).unwrap(), b"hello");
    io.truncate(&oid, 8).unwrap();
    assert_eq!(io.read_full(&oid).unwrap(), b"hello\0\0\0");

    // Larger than one read_full chunk (4 MiB): chunked reads must reassemble it.
    let big: Vec<u8> = (0..(5 << 20) + 123).map(|i: u32| (i % 251) as u8).collect();
    io.write_full(&oid, &big).unwrap();
    assert_eq!(io.stat(&oid).unwrap().size, big.len() as u64);
    assert!(io.read_full(&oid).unwrap() == big, "5 MiB roundtrip");

    io.remove_object(&oid).unwrap();
    assert_eq!(io.stat(&oid).unwrap_err().kind(), ErrorKind::NotFound);
    let e = io.read(&oid, 0, 1).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
    assert!(e.to_string().contains(&oid), "{e}");
    assert_eq!(
        io.remove_object(&oid).unwrap_err().kind(),
        ErrorKind::NotFound
    );
    let (ok, _, _) = common::cli_status(&conf, "rados", &["-p", common::POOL, "stat", &oid]);
    assert!(!ok, "rados stat still finds the removed object");
}

#[test]
fn create_exclusive_and_idempotent() {
    let Some((rados, conf)) = common::connect() else {
        return;
    };
    let io = rados.ioctx(common::POOL).unwrap();
    let oid = testkit::unique("obj-create");
    let _g = Cleanup {
        io: &io,
        oids: vec![oid.clone()],
    };
    io.create_object(&oid, CreateMode::Exclusive).unwrap();
    assert_eq!(io.stat(&oid).unwrap().size, 0);
    let out = common::cli(&conf, "rados", &["-p", common::POOL, "stat", &oid]);
    assert!(out.trim_end().ends_with("size 0"), "{out}");

    let e = io.create_object(&oid, CreateMode::Exclusive).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Exists, "{e}");
    io.write_full(&oid, b"data").unwrap();
    io.create_object(&oid, CreateMode::Idempotent).unwrap();
    assert_eq!(
        io.read_full(&oid).unwrap(),
        b"data",
        "idempotent create keeps data"
    );
}

#[test]
fn xattrs() {
    let Some((rados, conf)) = common::connect() else {
        return;
    };
    let io = rados.ioctx(common::POOL).unwrap();
    let oid = testkit::unique("obj-xattr");
    let _g = Cleanup {
        io: &io,
        oids: vec![oid.clone()],
    };
    io.write_full(&oid, b"x").unwrap();
    io.set_xattr(&oid, "user.a", b"alpha").unwrap();
    let big = vec![b'z'; 3000]; // larger than the first getxattr buffer
    io.set_xattr(&oid, "user.big", &big).unwrap();
    io.set_xattr(&oid, "user.empty", b"").unwrap();

    assert_eq!(io.get_xattr(&oid, "user.a").unwrap(), b"alpha");
    assert_eq!(io.get_xattr(&oid, "user.big").unwrap(), big);
    assert!(io.get_xattr(&oid, "user.empty").unwrap().is_empty());
    let all = io.xattrs(&oid).unwrap();
    let expected: BTreeMap<String, Vec<u8>> = [
        ("user.a".to_string(), b"alpha".to_vec()),
        ("user.big".to_string(), big.clone()),
        ("user.empty".to_string(), vec![]),
    ]
    .into_iter()
    .collect();
    assert_eq!(all, expected);

    let cli = common::cli(
        &conf,
        "rados",
        &["-p", common::POOL, "getxattr", &oid, "user.a"],
    );
    assert_eq!(cli.trim_end(), "alpha");
    let names = common::cli(&conf, "rados", &["-p", common::POOL, "listxattr", &oid]);
    let mut names: Vec<&str> = names.lines().collect();
    names.sort();
    assert_eq!(names, ["user.a", "user.big", "user.empty"]);

    io.rm_xattr(&oid, "user.a").unwrap();
    let e = io.get_xattr(&oid, "user.a").unwrap_err();
    assert_eq!(e.errno(), Some(libc::ENODATA), "{e}");
    assert!(!io.xattrs(&oid).unwrap().contains_key("user.a"));
    let names = common::cli(&conf, "rados", &["-p", common::POOL, "listxattr", &oid]);
    assert!(!names.lines().any(|l| l == "user.a"), "{names}");

    let missing = testkit::unique("obj-missing");
    assert_eq!(io.xattrs(&missing).unwrap_err().kind(), ErrorKind::NotFound);
}

#[test]
fn listing_in_a_namespace_and_across_namespaces() {
    let Some((rados, conf)) = common::connect() else {
        return;
    };
    let ns = testkit::unique("ns");
    let io = rados
        .ioctx(common::POOL)
        .unwrap()
        .with_namespace(&ns)
        .unwrap();
    let names: Vec<String> = (0..5).map(|i| format!("{ns}-obj-{i}")).collect();
    let _g = Cleanup {
        io: &io,
        oids: names.clone(),
    };
    for n in &names {
        io.write_full(n, n.as_bytes()).unwrap();
    }
    let mut listed = io.list_objects().unwrap();
    listed.sort();
    assert_eq!(listed, names);

    let cli = common::cli_json(&conf, "rados", &["-p", common::POOL, "-N", &ns, "ls"]);
    let mut cli_names: Vec<String> = cli
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["name"].as_str().unwrap().to_string())
        .collect();
    cli_names.sort();
    assert_eq!(cli_names, names);

    // The default namespace does not see them; the all-namespaces listing does, with ns.
    let default = rados.ioctx(common::POOL).unwrap();
    let in_default = default.list_objects().unwrap();
    assert!(
        !names.iter().any(|n| in_default.contains(n)),
        "namespaced objects leaked into the default namespace"
    );
    assert_eq!(
        default.stat(&names[0]).unwrap_err().kind(),
        ErrorKind::NotFound
    );
    let all = default.list_objects_all_namespaces().unwrap();
    let mut ours: Vec<String> = all
        .iter()
        .filter(|o| o.namespace == ns)
        .map(|o| o.name.clone())
        .collect();
    ours.sort();
    assert_eq!(ours, names);
    assert!(io.namespace() == ns && default.namespace().is_empty());
}

#[test]
fn invalid_input_is_rejected_before_the_cluster() {
    let Some((rados, _conf)) = common::connect() else {
        return;
    };
    let io = rados.ioctx(common::POOL).unwrap();
    for e in [
        io.write_full("", b"x").unwrap_err(),
        io.write_full("a\0b", b"x").unwrap_err(),
        io.stat("").unwrap_err(),
        io.set_xattr("ok", "bad\0name", b"").unwrap_err(),
    ] {
        assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
        assert!(e.errno().is_none(), "nothing was sent: {e}");
    }
    assert_eq!(io.stat("ok").unwrap_err().kind(), ErrorKind::NotFound);
}

#[test]
fn set_namespace_switches_an_ioctx_back_and_forth() {
    let Some((rados, conf)) = common::connect() else {
        return;
    };
    let ns = testkit::unique("ns-set");
    let oid = testkit::unique("ns-set-obj");
    let mut io = rados.ioctx(common::POOL).unwrap();
    io.set_namespace(&ns).unwrap();
    assert_eq!(io.namespace(), ns);
    io.write_full(&oid, b"namespaced").unwrap();
    let cli = common::cli(&conf, "rados", &["-p", common::POOL, "-N", &ns, "ls"]);
    assert!(cli.lines().any(|l| l == oid), "{cli}");
    // Back in the default namespace the object is not there; errors name the namespace
    // only when there is one.
    io.set_namespace("").unwrap();
    let e = io.stat(&oid).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
    assert!(!e.to_string().contains("namespace"), "{e}");
    io.set_namespace(&ns).unwrap();
    assert_eq!(io.read_full(&oid).unwrap(), b"namespaced");
    let e = io.stat("missing-in-ns").unwrap_err();
    assert!(e.to_string().contains(&format!("namespace {ns}")), "{e}");
    io.remove_object(&oid).unwrap();
    assert!(io.set_namespace("bad\0ns").is_err());
    assert_eq!(io.namespace(), ns, "a refused namespace changes nothing");
}
