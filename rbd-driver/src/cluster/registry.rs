//! The cluster-wide mapping registry and the fence log.
//!
//! Per pool, one RADOS object ([`REGISTRY_OBJECT`], in the [`super::NAMESPACE`]
//! namespace) holds one omap entry per mapped image, keyed by image id
//! ([`ImageRef::key`]). The value is a JSON [`RegistryEntry`]: which nodes hold the image,
//! read-write or read-only, with their device, mount path, mount IDs and the mapping's
//! exact client address.
//!
//! Every change is a compare-and-swap: the new value is written in one guarded RADOS
//! operation (`omap_cmp` on the exact bytes read, then `omap_set` or `omap_rm_keys`), and a
//! lost race is retried on the fresh value. Two nodes can therefore never both register
//! an image read-write: the second sees the first's entry and gets
//! [`DriverError::Held`] naming the winner.
//!
//! Fences are logged in a sibling object ([`FENCE_OBJECT`]), one [`FenceRecord`] per
//! fencing, with its expiry.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rbd_core::{CreateMode, EntityAddr, ErrorKind, IoCtx, OmapCmpOp, Rados, WriteOp};
use serde::{Deserialize, Serialize};

use super::node::NodeId;
use crate::error::{DriverError, Result};
use crate::mapper::{Backend, Mapping, image_spec};

/// The registry object's name (in the [`super::NAMESPACE`] namespace of each pool).
pub const REGISTRY_OBJECT: &str = "rbd_volumes.mappings";
/// The fence log object's name (next to the registry).
pub const FENCE_OBJECT: &str = "rbd_volumes.fences";
/// Current format version of [`RegistryEntry`] and [`FenceRecord`].
pub const ENTRY_VERSION: u32 = 1;
/// How many times a lost compare-and-swap race is retried before giving up.
const MAX_CAS_ATTEMPTS: u32 = 32;

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Read-write or read-only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Read-write: exactly one holder.
    Rw,
    /// Read-only: any number of holders, all read-only.
    Ro,
}

impl Mode {
    /// `rw` or `ro`.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Rw => "rw",
            Mode::Ro => "ro",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Mode {
    type Err = DriverError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "rw" => Ok(Mode::Rw),
            "ro" => Ok(Mode::Ro),
            _ => Err(DriverError::invalid(
                "access mode",
                s,
                "expected \"rw\" or \"ro\"",
            )),
        }
    }
}

/// Which image: pool, namespace, id (the identity) and name (for messages).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ImageRef {
    /// Pool name.
    pub pool: String,
    /// RADOS namespace of the image (`""` for the default).
    #[serde(default)]
    pub namespace: String,
    /// Image name, for messages (the id is what identifies it).
    #[serde(default)]
    pub image: String,
    /// Image id.
    pub image_id: String,
}

impl ImageRef {
    /// An image reference.
    pub fn new(
        pool: impl Into<String>,
        namespace: impl Into<String>,
        image: impl Into<String>,
        image_id: impl Into<String>,
    ) -> Self {
        Self {
            pool: pool.into(),
            namespace: namespace.into(),
            image: image.into(),
            image_id: image_id.into(),
        }
    }

    /// The image a local mapping is of.
    pub fn from_mapping(m: &Mapping) -> Self {
        Self::new(&m.pool, &m.namespace, &m.image, &m.image_id)
    }

    /// The registry key: the image id, prefixed with `NAMESPACE/` for images in a RADOS
    /// namespace (image ids are unique per pool namespace).
    pub fn key(&self) -> String {
        if self.namespace.is_empty() {
            self.image_id.clone()
        } else {
            format!("{}/{}", self.namespace, self.image_id)
        }
    }

    /// `pool/[namespace/]image (id ID)`, for messages.
    pub fn spec(&self) -> String {
        format!(
            "{} (id {})",
            image_spec(&self.pool, &self.namespace, &self.image, None),
            self.image_id
        )
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if self.pool.is_empty() {
            return Err(DriverError::invalid("pool", "", "must not be empty"));
        }
        if self.image_id.is_empty()
            || !self
                .image_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '_' || c == '-')
        {
            return Err(DriverError::invalid(
                "image id",
                &self.image_id,
                "expected the id librbd reports (ASCII letters and digits)",
            ));
        }
        if self.namespace.contains('/') {
            return Err(DriverError::invalid(
                "namespace",
                &self.namespace,
                "must not contain '/'",
            ));
        }
        Ok(())
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.spec())
    }
}

/// One node's hold on an image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HolderRecord {
    /// The node.
    pub node: NodeId,
    /// Its access.
    pub mode: Mode,
    /// The mapper backend, once mapped.
    #[serde(default)]
    pub backend: Option<Backend>,
    /// The block device, once mapped.
    #[serde(default)]
    pub device: Option<PathBuf>,
    /// Where it is mounted, once mounted.
    #[serde(default)]
    pub mount_path: Option<PathBuf>,
    /// The mount IDs (Docker's) using it.
    #[serde(default)]
    pub mount_ids: BTreeSet<String>,
    /// The exact client address of the mapping's Ceph session: what fencing blocklists.
    #[serde(default)]
    pub client_addr: Option<EntityAddr>,
    /// When this node registered (ms since the epoch).
    pub since_ms: u64,
    /// When this record last changed (ms since the epoch).
    pub updated_ms: u64,
}

impl HolderRecord {
    /// A fresh record for `node` in `mode`, nothing mapped yet.
    pub fn new(node: NodeId, mode: Mode) -> Self {
        let now = now_ms();
        Self {
            node,
            mode,
            backend: None,
            device: None,
            mount_path: None,
            mount_ids: BTreeSet::new(),
            client_addr: None,
            since_ms: now,
            updated_ms: now,
        }
    }

    /// Fills in what a mapping knows: backend, device, client address.
    pub fn with_mapping(mut self, m: &Mapping) -> Self {
        self.backend = Some(m.backend);
        self.device = Some(m.device.clone());
        self.client_addr = m.client_addr;
        self
    }

    fn describe(&self) -> String {
        let mut s = format!("{} ({})", self.node, self.mode);
        if !self.mount_ids.is_empty() {
            let ids: Vec<&str> = self.mount_ids.iter().map(String::as_str).collect();
            s.push_str(&format!(" mount IDs {}", ids.join(",")));
        }
        s
    }
}

/// One registry entry: who holds one image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistryEntry {
    /// Format version ([`ENTRY_VERSION`]).
    pub version: u32,
    /// Pool.
    pub pool: String,
    /// RADOS namespace of the image.
    #[serde(default)]
    pub namespace: String,
    /// Image name when registered.
    #[serde(default)]
    pub image: String,
    /// Image id (the key).
    pub image_id: String,
    /// `rw` when the (single) holder is read-write, else `ro`.
    pub mode: Mode,
    /// Incremented on every change of this entry (starts at 1).
    pub epoch: u64,
    /// When it last changed (ms since the epoch).
    pub updated_ms: u64,
    /// The holders: one for `rw`, one or more for `ro`.
    pub holders: Vec<HolderRecord>,
}

impl RegistryEntry {
    /// The image this entry is for.
    pub fn image_ref(&self) -> ImageRef {
        ImageRef::new(&self.pool, &self.namespace, &self.image, &self.image_id)
    }

    /// `node`'s record, if it holds the image.
    pub fn holder(&self, node: &NodeId) -> Option<&HolderRecord> {
        self.holders.iter().find(|h| &h.node == node)
    }

    /// The holders other than `node`.
    pub fn others<'a>(&'a self, node: &'a NodeId) -> impl Iterator<Item = &'a HolderRecord> {
        self.holders.iter().filter(move |h| &h.node != node)
    }

    fn recompute_mode(&mut self) {
        self.mode = if self.holders.iter().any(|h| h.mode == Mode::Rw) {
            Mode::Rw
        } else {
            Mode::Ro
        };
    }
}

/// Why a registration was refused: the current entry and the holders in the way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    /// The entry as it was when the registration was refused.
    pub entry: RegistryEntry,
    /// The other nodes' records that prevent it.
    pub blocking: Vec<HolderRecord>,
}

impl Conflict {
    /// The error for this conflict, naming the first blocking holder (the winner).
    pub fn into_error(self) -> DriverError {
        let first = self.blocking.first().cloned();
        let image = self.entry.image_ref().spec();
        match first {
            Some(h) => DriverError::Held {
                image,
                node: h.node.to_string(),
                mode: h.mode.to_string(),
                mount_ids: h.mount_ids.into_iter().collect(),
            },
            None => DriverError::Held {
                image,
                node: "unknown".into(),
                mode: self.entry.mode.to_string(),
                mount_ids: Vec::new(),
            },
        }
    }

    /// `node-a (rw) mount IDs m1,m2; node-b (ro)`.
    pub fn describe(&self) -> String {
        self.blocking
            .iter()
            .map(HolderRecord::describe)
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// Marks an entry as written now, in the current format.
fn stamp(e: &mut RegistryEntry) {
    e.version = ENTRY_VERSION;
    e.updated_ms = now_ms();
}

/// What one compare-and-swap round decided.
enum Change {
    Keep,
    Put(Box<RegistryEntry>),
    Delete,
}

/// All entries of a registry, and the keys whose values could not be parsed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RegistryListing {
    /// Parsed entries, by key.
    pub entries: BTreeMap<String, RegistryEntry>,
    /// Keys whose values are not valid entries, with the parse error.
    pub corrupt: Vec<(String, String)>,
}

/// One fencing, as logged in [`FENCE_OBJECT`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FenceRecord {
    /// Format version ([`ENTRY_VERSION`]).
    pub version: u32,
    /// The record's key in the fence log.
    pub id: String,
    /// The image whose clients were fenced.
    pub image: ImageRef,
    /// The node whose hold was taken away, when known.
    #[serde(default)]
    pub fenced_node: Option<NodeId>,
    /// The exact client addresses blocklisted.
    pub addrs: Vec<EntityAddr>,
    /// The locks broken (`exclusive <owner>`, `advisory <client> <cookie>`).
    #[serde(default)]
    pub locks_broken: Vec<String>,
    /// The node that fenced.
    pub by_node: NodeId,
    /// Why (e.g. `node-a did not answer within 2 s`).
    pub reason: String,
    /// When (ms since the epoch).
    pub at_ms: u64,
    /// When the blocklist entries expire (ms since the epoch).
    pub expires_ms: u64,
}

impl FenceRecord {
    /// True once the blocklist entries have expired.
    pub fn is_expired(&self, now_ms: u64) -> bool {
        now_ms >= self.expires_ms
    }

    /// Builds a record with a fresh unique id.
    pub fn new(
        image: ImageRef,
        fenced_node: Option<NodeId>,
        by_node: NodeId,
        reason: impl Into<String>,
        expiry: Duration,
    ) -> Self {
        let at_ms = now_ms();
        let id = format!(
            "{at_ms:013}.{}.{}",
            image.key().replace('/', "_"),
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        Self {
            version: ENTRY_VERSION,
            id,
            image,
            fenced_node,
            addrs: Vec::new(),
            locks_broken: Vec::new(),
            by_node,
            reason: reason.into(),
            at_ms,
            expires_ms: at_ms.saturating_add(expiry.as_millis() as u64),
        }
    }
}

/// The registry of one pool (and the fence log next to it).
#[derive(Debug)]
pub struct Registry {
    io: IoCtx,
}

impl Registry {
    /// The registry of `pool`, in RADOS namespace `namespace` (normally
    /// [`super::NAMESPACE`]). Nothing is created until the first registration.
    pub fn open(rados: &Rados, pool: &str, namespace: &str) -> Result<Registry> {
        let io = rados
            .ioctx(pool)
            .and_then(|io| io.with_namespace(namespace))
            .map_err(|e| {
                DriverError::ceph(format!("opening pool {pool} for the mapping registry"), e)
            })?;
        Ok(Registry { io })
    }

    /// A registry over an I/O context that is already in the registry namespace.
    pub fn from_ioctx(io: IoCtx) -> Registry {
        Registry { io }
    }

    /// The I/O context (pool + registry namespace).
    pub fn ioctx(&self) -> &IoCtx {
        &self.io
    }

    /// The pool this registry is for.
    pub fn pool(&self) -> &str {
        self.io.pool_name()
    }

    fn where_(&self) -> String {
        format!(
            "{}/{}/{REGISTRY_OBJECT}",
            self.io.pool_name(),
            self.io.namespace()
        )
    }

    fn read_raw(&self, key: &str) -> Result<Option<Vec<u8>>> {
        match self.io.omap_get(REGISTRY_OBJECT, key) {
            Ok(v) => Ok(v),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(DriverError::ceph(
                format!("reading registry entry {key} in {}", self.where_()),
                e,
            )),
        }
    }

    fn parse(&self, key: &str, raw: &[u8]) -> Result<RegistryEntry> {
        serde_json::from_slice(raw).map_err(|source| DriverError::CorruptRecord {
            what: format!("registry entry {key} in {}", self.where_()),
            source,
        })
    }

    /// Reads the entry, lets `f` decide, and writes the decision guarded by the exact
    /// bytes read; retries on a lost race.
    fn modify<T>(
        &self,
        image: &ImageRef,
        mut f: impl FnMut(Option<RegistryEntry>) -> Result<(Change, T)>,
    ) -> Result<T> {
        image.validate()?;
        let key = image.key();
        let t0 = std::time::Instant::now();
        for attempt in 0..MAX_CAS_ATTEMPTS {
            let raw = self.read_raw(&key)?;
            let cur = raw.as_deref().map(|b| self.parse(&key, b)).transpose()?;
            let (change, out) = f(cur)?;
            let guard = raw.as_deref().unwrap_or(b"");
            let op = match change {
                Change::Keep => return Ok(out),
                Change::Put(e) => {
                    let v =
                        serde_json::to_vec(&e).map_err(|source| DriverError::CorruptRecord {
                            what: format!("registry entry {key} (encoding)"),
                            source,
                        })?;
                    WriteOp::new()
                        .create(CreateMode::Idempotent)
                        .omap_cmp(&key, OmapCmpOp::Eq, guard)
                        .omap_set(&[(key.as_str(), v.as_slice())])
                }
                Change::Delete => {
                    if raw.is_none() {
                        return Ok(out);
                    }
                    WriteOp::new()
                        .omap_cmp(&key, OmapCmpOp::Eq, guard)
                        .omap_rm_keys(&[key.as_str()])
                }
            };
            match op.operate(&self.io, REGISTRY_OBJECT) {
                Ok(()) => return Ok(out),
                Err(e) if e.kind() == ErrorKind::ConditionFailed => {
                    // Lost a race: back off a little (more each time) and re-read.
                    let ms = 1
                        + u64::from(attempt) * 3
                        + u64::from(uuid::Uuid::new_v4().as_bytes()[0] % 8);
                    std::thread::sleep(Duration::from_millis(ms));
                }
                Err(e) => {
                    return Err(DriverError::ceph(
                        format!("updating registry entry {key} in {}", self.where_()),
                        e,
                    ));
                }
            }
        }
        Err(DriverError::Timeout {
            what: format!(
                "updating registry entry {key} in {} ({MAX_CAS_ATTEMPTS} lost races)",
                self.where_()
            ),
            secs: t0.elapsed().as_secs(),
        })
    }

    /// Registers `holder` for `image`, or returns the [`Conflict`] that prevents it.
    ///
    /// * no entry: created with this holder;
    /// * this node already holds it: its record is replaced (keeping `since_ms`); a mode
    ///   change to `rw` needs this node to be the only holder;
    /// * other nodes hold it: `ro` joins other `ro` holders; anything else conflicts.
    pub fn try_register(
        &self,
        image: &ImageRef,
        holder: HolderRecord,
    ) -> Result<std::result::Result<RegistryEntry, Conflict>> {
        self.modify(image, |cur| {
            let mut h = holder.clone();
            h.updated_ms = now_ms();
            let Some(mut e) = cur else {
                let e = RegistryEntry {
                    version: ENTRY_VERSION,
                    pool: image.pool.clone(),
                    namespace: image.namespace.clone(),
                    image: image.image.clone(),
                    image_id: image.image_id.clone(),
                    mode: h.mode,
                    epoch: 1,
                    updated_ms: now_ms(),
                    holders: vec![h],
                };
                return Ok((Change::Put(Box::new(e.clone())), Ok(e)));
            };
            let blocking: Vec<HolderRecord> = e
                .others(&h.node)
                .filter(|o| h.mode == Mode::Rw || o.mode == Mode::Rw)
                .cloned()
                .collect();
            if !blocking.is_empty() {
                return Ok((Change::Keep, Err(Conflict { entry: e, blocking })));
            }
            match e.holders.iter_mut().find(|x| x.node == h.node) {
                Some(x) => {
                    h.since_ms = x.since_ms;
                    *x = h;
                }
                None => e.holders.push(h),
            }
            if !image.image.is_empty() {
                e.image = image.image.clone();
            }
            e.epoch += 1;
            e.recompute_mode();
            stamp(&mut e);
            Ok((Change::Put(Box::new(e.clone())), Ok(e)))
        })
    }

    /// Registers `holder` for `image`; a conflict is [`DriverError::Held`] naming the node
    /// in the way. See [`Registry::try_register`].
    pub fn register(&self, image: &ImageRef, holder: HolderRecord) -> Result<RegistryEntry> {
        self.try_register(image, holder)?
            .map_err(Conflict::into_error)
    }

    /// Changes `node`'s own record with `f` (mode and node cannot change this way).
    /// Fails with [`DriverError::InvalidInput`] when `node` does not hold the image.
    pub fn update_holder(
        &self,
        image: &ImageRef,
        node: &NodeId,
        mut f: impl FnMut(&mut HolderRecord),
    ) -> Result<RegistryEntry> {
        self.modify(image, |cur| {
            let not_held = || {
                DriverError::invalid(
                    "registry update",
                    image.spec(),
                    format!("node {node} does not hold this image"),
                )
            };
            let mut e = cur.ok_or_else(not_held)?;
            let h = e
                .holders
                .iter_mut()
                .find(|h| &h.node == node)
                .ok_or_else(not_held)?;
            let (keep_node, keep_mode, keep_since) = (h.node.clone(), h.mode, h.since_ms);
            f(h);
            h.node = keep_node;
            h.mode = keep_mode;
            h.since_ms = keep_since;
            h.updated_ms = now_ms();
            e.epoch += 1;
            stamp(&mut e);
            Ok((Change::Put(Box::new(e.clone())), e))
        })
    }

    /// Replaces `node`'s mount IDs (and mount path, if given).
    pub fn set_mount_ids(
        &self,
        image: &ImageRef,
        node: &NodeId,
        mount_ids: BTreeSet<String>,
        mount_path: Option<PathBuf>,
    ) -> Result<RegistryEntry> {
        self.update_holder(image, node, |h| {
            h.mount_ids = mount_ids.clone();
            if mount_path.is_some() {
                h.mount_path = mount_path.clone();
            }
        })
    }

    /// Removes `node`'s own hold on `image` (the entry goes when no holder is left).
    /// Returns false when `node` did not hold it. Other nodes' records are never touched.
    pub fn unregister(&self, image: &ImageRef, node: &NodeId) -> Result<bool> {
        self.remove_holder(image, node, None)
    }

    /// Removes another node's record after it was fenced, only if that record is still
    /// exactly `expected` (so a record re-registered or changed since is left alone).
    /// Returns false when nothing was removed.
    pub fn remove_fenced_holder(&self, image: &ImageRef, expected: &HolderRecord) -> Result<bool> {
        self.remove_holder(image, &expected.node, Some(expected))
    }

    fn remove_holder(
        &self,
        image: &ImageRef,
        node: &NodeId,
        expected: Option<&HolderRecord>,
    ) -> Result<bool> {
        self.modify(image, |cur| {
            let Some(mut e) = cur else {
                return Ok((Change::Keep, false));
            };
            match e.holder(node) {
                None => return Ok((Change::Keep, false)),
                Some(h) if expected.is_some_and(|x| x != h) => return Ok((Change::Keep, false)),
                Some(_) => {}
            }
            e.holders.retain(|h| &h.node != node);
            if e.holders.is_empty() {
                return Ok((Change::Delete, true));
            }
            e.epoch += 1;
            e.recompute_mode();
            stamp(&mut e);
            Ok((Change::Put(Box::new(e)), true))
        })
    }

    /// The entry for `image`, if any.
    pub fn get(&self, image: &ImageRef) -> Result<Option<RegistryEntry>> {
        image.validate()?;
        let key = image.key();
        self.read_raw(&key)?
            .map(|raw| self.parse(&key, &raw))
            .transpose()
    }

    /// The entries of several images in one read, by key; absent ones are missing.
    pub fn get_many(&self, images: &[ImageRef]) -> Result<BTreeMap<String, RegistryEntry>> {
        if images.is_empty() {
            return Ok(BTreeMap::new());
        }
        let keys: Vec<String> = images.iter().map(ImageRef::key).collect();
        let raw = match self.io.omap_get_vals_by_keys(REGISTRY_OBJECT, &keys) {
            Ok(v) => v,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(BTreeMap::new()),
            Err(e) => {
                return Err(DriverError::ceph(
                    format!("reading registry entries in {}", self.where_()),
                    e,
                ));
            }
        };
        raw.into_iter()
            .map(|(k, v)| {
                let e = self.parse(&k, &v)?;
                Ok((k, e))
            })
            .collect()
    }

    /// Every entry; corrupt values are reported, not fatal.
    pub fn list(&self) -> Result<RegistryListing> {
        let raw = match self.io.omap_get_vals(REGISTRY_OBJECT, None, None, None) {
            Ok(v) => v,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(RegistryListing::default()),
            Err(e) => {
                return Err(DriverError::ceph(
                    format!("listing the registry {}", self.where_()),
                    e,
                ));
            }
        };
        let mut out = RegistryListing::default();
        for (k, v) in raw {
            match serde_json::from_slice::<RegistryEntry>(&v) {
                Ok(e) => {
                    out.entries.insert(k, e);
                }
                Err(err) => out.corrupt.push((k, err.to_string())),
            }
        }
        Ok(out)
    }

    /// The entries `node` holds.
    pub fn held_by(&self, node: &NodeId) -> Result<Vec<RegistryEntry>> {
        Ok(self
            .list()?
            .entries
            .into_values()
            .filter(|e| e.holder(node).is_some())
            .collect())
    }

    /// Appends a record to the fence log.
    pub fn record_fence(&self, rec: &FenceRecord) -> Result<()> {
        let v = serde_json::to_vec(rec).map_err(|source| DriverError::CorruptRecord {
            what: format!("fence record {} (encoding)", rec.id),
            source,
        })?;
        WriteOp::new()
            .create(CreateMode::Idempotent)
            .omap_set(&[(rec.id.as_str(), v.as_slice())])
            .operate(&self.io, FENCE_OBJECT)
            .map_err(|e| {
                DriverError::ceph(
                    format!(
                        "recording fence {} in {}/{}/{FENCE_OBJECT}",
                        rec.id,
                        self.io.pool_name(),
                        self.io.namespace()
                    ),
                    e,
                )
            })
    }

    /// The fence log, oldest first; expired records only with `include_expired`.
    /// Unparsable records are skipped.
    pub fn fences(&self, include_expired: bool) -> Result<Vec<FenceRecord>> {
        let raw = match self.io.omap_get_vals(FENCE_OBJECT, None, None, None) {
            Ok(v) => v,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => {
                return Err(DriverError::ceph(
                    format!(
                        "reading the fence log {}/{}/{FENCE_OBJECT}",
                        self.io.pool_name(),
                        self.io.namespace()
                    ),
                    e,
                ));
            }
        };
        let now = now_ms();
        Ok(raw
            .values()
            .filter_map(|v| serde_json::from_slice::<FenceRecord>(v).ok())
            .filter(|r| include_expired || !r.is_expired(now))
            .collect())
    }

    /// Removes the fence records with these ids (e.g. after their blocklist entries were
    /// lifted by hand); returns how many of them existed.
    pub fn remove_fences(&self, ids: &[String]) -> Result<usize> {
        if ids.is_empty() {
            return Ok(0);
        }
        let present = self
            .fences(true)?
            .into_iter()
            .filter(|r| ids.contains(&r.id))
            .count();
        match self.io.omap_rm_keys(FENCE_OBJECT, ids) {
            Ok(()) => Ok(present),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(0),
            Err(e) => Err(DriverError::ceph("removing records from the fence log", e)),
        }
    }

    /// Removes expired fence records; returns how many.
    pub fn prune_fences(&self) -> Result<usize> {
        let now = now_ms();
        let expired: Vec<String> = self
            .fences(true)?
            .into_iter()
            .filter(|r| r.is_expired(now))
            .map(|r| r.id)
            .collect();
        if expired.is_empty() {
            return Ok(0);
        }
        self.io
            .omap_rm_keys(FENCE_OBJECT, &expired)
            .map_err(|e| DriverError::ceph("pruning the fence log", e))?;
        Ok(expired.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn img() -> ImageRef {
        ImageRef::new("rbd", "", "db", "10ab2c")
    }

    #[test]
    fn keys_and_specs() {
        assert_eq!(img().key(), "10ab2c");
        let i = ImageRef::new("p", "ns", "v", "abc");
        assert_eq!(i.key(), "ns/abc");
        assert_eq!(i.spec(), "p/ns/v (id abc)");
        assert!(ImageRef::new("p", "", "v", "a b").validate().is_err());
        assert!(ImageRef::new("", "", "v", "ab").validate().is_err());
        assert!(ImageRef::new("p", "a/b", "v", "ab").validate().is_err());
    }

    #[test]
    fn entry_json_format() {
        let n = NodeId::new("node-a").unwrap();
        let mut h = HolderRecord::new(n.clone(), Mode::Rw);
        h.client_addr = Some("10.0.0.1:0/42".parse().unwrap());
        h.mount_ids.insert("m1".into());
        h.backend = Some(Backend::Userspace);
        let e = RegistryEntry {
            version: ENTRY_VERSION,
            pool: "rbd".into(),
            namespace: String::new(),
            image: "db".into(),
            image_id: "10ab2c".into(),
            mode: Mode::Rw,
            epoch: 3,
            updated_ms: 5,
            holders: vec![h],
        };
        let v: serde_json::Value = serde_json::to_value(&e).unwrap();
        assert_eq!(v["version"], 1);
        assert_eq!(v["mode"], "rw");
        assert_eq!(v["holders"][0]["node"], "node-a");
        assert_eq!(v["holders"][0]["client_addr"], "10.0.0.1:0/42");
        assert_eq!(v["holders"][0]["backend"], "userspace");
        assert_eq!(v["holders"][0]["mount_ids"][0], "m1");
        let back: RegistryEntry = serde_json::from_value(v).unwrap();
        assert_eq!(back, e);
        assert_eq!(back.holder(&n).unwrap().mode, Mode::Rw);
        // Older or minimal records still parse (defaults for optional fields).
        let min = r#"{"version":1,"pool":"rbd","image_id":"x1","mode":"ro","epoch":1,
            "updated_ms":0,"holders":[{"node":"b","mode":"ro","since_ms":0,"updated_ms":0}]}"#;
        let m: RegistryEntry = serde_json::from_str(min).unwrap();
        assert!(m.holders[0].client_addr.is_none());
    }

    #[test]
    fn conflict_error_names_winner() {
        let h = HolderRecord {
            mount_ids: ["m9".to_string()].into(),
            ..HolderRecord::new(NodeId::new("winner").unwrap(), Mode::Rw)
        };
        let c = Conflict {
            entry: RegistryEntry {
                version: 1,
                pool: "rbd".into(),
                namespace: String::new(),
                image: "v".into(),
                image_id: "abc".into(),
                mode: Mode::Rw,
                epoch: 1,
                updated_ms: 0,
                holders: vec![h.clone()],
            },
            blocking: vec![h],
        };
        assert_eq!(c.describe(), "winner (rw) mount IDs m9");
        let e = c.into_error().to_string();
        assert_eq!(
            e,
            "image rbd/v (id abc) is held rw by node winner (mount IDs: m9)"
        );
    }

    #[test]
    fn mode_parse() {
        assert_eq!("rw".parse::<Mode>().unwrap(), Mode::Rw);
        assert!(
            "RW".parse::<Mode>()
                .unwrap_err()
                .to_string()
                .contains("\"RW\"")
        );
    }

    #[test]
    fn fence_record_ids_are_unique_and_expire() {
        let a = FenceRecord::new(
            img(),
            None,
            NodeId::new("b").unwrap(),
            "test",
            Duration::from_secs(60),
        );
        let b = FenceRecord::new(
            img(),
            None,
            NodeId::new("b").unwrap(),
            "test",
            Duration::from_secs(60),
        );
        assert_ne!(a.id, b.id);
        assert!(!a.is_expired(a.at_ms));
        assert!(a.is_expired(a.at_ms + 60_000));
    }
}
