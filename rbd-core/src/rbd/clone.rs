//! Clones (copy-on-write children of a snapshot): create, flatten, list children, find the
//! parent.
//!
//! ```no_run
//! use rbd_core::rbd::{self, ImageOptions};
//! use rbd_core::{Image, OpenOptions};
//! # fn demo(io: &rbd_core::IoCtx) -> rbd_core::Result<()> {
//! let base = Image::open(io, "golden", &OpenOptions::new())?;
//! base.snap_create("v1")?;
//! base.snap_protect("v1")?; // needed for clone format 1
//! rbd::clone_image(io, "golden", "v1", io, "vm1", &ImageOptions::new())?;
//! let child = Image::open(io, "vm1", &OpenOptions::new())?;
//! assert_eq!(child.parent()?.unwrap().image.image_name, "golden");
//! child.flatten()?; // now independent of its parent
//! # Ok(()) }
//! ```

use serde::Serialize;

use crate::error::{Error, Result, check};
use crate::ioctx::IoCtx;
use crate::rbd::create::ImageOptions;
use crate::rbd::progress::ProgressAdapter;
use crate::rbd::snap::SnapNamespace;
use crate::rbd::{Image, validate_image_name};
use crate::sys;
use crate::util::{cstring, from_cstr};

/// An image named across pools and namespaces: a clone's parent or a parent's child.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct LinkedImageSpec {
    /// Pool id.
    pub pool_id: i64,
    /// Pool name.
    pub pool_name: String,
    /// RADOS namespace (`""` for the default).
    pub pool_namespace: String,
    /// Image id.
    pub image_id: String,
    /// Image name.
    pub image_name: String,
    /// True when the image is in the trash.
    pub trash: bool,
}

impl LinkedImageSpec {
    /// Converts librbd's struct. Does not free it.
    ///
    /// # Safety
    /// The string fields must be NULL or valid NUL-terminated strings.
    unsafe fn from_raw(s: &sys::rbd_linked_image_spec_t) -> Self {
        // SAFETY: guaranteed by the caller for every string field.
        unsafe {
            LinkedImageSpec {
                pool_id: s.pool_id,
                pool_name: from_cstr(s.pool_name),
                pool_namespace: from_cstr(s.pool_namespace),
                image_id: from_cstr(s.image_id),
                image_name: from_cstr(s.image_name),
                trash: s.trash,
            }
        }
    }
}

/// A snapshot named by id, namespace and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct SnapSpec {
    /// Snapshot id.
    pub id: u64,
    /// Snapshot namespace.
    pub namespace: SnapNamespace,
    /// Snapshot name.
    pub name: String,
}

/// A clone's parent: the image and the snapshot it was cloned from.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct ParentInfo {
    /// The parent image.
    pub image: LinkedImageSpec,
    /// The parent snapshot.
    pub snap: SnapSpec,
}

/// Creates `child_name` in `child_io` as a copy-on-write clone of
/// `parent_name@parent_snap` in `parent_io` (`rbd_clone3`).
///
/// With clone format 1 (the default unless the cluster requires Mimic+ clients, or
/// [`ImageOptions::clone_format`] says 2) the parent snapshot must be protected first
/// ([`Image::snap_protect`]). The parent must have the `layering` feature. Options not
/// set are inherited from the parent; an object size given without striping gets the
/// default striping for that size.
pub fn clone_image(
    parent_io: &IoCtx,
    parent_name: &str,
    parent_snap: &str,
    child_io: &IoCtx,
    child_name: &str,
    opts: &ImageOptions,
) -> Result<()> {
    validate_image_name("parent image name", parent_name)?;
    validate_image_name("parent snapshot name", parent_snap)?;
    validate_image_name("clone name", child_name)?;
    let pn = cstring("parent image name", parent_name)?;
    let ps = cstring("parent snapshot name", parent_snap)?;
    let cn = cstring("clone name", child_name)?;
    let mut raw = opts.to_raw();
    // librbd takes unset striping from the parent, so a smaller object size alone would
    // fail with a bare EINVAL: give it the default striping for the new object size.
    if let (Some(obj), None) = (raw.get_object_size(), raw.get_stripe_unit()) {
        raw = raw.striping(obj, 1)?;
    }
    // SAFETY: valid ioctxs, C strings and a private options copy, all alive for the call.
    let ret = unsafe {
        sys::rbd_clone3(
            parent_io.ptr(),
            pn.as_ptr(),
            ps.as_ptr(),
            child_io.ptr(),
            cn.as_ptr(),
            raw.ptr(),
        )
    };
    check(ret, "rbd_clone3", || {
        child_io.ctx().with_image(format!(
            "{child_name} (clone of {parent_name}@{parent_snap})"
        ))
    })?;
    Ok(())
}

/// Calls a `rbd_list_children3`-style function with a growing array.
fn list_linked(
    image: &Image,
    op: &'static str,
    f: unsafe extern "C" fn(sys::rbd_image_t, *mut sys::rbd_linked_image_spec_t, *mut usize) -> i32,
) -> Result<Vec<LinkedImageSpec>> {
    let empty = sys::rbd_linked_image_spec_t {
        pool_id: 0,
        pool_name: std::ptr::null_mut(),
        pool_namespace: std::ptr::null_mut(),
        image_id: std::ptr::null_mut(),
        image_name: std::ptr::null_mut(),
        trash: false,
    };
    let mut cap = 16usize;
    for _ in 0..32 {
        let mut specs = vec![empty; cap];
        let mut n = cap;
        // SAFETY: open image handle; `specs` has room for `n` entries; librbd fills at
        // most that many or returns -ERANGE with the needed count in `n`.
        let ret = unsafe { f(image.ptr, specs.as_mut_ptr(), &mut n) };
        if ret == -libc::ERANGE {
            cap = n.max(cap * 2);
            continue;
        }
        check(ret, op, || image.ctx())?;
        let n = n.min(cap);
        let out = specs[..n]
            .iter()
            // SAFETY: librbd filled these entries with strdup'd strings.
            .map(|s| unsafe { LinkedImageSpec::from_raw(s) })
            .collect();
        // SAFETY: the first `n` entries were filled by librbd and are freed once here.
        unsafe { sys::rbd_linked_image_spec_list_cleanup(specs.as_mut_ptr(), n) };
        return Ok(out);
    }
    Err(Error::from_errno(op, libc::ERANGE, image.ctx()))
}

impl Image {
    /// Copies all data from the parent into this clone and detaches it
    /// (`rbd_flatten`).
    pub fn flatten(&self) -> Result<()> {
        // SAFETY: open image handle.
        let ret = unsafe { sys::rbd_flatten(self.ptr) };
        check(ret, "rbd_flatten", || self.ctx())?;
        Ok(())
    }

    /// [`Image::flatten`] reporting progress as `(objects done, total)`
    /// (`rbd_flatten_with_progress`).
    pub fn flatten_with_progress(&self, progress: impl FnMut(u64, u64) + Send) -> Result<()> {
        let p = ProgressAdapter::new(progress);
        // SAFETY: open image handle; the progress callback and its data outlive the
        // synchronous call.
        let ret = unsafe { sys::rbd_flatten_with_progress(self.ptr, p.callback(), p.data()) };
        p.finish();
        check(ret, "rbd_flatten_with_progress", || self.ctx())?;
        Ok(())
    }

    /// The direct children (clones) of this image: of the snapshot this handle is at, or
    /// of all its snapshots when at the head (`rbd_list_children3`).
    pub fn list_children(&self) -> Result<Vec<LinkedImageSpec>> {
        list_linked(self, "rbd_list_children3", sys::rbd_list_children3)
    }

    /// All descendants: children, their children, and so on (`rbd_list_descendants`).
    pub fn list_descendants(&self) -> Result<Vec<LinkedImageSpec>> {
        list_linked(self, "rbd_list_descendants", sys::rbd_list_descendants)
    }

    /// The parent of this clone, or `None` if it has none (`rbd_get_parent`).
    pub fn parent(&self) -> Result<Option<ParentInfo>> {
        let mut img = sys::rbd_linked_image_spec_t {
            pool_id: 0,
            pool_name: std::ptr::null_mut(),
            pool_namespace: std::ptr::null_mut(),
            image_id: std::ptr::null_mut(),
            image_name: std::ptr::null_mut(),
            trash: false,
        };
        let mut snap = sys::rbd_snap_spec_t {
            id: 0,
            namespace_type: 0,
            name: std::ptr::null_mut(),
        };
        // SAFETY: open image handle and valid out-structs.
        let ret = unsafe { sys::rbd_get_parent(self.ptr, &mut img, &mut snap) };
        if ret == -libc::ENOENT {
            return Ok(None);
        }
        check(ret, "rbd_get_parent", || self.ctx())?;
        // SAFETY: on success librbd filled both structs with strdup'd strings.
        let info = unsafe {
            ParentInfo {
                image: LinkedImageSpec::from_raw(&img),
                snap: SnapSpec {
                    id: snap.id,
                    namespace: SnapNamespace::from_raw(snap.namespace_type),
                    name: from_cstr(snap.name),
                },
            }
        };
        // SAFETY: both structs were filled by rbd_get_parent and are freed once here.
        unsafe {
            sys::rbd_linked_image_spec_cleanup(&mut img);
            sys::rbd_snap_spec_cleanup(&mut snap);
        }
        Ok(Some(info))
    }

    /// How many bytes of this clone still map to the parent (`rbd_get_overlap`); 0 for
    /// an image without a parent.
    pub fn parent_overlap(&self) -> Result<u64> {
        let mut v = 0u64;
        // SAFETY: open image handle and a valid out-pointer.
        let ret = unsafe { sys::rbd_get_overlap(self.ptr, &mut v) };
        if ret == -libc::ENOENT {
            return Ok(0);
        }
        check(ret, "rbd_get_overlap", || self.ctx())?;
        Ok(v)
    }
}
