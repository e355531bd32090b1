//! The [`Driver`]: configuration, connection, lookups (get, list, path, status).

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, SystemTime};

use fs_format::FsType;
use rbd_core::{ConnectOptions, EntityAddr, Image, IoCtx, OpenOptions, Rados, Timeouts};
use serde::Serialize;
use serde_json::json;

use crate::cluster::{Cluster, ClusterConfig, ClusterOptions, NodeId, RegistryEntry};
use crate::error::{DriverError, Result};
use crate::mapper::{self, Backend, CephAuth, MapOptions, Mapper, MapperConfig, Mapping};
use crate::volume::index::{EntryState, StoredEntry, VolumeIndex};
use crate::volume::lock::{VolumeLock, lock_volume};
use crate::volume::meta::VolumeMeta;
use crate::volume::name::validate_volume_name;
use crate::volume::recover::RecoveryReport;
use crate::volume::spec::{AccessMode, VolumeDefaults};
use crate::volume::state::{Phase, State, StateStore, VolumeState};

/// Everything a [`Driver`] needs to know about its node.
#[derive(Debug, Clone)]
pub struct DriverConfig {
    /// This node's stable id. Default: the hostname.
    pub node_id: String,
    /// State directory (state file, locks). Default `/var/lib/rbd-volumes`.
    pub state_dir: PathBuf,
    /// Volumes are mounted at `<mount_root>/<name>`. Default `/var/lib/rbd-volumes/mounts`.
    pub mount_root: PathBuf,
    /// Mapper host settings.
    pub mapper: MapperConfig,
    /// Mapper backend; `None` chooses automatically (krbd, then nbd, then userspace).
    pub backend: Option<Backend>,
    /// Cluster access, for the driver and its mappers.
    pub auth: CephAuth,
    /// Client timeouts bounding every Ceph call.
    pub timeouts: Timeouts,
    /// Defaults for volume options.
    pub defaults: VolumeDefaults,
    /// Backend tuning for every map.
    pub map_options: MapOptions,
    /// How long an operation waits for another operation on the same volume on this node.
    /// Default 120 s.
    pub lock_timeout: Duration,
    /// An index entry left "creating" or "removing" by a node for longer than this is
    /// considered abandoned (that node crashed and did not come back) and may be cleaned
    /// up by any node. Default 10 minutes.
    pub stale_after: Duration,
    /// Timeout of mkfs. Default 10 minutes.
    pub mkfs_timeout: Duration,
    /// Timeout of fsck. Default 1 hour.
    pub fsck_timeout: Duration,
    /// How long resize waits for a mapped device to show the new size. Default 30 s.
    pub resize_wait: Duration,
    /// The cluster layer (registry namespace, ping and release timeouts, fencing). Every
    /// node of a cluster must use the same namespace.
    pub cluster: ClusterOptions,
    /// Whether [`Driver::new`] runs [`Driver::recover`]. Default true; off only for
    /// read-only tools (`rbdctl reconcile --dry-run`).
    pub recover_on_start: bool,
    /// Extra Ceph client options (`rados_conf_set`) for the driver's own cluster
    /// connection, set before it connects; not for the mappings, whose mappers connect on
    /// their own. Default none. The Docker plugin, which does no data I/O itself, runs
    /// one messenger thread (`ms_async_op_threads = 1`) to stay small.
    pub client_options: Vec<(String, String)>,
    /// Connect without loading librbd ([`ConnectOptions::defer_librbd`]): it is loaded
    /// by the first operation that needs it. Default false. The Docker plugin sets it and
    /// calls [`rbd_core::librbd::load`] before each such operation, so that its idle
    /// process (List, the node daemon: RADOS only) stays 5 MiB smaller.
    pub defer_librbd: bool,
}

/// This host's name (`/proc/sys/kernel/hostname`), or `localhost`.
pub fn hostname() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

impl DriverConfig {
    /// The defaults listed on each field, with this cluster access.
    pub fn new(auth: CephAuth) -> Self {
        Self {
            node_id: hostname(),
            state_dir: PathBuf::from("/var/lib/rbd-volumes"),
            mount_root: PathBuf::from("/var/lib/rbd-volumes/mounts"),
            mapper: MapperConfig::default(),
            backend: None,
            auth,
            timeouts: Timeouts::default(),
            defaults: VolumeDefaults::default(),
            map_options: MapOptions::default(),
            lock_timeout: Duration::from_secs(120),
            stale_after: Duration::from_secs(600),
            mkfs_timeout: Duration::from_secs(600),
            fsck_timeout: Duration::from_secs(3600),
            resize_wait: Duration::from_secs(30),
            cluster: ClusterOptions::default(),
            recover_on_start: true,
            client_options: Vec::new(),
            defer_librbd: false,
        }
    }
}

/// What `get` and `list` return about a volume (Docker's `Volume`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VolumeInfo {
    /// Volume name.
    pub name: String,
    /// Pool of its image.
    pub pool: String,
    /// RADOS namespace of its image.
    pub namespace: String,
    /// Image name.
    pub image: String,
    /// Image id.
    pub image_id: String,
    /// Size in bytes.
    pub size: u64,
    /// Filesystem (the one created, else the one that will be created).
    pub fstype: Option<FsType>,
    /// Default access mode.
    pub access: AccessMode,
    /// When the image was created.
    pub created_at: Option<SystemTime>,
    /// Where it is mounted on this node, if attached here.
    pub mountpoint: Option<PathBuf>,
    /// Details for Docker's `Status`: node, mapping, mount ids, pool, image id...
    pub status: BTreeMap<String, serde_json::Value>,
}

/// A client that has a volume's image open (a header watcher).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClientInfo {
    /// `client.<global id>`.
    pub client: String,
    /// Its exact address (`IP:PORT/NONCE`), as `ceph osd blocklist` takes it.
    pub addr: String,
    /// True when it is the client of a mapping on this node.
    pub local_mapping: bool,
}

/// A volume's attachment on this node.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LocalAttachment {
    /// Mountpoint.
    pub mountpoint: PathBuf,
    /// Whether something is mounted there now (mountinfo).
    pub mounted: bool,
    /// Mapped device.
    pub device: Option<PathBuf>,
    /// Backend.
    pub backend: Option<Backend>,
    /// Access mode of the mount.
    pub access: AccessMode,
    /// Mount IDs holding it.
    pub mount_ids: Vec<String>,
    /// Progress (`mounted` when idle).
    pub phase: Phase,
}

/// Where a volume is mapped and mounted ([`Driver::status`]).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VolumeStatus {
    /// Volume name.
    pub name: String,
    /// This node's id.
    pub node: String,
    /// Pool, namespace and image id.
    pub pool: String,
    /// Namespace.
    pub namespace: String,
    /// Image id.
    pub image_id: String,
    /// The attachment on this node, if any.
    pub local: Option<LocalAttachment>,
    /// The mappings of the image on this node, found by image id (normally one while
    /// attached, none otherwise).
    pub local_mappings: Vec<Mapping>,
    /// The cluster registry's entry for the image: which nodes hold it, read-write or
    /// read-only, with their devices, client addresses and mount IDs.
    pub registry: Option<RegistryEntry>,
    /// Every client with the image open (this node's mappings included).
    pub watchers: Vec<ClientInfo>,
    /// Owners of the image's exclusive lock (addresses).
    pub lock_owners: Vec<String>,
}

/// The per-node volume driver. `Send + Sync`; share it in an `Arc`.
///
/// See the [module documentation](crate::volume) for the lifecycle and an example.
pub struct Driver {
    pub(super) cfg: DriverConfig,
    pub(super) rados: Rados,
    pub(super) store: StateStore,
    pub(super) index: VolumeIndex,
    pub(super) mapper: OnceLock<Arc<dyn Mapper>>,
    pub(super) last_recovery: Mutex<Option<RecoveryReport>>,
    pub(super) cluster: Cluster,
    /// Set by a [`NodeDaemon`](crate::daemon::NodeDaemon) running in this process: makes
    /// sure its control server watches a pool before this node registers an image there.
    pub(super) pool_hook: RwLock<Option<PoolHook>>,
}

/// See [`Driver::set_pool_hook`]: called with a pool's name, makes sure this node's
/// daemon answers control requests there.
pub type PoolHook = Box<dyn Fn(&str) -> Result<()> + Send + Sync>;

impl std::fmt::Debug for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driver")
            .field("node_id", &self.cfg.node_id)
            .field("state_dir", &self.cfg.state_dir)
            .finish_non_exhaustive()
    }
}

/// A volume found through the index.
pub(super) struct Located {
    pub entry: StoredEntry,
    pub io: IoCtx,
}

/// Checks a Docker mount ID: 1 to 128 letters, digits, `_`, `.`, `-`, `:`.
pub fn validate_mount_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | ':'));
    if ok {
        Ok(())
    } else {
        Err(DriverError::invalid(
            "mount id",
            id,
            "must be 1 to 128 letters, digits, '_', '.', '-' or ':'",
        ))
    }
}

impl Driver {
    /// Binds the mount root to the state dir (refused, naming both, when the mount root
    /// belongs to another state dir; see [`OWNER_FILE`](crate::volume::OWNER_FILE)),
    /// connects to the cluster (bounded by `cfg.timeouts`), opens the name index and
    /// recovers local state ([`Driver::recover`]; its report is in
    /// [`Driver::last_recovery`]). The mapper backend is chosen on first use, so a node
    /// without a usable mapper can still create, list and remove volumes.
    pub fn new(cfg: DriverConfig) -> Result<Driver> {
        // The node id is what the cluster registry and the control protocol name this
        // node by.
        let node = NodeId::new(&cfg.node_id)?;
        cfg.defaults.validate()?;
        let store = StateStore::new(&cfg.state_dir)?;
        restrict(&cfg.state_dir, 0o700)?;
        fs::create_dir_all(&cfg.mount_root).map_err(|e| {
            DriverError::io(
                format!("creating mount root {}", cfg.mount_root.display()),
                e,
            )
        })?;
        restrict(&cfg.mount_root, 0o750)?;
        // One state dir per mount root: recovery must never see another's mounts.
        let state = store.load()?;
        crate::volume::owner::claim_mount_root(
            &cfg.mount_root,
            &cfg.state_dir,
            &cfg.node_id,
            &state,
        )?;
        let mut opts = ConnectOptions::new()
            .conf_file(&cfg.auth.conf)
            .id(&cfg.auth.id)
            .timeouts(cfg.timeouts);
        if let Some(k) = &cfg.auth.keyring {
            opts = opts.keyring(k);
        }
        for (k, v) in &cfg.client_options {
            opts = opts.option(k, v);
        }
        if cfg.defer_librbd {
            opts = opts.defer_librbd();
        }
        let rados = Rados::connect(&opts).map_err(|e| {
            DriverError::ceph(
                format!(
                    "connecting to the cluster of {} as client.{}",
                    cfg.auth.conf.display(),
                    cfg.auth.id
                ),
                e,
            )
        })?;
        let index = VolumeIndex::open(&rados, &cfg.defaults.pool)?;
        // The cluster layer uses this connection (the driver's own: never a mapping's,
        // which are the ones fencing blocklists).
        let cluster = Cluster::new(
            rados.clone(),
            ClusterConfig::with_options(node, &cfg.cluster),
        );
        let d = Driver {
            cfg,
            rados,
            store,
            index,
            mapper: OnceLock::new(),
            last_recovery: Mutex::new(None),
            cluster,
            pool_hook: RwLock::new(None),
        };
        if d.cfg.recover_on_start {
            d.recover()?;
        }
        Ok(d)
    }

    /// The configuration.
    pub fn config(&self) -> &DriverConfig {
        &self.cfg
    }

    /// The cluster connection.
    pub fn rados(&self) -> &Rados {
        &self.rados
    }

    /// The local state store.
    pub fn state_store(&self) -> &StateStore {
        &self.store
    }

    /// The cluster-wide name index.
    pub fn index(&self) -> &VolumeIndex {
        &self.index
    }

    /// The report of the last [`Driver::recover`] (the one run by [`Driver::new`] until
    /// recover is called again).
    pub fn last_recovery(&self) -> Option<RecoveryReport> {
        self.last_recovery.lock().ok().and_then(|g| g.clone())
    }

    /// The mountpoint a volume gets on this node.
    pub fn mountpoint_of(&self, name: &str) -> PathBuf {
        self.cfg.mount_root.join(name)
    }

    /// The mapper, chosen on first successful use.
    pub fn mapper(&self) -> Result<Arc<dyn Mapper>> {
        if let Some(m) = self.mapper.get() {
            return Ok(m.clone());
        }
        let m: Arc<dyn Mapper> = Arc::from(mapper::select(self.cfg.backend, &self.cfg.mapper)?);
        Ok(self.mapper.get_or_init(|| m).clone())
    }

    pub(super) fn lock(&self, name: &str) -> Result<VolumeLock> {
        lock_volume(self.store.dir(), name, self.cfg.lock_timeout)
    }

    pub(super) fn load_state(&self) -> Result<State> {
        let _l = self.store.lock()?;
        self.store.load()
    }

    pub(super) fn io(&self, pool: &str, namespace: &str) -> Result<IoCtx> {
        self.rados
            .ioctx(pool)
            .and_then(|io| io.with_namespace(namespace))
            .map_err(|e| {
                DriverError::ceph(
                    format!(
                        "opening pool {}",
                        crate::mapper::image_spec(pool, namespace, "", None).trim_end_matches('/')
                    ),
                    e,
                )
            })
    }

    /// Finds a ready volume through the index.
    pub(super) fn locate(&self, name: &str) -> Result<Located> {
        let Some(entry) = self.index.get(name)? else {
            return Err(DriverError::NoSuchVolume(name.into()));
        };
        if entry.entry.state != EntryState::Ready || entry.entry.image_id.is_empty() {
            return Err(DriverError::NoSuchVolume(format!(
                "{name} (it is being {} on node {})",
                if entry.entry.state == EntryState::Removing {
                    "removed"
                } else {
                    "created"
                },
                entry.entry.node
            )));
        }
        let io = self.io(&entry.entry.pool, &entry.entry.namespace)?;
        Ok(Located { entry, io })
    }

    /// Opens the located volume's image by id. A missing image is
    /// [`DriverError::NoSuchVolume`].
    pub(super) fn open(&self, name: &str, loc: &Located, read_only: bool) -> Result<Image> {
        Image::open_by_id(
            &loc.io,
            &loc.entry.entry.image_id,
            &OpenOptions::new().read_only(read_only),
        )
        .map_err(|e| {
            if e.kind() == rbd_core::ErrorKind::NotFound {
                DriverError::NoSuchVolume(format!(
                    "{name} (its image {} is gone)",
                    self.spec_of(&loc.entry)
                ))
            } else {
                DriverError::ceph(
                    format!("opening volume {name} ({})", self.spec_of(&loc.entry)),
                    e,
                )
            }
        })
    }

    pub(super) fn spec_of(&self, e: &StoredEntry) -> String {
        crate::mapper::image_spec(&e.entry.pool, &e.entry.namespace, &e.entry.image, None)
    }

    /// This client's own addresses, to tell our handles apart from other clients.
    pub(super) fn own_addrs(&self) -> Vec<EntityAddr> {
        self.rados.getaddrs().map(|a| a.0).unwrap_or_default()
    }

    /// Watchers of `image` other than this driver's own handle.
    pub(super) fn foreign_watchers(&self, image: &Image) -> Result<Vec<rbd_core::rbd::Watcher>> {
        let own = self.own_addrs();
        Ok(image
            .watchers()
            .map_err(|e| DriverError::ceph("listing the image's watchers", e))?
            .into_iter()
            .filter(|w| !own.iter().any(|a| a.same_instance(&w.addr)))
            .collect())
    }

    /// Who holds the image's exclusive lock (client addresses). `rbd_lock_get_owners`
    /// answers nothing on a read-only handle, so the header's RADOS lock (which the
    /// exclusive-lock feature uses, `rbd lock ls`) is read as well.
    pub(super) fn lock_holders(&self, image: &Image) -> Vec<String> {
        let mut out: Vec<String> = image
            .lock_get_owners()
            .map(|o| o.owners)
            .unwrap_or_default();
        if let Ok(l) = image.list_lockers() {
            for lk in l.lockers {
                let a = lk.addr.to_legacy_string();
                if !out.contains(&a) {
                    out.push(a);
                }
            }
        }
        out
    }

    /// The local mappings of an image id (every available backend).
    pub(super) fn local_mappings(
        &self,
        pool: &str,
        ns: &str,
        image_id: &str,
    ) -> Result<Vec<Mapping>> {
        mapper::find_by_image_id(&self.cfg.mapper, pool, ns, image_id)
    }

    /// Looks a volume up (`NoSuchVolume` if it does not exist).
    pub fn get(&self, name: &str) -> Result<VolumeInfo> {
        validate_volume_name(name)?;
        let loc = self.locate(name)?;
        let st = self.load_state()?;
        self.info(name, &loc, st.volumes.get(name))
    }

    pub(super) fn info(
        &self,
        name: &str,
        loc: &Located,
        local: Option<&VolumeState>,
    ) -> Result<VolumeInfo> {
        let image = self.open(name, loc, true)?;
        let ctx = |what: &str| format!("reading the {what} of volume {name}");
        let size = image
            .size()
            .map_err(|e| DriverError::ceph(ctx("size"), e))?;
        let meta = VolumeMeta::read(&image)?;
        let created_at = image.create_timestamp().ok();
        let features = image.features().ok();
        drop(image);
        let e = &loc.entry.entry;
        let mounted = local.filter(|v| v.phase == Phase::Mounted);
        let mut status = BTreeMap::new();
        status.insert("node".into(), json!(self.cfg.node_id));
        status.insert("pool".into(), json!(e.pool));
        status.insert("namespace".into(), json!(e.namespace));
        status.insert("image_id".into(), json!(e.image_id));
        status.insert("size".into(), json!(size));
        status.insert("created_by".into(), json!(e.node));
        status.insert(
            "fstype".into(),
            json!(meta.formatted.or(meta.fstype).map(|f| f.to_string())),
        );
        status.insert("formatted".into(), json!(meta.formatted.is_some()));
        status.insert("access".into(), json!(meta.access.as_str()));
        if let Some(f) = features {
            status.insert("features".into(), json!(f.names()));
        }
        if let Some(s) = &meta.source {
            status.insert("source".into(), json!(s));
        }
        status.insert("attached".into(), json!(mounted.is_some()));
        if let Some(v) = local {
            status.insert("mountpoint".into(), json!(v.mountpoint));
            status.insert("device".into(), json!(v.device));
            status.insert("backend".into(), json!(v.backend.map(|b| b.to_string())));
            status.insert("mode".into(), json!(if v.read_only { "ro" } else { "rw" }));
            status.insert("mount_ids".into(), json!(v.mount_ids));
            status.insert("phase".into(), json!(v.phase));
        }
        Ok(VolumeInfo {
            name: name.into(),
            pool: e.pool.clone(),
            namespace: e.namespace.clone(),
            image: e.image.clone(),
            image_id: e.image_id.clone(),
            size,
            fstype: meta.formatted.or(meta.fstype),
            access: meta.access,
            created_at,
            mountpoint: mounted.map(|v| v.mountpoint.clone()),
            status,
        })
    }

    /// Every ready volume in the index. Entries whose image is gone are skipped.
    pub fn list(&self) -> Result<Vec<VolumeInfo>> {
        let st = self.load_state()?;
        let mut out = Vec::new();
        for (name, entry) in self.index.list()? {
            if entry.entry.state != EntryState::Ready || entry.entry.image_id.is_empty() {
                continue;
            }
            let io = self.io(&entry.entry.pool, &entry.entry.namespace)?;
            let loc = Located { entry, io };
            match self.info(&name, &loc, st.volumes.get(&name)) {
                Ok(i) => out.push(i),
                Err(DriverError::NoSuchVolume(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// Where the volume is mounted on this node, if it is. Reads only local state (no
    /// cluster access).
    pub fn path(&self, name: &str) -> Result<Option<PathBuf>> {
        validate_volume_name(name)?;
        let st = self.load_state()?;
        Ok(st
            .volumes
            .get(name)
            .filter(|v| v.phase == Phase::Mounted)
            .map(|v| v.mountpoint.clone()))
    }

    /// Where the volume is mapped and mounted: this node's attachment (mountpoint, device,
    /// mount IDs, checked against mountinfo and the mapping list) and every client that
    /// has its image open.
    pub fn status(&self, name: &str) -> Result<VolumeStatus> {
        validate_volume_name(name)?;
        let loc = self.locate(name)?;
        let e = loc.entry.entry.clone();
        let image = self.open(name, &loc, true)?;
        let mappings = self.local_mappings(&e.pool, &e.namespace, &e.image_id)?;
        let watchers: Vec<ClientInfo> = self
            .foreign_watchers(&image)?
            .into_iter()
            .map(|w| ClientInfo {
                client: format!("client.{}", w.id),
                addr: w.addr.to_legacy_string(),
                local_mapping: mappings.iter().any(|m| {
                    m.client_addr
                        .as_ref()
                        .is_some_and(|a| a.same_instance(&w.addr))
                }),
            })
            .collect();
        let lock_owners = self.lock_holders(&image);
        drop(image);
        let registry = self
            .cluster
            .registry(&e.pool)?
            .get(&crate::cluster::ImageRef::new(
                &e.pool,
                &e.namespace,
                &e.image,
                &e.image_id,
            ))?;
        let st = self.load_state()?;
        let local = st.volumes.get(name).map(|v| LocalAttachment {
            mountpoint: v.mountpoint.clone(),
            mounted: fs_format::is_mountpoint(&v.mountpoint).unwrap_or(false),
            device: v.device.clone(),
            backend: v.backend,
            access: if v.read_only {
                AccessMode::ReadOnly
            } else {
                AccessMode::ReadWrite
            },
            mount_ids: v.mount_ids.iter().cloned().collect(),
            phase: v.phase,
        });
        Ok(VolumeStatus {
            name: name.into(),
            node: self.cfg.node_id.clone(),
            pool: e.pool,
            namespace: e.namespace,
            image_id: e.image_id,
            local,
            local_mappings: mappings,
            registry,
            watchers,
            lock_owners,
        })
    }
}

/// Creates `dir` if needed and sets its mode.
fn restrict(dir: &Path, mode: u32) -> Result<()> {
    fs::create_dir_all(dir)
        .map_err(|e| DriverError::io(format!("creating {}", dir.display()), e))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(mode))
        .map_err(|e| DriverError::io(format!("setting the mode of {}", dir.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn driver_is_send_and_sync_and_mount_ids_are_checked() {
        fn check<T: Send + Sync + 'static>() {}
        check::<Driver>();
        check::<VolumeInfo>();
        for ok in ["m1", &"a".repeat(64), "abc:def-1.2_3"] {
            validate_mount_id(ok).unwrap();
        }
        for bad in ["", "a/b", "x y", "a\0", &"m".repeat(129)] {
            let e = validate_mount_id(bad).unwrap_err().to_string();
            assert!(e.contains("mount id"), "{e}");
        }
    }

    #[test]
    fn default_config() {
        let c = DriverConfig::new(CephAuth {
            conf: "/etc/ceph/ceph.conf".into(),
            id: "admin".into(),
            keyring: None,
        });
        assert_eq!(c.node_id, hostname());
        assert_eq!(c.state_dir, PathBuf::from("/var/lib/rbd-volumes"));
        assert_eq!(c.mount_root, PathBuf::from("/var/lib/rbd-volumes/mounts"));
        assert_eq!(c.defaults.pool, "rbd");
        assert!(c.backend.is_none());
    }
}
