//! Management calls from async code.
//!
//! Image I/O has native asynchronous forms ([`crate::rbd::aio`]), notify has
//! [`IoCtx::aio_notify`](crate::IoCtx::aio_notify) and watches are streams. The other
//! operations (create, open, snapshot, resize, lock, list, metadata...) are synchronous
//! librados/librbd calls: each is bounded by the connection's [`Timeouts`](crate::Timeouts),
//! but may block for that long, which would stall a tokio worker. [`blocking`] runs such a
//! call on tokio's blocking thread pool instead.
//!
//! ```no_run
//! use std::sync::Arc;
//! use rbd_core::{Image, OpenOptions, task::blocking};
//! # async fn demo(io: rbd_core::IoCtx) -> rbd_core::Result<()> {
//! let io = Arc::new(io);
//! let image = Arc::new(blocking({
//!     let io = io.clone();
//!     move || Image::open(&io, "db1", &OpenOptions::new())
//! }).await?);
//! let snap_taker = image.clone();
//! blocking(move || snap_taker.snap_create("before-upgrade")).await?;
//! let data = image.aio_read(0, vec![0; 4096]).await?; // native async, no thread
//! # let _ = data; Ok(()) }
//! ```
//!
//! Every handle is `Send + Sync`, so sharing them with the closure through an `Arc` is
//! enough; nothing here needs `unsafe`.

use crate::error::{Context, Error, Result};

/// Runs a blocking rbd-core call on tokio's blocking thread pool and awaits its result.
///
/// Must be called from within a tokio runtime. A panic in `f` is resumed in the caller.
/// If the runtime shuts down before `f` runs, the result is an error of kind
/// [`ErrorKind::Other`](crate::ErrorKind::Other) (`EINTR`).
pub async fn blocking<T, F>(f: F) -> Result<T>
where
    F: FnOnce() -> Result<T> + Send + 'static,
    T: Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => Err(Error::from_errno(
            "tokio::task::spawn_blocking",
            libc::EINTR,
            Context::none(),
        )),
    }
}
