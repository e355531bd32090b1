//! Pool I/O contexts ([`IoCtx`]): the handle every object, omap, watch and image operation
//! runs in.

use crate::error::{Context, Result, check};
use crate::rados::Rados;
use crate::sys;
use crate::util::{cstring, from_buf};

/// An I/O context on one pool and namespace (`rados_ioctx_t`).
///
/// Holds its [`Rados`] connection alive. Dropping it calls `rados_ioctx_destroy`.
///
/// `Send + Sync`: librados I/O contexts are safe for concurrent operations. The only state
/// they carry that operations read (the namespace) changes through
/// [`IoCtx::set_namespace`], which takes `&mut self`, so it cannot race with an operation.
pub struct IoCtx {
    ptr: sys::rados_ioctx_t,
    rados: Rados,
    pool: String,
    namespace: String,
}

// SAFETY: see the type docs: librados ioctx operations are thread-safe, and the mutable
// state (namespace) is only changed through `&mut self`.
unsafe impl Send for IoCtx {}
// SAFETY: as above; `&IoCtx` methods only issue thread-safe librados operations.
unsafe impl Sync for IoCtx {}

impl Drop for IoCtx {
    fn drop(&mut self) {
        // SAFETY: `ptr` came from rados_ioctx_create{,2} and is destroyed once; the cluster
        // handle is still alive because `self.rados` holds it.
        unsafe { sys::rados_ioctx_destroy(self.ptr) };
    }
}

impl std::fmt::Debug for IoCtx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IoCtx")
            .field("pool", &self.pool)
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

impl IoCtx {
    /// `rados_ioctx_create`.
    pub(crate) fn create(rados: &Rados, pool: &str) -> Result<IoCtx> {
        let p = cstring("pool name", pool)?;
        let mut ptr: sys::rados_ioctx_t = std::ptr::null_mut();
        // SAFETY: valid cluster handle, C string and out-pointer.
        let ret = unsafe { sys::rados_ioctx_create(rados.ptr(), p.as_ptr(), &mut ptr) };
        check(ret, "rados_ioctx_create", || Context::pool(pool))?;
        Ok(IoCtx {
            ptr,
            rados: rados.clone(),
            pool: pool.to_owned(),
            namespace: String::new(),
        })
    }

    /// `rados_ioctx_create2`.
    pub(crate) fn create_by_id(rados: &Rados, pool_id: i64) -> Result<IoCtx> {
        let mut ptr: sys::rados_ioctx_t = std::ptr::null_mut();
        // SAFETY: valid cluster handle and out-pointer.
        let ret = unsafe { sys::rados_ioctx_create2(rados.ptr(), pool_id, &mut ptr) };
        check(ret, "rados_ioctx_create2", || {
            Context::pool(format!("#{pool_id}"))
        })?;
        let mut io = IoCtx {
            ptr,
            rados: rados.clone(),
            pool: format!("#{pool_id}"),
            namespace: String::new(),
        };
        let mut buf = vec![0u8; 256];
        // SAFETY: valid ioctx; `buf` is writable for its length.
        let ret = unsafe {
            sys::rados_ioctx_get_pool_name(io.ptr, buf.as_mut_ptr().cast(), buf.len() as u32)
        };
        if ret >= 0 {
            io.pool = from_buf(&buf);
        }
        Ok(io)
    }

    /// A new, independent I/O context on the same pool and namespace
    /// (`rados_ioctx_create`, then `rados_ioctx_set_namespace`).
    pub fn try_clone(&self) -> Result<IoCtx> {
        let mut io = IoCtx::create(&self.rados, &self.pool)?;
        io.set_namespace(&self.namespace)?;
        Ok(io)
    }

    /// A new I/O context on the same pool in another namespace (`rados_ioctx_create`,
    /// then `rados_ioctx_set_namespace`); this one is left as it is.
    pub fn with_namespace(&self, namespace: &str) -> Result<IoCtx> {
        let mut io = IoCtx::create(&self.rados, &self.pool)?;
        io.set_namespace(namespace)?;
        Ok(io)
    }

    /// Sets the RADOS namespace for later operations (`rados_ioctx_set_namespace`); `""`
    /// is the default namespace.
    pub fn set_namespace(&mut self, namespace: &str) -> Result<()> {
        let ns = cstring("namespace", namespace)?;
        // SAFETY: valid ioctx and C string (copied by librados). `&mut self` guarantees no
        // operation on this ioctx runs concurrently.
        unsafe { sys::rados_ioctx_set_namespace(self.ptr, ns.as_ptr()) };
        self.namespace = namespace.to_owned();
        Ok(())
    }

    /// The current namespace (`""` is the default one).
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The pool's name.
    pub fn pool_name(&self) -> &str {
        &self.pool
    }

    /// The pool's id (`rados_ioctx_get_id`).
    pub fn pool_id(&self) -> i64 {
        // SAFETY: valid ioctx; the call only reads.
        unsafe { sys::rados_ioctx_get_id(self.ptr) }
    }

    /// The connection this context belongs to.
    pub fn rados(&self) -> &Rados {
        &self.rados
    }

    pub(crate) fn ptr(&self) -> sys::rados_ioctx_t {
        self.ptr
    }

    /// Error context naming this pool and namespace.
    pub(crate) fn ctx(&self) -> Context {
        Context::pool(&self.pool).with_namespace(&self.namespace)
    }
}
