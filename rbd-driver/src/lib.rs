//! The volume driver: map an RBD image to a block device, format and mount it, and keep
//! mappings consistent across nodes.
//!
//! This crate owns the mappers (kernel krbd, rbd-nbd, and a userspace FUSE+loop mapper), the
//! per-node volume lifecycle (create, attach, detach, remove with a crash-safe refcount per
//! mount ID), and the cluster-wide mapping registry that fixes the stale-mapping bug by
//! identifying mappings by image id rather than by pool/name.
//!
//! The per-node volume lifecycle is [`volume::Driver`]: Docker's create / mount /
//! unmount / remove, with a cluster-wide name index and crash recovery.
//!
//! ```no_run
//! use std::collections::BTreeMap;
//! use rbd_driver::mapper::CephAuth;
//! use rbd_driver::volume::{CreateSpec, Driver, DriverConfig};
//!
//! let driver = Driver::new(DriverConfig::new(CephAuth {
//!     conf: "/etc/ceph/ceph.conf".into(),
//!     id: "admin".into(),
//!     keyring: None,
//! }))?;
//! // `docker volume create -d rbd -o size=2 v1`, then a container mounts it.
//! let opts = BTreeMap::from([("size".to_string(), "2".to_string())]);
//! driver.create("v1", &CreateSpec::from_options(&opts)?)?;
//! let mountpoint = driver.attach("v1", "container-id", None)?;
//! println!("v1 is mounted at {}", mountpoint.display());
//! driver.detach("v1", "container-id")?; // the last reference unmounts and unmaps
//! driver.remove("v1", false)?;
//! # Ok::<(), rbd_driver::DriverError>(())
//! ```
//!
//! ```no_run
//! use rbd_driver::mapper::{self, MapperConfig};
//!
//! // Which mappings exist on this host, by image id?
//! for m in mapper::list_all(&MapperConfig::default())? {
//!     println!("{} {} id={} on {}", m.backend, m.spec(), m.image_id, m.device.display());
//! }
//! # Ok::<(), rbd_driver::DriverError>(())
//! ```

pub mod cluster;
pub mod daemon;
pub mod error;
pub mod mapper;
pub mod node_config;
pub mod volume;

pub use error::{DriverError, Result};
