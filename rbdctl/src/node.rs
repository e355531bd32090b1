//! Node settings for the volume and device commands: where this host keeps its volume
//! state, mounts and mapper records, which mapper backend it uses, and its node-wide
//! volume defaults. Each has a flag and the environment variable the Docker plugin
//! reads, with the plugin's defaults, so `rbdctl` and the plugin on one host share the
//! same state (the state file and the per-volume locks are `flock`ed). The plugin's
//! config file (`/etc/rbd-volumes/plugin.toml`, or `$RBD_PLUGIN_CONFIG`) is read too, for
//! the same keys, below the environment and the flags, as the plugin layers them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use rbd_driver::mapper::{Backend, CephAuth, MapperConfig};
use rbd_driver::node_config::{self, Scalar};
use rbd_driver::volume::{DriverConfig, StateStore, VolumeDefaults, VolumeState};
use serde::Deserialize;

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
  --plugin-config FILE  RBD_PLUGIN_CONFIG  /etc/rbd-volumes/plugin.toml if it exists
                 the Docker plugin's config file: its node-id, state-dir, mount-root,
                 run-dir, backend, umap-bin, rbd-nbd-bin and [defaults] apply below the
                 variables and flags above (its [ceph] section does not: use -c, --id,
                 --keyring).
Empty variables count as unset.";

/// The plugin's default config file.
pub const DEFAULT_PLUGIN_CONFIG: &str = node_config::DEFAULT_CONFIG_FILE;

/// The keys of the Docker plugin's config file that are node settings (the plugin's own
/// keys, such as `socket`, `log`, `[ceph]` and `[timeouts]`, are ignored here).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct PluginFile {
    node_id: Option<String>,
    state_dir: Option<PathBuf>,
    mount_root: Option<PathBuf>,
    run_dir: Option<PathBuf>,
    umap_bin: Option<PathBuf>,
    rbd_nbd_bin: Option<PathBuf>,
    backend: Option<String>,
    defaults: Option<BTreeMap<String, Scalar>>,
}

// `[defaults]` values take the forms the plugin takes (`node_config::Scalar`): `size = 10`
// and `size = "10G"` both work.

/// Where this node keeps its state, and how it maps images. (The volume commands also
/// read `RBD_REGISTRY_NAMESPACE`: the cluster registry's RADOS namespace, default
/// `rbd_volumes`, which must match the node daemon's `--registry-namespace`.)
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
    /// The Docker plugin's config file (default /etc/rbd-volumes/plugin.toml, if it exists).
    #[arg(long, global = true, env = "RBD_PLUGIN_CONFIG", value_name = "FILE")]
    pub plugin_config: Option<PathBuf>,
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
    /// The plugin's config file, if one is named or the default one exists.
    fn file(&self) -> CliResult<PluginFile> {
        let (path, explicit) = match set(&self.plugin_config) {
            Some(p) => (p.clone(), true),
            None => (PathBuf::from(DEFAULT_PLUGIN_CONFIG), false),
        };
        let text = match node_config::read_file(&path, explicit) {
            Ok(Some(t)) => t,
            Ok(None) => return Ok(PluginFile::default()),
            Err(e) => {
                return Err(CliError::io(
                    format!("reading the plugin config file {}", path.display()),
                    e,
                ));
            }
        };
        node_config::parse_file(&path, &text).map_err(|e| {
            CliError::Usage(format!(
                "invalid plugin config file {}: {e}",
                path.display()
            ))
        })
    }

    /// Everything resolved: flags and environment, then the plugin's config file, then
    /// the defaults.
    pub fn settings(&self) -> CliResult<NodeSettings> {
        let file = self.file()?;
        let pick = |flag: &Option<PathBuf>, from_file: Option<PathBuf>| {
            set(flag)
                .cloned()
                .or(from_file.filter(|p| !p.as_os_str().is_empty()))
        };
        let mut mapper = MapperConfig::default();
        if let Some(d) = pick(&self.run_dir, file.run_dir) {
            mapper.run_dir = d;
        }
        mapper.umap_bin = pick(&self.umap_bin, file.umap_bin);
        if let Some(b) = pick(&self.nbd_bin, file.rbd_nbd_bin) {
            mapper.rbd_nbd_bin = b;
        }
        let backend = match set(&self.backend)
            .cloned()
            .or(file.backend)
            .as_deref()
            .map(str::trim)
        {
            None | Some("auto") | Some("") => None,
            Some(b) => Some(b.parse()?),
        };
        let mut opts: BTreeMap<String, String> = file
            .defaults
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.into_string()))
            .collect();
        let env = std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)));
        opts.extend(node_config::env_defaults(env).map_err(|(k, _)| {
            CliError::Usage(format!(
                "invalid environment variable {k}: {}",
                node_config::DEFAULT_VAR_EXPECTED
            ))
        })?);
        opts.extend(parse_options("--default", &self.defaults)?);
        Ok(NodeSettings {
            node_id: set(&self.node_id)
                .cloned()
                .or(file.node_id.filter(|n| !n.is_empty())),
            state_dir: pick(&self.state_dir, file.state_dir)
                .unwrap_or_else(|| PathBuf::from("/var/lib/rbd-volumes")),
            mount_root: pick(&self.mount_root, file.mount_root),
            mapper,
            backend,
            defaults: VolumeDefaults::default().with_options(&opts)?,
        })
    }
}

/// Resolved node settings ([`NodeArgs::settings`]).
#[derive(Debug, Clone)]
pub struct NodeSettings {
    /// Node id, when set (else the driver's default, the host name).
    pub node_id: Option<String>,
    /// State directory.
    pub state_dir: PathBuf,
    /// Mount root, when set (else the driver's default).
    pub mount_root: Option<PathBuf>,
    /// Mapper settings.
    pub mapper: MapperConfig,
    /// Backend (`None`: automatic).
    pub backend: Option<Backend>,
    /// Node-wide volume defaults.
    pub defaults: VolumeDefaults,
}

impl NodeSettings {
    /// Reads the state file without creating anything; `None` when there is none (no
    /// volume was ever attached on this node with these settings).
    pub fn attached_volumes(&self) -> CliResult<BTreeMap<String, VolumeState>> {
        let dir = &self.state_dir;
        if !dir.join("state.json").exists() {
            return Ok(BTreeMap::new());
        }
        let store = StateStore::new(dir)?;
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
    let n = node.settings()?;
    let mut cfg = DriverConfig::new(ceph_auth(cli));
    if let Some(id) = n.node_id {
        cfg.node_id = id;
    }
    cfg.state_dir = n.state_dir;
    if let Some(d) = n.mount_root {
        cfg.mount_root = d;
    }
    cfg.mapper = n.mapper;
    cfg.backend = n.backend;
    cfg.defaults = n.defaults;
    cfg.timeouts = rbd_core::Timeouts::uniform(Duration::from_secs(cli.timeout.max(1)));
    // The registry's RADOS namespace, as `rbdctl daemon --registry-namespace` sets it for
    // the daemon (volume commands must use the same one as the node's daemon).
    if let Some(ns) = std::env::var("RBD_REGISTRY_NAMESPACE")
        .ok()
        .filter(|s| !s.trim().is_empty())
    {
        cfg.cluster.namespace = ns;
    }
    Ok(cfg)
}

/// Opens the driver for this node (connects, recovers interrupted local operations; what
/// recovery did is printed on stderr).
///
/// The driver refuses a mount root that belongs to another state dir (e.g. the Docker
/// plugin's, when these settings differ from its), naming both: its recovery would take
/// those mounts for orphans and tear them down (see `rbd_driver::volume::OWNER_FILE`).
pub fn driver(cli: &Cli, node: &NodeArgs) -> CliResult<rbd_driver::volume::Driver> {
    open_driver(driver_config(cli, node)?)
}

/// [`driver`] with a configuration already made (and adjusted) from [`driver_config`].
pub fn open_driver(cfg: DriverConfig) -> CliResult<rbd_driver::volume::Driver> {
    let d = rbd_driver::volume::Driver::new(cfg)?;
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

    /// Resolves `args` with a plugin config file holding `text` (so the host's own file,
    /// if any, plays no part); the file is removed afterwards.
    fn with_file(name: &str, text: &str, args: NodeArgs) -> CliResult<NodeSettings> {
        let p =
            std::env::temp_dir().join(format!("rbdctl-node-test-{}-{name}", std::process::id()));
        std::fs::write(&p, text).unwrap();
        let r = NodeArgs {
            plugin_config: Some(p.clone()),
            ..args
        }
        .settings();
        std::fs::remove_file(&p).unwrap();
        r
    }

    #[test]
    fn defaults_are_the_drivers() {
        let want = DriverConfig::new(CephAuth {
            conf: "/etc/ceph/ceph.conf".into(),
            id: "admin".into(),
            keyring: None,
        });
        let n = with_file("empty.toml", "", NodeArgs::default()).unwrap();
        assert_eq!(n.state_dir, want.state_dir);
        assert_eq!(n.mount_root, None);
        assert_eq!(n.node_id, None);
        assert_eq!(n.mapper, want.mapper);
        assert_eq!(n.backend, want.backend);
        assert_eq!(n.defaults, want.defaults);
    }

    #[test]
    fn the_plugin_file_applies_below_flags() {
        let text = r#"
socket = "/run/docker/plugins/rbd.sock"
node-id = "node-a"
state-dir = "/srv/rbd/state"
run-dir = "/srv/rbd/run"
backend = "userspace"
log = "debug"

[ceph]
conf = "/etc/ceph/other.conf"

[defaults]
pool = "docker"
size = 10
mount-options = "noatime"

[timeouts]
read = 8
"#;
        let n = with_file("plugin.toml", text, NodeArgs::default()).unwrap();
        assert_eq!(n.node_id.as_deref(), Some("node-a"));
        assert_eq!(n.state_dir, PathBuf::from("/srv/rbd/state"));
        assert_eq!(n.mapper.run_dir, PathBuf::from("/srv/rbd/run"));
        assert_eq!(n.backend, Some(Backend::Userspace));
        assert_eq!(n.defaults.pool, "docker");
        assert_eq!(n.defaults.size, 10 << 30);
        assert_eq!(n.defaults.mount_options, vec!["noatime".to_string()]);
        // Flags (and the environment, which clap folds into them) win.
        let n = with_file(
            "plugin2.toml",
            text,
            NodeArgs {
                state_dir: Some("/tmp/mine".into()),
                backend: Some("auto".into()),
                defaults: vec!["pool=rbd".into()],
                ..NodeArgs::default()
            },
        )
        .unwrap();
        assert_eq!(n.state_dir, PathBuf::from("/tmp/mine"));
        assert_eq!(n.backend, None);
        assert_eq!(n.defaults.pool, "rbd");
        assert_eq!(n.defaults.size, 10 << 30);
        // A bad file is an error naming it; a named file that is missing too.
        let e = with_file("bad.toml", "state-dir = [", NodeArgs::default()).unwrap_err();
        assert!(e.to_string().contains("bad.toml"), "{e}");
        let e = with_file("bad2.toml", "[defaults]\ncolour = 1", NodeArgs::default()).unwrap_err();
        assert!(e.to_string().contains("colour"), "{e}");
        let e = NodeArgs {
            plugin_config: Some("/nonexistent/rbdctl/plugin.toml".into()),
            ..NodeArgs::default()
        }
        .settings()
        .unwrap_err();
        assert!(e.to_string().contains("/nonexistent/rbdctl"), "{e}");
    }

    #[test]
    fn empty_values_are_unset() {
        let n = with_file(
            "e1.toml",
            "",
            NodeArgs {
                state_dir: Some(PathBuf::new()),
                backend: Some(String::new()),
                run_dir: Some(PathBuf::from("/tmp/x")),
                ..NodeArgs::default()
            },
        )
        .unwrap();
        assert_eq!(n.state_dir, PathBuf::from("/var/lib/rbd-volumes"));
        assert_eq!(n.backend, None);
        assert_eq!(n.mapper.run_dir, PathBuf::from("/tmp/x"));
        let n = with_file(
            "e2.toml",
            "",
            NodeArgs {
                backend: Some("userspace".into()),
                ..NodeArgs::default()
            },
        );
        assert_eq!(n.unwrap().backend, Some(Backend::Userspace));
        let n = with_file(
            "e3.toml",
            "",
            NodeArgs {
                backend: Some("floppy".into()),
                ..NodeArgs::default()
            },
        );
        assert!(n.unwrap_err().to_string().contains("floppy"));
    }
}
