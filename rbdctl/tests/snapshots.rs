//! `rbdctl snap ...` against the dev cluster, cross-checked with `rbd snap ls`, `rbd info`
//! and `rbd export`.

mod common;

use common::{Cleanup, Env};
use serde_json::Value;

const MIB: usize = 1 << 20;

fn rbd_snap(e: &Env, img: &str, name: &str) -> Option<Value> {
    e.rbd_json(&["snap", "ls", img])
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .cloned()
}

#[test]
fn create_ls_rename_rm_agree_with_rbd() {
    let Some(e) = common::env() else { return };
    let c = Cleanup::new(&e);
    let img = c.image("snap");
    e.rbd(&["create", "--size", "8M", &img]);

    let r = e.rbdctl(&["snap", "create", &format!("{img}@one")]).ok();
    assert_eq!(r.stdout(), format!("created snapshot rbd/{img}@one\n"));
    assert!(r.err.is_empty(), "{}", r.err);
    let theirs = rbd_snap(&e, &img, "one").expect("rbd snap ls shows it");
    e.rbd(&["resize", "--no-progress", "--size", "16M", &img]);
    e.rbdctl(&["snap", "create", &format!("{img}@two"), "--format", "json"])
        .ok();

    // ls: ids, names, sizes, protection and timestamps as rbd reports them.
    let ours = e
        .rbdctl(&["snap", "ls", &img, "--format", "json"])
        .ok()
        .json();
    let rbd_list = e.rbd_json(&["snap", "ls", &img]);
    let ours_a = ours.as_array().unwrap();
    let theirs_a = rbd_list.as_array().unwrap();
    assert_eq!(ours_a.len(), 2);
    assert_eq!(ours_a.len(), theirs_a.len());
    for (o, t) in ours_a.iter().zip(theirs_a) {
        for f in ["id", "name", "size", "timestamp"] {
            assert_eq!(o[f], t[f], "{f}: ours {o} theirs {t}");
        }
        assert_eq!(o["protected"].to_string(), t["protected"].as_str().unwrap());
    }
    assert_eq!(ours_a[0]["id"], theirs["id"]);
    assert_eq!(ours_a[0]["size"], 8 * MIB);
    assert_eq!(ours_a[1]["size"], 16 * MIB);
    let table = e.rbdctl(&["snap", "ls", &img]).ok().stdout();
    let mut lines = table.lines();
    assert!(lines.next().unwrap().starts_with("SNAPID"), "{table}");
    assert!(lines.next().unwrap().contains("one"), "{table}");

    // Existing name: 4. Rename, then rbd sees the new name only.
    e.rbdctl(&["snap", "create", &format!("{img}@one")]).code(4);
    e.rbdctl(&[
        "snap",
        "rename",
        &format!("{img}@one"),
        &format!("{img}@uno"),
    ])
    .ok();
    assert!(rbd_snap(&e, &img, "one").is_none());
    assert_eq!(rbd_snap(&e, &img, "uno").unwrap()["id"], theirs["id"]);
    e.rbdctl(&["snap", "rename", &format!("{img}@two"), "dos"])
        .ok();
    assert!(rbd_snap(&e, &img, "dos").is_some());
    e.rbdctl(&["snap", "rename", &format!("{img}@nope"), "x"])
        .code(3);

    // rm: gone from rbd's list; missing: 3.
    e.rbdctl(&["snap", "rm", &format!("{img}@uno")]).ok();
    assert!(rbd_snap(&e, &img, "uno").is_none());
    let r = e.rbdctl(&["snap", "rm", &format!("{img}@uno")]).code(3);
    assert!(r.err.contains("uno"), "{}", r.err);
}

#[test]
fn protect_unprotect_and_rm_of_a_protected_snapshot() {
    let Some(e) = common::env() else { return };
    let c = Cleanup::new(&e);
    let img = c.image("prot");
    e.rbd(&["create", "--size", "4M", &img]);
    let snap = format!("{img}@p");
    e.rbdctl(&["snap", "create", &snap]).ok();
    e.rbdctl(&["snap", "protect", &snap]).ok();
    assert_eq!(rbd_snap(&e, &img, "p").unwrap()["protected"], "true");
    e.rbdctl(&["snap", "protect", &snap]).code(5);

    // Protected: rm refuses with 5 and says how to proceed; the snapshot stays.
    let r = e.rbdctl(&["snap", "rm", &snap]).code(5);
    assert!(r.err.contains("protected"), "{}", r.err);
    assert!(rbd_snap(&e, &img, "p").is_some());

    e.rbdctl(&["snap", "unprotect", &snap]).ok();
    assert_eq!(rbd_snap(&e, &img, "p").unwrap()["protected"], "false");
    e.rbdctl(&["snap", "unprotect", &snap]).code(2);

    // --force removes a protected snapshot in one go.
    e.rbdctl(&["snap", "protect", &snap]).ok();
    e.rbdctl(&["snap", "rm", "--force", &snap]).ok();
    assert!(rbd_snap(&e, &img, "p").is_none());
}

#[test]
fn rollback_restores_the_snapshot_data() {
    let Some(e) = common::env() else { return };
    let c = Cleanup::new(&e);
    let img = c.image("rollback");
    let f = c.file("rollback");
    let data = Env::random(5 * MIB + 777);
    common::write_file(&f, &data);
    e.rbd(&["import", "--no-progress", f.to_str().unwrap(), &img]);
    e.rbdctl(&["snap", "create", &format!("{img}@base")]).ok();
    // Overwrite part of the head with other data.
    e.rbd(&[
        "bench",
        "--io-type",
        "write",
        "--io-size",
        "4K",
        "--io-total",
        "2M",
        "--io-pattern",
        "rand",
        &img,
    ]);
    assert_ne!(e.rbd_export(&img), data);

    let r = e.rbdctl(&["snap", "rollback", &format!("{img}@base")]).ok();
    assert!(r.err.is_empty(), "{}", r.err);
    assert_eq!(r.stdout(), format!("rolled back {img} to rbd/{img}@base\n"));
    assert_eq!(e.rbd_export(&img), data);
    e.rbdctl(&["snap", "rollback", &format!("{img}@none")])
        .code(3);
}
