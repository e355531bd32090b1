//! `Driver::create` and its rollback.

use std::time::Duration;

use fs_format::FsType;
use rbd_core::rbd::{self, Features, ImageOptions};
use rbd_core::{Image, IoCtx, OpenOptions};

use crate::error::{DriverError, Result};
use crate::volume::crash::crash_point;
use crate::volume::driver::{Driver, Located, VolumeInfo};
use crate::volume::index::{EntryState, IndexEntry, StoredEntry, now_secs};
use crate::volume::meta::VolumeMeta;
use crate::volume::name::validate_volume_name;
use crate::volume::spec::{
    AccessMode, CreateSpec, FormatAt, SnapshotSource, check_fs_size, validate_mkfs_options,
    validate_mount_options,
};
use crate::volume::state::{CreatePhase, PendingCreate, PendingOp, Phase, VolumeState};

/// A new volume's effective options: the spec over the node defaults.
#[derive(Debug, Clone)]
pub(super) struct Resolved {
    pub pool: String,
    pub namespace: String,
    /// `None` for a clone without an explicit size (the parent snapshot's size).
    pub size: Option<u64>,
    pub fstype: FsType,
    pub features: Option<Features>,
    pub object_size: Option<u64>,
    pub data_pool: Option<String>,
    pub mkfs_options: Vec<String>,
    pub mount_options: Vec<String>,
    pub access: AccessMode,
    pub source: Option<SnapshotSource>,
}

/// The snapshot a clone is made from, checked.
pub(super) struct Parent {
    pub io: IoCtx,
    pub image: String,
    pub snap: String,
    /// Canonical `pool/[ns/]image@snap`.
    pub spec: String,
    pub snap_size: u64,
    pub protected: bool,
    pub meta: Option<VolumeMeta>,
}

/// What an existing index entry means for a create.
enum Existing {
    /// The same volume already exists: create is idempotent.
    Same(Box<VolumeInfo>),
    /// The entry was stale (its image is gone, or an abandoned create/remove) and has been
    /// cleared.
    Cleared,
}

fn invalid_source(value: &SnapshotSource, reason: impl Into<String>) -> DriverError {
    DriverError::invalid("from-snapshot", value.to_string(), reason)
}

impl Driver {
    pub(super) fn resolve(&self, spec: &CreateSpec) -> Result<Resolved> {
        let d = &self.cfg.defaults;
        let source = spec.snapshot_source()?;
        let fstype = spec.fstype.unwrap_or(d.fstype);
        let mkfs_options = spec.mkfs_options.clone().unwrap_or_else(|| {
            if spec.fstype.is_none() {
                d.mkfs_options.clone()
            } else {
                Vec::new()
            }
        });
        let mount_options = spec.mount_options.clone().unwrap_or_else(|| {
            if spec.fstype.is_none() {
                d.mount_options.clone()
            } else {
                Vec::new()
            }
        });
        validate_mkfs_options(fstype, &mkfs_options)?;
        validate_mount_options(fstype, &mount_options)?;
        Ok(Resolved {
            pool: spec.pool.clone().unwrap_or_else(|| d.pool.clone()),
            namespace: spec
                .namespace
                .clone()
                .unwrap_or_else(|| d.namespace.clone()),
            size: spec
                .size
                .or(if source.is_some() { None } else { Some(d.size) }),
            fstype,
            features: spec.features.or(d.features),
            object_size: spec.object_size.or(d.object_size),
            data_pool: spec.data_pool.clone().or_else(|| d.data_pool.clone()),
            mkfs_options,
            mount_options,
            access: spec.access.unwrap_or_default(),
            source,
        })
    }

    /// Opens the target pool and namespace, checking they (and the data pool) exist.
    fn target_io(&self, r: &Resolved) -> Result<IoCtx> {
        let io = self.rados.ioctx(&r.pool).map_err(|e| {
            if e.kind() == rbd_core::ErrorKind::NotFound {
                DriverError::invalid("pool", &r.pool, "no such pool")
            } else {
                DriverError::ceph(format!("opening pool {}", r.pool), e)
            }
        })?;
        if !r.namespace.is_empty() {
            let exists = rbd::namespace_exists(&io, &r.namespace).map_err(|e| {
                DriverError::ceph(format!("checking namespace {}/{}", r.pool, r.namespace), e)
            })?;
            if !exists {
                return Err(DriverError::invalid(
                    "namespace",
                    &r.namespace,
                    format!("no such RBD namespace in pool {}", r.pool),
                ));
            }
        }
        if let Some(dp) = &r.data_pool {
            self.rados.pool_lookup(dp).map_err(|e| {
                if e.kind() == rbd_core::ErrorKind::NotFound {
                    DriverError::invalid("data-pool", dp, "no such pool")
                } else {
                    DriverError::ceph(format!("looking up data pool {dp}"), e)
                }
            })?;
        }
        self.io(&r.pool, &r.namespace)
    }

    /// Resolves and checks a clone source: the image and snapshot exist, and the image
    /// has the layering feature.
    pub(super) fn resolve_source(&self, s: &SnapshotSource) -> Result<Parent> {
        let (io, image_name, meta_wanted) = match s {
            SnapshotSource::Volume { volume, .. } => {
                let loc = self.locate(volume).map_err(|e| match e {
                    DriverError::NoSuchVolume(_) => {
                        invalid_source(s, format!("volume {volume} does not exist"))
                    }
                    other => other,
                })?;
                (loc.io, loc.entry.entry.image, true)
            }
            SnapshotSource::Image {
                pool,
                namespace,
                image,
                ..
            } => {
                let io = self.rados.ioctx(pool).map_err(|e| {
                    if e.kind() == rbd_core::ErrorKind::NotFound {
                        invalid_source(s, format!("no such pool {pool}"))
                    } else {
                        DriverError::ceph(format!("opening pool {pool}"), e)
                    }
                })?;
                let io = io
                    .with_namespace(namespace)
                    .map_err(|e| DriverError::ceph("opening the source namespace", e))?;
                (io, image.clone(), false)
            }
        };
        let snap = s.snap().to_owned();
        let img =
            Image::open(&io, &image_name, &OpenOptions::new().read_only(true)).map_err(|e| {
                if e.kind() == rbd_core::ErrorKind::NotFound {
                    invalid_source(s, "the source image does not exist")
                } else {
                    DriverError::ceph(format!("opening the clone source {s}"), e)
                }
            })?;
        let snaps = img
            .snap_list()
            .map_err(|e| DriverError::ceph(format!("listing the snapshots of {s}"), e))?;
        let Some(info) = snaps.iter().find(|i| i.name == snap) else {
            return Err(invalid_source(
                s,
                format!(
                    "no such snapshot; the image has: {}",
                    if snaps.is_empty() {
                        "none".to_string()
                    } else {
                        snaps
                            .iter()
                            .map(|i| i.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    }
                ),
            ));
        };
        let features = img
            .features()
            .map_err(|e| DriverError::ceph(format!("reading the features of {s}"), e))?;
        if !features.contains(Features::LAYERING) {
            return Err(invalid_source(
                s,
                "the source image lacks the layering feature",
            ));
        }
        let protected = img
            .snap_is_protected(&snap)
            .map_err(|e| DriverError::ceph(format!("checking protection of {s}"), e))?;
        let meta = if meta_wanted {
            Some(VolumeMeta::read(&img)?)
        } else {
            None
        };
        let spec = SnapshotSource::Image {
            pool: io.pool_name().to_owned(),
            namespace: io.namespace().to_owned(),
            image: image_name.clone(),
            snap: snap.clone(),
        }
        .to_string();
        Ok(Parent {
            io,
            image: image_name,
            snap,
            spec,
            snap_size: info.size,
            protected,
            meta,
        })
    }

    /// Creates a volume: validates everything, claims the name in the cluster-wide index,
    /// creates (or clones) the image with exclusive-lock, records the options in its
    /// metadata, optionally formats it, then publishes the index entry.
    ///
    /// If the volume already exists with compatible options (every option given equals
    /// the existing volume's, and the existing volume is at least as large), create
    /// returns it unchanged; otherwise [`DriverError::VolumeExists`] says what differs.
    /// Any failure after the claim rolls back: no half-created image or index entry is
    /// left behind (a crash is rolled back by recovery).
    pub fn create(&self, name: &str, spec: &CreateSpec) -> Result<VolumeInfo> {
        validate_volume_name(name)?;
        spec.validate()?;
        let r = self.resolve(spec)?;
        let _lock = self.lock(name)?;
        self.recover_name(name, &mut Default::default())?;
        // Reconcile by name first: a device of a removed image with this name (left on
        // this node when the volume was removed elsewhere) is cleaned, never taken for
        // the new image.
        let current = self
            .index
            .get(name)?
            .filter(|e| crate::volume::cluster::ready(&e.entry))
            .map(|e| Self::image_ref(&e.entry));
        self.reconcile_name(name, &r.pool, &r.namespace, current.as_ref())?;

        let io = self.target_io(&r)?;
        let parent = r
            .source
            .as_ref()
            .map(|s| self.resolve_source(s))
            .transpose()?;
        if let (Some(p), Some(size)) = (&parent, r.size)
            && size < p.snap_size
        {
            return Err(DriverError::invalid(
                "size",
                size.to_string(),
                format!(
                    "smaller than the source snapshot {} ({} bytes)",
                    p.spec, p.snap_size
                ),
            ));
        }
        // The filesystem made at create or first attach must fit (mkfs refuses small
        // devices). A clone keeps its parent's filesystem, unless the parent volume was
        // never formatted; an image snapshot's content is unknown here.
        let fs_to_make = match parent.as_ref().map(|p| p.meta.as_ref()) {
            None => Some(r.fstype),
            Some(Some(m)) if m.formatted.is_none() => Some(m.fstype.unwrap_or(r.fstype)),
            Some(_) => None,
        };
        if let Some(fs) = fs_to_make {
            let size = r
                .size
                .or(parent.as_ref().map(|p| p.snap_size))
                .unwrap_or(self.cfg.defaults.size);
            check_fs_size(&size.to_string(), size, fs, &r.mkfs_options)?;
        }
        for _attempt in 0..3 {
            if let Some(existing) = self.index.get(name)? {
                match self.existing(name, existing, spec, &r)? {
                    Existing::Same(info) => return Ok(*info),
                    Existing::Cleared => {}
                }
            }
            match rbd::image_id_by_name(&io, name) {
                Ok(id) => {
                    return Err(DriverError::VolumeExists(format!(
                        "{name}: image {} (id {id}) exists but is not a volume (it has no \
                         entry in the volume index {}); remove or rename that image first",
                        crate::mapper::image_spec(&r.pool, &r.namespace, name, None),
                        self.index.location()
                    )));
                }
                Err(e) if e.kind() == rbd_core::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(DriverError::ceph(
                        format!("checking for an image named {name}"),
                        e,
                    ));
                }
            }

            let token = uuid::Uuid::new_v4().simple().to_string();
            let mut pending = PendingCreate {
                pool: r.pool.clone(),
                namespace: r.namespace.clone(),
                index_pool: self.cfg.defaults.pool.clone(),
                token: token.clone(),
                image_id: None,
                protected_parent: None,
                started_at: now_secs(),
                phase: CreatePhase::Claiming,
            };
            self.save_pending(name, &pending)?;
            crash_point("create:claiming");
            let now = now_secs();
            let entry = IndexEntry {
                pool: r.pool.clone(),
                namespace: r.namespace.clone(),
                image: name.into(),
                image_id: String::new(),
                state: EntryState::Creating,
                node: self.cfg.node_id.clone(),
                token,
                created_at: now,
                updated_at: now,
            };
            match self.index.claim(name, &entry) {
                Ok(None) => {}
                Ok(Some(_)) => {
                    // Another node won the race for this name: look at what it made.
                    self.drop_pending(name)?;
                    continue;
                }
                Err(e) => {
                    self.drop_pending(name)?;
                    return Err(e);
                }
            }
            crash_point("create:claimed");
            let res = self.create_steps(name, &r, parent.as_ref(), &io, &mut pending, &entry);
            return match res {
                Ok(info) => Ok(info),
                Err(e) => match self.rollback_create(name, &pending) {
                    Ok(_) => Err(e),
                    Err(undo) => Err(DriverError::CleanupFailed {
                        op: format!("creating volume {name}"),
                        cleanup: undo.to_string(),
                        source: Box::new(e),
                    }),
                },
            };
        }
        Err(DriverError::VolumeExists(format!(
            "{name} (its index entry kept changing while we tried to create it)"
        )))
    }

    pub(super) fn save_pending(&self, name: &str, p: &PendingCreate) -> Result<()> {
        self.store.update(|st| {
            st.pending.insert(name.into(), PendingOp::Create(p.clone()));
        })
    }

    /// Records that the create made no image (its create call failed), so that a
    /// rollback never removes an image of that name made by someone else.
    fn mark_no_image(&self, name: &str, pending: &mut PendingCreate) -> Result<()> {
        pending.phase = CreatePhase::Claiming;
        self.save_pending(name, pending)
    }

    pub(super) fn drop_pending(&self, name: &str) -> Result<()> {
        self.store.update(|st| {
            st.pending.remove(name);
        })
    }

    fn image_options(&self, r: &Resolved, clone: bool) -> Result<ImageOptions> {
        let mut o = ImageOptions::new();
        o = match r.features {
            Some(f) => {
                let mut f = f | Features::EXCLUSIVE_LOCK;
                if clone {
                    f |= Features::LAYERING;
                }
                o.features(f)
            }
            None => o.enable_features(Features::EXCLUSIVE_LOCK),
        };
        if let Some(s) = r.object_size {
            o = o
                .object_size(s)
                .map_err(|e| DriverError::invalid("object-size", s.to_string(), e.to_string()))?;
        }
        if let Some(dp) = &r.data_pool {
            o = o
                .data_pool(dp)
                .map_err(|e| DriverError::invalid("data-pool", dp, e.to_string()))?;
        }
        Ok(o)
    }

    fn create_steps(
        &self,
        name: &str,
        r: &Resolved,
        parent: Option<&Parent>,
        io: &IoCtx,
        pending: &mut PendingCreate,
        claimed: &IndexEntry,
    ) -> Result<VolumeInfo> {
        pending.phase = CreatePhase::CreatingImage;
        let spec = crate::mapper::image_spec(&r.pool, &r.namespace, name, None);
        let mut meta = VolumeMeta {
            name: Some(name.into()),
            token: Some(pending.token.clone()),
            fstype: Some(r.fstype),
            mkfs_options: r.mkfs_options.clone(),
            mount_options: r.mount_options.clone(),
            access: r.access,
            formatted: None,
            created_by: Some(self.cfg.node_id.clone()),
            source: None,
            protected_parent: false,
        };
        match parent {
            Some(p) => {
                if !p.protected {
                    pending.protected_parent = Some(p.spec.clone());
                }
                self.save_pending(name, pending)?;
                if !p.protected {
                    let pimg = Image::open(&p.io, &p.image, &OpenOptions::new())
                        .map_err(|e| DriverError::ceph(format!("opening {}", p.spec), e))?;
                    match pimg.snap_protect(&p.snap) {
                        Ok(()) => meta.protected_parent = true,
                        // Protected by someone else meanwhile: not ours to unprotect.
                        Err(e) if e.kind() == rbd_core::ErrorKind::Busy => {
                            pending.protected_parent = None;
                            self.save_pending(name, pending)?;
                        }
                        Err(e) => {
                            return Err(DriverError::ceph(
                                format!("protecting snapshot {} to clone it", p.spec),
                                e,
                            ));
                        }
                    }
                }
                meta.source = Some(p.spec.clone());
                if let Some(pm) = &p.meta
                    && r.source.is_some()
                {
                    // A clone keeps its parent's filesystem settings unless given.
                    meta.fstype = pm.formatted.or(pm.fstype).or(meta.fstype);
                    if meta.mount_options.is_empty() {
                        meta.mount_options = pm.mount_options.clone();
                    }
                }
                if let Err(e) = rbd::clone_image(
                    &p.io,
                    &p.image,
                    &p.snap,
                    io,
                    name,
                    &self.image_options(r, true)?,
                ) {
                    // Nothing was made: the rollback must not look for an image.
                    self.mark_no_image(name, pending)?;
                    return Err(DriverError::ceph(
                        format!("cloning {} to {spec}", p.spec),
                        e,
                    ));
                }
            }
            None => {
                self.save_pending(name, pending)?;
                let size = r.size.unwrap_or(self.cfg.defaults.size);
                if let Err(e) = rbd::create(io, name, size, &self.image_options(r, false)?) {
                    self.mark_no_image(name, pending)?;
                    return Err(DriverError::ceph(format!("creating image {spec}"), e));
                }
            }
        }
        crash_point("create:image-created");
        let image = Image::open(io, name, &OpenOptions::new())
            .map_err(|e| DriverError::ceph(format!("opening the new image {spec}"), e))?;
        let image_id = image
            .id()
            .map_err(|e| DriverError::ceph(format!("reading the id of {spec}"), e))?;
        pending.image_id = Some(image_id.clone());
        pending.phase = CreatePhase::SettingMetadata;
        self.save_pending(name, pending)?;
        if parent.is_some() {
            crate::volume::meta::set(&image, crate::volume::meta::keys::TOKEN, &pending.token)?;
            crate::volume::meta::clear_inherited(&image)?;
        }
        meta.write(&image)?;
        if let (Some(p), Some(size)) = (parent, r.size)
            && size > p.snap_size
        {
            image
                .resize(size, rbd_core::rbd::Shrink::Forbid)
                .map_err(|e| DriverError::ceph(format!("growing the clone {spec}"), e))?;
        }
        drop(image);
        crash_point("create:metadata-set");

        let format_now = parent.is_none()
            && (self.cfg.defaults.format_at == FormatAt::Create || r.access.is_read_only());
        if format_now {
            pending.phase = CreatePhase::Formatting;
            self.save_pending(name, pending)?;
            self.format_at_create(name, &r.pool, &r.namespace, &image_id, &meta)?;
        }

        pending.phase = CreatePhase::Publishing;
        self.save_pending(name, pending)?;
        let ready = IndexEntry {
            image_id: image_id.clone(),
            state: EntryState::Ready,
            updated_at: now_secs(),
            ..claimed.clone()
        };
        if !self.index.replace(name, &claimed.encode(), &ready)? {
            return Err(DriverError::VolumeExists(format!(
                "{name} (its index entry was changed by someone else while it was being created)"
            )));
        }
        crash_point("create:published");
        self.drop_pending(name)?;
        let st = self.load_state()?;
        let loc = Located {
            entry: StoredEntry {
                raw: ready.encode(),
                entry: ready,
            },
            io: self.io(&r.pool, &r.namespace)?,
        };
        self.info(name, &loc, st.volumes.get(name))
    }

    /// Format at create: map, mkfs, unmap. The mapping is recorded in the state file like
    /// an attach with no mount IDs, so recovery unmaps it after a crash.
    fn format_at_create(
        &self,
        name: &str,
        pool: &str,
        namespace: &str,
        image_id: &str,
        meta: &VolumeMeta,
    ) -> Result<()> {
        let mapper = self.mapper()?;
        let mut v = VolumeState {
            pool: pool.into(),
            namespace: namespace.into(),
            image: name.into(),
            image_id: image_id.into(),
            backend: Some(mapper.backend()),
            device: None,
            mountpoint: self.mountpoint_of(name),
            read_only: false,
            mount_ids: Default::default(),
            phase: Phase::Mapping,
        };
        self.put_volume(name, &v)?;
        let req = self.map_request(&v);
        let mapping = match mapper.map(&req) {
            Ok(m) => m,
            Err(e) => {
                self.remove_volume_entry(name)?;
                return Err(e);
            }
        };
        crash_point("create:format-mapped");
        v.device = Some(mapping.device.clone());
        v.phase = Phase::Formatting;
        self.put_volume(name, &v)?;
        let res = self.ensure_fs(name, meta, &mapping.device, false);
        if res.is_ok() {
            crash_point("create:formatted");
        }
        v.phase = Phase::Unmapping;
        self.put_volume(name, &v)?;
        mapper.unmap(&mapping, false)?;
        self.remove_volume_entry(name)?;
        let fs = res?;
        // Record the format now that nobody else holds the image.
        let io = self.io(pool, namespace)?;
        let image = Image::open_by_id(&io, image_id, &OpenOptions::new())
            .map_err(|e| DriverError::ceph(format!("reopening volume {name}"), e))?;
        crate::volume::meta::set(&image, crate::volume::meta::keys::FORMATTED, fs.as_str())
    }

    /// What an existing index entry for `name` means for a create of `spec`.
    fn existing(
        &self,
        name: &str,
        existing: StoredEntry,
        spec: &CreateSpec,
        r: &Resolved,
    ) -> Result<Existing> {
        let e = existing.entry.clone();
        match e.state {
            EntryState::Ready => {
                let io = self.io(&e.pool, &e.namespace)?;
                let loc = Located {
                    entry: existing,
                    io,
                };
                match self.open(name, &loc, true) {
                    Ok(img) => {
                        let diffs = self.differences(spec, r, &loc, &img)?;
                        drop(img);
                        if diffs.is_empty() {
                            let st = self.load_state()?;
                            Ok(Existing::Same(Box::new(self.info(
                                name,
                                &loc,
                                st.volumes.get(name),
                            )?)))
                        } else {
                            Err(DriverError::VolumeExists(format!(
                                "{name} (with different options: {})",
                                diffs.join("; ")
                            )))
                        }
                    }
                    Err(DriverError::NoSuchVolume(_)) => {
                        // Its image was removed behind the index's back: the entry is stale.
                        self.index.remove_if(name, &loc.entry.raw)?;
                        Ok(Existing::Cleared)
                    }
                    Err(err) => Err(err),
                }
            }
            EntryState::Creating | EntryState::Removing => {
                let age = now_secs().saturating_sub(e.created_at.max(e.updated_at));
                let doing = if e.state == EntryState::Creating {
                    "created"
                } else {
                    "removed"
                };
                if Duration::from_secs(age) < self.cfg.stale_after {
                    return Err(DriverError::VolumeExists(format!(
                        "{name} (it is being {doing} on node {} since {age} s ago; try again later)",
                        e.node
                    )));
                }
                // Abandoned by a node that never came back: finish it off.
                self.remove_abandoned_image(name, &e)?;
                self.index.remove_if(name, &existing.raw)?;
                Ok(Existing::Cleared)
            }
        }
    }

    /// Removes the image an abandoned index entry points to, if it carries that entry's
    /// token and nobody has it open.
    pub(super) fn remove_abandoned_image(&self, name: &str, e: &IndexEntry) -> Result<()> {
        let io = self.io(&e.pool, &e.namespace)?;
        let img = match Image::open(&io, &e.image, &OpenOptions::new().read_only(true)) {
            Ok(i) => i,
            Err(err) if err.kind() == rbd_core::ErrorKind::NotFound => return Ok(()),
            Err(err) => return Err(DriverError::ceph(format!("opening image of {name}"), err)),
        };
        let meta = VolumeMeta::read(&img)?;
        if meta.token.as_deref().is_some_and(|t| t != e.token) {
            return Ok(());
        }
        let w = self.foreign_watchers(&img)?;
        if !w.is_empty() {
            return Err(DriverError::InUse {
                volume: name.into(),
                detail: format!(
                    "its abandoned image is still open by {}",
                    describe_watchers(&w)
                ),
            });
        }
        drop(img);
        self.purge_snapshots(name, &io, &e.image)?;
        rbd::remove(&io, &e.image)
            .or_else(|err| {
                if err.kind() == rbd_core::ErrorKind::NotFound {
                    Ok(())
                } else {
                    Err(err)
                }
            })
            .map_err(|err| {
                DriverError::ceph(format!("removing the abandoned image of {name}"), err)
            })
    }

    fn differences(
        &self,
        spec: &CreateSpec,
        r: &Resolved,
        loc: &Located,
        img: &Image,
    ) -> Result<Vec<String>> {
        let e = &loc.entry.entry;
        let meta = VolumeMeta::read(img)?;
        let mut d = Vec::new();
        if spec.pool.is_some() && r.pool != e.pool {
            d.push(format!("pool {} (asked {})", e.pool, r.pool));
        }
        if spec.namespace.is_some() && r.namespace != e.namespace {
            d.push(format!(
                "namespace {:?} (asked {:?})",
                e.namespace, r.namespace
            ));
        }
        if let Some(want) = spec.size {
            let have = img
                .size()
                .map_err(|err| DriverError::ceph("reading the size", err))?;
            if have < want {
                d.push(format!("size {have} bytes (asked {want})"));
            }
        }
        if let Some(f) = spec.fstype {
            let have = meta.formatted.or(meta.fstype);
            if have != Some(f) {
                d.push(format!(
                    "fstype {} (asked {f})",
                    have.map(|h| h.to_string())
                        .unwrap_or_else(|| "unknown".into())
                ));
            }
        }
        if let Some(a) = spec.access
            && a != meta.access
        {
            d.push(format!("access {} (asked {a})", meta.access));
        }
        if let Some(f) = spec.features {
            let have = img
                .features()
                .map_err(|err| DriverError::ceph("reading the features", err))?;
            if !have.contains(f) {
                d.push(format!("features {have} (asked {f})"));
            }
        }
        if let Some(o) = spec.object_size {
            let have = img
                .stat()
                .map_err(|err| DriverError::ceph("reading the object size", err))?
                .obj_size;
            if have != o {
                d.push(format!("object-size {have} (asked {o})"));
            }
        }
        if let Some(m) = &spec.mkfs_options
            && *m != meta.mkfs_options
        {
            d.push(format!(
                "mkfs-options {:?} (asked {:?})",
                meta.mkfs_options.join(" "),
                m.join(" ")
            ));
        }
        if let Some(m) = &spec.mount_options
            && *m != meta.mount_options
        {
            d.push(format!(
                "mount-options {:?} (asked {:?})",
                meta.mount_options.join(","),
                m.join(",")
            ));
        }
        if let Some(s) = &r.source {
            let want = match s {
                SnapshotSource::Volume { volume, snap } => self
                    .locate(volume)
                    .map(|l| {
                        SnapshotSource::Image {
                            pool: l.entry.entry.pool,
                            namespace: l.entry.entry.namespace,
                            image: l.entry.entry.image,
                            snap: snap.clone(),
                        }
                        .to_string()
                    })
                    .unwrap_or_else(|_| s.to_string()),
                other => other.to_string(),
            };
            if meta.source.as_deref() != Some(want.as_str()) {
                d.push(format!(
                    "source {} (asked {want})",
                    meta.source.as_deref().unwrap_or("none")
                ));
            }
        }
        Ok(d)
    }

    /// Undoes a create (after a failure, or after a crash via recovery): unmaps a
    /// format-at-create mapping, removes the image if it is the one this create made,
    /// unprotects a parent snapshot it protected, removes its index entry, and drops the
    /// pending record. Returns what it did.
    pub(super) fn rollback_create(&self, name: &str, p: &PendingCreate) -> Result<Vec<String>> {
        let mut did = Vec::new();
        let st = self.load_state()?;
        if let Some(v) = st.volumes.get(name)
            && v.mount_ids.is_empty()
        {
            let v = v.clone();
            did.extend(self.teardown(name, &v)?);
            self.remove_volume_entry(name)?;
        }
        let io = self.io(&p.pool, &p.namespace)?;
        let id = match &p.image_id {
            Some(id) => Some(id.clone()),
            None => self.find_created_image(name, &io, p)?,
        };
        if let Some(id) = id {
            match Image::open_by_id(&io, &id, &OpenOptions::new().read_only(true)) {
                Ok(img) => {
                    let image_name = img.name().unwrap_or_else(|_| name.to_owned());
                    {
                        let w = self.foreign_watchers(&img)?;
                        if !w.is_empty() {
                            return Err(DriverError::InUse {
                                volume: name.into(),
                                detail: format!(
                                    "the half-created image is still open by {}",
                                    describe_watchers(&w)
                                ),
                            });
                        }
                        drop(img);
                        rbd::remove(&io, &image_name)
                            .or_else(|e| {
                                if e.kind() == rbd_core::ErrorKind::NotFound {
                                    Ok(())
                                } else {
                                    Err(e)
                                }
                            })
                            .map_err(|e| {
                                DriverError::ceph(
                                    format!("removing the half-created image {name}"),
                                    e,
                                )
                            })?;
                        did.push(format!(
                            "removed the half-created image {image_name} (id {id})"
                        ));
                    }
                }
                Err(e) if e.kind() == rbd_core::ErrorKind::NotFound => {}
                Err(e) => return Err(DriverError::ceph(format!("opening image {id}"), e)),
            }
        }
        if let Some(ps) = &p.protected_parent
            && self.unprotect_if_unused(ps)?
        {
            did.push(format!("unprotected {ps}"));
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

    /// The id of an image named `name` that a crashed create (`p`) made before it could
    /// record the id: it must carry our token, or no token and be no older than the create.
    fn find_created_image(
        &self,
        name: &str,
        io: &IoCtx,
        p: &PendingCreate,
    ) -> Result<Option<String>> {
        if p.phase == CreatePhase::Claiming {
            return Ok(None);
        }
        let id = match rbd::image_id_by_name(io, name) {
            Ok(id) => id,
            Err(e) if e.kind() == rbd_core::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(DriverError::ceph(format!("looking up image {name}"), e)),
        };
        let img = match Image::open_by_id(io, &id, &OpenOptions::new().read_only(true)) {
            Ok(i) => i,
            Err(e) if e.kind() == rbd_core::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(DriverError::ceph(format!("opening image {name}"), e)),
        };
        // Our token, or made since this create started: the name is claimed in the index
        // by this create, so no other volume create can have made it. (A clone carries
        // its parent's token until ours is written.)
        let meta = VolumeMeta::read(&img)?;
        let ours = meta.token.as_deref() == Some(p.token.as_str())
            || img
                .create_timestamp()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .is_some_and(|t| t.as_secs() + 5 >= p.started_at);
        Ok(ours.then_some(id))
    }

    /// Unprotects `pool/[ns/]image@snap` if it is protected and has no clone left.
    /// Returns whether it did.
    pub(super) fn unprotect_if_unused(&self, spec: &str) -> Result<bool> {
        let Ok(SnapshotSource::Image {
            pool,
            namespace,
            image,
            snap,
        }) = spec.parse::<SnapshotSource>()
        else {
            return Ok(false);
        };
        let io = self.io(&pool, &namespace)?;
        let at_snap = match Image::open(&io, &image, &OpenOptions::new().snapshot(snap.clone())) {
            Ok(i) => i,
            Err(e) if e.kind() == rbd_core::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(DriverError::ceph(format!("opening {spec}"), e)),
        };
        let children = at_snap
            .list_children()
            .map_err(|e| DriverError::ceph(format!("listing the clones of {spec}"), e))?;
        drop(at_snap);
        if !children.is_empty() {
            return Ok(false);
        }
        let head = Image::open(&io, &image, &OpenOptions::new())
            .map_err(|e| DriverError::ceph(format!("opening {spec}"), e))?;
        if !head.snap_is_protected(&snap).unwrap_or(false) {
            return Ok(false);
        }
        match head.snap_unprotect(&snap) {
            Ok(()) => Ok(true),
            // A new clone appeared meanwhile.
            Err(e) if e.kind() == rbd_core::ErrorKind::Busy => Ok(false),
            Err(e) => Err(DriverError::ceph(format!("unprotecting {spec}"), e)),
        }
    }
}

/// `client.4123 at 127.0.0.1:0/123, ...`.
pub(super) fn describe_watchers(w: &[rbd_core::rbd::Watcher]) -> String {
    w.iter()
        .map(|w| format!("client.{} at {}", w.id, w.addr.to_legacy_string()))
        .collect::<Vec<_>>()
        .join(", ")
}
