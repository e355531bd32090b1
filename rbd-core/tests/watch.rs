//! Watch/notify between independent connections against the real dev cluster.

mod common;

use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use futures::StreamExt;
use rbd_core::watch::{WatchEvent, WatchOptions};
use rbd_core::{ErrorKind, IoCtx, Rados};

/// Removes the object when dropped, even if an assertion failed.
struct Cleanup {
    io: IoCtx,
    oid: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = self.io.remove_object(&self.oid);
    }
}

/// Two independent connections (watcher, notifier) and a fresh object.
fn setup(prefix: &str) -> Option<(Rados, Rados, String, Cleanup, std::path::PathBuf)> {
    let (a, conf) = common::connect()?;
    let (b, _) = common::connect()?;
    let oid = testkit::unique(prefix);
    let io = b.ioctx(common::POOL).unwrap();
    io.write_full(&oid, b"watched").unwrap();
    let g = Cleanup {
        io,
        oid: oid.clone(),
    };
    Some((a, b, oid, g, conf))
}

fn watchers(conf: &std::path::PathBuf, oid: &str) -> Vec<String> {
    common::cli(conf, "rados", &["-p", common::POOL, "listwatchers", oid])
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn notify_is_received_and_acked_across_connections() {
    let Some((a, b, oid, _g, conf)) = setup("watch-basic") else {
        return;
    };
    let io_a = a.ioctx(common::POOL).unwrap();
    let mut watch = io_a.watch(&oid).unwrap();
    assert_eq!(watch.oid(), oid);

    // Ceph sees exactly our client as watcher.
    let w = watchers(&conf, &oid);
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(
        w[0].contains(&format!("client.{}", a.instance_id())),
        "{w:?}"
    );
    assert!(
        w[0].contains(&format!("cookie={}", watch.cookie())),
        "{w:?}"
    );
    assert!(watch.check().unwrap() < Duration::from_secs(60));

    let notifier = {
        let io_b = b.ioctx(common::POOL).unwrap();
        let oid = oid.clone();
        std::thread::spawn(move || io_b.notify(&oid, b"ping", Duration::from_secs(15)))
    };
    let ev = watch
        .recv_timeout(Duration::from_secs(20))
        .expect("notification");
    let WatchEvent::Notify(n) = ev else {
        panic!("unexpected {ev:?}")
    };
    assert_eq!(n.payload, b"ping");
    assert_eq!(n.notifier_id, b.instance_id());
    assert_eq!(n.cookie, watch.cookie());
    watch.ack(&n, b"pong").unwrap();

    let reply = notifier.join().unwrap().unwrap();
    assert_eq!(reply.acks.len(), 1, "{reply:?}");
    assert!(reply.all_acked());
    let ack = &reply.acks[0];
    assert_eq!(ack.gid, a.instance_id());
    assert_eq!(ack.cookie, watch.cookie());
    assert_eq!(ack.payload, b"pong");
    assert!(watch.try_recv().is_none());

    watch.unwatch().unwrap();
    assert!(watchers(&conf, &oid).is_empty());
    // After unwatching, a notify finds nobody.
    let reply = b
        .ioctx(common::POOL)
        .unwrap()
        .notify(&oid, b"again", Duration::from_secs(5))
        .unwrap();
    assert!(
        reply.acks.is_empty() && reply.timeouts.is_empty(),
        "{reply:?}"
    );
}

#[test]
fn notify_without_watchers_returns_at_once() {
    let Some((_a, b, oid, _g, _conf)) = setup("watch-none") else {
        return;
    };
    let io = b.ioctx(common::POOL).unwrap();
    let t = Instant::now();
    let reply = io
        .notify(&oid, b"anyone?", Duration::from_secs(10))
        .unwrap();
    assert!(reply.acks.is_empty(), "{reply:?}");
    assert!(reply.timeouts.is_empty(), "{reply:?}");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());

    let missing = testkit::unique("watch-missing");
    let e = io
        .notify(&missing, b"x", Duration::from_secs(5))
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    let e = io.watch(&missing).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    assert!(e.to_string().contains(&missing), "{e}");
}

#[test]
fn notify_times_out_when_a_watcher_never_acks() {
    let Some((a, b, oid, _g, _conf)) = setup("watch-timeout") else {
        return;
    };
    let io_a = a.ioctx(common::POOL).unwrap();
    let mut watch = io_a
        .watch_with_options(&oid, &WatchOptions::new().timeout(Duration::from_secs(30)))
        .unwrap();
    let io_b = b.ioctx(common::POOL).unwrap();
    let t = Instant::now();
    let reply = io_b
        .notify(&oid, b"hello?", Duration::from_secs(2))
        .unwrap();
    let elapsed = t.elapsed();
    assert!(reply.acks.is_empty(), "{reply:?}");
    assert_eq!(reply.timeouts.len(), 1, "{reply:?}");
    assert_eq!(reply.timeouts[0].gid, a.instance_id());
    assert_eq!(reply.timeouts[0].cookie, watch.cookie());
    assert!(!reply.all_acked());
    assert!(
        elapsed >= Duration::from_millis(1500) && elapsed < Duration::from_secs(15),
        "{elapsed:?}"
    );
    // The watcher did get it; it just never answered.
    match watch.recv_timeout(Duration::from_secs(5)) {
        Some(WatchEvent::Notify(n)) => assert_eq!(n.payload, b"hello?"),
        other => panic!("expected the notification, got {other:?}"),
    }
}

#[test]
fn callback_watch_acks_and_survives_panics() {
    let Some((a, b, oid, _g, _conf)) = setup("watch-cb") else {
        return;
    };
    let io_a = a.ioctx(common::POOL).unwrap();
    let (tx, rx) = mpsc::channel();
    let good = io_a
        .watch_with_callback(&oid, &WatchOptions::new(), move |ev| match ev {
            WatchEvent::Notify(n) => {
                let mut reply = b"cb:".to_vec();
                reply.extend_from_slice(&n.payload);
                let _ = tx.send(n);
                Some(reply)
            }
            WatchEvent::Error(_) => None,
        })
        .unwrap();
    // A second watcher whose callback panics: the panic must not cross into C (which
    // would abort the process); that watcher simply never acks.
    let bad = io_a
        .watch_with_callback(&oid, &WatchOptions::new(), |_ev| panic!("callback bug"))
        .unwrap();

    let io_b = b.ioctx(common::POOL).unwrap();
    let reply = io_b.notify(&oid, b"hello", Duration::from_secs(3)).unwrap();
    assert_eq!(reply.acks.len(), 1, "{reply:?}");
    assert_eq!(reply.acks[0].payload, b"cb:hello");
    assert_eq!(reply.acks[0].cookie, good.cookie());
    assert_eq!(reply.timeouts.len(), 1, "{reply:?}");
    assert_eq!(reply.timeouts[0].cookie, bad.cookie());
    let n = rx.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(n.payload, b"hello");
    assert_eq!(n.notifier_id, b.instance_id());

    drop(bad);
    good.unwatch().unwrap();
    let reply = io_b.notify(&oid, b"bye", Duration::from_secs(3)).unwrap();
    assert!(
        reply.acks.is_empty() && reply.timeouts.is_empty(),
        "{reply:?}"
    );
    assert!(rx.try_recv().is_err(), "no callback after unwatch");
}

#[test]
fn dropping_a_watch_inside_its_callback_does_not_deadlock() {
    let Some((a, b, oid, _g, conf)) = setup("watch-selfdrop") else {
        return;
    };
    let io_a = a.ioctx(common::POOL).unwrap();
    let slot: Arc<Mutex<Option<rbd_core::Watch>>> = Arc::new(Mutex::new(None));
    let (tx, rx) = mpsc::channel();
    let watch = io_a
        .watch_with_callback(&oid, &WatchOptions::new(), {
            let slot = slot.clone();
            move |ev| {
                if let WatchEvent::Notify(_) = ev {
                    // Unwatch from inside our own callback, then still ack.
                    let w = slot.lock().unwrap().take();
                    let _ = tx.send(w.map(|w| w.unwatch()));
                    return Some(b"bye".to_vec());
                }
                None
            }
        })
        .unwrap();
    *slot.lock().unwrap() = Some(watch);

    let io_b = b.ioctx(common::POOL).unwrap();
    let t = Instant::now();
    let reply = io_b.notify(&oid, b"x", Duration::from_secs(10)).unwrap();
    // The watcher left before its ack was sent, so the OSD counts it as neither acked
    // nor timed out, and the notify completes without waiting for the timeout.
    assert!(reply.timeouts.is_empty(), "{reply:?}");
    assert!(t.elapsed() < Duration::from_secs(8), "{:?}", t.elapsed());
    let unwatched = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert!(matches!(unwatched, Some(Ok(()))), "{unwatched:?}");
    assert!(
        rx.recv_timeout(Duration::from_secs(1)).is_err(),
        "callback ran twice"
    );
    assert!(watchers(&conf, &oid).is_empty());
    // The connection still works normally afterwards.
    let reply = io_b.notify(&oid, b"y", Duration::from_secs(5)).unwrap();
    assert!(
        reply.acks.is_empty() && reply.timeouts.is_empty(),
        "{reply:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_stream_and_aio_notify() {
    let Some((a, b, oid, _g, _conf)) = setup("watch-async") else {
        return;
    };
    let io_a = a.ioctx(common::POOL).unwrap();
    let mut watch = io_a.watch(&oid).unwrap();
    let cookie = watch.cookie();
    // The watcher task answers every notification with its payload reversed.
    let watcher = tokio::spawn(async move {
        let mut seen = Vec::new();
        while let Some(ev) = watch.next().await {
            match ev {
                WatchEvent::Notify(n) => {
                    let mut r = n.payload.clone();
                    r.reverse();
                    watch.ack(&n, &r).unwrap();
                    let done = n.payload == b"stop";
                    seen.push(n.payload);
                    if done {
                        break;
                    }
                }
                WatchEvent::Error(e) => panic!("watch error: {e}"),
            }
        }
        watch.unwatch().unwrap();
        seen
    });

    let io_b = b.ioctx(common::POOL).unwrap();
    let reply = io_b
        .aio_notify(&oid, b"abc", Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(reply.acks.len(), 1, "{reply:?}");
    assert_eq!(reply.acks[0].payload, b"cba");
    assert_eq!(reply.acks[0].cookie, cookie);
    assert_eq!(reply.acks[0].gid, a.instance_id());

    // Dropping a notify future before it completes is safe, and the notify still goes out.
    let early = io_b.aio_notify(&oid, b"dropped", Duration::from_secs(10));
    drop(early);

    // Errors are delivered through the future too.
    let e = io_b
        .aio_notify(
            &testkit::unique("watch-async-missing"),
            b"x",
            Duration::from_secs(5),
        )
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    let e = io_b
        .aio_notify("", b"x", Duration::from_secs(5))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");

    let reply = io_b
        .aio_notify(&oid, b"stop", Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(reply.acks[0].payload, b"pots");
    let seen = tokio::time::timeout(Duration::from_secs(20), watcher)
        .await
        .expect("watcher task finished")
        .unwrap();
    assert_eq!(
        seen,
        [b"abc".to_vec(), b"dropped".to_vec(), b"stop".to_vec()]
    );
}

#[test]
fn blocking_wait_on_aio_notify() {
    let Some((_a, b, oid, _g, _conf)) = setup("watch-wait") else {
        return;
    };
    let io_b = b.ioctx(common::POOL).unwrap();
    let reply = io_b
        .aio_notify(&oid, b"sync", Duration::from_secs(5))
        .wait()
        .unwrap();
    assert!(reply.acks.is_empty() && reply.timeouts.is_empty());
}

#[test]
fn ack_through_the_ioctx_by_id_and_cookie() {
    let Some((a, b, oid, _g, _conf)) = setup("watch-ioctx-ack") else {
        return;
    };
    let io_a = a.ioctx(common::POOL).unwrap();
    let mut watch = io_a.watch(&oid).unwrap();
    let notifier = {
        let io_b = b.ioctx(common::POOL).unwrap();
        let oid = oid.clone();
        std::thread::spawn(move || io_b.notify(&oid, b"who?", Duration::from_secs(15)))
    };
    let Some(WatchEvent::Notify(n)) = watch.recv_timeout(Duration::from_secs(20)) else {
        panic!("no notification")
    };
    // Acknowledge with only the ids (as a process that kept them would), not the Watch.
    io_a.notify_ack(&oid, n.notify_id, n.cookie, b"me").unwrap();
    let reply = notifier.join().unwrap().unwrap();
    assert_eq!(reply.acks.len(), 1, "{reply:?}");
    assert_eq!(reply.acks[0].payload, b"me");
    assert_eq!(reply.acks[0].gid, a.instance_id());
    // Bad input is refused before the cluster: an object name with a NUL.
    let e = io_a
        .notify_ack("a\0b", n.notify_id, n.cookie, b"")
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
}
