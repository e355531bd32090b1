//! The userspace mapper's files in `<run_dir>/umap/`, one set per mapping, named by the
//! mapping's token:
//!
//! | file | written by | what |
//! |---|---|---|
//! | `<token>.json` | the mapper, once the loop device exists | the [`Record`] |
//! | `<token>/` | the mapper | the FUSE mountpoint; the image is `<token>/image` |
//! | `<token>.log` | the mapper (its stderr) | what it did and why it exited |
//! | `<token>.exit.json` | the mapper, just before it exits | the [`ExitReport`] |
//! | `<token>.asok` | librados | the mapper's Ceph admin socket |
//!
//! Records are written atomically (temp file, rename) and removed by the mapper when it
//! exits cleanly.

use std::io::Write;
use std::path::{Path, PathBuf};

use rbd_core::EntityAddr;
use serde::{Deserialize, Serialize};

use crate::error::{DriverError, Result};
use crate::mapper::{Backend, Mapping};

/// Current record format.
pub const RECORD_VERSION: u32 = 1;

/// One mapping, as its mapper process recorded it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Format version ([`RECORD_VERSION`]).
    pub version: u32,
    /// Names this mapping's files.
    pub token: String,
    /// Pool name.
    pub pool: String,
    /// RADOS namespace (`""` for the default).
    pub namespace: String,
    /// Image name at map time.
    pub image: String,
    /// Image id: the identity of the mapping.
    pub image_id: String,
    /// Mapped snapshot.
    pub snap: Option<String>,
    /// Read-only mapping.
    pub read_only: bool,
    /// The exclusive lock was taken at map time.
    pub exclusive: bool,
    /// `/dev/loopN`.
    pub device: PathBuf,
    /// The mapper process.
    pub pid: u32,
    /// Its start time (`/proc/PID/stat` field 22, clock ticks since boot), so a reused pid
    /// is never taken for the mapper.
    pub start_time: u64,
    /// The mapper's Ceph client address (`rados_getaddrs`): what to blocklist to fence
    /// exactly this mapping.
    pub client_addr: Option<EntityAddr>,
    /// The FUSE mountpoint.
    pub mountpoint: PathBuf,
    /// The file the loop device is bound to.
    pub fuse_file: PathBuf,
    /// The identity of the loop device's binding to that file (absent in records of older
    /// mappers, or on kernels without diskseq): how the binding is recognised once the
    /// FUSE mount was lazily unmounted and sysfs no longer names the file by `fuse_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backing: Option<crate::mapper::loopdev::BindingId>,
    /// Device size in bytes at map time.
    pub size: u64,
    /// The per-I/O deadline, in seconds.
    pub io_timeout_secs: u32,
    /// Seconds since the epoch when the mapping was made.
    pub created: u64,
}

impl Record {
    /// The [`Mapping`] this record describes (`pid` as given).
    pub fn mapping(&self, pid: Option<u32>) -> Mapping {
        Mapping {
            backend: Backend::Userspace,
            pool: self.pool.clone(),
            namespace: self.namespace.clone(),
            image: self.image.clone(),
            image_id: self.image_id.clone(),
            snap: self.snap.clone(),
            device: self.device.clone(),
            client_addr: self.client_addr,
            read_only: self.read_only,
            pid,
        }
    }

    /// `N` of `/dev/loopN`.
    pub fn loop_number(&self) -> Option<u32> {
        crate::mapper::loopdev::parse_device(&self.device)
    }
}

/// How and why a mapper process ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitReport {
    /// The mapping's token.
    pub token: String,
    /// The mapper's pid.
    pub pid: u32,
    /// Its exit status (see [`crate::mapper::userspace::daemon::exit`]).
    pub code: i32,
    /// Why it exited (`unmap`, `forced unmap`, `blocklisted: ...`).
    pub reason: String,
    /// Teardown steps that failed.
    pub errors: Vec<String>,
}

/// The paths of one mapping's files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paths {
    /// `<run_dir>/umap`.
    pub dir: PathBuf,
    /// The token.
    pub token: String,
}

impl Paths {
    /// Paths for `token` under `run_dir`.
    pub fn new(run_dir: &Path, token: &str) -> Self {
        Self {
            dir: dir(run_dir),
            token: token.to_owned(),
        }
    }
    /// `<token>.json`.
    pub fn record(&self) -> PathBuf {
        self.dir.join(format!("{}.json", self.token))
    }
    /// `<token>/`.
    pub fn mountpoint(&self) -> PathBuf {
        self.dir.join(&self.token)
    }
    /// `<token>/image`.
    pub fn fuse_file(&self) -> PathBuf {
        self.mountpoint().join(super::fusefs::FILE_NAME)
    }
    /// `<token>.log`.
    pub fn log(&self) -> PathBuf {
        self.dir.join(format!("{}.log", self.token))
    }
    /// `<token>.exit.json`.
    pub fn exit(&self) -> PathBuf {
        self.dir.join(format!("{}.exit.json", self.token))
    }
    /// `<token>.asok`.
    pub fn asok(&self) -> PathBuf {
        self.dir.join(format!("{}.asok", self.token))
    }
}

/// `<run_dir>/umap`.
pub fn dir(run_dir: &Path) -> PathBuf {
    run_dir.join("umap")
}

/// Creates `<run_dir>/umap` (mode 0700) if needed.
pub fn ensure_dir(run_dir: &Path) -> Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let d = dir(run_dir);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&d)
        .map_err(|e| DriverError::io(format!("creating {}", d.display()), e))?;
    Ok(d)
}

/// A token is a file name: ASCII letters, digits, `-` and `_`, 1 to 40 bytes.
pub fn valid_token(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 40
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Writes `value` as JSON to `path` atomically (temp file, rename). Not fsynced: these
/// files describe running processes and devices, none of which survive a crash of the
/// host.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let tmp = path.with_extension("json.tmp");
    let body = serde_json::to_vec_pretty(value).map_err(|e| DriverError::CorruptState {
        path: path.to_path_buf(),
        source: e,
    })?;
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&body)?;
        f.write_all(b"\n")?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        DriverError::io(format!("writing {}", path.display()), e)
    })
}

/// Reads a record.
pub fn read(path: &Path) -> Result<Record> {
    let text = std::fs::read(path)
        .map_err(|e| DriverError::io(format!("reading {}", path.display()), e))?;
    serde_json::from_slice(&text).map_err(|e| DriverError::CorruptState {
        path: path.to_path_buf(),
        source: e,
    })
}

/// Every record in `<run_dir>/umap`, with its path; unreadable ones are returned as errors
/// so the caller can report them.
pub fn read_all(run_dir: &Path) -> Vec<(PathBuf, Result<Record>)> {
    let Ok(rd) = std::fs::read_dir(dir(run_dir)) else {
        return Vec::new();
    };
    let mut out: Vec<(PathBuf, Result<Record>)> = rd
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.extension().is_some_and(|e| e == "json")
                && !p
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().ends_with(".exit.json"))
        })
        .map(|p| {
            let r = read(&p);
            (p, r)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Reads and removes an exit report, if there is one.
pub fn take_exit(paths: &Paths) -> Option<ExitReport> {
    let p = paths.exit();
    let text = std::fs::read(&p).ok()?;
    let _ = std::fs::remove_file(&p);
    serde_json::from_slice(&text).ok()
}

/// The last `n` lines of a mapping's log, for error messages.
pub fn log_tail(paths: &Paths, n: usize) -> String {
    let Ok(text) = std::fs::read_to_string(paths.log()) else {
        return String::new();
    };
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(token: &str) -> Record {
        Record {
            version: RECORD_VERSION,
            token: token.into(),
            pool: "rbd".into(),
            namespace: "ns".into(),
            image: "vol".into(),
            image_id: "10ab34cd".into(),
            snap: Some("s1".into()),
            read_only: true,
            exclusive: false,
            device: "/dev/loop7".into(),
            pid: 4242,
            start_time: 123456,
            client_addr: Some("127.0.0.1:0/3141".parse().unwrap()),
            mountpoint: "/run/rbd-volumes/umap/t1".into(),
            fuse_file: "/run/rbd-volumes/umap/t1/image".into(),
            backing: Some(crate::mapper::loopdev::BindingId { diskseq: 6698 }),
            size: 1 << 30,
            io_timeout_secs: 30,
            created: 1_700_000_000,
        }
    }

    #[test]
    fn records_round_trip_and_map_to_mappings() {
        let tmp = tempfile::tempdir().unwrap();
        ensure_dir(tmp.path()).unwrap();
        let r = sample("t1");
        let paths = Paths::new(tmp.path(), "t1");
        write_json(&paths.record(), &r).unwrap();
        std::fs::write(paths.dir.join("junk.json"), "{").unwrap();
        std::fs::write(paths.dir.join("other.txt"), "x").unwrap();
        write_json(
            &paths.exit(),
            &ExitReport {
                token: "t1".into(),
                pid: 4242,
                code: 0,
                reason: "unmap".into(),
                errors: vec![],
            },
        )
        .unwrap();
        let all = read_all(tmp.path());
        assert_eq!(all.len(), 2, "{all:?}");
        let ok: Vec<&Record> = all.iter().filter_map(|(_, r)| r.as_ref().ok()).collect();
        assert_eq!(ok, vec![&r]);
        assert!(
            all.iter()
                .any(|(p, r)| p.ends_with("junk.json") && r.is_err())
        );
        let m = r.mapping(Some(4242));
        assert_eq!(m.backend, Backend::Userspace);
        assert_eq!(m.image_id, "10ab34cd");
        assert_eq!(m.spec(), "rbd/ns/vol@s1");
        assert_eq!(m.client_addr.unwrap().nonce, 3141);
        assert_eq!(r.loop_number(), Some(7));
        let ex = take_exit(&paths).unwrap();
        assert_eq!(ex.reason, "unmap");
        assert!(take_exit(&paths).is_none(), "taken once");
        // The JSON has the documented field names.
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(paths.record()).unwrap()).unwrap();
        for k in [
            "pool",
            "namespace",
            "image",
            "image_id",
            "snap",
            "read_only",
            "device",
            "pid",
            "client_addr",
            "mountpoint",
        ] {
            assert!(v.get(k).is_some(), "missing {k} in {v}");
        }
        assert_eq!(v["client_addr"], "127.0.0.1:0/3141");
    }

    #[test]
    fn tokens_are_plain_file_names() {
        assert!(valid_token("u1a2b-3c_4"));
        for bad in ["", "../x", "a/b", "a b", &"x".repeat(41), "é"] {
            assert!(!valid_token(bad), "{bad:?}");
        }
    }
}
