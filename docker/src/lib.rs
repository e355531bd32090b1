//! `docker-volume-rbd`: a Docker volume plugin serving Ceph RBD volumes.
//!
//! This crate owns Docker's volume plugin protocol (`/Plugin.Activate` and
//! `/VolumeDriver.*`, JSON over HTTP/1.1 on a unix socket), the plugin's configuration (file,
//! environment, flags), and its packaging as a managed plugin and as a legacy socket service.
//! The volume logic itself lives in `rbd-driver`; the server talks to it through
//! [`backend::VolumeBackend`].
//!
//! - [`protocol`]: request and response bodies with Docker's field names.
//! - [`service`]: the endpoints, each bounded by a deadline.
//! - [`server`]: the socket (mode 0600, stale-socket handling, systemd activation) and the
//!   HTTP server with clean shutdown.
//! - [`config`]: defaults, config file, environment, flags.
//! - [`rbd`]: the real backend, `rbd_driver::volume::Driver` and this node's daemon.
//! - [`worker`]: the volume worker process that runs what needs librbd.
//! - [`reaper`]: reaping orphans when the plugin is PID 1 (the managed plugin).
//! - [`memory`]: handing the dead start-up stack back to the kernel.
//! - [`app`]: start-up: bind, connect the driver in the background, serve until a signal.

pub mod app;
pub mod backend;
pub mod config;
pub mod error;
pub mod memory;
pub mod protocol;
pub mod rbd;
pub mod reaper;
pub mod rfc3339;
pub mod server;
pub mod service;
pub mod worker;

pub use error::{PluginError, Result};
