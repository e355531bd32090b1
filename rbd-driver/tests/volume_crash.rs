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

use rbd_driver::volume::crash::{CRASH_ENV, CRASH_POINTS};
use rbd_driver::volume::lock::lock_volume;
use rbd_driver::volume::state::{CreatePhase, PendingCreate, PendingOp};
use rbd_driver::volume::{EntryState, StateStore};
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
        .args(args)
        .env_remove(CRASH_ENV);
    if let Some(b) = &cfg.mapper.umap_bin {
        cmd.arg("--umap-bin").arg(b);
    }
    if let Some(p) = crash_at {
        cmd.env(CRASH_ENV, p);
    }
    let out = cmd.output().expect("running rbd-volume-op");
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
    assert!(CRASH_POINTS.len() >= 16);
}

#[test]
fn kill_during_create_then_restart_leaves_nothing_half_made() {
    let Some(env) = env(false) else { return };
    for point in CRASH_POINTS.iter().filter(|p| p.starts_with("create:")) {
        if point.starts_with("create:format") {
            // Covered with a mapper in volume_attach.rs.
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
