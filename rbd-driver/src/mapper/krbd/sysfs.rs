//! Reading and writing the kernel RBD client's sysfs interface (`/sys/bus/rbd`).
//!
//! Layout (see the kernel's `Documentation/ABI/testing/sysfs-bus-rbd`):
//!
//! ```text
//! /sys/bus/rbd/add_single_major      write "<mons> <options> <pool> <image> [<snap>]"
//! /sys/bus/rbd/remove_single_major   write "<id>" or "<id> force"
//! /sys/bus/rbd/devices/<id>/         pool, pool_ns, name, image_id, current_snap,
//!                                    client_addr, client_id, major, minor, size, ...
//! /sys/block/rbd<id>/{dev,ro}        "MAJ:MIN" and the read-only flag
//! ```
//!
//! `config_info` (root-only) echoes the add string including the secret; it is never read.

use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};

use rbd_core::EntityAddr;

/// One kernel RBD device, as sysfs describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RbdDev {
    /// The device id `N` (`/dev/rbdN`).
    pub(crate) id: u32,
    pub(crate) pool: String,
    /// `""` for the default namespace (or a kernel without `pool_ns`).
    pub(crate) pool_ns: String,
    pub(crate) name: String,
    pub(crate) image_id: String,
    /// `None` for the head (sysfs says `-`).
    pub(crate) snap: Option<String>,
    pub(crate) client_addr: Option<EntityAddr>,
    /// e.g. `client4123`.
    pub(crate) client_id: Option<String>,
    pub(crate) read_only: bool,
}

/// The sysfs paths under a root (normally `/sys`).
#[derive(Debug, Clone)]
pub(crate) struct Sysfs {
    root: PathBuf,
}

impl Sysfs {
    pub(crate) fn new(root: &Path) -> Self {
        Self {
            root: root.to_path_buf(),
        }
    }

    pub(crate) fn bus(&self) -> PathBuf {
        self.root.join("bus/rbd")
    }

    pub(crate) fn devices_dir(&self) -> PathBuf {
        self.bus().join("devices")
    }

    pub(crate) fn device_dir(&self, id: u32) -> PathBuf {
        self.devices_dir().join(id.to_string())
    }

    pub(crate) fn block_dir(&self, id: u32) -> PathBuf {
        self.root.join(format!("block/rbd{id}"))
    }

    /// The control file to write a mapping request to: `add_single_major`, else `add`.
    pub(crate) fn add_file(&self) -> Option<PathBuf> {
        ["add_single_major", "add"]
            .iter()
            .map(|f| self.bus().join(f))
            .find(|p| p.exists())
    }

    /// The control file to remove a device with: `remove_single_major`, else `remove`.
    pub(crate) fn remove_file(&self) -> Option<PathBuf> {
        ["remove_single_major", "remove"]
            .iter()
            .map(|f| self.bus().join(f))
            .find(|p| p.exists())
    }

    /// The ids of every device, sorted.
    pub(crate) fn device_ids(&self) -> std::io::Result<Vec<u32>> {
        let dir = self.devices_dir();
        let rd = match std::fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut ids = Vec::new();
        for ent in rd {
            let ent = ent?;
            if let Some(id) = ent.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) {
                ids.push(id);
            }
        }
        ids.sort_unstable();
        Ok(ids)
    }

    /// Reads one device. `Ok(None)` when it does not exist (any more).
    pub(crate) fn read_device(&self, id: u32) -> std::io::Result<Option<RbdDev>> {
        let dir = self.device_dir(id);
        // Required attributes: a missing one means the device went away under us.
        let required = |name: &str| read_attr(&dir.join(name));
        let optional = |name: &str| match read_attr(&dir.join(name)) {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        };
        let pool = match required("pool") {
            Ok(p) => p,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let name = match required("name") {
            Ok(p) => p,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let image_id = match required("image_id") {
            Ok(p) => p,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let pool_ns = optional("pool_ns")?.unwrap_or_default();
        let snap = optional("current_snap")?.filter(|s| s != "-" && !s.is_empty());
        let client_addr = optional("client_addr")?.and_then(|a| a.parse().ok());
        let client_id = optional("client_id")?.filter(|s| !s.is_empty());
        let ro = match read_attr(&self.block_dir(id).join("ro")) {
            Ok(v) => v == "1",
            Err(e) if e.kind() == ErrorKind::NotFound => false,
            Err(e) => return Err(e),
        };
        Ok(Some(RbdDev {
            id,
            read_only: ro || snap.is_some(),
            pool,
            pool_ns,
            name,
            image_id,
            snap,
            client_addr,
            client_id,
        }))
    }

    /// `(major, minor)` of `/dev/rbdN`, from `/sys/block/rbdN/dev`.
    pub(crate) fn dev_numbers(&self, id: u32) -> std::io::Result<(u32, u32)> {
        let s = read_attr(&self.block_dir(id).join("dev"))?;
        parse_dev_numbers(&s).ok_or_else(|| {
            std::io::Error::new(
                ErrorKind::InvalidData,
                format!("unexpected device numbers {s:?}"),
            )
        })
    }
}

/// Reads a sysfs attribute, trimmed.
pub(crate) fn read_attr(path: &Path) -> std::io::Result<String> {
    Ok(std::fs::read_to_string(path)?.trim().to_owned())
}

/// `"251:16"` -> `(251, 16)`.
pub(crate) fn parse_dev_numbers(s: &str) -> Option<(u32, u32)> {
    let (a, b) = s.trim().split_once(':')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// Writes a control string to a sysfs file in one `write(2)`, as sysfs stores require.
/// Never creates the file. The error is the bare OS error; callers add context (and
/// must not include a string containing a secret).
pub(crate) fn write_control(path: &Path, line: &str) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new().write(true).open(path)?;
    let n = f.write(line.as_bytes())?;
    if n != line.len() {
        return Err(std::io::Error::new(
            ErrorKind::WriteZero,
            format!("short write ({n} of {} bytes)", line.len()),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_numbers() {
        assert_eq!(parse_dev_numbers("251:16\n"), Some((251, 16)));
        assert_eq!(parse_dev_numbers("251"), None);
        assert_eq!(parse_dev_numbers("a:b"), None);
    }
}
