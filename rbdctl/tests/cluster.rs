//! rbdctl's view of the cluster layer, against the dev cluster: `registry ls`, `watchers`,
//! `fence ls/add/rm` with the fence log, `fence image` (fencing by hand), and, as root
//! with the userspace mapper, `daemon` (answers release requests, reconciles) and
//! `reconcile [--dry-run]` on a node whose volume a fence took away.
//!
//! Each test uses a registry namespace of its own (`--registry-namespace`).

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Cleanup, Env, env};
use rbd_core::rbd::LockMode;
use rbd_core::{ConnectOptions, EntityAddr, Image, OpenOptions, Rados, Timeouts};
use rbd_driver::cluster::{
    Cluster, ClusterConfig, HolderRecord, ImageRef, Mode, NodeId, Registry, ReleaseAnswer,
};
use serde_json::Value;

fn connect(env: &Env) -> Rados {
    Rados::connect(
        &ConnectOptions::new()
            .conf_file(&env.conf)
            .timeouts(Timeouts::uniform(Duration::from_secs(10))),
    )
    .expect("connect")
}

fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Removes a test's registry namespace objects and the blocklist entries its fence log
/// names.
struct RegistryCleanup {
    rados: Rados,
    ns: String,
}

impl Drop for RegistryCleanup {
    fn drop(&mut self) {
        if let Ok(reg) = Registry::open(&self.rados, "rbd", &self.ns) {
            for f in reg.fences(true).unwrap_or_default() {
                for a in &f.addrs {
                    let _ = self.rados.blocklist_rm(a);
                }
            }
            for o in [
                rbd_driver::cluster::registry::REGISTRY_OBJECT,
                rbd_driver::cluster::registry::FENCE_OBJECT,
                rbd_driver::cluster::control::CONTROL_OBJECT,
            ] {
                let _ = reg.ioctx().remove_object(o);
            }
        }
    }
}

#[test]
fn registry_watchers_and_fencing_by_hand() {
    let Some(e) = env() else { return };
    let c = Cleanup::new(&e);
    let ns = testkit::unique("rbdctl-reg");
    let admin = connect(&e);
    let _rc = RegistryCleanup {
        rados: admin.clone(),
        ns: ns.clone(),
    };
    let img = c.image("fence");
    e.rbd(&[
        "create",
        "--size",
        "16M",
        "--image-feature",
        "layering,exclusive-lock",
        &img,
    ]);
    // A client that holds the image as a mapping would: its own connection, the image
    // open, the exclusive lock; registered for node cli-holder with its exact address.
    let holder = connect(&e);
    let io = holder.ioctx("rbd").unwrap();
    let id = rbd_core::rbd::image_id_by_name(&io, &img).unwrap();
    let h_img = Image::open_by_id(&io, &id, &OpenOptions::new()).unwrap();
    h_img.lock_acquire(LockMode::Exclusive).unwrap();
    let addr = *holder.getaddrs().unwrap().primary().unwrap();
    c.blocklisted(&addr.to_string());
    let image = ImageRef::new("rbd", "", &img, &id);
    let reg = Registry::open(&admin, "rbd", &ns).unwrap();
    let mut rec = HolderRecord::new(NodeId::new("cli-holder").unwrap(), Mode::Rw);
    rec.client_addr = Some(addr);
    rec.mount_ids.insert("ctr-9".into());
    reg.register(&image, rec).unwrap();
    let nsarg = ["--registry-namespace", ns.as_str()];

    // registry ls: the entry, its holder, address, mount IDs; JSON and table.
    let mut a = vec!["registry", "ls", "--format", "json"];
    a.extend(nsarg);
    let v = e.rbdctl(&a).ok().json();
    let entries = v[0]["entries"].as_array().unwrap();
    let ent = entries
        .iter()
        .find(|x| x["image_id"] == id.as_str())
        .unwrap();
    assert_eq!(ent["mode"], "rw");
    assert_eq!(ent["holders"][0]["node"], "cli-holder");
    assert_eq!(ent["holders"][0]["client_addr"], addr.to_string().as_str());
    assert_eq!(ent["holders"][0]["mount_ids"][0], "ctr-9");
    assert!(ent["age_secs"].is_u64() && ent["epoch"].is_u64());
    let mut a = vec!["registry", "ls"];
    a.extend(nsarg);
    let t = e.rbdctl(&a).ok().stdout();
    for want in ["MOUNT IDS", "cli-holder", &addr.to_string(), "ctr-9", &id] {
        assert!(t.contains(want), "{t} lacks {want}");
    }

    // watchers: the holder's address, watching, owning the lock, matched to its node.
    let mut a = vec!["watchers", &img, "--format", "json"];
    a.extend(nsarg);
    let w = e.rbdctl(&a).ok().json();
    let row = w["clients"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["addr"] == addr.to_string().as_str())
        .unwrap_or_else(|| panic!("{w}"));
    assert_eq!(row["watching"], true);
    assert_eq!(row["lock_owner"], true);
    assert_eq!(row["node"], "cli-holder");
    assert_eq!(row["fenced"], Value::Null);

    // fence image --node with an unknown node: not found, nothing done.
    let mut a = vec!["fence", "image", &img, "--node", "nosuch"];
    a.extend(nsarg);
    e.rbdctl(&a).code(3);
    // fence image: the holder's exact address blocklisted, its lock broken, the fence
    // logged, its registry record dropped.
    let mut a = vec![
        "fence",
        "image",
        &img,
        "--reason",
        "test fence",
        "--expire",
        "600",
        "--format",
        "json",
    ];
    a.extend(nsarg);
    let f = e.rbdctl(&a).ok().json();
    let fenced: Vec<EntityAddr> = f["outcome"]["record"]["addrs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap().parse().unwrap())
        .collect();
    assert!(fenced.iter().any(|x| x.same_instance(&addr)), "{f}");
    assert!(
        !f["outcome"]["record"]["locks_broken"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    assert_eq!(f["removed_holders"][0], "cli-holder");
    assert!(reg.get(&image).unwrap().is_none());
    let mut a = vec!["fence", "ls", "--format", "json"];
    a.extend(nsarg);
    let l = e.rbdctl(&a).ok().json();
    assert!(
        l["blocklist"]
            .as_array()
            .unwrap()
            .iter()
            .any(|b| b["addr"] == addr.to_string().as_str()),
        "{l}"
    );
    let log = l["fence_log"].as_array().unwrap();
    let r = log
        .iter()
        .find(|r| r["image"]["image_id"] == id.as_str())
        .unwrap();
    assert_eq!(r["fenced_node"], "cli-holder");
    assert_eq!(r["reason"], "test fence");
    assert!(r["expires_ms"].as_u64().unwrap() >= r["at_ms"].as_u64().unwrap() + 599_000);
    let mut a = vec!["fence", "ls"];
    a.extend(nsarg);
    let t = e.rbdctl(&a).ok().stdout();
    for want in [
        "fence log (pool rbd)",
        "cli-holder",
        "test fence",
        "EXPIRES",
    ] {
        assert!(t.contains(want), "{t} lacks {want}");
    }
    // The fenced client no longer watches or owns the lock; watchers says it is fenced.
    assert!(wait_until(Duration::from_secs(10), || {
        let mut a = vec!["watchers", &img, "--format", "json"];
        a.extend(nsarg);
        let w = e.rbdctl(&a).ok().json();
        w["clients"].as_array().unwrap().iter().all(|r| {
            r["addr"] != addr.to_string().as_str()
                || (r["watching"] == false && r["lock_owner"] == false)
        })
    }));

    // fence rm lifts the blocklist entry and drops the fence-log record.
    let addr_s = addr.to_string();
    let mut a = vec!["fence", "rm", &addr_s];
    a.extend(nsarg);
    let out = e.rbdctl(&a).ok().stdout();
    assert!(out.contains("removed 1 fence-log records"), "{out}");
    let mut a = vec!["fence", "ls", "--format", "json"];
    a.extend(nsarg);
    let l = e.rbdctl(&a).ok().json();
    assert!(l["fence_log"].as_array().unwrap().is_empty(), "{l}");

    // fence add --image records a fence done by hand.
    let other = connect(&e);
    let oaddr = other.getaddrs().unwrap().primary().copied().unwrap();
    c.blocklisted(&oaddr.to_string());
    let oaddr_s = oaddr.to_string();
    let mut a = vec!["fence", "add", &oaddr_s, "--image", &img, "--expire", "60"];
    a.extend(nsarg);
    let out = e.rbdctl(&a).ok().stdout();
    assert!(out.contains("recorded in the fence log"), "{out}");
    let rec = reg
        .fences(false)
        .unwrap()
        .into_iter()
        .find(|r| r.addrs.iter().any(|x| x.same_instance(&oaddr)))
        .unwrap();
    assert_eq!(rec.image.image_id, id);
    assert_eq!(rec.reason, "fenced by hand with rbdctl");
    let mut a = vec!["fence", "rm", &oaddr_s];
    a.extend(nsarg);
    e.rbdctl(&a).ok();
    assert!(reg.fences(true).unwrap().is_empty());
    drop(other);
    // The fenced holder's handle: close it, bounded (a fenced client may stall).
    let _ = rbd_core::rados::with_deadline(
        "closing the fenced holder",
        rbd_core::Context::none(),
        Duration::from_secs(10),
        move || {
            drop(h_img);
            drop(holder);
            Ok(())
        },
    );
}

/// `fence add` / `fence rm` with `--format json`; a whole-host address is refused
/// without `--whole-host` (nothing blocklisted); `fence image --node N` fences only N's
/// registered mapping and spares a watcher registered to nobody (and another node's).
#[test]
fn fence_add_rm_json_whole_host_refused_and_node_scoped_fence() {
    let Some(e) = env() else { return };
    let c = Cleanup::new(&e);
    let ns = testkit::unique("rbdctl-nits");
    let admin = connect(&e);
    let _rc = RegistryCleanup {
        rados: admin.clone(),
        ns: ns.clone(),
    };
    let nsarg = ["--registry-namespace", ns.as_str()];

    // Whole-host addresses: refused without the confirmation flag, nothing blocklisted.
    let before = admin.blocklist_ls().unwrap().len();
    for whole in ["127.0.0.1:0/0", "127.0.0.1"] {
        let r = e.rbdctl(&["fence", "add", whole]).code(2);
        assert!(
            r.err.contains("names every client on a host") && r.err.contains("--whole-host"),
            "{}",
            r.err
        );
    }
    assert!(
        !admin
            .blocklist_ls()
            .unwrap()
            .iter()
            .any(|b| b.addr.is_whole_host()),
        "a whole host was fenced"
    );
    assert!(admin.blocklist_ls().unwrap().len() <= before + 1);

    // add / rm as JSON.
    let other = connect(&e);
    let oaddr = *other.getaddrs().unwrap().primary().unwrap();
    c.blocklisted(&oaddr.to_string());
    let oaddr_s = oaddr.to_string();
    let v = e
        .rbdctl(&[
            "fence", "add", &oaddr_s, "--expire", "60", "--format", "json",
        ])
        .ok()
        .json();
    assert_eq!(v["fenced"], oaddr_s.as_str(), "{v}");
    assert_eq!(v["expire_secs"], 60);
    assert_eq!(v["whole_host"], false);
    assert_eq!(v["recorded"], Value::Null);
    assert!(admin.is_blocklisted(&oaddr).unwrap());
    let mut a = vec!["fence", "rm", &oaddr_s, "--format", "json"];
    a.extend(nsarg);
    let v = e.rbdctl(&a).ok().json();
    assert_eq!(v["unfenced"], oaddr_s.as_str(), "{v}");
    assert_eq!(v["fence_log_records_removed"], 0);
    assert!(!admin.is_blocklisted(&oaddr).unwrap());
    drop(other);

    // fence image --node: node cli-a's registered mapping holds the lock; node cli-b's
    // mapping and a watcher registered to nobody have the image open too.
    let img = c.image("nodefence");
    e.rbd(&[
        "create",
        "--size",
        "16M",
        "--image-feature",
        "layering,exclusive-lock",
        &img,
    ]);
    let open = |lock: bool| {
        let r = connect(&e);
        let io = r.ioctx("rbd").unwrap();
        let id = rbd_core::rbd::image_id_by_name(&io, &img).unwrap();
        let i = Image::open_by_id(&io, &id, &OpenOptions::new()).unwrap();
        if lock {
            i.lock_acquire(LockMode::Exclusive).unwrap();
        }
        let addr = *r.getaddrs().unwrap().primary().unwrap();
        c.blocklisted(&addr.to_string());
        (i, r, addr, id)
    };
    let (ia, ra, addr_a, id) = open(true);
    let (ib, rb, addr_b, _) = open(false);
    let (iu, ru, addr_u, _) = open(false);
    let image = ImageRef::new("rbd", "", &img, &id);
    let reg = Registry::open(&admin, "rbd", &ns).unwrap();
    let mut ha = HolderRecord::new(NodeId::new("cli-a").unwrap(), Mode::Ro);
    ha.client_addr = Some(addr_a);
    reg.register(&image, ha).unwrap();
    let mut hb = HolderRecord::new(NodeId::new("cli-b").unwrap(), Mode::Ro);
    hb.client_addr = Some(addr_b);
    reg.register(&image, hb).unwrap();
    let mut a = vec![
        "fence", "image", &img, "--node", "cli-a", "--format", "json",
    ];
    a.extend(nsarg);
    let f = e.rbdctl(&a).ok().json();
    let fenced: Vec<EntityAddr> = f["outcome"]["record"]["addrs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap().parse().unwrap())
        .collect();
    assert_eq!(fenced.len(), 1, "{f}");
    assert!(fenced[0].same_instance(&addr_a), "{f}");
    let spared = f["outcome"]["spared"].as_array().unwrap();
    for x in [addr_b, addr_u] {
        assert!(
            spared.iter().any(|s| s[0]
                .as_str()
                .unwrap()
                .parse::<EntityAddr>()
                .unwrap()
                .same_instance(&x)
                && s[1] == "not registered to node cli-a"),
            "{x} not spared: {f}"
        );
    }
    assert!(admin.is_blocklisted(&addr_a).unwrap());
    assert!(!admin.is_blocklisted(&addr_b).unwrap());
    assert!(!admin.is_blocklisted(&addr_u).unwrap());
    assert_eq!(f["removed_holders"], serde_json::json!(["cli-a"]));
    let left = reg.get(&image).unwrap().expect("cli-b still registered");
    assert_eq!(left.holders.len(), 1);
    assert_eq!(left.holders[0].node.as_str(), "cli-b");
    // The spared clients still work.
    let mut buf = [0u8; 512];
    ib.read_at(0, &mut buf).unwrap();
    iu.read_at(0, &mut buf).unwrap();
    drop((ib, rb, iu, ru));
    let _ = rbd_core::rados::with_deadline(
        "closing the fenced client",
        rbd_core::Context::none(),
        Duration::from_secs(10),
        move || {
            drop((ia, ra));
            Ok(())
        },
    );
}

/// `target/<profile>/rbd-umap`, when the workspace's binaries are built.
fn umap_bin() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let p = exe.parent()?.parent()?.join("rbd-umap");
    p.is_file().then_some(p)
}

/// Unmounts and unmaps what the node test left, removes its directories.
struct NodeCleanup {
    cfg: rbd_driver::volume::DriverConfig,
    root: PathBuf,
    daemon: Option<std::process::Child>,
}

impl Drop for NodeCleanup {
    fn drop(&mut self) {
        if let Some(mut d) = self.daemon.take() {
            let _ = d.kill();
            let _ = d.wait();
        }
        if let Ok(mi) = std::fs::read_to_string("/proc/self/mountinfo") {
            let root = std::fs::canonicalize(&self.root).unwrap_or(self.root.clone());
            for l in mi.lines().collect::<Vec<_>>().into_iter().rev() {
                if let Some(mp) = l.split(' ').nth(4)
                    && std::path::Path::new(mp).starts_with(&root)
                {
                    let _ = Command::new("timeout")
                        .args(["30", "umount", "-l", mp])
                        .status();
                }
            }
        }
        if let Ok(maps) = rbd_driver::mapper::list_all(&self.cfg.mapper) {
            for m in maps {
                let _ = rbd_driver::mapper::mapper_for(m.backend, &self.cfg.mapper).unmap(&m, true);
            }
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

#[test]
fn daemon_answers_release_requests_and_reconcile_cleans_a_fenced_volume() {
    let Some(e) = env() else { return };
    if !testkit::require_root() {
        return;
    }
    let Some(umap) = umap_bin() else {
        assert!(
            !testkit::in_ci(),
            "the rbd-umap binary is missing next to the test binaries (build the workspace)"
        );
        eprintln!("SKIPPED: rbd-umap is not built; run the whole workspace's tests");
        return;
    };
    let ns = testkit::unique("rbdctl-node");
    let admin = connect(&e);
    let _rc = RegistryCleanup {
        rados: admin.clone(),
        ns: ns.clone(),
    };
    let root = std::env::temp_dir().join(testkit::unique("rbdctl-node"));
    let node = "cli-n1";
    let mut cfg = rbd_driver::volume::DriverConfig::new(rbd_driver::mapper::CephAuth {
        conf: e.conf.clone(),
        id: "admin".into(),
        keyring: None,
    });
    cfg.node_id = node.into();
    cfg.state_dir = root.join("state");
    cfg.mount_root = root.join("mounts");
    cfg.mapper.run_dir = root.join("run");
    cfg.mapper.umap_bin = Some(umap.clone());
    cfg.backend = Some(rbd_driver::mapper::Backend::Userspace);
    cfg.cluster.namespace = ns.clone();
    cfg.map_options.io_timeout_secs = Some(4);
    let mut guard = NodeCleanup {
        cfg: cfg.clone(),
        root: root.clone(),
        daemon: None,
    };
    let c = Cleanup::new(&e);
    let vol = c.image("vol");
    let driver = rbd_driver::volume::Driver::new(cfg.clone()).unwrap();
    let info = driver
        .create(&vol, &rbd_driver::volume::CreateSpec::default())
        .unwrap();
    let mp = driver.attach(&vol, "m1", None).unwrap();
    let nodeargs: Vec<String> = vec![
        "--node-id".into(),
        node.into(),
        "--state-dir".into(),
        cfg.state_dir.display().to_string(),
        "--mount-root".into(),
        cfg.mount_root.display().to_string(),
        "--run-dir".into(),
        cfg.mapper.run_dir.display().to_string(),
        "--umap-bin".into(),
        umap.display().to_string(),
        "--backend".into(),
        "userspace".into(),
        "--registry-namespace".into(),
        ns.clone(),
    ];
    let with = |base: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = base.iter().map(|s| s.to_string()).collect();
        v.extend(nodeargs.iter().cloned());
        v
    };
    let run = |args: Vec<String>| {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        e.rbdctl(&refs)
    };

    // A dry run: the attachment is current.
    let r = run(with(&["reconcile", "--dry-run", "--format", "json"]))
        .ok()
        .json();
    let chk = r["check"]["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["mapping"]["image_id"] == info.image_id.as_str())
        .unwrap_or_else(|| panic!("{r}"))
        .clone();
    assert_eq!(chk["verdict"]["state"], "current", "{chk}");
    assert_eq!(r["dry_run"], true);

    // The daemon: READY once it answers and has reconciled.
    let log = root.join("daemon.log");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rbdctl"));
    cmd.arg("-c").arg(&e.conf);
    cmd.args(with(&["daemon", "--interval", "1"]));
    let child = cmd
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::create(root.join("daemon.err")).unwrap())
        .spawn()
        .unwrap();
    let pid = child.id();
    guard.daemon = Some(child);
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        wait_until(Duration::from_secs(60), || read_log()
            .contains("READY node cli-n1")),
        "{}\n{}",
        read_log(),
        std::fs::read_to_string(root.join("daemon.err")).unwrap_or_default()
    );

    // Another node asks for the volume: the daemon refuses, naming the mount ID.
    let mut other_cfg = ClusterConfig::new(NodeId::new("cli-n2").unwrap());
    other_cfg.namespace = ns.clone();
    let other = Cluster::new(connect(&e), other_cfg);
    let image = ImageRef::new("rbd", "", &vol, &info.image_id);
    let ctl = other.control("rbd").unwrap();
    match ctl
        .release(
            &NodeId::new(node).unwrap(),
            &image,
            false,
            Duration::from_secs(10),
        )
        .unwrap()
    {
        ReleaseAnswer::Refused { mount_ids, reason } => {
            assert_eq!(mount_ids, vec!["m1".to_string()]);
            assert!(reason.contains(&mp.display().to_string()), "{reason}");
        }
        a => panic!("expected a refusal: {a:?}"),
    }

    // The volume is fenced by hand; the daemon's reconcile finds its device stale (client
    // blocklisted) and cleans it.
    let f = run(vec![
        "fence".into(),
        "image".into(),
        vol.clone(),
        "--registry-namespace".into(),
        ns.clone(),
        "--format".into(),
        "json".into(),
    ])
    .ok()
    .json();
    assert_eq!(f["removed_holders"][0], node);
    let store = driver.state_store().clone();
    assert!(
        wait_until(Duration::from_secs(60), || !store
            .load()
            .unwrap()
            .volumes
            .contains_key(&vol)),
        "the daemon did not clean the fenced volume:\n{}",
        read_log()
    );
    assert!(wait_until(Duration::from_secs(10), || read_log()
        .contains("reconcile: cleaned stale userspace mapping")
        || read_log().contains("reconcile: recovered")));
    let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mi.contains(&mp.display().to_string()), "still mounted");
    let r = run(with(&["reconcile", "--dry-run", "--format", "json"]))
        .ok()
        .json();
    assert!(r["check"]["checks"].as_array().unwrap().is_empty(), "{r}");
    // The table form too.
    let t = run(with(&["reconcile"])).ok().stdout();
    assert!(t.contains("node cli-n1: 0 local mappings"), "{t}");

    // Take-over from another node: attached again on cli-n1, `volume rm` on cli-n2 is
    // refused (exit 5) naming cli-n1, the mount ID and --take-over; with --take-over,
    // cli-n1's daemon releases it (unmounts it) and the volume is removed.
    let mp = driver.attach(&vol, "m2", None).unwrap();
    let n2 = root.join("n2");
    let n2args: Vec<String> = vec![
        "--node-id".into(),
        "cli-n2".into(),
        "--state-dir".into(),
        n2.join("state").display().to_string(),
        "--mount-root".into(),
        n2.join("mounts").display().to_string(),
        "--run-dir".into(),
        n2.join("run").display().to_string(),
        "--umap-bin".into(),
        umap.display().to_string(),
        "--backend".into(),
        "userspace".into(),
    ];
    let on_n2 = |base: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = base.iter().map(|s| s.to_string()).collect();
        v.extend(n2args.iter().cloned());
        v
    };
    // (volume commands take the registry namespace from the environment)
    let run_n2 = |args: Vec<String>| {
        let o = Command::new("timeout")
            .arg("120")
            .arg(env!("CARGO_BIN_EXE_rbdctl"))
            .arg("-c")
            .arg(&e.conf)
            .args(&args)
            .env("RBD_REGISTRY_NAMESPACE", &ns)
            .env_remove("RBD_PLUGIN_CONFIG")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        common::Run::from_output(o)
    };
    let r = run_n2(on_n2(&["volume", "rm", &vol])).code(5);
    for want in ["node cli-n1 refused", "m2", "--take-over"] {
        assert!(r.err.contains(want), "{} lacks {want}", r.err);
    }
    assert!(mount_at_path(&mp), "a refused remove unmounted it");
    let r = run_n2(on_n2(&[
        "volume",
        "rm",
        &vol,
        "--take-over",
        "--format",
        "json",
    ]))
    .ok()
    .json();
    assert_eq!(r["removed"], vol.as_str(), "{r}");
    assert_eq!(r["released_by"], serde_json::json!(["cli-n1"]), "{r}");
    assert_eq!(r["fenced"], serde_json::json!([]), "{r}");
    assert!(!mount_at_path(&mp), "cli-n1 still has it mounted");
    assert!(!store.load().unwrap().volumes.contains_key(&vol));

    // SIGTERM stops it cleanly.
    // SAFETY: kill(2) on the pid of the child we spawned and still own (not yet reaped).
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let mut child = guard.daemon.take().unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "the daemon did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "{status:?}");
}

/// Whether `mp` is a mountpoint now (`/proc/self/mountinfo`).
fn mount_at_path(mp: &std::path::Path) -> bool {
    let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let want = mp.display().to_string();
    mi.lines()
        .any(|l| l.split(' ').nth(4) == Some(want.as_str()))
}
