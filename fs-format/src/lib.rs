//! Filesystems on block devices: probe, mkfs, fsck, grow, mount.
//!
//! This crate owns everything between "a block device exists" and "a filesystem is mounted
//! on it": detecting what a device holds (in Rust, from superblocks), creating ext4, xfs or
//! btrfs with defaults suited to thin-provisioned RBD, checking, growing online, and
//! mounting through syscalls with allowlisted options.
//!
//! - [`probe`] reads superblocks and partition tables itself (no `blkid`) and returns a
//!   [`Probe`]: blank, a filesystem with UUID and label, a partition table, or unknown
//!   data.
//! - [`mkfs`] refuses anything but a blank, unmounted device unless forced, validates user
//!   options against a per-filesystem allowlist ([`MkfsArgs`]), and never discards.
//! - [`fsck`] runs `e2fsck -p`, `xfs_repair -n` or `btrfs check --readonly` and maps the
//!   exit code to an [`FsckOutcome`].
//! - [`grow`] resizes a mounted filesystem to its device.
//! - [`mount`] / [`unmount`] use `mount(2)` / `umount2(2)`, with options checked by
//!   [`parse_mount_options`]; unmount falls back to a lazy detach on `EBUSY` and says so.
//! - [`find_mount`] and friends parse `/proc/self/mountinfo`.
//!
//! Every external tool runs as an argv (never through a shell) with a timeout, and its
//! failures carry the command line, exit status and output ([`Error::CommandFailed`]).
//!
//! # Example
//!
//! ```no_run
//! use fs_format::{FsType, MkfsOptions, MountOptions, Probe};
//!
//! # fn main() -> Result<(), fs_format::Error> {
//! let dev = "/dev/rbd0";
//! let fs: FsType = "xfs".parse()?;
//! let info = match fs_format::probe(dev)? {
//!     Probe::Blank => {
//!         let opts = MkfsOptions {
//!             label: Some("data".into()),
//!             ..MkfsOptions::default()
//!         }
//!         .with_extra_str("-m reflink=1");
//!         fs_format::mkfs(dev, fs, &opts)?.fs
//!     }
//!     Probe::Filesystem(info) if info.kind.fs_type() == fs => info,
//!     other => panic!("{dev} holds {other}; not touching it"),
//! };
//! println!("UUID {}", info.uuid);
//!
//! let opts = MountOptions {
//!     read_only: false,
//!     options: vec!["noatime,nodev,nosuid".into()],
//! };
//! fs_format::mount(dev, "/mnt/vol", fs, &opts)?;
//! fs_format::grow("/mnt/vol", fs, &Default::default())?;
//! let report = fs_format::unmount("/mnt/vol")?;
//! println!("{:?}", report.outcome);
//! # Ok(())
//! # }
//! ```

mod cmd;
mod crc;
mod error;
mod fsck;
mod fstype;
mod grow;
mod mkfs;
mod mount;
mod mountinfo;
mod probe;
mod units;

pub use cmd::CommandOutput;
pub use error::Error;
pub use fsck::{FsckOptions, FsckOutcome, FsckReport, classify_fsck, fsck, fsck_argv};
pub use fstype::FsType;
pub use grow::{GrowOptions, GrowReport, fs_size, grow};
pub use mkfs::{
    BtrfsChecksum, BtrfsOption, BtrfsProfile, Ext4Option, Feature, MkfsArgs, MkfsOptions,
    MkfsReport, XfsOption, mkfs, mkfs_argv, validate_label,
};
pub use mount::{
    MountOptions, MountOutcome, ParsedMountOptions, UnmountOptions, UnmountOutcome, UnmountReport,
    mount, parse_mount_options, unmount, unmount_with,
};
pub use mountinfo::{
    MountInfo, find_mount, is_mountpoint, mounts_of_device, parse_mountinfo, read_mountinfo,
    unescape as unescape_mountinfo,
};
pub use probe::{
    DetectedFs, FsInfo, HEAD_BYTES, Partition, PartitionScheme, PartitionTable, Probe, TAIL_BYTES,
    UnknownData, device_size, probe,
};
pub use units::human_size;

/// Re-exported so callers can name [`ParsedMountOptions::flags`] without depending on nix.
pub use nix::mount::MsFlags;
