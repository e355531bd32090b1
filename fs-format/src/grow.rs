//! Growing mounted filesystems to fill their (enlarged) device.

use std::ffi::OsString;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::cmd::{CommandOutput, run_checked};
use crate::mountinfo::{block_dev_number, canonical, mount_at, read_mountinfo, same_device};
use crate::{Error, FsType};

/// Options for [`grow`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrowOptions {
    /// Kill the resize tool if it runs longer than this.
    pub timeout: Duration,
}

impl Default for GrowOptions {
    /// Ten minute timeout.
    fn default() -> Self {
        GrowOptions {
            timeout: Duration::from_secs(600),
        }
    }
}

/// The result of [`grow`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrowReport {
    /// The block device.
    pub device: PathBuf,
    /// Where it is mounted (`None` for an offline ext4 resize).
    pub mountpoint: Option<PathBuf>,
    /// Filesystem size (`statvfs` blocks × fragment size) before, when mounted.
    pub size_before: Option<u64>,
    /// Filesystem size after, when mounted.
    pub size_after: Option<u64>,
    /// The resize tool's run.
    pub output: CommandOutput,
}

/// Grow the filesystem on a device, or mounted at a path, to fill the device.
///
/// `target` may be the mountpoint or the block device; the other one is looked up in
/// `/proc/self/mountinfo`. ext4 runs `resize2fs DEVICE` (online when mounted; offline
/// resize2fs insists on a fresh `e2fsck -f` first), xfs `xfs_growfs MOUNTPOINT` and btrfs
/// `btrfs filesystem resize max MOUNTPOINT`; xfs and btrfs must be mounted
/// ([`Error::NotMounted`]). A mount of another filesystem type is
/// [`Error::FsTypeMismatch`]. Growing a filesystem that already fills its device succeeds
/// and changes nothing.
pub fn grow(
    target: impl AsRef<Path>,
    fs: FsType,
    options: &GrowOptions,
) -> Result<GrowReport, Error> {
    let target = target.as_ref();
    let canon = canonical(target)?.ok_or_else(|| Error::Io {
        action: "find",
        path: target.to_owned(),
        source: std::io::ErrorKind::NotFound.into(),
    })?;
    let mounts = read_mountinfo()?;
    let is_block = std::fs::metadata(&canon)
        .map(|m| m.file_type().is_block_device())
        .unwrap_or(false);
    let mount = if is_block {
        let rdev = block_dev_number(&canon);
        mounts.iter().rev().find(|m| same_device(m, &canon, rdev))
    } else {
        mount_at(&mounts, &canon)
    };
    let (device, mountpoint) = match (mount, is_block) {
        (Some(m), true) => (canon.clone(), Some(m.mount_point.clone())),
        (Some(m), false) => (PathBuf::from(&m.source), Some(canon.clone())),
        (None, true) => (canon.clone(), None),
        (None, false) => return Err(Error::NotMounted { path: canon }),
    };
    if let Some(m) = mount {
        let ok = match fs {
            FsType::Ext4 => matches!(m.fs_type.as_str(), "ext4" | "ext3" | "ext2"),
            _ => m.fs_type == fs.as_str(),
        };
        if !ok {
            return Err(Error::FsTypeMismatch {
                path: canon,
                expected: fs,
                found: m.fs_type.clone(),
            });
        }
    }

    let argv: Vec<OsString> = match (fs, &mountpoint) {
        (FsType::Ext4, _) => vec![device.clone().into()],
        (FsType::Xfs, Some(mp)) => vec![mp.into()],
        (FsType::Btrfs, Some(mp)) => {
            vec![
                "filesystem".into(),
                "resize".into(),
                "max".into(),
                mp.into(),
            ]
        }
        (_, None) => return Err(Error::NotMounted { path: device }),
    };
    let program = match fs {
        FsType::Ext4 => "resize2fs",
        FsType::Xfs => "xfs_growfs",
        FsType::Btrfs => "btrfs",
    };
    let size_before = mountpoint.as_deref().map(fs_size).transpose()?;
    let output = run_checked(program, &argv, options.timeout)?;
    let size_after = mountpoint.as_deref().map(fs_size).transpose()?;
    Ok(GrowReport {
        device,
        mountpoint,
        size_before,
        size_after,
        output,
    })
}

/// Total size of the filesystem mounted at `path`, from `statvfs(2)`.
pub fn fs_size(path: &Path) -> Result<u64, Error> {
    let st = nix::sys::statvfs::statvfs(path).map_err(|source| Error::Sys {
        call: "statvfs",
        path: path.to_owned(),
        source,
    })?;
    // fsblkcnt_t and c_ulong are u64 here but narrower on 32-bit targets.
    #[allow(clippy::useless_conversion)]
    let size = u64::from(st.blocks()).saturating_mul(u64::from(st.fragment_size()));
    Ok(size)
}
