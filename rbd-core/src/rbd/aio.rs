//! Asynchronous image I/O over librbd's `rbd_aio_*` functions, as runtime-agnostic
//! futures ([`AioFuture`]) that work under tokio (multi-threaded or not) without
//! `spawn_blocking`, and from plain threads with [`AioFuture::wait`].
//!
//! ```no_run
//! # async fn demo(image: &rbd_core::Image) -> rbd_core::Result<()> {
//! let n = image.aio_write(0, vec![7u8; 4096]).await?;
//! assert_eq!(n, 4096);
//! let data = image.aio_read(0, vec![0u8; 4096]).await?;
//! assert!(data.iter().all(|&b| b == 7));
//! image.aio_flush().await?;
//! # Ok(()) }
//! ```
//!
//! Many operations may be in flight at once on one [`Image`] (it is `Sync`): start them
//! all, then await them, e.g. with `futures::future::join_all` or a `JoinSet`.
//!
//! # Zero-copy I/O
//!
//! librbd's C API copies every byte once: `aio_write` copies the data into librbd's own
//! buffer, and `aio_read` copies the reply into the caller's. [`Image::aio_write_buffer`]
//! and [`Image::aio_read_buffer`] move a [`Buffer`] instead (librbd's C++ bufferlist API,
//! through rbd-core's shim): a write shares the caller's bytes with librbd, and a read
//! resolves to the bytes the reply arrived in. For large requests this is the difference
//! that matters (BENCHMARKS.md has the figures); the semantics are the same otherwise.
//!
//! # Ownership and cancellation
//!
//! * The operation is submitted when the `aio_*` method returns; the future only reports
//!   the result. Dropping it does **not** cancel the I/O (librbd cannot), it just
//!   discards the result.
//! * The buffer belongs to the operation until librbd completes it: `aio_read` takes a
//!   `Vec<u8>` and gives it back, `aio_write` takes its data by value.
//! * Each operation holds a reference to the image's C handle, so the future is
//!   `'static` and the handle is closed only after the last operation has completed, even
//!   if the [`Image`] was dropped first.
//! * Dropping a future before completion is safe: its buffer and image reference are
//!   parked with the operation and released by a reaper thread once librbd completes it,
//!   never earlier (no use-after-free) and never later (no leak).
//! * librbd calls our completion callback on one of its own threads. The callback only
//!   records the result, releases the completion and wakes the task; anything that could
//!   close the image or shut the connection down (dropping the last reference) happens on
//!   the polling thread or on the reaper, never on librbd's thread (where `rbd_close`
//!   would wait for itself).
//!
//! # Checks, limits and timeouts
//!
//! Ranges are checked as for the synchronous calls ([`crate::rbd::io`]): a write,
//! discard or write-zeroes past the end fails with `InvalidInput` before anything is
//! sent, and a read that runs past the end is short. Writes ask librbd for the image's
//! size every time (`rbd_get_size`). Reads inside the size this handle last saw do not:
//! the handle forgets that size whenever librbd announces a change of the image (its
//! update watch, called before a resize by another client returns there), so a read
//! still sees every resize. Requests larger than
//! [`Image::max_request_size`] are split into several librbd requests behind one future.
//! Errors that librbd reports (e.g. `ReadOnly` for writes through a read-only or snapshot
//! handle) arrive through the future. Every operation is bounded by the connection's OSD
//! op timeout ([`crate::Timeouts::osd_op`]): a blocklisted client's I/O fails with
//! `Blocklisted` or `Timeout` instead of hanging.

use std::ffi::c_void;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, mpsc};
use std::task::{Poll, Waker};

use crate::error::{Context, Error, Result};
use crate::rbd::Image;
use crate::rbd::buffer::{Buffer, RawList};
use crate::rbd::image::ImageHandle;
use crate::rbd::io::{IoFlags, split, split_count};
use crate::sys;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What a future dropped before completion leaves behind for the reaper.
// The fields are never read: they are held only to be dropped on the reaper thread.
#[allow(dead_code)]
struct Parked {
    image: Option<Arc<ImageHandle>>,
    data: Data,
}

/// The memory an operation lends librbd until it completes.
enum Data {
    None,
    /// The caller's buffer (C API reads and writes).
    Vec(Vec<u8>),
    /// The output list of a zero-copy read made of one librbd request (the usual case:
    /// no `Vec` to allocate).
    List(RawList),
    /// One output list per librbd request (zero-copy reads split into several).
    Lists(Vec<RawList>),
}

/// The reaper: one thread, started on first need, that drops what abandoned operations
/// parked. `None` if it could not be started (then parked items are leaked, never freed
/// early).
fn reaper() -> Option<&'static mpsc::Sender<Parked>> {
    static REAPER: OnceLock<Option<mpsc::Sender<Parked>>> = OnceLock::new();
    REAPER
        .get_or_init(|| {
            let (tx, rx) = mpsc::channel::<Parked>();
            std::thread::Builder::new()
                .name("rbd-core:aio-reaper".into())
                .spawn(move || {
                    for parked in rx {
                        drop(parked);
                    }
                })
                .ok()
                .map(|_| tx)
        })
        .as_ref()
}

/// The mutable state of one operation, shared by its future and its completions.
#[derive(Default)]
struct Slot {
    /// Completions submitted and not yet fired.
    pending: usize,
    /// Set when the last completion fired.
    done: bool,
    /// The first error (positive errno).
    errno: Option<i32>,
    /// For reads: where the first short piece ended (relative to the start).
    short_at: Option<u64>,
    waker: Option<Waker>,
    /// Set by a future dropped before `done`; taken by the last completion.
    parked: Option<Parked>,
}

/// One operation (one future), possibly made of several librbd requests.
struct Op {
    slot: Mutex<Slot>,
    /// A read (a short result is not an error).
    read: bool,
    /// The whole operation's length (1 for a flush), which is the piece's length when
    /// it is one librbd request ([`aio_done_whole`]).
    len: u64,
}

impl Op {
    fn new(pending: usize, read: bool, len: u64) -> Op {
        Op {
            slot: Mutex::new(Slot {
                pending,
                ..Slot::default()
            }),
            read,
            len,
        }
    }

    /// Records one piece's result. Runs on librbd's callback thread: light work only.
    fn complete_piece(&self, rel_off: u64, len: u64, ret: isize) {
        let read = self.read;
        let (waker, parked) = {
            let mut s = lock(&self.slot);
            if read && rel_off > 0 && ret == -(libc::EINVAL as isize) {
                // librbd refuses a read that starts at or past the image's end with
                // EINVAL: a later piece of a read that the image's end (which may have
                // moved since we checked it) cuts short. The read ends where it starts.
                s.short_at = Some(s.short_at.map_or(rel_off, |e| e.min(rel_off)));
            } else if ret < 0 {
                if s.errno.is_none() {
                    s.errno = Some(i32::try_from(-(ret as i64)).unwrap_or(libc::EIO));
                }
            } else if read && (ret as u64) < len {
                let end = rel_off + ret as u64;
                s.short_at = Some(s.short_at.map_or(end, |e| e.min(end)));
            }
            s.pending -= 1;
            if s.pending > 0 {
                return;
            }
            s.done = true;
            (s.waker.take(), s.parked.take())
        };
        if let Some(w) = waker {
            w.wake();
        }
        if let Some(p) = parked {
            // The future is gone: hand its image reference and buffer to the reaper (an
            // mpsc send; no drop of the last image reference on this thread).
            match reaper() {
                Some(tx) => {
                    if let Err(mpsc::SendError(p)) = tx.send(p) {
                        std::mem::forget(p);
                    }
                }
                None => std::mem::forget(p),
            }
        }
    }
}

/// What the completion of one librbd request of a split operation carries through its
/// `void *` argument.
struct Piece {
    op: Arc<Op>,
    rel_off: u64,
    len: u64,
}

/// Takes a completion's return value and releases the completion.
///
/// # Safety
/// `comp` is the live completion of the running callback, released nowhere else.
unsafe fn take_return_value(comp: sys::rbd_completion_t) -> isize {
    // SAFETY: `comp` is this callback's live completion (caller's contract).
    let ret = unsafe { sys::rbd_aio_get_return_value(comp) };
    // SAFETY: released once, here; librbd allows releasing a completion from its own
    // callback (it holds its own reference until the callback returns), as rbd-nbd and
    // qemu do.
    unsafe { sys::rbd_aio_release(comp) };
    ret
}

/// `rbd_callback_t` of a split operation: one of its librbd requests completed.
unsafe extern "C" fn aio_done_piece(comp: sys::rbd_completion_t, arg: *mut c_void) {
    let _ = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: `arg` is the Box<Piece> leaked when this completion was created; librbd
        // calls this exactly once per completion, so it is taken back exactly once.
        let piece = unsafe { Box::from_raw(arg.cast::<Piece>()) };
        // SAFETY: this callback's completion, released only here.
        let ret = unsafe { take_return_value(comp) };
        piece.op.complete_piece(piece.rel_off, piece.len, ret);
    }));
}

/// `rbd_callback_t` of an operation made of one librbd request (most are): its argument
/// is the operation itself, one `Arc<Op>` reference, so no per-request box is needed.
unsafe extern "C" fn aio_done_whole(comp: sys::rbd_completion_t, arg: *mut c_void) {
    let _ = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: `arg` is the reference leaked with `Arc::into_raw` when this completion
        // was created; librbd calls this exactly once per completion, so it is taken back
        // exactly once.
        let op = unsafe { Arc::from_raw(arg.cast_const().cast::<Op>()) };
        // SAFETY: this callback's completion, released only here.
        let ret = unsafe { take_return_value(comp) };
        op.complete_piece(0, op.len, ret);
    }));
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Read,
    Write,
    /// Read into bufferlists (`librbd::Image::aio_read2`, through the shim).
    ReadList,
    /// Write from a bufferlist (`librbd::Image::aio_write2`, through the shim).
    WriteList,
    Discard,
    WriteZeroes,
    Flush,
}

impl Kind {
    fn c_name(self) -> &'static str {
        match self {
            Kind::Read => "rbd_aio_read2",
            Kind::Write => "rbd_aio_write2",
            Kind::ReadList => "librbd::Image::aio_read2",
            Kind::WriteList => "librbd::Image::aio_write2",
            Kind::Discard => "rbd_aio_discard",
            Kind::WriteZeroes => "rbd_aio_write_zeroes",
            Kind::Flush => "rbd_aio_flush",
        }
    }
}

struct Running {
    op: Arc<Op>,
    /// Keeps the C handle open until completion (parked if the future goes first).
    image: Option<Arc<ImageHandle>>,
    /// The memory librbd reads into or writes from; untouched until completion.
    data: Data,
    kind: Kind,
    /// Bytes requested (after clipping reads at the end of the image).
    len: u64,
}

enum State {
    /// Resolved without going to librbd (bad input, empty request).
    Ready(Option<Result<(Data, u64)>>),
    Running(Running),
    Done,
}

/// The future of an asynchronous image operation ([`Image::aio_read`] and friends).
///
/// `Send + 'static` (it holds its own reference to the image's C handle) and `Unpin`.
/// Resolves to the operation's result; see the [module docs](self) for what dropping it
/// early does (the I/O still happens; nothing is freed before librbd is done).
#[must_use = "the I/O is submitted already; the future only reports its result"]
pub struct AioFuture<T> {
    state: State,
    finish: Finish<T>,
}

/// Turns a completed operation's memory and length into the future's value.
type Finish<T> = fn(Data, u64) -> Result<T>;

impl<T> std::fmt::Debug for AioFuture<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = match &self.state {
            State::Ready(_) => "ready",
            State::Running(r) if lock(&r.op.slot).done => "complete",
            State::Running(_) => "in flight",
            State::Done => "done",
        };
        f.debug_struct("AioFuture").field("state", &s).finish()
    }
}

impl<T> AioFuture<T> {
    fn ready(r: Result<(Data, u64)>, finish: Finish<T>) -> Self {
        Self {
            state: State::Ready(Some(r)),
            finish,
        }
    }

    /// Blocks the calling thread until the operation completes. Not from async code:
    /// `.await` the future there.
    pub fn wait(self) -> Result<T> {
        futures::executor::block_on(self)
    }

    /// True once librbd has completed the operation (`poll` would return `Ready`).
    pub fn is_complete(&self) -> bool {
        match &self.state {
            State::Ready(_) => true,
            State::Running(r) => lock(&r.op.slot).done,
            State::Done => false,
        }
    }
}

impl<T> Future for AioFuture<T> {
    type Output = Result<T>;

    fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let outcome = match &mut this.state {
            State::Ready(r) => r
                .take()
                .unwrap_or_else(|| Err(Error::from_errno("aio", libc::EINVAL, Context::none()))),
            State::Running(run) => {
                let (errno, short_at) = {
                    let mut s = lock(&run.op.slot);
                    if !s.done {
                        match &s.waker {
                            Some(w) if w.will_wake(cx.waker()) => {}
                            _ => s.waker = Some(cx.waker().clone()),
                        }
                        return Poll::Pending;
                    }
                    (s.errno, s.short_at)
                };
                if run.op.read && (short_at.is_some() || errno == Some(libc::EINVAL)) {
                    // The image may have shrunk below the size hint this read trusted:
                    // ask librbd for the size next time.
                    if let Some(h) = &run.image {
                        h.forget_size_hint();
                    }
                }
                match errno {
                    Some(e) => {
                        let ctx = run.image.as_ref().map_or_else(Context::none, |h| h.ctx());
                        Err(Error::from_errno(run.kind.c_name(), e, ctx))
                    }
                    None => Ok((
                        std::mem::replace(&mut run.data, Data::None),
                        short_at.unwrap_or(run.len).min(run.len),
                    )),
                }
            }
            State::Done => panic!("AioFuture polled after it completed"),
        };
        // Completed: the image reference is released here, on the polling thread.
        this.state = State::Done;
        Poll::Ready(outcome.and_then(|(data, n)| (this.finish)(data, n)))
    }
}

impl<T> Drop for AioFuture<T> {
    fn drop(&mut self) {
        let State::Running(run) = &mut self.state else {
            return;
        };
        // Make sure the reaper exists before parking anything for it (never start a
        // thread from librbd's callback).
        let reaper_ok = reaper().is_some();
        let mut s = lock(&run.op.slot);
        if s.done {
            return; // librbd is finished with everything: drop normally, here.
        }
        let parked = Parked {
            image: run.image.take(),
            data: std::mem::replace(&mut run.data, Data::None),
        };
        if reaper_ok {
            s.parked = Some(parked);
        } else {
            // Nowhere to release them safely: leak rather than free under librbd.
            std::mem::forget(parked);
        }
    }
}

fn into_vec(data: Data) -> Vec<u8> {
    match data {
        Data::Vec(v) => v,
        _ => Vec::new(),
    }
}

fn out_vec(data: Data, n: u64) -> Result<Vec<u8>> {
    let mut b = into_vec(data);
    b.truncate(n as usize);
    Ok(b)
}

fn out_buf(data: Data, _: u64) -> Result<Vec<u8>> {
    Ok(into_vec(data))
}

fn out_len(_: Data, n: u64) -> Result<usize> {
    Ok(n as usize)
}

fn out_unit(_: Data, _: u64) -> Result<()> {
    Ok(())
}

/// The pieces' output lists, joined in order (sharing their segments) and cut at `n`, the
/// end of the first short piece if any.
fn out_buffer(data: Data, n: u64) -> Result<Buffer> {
    let mut lists = match data {
        Data::List(l) => {
            let mut b = Buffer::from_list(l)?;
            b.truncate(n as usize);
            return Ok(b);
        }
        Data::Lists(l) => l.into_iter(),
        _ => Vec::new().into_iter(),
    };
    let Some(mut first) = lists.next() else {
        return Buffer::zeroed(0);
    };
    for mut l in lists {
        first.append(&mut l)?;
    }
    let mut b = Buffer::from_list(first)?;
    b.truncate(n as usize);
    Ok(b)
}

/// A completion callback (`rbd_callback_t`).
type Callback = unsafe extern "C" fn(sys::rbd_completion_t, *mut c_void);

/// What [`Image::aio_start`] hands librbd.
enum Payload<'a> {
    None,
    Vec(Vec<u8>),
    /// A fresh output list per piece (zero-copy reads).
    ReadLists,
    /// The caller's list (zero-copy writes): librbd takes its own references.
    WriteList(&'a RawList),
}

impl Image {
    /// How much of `[offset, offset + len)` (`len > 0`) a read gets, as
    /// [`Image::clip_read`] with the image's size, but without asking librbd for the size
    /// (`rbd_get_size`, which takes librbd's locks and costs a few hundred instructions
    /// per request) when the range lies inside the size hint
    /// ([`ImageHandle::size_hint`](crate::rbd::image::ImageHandle::size_hint)): the hint
    /// is forgotten as soon as librbd learns of a change of the image. Any other range
    /// asks librbd. Should the image still shrink under a read in flight, librbd clips it
    /// (short) or fails it with `EINVAL` (`InvalidInput`), as it does without the hint.
    fn read_len(&self, offset: u64, len: u64) -> Result<u64> {
        let hint = self.handle.size_hint();
        if offset.checked_add(len).is_some_and(|end| end <= hint) {
            return Ok(len);
        }
        let size = self.size()?;
        self.clip_read(offset, len, size)
    }

    /// Reads `buf.len()` bytes at `offset` (`rbd_aio_read2`); resolves to `buf`,
    /// truncated to the bytes read (fewer only when the image ends first).
    ///
    /// Fails with `InvalidInput` when `offset` is at or past the end (and `buf` is not
    /// empty).
    pub fn aio_read(&self, offset: u64, buf: Vec<u8>) -> AioFuture<Vec<u8>> {
        self.aio_read_with(offset, buf, IoFlags::empty())
    }

    /// Like [`Image::aio_read`], with hints for the OSD (`rbd_aio_read2`'s `op_flags`).
    pub fn aio_read_with(&self, offset: u64, buf: Vec<u8>, flags: IoFlags) -> AioFuture<Vec<u8>> {
        if buf.is_empty() {
            return AioFuture::ready(Ok((Data::Vec(buf), 0)), out_vec);
        }
        let len = match self.read_len(offset, buf.len() as u64) {
            Ok(l) => l,
            Err(e) => return AioFuture::ready(Err(e), out_vec),
        };
        self.aio_start(Kind::Read, offset, len, Payload::Vec(buf), flags, out_vec)
    }

    /// Writes all of `data` at `offset` (`rbd_aio_write2`); resolves to `data.len()`.
    ///
    /// The range must lie inside the image, else it fails with `InvalidInput` and writes
    /// nothing. Through a read-only or snapshot handle it fails with `ReadOnly`.
    pub fn aio_write(&self, offset: u64, data: Vec<u8>) -> AioFuture<usize> {
        self.aio_write_with(offset, data, IoFlags::empty())
    }

    /// Like [`Image::aio_write`], with hints for the OSD (`rbd_aio_write2`'s `op_flags`).
    pub fn aio_write_with(&self, offset: u64, data: Vec<u8>, flags: IoFlags) -> AioFuture<usize> {
        self.aio_write_impl(offset, data, flags, out_len)
    }

    /// Like [`Image::aio_write`], but resolves to the data buffer itself, so a caller
    /// with a buffer pool can reuse it (`rbd_aio_write2`).
    pub fn aio_write_buf(&self, offset: u64, data: Vec<u8>) -> AioFuture<Vec<u8>> {
        self.aio_write_buf_with(offset, data, IoFlags::empty())
    }

    /// Like [`Image::aio_write_buf`], with hints for the OSD (`rbd_aio_write2`'s
    /// `op_flags`).
    pub fn aio_write_buf_with(
        &self,
        offset: u64,
        data: Vec<u8>,
        flags: IoFlags,
    ) -> AioFuture<Vec<u8>> {
        self.aio_write_impl(offset, data, flags, out_buf)
    }

    fn aio_write_impl<T>(
        &self,
        offset: u64,
        data: Vec<u8>,
        flags: IoFlags,
        finish: Finish<T>,
    ) -> AioFuture<T> {
        let len = data.len() as u64;
        if len == 0 {
            return AioFuture::ready(Ok((Data::Vec(data), 0)), finish);
        }
        if let Err(e) = self
            .size()
            .and_then(|size| self.check_write_range("write range", offset, len, size))
        {
            return AioFuture::ready(Err(e), finish);
        }
        self.aio_start(Kind::Write, offset, len, Payload::Vec(data), flags, finish)
    }

    /// Reads `len` bytes at `offset` without copying them: resolves to the [`Buffer`] the
    /// OSD's reply arrived in (`librbd::Image::aio_read2`, through rbd-core's C++ shim),
    /// cut to the bytes read (fewer only when the image ends first).
    ///
    /// A read inside one object is zero-copy; one that spans objects arrives in several
    /// pieces, which are copied once into one contiguous buffer. Fails with
    /// `InvalidInput` when `offset` is at or past the end (and `len` is not 0).
    pub fn aio_read_buffer(&self, offset: u64, len: usize) -> AioFuture<Buffer> {
        self.aio_read_buffer_with(offset, len, IoFlags::empty())
    }

    /// Like [`Image::aio_read_buffer`], with hints for the OSD (`aio_read2`'s `op_flags`).
    pub fn aio_read_buffer_with(
        &self,
        offset: u64,
        len: usize,
        flags: IoFlags,
    ) -> AioFuture<Buffer> {
        if len == 0 {
            return AioFuture::ready(Ok((Data::None, 0)), out_buffer);
        }
        if len > crate::rbd::buffer::MAX_BUFFER_LEN {
            return AioFuture::ready(
                Err(Error::invalid(
                    "read length",
                    len.to_string(),
                    format!(
                        "a Buffer holds at most {} bytes",
                        crate::rbd::buffer::MAX_BUFFER_LEN
                    ),
                )),
                out_buffer,
            );
        }
        let len = match self.read_len(offset, len as u64) {
            Ok(l) => l,
            Err(e) => return AioFuture::ready(Err(e), out_buffer),
        };
        self.aio_start(
            Kind::ReadList,
            offset,
            len,
            Payload::ReadLists,
            flags,
            out_buffer,
        )
    }

    /// Writes all of `data` at `offset` without copying it (`librbd::Image::aio_write2`,
    /// through rbd-core's C++ shim): librbd takes a reference to the same bytes. Resolves
    /// to `data.len()`.
    ///
    /// `data` may be dropped, or written again elsewhere, as soon as this returns; it
    /// stays immutable ([`Buffer::get_mut`] returns `None`) until librbd releases it,
    /// which can be a little after the future resolves. The range must lie inside the
    /// image, else it fails with `InvalidInput` and writes nothing. Through a read-only or
    /// snapshot handle it fails with `ReadOnly`.
    pub fn aio_write_buffer(&self, offset: u64, data: &Buffer) -> AioFuture<usize> {
        self.aio_write_buffer_with(offset, data, IoFlags::empty())
    }

    /// Like [`Image::aio_write_buffer`], with hints for the OSD (`aio_write2`'s
    /// `op_flags`).
    pub fn aio_write_buffer_with(
        &self,
        offset: u64,
        data: &Buffer,
        flags: IoFlags,
    ) -> AioFuture<usize> {
        let len = data.len() as u64;
        if len == 0 {
            return AioFuture::ready(Ok((Data::None, 0)), out_len);
        }
        if let Err(e) = self
            .size()
            .and_then(|size| self.check_write_range("write range", offset, len, size))
        {
            return AioFuture::ready(Err(e), out_len);
        }
        self.aio_start(
            Kind::WriteList,
            offset,
            len,
            Payload::WriteList(data.raw()),
            flags,
            out_len,
        )
    }

    /// Discards `len` bytes at `offset` (`rbd_aio_discard`), freeing their space. The range
    /// must lie inside the image (else `InvalidInput`, nothing changed). A hint, like
    /// [`Image::discard`]: unaligned edges smaller than librbd's discard granularity keep
    /// their data; use [`Image::aio_write_zeroes`] for guaranteed zeros.
    pub fn aio_discard(&self, offset: u64, len: u64) -> AioFuture<()> {
        self.aio_ranged(Kind::Discard, "discard range", offset, len)
    }

    /// Writes zeros over `len` bytes at `offset` (`rbd_aio_write_zeroes`). The range must
    /// lie inside the image (else `InvalidInput`, nothing changed).
    pub fn aio_write_zeroes(&self, offset: u64, len: u64) -> AioFuture<()> {
        self.aio_ranged(Kind::WriteZeroes, "write-zeroes range", offset, len)
    }

    /// Completes once every write submitted before it is durable (`rbd_aio_flush`).
    pub fn aio_flush(&self) -> AioFuture<()> {
        self.aio_start(Kind::Flush, 0, 0, Payload::None, IoFlags::empty(), out_unit)
    }

    fn aio_ranged(&self, kind: Kind, what: &'static str, offset: u64, len: u64) -> AioFuture<()> {
        if len == 0 {
            return AioFuture::ready(Ok((Data::None, 0)), out_unit);
        }
        if let Err(e) = self
            .size()
            .and_then(|size| self.check_write_range(what, offset, len, size))
        {
            return AioFuture::ready(Err(e), out_unit);
        }
        self.aio_start(kind, offset, len, Payload::None, IoFlags::empty(), out_unit)
    }

    /// Submits `[offset, offset + len)` as one or more librbd requests behind one future.
    /// `len` is 0 only for flush (one request).
    fn aio_start<T>(
        &self,
        kind: Kind,
        offset: u64,
        len: u64,
        payload: Payload<'_>,
        flags: IoFlags,
        finish: Finish<T>,
    ) -> AioFuture<T> {
        let max = match kind {
            Kind::Read | Kind::Write | Kind::ReadList | Kind::WriteList => self.max_request as u64,
            _ => crate::rbd::io::ZEROING_PIECE,
        };
        // A flush is one request with no range: model it as one 1-byte piece at 0.
        let (offset, span) = if kind == Kind::Flush {
            (0, 1)
        } else {
            (offset, len)
        };
        let pieces = split(offset, span, max);
        let count = split_count(offset, span, max);
        let mut write_list = None;
        let mut data = match payload {
            Payload::None => Data::None,
            Payload::Vec(v) => Data::Vec(v),
            Payload::ReadLists if count == 1 => match RawList::zeroed(0) {
                Ok(list) => Data::List(list),
                Err(e) => return AioFuture::ready(Err(e), finish),
            },
            Payload::ReadLists => match (0..count).map(|_| RawList::zeroed(0)).collect() {
                Ok(lists) => Data::Lists(lists),
                Err(e) => return AioFuture::ready(Err(e), finish),
            },
            Payload::WriteList(l) => {
                write_list = Some(l);
                Data::None
            }
        };
        let op = Arc::new(Op::new(
            count,
            matches!(kind, Kind::Read | Kind::ReadList),
            span,
        ));
        // Taken once; the Vec and the lists are not touched again until the operation is
        // done (moving a Vec does not move its heap buffer; the lists are heap objects).
        let base: *mut u8 = match &mut data {
            Data::Vec(v) => v.as_mut_ptr(),
            _ => std::ptr::null_mut(),
        };
        let image = self.handle.ptr();
        for (i, (off, n)) in pieces.enumerate() {
            let rel = off - offset;
            // The callback's argument: the operation itself when it is one request (no
            // allocation), else a boxed piece naming its range.
            let (arg, done): (*mut c_void, Callback) = if count == 1 {
                (
                    Arc::into_raw(Arc::clone(&op)).cast_mut().cast(),
                    aio_done_whole,
                )
            } else {
                (
                    Box::into_raw(Box::new(Piece {
                        op: Arc::clone(&op),
                        rel_off: rel,
                        len: n,
                    }))
                    .cast(),
                    aio_done_piece,
                )
            };
            let mut comp: sys::rbd_completion_t = std::ptr::null_mut();
            // SAFETY: `arg` (a leaked Arc or Box, as `done` expects) is owned by the
            // callback from now on; `comp` is a valid out-pointer.
            let ret = unsafe { sys::rbd_aio_create_completion(arg, Some(done), &mut comp) };
            let ret = if ret < 0 {
                ret
            } else {
                // Pieces are at most max_request (<= 1 GiB): `n` fits usize.
                let n_sz = n as usize;
                let p = base.wrapping_add(rel as usize);
                // SAFETY: `image` is the open handle, kept open until this completion
                // fires by the Arc in the future (or parked for the reaper). For reads and
                // writes, `p` points into the operation's own buffer, valid for `n` bytes
                // (rel + n <= len <= buf.len()), which is neither accessed nor moved nor
                // freed until the completion fires. For list reads, the `i`th list is this
                // piece's own empty list, owned by the operation (parked with it) and not
                // touched until the completion fires. For list writes, the caller's list
                // is alive for this call, which only shares its segments into librbd's own
                // list (`rel + n <= len`, its length). `comp` is a fresh completion.
                unsafe {
                    match kind {
                        Kind::Read => {
                            sys::rbd_aio_read2(image, off, n_sz, p.cast(), comp, flags.bits())
                        }
                        Kind::Write => {
                            sys::rbd_aio_write2(image, off, n_sz, p.cast(), comp, flags.bits())
                        }
                        Kind::ReadList => sys::shim::rbdcore_aio_read(
                            image,
                            off,
                            n_sz,
                            match &data {
                                Data::List(l) => l.ptr(),
                                Data::Lists(l) => l[i].ptr(),
                                _ => std::ptr::null_mut(),
                            },
                            comp,
                            flags.bits(),
                        ),
                        Kind::WriteList => sys::shim::rbdcore_aio_write(
                            image,
                            off,
                            write_list.map_or(std::ptr::null(), |l| l.ptr()),
                            rel as usize,
                            n_sz,
                            comp,
                            flags.bits(),
                        ),
                        Kind::Discard => sys::rbd_aio_discard(image, off, n, comp),
                        Kind::WriteZeroes => {
                            sys::rbd_aio_write_zeroes(image, off, n_sz, comp, 0, flags.bits())
                        }
                        Kind::Flush => sys::rbd_aio_flush(image, comp),
                    }
                }
            };
            if ret < 0 {
                // Not queued: librbd rejected the request before taking the completion,
                // so the callback will not run for it. Take its piece back, release the
                // completion, and account for this piece and the ones never submitted.
                if !comp.is_null() {
                    // SAFETY: created above and never handed to a queued request.
                    unsafe { sys::rbd_aio_release(comp) };
                }
                if count == 1 {
                    // SAFETY: the Arc reference leaked above, which no callback will take.
                    drop(unsafe { Arc::from_raw(arg.cast_const().cast::<Op>()) });
                } else {
                    // SAFETY: the Box leaked above, which no callback will take.
                    drop(unsafe { Box::from_raw(arg.cast::<Piece>()) });
                }
                let unsubmitted = count - i;
                let mut s = lock(&op.slot);
                s.errno.get_or_insert(-ret);
                s.pending -= unsubmitted;
                if s.pending == 0 {
                    s.done = true;
                }
                break;
            }
        }
        AioFuture {
            state: State::Running(Running {
                op,
                image: Some(self.handle.clone()),
                data,
                kind,
                len,
            }),
            finish,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn futures_are_send_static_unpin() {
        fn check<T: Send + Unpin + 'static>() {}
        check::<AioFuture<Vec<u8>>>();
        check::<AioFuture<usize>>();
        check::<AioFuture<()>>();
    }

    #[test]
    fn ready_futures_resolve() {
        let f = AioFuture::ready(Ok((Data::Vec(vec![1, 2, 3]), 2)), out_vec);
        assert!(f.is_complete());
        assert_eq!(f.wait().unwrap(), vec![1, 2]);
        let f: AioFuture<usize> = AioFuture::ready(Err(Error::invalid("x", "y", "z")), out_len);
        assert_eq!(f.wait().unwrap_err().kind(), crate::ErrorKind::InvalidInput);
    }

    #[test]
    fn pieces_complete_into_one_result() {
        let op = Op::new(3, true, 12);
        op.complete_piece(0, 4, 4);
        op.complete_piece(8, 4, 1); // short at 9
        assert!(!lock(&op.slot).done);
        op.complete_piece(4, 4, 2); // short at 6: the earliest wins
        let s = lock(&op.slot);
        assert!(s.done);
        assert_eq!(s.short_at, Some(6));
        assert_eq!(s.errno, None);
        drop(s);

        let op = Op::new(2, false, 8);
        op.complete_piece(0, 4, -(libc::EROFS as isize));
        op.complete_piece(4, 4, -(libc::EIO as isize));
        let s = lock(&op.slot);
        assert_eq!(s.errno, Some(libc::EROFS), "the first error is kept");
        // Writes complete with 0, which is not a short read.
        assert_eq!(s.short_at, None);
        drop(s);

        // A later read piece refused with EINVAL starts past the (new) end: short there.
        let op = Op::new(3, true, 12);
        op.complete_piece(0, 4, 4);
        op.complete_piece(8, 4, -(libc::EINVAL as isize));
        op.complete_piece(4, 4, 2);
        let s = lock(&op.slot);
        assert_eq!((s.errno, s.short_at), (None, Some(6)));
        drop(s);
        // The first piece refused with EINVAL is an error (the read starts past the end).
        let op = Op::new(1, true, 4);
        op.complete_piece(0, 4, -(libc::EINVAL as isize));
        assert_eq!(lock(&op.slot).errno, Some(libc::EINVAL));
    }

    #[test]
    fn parked_items_go_to_the_reaper() {
        let op = Op::new(1, false, 1);
        // Park a buffer as a dropped future would, then complete: the last completion
        // takes it (and hands it to the reaper thread).
        assert!(reaper().is_some());
        lock(&op.slot).parked = Some(Parked {
            image: None,
            data: Data::Vec(vec![0u8; 1 << 20]),
        });
        op.complete_piece(0, 1, 0);
        let s = lock(&op.slot);
        assert!(s.done);
        assert!(s.parked.is_none());
    }
}
