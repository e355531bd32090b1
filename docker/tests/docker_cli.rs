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

#[test]
fn bad_input_is_refused_with_a_clear_error_and_nothing_is_created() {
    let Some(env) = setup("cli-bad") else {
        return;
    };
    let ceph = Ceph::new(&env.conf);
    let d = &env.dockerd;
    let before = ceph.images("rbd");

    // (docker volume create arguments after the driver, text the error must contain)
    let prefix = testkit::unique("bad");
    let n = |s: &str| format!("{prefix}-{s}");
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
        (vec![format!("{prefix}..x@y")], "volume name"),
        (vec!["a".repeat(120)], "volume name"),
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

    let after = ceph.images("rbd");
    let created: Vec<_> = after
        .iter()
        .filter(|i| !before.contains(i) && i.starts_with(&prefix))
        .collect();
    assert!(created.is_empty(), "images were created: {created:?}");
    let ls = d.ok(&["volume", "ls", "-q"]);
    assert!(
        !ls.lines().any(|l| l.starts_with(&prefix)),
        "docker volume ls shows refused volumes:\n{ls}"
    );
    // And the plugin knows nothing of them either.
    let r = call(
        &env.plugin.socket,
        "VolumeDriver.List",
        serde_json::json!({}),
    );
    assert!(
        !r.json()["Volumes"]
            .as_array()
            .expect("Volumes")
            .iter()
            .any(|v| v["Name"].as_str().is_some_and(|s| s.starts_with(&prefix)))
    );
}
