//! The open image handle ([`Image`]) and how to open one ([`OpenOptions`]).

use std::sync::Arc;
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

    /// Error context naming the image (pool, namespace, name or id).
    pub(crate) fn ctx(&self) -> Context {
        Context::pool(&self.pool)
            .with_namespace(&self.namespace)
            .with_image(&self.label)
    }

    /// `rbd_close`, reporting its error; Drop then does nothing.
    fn close(mut self, ctx: Context) -> Result<()> {
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
        Ok(Image {
            ptr,
            handle: Arc::new(ImageHandle {
                ptr,
                rados: io.rados().clone(),
                pool: io.pool_name().to_owned(),
                namespace: io.namespace().to_owned(),
                label: label.to_owned(),
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
