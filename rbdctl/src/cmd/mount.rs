//! `rbdctl mount` / `rbdctl umount`.
//!
//! Two kinds of source:
//!
//! - A **volume** (a name in the volume index): attached through the driver exactly as
//!   Docker attaches it, under a mount ID of its own (default `rbdctl:<path>`, derived
//!   from the target path, so `umount PATH` finds it again), and its mountpoint
//!   bind-mounted on PATH. The volume's reference count, format-on-first-use, mount
//!   options and access mode all apply, Docker containers on this host share the same
//!   mount, and `volume rm` is refused while it is mounted.
//! - An **image** (`pool/image`, `image@snap`, or a name that is no volume, or any name
//!   with `--image`): mapped (read-write maps take the exclusive lock), probed, and
//!   mounted on PATH with the filesystem found on it. A blank image is formatted only
//!   when `--mkfs FSTYPE` asks for it; nothing is ever formatted over data.

use std::path::{Path, PathBuf};

use clap::Args;
use fs_format::{FsType, MkfsOptions, MountOptions, Probe, UnmountOptions, UnmountOutcome};
use rbd_driver::DriverError;
use rbd_driver::mapper::{self, Mapping};
use rbd_driver::volume::{AccessMode, VolumeIndex};
use serde_json::json;

use crate::Cli;
use crate::cmd::device::{check_unmappable, parse_map_options, plan_map, unmap_one, volume_of};
use crate::error::{CliError, CliResult};
use crate::node::{NODE_HELP, NodeArgs, driver};
use crate::output::done;
use crate::spec::Spec;

const MOUNT_HELP: &str = "\
SOURCE is a volume when a volume of that name exists (and SOURCE has no '/' or '@'):
it is attached through the volume driver, as Docker attaches it, under the mount ID
--mount-id (default rbdctl:<path>, e.g. rbdctl:mnt:data for /mnt/data), and bind-mounted
on PATH. Its reference count is shared with Docker's mounts on this host, and
`volume rm` is refused while it is mounted. Otherwise SOURCE is an image: it is mapped
(read-write maps hold the exclusive lock), probed and mounted with the filesystem found
on it; a blank image is only formatted with --mkfs FSTYPE.

Exit codes:
  0  success
  1  failure
  2  invalid input (bad spec, option, or filesystem; the image is blank and --mkfs was not
     given; it holds something other than a filesystem); nothing is left mapped
  3  not found (no such image, snapshot or PATH)
  4  PATH is already a mountpoint of something else
  5  in use: other clients have the image open (read-write, without --force), or the
     volume is attached read-only here and read-write was asked
  6  cluster unavailable: timed out, or our client is blocklisted";

const UMOUNT_HELP: &str = "\
If a volume is held on this node by PATH's mount ID (default rbdctl:<path>, or
--mount-id), PATH is unmounted and that reference dropped; the last reference unmounts
and unmaps the volume. Otherwise PATH must be a mount of a mapped image: it is unmounted
and, unless --keep-mapped or the device is mounted elsewhere, unmapped. A busy PATH is
never detached lazily: close what uses it, then try again.

Exit codes:
  0  success
  1  failure
  2  PATH is not on an RBD mapping, or belongs to a volume under another mount ID
  3  PATH does not exist or is not mounted, and no volume is held by its mount ID
  5  PATH is busy (files open on it)
  6  cluster unavailable (detaching a volume needs the cluster)";

/// The help after `rbdctl mount --help`.
pub fn mount_help() -> String {
    format!("{MOUNT_HELP}\n\n{NODE_HELP}")
}

/// The help after `rbdctl umount --help`.
pub fn umount_help() -> String {
    format!("{UMOUNT_HELP}\n\n{NODE_HELP}")
}

/// `rbdctl mount`.
#[derive(Debug, Args)]
pub struct MountArgs {
    /// A volume name, or an image: [pool/[namespace/]]image[@snapshot].
    pub source: String,
    /// An existing directory to mount it on.
    pub path: PathBuf,
    /// Mount read-only (a snapshot always is).
    #[arg(long, alias = "ro")]
    pub read_only: bool,
    /// (volume) The mount ID holding the volume (default rbdctl:PATH, from the path).
    #[arg(long)]
    pub mount_id: Option<String>,
    /// Treat SOURCE as an image even if a volume of that name exists.
    #[arg(long)]
    pub image: bool,
    /// (image) The filesystem expected on the image (default: whatever is found).
    #[arg(short = 't', long, value_name = "FSTYPE")]
    pub fstype: Option<String>,
    /// (image) Create this filesystem (ext4, xfs, btrfs) if, and only if, the image is
    /// blank.
    #[arg(long, value_name = "FSTYPE")]
    pub mkfs: Option<String>,
    /// (image) Mount options, comma-separated, from fs-format's allowlist (noatime,
    /// discard, ...).
    #[arg(long = "mount-options", value_name = "OPTS")]
    pub mount_options: Option<String>,
    /// (image) Map options, as for `rbdctl map -o`.
    #[arg(short = 'o', long = "map-options", value_name = "OPTS")]
    pub map_options: Vec<String>,
    /// (image) Map read-write even though other clients have the image open.
    #[arg(long)]
    pub force: bool,
}

/// `rbdctl umount`.
#[derive(Debug, Args)]
pub struct UmountArgs {
    /// The mountpoint.
    pub path: PathBuf,
    /// (volume) The mount ID it was mounted with (default rbdctl:PATH, from the path).
    #[arg(long)]
    pub mount_id: Option<String>,
    /// (image) Leave the device mapped.
    #[arg(long)]
    pub keep_mapped: bool,
}

/// The mount ID `rbdctl mount` uses for a (canonical) path when none is given:
/// `rbdctl:` and the path with `/` written `:` (`/mnt/data` is `rbdctl:mnt:data`) when
/// that fits the mount ID rules, else `rbdctlh:` and a 64-bit FNV-1a hash of the path.
/// Different paths get different IDs.
pub fn mount_id_for(path: &Path) -> String {
    let s = path.to_string_lossy();
    let body = s.trim_start_matches('/').replace('/', ":");
    let readable = !s.contains(':')
        && !s.contains("//")
        && !body.is_empty()
        && !body.ends_with(':')
        && body.len() <= 120
        && body
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | ':'));
    if readable {
        return format!("rbdctl:{body}");
    }
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in path.as_os_str().as_encoded_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("rbdctlh:{h:016x}")
}

fn canonical_dir(path: &Path) -> CliResult<PathBuf> {
    let c = std::fs::canonicalize(path)
        .map_err(|e| CliError::io(format!("mountpoint {}", path.display()), e))?;
    if !c.is_dir() {
        return Err(CliError::Usage(format!(
            "mountpoint {} is not a directory",
            path.display()
        )));
    }
    Ok(c)
}

fn fs_err(what: String) -> impl FnOnce(fs_format::Error) -> CliError {
    move |e| CliError::Driver(DriverError::fs(what, e))
}

fn parse_fs(what: &str, s: &str) -> CliResult<FsType> {
    s.parse()
        .map_err(|e: fs_format::Error| CliError::Usage(format!("bad {what} {s:?}: {e}")))
}

/// Whether `source` names a volume (through the index in the node's default pool).
fn is_volume(cli: &Cli, node: &NodeArgs, source: &str) -> CliResult<bool> {
    if source.contains('/') || source.contains('@') {
        return Ok(false);
    }
    if rbd_driver::volume::validate_volume_name(source).is_err() {
        return Ok(false);
    }
    let defaults = node.settings()?.defaults;
    let rados = cli.connect()?;
    let index = VolumeIndex::open(&rados, &defaults.pool)?;
    Ok(index.get(source)?.is_some())
}

/// `rbdctl mount`.
pub fn mount(cli: &Cli, node: &NodeArgs, a: &MountArgs) -> CliResult {
    let target = canonical_dir(&a.path)?;
    if !a.image && is_volume(cli, node, &a.source)? {
        return mount_volume(cli, node, a, &target);
    }
    if a.mount_id.is_some() {
        return Err(CliError::Usage(format!(
            "--mount-id is for volumes; {} is an image",
            a.source
        )));
    }
    mount_image(cli, node, a, &target)
}

fn mount_volume(cli: &Cli, node: &NodeArgs, a: &MountArgs, target: &Path) -> CliResult {
    let name = &a.source;
    for (set, flag) in [
        (a.fstype.is_some(), "--fstype"),
        (a.mkfs.is_some(), "--mkfs"),
        (a.mount_options.is_some(), "--mount-options"),
        (!a.map_options.is_empty(), "--map-options"),
        (a.force, "--force"),
    ] {
        if set {
            return Err(CliError::Usage(format!(
                "{flag} is for images; volume {name} uses its own options (volume inspect)"
            )));
        }
    }
    let mount_id = a.mount_id.clone().unwrap_or_else(|| mount_id_for(target));
    rbd_driver::volume::validate_mount_id(&mount_id)?;
    let d = driver(cli, node)?;
    let mode = a.read_only.then_some(AccessMode::ReadOnly);
    let mp = d.attach(name, &mount_id, mode)?;
    let mp = std::fs::canonicalize(&mp).unwrap_or(mp);
    let read_only = a.read_only
        || d.state_store()
            .load()
            .ok()
            .and_then(|st| st.volumes.get(name.as_str()).map(|v| v.read_only))
            .unwrap_or(false);
    if let Err(e) = bind(&mp, target, read_only) {
        // Undo our reference; the volume stays as it was for its other mount IDs.
        if let Err(undo) = d.detach(name, &mount_id) {
            eprintln!(
                "rbdctl: dropping mount ID {mount_id} of volume {name} after the failed mount \
                 failed too: {undo}; run `rbdctl volume detach {name} --mount-id {mount_id}`"
            );
        }
        return Err(e);
    }
    done(
        cli.format,
        json!({
            "volume": name,
            "mount_id": mount_id,
            "path": target,
            "volume_mountpoint": mp,
            "read_only": read_only,
        }),
        || {
            format!(
                "mounted volume {name} on {} (mount ID {mount_id}, {})",
                target.display(),
                if read_only { "ro" } else { "rw" }
            )
        },
    );
    Ok(())
}

/// Bind-mounts `src` on `target` (read-only if asked); an existing bind of the same
/// directory is accepted.
fn bind(src: &Path, target: &Path, read_only: bool) -> CliResult {
    use nix::mount::MsFlags;
    if let Some(m) = fs_format::find_mount(target).map_err(fs_err(format!(
        "reading the mounts of {}",
        target.display()
    )))? {
        let src_mount = fs_format::find_mount(src)
            .map_err(fs_err(format!("reading the mounts of {}", src.display())))?;
        let same = src_mount
            .as_ref()
            .is_some_and(|s| s.major == m.major && s.minor == m.minor && s.root == m.root);
        if same && m.is_read_only() == read_only {
            return Ok(());
        }
        return Err(CliError::Exists(format!(
            "{} is already a mountpoint (of {}); unmount it first",
            target.display(),
            m.source.to_string_lossy()
        )));
    }
    let fail = |what: &str, e: nix::errno::Errno| {
        CliError::io(
            format!("{what} {} on {}", src.display(), target.display()),
            std::io::Error::from(e),
        )
    };
    nix::mount::mount(
        Some(src),
        target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|e| fail("bind-mounting", e))?;
    if read_only
        && let Err(e) = nix::mount::mount(
            None::<&str>,
            target,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None::<&str>,
        )
    {
        let _ = nix::mount::umount2(target, nix::mount::MntFlags::UMOUNT_NOFOLLOW);
        return Err(fail("making read-only the bind mount of", e));
    }
    Ok(())
}

fn mount_image(cli: &Cli, node: &NodeArgs, a: &MountArgs, target: &Path) -> CliResult {
    let spec = Spec::parse(&a.source)?;
    let expected = a
        .fstype
        .as_deref()
        .map(|s| parse_fs("--fstype", s))
        .transpose()?;
    let mkfs = a
        .mkfs
        .as_deref()
        .map(|s| parse_fs("--mkfs", s))
        .transpose()?;
    let options: Vec<String> = a
        .mount_options
        .iter()
        .flat_map(|s| s.split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    if options.iter().any(|o| o == "ro" || o == "rw") {
        return Err(CliError::Usage(
            "give read-only as --read-only, not as a mount option".into(),
        ));
    }
    let read_only = a.read_only || spec.snap.is_some();
    if mkfs.is_some() && read_only {
        return Err(CliError::Usage(
            "--mkfs needs a read-write mount (not --read-only, not a snapshot)".into(),
        ));
    }
    // Check the mount options for every filesystem they could apply to, before mapping.
    for fs in [expected, mkfs].into_iter().flatten() {
        MountOptions {
            read_only,
            options: options.clone(),
        }
        .parse(fs)
        .map_err(fs_err("checking the mount options".into()))?;
    }
    if let Some(m) = fs_format::find_mount(target).map_err(fs_err(format!(
        "reading the mounts of {}",
        target.display()
    )))? {
        return Err(CliError::Exists(format!(
            "{} is already a mountpoint (of {}); unmount it first",
            target.display(),
            m.source.to_string_lossy()
        )));
    }
    let (map_opts, flags) = parse_map_options(&a.map_options)?;
    let read_only = read_only || flags.read_only;
    let plan = plan_map(cli, node, &spec, read_only, !read_only, map_opts, a.force)?;
    let m = plan.mapper.map(&plan.req)?;
    match probe_and_mount(&m, target, read_only, expected, mkfs, &options) {
        Ok(fs) => {
            done(
                cli.format,
                json!({
                    "image": m.spec(),
                    "image_id": m.image_id,
                    "device": m.device,
                    "path": target,
                    "fstype": fs.as_str(),
                    "read_only": read_only,
                    "backend": m.backend.as_str(),
                }),
                || {
                    format!(
                        "mounted {} ({}, {fs}) on {}",
                        m.spec(),
                        m.device.display(),
                        target.display()
                    )
                },
            );
            Ok(())
        }
        Err(e) => match plan.mapper.unmap(&m, false) {
            Ok(()) => Err(e),
            Err(undo) => Err(CliError::Busy(format!(
                "{}; and unmapping {} afterwards failed: {undo}",
                e,
                m.device.display()
            ))),
        },
    }
}

fn probe_and_mount(
    m: &Mapping,
    target: &Path,
    read_only: bool,
    expected: Option<FsType>,
    mkfs: Option<FsType>,
    options: &[String],
) -> CliResult<FsType> {
    let dev = &m.device;
    let probe = fs_format::probe(dev).map_err(fs_err(format!("probing {}", dev.display())))?;
    let fs = match probe {
        Probe::Filesystem(info) => {
            let fs = info.kind.fs_type();
            if let Some(want) = expected
                && want != fs
            {
                return Err(CliError::Usage(format!(
                    "{} holds {}, not {want}",
                    m.spec(),
                    info.kind
                )));
            }
            fs
        }
        Probe::Blank => match mkfs {
            Some(fs) => {
                if let Some(want) = expected
                    && want != fs
                {
                    return Err(CliError::Usage(format!(
                        "--fstype {want} and --mkfs {fs} disagree"
                    )));
                }
                fs_format::mkfs(dev, fs, &MkfsOptions::default())
                    .map_err(fs_err(format!("creating {fs} on {}", dev.display())))?;
                fs
            }
            None => {
                return Err(CliError::Usage(format!(
                    "{} is blank (no filesystem); pass --mkfs FSTYPE to format it",
                    m.spec()
                )));
            }
        },
        other => {
            return Err(CliError::Usage(format!(
                "{} holds {other}; refusing to mount or format it",
                m.spec()
            )));
        }
    };
    fs_format::mount(
        dev,
        target,
        fs,
        &MountOptions {
            read_only,
            options: options.to_vec(),
        },
    )
    .map_err(fs_err(format!(
        "mounting {} on {}",
        dev.display(),
        target.display()
    )))?;
    Ok(fs)
}

/// Unmounts `path` without a lazy fallback: a busy mount is an error (exit 5).
fn unmount_strict(path: &Path) -> CliResult<UnmountOutcome> {
    let r = fs_format::unmount_with(
        path,
        &UnmountOptions {
            lazy_fallback: false,
            ..UnmountOptions::default()
        },
    );
    match r {
        Ok(r) => Ok(r.outcome),
        Err(fs_format::Error::Unmount {
            source: nix::errno::Errno::EBUSY,
            ..
        }) => Err(CliError::Busy(format!(
            "{} is busy (files are open on it, or a process works in it); nothing was \
                 changed: close them and try again",
            path.display()
        ))),
        Err(e) => Err(fs_err("unmounting".into())(e)),
    }
}

/// `rbdctl umount`.
pub fn umount(cli: &Cli, node: &NodeArgs, a: &UmountArgs) -> CliResult {
    let target = match std::fs::canonicalize(&a.path) {
        Ok(p) => p,
        Err(e) => return Err(CliError::io(format!("mountpoint {}", a.path.display()), e)),
    };
    let mount_id = a.mount_id.clone().unwrap_or_else(|| mount_id_for(&target));
    rbd_driver::volume::validate_mount_id(&mount_id)?;
    let n = node.settings()?;
    let attached = n.attached_volumes()?;
    let held: Vec<String> = attached
        .iter()
        .filter(|(_, v)| v.mount_ids.contains(&mount_id))
        .map(|(n, _)| n.clone())
        .collect();
    if !held.is_empty() {
        let outcome = unmount_strict(&target)?;
        let d = driver(cli, node)?;
        let mut reports = Vec::new();
        for name in &held {
            reports.push((name.clone(), d.detach_with_report(name, &mount_id)?));
        }
        done(
            cli.format,
            json!({
                "path": target,
                "mount_id": mount_id,
                "unmounted": outcome == UnmountOutcome::Unmounted,
                "volumes": reports.iter().map(|(n, r)| json!({"volume": n, "detach": r})).collect::<Vec<_>>(),
            }),
            || {
                reports
                    .iter()
                    .map(|(n, r)| {
                        if r.remaining_mount_ids.is_empty() {
                            format!("unmounted {}; volume {n} detached", target.display())
                        } else {
                            format!(
                                "unmounted {}; volume {n} stays attached for {}",
                                target.display(),
                                r.remaining_mount_ids.join(", ")
                            )
                        }
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            },
        );
        return Ok(());
    }
    let Some(mi) = fs_format::find_mount(&target).map_err(fs_err(format!(
        "reading the mounts of {}",
        target.display()
    )))?
    else {
        return Err(CliError::NotFound(format!(
            "{} is not mounted, and no volume is held on this node by mount ID {mount_id}",
            target.display()
        )));
    };
    let source = PathBuf::from(&mi.source);
    let mcfg = n.mapper.clone();
    let canon_source = std::fs::canonicalize(&source).unwrap_or(source.clone());
    let mapping = mapper::list_all(&mcfg)?
        .into_iter()
        .find(|m| std::fs::canonicalize(&m.device).unwrap_or(m.device.clone()) == canon_source);
    let Some(m) = mapping else {
        return Err(CliError::Usage(format!(
            "{} is mounted from {}, which is not an RBD mapping on this host; use umount(8)",
            target.display(),
            source.display()
        )));
    };
    if let Some((name, v)) = volume_of(&m, &attached) {
        return Err(CliError::Usage(format!(
            "{} is a mount of volume {name}, held by mount IDs {}; give the mount ID it was \
             mounted with (--mount-id)",
            target.display(),
            v.mount_ids.iter().cloned().collect::<Vec<_>>().join(", ")
        )));
    }
    unmount_strict(&target)?;
    let still = fs_format::mounts_of_device(&m.device).map_err(fs_err(format!(
        "reading the mounts of {}",
        m.device.display()
    )))?;
    let unmapped = if a.keep_mapped || !still.is_empty() {
        false
    } else {
        check_unmappable(&m, &attached, false)?;
        unmap_one(&mcfg, &m, false)?;
        true
    };
    done(
        cli.format,
        json!({
            "path": target,
            "device": m.device,
            "image": m.spec(),
            "image_id": m.image_id,
            "unmapped": unmapped,
        }),
        || {
            let mut s = format!("unmounted {} ({})", target.display(), m.device.display());
            if unmapped {
                s.push_str(&format!("; unmapped {}", m.spec()));
            } else if !still.is_empty() {
                s.push_str(&format!(
                    "; {} stays mapped (still mounted at {})",
                    m.device.display(),
                    still
                        .iter()
                        .map(|x| x.mount_point.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
            s
        },
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_ids_from_paths() {
        assert_eq!(mount_id_for(Path::new("/mnt/data")), "rbdctl:mnt:data");
        assert_eq!(mount_id_for(Path::new("/a-b/c_d.e")), "rbdctl:a-b:c_d.e");
        // Not representable readably: hashed, and distinct.
        let odd = ["/", "/mnt/a b", "/mnt/a:b", "/mnt/é"];
        let ids: Vec<String> = odd.iter().map(|p| mount_id_for(Path::new(p))).collect();
        for id in &ids {
            assert!(id.starts_with("rbdctlh:"), "{id}");
            rbd_driver::volume::validate_mount_id(id).unwrap();
        }
        let mut uniq = ids.clone();
        uniq.sort();
        uniq.dedup();
        assert_eq!(uniq.len(), ids.len());
        let long = format!("/{}", "x".repeat(200));
        let id = mount_id_for(Path::new(&long));
        rbd_driver::volume::validate_mount_id(&id).unwrap();
        // `/mnt/a:b` must not collide with `/mnt/a/b`.
        assert_ne!(mount_id_for(Path::new("/mnt/a/b")), ids[2]);
    }
}
