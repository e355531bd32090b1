//! rbdctl's error type and its mapping to documented exit codes.

/// Exit codes, as documented in `rbdctl --help`.
pub mod exit {
    /// Success.
    pub const OK: i32 = 0;
    /// Any other failure.
    pub const FAILURE: i32 = 1;
    /// Bad usage or invalid input (nothing was changed).
    pub const USAGE: i32 = 2;
    /// The image, snapshot, volume or pool does not exist.
    pub const NOT_FOUND: i32 = 3;
    /// It already exists.
    pub const EXISTS: i32 = 4;
    /// It is in use (watchers, locks, mounts) or has snapshots.
    pub const BUSY: i32 = 5;
    /// The cluster did not answer in time, or our client is blocklisted.
    pub const UNAVAILABLE: i32 = 6;
    /// Permission denied.
    pub const PERMISSION: i32 = 7;
}

/// Everything a command can fail with.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A Ceph call failed.
    #[error(transparent)]
    Ceph(#[from] rbd_core::Error),
    /// The driver failed.
    #[error(transparent)]
    Driver(#[from] rbd_driver::DriverError),
    /// A local file operation failed.
    #[error("{what}")]
    Io {
        /// What we were doing.
        what: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Bad input.
    #[error("{0}")]
    Usage(String),
    /// In use, or has snapshots.
    #[error("{0}")]
    Busy(String),
    /// Something named on the command line does not exist (a metadata key, a locker, a
    /// trash entry).
    #[error("{0}")]
    NotFound(String),
    /// Refused by a rule of the cluster's (e.g. a trash entry's deferment); `--force`
    /// usually overrides it.
    #[error("{0}")]
    Denied(String),
    /// Something to be created already exists (e.g. an export's output file).
    #[error("{0}")]
    Exists(String),
    /// A Ceph call failed; `context` says what we were doing.
    #[error("{context}")]
    CephContext {
        /// What we were doing, e.g. `cloning rbd/a@s to rbd/b`.
        context: String,
        /// The failure.
        #[source]
        source: rbd_core::Error,
    },
}

impl CliError {
    /// An I/O error with a description of what we were doing.
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        CliError::Io {
            what: what.into(),
            source,
        }
    }
}

/// Adds what we were doing to a Ceph error, keeping its kind (and exit code).
pub trait WithContext<T> {
    /// Wraps the error with `f()`'s description.
    fn context(self, f: impl FnOnce() -> String) -> CliResult<T>;
}

impl<T> WithContext<T> for Result<T, rbd_core::Error> {
    fn context(self, f: impl FnOnce() -> String) -> CliResult<T> {
        self.map_err(|source| CliError::CephContext {
            context: f(),
            source,
        })
    }
}

impl CliError {
    /// The documented exit code for this error.
    pub fn exit_code(&self) -> i32 {
        use rbd_core::ErrorKind as K;
        let kind = match self {
            CliError::Ceph(e) | CliError::CephContext { source: e, .. } => Some(e.kind()),
            CliError::Driver(e) => return driver_exit_code(e),
            CliError::Io { source, .. } => {
                return match source.kind() {
                    std::io::ErrorKind::NotFound => exit::NOT_FOUND,
                    std::io::ErrorKind::AlreadyExists => exit::EXISTS,
                    std::io::ErrorKind::PermissionDenied => exit::PERMISSION,
                    _ => exit::FAILURE,
                };
            }
            CliError::Usage(_) => return exit::USAGE,
            CliError::Busy(_) => return exit::BUSY,
            CliError::NotFound(_) => return exit::NOT_FOUND,
            CliError::Exists(_) => return exit::EXISTS,
            CliError::Denied(_) => return exit::PERMISSION,
        };
        match kind {
            Some(K::NotFound) => exit::NOT_FOUND,
            Some(K::Exists) => exit::EXISTS,
            Some(K::Busy) | Some(K::HasSnapshots) => exit::BUSY,
            Some(K::Timeout) | Some(K::Blocklisted) | Some(K::NotConnected) => exit::UNAVAILABLE,
            Some(K::PermissionDenied) => exit::PERMISSION,
            Some(K::InvalidInput) => exit::USAGE,
            _ => exit::FAILURE,
        }
    }
}

/// The documented exit code for a driver error: invalid input 2, no such volume 3,
/// exists 4, in use (mount IDs, another node's claim, a mounted or open device) 5,
/// cluster unavailable (timed out, blocklisted, not connected) 6.
pub fn driver_exit_code(e: &rbd_driver::DriverError) -> i32 {
    use rbd_core::ErrorKind as K;
    use rbd_driver::DriverError as D;
    match e {
        D::InvalidInput { .. } => exit::USAGE,
        D::NoSuchVolume(_) => exit::NOT_FOUND,
        D::VolumeExists(_) => exit::EXISTS,
        D::InUse { .. } | D::Held { .. } => exit::BUSY,
        D::Timeout { .. } => exit::UNAVAILABLE,
        D::CleanupFailed { source, .. } => driver_exit_code(source),
        D::Fs { source, .. } => fs_exit_code(source),
        D::Io { source, .. } => match source.kind() {
            std::io::ErrorKind::NotFound => exit::NOT_FOUND,
            std::io::ErrorKind::PermissionDenied => exit::PERMISSION,
            _ => exit::FAILURE,
        },
        D::Ceph { source, .. } => match source.kind() {
            K::NotFound => exit::NOT_FOUND,
            K::Exists => exit::EXISTS,
            K::Busy | K::HasSnapshots => exit::BUSY,
            K::Timeout | K::Blocklisted | K::NotConnected => exit::UNAVAILABLE,
            K::PermissionDenied => exit::PERMISSION,
            K::InvalidInput => exit::USAGE,
            _ => exit::FAILURE,
        },
        _ => exit::FAILURE,
    }
}

/// The exit code for a filesystem error: bad options 2, not mounted 3, busy or mounted
/// elsewhere 5.
fn fs_exit_code(e: &fs_format::Error) -> i32 {
    use fs_format::Error as F;
    match e {
        F::UnsupportedFsType(_)
        | F::InvalidMkfsOption { .. }
        | F::InvalidMountOption { .. }
        | F::FsTypeMismatch { .. }
        | F::NotBlank { .. } => exit::USAGE,
        F::NotMounted { .. } => exit::NOT_FOUND,
        F::DeviceMounted { .. } | F::DeviceBusy { .. } | F::AlreadyMounted { .. } => exit::BUSY,
        F::Unmount { source, .. } | F::Mount { source, .. }
            if *source == nix::errno::Errno::EBUSY =>
        {
            exit::BUSY
        }
        F::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => exit::NOT_FOUND,
        _ => exit::FAILURE,
    }
}

/// Result alias for commands.
pub type CliResult<T = ()> = Result<T, CliError>;

#[cfg(test)]
mod tests {
    use super::*;
    use rbd_core::Error;
    use rbd_core::error::Context;

    fn ceph(errno: i32) -> CliError {
        CliError::Ceph(Error::from_errno("rbd_test", errno, Context::none()))
    }

    #[test]
    fn ceph_kinds_map_to_documented_codes() {
        assert_eq!(ceph(libc::ENOENT).exit_code(), exit::NOT_FOUND);
        assert_eq!(ceph(libc::EEXIST).exit_code(), exit::EXISTS);
        assert_eq!(ceph(libc::EBUSY).exit_code(), exit::BUSY);
        assert_eq!(ceph(libc::ENOTEMPTY).exit_code(), exit::BUSY);
        assert_eq!(ceph(libc::ETIMEDOUT).exit_code(), exit::UNAVAILABLE);
        assert_eq!(ceph(libc::ESHUTDOWN).exit_code(), exit::UNAVAILABLE);
        assert_eq!(ceph(libc::ENOTCONN).exit_code(), exit::UNAVAILABLE);
        assert_eq!(ceph(libc::EPERM).exit_code(), exit::PERMISSION);
        assert_eq!(ceph(libc::EACCES).exit_code(), exit::PERMISSION);
        assert_eq!(ceph(libc::EINVAL).exit_code(), exit::USAGE);
        assert_eq!(ceph(libc::EIO).exit_code(), exit::FAILURE);
        assert_eq!(
            CliError::Ceph(Error::invalid("size", "2Q", "bad")).exit_code(),
            exit::USAGE
        );
    }

    #[test]
    fn context_keeps_the_kind() {
        let r: Result<(), Error> =
            Err(Error::from_errno("rbd_open", libc::ENOENT, Context::none()));
        let e = r.context(|| "opening x".into()).unwrap_err();
        assert_eq!(e.exit_code(), exit::NOT_FOUND);
        assert_eq!(e.to_string(), "opening x");
    }

    #[test]
    fn driver_errors_map_to_documented_codes() {
        use rbd_driver::DriverError as D;
        let d = |e: D| CliError::Driver(e).exit_code();
        assert_eq!(d(D::invalid("size", "2Q", "bad")), exit::USAGE);
        assert_eq!(d(D::NoSuchVolume("v".into())), exit::NOT_FOUND);
        assert_eq!(d(D::VolumeExists("v".into())), exit::EXISTS);
        let in_use = || D::InUse {
            volume: "v".into(),
            detail: "mount IDs a".into(),
        };
        assert_eq!(d(in_use()), exit::BUSY);
        assert_eq!(
            d(D::Held {
                image: "rbd/v".into(),
                node: "n2".into(),
                mode: "rw".into(),
                mount_ids: vec![],
            }),
            exit::BUSY
        );
        assert_eq!(
            d(D::Timeout {
                what: "x".into(),
                secs: 1
            }),
            exit::UNAVAILABLE
        );
        let ceph = |errno| {
            D::ceph(
                "x",
                Error::from_errno("rados_connect", errno, Context::none()),
            )
        };
        assert_eq!(d(ceph(libc::ETIMEDOUT)), exit::UNAVAILABLE);
        assert_eq!(d(ceph(libc::ESHUTDOWN)), exit::UNAVAILABLE);
        assert_eq!(d(ceph(libc::ENOENT)), exit::NOT_FOUND);
        assert_eq!(
            d(D::CleanupFailed {
                op: "attaching".into(),
                cleanup: "unmap failed".into(),
                source: Box::new(in_use()),
            }),
            exit::BUSY
        );
        let fs = |e| D::fs("x", e);
        assert_eq!(
            d(fs(fs_format::Error::Unmount {
                target: "/mnt".into(),
                lazy: false,
                source: nix::errno::Errno::EBUSY,
            })),
            exit::BUSY
        );
        assert_eq!(
            d(fs(fs_format::Error::UnsupportedFsType("zfs".into()))),
            exit::USAGE
        );
        assert_eq!(
            d(D::BackendUnavailable {
                backend: rbd_driver::mapper::Backend::Krbd,
                reason: "no module".into(),
            }),
            exit::FAILURE
        );
    }

    #[test]
    fn io_kinds() {
        let e = |k| CliError::io("x", std::io::Error::from(k));
        assert_eq!(e(std::io::ErrorKind::NotFound).exit_code(), exit::NOT_FOUND);
        assert_eq!(
            e(std::io::ErrorKind::AlreadyExists).exit_code(),
            exit::EXISTS
        );
        assert_eq!(
            e(std::io::ErrorKind::PermissionDenied).exit_code(),
            exit::PERMISSION
        );
        assert_eq!(e(std::io::ErrorKind::BrokenPipe).exit_code(), exit::FAILURE);
        assert_eq!(CliError::NotFound("k".into()).exit_code(), exit::NOT_FOUND);
        assert_eq!(CliError::Exists("f".into()).exit_code(), exit::EXISTS);
    }
}
