//! With the mons down (and then the OSD too), List, Get and Path answer within 10 s (an
//! error, or local state), never a hang, and a stuck cluster call blocks no other endpoint.
//!
//! The test starts a cluster of its own (`testkit::cluster::PrivateCluster`) so that
//! stopping its daemons disturbs no other test, starts the plugin against it, creates a
//! volume, stops the mon and then the OSD by their pid files, and times the calls over the
//! socket. The bounds below are hang checks, not performance assertions. The cluster is
//! brought down in `Drop`, pass or fail.
//!
//! Needs the dev cluster's tools (gated on `CEPH_CONF` like every Ceph test) and root.

mod common;

use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

/// Generous hang bound for calls that must answer within 10 s.
const HANG: Duration = Duration::from_secs(12);

fn timed(sock: &Path, method: &str, body: serde_json::Value) -> (Resp, Duration) {
    let t0 = Instant::now();
    let r = http(sock, "POST", &format!("/{method}"), &body.to_string(), HANG);
    (r, t0.elapsed())
}

#[test]
fn list_get_path_answer_within_10s_with_the_mons_down() {
    let Some(_shared) = testkit::ceph_conf() else {
        return;
    };
    if !testkit::require_root() {
        return;
    }
    let cluster = testkit::cluster::PrivateCluster::start();
    let dir = TempDir::new("mdown");
    // Default Ceph timeouts (mon ops 10 s, OSD ops 30 s): longer than the plugin's 8 s read
    // deadline, so it is the plugin's own deadline that must answer.
    // The write deadline is cut to 5 s so the test can show writes are bounded too.
    let mut spec = PluginSpec::new(cluster.conf(), dir.path());
    spec.config = "[timeouts]\nwrite = 5\n".into();
    let plugin = Plugin::start(&spec);
    let name = testkit::unique("md");
    let r = call(
        &plugin.socket,
        "VolumeDriver.Create",
        json!({"Name": name, "Opts": {"size": "32M"}}),
    );
    assert_eq!(r.err(), "", "create: {}", r.err());
    let (r, _) = timed(&plugin.socket, "VolumeDriver.Get", json!({"Name": name}));
    assert_eq!(r.err(), "", "get with the mon up: {}", r.err());

    // Phase 1: the mon is down, the OSD still up. Reads may still succeed (the client
    // talks to the OSD with the map it has); whatever the answer, it comes in time.
    cluster.stop("mon.a");
    for (method, body) in [
        ("VolumeDriver.List", json!({})),
        ("VolumeDriver.Get", json!({"Name": name})),
        ("VolumeDriver.Path", json!({"Name": name})),
    ] {
        let (r, t) = timed(&plugin.socket, method, body);
        eprintln!("mon down: {method}: {t:?}: {}", text(&r.body));
        assert!(t < HANG, "{method} took {t:?}");
        assert_eq!(r.status, 200);
    }

    // Phase 2: the OSD goes too. Nothing tells the client, so every cluster call waits for
    // its Ceph timeout; the plugin answers before that.
    cluster.stop("osd.0");
    let (r, t) = timed(&plugin.socket, "VolumeDriver.List", json!({}));
    eprintln!("cluster down: List: {t:?}: {}", r.err());
    assert!(t < HANG, "List took {t:?}");
    assert_eq!(r.status, 200);
    assert!(
        r.err().contains("did not finish within"),
        "List with the cluster down: {}",
        text(&r.body)
    );

    let (r, t) = timed(&plugin.socket, "VolumeDriver.Get", json!({"Name": name}));
    eprintln!("cluster down: Get: {t:?}: {}", r.err());
    assert!(t < HANG, "Get took {t:?}");
    // Not mounted on this node: no local state to show, so an error.
    assert!(!r.err().is_empty(), "{}", text(&r.body));

    let (r, t) = timed(&plugin.socket, "VolumeDriver.Path", json!({"Name": name}));
    eprintln!("cluster down: Path: {t:?}: {}", text(&r.body));
    assert!(t < HANG, "Path took {t:?}");
    // Path reads local state only: not mounted here.
    assert_eq!(r.json(), json!({"Mountpoint": "", "Err": ""}));

    // Concurrently: a burst of reads all answer within the bound, and while they are stuck
    // on the cluster the constant endpoints answer at once.
    let sock = plugin.socket.clone();
    let burst: Vec<_> = (0..6)
        .map(|i| {
            let sock = sock.clone();
            let name = name.clone();
            thread::spawn(move || match i % 3 {
                0 => timed(&sock, "VolumeDriver.List", json!({})),
                1 => timed(&sock, "VolumeDriver.Get", json!({"Name": name})),
                _ => timed(&sock, "VolumeDriver.Path", json!({"Name": name})),
            })
        })
        .collect();
    thread::sleep(Duration::from_millis(300));
    let (r, t) = timed(&plugin.socket, "Plugin.Activate", json!({}));
    assert_eq!(r.json(), json!({"Implements": ["VolumeDriver"]}));
    assert!(
        t < Duration::from_secs(2),
        "Activate waited {t:?} behind stuck cluster calls"
    );
    let (r, t) = timed(&plugin.socket, "VolumeDriver.Capabilities", json!({}));
    assert_eq!(r.status, 200);
    assert!(t < Duration::from_secs(2), "Capabilities waited {t:?}");
    for h in burst {
        let (r, t) = h.join().expect("burst thread");
        eprintln!("burst: {t:?}: {}", text(&r.body));
        assert!(t < HANG, "a concurrent read took {t:?}");
        assert_eq!(r.status, 200);
    }

    // Writes are bounded by the write deadline: Docker gets an Err, not a hang. Docker's
    // Unmount after the failed Mount answers in time as well.
    let id = "f".repeat(64);
    for (method, body) in [
        (
            "VolumeDriver.Create",
            json!({"Name": testkit::unique("md"), "Opts": {"size": "32M"}}),
        ),
        ("VolumeDriver.Mount", json!({"Name": name, "ID": id})),
        ("VolumeDriver.Unmount", json!({"Name": name, "ID": id})),
        ("VolumeDriver.Remove", json!({"Name": name})),
    ] {
        let (r, t) = timed(&plugin.socket, method, body);
        eprintln!("cluster down: {method}: {t:?}: {}", text(&r.body));
        assert!(t < HANG, "{method} took {t:?}");
        assert_eq!(r.status, 200);
        if method != "VolumeDriver.Unmount" {
            assert!(
                !r.err().is_empty(),
                "{method} claims success with the cluster down"
            );
        }
    }

    // The plugin still stops cleanly, with cluster calls stuck in the background.
    let mut plugin = plugin;
    let t0 = Instant::now();
    let status = plugin.stop(Duration::from_secs(30)).expect("exit status");
    eprintln!("shutdown with stuck calls: {:?}, {status}", t0.elapsed());
    assert!(status.success(), "{status}:\n{}", plugin.log_text());
    assert!(t0.elapsed() < Duration::from_secs(20));
}
