//! Attach-side helpers: what is mounted, mapped and running on a test node, and the
//! "nothing is left" assertion used after every detach, failure and crash.

use std::path::{Path, PathBuf};
use std::process::Command;

use rbd_driver::mapper::{self, Backend, Mapping};
use rbd_driver::volume::DriverConfig;

use super::Env;

/// The userspace backend: the only one that works on the host.
pub fn node_config(env: &Env, node: &str) -> DriverConfig {
    let mut cfg = env.config(node);
    cfg.backend = Some(Backend::Userspace);
    cfg
}

/// The mount at `path`, if any.
pub fn mount_at(path: &Path) -> Option<fs_format::MountInfo> {
    let canon = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
    fs_format::read_mountinfo()
        .unwrap()
        .into_iter()
        .rev()
        .find(|m| m.mount_point == canon)
}

/// Mounts whose mountpoint is under `dir`.
pub fn mounts_under(dir: &Path) -> Vec<fs_format::MountInfo> {
    let canon = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_owned());
    fs_format::read_mountinfo()
        .unwrap()
        .into_iter()
        .filter(|m| m.mount_point.starts_with(&canon))
        .collect()
}

/// Loop devices whose backing file is under `dir`.
pub fn loops_under(dir: &Path) -> Vec<String> {
    let canon = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_owned());
    let mut out = Vec::new();
    for e in std::fs::read_dir("/sys/block").unwrap().flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if !n.starts_with("loop") {
            continue;
        }
        if let Ok(b) = std::fs::read_to_string(e.path().join("loop/backing_file")) {
            let b = PathBuf::from(b.trim());
            if b.starts_with(&canon) || b.starts_with(dir) {
                out.push(format!("{n} -> {}", b.display()));
            }
        }
    }
    out
}

/// The node's mappings of an image id.
pub fn mappings(cfg: &DriverConfig, pool: &str, image_id: &str) -> Vec<Mapping> {
    mapper::find_by_image_id(&cfg.mapper, pool, "", image_id).unwrap()
}

pub fn pid_alive(pid: u32) -> bool {
    // A zombie is dead for our purposes.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| !rest.trim_start().starts_with('Z'))
                .unwrap_or(false)
        })
        .unwrap_or(false)
}

/// Asserts that nothing of the attachment of `name` is left on node `cfg`: no mount at
/// its mountpoint, nothing mounted under its mapper run dir (FUSE), no loop device on a
/// file there, no mapping of its image id, no live mapper process among `pids`, and no
/// state entry.
pub fn assert_detached(env: &Env, cfg: &DriverConfig, name: &str, image_id: &str, pids: &[u32]) {
    let mp = cfg.mount_root.join(name);
    assert!(mount_at(&mp).is_none(), "{} is still mounted", mp.display());
    let fuse = mounts_under(&cfg.mapper.run_dir);
    assert!(fuse.is_empty(), "mounts left under the run dir: {fuse:?}");
    let loops = loops_under(&cfg.mapper.run_dir);
    assert!(loops.is_empty(), "loop devices left: {loops:?}");
    let maps = mappings(cfg, super::POOL, image_id);
    assert!(maps.is_empty(), "mappings left: {maps:?}");
    for p in pids {
        assert!(!pid_alive(*p), "mapper process {p} is still running");
    }
    let st = env.state(cfg);
    assert!(!st.volumes.contains_key(name), "state entry left: {st:?}");
    assert!(st.pending.is_empty(), "pending ops left: {st:?}");
}

/// Writes `len` pseudo-random bytes to `path`, fsyncs, and returns their sha256 (from
/// `sha256sum`).
pub fn write_file(path: &Path, len: usize, seed: u64) -> String {
    let mut x = seed | 1;
    let data: Vec<u8> = (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    {
        use std::io::Write;
        let mut f = std::fs::File::create(path).unwrap();
        f.write_all(&data).unwrap();
        f.sync_all().unwrap();
    }
    sha256(path)
}

/// `sha256sum PATH`.
pub fn sha256(path: &Path) -> String {
    let out = Command::new("timeout")
        .args(["60", "sha256sum"])
        .arg(path)
        .output()
        .unwrap();
    assert!(out.status.success(), "sha256sum {}", path.display());
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

/// Filesystem size at a mountpoint (statvfs blocks × fragment size).
pub fn fs_size(mp: &Path) -> u64 {
    fs_format::fs_size(mp).unwrap()
}
