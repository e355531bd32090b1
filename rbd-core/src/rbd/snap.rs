//! Snapshots: create, list, remove, protect, roll back, rename, and reading at one.

use std::ffi::c_int;
use std::time::SystemTime;

use serde::Serialize;

use crate::error::{Error, Result, check};
use crate::rbd::info::timespec_to_system;
use crate::rbd::progress::ProgressAdapter;
use crate::rbd::{Image, validate_image_name};
use crate::sys;
use crate::util::{cstring, from_buf, from_cstr, grow_buffer};

/// Which namespace a snapshot lives in (`rbd_snap_namespace_type_t`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SnapNamespace {
    /// A snapshot a user made (`rbd snap create`).
    User,
    /// Part of a group snapshot.
    Group,
    /// Removed while clone v2 children still use it; gone when they are.
    Trash,
    /// Made by snapshot-based mirroring.
    Mirror,
    /// A namespace this crate does not know.
    Unknown(u32),
}

impl SnapNamespace {
    pub(crate) fn from_raw(v: sys::rbd_snap_namespace_type_t) -> Self {
        match v {
            sys::RBD_SNAP_NAMESPACE_TYPE_USER => Self::User,
            sys::RBD_SNAP_NAMESPACE_TYPE_GROUP => Self::Group,
            sys::RBD_SNAP_NAMESPACE_TYPE_TRASH => Self::Trash,
            sys::RBD_SNAP_NAMESPACE_TYPE_MIRROR => Self::Mirror,
            other => Self::Unknown(other),
        }
    }
}

/// One snapshot of an image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SnapInfo {
    /// Snapshot id (unique within the pool, never reused).
    pub id: u64,
    /// Snapshot name.
    pub name: String,
    /// Image size when the snapshot was taken.
    pub size: u64,
    /// When the snapshot was taken.
    pub timestamp: SystemTime,
    /// Its namespace; [`Image::snap_list`] includes every namespace.
    pub namespace: SnapNamespace,
}

bitflags::bitflags! {
    /// Flags for [`Image::snap_create_with_flags`] (`RBD_SNAP_CREATE_*`).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct SnapCreateFlags: u32 {
        /// Do not ask clients using the image (e.g. `rbd-nbd` with a quiesce hook) to
        /// quiesce I/O first.
        const SKIP_QUIESCE = sys::RBD_SNAP_CREATE_SKIP_QUIESCE;
        /// Take the snapshot even if a client failed to quiesce.
        const IGNORE_QUIESCE_ERROR = sys::RBD_SNAP_CREATE_IGNORE_QUIESCE_ERROR;
    }
}

bitflags::bitflags! {
    /// Flags for [`Image::snap_remove_with_progress`] (`RBD_SNAP_REMOVE_*`).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct SnapRemoveFlags: u32 {
        /// Unprotect the snapshot first if it is protected.
        const UNPROTECT = sys::RBD_SNAP_REMOVE_UNPROTECT;
        /// Flatten its children first.
        const FLATTEN = sys::RBD_SNAP_REMOVE_FLATTEN;
        /// Both: remove it whatever it takes (`RBD_SNAP_REMOVE_FORCE`).
        const FORCE = sys::RBD_SNAP_REMOVE_FORCE;
    }
}

fn snap_cstring(name: &str) -> Result<std::ffi::CString> {
    validate_image_name("snapshot name", name)?;
    cstring("snapshot name", name)
}

impl Image {
    fn snap_ctx(&self, name: &str) -> crate::Context {
        let mut c = self.ctx();
        c.snap = Some(name.to_owned());
        c
    }

    /// Takes a snapshot of the image (`rbd_snap_create2` with no flags).
    pub fn snap_create(&self, name: &str) -> Result<()> {
        self.snap_create_with_flags(name, SnapCreateFlags::empty())
    }

    /// Takes a snapshot with quiesce flags (`rbd_snap_create2`).
    pub fn snap_create_with_flags(&self, name: &str, flags: SnapCreateFlags) -> Result<()> {
        let c = snap_cstring(name)?;
        let p = ProgressAdapter::none();
        // SAFETY: open image handle and C string; the (no-op) progress callback and its
        // data outlive the synchronous call. librbd calls the callback unconditionally, so
        // it must not be NULL.
        let ret = unsafe {
            sys::rbd_snap_create2(self.ptr, c.as_ptr(), flags.bits(), p.callback(), p.data())
        };
        p.finish();
        check(ret, "rbd_snap_create2", || self.snap_ctx(name))?;
        Ok(())
    }

    /// Lists all snapshots, in every namespace, oldest first (`rbd_snap_list`,
    /// `rbd_snap_list_end`, plus `rbd_snap_get_timestamp` and
    /// `rbd_snap_get_namespace_type` for each).
    pub fn snap_list(&self) -> Result<Vec<SnapInfo>> {
        let mut cap: c_int = 16;
        let raw = loop {
            // librbd writes a terminating entry, so it needs one slot more than snapshots.
            let mut snaps = vec![
                sys::rbd_snap_info_t {
                    id: 0,
                    size: 0,
                    name: std::ptr::null(),
                };
                usize::try_from(cap).unwrap_or(0)
            ];
            let mut max = cap;
            // SAFETY: `snaps` has room for `max` entries; librbd fills at most that many
            // or returns -ERANGE with the needed count in `max`.
            let ret = unsafe { sys::rbd_snap_list(self.ptr, snaps.as_mut_ptr(), &mut max) };
            if ret == -libc::ERANGE {
                cap = max.max(cap.saturating_mul(2));
                continue;
            }
            let n = check(ret, "rbd_snap_list", || self.ctx())? as usize;
            let out: Vec<(u64, String, u64)> = snaps[..n.min(snaps.len())]
                .iter()
                // SAFETY: entries before the terminator have strdup'd names.
                .map(|s| (s.id, unsafe { from_cstr(s.name) }, s.size))
                .collect();
            // SAFETY: the list was filled by rbd_snap_list and is freed once here; librbd
            // frees the names up to the terminating entry.
            unsafe { sys::rbd_snap_list_end(snaps.as_mut_ptr()) };
            break out;
        };
        let mut out = Vec::with_capacity(raw.len());
        for (id, name, size) in raw {
            // A snapshot removed since the listing is skipped rather than failing the list.
            let timestamp = match self.snap_get_timestamp(id) {
                Ok(t) => t,
                Err(e) if e.kind() == crate::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            let namespace = match self.snap_namespace(id) {
                Ok(ns) => ns,
                Err(e) if e.kind() == crate::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            out.push(SnapInfo {
                id,
                name,
                size,
                timestamp,
                namespace,
            });
        }
        Ok(out)
    }

    /// Removes a snapshot (`rbd_snap_remove`).
    ///
    /// Fails with [`crate::ErrorKind::Busy`] while it is protected.
    pub fn snap_remove(&self, name: &str) -> Result<()> {
        let c = snap_cstring(name)?;
        // SAFETY: open image handle and C string.
        let ret = unsafe { sys::rbd_snap_remove(self.ptr, c.as_ptr()) };
        check(ret, "rbd_snap_remove", || self.snap_ctx(name))?;
        Ok(())
    }

    /// Removes a snapshot with flags (unprotect, flatten children, or both with
    /// [`SnapRemoveFlags::FORCE`]), reporting progress (`rbd_snap_remove2`).
    pub fn snap_remove_with_progress(
        &self,
        name: &str,
        flags: SnapRemoveFlags,
        progress: impl FnMut(u64, u64) + Send,
    ) -> Result<()> {
        let c = snap_cstring(name)?;
        let p = ProgressAdapter::new(progress);
        // SAFETY: open image handle and C string; the progress callback and its data
        // outlive the synchronous call.
        let ret = unsafe {
            sys::rbd_snap_remove2(self.ptr, c.as_ptr(), flags.bits(), p.callback(), p.data())
        };
        p.finish();
        check(ret, "rbd_snap_remove2", || self.snap_ctx(name))?;
        Ok(())
    }

    /// Protects a snapshot from removal, as clone v1 requires of a parent
    /// (`rbd_snap_protect`). Fails with [`crate::ErrorKind::Busy`] if already protected.
    pub fn snap_protect(&self, name: &str) -> Result<()> {
        let c = snap_cstring(name)?;
        // SAFETY: open image handle and C string.
        let ret = unsafe { sys::rbd_snap_protect(self.ptr, c.as_ptr()) };
        check(ret, "rbd_snap_protect", || self.snap_ctx(name))?;
        Ok(())
    }

    /// Unprotects a snapshot (`rbd_snap_unprotect`). Fails with
    /// [`crate::ErrorKind::Busy`] while it has clone v1 children, and
    /// [`crate::ErrorKind::InvalidInput`] if it is not protected.
    pub fn snap_unprotect(&self, name: &str) -> Result<()> {
        let c = snap_cstring(name)?;
        // SAFETY: open image handle and C string.
        let ret = unsafe { sys::rbd_snap_unprotect(self.ptr, c.as_ptr()) };
        check(ret, "rbd_snap_unprotect", || self.snap_ctx(name))?;
        Ok(())
    }

    /// Whether a snapshot is protected (`rbd_snap_is_protected`).
    pub fn snap_is_protected(&self, name: &str) -> Result<bool> {
        let c = snap_cstring(name)?;
        let mut v: c_int = 0;
        // SAFETY: open image handle, C string and out-pointer.
        let ret = unsafe { sys::rbd_snap_is_protected(self.ptr, c.as_ptr(), &mut v) };
        check(ret, "rbd_snap_is_protected", || self.snap_ctx(name))?;
        Ok(v != 0)
    }

    /// Rolls the image's data back to a snapshot (`rbd_snap_rollback`).
    pub fn snap_rollback(&self, name: &str) -> Result<()> {
        let c = snap_cstring(name)?;
        // SAFETY: open image handle and C string.
        let ret = unsafe { sys::rbd_snap_rollback(self.ptr, c.as_ptr()) };
        // A rollback takes the snapshot's size too.
        self.handle.forget_size_hint();
        check(ret, "rbd_snap_rollback", || self.snap_ctx(name))?;
        Ok(())
    }

    /// [`Image::snap_rollback`] reporting progress as `(objects done, total)`
    /// (`rbd_snap_rollback_with_progress`).
    pub fn snap_rollback_with_progress(
        &self,
        name: &str,
        progress: impl FnMut(u64, u64) + Send,
    ) -> Result<()> {
        let c = snap_cstring(name)?;
        let p = ProgressAdapter::new(progress);
        // SAFETY: open image handle and C string; the progress callback and its data
        // outlive the synchronous call.
        let ret = unsafe {
            sys::rbd_snap_rollback_with_progress(self.ptr, c.as_ptr(), p.callback(), p.data())
        };
        p.finish();
        self.handle.forget_size_hint();
        check(ret, "rbd_snap_rollback_with_progress", || {
            self.snap_ctx(name)
        })?;
        Ok(())
    }

    /// Renames a snapshot (`rbd_snap_rename`).
    pub fn snap_rename(&self, src: &str, dst: &str) -> Result<()> {
        let s = snap_cstring(src)?;
        validate_image_name("new snapshot name", dst)?;
        let d = cstring("new snapshot name", dst)?;
        // SAFETY: open image handle and C strings.
        let ret = unsafe { sys::rbd_snap_rename(self.ptr, s.as_ptr(), d.as_ptr()) };
        check(ret, "rbd_snap_rename", || self.snap_ctx(src))?;
        Ok(())
    }

    /// Switches this handle to read a snapshot, or back to the head with `None`
    /// (`rbd_snap_set`). While at a snapshot, writes fail with `ReadOnly`.
    pub fn snap_set(&mut self, name: Option<&str>) -> Result<()> {
        let c = name.map(snap_cstring).transpose()?;
        let p = c.as_ref().map_or(std::ptr::null(), |c| c.as_ptr());
        // SAFETY: open image handle; `p` is NULL (head) or a valid C string. `&mut self`
        // keeps our own sync calls out; aio still in flight is safe too, as librbd blocks
        // writes and waits for those in flight before it switches (SetSnapRequest).
        let ret = unsafe { sys::rbd_snap_set(self.ptr, p) };
        // The snapshot's size applies from now on (or still the old one on failure).
        self.handle.forget_size_hint();
        check(ret, "rbd_snap_set", || match name {
            Some(n) => self.snap_ctx(n),
            None => self.ctx(),
        })?;
        self.snapshot = name.map(str::to_owned);
        Ok(())
    }

    /// Like [`Image::snap_set`] by snapshot id (`rbd_snap_set_by_id`); `None` goes back
    /// to the head (`rbd_snap_set` with NULL, as librbd rejects `CEPH_NOSNAP` here).
    pub fn snap_set_by_id(&mut self, id: Option<u64>) -> Result<()> {
        let Some(raw) = id else {
            return self.snap_set(None);
        };
        // SAFETY: open image handle; as in snap_set, librbd serializes the switch with
        // I/O in flight.
        let ret = unsafe { sys::rbd_snap_set_by_id(self.ptr, raw) };
        self.handle.forget_size_hint();
        check(ret, "rbd_snap_set_by_id", || {
            self.ctx().with_snap(format!("#{raw}"))
        })?;
        self.snapshot = Some(
            self.snap_get_name(raw)
                .unwrap_or_else(|_| format!("#{raw}")),
        );
        Ok(())
    }

    /// Whether a snapshot with this name exists (`rbd_snap_exists`).
    pub fn snap_exists(&self, name: &str) -> Result<bool> {
        let c = snap_cstring(name)?;
        let mut exists = false;
        // SAFETY: open image handle, C string and out-pointer.
        let ret = unsafe { sys::rbd_snap_exists(self.ptr, c.as_ptr(), &mut exists) };
        check(ret, "rbd_snap_exists", || self.snap_ctx(name))?;
        Ok(exists)
    }

    /// The id of the named snapshot (`rbd_snap_get_id`).
    pub fn snap_get_id(&self, name: &str) -> Result<u64> {
        let c = snap_cstring(name)?;
        let mut id = 0u64;
        // SAFETY: open image handle, C string and out-pointer.
        let ret = unsafe { sys::rbd_snap_get_id(self.ptr, c.as_ptr(), &mut id) };
        check(ret, "rbd_snap_get_id", || self.snap_ctx(name))?;
        Ok(id)
    }

    /// The name of the snapshot with this id (`rbd_snap_get_name`).
    pub fn snap_get_name(&self, id: u64) -> Result<String> {
        let (buf, ret) = grow_buffer(64, |b, len| {
            // SAFETY: open image handle; `b` is writable for `*len` bytes and librbd
            // stores the needed size in `len` on -ERANGE.
            unsafe { sys::rbd_snap_get_name(self.ptr, id, b.as_mut_ptr().cast(), len) }
        });
        check(ret, "rbd_snap_get_name", || {
            self.ctx().with_snap(format!("#{id}"))
        })?;
        Ok(from_buf(&buf))
    }

    /// When the snapshot with this id was taken (`rbd_snap_get_timestamp`).
    pub fn snap_get_timestamp(&self, id: u64) -> Result<SystemTime> {
        let mut ts = sys::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: open image handle and a valid out-pointer.
        let ret = unsafe { sys::rbd_snap_get_timestamp(self.ptr, id, &mut ts) };
        check(ret, "rbd_snap_get_timestamp", || {
            self.ctx().with_snap(format!("#{id}"))
        })?;
        Ok(timespec_to_system(&ts))
    }

    /// The namespace of the snapshot with this id (`rbd_snap_get_namespace_type`).
    pub fn snap_namespace(&self, id: u64) -> Result<SnapNamespace> {
        let mut t: sys::rbd_snap_namespace_type_t = 0;
        // SAFETY: open image handle and a valid out-pointer.
        let ret = unsafe { sys::rbd_snap_get_namespace_type(self.ptr, id, &mut t) };
        check(ret, "rbd_snap_get_namespace_type", || {
            self.ctx().with_snap(format!("#{id}"))
        })?;
        Ok(SnapNamespace::from_raw(t))
    }

    /// The maximum number of snapshots allowed, `None` when unlimited
    /// (`rbd_snap_get_limit`).
    pub fn snap_get_limit(&self) -> Result<Option<u64>> {
        let mut limit = 0u64;
        // SAFETY: open image handle and a valid out-pointer.
        let ret = unsafe { sys::rbd_snap_get_limit(self.ptr, &mut limit) };
        check(ret, "rbd_snap_get_limit", || self.ctx())?;
        Ok((limit != u64::MAX).then_some(limit))
    }

    /// Limits the number of snapshots, or removes the limit with `None`
    /// (`rbd_snap_set_limit`). Fails if more snapshots than `limit` already exist.
    pub fn snap_set_limit(&self, limit: Option<u64>) -> Result<()> {
        if limit == Some(u64::MAX) {
            return Err(Error::invalid(
                "snapshot limit",
                u64::MAX.to_string(),
                "use None for no limit",
            ));
        }
        // SAFETY: open image handle.
        let ret = unsafe { sys::rbd_snap_set_limit(self.ptr, limit.unwrap_or(u64::MAX)) };
        check(ret, "rbd_snap_set_limit", || self.ctx())?;
        Ok(())
    }
}
