//! The node's volume state file, written atomically (temp file, fsync, rename, fsync dir)
//! and guarded by an advisory lock so the plugin and rbdctl never clobber each other.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{DriverError, Result};
use crate::mapper::Backend;

/// Where an attach or detach is. Recorded *before* each step, so that after a crash the
/// next start knows what may be half done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// About to map (or mapping).
    Mapping,
    /// Mapped; about to probe/mkfs/fsck.
    Formatting,
    /// About to mount (or mounting).
    Mounting,
    /// Mounted and in use by the recorded mount IDs.
    Mounted,
    /// About to unmount (or unmounting).
    Unmounting,
    /// Unmounted; about to unmap (or unmapping).
    Unmapping,
}

/// One attached (or attaching) volume on this node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeState {
    /// Pool.
    pub pool: String,
    /// RADOS namespace.
    #[serde(default)]
    pub namespace: String,
    /// Image name.
    pub image: String,
    /// Image id: the identity used to find its mapping.
    pub image_id: String,
    /// Backend used.
    pub backend: Option<Backend>,
    /// Mapped device, once known.
    pub device: Option<PathBuf>,
    /// Mountpoint.
    pub mountpoint: PathBuf,
    /// Read-only attach.
    pub read_only: bool,
    /// Mount IDs holding a reference.
    pub mount_ids: BTreeSet<String>,
    /// Progress of the current step.
    pub phase: Phase,
}

/// The whole state file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// Format version.
    #[serde(default = "State::version")]
    pub version: u32,
    /// Volumes by name.
    #[serde(default)]
    pub volumes: BTreeMap<String, VolumeState>,
    /// Creates and removes in progress, by volume name. Recorded before their first
    /// cluster change, so that recovery can roll a crashed create back and a crashed
    /// remove forward.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pending: BTreeMap<String, PendingOp>,
}

/// Where a create is. Recorded before each step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CreatePhase {
    /// About to claim the name in the index.
    Claiming,
    /// Name claimed; about to create (or clone) the image.
    CreatingImage,
    /// Image created; about to write its metadata.
    SettingMetadata,
    /// About to map, mkfs and unmap it (format at create).
    Formatting,
    /// About to mark the index entry ready.
    Publishing,
}

/// Where a remove is. Recorded before each step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RemovePhase {
    /// About to mark the index entry as being removed.
    Marking,
    /// About to remove the image.
    RemovingImage,
    /// Image gone; about to remove the index entry.
    RemovingIndex,
}

/// A create in progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingCreate {
    /// Pool of the new image.
    pub pool: String,
    /// Its RADOS namespace.
    #[serde(default)]
    pub namespace: String,
    /// Pool holding the name index.
    pub index_pool: String,
    /// The create's token (index entry and image metadata).
    pub token: String,
    /// The image id, once the image exists.
    #[serde(default)]
    pub image_id: Option<String>,
    /// The parent snapshot this create protected (`pool/[ns/]image@snap`), to unprotect
    /// on rollback.
    #[serde(default)]
    pub protected_parent: Option<String>,
    /// When the create started (seconds since the epoch).
    pub started_at: u64,
    /// Progress.
    pub phase: CreatePhase,
}

/// A remove in progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingRemove {
    /// Pool of the image.
    pub pool: String,
    /// Its RADOS namespace.
    #[serde(default)]
    pub namespace: String,
    /// Pool holding the name index.
    pub index_pool: String,
    /// The image's id.
    pub image_id: String,
    /// The volume's create token (from its index entry).
    pub token: String,
    /// Progress.
    pub phase: RemovePhase,
}

/// A create or remove in progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "op")]
pub enum PendingOp {
    /// A create.
    Create(PendingCreate),
    /// A remove.
    Remove(PendingRemove),
}

impl State {
    fn version() -> u32 {
        1
    }
}

/// How long [`StateStore::lock`] waits.
pub const STATE_LOCK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// The state file and its lock.
#[derive(Debug, Clone)]
pub struct StateStore {
    dir: PathBuf,
}

/// Holds the state lock (`flock` on `<dir>/state.lock`) until dropped.
#[derive(Debug)]
pub struct StateLock {
    _file: File,
}

impl StateStore {
    /// A store in `dir` (created if missing, mode 0700).
    pub fn new(dir: impl Into<PathBuf>) -> Result<Self> {
        let dir = dir.into();
        fs::create_dir_all(&dir)
            .map_err(|e| DriverError::io(format!("creating state dir {}", dir.display()), e))?;
        Ok(Self { dir })
    }

    /// The state file's path.
    pub fn path(&self) -> PathBuf {
        self.dir.join("state.json")
    }

    /// The directory holding the state file, its lock and the per-volume locks.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Locks, loads, applies `f`, saves and unlocks: one atomic read-modify-write of the
    /// state file. Returns what `f` returns.
    pub fn update<R>(&self, f: impl FnOnce(&mut State) -> R) -> Result<R> {
        let _lock = self.lock()?;
        let mut st = self.load()?;
        let r = f(&mut st);
        self.save(&st)?;
        Ok(r)
    }

    /// Takes the exclusive lock, waiting for other holders to release it (they hold it
    /// only for one read-modify-write of the file). Gives up with
    /// [`DriverError::Timeout`] after [`STATE_LOCK_TIMEOUT`], so a wedged holder cannot
    /// hang every operation.
    pub fn lock(&self) -> Result<StateLock> {
        let p = self.dir.join("state.lock");
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&p)
            .map_err(|e| DriverError::io(format!("opening {}", p.display()), e))?;
        let deadline = std::time::Instant::now() + STATE_LOCK_TIMEOUT;
        loop {
            // SAFETY: flock on a valid, open file descriptor owned by `f`.
            let ret = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            if ret == 0 {
                return Ok(StateLock { _file: f });
            }
            let err = std::io::Error::last_os_error();
            if !matches!(
                err.raw_os_error(),
                Some(libc::EWOULDBLOCK) | Some(libc::EINTR)
            ) {
                return Err(DriverError::io(format!("locking {}", p.display()), err));
            }
            if std::time::Instant::now() >= deadline {
                return Err(DriverError::Timeout {
                    what: format!("waiting for the state lock {}", p.display()),
                    secs: STATE_LOCK_TIMEOUT.as_secs(),
                });
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    /// Loads the state; a missing file is an empty state.
    pub fn load(&self) -> Result<State> {
        let p = self.path();
        match fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b)
                .map_err(|e| DriverError::CorruptState { path: p, source: e }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State {
                version: 1,
                ..State::default()
            }),
            Err(e) => Err(DriverError::io(format!("reading {}", p.display()), e)),
        }
    }

    /// Saves atomically: write a temp file, fsync it, rename over the old one, fsync the
    /// directory. A crash leaves either the old or the new state, never a torn one.
    pub fn save(&self, state: &State) -> Result<()> {
        let mut state = state.clone();
        state.version = State::version();
        let state = &state;
        write_atomic(
            &self.path(),
            &serde_json::to_vec_pretty(state).unwrap_or_default(),
        )
    }
}

/// Writes `data` to `path` atomically (temp + fsync + rename + fsync dir).
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp.{}",
        path.file_name()
            .map(|s| s.to_string_lossy())
            .unwrap_or_default(),
        std::process::id()
    ));
    let ctx = |what: &str| format!("{what} {}", tmp.display());
    let mut f = File::create(&tmp).map_err(|e| DriverError::io(ctx("creating"), e))?;
    f.write_all(data)
        .map_err(|e| DriverError::io(ctx("writing"), e))?;
    f.sync_all()
        .map_err(|e| DriverError::io(ctx("fsyncing"), e))?;
    drop(f);
    fs::rename(&tmp, path).map_err(|e| {
        let _ = fs::remove_file(&tmp);
        DriverError::io(
            format!("renaming {} to {}", tmp.display(), path.display()),
            e,
        )
    })?;
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("rbd-driver-state-{}", testkit::unique("t")));
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn roundtrip_and_atomic_replace() {
        let d = tmpdir();
        let s = StateStore::new(&d).unwrap();
        assert!(s.load().unwrap().volumes.is_empty());
        let mut st = s.load().unwrap();
        st.volumes.insert(
            "v1".into(),
            VolumeState {
                pool: "rbd".into(),
                namespace: String::new(),
                image: "v1".into(),
                image_id: "abc123".into(),
                backend: Some(Backend::Userspace),
                device: Some("/dev/loop3".into()),
                mountpoint: "/mnt/v1".into(),
                read_only: false,
                mount_ids: ["m1".to_string()].into(),
                phase: Phase::Mounted,
            },
        );
        {
            let _l = s.lock().unwrap();
            s.save(&st).unwrap();
        }
        assert_eq!(s.load().unwrap(), st);
        // No temp files are left behind.
        let names: Vec<_> = fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().all(|n| !n.contains(".tmp.")), "{names:?}");
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn corrupt_state_is_reported_with_path() {
        let d = tmpdir();
        let s = StateStore::new(&d).unwrap();
        fs::write(s.path(), b"{not json").unwrap();
        let e = s.load().unwrap_err().to_string();
        assert!(e.contains("state.json"), "{e}");
        fs::remove_dir_all(&d).unwrap();
    }
}
