//! What an image is: size, layout, id, features, flags, timestamps ([`Image::stat`],
//! [`Image::info`]), and changing its size and features.

use std::ffi::c_char;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::error::{Error, Result, check};
use crate::ioctx::IoCtx;
use crate::rbd::clone::ParentInfo;
use crate::rbd::create::{Features, ImageFormat};
use crate::rbd::progress::ProgressAdapter;
use crate::rbd::{Image, OpenOptions};
use crate::sys;
use crate::util::{from_buf, grow_buffer};

bitflags::bitflags! {
    /// Operation features (`RBD_OPERATION_FEATURE_*`): what an image takes part in, as
    /// `rbd info` shows under `op_features`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct OpFeatures: u64 {
        /// `clone-parent`: has clone v2 children.
        const CLONE_PARENT = sys::RBD_OPERATION_FEATURE_CLONE_PARENT as u64;
        /// `clone-child`: is a clone v2 child.
        const CLONE_CHILD = sys::RBD_OPERATION_FEATURE_CLONE_CHILD as u64;
        /// `group`: belongs to a group.
        const GROUP = sys::RBD_OPERATION_FEATURE_GROUP as u64;
        /// `snap-trash`: has snapshots in the trash namespace.
        const SNAP_TRASH = sys::RBD_OPERATION_FEATURE_SNAP_TRASH as u64;
    }
}

impl OpFeatures {
    /// Names as `rbd info` prints them, in bit order.
    pub fn names(&self) -> Vec<&'static str> {
        [
            (OpFeatures::CLONE_PARENT, "clone-parent"),
            (OpFeatures::CLONE_CHILD, "clone-child"),
            (OpFeatures::GROUP, "group"),
            (OpFeatures::SNAP_TRASH, "snap-trash"),
        ]
        .into_iter()
        .filter(|(f, _)| self.contains(*f))
        .map(|(_, n)| n)
        .collect()
    }
}

impl Serialize for OpFeatures {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_seq(self.names())
    }
}

bitflags::bitflags! {
    /// Image flags (`RBD_FLAG_*`), as `rbd info` shows under `flags`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct ImageFlags: u64 {
        /// `object map invalid`: the object map must be rebuilt.
        const OBJECT_MAP_INVALID = sys::RBD_FLAG_OBJECT_MAP_INVALID as u64;
        /// `fast diff invalid`: fast-diff data must be rebuilt.
        const FAST_DIFF_INVALID = sys::RBD_FLAG_FAST_DIFF_INVALID as u64;
    }
}

impl ImageFlags {
    /// Names as `rbd info` prints them.
    pub fn names(&self) -> Vec<&'static str> {
        [
            (ImageFlags::OBJECT_MAP_INVALID, "object map invalid"),
            (ImageFlags::FAST_DIFF_INVALID, "fast diff invalid"),
        ]
        .into_iter()
        .filter(|(f, _)| self.contains(*f))
        .map(|(_, n)| n)
        .collect()
    }
}

impl Serialize for ImageFlags {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_seq(self.names())
    }
}

/// The basic layout of an image, from `rbd_stat`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImageInfo {
    /// Size in bytes.
    pub size: u64,
    /// Object size in bytes (`1 << order`).
    pub obj_size: u64,
    /// Number of objects the image spans (`size / obj_size`, rounded up).
    pub num_objs: u64,
    /// Object size as a power of two.
    pub order: u8,
    /// Prefix of the data object names, e.g. `rbd_data.10ab3c9f12`.
    pub block_name_prefix: String,
}

/// Whether [`Image::resize`] may make the image smaller.
///
/// Shrinking discards the data beyond the new size, so it must be asked for explicitly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Shrink {
    /// Growing and shrinking are both allowed.
    Allow,
    /// Only growing (or the same size); a smaller size fails with `InvalidInput`.
    Forbid,
}

/// Everything `rbd info` shows about an image, in one serializable struct
/// ([`Image::info`]).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ImageDetails {
    /// Pool name.
    pub pool: String,
    /// RADOS namespace (`""` for the default).
    pub namespace: String,
    /// Image name.
    pub name: String,
    /// Image id.
    pub id: String,
    /// Size in bytes.
    pub size: u64,
    /// Object size in bytes.
    pub object_size: u64,
    /// Number of objects.
    pub objects: u64,
    /// Object order (log2 of the object size).
    pub order: u8,
    /// Data object name prefix.
    pub block_name_prefix: String,
    /// Image format.
    pub format: ImageFormat,
    /// Enabled features.
    pub features: Features,
    /// Operation features.
    pub op_features: OpFeatures,
    /// Flags.
    pub flags: ImageFlags,
    /// Stripe unit in bytes.
    pub stripe_unit: u64,
    /// Stripe count.
    pub stripe_count: u64,
    /// Id of the pool holding the data objects (the image's own pool unless a data pool
    /// was set).
    pub data_pool_id: i64,
    /// When the image was created.
    pub create_timestamp: SystemTime,
    /// When it was last read (updated lazily, see `rbd_atime_update_interval`).
    pub access_timestamp: SystemTime,
    /// When it was last written (updated lazily, see `rbd_mtime_update_interval`).
    pub modify_timestamp: SystemTime,
    /// Number of snapshots.
    pub snapshot_count: usize,
    /// The parent, for clones.
    pub parent: Option<ParentInfo>,
}

/// Converts a C `timespec` to a `SystemTime` (times before 1970 are clamped to it).
pub(crate) fn timespec_to_system(ts: &sys::timespec) -> SystemTime {
    let secs = u64::try_from(ts.tv_sec).unwrap_or(0);
    let nanos = u32::try_from(ts.tv_nsec).unwrap_or(0).min(999_999_999);
    SystemTime::UNIX_EPOCH + Duration::new(secs, nanos)
}

/// Converts a C `time_t` (seconds since the epoch) to a `SystemTime`.
pub(crate) fn time_t_to_system(t: sys::time_t) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(t).unwrap_or(0))
}

impl Image {
    /// Size, object size, object count, order (`rbd_stat`) and block name prefix
    /// (`rbd_get_block_name_prefix`).
    pub fn stat(&self) -> Result<ImageInfo> {
        let mut info = sys::rbd_image_info_t {
            size: 0,
            obj_size: 0,
            num_objs: 0,
            order: 0,
            block_name_prefix: [0; 24],
            parent_pool: 0,
            parent_name: [0; 96],
        };
        // SAFETY: open image handle; `info` is a valid struct of the size we pass.
        let ret = unsafe {
            sys::rbd_stat(
                self.ptr,
                &mut info,
                std::mem::size_of::<sys::rbd_image_info_t>(),
            )
        };
        check(ret, "rbd_stat", || self.ctx())?;
        Ok(ImageInfo {
            size: info.size,
            obj_size: info.obj_size,
            num_objs: info.num_objs,
            order: u8::try_from(info.order).unwrap_or(0),
            // rbd_stat's field is 24 bytes and librbd truncates longer prefixes into it
            // (a data pool adds `<pool id>.`), so ask for the whole one.
            block_name_prefix: self.block_name_prefix()?,
        })
    }

    /// Reads a fixed-size string property (`rbd_get_id`, `rbd_get_block_name_prefix`),
    /// doubling the buffer on `-ERANGE`.
    fn fixed_string(
        &self,
        op: &'static str,
        f: unsafe extern "C" fn(sys::rbd_image_t, *mut c_char, usize) -> i32,
    ) -> Result<String> {
        let (buf, ret) = grow_buffer(64, |b, len| {
            // SAFETY: open image handle; `b` is writable for `len` bytes. These functions
            // return -ERANGE (without a size) when the buffer is too small.
            unsafe { f(self.ptr, b.as_mut_ptr().cast(), *len) }
        });
        check(ret, op, || self.ctx())?;
        Ok(from_buf(&buf))
    }

    /// The image id (`rbd_get_id`): stable across renames, used by
    /// [`Image::open_by_id`] and the trash.
    pub fn id(&self) -> Result<String> {
        self.fixed_string("rbd_get_id", sys::rbd_get_id)
    }

    /// The image's current name (`rbd_get_name`), even when opened by id.
    pub fn name(&self) -> Result<String> {
        let (buf, ret) = grow_buffer(64, |b, len| {
            // SAFETY: open image handle; `b` is writable for `*len` bytes, and librbd
            // stores the needed size in `len` on -ERANGE.
            unsafe { sys::rbd_get_name(self.ptr, b.as_mut_ptr().cast(), len) }
        });
        check(ret, "rbd_get_name", || self.ctx())?;
        Ok(from_buf(&buf))
    }

    /// Prefix of the data objects' names (`rbd_get_block_name_prefix`).
    pub fn block_name_prefix(&self) -> Result<String> {
        self.fixed_string("rbd_get_block_name_prefix", sys::rbd_get_block_name_prefix)
    }

    fn get_u64(
        &self,
        op: &'static str,
        f: unsafe extern "C" fn(sys::rbd_image_t, *mut u64) -> i32,
    ) -> Result<u64> {
        let mut v = 0u64;
        // SAFETY: open image handle and a valid out-pointer.
        let ret = unsafe { f(self.ptr, &mut v) };
        check(ret, op, || self.ctx())?;
        Ok(v)
    }

    /// Size in bytes, at the opened snapshot or the head (`rbd_get_size`).
    pub fn size(&self) -> Result<u64> {
        let token = self.handle.size_hint_token();
        let size = self.get_u64("rbd_get_size", sys::rbd_get_size)?;
        self.handle.set_size_hint(token, size);
        Ok(size)
    }

    /// Enabled features (`rbd_get_features`).
    pub fn features(&self) -> Result<Features> {
        self.get_u64("rbd_get_features", sys::rbd_get_features)
            .map(Features::from_bits_retain)
    }

    /// Operation features (`rbd_get_op_features`).
    pub fn op_features(&self) -> Result<OpFeatures> {
        self.get_u64("rbd_get_op_features", sys::rbd_get_op_features)
            .map(OpFeatures::from_bits_retain)
    }

    /// Flags such as "object map invalid" (`rbd_get_flags`).
    pub fn flags(&self) -> Result<ImageFlags> {
        self.get_u64("rbd_get_flags", sys::rbd_get_flags)
            .map(ImageFlags::from_bits_retain)
    }

    /// Stripe unit in bytes (`rbd_get_stripe_unit`).
    pub fn stripe_unit(&self) -> Result<u64> {
        self.get_u64("rbd_get_stripe_unit", sys::rbd_get_stripe_unit)
    }

    /// Stripe count (`rbd_get_stripe_count`).
    pub fn stripe_count(&self) -> Result<u64> {
        self.get_u64("rbd_get_stripe_count", sys::rbd_get_stripe_count)
    }

    /// Image format 1 or 2 (`rbd_get_old_format`).
    pub fn format(&self) -> Result<ImageFormat> {
        let mut old = 0u8;
        // SAFETY: open image handle and a valid out-pointer.
        let ret = unsafe { sys::rbd_get_old_format(self.ptr, &mut old) };
        check(ret, "rbd_get_old_format", || self.ctx())?;
        Ok(if old != 0 {
            ImageFormat::V1
        } else {
            ImageFormat::V2
        })
    }

    /// Id of the pool holding the data objects (`rbd_get_data_pool_id`).
    pub fn data_pool_id(&self) -> Result<i64> {
        // SAFETY: open image handle; the call only reads.
        let ret = unsafe { sys::rbd_get_data_pool_id(self.ptr) };
        if ret < 0 {
            let errno = i32::try_from(-ret).unwrap_or(libc::EIO);
            return Err(Error::from_errno("rbd_get_data_pool_id", errno, self.ctx()));
        }
        Ok(ret)
    }

    fn timestamp(
        &self,
        op: &'static str,
        f: unsafe extern "C" fn(sys::rbd_image_t, *mut sys::timespec) -> i32,
    ) -> Result<SystemTime> {
        let mut ts = sys::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: open image handle and a valid out-pointer.
        let ret = unsafe { f(self.ptr, &mut ts) };
        check(ret, op, || self.ctx())?;
        Ok(timespec_to_system(&ts))
    }

    /// When the image was created (`rbd_get_create_timestamp`).
    pub fn create_timestamp(&self) -> Result<SystemTime> {
        self.timestamp("rbd_get_create_timestamp", sys::rbd_get_create_timestamp)
    }

    /// When the image was last read (`rbd_get_access_timestamp`).
    pub fn access_timestamp(&self) -> Result<SystemTime> {
        self.timestamp("rbd_get_access_timestamp", sys::rbd_get_access_timestamp)
    }

    /// When the image was last written (`rbd_get_modify_timestamp`).
    pub fn modify_timestamp(&self) -> Result<SystemTime> {
        self.timestamp("rbd_get_modify_timestamp", sys::rbd_get_modify_timestamp)
    }

    /// Enables or disables features on the image (`rbd_update_features`).
    ///
    /// Only `exclusive-lock`, `object-map`, `fast-diff` and `journaling` can be toggled,
    /// and `deep-flatten` disabled; anything else is rejected before reaching librbd.
    /// Dependencies are librbd's: object-map needs exclusive-lock, fast-diff needs
    /// object-map.
    pub fn update_features(&self, features: Features, enable: bool) -> Result<()> {
        let allowed = if enable {
            Features::MUTABLE
        } else {
            Features::MUTABLE | Features::DEEP_FLATTEN
        };
        if !allowed.contains(features) {
            return Err(Error::invalid(
                "features",
                features.to_string(),
                format!(
                    "only {allowed} can be {}",
                    if enable { "enabled" } else { "disabled" }
                ),
            ));
        }
        // SAFETY: open image handle.
        let ret = unsafe { sys::rbd_update_features(self.ptr, features.bits(), u8::from(enable)) };
        check(ret, "rbd_update_features", || self.ctx())?;
        Ok(())
    }

    /// Changes the image size (`rbd_resize2`). Shrinking needs [`Shrink::Allow`] and
    /// discards the data beyond the new size.
    pub fn resize(&self, size: u64, shrink: Shrink) -> Result<()> {
        self.resize_impl(size, shrink, ProgressAdapter::none())
    }

    /// [`Image::resize`] reporting progress as `(objects done, total)` (`rbd_resize2`).
    pub fn resize_with_progress(
        &self,
        size: u64,
        shrink: Shrink,
        progress: impl FnMut(u64, u64) + Send,
    ) -> Result<()> {
        self.resize_impl(size, shrink, ProgressAdapter::new(progress))
    }

    fn resize_impl(&self, size: u64, shrink: Shrink, p: ProgressAdapter<'_>) -> Result<()> {
        // SAFETY: open image handle; the progress callback and its data `p` outlive this
        // synchronous call (rbd_resize2 calls the callback unconditionally, so it is never
        // NULL).
        let ret = unsafe {
            sys::rbd_resize2(
                self.ptr,
                size,
                shrink == Shrink::Allow,
                p.callback(),
                p.data(),
            )
        };
        p.finish();
        // Whatever happened, the size may have changed: ask librbd next time.
        self.handle.forget_size_hint();
        check(ret, "rbd_resize2", || self.ctx())?;
        Ok(())
    }

    /// Everything about the image in one struct, as `rbd info` shows it: `rbd_stat`,
    /// `rbd_get_name`, `rbd_get_id`, `rbd_get_old_format`, `rbd_get_features`,
    /// `rbd_get_op_features`, `rbd_get_flags`, `rbd_get_stripe_unit`,
    /// `rbd_get_stripe_count`, `rbd_get_data_pool_id`, the three timestamps,
    /// `rbd_snap_list` and `rbd_get_parent`.
    pub fn info(&self) -> Result<ImageDetails> {
        let st = self.stat()?;
        Ok(ImageDetails {
            pool: self.pool_name().to_owned(),
            namespace: self.namespace().to_owned(),
            name: self.name()?,
            id: self.id()?,
            size: st.size,
            object_size: st.obj_size,
            objects: st.num_objs,
            order: st.order,
            block_name_prefix: st.block_name_prefix,
            format: self.format()?,
            features: self.features()?,
            op_features: self.op_features()?,
            flags: self.flags()?,
            stripe_unit: self.stripe_unit()?,
            stripe_count: self.stripe_count()?,
            data_pool_id: self.data_pool_id()?,
            create_timestamp: self.create_timestamp()?,
            access_timestamp: self.access_timestamp()?,
            modify_timestamp: self.modify_timestamp()?,
            snapshot_count: self.snap_list()?.len(),
            parent: self.parent()?,
        })
    }
}

/// The id of the image named `name` (opens it read-only, then `rbd_get_id`).
pub fn image_id_by_name(io: &IoCtx, name: &str) -> Result<String> {
    Image::open(io, name, &OpenOptions::new().read_only(true))?.id()
}

/// The current name of the image with id `id` (opens it read-only by id, then
/// `rbd_get_name`).
pub fn image_name_by_id(io: &IoCtx, id: &str) -> Result<String> {
    Image::open_by_id(io, id, &OpenOptions::new().read_only(true))?.name()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_names_and_serde() {
        let f = OpFeatures::CLONE_CHILD | OpFeatures::SNAP_TRASH;
        assert_eq!(f.names(), vec!["clone-child", "snap-trash"]);
        assert_eq!(
            serde_json::to_string(&ImageFlags::OBJECT_MAP_INVALID).unwrap(),
            r#"["object map invalid"]"#
        );
        assert_eq!(serde_json::to_string(&OpFeatures::empty()).unwrap(), "[]");
    }

    #[test]
    fn timespec_conversion() {
        let t = timespec_to_system(&sys::timespec {
            tv_sec: 10,
            tv_nsec: 5,
        });
        assert_eq!(
            t.duration_since(SystemTime::UNIX_EPOCH).unwrap(),
            Duration::new(10, 5)
        );
        let neg = timespec_to_system(&sys::timespec {
            tv_sec: -5,
            tv_nsec: 0,
        });
        assert_eq!(neg, SystemTime::UNIX_EPOCH);
        assert_eq!(
            time_t_to_system(100),
            SystemTime::UNIX_EPOCH + Duration::from_secs(100)
        );
    }
}
