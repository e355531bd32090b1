//! Monitor commands and the OSD blocklist against the real dev cluster.

mod common;

use std::time::{Duration, SystemTime};

use rbd_core::{EntityAddr, Error, ErrorKind, Rados};

/// Removes a blocklist entry when dropped, even if an assertion failed.
struct Unblock<'a> {
    rados: &'a Rados,
    addr: EntityAddr,
}

impl Drop for Unblock<'_> {
    fn drop(&mut self) {
        let _ = self.rados.blocklist_rm(&self.addr);
    }
}

/// Addresses in `ceph osd blocklist ls --format json` (two concatenated arrays in
/// Pacific: exact entries, then ranges).
fn cli_blocklist(conf: &std::path::PathBuf) -> Vec<String> {
    let out = common::cli(
        conf,
        "ceph",
        &["osd", "blocklist", "ls", "--format", "json"],
    );
    serde_json::Deserializer::from_str(&out)
        .into_iter::<serde_json::Value>()
        .flat_map(|v| v.unwrap().as_array().cloned().unwrap_or_default())
        .filter_map(|e| e["addr"].as_str().map(str::to_owned))
        .collect()
}

/// A client address no real client has: a random nonce on 127.0.0.1.
fn fake_addr() -> EntityAddr {
    let u = testkit::unique("n");
    let nonce = u32::from_str_radix(&u[2..10], 16).unwrap() | 1;
    format!("127.0.0.1:0/{nonce}").parse().unwrap()
}

#[test]
fn mon_commands_and_json() {
    let Some((rados, conf)) = common::connect() else {
        return;
    };
    let reply = rados
        .mon_command(
            &serde_json::json!({"prefix": "fsid", "format": "json"}),
            &[],
        )
        .unwrap();
    let v: serde_json::Value = reply.json().unwrap();
    assert_eq!(v["fsid"].as_str().unwrap(), rados.fsid().unwrap());

    // mon_command_json adds the format and decodes into a typed value.
    #[derive(serde::Deserialize)]
    struct Fsid {
        fsid: String,
    }
    let f: Fsid = rados
        .mon_command_json(&serde_json::json!({"prefix": "fsid"}))
        .unwrap();
    assert_eq!(f.fsid, rados.fsid().unwrap());

    let pools: Vec<serde_json::Value> = rados
        .mon_command_json(&serde_json::json!({"prefix": "osd pool ls", "detail": "detail"}))
        .unwrap();
    let cli = common::cli_json(&conf, "ceph", &["osd", "pool", "ls", "detail"]);
    let names = |l: &[serde_json::Value]| {
        let mut v: Vec<String> = l
            .iter()
            .map(|p| p["pool_name"].as_str().unwrap().to_owned())
            .collect();
        v.sort();
        v
    };
    assert_eq!(names(&pools), names(cli.as_array().unwrap()));
    assert!(names(&pools).contains(&common::POOL.to_string()));
}

#[test]
fn refused_commands_carry_the_status() {
    let Some((rados, _conf)) = common::connect() else {
        return;
    };
    let pool = testkit::unique("no-such-pool");
    let e = rados
        .mon_command(
            &serde_json::json!({"prefix": "osd pool get", "pool": pool, "var": "size"}),
            &[],
        )
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    match &e {
        Error::Command {
            command, status, ..
        } => {
            assert_eq!(command, "osd pool get");
            assert!(status.contains(&pool), "{status}");
        }
        other => panic!("expected Error::Command, got {other:?}"),
    }
    assert!(e.to_string().contains(&pool), "{e}");

    let e = rados
        .mon_command(
            &serde_json::json!({"prefix": "no such command at all"}),
            &[],
        )
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");

    // Malformed input never reaches the monitors.
    let e = rados
        .mon_command(&serde_json::json!({"noprefix": 1}), &[])
        .unwrap_err();
    assert!(matches!(e, Error::InvalidInput { .. }), "{e}");
}

#[test]
fn blocklist_add_ls_rm() {
    let Some((rados, conf)) = common::connect() else {
        return;
    };
    let addr = fake_addr();
    let legacy = addr.to_legacy_string();
    let _g = Unblock {
        rados: &rados,
        addr,
    };
    let t0 = SystemTime::now();
    rados
        .blocklist_add(&addr, Some(Duration::from_secs(600)))
        .unwrap();

    let list = rados.blocklist_ls().unwrap();
    let entry = list
        .iter()
        .find(|e| e.addr.same_instance(&addr))
        .unwrap_or_else(|| panic!("{legacy} not in {list:?}"));
    let until = entry.until.expect("parsed expiry");
    let expected = t0 + Duration::from_secs(600);
    let diff = until
        .duration_since(expected)
        .unwrap_or_else(|e| e.duration());
    assert!(diff < Duration::from_secs(60), "{entry:?}");
    assert!(rados.is_blocklisted(&addr).unwrap());

    // Ceph's own CLI agrees.
    let cli = cli_blocklist(&conf);
    assert!(cli.contains(&legacy), "{cli:?}");

    // Adding again just updates the expiry; default expiry works too.
    rados.blocklist_add(&addr, None).unwrap();
    assert!(rados.is_blocklisted(&addr).unwrap());

    rados.blocklist_rm(&addr).unwrap();
    assert!(!rados.is_blocklisted(&addr).unwrap());
    let cli = cli_blocklist(&conf);
    assert!(!cli.contains(&legacy), "{cli:?}");
    // Removing an absent entry is fine.
    rados.blocklist_rm(&addr).unwrap();

    assert_eq!(
        rados
            .blocklist_add(&addr, Some(Duration::ZERO))
            .unwrap_err()
            .kind(),
        ErrorKind::InvalidInput
    );
    assert!(!rados.is_blocklisted(&addr).unwrap());
}
