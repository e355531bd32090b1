//! `rbdctl clone`, `children` and `flatten` against the dev cluster, cross-checked with
//! `rbd children`, `rbd info` and `rbd export`.

mod common;

use common::{Cleanup, Env};
use serde_json::{Value, json};

const MIB: usize = 1 << 20;

fn children_names(v: &Value) -> Vec<(String, String, String)> {
    let mut out: Vec<(String, String, String)> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["pool"].as_str().unwrap().to_owned(),
                c["pool_namespace"].as_str().unwrap().to_owned(),
                c["image"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    out.sort();
    out
}

#[test]
fn clone_children_flatten_agree_with_rbd() {
    let Some(e) = common::env() else { return };
    let c = Cleanup::new(&e);
    let parent = c.image("cl-parent");
    let v1 = c.image("cl-v1");
    let v2 = c.image("cl-v2");
    let f = c.file("cl");
    let data = Env::random(6 * MIB + 100);
    common::write_file(&f, &data);
    e.rbd(&["import", "--no-progress", f.to_str().unwrap(), &parent]);
    let snap = format!("{parent}@gold");
    e.rbdctl(&["snap", "create", &snap]).ok();

    // Clone format 1 needs protection: a clear usage error first, nothing created.
    let r = e
        .rbdctl(&["clone", "--clone-format", "1", &snap, &v1])
        .code(2);
    assert!(r.err.contains("snap protect"), "{}", r.err);
    assert!(!e.rbd_ls().contains(&v1));
    e.rbdctl(&["snap", "protect", &snap]).ok();
    let r = e.rbdctl(&["clone", "--clone-format", "1", &snap, &v1]).ok();
    assert_eq!(r.stdout(), format!("cloned rbd/{snap} to rbd/{v1}\n"));
    // Format 2 with its own object size.
    e.rbdctl(&[
        "clone",
        "--clone-format",
        "2",
        "--object-size",
        "1M",
        &snap,
        &v2,
    ])
    .ok();

    // Each clone reads the parent's data and names it as parent, as rbd sees it.
    for (child, order) in [(&v1, 22), (&v2, 20)] {
        let info = e.rbd_json(&["info", child]);
        assert_eq!(info["parent"]["image"], parent.as_str(), "{info}");
        assert_eq!(info["parent"]["snapshot"], "gold");
        assert_eq!(info["order"], order);
        assert_eq!(e.rbd_export(child), data);
    }

    // children: same set as rbd children, for the snapshot and for the whole image.
    let ours = e
        .rbdctl(&["children", &snap, "--format", "json"])
        .ok()
        .json();
    let theirs = e.rbd_json(&["children", &snap]);
    assert_eq!(children_names(&ours), children_names(&theirs));
    assert_eq!(children_names(&ours).len(), 2);
    let ours_all = e
        .rbdctl(&["children", &parent, "--format", "json"])
        .ok()
        .json();
    assert_eq!(children_names(&ours_all), children_names(&theirs));
    let text = e.rbdctl(&["children", &snap]).ok().stdout();
    let mut lines: Vec<&str> = text.lines().collect();
    lines.sort();
    let mut want = vec![format!("rbd/{v1}"), format!("rbd/{v2}")];
    want.sort();
    assert_eq!(lines, want);

    // A clone v1 child blocks unprotect: 5.
    let r = e.rbdctl(&["snap", "unprotect", &snap]).code(5);
    assert!(r.err.contains("clone"), "{}", r.err);

    // Write to a clone, then flatten it: no parent, same data, gone from children.
    e.rbd(&[
        "bench",
        "--io-type",
        "write",
        "--io-size",
        "4K",
        "--io-total",
        "64K",
        &v1,
    ]);
    let before = e.rbd_export(&v1);
    let r = e.rbdctl(&["flatten", &v1]).ok();
    assert!(r.err.is_empty(), "{}", r.err);
    assert!(
        r.stdout().starts_with(&format!("flattened rbd/{v1}")),
        "{}",
        r.stdout()
    );
    let info = e.rbd_json(&["info", &v1]);
    assert!(info.get("parent").is_none(), "{info}");
    assert_eq!(e.rbd_export(&v1), before);
    let theirs = e.rbd_json(&["children", &snap]);
    assert_eq!(
        children_names(&theirs),
        vec![("rbd".into(), "".into(), v2.clone())]
    );
    let ours = e
        .rbdctl(&["children", &snap, "--format", "json"])
        .ok()
        .json();
    assert_eq!(children_names(&ours), children_names(&theirs));

    // Flattening something that is not a clone: 2, saying so.
    let r = e.rbdctl(&["flatten", &v1]).code(2);
    assert!(r.err.contains("not a clone"), "{}", r.err);
    // Cloning onto an existing image: 4; from a missing snapshot: 3.
    e.rbdctl(&["clone", &snap, &v2]).code(4);
    e.rbdctl(&["clone", &format!("{parent}@nope"), &c.image("cl-x")])
        .code(3);
}

#[test]
fn descendants_and_clone_features() {
    let Some(e) = common::env() else { return };
    let c = Cleanup::new(&e);
    let a = c.image("desc-a");
    let b = c.image("desc-b");
    let cc = c.image("desc-c");
    e.rbd(&["create", "--size", "4M", &a]);
    e.rbd(&["snap", "create", "--no-progress", &format!("{a}@s")]);
    e.rbdctl(&[
        "clone",
        "--clone-format",
        "2",
        "--features",
        "layering,exclusive-lock",
        &format!("{a}@s"),
        &b,
    ])
    .ok();
    // Exactly the asked features, plus the internal `operations` flag librbd sets on
    // clone v2 children.
    assert_eq!(
        e.rbd_json(&["info", &b])["features"],
        json!(["layering", "exclusive-lock", "operations"])
    );
    let ours = e.rbdctl(&["info", &b, "--format", "json"]).ok().json();
    assert_eq!(ours["features"], e.rbd_json(&["info", &b])["features"]);
    assert_eq!(ours["op_features"], json!(["clone-child"]));
    e.rbd(&["snap", "create", "--no-progress", &format!("{b}@t")]);
    e.rbdctl(&["clone", "--clone-format", "2", &format!("{b}@t"), &cc])
        .ok();
    let direct = e.rbdctl(&["children", &a, "--format", "json"]).ok().json();
    assert_eq!(children_names(&direct).len(), 1);
    let all = e
        .rbdctl(&["children", "--descendants", &a, "--format", "json"])
        .ok()
        .json();
    let theirs = e.rbd_json(&["children", "--descendants", &a]);
    assert_eq!(children_names(&all), children_names(&theirs));
    assert_eq!(children_names(&all).len(), 2);
}
