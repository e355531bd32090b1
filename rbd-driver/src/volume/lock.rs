//! Per-volume operation locks: `flock` on `<state_dir>/locks/<name>.lock`.
//!
//! Every operation on a volume (create, attach, detach, remove, resize, snapshot,
//! recovery) holds its lock for its whole duration, so two operations on one volume on
//! this node never interleave, whether they come from two threads or two processes (the
//! plugin and rbdctl). A process that dies loses its locks with its file descriptors, so a
//! lock that can be taken means nobody is working on that volume: recovery relies on that.
//! Waiting is bounded by a deadline.

use std::fs::{self, File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::error::{DriverError, Result};

/// Holds one volume's lock until dropped.
#[derive(Debug)]
pub struct VolumeLock {
    _file: File,
    path: PathBuf,
}

impl VolumeLock {
    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn open(dir: &Path, name: &str) -> Result<(File, PathBuf)> {
    let locks = dir.join("locks");
    fs::create_dir_all(&locks)
        .map_err(|e| DriverError::io(format!("creating {}", locks.display()), e))?;
    let path = locks.join(format!("{name}.lock"));
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|e| DriverError::io(format!("opening {}", path.display()), e))?;
    Ok((f, path))
}

/// `Ok(true)` when the lock was taken, `Ok(false)` when someone else holds it.
fn try_flock(f: &File, path: &Path) -> Result<bool> {
    // SAFETY: flock on a valid, open file descriptor owned by `f`.
    let ret = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if ret == 0 {
        return Ok(true);
    }
    let err = std::io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EWOULDBLOCK) | Some(libc::EINTR) => Ok(false),
        _ => Err(DriverError::io(format!("locking {}", path.display()), err)),
    }
}

/// Takes the lock of volume `name` (a validated name), waiting up to `timeout` for
/// another operation on it to finish.
pub fn lock_volume(dir: &Path, name: &str, timeout: Duration) -> Result<VolumeLock> {
    let (f, path) = open(dir, name)?;
    let deadline = Instant::now() + timeout;
    loop {
        if try_flock(&f, &path)? {
            return Ok(VolumeLock { _file: f, path });
        }
        if Instant::now() >= deadline {
            return Err(DriverError::Timeout {
                what: format!("waiting for another operation on volume {name} on this node"),
                secs: timeout.as_secs(),
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Takes the lock of volume `name` if nobody holds it; `None` when it is busy.
pub fn try_lock_volume(dir: &Path, name: &str) -> Result<Option<VolumeLock>> {
    let (f, path) = open(dir, name)?;
    Ok(try_flock(&f, &path)?.then_some(VolumeLock { _file: f, path }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excludes_across_threads_and_times_out() {
        let d = std::env::temp_dir().join(testkit::unique("rbd-volume-lock"));
        let l = lock_volume(&d, "v1", Duration::from_secs(1)).unwrap();
        assert!(try_lock_volume(&d, "v1").unwrap().is_none());
        // A different volume is independent.
        assert!(try_lock_volume(&d, "v2").unwrap().is_some());
        let d2 = d.clone();
        let t = std::thread::spawn(move || lock_volume(&d2, "v1", Duration::from_millis(200)));
        let e = t.join().unwrap().unwrap_err().to_string();
        assert!(e.contains("volume v1"), "{e}");
        drop(l);
        assert!(try_lock_volume(&d, "v1").unwrap().is_some());
        fs::remove_dir_all(&d).unwrap();
    }
}
