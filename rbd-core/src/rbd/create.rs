//! Creating, listing, removing, renaming and copying images; image options and features;
//! human size parsing.
//!
//! ```no_run
//! use rbd_core::rbd::{self, Features, ImageOptions, parse_size};
//! # fn demo(io: &rbd_core::IoCtx) -> rbd_core::Result<()> {
//! let opts = ImageOptions::new()
//!     .object_size(4 << 20)?
//!     .features(Features::LAYERING | Features::EXCLUSIVE_LOCK);
//! rbd::create(io, "vol1", parse_size("10G")?, &opts)?;
//! for spec in rbd::list(io)? {
//!     println!("{} ({})", spec.name, spec.id);
//! }
//! rbd::remove(io, "vol1")?;
//! # Ok(()) }
//! ```

use std::ffi::{c_char, c_int};
use std::fmt;
use std::str::FromStr;

use serde::Serialize;

use crate::error::{Error, Result, check};
use crate::ioctx::IoCtx;
use crate::rbd::progress::ProgressAdapter;
use crate::rbd::{Image, validate_image_name};
use crate::sys;
use crate::util::{cstring, from_buf, from_cstr};

bitflags::bitflags! {
    /// RBD image features (`RBD_FEATURE_*`), named as `rbd info` and `rbd create
    /// --image-feature` name them.
    ///
    /// `Display` gives the comma-separated list (`layering,exclusive-lock`), `FromStr`
    /// parses it back (spaces allowed, or a plain number), and serde writes the list of
    /// names, as `rbd info --format json` does.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct Features: u64 {
        /// `layering`: clones (copy-on-write children).
        const LAYERING = sys::RBD_FEATURE_LAYERING as u64;
        /// `striping`: custom stripe unit/count (striping v2).
        const STRIPING = sys::RBD_FEATURE_STRIPINGV2 as u64;
        /// `exclusive-lock`: one writer at a time, with cooperative hand-over.
        const EXCLUSIVE_LOCK = sys::RBD_FEATURE_EXCLUSIVE_LOCK as u64;
        /// `object-map`: tracks which objects exist (needs exclusive-lock).
        const OBJECT_MAP = sys::RBD_FEATURE_OBJECT_MAP as u64;
        /// `fast-diff`: fast diff and du (needs object-map).
        const FAST_DIFF = sys::RBD_FEATURE_FAST_DIFF as u64;
        /// `deep-flatten`: flatten also detaches snapshots of clones.
        const DEEP_FLATTEN = sys::RBD_FEATURE_DEEP_FLATTEN as u64;
        /// `journaling`: journal for mirroring (needs exclusive-lock).
        const JOURNALING = sys::RBD_FEATURE_JOURNALING as u64;
        /// `data-pool`: data objects live in a separate (e.g. erasure-coded) pool.
        const DATA_POOL = sys::RBD_FEATURE_DATA_POOL as u64;
        /// `operations`: the image has operation features (internal).
        const OPERATIONS = sys::RBD_FEATURE_OPERATIONS as u64;
        /// `migrating`: the image is being migrated (internal).
        const MIGRATING = sys::RBD_FEATURE_MIGRATING as u64;
        /// `non-primary`: a non-primary mirror image (internal).
        const NON_PRIMARY = sys::RBD_FEATURE_NON_PRIMARY as u64;
        /// `dirty-cache`: a persistent write-back cache holds unflushed data (internal).
        const DIRTY_CACHE = sys::RBD_FEATURE_DIRTY_CACHE as u64;
    }
}

/// Feature names in bit order, exactly as librbd spells them.
const FEATURE_NAMES: [(Features, &str); 12] = [
    (Features::LAYERING, "layering"),
    (Features::STRIPING, "striping"),
    (Features::EXCLUSIVE_LOCK, "exclusive-lock"),
    (Features::OBJECT_MAP, "object-map"),
    (Features::FAST_DIFF, "fast-diff"),
    (Features::DEEP_FLATTEN, "deep-flatten"),
    (Features::JOURNALING, "journaling"),
    (Features::DATA_POOL, "data-pool"),
    (Features::OPERATIONS, "operations"),
    (Features::MIGRATING, "migrating"),
    (Features::NON_PRIMARY, "non-primary"),
    (Features::DIRTY_CACHE, "dirty-cache"),
];

impl Features {
    /// librbd's default feature set (`RBD_FEATURES_DEFAULT`): layering, exclusive-lock,
    /// object-map, fast-diff, deep-flatten.
    pub const DEFAULT: Features = Features::from_bits_retain(sys::RBD_FEATURES_DEFAULT as u64);
    /// Features that can be enabled or disabled on an existing image
    /// (`RBD_FEATURES_MUTABLE`, minus the internal ones).
    pub const MUTABLE: Features = Features::from_bits_retain(
        (sys::RBD_FEATURES_MUTABLE & !sys::RBD_FEATURES_MUTABLE_INTERNAL) as u64,
    );

    /// The names of the known features that are set, in bit order.
    pub fn names(&self) -> Vec<&'static str> {
        FEATURE_NAMES
            .iter()
            .filter(|(f, _)| self.contains(*f))
            .map(|(_, n)| *n)
            .collect()
    }

    /// The feature with this name (`exclusive-lock`, ...), if any.
    pub fn by_name(name: &str) -> Option<Features> {
        FEATURE_NAMES
            .iter()
            .find(|(_, n)| *n == name)
            .map(|(f, _)| *f)
    }
}

impl fmt::Display for Features {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts: Vec<String> = self.names().into_iter().map(str::to_owned).collect();
        let unknown = self.bits() & !Features::all().bits();
        if unknown != 0 {
            parts.push(format!("{unknown:#x}"));
        }
        f.write_str(&parts.join(","))
    }
}

impl FromStr for Features {
    type Err = Error;

    /// Parses `layering,exclusive-lock` (spaces around names allowed, empty means none)
    /// or a plain decimal/hex bit mask (`61`, `0x3d`).
    fn from_str(s: &str) -> Result<Self> {
        let t = s.trim();
        if let Some(hex) = t.strip_prefix("0x") {
            return u64::from_str_radix(hex, 16)
                .map(Features::from_bits_retain)
                .map_err(|_| Error::invalid("image features", s, "not a hex bit mask"));
        }
        if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
            return t
                .parse::<u64>()
                .map(Features::from_bits_retain)
                .map_err(|_| Error::invalid("image features", s, "bit mask out of range"));
        }
        let mut out = Features::empty();
        for name in t.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            let f = Features::by_name(name).ok_or_else(|| {
                let known: Vec<&str> = FEATURE_NAMES.iter().map(|(_, n)| *n).collect();
                Error::invalid(
                    "image features",
                    s,
                    format!("unknown feature {name:?}; known: {}", known.join(", ")),
                )
            })?;
            out |= f;
        }
        Ok(out)
    }
}

impl Serialize for Features {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_seq(self.names())
    }
}

/// The on-disk image format. Serializes as the number `1` or `2`, as `rbd info` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ImageFormat {
    /// Format 1: deprecated, no features, no clones of its own.
    V1 = 1,
    /// Format 2: the default and the only one that supports features.
    V2 = 2,
}

/// The clone format for [`crate::rbd::clone::clone_image`]. Serializes as `1` or `2`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloneFormat {
    /// Version 1: the parent snapshot must be protected first.
    V1 = 1,
    /// Version 2 (Mimic+ clients): no protection needed; the parent snapshot goes to
    /// the trash namespace if removed while it has children.
    V2 = 2,
}

impl Serialize for ImageFormat {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_u8(*self as u8)
    }
}

impl Serialize for CloneFormat {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_u8(*self as u8)
    }
}

/// Smallest object size librbd accepts: 4 KiB (order 12).
pub const MIN_ORDER: u8 = 12;
/// Largest object size librbd accepts: 32 MiB (order 25).
pub const MAX_ORDER: u8 = 25;

/// Options for creating, cloning or copying an image: an owned `rbd_image_options_t`.
///
/// Unset options take librbd's defaults (the `rbd_default_*` config options). The image
/// size is not an option: it is an argument of [`create`].
///
/// ```
/// use rbd_core::rbd::{Features, ImageOptions};
/// let opts = ImageOptions::new()
///     .order(22)?
///     .features(Features::LAYERING)
///     .striping(1 << 20, 4)?;
/// assert_eq!(opts.get_object_size(), Some(4 << 20));
/// assert_eq!(opts.get_features(), Some(Features::LAYERING));
/// assert_eq!(opts.get_stripe_count(), Some(4));
/// # Ok::<(), rbd_core::Error>(())
/// ```
pub struct ImageOptions {
    raw: sys::rbd_image_options_t,
}

// SAFETY: the options object is a heap-allocated map owned exclusively by this value. It is
// only mutated through `self`-consuming or `&mut self` methods, and the calls that take it
// (`rbd_create4`, `rbd_clone3`, `rbd_copy3`...) get a private copy (see `to_raw`), so
// shared references only ever read it.
unsafe impl Send for ImageOptions {}
// SAFETY: see Send: `&ImageOptions` only reads the map (rbd_image_options_get_*).
unsafe impl Sync for ImageOptions {}

impl Drop for ImageOptions {
    fn drop(&mut self) {
        // SAFETY: `raw` came from rbd_image_options_create and is destroyed once, here.
        unsafe { sys::rbd_image_options_destroy(self.raw) };
    }
}

/// Every option's current value, read back from the C object.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct OptionValues {
    format: Option<u64>,
    features: Option<u64>,
    features_set: Option<u64>,
    features_clear: Option<u64>,
    order: Option<u64>,
    stripe_unit: Option<u64>,
    stripe_count: Option<u64>,
    data_pool: Option<String>,
    clone_format: Option<u64>,
}

impl Default for ImageOptions {
    fn default() -> Self {
        Self::new()
    }
}

impl Clone for ImageOptions {
    fn clone(&self) -> Self {
        let mut out = ImageOptions::new();
        out.apply(&self.values());
        out
    }
}

impl PartialEq for ImageOptions {
    fn eq(&self, other: &Self) -> bool {
        self.values() == other.values()
    }
}

impl fmt::Debug for ImageOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = self.values();
        let mut d = f.debug_struct("ImageOptions");
        if let Some(x) = v.format {
            d.field("format", &x);
        }
        if let Some(x) = v.features {
            d.field("features", &Features::from_bits_retain(x).to_string());
        }
        if let Some(x) = v.features_set {
            d.field(
                "enable_features",
                &Features::from_bits_retain(x).to_string(),
            );
        }
        if let Some(x) = v.features_clear {
            d.field(
                "disable_features",
                &Features::from_bits_retain(x).to_string(),
            );
        }
        if let Some(x) = v.order {
            d.field("order", &x);
        }
        if let Some(x) = v.stripe_unit {
            d.field("stripe_unit", &x);
        }
        if let Some(x) = v.stripe_count {
            d.field("stripe_count", &x);
        }
        if let Some(x) = &v.data_pool {
            d.field("data_pool", x);
        }
        if let Some(x) = v.clone_format {
            d.field("clone_format", &x);
        }
        d.finish()
    }
}

const OPT_FORMAT: c_int = sys::RBD_IMAGE_OPTION_FORMAT as c_int;
const OPT_FEATURES: c_int = sys::RBD_IMAGE_OPTION_FEATURES as c_int;
const OPT_ORDER: c_int = sys::RBD_IMAGE_OPTION_ORDER as c_int;
const OPT_STRIPE_UNIT: c_int = sys::RBD_IMAGE_OPTION_STRIPE_UNIT as c_int;
const OPT_STRIPE_COUNT: c_int = sys::RBD_IMAGE_OPTION_STRIPE_COUNT as c_int;
const OPT_FEATURES_SET: c_int = sys::RBD_IMAGE_OPTION_FEATURES_SET as c_int;
const OPT_FEATURES_CLEAR: c_int = sys::RBD_IMAGE_OPTION_FEATURES_CLEAR as c_int;
const OPT_DATA_POOL: c_int = sys::RBD_IMAGE_OPTION_DATA_POOL as c_int;
const OPT_CLONE_FORMAT: c_int = sys::RBD_IMAGE_OPTION_CLONE_FORMAT as c_int;

impl ImageOptions {
    /// Empty options: everything at librbd's defaults (`rbd_image_options_create`).
    pub fn new() -> Self {
        let mut raw: sys::rbd_image_options_t = std::ptr::null_mut();
        // SAFETY: `raw` is a valid out-pointer; librbd allocates the options object.
        unsafe { sys::rbd_image_options_create(&mut raw) };
        ImageOptions { raw }
    }

    /// Sets a numeric option (`rbd_image_options_set_uint64`). Only fails on a type
    /// mismatch, which our option constants rule out.
    fn set_u64(&mut self, opt: c_int, v: u64) {
        // SAFETY: `raw` is a valid options object owned by `self`, and `&mut self` rules
        // out concurrent access.
        let ret = unsafe { sys::rbd_image_options_set_uint64(self.raw, opt, v) };
        debug_assert_eq!(ret, 0, "rbd_image_options_set_uint64({opt})");
    }

    fn set_str(&mut self, opt: c_int, what: &'static str, v: &str) -> Result<()> {
        let c = cstring(what, v)?;
        // SAFETY: valid owned options object (exclusive via `&mut self`); librbd copies
        // the string.
        let ret = unsafe { sys::rbd_image_options_set_string(self.raw, opt, c.as_ptr()) };
        check(ret, "rbd_image_options_set_string", || {
            crate::Context::none().with_object(v)
        })?;
        Ok(())
    }

    fn get_u64(&self, opt: c_int) -> Option<u64> {
        let mut v = 0u64;
        // SAFETY: valid options object; `v` is a valid out-pointer. Reads only.
        let ret = unsafe { sys::rbd_image_options_get_uint64(self.raw, opt, &mut v) };
        (ret == 0).then_some(v)
    }

    fn get_str(&self, opt: c_int) -> Option<String> {
        let mut cap = 128usize;
        loop {
            let mut buf = vec![0u8; cap];
            // SAFETY: valid options object; `buf` is writable for `cap` bytes.
            let ret = unsafe {
                sys::rbd_image_options_get_string(
                    self.raw,
                    opt,
                    buf.as_mut_ptr().cast::<c_char>(),
                    cap,
                )
            };
            if ret == -libc::E2BIG && cap < (1 << 20) {
                cap *= 4;
                continue;
            }
            return (ret == 0).then(|| from_buf(&buf));
        }
    }

    fn values(&self) -> OptionValues {
        OptionValues {
            format: self.get_u64(OPT_FORMAT),
            features: self.get_u64(OPT_FEATURES),
            features_set: self.get_u64(OPT_FEATURES_SET),
            features_clear: self.get_u64(OPT_FEATURES_CLEAR),
            order: self.get_u64(OPT_ORDER),
            stripe_unit: self.get_u64(OPT_STRIPE_UNIT),
            stripe_count: self.get_u64(OPT_STRIPE_COUNT),
            data_pool: self.get_str(OPT_DATA_POOL),
            clone_format: self.get_u64(OPT_CLONE_FORMAT),
        }
    }

    fn apply(&mut self, v: &OptionValues) {
        let nums = [
            (OPT_FORMAT, v.format),
            (OPT_FEATURES, v.features),
            (OPT_FEATURES_SET, v.features_set),
            (OPT_FEATURES_CLEAR, v.features_clear),
            (OPT_ORDER, v.order),
            (OPT_STRIPE_UNIT, v.stripe_unit),
            (OPT_STRIPE_COUNT, v.stripe_count),
            (OPT_CLONE_FORMAT, v.clone_format),
        ];
        for (opt, val) in nums {
            if let Some(x) = val {
                self.set_u64(opt, x);
            }
        }
        if let Some(p) = &v.data_pool {
            // Came out of a C string, so it has no NUL and cannot fail.
            let _ = self.set_str(OPT_DATA_POOL, "data pool", p);
        }
    }

    /// A private copy for one librbd call: `rbd_create4`, `rbd_clone3` and `rbd_copy3`
    /// write the values they chose back into the options, which must not leak into the
    /// caller's next use.
    pub(crate) fn to_raw(&self) -> ImageOptions {
        self.clone()
    }

    pub(crate) fn ptr(&self) -> sys::rbd_image_options_t {
        self.raw
    }

    /// Image format (`rbd_image_options_set_uint64` with `RBD_IMAGE_OPTION_FORMAT`).
    pub fn format(mut self, format: ImageFormat) -> Self {
        self.set_u64(OPT_FORMAT, format as u64);
        self
    }

    /// Exactly these features (`rbd_image_options_set_uint64` with
    /// `RBD_IMAGE_OPTION_FEATURES`), replacing the defaults.
    /// librbd still adds the features these imply: `fast-diff` with `object-map`,
    /// `striping` with non-default striping, `data-pool` with a data pool.
    pub fn features(mut self, features: Features) -> Self {
        self.set_u64(OPT_FEATURES, features.bits());
        self
    }

    /// Features to add to the defaults (`rbd_image_options_set_uint64` with
    /// `RBD_IMAGE_OPTION_FEATURES_SET`).
    pub fn enable_features(mut self, features: Features) -> Self {
        self.set_u64(OPT_FEATURES_SET, features.bits());
        self
    }

    /// Features to remove from the defaults (`rbd_image_options_set_uint64` with
    /// `RBD_IMAGE_OPTION_FEATURES_CLEAR`).
    pub fn disable_features(mut self, features: Features) -> Self {
        self.set_u64(OPT_FEATURES_CLEAR, features.bits());
        self
    }

    /// Object size as a power of two (`rbd_image_options_set_uint64` with
    /// `RBD_IMAGE_OPTION_ORDER`): 12 (4 KiB) to 25 (32 MiB).
    pub fn order(mut self, order: u8) -> Result<Self> {
        if !(MIN_ORDER..=MAX_ORDER).contains(&order) {
            return Err(Error::invalid(
                "object order",
                order.to_string(),
                format!("must be between {MIN_ORDER} (4 KiB) and {MAX_ORDER} (32 MiB)"),
            ));
        }
        self.set_u64(OPT_ORDER, u64::from(order));
        Ok(self)
    }

    /// Object size in bytes: a power of two from 4 KiB to 32 MiB (sets the order:
    /// `rbd_image_options_set_uint64` with `RBD_IMAGE_OPTION_ORDER`).
    pub fn object_size(self, bytes: u64) -> Result<Self> {
        let order = order_of(bytes)?;
        self.order(order)
    }

    /// Striping (`rbd_image_options_set_uint64` with `RBD_IMAGE_OPTION_STRIPE_UNIT` and
    /// `RBD_IMAGE_OPTION_STRIPE_COUNT`): `unit`
    /// bytes go to each of `count` objects in turn. The unit must be a power of two that
    /// divides the object size (checked at create time); librbd enables the `striping`
    /// feature as needed.
    pub fn striping(mut self, unit: u64, count: u64) -> Result<Self> {
        if unit == 0 || !unit.is_power_of_two() {
            return Err(Error::invalid(
                "stripe unit",
                unit.to_string(),
                "must be a power of two",
            ));
        }
        if count == 0 {
            return Err(Error::invalid(
                "stripe count",
                count.to_string(),
                "must be at least 1",
            ));
        }
        self.set_u64(OPT_STRIPE_UNIT, unit);
        self.set_u64(OPT_STRIPE_COUNT, count);
        Ok(self)
    }

    /// A separate pool for the data objects (`rbd_image_options_set_string` with
    /// `RBD_IMAGE_OPTION_DATA_POOL`), e.g. an
    /// erasure-coded one; the image header stays in the I/O context's pool.
    pub fn data_pool(mut self, pool: &str) -> Result<Self> {
        if pool.is_empty() {
            return Err(Error::invalid("data pool", pool, "must not be empty"));
        }
        self.set_str(OPT_DATA_POOL, "data pool", pool)?;
        Ok(self)
    }

    /// Clone format for [`crate::rbd::clone::clone_image`] (`rbd_image_options_set_uint64`
    /// with `RBD_IMAGE_OPTION_CLONE_FORMAT`).
    pub fn clone_format(mut self, format: CloneFormat) -> Self {
        self.set_u64(OPT_CLONE_FORMAT, format as u64);
        self
    }

    /// The image format, if set (`rbd_image_options_get_uint64`, `RBD_IMAGE_OPTION_FORMAT`).
    pub fn get_format(&self) -> Option<ImageFormat> {
        match self.get_u64(OPT_FORMAT)? {
            1 => Some(ImageFormat::V1),
            2 => Some(ImageFormat::V2),
            _ => None,
        }
    }

    /// The exact feature set, if set (`rbd_image_options_get_uint64`,
    /// `RBD_IMAGE_OPTION_FEATURES`).
    pub fn get_features(&self) -> Option<Features> {
        self.get_u64(OPT_FEATURES).map(Features::from_bits_retain)
    }

    /// Features added to the defaults, if set (`rbd_image_options_get_uint64`,
    /// `RBD_IMAGE_OPTION_FEATURES_SET`).
    pub fn get_enable_features(&self) -> Option<Features> {
        self.get_u64(OPT_FEATURES_SET)
            .map(Features::from_bits_retain)
    }

    /// Features removed from the defaults, if set (`rbd_image_options_get_uint64`,
    /// `RBD_IMAGE_OPTION_FEATURES_CLEAR`).
    pub fn get_disable_features(&self) -> Option<Features> {
        self.get_u64(OPT_FEATURES_CLEAR)
            .map(Features::from_bits_retain)
    }

    /// The object order, if set (`rbd_image_options_get_uint64`, `RBD_IMAGE_OPTION_ORDER`).
    pub fn get_order(&self) -> Option<u8> {
        self.get_u64(OPT_ORDER).and_then(|o| u8::try_from(o).ok())
    }

    /// The object size in bytes, if the order is set (from [`ImageOptions::get_order`]).
    pub fn get_object_size(&self) -> Option<u64> {
        self.get_order().map(|o| 1u64 << o)
    }

    /// The stripe unit, if set (`rbd_image_options_get_uint64`,
    /// `RBD_IMAGE_OPTION_STRIPE_UNIT`).
    pub fn get_stripe_unit(&self) -> Option<u64> {
        self.get_u64(OPT_STRIPE_UNIT)
    }

    /// The stripe count, if set (`rbd_image_options_get_uint64`,
    /// `RBD_IMAGE_OPTION_STRIPE_COUNT`).
    pub fn get_stripe_count(&self) -> Option<u64> {
        self.get_u64(OPT_STRIPE_COUNT)
    }

    /// The data pool, if set (`rbd_image_options_get_string`, `RBD_IMAGE_OPTION_DATA_POOL`).
    pub fn get_data_pool(&self) -> Option<String> {
        self.get_str(OPT_DATA_POOL)
    }

    /// The clone format, if set (`rbd_image_options_get_uint64`,
    /// `RBD_IMAGE_OPTION_CLONE_FORMAT`).
    pub fn get_clone_format(&self) -> Option<CloneFormat> {
        match self.get_u64(OPT_CLONE_FORMAT)? {
            1 => Some(CloneFormat::V1),
            2 => Some(CloneFormat::V2),
            _ => None,
        }
    }

    /// Cross-option checks librbd would otherwise answer with a bare `EINVAL`.
    fn validate(&self) -> Result<()> {
        if let (Some(unit), Some(obj)) = (self.get_stripe_unit(), self.get_object_size())
            && obj % unit != 0
        {
            return Err(Error::invalid(
                "stripe unit",
                unit.to_string(),
                format!("must divide the object size ({obj} bytes)"),
            ));
        }
        Ok(())
    }
}

/// The order (log2) of a power-of-two object size between 4 KiB and 32 MiB.
pub fn order_of(object_size: u64) -> Result<u8> {
    if !object_size.is_power_of_two() {
        return Err(Error::invalid(
            "object size",
            object_size.to_string(),
            "must be a power of two",
        ));
    }
    let order = object_size.trailing_zeros() as u8;
    if !(MIN_ORDER..=MAX_ORDER).contains(&order) {
        return Err(Error::invalid(
            "object size",
            object_size.to_string(),
            "must be between 4 KiB and 32 MiB",
        ));
    }
    Ok(order)
}

/// An image in a pool: its name and its id (stable across renames).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct ImageSpec {
    /// The image name.
    pub name: String,
    /// The image id (the suffix of its `rbd_header.<id>` object).
    pub id: String,
}

/// Creates an image of `size` bytes (`rbd_create4`).
///
/// Fails with [`crate::ErrorKind::Exists`] when the name is taken.
pub fn create(io: &IoCtx, name: &str, size: u64, opts: &ImageOptions) -> Result<()> {
    validate_image_name("image name", name)?;
    opts.validate()?;
    let c = cstring("image name", name)?;
    let raw = opts.to_raw();
    // SAFETY: valid ioctx, C string and options object, all alive for the call; `raw` is
    // our private copy, which librbd may write to.
    let ret = unsafe { sys::rbd_create4(io.ptr(), c.as_ptr(), size, raw.ptr()) };
    check(ret, "rbd_create4", || io.ctx().with_image(name))?;
    Ok(())
}

/// Lists the images in the pool (and namespace) of `io` (`rbd_list2`).
///
/// Images in the trash are not listed; see [`crate::rbd::trash::trash_list`].
pub fn list(io: &IoCtx) -> Result<Vec<ImageSpec>> {
    let mut cap = 64usize;
    for _ in 0..32 {
        let mut specs = vec![
            sys::rbd_image_spec_t {
                id: std::ptr::null_mut(),
                name: std::ptr::null_mut(),
            };
            cap
        ];
        let mut n = cap;
        // SAFETY: `specs` has room for `n` entries; librbd fills at most that many or
        // returns -ERANGE with the needed count in `n`.
        let ret = unsafe { sys::rbd_list2(io.ptr(), specs.as_mut_ptr(), &mut n) };
        if ret == -libc::ERANGE {
            cap = n.max(cap * 2);
            continue;
        }
        check(ret, "rbd_list2", || io.ctx())?;
        let n = n.min(cap);
        let out = specs[..n]
            .iter()
            .map(|s| ImageSpec {
                // SAFETY: librbd filled these with strdup'd strings (or left NULL).
                name: unsafe { from_cstr(s.name) },
                // SAFETY: as above.
                id: unsafe { from_cstr(s.id) },
            })
            .collect();
        // SAFETY: the first `n` entries were filled by rbd_list2 and are freed once here.
        unsafe { sys::rbd_image_spec_list_cleanup(specs.as_mut_ptr(), n) };
        return Ok(out);
    }
    Err(Error::from_errno("rbd_list2", libc::ERANGE, io.ctx()))
}

/// The object that indexes a pool's (or namespace's) format 2 images: omap keys
/// `id_<id>` (value: the name) and `name_<name>` (value: the id).
pub const RBD_DIRECTORY: &str = "rbd_directory";

/// Lists the format 2 images of the pool (and namespace) of `io` with librados alone, from
/// the omap of its [`RBD_DIRECTORY`] object (`rados_read_op_omap_get_vals2`, keys
/// `id_*`), without loading librbd (see [`crate::librbd`]).
///
/// For format 2 images this is what [`list`] returns (`rbd_list2` reads the same keys
/// through the `rbd` object class); format 1 images, which have no id, are not listed.
/// A pool or namespace that never held an image has no directory object: the list is
/// empty then. An entry whose value cannot be decoded (not written by librbd) is an
/// error of kind [`crate::ErrorKind::InvalidInput`] naming the key.
pub fn list_directory(io: &IoCtx) -> Result<Vec<ImageSpec>> {
    let vals = match io.omap_get_vals(RBD_DIRECTORY, None, Some("id_"), None) {
        Ok(v) => v,
        Err(e) if e.kind() == crate::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    vals.into_iter()
        .map(|(key, val)| {
            let id = key.strip_prefix("id_").unwrap_or(&key).to_owned();
            let name = decode_ceph_string(&val).ok_or_else(|| {
                Error::invalid(
                    "rbd_directory entry",
                    key.clone(),
                    "its value is not an encoded image name",
                )
            })?;
            Ok(ImageSpec { name, id })
        })
        .collect()
}

/// Decodes a string in Ceph's encoding: a little-endian `u32` length, then that many
/// bytes of UTF-8, and nothing after them.
fn decode_ceph_string(b: &[u8]) -> Option<String> {
    let (len, rest) = b.split_first_chunk::<4>()?;
    let len = u32::from_le_bytes(*len) as usize;
    (rest.len() == len)
        .then(|| String::from_utf8(rest.to_vec()).ok())
        .flatten()
}

/// Removes an image and its data (`rbd_remove`).
///
/// Fails with [`crate::ErrorKind::HasSnapshots`] while it has snapshots,
/// [`crate::ErrorKind::Busy`] while a client has it open (a watcher), and
/// [`crate::ErrorKind::NotFound`] when it does not exist.
pub fn remove(io: &IoCtx, name: &str) -> Result<()> {
    validate_image_name("image name", name)?;
    let c = cstring("image name", name)?;
    // SAFETY: valid ioctx and C string.
    let ret = unsafe { sys::rbd_remove(io.ptr(), c.as_ptr()) };
    check(ret, "rbd_remove", || io.ctx().with_image(name))?;
    Ok(())
}

/// [`remove`] reporting progress as `(objects done, total)`
/// (`rbd_remove_with_progress`).
pub fn remove_with_progress(
    io: &IoCtx,
    name: &str,
    progress: impl FnMut(u64, u64) + Send,
) -> Result<()> {
    validate_image_name("image name", name)?;
    let c = cstring("image name", name)?;
    let p = ProgressAdapter::new(progress);
    // SAFETY: valid ioctx and C string; the callback and its data (`p`) outlive this
    // synchronous call.
    let ret =
        unsafe { sys::rbd_remove_with_progress(io.ptr(), c.as_ptr(), p.callback(), p.data()) };
    p.finish();
    check(ret, "rbd_remove_with_progress", || {
        io.ctx().with_image(name)
    })?;
    Ok(())
}

/// Renames an image within its pool (`rbd_rename`).
pub fn rename(io: &IoCtx, src: &str, dst: &str) -> Result<()> {
    validate_image_name("image name", src)?;
    validate_image_name("new image name", dst)?;
    let s = cstring("image name", src)?;
    let d = cstring("new image name", dst)?;
    // SAFETY: valid ioctx and C strings.
    let ret = unsafe { sys::rbd_rename(io.ptr(), s.as_ptr(), d.as_ptr()) };
    check(ret, "rbd_rename", || io.ctx().with_image(src))?;
    Ok(())
}

impl Image {
    /// Copies this image's data (at its current snapshot, or the head) into a new image
    /// `dest_name` in `dest_io` (`rbd_copy3`). Snapshots are not copied. Options not set
    /// are taken from the source (order, features, striping); when only the object size
    /// changes, default striping follows it.
    pub fn copy(&self, dest_io: &IoCtx, dest_name: &str, opts: &ImageOptions) -> Result<()> {
        self.copy_impl(dest_io, dest_name, opts, None::<fn(u64, u64)>)
    }

    /// [`Image::copy`] reporting progress as `(bytes done, total)`
    /// (`rbd_copy_with_progress3`).
    pub fn copy_with_progress(
        &self,
        dest_io: &IoCtx,
        dest_name: &str,
        opts: &ImageOptions,
        progress: impl FnMut(u64, u64) + Send,
    ) -> Result<()> {
        self.copy_impl(dest_io, dest_name, opts, Some(progress))
    }

    fn copy_impl<F: FnMut(u64, u64) + Send>(
        &self,
        dest_io: &IoCtx,
        dest_name: &str,
        opts: &ImageOptions,
        progress: Option<F>,
    ) -> Result<()> {
        validate_image_name("destination image name", dest_name)?;
        opts.validate()?;
        let d = cstring("destination image name", dest_name)?;
        let mut raw = opts.to_raw();
        // librbd takes unset striping from the source, so a new object size smaller than
        // the source's stripe unit would fail with a bare EINVAL. With the default
        // striping (count 1, unit = object size) follow the new object size instead.
        if let (Some(obj), None) = (raw.get_object_size(), raw.get_stripe_unit())
            && self.stripe_count()? == 1
        {
            raw = raw.striping(obj, 1)?;
        }
        let ctx = || dest_io.ctx().with_image(dest_name);
        match progress {
            None => {
                // SAFETY: open image handle, valid ioctx, C string and private options
                // copy, all alive for the call.
                let ret = unsafe { sys::rbd_copy3(self.ptr, dest_io.ptr(), d.as_ptr(), raw.ptr()) };
                check(ret, "rbd_copy3", ctx)?;
            }
            Some(f) => {
                let p = ProgressAdapter::new(f);
                // SAFETY: as above; the progress callback data `p` outlives this
                // synchronous call.
                let ret = unsafe {
                    sys::rbd_copy_with_progress3(
                        self.ptr,
                        dest_io.ptr(),
                        d.as_ptr(),
                        raw.ptr(),
                        p.callback(),
                        p.data(),
                    )
                };
                p.finish();
                check(ret, "rbd_copy_with_progress3", ctx)?;
            }
        }
        Ok(())
    }
}

/// Parses a human size: `4096`, `512K`, `512M`, `2G`, `1T`, `1.5G`, also with `B`/`iB`
/// suffixes (`2GiB`, `512MB`, `4096B`). Units are binary (K = 1024), as for `rbd create
/// --size`. Case-insensitive units; an optional leading `+`; no spaces inside.
///
/// Rejects negative numbers, fractions that are not a whole number of bytes, values that
/// do not fit in 64 bits (`16E`, `99999999999999999999`), and anything else (`1e99`,
/// `2Q`, `G`), with an error naming the value.
///
/// ```
/// use rbd_core::rbd::parse_size;
/// assert_eq!(parse_size("1.5G")?, 3 << 29);
/// assert_eq!(parse_size("4096")?, 4096);
/// assert!(parse_size("-1G").is_err());
/// assert!(parse_size("2Q").is_err());
/// # Ok::<(), rbd_core::Error>(())
/// ```
pub fn parse_size(input: &str) -> Result<u64> {
    let bad = |reason: &str| Error::invalid("size", input, reason);
    let s = input.trim();
    if s.is_empty() {
        return Err(bad("empty"));
    }
    if s.starts_with('-') {
        return Err(bad("must not be negative"));
    }
    let s = s.strip_prefix('+').unwrap_or(s);
    let num_end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(num_end);
    let (int_part, frac_part) = match num.split_once('.') {
        Some((i, f)) => (i, f),
        None => (num, ""),
    };
    if int_part.is_empty() && frac_part.is_empty() {
        return Err(bad("expected a number, e.g. 512M, 2G, 1.5T or 4096"));
    }
    if frac_part.contains('.') || (num.contains('.') && frac_part.is_empty()) {
        return Err(bad("malformed number"));
    }
    let shift = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        "p" | "pb" | "pib" => 50,
        "e" | "eb" | "eib" => 60,
        _ => {
            return Err(bad(
                "unknown unit: use B, K, M, G, T, P or E (binary, 1K = 1024)",
            ));
        }
    };
    // Exact arithmetic: value = digits / 10^frac_len * 2^shift, in u128 with overflow
    // checks; more than 38 significant digits cannot fit anyway.
    let overflow = || bad("too large: does not fit in 64 bits");
    let digits = format!("{int_part}{frac_part}");
    let digits = digits.trim_start_matches('0');
    if digits.len() > 38 {
        return Err(overflow());
    }
    let mantissa: u128 = if digits.is_empty() {
        0
    } else {
        digits.parse().map_err(|_| bad("malformed number"))?
    };
    let frac_len = u32::try_from(frac_part.len()).map_err(|_| overflow())?;
    let scale = 10u128.checked_pow(frac_len).ok_or_else(overflow)?;
    let scaled = mantissa.checked_mul(1u128 << shift).ok_or_else(overflow)?;
    if scaled % scale != 0 {
        return Err(bad("not a whole number of bytes"));
    }
    u64::try_from(scaled / scale).map_err(|_| overflow())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("0").unwrap(), 0);
        assert_eq!(parse_size("512M").unwrap(), 512 << 20);
        assert_eq!(parse_size("512m").unwrap(), 512 << 20);
        assert_eq!(parse_size("2G").unwrap(), 2 << 30);
        assert_eq!(parse_size("2GiB").unwrap(), 2 << 30);
        assert_eq!(parse_size("2GB").unwrap(), 2 << 30);
        assert_eq!(parse_size("1T").unwrap(), 1 << 40);
        assert_eq!(parse_size("1.5G").unwrap(), 3 << 29);
        assert_eq!(parse_size("0.5K").unwrap(), 512);
        assert_eq!(parse_size(".5K").unwrap(), 512);
        assert_eq!(parse_size("4096B").unwrap(), 4096);
        assert_eq!(parse_size(" 10M ").unwrap(), 10 << 20);
        assert_eq!(parse_size("15E").unwrap(), 15 << 60);
        assert_eq!(parse_size("18446744073709551615").unwrap(), u64::MAX);
    }

    #[test]
    fn bad_sizes_name_the_value() {
        for s in [
            "",
            "-1",
            "-1G",
            "1e99",
            "2Q",
            "G",
            "1.2.3",
            "1.",
            "abc",
            "16E",
            "18446744073709551616",
            "99999999999999999999999999999999999999999",
            "1.3K",
            "1 G",
            "0x10",
            "NaN",
            "inf",
        ] {
            let e = parse_size(s).expect_err(s);
            assert_eq!(e.kind(), crate::ErrorKind::InvalidInput);
            assert!(e.to_string().contains(&format!("{s:?}")), "{e}");
        }
        assert!(
            parse_size("-5M")
                .unwrap_err()
                .to_string()
                .contains("negative")
        );
        assert!(
            parse_size("16E")
                .unwrap_err()
                .to_string()
                .contains("64 bits")
        );
    }

    proptest! {
        #[test]
        fn parse_size_never_panics(s in ".{0,24}") {
            let _ = parse_size(&s);
        }

        #[test]
        fn plain_numbers_roundtrip(n in any::<u64>()) {
            prop_assert_eq!(parse_size(&n.to_string()).unwrap(), n);
        }

        #[test]
        fn units_multiply(n in 0u64..(1 << 20), u in 0usize..5) {
            let (suffix, shift) = [("K", 10), ("M", 20), ("G", 30), ("T", 40), ("P", 50)][u];
            let expect = (u128::from(n) << shift).try_into().ok();
            prop_assert_eq!(parse_size(&format!("{n}{suffix}")).ok(), expect);
        }

        #[test]
        fn negatives_rejected(n in 1u64..u64::MAX, unit in "[KMGT]?") {
            let e = parse_size(&format!("-{n}{unit}")).unwrap_err();
            prop_assert!(e.to_string().contains("negative"));
        }

        #[test]
        fn halves_are_exact(n in 0u64..(1 << 30)) {
            prop_assert_eq!(parse_size(&format!("{n}.5M")).unwrap(), (n << 20) + (1 << 19));
        }
    }

    #[test]
    fn features_names_roundtrip() {
        let f = Features::LAYERING | Features::EXCLUSIVE_LOCK | Features::OBJECT_MAP;
        assert_eq!(f.to_string(), "layering,exclusive-lock,object-map");
        assert_eq!(
            "layering, exclusive-lock,object-map"
                .parse::<Features>()
                .unwrap(),
            f
        );
        assert_eq!("".parse::<Features>().unwrap(), Features::empty());
        assert_eq!("61".parse::<Features>().unwrap(), Features::DEFAULT);
        assert_eq!("0x3d".parse::<Features>().unwrap(), Features::DEFAULT);
        assert_eq!(
            Features::DEFAULT.to_string(),
            "layering,exclusive-lock,object-map,fast-diff,deep-flatten"
        );
        let e = "layering,bogus".parse::<Features>().unwrap_err();
        assert!(e.to_string().contains("bogus"), "{e}");
        assert_eq!(
            Features::from_bits_retain(1 << 40).to_string(),
            "0x10000000000"
        );
        assert_eq!(
            serde_json::to_string(&(Features::LAYERING | Features::STRIPING)).unwrap(),
            r#"["layering","striping"]"#
        );
        assert!(Features::MUTABLE.contains(Features::OBJECT_MAP | Features::JOURNALING));
        assert!(!Features::MUTABLE.contains(Features::LAYERING));
    }

    /// Our names agree with librbd's own (`rbd_features_to_string`) for every bit.
    #[test]
    fn feature_names_match_librbd() {
        for (f, name) in FEATURE_NAMES {
            let mut buf = vec![0u8; 256];
            let mut len = buf.len();
            // SAFETY: `buf` is writable for `len` bytes.
            let ret =
                unsafe { sys::rbd_features_to_string(f.bits(), buf.as_mut_ptr().cast(), &mut len) };
            assert_eq!(ret, 0);
            assert_eq!(from_buf(&buf), name);
        }
        let all = Features::all();
        let mut buf = vec![0u8; 512];
        let mut len = buf.len();
        // SAFETY: `buf` is writable for `len` bytes.
        let ret =
            unsafe { sys::rbd_features_to_string(all.bits(), buf.as_mut_ptr().cast(), &mut len) };
        assert_eq!(ret, 0);
        // librbd sorts the names alphabetically; we keep bit order. Same set either way.
        assert_eq!(from_buf(&buf).parse::<Features>().unwrap(), all);
    }

    #[test]
    fn options_roundtrip_and_validate() {
        let o = ImageOptions::new()
            .order(22)
            .unwrap()
            .features(Features::LAYERING)
            .enable_features(Features::EXCLUSIVE_LOCK)
            .disable_features(Features::JOURNALING)
            .striping(1 << 20, 4)
            .unwrap()
            .data_pool("ecpool")
            .unwrap()
            .format(ImageFormat::V2)
            .clone_format(CloneFormat::V2);
        assert_eq!(o.get_order(), Some(22));
        assert_eq!(o.get_object_size(), Some(4 << 20));
        assert_eq!(o.get_features(), Some(Features::LAYERING));
        assert_eq!(o.get_enable_features(), Some(Features::EXCLUSIVE_LOCK));
        assert_eq!(o.get_disable_features(), Some(Features::JOURNALING));
        assert_eq!(o.get_stripe_unit(), Some(1 << 20));
        assert_eq!(o.get_stripe_count(), Some(4));
        assert_eq!(o.get_data_pool().as_deref(), Some("ecpool"));
        assert_eq!(o.get_format(), Some(ImageFormat::V2));
        assert_eq!(o.get_clone_format(), Some(CloneFormat::V2));
        let c = o.clone();
        assert_eq!(c, o);
        let dbg = format!("{o:?}");
        assert!(dbg.contains("ecpool") && dbg.contains("order: 22"), "{dbg}");

        let empty = ImageOptions::new();
        assert_eq!(empty.get_order(), None);
        assert_eq!(empty.get_data_pool(), None);
        assert_ne!(empty, o);

        assert!(ImageOptions::new().order(11).is_err());
        assert!(ImageOptions::new().order(26).is_err());
        assert!(ImageOptions::new().object_size(3 << 20).is_err());
        assert!(ImageOptions::new().object_size(64 << 20).is_err());
        assert_eq!(
            ImageOptions::new().object_size(4096).unwrap().get_order(),
            Some(12)
        );
        assert!(ImageOptions::new().striping(3000, 2).is_err());
        assert!(ImageOptions::new().striping(4096, 0).is_err());
        assert!(ImageOptions::new().data_pool("").is_err());
        assert!(ImageOptions::new().data_pool("a\0b").is_err());
        let e = ImageOptions::new()
            .order(12)
            .unwrap()
            .striping(1 << 20, 2)
            .unwrap()
            .validate()
            .unwrap_err();
        assert!(e.to_string().contains("stripe unit"), "{e}");
    }
}
