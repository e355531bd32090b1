//! Volume options: the node-wide defaults ([`VolumeDefaults`]), one volume's options
//! ([`CreateSpec`], parsed from Docker's `-o key=value` with [`CreateSpec::from_options`]),
//! and their validation against allowlists.
//!
//! Everything is validated here, before the driver touches the cluster: an unknown key is
//! rejected with the list of allowed keys, and every bad value is rejected with an error
//! naming it.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use fs_format::{FsType, MkfsArgs, MountOptions};
use rbd_core::rbd::Features;
use serde::{Deserialize, Serialize};

use crate::error::{DriverError, Result};
use crate::volume::name::validate_volume_name;

/// How a volume is mounted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum AccessMode {
    /// Read-write: one node at a time (the exclusive lock is taken).
    #[default]
    #[serde(rename = "rw")]
    ReadWrite,
    /// Read-only: any number of nodes.
    #[serde(rename = "ro")]
    ReadOnly,
}

impl AccessMode {
    /// `"rw"` or `"ro"`.
    pub fn as_str(self) -> &'static str {
        match self {
            AccessMode::ReadWrite => "rw",
            AccessMode::ReadOnly => "ro",
        }
    }

    /// True for [`AccessMode::ReadOnly`].
    pub fn is_read_only(self) -> bool {
        self == AccessMode::ReadOnly
    }
}

impl fmt::Display for AccessMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for AccessMode {
    type Err = DriverError;
    /// Parses `rw` or `ro`.
    fn from_str(s: &str) -> Result<Self> {
        match s.trim() {
            "rw" => Ok(AccessMode::ReadWrite),
            "ro" => Ok(AccessMode::ReadOnly),
            _ => Err(DriverError::invalid("access mode", s, "expected rw or ro")),
        }
    }
}

/// When a new volume gets its filesystem.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FormatAt {
    /// During create: map, mkfs, unmap. Create is slower and needs a usable mapper, but
    /// a bad mkfs option fails the create.
    Create,
    /// At the first read-write attach: the blank device is formatted before it is mounted.
    #[default]
    FirstAttach,
}

impl FromStr for FormatAt {
    type Err = DriverError;
    /// Parses `create` or `first-attach`.
    fn from_str(s: &str) -> Result<Self> {
        match s.trim() {
            "create" => Ok(FormatAt::Create),
            "first-attach" | "attach" => Ok(FormatAt::FirstAttach),
            _ => Err(DriverError::invalid(
                "format-at",
                s,
                "expected create or first-attach",
            )),
        }
    }
}

/// Node-wide defaults for volume options (from the plugin's config file or environment).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeDefaults {
    /// Pool of new volumes; also the pool holding the cluster-wide name index. `rbd`.
    pub pool: String,
    /// RADOS namespace of new volumes. `""`.
    pub namespace: String,
    /// Size of new volumes in bytes. 1 GiB.
    pub size: u64,
    /// Filesystem of new volumes. ext4.
    pub fstype: FsType,
    /// Image features; `None` is librbd's default set. exclusive-lock is always added.
    pub features: Option<Features>,
    /// RADOS object size; `None` is librbd's default (4 MiB).
    pub object_size: Option<u64>,
    /// Data pool (e.g. erasure coded), if any.
    pub data_pool: Option<String>,
    /// Extra mkfs arguments, already allowlist-validated for [`VolumeDefaults::fstype`].
    pub mkfs_options: Vec<String>,
    /// Mount options, already allowlist-validated.
    pub mount_options: Vec<String>,
    /// When new volumes are formatted.
    pub format_at: FormatAt,
    /// Run the filesystem checker before every read-write mount.
    pub fsck_on_attach: bool,
}

impl Default for VolumeDefaults {
    fn default() -> Self {
        Self {
            pool: "rbd".into(),
            namespace: String::new(),
            size: 1 << 30,
            fstype: FsType::Ext4,
            features: None,
            object_size: None,
            data_pool: None,
            mkfs_options: Vec::new(),
            mount_options: Vec::new(),
            format_at: FormatAt::FirstAttach,
            fsck_on_attach: false,
        }
    }
}

/// Keys accepted by [`VolumeDefaults::with_options`] besides the volume keys (other than
/// `from-snapshot` and `access`).
pub const DEFAULTS_ONLY_KEYS: &[&str] = &["format-at", "fsck-on-attach"];

impl VolumeDefaults {
    /// These defaults with some overridden from `key=value` options: the volume keys of
    /// [`OPTION_KEYS`] (except `from-snapshot` and `access`) plus `format-at`
    /// (`create`|`first-attach`) and `fsck-on-attach` (`true`|`false`). Values are checked
    /// exactly as for [`CreateSpec::from_options`]; the mkfs and mount options are
    /// validated for the resulting filesystem type.
    pub fn with_options(mut self, opts: &BTreeMap<String, String>) -> Result<Self> {
        let mut volume_opts = BTreeMap::new();
        for (k, v) in opts {
            match k.as_str() {
                "format-at" => self.format_at = v.parse()?,
                "fsck-on-attach" => {
                    self.fsck_on_attach = match v.trim() {
                        "true" | "yes" | "1" | "on" => true,
                        "false" | "no" | "0" | "off" => false,
                        _ => {
                            return Err(DriverError::invalid(
                                "fsck-on-attach",
                                v,
                                "expected true or false",
                            ));
                        }
                    }
                }
                "from-snapshot" | "access" => {
                    return Err(DriverError::invalid(
                        "default option",
                        k,
                        "only valid per volume, not as a node default",
                    ));
                }
                _ => {
                    if !OPTION_KEYS.contains(&k.as_str()) {
                        return Err(unknown_key(k, true));
                    }
                    volume_opts.insert(k.clone(), v.clone());
                }
            }
        }
        let spec = CreateSpec::from_options(&volume_opts)?;
        if let Some(v) = spec.pool {
            self.pool = v;
        }
        if let Some(v) = spec.namespace {
            self.namespace = v;
        }
        if let Some(v) = spec.size {
            self.size = v;
        }
        if let Some(v) = spec.fstype {
            self.fstype = v;
        }
        if let Some(v) = spec.features {
            self.features = Some(v);
        }
        if let Some(v) = spec.object_size {
            self.object_size = Some(v);
        }
        if let Some(v) = spec.data_pool {
            self.data_pool = Some(v);
        }
        if let Some(v) = spec.mkfs_options {
            self.mkfs_options = v;
        }
        if let Some(v) = spec.mount_options {
            self.mount_options = v;
        }
        self.validate()?;
        Ok(self)
    }

    /// Checks every field as [`CreateSpec::from_options`] would.
    pub fn validate(&self) -> Result<()> {
        validate_pool_name("pool", &self.pool)?;
        validate_namespace(&self.namespace)?;
        check_size(&self.size.to_string(), self.size)?;
        if let Some(f) = self.features {
            check_features(&f.to_string(), f)?;
        }
        if let Some(o) = self.object_size {
            check_object_size(&o.to_string(), o)?;
        }
        if let Some(p) = &self.data_pool {
            validate_pool_name("data-pool", p)?;
        }
        validate_mkfs_options(self.fstype, &self.mkfs_options)?;
        validate_mount_options(self.fstype, &self.mount_options)?;
        check_fs_size(
            &self.size.to_string(),
            self.size,
            self.fstype,
            &self.mkfs_options,
        )?;
        Ok(())
    }
}

/// The option keys [`CreateSpec::from_options`] accepts (Docker's `-o` / `driver_opts`).
pub const OPTION_KEYS: &[&str] = &[
    "size",
    "pool",
    "namespace",
    "data-pool",
    "fstype",
    "features",
    "object-size",
    "mkfs-options",
    "mount-options",
    "access",
    "from-snapshot",
];

/// Smallest volume accepted: 1 MiB.
pub const MIN_VOLUME_SIZE: u64 = 1 << 20;
/// Largest volume accepted: 1 PiB (guards against typos such as `2E`).
pub const MAX_VOLUME_SIZE: u64 = 1 << 50;

/// Image features a volume may ask for. The internal ones (`operations`, `migrating`,
/// `non-primary`, `dirty-cache`) and `data-pool` (set through the `data-pool` option) are
/// refused.
pub const ALLOWED_FEATURES: Features = Features::LAYERING
    .union(Features::STRIPING)
    .union(Features::EXCLUSIVE_LOCK)
    .union(Features::OBJECT_MAP)
    .union(Features::FAST_DIFF)
    .union(Features::DEEP_FLATTEN)
    .union(Features::JOURNALING);

/// One volume's options. `None` means "the node default" ([`VolumeDefaults`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CreateSpec {
    /// Pool.
    pub pool: Option<String>,
    /// RADOS namespace.
    pub namespace: Option<String>,
    /// Size in bytes.
    pub size: Option<u64>,
    /// Filesystem.
    pub fstype: Option<FsType>,
    /// Image features (exclusive-lock is always added).
    pub features: Option<Features>,
    /// RADOS object size.
    pub object_size: Option<u64>,
    /// Data pool.
    pub data_pool: Option<String>,
    /// Extra mkfs arguments (one argv word each).
    pub mkfs_options: Option<Vec<String>>,
    /// Mount options (each may be a comma-separated list).
    pub mount_options: Option<Vec<String>>,
    /// Default access mode of the volume.
    pub access: Option<AccessMode>,
    /// Clone from a snapshot: `volume@snap`, `pool/image@snap` or
    /// `pool/namespace/image@snap`.
    pub from_snapshot: Option<String>,
}

/// The snapshot a volume is cloned from ([`CreateSpec::from_snapshot`], parsed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum SnapshotSource {
    /// `volume@snap`: a snapshot of another volume, found through the name index.
    Volume {
        /// The volume.
        volume: String,
        /// The snapshot.
        snap: String,
    },
    /// `pool/[namespace/]image@snap`: a snapshot of any image.
    Image {
        /// Pool.
        pool: String,
        /// Namespace (`""` for the default).
        namespace: String,
        /// Image name.
        image: String,
        /// Snapshot.
        snap: String,
    },
}

impl SnapshotSource {
    /// The snapshot name.
    pub fn snap(&self) -> &str {
        match self {
            SnapshotSource::Volume { snap, .. } | SnapshotSource::Image { snap, .. } => snap,
        }
    }
}

impl fmt::Display for SnapshotSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SnapshotSource::Volume { volume, snap } => write!(f, "{volume}@{snap}"),
            SnapshotSource::Image {
                pool,
                namespace,
                image,
                snap,
            } => f.write_str(&crate::mapper::image_spec(
                pool,
                namespace,
                image,
                Some(snap),
            )),
        }
    }
}

impl FromStr for SnapshotSource {
    type Err = DriverError;
    fn from_str(s: &str) -> Result<Self> {
        let bad = |reason: &str| Err(DriverError::invalid("from-snapshot", s, reason));
        let Some((path, snap)) = s.rsplit_once('@') else {
            return bad("expected volume@snap, pool/image@snap or pool/namespace/image@snap");
        };
        if let Err(e) = validate_snapshot_name(snap) {
            return bad(&format!("bad snapshot name: {e}"));
        }
        let parts: Vec<&str> = path.split('/').collect();
        match parts.as_slice() {
            [volume] => {
                if let Err(e) = validate_volume_name(volume) {
                    return bad(&e.to_string());
                }
                Ok(SnapshotSource::Volume {
                    volume: (*volume).into(),
                    snap: snap.into(),
                })
            }
            [pool, image] | [pool, _, image] => {
                let namespace = if parts.len() == 3 { parts[1] } else { "" };
                if let Err(e) = validate_pool_name("pool", pool)
                    .and_then(|_| validate_namespace(namespace))
                    .and_then(|_| validate_image_name(image))
                {
                    return bad(&e.to_string());
                }
                Ok(SnapshotSource::Image {
                    pool: (*pool).into(),
                    namespace: namespace.into(),
                    image: (*image).into(),
                    snap: snap.into(),
                })
            }
            _ => bad("too many '/' (expected pool/[namespace/]image@snap)"),
        }
    }
}

fn unknown_key(key: &str, defaults: bool) -> DriverError {
    let mut allowed: Vec<&str> = OPTION_KEYS.to_vec();
    if defaults {
        allowed.retain(|k| *k != "from-snapshot" && *k != "access");
        allowed.extend_from_slice(DEFAULTS_ONLY_KEYS);
    }
    DriverError::invalid(
        "volume option",
        key,
        format!("unknown option; allowed: {}", allowed.join(", ")),
    )
}

impl CreateSpec {
    /// Parses Docker's volume options (`-o key=value`).
    ///
    /// Keys ([`OPTION_KEYS`]):
    /// - `size`: a bare number is GiB (`2` = 2 GiB, as with Rex-Ray), else `512M`, `2G`,
    ///   `1T`, `1.5G` (binary units). 1 MiB to 1 PiB, a multiple of 4 KiB.
    /// - `pool`, `namespace`, `data-pool`: names of letters, digits, `_`, `.`, `-`.
    /// - `fstype`: `ext4`, `xfs` or `btrfs`.
    /// - `features`: comma-separated feature names from [`ALLOWED_FEATURES`]
    ///   (`layering,exclusive-lock,object-map,fast-diff`); exclusive-lock is always added.
    /// - `object-size`: a power of two from 4 KiB to 32 MiB (`4M`).
    /// - `mkfs-options`: extra mkfs arguments, whitespace-separated, checked against
    ///   fs-format's allowlist ([`MkfsArgs`]).
    /// - `mount-options`: comma-separated mount options, checked against fs-format's
    ///   allowlist; `ro`/`rw` are refused (use `access`).
    /// - `access`: `rw` or `ro`.
    /// - `from-snapshot`: `volume@snap`, `pool/image@snap` or `pool/namespace/image@snap`.
    ///
    /// mkfs and mount options are validated for `fstype` when it is given, else for ext4;
    /// [`crate::volume::Driver::create`] validates them again for the effective type.
    /// Keys are case-sensitive. An unknown key is [`DriverError::InvalidInput`] listing
    /// the allowed keys; a bad value is [`DriverError::InvalidInput`] naming the value.
    pub fn from_options(opts: &BTreeMap<String, String>) -> Result<CreateSpec> {
        let mut spec = CreateSpec::default();
        let mut size_input = None;
        for (key, value) in opts {
            match key.as_str() {
                "size" => {
                    spec.size = Some(parse_volume_size(value)?);
                    size_input = Some(value.as_str());
                }
                "pool" => {
                    validate_pool_name("pool", value)?;
                    spec.pool = Some(value.clone());
                }
                "namespace" => {
                    validate_namespace(value)?;
                    spec.namespace = Some(value.clone());
                }
                "data-pool" => {
                    validate_pool_name("data-pool", value)?;
                    spec.data_pool = Some(value.clone());
                }
                "fstype" => {
                    spec.fstype = Some(value.parse().map_err(|e: fs_format::Error| {
                        DriverError::invalid("fstype", value, e.to_string())
                    })?)
                }
                "features" => spec.features = Some(parse_features(value)?),
                "object-size" => spec.object_size = Some(parse_object_size(value)?),
                "mkfs-options" => {
                    spec.mkfs_options = Some(value.split_whitespace().map(str::to_owned).collect())
                }
                "mount-options" => {
                    spec.mount_options = Some(
                        value
                            .split(',')
                            .map(str::trim)
                            .filter(|s| !s.is_empty())
                            .map(str::to_owned)
                            .collect(),
                    )
                }
                "access" => spec.access = Some(value.parse()?),
                "from-snapshot" => {
                    value.parse::<SnapshotSource>()?;
                    spec.from_snapshot = Some(value.clone());
                }
                _ => return Err(unknown_key(key, false)),
            }
        }
        let fs = spec.fstype.unwrap_or(FsType::Ext4);
        if let Some(m) = &spec.mkfs_options {
            validate_mkfs_options(fs, m)?;
        }
        if let Some(m) = &spec.mount_options {
            validate_mount_options(fs, m)?;
        }
        if let (Some(size), Some(input)) = (spec.size, size_input) {
            check_fs_size(
                input,
                size,
                fs,
                spec.mkfs_options.as_deref().unwrap_or_default(),
            )?;
        }
        Ok(spec)
    }

    /// The parsed [`CreateSpec::from_snapshot`], if set.
    pub fn snapshot_source(&self) -> Result<Option<SnapshotSource>> {
        self.from_snapshot.as_deref().map(str::parse).transpose()
    }

    /// Checks every field that is set (the same checks as [`CreateSpec::from_options`]),
    /// for a spec built in code.
    pub fn validate(&self) -> Result<()> {
        if let Some(p) = &self.pool {
            validate_pool_name("pool", p)?;
        }
        if let Some(n) = &self.namespace {
            validate_namespace(n)?;
        }
        if let Some(s) = self.size {
            check_size(&s.to_string(), s)?;
        }
        if let Some(f) = self.features {
            check_features(&f.to_string(), f)?;
        }
        if let Some(o) = self.object_size {
            check_object_size(&o.to_string(), o)?;
        }
        if let Some(p) = &self.data_pool {
            validate_pool_name("data-pool", p)?;
        }
        self.snapshot_source()?;
        let fs = self.fstype.unwrap_or(FsType::Ext4);
        if let Some(m) = &self.mkfs_options {
            validate_mkfs_options(fs, m)?;
        }
        if let Some(m) = &self.mount_options {
            validate_mount_options(fs, m)?;
        }
        if let Some(s) = self.size {
            check_fs_size(
                &s.to_string(),
                s,
                fs,
                self.mkfs_options.as_deref().unwrap_or_default(),
            )?;
        }
        Ok(())
    }

    /// This spec as `key=value` options (the inverse of [`CreateSpec::from_options`]).
    pub fn to_options(&self) -> BTreeMap<String, String> {
        let mut m = BTreeMap::new();
        let mut put = |k: &str, v: Option<String>| {
            if let Some(v) = v {
                m.insert(k.to_owned(), v);
            }
        };
        put("pool", self.pool.clone());
        put("namespace", self.namespace.clone());
        put("size", self.size.map(|s| format!("{s}B")));
        put("fstype", self.fstype.map(|f| f.to_string()));
        put("features", self.features.map(|f| f.to_string()));
        put("object-size", self.object_size.map(|s| format!("{s}B")));
        put("data-pool", self.data_pool.clone());
        put(
            "mkfs-options",
            self.mkfs_options.as_ref().map(|v| v.join(" ")),
        );
        put(
            "mount-options",
            self.mount_options.as_ref().map(|v| v.join(",")),
        );
        put("access", self.access.map(|a| a.to_string()));
        put("from-snapshot", self.from_snapshot.clone());
        m
    }
}

/// Parses a volume size: a bare number is GiB (`2`, `1.5`), otherwise a size with a unit
/// (`512M`, `2G`, `1T`, `4096B`; binary units, see [`rbd_core::rbd::parse_size`]). The
/// result must be between [`MIN_VOLUME_SIZE`] and [`MAX_VOLUME_SIZE`] and a multiple of
/// 4 KiB. `-1`, `1e99`, `2Q` and the like are rejected with an error naming the value.
pub fn parse_volume_size(s: &str) -> Result<u64> {
    let t = s.trim();
    let bare = !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit() || b == b'.');
    let with_unit = if bare { format!("{t}G") } else { t.to_owned() };
    let bytes = rbd_core::rbd::parse_size(&with_unit).map_err(|e| {
        DriverError::invalid(
            "size",
            s,
            format!(
                "{}; use a number of GiB (2) or a size with a unit (512M, 2G, 1T)",
                reason_of(&e)
            ),
        )
    })?;
    check_size(s, bytes)
}

/// The reason part of an rbd-core InvalidInput error (its Display without the prefix).
fn reason_of(e: &rbd_core::Error) -> String {
    match e {
        rbd_core::Error::InvalidInput { reason, .. } => reason.clone(),
        other => other.to_string(),
    }
}

fn check_size(input: &str, bytes: u64) -> Result<u64> {
    let bad = |reason: String| Err(DriverError::invalid("size", input, reason));
    if bytes < MIN_VOLUME_SIZE {
        return bad(format!("smaller than the minimum of 1 MiB ({bytes} bytes)"));
    }
    if bytes > MAX_VOLUME_SIZE {
        return bad("larger than the maximum of 1 PiB".into());
    }
    if !bytes.is_multiple_of(4096) {
        return bad(format!("{bytes} bytes is not a multiple of 4 KiB"));
    }
    Ok(bytes)
}

/// Parses `object-size`: a size (`4M`, `4194304`) that is a power of two from 4 KiB to
/// 32 MiB. A bare number is bytes here.
pub fn parse_object_size(s: &str) -> Result<u64> {
    let bytes = rbd_core::rbd::parse_size(s)
        .map_err(|e| DriverError::invalid("object-size", s, reason_of(&e)))?;
    check_object_size(s, bytes)
}

fn check_object_size(input: &str, bytes: u64) -> Result<u64> {
    rbd_core::rbd::order_of(bytes)
        .map_err(|e| DriverError::invalid("object-size", input, reason_of(&e)))?;
    Ok(bytes)
}

/// Parses `features`: comma-separated names from [`ALLOWED_FEATURES`]; numbers are
/// refused. exclusive-lock is added; dependencies are checked (`fast-diff` needs
/// `object-map`).
pub fn parse_features(s: &str) -> Result<Features> {
    if s.split(',')
        .any(|n| !n.trim().is_empty() && n.trim().bytes().all(|b| b.is_ascii_digit()))
        || s.trim().starts_with("0x")
    {
        return Err(DriverError::invalid(
            "features",
            s,
            "give feature names (layering,exclusive-lock,...), not a bit mask",
        ));
    }
    let f: Features = s
        .parse()
        .map_err(|e| DriverError::invalid("features", s, reason_of(&e)))?;
    check_features(s, f)
}

fn check_features(input: &str, f: Features) -> Result<Features> {
    let bad = |reason: String| Err(DriverError::invalid("features", input, reason));
    let refused = f.difference(ALLOWED_FEATURES);
    if !refused.is_empty() {
        return bad(format!(
            "not allowed: {refused}; allowed: {}",
            ALLOWED_FEATURES.names().join(", ")
        ));
    }
    let f = f | Features::EXCLUSIVE_LOCK;
    if f.contains(Features::FAST_DIFF) && !f.contains(Features::OBJECT_MAP) {
        return bad("fast-diff needs object-map".into());
    }
    Ok(f)
}

/// Checks that a volume of `size` bytes can hold `fs` made with `mkfs_options`: mkfs
/// refuses devices below [`MkfsArgs::min_size`] (xfs 300 MiB, btrfs 109 MiB), and the
/// failure would only show at the first attach. `input` is the size as the user gave it,
/// for the message.
pub fn check_fs_size(input: &str, size: u64, fs: FsType, mkfs_options: &[String]) -> Result<()> {
    let min = MkfsArgs::parse(fs, mkfs_options)
        .map(|a| a.min_size())
        .unwrap_or_else(|_| fs.min_size());
    if size >= min {
        return Ok(());
    }
    let with = if min > fs.min_size() {
        format!(" with mkfs-options \"{}\"", mkfs_options.join(" "))
    } else {
        String::new()
    };
    Err(DriverError::invalid(
        "size",
        input,
        format!(
            "{} is too small for {fs}: {fs}{with} needs at least {} ({min} bytes); \
             use a larger size or another fstype",
            fs_format::human_size(size),
            fs_format::human_size(min),
        ),
    ))
}

/// Checks extra mkfs arguments against fs-format's allowlist for `fs`.
pub fn validate_mkfs_options(fs: FsType, opts: &[String]) -> Result<()> {
    MkfsArgs::parse(fs, opts)
        .map(|_| ())
        .map_err(|e| DriverError::invalid("mkfs-options", opts.join(" "), e.to_string()))
}

/// Checks mount options against fs-format's allowlist for `fs`; `ro` and `rw` are refused
/// (the access mode decides).
pub fn validate_mount_options(fs: FsType, opts: &[String]) -> Result<()> {
    for o in opts.iter().flat_map(|o| o.split(',')).map(str::trim) {
        if o == "ro" || o == "rw" {
            return Err(DriverError::invalid(
                "mount-options",
                opts.join(","),
                format!("{o:?} is set through the access option (access=rw|ro)"),
            ));
        }
    }
    MountOptions {
        read_only: false,
        options: opts.to_vec(),
    }
    .parse(fs)
    .map(|_| ())
    .map_err(|e| DriverError::invalid("mount-options", opts.join(","), e.to_string()))
}

/// Pool (and data pool) names: 1 to 127 letters, digits, `_`, `.`, `-`, not starting with
/// `.` or `-`.
pub fn validate_pool_name(what: &'static str, name: &str) -> Result<()> {
    validate_simple_name(what, name, 127)
}

/// RADOS namespace names: empty (the default namespace) or like a pool name.
pub fn validate_namespace(name: &str) -> Result<()> {
    if name.is_empty() {
        return Ok(());
    }
    validate_simple_name("namespace", name, 127)
}

/// Snapshot names: 1 to 96 letters, digits, `_`, `.`, `-`, starting with a letter, a
/// digit or `_`.
pub fn validate_snapshot_name(name: &str) -> Result<()> {
    validate_simple_name("snapshot name", name, 96)
}

fn validate_image_name(name: &str) -> Result<()> {
    validate_simple_name("image name", name, 255)
}

fn validate_simple_name(what: &'static str, name: &str, max: usize) -> Result<()> {
    let bad = |reason: String| Err(DriverError::invalid(what, name, reason));
    if name.is_empty() {
        return bad("must not be empty".into());
    }
    if name.len() > max {
        return bad(format!("longer than {max} characters"));
    }
    if !name.as_bytes()[0].is_ascii_alphanumeric() && name.as_bytes()[0] != b'_' {
        return bad("must start with a letter, a digit or '_'".into());
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
    {
        return bad(format!(
            "contains {c:?}; only letters, digits, '_', '.' and '-' are allowed"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_volume_size("2").unwrap(), 2 << 30);
        assert_eq!(parse_volume_size("1.5").unwrap(), 3 << 29);
        assert_eq!(parse_volume_size("512M").unwrap(), 512 << 20);
        assert_eq!(parse_volume_size("2G").unwrap(), 2 << 30);
        assert_eq!(parse_volume_size("1T").unwrap(), 1 << 40);
        for bad in [
            "-1", "1e99", "2Q", "", "0", "G", "4097B", "2E", "1.2.3", " -5G",
        ] {
            let e = parse_volume_size(bad).unwrap_err().to_string();
            assert!(e.contains(&format!("{bad:?}")), "{bad}: {e}");
        }
    }

    #[test]
    fn full_spec_parses() {
        let s = CreateSpec::from_options(&opts(&[
            ("size", "2"),
            ("pool", "rbd"),
            ("namespace", "tenant-a"),
            ("data-pool", "ec_data"),
            ("fstype", "xfs"),
            ("features", "layering,object-map,fast-diff"),
            ("object-size", "1M"),
            ("mkfs-options", "-b size=4096"),
            ("mount-options", "noatime,nodev"),
            ("access", "ro"),
            ("from-snapshot", "golden@v1"),
        ]))
        .unwrap();
        assert_eq!(s.size, Some(2 << 30));
        assert_eq!(s.fstype, Some(FsType::Xfs));
        assert_eq!(
            s.features,
            Some(
                Features::LAYERING
                    | Features::OBJECT_MAP
                    | Features::FAST_DIFF
                    | Features::EXCLUSIVE_LOCK
            )
        );
        assert_eq!(s.object_size, Some(1 << 20));
        assert_eq!(
            s.mkfs_options.as_deref(),
            Some(&["-b".to_string(), "size=4096".into()][..])
        );
        assert_eq!(s.mount_options.as_ref().unwrap().len(), 2);
        assert_eq!(s.access, Some(AccessMode::ReadOnly));
        assert_eq!(
            s.snapshot_source().unwrap(),
            Some(SnapshotSource::Volume {
                volume: "golden".into(),
                snap: "v1".into()
            })
        );
        // Round trip through to_options.
        assert_eq!(CreateSpec::from_options(&s.to_options()).unwrap(), s);
    }

    #[test]
    fn unknown_key_lists_allowed() {
        let e = CreateSpec::from_options(&opts(&[("colour", "blue")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("\"colour\""), "{e}");
        for k in OPTION_KEYS {
            assert!(e.contains(k), "{e} lacks {k}");
        }
    }

    #[test]
    fn bad_values_are_named() {
        for (k, v) in [
            ("fstype", "../../x"),
            ("fstype", "ntfs"),
            ("mount-options", "exec,nobarrier"),
            ("mount-options", "ro"),
            ("mount-options", "errors=panic"),
            ("mkfs-options", "-F"),
            ("mkfs-options", "; rm -rf /"),
            ("features", "operations"),
            ("features", "61"),
            ("features", "fast-diff"),
            ("features", "bogus"),
            ("object-size", "3M"),
            ("object-size", "64M"),
            ("access", "rwx"),
            ("pool", "../etc"),
            ("pool", ""),
            ("namespace", "a/b"),
            ("data-pool", "a b"),
            ("from-snapshot", "novolume"),
            ("from-snapshot", "a/b/c/d@s"),
            ("from-snapshot", "../x@s"),
            ("from-snapshot", "v@"),
        ] {
            let e = CreateSpec::from_options(&opts(&[(k, v)]))
                .unwrap_err()
                .to_string();
            assert!(
                e.contains(&format!("{v:?}")) || e.contains(v),
                "{k}={v}: {e}"
            );
        }
    }

    #[test]
    fn sizes_below_the_fstype_minimum_are_refused() {
        for (kv, min) in [
            (vec![("fstype", "xfs"), ("size", "256M")], "300 MiB"),
            (vec![("fstype", "btrfs"), ("size", "100M")], "109 MiB"),
            (
                vec![
                    ("fstype", "btrfs"),
                    ("size", "200M"),
                    ("mkfs-options", "-d dup"),
                ],
                "229 MiB",
            ),
        ] {
            let e = CreateSpec::from_options(&opts(&kv)).unwrap_err();
            let msg = e.to_string();
            assert!(
                matches!(e, DriverError::InvalidInput { what: "size", .. }),
                "{msg}"
            );
            let size = kv.iter().find(|(k, _)| *k == "size").unwrap().1;
            assert!(msg.contains(&format!("{size:?}")), "{msg}");
            assert!(msg.contains(min), "{msg}");
        }
        CreateSpec::from_options(&opts(&[("fstype", "xfs"), ("size", "300M")])).unwrap();
        CreateSpec::from_options(&opts(&[("size", "16M")])).unwrap();
        // A spec built in code, and node defaults.
        let s = CreateSpec {
            fstype: Some(FsType::Xfs),
            size: Some(64 << 20),
            ..CreateSpec::default()
        };
        assert!(s.validate().unwrap_err().to_string().contains("300 MiB"));
        let e = VolumeDefaults::default()
            .with_options(&opts(&[("fstype", "xfs"), ("size", "256M")]))
            .unwrap_err();
        assert!(e.to_string().contains("300 MiB"), "{e}");
        let d = VolumeDefaults {
            fstype: FsType::Btrfs,
            size: 64 << 20,
            ..VolumeDefaults::default()
        };
        assert!(d.validate().unwrap_err().to_string().contains("109 MiB"));
    }

    #[test]
    fn snapshot_sources() {
        assert_eq!(
            "rbd/img@s1".parse::<SnapshotSource>().unwrap(),
            SnapshotSource::Image {
                pool: "rbd".into(),
                namespace: String::new(),
                image: "img".into(),
                snap: "s1".into()
            }
        );
        let s: SnapshotSource = "p/ns/img@s1".parse().unwrap();
        assert_eq!(s.to_string(), "p/ns/img@s1");
    }

    #[test]
    fn defaults_with_options() {
        let d = VolumeDefaults::default()
            .with_options(&opts(&[
                ("size", "10G"),
                ("fstype", "xfs"),
                ("format-at", "create"),
                ("fsck-on-attach", "true"),
            ]))
            .unwrap();
        assert_eq!(d.size, 10 << 30);
        assert_eq!(d.fstype, FsType::Xfs);
        assert_eq!(d.format_at, FormatAt::Create);
        assert!(d.fsck_on_attach);
        let e = VolumeDefaults::default()
            .with_options(&opts(&[("nope", "1")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("format-at") && e.contains("size"), "{e}");
        assert!(
            VolumeDefaults::default()
                .with_options(&opts(&[("from-snapshot", "a@b")]))
                .is_err()
        );
    }
}
