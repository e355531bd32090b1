//! Loop devices through the kernel's loop ioctls (no `losetup`).
//!
//! - **Attach** ([`LoopDevice::attach`]): `LOOP_CTL_GET_FREE` on `/dev/loop-control` picks
//!   a free device, then `LOOP_CONFIGURE` binds the backing file with the requested flags
//!   in one step (kernels older than 5.8: `LOOP_SET_FD`, `LOOP_SET_STATUS64`,
//!   `LOOP_SET_DIRECT_IO`). Another process may grab the same free device between the two
//!   calls; the resulting `EBUSY` is retried with the next free device.
//! - **Direct I/O** (`LO_FLAGS_DIRECT_IO`) is checked after attach in
//!   `/sys/block/loopN/loop/dio`: the kernel silently drops it when the backing file
//!   cannot do direct I/O.
//! - **Autoclear** (`LO_FLAGS_AUTOCLEAR`): the kernel detaches the device when its last
//!   opener closes it. The [`LoopDevice`] handle is such an opener, so a device attached
//!   with autoclear lives exactly as long as its handle and its other users (a mounted
//!   filesystem, a process with it open). That is what makes a crashed userspace mapper
//!   leave no loop device behind.
//! - **Detach** (`LOOP_CLR_FD`): immediate when nobody else has the device open; otherwise
//!   the kernel marks it autoclear and detaches it on the last close (since Linux 5.x the
//!   ioctl never fails with `EBUSY` for this).
//! - **Query**: `/sys/block/loopN/loop/{backing_file,dio,autoclear}` and
//!   `/sys/block/loopN/ro`. The `loop` directory exists only while the device is bound.
//!   Its `backing_file` is the file's path as seen from the kernel's root, so after the
//!   backing file's filesystem was lazily unmounted it reads e.g. `/image`: whether a
//!   device is still bound to *our* file is judged by the binding's identity
//!   ([`BindingId`]: the disk sequence number, which the kernel bumps on every bind and
//!   every detach), never by the path. (`LOOP_GET_STATUS64` cannot tell either: it stats
//!   the backing file, which fails once a FUSE backing file's daemon is gone.)

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::error::{DriverError, Result};

/// `/dev/loop-control` ioctl: the number of a free loop device (allocating one if needed).
const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
/// Binds a file descriptor to the device.
const LOOP_SET_FD: libc::c_ulong = 0x4C00;
/// Unbinds the device.
const LOOP_CLR_FD: libc::c_ulong = 0x4C01;
/// Sets `loop_info64`.
const LOOP_SET_STATUS64: libc::c_ulong = 0x4C04;
/// Re-reads the backing file's size.
const LOOP_SET_CAPACITY: libc::c_ulong = 0x4C07;
/// Turns direct I/O on or off.
const LOOP_SET_DIRECT_IO: libc::c_ulong = 0x4C08;
/// Binds and configures in one step (Linux 5.8+).
const LOOP_CONFIGURE: libc::c_ulong = 0x4C0A;

/// `LO_FLAGS_READ_ONLY`.
const LO_FLAGS_READ_ONLY: u32 = 1;
/// `LO_FLAGS_AUTOCLEAR`.
const LO_FLAGS_AUTOCLEAR: u32 = 4;
/// `LO_FLAGS_DIRECT_IO`.
const LO_FLAGS_DIRECT_IO: u32 = 16;

/// `LO_NAME_SIZE`.
const LO_NAME_SIZE: usize = 64;

/// `struct loop_info64` from `<linux/loop.h>`.
#[repr(C)]
#[derive(Clone, Copy)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; LO_NAME_SIZE],
    lo_crypt_name: [u8; LO_NAME_SIZE],
    lo_encrypt_key: [u8; 32],
    lo_init: [u64; 2],
}

/// `struct loop_config` from `<linux/loop.h>`.
#[repr(C)]
#[derive(Clone, Copy)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

impl LoopInfo64 {
    fn new(flags: u32, backing: &Path) -> Self {
        let mut name = [0u8; LO_NAME_SIZE];
        let bytes = backing.as_os_str().as_encoded_bytes();
        let n = bytes.len().min(LO_NAME_SIZE - 1);
        name[..n].copy_from_slice(&bytes[..n]);
        LoopInfo64 {
            lo_device: 0,
            lo_inode: 0,
            lo_rdevice: 0,
            lo_offset: 0,
            lo_sizelimit: 0,
            lo_number: 0,
            lo_encrypt_type: 0,
            lo_encrypt_key_size: 0,
            lo_flags: flags,
            lo_file_name: name,
            lo_crypt_name: [0; LO_NAME_SIZE],
            lo_encrypt_key: [0; 32],
            lo_init: [0; 2],
        }
    }
}

/// How to attach a backing file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttachOptions {
    /// Read-only device (`LO_FLAGS_READ_ONLY`); the backing file is opened read-only too.
    pub read_only: bool,
    /// Direct I/O to the backing file (`LO_FLAGS_DIRECT_IO`): no page cache in between.
    pub direct_io: bool,
    /// Fail the attach when direct I/O was asked for but the kernel did not turn it on.
    pub require_direct_io: bool,
    /// Detach automatically on the last close (`LO_FLAGS_AUTOCLEAR`).
    pub autoclear: bool,
    /// Logical block size in bytes (512, 1024, 2048 or 4096); 0 for the kernel's default.
    pub block_size: u32,
}

impl Default for AttachOptions {
    fn default() -> Self {
        Self {
            read_only: false,
            direct_io: true,
            require_direct_io: false,
            autoclear: false,
            block_size: 0,
        }
    }
}

/// An open handle on one attached loop device, `/dev/loopN`.
///
/// Dropping it only closes the handle (which detaches an autoclear device when it was the
/// last opener); [`LoopDevice::detach`] detaches explicitly.
#[derive(Debug)]
pub struct LoopDevice {
    number: u32,
    file: File,
}

/// The identity of one binding of a loop device to its backing file: the device's disk
/// sequence number (`/sys/block/loopN/diskseq`, Linux 5.15+), which the kernel increments
/// when the device is bound and again when it is detached. Unlike the backing file's
/// path, it survives a lazy unmount of the file's filesystem, and unlike a stat of the
/// file it works when that filesystem is dead.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BindingId {
    /// `diskseq` while bound.
    pub diskseq: u64,
}

/// What sysfs says about one bound loop device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoopInfo {
    /// N in `/dev/loopN`.
    pub number: u32,
    /// `/dev/loopN`.
    pub device: PathBuf,
    /// The backing file, as the kernel names it.
    pub backing_file: PathBuf,
    /// Direct I/O is on.
    pub direct_io: bool,
    /// The device is read-only.
    pub read_only: bool,
    /// The device detaches on last close.
    pub autoclear: bool,
}

/// How often attach retries when another process takes the free device first.
const ATTACH_ATTEMPTS: u32 = 32;

impl LoopDevice {
    /// Attaches `backing` to a free loop device with `opts` and returns an open handle on
    /// the device (`LOOP_CTL_GET_FREE`, then `LOOP_CONFIGURE`, or `LOOP_SET_FD` +
    /// `LOOP_SET_STATUS64` + `LOOP_SET_DIRECT_IO` on kernels without `LOOP_CONFIGURE`).
    pub fn attach(backing: &Path, opts: &AttachOptions) -> Result<LoopDevice> {
        let file = OpenOptions::new()
            .read(true)
            .write(!opts.read_only)
            .custom_flags(libc::O_CLOEXEC)
            .open(backing)
            .map_err(|e| {
                DriverError::io(
                    format!(
                        "opening {} to attach it to a loop device",
                        backing.display()
                    ),
                    e,
                )
            })?;
        Self::attach_file(&file, backing, opts)
    }

    /// Like [`Self::attach`], with the backing file already open (its access mode must
    /// match `opts.read_only`). `name` is recorded as the device's file name.
    pub fn attach_file(backing: &File, name: &Path, opts: &AttachOptions) -> Result<LoopDevice> {
        if ![0, 512, 1024, 2048, 4096].contains(&opts.block_size) {
            return Err(DriverError::invalid(
                "loop block size",
                opts.block_size.to_string(),
                "expected 512, 1024, 2048 or 4096 (or 0 for the default)",
            ));
        }
        let control = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open("/dev/loop-control")
            .map_err(|e| DriverError::io("opening /dev/loop-control", e))?;
        let mut flags = 0;
        if opts.read_only {
            flags |= LO_FLAGS_READ_ONLY;
        }
        if opts.autoclear {
            flags |= LO_FLAGS_AUTOCLEAR;
        }
        if opts.direct_io {
            flags |= LO_FLAGS_DIRECT_IO;
        }
        let mut last_busy = None;
        for _ in 0..ATTACH_ATTEMPTS {
            // SAFETY: LOOP_CTL_GET_FREE takes no argument and returns a device number or -1.
            let n = unsafe { libc::ioctl(control.as_raw_fd(), LOOP_CTL_GET_FREE) };
            if n < 0 {
                return Err(DriverError::io(
                    "asking /dev/loop-control for a free loop device",
                    std::io::Error::last_os_error(),
                ));
            }
            let number = n as u32;
            let dev = open_device(number, opts.read_only)?;
            match configure(&dev, backing, name, flags, opts.block_size) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                    // Someone else bound it between GET_FREE and our ioctl: next one.
                    last_busy = Some(number);
                    continue;
                }
                Err(e) => {
                    return Err(DriverError::io(
                        format!("attaching {} to /dev/loop{number}", name.display()),
                        e,
                    ));
                }
            }
            let dev = LoopDevice { number, file: dev };
            if let Err(e) = dev.check_flags(opts) {
                let _ = dev.detach();
                return Err(e);
            }
            return Ok(dev);
        }
        Err(DriverError::io(
            format!(
                "attaching {} to a loop device: every free device was taken by another \
                 process first ({ATTACH_ATTEMPTS} attempts, last /dev/loop{})",
                name.display(),
                last_busy.unwrap_or(0)
            ),
            std::io::Error::from_raw_os_error(libc::EBUSY),
        ))
    }

    /// Verifies direct I/O and read-only after attach, turning direct I/O on explicitly if
    /// `LOOP_CONFIGURE` ignored the flag.
    fn check_flags(&self, opts: &AttachOptions) -> Result<()> {
        if opts.direct_io && direct_io(self.number) != Some(true) {
            // SAFETY: LOOP_SET_DIRECT_IO takes an unsigned long by value.
            let _ = unsafe {
                libc::ioctl(
                    self.file.as_raw_fd(),
                    LOOP_SET_DIRECT_IO,
                    1 as libc::c_ulong,
                )
            };
            if opts.require_direct_io && direct_io(self.number) != Some(true) {
                return Err(DriverError::io(
                    format!(
                        "turning on direct I/O for {} (/sys/block/loop{}/loop/dio stays 0: \
                         the backing file does not support O_DIRECT)",
                        self.path().display(),
                        self.number
                    ),
                    std::io::Error::from_raw_os_error(libc::EINVAL),
                ));
            }
        }
        if opts.read_only && read_only(self.number) != Some(true) {
            return Err(DriverError::io(
                format!("making {} read-only", self.path().display()),
                std::io::Error::from_raw_os_error(libc::EINVAL),
            ));
        }
        Ok(())
    }

    /// Opens an existing `/dev/loopN` (read-write unless `read_only`).
    pub fn open(number: u32, read_only: bool) -> Result<LoopDevice> {
        Ok(LoopDevice {
            number,
            file: open_device(number, read_only)?,
        })
    }

    /// N in `/dev/loopN`.
    pub fn number(&self) -> u32 {
        self.number
    }

    /// `/dev/loopN`.
    pub fn path(&self) -> PathBuf {
        device_path(self.number)
    }

    /// The open device.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Detaches the backing file (`LOOP_CLR_FD`). When other openers remain, the kernel
    /// defers the detach to the last close.
    pub fn detach(&self) -> Result<()> {
        // SAFETY: LOOP_CLR_FD takes no argument.
        let r = unsafe { libc::ioctl(self.file.as_raw_fd(), LOOP_CLR_FD, 0) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            // ENXIO: not bound (already detached).
            if e.raw_os_error() != Some(libc::ENXIO) {
                return Err(DriverError::io(
                    format!("detaching {}", self.path().display()),
                    e,
                ));
            }
        }
        Ok(())
    }

    /// Makes the device re-read its backing file's size (`LOOP_SET_CAPACITY`).
    pub fn set_capacity(&self) -> Result<()> {
        // SAFETY: LOOP_SET_CAPACITY takes no argument.
        let r = unsafe { libc::ioctl(self.file.as_raw_fd(), LOOP_SET_CAPACITY, 0) };
        if r < 0 {
            return Err(DriverError::io(
                format!("updating the size of {}", self.path().display()),
                std::io::Error::last_os_error(),
            ));
        }
        Ok(())
    }

    /// Caps the size of the requests the device sends to its backing file
    /// (`/sys/block/loopN/queue/max_sectors_kb`, at most `max_hw_sectors_kb`); returns the
    /// value in effect.
    pub fn set_max_request_kb(&self, kb: u32) -> Result<u32> {
        let q = sys_dir(self.number).join("queue");
        let hw: u32 = read_sys(&q.join("max_hw_sectors_kb"))
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(kb);
        let want = kb.min(hw).max(4);
        std::fs::write(q.join("max_sectors_kb"), want.to_string()).map_err(|e| {
            DriverError::io(
                format!("setting {}/max_sectors_kb to {want}", q.display()),
                e,
            )
        })?;
        Ok(read_sys(&q.join("max_sectors_kb"))
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(want))
    }

    /// What sysfs says about this device now (`None` once detached).
    pub fn info(&self) -> Option<LoopInfo> {
        info(self.number)
    }

    /// The identity of this device's current binding, `None` once detached (or on a
    /// kernel without `diskseq`).
    pub fn binding_id(&self) -> Option<BindingId> {
        binding_id(self.number)
    }
}

/// Binds `backing` to the open device `dev`.
fn configure(
    dev: &File,
    backing: &File,
    name: &Path,
    flags: u32,
    block_size: u32,
) -> std::io::Result<()> {
    let cfg = LoopConfig {
        fd: backing.as_raw_fd() as u32,
        block_size,
        info: LoopInfo64::new(flags, name),
        reserved: [0; 8],
    };
    // SAFETY: LOOP_CONFIGURE reads one `struct loop_config`, which `cfg` is (repr(C), same
    // layout as <linux/loop.h>), valid for the duration of the call.
    let r = unsafe { libc::ioctl(dev.as_raw_fd(), LOOP_CONFIGURE, &cfg as *const LoopConfig) };
    if r == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    if !matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(libc::ENOTTY)) {
        return Err(e);
    }
    // No LOOP_CONFIGURE (Linux < 5.8): bind, then set the flags.
    // SAFETY: LOOP_SET_FD takes the backing file descriptor by value.
    let r = unsafe {
        libc::ioctl(
            dev.as_raw_fd(),
            LOOP_SET_FD,
            backing.as_raw_fd() as libc::c_ulong,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // The read-only flag comes from the backing file's mode with LOOP_SET_FD.
    let info = LoopInfo64::new(flags & !(LO_FLAGS_READ_ONLY | LO_FLAGS_DIRECT_IO), name);
    // SAFETY: LOOP_SET_STATUS64 reads one `struct loop_info64` (repr(C)), valid for the call.
    let r = unsafe {
        libc::ioctl(
            dev.as_raw_fd(),
            LOOP_SET_STATUS64,
            &info as *const LoopInfo64,
        )
    };
    if r < 0 {
        let e = std::io::Error::last_os_error();
        // SAFETY: LOOP_CLR_FD takes no argument.
        unsafe { libc::ioctl(dev.as_raw_fd(), LOOP_CLR_FD, 0) };
        return Err(e);
    }
    if flags & LO_FLAGS_DIRECT_IO != 0 {
        // SAFETY: LOOP_SET_DIRECT_IO takes an unsigned long by value. Failure is checked
        // by the caller through sysfs.
        unsafe { libc::ioctl(dev.as_raw_fd(), LOOP_SET_DIRECT_IO, 1 as libc::c_ulong) };
    }
    Ok(())
}

/// `/dev/loopN`.
pub fn device_path(number: u32) -> PathBuf {
    PathBuf::from(format!("/dev/loop{number}"))
}

/// N from `/dev/loopN` (or `loopN`).
pub fn parse_device(device: &Path) -> Option<u32> {
    device
        .file_name()?
        .to_str()?
        .strip_prefix("loop")?
        .parse()
        .ok()
}

fn sys_dir(number: u32) -> PathBuf {
    PathBuf::from(format!("/sys/block/loop{number}"))
}

fn read_sys(path: &Path) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim_end_matches('\n').to_owned())
}

/// The backing file of `/dev/loopN`, `None` when it is not bound.
pub fn backing_file(number: u32) -> Option<PathBuf> {
    read_sys(&sys_dir(number).join("loop/backing_file"))
        .filter(|s| !s.is_empty())
        .map(PathBuf::from)
}

/// Whether `/dev/loopN` does direct I/O, `None` when it is not bound.
pub fn direct_io(number: u32) -> Option<bool> {
    read_sys(&sys_dir(number).join("loop/dio")).map(|s| s.trim() == "1")
}

/// Whether `/dev/loopN` is read-only.
pub fn read_only(number: u32) -> Option<bool> {
    read_sys(&sys_dir(number).join("ro")).map(|s| s.trim() == "1")
}

/// What sysfs says about `/dev/loopN`, `None` when it is not bound.
pub fn info(number: u32) -> Option<LoopInfo> {
    let backing_file = backing_file(number)?;
    let dir = sys_dir(number);
    Some(LoopInfo {
        number,
        device: device_path(number),
        backing_file,
        direct_io: direct_io(number).unwrap_or(false),
        read_only: read_only(number).unwrap_or(false),
        autoclear: read_sys(&dir.join("loop/autoclear")).is_some_and(|s| s.trim() == "1"),
    })
}

/// Every bound loop device.
pub fn list() -> Result<Vec<LoopInfo>> {
    let rd =
        std::fs::read_dir("/sys/block").map_err(|e| DriverError::io("listing /sys/block", e))?;
    let mut out: Vec<LoopInfo> = rd
        .flatten()
        .filter_map(|e| parse_device(Path::new(&e.file_name())))
        .filter_map(info)
        .collect();
    out.sort_by_key(|l| l.number);
    Ok(out)
}

/// Detaches `/dev/loopN` (`LOOP_CLR_FD`); a device that is not bound is fine.
pub fn detach(number: u32) -> Result<()> {
    match LoopDevice::open(number, true) {
        Ok(d) => d.detach(),
        Err(DriverError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// Whether `/dev/loopN` is bound to any file (its sysfs `loop` directory exists only
/// while it is, and names a backing file).
pub fn is_bound(number: u32) -> bool {
    backing_file(number).is_some()
}

fn diskseq(number: u32) -> Option<u64> {
    read_sys(&sys_dir(number).join("diskseq")).and_then(|s| s.trim().parse().ok())
}

/// The identity of `/dev/loopN`'s current binding, `None` when it is not bound (or the
/// kernel has no `diskseq`). Sysfs only: the device is not opened.
pub fn binding_id(number: u32) -> Option<BindingId> {
    let before = diskseq(number)?;
    if !is_bound(number) {
        return None;
    }
    // Unbound and rebound in between: the sequence moved.
    (diskseq(number)? == before).then_some(BindingId { diskseq: before })
}

/// Whether `/dev/loopN` still has the binding `id` ([`LoopDevice::binding_id`] at
/// attach): bound, and not detached or rebound since. Judged by the device's state, not
/// the backing file's path, so a device whose backing filesystem was lazily unmounted
/// (or whose FUSE daemon died) still counts.
pub fn is_bound_to(number: u32, id: &BindingId) -> bool {
    binding_id(number).as_ref() == Some(id)
}

/// Waits until `/dev/loopN` no longer has the binding `id` (detached, or rebound), up to
/// `timeout`. True when it does not. Judged by the loop device's state ([`is_bound_to`]),
/// so a backing file whose filesystem (e.g. the mapper's FUSE mount) was lazily
/// unmounted meanwhile, and which sysfs now names by another path, is still seen as
/// bound.
pub fn wait_detached(number: u32, id: &BindingId, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if !is_bound_to(number, id) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Opens `/dev/loopN`, creating the node from sysfs when devtmpfs did not (yet).
fn open_device(number: u32, read_only: bool) -> Result<File> {
    let path = device_path(number);
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match OpenOptions::new()
            .read(true)
            .write(!read_only)
            .custom_flags(libc::O_CLOEXEC)
            .open(&path)
        {
            Ok(f) => {
                let md = f
                    .metadata()
                    .map_err(|e| DriverError::io(format!("inspecting {}", path.display()), e))?;
                if !md.file_type().is_block_device() || nix::sys::stat::major(md.rdev()) != 7 {
                    return Err(DriverError::io(
                        format!("{} is not a loop block device", path.display()),
                        std::io::Error::from_raw_os_error(libc::ENOTBLK),
                    ));
                }
                return Ok(f);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if let Some(dev) = read_sys(&sys_dir(number).join("dev"))
                    && let Some((ma, mi)) = dev.trim().split_once(':')
                    && let (Ok(ma), Ok(mi)) = (ma.parse::<u64>(), mi.parse::<u64>())
                {
                    let _ = nix::sys::stat::mknod(
                        &path,
                        nix::sys::stat::SFlag::S_IFBLK,
                        nix::sys::stat::Mode::from_bits_truncate(0o660),
                        nix::sys::stat::makedev(ma, mi),
                    );
                }
                if Instant::now() >= deadline {
                    return Err(DriverError::io(format!("opening {}", path.display()), e));
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(DriverError::io(format!("opening {}", path.display()), e)),
        }
    }
}

/// Why `/dev/loopN` is in use by someone other than the processes in `ignore`: mounted
/// (from `/proc/self/mountinfo`), held by another block device (`holders/`), or open by a
/// process (`/proc/*/fd`, the calling process included). `None` when it is not.
pub fn in_use(number: u32, ignore: &[u32]) -> Option<String> {
    let dir = sys_dir(number);
    let dev = read_sys(&dir.join("dev"))?;
    let device = device_path(number);
    let (ma, mi) = dev.trim().split_once(':')?;
    let rdev = nix::sys::stat::makedev(ma.parse().ok()?, mi.parse().ok()?);
    if let Ok(mi) = std::fs::read_to_string("/proc/self/mountinfo") {
        for line in mi.lines() {
            let f: Vec<&str> = line.split(' ').collect();
            if f.len() > 4 && f[2] == dev.trim() {
                return Some(format!("{} is mounted at {}", device.display(), f[4]));
            }
        }
    }
    if let Ok(rd) = std::fs::read_dir(dir.join("holders"))
        && let Some(h) = rd.flatten().next()
    {
        return Some(format!(
            "{} is held by {}",
            device.display(),
            h.file_name().to_string_lossy()
        ));
    }
    for p in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if ignore.contains(&pid) {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let Ok(md) = std::fs::metadata(fd.path())
                && md.file_type().is_block_device()
                && md.rdev() == rdev
            {
                let comm = std::fs::read_to_string(p.path().join("comm")).unwrap_or_default();
                return Some(format!(
                    "{} is open by pid {pid} ({})",
                    device.display(),
                    comm.trim()
                ));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek, SeekFrom, Write};

    /// Detaches the device on drop, whatever the test did.
    struct Guard(u32);
    impl Drop for Guard {
        fn drop(&mut self) {
            let _ = detach(self.0);
        }
    }

    fn sparse(dir: &Path, name: &str, size: u64) -> PathBuf {
        let p = dir.join(name);
        let f = File::create(&p).unwrap();
        f.set_len(size).unwrap();
        p
    }

    #[test]
    fn layouts_match_the_kernel_headers() {
        assert_eq!(std::mem::size_of::<LoopInfo64>(), 232);
        assert_eq!(std::mem::size_of::<LoopConfig>(), 304);
        assert_eq!(parse_device(Path::new("/dev/loop12")), Some(12));
        assert_eq!(parse_device(Path::new("loop0")), Some(0));
        assert_eq!(parse_device(Path::new("/dev/nbd0")), None);
        assert_eq!(parse_device(Path::new("/dev/loop-control")), None);
    }

    #[test]
    fn attach_query_write_detach() {
        if !testkit::require_root() {
            return;
        }
        let dir = tempfile::tempdir_in("/var/tmp").unwrap();
        let file = sparse(dir.path(), "disk.img", 64 << 20);
        let opts = AttachOptions {
            direct_io: true,
            require_direct_io: true,
            ..AttachOptions::default()
        };
        let dev = LoopDevice::attach(&file, &opts).unwrap();
        let _g = Guard(dev.number());
        let info = dev.info().expect("bound");
        assert_eq!(info.backing_file, file);
        assert!(info.direct_io, "{info:?}");
        assert!(!info.read_only);
        assert!(!info.autoclear);
        assert!(list().unwrap().contains(&info));
        assert_eq!(dev.set_max_request_kb(1024).unwrap(), 1024);
        // Size is the file's.
        let mut f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(dev.path())
            .unwrap();
        assert_eq!(f.seek(SeekFrom::End(0)).unwrap(), 64 << 20);
        f.seek(SeekFrom::Start(1 << 20)).unwrap();
        f.write_all(&[0xab; 4096]).unwrap();
        f.sync_all().unwrap();
        drop(f);
        let mut back = vec![0u8; 4096];
        let mut raw = File::open(&file).unwrap();
        raw.seek(SeekFrom::Start(1 << 20)).unwrap();
        raw.read_exact(&mut back).unwrap();
        assert!(back.iter().all(|&b| b == 0xab));
        // Our own handle counts, unless ignored.
        let me = std::process::id();
        let why = in_use(dev.number(), &[]).expect("open by us");
        assert!(why.contains(&format!("open by pid {me}")), "{why}");
        assert_eq!(in_use(dev.number(), &[me]), None);
        let id = dev.binding_id().expect("bound");
        dev.detach().unwrap();
        let n = dev.number();
        drop(dev);
        assert!(wait_detached(n, &id, Duration::from_secs(5)));
        assert_eq!(super::info(n), None);
        // Detaching an unbound device is fine.
        detach(n).unwrap();
    }

    #[test]
    fn read_only_and_autoclear() {
        if !testkit::require_root() {
            return;
        }
        let dir = tempfile::tempdir_in("/var/tmp").unwrap();
        let file = sparse(dir.path(), "ro.img", 8 << 20);
        let dev = LoopDevice::attach(
            &file,
            &AttachOptions {
                read_only: true,
                autoclear: true,
                ..AttachOptions::default()
            },
        )
        .unwrap();
        let n = dev.number();
        let _g = Guard(n);
        let info = dev.info().unwrap();
        assert!(info.read_only && info.autoclear, "{info:?}");
        let id = dev.binding_id().expect("bound");
        // Writes fail: at open (older kernels) or at the write.
        if let Ok(mut w) = OpenOptions::new().write(true).open(dev.path()) {
            let err = w.write_all(&[1u8; 512]).and_then(|()| w.sync_all());
            assert!(err.is_err(), "a write to a read-only loop device succeeded");
        }
        // Another opener keeps it bound past our close.
        let other = File::open(dev.path()).unwrap();
        drop(dev);
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(backing_file(n).as_deref(), Some(file.as_path()));
        assert_eq!(in_use(n, &[std::process::id()]), None);
        drop(other);
        // The last close detaches it.
        assert!(wait_detached(n, &id, Duration::from_secs(5)));
    }

    #[test]
    fn concurrent_attaches_get_distinct_devices() {
        if !testkit::require_root() {
            return;
        }
        let dir = tempfile::tempdir_in("/var/tmp").unwrap();
        let files: Vec<PathBuf> = (0..6)
            .map(|i| sparse(dir.path(), &format!("c{i}.img"), 1 << 20))
            .collect();
        let devs: Vec<LoopDevice> = std::thread::scope(|s| {
            let hs: Vec<_> = files
                .iter()
                .map(|f| s.spawn(move || LoopDevice::attach(f, &AttachOptions::default())))
                .collect();
            hs.into_iter().map(|h| h.join().unwrap().unwrap()).collect()
        });
        let _guards: Vec<Guard> = devs.iter().map(|d| Guard(d.number())).collect();
        let mut nums: Vec<u32> = devs.iter().map(LoopDevice::number).collect();
        nums.sort();
        nums.dedup();
        assert_eq!(nums.len(), files.len());
        for (d, f) in devs.iter().zip(&files) {
            assert_eq!(backing_file(d.number()).as_deref(), Some(f.as_path()));
        }
    }

    #[test]
    fn in_use_names_an_opener() {
        if !testkit::require_root() {
            return;
        }
        let dir = tempfile::tempdir_in("/var/tmp").unwrap();
        let file = sparse(dir.path(), "fs.img", 32 << 20);
        let dev = LoopDevice::attach(&file, &AttachOptions::default()).unwrap();
        let _g = Guard(dev.number());
        // A child process holding the device open.
        let mut child = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("exec 3<{}; exec sleep 30", dev.path().display()))
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut why = None;
        while why.is_none() && Instant::now() < deadline {
            why = in_use(dev.number(), &[std::process::id()]);
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        let why = why.expect("the child's open fd is seen");
        assert!(
            why.contains(&format!("open by pid {}", child.id())),
            "{why}"
        );
    }

    /// Lazily unmounts the directory on drop (the test's tmpfs), whatever the test did.
    struct MountGuard(PathBuf);
    impl Drop for MountGuard {
        fn drop(&mut self) {
            let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
        }
    }

    /// The bug this guards against: the userspace mapper lazily unmounts its FUSE mount
    /// while a user still holds the loop device (detach deferred to the last close); sysfs
    /// then names the backing file `/image`, not its old path, and a path comparison took
    /// that for "detached". Here a tmpfs stands in for the FUSE mount: after the deferred
    /// detach and the lazy unmount, the device is still bound (and `wait_detached` says
    /// so) until the user closes it.
    #[test]
    fn wait_detached_judges_by_the_device_not_the_lazily_unmounted_path() {
        if !testkit::require_root() {
            return;
        }
        let dir = tempfile::tempdir_in("/var/tmp").unwrap();
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        nix::mount::mount(
            Some("tmpfs"),
            &mnt,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some("size=64m"),
        )
        .unwrap();
        let mg = MountGuard(mnt.clone());
        let file = sparse(&mnt, "image", 16 << 20);
        let opts = AttachOptions {
            direct_io: false,
            ..AttachOptions::default()
        };
        let dev = LoopDevice::attach(&file, &opts).unwrap();
        let n = dev.number();
        let _g = Guard(n);
        let id = dev.binding_id().expect("bound");
        assert!(is_bound_to(n, &id));
        assert_eq!(binding_id(n), Some(id));
        // A user (a mounted filesystem, a container) keeps the device open.
        let user = File::open(dev.path()).unwrap();
        dev.detach().unwrap();
        drop(dev);
        assert!(!wait_detached(n, &id, Duration::from_millis(200)));
        // The lazy unmount: the file lives on, and sysfs names it relative to the
        // detached mount.
        nix::mount::umount2(&mnt, nix::mount::MntFlags::MNT_DETACH).unwrap();
        std::mem::forget(mg);
        let shown = backing_file(n).expect("still bound");
        eprintln!("/dev/loop{n} backing file after the lazy unmount: {shown:?}");
        assert_ne!(shown, file);
        assert!(is_bound(n));
        assert!(is_bound_to(n, &id));
        assert!(
            !wait_detached(n, &id, Duration::from_millis(300)),
            "/dev/loop{n} is still bound (to {shown:?}) while its user holds it"
        );
        // The last close detaches it (autoclear, set by the deferred LOOP_CLR_FD).
        drop(user);
        assert!(wait_detached(n, &id, Duration::from_secs(5)));
        assert!(!is_bound(n));
        assert_eq!(binding_id(n), None);
    }
}
