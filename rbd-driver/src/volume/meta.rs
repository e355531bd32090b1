//! A volume's options as stored in its image's metadata (keys prefixed
//! [`META_PREFIX`]).

use std::collections::BTreeMap;

use fs_format::FsType;
use rbd_core::Image;

use crate::error::{DriverError, Result};
use crate::volume::spec::AccessMode;

/// Prefix of every metadata key the driver owns.
pub const META_PREFIX: &str = "rbd-volumes.";

/// Metadata keys (without [`META_PREFIX`]).
pub mod keys {
    /// The volume name.
    pub const NAME: &str = "name";
    /// The create token, matching the index entry.
    pub const TOKEN: &str = "token";
    /// Filesystem type to create / expect.
    pub const FSTYPE: &str = "fstype";
    /// Extra mkfs arguments (JSON array).
    pub const MKFS_OPTIONS: &str = "mkfs-options";
    /// Mount options (JSON array).
    pub const MOUNT_OPTIONS: &str = "mount-options";
    /// Default access mode (`rw`/`ro`).
    pub const ACCESS: &str = "access";
    /// Set to the filesystem type once the volume has been formatted.
    pub const FORMATTED: &str = "formatted";
    /// The node that created the volume.
    pub const CREATED_BY: &str = "created-by";
    /// For clones: the snapshot it was cloned from (`pool/[ns/]image@snap`).
    pub const SOURCE: &str = "source";
    /// For clones: `true` when this create protected the parent snapshot (so removing the
    /// last clone unprotects it again).
    pub const PROTECTED_PARENT: &str = "protected-parent";
}

/// The volume options kept in the image.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VolumeMeta {
    /// Volume name.
    pub name: Option<String>,
    /// Create token.
    pub token: Option<String>,
    /// Filesystem type.
    pub fstype: Option<FsType>,
    /// Extra mkfs arguments.
    pub mkfs_options: Vec<String>,
    /// Mount options.
    pub mount_options: Vec<String>,
    /// Default access mode.
    pub access: AccessMode,
    /// The filesystem created on it, once formatted.
    pub formatted: Option<FsType>,
    /// Creating node.
    pub created_by: Option<String>,
    /// Clone source.
    pub source: Option<String>,
    /// Whether the create protected the parent snapshot.
    pub protected_parent: bool,
}

fn key(k: &str) -> String {
    format!("{META_PREFIX}{k}")
}

impl VolumeMeta {
    /// Reads the driver's keys from the image metadata (`rbd_metadata_list`).
    pub fn read(image: &Image) -> Result<Self> {
        let all: BTreeMap<String, String> = image
            .metadata_list()
            .map_err(|e| DriverError::ceph("reading the volume's image metadata", e))?
            .into_iter()
            .filter_map(|(k, v)| k.strip_prefix(META_PREFIX).map(|k| (k.to_owned(), v)))
            .collect();
        let list = |k: &str| -> Vec<String> {
            all.get(k)
                .and_then(|v| serde_json::from_str(v).ok())
                .unwrap_or_default()
        };
        Ok(VolumeMeta {
            name: all.get(keys::NAME).cloned(),
            token: all.get(keys::TOKEN).cloned(),
            fstype: all.get(keys::FSTYPE).and_then(|v| v.parse().ok()),
            mkfs_options: list(keys::MKFS_OPTIONS),
            mount_options: list(keys::MOUNT_OPTIONS),
            access: all
                .get(keys::ACCESS)
                .and_then(|v| v.parse().ok())
                .unwrap_or_default(),
            formatted: all.get(keys::FORMATTED).and_then(|v| v.parse().ok()),
            created_by: all.get(keys::CREATED_BY).cloned(),
            source: all.get(keys::SOURCE).cloned(),
            protected_parent: all.get(keys::PROTECTED_PARENT).map(String::as_str) == Some("true"),
        })
    }

    /// Writes every set field (`rbd_metadata_set`); the token is written first, so an
    /// image carrying any of our keys also carries its token.
    pub fn write(&self, image: &Image) -> Result<()> {
        let mut pairs: Vec<(&str, String)> = Vec::new();
        if let Some(t) = &self.token {
            pairs.push((keys::TOKEN, t.clone()));
        }
        if let Some(n) = &self.name {
            pairs.push((keys::NAME, n.clone()));
        }
        if let Some(f) = self.fstype {
            pairs.push((keys::FSTYPE, f.to_string()));
        }
        pairs.push((
            keys::MKFS_OPTIONS,
            serde_json::to_string(&self.mkfs_options).unwrap_or_default(),
        ));
        pairs.push((
            keys::MOUNT_OPTIONS,
            serde_json::to_string(&self.mount_options).unwrap_or_default(),
        ));
        pairs.push((keys::ACCESS, self.access.to_string()));
        if let Some(f) = self.formatted {
            pairs.push((keys::FORMATTED, f.to_string()));
        }
        if let Some(c) = &self.created_by {
            pairs.push((keys::CREATED_BY, c.clone()));
        }
        if let Some(s) = &self.source {
            pairs.push((keys::SOURCE, s.clone()));
        }
        if self.protected_parent {
            pairs.push((keys::PROTECTED_PARENT, "true".into()));
        }
        for (k, v) in pairs {
            set(image, k, &v)?;
        }
        Ok(())
    }
}

/// Removes every key of ours except the token: a clone inherits its parent's metadata,
/// and none of the parent's volume settings (format state, source, protection) apply to
/// the clone as such. Call it after writing the clone's own token.
pub fn clear_inherited(image: &Image) -> Result<()> {
    let keys: Vec<String> = image
        .metadata_list()
        .map_err(|e| DriverError::ceph("reading the clone's inherited metadata", e))?
        .into_iter()
        .map(|(k, _)| k)
        .filter(|k| k.starts_with(META_PREFIX) && *k != key(keys::TOKEN))
        .collect();
    for k in keys {
        image
            .metadata_remove(&k)
            .map_err(|e| DriverError::ceph(format!("removing inherited metadata {k}"), e))?;
    }
    Ok(())
}

/// Sets one of the driver's keys.
pub fn set(image: &Image, k: &str, v: &str) -> Result<()> {
    image
        .metadata_set(&key(k), v)
        .map_err(|e| DriverError::ceph(format!("setting image metadata {}{k}", META_PREFIX), e))
}

/// Reads one of the driver's keys.
pub fn get(image: &Image, k: &str) -> Result<Option<String>> {
    image
        .metadata_get(&key(k))
        .map_err(|e| DriverError::ceph(format!("reading image metadata {}{k}", META_PREFIX), e))
}
