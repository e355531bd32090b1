//! The real tools on plain image files (no loop device, no root needed): probe agrees with
//! what mke2fs/mkfs.xfs/mkfs.btrfs wrote, and fsck outcomes match real corruption.

mod common;

use common::{TempDir, blkid, require_tools, run};
use fs_format::{
    DetectedFs, Error, FsType, FsckOptions, FsckOutcome, MkfsArgs, MkfsOptions, Probe, fsck, mkfs,
    mkfs_argv, probe,
};

const SIZE: u64 = 512 << 20;

fn full_fsck() -> FsckOptions {
    FsckOptions {
        force_full_check: true,
        ..FsckOptions::default()
    }
}

#[test]
fn mkfs_and_probe_image_files() {
    if !require_tools(&["mkfs.ext4", "mkfs.xfs", "mkfs.btrfs"]) {
        return;
    }
    let dir = TempDir::new("fs-format-img");
    for fs in FsType::ALL {
        let img = dir.sparse_file(&format!("{fs}.img"), SIZE);
        assert_eq!(probe(&img).unwrap(), Probe::Blank);
        let label = format!("img-{fs}");
        let report = mkfs(
            &img,
            fs,
            &MkfsOptions {
                label: Some(label.clone()),
                ..MkfsOptions::default()
            },
        )
        .unwrap();
        let info = probe(&img).unwrap().filesystem().cloned().unwrap();
        assert_eq!(info, report.fs);
        assert_eq!(info.kind.fs_type(), fs);
        assert_eq!(info.label.as_deref(), Some(label.as_str()));
        assert_eq!(info.block_size, 4096);
        if let Some(uuid) = blkid(&img, "UUID") {
            assert_eq!(uuid, info.uuid, "{fs}: blkid disagrees");
        }
        // The default command never discards and the report carries it.
        let cmd = &report.output.command;
        match fs {
            FsType::Ext4 => assert!(cmd.contains("-E nodiscard,lazy_itable_init=1"), "{cmd}"),
            FsType::Xfs => assert!(cmd.contains(" -K "), "{cmd}"),
            FsType::Btrfs => assert!(cmd.contains(" --nodiscard "), "{cmd}"),
        }
    }
}

/// Runs a mkfs command line (from [`mkfs_argv`]) directly, under `timeout`; true when it
/// succeeded.
fn tool_accepts(argv: &[std::ffi::OsString]) -> bool {
    std::process::Command::new("timeout")
        .arg("120")
        .args(argv)
        .output()
        .expect("run mkfs")
        .status
        .success()
}

#[test]
fn minimum_sizes_match_the_tools_and_smaller_devices_are_refused_before_mkfs() {
    if !require_tools(&["mkfs.ext4", "mkfs.xfs", "mkfs.btrfs", "timeout"]) {
        return;
    }
    let dir = TempDir::new("fs-format-min");
    let cases: [(FsType, &str); 5] = [
        (FsType::Ext4, ""),
        (FsType::Xfs, ""),
        (FsType::Btrfs, ""),
        (FsType::Btrfs, "-d dup"),
        (FsType::Btrfs, "-d dup -m single"),
    ];
    for (i, (fs, extra)) in cases.into_iter().enumerate() {
        let opts = MkfsOptions::default().with_extra_str(extra);
        let min = MkfsArgs::parse_str(fs, extra).unwrap().min_size();
        assert_eq!(min % 4096, 0);
        // The encoded minimum is the tool's: one 4 KiB step below, the tool itself
        // refuses (xfs with only its usage text); at the minimum it succeeds.
        let below = dir.sparse_file(&format!("{i}-below.img"), min - 4096);
        assert!(
            !tool_accepts(&mkfs_argv(&below, fs, &opts).unwrap()),
            "{fs} {extra:?}: the tool accepted {} bytes, below the encoded minimum {min}",
            min - 4096
        );
        let at = dir.sparse_file(&format!("{i}-at.img"), min);
        let report = mkfs(&at, fs, &opts).unwrap_or_else(|e| panic!("{fs} {extra:?}: {e}"));
        assert_eq!(report.fs.kind.fs_type(), fs);

        // Below the minimum, mkfs refuses with an error naming both sizes, and the
        // device is untouched.
        let small = dir.sparse_file(&format!("{i}-small.img"), min - 4096);
        match mkfs(&small, fs, &opts) {
            Err(e @ Error::TooSmall { .. }) => {
                let msg = e.to_string();
                assert!(msg.contains(&(min - 4096).to_string()), "{msg}");
                assert!(msg.contains(&min.to_string()), "{msg}");
                assert!(msg.contains(fs.as_str()), "{msg}");
            }
            other => panic!("{fs} {extra:?}: expected TooSmall, got {other:?}"),
        }
        assert_eq!(probe(&small).unwrap(), Probe::Blank);
    }
    assert_eq!(FsType::Xfs.min_size(), 300 << 20);
    assert_eq!(FsType::Btrfs.min_size(), 109 << 20);
    let e = mkfs(
        dir.sparse_file("xfs-256m.img", 256 << 20),
        FsType::Xfs,
        &MkfsOptions::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("256 MiB") && e.contains("300 MiB"), "{e}");
}

#[test]
fn ext_generations_from_real_mke2fs() {
    if !require_tools(&["mkfs.ext2", "mkfs.ext3", "mkfs.ext4"]) {
        return;
    }
    let dir = TempDir::new("fs-format-ext");
    let cases: [(&str, &[&str], DetectedFs); 4] = [
        ("mkfs.ext2", &[], DetectedFs::Ext2),
        ("mkfs.ext3", &[], DetectedFs::Ext3),
        ("mkfs.ext4", &[], DetectedFs::Ext4),
        ("mkfs.ext4", &["-O", "^has_journal"], DetectedFs::Ext4),
    ];
    for (i, (tool, extra, want)) in cases.into_iter().enumerate() {
        let img = dir.sparse_file(&format!("{i}.img"), 64 << 20);
        let path = img.to_str().unwrap();
        let mut args = vec!["-q", "-F", "-L", "gen"];
        args.extend_from_slice(extra);
        args.push(path);
        run(tool, &args);
        let info = probe(&img).unwrap().filesystem().cloned().unwrap();
        assert_eq!(info.kind, want, "{tool} {extra:?}");
        assert_eq!(info.kind.fs_type(), FsType::Ext4);
        if let Some(t) = blkid(&img, "TYPE") {
            assert_eq!(t, want.as_str(), "{tool} {extra:?}");
        }
    }
}

#[test]
fn e2fsck_outcomes_on_real_corruption() {
    if !require_tools(&["mkfs.ext4", "e2fsck", "debugfs"]) {
        return;
    }
    let dir = TempDir::new("fs-format-fsck");
    let img = dir.sparse_file("ext4.img", SIZE);
    mkfs(&img, FsType::Ext4, &MkfsOptions::default()).unwrap();
    let path = img.to_str().unwrap();
    assert_eq!(
        fsck(&img, FsType::Ext4, &full_fsck()).unwrap().outcome,
        FsckOutcome::Clean
    );

    // A wrong free-blocks count is something preen mode repairs.
    run(
        "debugfs",
        &["-w", "-R", "ssv free_blocks_count 12345", path],
    );
    let r = fsck(&img, FsType::Ext4, &full_fsck()).unwrap();
    assert_eq!(r.outcome, FsckOutcome::ErrorsCorrected, "{:#?}", r.output);
    assert_eq!(r.output.code(), Some(1));
    assert_eq!(
        fsck(&img, FsType::Ext4, &full_fsck()).unwrap().outcome,
        FsckOutcome::Clean
    );

    // A cleared root inode is not.
    run("debugfs", &["-w", "-R", "clri <2>", path]);
    // Without -f, preen trusts the clean flag.
    assert_eq!(
        fsck(&img, FsType::Ext4, &FsckOptions::default())
            .unwrap()
            .outcome,
        FsckOutcome::Clean
    );
    let r = fsck(&img, FsType::Ext4, &full_fsck()).unwrap();
    assert_eq!(r.outcome, FsckOutcome::ErrorsLeft, "{:#?}", r.output);
    assert!(
        r.output.stdout.contains("RUN fsck MANUALLY")
            || r.output.stderr.contains("RUN fsck MANUALLY")
    );
}

#[test]
fn xfs_repair_reports_corruption() {
    if !require_tools(&["mkfs.xfs", "xfs_repair", "xfs_db"]) {
        return;
    }
    let dir = TempDir::new("fs-format-xfsck");
    let img = dir.sparse_file("xfs.img", SIZE);
    mkfs(&img, FsType::Xfs, &MkfsOptions::default()).unwrap();
    let r = fsck(&img, FsType::Xfs, &FsckOptions::default()).unwrap();
    assert_eq!(r.outcome, FsckOutcome::Clean, "{:#?}", r.output);

    run(
        "xfs_db",
        &[
            "-x",
            "-c",
            "inode 128",
            "-c",
            "write -d core.mode 0",
            img.to_str().unwrap(),
        ],
    );
    let r = fsck(&img, FsType::Xfs, &FsckOptions::default()).unwrap();
    assert_eq!(r.outcome, FsckOutcome::ErrorsLeft, "{:#?}", r.output);
    // -n never modifies: the corruption is still reported.
    let r = fsck(&img, FsType::Xfs, &FsckOptions::default()).unwrap();
    assert_eq!(r.outcome, FsckOutcome::ErrorsLeft);
}

#[test]
fn btrfs_check_clean_image() {
    if !require_tools(&["mkfs.btrfs", "btrfs"]) {
        return;
    }
    let dir = TempDir::new("fs-format-btrfsck");
    let img = dir.sparse_file("btrfs.img", SIZE);
    mkfs(&img, FsType::Btrfs, &MkfsOptions::default()).unwrap();
    let r = fsck(&img, FsType::Btrfs, &FsckOptions::default()).unwrap();
    assert_eq!(r.outcome, FsckOutcome::Clean, "{:#?}", r.output);
    assert!(r.output.command.starts_with("btrfs check --readonly "));
}
