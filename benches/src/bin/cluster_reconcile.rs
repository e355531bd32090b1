//! Measures the cluster layer's checks on the attach path with 100 registered volumes, on
//! the dev cluster (`CEPH_CONF`):
//!
//! * `check_for` (the reconcile check before an attach: the local mappings of one image,
//!   by id or reused name, against image existence, the registry and the blocklist);
//! * `claim` of an uncontended image (one compare-and-swap registration) and `unregister`;
//! * a full `check` of 100 local mappings plus a registry scan for dangling entries;
//!
//! and as the anchor, the raw Ceph calls the check is made of, measured in the same run:
//! one `rbd_list2` of the pool plus one `osd blocklist ls`.
//!
//! The 100 local mappings are the mapping records a mapper would list for the 100 real
//! images (the check only reads them). Prints a markdown table for BENCHMARKS.md.
//!
//! ```sh
//! eval "$(scripts/dev-cluster.sh up)"
//! cargo run --release -p benches --bin cluster_reconcile
//! ```

use std::time::{Duration, Instant};

use rbd_core::{ConnectOptions, Rados, Timeouts};
use rbd_driver::cluster::{ClaimOptions, Cluster, ClusterConfig, ImageRef, Mode, NodeId};
use rbd_driver::mapper::{Backend, Mapping};

const POOL: &str = "rbd";
const VOLUMES: usize = 100;
const ITERS: usize = 200;

fn stats(mut v: Vec<Duration>) -> (f64, f64, f64) {
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    (
        ms(v[v.len() / 2]),
        ms(v[v.len() * 9 / 10]),
        ms(*v.last().unwrap()),
    )
}

fn time<T>(n: usize, mut f: impl FnMut(usize) -> T) -> Vec<Duration> {
    (0..n)
        .map(|i| {
            let t = Instant::now();
            std::hint::black_box(f(i));
            t.elapsed()
        })
        .collect()
}

struct Cleanup {
    rados: Rados,
    names: Vec<String>,
    ns: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Ok(io) = self.rados.ioctx(POOL) {
            for n in &self.names {
                let _ = rbd_core::rbd::remove(&io, n);
            }
            if let Ok(nio) = io.with_namespace(&self.ns) {
                for o in [
                    rbd_driver::cluster::registry::REGISTRY_OBJECT,
                    rbd_driver::cluster::registry::FENCE_OBJECT,
                    rbd_driver::cluster::control::CONTROL_OBJECT,
                ] {
                    let _ = nio.remove_object(o);
                }
            }
        }
    }
}

fn main() {
    let conf = std::env::var("CEPH_CONF").expect("CEPH_CONF must point at the dev cluster");
    let rados = Rados::connect(
        &ConnectOptions::new()
            .conf_file(&conf)
            .timeouts(Timeouts::uniform(Duration::from_secs(20))),
    )
    .expect("connect");
    let ns = testkit::unique("rbd-volumes-bench");
    let mut cleanup = Cleanup {
        rados: rados.clone(),
        names: Vec::new(),
        ns: ns.clone(),
    };
    let mut cfg = ClusterConfig::new(NodeId::new("bench-node").unwrap());
    cfg.namespace = ns.clone();
    let cluster = Cluster::new(rados.clone(), cfg);
    let io = rados.ioctx(POOL).unwrap();
    let me = *rados.getaddrs().unwrap().primary().unwrap();

    eprintln!("creating and registering {VOLUMES} images...");
    let mut images = Vec::new();
    for i in 0..VOLUMES {
        let name = testkit::unique(&format!("bench-vol{i:03}"));
        rbd_core::rbd::create(&io, &name, 4 << 20, &Default::default()).unwrap();
        cleanup.names.push(name.clone());
        let id = rbd_core::rbd::image_id_by_name(&io, &name).unwrap();
        let img = ImageRef::new(POOL, "", &name, &id);
        cluster
            .claim(&img, Mode::Rw, &ClaimOptions::default())
            .unwrap();
        images.push(img);
    }
    let local: Vec<Mapping> = images
        .iter()
        .enumerate()
        .map(|(i, img)| Mapping {
            backend: Backend::Userspace,
            pool: img.pool.clone(),
            namespace: String::new(),
            image: img.image.clone(),
            image_id: img.image_id.clone(),
            snap: None,
            device: format!("/dev/loop{i}").into(),
            client_addr: Some(rbd_core::EntityAddr {
                nonce: me.nonce.wrapping_add(i as u32 + 1),
                ..me
            }),
            read_only: false,
            pid: None,
        })
        .collect();
    assert_eq!(
        cluster
            .registry(POOL)
            .unwrap()
            .list()
            .unwrap()
            .entries
            .len(),
        VOLUMES
    );

    // Warm up.
    for img in images.iter().take(5) {
        cluster.check_for(img, &local).unwrap();
    }

    let anchor = time(ITERS, |_| {
        let l = rbd_core::rbd::list(&io).unwrap();
        let b = rados.blocklist_ls().unwrap();
        (l.len(), b.len())
    });
    let check_for = time(ITERS, |i| {
        let r = cluster.check_for(&images[i % VOLUMES], &local).unwrap();
        assert_eq!(r.checks.len(), 1);
        assert_eq!(r.stale().count(), 0);
    });
    let spare = ImageRef::new(POOL, "", "bench-spare", "feedface0001");
    let claim = time(ITERS, |_| {
        cluster
            .claim(&spare, Mode::Rw, &ClaimOptions::default())
            .unwrap();
        cluster.unregister(&spare).unwrap();
    });
    let full = time(ITERS / 4, |_| {
        let r = cluster.check(&local, &[POOL.to_owned()]).unwrap();
        assert_eq!(r.checks.len(), VOLUMES);
        assert!(r.dangling.is_empty());
    });

    let a = stats(anchor);
    let rows = [
        ("anchor: rbd_list2 + osd blocklist ls", a, ITERS),
        (
            "check_for (attach-path reconcile check)",
            stats(check_for),
            ITERS,
        ),
        ("claim + unregister (uncontended)", stats(claim), ITERS),
        (
            "check of 100 mappings + dangling scan",
            stats(full),
            ITERS / 4,
        ),
    ];
    println!(
        "| operation ({VOLUMES} registered volumes) | n | median ms | p90 ms | max ms | median / anchor |"
    );
    println!("|---|---|---|---|---|---|");
    for (name, (med, p90, max), n) in rows {
        println!(
            "| {name} | {n} | {med:.2} | {p90:.2} | {max:.2} | {:.2} |",
            med / a.0
        );
    }
    drop(cleanup);
}
