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
use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rbd_driver::DriverError;
use rbd_driver::daemon::{DaemonOptions, NodeDaemon};
use rbd_driver::mapper::CephAuth;
use rbd_driver::volume::{
    CreateSpec, Driver, DriverConfig, EntryState, Phase, VolumeDefaults, VolumeInfo,
    validate_mount_id, validate_volume_name,
};

use crate::backend::{VolumeBackend, VolumeEntry};
use crate::config::PluginConfig;
use crate::error::{PluginError, Result, chain};
use crate::worker::{Answer, Op, ServePool, WorkerPool};

type PResult<T> = Result<T>;

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
    // List, Path and the node daemon use RADOS only; what opens images runs in the volume
    // worker (crate::worker), so librbd (5 MiB once loaded) never loads here.
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

/// The plugin's backend: this node's [`NodeDaemon`] and the RADOS-only calls (List,
/// Path) on a driver in this process, and the calls that open images (Create, Remove,
/// Mount, Unmount, Get) in the volume worker ([`crate::worker`]), so librbd never loads
/// here.
pub struct RbdBackend {
    driver: Arc<Driver>,
    daemon: Arc<Mutex<Option<NodeDaemon>>>,
    workers: Arc<WorkerPool>,
}

impl RbdBackend {
    /// Connects the driver (bounded by its Ceph timeouts), recovers local state, and
    /// starts this node's daemon: it answers control requests in the default pool before
    /// this returns (an error if it cannot: then other nodes would take this node for
    /// dead), and reconciles in the background at once and every
    /// [`DaemonOptions::reconcile_interval`]. Volume workers are started from
    /// `program` with `args` when calls come ([`WorkerPool`]), and exit after `worker_idle`
    /// without one.
    pub fn connect(
        cfg: DriverConfig,
        opts: DaemonOptions,
        program: PathBuf,
        args: Vec<OsString>,
        worker_idle: Duration,
    ) -> Result<RbdBackend, DriverError> {
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
        let daemon = Arc::new(Mutex::new(Some(daemon)));
        let d2 = Arc::clone(&daemon);
        let serve: ServePool = Arc::new(move |pool: &str| {
            match d2.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
                Some(d) => d.serve_pool(pool).map_err(|e| chain(&e)),
                None => Err("the node daemon is stopped (the plugin is shutting down)".into()),
            }
        });
        let workers = WorkerPool::new(program, args, worker_idle, serve);
        Ok(RbdBackend {
            driver,
            daemon,
            workers,
        })
    }

    /// The driver of this process (RADOS only: the node daemon, List, Path).
    pub fn driver(&self) -> &Arc<Driver> {
        &self.driver
    }

    /// The volume workers.
    pub fn workers(&self) -> &Arc<WorkerPool> {
        &self.workers
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

/// A driver's volume as the plugin reports it.
pub fn entry(v: VolumeInfo) -> VolumeEntry {
    VolumeEntry {
        name: v.name,
        mountpoint: v.mountpoint,
        created_at: v.created_at,
        status: v.status,
    }
}

/// Checks a volume name here, before a worker is started for it.
fn valid(name: &str) -> PResult<()> {
    validate_volume_name(name)?;
    Ok(())
}

fn unit(a: Answer) -> PResult<()> {
    match a {
        Answer::Unit => Ok(()),
        other => Err(unexpected(other)),
    }
}

fn unexpected(a: Answer) -> PluginError {
    PluginError::Worker {
        message: format!("internal error: the volume worker answered {a:?}"),
        class: crate::service::FailureKind::Other,
    }
}

impl VolumeBackend for RbdBackend {
    /// Stops the volume worker (within 2 s; it finishes its calls first) and the node
    /// daemon: its control watches are removed (so other nodes see at once that nobody
    /// answers for this node), its reconcile thread ends.
    fn shutdown(&self) {
        self.workers.shutdown(Duration::from_secs(2));
        let d = self.daemon.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(d) = d {
            tracing::info!("stopping the node daemon of node {}", self.driver.node());
            d.stop();
        }
    }

    fn create(&self, name: &str, opts: &BTreeMap<String, String>) -> PResult<()> {
        // Bad input is refused here, without starting a worker.
        valid(name)?;
        CreateSpec::from_options(opts)?;
        unit(self.workers.call(Op::Create {
            name: name.into(),
            opts: opts.clone(),
        })?)
    }

    fn remove(&self, name: &str) -> PResult<()> {
        valid(name)?;
        unit(self.workers.call(Op::Remove { name: name.into() })?)
    }

    fn attach(&self, name: &str, mount_id: &str) -> PResult<PathBuf> {
        valid(name)?;
        validate_mount_id(mount_id)?;
        match self.workers.call(Op::Attach {
            name: name.into(),
            mount_id: mount_id.into(),
        })? {
            Answer::Path(p) => Ok(p),
            other => Err(unexpected(other)),
        }
    }

    fn detach(&self, name: &str, mount_id: &str) -> PResult<()> {
        valid(name)?;
        unit(self.workers.call(Op::Detach {
            name: name.into(),
            mount_id: mount_id.into(),
        })?)
    }

    fn get(&self, name: &str) -> PResult<VolumeEntry> {
        valid(name)?;
        match self.workers.call(Op::Get { name: name.into() })? {
            Answer::Entry(e) => Ok(e.into()),
            other => Err(unexpected(other)),
        }
    }

    /// Local state only: no cluster call, no worker.
    fn path(&self, name: &str) -> PResult<Option<PathBuf>> {
        Ok(self.driver.path(name)?)
    }

    /// Docker's List needs names and mountpoints only: one read of the cluster-wide name
    /// index plus the local state file, instead of opening every image. Details come with
    /// Get.
    fn list(&self) -> PResult<Vec<VolumeEntry>> {
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
