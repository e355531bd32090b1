//! `rbdctl snap`: create, ls, rm, rollback, protect, unprotect, rename.

use clap::Subcommand;
use rbd_core::rbd::{SnapNamespace, SnapRemoveFlags};
use rbd_core::{Image, OpenOptions};
use serde::Serialize;
use serde_json::json;

use crate::Cli;
use crate::error::{CliError, CliResult, WithContext};
use crate::output::{Table, ctime, done, emit, human_size, unix};
use crate::progress::{Progress, Unit};
use crate::spec::Spec;

/// Snapshot subcommands.
#[derive(Debug, Subcommand)]
pub enum SnapCmd {
    /// Take a snapshot: `rbdctl snap create image@snap`.
    #[command(alias = "add")]
    Create {
        /// [pool/[namespace/]]image@snapshot
        snap: String,
    },
    /// List an image's snapshots.
    #[command(alias = "list")]
    Ls {
        /// [pool/[namespace/]]image
        image: String,
        /// Include snapshots in every namespace (trash, group, mirror), not only user ones.
        #[arg(short = 'a', long)]
        all: bool,
    },
    /// Remove a snapshot (refused while protected, unless --force).
    #[command(alias = "remove")]
    Rm {
        /// [pool/[namespace/]]image@snapshot
        snap: String,
        /// Unprotect it first, and flatten its children.
        #[arg(long)]
        force: bool,
    },
    /// Roll the image's data back to a snapshot.
    #[command(alias = "revert")]
    Rollback {
        /// [pool/[namespace/]]image@snapshot
        snap: String,
    },
    /// Protect a snapshot from removal (clone format 1 needs it).
    Protect {
        /// [pool/[namespace/]]image@snapshot
        snap: String,
    },
    /// Unprotect a snapshot (refused while it has clone format 1 children).
    Unprotect {
        /// [pool/[namespace/]]image@snapshot
        snap: String,
    },
    /// Rename a snapshot: `rbdctl snap rename image@old image@new` (or just `new`).
    Rename {
        /// [pool/[namespace/]]image@snapshot
        src: String,
        /// image@new-name, or new-name
        dst: String,
    },
}

/// A snapshot as `rbd snap ls --format json` shows it, plus the namespace and a Unix
/// timestamp.
#[derive(Debug, Serialize)]
struct SnapView {
    id: u64,
    name: String,
    size: u64,
    protected: bool,
    timestamp: String,
    timestamp_unix: u64,
    namespace: SnapNamespace,
}

/// Runs a snap subcommand.
pub fn run(cli: &Cli, cmd: &SnapCmd) -> CliResult {
    match cmd {
        SnapCmd::Create { snap } => {
            let (spec, img) = open_snap_image(cli, snap)?;
            img.snap_create(spec.snap_name())?;
            let id = img.snap_get_id(spec.snap_name())?;
            done(
                cli.format,
                json!({"snapshot": spec.display(cli), "id": id}),
                || format!("created snapshot {}", spec.display(cli)),
            );
            Ok(())
        }
        SnapCmd::Ls { image, all } => ls(cli, image, *all),
        SnapCmd::Rm { snap, force } => {
            let (spec, img) = open_snap_image(cli, snap)?;
            let name = spec.snap_name();
            ensure_snap_exists(cli, &img, &spec)?;
            if !force && img.snap_is_protected(name)? {
                return Err(CliError::Busy(format!(
                    "snapshot {} is protected; unprotect it first (rbdctl snap unprotect {spec}) \
                     or pass --force",
                    spec.display(cli)
                )));
            }
            let flags = if *force {
                SnapRemoveFlags::FORCE
            } else {
                SnapRemoveFlags::empty()
            };
            let p = Progress::new(cli, "Removing snap", Unit::Steps);
            img.snap_remove_with_progress(name, flags, p.callback())
                .context(|| format!("removing snapshot {}", spec.display(cli)))?;
            p.finish();
            done(cli.format, json!({"removed": spec.display(cli)}), || {
                format!("removed snapshot {}", spec.display(cli))
            });
            Ok(())
        }
        SnapCmd::Rollback { snap } => {
            let (spec, img) = open_snap_image(cli, snap)?;
            ensure_snap_exists(cli, &img, &spec)?;
            let p = Progress::new(cli, "Rolling back to snapshot", Unit::Steps);
            img.snap_rollback_with_progress(spec.snap_name(), p.callback())
                .context(|| format!("rolling back to {}", spec.display(cli)))?;
            p.finish();
            done(
                cli.format,
                json!({"rolled_back_to": spec.display(cli)}),
                || format!("rolled back {} to {}", spec.image, spec.display(cli)),
            );
            Ok(())
        }
        SnapCmd::Protect { snap } => {
            let (spec, img) = open_snap_image(cli, snap)?;
            ensure_snap_exists(cli, &img, &spec)?;
            if img.snap_is_protected(spec.snap_name())? {
                return Err(CliError::Busy(format!(
                    "snapshot {} is already protected",
                    spec.display(cli)
                )));
            }
            img.snap_protect(spec.snap_name())?;
            done(cli.format, json!({"protected": spec.display(cli)}), || {
                format!("protected {}", spec.display(cli))
            });
            Ok(())
        }
        SnapCmd::Unprotect { snap } => {
            let (spec, img) = open_snap_image(cli, snap)?;
            ensure_snap_exists(cli, &img, &spec)?;
            if !img.snap_is_protected(spec.snap_name())? {
                return Err(CliError::Usage(format!(
                    "snapshot {} is not protected",
                    spec.display(cli)
                )));
            }
            img.snap_unprotect(spec.snap_name()).map_err(|e| {
                if e.kind() == rbd_core::ErrorKind::Busy {
                    CliError::Busy(format!(
                        "snapshot {} has clones; flatten or remove them first (rbdctl children {spec})",
                        spec.display(cli)
                    ))
                } else {
                    e.into()
                }
            })?;
            done(
                cli.format,
                json!({"unprotected": spec.display(cli)}),
                || format!("unprotected {}", spec.display(cli)),
            );
            Ok(())
        }
        SnapCmd::Rename { src, dst } => {
            let (spec, img) = open_snap_image(cli, src)?;
            let new = if dst.contains('@') {
                let d = Spec::with_snap(dst)?;
                if d.image != spec.image
                    || (d.pool.is_some() && d.pool(cli) != spec.pool(cli))
                    || (d.namespace.is_some() && d.namespace(cli) != spec.namespace(cli))
                {
                    return Err(CliError::Usage(format!(
                        "cannot rename {} to {}: a snapshot stays on its image",
                        spec.display(cli),
                        d.display(cli)
                    )));
                }
                d.snap_name().to_owned()
            } else {
                rbd_core::rbd::validate_image_name("snapshot name", dst)?;
                dst.clone()
            };
            ensure_snap_exists(cli, &img, &spec)?;
            img.snap_rename(spec.snap_name(), &new)?;
            let to = Spec {
                snap: Some(new),
                ..spec.clone()
            };
            done(
                cli.format,
                json!({"from": spec.display(cli), "to": to.display(cli)}),
                || format!("renamed {} to {}", spec.display(cli), to.display(cli)),
            );
            Ok(())
        }
    }
}

/// Parses `image@snap` and opens the image read-write at its head.
fn open_snap_image(cli: &Cli, s: &str) -> CliResult<(Spec, Image)> {
    let spec = Spec::with_snap(s)?;
    let rados = cli.connect()?;
    let io = cli.spec_ioctx(&rados, &spec)?;
    let img = Image::open(&io, &spec.image, &OpenOptions::new())?;
    Ok((spec, img))
}

/// Not-found (exit 3) naming the snapshot, rather than librbd's bare ENOENT.
fn ensure_snap_exists(cli: &Cli, img: &Image, spec: &Spec) -> CliResult {
    if !img.snap_exists(spec.snap_name())? {
        return Err(CliError::NotFound(format!(
            "snapshot {} does not exist",
            spec.display(cli)
        )));
    }
    Ok(())
}

fn ls(cli: &Cli, image: &str, all: bool) -> CliResult {
    let spec = Spec::image_only(image)?;
    let rados = cli.connect()?;
    let io = cli.spec_ioctx(&rados, &spec)?;
    let img = Image::open(&io, &spec.image, &OpenOptions::new().read_only(true))?;
    let mut out = Vec::new();
    for s in img.snap_list()? {
        if !all && s.namespace != SnapNamespace::User {
            continue;
        }
        // Only user snapshots can be protected; asking for others fails.
        let protected = s.namespace == SnapNamespace::User && img.snap_is_protected(&s.name)?;
        out.push(SnapView {
            id: s.id,
            name: s.name,
            size: s.size,
            protected,
            timestamp: ctime(s.timestamp),
            timestamp_unix: unix(s.timestamp),
            namespace: s.namespace,
        });
    }
    emit(cli.format, &out, || {
        let mut headers = vec!["SNAPID", "NAME", "SIZE", "PROTECTED", "TIMESTAMP"];
        if all {
            headers.push("NAMESPACE");
        }
        let mut t = Table::new(&headers);
        for s in &out {
            let mut row = vec![
                s.id.to_string(),
                s.name.clone(),
                human_size(s.size),
                if s.protected { "yes" } else { "" }.to_owned(),
                s.timestamp.clone(),
            ];
            if all {
                row.push(
                    serde_json::to_value(s.namespace)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .unwrap_or_else(|| format!("{:?}", s.namespace)),
                );
            }
            t.row(row);
        }
        t.render()
    });
    Ok(())
}
