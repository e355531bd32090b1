//! Shared by the volume tests: a per-test node (state dir, mount root, mapper run dir
//! under a temp dir), drivers on it, direct cluster access for assertions, and a guard
//! that removes everything the test made, even when it fails.

#![allow(dead_code)]

pub mod attach;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use rbd_core::rbd::{self, SnapNamespace};
use rbd_core::{ConnectOptions, Image, IoCtx, OpenOptions, Rados};
use rbd_driver::mapper::{self, CephAuth, MapperConfig};
use rbd_driver::volume::{
    CreateSpec, Driver, DriverConfig, IndexEntry, State, StateStore, VolumeIndex,
};
use serde_json::Value;

pub const POOL: &str = "rbd";

/// One test's world: the cluster and one or more "nodes" (driver configs with their own
/// state dir, mount root and run dir).
pub struct Env {
    pub conf: PathBuf,
    pub rados: Rados,
    pub root: PathBuf,
    /// Volume names to clean up.
    pub names: Mutex<Vec<String>>,
    /// Extra images (pool, ns, name) to clean up.
    pub images: Mutex<Vec<(String, String, String)>>,
    /// Nodes made, to unmount/unmap on drop.
    pub nodes: Mutex<Vec<DriverConfig>>,
    /// This test's cluster-layer namespace (registry, fence log, control object), so
    /// parallel tests with the same node names never answer each other's requests.
    pub cluster_ns: String,
}

/// The cluster is required; root is required when `need_root`.
pub fn env(need_root: bool) -> Option<Env> {
    let conf = testkit::ceph_conf()?;
    if need_root && !testkit::require_root() {
        return None;
    }
    let rados = Rados::connect(&ConnectOptions::new().conf_file(&conf)).expect("connect");
    let root = std::env::temp_dir().join(testkit::unique("rbdvol"));
    std::fs::create_dir_all(&root).unwrap();
    Some(Env {
        conf,
        rados,
        root,
        names: Mutex::new(Vec::new()),
        images: Mutex::new(Vec::new()),
        nodes: Mutex::new(Vec::new()),
        cluster_ns: testkit::unique("rbd-volumes-t"),
    })
}

impl Env {
    /// A unique volume name, cleaned up at the end.
    pub fn name(&self, prefix: &str) -> String {
        let n = testkit::unique(prefix);
        self.names.lock().unwrap().push(n.clone());
        n
    }

    /// Registers an image made outside the driver for cleanup.
    pub fn track_image(&self, pool: &str, ns: &str, name: &str) {
        self.images
            .lock()
            .unwrap()
            .push((pool.into(), ns.into(), name.into()));
    }

    /// The config of node `node` (its dirs are under this env's temp dir).
    pub fn config(&self, node: &str) -> DriverConfig {
        let mut cfg = DriverConfig::new(CephAuth {
            conf: self.conf.clone(),
            id: "admin".into(),
            keyring: None,
        });
        let base = self.root.join(node);
        cfg.node_id = format!("test-{node}");
        cfg.state_dir = base.join("state");
        cfg.mount_root = base.join("mounts");
        cfg.mapper = MapperConfig {
            run_dir: base.join("run"),
            umap_bin: umap_bin(),
            ..MapperConfig::default()
        };
        cfg.timeouts = rbd_core::Timeouts::uniform(std::time::Duration::from_secs(20));
        cfg.cluster.namespace = self.cluster_ns.clone();
        let mut nodes = self.nodes.lock().unwrap();
        if !nodes.iter().any(|c| c.state_dir == cfg.state_dir) {
            nodes.push(cfg.clone());
        }
        cfg
    }

    /// A driver for node `node`.
    pub fn driver(&self, node: &str) -> Driver {
        Driver::new(self.config(node)).expect("Driver::new")
    }

    /// A driver with this config (made by [`Env::config`]).
    pub fn driver_with(&self, cfg: DriverConfig) -> Driver {
        Driver::new(cfg).expect("Driver::new")
    }

    pub fn io(&self, pool: &str, ns: &str) -> IoCtx {
        self.rados.ioctx(pool).unwrap().with_namespace(ns).unwrap()
    }

    pub fn index(&self) -> VolumeIndex {
        VolumeIndex::open(&self.rados, POOL).unwrap()
    }

    pub fn index_entry(&self, name: &str) -> Option<IndexEntry> {
        self.index().get(name).unwrap().map(|e| e.entry)
    }

    /// The image of that name in `pool`, if it exists.
    pub fn image(&self, pool: &str, ns: &str, name: &str) -> Option<Image> {
        match Image::open(
            &self.io(pool, ns),
            name,
            &OpenOptions::new().read_only(true),
        ) {
            Ok(i) => Some(i),
            Err(e) if e.kind() == rbd_core::ErrorKind::NotFound => None,
            Err(e) => panic!("opening {pool}/{name}: {e}"),
        }
    }

    /// The `rbd-volumes.*` metadata of an image.
    pub fn meta(&self, pool: &str, ns: &str, name: &str) -> BTreeMap<String, String> {
        self.image(pool, ns, name)
            .expect("image")
            .metadata_list()
            .unwrap()
            .into_iter()
            .filter(|(k, _)| k.starts_with("rbd-volumes."))
            .collect()
    }

    /// Asserts that nothing of volume `name` exists: no image, no index entry, no local
    /// state on any node of this env.
    pub fn assert_nothing(&self, pool: &str, ns: &str, name: &str) {
        if !name.is_empty() && !name.contains(['/', '\0', '@']) && name.len() < 256 {
            assert!(
                self.image(pool, ns, name).is_none(),
                "image {pool}/{name} exists"
            );
        }
        if !name.is_empty() && !name.contains('\0') {
            assert!(
                self.index_entry(name).is_none(),
                "index entry {name:?} exists"
            );
        }
        for cfg in self.nodes.lock().unwrap().iter() {
            let st = self.state(cfg);
            assert!(!st.volumes.contains_key(name), "state has {name:?}: {st:?}");
            assert!(
                !st.pending.contains_key(name),
                "state has pending {name:?}: {st:?}"
            );
        }
    }

    pub fn state(&self, cfg: &DriverConfig) -> State {
        StateStore::new(&cfg.state_dir).unwrap().load().unwrap()
    }

    /// Creates a raw image (not a volume) for a test, tracked for cleanup.
    pub fn raw_image(&self, name: &str, size: u64) {
        self.track_image(POOL, "", name);
        rbd::create(
            &self.io(POOL, ""),
            name,
            size,
            &rbd::ImageOptions::new()
                .features(rbd::Features::LAYERING | rbd::Features::EXCLUSIVE_LOCK),
        )
        .unwrap();
    }
}

/// The userspace mapper binary, when the tests are run from a workspace that has it.
pub fn umap_bin() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    // target/debug/deps/<test> -> target/debug/rbd-umap
    let p = exe.parent()?.parent()?.join("rbd-umap");
    p.is_file().then_some(p)
}

/// `CreateSpec` from `key=value` pairs.
pub fn spec(kv: &[(&str, &str)]) -> CreateSpec {
    CreateSpec::from_options(
        &kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    )
    .unwrap()
}

fn remove_image_fully(io: &IoCtx, name: &str) {
    let Ok(img) = Image::open(io, name, &OpenOptions::new()) else {
        return;
    };
    if let Ok(snaps) = img.snap_list() {
        for s in snaps.iter().filter(|s| s.namespace == SnapNamespace::User) {
            if let Ok(at) = Image::open(io, name, &OpenOptions::new().snapshot(s.name.clone())) {
                for c in at.list_children().unwrap_or_default() {
                    if let Ok(cio) = io
                        .rados()
                        .ioctx(&c.pool_name)
                        .and_then(|i| i.with_namespace(&c.pool_namespace))
                    {
                        remove_image_fully(&cio, &c.image_name);
                    }
                }
            }
            let _ = img.snap_unprotect(&s.name);
            let _ = img.snap_remove(&s.name);
        }
    }
    drop(img);
    let _ = rbd::remove(io, name);
}

impl Drop for Env {
    fn drop(&mut self) {
        // Unmount whatever is under our mount roots and unmap our images' mappings.
        let nodes = self.nodes.lock().unwrap().clone();
        for cfg in &nodes {
            if let Ok(mounts) = fs_format::read_mountinfo() {
                let root = std::fs::canonicalize(&cfg.mount_root).unwrap_or(cfg.mount_root.clone());
                for m in mounts.iter().rev() {
                    if m.mount_point.starts_with(&root) {
                        let _ = fs_format::unmount(&m.mount_point);
                    }
                }
            }
            let st = StateStore::new(&cfg.state_dir).and_then(|s| s.load());
            if let Ok(st) = st {
                for v in st.volumes.values() {
                    if let Ok(maps) =
                        mapper::find_by_image_id(&cfg.mapper, &v.pool, &v.namespace, &v.image_id)
                    {
                        for m in maps {
                            let _ = mapper::mapper_for(m.backend, &cfg.mapper).unmap(&m, true);
                        }
                    }
                }
            }
        }
        let index = VolumeIndex::open(&self.rados, POOL).ok();
        for name in self.names.lock().unwrap().iter() {
            if let Some(ix) = &index
                && let Ok(Some(e)) = ix.get(name)
            {
                if let Ok(io) = self
                    .rados
                    .ioctx(&e.entry.pool)
                    .and_then(|i| i.with_namespace(&e.entry.namespace))
                {
                    remove_image_fully(&io, &e.entry.image);
                }
                let _ = ix.remove_if(name, &e.raw);
            }
            remove_image_fully(&self.io(POOL, ""), name);
        }
        for (pool, ns, name) in self.images.lock().unwrap().iter() {
            if let Ok(io) = self.rados.ioctx(pool).and_then(|i| i.with_namespace(ns)) {
                remove_image_fully(&io, name);
            }
        }
        // The cluster layer's objects of this test, and the blocklist entries its fences
        // made.
        if let Ok(io) = self
            .rados
            .ioctx(POOL)
            .and_then(|i| i.with_namespace(&self.cluster_ns))
        {
            let reg = rbd_driver::cluster::Registry::from_ioctx(io);
            for f in reg.fences(true).unwrap_or_default() {
                for a in &f.addrs {
                    let _ = self.rados.blocklist_rm(a);
                }
            }
            for o in [
                rbd_driver::cluster::registry::REGISTRY_OBJECT,
                rbd_driver::cluster::registry::FENCE_OBJECT,
                rbd_driver::cluster::control::CONTROL_OBJECT,
            ] {
                let _ = reg.ioctx().remove_object(o);
            }
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// Runs the Ceph CLI against the dev cluster (with a timeout).
pub fn ceph_cli(conf: &Path, prog: &str, args: &[&str]) -> String {
    let out = Command::new("timeout")
        .arg("60")
        .arg(prog)
        .arg("-c")
        .arg(conf)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{prog} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The JSON line printed by `rbd-volume-op`.
pub fn parse_op_output(stdout: &[u8]) -> Option<Value> {
    String::from_utf8_lossy(stdout)
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
}
