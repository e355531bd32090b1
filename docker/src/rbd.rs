//! The real backend: [`rbd_driver::volume::Driver`] behind [`VolumeBackend`], with this
//! node's [`NodeDaemon`] running over the same driver.
//!
//! The plugin process is its node's node daemon (see `docs/cluster.md`): it answers other
//! nodes' control requests for this node (ping; "release image ID", refused while a
//! container uses the volume, naming the node and the mount IDs) and reconciles the node on
//! start, every [`PluginConfig::reconcile_interval`] and when a control watch comes back.
//! Without it, another node asking for one of this node's volumes would find nobody
//! watching and fence the mapping of a running container.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rbd_driver::DriverError;
use rbd_driver::daemon::{DaemonOptions, NodeDaemon};
use rbd_driver::mapper::CephAuth;
use rbd_driver::volume::{
    CreateSpec, Driver, DriverConfig, EntryState, Phase, VolumeDefaults, VolumeInfo,
};

use crate::backend::{VolumeBackend, VolumeEntry};
use crate::config::PluginConfig;
use crate::error::{PluginError, Result};

/// The driver's configuration from the plugin's. Checks the node-wide volume defaults, so
/// a bad default stops the plugin at start-up.
pub fn driver_config(cfg: &PluginConfig) -> Result<DriverConfig> {
    let mut d = DriverConfig::new(CephAuth {
        conf: cfg.ceph_conf.clone(),
        id: cfg.ceph_id.clone(),
        keyring: cfg.ceph_keyring.clone(),
    });
    d.node_id = cfg.node_id.clone();
    d.state_dir = cfg.state_dir.clone();
    d.mount_root = cfg.mount_root.clone();
    d.mapper.run_dir = cfg.run_dir.clone();
    d.mapper.umap_bin = cfg.umap_bin.clone();
    if let Some(b) = &cfg.rbd_nbd_bin {
        d.mapper.rbd_nbd_bin = b.clone();
    }
    d.backend = cfg.backend;
    d.timeouts = cfg.ceph_timeouts;
    d.defaults = VolumeDefaults::default()
        .with_options(&cfg.defaults)
        .map_err(PluginError::Defaults)?;
    // An operation queued behind another one on the same volume must give up before the
    // request's deadline, so that Docker gets the driver's own message ("busy") rather
    // than a bare timeout.
    let lock_budget = cfg
        .deadlines
        .write
        .saturating_sub(Duration::from_secs(5))
        .max(Duration::from_secs(1));
    d.lock_timeout = d.lock_timeout.min(lock_budget);
    // The plugin moves no data (its mappers are processes of their own, with their own
    // connections): one messenger thread serves its control traffic (index, registry,
    // watches) and keeps the idle process small (see BENCHMARKS.md, "List latency and
    // idle memory").
    d.client_options
        .push(("ms_async_op_threads".into(), "1".into()));
    // Ceph keeps the last `log_max_recent` log entries (about 1 KiB each, gathered at the
    // debug levels' second value even when nothing is written) to dump if the client
    // crashes: 500 by default for a client, half a megabyte held for good. The last 100
    // still show what led up to a crash.
    d.client_options
        .push(("log_max_recent".into(), "100".into()));
    // List and the node daemon use RADOS only: librbd (5 MiB once loaded) waits for the
    // first operation on an image (`librbd()` below).
    d.defer_librbd = true;
    Ok(d)
}

/// The node daemon's settings from the plugin's.
pub fn daemon_options(cfg: &PluginConfig) -> DaemonOptions {
    DaemonOptions {
        reconcile_interval: cfg.reconcile_interval,
        pools: cfg.serve_pools.clone(),
        ..DaemonOptions::default()
    }
}

/// [`Driver`] as the plugin's backend, and the node daemon over it.
pub struct RbdBackend {
    driver: Arc<Driver>,
    daemon: Mutex<Option<NodeDaemon>>,
}

impl RbdBackend {
    /// Connects the driver (bounded by its Ceph timeouts), recovers local state, and
    /// starts this node's daemon: it answers control requests in the default pool before
    /// this returns (an error if it cannot: then other nodes would take this node for
    /// dead), and reconciles in the background at once and every
    /// [`DaemonOptions::reconcile_interval`].
    pub fn connect(cfg: DriverConfig, opts: DaemonOptions) -> Result<RbdBackend, DriverError> {
        let driver = Arc::new(Driver::new(cfg)?);
        let daemon = NodeDaemon::start(Arc::clone(&driver), opts)?;
        let pools: Vec<String> = daemon.pools().into_keys().collect();
        tracing::info!(
            "node daemon of node {} answering control requests in pools {}",
            driver.node(),
            pools.join(", ")
        );
        let pool = &driver.config().defaults.pool;
        match driver.daemon_answers(pool) {
            Ok(true) => {}
            Ok(false) => tracing::warn!(
                "the node daemon of node {} does not answer its own ping in pool {pool} yet",
                driver.node()
            ),
            Err(e) => tracing::warn!("pinging this node's daemon in pool {pool}: {e}"),
        }
        Ok(RbdBackend {
            driver,
            daemon: Mutex::new(Some(daemon)),
        })
    }

    /// The driver.
    pub fn driver(&self) -> &Arc<Driver> {
        &self.driver
    }

    /// Runs `f` on the node daemon, if it still runs.
    pub fn with_daemon<T>(&self, f: impl FnOnce(&NodeDaemon) -> T) -> Option<T> {
        self.daemon
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(f)
    }
}

/// Loads librbd for an operation that needs it (the driver connects without it:
/// [`DriverConfig::defer_librbd`]); after the first call this only reads a flag.
fn librbd() -> Result<(), DriverError> {
    rbd_core::librbd::load().map_err(|e| DriverError::ceph("loading librbd", e))
}

fn entry(v: VolumeInfo) -> VolumeEntry {
    VolumeEntry {
        name: v.name,
        mountpoint: v.mountpoint,
        created_at: v.created_at,
        status: v.status,
    }
}

impl VolumeBackend for RbdBackend {
    /// Stops the node daemon: its control watches are removed (so other nodes see at
    /// once that nobody answers for this node), its reconcile thread ends.
    fn shutdown(&self) {
        let d = self.daemon.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(d) = d {
            tracing::info!("stopping the node daemon of node {}", self.driver.node());
            d.stop();
        }
    }

    fn create(&self, name: &str, opts: &BTreeMap<String, String>) -> Result<(), DriverError> {
        librbd()?;
        let spec = CreateSpec::from_options(opts)?;
        self.driver.create(name, &spec).map(|_| ())
    }

    fn remove(&self, name: &str) -> Result<(), DriverError> {
        librbd()?;
        self.driver.remove(name, false)
    }

    fn attach(&self, name: &str, mount_id: &str) -> Result<PathBuf, DriverError> {
        librbd()?;
        self.driver.attach(name, mount_id, None)
    }

    fn detach(&self, name: &str, mount_id: &str) -> Result<(), DriverError> {
        librbd()?;
        self.driver.detach(name, mount_id)
    }

    fn get(&self, name: &str) -> Result<VolumeEntry, DriverError> {
        librbd()?;
        self.driver.get(name).map(entry)
    }

    fn path(&self, name: &str) -> Result<Option<PathBuf>, DriverError> {
        librbd()?;
        self.driver.path(name)
    }

    /// Docker's List needs names and mountpoints only: one read of the cluster-wide name
    /// index plus the local state file, instead of opening every image. Details come with
    /// Get.
    fn list(&self) -> Result<Vec<VolumeEntry>, DriverError> {
        let index = self.driver.index().list()?;
        let state = self.driver.state_store().load()?;
        Ok(index
            .into_iter()
            .filter(|(_, e)| e.entry.state == EntryState::Ready && !e.entry.image_id.is_empty())
            .map(|(name, e)| {
                let mountpoint = state
                    .volumes
                    .get(&name)
                    .filter(|v| v.phase == Phase::Mounted)
                    .map(|v| v.mountpoint.clone());
                VolumeEntry {
                    created_at: index_time(e.entry.created_at),
                    name,
                    mountpoint,
                    status: BTreeMap::new(),
                }
            })
            .collect())
    }
}

/// An index entry's time (seconds since the epoch; 0 = unknown) as a [`SystemTime`].
fn index_time(secs: u64) -> Option<SystemTime> {
    (secs > 0).then(|| UNIX_EPOCH + Duration::from_secs(secs))
}
