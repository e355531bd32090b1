//! The cluster layer: a cluster-wide mapping registry, coordination between node daemons,
//! fencing of dead clients, and reconcile of local mappings. This is the fix for the
//! stale-mapping bug (a device left on one node for an image removed on another, blocking
//! the name's reuse).
//!
//! | piece | module | what |
//! |---|---|---|
//! | node identity | [`node`] | [`NodeId`]: hostname by default, configurable, validated |
//! | registry | [`registry`] | per pool, one omap entry per mapped image, by image id, changed only by compare-and-swap |
//! | coordination | [`control`] | watch/notify protocol: ping, "release image ID" (with force) |
//! | fencing | [`fence`] | blocklist exact client addresses, break locks, verify, record with expiry |
//! | reconcile | [`reconcile`] | classify local mappings as current/stale and clean stale ones |
//!
//! Everything lives in the RADOS namespace [`NAMESPACE`] of the image's pool:
//! [`registry::REGISTRY_OBJECT`], [`registry::FENCE_OBJECT`], [`control::CONTROL_OBJECT`].
//!
//! [`Cluster`] ties them together for the node daemon. The attach path is:
//!
//! ```no_run
//! # use rbd_driver::cluster::*;
//! # fn f(cluster: &Cluster, image: ImageRef) -> rbd_driver::Result<()> {
//! let local = rbd_driver::mapper::list_all(&Default::default())?;
//! // 1. clean stale local devices of this image (or of an older image with its name)
//! let report = cluster.check_for(&image, &local)?;
//! for c in report.stale() { /* cluster.cleanup(c, &mounts, &*mapper) */ }
//! // 2. claim it cluster-wide: asks the holder to release, fences it if silent
//! let claim = cluster.claim(&image, Mode::Rw, &ClaimOptions::default())?;
//! // 3. map, then record device and client address; mount, then record mount IDs
//! # let _ = claim;
//! # Ok(()) }
//! ```

//!
//! # Wiring into the node daemon and the volume driver
//!
//! Implemented by [`crate::volume`] (the driver's attach, detach, create, remove, release
//! and reconcile paths, see its `cluster` wiring and [`Driver::reconcile`]) and
//! [`crate::daemon::NodeDaemon`]; `docs/cluster.md` in the repository gives the overview.
//!
//! [`Driver::reconcile`]: crate::volume::Driver::reconcile
//!
//! * **Daemon start**: `Cluster::new(daemon_connection, ClusterConfig::new(node_id))`
//!   (the daemon's own connection, never a mapping's: mappings are the ones fenced). For
//!   every pool with volumes: [`Cluster::serve`] with a [`ReleaseHandler`] that asks the
//!   volume layer "in use?" (mount IDs in its state file, an attach in progress) and else
//!   unmounts and unmaps. Then [`Cluster::check`] over `mapper::list_all()` with those
//!   pools: clean every stale mapping ([`Cluster::cleanup`]), and drop or re-register
//!   dangling entries.
//! * **Periodically** (and when the control watch comes back after a partition): the
//!   same check, plus [`Registry::prune_fences`].
//! * **Attach** (volume `attach`): [`Cluster::check_for`] and clean the stale mappings of
//!   the image (by id, or an old id under its name); [`Cluster::claim`] with
//!   [`ClaimOptions::protect`] = this node's own mappings of the image; map; record the
//!   device, backend and client address ([`Registry::update_holder`]); mount; record the
//!   mount IDs ([`Registry::set_mount_ids`]). If a step fails after the claim,
//!   [`Cluster::unregister`].
//! * **Detach**: unmount, unmap, [`Cluster::unregister`] (or update the mount IDs while
//!   other mount IDs remain).
//! * **Create**: [`Cluster::check_for`] by name first, so a device left over from a removed
//!   image of the same name is cleaned before the new image is used.
//! * **Remove**: claim the image read-write (holders are asked to release, refusals name
//!   the node and mount IDs; silent holders are fenced), remove it, unregister.
//! * **Errors**: [`DriverError::Held`] (registration lost to a node that keeps the image)
//!   and [`DriverError::InUse`] (the holder refused) name the node and its mount IDs.

pub mod control;
pub mod fence;
pub mod node;
pub mod reconcile;
pub mod registry;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rbd_core::{EntityAddr, Rados};
use serde::Serialize;

pub use control::{
    ControlClient, ControlServer, PingResult, ReleaseAnswer, ReleaseHandler, ReleaseOutcome,
    ReleaseRequest, ServerOptions,
};
pub use fence::{FenceOptions, FenceOutcome, FenceTarget, fence_image};
pub use node::NodeId;
pub use reconcile::{
    CleanupOptions, CleanupReport, MappingCheck, ReconcileReport, StaleReason, Unmapper, Verdict,
};
pub use registry::{Conflict, FenceRecord, HolderRecord, ImageRef, Mode, Registry, RegistryEntry};

use crate::error::{DriverError, Result};

/// The RADOS namespace (in each pool) that holds the registry, fence log and control
/// object.
pub const NAMESPACE: &str = "rbd-volumes";

/// Settings of the cluster layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// This node.
    pub node_id: NodeId,
    /// RADOS namespace for the registry and control objects ([`NAMESPACE`]).
    pub namespace: String,
    /// How long a holder has to answer a ping before it counts as silent (whole seconds,
    /// at least 1).
    pub ping_timeout: Duration,
    /// How long a live holder has to release an image (unmount + unmap).
    pub release_timeout: Duration,
    /// The control server's watch settings.
    pub server: ServerOptions,
    /// Fencing settings (blocklist expiry, verification wait, whole-host policy).
    pub fence: FenceOptions,
    /// How many register/release/fence rounds a claim tries.
    pub claim_rounds: u32,
}

impl ClusterConfig {
    /// Defaults for `node_id`: ping 2 s, release 15 s, fence expiry 1 h, verify 5 s.
    pub fn new(node_id: NodeId) -> Self {
        Self::with_options(node_id, &ClusterOptions::default())
    }
}

/// The cluster layer's settings other than the node id (what a node's configuration
/// carries, e.g. [`DriverConfig::cluster`](crate::volume::DriverConfig::cluster)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterOptions {
    /// RADOS namespace for the registry and control objects ([`NAMESPACE`]). Every node of
    /// a cluster must use the same one.
    pub namespace: String,
    /// How long a holder has to answer a ping before it counts as silent.
    pub ping_timeout: Duration,
    /// How long a live holder has to release an image.
    pub release_timeout: Duration,
    /// The control server's watch settings.
    pub server: ServerOptions,
    /// Fencing settings.
    pub fence: FenceOptions,
    /// How many register/release/fence rounds a claim tries.
    pub claim_rounds: u32,
}

impl Default for ClusterOptions {
    /// The defaults of [`ClusterConfig::new`]: ping 2 s, release 15 s, four claim rounds,
    /// the default server and fence settings.
    fn default() -> Self {
        Self {
            namespace: NAMESPACE.to_owned(),
            ping_timeout: Duration::from_secs(2),
            release_timeout: Duration::from_secs(15),
            server: ServerOptions::default(),
            fence: FenceOptions::default(),
            claim_rounds: 4,
        }
    }
}

impl ClusterConfig {
    /// The configuration of `node_id` with `opts`.
    pub fn with_options(node_id: NodeId, opts: &ClusterOptions) -> Self {
        Self {
            node_id,
            namespace: opts.namespace.clone(),
            ping_timeout: opts.ping_timeout,
            release_timeout: opts.release_timeout,
            server: opts.server,
            fence: opts.fence.clone(),
            claim_rounds: opts.claim_rounds,
        }
    }
}

/// How to claim an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimOptions {
    /// Take the image even from live holders that use it: they are asked to release it
    /// by force (unmounting it from under their containers), and a holder that still
    /// refuses, fails, or answers pings but does not release is fenced like a silent one.
    pub force: bool,
    /// Fence holders that do not answer (on by default). Off: a silent holder is an error.
    pub fence: bool,
    /// Addresses never to fence (this node's own mappings of the image).
    pub protect: Vec<EntityAddr>,
    /// The record to register (node and mode are set by [`Cluster::claim`]); default: a
    /// fresh [`HolderRecord`] with nothing mapped yet.
    pub holder: Option<HolderRecord>,
}

impl Default for ClaimOptions {
    fn default() -> Self {
        Self {
            force: false,
            fence: true,
            protect: Vec::new(),
            holder: None,
        }
    }
}

/// A successful claim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Claim {
    /// The registry entry now naming this node.
    pub entry: RegistryEntry,
    /// Nodes that released the image for us.
    pub released_by: Vec<NodeId>,
    /// Fences done on the way.
    pub fenced: Vec<FenceOutcome>,
    /// How long the claim took.
    pub elapsed_ms: u64,
}

/// The cluster layer for one node: registry, coordination, fencing, reconcile.
#[derive(Debug, Clone)]
pub struct Cluster {
    rados: Rados,
    cfg: ClusterConfig,
}

impl Cluster {
    /// The cluster layer over an existing connection (the daemon's own; never a mapping's).
    pub fn new(rados: Rados, cfg: ClusterConfig) -> Self {
        Self { rados, cfg }
    }

    /// This node.
    pub fn node(&self) -> &NodeId {
        &self.cfg.node_id
    }

    /// The settings.
    pub fn config(&self) -> &ClusterConfig {
        &self.cfg
    }

    /// The connection.
    pub fn rados(&self) -> &Rados {
        &self.rados
    }

    /// `pool`'s registry.
    pub fn registry(&self, pool: &str) -> Result<Registry> {
        Registry::open(&self.rados, pool, &self.cfg.namespace)
    }

    /// A control client for `pool`, sending as this node.
    pub fn control(&self, pool: &str) -> Result<ControlClient> {
        ControlClient::new(
            &self.rados,
            pool,
            &self.cfg.namespace,
            self.cfg.node_id.clone(),
        )
    }

    /// Starts answering `pool`'s control requests for this node with `handler`.
    pub fn serve(&self, pool: &str, handler: Arc<dyn ReleaseHandler>) -> Result<ControlServer> {
        ControlServer::start(
            &self.rados,
            pool,
            &self.cfg.namespace,
            self.cfg.node_id.clone(),
            handler,
            self.cfg.server,
        )
    }

    /// Registers this node as a holder of `image` in `mode`, cluster-wide.
    ///
    /// When other nodes are in the way, each is pinged: a live one is asked to release the
    /// image (a refusal is [`DriverError::InUse`] naming the node and its mount IDs; with
    /// [`ClaimOptions::force`] the request is forced, and a live holder that still does not
    /// release is fenced); a silent one (no answer within the ping timeout, or no watch at all) is
    /// fenced ([`fence_image`]) and its record removed. Then the registration is retried.
    /// Losing a registration race to a live node that keeps the image is
    /// [`DriverError::Held`] naming the winner.
    pub fn claim(&self, image: &ImageRef, mode: Mode, opts: &ClaimOptions) -> Result<Claim> {
        let t0 = Instant::now();
        let reg = self.registry(&image.pool)?;
        let mut holder = opts
            .holder
            .clone()
            .unwrap_or_else(|| HolderRecord::new(self.cfg.node_id.clone(), mode));
        holder.node = self.cfg.node_id.clone();
        holder.mode = mode;
        let mut released_by = Vec::new();
        let mut fenced = Vec::new();
        let mut last: Option<Conflict> = None;
        let mut ctl: Option<ControlClient> = None;
        for _ in 0..self.cfg.claim_rounds.max(1) {
            let conflict = match reg.try_register(image, holder.clone())? {
                Ok(entry) => {
                    return Ok(Claim {
                        entry,
                        released_by,
                        fenced,
                        elapsed_ms: t0.elapsed().as_millis() as u64,
                    });
                }
                Err(c) => c,
            };
            if ctl.is_none() {
                ctl = Some(self.control(&image.pool)?);
            }
            let ctl = ctl.as_ref().expect("set above");
            let mut silent = Vec::new();
            for h in &conflict.blocking {
                match ctl.ping(&h.node, self.cfg.ping_timeout)? {
                    PingResult::Alive => {}
                    PingResult::Silent { timed_out } => {
                        silent.push((
                            h.clone(),
                            silent_reason(&h.node, timed_out, self.cfg.ping_timeout),
                        ));
                        continue;
                    }
                }
                match ctl.release(&h.node, image, opts.force, self.cfg.release_timeout)? {
                    ReleaseAnswer::Released | ReleaseAnswer::NotHeld => {
                        released_by.push(h.node.clone());
                    }
                    ReleaseAnswer::Refused { mount_ids, reason } if opts.force => {
                        silent.push((
                            h.clone(),
                            format!(
                                "forced takeover: node {} refused to release it even when \
                                 forced: {reason}{}",
                                h.node,
                                if mount_ids.is_empty() {
                                    String::new()
                                } else {
                                    format!(" (mount IDs: {})", mount_ids.join(", "))
                                }
                            ),
                        ));
                    }
                    ReleaseAnswer::Failed(e) if opts.force => {
                        silent.push((
                            h.clone(),
                            format!("forced takeover: node {} failed to release it: {e}", h.node),
                        ));
                    }
                    ReleaseAnswer::Refused { mount_ids, reason } => {
                        return Err(DriverError::InUse {
                            volume: image.spec(),
                            detail: format!(
                                "node {} refused to release it: {reason}{}",
                                h.node,
                                if mount_ids.is_empty() {
                                    String::new()
                                } else {
                                    format!(" (mount IDs: {})", mount_ids.join(", "))
                                }
                            ),
                        });
                    }
                    ReleaseAnswer::Failed(e) => {
                        return Err(DriverError::InUse {
                            volume: image.spec(),
                            detail: format!("node {} failed to release it: {e}", h.node),
                        });
                    }
                    ReleaseAnswer::NoAnswer { timed_out } => {
                        // Alive a moment ago: fence only if it is silent now too.
                        match ctl.ping(&h.node, self.cfg.ping_timeout)? {
                            PingResult::Alive if opts.force => silent.push((
                                h.clone(),
                                format!(
                                    "forced takeover: node {} answers pings but did not \
                                     release it within {} s",
                                    h.node,
                                    self.cfg.release_timeout.as_secs()
                                ),
                            )),
                            PingResult::Alive => {
                                return Err(DriverError::Timeout {
                                    what: format!(
                                        "node {} releasing {image} (it answers pings but did not release)",
                                        h.node
                                    ),
                                    secs: self.cfg.release_timeout.as_secs(),
                                });
                            }
                            PingResult::Silent { .. } => silent.push((
                                h.clone(),
                                silent_reason(&h.node, timed_out, self.cfg.release_timeout),
                            )),
                        }
                    }
                }
            }
            if !silent.is_empty() && !opts.fence {
                return Err(conflict.into_error());
            }
            for (h, reason) in silent {
                let mut fopts = self.cfg.fence.clone();
                fopts.protect.extend(opts.protect.iter().copied());
                let target = FenceTarget {
                    image: image.clone(),
                    node: Some(h.node.clone()),
                    addrs: h.client_addr.into_iter().collect(),
                    reason,
                };
                let out = fence_image(&self.rados, &reg, &self.cfg.node_id, &target, &fopts)?;
                reg.remove_fenced_holder(image, &h)?;
                fenced.push(out);
            }
            last = Some(conflict);
        }
        Err(match last {
            Some(c) => c.into_error(),
            None => DriverError::Timeout {
                what: format!("claiming {image}"),
                secs: t0.elapsed().as_secs(),
            },
        })
    }

    /// Removes this node's own registration of `image`; false if it had none.
    pub fn unregister(&self, image: &ImageRef) -> Result<bool> {
        self.registry(&image.pool)?
            .unregister(image, &self.cfg.node_id)
    }

    /// Fences `target` by hand (operator request), protecting `protect` too.
    pub fn fence(&self, target: &FenceTarget, protect: &[EntityAddr]) -> Result<FenceOutcome> {
        let reg = self.registry(&target.image.pool)?;
        let mut fopts = self.cfg.fence.clone();
        fopts.protect.extend(protect.iter().copied());
        fence_image(&self.rados, &reg, &self.cfg.node_id, target, &fopts)
    }

    /// Fences only `target.addrs`, the registered addresses of `node` (operator request
    /// for one node's hold): every other client of the image is spared, with why
    /// ([`FenceOptions::only`]).
    pub fn fence_node_hold(&self, target: &FenceTarget, node: &NodeId) -> Result<FenceOutcome> {
        let reg = self.registry(&target.image.pool)?;
        let mut fopts = self.cfg.fence.clone();
        fopts.only = Some((format!("node {node}"), target.addrs.clone()));
        fence_image(&self.rados, &reg, &self.cfg.node_id, target, &fopts)
    }

    /// Reconciles every local mapping; with `scan_pools`, also reports registry entries
    /// of ours with no local mapping.
    pub fn check(
        &self,
        local: &[crate::mapper::Mapping],
        scan_pools: &[String],
    ) -> Result<ReconcileReport> {
        reconcile::check(
            &self.rados,
            &self.cfg.namespace,
            &self.cfg.node_id,
            local,
            scan_pools,
        )
    }

    /// The attach/create/remove check: the local mappings of `image`'s id, or of its
    /// name with another id.
    pub fn check_for(
        &self,
        image: &ImageRef,
        local: &[crate::mapper::Mapping],
    ) -> Result<ReconcileReport> {
        reconcile::check_for(
            &self.rados,
            &self.cfg.namespace,
            &self.cfg.node_id,
            image,
            local,
        )
    }

    /// Cleans a stale mapping found by [`Cluster::check`] (see
    /// [`reconcile::cleanup_stale`]); our registry record for it is removed too.
    pub fn cleanup(
        &self,
        check: &MappingCheck,
        mounts: &[PathBuf],
        unmapper: &dyn Unmapper,
    ) -> CleanupReport {
        let reg = self.registry(&check.mapping.pool);
        let reg_ref = reg.as_ref().ok().map(|r| (r, &self.cfg.node_id));
        let mut report =
            reconcile::cleanup_stale(check, mounts, unmapper, reg_ref, &CleanupOptions::default());
        if let Err(e) = reg {
            report.errors.push(format!("registry cleanup: {e}"));
        }
        report
    }
}

fn silent_reason(node: &NodeId, timed_out: usize, waited: Duration) -> String {
    if timed_out == 0 {
        format!("node {node} holds the image but its daemon is not watching the control object")
    } else {
        format!(
            "node {node} did not answer within {} s",
            waited.as_secs().max(1)
        )
    }
}
