//! The crate's one error type.

use std::io;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

use nix::errno::Errno;

use crate::{FsType, Probe};

/// Everything that can go wrong in this crate.
///
/// `Display` says what failed; an underlying OS error is available through
/// [`std::error::Error::source`]. Failures of external commands carry the command line,
/// its exit status and its captured output.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Opening, reading or inspecting a file or device failed.
    #[error("cannot {action} {}", path.display())]
    Io {
        /// What was being done, e.g. `"open"` or `"read"`.
        action: &'static str,
        /// The file or device.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },

    /// An external command could not be started (not installed, not in `PATH`, ...).
    #[error("cannot run `{command}`")]
    Spawn {
        /// The command line.
        command: String,
        /// The OS error from `spawn`.
        #[source]
        source: io::Error,
    },

    /// An external command ran longer than its timeout and was killed.
    #[error(
        "`{command}` did not finish within {timeout:?} and was killed{}",
        tail(stderr, stdout)
    )]
    Timeout {
        /// The command line.
        command: String,
        /// The timeout that was exceeded.
        timeout: Duration,
        /// Standard output captured before the kill.
        stdout: String,
        /// Standard error captured before the kill.
        stderr: String,
    },

    /// An external command exited unsuccessfully.
    #[error("`{command}` failed with {status}{}", tail(stderr, stdout))]
    CommandFailed {
        /// The command line.
        command: String,
        /// Its exit status.
        status: ExitStatus,
        /// Its standard output.
        stdout: String,
        /// Its standard error.
        stderr: String,
    },

    /// A filesystem type name is not one of `ext4`, `xfs`, `btrfs`.
    #[error("unsupported filesystem type `{0}` (supported: ext4, xfs, btrfs)")]
    UnsupportedFsType(String),

    /// A user-supplied mkfs option is not in the allowlist or has a bad value.
    #[error("mkfs option `{option}` is not allowed for {fs}: {reason}")]
    InvalidMkfsOption {
        /// The filesystem type the options were for.
        fs: FsType,
        /// The offending option, as given.
        option: String,
        /// Why it was rejected.
        reason: String,
    },

    /// A user-supplied mount option is not in the allowlist, has a bad value or conflicts.
    #[error("mount option `{option}` is not allowed for {fs}: {reason}")]
    InvalidMountOption {
        /// The filesystem type the options were for.
        fs: FsType,
        /// The offending option, as given.
        option: String,
        /// Why it was rejected.
        reason: String,
    },

    /// mkfs refused because the device already holds a filesystem or data.
    #[error("refusing to create {fs} on {}: it holds {found}; use force to overwrite", device.display())]
    NotBlank {
        /// The device.
        device: PathBuf,
        /// The filesystem that was to be created.
        fs: FsType,
        /// What [`crate::probe`] found.
        found: Box<Probe>,
    },

    /// The device is smaller than the filesystem type's minimum (with the options given),
    /// so mkfs was not run.
    #[error(
        "{} is too small for {fs}: it has {size} bytes ({}), and {fs} needs at least {min} bytes ({})",
        device.display(), crate::human_size(*size), crate::human_size(*min)
    )]
    TooSmall {
        /// The device.
        device: PathBuf,
        /// The filesystem that was to be created.
        fs: FsType,
        /// The device's size in bytes.
        size: u64,
        /// The smallest size mkfs accepts ([`crate::MkfsArgs::min_size`]).
        min: u64,
    },

    /// After mkfs succeeded, probing did not find the new filesystem.
    #[error("mkfs of {fs} on {} reported success but the device now holds {found}", device.display())]
    MkfsNotFound {
        /// The device.
        device: PathBuf,
        /// The filesystem that was created.
        fs: FsType,
        /// What [`crate::probe`] found afterwards.
        found: Box<Probe>,
    },

    /// The device is mounted, so the operation (mkfs, fsck) is refused.
    #[error("{} is mounted at {}", device.display(), mountpoint.display())]
    DeviceMounted {
        /// The device.
        device: PathBuf,
        /// Where it is mounted (in this mount namespace).
        mountpoint: PathBuf,
    },

    /// The block device is held open exclusively (mounted in another namespace, used by
    /// device-mapper or md, or opened by another mkfs/fsck).
    #[error("{} is in use by something else (exclusive open failed)", device.display())]
    DeviceBusy {
        /// The device.
        device: PathBuf,
        /// The error from the exclusive open (`EBUSY`).
        #[source]
        source: io::Error,
    },

    /// The path is not a mountpoint, or the device is not mounted, but the operation needs
    /// it to be.
    #[error("{} is not mounted", path.display())]
    NotMounted {
        /// The path or device.
        path: PathBuf,
    },

    /// The filesystem mounted at a path is not of the expected type.
    #[error("{} holds {found}, not {expected}", path.display())]
    FsTypeMismatch {
        /// The mountpoint or device.
        path: PathBuf,
        /// The type the caller asked for.
        expected: FsType,
        /// The type found (from mountinfo).
        found: String,
    },

    /// The mountpoint already has a different filesystem, or the same one with a different
    /// read-only state, mounted on it.
    #[error("{} is already mounted from {device} ({})", target.display(), if *read_only { "ro" } else { "rw" })]
    AlreadyMounted {
        /// The mountpoint.
        target: PathBuf,
        /// The mount source currently there.
        device: String,
        /// Whether the existing mount is read-only.
        read_only: bool,
    },

    /// The `mount(2)` syscall failed.
    #[error("mounting {} on {} as {fs} with options `{options}` failed", device.display(), target.display())]
    Mount {
        /// The device.
        device: PathBuf,
        /// The mountpoint.
        target: PathBuf,
        /// The filesystem type.
        fs: FsType,
        /// Flags and data, as a readable option string.
        options: String,
        /// The errno from `mount(2)`.
        #[source]
        source: Errno,
    },

    /// The `umount2(2)` syscall failed.
    #[error("{} {} failed", if *lazy { "lazy unmount (MNT_DETACH) of" } else { "unmounting" }, target.display())]
    Unmount {
        /// The mountpoint.
        target: PathBuf,
        /// Whether this was the lazy-detach fallback after `EBUSY`.
        lazy: bool,
        /// The errno from `umount2(2)`.
        #[source]
        source: Errno,
    },

    /// A syscall other than mount/umount failed (e.g. `statvfs`).
    #[error("{call} on {} failed", path.display())]
    Sys {
        /// The syscall.
        call: &'static str,
        /// The path it was called on.
        path: PathBuf,
        /// The errno.
        #[source]
        source: Errno,
    },

    /// A line of `/proc/self/mountinfo` could not be parsed.
    #[error("cannot parse mountinfo line {line}: {reason}")]
    MountInfo {
        /// 1-based line number.
        line: usize,
        /// What was wrong with it.
        reason: String,
    },
}

/// `": <last lines of stderr, or of stdout when stderr is empty>"`, or nothing.
fn tail(stderr: &str, stdout: &str) -> String {
    let text = if stderr.trim().is_empty() {
        stdout
    } else {
        stderr
    };
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    if lines.is_empty() {
        return String::new();
    }
    let start = lines.len().saturating_sub(4);
    let mut joined = lines[start..].join(" / ");
    const MAX: usize = 600;
    if joined.len() > MAX {
        let mut cut = joined.len() - MAX;
        while !joined.is_char_boundary(cut) {
            cut += 1;
        }
        joined = format!("...{}", &joined[cut..]);
    }
    format!(": {joined}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    #[test]
    fn command_failed_display_has_command_status_and_stderr() {
        let e = Error::CommandFailed {
            command: "mkfs.xfs -K /dev/loop0".into(),
            status: ExitStatus::from_raw(1 << 8),
            stdout: "ignored".into(),
            stderr: "line one\n\nmkfs.xfs: /dev/loop0 appears to contain a filesystem\n".into(),
        };
        let s = e.to_string();
        assert!(s.contains("`mkfs.xfs -K /dev/loop0`"), "{s}");
        assert!(s.contains("exit status: 1"), "{s}");
        assert!(s.contains("line one / mkfs.xfs: /dev/loop0 appears"), "{s}");
        assert!(!s.contains("ignored"), "{s}");
    }

    #[test]
    fn error_is_send_sync_static() {
        fn check<T: Send + Sync + 'static>() {}
        check::<Error>();
    }

    #[test]
    fn tail_falls_back_to_stdout_and_truncates() {
        assert_eq!(tail("", ""), "");
        assert_eq!(tail("  \n", "out\n"), ": out");
        let long = "x".repeat(2000);
        let t = tail(&long, "");
        assert!(t.len() < 700 && t.starts_with(": ..."));
    }
}
