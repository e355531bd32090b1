//! Compound object operations ([`WriteOp`], [`ReadOp`]) and the omap (object key/value map)
//! API built on them.
//!
//! A RADOS operation bundles several actions on one object that the OSD applies atomically:
//! either all of a [`WriteOp`]'s actions take effect or none do. Guards
//! ([`WriteOp::omap_cmp`], [`WriteOp::cmpxattr`], [`WriteOp::assert_exists`],
//! [`WriteOp::assert_version`]) make the whole operation fail when their condition does
//! not hold, which is how compare-and-swap transactions are written:
//!
//! ```no_run
//! use rbd_core::omap::{OmapCmpOp, WriteOp};
//! # fn f(io: &rbd_core::IoCtx) -> rbd_core::Result<()> {
//! // Replace "owner" only if it is still "node-a".
//! WriteOp::new()
//!     .omap_cmp("owner", OmapCmpOp::Eq, b"node-a")
//!     .omap_set(&[("owner", b"node-b")])
//!     .operate(io, "registry")?; // ErrorKind::ConditionFailed if it changed
//! # Ok(()) }
//! ```
//!
//! # Memory the C side writes into
//!
//! librados keeps raw pointers to every output of an operation (per-action return values,
//! iterators, read buffers, sizes) and writes through them when the reply arrives, i.e.
//! during `operate`. Each op therefore owns those outputs in separately allocated heap
//! slots whose addresses never change, and frees them only after the C op was released.
//! Inputs (keys, values, names) are copied into the op's encoded buffers by librados before
//! the builder call returns, so they only need to live for that call.

use std::collections::BTreeMap;
use std::ffi::{CString, c_char, c_int};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::error::{Context, Error, Result};
use crate::ioctx::IoCtx;
use crate::object::{ObjectStat, oid_cstring, time_from_c};
use crate::sys;
use crate::util::cstring;

/// Default number of omap entries fetched per round trip when listing.
pub const OMAP_PAGE_SIZE: u64 = 1000;

/// A heap cell whose address stays fixed until it is dropped, for C to write into.
///
/// Allocated with `Box::into_raw` (not kept as a `Box`) so that moving the owning struct
/// never moves the cell or invalidates the raw pointer librados holds.
pub(crate) struct Slot<T: ?Sized> {
    ptr: NonNull<T>,
}

impl<T> Slot<T> {
    pub(crate) fn new(value: T) -> Self {
        Self::from_box(Box::new(value))
    }
    /// Reads the current value.
    pub(crate) fn get(&self) -> T
    where
        T: Copy,
    {
        // SAFETY: `ptr` came from Box::into_raw and stays valid until Drop; C writes into
        // it only while an operation runs, and callers read after that.
        unsafe { self.ptr.as_ptr().read() }
    }
}

impl<T: ?Sized> Slot<T> {
    pub(crate) fn from_box(b: Box<T>) -> Self {
        // SAFETY: Box::into_raw never returns NULL.
        let ptr = unsafe { NonNull::new_unchecked(Box::into_raw(b)) };
        Self { ptr }
    }
    /// The fixed address handed to C.
    pub(crate) fn as_ptr(&self) -> *mut T {
        self.ptr.as_ptr()
    }
}

impl Slot<[u8]> {
    /// The buffer's contents.
    pub(crate) fn bytes(&self) -> &[u8] {
        // SAFETY: valid allocation owned by self; no C write is in flight when this is
        // called (only after operate returned).
        unsafe { &*self.ptr.as_ptr() }
    }
}

impl<T: ?Sized> Drop for Slot<T> {
    fn drop(&mut self) {
        // SAFETY: `ptr` came from Box::into_raw and is freed exactly once, here.
        drop(unsafe { Box::from_raw(self.ptr.as_ptr()) });
    }
}

// SAFETY: a Slot is a uniquely owned heap allocation, like Box<T>.
unsafe impl<T: ?Sized + Send> Send for Slot<T> {}
// SAFETY: as for Box<T>: shared access only reads.
unsafe impl<T: ?Sized + Sync> Sync for Slot<T> {}

/// Comparison operators for [`WriteOp::cmpxattr`] / [`ReadOp::cmpxattr`]
/// (`LIBRADOS_CMPXATTR_OP_*`). The stored value is on the left: `Lt` holds when
/// `stored < given`. Values compare as byte strings; a missing xattr compares as empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum CmpOp {
    /// Equal.
    Eq,
    /// Not equal.
    Ne,
    /// Greater than.
    Gt,
    /// Greater than or equal.
    Gte,
    /// Less than.
    Lt,
    /// Less than or equal.
    Lte,
}

impl CmpOp {
    fn raw(self) -> u8 {
        let v = match self {
            CmpOp::Eq => sys::LIBRADOS_CMPXATTR_OP_EQ,
            CmpOp::Ne => sys::LIBRADOS_CMPXATTR_OP_NE,
            CmpOp::Gt => sys::LIBRADOS_CMPXATTR_OP_GT,
            CmpOp::Gte => sys::LIBRADOS_CMPXATTR_OP_GTE,
            CmpOp::Lt => sys::LIBRADOS_CMPXATTR_OP_LT,
            CmpOp::Lte => sys::LIBRADOS_CMPXATTR_OP_LTE,
        };
        v as u8
    }
}

/// Comparison operators the OSD supports for omap guards ([`WriteOp::omap_cmp`]).
///
/// Only these three: the OSD answers `EINVAL` for the others. The stored value is on the
/// left (`Lt` holds when `stored < given`), values compare as byte strings, and **a missing
/// key compares as the empty value**, so `Eq` with `b""` means "absent (or empty)".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum OmapCmpOp {
    /// Equal.
    Eq,
    /// Stored value is less than the given one.
    Lt,
    /// Stored value is greater than the given one.
    Gt,
}

impl OmapCmpOp {
    fn raw(self) -> u8 {
        let v = match self {
            OmapCmpOp::Eq => sys::LIBRADOS_CMPXATTR_OP_EQ,
            OmapCmpOp::Lt => sys::LIBRADOS_CMPXATTR_OP_LT,
            OmapCmpOp::Gt => sys::LIBRADOS_CMPXATTR_OP_GT,
        };
        v as u8
    }
}

/// How [`WriteOp::create`] treats an object that already exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum CreateMode {
    /// Fail with [`crate::ErrorKind::Exists`] (`LIBRADOS_CREATE_EXCLUSIVE`).
    Exclusive,
    /// Succeed and leave it unchanged (`LIBRADOS_CREATE_IDEMPOTENT`).
    Idempotent,
}

bitflags::bitflags! {
    /// Flags for a whole operation (`LIBRADOS_OPERATION_*`).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct OperationFlags: u32 {
        /// Read from any replica (`LIBRADOS_OPERATION_BALANCE_READS`).
        const BALANCE_READS = sys::LIBRADOS_OPERATION_BALANCE_READS;
        /// Read from the nearest replica (`LIBRADOS_OPERATION_LOCALIZE_READS`).
        const LOCALIZE_READS = sys::LIBRADOS_OPERATION_LOCALIZE_READS;
        /// Order reads after pending writes (`LIBRADOS_OPERATION_ORDER_READS_WRITES`).
        const ORDER_READS_WRITES = sys::LIBRADOS_OPERATION_ORDER_READS_WRITES;
        /// Bypass a cache tier (`LIBRADOS_OPERATION_IGNORE_CACHE`).
        const IGNORE_CACHE = sys::LIBRADOS_OPERATION_IGNORE_CACHE;
        /// Skip read/write locks (`LIBRADOS_OPERATION_SKIPRWLOCKS`).
        const SKIPRWLOCKS = sys::LIBRADOS_OPERATION_SKIPRWLOCKS;
        /// Ignore a cache-tier overlay (`LIBRADOS_OPERATION_IGNORE_OVERLAY`).
        const IGNORE_OVERLAY = sys::LIBRADOS_OPERATION_IGNORE_OVERLAY;
        /// Send even when the cluster or pool is full (`LIBRADOS_OPERATION_FULL_TRY`).
        const FULL_TRY = sys::LIBRADOS_OPERATION_FULL_TRY;
        /// Force even when full, for deletes (`LIBRADOS_OPERATION_FULL_FORCE`).
        const FULL_FORCE = sys::LIBRADOS_OPERATION_FULL_FORCE;
    }
}

fn flags_raw(f: OperationFlags) -> c_int {
    f.bits() as c_int
}

/// One action in an op, with its per-action return value when librados offers one.
struct Step {
    name: &'static str,
    prval: Option<Slot<c_int>>,
}

/// Turns an operation's return code and its per-action return values into a [`Result`].
///
/// The failing action (first negative `prval`) names the error, so a failed guard reports
/// `rados_write_op_omap_cmp` rather than just the operate call. A negative `prval` is an
/// error even if the operation as a whole returned success.
fn op_result<'a>(
    ret: c_int,
    steps: impl Iterator<Item = (&'static str, Option<&'a Slot<c_int>>)>,
    default_op: &'static str,
    ctx: impl FnOnce() -> Context,
) -> Result<()> {
    let failed = steps
        .filter_map(|(name, p)| p.map(|p| (name, p.get())))
        .find(|&(_, v)| v < 0);
    match (ret, failed) {
        (r, Some((name, _))) if r < 0 => Err(Error::from_errno(name, -r, ctx())),
        (r, None) if r < 0 => Err(Error::from_errno(default_op, -r, ctx())),
        (_, Some((name, v))) => Err(Error::from_errno(name, -v, ctx())),
        _ => Ok(()),
    }
}

fn cstrings(what: &'static str, items: &[impl AsRef<str>]) -> Result<Vec<CString>> {
    items.iter().map(|k| cstring(what, k.as_ref())).collect()
}

fn timespec(t: SystemTime) -> sys::timespec {
    let (secs, nanos) = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => (d.as_secs() as i64, i64::from(d.subsec_nanos())),
        Err(e) => {
            let d = e.duration();
            let mut s = -(d.as_secs() as i64);
            let mut n = i64::from(d.subsec_nanos());
            if n > 0 {
                s -= 1;
                n = 1_000_000_000 - n;
            }
            (s, n)
        }
    };
    sys::timespec {
        tv_sec: secs as sys::__time_t,
        tv_nsec: nanos as sys::__syscall_slong_t,
    }
}

/// An atomic compound write on one object (owner of a `rados_write_op_t`).
///
/// Build it with the chaining methods, then run it once with [`WriteOp::operate`]. Either
/// every action is applied or none. A failed guard makes `operate` return
/// [`crate::ErrorKind::ConditionFailed`] (`ECANCELED`) and leaves the object unchanged.
///
/// Invalid input given to a builder method (e.g. a key with a NUL byte) is remembered and
/// returned by `operate` before anything is sent. Dropping an op that was never run
/// releases it (`rados_release_write_op`).
#[must_use = "a WriteOp does nothing until operate() is called"]
pub struct WriteOp {
    ptr: sys::rados_write_op_t,
    steps: Vec<Step>,
    flags: OperationFlags,
    mtime: Option<SystemTime>,
    error: Option<Error>,
}

// SAFETY: a rados_write_op_t is a heap ObjectOperation not tied to any thread; this type
// owns it exclusively, and its output slots are owned heap cells.
unsafe impl Send for WriteOp {}

impl std::fmt::Debug for WriteOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteOp")
            .field(
                "actions",
                &self.steps.iter().map(|s| s.name).collect::<Vec<_>>(),
            )
            .field("flags", &self.flags)
            .finish_non_exhaustive()
    }
}

impl Drop for WriteOp {
    fn drop(&mut self) {
        // SAFETY: `ptr` came from rados_create_write_op and is released exactly once; no
        // operate call is running (operate borrows self). The prval slots are freed after
        // this, when the fields drop.
        unsafe { sys::rados_release_write_op(self.ptr) };
    }
}

impl Default for WriteOp {
    fn default() -> Self {
        Self::new()
    }
}

impl WriteOp {
    /// An empty write operation (`rados_create_write_op`).
    ///
    /// # Panics
    /// If librados cannot allocate the operation (out of memory).
    pub fn new() -> Self {
        // SAFETY: no arguments; returns NULL only on allocation failure.
        let ptr = unsafe { sys::rados_create_write_op() };
        assert!(!ptr.is_null(), "rados_create_write_op: out of memory");
        Self {
            ptr,
            steps: Vec::new(),
            flags: OperationFlags::empty(),
            mtime: None,
            error: None,
        }
    }

    fn push(&mut self, name: &'static str) {
        self.steps.push(Step { name, prval: None });
    }

    /// Pushes a step with a prval slot and returns the slot's address for C.
    fn push_with_prval(&mut self, name: &'static str) -> *mut c_int {
        let slot = Slot::new(0);
        let p = slot.as_ptr();
        self.steps.push(Step {
            name,
            prval: Some(slot),
        });
        p
    }

    fn fail(&mut self, e: Error) {
        if self.error.is_none() {
            self.error = Some(e);
        }
    }

    /// The number of actions added so far.
    pub fn len(&self) -> usize {
        self.steps.len()
    }

    /// True when no action was added.
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// Flags for the whole operation (`LIBRADOS_OPERATION_*`, passed to
    /// `rados_write_op_operate2`).
    pub fn flags(mut self, flags: OperationFlags) -> Self {
        self.flags = flags;
        self
    }

    /// Sets the object's modification time to `t` instead of now (the `mtime` argument of
    /// `rados_write_op_operate2`).
    pub fn mtime(mut self, t: SystemTime) -> Self {
        self.mtime = Some(t);
        self
    }

    /// Creates the object (`rados_write_op_create`).
    pub fn create(mut self, mode: CreateMode) -> Self {
        let excl = match mode {
            CreateMode::Exclusive => sys::LIBRADOS_CREATE_EXCLUSIVE,
            CreateMode::Idempotent => sys::LIBRADOS_CREATE_IDEMPOTENT,
        } as c_int;
        // SAFETY: valid op; the category argument is deprecated and may be NULL.
        unsafe { sys::rados_write_op_create(self.ptr, excl, std::ptr::null()) };
        self.push("rados_write_op_create");
        self
    }

    /// Fails the operation with [`crate::ErrorKind::NotFound`] unless the object exists
    /// (`rados_write_op_assert_exists`).
    pub fn assert_exists(mut self) -> Self {
        // SAFETY: valid op.
        unsafe { sys::rados_write_op_assert_exists(self.ptr) };
        self.push("rados_write_op_assert_exists");
        self
    }

    /// Fails the operation unless the object's version is `version`
    /// (`rados_write_op_assert_version`): `ERANGE` ([`crate::ErrorKind::InvalidInput`])
    /// when the object is newer, `EOVERFLOW` when older. See [`IoCtx::last_version`].
    pub fn assert_version(mut self, version: u64) -> Self {
        // SAFETY: valid op.
        unsafe { sys::rados_write_op_assert_version(self.ptr, version) };
        self.push("rados_write_op_assert_version");
        self
    }

    /// Guard: fails the operation with [`crate::ErrorKind::ConditionFailed`] unless the
    /// xattr `name` compares to `value` with `op` (`rados_write_op_cmpxattr`).
    pub fn cmpxattr(mut self, name: &str, op: CmpOp, value: &[u8]) -> Self {
        match cstring("xattr name", name) {
            Ok(n) => {
                // SAFETY: valid op; librados copies the name and value before returning.
                unsafe {
                    sys::rados_write_op_cmpxattr(
                        self.ptr,
                        n.as_ptr(),
                        op.raw(),
                        value.as_ptr().cast(),
                        value.len(),
                    )
                };
                self.push("rados_write_op_cmpxattr");
            }
            Err(e) => self.fail(e),
        }
        self
    }

    /// Guard: fails the operation with [`crate::ErrorKind::ConditionFailed`] unless the
    /// omap value of `key` compares to `value` with `op` (`rados_write_op_omap_cmp`).
    ///
    /// A missing key compares as the empty value. The object must exist, otherwise the
    /// operation fails with [`crate::ErrorKind::NotFound`].
    pub fn omap_cmp(mut self, key: &str, op: OmapCmpOp, value: &[u8]) -> Self {
        match cstring("omap key", key) {
            Ok(k) => {
                let prval = self.push_with_prval("rados_write_op_omap_cmp");
                // SAFETY: valid op; key and value are copied by librados; `prval` is a Slot
                // owned by this op that outlives operate.
                unsafe {
                    sys::rados_write_op_omap_cmp(
                        self.ptr,
                        k.as_ptr(),
                        op.raw(),
                        value.as_ptr().cast(),
                        value.len(),
                        prval,
                    )
                };
            }
            Err(e) => self.fail(e),
        }
        self
    }

    /// Sets an xattr (`rados_write_op_setxattr`).
    pub fn setxattr(mut self, name: &str, value: &[u8]) -> Self {
        match cstring("xattr name", name) {
            Ok(n) => {
                // SAFETY: valid op; name and value are copied by librados.
                unsafe {
                    sys::rados_write_op_setxattr(
                        self.ptr,
                        n.as_ptr(),
                        value.as_ptr().cast(),
                        value.len(),
                    )
                };
                self.push("rados_write_op_setxattr");
            }
            Err(e) => self.fail(e),
        }
        self
    }

    /// Removes an xattr (`rados_write_op_rmxattr`).
    pub fn rmxattr(mut self, name: &str) -> Self {
        match cstring("xattr name", name) {
            Ok(n) => {
                // SAFETY: valid op; the name is copied by librados.
                unsafe { sys::rados_write_op_rmxattr(self.ptr, n.as_ptr()) };
                self.push("rados_write_op_rmxattr");
            }
            Err(e) => self.fail(e),
        }
        self
    }

    /// Writes `data` at `offset` (`rados_write_op_write`).
    pub fn write(mut self, data: &[u8], offset: u64) -> Self {
        // SAFETY: valid op; librados copies the data into the op before returning.
        unsafe { sys::rados_write_op_write(self.ptr, data.as_ptr().cast(), data.len(), offset) };
        self.push("rados_write_op_write");
        self
    }

    /// Replaces the whole object's data with `data` (`rados_write_op_write_full`).
    pub fn write_full(mut self, data: &[u8]) -> Self {
        // SAFETY: valid op; librados copies the data into the op before returning.
        unsafe { sys::rados_write_op_write_full(self.ptr, data.as_ptr().cast(), data.len()) };
        self.push("rados_write_op_write_full");
        self
    }

    /// Appends `data` (`rados_write_op_append`).
    pub fn append(mut self, data: &[u8]) -> Self {
        // SAFETY: valid op; librados copies the data into the op before returning.
        unsafe { sys::rados_write_op_append(self.ptr, data.as_ptr().cast(), data.len()) };
        self.push("rados_write_op_append");
        self
    }

    /// Truncates (or extends with zeros) the object to `size` bytes
    /// (`rados_write_op_truncate`).
    pub fn truncate(mut self, size: u64) -> Self {
        // SAFETY: valid op.
        unsafe { sys::rados_write_op_truncate(self.ptr, size) };
        self.push("rados_write_op_truncate");
        self
    }

    /// Removes the object (`rados_write_op_remove`).
    pub fn remove(mut self) -> Self {
        // SAFETY: valid op.
        unsafe { sys::rados_write_op_remove(self.ptr) };
        self.push("rados_write_op_remove");
        self
    }

    /// Sets omap key/value pairs (`rados_write_op_omap_set`).
    pub fn omap_set<K: AsRef<str>, V: AsRef<[u8]>>(mut self, entries: &[(K, V)]) -> Self {
        let keys = match entries
            .iter()
            .map(|(k, _)| cstring("omap key", k.as_ref()))
            .collect::<Result<Vec<_>>>()
        {
            Ok(k) => k,
            Err(e) => {
                self.fail(e);
                return self;
            }
        };
        let key_ptrs: Vec<*const c_char> = keys.iter().map(|k| k.as_ptr()).collect();
        let val_ptrs: Vec<*const c_char> = entries
            .iter()
            .map(|(_, v)| v.as_ref().as_ptr().cast())
            .collect();
        let lens: Vec<usize> = entries.iter().map(|(_, v)| v.as_ref().len()).collect();
        // SAFETY: valid op; the three arrays have `entries.len()` elements and point to
        // live keys/values; librados copies them into a map before returning.
        unsafe {
            sys::rados_write_op_omap_set(
                self.ptr,
                key_ptrs.as_ptr(),
                val_ptrs.as_ptr(),
                lens.as_ptr(),
                entries.len(),
            )
        };
        self.push("rados_write_op_omap_set");
        self
    }

    /// Removes omap keys; missing keys are ignored (`rados_write_op_omap_rm_keys`).
    pub fn omap_rm_keys<K: AsRef<str>>(mut self, keys: &[K]) -> Self {
        let keys = match cstrings("omap key", keys) {
            Ok(k) => k,
            Err(e) => {
                self.fail(e);
                return self;
            }
        };
        let ptrs: Vec<*const c_char> = keys.iter().map(|k| k.as_ptr()).collect();
        // SAFETY: valid op; `ptrs` has `keys.len()` live C strings, copied by librados.
        unsafe { sys::rados_write_op_omap_rm_keys(self.ptr, ptrs.as_ptr(), ptrs.len()) };
        self.push("rados_write_op_omap_rm_keys");
        self
    }

    /// Removes every omap key (`rados_write_op_omap_clear`).
    pub fn omap_clear(mut self) -> Self {
        // SAFETY: valid op.
        unsafe { sys::rados_write_op_omap_clear(self.ptr) };
        self.push("rados_write_op_omap_clear");
        self
    }

    /// Runs the operation on object `oid` (`rados_write_op_operate2`). Consumes the op.
    ///
    /// Fails with the error of the first action that failed (a failed guard gives
    /// [`crate::ErrorKind::ConditionFailed`]), in which case nothing was changed.
    pub fn operate(mut self, io: &IoCtx, oid: &str) -> Result<()> {
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        let c = oid_cstring(oid)?;
        if self.steps.is_empty() {
            return Err(Error::invalid("write operation", oid, "has no actions"));
        }
        let mut ts = self.mtime.map(timespec);
        let ts_ptr = ts
            .as_mut()
            .map_or(std::ptr::null_mut(), |t| t as *mut sys::timespec);
        // SAFETY: valid op, ioctx and C string; every output slot is owned by `self`, which
        // lives until after this synchronous call returns. Bounded by rados_osd_op_timeout.
        let ret = unsafe {
            sys::rados_write_op_operate2(
                self.ptr,
                io.ptr(),
                c.as_ptr(),
                ts_ptr,
                flags_raw(self.flags),
            )
        };
        op_result(
            ret,
            self.steps.iter().map(|s| (s.name, s.prval.as_ref())),
            "rados_write_op_operate2",
            || io.ctx().with_object(oid),
        )
    }
}

/// What a [`ReadOp`] action writes into; owned by the op until it is released.
enum ReadOut {
    None,
    Stat {
        size: Slot<u64>,
        mtime: Slot<sys::time_t>,
    },
    Read {
        buf: Slot<[u8]>,
        len: Slot<usize>,
    },
    Omap {
        iter: OmapIter,
        more: Option<Slot<u8>>,
        keys_only: bool,
    },
}

/// Owner of a `rados_omap_iter_t` that librados allocates when the action is added.
struct OmapIter {
    slot: Slot<sys::rados_omap_iter_t>,
}

impl OmapIter {
    fn new() -> Self {
        Self {
            slot: Slot::new(std::ptr::null_mut()),
        }
    }

    /// Reads every entry. Only valid after the operation completed successfully: before
    /// that, librados has not positioned the iterator.
    fn collect(&self, keys_only: bool) -> Vec<(Vec<u8>, Vec<u8>)> {
        let it = self.slot.get();
        let mut out = Vec::new();
        if it.is_null() {
            return out;
        }
        loop {
            let mut k: *mut c_char = std::ptr::null_mut();
            let mut v: *mut c_char = std::ptr::null_mut();
            let (mut klen, mut vlen) = (0usize, 0usize);
            // SAFETY: `it` is a live iterator positioned by the completed operation; the
            // out-pointers are valid locals.
            let ret =
                unsafe { sys::rados_omap_get_next2(it, &mut k, &mut v, &mut klen, &mut vlen) };
            if ret < 0 || k.is_null() {
                break;
            }
            // SAFETY: librados returns `klen` readable bytes at `k`, valid until the next
            // call on the iterator; we copy them at once.
            let key = unsafe { std::slice::from_raw_parts(k.cast::<u8>(), klen) }.to_vec();
            let val = if keys_only || v.is_null() || vlen == 0 {
                Vec::new()
            } else {
                // SAFETY: as for the key: `vlen` bytes at `v`, copied at once.
                unsafe { std::slice::from_raw_parts(v.cast::<u8>(), vlen) }.to_vec()
            };
            out.push((key, val));
        }
        out
    }
}

impl Drop for OmapIter {
    fn drop(&mut self) {
        let it = self.slot.get();
        if !it.is_null() {
            // SAFETY: the iterator was allocated by librados when the action was added and
            // is freed once here, after the read op itself was released (ReadOp::drop runs
            // before its fields drop).
            unsafe { sys::rados_omap_get_end(it) };
        }
    }
}

struct ReadStep {
    name: &'static str,
    prval: Slot<c_int>,
    out: ReadOut,
}

static NEXT_READ_OP_ID: AtomicU64 = AtomicU64::new(1);

macro_rules! read_handle {
    ($(#[$m:meta])* $name:ident) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub struct $name {
            op: u64,
            idx: usize,
        }
    };
}

read_handle!(
    /// Where to find a [`ReadOp::stat`] result in [`ReadResults`].
    StatHandle
);
read_handle!(
    /// Where to find a [`ReadOp::read`] result in [`ReadResults`].
    ReadHandle
);
read_handle!(
    /// Where to find a [`ReadOp::omap_get_vals`] or [`ReadOp::omap_get_vals_by_keys`]
    /// result in [`ReadResults`].
    OmapValsHandle
);
read_handle!(
    /// Where to find a [`ReadOp::omap_get_keys`] result in [`ReadResults`].
    OmapKeysHandle
);

/// One page of omap entries, sorted by key.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct OmapPage {
    /// The entries. Keys that are not UTF-8 are converted lossily.
    pub entries: BTreeMap<String, Vec<u8>>,
    /// True when the listing stopped at `max_return` and more entries follow.
    pub more: bool,
    #[serde(skip)]
    last_raw: Option<Vec<u8>>,
}

/// One page of omap keys, sorted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct OmapKeysPage {
    /// The keys. Keys that are not UTF-8 are converted lossily.
    pub keys: Vec<String>,
    /// True when the listing stopped at `max_return` and more keys follow.
    pub more: bool,
    #[serde(skip)]
    last_raw: Option<Vec<u8>>,
}

enum ReadValue {
    None,
    Stat(ObjectStat),
    Data(Vec<u8>),
    Vals(OmapPage),
    Keys(OmapKeysPage),
}

/// The outputs of a completed [`ReadOp`], looked up by the handles its builder returned.
pub struct ReadResults {
    op: u64,
    values: Vec<ReadValue>,
}

impl std::fmt::Debug for ReadResults {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadResults")
            .field("actions", &self.values.len())
            .finish_non_exhaustive()
    }
}

impl ReadResults {
    fn value(&self, op: u64, idx: usize) -> &ReadValue {
        assert_eq!(op, self.op, "handle belongs to another ReadOp");
        &self.values[idx]
    }

    fn take(&mut self, op: u64, idx: usize) -> ReadValue {
        assert_eq!(op, self.op, "handle belongs to another ReadOp");
        std::mem::replace(&mut self.values[idx], ReadValue::None)
    }

    /// The result of a [`ReadOp::stat`].
    ///
    /// # Panics
    /// If the handle came from another `ReadOp`.
    pub fn stat(&self, h: StatHandle) -> ObjectStat {
        match self.value(h.op, h.idx) {
            ReadValue::Stat(s) => *s,
            _ => unreachable!("typed handle"),
        }
    }

    /// The bytes read by a [`ReadOp::read`] (shorter than asked at the end of the object).
    ///
    /// # Panics
    /// If the handle came from another `ReadOp`, or the data was taken.
    pub fn data(&self, h: ReadHandle) -> &[u8] {
        match self.value(h.op, h.idx) {
            ReadValue::Data(d) => d,
            _ => panic!("data already taken"),
        }
    }

    /// Moves the bytes read by a [`ReadOp::read`] out of the results.
    ///
    /// # Panics
    /// If the handle came from another `ReadOp`, or the data was taken.
    pub fn take_data(&mut self, h: ReadHandle) -> Vec<u8> {
        match self.take(h.op, h.idx) {
            ReadValue::Data(d) => d,
            _ => panic!("data already taken"),
        }
    }

    /// The entries of a [`ReadOp::omap_get_vals`] / [`ReadOp::omap_get_vals_by_keys`].
    ///
    /// # Panics
    /// If the handle came from another `ReadOp`, or the page was taken.
    pub fn omap_vals(&self, h: OmapValsHandle) -> &OmapPage {
        match self.value(h.op, h.idx) {
            ReadValue::Vals(p) => p,
            _ => panic!("omap values already taken"),
        }
    }

    /// Moves the entries of a [`ReadOp::omap_get_vals`] out of the results.
    ///
    /// # Panics
    /// If the handle came from another `ReadOp`, or the page was taken.
    pub fn take_omap_vals(&mut self, h: OmapValsHandle) -> OmapPage {
        match self.take(h.op, h.idx) {
            ReadValue::Vals(p) => p,
            _ => panic!("omap values already taken"),
        }
    }

    /// The keys of a [`ReadOp::omap_get_keys`].
    ///
    /// # Panics
    /// If the handle came from another `ReadOp`, or the page was taken.
    pub fn omap_keys(&self, h: OmapKeysHandle) -> &OmapKeysPage {
        match self.value(h.op, h.idx) {
            ReadValue::Keys(p) => p,
            _ => panic!("omap keys already taken"),
        }
    }

    /// Moves the keys of a [`ReadOp::omap_get_keys`] out of the results.
    ///
    /// # Panics
    /// If the handle came from another `ReadOp`, or the page was taken.
    pub fn take_omap_keys(&mut self, h: OmapKeysHandle) -> OmapKeysPage {
        match self.take(h.op, h.idx) {
            ReadValue::Keys(p) => p,
            _ => panic!("omap keys already taken"),
        }
    }
}

/// An atomic compound read on one object (owner of a `rados_read_op_t`).
///
/// Each output action returns a typed handle; after [`ReadOp::operate`] the handle looks up
/// its value in the [`ReadResults`]:
///
/// ```no_run
/// use rbd_core::omap::ReadOp;
/// # fn f(io: &rbd_core::IoCtx) -> rbd_core::Result<()> {
/// let mut op = ReadOp::new();
/// let st = op.stat();
/// let vals = op.omap_get_vals(None, Some("vol."), 100);
/// let out = op.operate(io, "registry")?;
/// println!("{} bytes, {} volumes", out.stat(st).size, out.omap_vals(vals).entries.len());
/// # Ok(()) }
/// ```
///
/// Guards ([`ReadOp::omap_cmp`], [`ReadOp::cmpxattr`], [`ReadOp::assert_exists`]) make the
/// whole read fail when they do not hold.
#[must_use = "a ReadOp does nothing until operate() is called"]
pub struct ReadOp {
    ptr: sys::rados_read_op_t,
    id: u64,
    steps: Vec<ReadStep>,
    flags: OperationFlags,
    error: Option<Error>,
}

// SAFETY: a rados_read_op_t is a heap ObjectOperation not tied to a thread; this type owns
// it and all its output slots exclusively.
unsafe impl Send for ReadOp {}

impl std::fmt::Debug for ReadOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadOp")
            .field(
                "actions",
                &self.steps.iter().map(|s| s.name).collect::<Vec<_>>(),
            )
            .field("flags", &self.flags)
            .finish_non_exhaustive()
    }
}

impl Drop for ReadOp {
    fn drop(&mut self) {
        // SAFETY: `ptr` came from rados_create_read_op and is released exactly once; no
        // operate call is running. Output slots and iterators are freed afterwards, when
        // the fields drop.
        unsafe { sys::rados_release_read_op(self.ptr) };
    }
}

impl Default for ReadOp {
    fn default() -> Self {
        Self::new()
    }
}

impl ReadOp {
    /// An empty read operation (`rados_create_read_op`).
    ///
    /// # Panics
    /// If librados cannot allocate the operation (out of memory).
    pub fn new() -> Self {
        // SAFETY: no arguments; returns NULL only on allocation failure.
        let ptr = unsafe { sys::rados_create_read_op() };
        assert!(!ptr.is_null(), "rados_create_read_op: out of memory");
        Self {
            ptr,
            id: NEXT_READ_OP_ID.fetch_add(1, Ordering::Relaxed),
            steps: Vec::new(),
            flags: OperationFlags::empty(),
            error: None,
        }
    }

    fn push(&mut self, name: &'static str, prval: Slot<c_int>, out: ReadOut) -> usize {
        self.steps.push(ReadStep { name, prval, out });
        self.steps.len() - 1
    }

    fn fail(&mut self, e: Error) {
        if self.error.is_none() {
            self.error = Some(e);
        }
    }

    /// Flags for the whole operation (`LIBRADOS_OPERATION_*`, passed to
    /// `rados_read_op_operate`).
    pub fn set_flags(&mut self, flags: OperationFlags) -> &mut Self {
        self.flags = flags;
        self
    }

    /// Fails the read with [`crate::ErrorKind::NotFound`] unless the object exists
    /// (`rados_read_op_assert_exists`).
    pub fn assert_exists(&mut self) -> &mut Self {
        // SAFETY: valid op.
        unsafe { sys::rados_read_op_assert_exists(self.ptr) };
        self.push("rados_read_op_assert_exists", Slot::new(0), ReadOut::None);
        self
    }

    /// Fails the read unless the object's version is `version`
    /// (`rados_read_op_assert_version`).
    pub fn assert_version(&mut self, version: u64) -> &mut Self {
        // SAFETY: valid op.
        unsafe { sys::rados_read_op_assert_version(self.ptr, version) };
        self.push("rados_read_op_assert_version", Slot::new(0), ReadOut::None);
        self
    }

    /// Guard on an xattr (`rados_read_op_cmpxattr`); see [`WriteOp::cmpxattr`].
    pub fn cmpxattr(&mut self, name: &str, op: CmpOp, value: &[u8]) -> &mut Self {
        match cstring("xattr name", name) {
            Ok(n) => {
                // SAFETY: valid op; name and value are copied by librados.
                unsafe {
                    sys::rados_read_op_cmpxattr(
                        self.ptr,
                        n.as_ptr(),
                        op.raw(),
                        value.as_ptr().cast(),
                        value.len(),
                    )
                };
                self.push("rados_read_op_cmpxattr", Slot::new(0), ReadOut::None);
            }
            Err(e) => self.fail(e),
        }
        self
    }

    /// Guard on an omap value (`rados_read_op_omap_cmp`); see [`WriteOp::omap_cmp`].
    pub fn omap_cmp(&mut self, key: &str, op: OmapCmpOp, value: &[u8]) -> &mut Self {
        match cstring("omap key", key) {
            Ok(k) => {
                let prval = Slot::new(0);
                // SAFETY: valid op; key and value are copied; `prval` is a Slot owned by
                // this op until it is released.
                unsafe {
                    sys::rados_read_op_omap_cmp(
                        self.ptr,
                        k.as_ptr(),
                        op.raw(),
                        value.as_ptr().cast(),
                        value.len(),
                        prval.as_ptr(),
                    )
                };
                self.push("rados_read_op_omap_cmp", prval, ReadOut::None);
            }
            Err(e) => self.fail(e),
        }
        self
    }

    /// Reads the object's size and modification time (`rados_read_op_stat`).
    pub fn stat(&mut self) -> StatHandle {
        let prval = Slot::new(0);
        let size = Slot::new(0u64);
        let mtime: Slot<sys::time_t> = Slot::new(0);
        // SAFETY: valid op; all three out-pointers are Slots owned by this op until it is
        // released, so they outlive the operation.
        unsafe { sys::rados_read_op_stat(self.ptr, size.as_ptr(), mtime.as_ptr(), prval.as_ptr()) };
        let idx = self.push("rados_read_op_stat", prval, ReadOut::Stat { size, mtime });
        StatHandle { op: self.id, idx }
    }

    /// Reads up to `len` bytes at `offset` (`rados_read_op_read`). A read past the end
    /// returns fewer bytes. `len` must be at least 1 (RADOS reads "everything" for 0).
    pub fn read(&mut self, offset: u64, len: usize) -> ReadHandle {
        if len == 0 {
            self.fail(Error::invalid(
                "read length",
                "0",
                "must be at least 1 byte",
            ));
        }
        let len = len.max(1);
        let prval = Slot::new(0);
        let buf: Slot<[u8]> = Slot::from_box(vec![0u8; len].into_boxed_slice());
        let got = Slot::new(0usize);
        // SAFETY: valid op; librados writes at most `len` bytes into `buf` and the count
        // into `got`; both are Slots owned by this op, alive until after operate.
        unsafe {
            sys::rados_read_op_read(
                self.ptr,
                offset,
                len,
                buf.as_ptr().cast::<c_char>(),
                got.as_ptr(),
                prval.as_ptr(),
            )
        };
        let idx = self.push("rados_read_op_read", prval, ReadOut::Read { buf, len: got });
        ReadHandle { op: self.id, idx }
    }

    /// Lists up to `max_return` omap entries after `start_after` whose keys start with
    /// `filter_prefix` (`rados_read_op_omap_get_vals2`).
    pub fn omap_get_vals(
        &mut self,
        start_after: Option<&str>,
        filter_prefix: Option<&str>,
        max_return: u64,
    ) -> OmapValsHandle {
        let start = start_after.map(|s| cstring("omap key", s)).transpose();
        let prefix = filter_prefix
            .map(|s| cstring("omap key prefix", s))
            .transpose();
        let (start, prefix) = match (start, prefix) {
            (Ok(s), Ok(p)) => (s, p),
            (Err(e), _) | (_, Err(e)) => {
                self.fail(e);
                (None, None)
            }
        };
        let prval = Slot::new(0);
        let iter = OmapIter::new();
        let more = Slot::new(0u8);
        // SAFETY: valid op; the strings are NULL or live C strings copied by librados; the
        // iterator, `more` and `prval` outputs are Slots owned by this op until release.
        // librados stores a new iterator in `iter` at once (freed by OmapIter's Drop).
        unsafe {
            sys::rados_read_op_omap_get_vals2(
                self.ptr,
                crate::util::opt_ptr(&start),
                crate::util::opt_ptr(&prefix),
                max_return,
                iter.slot.as_ptr(),
                more.as_ptr(),
                prval.as_ptr(),
            )
        };
        let idx = self.push(
            "rados_read_op_omap_get_vals2",
            prval,
            ReadOut::Omap {
                iter,
                more: Some(more),
                keys_only: false,
            },
        );
        OmapValsHandle { op: self.id, idx }
    }

    /// Lists up to `max_return` omap keys after `start_after`
    /// (`rados_read_op_omap_get_keys2`).
    pub fn omap_get_keys(&mut self, start_after: Option<&str>, max_return: u64) -> OmapKeysHandle {
        let start = match start_after.map(|s| cstring("omap key", s)).transpose() {
            Ok(s) => s,
            Err(e) => {
                self.fail(e);
                None
            }
        };
        let prval = Slot::new(0);
        let iter = OmapIter::new();
        let more = Slot::new(0u8);
        // SAFETY: as in omap_get_vals: live/NULL input string, Slot-owned outputs.
        unsafe {
            sys::rados_read_op_omap_get_keys2(
                self.ptr,
                crate::util::opt_ptr(&start),
                max_return,
                iter.slot.as_ptr(),
                more.as_ptr(),
                prval.as_ptr(),
            )
        };
        let idx = self.push(
            "rados_read_op_omap_get_keys2",
            prval,
            ReadOut::Omap {
                iter,
                more: Some(more),
                keys_only: true,
            },
        );
        OmapKeysHandle { op: self.id, idx }
    }

    /// Gets the values of these omap keys; missing keys are simply absent from the result
    /// (`rados_read_op_omap_get_vals_by_keys`).
    pub fn omap_get_vals_by_keys<K: AsRef<str>>(&mut self, keys: &[K]) -> OmapValsHandle {
        let keys = match cstrings("omap key", keys) {
            Ok(k) => k,
            Err(e) => {
                self.fail(e);
                Vec::new()
            }
        };
        let ptrs: Vec<*const c_char> = keys.iter().map(|k| k.as_ptr()).collect();
        let prval = Slot::new(0);
        let iter = OmapIter::new();
        // SAFETY: valid op; `ptrs` holds `ptrs.len()` live C strings (copied into a set by
        // librados); iterator and prval are Slot-owned outputs.
        unsafe {
            sys::rados_read_op_omap_get_vals_by_keys(
                self.ptr,
                ptrs.as_ptr(),
                ptrs.len(),
                iter.slot.as_ptr(),
                prval.as_ptr(),
            )
        };
        let idx = self.push(
            "rados_read_op_omap_get_vals_by_keys",
            prval,
            ReadOut::Omap {
                iter,
                more: None,
                keys_only: false,
            },
        );
        OmapValsHandle { op: self.id, idx }
    }

    /// Runs the read on object `oid` (`rados_read_op_operate`) and collects every output.
    pub fn operate(self, io: &IoCtx, oid: &str) -> Result<ReadResults> {
        let mut this = self;
        if let Some(e) = this.error.take() {
            return Err(e);
        }
        let c = oid_cstring(oid)?;
        if this.steps.is_empty() {
            return Err(Error::invalid("read operation", oid, "has no actions"));
        }
        // SAFETY: valid op, ioctx and C string; every output is a Slot owned by `this`,
        // which outlives this synchronous call. Bounded by rados_osd_op_timeout.
        let ret = unsafe {
            sys::rados_read_op_operate(this.ptr, io.ptr(), c.as_ptr(), flags_raw(this.flags))
        };
        op_result(
            ret,
            this.steps.iter().map(|s| (s.name, Some(&s.prval))),
            "rados_read_op_operate",
            || io.ctx().with_object(oid),
        )?;
        // The operation succeeded, so every handler ran and iterators are positioned.
        let values = this
            .steps
            .iter()
            .map(|s| match &s.out {
                ReadOut::None => ReadValue::None,
                ReadOut::Stat { size, mtime } => ReadValue::Stat(ObjectStat {
                    size: size.get(),
                    mtime: time_from_c(mtime.get()),
                }),
                ReadOut::Read { buf, len } => {
                    let n = len.get().min(buf.bytes().len());
                    ReadValue::Data(buf.bytes()[..n].to_vec())
                }
                ReadOut::Omap {
                    iter,
                    more,
                    keys_only,
                } => {
                    let raw = iter.collect(*keys_only);
                    let more = more.as_ref().is_some_and(|m| m.get() != 0);
                    let last_raw = raw.last().map(|(k, _)| k.clone());
                    if *keys_only {
                        ReadValue::Keys(OmapKeysPage {
                            keys: raw
                                .into_iter()
                                .map(|(k, _)| String::from_utf8_lossy(&k).into_owned())
                                .collect(),
                            more,
                            last_raw,
                        })
                    } else {
                        ReadValue::Vals(OmapPage {
                            entries: raw
                                .into_iter()
                                .map(|(k, v)| (String::from_utf8_lossy(&k).into_owned(), v))
                                .collect(),
                            more,
                            last_raw,
                        })
                    }
                }
            })
            .collect();
        Ok(ReadResults {
            op: this.id,
            values,
        })
    }
}

/// The key to continue a listing after, as a string librados can take.
fn next_start(last_raw: Option<Vec<u8>>, oid: &str, io: &IoCtx) -> Result<Option<String>> {
    match last_raw {
        None => Ok(None),
        Some(raw) => String::from_utf8(raw).map(Some).map_err(|e| {
            Error::decode(
                "rados_read_op_omap_get_vals2",
                io.ctx().with_object(oid),
                format!("cannot page past a non-UTF-8 omap key: {e}"),
            )
        }),
    }
}

impl IoCtx {
    /// The values of the given omap keys of object `oid`; keys that do not exist are
    /// absent from the map (`rados_read_op_omap_get_vals_by_keys`).
    pub fn omap_get_vals_by_keys<K: AsRef<str>>(
        &self,
        oid: &str,
        keys: &[K],
    ) -> Result<BTreeMap<String, Vec<u8>>> {
        let mut op = ReadOp::new();
        let h = op.omap_get_vals_by_keys(keys);
        let mut out = op.operate(self, oid)?;
        Ok(out.take_omap_vals(h).entries)
    }

    /// The value of one omap key, `None` when the key is absent
    /// (`rados_read_op_omap_get_vals_by_keys`). A missing object is
    /// [`crate::ErrorKind::NotFound`].
    pub fn omap_get(&self, oid: &str, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.omap_get_vals_by_keys(oid, &[key])?.remove(key))
    }

    /// One page of omap entries: up to `max_return` entries after `start_after` whose keys
    /// start with `filter_prefix` (`rados_read_op_omap_get_vals2`). `more` says whether
    /// another page follows.
    pub fn omap_get_vals_page(
        &self,
        oid: &str,
        start_after: Option<&str>,
        filter_prefix: Option<&str>,
        max_return: u64,
    ) -> Result<OmapPage> {
        let mut op = ReadOp::new();
        let h = op.omap_get_vals(start_after, filter_prefix, max_return);
        let mut out = op.operate(self, oid)?;
        Ok(out.take_omap_vals(h))
    }

    /// All omap entries after `start_after` (all when `None`) whose keys start with
    /// `filter_prefix`, at most `max_return` of them (all when `None`), fetched in pages of
    /// [`OMAP_PAGE_SIZE`] (`rados_read_op_omap_get_vals2`).
    pub fn omap_get_vals(
        &self,
        oid: &str,
        start_after: Option<&str>,
        filter_prefix: Option<&str>,
        max_return: Option<u64>,
    ) -> Result<BTreeMap<String, Vec<u8>>> {
        let mut all = BTreeMap::new();
        let mut start = start_after.map(str::to_owned);
        loop {
            let left = max_return.map_or(OMAP_PAGE_SIZE, |m| m.saturating_sub(all.len() as u64));
            if left == 0 {
                return Ok(all);
            }
            let page = self.omap_get_vals_page(
                oid,
                start.as_deref(),
                filter_prefix,
                left.min(OMAP_PAGE_SIZE),
            )?;
            let done = !page.more || page.entries.is_empty();
            start = next_start(page.last_raw, oid, self)?;
            all.extend(page.entries);
            if done {
                return Ok(all);
            }
        }
    }

    /// One page of omap keys: up to `max_return` keys after `start_after`
    /// (`rados_read_op_omap_get_keys2`).
    pub fn omap_get_keys_page(
        &self,
        oid: &str,
        start_after: Option<&str>,
        max_return: u64,
    ) -> Result<OmapKeysPage> {
        let mut op = ReadOp::new();
        let h = op.omap_get_keys(start_after, max_return);
        let mut out = op.operate(self, oid)?;
        Ok(out.take_omap_keys(h))
    }

    /// Every omap key of `oid`, sorted, fetched in pages of [`OMAP_PAGE_SIZE`]
    /// (`rados_read_op_omap_get_keys2`).
    pub fn omap_get_keys(&self, oid: &str) -> Result<Vec<String>> {
        let mut all = Vec::new();
        let mut start: Option<String> = None;
        loop {
            let page = self.omap_get_keys_page(oid, start.as_deref(), OMAP_PAGE_SIZE)?;
            let done = !page.more || page.keys.is_empty();
            start = next_start(page.last_raw, oid, self)?;
            all.extend(page.keys);
            if done {
                return Ok(all);
            }
        }
    }

    /// Sets omap key/value pairs, creating the object if needed
    /// (`rados_write_op_omap_set`).
    pub fn omap_set<K: AsRef<str>, V: AsRef<[u8]>>(
        &self,
        oid: &str,
        entries: &[(K, V)],
    ) -> Result<()> {
        WriteOp::new().omap_set(entries).operate(self, oid)
    }

    /// Removes omap keys; absent keys are ignored (`rados_write_op_omap_rm_keys`).
    pub fn omap_rm_keys<K: AsRef<str>>(&self, oid: &str, keys: &[K]) -> Result<()> {
        WriteOp::new().omap_rm_keys(keys).operate(self, oid)
    }

    /// Removes every omap key of `oid` (`rados_write_op_omap_clear`).
    pub fn omap_clear(&self, oid: &str) -> Result<()> {
        WriteOp::new().omap_clear().operate(self, oid)
    }

    /// Sets `key` to `value` only if `key` is absent, atomically; creates the object if
    /// it does not exist. Returns `true` if it was inserted, `false` if the key was
    /// already present (and left unchanged).
    ///
    /// Implemented as one guarded operation: `rados_write_op_create` (idempotent),
    /// `rados_write_op_omap_cmp(key, EQ, "")`, `rados_write_op_omap_set`. RADOS compares
    /// a missing key as the empty value, so `value` must not be empty: an empty value would
    /// be indistinguishable from "absent" for later calls.
    pub fn omap_insert_if_absent(&self, oid: &str, key: &str, value: &[u8]) -> Result<bool> {
        if value.is_empty() {
            return Err(Error::invalid(
                "omap value",
                "",
                "must not be empty: RADOS compares an absent key as the empty value",
            ));
        }
        let r = WriteOp::new()
            .create(CreateMode::Idempotent)
            .omap_cmp(key, OmapCmpOp::Eq, b"")
            .omap_set(&[(key, value)])
            .operate(self, oid);
        match r {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == crate::ErrorKind::ConditionFailed => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Replaces the value of `key` with `new` only if it currently equals `expected`,
    /// atomically (`rados_write_op_omap_cmp` + `rados_write_op_omap_set` in one
    /// operation). Returns `true` if swapped, `false` if the value differed (nothing
    /// changed). The object must exist ([`crate::ErrorKind::NotFound`] otherwise); an
    /// empty `expected` matches an absent key.
    pub fn omap_compare_and_swap(
        &self,
        oid: &str,
        key: &str,
        expected: &[u8],
        new: &[u8],
    ) -> Result<bool> {
        let r = WriteOp::new()
            .omap_cmp(key, OmapCmpOp::Eq, expected)
            .omap_set(&[(key, new)])
            .operate(self, oid);
        match r {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == crate::ErrorKind::ConditionFailed => Ok(false),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn op_result_names_failing_action() {
        let ok = Slot::new(0);
        let bad = Slot::new(-libc::ECANCELED);
        let steps = [("a", Some(&ok)), ("b", Some(&bad)), ("c", None)];
        let e = op_result(-libc::ECANCELED, steps.into_iter(), "op", Context::none).unwrap_err();
        assert_eq!(e.op(), Some("b"));
        assert_eq!(e.kind(), crate::ErrorKind::ConditionFailed);

        let e = op_result(
            -libc::ENOENT,
            [("a", Some(&ok))].into_iter(),
            "op",
            Context::none,
        )
        .unwrap_err();
        assert_eq!(e.op(), Some("op"));
        assert_eq!(e.kind(), crate::ErrorKind::NotFound);

        // A negative prval fails the op even if operate said 0.
        let e = op_result(0, [("x", Some(&bad))].into_iter(), "op", Context::none).unwrap_err();
        assert_eq!(e.op(), Some("x"));
        assert!(op_result(0, [("a", Some(&ok))].into_iter(), "op", Context::none).is_ok());
    }

    #[test]
    fn builder_defers_invalid_input() {
        // Nothing is sent: the NUL in the key is reported by operate before any I/O, so no
        // cluster (and no real IoCtx) is needed to observe it... but operate needs an IoCtx,
        // so check the stored error directly.
        let op = WriteOp::new().omap_set(&[("a\0b", b"v")]);
        assert!(op.error.is_some());
        assert!(op.is_empty());
        let op = WriteOp::new().omap_clear().remove();
        assert_eq!(op.len(), 2);
    }

    #[test]
    fn timespec_conversion() {
        let t = UNIX_EPOCH + Duration::new(5, 7);
        let ts = timespec(t);
        assert_eq!((ts.tv_sec, ts.tv_nsec), (5, 7));
        let t = UNIX_EPOCH - Duration::new(1, 250_000_000);
        let ts = timespec(t);
        assert_eq!((ts.tv_sec, ts.tv_nsec), (-2, 750_000_000));
    }

    #[test]
    fn ops_are_send() {
        fn is_send<T: Send>() {}
        is_send::<WriteOp>();
        is_send::<ReadOp>();
    }

    #[test]
    fn read_op_handles_are_typed() {
        let mut op = ReadOp::new();
        let a = op.stat();
        let b = op.read(0, 10);
        assert_eq!(a.idx, 0);
        assert_eq!(b.idx, 1);
        let mut op2 = ReadOp::new();
        assert!(op2.read(0, 0).op != a.op);
        assert!(op2.error.is_some());
    }
}
