//! The open image handle ([`Image`]) and how to open one ([`OpenOptions`]).

use std::ffi::c_void;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::error::{Context, Error, Result, check};
use crate::ioctx::IoCtx;
use crate::rados::Rados;
use crate::sys;
use crate::util::{cstring, opt_cstring, opt_ptr};

/// How to open an image: by name or id, read-write or read-only, at the head or at a
/// snapshot.
#[derive(Debug, Clone, Default)]
pub struct OpenOptions {
    pub(crate) read_only: bool,
    pub(crate) snapshot: Option<String>,
}

impl OpenOptions {
    /// Read-write at the head.
    pub fn new() -> Self {
        Self::default()
    }
    /// Opens read-only (`rbd_open_read_only`): no exclusive lock, no header watch writes.
    pub fn read_only(mut self, ro: bool) -> Self {
        self.read_only = ro;
        self
    }
    /// Opens at a snapshot (implies read-only data).
    pub fn snapshot(mut self, snap: impl Into<String>) -> Self {
        self.snapshot = Some(snap.into());
        self
    }
}

/// The one owner of an `rbd_image_t`: closes it (`rbd_close`) exactly once, in `Drop`.
///
/// Shared behind an `Arc` by the [`Image`] and by its asynchronous operations in flight
/// ([`crate::rbd::aio`]), so the handle is closed only after the last of them is done
/// with it, never while librbd may still complete an operation on it. It also holds the
/// cluster connection, so `rbd_close` always runs before `rados_shutdown`.
pub(crate) struct ImageHandle {
    ptr: sys::rbd_image_t,
    rados: Rados,
    pool: String,
    namespace: String,
    /// The name or id it was opened by, for error messages.
    label: String,
    /// The image size last seen through this handle, for reads: see
    /// [`ImageHandle::size_hint`]. Shared with librbd's update-watch callback.
    hint: Arc<SizeHint>,
    /// The `rbd_update_watch` registration that keeps `hint` honest; `None` if it failed
    /// (then there is no hint: every read asks librbd for the size).
    update_watch: Option<u64>,
}

/// The image size last seen through one handle (0: not known), and a count of the image
/// changes librbd has announced since (header updates: a resize here or by any other
/// client, a snapshot rollback...).
#[derive(Default)]
pub(crate) struct SizeHint {
    size: AtomicU64,
    changes: AtomicU64,
}

impl SizeHint {
    /// Forgets the size: the image changed, or may have.
    fn invalidate(&self) {
        self.changes.fetch_add(1, Ordering::SeqCst);
        self.size.store(0, Ordering::SeqCst);
    }
}

/// `rbd_update_callback_t`: librbd saw the image's header change (it calls the update
/// watchers before it acknowledges the change's notification, so before a resize made by
/// another client returns there).
unsafe extern "C" fn size_hint_changed(arg: *mut c_void) {
    // SAFETY: `arg` is the `SizeHint` of the handle that registered this watch; the handle
    // keeps it alive (in an Arc) until after `rbd_update_unwatch`, which waits for
    // callbacks in progress. Atomics only: nothing here can unwind.
    let hint = unsafe { &*arg.cast_const().cast::<SizeHint>() };
    hint.invalidate();
}

// SAFETY: librbd's `ImageCtx` guards its state with internal locks and supports concurrent
// I/O and management calls from several threads (the Python and Go bindings rely on this
// too). The pointer is freed only in Drop, which runs once, when the last Arc goes.
unsafe impl Send for ImageHandle {}
// SAFETY: see Send; every librbd call made through a shared handle is thread-safe.
unsafe impl Sync for ImageHandle {}

impl Drop for ImageHandle {
    fn drop(&mut self) {
        if !self.ptr.is_null() {
            self.unwatch_updates();
            // SAFETY: `ptr` came from rbd_open* and is closed once (`close` nulls it
            // first). No operation is in flight: each one holds an Arc to this handle.
            unsafe { sys::rbd_close(self.ptr) };
        }
    }
}

impl ImageHandle {
    pub(crate) fn ptr(&self) -> sys::rbd_image_t {
        self.ptr
    }

    /// Registers the update watch that invalidates the size hint (`rbd_update_watch`).
    /// Without it (it failed) there is no size hint.
    fn watch_updates(ptr: sys::rbd_image_t, hint: &Arc<SizeHint>) -> Option<u64> {
        let mut h = 0u64;
        // SAFETY: `ptr` is an open handle; `arg` is the SizeHint, which the handle keeps
        // alive until it unregisters the watch (`unwatch_updates`, before `rbd_close`).
        let ret = unsafe {
            sys::rbd_update_watch(
                ptr,
                &mut h,
                Some(size_hint_changed),
                Arc::as_ptr(hint).cast_mut().cast(),
            )
        };
        (ret == 0).then_some(h)
    }

    /// Unregisters the update watch (`rbd_update_unwatch`, which waits for a callback in
    /// progress), before the handle is closed. Its error is ignored: the handle is closed
    /// next, which drops every watch.
    fn unwatch_updates(&mut self) {
        if let Some(h) = self.update_watch.take() {
            // SAFETY: open handle; `h` is its registration, unregistered once.
            unsafe { sys::rbd_update_unwatch(self.ptr, h) };
        }
    }

    /// The size last seen by [`Image::size`] on this handle, or 0: not known yet, or
    /// forgotten because the image changed since. librbd announces every change of the
    /// image's header (a resize here or by another client) to the handle's update
    /// watchers, and ours forgets the size; for a change made by another client, that
    /// happens before the change returns there. So reads inside the hint skip
    /// `rbd_get_size` (see `aio.rs`), and any other read asks librbd. Writes never use it.
    pub(crate) fn size_hint(&self) -> u64 {
        self.hint.size.load(Ordering::SeqCst)
    }

    /// A token for [`ImageHandle::set_size_hint`]: take it before asking librbd for the
    /// size.
    pub(crate) fn size_hint_token(&self) -> u64 {
        self.hint.changes.load(Ordering::SeqCst)
    }

    /// Records a size just read from librbd, unless the image changed since `token` was
    /// taken (then the size may predate the change) or there is no update watch.
    pub(crate) fn set_size_hint(&self, token: u64, size: u64) {
        if self.update_watch.is_none() {
            return;
        }
        self.hint.size.store(size, Ordering::SeqCst);
        // A change announced meanwhile forgets it again. Either its count is seen here,
        // or it comes after this store in the one order of SeqCst operations, and so does
        // its own store of 0.
        if self.hint.changes.load(Ordering::SeqCst) != token {
            self.hint.size.store(0, Ordering::SeqCst);
        }
    }

    /// Forgets the size hint (the image changed through this handle, or a read suggests
    /// it did).
    pub(crate) fn forget_size_hint(&self) {
        self.hint.invalidate();
    }

    /// Error context naming the image (pool, namespace, name or id).
    pub(crate) fn ctx(&self) -> Context {
        Context::pool(&self.pool)
            .with_namespace(&self.namespace)
            .with_image(&self.label)
    }

    /// `rbd_close`, reporting its error; Drop then does nothing.
    fn close(mut self, ctx: Context) -> Result<()> {
        self.unwatch_updates();
        let ptr = std::mem::replace(&mut self.ptr, std::ptr::null_mut());
        // SAFETY: `ptr` is the open handle and we own the last reference (nothing in
        // flight); nulling it first means Drop will not close it again.
        let ret = unsafe { sys::rbd_close(ptr) };
        check(ret, "rbd_close", || ctx)?;
        Ok(())
    }
}

/// An open RBD image (`rbd_image_t`).
///
/// Keeps the cluster connection alive ([`Rados`]); librbd duplicates the I/O context at
/// open, so the `IoCtx` it was opened from may be dropped first.
///
/// The C handle has exactly one owner, an internal handle closed by its `Drop`, which the
/// image shares with its asynchronous operations in flight ([`Image::aio_read`] and
/// friends). Dropping the `Image` while some are pending is therefore safe: the handle is
/// closed when the last of them completes. [`Image::close`] waits for them.
///
/// `Send + Sync`: librbd's `ImageCtx` guards its state with internal locks and supports
/// concurrent I/O and management calls from several threads, so one `Image` can be shared
/// (e.g. in an `Arc`) by many threads or tokio tasks issuing I/O at once. Methods that
/// change what the handle refers to ([`Image::snap_set`]) take `&mut self`.
pub struct Image {
    /// The raw handle: a copy of `handle.ptr`, valid as long as `handle` is.
    pub(crate) ptr: sys::rbd_image_t,
    pub(crate) handle: Arc<ImageHandle>,
    pub(crate) read_only: bool,
    pub(crate) snapshot: Option<String>,
    /// Largest single request handed to librbd; larger ones are split.
    pub(crate) max_request: usize,
}

// SAFETY: `ptr` is a copy of the pointer `handle` owns, and ImageHandle is Send + Sync (see
// there); everything else is plain data.
unsafe impl Send for Image {}
// SAFETY: see Send.
unsafe impl Sync for Image {}

impl std::fmt::Debug for Image {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Image")
            .field("pool", &self.handle.pool)
            .field("namespace", &self.handle.namespace)
            .field("image", &self.handle.label)
            .field("read_only", &self.read_only)
            .field("snapshot", &self.snapshot)
            .finish_non_exhaustive()
    }
}

enum By<'a> {
    Name(&'a str),
    Id(&'a str),
}

impl Image {
    /// Opens an image by name: `rbd_open`, or `rbd_open_read_only`.
    pub fn open(io: &IoCtx, name: &str, opts: &OpenOptions) -> Result<Image> {
        Self::open_impl(io, By::Name(name), opts)
    }

    /// Opens an image by its id (stable across renames): `rbd_open_by_id`, or
    /// `rbd_open_by_id_read_only`.
    pub fn open_by_id(io: &IoCtx, id: &str, opts: &OpenOptions) -> Result<Image> {
        Self::open_impl(io, By::Id(id), opts)
    }

    fn open_impl(io: &IoCtx, by: By<'_>, opts: &OpenOptions) -> Result<Image> {
        let (label, what) = match by {
            By::Name(n) => (n, "image name"),
            By::Id(i) => (i, "image id"),
        };
        crate::rbd::validate_image_name(what, label)?;
        let c = cstring(what, label)?;
        let snap = opt_cstring("snapshot name", opts.snapshot.as_deref())?;
        let mut ptr: sys::rbd_image_t = std::ptr::null_mut();
        let (ret, op) = match (by, opts.read_only) {
            // SAFETY (all four arms): valid ioctx, C strings and out-pointer that outlive the
            // call; snap may be NULL (head).
            (By::Name(_), false) => (
                // SAFETY: see above.
                unsafe { sys::rbd_open(io.ptr(), c.as_ptr(), &mut ptr, opt_ptr(&snap)) },
                "rbd_open",
            ),
            (By::Name(_), true) => (
                // SAFETY: see above.
                unsafe { sys::rbd_open_read_only(io.ptr(), c.as_ptr(), &mut ptr, opt_ptr(&snap)) },
                "rbd_open_read_only",
            ),
            (By::Id(_), false) => (
                // SAFETY: see above.
                unsafe { sys::rbd_open_by_id(io.ptr(), c.as_ptr(), &mut ptr, opt_ptr(&snap)) },
                "rbd_open_by_id",
            ),
            (By::Id(_), true) => (
                // SAFETY: see above.
                unsafe {
                    sys::rbd_open_by_id_read_only(io.ptr(), c.as_ptr(), &mut ptr, opt_ptr(&snap))
                },
                "rbd_open_by_id_read_only",
            ),
        };
        check(ret, op, || {
            let c = io.ctx().with_image(label);
            match &opts.snapshot {
                Some(s) => c.with_snap(s),
                None => c,
            }
        })?;
        let hint = Arc::new(SizeHint::default());
        let update_watch = ImageHandle::watch_updates(ptr, &hint);
        Ok(Image {
            ptr,
            handle: Arc::new(ImageHandle {
                ptr,
                rados: io.rados().clone(),
                pool: io.pool_name().to_owned(),
                namespace: io.namespace().to_owned(),
                label: label.to_owned(),
                hint,
                update_watch,
            }),
            read_only: opts.read_only,
            snapshot: opts.snapshot.clone(),
            max_request: crate::rbd::io::DEFAULT_MAX_REQUEST,
        })
    }

    /// Closes the image (`rbd_close`), reporting errors that `Drop` would swallow (e.g.
    /// a failed exclusive-lock release or cache flush).
    ///
    /// Asynchronous operations still in flight keep the handle open, so `close` first
    /// waits for them (futures dropped early are released as soon as librbd completes
    /// them), at most the connection's OSD op timeout plus 5 s. Futures that have
    /// completed but are neither awaited nor dropped also hold the handle: finish or drop
    /// them first. If any remain at the deadline, `close` fails with
    /// [`ErrorKind::Busy`](crate::ErrorKind::Busy) and the handle is closed when the last
    /// of them goes.
    pub fn close(self) -> Result<()> {
        let ctx = self.ctx();
        let Image { handle, .. } = self;
        let deadline = Instant::now() + handle.rados.timeouts().osd_op + Duration::from_secs(5);
        let mut handle = handle;
        let mut nap = Duration::from_micros(100);
        loop {
            match Arc::try_unwrap(handle) {
                Ok(h) => return h.close(ctx),
                Err(shared) => {
                    if Instant::now() >= deadline {
                        return Err(Error::from_errno("rbd_close", libc::EBUSY, ctx));
                    }
                    handle = shared;
                    std::thread::sleep(nap);
                    nap = (nap * 2).min(Duration::from_millis(10));
                }
            }
        }
    }

    /// Error context naming this image.
    pub(crate) fn ctx(&self) -> Context {
        let c = self.handle.ctx();
        match &self.snapshot {
            Some(s) => c.with_snap(s),
            None => c,
        }
    }

    /// The pool this image lives in.
    pub fn pool_name(&self) -> &str {
        &self.handle.pool
    }

    /// The namespace this image lives in (`""` for the default).
    pub fn namespace(&self) -> &str {
        &self.handle.namespace
    }

    /// True when opened read-only.
    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    /// The snapshot this handle reads, if opened at one.
    pub fn opened_snapshot(&self) -> Option<&str> {
        self.snapshot.as_deref()
    }

    /// The connection this image belongs to.
    pub fn rados(&self) -> &Rados {
        &self.handle.rados
    }
}
