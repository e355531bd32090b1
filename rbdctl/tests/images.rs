//! Image commands against the dev cluster, cross-checked with Ceph's `rbd`: create, info,
//! ls, resize, rename, cp, feature, status, rm, and their error exit codes.

mod common;

use common::{Cleanup, Env};
use serde_json::Value;

const MIB: u64 = 1 << 20;

/// The fields `rbd info --format json` and ours share.
const INFO_FIELDS: [&str; 15] = [
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
    "create_timestamp",
    "access_timestamp",
    "modify_timestamp",
];

fn assert_info_matches(ours: &Value, theirs: &Value, extra: &[&str]) {
    for f in INFO_FIELDS.iter().chain(extra) {
        assert_eq!(ours[f], theirs[f], "field {f}: ours {ours} vs rbd {theirs}");
    }
}

#[test]
fn info_shows_what_rbd_info_shows() {
    let Some(e) = common::env() else { return };
    let c = Cleanup::new(&e);
    let img = c.image("info");
    e.rbdctl(&[
        "create",
        "--size",
        "48M",
        "--object-size",
        "1M",
        "--stripe-unit",
        "64K",
        "--stripe-count",
        "4",
        &img,
    ])
    .ok();
    let ours = e.rbdctl(&["info", &img, "--format", "json"]).ok().json();
    let theirs = e.rbd_json(&["info", &img]);
    assert_info_matches(&ours, &theirs, &["stripe_unit", "stripe_count"]);
    assert_eq!(ours["size"], 48 * MIB);
    assert_eq!(ours["stripe_unit"], 64 * 1024);
    assert_eq!(ours["stripe_count"], 4);
    assert_eq!(ours["pool"], "rbd");

    // The text form carries the same facts, in rbd's words.
    let text = e.rbdctl(&["info", &img]).ok().stdout();
    let id = theirs["id"].as_str().unwrap();
    for want in [
        format!("rbd image '{img}':"),
        "\tsize 48 MiB in 48 objects".to_owned(),
        "\torder 20 (1 MiB objects)".to_owned(),
        format!("\tid: {id}"),
        format!("\tblock_name_prefix: rbd_data.{id}"),
        "\tformat: 2".to_owned(),
        "\tstripe unit: 64 KiB".to_owned(),
        "\tstripe count: 4".to_owned(),
        format!(
            "\tcreate_timestamp: {}",
            theirs["create_timestamp"].as_str().unwrap()
        ),
    ] {
        assert!(
            text.lines().any(|l| l == want),
            "missing {want:?} in\n{text}"
        );
    }
    let rbd_text = e.rbd(&["info", &img]);
    let feat = |t: &str| {
        t.lines()
            .find(|l| l.starts_with("\tfeatures:"))
            .map(str::to_owned)
    };
    assert_eq!(feat(&text), feat(&rbd_text));
}

#[test]
fn info_of_a_snapshot_and_a_clone() {
    let Some(e) = common::env() else { return };
    let c = Cleanup::new(&e);
    let parent = c.image("infop");
    let child = c.image("infoc");
    e.rbd(&["create", "--size", "16M", &parent]);
    e.rbd(&["snap", "create", "--no-progress", &format!("{parent}@s1")]);
    e.rbd(&["snap", "protect", &format!("{parent}@s1")]);
    e.rbd(&["clone", &format!("{parent}@s1"), &child]);

    let ours = e
        .rbdctl(&["info", &format!("{parent}@s1"), "--format", "json"])
        .ok()
        .json();
    assert_eq!(ours["snapshot"], "s1");
    assert_eq!(ours["protected"], true);
    let theirs = e.rbd_json(&["info", &format!("{parent}@s1")]);
    assert_eq!(theirs["protected"], "true");
    assert_info_matches(&ours, &theirs, &[]);

    let ours = e.rbdctl(&["info", &child, "--format", "json"]).ok().json();
    let theirs = e.rbd_json(&["info", &child]);
    assert_info_matches(&ours, &theirs, &["parent"]);
    assert_eq!(ours["parent"]["image"], parent.as_str());
    assert_eq!(ours["parent"]["snapshot"], "s1");
    assert_eq!(ours["parent"]["overlap"], 16 * MIB);
    let text = e.rbdctl(&["info", &child]).ok().stdout();
    assert!(
        text.contains(&format!("\tparent: rbd/{parent}@s1\n")),
        "{text}"
    );
    assert!(text.contains("\toverlap: 16 MiB\n"), "{text}");
}

#[test]
fn ls_lists_what_rbd_created_in_table_and_json() {
    let Some(e) = common::env() else { return };
    let c = Cleanup::new(&e);
    let a = c.image("ls");
    e.rbd(&["create", "--size", "8M", &a]);
    let plain = e.rbdctl(&["ls"]).ok().stdout();
    assert!(plain.lines().any(|l| l == a), "{plain}");
    let long = e.rbdctl(&["ls", "-l", "--format", "json"]).ok().json();
    let entry = long
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == a.as_str())
        .unwrap_or_else(|| panic!("{a} not in {long}"))
        .clone();
    assert_eq!(entry["size"], 8 * MIB);
    assert_eq!(entry["format"], 2);
    assert_eq!(entry["watchers"], 0);
    assert_eq!(entry["id"], e.rbd_json(&["info", &a])["id"]);
    let table = e.rbdctl(&["ls", "-l"]).ok().stdout();
    assert!(table.starts_with("NAME"), "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.starts_with(&a) && l.contains("8 MiB")),
        "{table}"
    );
}

#[test]
fn resize_grows_and_shrinks_only_when_asked() {
    let Some(e) = common::env() else { return };
    let c = Cleanup::new(&e);
    let img = c.image("resize");
    e.rbd(&["create", "--size", "32M", &img]);

    let r = e.rbdctl(&["resize", &img, "--size", "64M"]).ok();
    assert_eq!(
        r.stdout(),
        format!("resized rbd/{img} from 32 MiB to 64 MiB\n")
    );
    assert!(
        r.err.is_empty(),
        "stderr must stay quiet off a terminal: {}",
        r.err
    );
    assert_eq!(e.rbd_json(&["info", &img])["size"], 64 * MIB);

    // Shrinking without --allow-shrink: usage error naming both sizes, nothing changed.
    let r = e.rbdctl(&["resize", &img, "--size", "16M"]).code(2);
    assert!(r.err.contains("--allow-shrink"), "{}", r.err);
    assert!(
        r.err.contains("64 MiB") && r.err.contains("16 MiB"),
        "{}",
        r.err
    );
    assert_eq!(e.rbd_json(&["info", &img])["size"], 64 * MIB);

    let r = e
        .rbdctl(&[
            "resize",
            &img,
            "--size",
            "16M",
            "--allow-shrink",
            "--format",
            "json",
        ])
        .ok()
        .json();
    assert_eq!(r["old_size"], 64 * MIB);
    assert_eq!(r["size"], 16 * MIB);
    assert_eq!(e.rbd_json(&["info", &img])["size"], 16 * MIB);

    // Bad sizes: exit 2, the value named, nothing changed.
    for bad in ["-1", "1e99", "2Q", "16E"] {
        let r = e.rbdctl(&["resize", &img, "--size", bad]).code(2);
        assert!(r.err.contains(&format!("{bad:?}")), "{bad}: {}", r.err);
    }
    assert_eq!(e.rbd_json(&["info", &img])["size"], 16 * MIB);

    let r = e
        .rbdctl(&["resize", &c.image("nosuch"), "--size", "1G"])
        .code(3);
    assert!(r.err.contains("not found"), "{}", r.err);
}

#[test]
fn rename_and_copy() {
    let Some(e) = common::env() else { return };
    let c = Cleanup::new(&e);
    let a = c.image("ren-a");
    let b = c.image("ren-b");
    let cp = c.image("cp");
    let src = c.file("cp-src");
    let data = Env::random(6 * MIB as usize + 4321);
    common::write_file(&src, &data);
    e.rbd(&["import", "--no-progress", src.to_str().unwrap(), &a]);

    let r = e.rbdctl(&["rename", &a, &b]).ok();
    assert_eq!(r.stdout(), format!("renamed rbd/{a} to rbd/{b}\n"));
    let ls = e.rbd_ls();
    assert!(ls.contains(&b) && !ls.contains(&a), "{ls:?}");

    // Rename onto an existing name: exit 4; a missing source: exit 3.
    e.rbd(&["create", "--size", "1M", &a]);
    e.rbdctl(&["rename", &b, &a]).code(4);
    e.rbdctl(&["rename", &c.image("ren-missing"), &c.image("ren-x")])
        .code(3);
    let r = e
        .rbdctl(&["rename", &b, &format!("otherpool/{cp}")])
        .code(2);
    assert!(r.err.contains("within a pool"), "{}", r.err);

    // cp with a new object size: same bytes, new layout.
    let r = e.rbdctl(&["cp", &b, &cp, "--object-size", "1M"]).ok();
    assert!(
        r.stdout()
            .starts_with(&format!("copied rbd/{b} to rbd/{cp}")),
        "{}",
        r.stdout()
    );
    assert!(r.err.is_empty(), "{}", r.err);
    assert_eq!(e.rbd_export(&cp), data);
    let info = e.rbd_json(&["info", &cp]);
    assert_eq!(info["order"], 20);
    assert_eq!(info["size"], data.len());
    // Onto an existing image: exit 4, the target untouched.
    e.rbdctl(&["cp", &b, &a]).code(4);
    assert_eq!(e.rbd_json(&["info", &a])["size"], MIB);
}

#[test]
fn copy_from_a_snapshot() {
    let Some(e) = common::env() else { return };
    let c = Cleanup::new(&e);
    let a = c.image("cps");
    let cp = c.image("cps-copy");
    let f = c.file("cps");
    let data = Env::random(3 * MIB as usize);
    common::write_file(&f, &data);
    e.rbd(&["import", "--no-progress", f.to_str().unwrap(), &a]);
    e.rbd(&["snap", "create", "--no-progress", &format!("{a}@s")]);
    // Change the head after the snapshot; the copy must have the snapshot's data.
    e.rbd(&[
        "bench",
        "--io-type",
        "write",
        "--io-size",
        "64K",
        "--io-total",
        "1M",
        &a,
    ]);
    assert_ne!(e.rbd_export(&a), data);
    e.rbdctl(&["copy", &format!("{a}@s"), &cp]).ok();
    assert_eq!(e.rbd_export(&cp), data);
}

#[test]
fn feature_enable_disable_as_rbd_sees_it() {
    let Some(e) = common::env() else { return };
    let c = Cleanup::new(&e);
    let img = c.image("feat");
    e.rbdctl(&[
        "create",
        "--size",
        "8M",
        "--features",
        "layering,exclusive-lock",
        &img,
    ])
    .ok();
    let r = e
        .rbdctl(&[
            "feature",
            "enable",
            &img,
            "object-map",
            "fast-diff",
            "--format",
            "json",
        ])
        .ok()
        .json();
    let want = serde_json::json!(["layering", "exclusive-lock", "object-map", "fast-diff"]);
    assert_eq!(r["features"], want);
    assert_eq!(e.rbd_json(&["info", &img])["features"], want);
    e.rbdctl(&["feature", "disable", &img, "fast-diff,object-map"])
        .ok();
    assert_eq!(
        e.rbd_json(&["info", &img])["features"],
        serde_json::json!(["layering", "exclusive-lock"])
    );
    // Unknown and immutable features: exit 2, naming them.
    let r = e.rbdctl(&["feature", "enable", &img, "bogus"]).code(2);
    assert!(r.err.contains("bogus"), "{}", r.err);
    let r = e.rbdctl(&["feature", "enable", &img, "layering"]).code(2);
    assert!(r.err.contains("layering"), "{}", r.err);
}

#[test]
fn status_shows_the_exact_watcher_and_rm_refuses_while_watched() {
    let Some(e) = common::env() else { return };
    let c = Cleanup::new(&e);
    let img = c.image("status");
    e.rbd(&["create", "--size", "8M", &img]);
    let none = e.rbdctl(&["status", &img, "--format", "json"]).ok().json();
    assert_eq!(none["watchers"], serde_json::json!([]));

    // `rbd watch` keeps the image open (a watcher) until its stdin closes.
    let mut w = e.spawn_rbd(&["watch", &img]);
    let mut theirs = Value::Null;
    for _ in 0..100 {
        theirs = e.rbd_json(&["status", &img]);
        if theirs["watchers"].as_array().is_some_and(|a| !a.is_empty()) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(w.running(), "rbd watch exited early");
    let tw = &theirs["watchers"][0];
    assert!(tw["address"].is_string(), "{theirs}");

    let ours = e.rbdctl(&["status", &img, "--format", "json"]).ok().json();
    assert_eq!(
        ours["watchers"], theirs["watchers"],
        "ours {ours} theirs {theirs}"
    );
    let text = e.rbdctl(&["status", &img]).ok().stdout();
    let line = format!(
        "\twatcher={} client.{} cookie={}",
        tw["address"].as_str().unwrap(),
        tw["client"],
        tw["cookie"]
    );
    assert!(text.lines().any(|l| l == line), "{line:?} not in {text}");

    // rm while watched: exit 5, naming the exact client; the image stays.
    let r = e.rbdctl(&["rm", &img]).code(5);
    assert!(r.err.contains(tw["address"].as_str().unwrap()), "{}", r.err);
    assert!(e.rbd_ls().contains(&img));
    w.stop();
}

#[test]
fn error_exit_codes() {
    let Some(e) = common::env() else { return };
    let c = Cleanup::new(&e);
    let missing = c.image("missing");
    // Missing image: 3, for every kind of command.
    for args in [
        vec!["info", missing.as_str()],
        vec!["rm", missing.as_str()],
        vec!["status", missing.as_str()],
        vec!["snap", "ls", missing.as_str()],
        vec!["flatten", missing.as_str()],
        vec!["lock", "ls", missing.as_str()],
        vec!["image-meta", "ls", missing.as_str()],
        vec!["feature", "enable", missing.as_str(), "object-map"],
        vec!["trash", "mv", missing.as_str()],
    ] {
        let r = e.rbdctl(&args).code(3);
        assert!(r.err.contains(&missing), "{args:?}: {}", r.err);
    }
    let snap_missing = format!("{missing}@s");
    e.rbdctl(&["snap", "create", &snap_missing]).code(3);
    e.rbdctl(&["export", &missing, "-"]).code(3);

    // Existing: 4.
    let img = c.image("exists");
    e.rbdctl(&["create", "--size", "4M", &img]).ok();
    let r = e.rbdctl(&["create", "--size", "8M", &img]).code(4);
    assert!(r.err.contains("already exists"), "{}", r.err);
    assert_eq!(e.rbd_json(&["info", &img])["size"], 4 * MIB);

    // Snapshots: rm gives 5 and lists them; the image stays.
    e.rbd(&["snap", "create", "--no-progress", &format!("{img}@keep")]);
    let r = e.rbdctl(&["rm", &img]).code(5);
    assert!(r.err.contains("keep"), "{}", r.err);
    assert!(e.rbd_ls().contains(&img));

    // Bad sizes and names: 2, the value named, nothing created.
    let fresh = c.image("bad");
    for bad in ["-1", "1e99", "2Q", "", "1.3K"] {
        let r = e.rbdctl(&["create", "--size", bad, &fresh]).code(2);
        assert!(r.err.contains(&format!("{bad:?}")), "{bad}: {}", r.err);
    }
    let r = e
        .rbdctl(&["create", "--size", "1G", "--object-size", "3M", &fresh])
        .code(2);
    assert!(
        r.err.contains("3145728") || r.err.contains("3M"),
        "{}",
        r.err
    );
    let r = e.rbdctl(&["create", "--size", "1G", "a@b@c"]).code(2);
    assert!(r.err.contains("a@b@c"), "{}", r.err);
    assert!(!e.rbd_ls().contains(&fresh));
    // Usage errors from the parser are 2 as well.
    e.rbdctl(&["resize", &img]).code(2);
    e.rbdctl(&["snap", "create", &img]).code(2);
}

#[test]
fn rm_removes_and_rbd_agrees() {
    let Some(e) = common::env() else { return };
    let c = Cleanup::new(&e);
    let img = c.image("rm");
    e.rbd(&["create", "--size", "16M", &img]);
    let r = e.rbdctl(&["rm", &img, "--format", "json"]).ok();
    assert!(r.err.is_empty(), "{}", r.err);
    assert_eq!(r.json()["removed"], format!("rbd/{img}"));
    assert!(!e.rbd_ls().contains(&img));
    e.rbdctl(&["rm", &img]).code(3);
}

#[test]
fn other_pools_namespaces_and_data_pools() {
    let Some(e) = common::env() else { return };
    let c = Cleanup::new(&e);
    let pool = c.pool();
    let ns = c.namespace();
    let name = testkit::unique("rbdctl-spec");

    // pool/image: created in the other pool, with its data in a data pool.
    let in_pool = c.spec(&format!("{pool}/{name}"));
    e.rbdctl(&["create", "--size", "8M", &in_pool]).ok();
    assert!(
        e.rbd_json(&["ls", &pool])
            .as_array()
            .unwrap()
            .contains(&name.as_str().into())
    );
    let with_dp = c.spec(&format!("{pool}/{name}-dp"));
    e.rbdctl(&["create", "--size", "8M", "--data-pool", "rbd", &with_dp])
        .ok();
    let ours = e
        .rbdctl(&["info", &with_dp, "--format", "json"])
        .ok()
        .json();
    let theirs = e.rbd_json(&["info", &with_dp]);
    assert_eq!(ours["data_pool"], "rbd");
    assert_eq!(ours["data_pool"], theirs["data_pool"]);
    assert_info_matches(&ours, &theirs, &[]);
    let text = e.rbdctl(&["info", &with_dp]).ok().stdout();
    assert!(text.contains("\tdata_pool: rbd\n"), "{text}");

    // -p selects the pool for listing commands; a spec's pool wins over -p.
    let ls = e.rbdctl(&["-p", &pool, "ls"]).ok().stdout();
    assert!(ls.lines().any(|l| l == name), "{ls}");
    e.rbdctl(&["-p", "rbd", "info", &in_pool]).ok();

    // pool/namespace/image, and --namespace for listings.
    let in_ns = c.spec(&format!("rbd/{ns}/{name}"));
    e.rbdctl(&["create", "--size", "4M", &in_ns]).ok();
    assert_eq!(
        e.rbd_json(&["ls", &format!("rbd/{ns}")]),
        serde_json::json!([name.as_str()])
    );
    let ls = e.rbdctl(&["--namespace", &ns, "ls"]).ok().stdout();
    assert_eq!(ls, format!("{name}\n"));
    let info = e.rbdctl(&["info", &in_ns, "--format", "json"]).ok().json();
    assert_eq!(info["namespace"], ns.as_str());

    // Clone across pools and namespaces: the parent is named with its pool.
    e.rbdctl(&["snap", "create", &format!("{in_pool}@s")]).ok();
    let child = c.spec(&format!("rbd/{ns}/{name}-child"));
    e.rbdctl(&[
        "clone",
        "--clone-format",
        "2",
        &format!("{in_pool}@s"),
        &child,
    ])
    .ok();
    let info = e.rbd_json(&["info", &child]);
    assert_eq!(info["parent"]["pool"], pool.as_str());
    assert_eq!(info["parent"]["image"], name.as_str());
    let kids = e
        .rbdctl(&["children", &format!("{in_pool}@s"), "--format", "json"])
        .ok()
        .json();
    assert_eq!(kids[0]["pool"], "rbd");
    assert_eq!(kids[0]["pool_namespace"], ns.as_str());
    assert_eq!(kids[0]["image"], format!("{name}-child"));
    // cp into the namespace and back out to the default pool.
    let copy = c.image("spec-copy");
    e.rbdctl(&["cp", &child, &copy]).ok();
    assert_eq!(e.rbd_json(&["info", &copy])["size"], 8 * MIB);
}
