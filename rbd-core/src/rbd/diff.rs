//! Changed extents between a snapshot and the head (or another snapshot): what `rbd diff`
//! and incremental backups use.
//!
//! ```no_run
//! use rbd_core::rbd::DiffOptions;
//! # fn demo(image: &rbd_core::Image) -> rbd_core::Result<()> {
//! // Everything written since snapshot "base":
//! for e in image.diff(&DiffOptions::new().from_snapshot("base"))? {
//!     println!("{}+{} {}", e.offset, e.length, if e.exists { "data" } else { "zero" });
//! }
//! # Ok(()) }
//! ```

use std::any::Any;
use std::ffi::{c_int, c_void};
use std::ops::ControlFlow;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::Mutex;

use serde::Serialize;

use crate::error::{Result, check};
use crate::rbd::{Image, validate_image_name};
use crate::sys;
use crate::util::{opt_cstring, opt_ptr};

/// What to compare in [`Image::diff_iterate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiffOptions {
    from_snap: Option<String>,
    offset: u64,
    length: Option<u64>,
    include_parent: bool,
    whole_object: bool,
}

impl Default for DiffOptions {
    fn default() -> Self {
        Self::new()
    }
}

impl DiffOptions {
    /// The whole image, against nothing (every allocated extent), including data
    /// inherited from a parent, at byte granularity.
    pub fn new() -> Self {
        Self {
            from_snap: None,
            offset: 0,
            length: None,
            include_parent: true,
            whole_object: false,
        }
    }

    /// Only changes since this snapshot.
    pub fn from_snapshot(mut self, snap: impl Into<String>) -> Self {
        self.from_snap = Some(snap.into());
        self
    }

    /// Only this byte range (default: the whole image).
    pub fn range(mut self, offset: u64, length: u64) -> Self {
        self.offset = offset;
        self.length = Some(length);
        self
    }

    /// Whether a clone reports the extents it inherits from its parent (default true).
    pub fn include_parent(mut self, yes: bool) -> Self {
        self.include_parent = yes;
        self
    }

    /// Report whole objects instead of exact extents; much faster with `fast-diff`
    /// (default false).
    pub fn whole_object(mut self, yes: bool) -> Self {
        self.whole_object = yes;
        self
    }
}

/// One changed extent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct DiffExtent {
    /// Byte offset in the image.
    pub offset: u64,
    /// Length in bytes.
    pub length: u64,
    /// True if the extent holds data, false if it was discarded (reads as zeros).
    pub exists: bool,
}

type DiffFn<'a> = dyn FnMut(u64, u64, bool) -> ControlFlow<()> + Send + 'a;

struct DiffState<'a> {
    callback: &'a mut DiffFn<'a>,
    stopped: bool,
    panic: Option<Box<dyn Any + Send>>,
}

/// `rbd_diff_iterate2`'s callback: forwards to the closure behind `arg`.
///
/// # Safety
/// `arg` must point to a live `Mutex<DiffState>`.
unsafe extern "C" fn diff_trampoline(
    offset: u64,
    len: usize,
    exists: c_int,
    arg: *mut c_void,
) -> c_int {
    // SAFETY: `arg` is the `&Mutex<DiffState>` from `diff_iterate`, which outlives the
    // synchronous rbd_diff_iterate2 call that invokes us; the mutex serializes calls made
    // from librbd's threads.
    let state = unsafe { &*arg.cast::<Mutex<DiffState<'_>>>() };
    let mut guard = state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let st = &mut *guard;
    if st.stopped || st.panic.is_some() {
        return -libc::ECANCELED;
    }
    let cb = &mut *st.callback;
    match catch_unwind(AssertUnwindSafe(|| cb(offset, len as u64, exists != 0))) {
        Ok(ControlFlow::Continue(())) => 0,
        Ok(ControlFlow::Break(())) => {
            st.stopped = true;
            -libc::ECANCELED
        }
        Err(p) => {
            st.panic = Some(p);
            -libc::ECANCELED
        }
    }
}

impl Image {
    /// Calls `f(offset, length, exists)` for every extent that differs between
    /// `opts`' snapshot (or nothing) and this handle's snapshot (or the head)
    /// (`rbd_diff_iterate2`). Return `ControlFlow::Break(())` to stop early; that is not an
    /// error. A panic in `f` stops the iteration and is resumed here.
    ///
    /// Extents come in offset order. `f` may be called from a librbd thread, never from
    /// two at once.
    pub fn diff_iterate(
        &self,
        opts: &DiffOptions,
        mut f: impl FnMut(u64, u64, bool) -> ControlFlow<()> + Send,
    ) -> Result<()> {
        if let Some(s) = &opts.from_snap {
            validate_image_name("snapshot name", s)?;
        }
        let snap = opt_cstring("snapshot name", opts.from_snap.as_deref())?;
        let len = match opts.length {
            Some(l) => l,
            None => self.size()?.saturating_sub(opts.offset),
        };
        let state = Mutex::new(DiffState {
            callback: &mut f,
            stopped: false,
            panic: None,
        });
        let arg = std::ptr::from_ref(&state).cast_mut().cast::<c_void>();
        // SAFETY: open image handle; `snap` is NULL or a valid C string; the callback's
        // data (`state`) lives on this frame for the whole synchronous call.
        let ret = unsafe {
            sys::rbd_diff_iterate2(
                self.ptr,
                opt_ptr(&snap),
                opts.offset,
                len,
                u8::from(opts.include_parent),
                u8::from(opts.whole_object),
                Some(diff_trampoline),
                arg,
            )
        };
        let st = state
            .into_inner()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(p) = st.panic {
            resume_unwind(p);
        }
        if st.stopped && ret == -libc::ECANCELED {
            return Ok(());
        }
        check(ret, "rbd_diff_iterate2", || match &opts.from_snap {
            Some(s) => self.ctx().with_snap(s.clone()),
            None => self.ctx(),
        })?;
        Ok(())
    }

    /// All extents [`Image::diff_iterate`] reports (`rbd_diff_iterate2`), collected.
    pub fn diff(&self, opts: &DiffOptions) -> Result<Vec<DiffExtent>> {
        let mut out = Vec::new();
        self.diff_iterate(opts, |offset, length, exists| {
            out.push(DiffExtent {
                offset,
                length,
                exists,
            });
            ControlFlow::Continue(())
        })?;
        Ok(out)
    }
}
