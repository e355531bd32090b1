//! `rbdctl`: a command-line tool for RBD images, volumes and fencing, in the spirit of
//! Ceph's `rbd`, built on `rbd-core` and `rbd-driver`.
//!
//! ```text
//! rbdctl -c /etc/ceph/ceph.conf create --size 10G db1
//! rbdctl ls -l
//! rbdctl info db1 --format json
//! rbdctl fence ls
//! ```

mod cmd;
mod error;
mod output;

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
  3  not found (image, snapshot, volume, pool)
  4  already exists
  5  in use (watchers, locks, mounts) or has snapshots
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
    #[arg(long = "keyring", global = true)]
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
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
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
    /// Show an image's details.
    Info {
        /// Image name.
        image: String,
    },
    /// Remove an image (refused while in use or with snapshots).
    #[command(alias = "remove")]
    Rm {
        /// Image name.
        image: String,
    },
    /// Show an image's watchers (exact client addresses) and lock owners.
    Status {
        /// Image name.
        image: String,
    },
    /// Blocklist (fence) client addresses: ls, add, rm.
    #[command(subcommand)]
    Fence(cmd::fence::FenceCmd),
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
        if let Some(k) = &self.keyring {
            o = o.keyring(k);
        }
        Ok(rbd_core::Rados::connect(&o)?)
    }

    /// Connects and opens an I/O context on the pool and namespace.
    pub fn ioctx(&self) -> CliResult<(rbd_core::Rados, rbd_core::IoCtx)> {
        let rados = self.connect()?;
        let mut io = rados.ioctx(&self.pool)?;
        if !self.namespace.is_empty() {
            io.set_namespace(&self.namespace)?;
        }
        Ok((rados, io))
    }
}

fn run(cli: &Cli) -> CliResult {
    match &cli.command {
        Command::Create(a) => cmd::image::create(cli, a),
        Command::Ls { long } => cmd::image::ls(cli, *long),
        Command::Info { image } => cmd::image::info(cli, image),
        Command::Rm { image } => cmd::image::rm(cli, image),
        Command::Status { image } => cmd::image::status(cli, image),
        Command::Fence(c) => cmd::fence::run(cli, c),
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
