//! The image trash: deferred deletion (`rbd trash mv/ls/restore/rm`).
//!
//! A trashed image keeps its id and data but disappears from [`crate::rbd::list`]; it can
//! be restored until removed. With a delay it cannot be removed (without `force`) before
//! its deferment ends.

use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::error::{Error, Result, check};
use crate::ioctx::IoCtx;
use crate::rbd::info::time_t_to_system;
use crate::rbd::progress::ProgressAdapter;
use crate::rbd::validate_image_name;
use crate::sys;
use crate::util::{cstring, from_cstr};

/// Why an image is in the trash (`rbd_trash_image_source_t`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TrashSource {
    /// A user moved it there (`rbd trash mv`).
    User,
    /// Mirroring moved it there.
    Mirroring,
    /// Migration moved it there (the migration source).
    Migration,
    /// It is being removed (`rbd rm` moves images to the trash first).
    Removing,
    /// A user trashed a clone parent that still has children.
    UserParent,
    /// A source this crate does not know.
    Unknown(u32),
}

impl TrashSource {
    fn from_raw(v: sys::rbd_trash_image_source_t) -> Self {
        match v {
            sys::RBD_TRASH_IMAGE_SOURCE_USER => Self::User,
            sys::RBD_TRASH_IMAGE_SOURCE_MIRRORING => Self::Mirroring,
            sys::RBD_TRASH_IMAGE_SOURCE_MIGRATION => Self::Migration,
            sys::RBD_TRASH_IMAGE_SOURCE_REMOVING => Self::Removing,
            sys::RBD_TRASH_IMAGE_SOURCE_USER_PARENT => Self::UserParent,
            other => Self::Unknown(other),
        }
    }
}

/// An image in the trash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TrashEntry {
    /// The image id: what restore and remove take.
    pub id: String,
    /// The name it had.
    pub name: String,
    /// Why it is there.
    pub source: TrashSource,
    /// When it was moved to the trash.
    pub deletion_time: SystemTime,
    /// Before this time it cannot be removed without `force`.
    pub deferment_end_time: SystemTime,
}

impl TrashEntry {
    /// Converts librbd's struct. Does not free it.
    ///
    /// # Safety
    /// `id` and `name` must be NULL or valid NUL-terminated strings.
    unsafe fn from_raw(t: &sys::rbd_trash_image_info_t) -> Self {
        TrashEntry {
            // SAFETY: guaranteed by the caller.
            id: unsafe { from_cstr(t.id) },
            // SAFETY: guaranteed by the caller.
            name: unsafe { from_cstr(t.name) },
            source: TrashSource::from_raw(t.source),
            deletion_time: time_t_to_system(t.deletion_time),
            deferment_end_time: time_t_to_system(t.deferment_end_time),
        }
    }
}

fn empty_entry() -> sys::rbd_trash_image_info_t {
    sys::rbd_trash_image_info_t {
        id: std::ptr::null_mut(),
        name: std::ptr::null_mut(),
        source: 0,
        deletion_time: 0,
        deferment_end_time: 0,
    }
}

fn id_cstring(id: &str) -> Result<std::ffi::CString> {
    validate_image_name("image id", id)?;
    cstring("image id", id)
}

/// Moves an image to the trash (`rbd_trash_move`); it cannot be removed from there
/// without `force` before `delay` has passed. Fails with [`crate::ErrorKind::Busy`]
/// while the image is open elsewhere.
pub fn trash_move(io: &IoCtx, name: &str, delay: Duration) -> Result<()> {
    validate_image_name("image name", name)?;
    let c = cstring("image name", name)?;
    // SAFETY: valid ioctx and C string.
    let ret = unsafe { sys::rbd_trash_move(io.ptr(), c.as_ptr(), delay.as_secs()) };
    check(ret, "rbd_trash_move", || io.ctx().with_image(name))?;
    Ok(())
}

/// One trash entry by image id (`rbd_trash_get`, `rbd_trash_get_cleanup`).
pub fn trash_get(io: &IoCtx, id: &str) -> Result<TrashEntry> {
    let c = id_cstring(id)?;
    let mut e = empty_entry();
    // SAFETY: valid ioctx, C string and out-struct.
    let ret = unsafe { sys::rbd_trash_get(io.ptr(), c.as_ptr(), &mut e) };
    check(ret, "rbd_trash_get", || {
        io.ctx().with_image(format!("id {id}"))
    })?;
    // SAFETY: on success librbd filled `e` with strdup'd strings.
    let out = unsafe { TrashEntry::from_raw(&e) };
    // SAFETY: `e` was filled by rbd_trash_get and is freed once here.
    unsafe { sys::rbd_trash_get_cleanup(&mut e) };
    Ok(out)
}

/// Lists the trash of the pool (and namespace) of `io` (`rbd_trash_list`,
/// `rbd_trash_list_cleanup`).
pub fn trash_list(io: &IoCtx) -> Result<Vec<TrashEntry>> {
    let mut cap = 16usize;
    for _ in 0..32 {
        let mut entries = vec![empty_entry(); cap];
        let mut n = cap;
        // SAFETY: `entries` has room for `n` entries; librbd fills at most that many or
        // returns -ERANGE with the needed count in `n`.
        let ret = unsafe { sys::rbd_trash_list(io.ptr(), entries.as_mut_ptr(), &mut n) };
        if ret == -libc::ERANGE {
            cap = n.max(cap * 2);
            continue;
        }
        check(ret, "rbd_trash_list", || io.ctx())?;
        let n = n.min(cap);
        let out = entries[..n]
            .iter()
            // SAFETY: librbd filled these entries with strdup'd strings.
            .map(|e| unsafe { TrashEntry::from_raw(e) })
            .collect();
        // SAFETY: the first `n` entries were filled by librbd and are freed once here.
        unsafe { sys::rbd_trash_list_cleanup(entries.as_mut_ptr(), n) };
        return Ok(out);
    }
    Err(Error::from_errno("rbd_trash_list", libc::ERANGE, io.ctx()))
}

/// Restores a trashed image under `name`, or its original name with `None`
/// (`rbd_trash_restore`).
pub fn trash_restore(io: &IoCtx, id: &str, name: Option<&str>) -> Result<()> {
    let c = id_cstring(id)?;
    if let Some(n) = name {
        validate_image_name("image name", n)?;
    }
    let n = cstring("image name", name.unwrap_or(""))?;
    // SAFETY: valid ioctx and C strings; an empty name means "the original one".
    let ret = unsafe { sys::rbd_trash_restore(io.ptr(), c.as_ptr(), n.as_ptr()) };
    check(ret, "rbd_trash_restore", || {
        io.ctx().with_image(format!("id {id}"))
    })?;
    Ok(())
}

/// Deletes a trashed image for good (`rbd_trash_remove`). Before its deferment ends
/// this fails with [`crate::ErrorKind::PermissionDenied`] unless `force`.
pub fn trash_remove(io: &IoCtx, id: &str, force: bool) -> Result<()> {
    let c = id_cstring(id)?;
    // SAFETY: valid ioctx and C string.
    let ret = unsafe { sys::rbd_trash_remove(io.ptr(), c.as_ptr(), force) };
    check(ret, "rbd_trash_remove", || {
        io.ctx().with_image(format!("id {id}"))
    })?;
    Ok(())
}

/// [`trash_remove`] reporting progress as `(objects done, total)`
/// (`rbd_trash_remove_with_progress`).
pub fn trash_remove_with_progress(
    io: &IoCtx,
    id: &str,
    force: bool,
    progress: impl FnMut(u64, u64) + Send,
) -> Result<()> {
    let c = id_cstring(id)?;
    let p = ProgressAdapter::new(progress);
    // SAFETY: valid ioctx and C string; the progress callback and its data outlive the
    // synchronous call.
    let ret = unsafe {
        sys::rbd_trash_remove_with_progress(io.ptr(), c.as_ptr(), force, p.callback(), p.data())
    };
    p.finish();
    check(ret, "rbd_trash_remove_with_progress", || {
        io.ctx().with_image(format!("id {id}"))
    })?;
    Ok(())
}
