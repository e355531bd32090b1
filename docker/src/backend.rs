//! What the protocol server needs from the volume driver.
//!
//! [`VolumeBackend`] mirrors the per-node volume API of `rbd_driver::volume::Driver`
//! (create, remove, attach, detach, get, path, list); the driver implements it. Every method
//! is blocking and may take as long as the Ceph cluster makes it: the server runs them on a
//! blocking pool under a deadline, so a stuck call never blocks another endpoint.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::SystemTime;

use crate::error::Result;

/// One volume as the plugin reports it to Docker.
#[derive(Debug, Clone, PartialEq)]
pub struct VolumeEntry {
    /// The volume name.
    pub name: String,
    /// Where it is mounted on this node, if it is.
    pub mountpoint: Option<PathBuf>,
    /// When the volume was created, if known.
    pub created_at: Option<SystemTime>,
    /// Details for `docker volume inspect` (pool, image, size, mappings, mount ids...).
    pub status: BTreeMap<String, serde_json::Value>,
}

/// The volume operations behind the protocol. Implementations are shared between threads.
pub trait VolumeBackend: Send + Sync + 'static {
    /// Creates volume `name` from Docker's `-o` options. Options are validated before
    /// anything is created; a bad one gives [`rbd_driver::DriverError::InvalidInput`].
    fn create(&self, name: &str, opts: &BTreeMap<String, String>) -> Result<()>;
    /// Removes volume `name` and its image. Refused while it is in use anywhere.
    fn remove(&self, name: &str) -> Result<()>;
    /// Maps and mounts `name` for `mount_id` (refcounted per id) and returns the mountpoint.
    fn attach(&self, name: &str, mount_id: &str) -> Result<PathBuf>;
    /// Drops `mount_id`'s reference; unmounts and unmaps with the last one. An unknown
    /// mount id is not an error (Docker sends Unmount after a failed Mount).
    fn detach(&self, name: &str, mount_id: &str) -> Result<()>;
    /// The volume's details. [`rbd_driver::DriverError::NoSuchVolume`] when it does not exist.
    fn get(&self, name: &str) -> Result<VolumeEntry>;
    /// Where `name` is mounted on this node, if it is.
    fn path(&self, name: &str) -> Result<Option<PathBuf>>;
    /// Every volume.
    fn list(&self) -> Result<Vec<VolumeEntry>>;
    /// Stops background work (the node daemon) at plugin shutdown; may wait for the
    /// cluster, so the caller bounds it. The default does nothing.
    fn shutdown(&self) {}
}
