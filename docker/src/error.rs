//! The crate's one error type: what can stop the plugin from starting or serving, and
//! why a volume operation failed.
//!
//! Errors of single requests never stop the plugin; they are answered in the `Err` field of
//! the response (see [`crate::service`]).

use std::path::PathBuf;

/// Result alias for the plugin.
pub type Result<T, E = PluginError> = std::result::Result<T, E>;

/// Everything that can go wrong while configuring, starting or stopping the plugin.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PluginError {
    /// The configuration file could not be read.
    #[error("cannot read the configuration file {path}")]
    ConfigRead {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The configuration file is not valid TOML (or JSON for `.json` files).
    #[error("configuration file {path} is invalid: {message}")]
    ConfigParse {
        /// The file.
        path: PathBuf,
        /// What the parser said, with the line when known.
        message: String,
    },
    /// A configuration value (from the file, the environment or the command line) is bad.
    #[error("invalid configuration {key} = {value:?} (from {origin}): {reason}")]
    ConfigValue {
        /// The setting, e.g. `timeouts.read` or `RBD_BACKEND`.
        key: String,
        /// The rejected value.
        value: String,
        /// Where it came from: the file path, `environment` or `command line`.
        origin: String,
        /// Why it was rejected.
        reason: String,
    },
    /// The node-wide volume defaults were rejected by the driver.
    #[error("invalid volume defaults (config [defaults] or RBD_DEFAULT_*)")]
    Defaults(#[source] rbd_driver::DriverError),
    /// The plugin socket cannot be set up.
    #[error("cannot serve on {path}: {what}")]
    Socket {
        /// The socket path.
        path: PathBuf,
        /// What we were doing.
        what: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Another live process already serves the socket.
    #[error(
        "another process already serves {0} (it accepted a connection); stop it first or \
         choose another socket with --socket / RBD_PLUGIN_SOCKET"
    )]
    SocketInUse(PathBuf),
    /// Something other than a socket is in the socket's place; we never delete it.
    #[error("{0} exists and is not a unix socket; remove it or choose another --socket")]
    NotASocket(PathBuf),
    /// A volume operation failed in the driver.
    #[error(transparent)]
    Driver(#[from] rbd_driver::DriverError),
    /// A volume operation failed in the volume worker process ([`crate::worker`]): the
    /// message (with its causes) and the class of the driver's error, as the worker
    /// reported them.
    #[error("{message}")]
    Worker {
        /// The driver error's message, causes included.
        message: String,
        /// Its class.
        class: crate::service::FailureKind,
    },
    /// A local system call failed.
    #[error("{what}")]
    Io {
        /// What we were doing.
        what: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

impl PluginError {
    /// A bad configuration value.
    pub fn value(
        key: impl Into<String>,
        value: impl Into<String>,
        origin: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        PluginError::ConfigValue {
            key: key.into(),
            value: value.into(),
            origin: origin.into(),
            reason: reason.into(),
        }
    }
}

/// `err` and every `source` below it, joined with `: `, so a message carries its causes.
pub fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut s = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        let m = e.to_string();
        // Some errors repeat their source's text in their own Display; do not say it twice.
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = e.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_includes_causes_once() {
        let e = PluginError::Socket {
            path: "/run/x.sock".into(),
            what: "binding".into(),
            source: std::io::Error::from_raw_os_error(libc::EACCES),
        };
        let s = chain(&e);
        assert!(
            s.starts_with("cannot serve on /run/x.sock: binding: "),
            "{s}"
        );
        assert!(s.contains("Permission denied"), "{s}");
    }
}
