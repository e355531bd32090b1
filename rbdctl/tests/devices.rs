//! `rbdctl map` / `unmap` / `device list` / `mount` / `umount` of images, with the real
//! userspace mapper (FUSE + loop) on the real dev cluster, as root. Each test runs on a
//! node of its own (state, mount and run dirs) and cross-checks with Ceph's `rbd`.

mod common;

use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileTypeExt;
use std::path::Path;
use std::time::{Duration, Instant};

use common::node::{Node, is_mounted};
use common::{Env, Run};
use serde_json::Value;

fn setup() -> Option<Env> {
    let env = common::env()?;
    if !testkit::require_root() {
        return None;
    }
    Some(env)
}

fn create_image(env: &Env, name: &str, size: &str) -> String {
    env.rbd(&["create", "--size", size, name]);
    env.rbd_json(&["info", name])["id"]
        .as_str()
        .expect("image id")
        .to_owned()
}

/// The watcher addresses `rbd status` reports.
fn watchers(env: &Env, name: &str) -> Vec<String> {
    env.rbd_json(&["status", name])["watchers"]
        .as_array()
        .expect("watchers")
        .iter()
        .map(|w| w["address"].as_str().unwrap_or_default().to_owned())
        .collect()
}

fn device_of(r: &Run) -> String {
    let dev = r.stdout().trim().to_owned();
    assert!(dev.starts_with("/dev/"), "map printed {dev:?}");
    dev
}

fn mapping_of<'v>(maps: &'v [Value], dev: &str) -> &'v Value {
    maps.iter()
        .find(|m| m["device"] == dev)
        .unwrap_or_else(|| panic!("{dev} not in device list: {maps:?}"))
}

#[test]
fn map_shows_id_and_client_address_and_data_reaches_the_image() {
    let Some(env) = setup() else { return };
    let node = Node::new(&env);
    let img = node.image("map");
    let id = create_image(&env, &img, "32M");

    let dev = device_of(&node.rbdctl(&["map", &img]).ok());
    let md = std::fs::metadata(&dev).expect("device exists");
    assert!(
        md.file_type().is_block_device(),
        "{dev} is not a block device"
    );

    // device list (JSON): the image id, and the exact client address rbd status reports.
    let maps = node.mappings();
    assert_eq!(maps.len(), 1, "{maps:?}");
    let m = mapping_of(&maps, &dev);
    assert_eq!(m["image_id"], id.as_str());
    assert_eq!(m["image"], img.as_str());
    assert_eq!(m["pool"], "rbd");
    assert_eq!(m["backend"], "userspace");
    assert!(m["pid"].as_u64().is_some(), "{m}");
    let addr = m["client_addr"]
        .as_str()
        .expect("client address")
        .to_owned();
    assert_eq!(watchers(&env, &img), vec![addr.clone()]);
    // The table has the same, under the documented columns; showmapped is the same list.
    let table = node.rbdctl(&["device", "list"]).ok().stdout();
    let header = table.lines().next().unwrap_or_default();
    for col in [
        "POOL",
        "NAMESPACE",
        "IMAGE",
        "ID",
        "SNAP",
        "DEVICE",
        "CLIENT",
        "BACKEND",
        "PID",
    ] {
        assert!(header.split_whitespace().any(|h| h == col), "{header}");
    }
    let row = table
        .lines()
        .find(|l| l.contains(&dev))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(row.contains(&id) && row.contains(&addr), "{row}");
    assert_eq!(node.rbdctl(&["showmapped"]).ok().stdout(), table);

    // Data written to the device is what `rbd export` reads from the image.
    let data = Env::random(3 << 20);
    let offset = 5u64 << 20;
    {
        let mut f = OpenOptions::new().write(true).open(&dev).expect("open rw");
        f.seek(SeekFrom::Start(offset)).unwrap();
        f.write_all(&data).unwrap();
        f.sync_all().unwrap();
    }
    let exported = env.rbd_export(&img);
    assert_eq!(exported.len(), 32 << 20);
    let off = offset as usize;
    assert!(
        exported[off..off + data.len()] == data[..],
        "exported bytes differ from what was written to {dev}"
    );
    assert!(exported[..off].iter().all(|b| *b == 0));

    // Unmap by device: the watch goes away, the list is empty.
    node.rbdctl(&["unmap", &dev]).ok();
    assert!(node.mappings().is_empty());
    assert!(watchers(&env, &img).is_empty());
}

#[test]
fn read_only_and_snapshot_maps_refuse_writes() {
    let Some(env) = setup() else { return };
    let node = Node::new(&env);
    let img = node.image("ro");
    create_image(&env, &img, "16M");
    let data = Env::random(1 << 20);
    let src = node.root.join("data");
    std::fs::write(&src, &data).unwrap();
    env.rbd(&[
        "import",
        "--no-progress",
        src.to_str().unwrap(),
        &format!("{img}-src"),
    ]);
    node.track_image(&format!("{img}-src"));
    env.rbd(&["snap", "create", &format!("{img}-src@s1")]);

    let dev = device_of(&node.rbdctl(&["map", "--read-only", &img]).ok());
    let name = Path::new(&dev)
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    let ro = std::fs::read_to_string(format!("/sys/block/{name}/ro")).unwrap();
    assert_eq!(ro.trim(), "1", "{dev} is not read-only");
    let wrote = OpenOptions::new().write(true).open(&dev).and_then(|mut f| {
        f.write_all(&[0xab; 4096])?;
        f.sync_all()
    });
    assert!(
        wrote.is_err(),
        "a write to the read-only mapping {dev} succeeded"
    );
    assert!(
        env.rbd_export(&img).iter().all(|b| *b == 0),
        "the image changed"
    );
    assert_eq!(mapping_of(&node.mappings(), &dev)["read_only"], true);

    let sdev = device_of(
        &node
            .rbdctl(&["map", &format!("{img}-src"), "--snap", "s1"])
            .ok(),
    );
    let m = node.mappings();
    let sm = mapping_of(&m, &sdev);
    assert_eq!(sm["snap"], "s1");
    assert_eq!(sm["read_only"], true);
    let mut back = vec![0u8; data.len()];
    std::fs::File::open(&sdev)
        .unwrap()
        .read_exact(&mut back)
        .unwrap();
    assert!(back == data, "snapshot mapping reads other data");

    // unmap IMAGE@snap touches only the snapshot's mapping.
    node.rbdctl(&["unmap", &format!("{img}-src@s1")]).ok();
    let left = node.mappings();
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(left[0]["device"], dev.as_str());
    node.rbdctl(&["unmap", &img]).ok();
    assert!(node.mappings().is_empty());
}

#[test]
fn unmap_by_name_touches_only_the_current_image_id() {
    let Some(env) = setup() else { return };
    let node = Node::new(&env);
    let x = node.image("stale");
    let old_name = format!("{x}-old");
    node.track_image(&old_name);
    let id1 = create_image(&env, &x, "16M");
    let dev1 = device_of(&node.rbdctl(&["map", &x]).ok());

    // Renamed while mapped, and a new image takes the name: X now has another id.
    env.rbd(&["rename", &x, &old_name]);
    let id2 = create_image(&env, &x, "16M");
    assert_ne!(id1, id2);

    // `unmap X` resolves X to id2, which is not mapped: refused, naming the stale
    // device, which is left alone.
    let r = node.rbdctl(&["unmap", &x]).code(3);
    assert!(r.err.contains(&id2), "{}", r.err);
    assert!(
        r.err.contains(&dev1) && r.err.contains(&id1),
        "the stale mapping is not reported: {}",
        r.err
    );
    let maps = node.mappings();
    assert_eq!(maps.len(), 1);
    assert_eq!(mapping_of(&maps, &dev1)["image_id"], id1.as_str());
    assert!(mapping_of(&maps, &dev1)["pid"].as_u64().is_some());
    assert!(watchers(&env, &x).is_empty(), "the new image was touched");

    // Map the new X as well: `unmap X` takes exactly that one, and notes the stale one.
    let dev2 = device_of(&node.rbdctl(&["map", &x]).ok());
    assert_ne!(dev1, dev2);
    let r = node.rbdctl(&["unmap", &x, "--format", "json"]).ok();
    let un = r.json()["unmapped"].as_array().expect("unmapped").clone();
    assert_eq!(un.len(), 1, "{un:?}");
    assert_eq!(un[0]["device"], dev2.as_str());
    assert_eq!(un[0]["image_id"], id2.as_str());
    assert!(
        r.err.contains(&dev1),
        "no note about the stale mapping: {}",
        r.err
    );
    let maps = node.mappings();
    assert_eq!(maps.len(), 1);
    assert_eq!(maps[0]["device"], dev1.as_str());

    // The renamed image is found by its new name (same id) and unmapped.
    node.rbdctl(&["unmap", &old_name]).ok();
    assert!(node.mappings().is_empty());

    // Removed while mapped (moved to the trash): the name resolves to nothing.
    let dev3 = device_of(&node.rbdctl(&["map", &x]).ok());
    env.rbd(&["trash", "mv", &x]);
    let r = node.rbdctl(&["unmap", &x]).code(3);
    assert!(r.err.contains("does not exist"), "{}", r.err);
    assert!(r.err.contains(&dev3) && r.err.contains(&id2), "{}", r.err);
    // ... and a third image of that name does not own the old device either.
    let id3 = create_image(&env, &x, "16M");
    let r = node.rbdctl(&["unmap", &x]).code(3);
    assert!(r.err.contains(&id3) && r.err.contains(&dev3), "{}", r.err);
    assert_eq!(node.mappings().len(), 1);
    // By device it goes.
    node.rbdctl(&["unmap", &dev3]).ok();
    assert!(node.mappings().is_empty());
}

#[test]
fn a_second_writer_is_refused_and_readers_are_not() {
    let Some(env) = setup() else { return };
    let node = Node::new(&env);
    let img = node.image("writer");
    let id = create_image(&env, &img, "16M");
    let dev = device_of(&node.rbdctl(&["map", "--exclusive", &img]).ok());
    let addr = mapping_of(&node.mappings(), &dev)["client_addr"]
        .as_str()
        .unwrap()
        .to_owned();

    let r = node.rbdctl(&["map", &img]).code(5);
    assert!(
        r.err.contains(&addr),
        "the other client is not named: {}",
        r.err
    );
    assert_eq!(node.mappings().len(), 1, "a refused map left a mapping");
    // With --force the exclusive lock still refuses a second exclusive writer.
    let r = node.rbdctl(&["map", "--force", "--exclusive", &img]);
    assert_ne!(r.code, 0, "a second exclusive mapping succeeded");
    assert_eq!(node.mappings().len(), 1);

    let ro = device_of(&node.rbdctl(&["map", "--read-only", &img]).ok());
    assert_eq!(node.mappings().len(), 2);
    // unmap IMAGE takes every mapping of its id.
    let r = node
        .rbdctl(&["unmap", &img, "--format", "json"])
        .ok()
        .json();
    let mut devs: Vec<&str> = r["unmapped"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            assert_eq!(m["image_id"], id.as_str());
            m["device"].as_str().unwrap()
        })
        .collect();
    devs.sort();
    let mut want = vec![dev.as_str(), ro.as_str()];
    want.sort();
    assert_eq!(devs, want);
    assert!(node.mappings().is_empty());
    assert!(watchers(&env, &img).is_empty());
}

#[test]
fn bad_input_maps_nothing() {
    let Some(env) = setup() else { return };
    let node = Node::new(&env);
    let img = node.image("bad");
    create_image(&env, &img, "16M");
    for (args, code) in [
        (vec!["map", &img, "-o", "bogus"], 2),
        (vec!["map", &img, "-o", "queue_depth=0"], 2),
        (vec!["map", &img, "--backend", "floppy"], 2),
        (vec!["map", &format!("{img}@nosuch")], 3),
        (vec!["map", &format!("{img}@a"), "--snap", "b"], 2),
        (vec!["map", "rbd/no-such-image-rbdctl"], 3),
        (vec!["map", "bad/spec/with/slashes"], 2),
        (vec!["unmap", "/dev/rbdctl-no-such-device"], 3),
        (vec!["unmap", &img], 3),
    ] {
        let r = node.rbdctl(&args).code(code);
        assert!(!r.err.is_empty(), "{args:?}: no message");
    }
    assert!(node.mappings().is_empty());
    assert!(watchers(&env, &img).is_empty());
    // Every documented exit code is in the help.
    let help = node.rbdctl(&["map", "--help"]).ok().stdout();
    for c in [
        "2  bad usage",
        "3  not found",
        "5  in use",
        "6  cluster unavailable",
    ] {
        assert!(help.contains(c), "{help}");
    }
}

#[test]
fn mount_image_formats_only_when_asked_and_umount_unmaps() {
    let Some(env) = setup() else { return };
    let node = Node::new(&env);
    let img = node.image("mnt");
    create_image(&env, &img, "64M");
    let dir = node.dir("m");
    let d = dir.to_str().unwrap();

    // Blank image: refused without --mkfs, nothing left mapped or mounted.
    let r = node.rbdctl(&["mount", &img, d]).code(2);
    assert!(r.err.contains("--mkfs"), "{}", r.err);
    assert!(node.mappings().is_empty());
    assert!(!is_mounted(&dir));
    // A mount option outside the allowlist: refused before mapping.
    node.rbdctl(&[
        "mount",
        &img,
        d,
        "--mkfs",
        "ext4",
        "--mount-options",
        "bogus",
    ])
    .code(2);
    assert!(node.mappings().is_empty());

    node.rbdctl(&[
        "mount",
        &img,
        d,
        "--mkfs",
        "ext4",
        "--mount-options",
        "noatime",
    ])
    .ok();
    assert!(is_mounted(&dir));
    let data = Env::random(256 << 10);
    std::fs::write(dir.join("f"), &data).unwrap();
    let maps = node.mappings();
    assert_eq!(maps.len(), 1);
    let dev = maps[0]["device"].as_str().unwrap().to_owned();

    // In use: unmap refuses a mounted device; umount refuses a busy mount.
    let r = node.rbdctl(&["unmap", &dev]).code(5);
    assert!(r.err.contains(d), "{}", r.err);
    let r = node.rbdctl_in(&dir, &["umount", d]).code(5);
    assert!(r.err.contains("busy"), "{}", r.err);
    assert!(is_mounted(&dir));

    node.rbdctl(&["umount", d]).ok();
    assert!(!is_mounted(&dir));
    assert!(node.mappings().is_empty());
    assert!(watchers(&env, &img).is_empty());

    // Mounted again (no --mkfs: the filesystem is found): the data is there. A second
    // read-write mount elsewhere is refused: the first mapping has the image open.
    node.rbdctl(&["mount", &img, d]).ok();
    assert_eq!(std::fs::read(dir.join("f")).unwrap(), data);
    let dir2 = node.dir("m2");
    let r = node
        .rbdctl(&["mount", &img, dir2.to_str().unwrap()])
        .code(5);
    assert!(r.err.contains("is open by"), "{}", r.err);
    assert!(!is_mounted(&dir2));
    assert_eq!(node.mappings().len(), 1);
    node.rbdctl(&["umount", d]).ok();

    // Read-only: writes fail.
    node.rbdctl(&["mount", "--read-only", &img, d]).ok();
    assert_eq!(std::fs::read(dir.join("f")).unwrap(), data);
    assert!(std::fs::write(dir.join("g"), b"x").is_err());
    node.rbdctl(&["umount", d]).ok();
    assert!(node.mappings().is_empty());
    // Not mounted any more.
    node.rbdctl(&["umount", d]).code(3);
}

#[test]
fn cluster_unavailable_is_exit_6_within_the_timeout() {
    let Some(env) = setup() else { return };
    let node = Node::new(&env);
    // The dev cluster's conf with the monitors moved to ports nobody listens on.
    let text = std::fs::read_to_string(&env.conf).unwrap();
    let dead: String = text
        .lines()
        .map(|l| {
            if l.trim_start().starts_with("mon host") || l.trim_start().starts_with("mon_host") {
                "mon host = v2:127.0.0.1:9 v1:127.0.0.1:10".to_string()
            } else {
                l.to_string()
            }
        })
        .map(|l| l + "\n")
        .collect();
    let conf = node.root.join("dead.conf");
    std::fs::write(&conf, dead).unwrap();
    let dead_env = Env { conf };
    let dead_node = Node::new(&dead_env);
    let img = node.image("dead");
    create_image(&env, &img, "16M");
    for args in [
        vec!["--timeout", "3", "map", img.as_str()],
        vec!["--timeout", "3", "unmap", img.as_str()],
        vec!["--timeout", "3", "volume", "ls"],
        vec!["--timeout", "3", "volume", "create", "rbdctl-dead-vol"],
    ] {
        let t = Instant::now();
        let r = dead_node.rbdctl(&args).code(6);
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "{args:?} took {:?}",
            t.elapsed()
        );
        assert!(r.err.contains("timed out"), "{args:?}: {}", r.err);
    }
    assert!(
        !Path::new(&dead_node.state_dir())
            .join("state.json")
            .exists()
    );
}

#[test]
fn a_device_left_by_a_removed_image_is_never_unmapped_by_its_old_name() {
    let Some(env) = setup() else { return };
    // Dropped last: lifts the blocklist entry after the node has unmapped everything.
    let fence = common::Cleanup::new(&env);
    let node = Node::new(&env);
    let x = node.image("gone");
    let old_id = create_image(&env, &x, "16M");
    let dev = device_of(&node.rbdctl(&["map", &x]).ok());
    let addr = mapping_of(&node.mappings(), &dev)["client_addr"]
        .as_str()
        .unwrap()
        .to_owned();

    let pid = mapping_of(&node.mappings(), &dev)["pid"].as_u64().unwrap();

    // The seed-004 situation: the mapper dies (as in a crash) and leaves its device; its
    // client is fenced, so the image can be removed, and a new image gets the name.
    // (A live userspace mapper that gets fenced tears itself down within seconds; a dead
    // one cannot, like a kernel mapping on a node that lost the cluster.) The device stays
    // held, as by the container's filesystem on it: otherwise autoclear frees the loop
    // device when the mapper dies, and any process on the machine (a test running beside
    // this one) may take it. (A reused loop device is covered by rbd-driver's userspace
    // test `a_dead_mappers_record_never_claims_its_reused_loop_device`.)
    let holder = std::fs::File::open(&dev).unwrap();
    let killed = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    fence.blocklisted(&addr);
    let r = env.tool("ceph", &["osd", "blocklist", "add", &addr]);
    assert_eq!(r.code, 0, "{}", r.err);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !watchers(&env, &x).is_empty() {
        assert!(
            Instant::now() < deadline,
            "the fenced watch did not go away"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    env.rbd(&["rm", "--no-progress", &x]);
    let new_id = create_image(&env, &x, "16M");
    assert_ne!(old_id, new_id);

    // unmap X: refused (the new X is not mapped), the old device named, and left alone.
    let r = node.rbdctl(&["unmap", &x]).code(3);
    assert!(
        r.err.contains(&new_id) && r.err.contains(&dev) && r.err.contains(&old_id),
        "{}",
        r.err
    );
    let maps = node.mappings();
    assert_eq!(maps.len(), 1, "{maps:?}");
    assert_eq!(maps[0]["image_id"], old_id.as_str());
    assert_eq!(
        maps[0]["pid"],
        Value::Null,
        "the dead mapper is listed as alive"
    );
    // The new image can be mapped beside the stale record (on another device: the old
    // one is still held); unmap X takes only it.
    let dev2 = device_of(&node.rbdctl(&["map", &x]).ok());
    assert_ne!(dev2, dev);
    node.rbdctl(&["unmap", &x]).ok();
    let maps = node.mappings();
    assert_eq!(maps.len(), 1, "{maps:?}");
    assert_eq!(maps[0]["image_id"], old_id.as_str());
    assert_eq!(maps[0]["device"], dev.as_str());
    assert!(watchers(&env, &x).is_empty());
    // The stale record goes by device (and image id, to be exact).
    node.rbdctl(&["unmap", &dev, "--image-id", "nosuchid"])
        .code(3);
    // The filesystem on it is gone (lazily unmounted, as the driver does).
    drop(holder);
    node.rbdctl(&["unmap", &dev, "--image-id", &old_id]).ok();
    assert!(node.mappings().is_empty());
}
