//! The multi-node test bed itself (scripts/testbed.sh through testkit::testbed): nodes
//! reach the cluster in its namespace, a cut node loses it within the client timeout while
//! the others keep it, healing restores it, and `down` leaves no namespace, link, daemon or
//! mount behind (and is safe to run twice).

use std::process::Command;
use std::time::{Duration, Instant};

use rbd_core::{ConnectOptions, Rados, Timeouts};
use testkit::testbed::{Testbed, namespaces_with_prefix};

fn host_links() -> Vec<String> {
    let out = Command::new("ip")
        .args(["-o", "link", "show"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        .collect()
}

fn pid_alive(pid: &str) -> bool {
    // A zombie is not alive; only our own children could be zombies here.
    std::fs::read_to_string(format!("/proc/{}/stat", pid.trim()))
        .map(|s| s.split_whitespace().nth(2).is_none_or(|st| st != "Z"))
        .unwrap_or(false)
}

#[test]
fn bed_up_cut_heal_down() {
    let links_before = host_links();
    let Some(bed) = Testbed::up(2) else { return };
    let prefix = bed.prefix().to_owned();
    let dir = bed.dir().to_owned();
    assert_eq!(
        bed.namespaces(),
        vec![
            format!("{prefix}-br"),
            format!("{prefix}-ceph"),
            format!("{prefix}-n1"),
            format!("{prefix}-n2")
        ]
    );
    // Nothing was added to the host's network.
    assert_eq!(
        host_links(),
        links_before,
        "the bed changed the host's links"
    );
    eprintln!("{}", bed.status());

    // Both nodes reach the cluster, with the CLI and in-process.
    for i in 1..=2 {
        let out = bed.node(i).exec(&["rbd", "ls"], Duration::from_secs(30));
        assert!(
            out.status.success(),
            "rbd ls on n{i}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = bed.node(1).exec(
        &["rbd", "create", "--size", "16M", "bedimg"],
        Duration::from_secs(30),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = bed.node(2).exec(&["rbd", "ls"], Duration::from_secs(30));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "bedimg");

    let conf = bed.ceph_conf().to_owned();
    let connect = |t: u64| {
        Rados::connect(
            &ConnectOptions::new()
                .conf_file(&conf)
                .timeouts(Timeouts::uniform(Duration::from_secs(t))),
        )
    };
    let n1 = bed.node(1);
    let client = n1.enter(|| connect(5)).expect("connect from n1");
    let addr = *client.getaddrs().unwrap().primary().unwrap();
    assert_eq!(
        addr.ip.to_string(),
        n1.addr(),
        "the client has n1's address"
    );
    let io = client.ioctx("rbd").unwrap();
    io.write_full("bed-probe", b"before").unwrap();

    // A daemon of n1 (stopped by `down` through its pid file if not before).
    let mut daemon = n1.spawn("sleeper", &["sleep", "600"]);
    assert!(daemon.is_running());

    // Cut n1: its new clients and its existing client fail within their timeouts.
    bed.cut(1);
    let t = Instant::now();
    let out = n1.exec(
        &["rbd", "ls", "--client-mount-timeout", "3"],
        Duration::from_secs(30),
    );
    let took = t.elapsed();
    eprintln!("rbd ls on the cut node failed after {took:?}");
    assert!(!out.status.success(), "rbd ls worked on a cut node");
    assert!(took < Duration::from_secs(10), "took {took:?}");
    let t = Instant::now();
    let r = io.read_full("bed-probe");
    let took = t.elapsed();
    eprintln!("read on the cut node's client: {r:?} after {took:?}");
    // The OSD session may still be cached... a read over a dead link cannot succeed.
    assert!(r.is_err(), "read over a cut link succeeded");
    assert!(took < Duration::from_secs(5 + 5), "took {took:?}");
    let e = n1.enter(|| connect(3)).unwrap_err();
    eprintln!("connect from the cut node: {e}");
    // n2 is not affected.
    let out = bed.node(2).exec(&["rbd", "ls"], Duration::from_secs(30));
    assert!(out.status.success(), "n2 lost the cluster when n1 was cut");

    // Heal: the node reaches the cluster again, and its old client recovers.
    bed.heal(1);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = n1.exec(&["rbd", "ls"], Duration::from_secs(20));
        if out.status.success() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "n1 did not reach the cluster after heal"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while io.read_full("bed-probe").is_err() {
        assert!(
            Instant::now() < deadline,
            "n1's client did not recover after heal"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(io.read_full("bed-probe").unwrap(), b"before");
    drop(io);
    drop(client);

    // Down: no namespace, link, daemon or state left; a second down is harmless.
    let mon_pid = std::fs::read_to_string(dir.join("ceph/run/mon.a.pid")).unwrap();
    let osd_pid = std::fs::read_to_string(dir.join("ceph/run/osd.0.pid")).unwrap();
    assert!(pid_alive(&mon_pid) && pid_alive(&osd_pid));
    bed.down().expect("down");
    assert!(
        namespaces_with_prefix(&prefix).is_empty(),
        "namespaces left"
    );
    assert!(!pid_alive(&mon_pid), "ceph-mon left running");
    assert!(!pid_alive(&osd_pid), "ceph-osd left running");
    assert!(!daemon.is_running(), "a node daemon was left running");
    assert!(!dir.exists(), "{} left", dir.display());
    assert_eq!(host_links(), links_before);
    let again = Command::new(testkit::workspace_root().join("scripts/testbed.sh"))
        .arg("down")
        .env("TESTBED_DIR", &dir)
        .output()
        .unwrap();
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Drop tears the bed down even when the test panics.
#[test]
fn bed_is_torn_down_on_panic() {
    if !testkit::require_root() {
        return;
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let r = std::thread::spawn(move || {
        let Some(bed) = Testbed::up(1) else {
            tx.send(None).unwrap();
            return;
        };
        tx.send(Some((bed.prefix().to_owned(), bed.dir().to_owned())))
            .unwrap();
        panic!("deliberate failure inside a test using the bed");
    })
    .join();
    let Some((prefix, dir)) = rx.recv().unwrap() else {
        return;
    };
    assert!(r.is_err());
    assert!(
        namespaces_with_prefix(&prefix).is_empty(),
        "namespaces left after a panic"
    );
    assert!(!dir.exists());
}
