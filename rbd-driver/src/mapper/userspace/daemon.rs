//! The mapper process (`rbd-umap serve`): serves one image as a FUSE file with a loop
//! device on it, until it is told to stop, its client is fenced, or its device goes away.
//!
//! **Start** ([`serve`]): connect as the request's client (conf, id and keyring *paths*,
//! never a key), open the image **by id** (read-only for read-only and snapshot maps),
//! take the exclusive lock when asked, mount the FUSE file at `<run_dir>/umap/<token>/`,
//! attach a loop device on `<token>/image` with direct I/O and autoclear, write the
//! [`Record`], then report [`Readiness`] on the readiness pipe, one JSON line.
//!
//! **Run**: FUSE requests are served concurrently by a tokio runtime; every I/O has the
//! request's deadline ([`MapOptions::io_timeout_secs`](crate::mapper::MapOptions), default
//! [`DEFAULT_IO_TIMEOUT_SECS`]). A watchdog checks, every few seconds, that our client
//! address is not on the OSD blocklist (a bounded mon command), that the loop device is
//! still bound to our file and that the FUSE session is alive, and follows image resizes
//! (`LOOP_SET_CAPACITY`).
//!
//! **Stop**:
//! - `SIGTERM`/`SIGINT` (unmap): detach the loop device (deferred by the kernel while
//!   someone has it open: we keep serving until they close it), unmount FUSE, release the
//!   lock, close the image, remove the record, exit 0.
//! - `SIGUSR1` (forced unmap): fail every pending and new I/O with `EIO` first, then the
//!   same without waiting for the device's users.
//! - Blocklisted (an I/O failed with `Blocklisted`, or the watchdog saw our address on
//!   the blocklist): like a forced unmap, exit status [`exit::BLOCKLISTED`].
//! - The cluster unreachable: when I/O has been failing for want of an answer (deadline
//!   passed, timed out, session lost) with no I/O succeeding for longer than
//!   [`MapOptions::give_up_after_secs`](crate::mapper::MapOptions) (default
//!   [`DEFAULT_GIVE_UP_AFTER_SECS`]), measured from the submission of the oldest failed
//!   I/O: like a forced unmap, exit status [`exit::UNREACHABLE`], and the log says why.
//!   Meanwhile the watchdog probes the image (one small read at a time), so a cluster
//!   that comes back while the device is idle clears the count.
//! - Killed with `SIGKILL`: the kernel aborts the FUSE connection when our `/dev/fuse`
//!   descriptors close, so I/O on the loop device fails with `EIO`; the loop device
//!   (autoclear) detaches once its last user closes it. The mount point and record are
//!   left for [`UserspaceMapper::unmap`](super::UserspaceMapper) with `force` to clean.
//!
//! Every step that talks to Ceph during teardown runs with a deadline, so a fenced or
//! unreachable cluster cannot keep the process alive. The outcome goes to the log (the
//! process's stderr, `<token>.log`) and to `<token>.exit.json` ([`ExitReport`]).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use rbd_core::{ConnectOptions, EntityAddr, Image, OpenOptions, Rados, Timeouts};
use serde::{Deserialize, Serialize};

use super::fusefs::{self, ImageFs, Shared};
use super::procinfo;
use super::rbd_backend::RbdBackend;
use super::record::{self, ExitReport, Paths, RECORD_VERSION, Record};
use crate::mapper::loopdev::{self, AttachOptions, LoopDevice};
use crate::mapper::{MapRequest, Mapping};

/// Exit statuses of `rbd-umap serve`.
pub mod exit {
    /// Unmapped cleanly.
    pub const OK: i32 = 0;
    /// The mapping could not be made (reported on the readiness pipe).
    pub const MAP_FAILED: i32 = 1;
    /// Bad command line or request.
    pub const USAGE: i32 = 2;
    /// Unmapped, but a teardown step failed (see the log and the exit report).
    pub const TEARDOWN_FAILED: i32 = 3;
    /// Our client was blocklisted: all I/O failed with `EIO`, the mapping was torn down.
    pub const BLOCKLISTED: i32 = 4;
    /// The FUSE session or the loop device went away underneath us.
    pub const LOST: i32 = 5;
    /// The cluster did not answer for longer than the give-up bound: all I/O failed
    /// with `EIO`, the mapping was torn down.
    pub const UNREACHABLE: i32 = 6;
}

/// Default per-I/O deadline.
pub const DEFAULT_IO_TIMEOUT_SECS: u32 = 30;
/// Default give-up bound: seconds of failing I/O, without any success, after which the
/// mapper gives up (see [`MapOptions::give_up_after_secs`](crate::mapper::MapOptions)).
pub const DEFAULT_GIVE_UP_AFTER_SECS: u32 = 120;
/// Default watchdog period ceiling (the period is half the I/O timeout, 1 s to this).
pub const DEFAULT_CHECK_INTERVAL: Duration = Duration::from_secs(5);

/// What the parent sends on the mapper's stdin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServeRequest {
    /// What to map.
    pub request: MapRequest,
    /// `MapperConfig::run_dir`.
    pub run_dir: PathBuf,
    /// Names this mapping's files (see [`record`]).
    pub token: String,
    /// Watchdog period in milliseconds (default: half the I/O timeout, 1 to 5 s).
    #[serde(default)]
    pub check_interval_ms: Option<u64>,
}

/// The one line the mapper writes on its readiness pipe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "lowercase")]
pub enum Readiness {
    /// The loop device exists and the record is written.
    Ready {
        /// The mapping.
        mapping: Mapping,
        /// Its record file.
        record: PathBuf,
    },
    /// The mapping could not be made; everything made so far was undone.
    Failed {
        /// Why.
        error: String,
    },
}

/// Writes one log line to stderr (the mapping's log file).
macro_rules! log {
    ($($arg:tt)*) => {
        log_line(&format!($($arg)*))
    };
}

fn log_line(msg: &str) {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    eprintln!(
        "{}.{:03} rbd-umap[{}]: {msg}",
        now.as_secs(),
        now.subsec_millis(),
        std::process::id()
    );
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Why the mapper stops.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Stop {
    Unmap,
    Force,
    Fenced(String),
    Lost(String),
    Unreachable(String),
}

impl Stop {
    fn describe(&self) -> String {
        match self {
            Stop::Unmap => "unmap".into(),
            Stop::Force => "forced unmap".into(),
            Stop::Fenced(why) | Stop::Lost(why) | Stop::Unreachable(why) => why.clone(),
        }
    }

    /// The cluster cannot be talked to (fenced, or not answering): teardown does not
    /// wait for it and does not report its failures.
    fn cluster_gone(&self) -> bool {
        matches!(self, Stop::Fenced(_) | Stop::Unreachable(_))
    }
}

/// The signals the mapper obeys, registered before anything is set up: one that arrives
/// during the map is kept for the main loop, instead of killing the process half-made.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    usr1: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    /// Registers the handlers; needs the runtime's context.
    fn register() -> std::io::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            usr1: signal(SignalKind::user_defined1())?,
            hup: signal(SignalKind::hangup())?,
        })
    }
}

/// What has been set up so far; torn down in reverse.
struct Mapper {
    paths: Paths,
    rados: Option<Rados>,
    image: Option<Arc<Image>>,
    backend: Option<Arc<RbdBackend>>,
    shared: Option<Arc<Shared>>,
    session: Option<fuser::BackgroundSession>,
    mounted: bool,
    dev: Option<LoopDevice>,
    /// The identity of `dev`'s binding to the FUSE file.
    backing: Option<loopdev::BindingId>,
    record_written: bool,
    locked: bool,
    addr: Option<EntityAddr>,
    teardown_timeout: Duration,
}

/// Runs `f` on a helper thread and gives up on it after `timeout`.
fn bounded<T: Send + 'static>(
    what: &str,
    timeout: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, String> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    std::thread::Builder::new()
        .name("rbd-umap:bounded".into())
        .spawn(move || {
            let _ = tx.send(f());
        })
        .map_err(|e| format!("{what}: cannot start a thread: {e}"))?;
    rx.recv_timeout(timeout)
        .map_err(|_| format!("{what} did not finish within {} s", timeout.as_secs()))
}

/// Maps, serves and unmaps; returns the exit status. `ready` gets one [`Readiness`] line
/// and is closed once the mapping exists (or failed).
pub fn serve(req: ServeRequest, ready: Box<dyn Write + Send>) -> i32 {
    let mut ready = Some(ready);
    let mut report = |r: &Readiness| {
        if let Some(mut w) = ready.take() {
            let line = serde_json::to_string(r).unwrap_or_else(|e| {
                format!(r#"{{"status":"failed","error":"encoding readiness: {e}"}}"#)
            });
            let _ = writeln!(w, "{line}").and_then(|()| w.flush());
        }
    };
    if !record::valid_token(&req.token) {
        report(&Readiness::Failed {
            error: format!("invalid token {:?}", req.token),
        });
        return exit::USAGE;
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("rbd-umap:rt")
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            report(&Readiness::Failed {
                error: format!("starting the I/O runtime: {e}"),
            });
            return exit::MAP_FAILED;
        }
    };
    let signals = {
        let _in_rt = rt.enter();
        match Signals::register() {
            Ok(s) => s,
            Err(e) => {
                report(&Readiness::Failed {
                    error: format!("installing signal handlers: {e}"),
                });
                return exit::MAP_FAILED;
            }
        }
    };
    let io_timeout = req
        .request
        .options
        .io_timeout_secs
        .unwrap_or(DEFAULT_IO_TIMEOUT_SECS)
        .max(1);
    let give_up = match req
        .request
        .options
        .give_up_after_secs
        .unwrap_or(DEFAULT_GIVE_UP_AFTER_SECS)
    {
        0 => None,
        n => Some(Duration::from_secs(u64::from(n))),
    };
    let forced = Arc::new(AtomicBool::new(false));
    // Resolve symlinks: the kernel names mount points and loop backing files that way.
    let _ = record::ensure_dir(&req.run_dir);
    let run_dir = std::fs::canonicalize(&req.run_dir).unwrap_or_else(|_| req.run_dir.clone());
    let mut m = Mapper {
        paths: Paths::new(&run_dir, &req.token),
        rados: None,
        image: None,
        backend: None,
        shared: None,
        session: None,
        mounted: false,
        dev: None,
        backing: None,
        record_written: false,
        locked: false,
        addr: None,
        teardown_timeout: Duration::from_secs(u64::from(io_timeout).clamp(5, 30)),
    };
    log!(
        "mapping {} (image id {}) {}",
        req.request.spec(),
        req.request.image_id,
        if req.request.read_only || req.request.snap.is_some() {
            "read-only"
        } else {
            "read-write"
        }
    );
    let mapping = match m.setup(&req, io_timeout) {
        Ok(mapping) => mapping,
        Err(e) => {
            log!("map failed: {e}");
            let errors = m.teardown(&Stop::Force, &forced);
            for e in &errors {
                log!("cleanup after the failed map: {e}");
            }
            report(&Readiness::Failed { error: e });
            return exit::MAP_FAILED;
        }
    };
    log!(
        "mapped {} on {} (client {}, I/O timeout {io_timeout} s, {})",
        mapping.spec(),
        mapping.device.display(),
        m.addr.map(|a| a.to_string()).unwrap_or_else(|| "?".into()),
        match give_up {
            Some(d) => format!("gives up after {} s without cluster I/O", d.as_secs()),
            None => "never gives up".into(),
        }
    );
    report(&Readiness::Ready {
        mapping,
        record: m.paths.record(),
    });
    // Split the device's requests where FUSE splits them (max_write), so that each loop
    // request is one FUSE request and one librbd request. Writing max_sectors_kb freezes
    // the queue (tens of ms), so it happens after readiness; until then requests are
    // merely split differently.
    if let Some(dev) = &m.dev
        && let Err(e) = dev.set_max_request_kb(fusefs::MAX_WRITE / 1024)
    {
        log!("note: {}", super::chain(&e));
    }

    let interval = req
        .check_interval_ms
        .map(Duration::from_millis)
        .unwrap_or_else(|| {
            (Duration::from_secs(u64::from(io_timeout)) / 2)
                .clamp(Duration::from_secs(1), DEFAULT_CHECK_INTERVAL)
        })
        .max(Duration::from_millis(100));
    let stop = rt.block_on(m.run(interval, give_up, signals, forced.clone()));
    log!("stopping: {}", stop.describe());
    let errors = m.teardown(&stop, &forced);
    for e in &errors {
        log!("teardown: {e}");
    }
    let code = match (&stop, errors.is_empty()) {
        (Stop::Fenced(_), _) => exit::BLOCKLISTED,
        (Stop::Lost(_), _) => exit::LOST,
        (Stop::Unreachable(_), _) => exit::UNREACHABLE,
        (_, true) => exit::OK,
        (_, false) => exit::TEARDOWN_FAILED,
    };
    if let Some(s) = &m.shared {
        let st = &s.stats;
        log!(
            "I/O: {} reads ({} bytes), {} writes ({} bytes), {} flushes, {} errors, {} timeouts",
            st.reads.load(Ordering::Relaxed),
            st.bytes_read.load(Ordering::Relaxed),
            st.writes.load(Ordering::Relaxed),
            st.bytes_written.load(Ordering::Relaxed),
            st.flushes.load(Ordering::Relaxed),
            st.errors.load(Ordering::Relaxed),
            st.timeouts.load(Ordering::Relaxed),
        );
    }
    let _ = record::write_json(
        &m.paths.exit(),
        &ExitReport {
            token: req.token.clone(),
            pid: std::process::id(),
            code,
            reason: stop.describe(),
            errors,
        },
    );
    log!("exit {code}");
    // Do not wait for librados or the runtime's tasks (a fenced client's I/O may never
    // complete): everything that matters is done.
    rt.shutdown_timeout(Duration::from_millis(100));
    code
}

impl Mapper {
    fn setup(&mut self, req: &ServeRequest, io_timeout: u32) -> Result<Mapping, String> {
        let r = &req.request;
        let t0 = Instant::now();
        let mut steps: Vec<(&str, Duration)> = Vec::new();
        let mark = |what, steps: &mut Vec<(&str, Duration)>| steps.push((what, t0.elapsed()));
        if r.image_id.is_empty() {
            return Err("no image id given: mappings are made by image id".into());
        }
        let read_only = r.read_only || r.snap.is_some();
        record::ensure_dir(&req.run_dir).map_err(|e| e.to_string())?;
        let mnt = self.paths.mountpoint();
        {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(&mnt)
                .map_err(|e| format!("creating the mount point {}: {e}", mnt.display()))?;
        }

        // Connect and open by id.
        let id = r.auth.id.strip_prefix("client.").unwrap_or(&r.auth.id);
        let mut opts = ConnectOptions::new()
            .conf_file(&r.auth.conf)
            .id(id)
            .timeouts(Timeouts {
                mon_op: Duration::from_secs(10),
                osd_op: Duration::from_secs(u64::from(io_timeout)),
                mount: Duration::from_secs(10),
            })
            .option("admin_socket", self.paths.asok().to_string_lossy());
        if let Some(k) = &r.auth.keyring {
            opts = opts.keyring(k);
        }
        let rados = Rados::connect(&opts)
            .map_err(|e| format!("connecting to the cluster as client.{id}: {e}"))?;
        mark("connect", &mut steps);
        self.addr = rados.getaddrs().ok().and_then(|v| v.primary().copied());
        self.rados = Some(rados.clone());
        let mut io = rados
            .ioctx(&r.pool)
            .map_err(|e| format!("opening pool {}: {e}", r.pool))?;
        if !r.namespace.is_empty() {
            io.set_namespace(&r.namespace)
                .map_err(|e| format!("using namespace {}: {e}", r.namespace))?;
        }
        let mut oo = OpenOptions::new().read_only(read_only);
        if let Some(s) = &r.snap {
            oo = oo.snapshot(s);
        }
        let image = Image::open_by_id(&io, &r.image_id, &oo)
            .map_err(|e| format!("opening image id {} ({}): {e}", r.image_id, r.spec()))?;
        mark("open", &mut steps);
        let name = image.name().unwrap_or_else(|_| r.image.clone());
        if name != r.image {
            log!(
                "note: image id {} is now named {name:?}, not {:?}; serving it by id",
                r.image_id,
                r.image
            );
        }
        if r.exclusive && !read_only {
            image
                .lock_acquire(rbd_core::rbd::LockMode::Exclusive)
                .map_err(|e| format!("taking the exclusive lock: {e}"))?;
            self.locked = true;
        }
        let size = image.size().map_err(|e| format!("reading the size: {e}"))?;
        let image = Arc::new(image);
        self.image = Some(image.clone());

        // FUSE.
        let shared = Shared::new(size, Duration::from_secs(u64::from(io_timeout)));
        self.shared = Some(shared.clone());
        let backend = Arc::new(RbdBackend::new(image));
        self.backend = Some(backend.clone());
        let fs = ImageFs::new(backend, shared, read_only);
        let fsname: String = format!("rbd-umap:{}", r.spec())
            .chars()
            .map(|c| {
                if c.is_whitespace() || c == ',' {
                    '_'
                } else {
                    c
                }
            })
            .collect();
        let mut cfg = fuser::Config::default();
        cfg.mount_options = vec![
            fuser::MountOption::FSName(fsname),
            fuser::MountOption::Subtype("rbd-umap".into()),
            fuser::MountOption::NoAtime,
            fuser::MountOption::NoExec,
            fuser::MountOption::NoSuid,
            fuser::MountOption::NoDev,
        ];
        if read_only {
            cfg.mount_options.push(fuser::MountOption::RO);
        }
        cfg.n_threads = Some(2);
        cfg.clone_fd = true;
        let session = fuser::Session::new(fs, &mnt, &cfg)
            .map_err(|e| format!("mounting FUSE at {}: {e}", mnt.display()))?;
        self.mounted = true;
        self.session = Some(
            session
                .spawn()
                .map_err(|e| format!("starting the FUSE session: {e}"))?,
        );

        mark("fuse", &mut steps);
        // Loop device.
        let file_path = self.paths.fuse_file();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(&file_path)
            .map_err(|e| format!("opening {}: {e}", file_path.display()))?;
        let dev = LoopDevice::attach_file(
            &file,
            &file_path,
            &AttachOptions {
                read_only,
                direct_io: true,
                require_direct_io: true,
                autoclear: true,
                block_size: 0,
            },
        )
        .map_err(|e| super::chain(&e))?;
        drop(file);
        let device = dev.path();
        let backing = dev.binding_id();
        self.backing = backing;
        self.dev = Some(dev);

        let me = std::process::id();
        let rec = Record {
            version: RECORD_VERSION,
            token: req.token.clone(),
            pool: r.pool.clone(),
            namespace: r.namespace.clone(),
            image: name,
            image_id: r.image_id.clone(),
            snap: r.snap.clone(),
            read_only,
            exclusive: self.locked,
            device,
            pid: me,
            start_time: procinfo::start_time(me).unwrap_or(0),
            client_addr: self.addr,
            mountpoint: mnt,
            fuse_file: file_path,
            backing,
            size,
            io_timeout_secs: io_timeout,
            created: unix_now(),
        };
        mark("loop", &mut steps);
        record::write_json(&self.paths.record(), &rec).map_err(|e| super::chain(&e))?;
        self.record_written = true;
        log!(
            "set up in {} ms ({})",
            t0.elapsed().as_millis(),
            steps
                .iter()
                .map(|(w, d)| format!("{w} at {} ms", d.as_millis()))
                .collect::<Vec<_>>()
                .join(", ")
        );
        Ok(rec.mapping(Some(me)))
    }

    /// Serves until something says stop.
    async fn run(
        &mut self,
        interval: Duration,
        give_up: Option<Duration>,
        signals: Signals,
        forced: Arc<AtomicBool>,
    ) -> Stop {
        let shared = self.shared.clone().expect("set up");
        let probing = Arc::new(AtomicBool::new(false));
        let Signals {
            mut term,
            mut int,
            mut usr1,
            mut hup,
        } = signals;
        // Signals go to a task of their own that lives until the process exits, so a
        // SIGUSR1 during a graceful teardown still turns it into a forced one.
        let (stop_tx, mut stop_rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                let stop = tokio::select! {
                    _ = term.recv() => Stop::Unmap,
                    _ = int.recv() => Stop::Unmap,
                    _ = usr1.recv() => {
                        forced.store(true, Ordering::SeqCst);
                        Stop::Force
                    }
                    _ = hup.recv() => {
                        log!("SIGHUP ignored");
                        continue;
                    }
                };
                let _ = stop_tx.send(stop);
            }
        });
        // Blocklist watch: its own task, so a slow mon never delays the signals.
        if let (Some(rados), Some(addr)) = (self.rados.clone(), self.addr) {
            let shared = shared.clone();
            tokio::spawn(async move {
                let mut warned = false;
                loop {
                    tokio::time::sleep(interval).await;
                    let r = rados.clone();
                    let check = tokio::task::spawn_blocking(move || {
                        r.blocklist_ls().map(|l| l.iter().any(|e| fences(e, &addr)))
                    });
                    match tokio::time::timeout(Duration::from_secs(15), check).await {
                        Ok(Ok(Ok(true))) => {
                            shared.fence(format!(
                                "blocklisted: our client address {addr} is on the OSD blocklist"
                            ));
                            return;
                        }
                        Ok(Ok(Err(e))) if e.kind() == rbd_core::ErrorKind::Blocklisted => {
                            shared.fence(format!("blocklisted: {e}"));
                            return;
                        }
                        Ok(Ok(Ok(false))) => warned = false,
                        other => {
                            if !warned {
                                log!("blocklist check failed (will retry): {other:?}");
                                warned = true;
                            }
                        }
                    }
                }
            });
        }
        let mut fence = shared.subscribe();
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                stop = stop_rx.recv() => return stop.unwrap_or(Stop::Unmap),
                r = fence.wait_for(Option::is_some) => {
                    let why = r.ok().and_then(|v| v.clone()).unwrap_or_else(|| "fenced".into());
                    return Stop::Fenced(why);
                }
                _ = tick.tick() => {
                    if let Some(stop) = self.check().await {
                        return stop;
                    }
                    if let Some(stop) = self.check_reachable(give_up, &probing) {
                        return stop;
                    }
                }
            }
        }
    }

    /// Gives up once I/O has failed for want of the cluster, with no success, for longer
    /// than `give_up`; until then, probes the image while stalled (one read at a time).
    fn check_reachable(
        &self,
        give_up: Option<Duration>,
        probing: &Arc<AtomicBool>,
    ) -> Option<Stop> {
        let shared = self.shared.as_ref()?;
        let stalled = shared.stalled_for(Instant::now())?;
        if let Some(limit) = give_up
            && stalled >= limit
        {
            let why = format!(
                "unreachable: no I/O reached the cluster for {} s (give-up limit {} s); \
                 failing all I/O with EIO",
                stalled.as_secs(),
                limit.as_secs()
            );
            shared.fence(why.clone());
            return Some(Stop::Unreachable(why));
        }
        if let Some(backend) = &self.backend
            && !probing.swap(true, Ordering::SeqCst)
        {
            let flag = probing.clone();
            shared.probe(backend.as_ref(), move |ok| {
                if ok {
                    log_line("the cluster answers again");
                }
                flag.store(false, Ordering::SeqCst);
            });
        }
        None
    }

    /// The watchdog's local checks: session alive, loop still ours, size.
    async fn check(&mut self) -> Option<Stop> {
        if self.session.as_ref().is_some_and(|s| s.guard.is_finished()) {
            self.mounted = false;
            return Some(Stop::Lost(
                "the FUSE session ended (unmounted or aborted from outside)".into(),
            ));
        }
        if let Some(dev) = &self.dev
            && !match &self.backing {
                Some(b) => loopdev::is_bound_to(dev.number(), b),
                // A kernel without diskseq: by path (the FUSE mount is still ours here).
                None => {
                    loopdev::backing_file(dev.number()).as_deref() == Some(&self.paths.fuse_file())
                }
            }
        {
            return Some(Stop::Lost(format!(
                "{} was detached from our file by someone else",
                dev.path().display()
            )));
        }
        // Follow a resize of the image.
        if let (Some(image), Some(shared)) = (self.image.clone(), self.shared.clone())
            && let Ok(size) = image.size()
            && size != shared.size()
        {
            let old = shared.size();
            shared.set_size(size);
            if let Some(s) = &self.session {
                let _ = s.notifier().inval_inode(fuser::INodeNo(2), -1, 0);
            }
            let file = self.paths.fuse_file();
            // stat() refreshes the kernel's idea of the file size; then the loop's.
            let _ = tokio::task::spawn_blocking(move || std::fs::metadata(file)).await;
            match self.dev.as_ref().map(LoopDevice::set_capacity) {
                Some(Ok(())) => log!("image resized from {old} to {size} bytes"),
                Some(Err(e)) => log!("image resized to {size} bytes, but: {e}"),
                None => {}
            }
        }
        None
    }

    /// Undoes everything that was set up; returns what failed.
    fn teardown(&mut self, stop: &Stop, forced: &AtomicBool) -> Vec<String> {
        let t0 = Instant::now();
        let mut steps: Vec<(&str, Duration)> = Vec::new();
        let mut errors = Vec::new();
        let graceful = *stop == Stop::Unmap && !forced.load(Ordering::SeqCst);
        if !graceful && let Some(s) = &self.shared {
            s.fence(stop.describe());
        }
        // 1. The loop device: detach (deferred while others have it open) and close ours.
        if let Some(dev) = self.dev.take() {
            let n = dev.number();
            let path = dev.path();
            if let Err(e) = dev.detach() {
                errors.push(super::chain(&e));
            }
            drop(dev);
            // Judged by the loop's own state, not the file's path (see loopdev). On a
            // kernel without diskseq: the binding as it is now (any binding counts).
            let backing = self
                .backing
                .or_else(|| loopdev::binding_id(n))
                .unwrap_or(loopdev::BindingId { diskseq: u64::MAX });
            if graceful {
                // Keep serving until the last user closes the device; a SIGUSR1 turns
                // this into a forced unmap.
                let mut waited = Instant::now();
                while !loopdev::wait_detached(n, &backing, Duration::from_millis(100)) {
                    if forced.load(Ordering::SeqCst) {
                        log!("forced while waiting for {} to be closed", path.display());
                        if let Some(s) = &self.shared {
                            s.fence("forced unmap");
                        }
                        break;
                    }
                    if waited.elapsed() >= Duration::from_secs(10) {
                        log!(
                            "waiting for {} to be closed: {}",
                            path.display(),
                            loopdev::in_use(n, &[std::process::id()])
                                .unwrap_or_else(|| "still bound".into())
                        );
                        waited = Instant::now();
                    }
                }
            } else if !loopdev::wait_detached(n, &backing, Duration::from_secs(2)) {
                log!(
                    "{} stays until its last user closes it ({}); its I/O fails with EIO",
                    path.display(),
                    loopdev::in_use(n, &[std::process::id()])
                        .unwrap_or_else(|| "still bound".into())
                );
            }
        }
        steps.push(("loop", t0.elapsed()));
        // 2. FUSE: lazy unmount (never blocks), then let the session threads finish.
        let mnt = self.paths.mountpoint();
        if self.mounted {
            match nix::mount::umount2(&mnt, nix::mount::MntFlags::MNT_DETACH) {
                Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
                Err(e) => errors.push(format!("unmounting FUSE at {}: {e}", mnt.display())),
            }
            self.mounted = false;
        }
        if let Some(session) = self.session.take() {
            // Ends once the kernel drops the connection (after the unmount, when no loop
            // device holds the file any more). Bounded: a forced unmap with users left
            // ends it by exiting.
            let wait = if graceful {
                self.teardown_timeout
            } else {
                Duration::from_secs(2)
            };
            let deadline = Instant::now() + wait;
            while !session.guard.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(2));
            }
            if session.guard.is_finished() {
                let _ = session.join();
            } else {
                // Leave it: the process exit aborts the connection.
                std::mem::forget(session);
                if graceful {
                    errors.push("the FUSE session did not end after the unmount".into());
                }
            }
        }
        let _ = std::fs::remove_dir(&mnt);
        steps.push(("fuse", t0.elapsed()));
        // 3. The image: release the lock, close. Bounded: a fenced client may never hear
        // back from the cluster.
        if let Some(b) = self.backend.take() {
            b.take();
        }
        if let Some(image) = self.image.take() {
            // I/Os the backend has not completed keep references to the image that their
            // completion (on librbd's thread) would drop: never close under them.
            let outstanding = || {
                self.shared
                    .as_ref()
                    .map_or(0, |s| s.stats.outstanding.load(Ordering::SeqCst))
            };
            let wait = if graceful {
                self.teardown_timeout
            } else {
                Duration::from_secs(2)
            };
            let deadline = Instant::now() + wait;
            while outstanding() > 0 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(2));
            }
            let fenced = stop.cluster_gone();
            if outstanding() > 0 {
                let msg = format!(
                    "{} I/Os are still outstanding in librbd; the image is left to the \
                     process exit",
                    outstanding()
                );
                std::mem::forget(image);
                if fenced {
                    log!("(fenced) {msg}");
                } else {
                    errors.push(msg);
                }
            } else {
                match Arc::try_unwrap(image) {
                    Err(image) => {
                        std::mem::forget(image);
                        errors.push("the image is still referenced; not closed".into());
                    }
                    Ok(img) => {
                        let locked = self.locked;
                        let r = bounded("closing the image", self.teardown_timeout, move || {
                            let mut errs = Vec::new();
                            if locked
                                && !fenced
                                && let Err(e) = img.lock_release()
                            {
                                errs.push(format!("releasing the exclusive lock: {e}"));
                            }
                            if let Err(e) = img.close() {
                                errs.push(format!("closing the image: {e}"));
                            }
                            errs
                        });
                        match r {
                            Ok(errs) if fenced => {
                                for e in errs {
                                    log!("(fenced) {e}");
                                }
                            }
                            Ok(errs) => errors.extend(errs),
                            Err(e) if fenced => log!("(fenced) {e}"),
                            Err(e) => errors.push(e),
                        }
                    }
                }
            }
        }
        steps.push(("image", t0.elapsed()));
        // 4. The connection: shut down with a deadline, or leave it to the exit.
        if let Some(rados) = self.rados.take()
            && let Err(e) = bounded(
                "shutting down the cluster connection",
                Duration::from_secs(5),
                move || drop(rados),
            )
        {
            log!("{e}");
        }
        steps.push(("connection", t0.elapsed()));
        // 5. The record.
        if self.record_written {
            if let Err(e) = std::fs::remove_file(self.paths.record()) {
                errors.push(format!("removing {}: {e}", self.paths.record().display()));
            }
            self.record_written = false;
        }
        let _ = std::fs::remove_file(self.paths.asok());
        log!(
            "torn down in {} ms ({})",
            t0.elapsed().as_millis(),
            steps
                .iter()
                .map(|(w, d)| format!("{w} at {} ms", d.as_millis()))
                .collect::<Vec<_>>()
                .join(", ")
        );
        errors
    }
}

/// True when a blocklist entry fences the client at `addr`: its exact instance, its whole
/// host (port and nonce 0), or a CIDR range holding its IP.
pub(crate) fn fences(e: &rbd_core::BlocklistEntry, addr: &EntityAddr) -> bool {
    use std::net::IpAddr;
    if !e.range {
        return e.addr.same_instance(addr) || (e.addr.is_whole_host() && e.addr.ip == addr.ip);
    }
    let prefix = e.addr.nonce;
    match (e.addr.ip, addr.ip) {
        (IpAddr::V4(net), IpAddr::V4(ip)) if prefix <= 32 => {
            let mask = if prefix == 0 {
                0
            } else {
                u32::MAX << (32 - prefix)
            };
            u32::from(net) & mask == u32::from(ip) & mask
        }
        (IpAddr::V6(net), IpAddr::V6(ip)) if prefix <= 128 => {
            let mask = if prefix == 0 {
                0
            } else {
                u128::MAX << (128 - prefix)
            };
            u128::from(net) & mask == u128::from(ip) & mask
        }
        _ => false,
    }
}

/// The path of the `rbd-umap` binary that serves mappings for a program at `exe`: next to
/// it, or one level up when `exe` is a test binary in `target/*/deps`.
pub fn sibling_binary(exe: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(dir) = exe.parent() {
        out.push(dir.join("rbd-umap"));
        if dir.file_name().is_some_and(|n| n == "deps")
            && let Some(up) = dir.parent()
        {
            out.push(up.join("rbd-umap"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(addr: &str, range: bool) -> rbd_core::BlocklistEntry {
        rbd_core::BlocklistEntry {
            addr: addr.parse().unwrap(),
            range,
            until: None,
            until_raw: String::new(),
        }
    }

    #[test]
    fn blocklist_entries_that_fence_us() {
        let me: EntityAddr = "127.0.0.1:0/3141".parse().unwrap();
        assert!(fences(&entry("127.0.0.1:0/3141", false), &me));
        assert!(fences(&entry("v1:127.0.0.1:0/3141", false), &me));
        assert!(
            !fences(&entry("127.0.0.1:0/3142", false), &me),
            "another instance"
        );
        assert!(
            fences(&entry("127.0.0.1:0/0", false), &me),
            "the whole host"
        );
        assert!(!fences(&entry("127.0.0.2:0/0", false), &me));
        // Ranges: the nonce is the prefix length.
        assert!(fences(&entry("127.0.0.0:0/8", true), &me));
        assert!(fences(&entry("127.0.0.1:0/32", true), &me));
        assert!(!fences(&entry("10.0.0.0:0/8", true), &me));
        assert!(fences(&entry("0.0.0.0:0/0", true), &me));
        let v6: EntityAddr = "[fd00::5]:0/7".parse().unwrap();
        assert!(fences(&entry("[fd00::]:0/64", true), &v6));
        assert!(!fences(&entry("[fd01::]:0/64", true), &v6));
        assert!(!fences(&entry("127.0.0.0:0/8", true), &v6));
    }
}
