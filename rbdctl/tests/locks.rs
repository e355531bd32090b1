//! `rbdctl lock ls` / `lock break` against locks taken by Ceph's own CLI: advisory locks
//! from `rbd lock add`, and the exclusive lock a running `rbd bench` holds.

mod common;

use std::time::Duration;

use common::Cleanup;
use serde_json::Value;

/// `(id, locker, address)` of each holder, sorted, from either tool's JSON.
fn holders(v: &Value) -> Vec<(String, String, String)> {
    let mut out: Vec<_> = v
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {v}"))
        .iter()
        .map(|l| {
            (
                l["id"].as_str().unwrap().to_owned(),
                l["locker"].as_str().unwrap().to_owned(),
                l["address"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    out.sort();
    out
}

fn blocklist(e: &common::Env) -> String {
    e.tool("ceph", &["osd", "blocklist", "ls"]).stdout()
}

#[test]
fn advisory_lock_from_rbd_lock_add_listed_and_broken_exactly() {
    let Some(e) = common::env() else { return };
    let c = Cleanup::new(&e);
    let img = c.image("lock");
    e.rbd(&[
        "create",
        "--size",
        "4M",
        "--image-feature",
        "layering",
        &img,
    ]);
    assert_eq!(e.rbdctl(&["lock", "ls", &img]).ok().stdout(), "no locks\n");

    e.rbd(&["lock", "add", &img, "mycookie"]);
    let theirs = e.rbd_json(&["lock", "ls", &img]);
    let ours = e
        .rbdctl(&["lock", "ls", &img, "--format", "json"])
        .ok()
        .json();
    assert_eq!(
        holders(&ours),
        holders(&theirs),
        "ours {ours} theirs {theirs}"
    );
    assert_eq!(ours[0]["type"], "exclusive");
    assert_eq!(ours[0]["exclusive_lock_owner"], false);
    let (id, locker, addr) = holders(&theirs).remove(0);
    assert_eq!(id, "mycookie");
    let table = e.rbdctl(&["lock", "ls", &img]).ok().stdout();
    assert!(
        table
            .lines()
            .any(|l| l.starts_with(&locker) && l.contains("mycookie") && l.contains(&addr)),
        "{table}"
    );

    // A wrong cookie or client: 3, naming the real holder; the lock stays.
    let r = e
        .rbdctl(&[
            "lock", "break", &img, "--locker", &locker, "--cookie", "other",
        ])
        .code(3);
    assert!(
        r.err.contains("mycookie") && r.err.contains(&addr),
        "{}",
        r.err
    );
    e.rbdctl(&[
        "lock", "break", &img, "--locker", "client.1", "--cookie", "mycookie",
    ])
    .code(3);
    assert_eq!(holders(&e.rbd_json(&["lock", "ls", &img])).len(), 1);
    // --cookie without --locker, or neither: usage (2).
    e.rbdctl(&["lock", "break", &img, "--cookie", "mycookie"])
        .code(2);
    e.rbdctl(&["lock", "break", &img]).code(2);

    // The exact holder: broken, and (Ceph's default) its address blocklisted.
    c.blocklisted(&addr);
    let r = e
        .rbdctl(&[
            "lock", "break", &img, "--locker", &locker, "--cookie", "mycookie", "--format", "json",
        ])
        .ok()
        .json();
    assert_eq!(r["address"], addr.as_str());
    assert_eq!(r["blocklisted"], true);
    assert!(holders(&e.rbd_json(&["lock", "ls", &img])).is_empty());
    assert!(blocklist(&e).contains(&addr), "{}", blocklist(&e));
}

#[test]
fn shared_advisory_locks() {
    let Some(e) = common::env() else { return };
    let c = Cleanup::new(&e);
    let img = c.image("lock-sh");
    e.rbd(&[
        "create",
        "--size",
        "4M",
        "--image-feature",
        "layering",
        &img,
    ]);
    e.rbd(&["lock", "add", "--shared", "grp", &img, "c1"]);
    e.rbd(&["lock", "add", "--shared", "grp", &img, "c2"]);
    let theirs = e.rbd_json(&["lock", "ls", &img]);
    let ours = e
        .rbdctl(&["lock", "ls", &img, "--format", "json"])
        .ok()
        .json();
    assert_eq!(holders(&ours), holders(&theirs));
    assert_eq!(holders(&ours).len(), 2);
    for l in ours.as_array().unwrap() {
        assert_eq!(l["type"], "shared");
        assert_eq!(l["tag"], "grp");
        c.blocklisted(l["address"].as_str().unwrap());
    }
    let (_, locker, _) = holders(&ours).remove(0);
    e.rbdctl(&["lock", "break", &img, "--locker", &locker, "--cookie", "c1"])
        .ok();
    let left = holders(&e.rbd_json(&["lock", "ls", &img]));
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].0, "c2");
}

#[test]
fn exclusive_lock_owner_of_a_running_writer() {
    let Some(e) = common::env() else { return };
    let c = Cleanup::new(&e);
    let img = c.image("lock-ex");
    e.rbd(&["create", "--size", "64M", &img]);
    // A writer that keeps the exclusive lock for as long as it runs.
    let mut writer = e.spawn_rbd(&[
        "bench",
        "--io-type",
        "write",
        "--io-size",
        "4K",
        "--io-threads",
        "1",
        "--io-total",
        "100G",
        &img,
    ]);
    let mut ours = Value::Null;
    for _ in 0..150 {
        ours = e
            .rbdctl(&["lock", "ls", &img, "--format", "json"])
            .ok()
            .json();
        if ours.as_array().is_some_and(|a| !a.is_empty()) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(writer.running(), "rbd bench exited");
    let owner = ours[0].clone();
    assert_eq!(owner["exclusive_lock_owner"], true, "{ours}");
    let addr = owner["address"].as_str().unwrap().to_owned();
    c.blocklisted(&addr);
    // The same holder rbd lists, and the same client rbd status shows watching.
    assert_eq!(holders(&ours), holders(&e.rbd_json(&["lock", "ls", &img])));
    let st = e.rbd_json(&["status", &img]);
    assert!(
        st["watchers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w["address"] == addr.as_str()),
        "{st}"
    );
    let status = e.rbdctl(&["status", &img, "--format", "json"]).ok().json();
    assert_eq!(
        status["lock_owners"][0]
            .as_str()
            .map(|s| s.ends_with(&addr)),
        Some(true)
    );

    // Someone else's address: 3. The owner's: broken, and the writer fenced.
    e.rbdctl(&["lock", "break", &img, "--owner", "127.0.0.1:0/1"])
        .code(3);
    let r = e.rbdctl(&["lock", "break", &img, "--owner", &addr]).ok();
    assert!(r.stdout().contains(&addr), "{}", r.stdout());
    assert!(blocklist(&e).contains(&addr), "{}", blocklist(&e));
    let after = e
        .rbdctl(&["lock", "ls", &img, "--format", "json"])
        .ok()
        .json();
    assert!(
        after
            .as_array()
            .unwrap()
            .iter()
            .all(|l| l["address"] != addr.as_str()),
        "{after}"
    );
    writer.stop();
}
