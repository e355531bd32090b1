//! The per-node volume lifecycle: create, attach, detach, remove, resize, snapshot,
//! status, and crash recovery.
//!
//! A volume named `N` is the RBD image `N` in its pool and namespace. Its options
//! (filesystem, mkfs and mount options, access mode, format state) live in the image's
//! metadata (keys prefixed `rbd-volumes.`, see [`meta`]), and a cluster-wide
//! [name index](index) maps `N` to its pool, namespace and **image id**, so volumes in
//! any pool are found by name alone and two nodes can never both create `N`.
//!
//! On a node, [`Driver`] attaches a volume by mapping it (through the
//! [`Mapper`](crate::mapper::Mapper) chosen by [`DriverConfig::backend`]), formatting
//! it if it is blank, and mounting it at `<mount_root>/<N>`. Every Docker mount ID holds
//! a reference; the last detach unmounts and unmaps. The [state file](state) records each
//! step before it runs, and [`Driver::recover`] (run by [`Driver::new`]) rolls
//! interrupted steps back or forward, so a crash at any step leaves no orphan mount,
//! mapping or reference. Mappings are always found by image id, never by name.
//!
//! Operations on one volume on one node are serialized by a per-volume lock ([`lock`]);
//! operations on different volumes run in parallel.
//!
//! # Example
//!
//! ```no_run
//! use std::collections::BTreeMap;
//! use rbd_driver::mapper::CephAuth;
//! use rbd_driver::volume::{AccessMode, CreateSpec, Driver, DriverConfig};
//!
//! let auth = CephAuth {
//!     conf: "/etc/ceph/ceph.conf".into(),
//!     id: "admin".into(),
//!     keyring: None,
//! };
//! let driver = Driver::new(DriverConfig::new(auth))?;
//!
//! // `docker volume create -d rbd -o size=2 -o fstype=xfs db1`
//! let opts = BTreeMap::from([
//!     ("size".to_string(), "2".to_string()),
//!     ("fstype".to_string(), "xfs".to_string()),
//! ]);
//! let info = driver.create("db1", &CreateSpec::from_options(&opts)?)?;
//! assert_eq!(info.size, 2 << 30);
//!
//! // Two containers share one mount; the last detach unmounts and unmaps.
//! let mp = driver.attach("db1", "container-a", None)?;
//! assert_eq!(driver.attach("db1", "container-b", Some(AccessMode::ReadOnly))?, mp);
//! driver.detach("db1", "container-a")?;
//! driver.detach("db1", "container-b")?;
//!
//! driver.snapshot("db1", "before-upgrade")?;
//! driver.resize("db1", 4 << 30)?;
//! println!("{:?}", driver.status("db1")?);
//! driver.remove("db1", true)?; // force: also removes the snapshot
//! # Ok::<(), rbd_driver::DriverError>(())
//! ```

mod attach;
mod cluster;
pub mod crash;
mod create;
mod driver;
pub mod index;
pub mod lock;
pub mod meta;
pub mod name;
mod owner;
mod recover;
mod remove;
pub mod spec;
pub mod state;

pub use attach::{AttachOptions, DetachReport};
pub use cluster::{AttachReport, AttachTimings, NodeReconcileReport, ReconcileOptions};
pub use driver::{
    ClientInfo, Driver, DriverConfig, LocalAttachment, PoolHook, VolumeInfo, VolumeStatus,
    hostname, validate_mount_id,
};
pub use index::{EntryState, IndexEntry, VolumeIndex};
pub use name::validate_volume_name;
pub use owner::OWNER_FILE;
pub use recover::{RecoveryAction, RecoveryReport};
pub use remove::{FsGrowth, RemoveOptions, RemoveReport, ResizeReport};
pub use spec::{
    AccessMode, CreateSpec, FormatAt, OPTION_KEYS, SnapshotSource, VolumeDefaults,
    parse_volume_size,
};
pub use state::{Phase, State, StateStore, VolumeState};
