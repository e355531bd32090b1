//! README command 1, `scripts/demo.sh`, runs end to end on the dev cluster: rbdctl's image
//! lifecycle, then a dockerd of its own and the volume plugin, a volume written by one
//! container and read back (checksum verified) by another, and the volume removed from
//! Ceph. It runs on the binaries the test suite built (`DEMO_BIN_DIR`), against the dev
//! cluster that `CEPH_CONF` names (so it starts and stops no cluster), and must leave
//! nothing behind: its dockerd, plugin, plugin spec file and image are gone afterwards.
//!
//! Needs the dev cluster, the Docker packages and root: a failure under CI, a skip
//! otherwise (see `testkit`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use testkit::cmd;

/// Where the test suite's binaries are: `target/<profile>/` (this test runs from
/// `target/<profile>/deps/`).
fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    exe.parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .expect("the test binary lives in target/<profile>/deps")
}

#[test]
fn readme_command_one_runs_the_full_docker_flow() {
    let Some(conf) = testkit::ceph_conf() else {
        return;
    };
    // The demo starts a dockerd of its own; the dev dockerd being there says the Docker
    // packages are installed.
    let Some(_docker) = testkit::docker_host() else {
        return;
    };
    if !testkit::require_root() {
        return;
    }
    let bins = bin_dir();
    let needed = ["rbdctl", "docker-volume-rbd", "rbd-umap"];
    if needed.iter().any(|b| !bins.join(b).is_file()) {
        // Run alone (`cargo nextest run -p workspace-tests --test demo`), nothing built
        // the binaries yet.
        let out = cmd::run(
            Command::new(env!("CARGO"))
                .current_dir(testkit::workspace_root())
                .args([
                    "build",
                    "-p",
                    "rbdctl",
                    "-p",
                    "docker-volume-rbd",
                    "-p",
                    "rbd-driver",
                    "--bins",
                ]),
            Duration::from_secs(1200),
        );
        cmd::check("cargo build of the demo's binaries", &out);
    }
    let cluster_dir = conf.parent().expect("ceph.conf has a directory");
    let out = cmd::run(
        Command::new(testkit::workspace_root().join("scripts/demo.sh"))
            .env("DEMO_BIN_DIR", &bins)
            .env("DEV_CLUSTER_DIR", cluster_dir)
            .env("DEMO_TIMEOUT", "120")
            .env_remove("DOCKER_HOST"),
        Duration::from_secs(900),
    );
    let shown = format!("{}{}", cmd::text(&out.stdout), cmd::text(&out.stderr));
    assert!(out.status.success(), "scripts/demo.sh failed:\n{shown}");

    // rbdctl's part: the image was created, shown by both CLIs, and removed.
    for step in [
        "==> rbdctl create --size 1G demo-",
        "==> Ceph's own rbd CLI agrees",
        "rbdctl: created, listed, inspected and removed demo-",
    ] {
        assert!(shown.contains(step), "{step:?} missing:\n{shown}");
    }
    // The Docker part: the reader verified the writer's checksum in a new container.
    assert!(
        shown.contains("/data/blob: OK"),
        "the reader did not verify the data:\n{shown}"
    );
    let vol = shown
        .lines()
        .find_map(|l| l.strip_prefix("==> docker volume create -d rbd-demo -o size=1G "))
        .expect("the volume's name")
        .trim()
        .to_owned();
    assert!(
        shown.contains(&format!("\"Name\": \"{vol}\"")),
        "docker volume inspect does not show {vol}:\n{shown}"
    );
    let img = shown
        .lines()
        .find_map(|l| l.strip_prefix("==> rbdctl create --size 1G "))
        .expect("the image's name")
        .trim()
        .to_owned();
    assert!(shown.contains("==> done:"), "{shown}");

    // Nothing left: the volume's image, the plugin spec, the demo's dockerd.
    let ls = cmd::run(
        Command::new("rbd").args(["-c"]).arg(&conf).arg("ls"),
        Duration::from_secs(60),
    );
    let images = cmd::check("rbd ls", &ls);
    assert!(
        !images.lines().any(|l| l == vol || l == img),
        "the demo left images: {images}"
    );
    assert!(!Path::new("/etc/docker/plugins/rbd-demo.spec").exists());
    assert!(!Path::new("/tmp/rbd-demo-docker").exists());
}
