//! `rbdctl trash`: move images to the trash, list, restore and remove them.

use std::time::{Duration, SystemTime};

use clap::Subcommand;
use rbd_core::rbd::{self, TrashEntry, TrashSource};
use serde::Serialize;
use serde_json::json;

use crate::Cli;
use crate::cmd::image::{ensure_unused, open_ro};
use crate::error::{CliError, CliResult, WithContext};
use crate::output::{Table, ctime, done, emit, unix};
use crate::progress::{Progress, Unit};
use crate::spec::Spec;

/// Trash subcommands.
#[derive(Debug, Subcommand)]
pub enum TrashCmd {
    /// Move an image to the trash (refused while it is in use).
    #[command(alias = "move")]
    Mv {
        /// [pool/[namespace/]]image
        image: String,
        /// Keep it restorable for at least this long (removal needs --force before):
        /// seconds, or 30m, 12h, 7d.
        #[arg(long, default_value = "0")]
        delay: String,
    },
    /// List the trash of the pool.
    #[command(alias = "list")]
    Ls,
    /// Restore a trashed image, by id or by its name.
    Restore {
        /// Trash id, or the image's old name when only one entry has it.
        entry: String,
        /// Restore under this name (default: the old name).
        #[arg(long)]
        image: Option<String>,
    },
    /// Delete a trashed image for good, by id or by its name.
    #[command(alias = "remove")]
    Rm {
        /// Trash id, or the image's old name when only one entry has it.
        entry: String,
        /// Delete even before its deferment ends.
        #[arg(long)]
        force: bool,
    },
}

/// Parses `3600`, `30s`, `30m`, `12h`, `7d`.
fn parse_delay(s: &str) -> CliResult<Duration> {
    let bad = || {
        CliError::Usage(format!(
            "invalid delay {s:?}: use seconds or a number with s, m, h or d (e.g. 12h)"
        ))
    };
    let t = s.trim();
    let (num, mult) = match t.char_indices().last() {
        Some((i, 's')) => (&t[..i], 1),
        Some((i, 'm')) => (&t[..i], 60),
        Some((i, 'h')) => (&t[..i], 3600),
        Some((i, 'd')) => (&t[..i], 86400),
        _ => (t, 1),
    };
    let n: u64 = num.parse().map_err(|_| bad())?;
    n.checked_mul(mult).map(Duration::from_secs).ok_or_else(bad)
}

/// A trash entry with `rbd trash ls -l --format json`'s names (`id`, `name`, `source`,
/// `deleted_at`) plus the deferment end and whether it has passed.
#[derive(Debug, Serialize)]
struct TrashView {
    id: String,
    name: String,
    source: TrashSource,
    deleted_at: String,
    deferment_end_time: String,
    expired: bool,
    deleted_at_unix: u64,
    deferment_end_time_unix: u64,
}

impl From<&TrashEntry> for TrashView {
    fn from(e: &TrashEntry) -> Self {
        TrashView {
            id: e.id.clone(),
            name: e.name.clone(),
            source: e.source,
            deleted_at: ctime(e.deletion_time),
            deferment_end_time: ctime(e.deferment_end_time),
            expired: e.deferment_end_time <= SystemTime::now(),
            deleted_at_unix: unix(e.deletion_time),
            deferment_end_time_unix: unix(e.deferment_end_time),
        }
    }
}

/// Finds a trash entry by id, else by a unique name.
fn resolve(cli: &Cli, io: &rbd_core::IoCtx, entry: &str) -> CliResult<TrashEntry> {
    let list = rbd::trash_list(io)?;
    if let Some(e) = list.iter().find(|e| e.id == entry) {
        return Ok(e.clone());
    }
    let named: Vec<&TrashEntry> = list.iter().filter(|e| e.name == entry).collect();
    match named.as_slice() {
        [one] => Ok((*one).clone()),
        [] => Err(CliError::NotFound(format!(
            "no trash entry with id or name {entry:?} in pool {}",
            cli.pool
        ))),
        many => Err(CliError::Usage(format!(
            "{} trash entries are named {entry:?} (ids {}); give the id",
            many.len(),
            many.iter()
                .map(|e| e.id.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// Runs a trash subcommand.
pub fn run(cli: &Cli, cmd: &TrashCmd) -> CliResult {
    match cmd {
        TrashCmd::Mv { image, delay } => {
            let spec = Spec::image_only(image)?;
            let delay = parse_delay(delay)?;
            let rados = cli.connect()?;
            let io = cli.spec_ioctx(&rados, &spec)?;
            let img = open_ro(&io, &spec.image)?;
            ensure_unused(cli, &rados, &img, &spec)?;
            let id = img.id()?;
            drop(img);
            rbd::trash_move(&io, &spec.image, delay)
                .context(|| format!("moving {} to the trash", spec.display(cli)))?;
            done(
                cli.format,
                json!({"image": spec.display(cli), "id": id, "delay": delay.as_secs()}),
                || format!("moved {} to the trash (id {id})", spec.display(cli)),
            );
            Ok(())
        }
        TrashCmd::Ls => {
            let (_rados, io) = cli.ioctx()?;
            let mut list = rbd::trash_list(&io)?;
            list.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
            let out: Vec<TrashView> = list.iter().map(TrashView::from).collect();
            emit(cli.format, &out, || {
                let mut t = Table::new(&["ID", "NAME", "SOURCE", "DELETED_AT", "STATUS"]);
                for e in &out {
                    let source = serde_json::to_value(e.source)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .unwrap_or_else(|| format!("{:?}", e.source));
                    let status = if e.expired {
                        format!("expired at {}", e.deferment_end_time)
                    } else {
                        format!("protected until {}", e.deferment_end_time)
                    };
                    t.row(vec![
                        e.id.clone(),
                        e.name.clone(),
                        source,
                        e.deleted_at.clone(),
                        status,
                    ]);
                }
                t.render()
            });
            Ok(())
        }
        TrashCmd::Restore { entry, image } => {
            if let Some(n) = image {
                rbd::validate_image_name("image name", n)?;
            }
            let (_rados, io) = cli.ioctx()?;
            let e = resolve(cli, &io, entry)?;
            let name = image.clone().unwrap_or_else(|| e.name.clone());
            rbd::trash_restore(&io, &e.id, image.as_deref())
                .context(|| format!("restoring trash entry {} as {name}", e.id))?;
            done(
                cli.format,
                json!({"id": e.id, "image": format!("{}/{name}", cli.pool)}),
                || format!("restored {} as {}/{name}", e.id, cli.pool),
            );
            Ok(())
        }
        TrashCmd::Rm { entry, force } => {
            let (_rados, io) = cli.ioctx()?;
            let e = resolve(cli, &io, entry)?;
            if !force && e.deferment_end_time > SystemTime::now() {
                return Err(CliError::Denied(format!(
                    "trash entry {} ({}) is protected until {}; pass --force to delete it now",
                    e.id,
                    e.name,
                    ctime(e.deferment_end_time)
                )));
            }
            let p = Progress::new(cli, "Removing image", Unit::Steps);
            rbd::trash_remove_with_progress(&io, &e.id, *force, p.callback())
                .context(|| format!("deleting trash entry {} ({})", e.id, e.name))?;
            p.finish();
            done(cli.format, json!({"removed": e.id, "name": e.name}), || {
                format!("deleted {} ({}) from the trash", e.id, e.name)
            });
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays() {
        assert_eq!(parse_delay("0").unwrap(), Duration::ZERO);
        assert_eq!(parse_delay("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_delay("30m").unwrap(), Duration::from_secs(1800));
        assert_eq!(parse_delay("2d").unwrap(), Duration::from_secs(172_800));
        for bad in ["", "-1", "1w", "h", "1.5h", "99999999999999999999d"] {
            let e = parse_delay(bad).expect_err(bad);
            assert!(e.to_string().contains(&format!("{bad:?}")), "{e}");
        }
    }
}
