//! Mounting and unmounting through syscalls, with allowlisted options.

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::Duration;

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};

use crate::mountinfo::{block_dev_number, canonical, mount_at, read_mountinfo, same_device};
use crate::probe::{Probe, probe};
use crate::{Error, FsType};

/// Options for [`mount`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MountOptions {
    /// Mount read-only (`MS_RDONLY`), same as giving `ro`.
    pub read_only: bool,
    /// Mount options as a user would write them: each entry may itself be a
    /// comma-separated list (`"noatime,discard"`). Checked by [`parse_mount_options`].
    pub options: Vec<String>,
}

impl MountOptions {
    /// Validate and split these options for `fs` (see [`parse_mount_options`]).
    pub fn parse(&self, fs: FsType) -> Result<ParsedMountOptions, Error> {
        let mut opts: Vec<&str> = Vec::with_capacity(self.options.len() + 1);
        if self.read_only {
            opts.push("ro");
        }
        opts.extend(self.options.iter().map(String::as_str));
        parse_mount_options(fs, &opts)
    }
}

/// Mount options split the way `mount(2)` takes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedMountOptions {
    /// Generic VFS flags (`ro`, `nosuid`, `nodev`, `noexec`, atime, `sync`, ...).
    pub flags: MsFlags,
    /// The filesystem-specific data string (`data=ordered,discard`), possibly empty.
    pub data: String,
}

impl ParsedMountOptions {
    /// Whether `MS_RDONLY` is set.
    pub fn read_only(&self) -> bool {
        self.flags.contains(MsFlags::MS_RDONLY)
    }

    /// The options as one readable `mount -o` style string.
    pub fn to_option_string(&self) -> String {
        let mut parts: Vec<&str> = vec![if self.read_only() { "ro" } else { "rw" }];
        parts.extend(GENERIC.iter().filter_map(|g| {
            g.flag
                .filter(|f| *f != MsFlags::MS_RDONLY && self.flags.contains(*f))
                .map(|_| g.name)
        }));
        if !self.data.is_empty() {
            parts.push(&self.data);
        }
        parts.join(",")
    }
}

/// A generic (VFS) mount option.
struct Generic {
    name: &'static str,
    /// The flag it sets; `None` for options that only state the default (`rw`, `suid`).
    flag: Option<MsFlags>,
    /// Options in one group are mutually exclusive.
    group: &'static str,
}

const fn g(name: &'static str, flag: Option<MsFlags>, group: &'static str) -> Generic {
    Generic { name, flag, group }
}

const GENERIC: &[Generic] = &[
    g("ro", Some(MsFlags::MS_RDONLY), "rw"),
    g("rw", None, "rw"),
    g("nosuid", Some(MsFlags::MS_NOSUID), "suid"),
    g("suid", None, "suid"),
    g("nodev", Some(MsFlags::MS_NODEV), "dev"),
    g("dev", None, "dev"),
    g("noexec", Some(MsFlags::MS_NOEXEC), "exec"),
    g("exec", None, "exec"),
    g("noatime", Some(MsFlags::MS_NOATIME), "atime"),
    g("relatime", Some(MsFlags::MS_RELATIME), "atime"),
    g("strictatime", Some(MsFlags::MS_STRICTATIME), "atime"),
    g("nodiratime", Some(MsFlags::MS_NODIRATIME), "diratime"),
    g("lazytime", Some(MsFlags::MS_LAZYTIME), "lazytime"),
    g("sync", Some(MsFlags::MS_SYNCHRONOUS), "sync"),
    g("async", None, "sync"),
    g("dirsync", Some(MsFlags::MS_DIRSYNC), "dirsync"),
    g("defaults", None, ""),
];

/// How a filesystem-specific option's value is checked.
#[derive(Clone, Copy)]
enum Value {
    /// No `=value`.
    Flag,
    /// One of these exact values.
    OneOf(&'static [&'static str]),
    /// A decimal integer in this range.
    Uint(u64, u64),
    /// A size (`64k`, `1m` or plain bytes) that is a power of two in this range.
    Pow2Size(u64, u64),
    /// Checked by a function returning the reason for rejection.
    Check(fn(&str) -> Result<(), String>),
}

/// A filesystem-specific option.
#[derive(Clone, Copy)]
struct Spec {
    name: &'static str,
    value: Value,
    /// Options in one group are mutually exclusive; `""` means its own name.
    group: &'static str,
    /// Only allowed together with `ro`.
    ro_only: bool,
}

const fn s(name: &'static str, value: Value, group: &'static str) -> Spec {
    Spec {
        name,
        value,
        group,
        ro_only: false,
    }
}

const fn flag(name: &'static str, group: &'static str) -> Spec {
    s(name, Value::Flag, group)
}

const fn ro_only(name: &'static str, value: Value, group: &'static str) -> Spec {
    Spec {
        name,
        value,
        group,
        ro_only: true,
    }
}

const EXT4: &[Spec] = &[
    s(
        "data",
        Value::OneOf(&["ordered", "writeback", "journal"]),
        "data",
    ),
    flag("barrier", "barrier"),
    s("barrier", Value::OneOf(&["1"]), "barrier"),
    flag("discard", "discard"),
    flag("nodiscard", "discard"),
    s("commit", Value::Uint(1, 300), "commit"),
    s(
        "errors",
        Value::OneOf(&["remount-ro", "continue"]),
        "errors",
    ),
    flag("journal_checksum", "journal_checksum"),
    flag("nojournal_checksum", "journal_checksum"),
    flag("journal_async_commit", "journal_async_commit"),
    flag("delalloc", "delalloc"),
    flag("nodelalloc", "delalloc"),
    flag("auto_da_alloc", "auto_da_alloc"),
    flag("noauto_da_alloc", "auto_da_alloc"),
    flag("dioread_nolock", "dioread"),
    flag("dioread_lock", "dioread"),
    flag("init_itable", "init_itable"),
    s("init_itable", Value::Uint(0, 1000), "init_itable"),
    flag("noinit_itable", "init_itable"),
    s("stripe", Value::Uint(1, u32::MAX as u64), "stripe"),
    flag("block_validity", "block_validity"),
    flag("noblock_validity", "block_validity"),
    s(
        "inode_readahead_blks",
        Value::Check(pow2_count),
        "inode_readahead_blks",
    ),
    flag("user_xattr", "user_xattr"),
    flag("acl", "acl"),
    flag("noacl", "acl"),
    flag("quota", "quota"),
    flag("usrquota", "usrquota"),
    flag("grpquota", "grpquota"),
    flag("prjquota", "prjquota"),
    flag("noquota", "quota"),
    ro_only("noload", Value::Flag, "recovery"),
    ro_only("norecovery", Value::Flag, "recovery"),
];

const XFS: &[Spec] = &[
    flag("discard", "discard"),
    flag("nodiscard", "discard"),
    flag("inode64", "inode"),
    flag("inode32", "inode"),
    flag("largeio", "largeio"),
    flag("nolargeio", "largeio"),
    flag("wsync", "wsync"),
    flag("swalloc", "swalloc"),
    flag("nouuid", "nouuid"),
    flag("noalign", "noalign"),
    flag("filestreams", "filestreams"),
    s("logbufs", Value::Uint(2, 8), "logbufs"),
    s("logbsize", Value::Pow2Size(16 << 10, 256 << 10), "logbsize"),
    s("allocsize", Value::Pow2Size(4 << 10, 1 << 30), "allocsize"),
    s("sunit", Value::Uint(1, u32::MAX as u64), "sunit"),
    s("swidth", Value::Uint(1, u32::MAX as u64), "swidth"),
    flag("uquota", "uquota"),
    flag("usrquota", "uquota"),
    flag("quota", "uquota"),
    flag("uqnoenforce", "uquota"),
    flag("qnoenforce", "uquota"),
    flag("gquota", "gquota"),
    flag("grpquota", "gquota"),
    flag("gqnoenforce", "gquota"),
    flag("pquota", "pquota"),
    flag("prjquota", "pquota"),
    flag("pqnoenforce", "pquota"),
    flag("noquota", "noquota"),
    ro_only("norecovery", Value::Flag, "recovery"),
];

const BTRFS: &[Spec] = &[
    flag("compress", "compress"),
    s("compress", Value::Check(btrfs_compress), "compress"),
    flag("compress-force", "compress"),
    s("compress-force", Value::Check(btrfs_compress), "compress"),
    flag("ssd", "ssd"),
    flag("nossd", "ssd"),
    flag("ssd_spread", "ssd_spread"),
    flag("nossd_spread", "ssd_spread"),
    flag("autodefrag", "autodefrag"),
    flag("noautodefrag", "autodefrag"),
    flag("discard", "discard"),
    s("discard", Value::OneOf(&["sync", "async"]), "discard"),
    flag("nodiscard", "discard"),
    s("space_cache", Value::OneOf(&["v2"]), "space_cache"),
    s("commit", Value::Uint(1, 300), "commit"),
    flag("datacow", "datacow"),
    flag("nodatacow", "datacow"),
    flag("datasum", "datasum"),
    flag("nodatasum", "datasum"),
    s("subvol", Value::Check(btrfs_subvol), "subvol"),
    s("subvolid", Value::Uint(5, u64::MAX), "subvolid"),
    flag("flushoncommit", "flushoncommit"),
    flag("noflushoncommit", "flushoncommit"),
    s("max_inline", Value::Check(size_any), "max_inline"),
    s("thread_pool", Value::Uint(1, 1024), "thread_pool"),
    flag("skip_balance", "skip_balance"),
    flag("user_subvol_rm_allowed", "user_subvol_rm_allowed"),
    flag("barrier", "barrier"),
    ro_only("rescue", Value::OneOf(&["nologreplay"]), "recovery"),
    ro_only("norecovery", Value::Flag, "recovery"),
];

fn specs(fs: FsType) -> &'static [Spec] {
    match fs {
        FsType::Ext4 => EXT4,
        FsType::Xfs => XFS,
        FsType::Btrfs => BTRFS,
    }
}

/// Options that are refused outright, with the reason.
fn denied(fs: FsType, key: &str, value: Option<&str>) -> Option<&'static str> {
    const NO_BARRIER: &str =
        "disabling write barriers risks losing or corrupting data on a crash or power loss";
    match (key, value) {
        ("nobarrier", _) | ("barrier", Some("0")) => Some(NO_BARRIER),
        ("errors", Some("panic")) if fs == FsType::Ext4 => {
            Some("errors=panic would crash the whole host on a filesystem error")
        }
        (
            "auto" | "noauto" | "user" | "nouser" | "users" | "owner" | "group" | "nofail"
            | "_netdev" | "loop" | "offset" | "sizelimit",
            _,
        ) => Some("it is an fstab/mount(8) option, not a kernel mount option"),
        _ if key.starts_with("x-") => {
            Some("it is an fstab/mount(8) option, not a kernel mount option")
        }
        (
            "remount" | "bind" | "rbind" | "move" | "shared" | "private" | "slave" | "unbindable"
            | "rshared" | "rprivate" | "rslave" | "runbindable",
            _,
        ) => Some("mount operations and propagation are not set through volume mount options"),
        _ => None,
    }
}

/// Validate user mount options for `fs` against an allowlist and split them into generic
/// `MsFlags` and the filesystem's data string.
///
/// Each entry may be a comma-separated list. Generic options: `ro`, `rw`, `nosuid`,
/// `nodev`, `noexec` (and their defaults `suid`, `dev`, `exec`), `noatime`, `relatime`,
/// `strictatime`, `nodiratime`, `lazytime`, `sync`, `async`, `dirsync`, `defaults`.
/// Filesystem-specific options are allowlisted per type with checked values (e.g. ext4
/// `data=ordered|writeback|journal`, `commit=1..300`, `errors=remount-ro|continue`; xfs
/// `logbufs=2..8`, `nouuid`, quota options; btrfs `compress=zstd:3`, `subvol=...`,
/// `discard=async`). `discard`/`nodiscard` are allowed everywhere. `nobarrier`,
/// `barrier=0` and `errors=panic` are always refused. Recovery-skipping options (`noload`,
/// `norecovery`, `rescue=nologreplay`) require `ro`. Contradictory options (`ro,rw`,
/// `noatime,relatime`, `discard,nodiscard`) are refused; exact repeats are merged.
///
/// Every rejection is [`Error::InvalidMountOption`] naming the offending option.
pub fn parse_mount_options<S: AsRef<str>>(
    fs: FsType,
    options: &[S],
) -> Result<ParsedMountOptions, Error> {
    let bad = |option: &str, reason: String| Error::InvalidMountOption {
        fs,
        option: option.to_owned(),
        reason,
    };
    let mut flags = MsFlags::empty();
    let mut data: Vec<&str> = Vec::new();
    // group -> the option that claimed it
    let mut groups: HashMap<&str, &str> = HashMap::new();
    let mut needs_ro: Option<&str> = None;

    for token in options
        .iter()
        .flat_map(|o| o.as_ref().split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
    {
        let (key, value) = match token.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (token, None),
        };
        if let Some(reason) = denied(fs, key, value) {
            return Err(bad(token, reason.into()));
        }
        if !key
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
        {
            return Err(bad(
                token,
                "option names are lower-case letters, digits, `_` and `-`".into(),
            ));
        }
        // Whether `token` is new in `group` (false for an exact repeat); a different option
        // already in the group is a conflict.
        let claim = |groups: &HashMap<&str, &str>, group: &str, token: &str| {
            if group.is_empty() {
                return Ok(true);
            }
            match groups.get(group) {
                Some(prev) if *prev == token => Ok(false),
                Some(prev) => Err(bad(token, format!("conflicts with `{prev}`"))),
                None => Ok(true),
            }
        };

        if let Some(generic) = GENERIC.iter().find(|g| g.name == token) {
            if claim(&groups, generic.group, token)? {
                if !generic.group.is_empty() {
                    groups.insert(generic.group, generic.name);
                }
                if let Some(f) = generic.flag {
                    flags |= f;
                }
            }
            continue;
        }
        if GENERIC.iter().any(|g| g.name == key) {
            return Err(bad(token, format!("`{key}` takes no value")));
        }

        let candidates: Vec<&Spec> = specs(fs).iter().filter(|s| s.name == key).collect();
        if candidates.is_empty() {
            return Err(bad(
                token,
                format!(
                    "not in the allowlist for {fs} mounts (allowed: {})",
                    allowed_names(fs)
                ),
            ));
        }
        let spec = match value {
            None => candidates.iter().find(|s| matches!(s.value, Value::Flag)),
            Some(_) => candidates.iter().find(|s| !matches!(s.value, Value::Flag)),
        };
        let Some(spec) = spec else {
            return Err(bad(
                token,
                if value.is_some() {
                    format!("`{key}` takes no value")
                } else {
                    format!("`{key}` needs a value")
                },
            ));
        };
        if let Some(v) = value {
            check_value(spec.value, v).map_err(|reason| bad(token, reason))?;
        }
        let group = if spec.group.is_empty() {
            spec.name
        } else {
            spec.group
        };
        if claim(&groups, group, token)? {
            groups.insert(group, token);
            data.push(token);
        }
        if spec.ro_only && needs_ro.is_none() {
            needs_ro = Some(token);
        }
    }

    if let Some(opt) = needs_ro
        && !flags.contains(MsFlags::MS_RDONLY)
    {
        return Err(bad(
            opt,
            "it skips journal/log recovery and is only allowed on read-only (ro) mounts".into(),
        ));
    }
    Ok(ParsedMountOptions {
        flags,
        data: data.join(","),
    })
}

fn allowed_names(fs: FsType) -> String {
    let mut names: Vec<&str> = GENERIC.iter().map(|g| g.name).collect();
    for s in specs(fs) {
        if !names.contains(&s.name) {
            names.push(s.name);
        }
    }
    names.join(", ")
}

fn check_value(v: Value, value: &str) -> Result<(), String> {
    match v {
        Value::Flag => Err("takes no value".into()),
        Value::OneOf(allowed) => {
            if allowed.contains(&value) {
                Ok(())
            } else {
                Err(format!("value must be one of: {}", allowed.join(", ")))
            }
        }
        Value::Uint(min, max) => match parse_uint(value) {
            Some(n) if (min..=max).contains(&n) => Ok(()),
            _ => Err(format!("value must be an integer from {min} to {max}")),
        },
        Value::Pow2Size(min, max) => match parse_size(value) {
            Some(n) if n.is_power_of_two() && (min..=max).contains(&n) => Ok(()),
            _ => Err(format!(
                "value must be a power-of-two size from {} to {} (e.g. 64k)",
                human(min),
                human(max)
            )),
        },
        Value::Check(f) => f(value),
    }
}

/// A plain decimal integer (no sign, no leading `+`, no hex).
pub(crate) fn parse_uint(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 20 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// A size: decimal bytes with an optional `k`, `m`, `g` or `t` suffix (powers of 1024).
pub(crate) fn parse_size(s: &str) -> Option<u64> {
    let (num, shift) = match s.as_bytes().last()?.to_ascii_lowercase() {
        b'k' => (&s[..s.len() - 1], 10),
        b'm' => (&s[..s.len() - 1], 20),
        b'g' => (&s[..s.len() - 1], 30),
        b't' => (&s[..s.len() - 1], 40),
        _ => (s, 0),
    };
    parse_uint(num)?.checked_mul(1u64 << shift)
}

fn human(n: u64) -> String {
    match n {
        n if n >= 1 << 30 && n % (1 << 30) == 0 => format!("{}g", n >> 30),
        n if n >= 1 << 20 && n % (1 << 20) == 0 => format!("{}m", n >> 20),
        n if n >= 1 << 10 && n % (1 << 10) == 0 => format!("{}k", n >> 10),
        n => n.to_string(),
    }
}

fn pow2_count(v: &str) -> Result<(), String> {
    match parse_uint(v) {
        Some(n) if n == 0 || (n.is_power_of_two() && n <= 1 << 30) => Ok(()),
        _ => Err("value must be 0 or a power of two up to 2^30".into()),
    }
}

fn size_any(v: &str) -> Result<(), String> {
    match parse_size(v) {
        Some(n) if n <= 1 << 30 => Ok(()),
        _ => Err("value must be a size such as 2048 or 4k".into()),
    }
}

fn btrfs_compress(v: &str) -> Result<(), String> {
    let (alg, level) = match v.split_once(':') {
        Some((a, l)) => (a, Some(l)),
        None => (v, None),
    };
    let range = match alg {
        "zlib" => 1..=9,
        "zstd" => 1..=15,
        "lzo" | "no" | "none" if level.is_none() => return Ok(()),
        _ => {
            return Err("value must be zlib[:1-9], zstd[:1-15], lzo, no or none".into());
        }
    };
    match level {
        None => Ok(()),
        Some(l) => match parse_uint(l) {
            Some(n) if range.contains(&n) => Ok(()),
            _ => Err(format!(
                "{alg} level must be from {} to {}",
                range.start(),
                range.end()
            )),
        },
    }
}

fn btrfs_subvol(v: &str) -> Result<(), String> {
    let ok_chars = v
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"._-/@+".contains(&b));
    if v.is_empty() || v.len() > 255 || !ok_chars {
        return Err("subvolume path must be 1-255 characters from A-Z a-z 0-9 . _ - / @ +".into());
    }
    if v.split('/').any(|c| c == "..") {
        return Err("subvolume path must not contain `..`".into());
    }
    Ok(())
}

/// What [`mount`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MountOutcome {
    /// The filesystem was mounted.
    Mounted,
    /// The same device was already mounted there with the same read-only state; nothing
    /// was done (mount is idempotent).
    AlreadyMounted,
}

/// Mount `device` on the existing directory `target` as `fs`, through `mount(2)`.
///
/// Options are validated by [`MountOptions::parse`] first. If `target` is already a
/// mountpoint of the same device with the same read-only state this returns
/// [`MountOutcome::AlreadyMounted`]; any other mount there is [`Error::AlreadyMounted`].
///
/// When [`probe`] recognises a different filesystem on `device` the mount is refused with
/// [`Error::FsTypeMismatch`] (ext2/ext3 count as ext4).
///
/// A read-only mount of a filesystem with a dirty journal still replays the journal
/// (writing to the device) unless `noload`/`norecovery` is given.
pub fn mount(
    device: impl AsRef<Path>,
    target: impl AsRef<Path>,
    fs: FsType,
    options: &MountOptions,
) -> Result<MountOutcome, Error> {
    let (device, target) = (device.as_ref(), target.as_ref());
    let parsed = options.parse(fs)?;
    let target_canon = canonical(target)?.ok_or_else(|| Error::Io {
        action: "find mountpoint",
        path: target.to_owned(),
        source: std::io::ErrorKind::NotFound.into(),
    })?;
    if let Some(m) = mount_at(&read_mountinfo()?, &target_canon) {
        let dev_canon = canonical(device)?.unwrap_or_else(|| device.to_owned());
        if same_device(m, &dev_canon, block_dev_number(&dev_canon))
            && m.is_read_only() == parsed.read_only()
        {
            return Ok(MountOutcome::AlreadyMounted);
        }
        return Err(Error::AlreadyMounted {
            target: target_canon,
            device: m.source.to_string_lossy().into_owned(),
            read_only: m.is_read_only(),
        });
    }
    // The kernel answers a type mismatch with a bare EINVAL; say what is there instead.
    // Anything probe cannot identify is left for the kernel to judge.
    if let Ok(Probe::Filesystem(info)) = probe(device)
        && info.kind.fs_type() != fs
    {
        return Err(Error::FsTypeMismatch {
            path: device.to_owned(),
            expected: fs,
            found: info.kind.to_string(),
        });
    }
    let data = (!parsed.data.is_empty()).then_some(parsed.data.as_str());
    nix::mount::mount(
        Some(device),
        &target_canon,
        Some(fs.as_str()),
        parsed.flags,
        data,
    )
    .map_err(|source| Error::Mount {
        device: device.to_owned(),
        target: target_canon,
        fs,
        options: parsed.to_option_string(),
        source,
    })?;
    Ok(MountOutcome::Mounted)
}

/// Options for [`unmount_with`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnmountOptions {
    /// How many more times to try a normal unmount after `EBUSY` before falling back.
    pub busy_retries: u32,
    /// The pause between those tries.
    pub retry_delay: Duration,
    /// After the retries, detach lazily (`MNT_DETACH`) instead of failing with `EBUSY`.
    pub lazy_fallback: bool,
}

impl Default for UnmountOptions {
    /// Two retries 100 ms apart, then lazy detach.
    fn default() -> Self {
        UnmountOptions {
            busy_retries: 2,
            retry_delay: Duration::from_millis(100),
            lazy_fallback: true,
        }
    }
}

/// How an unmount went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnmountOutcome {
    /// A normal unmount succeeded: the filesystem is clean and the device is free.
    Unmounted,
    /// The filesystem was busy and was detached lazily (`MNT_DETACH`): it is gone from the
    /// namespace but stays active, and the device stays in use, until the last open file
    /// on it is closed.
    LazilyDetached,
    /// Nothing was mounted there.
    NotMounted,
}

/// The result of [`unmount`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnmountReport {
    /// The mountpoint (symlinks resolved).
    pub target: PathBuf,
    /// The mount source that was there (the device), when something was mounted.
    pub device: Option<OsString>,
    /// What happened.
    pub outcome: UnmountOutcome,
}

/// Unmount `target` with the default [`UnmountOptions`]: a normal `umount2(2)`, retried
/// briefly on `EBUSY`, then a lazy detach (`MNT_DETACH`). The report says which happened.
/// Not being mounted is not an error ([`UnmountOutcome::NotMounted`]).
pub fn unmount(target: impl AsRef<Path>) -> Result<UnmountReport, Error> {
    unmount_with(target, &UnmountOptions::default())
}

/// [`unmount`] with explicit options.
pub fn unmount_with(
    target: impl AsRef<Path>,
    options: &UnmountOptions,
) -> Result<UnmountReport, Error> {
    let target = target.as_ref();
    let not_mounted = |t: PathBuf| UnmountReport {
        target: t,
        device: None,
        outcome: UnmountOutcome::NotMounted,
    };
    let Some(canon) = canonical(target)? else {
        return Ok(not_mounted(target.to_owned()));
    };
    let Some(m) = mount_at(&read_mountinfo()?, &canon).cloned() else {
        return Ok(not_mounted(canon));
    };
    let report = |outcome| UnmountReport {
        target: canon.clone(),
        device: Some(m.source.clone()),
        outcome,
    };

    let mut tries = 0;
    loop {
        match nix::mount::umount2(&canon, MntFlags::UMOUNT_NOFOLLOW) {
            Ok(()) => return Ok(report(UnmountOutcome::Unmounted)),
            Err(Errno::EBUSY) if tries < options.busy_retries => {
                tries += 1;
                thread::sleep(options.retry_delay);
            }
            Err(Errno::EBUSY) if options.lazy_fallback => break,
            // Raced with another unmount.
            Err(Errno::EINVAL) if mount_at(&read_mountinfo()?, &canon).is_none() => {
                return Ok(report(UnmountOutcome::NotMounted));
            }
            Err(source) => {
                return Err(Error::Unmount {
                    target: canon,
                    lazy: false,
                    source,
                });
            }
        }
    }
    nix::mount::umount2(&canon, MntFlags::MNT_DETACH | MntFlags::UMOUNT_NOFOLLOW).map_err(
        |source| Error::Unmount {
            target: canon.clone(),
            lazy: true,
            source,
        },
    )?;
    Ok(report(UnmountOutcome::LazilyDetached))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(fs: FsType, opts: &[&str]) -> ParsedMountOptions {
        parse_mount_options(fs, opts).unwrap_or_else(|e| panic!("{opts:?}: {e}"))
    }

    fn rejected(fs: FsType, opts: &[&str]) -> (String, String) {
        match parse_mount_options(fs, opts) {
            Err(Error::InvalidMountOption { option, reason, .. }) => (option, reason),
            other => panic!("{opts:?} was not rejected: {other:?}"),
        }
    }

    #[test]
    fn splits_generic_flags_from_data() {
        let p = ok(
            FsType::Ext4,
            &["ro,nosuid,nodev", "noexec", "noatime,data=journal,discard"],
        );
        assert_eq!(
            p.flags,
            MsFlags::MS_RDONLY
                | MsFlags::MS_NOSUID
                | MsFlags::MS_NODEV
                | MsFlags::MS_NOEXEC
                | MsFlags::MS_NOATIME
        );
        assert_eq!(p.data, "data=journal,discard");
        assert!(p.read_only());
        assert_eq!(
            p.to_option_string(),
            "ro,nosuid,nodev,noexec,noatime,data=journal,discard"
        );

        let p = ok(
            FsType::Xfs,
            &["relatime,nouuid,logbufs=8,logbsize=256k,nodiscard"],
        );
        assert_eq!(p.flags, MsFlags::MS_RELATIME);
        assert_eq!(p.data, "nouuid,logbufs=8,logbsize=256k,nodiscard");

        let p = ok(
            FsType::Btrfs,
            &["compress=zstd:3,discard=async,subvol=@data/v1,ssd"],
        );
        assert_eq!(p.data, "compress=zstd:3,discard=async,subvol=@data/v1,ssd");

        let p = ok(FsType::Ext4, &[]);
        assert_eq!(p.flags, MsFlags::empty());
        assert_eq!(p.data, "");
        assert_eq!(p.to_option_string(), "rw");
    }

    #[test]
    fn defaults_and_repeats_merge() {
        let p = ok(
            FsType::Ext4,
            &["defaults,noatime,noatime,discard", "discard,,"],
        );
        assert_eq!(p.flags, MsFlags::MS_NOATIME);
        assert_eq!(p.data, "discard");
    }

    #[test]
    fn read_only_field_sets_rdonly_and_conflicts_with_rw() {
        let o = MountOptions {
            read_only: true,
            options: vec!["noatime".into()],
        };
        assert!(o.parse(FsType::Xfs).unwrap().read_only());
        let o = MountOptions {
            read_only: true,
            options: vec!["rw".into()],
        };
        match o.parse(FsType::Xfs) {
            Err(Error::InvalidMountOption { option, reason, .. }) => {
                assert_eq!(option, "rw");
                assert_eq!(reason, "conflicts with `ro`");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn rejects_with_the_bad_option_named() {
        let (o, r) = rejected(FsType::Ext4, &["noatime,nobarrier"]);
        assert_eq!(o, "nobarrier");
        assert!(r.contains("barriers"), "{r}");
        assert_eq!(rejected(FsType::Ext4, &["barrier=0"]).0, "barrier=0");
        assert_eq!(rejected(FsType::Xfs, &["nobarrier"]).0, "nobarrier");
        assert_eq!(rejected(FsType::Ext4, &["errors=panic"]).0, "errors=panic");

        let (o, r) = rejected(FsType::Xfs, &["data=ordered"]);
        assert_eq!(o, "data=ordered");
        assert!(r.starts_with("not in the allowlist for xfs mounts"), "{r}");
        assert!(r.contains("nouuid"), "{r}");

        let (o, r) = rejected(FsType::Ext4, &["data=bogus"]);
        assert_eq!(o, "data=bogus");
        assert_eq!(r, "value must be one of: ordered, writeback, journal");

        let (o, r) = rejected(FsType::Ext4, &["noatime,relatime"]);
        assert_eq!(
            (o.as_str(), r.as_str()),
            ("relatime", "conflicts with `noatime`")
        );
        assert_eq!(
            rejected(FsType::Ext4, &["discard,nodiscard"]).0,
            "nodiscard"
        );
        assert_eq!(
            rejected(FsType::Ext4, &["data=ordered,data=writeback"]).0,
            "data=writeback"
        );

        assert_eq!(rejected(FsType::Ext4, &["commit=0"]).0, "commit=0");
        assert_eq!(rejected(FsType::Ext4, &["commit=-1"]).0, "commit=-1");
        assert_eq!(
            rejected(FsType::Ext4, &["commit"]).1,
            "`commit` needs a value"
        );
        assert_eq!(
            rejected(FsType::Ext4, &["discard=1"]).1,
            "`discard` takes no value"
        );
        assert_eq!(rejected(FsType::Ext4, &["ro=1"]).1, "`ro` takes no value");
        assert_eq!(rejected(FsType::Xfs, &["logbsize=100k"]).0, "logbsize=100k");
        assert_eq!(
            rejected(FsType::Btrfs, &["compress=zstd:99"]).0,
            "compress=zstd:99"
        );
        assert_eq!(rejected(FsType::Btrfs, &["compress=lz4"]).0, "compress=lz4");
        assert_eq!(rejected(FsType::Btrfs, &["subvol=../x"]).0, "subvol=../x");
        assert_eq!(rejected(FsType::Btrfs, &["degraded"]).0, "degraded");
        assert_eq!(rejected(FsType::Ext4, &["nofail"]).0, "nofail");
        assert_eq!(
            rejected(FsType::Ext4, &["x-systemd.automount"]).0,
            "x-systemd.automount"
        );
        assert_eq!(rejected(FsType::Ext4, &["bind"]).0, "bind");
        assert_eq!(rejected(FsType::Ext4, &["NoAtime"]).0, "NoAtime");
        assert_eq!(
            rejected(FsType::Ext4, &["data=ordered;rm"]).0,
            "data=ordered;rm"
        );
    }

    #[test]
    fn recovery_skipping_needs_ro() {
        let (o, r) = rejected(FsType::Ext4, &["noload"]);
        assert_eq!(o, "noload");
        assert!(r.contains("read-only"), "{r}");
        assert_eq!(ok(FsType::Ext4, &["ro,noload"]).data, "noload");
        assert_eq!(ok(FsType::Xfs, &["norecovery,ro"]).data, "norecovery");
        assert_eq!(
            ok(FsType::Btrfs, &["ro", "rescue=nologreplay"]).data,
            "rescue=nologreplay"
        );
        assert_eq!(
            rejected(FsType::Btrfs, &["rescue=nologreplay"]).0,
            "rescue=nologreplay"
        );
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64k"), Some(64 << 10));
        assert_eq!(parse_size("1M"), Some(1 << 20));
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("k"), None);
        assert_eq!(parse_size("-1"), None);
        assert_eq!(parse_size("99999999999999t"), None);
        assert_eq!(parse_uint("+1"), None);
        assert_eq!(parse_uint(""), None);
    }

    proptest::proptest! {
        /// Whatever goes in, the data string only ever holds allowlisted option names and
        /// never a generic flag, and parsing never panics.
        #[test]
        fn data_only_holds_allowlisted_names(
            tokens in proptest::collection::vec("[a-z_=0-9:,-]{0,16}", 0..6),
            fs in proptest::sample::select(FsType::ALL.to_vec()),
        ) {
            if let Ok(p) = parse_mount_options(fs, &tokens) {
                for opt in p.data.split(',').filter(|o| !o.is_empty()) {
                    let key = opt.split('=').next().unwrap();
                    proptest::prop_assert!(specs(fs).iter().any(|s| s.name == key), "{opt}");
                    proptest::prop_assert!(key != "nobarrier");
                }
            }
        }

        #[test]
        fn every_allowlisted_flag_is_accepted_alone(idx in 0usize..64, fs in proptest::sample::select(FsType::ALL.to_vec())) {
            let flags: Vec<&Spec> = specs(fs).iter().filter(|s| matches!(s.value, Value::Flag)).collect();
            let spec = flags[idx % flags.len()];
            let opts = if spec.ro_only { vec!["ro", spec.name] } else { vec![spec.name] };
            let p = parse_mount_options(fs, &opts).unwrap();
            proptest::prop_assert_eq!(p.data, spec.name);
        }
    }
}
