//! Creating filesystems, with validated user options.

use std::ffi::OsString;
use std::fs::OpenOptions;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;
use std::time::Duration;

use crate::cmd::{CommandOutput, run_checked};
use crate::mount::{parse_size, parse_uint};
use crate::mountinfo::mounts_of_device;
use crate::probe::{FsInfo, Probe, probe};
use crate::{Error, FsType};

/// Options for [`mkfs`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MkfsOptions {
    /// Filesystem label (`-L`); see [`validate_label`] for the rules.
    pub label: Option<String>,
    /// Extra user options, one argv word each (`["-b", "4096", "-m", "1"]`), or use
    /// [`MkfsOptions::with_extra_str`] to split a string on whitespace. They are checked
    /// by [`MkfsArgs::parse`] before anything runs.
    pub extra: Vec<String>,
    /// Create the filesystem even if [`probe`] finds a filesystem, partition table or data
    /// on the device. Never overrides the mounted/in-use check.
    pub force: bool,
    /// Discard (TRIM) the whole device while creating the filesystem. Off by default: on a
    /// thin-provisioned RBD image a fresh image is already unallocated, and discarding
    /// every object is slow.
    pub discard: bool,
    /// Kill mkfs if it runs longer than this.
    pub timeout: Duration,
}

impl Default for MkfsOptions {
    /// No label, no extra options, no force, no discard, 10 minute timeout.
    fn default() -> Self {
        MkfsOptions {
            label: None,
            extra: Vec::new(),
            force: false,
            discard: false,
            timeout: Duration::from_secs(600),
        }
    }
}

impl MkfsOptions {
    /// Set [`MkfsOptions::extra`] from a whitespace-separated string such as
    /// `"-b 4096 -m 1"` (no quoting; labels with spaces are not allowed anyway).
    pub fn with_extra_str(mut self, extra: &str) -> Self {
        self.extra = extra.split_whitespace().map(str::to_owned).collect();
        self
    }
}

/// A feature to switch on (`name`) or off (`^name`), for ext4 and btrfs `-O`, and xfs
/// `-m name=1|0`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Feature {
    /// Feature name (`metadata_csum`, `no-holes`, `reflink`).
    pub name: String,
    /// On or off.
    pub enabled: bool,
}

/// An allowed `mkfs.ext4` option.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ext4Option {
    /// `-b 1024|2048|4096`: block size.
    BlockSize(u32),
    /// `-m 0..50`: percent of blocks reserved for root.
    ReservedPercent(u8),
    /// `-i 1024..67108864`: bytes per inode.
    BytesPerInode(u32),
    /// `-I 128|256|512|1024`: inode size.
    InodeSize(u32),
    /// `-N N`: number of inodes.
    InodeCount(u32),
    /// `-L label`.
    Label(String),
    /// `-O feature,^feature`: features (charset `a-z 0-9 _`).
    Features(Vec<Feature>),
    /// `-T type`: usage type from mke2fs.conf (`default`, `small`, `big`, `huge`, `news`,
    /// `largefile`, `largefile4`).
    UsageType(String),
    /// `-J size=N`: journal size in MiB (4..10240).
    JournalSizeMib(u32),
    /// `-E stride=N`: RAID stride in blocks.
    Stride(u32),
    /// `-E stripe_width=N` (or `stripe-width`): RAID stripe width in blocks.
    StripeWidth(u32),
    /// `-E root_owner=UID:GID`: owner of the root directory.
    RootOwner(u32, u32),
}

/// An allowed `mkfs.xfs` option.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum XfsOption {
    /// `-b size=N`: block size, a power of two from 512 to 65536.
    BlockSize(u32),
    /// `-i size=N`: inode size, 256, 512, 1024 or 2048.
    InodeSize(u32),
    /// `-s size=N`: sector size, a power of two from 512 to 32768.
    SectorSize(u32),
    /// `-L label`.
    Label(String),
    /// `-d agcount=N`: number of allocation groups.
    AgCount(u32),
    /// `-d su=SIZE`: stripe unit in bytes (`64k`).
    StripeUnit(u64),
    /// `-d sw=N`: stripe width as a multiple of the stripe unit.
    StripeWidth(u32),
    /// `-l size=SIZE`: log size in bytes (`64m`).
    LogSize(u64),
    /// `-m name=0|1`: metadata features `crc`, `finobt`, `rmapbt`, `reflink`, `bigtime`,
    /// `inobtcount`.
    Metadata(Feature),
}

/// A btrfs allocation profile allowed on a single device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BtrfsProfile {
    /// One copy.
    Single,
    /// Two copies on the same device.
    Dup,
}

/// A btrfs checksum algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BtrfsChecksum {
    /// crc32c (default).
    Crc32c,
    /// xxhash64.
    Xxhash,
    /// sha256.
    Sha256,
    /// blake2b.
    Blake2,
}

/// An allowed `mkfs.btrfs` option.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BtrfsOption {
    /// `-L label`.
    Label(String),
    /// `-n N`: node size, a power of two from 4096 to 65536.
    NodeSize(u32),
    /// `-s N`: sector size, a power of two from 4096 to 65536.
    SectorSize(u32),
    /// `-O feature,^feature`: features (charset `a-z 0-9 _ -`).
    Features(Vec<Feature>),
    /// `-d single|dup`: data profile.
    DataProfile(BtrfsProfile),
    /// `-m single|dup`: metadata profile.
    MetadataProfile(BtrfsProfile),
    /// `--csum crc32c|xxhash|sha256|blake2` (or `--checksum`).
    Checksum(BtrfsChecksum),
}

/// User mkfs options, parsed and validated for one filesystem type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MkfsArgs {
    /// For `mkfs.ext4`.
    Ext4(Vec<Ext4Option>),
    /// For `mkfs.xfs`.
    Xfs(Vec<XfsOption>),
    /// For `mkfs.btrfs`.
    Btrfs(Vec<BtrfsOption>),
}

impl MkfsArgs {
    /// Parse user mkfs arguments (one argv word each; `-b 4096` and `-b4096` are both
    /// accepted) against the allowlist for `fs`.
    ///
    /// Allowed: ext4 `-b -m -i -I -N -L -O -T -J size= -E stride=,stripe_width=,root_owner=`;
    /// xfs `-b size= -i size= -s size= -L -d agcount=,su=,sw= -l size= -m crc=,finobt=,...`;
    /// btrfs `-L -n -s -O -d -m --csum`. Options that this crate controls (`-F`/`-f`
    /// force, `-K`/`--nodiscard`, lazy init), positional arguments and anything else are
    /// rejected with [`Error::InvalidMkfsOption`] naming the offending option. A value may
    /// not be given twice (except that `-O` lists and xfs `-m` features accumulate).
    pub fn parse<S: AsRef<str>>(fs: FsType, args: &[S]) -> Result<Self, Error> {
        let words = tokenize(fs, args)?;
        let mut out = match fs {
            FsType::Ext4 => MkfsArgs::Ext4(Vec::new()),
            FsType::Xfs => MkfsArgs::Xfs(Vec::new()),
            FsType::Btrfs => MkfsArgs::Btrfs(Vec::new()),
        };
        for (flag, value) in &words {
            let bad = |reason: String| invalid(fs, &format!("{flag} {value}"), reason);
            // A value that looks like an option (`-O --a`) would be read by the tool as
            // one: never pass it on, for any filesystem.
            if value.starts_with('-') {
                return Err(bad(format!(
                    "the value of {flag} may not start with '-' ({value:?})"
                )));
            }
            match &mut out {
                MkfsArgs::Ext4(v) => parse_ext4(flag, value, v).map_err(bad)?,
                MkfsArgs::Xfs(v) => parse_xfs(flag, value, v).map_err(bad)?,
                MkfsArgs::Btrfs(v) => parse_btrfs(flag, value, v).map_err(bad)?,
            }
        }
        Ok(out)
    }

    /// [`MkfsArgs::parse`] of a whitespace-separated string (`"-b 4096 -m 1"`).
    pub fn parse_str(fs: FsType, args: &str) -> Result<Self, Error> {
        let words: Vec<&str> = args.split_whitespace().collect();
        Self::parse(fs, &words)
    }

    /// The filesystem type these options are for.
    pub fn fs_type(&self) -> FsType {
        match self {
            MkfsArgs::Ext4(_) => FsType::Ext4,
            MkfsArgs::Xfs(_) => FsType::Xfs,
            MkfsArgs::Btrfs(_) => FsType::Btrfs,
        }
    }

    /// The smallest device, in bytes, mkfs accepts with these options: the type's
    /// [`FsType::min_size`], except btrfs with `-d dup` (data written twice), which needs
    /// 229 MiB, or 165 MiB with `-m single` (measured with btrfs-progs 6.2).
    pub fn min_size(&self) -> u64 {
        match self {
            MkfsArgs::Btrfs(v) if v.contains(&BtrfsOption::DataProfile(BtrfsProfile::Dup)) => {
                if v.contains(&BtrfsOption::MetadataProfile(BtrfsProfile::Single)) {
                    165 << 20
                } else {
                    229 << 20
                }
            }
            other => other.fs_type().min_size(),
        }
    }

    /// Checks that a device of `size` bytes is large enough for these options
    /// ([`MkfsArgs::min_size`]); [`Error::TooSmall`] names both sizes otherwise.
    pub fn check_size(&self, device: &Path, size: u64) -> Result<(), Error> {
        let min = self.min_size();
        if size < min {
            return Err(Error::TooSmall {
                device: device.to_owned(),
                fs: self.fs_type(),
                size,
                min,
            });
        }
        Ok(())
    }

    /// The label set with `-L`, if any.
    pub fn label(&self) -> Option<&str> {
        match self {
            MkfsArgs::Ext4(v) => v.iter().find_map(|o| match o {
                Ext4Option::Label(l) => Some(l.as_str()),
                _ => None,
            }),
            MkfsArgs::Xfs(v) => v.iter().find_map(|o| match o {
                XfsOption::Label(l) => Some(l.as_str()),
                _ => None,
            }),
            MkfsArgs::Btrfs(v) => v.iter().find_map(|o| match o {
                BtrfsOption::Label(l) => Some(l.as_str()),
                _ => None,
            }),
        }
    }

    /// The options as argv words, in the order given, with `-O` lists, `-E` keys and xfs
    /// `-d`/`-m` sub-options merged into one word each (mke2fs only honours the last `-E`).
    /// `extended` is prepended to the ext4 `-E` list.
    fn render(&self, extended: &[&str]) -> Vec<OsString> {
        let mut words: Vec<(&'static str, String)> = Vec::new();
        let feat = |fs: &[Feature]| {
            fs.iter()
                .map(|f| format!("{}{}", if f.enabled { "" } else { "^" }, f.name))
                .collect::<Vec<_>>()
                .join(",")
        };
        match self {
            MkfsArgs::Ext4(v) => {
                for e in extended {
                    words.push(("-E", (*e).to_owned()));
                }
                for o in v {
                    words.push(match o {
                        Ext4Option::BlockSize(n) => ("-b", n.to_string()),
                        Ext4Option::ReservedPercent(n) => ("-m", n.to_string()),
                        Ext4Option::BytesPerInode(n) => ("-i", n.to_string()),
                        Ext4Option::InodeSize(n) => ("-I", n.to_string()),
                        Ext4Option::InodeCount(n) => ("-N", n.to_string()),
                        Ext4Option::Label(l) => ("-L", l.clone()),
                        Ext4Option::Features(f) => ("-O", feat(f)),
                        Ext4Option::UsageType(t) => ("-T", t.clone()),
                        Ext4Option::JournalSizeMib(n) => ("-J", format!("size={n}")),
                        Ext4Option::Stride(n) => ("-E", format!("stride={n}")),
                        Ext4Option::StripeWidth(n) => ("-E", format!("stripe_width={n}")),
                        Ext4Option::RootOwner(u, g) => ("-E", format!("root_owner={u}:{g}")),
                    });
                }
            }
            MkfsArgs::Xfs(v) => {
                for o in v {
                    words.push(match o {
                        XfsOption::BlockSize(n) => ("-b", format!("size={n}")),
                        XfsOption::InodeSize(n) => ("-i", format!("size={n}")),
                        XfsOption::SectorSize(n) => ("-s", format!("size={n}")),
                        XfsOption::Label(l) => ("-L", l.clone()),
                        XfsOption::AgCount(n) => ("-d", format!("agcount={n}")),
                        XfsOption::StripeUnit(n) => ("-d", format!("su={n}")),
                        XfsOption::StripeWidth(n) => ("-d", format!("sw={n}")),
                        XfsOption::LogSize(n) => ("-l", format!("size={n}")),
                        XfsOption::Metadata(f) => {
                            ("-m", format!("{}={}", f.name, u8::from(f.enabled)))
                        }
                    });
                }
            }
            MkfsArgs::Btrfs(v) => {
                for o in v {
                    words.push(match o {
                        BtrfsOption::Label(l) => ("-L", l.clone()),
                        BtrfsOption::NodeSize(n) => ("-n", n.to_string()),
                        BtrfsOption::SectorSize(n) => ("-s", n.to_string()),
                        BtrfsOption::Features(f) => ("-O", feat(f)),
                        BtrfsOption::DataProfile(p) => ("-d", profile_name(*p).to_owned()),
                        BtrfsOption::MetadataProfile(p) => ("-m", profile_name(*p).to_owned()),
                        BtrfsOption::Checksum(c) => ("--csum", csum_name(*c).to_owned()),
                    });
                }
            }
        }
        let mergeable: &[&str] = match self {
            MkfsArgs::Ext4(_) => &["-E", "-O"],
            MkfsArgs::Xfs(_) => &["-d", "-m"],
            MkfsArgs::Btrfs(_) => &["-O"],
        };
        let mut merged: Vec<(&'static str, String)> = Vec::new();
        for (flag, value) in words {
            match merged.iter_mut().find(|(f, _)| *f == flag) {
                Some((_, v)) if mergeable.contains(&flag) => {
                    v.push(',');
                    v.push_str(&value);
                }
                _ => merged.push((flag, value)),
            }
        }
        merged
            .into_iter()
            .flat_map(|(f, v)| [OsString::from(f), OsString::from(v)])
            .collect()
    }
}

fn profile_name(p: BtrfsProfile) -> &'static str {
    match p {
        BtrfsProfile::Single => "single",
        BtrfsProfile::Dup => "dup",
    }
}

fn csum_name(c: BtrfsChecksum) -> &'static str {
    match c {
        BtrfsChecksum::Crc32c => "crc32c",
        BtrfsChecksum::Xxhash => "xxhash",
        BtrfsChecksum::Sha256 => "sha256",
        BtrfsChecksum::Blake2 => "blake2",
    }
}

fn invalid(fs: FsType, option: &str, reason: String) -> Error {
    Error::InvalidMkfsOption {
        fs,
        option: option.trim().to_owned(),
        reason,
    }
}

fn allowed_flags(fs: FsType) -> &'static [&'static str] {
    match fs {
        FsType::Ext4 => &["-b", "-m", "-i", "-I", "-N", "-L", "-O", "-T", "-J", "-E"],
        FsType::Xfs => &["-b", "-i", "-s", "-L", "-d", "-l", "-m"],
        FsType::Btrfs => &["-L", "-n", "-s", "-O", "-d", "-m", "--csum", "--checksum"],
    }
}

/// Split argv words into `(flag, value)` pairs, checking flags against the allowlist.
fn tokenize<S: AsRef<str>>(fs: FsType, args: &[S]) -> Result<Vec<(String, String)>, Error> {
    let allowed = allowed_flags(fs);
    let mut out = Vec::new();
    let mut it = args.iter().map(AsRef::as_ref);
    while let Some(word) = it.next() {
        let (flag, attached) = if let Some(long) = word.strip_prefix("--") {
            match long.split_once('=') {
                Some((name, v)) => (format!("--{name}"), Some(v)),
                None => (word.to_owned(), None),
            }
        } else if word.starts_with('-') && word.len() >= 2 && word.is_char_boundary(2) {
            let rest = &word[2..];
            (word[..2].to_owned(), (!rest.is_empty()).then_some(rest))
        } else {
            return Err(invalid(
                fs,
                word,
                "positional arguments are not allowed (the device is given separately)".into(),
            ));
        };
        if !allowed.contains(&flag.as_str()) {
            let reason = match flag.as_str() {
                "-F" | "-f" | "--force" => "force is controlled by MkfsOptions::force".to_owned(),
                "-K" | "--nodiscard" => "discard is controlled by MkfsOptions::discard".to_owned(),
                _ => format!(
                    "not in the allowlist for mkfs.{fs} (allowed: {})",
                    allowed.join(" ")
                ),
            };
            return Err(invalid(fs, word, reason));
        }
        let value = match attached {
            Some(v) => v.to_owned(),
            None => it
                .next()
                .ok_or_else(|| invalid(fs, word, format!("`{flag}` needs a value")))?
                .to_owned(),
        };
        out.push((flag, value));
    }
    Ok(out)
}

/// Check a filesystem label: 1 to 16 (ext4), 12 (xfs) or 255 (btrfs) bytes of
/// `A-Z a-z 0-9 . _ + : @ -`, not starting with `-`.
pub fn validate_label(fs: FsType, label: &str) -> Result<(), Error> {
    let max = match fs {
        FsType::Ext4 => 16,
        FsType::Xfs => 12,
        FsType::Btrfs => 255,
    };
    let reason = if label.is_empty() {
        Some("a label must not be empty".to_owned())
    } else if label.len() > max {
        Some(format!("a {fs} label is at most {max} bytes"))
    } else if label.starts_with('-')
        || !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._+:@-".contains(&b))
    {
        Some("a label may only contain A-Z a-z 0-9 . _ + : @ - and must not start with -".into())
    } else {
        None
    };
    match reason {
        Some(reason) => Err(invalid(fs, &format!("-L {label}"), reason)),
        None => Ok(()),
    }
}

fn label_value(fs: FsType, v: &str) -> Result<String, String> {
    match validate_label(fs, v) {
        Ok(()) => Ok(v.to_owned()),
        Err(Error::InvalidMkfsOption { reason, .. }) => Err(reason),
        Err(e) => Err(e.to_string()),
    }
}

fn uint_in(v: &str, min: u64, max: u64) -> Result<u64, String> {
    match parse_uint(v) {
        Some(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(format!("value must be an integer from {min} to {max}")),
    }
}

fn pow2_in(v: &str, min: u32, max: u32) -> Result<u32, String> {
    match parse_uint(v).and_then(|n| u32::try_from(n).ok()) {
        Some(n) if n.is_power_of_two() && (min..=max).contains(&n) => Ok(n),
        _ => Err(format!("value must be a power of two from {min} to {max}")),
    }
}

fn to_u32(n: u64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn features(v: &str, allow_dash: bool) -> Result<Vec<Feature>, String> {
    v.split(',')
        .map(|f| {
            let (name, enabled) = match f.strip_prefix('^') {
                Some(n) => (n, false),
                None => (f, true),
            };
            let ok = !name.is_empty()
                && name.len() <= 32
                && name.bytes().all(|b| {
                    b.is_ascii_lowercase()
                        || b.is_ascii_digit()
                        || b == b'_'
                        || (allow_dash && b == b'-')
                });
            if ok {
                Ok(Feature {
                    name: name.to_owned(),
                    enabled,
                })
            } else {
                Err(format!(
                    "feature `{f}` must be a name of a-z 0-9 _{}, optionally prefixed by ^",
                    if allow_dash { " -" } else { "" }
                ))
            }
        })
        .collect()
}

/// Push `opt` unless an option of the same kind is already there.
fn push_once<T>(v: &mut Vec<T>, opt: T) -> Result<(), String> {
    let d = std::mem::discriminant(&opt);
    if v.iter().any(|o| std::mem::discriminant(o) == d) {
        return Err("given more than once".into());
    }
    v.push(opt);
    Ok(())
}

fn parse_ext4(flag: &str, v: &str, out: &mut Vec<Ext4Option>) -> Result<(), String> {
    let fs = FsType::Ext4;
    let opt = match flag {
        "-b" => Ext4Option::BlockSize(pow2_in(v, 1024, 4096)?),
        "-m" => Ext4Option::ReservedPercent(uint_in(v, 0, 50)? as u8),
        "-i" => Ext4Option::BytesPerInode(to_u32(uint_in(v, 1024, 64 << 20)?)),
        "-I" => Ext4Option::InodeSize(pow2_in(v, 128, 1024)?),
        "-N" => Ext4Option::InodeCount(to_u32(uint_in(v, 16, u64::from(u32::MAX))?)),
        "-L" => Ext4Option::Label(label_value(fs, v)?),
        "-O" => {
            let f = features(v, false)?;
            match out.iter_mut().find_map(|o| match o {
                Ext4Option::Features(existing) => Some(existing),
                _ => None,
            }) {
                Some(existing) => existing.extend(f),
                None => out.push(Ext4Option::Features(f)),
            }
            return Ok(());
        }
        "-T" => {
            const TYPES: [&str; 7] = [
                "default",
                "small",
                "big",
                "huge",
                "news",
                "largefile",
                "largefile4",
            ];
            if !TYPES.contains(&v) {
                return Err(format!("usage type must be one of: {}", TYPES.join(", ")));
            }
            Ext4Option::UsageType(v.to_owned())
        }
        "-J" => {
            let size = v
                .strip_prefix("size=")
                .ok_or("only `-J size=MiB` is allowed")?;
            Ext4Option::JournalSizeMib(to_u32(uint_in(size, 4, 10240)?))
        }
        "-E" => {
            for kv in v.split(',') {
                let (k, val) = kv.split_once('=').unwrap_or((kv, ""));
                let opt = match k {
                    "stride" => Ext4Option::Stride(to_u32(uint_in(val, 1, u64::from(u32::MAX))?)),
                    "stripe_width" | "stripe-width" => {
                        Ext4Option::StripeWidth(to_u32(uint_in(val, 1, u64::from(u32::MAX))?))
                    }
                    "root_owner" => {
                        let (u, g) = val.split_once(':').ok_or("root_owner needs UID:GID")?;
                        let max = u64::from(u32::MAX - 1);
                        Ext4Option::RootOwner(
                            to_u32(uint_in(u, 0, max)?),
                            to_u32(uint_in(g, 0, max)?),
                        )
                    }
                    _ => {
                        return Err(format!(
                            "extended option `{k}` is not allowed (allowed: stride, stripe_width, root_owner; discard and lazy init are set by this crate)"
                        ));
                    }
                };
                push_once(out, opt)?;
            }
            return Ok(());
        }
        _ => unreachable_flag(flag)?,
    };
    push_once(out, opt)
}

fn parse_xfs(flag: &str, v: &str, out: &mut Vec<XfsOption>) -> Result<(), String> {
    let sub = |v: &str, key: &str| -> Result<String, String> {
        v.strip_prefix(key)
            .and_then(|r| r.strip_prefix('='))
            .map(str::to_owned)
            .ok_or_else(|| format!("only `{flag} {key}=...` is allowed"))
    };
    match flag {
        "-b" => push_once(
            out,
            XfsOption::BlockSize(pow2_in(&sub(v, "size")?, 512, 65536)?),
        ),
        "-i" => push_once(
            out,
            XfsOption::InodeSize(pow2_in(&sub(v, "size")?, 256, 2048)?),
        ),
        "-s" => push_once(
            out,
            XfsOption::SectorSize(pow2_in(&sub(v, "size")?, 512, 32768)?),
        ),
        "-L" => push_once(out, XfsOption::Label(label_value(FsType::Xfs, v)?)),
        "-l" => {
            let size = sub(v, "size")?;
            match parse_size(&size) {
                Some(n) if (2 << 20..=(2 << 30) - 1).contains(&n) => {
                    push_once(out, XfsOption::LogSize(n))
                }
                _ => Err("log size must be from 2m to just under 2g".into()),
            }
        }
        "-d" => {
            for kv in v.split(',') {
                let (k, val) = kv.split_once('=').unwrap_or((kv, ""));
                let opt = match k {
                    "agcount" => XfsOption::AgCount(to_u32(uint_in(val, 1, u64::from(u32::MAX))?)),
                    "su" => match parse_size(val) {
                        Some(n) if n >= 512 && n % 512 == 0 && n <= u64::from(u32::MAX) => {
                            XfsOption::StripeUnit(n)
                        }
                        _ => return Err("su must be a multiple of 512 bytes, e.g. 64k".into()),
                    },
                    "sw" => XfsOption::StripeWidth(to_u32(uint_in(val, 1, 1 << 16)?)),
                    _ => {
                        return Err(format!(
                            "data sub-option `{k}` is not allowed (allowed: agcount, su, sw)"
                        ));
                    }
                };
                push_once(out, opt)?;
            }
            Ok(())
        }
        "-m" => {
            const KEYS: [&str; 6] = [
                "crc",
                "finobt",
                "rmapbt",
                "reflink",
                "bigtime",
                "inobtcount",
            ];
            for kv in v.split(',') {
                let (k, val) = kv.split_once('=').unwrap_or((kv, ""));
                if !KEYS.contains(&k) {
                    return Err(format!(
                        "metadata sub-option `{k}` is not allowed (allowed: {})",
                        KEYS.join(", ")
                    ));
                }
                let enabled = match val {
                    "1" => true,
                    "0" => false,
                    _ => return Err(format!("`{k}` must be 0 or 1")),
                };
                if out
                    .iter()
                    .any(|o| matches!(o, XfsOption::Metadata(f) if f.name == k))
                {
                    return Err(format!("`{k}` given more than once"));
                }
                out.push(XfsOption::Metadata(Feature {
                    name: k.to_owned(),
                    enabled,
                }));
            }
            Ok(())
        }
        _ => unreachable_flag(flag),
    }
}

fn parse_btrfs(flag: &str, v: &str, out: &mut Vec<BtrfsOption>) -> Result<(), String> {
    let profile = |v: &str| match v {
        "single" => Ok(BtrfsProfile::Single),
        "dup" => Ok(BtrfsProfile::Dup),
        _ => Err("profile must be single or dup (this is a single-device filesystem)".to_owned()),
    };
    let opt = match flag {
        "-L" => BtrfsOption::Label(label_value(FsType::Btrfs, v)?),
        "-n" => BtrfsOption::NodeSize(pow2_in(v, 4096, 65536)?),
        "-s" => BtrfsOption::SectorSize(pow2_in(v, 4096, 65536)?),
        "-O" => {
            let f = features(v, true)?;
            match out.iter_mut().find_map(|o| match o {
                BtrfsOption::Features(existing) => Some(existing),
                _ => None,
            }) {
                Some(existing) => existing.extend(f),
                None => out.push(BtrfsOption::Features(f)),
            }
            return Ok(());
        }
        "-d" => BtrfsOption::DataProfile(profile(v)?),
        "-m" => BtrfsOption::MetadataProfile(profile(v)?),
        "--csum" | "--checksum" => BtrfsOption::Checksum(match v {
            "crc32c" => BtrfsChecksum::Crc32c,
            "xxhash" => BtrfsChecksum::Xxhash,
            "sha256" => BtrfsChecksum::Sha256,
            "blake2" => BtrfsChecksum::Blake2,
            _ => return Err("checksum must be crc32c, xxhash, sha256 or blake2".into()),
        }),
        _ => return unreachable_flag(flag),
    };
    push_once(out, opt)
}

/// Flags are checked against [`allowed_flags`] before they get here.
fn unreachable_flag<T>(flag: &str) -> Result<T, String> {
    Err(format!("`{flag}` is not allowed"))
}

/// The full mkfs command line (program first) that [`mkfs`] would run, after validating
/// the options. Nothing is run or probed.
///
/// Defaults for thin-provisioned devices: ext4 gets `-E
/// nodiscard,lazy_itable_init=1,lazy_journal_init=1`, xfs `-K`, btrfs `--nodiscard`
/// (unless [`MkfsOptions::discard`]). Force (`-F`/`-f`) is passed only with
/// [`MkfsOptions::force`], so the tools' own signature checks stay on.
pub fn mkfs_argv(
    device: impl AsRef<Path>,
    fs: FsType,
    options: &MkfsOptions,
) -> Result<Vec<OsString>, Error> {
    let args = MkfsArgs::parse(fs, &options.extra)?;
    if let Some(label) = &options.label {
        validate_label(fs, label)?;
        if let Some(other) = args.label() {
            return Err(invalid(
                fs,
                &format!("-L {other}"),
                "the label is already set by MkfsOptions::label".into(),
            ));
        }
    }
    let mut argv: Vec<OsString> = vec![format!("mkfs.{fs}").into()];
    let mut push = |s: &str| argv.push(s.into());
    let discard = if options.discard {
        "discard"
    } else {
        "nodiscard"
    };
    match fs {
        FsType::Ext4 => {
            if options.force {
                push("-F");
            }
        }
        FsType::Xfs => {
            if !options.discard {
                push("-K");
            }
            if options.force {
                push("-f");
            }
        }
        FsType::Btrfs => {
            if !options.discard {
                push("--nodiscard");
            }
            if options.force {
                push("-f");
            }
        }
    }
    if let Some(label) = &options.label {
        push("-L");
        push(label);
    }
    let ext_defaults = [discard, "lazy_itable_init=1", "lazy_journal_init=1"];
    let extended: &[&str] = if fs == FsType::Ext4 {
        &ext_defaults
    } else {
        &[]
    };
    argv.extend(args.render(extended));
    argv.push(device.as_ref().as_os_str().to_owned());
    Ok(argv)
}

/// The result of [`mkfs`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MkfsReport {
    /// The new filesystem, as probed after mkfs.
    pub fs: FsInfo,
    /// What the device held before (anything but [`Probe::Blank`] means `force` was set).
    pub previous: Probe,
    /// The mkfs run.
    pub output: CommandOutput,
}

/// Create a filesystem on `device`.
///
/// Order of checks: options are validated ([`mkfs_argv`]); the device must be at least
/// [`MkfsArgs::min_size`] ([`Error::TooSmall`]: the tools themselves would only print
/// their usage); it must not be mounted or held open exclusively; [`probe`] must find it
/// blank unless [`MkfsOptions::force`]. Then mkfs runs as an argv (never a shell) with a timeout, and
/// the device is probed again to confirm and return the new filesystem's UUID and label.
pub fn mkfs(
    device: impl AsRef<Path>,
    fs: FsType,
    options: &MkfsOptions,
) -> Result<MkfsReport, Error> {
    let device = device.as_ref();
    let argv = mkfs_argv(device, fs, options)?;
    MkfsArgs::parse(fs, &options.extra)?.check_size(device, crate::device_size(device)?)?;
    ensure_not_in_use(device)?;
    let previous = probe(device)?;
    if !previous.is_blank() && !options.force {
        return Err(Error::NotBlank {
            device: device.to_owned(),
            fs,
            found: Box::new(previous),
        });
    }
    let program = argv[0].to_string_lossy().into_owned();
    let output = run_checked(&program, &argv[1..], options.timeout)?;
    match probe(device)? {
        Probe::Filesystem(info) if info.kind.fs_type() == fs => Ok(MkfsReport {
            fs: info,
            previous,
            output,
        }),
        other => Err(Error::MkfsNotFound {
            device: device.to_owned(),
            fs,
            found: Box::new(other),
        }),
    }
}

/// Refuse a device that is mounted here ([`Error::DeviceMounted`]) or, for block devices,
/// held exclusively by anyone, e.g. mounted in another namespace ([`Error::DeviceBusy`]).
pub(crate) fn ensure_not_in_use(device: &Path) -> Result<(), Error> {
    if let Some(m) = mounts_of_device(device)?.into_iter().next() {
        return Err(Error::DeviceMounted {
            device: device.to_owned(),
            mountpoint: m.mount_point,
        });
    }
    let io = |action, source| Error::Io {
        action,
        path: device.to_owned(),
        source,
    };
    let md = std::fs::metadata(device).map_err(|e| io("open", e))?;
    if md.file_type().is_block_device() {
        // O_EXCL without O_CREAT on a block device fails with EBUSY while the kernel holds
        // it (mounted anywhere, a dm/md member) or another process opened it O_EXCL.
        match OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_EXCL)
            .open(device)
        {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                return Err(Error::DeviceBusy {
                    device: device.to_owned(),
                    source: e,
                });
            }
            Err(e) => return Err(io("open", e)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strs(v: &[OsString]) -> Vec<String> {
        v.iter().map(|s| s.to_string_lossy().into_owned()).collect()
    }

    fn argv(fs: FsType, opts: &MkfsOptions) -> Vec<String> {
        strs(&mkfs_argv("/dev/rbd0", fs, opts).unwrap())
    }

    fn rejected(fs: FsType, extra: &str) -> (String, String) {
        match MkfsArgs::parse_str(fs, extra) {
            Err(Error::InvalidMkfsOption { option, reason, .. }) => (option, reason),
            other => panic!("{extra:?} was not rejected: {other:?}"),
        }
    }

    #[test]
    fn default_command_lines() {
        let o = MkfsOptions::default();
        assert_eq!(
            argv(FsType::Ext4, &o),
            [
                "mkfs.ext4",
                "-E",
                "nodiscard,lazy_itable_init=1,lazy_journal_init=1",
                "/dev/rbd0"
            ]
        );
        assert_eq!(argv(FsType::Xfs, &o), ["mkfs.xfs", "-K", "/dev/rbd0"]);
        assert_eq!(
            argv(FsType::Btrfs, &o),
            ["mkfs.btrfs", "--nodiscard", "/dev/rbd0"]
        );
    }

    #[test]
    fn label_force_discard_and_extra() {
        let o = MkfsOptions {
            label: Some("vol-1".into()),
            force: true,
            ..MkfsOptions::default()
        }
        .with_extra_str(
            "-b 4096 -m 1 -O ^has_journal -E stride=16,stripe_width=64 -O metadata_csum -I 256",
        );
        assert_eq!(
            argv(FsType::Ext4, &o),
            [
                "mkfs.ext4",
                "-F",
                "-L",
                "vol-1",
                "-E",
                "nodiscard,lazy_itable_init=1,lazy_journal_init=1,stride=16,stripe_width=64",
                "-b",
                "4096",
                "-m",
                "1",
                "-O",
                "^has_journal,metadata_csum",
                "-I",
                "256",
                "/dev/rbd0"
            ]
        );
        let o = MkfsOptions {
            discard: true,
            force: true,
            ..MkfsOptions::default()
        }
        .with_extra_str("-d agcount=8 -m reflink=1,bigtime=1 -d su=4m,sw=1 -i size=512 -L data");
        assert_eq!(
            argv(FsType::Xfs, &o),
            [
                "mkfs.xfs",
                "-f",
                "-d",
                "agcount=8,su=4194304,sw=1",
                "-m",
                "reflink=1,bigtime=1",
                "-i",
                "size=512",
                "-L",
                "data",
                "/dev/rbd0"
            ]
        );
        let o = MkfsOptions::default()
            .with_extra_str("-n 16384 -m dup --csum=xxhash -O no-holes,^free-space-tree");
        assert_eq!(
            argv(FsType::Btrfs, &o),
            [
                "mkfs.btrfs",
                "--nodiscard",
                "-n",
                "16384",
                "-m",
                "dup",
                "--csum",
                "xxhash",
                "-O",
                "no-holes,^free-space-tree",
                "/dev/rbd0"
            ]
        );
    }

    #[test]
    fn typed_parse() {
        let a = MkfsArgs::parse(
            FsType::Ext4,
            &["-b4096", "-m", "0", "-E", "root_owner=1000:1000"],
        )
        .unwrap();
        assert_eq!(
            a,
            MkfsArgs::Ext4(vec![
                Ext4Option::BlockSize(4096),
                Ext4Option::ReservedPercent(0),
                Ext4Option::RootOwner(1000, 1000),
            ])
        );
        assert_eq!(a.fs_type(), FsType::Ext4);
        let a = MkfsArgs::parse_str(FsType::Btrfs, "-L backups --checksum sha256").unwrap();
        assert_eq!(a.label(), Some("backups"));
        assert_eq!(
            a,
            MkfsArgs::Btrfs(vec![
                BtrfsOption::Label("backups".into()),
                BtrfsOption::Checksum(BtrfsChecksum::Sha256)
            ])
        );
        assert_eq!(
            MkfsArgs::parse_str(FsType::Xfs, "").unwrap(),
            MkfsArgs::Xfs(vec![])
        );
    }

    #[test]
    fn rejections_name_the_option() {
        let (o, r) = rejected(FsType::Ext4, "-b 4096 -q");
        assert_eq!(o, "-q");
        assert!(r.starts_with("not in the allowlist for mkfs.ext4"), "{r}");
        assert_eq!(
            rejected(FsType::Ext4, "-F").1,
            "force is controlled by MkfsOptions::force"
        );
        assert_eq!(
            rejected(FsType::Xfs, "-K").1,
            "discard is controlled by MkfsOptions::discard"
        );
        assert_eq!(
            rejected(FsType::Ext4, "-b 3000"),
            (
                "-b 3000".into(),
                "value must be a power of two from 1024 to 4096".into()
            )
        );
        assert_eq!(rejected(FsType::Ext4, "-m 51").0, "-m 51");
        assert_eq!(rejected(FsType::Ext4, "-m -1").0, "-m -1");
        assert_eq!(
            rejected(FsType::Ext4, "-O has_journal;reboot").0,
            "-O has_journal;reboot"
        );
        assert_eq!(rejected(FsType::Ext4, "-O $(id)").0, "-O $(id)");
        assert!(
            rejected(FsType::Ext4, "-E nodiscard")
                .1
                .contains("`nodiscard` is not allowed")
        );
        assert!(
            rejected(FsType::Ext4, "-E stride=4,offset=9")
                .1
                .contains("`offset`")
        );
        assert_eq!(rejected(FsType::Ext4, "-b").1, "`-b` needs a value");
        assert_eq!(
            rejected(FsType::Ext4, "-b 1024 -b 4096").1,
            "given more than once"
        );
        assert!(rejected(FsType::Ext4, "/dev/sda").1.contains("positional"));
        assert_eq!(
            rejected(FsType::Ext4, "-L this-label-is-too-long").0,
            "-L this-label-is-too-long"
        );
        assert_eq!(
            rejected(FsType::Xfs, "-L thirteen_chrs").0,
            "-L thirteen_chrs"
        );
        assert_eq!(rejected(FsType::Xfs, "-L a/b").0, "-L a/b");
        assert_eq!(rejected(FsType::Xfs, "-L -x").0, "-L -x");
        assert_eq!(
            rejected(FsType::Xfs, "-b 4096").1,
            "only `-b size=...` is allowed"
        );
        assert!(rejected(FsType::Xfs, "-d file=1").1.contains("`file`"));
        assert!(rejected(FsType::Xfs, "-m crc=2").1.contains("0 or 1"));
        assert!(rejected(FsType::Xfs, "-m uuid=0").1.contains("`uuid`"));
        assert_eq!(rejected(FsType::Btrfs, "-d raid1").0, "-d raid1");
        assert_eq!(rejected(FsType::Btrfs, "--csum=md5").0, "--csum md5");
        assert_eq!(rejected(FsType::Btrfs, "--rootdir /etc").0, "--rootdir");
        assert_eq!(rejected(FsType::Btrfs, "-b 1").0, "-b");
    }

    #[test]
    fn label_in_both_places_is_refused() {
        let o = MkfsOptions {
            label: Some("a".into()),
            ..MkfsOptions::default()
        }
        .with_extra_str("-L b");
        match mkfs_argv("/dev/x", FsType::Ext4, &o) {
            Err(Error::InvalidMkfsOption { option, .. }) => assert_eq!(option, "-L b"),
            other => panic!("{other:?}"),
        }
        let o = MkfsOptions {
            label: Some("has space".into()),
            ..MkfsOptions::default()
        };
        assert!(mkfs_argv("/dev/x", FsType::Btrfs, &o).is_err());
    }

    #[test]
    fn a_value_that_looks_like_an_option_is_refused() {
        // Found by rendered_args_stay_in_the_allowlist: btrfs `-O --a` passed `--a` on.
        let e = MkfsArgs::parse(FsType::Btrfs, &["-O", "--a"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("--a"), "{e}");
        for fs in FsType::ALL {
            let e = MkfsArgs::parse(fs, &["-L", "-x"]).unwrap_err().to_string();
            assert!(e.contains("-x"), "{fs}: {e}");
        }
    }

    proptest::proptest! {
        /// Any word list either fails to parse or renders only allowlisted flags, each
        /// followed by a value made of the safe charset.
        #[test]
        fn rendered_args_stay_in_the_allowlist(
            words in proptest::collection::vec("(-[a-zA-Z]|--[a-z]{1,8}|[a-z0-9=^,:._/-]{1,12})", 0..8),
            fs in proptest::sample::select(FsType::ALL.to_vec()),
        ) {
            if let Ok(args) = MkfsArgs::parse(fs, &words) {
                let rendered = strs(&args.render(&[]));
                proptest::prop_assert_eq!(rendered.len() % 2, 0);
                for pair in rendered.chunks(2) {
                    proptest::prop_assert!(allowed_flags(fs).contains(&pair[0].as_str()), "{:?}", pair);
                    proptest::prop_assert!(
                        pair[1].bytes().all(|b| b.is_ascii_alphanumeric() || b"=^,:._+@-".contains(&b)),
                        "{:?}", pair
                    );
                    proptest::prop_assert!(!pair[1].starts_with('-'));
                }
            }
        }
    }
}
