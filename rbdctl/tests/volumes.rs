//! `rbdctl volume ...` and `rbdctl mount`/`umount` of volumes, through the real volume
//! driver with the userspace mapper on the real dev cluster, as root. Each test runs on a
//! node of its own; results are checked against `rbd ls`, `rbd info`, `rbd image-meta
//! list`, `rbd status`, the name index (`rados listomapkeys`), the node's state file and
//! `/proc/self/mountinfo`.

mod common;

use std::path::PathBuf;

use common::Env;
use common::node::{Node, is_mounted};
use serde_json::Value;

fn setup() -> Option<Env> {
    let env = common::env()?;
    if !testkit::require_root() {
        return None;
    }
    Some(env)
}

/// Names in the cluster-wide volume index.
fn index_names(env: &Env) -> Vec<String> {
    let r = env.tool(
        "rados",
        &[
            "-p",
            "rbd",
            "-N",
            "rbd-volumes",
            "listomapkeys",
            "volume-index",
        ],
    );
    r.stdout().lines().map(str::to_owned).collect()
}

fn image_meta(env: &Env, name: &str) -> Value {
    env.rbd_json(&["image-meta", "list", name])
}

#[test]
fn create_ls_inspect_rm_agree_with_rbd() {
    let Some(env) = setup() else { return };
    let node = Node::new(&env);
    let v = node.volume("vol");
    let created = node
        .rbdctl(&[
            "volume",
            "create",
            &v,
            "-o",
            "size=64M",
            "-o",
            "fstype=ext4",
            "-o",
            "mount-options=noatime",
            "--format",
            "json",
        ])
        .ok()
        .json();
    assert_eq!(created["name"], v.as_str());
    assert_eq!(created["size"], 64 << 20);

    // Ceph's view: the image, its size and id, its metadata, the index entry.
    assert!(env.rbd_ls().contains(&v), "rbd ls lacks {v}");
    let info = env.rbd_json(&["info", &v]);
    assert_eq!(info["size"], 64 << 20);
    assert_eq!(created["image_id"], info["id"]);
    let meta = image_meta(&env, &v);
    assert_eq!(meta["rbd-volumes.fstype"], "ext4", "{meta}");
    let mount_opts: Value =
        serde_json::from_str(meta["rbd-volumes.mount-options"].as_str().unwrap_or("null"))
            .unwrap_or(Value::Null);
    assert_eq!(mount_opts, serde_json::json!(["noatime"]), "{meta}");
    assert_eq!(meta["rbd-volumes.name"], v.as_str(), "{meta}");
    assert!(index_names(&env).contains(&v));

    // ls and inspect show the same volume.
    let ls = node
        .rbdctl(&["volume", "ls", "--format", "json"])
        .ok()
        .json();
    let entry = ls
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == v.as_str())
        .unwrap_or_else(|| panic!("volume ls lacks {v}: {ls}"))
        .clone();
    assert_eq!(entry["image_id"], info["id"]);
    assert_eq!(entry["fstype"], "ext4");
    assert!(
        entry["created_at"].as_u64().is_some_and(|t| t > 0),
        "{entry}"
    );
    let table = node.rbdctl(&["volume", "ls"]).ok().stdout();
    assert!(
        table
            .lines()
            .any(|l| l.starts_with(&format!("{v} ")) && l.contains("64 MiB")),
        "{table}"
    );
    let inspect = node
        .rbdctl(&["volume", "inspect", &v, "--format", "json"])
        .ok()
        .json();
    assert_eq!(inspect["image_id"], info["id"]);
    assert_eq!(inspect["access"], "rw");
    assert_eq!(inspect["mountpoint"], Value::Null);
    // The same create again is idempotent; other options are "exists".
    node.rbdctl(&["volume", "create", &v, "-o", "fstype=ext4"])
        .ok();
    node.rbdctl(&["volume", "create", &v, "-o", "fstype=btrfs"])
        .code(4);

    node.rbdctl(&["volume", "rm", &v]).ok();
    assert!(!env.rbd_ls().contains(&v), "rbd ls still has {v}");
    assert!(!index_names(&env).contains(&v));
    node.rbdctl(&["volume", "inspect", &v]).code(3);
    node.rbdctl(&["volume", "rm", &v]).code(3);
}

#[test]
fn bad_options_exit_2_and_create_nothing() {
    let Some(env) = setup() else { return };
    let node = Node::new(&env);
    let v = node.volume("bad");
    for (opts, needle) in [
        (vec!["size=2Q"], "2Q"),
        (vec!["size=-1"], "-1"),
        (vec!["size=1e99"], "1e99"),
        (vec!["colour=red"], "colour"),
        (vec!["fstype=../../x"], "../../x"),
        (vec!["mount-options=bogus"], "bogus"),
        (vec!["mkfs-options=-O ^has_journal;rm"], "rm"),
        (vec!["access=maybe"], "maybe"),
        (vec!["from-snapshot=nosnap"], "nosnap"),
        (vec!["size"], "size"),
        (vec!["size=1G", "size=2G"], "twice"),
    ] {
        let mut args = vec!["volume", "create", &v];
        for o in &opts {
            args.extend(["-o", o]);
        }
        let r = node.rbdctl(&args).code(2);
        assert!(r.err.contains(needle), "{opts:?}: {}", r.err);
    }
    for bad_name in ["bad/name", "-x", "a b", ".hidden"] {
        node.rbdctl(&["volume", "create", bad_name, "-o", "size=64M"])
            .code(2);
    }
    let ls = env.rbd_ls();
    assert!(
        !ls.contains(&v) && !ls.iter().any(|i| i == ".hidden"),
        "a rejected create made an image: {ls:?}"
    );
    assert!(!index_names(&env).contains(&v));
    node.rbdctl(&["volume", "inspect", &v]).code(3);
    // The help documents the exit codes and the node settings.
    let help = node.rbdctl(&["volume", "--help"]).ok().stdout();
    for s in [
        "2  invalid input",
        "3  not found",
        "4  exists",
        "5  in use",
        "6  cluster unavailable",
        "RBD_STATE_DIR",
        "/var/lib/rbd-volumes",
    ] {
        assert!(help.contains(s), "{s} missing from:\n{help}");
    }
}

#[test]
fn attach_detach_refcount_in_state_and_mountinfo() {
    let Some(env) = setup() else { return };
    let node = Node::new(&env);
    let v = node.volume("att");
    node.rbdctl(&["volume", "create", &v, "-o", "size=64M"])
        .ok();

    let mp = PathBuf::from(
        node.rbdctl(&["volume", "attach", &v, "--mount-id", "m1"])
            .ok()
            .stdout()
            .trim(),
    );
    assert_eq!(mp, node.mount_root().join(&v));
    assert!(is_mounted(&mp), "{} not in mountinfo", mp.display());
    assert_eq!(node.mount_ids(&v), vec!["m1"]);
    assert_eq!(node.state()["volumes"][&v]["phase"], "mounted");
    // It was formatted on first attach, and that is recorded.
    assert_eq!(image_meta(&env, &v)["rbd-volumes.formatted"], "ext4");
    std::fs::write(mp.join("hello"), b"world").unwrap();

    // A second mount ID shares the mount.
    let mp2 = node
        .rbdctl(&["volume", "attach", &v, "--mount-id", "m2", "--ro"])
        .ok()
        .stdout();
    assert_eq!(PathBuf::from(mp2.trim()), mp);
    assert_eq!(node.mount_ids(&v), vec!["m1", "m2"]);
    let maps = node.mappings();
    assert_eq!(maps.len(), 1, "one mapping for both mount IDs: {maps:?}");
    assert_eq!(maps[0]["volume"], v.as_str());
    // Its device is protected from a plain unmap.
    let dev = maps[0]["device"].as_str().unwrap().to_owned();
    let r = node.rbdctl(&["unmap", &dev]).code(5);
    assert!(r.err.contains(&v) && r.err.contains("m1"), "{}", r.err);

    // rm while attached: exit 5 naming the mount IDs; nothing removed.
    let r = node.rbdctl(&["volume", "rm", &v]).code(5);
    assert!(r.err.contains("m1") && r.err.contains("m2"), "{}", r.err);
    assert!(env.rbd_ls().contains(&v));

    // status: attached here, the mapping by image id, its client among the watchers.
    let st = node
        .rbdctl(&["volume", "status", &v, "--format", "json"])
        .ok()
        .json();
    assert_eq!(st["local"]["mounted"], true);
    assert_eq!(st["local"]["mount_ids"], serde_json::json!(["m1", "m2"]));
    let id = env.rbd_json(&["info", &v])["id"].clone();
    assert_eq!(st["local_mappings"][0]["image_id"], id);
    let addr = env.rbd_json(&["status", &v])["watchers"][0]["address"].clone();
    assert_eq!(st["watchers"][0]["addr"], addr);
    assert_eq!(st["watchers"][0]["local_mapping"], true);

    // Unknown mount ID: exit 3, nothing changes.
    let r = node
        .rbdctl(&["volume", "detach", &v, "--mount-id", "nobody"])
        .code(3);
    assert!(r.err.contains("m1"), "{}", r.err);
    assert_eq!(node.mount_ids(&v), vec!["m1", "m2"]);

    node.rbdctl(&["volume", "detach", &v, "--mount-id", "m1"])
        .ok();
    assert!(is_mounted(&mp));
    assert_eq!(node.mount_ids(&v), vec!["m2"]);
    let r = node.rbdctl(&["volume", "rm", &v]).code(5);
    assert!(r.err.contains("m2") && !r.err.contains("m1"), "{}", r.err);

    node.rbdctl(&["volume", "detach", &v, "--mount-id", "m2"])
        .ok();
    assert!(!is_mounted(&mp));
    assert!(
        node.state()["volumes"].get(&v).is_none(),
        "{}",
        node.state()
    );
    assert!(node.mappings().is_empty());
    assert_eq!(
        env.rbd_json(&["status", &v])["watchers"],
        serde_json::json!([])
    );

    // The data survives a detach: attach again and read it.
    let mp = node
        .rbdctl(&["volume", "attach", &v, "--mount-id", "m3"])
        .ok()
        .stdout();
    let mp = PathBuf::from(mp.trim());
    assert_eq!(std::fs::read(mp.join("hello")).unwrap(), b"world");
    // rm --force detaches this node's mounts and removes it.
    node.rbdctl(&["volume", "rm", "--force", &v]).ok();
    assert!(!is_mounted(&mp));
    assert!(!env.rbd_ls().contains(&v));
    assert!(node.mappings().is_empty());
}

#[test]
fn mount_volume_shares_the_refcount_with_other_mount_ids() {
    let Some(env) = setup() else { return };
    let node = Node::new(&env);
    let v = node.volume("mnt");
    node.rbdctl(&["volume", "create", &v, "-o", "size=64M"])
        .ok();
    let dir = node.dir("data");
    let d = dir.to_str().unwrap();
    let canon = std::fs::canonicalize(&dir).unwrap();
    let want_id = format!(
        "rbdctl:{}",
        canon
            .to_str()
            .unwrap()
            .trim_start_matches('/')
            .replace('/', ":")
    );

    let out = node
        .rbdctl(&["mount", &v, d, "--format", "json"])
        .ok()
        .json();
    assert_eq!(out["mount_id"], want_id.as_str());
    assert!(is_mounted(&dir));
    assert_eq!(node.mount_ids(&v), vec![want_id.clone()]);
    // Image-only flags are refused for volumes.
    node.rbdctl(&["mount", &v, d, "--mkfs", "ext4"]).code(2);

    // Docker (another mount ID) shares it: same filesystem.
    let mp = node
        .rbdctl(&["volume", "attach", &v, "--mount-id", "container-1"])
        .ok()
        .stdout();
    let mp = PathBuf::from(mp.trim());
    std::fs::write(dir.join("via-bind"), b"1").unwrap();
    assert_eq!(std::fs::read(mp.join("via-bind")).unwrap(), b"1");
    let mut ids = node.mount_ids(&v);
    ids.sort();
    let mut want = vec!["container-1".to_string(), want_id.clone()];
    want.sort();
    assert_eq!(ids, want);

    // rm is refused and names both holders.
    let r = node.rbdctl(&["volume", "rm", &v]).code(5);
    assert!(
        r.err.contains(&want_id) && r.err.contains("container-1"),
        "{}",
        r.err
    );

    // umount drops only our reference; the volume stays mounted for the container.
    node.rbdctl(&["umount", d]).ok();
    assert!(!is_mounted(&dir));
    assert!(is_mounted(&mp));
    assert_eq!(node.mount_ids(&v), vec!["container-1"]);
    node.rbdctl(&["umount", d]).code(3);

    // Read-only mount beside the RW attach, then the last reference unmounts and unmaps.
    node.rbdctl(&["mount", "--read-only", &v, d]).ok();
    assert!(std::fs::write(dir.join("x"), b"x").is_err());
    assert_eq!(std::fs::read(dir.join("via-bind")).unwrap(), b"1");
    node.rbdctl(&["volume", "detach", &v, "--mount-id", "container-1"])
        .ok();
    assert!(is_mounted(&dir));
    node.rbdctl(&["umount", d]).ok();
    assert!(!is_mounted(&dir) && !is_mounted(&mp));
    assert!(node.mappings().is_empty());
    node.rbdctl(&["volume", "rm", &v]).ok();
}

#[test]
fn snapshot_resize_and_remove_force() {
    let Some(env) = setup() else { return };
    let node = Node::new(&env);
    let v = node.volume("snap");
    node.rbdctl(&["volume", "create", &v, "-o", "size=64M"])
        .ok();
    node.rbdctl(&["volume", "attach", &v, "--mount-id", "m1"])
        .ok();
    node.rbdctl(&["volume", "snapshot", &v, "s1"]).ok();
    let snaps = env.rbd_json(&["snap", "ls", &v]);
    assert!(
        snaps.as_array().unwrap().iter().any(|s| s["name"] == "s1"),
        "{snaps}"
    );
    // The driver rejects a duplicate snapshot name as invalid input.
    let r = node.rbdctl(&["volume", "snapshot", &v, "s1"]).code(2);
    assert!(r.err.contains("s1"), "{}", r.err);
    node.rbdctl(&["volume", "detach", &v, "--mount-id", "m1"])
        .ok();

    node.rbdctl(&["volume", "resize", &v, "--size", "2Q"])
        .code(2);
    let r = node
        .rbdctl(&["volume", "resize", &v, "--size", "128M"])
        .ok()
        .stdout();
    assert!(
        r.contains("resized volume")
            && r.contains("128 MiB")
            && r.contains("next read-write attach"),
        "the resize says the filesystem waits for the next attach: {r}"
    );
    assert_eq!(env.rbd_json(&["info", &v])["size"], 128 << 20);
    // The filesystem grows at the next read-write attach.
    let mp = node
        .rbdctl(&["volume", "attach", &v, "--mount-id", "m2"])
        .ok()
        .stdout();
    let mp = PathBuf::from(mp.trim());
    let st = nix_statvfs(&mp);
    assert!(st > 100 << 20, "filesystem not grown: {st} bytes");
    node.rbdctl(&["volume", "detach", &v, "--mount-id", "m2"])
        .ok();

    // A plain rm is refused because of the snapshot; --force removes both.
    node.rbdctl(&["volume", "rm", &v]).code(5);
    node.rbdctl(&["volume", "rm", "--force", &v]).ok();
    assert!(!env.rbd_ls().contains(&v));
}

/// Total bytes of the filesystem mounted at `p` (`df`'s size column).
fn nix_statvfs(p: &std::path::Path) -> u64 {
    let out = std::process::Command::new("timeout")
        .args(["30", "df", "-B1", "--output=size"])
        .arg(p)
        .output()
        .expect("df");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .expect("df size")
}

#[test]
fn the_docker_plugins_config_file_is_shared() {
    let Some(env) = setup() else { return };
    let node = Node::new(&env);
    let v = node.volume("cfg");
    let conf = node.write_plugin_config(
        "\n[ceph]\nid = \"admin\"\n\n[defaults]\nsize = \"48M\"\nmount-options = \"noatime\"\n\n[timeouts]\nread = 8\n",
    );
    // Created with the file's defaults, attached with the file's node settings...
    node.rbdctl_with_config(&conf, &["volume", "create", &v])
        .ok();
    assert_eq!(env.rbd_json(&["info", &v])["size"], 48 << 20);
    let mp = node
        .rbdctl_with_config(&conf, &["volume", "attach", &v, "--mount-id", "m1"])
        .ok()
        .stdout();
    assert_eq!(PathBuf::from(mp.trim()), node.mount_root().join(&v));
    // ... which are the same state as the environment variables name.
    assert_eq!(node.mount_ids(&v), vec!["m1"]);
    let st = node
        .rbdctl(&["volume", "status", &v, "--format", "json"])
        .ok()
        .json();
    assert_eq!(st["local"]["mount_ids"], serde_json::json!(["m1"]));
    assert_eq!(node.mappings().len(), 1);
    // A flag still wins over the file: another (empty) state dir beside the same mount
    // root is refused (the mount root belongs to the file's state dir) rather than have
    // recovery take the mount for an orphan.
    let other = node.dir("other-state");
    let r = node
        .rbdctl_with_config(
            &conf,
            &[
                "volume",
                "detach",
                &v,
                "--mount-id",
                "m1",
                "--state-dir",
                other.to_str().unwrap(),
            ],
        )
        .code(2);
    let other_canon = std::fs::canonicalize(&other).unwrap();
    let state_canon = std::fs::canonicalize(node.state_dir()).unwrap();
    assert!(
        r.err.contains("belongs to the state dir")
            && r.err.contains(other_canon.to_str().unwrap())
            && r.err.contains(state_canon.to_str().unwrap()),
        "{}",
        r.err
    );
    assert!(is_mounted(&node.mount_root().join(&v)));
    assert_eq!(node.mount_ids(&v), vec!["m1"]);
    node.rbdctl(&["volume", "detach", &v, "--mount-id", "m1"])
        .ok();
    assert!(node.mappings().is_empty());
    // A broken file is refused with its name, before anything is done.
    std::fs::write(&conf, "state-dir = [").unwrap();
    let r = node
        .rbdctl_with_config(&conf, &["volume", "rm", &v])
        .code(2);
    assert!(r.err.contains("plugin.toml"), "{}", r.err);
    assert!(env.rbd_ls().contains(&v));
}
