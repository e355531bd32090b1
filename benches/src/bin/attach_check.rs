//! The reconcile check on the wired attach path (`Driver::attach_with_report`) with 100
//! volumes attached on this node: 100 real userspace mappings (rbd-umap, FUSE + loop),
//! 100 registry entries held by this node, on the dev cluster (`CEPH_CONF`), as root.
//!
//! Measured from the driver's own step timings:
//!
//! * `check`: the reconcile check before an attach (the local mapping list of every
//!   backend, the state file, then image existence, the registry and the blocklist for
//!   the mappings of the volume's id or name) plus the cleanup of anything stale;
//! * `claim`: the cluster-wide registration (one compare-and-swap when uncontended);
//! * the whole attach (map, mkfs at the first attach, mount, registry updates), and a
//!   second mount ID joining an existing mount (check + registry update only);
//! * a node daemon's full reconcile of the 100 attachments (recovery, check, registry
//!   scan).
//!
//! Anchors measured in the same run: `mapper::list_all` alone (reading the 100 mapping
//! records), and one `rbd_list2` of the pool plus one `osd blocklist ls`.
//!
//! ```sh
//! eval "$(scripts/dev-cluster.sh up)"
//! cargo build --release -p rbd-driver --bin rbd-umap
//! cargo run --release -p benches --bin attach_check
//! ```

use std::path::PathBuf;
use std::time::{Duration, Instant};

use rbd_core::{ConnectOptions, Rados, Timeouts};
use rbd_driver::mapper::{self, Backend, CephAuth};
use rbd_driver::volume::{AttachReport, CreateSpec, Driver, DriverConfig, ReconcileOptions};

const VOLUMES: usize = 100;
const ITERS: usize = 30;

fn stats(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(|a, b| a.total_cmp(b));
    (v[v.len() / 2], v[v.len() * 9 / 10], *v.last().unwrap())
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

/// Detaches and removes every volume made, and the node's directories and registry
/// objects, also after a panic.
struct Cleanup {
    driver: Option<Driver>,
    names: Vec<(String, Vec<String>)>,
    root: PathBuf,
    admin: Rados,
    ns: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(d) = self.driver.take() {
            for (n, ids) in &self.names {
                for id in ids {
                    let _ = d.detach(n, id);
                }
                let _ = d.remove(n, true);
            }
            for m in mapper::list_all(&d.config().mapper).unwrap_or_default() {
                let _ = mapper::mapper_for(m.backend, &d.config().mapper).unmap(&m, true);
            }
        }
        if let Ok(io) = self
            .admin
            .ioctx("rbd")
            .and_then(|i| i.with_namespace(&self.ns))
        {
            for o in [
                rbd_driver::cluster::registry::REGISTRY_OBJECT,
                rbd_driver::cluster::registry::FENCE_OBJECT,
                rbd_driver::cluster::control::CONTROL_OBJECT,
            ] {
                let _ = io.remove_object(o);
            }
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

fn umap_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("RBD_UMAP_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current exe");
    exe.parent().expect("target dir").join("rbd-umap")
}

fn main() {
    let conf = PathBuf::from(std::env::var("CEPH_CONF").expect("CEPH_CONF: the dev cluster"));
    let umap = umap_bin();
    assert!(
        umap.is_file(),
        "{} is missing: cargo build --release -p rbd-driver --bin rbd-umap",
        umap.display()
    );
    let admin = Rados::connect(
        &ConnectOptions::new()
            .conf_file(&conf)
            .timeouts(Timeouts::uniform(Duration::from_secs(20))),
    )
    .expect("connect");
    let root = std::env::temp_dir().join(testkit::unique("bench-attach"));
    let ns = testkit::unique("rbd-volumes-bench");
    let mut cfg = DriverConfig::new(CephAuth {
        conf: conf.clone(),
        id: "admin".into(),
        keyring: None,
    });
    cfg.node_id = "bench-node".into();
    cfg.state_dir = root.join("state");
    cfg.mount_root = root.join("mounts");
    cfg.mapper.run_dir = root.join("run");
    cfg.mapper.umap_bin = Some(umap);
    cfg.backend = Some(Backend::Userspace);
    cfg.cluster.namespace = ns.clone();
    cfg.timeouts = Timeouts::uniform(Duration::from_secs(20));
    let mut cleanup = Cleanup {
        driver: Some(Driver::new(cfg.clone()).expect("driver")),
        names: Vec::new(),
        root,
        admin: admin.clone(),
        ns: ns.clone(),
    };
    let spec =
        CreateSpec::from_options(&[("size".to_string(), "16M".to_string())].into()).expect("spec");
    let prefix = testkit::unique("bv");

    eprintln!("creating and attaching {VOLUMES} volumes...");
    let mut first: Vec<AttachReport> = Vec::new();
    for i in 0..VOLUMES {
        let name = format!("{prefix}-{i:03}");
        let d = cleanup.driver.as_ref().unwrap();
        d.create(&name, &spec).expect("create");
        cleanup.names.push((name.clone(), vec!["m0".into()]));
        first.push(d.attach_with_report(&name, "m0", None).expect("attach"));
    }
    let d = cleanup.driver.as_ref().unwrap();
    let maps = mapper::list_all(&cfg.mapper).unwrap();
    assert_eq!(maps.len(), VOLUMES);
    let held = d
        .cluster()
        .registry("rbd")
        .unwrap()
        .held_by(d.node())
        .unwrap();
    assert_eq!(held.len(), VOLUMES);

    // Anchors.
    let io = admin.ioctx("rbd").unwrap();
    let anchor_list: Vec<f64> = (0..ITERS)
        .map(|_| {
            let t = Instant::now();
            std::hint::black_box(mapper::list_all(&cfg.mapper).unwrap());
            ms(t)
        })
        .collect();
    let anchor_ceph: Vec<f64> = (0..ITERS)
        .map(|_| {
            let t = Instant::now();
            std::hint::black_box(rbd_core::rbd::list(&io).unwrap());
            std::hint::black_box(admin.blocklist_ls().unwrap());
            ms(t)
        })
        .collect();

    // A 101st volume, attached and detached ITERS times with the 100 others attached.
    let extra = format!("{prefix}-extra");
    d.create(&extra, &spec).expect("create");
    cleanup.names.push((extra.clone(), Vec::new()));
    let mut check = Vec::new();
    let mut claim = Vec::new();
    let mut total = Vec::new();
    for i in 0..ITERS {
        let r = d.attach_with_report(&extra, "mx", None).expect("attach");
        assert!(r.cleaned.is_empty() && !r.shared);
        if i > 0 {
            // The first attach formats the volume.
            check.push(r.timings.check_ms);
            claim.push(r.timings.claim_ms);
            total.push(r.timings.total_ms);
        }
        d.detach(&extra, "mx").expect("detach");
    }
    // A second mount ID on an attached volume: the check sees its (current) mapping.
    let mut shared_check = Vec::new();
    let mut shared_total = Vec::new();
    for i in 0..ITERS {
        let (name, ids) = &mut cleanup.names[i % VOLUMES];
        let id = format!("m-shared-{i}");
        let r = d
            .attach_with_report(name, &id, None)
            .expect("shared attach");
        assert!(r.shared && r.cleaned.is_empty());
        ids.push(id);
        shared_check.push(r.timings.check_ms);
        shared_total.push(r.timings.total_ms);
    }
    // A node daemon's full reconcile of the 100 attachments.
    let full: Vec<f64> = (0..10)
        .map(|_| {
            let t = Instant::now();
            let r = d
                .reconcile(&ReconcileOptions {
                    prune_fences: true,
                    ..Default::default()
                })
                .expect("reconcile");
            assert!(r.cleaned.is_empty() && r.check.checks.len() == VOLUMES);
            ms(t)
        })
        .collect();
    let firsts_check: Vec<f64> = first[VOLUMES - 20..]
        .iter()
        .map(|r| r.timings.check_ms)
        .collect();

    let rows = [
        (
            "anchor: mapper::list_all (100 mapping records)",
            stats(anchor_list),
        ),
        ("anchor: rbd_list2 + osd blocklist ls", stats(anchor_ceph)),
        ("attach check (new mapping, 100 attached)", stats(check)),
        ("attach claim (uncontended)", stats(claim)),
        ("whole attach (map + mount, no mkfs)", stats(total)),
        ("attach check, 81st-100th volumes", stats(firsts_check)),
        ("shared-mount attach: check", stats(shared_check)),
        ("shared-mount attach: whole", stats(shared_total)),
        ("daemon reconcile of 100 attachments", stats(full)),
    ];
    println!("| step ({VOLUMES} volumes attached on this node) | median ms | p90 ms | max ms |");
    println!("|---|---|---|---|");
    for (name, (med, p90, max)) in rows {
        println!("| {name} | {med:.2} | {p90:.2} | {max:.2} |");
    }
    drop(cleanup);
}
