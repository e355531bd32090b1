//! Node settings for the volume and device commands: where this host keeps its volume
//! state, mounts and mapper records, which mapper backend it uses, and its node-wide
//! volume defaults. Each has a flag and the environment variable the Docker plugin
//! reads, with the plugin's defaults, so `rbdctl` and the plugin on one host share the
//! same state (the state file and the per-volume locks are `flock`ed).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use rbd_driver::mapper::{Backend, CephAuth, MapperConfig};
use rbd_driver::volume::{DriverConfig, StateStore, VolumeDefaults, VolumeState};

use crate::Cli;
use crate::error::{CliError, CliResult};

/// The help text listing the node settings and their environment variables.
pub const NODE_HELP: &str = "\
Node settings (flag, environment variable, default; the Docker plugin reads the same
variables, so both share this host's volume state):
  --state-dir    RBD_STATE_DIR    /var/lib/rbd-volumes
  --mount-root   RBD_MOUNT_ROOT   /var/lib/rbd-volumes/mounts
  --run-dir      RBD_RUN_DIR      /run/rbd-volumes
  --node-id      RBD_NODE_ID      the host name
  --backend      RBD_BACKEND      auto (krbd, then nbd, then userspace)
  --umap-bin     RBD_UMAP_BIN     rbd-umap next to rbdctl, then $PATH
  --nbd-bin      RBD_NBD_BIN      rbd-nbd from $PATH
  --default K=V  RBD_DEFAULT_<K>  node-wide volume defaults (pool, size, fstype, ...;
                                  RBD_DEFAULT_MOUNT_OPTIONS=noatime). The default pool
                                  also holds the cluster-wide volume name index.
Empty variables count as unset. The Docker plugin's config file is not read: when it
sets any of these, export the same values for rbdctl.";

/// Where this node keeps its state, and how it maps images.
#[derive(Debug, Clone, Args, Default)]
pub struct NodeArgs {
    /// Volume state directory (state file and locks). Default /var/lib/rbd-volumes.
    #[arg(long, global = true, env = "RBD_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Volumes are mounted at MOUNT_ROOT/NAME. Default /var/lib/rbd-volumes/mounts.
    #[arg(long, global = true, env = "RBD_MOUNT_ROOT", value_name = "DIR")]
    pub mount_root: Option<PathBuf>,
    /// Mapper runtime directory (mapping records, FUSE mountpoints). Default /run/rbd-volumes.
    #[arg(long, global = true, env = "RBD_RUN_DIR", value_name = "DIR")]
    pub run_dir: Option<PathBuf>,
    /// This node's id. Default: the host name.
    #[arg(long, global = true, env = "RBD_NODE_ID", value_name = "ID")]
    pub node_id: Option<String>,
    /// Mapper backend: auto, krbd, nbd or userspace. Default auto.
    #[arg(long, global = true, env = "RBD_BACKEND", value_name = "BACKEND")]
    pub backend: Option<String>,
    /// The userspace mapper binary (rbd-umap).
    #[arg(long, global = true, env = "RBD_UMAP_BIN", value_name = "PATH")]
    pub umap_bin: Option<PathBuf>,
    /// The rbd-nbd binary.
    #[arg(long, global = true, env = "RBD_NBD_BIN", value_name = "PATH")]
    pub nbd_bin: Option<PathBuf>,
    /// A node-wide volume default, KEY=VALUE (repeatable; overrides the RBD_DEFAULT_KEY variables).
    #[arg(long = "default", global = true, value_name = "KEY=VALUE")]
    pub defaults: Vec<String>,
}

/// An empty value (e.g. an empty environment variable) counts as unset.
fn set<T: AsRef<std::ffi::OsStr>>(v: &Option<T>) -> Option<&T> {
    v.as_ref().filter(|v| !v.as_ref().is_empty())
}

/// Parses `KEY=VALUE`, naming `what` in the error.
pub fn parse_kv(what: &str, s: &str) -> CliResult<(String, String)> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.to_owned())),
        _ => Err(CliError::Usage(format!(
            "invalid {what} {s:?}: expected KEY=VALUE"
        ))),
    }
}

/// `KEY=VALUE` options into a map; a key given twice is an error.
pub fn parse_options(what: &str, items: &[String]) -> CliResult<BTreeMap<String, String>> {
    let mut m = BTreeMap::new();
    for s in items {
        let (k, v) = parse_kv(what, s)?;
        if m.insert(k.clone(), v).is_some() {
            return Err(CliError::Usage(format!("{what} {k:?} is given twice")));
        }
    }
    Ok(m)
}

impl NodeArgs {
    /// The backend, `None` for automatic selection.
    pub fn backend(&self) -> CliResult<Option<Backend>> {
        match set(&self.backend).map(|s| s.trim()) {
            None | Some("auto") => Ok(None),
            Some(b) => Ok(Some(b.parse()?)),
        }
    }

    /// The state directory.
    pub fn state_dir(&self) -> PathBuf {
        set(&self.state_dir)
            .cloned()
            .unwrap_or_else(|| PathBuf::from("/var/lib/rbd-volumes"))
    }

    /// The mapper settings.
    pub fn mapper(&self) -> MapperConfig {
        let mut m = MapperConfig::default();
        if let Some(d) = set(&self.run_dir) {
            m.run_dir = d.clone();
        }
        m.umap_bin = set(&self.umap_bin).cloned();
        if let Some(b) = set(&self.nbd_bin) {
            m.rbd_nbd_bin = b.clone();
        }
        m
    }

    /// The node-wide volume defaults: `RBD_DEFAULT_<KEY>` from the environment, then
    /// `--default KEY=VALUE`, validated as the plugin validates them.
    pub fn volume_defaults(&self) -> CliResult<VolumeDefaults> {
        let mut opts = BTreeMap::new();
        for (k, v) in std::env::vars_os() {
            let (Some(k), Some(v)) = (k.to_str(), v.to_str()) else {
                continue;
            };
            let Some(key) = k.strip_prefix("RBD_DEFAULT_") else {
                continue;
            };
            if v.trim().is_empty() {
                continue;
            }
            if key.is_empty() || !key.bytes().all(|b| b.is_ascii_uppercase() || b == b'_') {
                return Err(CliError::Usage(format!(
                    "invalid environment variable {k}: expected RBD_DEFAULT_<KEY> with KEY in \
                     upper case, e.g. RBD_DEFAULT_SIZE"
                )));
            }
            opts.insert(key.to_ascii_lowercase().replace('_', "-"), v.to_owned());
        }
        opts.extend(parse_options("--default", &self.defaults)?);
        Ok(VolumeDefaults::default().with_options(&opts)?)
    }

    /// Reads the state file without creating anything; `None` when there is none (no
    /// volume was ever attached on this node with these settings).
    pub fn attached_volumes(&self) -> CliResult<BTreeMap<String, VolumeState>> {
        let dir = self.state_dir();
        if !dir.join("state.json").exists() {
            return Ok(BTreeMap::new());
        }
        let store = StateStore::new(&dir)?;
        let _l = store.lock()?;
        Ok(store.load()?.volumes)
    }
}

/// The ceph.conf path a mapper process or the driver gets: `-c`/`$CEPH_CONF`, else
/// `/etc/ceph/ceph.conf`; made absolute (mapper processes may run elsewhere).
pub fn ceph_auth(cli: &Cli) -> CephAuth {
    let conf = cli
        .conf
        .clone()
        .filter(|c| !c.as_os_str().is_empty())
        .unwrap_or_else(|| PathBuf::from("/etc/ceph/ceph.conf"));
    CephAuth {
        conf: absolute(&conf),
        id: cli.id.clone(),
        keyring: cli
            .keyring
            .as_deref()
            .filter(|k| !k.as_os_str().is_empty())
            .map(absolute),
    }
}

fn absolute(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
}

/// The driver configuration for this node.
pub fn driver_config(cli: &Cli, node: &NodeArgs) -> CliResult<DriverConfig> {
    let mut cfg = DriverConfig::new(ceph_auth(cli));
    if let Some(id) = set(&node.node_id) {
        cfg.node_id = id.clone();
    }
    cfg.state_dir = node.state_dir();
    if let Some(d) = set(&node.mount_root) {
        cfg.mount_root = d.clone();
    }
    cfg.mapper = node.mapper();
    cfg.backend = node.backend()?;
    cfg.defaults = node.volume_defaults()?;
    cfg.timeouts = rbd_core::Timeouts::uniform(Duration::from_secs(cli.timeout.max(1)));
    Ok(cfg)
}

/// Opens the driver for this node (connects, recovers interrupted local operations; what
/// recovery did is printed on stderr).
pub fn driver(cli: &Cli, node: &NodeArgs) -> CliResult<rbd_driver::volume::Driver> {
    let d = rbd_driver::volume::Driver::new(driver_config(cli, node)?)?;
    if let Some(r) = d.last_recovery() {
        for a in &r.actions {
            eprintln!("rbdctl: recovered volume {}: {}", a.volume, a.action);
        }
        for e in &r.errors {
            eprintln!("rbdctl: recovery could not finish: {e}");
        }
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_parse_and_refuse_duplicates() {
        let m = parse_options("-o", &["size=2".into(), "mount-options=a,b=c".into()]).unwrap();
        assert_eq!(m["size"], "2");
        assert_eq!(m["mount-options"], "a,b=c");
        let e = parse_options("-o", &["size=1".into(), "size=2".into()]).unwrap_err();
        assert!(e.to_string().contains("twice"), "{e}");
        let e = parse_options("-o", &["size".into()]).unwrap_err();
        assert!(e.to_string().contains("\"size\""), "{e}");
        assert!(parse_options("-o", &["=x".into()]).is_err());
    }

    #[test]
    fn defaults_are_the_drivers() {
        let want = DriverConfig::new(CephAuth {
            conf: "/etc/ceph/ceph.conf".into(),
            id: "admin".into(),
            keyring: None,
        });
        let n = NodeArgs::default();
        assert_eq!(n.state_dir(), want.state_dir);
        assert_eq!(n.mapper(), want.mapper);
        assert_eq!(n.backend().unwrap(), want.backend);
        let d = VolumeDefaults::default()
            .with_options(&parse_options("--default", &[]).unwrap())
            .unwrap();
        assert_eq!(d, want.defaults);
    }

    #[test]
    fn empty_values_are_unset() {
        let n = NodeArgs {
            state_dir: Some(PathBuf::new()),
            backend: Some(String::new()),
            run_dir: Some(PathBuf::from("/tmp/x")),
            ..NodeArgs::default()
        };
        assert_eq!(n.state_dir(), PathBuf::from("/var/lib/rbd-volumes"));
        assert_eq!(n.backend().unwrap(), None);
        assert_eq!(n.mapper().run_dir, PathBuf::from("/tmp/x"));
        let n = NodeArgs {
            backend: Some("userspace".into()),
            ..NodeArgs::default()
        };
        assert_eq!(n.backend().unwrap(), Some(Backend::Userspace));
        let n = NodeArgs {
            backend: Some("floppy".into()),
            ..NodeArgs::default()
        };
        assert!(n.backend().unwrap_err().to_string().contains("floppy"));
    }
}
