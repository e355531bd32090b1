//! The FUSE side of the userspace mapper: one directory holding one file, `image`, whose
//! bytes are the block device's.
//!
//! Requests are served concurrently and without a thread hop per I/O: each read, write,
//! fsync or fallocate submits its I/O to the [`BlockBackend`] on the FUSE thread that
//! received it and polls the returned future once; the future's waker polls it again
//! where the completion is signalled (for RBD, librbd's completion thread) and sends the
//! FUSE reply from there. Every I/O is registered in a table with its deadline: a
//! watchdog thread fails it with `EIO` once the deadline passes, and [`Shared::fence`]
//! fails every registered I/O at once. Whichever comes first (completion, deadline,
//! fence) replies; the others find the reply gone. An abandoned I/O's future is kept
//! until the backend completes it (the backend must tolerate a late completion).
//!
//! Files are opened with `FOPEN_DIRECT_IO` (no FUSE page cache) and
//! `FOPEN_PARALLEL_DIRECT_WRITES`; the session asks for `FUSE_ASYNC_DIO` so the loop
//! device's asynchronous direct I/O stays asynchronous, and for a 1 MiB `max_write`.

use std::ffi::OsStr;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant, SystemTime};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, OpenAccMode, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, WriteFlags,
};
use tokio::sync::watch;

/// The name of the one file in the mount.
pub(crate) const FILE_NAME: &str = "image";
/// Its inode number.
pub(crate) const FILE_INO: INodeNo = INodeNo(2);
/// Largest FUSE write (and read) request we ask for.
pub(crate) const MAX_WRITE: u32 = 1 << 20;
/// How many asynchronous (background) requests the kernel may have outstanding.
const MAX_BACKGROUND: u16 = 256;
/// Attribute and entry cache lifetime.
const TTL: Duration = Duration::from_secs(1);

/// Why an I/O failed, as the backend reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum IoError {
    /// Fail this request with this errno.
    Errno(i32),
    /// Our client is fenced: fail this and every later request, and tear down.
    Blocklisted(String),
    /// The cluster did not answer (timed out, session lost): fail this request with
    /// `EIO`, and count it towards giving up ([`Shared::stalled_for`]).
    Unreachable,
}

/// An I/O in flight.
pub(crate) type IoFuture<T> = Pin<Box<dyn Future<Output = Result<T, IoError>> + Send>>;

/// The bytes of a completed read.
pub(crate) enum ReadBuf {
    /// Read into memory of our own (the test backends).
    #[cfg_attr(not(test), allow(dead_code))]
    Vec(Vec<u8>),
    /// The buffer librbd's reply arrived in (no copy).
    Buffer(rbd_core::Buffer),
}

impl std::ops::Deref for ReadBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            ReadBuf::Vec(v) => v,
            ReadBuf::Buffer(b) => b,
        }
    }
}

/// Where the bytes live. Methods submit at once and return the completion, which may be
/// polled from any thread.
pub(crate) trait BlockBackend: Send + Sync + 'static {
    /// Reads `len` bytes at `offset` (short only at the end of the device).
    fn read(&self, offset: u64, len: usize) -> IoFuture<ReadBuf>;
    /// Writes `data` at `offset` (copied before this returns); returns the bytes
    /// written.
    fn write(&self, offset: u64, data: &[u8]) -> IoFuture<usize>;
    /// Zeroes a range; whole backing objects in it may be deallocated (thin). Used for
    /// both FUSE hole punching and zero ranges: a punched hole must read back as zeros.
    fn write_zeroes(&self, offset: u64, len: u64) -> IoFuture<()>;
    /// Makes completed writes durable.
    fn flush(&self) -> IoFuture<()>;
}

/// Counters, for the log.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub(crate) reads: AtomicU64,
    pub(crate) writes: AtomicU64,
    pub(crate) bytes_read: AtomicU64,
    pub(crate) bytes_written: AtomicU64,
    pub(crate) flushes: AtomicU64,
    pub(crate) errors: AtomicU64,
    pub(crate) timeouts: AtomicU64,
    /// I/Os whose reply has not been sent yet.
    pub(crate) in_flight: AtomicU64,
    /// Backend futures not yet completed (including I/Os failed at their deadline or by
    /// the fence that the backend has not finished yet).
    pub(crate) outstanding: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Something registered that can be failed.
trait Pending: Send + Sync {
    fn fail(&self, errno: Errno);
}

/// One registered I/O: its unique id, its deadline, and how to fail it.
type Slot = (u64, Instant, Arc<dyn Pending>);

/// The table of registered I/Os: a slab of [`Slot`]s.
#[derive(Default)]
struct Table {
    fenced: bool,
    slots: Vec<Option<Slot>>,
    free: Vec<usize>,
    next_id: u64,
}

/// State shared by the filesystem, its I/Os, the watchdog and the mapper's main loop.
pub(crate) struct Shared {
    fence: watch::Sender<Option<String>>,
    fenced: AtomicBool,
    table: Mutex<Table>,
    pub(crate) stats: Stats,
    size: AtomicU64,
    timeout: Duration,
    /// Time base of `stalled_since`.
    epoch: Instant,
    /// When the oldest I/O that failed because the cluster did not answer (deadline
    /// passed, timed out, session lost) was submitted, with no I/O succeeding since: in
    /// milliseconds after `epoch`, plus one. 0 while healthy.
    stalled_since: AtomicU64,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("fenced", &self.fenced())
            .field("size", &self.size())
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Shared {
    /// A mapper of `size` bytes whose I/O must finish within `timeout`. Starts the
    /// deadline watchdog thread, which ends with the last reference.
    pub(crate) fn new(size: u64, timeout: Duration) -> Arc<Shared> {
        let shared = Arc::new(Shared {
            fence: watch::Sender::new(None),
            fenced: AtomicBool::new(false),
            table: Mutex::new(Table::default()),
            stats: Stats::default(),
            size: AtomicU64::new(size),
            timeout,
            epoch: Instant::now(),
            stalled_since: AtomicU64::new(0),
        });
        let weak = Arc::downgrade(&shared);
        let tick = (timeout / 20).clamp(Duration::from_millis(10), Duration::from_millis(100));
        let _ = std::thread::Builder::new()
            .name("rbd-umap:deadline".into())
            .stack_size(256 * 1024)
            .spawn(move || deadline_watchdog(weak, tick));
        shared
    }

    /// Fails every pending and future I/O with `EIO`. The first reason wins.
    pub(crate) fn fence(&self, reason: impl Into<String>) {
        let reason = reason.into();
        self.fence.send_if_modified(|cur| {
            if cur.is_none() {
                *cur = Some(reason);
                true
            } else {
                false
            }
        });
        self.fenced.store(true, Ordering::SeqCst);
        let victims: Vec<Arc<dyn Pending>> = {
            let mut t = lock(&self.table);
            t.fenced = true;
            let mut v = Vec::new();
            for i in 0..t.slots.len() {
                if let Some((_, _, op)) = t.slots[i].take() {
                    v.push(op);
                    t.free.push(i);
                }
            }
            v
        };
        for op in victims {
            op.fail(Errno::EIO);
        }
    }

    /// Why we are fenced, if we are.
    pub(crate) fn fenced(&self) -> Option<String> {
        if !self.fenced.load(Ordering::Relaxed) {
            return None;
        }
        self.fence.borrow().clone()
    }

    fn is_fenced(&self) -> bool {
        self.fenced.load(Ordering::Relaxed)
    }

    /// A receiver that sees the fence.
    pub(crate) fn subscribe(&self) -> watch::Receiver<Option<String>> {
        self.fence.subscribe()
    }

    /// The device size in bytes.
    pub(crate) fn size(&self) -> u64 {
        self.size.load(Ordering::Relaxed)
    }

    /// Sets the device size (after a resize of the image).
    pub(crate) fn set_size(&self, size: u64) {
        self.size.store(size, Ordering::Relaxed);
    }

    /// An I/O reached the cluster: it is not stalled.
    pub(crate) fn note_success(&self) {
        self.stalled_since.store(0, Ordering::SeqCst);
    }

    /// An I/O submitted at `submitted` failed because the cluster did not answer. Keeps
    /// the oldest such time until an I/O succeeds.
    pub(crate) fn note_unreachable(&self, submitted: Instant) {
        let ms = submitted.saturating_duration_since(self.epoch).as_millis() as u64 + 1;
        let _ = self
            .stalled_since
            .compare_exchange(0, ms, Ordering::SeqCst, Ordering::SeqCst);
    }

    /// How long I/O has been failing for want of the cluster, with no I/O succeeding
    /// since (measured from the submission of the oldest failed I/O); `None` while
    /// healthy.
    pub(crate) fn stalled_for(&self, now: Instant) -> Option<Duration> {
        match self.stalled_since.load(Ordering::SeqCst) {
            0 => None,
            ms => Some(now.saturating_duration_since(self.epoch + Duration::from_millis(ms - 1))),
        }
    }

    /// Reads the device's first block through `backend` like any I/O (with the
    /// deadline, counted as outstanding): a success clears [`Shared::stalled_for`].
    /// `done` gets whether it succeeded.
    pub(crate) fn probe<B: BlockBackend + ?Sized>(
        self: &Arc<Self>,
        backend: &B,
        done: impl FnOnce(bool) + Send + 'static,
    ) {
        let len = self.size().min(4096) as usize;
        if len == 0 {
            done(false);
            return;
        }
        self.submit(backend.read(0, len), move |r| done(r.is_ok()));
    }

    /// Registers an I/O; `None` once fenced.
    fn register(&self, op: Arc<dyn Pending>) -> Option<(usize, u64)> {
        let deadline = Instant::now() + self.timeout;
        let mut t = lock(&self.table);
        if t.fenced {
            return None;
        }
        t.next_id += 1;
        let id = t.next_id;
        let entry = Some((id, deadline, op));
        let key = match t.free.pop() {
            Some(k) => {
                t.slots[k] = entry;
                k
            }
            None => {
                t.slots.push(entry);
                t.slots.len() - 1
            }
        };
        Some((key, id))
    }

    /// Unregisters a completed I/O (if the deadline or the fence did not take it first).
    fn unregister(&self, key: usize, id: u64) {
        let mut t = lock(&self.table);
        if let Some(slot) = t.slots.get_mut(key)
            && slot.as_ref().is_some_and(|(i, _, _)| *i == id)
        {
            *slot = None;
            t.free.push(key);
        }
    }

    /// Takes the registered I/Os whose deadline has passed, with their deadlines.
    fn expired(&self, now: Instant) -> Vec<(Instant, Arc<dyn Pending>)> {
        let mut t = lock(&self.table);
        let mut v = Vec::new();
        for i in 0..t.slots.len() {
            if t.slots[i].as_ref().is_some_and(|(_, d, _)| *d <= now)
                && let Some((_, d, op)) = t.slots[i].take()
            {
                v.push((d, op));
                t.free.push(i);
            }
        }
        v
    }

    /// Submits `io` and arranges for `finish` to get its outcome exactly once: from the
    /// completion, the deadline, or the fence.
    fn submit<T: Send + 'static>(
        self: &Arc<Self>,
        io: IoFuture<T>,
        finish: impl FnOnce(Result<T, Errno>) + Send + 'static,
    ) {
        self.stats.outstanding.fetch_add(1, Ordering::Relaxed);
        self.stats.in_flight.fetch_add(1, Ordering::Relaxed);
        let op = Arc::new(Op {
            shared: Arc::downgrade(self),
            key: OnceLock::new(),
            state: Mutex::new(OpState {
                fut: Some(io),
                finish: Some(Box::new(finish)),
            }),
            submitted: Instant::now(),
        });
        match self.register(op.clone()) {
            Some(k) => {
                let _ = op.key.set(k);
                op.poll();
            }
            None => op.fail(Errno::EIO),
        }
    }
}

/// Fails I/Os past their deadline, every `tick`, until the [`Shared`] is gone.
fn deadline_watchdog(shared: Weak<Shared>, tick: Duration) {
    loop {
        std::thread::sleep(tick);
        let Some(s) = shared.upgrade() else { return };
        let now = Instant::now();
        let expired = s.expired(now);
        for (deadline, op) in expired {
            s.stats.timeouts.fetch_add(1, Ordering::Relaxed);
            s.note_unreachable(deadline.checked_sub(s.timeout).unwrap_or(deadline));
            op.fail(Errno::EIO);
        }
    }
}

/// What an I/O replies with.
type Finish<T> = Box<dyn FnOnce(Result<T, Errno>) + Send>;

struct OpState<T> {
    fut: Option<IoFuture<T>>,
    finish: Option<Finish<T>>,
}

/// One I/O: its future, its reply, and its place in the table.
struct Op<T> {
    shared: Weak<Shared>,
    key: OnceLock<(usize, u64)>,
    state: Mutex<OpState<T>>,
    submitted: Instant,
}

impl<T: Send + 'static> Op<T> {
    /// Polls the future; on completion, unregisters and replies.
    fn poll(self: &Arc<Self>) {
        let waker = Waker::from(self.clone());
        let mut st = lock(&self.state);
        let Some(fut) = st.fut.as_mut() else { return };
        let r = match fut.as_mut().poll(&mut Context::from_waker(&waker)) {
            Poll::Pending => return,
            Poll::Ready(r) => r,
        };
        st.fut = None;
        let finish = st.finish.take();
        drop(st);
        let Some(shared) = self.shared.upgrade() else {
            return;
        };
        shared.stats.outstanding.fetch_sub(1, Ordering::Relaxed);
        if let Some(&(key, id)) = self.key.get() {
            shared.unregister(key, id);
        }
        let r = match r {
            Ok(v) => {
                shared.note_success();
                Ok(v)
            }
            Err(IoError::Errno(e)) => {
                shared.stats.errors.fetch_add(1, Ordering::Relaxed);
                Err(Errno::from_i32(e))
            }
            Err(IoError::Unreachable) => {
                shared.stats.errors.fetch_add(1, Ordering::Relaxed);
                shared.note_unreachable(self.submitted);
                Err(Errno::EIO)
            }
            Err(IoError::Blocklisted(why)) => {
                shared.stats.errors.fetch_add(1, Ordering::Relaxed);
                shared.fence(why);
                Err(Errno::EIO)
            }
        };
        if let Some(f) = finish {
            shared.stats.in_flight.fetch_sub(1, Ordering::Relaxed);
            f(r);
        }
    }
}

impl<T> Drop for Op<T> {
    fn drop(&mut self) {
        let st = self.state.get_mut().unwrap_or_else(|p| p.into_inner());
        if st.fut.is_some()
            && let Some(s) = self.shared.upgrade()
        {
            s.stats.outstanding.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl<T: Send + 'static> Pending for Op<T> {
    fn fail(&self, errno: Errno) {
        let finish = lock(&self.state).finish.take();
        if let Some(f) = finish {
            if let Some(s) = self.shared.upgrade() {
                s.stats.in_flight.fetch_sub(1, Ordering::Relaxed);
            }
            f(Err(errno));
        }
    }
}

impl<T: Send + 'static> Wake for Op<T> {
    fn wake(self: Arc<Self>) {
        self.poll();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.poll();
    }
}

/// The filesystem.
pub(crate) struct ImageFs<B: BlockBackend> {
    backend: Arc<B>,
    shared: Arc<Shared>,
    read_only: bool,
    uid: u32,
    gid: u32,
    started: SystemTime,
}

impl<B: BlockBackend> ImageFs<B> {
    /// Serves `backend`.
    pub(crate) fn new(backend: Arc<B>, shared: Arc<Shared>, read_only: bool) -> Self {
        Self {
            backend,
            shared,
            read_only,
            uid: nix::unistd::geteuid().as_raw(),
            gid: nix::unistd::getegid().as_raw(),
            started: SystemTime::now(),
        }
    }

    fn attr(&self, ino: INodeNo) -> Option<FileAttr> {
        let (kind, perm, size, nlink) = match ino {
            INodeNo::ROOT => (FileType::Directory, 0o500, 0, 2),
            FILE_INO => (
                FileType::RegularFile,
                if self.read_only { 0o400 } else { 0o600 },
                self.shared.size(),
                1,
            ),
            _ => return None,
        };
        Some(FileAttr {
            ino,
            size,
            blocks: size.div_ceil(512),
            atime: self.started,
            mtime: self.started,
            ctime: self.started,
            crtime: self.started,
            kind,
            perm,
            nlink,
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        })
    }

    /// Clamps `[offset, offset+len)` to the device; `None` when it starts past the end.
    fn clamp(&self, offset: u64, len: u64) -> Option<u64> {
        let size = self.shared.size();
        (offset < size).then(|| len.min(size - offset))
    }
}

impl<B: BlockBackend> Filesystem for ImageFs<B> {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_write(MAX_WRITE);
        let _ = config.set_max_background(MAX_BACKGROUND);
        let _ = config.set_congestion_threshold(MAX_BACKGROUND * 3 / 4);
        // Asynchronous direct I/O keeps the loop device's requests concurrent.
        let wanted = InitFlags::FUSE_ASYNC_DIO | InitFlags::FUSE_MAX_PAGES;
        let _ = config.add_capabilities(wanted & config.capabilities());
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match (parent, name.to_str()) {
            (INodeNo::ROOT, Some(FILE_NAME)) => {
                let attr = self.attr(FILE_INO).expect("the file exists");
                reply.entry(&TTL, &attr, Generation(0));
            }
            _ => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.attr(ino) {
            Some(a) => reply.attr(&TTL, &a),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<fuser::TimeOrNow>,
        _mtime: Option<fuser::TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let Some(attr) = self.attr(ino) else {
            return reply.error(Errno::ENOENT);
        };
        // The size is the image's: resize the image, not the file. Times are ignored.
        if size.is_some_and(|s| s != attr.size) || mode.is_some() || uid.is_some() || gid.is_some()
        {
            return reply.error(Errno::EPERM);
        }
        reply.attr(&TTL, &attr);
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if ino != FILE_INO {
            return reply.error(Errno::EISDIR);
        }
        if self.read_only && flags.acc_mode() != OpenAccMode::O_RDONLY {
            return reply.error(Errno::EROFS);
        }
        if self.shared.is_fenced() {
            return reply.error(Errno::EIO);
        }
        reply.opened(
            FileHandle(0),
            FopenFlags::FOPEN_DIRECT_IO | FopenFlags::FOPEN_PARALLEL_DIRECT_WRITES,
        );
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        if ino != FILE_INO {
            return reply.error(Errno::EISDIR);
        }
        if self.shared.is_fenced() {
            return reply.error(Errno::EIO);
        }
        let Some(len) = self.clamp(offset, u64::from(size)) else {
            return reply.data(&[]);
        };
        self.shared.stats.reads.fetch_add(1, Ordering::Relaxed);
        let io = self.backend.read(offset, len as usize);
        let shared = self.shared.clone();
        self.shared.submit(io, move |r| match r {
            Ok(buf) => {
                shared
                    .stats
                    .bytes_read
                    .fetch_add(buf.len() as u64, Ordering::Relaxed);
                reply.data(&buf);
            }
            Err(e) => reply.error(e),
        });
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        if ino != FILE_INO {
            return reply.error(Errno::EISDIR);
        }
        if self.read_only {
            return reply.error(Errno::EROFS);
        }
        if self.shared.is_fenced() {
            return reply.error(Errno::EIO);
        }
        let Some(len) = self.clamp(offset, data.len() as u64) else {
            return reply.error(Errno::ENOSPC);
        };
        self.shared.stats.writes.fetch_add(1, Ordering::Relaxed);
        let io = self.backend.write(offset, &data[..len as usize]);
        let shared = self.shared.clone();
        self.shared.submit(io, move |r| match r {
            Ok(n) => {
                shared
                    .stats
                    .bytes_written
                    .fetch_add(n as u64, Ordering::Relaxed);
                reply.written(u32::try_from(n).unwrap_or(u32::MAX));
            }
            Err(e) => reply.error(e),
        });
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // close(2): nothing to do; durability is fsync's job.
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        if self.read_only {
            return reply.ok();
        }
        if self.shared.is_fenced() {
            return reply.error(Errno::EIO);
        }
        self.shared.stats.flushes.fetch_add(1, Ordering::Relaxed);
        let io = self.backend.flush();
        self.shared.submit(io, move |r| match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        });
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        if ino != FILE_INO {
            return reply.error(Errno::EISDIR);
        }
        if self.read_only {
            return reply.error(Errno::EROFS);
        }
        if self.shared.is_fenced() {
            return reply.error(Errno::EIO);
        }
        let keep = mode & libc::FALLOC_FL_KEEP_SIZE != 0;
        let op = mode & !libc::FALLOC_FL_KEEP_SIZE;
        let end = offset.saturating_add(length);
        if end > self.shared.size() && !keep {
            // Growing the file: resize the image instead.
            return reply.error(Errno::EOPNOTSUPP);
        }
        let Some(len) = self.clamp(offset, length) else {
            return reply.ok();
        };
        let io = match op {
            // Preallocation: thin-provisioned, nothing to do.
            0 => return reply.ok(),
            // A punched hole must read back as zeros, and the loop driver turns both
            // discards and write-zeroes requests into PUNCH_HOLE. librbd's discard skips
            // the unaligned edges of a range (rbd_discard_granularity_bytes), so those
            // would keep their old data: zero the range instead. rbd_aio_write_zeroes
            // still deallocates the whole objects it covers, so thin provisioning stays.
            libc::FALLOC_FL_PUNCH_HOLE if keep => self.backend.write_zeroes(offset, len),
            libc::FALLOC_FL_ZERO_RANGE => self.backend.write_zeroes(offset, len),
            _ => return reply.error(Errno::EOPNOTSUPP),
        };
        self.shared.submit(io, move |r| match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        });
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        if ino != INodeNo::ROOT {
            return reply.error(Errno::ENOTDIR);
        }
        let entries = [
            (INodeNo::ROOT, FileType::Directory, "."),
            (INodeNo::ROOT, FileType::Directory, ".."),
            (FILE_INO, FileType::RegularFile, FILE_NAME),
        ];
        for (i, (ino, kind, name)) in entries.iter().enumerate().skip(offset as usize) {
            if reply.add(*ino, (i + 1) as u64, *kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let blocks = self.shared.size() / 4096;
        reply.statfs(blocks, 0, 0, 2, 0, 4096, 255, 4096);
    }
}

#[cfg(test)]
mod tests {
    //! These serve a local sparse file through our FUSE layer and a real loop device: a
    //! test of the FUSE code (deadlines, fencing, concurrency, flags), not of Ceph.
    use super::*;
    use crate::mapper::loopdev::{self, AttachOptions, LoopDevice};
    use std::fs::File;
    use std::io::{Read, Seek, SeekFrom, Write};
    use std::os::unix::fs::{FileExt, OpenOptionsExt};
    use std::path::{Path, PathBuf};
    use std::sync::atomic::AtomicBool;
    use std::time::Instant;

    /// A local file as the backend, with an optional stall that makes I/O never finish.
    struct FileBackend {
        file: Arc<File>,
        stall: Arc<AtomicBool>,
        blocklisted: Arc<AtomicBool>,
        rt: tokio::runtime::Handle,
    }

    impl FileBackend {
        fn run<T: Send + 'static>(
            &self,
            f: impl FnOnce(&File) -> std::io::Result<T> + Send + 'static,
        ) -> IoFuture<T> {
            let file = self.file.clone();
            let stall = self.stall.load(Ordering::SeqCst);
            let bl = self.blocklisted.load(Ordering::SeqCst);
            let job = (!bl && !stall).then(|| self.rt.spawn_blocking(move || f(&file)));
            Box::pin(async move {
                if bl {
                    return Err(IoError::Blocklisted("test: blocklisted".into()));
                }
                let Some(job) = job else {
                    // Stalled: never completes.
                    return std::future::pending().await;
                };
                job.await
                    .map_err(|_| IoError::Errno(libc::EIO))?
                    .map_err(|e| IoError::Errno(e.raw_os_error().unwrap_or(libc::EIO)))
            })
        }
    }

    impl BlockBackend for FileBackend {
        fn read(&self, offset: u64, len: usize) -> IoFuture<ReadBuf> {
            self.run(move |f| {
                let mut buf = vec![0u8; len];
                let n = f.read_at(&mut buf, offset)?;
                buf.truncate(n);
                Ok(ReadBuf::Vec(buf))
            })
        }
        fn write(&self, offset: u64, data: &[u8]) -> IoFuture<usize> {
            let data = data.to_vec();
            self.run(move |f| f.write_all_at(&data, offset).map(|()| data.len()))
        }
        fn write_zeroes(&self, offset: u64, len: u64) -> IoFuture<()> {
            self.run(move |f| {
                nix::fcntl::fallocate(
                    std::os::fd::AsRawFd::as_raw_fd(f),
                    nix::fcntl::FallocateFlags::FALLOC_FL_PUNCH_HOLE
                        | nix::fcntl::FallocateFlags::FALLOC_FL_KEEP_SIZE,
                    offset as i64,
                    len as i64,
                )
                .map_err(std::io::Error::from)
            })
        }
        fn flush(&self) -> IoFuture<()> {
            self.run(|f| f.sync_data())
        }
    }

    /// A mounted FUSE session over a local file, plus a loop device on it; torn down on
    /// drop.
    struct Served {
        mnt: PathBuf,
        session: Option<fuser::BackgroundSession>,
        dev: Option<LoopDevice>,
        shared: Arc<Shared>,
        stall: Arc<AtomicBool>,
        blocklisted: Arc<AtomicBool>,
        _rt: tokio::runtime::Runtime,
        _dir: tempfile::TempDir,
    }

    impl Drop for Served {
        fn drop(&mut self) {
            self.shared.fence("test teardown");
            if let Some(d) = self.dev.take() {
                let _ = d.detach();
            }
            let _ = nix::mount::umount2(&self.mnt, nix::mount::MntFlags::MNT_DETACH);
            if let Some(s) = self.session.take() {
                let _ = s.join();
            }
        }
    }

    fn serve(size: u64, timeout: Duration, read_only: bool) -> Served {
        let dir = tempfile::tempdir_in("/var/tmp").unwrap();
        let backing = dir.path().join("backing.img");
        let f = File::create(&backing).unwrap();
        f.set_len(size).unwrap();
        drop(f);
        let file = Arc::new(
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&backing)
                .unwrap(),
        );
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_time()
            .build()
            .unwrap();
        let shared = Shared::new(size, timeout);
        let stall = Arc::new(AtomicBool::new(false));
        let blocklisted = Arc::new(AtomicBool::new(false));
        let fs = ImageFs::new(
            Arc::new(FileBackend {
                file,
                stall: stall.clone(),
                blocklisted: blocklisted.clone(),
                rt: rt.handle().clone(),
            }),
            shared.clone(),
            read_only,
        );
        let mut cfg = fuser::Config::default();
        cfg.mount_options = vec![
            fuser::MountOption::FSName("rbd-umap-test".into()),
            fuser::MountOption::Subtype("rbd-umap".into()),
        ];
        cfg.n_threads = Some(2);
        cfg.clone_fd = true;
        let session = fuser::Session::new(fs, &mnt, &cfg)
            .unwrap()
            .spawn()
            .unwrap();
        Served {
            mnt,
            session: Some(session),
            dev: None,
            shared,
            stall,
            blocklisted,
            _rt: rt,
            _dir: dir,
        }
    }

    impl Served {
        fn file(&self) -> PathBuf {
            self.mnt.join(FILE_NAME)
        }
        fn attach(&mut self, read_only: bool) -> PathBuf {
            let dev = LoopDevice::attach(
                &self.file(),
                &AttachOptions {
                    read_only,
                    direct_io: true,
                    require_direct_io: true,
                    autoclear: true,
                    block_size: 0,
                },
            )
            .unwrap();
            let p = dev.path();
            self.dev = Some(dev);
            p
        }
    }

    fn open_direct(p: &Path, write: bool) -> File {
        std::fs::OpenOptions::new()
            .read(true)
            .write(write)
            .custom_flags(libc::O_DIRECT)
            .open(p)
            .unwrap()
    }

    /// A page-aligned buffer for O_DIRECT.
    fn aligned(len: usize, fill: u8) -> (Vec<u8>, usize) {
        let v = vec![fill; len + 4096];
        let off = v.as_ptr().align_offset(4096);
        (v, off)
    }

    #[test]
    fn serves_a_file_through_fuse_and_loop_with_direct_io() {
        if !testkit::require_root() {
            return;
        }
        let mut s = serve(64 << 20, Duration::from_secs(10), false);
        let md = std::fs::metadata(s.file()).unwrap();
        assert_eq!(md.len(), 64 << 20);
        let names: Vec<_> = std::fs::read_dir(&s.mnt)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from(FILE_NAME)]);
        let dev = s.attach(false);
        let n = loopdev::parse_device(&dev).unwrap();
        assert_eq!(loopdev::direct_io(n), Some(true));
        // 1 MiB O_DIRECT writes at several offsets, read back through the device.
        let f = open_direct(&dev, true);
        for (i, off) in [0u64, 3 << 20, (64 << 20) - (1 << 20)]
            .into_iter()
            .enumerate()
        {
            let (buf, a) = aligned(1 << 20, 0x10 + i as u8);
            f.write_all_at(&buf[a..a + (1 << 20)], off).unwrap();
        }
        f.sync_all().unwrap();
        for (i, off) in [0u64, 3 << 20, (64 << 20) - (1 << 20)]
            .into_iter()
            .enumerate()
        {
            let (mut buf, a) = aligned(1 << 20, 0);
            f.read_exact_at(&mut buf[a..a + (1 << 20)], off).unwrap();
            assert!(buf[a..a + (1 << 20)].iter().all(|&b| b == 0x10 + i as u8));
        }
        // Large requests were not split below our max_write by FUSE.
        assert!(s.shared.stats.bytes_written.load(Ordering::Relaxed) >= 3 << 20);
        assert!(s.shared.stats.writes.load(Ordering::Relaxed) <= 3 * 4);
        // Reads past the end are EOF; writes past the end fail.
        let mut raw = File::open(s.file()).unwrap();
        raw.seek(SeekFrom::Start(64 << 20)).unwrap();
        let mut b = [0u8; 16];
        assert_eq!(raw.read(&mut b).unwrap(), 0);
        let w = std::fs::OpenOptions::new()
            .write(true)
            .open(s.file())
            .unwrap();
        assert!(w.write_at(&[1], 64 << 20).is_err());
        // Truncating is refused.
        assert!(w.set_len(1).is_err());
    }

    #[test]
    fn many_concurrent_requests_are_in_flight_at_once() {
        if !testkit::require_root() {
            return;
        }
        let mut s = serve(16 << 20, Duration::from_secs(10), false);
        let dev = s.attach(false);
        // Stall the backend, issue 16 concurrent direct reads, and see them all pending.
        s.stall.store(true, Ordering::SeqCst);
        let handles: Vec<_> = (0..16u64)
            .map(|i| {
                let dev = dev.clone();
                std::thread::spawn(move || {
                    let f = open_direct(&dev, false);
                    let (mut buf, a) = aligned(4096, 0);
                    f.read_exact_at(&mut buf[a..a + 4096], i * 65536)
                })
            })
            .collect();
        let deadline = Instant::now() + Duration::from_secs(5);
        while s.shared.stats.in_flight.load(Ordering::Relaxed) < 16 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let peak = s.shared.stats.in_flight.load(Ordering::Relaxed);
        assert!(peak >= 16, "only {peak} requests in flight at once");
        s.stall.store(false, Ordering::SeqCst);
        s.shared.fence("release the stalled reads");
        for h in handles {
            let e = h.join().unwrap().unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
        }
    }

    #[test]
    fn a_stalled_io_fails_with_eio_at_its_deadline() {
        if !testkit::require_root() {
            return;
        }
        let mut s = serve(8 << 20, Duration::from_millis(1500), false);
        let dev = s.attach(false);
        s.stall.store(true, Ordering::SeqCst);
        let t = Instant::now();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let f = open_direct(&dev, true);
            let (buf, a) = aligned(4096, 7);
            let _ = tx.send(f.write_all_at(&buf[a..a + 4096], 0));
        });
        let r = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("the write must not hang");
        let e = r.unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
        let took = t.elapsed();
        assert!(took >= Duration::from_millis(1400), "{took:?}");
        assert!(s.shared.stats.timeouts.load(Ordering::Relaxed) >= 1);
        assert!(
            s.shared.fenced().is_none(),
            "a timeout alone does not fence"
        );
        // It counts towards giving up, from the failed I/O's submission.
        let stalled = s.shared.stalled_for(Instant::now()).expect("stalled");
        assert!(stalled >= Duration::from_millis(1400), "{stalled:?}");
        // The device works again once the backend does, and the stall is over.
        s.stall.store(false, Ordering::SeqCst);
        let f = open_direct(&s.dev.as_ref().unwrap().path(), true);
        let (buf, a) = aligned(4096, 8);
        f.write_all_at(&buf[a..a + 4096], 0).unwrap();
        assert_eq!(s.shared.stalled_for(Instant::now()), None);
    }

    #[test]
    fn blocklisted_backend_fences_everything() {
        if !testkit::require_root() {
            return;
        }
        let mut s = serve(8 << 20, Duration::from_secs(30), false);
        let dev = s.attach(false);
        let mut fence = s.shared.subscribe();
        // One request stalls; the next one reports "blocklisted".
        s.stall.store(true, Ordering::SeqCst);
        let d2 = dev.clone();
        let stalled = std::thread::spawn(move || {
            let f = open_direct(&d2, false);
            let (mut buf, a) = aligned(4096, 0);
            f.read_exact_at(&mut buf[a..a + 4096], 0)
        });
        std::thread::sleep(Duration::from_millis(200));
        s.stall.store(false, Ordering::SeqCst);
        s.blocklisted.store(true, Ordering::SeqCst);
        let t = Instant::now();
        let f = open_direct(&dev, true);
        let (buf, a) = aligned(4096, 1);
        let e = f.write_all_at(&buf[a..a + 4096], 4096).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EIO));
        // The stalled read fails at once too, far before its 30 s deadline.
        let e = stalled.join().unwrap().unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EIO));
        assert!(t.elapsed() < Duration::from_secs(5));
        assert!(fence.borrow_and_update().is_some());
        // New I/O fails without reaching the backend.
        s.blocklisted.store(false, Ordering::SeqCst);
        let (mut buf, a) = aligned(4096, 0);
        assert!(f.read_exact_at(&mut buf[a..a + 4096], 0).is_err());
    }

    #[test]
    fn read_only_file_refuses_writes() {
        if !testkit::require_root() {
            return;
        }
        let mut s = serve(4 << 20, Duration::from_secs(10), true);
        let e = std::fs::OpenOptions::new()
            .write(true)
            .open(s.file())
            .unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{e}");
        let dev = s.attach(true);
        let n = loopdev::parse_device(&dev).unwrap();
        assert_eq!(loopdev::read_only(n), Some(true));
        let f = open_direct(&dev, false);
        let (mut buf, a) = aligned(4096, 1);
        f.read_exact_at(&mut buf[a..a + 4096], 0).unwrap();
        assert!(buf[a..a + 4096].iter().all(|&b| b == 0));
        if let Ok(mut w) = std::fs::OpenOptions::new().write(true).open(&dev) {
            assert!(
                w.write_all(&[0u8; 4096])
                    .and_then(|()| w.sync_all())
                    .is_err()
            );
        }
    }
}
