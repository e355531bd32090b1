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
