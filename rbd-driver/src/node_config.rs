//! What the Docker plugin and `rbdctl` read alike about this node: the config file (the
//! plugin's, `/etc/rbd-volumes/plugin.toml` or `$RBD_PLUGIN_CONFIG`; TOML, or JSON when
//! the name ends in `.json`) and the `RBD_DEFAULT_<KEY>` environment variables that set
//! node-wide volume defaults. Both programs read the same file on purpose, so that on one
//! host they share the volume state; each keeps its own list of the keys it takes from it
//! and its own error messages.
//!
//! ```
//! use std::collections::BTreeMap;
//! use std::path::Path;
//! use rbd_driver::node_config::{self, Scalar};
//!
//! #[derive(serde::Deserialize)]
//! struct File {
//!     defaults: BTreeMap<String, Scalar>,
//! }
//! let f: File = node_config::parse_file(Path::new("plugin.toml"), "[defaults]\nsize = 10\n")?;
//! assert_eq!(f.defaults["size"].clone().into_string(), "10");
//!
//! let env = [("RBD_DEFAULT_MOUNT_OPTIONS", "noatime"), ("HOME", "/root")];
//! let d = node_config::env_defaults(env).unwrap();
//! assert_eq!(d["mount-options"], "noatime");
//! assert_eq!(
//!     node_config::env_defaults([("RBD_DEFAULT_size", "1G")]).unwrap_err(),
//!     ("RBD_DEFAULT_size", "1G")
//! );
//! # Ok::<(), String>(())
//! ```

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;
use serde::de::DeserializeOwned;

/// The config file read when none is named (a missing default file is not an error).
pub const DEFAULT_CONFIG_FILE: &str = "/etc/rbd-volumes/plugin.toml";

/// The environment variable naming the config file.
pub const CONFIG_FILE_VAR: &str = "RBD_PLUGIN_CONFIG";

/// The prefix of the environment variables that set node-wide volume defaults
/// (`RBD_DEFAULT_SIZE=10G`, `RBD_DEFAULT_MOUNT_OPTIONS=noatime`).
pub const DEFAULT_VAR_PREFIX: &str = "RBD_DEFAULT_";

/// What a badly named `RBD_DEFAULT_*` variable is told.
pub const DEFAULT_VAR_EXPECTED: &str =
    "expected RBD_DEFAULT_<KEY> with KEY in upper case, e.g. RBD_DEFAULT_SIZE";

/// A `[defaults]` value of the config file: `size = 10` and `size = "10G"` both work.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum Scalar {
    /// A string.
    Str(String),
    /// An integer.
    Int(i64),
    /// A float.
    Float(f64),
    /// A boolean.
    Bool(bool),
}

impl Scalar {
    /// The value as an `-o` style option value (`10`, `10G`, `true`).
    pub fn into_string(self) -> String {
        match self {
            Scalar::Str(s) => s,
            Scalar::Int(i) => i.to_string(),
            Scalar::Float(f) => f.to_string(),
            Scalar::Bool(b) => b.to_string(),
        }
    }
}

/// The text of the config file at `path`; `Ok(None)` when it does not exist and was not
/// named explicitly (`explicit` false: the default file, which is optional). Every other
/// failure (a named file that is missing too) is the OS error.
pub fn read_file(path: &Path, explicit: bool) -> std::io::Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => Ok(None),
        Err(e) => Err(e),
    }
}

/// Parses the config file text: JSON when `path` ends in `.json`, TOML otherwise. The
/// error is what the parser said (with the line when known), trimmed.
pub fn parse_file<T: DeserializeOwned>(path: &Path, text: &str) -> Result<T, String> {
    let parsed = if path.extension().is_some_and(|e| e == "json") {
        serde_json::from_str::<T>(text).map_err(|e| e.to_string())
    } else {
        toml::from_str::<T>(text).map_err(|e| e.to_string())
    };
    parsed.map_err(|e| e.trim().to_string())
}

/// The node-wide volume defaults set by the `RBD_DEFAULT_<KEY>` variables among `vars`
/// (name, value): key `KEY` in lower case with `_` written `-` (`RBD_DEFAULT_MOUNT_OPTIONS`
/// sets `mount-options`). Other variables, and empty values (unset), are passed over.
/// `Err` is the first variable whose `KEY` is empty or not in upper case (see
/// [`DEFAULT_VAR_EXPECTED`]), as (name, value).
pub fn env_defaults<K, V>(
    vars: impl IntoIterator<Item = (K, V)>,
) -> Result<BTreeMap<String, String>, (K, V)>
where
    K: AsRef<str>,
    V: AsRef<str>,
{
    let mut defaults = BTreeMap::new();
    for (k, v) in vars {
        let Some(key) = k.as_ref().strip_prefix(DEFAULT_VAR_PREFIX) else {
            continue;
        };
        if v.as_ref().trim().is_empty() {
            continue;
        }
        if key.is_empty() || !key.bytes().all(|b| b.is_ascii_uppercase() || b == b'_') {
            return Err((k, v));
        }
        let key = key.to_ascii_lowercase().replace('_', "-");
        defaults.insert(key, v.as_ref().to_owned());
    }
    Ok(defaults)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scalars_become_option_values() {
        #[derive(Deserialize)]
        struct F {
            d: BTreeMap<String, Scalar>,
        }
        let f: F = parse_file(
            Path::new("x.toml"),
            "[d]\na = \"10G\"\nb = 10\nc = 1.5\nd = true\n",
        )
        .unwrap();
        let got: Vec<String> = f.d.into_values().map(Scalar::into_string).collect();
        assert_eq!(got, ["10G", "10", "1.5", "true"]);
        let f: F = parse_file(Path::new("x.json"), r#"{"d": {"a": 2}}"#).unwrap();
        assert_eq!(f.d["a"], Scalar::Int(2));
    }

    #[test]
    fn parse_errors_say_what_the_parser_said() {
        #[derive(Debug, Deserialize)]
        #[serde(deny_unknown_fields)]
        struct F {
            #[allow(dead_code)]
            a: Option<i64>,
        }
        let e = parse_file::<F>(Path::new("x.toml"), "b = 1").unwrap_err();
        assert!(e.contains("unknown field `b`"), "{e}");
        assert_eq!(e, e.trim());
        // `.json` is JSON: TOML there is a JSON syntax error.
        let e = parse_file::<F>(Path::new("x.json"), "a = 1").unwrap_err();
        assert!(e.contains("expected value"), "{e}");
    }

    #[test]
    fn only_a_named_missing_file_is_an_error() {
        let missing = Path::new("/nonexistent/rbd-volumes/plugin.toml");
        assert!(read_file(missing, false).unwrap().is_none());
        let e = read_file(missing, true).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::NotFound);
        let dir = std::env::temp_dir().join(format!("rbd-node-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("plugin.toml");
        std::fs::write(&p, "a = 1\n").unwrap();
        assert_eq!(read_file(&p, false).unwrap().as_deref(), Some("a = 1\n"));
        // A directory is not a file, named or not.
        assert!(read_file(&dir, false).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn env_defaults_take_upper_case_keys_only() {
        let d = env_defaults([
            ("RBD_DEFAULT_SIZE", "20G"),
            ("RBD_DEFAULT_MOUNT_OPTIONS", "noatime"),
            ("RBD_DEFAULT_FSTYPE", " "),
            ("RBD_NODE_ID", "n1"),
        ])
        .unwrap();
        assert_eq!(
            d,
            BTreeMap::from([
                ("mount-options".to_string(), "noatime".to_string()),
                ("size".to_string(), "20G".to_string()),
            ])
        );
        assert_eq!(
            env_defaults([("RBD_DEFAULT_SIZE", "1G"), ("RBD_DEFAULT_", "x")]).unwrap_err(),
            ("RBD_DEFAULT_", "x")
        );
        assert_eq!(
            env_defaults([("RBD_DEFAULT_size", "1G")]).unwrap_err(),
            ("RBD_DEFAULT_size", "1G")
        );
        // An empty value is unset, even under a bad name.
        assert!(env_defaults([("RBD_DEFAULT_size", "")]).unwrap().is_empty());
    }
}
