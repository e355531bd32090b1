//! The cluster layer across nodes on the multi-node test bed: two node namespaces, each
//! running `rbd-cluster-agent` (its own processes, addresses and Ceph clients). The release
//! protocol works across nodes (refusal naming the node and mount IDs, then a graceful
//! move), and cutting node A's link then claiming its image from B fences exactly A's
//! mapping address within a few seconds.

use std::time::{Duration, Instant};

use rbd_core::{ConnectOptions, EntityAddr, Image, OpenOptions, Rados, Timeouts};
use serde_json::Value;
use testkit::testbed::{Daemon, Node, Testbed};

const AGENT: &str = env!("CARGO_BIN_EXE_rbd-cluster-agent");

fn agent_claim(node: &Node<'_>, name: &str, image: &str) -> (bool, Value, Duration) {
    let t = Instant::now();
    let out = node.exec(
        &[
            AGENT,
            "claim",
            "--node",
            name,
            "--image",
            image,
            "--ping-timeout",
            "2",
        ],
        Duration::from_secs(60),
    );
    let took = t.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let v: Value =
        serde_json::from_str(stdout.lines().last().unwrap_or("{}")).unwrap_or_else(|e| {
            panic!(
                "claim printed no JSON ({e}): {stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    (out.status.success(), v, took)
}

fn ready_line(d: &mut Daemon) -> Value {
    assert!(
        d.wait_for("READY ", Duration::from_secs(60)),
        "agent did not get ready:\n{}",
        d.log()
    );
    let log = d.log();
    let line = log
        .lines()
        .find_map(|l| l.strip_prefix("READY "))
        .expect("READY line");
    serde_json::from_str(line).unwrap()
}

fn hold_addr(ready: &Value, image: &str) -> EntityAddr {
    ready["holds"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["image"] == image)
        .unwrap_or_else(|| panic!("{image} not held: {ready}"))["addr"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn release_and_fencing_across_nodes() {
    let Some(bed) = Testbed::up(2) else { return };
    let (a, b) = (bed.node(1), bed.node(2));
    // An observer in the cluster's own namespace (never cut).
    let conf = bed.ceph_conf().to_owned();
    let admin: Rados = bed.ceph().enter(|| {
        Rados::connect(
            &ConnectOptions::new()
                .conf_file(&conf)
                .timeouts(Timeouts::uniform(Duration::from_secs(10))),
        )
        .expect("observer connects")
    });
    let io = admin.ioctx("rbd").unwrap();
    for img in ["moved", "cutimg"] {
        rbd_core::rbd::create(&io, img, 16 << 20, &Default::default()).unwrap();
    }

    // Node A's agent holds both images (each on a client of its own), in use.
    let in_use = a.dir().join("in-use");
    std::fs::write(&in_use, "ctr-1\nctr-2\n").unwrap();
    let in_use_s = in_use.to_string_lossy().into_owned();
    let mut agent_a = a.spawn(
        "agent",
        &[
            AGENT,
            "serve",
            "--node",
            "node-a",
            "--hold",
            "moved",
            "--hold",
            "cutimg",
            "--in-use-file",
            &in_use_s,
        ],
    );
    let ready = ready_line(&mut agent_a);
    let moved_addr = hold_addr(&ready, "moved");
    let cut_addr = hold_addr(&ready, "cutimg");
    assert_eq!(
        moved_addr.ip.to_string(),
        a.addr(),
        "A's mapping has A's address"
    );
    let daemon_addr: EntityAddr = ready["daemon_addr"]
        .as_str()
        .unwrap()
        .trim_matches(['[', ']'])
        .split(',')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    // Node B's agent (so B is a live watcher too).
    let mut agent_b = b.spawn("agent", &[AGENT, "serve", "--node", "node-b"]);
    ready_line(&mut agent_b);

    // 1. B asks for "moved" while A uses it: a refusal naming A and its mount IDs.
    let (ok, v, _) = agent_claim(&b, "node-b", "moved");
    assert!(!ok, "{v}");
    let err = v["error"].as_str().unwrap();
    assert!(err.contains("node node-a refused"), "{err}");
    assert!(err.contains("ctr-1, ctr-2"), "{err}");

    // 2. A stops using it: B gets it gracefully, without fencing.
    std::fs::remove_file(&in_use).unwrap();
    let (ok, v, took) = agent_claim(&b, "node-b", "moved");
    assert!(ok, "{v}");
    eprintln!("graceful move across nodes took {took:?}");
    assert_eq!(v["claim"]["released_by"][0], "node-a");
    assert!(v["claim"]["fenced"].as_array().unwrap().is_empty());
    assert_eq!(v["claim"]["entry"]["holders"][0]["node"], "node-b");
    assert!(agent_a.wait_for("\"outcome\":\"released\"", Duration::from_secs(10)));
    assert!(!admin.is_blocklisted(&moved_addr).unwrap());
    let img = Image::open(&io, "moved", &OpenOptions::new()).unwrap();
    assert!(
        !img.watchers()
            .unwrap()
            .iter()
            .any(|w| w.addr.same_instance(&moved_addr)),
        "A still watches the image it released"
    );
    drop(img);

    // 3. Cut A, then B claims "cutimg": A is silent, so its exact mapping address is
    // fenced (not its daemon, not B, not the whole host) and B gets the image.
    std::fs::write(&in_use, "ctr-3\n").unwrap();
    bed.cut(1);
    let (ok, v, took) = agent_claim(&b, "node-b", "cutimg");
    assert!(ok, "{v}");
    eprintln!(
        "claim of a cut node's image took {took:?} (claim {} ms, fence {} ms)",
        v["claim"]["elapsed_ms"], v["claim"]["fenced"][0]["elapsed_ms"]
    );
    assert!(took < Duration::from_secs(10), "fencing took {took:?}");
    let rec = &v["claim"]["fenced"][0]["record"];
    assert_eq!(rec["fenced_node"], "node-a");
    assert_eq!(rec["by_node"], "node-b");
    let addrs: Vec<EntityAddr> = rec["addrs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().parse().unwrap())
        .collect();
    assert_eq!(addrs.len(), 1, "{rec}");
    assert!(addrs[0].same_instance(&cut_addr), "{rec}");
    assert!(admin.is_blocklisted(&cut_addr).unwrap());
    assert!(!admin.is_blocklisted(&daemon_addr).unwrap());
    assert!(
        !admin
            .blocklist_ls()
            .unwrap()
            .iter()
            .any(|e| e.addr.is_whole_host()),
        "a whole host was fenced"
    );
    let img = Image::open(&io, "cutimg", &OpenOptions::new()).unwrap();
    assert!(img.lock_get_owners().unwrap().owners.is_empty());
    assert!(
        !img.watchers()
            .unwrap()
            .iter()
            .any(|w| w.addr.same_instance(&cut_addr)),
        "the fenced client still watches"
    );
    drop(img);
    let reg = rbd_driver::cluster::Registry::open(&admin, "rbd", "rbd-volumes").unwrap();
    let fences = reg.fences(false).unwrap();
    assert_eq!(fences.len(), 1);
    assert!(fences[0].addrs[0].same_instance(&cut_addr));
    let id = rbd_core::rbd::image_id_by_name(&io, "cutimg").unwrap();
    let entry = reg
        .get(&rbd_driver::cluster::ImageRef::new("rbd", "", "cutimg", id))
        .unwrap()
        .unwrap();
    assert_eq!(entry.holders.len(), 1);
    assert_eq!(entry.holders[0].node.as_str(), "node-b");

    // 4. Keep A cut past its control watch's timeout (10 s), then heal: its daemon's
    // watch breaks and is re-established (the daemon was never fenced).
    std::thread::sleep(Duration::from_secs(12));
    bed.heal(1);
    assert!(
        agent_a.wait_for("\"watching\":false", Duration::from_secs(60)),
        "A's daemon never noticed its watch broke:\n{}",
        agent_a.log()
    );
    assert!(
        agent_a.wait_for("\"watching\":true", Duration::from_secs(60)),
        "A's daemon did not re-establish its watch:\n{}",
        agent_a.log()
    );
    let out = b.exec(
        &[AGENT, "ping", "--node", "node-b", "--target", "node-a"],
        Duration::from_secs(30),
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        v["alive"], true,
        "A's daemon does not answer after heal: {v}"
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = b.exec(&[AGENT, "registry"], Duration::from_secs(30));
        assert!(out.status.success());
        let live = a.exec(&["rbd", "ls"], Duration::from_secs(20));
        if live.status.success() {
            break;
        }
        assert!(Instant::now() < deadline, "A did not come back after heal");
        std::thread::sleep(Duration::from_millis(500));
    }
    drop(agent_b);
    let log_a = agent_a.stop();
    eprintln!("agent A:\n{log_a}");
    for img in ["moved", "cutimg"] {
        let _ = rbd_core::rbd::remove(&io, img);
    }
}
