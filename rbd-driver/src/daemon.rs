//! The node daemon: one per node (the Docker plugin process, or `rbdctl daemon` on hosts
//! that only use the CLI). It is what makes this node's mappings safe to share a
//! cluster with other nodes:
//!
//! * it **answers control requests** addressed to this node (`ping`, "release image ID")
//!   in every pool this node uses ([`Cluster::serve`](crate::cluster::Cluster::serve) with
//!   a [`ReleaseHandler`] backed by the [`Driver`]: an image in use, with mount IDs or an
//!   operation in progress, is refused naming them; otherwise it is unmounted, unmapped
//!   and acknowledged). A node whose daemon does not answer is taken for dead by the other
//!   nodes, and its mappings are fenced.
//! * it **reconciles** ([`Driver::reconcile`]) on start, every
//!   [`DaemonOptions::reconcile_interval`], and as soon as a control watch comes back
//!   after a partition: stale devices (image removed elsewhere, held by another node,
//!   client blocklisted, mapper gone) are cleaned, the registry is repaired, expired fence
//!   records are pruned.
//!
//! ```no_run
//! use std::sync::Arc;
//! use rbd_driver::daemon::{DaemonOptions, NodeDaemon};
//! use rbd_driver::mapper::CephAuth;
//! use rbd_driver::volume::{Driver, DriverConfig};
//!
//! let driver = Arc::new(Driver::new(DriverConfig::new(CephAuth {
//!     conf: "/etc/ceph/ceph.conf".into(),
//!     id: "admin".into(),
//!     keyring: None,
//! }))?);
//! let daemon = NodeDaemon::start(driver.clone(), DaemonOptions::default())?;
//! // ... serve Docker's requests with `driver` ...
//! println!("{:?}", daemon.last_report());
//! daemon.stop();
//! # Ok::<(), rbd_driver::DriverError>(())
//! ```

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::cluster::{ControlServer, NodeId, ReleaseHandler, ReleaseOutcome, ReleaseRequest};
use crate::error::{DriverError, Result};
use crate::volume::{Driver, NodeReconcileReport, ReconcileOptions};

/// Settings of a [`NodeDaemon`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaemonOptions {
    /// How often the node is reconciled (also on start, and when a control watch comes
    /// back). Default 30 s.
    pub reconcile_interval: Duration,
    /// Pools to answer control requests in, besides [`Driver::served_pools`] (the default
    /// pool, the pools of this node's attachments and of the volume index, refreshed at
    /// every reconcile).
    pub pools: Vec<String>,
    /// Remove expired fence records at each reconcile. Default true.
    pub prune_fences: bool,
}

impl Default for DaemonOptions {
    fn default() -> Self {
        Self {
            reconcile_interval: Duration::from_secs(30),
            pools: Vec::new(),
            prune_fences: true,
        }
    }
}

/// The [`ReleaseHandler`] of a node: [`Driver::release_for`].
pub struct DriverReleaseHandler(pub Arc<Driver>);

impl ReleaseHandler for DriverReleaseHandler {
    fn release(&self, req: &ReleaseRequest) -> ReleaseOutcome {
        let t0 = Instant::now();
        let out = self.0.release_for(req);
        tracing::info!(
            node = %self.0.node(),
            from = %req.from,
            "release of {} (force {}): {out:?} in {:?}",
            req.image,
            req.force,
            t0.elapsed()
        );
        out
    }
}

struct Inner {
    driver: Arc<Driver>,
    opts: DaemonOptions,
    handler: Arc<dyn ReleaseHandler>,
    servers: Mutex<BTreeMap<String, ControlServer>>,
    stop: AtomicBool,
    /// Set to wake the loop for a reconcile now.
    wake: Mutex<bool>,
    cv: Condvar,
    /// One reconcile at a time.
    running: Mutex<()>,
    last: Mutex<Option<NodeReconcileReport>>,
    last_error: Mutex<Option<String>>,
    runs: AtomicU64,
    done: Condvar,
    done_lock: Mutex<()>,
}

impl Inner {
    /// Starts answering control requests in `pool` if not yet.
    fn serve(&self, pool: &str) -> Result<()> {
        let mut servers = self.servers.lock().unwrap_or_else(|p| p.into_inner());
        if servers.contains_key(pool) {
            return Ok(());
        }
        let s = self.driver.cluster().serve(pool, self.handler.clone())?;
        tracing::info!(node = %self.driver.node(), "answering control requests in pool {pool}");
        servers.insert(pool.to_owned(), s);
        Ok(())
    }

    fn watching(&self) -> BTreeMap<String, bool> {
        self.servers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(p, s)| (p.clone(), s.is_watching()))
            .collect()
    }

    fn reconcile(&self, dry_run: bool) -> Result<NodeReconcileReport> {
        let _one = self.running.lock().unwrap_or_else(|p| p.into_inner());
        if !dry_run {
            // Pools that appeared since (new volumes in another pool).
            match self.driver.served_pools() {
                Ok(pools) => {
                    for p in pools.iter().chain(self.opts.pools.iter()) {
                        if let Err(e) = self.serve(p) {
                            tracing::warn!(node = %self.driver.node(), "pool {p}: {e}");
                        }
                    }
                }
                Err(e) => tracing::warn!(node = %self.driver.node(), "listing pools: {e}"),
            }
        }
        let r = self.driver.reconcile(&ReconcileOptions {
            dry_run,
            prune_fences: self.opts.prune_fences && !dry_run,
            pools: self.opts.pools.clone(),
        });
        if !dry_run {
            match &r {
                Ok(rep) => {
                    *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some(rep.clone());
                    *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = None;
                }
                Err(e) => {
                    tracing::warn!(node = %self.driver.node(), "reconcile failed (retried): {e}");
                    *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) =
                        Some(e.to_string());
                }
            }
            self.runs.fetch_add(1, Ordering::SeqCst);
            let _g = self.done_lock.lock().unwrap_or_else(|p| p.into_inner());
            self.done.notify_all();
        }
        r
    }

    fn run(self: Arc<Self>) {
        let mut seen = self.watching();
        let mut next = Instant::now(); // a reconcile on start
        while !self.stop.load(Ordering::SeqCst) {
            let now = Instant::now();
            let mut due = now >= next;
            {
                let mut w = self.wake.lock().unwrap_or_else(|p| p.into_inner());
                if *w {
                    *w = false;
                    due = true;
                }
            }
            // A control watch that came back (after a partition): reconcile at once.
            let watching = self.watching();
            for (pool, on) in &watching {
                if *on && seen.get(pool) == Some(&false) {
                    tracing::info!(
                        node = %self.driver.node(),
                        "the control watch of pool {pool} is back; reconciling"
                    );
                    due = true;
                }
            }
            seen = watching;
            if due {
                let _ = self.reconcile(false);
                next = Instant::now() + self.opts.reconcile_interval;
                continue;
            }
            let wait = next
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(250));
            let g = self.wake.lock().unwrap_or_else(|p| p.into_inner());
            if !*g {
                let _ = self.cv.wait_timeout(g, wait);
            }
        }
    }
}

/// A running node daemon (see the [module docs](self)). Stopped by [`NodeDaemon::stop`]
/// or on drop: its control servers unwatch, its reconcile thread ends.
pub struct NodeDaemon {
    inner: Arc<Inner>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for NodeDaemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeDaemon")
            .field("node", self.node())
            .field("pools", &self.inner.watching())
            .finish_non_exhaustive()
    }
}

impl NodeDaemon {
    /// Starts the daemon for `driver`'s node: answers control requests in the default
    /// pool (an error if that fails) and in every other pool this node uses (failures
    /// are logged and retried at each reconcile), then reconciles in the background at
    /// once and every [`DaemonOptions::reconcile_interval`]. Returns once the default
    /// pool is served; [`NodeDaemon::wait_for_reconcile`] waits for the first reconcile.
    ///
    /// While it runs, an attach in a pool not served yet starts serving it first (through
    /// a hook in `driver`). Run one daemon per node.
    pub fn start(driver: Arc<Driver>, opts: DaemonOptions) -> Result<NodeDaemon> {
        let handler: Arc<dyn ReleaseHandler> = Arc::new(DriverReleaseHandler(driver.clone()));
        let inner = Arc::new(Inner {
            driver: driver.clone(),
            opts,
            handler,
            servers: Mutex::new(BTreeMap::new()),
            stop: AtomicBool::new(false),
            wake: Mutex::new(false),
            cv: Condvar::new(),
            running: Mutex::new(()),
            last: Mutex::new(None),
            last_error: Mutex::new(None),
            runs: AtomicU64::new(0),
            done: Condvar::new(),
            done_lock: Mutex::new(()),
        });
        inner.serve(&driver.config().defaults.pool)?;
        let mut pools: Vec<String> = inner.opts.pools.clone();
        match driver.served_pools() {
            Ok(p) => pools.extend(p),
            Err(e) => tracing::warn!(node = %driver.node(), "listing pools: {e}"),
        }
        for p in pools {
            if let Err(e) = inner.serve(&p) {
                tracing::warn!(node = %driver.node(), "pool {p}: {e}");
            }
        }
        let weak: Weak<Inner> = Arc::downgrade(&inner);
        driver.set_pool_hook(Some(Box::new(move |pool: &str| match weak.upgrade() {
            Some(i) => i.serve(pool),
            None => Ok(()),
        })));
        let i2 = inner.clone();
        let thread = std::thread::Builder::new()
            .name("rbd-node-daemon".into())
            .spawn(move || i2.run())
            .map_err(|e| DriverError::io("starting the node daemon thread", e))?;
        Ok(NodeDaemon {
            inner,
            thread: Some(thread),
        })
    }

    /// This node.
    pub fn node(&self) -> &NodeId {
        self.inner.driver.node()
    }

    /// The driver.
    pub fn driver(&self) -> &Arc<Driver> {
        &self.inner.driver
    }

    /// Starts answering control requests in `pool` (watching its control object) unless
    /// it does already. The driver's pool hook calls this before this node registers an
    /// image in a pool ([`Driver::set_pool_hook`]); a process running volume operations
    /// for this daemon's node elsewhere asks for the same.
    pub fn serve_pool(&self, pool: &str) -> Result<()> {
        self.inner.serve(pool)
    }

    /// The pools answered in, and whether each control watch is established now.
    pub fn pools(&self) -> BTreeMap<String, bool> {
        self.inner.watching()
    }

    /// True when every control watch is established.
    pub fn is_watching(&self) -> bool {
        self.inner.watching().values().all(|w| *w)
    }

    /// Reconciles now, in this thread (serialized with the background reconciles), and
    /// returns the report. With `dry_run` nothing is changed.
    pub fn reconcile_now(&self, dry_run: bool) -> Result<NodeReconcileReport> {
        self.inner.reconcile(dry_run)
    }

    /// Wakes the background loop for a reconcile now (returns at once).
    pub fn trigger(&self) {
        *self.inner.wake.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.inner.cv.notify_all();
    }

    /// How many (non-dry-run) reconciles have finished.
    pub fn reconcile_count(&self) -> u64 {
        self.inner.runs.load(Ordering::SeqCst)
    }

    /// The report of the last finished reconcile.
    pub fn last_report(&self) -> Option<NodeReconcileReport> {
        self.inner
            .last
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Why the last reconcile failed, if it did.
    pub fn last_error(&self) -> Option<String> {
        self.inner
            .last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Waits until more than `after` reconciles have finished (or `timeout` passed) and
    /// returns the count.
    pub fn wait_for_reconcile(&self, after: u64, timeout: Duration) -> u64 {
        let deadline = Instant::now() + timeout;
        let mut g = self
            .inner
            .done_lock
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        loop {
            let n = self.reconcile_count();
            if n > after {
                return n;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return n;
            }
            g = self
                .inner
                .done
                .wait_timeout(g, left.min(Duration::from_millis(200)))
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
    }

    /// Stops answering and reconciling.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.inner.stop.store(true, Ordering::SeqCst);
        self.inner.cv.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.inner.driver.set_pool_hook(None);
        let servers =
            std::mem::take(&mut *self.inner.servers.lock().unwrap_or_else(|p| p.into_inner()));
        for (_, s) in servers {
            s.stop();
        }
    }
}

impl Drop for NodeDaemon {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Set by SIGTERM or SIGINT once [`stop_on_signals`] has run.
static STOP_REQUESTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop_signal(_: libc::c_int) {
    STOP_REQUESTED.store(true, Ordering::SeqCst);
}

/// Makes SIGTERM and SIGINT request a stop instead of killing the process, for a
/// foreground daemon loop (`rbdctl daemon`, the test agents) that polls
/// [`stop_requested`] and then shuts its [`NodeDaemon`] down in order. Implements
/// `sigaction(2)` for both signals.
pub fn stop_on_signals() -> std::io::Result<()> {
    use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
    let action = SigAction::new(
        SigHandler::Handler(on_stop_signal),
        SaFlags::empty(),
        SigSet::empty(),
    );
    for sig in [Signal::SIGTERM, Signal::SIGINT] {
        // SAFETY: the handler only stores to a static atomic, which is async-signal-safe;
        // the callers are a process's main loop, which owns its signal disposition.
        unsafe { sigaction(sig, &action) }.map_err(std::io::Error::from)?;
    }
    Ok(())
}

/// True once SIGTERM or SIGINT arrived after [`stop_on_signals`].
pub fn stop_requested() -> bool {
    STOP_REQUESTED.load(Ordering::SeqCst)
}
