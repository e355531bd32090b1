//! [`Buffer`]: bytes shared with librbd instead of copied, for zero-copy image I/O
//! ([`Image::aio_write_buffer`](crate::Image::aio_write_buffer) and
//! [`Image::aio_read_buffer`](crate::Image::aio_read_buffer)).
//!
//! librbd's C API copies every byte it moves: `rbd_aio_write*` copies the caller's buffer
//! into librbd's own, and `rbd_aio_read*` copies the OSD's reply into the caller's buffer.
//! Its C++ API moves data as `ceph::bufferlist`s instead, whose segments are reference
//! counted and shared. A [`Buffer`] owns one `bufferlist` (through rbd-core's small C++
//! shim, `rbd-core/shim/bufferlist.cc`), so:
//!
//! * a write hands librbd a reference to the same bytes, and one `Buffer` can be written
//!   any number of times, to any number of places, without a copy;
//! * a read resolves to the bytes the OSD reply arrived in.
//!
//! ```no_run
//! # async fn demo(image: &rbd_core::Image) -> rbd_core::Result<()> {
//! use rbd_core::Buffer;
//!
//! let mut block = Buffer::zeroed(4 << 20)?;
//! block.get_mut().expect("not shared yet").fill(0x5a);
//! image.aio_write_buffer(0, &block).await?;
//! image.aio_write_buffer(4 << 20, &block).await?; // the same bytes again, no copy
//!
//! let data: Buffer = image.aio_read_buffer(0, 4 << 20).await?;
//! assert!(data.iter().all(|&b| b == 0x5a));
//! # Ok(()) }
//! ```
//!
//! # Sharing rules
//!
//! A `Buffer` is immutable while anyone else holds its bytes: a clone of it, or librbd
//! (which may keep a write's bytes a little past the write's completion, e.g. until the
//! messenger releases the request). [`Buffer::get_mut`] gives mutable access only when no
//! one does, like [`std::sync::Arc::get_mut`]. Cloning is cheap (a reference, no copy).

use std::ffi::c_void;
use std::ptr::NonNull;

use crate::error::{Context, Error, Result};
use crate::sys::shim;

/// Largest [`Buffer`]: one `bufferlist` segment's length is an `unsigned`.
pub const MAX_BUFFER_LEN: usize = u32::MAX as usize;

fn check_len(len: usize) -> Result<()> {
    if len > MAX_BUFFER_LEN {
        return Err(Error::invalid(
            "buffer length",
            len.to_string(),
            format!("must be at most {MAX_BUFFER_LEN} bytes"),
        ));
    }
    Ok(())
}

/// One heap-allocated `ceph::bufferlist`, created by the shim and freed once, on drop.
pub(crate) struct RawList(NonNull<c_void>);

// SAFETY: a bufferlist is plain heap data; its segments' reference counts are atomic, so
// one list may be created on one thread and used or freed on another.
unsafe impl Send for RawList {}
// SAFETY: `&RawList` only allows what reads the list (its length, sharing its segments
// into a new list, librbd reading it for a write), which several threads may do at once;
// every change goes through `&mut RawList`.
unsafe impl Sync for RawList {}

impl RawList {
    /// A list of `len` zeroed bytes in one segment (`rbdcore_buf_new`).
    pub(crate) fn zeroed(len: usize) -> Result<RawList> {
        check_len(len)?;
        // SAFETY: no preconditions; null means ENOMEM (the length was checked).
        let p = unsafe { shim::rbdcore_buf_new(len) };
        NonNull::new(p)
            .map(RawList)
            .ok_or_else(|| Error::from_errno("rbdcore_buf_new", libc::ENOMEM, Context::none()))
    }

    /// The list's length (`rbdcore_buf_len`).
    pub(crate) fn len(&self) -> usize {
        // SAFETY: `self` is a live list.
        unsafe { shim::rbdcore_buf_len(self.ptr()) }
    }

    /// The raw list pointer, for the shim's calls.
    pub(crate) fn ptr(&self) -> *mut c_void {
        self.0.as_ptr()
    }

    /// Moves `other`'s segments to the end of this list, sharing them (`rbdcore_buf_append`).
    pub(crate) fn append(&mut self, other: &mut RawList) -> Result<()> {
        // SAFETY: both are live lists, and distinct (two `&mut`).
        let r = unsafe { shim::rbdcore_buf_append(self.ptr(), other.ptr()) };
        if r < 0 {
            return Err(Error::from_errno("rbdcore_buf_append", -r, Context::none()));
        }
        Ok(())
    }
}

impl Drop for RawList {
    fn drop(&mut self) {
        // SAFETY: created by the shim, freed exactly once, here; nothing borrows it after.
        unsafe { shim::rbdcore_buf_free(self.ptr()) }
    }
}

/// Bytes held in a librbd `bufferlist`, shared with librbd instead of copied. See the
/// [module docs](self).
///
/// Dereferences to `[u8]`. `Clone` shares the bytes (no copy). `Send + Sync`.
pub struct Buffer {
    list: RawList,
    /// The first byte of the list's one segment (dangling when `len` is 0).
    data: NonNull<u8>,
    /// Bytes visible through this `Buffer` (at most the list's length).
    len: usize,
}

// SAFETY: see RawList; `data` points into the list's segment, which stays alive and in
// place as long as the list holds it.
unsafe impl Send for Buffer {}
// SAFETY: `&Buffer` reads the bytes or shares them; they are changed only through
// `get_mut(&mut self)`, and only when no other list holds them.
unsafe impl Sync for Buffer {}

impl Buffer {
    /// `len` zeroed bytes in one page-aligned segment. Fails with `InvalidInput` above
    /// [`MAX_BUFFER_LEN`].
    pub fn zeroed(len: usize) -> Result<Buffer> {
        Buffer::from_list(RawList::zeroed(len)?)
    }

    /// A copy of `data` in one segment (the one copy; after this, writes share it).
    /// Fails with `InvalidInput` above [`MAX_BUFFER_LEN`].
    pub fn from_slice(data: &[u8]) -> Result<Buffer> {
        check_len(data.len())?;
        // SAFETY: `data` is valid for `data.len()` bytes and only read; null means ENOMEM
        // (the length was checked).
        let p = unsafe { shim::rbdcore_buf_copy(data.as_ptr(), data.len()) };
        let list = NonNull::new(p)
            .map(RawList)
            .ok_or_else(|| Error::from_errno("rbdcore_buf_copy", libc::ENOMEM, Context::none()))?;
        Buffer::from_list(list)
    }

    /// Wraps a list, making it contiguous first (`rbdcore_buf_contiguous`): a list of one
    /// segment is used in place; one of several (a read across objects) is copied into
    /// one.
    pub(crate) fn from_list(list: RawList) -> Result<Buffer> {
        let len = list.len();
        let data = if len == 0 {
            NonNull::dangling()
        } else {
            // SAFETY: a live list that we own exclusively (`&mut`), non-empty.
            let p = unsafe { shim::rbdcore_buf_contiguous(list.ptr()) };
            NonNull::new(p).ok_or_else(|| {
                Error::from_errno("rbdcore_buf_contiguous", libc::ENOMEM, Context::none())
            })?
        };
        Ok(Buffer { list, data, len })
    }

    /// Shows only the first `len` bytes (no-op if `len` is not smaller).
    pub(crate) fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// The number of bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True if there are no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `data` points at `len` initialised bytes (zeroed at creation, or filled
        // by a completed read) in a segment this list keeps alive; they change only
        // through `get_mut`, which needs `&mut self` and so excludes this borrow.
        unsafe { std::slice::from_raw_parts(self.data.as_ptr(), self.len) }
    }

    /// Mutable access to the bytes, if no one else holds them: no clone of this buffer,
    /// and librbd has released every write made from it (`rbdcore_buf_make_writable`).
    /// `None` otherwise (try again later, or [`Buffer::from_slice`] a new one).
    pub fn get_mut(&mut self) -> Option<&mut [u8]> {
        if self.len == 0 {
            return Some(&mut []);
        }
        // SAFETY: a live list that we hold exclusively (`&mut self`).
        if unsafe { shim::rbdcore_buf_make_writable(self.list.ptr()) } != 1 {
            return None;
        }
        // SAFETY: as in `as_slice`; no other list references the segment (checked just
        // now with the segment's atomic reference count, and nobody can add one while
        // `&mut self` is borrowed), so this is the only access to the bytes.
        Some(unsafe { std::slice::from_raw_parts_mut(self.data.as_ptr(), self.len) })
    }

    /// A new `Vec` with a copy of the bytes.
    pub fn to_vec(&self) -> Vec<u8> {
        self.as_slice().to_vec()
    }

    /// The list, for the shim's write call.
    pub(crate) fn raw(&self) -> &RawList {
        &self.list
    }
}

impl Clone for Buffer {
    /// Shares the bytes (`rbdcore_buf_share`); no copy. Aborts on out-of-memory, as
    /// `Vec::clone` does.
    fn clone(&self) -> Buffer {
        // SAFETY: a live list, only read.
        let p = unsafe { shim::rbdcore_buf_share(self.list.ptr()) };
        let Some(p) = NonNull::new(p) else {
            std::alloc::handle_alloc_error(std::alloc::Layout::new::<usize>());
        };
        // The new list has the same segments, so the same first byte.
        Buffer {
            list: RawList(p),
            data: self.data,
            len: self.len,
        }
    }
}

impl std::ops::Deref for Buffer {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl AsRef<[u8]> for Buffer {
    fn as_ref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl PartialEq for Buffer {
    fn eq(&self, other: &Buffer) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl Eq for Buffer {}

impl std::fmt::Debug for Buffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Buffer")
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_buffer_is_zeroed_writable_and_shares_on_clone() {
        let mut b = Buffer::zeroed(8192).unwrap();
        assert_eq!(b.len(), 8192);
        assert!(b.iter().all(|&x| x == 0));
        b.get_mut().unwrap()[..4].copy_from_slice(b"abcd");
        assert_eq!(&b[..4], b"abcd");

        let c = b.clone();
        assert_eq!(c.as_ptr(), b.as_ptr(), "a clone shares the bytes");
        assert!(
            b.get_mut().is_none(),
            "not writable while a clone holds the bytes"
        );
        drop(c);
        assert!(
            b.get_mut().is_some(),
            "writable again once the clone is gone"
        );
    }

    #[test]
    fn from_slice_copies_and_empty_buffers_work() {
        let b = Buffer::from_slice(b"hello").unwrap();
        assert_eq!(b.as_slice(), b"hello");
        assert_eq!(b.to_vec(), b"hello".to_vec());
        let mut w = b.clone();
        assert!(w.get_mut().is_none(), "shared with `b`");
        drop(b);
        w.get_mut().unwrap()[0] = b'j';
        assert_eq!(&w[..], b"jello");
        assert!(Buffer::from_slice(b"").unwrap().is_empty());
        let mut e = Buffer::zeroed(0).unwrap();
        assert!(e.is_empty());
        assert_eq!(e.get_mut().unwrap().len(), 0);
        assert_eq!(e.clone().as_slice(), b"");
    }

    #[test]
    fn a_length_over_the_segment_limit_is_refused_by_name() {
        let e = Buffer::zeroed(MAX_BUFFER_LEN + 1).unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::InvalidInput);
        assert!(
            e.to_string().contains(&(MAX_BUFFER_LEN + 1).to_string()),
            "{e}"
        );
    }

    #[test]
    fn appended_lists_become_one_contiguous_buffer() {
        let mut a = RawList::zeroed(4096).unwrap();
        let mut tail = Buffer::from_slice(&[7u8; 100]).unwrap();
        // Share the tail's segment into a second list and append it to `a`.
        let mut shared = Buffer::clone(&tail).list;
        a.append(&mut shared).unwrap();
        assert_eq!(shared.len(), 0, "append moves the segments");
        let joined = Buffer::from_list(a).unwrap();
        assert_eq!(joined.len(), 4196);
        assert!(joined[..4096].iter().all(|&x| x == 0));
        assert!(joined[4096..].iter().all(|&x| x == 7));
        // Making it contiguous copied into a new segment: the tail is unshared again.
        drop(shared);
        assert!(tail.get_mut().is_some());
        let mut t = joined.clone();
        t.truncate(10);
        assert_eq!(t.len(), 10);
    }
}
