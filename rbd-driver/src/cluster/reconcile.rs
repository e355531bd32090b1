//! Reconcile: compare this node's local mappings (by image id) with the cluster, and clean
//! up the stale ones.
//!
//! A local mapping is **stale** when
//! * its image id no longer exists in its pool/namespace ([`StaleReason::ImageGone`]),
//!   e.g. the volume was removed on another node (the seed-004 bug: the device stays, and
//!   a new image with the same name must never be mistaken for it);
//! * its image is registered to another node and not to us ([`StaleReason::HeldByOther`]);
//! * its client is blocklisted ([`StaleReason::Blocklisted`]): it was fenced.
//!
//! [`check`] only reads (one image listing per pool/namespace, one registry read per pool,
//! one blocklist read) and returns a [`ReconcileReport`]. [`cleanup_stale`] cleans one
//! stale mapping: lazy unmount of its mounts, forced unmap, removal of our registry record,
//! and a log line saying what was cleaned and why.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use rbd_core::{BlocklistEntry, EntityAddr, ErrorKind, Rados};
use serde::Serialize;

use super::node::NodeId;
use super::registry::{ImageRef, Mode, Registry, RegistryEntry, now_ms};
use crate::error::{DriverError, Result};
use crate::mapper::{Mapper, Mapping};

/// Why a local mapping is stale.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "reason", rename_all = "kebab-case")]
pub enum StaleReason {
    /// The image id no longer exists in its pool/namespace (removed, or moved to trash).
    ImageGone,
    /// The image is registered to other nodes and not to us.
    HeldByOther {
        /// The holders.
        nodes: Vec<NodeId>,
        /// The entry's mode.
        mode: Mode,
    },
    /// The process that served the mapping (userspace mapper, rbd-nbd) is gone: every I/O
    /// on the device fails. Found by the volume layer (a device its state file records
    /// that no mapper lists any more, or a listed mapping without a live process), not by
    /// [`classify`].
    MapperGone {
        /// The device.
        device: PathBuf,
    },
    /// The mapping's client address is on the OSD blocklist (it was fenced).
    Blocklisted {
        /// The mapping's address.
        addr: EntityAddr,
        /// The blocklist entry that matches it (the exact address, its host, or a range).
        entry: String,
    },
}

impl std::fmt::Display for StaleReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StaleReason::ImageGone => f.write_str("its image id no longer exists"),
            StaleReason::HeldByOther { nodes, mode } => {
                let n: Vec<&str> = nodes.iter().map(NodeId::as_str).collect();
                write!(f, "the image is registered {mode} to node {}", n.join(", "))
            }
            StaleReason::MapperGone { device } => write!(
                f,
                "the mapper process serving {} is gone (every I/O on it fails)",
                device.display()
            ),
            StaleReason::Blocklisted { addr, entry } => {
                write!(f, "its client {addr} is blocklisted ({entry})")
            }
        }
    }
}

/// The verdict on one local mapping.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum Verdict {
    /// Registered to us, image exists, client not fenced.
    Current,
    /// Stale: clean it up.
    Stale {
        /// Every reason that applies.
        reasons: Vec<StaleReason>,
    },
    /// The image exists and nobody else holds it (or only read-only, as we do), but this
    /// node has not registered it: an attach in progress, or a registration lost. The
    /// caller decides (re-register if it is ours, else clean it).
    Unregistered,
}

/// One local mapping and its verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MappingCheck {
    /// The local mapping.
    pub mapping: Mapping,
    /// Its verdict.
    pub verdict: Verdict,
}

impl MappingCheck {
    /// The stale reasons (empty unless stale).
    pub fn reasons(&self) -> &[StaleReason] {
        match &self.verdict {
            Verdict::Stale { reasons } => reasons,
            _ => &[],
        }
    }

    /// True when stale.
    pub fn is_stale(&self) -> bool {
        matches!(self.verdict, Verdict::Stale { .. })
    }
}

/// What [`check`] found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReconcileReport {
    /// This node.
    pub node: NodeId,
    /// When (ms since the epoch).
    pub at_ms: u64,
    /// Every local mapping checked, with its verdict.
    pub checks: Vec<MappingCheck>,
    /// Registry entries naming this node with no local mapping of their image (only for
    /// the pools scanned with [`check`]'s `scan_pools`).
    pub dangling: Vec<RegistryEntry>,
    /// How long the check took, in microseconds.
    pub elapsed_us: u64,
}

impl ReconcileReport {
    /// The stale mappings.
    pub fn stale(&self) -> impl Iterator<Item = &MappingCheck> {
        self.checks.iter().filter(|c| c.is_stale())
    }

    /// One line per finding, for logs and `rbdctl`.
    pub fn summary(&self) -> Vec<String> {
        let mut out = Vec::new();
        for c in &self.checks {
            let m = &c.mapping;
            match &c.verdict {
                Verdict::Current => {}
                Verdict::Stale { reasons } => out.push(format!(
                    "stale: {} {} of {} (id {}): {}",
                    m.backend,
                    m.device.display(),
                    m.spec(),
                    m.image_id,
                    reasons
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join("; ")
                )),
                Verdict::Unregistered => out.push(format!(
                    "unregistered: {} {} of {} (id {})",
                    m.backend,
                    m.device.display(),
                    m.spec(),
                    m.image_id
                )),
            }
        }
        for e in &self.dangling {
            out.push(format!(
                "dangling registry entry: {} names node {} but nothing is mapped here",
                e.image_ref(),
                self.node
            ));
        }
        out
    }
}

/// What the cluster says about the images of some local mappings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterView {
    /// Existing image ids per (pool, namespace); a pool/namespace missing here was not
    /// looked at, one mapped to an empty set does not exist or has no images.
    pub images: BTreeMap<(String, String), BTreeSet<String>>,
    /// Registry entries per (pool, key).
    pub entries: BTreeMap<(String, String), RegistryEntry>,
    /// The OSD blocklist (empty when no mapping had a client address to check).
    pub blocklist: Vec<BlocklistEntry>,
}

fn ip_in_range(ip: IpAddr, net: IpAddr, prefix: u32) -> bool {
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let p = prefix.min(32);
            let mask = if p == 0 { 0 } else { u32::MAX << (32 - p) };
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let p = prefix.min(128);
            let mask = if p == 0 { 0 } else { u128::MAX << (128 - p) };
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

/// The blocklist entry that fences `addr`, if any: the exact client instance, a
/// whole-host entry for its IP, or a CIDR range containing it.
pub fn blocklist_match<'a>(
    addr: &EntityAddr,
    blocklist: &'a [BlocklistEntry],
) -> Option<&'a BlocklistEntry> {
    blocklist.iter().find(|e| {
        if e.range {
            ip_in_range(addr.ip, e.addr.ip, e.addr.nonce)
        } else {
            e.addr.same_instance(addr) || (e.addr.is_whole_host() && e.addr.ip == addr.ip)
        }
    })
}

/// Classifies local mappings against a [`ClusterView`] (pure: no I/O).
pub fn classify(node: &NodeId, mappings: &[Mapping], view: &ClusterView) -> Vec<MappingCheck> {
    mappings
        .iter()
        .map(|m| {
            let mut reasons = Vec::new();
            let image = ImageRef::from_mapping(m);
            let exists = view
                .images
                .get(&(m.pool.clone(), m.namespace.clone()))
                .is_none_or(|ids| ids.contains(&m.image_id));
            if !exists {
                reasons.push(StaleReason::ImageGone);
            }
            let entry = view.entries.get(&(m.pool.clone(), image.key()));
            let ours = entry.is_some_and(|e| e.holder(node).is_some());
            let mut unregistered = false;
            match entry {
                Some(e) if !ours => {
                    let nodes: Vec<NodeId> = e.holders.iter().map(|h| h.node.clone()).collect();
                    // Another node's read-only hold does not make our read-only mapping
                    // stale; anything involving write access does.
                    if e.mode == Mode::Rw || !m.read_only {
                        reasons.push(StaleReason::HeldByOther {
                            nodes,
                            mode: e.mode,
                        });
                    } else {
                        unregistered = true;
                    }
                }
                None => unregistered = true,
                Some(_) => {}
            }
            if let Some(addr) = &m.client_addr
                && let Some(b) = blocklist_match(addr, &view.blocklist)
            {
                let entry = if b.range {
                    format!("range {}/{}", b.addr.ip, b.addr.nonce)
                } else if b.addr.is_whole_host() {
                    format!("whole host {}", b.addr.ip)
                } else {
                    format!("until {}", b.until_raw)
                };
                reasons.push(StaleReason::Blocklisted { addr: *addr, entry });
            }
            let verdict = if !reasons.is_empty() {
                Verdict::Stale { reasons }
            } else if unregistered {
                Verdict::Unregistered
            } else {
                Verdict::Current
            };
            MappingCheck {
                mapping: m.clone(),
                verdict,
            }
        })
        .collect()
}

/// Reads what [`classify`] needs for `mappings` from the cluster: the image ids of each
/// pool/namespace they are in (the pool's `rbd_directory`, [`rbd_core::rbd::list_directory`]), their registry entries (one read per pool),
/// and the blocklist (one mon command, only if a mapping has a client address).
pub fn gather(rados: &Rados, namespace: &str, mappings: &[Mapping]) -> Result<ClusterView> {
    let mut view = ClusterView::default();
    let mut by_pool: BTreeMap<String, Vec<ImageRef>> = BTreeMap::new();
    for m in mappings {
        by_pool
            .entry(m.pool.clone())
            .or_default()
            .push(ImageRef::from_mapping(m));
    }
    for (pool, images) in &by_pool {
        let io = match rados.ioctx(pool) {
            Ok(io) => io,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                // The pool itself is gone: so is every image in it.
                for i in images {
                    view.images
                        .insert((pool.clone(), i.namespace.clone()), BTreeSet::new());
                }
                continue;
            }
            Err(e) => return Err(DriverError::ceph(format!("opening pool {pool}"), e)),
        };
        let namespaces: BTreeSet<&str> = images.iter().map(|i| i.namespace.as_str()).collect();
        for ns in namespaces {
            let nio = io
                .with_namespace(ns)
                .map_err(|e| DriverError::ceph(format!("opening {pool}/{ns}"), e))?;
            // The directory object, read with librados: the node daemon runs in the
            // plugin process, which does not load librbd (5 MiB) for this.
            let ids: BTreeSet<String> = match rbd_core::rbd::list_directory(&nio) {
                Ok(l) => l.into_iter().map(|s| s.id).collect(),
                Err(e) if e.kind() == ErrorKind::NotFound => BTreeSet::new(),
                Err(e) => {
                    return Err(DriverError::ceph(
                        format!("listing the images of {pool}/{ns}"),
                        e,
                    ));
                }
            };
            view.images.insert((pool.clone(), ns.to_owned()), ids);
        }
        let reg = Registry::from_ioctx(
            io.with_namespace(namespace)
                .map_err(|e| DriverError::ceph(format!("opening {pool}/{namespace}"), e))?,
        );
        for (k, e) in reg.get_many(images)? {
            view.entries.insert((pool.clone(), k), e);
        }
    }
    if mappings.iter().any(|m| m.client_addr.is_some()) {
        view.blocklist = rados
            .blocklist_ls()
            .map_err(|e| DriverError::ceph("reading the OSD blocklist", e))?;
    }
    Ok(view)
}

/// Checks `mappings` against the cluster. With `scan_pools`, also lists those pools'
/// registries for entries naming `node` that have no local mapping (dangling).
pub fn check(
    rados: &Rados,
    namespace: &str,
    node: &NodeId,
    mappings: &[Mapping],
    scan_pools: &[String],
) -> Result<ReconcileReport> {
    let t0 = Instant::now();
    let view = gather(rados, namespace, mappings)?;
    let checks = classify(node, mappings, &view);
    let mut dangling = Vec::new();
    for pool in scan_pools {
        let reg = Registry::open(rados, pool, namespace)?;
        for e in reg.held_by(node)? {
            let mapped = mappings.iter().any(|m| {
                m.pool == e.pool && m.namespace == e.namespace && m.image_id == e.image_id
            });
            if !mapped {
                dangling.push(e);
            }
        }
    }
    Ok(ReconcileReport {
        node: node.clone(),
        at_ms: now_ms(),
        checks,
        dangling,
        elapsed_us: t0.elapsed().as_micros() as u64,
    })
}

/// The local mappings an attach of `image` must look at: the same image id, or the same
/// pool/namespace/name with another id (a device left over from a removed image whose name
/// was reused).
pub fn relevant_to(image: &ImageRef, local: &[Mapping]) -> Vec<Mapping> {
    local
        .iter()
        .filter(|m| {
            m.pool == image.pool
                && m.namespace == image.namespace
                && (m.image_id == image.image_id
                    || (!image.image.is_empty() && m.image == image.image))
        })
        .cloned()
        .collect::<Vec<_>>()
}

/// The check on the attach/create/remove path: [`check`] restricted to the local mappings
/// [`relevant_to`] `image`.
pub fn check_for(
    rados: &Rados,
    namespace: &str,
    node: &NodeId,
    image: &ImageRef,
    local: &[Mapping],
) -> Result<ReconcileReport> {
    check(rados, namespace, node, &relevant_to(image, local), &[])
}

/// How [`cleanup_stale`] proceeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CleanupOptions {
    /// How long one lazy unmount may take before the unmap goes ahead anyway.
    pub unmount_timeout: Duration,
}

impl Default for CleanupOptions {
    fn default() -> Self {
        Self {
            unmount_timeout: Duration::from_secs(5),
        }
    }
}

/// Unmaps a mapping; every [`Mapper`] is one.
pub trait Unmapper {
    /// Unmaps `m`; `force` fails in-flight I/O instead of waiting for it.
    fn unmap_mapping(&self, m: &Mapping, force: bool) -> Result<()>;
}

impl<T: Mapper + ?Sized> Unmapper for T {
    fn unmap_mapping(&self, m: &Mapping, force: bool) -> Result<()> {
        self.unmap(m, force)
    }
}

/// What [`cleanup_stale`] did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CleanupReport {
    /// The mapping cleaned.
    pub mapping: Mapping,
    /// Why it was stale.
    pub reasons: Vec<StaleReason>,
    /// Mountpoints detached.
    pub unmounted: Vec<PathBuf>,
    /// True when the unmap succeeded.
    pub unmapped: bool,
    /// True when our registry record for the image was removed.
    pub registry_cleaned: bool,
    /// What failed (cleanup goes on after a failed step).
    pub errors: Vec<String>,
    /// The log line written.
    pub log_line: String,
}

impl CleanupReport {
    /// True when every step succeeded.
    pub fn is_clean(&self) -> bool {
        self.errors.is_empty() && self.unmapped
    }
}

/// Lazily unmounts `path` (`umount2(MNT_DETACH)`) on a helper thread, waiting at most
/// `timeout` (the final unmount of a filesystem on a dead device may block).
fn lazy_unmount(path: &std::path::Path, timeout: Duration) -> std::result::Result<(), String> {
    let p = path.to_owned();
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    std::thread::Builder::new()
        .name("rbd-reconcile:umount".into())
        .spawn(move || {
            let r = nix::mount::umount2(&p, nix::mount::MntFlags::MNT_DETACH);
            let _ = tx.send(r);
        })
        .map_err(|e| format!("cannot start the unmount thread: {e}"))?;
    match rx.recv_timeout(timeout) {
        Ok(Ok(())) => Ok(()),
        // Already gone (raced with another cleanup).
        Ok(Err(nix::errno::Errno::EINVAL)) | Ok(Err(nix::errno::Errno::ENOENT)) => Ok(()),
        Ok(Err(e)) => Err(format!("umount -l {}: {e}", path.display())),
        Err(_) => Err(format!(
            "umount -l {} did not return within {} s (continuing)",
            path.display(),
            timeout.as_secs()
        )),
    }
}

/// Cleans one stale mapping: lazily unmounts each of `mounts` (the mountpoints of its
/// device, e.g. from `fs_format::mounts_of_device`), force-unmaps it, removes
/// `node`'s registry record for its image (if the registry still names us), and logs a
/// line saying what was cleaned and why. Every step is attempted even when an earlier one
/// failed; failures are in [`CleanupReport::errors`].
pub fn cleanup_stale(
    check: &MappingCheck,
    mounts: &[PathBuf],
    unmapper: &dyn Unmapper,
    registry: Option<(&Registry, &NodeId)>,
    opts: &CleanupOptions,
) -> CleanupReport {
    let m = &check.mapping;
    let mut report = CleanupReport {
        mapping: m.clone(),
        reasons: check.reasons().to_vec(),
        unmounted: Vec::new(),
        unmapped: false,
        registry_cleaned: false,
        errors: Vec::new(),
        log_line: String::new(),
    };
    for p in mounts {
        match lazy_unmount(p, opts.unmount_timeout) {
            Ok(()) => report.unmounted.push(p.clone()),
            Err(e) => report.errors.push(e),
        }
    }
    match unmapper.unmap_mapping(m, true) {
        Ok(()) => report.unmapped = true,
        Err(e) => report
            .errors
            .push(format!("forced unmap of {}: {e}", m.device.display())),
    }
    if let Some((reg, node)) = registry {
        match reg.unregister(&ImageRef::from_mapping(m), node) {
            Ok(removed) => report.registry_cleaned = removed,
            Err(e) => report.errors.push(format!("registry cleanup: {e}")),
        }
    }
    let why = if report.reasons.is_empty() {
        "requested".to_owned()
    } else {
        report
            .reasons
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ")
    };
    let unmounted = if report.unmounted.is_empty() {
        "nothing mounted".to_owned()
    } else {
        format!(
            "unmounted {}",
            report
                .unmounted
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    report.log_line = format!(
        "cleaned stale {} mapping {} of {} (id {}) because {why}: {unmounted}, {}, {}{}",
        m.backend,
        m.device.display(),
        m.spec(),
        m.image_id,
        if report.unmapped {
            "unmapped"
        } else {
            "unmap FAILED"
        },
        if report.registry_cleaned {
            "registry record removed"
        } else {
            "no registry record of ours"
        },
        if report.errors.is_empty() {
            String::new()
        } else {
            format!(" (errors: {})", report.errors.join("; "))
        }
    );
    if report.is_clean() {
        tracing::warn!("{}", report.log_line);
    } else {
        tracing::error!("{}", report.log_line);
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::registry::HolderRecord;
    use crate::mapper::Backend;

    fn mapping(id: &str, name: &str, ro: bool, addr: Option<&str>) -> Mapping {
        Mapping {
            backend: Backend::Userspace,
            pool: "rbd".into(),
            namespace: String::new(),
            image: name.into(),
            image_id: id.into(),
            snap: None,
            device: format!("/dev/loop-{id}").into(),
            client_addr: addr.map(|a| a.parse().unwrap()),
            read_only: ro,
            pid: None,
        }
    }

    fn entry(id: &str, holders: &[(&str, Mode)]) -> RegistryEntry {
        let hs: Vec<HolderRecord> = holders
            .iter()
            .map(|(n, m)| HolderRecord::new(NodeId::new(*n).unwrap(), *m))
            .collect();
        RegistryEntry {
            version: 1,
            pool: "rbd".into(),
            namespace: String::new(),
            image: "v".into(),
            image_id: id.into(),
            mode: if hs.iter().any(|h| h.mode == Mode::Rw) {
                Mode::Rw
            } else {
                Mode::Ro
            },
            epoch: 1,
            updated_ms: 0,
            holders: hs,
        }
    }

    #[test]
    fn ranges_and_hosts_match() {
        let a: EntityAddr = "10.1.2.3:0/77".parse().unwrap();
        let bl = |s: &str, range: bool| BlocklistEntry {
            addr: s.parse().unwrap(),
            range,
            until: None,
            until_raw: "x".into(),
        };
        assert!(blocklist_match(&a, &[bl("10.1.2.3:0/77", false)]).is_some());
        assert!(blocklist_match(&a, &[bl("10.1.2.3:0/78", false)]).is_none());
        assert!(blocklist_match(&a, &[bl("10.1.2.3:0/0", false)]).is_some());
        assert!(blocklist_match(&a, &[bl("10.1.2.0:0/24", true)]).is_some());
        assert!(blocklist_match(&a, &[bl("10.1.3.0:0/24", true)]).is_none());
        assert!(blocklist_match(&a, &[bl("[::1]:0/0", false)]).is_none());
    }

    #[test]
    fn classification() {
        let me = NodeId::new("me").unwrap();
        let mut view = ClusterView::default();
        view.images.insert(
            ("rbd".into(), String::new()),
            ["ok1", "other", "ro2", "fenced", "unreg"]
                .iter()
                .map(|s| s.to_string())
                .collect(),
        );
        for (id, hs) in [
            ("ok1", vec![("me", Mode::Rw)]),
            ("other", vec![("them", Mode::Rw)]),
            ("ro2", vec![("them", Mode::Ro)]),
            ("fenced", vec![("me", Mode::Rw)]),
        ] {
            view.entries
                .insert(("rbd".into(), id.into()), entry(id, &hs));
        }
        view.blocklist = vec![BlocklistEntry {
            addr: "127.0.0.1:0/99".parse().unwrap(),
            range: false,
            until: None,
            until_raw: "2030-01-01".into(),
        }];
        let maps = vec![
            mapping("ok1", "a", false, Some("127.0.0.1:0/1")),
            mapping("gone", "b", false, None),
            mapping("other", "c", true, None),
            mapping("ro2", "d", true, None),
            mapping("fenced", "e", false, Some("127.0.0.1:0/99")),
            mapping("unreg", "f", false, None),
        ];
        let c = classify(&me, &maps, &view);
        assert_eq!(c[0].verdict, Verdict::Current);
        assert_eq!(c[1].reasons(), &[StaleReason::ImageGone]);
        assert!(matches!(
            &c[2].reasons()[0],
            StaleReason::HeldByOther { nodes, mode: Mode::Rw } if nodes[0].as_str() == "them"
        ));
        assert_eq!(c[3].verdict, Verdict::Unregistered);
        assert!(matches!(
            &c[4].reasons()[0],
            StaleReason::Blocklisted { .. }
        ));
        assert_eq!(c[5].verdict, Verdict::Unregistered);
        let r = ReconcileReport {
            node: me,
            at_ms: 0,
            checks: c,
            dangling: vec![],
            elapsed_us: 0,
        };
        assert_eq!(r.stale().count(), 3);
        let s = r.summary().join("\n");
        assert!(s.contains("id gone): its image id no longer exists"), "{s}");
        assert!(s.contains("registered rw to node them"), "{s}");
        assert!(s.contains("client 127.0.0.1:0/99 is blocklisted"), "{s}");
    }

    #[test]
    fn relevant_mappings_by_id_or_reused_name() {
        let image = ImageRef::new("rbd", "", "v", "new1");
        let local = vec![
            mapping("old9", "v", false, None),
            mapping("new1", "v", false, None),
            mapping("zzz", "w", false, None),
        ];
        let r = relevant_to(&image, &local);
        assert_eq!(r.len(), 2);
        assert!(r.iter().all(|m| m.image == "v"));
    }
}
