//! `rbdctl`: a command-line tool for RBD images, volumes and fencing, in the spirit of
//! Ceph's `rbd`, built on `rbd-core` and `rbd-driver`.
//!
//! ```text
//! rbdctl -c /etc/ceph/ceph.conf create --size 10G db1
//! rbdctl ls -l
//! rbdctl info db1 --format json
//! rbdctl snap create db1@before-upgrade
//! rbdctl clone db1@before-upgrade db1-test
//! rbdctl export db1@before-upgrade - | gzip > db1.img.gz
//! rbdctl fence ls
//! rbdctl registry ls
//! rbdctl watchers db1
//! rbdctl reconcile --dry-run
//! rbdctl daemon            # the node daemon, on hosts that use only the CLI
//! ```

// Doc comments on the argument types are clap's help text and use rbd's spec notation,
// `[pool/[namespace/]]image[@snapshot]`, which rustdoc would read as intra-doc links.
#![allow(rustdoc::broken_intra_doc_links)]

mod cmd;
mod error;
mod node;
mod output;
mod progress;
mod spec;

use std::path::PathBuf;
use std::time::Duration;

use clap::{CommandFactory, Parser, Subcommand};

use error::{CliError, CliResult, exit};
use output::Format;

const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  failure
  2  bad usage or invalid input (nothing was changed)
  3  not found (image, snapshot, volume, pool, mapping, mount ID)
  4  already exists
  5  in use (watchers, locks, mounts, a volume's mount IDs, a mapped device that is
     mounted or open) or has snapshots
  6  cluster unavailable: timed out, or our client is blocklisted
  7  permission denied";

/// Manage Ceph RBD images, volumes, mappings and fencing.
#[derive(Debug, Parser)]
#[command(name = "rbdctl", version, after_help = EXIT_CODES, after_long_help = EXIT_CODES)]
pub struct Cli {
    /// ceph.conf to use (default: $CEPH_CONF, then Ceph's search path).
    #[arg(short = 'c', long = "conf", global = true, env = "CEPH_CONF")]
    pub conf: Option<PathBuf>,
    /// Client id, e.g. `admin` for client.admin.
    #[arg(long = "id", global = true, env = "CEPH_ID", default_value = "admin")]
    pub id: String,
    /// Keyring file (default: the one named in the conf).
    #[arg(long = "keyring", global = true, env = "CEPH_KEYRING")]
    pub keyring: Option<PathBuf>,
    /// Pool.
    #[arg(short = 'p', long = "pool", global = true, default_value = "rbd")]
    pub pool: String,
    /// RADOS namespace within the pool.
    #[arg(long = "namespace", global = true, default_value = "")]
    pub namespace: String,
    /// Output format.
    #[arg(long = "format", global = true, value_enum, default_value = "table")]
    pub format: Format,
    /// Timeout in seconds for every cluster call.
    #[arg(long = "timeout", global = true, default_value_t = 30)]
    pub timeout: u64,
    /// Never draw progress bars (they are drawn on stderr, only when stdout and stderr are
    /// both terminals).
    #[arg(long = "no-progress", global = true)]
    pub no_progress: bool,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
///
/// Image commands are top-level, as with `rbd`; groups (`snap`, `lock`, `image-meta`,
/// `trash`, `feature`, `fence`) are subcommands. Volume and mapping commands get groups of
/// their own (`volume`, `device`).
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create an image.
    Create(cmd::image::CreateArgs),
    /// List images.
    #[command(alias = "list")]
    Ls {
        /// Long listing: size, parent, format, watchers, id.
        #[arg(short = 'l', long)]
        long: bool,
    },
    /// Show an image's (or snapshot's) details, as `rbd info` does.
    Info {
        /// [pool/[namespace/]]image[@snapshot]
        image: String,
    },
    /// Remove an image (refused while in use or with snapshots).
    #[command(alias = "remove")]
    Rm {
        /// [pool/[namespace/]]image
        image: String,
    },
    /// Show an image's watchers (exact client addresses) and lock owners.
    Status {
        /// [pool/[namespace/]]image
        image: String,
    },
    /// Grow (or, with --allow-shrink, shrink) an image.
    Resize(cmd::image::ResizeArgs),
    /// Rename an image within its pool.
    #[command(alias = "mv")]
    Rename {
        /// [pool/[namespace/]]image
        src: String,
        /// The new name (or the same pool/namespace spelled out).
        dst: String,
    },
    /// Copy an image's data (at a snapshot, or the head) into a new image.
    #[command(name = "cp", alias = "copy")]
    Copy(cmd::image::CopyArgs),
    /// Snapshots: create, ls, rm, rollback, protect, unprotect, rename.
    #[command(subcommand)]
    Snap(cmd::snap::SnapCmd),
    /// Create a copy-on-write clone of a snapshot.
    Clone(cmd::clone::CloneArgs),
    /// Copy the parent's data into a clone and detach it.
    Flatten {
        /// [pool/[namespace/]]image
        image: String,
    },
    /// List the clones of an image's snapshots (or of one snapshot).
    Children(cmd::clone::ChildrenArgs),
    /// Export an image's (or snapshot's) data to a file, or to stdout with `-`.
    Export(cmd::transfer::ExportArgs),
    /// Create an image from a file, or from stdin with `-`.
    Import(cmd::transfer::ImportArgs),
    /// Locks: ls shows exclusive-lock owners and advisory lockers; break removes one.
    #[command(subcommand)]
    Lock(cmd::lock::LockCmd),
    /// Image metadata (key/value pairs in the header): get, set, rm, ls.
    #[command(subcommand, name = "image-meta", alias = "meta")]
    ImageMeta(cmd::meta::MetaCmd),
    /// The trash (deferred deletion): mv, ls, restore, rm.
    #[command(subcommand)]
    Trash(cmd::trash::TrashCmd),
    /// Enable or disable image features (exclusive-lock, object-map, fast-diff, ...).
    #[command(subcommand)]
    Feature(cmd::image::FeatureCmd),
    /// Fencing: the blocklist and the fence log (ls, add, rm), and fencing an image's
    /// clients by hand (image).
    #[command(subcommand)]
    Fence(cmd::fence::FenceCmd),
    /// Map an image (or snapshot) to a local block device; prints the device.
    #[command(after_help = cmd::device::DEVICE_EXIT_CODES)]
    Map {
        /// What to map.
        #[command(flatten)]
        args: cmd::device::MapArgs,
        /// Node settings.
        #[command(flatten)]
        node: node::NodeArgs,
    },
    /// Unmap a device, or the devices of an image's current image id.
    #[command(after_help = cmd::device::DEVICE_EXIT_CODES)]
    Unmap {
        /// What to unmap.
        #[command(flatten)]
        args: cmd::device::UnmapArgs,
        /// Node settings.
        #[command(flatten)]
        node: node::NodeArgs,
    },
    /// List this host's mappings (every available backend); same as `device list`.
    Showmapped {
        /// Node settings.
        #[command(flatten)]
        node: node::NodeArgs,
    },
    /// Mappings: map, unmap, list.
    Device(cmd::device::DeviceArgs),
    /// Volumes (as the Docker plugin makes them): create, rm, ls, inspect, attach,
    /// detach, resize, snapshot, status.
    #[command(after_help = cmd::volume::help())]
    Volume(cmd::volume::VolumeArgs),
    /// Mount a volume (through the volume driver) or an image (map + mount) on a directory.
    #[command(after_help = cmd::mount::mount_help())]
    Mount {
        /// What to mount where.
        #[command(flatten)]
        args: cmd::mount::MountArgs,
        /// Node settings.
        #[command(flatten)]
        node: node::NodeArgs,
    },
    /// Unmount what `rbdctl mount` mounted (detaching the volume or unmapping the image).
    #[command(after_help = cmd::mount::umount_help())]
    Umount {
        /// What to unmount.
        #[command(flatten)]
        args: cmd::mount::UmountArgs,
        /// Node settings.
        #[command(flatten)]
        node: node::NodeArgs,
    },
    /// The cluster-wide mapping registry: who maps which image (by id), rw or ro, with
    /// device, exact client address and mount IDs.
    #[command(subcommand)]
    Registry(cmd::cluster::RegistryCmd),
    /// An image's clients: watchers, lock owner, registry holders (node, device, mount
    /// IDs) and whether each is fenced.
    Watchers(cmd::cluster::WatchersArgs),
    /// Run the reconcile check on this node: every local mapping against the cluster
    /// (image gone, held by another node, client blocklisted, mapper gone), cleaning what
    /// is stale (unless --dry-run).
    Reconcile(cmd::daemon::ReconcileArgs),
    /// Run the node daemon, for hosts that use only the CLI: answer other nodes' pings and
    /// release requests for this node, reconcile on start and every --interval.
    ///
    /// A host that runs the Docker plugin does not need it: the plugin process is that
    /// node's daemon (it starts one as soon as it is connected). Run one per node, never
    /// both. A node where neither runs looks dead to the others, which fence its mappings
    /// when they ask for its images. Use the plugin's node settings (RBD_NODE_ID,
    /// RBD_STATE_DIR, RBD_MOUNT_ROOT, RBD_RUN_DIR, or the same flags).
    Daemon(cmd::daemon::DaemonArgs),
    /// Measure I/O on an image, like `rbd bench` (writes change its data).
    Bench(cmd::bench::BenchArgs),
    /// Print library and cluster versions.
    Version,
    /// Print shell completions (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

impl Cli {
    /// Connects to the cluster with the global options.
    pub fn connect(&self) -> CliResult<rbd_core::Rados> {
        let t = Duration::from_secs(self.timeout.max(1));
        let mut o = rbd_core::ConnectOptions::new()
            .id(&self.id)
            .timeouts(rbd_core::Timeouts {
                mon_op: t,
                osd_op: t,
                mount: t,
            });
        if let Some(c) = &self.conf {
            o = o.conf_file(c);
        }
        if let Some(k) = self.keyring.as_ref().filter(|k| !k.as_os_str().is_empty()) {
            o = o.keyring(k);
        }
        Ok(rbd_core::Rados::connect(&o)?)
    }

    /// Connects and opens an I/O context on the pool and namespace.
    pub fn ioctx(&self) -> CliResult<(rbd_core::Rados, rbd_core::IoCtx)> {
        let rados = self.connect()?;
        let io = Self::open_ioctx(&rados, &self.pool, &self.namespace)?;
        Ok((rados, io))
    }

    /// An I/O context on `pool` and `namespace` of an existing connection.
    pub fn open_ioctx(
        rados: &rbd_core::Rados,
        pool: &str,
        namespace: &str,
    ) -> CliResult<rbd_core::IoCtx> {
        let mut io = rados.ioctx(pool)?;
        if !namespace.is_empty() {
            io.set_namespace(namespace)?;
        }
        Ok(io)
    }

    /// An I/O context for the pool and namespace of `spec`.
    pub fn spec_ioctx(
        &self,
        rados: &rbd_core::Rados,
        spec: &spec::Spec,
    ) -> CliResult<rbd_core::IoCtx> {
        Self::open_ioctx(rados, spec.pool(self), spec.namespace(self))
    }
}

fn run(cli: &Cli) -> CliResult {
    match &cli.command {
        Command::Create(a) => cmd::image::create(cli, a),
        Command::Ls { long } => cmd::image::ls(cli, *long),
        Command::Info { image } => cmd::image::info(cli, image),
        Command::Rm { image } => cmd::image::rm(cli, image),
        Command::Status { image } => cmd::image::status(cli, image),
        Command::Resize(a) => cmd::image::resize(cli, a),
        Command::Rename { src, dst } => cmd::image::rename(cli, src, dst),
        Command::Copy(a) => cmd::image::copy(cli, a),
        Command::Snap(c) => cmd::snap::run(cli, c),
        Command::Clone(a) => cmd::clone::clone(cli, a),
        Command::Flatten { image } => cmd::clone::flatten(cli, image),
        Command::Children(a) => cmd::clone::children(cli, a),
        Command::Export(a) => cmd::transfer::export(cli, a),
        Command::Import(a) => cmd::transfer::import(cli, a),
        Command::Lock(c) => cmd::lock::run(cli, c),
        Command::ImageMeta(c) => cmd::meta::run(cli, c),
        Command::Trash(c) => cmd::trash::run(cli, c),
        Command::Feature(c) => cmd::image::feature(cli, c),
        Command::Fence(c) => cmd::fence::run(cli, c),
        Command::Map { args, node } => cmd::device::map(cli, node, args),
        Command::Unmap { args, node } => cmd::device::unmap(cli, node, args),
        Command::Showmapped { node } => cmd::device::list(cli, node),
        Command::Device(a) => cmd::device::run(cli, a),
        Command::Volume(a) => cmd::volume::run(cli, a),
        Command::Mount { args, node } => cmd::mount::mount(cli, node, args),
        Command::Umount { args, node } => cmd::mount::umount(cli, node, args),
        Command::Registry(c) => cmd::cluster::registry(cli, c),
        Command::Watchers(a) => cmd::cluster::watchers(cli, a),
        Command::Reconcile(a) => cmd::daemon::reconcile(cli, a),
        Command::Daemon(a) => cmd::daemon::daemon(cli, a),
        Command::Bench(a) => cmd::bench::bench(cli, a),
        Command::Version => cmd::version(cli),
        Command::Completions { shell } => {
            let mut c = Cli::command();
            clap_complete::generate(*shell, &mut c, "rbdctl", &mut std::io::stdout());
            Ok(())
        }
    }
}

fn main() {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => std::process::exit(exit::OK),
        Err(e) => {
            eprintln!("rbdctl: {}", chain(&e));
            std::process::exit(e.exit_code());
        }
    }
}

/// The error and its causes, `: `-separated.
fn chain(e: &CliError) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(c) = src {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        src = c.source();
    }
    s
}
