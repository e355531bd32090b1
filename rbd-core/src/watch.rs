//! Watch/notify: clients watch an object ([`IoCtx::watch`]) and others notify them
//! ([`IoCtx::notify`]), waiting until every watcher acknowledged or a timeout passed.
//!
//! A [`Watch`] delivers [`WatchEvent`]s either as a [`futures::Stream`] (and blocking
//! [`Watch::recv_timeout`]) or to a callback ([`IoCtx::watch_with_callback`]). Watch
//! errors, e.g. `ENOTCONN` after the OSD lost our session or `EBLOCKLISTED` once we are
//! fenced, arrive as [`WatchEvent::Error`]; the watch is then dead and should be dropped
//! and re-established.
//!
//! ```no_run
//! use std::time::Duration;
//! use futures::StreamExt;
//! # async fn f(io: &rbd_core::IoCtx) -> rbd_core::Result<()> {
//! let mut watch = io.watch("registry")?;
//! while let Some(ev) = watch.next().await {
//!     match ev {
//!         rbd_core::watch::WatchEvent::Notify(n) => watch.ack(&n, b"seen")?,
//!         rbd_core::watch::WatchEvent::Error(e) => return Err(e),
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! # Lifetimes across the C boundary
//!
//! librados calls our `extern "C"` callbacks on its own threads with a pointer to a
//! heap-allocated `WatchState`. That state is freed only after `rados_unwatch2` (after
//! which librados queues no more callbacks for the cookie) **and** `rados_watch_flush`
//! (which waits until every queued callback has run). Callbacks never unwind into C: each
//! body runs under `catch_unwind`.

use std::cell::Cell;
use std::collections::VecDeque;
use std::ffi::{CString, c_char, c_int, c_void};
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::ptr::NonNull;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::Poll;
use std::time::{Duration, Instant};

use futures::task::AtomicWaker;
use serde::Serialize;

use crate::error::{Context, Error, Result, check};
use crate::ioctx::IoCtx;
use crate::mon::take_rados_buffer;
use crate::object::oid_cstring;
use crate::sys;

/// A notification received by a watch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Notification {
    /// Identifies this notify; pass it back when acknowledging.
    pub notify_id: u64,
    /// The watch handle (cookie) it was delivered to.
    pub cookie: u64,
    /// The notifier's global client id (`client.4123` → 4123).
    pub notifier_id: u64,
    /// The notifier's payload.
    pub payload: Vec<u8>,
}

/// What a [`Watch`] delivers.
#[derive(Debug)]
pub enum WatchEvent {
    /// A notification to handle and acknowledge ([`Watch::ack`]).
    Notify(Notification),
    /// The watch broke (`rados_watcherrcb_t`), e.g. `ENOTCONN`
    /// ([`crate::ErrorKind::NotConnected`], also what a fenced client's watch reports).
    /// Notifies may have been missed; drop the watch and watch again.
    Error(Error),
}

/// How to register a watch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WatchOptions {
    timeout: Option<Duration>,
}

impl WatchOptions {
    /// Defaults: the OSD's `osd_client_watch_timeout` (30 s).
    pub fn new() -> Self {
        Self::default()
    }
    /// How long the OSD keeps our watch after losing contact with us (`rados_watch3`'s
    /// timeout, whole seconds, at least 1).
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = Some(t);
        self
    }
}

/// The callback type of [`IoCtx::watch_with_callback`].
///
/// For a [`WatchEvent::Notify`], returning `Some(payload)` acknowledges it at once with
/// that payload (`rados_notify_ack`); `None` leaves the ack to you ([`Watch::ack`],
/// [`IoCtx::notify_ack`]). The return value is ignored for errors.
pub type WatchCallback = Box<dyn FnMut(WatchEvent) -> Option<Vec<u8>> + Send + 'static>;

/// Events waiting for the consumer of a stream-mode watch.
#[derive(Default)]
struct Queue {
    events: Mutex<VecDeque<WatchEvent>>,
    cond: Condvar,
    waker: AtomicWaker,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock (caught in a callback) must not wedge the watch.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Queue {
    fn push(&self, ev: WatchEvent) {
        lock(&self.events).push_back(ev);
        self.cond.notify_all();
        self.waker.wake();
    }
}

enum Sink {
    Queue(Arc<Queue>),
    Callback(Mutex<WatchCallback>),
}

/// What the C callbacks see, through the `arg` pointer; owned by a [`Watch`].
///
/// It owns the watch's I/O context, so whatever keeps the state alive (including the
/// deliberate leak in `Watch::teardown`) keeps the ioctx the callbacks ack through alive.
struct WatchState {
    sink: Sink,
    /// The watch's own ioctx: registration, acks, check and unwatch use it.
    io: IoCtx,
    oid: String,
    coid: CString,
    ctx: Context,
}

thread_local! {
    /// Set while a watch callback runs on this thread, to detect teardown from inside one
    /// (where rados_watch_flush would wait for itself).
    static IN_CALLBACK: Cell<bool> = const { Cell::new(false) };
}

struct CallbackGuard;
impl CallbackGuard {
    fn enter() -> Self {
        IN_CALLBACK.with(|c| c.set(true));
        CallbackGuard
    }
}
impl Drop for CallbackGuard {
    fn drop(&mut self) {
        IN_CALLBACK.with(|c| c.set(false));
    }
}

fn ack_raw(
    io: sys::rados_ioctx_t,
    oid: &CString,
    notify_id: u64,
    cookie: u64,
    payload: &[u8],
) -> c_int {
    let Ok(len) = c_int::try_from(payload.len()) else {
        return -libc::E2BIG;
    };
    // SAFETY: `io` is a live ioctx (guaranteed by callers), `oid` a live C string, the
    // payload readable for `len` bytes; librados copies it before returning.
    unsafe {
        sys::rados_notify_ack(
            io,
            oid.as_ptr(),
            notify_id,
            cookie,
            payload.as_ptr().cast::<c_char>(),
            len,
        )
    }
}

impl WatchState {
    fn deliver(&self, ev: WatchEvent) {
        match &self.sink {
            Sink::Queue(q) => q.push(ev),
            Sink::Callback(cb) => {
                let ack = match &ev {
                    WatchEvent::Notify(n) => Some((n.notify_id, n.cookie)),
                    WatchEvent::Error(_) => None,
                };
                let reply = (lock(cb))(ev);
                if let (Some((id, cookie)), Some(payload)) = (ack, reply) {
                    // Fire-and-forget: rados_notify_ack only queues the ack message.
                    let _ = ack_raw(self.io.ptr(), &self.coid, id, cookie, &payload);
                }
            }
        }
    }
}

/// `rados_watchcb2_t`: a notification arrived.
unsafe extern "C" fn watch_notify_cb(
    arg: *mut c_void,
    notify_id: u64,
    cookie: u64,
    notifier_id: u64,
    data: *mut c_void,
    data_len: usize,
) {
    let _ = catch_unwind(AssertUnwindSafe(|| {
        let _g = CallbackGuard::enter();
        // SAFETY: `arg` is the WatchState registered with rados_watch2/3; it is freed only
        // after rados_unwatch2 + rados_watch_flush, so it is alive while callbacks run.
        let state = unsafe { &*(arg as *const WatchState) };
        let payload = if data.is_null() || data_len == 0 {
            Vec::new()
        } else {
            // SAFETY: librados passes `data_len` readable bytes, valid during the callback;
            // copied at once.
            unsafe { std::slice::from_raw_parts(data.cast::<u8>(), data_len) }.to_vec()
        };
        state.deliver(WatchEvent::Notify(Notification {
            notify_id,
            cookie,
            notifier_id,
            payload,
        }));
    }));
}

/// `rados_watcherrcb_t`: the watch broke.
unsafe extern "C" fn watch_error_cb(arg: *mut c_void, _cookie: u64, err: c_int) {
    let _ = catch_unwind(AssertUnwindSafe(|| {
        let _g = CallbackGuard::enter();
        // SAFETY: as in watch_notify_cb.
        let state = unsafe { &*(arg as *const WatchState) };
        let errno = if err == 0 { libc::ENOTCONN } else { err };
        state.deliver(WatchEvent::Error(Error::from_errno(
            "rados_watch2 (watch error callback)",
            errno,
            state.ctx.clone(),
        )));
    }));
}

/// A registered watch on one object (owner of the watch cookie).
///
/// Dropping it unregisters the watch (`rados_unwatch2`), waits for callbacks in flight
/// (`rados_watch_flush`), then frees what the callbacks used; [`Watch::unwatch`] does the
/// same and reports errors. Do not drop a `Watch` from inside its own callback (the
/// callback state is then leaked rather than risking a deadlock).
///
/// In stream mode (from [`IoCtx::watch`]) events are read with the [`futures::Stream`]
/// impl, [`Watch::try_recv`] or [`Watch::recv_timeout`]; the stream never ends while the
/// watch exists.
pub struct Watch {
    /// Leaked Box shared with the callbacks; freed by `teardown` (or deliberately leaked).
    state: NonNull<WatchState>,
    /// False once `teardown` ran: `state` must not be used any more.
    alive: bool,
    cookie: u64,
    queue: Option<Arc<Queue>>,
}

// SAFETY: WatchState is Send + Sync (IoCtx, Mutex-guarded sink); the pointer is shared
// with librados callbacks, which only read through it, and freed by teardown, which needs
// `&mut self` or ownership.
unsafe impl Send for Watch {}
// SAFETY: `&Watch` methods only read the state and issue thread-safe librados calls.
unsafe impl Sync for Watch {}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let st = self.state();
        f.debug_struct("Watch")
            .field("pool", &st.io.pool_name())
            .field("namespace", &st.io.namespace())
            .field("object", &st.oid)
            .field("cookie", &self.cookie)
            .finish_non_exhaustive()
    }
}

impl IoCtx {
    /// Watches object `oid` (`rados_watch2`); events arrive through the returned
    /// [`Watch`]'s stream. The object must exist.
    pub fn watch(&self, oid: &str) -> Result<Watch> {
        self.watch_with_options(oid, &WatchOptions::new())
    }

    /// Like [`IoCtx::watch`], with options (`rados_watch3` when a timeout is set).
    pub fn watch_with_options(&self, oid: &str, opts: &WatchOptions) -> Result<Watch> {
        let q = Arc::new(Queue::default());
        Watch::register(self, oid, opts, Sink::Queue(q.clone()), Some(q))
    }

    /// Watches `oid` and calls `callback` for each event, on a librados thread
    /// (`rados_watch2` / `rados_watch3`). See [`WatchCallback`] for acknowledging from
    /// the callback. The callback must not block for long: librados delivers all watch
    /// events of this connection on few threads. A panic in it is caught and ignored.
    pub fn watch_with_callback<F>(
        &self,
        oid: &str,
        opts: &WatchOptions,
        callback: F,
    ) -> Result<Watch>
    where
        F: FnMut(WatchEvent) -> Option<Vec<u8>> + Send + 'static,
    {
        Watch::register(
            self,
            oid,
            opts,
            Sink::Callback(Mutex::new(Box::new(callback))),
            None,
        )
    }

    /// Acknowledges a notification on `oid` with a payload for the notifier
    /// (`rados_notify_ack`). Returns once the ack is queued.
    pub fn notify_ack(&self, oid: &str, notify_id: u64, cookie: u64, payload: &[u8]) -> Result<()> {
        let c = oid_cstring(oid)?;
        if payload.len() > i32::MAX as usize {
            return Err(Error::invalid(
                "ack payload",
                format!("{} bytes", payload.len()),
                "too large",
            ));
        }
        let ret = ack_raw(self.ptr(), &c, notify_id, cookie, payload);
        check(ret, "rados_notify_ack", || self.ctx().with_object(oid))?;
        Ok(())
    }
}

impl Watch {
    fn register(
        io: &IoCtx,
        oid: &str,
        opts: &WatchOptions,
        sink: Sink,
        queue: Option<Arc<Queue>>,
    ) -> Result<Watch> {
        let coid = oid_cstring(oid)?;
        let own = io.try_clone()?;
        let ctx = own.ctx().with_object(oid);
        let state = Box::new(WatchState {
            sink,
            io: own,
            oid: oid.to_owned(),
            coid,
            ctx,
        });
        let (io_ptr, coid_ptr) = (state.io.ptr(), state.coid.as_ptr());
        let state = NonNull::from(Box::leak(state));
        let arg = state.as_ptr().cast::<c_void>();
        let mut cookie = 0u64;
        let (ret, op) = match opts.timeout {
            None => (
                // SAFETY: valid ioctx and C string (both owned by the state); `cookie` is a
                // valid out-pointer; `arg` is the leaked WatchState, freed only after
                // unwatch2 + watch_flush.
                unsafe {
                    sys::rados_watch2(
                        io_ptr,
                        coid_ptr,
                        &mut cookie,
                        Some(watch_notify_cb),
                        Some(watch_error_cb),
                        arg,
                    )
                },
                "rados_watch2",
            ),
            Some(t) => {
                let secs = u32::try_from(t.as_secs() + u64::from(t.subsec_nanos() > 0))
                    .unwrap_or(u32::MAX)
                    .max(1);
                (
                    // SAFETY: as for rados_watch2.
                    unsafe {
                        sys::rados_watch3(
                            io_ptr,
                            coid_ptr,
                            &mut cookie,
                            Some(watch_notify_cb),
                            Some(watch_error_cb),
                            secs,
                            arg,
                        )
                    },
                    "rados_watch3",
                )
            }
        };
        if ret < 0 {
            // SAFETY: the leaked state is alive; only shared access here.
            let ctx = unsafe { state.as_ref() }.ctx.clone();
            // librados cancelled the registration; make sure no callback is still queued
            // before freeing the state (unless we are inside a callback, where flushing
            // would wait for ourselves: then leak it).
            if !IN_CALLBACK.with(Cell::get) {
                // SAFETY: the cluster handle is alive (the state's IoCtx holds it).
                unsafe { sys::rados_watch_flush(state.as_ref().io.rados().ptr()) };
                // SAFETY: from Box::leak above; no callback can use it after the flush.
                drop(unsafe { Box::from_raw(state.as_ptr()) });
            }
            check(ret, op, || ctx)?;
        }
        Ok(Watch {
            state,
            alive: true,
            cookie,
            queue,
        })
    }

    fn state(&self) -> &WatchState {
        debug_assert!(self.alive, "watch state used after teardown");
        // SAFETY: the state is freed only by teardown, which runs from Drop or unwatch
        // (both consume the Watch), so it is alive for any `&self` method.
        unsafe { self.state.as_ref() }
    }

    /// The watched object's name.
    pub fn oid(&self) -> &str {
        &self.state().oid
    }

    /// The watch handle (cookie), as in [`Notification::cookie`].
    pub fn cookie(&self) -> u64 {
        self.cookie
    }

    /// Acknowledges a notification with a payload for the notifier (`rados_notify_ack`).
    pub fn ack(&self, n: &Notification, payload: &[u8]) -> Result<()> {
        let st = self.state();
        st.io.notify_ack(&st.oid, n.notify_id, n.cookie, payload)
    }

    /// How long ago the OSD last confirmed the watch (`rados_watch_check`); an error
    /// means the watch is broken and must be re-established.
    pub fn check(&self) -> Result<Duration> {
        let st = self.state();
        // SAFETY: valid ioctx; the cookie belongs to it and is still registered.
        let ret = unsafe { sys::rados_watch_check(st.io.ptr(), self.cookie) };
        let ms = check(ret, "rados_watch_check", || st.ctx.clone())?;
        Ok(Duration::from_millis(ms as u64))
    }

    /// The next queued event, without waiting. Always `None` for callback watches.
    pub fn try_recv(&mut self) -> Option<WatchEvent> {
        self.queue
            .as_ref()
            .and_then(|q| lock(&q.events).pop_front())
    }

    /// Waits up to `timeout` for the next event, blocking the thread (do not call from
    /// async code; use the `Stream` impl there). Always `None` for callback watches.
    pub fn recv_timeout(&mut self, timeout: Duration) -> Option<WatchEvent> {
        let q = self.queue.as_ref()?;
        let deadline = Instant::now() + timeout;
        let mut ev = lock(&q.events);
        loop {
            if let Some(e) = ev.pop_front() {
                return Some(e);
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            ev = q
                .cond
                .wait_timeout(ev, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Unregisters the watch (`rados_unwatch2`, then `rados_watch_flush`) and frees the
    /// callback state. Idempotent: later calls (and Drop) do nothing.
    fn teardown(&mut self) -> Result<()> {
        if !self.alive {
            return Ok(());
        }
        let st = self.state();
        let ctx = st.ctx.clone();
        // SAFETY: valid ioctx and registered cookie. After this returns, librados has
        // cancelled the watch (linger_cancel) whatever the result, so no new callbacks are
        // queued for it. Bounded by the OSD op timeout.
        let ret = unsafe { sys::rados_unwatch2(st.io.ptr(), self.cookie) };
        if IN_CALLBACK.with(Cell::get) {
            // rados_watch_flush would wait for the very callback we are in. Leak the state
            // (and with it the ioctx the running callback may still ack through) rather
            // than deadlock or free it under a running callback.
        } else {
            // SAFETY: valid cluster handle; waits until queued callbacks have run.
            unsafe { sys::rados_watch_flush(st.io.rados().ptr()) };
            // SAFETY: from Box::leak in register; unwatch2 + watch_flush guarantee no
            // callback is running or will run with it, and `st` is not used after this.
            drop(unsafe { Box::from_raw(self.state.as_ptr()) });
        }
        self.alive = false;
        check(ret, "rados_unwatch2", || ctx)?;
        Ok(())
    }

    /// Unregisters the watch (`rados_unwatch2` + `rados_watch_flush`), reporting errors
    /// that `Drop` would ignore.
    pub fn unwatch(mut self) -> Result<()> {
        self.teardown()
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.teardown();
    }
}

impl futures::Stream for Watch {
    type Item = WatchEvent;

    fn poll_next(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<Option<WatchEvent>> {
        let Some(q) = self.queue.as_ref() else {
            return Poll::Ready(None);
        };
        if let Some(e) = lock(&q.events).pop_front() {
            return Poll::Ready(Some(e));
        }
        q.waker.register(cx.waker());
        // Re-check after registering, so a push between the two is not missed.
        match lock(&q.events).pop_front() {
            Some(e) => Poll::Ready(Some(e)),
            None => Poll::Pending,
        }
    }
}

/// A watcher's acknowledgement of a notify.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NotifyAck {
    /// The watcher's global client id (`client.4123` → 4123).
    pub gid: u64,
    /// The watcher's watch handle (cookie).
    pub cookie: u64,
    /// The payload it acknowledged with (empty if none).
    pub payload: Vec<u8>,
}

/// A watcher that did not acknowledge a notify in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct NotifyTimeout {
    /// The watcher's global client id.
    pub gid: u64,
    /// The watcher's watch handle (cookie).
    pub cookie: u64,
}

/// The outcome of a notify: who acknowledged (with payloads) and who timed out.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct NotifyReply {
    /// Watchers that acknowledged.
    pub acks: Vec<NotifyAck>,
    /// Watchers that did not acknowledge within the timeout.
    pub timeouts: Vec<NotifyTimeout>,
}

/// Why a notify reply buffer could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("notify reply truncated: needed {needed} more bytes at offset {offset}")]
pub struct NotifyReplyError {
    /// Where the buffer ended early.
    pub offset: usize,
    /// How many bytes were missing.
    pub needed: usize,
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> std::result::Result<&[u8], NotifyReplyError> {
        let left = self.buf.len() - self.pos;
        if n > left {
            return Err(NotifyReplyError {
                offset: self.pos,
                needed: n - left,
            });
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn u32(&mut self) -> std::result::Result<u32, NotifyReplyError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> std::result::Result<u64, NotifyReplyError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
    fn left(&self) -> usize {
        self.buf.len() - self.pos
    }
}

impl NotifyReply {
    /// Decodes the reply buffer of `rados_notify2` / `rados_aio_notify`:
    /// `le32 num_acks, {le64 gid, le64 cookie, le32 len, payload}*, le32 num_timeouts,
    /// {le64 gid, le64 cookie}*`. Trailing bytes are ignored.
    pub fn parse(buf: &[u8]) -> std::result::Result<NotifyReply, NotifyReplyError> {
        let mut r = Reader { buf, pos: 0 };
        let n = r.u32()? as usize;
        // Never trust counts for allocation: each ack takes at least 20 bytes.
        let mut acks = Vec::with_capacity(n.min(r.left() / 20));
        for _ in 0..n {
            let gid = r.u64()?;
            let cookie = r.u64()?;
            let len = r.u32()? as usize;
            let payload = r.take(len)?.to_vec();
            acks.push(NotifyAck {
                gid,
                cookie,
                payload,
            });
        }
        let n = r.u32()? as usize;
        let mut timeouts = Vec::with_capacity(n.min(r.left() / 16));
        for _ in 0..n {
            let gid = r.u64()?;
            let cookie = r.u64()?;
            timeouts.push(NotifyTimeout { gid, cookie });
        }
        Ok(NotifyReply { acks, timeouts })
    }

    /// Encodes the reply in the wire format [`NotifyReply::parse`] reads.
    ///
    /// # Panics
    /// If a count or payload length exceeds `u32::MAX`.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = Vec::new();
        let len32 = |n: usize| u32::try_from(n).expect("fits the u32 wire field");
        b.extend_from_slice(&len32(self.acks.len()).to_le_bytes());
        for a in &self.acks {
            b.extend_from_slice(&a.gid.to_le_bytes());
            b.extend_from_slice(&a.cookie.to_le_bytes());
            b.extend_from_slice(&len32(a.payload.len()).to_le_bytes());
            b.extend_from_slice(&a.payload);
        }
        b.extend_from_slice(&len32(self.timeouts.len()).to_le_bytes());
        for t in &self.timeouts {
            b.extend_from_slice(&t.gid.to_le_bytes());
            b.extend_from_slice(&t.cookie.to_le_bytes());
        }
        b
    }

    /// True when no watcher timed out.
    pub fn all_acked(&self) -> bool {
        self.timeouts.is_empty()
    }
}

/// The notify timeout in ms as librados uses it: it divides by 1000 and treats 0 as "the
/// default", so round up to whole seconds, at least one.
fn notify_timeout_ms(t: Duration) -> u64 {
    let secs = t.as_secs() + u64::from(t.subsec_nanos() > 0);
    secs.max(1).saturating_mul(1000)
}

/// Interprets a notify's return code and reply buffer.
///
/// `ETIMEDOUT` with a reply listing timed-out watchers is a successful notify whose
/// [`NotifyReply::timeouts`] is non-empty; any other failure is an error.
fn notify_outcome(ret: c_int, reply: &[u8], op: &'static str, ctx: Context) -> Result<NotifyReply> {
    if ret < 0 {
        if ret == -libc::ETIMEDOUT
            && let Ok(r) = NotifyReply::parse(reply)
            && !r.timeouts.is_empty()
        {
            return Ok(r);
        }
        return Err(Error::from_errno(op, -ret, ctx));
    }
    NotifyReply::parse(reply).map_err(|e| Error::decode(op, ctx, e))
}

fn notify_payload_len(payload: &[u8]) -> Result<c_int> {
    c_int::try_from(payload.len()).map_err(|_| {
        Error::invalid(
            "notify payload",
            format!("{} bytes", payload.len()),
            "too large",
        )
    })
}

impl IoCtx {
    /// Notifies every watcher of `oid` and waits until all acknowledged or `timeout`
    /// (rounded up to whole seconds) passed (`rados_notify2`). The object must exist.
    ///
    /// Watchers that did not acknowledge in time are listed in
    /// [`NotifyReply::timeouts`]; that is not an error. Blocks the calling thread: from
    /// async code use [`IoCtx::aio_notify`].
    pub fn notify(&self, oid: &str, payload: &[u8], timeout: Duration) -> Result<NotifyReply> {
        let c = oid_cstring(oid)?;
        let len = notify_payload_len(payload)?;
        let mut reply: *mut c_char = std::ptr::null_mut();
        let mut reply_len = 0usize;
        // SAFETY: valid ioctx and C string; the payload is readable for `len` bytes; the
        // reply out-pointers are valid locals. librados allocates the reply (set even on
        // ETIMEDOUT), freed below.
        let ret = unsafe {
            sys::rados_notify2(
                self.ptr(),
                c.as_ptr(),
                payload.as_ptr().cast(),
                len,
                notify_timeout_ms(timeout),
                &mut reply,
                &mut reply_len,
            )
        };
        // SAFETY: NULL or a librados buffer of `reply_len` bytes, freed once here.
        let buf = unsafe { take_rados_buffer(reply, reply_len) };
        notify_outcome(ret, &buf, "rados_notify2", self.ctx().with_object(oid))
    }

    /// Like [`IoCtx::notify`], without blocking a thread: returns a future
    /// (`rados_aio_notify` with a completion callback). Runtime-agnostic, so it works
    /// under tokio without `spawn_blocking`.
    ///
    /// The future owns everything the C side writes into. Dropping it early is safe: a
    /// helper thread keeps the I/O context and buffers alive until librados completes.
    pub fn aio_notify(&self, oid: &str, payload: &[u8], timeout: Duration) -> NotifyFuture {
        match self.aio_notify_start(oid, payload, timeout) {
            Ok(f) => f,
            Err(e) => NotifyFuture {
                state: FutState::Failed(Some(e)),
            },
        }
    }

    fn aio_notify_start(
        &self,
        oid: &str,
        payload: &[u8],
        timeout: Duration,
    ) -> Result<NotifyFuture> {
        let c = oid_cstring(oid)?;
        let len = notify_payload_len(payload)?;
        let ctx = self.ctx().with_object(oid);
        let io = self.try_clone()?;
        let shared = Arc::new(AioShared::default());
        let arg = Arc::into_raw(shared.clone()) as *mut c_void;
        let mut comp: sys::rados_completion_t = std::ptr::null_mut();
        // SAFETY: `arg` is a strong Arc reference owned by the callback from now on;
        // `comp` is a valid out-pointer.
        let ret =
            unsafe { sys::rados_aio_create_completion2(arg, Some(aio_notify_done), &mut comp) };
        if ret < 0 {
            // SAFETY: the completion was not created, so the callback will never take
            // back its reference: do it here.
            drop(unsafe { Arc::from_raw(arg as *const AioShared) });
            check(ret, "rados_aio_create_completion2", || ctx.clone())?;
        }
        *lock(&shared.completion) = CompletionPtr(comp);
        // SAFETY: valid ioctx (kept alive by the future or its reaper until completion),
        // C string and payload (copied by librados); the reply out-pointers point into the
        // Arc'd AioShared, which the callback's reference keeps alive until completion.
        let ret = unsafe {
            sys::rados_aio_notify(
                io.ptr(),
                c.as_ptr(),
                comp,
                payload.as_ptr().cast(),
                len,
                notify_timeout_ms(timeout),
                shared.reply_buf.get(),
                shared.reply_len.get(),
            )
        };
        if ret < 0 {
            // Not submitted: the callback will not run; drop its reference ourselves.
            // SAFETY: the reference created by Arc::into_raw above, not used by C.
            drop(unsafe { Arc::from_raw(arg as *const AioShared) });
            check(ret, "rados_aio_notify", || ctx.clone())?;
        }
        Ok(NotifyFuture {
            state: FutState::Running {
                shared,
                io: Some(io),
                ctx,
            },
        })
    }
}

struct CompletionPtr(sys::rados_completion_t);
// SAFETY: a completion handle may be used and released from any thread.
unsafe impl Send for CompletionPtr {}

/// State shared between a [`NotifyFuture`] and librados' completion callback.
struct AioShared {
    completion: Mutex<CompletionPtr>,
    /// Written by librados before it completes the op; read after `result` is set.
    reply_buf: std::cell::UnsafeCell<*mut c_char>,
    reply_len: std::cell::UnsafeCell<usize>,
    result: Mutex<Option<c_int>>,
    cond: Condvar,
    waker: AtomicWaker,
    /// The I/O context of a future dropped before completion, until the reaper drops it.
    parked: Mutex<Option<IoCtx>>,
}

impl Default for AioShared {
    fn default() -> Self {
        Self {
            completion: Mutex::new(CompletionPtr(std::ptr::null_mut())),
            reply_buf: std::cell::UnsafeCell::new(std::ptr::null_mut()),
            reply_len: std::cell::UnsafeCell::new(0),
            result: Mutex::new(None),
            cond: Condvar::new(),
            waker: AtomicWaker::new(),
            parked: Mutex::new(None),
        }
    }
}

// SAFETY: the UnsafeCells are written only by librados before completion and read/cleared
// only after `result` was observed set under its mutex (which orders the accesses);
// everything else is Mutex/Condvar/AtomicWaker.
unsafe impl Send for AioShared {}
// SAFETY: see Send.
unsafe impl Sync for AioShared {}

impl AioShared {
    /// Takes the reply buffer (only after completion).
    fn take_reply(&self) -> Vec<u8> {
        // SAFETY: called only after `result` is set, so librados no longer writes these
        // cells; `&self` users never touch them concurrently (only the future does).
        unsafe {
            let p = std::mem::replace(&mut *self.reply_buf.get(), std::ptr::null_mut());
            let len = std::mem::take(&mut *self.reply_len.get());
            take_rados_buffer(p, len)
        }
    }
}

impl Drop for AioShared {
    fn drop(&mut self) {
        let c = self
            .completion
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .0;
        if !c.is_null() {
            // SAFETY: the completion was created by rados_aio_create_completion2 and is
            // released once, here, when no one (C callback included) references it.
            unsafe { sys::rados_aio_release(c) };
        }
        let p = *self.reply_buf.get_mut();
        if !p.is_null() {
            // SAFETY: a reply librados allocated and nobody took; freed once.
            unsafe { sys::rados_buffer_free(p) };
        }
    }
}

/// `rados_callback_t` for [`IoCtx::aio_notify`].
unsafe extern "C" fn aio_notify_done(comp: sys::rados_completion_t, arg: *mut c_void) {
    let _ = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: `arg` is the strong reference made by Arc::into_raw when the completion
        // was created; librados calls this exactly once, so it is taken back exactly once.
        let shared = unsafe { Arc::from_raw(arg as *const AioShared) };
        // SAFETY: `comp` is the live completion this callback belongs to.
        let r = unsafe { sys::rados_aio_get_return_value(comp) };
        *lock(&shared.result) = Some(r);
        shared.cond.notify_all();
        shared.waker.wake();
    }));
}

enum FutState {
    Failed(Option<Error>),
    Running {
        shared: Arc<AioShared>,
        io: Option<IoCtx>,
        ctx: Context,
    },
    Done,
}

/// The future of [`IoCtx::aio_notify`]: resolves to the [`NotifyReply`].
#[must_use = "futures do nothing unless polled (the notify is sent already)"]
pub struct NotifyFuture {
    state: FutState,
}

impl std::fmt::Debug for NotifyFuture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = match self.state {
            FutState::Failed(_) => "failed",
            FutState::Running { .. } => "running",
            FutState::Done => "done",
        };
        f.debug_struct("NotifyFuture").field("state", &s).finish()
    }
}

impl NotifyFuture {
    /// Blocks the calling thread until the notify completes (not from async code).
    pub fn wait(self) -> Result<NotifyReply> {
        futures::executor::block_on(self)
    }
}

impl Future for NotifyFuture {
    type Output = Result<NotifyReply>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<Self::Output> {
        match &mut self.state {
            FutState::Failed(e) => {
                let e = e.take().unwrap_or_else(|| {
                    Error::from_errno("rados_aio_notify", libc::EINVAL, Context::none())
                });
                self.state = FutState::Done;
                Poll::Ready(Err(e))
            }
            FutState::Running { shared, ctx, .. } => {
                shared.waker.register(cx.waker());
                let Some(ret) = *lock(&shared.result) else {
                    return Poll::Pending;
                };
                let reply = shared.take_reply();
                let out = notify_outcome(ret, &reply, "rados_aio_notify", ctx.clone());
                // Completed: the I/O context may go now (state drop below).
                self.state = FutState::Done;
                Poll::Ready(out)
            }
            FutState::Done => panic!("NotifyFuture polled after completion"),
        }
    }
}

impl Drop for NotifyFuture {
    fn drop(&mut self) {
        let FutState::Running { shared, io, .. } = &mut self.state else {
            return;
        };
        if lock(&shared.result).is_some() {
            return; // completed: dropping the ioctx and our reference is safe
        }
        // Still in flight: librados will use the ioctx and write into `shared` until it
        // completes. Park the ioctx in the shared state and let a thread drop it then
        // (never the completion callback: dropping the last connection handle there would
        // shut librados down from its own finisher thread).
        *lock(&shared.parked) = io.take();
        let reaper = shared.clone();
        let spawned = std::thread::Builder::new()
            .name("rbd-core:notify-reaper".into())
            .spawn(move || {
                let mut r = lock(&reaper.result);
                while r.is_none() {
                    r = reaper.cond.wait(r).unwrap_or_else(|p| p.into_inner());
                }
                drop(r);
                let io = lock(&reaper.parked).take();
                drop(io);
            });
        if spawned.is_err() {
            // Could not wait for completion: leak the ioctx rather than destroy it while
            // librados may still use it. The callback's reference keeps `shared` alive.
            if let Some(io) = lock(&shared.parked).take() {
                std::mem::forget(io);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;
    use proptest::prelude::*;

    #[test]
    fn parses_reply() {
        let r = NotifyReply {
            acks: vec![
                NotifyAck {
                    gid: 4123,
                    cookie: 7,
                    payload: b"pong".to_vec(),
                },
                NotifyAck {
                    gid: 9,
                    cookie: 1,
                    payload: vec![],
                },
            ],
            timeouts: vec![NotifyTimeout { gid: 5, cookie: 6 }],
        };
        let b = r.to_bytes();
        assert_eq!(b.len(), 4 + (20 + 4) + 20 + 4 + 16);
        assert_eq!(NotifyReply::parse(&b).unwrap(), r);
        assert!(!r.all_acked());
        // Empty reply: no acks, no timeouts.
        assert_eq!(NotifyReply::parse(&[0; 8]).unwrap(), NotifyReply::default());
        let e = NotifyReply::parse(&b[..10]).unwrap_err();
        assert_eq!(e.offset, 4);
        assert!(NotifyReply::parse(&[]).is_err());
        // A huge count with no data fails cleanly instead of allocating.
        assert!(NotifyReply::parse(&[0xff, 0xff, 0xff, 0xff]).is_err());
    }

    #[test]
    fn notify_outcomes() {
        let ctx = Context::none;
        let timed_out = NotifyReply {
            acks: vec![],
            timeouts: vec![NotifyTimeout { gid: 1, cookie: 2 }],
        };
        let r = notify_outcome(-libc::ETIMEDOUT, &timed_out.to_bytes(), "n", ctx()).unwrap();
        assert_eq!(r.timeouts.len(), 1);
        let e = notify_outcome(-libc::ETIMEDOUT, &[], "n", ctx()).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Timeout);
        let e = notify_outcome(-libc::ENOENT, &[0; 8], "n", ctx()).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotFound);
        let e = notify_outcome(0, &[1], "n", ctx()).unwrap_err();
        assert!(matches!(e, Error::Decode { .. }));
    }

    #[test]
    fn timeout_rounding() {
        assert_eq!(notify_timeout_ms(Duration::from_millis(1)), 1000);
        assert_eq!(notify_timeout_ms(Duration::ZERO), 1000);
        assert_eq!(notify_timeout_ms(Duration::from_millis(2500)), 3000);
        assert_eq!(notify_timeout_ms(Duration::from_secs(5)), 5000);
    }

    #[test]
    fn types_are_send() {
        fn is_send<T: Send>() {}
        is_send::<Watch>();
        is_send::<NotifyFuture>();
        fn is_sync<T: Sync>() {}
        is_sync::<Watch>();
        // Watch's unsafe Send/Sync rest on these being thread-safe on their own.
        is_send::<WatchState>();
        is_sync::<WatchState>();
    }

    fn ack() -> impl Strategy<Value = NotifyAck> {
        (
            any::<u64>(),
            any::<u64>(),
            proptest::collection::vec(any::<u8>(), 0..40),
        )
            .prop_map(|(gid, cookie, payload)| NotifyAck {
                gid,
                cookie,
                payload,
            })
    }

    proptest! {
        #[test]
        fn parser_never_panics(b in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = NotifyReply::parse(&b);
        }

        #[test]
        fn roundtrip(acks in proptest::collection::vec(ack(), 0..6),
                     timeouts in proptest::collection::vec((any::<u64>(), any::<u64>()), 0..6),
                     trailing in proptest::collection::vec(any::<u8>(), 0..8)) {
            let r = NotifyReply {
                acks,
                timeouts: timeouts.into_iter().map(|(gid, cookie)| NotifyTimeout { gid, cookie }).collect(),
            };
            let mut b = r.to_bytes();
            prop_assert_eq!(NotifyReply::parse(&b).unwrap(), r.clone());
            b.extend(trailing);
            prop_assert_eq!(NotifyReply::parse(&b).unwrap(), r.clone());
            // Every strict prefix of the exact encoding is an error, never a panic.
            let exact = r.to_bytes();
            for cut in 0..exact.len() {
                prop_assert!(NotifyReply::parse(&exact[..cut]).is_err());
            }
        }
    }
}
