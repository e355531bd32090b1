//! The rbd-nbd backend: Debian's `rbd-nbd` serving an image over the kernel's nbd driver.
//!
//! **Map**: `rbd-nbd map --id ID -c CONF [--keyring K] --admin-socket <run_dir>/nbd/<token>.asok
//! [--read-only] [--exclusive] [--io-timeout N] pool/[ns/]image[@snap]` (the keyring is
//! passed as a path, never the key). `rbd-nbd` prints the device and daemonizes. We then
//! ask the daemon, through its admin socket, which **image id** it opened (its header
//! watch `rbd_header.<id>`, or its `librbd-<id>-...` perf counters for read-only opens);
//! if it is not the requested id, the device is unmapped again and the map fails. The
//! daemon's client address is the one watcher of the image that appeared during the map
//! (`rbd status` before and after); when that is ambiguous (several new watchers, or a
//! read-only mapping that does not watch), it is left `None`.
//!
//! Maps are serialized on the host (`<run_dir>/nbd/map.lock`) so that concurrent maps of
//! one image by this driver cannot make the watcher difference ambiguous.
//!
//! **Records**: `<run_dir>/nbd/<nbdN>.json` holds the image id, client address and admin
//! socket of each mapping we made. **List** runs `rbd-nbd list-mapped --format json` and
//! joins it with the records on device **and** pid; a mapping without a record (made by
//! hand, or the record was lost) gets its image id from its admin socket when its command
//! line names one, else an empty image id (unknown, so never matched by id).
//!
//! **Unmap**: after checking the device still serves the same process and image id,
//! without `force` refuse when the device (or a partition) is mounted, held, or open by
//! any process other than its rbd-nbd; then `rbd-nbd unmap /dev/nbdX` and wait for the
//! daemon to exit (with `force`, `SIGTERM` then `SIGKILL` if it does not).
//!
//! Every command runs with a timeout; its stderr ends up in [`DriverError::Command`].

mod asok;
mod cmd;
mod record;

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rbd_core::EntityAddr;

use self::cmd::Cmd;
use self::record::{Listed, Record};
use super::{Backend, MapRequest, Mapper, MapperConfig, Mapping};
use crate::error::{DriverError, Result};

/// The rbd-nbd backend.
#[derive(Debug, Clone)]
pub struct NbdMapper {
    cfg: MapperConfig,
    map_timeout: Duration,
    cmd_timeout: Duration,
    exit_wait: Duration,
}

/// Longest admin socket path we hand out (`sun_path` is 108 bytes).
const MAX_SOCKET_PATH: usize = 100;

impl NbdMapper {
    /// A mapper with these host settings.
    pub fn new(cfg: &MapperConfig) -> Self {
        Self {
            cfg: cfg.clone(),
            map_timeout: Duration::from_secs(60),
            cmd_timeout: Duration::from_secs(30),
            exit_wait: Duration::from_secs(30),
        }
    }

    /// Sets the deadline of `rbd-nbd map` (default 60 s) and of every other command
    /// (`list-mapped`, `unmap`, `rbd status`; default 30 s).
    pub fn with_timeouts(mut self, map: Duration, other: Duration) -> Self {
        self.map_timeout = map;
        self.cmd_timeout = other;
        self
    }

    fn records_dir(&self) -> PathBuf {
        self.cfg.run_dir.join("nbd")
    }

    fn rbd_nbd(&self) -> &Path {
        &self.cfg.rbd_nbd_bin
    }

    /// The `rbd` CLI: next to `rbd-nbd` when that is a path, else from `$PATH`.
    fn rbd_cli(&self) -> PathBuf {
        if let Some(dir) = self.cfg.rbd_nbd_bin.parent()
            && !dir.as_os_str().is_empty()
        {
            let p = dir.join("rbd");
            if p.is_file() {
                return p;
            }
        }
        PathBuf::from("rbd")
    }

    fn auth_args(req: &MapRequest) -> Vec<std::ffi::OsString> {
        let id = req.auth.id.strip_prefix("client.").unwrap_or(&req.auth.id);
        let mut v: Vec<std::ffi::OsString> = vec![
            "--id".into(),
            id.into(),
            "-c".into(),
            req.auth.conf.clone().into_os_string(),
        ];
        if let Some(k) = &req.auth.keyring {
            v.push("--keyring".into());
            v.push(k.clone().into_os_string());
        }
        v
    }

    fn map_err(req: &MapRequest, reason: impl Into<String>) -> DriverError {
        DriverError::Map {
            backend: Backend::Nbd,
            image: req.spec(),
            reason: reason.into(),
        }
    }

    /// `rbd-nbd list-mapped --format json`.
    fn list_mapped(&self) -> Result<Vec<Listed>> {
        let cmd =
            Cmd::new(self.rbd_nbd(), self.cmd_timeout).args(["list-mapped", "--format", "json"]);
        let out = cmd.run_ok()?;
        record::parse_list_mapped(&out.stdout).map_err(|why| DriverError::Command {
            command: cmd.display(),
            status: "unexpected output".into(),
            stderr: format!("{why}: {}", out.stdout.trim()),
        })
    }

    /// The image's watchers (`rbd status --format json`).
    fn watchers(&self, req: &MapRequest) -> Result<Vec<EntityAddr>> {
        let spec = super::image_spec(&req.pool, &req.namespace, &req.image, None);
        let out = Cmd::new(self.rbd_cli(), self.cmd_timeout)
            .args(["status", "--format", "json"])
            .args(Self::auth_args(req))
            .arg(&spec)
            .run_ok()?;
        let v: serde_json::Value =
            serde_json::from_str(out.stdout.trim()).map_err(|e| DriverError::Command {
                command: format!("rbd status {spec}"),
                status: "unexpected output".into(),
                stderr: e.to_string(),
            })?;
        Ok(v.get("watchers")
            .and_then(|w| w.as_array())
            .into_iter()
            .flatten()
            .filter_map(|w| w.get("address").and_then(|a| a.as_str()))
            .filter_map(|a| a.parse().ok())
            .collect())
    }

    /// The image id the name points to now (`rbd info --format json`).
    fn image_id_by_name(&self, req: &MapRequest) -> Result<String> {
        let spec = super::image_spec(&req.pool, &req.namespace, &req.image, None);
        let cmd = Cmd::new(self.rbd_cli(), self.cmd_timeout)
            .args(["info", "--format", "json"])
            .args(Self::auth_args(req))
            .arg(&spec);
        let out = cmd.run_ok()?;
        serde_json::from_str::<serde_json::Value>(out.stdout.trim())
            .ok()
            .and_then(|v| v.get("id").and_then(|i| i.as_str()).map(str::to_owned))
            .ok_or_else(|| DriverError::Command {
                command: cmd.display(),
                status: "unexpected output".into(),
                stderr: format!("no image id in: {}", out.stdout.trim()),
            })
    }

    /// Checks that the daemon serves `req.image_id`.
    fn verify_image_id(&self, req: &MapRequest, asok: Option<&Path>) -> Result<()> {
        let mismatch = |ids: &[String], how: &str| {
            Self::map_err(
                req,
                format!(
                    "rbd-nbd opened image id {} ({how}), not the requested {:?}: the name now \
                     refers to another image",
                    ids.join(","),
                    req.image_id
                ),
            )
        };
        if let Some(asok) = asok {
            match asok::served_image_ids(asok, Duration::from_secs(5)) {
                Ok(ids) if ids.contains(&req.image_id) => return Ok(()),
                Ok(ids) if !ids.is_empty() => return Err(mismatch(&ids, "from its admin socket")),
                // No answer: fall back to asking the cluster by name.
                _ => {}
            }
        }
        let id = self.image_id_by_name(req)?;
        if id == req.image_id {
            Ok(())
        } else {
            Err(mismatch(&[id], "by name, from rbd info"))
        }
    }

    /// The pid serving `/dev/nbdN` (`/sys/block/nbdN/pid`), waiting briefly for it.
    fn serving_pid(&self, device: &Path) -> Option<u32> {
        let name = device.file_name()?.to_str()?;
        let path = self.cfg.sysfs.join("block").join(name).join("pid");
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(p) = std::fs::read_to_string(&path)
                .ok()
                .and_then(|s| s.trim().parse().ok())
            {
                return Some(p);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The nbd device served by the rbd-nbd whose command line names `asok`.
    fn find_by_asok(&self, asok: &Path) -> Option<(PathBuf, u32)> {
        let rd = std::fs::read_dir(self.cfg.sysfs.join("block")).ok()?;
        for ent in rd.flatten() {
            let name = ent.file_name().to_string_lossy().into_owned();
            if !name.starts_with("nbd") {
                continue;
            }
            let Some(pid) = std::fs::read_to_string(ent.path().join("pid"))
                .ok()
                .and_then(|s| s.trim().parse::<u32>().ok())
            else {
                continue;
            };
            if process_asok(pid).as_deref() == Some(asok) {
                return Some((PathBuf::from("/dev").join(name), pid));
            }
        }
        None
    }

    /// Undoes a half-made mapping: unmaps the device of the daemon using `asok`, if any.
    fn cleanup(&self, asok: Option<&Path>, device: Option<&Path>, pid: Option<u32>) {
        let found = match (device, pid) {
            (Some(d), p) => Some((d.to_path_buf(), p)),
            (None, _) => asok
                .and_then(|a| self.find_by_asok(a))
                .map(|(d, p)| (d, Some(p))),
        };
        if let Some((dev, pid)) = found {
            let _ = Cmd::new(self.rbd_nbd(), self.cmd_timeout)
                .arg("unmap")
                .arg(&dev)
                .run();
            if let Some(pid) = pid
                && !wait_exit(pid, Duration::from_secs(10))
            {
                terminate(pid);
            }
            record::remove(&self.records_dir(), &dev);
        }
        if let Some(a) = asok {
            let _ = std::fs::remove_file(a);
        }
    }

    /// Why `/dev/nbdN` cannot be unmapped without force, if it cannot.
    fn in_use(&self, device: &Path, serving_pid: u32) -> Option<String> {
        let name = device.file_name()?.to_str()?.to_owned();
        let block = self.cfg.sysfs.join("block").join(&name);
        // The disk and its partitions.
        let mut devs: Vec<(String, u64)> = Vec::new();
        let mut add = |dir: &Path| {
            if let Ok(s) = std::fs::read_to_string(dir.join("dev"))
                && let Some((a, b)) = s.trim().split_once(':')
                && let (Ok(a), Ok(b)) = (a.parse::<u64>(), b.parse::<u64>())
            {
                devs.push((format!("{a}:{b}"), nix::sys::stat::makedev(a, b)));
            }
        };
        add(&block);
        if let Ok(rd) = std::fs::read_dir(&block) {
            for ent in rd.flatten() {
                let n = ent.file_name().to_string_lossy().into_owned();
                if n.starts_with(&name) && n != name {
                    add(&ent.path());
                }
            }
        }
        if devs.is_empty() {
            return None;
        }
        // Mounted?
        if let Ok(mi) = std::fs::read_to_string("/proc/self/mountinfo") {
            for line in mi.lines() {
                let f: Vec<&str> = line.split(' ').collect();
                if f.len() > 4 && devs.iter().any(|(mm, _)| mm == f[2]) {
                    return Some(format!("{} is mounted at {}", device.display(), f[4]));
                }
            }
        }
        // Held by another block device (dm, md)?
        if let Ok(rd) = std::fs::read_dir(block.join("holders"))
            && let Some(h) = rd.flatten().next()
        {
            return Some(format!(
                "{} is held by {}",
                device.display(),
                h.file_name().to_string_lossy()
            ));
        }
        // Open by a process other than its server?
        let me = std::process::id();
        let procs = std::fs::read_dir("/proc").ok()?;
        for p in procs.flatten() {
            let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if pid == serving_pid || pid == me {
                continue;
            }
            let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else {
                continue;
            };
            for fd in fds.flatten() {
                if let Ok(md) = std::fs::metadata(fd.path())
                    && md.file_type().is_block_device()
                    && devs.iter().any(|(_, d)| *d == md.rdev())
                {
                    let comm = std::fs::read_to_string(p.path().join("comm")).unwrap_or_default();
                    return Some(format!(
                        "{} is open by pid {pid} ({})",
                        device.display(),
                        comm.trim()
                    ));
                }
            }
        }
        None
    }

    /// A mapping from a listed entry, with what we recorded or can find out.
    fn mapping_of(&self, l: Listed, records: &[Record]) -> Mapping {
        if let Some(r) = records.iter().find(|r| r.matches(&l)) {
            return Mapping {
                backend: Backend::Nbd,
                pool: l.pool,
                namespace: l.namespace,
                image: l.image,
                image_id: r.image_id.clone(),
                snap: l.snap,
                device: l.device,
                client_addr: r.client_addr,
                read_only: r.read_only,
                pid: Some(l.pid),
            };
        }
        // Not ours, or the record is lost: ask the daemon if its command line names an
        // admin socket. Otherwise the image id is unknown (empty).
        let image_id = process_asok(l.pid)
            .and_then(|a| asok::served_image_ids(&a, Duration::from_secs(5)).ok())
            .filter(|ids| ids.len() == 1)
            .and_then(|mut ids| ids.pop())
            .unwrap_or_default();
        let ro = l
            .device
            .file_name()
            .and_then(|n| {
                std::fs::read_to_string(self.cfg.sysfs.join("block").join(n).join("ro")).ok()
            })
            .is_some_and(|s| s.trim() == "1");
        Mapping {
            backend: Backend::Nbd,
            read_only: ro || l.snap.is_some(),
            pool: l.pool,
            namespace: l.namespace,
            image: l.image,
            image_id,
            snap: l.snap,
            device: l.device,
            client_addr: None,
            pid: Some(l.pid),
        }
    }
}

/// Takes an exclusive lock on `path` (created if needed); released when dropped.
fn lock(path: &Path) -> Result<std::fs::File> {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|e| DriverError::io(format!("opening {}", path.display()), e))?;
    f.lock()
        .map_err(|e| DriverError::io(format!("locking {}", path.display()), e))?;
    Ok(f)
}

static TOKEN_SEQ: AtomicU64 = AtomicU64::new(0);

/// A token unique on this host: pid, time, sequence.
fn unique_token() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() % 1_000_000_000_000)
        .unwrap_or(0);
    format!(
        "{}-{nanos}-{}",
        std::process::id(),
        TOKEN_SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

/// The `--admin-socket` of a process, from `/proc/PID/cmdline`.
fn process_asok(pid: u32) -> Option<PathBuf> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let args: Vec<String> = raw
        .split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    admin_socket_arg(&args)
}

/// The value of `--admin-socket` / `--admin_socket` (`X` or `=X`) in an argument list.
fn admin_socket_arg(args: &[String]) -> Option<PathBuf> {
    let mut it = args.iter();
    while let Some(a) = it.next() {
        for flag in ["--admin-socket", "--admin_socket"] {
            if a == flag {
                return it.next().filter(|v| !v.is_empty()).map(PathBuf::from);
            }
            if let Some(v) = a.strip_prefix(flag).and_then(|r| r.strip_prefix('=')) {
                return (!v.is_empty()).then(|| PathBuf::from(v));
            }
        }
    }
    None
}

fn alive(pid: u32) -> bool {
    // A zombie has exited; only its parent's wait is missing.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s
            .rsplit_once(") ")
            .map(|(_, rest)| !rest.starts_with('Z'))
            .unwrap_or(true),
        Err(_) => false,
    }
}

fn wait_exit(pid: u32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while alive(pid) {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

/// SIGTERM (rbd-nbd then disconnects and exits), then SIGKILL after 10 s.
fn terminate(pid: u32) {
    use nix::sys::signal::{Signal, kill};
    let Ok(p) = i32::try_from(pid) else { return };
    let p = nix::unistd::Pid::from_raw(p);
    let _ = kill(p, Signal::SIGTERM);
    if !wait_exit(pid, Duration::from_secs(10)) {
        let _ = kill(p, Signal::SIGKILL);
        let _ = wait_exit(pid, Duration::from_secs(5));
    }
}

fn validate(req: &MapRequest) -> Result<()> {
    let check = |what: &'static str, v: &str, allow_empty: bool| -> Result<()> {
        if v.is_empty() && !allow_empty {
            return Err(DriverError::invalid(what, v, "must not be empty"));
        }
        if let Some(c) = v
            .chars()
            .find(|c| c.is_control() || c.is_whitespace() || matches!(c, '/' | '@'))
        {
            return Err(DriverError::invalid(
                what,
                v,
                format!("contains the character {c:?}"),
            ));
        }
        Ok(())
    };
    check("pool name", &req.pool, false)?;
    check("namespace", &req.namespace, true)?;
    check("image name", &req.image, false)?;
    if let Some(s) = &req.snap {
        check("snapshot name", s, false)?;
    }
    if req.image_id.is_empty() || !req.image_id.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Err(DriverError::invalid(
            "image id",
            &req.image_id,
            "expected the image's id (alphanumeric), which the mapping is checked against",
        ));
    }
    let id = req.auth.id.strip_prefix("client.").unwrap_or(&req.auth.id);
    if id.is_empty()
        || id.starts_with('-')
        || id.chars().any(|c| c.is_control() || c.is_whitespace())
    {
        return Err(DriverError::invalid(
            "client id",
            &req.auth.id,
            "not a valid id",
        ));
    }
    Ok(())
}

/// `/dev/nbdN` -> N.
fn nbd_index(device: &Path) -> Option<u32> {
    if device.parent() != Some(Path::new("/dev")) {
        return None;
    }
    device
        .file_name()?
        .to_str()?
        .strip_prefix("nbd")?
        .parse()
        .ok()
}

impl Mapper for NbdMapper {
    fn backend(&self) -> Backend {
        Backend::Nbd
    }

    fn check_available(&self) -> Result<()> {
        let unavailable = |reason: String| DriverError::BackendUnavailable {
            backend: Backend::Nbd,
            reason,
        };
        let module = self.cfg.sysfs.join("module/nbd");
        if !module.exists() && !Path::new("/dev/nbd0").exists() {
            return Err(unavailable(format!(
                "the nbd kernel module is not loaded ({} and /dev/nbd0 are missing; modprobe nbd)",
                module.display()
            )));
        }
        if cmd::which(self.rbd_nbd()).is_none() {
            return Err(unavailable(format!(
                "{} is not installed (not found or not executable)",
                self.rbd_nbd().display()
            )));
        }
        Ok(())
    }

    fn map(&self, req: &MapRequest) -> Result<Mapping> {
        validate(req)?;
        self.check_available()?;
        let dir = self.records_dir();
        std::fs::create_dir_all(&dir)
            .map_err(|e| DriverError::io(format!("creating {}", dir.display()), e))?;
        let asok = Some(dir.join(format!("{}.asok", unique_token())))
            .filter(|p| p.as_os_str().len() <= MAX_SOCKET_PATH);
        // One map at a time on this host, so the one new watcher is ours.
        let _lock = lock(&dir.join("map.lock"))?;

        // Watchers before, to tell the daemon's address afterwards. Best effort.
        let before = self.watchers(req).ok();

        let mut cmd = Cmd::new(self.rbd_nbd(), self.map_timeout)
            .arg("map")
            .args(Self::auth_args(req));
        if let Some(a) = &asok {
            cmd = cmd.arg("--admin-socket").arg(a);
        }
        if req.read_only || req.snap.is_some() {
            cmd = cmd.arg("--read-only");
        }
        if req.exclusive {
            cmd = cmd.arg("--exclusive");
        }
        if let Some(t) = req.options.io_timeout_secs {
            cmd = cmd.arg("--io-timeout").arg(t.to_string());
        }
        cmd = cmd.arg(req.spec());
        let out = match cmd.run() {
            Ok(o) => o,
            Err(e) => {
                self.cleanup(asok.as_deref(), None, None);
                return Err(e);
            }
        };
        if !out.status.success() {
            self.cleanup(asok.as_deref(), None, None);
            return Err(cmd.failed(&out));
        }
        let Some(device) = out
            .stdout
            .lines()
            .map(str::trim)
            .find(|l| l.starts_with("/dev/nbd"))
            .map(PathBuf::from)
        else {
            self.cleanup(asok.as_deref(), None, None);
            return Err(Self::map_err(
                req,
                format!("rbd-nbd printed no device: {:?}", out.stdout.trim()),
            ));
        };
        let pid = self.serving_pid(&device).or_else(|| {
            self.list_mapped()
                .ok()?
                .into_iter()
                .find(|l| l.device == device)
                .map(|l| l.pid)
        });
        let Some(pid) = pid else {
            self.cleanup(asok.as_deref(), Some(&device), None);
            return Err(Self::map_err(
                req,
                format!(
                    "no rbd-nbd process serves {} after mapping",
                    device.display()
                ),
            ));
        };
        if let Err(e) = self.verify_image_id(req, asok.as_deref()) {
            self.cleanup(asok.as_deref(), Some(&device), Some(pid));
            return Err(e);
        }
        let client_addr = before.and_then(|before| {
            let after = self.watchers(req).ok()?;
            let new: Vec<EntityAddr> = after
                .into_iter()
                .filter(|a| !before.iter().any(|b| b.same_instance(a)))
                .collect();
            (new.len() == 1).then(|| new[0])
        });
        let rec = Record {
            device: device.clone(),
            pid,
            pool: req.pool.clone(),
            namespace: req.namespace.clone(),
            image: req.image.clone(),
            image_id: req.image_id.clone(),
            snap: req.snap.clone(),
            read_only: req.read_only || req.snap.is_some(),
            exclusive: req.exclusive,
            asok: asok.clone(),
            client_addr,
        };
        if let Err(e) = record::write(&dir, &rec) {
            self.cleanup(asok.as_deref(), Some(&device), Some(pid));
            return Err(e);
        }
        Ok(Mapping {
            backend: Backend::Nbd,
            pool: rec.pool,
            namespace: rec.namespace,
            image: rec.image,
            image_id: rec.image_id,
            snap: rec.snap,
            device,
            client_addr,
            read_only: rec.read_only,
            pid: Some(pid),
        })
    }

    fn unmap(&self, mapping: &Mapping, force: bool) -> Result<()> {
        if nbd_index(&mapping.device).is_none() {
            return Err(DriverError::invalid(
                "nbd device",
                mapping.device.display().to_string(),
                "expected /dev/nbdN",
            ));
        }
        let dir = self.records_dir();
        let listed = self.list_mapped()?;
        let Some(cur) = listed.into_iter().find(|l| l.device == mapping.device) else {
            // Already gone.
            record::remove(&dir, &mapping.device);
            return Ok(());
        };
        let refuse = |why: String| DriverError::Map {
            backend: Backend::Nbd,
            image: mapping.spec(),
            reason: format!("refusing to unmap {}: {why}", mapping.device.display()),
        };
        if let Some(pid) = mapping.pid
            && pid != cur.pid
        {
            return Err(refuse(format!(
                "it is now served by pid {}, not {pid} (another mapping)",
                cur.pid
            )));
        }
        if cur.pool != mapping.pool
            || cur.namespace != mapping.namespace
            || cur.image != mapping.image
            || cur.snap != mapping.snap
        {
            return Err(refuse(format!(
                "it now maps {}",
                super::image_spec(&cur.pool, &cur.namespace, &cur.image, cur.snap.as_deref())
            )));
        }
        let records = record::read_all(&dir);
        let rec = records.iter().find(|r| r.matches(&cur));
        if let Some(r) = rec
            && !mapping.image_id.is_empty()
            && r.image_id != mapping.image_id
        {
            return Err(refuse(format!(
                "it maps image id {:?}, not {:?}",
                r.image_id, mapping.image_id
            )));
        }
        if !force && let Some(why) = self.in_use(&mapping.device, cur.pid) {
            return Err(DriverError::InUse {
                volume: mapping.spec(),
                detail: format!("{why}; unmap with force to fail its I/O and unmap anyway"),
            });
        }
        let cmd = Cmd::new(self.rbd_nbd(), self.cmd_timeout)
            .arg("unmap")
            .arg(&mapping.device);
        let res = cmd.run_ok();
        match res {
            Ok(_) => {}
            Err(e) if !force => return Err(e),
            Err(_) => terminate(cur.pid),
        }
        if !wait_exit(cur.pid, self.exit_wait) {
            if force {
                terminate(cur.pid);
            } else {
                return Err(DriverError::Timeout {
                    what: format!(
                        "exit of rbd-nbd (pid {}) serving {}",
                        cur.pid,
                        mapping.device.display()
                    ),
                    secs: self.exit_wait.as_secs(),
                });
            }
        }
        record::remove(&dir, &mapping.device);
        if let Some(a) = rec.and_then(|r| r.asok.as_ref()) {
            let _ = std::fs::remove_file(a);
        }
        Ok(())
    }

    fn list(&self) -> Result<Vec<Mapping>> {
        if !self.cfg.sysfs.join("module/nbd").exists() && !Path::new("/dev/nbd0").exists() {
            // No nbd driver: no nbd mapping can exist.
            return Ok(Vec::new());
        }
        self.check_available()?;
        let listed = self.list_mapped()?;
        let records = record::read_all(&self.records_dir());
        Ok(listed
            .into_iter()
            .map(|l| self.mapping_of(l, &records))
            .collect())
    }
}

#[cfg(test)]
mod tests;
