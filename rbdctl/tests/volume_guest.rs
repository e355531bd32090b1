//! The volume lifecycle for real with the krbd backend, inside the qemu guest (a Debian
//! kernel with the rbd module, real root with every capability): `rbdctl volume create`,
//! `attach` (krbd map, mkfs, mount), a file written, `resize` and `snapshot` while mounted,
//! `detach`, `attach` again, `rm`. It exercises what the host cannot: an online ext4 grow
//! (`EXT4_IOC_RESIZE_FS` through resize2fs needs CAP_SYS_RESOURCE, which the host sandbox
//! lacks), and the same for xfs over krbd. The guest half is `tests/guest/volume.sh`; the
//! host checks the guest's output and the cluster. One guest boot.
//!
//! Policy (as testkit's): when the harness cannot run, the test fails under `CI=true` and
//! is skipped with a printed reason otherwise.

#[path = "../../rbd-driver/tests/krbd_nbd_support/harness.rs"]
mod harness;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use harness as support;
use serde_json::Value;

const POOL: &str = "rbd";
const MIB: u64 = 1 << 20;
/// Where the guest script keeps the node's mounts.
const GUEST_MOUNT_ROOT: &str = "/var/lib/rbd-volumes-guest/mounts";

/// One volume the guest runs through its lifecycle.
struct Vol {
    name: String,
    fstype: &'static str,
    size_mib: u64,
    new_mib: u64,
}

/// Host-side cleanup when the guest did not finish: `rbdctl volume rm --force` with a
/// node state of its own (the driver removes the index entry and the image; a mapping the
/// dead guest left registered is fenced), then the image itself as a last resort.
struct Cleanup {
    conf: PathBuf,
    dir: tempfile::TempDir,
    names: Vec<String>,
}

impl Cleanup {
    /// `rbdctl ARGS` (a volume subcommand: the node flags go after it) on the host.
    fn rbdctl(&self, args: &[&str]) -> std::process::Output {
        let d = self.dir.path();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_rbdctl"));
        cmd.arg("-c")
            .arg(&self.conf)
            .args(["--format", "json", "--timeout", "30"])
            .args(args)
            .arg("--state-dir")
            .arg(d.join("state"))
            .arg("--mount-root")
            .arg(d.join("mounts"))
            .arg("--run-dir")
            .arg(d.join("run"))
            .args(["--node-id", "volume-guest-host"])
            .stdin(Stdio::null());
        for (k, _) in std::env::vars_os() {
            if k.to_str().is_some_and(|k| k.starts_with("RBD_")) {
                cmd.env_remove(k);
            }
        }
        testkit::cmd::run(&mut cmd, Duration::from_secs(120))
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for n in &self.names {
            if self.rbdctl(&["volume", "inspect", n]).status.code() == Some(3) {
                continue;
            }
            let out = self.rbdctl(&["volume", "rm", "--force", n]);
            if !out.status.success() {
                eprintln!(
                    "cleanup: rbdctl volume rm --force {n}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                let _ = support::ceph_cli_raw(
                    &self.conf,
                    "rbd",
                    &["rm", "--no-progress", &format!("{POOL}/{n}")],
                );
            }
        }
    }
}

/// A copy of rbdctl without debug info (a smaller initramfs boots faster under TCG), or the
/// binary itself when `strip` is not there.
fn stripped_rbdctl(dir: &Path) -> PathBuf {
    let src = PathBuf::from(env!("CARGO_BIN_EXE_rbdctl"));
    let dst = dir.join("rbdctl");
    let out = testkit::cmd::run(
        Command::new("strip")
            .arg("--strip-debug")
            .arg("-o")
            .arg(&dst)
            .arg(&src),
        Duration::from_secs(120),
    );
    if out.status.success() {
        dst
    } else {
        eprintln!(
            "note: strip failed ({}); the guest gets the unstripped rbdctl",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        src
    }
}

fn num(s: &support::Step) -> u64 {
    s.out
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("not a number: {s:?}"))
}

#[test]
fn volume_lifecycle_with_online_grow_in_a_qemu_guest() {
    let Some(env) = support::env() else { return };
    let conf = env.conf.clone();
    let vols = [
        Vol {
            name: testkit::unique("gvol-e"),
            fstype: "ext4",
            size_mib: 64,
            new_mib: 160,
        },
        // xfs needs at least 300 MiB.
        Vol {
            name: testkit::unique("gvol-x"),
            fstype: "xfs",
            size_mib: 320,
            new_mib: 512,
        },
    ];
    let tmp = tempfile::tempdir().unwrap();
    let _cleanup = Cleanup {
        conf: conf.clone(),
        dir: tempfile::tempdir().unwrap(),
        names: vols.iter().map(|v| v.name.clone()).collect(),
    };
    let spec_words: Vec<String> = vols
        .iter()
        .map(|v| format!("{}:{}:{}M:{}M", v.name, v.fstype, v.size_mib, v.new_mib))
        .collect();
    let node = testkit::unique("guest-node");
    let script = testkit::workspace_root().join("rbdctl/tests/guest/volume.sh");
    let rbdctl = stripped_rbdctl(tmp.path());
    let run = support::run_guest_with(
        &env,
        &[rbdctl],
        &["xfs"],
        &script,
        &[
            ("NODE", node.clone()),
            ("POOL", POOL.into()),
            ("VOLS", spec_words.join(" ")),
        ],
    );
    assert!(
        run.has("END"),
        "the guest script did not finish (exit {}); console:\n{}",
        run.code,
        run.console
    );
    assert_eq!(run.code, 0, "guest exit code; console:\n{}", run.console);

    for v in &vols {
        let t = |s: &str| format!("{}.{s}", v.name);
        let step = |s: &str| run.step(&t(s));
        let ok = |s: &str| {
            let st = step(s);
            assert_eq!(st.rc, 0, "{}: {st:?}", t(s));
            st
        };
        let (old, new) = (v.size_mib * MIB, v.new_mib * MIB);

        // create and attach through the driver, with the krbd backend.
        let created = &ok("create").json;
        assert_eq!(created["name"], v.name.as_str(), "{created}");
        assert_eq!(created["size"], old, "{created}");
        let image_id = created["image_id"].as_str().unwrap().to_owned();
        let mp = format!("{GUEST_MOUNT_ROOT}/{}", v.name);
        assert_eq!(ok("attach").json["mountpoint"], mp.as_str());
        let status = &ok("status").json;
        let local = &status["local"];
        assert_eq!(local["backend"], "krbd", "{status}");
        assert_eq!(local["mounted"], true, "{status}");
        assert_eq!(status["node"], node.as_str(), "{status}");
        assert_eq!(status["image_id"], image_id.as_str(), "{status}");
        let dev = local["device"].as_str().unwrap().to_owned();
        assert!(dev.starts_with("/dev/rbd"), "{status}");
        // "MOUNT_ID MAJ:MIN MOUNTPOINT FSTYPE SOURCE OPTIONS" from the guest's mountinfo.
        let mounts = step("mount").out.clone();
        let m: Vec<&str> = mounts.split_whitespace().collect();
        assert!(
            m.len() == 6
                && m[2] == mp
                && m[3] == v.fstype
                && m[4] == dev
                && (m[5] == "rw" || m[5].starts_with("rw,")),
            "mounted read-write from the krbd device: {mounts:?}"
        );
        assert_eq!(num(step("devsize")), old);
        let sum = support::first_word(step("sha"));
        assert_eq!(sum.len(), 64, "{:?}", step("sha"));
        let before = num(step("fs_before"));
        assert!(before < old, "{} {before}", v.fstype);

        // resize while mounted: the image grows, then the filesystem, online.
        let r = &ok("resize").json;
        eprintln!("{} resize report: {r}", v.fstype);
        assert_eq!(r["volume"], v.name.as_str(), "{r}");
        assert_eq!(r["image_size_before"], old, "{r}");
        assert_eq!(r["image_size"], new, "{r}");
        assert_eq!(r["filesystem"], "online", "grown online, not deferred: {r}");
        assert_eq!(r["fstype"], v.fstype, "{r}");
        assert_eq!(r["mountpoint"], mp.as_str(), "{r}");
        assert_eq!(r["device"], dev.as_str(), "{r}");
        assert_eq!(r["fs_size_before"], before, "{r}");
        let after = num(step("fs_after"));
        assert_eq!(r["fs_size_after"], after, "the report's statvfs size: {r}");
        let grown = new - old;
        assert!(
            after > before + grown * 9 / 10 && after <= new,
            "{}: the mounted filesystem grew from {before} to {after} bytes on a {new}-byte \
             device",
            v.fstype
        );
        assert_eq!(num(step("devsize_after")), new, "the krbd device grew");
        assert_eq!(
            step("mount_after").out,
            mounts,
            "the same mount (same mount ID), never unmounted"
        );
        assert_eq!(support::first_word(step("sha_after")), sum);
        let info: Value = serde_json::from_str(&ok("info").out).unwrap();
        assert_eq!(info["size"], new, "the cluster's image size: {info}");
        assert_eq!(info["id"], image_id.as_str(), "{info}");
        // A snapshot of the mounted volume: krbd hands the lock over for it, and the
        // filesystem takes writes again afterwards.
        assert_eq!(ok("snap").json["snapshot"], "s1");
        let snaps: Value = serde_json::from_str(&ok("snap_ls").out).unwrap();
        assert!(
            snaps.as_array().unwrap().iter().any(|s| s["name"] == "s1"),
            "{snaps}"
        );
        assert_eq!(ok("write_after_snap").out, "after");
        eprintln!(
            "{} in the guest: {}; df before: {}; df after: {}",
            v.fstype,
            r["note"],
            step("df_before").out,
            step("df_after").out
        );

        // detach unmounts; attached again, the filesystem keeps its grown size and the file.
        let det = &ok("detach").json;
        assert_eq!(det["unmapped"], true, "{det}");
        assert!(step("unmounted").out.is_empty(), "{:?}", step("unmounted"));
        ok("reattach");
        assert_eq!(num(step("fs_reattach")), after);
        assert_eq!(support::first_word(step("sha_reattach")), sum);
        ok("detach2");
        // The filesystem grown online is consistent (e2fsck -fn / xfs_repair -n).
        let fsck = step("fsck");
        assert_eq!(fsck.rc, 0, "fsck of the grown {}: {fsck:?}", v.fstype);

        // rm --force (it has a snapshot): gone from the cluster and from the volume index.
        assert_eq!(ok("rm").json["removed"], v.name.as_str());
        assert_eq!(step("inspect_gone").rc, 3, "{:?}", step("inspect_gone"));
        assert_ne!(step("info_gone").rc, 0, "{:?}", step("info_gone"));
        let ls = support::ceph_cli(&conf, "rbd", &["ls", POOL]);
        assert!(!ls.lines().any(|l| l == v.name), "{ls}");
        let reg = support::ceph_cli_raw(
            &conf,
            "rados",
            &[
                "-p",
                POOL,
                "-N",
                "rbd-volumes",
                "listomapkeys",
                "rbd_volumes.mappings",
            ],
        );
        let keys = String::from_utf8_lossy(&reg.stdout);
        assert!(
            !keys.contains(&image_id),
            "the registry still lists image {image_id}: {keys}"
        );
        let gone = _cleanup.rbdctl(&["volume", "inspect", &v.name]);
        assert_eq!(
            gone.status.code(),
            Some(3),
            "the host's rbdctl finds no volume {}: {}",
            v.name,
            String::from_utf8_lossy(&gone.stderr)
        );
    }
    assert!(
        run.step("mapped").out.is_empty(),
        "no krbd device left in the guest: {:?}",
        run.step("mapped")
    );
    eprintln!("volume guest: total {:.1} s", run.secs);
}
