//! The crate's one error type.

use std::path::PathBuf;

use crate::mapper::Backend;

/// Result alias for the driver.
pub type Result<T, E = DriverError> = std::result::Result<T, E>;

/// Everything that can go wrong in the driver. `Display` says what failed; the cause is
/// the `source`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DriverError {
    /// A Ceph call failed.
    #[error("{what}")]
    Ceph {
        /// What we were doing, e.g. `opening image rbd/db1 to map it`.
        what: String,
        /// The Ceph error (operation, errno, kind).
        #[source]
        source: rbd_core::Error,
    },
    /// A filesystem operation (probe, mkfs, fsck, mount) failed.
    #[error("{what}")]
    Fs {
        /// What we were doing.
        what: String,
        /// The fs-format error.
        #[source]
        source: fs_format::Error,
    },
    /// A local system call or file operation failed.
    #[error("{what}")]
    Io {
        /// What we were doing, naming the path or device.
        what: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Input was rejected before anything was changed.
    #[error("invalid {what} {value:?}: {reason}")]
    InvalidInput {
        /// What the value is (volume name, option, size...).
        what: &'static str,
        /// The rejected value.
        value: String,
        /// Why.
        reason: String,
    },
    /// A backend cannot be used on this host.
    #[error("the {backend} mapper is not available on this host: {reason}")]
    BackendUnavailable {
        /// Which backend.
        backend: Backend,
        /// Why (module missing, binary missing...).
        reason: String,
    },
    /// A mapping step failed.
    #[error("{backend} mapping of {image} failed: {reason}")]
    Map {
        /// Which backend.
        backend: Backend,
        /// `pool/[ns/]image`.
        image: String,
        /// What went wrong.
        reason: String,
    },
    /// An external command failed (rbd-nbd, the mapper process...).
    #[error("command {command:?} failed ({status}): {stderr}")]
    Command {
        /// The command line (never contains secrets).
        command: String,
        /// Exit status or signal.
        status: String,
        /// Its stderr, trimmed.
        stderr: String,
    },
    /// Something did not finish in time.
    #[error("{what} did not finish within {secs} s")]
    Timeout {
        /// What we were waiting for.
        what: String,
        /// The deadline, in seconds.
        secs: u64,
    },
    /// The volume is in use where the request cannot proceed.
    #[error("volume {volume} is in use: {detail}")]
    InUse {
        /// The volume name.
        volume: String,
        /// Where and by whom (node, mount IDs).
        detail: String,
    },
    /// The volume does not exist.
    #[error("volume {0} does not exist")]
    NoSuchVolume(String),
    /// The volume already exists.
    #[error("volume {0} already exists")]
    VolumeExists(String),
    /// An operation failed, and undoing what it had already done failed too. The undo is
    /// recorded in the state file and retried by recovery.
    #[error(
        "{op} failed, and cleaning up after it failed too ({cleanup}); recovery will retry the cleanup"
    )]
    CleanupFailed {
        /// The operation, e.g. `creating volume v1`.
        op: String,
        /// Why the cleanup failed.
        cleanup: String,
        /// The original failure.
        #[source]
        source: Box<DriverError>,
    },
    /// The local state file is unreadable.
    #[error("state file {path} is corrupt")]
    CorruptState {
        /// Its path.
        path: PathBuf,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
    /// The cluster registry says another node holds the image (cluster layer).
    #[error("image {image} is held {mode} by node {node}{}", mounts_suffix(.mount_ids))]
    Held {
        /// `pool/[namespace/]image (id ...)`.
        image: String,
        /// The node that holds it (the winner of a race).
        node: String,
        /// `rw` or `ro`.
        mode: String,
        /// The holder's mount IDs, when it reported any.
        mount_ids: Vec<String>,
    },
    /// A registry, fence log or control message could not be decoded (cluster layer).
    #[error("{what} is not valid")]
    CorruptRecord {
        /// What it is, naming the object and key.
        what: String,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
    /// Fencing a client did not complete; nothing was taken over (cluster layer).
    #[error("fencing for image {image} failed: {reason}")]
    FenceFailed {
        /// `pool/[namespace/]image (id ...)`.
        image: String,
        /// What failed or is left (e.g. a lock owner that could not be blocklisted, a
        /// watcher that did not go away).
        reason: String,
        /// The Ceph error, when a call failed (e.g. the blocklist command).
        #[source]
        source: Option<rbd_core::Error>,
    },
}

fn mounts_suffix(ids: &[String]) -> String {
    if ids.is_empty() {
        String::new()
    } else {
        format!(" (mount IDs: {})", ids.join(", "))
    }
}

impl DriverError {
    /// Wraps an rbd-core error with what we were doing.
    pub fn ceph(what: impl Into<String>, source: rbd_core::Error) -> Self {
        DriverError::Ceph {
            what: what.into(),
            source,
        }
    }
    /// Wraps an I/O error with what we were doing.
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        DriverError::Io {
            what: what.into(),
            source,
        }
    }
    /// Wraps an fs-format error with what we were doing.
    pub fn fs(what: impl Into<String>, source: fs_format::Error) -> Self {
        DriverError::Fs {
            what: what.into(),
            source,
        }
    }
    /// Builds an [`DriverError::InvalidInput`].
    pub fn invalid(
        what: &'static str,
        value: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        DriverError::InvalidInput {
            what,
            value: value.into(),
            reason: reason.into(),
        }
    }
    /// The Ceph error kind, when a Ceph call is the cause.
    pub fn ceph_kind(&self) -> Option<rbd_core::ErrorKind> {
        match self {
            DriverError::Ceph { source, .. } => Some(source.kind()),
            _ => None,
        }
    }
}
