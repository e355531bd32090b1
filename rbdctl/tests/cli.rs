//! The shell face of rbdctl: documented exit codes, completions, the command layout, and
//! progress bars drawn only when stdout and stderr are both a terminal (checked under a
//! real pseudo-terminal with `script`) and never with `--no-progress`.

mod common;

use std::process::{Command, Stdio};

use common::Cleanup;

fn rbdctl_plain(args: &[&str]) -> (i32, String, String) {
    let o = Command::new("timeout")
        .arg(common::TIMEOUT)
        .arg(env!("CARGO_BIN_EXE_rbdctl"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run rbdctl");
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn help_documents_every_exit_code_and_command() {
    let (code, out, _) = rbdctl_plain(&["--help"]);
    assert_eq!(code, 0);
    for line in [
        "0  success",
        "2  bad usage or invalid input (nothing was changed)",
        "3  not found (image, snapshot, volume, pool, mapping, mount ID)",
        "4  already exists",
        "5  in use (watchers, locks, mounts, a volume's mount IDs, a mapped device that is",
        "6  cluster unavailable: timed out, or our client is blocklisted",
        "7  permission denied",
    ] {
        assert!(out.contains(line), "--help lacks {line:?}:\n{out}");
    }
    for cmd in [
        "create",
        "ls",
        "info",
        "rm",
        "status",
        "resize",
        "rename",
        "cp",
        "snap",
        "clone",
        "flatten",
        "children",
        "export",
        "import",
        "lock",
        "image-meta",
        "trash",
        "feature",
        "fence",
        "registry",
        "watchers",
        "reconcile",
        "daemon",
        "bench",
        "map",
        "unmap",
        "showmapped",
        "device",
        "volume",
        "mount",
        "umount",
        "completions",
    ] {
        assert!(
            out.lines()
                .any(|l| l.trim_start().starts_with(&format!("{cmd} "))),
            "--help lacks command {cmd}:\n{out}"
        );
    }
    let (code, out, _) = rbdctl_plain(&["snap", "--help"]);
    assert_eq!(code, 0);
    for sub in [
        "create",
        "ls",
        "rm",
        "rollback",
        "protect",
        "unprotect",
        "rename",
    ] {
        assert!(
            out.lines()
                .any(|l| l.trim_start().starts_with(&format!("{sub} "))),
            "snap --help lacks {sub}:\n{out}"
        );
    }
    // Unknown commands and flags are usage errors: 2.
    assert_eq!(rbdctl_plain(&["frobnicate"]).0, 2);
    assert_eq!(rbdctl_plain(&["ls", "--bogus"]).0, 2);
}

#[test]
fn completions_cover_the_new_commands() {
    let (code, out, _) = rbdctl_plain(&["completions", "bash"]);
    assert_eq!(code, 0);
    for w in [
        "rollback",
        "image-meta",
        "--allow-shrink",
        "--io-pattern",
        "--no-progress",
        "showmapped",
        "--mount-id",
        "--state-dir",
        "--keep-mapped",
    ] {
        assert!(out.contains(w), "bash completion lacks {w}");
    }
    let (code, out, _) = rbdctl_plain(&["completions", "zsh"]);
    assert_eq!(code, 0);
    assert!(out.contains("flatten"));
}

/// Runs rbdctl under a pseudo-terminal (util-linux `script`); returns what the terminal
/// showed (stdout and stderr together).
fn on_a_terminal(conf: &std::path::Path, args: &str) -> String {
    let cmd = format!(
        "{} -c {} {args}",
        env!("CARGO_BIN_EXE_rbdctl"),
        conf.display()
    );
    let o = Command::new("timeout")
        .arg(common::TIMEOUT)
        .args(["script", "-qec", &cmd, "/dev/null"])
        .stdin(Stdio::null())
        .output()
        .expect("run script");
    assert!(
        o.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn progress_only_on_a_terminal_and_never_with_no_progress() {
    let Some(e) = common::env() else { return };
    let c = Cleanup::new(&e);
    let img = c.image("progress");
    let out = c.file("progress");
    e.rbd(&["create", "--size", "256M", &img]);
    e.rbd(&[
        "bench",
        "--io-type",
        "write",
        "--io-size",
        "1M",
        "--io-total",
        "8M",
        &img,
    ]);

    // Off a terminal (as in every other test): stdout has the result only, stderr nothing.
    let r = e.rbdctl(&["resize", &img, "--size", "512M"]).ok();
    assert_eq!(
        r.stdout(),
        format!("resized rbd/{img} from 256 MiB to 512 MiB\n")
    );
    assert_eq!(r.err, "");

    // On a terminal: the bar is drawn (on stderr) and cleared; the result follows.
    let shown = on_a_terminal(&e.conf, &format!("resize {img} --size 1G"));
    assert!(shown.contains("Resizing image"), "{shown:?}");
    assert!(
        shown.contains(&format!("resized rbd/{img} from 512 MiB to 1 GiB")),
        "{shown:?}"
    );
    let shown = on_a_terminal(&e.conf, &format!("export {img} {}", out.display()));
    assert!(shown.contains("Exporting image"), "{shown:?}");

    // Stdout to a file or a pipe, stderr still on the terminal: no bar either.
    let res = c.file("progress-result");
    let shown = on_a_terminal(
        &e.conf,
        &format!("resize {img} --size 1536M > {}", res.display()),
    );
    assert_eq!(shown, "", "{shown:?}");
    assert_eq!(
        std::fs::read_to_string(&res).unwrap(),
        format!("resized rbd/{img} from 1 GiB to 1.5 GiB\n")
    );
    let shown = on_a_terminal(
        &e.conf,
        &format!("export {img} - | cat > {}", out.display()),
    );
    assert!(!shown.contains("Exporting image"), "{shown:?}");
    assert_eq!(std::fs::metadata(&out).unwrap().len(), 1536 << 20);

    // --no-progress on a terminal: only the result.
    let shown = on_a_terminal(&e.conf, &format!("--no-progress resize {img} --size 2G"));
    assert_eq!(
        shown.trim_end(),
        format!("resized rbd/{img} from 1.5 GiB to 2 GiB"),
        "{shown:?}"
    );
    let shown = on_a_terminal(
        &e.conf,
        &format!("--no-progress export --force {img} {}", out.display()),
    );
    assert!(!shown.contains("Exporting image"), "{shown:?}");
    assert!(
        shown.starts_with(&format!("exported rbd/{img}")),
        "{shown:?}"
    );

    // Stderr on the terminal but stdout redirected (`rbdctl ... > file`, `| jq`): no bar
    // either; the result goes to the file.
    let result = c.file("progress-result");
    let shown = on_a_terminal(
        &e.conf,
        &format!("resize {img} --size 3G > {}", result.display()),
    );
    assert!(!shown.contains("Resizing image"), "{shown:?}");
    assert_eq!(
        std::fs::read_to_string(&result).unwrap(),
        format!("resized rbd/{img} from 2 GiB to 3 GiB\n")
    );
}

#[test]
fn unreachable_cluster_is_exit_6_within_the_timeout() {
    // A conf naming a monitor nobody listens on: the connect times out (bounded by
    // --timeout), and the exit code says "cluster unavailable".
    let dir = std::env::temp_dir().join(testkit::unique("rbdctl-nomon"));
    std::fs::create_dir_all(&dir).unwrap();
    let conf = dir.join("ceph.conf");
    std::fs::write(
        &conf,
        "[global]\nmon host = 127.0.0.1:9\nauth supported = none\n",
    )
    .unwrap();
    let start = std::time::Instant::now();
    let (code, _, err) = rbdctl_plain(&["-c", conf.to_str().unwrap(), "--timeout", "3", "ls"]);
    let took = start.elapsed();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(code, 6, "{err}");
    assert!(took < std::time::Duration::from_secs(30), "took {took:?}");
}
