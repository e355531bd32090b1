//! Coordination and fencing against the real dev cluster, with every "node" on its own
//! client connection: the release protocol between two real watchers, claims that move an
//! image gracefully, refusals naming the node and mount IDs, and fencing of a holder that
//! does not answer (exclusive lock held by another client, watchers, blocklist, fence log).

mod cluster_support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cluster_support::*;
use rbd_core::rbd::LockMode;
use rbd_core::{EntityAddr, Image, OpenOptions, Rados};
use rbd_driver::DriverError;
use rbd_driver::cluster::control::CONTROL_OBJECT;
use rbd_driver::cluster::{
    ClaimOptions, FenceTarget, HolderRecord, Mode, NodeId, PingResult, ReleaseAnswer,
    ReleaseOutcome, ReleaseRequest,
};

/// Drops `x` on a helper thread, waiting at most `secs` (a fenced client's teardown must
/// not hang the test).
fn drop_bounded<T: Send + 'static>(x: T, secs: u64) {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        drop(x);
        let _ = tx.send(());
    });
    let _ = rx.recv_timeout(Duration::from_secs(secs));
}

/// A holder's volume layer stand-in state: whether it is in use, and what it was asked.
#[derive(Default)]
struct HolderState {
    held: bool,
    in_use: Option<Vec<String>>,
    requests: Vec<ReleaseRequest>,
}

fn handler(state: Arc<Mutex<HolderState>>) -> Arc<dyn rbd_driver::cluster::ReleaseHandler> {
    Arc::new(move |req: &ReleaseRequest| {
        let mut s = state.lock().unwrap();
        s.requests.push(req.clone());
        if !s.held {
            return ReleaseOutcome::NotHeld;
        }
        match (&s.in_use, req.force) {
            (Some(ids), false) => ReleaseOutcome::InUse {
                mount_ids: ids.clone(),
                reason: format!("mounted by {} containers", ids.len()),
            },
            _ => {
                s.in_use = None;
                s.held = false;
                ReleaseOutcome::Released
            }
        }
    })
}

#[test]
fn release_protocol_between_two_watchers() {
    let Some(conf) = conf() else { return };
    let ns = test_namespace();
    let t = TestImage::create(&conf, "coord-rel", &ns);
    let img = t.image_ref();
    let a = node(&conf, "node-a", &ns);
    let b = node(&conf, "node-b", &ns);
    let state = Arc::new(Mutex::new(HolderState::default()));
    let server = a.serve(POOL, handler(state.clone())).unwrap();
    assert!(server.is_watching());

    let ctl = b.control(POOL).unwrap();
    assert_eq!(
        ctl.ping(a.node(), Duration::from_secs(2)).unwrap(),
        PingResult::Alive
    );
    // A node nobody serves for: no answer, and no watcher timed out either.
    let t0 = Instant::now();
    assert_eq!(
        ctl.ping(&NodeId::new("nobody").unwrap(), Duration::from_secs(2))
            .unwrap(),
        PingResult::Silent { timed_out: 0 }
    );
    eprintln!("ping of an absent node answered in {:?}", t0.elapsed());
    assert_eq!(
        ctl.live_nodes(Duration::from_secs(2)).unwrap(),
        vec![a.node().clone()]
    );

    // a holds it rw and is in use: a refusal naming a's mount IDs; nothing changes.
    a.claim(&img, Mode::Rw, &ClaimOptions::default()).unwrap();
    state.lock().unwrap().held = true;
    state.lock().unwrap().in_use = Some(vec!["m1".into(), "m2".into()]);
    let r = ctl
        .release(a.node(), &img, false, Duration::from_secs(5))
        .unwrap();
    assert_eq!(
        r,
        ReleaseAnswer::Refused {
            mount_ids: vec!["m1".into(), "m2".into()],
            reason: "mounted by 2 containers".into()
        }
    );
    let e = b
        .claim(&img, Mode::Rw, &ClaimOptions::default())
        .unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, DriverError::InUse { .. }), "{e:?}");
    assert!(msg.contains("node node-a refused"), "{msg}");
    assert!(msg.contains("m1, m2"), "{msg}");
    let entry = a.registry(POOL).unwrap().get(&img).unwrap().unwrap();
    assert_eq!(entry.holders.len(), 1);
    assert_eq!(entry.holders[0].node, *a.node());

    // Forced: a releases (and its server unregisters it).
    let r = ctl
        .release(a.node(), &img, true, Duration::from_secs(5))
        .unwrap();
    assert_eq!(r, ReleaseAnswer::Released);
    assert!(a.registry(POOL).unwrap().get(&img).unwrap().is_none());
    {
        let s = state.lock().unwrap();
        let last = s.requests.last().unwrap();
        assert!(last.force);
        assert_eq!(last.from, *b.node());
        assert_eq!(last.image.image_id, img.image_id);
    }

    // Graceful move: a holds it, not in use; b's claim asks a to release, no fencing.
    a.claim(&img, Mode::Rw, &ClaimOptions::default()).unwrap();
    state.lock().unwrap().held = true;
    let claim = b.claim(&img, Mode::Rw, &ClaimOptions::default()).unwrap();
    assert_eq!(claim.released_by, vec![a.node().clone()]);
    assert!(claim.fenced.is_empty());
    assert_eq!(claim.entry.holders.len(), 1);
    assert_eq!(claim.entry.holders[0].node, *b.node());
    assert!(
        b.registry(POOL).unwrap().fences(true).unwrap().is_empty(),
        "a graceful move must not fence"
    );
    assert!(server.answered() >= 5);
    // a asking for a node it does not hold: not-held (and b's record is untouched).
    let r = b
        .control(POOL)
        .unwrap()
        .release(a.node(), &img, false, Duration::from_secs(5))
        .unwrap();
    assert_eq!(r, ReleaseAnswer::NotHeld);
    assert!(
        b.registry(POOL)
            .unwrap()
            .get(&img)
            .unwrap()
            .unwrap()
            .holder(b.node())
            .is_some()
    );
    server.stop();
}

/// A stand-in for a node whose daemon is hung and whose mapping is alive: one connection
/// opens the image and holds its exclusive lock (the mapping), another watches the
/// control object and never answers (the hung daemon).
struct HungNode {
    mapping: Option<(Image, Rados)>,
    mapping_addr: EntityAddr,
    daemon: Option<(rbd_core::Watch, Rados)>,
    daemon_addr: EntityAddr,
}

impl HungNode {
    fn start(conf: &std::path::Path, t: &TestImage, ns: &str, with_daemon: bool) -> HungNode {
        let mr = connect(conf);
        let io = mr.ioctx(POOL).unwrap();
        let img = Image::open_by_id(&io, &t.id, &OpenOptions::new()).unwrap();
        img.lock_acquire(LockMode::Exclusive).unwrap();
        assert!(img.is_exclusive_lock_owner().unwrap());
        let mapping_addr = addr_of(&mr);
        t.unblock_later(mapping_addr);
        let dr = connect(conf);
        let daemon_addr = addr_of(&dr);
        let daemon = with_daemon.then(|| {
            let io = dr.ioctx(POOL).unwrap().with_namespace(ns).unwrap();
            io.create_object(CONTROL_OBJECT, rbd_core::CreateMode::Idempotent)
                .unwrap();
            // Stream-mode watch that nobody reads: notifies are never acknowledged.
            (io.watch(CONTROL_OBJECT).unwrap(), dr.clone())
        });
        HungNode {
            mapping: Some((img, mr)),
            mapping_addr,
            daemon,
            daemon_addr,
        }
    }
}

impl Drop for HungNode {
    fn drop(&mut self) {
        if let Some(d) = self.daemon.take() {
            drop_bounded(d, 15);
        }
        if let Some(m) = self.mapping.take() {
            drop_bounded(m, 15);
        }
    }
}

fn register_hung(a: &rbd_driver::cluster::Cluster, t: &TestImage, h: &HungNode) {
    let mut rec = HolderRecord::new(a.node().clone(), Mode::Rw);
    rec.client_addr = Some(h.mapping_addr);
    rec.mount_ids.insert("ctr-1".into());
    a.registry(POOL)
        .unwrap()
        .register(&t.image_ref(), rec)
        .unwrap();
}

fn assert_fenced_takeover(
    b: &rbd_driver::cluster::Cluster,
    t: &TestImage,
    h: &HungNode,
    claim: &rbd_driver::cluster::Claim,
) {
    let admin = &t.admin;
    // Exactly A's mapping address was blocklisted; neither B nor A's daemon was.
    assert_eq!(claim.fenced.len(), 1);
    let rec = &claim.fenced[0].record;
    assert_eq!(rec.addrs.len(), 1, "{rec:?}");
    assert!(rec.addrs[0].same_instance(&h.mapping_addr));
    assert_eq!(rec.fenced_node.as_ref().unwrap().as_str(), "node-a");
    assert_eq!(rec.by_node, *b.node());
    assert!(
        rec.locks_broken.iter().any(|l| l.starts_with("exclusive ")),
        "{rec:?}"
    );
    assert!(admin.is_blocklisted(&h.mapping_addr).unwrap());
    assert!(!admin.is_blocklisted(&addr_of(b.rados())).unwrap());
    assert!(!admin.is_blocklisted(&h.daemon_addr).unwrap());
    // Lock gone, A's watcher gone.
    let io = admin.ioctx(POOL).unwrap();
    // (lock owners can only be listed through a read-write handle)
    let img = Image::open_by_id(&io, &t.id, &OpenOptions::new()).unwrap();
    assert!(img.lock_get_owners().unwrap().owners.is_empty());
    assert!(
        !img.watchers()
            .unwrap()
            .iter()
            .any(|w| w.addr.same_instance(&h.mapping_addr))
    );
    // Recorded in the fence log, with its expiry.
    let log = b.registry(POOL).unwrap().fences(false).unwrap();
    assert_eq!(log.len(), 1);
    assert_eq!(log[0], *rec);
    assert!(log[0].expires_ms >= log[0].at_ms + 599_000);
    // B now holds it.
    assert_eq!(claim.entry.holders.len(), 1);
    assert_eq!(claim.entry.holders[0].node, *b.node());
    // B's connection still works.
    b.registry(POOL).unwrap().list().unwrap();
}

#[test]
fn silent_holder_is_fenced_on_claim() {
    let Some(conf) = conf() else { return };
    let ns = test_namespace();
    let t = TestImage::create(&conf, "coord-silent", &ns);
    let a = node(&conf, "node-a", &ns);
    let b = node(&conf, "node-b", &ns);
    let h = HungNode::start(&conf, &t, &ns, true);
    register_hung(&a, &t, &h);

    let t0 = Instant::now();
    let claim = b
        .claim(&t.image_ref(), Mode::Rw, &ClaimOptions::default())
        .unwrap();
    let took = t0.elapsed();
    eprintln!(
        "claim with a silent holder took {took:?} (fence {} ms)",
        claim.fenced[0].elapsed_ms
    );
    assert!(
        claim.fenced[0]
            .record
            .reason
            .contains("did not answer within 2 s")
    );
    assert_fenced_takeover(&b, &t, &h, &claim);
    assert!(took < Duration::from_secs(15), "claim took {took:?}");

    // The fenced mapping's client can no longer touch the image.
    let (img, _) = h.mapping.as_ref().unwrap();
    let r = rbd_core::rados::with_deadline(
        "fenced lock check",
        rbd_core::Context::none(),
        Duration::from_secs(30),
        {
            let io = h.mapping.as_ref().unwrap().1.ioctx(POOL).unwrap();
            move || io.write_full(&testkit::unique("fenced-probe"), b"x")
        },
    );
    assert!(r.is_err(), "a fenced client could still write");
    let _ = img;
}

#[test]
fn holder_without_watch_is_fenced_at_once() {
    let Some(conf) = conf() else { return };
    let ns = test_namespace();
    let t = TestImage::create(&conf, "coord-nowatch", &ns);
    let a = node(&conf, "node-a", &ns);
    let b = node(&conf, "node-b", &ns);
    let h = HungNode::start(&conf, &t, &ns, false);
    register_hung(&a, &t, &h);

    // Without fencing allowed, a silent holder is an error naming it.
    let e = b
        .claim(
            &t.image_ref(),
            Mode::Rw,
            &ClaimOptions {
                fence: false,
                ..ClaimOptions::default()
            },
        )
        .unwrap_err();
    assert!(e.to_string().contains("held rw by node node-a"), "{e}");
    assert!(!t.admin.is_blocklisted(&h.mapping_addr).unwrap());

    let t0 = Instant::now();
    let claim = b
        .claim(&t.image_ref(), Mode::Rw, &ClaimOptions::default())
        .unwrap();
    eprintln!(
        "claim with a holder that has no watch took {:?}",
        t0.elapsed()
    );
    assert!(
        claim.fenced[0]
            .record
            .reason
            .contains("is not watching the control object"),
        "{:?}",
        claim.fenced[0].record
    );
    assert_fenced_takeover(&b, &t, &h, &claim);
}

/// The fencing primitive itself: a second client holds the exclusive lock; fencing takes
/// it away and spares our own address, protected ones and whole-host addresses.
#[test]
fn fence_image_breaks_lock_and_spares_own_address() {
    let Some(conf) = conf() else { return };
    let ns = test_namespace();
    let t = TestImage::create(&conf, "coord-fence", &ns);
    let b = node(&conf, "node-b", &ns);
    let h = HungNode::start(&conf, &t, &ns, false);
    // A protected client that also has the image open (read-write handle, no lock).
    let friend = connect(&conf);
    let friend_addr = addr_of(&friend);
    t.unblock_later(friend_addr);
    let fio = friend.ioctx(POOL).unwrap();
    let friend_img = Image::open_by_id(&fio, &t.id, &OpenOptions::new()).unwrap();
    // An advisory lock held by the victim too... the exclusive lock uses the same RADOS
    // lock, so instead check a whole-host address given as a target is spared.
    let own = addr_of(b.rados());
    let whole = EntityAddr::whole_host(own.ip);
    let target = FenceTarget {
        image: t.image_ref(),
        node: Some(NodeId::new("node-a").unwrap()),
        addrs: vec![own, whole],
        reason: "test".into(),
    };
    let out = b.fence(&target, &[friend_addr]).unwrap();
    eprintln!("fence took {} ms: {:?}", out.elapsed_ms, out.record);
    assert_eq!(out.record.addrs.len(), 1);
    assert!(out.record.addrs[0].same_instance(&h.mapping_addr));
    let spared: Vec<String> = out
        .spared
        .iter()
        .map(|(a, why)| format!("{a} {why}"))
        .collect();
    assert!(
        spared.iter().any(|s| s.ends_with("our own address")),
        "{spared:?}"
    );
    assert!(
        spared.iter().any(|s| s.ends_with("protected")),
        "{spared:?}"
    );
    assert!(
        spared
            .iter()
            .any(|s| s.ends_with("whole-host address (not allowed)")),
        "{spared:?}"
    );
    // Blocklist: the victim only.
    let bl = t.admin.blocklist_ls().unwrap();
    assert!(bl.iter().any(|e| e.addr.same_instance(&h.mapping_addr)));
    assert!(!bl.iter().any(|e| e.addr.same_instance(&own)));
    assert!(!bl.iter().any(|e| e.addr.same_instance(&friend_addr)));
    assert!(
        !bl.iter()
            .any(|e| e.addr.is_whole_host() && e.addr.ip == own.ip)
    );
    // Lock gone; the victim's watcher gone; the friend's stays.
    let owners = friend_img.lock_get_owners().unwrap();
    assert!(owners.owners.is_empty(), "{owners:?}");
    let w = friend_img.watchers().unwrap();
    assert!(
        !w.iter().any(|w| w.addr.same_instance(&h.mapping_addr)),
        "{w:?}"
    );
    assert!(
        w.iter().any(|w| w.addr.same_instance(&friend_addr)),
        "{w:?}"
    );
    // Recorded.
    let log = b.registry(POOL).unwrap().fences(false).unwrap();
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].addrs, out.record.addrs);
    // We still work: registry writes and image access.
    let reg = b.registry(POOL).unwrap();
    reg.register(
        &t.image_ref(),
        HolderRecord::new(b.node().clone(), Mode::Rw),
    )
    .unwrap();
    drop(friend_img);
}

/// A holder that answers pings but is slow to release is never fenced: the claim fails
/// with a timeout naming it, and nothing is blocklisted.
#[test]
fn slow_but_live_holder_is_not_fenced() {
    let Some(conf) = conf() else { return };
    let ns = test_namespace();
    let t = TestImage::create(&conf, "coord-slow", &ns);
    let img = t.image_ref();
    let a = node(&conf, "node-a", &ns);
    let mut cfg = rbd_driver::cluster::ClusterConfig::new(NodeId::new("node-b").unwrap());
    cfg.namespace = ns.clone();
    cfg.release_timeout = Duration::from_secs(1);
    let b = rbd_driver::cluster::Cluster::new(connect(&conf), cfg);
    let slow: Arc<dyn rbd_driver::cluster::ReleaseHandler> = Arc::new(|_: &ReleaseRequest| {
        std::thread::sleep(Duration::from_secs(4));
        ReleaseOutcome::Released
    });
    let _server = a.serve(POOL, slow).unwrap();
    a.claim(&img, Mode::Rw, &ClaimOptions::default()).unwrap();
    let e = b
        .claim(&img, Mode::Rw, &ClaimOptions::default())
        .unwrap_err();
    assert!(matches!(e, DriverError::Timeout { .. }), "{e:?}");
    assert!(e.to_string().contains("node node-a releasing"), "{e}");
    assert!(b.registry(POOL).unwrap().fences(true).unwrap().is_empty());
    assert!(!t.admin.is_blocklisted(&addr_of(a.rados())).unwrap());
    let entry = a.registry(POOL).unwrap().get(&img).unwrap().unwrap();
    assert_eq!(entry.holders[0].node, *a.node());
}

/// One client of a test image on its own connection (a mapping, or an old plugin's
/// `rbd lock add` process), closed on drop (bounded: it may be fenced).
struct Client {
    inner: Option<(Image, Rados)>,
    addr: EntityAddr,
    /// `client.N`, as lockers are listed.
    entity: String,
}

impl Client {
    fn open(conf: &std::path::Path, t: &TestImage) -> Client {
        let r = connect(conf);
        let io = r.ioctx(POOL).unwrap();
        let img = Image::open_by_id(&io, &t.id, &OpenOptions::new()).unwrap();
        let addr = addr_of(&r);
        t.unblock_later(addr);
        let entity = format!("client.{}", r.instance_id());
        Client {
            inner: Some((img, r)),
            addr,
            entity,
        }
    }

    fn image(&self) -> &Image {
        &self.inner.as_ref().unwrap().0
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        if let Some(x) = self.inner.take() {
            drop_bounded(x, 15);
        }
    }
}

/// Asserts that of the clients `known` to a test, exactly `fenced` are blocklisted
/// (other tests blocklist their own clients meanwhile, so the whole list is not compared).
fn assert_blocklisted_exactly(admin: &Rados, known: &[EntityAddr], fenced: &[EntityAddr]) {
    for a in known {
        let want = fenced.iter().any(|f| f.same_instance(a));
        assert_eq!(
            admin.is_blocklisted(a).unwrap(),
            want,
            "{a}: blocklisted should be {want}"
        );
    }
}

fn same_set(a: &[EntityAddr], b: &[EntityAddr]) -> bool {
    a.len() == b.len() && a.iter().all(|x| b.iter().any(|y| y.same_instance(x)))
}

/// Advisory locks, the way old plugins (rexray/rbd: `rbd lock add`) held images, are
/// broken by a fence, and exactly their owners (and the image's watchers) are
/// blocklisted: an exclusive advisory lock left by a process that has exited, with a
/// mapping's client watching; shared advisory locks of two clients beside a shared lock of
/// our own (kept); and an exclusive advisory lock on an image with the exclusive-lock
/// feature (librbd cannot name a managed owner for it).
#[test]
fn fence_breaks_advisory_locks_and_blocklists_exactly_their_owners() {
    use rbd_core::rbd::Features;
    let Some(conf) = conf() else { return };
    let ns = test_namespace();
    let b = node(&conf, "node-b", &ns);
    let own = addr_of(b.rados());
    let target = |t: &TestImage| FenceTarget {
        image: t.image_ref(),
        node: Some(NodeId::new("old-plugin").unwrap()),
        addrs: Vec::new(),
        reason: "test: advisory locks".into(),
    };

    // 1. `rbd lock add IMG rexray` by a process that exited, then a mapping watching it.
    let t1 = TestImage::create_with(&conf, "coord-adv-x", &ns, Features::LAYERING);
    let locker = Client::open(&conf, &t1);
    locker.image().lock_exclusive("rexray").unwrap();
    let (locker_addr, locker_entity) = (locker.addr, locker.entity.clone());
    drop(locker);
    let mapping = Client::open(&conf, &t1);
    let out = b.fence(&target(&t1), &[]).unwrap();
    eprintln!("rexray-style: {:?}", out.record);
    assert!(
        same_set(&out.record.addrs, &[locker_addr, mapping.addr]),
        "{:?}",
        out.record
    );
    assert_eq!(
        out.record.locks_broken,
        vec![format!("advisory {locker_entity} rexray")]
    );
    assert_blocklisted_exactly(
        &t1.admin,
        &[locker_addr, mapping.addr, own],
        &[locker_addr, mapping.addr],
    );
    let io = t1.admin.ioctx(POOL).unwrap();
    let img = Image::open_by_id(&io, &t1.id, &OpenOptions::new().read_only(true)).unwrap();
    assert!(img.list_lockers().unwrap().lockers.is_empty());
    assert!(img.watchers().unwrap().is_empty());
    drop(img);

    // 2. Shared advisory locks of two clients, and one of ours with the same tag.
    let t2 = TestImage::create_with(&conf, "coord-adv-s", &ns, Features::LAYERING);
    let x = Client::open(&conf, &t2);
    let y = Client::open(&conf, &t2);
    x.image().lock_shared("cx", "rexray").unwrap();
    y.image().lock_shared("cy", "rexray").unwrap();
    let ours =
        Image::open_by_id(&b.rados().ioctx(POOL).unwrap(), &t2.id, &OpenOptions::new()).unwrap();
    ours.lock_shared("cb", "rexray").unwrap();
    let out = b.fence(&target(&t2), &[]).unwrap();
    eprintln!("shared: {:?}", out.record);
    assert!(
        same_set(&out.record.addrs, &[x.addr, y.addr]),
        "{:?}",
        out.record
    );
    let mut broken = out.record.locks_broken.clone();
    broken.sort();
    let mut want = vec![
        format!("advisory {} cx", x.entity),
        format!("advisory {} cy", y.entity),
    ];
    want.sort();
    assert_eq!(broken, want);
    assert_blocklisted_exactly(&t2.admin, &[x.addr, y.addr, own], &[x.addr, y.addr]);
    let left = ours.list_lockers().unwrap();
    assert_eq!(left.lockers.len(), 1, "{left:?}");
    assert_eq!(left.lockers[0].cookie, "cb");
    assert!(left.lockers[0].addr.same_instance(&own));
    assert!(
        out.spared
            .iter()
            .any(|(a, why)| a.same_instance(&own) && why == "our own address"),
        "{:?}",
        out.spared
    );
    ours.unlock("cb").unwrap();
    drop(ours);

    // 3. An exclusive advisory lock on an image with the exclusive-lock feature (librbd's
    // lock_get_owners answers EBUSY: "locked by an external mechanism"), and a client with
    // the image open read-only: librbd registers no watch for a read-only open, so it is
    // neither watcher nor owner, cannot write, and is left alone.
    let t3 = TestImage::create(&conf, "coord-adv-e", &ns);
    let x3 = Client::open(&conf, &t3);
    x3.image().lock_exclusive("old-plugin").unwrap();
    let r3 = connect(&conf);
    let r3_addr = addr_of(&r3);
    t3.unblock_later(r3_addr);
    let ro = Image::open_by_id(
        &r3.ioctx(POOL).unwrap(),
        &t3.id,
        &OpenOptions::new().read_only(true),
    )
    .unwrap();
    let out = b.fence(&target(&t3), &[]).unwrap();
    eprintln!("exclusive-lock image: {:?}", out.record);
    assert!(same_set(&out.record.addrs, &[x3.addr]), "{:?}", out.record);
    assert_eq!(
        out.record.locks_broken,
        vec![format!("advisory {} old-plugin", x3.entity)]
    );
    assert_blocklisted_exactly(&t3.admin, &[x3.addr, r3_addr, own], &[x3.addr]);
    let mut buf = [0u8; 512];
    ro.read_at(0, &mut buf).unwrap();
    let img =
        Image::open_by_id(&t3.admin.ioctx(POOL).unwrap(), &t3.id, &OpenOptions::new()).unwrap();
    assert!(img.list_lockers().unwrap().lockers.is_empty());
    assert!(img.lock_get_owners().unwrap().owners.is_empty());
    drop(img);
    drop_bounded((ro, r3), 15);
    drop((x, y, x3, mapping));
    // Every fence was recorded.
    assert_eq!(b.registry(POOL).unwrap().fences(false).unwrap().len(), 3);
}

/// A cephx user made for one test, deleted on drop.
struct TestUser {
    admin: Rados,
    entity: String,
    key: String,
}

impl TestUser {
    fn create(conf: &std::path::Path, caps: &[&str]) -> TestUser {
        let admin = connect(conf);
        let entity = format!("client.{}", testkit::unique("nofence"));
        #[derive(serde::Deserialize)]
        struct Key {
            key: String,
        }
        let keys: Vec<Key> = admin
            .mon_command_json(&serde_json::json!({
                "prefix": "auth get-or-create",
                "entity": entity,
                "caps": caps,
            }))
            .unwrap();
        let key = keys.into_iter().next().expect("a key").key;
        TestUser { admin, entity, key }
    }

    fn connect(&self, conf: &std::path::Path) -> Rados {
        Rados::connect(
            &rbd_core::ConnectOptions::new()
                .conf_file(conf)
                .name(&self.entity)
                .key(&self.key)
                .timeouts(rbd_core::Timeouts::uniform(Duration::from_secs(10))),
        )
        .unwrap()
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        let _ = self.admin.mon_command(
            &serde_json::json!({"prefix": "auth del", "entity": self.entity}),
            &[],
        );
    }
}

/// A fence that cannot cut the holder off fails with `FenceFailed` naming the client it
/// could not blocklist and what that client is, and changes nothing: the fencing node's
/// cephx user may not blocklist (`mon 'allow r'`), the image has an advisory lock of an
/// old plugin's client. The lock is not broken (its owner could still write), nothing is
/// blocklisted, and nothing is recorded.
#[test]
fn fence_that_cannot_blocklist_fails_naming_the_client_and_breaks_nothing() {
    use rbd_core::rbd::Features;
    let Some(conf) = conf() else { return };
    let ns = test_namespace();
    let user = TestUser::create(&conf, &["mon", "allow r", "osd", "allow rwx pool=rbd"]);
    let mut cfg = rbd_driver::cluster::ClusterConfig::new(NodeId::new("node-b").unwrap());
    cfg.namespace = ns.clone();
    let b = rbd_driver::cluster::Cluster::new(user.connect(&conf), cfg);
    let t = TestImage::create_with(&conf, "coord-nofence", &ns, Features::LAYERING);
    let locker = Client::open(&conf, &t);
    locker.image().lock_exclusive("rexray").unwrap();
    let target = FenceTarget {
        image: t.image_ref(),
        node: Some(NodeId::new("old-plugin").unwrap()),
        addrs: Vec::new(),
        reason: "test: no blocklist caps".into(),
    };
    let e = b.fence(&target, &[]).unwrap_err();
    let msg = e.to_string();
    eprintln!("{msg}");
    assert!(matches!(e, DriverError::FenceFailed { .. }), "{e:?}");
    assert!(msg.contains(&t.name), "{msg}");
    assert!(
        msg.contains(&format!("could not blocklist {}", locker.addr)),
        "{msg}"
    );
    assert!(msg.contains("no lock was broken"), "{msg}");
    assert!(
        msg.contains(&format!(
            "(watcher, owner of advisory lock rexray held by {})",
            locker.entity
        )),
        "{msg}"
    );
    let cause = std::error::Error::source(&e).expect("the Ceph error as source");
    eprintln!("cause: {cause}");
    // Nothing changed: the lock is still there, nothing blocklisted, nothing recorded.
    let lockers = locker.image().list_lockers().unwrap().lockers;
    assert_eq!(lockers.len(), 1, "{lockers:?}");
    assert_eq!(lockers[0].cookie, "rexray");
    assert_blocklisted_exactly(&t.admin, &[locker.addr], &[]);
    let reg = rbd_driver::cluster::Cluster::new(connect(&conf), {
        let mut c = rbd_driver::cluster::ClusterConfig::new(NodeId::new("node-c").unwrap());
        c.namespace = ns.clone();
        c
    });
    assert!(
        reg.registry(POOL)
            .unwrap()
            .fences(false)
            .unwrap()
            .is_empty()
    );
    locker.image().unlock("rexray").unwrap();
}

/// A forced claim takes the image from a live holder that will not give it up: node A's
/// daemon answers pings but refuses even a forced release (as one in the middle of an
/// operation does), and A's mapping holds the exclusive lock. Without force: a refusal
/// naming A and its mount ID, nothing fenced. With force: A was asked with force, then its
/// mapping was fenced (exactly its address, the lock broken, logged) and B holds the
/// image; A's daemon connection stays usable.
#[test]
fn forced_claim_fences_a_live_holder_that_will_not_release() {
    let Some(conf) = conf() else { return };
    let ns = test_namespace();
    let t = TestImage::create(&conf, "coord-force", &ns);
    let a = node(&conf, "node-a", &ns);
    let b = node(&conf, "node-b", &ns);
    let h = HungNode::start(&conf, &t, &ns, false);
    register_hung(&a, &t, &h);
    let asked: Arc<Mutex<Vec<bool>>> = Arc::default();
    let seen = asked.clone();
    let server = a
        .serve(
            POOL,
            Arc::new(move |req: &ReleaseRequest| {
                seen.lock().unwrap().push(req.force);
                ReleaseOutcome::InUse {
                    mount_ids: vec!["ctr-1".into()],
                    reason: "an operation on the volume is in progress".into(),
                }
            }),
        )
        .unwrap();

    let e = b
        .claim(&t.image_ref(), Mode::Rw, &ClaimOptions::default())
        .unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, DriverError::InUse { .. }), "{e:?}");
    assert!(msg.contains("node node-a refused"), "{msg}");
    assert!(msg.contains("ctr-1"), "{msg}");
    assert!(!t.admin.is_blocklisted(&h.mapping_addr).unwrap());
    assert_eq!(*asked.lock().unwrap(), vec![false]);

    let claim = b
        .claim(
            &t.image_ref(),
            Mode::Rw,
            &ClaimOptions {
                force: true,
                ..ClaimOptions::default()
            },
        )
        .unwrap();
    assert_eq!(*asked.lock().unwrap(), vec![false, true]);
    let reason = &claim.fenced[0].record.reason;
    assert!(
        reason.contains("forced takeover: node node-a refused to release it even when forced"),
        "{reason}"
    );
    assert!(reason.contains("ctr-1"), "{reason}");
    assert_fenced_takeover(&b, &t, &h, &claim);
    // A's daemon (a separate connection) was not fenced and still answers.
    assert!(!t.admin.is_blocklisted(&addr_of(a.rados())).unwrap());
    assert_eq!(
        b.control(POOL)
            .unwrap()
            .ping(a.node(), Duration::from_secs(2))
            .unwrap(),
        PingResult::Alive
    );
    server.stop();
}
