//! Reconcile against the real dev cluster: classification of local mappings (image gone,
//! registered elsewhere, blocklisted client, reused name) and the cleanup of a stale one
//! (lazy unmount of a busy mount, forced unmap of a loop device, registry record removed).

mod cluster_support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use cluster_support::*;
use rbd_driver::cluster::reconcile::{CleanupOptions, cleanup_stale};
use rbd_driver::cluster::{
    ClaimOptions, HolderRecord, ImageRef, Mode, StaleReason, Unmapper, Verdict,
};
use rbd_driver::mapper::{Backend, Mapping};
use rbd_driver::{DriverError, Result};

/// A local mapping of `img` as a mapper would list it.
fn mapping_of(img: &ImageRef, device: &str, addr: Option<rbd_core::EntityAddr>) -> Mapping {
    Mapping {
        backend: Backend::Userspace,
        pool: img.pool.clone(),
        namespace: img.namespace.clone(),
        image: img.image.clone(),
        image_id: img.image_id.clone(),
        snap: None,
        device: device.into(),
        client_addr: addr,
        read_only: false,
        pid: None,
    }
}

#[test]
fn classifies_local_mappings_against_the_cluster() {
    let Some(conf) = conf() else { return };
    let ns = test_namespace();
    let me = node(&conf, "recon-me", &ns);
    let them = node(&conf, "recon-them", &ns);
    let current = TestImage::create(&conf, "recon-cur", &ns);
    let other = TestImage::create(&conf, "recon-other", &ns);
    let fenced = TestImage::create(&conf, "recon-fenced", &ns);
    let unreg = TestImage::create(&conf, "recon-unreg", &ns);
    let dangling = TestImage::create(&conf, "recon-dangling", &ns);
    // An image that is removed: its id is gone.
    let gone = TestImage::create(&conf, "recon-gone", &ns);
    let gone_ref = gone.image_ref();
    drop(gone);

    me.claim(&current.image_ref(), Mode::Rw, &ClaimOptions::default())
        .unwrap();
    me.claim(&fenced.image_ref(), Mode::Rw, &ClaimOptions::default())
        .unwrap();
    me.claim(&dangling.image_ref(), Mode::Rw, &ClaimOptions::default())
        .unwrap();
    them.claim(&other.image_ref(), Mode::Rw, &ClaimOptions::default())
        .unwrap();

    // A real client instance, then fenced: the address of the "fenced" mapping.
    let victim = connect(&conf);
    let vaddr = addr_of(&victim);
    fenced.unblock_later(vaddr);
    me.rados()
        .blocklist_add(&vaddr, Some(Duration::from_secs(300)))
        .unwrap();
    let live = addr_of(&connect(&conf));

    let local = vec![
        mapping_of(&current.image_ref(), "/dev/loop-a", Some(live)),
        mapping_of(&gone_ref, "/dev/loop-b", None),
        mapping_of(&other.image_ref(), "/dev/loop-c", None),
        mapping_of(&fenced.image_ref(), "/dev/loop-d", Some(vaddr)),
        mapping_of(&unreg.image_ref(), "/dev/loop-e", None),
    ];
    let report = me.check(&local, &[POOL.to_owned()]).unwrap();
    eprintln!("{}", report.summary().join("\n"));
    eprintln!("check took {} us", report.elapsed_us);
    let v: Vec<&Verdict> = report.checks.iter().map(|c| &c.verdict).collect();
    assert_eq!(v[0], &Verdict::Current);
    assert_eq!(report.checks[1].reasons(), &[StaleReason::ImageGone]);
    match report.checks[2].reasons() {
        [StaleReason::HeldByOther { nodes, mode }] => {
            assert_eq!(nodes, &vec![them.node().clone()]);
            assert_eq!(*mode, Mode::Rw);
        }
        r => panic!("expected held-by-other, got {r:?}"),
    }
    match report.checks[3].reasons() {
        [StaleReason::Blocklisted { addr, .. }] => assert!(addr.same_instance(&vaddr)),
        r => panic!("expected blocklisted, got {r:?}"),
    }
    assert_eq!(v[4], &Verdict::Unregistered);
    assert_eq!(report.stale().count(), 3);
    // Registered to us without a local mapping: dangling.
    assert_eq!(report.dangling.len(), 1);
    assert_eq!(report.dangling[0].image_id, dangling.id);
    // The JSON form carries the reasons.
    let j = serde_json::to_value(&report).unwrap();
    assert_eq!(j["checks"][1]["verdict"]["state"], "stale");
    assert_eq!(
        j["checks"][1]["verdict"]["reasons"][0]["reason"],
        "image-gone"
    );
    assert_eq!(
        j["checks"][2]["verdict"]["reasons"][0]["nodes"][0],
        "recon-them"
    );
}

/// The seed-004 bug at the cluster level: `v` is mapped here, removed elsewhere and
/// recreated under the same name. The attach check for the new `v` finds the old device
/// (same name, other id) and calls it stale; the new image's own id is not confused with it.
#[test]
fn reused_name_is_not_mistaken_for_the_old_image() {
    let Some(conf) = conf() else { return };
    let ns = test_namespace();
    let me = node(&conf, "recon-a", &ns);
    let old = TestImage::create(&conf, "recon-v", &ns);
    let name = old.name.clone();
    let old_ref = old.image_ref();
    let local = vec![mapping_of(&old_ref, "/dev/loop-old", None)];
    me.claim(&old_ref, Mode::Ro, &ClaimOptions::default())
        .unwrap();
    // Removed on another node (its registry record would be gone there too).
    me.unregister(&old_ref).unwrap();
    drop(old);
    let admin = connect(&conf);
    let io = admin.ioctx(POOL).unwrap();
    rbd_core::rbd::create(&io, &name, 8 << 20, &Default::default()).unwrap();
    struct Rm(rbd_core::IoCtx, String);
    impl Drop for Rm {
        fn drop(&mut self) {
            let _ = rbd_core::rbd::remove(&self.0, &self.1);
        }
    }
    let _rm = Rm(io.try_clone().unwrap(), name.clone());
    let new_id = rbd_core::rbd::image_id_by_name(&io, &name).unwrap();
    assert_ne!(new_id, old_ref.image_id);
    let new_ref = ImageRef::new(POOL, "", &name, &new_id);

    let report = me.check_for(&new_ref, &local).unwrap();
    assert_eq!(report.checks.len(), 1);
    assert_eq!(report.checks[0].reasons(), &[StaleReason::ImageGone]);
    // An unrelated mapping is not looked at on the attach path.
    let unrelated = ImageRef::new(POOL, "", "other-name", "feedbeef");
    let r = me
        .check_for(&new_ref, &[mapping_of(&unrelated, "/dev/loop-x", None)])
        .unwrap();
    assert!(r.checks.is_empty());
}

fn run(cmd: &str, args: &[&str]) -> std::result::Result<String, String> {
    let out = Command::new("timeout")
        .arg("30")
        .arg(cmd)
        .args(args)
        .output()
        .map_err(|e| format!("{cmd}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(format!(
            "{cmd} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Detaches a loop device (`losetup -d`): the unmap of a loop-backed mapping.
struct LoopUnmapper;

impl Unmapper for LoopUnmapper {
    fn unmap_mapping(&self, m: &Mapping, _force: bool) -> Result<()> {
        let dev = m.device.to_string_lossy().into_owned();
        run("losetup", &["-d", &dev])
            .map(drop)
            .map_err(|stderr| DriverError::Command {
                command: format!("losetup -d {dev}"),
                status: "failed".into(),
                stderr,
            })
    }
}

/// A loop device over a file, formatted and mounted; torn down on drop.
struct LoopMount {
    dir: tempfile::TempDir,
    dev: String,
    mnt: PathBuf,
}

impl LoopMount {
    fn new() -> LoopMount {
        let dir = tempfile::Builder::new()
            .prefix("rbd-cluster-loop-")
            .tempdir()
            .unwrap();
        let file = dir.path().join("disk.img");
        std::fs::File::create(&file)
            .unwrap()
            .set_len(64 << 20)
            .unwrap();
        let dev = run("losetup", &["-f", "--show", &file.to_string_lossy()]).unwrap();
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        let lm = LoopMount { dir, dev, mnt };
        run("mkfs.ext4", &["-q", "-F", &lm.dev]).unwrap();
        run("mount", &[&lm.dev, &lm.mnt.to_string_lossy()]).unwrap();
        lm
    }

    fn attached(&self) -> bool {
        run("losetup", &["-l", "-n", "-O", "NAME"])
            .unwrap_or_default()
            .lines()
            .any(|l| l.trim() == self.dev)
    }
}

impl Drop for LoopMount {
    fn drop(&mut self) {
        let _ = run("umount", &["-l", &self.mnt.to_string_lossy()]);
        if self.attached() {
            let _ = run("losetup", &["-d", &self.dev]);
        }
        let _ = &self.dir;
    }
}

fn mounted(p: &Path) -> bool {
    fs_format::is_mountpoint(p).unwrap()
}

/// Cleanup of a stale mapping on a real loop device with a busy ext4 mount (a process
/// keeps a file open on it). The userspace mapper is not available on this branch yet, so
/// the device is a plain loop device over a file, unmapped with `losetup -d`.
#[test]
fn cleanup_detaches_busy_mount_and_unmaps() {
    let Some(conf) = conf() else { return };
    if !testkit::require_root() {
        return;
    }
    let ns = test_namespace();
    let me = node(&conf, "recon-clean", &ns);
    let t = TestImage::create(&conf, "recon-clean", &ns);
    let img = t.image_ref();
    let lm = LoopMount::new();
    // Our registration of the image, as if we had attached it.
    let mut rec = HolderRecord::new(me.node().clone(), Mode::Rw);
    rec.device = Some(lm.dev.clone().into());
    me.claim(
        &img,
        Mode::Rw,
        &ClaimOptions {
            holder: Some(rec),
            ..ClaimOptions::default()
        },
    )
    .unwrap();
    // Busy: an open file on the mount.
    let busy = std::fs::File::create(lm.mnt.join("open-file")).unwrap();
    // The image is removed elsewhere (as `rbd rm` on another node would).
    let local = vec![mapping_of(&img, &lm.dev, None)];
    rbd_core::rbd::remove(&t.admin.ioctx(POOL).unwrap(), &t.name).unwrap();

    let report = me.check(&local, &[]).unwrap();
    let stale: Vec<_> = report.stale().cloned().collect();
    assert_eq!(stale.len(), 1);
    assert_eq!(stale[0].reasons(), &[StaleReason::ImageGone]);

    let mounts: Vec<PathBuf> = fs_format::mounts_of_device(&lm.dev)
        .unwrap()
        .into_iter()
        .map(|m| m.mount_point)
        .collect();
    assert_eq!(mounts, vec![lm.mnt.canonicalize().unwrap()]);
    let reg = me.registry(POOL).unwrap();
    let t0 = Instant::now();
    let out = cleanup_stale(
        &stale[0],
        &mounts,
        &LoopUnmapper,
        Some((&reg, me.node())),
        &CleanupOptions::default(),
    );
    eprintln!("cleanup took {:?}: {}", t0.elapsed(), out.log_line);
    assert!(out.is_clean(), "{out:?}");
    assert_eq!(out.unmounted, mounts);
    assert!(out.registry_cleaned);
    assert!(!mounted(&lm.mnt), "still mounted after lazy unmount");
    assert!(reg.get(&img).unwrap().is_none());
    assert!(
        out.log_line.contains("its image id no longer exists"),
        "{}",
        out.log_line
    );
    assert!(out.log_line.contains(&lm.dev), "{}", out.log_line);
    // The loop device goes once the last user (our open file) lets go.
    drop(busy);
    let deadline = Instant::now() + Duration::from_secs(10);
    while lm.attached() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!lm.attached(), "{} still attached", lm.dev);
}
