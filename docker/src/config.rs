//! The plugin's configuration: built-in defaults, then a config file (TOML, or JSON when
//! the name ends in `.json`), then environment variables, then command-line flags. A later
//! layer overrides an earlier one; empty environment values count as unset (a managed
//! plugin's `config.json` declares every variable, most of them empty).
//!
//! ```toml
//! # /etc/rbd-volumes/plugin.toml
//! socket = "/run/docker/plugins/rbd.sock"
//! node-id = "node-a"                    # default: the host name
//! state-dir = "/var/lib/rbd-volumes"
//! mount-root = "/var/lib/rbd-volumes/mounts"
//! run-dir = "/run/rbd-volumes"
//! backend = "auto"                      # auto | krbd | nbd | userspace
//! log = "info"                          # a tracing filter
//! reconcile-interval = 30               # seconds between the node daemon's reconciles
//! serve-pools = ["rbd", "fast"]         # more pools to answer control requests in
//!
//! [ceph]
//! conf = "/etc/ceph/ceph.conf"
//! id = "admin"
//! keyring = "/etc/ceph/ceph.client.admin.keyring"
//!
//! [defaults]                            # node-wide defaults: the `-o` keys
//! pool = "rbd"
//! size = "10G"
//! fstype = "ext4"
//! mount-options = "noatime"
//!
//! [timeouts]                            # seconds
//! read = 8                              # List, Get, Path
//! write = 90                            # Create, Remove, Mount, Unmount
//! ceph-mon-op = 10
//! ceph-osd-op = 30
//! ceph-connect = 10
//! shutdown-grace = 10
//! ```
//!
//! Environment variables (see [`ENV_VARS`]): `RBD_PLUGIN_CONFIG`, `RBD_PLUGIN_SOCKET`,
//! `CEPH_CONF`, `CEPH_ID`, `CEPH_KEYRING`, `RBD_NODE_ID`, `RBD_STATE_DIR`,
//! `RBD_MOUNT_ROOT`, `RBD_RUN_DIR`, `RBD_BACKEND`, `RBD_UMAP_BIN`, `RBD_NBD_BIN`,
//! `RBD_LOG`, `RBD_TIMEOUT_READ`, `RBD_TIMEOUT_WRITE`, `RBD_RECONCILE_INTERVAL`,
//! `RBD_SERVE_POOLS` (comma-separated), `RBD_WORKER_IDLE`, and `RBD_DEFAULT_<KEY>` for any
//! `[defaults]` key (`RBD_DEFAULT_SIZE=10G`, `RBD_DEFAULT_MOUNT_OPTIONS=noatime`: upper
//! case, `-` written `_`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rbd_driver::mapper::Backend;
use rbd_driver::node_config::{self, Scalar};
use serde::Deserialize;

use crate::error::{PluginError, Result};
use crate::service::Deadlines;

/// Where the plugin serves by default: Docker finds legacy plugins here by name (`rbd`).
pub const DEFAULT_SOCKET: &str = "/run/docker/plugins/rbd.sock";
/// The config file read when none is named (a missing default file is not an error).
pub const DEFAULT_CONFIG: &str = node_config::DEFAULT_CONFIG_FILE;
/// dockerd's timeout for Path, Get, List and Capabilities; past it, dockerd retries.
pub const DOCKERD_SHORT_TIMEOUT: Duration = Duration::from_secs(60);
/// dockerd's timeout for Create, Remove, Mount and Unmount; past it, dockerd retries.
pub const DOCKERD_LONG_TIMEOUT: Duration = Duration::from_secs(120);

/// The environment variables the plugin reads, with what they set.
pub const ENV_VARS: &[(&str, &str)] = &[
    ("RBD_PLUGIN_CONFIG", "config file path"),
    ("RBD_PLUGIN_SOCKET", "socket path"),
    ("CEPH_CONF", "ceph.conf path"),
    ("CEPH_ID", "Ceph client id (admin for client.admin)"),
    ("CEPH_KEYRING", "keyring path"),
    ("RBD_NODE_ID", "this node's id in the cluster registry"),
    ("RBD_STATE_DIR", "state directory"),
    ("RBD_MOUNT_ROOT", "where volumes are mounted"),
    ("RBD_RUN_DIR", "runtime directory of the mappers"),
    ("RBD_BACKEND", "auto | krbd | nbd | userspace"),
    ("RBD_UMAP_BIN", "the rbd-umap binary"),
    ("RBD_NBD_BIN", "the rbd-nbd binary"),
    (
        "RBD_LOG",
        "log filter, e.g. info or docker_volume_rbd=debug",
    ),
    ("RBD_TIMEOUT_READ", "seconds for List/Get/Path"),
    (
        "RBD_TIMEOUT_WRITE",
        "seconds for Create/Remove/Mount/Unmount",
    ),
    (
        "RBD_RECONCILE_INTERVAL",
        "seconds between the node daemon's reconciles (default 30)",
    ),
    (
        "RBD_SERVE_POOLS",
        "more pools to answer other nodes' control requests in (comma-separated)",
    ),
    (
        "RBD_WORKER_IDLE",
        "seconds the volume worker process stays after its last operation (default 20)",
    ),
    (
        "RBD_DEFAULT_<KEY>",
        "a node-wide volume default, e.g. RBD_DEFAULT_SIZE=10G",
    ),
];

/// The resolved configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct PluginConfig {
    /// The socket to serve on.
    pub socket: PathBuf,
    /// This node's id (default: the host name).
    pub node_id: String,
    /// State directory (refcounts, mount records).
    pub state_dir: PathBuf,
    /// Where volumes are mounted.
    pub mount_root: PathBuf,
    /// Runtime directory of the mappers.
    pub run_dir: PathBuf,
    /// The userspace mapper binary; `None`: next to this executable, then `$PATH`.
    pub umap_bin: Option<PathBuf>,
    /// The rbd-nbd binary; `None`: `rbd-nbd` from `$PATH`.
    pub rbd_nbd_bin: Option<PathBuf>,
    /// The mapper backend; `None` picks the first available (krbd, nbd, userspace).
    pub backend: Option<Backend>,
    /// ceph.conf.
    pub ceph_conf: PathBuf,
    /// Ceph client id.
    pub ceph_id: String,
    /// Keyring, when not the one named in ceph.conf.
    pub ceph_keyring: Option<PathBuf>,
    /// Node-wide volume defaults, as `-o` style keys (validated by the driver at start-up).
    pub defaults: BTreeMap<String, String>,
    /// Request deadlines.
    pub deadlines: Deadlines,
    /// Client-side Ceph timeouts.
    pub ceph_timeouts: rbd_core::Timeouts,
    /// How long a shutdown waits for requests in progress.
    pub shutdown_grace: Duration,
    /// How often the node daemon reconciles this node (also on start, and when a control
    /// watch comes back after a partition).
    pub reconcile_interval: Duration,
    /// Pools the node daemon answers control requests in besides the default pool, the
    /// pools of this node's attachments and those of the volume index.
    pub serve_pools: Vec<String>,
    /// How long the volume worker (the process that runs the operations needing librbd,
    /// see [`crate::worker`]) stays after its last operation before it exits.
    pub worker_idle: Duration,
    /// Log filter.
    pub log: String,
    /// The config file that was read, if any.
    pub config_file: Option<PathBuf>,
}

impl Default for PluginConfig {
    fn default() -> Self {
        Self {
            socket: PathBuf::from(DEFAULT_SOCKET),
            node_id: rbd_driver::volume::hostname(),
            state_dir: PathBuf::from("/var/lib/rbd-volumes"),
            mount_root: PathBuf::from("/var/lib/rbd-volumes/mounts"),
            run_dir: PathBuf::from("/run/rbd-volumes"),
            umap_bin: None,
            rbd_nbd_bin: None,
            backend: None,
            ceph_conf: PathBuf::from("/etc/ceph/ceph.conf"),
            ceph_id: "admin".to_string(),
            ceph_keyring: None,
            defaults: BTreeMap::new(),
            deadlines: Deadlines::default(),
            ceph_timeouts: rbd_core::Timeouts::default(),
            shutdown_grace: Duration::from_secs(10),
            reconcile_interval: Duration::from_secs(30),
            serve_pools: Vec::new(),
            worker_idle: Duration::from_secs(20),
            log: "info".to_string(),
            config_file: None,
        }
    }
}

/// Command-line overrides (the top layer).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overrides {
    /// `--config`.
    pub config: Option<PathBuf>,
    /// `--socket`.
    pub socket: Option<PathBuf>,
    /// `--log`.
    pub log: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct FileConfig {
    socket: Option<PathBuf>,
    node_id: Option<String>,
    state_dir: Option<PathBuf>,
    mount_root: Option<PathBuf>,
    run_dir: Option<PathBuf>,
    umap_bin: Option<PathBuf>,
    rbd_nbd_bin: Option<PathBuf>,
    backend: Option<String>,
    log: Option<String>,
    reconcile_interval: Option<f64>,
    serve_pools: Option<Vec<String>>,
    worker_idle: Option<f64>,
    ceph: Option<CephSection>,
    defaults: Option<BTreeMap<String, Scalar>>,
    timeouts: Option<TimeoutSection>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct CephSection {
    conf: Option<PathBuf>,
    id: Option<String>,
    keyring: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct TimeoutSection {
    read: Option<f64>,
    write: Option<f64>,
    ceph_mon_op: Option<f64>,
    ceph_osd_op: Option<f64>,
    ceph_connect: Option<f64>,
    shutdown_grace: Option<f64>,
}

impl PluginConfig {
    /// Loads the configuration from the process environment and `overrides`.
    pub fn load(overrides: &Overrides) -> Result<PluginConfig> {
        let env: BTreeMap<String, String> = std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .collect();
        Self::load_from(&env, overrides)
    }

    /// Loads the configuration from `env` (instead of the process environment) and
    /// `overrides`.
    pub fn load_from(env: &BTreeMap<String, String>, overrides: &Overrides) -> Result<Self> {
        let var = |k: &str| env.get(k).filter(|v| !v.trim().is_empty()).cloned();
        let mut cfg = PluginConfig::default();

        // The file: --config, then RBD_PLUGIN_CONFIG, then the default path if it exists.
        let (path, explicit) = match (&overrides.config, var(node_config::CONFIG_FILE_VAR)) {
            (Some(p), _) => (p.clone(), true),
            (None, Some(p)) => (PathBuf::from(p), true),
            (None, None) => (PathBuf::from(DEFAULT_CONFIG), false),
        };
        match node_config::read_file(&path, explicit) {
            Ok(Some(text)) => {
                let fc =
                    node_config::parse_file::<FileConfig>(&path, &text).map_err(|message| {
                        PluginError::ConfigParse {
                            path: path.clone(),
                            message,
                        }
                    })?;
                cfg.apply_file(&path, fc)?;
                cfg.config_file = Some(path);
            }
            Ok(None) => {}
            Err(source) => return Err(PluginError::ConfigRead { path, source }),
        }

        // The environment.
        const ENV: &str = "environment";
        let path_var = |k: &str| var(k).map(PathBuf::from);
        if let Some(v) = path_var("RBD_PLUGIN_SOCKET") {
            cfg.socket = v;
        }
        if let Some(v) = path_var("CEPH_CONF") {
            cfg.ceph_conf = v;
        }
        if let Some(v) = var("CEPH_ID") {
            cfg.ceph_id = v;
        }
        if let Some(v) = path_var("CEPH_KEYRING") {
            cfg.ceph_keyring = Some(v);
        }
        if let Some(v) = var("RBD_NODE_ID") {
            cfg.node_id = v;
        }
        if let Some(v) = path_var("RBD_STATE_DIR") {
            cfg.state_dir = v;
        }
        if let Some(v) = path_var("RBD_MOUNT_ROOT") {
            cfg.mount_root = v;
        }
        if let Some(v) = path_var("RBD_RUN_DIR") {
            cfg.run_dir = v;
        }
        if let Some(v) = path_var("RBD_UMAP_BIN") {
            cfg.umap_bin = Some(v);
        }
        if let Some(v) = path_var("RBD_NBD_BIN") {
            cfg.rbd_nbd_bin = Some(v);
        }
        if let Some(v) = var("RBD_BACKEND") {
            cfg.backend = parse_backend("RBD_BACKEND", &v, ENV)?;
        }
        if let Some(v) = var("RBD_LOG") {
            cfg.log = v;
        }
        if let Some(v) = var("RBD_TIMEOUT_READ") {
            cfg.deadlines.read = parse_secs("RBD_TIMEOUT_READ", &v, ENV)?;
        }
        if let Some(v) = var("RBD_TIMEOUT_WRITE") {
            cfg.deadlines.write = parse_secs("RBD_TIMEOUT_WRITE", &v, ENV)?;
        }
        if let Some(v) = var("RBD_RECONCILE_INTERVAL") {
            cfg.reconcile_interval = parse_secs("RBD_RECONCILE_INTERVAL", &v, ENV)?;
        }
        if let Some(v) = var("RBD_WORKER_IDLE") {
            cfg.worker_idle = parse_secs("RBD_WORKER_IDLE", &v, ENV)?;
        }
        if let Some(v) = var("RBD_SERVE_POOLS") {
            cfg.serve_pools = v
                .split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(String::from)
                .collect();
        }
        let defaults = node_config::env_defaults(env)
            .map_err(|(k, v)| PluginError::value(k, v, ENV, node_config::DEFAULT_VAR_EXPECTED))?;
        cfg.defaults.extend(defaults);

        // The command line.
        if let Some(s) = &overrides.socket {
            cfg.socket = s.clone();
        }
        if let Some(l) = &overrides.log {
            cfg.log = l.clone();
        }
        cfg.validate()?;
        Ok(cfg)
    }

    fn apply_file(&mut self, path: &Path, fc: FileConfig) -> Result<()> {
        let origin = path.display().to_string();
        if let Some(v) = fc.socket {
            self.socket = v;
        }
        if let Some(v) = fc.node_id {
            self.node_id = v;
        }
        if let Some(v) = fc.state_dir {
            self.state_dir = v;
        }
        if let Some(v) = fc.mount_root {
            self.mount_root = v;
        }
        if let Some(v) = fc.run_dir {
            self.run_dir = v;
        }
        if let Some(v) = fc.umap_bin {
            self.umap_bin = Some(v);
        }
        if let Some(v) = fc.rbd_nbd_bin {
            self.rbd_nbd_bin = Some(v);
        }
        if let Some(v) = fc.backend {
            self.backend = parse_backend("backend", &v, &origin)?;
        }
        if let Some(v) = fc.log {
            self.log = v;
        }
        if let Some(s) = fc.reconcile_interval {
            self.reconcile_interval =
                to_duration("reconcile-interval", &s.to_string(), s, &origin)?;
        }
        if let Some(v) = fc.serve_pools {
            self.serve_pools = v;
        }
        if let Some(s) = fc.worker_idle {
            self.worker_idle = to_duration("worker-idle", &s.to_string(), s, &origin)?;
        }
        if let Some(c) = fc.ceph {
            if let Some(v) = c.conf {
                self.ceph_conf = v;
            }
            if let Some(v) = c.id {
                self.ceph_id = v;
            }
            if let Some(v) = c.keyring {
                self.ceph_keyring = Some(v);
            }
        }
        if let Some(d) = fc.defaults {
            for (k, v) in d {
                self.defaults.insert(k, v.into_string());
            }
        }
        if let Some(t) = fc.timeouts {
            let secs = |key: &str, v: Option<f64>| -> Result<Option<Duration>> {
                v.map(|s| to_duration(&format!("timeouts.{key}"), &s.to_string(), s, &origin))
                    .transpose()
            };
            if let Some(d) = secs("read", t.read)? {
                self.deadlines.read = d;
            }
            if let Some(d) = secs("write", t.write)? {
                self.deadlines.write = d;
            }
            if let Some(d) = secs("ceph-mon-op", t.ceph_mon_op)? {
                self.ceph_timeouts.mon_op = d;
            }
            if let Some(d) = secs("ceph-osd-op", t.ceph_osd_op)? {
                self.ceph_timeouts.osd_op = d;
            }
            if let Some(d) = secs("ceph-connect", t.ceph_connect)? {
                self.ceph_timeouts.mount = d;
            }
            if let Some(d) = secs("shutdown-grace", t.shutdown_grace)? {
                self.shutdown_grace = d;
            }
        }
        Ok(())
    }

    /// Checks the values that do not need the driver (the driver checks `defaults`).
    pub fn validate(&self) -> Result<()> {
        let origin = "configuration";
        if self.deadlines.read >= DOCKERD_SHORT_TIMEOUT {
            return Err(PluginError::value(
                "timeouts.read",
                format!("{}", self.deadlines.read.as_secs_f64()),
                origin,
                "must be below dockerd's 60 s timeout for List/Get/Path (dockerd retries after it)",
            ));
        }
        if self.deadlines.write >= DOCKERD_LONG_TIMEOUT {
            return Err(PluginError::value(
                "timeouts.write",
                format!("{}", self.deadlines.write.as_secs_f64()),
                origin,
                "must be below dockerd's 120 s timeout for Create/Remove/Mount/Unmount \
                 (dockerd retries after it)",
            ));
        }
        for (key, p) in [
            ("socket", &self.socket),
            ("state-dir", &self.state_dir),
            ("mount-root", &self.mount_root),
            ("run-dir", &self.run_dir),
        ] {
            if !p.is_absolute() {
                return Err(PluginError::value(
                    key,
                    p.display().to_string(),
                    origin,
                    "must be an absolute path",
                ));
            }
        }
        if self.socket.as_os_str().len() >= 108 {
            return Err(PluginError::value(
                "socket",
                self.socket.display().to_string(),
                origin,
                "too long for a unix socket path (at most 107 bytes)",
            ));
        }
        if self.node_id.is_empty()
            || !self
                .node_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        {
            return Err(PluginError::value(
                "node-id",
                &self.node_id,
                origin,
                "use letters, digits, '-', '_' and '.' only",
            ));
        }
        if self.reconcile_interval < Duration::from_secs(1) {
            return Err(PluginError::value(
                "reconcile-interval",
                format!("{}", self.reconcile_interval.as_secs_f64()),
                origin,
                "must be at least 1 second",
            ));
        }
        for p in &self.serve_pools {
            if p.is_empty()
                || p.len() > 255
                || p.contains(|c: char| c == ',' || c == '/' || c.is_whitespace() || c.is_control())
            {
                return Err(PluginError::value(
                    "serve-pools",
                    p,
                    origin,
                    "a pool name (no '/', ',', spaces or control characters)",
                ));
            }
        }
        if self.ceph_id.is_empty() || self.ceph_id.contains(char::is_whitespace) {
            return Err(PluginError::value(
                "ceph.id",
                &self.ceph_id,
                origin,
                "a client id such as admin or docker (without the client. prefix)",
            ));
        }
        Ok(())
    }
}

fn parse_backend(key: &str, v: &str, origin: &str) -> Result<Option<Backend>> {
    if v.trim() == "auto" {
        return Ok(None);
    }
    v.trim()
        .parse::<Backend>()
        .map(Some)
        .map_err(|_| PluginError::value(key, v, origin, "expected auto, krbd, nbd or userspace"))
}

fn parse_secs(key: &str, v: &str, origin: &str) -> Result<Duration> {
    let s: f64 = v
        .trim()
        .parse()
        .map_err(|_| PluginError::value(key, v, origin, "expected a number of seconds"))?;
    to_duration(key, v, s, origin)
}

fn to_duration(key: &str, raw: &str, s: f64, origin: &str) -> Result<Duration> {
    if !s.is_finite() || s <= 0.0 || s > 3600.0 {
        return Err(PluginError::value(
            key,
            raw,
            origin,
            "expected a number of seconds above 0 and at most 3600",
        ));
    }
    Ok(Duration::from_secs_f64(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn temp_file(name: &str, text: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("rbd-plugin-config-{}-{}", std::process::id(), name));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    fn with_file(path: &Path) -> Overrides {
        Overrides {
            config: Some(path.to_path_buf()),
            ..Overrides::default()
        }
    }

    #[test]
    fn defaults_without_file_or_env() {
        // RBD_PLUGIN_CONFIG unset and the default file absent on the test machine is fine;
        // point at a missing default-like path explicitly through the environment instead
        // would be an error, see below.
        let cfg =
            PluginConfig::load_from(&env(&[("RBD_PLUGIN_CONFIG", "")]), &Overrides::default());
        // The default file may exist on a real host; when it does not, defaults apply.
        if !Path::new(DEFAULT_CONFIG).exists() {
            let cfg = cfg.unwrap();
            assert_eq!(cfg.socket, PathBuf::from(DEFAULT_SOCKET));
            assert_eq!(cfg.ceph_id, "admin");
            assert_eq!(cfg.deadlines, Deadlines::default());
            assert_eq!(cfg.config_file, None);
        }
    }

    #[test]
    fn toml_file_then_env_then_cli() {
        let p = temp_file(
            "plugin.toml",
            r#"
socket = "/run/file.sock"
node-id = "node-a"
backend = "userspace"
[ceph]
conf = "/etc/ceph/file.conf"
id = "docker"
[defaults]
size = 10
fstype = "xfs"
[timeouts]
read = 5
write = 60.5
ceph-mon-op = 3
"#,
        );
        let cfg = PluginConfig::load_from(
            &env(&[
                ("CEPH_ID", "fromenv"),
                ("RBD_DEFAULT_SIZE", "20G"),
                ("RBD_DEFAULT_MOUNT_OPTIONS", "noatime"),
                ("RBD_NODE_ID", ""), // empty = unset
            ]),
            &Overrides {
                socket: Some("/run/cli.sock".into()),
                ..with_file(&p)
            },
        )
        .unwrap();
        assert_eq!(cfg.socket, PathBuf::from("/run/cli.sock"));
        assert_eq!(cfg.node_id, "node-a");
        assert_eq!(cfg.backend, Some(Backend::Userspace));
        assert_eq!(cfg.ceph_conf, PathBuf::from("/etc/ceph/file.conf"));
        assert_eq!(cfg.ceph_id, "fromenv");
        assert_eq!(cfg.defaults["size"], "20G");
        assert_eq!(cfg.defaults["fstype"], "xfs");
        assert_eq!(cfg.defaults["mount-options"], "noatime");
        assert_eq!(cfg.deadlines.read, Duration::from_secs(5));
        assert_eq!(cfg.deadlines.write, Duration::from_secs_f64(60.5));
        assert_eq!(cfg.ceph_timeouts.mon_op, Duration::from_secs(3));
        assert_eq!(cfg.config_file.as_deref(), Some(p.as_path()));
    }

    #[test]
    fn node_daemon_settings_from_file_and_env() {
        let p = temp_file(
            "daemon.toml",
            "reconcile-interval = 5\nserve-pools = [\"fast\", \"slow\"]\n",
        );
        let cfg = PluginConfig::load_from(&env(&[]), &with_file(&p)).unwrap();
        assert_eq!(cfg.reconcile_interval, Duration::from_secs(5));
        assert_eq!(cfg.serve_pools, vec!["fast", "slow"]);
        // The environment overrides the file.
        let cfg = PluginConfig::load_from(
            &env(&[
                ("RBD_RECONCILE_INTERVAL", "2.5"),
                ("RBD_SERVE_POOLS", " a, b ,,c "),
            ]),
            &with_file(&p),
        )
        .unwrap();
        assert_eq!(cfg.reconcile_interval, Duration::from_secs_f64(2.5));
        assert_eq!(cfg.serve_pools, vec!["a", "b", "c"]);
        // Defaults.
        let p = temp_file("empty.toml", "");
        let cfg = PluginConfig::load_from(&env(&[]), &with_file(&p)).unwrap();
        assert_eq!(cfg.reconcile_interval, Duration::from_secs(30));
        assert!(cfg.serve_pools.is_empty());
        assert_eq!(cfg.worker_idle, Duration::from_secs(20));
        // The volume worker's idle time: file, then environment.
        let p = temp_file("worker.toml", "worker-idle = 5\n");
        let cfg = PluginConfig::load_from(&env(&[]), &with_file(&p)).unwrap();
        assert_eq!(cfg.worker_idle, Duration::from_secs(5));
        let cfg =
            PluginConfig::load_from(&env(&[("RBD_WORKER_IDLE", "0.5")]), &with_file(&p)).unwrap();
        assert_eq!(cfg.worker_idle, Duration::from_millis(500));
        for bad in ["0", "-1", "soon"] {
            let e = PluginConfig::load_from(&env(&[("RBD_WORKER_IDLE", bad)]), &with_file(&p))
                .unwrap_err();
            assert!(e.to_string().contains("RBD_WORKER_IDLE"), "{e}");
        }
        // Bad values name the setting.
        for (k, v, want) in [
            ("RBD_RECONCILE_INTERVAL", "0.5", "reconcile-interval"),
            ("RBD_RECONCILE_INTERVAL", "often", "RBD_RECONCILE_INTERVAL"),
            ("RBD_SERVE_POOLS", "a/b", "serve-pools"),
        ] {
            let e = PluginConfig::load_from(&env(&[(k, v)]), &with_file(&p)).unwrap_err();
            let msg = crate::error::chain(&e);
            assert!(msg.contains(want), "{k}={v}: {msg}");
        }
    }

    #[test]
    fn json_file_is_accepted() {
        let p = temp_file(
            "plugin.json",
            r#"{"socket": "/run/j.sock", "defaults": {"pool": "vols"}}"#,
        );
        let cfg = PluginConfig::load_from(&env(&[]), &with_file(&p)).unwrap();
        assert_eq!(cfg.socket, PathBuf::from("/run/j.sock"));
        assert_eq!(cfg.defaults["pool"], "vols");
    }

    #[test]
    fn bad_config_is_a_clear_error() {
        let cases: &[(&str, &str, &str)] = &[
            (
                "unknown.toml",
                "sockett = \"/x\"",
                "unknown field `sockett`",
            ),
            ("syntax.toml", "socket = ", "invalid"),
            ("backend.toml", "backend = \"floppy\"", "floppy"),
            ("relative.toml", "socket = \"rbd.sock\"", "absolute"),
            ("read.toml", "[timeouts]\nread = 61", "60 s"),
            ("write.toml", "[timeouts]\nwrite = 0", "above 0"),
            ("node.toml", "node-id = \"a b\"", "node-id"),
        ];
        for (name, text, want) in cases {
            let p = temp_file(name, text);
            let e = PluginConfig::load_from(&env(&[]), &with_file(&p)).unwrap_err();
            let msg = crate::error::chain(&e);
            assert!(msg.contains(want), "{name}: {msg}");
        }
    }

    #[test]
    fn bad_env_is_a_clear_error() {
        for (k, v, want) in [
            ("RBD_TIMEOUT_READ", "soon", "RBD_TIMEOUT_READ"),
            ("RBD_BACKEND", "tape", "tape"),
            ("RBD_DEFAULT_size", "1G", "upper case"),
        ] {
            let e = PluginConfig::load_from(
                &env(&[(k, v), ("RBD_PLUGIN_CONFIG", "")]),
                &Overrides::default(),
            );
            if Path::new(DEFAULT_CONFIG).exists() {
                continue;
            }
            let msg = crate::error::chain(&e.unwrap_err());
            assert!(msg.contains(want), "{k}: {msg}");
            assert!(msg.contains("environment"), "{k}: {msg}");
        }
    }

    #[test]
    fn a_named_missing_file_is_an_error() {
        let e = PluginConfig::load_from(
            &env(&[("RBD_PLUGIN_CONFIG", "/nonexistent/plugin.toml")]),
            &Overrides::default(),
        )
        .unwrap_err();
        assert!(
            crate::error::chain(&e).contains("/nonexistent/plugin.toml"),
            "{e}"
        );
    }
}
