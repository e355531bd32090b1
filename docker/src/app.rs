//! Start-up and shutdown of the plugin process.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rbd_driver::DriverError;

use crate::backend::VolumeBackend;
use crate::config::PluginConfig;
use crate::error::{PluginError, Result, chain};
use crate::memory;
use crate::server;
use crate::service::{BackendSlot, Service};

/// Builds the backend from the configuration (connects to the cluster; bounded by the
/// configured Ceph timeouts).
pub type BackendFactory =
    Box<dyn Fn(&PluginConfig) -> Result<Arc<dyn VolumeBackend>, DriverError> + Send>;

/// Runs the plugin until SIGTERM or SIGINT.
///
/// The socket is bound first, so Docker finds the plugin at once; the backend connects in
/// the background and is retried (1 s, 2 s, ... up to 30 s apart) until it succeeds (for
/// the real backend that includes starting the node daemon). Until then every volume call
/// answers `Err` saying why. On a signal the socket is removed, open requests get
/// [`PluginConfig::shutdown_grace`] to finish, the backend is shut down
/// ([`VolumeBackend::shutdown`]: the node daemon stops) within 3 s, and the process
/// returns.
pub fn run(cfg: PluginConfig, factory: BackendFactory) -> Result<()> {
    // Bind before any thread exists (bind briefly changes the umask).
    let bound = match server::from_systemd()? {
        Some(b) => {
            tracing::info!("serving on the socket passed by systemd");
            b
        }
        None => {
            let b = server::bind(&cfg.socket)?;
            tracing::info!("serving on {}", cfg.socket.display());
            b
        }
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(32)
        .thread_keep_alive(Duration::from_secs(10))
        .build()
        .map_err(|source| PluginError::Io {
            what: "starting the event loop".into(),
            source,
        })?;

    let slot = BackendSlot::new();
    let stop = Arc::new(AtomicBool::new(false));
    let connector = {
        let (slot, stop, cfg) = (slot.clone(), Arc::clone(&stop), cfg.clone());
        std::thread::Builder::new()
            .name("connect".into())
            .spawn(move || connect_loop(&cfg, &factory, &slot, &stop))
            .map_err(|source| PluginError::Io {
                what: "starting the connection thread".into(),
                source,
            })?
    };

    // Kept so the driver is released here, under a bound, rather than wherever the last
    // request happens to drop it.
    let keep = slot.clone();
    let service = Service::new(slot, cfg.deadlines);
    let served = rt.block_on(async {
        tokio::spawn(trim_when_quiet(Arc::clone(&service)));
        let shutdown = async {
            let name = wait_for_signal().await;
            tracing::info!("{name} received; shutting down");
        };
        server::serve(bound, service, shutdown, cfg.shutdown_grace).await
    });
    stop.store(true, Ordering::Relaxed);
    // Driver calls still stuck past their deadline must not hold up the exit.
    rt.shutdown_timeout(Duration::from_secs(1));
    if connector.is_finished() {
        let _ = connector.join();
    }
    // Stopping the node daemon (its control watches go) and disconnecting from the cluster
    // may wait for the mons; never let them hold up the exit.
    let (tx, rx) = std::sync::mpsc::channel();
    let dropper = std::thread::spawn(move || {
        if let Some(b) = keep.backend() {
            b.shutdown();
        }
        drop(keep);
        let _ = tx.send(());
    });
    if rx.recv_timeout(Duration::from_secs(3)).is_ok() {
        let _ = dropper.join();
    } else {
        tracing::warn!(
            "the node daemon and the cluster connection did not close within 3 s; exiting anyway"
        );
    }
    served
}

/// How often the heap trimmer looks whether requests came in.
const TRIM_CHECK: Duration = Duration::from_secs(5);

/// Gives the heap's free pages back to the kernel ([`memory::trim_heap`]) once requests
/// have come in and then none for a whole [`TRIM_CHECK`] period: after a burst of Creates
/// glibc keeps megabytes of freed blocks resident otherwise (see BENCHMARKS.md).
async fn trim_when_quiet(service: Arc<Service>) {
    let mut seen = service.requests_handled();
    let mut busy = false;
    loop {
        tokio::time::sleep(TRIM_CHECK).await;
        let now = service.requests_handled();
        if now != seen {
            seen = now;
            busy = true;
        } else if busy {
            busy = false;
            memory::trim_heap();
        }
    }
}

fn connect_loop(
    cfg: &PluginConfig,
    factory: &BackendFactory,
    slot: &BackendSlot,
    stop: &AtomicBool,
) {
    let mut wait = Duration::from_secs(1);
    while !stop.load(Ordering::Relaxed) {
        match factory(cfg) {
            Ok(b) => {
                slot.set(b);
                // Connecting allocated and freed a lot (configuration, monitor maps).
                memory::trim_heap();
                tracing::info!("connected to the Ceph cluster as client.{}", cfg.ceph_id);
                return;
            }
            Err(e) => {
                let msg = chain(&e);
                tracing::error!("cannot start the volume driver (retrying in {wait:?}): {msg}");
                slot.set_error(msg);
            }
        }
        // Sleep in small steps so a shutdown is not delayed.
        let until = std::time::Instant::now() + wait;
        while std::time::Instant::now() < until && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(100));
        }
        wait = (wait * 2).min(Duration::from_secs(30));
    }
}

async fn wait_for_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        },
        (Err(e), _) | (_, Err(e)) => {
            tracing::error!("cannot install signal handlers ({e}); stop the plugin with SIGKILL");
            std::future::pending::<&'static str>().await
        }
    }
}
