//! The seed-004 bug on one host, with the real userspace mapper (`rbd-umap`): node A maps
//! and mounts volume `v`; node B takes it over (A is silent: fenced), removes it and creates
//! `v` again. A's reconcile finds its device stale (image id gone, client blocklisted) by
//! listing its real mappings, cleans it (lazy unmount, forced unmap), and then maps the new
//! `v` with no manual step; the old device is never mistaken for the new image.

mod cluster_support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use cluster_support::*;
use rbd_driver::cluster::{ClaimOptions, HolderRecord, ImageRef, Mode, StaleReason};
use rbd_driver::mapper::userspace::UserspaceMapper;
use rbd_driver::mapper::{CephAuth, MapOptions, MapRequest, Mapper, MapperConfig, loopdev};
use testkit::cmd::wait_every;

fn run(cmd: &str, args: &[&str]) {
    let out = Command::new("timeout")
        .arg("60")
        .arg(cmd)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn proc_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| s.split_whitespace().nth(2).is_none_or(|st| st != "Z"))
        .unwrap_or(false)
}

/// How often the waits poll (each check asks the cluster).
const POLL: Duration = Duration::from_millis(100);

/// Undoes whatever the test left: mounts and loop devices under its run dir, mapper
/// processes (by their recorded pids), the images.
struct Guard {
    run: tempfile::TempDir,
    mapper: UserspaceMapper,
    admin: rbd_core::Rados,
    images: Vec<String>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        let root = self.run.path().to_owned();
        if let Ok(mi) = std::fs::read_to_string("/proc/self/mountinfo") {
            for l in mi.lines() {
                if let Some(mp) = l.split(' ').nth(4)
                    && Path::new(mp).starts_with(&root)
                {
                    let _ = nix::mount::umount2(mp, nix::mount::MntFlags::MNT_DETACH);
                }
            }
        }
        for e in self.mapper.entries().unwrap_or_default() {
            if proc_alive(e.record.pid) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(e.record.pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        if let Ok(loops) = loopdev::list() {
            for l in loops.iter().filter(|l| l.backing_file.starts_with(&root)) {
                let _ = loopdev::detach(l.number);
            }
        }
        if let Ok(io) = self.admin.ioctx(POOL) {
            for n in &self.images {
                wait_every(Duration::from_secs(30), POLL, || {
                    rbd_core::rbd::remove(&io, n).is_ok()
                        || rbd_core::rbd::image_id_by_name(&io, n).is_err()
                });
            }
        }
    }
}

#[test]
fn stale_userspace_mapping_is_cleaned_and_the_name_reused() {
    let Some(conf) = conf() else { return };
    if !testkit::require_root() {
        return;
    }
    let ns = test_namespace();
    let a = node(&conf, "seed-a", &ns);
    let b = node(&conf, "seed-b", &ns);
    let _ns = NsGuard {
        admin: connect(&conf),
        ns: ns.clone(),
    };
    let run_dir = tempfile::Builder::new()
        .prefix("cl-umap")
        .tempdir_in("/run")
        .unwrap();
    let cfg = MapperConfig {
        run_dir: run_dir.path().to_path_buf(),
        umap_bin: Some(PathBuf::from(env!("CARGO_BIN_EXE_rbd-umap"))),
        ..MapperConfig::default()
    };
    // A long watchdog period: A's mapper does not notice the fence on its own during the
    // test, as a mapper on a partitioned node would not.
    let mapper = UserspaceMapper::new(&cfg).with_check_interval(Duration::from_secs(120));
    let name = testkit::unique("seed-v");
    let mut guard = Guard {
        run: run_dir,
        mapper: mapper.clone(),
        admin: connect(&conf),
        images: vec![name.clone()],
    };
    let io = guard.admin.ioctx(POOL).unwrap();
    rbd_core::rbd::create(&io, &name, 64 << 20, &Default::default()).unwrap();
    let old_id = rbd_core::rbd::image_id_by_name(&io, &name).unwrap();
    let old = ImageRef::new(POOL, "", &name, &old_id);
    let req = |id: &str| MapRequest {
        pool: POOL.into(),
        namespace: String::new(),
        image: name.clone(),
        image_id: id.to_owned(),
        snap: None,
        read_only: false,
        exclusive: false,
        auth: CephAuth {
            conf: conf.clone(),
            id: "admin".into(),
            keyring: None,
        },
        options: MapOptions {
            io_timeout_secs: Some(10),
            ..MapOptions::default()
        },
    };

    // A attaches v: claim, map, record the mapping, mkfs, mount, write.
    a.claim(&old, Mode::Rw, &ClaimOptions::default()).unwrap();
    let m = mapper.map(&req(&old_id)).unwrap();
    let addr = m.client_addr.expect("the mapping's client address");
    a.registry(POOL)
        .unwrap()
        .update_holder(&old, a.node(), |h| {
            *h = HolderRecord {
                client_addr: Some(addr),
                device: Some(m.device.clone()),
                backend: Some(m.backend),
                ..h.clone()
            }
        })
        .unwrap();
    let mnt = guard.run.path().join("mnt-a");
    std::fs::create_dir(&mnt).unwrap();
    let dev = m.device.to_string_lossy().into_owned();
    run("mkfs.ext4", &["-q", "-F", &dev]);
    run("mount", &[&dev, &mnt.to_string_lossy()]);
    std::fs::write(mnt.join("data"), b"written on A").unwrap();
    run("sync", &[]);

    // B takes v over: A's daemon does not answer (it has no control watch), so A's mapping
    // is fenced by its exact address. Then B removes v and creates it again.
    let claim = b.claim(&old, Mode::Rw, &ClaimOptions::default()).unwrap();
    assert_eq!(claim.fenced.len(), 1);
    assert!(
        claim.fenced[0]
            .record
            .addrs
            .iter()
            .any(|x| x.same_instance(&addr))
    );
    let fenced_addrs = claim.fenced[0].record.addrs.clone();
    struct Unblock(rbd_core::Rados, Vec<rbd_core::EntityAddr>);
    impl Drop for Unblock {
        fn drop(&mut self) {
            for a in &self.1 {
                let _ = self.0.blocklist_rm(a);
            }
        }
    }
    let _unblock = Unblock(connect(&conf), fenced_addrs);
    assert!(
        wait_every(Duration::from_secs(30), POLL, || rbd_core::rbd::remove(
            &io, &name
        )
        .is_ok()),
        "B could not remove v after fencing A"
    );
    b.unregister(&old).unwrap();
    rbd_core::rbd::create(&io, &name, 64 << 20, &Default::default()).unwrap();
    let new_id = rbd_core::rbd::image_id_by_name(&io, &name).unwrap();
    assert_ne!(new_id, old_id);
    let new = ImageRef::new(POOL, "", &name, &new_id);

    // A's attach of the new v: its real mapping list shows the old device, and the check
    // calls it stale (the old id is gone, its client blocklisted), by id, not by name.
    let local = mapper.list().unwrap();
    assert_eq!(local.len(), 1);
    assert_eq!(local[0].image_id, old_id);
    let t0 = Instant::now();
    let report = a.check_for(&new, &local).unwrap();
    eprintln!(
        "attach check took {:?}: {:?}",
        t0.elapsed(),
        report.summary()
    );
    let stale: Vec<_> = report.stale().cloned().collect();
    assert_eq!(stale.len(), 1);
    let reasons = stale[0].reasons();
    assert!(reasons.contains(&StaleReason::ImageGone), "{reasons:?}");
    assert!(
        reasons.iter().any(
            |r| matches!(r, StaleReason::Blocklisted { addr: x, .. } if x.same_instance(&addr))
        ),
        "{reasons:?}"
    );

    // Clean it: lazy unmount, forced unmap, log line.
    let mounts: Vec<PathBuf> = fs_format::mounts_of_device(&m.device)
        .unwrap()
        .into_iter()
        .map(|mi| mi.mount_point)
        .collect();
    assert_eq!(mounts, vec![mnt.canonicalize().unwrap()]);
    let t0 = Instant::now();
    let out = a.cleanup(&stale[0], &mounts, &mapper);
    eprintln!("cleanup took {:?}: {}", t0.elapsed(), out.log_line);
    assert!(out.is_clean(), "{out:?}");
    assert_eq!(out.unmounted, mounts);
    assert!(!fs_format::is_mountpoint(&mnt).unwrap());
    if let Some(pid) = m.pid {
        assert!(
            wait_every(Duration::from_secs(10), POLL, || !proc_alive(pid)),
            "the stale mapper still runs"
        );
    }
    assert!(mapper.list().unwrap().is_empty());
    let n = loopdev::parse_device(&m.device).unwrap();
    assert!(
        wait_every(Duration::from_secs(10), POLL, || loopdev::list()
            .unwrap_or_default()
            .iter()
            .all(
                |l| l.number != n || !l.backing_file.starts_with(guard.run.path())
            )),
        "{} still bound to the old mapping",
        m.device.display()
    );

    // Now A attaches the new v with no manual step.
    a.claim(&new, Mode::Rw, &ClaimOptions::default()).unwrap();
    let m2 = mapper.map(&req(&new_id)).unwrap();
    assert_eq!(m2.image_id, new_id);
    let listed = mapper.list().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].image_id, new_id);
    let report = a.check_for(&new, &listed).unwrap();
    assert!(report.stale().next().is_none(), "{:?}", report.summary());
    mapper.unmap(&m2, false).unwrap();
    a.unregister(&new).unwrap();
    guard.images = vec![name];
}
