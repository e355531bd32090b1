//! Fencing: take an image away from clients that no longer answer.
//!
//! [`fence_image`] does, in order:
//! 1. blocklist the exact addresses of the image's other clients: its header watchers,
//!    the exclusive-lock owners, advisory lockers, and the addresses the registry recorded
//!    for the fenced holder (a partitioned client may have lost its watch yet come back);
//!    never one of our own addresses or a protected one, and never a whole host unless
//!    [`FenceOptions::allow_whole_host`];
//! 2. break the exclusive lock and every advisory lock those clients hold;
//! 3. wait (bounded) until no watcher, no lock owner and no advisory locker but ours
//!    remains;
//! 4. record the fence, with its expiry, in the fence log.

use std::time::{Duration, Instant};

use rbd_core::rbd::{LockMode, Watcher};
use rbd_core::{EntityAddr, ErrorKind, Image, OpenOptions, Rados};
use serde::Serialize;

use super::node::NodeId;
use super::registry::{FenceRecord, ImageRef, Registry};
use crate::error::{DriverError, Result};

/// How to fence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FenceOptions {
    /// How long the blocklist entries last.
    pub expiry: Duration,
    /// How long to wait for the fenced clients' watches to disappear.
    pub verify_timeout: Duration,
    /// Allow blocklisting a whole-host address (port 0, nonce 0). Off by default: it
    /// fences every client on that host.
    pub allow_whole_host: bool,
    /// Addresses never to fence, in addition to this connection's own (e.g. this node's
    /// own mappings of the image).
    pub protect: Vec<EntityAddr>,
    /// Fence only these addresses (one node's registered mappings, for an operator who
    /// fences that node's hold only): every other client of the image is spared, keeps
    /// its locks, and may stay. `None`: every client but ours and protected ones.
    pub only: Option<(String, Vec<EntityAddr>)>,
}

impl Default for FenceOptions {
    fn default() -> Self {
        Self {
            expiry: Duration::from_secs(3600),
            verify_timeout: Duration::from_secs(5),
            allow_whole_host: false,
            protect: Vec::new(),
            only: None,
        }
    }
}

/// Whose hold to take away.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FenceTarget {
    /// The image.
    pub image: ImageRef,
    /// The node whose hold is taken away, when known (for the record).
    pub node: Option<NodeId>,
    /// Addresses to fence even if they do not watch the image now (the registry's
    /// `client_addr` of the fenced holder).
    pub addrs: Vec<EntityAddr>,
    /// Why, for the record and the log.
    pub reason: String,
}

/// What a fencing did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FenceOutcome {
    /// The record written to the fence log.
    pub record: FenceRecord,
    /// The image's watchers before fencing (ours included).
    pub watchers_before: Vec<Watcher>,
    /// Candidate addresses that were not fenced, and why (ours, protected, whole host).
    pub spared: Vec<(EntityAddr, String)>,
    /// How long it took.
    pub elapsed_ms: u64,
}

/// The exclusive-lock owners; none when the image has no exclusive-lock feature, and
/// none when the lock is held by an external mechanism (librbd answers `EBUSY` when an
/// advisory `rbd lock add` lock, not a lock librbd manages, holds the header: those are
/// listed, broken and verified as advisory lockers).
fn lock_owners(img: &Image) -> rbd_core::Result<Vec<String>> {
    match img.lock_get_owners() {
        Ok(o) => Ok(o.owners),
        Err(e)
            if matches!(
                e.kind(),
                ErrorKind::InvalidInput | ErrorKind::NotSupported | ErrorKind::Busy
            ) =>
        {
            Ok(Vec::new())
        }
        Err(e) => Err(e),
    }
}

fn is_in(addr: &EntityAddr, set: &[EntityAddr]) -> bool {
    set.iter().any(|a| a.same_instance(addr))
}

/// Fences `target` (see the module docs). `rados` is the fencing node's connection; its
/// own addresses are never fenced. The fence is recorded in `registry`'s fence log.
///
/// Sets `rbd_blocklist_on_break_lock = false` on `rados`: every lock owner is blocklisted
/// here first, with [`FenceOptions::expiry`], so librbd must not blocklist it again with
/// its own default expiry when the lock is broken.
///
/// Fails with [`DriverError::FenceFailed`], naming what failed, when a client cannot be
/// blocklisted (then no lock is broken), or when a watcher, lock owner or advisory locker
/// is still there after [`FenceOptions::verify_timeout`]; the blocklist entries made so
/// far stay (and are recorded).
pub fn fence_image(
    rados: &Rados,
    registry: &Registry,
    by: &NodeId,
    target: &FenceTarget,
    opts: &FenceOptions,
) -> Result<FenceOutcome> {
    let t0 = Instant::now();
    let image = &target.image;
    image.validate()?;
    let ceph = |what: &str, e| DriverError::ceph(format!("fencing {image}: {what}"), e);

    let own: Vec<EntityAddr> = rados
        .getaddrs()
        .map_err(|e| ceph("reading our own address", e))?
        .0;
    let mut protect = own.clone();
    protect.extend(opts.protect.iter().copied());

    // We blocklist every lock owner ourselves (with our expiry) before breaking locks, so
    // librbd's own blocklisting on break (rbd_blocklist_on_break_lock, with librbd's
    // default expiry) is turned off for this connection. (Setting
    // rbd_blocklist_expire_seconds instead makes Pacific's lock break fail with EINVAL.)
    rados
        .conf_set("rbd_blocklist_on_break_lock", "false")
        .map_err(|e| ceph("setting rbd_blocklist_on_break_lock", e))?;

    let io = rados
        .ioctx(&image.pool)
        .and_then(|io| io.with_namespace(&image.namespace))
        .map_err(|e| ceph("opening the pool", e))?;
    let img = match Image::open_by_id(&io, &image.image_id, &OpenOptions::new()) {
        Ok(i) => Some(i),
        Err(e) if e.kind() == ErrorKind::NotFound => None,
        Err(e) => return Err(ceph("opening the image", e)),
    };

    // 1. Candidates (with what each is, for errors): watchers, lock owners, advisory
    // lockers, recorded addresses.
    let mut candidates: Vec<(EntityAddr, String)> = Vec::new();
    let mut watchers_before = Vec::new();
    if let Some(img) = &img {
        watchers_before = img.watchers().map_err(|e| ceph("listing watchers", e))?;
        candidates.extend(
            watchers_before
                .iter()
                .map(|w| (w.addr, "watcher".to_owned())),
        );
        let owners = lock_owners(img).map_err(|e| ceph("listing lock owners", e))?;
        candidates.extend(
            owners
                .iter()
                .filter_map(|o| o.parse::<EntityAddr>().ok())
                .map(|a| (a, "exclusive-lock owner".to_owned())),
        );
        let lockers = img.list_lockers().map_err(|e| ceph("listing lockers", e))?;
        candidates.extend(lockers.lockers.iter().map(|l| {
            (
                l.addr,
                format!("owner of advisory lock {} held by {}", l.cookie, l.client),
            )
        }));
    }
    candidates.extend(
        target
            .addrs
            .iter()
            .map(|a| (*a, "recorded address of the fenced holder".to_owned())),
    );

    let mut record = FenceRecord::new(
        image.clone(),
        target.node.clone(),
        by.clone(),
        &target.reason,
        opts.expiry,
    );
    let mut spared = Vec::new();
    // One entry per client, naming everything it is.
    let mut merged: Vec<(EntityAddr, String)> = Vec::new();
    for (a, what) in candidates {
        match merged.iter_mut().find(|(m, _)| m.same_instance(&a)) {
            Some((_, w)) if !w.split(", ").any(|x| x == what) => {
                w.push_str(", ");
                w.push_str(&what);
            }
            Some(_) => {}
            None => merged.push((a, what)),
        }
    }
    for (a, what) in merged {
        if is_in(&a, &record.addrs)
            || spared
                .iter()
                .any(|(s, _): &(EntityAddr, String)| s.same_instance(&a))
        {
            continue;
        }
        if is_in(&a, &own) {
            spared.push((a, "our own address".to_owned()));
        } else if let Some((whose, only)) = &opts.only
            && !is_in(&a, only)
        {
            // Not a target: spared, its locks kept, allowed to stay.
            spared.push((a, format!("not registered to {whose}")));
            protect.push(a);
        } else if is_in(&a, &protect) {
            spared.push((a, "protected".to_owned()));
        } else if a.is_whole_host() && !opts.allow_whole_host {
            spared.push((a, "whole-host address (not allowed)".to_owned()));
        } else {
            if let Err(e) = rados.blocklist_add(&a, Some(opts.expiry)) {
                // No lock is broken for a client that is not cut off. Record what was
                // fenced so far before giving up.
                let so_far = if record.addrs.is_empty() {
                    "nothing was blocklisted".to_owned()
                } else {
                    format!("blocklisted so far: {}", join_addrs(&record.addrs))
                };
                if !record.addrs.is_empty() {
                    record.reason =
                        format!("{} (incomplete: blocklisting {a} failed)", record.reason);
                    let _ = registry.record_fence(&record);
                }
                return Err(DriverError::FenceFailed {
                    image: image.spec(),
                    reason: format!(
                        "could not blocklist {a} ({what}); {so_far}; no lock was broken"
                    ),
                    source: Some(e),
                });
            }
            tracing::warn!(by = %by, "fenced {a} for {image}: {}", target.reason);
            record.addrs.push(a);
        }
    }

    // 2. Break the exclusive lock and advisory locks not held by us.
    if let Some(img) = &img {
        for _ in 0..4 {
            let owners = lock_owners(img).map_err(|e| ceph("listing lock owners", e))?;
            let mut broke = false;
            for o in &owners {
                let addr: Option<EntityAddr> = o.parse().ok();
                if addr.is_some_and(|a| is_in(&a, &protect)) {
                    continue;
                }
                match img.lock_break(LockMode::Exclusive, o) {
                    Ok(()) => {
                        record.locks_broken.push(format!("exclusive {o}"));
                        broke = true;
                    }
                    // The owner changed meanwhile (or it is gone): look again.
                    Err(e) if matches!(e.kind(), ErrorKind::Busy | ErrorKind::NotFound) => {
                        broke = true
                    }
                    Err(e) => return Err(ceph(&format!("breaking the exclusive lock of {o}"), e)),
                }
            }
            if !broke {
                break;
            }
        }
        let lockers = img.list_lockers().map_err(|e| ceph("listing lockers", e))?;
        for l in &lockers.lockers {
            if is_in(&l.addr, &protect) {
                continue;
            }
            match img.break_lock(&l.client, &l.cookie) {
                Ok(()) => record
                    .locks_broken
                    .push(format!("advisory {} {}", l.client, l.cookie)),
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(ceph(
                        &format!("breaking the advisory lock {} of {}", l.cookie, l.client),
                        e,
                    ));
                }
            }
        }
    }

    // 3. Verify: no watcher and no lock owner left but ours / protected ones.
    let mut left = String::new();
    if let Some(img) = &img {
        let deadline = Instant::now() + opts.verify_timeout;
        loop {
            let watchers = img.watchers().map_err(|e| ceph("listing watchers", e))?;
            let foreign: Vec<String> = watchers
                .iter()
                .filter(|w| !is_in(&w.addr, &protect))
                .map(|w| format!("watcher {}", w.addr))
                .collect();
            let owners = lock_owners(img).map_err(|e| ceph("listing lock owners", e))?;
            let foreign_owners: Vec<String> = owners
                .iter()
                .filter(|o| !o.parse::<EntityAddr>().is_ok_and(|a| is_in(&a, &protect)))
                .map(|o| format!("lock owner {o}"))
                .collect();
            // librbd caches the lockers until the header changes (breaking a lock does
            // not notify), so read them through a new read-only handle (no watch).
            let lockers =
                Image::open_by_id(&io, &image.image_id, &OpenOptions::new().read_only(true))
                    .and_then(|fresh| {
                        let l = fresh.list_lockers();
                        let _ = fresh.close();
                        l
                    })
                    .map_err(|e| ceph("listing lockers", e))?;
            let foreign_lockers: Vec<String> = lockers
                .lockers
                .iter()
                .filter(|l| !is_in(&l.addr, &protect))
                .map(|l| format!("advisory lock {} of {} ({})", l.cookie, l.client, l.addr))
                .collect();
            if foreign.is_empty() && foreign_owners.is_empty() && foreign_lockers.is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                left = foreign
                    .into_iter()
                    .chain(foreign_owners)
                    .chain(foreign_lockers)
                    .collect::<Vec<_>>()
                    .join(", ");
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    if let Some(img) = img {
        let _ = img.close();
    }

    // 4. Record (also when verification failed: the blocklist entries exist).
    if !left.is_empty() {
        record.reason = format!("{} (incomplete: {left} remained)", record.reason);
    }
    registry.record_fence(&record)?;
    if !left.is_empty() {
        return Err(DriverError::FenceFailed {
            image: image.spec(),
            reason: format!(
                "{left} still present {} s after blocklisting {}",
                opts.verify_timeout.as_secs(),
                join_addrs(&record.addrs)
            ),
            source: None,
        });
    }
    Ok(FenceOutcome {
        record,
        watchers_before,
        spared,
        elapsed_ms: t0.elapsed().as_millis() as u64,
    })
}

/// `a, b, c`, for messages.
fn join_addrs(addrs: &[EntityAddr]) -> String {
    addrs
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}
