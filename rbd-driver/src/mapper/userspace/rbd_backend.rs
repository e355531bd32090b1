//! The mapper's [`BlockBackend`]: an open RBD image through rbd-core's asynchronous I/O
//! (`rbd_aio_*`).
//!
//! The image sits behind a lock so that teardown can [take it away](RbdBackend::take)
//! and close it while the FUSE session may still hold the backend: requests after that
//! fail with `EIO`.

use std::sync::{Arc, Mutex, RwLock};

use rbd_core::{ErrorKind, Image};

use super::fusefs::{BlockBackend, IoError, IoFuture};

/// I/O buffers kept for reuse, per size class (powers of two from 4 KiB to 1 MiB):
/// allocating (and, for reads, zeroing) a fresh megabyte per request costs more than the
/// copy itself.
#[derive(Debug, Default)]
struct BufPool {
    classes: [Mutex<Vec<Vec<u8>>>; POOL_CLASSES],
}

/// Size classes: 4 KiB << 0..=8.
const POOL_CLASSES: usize = 9;
/// Buffers kept per class.
const POOL_DEPTH: usize = 64;

impl BufPool {
    fn class(len: usize) -> Option<usize> {
        let c = len.max(4096).next_power_of_two().trailing_zeros() as usize - 12;
        (c < POOL_CLASSES).then_some(c)
    }

    /// An empty buffer with room for `len` bytes.
    fn get_empty(&self, len: usize) -> Vec<u8> {
        if let Some(c) = Self::class(len) {
            let popped = self.classes[c]
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .pop();
            let mut b = popped.unwrap_or_else(|| Vec::with_capacity(4096 << c));
            b.clear();
            return b;
        }
        Vec::with_capacity(len)
    }

    /// A buffer of exactly `len` bytes (contents unspecified: librbd overwrites them).
    fn get(&self, len: usize) -> Vec<u8> {
        if let Some(c) = Self::class(len) {
            let popped = self.classes[c]
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .pop();
            if let Some(mut b) = popped {
                b.resize(len, 0);
                return b;
            }
            let mut b = Vec::with_capacity(4096 << c);
            b.resize(len, 0);
            return b;
        }
        vec![0u8; len]
    }

    fn put(&self, buf: Vec<u8>) {
        if let Some(c) = Self::class(buf.capacity())
            && buf.capacity() == 4096 << c
        {
            let mut v = self.classes[c].lock().unwrap_or_else(|p| p.into_inner());
            if v.len() < POOL_DEPTH {
                v.push(buf);
            }
        }
    }
}

/// An image served over FUSE.
#[derive(Debug)]
pub(crate) struct RbdBackend {
    image: RwLock<Option<Arc<Image>>>,
    pool: Arc<BufPool>,
}

impl RbdBackend {
    pub(crate) fn new(image: Arc<Image>) -> Self {
        Self {
            image: RwLock::new(Some(image)),
            pool: Arc::new(BufPool::default()),
        }
    }

    /// Takes the image out; later I/O fails with `EIO`.
    pub(crate) fn take(&self) -> Option<Arc<Image>> {
        self.image.write().unwrap_or_else(|p| p.into_inner()).take()
    }

    fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Image) -> rbd_core::rbd::aio::AioFuture<T>,
    ) -> IoFuture<T> {
        let guard = self.image.read().unwrap_or_else(|p| p.into_inner());
        let Some(image) = guard.as_ref() else {
            return Box::pin(async { Err(IoError::Errno(libc::EIO)) });
        };
        let fut = f(image);
        drop(guard);
        Box::pin(async move { fut.await.map_err(classify) })
    }
}

/// How a Ceph error is reported to the kernel.
pub(crate) fn classify(e: rbd_core::Error) -> IoError {
    let errno = match e.kind() {
        ErrorKind::Blocklisted => {
            return IoError::Blocklisted(format!("blocklisted: an I/O failed with: {e}"));
        }
        ErrorKind::ReadOnly => libc::EROFS,
        ErrorKind::NoSpace => libc::ENOSPC,
        ErrorKind::InvalidInput => libc::EINVAL,
        ErrorKind::NotSupported => libc::EOPNOTSUPP,
        ErrorKind::PermissionDenied => libc::EACCES,
        // The cluster did not answer: counts towards giving up.
        ErrorKind::Timeout | ErrorKind::NotConnected => return IoError::Unreachable,
        // Everything else.
        _ => libc::EIO,
    };
    IoError::Errno(errno)
}

impl BlockBackend for RbdBackend {
    fn read(&self, offset: u64, len: usize) -> IoFuture<Vec<u8>> {
        let buf = self.pool.get(len);
        self.with(|i| i.aio_read(offset, buf))
    }
    fn write(&self, offset: u64, data: &[u8]) -> IoFuture<usize> {
        let mut buf = self.pool.get_empty(data.len());
        buf.extend_from_slice(data);
        let n = data.len();
        let pool = self.pool.clone();
        let io = self.with(|i| i.aio_write_buf(offset, buf));
        Box::pin(async move {
            let buf = io.await?;
            pool.put(buf);
            Ok(n)
        })
    }
    fn write_zeroes(&self, offset: u64, len: u64) -> IoFuture<()> {
        self.with(|i| i.aio_write_zeroes(offset, len))
    }
    fn flush(&self) -> IoFuture<()> {
        self.with(|i| i.aio_flush())
    }
    fn recycle(&self, buf: Vec<u8>) {
        self.pool.put(buf);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_reuses_buffers_by_size_class() {
        let p = BufPool::default();
        assert_eq!(BufPool::class(1), Some(0));
        assert_eq!(BufPool::class(4096), Some(0));
        assert_eq!(BufPool::class(4097), Some(1));
        assert_eq!(BufPool::class(1 << 20), Some(8));
        assert_eq!(BufPool::class((1 << 20) + 1), None);
        let b = p.get(1 << 20);
        assert_eq!(b.len(), 1 << 20);
        let ptr = b.as_ptr();
        p.put(b);
        let b = p.get(700 * 1024);
        assert_eq!(b.len(), 700 * 1024);
        assert_eq!(b.as_ptr(), ptr, "the same buffer, reused");
        p.put(b);
        let w = p.get_empty(4096);
        assert!(w.is_empty() && w.capacity() >= 4096);
        p.put(w);
        let b = p.get(3 << 20);
        assert_eq!(b.len(), 3 << 20);
        p.put(b); // too big for the pool: just dropped
        assert!(p.classes.iter().all(|c| c.lock().unwrap().len() <= 1));
    }
}
