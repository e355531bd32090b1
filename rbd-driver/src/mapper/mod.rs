//! Mappers: make an RBD image appear as a local block device.
//!
//! One trait, [`Mapper`], three backends:
//!
//! | backend | how | where it works |
//! |---|---|---|
//! | [`Backend::Krbd`] | the kernel client, `/sys/bus/rbd/add_single_major` | kernels with the `rbd` module |
//! | [`Backend::Nbd`] | Debian's `rbd-nbd` | kernels with the `nbd` module |
//! | [`Backend::Userspace`] | our own mapper process: FUSE file + loop device | any kernel with FUSE and loop |
//!
//! Every backend lists its mappings as [`Mapping`]s that carry the **image id**: a
//! mapping is identified by image id, never by pool/name, so a device left over from a
//! removed image is never mistaken for a new image that reuses the name.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use rbd_core::EntityAddr;
use serde::{Deserialize, Serialize};

use crate::error::{DriverError, Result};

/// Which mapper a mapping uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// The kernel RBD client.
    Krbd,
    /// `rbd-nbd` over the kernel's nbd driver.
    Nbd,
    /// Our userspace FUSE + loop mapper.
    Userspace,
}

impl Backend {
    /// All backends, in automatic selection order.
    pub const ALL: [Backend; 3] = [Backend::Krbd, Backend::Nbd, Backend::Userspace];

    /// The backend's name as used in options and output.
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Krbd => "krbd",
            Backend::Nbd => "nbd",
            Backend::Userspace => "userspace",
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Backend {
    type Err = DriverError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "krbd" | "kernel" => Ok(Backend::Krbd),
            "nbd" | "rbd-nbd" => Ok(Backend::Nbd),
            "userspace" | "fuse" => Ok(Backend::Userspace),
            _ => Err(DriverError::invalid(
                "mapper backend",
                s,
                "expected one of: krbd, nbd, userspace",
            )),
        }
    }
}

/// How a mapper process or the kernel authenticates to the cluster.
///
/// Secrets are never put on a command line or in logs: mapper processes get the keyring
/// path, and krbd gets the key through the sysfs write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CephAuth {
    /// ceph.conf path.
    pub conf: PathBuf,
    /// Client id (`admin` for `client.admin`).
    pub id: String,
    /// Keyring path, when not the one named in the conf.
    pub keyring: Option<PathBuf>,
}

/// What to map.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapRequest {
    /// Pool name.
    pub pool: String,
    /// RADOS namespace (`""` for the default).
    pub namespace: String,
    /// Image name (for display and for backends that need it).
    pub image: String,
    /// Image id: the identity of the mapping.
    pub image_id: String,
    /// Snapshot to map (read-only), if any.
    pub snap: Option<String>,
    /// Map read-only.
    pub read_only: bool,
    /// Take the exclusive lock at map time and keep it (krbd `exclusive`, rbd-nbd
    /// `--exclusive`).
    pub exclusive: bool,
    /// Cluster access.
    pub auth: CephAuth,
    /// Backend-specific tuning.
    pub options: MapOptions,
}

impl MapRequest {
    /// `pool/[namespace/]image[@snap]`, for messages.
    pub fn spec(&self) -> String {
        image_spec(
            &self.pool,
            &self.namespace,
            &self.image,
            self.snap.as_deref(),
        )
    }
}

/// `pool/[namespace/]image[@snap]`.
pub fn image_spec(pool: &str, namespace: &str, image: &str, snap: Option<&str>) -> String {
    let mut s = String::from(pool);
    s.push('/');
    if !namespace.is_empty() {
        s.push_str(namespace);
        s.push('/');
    }
    s.push_str(image);
    if let Some(snap) = snap {
        s.push('@');
        s.push_str(snap);
    }
    s
}

/// Backend tuning. Unset values use the backend's defaults.
///
/// `MapOptions::default()` turns `noshare` on; everything else is off or unset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct MapOptions {
    /// krbd `noshare`: a client instance of its own per mapping, so fencing one mapping
    /// (by its exact address) never fences another. On by default.
    pub noshare: bool,
    /// krbd `lock_on_read`.
    pub lock_on_read: bool,
    /// krbd `queue_depth`.
    pub queue_depth: Option<u32>,
    /// I/O timeout in seconds (rbd-nbd `--io-timeout`; userspace per-I/O deadline;
    /// krbd `osd_request_timeout`).
    pub io_timeout_secs: Option<u32>,
    /// Userspace mapper: how long, in seconds, I/O may keep failing because the cluster
    /// does not answer (each I/O fails with `EIO` at its deadline,
    /// [`MapOptions::io_timeout_secs`]) with no I/O succeeding, before the mapper gives up:
    /// it fails all pending and new I/O with `EIO`, tears the mapping down and exits
    /// with [`exit::UNREACHABLE`](userspace::daemon::exit::UNREACHABLE). While stalled
    /// it probes the image itself, so a cluster that comes back while the device is idle
    /// is noticed. Unset: [`DEFAULT_GIVE_UP_AFTER_SECS`](userspace::daemon::DEFAULT_GIVE_UP_AFTER_SECS)
    /// (120 s); `0`: never.
    ///
    /// The trade-off: krbd retries forever, so a long outage leaves processes blocked in
    /// `D` state, but the device carries on where it stopped once the cluster is back.
    /// Giving up frees the node (no hung processes, the image's watch and lock go, the
    /// volume can be reattached) but turns the outage into an I/O error for the
    /// filesystem, which needs a remount (reattach) afterwards. A short bound suits
    /// nodes that must fail fast (fencing, rescheduling); a long one rides out OSD
    /// restarts and mon elections. Ignored by krbd and rbd-nbd.
    pub give_up_after_secs: Option<u32>,
    /// krbd `ms_mode` (`legacy`, `crc`, `secure`, `prefer-crc`, `prefer-secure`). Unset:
    /// the kernel's default (msgr1, the mons' v1 addresses); any mode but `legacy` makes
    /// krbd use msgr2 and the mons' v2 addresses. Ignored by the other backends.
    pub ms_mode: Option<String>,
}

impl Default for MapOptions {
    fn default() -> Self {
        Self {
            noshare: true,
            lock_on_read: false,
            queue_depth: None,
            io_timeout_secs: None,
            give_up_after_secs: None,
            ms_mode: None,
        }
    }
}

/// One local mapping, as listed by its backend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mapping {
    /// The backend that made it.
    pub backend: Backend,
    /// Pool name.
    pub pool: String,
    /// RADOS namespace (`""` for the default).
    pub namespace: String,
    /// Image name at map time (may be stale if renamed or removed).
    pub image: String,
    /// Image id: the mapping's identity.
    pub image_id: String,
    /// Mapped snapshot, if any.
    pub snap: Option<String>,
    /// The block device, e.g. `/dev/rbd0`, `/dev/nbd0`, `/dev/loop3`.
    pub device: PathBuf,
    /// The exact client address of this mapping's Ceph session, when known.
    pub client_addr: Option<EntityAddr>,
    /// Read-only mapping.
    pub read_only: bool,
    /// The process serving the mapping (rbd-nbd, userspace mapper), if any.
    pub pid: Option<u32>,
}

impl Mapping {
    /// `pool/[namespace/]image[@snap]`, for messages.
    pub fn spec(&self) -> String {
        image_spec(
            &self.pool,
            &self.namespace,
            &self.image,
            self.snap.as_deref(),
        )
    }

    /// True when this mapping is of the given image id (and pool/namespace).
    pub fn is_image(&self, pool: &str, namespace: &str, image_id: &str) -> bool {
        self.pool == pool && self.namespace == namespace && self.image_id == image_id
    }
}

/// A way to map images to block devices.
pub trait Mapper: Send + Sync {
    /// Which backend this is.
    fn backend(&self) -> Backend;

    /// `Ok(())` when it can be used on this host, else why not.
    fn check_available(&self) -> Result<()>;

    /// Maps the image and returns the new mapping. The device exists when this returns.
    fn map(&self, req: &MapRequest) -> Result<Mapping>;

    /// Unmaps. With `force`, in-flight I/O is failed and open handles do not block it.
    fn unmap(&self, mapping: &Mapping, force: bool) -> Result<()>;

    /// Every mapping of this backend on this host.
    fn list(&self) -> Result<Vec<Mapping>>;
}

pub mod krbd;
pub mod loopdev;
pub mod nbd;
pub mod userspace;

/// Host-level settings shared by the backends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapperConfig {
    /// Runtime directory for mapper state (pid files, FUSE mountpoints, mapping records);
    /// default `/run/rbd-volumes`.
    pub run_dir: PathBuf,
    /// The userspace mapper binary (`rbd-umap`); default: next to the current executable,
    /// then `$PATH`.
    pub umap_bin: Option<PathBuf>,
    /// The `rbd-nbd` binary; default `rbd-nbd` from `$PATH`.
    pub rbd_nbd_bin: PathBuf,
    /// Root of sysfs (`/sys`); tests point it elsewhere to exercise the parsers.
    pub sysfs: PathBuf,
}

impl Default for MapperConfig {
    fn default() -> Self {
        Self {
            run_dir: PathBuf::from("/run/rbd-volumes"),
            umap_bin: None,
            rbd_nbd_bin: PathBuf::from("rbd-nbd"),
            sysfs: PathBuf::from("/sys"),
        }
    }
}

/// The mapper for one backend.
pub fn mapper_for(backend: Backend, cfg: &MapperConfig) -> Box<dyn Mapper> {
    match backend {
        Backend::Krbd => Box::new(krbd::KrbdMapper::new(cfg)),
        Backend::Nbd => Box::new(nbd::NbdMapper::new(cfg)),
        Backend::Userspace => Box::new(userspace::UserspaceMapper::new(cfg)),
    }
}

/// Chooses a backend: `preferred` if given (it must be available), else the first
/// available of krbd, nbd, userspace.
pub fn select(preferred: Option<Backend>, cfg: &MapperConfig) -> Result<Box<dyn Mapper>> {
    if let Some(b) = preferred {
        let m = mapper_for(b, cfg);
        m.check_available()?;
        return Ok(m);
    }
    let mut reasons = Vec::new();
    for b in Backend::ALL {
        let m = mapper_for(b, cfg);
        match m.check_available() {
            Ok(()) => return Ok(m),
            Err(e) => reasons.push(e.to_string()),
        }
    }
    Err(DriverError::BackendUnavailable {
        backend: Backend::Userspace,
        reason: format!("no mapper backend is usable: {}", reasons.join("; ")),
    })
}

/// How many times [`list_all`] ran in this process.
static LIST_ALL_CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// How many times [`list_all`] (a scan of every backend's mappings) ran in this process:
/// for diagnostics and for tests that check how often a pass scans.
pub fn list_all_calls() -> u64 {
    LIST_ALL_CALLS.load(std::sync::atomic::Ordering::Relaxed)
}

/// Every local mapping of every available backend.
pub fn list_all(cfg: &MapperConfig) -> Result<Vec<Mapping>> {
    LIST_ALL_CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut all = Vec::new();
    for b in Backend::ALL {
        let m = mapper_for(b, cfg);
        if m.check_available().is_ok() {
            all.extend(m.list()?);
        }
    }
    Ok(all)
}

/// The local mappings of one image, found by image id (never by name).
pub fn find_by_image_id(
    cfg: &MapperConfig,
    pool: &str,
    namespace: &str,
    image_id: &str,
) -> Result<Vec<Mapping>> {
    Ok(list_all(cfg)?
        .into_iter()
        .filter(|m| m.is_image(pool, namespace, image_id))
        .collect())
}
