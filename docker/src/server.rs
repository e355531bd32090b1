//! HTTP/1.1 over a unix socket: binding (permissions, stale sockets, systemd socket
//! activation), the accept loop, and clean shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use serde::Deserialize;
use tokio::net::UnixListener;

use crate::error::{PluginError, Result};
use crate::protocol::{self, Endpoint};
use crate::service::{self, Reply, Service};

/// Largest request body accepted (Docker's are a few hundred bytes).
pub const MAX_BODY: usize = 1 << 20;
/// How long a client may take to send its headers, and then its body.
pub const REQUEST_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// A listening socket and, when we created the file, what to remove on exit.
#[derive(Debug)]
pub struct Bound {
    /// The listener (non-blocking; registered with tokio by [`serve`]).
    pub listener: std::os::unix::net::UnixListener,
    /// The socket file we created (device, inode) so that exit removes only our own file;
    /// `None` for a socket passed in by systemd, which systemd owns.
    pub owned: Option<OwnedSocket>,
}

/// A socket file created by this process.
#[derive(Debug, Clone)]
pub struct OwnedSocket {
    /// Its path.
    pub path: PathBuf,
    dev: u64,
    ino: u64,
}

impl OwnedSocket {
    /// Removes the file if it is still the one we created (not a successor's).
    pub fn remove(&self) {
        match std::fs::symlink_metadata(&self.path) {
            Ok(m) if m.dev() == self.dev && m.ino() == self.ino => {
                if let Err(e) = std::fs::remove_file(&self.path) {
                    tracing::warn!("cannot remove {}: {e}", self.path.display());
                }
            }
            _ => {}
        }
    }
}

/// Binds `path` for serving: creates the parent directory, clears a stale socket left by
/// a dead process (a live one is an error), and leaves the socket mode 0600 (root only).
///
/// Call it at start-up, before other threads exist (it briefly changes the umask).
pub fn bind(path: &Path) -> Result<Bound> {
    let sock_err = |what: &str, source: io::Error| PluginError::Socket {
        path: path.to_path_buf(),
        what: what.to_string(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)
            .map_err(|e| sock_err(&format!("creating directory {}", dir.display()), e))?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => return Err(PluginError::SocketInUse(path.to_path_buf())),
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                tracing::info!("removing stale socket {} (nobody listens)", path.display());
                std::fs::remove_file(path).map_err(|e| sock_err("removing the stale socket", e))?;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(sock_err("probing the existing socket", e)),
        },
        Ok(_) => return Err(PluginError::NotASocket(path.to_path_buf())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(sock_err("inspecting the path", e)),
    }

    // Create the socket 0600 from the start: nobody else may connect, not even between
    // bind and chmod. The umask is process-wide, and nothing else creates files now.
    // SAFETY: umask has no memory-safety preconditions; it only swaps the process mask.
    let old = unsafe { libc::umask(0o177) };
    let bound = std::os::unix::net::UnixListener::bind(path);
    // SAFETY: as above; restores the previous mask.
    unsafe { libc::umask(old) };
    let std_listener = bound.map_err(|e| sock_err("binding", e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| sock_err("setting mode 0600", e))?;
    let meta = std::fs::symlink_metadata(path).map_err(|e| sock_err("inspecting", e))?;
    std_listener
        .set_nonblocking(true)
        .map_err(|e| sock_err("setting non-blocking mode", e))?;
    Ok(Bound {
        listener: std_listener,
        owned: Some(OwnedSocket {
            path: path.to_path_buf(),
            dev: meta.dev(),
            ino: meta.ino(),
        }),
    })
}

/// The listening socket passed by systemd socket activation (`LISTEN_PID` = our pid and
/// `LISTEN_FDS` >= 1: fd 3), if any. The variables are removed so children do not see them.
///
/// Call it at start-up, before other threads exist (it changes the environment).
pub fn from_systemd() -> Result<Option<Bound>> {
    let pid_ok = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
        == Some(std::process::id());
    let fds = std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|n| n.parse::<u32>().ok())
        .unwrap_or(0);
    if !pid_ok || fds == 0 {
        return Ok(None);
    }
    // SAFETY: called at start-up before any other thread reads or writes the environment.
    unsafe {
        std::env::remove_var("LISTEN_PID");
        std::env::remove_var("LISTEN_FDS");
        std::env::remove_var("LISTEN_FDNAMES");
    }
    const FD: i32 = 3; // SD_LISTEN_FDS_START
    let io_err = |what: &str, source: io::Error| PluginError::Io {
        what: format!("using the socket passed by systemd (fd 3): {what}"),
        source,
    };
    // SAFETY: fcntl(F_GETFD) on an int only queries flags; it touches no memory.
    if unsafe { libc::fcntl(FD, libc::F_GETFD) } < 0 {
        return Err(io_err("fd 3 is not open", io::Error::last_os_error()));
    }
    // SAFETY: systemd passed fd 3 to this process for exactly this purpose and nothing
    // else in the process owns it; the listener becomes its one owner.
    let std_listener = unsafe {
        use std::os::fd::FromRawFd;
        std::os::unix::net::UnixListener::from_raw_fd(FD)
    };
    std_listener
        .set_nonblocking(true)
        .map_err(|e| io_err("setting non-blocking mode", e))?;
    Ok(Some(Bound {
        listener: std_listener,
        owned: None,
    }))
}

/// Serves `service` on `bound` until `shutdown` completes, then stops accepting, removes the
/// socket file (if we created it), and waits up to `grace` for requests in progress.
pub async fn serve(
    bound: Bound,
    service: Arc<Service>,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) -> Result<()> {
    let Bound { listener, owned } = bound;
    let listener = match UnixListener::from_std(listener) {
        Ok(l) => l,
        Err(source) => {
            if let Some(o) = &owned {
                o.remove();
            }
            return Err(PluginError::Io {
                what: "registering the plugin socket with the event loop".into(),
                source,
            });
        }
    };
    let graceful = GracefulShutdown::new();
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(REQUEST_READ_TIMEOUT)
        .keep_alive(true);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let svc = Arc::clone(&service);
                    let conn = builder.serve_connection(
                        TokioIo::new(stream),
                        service_fn(move |req| {
                            let svc = Arc::clone(&svc);
                            async move { Ok::<_, Infallible>(respond(&svc, req).await) }
                        }),
                    );
                    let conn = graceful.watch(conn);
                    tokio::spawn(async move {
                        if let Err(e) = conn.await {
                            tracing::debug!("connection ended with an error: {e}");
                        }
                    });
                }
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    if let Some(o) = &owned {
        o.remove();
    }
    let open = graceful.count();
    if open > 0 {
        tracing::info!("waiting up to {grace:?} for {open} open connection(s)");
    }
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still busy after {grace:?}; exiting anyway");
    }
    Ok(())
}

#[derive(Deserialize)]
struct Peek {
    #[serde(rename = "Name", default)]
    name: String,
    #[serde(rename = "Err", default)]
    err: String,
}

async fn respond(service: &Service, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let start = Instant::now();
    let path = req.uri().path().to_string();
    let reply = if req.method() != Method::POST {
        service::method_not_allowed(req.method().as_str(), &path)
    } else {
        match Endpoint::from_path(&path) {
            None => service::unknown_endpoint(&path),
            Some(ep) => {
                let body = Limited::new(req.into_body(), MAX_BODY).collect();
                match tokio::time::timeout(REQUEST_READ_TIMEOUT, body).await {
                    Ok(Ok(b)) => {
                        let body = b.to_bytes();
                        let reply = service.handle(ep, &body).await;
                        log(ep, &body, &reply, start);
                        reply
                    }
                    Ok(Err(e)) => Reply {
                        status: 400,
                        body: serde_json::to_vec(&protocol::ErrResponse {
                            err: format!("cannot read the request body: {e}"),
                        })
                        .unwrap_or_default(),
                    },
                    Err(_) => Reply {
                        status: 408,
                        body: serde_json::to_vec(&protocol::ErrResponse {
                            err: format!(
                                "the request body did not arrive within {REQUEST_READ_TIMEOUT:?}"
                            ),
                        })
                        .unwrap_or_default(),
                    },
                }
            }
        }
    };
    let mut resp = Response::new(Full::new(Bytes::from(reply.body)));
    *resp.status_mut() = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::OK);
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static(protocol::CONTENT_TYPE),
    );
    resp
}

fn log(ep: Endpoint, body: &[u8], reply: &Reply, start: Instant) {
    let name = serde_json::from_slice::<Peek>(body)
        .map(|p| p.name)
        .unwrap_or_default();
    let err = serde_json::from_slice::<Peek>(&reply.body)
        .map(|p| p.err)
        .unwrap_or_default();
    let ms = start.elapsed().as_millis();
    if !err.is_empty() {
        tracing::warn!(endpoint = ep.method(), volume = %name, ms, "error: {err}");
    } else if ep.is_read_only() {
        tracing::debug!(endpoint = ep.method(), volume = %name, ms, "ok");
    } else {
        tracing::info!(endpoint = ep.method(), volume = %name, ms, "ok");
    }
}
