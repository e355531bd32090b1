//! The endpoints: decode a request, run the driver call on the blocking pool under a
//! deadline, encode the answer.
//!
//! Reliability rules, all enforced here:
//! - Every driver call runs on tokio's blocking pool and is awaited with a deadline
//!   ([`Deadlines`]). When it passes, the request is answered with `Err` while the call
//!   finishes in the background; a stuck Ceph call never blocks another endpoint, and the
//!   event loop never blocks at all.
//! - Reads (List, Get, Path) are single-flight: concurrent identical reads share one driver
//!   call, and a read whose call is still stuck from an earlier request joins it instead of
//!   starting another, so a dead cluster cannot pile up blocked threads. A write on a volume
//!   detaches it from earlier reads, which therefore never answer stale data after it.
//! - Get falls back to local state when the cluster cannot answer: a volume mounted on this
//!   node is reported with its mountpoint and a warning in `Status`.
//! - A Mount that times out is abandoned: if the attach completes later, it is detached
//!   again at once, since Docker treats the mount as failed (and Docker's Unmount after a
//!   failed Mount is harmless: unknown mount ids are not an error).
//! - Errors go in `Err`, with HTTP 200 as Docker expects. Only malformed requests (400)
//!   and unknown paths (404) get another status; they carry `Err` too.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use rbd_driver::DriverError;

use crate::error::PluginError;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::backend::{VolumeBackend, VolumeEntry};
use crate::error::chain;
use crate::protocol::{
    ActivateResponse, Capabilities, CapabilitiesResponse, CreateRequest, Endpoint, ErrResponse,
    GetResponse, IMPLEMENTS, ListResponse, MountRequest, MountpointResponse, NameRequest, Volume,
};
use crate::rfc3339;

/// How long each kind of call may take before the request is answered with `Err`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadlines {
    /// List, Get and Path. Default 8 s, so they answer within 10 s even with the mons down.
    pub read: Duration,
    /// Create, Remove, Mount and Unmount. Default 90 s: below dockerd's own 2 minute
    /// request timeout, after which dockerd would retry the call.
    pub write: Duration,
}

impl Default for Deadlines {
    fn default() -> Self {
        Self {
            read: Duration::from_secs(8),
            write: Duration::from_secs(90),
        }
    }
}

/// An HTTP answer: status code and JSON body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// HTTP status (200 unless the request itself was malformed or unknown).
    pub status: u16,
    /// The JSON body.
    pub body: Vec<u8>,
}

impl Reply {
    fn json<T: Serialize>(status: u16, v: &T) -> Reply {
        // Serializing these plain structs cannot fail; fall back to a fixed body anyway.
        let body = serde_json::to_vec(v)
            .unwrap_or_else(|_| br#"{"Err":"internal error: cannot encode the answer"}"#.to_vec());
        Reply { status, body }
    }
    fn ok<T: Serialize>(v: &T) -> Reply {
        Reply::json(200, v)
    }
    fn err(status: u16, msg: String) -> Reply {
        Reply::json(status, &ErrResponse { err: msg })
    }
}

/// Why a call failed, in a form that can be shared between joined requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The message for `Err`: what failed and why, with its causes.
    pub message: String,
    /// Whether the answer is definitive.
    pub kind: FailureKind,
}

/// Classes of [`Failure`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailureKind {
    /// The volume does not exist.
    NotFound,
    /// The request was rejected (bad name, bad option); nothing was changed.
    Invalid,
    /// Anything else: the cluster is unreachable or slow, a local step failed...
    Other,
}

impl FailureKind {
    /// The class of a volume operation's error.
    pub fn of(e: &PluginError) -> FailureKind {
        match e {
            PluginError::Driver(DriverError::NoSuchVolume(_)) => FailureKind::NotFound,
            PluginError::Driver(DriverError::InvalidInput { .. }) => FailureKind::Invalid,
            PluginError::Worker { class, .. } => *class,
            _ => FailureKind::Other,
        }
    }
}

impl Failure {
    fn from_error(e: &PluginError) -> Failure {
        Failure {
            message: chain(e),
            kind: FailureKind::of(e),
        }
    }
    fn other(message: String) -> Failure {
        Failure {
            message,
            kind: FailureKind::Other,
        }
    }
}

type Outcome<T> = Result<T, Failure>;
type Flight<T> = Shared<BoxFuture<'static, Outcome<T>>>;

/// In-flight reads keyed by volume name (`""` for List), each tagged with a generation so
/// only its own completion removes it.
struct Flights<T: Clone> {
    map: Mutex<HashMap<String, (u64, Flight<T>)>>,
}

impl<T: Clone + Send + Sync + 'static> Flights<T> {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            map: Mutex::new(HashMap::new()),
        })
    }

    /// The in-flight call for `key`, or a new one running `f` on the blocking pool.
    fn join_or_start<F>(
        self: &Arc<Self>,
        key: &str,
        generation: &AtomicU64,
        what: String,
        f: F,
    ) -> Flight<T>
    where
        F: FnOnce() -> Result<T, PluginError> + Send + 'static,
    {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, fl)) = map.get(key) {
            return fl.clone();
        }
        let id = generation.fetch_add(1, Ordering::Relaxed);
        let task = tokio::task::spawn_blocking(f);
        let this = Arc::clone(self);
        let k = key.to_string();
        let fut: BoxFuture<'static, Outcome<T>> = async move {
            let out = match task.await {
                Ok(Ok(v)) => Ok(v),
                Ok(Err(e)) => Err(Failure::from_error(&e)),
                Err(j) => Err(Failure::other(format!(
                    "{what} failed: internal error: {j}"
                ))),
            };
            let mut map = this.map.lock().unwrap_or_else(|p| p.into_inner());
            if map.get(&k).is_some_and(|(g, _)| *g == id) {
                map.remove(&k);
            }
            out
        }
        .boxed();
        let shared = fut.shared();
        map.insert(key.to_string(), (id, shared.clone()));
        // Drive it to completion even if every request gives up waiting, so the entry is
        // removed as soon as the call returns.
        tokio::spawn(shared.clone());
        shared
    }

    /// Detaches `key` from its in-flight call: later requests start a fresh one.
    fn forget(&self, key: &str) {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
    }
}

/// The backend, once connected. The plugin answers before the driver has connected to the
/// cluster (or when it cannot), with an `Err` saying so.
#[derive(Clone)]
pub struct BackendSlot {
    inner: Arc<RwLock<SlotState>>,
}

enum SlotState {
    Connecting { last_error: Option<String> },
    Ready(Arc<dyn VolumeBackend>),
}

impl Default for BackendSlot {
    fn default() -> Self {
        Self::new()
    }
}

impl BackendSlot {
    /// An empty slot: requests answer "not connected yet".
    pub fn new() -> Self {
        Self {
            inner: Arc::new(RwLock::new(SlotState::Connecting { last_error: None })),
        }
    }
    /// A slot holding `b`.
    pub fn ready(b: Arc<dyn VolumeBackend>) -> Self {
        let s = Self::new();
        s.set(b);
        s
    }
    /// Installs the connected backend.
    pub fn set(&self, b: Arc<dyn VolumeBackend>) {
        *self.inner.write().unwrap_or_else(|p| p.into_inner()) = SlotState::Ready(b);
    }
    /// Records why the last connection attempt failed (shown in `Err` until connected).
    pub fn set_error(&self, msg: String) {
        let mut g = self.inner.write().unwrap_or_else(|p| p.into_inner());
        if let SlotState::Connecting { last_error } = &mut *g {
            *last_error = Some(msg);
        }
    }
    /// The backend, once installed.
    pub fn backend(&self) -> Option<Arc<dyn VolumeBackend>> {
        match &*self.inner.read().unwrap_or_else(|p| p.into_inner()) {
            SlotState::Ready(b) => Some(Arc::clone(b)),
            SlotState::Connecting { .. } => None,
        }
    }
    /// True once a backend is installed.
    pub fn is_ready(&self) -> bool {
        matches!(
            *self.inner.read().unwrap_or_else(|p| p.into_inner()),
            SlotState::Ready(_)
        )
    }
    fn get(&self) -> Outcome<Arc<dyn VolumeBackend>> {
        match &*self.inner.read().unwrap_or_else(|p| p.into_inner()) {
            SlotState::Ready(b) => Ok(Arc::clone(b)),
            SlotState::Connecting { last_error } => Err(Failure::other(match last_error {
                None => "the rbd plugin is still connecting to the Ceph cluster; retry in a \
                         few seconds"
                    .to_string(),
                Some(e) => format!(
                    "the rbd plugin is not connected to the Ceph cluster (last attempt: {e}); \
                     check the ceph.conf, client id and keyring it uses and that the mons \
                     are reachable from this node. It keeps retrying."
                ),
            })),
        }
    }
}

/// Where a Mount's attach is, shared between the request and its background call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MountFate {
    Pending,
    Abandoned,
    Done,
}

/// The protocol's endpoints over a [`VolumeBackend`].
pub struct Service {
    backend: BackendSlot,
    deadlines: Deadlines,
    generation: AtomicU64,
    handled: AtomicU64,
    lists: Arc<Flights<Vec<VolumeEntry>>>,
    gets: Arc<Flights<VolumeEntry>>,
    paths: Arc<Flights<Option<PathBuf>>>,
    /// Mounts whose request timed out while their attach still runs, by (volume, mount id).
    /// The attach undoes itself when it finishes, so an Unmount for them has nothing to do.
    abandoned: Arc<Mutex<HashSet<(String, String)>>>,
}

impl Service {
    /// The service over `backend` with these deadlines.
    pub fn new(backend: BackendSlot, deadlines: Deadlines) -> Arc<Self> {
        Arc::new(Self {
            backend,
            deadlines,
            generation: AtomicU64::new(0),
            handled: AtomicU64::new(0),
            lists: Flights::new(),
            gets: Flights::new(),
            paths: Flights::new(),
            abandoned: Arc::new(Mutex::new(HashSet::new())),
        })
    }

    /// The deadlines in force.
    pub fn deadlines(&self) -> Deadlines {
        self.deadlines
    }

    /// How many requests have been answered so far.
    pub fn requests_handled(&self) -> u64 {
        self.handled.load(Ordering::Relaxed)
    }

    /// Answers one request to `endpoint` with JSON `body`.
    pub async fn handle(&self, endpoint: Endpoint, body: &[u8]) -> Reply {
        let reply = self.answer(endpoint, body).await;
        self.handled.fetch_add(1, Ordering::Relaxed);
        reply
    }

    async fn answer(&self, endpoint: Endpoint, body: &[u8]) -> Reply {
        match endpoint {
            Endpoint::Activate => Reply::ok(&ActivateResponse {
                implements: vec![IMPLEMENTS.to_string()],
            }),
            Endpoint::Capabilities => Reply::ok(&CapabilitiesResponse {
                capabilities: Capabilities {
                    scope: "global".to_string(),
                },
            }),
            Endpoint::Create => match decode::<CreateRequest>(endpoint, body) {
                Ok(r) => self.create(r).await,
                Err(reply) => reply,
            },
            Endpoint::Remove => match decode::<NameRequest>(endpoint, body) {
                Ok(r) => self.remove(r).await,
                Err(reply) => reply,
            },
            Endpoint::Mount => match decode::<MountRequest>(endpoint, body) {
                Ok(r) => self.mount(r).await,
                Err(reply) => reply,
            },
            Endpoint::Unmount => match decode::<MountRequest>(endpoint, body) {
                Ok(r) => self.unmount(r).await,
                Err(reply) => reply,
            },
            Endpoint::Path => match decode::<NameRequest>(endpoint, body) {
                Ok(r) => self.path(r).await,
                Err(reply) => reply,
            },
            Endpoint::Get => match decode::<NameRequest>(endpoint, body) {
                Ok(r) => self.get(r).await,
                Err(reply) => reply,
            },
            Endpoint::List => self.list().await,
        }
    }

    /// Forgets in-flight reads that a write on `name` makes stale.
    fn invalidate(&self, name: &str) {
        self.gets.forget(name);
        self.paths.forget(name);
        self.lists.forget("");
    }

    /// Runs a write on the blocking pool under the write deadline.
    async fn write<T, F>(&self, what: String, f: F) -> Outcome<T>
    where
        T: Send + 'static,
        F: FnOnce(&dyn VolumeBackend) -> Result<T, PluginError> + Send + 'static,
    {
        let backend = self.backend.get()?;
        let task = tokio::task::spawn_blocking(move || f(backend.as_ref()));
        let limit = self.deadlines.write;
        match tokio::time::timeout(limit, task).await {
            Ok(Ok(Ok(v))) => Ok(v),
            Ok(Ok(Err(e))) => Err(Failure::from_error(&e)),
            Ok(Err(j)) => Err(Failure::other(format!(
                "{what} failed: internal error: {j}"
            ))),
            Err(_) => Err(timed_out(&what, limit)),
        }
    }

    /// Awaits a shared read under `limit`.
    async fn await_read<T: Clone>(what: &str, flight: Flight<T>, limit: Duration) -> Outcome<T> {
        match tokio::time::timeout(limit, flight).await {
            Ok(out) => out,
            Err(_) => Err(timed_out(what, limit)),
        }
    }

    async fn create(&self, r: CreateRequest) -> Reply {
        let name = r.name;
        let opts = r.opts.unwrap_or_default();
        let what = format!("creating volume {name:?}");
        self.invalidate(&name);
        let n = name.clone();
        let out = self.write(what, move |b| b.create(&n, &opts)).await;
        self.invalidate(&name);
        Reply::ok(&ErrResponse {
            err: out.err().map(|f| f.message).unwrap_or_default(),
        })
    }

    async fn remove(&self, r: NameRequest) -> Reply {
        let name = r.name;
        let what = format!("removing volume {name:?}");
        self.invalidate(&name);
        let n = name.clone();
        let out = self.write(what, move |b| b.remove(&n)).await;
        self.invalidate(&name);
        Reply::ok(&ErrResponse {
            err: out.err().map(|f| f.message).unwrap_or_default(),
        })
    }

    async fn mount(&self, r: MountRequest) -> Reply {
        let MountRequest { name, id } = r;
        let what = format!("mounting volume {name:?} for {id:?}");
        self.invalidate(&name);
        let backend = match self.backend.get() {
            Ok(b) => b,
            Err(f) => return mountpoint_reply(Err(f)),
        };
        let fate = Arc::new(Mutex::new(MountFate::Pending));
        let task = {
            let (name, id, fate) = (name.clone(), id.clone(), Arc::clone(&fate));
            let abandoned = Arc::clone(&self.abandoned);
            tokio::task::spawn_blocking(move || {
                let out = backend.attach(&name, &id);
                let mut f = fate.lock().unwrap_or_else(|p| p.into_inner());
                if *f == MountFate::Abandoned {
                    if out.is_ok() {
                        tracing::warn!(
                            volume = %name, mount_id = %id,
                            "attach finished after its request timed out; detaching again"
                        );
                        if let Err(e) = backend.detach(&name, &id) {
                            tracing::error!(volume = %name, mount_id = %id,
                                "detaching an abandoned mount failed: {}", chain(&e));
                        }
                    }
                    abandoned
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&(name.clone(), id.clone()));
                } else {
                    *f = MountFate::Done;
                }
                out
            })
        };
        let limit = self.deadlines.write;
        let mut task = task;
        let out = match tokio::time::timeout(limit, &mut task).await {
            Ok(joined) => joined,
            Err(_) => {
                let abandoned = {
                    let mut f = fate.lock().unwrap_or_else(|p| p.into_inner());
                    if *f == MountFate::Pending {
                        *f = MountFate::Abandoned;
                        self.abandoned
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .insert((name.clone(), id.clone()));
                        true
                    } else {
                        false
                    }
                };
                if abandoned {
                    self.invalidate(&name);
                    return mountpoint_reply(Err(timed_out(&what, limit)));
                }
                // It finished just as the deadline passed: use its result.
                task.await
            }
        };
        self.invalidate(&name);
        mountpoint_reply(match out {
            Ok(Ok(p)) => Ok(Some(p)),
            Ok(Err(e)) => Err(Failure::from_error(&e)),
            Err(j) => Err(Failure::other(format!(
                "{what} failed: internal error: {j}"
            ))),
        })
    }

    async fn unmount(&self, r: MountRequest) -> Reply {
        let MountRequest { name, id } = r;
        let key = (name.clone(), id.clone());
        if self
            .abandoned
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&key)
        {
            // Docker's Unmount after a Mount that timed out: that attach is still running
            // and undoes itself when it finishes. Nothing to do now, and nothing to wait for.
            tracing::info!(
                volume = %name, mount_id = %id,
                "Unmount of a timed-out Mount: its attach is undone when it finishes"
            );
            return Reply::ok(&ErrResponse { err: String::new() });
        }
        let what = format!("unmounting volume {name:?} for {id:?}");
        self.invalidate(&name);
        let n = name.clone();
        let out = self.write(what, move |b| b.detach(&n, &id)).await;
        self.invalidate(&name);
        let err = match out {
            Ok(()) => String::new(),
            // Nothing of it is mounted here: there is nothing left to undo.
            Err(f) if f.kind == FailureKind::NotFound => String::new(),
            Err(f) => f.message,
        };
        Reply::ok(&ErrResponse { err })
    }

    fn start_path(&self, name: &str) -> Outcome<Flight<Option<PathBuf>>> {
        let backend = self.backend.get()?;
        let n = name.to_string();
        Ok(self.paths.join_or_start(
            name,
            &self.generation,
            format!("looking up the mountpoint of {name:?}"),
            move || backend.path(&n),
        ))
    }

    async fn path(&self, r: NameRequest) -> Reply {
        let what = format!("looking up the mountpoint of volume {:?}", r.name);
        let out = match self.start_path(&r.name) {
            Ok(fl) => Self::await_read(&what, fl, self.deadlines.read).await,
            Err(f) => Err(f),
        };
        mountpoint_reply(out)
    }

    async fn get(&self, r: NameRequest) -> Reply {
        let name = r.name;
        let start = Instant::now();
        let read = self.deadlines.read;
        // The cluster gets three quarters of the budget; the rest is for the local fallback.
        let primary = read.mul_f32(0.75);
        let what = format!("getting volume {name:?}");
        let out = match self.backend.get() {
            Ok(backend) => {
                let n = name.clone();
                let fl =
                    self.gets
                        .join_or_start(&name, &self.generation, what.clone(), move || {
                            backend.get(&n)
                        });
                Self::await_read(&what, fl, primary).await
            }
            Err(f) => Err(f),
        };
        match out {
            Ok(v) => Reply::ok(&GetResponse {
                volume: Some(to_volume(v)),
                err: String::new(),
            }),
            Err(f) if f.kind != FailureKind::Other => Reply::ok(&GetResponse {
                volume: None,
                err: f.message,
            }),
            Err(f) => {
                // The cluster could not answer. A volume mounted here certainly exists:
                // report it from local state, so running containers stay inspectable.
                let left = read.saturating_sub(start.elapsed());
                let local = match self.start_path(&name) {
                    Ok(fl) => Self::await_read("", fl, left).await.ok().flatten(),
                    Err(_) => None,
                };
                match local {
                    Some(mp) => {
                        let mut status = BTreeMap::new();
                        status.insert(
                            "warning".to_string(),
                            serde_json::Value::String(format!(
                                "showing local state only; the cluster did not answer: {}",
                                f.message
                            )),
                        );
                        Reply::ok(&GetResponse {
                            volume: Some(Volume {
                                name,
                                mountpoint: mp.display().to_string(),
                                created_at: None,
                                status,
                            }),
                            err: String::new(),
                        })
                    }
                    None => Reply::ok(&GetResponse {
                        volume: None,
                        err: f.message,
                    }),
                }
            }
        }
    }

    async fn list(&self) -> Reply {
        let what = "listing volumes".to_string();
        let out = match self.backend.get() {
            Ok(backend) => {
                let fl = self
                    .lists
                    .join_or_start("", &self.generation, what.clone(), move || backend.list());
                Self::await_read(&what, fl, self.deadlines.read).await
            }
            Err(f) => Err(f),
        };
        match out {
            Ok(vs) => Reply::ok(&ListResponse {
                volumes: vs.into_iter().map(to_volume).collect(),
                err: String::new(),
            }),
            Err(f) => Reply::ok(&ListResponse {
                volumes: Vec::new(),
                err: f.message,
            }),
        }
    }
}

fn timed_out(what: &str, limit: Duration) -> Failure {
    Failure::other(format!(
        "{what} did not finish within {} s; the Ceph cluster may be unreachable or slow \
         (check `ceph -s` from this node). The operation goes on in the background.",
        limit.as_secs_f32()
    ))
}

fn mountpoint_reply(out: Outcome<Option<PathBuf>>) -> Reply {
    match out {
        Ok(p) => Reply::ok(&MountpointResponse {
            mountpoint: p.map(|p| p.display().to_string()).unwrap_or_default(),
            err: String::new(),
        }),
        Err(f) => Reply::ok(&MountpointResponse {
            mountpoint: String::new(),
            err: f.message,
        }),
    }
}

fn to_volume(v: VolumeEntry) -> Volume {
    Volume {
        name: v.name,
        mountpoint: v
            .mountpoint
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
        created_at: v.created_at.map(rfc3339::format),
        status: v.status,
    }
}

/// Decodes a request body; a malformed one is answered 400 with `Err`.
fn decode<T: DeserializeOwned>(endpoint: Endpoint, body: &[u8]) -> Result<T, Reply> {
    serde_json::from_slice(body).map_err(|e| {
        Reply::err(
            400,
            format!(
                "malformed {} request: {e} (expected a JSON object with Docker's field names)",
                endpoint.method()
            ),
        )
    })
}

/// The answer to a request for a path that is not part of the protocol.
pub fn unknown_endpoint(path: &str) -> Reply {
    Reply::err(
        404,
        format!("{path:?} is not an endpoint of the Docker volume plugin protocol"),
    )
}

/// The answer to a request with a method other than POST.
pub fn method_not_allowed(method: &str, path: &str) -> Reply {
    Reply::err(
        405,
        format!("{method} {path}: the plugin protocol only uses POST"),
    )
}
