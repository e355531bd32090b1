//! A per-test "node" for rbdctl's volume and device commands: its own state dir, mount
//! root and mapper run dir under a fresh temp dir, passed to rbdctl through the same
//! environment variables the Docker plugin reads. Dropping it unmounts, unmaps and
//! removes everything the test made, even when the test failed.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use serde_json::Value;

use super::{Env, Run, TIMEOUT};

/// The userspace mapper binary (`rbd-umap`) next to the rbdctl under test, built (or
/// brought up to date) once per test process: it belongs to rbd-driver, so
/// `cargo test -p rbdctl` alone does not build it.
pub fn umap_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let rbdctl = PathBuf::from(env!("CARGO_BIN_EXE_rbdctl"));
        let profile_dir = rbdctl.parent().expect("bin dir").to_path_buf();
        let target = profile_dir.parent().expect("target dir").to_path_buf();
        let bin = profile_dir.join("rbd-umap");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut c = Command::new("timeout");
        c.arg("1200")
            .arg(&cargo)
            .args(["build", "-p", "rbd-driver", "--bin", "rbd-umap"])
            .env("CARGO_TARGET_DIR", &target)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .stdin(Stdio::null());
        match profile_dir.file_name().and_then(|n| n.to_str()) {
            Some("debug") => {}
            Some("release") => {
                c.arg("--release");
            }
            Some(p) => {
                c.args(["--profile", p]);
            }
            None => {}
        }
        let out = c.output().expect("run cargo build for rbd-umap");
        assert!(
            out.status.success() && bin.is_file(),
            "building rbd-umap (needed by the userspace mapper) failed: {}; build it with \
             `cargo build -p rbd-driver --bin rbd-umap`",
            String::from_utf8_lossy(&out.stderr)
        );
        bin
    })
    .clone()
}

/// One test's node.
pub struct Node<'a> {
    /// The cluster.
    pub env: &'a Env,
    /// Everything of this node lives under here.
    pub root: PathBuf,
    volumes: RefCell<Vec<String>>,
    images: RefCell<Vec<String>>,
}

impl<'a> Node<'a> {
    /// A fresh node (root is required for FUSE, loop devices and mounts).
    pub fn new(env: &'a Env) -> Node<'a> {
        let root = std::env::temp_dir().join(testkit::unique("rbdctl-node"));
        std::fs::create_dir_all(&root).expect("node root");
        let n = Node {
            env,
            root,
            volumes: RefCell::new(Vec::new()),
            images: RefCell::new(Vec::new()),
        };
        let _ = umap_bin();
        n
    }

    /// State directory.
    pub fn state_dir(&self) -> PathBuf {
        self.root.join("state")
    }

    /// Mount root.
    pub fn mount_root(&self) -> PathBuf {
        self.root.join("mounts")
    }

    /// Mapper run dir.
    pub fn run_dir(&self) -> PathBuf {
        self.root.join("run")
    }

    /// A directory of this node (created), e.g. a mountpoint for `rbdctl mount`.
    pub fn dir(&self, name: &str) -> PathBuf {
        let p = self.root.join(name);
        std::fs::create_dir_all(&p).expect("create dir");
        p
    }

    /// A unique volume name, removed on drop.
    pub fn volume(&self, prefix: &str) -> String {
        let n = testkit::unique(&format!("rbdctl-{prefix}"));
        self.volumes.borrow_mut().push(n.clone());
        n
    }

    /// A unique image name, removed on drop (after everything is unmapped).
    pub fn image(&self, prefix: &str) -> String {
        let n = testkit::unique(&format!("rbdctl-{prefix}"));
        self.images.borrow_mut().push(n.clone());
        n
    }

    /// Registers another image name for removal on drop.
    pub fn track_image(&self, name: &str) {
        self.images.borrow_mut().push(name.to_owned());
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new("timeout");
        c.arg(TIMEOUT)
            .arg(env!("CARGO_BIN_EXE_rbdctl"))
            .arg("-c")
            .arg(&self.env.conf)
            .args(args)
            .env("RBD_STATE_DIR", self.state_dir())
            .env("RBD_MOUNT_ROOT", self.mount_root())
            .env("RBD_RUN_DIR", self.run_dir())
            .env("RBD_NODE_ID", "rbdctl-test-node")
            .env("RBD_BACKEND", "userspace")
            .env("RBD_UMAP_BIN", umap_bin())
            .env("RBD_PLUGIN_CONFIG", self.empty_plugin_config())
            .stdin(Stdio::null());
        c
    }

    /// An empty plugin config file, so the host's own (if any) plays no part.
    fn empty_plugin_config(&self) -> PathBuf {
        let p = self.root.join("empty-plugin.toml");
        if !p.exists() {
            std::fs::write(&p, "").expect("write empty plugin config");
        }
        p
    }

    /// The node's settings as a Docker plugin config file (`plugin.toml` in the node's
    /// root) with `extra` appended; returns its path.
    pub fn write_plugin_config(&self, extra: &str) -> PathBuf {
        let p = self.root.join("plugin.toml");
        let text = format!(
            "socket = \"/run/docker/plugins/rbd-test.sock\"\nnode-id = \"rbdctl-test-node\"\n\
             state-dir = {:?}\nmount-root = {:?}\nrun-dir = {:?}\nbackend = \"userspace\"\n\
             umap-bin = {:?}\nlog = \"info\"\n{extra}",
            self.state_dir(),
            self.mount_root(),
            self.run_dir(),
            umap_bin(),
        );
        std::fs::write(&p, text).expect("write plugin config");
        p
    }

    /// Runs rbdctl with only the plugin config file `config` for node settings (none of
    /// the `RBD_*` variables).
    pub fn rbdctl_with_config(&self, config: &Path, args: &[&str]) -> Run {
        let mut c = Command::new("timeout");
        c.arg(TIMEOUT)
            .arg(env!("CARGO_BIN_EXE_rbdctl"))
            .arg("-c")
            .arg(&self.env.conf)
            .args(args)
            .env("RBD_PLUGIN_CONFIG", config)
            .stdin(Stdio::null());
        for (k, _) in std::env::vars_os() {
            if k.to_str().is_some_and(|k| k.starts_with("RBD_")) && k != "RBD_PLUGIN_CONFIG" {
                c.env_remove(k);
            }
        }
        let o = c.output().expect("run rbdctl");
        Run {
            code: o.status.code().unwrap_or(-1),
            out: o.stdout,
            err: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }

    /// Runs rbdctl on this node.
    pub fn rbdctl(&self, args: &[&str]) -> Run {
        let o = self.command(args).output().expect("run rbdctl");
        Run {
            code: o.status.code().unwrap_or(-1),
            out: o.stdout,
            err: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }

    /// Runs rbdctl on this node in `dir` as its working directory.
    pub fn rbdctl_in(&self, dir: &Path, args: &[&str]) -> Run {
        let o = self
            .command(args)
            .current_dir(dir)
            .output()
            .expect("run rbdctl");
        Run {
            code: o.status.code().unwrap_or(-1),
            out: o.stdout,
            err: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }

    /// `device list --format json`.
    pub fn mappings(&self) -> Vec<Value> {
        self.rbdctl(&["device", "list", "--format", "json"])
            .ok()
            .json()
            .as_array()
            .expect("array")
            .clone()
    }

    /// The node's state file (empty object when there is none).
    pub fn state(&self) -> Value {
        match std::fs::read(self.state_dir().join("state.json")) {
            Ok(b) => serde_json::from_slice(&b).expect("state.json is JSON"),
            Err(_) => Value::Object(Default::default()),
        }
    }

    /// The mount IDs of volume `name` in the state file (empty when not attached).
    pub fn mount_ids(&self, name: &str) -> Vec<String> {
        self.state()["volumes"][name]["mount_ids"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|v| v.as_str().unwrap_or_default().to_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Mountpoints under this node's root, from `/proc/self/mountinfo`, innermost last.
    pub fn mounts(&self) -> Vec<PathBuf> {
        mountpoints_under(&self.root)
    }
}

/// Mountpoints at or under `root`, in mountinfo order.
pub fn mountpoints_under(root: &Path) -> Vec<PathBuf> {
    let root = std::fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf());
    let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    mi.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape(p)))
        .filter(|p| p.starts_with(&root))
        .collect()
}

fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && let Some(v) = std::str::from_utf8(&b[i + 1..i + 4])
                .ok()
                .and_then(|o| u8::from_str_radix(o, 8).ok())
        {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether `path` is a mountpoint right now.
pub fn is_mounted(path: &Path) -> bool {
    let p = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    mi.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|m| Path::new(&unescape(m)) == p)
}

impl Drop for Node<'_> {
    fn drop(&mut self) {
        // 1. Unmount everything under our root except the mappers' own FUSE mounts
        //    (innermost first); the unmaps below take those down.
        let run = std::fs::canonicalize(self.run_dir()).unwrap_or_else(|_| self.run_dir());
        for mp in self.mounts().into_iter().rev() {
            if mp.starts_with(&run) {
                continue;
            }
            let _ = Command::new("timeout")
                .args(["30", "umount", "-l"])
                .arg(&mp)
                .output();
        }
        // 2. Force-unmap every mapping this node's mapper made.
        let r = self.rbdctl(&["device", "list", "--format", "json"]);
        if let Ok(Value::Array(list)) = serde_json::from_slice::<Value>(&r.out) {
            for m in list {
                if let Some(dev) = m["device"].as_str() {
                    self.rbdctl(&["unmap", "--force", dev]);
                }
            }
        }
        // 2b. What the unmaps could not name: a dead mapper's FUSE mount whose loop device
        //     another process took (it is listed without a device), e.g. after a test
        //     failed midway.
        for mp in self.mounts().into_iter().rev() {
            if mp.starts_with(&run) {
                let _ = Command::new("timeout")
                    .args(["30", "umount", "-l"])
                    .arg(&mp)
                    .output();
            }
        }
        // 3. Remove volumes (index entry, image, snapshots), then plain images.
        for v in self.volumes.borrow().iter() {
            let r = self.rbdctl(&["volume", "rm", "--force", v]);
            if r.code != 0 {
                self.env.tool(
                    "rados",
                    &[
                        "-p",
                        "rbd",
                        "-N",
                        "rbd-volumes",
                        "rmomapkey",
                        "volume-index",
                        v,
                    ],
                );
            }
        }
        if !self.volumes.borrow().is_empty() || !self.images.borrow().is_empty() {
            let cleanup = super::Cleanup::new(self.env);
            for v in self.volumes.borrow().iter() {
                cleanup.spec(v);
            }
            for i in self.images.borrow().iter() {
                cleanup.spec(i);
            }
            drop(cleanup);
        }
        // 4. Whatever is left of the node's directories.
        if mountpoints_under(&self.root).is_empty() {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }
}
