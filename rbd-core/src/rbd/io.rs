//! Synchronous image I/O: positional reads and writes, discard, write-zeroes and flush on
//! [`Image`], and [`ImageCursor`], a `std::io::{Read, Write, Seek}` view of an image.
//!
//! For the asynchronous forms see [`crate::rbd::aio`].
//!
//! # Ranges and the end of the image
//!
//! An image has a fixed size (until resized), and librbd *silently clips* writes, discards
//! and zeroing that run past the end. These wrappers check the range first instead:
//!
//! * a write, discard or write-zeroes that does not fit entirely inside the image fails
//!   with [`ErrorKind::InvalidInput`](crate::ErrorKind::InvalidInput) naming the range
//!   and the size, and nothing is written;
//! * a read that *starts* at or past the end fails the same way; one that starts inside
//!   and runs past the end is a short read (like `pread(2)`); [`Image::read_exact_at`]
//!   requires the whole range to exist;
//! * [`Image::discard`] is a hint (unaligned edges below librbd's discard granularity keep
//!   their data); [`Image::write_zeroes`] is what guarantees zeros;
//! * writes through a read-only handle, or one opened at (or switched to) a snapshot,
//!   fail with [`ErrorKind::ReadOnly`](crate::ErrorKind::ReadOnly) (librbd's `EROFS`).
//!
//! # Large requests
//!
//! Several librbd calls take or return a C `int` (`rbd_discard` rejects lengths above
//! `INT_MAX`), so reads and writes larger than [`Image::max_request_size`] (1 GiB by
//! default), and discards and write-zeroes larger than 1 GiB, are split into pieces that
//! end on multiples of that size and issued one after the other.
//!
//! ```no_run
//! # fn demo(image: &rbd_core::Image) -> Result<(), Box<dyn std::error::Error>> {
//! use std::io::{Read, Seek, SeekFrom};
//! image.write_at(4096, b"hello")?;
//! let mut buf = [0u8; 5];
//! image.read_exact_at(4096, &mut buf)?;
//! assert_eq!(&buf, b"hello");
//!
//! // The same bytes through std::io.
//! let mut cur = image.cursor();
//! cur.seek(SeekFrom::Start(4096))?;
//! let mut s = String::new();
//! cur.take(5).read_to_string(&mut s)?;
//! assert_eq!(s, "hello");
//! # Ok(()) }
//! ```

use std::borrow::Borrow;
use std::io;

use crate::error::{Error, Result, check, check64};
use crate::rbd::Image;
use crate::sys;

/// Default for [`Image::max_request_size`]: 1 GiB, a power of two below every `int` limit
/// in librbd's C API, and a multiple of every RBD object size.
pub const DEFAULT_MAX_REQUEST: usize = 1 << 30;
/// Smallest value [`Image::set_max_request_size`] accepts.
pub const MIN_MAX_REQUEST: usize = 512;
/// Discards and write-zeroes carry no buffer, so they are split only to stay below the C
/// API's `int` limits, always at 1 GiB: smaller pieces could fall below librbd's discard
/// granularity and be skipped.
pub(crate) const ZEROING_PIECE: u64 = DEFAULT_MAX_REQUEST as u64;

bitflags::bitflags! {
    /// Per-request hints passed to librbd as `op_flags` (`LIBRADOS_OP_FLAG_FADVISE_*`).
    ///
    /// They are hints to the OSD's cache and object store; correctness never depends on
    /// them.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct IoFlags: i32 {
        /// The data is accessed randomly.
        const FADVISE_RANDOM = sys::LIBRADOS_OP_FLAG_FADVISE_RANDOM as i32;
        /// The data is accessed sequentially.
        const FADVISE_SEQUENTIAL = sys::LIBRADOS_OP_FLAG_FADVISE_SEQUENTIAL as i32;
        /// The data will be accessed soon.
        const FADVISE_WILLNEED = sys::LIBRADOS_OP_FLAG_FADVISE_WILLNEED as i32;
        /// The data will not be accessed again soon.
        const FADVISE_DONTNEED = sys::LIBRADOS_OP_FLAG_FADVISE_DONTNEED as i32;
        /// Do not cache the data.
        const FADVISE_NOCACHE = sys::LIBRADOS_OP_FLAG_FADVISE_NOCACHE as i32;
        /// Force unit access: the write is durable when it completes.
        const FADVISE_FUA = sys::LIBRADOS_OP_FLAG_FADVISE_FUA as i32;
    }
}

/// Splits `[offset, offset + len)` into contiguous, non-empty pieces of at most `max`
/// bytes whose boundaries fall on multiples of `max` (so object-aligned requests stay
/// aligned). `offset + len` must not overflow and `max` must be non-zero.
pub(crate) fn split(offset: u64, len: u64, max: u64) -> impl Iterator<Item = (u64, u64)> {
    debug_assert!(max > 0);
    debug_assert!(offset.checked_add(len).is_some());
    let end = offset + len;
    let mut pos = offset;
    std::iter::from_fn(move || {
        if pos >= end {
            return None;
        }
        let boundary = (pos / max).saturating_add(1).saturating_mul(max);
        let next = boundary.min(end);
        let piece = (pos, next - pos);
        pos = next;
        Some(piece)
    })
}

/// How many pieces [`split`] yields.
pub(crate) fn split_count(offset: u64, len: u64, max: u64) -> usize {
    if len == 0 {
        return 0;
    }
    let first = offset / max;
    let last = (offset + len - 1) / max;
    usize::try_from(last - first + 1).unwrap_or(usize::MAX)
}

impl Image {
    /// The largest single read or write handed to librbd; larger ones are split (see the
    /// [module docs](crate::rbd::io)). Discards and write-zeroes are split at 1 GiB
    /// whatever this is.
    pub fn max_request_size(&self) -> usize {
        self.max_request
    }

    /// Sets [`Image::max_request_size`]: at least [`MIN_MAX_REQUEST`], at most
    /// [`DEFAULT_MAX_REQUEST`] (1 GiB). Smaller values mean more, smaller librbd requests;
    /// they never change the result.
    pub fn set_max_request_size(&mut self, bytes: usize) -> Result<()> {
        if !(MIN_MAX_REQUEST..=DEFAULT_MAX_REQUEST).contains(&bytes) {
            return Err(Error::invalid(
                "max request size",
                bytes.to_string(),
                format!("must be between {MIN_MAX_REQUEST} and {DEFAULT_MAX_REQUEST} bytes"),
            ));
        }
        self.max_request = bytes;
        Ok(())
    }

    /// Checks that `[offset, offset + len)` lies inside an image of `size` bytes, for an
    /// operation that changes data (nothing has been sent yet when it fails).
    pub(crate) fn check_write_range(
        &self,
        what: &'static str,
        offset: u64,
        len: u64,
        size: u64,
    ) -> Result<()> {
        let fits = offset.checked_add(len).is_some_and(|end| end <= size);
        if fits {
            return Ok(());
        }
        Err(Error::invalid(
            what,
            format!("{len} bytes at offset {offset}"),
            format!(
                "extends past the end of the image ({}: {size} bytes); nothing was changed",
                self.ctx()
            ),
        ))
    }

    /// Checks that a read of `len > 0` bytes may start at `offset` in an image of `size`
    /// bytes, and returns how many bytes of it exist.
    pub(crate) fn clip_read(&self, offset: u64, len: u64, size: u64) -> Result<u64> {
        if offset >= size {
            return Err(Error::invalid(
                "read offset",
                offset.to_string(),
                format!(
                    "at or past the end of the image ({}: {size} bytes)",
                    self.ctx()
                ),
            ));
        }
        Ok(len.min(size - offset))
    }

    /// Reads into `buf` from `offset` (`rbd_read2`); returns the number of bytes read,
    /// fewer than `buf.len()` only when the image ends first.
    ///
    /// Fails with `InvalidInput` when `offset` is at or past the end and `buf` is not
    /// empty.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        self.read_at_with(offset, buf, IoFlags::empty())
    }

    /// Like [`Image::read_at`], with hints for the OSD (`rbd_read2`'s `op_flags`).
    pub fn read_at_with(&self, offset: u64, buf: &mut [u8], flags: IoFlags) -> Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let size = self.size()?;
        let len = self.clip_read(offset, buf.len() as u64, size)?;
        let mut done = 0usize;
        for (off, n) in split(offset, len, self.max_request as u64) {
            // Each piece is at most max_request (<= 1 GiB), so it fits a usize.
            let n = n as usize;
            let dst = &mut buf[done..done + n];
            // SAFETY: open image handle; `dst` is writable for `n` bytes and outlives the
            // synchronous call.
            let ret =
                unsafe { sys::rbd_read2(self.ptr, off, n, dst.as_mut_ptr().cast(), flags.bits()) };
            let got = check64(ret as i64, "rbd_read2", || self.ctx())? as usize;
            done += got.min(n);
            if got < n {
                break; // the image shrank under us
            }
        }
        Ok(done)
    }

    /// Reads exactly `buf.len()` bytes from `offset` (`rbd_read2`).
    ///
    /// Fails with `InvalidInput`, reading nothing, when the range does not lie entirely
    /// inside the image.
    pub fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        let size = self.size()?;
        self.check_range_exists(offset, buf.len() as u64, size)?;
        let n = self.read_at(offset, buf)?;
        if n < buf.len() {
            return Err(Error::invalid(
                "read range",
                format!("{} bytes at offset {offset}", buf.len()),
                format!("only {n} could be read: the image ({}) shrank", self.ctx()),
            ));
        }
        Ok(())
    }

    fn check_range_exists(&self, offset: u64, len: u64, size: u64) -> Result<()> {
        let fits = offset.checked_add(len).is_some_and(|end| end <= size);
        if fits {
            return Ok(());
        }
        Err(Error::invalid(
            "read range",
            format!("{len} bytes at offset {offset}"),
            format!(
                "extends past the end of the image ({}: {size} bytes)",
                self.ctx()
            ),
        ))
    }

    /// Writes all of `data` at `offset` (`rbd_write2`) and returns `data.len()`.
    ///
    /// The whole range must lie inside the image: otherwise it fails with
    /// `InvalidInput` and writes nothing. Through a read-only or snapshot handle it fails
    /// with `ReadOnly`. A write is never partial, except when librbd fails between two
    /// pieces of a request larger than [`Image::max_request_size`].
    pub fn write_at(&self, offset: u64, data: &[u8]) -> Result<usize> {
        self.write_at_with(offset, data, IoFlags::empty())
    }

    /// Like [`Image::write_at`], with hints for the OSD (`rbd_write2`'s `op_flags`, e.g.
    /// [`IoFlags::FADVISE_FUA`]).
    pub fn write_at_with(&self, offset: u64, data: &[u8], flags: IoFlags) -> Result<usize> {
        if data.is_empty() {
            return Ok(0);
        }
        let size = self.size()?;
        self.check_write_range("write range", offset, data.len() as u64, size)?;
        let mut done = 0usize;
        for (off, n) in split(offset, data.len() as u64, self.max_request as u64) {
            let n = n as usize;
            let src = &data[done..done + n];
            // SAFETY: open image handle; `src` is readable for `n` bytes during the
            // synchronous call (librbd copies it).
            let ret =
                unsafe { sys::rbd_write2(self.ptr, off, n, src.as_ptr().cast(), flags.bits()) };
            check64(ret as i64, "rbd_write2", || self.ctx())?;
            done += n;
        }
        Ok(done)
    }

    /// Writes all of `data` at `offset` (`rbd_write2`, in chunks as [`Image::write_at`]
    /// does): [`Image::write_at`] without the count, which is always `data.len()`.
    pub fn write_all_at(&self, offset: u64, data: &[u8]) -> Result<()> {
        self.write_at(offset, data).map(drop)
    }

    /// Discards `len` bytes at `offset` (`rbd_discard`), freeing the space they use.
    /// The range must lie inside the image (else `InvalidInput`, nothing changed).
    ///
    /// Discard is a hint, as on any block device: librbd discards whole blocks of
    /// `rbd_discard_granularity_bytes` (64 KiB by default) and whole objects, which then
    /// read back as zeros, but it skips the unaligned edges of the range, whose data
    /// stays. Use [`Image::write_zeroes`] when the range must read back as zeros.
    pub fn discard(&self, offset: u64, len: u64) -> Result<()> {
        if len == 0 {
            return Ok(());
        }
        let size = self.size()?;
        self.check_write_range("discard range", offset, len, size)?;
        for (off, n) in split(offset, len, ZEROING_PIECE) {
            // SAFETY: open image handle; plain integer arguments. Each piece is at most
            // 1 GiB, below rbd_discard's INT_MAX limit.
            let ret = unsafe { sys::rbd_discard(self.ptr, off, n) };
            check(ret, "rbd_discard", || self.ctx())?;
        }
        Ok(())
    }

    /// Writes zeros over `len` bytes at `offset` (`rbd_write_zeroes`; librbd may
    /// deallocate whole objects instead). The range must lie inside the image (else
    /// `InvalidInput`, nothing changed).
    pub fn write_zeroes(&self, offset: u64, len: u64) -> Result<()> {
        if len == 0 {
            return Ok(());
        }
        let size = self.size()?;
        self.check_write_range("write-zeroes range", offset, len, size)?;
        for (off, n) in split(offset, len, ZEROING_PIECE) {
            // SAFETY: open image handle; plain integer arguments (piece <= 1 GiB fits
            // size_t and the ssize_t result).
            let ret = unsafe { sys::rbd_write_zeroes(self.ptr, off, n as usize, 0, 0) };
            check64(ret as i64, "rbd_write_zeroes", || self.ctx())?;
        }
        Ok(())
    }

    /// Waits until every write issued so far is durable (`rbd_flush`).
    pub fn flush(&self) -> Result<()> {
        // SAFETY: open image handle.
        let ret = unsafe { sys::rbd_flush(self.ptr) };
        check(ret, "rbd_flush", || self.ctx())?;
        Ok(())
    }

    /// A [`std::io::Read`] + [`Write`](std::io::Write) + [`Seek`](std::io::Seek) cursor
    /// over this image, starting at offset 0.
    pub fn cursor(&self) -> ImageCursor<&Image> {
        ImageCursor::new(self)
    }
}

/// A position in an image, with [`std::io::Read`], [`std::io::Write`] and
/// [`std::io::Seek`], so `std::io::copy`, `BufReader` and friends work on images.
///
/// Generic over how it holds the image: `ImageCursor<&Image>` from [`Image::cursor`],
/// or an owning `ImageCursor<Image>` / `ImageCursor<Arc<Image>>` from
/// [`ImageCursor::new`].
///
/// It behaves like a file of fixed length (the image size, read at each call):
/// reads at or past the end return 0 (end of file), writes are clipped at the end, and a
/// write that starts at the end fails with [`std::io::ErrorKind::StorageFull`]. Seeking
/// past the end is allowed. Errors are [`Error`]s converted with `From<Error> for
/// std::io::Error` (the original is the `io::Error`'s inner error).
#[derive(Debug)]
pub struct ImageCursor<I: Borrow<Image>> {
    image: I,
    pos: u64,
}

impl<I: Borrow<Image>> ImageCursor<I> {
    /// A cursor at offset 0.
    pub fn new(image: I) -> Self {
        Self { image, pos: 0 }
    }

    /// The current offset.
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// Moves to `pos` (may be past the end).
    pub fn set_position(&mut self, pos: u64) {
        self.pos = pos;
    }

    /// The image.
    pub fn get_ref(&self) -> &Image {
        self.image.borrow()
    }

    /// Gives the image holder back.
    pub fn into_inner(self) -> I {
        self.image
    }
}

impl<I: Borrow<Image>> io::Read for ImageCursor<I> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let img = self.image.borrow();
        let size = img.size()?;
        if self.pos >= size {
            return Ok(0);
        }
        let n = img.read_at(self.pos, buf)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl<I: Borrow<Image>> io::Write for ImageCursor<I> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let img = self.image.borrow();
        let size = img.size()?;
        if self.pos >= size {
            return Err(io::Error::new(
                io::ErrorKind::StorageFull,
                format!(
                    "write at offset {} is at or past the end of the image ({}: {size} bytes)",
                    self.pos,
                    img.ctx()
                ),
            ));
        }
        let n = (buf.len() as u64).min(size - self.pos) as usize;
        img.write_at(self.pos, &buf[..n])?;
        self.pos += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(self.image.borrow().flush()?)
    }
}

impl<I: Borrow<Image>> io::Seek for ImageCursor<I> {
    fn seek(&mut self, to: io::SeekFrom) -> io::Result<u64> {
        let (base, delta) = match to {
            io::SeekFrom::Start(p) => {
                self.pos = p;
                return Ok(p);
            }
            io::SeekFrom::End(d) => (self.image.borrow().size()?, d),
            io::SeekFrom::Current(d) => (self.pos, d),
        };
        match base.checked_add_signed(delta) {
            Some(p) => {
                self.pos = p;
                Ok(p)
            }
            None => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("seek to {base} + ({delta}) is before the start or overflows"),
            )),
        }
    }

    fn stream_position(&mut self) -> io::Result<u64> {
        Ok(self.pos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn split_examples() {
        let v: Vec<_> = split(0, 10, 4).collect();
        assert_eq!(v, vec![(0, 4), (4, 4), (8, 2)]);
        let v: Vec<_> = split(3, 6, 4).collect();
        assert_eq!(v, vec![(3, 1), (4, 4), (8, 1)]);
        assert_eq!(split(5, 0, 4).count(), 0);
        assert_eq!(split_count(5, 0, 4), 0);
        let v: Vec<_> = split(u64::MAX - 3, 3, 1 << 30).collect();
        assert_eq!(v, vec![(u64::MAX - 3, 3)]);
    }

    proptest! {
        #[test]
        fn split_covers_exactly(offset in 0u64..(1 << 40), len in 0u64..(1 << 20), max in 1u64..5000) {
            let pieces: Vec<_> = split(offset, len, max).collect();
            prop_assert_eq!(pieces.len(), split_count(offset, len, max));
            let mut pos = offset;
            for &(o, n) in &pieces {
                prop_assert_eq!(o, pos);
                prop_assert!(n > 0 && n <= max);
                // Every piece but the last ends on a multiple of max.
                if o + n != offset + len {
                    prop_assert_eq!((o + n) % max, 0);
                }
                // No piece crosses a multiple of max.
                prop_assert_eq!(o / max, (o + n - 1) / max);
                pos += n;
            }
            prop_assert_eq!(pos, offset + len);
        }
    }
}
