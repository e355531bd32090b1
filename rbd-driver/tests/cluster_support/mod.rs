//! Shared helpers for the cluster-layer tests against the real dev cluster: separate client
//! connections (one per simulated node), unique registry namespaces, test images and
//! blocklist entries that are removed even when a test fails.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use rbd_core::rbd::{Features, ImageOptions};
use rbd_core::{ConnectOptions, EntityAddr, Rados, Timeouts};
use rbd_driver::cluster::{Cluster, ClusterConfig, ImageRef, NodeId};

/// The pool the tests use.
pub const POOL: &str = "rbd";

/// The dev cluster's conf, or `None` (outside CI) when it is missing.
pub fn conf() -> Option<PathBuf> {
    testkit::ceph_conf()
}

/// A new client connection: a separate client instance with its own address, as a
/// separate node (or mapping) would have.
pub fn connect(conf: &Path) -> Rados {
    Rados::connect(
        &ConnectOptions::new()
            .conf_file(conf)
            .timeouts(Timeouts::uniform(Duration::from_secs(10))),
    )
    .expect("connect to the dev cluster")
}

/// This connection's exact address.
pub fn addr_of(r: &Rados) -> EntityAddr {
    *r.getaddrs().unwrap().primary().unwrap()
}

/// A unique registry namespace, so parallel tests do not share registry objects.
pub fn test_namespace() -> String {
    testkit::unique("rbd-volumes-test")
}

/// The cluster layer for `node` on its own connection, in registry namespace `ns`.
pub fn node(conf: &Path, name: &str, ns: &str) -> Cluster {
    let mut cfg = ClusterConfig::new(NodeId::new(name).unwrap());
    cfg.namespace = ns.to_owned();
    cfg.fence.expiry = Duration::from_secs(600);
    Cluster::new(connect(conf), cfg)
}

/// A test image, removed (after its blocklist entries and registry objects) on drop.
pub struct TestImage {
    pub admin: Rados,
    pub name: String,
    pub id: String,
    /// Blocklist entries to remove on drop.
    pub unblock: std::sync::Mutex<Vec<EntityAddr>>,
    /// Registry namespaces whose objects to remove on drop.
    pub namespaces: Vec<String>,
}

impl TestImage {
    /// Creates an image with exclusive-lock.
    pub fn create(conf: &Path, prefix: &str, ns: &str) -> TestImage {
        Self::create_with(
            conf,
            prefix,
            ns,
            Features::LAYERING | Features::EXCLUSIVE_LOCK,
        )
    }

    /// Creates an image with `features`.
    pub fn create_with(conf: &Path, prefix: &str, ns: &str, features: Features) -> TestImage {
        let admin = connect(conf);
        let name = testkit::unique(prefix);
        let io = admin.ioctx(POOL).unwrap();
        rbd_core::rbd::create(&io, &name, 8 << 20, &ImageOptions::new().features(features))
            .unwrap();
        let id = rbd_core::rbd::image_id_by_name(&io, &name).unwrap();
        TestImage {
            admin,
            name,
            id,
            unblock: Default::default(),
            namespaces: vec![ns.to_owned()],
        }
    }

    /// Its reference.
    pub fn image_ref(&self) -> ImageRef {
        ImageRef::new(POOL, "", &self.name, &self.id)
    }

    /// Remember to unblocklist `a` on drop.
    pub fn unblock_later(&self, a: EntityAddr) {
        self.unblock.lock().unwrap().push(a);
    }
}

impl Drop for TestImage {
    fn drop(&mut self) {
        for a in self.unblock.lock().unwrap().iter() {
            let _ = self.admin.blocklist_rm(a);
        }
        if let Ok(io) = self.admin.ioctx(POOL) {
            // Advisory locks outlive their clients, and librbd cannot remove an image
            // whose header an external lock holds: break what is left.
            if let Ok(img) =
                rbd_core::Image::open_by_id(&io, &self.id, &rbd_core::OpenOptions::new())
            {
                if let Ok(l) = img.list_lockers() {
                    for l in l.lockers {
                        let _ = img.break_lock(&l.client, &l.cookie);
                    }
                }
                let _ = img.close();
            }
            // Watchers may take a moment to go after their client was dropped.
            for _ in 0..50 {
                match rbd_core::rbd::remove(&io, &self.name) {
                    Err(e) if e.kind() == rbd_core::ErrorKind::Busy => {
                        std::thread::sleep(Duration::from_millis(200))
                    }
                    _ => break,
                }
            }
            remove_namespace_objects(&io, &self.namespaces);
        }
    }
}

/// Removes the registry, fence log and control objects of test namespaces.
pub fn remove_namespace_objects(io: &rbd_core::IoCtx, namespaces: &[String]) {
    for ns in namespaces {
        if let Ok(nio) = io.with_namespace(ns) {
            for o in [
                rbd_driver::cluster::registry::REGISTRY_OBJECT,
                rbd_driver::cluster::registry::FENCE_OBJECT,
                rbd_driver::cluster::control::CONTROL_OBJECT,
            ] {
                let _ = nio.remove_object(o);
            }
        }
    }
}

/// Removes a test namespace's objects on drop.
pub struct NsGuard {
    pub admin: Rados,
    pub ns: String,
}

impl Drop for NsGuard {
    fn drop(&mut self) {
        if let Ok(io) = self.admin.ioctx(POOL) {
            remove_namespace_objects(&io, std::slice::from_ref(&self.ns));
        }
    }
}
