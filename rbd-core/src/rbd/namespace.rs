//! RBD namespaces (`rbd namespace ls/create/remove`): per-tenant image directories inside a
//! pool.

use crate::error::{Result, check};
use crate::ioctx::IoCtx;
use crate::sys;
use crate::util::cstring;

/// Whether the RBD namespace `name` exists in the pool of `io` (`rbd_namespace_exists`).
///
/// The default namespace (`""`) always exists.
pub fn namespace_exists(io: &IoCtx, name: &str) -> Result<bool> {
    if name.is_empty() {
        return Ok(true);
    }
    let c = cstring("namespace", name)?;
    let mut exists = false;
    // SAFETY: valid ioctx, C string and out-pointer, all alive for the call.
    let ret = unsafe { sys::rbd_namespace_exists(io.ptr(), c.as_ptr(), &mut exists) };
    check(ret, "rbd_namespace_exists", || {
        io.ctx().with_namespace(name)
    })?;
    Ok(exists)
}
