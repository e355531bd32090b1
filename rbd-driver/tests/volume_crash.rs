//! Kill -9 at every step of create and remove, then a restart: recovery leaves no orphan
//! image, index entry or state entry (creates are rolled back, or kept when they had
//! already published; removes are finished).
//!
//! Each operation runs in a child process (`rbd-volume-op`, built with the
//! `crash-points` feature) with `RBD_VOLUMES_CRASH_AT=<op:step>`; the child sends itself
//! `SIGKILL` at that step. The test checks the child really died by `SIGKILL`, then
//! constructs a new `Driver` (which recovers) and inspects the cluster and the state file.

mod volume_support;

use std::os::unix::process::ExitStatusExt;
use std::process::Command;

use rbd_driver::volume::Phase;
use rbd_driver::volume::crash::{CRASH_ENV, CRASH_POINTS};
use rbd_driver::volume::lock::lock_volume;
use rbd_driver::volume::state::{CreatePhase, PendingCreate, PendingOp};
use rbd_driver::volume::{EntryState, StateStore};
use volume_support::attach::{
    assert_detached, fs_size, mappings, mount_at, node_config, pid_alive, sha256, write_file,
};
use volume_support::{Env, POOL, env, parse_op_output, spec};

/// Runs `rbd-volume-op` for node `node` with an optional crash point.
pub fn run_op(
    env: &Env,
    node: &str,
    crash_at: Option<&str>,
    args: &[&str],
) -> std::process::Output {
    let cfg = env.config(node);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rbd-volume-op"));
    cmd.arg("--conf")
        .arg(&env.conf)
        .arg("--state-dir")
        .arg(&cfg.state_dir)
        .arg("--mount-root")
        .arg(&cfg.mount_root)
        .arg("--run-dir")
        .arg(&cfg.mapper.run_dir)
        .arg("--node")
        .arg(&cfg.node_id)
        .arg("--cluster-namespace")
        .arg(&cfg.cluster.namespace)
        .args(["--backend", "userspace"])
        .env_remove(CRASH_ENV);
    if let Some(b) = &cfg.mapper.umap_bin {
        cmd.arg("--umap-bin").arg(b);
    }
    cmd.args(args);
    if let Some(p) = crash_at {
        cmd.env(CRASH_ENV, p);
    }
    // Bounded: an operation that hangs fails the test instead of stalling it.
    let out = testkit::cmd::run(&mut cmd, std::time::Duration::from_secs(300));
    if let Some(p) = crash_at {
        assert_eq!(
            out.status.signal(),
            Some(libc::SIGKILL),
            "the child should have been killed at {p}: status {:?}, stdout {}, stderr {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

/// Crash points reached only on some paths (a second mount ID, a non-last detach, fsck
/// on attach, a grow at attach): each has a test of its own below, not the loops over
/// every `attach:`/`detach:` point.
const CONDITIONAL: &[&str] = &[
    "attach:sharing",
    "attach:shared",
    "attach:checking",
    "attach:checked",
    "attach:growing",
    "attach:grown",
    "attach:growing-online",
    "attach:grown-online",
    "detach:releasing",
    "detach:released",
];

fn ok(out: &std::process::Output) -> serde_json::Value {
    let v = parse_op_output(&out.stdout).unwrap_or_else(|| {
        panic!(
            "no JSON from rbd-volume-op: {} / {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert_eq!(v["ok"], true, "{v}");
    v["result"].clone()
}

#[test]
fn every_crash_point_is_listed_once() {
    let mut seen = std::collections::BTreeSet::new();
    for p in CRASH_POINTS {
        assert!(seen.insert(*p), "{p} twice");
        let (op, step) = p.split_once(':').unwrap();
        assert!(
            ["create", "attach", "detach", "remove"].contains(&op),
            "{p}"
        );
        assert!(!step.is_empty());
    }
    for p in CONDITIONAL {
        assert!(CRASH_POINTS.contains(p), "{p} is not a crash point");
    }
    assert!(CRASH_POINTS.len() >= 16);
}

#[test]
fn kill_during_create_then_restart_leaves_nothing_half_made() {
    let Some(env) = env(false) else { return };
    for point in CRASH_POINTS.iter().filter(|p| p.starts_with("create:")) {
        if point.starts_with("create:format") {
            // Below, with a mapper.
            continue;
        }
        let name = env.name("crc");
        run_op(
            &env,
            "a",
            Some(point),
            &["create", &name, "size=16M", "fstype=ext4"],
        );
        let cfg = env.config("a");
        let before = env.state(&cfg);
        assert!(
            before.pending.contains_key(&name),
            "{point}: the pending create is recorded: {before:?}"
        );
        // Restart.
        let d = env.driver("a");
        let rep = d.last_recovery().unwrap();
        assert!(rep.errors.is_empty(), "{point}: {rep:?}");
        assert!(
            rep.actions.iter().any(|a| a.volume == name),
            "{point}: recovery says what it did: {rep:?}"
        );
        let st = env.state(&cfg);
        assert!(
            st.pending.is_empty() && st.volumes.is_empty(),
            "{point}: {st:?}"
        );
        if *point == "create:published" {
            // It had completed in the cluster: kept, whole and usable.
            let e = env.index_entry(&name).unwrap();
            assert_eq!(e.state, EntryState::Ready, "{point}");
            let info = d.get(&name).unwrap();
            assert_eq!(info.image_id, e.image_id);
            assert_eq!(env.meta(POOL, "", &name)["rbd-volumes.token"], e.token);
            d.remove(&name, false).unwrap();
        } else {
            env.assert_nothing(POOL, "", &name);
            // And the name is free again.
            d.create(&name, &spec(&[("size", "16M")])).unwrap();
            d.remove(&name, false).unwrap();
        }
        env.assert_nothing(POOL, "", &name);
    }
}

#[test]
fn kill_during_clone_create_rolls_back_the_protection_too() {
    let Some(env) = env(false) else { return };
    let d = env.driver("a");
    let base = env.name("base");
    d.create(&base, &spec(&[("size", "16M")])).unwrap();
    d.snapshot(&base, "s1").unwrap();
    drop(d);
    for point in ["create:image-created", "create:metadata-set"] {
        let name = env.name("crclone");
        run_op(
            &env,
            "a",
            Some(point),
            &["create", &name, &format!("from-snapshot={base}@s1")],
        );
        let protected_now = env
            .image(POOL, "", &base)
            .unwrap()
            .snap_is_protected("s1")
            .unwrap();
        let d = env.driver("a");
        let rep = d.last_recovery().unwrap();
        assert!(rep.errors.is_empty(), "{point}: {rep:?}");
        env.assert_nothing(POOL, "", &name);
        let base_img = env.image(POOL, "", &base).unwrap();
        // If the crashed create protected the snapshot, the rollback unprotected it.
        assert!(
            !base_img.snap_is_protected("s1").unwrap(),
            "{point} (was {protected_now})"
        );
        drop(base_img);
    }
    env.driver("a").remove(&base, true).unwrap();
    env.assert_nothing(POOL, "", &base);
}

#[test]
fn kill_during_remove_then_restart_finishes_the_remove() {
    let Some(env) = env(false) else { return };
    for point in CRASH_POINTS.iter().filter(|p| p.starts_with("remove:")) {
        let name = env.name("crr");
        let d = env.driver("a");
        d.create(&name, &spec(&[("size", "16M")])).unwrap();
        drop(d);
        run_op(&env, "a", Some(point), &["remove", &name]);
        let cfg = env.config("a");
        assert!(env.state(&cfg).pending.contains_key(&name), "{point}");
        let d = env.driver("a");
        let rep = d.last_recovery().unwrap();
        assert!(rep.errors.is_empty(), "{point}: {rep:?}");
        assert!(
            rep.actions.iter().any(|a| a.volume == name),
            "{point}: {rep:?}"
        );
        env.assert_nothing(POOL, "", &name);
        assert!(matches!(
            d.get(&name),
            Err(rbd_driver::DriverError::NoSuchVolume(_))
        ));
    }
}

#[test]
fn recovery_skips_volumes_a_live_operation_holds_and_finishes_them_later() {
    let Some(env) = env(false) else { return };
    let cfg = env.config("a");
    let name = env.name("busy");
    // A crashed create record, whose volume lock is held by a "live" operation.
    let store = StateStore::new(&cfg.state_dir).unwrap();
    store
        .update(|st| {
            st.pending.insert(
                name.clone(),
                PendingOp::Create(PendingCreate {
                    pool: POOL.into(),
                    namespace: String::new(),
                    index_pool: POOL.into(),
                    token: "t0".into(),
                    image_id: None,
                    protected_parent: None,
                    started_at: 0,
                    phase: CreatePhase::Claiming,
                }),
            );
        })
        .unwrap();
    let held = lock_volume(&cfg.state_dir, &name, std::time::Duration::from_secs(5)).unwrap();
    let d = env.driver("a");
    let rep = d.last_recovery().unwrap();
    assert_eq!(rep.busy, vec![name.clone()], "{rep:?}");
    assert!(env.state(&cfg).pending.contains_key(&name));
    drop(held);
    let rep = d.recover().unwrap();
    assert!(rep.busy.is_empty() && rep.errors.is_empty(), "{rep:?}");
    assert!(env.state(&cfg).pending.is_empty());
}

#[test]
fn the_op_tool_runs_operations_without_a_crash_point() {
    let Some(env) = env(false) else { return };
    let name = env.name("op");
    let out = run_op(&env, "a", None, &["create", &name, "size=16M"]);
    let v = ok(&out);
    assert_eq!(v["name"], name.as_str());
    assert_eq!(v["size"], 16 << 20);
    let got = ok(&run_op(&env, "a", None, &["get", &name]));
    assert_eq!(got["image_id"], v["image_id"]);
    ok(&run_op(&env, "a", None, &["remove", &name]));
    env.assert_nothing(POOL, "", &name);
}

/// The pids of the mapper processes serving `image_id` on node `cfg`.
fn mapper_pids(cfg: &rbd_driver::volume::DriverConfig, image_id: &str) -> Vec<u32> {
    mappings(cfg, POOL, image_id)
        .iter()
        .filter_map(|m| m.pid)
        .collect()
}

/// After recovery the volume must work normally: attach, write, read back, detach.
fn assert_usable(env: &Env, node: &str, name: &str, id: &str) {
    let cfg = node_config(env, node);
    let d = env.driver_with(cfg.clone());
    let mp = d.attach(name, "after-crash", None).unwrap();
    let sum = write_file(&mp.join("after-crash"), 256 << 10, 42);
    assert_eq!(sha256(&mp.join("after-crash")), sum);
    d.detach(name, "after-crash").unwrap();
    assert_detached(env, &cfg, name, id, &[]);
}

#[test]
fn kill_during_attach_then_restart_leaves_no_mount_mapping_or_refcount() {
    let Some(env) = env(true) else { return };
    let cfg = node_config(&env, "a");
    for point in CRASH_POINTS
        .iter()
        .filter(|p| p.starts_with("attach:") && !CONDITIONAL.contains(p))
    {
        let name = env.name("cra");
        let id = env
            .driver_with(cfg.clone())
            .create(&name, &spec(&[("size", "32M")]))
            .unwrap()
            .image_id;
        run_op(&env, "a", Some(point), &["attach", &name, "m1"]);
        // The interrupted step is recorded, and what it left is really there.
        let st = env.state(&cfg);
        let v = st
            .volumes
            .get(&name)
            .unwrap_or_else(|| panic!("{point}: {st:?}"));
        assert!(v.mount_ids.contains("m1"), "{point}: {v:?}");
        assert_ne!(v.phase, Phase::Mounted, "{point}");
        let pids = mapper_pids(&cfg, &id);
        if *point != "attach:mapping" {
            assert_eq!(
                pids.len(),
                1,
                "{point}: the mapping outlives the killed process"
            );
        }
        if *point == "attach:mounted" {
            assert!(mount_at(&cfg.mount_root.join(&name)).is_some(), "{point}");
        }
        // Restart: recovery rolls the attach back.
        let d = env.driver_with(cfg.clone());
        let rep = d.last_recovery().unwrap();
        assert!(rep.errors.is_empty(), "{point}: {rep:?}");
        assert!(
            rep.actions
                .iter()
                .any(|a| a.volume == name && a.action.contains("rolled back")),
            "{point}: {rep:?}"
        );
        assert_detached(&env, &cfg, &name, &id, &pids);
        drop(d);
        assert_usable(&env, "a", &name, &id);
        env.driver_with(cfg.clone()).remove(&name, false).unwrap();
        env.assert_nothing(POOL, "", &name);
    }
}

#[test]
fn kill_during_detach_then_restart_finishes_the_detach() {
    let Some(env) = env(true) else { return };
    let cfg = node_config(&env, "a");
    for point in CRASH_POINTS
        .iter()
        .filter(|p| p.starts_with("detach:") && !CONDITIONAL.contains(p))
    {
        let name = env.name("crd");
        let d = env.driver_with(cfg.clone());
        let id = d.create(&name, &spec(&[("size", "32M")])).unwrap().image_id;
        let mp = d.attach(&name, "m1", None).unwrap();
        let sum = write_file(&mp.join("f"), 512 << 10, 3);
        drop(d);
        let pids = mapper_pids(&cfg, &id);
        assert_eq!(pids.len(), 1);
        run_op(&env, "a", Some(point), &["detach", &name, "m1"]);
        let st = env.state(&cfg);
        let v = st
            .volumes
            .get(&name)
            .unwrap_or_else(|| panic!("{point}: {st:?}"));
        assert!(v.mount_ids.is_empty(), "{point}: {v:?}");
        assert!(
            matches!(v.phase, Phase::Unmounting | Phase::Unmapping),
            "{point}: {v:?}"
        );
        let d = env.driver_with(cfg.clone());
        let rep = d.last_recovery().unwrap();
        assert!(rep.errors.is_empty(), "{point}: {rep:?}");
        assert!(
            rep.actions
                .iter()
                .any(|a| a.volume == name && a.action.contains("finished")),
            "{point}: {rep:?}"
        );
        assert_detached(&env, &cfg, &name, &id, &pids);
        // The data written before the crash is intact.
        let mp = d.attach(&name, "m2", None).unwrap();
        assert_eq!(sha256(&mp.join("f")), sum, "{point}");
        d.detach(&name, "m2").unwrap();
        d.remove(&name, false).unwrap();
        env.assert_nothing(POOL, "", &name);
    }
}

#[test]
fn kill_during_format_at_create_then_restart_removes_the_half_made_volume() {
    let Some(env) = env(true) else { return };
    let cfg = node_config(&env, "a");
    for point in ["create:format-mapped", "create:formatted"] {
        let name = env.name("crf");
        run_op(
            &env,
            "a",
            Some(point),
            &["--format-at", "create", "create", &name, "size=32M"],
        );
        let st = env.state(&cfg);
        assert!(st.pending.contains_key(&name), "{point}: {st:?}");
        let id = st.volumes[&name].image_id.clone();
        let pids = mapper_pids(&cfg, &id);
        assert_eq!(pids.len(), 1, "{point}: mapped for mkfs");
        let d = env.driver_with(cfg.clone());
        let rep = d.last_recovery().unwrap();
        assert!(rep.errors.is_empty(), "{point}: {rep:?}");
        assert_detached(&env, &cfg, &name, &id, &pids);
        env.assert_nothing(POOL, "", &name);
        d.create(&name, &spec(&[("size", "32M")])).unwrap();
        d.remove(&name, false).unwrap();
    }
}

#[test]
fn a_driver_restart_keeps_healthy_attachments_and_drops_dead_ones() {
    let Some(env) = env(true) else { return };
    let cfg = node_config(&env, "a");
    let name = env.name("keep");
    let id = env
        .driver_with(cfg.clone())
        .create(&name, &spec(&[("size", "32M")]))
        .unwrap()
        .image_id;
    // Attached by a process that then exits (like a plugin restarted while the
    // container runs): the next driver keeps it as it is.
    let out = run_op(&env, "a", None, &["attach", &name, "ctr"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let mp = cfg.mount_root.join(&name);
    let sum = write_file(&mp.join("f"), 256 << 10, 8);
    let d = env.driver_with(cfg.clone());
    let rep = d.last_recovery().unwrap();
    assert_eq!(rep.kept, vec![name.clone()], "{rep:?}");
    assert!(rep.actions.is_empty(), "{rep:?}");
    assert!(mount_at(&mp).is_some());
    assert_eq!(sha256(&mp.join("f")), sum);
    assert_eq!(d.attach(&name, "ctr2", None).unwrap(), mp);
    d.detach(&name, "ctr2").unwrap();

    // Its mapper is killed (kill -9, by its pid): the attachment is dead. The next
    // driver unmounts, unmaps and drops the references.
    let pids = mapper_pids(&cfg, &id);
    assert_eq!(pids.len(), 1);
    let dead_addr = mappings(&cfg, POOL, &id)[0].client_addr.unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pids[0] as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    for _ in 0..100 {
        if !pid_alive(pids[0]) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    drop(d);
    let d = env.driver_with(cfg.clone());
    let rep = d.last_recovery().unwrap();
    assert!(rep.errors.is_empty(), "{rep:?}");
    assert!(
        rep.actions
            .iter()
            .any(|a| a.volume == name && a.action.contains("ctr")),
        "the dropped mount IDs are named: {rep:?}"
    );
    assert_detached(&env, &cfg, &name, &id, &pids);
    // The dead mapper's exact client was fenced (so its lingering watch and lock do not
    // block the next attach), and nothing else.
    let fenced = rep.actions.iter().any(|a| {
        a.action.contains(&format!(
            "blocklisted the dead mapper's client {}",
            dead_addr.to_legacy_string()
        ))
    });
    assert!(fenced, "{rep:?}");
    assert!(env.rados.is_blocklisted(&dead_addr).unwrap());
    let _ = env.rados.blocklist_rm(&dead_addr);
    // The data that was synced before the mapper died is there.
    let mp = d.attach(&name, "ctr3", None).unwrap();
    assert_eq!(sha256(&mp.join("f")), sum);
    d.detach(&name, "ctr3").unwrap();
    d.remove(&name, false).unwrap();
    env.assert_nothing(POOL, "", &name);
}

fn ids(list: &[&str]) -> std::collections::BTreeSet<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// After a restart: the attachment of `name` was kept as it is (no recovery action on
/// it), still mounted with its data, served by the same mapper process.
fn assert_kept(
    cfg: &rbd_driver::volume::DriverConfig,
    d: &rbd_driver::volume::Driver,
    name: &str,
    id: &str,
    pids: &[u32],
    sum: &str,
    point: &str,
) {
    let rep = d.last_recovery().unwrap();
    assert!(rep.errors.is_empty(), "{point}: {rep:?}");
    assert!(rep.kept.iter().any(|k| k == name), "{point}: {rep:?}");
    assert!(
        !rep.actions.iter().any(|a| a.volume == name),
        "{point}: a healthy mount must not be touched: {rep:?}"
    );
    let mp = cfg.mount_root.join(name);
    assert!(mount_at(&mp).is_some(), "{point}: not mounted any more");
    assert_eq!(sha256(&mp.join("f")), sum, "{point}");
    assert_eq!(mapper_pids(cfg, id), pids, "{point}: the same mapping");
}

#[test]
fn kill_while_a_second_mount_id_joins_keeps_the_first_and_leaves_no_stray_reference() {
    let Some(env) = env(true) else { return };
    let cfg = node_config(&env, "a");
    for point in ["attach:sharing", "attach:shared"] {
        let name = env.name("crs");
        let d = env.driver_with(cfg.clone());
        let id = d.create(&name, &spec(&[("size", "32M")])).unwrap().image_id;
        let mp = d.attach(&name, "m1", None).unwrap();
        let sum = write_file(&mp.join("f"), 256 << 10, 5);
        drop(d);
        let pids = mapper_pids(&cfg, &id);
        assert_eq!(pids.len(), 1);
        run_op(&env, "a", Some(point), &["attach", &name, "m2"]);

        // The state file has m2 only once its (atomic) update was written.
        let st = env.state(&cfg);
        let v = &st.volumes[&name];
        assert_eq!(v.phase, Phase::Mounted, "{point}: {v:?}");
        let want = if point == "attach:shared" {
            ids(&["m1", "m2"])
        } else {
            ids(&["m1"])
        };
        assert_eq!(v.mount_ids, want, "{point}");

        // Restart: kept as it is.
        let d = env.driver_with(cfg.clone());
        assert_kept(&cfg, &d, &name, &id, &pids, &sum, point);
        // Docker sends Unmount after a failed Mount: dropping m2, recorded or not, leaves
        // m1's mount alone.
        let r = d.detach_with_report(&name, "m2").unwrap();
        assert_eq!(
            r.unknown_mount_id,
            point == "attach:sharing",
            "{point}: {r:?}"
        );
        assert_eq!(r.remaining_mount_ids, vec!["m1".to_owned()], "{point}");
        assert!(!r.unmapped && mount_at(&mp).is_some(), "{point}: {r:?}");
        assert_eq!(env.state(&cfg).volumes[&name].mount_ids, ids(&["m1"]));
        // m2 can join now; the last reference takes everything down.
        assert_eq!(d.attach(&name, "m2", None).unwrap(), mp);
        d.detach(&name, "m1").unwrap();
        assert!(mount_at(&mp).is_some(), "{point}: m2 still uses it");
        assert_eq!(sha256(&mp.join("f")), sum);
        d.detach(&name, "m2").unwrap();
        assert_detached(&env, &cfg, &name, &id, &pids);
        d.remove(&name, false).unwrap();
        env.assert_nothing(POOL, "", &name);
    }
}

#[test]
fn kill_during_a_non_last_detach_keeps_the_mount_for_the_other_mount_ids() {
    let Some(env) = env(true) else { return };
    let cfg = node_config(&env, "a");
    for point in ["detach:releasing", "detach:released"] {
        let name = env.name("crn");
        let d = env.driver_with(cfg.clone());
        let id = d.create(&name, &spec(&[("size", "32M")])).unwrap().image_id;
        let mp = d.attach(&name, "m1", None).unwrap();
        assert_eq!(d.attach(&name, "m2", None).unwrap(), mp);
        assert_eq!(d.attach(&name, "m3", None).unwrap(), mp);
        let sum = write_file(&mp.join("f"), 256 << 10, 6);
        drop(d);
        let pids = mapper_pids(&cfg, &id);
        assert_eq!(pids.len(), 1);
        run_op(&env, "a", Some(point), &["detach", &name, "m2"]);

        let st = env.state(&cfg);
        let v = &st.volumes[&name];
        assert_eq!(v.phase, Phase::Mounted, "{point}: {v:?}");
        let want = if point == "detach:released" {
            ids(&["m1", "m3"])
        } else {
            ids(&["m1", "m2", "m3"])
        };
        assert_eq!(v.mount_ids, want, "{point}");

        let d = env.driver_with(cfg.clone());
        assert_kept(&cfg, &d, &name, &id, &pids, &sum, point);
        // Docker retries the Unmount: done once, whichever side of the crash it was.
        let r = d.detach_with_report(&name, "m2").unwrap();
        assert_eq!(
            r.unknown_mount_id,
            point == "detach:released",
            "{point}: {r:?}"
        );
        assert_eq!(
            r.remaining_mount_ids,
            vec!["m1".to_owned(), "m3".to_owned()],
            "{point}"
        );
        assert!(mount_at(&mp).is_some(), "{point}");
        d.detach(&name, "m1").unwrap();
        assert!(mount_at(&mp).is_some(), "{point}: m3 still uses it");
        assert_eq!(sha256(&mp.join("f")), sum);
        d.detach(&name, "m3").unwrap();
        assert_detached(&env, &cfg, &name, &id, &pids);
        d.remove(&name, false).unwrap();
        env.assert_nothing(POOL, "", &name);
    }
}

#[test]
fn kill_during_fsck_or_grow_at_attach_then_restart_rolls_back_and_the_next_attach_grows() {
    let Some(env) = env(true) else { return };
    let cfg = node_config(&env, "a");
    const MIB: u64 = 1 << 20;
    // ext4: fsck before mounting (fsck_on_attach), offline grow before mounting; xfs:
    // online grow once mounted. Each volume was formatted, then grown while detached.
    for (point, fstype, size, grown) in [
        ("attach:checking", "ext4", "32M", 64 * MIB),
        ("attach:checked", "ext4", "32M", 64 * MIB),
        ("attach:growing", "ext4", "32M", 64 * MIB),
        ("attach:grown", "ext4", "32M", 64 * MIB),
        ("attach:growing-online", "xfs", "320M", 512 * MIB),
        ("attach:grown-online", "xfs", "320M", 512 * MIB),
    ] {
        let name = env.name("crg");
        let d = env.driver_with(cfg.clone());
        let id = d
            .create(&name, &spec(&[("size", size), ("fstype", fstype)]))
            .unwrap()
            .image_id;
        let mp = d.attach(&name, "m0", None).unwrap();
        let sum = write_file(&mp.join("f"), 256 << 10, 7);
        let small = fs_size(&mp);
        d.detach(&name, "m0").unwrap();
        d.resize(&name, grown).unwrap();
        drop(d);

        run_op(
            &env,
            "a",
            Some(point),
            &["--fsck-on-attach", "true", "attach", &name, "m1"],
        );
        let st = env.state(&cfg);
        let v = st
            .volumes
            .get(&name)
            .unwrap_or_else(|| panic!("{point}: {st:?}"));
        assert!(v.mount_ids.contains("m1"), "{point}: {v:?}");
        assert_ne!(v.phase, Phase::Mounted, "{point}: {v:?}");
        let pids = mapper_pids(&cfg, &id);
        assert_eq!(pids.len(), 1, "{point}: the mapping outlives the process");
        if point.ends_with("-online") {
            assert!(
                mount_at(&mp).is_some(),
                "{point}: mounted before the online grow"
            );
        }

        // Restart: the attach is rolled back, nothing is left.
        let d = env.driver_with(cfg.clone());
        let rep = d.last_recovery().unwrap();
        assert!(rep.errors.is_empty(), "{point}: {rep:?}");
        assert!(
            rep.actions
                .iter()
                .any(|a| a.volume == name && a.action.contains("rolled back")),
            "{point}: {rep:?}"
        );
        assert_detached(&env, &cfg, &name, &id, &pids);

        // The next attach grows the filesystem (if the crash came first) and the data
        // is intact.
        let mp = d.attach(&name, "m2", None).unwrap();
        assert_eq!(sha256(&mp.join("f")), sum, "{point}");
        let now = fs_size(&mp);
        let size_bytes = size.trim_end_matches('M').parse::<u64>().unwrap() * MIB;
        // (statvfs leaves the filesystem's own metadata out: compare growth ratios.)
        let want = small as f64 * grown as f64 / size_bytes as f64;
        assert!(
            now as f64 >= want * 0.9,
            "{point}: {fstype} is {now} bytes on a {grown}-byte image (was {small} on \
             {size_bytes})"
        );
        d.detach(&name, "m2").unwrap();
        assert_detached(&env, &cfg, &name, &id, &[]);
        d.remove(&name, false).unwrap();
        env.assert_nothing(POOL, "", &name);
    }
}
