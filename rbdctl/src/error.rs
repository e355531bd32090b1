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
}

impl CliError {
    /// The documented exit code for this error.
    pub fn exit_code(&self) -> i32 {
        use rbd_core::ErrorKind as K;
        let kind = match self {
            CliError::Ceph(e) => Some(e.kind()),
            CliError::Driver(e) => match e {
                rbd_driver::DriverError::InvalidInput { .. } => return exit::USAGE,
                rbd_driver::DriverError::NoSuchVolume(_) => return exit::NOT_FOUND,
                rbd_driver::DriverError::VolumeExists(_) => return exit::EXISTS,
                rbd_driver::DriverError::InUse { .. } => return exit::BUSY,
                rbd_driver::DriverError::Timeout { .. } => return exit::UNAVAILABLE,
                _ => e.ceph_kind(),
            },
            CliError::Io { .. } => None,
            CliError::Usage(_) => return exit::USAGE,
            CliError::Busy(_) => return exit::BUSY,
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

/// Result alias for commands.
pub type CliResult<T = ()> = Result<T, CliError>;
