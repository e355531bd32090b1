//! Coordination between node daemons: a typed request/response protocol over RADOS
//! watch/notify on one control object per pool ([`CONTROL_OBJECT`]).
//!
//! Every daemon runs a [`ControlServer`]: it watches the control object and answers
//! requests addressed to its node. A requester ([`ControlClient`]) notifies the object;
//! every watcher acknowledges with a JSON [`Response`], and the notify returns when all
//! answered or the timeout passed. Watchers that did not answer are listed, so a requester
//! can tell "the holder refused" from "the holder is silent" (then it fences).
//!
//! Messages (JSON, `v` = [`PROTOCOL_VERSION`]):
//!
//! ```json
//! {"v":1,"id":"3f2a…","from":"node-b","to":"node-a","op":"ping"}
//! {"v":1,"id":"3f2a…","from":"node-b","to":"node-a","op":"release",
//!  "image":{"pool":"rbd","namespace":"","image":"db","image_id":"10ab2c"},"force":false}
//! ```
//! Answers: `{"v":1,"id":"3f2a…","node":"node-a","status":S,…}` with `S` one of `pong`,
//! `ignored` (not addressed to me), `released`, `not-held`,
//! `refused` (`mount_ids`, `reason`), `failed` (`error`).
//!
//! The holder's side is the [`ReleaseHandler`] trait: the node daemon's volume layer says
//! whether the image is in use and releases it (unmount, unmap). After `released` or
//! `not-held` the server also removes its node's record from the registry, so the
//! requester can register as soon as the answer arrives.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use rbd_core::watch::{NotifyTimeout, WatchEvent};
use rbd_core::{CreateMode, ErrorKind, IoCtx, Rados, Watch, WatchOptions};
use serde::{Deserialize, Serialize};

use super::node::NodeId;
use super::registry::{ImageRef, Registry};
use crate::error::{DriverError, Result};

/// The control object's name (in the [`super::NAMESPACE`] namespace of each pool).
pub const CONTROL_OBJECT: &str = "rbd_volumes.control";
/// The protocol version this code speaks.
pub const PROTOCOL_VERSION: u32 = 1;

/// A request to one node (or, with `to: None`, to every node).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// Protocol version.
    pub v: u32,
    /// Request id, echoed in responses and logs.
    pub id: String,
    /// The requesting node.
    pub from: NodeId,
    /// The addressed node; `None` for everyone (only for `ping`).
    #[serde(default)]
    pub to: Option<NodeId>,
    /// What is asked.
    #[serde(flatten)]
    pub op: Op,
}

/// What a [`Request`] asks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Op {
    /// Are you there? (answered at once, without touching any volume)
    Ping,
    /// Release this image: unmount and unmap it, unless it is in use and `force` is
    /// false.
    Release {
        /// The image.
        image: ImageRef,
        /// Release even when in use (lazy unmount, forced unmap).
        force: bool,
    },
}

/// A node's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    /// Protocol version.
    pub v: u32,
    /// The request's id.
    pub id: String,
    /// The answering node.
    pub node: NodeId,
    /// The answer.
    #[serde(flatten)]
    pub status: Status,
}

/// The answer in a [`Response`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "kebab-case")]
pub enum Status {
    /// Answer to a ping.
    Pong,
    /// The request was for another node.
    Ignored,
    /// Released: unmounted, unmapped, and unregistered.
    Released,
    /// This node does not hold the image (any stale registration was removed).
    NotHeld,
    /// In use and not forced: nothing was changed.
    Refused {
        /// The mount IDs using it.
        mount_ids: Vec<String>,
        /// Why, in words.
        reason: String,
    },
    /// The release failed.
    Failed {
        /// What went wrong.
        error: String,
    },
}

/// A release request as the holder sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleaseRequest {
    /// The image to release.
    pub image: ImageRef,
    /// Release even when in use.
    pub force: bool,
    /// The requesting node.
    pub from: NodeId,
    /// The request id (for logs).
    pub id: String,
}

/// What the holder did with a [`ReleaseRequest`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReleaseOutcome {
    /// Unmounted and unmapped; nothing of it is left on this node.
    Released,
    /// This node does not hold the image.
    NotHeld,
    /// In use and not forced: nothing was changed.
    InUse {
        /// The mount IDs using it.
        mount_ids: Vec<String>,
        /// Why, in words (e.g. `mounted at /var/lib/... by 2 containers`).
        reason: String,
    },
    /// The release failed; the image may still be held.
    Failed(String),
}

/// The holder's side of the protocol, implemented by the node daemon (its volume layer
/// knows whether an image is in use and how to release it).
///
/// Called on a worker thread, one release at a time per server; it should finish well
/// within the requester's release timeout.
///
/// An image this node is still *attaching* (claimed, not yet mounted) must count as in
/// use: otherwise the loser of a registration race would ask the winner to release and
/// take the image away from it. Answer [`ReleaseOutcome::NotHeld`] only when nothing of
/// the image is mapped here (the server then removes any registration of ours).
pub trait ReleaseHandler: Send + Sync + 'static {
    /// Releases `req.image` if it is not in use (or `req.force`).
    fn release(&self, req: &ReleaseRequest) -> ReleaseOutcome;
}

impl<F> ReleaseHandler for F
where
    F: Fn(&ReleaseRequest) -> ReleaseOutcome + Send + Sync + 'static,
{
    fn release(&self, req: &ReleaseRequest) -> ReleaseOutcome {
        self(req)
    }
}

fn new_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

fn control_ioctx(rados: &Rados, pool: &str, namespace: &str) -> Result<IoCtx> {
    let io = rados
        .ioctx(pool)
        .and_then(|io| io.with_namespace(namespace))
        .map_err(|e| DriverError::ceph(format!("opening pool {pool} for the control object"), e))?;
    io.create_object(CONTROL_OBJECT, CreateMode::Idempotent)
        .map_err(|e| {
            DriverError::ceph(
                format!("creating the control object {pool}/{namespace}/{CONTROL_OBJECT}"),
                e,
            )
        })?;
    Ok(io)
}

/// Options of a [`ControlServer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerOptions {
    /// How long the OSD keeps our watch after losing contact (`rados_watch3`).
    pub watch_timeout: Duration,
    /// Pause between attempts to re-establish a broken watch.
    pub rewatch_delay: Duration,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            watch_timeout: Duration::from_secs(10),
            rewatch_delay: Duration::from_millis(500),
        }
    }
}

struct Shared {
    io: IoCtx,
    node: NodeId,
    handler: Arc<dyn ReleaseHandler>,
    registry: Registry,
    stop: AtomicBool,
    watching: AtomicBool,
    /// One release at a time.
    releasing: Mutex<()>,
    answered: AtomicU64,
}

/// A node daemon's watch on one pool's control object, answering requests for its node.
///
/// Dropping it (or [`ControlServer::stop`]) stops answering and unwatches.
pub struct ControlServer {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for ControlServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlServer")
            .field("pool", &self.shared.io.pool_name())
            .field("node", &self.shared.node)
            .field("watching", &self.is_watching())
            .finish_non_exhaustive()
    }
}

impl ControlServer {
    /// Watches `pool`'s control object (creating it if needed) in RADOS namespace
    /// `namespace` and answers requests for `node` with `handler`. The first watch is
    /// registered before this returns.
    pub fn start(
        rados: &Rados,
        pool: &str,
        namespace: &str,
        node: NodeId,
        handler: Arc<dyn ReleaseHandler>,
        opts: ServerOptions,
    ) -> Result<ControlServer> {
        let io = control_ioctx(rados, pool, namespace)?;
        let registry = Registry::from_ioctx(
            io.try_clone()
                .map_err(|e| DriverError::ceph("duplicating the control I/O context", e))?,
        );
        let watch = watch(&io, &opts)?;
        let shared = Arc::new(Shared {
            io,
            node,
            handler,
            registry,
            stop: AtomicBool::new(false),
            watching: AtomicBool::new(true),
            releasing: Mutex::new(()),
            answered: AtomicU64::new(0),
        });
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name(format!("rbd-control:{pool}"))
            .spawn(move || serve(s, watch, opts))
            .map_err(|e| DriverError::io("starting the control server thread", e))?;
        Ok(ControlServer {
            shared,
            thread: Some(thread),
        })
    }

    /// True while the watch is established (false while it is being re-established).
    pub fn is_watching(&self) -> bool {
        self.shared.watching.load(Ordering::SeqCst)
    }

    /// How many requests this server has answered.
    pub fn answered(&self) -> u64 {
        self.shared.answered.load(Ordering::SeqCst)
    }

    /// The node this server answers for.
    pub fn node(&self) -> &NodeId {
        &self.shared.node
    }

    /// Stops answering and unwatches.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn watch(io: &IoCtx, opts: &ServerOptions) -> Result<Watch> {
    io.watch_with_options(
        CONTROL_OBJECT,
        &WatchOptions::new().timeout(opts.watch_timeout),
    )
    .map_err(|e| {
        DriverError::ceph(
            format!(
                "watching the control object {}/{}/{CONTROL_OBJECT}",
                io.pool_name(),
                io.namespace()
            ),
            e,
        )
    })
}

/// The server loop: owns the watch, re-establishes it when it breaks.
fn serve(s: Arc<Shared>, first: Watch, opts: ServerOptions) {
    let mut watch = Some(first);
    while !s.stop.load(Ordering::SeqCst) {
        let Some(w) = watch.as_mut() else {
            std::thread::sleep(opts.rewatch_delay);
            match self::watch(&s.io, &opts) {
                Ok(w) => {
                    tracing::info!(node = %s.node, pool = s.io.pool_name(), "control watch re-established");
                    watch = Some(w);
                    s.watching.store(true, Ordering::SeqCst);
                }
                Err(e) => tracing::warn!(node = %s.node, "control watch: {e}"),
            }
            continue;
        };
        match w.recv_timeout(Duration::from_millis(200)) {
            None => {}
            Some(WatchEvent::Notify(n)) => handle(&s, n),
            Some(WatchEvent::Error(e)) => {
                tracing::warn!(node = %s.node, pool = s.io.pool_name(), "control watch broke: {e}; re-watching");
                s.watching.store(false, Ordering::SeqCst);
                // Unwatching a broken watch can take up to the OSD op timeout; do it off
                // this thread so re-watching is not delayed.
                let old = watch.take();
                let _ = std::thread::Builder::new()
                    .name("rbd-control:unwatch".into())
                    .spawn(move || drop(old));
            }
        }
    }
    s.watching.store(false, Ordering::SeqCst);
    drop(watch);
}

fn respond(s: &Shared, n: &rbd_core::Notification, id: &str, status: Status) {
    let r = Response {
        v: PROTOCOL_VERSION,
        id: id.to_owned(),
        node: s.node.clone(),
        status,
    };
    let payload = serde_json::to_vec(&r).unwrap_or_default();
    if let Err(e) =
        s.io.notify_ack(CONTROL_OBJECT, n.notify_id, n.cookie, &payload)
    {
        tracing::warn!(node = %s.node, "acknowledging control request {id}: {e}");
    }
    s.answered.fetch_add(1, Ordering::SeqCst);
}

fn handle(s: &Arc<Shared>, n: rbd_core::Notification) {
    let req: Request = match serde_json::from_slice(&n.payload) {
        Ok(r) => r,
        Err(e) => {
            respond(
                s,
                &n,
                "",
                Status::Failed {
                    error: format!("cannot parse request: {e}"),
                },
            );
            return;
        }
    };
    if req.v != PROTOCOL_VERSION {
        let error = format!(
            "unsupported protocol version {} (this node speaks {PROTOCOL_VERSION})",
            req.v
        );
        return respond(s, &n, &req.id, Status::Failed { error });
    }
    if req.to.as_ref().is_some_and(|t| t != &s.node) {
        return respond(s, &n, &req.id, Status::Ignored);
    }
    match req.op {
        Op::Ping => respond(s, &n, &req.id, Status::Pong),
        Op::Release { image, force } => {
            let rr = ReleaseRequest {
                image,
                force,
                from: req.from,
                id: req.id,
            };
            let s2 = s.clone();
            let spawned = std::thread::Builder::new()
                .name("rbd-control:release".into())
                .spawn(move || {
                    let status = release(&s2, &rr);
                    respond(&s2, &n, &rr.id, status);
                });
            if let Err(e) = spawned {
                tracing::error!("cannot start a release worker: {e}");
            }
        }
    }
}

fn release(s: &Shared, rr: &ReleaseRequest) -> Status {
    let _one = s.releasing.lock().unwrap_or_else(|p| p.into_inner());
    tracing::info!(node = %s.node, from = %rr.from, force = rr.force, "release of {} requested", rr.image);
    let outcome = s.handler.release(rr);
    match outcome {
        ReleaseOutcome::Released | ReleaseOutcome::NotHeld => {
            if let Err(e) = s.registry.unregister(&rr.image, &s.node) {
                return Status::Failed {
                    error: format!("released, but removing the registry entry failed: {e}"),
                };
            }
            if outcome == ReleaseOutcome::Released {
                tracing::info!(node = %s.node, "released {} for {}", rr.image, rr.from);
                Status::Released
            } else {
                Status::NotHeld
            }
        }
        ReleaseOutcome::InUse { mount_ids, reason } => Status::Refused { mount_ids, reason },
        ReleaseOutcome::Failed(error) => Status::Failed { error },
    }
}

/// Everything the watchers answered to one request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Answers {
    /// Parsed responses, with the answering watcher's client id.
    pub responses: Vec<(u64, Response)>,
    /// Watchers that did not answer in time.
    pub timed_out: Vec<NotifyTimeout>,
    /// Watchers whose answer was not a valid response (client id, reason).
    pub unparsed: Vec<(u64, String)>,
}

impl Answers {
    /// `node`'s response, if it answered.
    pub fn from(&self, node: &NodeId) -> Option<&Status> {
        self.responses
            .iter()
            .find(|(_, r)| &r.node == node)
            .map(|(_, r)| &r.status)
    }

    /// The nodes that answered (any status).
    pub fn nodes(&self) -> Vec<NodeId> {
        let mut v: Vec<NodeId> = self.responses.iter().map(|(_, r)| r.node.clone()).collect();
        v.sort();
        v.dedup();
        v
    }
}

/// Whether a node answered a ping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PingResult {
    /// It answered.
    Alive,
    /// It did not answer: its watch is gone (`timed_out == 0`: no watcher was silent,
    /// so it is not watching at all) or it did not answer in time.
    Silent {
        /// How many watchers did not answer in time.
        timed_out: usize,
    },
}

/// The outcome of a release request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReleaseAnswer {
    /// Released (and unregistered) by the holder.
    Released,
    /// The node says it does not hold the image (and removed any stale registration).
    NotHeld,
    /// In use: the node and its mount IDs.
    Refused {
        /// Mount IDs using it.
        mount_ids: Vec<String>,
        /// The holder's reason.
        reason: String,
    },
    /// The holder tried and failed.
    Failed(String),
    /// No answer from the node within the timeout.
    NoAnswer {
        /// How many watchers did not answer in time.
        timed_out: usize,
    },
}

/// Sends requests to other nodes' [`ControlServer`]s.
#[derive(Debug)]
pub struct ControlClient {
    io: IoCtx,
    node: NodeId,
}

impl ControlClient {
    /// A client for `pool`'s control object, sending as `node`.
    pub fn new(rados: &Rados, pool: &str, namespace: &str, node: NodeId) -> Result<Self> {
        Ok(Self {
            io: control_ioctx(rados, pool, namespace)?,
            node,
        })
    }

    /// The node requests are sent as.
    pub fn node(&self) -> &NodeId {
        &self.node
    }

    /// Sends `op` to `to` (or everyone) and collects every watcher's answer, waiting at
    /// most `timeout` (whole seconds, at least one: librados' granularity).
    pub fn send(&self, to: Option<&NodeId>, op: Op, timeout: Duration) -> Result<Answers> {
        let req = Request {
            v: PROTOCOL_VERSION,
            id: new_id(),
            from: self.node.clone(),
            to: to.cloned(),
            op,
        };
        let payload = serde_json::to_vec(&req).map_err(|source| DriverError::CorruptRecord {
            what: "control request (encoding)".into(),
            source,
        })?;
        let reply = match self.io.notify(CONTROL_OBJECT, &payload, timeout) {
            Ok(r) => r,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Answers::default()),
            Err(e) => {
                return Err(DriverError::ceph(
                    format!(
                        "notifying {}/{}/{CONTROL_OBJECT}",
                        self.io.pool_name(),
                        self.io.namespace()
                    ),
                    e,
                ));
            }
        };
        let mut out = Answers {
            timed_out: reply.timeouts.clone(),
            ..Answers::default()
        };
        for ack in reply.acks {
            match serde_json::from_slice::<Response>(&ack.payload) {
                Ok(r) if r.id == req.id || r.id.is_empty() => out.responses.push((ack.gid, r)),
                Ok(r) => out
                    .unparsed
                    .push((ack.gid, format!("answer to another request {}", r.id))),
                Err(e) => out.unparsed.push((ack.gid, e.to_string())),
            }
        }
        Ok(out)
    }

    /// Is `node`'s daemon there?
    pub fn ping(&self, node: &NodeId, timeout: Duration) -> Result<PingResult> {
        let a = self.send(Some(node), Op::Ping, timeout)?;
        Ok(match a.from(node) {
            Some(Status::Pong) => PingResult::Alive,
            _ => PingResult::Silent {
                timed_out: a.timed_out.len(),
            },
        })
    }

    /// Which nodes' daemons are watching and answering (within `timeout`).
    pub fn live_nodes(&self, timeout: Duration) -> Result<Vec<NodeId>> {
        Ok(self.send(None, Op::Ping, timeout)?.nodes())
    }

    /// Asks `node` to release `image`.
    pub fn release(
        &self,
        node: &NodeId,
        image: &ImageRef,
        force: bool,
        timeout: Duration,
    ) -> Result<ReleaseAnswer> {
        image.validate()?;
        let a = self.send(
            Some(node),
            Op::Release {
                image: image.clone(),
                force,
            },
            timeout,
        )?;
        Ok(match a.from(node) {
            Some(Status::Released) => ReleaseAnswer::Released,
            Some(Status::NotHeld) => ReleaseAnswer::NotHeld,
            Some(Status::Refused { mount_ids, reason }) => ReleaseAnswer::Refused {
                mount_ids: mount_ids.clone(),
                reason: reason.clone(),
            },
            Some(Status::Failed { error }) => ReleaseAnswer::Failed(error.clone()),
            Some(other) => ReleaseAnswer::Failed(format!("unexpected answer {other:?}")),
            None => ReleaseAnswer::NoAnswer {
                timed_out: a.timed_out.len(),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_format() {
        let r = Request {
            v: 1,
            id: "x".into(),
            from: NodeId::new("b").unwrap(),
            to: Some(NodeId::new("a").unwrap()),
            op: Op::Release {
                image: ImageRef::new("rbd", "", "db", "10ab"),
                force: true,
            },
        };
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["op"], "release");
        assert_eq!(v["force"], true);
        assert_eq!(v["image"]["image_id"], "10ab");
        assert_eq!(v["to"], "a");
        assert_eq!(serde_json::from_value::<Request>(v).unwrap(), r);

        let ping: Request =
            serde_json::from_str(r#"{"v":1,"id":"p","from":"b","op":"ping"}"#).unwrap();
        assert_eq!(ping.op, Op::Ping);
        assert_eq!(ping.to, None);

        let resp = Response {
            v: 1,
            id: "x".into(),
            node: NodeId::new("a").unwrap(),
            status: Status::Refused {
                mount_ids: vec!["m1".into()],
                reason: "mounted".into(),
            },
        };
        let v = serde_json::to_value(&resp).unwrap();
        assert_eq!(v["status"], "refused");
        assert_eq!(v["mount_ids"][0], "m1");
        assert_eq!(serde_json::from_value::<Response>(v).unwrap(), resp);
        let nh: Response =
            serde_json::from_str(r#"{"v":1,"id":"x","node":"a","status":"not-held"}"#).unwrap();
        assert_eq!(nh.status, Status::NotHeld);
        // A bad node id in a message is rejected.
        assert!(
            serde_json::from_str::<Response>(r#"{"v":1,"id":"x","node":"a b","status":"pong"}"#)
                .is_err()
        );
    }

    #[test]
    fn answers_by_node() {
        let a = NodeId::new("a").unwrap();
        let ans = Answers {
            responses: vec![(
                7,
                Response {
                    v: 1,
                    id: "i".into(),
                    node: a.clone(),
                    status: Status::Pong,
                },
            )],
            ..Answers::default()
        };
        assert_eq!(ans.from(&a), Some(&Status::Pong));
        assert_eq!(ans.from(&NodeId::new("b").unwrap()), None);
        assert_eq!(ans.nodes(), vec![a]);
    }
}
