//! Omap and compound operations (WriteOp/ReadOp, guards, compare-and-swap) against the
//! real dev cluster.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Barrier};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rbd_core::omap::{CmpOp, CreateMode, OmapCmpOp, ReadOp, WriteOp};
use rbd_core::{ErrorKind, IoCtx};

/// Removes the object when dropped, even if an assertion failed.
struct Cleanup<'a> {
    io: &'a IoCtx,
    oid: String,
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        let _ = self.io.remove_object(&self.oid);
    }
}

fn cli_keys(conf: &std::path::PathBuf, oid: &str) -> Vec<String> {
    common::cli(conf, "rados", &["-p", common::POOL, "listomapkeys", oid])
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn set_get_list_remove_clear() {
    let Some((rados, conf)) = common::connect() else {
        return;
    };
    let io = rados.ioctx(common::POOL).unwrap();
    let oid = testkit::unique("omap-basic");
    let _g = Cleanup {
        io: &io,
        oid: oid.clone(),
    };

    // omap_set creates the object.
    io.omap_set(&oid, &[("a", b"1".as_slice()), ("b", b"22"), ("c", b"")])
        .unwrap();
    assert_eq!(io.stat(&oid).unwrap().size, 0);
    assert_eq!(cli_keys(&conf, &oid), ["a", "b", "c"]);

    assert_eq!(io.omap_get(&oid, "b").unwrap().as_deref(), Some(&b"22"[..]));
    assert_eq!(io.omap_get(&oid, "c").unwrap().as_deref(), Some(&b""[..]));
    assert_eq!(io.omap_get(&oid, "zz").unwrap(), None);
    let some = io.omap_get_vals_by_keys(&oid, &["a", "zz", "c"]).unwrap();
    assert_eq!(
        some,
        BTreeMap::from([("a".into(), b"1".to_vec()), ("c".into(), vec![])])
    );

    let all = io.omap_get_vals(&oid, None, None, None).unwrap();
    assert_eq!(all.len(), 3);
    assert_eq!(all["b"], b"22");
    assert_eq!(io.omap_get_keys(&oid).unwrap(), ["a", "b", "c"]);

    io.omap_rm_keys(&oid, &["a", "not-there"]).unwrap();
    assert_eq!(cli_keys(&conf, &oid), ["b", "c"]);
    io.omap_clear(&oid).unwrap();
    assert!(io.omap_get_keys(&oid).unwrap().is_empty());
    assert!(cli_keys(&conf, &oid).is_empty());

    let missing = testkit::unique("omap-missing");
    assert_eq!(
        io.omap_get(&missing, "a").unwrap_err().kind(),
        ErrorKind::NotFound
    );
    assert_eq!(
        io.omap_get_keys(&missing).unwrap_err().kind(),
        ErrorKind::NotFound
    );
}

#[test]
fn paging_prefix_and_limits() {
    let Some((rados, conf)) = common::connect() else {
        return;
    };
    let io = rados.ioctx(common::POOL).unwrap();
    let oid = testkit::unique("omap-pages");
    let _g = Cleanup {
        io: &io,
        oid: oid.clone(),
    };
    // 2500 keys in two families, more than two default pages.
    let mut expected = BTreeMap::new();
    for chunk in (0..2500).collect::<Vec<u32>>().chunks(500) {
        let entries: Vec<(String, Vec<u8>)> = chunk
            .iter()
            .map(|i| {
                let fam = if i % 2 == 0 { "even" } else { "odd" };
                (format!("{fam}.{i:05}"), i.to_le_bytes().to_vec())
            })
            .collect();
        io.omap_set(&oid, &entries).unwrap();
        expected.extend(entries);
    }

    let all = io.omap_get_vals(&oid, None, None, None).unwrap();
    assert_eq!(all, expected);
    let keys = io.omap_get_keys(&oid).unwrap();
    assert_eq!(keys.len(), 2500);
    assert_eq!(keys, expected.keys().cloned().collect::<Vec<_>>());
    assert_eq!(cli_keys(&conf, &oid).len(), 2500);

    let odd = io.omap_get_vals(&oid, None, Some("odd."), None).unwrap();
    assert_eq!(odd.len(), 1250);
    assert!(odd.keys().all(|k| k.starts_with("odd.")));

    // start_after + prefix: the even keys after even.01000 (749 of them).
    let after = io
        .omap_get_vals(&oid, Some("even.01000"), Some("even."), None)
        .unwrap();
    assert_eq!(after.len(), 1250 - 501);
    assert_eq!(after.keys().next().unwrap(), "even.01002");
    let limited = io
        .omap_get_vals(&oid, Some("even.01000"), Some("even."), Some(300))
        .unwrap();
    assert_eq!(limited.len(), 300);
    assert_eq!(limited.keys().last().unwrap(), "even.01600");
    // A limit that spans two pages.
    let limited = io.omap_get_vals(&oid, None, None, Some(1234)).unwrap();
    assert_eq!(limited.len(), 1234);
    assert_eq!(
        limited.keys().collect::<Vec<_>>(),
        expected.keys().take(1234).collect::<Vec<_>>()
    );

    let page = io.omap_get_vals_page(&oid, None, None, 100).unwrap();
    assert_eq!(page.entries.len(), 100);
    assert!(page.more);
    let last = io
        .omap_get_vals_page(&oid, Some("odd.02497"), None, 100)
        .unwrap();
    assert_eq!(last.entries.keys().collect::<Vec<_>>(), ["odd.02499"]);
    assert!(!last.more);
    let kp = io.omap_get_keys_page(&oid, Some("even.00000"), 3).unwrap();
    assert_eq!(kp.keys, ["even.00002", "even.00004", "even.00006"]);
    assert!(kp.more);
}

#[test]
fn failed_guards_leave_the_object_unchanged() {
    let Some((rados, conf)) = common::connect() else {
        return;
    };
    let io = rados.ioctx(common::POOL).unwrap();
    let oid = testkit::unique("omap-guard");
    let _g = Cleanup {
        io: &io,
        oid: oid.clone(),
    };
    WriteOp::new()
        .create(CreateMode::Exclusive)
        .write_full(b"v1")
        .setxattr("user.state", b"ready")
        .omap_set(&[("owner", b"node-a")])
        .operate(&io, &oid)
        .unwrap();

    // A failing omap_cmp cancels the whole op: data, xattr and omap stay as they were.
    let e = WriteOp::new()
        .omap_cmp("owner", OmapCmpOp::Eq, b"node-b")
        .write_full(b"v2")
        .setxattr("user.state", b"taken")
        .omap_set(&[("owner", b"node-c".as_slice()), ("extra", b"x")])
        .operate(&io, &oid)
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ConditionFailed, "{e}");
    assert_eq!(e.errno(), Some(libc::ECANCELED));
    // The per-action return value names the guard that failed.
    assert_eq!(e.op(), Some("rados_write_op_omap_cmp"), "{e}");
    assert!(e.to_string().contains(&oid), "{e}");
    assert_eq!(io.read_full(&oid).unwrap(), b"v1");
    assert_eq!(io.get_xattr(&oid, "user.state").unwrap(), b"ready");
    assert_eq!(cli_keys(&conf, &oid), ["owner"]);
    assert_eq!(io.omap_get(&oid, "owner").unwrap().unwrap(), b"node-a");

    // Lt / Gt compare bytewise with the stored value on the left.
    WriteOp::new()
        .omap_cmp("owner", OmapCmpOp::Lt, b"node-b")
        .omap_cmp("owner", OmapCmpOp::Gt, b"node-")
        .omap_set(&[("lt-gt", b"ok")])
        .operate(&io, &oid)
        .unwrap();
    assert_eq!(io.omap_get(&oid, "lt-gt").unwrap().unwrap(), b"ok");

    // A failing cmpxattr also cancels.
    let e = WriteOp::new()
        .cmpxattr("user.state", CmpOp::Eq, b"nope")
        .write_full(b"v3")
        .operate(&io, &oid)
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ConditionFailed, "{e}");
    assert_eq!(io.read_full(&oid).unwrap(), b"v1");
    WriteOp::new()
        .cmpxattr("user.state", CmpOp::Ne, b"nope")
        .cmpxattr("user.state", CmpOp::Gte, b"ready")
        .write_full(b"v4")
        .operate(&io, &oid)
        .unwrap();
    assert_eq!(io.read_full(&oid).unwrap(), b"v4");

    // assert_version: the version we just wrote passes, an older one fails (ERANGE).
    let v = io.last_version();
    assert!(v > 0);
    WriteOp::new()
        .assert_version(v)
        .append(b"+")
        .operate(&io, &oid)
        .unwrap();
    let e = WriteOp::new()
        .assert_version(v)
        .append(b"!")
        .operate(&io, &oid)
        .unwrap_err();
    assert_eq!(e.errno(), Some(libc::ERANGE), "{e}");
    assert_eq!(io.read_full(&oid).unwrap(), b"v4+");

    // assert_exists on a missing object fails and does not create it.
    let missing = testkit::unique("omap-guard-missing");
    let e = WriteOp::new()
        .assert_exists()
        .omap_set(&[("k", b"v")])
        .operate(&io, &missing)
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    assert_eq!(io.stat(&missing).unwrap_err().kind(), ErrorKind::NotFound);

    // Invalid input in a builder is reported before anything is sent.
    let e = WriteOp::new()
        .omap_set(&[("bad\0key", b"v")])
        .write_full(b"zzz")
        .operate(&io, &oid)
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    assert_eq!(io.read_full(&oid).unwrap(), b"v4+");

    // remove + rmxattr + truncate + mtime through one op each.
    let past = UNIX_EPOCH + Duration::from_secs(1_600_000_000);
    WriteOp::new()
        .rmxattr("user.state")
        .truncate(1)
        .omap_rm_keys(&["lt-gt"])
        .mtime(past)
        .operate(&io, &oid)
        .unwrap();
    let st = io.stat(&oid).unwrap();
    assert_eq!((st.size, st.mtime), (1, past));
    assert!(io.xattrs(&oid).unwrap().is_empty());
    assert_eq!(io.omap_get_keys(&oid).unwrap(), ["owner"]);
    WriteOp::new().remove().operate(&io, &oid).unwrap();
    assert_eq!(io.stat(&oid).unwrap_err().kind(), ErrorKind::NotFound);
}

#[test]
fn insert_if_absent_and_compare_and_swap() {
    let Some((rados, _conf)) = common::connect() else {
        return;
    };
    let io = rados.ioctx(common::POOL).unwrap();
    let oid = testkit::unique("omap-cas");
    let _g = Cleanup {
        io: &io,
        oid: oid.clone(),
    };
    // On a missing object: creates it and inserts.
    assert!(io.omap_insert_if_absent(&oid, "vol1", b"node-a").unwrap());
    assert!(!io.omap_insert_if_absent(&oid, "vol1", b"node-b").unwrap());
    assert_eq!(io.omap_get(&oid, "vol1").unwrap().unwrap(), b"node-a");
    assert!(io.omap_insert_if_absent(&oid, "vol2", b"node-b").unwrap());
    assert_eq!(
        io.omap_insert_if_absent(&oid, "vol3", b"")
            .unwrap_err()
            .kind(),
        ErrorKind::InvalidInput
    );

    assert!(
        io.omap_compare_and_swap(&oid, "vol1", b"node-a", b"node-c")
            .unwrap()
    );
    assert!(
        !io.omap_compare_and_swap(&oid, "vol1", b"node-a", b"node-d")
            .unwrap()
    );
    assert_eq!(io.omap_get(&oid, "vol1").unwrap().unwrap(), b"node-c");
    assert_eq!(io.omap_get(&oid, "vol2").unwrap().unwrap(), b"node-b");

    let missing = testkit::unique("omap-cas-missing");
    assert_eq!(
        io.omap_compare_and_swap(&missing, "k", b"", b"v")
            .unwrap_err()
            .kind(),
        ErrorKind::NotFound
    );
    assert_eq!(io.stat(&missing).unwrap_err().kind(), ErrorKind::NotFound);
}

#[test]
fn concurrent_writers_exactly_one_wins() {
    let Some((rados, _conf)) = common::connect() else {
        return;
    };
    let io = Arc::new(rados.ioctx(common::POOL).unwrap());
    let oid = testkit::unique("omap-race");
    let _g = Cleanup {
        io: &io,
        oid: oid.clone(),
    };
    // A second, independent connection races the first.
    let (rados2, _) = common::connect().unwrap();
    let io2 = Arc::new(rados2.ioctx(common::POOL).unwrap());
    const WRITERS: usize = 4;
    let ios = [io.clone(), io2.clone(), io.clone(), io2.clone()];

    for round in 0..8 {
        let key = format!("slot{round}");
        // insert_if_absent race on a fresh key.
        let barrier = Arc::new(Barrier::new(WRITERS));
        let handles: Vec<_> = ios
            .iter()
            .enumerate()
            .map(|(i, io)| {
                let (io, barrier, oid, key) =
                    (io.clone(), barrier.clone(), oid.clone(), key.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    let won = io
                        .omap_insert_if_absent(&oid, &key, format!("w{i}").as_bytes())
                        .unwrap();
                    (i, won)
                })
            })
            .collect();
        let results: Vec<(usize, bool)> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let winners: Vec<usize> = results.iter().filter(|r| r.1).map(|r| r.0).collect();
        assert_eq!(winners.len(), 1, "round {round}: {results:?}");
        let stored = io.omap_get(&oid, &key).unwrap().unwrap();
        assert_eq!(stored, format!("w{}", winners[0]).as_bytes());

        // compare-and-swap race from the value just stored.
        let barrier = Arc::new(Barrier::new(WRITERS));
        let handles: Vec<_> = ios
            .iter()
            .enumerate()
            .map(|(i, io)| {
                let (io, barrier, oid, key, from) = (
                    io.clone(),
                    barrier.clone(),
                    oid.clone(),
                    key.clone(),
                    stored.clone(),
                );
                std::thread::spawn(move || {
                    barrier.wait();
                    let won = io
                        .omap_compare_and_swap(&oid, &key, &from, format!("cas{i}").as_bytes())
                        .unwrap();
                    (i, won)
                })
            })
            .collect();
        let results: Vec<(usize, bool)> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let winners: Vec<usize> = results.iter().filter(|r| r.1).map(|r| r.0).collect();
        assert_eq!(winners.len(), 1, "round {round}: {results:?}");
        assert_eq!(
            io.omap_get(&oid, &key).unwrap().unwrap(),
            format!("cas{}", winners[0]).as_bytes()
        );
    }
}

#[test]
fn read_op_combines_actions() {
    let Some((rados, _conf)) = common::connect() else {
        return;
    };
    let io = rados.ioctx(common::POOL).unwrap();
    let oid = testkit::unique("omap-readop");
    let _g = Cleanup {
        io: &io,
        oid: oid.clone(),
    };
    let before = SystemTime::now() - Duration::from_secs(2);
    WriteOp::new()
        .write_full(b"0123456789")
        .omap_set(&[("k1", b"v1".as_slice()), ("k2", b"v2"), ("x", b"xx")])
        .operate(&io, &oid)
        .unwrap();

    let mut op = ReadOp::new();
    op.assert_exists().omap_cmp("k1", OmapCmpOp::Eq, b"v1");
    let st = op.stat();
    let data = op.read(2, 5);
    let tail = op.read(8, 100);
    let vals = op.omap_get_vals(None, Some("k"), 10);
    let keys = op.omap_get_keys(Some("k1"), 10);
    let by_keys = op.omap_get_vals_by_keys(&["x", "nope"]);
    let mut out = op.operate(&io, &oid).unwrap();

    let s = out.stat(st);
    assert_eq!(s.size, 10);
    assert!(s.mtime >= before);
    assert_eq!(out.data(data), b"23456");
    assert_eq!(out.data(tail), b"89", "short read at the end");
    let page = out.omap_vals(vals);
    assert_eq!(page.entries.keys().collect::<Vec<_>>(), ["k1", "k2"]);
    assert!(!page.more);
    assert_eq!(out.omap_keys(keys).keys, ["k2", "x"]);
    assert_eq!(out.take_omap_vals(by_keys).entries["x"], b"xx");
    assert_eq!(out.take_data(data), b"23456");

    // A failing guard fails the whole read.
    let mut op = ReadOp::new();
    op.omap_cmp("k1", OmapCmpOp::Eq, b"other");
    let _ = op.stat();
    let e = op.operate(&io, &oid).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ConditionFailed, "{e}");
    assert_eq!(e.op(), Some("rados_read_op_omap_cmp"));

    // A stat of a missing object names the failing action.
    let mut op = ReadOp::new();
    let _ = op.stat();
    let e = op
        .operate(&io, &testkit::unique("omap-readop-missing"))
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");

    // An op that is built but never run is simply released (no leak, no crash).
    let mut op = ReadOp::new();
    let _ = op.omap_get_vals(None, None, 5);
    let _ = op.read(0, 4);
    drop(op);
}
