//! The volume driver: map an RBD image to a block device, format and mount it, and keep
//! mappings consistent across nodes.
//!
//! This crate owns the mappers (kernel krbd, rbd-nbd, and a userspace FUSE+loop mapper), the
//! per-node volume lifecycle (create, attach, detach, remove with a crash-safe refcount per
//! mount ID), and the cluster-wide mapping registry that fixes the stale-mapping bug by
//! identifying mappings by image id rather than by pool/name.
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
pub mod error;
pub mod mapper;
pub mod volume;

pub use error::{DriverError, Result};
