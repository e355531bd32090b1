//! `rbdctl image-meta` and `rbdctl trash` against the dev cluster, cross-checked with
//! `rbd image-meta` and `rbd trash`.

mod common;

use common::Cleanup;
use serde_json::{Value, json};

#[test]
fn image_meta_both_ways() {
    let Some(e) = common::env() else { return };
    let c = Cleanup::new(&e);
    let img = c.image("meta");
    e.rbd(&["create", "--size", "4M", &img]);

    e.rbdctl(&["image-meta", "set", &img, "owner", "team a"])
        .ok();
    assert_eq!(
        e.rbd(&["image-meta", "get", &img, "owner"]).trim_end(),
        "team a"
    );
    e.rbd(&["image-meta", "set", &img, "conf_rbd_cache", "false"]);
    let r = e
        .rbdctl(&["image-meta", "get", &img, "conf_rbd_cache"])
        .ok();
    assert_eq!(r.stdout(), "false\n");
    let ours = e
        .rbdctl(&["image-meta", "ls", &img, "--format", "json"])
        .ok()
        .json();
    let theirs = e.rbd_json(&["image-meta", "ls", &img]);
    assert_eq!(ours, theirs);
    assert_eq!(ours, json!({"conf_rbd_cache": "false", "owner": "team a"}));
    let table = e.rbdctl(&["image-meta", "ls", &img]).ok().stdout();
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("owner") && l.ends_with("team a")),
        "{table}"
    );

    e.rbdctl(&["image-meta", "rm", &img, "owner"]).ok();
    assert_eq!(
        e.rbd_json(&["image-meta", "ls", &img]),
        json!({"conf_rbd_cache": "false"})
    );
    // Missing key: 3, named.
    let r = e.rbdctl(&["image-meta", "get", &img, "owner"]).code(3);
    assert!(r.err.contains("owner"), "{}", r.err);
    e.rbdctl(&["image-meta", "rm", &img, "owner"]).code(3);
}

fn trash_entry(e: &common::Env, id: &str) -> Option<Value> {
    e.rbd_json(&["trash", "ls", "-l"])
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == id)
        .cloned()
}

#[test]
fn trash_mv_ls_restore_rm() {
    let Some(e) = common::env() else { return };
    let c = Cleanup::new(&e);
    let img = c.image("trash");
    let renamed = c.image("trash-back");
    e.rbd(&["create", "--size", "4M", &img]);
    let id = e.rbd_json(&["info", &img])["id"]
        .as_str()
        .unwrap()
        .to_owned();
    c.trash_id(&id);

    let r = e
        .rbdctl(&["trash", "mv", &img, "--format", "json"])
        .ok()
        .json();
    assert_eq!(r["id"], id.as_str());
    assert!(!e.rbd_ls().contains(&img));
    let theirs = trash_entry(&e, &id).expect("rbd trash ls shows it");
    assert_eq!(theirs["name"], img.as_str());
    let ours = e.rbdctl(&["trash", "ls", "--format", "json"]).ok().json();
    let mine = ours
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == id.as_str())
        .expect("rbdctl trash ls shows it")
        .clone();
    assert_eq!(mine["name"], theirs["name"]);
    assert_eq!(mine["deleted_at"], theirs["deleted_at"]);
    assert_eq!(mine["source"], "user");
    assert_eq!(mine["expired"], true);
    let table = e.rbdctl(&["trash", "ls"]).ok().stdout();
    assert!(
        table
            .lines()
            .any(|l| l.starts_with(&id) && l.contains(&img)),
        "{table}"
    );

    // Restore by name under a new name; rbd sees it under that name, same id.
    e.rbdctl(&["trash", "restore", &img, "--image", &renamed])
        .ok();
    assert!(e.rbd_ls().contains(&renamed));
    assert_eq!(e.rbd_json(&["info", &renamed])["id"], id.as_str());
    assert!(trash_entry(&e, &id).is_none());

    // With a delay: rm refuses (7) until --force.
    e.rbdctl(&["trash", "mv", "--delay", "1h", &renamed]).ok();
    let r = e.rbdctl(&["trash", "rm", &id]).code(7);
    assert!(r.err.contains("--force"), "{}", r.err);
    assert!(trash_entry(&e, &id).is_some());
    let ours = e.rbdctl(&["trash", "ls", "--format", "json"]).ok().json();
    assert!(
        ours.as_array()
            .unwrap()
            .iter()
            .any(|t| t["id"] == id.as_str() && t["expired"] == false),
        "{ours}"
    );
    e.rbdctl(&["trash", "rm", "--force", &id]).ok();
    assert!(trash_entry(&e, &id).is_none());
    assert!(!e.rbd_ls().contains(&renamed));
    // Gone: 3.
    e.rbdctl(&["trash", "restore", &id]).code(3);
    e.rbdctl(&["trash", "mv", "--delay", "soon", &img]).code(2);
}
