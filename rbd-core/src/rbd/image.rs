//! The open image handle ([`Image`]) and how to open one ([`OpenOptions`]).

use crate::error::{Context, Result, check};
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

/// Owner of one `rbd_image_t`.
///
/// Keeps the cluster connection alive ([`Rados`]); librbd duplicates the I/O context at
/// open, so the `IoCtx` it was opened from may be dropped first.
///
/// `Send + Sync`: librbd's `ImageCtx` guards its state with internal locks and supports
/// concurrent I/O and management calls from several threads (the Python and Go bindings
/// rely on this too). The handle is freed only by `Drop`/[`Image::close`].
pub struct Image {
    pub(crate) ptr: sys::rbd_image_t,
    pub(crate) rados: Rados,
    pub(crate) pool: String,
    pub(crate) namespace: String,
    /// The name or id it was opened by, for error messages.
    pub(crate) label: String,
    pub(crate) read_only: bool,
    pub(crate) snapshot: Option<String>,
}

// SAFETY: see the type docs: librbd image handles are internally synchronized.
unsafe impl Send for Image {}
// SAFETY: see the type docs.
unsafe impl Sync for Image {}

impl std::fmt::Debug for Image {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Image")
            .field("pool", &self.pool)
            .field("namespace", &self.namespace)
            .field("image", &self.label)
            .field("read_only", &self.read_only)
            .field("snapshot", &self.snapshot)
            .finish_non_exhaustive()
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        if !self.ptr.is_null() {
            // SAFETY: `ptr` came from rbd_open* and is closed once (close() nulls it).
            unsafe { sys::rbd_close(self.ptr) };
        }
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
            rados: io.rados().clone(),
            pool: io.pool_name().to_owned(),
            namespace: io.namespace().to_owned(),
            label: label.to_owned(),
            read_only: opts.read_only,
            snapshot: opts.snapshot.clone(),
        })
    }

    /// Closes the image (`rbd_close`), reporting errors that `Drop` would swallow (e.g.
    /// a failed exclusive-lock release or cache flush).
    pub fn close(mut self) -> Result<()> {
        let ptr = std::mem::replace(&mut self.ptr, std::ptr::null_mut());
        // SAFETY: `ptr` is the open handle; nulling it first means Drop will not close it
        // again.
        let ret = unsafe { sys::rbd_close(ptr) };
        check(ret, "rbd_close", || self.ctx())?;
        Ok(())
    }

    /// Error context naming this image.
    pub(crate) fn ctx(&self) -> Context {
        let c = Context::pool(&self.pool)
            .with_namespace(&self.namespace)
            .with_image(&self.label);
        match &self.snapshot {
            Some(s) => c.with_snap(s),
            None => c,
        }
    }

    /// The pool this image lives in.
    pub fn pool_name(&self) -> &str {
        &self.pool
    }

    /// The namespace this image lives in (`""` for the default).
    pub fn namespace(&self) -> &str {
        &self.namespace
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
        &self.rados
    }
}
