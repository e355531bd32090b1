//! The mapper's [`BlockBackend`]: an open RBD image through rbd-core's asynchronous,
//! zero-copy I/O ([`Image::aio_read_buffer`], [`Image::aio_write_buffer`]): a read is
//! replied to the kernel straight from the buffer the OSD's reply arrived in, and a
//! write's bytes are copied once, out of the FUSE request, into the buffer librbd sends.
//!
//! The image sits behind a lock so that teardown can [take it away](RbdBackend::take)
//! and close it while the FUSE session may still hold the backend: requests after that
//! fail with `EIO`.

use std::sync::{Arc, RwLock};

use rbd_core::{Buffer, ErrorKind, Image};

use super::fusefs::{BlockBackend, IoError, IoFuture, ReadBuf};

/// An image served over FUSE.
#[derive(Debug)]
pub(crate) struct RbdBackend {
    image: RwLock<Option<Arc<Image>>>,
}

impl RbdBackend {
    pub(crate) fn new(image: Arc<Image>) -> Self {
        Self {
            image: RwLock::new(Some(image)),
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
    fn read(&self, offset: u64, len: usize) -> IoFuture<ReadBuf> {
        let io = self.with(|i| i.aio_read_buffer(offset, len));
        Box::pin(async move { io.await.map(ReadBuf::Buffer) })
    }
    fn write(&self, offset: u64, data: &[u8]) -> IoFuture<usize> {
        // FUSE requests are at most 1 MiB: far below a Buffer's limit, so this fails only
        // when out of memory.
        let buf = match Buffer::from_slice(data) {
            Ok(b) => b,
            Err(e) => return Box::pin(async move { Err(classify(e)) }),
        };
        // librbd holds its own reference to the bytes; ours can go now.
        self.with(|i| i.aio_write_buffer(offset, &buf))
    }
    fn write_zeroes(&self, offset: u64, len: u64) -> IoFuture<()> {
        self.with(|i| i.aio_write_zeroes(offset, len))
    }
    fn flush(&self) -> IoFuture<()> {
        self.with(|i| i.aio_flush())
    }
}
