//! Which state directory a mount root belongs to.
//!
//! Recovery takes a mount under the mount root that its state file does not know for an
//! orphan of a crashed attach and tears it down. Two drivers with different state
//! directories on one mount root (e.g. `rbdctl` with other settings than the Docker
//! plugin's) would therefore tear down each other's mounts. So a mount root is bound to
//! exactly one state directory: the first [`Driver::new`](super::Driver::new) writes an
//! owner file, `<mount_root>/.rbd-volumes-owner`, naming its state directory, and a
//! driver with another state directory refuses to start, naming both.
//!
//! A mount root without an owner file (made before this file existed) is claimed only
//! when every mount under it is known to the claiming state directory.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{DriverError, Result};
use crate::volume::name::validate_volume_name;
use crate::volume::state::State;

/// The owner file's name, in the mount root. Not a valid volume name (it starts with
/// `.`), so no volume can be mounted over it.
pub const OWNER_FILE: &str = ".rbd-volumes-owner";

/// The owner file's content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Owner {
    /// The state directory that owns the mount root (canonical path).
    state_dir: PathBuf,
    /// The node id of the driver that claimed it, for people reading the file.
    node_id: String,
    /// When it was claimed, in seconds since the epoch.
    claimed_at: u64,
}

fn canonical(p: &Path) -> PathBuf {
    fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
}

fn refused(mount_root: &Path, reason: String) -> DriverError {
    DriverError::invalid("mount root", mount_root.display().to_string(), reason)
}

/// Reads the owner file; `None` when there is none.
fn read_owner(path: &Path) -> Result<Option<Owner>> {
    match fs::read(path) {
        Ok(bytes) => {
            serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|source| DriverError::CorruptState {
                    path: path.to_owned(),
                    source,
                })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(DriverError::io(format!("reading {}", path.display()), e)),
    }
}

fn check_owner(owner: &Owner, mount_root: &Path, state_dir: &Path, file: &Path) -> Result<()> {
    if canonical(&owner.state_dir) == state_dir {
        return Ok(());
    }
    Err(refused(
        mount_root,
        format!(
            "it belongs to the state dir {} (node {}, recorded in {}), not to this driver's \
             state dir {}: with two state dirs on one mount root, recovery would take the \
             other's mounts for orphans and tear them down. Use the state dir {} \
             (--state-dir, RBD_STATE_DIR or state-dir in the plugin config), or another \
             mount root; remove {} only if {} is no longer used",
            owner.state_dir.display(),
            owner.node_id,
            file.display(),
            state_dir.display(),
            owner.state_dir.display(),
            file.display(),
            owner.state_dir.display(),
        ),
    ))
}

/// Mounts directly under `root` (as recovery sees them) that `state` does not record.
fn unknown_mounts(root: &Path, state: &State) -> Result<Vec<PathBuf>> {
    let mounts = fs_format::read_mountinfo()
        .map_err(|e| DriverError::fs("reading /proc/self/mountinfo", e))?;
    let known: Vec<PathBuf> = state
        .volumes
        .values()
        .map(|v| canonical(&v.mountpoint))
        .collect();
    Ok(mounts
        .into_iter()
        .map(|m| m.mount_point)
        .filter(|mp| mp.parent() == Some(root))
        .filter(|mp| {
            mp.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| validate_volume_name(n).is_ok())
        })
        .filter(|mp| !known.contains(mp))
        .collect())
}

/// Binds `mount_root` to `state_dir` (both exist), or checks that it already is. `state`
/// is the state dir's current state. Refuses with [`DriverError::InvalidInput`] naming
/// both directories when the mount root belongs to another state dir.
pub(super) fn claim_mount_root(
    mount_root: &Path,
    state_dir: &Path,
    node_id: &str,
    state: &State,
) -> Result<()> {
    let root = canonical(mount_root);
    let state_dir = canonical(state_dir);
    let file = root.join(OWNER_FILE);
    if let Some(owner) = read_owner(&file)? {
        return check_owner(&owner, &root, &state_dir, &file);
    }
    let unknown = unknown_mounts(&root, state)?;
    if !unknown.is_empty() {
        return Err(refused(
            &root,
            format!(
                "it has volumes mounted ({}) that this driver's state dir {} does not know, \
                 and no owner file {}: they were mounted with another state dir (the Docker \
                 plugin's?), and recovery would tear them down. Use that state dir \
                 (--state-dir, RBD_STATE_DIR or state-dir in the plugin config), or another \
                 mount root",
                unknown
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                state_dir.display(),
                file.display(),
            ),
        ));
    }
    let owner = Owner {
        state_dir: state_dir.clone(),
        node_id: node_id.to_owned(),
        claimed_at: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    };
    // Written whole to a temp file, then linked into place: link(2) fails if another
    // driver claimed the root meanwhile, and nobody ever reads a half-written file.
    let tmp = root.join(format!("{OWNER_FILE}.{}.tmp", std::process::id()));
    let io = |what: &str, e| DriverError::io(format!("{what} {}", tmp.display()), e);
    let body = serde_json::to_vec_pretty(&owner).map_err(|source| DriverError::CorruptState {
        path: file.clone(),
        source,
    })?;
    {
        let mut f = fs::File::create(&tmp).map_err(|e| io("creating", e))?;
        f.write_all(&body).map_err(|e| io("writing", e))?;
        f.sync_all().map_err(|e| io("syncing", e))?;
    }
    let linked = fs::hard_link(&tmp, &file);
    let _ = fs::remove_file(&tmp);
    match linked {
        Ok(()) => {
            if let Ok(d) = fs::File::open(&root) {
                let _ = d.sync_all();
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => match read_owner(&file)? {
            Some(owner) => check_owner(&owner, &root, &state_dir, &file),
            None => Err(DriverError::io(
                format!("claiming the mount root {}", root.display()),
                e,
            )),
        },
        Err(e) => Err(DriverError::io(format!("creating {}", file.display()), e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_state_dir_owns_the_mount_root_and_another_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("mounts");
        let (a, b) = (tmp.path().join("state-a"), tmp.path().join("state-b"));
        for d in [&root, &a, &b] {
            fs::create_dir_all(d).unwrap();
        }
        let st = State::default();
        claim_mount_root(&root, &a, "node-a", &st).unwrap();
        // Again, and through another path to the same dir: fine.
        claim_mount_root(&root, &a, "node-a", &st).unwrap();
        claim_mount_root(&root, &tmp.path().join("state-b/../state-a"), "x", &st).unwrap();
        let e = claim_mount_root(&root, &b, "node-b", &st).unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, DriverError::InvalidInput { .. }), "{msg}");
        for dir in [&a, &b, &root] {
            let d = canonical(dir).display().to_string();
            assert!(msg.contains(&d), "{msg} does not name {d}");
        }
        assert!(msg.contains("node-a"), "{msg}");
        // No temp files are left.
        let names: Vec<String> = fs::read_dir(&root)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec![OWNER_FILE.to_string()]);
        // A damaged owner file is an error naming it, not a silent claim.
        fs::write(root.join(OWNER_FILE), "{").unwrap();
        let e = claim_mount_root(&root, &b, "node-b", &st).unwrap_err();
        assert!(e.to_string().contains(OWNER_FILE), "{e}");
    }
}
