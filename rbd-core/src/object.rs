//! RADOS objects: whole-object I/O, stat, truncate, xattrs and listing, as methods on
//! [`IoCtx`]. Every call runs in the context's pool and namespace.
//!
//! ```no_run
//! # fn f(io: &rbd_core::IoCtx) -> rbd_core::Result<()> {
//! io.write_full("greeting", b"hello")?;
//! io.append("greeting", b", world")?;
//! assert_eq!(io.read("greeting", 0, 64)?, b"hello, world");
//! assert_eq!(io.stat("greeting")?.size, 12);
//! io.remove_object("greeting")?;
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;
use std::ffi::{CString, c_char};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::error::{Error, Result, check};
use crate::ioctx::IoCtx;
pub use crate::omap::CreateMode;
use crate::omap::WriteOp;
use crate::sys;
use crate::util::{cstring, grow_buffer};

/// Size of the chunks [`IoCtx::read_full`] reads.
const READ_CHUNK: usize = 4 << 20;

/// The namespace name that makes a listing cover every namespace (`LIBRADOS_ALL_NSPACES`).
const ALL_NSPACES: &str = "\u{1}";

/// Validates an object name and converts it for C: non-empty, no NUL byte.
pub(crate) fn oid_cstring(oid: &str) -> Result<CString> {
    if oid.is_empty() {
        return Err(Error::invalid("object name", oid, "must not be empty"));
    }
    cstring("object name", oid)
}

/// Converts a C `time_t` (seconds since the epoch) to a `SystemTime`.
pub(crate) fn time_from_c(t: sys::time_t) -> SystemTime {
    if t >= 0 {
        UNIX_EPOCH + Duration::from_secs(t as u64)
    } else {
        UNIX_EPOCH - Duration::from_secs(t.unsigned_abs())
    }
}

/// Size and modification time of an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ObjectStat {
    /// Size in bytes.
    pub size: u64,
    /// Last modification time (whole seconds, as librados reports it).
    pub mtime: SystemTime,
}

/// An object found by [`IoCtx::list_objects_all_namespaces`].
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct ObjectId {
    /// Its namespace (`""` is the default one).
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// Its locator key, usually empty.
    pub locator: String,
}

/// Owner of a `rados_list_ctx_t`.
struct ListCtx(sys::rados_list_ctx_t);

impl Drop for ListCtx {
    fn drop(&mut self) {
        // SAFETY: opened by rados_nobjects_list_open and closed exactly once, here.
        unsafe { sys::rados_nobjects_list_close(self.0) };
    }
}

/// Owner of a `rados_xattrs_iter_t`.
struct XattrIter(sys::rados_xattrs_iter_t);

impl Drop for XattrIter {
    fn drop(&mut self) {
        // SAFETY: allocated by rados_getxattrs and freed exactly once, here.
        unsafe { sys::rados_getxattrs_end(self.0) };
    }
}

/// Copies `len` bytes at `p` (NULL or empty gives an empty string).
///
/// # Safety
/// `p` must be NULL or point to `len` readable bytes.
unsafe fn lossy(p: *const c_char, len: usize) -> String {
    if p.is_null() || len == 0 {
        return String::new();
    }
    // SAFETY: guaranteed by the caller.
    let b = unsafe { std::slice::from_raw_parts(p.cast::<u8>(), len) };
    String::from_utf8_lossy(b).into_owned()
}

impl IoCtx {
    /// Creates an empty object (`rados_write_op_create`). With
    /// [`CreateMode::Exclusive`] an existing object is [`crate::ErrorKind::Exists`].
    pub fn create_object(&self, oid: &str, mode: CreateMode) -> Result<()> {
        WriteOp::new().create(mode).operate(self, oid)
    }

    /// Writes `data` at `offset`, creating the object if needed (`rados_write`).
    pub fn write(&self, oid: &str, data: &[u8], offset: u64) -> Result<()> {
        let c = oid_cstring(oid)?;
        // SAFETY: valid ioctx and C string; `data` is readable for its length and only
        // read during the call.
        let ret = unsafe {
            sys::rados_write(
                self.ptr(),
                c.as_ptr(),
                data.as_ptr().cast(),
                data.len(),
                offset,
            )
        };
        check(ret, "rados_write", || self.ctx().with_object(oid))?;
        Ok(())
    }

    /// Replaces the object's data with `data`, creating it if needed (`rados_write_full`).
    pub fn write_full(&self, oid: &str, data: &[u8]) -> Result<()> {
        let c = oid_cstring(oid)?;
        // SAFETY: valid ioctx, C string and input buffer, only read during the call.
        let ret = unsafe {
            sys::rados_write_full(self.ptr(), c.as_ptr(), data.as_ptr().cast(), data.len())
        };
        check(ret, "rados_write_full", || self.ctx().with_object(oid))?;
        Ok(())
    }

    /// Appends `data`, creating the object if needed (`rados_append`).
    pub fn append(&self, oid: &str, data: &[u8]) -> Result<()> {
        let c = oid_cstring(oid)?;
        // SAFETY: valid ioctx, C string and input buffer, only read during the call.
        let ret =
            unsafe { sys::rados_append(self.ptr(), c.as_ptr(), data.as_ptr().cast(), data.len()) };
        check(ret, "rados_append", || self.ctx().with_object(oid))?;
        Ok(())
    }

    /// Reads into `buf` from `offset`; returns how many bytes were read, fewer than
    /// `buf.len()` only at the end of the object (`rados_read`).
    pub fn read_into(&self, oid: &str, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let c = oid_cstring(oid)?;
        if buf.is_empty() {
            return Ok(0);
        }
        if buf.len() > i32::MAX as usize {
            return Err(Error::invalid(
                "read length",
                buf.len().to_string(),
                "must fit in 31 bits (rados_read returns an int)",
            ));
        }
        // SAFETY: valid ioctx and C string; `buf` is writable for its length and librados
        // writes at most that many bytes, only during the call.
        let ret = unsafe {
            sys::rados_read(
                self.ptr(),
                c.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                offset,
            )
        };
        let n = check(ret, "rados_read", || self.ctx().with_object(oid))?;
        Ok(n as usize)
    }

    /// Reads up to `len` bytes from `offset` (`rados_read`); shorter at the end of the
    /// object, empty past it.
    pub fn read(&self, oid: &str, offset: u64, len: usize) -> Result<Vec<u8>> {
        if len > i32::MAX as usize {
            return Err(Error::invalid(
                "read length",
                len.to_string(),
                "must fit in 31 bits (rados_read returns an int)",
            ));
        }
        let mut buf = vec![0u8; len];
        let n = self.read_into(oid, offset, &mut buf)?;
        buf.truncate(n);
        Ok(buf)
    }

    /// Reads the whole object, in chunks until a short read (`rados_read`).
    pub fn read_full(&self, oid: &str) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        loop {
            let start = out.len();
            out.resize(start + READ_CHUNK, 0);
            let n = self.read_into(oid, start as u64, &mut out[start..])?;
            out.truncate(start + n);
            if n < READ_CHUNK {
                return Ok(out);
            }
        }
    }

    /// Deletes the object (`rados_remove`). A missing object is
    /// [`crate::ErrorKind::NotFound`].
    pub fn remove_object(&self, oid: &str) -> Result<()> {
        let c = oid_cstring(oid)?;
        // SAFETY: valid ioctx and C string.
        let ret = unsafe { sys::rados_remove(self.ptr(), c.as_ptr()) };
        check(ret, "rados_remove", || self.ctx().with_object(oid))?;
        Ok(())
    }

    /// Size and modification time of the object (`rados_stat`).
    pub fn stat(&self, oid: &str) -> Result<ObjectStat> {
        let c = oid_cstring(oid)?;
        let mut size = 0u64;
        let mut mtime: sys::time_t = 0;
        // SAFETY: valid ioctx, C string and out-pointers to locals.
        let ret = unsafe { sys::rados_stat(self.ptr(), c.as_ptr(), &mut size, &mut mtime) };
        check(ret, "rados_stat", || self.ctx().with_object(oid))?;
        Ok(ObjectStat {
            size,
            mtime: time_from_c(mtime),
        })
    }

    /// Resizes the object to `size` bytes, zero-filling when growing (`rados_trunc`).
    pub fn truncate(&self, oid: &str, size: u64) -> Result<()> {
        let c = oid_cstring(oid)?;
        // SAFETY: valid ioctx and C string.
        let ret = unsafe { sys::rados_trunc(self.ptr(), c.as_ptr(), size) };
        check(ret, "rados_trunc", || self.ctx().with_object(oid))?;
        Ok(())
    }

    /// The version of the last object this context read or wrote
    /// (`rados_get_last_version`), for [`WriteOp::assert_version`]. Only meaningful when
    /// no other thread uses this context concurrently.
    pub fn last_version(&self) -> u64 {
        // SAFETY: valid ioctx; the call only reads.
        unsafe { sys::rados_get_last_version(self.ptr()) }
    }

    /// The value of an extended attribute (`rados_getxattr`). A missing attribute is
    /// [`crate::ErrorKind::Other`] with errno `ENODATA`.
    pub fn get_xattr(&self, oid: &str, name: &str) -> Result<Vec<u8>> {
        let c = oid_cstring(oid)?;
        let n = cstring("xattr name", name)?;
        let (buf, ret) = grow_buffer(1024, |b, len| {
            // SAFETY: valid ioctx and C strings; `b` is writable for its length. librados
            // returns -ERANGE (without writing) when the value does not fit.
            let r = unsafe {
                sys::rados_getxattr(
                    self.ptr(),
                    c.as_ptr(),
                    n.as_ptr(),
                    b.as_mut_ptr().cast(),
                    b.len(),
                )
            };
            if r >= 0 {
                *len = r as usize;
            }
            r
        });
        check(ret, "rados_getxattr", || self.ctx().with_object(oid))?;
        Ok(buf)
    }

    /// Sets an extended attribute (`rados_setxattr`).
    pub fn set_xattr(&self, oid: &str, name: &str, value: &[u8]) -> Result<()> {
        let c = oid_cstring(oid)?;
        let n = cstring("xattr name", name)?;
        // SAFETY: valid ioctx, C strings and input buffer, only read during the call.
        let ret = unsafe {
            sys::rados_setxattr(
                self.ptr(),
                c.as_ptr(),
                n.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
            )
        };
        check(ret, "rados_setxattr", || self.ctx().with_object(oid))?;
        Ok(())
    }

    /// Removes an extended attribute (`rados_rmxattr`).
    pub fn rm_xattr(&self, oid: &str, name: &str) -> Result<()> {
        let c = oid_cstring(oid)?;
        let n = cstring("xattr name", name)?;
        // SAFETY: valid ioctx and C strings.
        let ret = unsafe { sys::rados_rmxattr(self.ptr(), c.as_ptr(), n.as_ptr()) };
        check(ret, "rados_rmxattr", || self.ctx().with_object(oid))?;
        Ok(())
    }

    /// Every extended attribute of the object (`rados_getxattrs`, `rados_getxattrs_next`,
    /// `rados_getxattrs_end`).
    pub fn xattrs(&self, oid: &str) -> Result<BTreeMap<String, Vec<u8>>> {
        let c = oid_cstring(oid)?;
        let mut it: sys::rados_xattrs_iter_t = std::ptr::null_mut();
        // SAFETY: valid ioctx, C string and out-pointer.
        let ret = unsafe { sys::rados_getxattrs(self.ptr(), c.as_ptr(), &mut it) };
        check(ret, "rados_getxattrs", || self.ctx().with_object(oid))?;
        let it = XattrIter(it);
        let mut out = BTreeMap::new();
        loop {
            let mut name: *const c_char = std::ptr::null();
            let mut val: *const c_char = std::ptr::null();
            let mut len = 0usize;
            // SAFETY: live iterator; out-pointers are valid locals.
            let ret = unsafe { sys::rados_getxattrs_next(it.0, &mut name, &mut val, &mut len) };
            check(ret, "rados_getxattrs_next", || self.ctx().with_object(oid))?;
            if name.is_null() {
                return Ok(out);
            }
            // SAFETY: `name` is a NUL-terminated string valid until the next call.
            let key = unsafe { crate::util::from_cstr(name) };
            let value = if val.is_null() || len == 0 {
                Vec::new()
            } else {
                // SAFETY: `len` bytes at `val`, valid until the next call; copied at once.
                unsafe { std::slice::from_raw_parts(val.cast::<u8>(), len) }.to_vec()
            };
            out.insert(key, value);
        }
    }

    fn list_impl(&self) -> Result<Vec<ObjectId>> {
        let mut lc: sys::rados_list_ctx_t = std::ptr::null_mut();
        // SAFETY: valid ioctx and out-pointer.
        let ret = unsafe { sys::rados_nobjects_list_open(self.ptr(), &mut lc) };
        check(ret, "rados_nobjects_list_open", || self.ctx())?;
        let lc = ListCtx(lc);
        let mut out = Vec::new();
        loop {
            let (mut e, mut k, mut n): (*const c_char, *const c_char, *const c_char) =
                (std::ptr::null(), std::ptr::null(), std::ptr::null());
            let (mut el, mut kl, mut nl) = (0usize, 0usize, 0usize);
            // SAFETY: live list context; all out-pointers are valid locals.
            let ret = unsafe {
                sys::rados_nobjects_list_next2(
                    lc.0, &mut e, &mut k, &mut n, &mut el, &mut kl, &mut nl,
                )
            };
            if ret == -libc::ENOENT {
                return Ok(out);
            }
            check(ret, "rados_nobjects_list_next2", || self.ctx())?;
            // SAFETY: each pointer is NULL or valid for its reported size until the next
            // call on the list context; `lossy` copies at once.
            let id = unsafe {
                ObjectId {
                    name: lossy(e, el),
                    locator: lossy(k, kl),
                    namespace: lossy(n, nl),
                }
            };
            out.push(id);
        }
    }

    /// Names of the objects in this context's namespace, in RADOS (hash) order
    /// (`rados_nobjects_list_open`, `rados_nobjects_list_next2`,
    /// `rados_nobjects_list_close`).
    pub fn list_objects(&self) -> Result<Vec<String>> {
        Ok(self.list_impl()?.into_iter().map(|o| o.name).collect())
    }

    /// Every object of the pool in every namespace (`rados_nobjects_list_*` with
    /// `LIBRADOS_ALL_NSPACES`).
    pub fn list_objects_all_namespaces(&self) -> Result<Vec<ObjectId>> {
        self.with_namespace(ALL_NSPACES)?.list_impl()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_names_are_validated() {
        assert!(oid_cstring("a").is_ok());
        assert_eq!(
            oid_cstring("").unwrap_err().kind(),
            crate::ErrorKind::InvalidInput
        );
        assert!(
            oid_cstring("a\0b")
                .unwrap_err()
                .to_string()
                .contains("object name")
        );
    }

    #[test]
    fn c_times() {
        assert_eq!(time_from_c(0), UNIX_EPOCH);
        assert_eq!(time_from_c(10), UNIX_EPOCH + Duration::from_secs(10));
        assert_eq!(time_from_c(-10), UNIX_EPOCH - Duration::from_secs(10));
    }

    #[test]
    fn all_namespaces_constant_matches_header() {
        let mut b = ALL_NSPACES.as_bytes().to_vec();
        b.push(0);
        assert_eq!(&b[..], &sys::LIBRADOS_ALL_NSPACES[..]);
    }
}
