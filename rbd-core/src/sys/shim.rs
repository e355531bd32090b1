//! Declarations of rbd-core's own C++ shim (`rbd-core/shim/bufferlist.cc`, built by
//! `build.rs`): zero-copy image I/O through librbd's C++ `bufferlist` API, with a C ABI.
//! Written by hand (the shim is ours and small); each declaration matches the definition
//! in the shim file, which documents it.
//!
//! A `*mut c_void` "list" here is a heap-allocated `ceph::bufferlist` that the shim
//! created and only `rbdcore_buf_free` frees.

use std::ffi::c_void;

use super::{rbd_completion_t, rbd_image_t};

unsafe extern "C" {
    /// A new list of `len` zeroed bytes in one page-aligned segment; null on ENOMEM or
    /// when `len` is over `u32::MAX`.
    pub fn rbdcore_buf_new(len: usize) -> *mut c_void;
    /// A new list holding a copy of `len` bytes at `data` in one segment; null on ENOMEM
    /// or when `len` is over `u32::MAX`.
    pub fn rbdcore_buf_copy(data: *const u8, len: usize) -> *mut c_void;
    /// A new list sharing `other`'s segments (no copy); null on ENOMEM.
    pub fn rbdcore_buf_share(other: *const c_void) -> *mut c_void;
    /// Moves `src`'s segments to the end of `dst` (no copy); `src` is left empty.
    /// 0, or -ENOMEM.
    pub fn rbdcore_buf_append(dst: *mut c_void, src: *mut c_void) -> i32;
    /// Frees a list (its segments when no other list shares them).
    pub fn rbdcore_buf_free(list: *mut c_void);
    /// The list's length in bytes.
    pub fn rbdcore_buf_len(list: *const c_void) -> usize;
    /// Makes the list one segment (copying only if it has several) and returns its first
    /// byte; null if empty or on ENOMEM.
    pub fn rbdcore_buf_contiguous(list: *mut c_void) -> *mut u8;
    /// 1 if no other list shares any of this list's segments (then cached checksums are
    /// dropped, so its bytes may be changed), else 0.
    pub fn rbdcore_buf_make_writable(list: *mut c_void) -> i32;
    /// `librbd::Image::aio_read2` of `len` bytes at `off` into `out` (looked up with
    /// `dlsym`; -ENOSYS if librbd lacks it).
    pub fn rbdcore_aio_read(
        image: rbd_image_t,
        off: u64,
        len: usize,
        out: *mut c_void,
        c: rbd_completion_t,
        op_flags: i32,
    ) -> i32;
    /// `librbd::Image::aio_write2` of `len` bytes of `data` from `data_off`, at `off`,
    /// sharing the bytes with librbd (looked up with `dlsym`; -ENOSYS if librbd lacks
    /// it).
    pub fn rbdcore_aio_write(
        image: rbd_image_t,
        off: u64,
        data: *const c_void,
        data_off: usize,
        len: usize,
        c: rbd_completion_t,
        op_flags: i32,
    ) -> i32;
}
