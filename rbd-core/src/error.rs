//! The crate's one error type, and the one path from a C return code to it ([`check`]).

use std::fmt;

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// `EBLOCKLISTED` as librados returns it: Ceph defines it as `ESHUTDOWN` (108 on Linux).
pub const EBLOCKLISTED: i32 = libc::ESHUTDOWN;

/// What kind of failure an [`Error`] is, independent of the operation that failed.
///
/// Match on this rather than on errno values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The pool, image, snapshot, object or key does not exist (`ENOENT`).
    NotFound,
    /// It already exists (`EEXIST`).
    Exists,
    /// It is in use: watchers, a lock, or an ongoing operation (`EBUSY`).
    Busy,
    /// The image still has snapshots, or the directory is not empty (`ENOTEMPTY`).
    HasSnapshots,
    /// Our client has been blocklisted (`EBLOCKLISTED`, i.e. `ESHUTDOWN`, 108).
    Blocklisted,
    /// The operation did not finish within its timeout (`ETIMEDOUT`).
    Timeout,
    /// Authentication or capabilities refused it (`EPERM`, `EACCES`).
    PermissionDenied,
    /// An argument was rejected (`EINVAL`, `ERANGE`, `ENAMETOOLONG`, or our own validation).
    InvalidInput,
    /// The cluster or pool is full, or a quota was hit (`ENOSPC`, `EDQUOT`).
    NoSpace,
    /// The image or snapshot is read-only (`EROFS`).
    ReadOnly,
    /// The cluster or library does not support it (`EOPNOTSUPP`, `ENOSYS`).
    NotSupported,
    /// A guarded (compare) operation's condition did not hold (`ECANCELED`).
    ConditionFailed,
    /// The session to the OSD was lost, e.g. a watch that must be re-established
    /// (`ENOTCONN`).
    NotConnected,
    /// The library version is older than the minimum supported.
    UnsupportedVersion,
    /// Anything else; see [`Error::errno`].
    Other,
}

impl ErrorKind {
    /// Classifies a positive errno value.
    pub fn from_errno(errno: i32) -> Self {
        match errno {
            libc::ENOENT => Self::NotFound,
            libc::EEXIST => Self::Exists,
            libc::EBUSY => Self::Busy,
            libc::ENOTEMPTY => Self::HasSnapshots,
            EBLOCKLISTED => Self::Blocklisted,
            libc::ETIMEDOUT => Self::Timeout,
            libc::EPERM | libc::EACCES => Self::PermissionDenied,
            libc::EINVAL | libc::ERANGE | libc::ENAMETOOLONG | libc::EDOM => Self::InvalidInput,
            libc::ENOSPC | libc::EDQUOT => Self::NoSpace,
            libc::EROFS => Self::ReadOnly,
            libc::EOPNOTSUPP | libc::ENOSYS => Self::NotSupported,
            libc::ECANCELED => Self::ConditionFailed,
            libc::ENOTCONN => Self::NotConnected,
            _ => Self::Other,
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Self::NotFound => "not found",
            Self::Exists => "already exists",
            Self::Busy => "busy (in use)",
            Self::HasSnapshots => "has snapshots or is not empty",
            Self::Blocklisted => "client is blocklisted",
            Self::Timeout => "timed out",
            Self::PermissionDenied => "permission denied",
            Self::InvalidInput => "invalid argument",
            Self::NoSpace => "no space left",
            Self::ReadOnly => "read-only",
            Self::NotSupported => "not supported",
            Self::ConditionFailed => "guard condition failed",
            Self::NotConnected => "not connected",
            Self::UnsupportedVersion => "unsupported library version",
            Self::Other => "failed",
        };
        f.write_str(s)
    }
}

/// Where an operation ran: the pool, namespace, image, snapshot or object it named.
///
/// Rendered in error messages as e.g. `pool rbd, image db1`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Context {
    /// Pool name.
    pub pool: Option<String>,
    /// RADOS namespace, when not the default one.
    pub namespace: Option<String>,
    /// Image name or id.
    pub image: Option<String>,
    /// Snapshot name.
    pub snap: Option<String>,
    /// RADOS object name.
    pub object: Option<String>,
}

impl Context {
    /// An empty context (cluster-level operation).
    pub fn none() -> Self {
        Self::default()
    }
    /// A context naming a pool.
    pub fn pool(pool: impl Into<String>) -> Self {
        Self {
            pool: Some(pool.into()),
            ..Self::default()
        }
    }
    /// Adds the namespace (ignored when empty).
    pub fn with_namespace(mut self, ns: &str) -> Self {
        if !ns.is_empty() {
            self.namespace = Some(ns.to_owned());
        }
        self
    }
    /// Adds an image name or id.
    pub fn with_image(mut self, image: impl Into<String>) -> Self {
        self.image = Some(image.into());
        self
    }
    /// Adds a snapshot name.
    pub fn with_snap(mut self, snap: impl Into<String>) -> Self {
        self.snap = Some(snap.into());
        self
    }
    /// Adds a RADOS object name.
    pub fn with_object(mut self, object: impl Into<String>) -> Self {
        self.object = Some(object.into());
        self
    }
    fn is_empty(&self) -> bool {
        self.pool.is_none()
            && self.namespace.is_none()
            && self.image.is_none()
            && self.snap.is_none()
            && self.object.is_none()
    }
}

impl fmt::Display for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if let Some(p) = &self.pool {
            parts.push(format!("pool {p}"));
        }
        if let Some(n) = &self.namespace {
            parts.push(format!("namespace {n}"));
        }
        if let Some(i) = &self.image {
            parts.push(format!("image {i}"));
        }
        if let Some(s) = &self.snap {
            parts.push(format!("snapshot {s}"));
        }
        if let Some(o) = &self.object {
            parts.push(format!("object {o}"));
        }
        f.write_str(&parts.join(", "))
    }
}

fn ctx_suffix(ctx: &Context) -> String {
    if ctx.is_empty() {
        String::new()
    } else {
        format!(" ({ctx})")
    }
}

fn status_suffix(status: &str) -> String {
    let s = status.trim();
    if s.is_empty() {
        String::new()
    } else {
        format!(": {s}")
    }
}

/// The error type of every fallible operation in this crate.
///
/// `Display` says what failed and where; the underlying cause (the OS error for errno
/// values, the parse error for JSON) is the [`std::error::Error::source`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A librados or librbd call returned a negative errno.
    #[error("{op}{} failed: {kind} (errno {errno})", ctx_suffix(.ctx))]
    Ceph {
        /// The C function or operation that failed, e.g. `rbd_open`.
        op: &'static str,
        /// Pool, image, object... the call named.
        ctx: Box<Context>,
        /// The positive errno value.
        errno: i32,
        /// Its classification.
        kind: ErrorKind,
        /// The errno as an OS error, for its text.
        #[source]
        source: std::io::Error,
    },
    /// Input was rejected before anything was sent to the cluster; nothing was changed.
    #[error("invalid {what} {value:?}: {reason}")]
    InvalidInput {
        /// What the value is, e.g. `image name`.
        what: &'static str,
        /// The rejected value.
        value: String,
        /// Why it was rejected.
        reason: String,
    },
    /// A library is older than the minimum supported version.
    #[error("{library} {found} is too old: rbd-core needs {required} or newer (Ceph 16.2 Pacific)")]
    UnsupportedVersion {
        /// `librbd` or `librados`.
        library: &'static str,
        /// The version found at runtime.
        found: String,
        /// The minimum version.
        required: String,
    },
    /// A library could not be loaded (`dlopen` or `dlsym` failed).
    #[error("cannot load {library}: {reason}")]
    LibraryLoad {
        /// `librbd`.
        library: &'static str,
        /// The loader's message.
        reason: String,
    },
    /// A reply from the cluster could not be decoded.
    #[error("{op}{} returned a reply that could not be decoded", ctx_suffix(.ctx))]
    Decode {
        /// The operation whose reply was malformed.
        op: &'static str,
        /// Pool, image... the call named.
        ctx: Box<Context>,
        /// The decoding error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A monitor command was refused; `status` is the monitor's own explanation.
    #[error("mon command {command:?} failed: {kind} (errno {errno}){}", status_suffix(.status))]
    Command {
        /// The command's prefix, e.g. `osd blocklist`.
        command: String,
        /// The positive errno value.
        errno: i32,
        /// Its classification.
        kind: ErrorKind,
        /// The status string the monitor returned (may be empty).
        status: String,
        /// The errno as an OS error, for its text.
        #[source]
        source: std::io::Error,
    },
    /// An operation was given up after its deadline, on our side.
    #[error("{op}{} did not finish within {timeout:?}", ctx_suffix(.ctx))]
    Timeout {
        /// The operation that timed out.
        op: &'static str,
        /// Pool, image... the call named.
        ctx: Box<Context>,
        /// The deadline that passed.
        timeout: std::time::Duration,
    },
}

impl Error {
    /// Builds a [`Error::Ceph`] from a positive errno.
    pub fn from_errno(op: &'static str, errno: i32, ctx: Context) -> Self {
        let errno = errno.abs();
        Error::Ceph {
            op,
            ctx: Box::new(ctx),
            errno,
            kind: ErrorKind::from_errno(errno),
            source: std::io::Error::from_raw_os_error(errno),
        }
    }

    /// Builds an [`Error::Command`] from a monitor command's negative return code and
    /// status string.
    pub fn command(command: impl Into<String>, errno: i32, status: impl Into<String>) -> Self {
        let errno = errno.abs();
        Error::Command {
            command: command.into(),
            errno,
            kind: ErrorKind::from_errno(errno),
            status: status.into(),
            source: std::io::Error::from_raw_os_error(errno),
        }
    }

    /// Builds an [`Error::InvalidInput`].
    pub fn invalid(
        what: &'static str,
        value: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        Error::InvalidInput {
            what,
            value: value.into(),
            reason: reason.into(),
        }
    }

    /// Builds an [`Error::Decode`].
    pub fn decode(
        op: &'static str,
        ctx: Context,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Error::Decode {
            op,
            ctx: Box::new(ctx),
            source: source.into(),
        }
    }

    /// The classification of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Ceph { kind, .. } | Error::Command { kind, .. } => *kind,
            Error::InvalidInput { .. } => ErrorKind::InvalidInput,
            Error::UnsupportedVersion { .. } => ErrorKind::UnsupportedVersion,
            Error::LibraryLoad { .. } => ErrorKind::NotSupported,
            Error::Decode { .. } => ErrorKind::Other,
            Error::Timeout { .. } => ErrorKind::Timeout,
        }
    }

    /// The positive errno value, for errors that came from librados or librbd.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::Ceph { errno, .. } | Error::Command { errno, .. } => Some(*errno),
            Error::Timeout { .. } => Some(libc::ETIMEDOUT),
            _ => None,
        }
    }

    /// The operation that failed, when known.
    pub fn op(&self) -> Option<&'static str> {
        match self {
            Error::Ceph { op, .. } | Error::Decode { op, .. } | Error::Timeout { op, .. } => {
                Some(op)
            }
            Error::Command { .. } => Some("rados_mon_command"),
            _ => None,
        }
    }

    /// The pool/image/object context, when known.
    pub fn context(&self) -> Option<&Context> {
        match self {
            Error::Ceph { ctx, .. } | Error::Decode { ctx, .. } | Error::Timeout { ctx, .. } => {
                Some(ctx)
            }
            _ => None,
        }
    }
}

impl From<Error> for std::io::Error {
    fn from(e: Error) -> Self {
        let kind = match e.kind() {
            ErrorKind::NotFound => std::io::ErrorKind::NotFound,
            ErrorKind::Exists => std::io::ErrorKind::AlreadyExists,
            ErrorKind::PermissionDenied => std::io::ErrorKind::PermissionDenied,
            ErrorKind::InvalidInput => std::io::ErrorKind::InvalidInput,
            ErrorKind::Timeout => std::io::ErrorKind::TimedOut,
            ErrorKind::ReadOnly => std::io::ErrorKind::ReadOnlyFilesystem,
            ErrorKind::NoSpace => std::io::ErrorKind::StorageFull,
            ErrorKind::Busy => std::io::ErrorKind::ResourceBusy,
            ErrorKind::NotConnected => std::io::ErrorKind::NotConnected,
            _ => std::io::ErrorKind::Other,
        };
        std::io::Error::new(kind, e)
    }
}

/// The one path from a librados/librbd return code to a [`Result`].
///
/// Non-negative values pass through; a negative value `-errno` becomes [`Error::Ceph`].
pub fn check(ret: i32, op: &'static str, ctx: impl FnOnce() -> Context) -> Result<i32> {
    if ret >= 0 {
        Ok(ret)
    } else {
        Err(Error::from_errno(op, -ret, ctx()))
    }
}

/// Like [`check`] for functions returning a 64-bit value (`ssize_t`, `int64_t`).
pub fn check64(ret: i64, op: &'static str, ctx: impl FnOnce() -> Context) -> Result<u64> {
    if ret >= 0 {
        Ok(ret as u64)
    } else {
        let errno = i32::try_from(-ret).unwrap_or(libc::EIO);
        Err(Error::from_errno(op, errno, ctx()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_from_errno() {
        assert_eq!(ErrorKind::from_errno(libc::ENOENT), ErrorKind::NotFound);
        assert_eq!(ErrorKind::from_errno(libc::EBUSY), ErrorKind::Busy);
        assert_eq!(
            ErrorKind::from_errno(libc::ENOTEMPTY),
            ErrorKind::HasSnapshots
        );
        assert_eq!(ErrorKind::from_errno(108), ErrorKind::Blocklisted);
        assert_eq!(ErrorKind::from_errno(libc::ETIMEDOUT), ErrorKind::Timeout);
        assert_eq!(
            ErrorKind::from_errno(libc::EACCES),
            ErrorKind::PermissionDenied
        );
        assert_eq!(ErrorKind::from_errno(libc::ENOSPC), ErrorKind::NoSpace);
        assert_eq!(
            ErrorKind::from_errno(libc::ECANCELED),
            ErrorKind::ConditionFailed
        );
        assert_eq!(
            ErrorKind::from_errno(libc::ENOTCONN),
            ErrorKind::NotConnected
        );
        assert_eq!(ErrorKind::from_errno(9999), ErrorKind::Other);
    }

    #[test]
    fn check_passes_and_fails() {
        assert_eq!(check(5, "x", Context::none).unwrap(), 5);
        let e = check(-libc::ENOENT, "rbd_open", || {
            Context::pool("rbd").with_image("db1")
        })
        .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotFound);
        assert_eq!(e.errno(), Some(libc::ENOENT));
        assert_eq!(e.op(), Some("rbd_open"));
        let msg = e.to_string();
        assert!(msg.contains("rbd_open"), "{msg}");
        assert!(msg.contains("pool rbd, image db1"), "{msg}");
        assert!(std::error::Error::source(&e).is_some());
    }

    #[test]
    fn command_errors_carry_status() {
        let e = Error::command("osd blocklist", -libc::EINVAL, "bad addr 1.2.3\n");
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
        assert_eq!(e.errno(), Some(libc::EINVAL));
        assert_eq!(e.op(), Some("rados_mon_command"));
        let msg = e.to_string();
        assert!(msg.contains("\"osd blocklist\""), "{msg}");
        assert!(msg.ends_with(": bad addr 1.2.3"), "{msg}");
        let e = Error::command("x", -libc::EPERM, "");
        assert!(!e.to_string().ends_with(": "), "{e}");
    }

    #[test]
    fn check64_large_values() {
        assert_eq!(check64(1 << 40, "x", Context::none).unwrap(), 1 << 40);
        assert_eq!(
            check64(-108, "x", Context::none).unwrap_err().kind(),
            ErrorKind::Blocklisted
        );
    }
}
