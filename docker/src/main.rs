//! `docker-volume-rbd`: the Docker volume plugin for Ceph RBD volumes.
//!
//! Serves Docker's volume plugin protocol on a unix socket (default
//! `/run/docker/plugins/rbd.sock`, so volumes use `-d rbd`). Configuration comes from a
//! config file, the environment and these flags; see the library's `config` module.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use docker_volume_rbd::app;
use docker_volume_rbd::backend::VolumeBackend;
use docker_volume_rbd::config::{ENV_VARS, Overrides, PluginConfig};
use docker_volume_rbd::error::chain;
use docker_volume_rbd::rbd::{RbdBackend, daemon_options, driver_config};
use docker_volume_rbd::worker::WorkerPool;

fn env_help() -> String {
    let mut s = String::from(
        "Configuration: built-in defaults, then the config file (TOML, or JSON if it ends in \
         .json; default /etc/rbd-volumes/plugin.toml), then these environment variables, \
         then the flags above. Empty variables count as unset.\n\n",
    );
    for (k, what) in ENV_VARS {
        s.push_str(&format!("  {k:<20} {what}\n"));
    }
    s.push_str(
        "\nSignals: SIGTERM or SIGINT stop the plugin cleanly (the socket is removed). \
         Exit codes: 0 after a clean stop, 1 on a start-up error (bad configuration, socket \
         in use).",
    );
    s
}

/// Docker volume plugin for Ceph RBD volumes.
#[derive(Parser, Debug)]
#[command(name = "docker-volume-rbd", version, about, after_help = env_help())]
struct Cli {
    /// Config file (also RBD_PLUGIN_CONFIG).
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Socket to serve on (also RBD_PLUGIN_SOCKET).
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Log filter, e.g. info, debug, docker_volume_rbd=debug (also RBD_LOG).
    #[arg(long, value_name = "FILTER")]
    log: Option<String>,
    /// Check the configuration, print it, and exit.
    #[arg(long)]
    check_config: bool,
    /// Run as the plugin's volume worker (started by the plugin itself; see the
    /// library's `worker` module).
    #[arg(long, hide = true)]
    volume_worker: bool,
}

fn main() -> ExitCode {
    // Ceph's static constructors ran on this stack before main; their frames are dead.
    let released = docker_volume_rbd::memory::release_unused_stack();
    let cli = Cli::parse();
    let overrides = Overrides {
        config: cli.config,
        socket: cli.socket,
        log: cli.log,
    };
    let cfg = match PluginConfig::load(&overrides) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("docker-volume-rbd: {}", chain(&e));
            return ExitCode::from(1);
        }
    };
    if let Err(e) = init_logging(&cfg.log) {
        eprintln!(
            "docker-volume-rbd: invalid log filter {:?} (--log / RBD_LOG / log): {e}",
            cfg.log
        );
        return ExitCode::from(1);
    }
    if cli.volume_worker {
        return docker_volume_rbd::worker::serve(&cfg);
    }
    // Before any thread of the plugin exists.
    let one_arena = docker_volume_rbd::memory::single_arena();
    if docker_volume_rbd::reaper::start_if_init() {
        tracing::info!("running as PID 1 of this PID namespace: reaping orphaned processes");
    }
    if !one_arena {
        tracing::debug!("malloc did not take M_ARENA_MAX = 1");
    }
    match released {
        Ok(n) => tracing::debug!("released {} KiB of dead start-up stack", n / 1024),
        Err(e) => tracing::debug!("cannot release the dead start-up stack: {e}"),
    }
    let dcfg = match driver_config(&cfg) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("docker-volume-rbd: {}", chain(&e));
            return ExitCode::from(1);
        }
    };
    if cli.check_config {
        use std::io::Write;
        // A closed pipe (`| head`) is not an error here.
        let _ = writeln!(std::io::stdout(), "{cfg:#?}\n{:#?}", dcfg.defaults);
        return ExitCode::SUCCESS;
    }
    let (program, args) = WorkerPool::this_executable();
    let factory: app::BackendFactory = Box::new(move |cfg: &PluginConfig| {
        RbdBackend::connect(
            dcfg.clone(),
            daemon_options(cfg),
            program.clone(),
            args.clone(),
            cfg.worker_idle,
        )
        .map(|b| Arc::new(b) as Arc<dyn VolumeBackend>)
    });
    match app::run(cfg, factory) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("docker-volume-rbd: {}", chain(&e));
            ExitCode::from(1)
        }
    }
}

fn init_logging(filter: &str) -> Result<(), tracing_subscriber::filter::ParseError> {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    Ok(())
}
