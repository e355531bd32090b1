//! The userspace backend: our own mapper process per image, serving the image as one
//! FUSE file with a loop device on top. Works on any kernel with FUSE and loop.
//!
//! **Map**: [`UserspaceMapper::map`] starts `rbd-umap serve` (found through
//! [`MapperConfig::umap_bin`], next to the current executable, one level above a test
//! binary's `deps/` directory, or on `$PATH`) in a session of its own, sends it the
//! request as JSON on stdin (the keyring is a path: no secret on argv), and waits, with a
//! timeout, for its one readiness line. The process outlives its caller, like rbd-nbd.
//! See [`daemon`] for what the process does, and [`record`] for its files.
//!
//! **List**: the records in `<run_dir>/umap/` whose process is alive (pid and start
//! time) and whose loop device is bound to the record's FUSE file, on the record's FUSE
//! mount. A record whose process died is *stale*: if its loop device or its FUSE mount is
//! still there it is listed with `pid: None`, for [`Mapper::unmap`] with `force` to clean
//! up, and with an empty `device` once its loop device was reused by another mapping (a
//! loop device counts as a record's only while it is bound to that record's FUSE file);
//! if nothing of it is left it is removed
//! ([`UserspaceMapper::cleanup_stale`] reports those). [`UserspaceMapper::entries`] shows
//! every record with its state, without changing anything.
//!
//! **Unmap**: the mapping is found by device **and image id**, and by pid: a mapping
//! without one (a dead mapping) only ever matches a dead mapper's record, never a live
//! mapping that reuses its device. Without `force`, a device
//! that is mounted, held or open by another process is refused; otherwise the mapper gets
//! `SIGTERM` and is waited for. With `force`, it gets `SIGUSR1` (fail all I/O with `EIO`,
//! tear down without waiting for the device's users), then `SIGKILL` if it does not exit.
//! Whatever the mapper left (loop binding, FUSE mount, record) is then cleaned up, and
//! errors it reported while tearing down (e.g. closing the image) are returned.

pub mod daemon;
mod fusefs;
mod procinfo;
mod rbd_backend;
pub mod record;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use self::daemon::{Readiness, ServeRequest};
use self::record::{Paths, Record};
use super::loopdev;
use super::{Backend, MapRequest, Mapper, MapperConfig, Mapping};
use crate::error::{DriverError, Result};

/// Renders an error with its chain of causes.
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// The userspace backend.
#[derive(Debug, Clone)]
pub struct UserspaceMapper {
    cfg: MapperConfig,
    map_timeout: Duration,
    unmap_timeout: Duration,
    kill_wait: Duration,
    check_interval: Option<Duration>,
}

/// The state of one recorded mapping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryState {
    /// The mapper runs and the loop device is bound to its file.
    Running,
    /// The mapper runs but the loop device is no longer bound to its file: it is tearing
    /// down.
    Detaching,
    /// The mapper process is gone (crashed or killed).
    Dead {
        /// The loop device is still bound to the dead mapper's FUSE file (its users get
        /// `EIO`; it detaches when they close it, or with a forced unmap).
        loop_bound: bool,
        /// The dead FUSE mount is still there.
        fuse_mounted: bool,
    },
}

/// One record and what is true of it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// What the mapper recorded.
    pub record: Record,
    /// The record file.
    pub path: PathBuf,
    /// Its state.
    pub state: EntryState,
}

impl Entry {
    /// True when nothing of the mapping is left but the record.
    pub fn is_garbage(&self) -> bool {
        matches!(
            self.state,
            EntryState::Dead {
                loop_bound: false,
                fuse_mounted: false
            }
        )
    }

    /// True when the record's device is its own: a running mapper bound to its loop
    /// device, or a dead one whose loop device is still bound to its file.
    pub fn owns_device(&self) -> bool {
        matches!(
            self.state,
            EntryState::Running
                | EntryState::Dead {
                    loop_bound: true,
                    ..
                }
        )
    }

    /// The mapping as [`Mapper::list`] shows it: with the mapper's pid while it runs;
    /// without one when it is dead. A dead mapping whose loop device was released keeps
    /// the device's name while that device is free, and shows an empty `device` once
    /// another mapping reuses it: the device is then that mapping's, and only the dead
    /// one's Ceph client (to fence) and dead FUSE mount (for [`Mapper::unmap`] to clean)
    /// are left.
    pub fn mapping(&self) -> Mapping {
        let r = &self.record;
        match self.state {
            EntryState::Running | EntryState::Detaching => r.mapping(Some(r.pid)),
            EntryState::Dead { loop_bound, .. } => {
                let mut m = r.mapping(None);
                if !loop_bound && r.loop_number().and_then(loopdev::backing_file).is_some() {
                    m.device = PathBuf::new();
                }
                m
            }
        }
    }
}

static SEQ: AtomicU64 = AtomicU64::new(0);

/// A fresh token: unique per process, time and call.
fn new_token() -> String {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    format!(
        "u{:x}-{:x}{n:x}",
        std::process::id(),
        nanos & 0xffff_ffff_ffff
    )
}

/// True when a filesystem is mounted at `mnt` (from `/proc/self/mountinfo`).
fn is_mounted(mnt: &Path) -> bool {
    let Ok(mi) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    mount_at(&mi, mnt).is_some()
}

/// The filesystem type and source of the (topmost) mount at `mnt` in mountinfo text
/// `mi`.
fn mount_at(mi: &str, mnt: &Path) -> Option<(String, String)> {
    let want = mnt.to_string_lossy();
    mi.lines().rev().find_map(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        let sep = f.iter().position(|x| *x == "-")?;
        (f.len() > 4 && unescape_mountinfo(f[4]) == want).then(|| {
            (
                f.get(sep + 1).copied().unwrap_or_default().to_owned(),
                unescape_mountinfo(f.get(sep + 2).copied().unwrap_or_default()),
            )
        })
    })
}

/// Whether a mount is one of our mappers' FUSE mounts: type `fuse` (or `fuse.rbd-umap`),
/// source `rbd-umap:<image>` (the mapper's FSName).
fn is_mapper_fuse((fstype, source): &(String, String)) -> bool {
    (fstype == "fuse" || fstype == "fuse.rbd-umap") && source.starts_with("rbd-umap:")
}

/// Whether the loop device a record names is still that record's: bound to the record's
/// own FUSE file (its path holds the mapping's unique token), on a mapper FUSE mount at
/// the record's own mountpoint. A dead mapper's loop number may have been reused by
/// another mapping since: then the backing file is the other mapping's, and the device
/// is not this record's.
fn owns_loop(record: &Record, mountinfo: &str) -> bool {
    let Some(n) = record.loop_number() else {
        return false;
    };
    // By the binding's identity when recorded: it still matches once the FUSE mount was
    // lazily unmounted (sysfs then names the file `/image`), and never after the device
    // was detached and bound again (the kernel bumps diskseq on both).
    if let Some(b) = &record.backing {
        return loopdev::is_bound_to(n, b);
    }
    loopdev::backing_file(n).is_some_and(|b| b == record.fuse_file)
        && record.fuse_file.parent() == Some(record.mountpoint.as_path())
        && mount_at(mountinfo, &record.mountpoint).is_some_and(|m| is_mapper_fuse(&m))
}

/// Undoes mountinfo's octal escapes (`\040` for a space...).
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

impl UserspaceMapper {
    /// A mapper with these host settings.
    pub fn new(cfg: &MapperConfig) -> Self {
        Self {
            cfg: cfg.clone(),
            map_timeout: Duration::from_secs(60),
            unmap_timeout: Duration::from_secs(30),
            kill_wait: Duration::from_secs(10),
            check_interval: None,
        }
    }

    /// Sets how long a map may take (default 60 s) and how long an unmap waits for the
    /// mapper to exit (default 30 s).
    pub fn with_timeouts(mut self, map: Duration, unmap: Duration) -> Self {
        self.map_timeout = map;
        self.unmap_timeout = unmap;
        self
    }

    /// Sets the mapper's watchdog period (blocklist, loop and session checks). Default:
    /// half the I/O timeout, between 1 and 5 s.
    pub fn with_check_interval(mut self, every: Duration) -> Self {
        self.check_interval = Some(every);
        self
    }

    /// The run directory with symlinks resolved (the kernel reports mount points and loop
    /// backing files that way).
    fn run_dir(&self) -> PathBuf {
        std::fs::canonicalize(&self.cfg.run_dir).unwrap_or_else(|_| self.cfg.run_dir.clone())
    }

    /// The `rbd-umap` binary this mapper starts.
    pub fn umap_bin(&self) -> Result<PathBuf> {
        let unavailable = |reason: String| DriverError::BackendUnavailable {
            backend: Backend::Userspace,
            reason,
        };
        if let Some(p) = &self.cfg.umap_bin {
            if p.components().count() > 1 {
                return if is_executable(p) {
                    Ok(p.clone())
                } else {
                    Err(unavailable(format!(
                        "the mapper binary {} is missing or not executable",
                        p.display()
                    )))
                };
            }
            return which(p).ok_or_else(|| {
                unavailable(format!("the mapper binary {} is not on $PATH", p.display()))
            });
        }
        let mut tried = Vec::new();
        if let Ok(exe) = std::env::current_exe() {
            for c in daemon::sibling_binary(&exe) {
                if is_executable(&c) {
                    return Ok(c);
                }
                tried.push(c.display().to_string());
            }
        }
        which(Path::new("rbd-umap")).ok_or_else(|| {
            unavailable(format!(
                "the mapper binary rbd-umap is neither next to this program ({}) nor on $PATH",
                tried.join(", ")
            ))
        })
    }

    fn map_err(req: &MapRequest, reason: impl Into<String>) -> DriverError {
        DriverError::Map {
            backend: Backend::Userspace,
            image: req.spec(),
            reason: reason.into(),
        }
    }

    fn validate(req: &MapRequest) -> Result<()> {
        let ok_id = |s: &str| {
            !s.is_empty()
                && s.len() <= 64
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_')
        };
        if !ok_id(&req.image_id) {
            return Err(DriverError::invalid(
                "image id",
                &req.image_id,
                "expected the image's RBD id (letters and digits, as `rbd info` shows it)",
            ));
        }
        if req.pool.is_empty() || req.pool.contains('/') || req.pool.contains('\0') {
            return Err(DriverError::invalid(
                "pool name",
                &req.pool,
                "must be non-empty, without / or NUL",
            ));
        }
        if req.options.io_timeout_secs == Some(0) {
            return Err(DriverError::invalid(
                "io timeout",
                "0",
                "must be at least 1 second",
            ));
        }
        Ok(())
    }

    /// Every record with its current state. Changes nothing.
    ///
    /// A record's loop device counts as its own only while it is bound to the record's
    /// FUSE file on the record's FUSE mount: a dead mapper's loop number may have been
    /// reused by another mapping since.
    pub fn entries(&self) -> Result<Vec<Entry>> {
        let mut out = Vec::new();
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
            .map_err(|e| DriverError::io("reading /proc/self/mountinfo", e))?;
        for (path, rec) in record::read_all(&self.run_dir()) {
            let Ok(record) = rec else { continue };
            let bound = owns_loop(&record, &mountinfo);
            let state = if procinfo::alive(record.pid, record.start_time) {
                if bound {
                    EntryState::Running
                } else {
                    EntryState::Detaching
                }
            } else {
                EntryState::Dead {
                    loop_bound: bound,
                    fuse_mounted: mount_at(&mountinfo, &record.mountpoint).is_some(),
                }
            };
            out.push(Entry {
                record,
                path,
                state,
            });
        }
        Ok(out)
    }

    /// Removes the records of dead mappers that left nothing else behind (and their
    /// mount point directories and sockets); returns what was removed. Logs and exit
    /// reports of mappings without a record are kept for a day, for diagnosis, then
    /// removed too.
    pub fn cleanup_stale(&self) -> Result<Vec<Entry>> {
        let mut removed = Vec::new();
        let dir = record::dir(&self.run_dir());
        if let Ok(rd) = std::fs::read_dir(&dir) {
            let day = Duration::from_secs(24 * 3600);
            for ent in rd.flatten() {
                let name = ent.file_name().to_string_lossy().into_owned();
                let Some(token) = name
                    .strip_suffix(".exit.json")
                    .or_else(|| name.strip_suffix(".log"))
                else {
                    continue;
                };
                let old = ent
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age > day);
                if old && !dir.join(format!("{token}.json")).exists() {
                    let _ = std::fs::remove_file(ent.path());
                }
            }
        }
        for e in self.entries()? {
            if e.is_garbage() && self.remove_garbage(&e) {
                removed.push(e);
            }
        }
        Ok(removed)
    }

    /// Removes the files of a dead mapping of which nothing else is left
    /// ([`Entry::is_garbage`]): mount point, socket and record. True when the record was
    /// removed.
    fn remove_garbage(&self, e: &Entry) -> bool {
        let paths = Paths::new(&self.run_dir(), &e.record.token);
        let _ = std::fs::remove_dir(paths.mountpoint());
        let _ = std::fs::remove_file(paths.asok());
        std::fs::remove_file(&e.path).is_ok()
    }

    /// Removes whatever is left of the mapping named `paths.token`: loop bindings to its
    /// FUSE file (by path, and `bound`: the recorded device and file identity, which
    /// still match once the FUSE mount was lazily unmounted), the FUSE mount, its files.
    /// Returns what could not be undone.
    fn clean_leftovers(
        &self,
        paths: &Paths,
        bound: Option<(u32, loopdev::BindingId)>,
        keep_log: bool,
    ) -> Vec<String> {
        let mut errors = Vec::new();
        let file = paths.fuse_file();
        if let Ok(loops) = loopdev::list() {
            for l in loops.iter().filter(|l| {
                l.backing_file == file
                    || bound.is_some_and(|(n, b)| n == l.number && loopdev::is_bound_to(n, &b))
            }) {
                if let Err(e) = loopdev::detach(l.number) {
                    errors.push(chain(&e));
                }
            }
        }
        let mnt = paths.mountpoint();
        if is_mounted(&mnt) {
            match nix::mount::umount2(&mnt, nix::mount::MntFlags::MNT_DETACH) {
                Ok(()) | Err(nix::errno::Errno::EINVAL) => {}
                Err(e) => errors.push(format!("unmounting {}: {e}", mnt.display())),
            }
        }
        let _ = std::fs::remove_dir(&mnt);
        let _ = std::fs::remove_file(paths.record());
        let _ = std::fs::remove_file(paths.asok());
        let _ = std::fs::remove_file(paths.exit());
        if !keep_log {
            let _ = std::fs::remove_file(paths.log());
        }
        errors
    }

    /// The record of `m`. A mapping with a pid is that mapper's. One without (a dead
    /// mapping, as [`Mapper::list`] shows it) only ever matches a dead mapper's record,
    /// by its device or, once the loop device is no longer its own, by an empty device:
    /// never a live mapping that reuses the device number.
    fn find(&self, m: &Mapping) -> Result<Entry> {
        let mut candidates: Vec<Entry> = self
            .entries()?
            .into_iter()
            .filter(|e| {
                let r = &e.record;
                let device =
                    r.device == m.device || (m.device.as_os_str().is_empty() && !e.owns_device());
                device
                    && r.image_id == m.image_id
                    && r.pool == m.pool
                    && r.namespace == m.namespace
                    && match m.pid {
                        Some(pid) => r.pid == pid,
                        None => matches!(e.state, EntryState::Dead { .. }),
                    }
            })
            .collect();
        candidates.sort_by_key(|e| !e.owns_device());
        candidates
            .into_iter()
            .next()
            .ok_or_else(|| DriverError::Map {
                backend: Backend::Userspace,
                image: m.spec(),
                reason: format!(
                    "no userspace mapping of image id {} on {} (already unmapped?)",
                    m.image_id,
                    m.device.display()
                ),
            })
    }
}

/// The first match of a bare program name on `$PATH`.
fn which(program: &Path) -> Option<PathBuf> {
    if program.components().count() > 1 {
        return is_executable(program).then(|| program.to_path_buf());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| is_executable(p))
}

/// Reads the mapper's readiness line in a thread, so the wait can time out.
fn read_line_with_timeout(
    out: std::process::ChildStdout,
    timeout: Duration,
) -> std::result::Result<String, std::sync::mpsc::RecvTimeoutError> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    let _ = std::thread::Builder::new()
        .name("rbd-umap:ready".into())
        .spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(out.take(1 << 20)).read_line(&mut line);
            let _ = tx.send(line);
        });
    rx.recv_timeout(timeout)
}

impl Mapper for UserspaceMapper {
    fn backend(&self) -> Backend {
        Backend::Userspace
    }

    fn check_available(&self) -> Result<()> {
        let unavailable = |reason: String| DriverError::BackendUnavailable {
            backend: Backend::Userspace,
            reason,
        };
        match std::fs::metadata("/dev/fuse") {
            Ok(m) if m.file_type().is_char_device() => {}
            _ => {
                return Err(unavailable(
                    "/dev/fuse is missing (no FUSE in this kernel?)".into(),
                ));
            }
        }
        match std::fs::metadata("/dev/loop-control") {
            Ok(m) if m.file_type().is_char_device() => {}
            _ => {
                return Err(unavailable(
                    "/dev/loop-control is missing (no loop devices in this kernel?)".into(),
                ));
            }
        }
        if !nix::unistd::geteuid().is_root() {
            return Err(unavailable(
                "mounting FUSE and attaching loop devices needs root".into(),
            ));
        }
        self.umap_bin().map(|_| ())
    }

    fn map(&self, req: &MapRequest) -> Result<Mapping> {
        self.check_available()?;
        Self::validate(req)?;
        let bin = self.umap_bin()?;
        record::ensure_dir(&self.cfg.run_dir)?;
        let token = new_token();
        let paths = Paths::new(&self.run_dir(), &token);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(paths.log())
            .map_err(|e| DriverError::io(format!("creating {}", paths.log().display()), e))?;
        let serve = ServeRequest {
            request: req.clone(),
            run_dir: self.run_dir(),
            token: token.clone(),
            check_interval_ms: self.check_interval.map(|d| d.as_millis() as u64),
        };
        let body = serde_json::to_vec(&serve).map_err(|e| DriverError::CorruptState {
            path: paths.record(),
            source: e,
        })?;
        let mut child = Command::new(&bin)
            .arg("serve")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .map_err(|e| DriverError::Command {
                command: format!("{} serve", bin.display()),
                status: "could not start".into(),
                stderr: e.to_string(),
            })?;
        let pid = child.id();
        if let Some(mut stdin) = child.stdin.take() {
            // The mapper reads all of stdin before anything else; a failure shows as a
            // failed readiness below.
            let _ = stdin.write_all(&body);
        }
        let out = child.stdout.take().expect("piped");
        let line = read_line_with_timeout(out, self.map_timeout);
        let fail = |child: &mut std::process::Child, reason: String| -> DriverError {
            // Make sure it is gone, then undo what it left.
            let _ = child.kill();
            let _ = child.wait();
            let tail = record::log_tail(&paths, 5);
            let errors = self.clean_leftovers(&paths, None, false);
            let mut reason = reason;
            if !tail.is_empty() {
                reason.push_str(&format!("; mapper log:\n{tail}"));
            }
            if !errors.is_empty() {
                reason.push_str(&format!("; cleanup: {}", errors.join("; ")));
            }
            Self::map_err(req, reason)
        };
        let line = match line {
            Ok(l) => l,
            Err(_) => {
                let e = fail(&mut child, String::new());
                return Err(DriverError::Timeout {
                    what: format!("userspace map of {} (pid {pid}): {e}", req.spec()),
                    secs: self.map_timeout.as_secs(),
                });
            }
        };
        match serde_json::from_str::<Readiness>(line.trim()) {
            Ok(Readiness::Ready { mapping, .. }) => {
                // Reap it when it exits, so it never lingers as a zombie of ours.
                let _ = std::thread::Builder::new()
                    .name("rbd-umap:reaper".into())
                    .stack_size(64 * 1024)
                    .spawn(move || {
                        let _ = child.wait();
                    });
                Ok(mapping)
            }
            Ok(Readiness::Failed { error }) => {
                // It exits by itself after reporting; give it a moment, then make sure.
                let _ = procinfo::wait_gone(
                    pid,
                    procinfo::start_time(pid).unwrap_or(0),
                    Duration::from_secs(5),
                );
                Err(fail(&mut child, error))
            }
            Err(_) => {
                let status = child
                    .try_wait()
                    .ok()
                    .flatten()
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| "still running".into());
                Err(fail(
                    &mut child,
                    format!(
                        "the mapper did not report readiness ({status}); it said {:?}",
                        line.trim()
                    ),
                ))
            }
        }
    }

    fn unmap(&self, mapping: &Mapping, force: bool) -> Result<()> {
        let entry = match self.find(mapping) {
            Ok(e) => e,
            // A forced unmap racing the mapper's own teardown (a fenced mapper exits by
            // itself): the mapper removes its record as the last step, after the loop
            // device, the FUSE mount, the image and the connection, so no record of its
            // pid left means nothing of the mapping is left either.
            Err(e) => match mapping.pid {
                Some(pid) if force && !self.entries()?.iter().any(|x| x.record.pid == pid) => {
                    tracing::info!(
                        "{} on {}: mapper pid {pid} already tore the mapping down",
                        mapping.spec(),
                        mapping.device.display()
                    );
                    return Ok(());
                }
                _ => return Err(e),
            },
        };
        let r = &entry.record;
        let paths = Paths::new(&self.run_dir(), &r.token);
        let spec = r.mapping(None).spec();
        let n = r.loop_number();
        if matches!(entry.state, EntryState::Running | EntryState::Detaching) {
            if !force {
                if let Some(why) = n.and_then(|n| loopdev::in_use(n, &[r.pid])) {
                    return Err(DriverError::InUse {
                        volume: spec,
                        detail: why,
                    });
                }
                procinfo::signal(r.pid, r.start_time, nix::sys::signal::Signal::SIGTERM);
                if !procinfo::wait_gone(r.pid, r.start_time, self.unmap_timeout) {
                    let why = n
                        .and_then(|n| loopdev::in_use(n, &[r.pid]))
                        .unwrap_or_else(|| "see its log".into());
                    return Err(DriverError::Timeout {
                        what: format!(
                            "unmap of {} ({}): mapper pid {} is still running ({why}); it \
                             detaches once the device is closed, or use force",
                            spec,
                            r.device.display(),
                            r.pid
                        ),
                        secs: self.unmap_timeout.as_secs(),
                    });
                }
            } else {
                procinfo::signal(r.pid, r.start_time, nix::sys::signal::Signal::SIGUSR1);
                if !procinfo::wait_gone(r.pid, r.start_time, self.kill_wait) {
                    procinfo::signal(r.pid, r.start_time, nix::sys::signal::Signal::SIGKILL);
                    if !procinfo::wait_gone(r.pid, r.start_time, Duration::from_secs(5)) {
                        return Err(Self::map_err_spec(
                            &spec,
                            format!("mapper pid {} survives SIGKILL", r.pid),
                        ));
                    }
                }
            }
        } else if !force
            && matches!(
                entry.state,
                EntryState::Dead {
                    loop_bound: true,
                    ..
                }
            )
            && let Some(why) = n.and_then(|n| loopdev::in_use(n, &[]))
        {
            return Err(DriverError::InUse {
                volume: spec,
                detail: format!("{why} (its mapper pid {} is dead)", r.pid),
            });
        }
        let report = record::take_exit(&paths);
        let leftovers = self.clean_leftovers(&paths, n.zip(r.backing), true);
        let mut problems: Vec<String> = report
            .as_ref()
            .map(|x| x.errors.clone())
            .unwrap_or_default();
        problems.extend(leftovers);
        if problems.is_empty() {
            let _ = std::fs::remove_file(paths.log());
            return Ok(());
        }
        Err(Self::map_err_spec(
            &spec,
            format!(
                "unmapped {}, but: {} (log: {})",
                r.device.display(),
                problems.join("; "),
                paths.log().display()
            ),
        ))
    }

    fn list(&self) -> Result<Vec<Mapping>> {
        let mut out = Vec::new();
        for e in self.entries()? {
            match e.state {
                EntryState::Detaching => {}
                EntryState::Dead { .. } if e.is_garbage() => {
                    self.remove_garbage(&e);
                }
                _ => out.push(e.mapping()),
            }
        }
        Ok(out)
    }
}

impl UserspaceMapper {
    fn map_err_spec(spec: &str, reason: String) -> DriverError {
        DriverError::Map {
            backend: Backend::Userspace,
            image: spec.to_owned(),
            reason,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_is_found_next_to_a_test_binary() {
        let c = daemon::sibling_binary(Path::new("/x/target/debug/deps/userspace-123"));
        assert_eq!(
            c,
            vec![
                PathBuf::from("/x/target/debug/deps/rbd-umap"),
                PathBuf::from("/x/target/debug/rbd-umap")
            ]
        );
        let c = daemon::sibling_binary(Path::new("/usr/bin/rbdctl"));
        assert_eq!(c, vec![PathBuf::from("/usr/bin/rbd-umap")]);
        let m = UserspaceMapper::new(&MapperConfig {
            umap_bin: Some("/nonexistent/rbd-umap".into()),
            ..MapperConfig::default()
        });
        let e = m.umap_bin().unwrap_err();
        assert!(e.to_string().contains("/nonexistent/rbd-umap"), "{e}");
    }

    #[test]
    fn tokens_are_unique_and_valid() {
        let a = new_token();
        let b = new_token();
        assert_ne!(a, b);
        assert!(record::valid_token(&a), "{a}");
        // Fits the admin socket path limit under the default run dir.
        let p = Paths::new(Path::new("/run/rbd-volumes"), &a).asok();
        assert!(p.as_os_str().len() < 100, "{}", p.display());
    }

    #[test]
    fn stale_records_and_old_logs_are_cleaned() {
        let tmp = tempfile::tempdir().unwrap();
        let m = UserspaceMapper::new(&MapperConfig {
            run_dir: tmp.path().to_path_buf(),
            ..MapperConfig::default()
        });
        let dir = record::ensure_dir(tmp.path()).unwrap();
        let run = std::fs::canonicalize(tmp.path()).unwrap();
        // A record of a process that is gone, whose loop device and mount are gone too.
        let mut child = Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let paths = Paths::new(&run, "tdead");
        let rec = Record {
            version: record::RECORD_VERSION,
            token: "tdead".into(),
            pool: "rbd".into(),
            namespace: String::new(),
            image: "vol".into(),
            image_id: "abc123".into(),
            snap: None,
            read_only: false,
            exclusive: false,
            device: "/dev/loop250".into(),
            pid: dead,
            start_time: 1,
            client_addr: None,
            mountpoint: paths.mountpoint(),
            fuse_file: paths.fuse_file(),
            backing: None,
            size: 1 << 20,
            io_timeout_secs: 30,
            created: 0,
        };
        record::write_json(&paths.record(), &rec).unwrap();
        std::fs::create_dir(paths.mountpoint()).unwrap();
        // An old log and exit report without a record, and a fresh log.
        let old = std::time::SystemTime::now() - Duration::from_secs(2 * 24 * 3600);
        for f in ["told.log", "told.exit.json"] {
            let p = dir.join(f);
            std::fs::write(&p, "x").unwrap();
            std::fs::File::options()
                .write(true)
                .open(&p)
                .unwrap()
                .set_modified(old)
                .unwrap();
        }
        std::fs::write(dir.join("tnew.log"), "x").unwrap();

        let e = m.entries().unwrap();
        assert_eq!(e.len(), 1);
        assert!(e[0].is_garbage(), "{:?}", e[0].state);
        // list() drops garbage without reporting it; cleanup_stale() reports it.
        let removed = m.cleanup_stale().unwrap();
        assert_eq!(removed.len(), 1);
        assert_eq!(removed[0].record.token, "tdead");
        assert!(!paths.record().exists());
        assert!(!paths.mountpoint().exists());
        assert!(!dir.join("told.log").exists());
        assert!(!dir.join("told.exit.json").exists());
        assert!(dir.join("tnew.log").exists(), "fresh logs are kept");
        assert!(m.list().unwrap().is_empty());
    }

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape_mountinfo(r"/a\040b"), "/a b");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
        assert_eq!(unescape_mountinfo(r"/x\0"), r"/x\0");
        let mi = "\
36 25 0:52 / /run/umap/u1 rw,nosuid - fuse rbd-umap:rbd/v rw,user_id=0
37 25 7:3 / /run/umap/u1 rw - ext4 /dev/loop3 rw
38 25 0:53 / /run/a\\040b rw shared:1 - fuse rbd-umap:rbd/w rw
39 25 0:54 / /run/c rw - fuse.sshfs host:/x rw
";
        // The topmost mount wins; optional fields before the separator are skipped.
        let top = mount_at(mi, Path::new("/run/umap/u1")).unwrap();
        assert_eq!(top, ("ext4".to_string(), "/dev/loop3".to_string()));
        assert!(!is_mapper_fuse(&top));
        assert!(is_mapper_fuse(
            &mount_at(mi, Path::new("/run/a b")).unwrap()
        ));
        assert!(!is_mapper_fuse(&mount_at(mi, Path::new("/run/c")).unwrap()));
        assert_eq!(mount_at(mi, Path::new("/run/umap")), None);
    }

    #[test]
    fn bad_requests_are_rejected_before_anything_runs() {
        let req = MapRequest {
            pool: "rbd".into(),
            namespace: String::new(),
            image: "vol".into(),
            image_id: String::new(),
            snap: None,
            read_only: false,
            exclusive: false,
            auth: crate::mapper::CephAuth {
                conf: "/etc/ceph/ceph.conf".into(),
                id: "admin".into(),
                keyring: None,
            },
            options: Default::default(),
        };
        let e = UserspaceMapper::validate(&req).unwrap_err();
        assert!(e.to_string().contains("image id"), "{e}");
        let mut r2 = req.clone();
        r2.image_id = "../etc".into();
        assert!(UserspaceMapper::validate(&r2).is_err());
        let mut r3 = req.clone();
        r3.image_id = "10ab34cd".into();
        UserspaceMapper::validate(&r3).unwrap();
        r3.options.io_timeout_secs = Some(0);
        assert!(UserspaceMapper::validate(&r3).is_err());
    }
}
