//! The kernel RBD client (krbd), driven through sysfs.
//!
//! **Map**: connect once as the client (librados) to read the monitor list and the key
//! with Ceph's own config rules, write
//! `<mons> name=<id>,secret=<key>,<options> <pool> <image> <snap|->` to
//! `/sys/bus/rbd/add_single_major` (or `add`), find the new device, check that the kernel
//! opened the **image id** that was asked for (if the name now points to another image,
//! the device is removed again and the map fails), and wait for `/dev/rbdN` (created with
//! `mknod` from `/sys/block/rbdN/dev` when neither udev nor devtmpfs does).
//!
//! **Options**: `noshare` (on by default: each mapping has its own client instance and
//! address, so blocklisting one mapping's address fences exactly that mapping),
//! `exclusive`, `lock_on_read`, `queue_depth=N`, `osd_request_timeout=N` (from
//! [`MapOptions::io_timeout_secs`](super::MapOptions::io_timeout_secs)), `mount_timeout=N`
//! (bounds how long the sysfs write may block) and, with `exclusive`, `lock_timeout=N`
//! (the same bound on waiting for the lock at map time), `ro`, `_pool_ns=NS`, `ms_mode=M`.
//!
//! **Monitors**: msgr1 addresses unless `ms_mode` is set to something other than
//! `legacy`, then msgr2 addresses (see the `monaddr` module).
//!
//! **Secrets**: the key is read from the keyring file (or the conf's `key`/`keyfile`), held
//! in a type that never prints itself, written only to the sysfs file, and redacted from
//! every error message. It never appears in argv or logs.
//!
//! **List**: `/sys/bus/rbd/devices/N/{pool,pool_ns,name,image_id,current_snap,client_addr}`
//! and `/sys/block/rbdN/ro`. **Unmap**: `N` or `N force` to `remove_single_major` (or
//! `remove`), after checking the device still maps the same image id.

mod auth;
mod monaddr;
mod sysfs;

use std::fs::File;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use self::auth::{ClusterAccess, Secret};
use self::sysfs::{RbdDev, Sysfs};
use super::{Backend, MapRequest, Mapper, MapperConfig, Mapping};
use crate::error::{DriverError, Result};

/// Default kernel `mount_timeout`: how long the kernel may try to reach the cluster
/// while the sysfs write blocks.
pub const DEFAULT_MOUNT_TIMEOUT_SECS: u32 = 30;

/// The kernel RBD backend.
#[derive(Debug, Clone)]
pub struct KrbdMapper {
    cfg: MapperConfig,
    mount_timeout_secs: u32,
    dev_dir: PathBuf,
    node_wait: Duration,
    remove_wait: Duration,
}

impl KrbdMapper {
    /// A mapper with these host settings.
    pub fn new(cfg: &MapperConfig) -> Self {
        Self {
            cfg: cfg.clone(),
            mount_timeout_secs: DEFAULT_MOUNT_TIMEOUT_SECS,
            dev_dir: PathBuf::from("/dev"),
            node_wait: Duration::from_secs(2),
            remove_wait: Duration::from_secs(10),
        }
    }

    /// Sets the kernel `mount_timeout` (seconds, at least 1): the longest a map may block
    /// trying to reach the monitors.
    pub fn with_mount_timeout(mut self, secs: u32) -> Self {
        self.mount_timeout_secs = secs.max(1);
        self
    }

    /// Where device nodes live (default `/dev`).
    pub fn with_dev_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.dev_dir = dir.into();
        self
    }

    fn sysfs(&self) -> Sysfs {
        Sysfs::new(&self.cfg.sysfs)
    }

    fn device_path(&self, id: u32) -> PathBuf {
        self.dev_dir.join(format!("rbd{id}"))
    }

    fn mapping(&self, d: RbdDev) -> Mapping {
        Mapping {
            backend: Backend::Krbd,
            device: self.device_path(d.id),
            pool: d.pool,
            namespace: d.pool_ns,
            image: d.name,
            image_id: d.image_id,
            snap: d.snap,
            client_addr: d.client_addr,
            read_only: d.read_only,
            pid: None,
        }
    }

    /// Serializes map operations of this host's processes, so that the device that appears
    /// during our write is ours. Released when the file is dropped.
    fn lock(&self) -> Result<File> {
        let dir = &self.cfg.run_dir;
        std::fs::create_dir_all(dir)
            .map_err(|e| DriverError::io(format!("creating {}", dir.display()), e))?;
        let path = dir.join("krbd.lock");
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| DriverError::io(format!("opening {}", path.display()), e))?;
        f.lock()
            .map_err(|e| DriverError::io(format!("locking {}", path.display()), e))?;
        Ok(f)
    }

    fn map_err(req: &MapRequest, reason: impl Into<String>) -> DriverError {
        DriverError::Map {
            backend: Backend::Krbd,
            image: req.spec(),
            reason: reason.into(),
        }
    }

    /// Maps with already-resolved cluster access. Everything after the secret is known.
    pub(crate) fn map_with(&self, req: &MapRequest, access: &ClusterAccess) -> Result<Mapping> {
        let secret = &access.secret;
        let msgr2 = monaddr::wants_msgr2(req.options.ms_mode.as_deref())?;
        let mons = monaddr::kernel_mon_list(&monaddr::parse_mon_host(&access.mon_host)?, msgr2)?;
        let options = kernel_options(req, &access.id, self.mount_timeout_secs);
        let tail = format!(
            "{} {} {}",
            req.pool,
            req.image,
            req.snap.as_deref().unwrap_or("-")
        );
        let shown = format!("{mons} {options},secret=<redacted> {tail}");
        let line = format!("{mons} {options},secret={} {tail}", secret.expose());

        let sysfs = self.sysfs();
        let add = sysfs.add_file().ok_or_else(|| self.unavailable_err())?;
        let _lock = self.lock()?;
        let before = sysfs.device_ids().map_err(|e| {
            DriverError::io(format!("listing {}", sysfs.devices_dir().display()), e)
        })?;
        let written = sysfs::write_control(&add, &line);
        auth::wipe(line);
        if let Err(e) = written {
            let reason = format!(
                "writing \"{shown}\" to {}: {e}{}",
                add.display(),
                add_errno_hint(e.raw_os_error())
            );
            return Err(Self::map_err(req, redact(secret, &reason)));
        }
        self.adopt_new_device(req, &before, &redact(secret, &shown))
    }

    /// After a successful add write: finds the device that appeared (not in `before`) for
    /// this image, checks its image id (removing it again on a mismatch) and its node.
    fn adopt_new_device(&self, req: &MapRequest, before: &[u32], shown: &str) -> Result<Mapping> {
        let sysfs = self.sysfs();
        let after = sysfs.device_ids().map_err(|e| {
            DriverError::io(format!("listing {}", sysfs.devices_dir().display()), e)
        })?;
        let mut ours: Vec<RbdDev> = Vec::new();
        for id in after.iter().filter(|id| !before.contains(id)) {
            let dev = sysfs.read_device(*id).map_err(|e| {
                DriverError::io(format!("reading {}", sysfs.device_dir(*id).display()), e)
            })?;
            if let Some(d) = dev
                && d.pool == req.pool
                && d.pool_ns == req.namespace
                && d.name == req.image
                && d.snap == req.snap
            {
                ours.push(d);
            }
        }
        // Two new devices of the same image can only come from a mapper outside our lock
        // (e.g. `rbd map` run by hand); the newest is the likeliest ours.
        let Some(dev) = ours.pop() else {
            return Err(Self::map_err(
                req,
                format!(
                    "the kernel accepted \"{shown}\" but no new device of this image appeared \
                     under {}",
                    sysfs.devices_dir().display()
                ),
            ));
        };
        if dev.image_id != req.image_id {
            let undo = self.remove(dev.id, true);
            return Err(Self::map_err(
                req,
                format!(
                    "the name now refers to image id {:?}, not the requested {:?}; the device \
                     rbd{} was removed again{}",
                    dev.image_id,
                    req.image_id,
                    dev.id,
                    match undo {
                        Ok(()) => String::new(),
                        Err(e) => format!(" (removal failed: {e})"),
                    }
                ),
            ));
        }
        if let Err(e) = self.ensure_node(dev.id) {
            let _ = self.remove(dev.id, true);
            return Err(e);
        }
        Ok(self.mapping(dev))
    }

    fn unavailable_err(&self) -> DriverError {
        match self.check_available() {
            Err(e) => e,
            Ok(()) => DriverError::BackendUnavailable {
                backend: Backend::Krbd,
                reason: "no add control file".into(),
            },
        }
    }

    /// Waits for `/dev/rbdN`; creates it from `/sys/block/rbdN/dev` when nobody does.
    fn ensure_node(&self, id: u32) -> Result<()> {
        let sysfs = self.sysfs();
        let (major, minor) = sysfs.dev_numbers(id).map_err(|e| {
            DriverError::io(format!("reading {}/dev", sysfs.block_dir(id).display()), e)
        })?;
        let want = nix::sys::stat::makedev(u64::from(major), u64::from(minor));
        let path = self.device_path(id);
        let deadline = Instant::now() + self.node_wait;
        loop {
            match std::fs::metadata(&path) {
                Ok(m) if m.file_type().is_block_device() && m.rdev() == want => return Ok(()),
                Ok(_) => {
                    // A stale node with other numbers (or not a block device): replace it.
                    std::fs::remove_file(&path).map_err(|e| {
                        DriverError::io(format!("removing stale {}", path.display()), e)
                    })?;
                }
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                }
                Err(_) => {}
            }
            // Neither udev nor devtmpfs made it: make it ourselves.
            return match nix::sys::stat::mknod(
                &path,
                nix::sys::stat::SFlag::S_IFBLK,
                nix::sys::stat::Mode::from_bits_truncate(0o660),
                want,
            ) {
                Ok(()) => Ok(()),
                Err(nix::errno::Errno::EEXIST) => continue,
                Err(e) => Err(DriverError::io(
                    format!("creating {} ({major}:{minor})", path.display()),
                    std::io::Error::from(e),
                )),
            };
        }
    }

    /// Writes `id [force]` to the remove file and waits for the device to go.
    fn remove(&self, id: u32, force: bool) -> Result<()> {
        let sysfs = self.sysfs();
        let file = sysfs.remove_file().ok_or_else(|| self.unavailable_err())?;
        let line = if force {
            format!("{id} force")
        } else {
            id.to_string()
        };
        sysfs::write_control(&file, &line)
            .map_err(|e| DriverError::io(format!("writing \"{line}\" to {}", file.display()), e))?;
        let dir = sysfs.device_dir(id);
        let deadline = Instant::now() + self.remove_wait;
        while dir.exists() {
            if Instant::now() >= deadline {
                return Err(DriverError::Timeout {
                    what: format!("removal of rbd{id} ({} still exists)", dir.display()),
                    secs: self.remove_wait.as_secs(),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }
}

/// The kernel option string without the secret: `name=ID,noshare,...`.
fn kernel_options(req: &MapRequest, id: &str, mount_timeout: u32) -> String {
    let o = &req.options;
    let mut v = vec![format!("name={id}")];
    if o.noshare {
        v.push("noshare".into());
    }
    if req.exclusive {
        v.push("exclusive".into());
    }
    if o.lock_on_read {
        v.push("lock_on_read".into());
    }
    if let Some(q) = o.queue_depth {
        v.push(format!("queue_depth={q}"));
    }
    if let Some(t) = o.io_timeout_secs {
        v.push(format!("osd_request_timeout={t}"));
    }
    v.push(format!("mount_timeout={mount_timeout}"));
    if req.exclusive {
        // The kernel waits for the lock at map time, forever by default; bound it.
        v.push(format!("lock_timeout={mount_timeout}"));
    }
    if req.read_only || req.snap.is_some() {
        v.push("ro".into());
    }
    if !req.namespace.is_empty() {
        v.push(format!("_pool_ns={}", req.namespace));
    }
    if let Some(m) = &o.ms_mode {
        v.push(format!("ms_mode={m}"));
    }
    v.join(",")
}

fn redact(secret: &Secret, s: &str) -> String {
    secret.redact(s)
}

/// What an errno from the add write usually means (the kernel logs details to dmesg).
fn add_errno_hint(errno: Option<i32>) -> &'static str {
    match errno {
        Some(libc_errno::ENOENT) => " (pool, namespace, image or snapshot not found)",
        Some(libc_errno::ENXIO) => {
            " (the image uses features this kernel does not support; see dmesg)"
        }
        Some(libc_errno::EINVAL) => {
            " (the kernel rejected the request: an option it does not know, or a bad name; see dmesg)"
        }
        Some(libc_errno::ETIMEDOUT) => " (the monitors could not be reached within mount_timeout)",
        Some(libc_errno::EACCES) | Some(libc_errno::EPERM) => {
            " (needs root, or cephx refused the client's key or caps)"
        }
        Some(libc_errno::EBUSY) => " (the image is busy, e.g. its exclusive lock is held)",
        _ => "",
    }
}

/// The errno values we interpret (Linux).
mod libc_errno {
    pub(super) use nix::libc::{EACCES, EBUSY, EINVAL, ENOENT, ENXIO, EPERM, ETIMEDOUT};
}

/// Rejects names that would break the whitespace-separated add line or inject options.
fn validate(req: &MapRequest) -> Result<()> {
    let plain = |what: &'static str, v: &str, allow_empty: bool| -> Result<()> {
        if v.is_empty() && !allow_empty {
            return Err(DriverError::invalid(what, v, "must not be empty"));
        }
        if let Some(c) = v
            .chars()
            .find(|c| c.is_whitespace() || c.is_control() || matches!(c, '/' | '@' | ','))
        {
            return Err(DriverError::invalid(
                what,
                v,
                format!("contains the character {c:?}, which the kernel client cannot take"),
            ));
        }
        Ok(())
    };
    plain("pool name", &req.pool, false)?;
    plain("namespace", &req.namespace, true)?;
    plain("image name", &req.image, false)?;
    if let Some(s) = &req.snap {
        plain("snapshot name", s, false)?;
        if s == "-" {
            return Err(DriverError::invalid(
                "snapshot name",
                s,
                "\"-\" means the head to the kernel",
            ));
        }
    }
    if req.image_id.is_empty() || !req.image_id.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Err(DriverError::invalid(
            "image id",
            &req.image_id,
            "expected the image's id (alphanumeric), which the mapping is checked against",
        ));
    }
    monaddr::wants_msgr2(req.options.ms_mode.as_deref())?;
    Ok(())
}

/// The device id of `/dev/rbdN`.
fn device_id(device: &Path) -> Option<u32> {
    device
        .file_name()?
        .to_str()?
        .strip_prefix("rbd")?
        .parse()
        .ok()
}

impl Mapper for KrbdMapper {
    fn backend(&self) -> Backend {
        Backend::Krbd
    }

    fn check_available(&self) -> Result<()> {
        let sysfs = self.sysfs();
        let unavailable = |reason: String| DriverError::BackendUnavailable {
            backend: Backend::Krbd,
            reason,
        };
        if !sysfs.bus().is_dir() {
            return Err(unavailable(format!(
                "{} does not exist: the rbd kernel module is not loaded (modprobe rbd)",
                sysfs.bus().display()
            )));
        }
        let Some(add) = sysfs.add_file() else {
            return Err(unavailable(format!(
                "neither add_single_major nor add exists in {}",
                sysfs.bus().display()
            )));
        };
        if let Err(e) = nix::unistd::access(&add, nix::unistd::AccessFlags::W_OK) {
            return Err(unavailable(format!(
                "{} is not writable ({e}); mapping needs root (CAP_SYS_ADMIN)",
                add.display()
            )));
        }
        if sysfs.remove_file().is_none() {
            return Err(unavailable(format!(
                "neither remove_single_major nor remove exists in {}",
                sysfs.bus().display()
            )));
        }
        Ok(())
    }

    fn map(&self, req: &MapRequest) -> Result<Mapping> {
        validate(req)?;
        self.check_available()?;
        let access = auth::resolve(&req.auth)?;
        self.map_with(req, &access)
    }

    fn unmap(&self, mapping: &Mapping, force: bool) -> Result<()> {
        let id = device_id(&mapping.device).ok_or_else(|| {
            DriverError::invalid(
                "krbd device",
                mapping.device.display().to_string(),
                "expected /dev/rbdN",
            )
        })?;
        let sysfs = self.sysfs();
        let current = sysfs.read_device(id).map_err(|e| {
            DriverError::io(format!("reading {}", sysfs.device_dir(id).display()), e)
        })?;
        let Some(current) = current else {
            // Already gone.
            return Ok(());
        };
        if !current.pool.eq(&mapping.pool)
            || current.pool_ns != mapping.namespace
            || current.image_id != mapping.image_id
            || current.snap != mapping.snap
        {
            return Err(DriverError::Map {
                backend: Backend::Krbd,
                image: mapping.spec(),
                reason: format!(
                    "refusing to unmap {}: it now maps {} (image id {:?}), not image id {:?}",
                    mapping.device.display(),
                    super::image_spec(
                        &current.pool,
                        &current.pool_ns,
                        &current.name,
                        current.snap.as_deref()
                    ),
                    current.image_id,
                    mapping.image_id
                ),
            });
        }
        match self.remove(id, force) {
            Err(DriverError::Io { source, .. })
                if source.raw_os_error() == Some(nix::libc::EBUSY) =>
            {
                Err(DriverError::InUse {
                    volume: mapping.spec(),
                    detail: format!(
                        "{} is open (mounted, or held by a process); unmap with force to fail \
                         its I/O and remove it anyway",
                        mapping.device.display()
                    ),
                })
            }
            other => other,
        }
    }

    fn list(&self) -> Result<Vec<Mapping>> {
        let sysfs = self.sysfs();
        if !sysfs.bus().is_dir() {
            return Ok(Vec::new());
        }
        let ids = sysfs.device_ids().map_err(|e| {
            DriverError::io(format!("listing {}", sysfs.devices_dir().display()), e)
        })?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            let dev = sysfs.read_device(id).map_err(|e| {
                DriverError::io(format!("reading {}", sysfs.device_dir(id).display()), e)
            })?;
            // A device removed while we listed is simply not there any more.
            if let Some(d) = dev {
                out.push(self.mapping(d));
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests;
