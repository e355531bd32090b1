//! The volume worker: a child process that runs the volume operations needing librbd.
//!
//! Create, Remove, Mount, Unmount and Get open images, so they need librbd. Loading it
//! costs a process about 5 MiB for good (its pages, constructors and relocations; it is
//! never unloaded), and its work leaves thread pools and malloc arenas behind: after a
//! burst of Creates a plugin that ran them itself stayed near 40 MiB. The plugin process
//! therefore keeps to RADOS (List, Path, its node daemon) and hands those operations to a
//! worker: the same executable started with `--volume-worker`, with the plugin's
//! configuration (same arguments, same environment), and its own connection to the
//! cluster. The worker is started on demand and exits once it has been idle for
//! [`PluginConfig::worker_idle`], so after a burst the memory goes with it.
//!
//! Protocol: one JSON object per line, the plugin writing to the worker's stdin and
//! reading its stdout ([`ToWorker`], [`FromWorker`]). Calls carry an id, so several run at
//! once (each in a thread of the worker). The worker reports `ready` once connected (or
//! `failed`, and exits). Before its driver registers an image in a pool it asks the plugin
//! to answer control requests there (`serve-pool`, [`Driver::set_pool_hook`]): the node
//! daemon lives in the plugin. The worker exits when its stdin closes, after finishing
//! the calls it has; the plugin closes it when the worker has been idle long enough, and
//! the kernel does when the plugin dies, so a worker never outlives its plugin by more
//! than its calls in progress.
//!
//! Failure: a worker that dies (crash, OOM kill) fails the calls it had with an error
//! naming its pid and exit status; the driver's operations are crash-safe (journaled in
//! the state file, finished or undone by the node daemon's next reconcile), and the next
//! call starts a new worker.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, mpsc};
use std::time::{Duration, Instant, UNIX_EPOCH};

use rbd_driver::volume::{CreateSpec, Driver};
use serde::{Deserialize, Serialize};

use crate::backend::VolumeEntry;
use crate::config::PluginConfig;
use crate::error::{PluginError, Result, chain};
use crate::service::FailureKind;

/// Locks `m`, also when a thread panicked while holding it (the data stays usable: every
/// critical section here leaves it consistent).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The flag that makes the executable a volume worker.
pub const WORKER_FLAG: &str = "--volume-worker";

/// How long a worker waits for the plugin to answer a `serve-pool` request.
const SERVE_POOL_TIMEOUT: Duration = Duration::from_secs(30);

/// A volume operation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "op")]
pub enum Op {
    /// `Driver::create` from Docker's options.
    Create {
        /// Volume name.
        name: String,
        /// Docker's `-o` options.
        opts: BTreeMap<String, String>,
    },
    /// `Driver::remove`.
    Remove {
        /// Volume name.
        name: String,
    },
    /// `Driver::attach`.
    Attach {
        /// Volume name.
        name: String,
        /// Docker's mount id.
        mount_id: String,
    },
    /// `Driver::detach`.
    Detach {
        /// Volume name.
        name: String,
        /// Docker's mount id.
        mount_id: String,
    },
    /// `Driver::get`.
    Get {
        /// Volume name.
        name: String,
    },
}

/// What the plugin writes to the worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ToWorker {
    /// Run `op` and answer with [`FromWorker::Done`] and the same id.
    Call {
        /// Chosen by the plugin, unique per worker.
        id: u64,
        /// The operation.
        op: Op,
    },
    /// The answer to [`FromWorker::ServePool`].
    PoolServed {
        /// The request's id.
        id: u64,
        /// Why the node daemon cannot answer there, if it cannot.
        error: Option<String>,
    },
}

/// What the worker writes to the plugin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FromWorker {
    /// Connected; calls are served from now on.
    Ready {
        /// The worker's pid.
        pid: u32,
    },
    /// Could not connect (the message says why); the worker exits.
    Failed {
        /// What failed, with its causes.
        message: String,
    },
    /// A call's result.
    Done {
        /// The call's id.
        id: u64,
        /// Its result.
        result: std::result::Result<Answer, WireError>,
    },
    /// Asks the plugin's node daemon to answer control requests in `pool`.
    ServePool {
        /// Chosen by the worker.
        id: u64,
        /// The pool.
        pool: String,
    },
}

/// A successful call's value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Answer {
    /// Create, Remove, Detach.
    Unit,
    /// Attach: the mountpoint.
    Path(PathBuf),
    /// Get.
    Entry(WireEntry),
}

/// A [`VolumeEntry`] on the wire (the creation time as seconds and nanoseconds since the
/// epoch).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WireEntry {
    /// Volume name.
    pub name: String,
    /// Mountpoint on this node.
    pub mountpoint: Option<PathBuf>,
    /// Creation time.
    pub created_at: Option<(u64, u32)>,
    /// Details.
    pub status: BTreeMap<String, serde_json::Value>,
}

impl From<VolumeEntry> for WireEntry {
    fn from(v: VolumeEntry) -> Self {
        WireEntry {
            name: v.name,
            mountpoint: v.mountpoint,
            created_at: v
                .created_at
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map(|d| (d.as_secs(), d.subsec_nanos())),
            status: v.status,
        }
    }
}

impl From<WireEntry> for VolumeEntry {
    fn from(w: WireEntry) -> Self {
        VolumeEntry {
            name: w.name,
            mountpoint: w.mountpoint,
            created_at: w
                .created_at
                .map(|(s, n)| UNIX_EPOCH + Duration::new(s, n.min(999_999_999))),
            status: w.status,
        }
    }
}

/// A failed call: the driver error's message (causes included) and class.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WireError {
    /// The message.
    pub message: String,
    /// The class.
    pub class: FailureKind,
}

impl From<&PluginError> for WireError {
    fn from(e: &PluginError) -> Self {
        WireError {
            message: chain(e),
            class: FailureKind::of(e),
        }
    }
}

impl From<WireError> for PluginError {
    fn from(w: WireError) -> Self {
        PluginError::Worker {
            message: w.message,
            class: w.class,
        }
    }
}

/// Makes this node's daemon answer control requests in a pool (the plugin side of
/// [`FromWorker::ServePool`]).
pub type ServePool = Arc<dyn Fn(&str) -> std::result::Result<(), String> + Send + Sync>;

/// Starts workers when calls come and retires them when idle (the plugin side).
pub struct WorkerPool {
    program: PathBuf,
    args: Vec<OsString>,
    idle: Duration,
    serve_pool: ServePool,
    current: Mutex<Option<Arc<Worker>>>,
    stop: Arc<AtomicBool>,
}

/// One running worker.
struct Worker {
    pid: u32,
    child: Mutex<Option<Child>>,
    /// `None` once closed (retired or shut down).
    stdin: Mutex<Option<ChildStdin>>,
    pending: Mutex<HashMap<u64, mpsc::Sender<Result<Answer>>>>,
    next_id: AtomicU64,
    /// Calls sent and not yet answered.
    busy: AtomicUsize,
    last_done: Mutex<Instant>,
    /// Its stdout reached EOF: it exited or is exiting.
    dead: AtomicBool,
    /// Set with the exit status once reaped.
    exited: Mutex<Option<String>>,
}

impl Worker {
    fn send(&self, msg: &ToWorker) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(msg).map_err(std::io::Error::other)?;
        line.push(b'\n');
        let mut g = lock(&self.stdin);
        match g.as_mut() {
            Some(w) => w.write_all(&line).and_then(|()| w.flush()),
            None => Err(std::io::Error::new(
                std::io::ErrorKind::BrokenPipe,
                "the worker's input is closed",
            )),
        }
    }

    fn close(&self) {
        lock(&self.stdin).take();
    }

    fn fail_pending(&self, why: &str) {
        let pending: Vec<_> = lock(&self.pending).drain().collect();
        for (_, tx) in pending {
            let _ = tx.send(Err(PluginError::Worker {
                message: why.to_string(),
                class: FailureKind::Other,
            }));
        }
    }
}

impl WorkerPool {
    /// A pool starting `program` with `args` (the plugin's own arguments; [`WORKER_FLAG`]
    /// is added) and retiring a worker idle for `idle`. `serve_pool` answers the workers'
    /// `serve-pool` requests.
    pub fn new(
        program: PathBuf,
        args: Vec<OsString>,
        idle: Duration,
        serve_pool: ServePool,
    ) -> Arc<WorkerPool> {
        let pool = Arc::new(WorkerPool {
            program,
            args,
            idle,
            serve_pool,
            current: Mutex::new(None),
            stop: Arc::new(AtomicBool::new(false)),
        });
        let weak = Arc::downgrade(&pool);
        let stop = Arc::clone(&pool.stop);
        let check = (idle / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
        let _ = std::thread::Builder::new()
            .name("worker-retire".into())
            .stack_size(64 * 1024)
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(check);
                    match weak.upgrade() {
                        Some(p) => p.retire_if_idle(),
                        None => return,
                    }
                }
            });
        pool
    }

    /// The plugin's own executable and arguments: what a worker is started from.
    pub fn this_executable() -> (PathBuf, Vec<OsString>) {
        // /proc/self/exe still works when the file was replaced on disk (an upgrade).
        (
            PathBuf::from("/proc/self/exe"),
            std::env::args_os().skip(1).collect(),
        )
    }

    /// The running worker's pid, if one runs.
    pub fn worker_pid(&self) -> Option<u32> {
        lock(&self.current)
            .as_ref()
            .filter(|w| !w.dead.load(Ordering::Relaxed))
            .map(|w| w.pid)
    }

    /// Runs `op` in the worker (started if none runs) and waits for its answer. A call
    /// that cannot be delivered because the worker just exited is sent to a new one,
    /// once.
    pub fn call(&self, op: Op) -> Result<Answer> {
        let mut tried_fresh = false;
        loop {
            let (w, fresh) = self.acquire()?;
            let id = w.next_id.fetch_add(1, Ordering::Relaxed);
            let (tx, rx) = mpsc::channel();
            lock(&w.pending).insert(id, tx);
            let sent = w.send(&ToWorker::Call { id, op: op.clone() });
            if let Err(e) = sent {
                lock(&w.pending).remove(&id);
                self.release(&w);
                if fresh || tried_fresh {
                    return Err(PluginError::Io {
                        what: format!("sending a call to the volume worker (pid {})", w.pid),
                        source: e,
                    });
                }
                tried_fresh = true;
                w.dead.store(true, Ordering::Relaxed);
                continue;
            }
            // The reader thread answers every pending call, with an error if the worker
            // dies first; a dropped sender cannot happen without one.
            let out = rx.recv().unwrap_or_else(|_| {
                Err(PluginError::Worker {
                    message: format!("the volume worker (pid {}) went away", w.pid),
                    class: FailureKind::Other,
                })
            });
            self.release(&w);
            return out;
        }
    }

    /// The running worker, or a new one; counted busy (under the lock the retirer takes,
    /// so it is never retired between this and its call).
    fn acquire(&self) -> Result<(Arc<Worker>, bool)> {
        let mut cur = lock(&self.current);
        if let Some(w) = cur.as_ref()
            && !w.dead.load(Ordering::Relaxed)
        {
            w.busy.fetch_add(1, Ordering::SeqCst);
            return Ok((Arc::clone(w), false));
        }
        if let Some(old) = cur.take() {
            old.close();
        }
        let w = self.spawn()?;
        w.busy.fetch_add(1, Ordering::SeqCst);
        *cur = Some(Arc::clone(&w));
        Ok((w, true))
    }

    fn release(&self, w: &Worker) {
        *lock(&w.last_done) = Instant::now();
        w.busy.fetch_sub(1, Ordering::SeqCst);
    }

    fn retire_if_idle(&self) {
        let mut cur = lock(&self.current);
        let idle = cur.as_ref().is_some_and(|w| {
            w.dead.load(Ordering::Relaxed)
                || (w.busy.load(Ordering::SeqCst) == 0 && lock(&w.last_done).elapsed() >= self.idle)
        });
        if idle && let Some(w) = cur.take() {
            if !w.dead.load(Ordering::Relaxed) {
                tracing::debug!(
                    "volume worker pid {} idle for {:?}: retiring it",
                    w.pid,
                    self.idle
                );
            }
            w.close();
        }
    }

    fn spawn(&self) -> Result<Arc<Worker>> {
        let mut cmd = Command::new(&self.program);
        cmd.arg0("docker-volume-rbd")
            .args(&self.args)
            .arg(WORKER_FLAG)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd.spawn().map_err(|source| PluginError::Io {
            what: format!("starting the volume worker {}", self.program.display()),
            source,
        })?;
        let pid = child.id();
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("piped");
        let w = Arc::new(Worker {
            pid,
            child: Mutex::new(Some(child)),
            stdin: Mutex::new(stdin),
            pending: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            busy: AtomicUsize::new(0),
            last_done: Mutex::new(Instant::now()),
            dead: AtomicBool::new(false),
            exited: Mutex::new(None),
        });
        tracing::debug!("started volume worker pid {pid}");
        let (w2, serve) = (Arc::clone(&w), Arc::clone(&self.serve_pool));
        std::thread::Builder::new()
            .name("worker-reader".into())
            .stack_size(256 * 1024)
            .spawn(move || read_worker(&w2, stdout, &serve))
            .map_err(|source| PluginError::Io {
                what: "starting the volume worker's reader thread".into(),
                source,
            })?;
        Ok(w)
    }

    /// Closes the worker's input and waits up to `grace` for it to exit (it finishes the
    /// calls it has first); then kills it. No new worker starts afterwards.
    pub fn shutdown(&self, grace: Duration) {
        self.stop.store(true, Ordering::Relaxed);
        let w = lock(&self.current).take();
        let Some(w) = w else { return };
        w.close();
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if lock(&w.exited).is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if let Some(c) = lock(&w.child).as_mut() {
            tracing::warn!(
                "volume worker pid {} did not exit within {grace:?}; killing it",
                w.pid
            );
            let _ = c.kill();
        }
    }
}

/// The plugin's reader of one worker's output: answers, `serve-pool` requests, and its
/// end (then every call still pending fails, and the process is reaped).
fn read_worker(w: &Arc<Worker>, stdout: std::process::ChildStdout, serve: &ServePool) {
    let mut lines = BufReader::new(stdout).lines();
    let mut failed: Option<String> = None;
    while let Some(Ok(line)) = lines.next() {
        match serde_json::from_str::<FromWorker>(&line) {
            Ok(FromWorker::Ready { pid }) => tracing::debug!("volume worker pid {pid} connected"),
            Ok(FromWorker::Failed { message }) => failed = Some(message),
            Ok(FromWorker::Done { id, result }) => {
                let tx = lock(&w.pending).remove(&id);
                if let Some(tx) = tx {
                    let _ = tx.send(result.map_err(PluginError::from));
                }
            }
            Ok(FromWorker::ServePool { id, pool }) => {
                let (w, serve) = (Arc::clone(w), Arc::clone(serve));
                let _ = std::thread::Builder::new()
                    .name("worker-serve-pool".into())
                    .stack_size(256 * 1024)
                    .spawn(move || {
                        let error = serve(&pool).err();
                        let _ = w.send(&ToWorker::PoolServed { id, error });
                    });
            }
            Err(e) => tracing::warn!(
                "volume worker pid {}: unreadable line ({e}): {line:?}",
                w.pid
            ),
        }
    }
    w.dead.store(true, Ordering::Relaxed);
    // Reap it: it exits right after closing its output (a kill makes sure after 10 s).
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        let mut g = lock(&w.child);
        let Some(c) = g.as_mut() else {
            break "gone".to_string();
        };
        match c.try_wait() {
            Ok(Some(s)) => {
                g.take();
                break s.to_string();
            }
            Ok(None) if Instant::now() >= deadline => {
                let _ = c.kill();
            }
            Ok(None) => {}
            Err(e) => {
                g.take();
                break format!("not known ({e})");
            }
        }
        drop(g);
        std::thread::sleep(Duration::from_millis(10));
    };
    let why = match failed {
        Some(m) => format!("the volume worker (pid {}) could not start: {m}", w.pid),
        None => format!(
            "the volume worker (pid {}) exited ({status}) before answering; the operation \
             may or may not have completed (the node daemon's next reconcile finishes or \
             undoes it); retry",
            w.pid
        ),
    };
    w.fail_pending(&why);
    tracing::debug!("volume worker pid {} exited: {status}", w.pid);
    *lock(&w.exited) = Some(status);
}

/// The worker's end of the protocol: where it writes, and its open `serve-pool` requests.
struct Upstream {
    out: Mutex<File>,
    upcalls: Mutex<HashMap<u64, mpsc::Sender<Option<String>>>>,
    next_up: AtomicU64,
}

impl Upstream {
    fn send(&self, msg: &FromWorker) {
        let Ok(mut line) = serde_json::to_vec(msg) else {
            return;
        };
        line.push(b'\n');
        let mut out = lock(&self.out);
        // The plugin is gone if this fails; the worker ends at its stdin's EOF.
        let _ = out.write_all(&line).and_then(|()| out.flush());
    }

    fn serve_pool(&self, pool: &str) -> rbd_driver::Result<()> {
        let id = self.next_up.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel();
        lock(&self.upcalls).insert(id, tx);
        self.send(&FromWorker::ServePool {
            id,
            pool: pool.to_string(),
        });
        let out = rx.recv_timeout(SERVE_POOL_TIMEOUT);
        lock(&self.upcalls).remove(&id);
        match out {
            Ok(None) => Ok(()),
            Ok(Some(e)) => Err(rbd_driver::DriverError::io(
                format!("the plugin's node daemon cannot answer in pool {pool}: {e}"),
                std::io::Error::other(e),
            )),
            Err(_) => Err(rbd_driver::DriverError::Timeout {
                what: format!("asking the plugin to answer control requests in pool {pool}"),
                secs: SERVE_POOL_TIMEOUT.as_secs(),
            }),
        }
    }
}

/// Takes the protocol's file descriptors (stdin and stdout) for the worker alone: they
/// are moved to close-on-exec descriptors, stdin becomes `/dev/null` and stdout the same
/// as stderr. So nothing the worker starts (mappers, mkfs, mount) holds the plugin's pipes
/// open (the plugin sees the worker's end by their EOF), and nothing else written to
/// stdout can garble the protocol.
fn take_protocol_fds() -> std::io::Result<(File, File)> {
    fn dup_cloexec(fd: RawFd) -> std::io::Result<File> {
        // SAFETY: fcntl F_DUPFD_CLOEXEC only duplicates a descriptor of this process.
        let n = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3) };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `n` is a new descriptor that nothing else owns.
        Ok(unsafe { File::from_raw_fd(n) })
    }
    let input = dup_cloexec(0)?;
    let output = dup_cloexec(1)?;
    let null = File::open("/dev/null")?;
    // SAFETY: dup2 onto the standard descriptors, whose old files are kept open by
    // `input` and `output` above; `null` and stderr are valid descriptors.
    let rc = unsafe {
        (libc::dup2(std::os::fd::AsRawFd::as_raw_fd(&null), 0) < 0 || libc::dup2(2, 1) < 0) as i32
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((input, output))
}

/// Runs this process as a volume worker until its stdin closes (see the module doc).
pub fn serve(cfg: &PluginConfig) -> ExitCode {
    let (input, output) = match take_protocol_fds() {
        Ok(f) => f,
        Err(e) => {
            eprintln!("docker-volume-rbd {WORKER_FLAG}: setting up the protocol pipes: {e}");
            return ExitCode::from(1);
        }
    };
    let up = Arc::new(Upstream {
        out: Mutex::new(output),
        upcalls: Mutex::new(HashMap::new()),
        next_up: AtomicU64::new(1),
    });
    let driver = match connect(cfg) {
        Ok(d) => d,
        Err(e) => {
            let message = chain(&e);
            tracing::error!("volume worker: {message}");
            up.send(&FromWorker::Failed { message });
            return ExitCode::from(1);
        }
    };
    {
        let up = Arc::clone(&up);
        driver.set_pool_hook(Some(Box::new(move |pool: &str| up.serve_pool(pool))));
    }
    up.send(&FromWorker::Ready {
        pid: std::process::id(),
    });
    let mut calls = Vec::new();
    for line in BufReader::new(input).lines() {
        let Ok(line) = line else { break };
        match serde_json::from_str::<ToWorker>(&line) {
            Ok(ToWorker::Call { id, op }) => {
                let (d2, up2) = (Arc::clone(&driver), Arc::clone(&up));
                let t = std::thread::Builder::new()
                    .name("worker-call".into())
                    .spawn(move || {
                        let _span = tracing::info_span!("volume-worker").entered();
                        let result = run(&d2, op).map_err(|e| WireError::from(&e));
                        up2.send(&FromWorker::Done { id, result });
                    });
                match t {
                    Ok(t) => calls.push(t),
                    Err(e) => up.send(&FromWorker::Done {
                        id,
                        result: Err(WireError {
                            message: format!("the volume worker cannot start a thread: {e}"),
                            class: FailureKind::Other,
                        }),
                    }),
                }
                calls.retain(|t| !t.is_finished());
            }
            Ok(ToWorker::PoolServed { id, error }) => {
                let tx = lock(&up.upcalls).remove(&id);
                if let Some(tx) = tx {
                    let _ = tx.send(error);
                }
            }
            Err(e) => tracing::warn!("volume worker: unreadable request ({e}): {line:?}"),
        }
    }
    // The plugin closed our input: finish what runs (each call is bounded by the Ceph
    // timeouts), then disconnect.
    for t in calls {
        let _ = t.join();
    }
    driver.set_pool_hook(None);
    drop(driver);
    ExitCode::SUCCESS
}

/// The worker's driver: the plugin's configuration, with librbd loaded at connect (a
/// missing librbd is the connect error) and no recovery (the plugin's node daemon owns
/// that, at its start and every reconcile).
fn connect(cfg: &PluginConfig) -> Result<Arc<Driver>> {
    let mut d = crate::rbd::driver_config(cfg)?;
    d.defer_librbd = false;
    d.recover_on_start = false;
    Ok(Arc::new(Driver::new(d)?))
}

fn run(driver: &Driver, op: Op) -> Result<Answer> {
    Ok(match op {
        Op::Create { name, opts } => {
            let spec = CreateSpec::from_options(&opts)?;
            driver.create(&name, &spec)?;
            Answer::Unit
        }
        Op::Remove { name } => {
            driver.remove(&name, false)?;
            Answer::Unit
        }
        Op::Attach { name, mount_id } => Answer::Path(driver.attach(&name, &mount_id, None)?),
        Op::Detach { name, mount_id } => {
            driver.detach(&name, &mount_id)?;
            Answer::Unit
        }
        Op::Get { name } => Answer::Entry(crate::rbd::entry(driver.get(&name)?).into()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip() {
        let msgs = [
            ToWorker::Call {
                id: 7,
                op: Op::Create {
                    name: "v1".into(),
                    opts: [("size".to_string(), "1G".to_string())].into(),
                },
            },
            ToWorker::Call {
                id: 8,
                op: Op::Attach {
                    name: "v1".into(),
                    mount_id: "abc".into(),
                },
            },
            ToWorker::PoolServed {
                id: 1,
                error: Some("no".into()),
            },
        ];
        for m in msgs {
            let s = serde_json::to_string(&m).unwrap();
            assert!(!s.contains('\n'));
            assert_eq!(serde_json::from_str::<ToWorker>(&s).unwrap(), m);
        }
        let t = UNIX_EPOCH + Duration::new(1_700_000_000, 123);
        let entry = VolumeEntry {
            name: "v1".into(),
            mountpoint: Some("/m/v1".into()),
            created_at: Some(t),
            status: [("size".to_string(), serde_json::json!(1u64 << 30))].into(),
        };
        let back = [
            FromWorker::Done {
                id: 7,
                result: Ok(Answer::Entry(entry.clone().into())),
            },
            FromWorker::Done {
                id: 8,
                result: Err(WireError {
                    message: "volume v1 does not exist".into(),
                    class: FailureKind::NotFound,
                }),
            },
            FromWorker::ServePool {
                id: 2,
                pool: "rbd".into(),
            },
            FromWorker::Ready { pid: 42 },
        ];
        for m in back {
            let s = serde_json::to_string(&m).unwrap();
            assert_eq!(serde_json::from_str::<FromWorker>(&s).unwrap(), m);
        }
        let w: WireEntry = entry.clone().into();
        assert_eq!(w.created_at, Some((1_700_000_000, 123)));
        assert_eq!(VolumeEntry::from(w), entry);
    }

    #[test]
    fn errors_keep_message_and_class() {
        let e = PluginError::Driver(rbd_driver::DriverError::NoSuchVolume("v9".into()));
        let w = WireError::from(&e);
        assert_eq!(w.class, FailureKind::NotFound);
        assert_eq!(w.message, "volume v9 does not exist");
        let back = PluginError::from(w);
        assert_eq!(FailureKind::of(&back), FailureKind::NotFound);
        assert_eq!(chain(&back), "volume v9 does not exist");
        let e = PluginError::Driver(rbd_driver::DriverError::invalid("size", "2Q", "bad unit"));
        assert_eq!(WireError::from(&e).class, FailureKind::Invalid);
    }
}
