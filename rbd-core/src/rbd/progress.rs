//! Progress reporting for long-running image operations (`librbd_progress_fn_t`).
//!
//! Resize, remove, flatten, copy, rollback, snapshot removal and trash removal report
//! progress through a C callback `int (*)(uint64_t offset, uint64_t total, void *arg)`.
//! This module adapts a Rust closure `FnMut(done, total)` to it:
//!
//! * the closure is boxed behind a mutex and passed to librbd as `*mut c_void`; it lives on
//!   the caller's stack frame for the whole (synchronous) C call, which is the only time
//!   librbd may call it;
//! * librbd may call it from its own worker threads while the caller waits, hence the
//!   `Send` bound and the mutex (calls are serialized, never concurrent);
//! * a panic in the closure is caught at the FFI boundary (unwinding into C is undefined
//!   behaviour), the closure is not called again, and the panic is resumed on the caller's
//!   thread once the C call has returned.
//!
//! ```no_run
//! # fn demo(io: &rbd_core::IoCtx) -> rbd_core::Result<()> {
//! rbd_core::rbd::remove_with_progress(io, "old-volume", |done, total| {
//!     eprintln!("removing: {done}/{total}");
//! })?;
//! # Ok(()) }
//! ```

use std::any::Any;
use std::ffi::{c_int, c_void};
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::Mutex;

use crate::sys;

/// The mutable state behind the `void *` handed to librbd.
struct State<'a> {
    callback: Option<Box<dyn FnMut(u64, u64) + Send + 'a>>,
    panic: Option<Box<dyn Any + Send>>,
}

/// Adapts an optional Rust progress closure to `librbd_progress_fn_t` plus its `void *`.
///
/// Create it on the stack, pass [`ProgressAdapter::callback`] and
/// [`ProgressAdapter::data`] to the C function, and call [`ProgressAdapter::finish`] after
/// the C function has returned to re-raise a panic from the closure.
///
/// With no closure it still provides a valid no-op callback: several librbd functions
/// (`rbd_resize2`, `rbd_snap_remove2`, `rbd_snap_create2`...) call the function pointer
/// unconditionally and crash on NULL.
pub(crate) struct ProgressAdapter<'a> {
    state: Mutex<State<'a>>,
}

impl<'a> ProgressAdapter<'a> {
    /// An adapter that calls `f(done, total)` on every progress update.
    pub(crate) fn new(f: impl FnMut(u64, u64) + Send + 'a) -> Self {
        Self {
            state: Mutex::new(State {
                callback: Some(Box::new(f)),
                panic: None,
            }),
        }
    }

    /// An adapter that ignores progress updates.
    pub(crate) fn none() -> Self {
        Self {
            state: Mutex::new(State {
                callback: None,
                panic: None,
            }),
        }
    }

    /// The C function pointer to pass as `cb`.
    pub(crate) fn callback(&self) -> sys::librbd_progress_fn_t {
        Some(trampoline)
    }

    /// The pointer to pass as `cbdata`. Valid while `self` is alive and not moved.
    pub(crate) fn data(&self) -> *mut c_void {
        std::ptr::from_ref(&self.state).cast_mut().cast()
    }

    /// Re-raises, on the calling thread, a panic that the closure raised inside librbd.
    pub(crate) fn finish(self) {
        let state = self
            .state
            .into_inner()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(p) = state.panic {
            resume_unwind(p);
        }
    }
}

/// The `librbd_progress_fn_t` given to librbd: forwards to the closure behind `arg`.
///
/// # Safety
/// `arg` must be the pointer returned by [`ProgressAdapter::data`] of an adapter that is
/// still alive.
unsafe extern "C" fn trampoline(done: u64, total: u64, arg: *mut c_void) -> c_int {
    if arg.is_null() {
        return 0;
    }
    // SAFETY: `arg` is `&Mutex<State>` from `ProgressAdapter::data`; the adapter outlives
    // the synchronous C call that invokes us, and the mutex makes shared access sound even
    // if librbd called us from several threads.
    let state = unsafe { &*arg.cast::<Mutex<State<'_>>>() };
    let mut guard = state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let st = &mut *guard;
    if st.panic.is_some() {
        return 0;
    }
    if let Some(cb) = st.callback.as_mut() {
        let r = catch_unwind(AssertUnwindSafe(|| cb(done, total)));
        if let Err(p) = r {
            // Never call it again; re-raised by `finish` on the caller's thread.
            st.callback = None;
            st.panic = Some(p);
        }
    }
    // librbd ignores the return value for most operations; 0 means "keep going".
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwards_updates() {
        let mut seen = Vec::new();
        let a = ProgressAdapter::new(|d, t| seen.push((d, t)));
        let cb = a.callback().unwrap();
        // SAFETY: `a.data()` is the live adapter's pointer.
        unsafe {
            assert_eq!(cb(1, 4, a.data()), 0);
            assert_eq!(cb(4, 4, a.data()), 0);
        }
        a.finish();
        assert_eq!(seen, vec![(1, 4), (4, 4)]);
    }

    #[test]
    fn none_is_a_valid_noop() {
        let a = ProgressAdapter::none();
        let cb = a.callback().unwrap();
        // SAFETY: `a.data()` is the live adapter's pointer.
        assert_eq!(unsafe { cb(1, 2, a.data()) }, 0);
        a.finish();
    }

    #[test]
    fn panic_is_caught_and_resumed() {
        let mut calls = 0;
        let a = ProgressAdapter::new(|_, _| {
            calls += 1;
            panic!("boom in progress");
        });
        let cb = a.callback().unwrap();
        // SAFETY: `a.data()` is the live adapter's pointer.
        unsafe {
            assert_eq!(cb(1, 2, a.data()), 0);
            // Not called again after a panic.
            assert_eq!(cb(2, 2, a.data()), 0);
        }
        let r = catch_unwind(AssertUnwindSafe(|| a.finish()));
        let msg = r.unwrap_err();
        assert_eq!(msg.downcast_ref::<&str>(), Some(&"boom in progress"));
        assert_eq!(calls, 1);
    }
}
