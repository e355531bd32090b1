//! Interoperability with Ceph's own `rbd` CLI: what we create, it reads identically, and
//! the reverse; snapshots, locks and watchers agree both ways.

mod common;
mod mgmt;

use mgmt::{TestImage, plain_opts, second_client};
use rbd_core::rbd::{Features, ImageOptions, LockMode};
use rbd_core::{EntityAddr, Image, OpenOptions};
use serde_json::Value;

const MIB: u64 = 1 << 20;

/// The fields `rbd info --format json` and our `ImageDetails` share, with the same names.
const SHARED_FIELDS: [&str; 12] = [
    "name",
    "id",
    "size",
    "objects",
    "order",
    "object_size",
    "snapshot_count",
    "block_name_prefix",
    "format",
    "features",
    "op_features",
    "flags",
];

fn assert_info_matches(img: &Image, cli: &Value) {
    let ours = serde_json::to_value(img.info().unwrap()).unwrap();
    for f in SHARED_FIELDS {
        assert_eq!(ours[f], cli[f], "field {f}: ours {ours} vs rbd info {cli}");
    }
}

#[test]
fn our_image_as_rbd_info_sees_it() {
    let Some((rados, conf)) = common::connect() else {
        return;
    };
    let feats = Features::LAYERING | Features::EXCLUSIVE_LOCK | Features::OBJECT_MAP;
    let opts = ImageOptions::new()
        .object_size(2 * MIB)
        .unwrap()
        .features(feats);
    let t = TestImage::create(&rados, "mgmt-ours", 100 * MIB, &opts);
    let cli = common::cli_json(&conf, "rbd", &["info", &t.spec()]);
    assert_eq!(cli["size"], 100 * MIB);
    assert_eq!(cli["object_size"], 2 * MIB);
    assert_eq!(cli["order"], 21);
    assert_eq!(cli["objects"], 50);
    // librbd implies fast-diff with object-map.
    assert_eq!(
        cli["features"],
        serde_json::json!(["layering", "exclusive-lock", "object-map", "fast-diff"])
    );
    assert_eq!(cli["format"], 2);
    assert_info_matches(&t.open(), &cli);
}

#[test]
fn rbd_create_image_as_we_see_it() {
    let Some((rados, conf)) = common::connect() else {
        return;
    };
    let name = testkit::unique("mgmt-theirs");
    let t = TestImage::adopt(&rados, &name);
    common::cli(
        &conf,
        "rbd",
        &[
            "create",
            "--size",
            "20M",
            "--object-size",
            "512K",
            "--image-feature",
            "layering,exclusive-lock,object-map,fast-diff",
            &t.spec(),
        ],
    );
    common::cli(
        &conf,
        "rbd",
        &["snap", "create", &format!("{}@cli-snap", t.spec())],
    );
    let cli = common::cli_json(&conf, "rbd", &["info", &t.spec()]);
    let img = t.open();
    assert_info_matches(&img, &cli);
    assert_eq!(img.size().unwrap(), 20 * MIB);
    assert_eq!(img.stat().unwrap().obj_size, 512 * 1024);
    assert_eq!(
        img.features().unwrap(),
        "layering,exclusive-lock,object-map,fast-diff"
            .parse::<Features>()
            .unwrap()
    );
}

#[test]
fn cli_snapshots_are_listed() {
    let Some((rados, conf)) = common::connect() else {
        return;
    };
    let t = TestImage::create(&rados, "mgmt-clisnap", 8 * MIB, &plain_opts());
    let spec = t.spec();
    common::cli(&conf, "rbd", &["snap", "create", &format!("{spec}@one")]);
    common::cli(&conf, "rbd", &["resize", "--size", "16M", &spec]);
    common::cli(&conf, "rbd", &["snap", "create", &format!("{spec}@two")]);
    common::cli(&conf, "rbd", &["snap", "protect", &format!("{spec}@two")]);

    let img = t.open();
    let ours = img.snap_list().unwrap();
    let cli = common::cli_json(&conf, "rbd", &["snap", "ls", &spec]);
    let cli = cli.as_array().unwrap();
    assert_eq!(ours.len(), 2);
    assert_eq!(cli.len(), 2);
    for (o, c) in ours.iter().zip(cli) {
        assert_eq!(c["id"], o.id);
        assert_eq!(c["name"], o.name.as_str());
        assert_eq!(c["size"], o.size);
        assert_eq!(
            c["protected"] == "true",
            img.snap_is_protected(&o.name).unwrap()
        );
    }
    assert_eq!(ours[0].name, "one");
    assert_eq!(ours[0].size, 8 * MIB);
    assert_eq!(ours[1].size, 16 * MIB);
    assert!(img.snap_is_protected("two").unwrap());

    // And the reverse: our snapshot shows in the CLI.
    img.snap_create("three").unwrap();
    let cli = common::cli_json(&conf, "rbd", &["snap", "ls", &spec]);
    assert_eq!(cli[2]["name"], "three");
    assert_eq!(cli[2]["id"], img.snap_get_id("three").unwrap());
}

#[test]
fn exclusive_lock_owner_matches_rbd_lock_ls_and_status() {
    let Some((rados, conf)) = common::connect() else {
        return;
    };
    let opts = ImageOptions::new().features(Features::LAYERING | Features::EXCLUSIVE_LOCK);
    let t = TestImage::create(&rados, "mgmt-xinterop", 4 * MIB, &opts);
    let img = t.open();
    img.lock_acquire(LockMode::Exclusive).unwrap();
    let owners = img.lock_get_owners().unwrap();
    assert_eq!(owners.owners.len(), 1);
    let owner: EntityAddr = owners.owners[0].parse().unwrap();

    let ls = common::cli_json(&conf, "rbd", &["lock", "ls", &t.spec()]);
    let ls = ls.as_array().unwrap();
    assert_eq!(ls.len(), 1, "{ls:?}");
    let cli_addr: EntityAddr = ls[0]["address"].as_str().unwrap().parse().unwrap();
    assert!(cli_addr.same_instance(&owner), "{cli_addr} vs {owner}");
    assert_eq!(ls[0]["locker"], format!("client.{}", rados.instance_id()));
    assert!(
        ls[0]["id"].as_str().unwrap().starts_with("auto "),
        "managed lock cookie: {ls:?}"
    );

    // `rbd status` lists our handle as the watcher at the owner's address.
    let st = common::cli_json(&conf, "rbd", &["status", &t.spec()]);
    let w = st["watchers"].as_array().unwrap();
    assert_eq!(w.len(), 1, "{st}");
    let waddr: EntityAddr = w[0]["address"].as_str().unwrap().parse().unwrap();
    assert!(waddr.same_instance(&owner));

    img.lock_release().unwrap();
    let ls = common::cli_json(&conf, "rbd", &["lock", "ls", &t.spec()]);
    assert!(ls.as_array().unwrap().is_empty(), "{ls}");
}

#[test]
fn watchers_match_rbd_status() {
    let Some((rados, conf)) = common::connect() else {
        return;
    };
    let t = TestImage::create(&rados, "mgmt-winterop", 4 * MIB, &plain_opts());
    let a = t.open();
    let rados_b = second_client(&conf);
    let _b = Image::open(
        &rados_b.ioctx(common::POOL).unwrap(),
        &t.name,
        &OpenOptions::new(),
    )
    .unwrap();
    let _a2 = t.open();

    let mut ours: Vec<(EntityAddr, u64, u64)> = a
        .watchers()
        .unwrap()
        .into_iter()
        .map(|w| (w.addr, w.id, w.cookie))
        .collect();
    let st = common::cli_json(&conf, "rbd", &["status", &t.spec()]);
    let mut cli: Vec<(EntityAddr, u64, u64)> = st["watchers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| {
            (
                w["address"].as_str().unwrap().parse().unwrap(),
                w["client"].as_u64().unwrap(),
                w["cookie"].as_u64().unwrap(),
            )
        })
        .collect();
    ours.sort_by_key(|w| w.2);
    cli.sort_by_key(|w| w.2);
    assert_eq!(ours.len(), 3, "{ours:?}");
    assert_eq!(ours, cli);
}

#[test]
fn advisory_locks_both_ways() {
    let Some((rados, conf)) = common::connect() else {
        return;
    };
    // Breaking the CLI's lock below blocklists the CLI client (librbd's
    // rbd_blocklist_on_break_lock); its entry is removed at the end, pass or fail.
    let unfence = common::Unfence::new(&rados);
    let t = TestImage::create(&rados, "mgmt-ainterop", 4 * MIB, &plain_opts());
    let img = t.open();

    // Ours, seen by `rbd lock ls`.
    img.lock_exclusive("our-cookie").unwrap();
    let ls = common::cli_json(&conf, "rbd", &["lock", "ls", &t.spec()]);
    let ls = ls.as_array().unwrap();
    assert_eq!(ls.len(), 1, "{ls:?}");
    assert_eq!(ls[0]["id"], "our-cookie");
    assert_eq!(ls[0]["locker"], format!("client.{}", rados.instance_id()));
    let addr: EntityAddr = ls[0]["address"].as_str().unwrap().parse().unwrap();
    assert!(addr.same_instance(rados.getaddrs().unwrap().primary().unwrap()));
    img.unlock("our-cookie").unwrap();
    let ls = common::cli_json(&conf, "rbd", &["lock", "ls", &t.spec()]);
    assert!(ls.as_array().unwrap().is_empty());

    // Theirs (`rbd lock add`), seen and broken by us.
    common::cli(
        &conf,
        "rbd",
        &[
            "lock",
            "add",
            "--shared",
            "cli-tag",
            &t.spec(),
            "cli-cookie",
        ],
    );
    let l = img.list_lockers().unwrap();
    assert!(!l.exclusive);
    assert_eq!(l.tag, "cli-tag");
    assert_eq!(l.lockers.len(), 1);
    let theirs = &l.lockers[0];
    assert_eq!(theirs.cookie, "cli-cookie");
    assert_ne!(theirs.client, format!("client.{}", rados.instance_id()));
    let ls = common::cli_json(&conf, "rbd", &["lock", "ls", &t.spec()]);
    assert_eq!(ls[0]["locker"], theirs.client.as_str());
    assert_eq!(
        ls[0]["address"]
            .as_str()
            .unwrap()
            .parse::<EntityAddr>()
            .unwrap(),
        theirs.addr
    );
    unfence.addr(theirs.addr);
    img.break_lock(&theirs.client, &theirs.cookie).unwrap();
    assert!(img.list_lockers().unwrap().lockers.is_empty());
    let ls = common::cli_json(&conf, "rbd", &["lock", "ls", &t.spec()]);
    assert!(ls.as_array().unwrap().is_empty(), "{ls}");
}
