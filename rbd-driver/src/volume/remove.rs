//! `Driver::remove`, `Driver::resize`, `Driver::snapshot`.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use fs_format::FsType;
use rbd_core::rbd::{self, Shrink, SnapNamespace};
use rbd_core::{Image, IoCtx, OpenOptions};
use serde::Serialize;

use crate::cluster::Claim;
use crate::cluster::reconcile::CleanupReport;
use crate::error::{DriverError, Result};
use crate::volume::attach::{join, wait_for_size};
use crate::volume::crash::crash_point;
use crate::volume::create::describe_watchers;
use crate::volume::driver::Driver;
use crate::volume::index::{EntryState, IndexEntry, now_secs};
use crate::volume::meta::VolumeMeta;
use crate::volume::name::validate_volume_name;
use crate::volume::spec::validate_snapshot_name;
use crate::volume::state::{PendingOp, PendingRemove, Phase, RemovePhase};

nix::ioctl_readwrite!(fifreeze, b'X', 119, libc::c_int);
nix::ioctl_readwrite!(fithaw, b'X', 120, libc::c_int);

/// Freezes a mounted filesystem (`FIFREEZE`) until dropped (`FITHAW`).
struct Freeze {
    dir: File,
    path: PathBuf,
}

impl Freeze {
    fn new(mountpoint: &Path) -> Result<Freeze> {
        let dir = File::open(mountpoint)
            .map_err(|e| DriverError::io(format!("opening {}", mountpoint.display()), e))?;
        let mut arg: libc::c_int = 0;
        // SAFETY: FIFREEZE on an open descriptor of the filesystem's root directory; the
        // argument is a valid, writable int the kernel ignores.
        unsafe { fifreeze(dir.as_raw_fd(), &mut arg) }.map_err(|e| {
            DriverError::io(
                format!("freezing the filesystem at {}", mountpoint.display()),
                std::io::Error::from(e),
            )
        })?;
        Ok(Freeze {
            dir,
            path: mountpoint.to_owned(),
        })
    }
}

impl Drop for Freeze {
    fn drop(&mut self) {
        if thaw_fd(&self.dir).is_err() {
            eprintln!(
                "rbd-driver: could not thaw the filesystem at {}",
                self.path.display()
            );
        }
    }
}

fn thaw_fd(dir: &File) -> nix::Result<libc::c_int> {
    let mut arg: libc::c_int = 0;
    // SAFETY: FITHAW on an open descriptor of a mounted filesystem's root directory; the
    // argument is a valid, writable int the kernel ignores.
    unsafe { fithaw(dir.as_raw_fd(), &mut arg) }
}

/// Thaws a filesystem frozen by a process that died while snapshotting. `EINVAL` (not
/// frozen) is the normal answer and is ignored.
pub(super) fn thaw(mountpoint: &Path) -> bool {
    File::open(mountpoint)
        .ok()
        .is_some_and(|d| thaw_fd(&d).is_ok())
}

/// How [`Driver::remove_with`] removes a volume.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RemoveOptions {
    /// Detach this node's attachment of the volume first, and remove its unused snapshots
    /// (unprotecting them if needed). Never forces other nodes or clients, and never
    /// removes snapshots that have clones.
    pub force: bool,
    /// Take the volume from other nodes even while they use it: each holder is asked to
    /// release it by force (unmounting it from under its containers), and one that still
    /// does not release it (refuses, fails, hangs) is fenced.
    pub take_over: bool,
}

/// What [`Driver::remove_with`] did.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RemoveReport {
    /// This node's stale devices of the volume (of its image id, or of an older image with
    /// its name) cleaned before the remove, each with what was done and why.
    pub cleaned: Vec<CleanupReport>,
    /// The cluster-wide read-write claim (who released the image, who was fenced); none
    /// when there was no image left to claim.
    pub claim: Option<Claim>,
    /// The volume's image was removed by this call (false when its image was already gone
    /// and only the index entry was left, or when an abandoned create was cleaned up).
    pub image_removed: bool,
}

impl Driver {
    /// Removes a volume: its image (with its metadata) and its index entry.
    ///
    /// First this node's stale devices of the volume are cleaned (reconcile), then the
    /// image is claimed read-write cluster-wide: a node holding it is asked to release it
    /// and refuses while it uses it ([`DriverError::InUse`] naming the node and its mount
    /// IDs); a holder that does not answer (dead or partitioned) is fenced.
    ///
    /// Refused with [`DriverError::InUse`] while it is attached on this node (naming the
    /// node, mountpoint and mount IDs), while a node in the registry uses it, while any
    /// other client the registry does not know has the image open (naming each client and
    /// its address), and while it has snapshots. With `force`, this node's attachment is
    /// detached first and unused snapshots are removed (unprotected if needed); other
    /// nodes' mounts are never forced away, and snapshots with clones are never removed.
    ///
    /// The removal is recorded before its first change, so a crash is finished by
    /// recovery.
    pub fn remove(&self, name: &str, force: bool) -> Result<()> {
        self.remove_with(
            name,
            &RemoveOptions {
                force,
                ..RemoveOptions::default()
            },
        )
        .map(|_| ())
    }

    /// [`Driver::remove`] with options, saying what it did: the stale local devices of the
    /// volume cleaned first (each with why), and the cluster-wide claim (who released the
    /// image, who was fenced).
    pub fn remove_with(&self, name: &str, opts: &RemoveOptions) -> Result<RemoveReport> {
        let force = opts.force;
        validate_volume_name(name)?;
        let _lock = self.lock(name)?;
        let mut report = RemoveReport::default();
        let mut rep = Default::default();
        self.recover_name(name, &mut rep)?;
        // This node's stale devices of the volume (or of an older image of its name)
        // first: a stale attachment does not block the remove.
        let found = self.index.get(name)?;
        let current = found
            .as_ref()
            .filter(|se| crate::volume::cluster::ready(&se.entry))
            .map(|se| Self::image_ref(&se.entry));
        let (pool, ns) = match &current {
            Some(c) => (c.pool.clone(), c.namespace.clone()),
            None => (
                self.cfg.defaults.pool.clone(),
                self.cfg.defaults.namespace.clone(),
            ),
        };
        report.cleaned = self.reconcile_name(name, &pool, &ns, current.as_ref())?;
        let st = self.load_state()?;
        if let Some(v) = st.volumes.get(name).cloned() {
            if !force {
                return Err(DriverError::InUse {
                    volume: name.into(),
                    detail: format!(
                        "attached on node {} at {} by mount IDs {}",
                        self.cfg.node_id,
                        v.mountpoint.display(),
                        if v.mount_ids.is_empty() {
                            "(none)".to_string()
                        } else {
                            join(&v.mount_ids)
                        }
                    ),
                });
            }
            self.teardown(name, &v)?;
            self.remove_volume_entry(name)?;
            self.forget(&Self::image_ref_of_state(&v), "detached by a forced remove");
        }
        let Some(se) = found else {
            return Err(DriverError::NoSuchVolume(name.into()));
        };
        let e = se.entry.clone();
        let age = Duration::from_secs(now_secs().saturating_sub(e.created_at.max(e.updated_at)));
        match e.state {
            EntryState::Ready => {}
            EntryState::Creating if age >= self.cfg.stale_after => {
                self.remove_abandoned_image(name, &e)?;
                self.index.remove_if(name, &se.raw)?;
                return Ok(report);
            }
            EntryState::Creating => {
                return Err(DriverError::InUse {
                    volume: name.into(),
                    detail: format!("it is being created on node {}", e.node),
                });
            }
            EntryState::Removing if e.node != self.cfg.node_id && age < self.cfg.stale_after => {
                return Err(DriverError::InUse {
                    volume: name.into(),
                    detail: format!("it is being removed on node {}", e.node),
                });
            }
            EntryState::Removing => {}
        }
        let io = self.io(&e.pool, &e.namespace)?;
        let current = Self::image_ref(&e);
        match Image::open_by_id(&io, &e.image_id, &OpenOptions::new().read_only(true)) {
            Ok(i) => drop(i),
            Err(err) if err.kind() == rbd_core::ErrorKind::NotFound => {
                // The image is already gone: only the entry (and maybe records) is left.
                self.forget(&current, "its image is gone");
                self.index.remove_if(name, &se.raw)?;
                return Ok(report);
            }
            Err(err) => return Err(DriverError::ceph(format!("opening volume {name}"), err)),
        };
        // Claim it read-write cluster-wide: live holders release it or refuse (naming their
        // node and mount IDs), silent ones are fenced.
        report.claim = Some(self.claim_image(name, &current, false, Vec::new(), opts.take_over)?);
        let res = self.remove_claimed(name, force, &se, &io);
        // Gone or not, this node does not hold it any more.
        self.forget(&current, "removed");
        res.map(|()| {
            report.image_removed = true;
            report
        })
    }

    /// The remove after the claim: nobody else in the registry holds the image.
    fn remove_claimed(
        &self,
        name: &str,
        force: bool,
        se: &crate::volume::index::StoredEntry,
        io: &IoCtx,
    ) -> Result<()> {
        let e = se.entry.clone();
        let img = match Image::open_by_id(io, &e.image_id, &OpenOptions::new().read_only(true)) {
            Ok(i) => i,
            Err(err) if err.kind() == rbd_core::ErrorKind::NotFound => {
                self.index.remove_if(name, &se.raw)?;
                return Ok(());
            }
            Err(err) => return Err(DriverError::ceph(format!("opening volume {name}"), err)),
        };
        let w = self.foreign_watchers(&img)?;
        if !w.is_empty() {
            return Err(DriverError::InUse {
                volume: name.into(),
                detail: format!(
                    "its image is open by {} (a client the cluster registry does not know: on \
                     another node, or mapped by another process on this one); detach it there, \
                     or fence that client{}",
                    describe_watchers(&w),
                    if force {
                        " (force does not fence other clients)"
                    } else {
                        ""
                    }
                ),
            });
        }
        let snaps: Vec<String> = img
            .snap_list()
            .map_err(|err| DriverError::ceph(format!("listing the snapshots of {name}"), err))?
            .into_iter()
            .filter(|s| s.namespace == SnapNamespace::User)
            .map(|s| s.name)
            .collect();
        let meta = VolumeMeta::read(&img)?;
        drop(img);
        if !snaps.is_empty() {
            if !force {
                return Err(DriverError::InUse {
                    volume: name.into(),
                    detail: format!(
                        "it has snapshots ({}); remove them first, or remove with force",
                        snaps.join(", ")
                    ),
                });
            }
            self.purge_snapshots(name, io, &e.image)?;
        }

        let mut pending = PendingRemove {
            pool: e.pool.clone(),
            namespace: e.namespace.clone(),
            index_pool: self.cfg.defaults.pool.clone(),
            image_id: e.image_id.clone(),
            token: e.token.clone(),
            phase: RemovePhase::Marking,
        };
        self.save_remove(name, &pending)?;
        crash_point("remove:marking");
        let marked = IndexEntry {
            state: EntryState::Removing,
            node: self.cfg.node_id.clone(),
            updated_at: now_secs(),
            ..e.clone()
        };
        if e.state != EntryState::Removing && !self.index.replace(name, &se.raw, &marked)? {
            self.drop_pending(name)?;
            return Err(DriverError::InUse {
                volume: name.into(),
                detail: "its index entry changed while removing it (another node is using it); \
                         try again"
                    .into(),
            });
        }
        let marked_raw = if e.state == EntryState::Removing {
            se.raw.clone()
        } else {
            marked.encode()
        };
        crash_point("remove:marked");
        pending.phase = RemovePhase::RemovingImage;
        self.save_remove(name, &pending)?;
        if let Err(err) = remove_image(io, &e.image) {
            // Nothing is removed: put the entry back as it was.
            let _ = self.index.replace(name, &marked_raw, &e);
            self.drop_pending(name)?;
            return Err(err);
        }
        crash_point("remove:image-removed");
        if meta.protected_parent
            && let Some(src) = &meta.source
        {
            let _ = self.unprotect_if_unused(src);
        }
        pending.phase = RemovePhase::RemovingIndex;
        self.save_remove(name, &pending)?;
        self.index.remove_if(name, &marked_raw)?;
        crash_point("remove:index-removed");
        self.drop_pending(name)?;
        Ok(())
    }

    fn save_remove(&self, name: &str, p: &PendingRemove) -> Result<()> {
        self.store.update(|st| {
            st.pending.insert(name.into(), PendingOp::Remove(p.clone()));
        })
    }

    /// Finishes a remove that crashed (recovery rolls removes forward). Returns what it
    /// did.
    pub(super) fn finish_remove(&self, name: &str, p: &PendingRemove) -> Result<Vec<String>> {
        let mut did = Vec::new();
        let io = self.io(&p.pool, &p.namespace)?;
        match Image::open_by_id(&io, &p.image_id, &OpenOptions::new().read_only(true)) {
            Ok(img) => {
                let meta = VolumeMeta::read(&img)?;
                let w = self.foreign_watchers(&img)?;
                if !w.is_empty() {
                    return Err(DriverError::InUse {
                        volume: name.into(),
                        detail: format!(
                            "cannot finish its removal: open by {}",
                            describe_watchers(&w)
                        ),
                    });
                }
                let image_name = img
                    .name()
                    .map_err(|e| DriverError::ceph(format!("reading the name of {name}"), e))?;
                drop(img);
                remove_image(&io, &image_name)?;
                did.push(format!("removed image {image_name} (id {})", p.image_id));
                if meta.protected_parent
                    && let Some(src) = &meta.source
                    && self.unprotect_if_unused(src).unwrap_or(false)
                {
                    did.push(format!("unprotected {src}"));
                }
            }
            Err(e) if e.kind() == rbd_core::ErrorKind::NotFound => {}
            Err(e) => return Err(DriverError::ceph(format!("opening volume {name}"), e)),
        }
        if let Some(e) = self.index.get(name)?
            && e.entry.token == p.token
            && self.index.remove_if(name, &e.raw)?
        {
            did.push("removed the index entry".into());
        }
        self.drop_pending(name)?;
        Ok(did)
    }

    /// Removes every user snapshot of an image (unprotecting protected ones), after
    /// checking that none has clones.
    pub(super) fn purge_snapshots(&self, name: &str, io: &IoCtx, image: &str) -> Result<()> {
        let head = Image::open(io, image, &OpenOptions::new())
            .map_err(|e| DriverError::ceph(format!("opening volume {name}"), e))?;
        let snaps: Vec<String> = head
            .snap_list()
            .map_err(|e| DriverError::ceph(format!("listing the snapshots of {name}"), e))?
            .into_iter()
            .filter(|s| s.namespace == SnapNamespace::User)
            .map(|s| s.name)
            .collect();
        let mut protected = Vec::new();
        for s in &snaps {
            let at = Image::open(io, image, &OpenOptions::new().snapshot(s.clone()))
                .map_err(|e| DriverError::ceph(format!("opening {name}@{s}"), e))?;
            let children = at
                .list_children()
                .map_err(|e| DriverError::ceph(format!("listing the clones of {name}@{s}"), e))?;
            if !children.is_empty() {
                return Err(DriverError::InUse {
                    volume: name.into(),
                    detail: format!(
                        "its snapshot {s} has clones ({}); remove or flatten them first",
                        children
                            .iter()
                            .map(|c| crate::mapper::image_spec(
                                &c.pool_name,
                                &c.pool_namespace,
                                &c.image_name,
                                None
                            ))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                });
            }
            if head.snap_is_protected(s).unwrap_or(false) {
                protected.push(s.clone());
            }
        }
        for s in &snaps {
            if protected.contains(s) {
                head.snap_unprotect(s)
                    .map_err(|e| DriverError::ceph(format!("unprotecting {name}@{s}"), e))?;
            }
            head.snap_remove(s)
                .map_err(|e| DriverError::ceph(format!("removing snapshot {name}@{s}"), e))?;
        }
        Ok(())
    }

    /// Grows a volume to `new_size` bytes: the image, then, when it is mounted read-write
    /// on this node, the filesystem online (after the mapped device shows the new size).
    /// A volume mounted elsewhere or not at all gets its filesystem grown at its next
    /// read-write attach. Shrinking is refused. [`Driver::resize_with_report`] also says
    /// which of those happened.
    pub fn resize(&self, name: &str, new_size: u64) -> Result<()> {
        self.resize_with_report(name, new_size).map(|_| ())
    }

    /// [`Driver::resize`], reporting the image's size before and after and what happened to
    /// the filesystem: grown online (with its `statvfs` size before and after), or left
    /// for the next read-write attach (and why).
    pub fn resize_with_report(&self, name: &str, new_size: u64) -> Result<ResizeReport> {
        validate_volume_name(name)?;
        crate::volume::spec::parse_volume_size(&format!("{new_size}B"))?;
        let _lock = self.lock(name)?;
        let loc = self.locate(name)?;
        let img = self.open(name, &loc, false)?;
        let cur = img
            .size()
            .map_err(|e| DriverError::ceph(format!("reading the size of {name}"), e))?;
        if new_size < cur {
            return Err(DriverError::invalid(
                "size",
                new_size.to_string(),
                format!("volume {name} is {cur} bytes; shrinking is not supported"),
            ));
        }
        if new_size > cur {
            img.resize(new_size, Shrink::Forbid)
                .map_err(|e| DriverError::ceph(format!("resizing volume {name}"), e))?;
        }
        let meta = VolumeMeta::read(&img)?;
        drop(img);
        let mut report = ResizeReport {
            volume: name.to_owned(),
            image_size_before: cur,
            image_size: new_size,
            filesystem: FsGrowth::NextAttach,
            fstype: meta.formatted,
            mountpoint: None,
            device: None,
            fs_size_before: None,
            fs_size_after: None,
            note: String::new(),
        };
        let st = self.load_state()?;
        let Some(v) = st.volumes.get(name).filter(|v| v.phase == Phase::Mounted) else {
            report.note = "not mounted on this node: the filesystem grows at its next \
                           read-write attach"
                .into();
            return Ok(report);
        };
        report.mountpoint = Some(v.mountpoint.clone());
        report.device = v.device.clone();
        if v.read_only {
            report.note = "mounted read-only on this node: the filesystem grows at its next \
                           read-write attach"
                .into();
            return Ok(report);
        }
        let Some(dev) = &v.device else {
            report.note = "no device recorded for the mount: the filesystem grows at its \
                           next read-write attach"
                .into();
            return Ok(report);
        };
        wait_for_size(dev, new_size, self.cfg.resize_wait)?;
        let fs = match meta.formatted {
            Some(f) => f,
            None => match fs_format::probe(dev) {
                Ok(fs_format::Probe::Filesystem(i)) => i.kind.fs_type(),
                _ => {
                    report.filesystem = FsGrowth::None;
                    report.note = format!("{} holds no filesystem to grow", dev.display());
                    return Ok(report);
                }
            },
        };
        report.fstype = Some(fs);
        let g = fs_format::grow(&v.mountpoint, fs, &fs_format::GrowOptions::default()).map_err(
            |e| {
                DriverError::fs(
                    format!(
                        "volume {name} was resized to {new_size} bytes, but growing its mounted \
                         {fs} filesystem failed (online ext4 resizes need CAP_SYS_RESOURCE); \
                         it is grown at its next read-write attach"
                    ),
                    e,
                )
            },
        )?;
        report.filesystem = FsGrowth::Online;
        report.fs_size_before = g.size_before;
        report.fs_size_after = g.size_after;
        report.note = format!("{fs} grown online at {}", v.mountpoint.display());
        Ok(report)
    }

    /// Takes a snapshot of a volume. When it is mounted read-write on this node, the
    /// filesystem is frozen (`FIFREEZE`) for the moment of the snapshot, so the snapshot
    /// is consistent.
    pub fn snapshot(&self, name: &str, snap: &str) -> Result<()> {
        validate_volume_name(name)?;
        validate_snapshot_name(snap)?;
        let _lock = self.lock(name)?;
        let loc = self.locate(name)?;
        let img = self.open(name, &loc, false)?;
        if img
            .snap_exists(snap)
            .map_err(|e| DriverError::ceph(format!("checking snapshots of {name}"), e))?
        {
            return Err(DriverError::invalid(
                "snapshot name",
                snap,
                format!("volume {name} already has a snapshot of that name"),
            ));
        }
        let st = self.load_state()?;
        let _freeze = match st.volumes.get(name) {
            Some(v) if v.phase == Phase::Mounted && !v.read_only => {
                Some(Freeze::new(&v.mountpoint)?)
            }
            _ => None,
        };
        img.snap_create(snap)
            .map_err(|e| DriverError::ceph(format!("creating snapshot {name}@{snap}"), e))
    }
}

fn remove_image(io: &IoCtx, image: &str) -> Result<()> {
    match rbd::remove(io, image) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == rbd_core::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(DriverError::ceph(format!("removing image {image}"), e)),
    }
}

/// What happened to a volume's filesystem in [`Driver::resize_with_report`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FsGrowth {
    /// Grown now, while mounted read-write on this node.
    Online,
    /// Not mounted read-write on this node: grown at its next read-write attach.
    NextAttach,
    /// The device holds no filesystem (a volume never attached, formatted at first attach).
    None,
}

/// What [`Driver::resize_with_report`] did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ResizeReport {
    /// The volume.
    pub volume: String,
    /// The image's size before, in bytes.
    pub image_size_before: u64,
    /// The image's size now, in bytes.
    pub image_size: u64,
    /// What happened to the filesystem.
    pub filesystem: FsGrowth,
    /// The filesystem type, when known.
    pub fstype: Option<FsType>,
    /// Where the volume is mounted on this node, if it is.
    pub mountpoint: Option<PathBuf>,
    /// Its mapped device on this node, if any.
    pub device: Option<PathBuf>,
    /// The filesystem's size (`statvfs`) before an online grow.
    pub fs_size_before: Option<u64>,
    /// The filesystem's size (`statvfs`) after an online grow.
    pub fs_size_after: Option<u64>,
    /// One line for people: what was done, or why the filesystem waits.
    pub note: String,
}
