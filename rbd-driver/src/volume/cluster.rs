//! The volume driver's side of the cluster layer ([`crate::cluster`]): the registry,
//! release requests and reconcile, wired into attach, detach, create and remove.
//!
//! * **Attach**: [`Driver::reconcile_name`] cleans this node's stale devices of the volume
//!   (a device of an older image with the same name, a device whose image is held by
//!   another node, whose client is blocklisted or whose mapper is gone), then the image is
//!   claimed cluster-wide ([`Cluster::claim`]: holders are asked to release it, silent
//!   ones are fenced), mapped, its device and exact client address recorded
//!   ([`Registry::update_holder`](crate::cluster::Registry::update_holder)), mounted, and
//!   its mount IDs recorded. A failure after the claim unregisters.
//! * **Detach**: the last reference unregisters; others update the mount IDs.
//! * **Create**: the same reconcile by name first, so a device left over from a removed
//!   image of that name is cleaned and never taken for the new image.
//! * **Remove**: the image is claimed read-write first (a live holder releases it or
//!   refuses naming its node and mount IDs; a dead one is fenced), then removed, then
//!   unregistered.
//! * **Release requests** from other nodes: [`Driver::release_for`] (what a
//!   [`NodeDaemon`](crate::daemon::NodeDaemon) answers with).
//! * **Reconcile** of the whole node: [`Driver::reconcile`] (what the daemon runs on start
//!   and periodically).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

use rbd_core::EntityAddr;
use serde::Serialize;

use crate::cluster::reconcile::{CleanupReport, MappingCheck, ReconcileReport, StaleReason};
use crate::cluster::registry::now_ms;
use crate::cluster::{
    Claim, ClaimOptions, Cluster, HolderRecord, ImageRef, Mode, NodeId, ReleaseOutcome,
    ReleaseRequest, Unmapper, Verdict,
};
use crate::error::{DriverError, Result};
use crate::mapper::{self, Backend, Mapper, Mapping};
use crate::volume::driver::{Driver, PoolHook};
use crate::volume::index::{EntryState, IndexEntry};
use crate::volume::lock::try_lock_volume;
use crate::volume::name::validate_volume_name;
use crate::volume::recover::RecoveryReport;
use crate::volume::state::{PendingOp, Phase, State, VolumeState};

/// What [`Driver::attach_with_report`] did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AttachReport {
    /// Where the volume is mounted.
    pub mountpoint: PathBuf,
    /// The mount ID joined a mount that already existed on this node (no map, no claim).
    pub shared: bool,
    /// Stale local devices of the volume cleaned before attaching (a device of an older
    /// image with the same name, of an image held by another node, fenced, or whose
    /// mapper is gone), with why.
    pub cleaned: Vec<CleanupReport>,
    /// The cluster-wide claim: who released the image for us, who was fenced.
    pub claim: Option<Claim>,
    /// The mapped device.
    pub device: Option<PathBuf>,
    /// The mapping's exact client address (what fencing this node's hold blocklists).
    pub client_addr: Option<EntityAddr>,
    /// Exclusive locks left by fenced (blocklisted) clients, broken before mapping.
    pub cleaned_locks: Vec<String>,
    /// Things the caller should know (e.g. no node daemon answers for this node: other
    /// nodes will take its mappings for dead and fence them).
    pub warnings: Vec<String>,
    /// How long each step took.
    pub timings: AttachTimings,
}

/// Step timings of an attach, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct AttachTimings {
    /// The reconcile check (local mapping list, image existence, registry, blocklist)
    /// and the cleanup of what it found stale.
    pub check_ms: f64,
    /// The cluster-wide claim (registration; release requests and fencing if needed).
    pub claim_ms: f64,
    /// Mapping the image.
    pub map_ms: f64,
    /// Probe, mkfs if blank, fsck if asked, mount.
    pub mount_ms: f64,
    /// Recording the device, client address and mount IDs in the registry.
    pub register_ms: f64,
    /// The whole attach.
    pub total_ms: f64,
}

pub(super) fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

/// How [`Driver::reconcile`] runs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReconcileOptions {
    /// Only report: no recovery, no cleanup, no registry change.
    pub dry_run: bool,
    /// Also remove expired records from the fence logs of the pools looked at.
    pub prune_fences: bool,
    /// Pools to scan for registry entries of this node, in addition to
    /// [`Driver::served_pools`].
    pub pools: Vec<String>,
}

/// What [`Driver::reconcile`] found and did on this node.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodeReconcileReport {
    /// This node.
    pub node: String,
    /// When (ms since the epoch).
    pub at_ms: u64,
    /// Nothing was changed.
    pub dry_run: bool,
    /// The local recovery run first (state file vs mounts and mappings; not in a dry run).
    pub recovery: Option<RecoveryReport>,
    /// The pools looked at.
    pub pools: Vec<String>,
    /// Every local mapping with its verdict (current, stale and why, unregistered), and
    /// the registry entries naming this node with nothing mapped here.
    pub check: ReconcileReport,
    /// The stale mappings cleaned, each with what was done and why.
    pub cleaned: Vec<CleanupReport>,
    /// Mappings of this node's volumes whose registry record was missing and was made
    /// again.
    pub reregistered: Vec<String>,
    /// Registry entries of this node with nothing mapped here, removed.
    pub unregistered: Vec<String>,
    /// Mappings on this node that no volume of this driver owns (e.g. mapped by hand):
    /// reported, left alone.
    pub foreign: Vec<String>,
    /// Volumes skipped because an operation on them is in progress.
    pub busy: Vec<String>,
    /// Expired fence records removed.
    pub pruned_fences: usize,
    /// What failed (retried by the next reconcile).
    pub errors: Vec<String>,
    /// How long it took, in milliseconds.
    pub elapsed_ms: u64,
}

impl NodeReconcileReport {
    /// One line per finding and action, for logs and `rbdctl reconcile`.
    pub fn summary(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(r) = &self.recovery {
            for a in &r.actions {
                out.push(format!("recovered {}: {}", a.volume, a.action));
            }
            for e in &r.errors {
                out.push(format!("recovery error: {e}"));
            }
        }
        if self.dry_run {
            out.extend(self.check.summary());
        } else {
            for c in &self.check.checks {
                if let Verdict::Unregistered = c.verdict
                    && !self
                        .reregistered
                        .iter()
                        .any(|r| r.contains(&c.mapping.image_id))
                {
                    out.push(format!(
                        "unregistered: {} {} of {} (id {})",
                        c.mapping.backend,
                        c.mapping.device.display(),
                        c.mapping.spec(),
                        c.mapping.image_id
                    ));
                }
            }
        }
        out.extend(self.cleaned.iter().map(|c| c.log_line.clone()));
        out.extend(
            self.reregistered
                .iter()
                .map(|r| format!("re-registered {r}")),
        );
        out.extend(
            self.unregistered
                .iter()
                .map(|r| format!("unregistered {r}")),
        );
        out.extend(self.foreign.iter().map(|r| format!("left alone: {r}")));
        out.extend(self.busy.iter().map(|b| format!("busy (skipped): {b}")));
        if self.pruned_fences > 0 {
            out.push(format!(
                "pruned {} expired fence records",
                self.pruned_fences
            ));
        }
        out.extend(self.errors.iter().map(|e| format!("error: {e}")));
        out
    }
}

/// Unmaps through the backend's mapper.
struct ByBackend(Box<dyn Mapper>);

impl Unmapper for ByBackend {
    fn unmap_mapping(&self, m: &Mapping, force: bool) -> Result<()> {
        self.0.unmap(m, force)
    }
}

/// For a device no mapper lists any more (its mapper is gone and removed its record):
/// nothing is left to unmap once its filesystem is unmounted (the loop device detaches on
/// its last close).
struct NothingToUnmap;

impl Unmapper for NothingToUnmap {
    fn unmap_mapping(&self, _: &Mapping, _: bool) -> Result<()> {
        Ok(())
    }
}

/// The registry's mode for an attach.
fn mode_of(read_only: bool) -> Mode {
    if read_only { Mode::Ro } else { Mode::Rw }
}

/// The claim's errors, phrased for volume `name`.
fn volume_error(name: &str, e: DriverError) -> DriverError {
    match e {
        DriverError::InUse { detail, .. } => DriverError::InUse {
            volume: name.into(),
            detail,
        },
        held @ DriverError::Held { .. } => DriverError::InUse {
            volume: name.into(),
            detail: held.to_string(),
        },
        other => other,
    }
}

fn same_image(v: &VolumeState, m: &Mapping) -> bool {
    v.pool == m.pool && v.namespace == m.namespace && v.image_id == m.image_id
}

/// The state entry that owns a mapping (same pool, namespace and image id).
fn owner_of<'a>(st: &'a State, m: &Mapping) -> Option<(&'a String, &'a VolumeState)> {
    st.volumes.iter().find(|(_, v)| same_image(v, m))
}

/// A mapping for a state entry whose device no mapper lists.
fn synthesized(v: &VolumeState, device: &Path) -> Mapping {
    Mapping {
        backend: v.backend.unwrap_or(Backend::Userspace),
        pool: v.pool.clone(),
        namespace: v.namespace.clone(),
        image: v.image.clone(),
        image_id: v.image_id.clone(),
        snap: None,
        device: device.to_owned(),
        client_addr: None,
        read_only: v.read_only,
        pid: None,
    }
}

/// Adds [`StaleReason::MapperGone`] to the checks of mappings whose process is gone (a
/// synthesized one, or a listed userspace/nbd mapping without a pid).
fn mark_mapper_gone(report: &mut ReconcileReport, synth: &BTreeSet<PathBuf>) {
    for c in &mut report.checks {
        let m = &c.mapping;
        if synth.contains(&m.device) || (m.backend != Backend::Krbd && m.pid.is_none()) {
            add_reason(
                c,
                StaleReason::MapperGone {
                    device: m.device.clone(),
                },
            );
        }
    }
}

fn add_reason(c: &mut MappingCheck, r: StaleReason) {
    match &mut c.verdict {
        Verdict::Stale { reasons } => {
            if !reasons.contains(&r) {
                reasons.push(r);
            }
        }
        v => *v = Verdict::Stale { reasons: vec![r] },
    }
}

fn mountpoints_of(device: &Path) -> Vec<PathBuf> {
    fs_format::mounts_of_device(device)
        .map(|v| v.into_iter().map(|m| m.mount_point).collect())
        .unwrap_or_default()
}

impl Driver {
    /// This node's cluster layer (registry, control protocol, fencing, reconcile), on the
    /// driver's own connection.
    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    /// This node's id, as the registry and the control protocol know it.
    pub fn node(&self) -> &NodeId {
        self.cluster.node()
    }

    /// Installs (or removes) the hook that makes this node's daemon watch a pool's control
    /// object before this node registers an image there. A
    /// [`NodeDaemon`](crate::daemon::NodeDaemon) over this driver installs one itself; a
    /// process that runs volume operations for a node daemon living in another process
    /// (the Docker plugin's volume worker) installs one that asks that process
    /// ([`NodeDaemon::serve_pool`](crate::daemon::NodeDaemon::serve_pool) there). An error
    /// of the hook is logged, and the operation goes on.
    pub fn set_pool_hook(&self, hook: Option<PoolHook>) {
        if let Ok(mut g) = self.pool_hook.write() {
            *g = hook;
        }
    }

    /// Asks the node daemon of this process (if any) to answer control requests in
    /// `pool` before we register an image there: an unwatched node looks dead and would
    /// be fenced.
    pub(super) fn ensure_served(&self, pool: &str) {
        if let Ok(g) = self.pool_hook.read()
            && let Some(h) = g.as_ref()
            && let Err(e) = h(pool)
        {
            tracing::warn!(
                node = %self.node(),
                "cannot answer control requests in pool {pool}: {e}; other nodes may \
                 take this node's images there for dead"
            );
        }
    }

    /// Whether a node daemon answers control requests for this node in `pool` (a ping to
    /// ourselves). Without one, other nodes take this node's mappings for dead.
    pub fn daemon_answers(&self, pool: &str) -> Result<bool> {
        let ctl = self.cluster.control(pool)?;
        Ok(ctl.ping(self.node(), std::time::Duration::from_secs(1))?
            == crate::cluster::PingResult::Alive)
    }

    /// A warning when no node daemon answers for this node in `pool`.
    pub(super) fn daemon_warning(&self, pool: &str) -> Option<String> {
        match self.daemon_answers(pool) {
            Ok(true) => None,
            Ok(false) => {
                let w = format!(
                    "no node daemon answers control requests for node {} in pool {pool}: \
                     other nodes will take this node's mappings for dead and fence them \
                     (run the Docker plugin or `rbdctl daemon` on this node)",
                    self.node()
                );
                tracing::warn!("{w}");
                Some(w)
            }
            Err(e) => Some(format!(
                "could not ping this node's daemon in pool {pool}: {e}"
            )),
        }
    }

    /// The image of an index entry.
    pub(super) fn image_ref(e: &IndexEntry) -> ImageRef {
        ImageRef::new(&e.pool, &e.namespace, &e.image, &e.image_id)
    }

    pub(super) fn image_ref_of_state(v: &VolumeState) -> ImageRef {
        ImageRef::new(&v.pool, &v.namespace, &v.image, &v.image_id)
    }

    /// Pools this node's daemon answers control requests in: the default pool, the pools
    /// of this node's attachments, and every pool the volume index names.
    pub fn served_pools(&self) -> Result<BTreeSet<String>> {
        let mut pools = BTreeSet::from([self.cfg.defaults.pool.clone()]);
        let st = self.load_state()?;
        pools.extend(st.volumes.values().map(|v| v.pool.clone()));
        pools.extend(self.index.list()?.into_values().map(|e| e.entry.pool));
        Ok(pools)
    }

    /// Claims `image` for volume `name` in the mode of the attach; `protect` are this
    /// node's own mapping addresses of the image (never fenced). With `take_over`, a node
    /// that uses it is forced to release it, and fenced if it does not
    /// ([`ClaimOptions::force`]); without, its refusal names it and says how to force it.
    pub(super) fn claim_image(
        &self,
        name: &str,
        image: &ImageRef,
        read_only: bool,
        protect: Vec<EntityAddr>,
        take_over: bool,
    ) -> Result<Claim> {
        let mode = mode_of(read_only);
        let mut holder = HolderRecord::new(self.node().clone(), mode);
        holder.mount_path = Some(self.mountpoint_of(name));
        self.ensure_served(&image.pool);
        self.cluster
            .claim(
                image,
                mode,
                &ClaimOptions {
                    force: take_over,
                    protect,
                    holder: Some(holder),
                    ..ClaimOptions::default()
                },
            )
            .map_err(|e| match e {
                DriverError::InUse { volume, detail }
                    if !take_over && detail.starts_with("node ") =>
                {
                    DriverError::InUse {
                        volume,
                        detail: format!(
                            "{detail}; to take it anyway (its containers there lose the \
                             volume), use take-over (rbdctl: --take-over)"
                        ),
                    }
                }
                e => e,
            })
            .map_err(|e| volume_error(name, e))
    }

    /// Records a new mapping (backend, device, exact client address) in this node's
    /// registry record.
    pub(super) fn register_mapping(&self, image: &ImageRef, m: &Mapping) -> Result<()> {
        self.cluster
            .registry(&image.pool)?
            .update_holder(image, self.node(), |h| {
                h.backend = Some(m.backend);
                h.device = Some(m.device.clone());
                h.client_addr = m.client_addr;
            })
            .map(|_| ())
    }

    /// Records the mount IDs (and mount path) of an attachment in this node's registry
    /// record; a missing record is made again (this node registered it, the record was
    /// lost). Best effort: a failure is logged (the next reconcile repairs it).
    pub(super) fn register_mounts(&self, v: &VolumeState) {
        let image = Self::image_ref_of_state(v);
        let r = self.cluster.registry(&v.pool).and_then(|reg| {
            match reg.set_mount_ids(
                &image,
                self.node(),
                v.mount_ids.clone(),
                Some(v.mountpoint.clone()),
            ) {
                Ok(_) => Ok(()),
                Err(DriverError::InvalidInput { .. }) => {
                    // Our record is gone: register again (fails if another node holds it).
                    let h = self.holder_of(v);
                    reg.register(&image, h).map(|_| ())
                }
                Err(e) => Err(e),
            }
        });
        if let Err(e) = r {
            tracing::warn!(node = %self.node(), "recording the mount IDs of {image} in the registry: {e}");
        }
    }

    /// This node's registry record for an attachment.
    fn holder_of(&self, v: &VolumeState) -> HolderRecord {
        let maps = self
            .local_mappings(&v.pool, &v.namespace, &v.image_id)
            .unwrap_or_default();
        self.holder_from(v, &maps)
    }

    /// [`Self::holder_of`] with this node's mappings already listed (`listed`, any
    /// images: those of `v`'s image are picked by id).
    fn holder_from(&self, v: &VolumeState, listed: &[Mapping]) -> HolderRecord {
        let mut h = HolderRecord::new(self.node().clone(), mode_of(v.read_only));
        h.backend = v.backend;
        h.device = v.device.clone();
        h.mount_path = Some(v.mountpoint.clone());
        h.mount_ids = v.mount_ids.clone();
        let maps: Vec<&Mapping> = listed.iter().filter(|m| same_image(v, m)).collect();
        h.client_addr = maps
            .iter()
            .find(|m| v.device.as_ref() == Some(&m.device))
            .or(maps.first())
            .and_then(|m| m.client_addr);
        h
    }

    /// Removes this node's registry record of `image`, logging (not failing) when the
    /// registry cannot be reached: a dangling record is answered "not held" and removed
    /// by the next reconcile. Returns what happened, for reports.
    pub(super) fn forget(&self, image: &ImageRef, why: &str) -> Option<String> {
        match self.cluster.unregister(image) {
            Ok(true) => Some(format!("unregistered {image} ({why})")),
            Ok(false) => None,
            Err(e) => {
                tracing::warn!(node = %self.node(), "unregistering {image} ({why}): {e}");
                Some(format!("could not unregister {image} ({why}): {e}"))
            }
        }
    }

    /// This node's local mappings (every backend), plus one for each state entry whose
    /// device no mapper lists any more (its mapper is gone: a fenced userspace mapper
    /// exits and removes its record while a mounted filesystem keeps its loop device).
    /// Returns the devices of the latter too.
    pub(super) fn local_view(&self, st: &State) -> Result<(Vec<Mapping>, BTreeSet<PathBuf>)> {
        self.local_view_from(st, mapper::list_all(&self.cfg.mapper)?)
    }

    /// [`Self::local_view`] from a listing of this node's mappings made for the pass.
    fn local_view_from(
        &self,
        st: &State,
        mut local: Vec<Mapping>,
    ) -> Result<(Vec<Mapping>, BTreeSet<PathBuf>)> {
        let mut synth = BTreeSet::new();
        for v in st.volumes.values() {
            let Some(dev) = &v.device else { continue };
            if !local.iter().any(|m| same_image(v, m)) {
                synth.insert(dev.clone());
                local.push(synthesized(v, dev));
            }
        }
        Ok((local, synth))
    }

    /// Cleans one stale mapping (lazy unmount, forced unmap, our registry record). When a
    /// volume's state entry owns it, that volume's lock is taken first (unless `held`
    /// names it: the caller holds it) and its state entry is dropped: this node lost the
    /// volume. `Err(name)` when that volume is busy.
    pub(super) fn clean_stale(
        &self,
        check: &MappingCheck,
        held: Option<&str>,
        synth: &BTreeSet<PathBuf>,
    ) -> std::result::Result<CleanupReport, String> {
        let m = &check.mapping;
        let owner = self
            .load_state()
            .ok()
            .and_then(|st| owner_of(&st, m).map(|(n, v)| (n.clone(), v.clone())));
        let _guard = match &owner {
            Some((n, _)) if held != Some(n.as_str()) => {
                match try_lock_volume(self.store.dir(), n) {
                    Ok(Some(l)) => Some(l),
                    Ok(None) => return Err(n.clone()),
                    Err(e) => return Err(format!("{n} ({e})")),
                }
            }
            _ => None,
        };
        let mut mounts = mountpoints_of(&m.device);
        if let Some((_, v)) = &owner
            && fs_format::is_mountpoint(&v.mountpoint).unwrap_or(false)
        {
            let p = std::fs::canonicalize(&v.mountpoint).unwrap_or_else(|_| v.mountpoint.clone());
            if !mounts.contains(&p) {
                mounts.push(p);
            }
        }
        let mut report = if synth.contains(&m.device) {
            self.cluster.cleanup(check, &mounts, &NothingToUnmap)
        } else {
            let u = ByBackend(mapper::mapper_for(m.backend, &self.cfg.mapper));
            self.cluster.cleanup(check, &mounts, &u)
        };
        if let Some((name, v)) = owner {
            match self.remove_volume_entry(&name) {
                Ok(()) => {
                    let _ = std::fs::remove_dir(&v.mountpoint);
                    let ids = v.mount_ids.iter().cloned().collect::<Vec<_>>().join(", ");
                    let line = format!(
                        "volume {name} dropped from the state file{}",
                        if ids.is_empty() {
                            String::new()
                        } else {
                            format!(" (its mount IDs {ids} lost the volume)")
                        }
                    );
                    tracing::warn!(node = %self.node(), "{line}");
                    report.log_line.push_str(&format!("; {line}"));
                }
                Err(e) => report
                    .errors
                    .push(format!("dropping state entry {name}: {e}")),
            }
        }
        Ok(report)
    }

    /// The reconcile check of volume `name` before an attach, create or remove (the
    /// caller holds its lock). `current` is the image the name refers to now, if any.
    ///
    /// Looks at this node's mappings of `current`'s id, and of `name` in
    /// `pool`/`namespace` with another id, plus the state entry of `name`: each is checked
    /// against the cluster (image gone, held by another node, client blocklisted) and
    /// against its mapper (gone); a state entry of another image than `current` (the
    /// name was reused after a remove) is stale too. Stale ones are cleaned. Never
    /// mistakes an old device for the current image: mappings are compared by id.
    pub(super) fn reconcile_name(
        &self,
        name: &str,
        pool: &str,
        namespace: &str,
        current: Option<&ImageRef>,
    ) -> Result<Vec<CleanupReport>> {
        let st = self.load_state()?;
        let (local, synth) = self.local_view(&st)?;
        let entry = st.volumes.get(name);
        let relevant: Vec<Mapping> = local
            .into_iter()
            .filter(|m| {
                (m.pool == pool && m.namespace == namespace && m.image == name)
                    || current.is_some_and(|c| {
                        m.pool == c.pool && m.namespace == c.namespace && m.image_id == c.image_id
                    })
                    || entry.is_some_and(|v| same_image(v, m))
            })
            .collect();
        let mut report = self.cluster.check(&relevant, &[])?;
        mark_mapper_gone(&mut report, &synth);
        if let (Some(v), Some(c)) = (entry, current)
            && (v.image_id != c.image_id || v.pool != c.pool || v.namespace != c.namespace)
        {
            for chk in &mut report.checks {
                if same_image(v, &chk.mapping) {
                    // The image may even exist still; the name is another image's now.
                    add_reason(chk, StaleReason::ImageGone);
                }
            }
        }
        let mut cleaned = Vec::new();
        for chk in report.stale() {
            match self.clean_stale(chk, Some(name), &synth) {
                Ok(r) => cleaned.push(r),
                Err(busy) => {
                    return Err(DriverError::InUse {
                        volume: busy,
                        detail: format!(
                            "its stale device {} (of {}) must be cleaned before {name} can be \
                             used, and an operation on it is in progress",
                            chk.mapping.device.display(),
                            chk.mapping.spec()
                        ),
                    });
                }
            }
        }
        // A state entry of another image with nothing mapped (no device recorded yet).
        let st = self.load_state()?;
        if let (Some(v), Some(c)) = (st.volumes.get(name), current)
            && v.image_id != c.image_id
        {
            let v = v.clone();
            self.teardown(name, &v)?;
            self.remove_volume_entry(name)?;
            self.forget(&Self::image_ref_of_state(&v), "its volume name was reused");
        }
        Ok(cleaned)
    }

    /// Answers another node's request to release an image (what a node daemon's
    /// [`ReleaseHandler`](crate::cluster::ReleaseHandler) does).
    ///
    /// In use, the answer is [`ReleaseOutcome::InUse`] naming the mount IDs (and the
    /// mountpoint, device and client address), unless `req.force`: a volume with mount
    /// IDs, a volume with an operation in progress (an attach that has claimed but not yet
    /// mounted counts), a create or remove in progress, a device mounted outside the
    /// driver. Not in use (or forced): unmounted (lazily if busy), unmapped, state entry
    /// dropped: [`ReleaseOutcome::Released`]. Nothing of it here:
    /// [`ReleaseOutcome::NotHeld`].
    pub fn release_for(&self, req: &ReleaseRequest) -> ReleaseOutcome {
        match self.release_inner(req) {
            Ok(o) => o,
            Err(e) => ReleaseOutcome::Failed(e.to_string()),
        }
    }

    fn release_inner(&self, req: &ReleaseRequest) -> Result<ReleaseOutcome> {
        let img = &req.image;
        let node = self.node().clone();
        let same = |v: &VolumeState| {
            v.pool == img.pool && v.namespace == img.namespace && v.image_id == img.image_id
        };
        let st = self.load_state()?;
        let mut names: BTreeSet<String> = st
            .volumes
            .iter()
            .filter(|(_, v)| same(v))
            .map(|(n, _)| n.clone())
            .collect();
        // The volume of that name may be in the middle of an attach that has claimed the
        // image but not recorded anything yet: its lock tells.
        if validate_volume_name(&img.image).is_ok() {
            names.insert(img.image.clone());
        }
        let mut released = Vec::new();
        for name in &names {
            let Some(_lock) = try_lock_volume(self.store.dir(), name)? else {
                let ids: Vec<String> = st
                    .volumes
                    .get(name)
                    .map(|v| v.mount_ids.iter().cloned().collect())
                    .unwrap_or_default();
                return Ok(ReleaseOutcome::InUse {
                    mount_ids: ids,
                    reason: format!(
                        "an operation on volume {name} (attach, detach, create or remove) is in \
                         progress on node {node}"
                    ),
                });
            };
            let st = self.load_state()?;
            if let Some(p) = st.pending.get(name) {
                let what = match p {
                    PendingOp::Create(_) => "created",
                    PendingOp::Remove(_) => "removed",
                };
                return Ok(ReleaseOutcome::InUse {
                    mount_ids: Vec::new(),
                    reason: format!("volume {name} is being {what} on node {node}"),
                });
            }
            let Some(v) = st.volumes.get(name).filter(|v| same(v)).cloned() else {
                continue;
            };
            if !v.mount_ids.is_empty() && !req.force {
                let maps = self.local_mappings(&v.pool, &v.namespace, &v.image_id)?;
                let client = maps
                    .iter()
                    .filter_map(|m| m.client_addr)
                    .map(|a| a.to_legacy_string())
                    .collect::<Vec<_>>();
                return Ok(ReleaseOutcome::InUse {
                    mount_ids: v.mount_ids.iter().cloned().collect(),
                    reason: format!(
                        "volume {name} is mounted {} on node {node} at {} by mount IDs {}{}{}",
                        if v.read_only {
                            "read-only"
                        } else {
                            "read-write"
                        },
                        v.mountpoint.display(),
                        super::attach::join(&v.mount_ids),
                        v.device
                            .as_ref()
                            .map(|d| format!(", device {}", d.display()))
                            .unwrap_or_default(),
                        if client.is_empty() {
                            String::new()
                        } else {
                            format!(", client {}", client.join(", "))
                        }
                    ),
                });
            }
            let did = self.teardown(name, &v)?;
            self.remove_volume_entry(name)?;
            tracing::warn!(
                node = %node,
                from = %req.from,
                force = req.force,
                "released volume {name} ({img}) for node {}: {}",
                req.from,
                did.join(", ")
            );
            released.push(name.clone());
        }
        // Mappings of the image that no volume owns (mapped by hand).
        for m in self.local_mappings(&img.pool, &img.namespace, &img.image_id)? {
            let mounts = mountpoints_of(&m.device);
            if !mounts.is_empty() && !req.force {
                return Ok(ReleaseOutcome::InUse {
                    mount_ids: Vec::new(),
                    reason: format!(
                        "device {} of {} is mounted on node {node} at {}",
                        m.device.display(),
                        m.spec(),
                        mounts
                            .iter()
                            .map(|p| p.display().to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                });
            }
            for p in &mounts {
                let _ = nix::mount::umount2(p, nix::mount::MntFlags::MNT_DETACH);
            }
            mapper::mapper_for(m.backend, &self.cfg.mapper).unmap(&m, req.force)?;
            released.push(m.device.display().to_string());
        }
        Ok(if released.is_empty() {
            ReleaseOutcome::NotHeld
        } else {
            ReleaseOutcome::Released
        })
    }

    /// Reconciles this node with the cluster: what a node daemon runs on start,
    /// periodically, and when its control watch comes back after a partition.
    ///
    /// 1. Local recovery ([`Driver::recover`]): state file vs mounts and mappings (this
    ///    tears down attachments whose mapper is gone, e.g. one that exited after being
    ///    fenced while its filesystem kept the loop device).
    /// 2. The cluster check over every local mapping (plus one per state entry whose
    ///    device no mapper lists) and the registry of every served pool: stale mappings
    ///    (image gone, held by another node, client blocklisted, mapper gone) are cleaned
    ///    (lazy unmount, forced unmap, registry record, state entry), with a log line
    ///    saying why.
    /// 3. Mappings of this node's volumes missing from the registry are registered again;
    ///    registry entries of this node with nothing mapped here are removed.
    /// 4. With [`ReconcileOptions::prune_fences`], expired fence records are removed.
    ///
    /// With [`ReconcileOptions::dry_run`] nothing is changed; the report says what would
    /// be cleaned and why.
    pub fn reconcile(&self, opts: &ReconcileOptions) -> Result<NodeReconcileReport> {
        let t0 = Instant::now();
        // This node's mappings are listed once for the whole pass (recovery's health
        // checks, the cluster check, re-registration); again only when recovery changed
        // something.
        let listed = mapper::list_all(&self.cfg.mapper)?;
        let recovery = if opts.dry_run {
            None
        } else {
            Some(self.recover_listed(Some(&listed))?)
        };
        let mut pools = self.served_pools()?;
        pools.extend(opts.pools.iter().cloned());
        let pools: Vec<String> = pools.into_iter().collect();
        let st = self.load_state()?;
        let changed = recovery
            .as_ref()
            .is_some_and(|r| !r.actions.is_empty() || !r.errors.is_empty());
        let (local, synth) = if changed {
            self.local_view(&st)?
        } else {
            self.local_view_from(&st, listed)?
        };
        let mut check = self.cluster.check(&local, &pools)?;
        mark_mapper_gone(&mut check, &synth);
        let mut out = NodeReconcileReport {
            node: self.node().to_string(),
            at_ms: now_ms(),
            dry_run: opts.dry_run,
            recovery,
            pools: pools.clone(),
            check,
            cleaned: Vec::new(),
            reregistered: Vec::new(),
            unregistered: Vec::new(),
            foreign: Vec::new(),
            busy: Vec::new(),
            pruned_fences: 0,
            errors: Vec::new(),
            elapsed_ms: 0,
        };
        if opts.dry_run {
            out.elapsed_ms = t0.elapsed().as_millis() as u64;
            return Ok(out);
        }
        let checks = out.check.checks.clone();
        for c in checks.iter().filter(|c| c.is_stale()) {
            match self.clean_stale(c, None, &synth) {
                Ok(r) => out.cleaned.push(r),
                Err(b) => out.busy.push(b),
            }
        }
        for c in checks
            .iter()
            .filter(|c| matches!(c.verdict, Verdict::Unregistered))
        {
            let m = &c.mapping;
            let st = self.load_state()?;
            let Some((name, v)) = owner_of(&st, m).map(|(n, v)| (n.clone(), v.clone())) else {
                out.foreign.push(format!(
                    "{} {} of {} (id {}) is not a volume of this node's driver",
                    m.backend,
                    m.device.display(),
                    m.spec(),
                    m.image_id
                ));
                continue;
            };
            if v.phase != Phase::Mounted {
                // An attach or detach in progress registers or unregisters by itself.
                out.busy.push(name);
                continue;
            }
            let image = Self::image_ref_of_state(&v);
            let mut h = self.holder_from(&v, &local);
            if h.client_addr.is_none() {
                h.client_addr = m.client_addr;
            }
            match self
                .cluster
                .registry(&v.pool)
                .and_then(|r| r.try_register(&image, h))
            {
                Ok(Ok(_)) => out
                    .reregistered
                    .push(format!("{image} (volume {name}, {})", m.device.display())),
                Ok(Err(conflict)) => out.errors.push(format!(
                    "re-registering {image}: held by {}",
                    conflict.describe()
                )),
                Err(e) => out.errors.push(format!("re-registering {image}: {e}")),
            }
        }
        let dangling = out.check.dangling.clone();
        for e in dangling {
            let image = e.image_ref();
            let st = self.load_state()?;
            let attaching = st.volumes.iter().find(|(_, v)| {
                v.pool == image.pool
                    && v.namespace == image.namespace
                    && v.image_id == image.image_id
            });
            let in_progress = match attaching {
                Some((n, _)) => try_lock_volume(self.store.dir(), n)?.is_none(),
                // An attach between its claim and its first state write holds the lock of
                // the volume of that name.
                None => {
                    validate_volume_name(&image.image).is_ok()
                        && try_lock_volume(self.store.dir(), &image.image)?.is_none()
                }
            };
            if in_progress {
                out.busy.push(image.to_string());
                continue;
            }
            if attaching.is_some() {
                // Its state entry survived recovery (it is healthy) but no mapping of it
                // is listed: left to the next round.
                continue;
            }
            match self.cluster.unregister(&image) {
                Ok(true) => out
                    .unregistered
                    .push(format!("{image} (nothing of it is mapped on this node)")),
                Ok(false) => {}
                Err(err) => out.errors.push(format!("unregistering {image}: {err}")),
            }
        }
        if opts.prune_fences {
            for p in &pools {
                match self.cluster.registry(p).and_then(|r| r.prune_fences()) {
                    Ok(n) => out.pruned_fences += n,
                    Err(e) => out
                        .errors
                        .push(format!("pruning the fence log of {p}: {e}")),
                }
            }
        }
        out.elapsed_ms = t0.elapsed().as_millis() as u64;
        for line in out.summary() {
            tracing::info!(node = %self.node(), "reconcile: {line}");
        }
        Ok(out)
    }

    /// This node's registry records, by pool (for status displays).
    pub fn registrations(&self) -> Result<BTreeMap<String, Vec<crate::cluster::RegistryEntry>>> {
        let mut out = BTreeMap::new();
        for p in self.served_pools()? {
            out.insert(p.clone(), self.cluster.registry(&p)?.held_by(self.node())?);
        }
        Ok(out)
    }
}

/// Whether an index entry is a ready volume.
pub(super) fn ready(e: &IndexEntry) -> bool {
    e.state == EntryState::Ready && !e.image_id.is_empty()
}
