//! The plugin through the real docker CLI and a real dockerd (from scripts/dev-docker.sh),
//! against the real dev cluster: `docker volume create/ls/inspect/rm`, and bad input that
//! must be refused with a clear message while nothing is created in Ceph.
//!
//! dockerd finds the plugin through `/etc/docker/plugins/<name>.spec` pointing at the test's
//! socket, under a unique name per test (`rbd-<unique>`), removed afterwards. Each test has
//! a dockerd of its own (see `common::Dockerd` for why).
//!
//! Needs `CEPH_CONF`, `DOCKER_HOST` (the dev dockerd must be available, it gates these
//! tests) and root.

mod common;

use common::*;
use serde_json::Value;

fn setup(prefix: &str) -> Option<DockerEnv> {
    DockerEnv::setup(prefix)
}

#[test]
fn volume_create_ls_inspect_rm() {
    let Some(env) = setup("cli-crud") else {
        return;
    };
    let ceph = Ceph::new(&env.conf);
    let d = &env.dockerd;
    let v1 = testkit::unique("v1");
    let _guard = env.guard(&v1);

    let out = d.ok(&["volume", "create", "-d", env.driver(), "-o", "size=1G", &v1]);
    assert_eq!(out.trim(), v1);
    assert!(ceph.image_exists("rbd", &v1), "rbd ls does not show {v1}");
    assert_eq!(
        ceph.info(&format!("rbd/{v1}"))["size"].as_u64(),
        Some(1 << 30)
    );

    let ls = d.ok(&["volume", "ls", "--format", "{{.Driver}} {{.Name}}"]);
    assert!(
        ls.lines().any(|l| l == format!("{} {v1}", env.driver())),
        "docker volume ls:\n{ls}"
    );

    let inspect: Value = serde_json::from_str(&d.ok(&["volume", "inspect", &v1])).unwrap();
    let vol = &inspect[0];
    assert_eq!(vol["Name"], Value::String(v1.clone()));
    assert_eq!(vol["Driver"], Value::String(env.driver().to_string()));
    assert_eq!(vol["Scope"], "global");
    assert_eq!(vol["Status"]["size"], Value::from(1u64 << 30), "{vol}");
    assert_eq!(vol["Status"]["pool"], "rbd", "{vol}");
    assert!(
        vol["CreatedAt"]
            .as_str()
            .is_some_and(|s| s.starts_with("20")),
        "{vol}"
    );

    let out = d.ok(&["volume", "rm", &v1]);
    assert_eq!(out.trim(), v1);
    assert!(!ceph.image_exists("rbd", &v1), "rbd ls still shows {v1}");
    let ls = d.ok(&["volume", "ls", "-q"]);
    assert!(
        !ls.lines().any(|l| l == v1),
        "docker volume ls still shows {v1}"
    );
}

/// An RBD namespace made for one test, removed (with any image left in it) in `Drop`.
struct Namespace {
    ceph: Ceph,
    spec: String,
}

impl Namespace {
    fn create(ceph: &Ceph, pool: &str, name: &str) -> Namespace {
        let spec = format!("{pool}/{name}");
        check(
            "rbd namespace create",
            &ceph.rbd(&["namespace", "create", &spec]),
        );
        Namespace {
            ceph: Ceph::new(&ceph.conf),
            spec,
        }
    }

    /// Image names in the namespace.
    fn images(&self) -> Vec<String> {
        let out = self.ceph.rbd(&["ls", &self.spec, "--format", "json"]);
        serde_json::from_str(check("rbd ls", &out).trim()).unwrap_or_default()
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        for i in self.images() {
            let _ = self.ceph.rbd(&["rm", &format!("{}/{i}", self.spec)]);
        }
        let _ = self.ceph.rbd(&["namespace", "rm", &self.spec]);
    }
}

#[test]
fn bad_input_is_refused_with_a_clear_error_and_nothing_is_created() {
    // The plugin creates its volumes in a namespace of this test's own (a node-wide
    // default), so "nothing created" means that namespace stays empty, whatever the names
    // and whatever other tests create in the pool meanwhile.
    let Some(conf) = testkit::ceph_conf() else {
        return;
    };
    let ns_name = testkit::unique("cli-bad");
    let ns = Namespace::create(&Ceph::new(&conf), "rbd", &ns_name);
    let Some(env) = DockerEnv::setup_with("cli-bad", |spec| {
        spec.env
            .insert("RBD_DEFAULT_NAMESPACE".into(), ns_name.clone());
    }) else {
        return;
    };
    let d = &env.dockerd;

    // (docker volume create arguments after the driver, text the error must contain)
    let n = |s: &str| testkit::unique(s);
    let bad_chars = format!("{}..x@y", n("chars"));
    let too_long = "a".repeat(120);
    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec!["-o".into(), "size=-1".into(), n("neg")], "-1"),
        (vec!["-o".into(), "size=1e99".into(), n("huge")], "1e99"),
        (vec!["-o".into(), "size=2Q".into(), n("unit")], "2Q"),
        (vec!["-o".into(), "size=0".into(), n("zero")], "size"),
        (
            vec!["-o".into(), "colour=blue".into(), n("unknown")],
            "allowed:",
        ),
        (
            vec!["-o".into(), "fstype=../../x".into(), n("fstype")],
            "../../x",
        ),
        (vec!["-o".into(), "fstype=ntfs".into(), n("ntfs")], "ntfs"),
        (
            vec!["-o".into(), "mount-options=nobarrier".into(), n("mopt")],
            "nobarrier",
        ),
        (
            vec![
                "-o".into(),
                "mkfs-options=-O ^has_journal;rm -rf /".into(),
                n("mkfs"),
            ],
            "mkfs",
        ),
        (vec!["-o".into(), "access=rwx".into(), n("access")], "rwx"),
        // Bad names: the error names the bad value itself.
        (vec![bad_chars.clone()], &bad_chars),
        (vec![too_long.clone()], &too_long),
    ];
    for (args, want) in &cases {
        let mut full: Vec<&str> = vec!["volume", "create", "-d", env.driver()];
        full.extend(args.iter().map(String::as_str));
        let err = d.fails(&full);
        assert!(
            err.contains(want),
            "docker {}: error {err:?} lacks {want:?}",
            full.join(" ")
        );
        eprintln!("docker {}: {}", full.join(" "), err.trim());
        // A message for people: no Go error wrapping soup, no HTTP status.
        assert!(!err.contains("VolumeDriver.Create:"), "{err}");
    }
    let names: Vec<&str> = cases
        .iter()
        .map(|(args, _)| args.last().expect("a name").as_str())
        .collect();

    // Nothing in the namespace, no volume of those names for docker or the plugin.
    assert_eq!(ns.images(), Vec::<String>::new(), "images were created");
    let ls = d.ok(&["volume", "ls", "-q"]);
    let shown: Vec<&str> = ls.lines().filter(|l| names.contains(l)).collect();
    assert!(
        shown.is_empty(),
        "docker volume ls shows refused volumes: {shown:?}"
    );
    let r = call(
        &env.plugin.socket,
        "VolumeDriver.List",
        serde_json::json!({}),
    );
    let known: Vec<String> = r.json()["Volumes"]
        .as_array()
        .expect("Volumes")
        .iter()
        .filter_map(|v| v["Name"].as_str())
        .filter(|n| names.contains(n))
        .map(String::from)
        .collect();
    assert!(
        known.is_empty(),
        "the plugin lists refused volumes: {known:?}"
    );

    // The check above can see a creation: a good volume does land in the namespace.
    let good = testkit::unique("good");
    let _guard = env.guard(&good);
    d.ok(&[
        "volume",
        "create",
        "-d",
        env.driver(),
        "-o",
        "size=32M",
        &good,
    ]);
    assert_eq!(ns.images(), vec![good.clone()]);
    d.ok(&["volume", "rm", &good]);
    assert_eq!(ns.images(), Vec::<String>::new());
}
