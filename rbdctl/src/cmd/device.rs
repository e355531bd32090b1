//! Mappings: `map`, `unmap`, `device list` (alias `showmapped`).
//!
//! A mapping is identified by the **image id**, never by pool/name: `unmap IMAGE`
//! resolves IMAGE to its current id and touches only mappings of that id. A device left
//! over from an image that was since removed or renamed (and whose name may now belong
//! to a new image) is reported, never unmapped by name; unmap it by its device.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use rbd_core::{Image, OpenOptions, Rados};
use rbd_driver::mapper::{self, MapOptions, MapRequest, Mapper, MapperConfig, Mapping};
use rbd_driver::volume::VolumeState;
use serde::Serialize;
use serde_json::json;

use crate::Cli;
use crate::error::{CliError, CliResult, WithContext};
use crate::node::{NodeArgs, ceph_auth};
use crate::output::{Table, done, emit};
use crate::spec::Spec;

/// Exit codes of the mapping commands.
pub const DEVICE_EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  failure (the mapper failed; see the message)
  2  bad usage or invalid input: bad spec, unknown -o option (nothing was mapped)
  3  not found: no such image or snapshot; nothing of that image id is mapped here;
     no mapping uses that device
  5  in use: other clients have the image open (map read-write without --force), or the
     device is mounted, held open, or attached as a volume (unmap without --force)
  6  cluster unavailable: timed out, or our client is blocklisted";

/// `rbdctl device ...`.
#[derive(Debug, Args)]
pub struct DeviceArgs {
    /// Node settings.
    #[command(flatten)]
    pub node: NodeArgs,
    /// The subcommand.
    #[command(subcommand)]
    pub cmd: DeviceCmd,
}

/// Device subcommands.
#[derive(Debug, Subcommand)]
pub enum DeviceCmd {
    /// Map an image (or snapshot) to a local block device; prints the device.
    #[command(after_help = DEVICE_EXIT_CODES)]
    Map(MapArgs),
    /// Unmap a device, or every device of an image's current image id.
    #[command(after_help = DEVICE_EXIT_CODES)]
    Unmap(UnmapArgs),
    /// List this host's mappings (every available backend).
    #[command(alias = "ls")]
    List,
}

/// `rbdctl map`.
#[derive(Debug, Args)]
pub struct MapArgs {
    /// [pool/[namespace/]]image[@snapshot]
    pub image: String,
    /// Snapshot to map (read-only); same as image@snapshot.
    #[arg(long)]
    pub snap: Option<String>,
    /// Map read-only.
    #[arg(long, alias = "ro")]
    pub read_only: bool,
    /// Take the image's exclusive lock at map time and keep it (refused while another
    /// client holds it).
    #[arg(long)]
    pub exclusive: bool,
    /// Map options, comma-separated, repeatable: noshare|share, lock_on_read,
    /// queue_depth=N, io_timeout=SECS (alias osd_request_timeout), give_up_after=SECS
    /// (userspace: give up after that long without cluster I/O; 0 = never), ms_mode=MODE,
    /// exclusive, ro.
    #[arg(short = 'o', long = "options", value_name = "OPTS")]
    pub options: Vec<String>,
    /// Map read-write even though other clients have the image open (they may be
    /// writing: only for images whose users coordinate, e.g. a clustered filesystem).
    #[arg(long)]
    pub force: bool,
}

/// `rbdctl unmap`.
#[derive(Debug, Args)]
pub struct UnmapArgs {
    /// A device (/dev/loop3, /dev/rbd0, /dev/nbd1), or [pool/[namespace/]]image[@snap]:
    /// every mapping of that image's *current id* (and snapshot).
    pub target: String,
    /// Snapshot whose mappings to unmap (with an image); same as image@snapshot.
    #[arg(long)]
    pub snap: Option<String>,
    /// With a device: only its mapping of this image id (when `device list` shows the
    /// device twice: a dead mapper's leftover record, and the live mapping that reuses
    /// the device).
    #[arg(long, value_name = "ID")]
    pub image_id: Option<String>,
    /// Unmap even if the device is mounted, open, or attached as a volume: its users get
    /// I/O errors.
    #[arg(long)]
    pub force: bool,
}

/// Runs a device subcommand.
pub fn run(cli: &Cli, a: &DeviceArgs) -> CliResult {
    match &a.cmd {
        DeviceCmd::Map(m) => map(cli, &a.node, m),
        DeviceCmd::Unmap(u) => unmap(cli, &a.node, u),
        DeviceCmd::List => list(cli, &a.node),
    }
}

/// The map options `-o` accepts.
const MAP_OPTION_KEYS: &str = "noshare, share, lock_on_read, queue_depth=N, io_timeout=SECS, give_up_after=SECS, \
     ms_mode=MODE, exclusive, ro";

/// What `-o` asked for besides [`MapOptions`].
#[derive(Debug, Default, PartialEq, Eq)]
pub struct MapFlags {
    /// `exclusive`.
    pub exclusive: bool,
    /// `ro` / `read_only`.
    pub read_only: bool,
}

/// Parses `-o` map options (comma-separated, as with `rbd device map -o`).
pub fn parse_map_options(items: &[String]) -> CliResult<(MapOptions, MapFlags)> {
    let mut o = MapOptions::default();
    let mut f = MapFlags::default();
    let bad =
        |opt: &str, reason: &str| CliError::Usage(format!("invalid map option {opt:?}: {reason}"));
    let num = |opt: &str, v: &str| -> CliResult<u32> {
        v.parse::<u32>()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| bad(opt, "expected a positive whole number"))
    };
    for item in items {
        for opt in item.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (k, v) = match opt.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (opt, None),
            };
            match (k, v) {
                ("noshare", None) => o.noshare = true,
                ("share", None) => o.noshare = false,
                ("lock_on_read", None) => o.lock_on_read = true,
                ("exclusive", None) => f.exclusive = true,
                ("ro" | "read_only", None) => f.read_only = true,
                ("queue_depth", Some(v)) => o.queue_depth = Some(num(opt, v)?),
                ("io_timeout" | "osd_request_timeout", Some(v)) => {
                    o.io_timeout_secs = Some(num(opt, v)?)
                }
                ("give_up_after", Some(v)) => {
                    o.give_up_after_secs = Some(
                        v.parse::<u32>()
                            .map_err(|_| bad(opt, "expected a whole number of seconds"))?,
                    )
                }
                ("ms_mode", Some(v)) => {
                    if !["legacy", "crc", "secure", "prefer-crc", "prefer-secure"].contains(&v) {
                        return Err(bad(
                            opt,
                            "expected legacy, crc, secure, prefer-crc or prefer-secure",
                        ));
                    }
                    o.ms_mode = Some(v.to_owned());
                }
                _ => {
                    return Err(bad(
                        opt,
                        &format!(
                            "unknown option or missing/extra value; allowed: {MAP_OPTION_KEYS}"
                        ),
                    ));
                }
            }
        }
    }
    Ok((o, f))
}

/// Splits a spec's snapshot from `--snap` (giving both is an error).
fn with_snap(input: &str, snap: &Option<String>) -> CliResult<Spec> {
    let mut spec = Spec::parse(input)?;
    match (&spec.snap, snap) {
        (Some(_), Some(_)) => Err(CliError::Usage(format!(
            "{input:?} names a snapshot and --snap names another; give one"
        ))),
        (None, Some(s)) => {
            rbd_core::rbd::validate_image_name("snapshot name", s)?;
            spec.snap = Some(s.clone());
            Ok(spec)
        }
        _ => Ok(spec),
    }
}

/// An image resolved to its id.
pub struct Resolved {
    /// The connection.
    pub rados: Rados,
    /// Pool name.
    pub pool: String,
    /// Namespace.
    pub namespace: String,
    /// The image's current id.
    pub image_id: String,
}

/// Connects and resolves `spec` (image, and snapshot if named) to its current image id.
pub fn resolve(cli: &Cli, spec: &Spec) -> CliResult<(Resolved, Image)> {
    let rados = cli.connect()?;
    let io = cli.spec_ioctx(&rados, spec)?;
    let mut opts = OpenOptions::new().read_only(true);
    if let Some(s) = &spec.snap {
        opts = opts.snapshot(s.clone());
    }
    let image = Image::open(&io, &spec.image, &opts)
        .context(|| format!("opening {}", spec.display(cli)))?;
    let image_id = image
        .id()
        .context(|| format!("reading the id of {}", spec.display(cli)))?;
    Ok((
        Resolved {
            pool: spec.pool(cli).to_owned(),
            namespace: spec.namespace(cli).to_owned(),
            rados,
            image_id,
        },
        image,
    ))
}

/// Other clients with the image open (its header watchers other than our own handle),
/// as `client.N at ADDR`.
pub fn other_clients(rados: &Rados, image: &Image) -> CliResult<Vec<String>> {
    let own = rados.getaddrs().map(|a| a.0).unwrap_or_default();
    Ok(image
        .watchers()?
        .into_iter()
        .filter(|w| !own.iter().any(|a| a.same_instance(&w.addr)))
        .map(|w| format!("client.{} at {}", w.id, w.addr.to_legacy_string()))
        .collect())
}

/// What `map` and `mount` need to map an image.
pub struct MapPlan {
    /// The request.
    pub req: MapRequest,
    /// The mapper.
    pub mapper: Box<dyn Mapper>,
}

/// Resolves the image, checks it may be mapped read-write (no other clients unless
/// `force`), and prepares the request.
pub fn plan_map(
    cli: &Cli,
    node: &NodeArgs,
    spec: &Spec,
    read_only: bool,
    exclusive: bool,
    options: MapOptions,
    force: bool,
) -> CliResult<MapPlan> {
    let n = node.settings()?;
    let mapper = mapper::select(n.backend, &n.mapper)?;
    let (r, image) = resolve(cli, spec)?;
    let read_only = read_only || spec.snap.is_some();
    if !read_only && !force {
        let others = other_clients(&r.rados, &image)?;
        if !others.is_empty() {
            return Err(CliError::Busy(format!(
                "{} (id {}) is open by {}; mapping it read-write beside another writer can \
                 corrupt its data. Map it --read-only, unmap it there first, or pass --force",
                spec.display(cli),
                r.image_id,
                others.join(", ")
            )));
        }
    }
    drop(image);
    let req = MapRequest {
        pool: r.pool,
        namespace: r.namespace,
        image: spec.image.clone(),
        image_id: r.image_id,
        snap: spec.snap.clone(),
        read_only,
        exclusive: exclusive && !read_only,
        auth: ceph_auth(cli),
        options,
    };
    Ok(MapPlan { req, mapper })
}

/// One mapping as `device list` shows it.
#[derive(Debug, Serialize)]
pub struct MappingView {
    /// Pool.
    pub pool: String,
    /// Namespace.
    pub namespace: String,
    /// Image name at map time.
    pub image: String,
    /// Image id (the mapping's identity).
    pub image_id: String,
    /// Snapshot.
    pub snap: Option<String>,
    /// Device.
    pub device: PathBuf,
    /// Exact client address (`IP:PORT/NONCE`, as `rbd status` and `ceph osd blocklist`
    /// write it).
    pub client_addr: Option<String>,
    /// Backend.
    pub backend: String,
    /// Serving process.
    pub pid: Option<u32>,
    /// Read-only.
    pub read_only: bool,
    /// The volume attached through it on this node, if any.
    pub volume: Option<String>,
}

impl MappingView {
    fn new(m: &Mapping, attached: &BTreeMap<String, VolumeState>) -> Self {
        MappingView {
            pool: m.pool.clone(),
            namespace: m.namespace.clone(),
            image: m.image.clone(),
            image_id: m.image_id.clone(),
            snap: m.snap.clone(),
            device: m.device.clone(),
            client_addr: m.client_addr.map(|a| a.to_legacy_string()),
            backend: m.backend.to_string(),
            pid: m.pid,
            read_only: m.read_only,
            volume: volume_of(m, attached).map(|(n, _)| n.to_owned()),
        }
    }
}

/// The volume (name, state) attached on this node through mapping `m`.
pub fn volume_of<'a>(
    m: &Mapping,
    attached: &'a BTreeMap<String, VolumeState>,
) -> Option<(&'a str, &'a VolumeState)> {
    attached
        .iter()
        .find(|(_, v)| m.is_image(&v.pool, &v.namespace, &v.image_id) && m.snap.is_none())
        .map(|(n, v)| (n.as_str(), v))
}

/// `rbdctl map`.
pub fn map(cli: &Cli, node: &NodeArgs, a: &MapArgs) -> CliResult {
    let spec = with_snap(&a.image, &a.snap)?;
    let (options, flags) = parse_map_options(&a.options)?;
    let plan = plan_map(
        cli,
        node,
        &spec,
        a.read_only || flags.read_only,
        a.exclusive || flags.exclusive,
        options,
        a.force,
    )?;
    let n = node.settings()?;
    let mcfg = n.mapper.clone();
    if let Ok(existing) = mapper::find_by_image_id(
        &mcfg,
        &plan.req.pool,
        &plan.req.namespace,
        &plan.req.image_id,
    ) {
        for m in existing.iter().filter(|m| m.snap == plan.req.snap) {
            eprintln!(
                "rbdctl: note: {} is already mapped here at {}",
                m.spec(),
                m.device.display()
            );
        }
    }
    let m = plan.mapper.map(&plan.req)?;
    let attached = n.attached_volumes().unwrap_or_default();
    emit(cli.format, &MappingView::new(&m, &attached), || {
        format!("{}\n", m.device.display())
    });
    Ok(())
}

/// Canonical form of a device path (symlinks such as `/dev/rbd/pool/image` resolved).
fn canon(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
}

/// Whether the argument names a device rather than an image.
fn is_device_arg(s: &str) -> bool {
    s.starts_with("/dev/") || (s.starts_with('/') && Path::new(s).exists())
}

/// Refuses (unless `force`) to unmap a device that is mounted or that backs a volume
/// attached on this node.
pub fn check_unmappable(
    m: &Mapping,
    attached: &BTreeMap<String, VolumeState>,
    force: bool,
) -> CliResult {
    if force {
        return Ok(());
    }
    if let Some((name, v)) = volume_of(m, attached) {
        let ids: Vec<&str> = v.mount_ids.iter().map(String::as_str).collect();
        return Err(CliError::Busy(format!(
            "{} is the device of volume {name}, attached on this node at {} by mount IDs {}; \
             detach it with `rbdctl volume detach {name} --mount-id ID`, or pass --force",
            m.device.display(),
            v.mountpoint.display(),
            if ids.is_empty() {
                "(none)".to_string()
            } else {
                ids.join(", ")
            }
        )));
    }
    let mounts = fs_format::mounts_of_device(&m.device).map_err(|e| {
        rbd_driver::DriverError::fs(
            format!("looking up the mounts of {}", m.device.display()),
            e,
        )
    })?;
    if !mounts.is_empty() {
        let at: Vec<String> = mounts
            .iter()
            .map(|mi| mi.mount_point.display().to_string())
            .collect();
        return Err(CliError::Busy(format!(
            "{} is mounted at {}; unmount it first (rbdctl umount PATH), or pass --force",
            m.device.display(),
            at.join(", ")
        )));
    }
    Ok(())
}

/// Unmaps one mapping with its own backend.
pub fn unmap_one(cfg: &MapperConfig, m: &Mapping, force: bool) -> CliResult {
    mapper::mapper_for(m.backend, cfg).unmap(m, force)?;
    Ok(())
}

fn describe(m: &Mapping) -> String {
    format!(
        "{} ({}, image id {}, {})",
        m.device.display(),
        m.spec(),
        m.image_id,
        m.backend
    )
}

/// `rbdctl unmap`.
pub fn unmap(cli: &Cli, node: &NodeArgs, a: &UnmapArgs) -> CliResult {
    let n = node.settings()?;
    let mcfg = n.mapper.clone();
    let attached = n.attached_volumes()?;
    let all = mapper::list_all(&mcfg)?;
    let targets: Vec<Mapping> = if is_device_arg(&a.target) {
        if a.snap.is_some() {
            return Err(CliError::Usage(
                "--snap goes with an image, not with a device".into(),
            ));
        }
        let dev = canon(Path::new(&a.target));
        let found: Vec<Mapping> = all
            .into_iter()
            .filter(|m| canon(&m.device) == dev)
            .filter(|m| a.image_id.as_ref().is_none_or(|id| &m.image_id == id))
            .collect();
        if found.is_empty() {
            return Err(CliError::NotFound(format!(
                "no mapping on this host uses {}{} (see rbdctl device list)",
                a.target,
                a.image_id
                    .as_ref()
                    .map(|id| format!(" for image id {id}"))
                    .unwrap_or_default()
            )));
        }
        // Should a dead mapper's record name a device that a live mapping reuses, the
        // device is the live one's. (The userspace mapper lists such a record without a
        // device; this guards every backend.)
        let (live, dead): (Vec<Mapping>, Vec<Mapping>) = found
            .into_iter()
            .partition(|m| m.pid.is_some() || m.backend == rbd_driver::mapper::Backend::Krbd);
        if !live.is_empty() && !dead.is_empty() {
            for m in &dead {
                eprintln!(
                    "rbdctl: note: a dead mapper's leftover record of image id {} also names \
                     {}; left alone (remove it with: rbdctl unmap {} --image-id {})",
                    m.image_id,
                    m.device.display(),
                    m.device.display(),
                    m.image_id
                );
            }
            live
        } else {
            live.into_iter().chain(dead).collect()
        }
    } else {
        if a.image_id.is_some() {
            return Err(CliError::Usage(
                "--image-id goes with a device; an image is unmapped by its current id".into(),
            ));
        }
        let spec = with_snap(&a.target, &a.snap)?;
        let pool = spec.pool(cli).to_owned();
        let ns = spec.namespace(cli).to_owned();
        // Mappings recorded under this name, whatever image id they have.
        let by_name: Vec<&Mapping> = all
            .iter()
            .filter(|m| m.pool == pool && m.namespace == ns && m.image == spec.image)
            .filter(|m| m.snap == spec.snap)
            .collect();
        let stale_note = |id: Option<&str>| -> String {
            let stale: Vec<String> = by_name
                .iter()
                .filter(|m| Some(m.image_id.as_str()) != id)
                .map(|m| format!("{} (image id {})", m.device.display(), m.image_id))
                .collect();
            if stale.is_empty() {
                String::new()
            } else {
                format!(
                    "; {} map(s) an image that was named {} when it was mapped but has another \
                     id (removed, or renamed, since): left alone; if it is stale, unmap it by \
                     device (rbdctl unmap DEVICE)",
                    stale.join(", "),
                    spec.display(cli)
                )
            }
        };
        let image_id = match resolve(cli, &spec.without_snap()) {
            Ok((r, _)) => r.image_id,
            Err(e) if e.exit_code() == crate::error::exit::NOT_FOUND => {
                return Err(CliError::NotFound(format!(
                    "image {} does not exist, so no mapping of it can be unmapped by name{}",
                    spec.display(cli),
                    stale_note(None)
                )));
            }
            Err(e) => {
                eprintln!(
                    "rbdctl: unmapping by name needs the image's current id from the cluster; \
                     to unmap without it, name the device (rbdctl unmap DEVICE)"
                );
                return Err(e);
            }
        };
        let mine: Vec<Mapping> = all
            .iter()
            .filter(|m| m.is_image(&pool, &ns, &image_id) && m.snap == spec.snap)
            .cloned()
            .collect();
        if mine.is_empty() {
            return Err(CliError::NotFound(format!(
                "{} (image id {image_id}) is not mapped on this host{}",
                spec.display(cli),
                stale_note(Some(&image_id))
            )));
        }
        let note = stale_note(Some(&image_id));
        if !note.is_empty() {
            eprintln!("rbdctl: note{note}");
        }
        mine
    };
    for m in &targets {
        check_unmappable(m, &attached, a.force)?;
    }
    let mut unmapped = Vec::new();
    for m in &targets {
        unmap_one(&mcfg, m, a.force)?;
        unmapped.push(MappingView::new(m, &attached));
    }
    done(cli.format, json!({ "unmapped": unmapped }), || {
        targets
            .iter()
            .map(|m| format!("unmapped {}", describe(m)))
            .collect::<Vec<_>>()
            .join("\n")
    });
    Ok(())
}

/// `rbdctl device list`.
pub fn list(cli: &Cli, node: &NodeArgs) -> CliResult {
    let n = node.settings()?;
    let mut all = mapper::list_all(&n.mapper)?;
    all.sort_by(|a, b| a.device.cmp(&b.device));
    let attached = n.attached_volumes().unwrap_or_default();
    let views: Vec<MappingView> = all.iter().map(|m| MappingView::new(m, &attached)).collect();
    emit(cli.format, &views, || {
        let mut t = Table::new(&[
            "POOL",
            "NAMESPACE",
            "IMAGE",
            "ID",
            "SNAP",
            "DEVICE",
            "CLIENT",
            "BACKEND",
            "PID",
        ]);
        let dash = |s: Option<String>| s.unwrap_or_else(|| "-".into());
        for v in &views {
            t.row(vec![
                v.pool.clone(),
                if v.namespace.is_empty() {
                    "-".into()
                } else {
                    v.namespace.clone()
                },
                v.image.clone(),
                v.image_id.clone(),
                dash(v.snap.clone()),
                v.device.display().to_string(),
                dash(v.client_addr.clone()),
                v.backend.clone(),
                dash(v.pid.map(|p| p.to_string())),
            ]);
        }
        t.render()
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_options() {
        let (o, f) =
            parse_map_options(&["queue_depth=64,lock_on_read".into(), "ro".into()]).unwrap();
        assert_eq!(o.queue_depth, Some(64));
        assert!(o.lock_on_read && o.noshare && f.read_only && !f.exclusive);
        let (o, f) =
            parse_map_options(&["share,exclusive,io_timeout=30,ms_mode=crc".into()]).unwrap();
        assert_eq!(
            parse_map_options(&["give_up_after=0".into()])
                .unwrap()
                .0
                .give_up_after_secs,
            Some(0)
        );
        assert!(parse_map_options(&["give_up_after=soon".into()]).is_err());
        assert!(!o.noshare && f.exclusive);
        assert_eq!(o.io_timeout_secs, Some(30));
        assert_eq!(o.ms_mode.as_deref(), Some("crc"));
        for bad in [
            "bogus",
            "queue_depth=0",
            "queue_depth",
            "ms_mode=fast",
            "noshare=1",
        ] {
            let e = parse_map_options(&[bad.into()]).unwrap_err();
            assert_eq!(e.exit_code(), crate::error::exit::USAGE);
            assert!(e.to_string().contains(bad), "{e}");
        }
    }

    #[test]
    fn device_args() {
        assert!(is_device_arg("/dev/loop3"));
        assert!(!is_device_arg("rbd/img"));
        assert!(!is_device_arg("img@snap"));
        assert!(with_snap("a@s", &Some("t".into())).is_err());
        assert_eq!(
            with_snap("a", &Some("t".into())).unwrap().snap.as_deref(),
            Some("t")
        );
    }
}
