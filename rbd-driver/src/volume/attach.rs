//! `Driver::attach` / `Driver::detach`, and the shared teardown.

use std::fs;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fs_format::{FsType, MkfsOptions, MountOptions, Probe, UnmountOutcome};
use rbd_core::{EntityAddr, Image, OpenOptions};
use serde::Serialize;

use crate::error::{DriverError, Result};
use crate::mapper::{self, MapRequest, Mapping};
use crate::volume::cluster::{AttachReport, AttachTimings, ms};
use crate::volume::crash::crash_point;
use crate::volume::create::describe_watchers;
use crate::volume::driver::{Driver, validate_mount_id};
use crate::volume::meta::{self, VolumeMeta, keys};
use crate::volume::name::validate_volume_name;
use crate::volume::spec::AccessMode;
use crate::volume::state::{Phase, VolumeState};

/// How [`Driver::attach_with`] attaches a volume.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AttachOptions {
    /// Read-only or read-write; `None`: the volume's access option.
    pub mode: Option<AccessMode>,
    /// Take the volume from another node even while it uses it: that node is asked to
    /// release it by force (unmounting it from under its containers), and fenced if it
    /// still does not release it (refuses, fails, hangs).
    pub take_over: bool,
}

/// What [`Driver::detach_with_report`] did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DetachReport {
    /// The mount ID was not holding the volume (nothing to do).
    pub unknown_mount_id: bool,
    /// Mount IDs still holding the volume on this node.
    pub remaining_mount_ids: Vec<String>,
    /// How the unmount went, when this was the last reference: `unmounted`, or
    /// `lazily-detached` when the filesystem was busy and was detached with `MNT_DETACH`
    /// (it stays active until its last open file is closed).
    pub unmount: Option<String>,
    /// The device was unmapped.
    pub unmapped: bool,
    /// Everything done, in order, for the log.
    pub actions: Vec<String>,
}

impl Driver {
    pub(super) fn put_volume(&self, name: &str, v: &VolumeState) -> Result<()> {
        self.store.update(|st| {
            st.volumes.insert(name.into(), v.clone());
        })
    }

    pub(super) fn remove_volume_entry(&self, name: &str) -> Result<()> {
        self.store.update(|st| {
            st.volumes.remove(name);
        })
    }

    pub(super) fn map_request(&self, v: &VolumeState) -> MapRequest {
        MapRequest {
            pool: v.pool.clone(),
            namespace: v.namespace.clone(),
            image: v.image.clone(),
            image_id: v.image_id.clone(),
            snap: None,
            read_only: v.read_only,
            // Read-write mappings take the exclusive lock at map time and keep it, except
            // krbd's: the kernel implements none of librbd's proxied maintenance requests,
            // so with `exclusive` (no lock transitions) the driver's own resize and
            // snapshot of a mounted volume fail with EROFS (found by rbdctl's
            // `volume_guest` test). Without it the kernel takes the lock at its first
            // write (krbd locks lazily), hands it over when the resize or snapshot asks
            // for it, and takes it back at its next write. One read-write holder per
            // image is what the cluster registry guarantees, for every backend. The
            // userspace mapper and rbd-nbd serve those requests through their own
            // librbd, so they keep the lock.
            exclusive: !v.read_only && v.backend != Some(mapper::Backend::Krbd),
            auth: self.cfg.auth.clone(),
            options: self.cfg.map_options.clone(),
        }
    }

    /// Makes sure `device` holds the volume's filesystem and returns its type: a blank
    /// device is formatted (read-write only); a device with the expected filesystem is
    /// used as is; anything else (another filesystem than the one it was formatted with,
    /// a partition table, unknown data, or a blank device of a volume that was already
    /// formatted) is refused and never formatted.
    pub(super) fn ensure_fs(
        &self,
        name: &str,
        meta: &VolumeMeta,
        device: &Path,
        read_only: bool,
    ) -> Result<FsType> {
        let found = fs_format::probe(device).map_err(|e| {
            DriverError::fs(format!("probing {} of volume {name}", device.display()), e)
        })?;
        match found {
            Probe::Blank => {
                if let Some(f) = meta.formatted {
                    return Err(DriverError::invalid(
                        "volume",
                        name,
                        format!(
                            "it was formatted as {f} but its device {} reads as blank; \
                             refusing to format it again",
                            device.display()
                        ),
                    ));
                }
                if read_only {
                    return Err(DriverError::invalid(
                        "volume",
                        name,
                        "it has no filesystem yet; attach it read-write once to format it",
                    ));
                }
                let fs = meta.fstype.unwrap_or(self.cfg.defaults.fstype);
                let opts = MkfsOptions {
                    extra: meta.mkfs_options.clone(),
                    timeout: self.cfg.mkfs_timeout,
                    ..MkfsOptions::default()
                };
                fs_format::mkfs(device, fs, &opts).map_err(|e| {
                    DriverError::fs(
                        format!("creating {fs} on {} for volume {name}", device.display()),
                        e,
                    )
                })?;
                Ok(fs)
            }
            Probe::Filesystem(info) => {
                let fs = info.kind.fs_type();
                if let Some(f) = meta.formatted
                    && f != fs
                {
                    return Err(DriverError::invalid(
                        "volume",
                        name,
                        format!("it was formatted as {f} but now holds {}", info.kind),
                    ));
                }
                Ok(fs)
            }
            other => Err(DriverError::invalid(
                "volume",
                name,
                format!(
                    "its device {} holds {other}; refusing to format or mount it",
                    device.display()
                ),
            )),
        }
    }

    /// Attaches a volume on this node for `mount_id` and returns its mountpoint
    /// (`<mount_root>/<name>`).
    ///
    /// First the reconcile check: this node's stale devices of the volume (of an older
    /// image with the same name, of an image held by another node, fenced, or whose mapper
    /// is gone) are cleaned. The first attach then claims the image cluster-wide (read-write
    /// or read-only; holders elsewhere are asked to release it, and refuse while it is in
    /// use, naming their node and mount IDs; silent ones are fenced), maps it (read-write
    /// maps take the exclusive lock), records the device and the mapping's exact client
    /// address in the registry, probes it, formats it if blank, optionally checks it, mounts
    /// it and records the mount IDs. Further attaches by other mount IDs share the mount (a
    /// reference count per mount ID in the state file); the same mount ID twice is
    /// idempotent. `mode` `None` uses the volume's access option. A read-only request
    /// shares a read-write mount; a read-write request on a read-only mount is refused.
    ///
    /// Each step is recorded before it runs; a failure undoes the steps done (and
    /// unregisters), a crash is undone by recovery.
    pub fn attach(&self, name: &str, mount_id: &str, mode: Option<AccessMode>) -> Result<PathBuf> {
        self.attach_with_report(name, mount_id, mode)
            .map(|r| r.mountpoint)
    }

    /// [`Driver::attach`], saying what it did: stale devices cleaned, the claim (who
    /// released, who was fenced), the device and client address, step timings.
    pub fn attach_with_report(
        &self,
        name: &str,
        mount_id: &str,
        mode: Option<AccessMode>,
    ) -> Result<AttachReport> {
        self.attach_with(
            name,
            mount_id,
            &AttachOptions {
                mode,
                ..AttachOptions::default()
            },
        )
    }

    /// [`Driver::attach_with_report`] with options: with [`AttachOptions::take_over`], a
    /// node that holds the volume and uses it is forced to release it, and fenced if it
    /// does not; without, its refusal names it.
    pub fn attach_with(
        &self,
        name: &str,
        mount_id: &str,
        opts: &AttachOptions,
    ) -> Result<AttachReport> {
        let mode = opts.mode;
        let t0 = Instant::now();
        validate_volume_name(name)?;
        validate_mount_id(mount_id)?;
        let _lock = self.lock(name)?;
        let mut timings = AttachTimings::default();
        let loc = match self.locate(name) {
            Ok(l) => l,
            Err(e @ DriverError::NoSuchVolume(_)) => {
                // Clean what this node still has of a removed volume of that name.
                let (pool, ns) = (
                    self.cfg.defaults.pool.clone(),
                    self.cfg.defaults.namespace.clone(),
                );
                if let Err(err) = self.reconcile_name(name, &pool, &ns, None) {
                    tracing::warn!("cleaning leftovers of removed volume {name}: {err}");
                }
                return Err(e);
            }
            Err(e) => return Err(e),
        };
        let current = Self::image_ref(&loc.entry.entry);
        let tc = Instant::now();
        let cleaned =
            self.reconcile_name(name, &current.pool, &current.namespace, Some(&current))?;
        timings.check_ms = ms(tc);
        let mut report = AttachReport {
            mountpoint: self.mountpoint_of(name),
            shared: false,
            cleaned,
            claim: None,
            device: None,
            client_addr: None,
            cleaned_locks: Vec::new(),
            warnings: Vec::new(),
            timings,
        };
        let mut keep_ids = std::collections::BTreeSet::new();
        let st = self.load_state()?;
        if let Some(v) = st.volumes.get(name).cloned() {
            if v.phase == Phase::Mounted && self.healthy(&v)? {
                if mode == Some(AccessMode::ReadWrite) && v.read_only {
                    let meta = VolumeMeta::read(&self.open(name, &loc, true)?)?;
                    if meta.access.is_read_only() {
                        return Err(read_only_volume(name));
                    }
                    return Err(DriverError::InUse {
                        volume: name.into(),
                        detail: format!(
                            "it is attached read-only on node {} by mount IDs {}; detach those \
                             before attaching it read-write",
                            self.cfg.node_id,
                            join(&v.mount_ids)
                        ),
                    });
                }
                let mut v = v;
                if !v.mount_ids.contains(mount_id) {
                    crash_point("attach:sharing");
                    self.store.update(|st| {
                        if let Some(e) = st.volumes.get_mut(name) {
                            e.mount_ids.insert(mount_id.to_owned());
                        }
                    })?;
                    crash_point("attach:shared");
                    v.mount_ids.insert(mount_id.to_owned());
                    let tr = Instant::now();
                    self.register_mounts(&v);
                    report.timings.register_ms = ms(tr);
                }
                report.shared = true;
                report.device = v.device.clone();
                report.mountpoint = v.mountpoint;
                report.timings.total_ms = ms(t0);
                return Ok(report);
            }
            // A broken or half-done attachment (its process died): undo it, keep the
            // references of a broken mount, and attach afresh.
            if v.phase == Phase::Mounted {
                keep_ids = v.mount_ids.clone();
            }
            self.recover_name(name, &mut Default::default())?;
        } else {
            self.recover_name(name, &mut Default::default())?;
        }
        keep_ids.insert(mount_id.to_owned());

        let image = self.open(name, &loc, true)?;
        let meta = VolumeMeta::read(&image)?;
        drop(image);
        let access = mode.unwrap_or(meta.access);
        if meta.access.is_read_only() && !access.is_read_only() {
            return Err(read_only_volume(name));
        }
        let read_only = access.is_read_only();

        // Claim it cluster-wide. This node's remaining mappings of the image (none,
        // normally) are never fenced.
        let protect: Vec<EntityAddr> = self
            .local_mappings(&current.pool, &current.namespace, &current.image_id)?
            .iter()
            .filter_map(|m| m.client_addr)
            .collect();
        let tc = Instant::now();
        let claim = self.claim_image(name, &current, read_only, protect, opts.take_over)?;
        report.timings.claim_ms = ms(tc);
        report.claim = Some(claim);
        report.warnings.extend(self.daemon_warning(&current.pool));
        let res = self.attach_claimed(
            name,
            &loc,
            &meta,
            read_only,
            keep_ids,
            &current,
            &mut report,
        );
        match res {
            Ok(()) => {
                report.timings.total_ms = ms(t0);
                Ok(report)
            }
            Err(e) => {
                self.forget(&current, "its attach failed");
                Err(e)
            }
        }
    }

    /// The attach after a successful claim: check for clients outside the registry, map,
    /// register the mapping, format and mount, register the mount IDs.
    #[allow(clippy::too_many_arguments)]
    fn attach_claimed(
        &self,
        name: &str,
        loc: &super::driver::Located,
        meta: &VolumeMeta,
        read_only: bool,
        keep_ids: std::collections::BTreeSet<String>,
        current: &crate::cluster::ImageRef,
        report: &mut AttachReport,
    ) -> Result<()> {
        if !read_only {
            // The registry is ours now; a client it does not know about (a process on
            // some host that opened the image directly) still blocks a read-write map.
            let image = self.open(name, loc, true)?;
            let mut w = self.foreign_watchers(&image)?;
            let mut owners = self.lock_holders(&image);
            if !w.is_empty() || !owners.is_empty() {
                // Clients on the blocklist are fenced: their watches go, and a lock they
                // left behind is broken (they can never use it again).
                let fenced = self.break_fenced_locks(name, loc)?;
                if !fenced.is_empty() {
                    report.cleaned_locks = fenced;
                    let image = self.open(name, loc, true)?;
                    w = self.foreign_watchers(&image)?;
                    owners = self.lock_holders(&image);
                }
            }
            if !w.is_empty() || !owners.is_empty() {
                let mut detail = Vec::new();
                if !w.is_empty() {
                    detail.push(format!("open by {}", describe_watchers(&w)));
                }
                if !owners.is_empty() {
                    detail.push(format!("exclusive lock held by {}", owners.join(", ")));
                }
                return Err(DriverError::InUse {
                    volume: name.into(),
                    detail: format!(
                        "{} (a client the cluster registry does not know: on another node or \
                         by another process); detach it there first, or fence that client",
                        detail.join("; ")
                    ),
                });
            }
        }
        let mapper = self.mapper()?;
        let e = &loc.entry.entry;
        let mut v = VolumeState {
            pool: e.pool.clone(),
            namespace: e.namespace.clone(),
            image: e.image.clone(),
            image_id: e.image_id.clone(),
            backend: Some(mapper.backend()),
            device: None,
            mountpoint: self.mountpoint_of(name),
            read_only,
            mount_ids: keep_ids,
            phase: Phase::Mapping,
        };
        self.put_volume(name, &v)?;
        crash_point("attach:mapping");
        let tm = Instant::now();
        let mapping = match mapper.map(&self.map_request(&v)) {
            Ok(m) => m,
            Err(err) => {
                self.remove_volume_entry(name)?;
                return Err(err);
            }
        };
        report.timings.map_ms = ms(tm);
        crash_point("attach:mapped");
        v.device = Some(mapping.device.clone());
        v.phase = Phase::Formatting;
        report.device = Some(mapping.device.clone());
        report.client_addr = mapping.client_addr;
        let res = self.put_volume(name, &v).and_then(|_| {
            let tr = Instant::now();
            self.register_mapping(current, &mapping)?;
            report.timings.register_ms = ms(tr);
            let tm = Instant::now();
            self.attach_steps(name, loc, meta, &mut v, &mapping)?;
            report.timings.mount_ms = ms(tm);
            let tr = Instant::now();
            self.register_mounts(&v);
            report.timings.register_ms += ms(tr);
            Ok(())
        });
        match res {
            Ok(()) => {
                report.mountpoint = v.mountpoint.clone();
                Ok(())
            }
            Err(err) => match self
                .teardown(name, &v)
                .and_then(|_| self.remove_volume_entry(name))
            {
                Ok(()) => Err(err),
                Err(undo) => Err(DriverError::CleanupFailed {
                    op: format!("attaching volume {name}"),
                    cleanup: undo.to_string(),
                    source: Box::new(err),
                }),
            },
        }
    }

    fn attach_steps(
        &self,
        name: &str,
        loc: &super::driver::Located,
        meta: &VolumeMeta,
        v: &mut VolumeState,
        mapping: &Mapping,
    ) -> Result<()> {
        crash_point("attach:formatting");
        let device = &mapping.device;
        let fs = self.ensure_fs(name, meta, device, v.read_only)?;
        if !v.read_only && self.cfg.defaults.fsck_on_attach {
            crash_point("attach:checking");
            let report = fs_format::fsck(
                device,
                fs,
                &fs_format::FsckOptions {
                    timeout: self.cfg.fsck_timeout,
                    ..Default::default()
                },
            )
            .map_err(|e| DriverError::fs(format!("checking {fs} on {}", device.display()), e))?;
            let xfs_dirty_log = fs == FsType::Xfs && report.output.code() == Some(2);
            if !matches!(
                report.outcome,
                fs_format::FsckOutcome::Clean | fs_format::FsckOutcome::ErrorsCorrected
            ) && !xfs_dirty_log
            {
                return Err(DriverError::Command {
                    command: format!("fsck of volume {name} ({fs} on {})", device.display()),
                    status: format!("{:?}", report.outcome),
                    stderr: format!("{}{}", report.output.stdout, report.output.stderr)
                        .trim()
                        .to_owned(),
                });
            }
            crash_point("attach:checked");
        }
        if !v.read_only {
            self.grow_offline_if_needed(name, fs, device)?;
        }
        v.phase = Phase::Mounting;
        self.put_volume(name, v)?;
        crash_point("attach:mounting");
        make_mountpoint(&self.cfg.mount_root, &v.mountpoint)?;
        fs_format::mount(
            device,
            &v.mountpoint,
            fs,
            &MountOptions {
                read_only: v.read_only,
                options: meta.mount_options.clone(),
            },
        )
        .map_err(|e| DriverError::fs(format!("mounting volume {name}"), e))?;
        crash_point("attach:mounted");
        if !v.read_only {
            self.grow_online_if_needed(name, fs, device, &v.mountpoint)?;
            if meta.formatted != Some(fs) {
                // Best effort: the mapper holds the exclusive lock, so librbd forwards this
                // to it; if it fails, the next attach records it.
                if let Ok(img) = Image::open_by_id(&loc.io, &v.image_id, &OpenOptions::new()) {
                    let _ = meta::set(&img, keys::FORMATTED, fs.as_str());
                }
            }
        }
        v.phase = Phase::Mounted;
        self.put_volume(name, v)
    }

    /// Breaks the exclusive lock of the volume's image when its owner is on the OSD
    /// blocklist (a fenced client never gets its session back), and returns the owners
    /// whose locks were broken. Watchers on the blocklist are dropped by the OSDs.
    fn break_fenced_locks(&self, name: &str, loc: &super::driver::Located) -> Result<Vec<String>> {
        let blocklist = self
            .rados
            .blocklist_ls()
            .map_err(|e| DriverError::ceph("reading the OSD blocklist", e))?;
        let img = self.open(name, loc, false)?;
        let owners = img.lock_get_owners().map(|o| o.owners).unwrap_or_default();
        let mut broke = Vec::new();
        for o in owners {
            let Ok(addr) = o.parse::<EntityAddr>() else {
                continue;
            };
            if crate::cluster::reconcile::blocklist_match(&addr, &blocklist).is_none() {
                continue;
            }
            match img.lock_break(rbd_core::rbd::LockMode::Exclusive, &o) {
                Ok(()) => {
                    tracing::warn!("volume {name}: broke the exclusive lock of fenced client {o}");
                    broke.push(o);
                }
                Err(e) if e.kind() == rbd_core::ErrorKind::Busy => {}
                Err(e) => {
                    return Err(DriverError::ceph(
                        format!("breaking the exclusive lock of fenced client {o} on {name}"),
                        e,
                    ));
                }
            }
        }
        if !broke.is_empty() {
            // The watches of blocklisted clients are dropped by the OSDs shortly.
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                let w = self.foreign_watchers(&img)?;
                if w.iter().all(|w| {
                    crate::cluster::reconcile::blocklist_match(&w.addr, &blocklist).is_none()
                }) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Ok(broke)
    }

    /// Whether the device is larger (by 1 MiB or more) than the filesystem on it (the
    /// image was resized while the filesystem was not mounted here).
    fn needs_grow(device: &Path) -> Result<bool> {
        let dev = fs_format::device_size(device)
            .map_err(|e| DriverError::fs(format!("reading the size of {}", device.display()), e))?;
        Ok(match fs_format::probe(device) {
            Ok(Probe::Filesystem(info)) => dev >= info.size_bytes + (1 << 20),
            _ => false,
        })
    }

    /// Before mounting read-write: an ext4 filesystem smaller than its device is grown
    /// offline (`e2fsck -f -p`, then `resize2fs`). Offline growing needs no
    /// `CAP_SYS_RESOURCE`, which the kernel requires for online ext4 resizes.
    fn grow_offline_if_needed(&self, name: &str, fs: FsType, device: &Path) -> Result<()> {
        if fs != FsType::Ext4 || !Self::needs_grow(device)? {
            return Ok(());
        }
        crash_point("attach:growing");
        let report = fs_format::fsck(
            device,
            fs,
            &fs_format::FsckOptions {
                force_full_check: true,
                timeout: self.cfg.fsck_timeout,
            },
        )
        .map_err(|e| DriverError::fs(format!("checking volume {name} before growing it"), e))?;
        if !matches!(
            report.outcome,
            fs_format::FsckOutcome::Clean | fs_format::FsckOutcome::ErrorsCorrected
        ) {
            return Err(DriverError::Command {
                command: format!("e2fsck -f -p of volume {name} before growing it"),
                status: format!("{:?}", report.outcome),
                stderr: format!("{}{}", report.output.stdout, report.output.stderr)
                    .trim()
                    .to_owned(),
            });
        }
        fs_format::grow(device, fs, &fs_format::GrowOptions::default())
            .map_err(|e| DriverError::fs(format!("growing the filesystem of volume {name}"), e))?;
        crash_point("attach:grown");
        Ok(())
    }

    /// After mounting read-write: xfs and btrfs (which grow only online) are grown to
    /// their device.
    fn grow_online_if_needed(
        &self,
        name: &str,
        fs: FsType,
        device: &Path,
        mp: &Path,
    ) -> Result<()> {
        if fs == FsType::Ext4 || !Self::needs_grow(device)? {
            return Ok(());
        }
        crash_point("attach:growing-online");
        fs_format::grow(mp, fs, &fs_format::GrowOptions::default())
            .map_err(|e| DriverError::fs(format!("growing the filesystem of volume {name}"), e))?;
        crash_point("attach:grown-online");
        Ok(())
    }

    /// Whether a recorded attachment is intact: mounted at its mountpoint and its image
    /// still mapped here (found by image id).
    pub(super) fn healthy(&self, v: &VolumeState) -> Result<bool> {
        self.healthy_in(v, None)
    }

    /// [`Self::healthy`], judged first against `listed` (this node's mappings, listed
    /// once for a whole pass) when given. Only a "healthy" verdict is taken from it: a
    /// mapping made after the listing (an attach that finished meanwhile) is missing
    /// there, so "unhealthy" is confirmed against a fresh listing before anyone acts on
    /// it.
    pub(super) fn healthy_in(&self, v: &VolumeState, listed: Option<&[Mapping]>) -> Result<bool> {
        let mounted = fs_format::is_mountpoint(&v.mountpoint).unwrap_or(false);
        if !mounted {
            return Ok(false);
        }
        // A mapping served by a process (userspace, nbd) is only alive with its process;
        // a dead mapper's device is listed with no pid and fails every I/O.
        let alive = |m: &Mapping| m.backend == crate::mapper::Backend::Krbd || m.pid.is_some();
        let ok = |maps: &mut dyn Iterator<Item = &Mapping>| {
            let mut maps = maps.filter(|m| m.is_image(&v.pool, &v.namespace, &v.image_id));
            match &v.device {
                Some(d) => maps.any(|m| &m.device == d && alive(m)),
                None => maps.any(alive),
            }
        };
        if let Some(l) = listed
            && ok(&mut l.iter())
        {
            return Ok(true);
        }
        let maps = self.local_mappings(&v.pool, &v.namespace, &v.image_id)?;
        Ok(ok(&mut maps.iter()))
    }

    /// Drops `mount_id`'s reference. The last reference unmounts (falling back to a lazy
    /// detach when busy) and unmaps. An unknown mount ID (or a volume not attached here)
    /// is not an error: Docker sends Unmount after a failed Mount.
    pub fn detach(&self, name: &str, mount_id: &str) -> Result<()> {
        self.detach_with_report(name, mount_id).map(|_| ())
    }

    /// [`Driver::detach`], saying what it did.
    pub fn detach_with_report(&self, name: &str, mount_id: &str) -> Result<DetachReport> {
        validate_volume_name(name)?;
        validate_mount_id(mount_id)?;
        let _lock = self.lock(name)?;
        let mut report = DetachReport {
            unknown_mount_id: false,
            remaining_mount_ids: Vec::new(),
            unmount: None,
            unmapped: false,
            actions: Vec::new(),
        };
        let st = self.load_state()?;
        let Some(mut v) = st.volumes.get(name).cloned() else {
            report.unknown_mount_id = true;
            return Ok(report);
        };
        if !v.mount_ids.contains(mount_id) {
            report.unknown_mount_id = true;
            report.remaining_mount_ids = v.mount_ids.iter().cloned().collect();
            return Ok(report);
        }
        v.mount_ids.remove(mount_id);
        if !v.mount_ids.is_empty() && v.phase == Phase::Mounted {
            crash_point("detach:releasing");
            self.put_volume(name, &v)?;
            crash_point("detach:released");
            self.register_mounts(&v);
            report.remaining_mount_ids = v.mount_ids.iter().cloned().collect();
            return Ok(report);
        }
        let image = Self::image_ref_of_state(&v);
        if v.phase != Phase::Mounted {
            // A half-done attach or detach whose process died: undo/finish it.
            let actions = self.teardown(name, &v)?;
            self.remove_volume_entry(name)?;
            report.unmapped = true;
            report.actions = actions;
            report.actions.extend(self.forget(&image, "detached"));
            return Ok(report);
        }
        v.mount_ids.clear();
        v.phase = Phase::Unmounting;
        self.put_volume(name, &v)?;
        crash_point("detach:unmounting");
        let um = fs_format::unmount(&v.mountpoint)
            .map_err(|e| DriverError::fs(format!("unmounting volume {name}"), e))?;
        crash_point("detach:unmounted");
        let lazy = um.outcome == UnmountOutcome::LazilyDetached;
        report.unmount = Some(outcome_str(um.outcome).into());
        report.actions.push(format!(
            "{} {}",
            outcome_str(um.outcome),
            v.mountpoint.display()
        ));
        v.phase = Phase::Unmapping;
        self.put_volume(name, &v)?;
        crash_point("detach:unmapping");
        report.actions.extend(self.unmap_all(&v, lazy)?);
        crash_point("detach:unmapped");
        report.unmapped = true;
        self.remove_volume_entry(name)?;
        let _ = fs::remove_dir(&v.mountpoint);
        // Last: the registry. A failure here leaves a dangling record that the holder's
        // daemon answers "not held" for, and the next reconcile removes.
        report.actions.extend(self.forget(&image, "detached"));
        Ok(report)
    }

    /// Unmaps every local mapping of the entry's image id. After a lazy unmount the
    /// device may still be held by the detached filesystem: then a normal unmap is tried
    /// first and a forced one after it.
    fn unmap_all(&self, v: &VolumeState, after_lazy: bool) -> Result<Vec<String>> {
        let mut did = Vec::new();
        for m in self.local_mappings(&v.pool, &v.namespace, &v.image_id)? {
            let mapper = mapper::mapper_for(m.backend, &self.cfg.mapper);
            match mapper.unmap(&m, false) {
                Ok(()) => did.push(format!("unmapped {} ({})", m.device.display(), m.backend)),
                Err(e) if after_lazy => {
                    mapper.unmap(&m, true)?;
                    did.push(format!(
                        "force-unmapped {} ({}) after a lazy unmount; a normal unmap failed: {e}",
                        m.device.display(),
                        m.backend
                    ));
                }
                Err(e) => return Err(e),
            }
        }
        Ok(did)
    }

    /// Undoes an attachment in any phase: unmounts its mountpoint if mounted (lazily if
    /// busy) and unmaps every local mapping of its image id (by image id, never by
    /// name). Returns what it did.
    pub(super) fn teardown(&self, name: &str, v: &VolumeState) -> Result<Vec<String>> {
        let mut did = Vec::new();
        if fs_format::is_mountpoint(&v.mountpoint).unwrap_or(false) {
            let um = fs_format::unmount(&v.mountpoint)
                .map_err(|e| DriverError::fs(format!("unmounting volume {name}"), e))?;
            did.push(format!(
                "{} {}",
                outcome_str(um.outcome),
                v.mountpoint.display()
            ));
        }
        let maps = self.local_mappings(&v.pool, &v.namespace, &v.image_id)?;
        // Mappings whose process died (a crashed or killed mapper) leave their Ceph
        // client's watch and exclusive lock behind until the OSD times the watch out.
        let dead: Vec<EntityAddr> = maps
            .iter()
            .filter(|m| m.backend != crate::mapper::Backend::Krbd && m.pid.is_none())
            .filter_map(|m| m.client_addr)
            .collect();
        if !maps.is_empty() {
            did.extend(self.unmap_all(v, true)?);
        }
        for addr in dead {
            did.extend(self.fence_dead_mapper(name, v, &addr)?);
        }
        if fs::remove_dir(&v.mountpoint).is_ok() {
            did.push(format!("removed {}", v.mountpoint.display()));
        }
        Ok(did)
    }

    /// Fences the Ceph client of one of this node's own mappings whose mapper process is
    /// dead: when it still watches the image or holds its exclusive lock, its exact
    /// address (never a whole host, never this driver's own) is blocklisted and the lock
    /// broken, so the volume can be attached again at once instead of after the OSD's
    /// watch timeout.
    fn fence_dead_mapper(
        &self,
        name: &str,
        v: &VolumeState,
        addr: &EntityAddr,
    ) -> Result<Vec<String>> {
        let mut did = Vec::new();
        if addr.is_whole_host() || self.own_addrs().iter().any(|a| a.same_instance(addr)) {
            return Ok(did);
        }
        let io = self.io(&v.pool, &v.namespace)?;
        let image = match Image::open_by_id(&io, &v.image_id, &OpenOptions::new()) {
            Ok(i) => i,
            Err(e) if e.kind() == rbd_core::ErrorKind::NotFound => return Ok(did),
            Err(e) => return Err(DriverError::ceph(format!("opening volume {name}"), e)),
        };
        let watching = self
            .foreign_watchers(&image)?
            .iter()
            .any(|w| w.addr.same_instance(addr));
        let owners: Vec<String> = image
            .lock_get_owners()
            .map(|o| o.owners)
            .unwrap_or_default()
            .into_iter()
            .filter(|o| o.parse::<EntityAddr>().is_ok_and(|a| a.same_instance(addr)))
            .collect();
        if !watching && owners.is_empty() {
            return Ok(did);
        }
        self.rados.blocklist_add(addr, None).map_err(|e| {
            DriverError::ceph(
                format!(
                    "blocklisting the dead mapper client {} of volume {name}",
                    addr.to_legacy_string()
                ),
                e,
            )
        })?;
        did.push(format!(
            "blocklisted the dead mapper's client {}",
            addr.to_legacy_string()
        ));
        for o in owners {
            match image.lock_break(rbd_core::rbd::LockMode::Exclusive, &o) {
                Ok(()) => did.push(format!("broke its exclusive lock ({o})")),
                Err(e) if e.kind() == rbd_core::ErrorKind::Busy => {}
                Err(e) => {
                    return Err(DriverError::ceph(
                        format!("breaking the exclusive lock of {o} on volume {name}"),
                        e,
                    ));
                }
            }
        }
        Ok(did)
    }
}

fn read_only_volume(name: &str) -> DriverError {
    DriverError::invalid(
        "access mode",
        "rw",
        format!("volume {name} is read-only (created with access=ro)"),
    )
}

fn outcome_str(o: UnmountOutcome) -> &'static str {
    match o {
        UnmountOutcome::Unmounted => "unmounted",
        UnmountOutcome::LazilyDetached => "lazily-detached",
        UnmountOutcome::NotMounted => "not-mounted",
    }
}

pub(super) fn join(ids: &std::collections::BTreeSet<String>) -> String {
    ids.iter().cloned().collect::<Vec<_>>().join(", ")
}

/// Creates `<root>/<name>` as a real directory (not a symlink) inside `root`.
fn make_mountpoint(root: &Path, mp: &Path) -> Result<()> {
    if mp.parent() != Some(root) {
        return Err(DriverError::invalid(
            "mountpoint",
            mp.display().to_string(),
            format!("not directly inside the mount root {}", root.display()),
        ));
    }
    match fs::symlink_metadata(mp) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(m) => Err(DriverError::invalid(
            "mountpoint",
            mp.display().to_string(),
            format!(
                "exists and is not a directory ({})",
                if m.file_type().is_symlink() {
                    "a symlink"
                } else if m.file_type().is_block_device() {
                    "a block device"
                } else {
                    "a file"
                }
            ),
        )),
        Err(_) => fs::DirBuilder::new()
            .mode(0o755)
            .create(mp)
            .map_err(|e| DriverError::io(format!("creating mountpoint {}", mp.display()), e)),
    }
}

/// How long [`Driver::resize`] polls a device for its new size, and how often.
pub(super) fn wait_for_size(device: &Path, size: u64, timeout: Duration) -> Result<()> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let now = fs_format::device_size(device)
            .map_err(|e| DriverError::fs(format!("reading the size of {}", device.display()), e))?;
        if now >= size {
            return Ok(());
        }
        if std::time::Instant::now() >= deadline {
            return Err(DriverError::Timeout {
                what: format!(
                    "the mapped device {} growing to {size} bytes (it has {now})",
                    device.display()
                ),
                secs: timeout.as_secs(),
            });
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
