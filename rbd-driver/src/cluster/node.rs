//! Node identity: the stable name under which a host's daemon registers mappings.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{DriverError, Result};

/// Longest node id accepted (a DNS name's length limit).
pub const MAX_NODE_ID_LEN: usize = 253;

const HOSTNAME_FILE: &str = "/proc/sys/kernel/hostname";

/// Environment variable that overrides the hostname default ([`NodeId::resolve`]).
pub const NODE_ID_ENV: &str = "RBD_NODE_ID";

/// A node's id: the hostname by default, or configured.
///
/// Valid ids are 1 to [`MAX_NODE_ID_LEN`] bytes of ASCII letters, digits, `.`, `-` and
/// `_`, starting and ending with a letter or digit (every hostname qualifies). The id is
/// stored in registry entries and control messages, so it must be stable across restarts
/// and unique in the cluster.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct NodeId(String);

impl NodeId {
    /// Validates `id`.
    pub fn new(id: impl Into<String>) -> Result<NodeId> {
        let id = id.into();
        validate(&id)?;
        Ok(NodeId(id))
    }

    /// This host's name (`/proc/sys/kernel/hostname`, what `gethostname(2)` returns), as
    /// a node id.
    pub fn from_hostname() -> Result<NodeId> {
        let h = std::fs::read_to_string(HOSTNAME_FILE).map_err(|e| {
            DriverError::io(format!("reading the hostname from {HOSTNAME_FILE}"), e)
        })?;
        let h = h.trim().to_owned();
        NodeId::new(h).map_err(|e| match e {
            DriverError::InvalidInput { value, reason, .. } => DriverError::invalid(
                "hostname as node id",
                value,
                format!("{reason}; configure a node id explicitly"),
            ),
            e => e,
        })
    }

    /// The node id to use: `configured` if given, else `$RBD_NODE_ID` if set and
    /// non-empty, else the hostname.
    pub fn resolve(configured: Option<&str>) -> Result<NodeId> {
        if let Some(c) = configured {
            return NodeId::new(c);
        }
        match std::env::var(NODE_ID_ENV) {
            Ok(v) if !v.is_empty() => NodeId::new(v),
            _ => NodeId::from_hostname(),
        }
    }

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn validate(id: &str) -> Result<()> {
    let bad = |reason: &str| Err(DriverError::invalid("node id", id, reason));
    if id.is_empty() {
        return bad("must not be empty");
    }
    if id.len() > MAX_NODE_ID_LEN {
        return bad(&format!("longer than {MAX_NODE_ID_LEN} bytes"));
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')))
    {
        return bad(&format!(
            "contains {c:?}; only ASCII letters, digits, '.', '-' and '_' are allowed"
        ));
    }
    let first = id.as_bytes()[0];
    let last = id.as_bytes()[id.len() - 1];
    if !first.is_ascii_alphanumeric() || !last.is_ascii_alphanumeric() {
        return bad("must start and end with a letter or digit");
    }
    Ok(())
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for NodeId {
    type Err = DriverError;
    fn from_str(s: &str) -> Result<Self> {
        NodeId::new(s)
    }
}

impl AsRef<str> for NodeId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for NodeId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        NodeId::new(s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_hostnames() {
        for ok in [
            "a",
            "node-1",
            "db1.example.invalid",
            "n_2",
            "A9",
            "x".repeat(253).as_str(),
        ] {
            assert_eq!(NodeId::new(ok).unwrap().as_str(), ok);
        }
    }

    #[test]
    fn rejects_bad_ids_naming_them() {
        for (bad, why) in [
            ("", "empty"),
            ("-a", "start and end"),
            ("a.", "start and end"),
            ("a b", "' '"),
            ("a/b", "'/'"),
            ("ä", "'ä'"),
            ("a\n", "'\\n'"),
        ] {
            let e = NodeId::new(bad).unwrap_err().to_string();
            assert!(e.contains(&format!("{bad:?}")), "{e}");
            assert!(e.contains(why), "{bad:?}: {e}");
        }
        let long = "x".repeat(254);
        assert!(NodeId::new(long).unwrap_err().to_string().contains("253"));
    }

    #[test]
    fn serde_validates() {
        let n: NodeId = serde_json::from_str("\"n1\"").unwrap();
        assert_eq!(serde_json::to_string(&n).unwrap(), "\"n1\"");
        assert!(serde_json::from_str::<NodeId>("\"bad id\"").is_err());
    }

    #[test]
    fn resolve_prefers_configured_then_hostname() {
        assert_eq!(NodeId::resolve(Some("cfg")).unwrap().as_str(), "cfg");
        assert!(NodeId::resolve(Some("bad id")).is_err());
        // The hostname of this machine is a valid node id (or the error says why).
        match NodeId::from_hostname() {
            Ok(h) => assert!(!h.as_str().is_empty()),
            Err(e) => assert!(e.to_string().contains("configure a node id"), "{e}"),
        }
    }
}
