//! The cluster-wide volume name index.
//!
//! One RADOS object, [`INDEX_OBJECT`] in namespace [`INDEX_NAMESPACE`] of the default
//! pool, holds one omap entry per volume: `name -> {pool, namespace, image, image_id,
//! state, node, token, ...}` as JSON. Every change is a guarded omap operation:
//!
//! - a name is claimed with an insert-if-absent (`omap_cmp(key, EQ, "")` + `omap_set` in
//!   one operation), so two nodes racing to create the same name cannot both win;
//! - later changes compare the exact previous value (compare-and-swap), so a node never
//!   overwrites or deletes an entry that someone else changed meanwhile.
//!
//! Each create gets a fresh random `token`, also stored in the image's metadata, which
//! ties an index entry to exactly one image.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use rbd_core::{IoCtx, OmapCmpOp, Rados, WriteOp};
use serde::{Deserialize, Serialize};

use crate::error::{DriverError, Result};

/// The RADOS namespace holding the index (in the default pool).
pub const INDEX_NAMESPACE: &str = "rbd-volumes";
/// The index object's name.
pub const INDEX_OBJECT: &str = "volume-index";

/// Lifecycle state of an index entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EntryState {
    /// The name is claimed; the image is being created on `node`.
    Creating,
    /// The volume exists and is usable.
    Ready,
    /// The volume is being removed by `node`.
    Removing,
}

/// One index entry: where the volume named by the key lives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexEntry {
    /// Pool of the image.
    pub pool: String,
    /// RADOS namespace of the image.
    #[serde(default)]
    pub namespace: String,
    /// Image name (the volume name).
    pub image: String,
    /// Image id, once the image exists (empty while creating).
    #[serde(default)]
    pub image_id: String,
    /// Lifecycle state.
    pub state: EntryState,
    /// The node that created the volume (or is creating / removing it).
    pub node: String,
    /// Random token of the create that made this entry; also in the image's metadata.
    pub token: String,
    /// When the name was claimed (seconds since the epoch).
    pub created_at: u64,
    /// When the entry last changed (seconds since the epoch).
    #[serde(default)]
    pub updated_at: u64,
}

impl IndexEntry {
    /// The entry's JSON encoding (what is stored in the omap).
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// An entry as read, with its exact stored bytes for later compare-and-swap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEntry {
    /// The decoded entry.
    pub entry: IndexEntry,
    /// The stored value, byte for byte.
    pub raw: Vec<u8>,
}

/// Seconds since the epoch, now.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Handle on the index object.
#[derive(Debug)]
pub struct VolumeIndex {
    io: IoCtx,
}

fn ceph(what: impl Into<String>) -> impl FnOnce(rbd_core::Error) -> DriverError {
    let what = what.into();
    move |e| DriverError::ceph(what, e)
}

impl VolumeIndex {
    /// The index in `pool` (namespace [`INDEX_NAMESPACE`]).
    pub fn open(rados: &Rados, pool: &str) -> Result<Self> {
        let io = rados
            .ioctx(pool)
            .and_then(|io| io.with_namespace(INDEX_NAMESPACE))
            .map_err(ceph(format!(
                "opening the volume index in pool {pool} (namespace {INDEX_NAMESPACE})"
            )))?;
        Ok(Self { io })
    }

    /// `pool/namespace/object`, for messages.
    pub fn location(&self) -> String {
        format!(
            "{}/{}/{}",
            self.io.pool_name(),
            INDEX_NAMESPACE,
            INDEX_OBJECT
        )
    }

    fn decode(name: &str, raw: Vec<u8>) -> Result<StoredEntry> {
        let entry = serde_json::from_slice(&raw).map_err(|e| {
            DriverError::invalid(
                "volume index entry",
                name,
                format!("cannot be decoded ({e}): {}", String::from_utf8_lossy(&raw)),
            )
        })?;
        Ok(StoredEntry { entry, raw })
    }

    /// The entry for `name`, if any.
    pub fn get(&self, name: &str) -> Result<Option<StoredEntry>> {
        match self.io.omap_get(INDEX_OBJECT, name) {
            Ok(Some(raw)) => Self::decode(name, raw).map(Some),
            Ok(None) => Ok(None),
            Err(e) if e.kind() == rbd_core::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(DriverError::ceph(
                format!("reading volume {name} from the index {}", self.location()),
                e,
            )),
        }
    }

    /// Every entry, by name. Undecodable entries are skipped.
    pub fn list(&self) -> Result<BTreeMap<String, StoredEntry>> {
        let all = match self.io.omap_get_vals(INDEX_OBJECT, None, None, None) {
            Ok(m) => m,
            Err(e) if e.kind() == rbd_core::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => {
                return Err(DriverError::ceph(
                    format!("listing the volume index {}", self.location()),
                    e,
                ));
            }
        };
        Ok(all
            .into_iter()
            .filter_map(|(k, v)| Self::decode(&k, v).ok().map(|e| (k, e)))
            .collect())
    }

    /// Claims `name` for `entry`: inserts it only if the name is absent, atomically.
    /// `Ok(None)` when inserted; `Ok(Some(existing))` when the name was taken.
    pub fn claim(&self, name: &str, entry: &IndexEntry) -> Result<Option<StoredEntry>> {
        let raw = entry.encode();
        let inserted = self
            .io
            .omap_insert_if_absent(INDEX_OBJECT, name, &raw)
            .map_err(ceph(format!(
                "claiming volume name {name} in the index {}",
                self.location()
            )))?;
        if inserted {
            return Ok(None);
        }
        match self.get(name)? {
            Some(e) => Ok(Some(e)),
            // Removed between our insert attempt and the read: try once more.
            None => {
                let again = self
                    .io
                    .omap_insert_if_absent(INDEX_OBJECT, name, &raw)
                    .map_err(ceph(format!("claiming volume name {name}")))?;
                if again {
                    Ok(None)
                } else {
                    self.get(name)?.map_or_else(
                        || {
                            Err(DriverError::VolumeExists(format!(
                                "{name} (its index entry keeps changing)"
                            )))
                        },
                        |e| Ok(Some(e)),
                    )
                }
            }
        }
    }

    /// Replaces the entry of `name` with `new` only if it is still exactly `expected`.
    /// Returns whether it was replaced.
    pub fn replace(&self, name: &str, expected: &[u8], new: &IndexEntry) -> Result<bool> {
        match self
            .io
            .omap_compare_and_swap(INDEX_OBJECT, name, expected, &new.encode())
        {
            Ok(b) => Ok(b),
            Err(e) if e.kind() == rbd_core::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(DriverError::ceph(
                format!("updating volume {name} in the index {}", self.location()),
                e,
            )),
        }
    }

    /// Removes the entry of `name` only if it is still exactly `expected`. Returns whether
    /// it was removed.
    pub fn remove_if(&self, name: &str, expected: &[u8]) -> Result<bool> {
        let r = WriteOp::new()
            .omap_cmp(name, OmapCmpOp::Eq, expected)
            .omap_rm_keys(&[name])
            .operate(&self.io, INDEX_OBJECT);
        match r {
            Ok(()) => Ok(true),
            Err(e)
                if matches!(
                    e.kind(),
                    rbd_core::ErrorKind::ConditionFailed | rbd_core::ErrorKind::NotFound
                ) =>
            {
                Ok(false)
            }
            Err(e) => Err(DriverError::ceph(
                format!("removing volume {name} from the index {}", self.location()),
                e,
            )),
        }
    }
}
