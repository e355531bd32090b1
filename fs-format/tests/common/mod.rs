//! Fixtures for the integration tests: unique temp dirs, sparse files, loop devices and
//! mounts, all cleaned up on drop (also when the test panics).

#![allow(dead_code)]

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use nix::mount::MntFlags;

/// How long a fixture command (losetup, sgdisk, mkfs...) may take before the test fails.
pub const RUN_LIMIT: std::time::Duration = std::time::Duration::from_secs(120);

/// Run a command (bounded by [`RUN_LIMIT`]), panic with its stderr if it fails, return its
/// stdout.
pub fn run(program: &str, args: &[&str]) -> String {
    let out = testkit::cmd::run(Command::new(program).args(args), RUN_LIMIT);
    assert!(
        out.status.success(),
        "{program} {args:?} failed with {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Whether `program` is on `PATH`.
pub fn have(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(program).is_file()))
}

/// True when every program is on `PATH`. Outside CI a missing one skips the test with a
/// message; under CI it is a failure.
pub fn require_tools(programs: &[&str]) -> bool {
    let missing: Vec<&str> = programs.iter().copied().filter(|p| !have(p)).collect();
    if missing.is_empty() {
        return true;
    }
    assert!(
        !testkit::in_ci(),
        "required tools missing in CI: {missing:?}"
    );
    eprintln!("SKIPPED: {missing:?} not on PATH");
    false
}

/// `blkid -p -o value -s TAG DEV`, when blkid is installed.
pub fn blkid(dev: &Path, tag: &str) -> Option<String> {
    if !have("blkid") {
        return None;
    }
    let out = testkit::cmd::run(
        Command::new("blkid")
            .args(["-p", "-o", "value", "-s", tag])
            .arg(dev),
        RUN_LIMIT,
    );
    Some(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// A unique directory under the system temp dir, removed on drop. Anything still mounted
/// below it is lazily detached first, so removal can never reach into a mounted filesystem.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> Self {
        let path = std::env::temp_dir().join(testkit::unique(prefix));
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// A sparse file of `size` bytes in this directory.
    pub fn sparse_file(&self, name: &str, size: u64) -> PathBuf {
        let p = self.0.join(name);
        File::create(&p).unwrap().set_len(size).unwrap();
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Ok(mounts) = fs_format::read_mountinfo() {
            for m in mounts.iter().rev() {
                if m.mount_point.starts_with(&self.0) {
                    let _ = nix::mount::umount2(&m.mount_point, MntFlags::MNT_DETACH);
                }
            }
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Serialises `losetup --find --show`: parallel calls can race for the same free device.
static LOSETUP: Mutex<()> = Mutex::new(());

/// A loop device over a file, detached on drop.
pub struct LoopDev {
    pub path: PathBuf,
}

impl LoopDev {
    pub fn attach(file: &Path) -> Self {
        let _guard = LOSETUP.lock().unwrap_or_else(|p| p.into_inner());
        let out = run("losetup", &["--find", "--show", file.to_str().unwrap()]);
        LoopDev {
            path: PathBuf::from(out.trim()),
        }
    }
}

impl Drop for LoopDev {
    fn drop(&mut self) {
        // On a device still held (e.g. by a lazily detached mount) the kernel sets
        // autoclear instead, and frees it when the last user goes.
        // (`timeout`, not cmd::run: a panic in drop could abort the test process.)
        let _ = Command::new("timeout")
            .args(["-s", "KILL", "60", "losetup", "-d"])
            .arg(&self.path)
            .status();
    }
}

/// A loop device over a sparse file in a fresh temp dir, with mountpoints that are
/// unmounted (lazily, so it cannot fail on EBUSY) on drop, before the device is detached
/// and the directory removed.
pub struct Fixture {
    mountpoints: Mutex<Vec<PathBuf>>,
    // Fields drop in declaration order: the loop device goes before its directory.
    pub dev: LoopDev,
    pub image: PathBuf,
    pub dir: TempDir,
}

impl Fixture {
    /// `None` (skip) when not root outside CI; panics in CI when not root.
    pub fn new(size: u64) -> Option<Self> {
        if !testkit::require_root() {
            return None;
        }
        let dir = TempDir::new("fs-format-test");
        let image = dir.sparse_file("disk.img", size);
        let dev = LoopDev::attach(&image);
        Some(Fixture {
            mountpoints: Mutex::new(Vec::new()),
            dev,
            image,
            dir,
        })
    }

    /// A new directory to mount on, unmounted on drop.
    pub fn mountpoint(&self, name: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::create_dir_all(&p).unwrap();
        let p = std::fs::canonicalize(p).unwrap();
        self.mountpoints.lock().unwrap().push(p.clone());
        p
    }

    /// Grow the backing file and tell the loop driver (`losetup -c`).
    pub fn resize(&self, size: u64) {
        OpenOptions::new()
            .write(true)
            .open(&self.image)
            .unwrap()
            .set_len(size)
            .unwrap();
        run("losetup", &["-c", self.dev.path.to_str().unwrap()]);
    }

    /// Write `data` to the device at `offset` and flush it.
    pub fn write_at(&self, offset: u64, data: &[u8]) {
        let mut f = OpenOptions::new().write(true).open(&self.dev.path).unwrap();
        f.seek(SeekFrom::Start(offset)).unwrap();
        f.write_all(data).unwrap();
        f.sync_all().unwrap();
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let mps = self.mountpoints.lock().unwrap_or_else(|p| p.into_inner());
        for mp in mps.iter().rev() {
            // Stacked mounts: detach until nothing is left there.
            for _ in 0..8 {
                match fs_format::is_mountpoint(mp) {
                    Ok(true) => {
                        let _ = nix::mount::umount2(mp, MntFlags::MNT_DETACH);
                    }
                    _ => break,
                }
            }
        }
    }
}

/// Deterministic pseudo-random bytes (xorshift64*), never all zero.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// The path as bytes, for comparisons with mountinfo's sources.
pub fn bytes(p: &Path) -> &[u8] {
    p.as_os_str().as_bytes()
}

/// Whether this process has capability number `cap` in its effective set.
pub fn has_capability(cap: u32) -> bool {
    cap_eff().is_some_and(|mask| mask & (1u64 << cap) != 0)
}

/// This process's effective capability mask (`CapEff` in `/proc/self/status`).
pub fn cap_eff() -> Option<u64> {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
}
