//! The cluster handle ([`Rados`]): connect, timeouts, version check, cluster-level queries.

use std::ffi::c_char;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::addr::AddrVec;
use crate::error::{Context, Error, Result, check};
use crate::ioctx::IoCtx;
use crate::sys;
use crate::util::{cstring, from_buf, grow_buffer, split_nul_list};

/// Minimum librbd version: 1.16.0 ships with Ceph 16.2 (Pacific).
pub const MIN_LIBRBD: (i32, i32, i32) = (1, 16, 0);
/// Minimum librados version (the C API's version; 3.0.0 since Ceph 12).
pub const MIN_LIBRADOS: (i32, i32, i32) = (3, 0, 0);

/// Client-side timeouts applied to every connection.
///
/// These bound every librados and librbd call: a call that cannot reach a mon or an OSD
/// fails with [`crate::ErrorKind::Timeout`] instead of blocking forever. Ceph's own defaults
/// are "wait forever" for OSD and mon ops, which is what makes a down cluster freeze other
/// tools; ours are finite. Each is applied in whole seconds, rounded up (at least 1 s);
/// one above [`MAX_TIMEOUT`] makes [`Rados::connect`] fail with `InvalidInput`, as does
/// a zero or endless value given through [`ConnectOptions::option`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// `rados_mon_op_timeout`: mon commands and map requests.
    pub mon_op: Duration,
    /// `rados_osd_op_timeout`: every OSD operation (object and image I/O).
    pub osd_op: Duration,
    /// `client_mount_timeout`: the initial connect and authentication.
    pub mount: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            mon_op: Duration::from_secs(10),
            osd_op: Duration::from_secs(30),
            mount: Duration::from_secs(10),
        }
    }
}

impl Timeouts {
    /// The same timeout for everything.
    pub fn uniform(d: Duration) -> Self {
        Self {
            mon_op: d,
            osd_op: d,
            mount: d,
        }
    }
}

/// How to connect: where the configuration comes from, who we are, and timeouts.
///
/// ```no_run
/// use rbd_core::{ConnectOptions, Rados};
/// let rados = Rados::connect(
///     &ConnectOptions::new()
///         .conf_file("/etc/ceph/ceph.conf")
///         .id("admin"),
/// )?;
/// # Ok::<(), rbd_core::Error>(())
/// ```
#[derive(Debug, Clone, Default)]
pub struct ConnectOptions {
    conf_file: Option<PathBuf>,
    no_conf_file: bool,
    skip_env: bool,
    id: Option<String>,
    name: Option<String>,
    mon_host: Option<String>,
    keyring: Option<PathBuf>,
    key: Option<String>,
    options: Vec<(String, String)>,
    timeouts: Timeouts,
    defer_librbd: bool,
}

impl ConnectOptions {
    /// Defaults: the conf file from `CEPH_CONF` or Ceph's search path, `CEPH_ARGS` applied,
    /// `client.admin`, and [`Timeouts::default`].
    pub fn new() -> Self {
        Self::default()
    }
    /// Reads this conf file instead of searching for one.
    pub fn conf_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.conf_file = Some(path.into());
        self
    }
    /// Reads no conf file at all (use with [`Self::mon_host`] and [`Self::key`]).
    pub fn no_conf_file(mut self) -> Self {
        self.no_conf_file = true;
        self
    }
    /// Ignores `CEPH_ARGS` (and `CEPH_CONF` unless [`Self::conf_file`] is given).
    pub fn skip_env(mut self) -> Self {
        self.skip_env = true;
        self
    }
    /// Client id, e.g. `admin` for `client.admin`.
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self.name = None;
        self
    }
    /// Full entity name, e.g. `client.docker`.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self.id = None;
        self
    }
    /// Monitor addresses (`mon_host`).
    pub fn mon_host(mut self, hosts: impl Into<String>) -> Self {
        self.mon_host = Some(hosts.into());
        self
    }
    /// Keyring file.
    pub fn keyring(mut self, path: impl Into<PathBuf>) -> Self {
        self.keyring = Some(path.into());
        self
    }
    /// The secret key itself (base64). Never logged.
    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }
    /// Any other configuration option, applied after the conf file, the environment and
    /// our defaults (e.g. `.option("rbd_cache", "true")` re-enables librbd's cache, which
    /// [`Rados::connect`] turns off).
    pub fn option(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.options.push((key.into(), value.into()));
        self
    }
    /// Client-side timeouts.
    pub fn timeouts(mut self, t: Timeouts) -> Self {
        self.timeouts = t;
        self
    }
    /// Does not load librbd at connect: it is loaded by the first librbd call instead
    /// (see [`crate::librbd`]), or by [`crate::librbd::load`], which reports a missing or
    /// too old librbd as an error. For a process that may never need it (the Docker plugin
    /// while idle uses RADOS only) this saves the ~5 MiB librbd takes once loaded; a
    /// librbd call before a successful `load` aborts the process if librbd is missing.
    pub fn defer_librbd(mut self) -> Self {
        self.defer_librbd = true;
        self
    }
    /// The timeouts these options will apply.
    pub fn get_timeouts(&self) -> Timeouts {
        self.timeouts
    }
}

/// Owner of one `rados_t`. Dropped exactly once, after every child (IoCtx, Image, watch)
/// that holds an `Arc` to it.
pub(crate) struct ClusterHandle {
    ptr: sys::rados_t,
    timeouts: Timeouts,
}

// SAFETY: a connected `rados_t` is a RadosClient whose methods lock internally; librados
// documents the cluster handle as safe to use from multiple threads. The pointer itself is
// only freed in Drop, which runs once when the last Arc goes away.
unsafe impl Send for ClusterHandle {}
// SAFETY: see Send; every method we call on a shared `rados_t` is thread-safe in librados.
unsafe impl Sync for ClusterHandle {}

impl Drop for ClusterHandle {
    fn drop(&mut self) {
        // SAFETY: `ptr` came from rados_create2 and is shut down exactly once, here. All
        // children hold an Arc to this handle, so none outlives it.
        unsafe { sys::rados_shutdown(self.ptr) };
    }
}

/// A connection to a Ceph cluster (`rados_t`).
///
/// Cheap to clone: clones share one connection. The connection closes
/// (`rados_shutdown`) when the last clone and the last child ([`IoCtx`], image, watch)
/// are dropped.
///
/// `Send + Sync`: librados' cluster handle is thread-safe.
#[derive(Clone)]
pub struct Rados {
    pub(crate) inner: Arc<ClusterHandle>,
}

impl std::fmt::Debug for Rados {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rados")
            .field("timeouts", &self.inner.timeouts)
            .finish_non_exhaustive()
    }
}

/// Runtime versions of the loaded libraries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LibVersions {
    /// librados (`rados_version`).
    pub librados: (i32, i32, i32),
    /// librbd (`rbd_version`).
    pub librbd: (i32, i32, i32),
}

/// Reads the runtime library versions (`rados_version`, `rbd_version`); loads librbd if
/// it is not loaded yet (and aborts if it cannot be: see [`crate::librbd::symbol`]).
pub fn lib_versions() -> LibVersions {
    let (mut a, mut b, mut c) = (0, 0, 0);
    // SAFETY: rados_version only writes three ints through valid pointers.
    unsafe { sys::rados_version(&mut a, &mut b, &mut c) };
    let (mut d, mut e, mut f) = (0, 0, 0);
    // SAFETY: rbd_version only writes three ints through valid pointers.
    unsafe { sys::rbd_version(&mut d, &mut e, &mut f) };
    LibVersions {
        librados: (a, b, c),
        librbd: (d, e, f),
    }
}

/// Fails with [`Error::UnsupportedVersion`] when the loaded librados is older than the
/// minimum (librbd's version is checked when it is loaded: [`crate::librbd::load`]).
fn check_librados_version() -> Result<()> {
    let (mut a, mut b, mut c) = (0, 0, 0);
    // SAFETY: rados_version only writes three ints through valid pointers.
    unsafe { sys::rados_version(&mut a, &mut b, &mut c) };
    check_versions(LibVersions {
        librados: (a, b, c),
        librbd: MIN_LIBRBD,
    })
}

/// Fails with [`Error::UnsupportedVersion`] when a library is older than the minimum.
pub fn check_versions(v: LibVersions) -> Result<()> {
    let fmt = |v: (i32, i32, i32)| format!("{}.{}.{}", v.0, v.1, v.2);
    if v.librados < MIN_LIBRADOS {
        return Err(Error::UnsupportedVersion {
            library: "librados",
            found: fmt(v.librados),
            required: fmt(MIN_LIBRADOS),
        });
    }
    if v.librbd < MIN_LIBRBD {
        return Err(Error::UnsupportedVersion {
            library: "librbd",
            found: fmt(v.librbd),
            required: fmt(MIN_LIBRBD),
        });
    }
    Ok(())
}

fn secs(d: Duration) -> String {
    // Ceph takes whole seconds for these options; round up so 500 ms is not "no timeout".
    let s = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    s.max(1).to_string()
}

impl Rados {
    /// Connects with the default options (`CEPH_CONF`, `CEPH_ARGS`, `client.admin`).
    pub fn connect_default() -> Result<Rados> {
        Self::connect(&ConnectOptions::new())
    }

    /// Connects to the cluster: `rados_create2`, `rados_conf_read_file`,
    /// `rados_conf_parse_env`, `rados_conf_set`, then `rados_connect`.
    ///
    /// Besides the [`Timeouts`], it sets two librbd options ([`ConnectOptions::option`]
    /// overrides them):
    ///
    /// * `rbd_cache = false`: librbd's default write-around cache acknowledges writes
    ///   early and can lose their errors (a fenced client's writes and flushes then all
    ///   "succeed"); without it every write reports its own outcome.
    /// * `rbd_disable_zero_copy_writes = true` (librbd's default, enforced): with zero-copy
    ///   aio writes, librbd 16.2 never completes a write that fails early (through a
    ///   read-only handle, or once the client is blocklisted), so the caller would hang.
    ///   An explicit option turning it off is refused with `InvalidInput`.
    ///
    /// Checks the librados version first, loads librbd ([`crate::librbd::load`], unless
    /// [`ConnectOptions::defer_librbd`]) and refuses anything older than Ceph 16.2.
    pub fn connect(opts: &ConnectOptions) -> Result<Rados> {
        check_librados_version()?;
        if !opts.defer_librbd {
            crate::librbd::load()?;
        }

        let name = match (&opts.name, &opts.id) {
            (Some(n), _) => n.clone(),
            (None, Some(id)) => format!("client.{id}"),
            (None, None) => {
                // CEPH_ARGS may carry --id/--name; rados_conf_parse_env cannot change the
                // name after create, so look for it here.
                let from_env = if opts.skip_env {
                    None
                } else {
                    std::env::var("CEPH_ARGS")
                        .ok()
                        .and_then(|a| name_from_args(&a))
                };
                from_env.unwrap_or_else(|| "client.admin".to_owned())
            }
        };
        if !name.contains('.') {
            return Err(Error::invalid(
                "entity name",
                &name,
                "expected TYPE.ID, e.g. client.admin",
            ));
        }
        let cname = cstring("entity name", &name)?;
        let cluster_name = cstring("cluster name", "ceph")?;

        let mut ptr: sys::rados_t = std::ptr::null_mut();
        // SAFETY: out-pointer is valid; the strings are NUL-terminated and outlive the call.
        let ret = unsafe { sys::rados_create2(&mut ptr, cluster_name.as_ptr(), cname.as_ptr(), 0) };
        check(ret, "rados_create2", Context::none)?;
        // From here on the handle is owned; Drop shuts it down on every error path.
        let handle = ClusterHandle {
            ptr,
            timeouts: opts.timeouts,
        };
        let rados = Rados {
            inner: Arc::new(handle),
        };

        if !opts.no_conf_file {
            let path = match &opts.conf_file {
                Some(p) => Some(cstring("conf file", &p.to_string_lossy())?),
                None => None,
            };
            if let Some(p) = &opts.conf_file
                && !p.is_file()
            {
                return Err(Error::invalid(
                    "conf file",
                    p.to_string_lossy(),
                    "does not exist or is not a file",
                ));
            }
            let p = path.as_ref().map_or(std::ptr::null(), |c| c.as_ptr());
            // SAFETY: the handle is valid and not yet connected; `p` is NULL (search
            // CEPH_CONF and the default paths) or a valid C string.
            let ret = unsafe { sys::rados_conf_read_file(rados.ptr(), p) };
            // With no explicit file, a missing default conf is fine if mon_host is given.
            if ret < 0 && (opts.conf_file.is_some() || opts.mon_host.is_none()) {
                check(ret, "rados_conf_read_file", Context::none)?;
            }
        }
        if !opts.skip_env {
            // SAFETY: valid handle; NULL means "read CEPH_ARGS".
            let ret = unsafe { sys::rados_conf_parse_env(rados.ptr(), std::ptr::null()) };
            check(ret, "rados_conf_parse_env", Context::none)?;
        }
        if let Some(m) = &opts.mon_host {
            rados.conf_set("mon_host", m)?;
        }
        if let Some(k) = &opts.keyring {
            rados.conf_set("keyring", &k.to_string_lossy())?;
        }
        if let Some(k) = &opts.key {
            rados.conf_set("key", k)?;
        }
        let t = opts.timeouts;
        rados.conf_set("rados_mon_op_timeout", &secs(t.mon_op))?;
        rados.conf_set("rados_osd_op_timeout", &secs(t.osd_op))?;
        rados.conf_set("client_mount_timeout", &secs(t.mount))?;
        // librbd's default write-around cache acknowledges writes before the OSD does and
        // reports their errors at the next flush, except that a flush issued once the
        // failed writes are no longer in flight returns success: a fenced client's writes
        // would then vanish while every call, fsync included, succeeds. Without the cache
        // each write completes when the OSD has it, and fails when it does not.
        rados.conf_set("rbd_cache", "false")?;
        // librbd copies every aio write; its zero-copy mode would save that copy, but in
        // 16.2 an aio write that fails early (read-only handle, fenced client) then never
        // completes: the caller would hang forever. Keep the copy (and refuse the option).
        rados.conf_set("rbd_disable_zero_copy_writes", "true")?;
        for (k, v) in &opts.options {
            rados.conf_set(k, v)?;
        }

        // SAFETY: valid, configured, not yet connected handle. Bounded by
        // client_mount_timeout set above.
        let ret = unsafe { sys::rados_connect(rados.ptr()) };
        check(ret, "rados_connect", Context::none)?;
        Ok(rados)
    }

    pub(crate) fn ptr(&self) -> sys::rados_t {
        self.inner.ptr
    }

    /// The timeouts this connection was made with.
    pub fn timeouts(&self) -> Timeouts {
        self.inner.timeouts
    }

    /// Sets a configuration option (`rados_conf_set`).
    ///
    /// Options that only matter at connect time have no effect afterwards.
    /// Refuses (`InvalidInput`, the option unchanged) settings that would let calls hang
    /// instead of failing:
    /// * `rbd_disable_zero_copy_writes = false` (see [`Rados::connect`]);
    /// * a `rados_osd_op_timeout`, `rados_mon_op_timeout` or `client_mount_timeout` of
    ///   zero (Ceph's "no timeout") or above [`MAX_TIMEOUT`]. The value is checked as Ceph
    ///   parsed it (`2m`, `1h 30m` and `90 s` are accepted forms), read back with
    ///   `rados_conf_get`.
    ///
    /// This applies to [`ConnectOptions::option`] too: those are set through here.
    pub fn conf_set(&self, key: &str, value: &str) -> Result<()> {
        refuse_hanging_option(key, value)?;
        let Some(name) = timeout_option(key) else {
            return self.conf_set_raw(key, value);
        };
        let before = self.conf_get(name)?;
        self.conf_set_raw(key, value)?;
        let now = self.conf_get(name)?;
        if let Err(e) = check_timeout_value(key, value, &now) {
            // Put the bound back: the handle must never be left without one.
            self.conf_set_raw(name, &before)?;
            return Err(e);
        }
        Ok(())
    }

    fn conf_set_raw(&self, key: &str, value: &str) -> Result<()> {
        let k = cstring("config option", key)?;
        let v = cstring("config value", value)?;
        // SAFETY: valid handle and C strings that outlive the call.
        let ret = unsafe { sys::rados_conf_set(self.ptr(), k.as_ptr(), v.as_ptr()) };
        check(ret, "rados_conf_set", || Context::none().with_object(key))?;
        Ok(())
    }

    /// Reads a configuration option (`rados_conf_get`).
    pub fn conf_get(&self, key: &str) -> Result<String> {
        let k = cstring("config option", key)?;
        let (buf, ret) = grow_buffer(256, |b, len| {
            // SAFETY: `b` is a writable buffer of `len` bytes; the key outlives the call.
            let r =
                unsafe { sys::rados_conf_get(self.ptr(), k.as_ptr(), b.as_mut_ptr().cast(), *len) };
            if r == -libc::ENAMETOOLONG {
                *len = b.len() * 4;
                return -libc::ERANGE;
            }
            r
        });
        check(ret, "rados_conf_get", || Context::none().with_object(key))?;
        Ok(from_buf(&buf))
    }

    /// The cluster's fsid (`rados_cluster_fsid`).
    pub fn fsid(&self) -> Result<String> {
        let mut buf = [0u8; 64];
        // SAFETY: `buf` is writable for its whole length.
        let ret =
            unsafe { sys::rados_cluster_fsid(self.ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        check(ret, "rados_cluster_fsid", Context::none)?;
        Ok(from_buf(&buf))
    }

    /// This client's own addresses (`rados_getaddrs`): what to blocklist to fence us.
    pub fn getaddrs(&self) -> Result<AddrVec> {
        let mut out: *mut c_char = std::ptr::null_mut();
        // SAFETY: valid handle; librados stores a malloc'd string in `out`.
        let ret = unsafe { sys::rados_getaddrs(self.ptr(), &mut out) };
        check(ret, "rados_getaddrs", Context::none)?;
        // SAFETY: on success `out` is a NUL-terminated string from strdup.
        let s = unsafe { crate::util::from_cstr(out) };
        // SAFETY: `out` was allocated with malloc by librados and is freed once here.
        unsafe { libc::free(out.cast()) };
        s.parse()
    }

    /// This client's global instance id (`rados_get_instance_id`), as in `client.4123`.
    pub fn instance_id(&self) -> u64 {
        // SAFETY: valid connected handle; the call only reads.
        unsafe { sys::rados_get_instance_id(self.ptr()) }
    }

    /// Waits until we have the latest OSD map (`rados_wait_for_latest_osdmap`), e.g. after
    /// a blocklist change, so the next op sees it. Bounded by the mon op timeout.
    pub fn wait_for_latest_osdmap(&self) -> Result<()> {
        // SAFETY: valid connected handle.
        let ret = unsafe { sys::rados_wait_for_latest_osdmap(self.ptr()) };
        check(ret, "rados_wait_for_latest_osdmap", Context::none)?;
        Ok(())
    }

    /// Names of all pools (`rados_pool_list`).
    pub fn pool_list(&self) -> Result<Vec<String>> {
        let mut cap = 1024usize;
        loop {
            let mut buf = vec![0u8; cap];
            // SAFETY: `buf` is writable for `cap` bytes; librados returns the needed length.
            let ret = unsafe { sys::rados_pool_list(self.ptr(), buf.as_mut_ptr().cast(), cap) };
            let needed = check(ret, "rados_pool_list", Context::none)? as usize;
            if needed <= cap {
                buf.truncate(needed);
                return Ok(split_nul_list(&buf));
            }
            cap = needed;
        }
    }

    /// The id of a pool by name (`rados_pool_lookup`); `NotFound` when absent.
    pub fn pool_lookup(&self, pool: &str) -> Result<i64> {
        let p = cstring("pool name", pool)?;
        // SAFETY: valid handle and C string.
        let ret = unsafe { sys::rados_pool_lookup(self.ptr(), p.as_ptr()) };
        if ret < 0 {
            let errno = i32::try_from(-ret).unwrap_or(libc::EIO);
            return Err(Error::from_errno(
                "rados_pool_lookup",
                errno,
                Context::pool(pool),
            ));
        }
        Ok(ret)
    }

    /// The name of a pool by id (`rados_pool_reverse_lookup`).
    pub fn pool_reverse_lookup(&self, id: i64) -> Result<String> {
        let mut buf = vec![0u8; 256];
        // SAFETY: `buf` is writable for its length.
        let ret = unsafe {
            sys::rados_pool_reverse_lookup(self.ptr(), id, buf.as_mut_ptr().cast(), buf.len())
        };
        check(ret, "rados_pool_reverse_lookup", || {
            Context::pool(format!("#{id}"))
        })?;
        Ok(from_buf(&buf))
    }

    /// Creates a pool (`rados_pool_create`).
    pub fn pool_create(&self, pool: &str) -> Result<()> {
        let p = cstring("pool name", pool)?;
        // SAFETY: valid handle and C string.
        let ret = unsafe { sys::rados_pool_create(self.ptr(), p.as_ptr()) };
        check(ret, "rados_pool_create", || Context::pool(pool))?;
        Ok(())
    }

    /// Deletes a pool (`rados_pool_delete`). Needs `mon_allow_pool_delete`.
    pub fn pool_delete(&self, pool: &str) -> Result<()> {
        let p = cstring("pool name", pool)?;
        // SAFETY: valid handle and C string.
        let ret = unsafe { sys::rados_pool_delete(self.ptr(), p.as_ptr()) };
        check(ret, "rados_pool_delete", || Context::pool(pool))?;
        Ok(())
    }

    /// Opens an I/O context on a pool by name (`rados_ioctx_create`).
    pub fn ioctx(&self, pool: &str) -> Result<IoCtx> {
        IoCtx::create(self, pool)
    }

    /// Opens an I/O context on a pool by id (`rados_ioctx_create2`).
    pub fn ioctx_by_id(&self, pool_id: i64) -> Result<IoCtx> {
        IoCtx::create_by_id(self, pool_id)
    }
}

/// The longest value accepted for the timeout options (`rados_osd_op_timeout`,
/// `rados_mon_op_timeout`, `client_mount_timeout`): one day. Anything longer is "forever"
/// for every practical purpose, and a call must never hang forever.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// The options that bound librados/librbd calls, for which Ceph reads 0 as "no timeout".
const TIMEOUT_OPTIONS: [&str; 3] = [
    "rados_osd_op_timeout",
    "rados_mon_op_timeout",
    "client_mount_timeout",
];

/// A config key in Ceph's canonical form (`rados osd-op timeout` -> `rados_osd_op_timeout`).
fn canonical_option(key: &str) -> String {
    key.trim().replace(['-', ' '], "_")
}

/// The canonical name, when `key` is one of [`TIMEOUT_OPTIONS`].
fn timeout_option(key: &str) -> Option<&'static str> {
    let k = canonical_option(key);
    TIMEOUT_OPTIONS.into_iter().find(|o| *o == k)
}

/// The error for an unusable timeout option value.
fn timeout_refused(key: &str, value: &str, why: &str) -> Error {
    Error::invalid(
        "config option",
        format!("{key}={value}"),
        format!(
            "{why}; rbd-core bounds every call, so a timeout option must be between 1 s and \
             {} s",
            MAX_TIMEOUT.as_secs()
        ),
    )
}

const NO_TIMEOUT: &str = "0 means \"no timeout\" to Ceph: calls could hang forever";

/// Checks a timeout option's value as Ceph parsed it (`effective`: whole seconds, from
/// `rados_conf_get`): it must be at least 1 s and at most [`MAX_TIMEOUT`].
fn check_timeout_value(key: &str, value: &str, effective: &str) -> Result<()> {
    match effective.trim().parse::<u64>() {
        Ok(0) => Err(timeout_refused(key, value, NO_TIMEOUT)),
        Ok(s) if s > MAX_TIMEOUT.as_secs() => Err(timeout_refused(
            key,
            value,
            &format!("{s} s is effectively no timeout"),
        )),
        Ok(_) => Ok(()),
        Err(_) => Err(timeout_refused(
            key,
            value,
            &format!("Ceph reads it as {effective:?}, not a number of seconds"),
        )),
    }
}

/// Refuses configuration that makes calls hang instead of failing, where the text alone
/// shows it:
/// * zero-copy aio writes (`rbd_disable_zero_copy_writes = false`), whose early failures
///   never complete in librbd 16.2 (verified: a write through a read-only handle, or by a
///   blocklisted client);
/// * a timeout option (see [`TIMEOUT_OPTIONS`]) given as a plain number that is zero,
///   negative, not a number or above [`MAX_TIMEOUT`] (`inf` included). Other forms (`2m`,
///   `1h 30m`) are checked once Ceph has parsed them, in [`Rados::conf_set`].
fn refuse_hanging_option(key: &str, value: &str) -> Result<()> {
    if timeout_option(key).is_some()
        && let Ok(secs) = value.trim().parse::<f64>()
    {
        if secs.is_nan() || secs <= 0.0 {
            return Err(timeout_refused(key, value, NO_TIMEOUT));
        }
        if secs > MAX_TIMEOUT.as_secs_f64() {
            return Err(timeout_refused(key, value, "effectively no timeout"));
        }
    }
    let k = canonical_option(key);
    let off = matches!(
        value.trim().to_ascii_lowercase().as_str(),
        "false" | "0" | "no" | "off"
    );
    if k == "rbd_disable_zero_copy_writes" && off {
        return Err(Error::invalid(
            "config option",
            format!("{key}={value}"),
            "zero-copy aio writes never complete when they fail early in librbd 16.2 \
             (read-only handle, blocklisted client), so rbd-core keeps librbd's copy",
        ));
    }
    Ok(())
}

/// Extracts `--id X`, `--id=X`, `-i X`, `--name N`, `-n N` from a `CEPH_ARGS` string.
fn name_from_args(args: &str) -> Option<String> {
    let words: Vec<&str> = args.split_whitespace().collect();
    let mut i = 0;
    let mut found = None;
    while i < words.len() {
        let w = words[i];
        let next = words.get(i + 1).copied();
        if let Some(v) = w
            .strip_prefix("--id=")
            .or_else(|| w.strip_prefix("--user="))
        {
            found = Some(format!("client.{v}"));
        } else if let Some(v) = w.strip_prefix("--name=") {
            found = Some(v.to_owned());
        } else if matches!(w, "--id" | "-i" | "--user") {
            found = next.map(|v| format!("client.{v}"));
            i += 1;
        } else if matches!(w, "--name" | "-n") {
            found = next.map(str::to_owned);
            i += 1;
        }
        i += 1;
    }
    found
}

/// Runs a blocking closure with a deadline on a helper thread.
///
/// rbd-core's own calls do not need it and do not use it: each is bounded by the
/// connection's [`Timeouts`] (`rados_osd_op_timeout`, `rados_mon_op_timeout`,
/// `client_mount_timeout`, which [`Rados::conf_set`] never lets be "no timeout"), and the
/// fencing and timeout tests check that calls fail within them. This is for callers that
/// want a hard wall-clock bound of their own on a call or a group of calls (a daemon's
/// shutdown path, a test that must fail rather than hang if a bound ever broke).
///
/// On timeout the caller gets [`Error::Timeout`] at once; the helper thread finishes (or
/// not) in the background and its result is dropped. The closure must therefore own
/// everything it touches.
pub fn with_deadline<T, F>(op: &'static str, ctx: Context, timeout: Duration, f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T> + Send + 'static,
{
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    std::thread::Builder::new()
        .name(format!("rbd-core:{op}"))
        .spawn(move || {
            let _ = tx.send(f());
        })
        .map_err(|e| {
            Error::from_errno(op, e.raw_os_error().unwrap_or(libc::EAGAIN), ctx.clone())
        })?;
    match rx.recv_timeout(timeout) {
        Ok(r) => r,
        Err(_) => Err(Error::Timeout {
            op,
            ctx: Box::new(ctx),
            timeout,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hanging_options_are_refused() {
        let e = refuse_hanging_option("rbd disable zero copy writes", "False").unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::InvalidInput);
        assert!(e.to_string().contains("never complete"), "{e}");
        assert!(refuse_hanging_option("rbd-disable-zero-copy-writes", "0").is_err());
        assert!(refuse_hanging_option("rbd_disable_zero_copy_writes", "true").is_ok());
        assert!(refuse_hanging_option("rbd_cache", "false").is_ok());
    }

    #[test]
    fn zero_and_endless_timeouts_are_refused() {
        for key in [
            "rados_osd_op_timeout",
            "rados mon op timeout",
            "client-mount-timeout",
        ] {
            for v in ["0", " 0 ", "0.0", "-5", "inf", "NaN", "86401", "1e12"] {
                let e = refuse_hanging_option(key, v).unwrap_err();
                assert_eq!(e.kind(), crate::ErrorKind::InvalidInput, "{key}={v}");
                let msg = e.to_string();
                assert!(msg.contains(&format!("{key}={v}")), "{msg}");
                assert!(msg.contains("between 1 s and 86400 s"), "{msg}");
            }
            for v in ["1", "30", "86400", "2m", "1h 30m", "0s"] {
                // (Unit forms are checked after Ceph parsed them, in conf_set.)
                refuse_hanging_option(key, v).unwrap();
            }
        }
        // Other options with a zero are none of our business.
        refuse_hanging_option("rbd_cache_size", "0").unwrap();
        refuse_hanging_option("osd_op_timeout", "0").unwrap();
    }

    #[test]
    fn parsed_timeouts_are_checked() {
        assert!(check_timeout_value("client_mount_timeout", "1", "1").is_ok());
        assert!(check_timeout_value("client_mount_timeout", "1d", "86400").is_ok());
        let e = check_timeout_value("rados_osd_op_timeout", "0s", "0").unwrap_err();
        assert!(e.to_string().contains("no timeout"), "{e}");
        let e = check_timeout_value("rados_osd_op_timeout", "2d", "172800").unwrap_err();
        assert!(
            e.to_string().contains("172800 s is effectively no timeout"),
            "{e}"
        );
        assert!(check_timeout_value("rados_osd_op_timeout", "x", "x").is_err());
    }

    #[test]
    fn name_from_ceph_args() {
        assert_eq!(name_from_args("--id foo"), Some("client.foo".into()));
        assert_eq!(name_from_args("--id=bar -c x"), Some("client.bar".into()));
        assert_eq!(name_from_args("-n client.x"), Some("client.x".into()));
        assert_eq!(name_from_args("--keyring k"), None);
    }

    #[test]
    fn versions_enforced() {
        let ok = LibVersions {
            librados: (3, 0, 0),
            librbd: (1, 16, 0),
        };
        assert!(check_versions(ok).is_ok());
        let old = LibVersions {
            librados: (3, 0, 0),
            librbd: (1, 15, 0),
        };
        let e = check_versions(old).unwrap_err();
        assert!(e.to_string().contains("librbd 1.15.0 is too old"), "{e}");
        assert!(check_versions(lib_versions()).is_ok());
    }

    #[test]
    fn timeout_seconds_round_up() {
        assert_eq!(secs(Duration::from_millis(500)), "1");
        assert_eq!(secs(Duration::from_millis(1500)), "2");
        assert_eq!(secs(Duration::from_secs(0)), "1");
    }

    #[test]
    fn deadline_fires() {
        let r: Result<()> =
            with_deadline("sleep", Context::none(), Duration::from_millis(50), || {
                std::thread::sleep(Duration::from_secs(2));
                Ok(())
            });
        assert_eq!(r.unwrap_err().kind(), crate::ErrorKind::Timeout);
    }
}
