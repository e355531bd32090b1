//! `rbdctl volume ...`: the Docker plugin's volumes, through the same
//! [`rbd_driver::volume::Driver`] and the same node state.

use clap::{Args, Subcommand};
use rbd_driver::volume::{
    AccessMode, CreateSpec, FsGrowth, ResizeReport, VolumeInfo, VolumeStatus, parse_volume_size,
};
use serde_json::{Value, json};

use crate::Cli;
use crate::error::{CliError, CliResult};
use crate::node::{NODE_HELP, NodeArgs, driver, parse_options};
use crate::output::{Format, Table, ctime, done, emit, human_size, unix};

/// The help after `rbdctl volume --help`: options, exit codes and node settings.
pub fn help() -> String {
    format!("{VOLUME_HELP}\n{NODE_HELP}")
}

const VOLUME_HELP: &str = "\
A volume named N is the RBD image N in its pool, with its options in the image's metadata
and an entry in the cluster-wide name index; it is what `docker volume create -d rbd`
makes. These commands use the same driver and node state as the Docker plugin.

Options for `volume create -o KEY=VALUE` (Docker's -o keys): size (a bare number is GiB:
2 = 2 GiB; or 512M, 2G, 1T), pool, namespace, data-pool, fstype (ext4|xfs|btrfs),
features, object-size, mkfs-options, mount-options, access (rw|ro), from-snapshot
(volume@snap or pool/[namespace/]image@snap).

Exit codes:
  0  success
  1  failure
  2  invalid input: bad name, unknown option or bad value (nothing was created)
  3  not found: no such volume; a mount ID that does not hold the volume (detach)
  4  exists: a volume of that name with other options
  5  in use: attached (the message names the node, mountpoint and mount IDs), open by
     another client, or held by another node
  6  cluster unavailable: timed out, or our client is blocklisted
";

/// `rbdctl volume`.
#[derive(Debug, Args)]
pub struct VolumeArgs {
    /// Node settings.
    #[command(flatten)]
    pub node: NodeArgs,
    /// The subcommand.
    #[command(subcommand)]
    pub cmd: VolumeCmd,
}

/// Volume subcommands.
#[derive(Debug, Subcommand)]
pub enum VolumeCmd {
    /// Create a volume (idempotent when a volume of that name has the same options).
    Create {
        /// Volume name: letters, digits, '_', '.', '-'.
        name: String,
        /// Volume option KEY=VALUE (repeatable), as `docker volume create -o`.
        #[arg(short = 'o', long = "opt", value_name = "KEY=VALUE")]
        opts: Vec<String>,
    },
    /// Remove a volume and its image (refused while attached anywhere).
    #[command(alias = "remove")]
    Rm {
        /// Volume name.
        name: String,
        /// Detach this node's mounts of it first and remove its unused snapshots (never
        /// forces other clients or nodes).
        #[arg(long)]
        force: bool,
        /// Take it from another node that uses it: that node is made to release it
        /// (unmounted from under its containers), and fenced if it does not.
        #[arg(long)]
        take_over: bool,
    },
    /// List volumes.
    #[command(alias = "list")]
    Ls,
    /// Show a volume's details.
    #[command(alias = "info")]
    Inspect {
        /// Volume name.
        name: String,
    },
    /// Attach (map, format if blank, mount) a volume on this node for a mount ID; prints
    /// its mountpoint. Each mount ID holds one reference.
    Attach {
        /// Volume name.
        name: String,
        /// The reference's id (1-128 of letters, digits, '_', '.', '-', ':').
        #[arg(long)]
        mount_id: String,
        /// Read-only (default: the volume's access option).
        #[arg(long, alias = "read-only", conflicts_with = "rw")]
        ro: bool,
        /// Read-write.
        #[arg(long)]
        rw: bool,
        /// Take it from another node that uses it: that node is made to release it
        /// (unmounted from under its containers), and fenced if it does not.
        #[arg(long)]
        take_over: bool,
    },
    /// Drop a mount ID's reference; the last one unmounts and unmaps.
    Detach {
        /// Volume name.
        name: String,
        /// The reference to drop.
        #[arg(long)]
        mount_id: String,
    },
    /// Grow a volume (image and filesystem).
    Resize {
        /// Volume name.
        name: String,
        /// New size: a bare number is GiB; or 512M, 2G, 1T.
        #[arg(short = 's', long, allow_hyphen_values = true)]
        size: String,
    },
    /// Take a snapshot of a volume (the filesystem is frozen while attached).
    #[command(alias = "snap")]
    Snapshot {
        /// Volume name.
        name: String,
        /// Snapshot name.
        snap: String,
    },
    /// Where a volume is attached and mapped, its mount IDs, watchers and lock owners.
    Status {
        /// Volume name.
        name: String,
    },
}

/// Runs a volume subcommand.
pub fn run(cli: &Cli, a: &VolumeArgs) -> CliResult {
    let node = &a.node;
    match &a.cmd {
        VolumeCmd::Create { name, opts } => {
            let opts = parse_options("volume option", opts)?;
            // Everything is validated before connecting: bad input changes nothing.
            let spec = CreateSpec::from_options(&opts)?;
            rbd_driver::volume::validate_volume_name(name)?;
            let d = driver(cli, node)?;
            let info = d.create(name, &spec)?;
            show_info(cli.format, &info);
            Ok(())
        }
        VolumeCmd::Rm {
            name,
            force,
            take_over,
        } => {
            rbd_driver::volume::validate_volume_name(name)?;
            let d = driver(cli, node)?;
            let r = d.remove_with(
                name,
                &rbd_driver::volume::RemoveOptions {
                    force: *force,
                    take_over: *take_over,
                },
            )?;
            let (released, fenced) = claim_summary(r.claim.as_ref());
            done(
                cli.format,
                json!({ "removed": name, "released_by": released, "fenced": fenced }),
                || {
                    let mut s = format!("removed volume {name}");
                    if !released.is_empty() {
                        s.push_str(&format!(" (released by node {})", released.join(", ")));
                    }
                    if !fenced.is_empty() {
                        s.push_str(&format!(" (fenced node {})", fenced.join(", ")));
                    }
                    s
                },
            );
            Ok(())
        }
        VolumeCmd::Ls => {
            let d = driver(cli, node)?;
            let mut list = d.list()?;
            list.sort_by(|a, b| a.name.cmp(&b.name));
            let views: Vec<Value> = list.iter().map(info_json).collect();
            emit(cli.format, &views, || {
                let mut t = Table::new(&[
                    "NAME",
                    "POOL",
                    "NAMESPACE",
                    "SIZE",
                    "FSTYPE",
                    "ACCESS",
                    "MOUNTPOINT",
                ]);
                for i in &list {
                    t.row(vec![
                        i.name.clone(),
                        i.pool.clone(),
                        dash(&i.namespace),
                        human_size(i.size),
                        i.fstype
                            .map(|f| f.to_string())
                            .unwrap_or_else(|| "-".into()),
                        i.access.to_string(),
                        i.mountpoint
                            .as_ref()
                            .map(|p| p.display().to_string())
                            .unwrap_or_else(|| "-".into()),
                    ]);
                }
                t.render()
            });
            Ok(())
        }
        VolumeCmd::Inspect { name } => {
            rbd_driver::volume::validate_volume_name(name)?;
            let d = driver(cli, node)?;
            show_info(cli.format, &d.get(name)?);
            Ok(())
        }
        VolumeCmd::Attach {
            name,
            mount_id,
            ro,
            rw,
            take_over,
        } => {
            rbd_driver::volume::validate_volume_name(name)?;
            rbd_driver::volume::validate_mount_id(mount_id)?;
            let mode = match (ro, rw) {
                (true, _) => Some(AccessMode::ReadOnly),
                (_, true) => Some(AccessMode::ReadWrite),
                _ => None,
            };
            let d = driver(cli, node)?;
            let r = d.attach_with(
                name,
                mount_id,
                &rbd_driver::volume::AttachOptions {
                    mode,
                    take_over: *take_over,
                },
            )?;
            let mp = r.mountpoint;
            let (released, fenced) = claim_summary(r.claim.as_ref());
            emit(
                cli.format,
                &json!({
                    "volume": name,
                    "mount_id": mount_id,
                    "mountpoint": mp,
                    "released_by": released,
                    "fenced": fenced,
                }),
                || format!("{}\n", mp.display()),
            );
            Ok(())
        }
        VolumeCmd::Detach { name, mount_id } => {
            rbd_driver::volume::validate_volume_name(name)?;
            rbd_driver::volume::validate_mount_id(mount_id)?;
            let d = driver(cli, node)?;
            let r = d.detach_with_report(name, mount_id)?;
            if r.unknown_mount_id {
                return Err(CliError::NotFound(if r.remaining_mount_ids.is_empty() {
                    format!(
                        "volume {name} is not attached on this node (mount ID {mount_id} holds \
                         nothing); nothing was changed"
                    )
                } else {
                    format!(
                        "mount ID {mount_id} does not hold volume {name} on this node (held by \
                         {}); nothing was changed",
                        r.remaining_mount_ids.join(", ")
                    )
                }));
            }
            done(
                cli.format,
                serde_json::to_value(&r).unwrap_or(Value::Null),
                || {
                    if r.remaining_mount_ids.is_empty() {
                        let mut s = format!("detached volume {name}");
                        if !r.actions.is_empty() {
                            s.push_str(&format!(": {}", r.actions.join(", ")));
                        }
                        s
                    } else {
                        format!(
                            "released mount ID {mount_id}; volume {name} stays attached for {}",
                            r.remaining_mount_ids.join(", ")
                        )
                    }
                },
            );
            Ok(())
        }
        VolumeCmd::Resize { name, size } => {
            rbd_driver::volume::validate_volume_name(name)?;
            let bytes = parse_volume_size(size)?;
            let d = driver(cli, node)?;
            let r = d.resize_with_report(name, bytes)?;
            let mut v = serde_json::to_value(&r).unwrap_or(Value::Null);
            if let Some(o) = v.as_object_mut() {
                // The old output's key, kept for scripts.
                o.insert("size".into(), json!(bytes));
            }
            done(cli.format, v, || resize_text(&r));
            Ok(())
        }
        VolumeCmd::Snapshot { name, snap } => {
            rbd_driver::volume::validate_volume_name(name)?;
            let d = driver(cli, node)?;
            d.snapshot(name, snap)?;
            done(
                cli.format,
                json!({ "volume": name, "snapshot": snap }),
                || format!("created snapshot {name}@{snap}"),
            );
            Ok(())
        }
        VolumeCmd::Status { name } => {
            rbd_driver::volume::validate_volume_name(name)?;
            let d = driver(cli, node)?;
            let s = d.status(name)?;
            emit(cli.format, &s, || status_text(&s));
            Ok(())
        }
    }
}

/// `rbdctl volume resize`'s text: the image's new size, then what the filesystem did.
fn resize_text(r: &ResizeReport) -> String {
    let mut s = format!(
        "resized volume {} to {}",
        r.volume,
        human_size(r.image_size)
    );
    match (r.filesystem, r.fs_size_before, r.fs_size_after) {
        (FsGrowth::Online, Some(b), Some(a)) => s.push_str(&format!(
            "; {} filesystem grown online at {}: {} -> {}",
            r.fstype.map(|f| f.to_string()).unwrap_or_default(),
            r.mountpoint
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            human_size(b),
            human_size(a)
        )),
        _ => s.push_str(&format!("; {}", r.note)),
    }
    s
}

fn dash(s: &str) -> String {
    if s.is_empty() { "-".into() } else { s.into() }
}

/// A volume as JSON: [`VolumeInfo`]'s fields, `created_at` in Unix seconds.
fn info_json(i: &VolumeInfo) -> Value {
    let mut v = serde_json::to_value(i).unwrap_or(Value::Null);
    if let Some(o) = v.as_object_mut() {
        o.insert("created_at".into(), json!(i.created_at.map(unix)));
    }
    v
}

fn show_info(format: Format, i: &VolumeInfo) {
    emit(format, &info_json(i), || {
        let mut s = String::new();
        let mut line = |k: &str, v: String| s.push_str(&format!("{k}: {v}\n"));
        line("name", i.name.clone());
        line(
            "image",
            rbd_driver::mapper::image_spec(&i.pool, &i.namespace, &i.image, None),
        );
        line("image id", i.image_id.clone());
        line("size", format!("{} ({} bytes)", human_size(i.size), i.size));
        line(
            "fstype",
            i.fstype
                .map(|f| f.to_string())
                .unwrap_or_else(|| "-".into()),
        );
        line("access", i.access.to_string());
        if let Some(t) = i.created_at {
            line("created", ctime(t));
        }
        line(
            "mountpoint",
            i.mountpoint
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "- (not attached on this node)".into()),
        );
        for (k, v) in &i.status {
            if matches!(
                k.as_str(),
                "pool" | "namespace" | "image_id" | "size" | "fstype" | "access" | "mountpoint"
            ) {
                continue;
            }
            let text = match v {
                Value::String(s) => s.clone(),
                Value::Null => "-".into(),
                other => other.to_string(),
            };
            line(&k.replace('_', " "), text);
        }
        s
    });
}

fn status_text(s: &VolumeStatus) -> String {
    let mut out = String::new();
    let mut line = |k: &str, v: String| out.push_str(&format!("{k}: {v}\n"));
    line("volume", s.name.clone());
    line("node", s.node.clone());
    line(
        "image",
        format!(
            "{} (id {})",
            rbd_driver::mapper::image_spec(&s.pool, &s.namespace, &s.name, None),
            s.image_id
        ),
    );
    match &s.local {
        None => line("attached here", "no".into()),
        Some(l) => {
            line(
                "attached here",
                format!(
                    "{} at {} ({}, {})",
                    if l.mounted { "mounted" } else { "NOT mounted" },
                    l.mountpoint.display(),
                    l.access,
                    serde_json::to_value(l.phase)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .unwrap_or_default()
                ),
            );
            line(
                "device",
                l.device
                    .as_ref()
                    .map(|d| d.display().to_string())
                    .unwrap_or_else(|| "-".into()),
            );
            line("mount IDs", l.mount_ids.join(", "));
        }
    }
    let mut t = Table::new(&["DEVICE", "BACKEND", "PID", "CLIENT"]);
    for m in &s.local_mappings {
        t.row(vec![
            m.device.display().to_string(),
            m.backend.to_string(),
            m.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
            m.client_addr
                .map(|a| a.to_legacy_string())
                .unwrap_or_else(|| "-".into()),
        ]);
    }
    if s.local_mappings.is_empty() {
        line("local mappings", "none".into());
    } else {
        out.push_str("local mappings:\n");
        for l in t.render().lines() {
            out.push_str(&format!("  {l}\n"));
        }
    }
    if s.watchers.is_empty() {
        out.push_str("watchers: none\n");
    } else {
        out.push_str("watchers:\n");
        for w in &s.watchers {
            out.push_str(&format!(
                "  {} {}{}\n",
                w.client,
                w.addr,
                if w.local_mapping {
                    " (this node's mapping)"
                } else {
                    ""
                }
            ));
        }
    }
    out.push_str(&format!(
        "lock owners: {}\n",
        if s.lock_owners.is_empty() {
            "none".into()
        } else {
            s.lock_owners.join(", ")
        }
    ));
    out
}

/// The nodes that released the image to a claim, and the nodes fenced by it.
fn claim_summary(claim: Option<&rbd_driver::cluster::Claim>) -> (Vec<String>, Vec<String>) {
    let Some(c) = claim else {
        return (Vec::new(), Vec::new());
    };
    (
        c.released_by.iter().map(|n| n.to_string()).collect(),
        c.fenced
            .iter()
            .map(|f| {
                f.record
                    .fenced_node
                    .as_ref()
                    .map(|n| n.to_string())
                    .unwrap_or_else(|| "?".into())
            })
            .collect(),
    )
}
