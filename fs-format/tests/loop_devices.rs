//! End-to-end tests with the real mkfs/fsck/resize tools on loop devices over sparse files.
//! They need root (loop devices, mounts): `testkit::require_root()` skips them outside CI.

mod common;

use std::fs::File;
use std::time::{Duration, Instant};

use common::{Fixture, blkid, have, noise};
use fs_format::{
    Error, FsType, FsckOptions, FsckOutcome, MkfsOptions, MountOptions, MountOutcome,
    PartitionScheme, Probe, UnmountOptions, UnmountOutcome, device_size, find_mount, fs_size, fsck,
    grow, is_mountpoint, mkfs, mount, mounts_of_device, probe, unmount, unmount_with,
};

const MIB: u64 = 1 << 20;
/// mkfs.xfs wants at least 300 MiB.
const SIZE: u64 = 512 * MIB;

fn full_fsck() -> FsckOptions {
    FsckOptions {
        force_full_check: true,
        ..FsckOptions::default()
    }
}

fn lifecycle(fs: FsType) {
    let Some(fx) = Fixture::new(SIZE) else { return };
    let dev = &fx.dev.path;

    // Blank device.
    assert_eq!(probe(dev).unwrap(), Probe::Blank);

    // mkfs with a label; probe finds it with the same UUID blkid sees.
    let label = format!("t-{fs}");
    let created = mkfs(
        dev,
        fs,
        &MkfsOptions {
            label: Some(label.clone()),
            ..MkfsOptions::default()
        },
    )
    .unwrap();
    assert!(created.previous.is_blank());
    assert_eq!(created.fs.kind.as_str(), fs.as_str());
    assert_eq!(created.fs.label.as_deref(), Some(label.as_str()));
    assert!(created.output.success());
    let found = probe(dev).unwrap();
    let info = found.filesystem().unwrap_or_else(|| panic!("{found:?}"));
    assert_eq!(info, &created.fs);
    assert!(
        info.size_bytes > SIZE / 2 && info.size_bytes <= SIZE,
        "{info:?}"
    );
    if let Some(uuid) = blkid(dev, "UUID") {
        assert_eq!(uuid, info.uuid, "blkid disagrees");
        assert_eq!(blkid(dev, "LABEL").unwrap(), label);
        assert_eq!(blkid(dev, "TYPE").unwrap(), fs.as_str());
    }

    // A second mkfs without force is refused and leaves the filesystem alone.
    match mkfs(dev, fs, &MkfsOptions::default()) {
        Err(Error::NotBlank { found, .. }) => {
            assert_eq!(found.filesystem().unwrap().uuid, info.uuid)
        }
        other => panic!("mkfs over an existing filesystem was not refused: {other:?}"),
    }
    // So is one of another type.
    let other = FsType::ALL.into_iter().find(|f| *f != fs).unwrap();
    assert!(matches!(
        mkfs(dev, other, &MkfsOptions::default()),
        Err(Error::NotBlank { .. })
    ));
    assert_eq!(probe(dev).unwrap().filesystem().unwrap().uuid, info.uuid);

    // Forced, with allowlisted user options.
    let extra = match fs {
        FsType::Ext4 => "-b 4096 -m 1 -I 256 -O ^huge_file -E stride=16,stripe_width=16",
        FsType::Xfs => "-b size=4096 -m reflink=1,bigtime=1 -d agcount=4",
        FsType::Btrfs => "-n 16384 -m dup -d single",
    };
    let recreated = mkfs(
        dev,
        fs,
        &MkfsOptions {
            force: true,
            ..MkfsOptions::default()
        }
        .with_extra_str(extra),
    )
    .unwrap();
    assert_ne!(recreated.fs.uuid, info.uuid);
    assert_eq!(recreated.fs.label, None);
    assert_eq!(recreated.previous.filesystem().unwrap().uuid, info.uuid);

    // fsck of the fresh filesystem.
    let checked = fsck(dev, fs, &full_fsck()).unwrap();
    assert_eq!(checked.outcome, FsckOutcome::Clean, "{:#?}", checked.output);

    // Mount read-write, write, unmount.
    let mp = fx.mountpoint("mnt");
    let rw = MountOptions {
        read_only: false,
        options: vec!["noatime,nodev,nosuid".into()],
    };
    assert_eq!(mount(dev, &mp, fs, &rw).unwrap(), MountOutcome::Mounted);
    let m = find_mount(&mp).unwrap().expect("mounted");
    assert_eq!(m.fs_type, fs.as_str());
    assert!(m.mount_options.contains("noatime"), "{}", m.mount_options);
    assert!(m.mount_options.contains("nodev"), "{}", m.mount_options);
    assert!(!m.is_read_only());
    assert!(is_mountpoint(&mp).unwrap());
    assert!(
        mounts_of_device(dev)
            .unwrap()
            .iter()
            .any(|m| m.mount_point == mp)
    );
    // Mount is idempotent for the same device and mode.
    assert_eq!(
        mount(dev, &mp, fs, &rw).unwrap(),
        MountOutcome::AlreadyMounted
    );
    // mkfs and fsck refuse a mounted device, force or not.
    match mkfs(
        dev,
        fs,
        &MkfsOptions {
            force: true,
            ..MkfsOptions::default()
        },
    ) {
        Err(Error::DeviceMounted { mountpoint, .. }) => assert_eq!(mountpoint, mp),
        other => panic!("mkfs on a mounted device: {other:?}"),
    }
    assert!(matches!(
        fsck(dev, fs, &FsckOptions::default()),
        Err(Error::DeviceMounted { .. })
    ));

    std::fs::write(mp.join("hello.txt"), b"hello").unwrap();
    let report = unmount(&mp).unwrap();
    assert_eq!(report.outcome, UnmountOutcome::Unmounted);
    assert_eq!(report.device.as_deref(), Some(dev.as_os_str()));
    assert!(!is_mountpoint(&mp).unwrap());
    assert_eq!(unmount(&mp).unwrap().outcome, UnmountOutcome::NotMounted);

    // Read-only mount: the data is there, writes fail with EROFS.
    let ro = MountOptions {
        read_only: true,
        options: vec![],
    };
    assert_eq!(mount(dev, &mp, fs, &ro).unwrap(), MountOutcome::Mounted);
    assert!(find_mount(&mp).unwrap().unwrap().is_read_only());
    assert_eq!(std::fs::read(mp.join("hello.txt")).unwrap(), b"hello");
    let err = std::fs::write(mp.join("new.txt"), b"x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");
    // A read-write mount request on top of the read-only one is refused.
    match mount(dev, &mp, fs, &MountOptions::default()) {
        Err(Error::AlreadyMounted { read_only, .. }) => assert!(read_only),
        other => panic!("{other:?}"),
    }
    assert_eq!(unmount(&mp).unwrap().outcome, UnmountOutcome::Unmounted);

    let checked = fsck(dev, fs, &full_fsck()).unwrap();
    assert_eq!(checked.outcome, FsckOutcome::Clean, "{:#?}", checked.output);
}

#[test]
fn ext4_lifecycle() {
    lifecycle(FsType::Ext4);
}

#[test]
fn xfs_lifecycle() {
    lifecycle(FsType::Xfs);
}

#[test]
fn btrfs_lifecycle() {
    lifecycle(FsType::Btrfs);
}

/// Grow after enlarging the device, addressing the filesystem by device or mountpoint.
fn grow_case(fs: FsType, by_device: bool) {
    let Some(fx) = Fixture::new(SIZE) else { return };
    let dev = &fx.dev.path;
    mkfs(dev, fs, &MkfsOptions::default()).unwrap();
    let mp = fx.mountpoint("mnt");
    mount(dev, &mp, fs, &MountOptions::default()).unwrap();
    let target = if by_device { dev.clone() } else { mp.clone() };

    // Nothing to grow yet: succeeds, size unchanged.
    let same = grow(&target, fs, &Default::default()).unwrap();
    assert_eq!(same.size_before, same.size_after);

    fx.resize(2 * SIZE);
    assert_eq!(device_size(dev).unwrap(), 2 * SIZE);
    let before = fs_size(&mp).unwrap();
    // ext4 online resize (EXT4_IOC_RESIZE_FS) needs CAP_SYS_RESOURCE, which some
    // sandboxes drop even for root (this one: CapEff 0x1fffeffffff). Decided up front, not
    // from the outcome: without it, the refusal and the documented fallback (an offline
    // grow) are what is tested, and the test says so.
    if fs == FsType::Ext4 && !common::has_capability(CAP_SYS_RESOURCE) {
        let e = grow(&target, fs, &Default::default())
            .expect_err("an online ext4 grow succeeded without CAP_SYS_RESOURCE");
        let Error::CommandFailed {
            command, stderr, ..
        } = &e
        else {
            panic!("expected resize2fs to fail: {e}");
        };
        assert_eq!(*command, format!("resize2fs {}", dev.display()));
        assert!(stderr.contains("Permission denied"), "{stderr}");
        assert!(e.to_string().contains("resize2fs"), "{e}");
        assert_eq!(fs_size(&mp).unwrap(), before, "nothing was resized");
        // The fallback: unmounted, a full check, then the offline grow.
        assert_eq!(unmount(&mp).unwrap().outcome, UnmountOutcome::Unmounted);
        assert_eq!(
            fsck(dev, fs, &full_fsck()).unwrap().outcome,
            FsckOutcome::Clean
        );
        grow(dev, fs, &Default::default()).unwrap();
        mount(dev, &mp, fs, &MountOptions::default()).unwrap();
        assert!(fs_size(&mp).unwrap() > before + SIZE / 2);
        assert_eq!(unmount(&mp).unwrap().outcome, UnmountOutcome::Unmounted);
        eprintln!(
            "NOTE: online ext4 grow was NOT exercised: this process lacks CAP_SYS_RESOURCE \
             (CapEff {:#x}, bit {CAP_SYS_RESOURCE} clear), which the kernel requires for \
             EXT4_IOC_RESIZE_FS. Tested instead: resize2fs is refused with a clear error, \
             and the offline grow (the fallback) works.",
            common::cap_eff().unwrap_or(0)
        );
        return;
    }
    let grown = grow(&target, fs, &Default::default()).unwrap();
    assert_eq!(grown.device, *dev);
    assert_eq!(grown.mountpoint.as_deref(), Some(mp.as_path()));
    assert_eq!(grown.size_before, Some(before));
    let after = grown.size_after.unwrap();
    assert!(
        after > before + SIZE / 2,
        "{before} -> {after}: {:#?}",
        grown.output
    );
    std::fs::write(mp.join("after-grow"), b"ok").unwrap();

    assert_eq!(unmount(&mp).unwrap().outcome, UnmountOutcome::Unmounted);
    let info = probe(dev).unwrap().filesystem().cloned().unwrap();
    assert!(info.size_bytes > SIZE, "{info:?}");
    let checked = fsck(dev, fs, &full_fsck()).unwrap();
    assert_eq!(checked.outcome, FsckOutcome::Clean, "{:#?}", checked.output);
}

/// `capability.h`: needed for ext4 online resize.
const CAP_SYS_RESOURCE: u32 = 24;

#[test]
fn ext4_grow_offline() {
    let Some(fx) = Fixture::new(SIZE) else { return };
    let dev = &fx.dev.path;
    mkfs(dev, FsType::Ext4, &MkfsOptions::default()).unwrap();
    let mp = fx.mountpoint("mnt");
    mount(dev, &mp, FsType::Ext4, &MountOptions::default()).unwrap();
    std::fs::write(mp.join("data"), b"kept").unwrap();
    unmount(&mp).unwrap();
    fx.resize(2 * SIZE);
    // When mounted since its last check (second resolution), resize2fs insists on a full
    // check before an offline resize; the failure must say so.
    let grown = match grow(dev, FsType::Ext4, &Default::default()) {
        Ok(r) => r,
        Err(Error::CommandFailed { stdout, stderr, .. }) => {
            assert!(
                format!("{stdout}{stderr}").contains("e2fsck -f"),
                "{stdout}{stderr}"
            );
            assert_eq!(
                fsck(dev, FsType::Ext4, &full_fsck()).unwrap().outcome,
                FsckOutcome::Clean
            );
            grow(dev, FsType::Ext4, &Default::default()).unwrap()
        }
        Err(e) => panic!("{e}"),
    };
    assert_eq!(grown.mountpoint, None);
    assert_eq!((grown.size_before, grown.size_after), (None, None));
    let info = probe(dev).unwrap().filesystem().cloned().unwrap();
    assert_eq!(info.size_bytes, 2 * SIZE);
    assert_eq!(
        fsck(dev, FsType::Ext4, &full_fsck()).unwrap().outcome,
        FsckOutcome::Clean
    );
    mount(dev, &mp, FsType::Ext4, &MountOptions::default()).unwrap();
    assert_eq!(std::fs::read(mp.join("data")).unwrap(), b"kept");
    assert!(fs_size(&mp).unwrap() > SIZE);
}

#[test]
fn ext4_grow_by_device() {
    grow_case(FsType::Ext4, true);
}

#[test]
fn xfs_grow_by_mountpoint() {
    grow_case(FsType::Xfs, false);
}

#[test]
fn btrfs_grow_by_device() {
    grow_case(FsType::Btrfs, true);
}

#[test]
fn grow_needs_a_mount_for_xfs_and_the_right_type() {
    let Some(fx) = Fixture::new(SIZE) else { return };
    let dev = &fx.dev.path;
    mkfs(dev, FsType::Xfs, &MkfsOptions::default()).unwrap();
    assert!(matches!(
        grow(dev, FsType::Xfs, &Default::default()),
        Err(Error::NotMounted { .. })
    ));
    let mp = fx.mountpoint("mnt");
    mount(dev, &mp, FsType::Xfs, &MountOptions::default()).unwrap();
    match grow(&mp, FsType::Ext4, &Default::default()) {
        Err(Error::FsTypeMismatch { found, .. }) => assert_eq!(found, "xfs"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn busy_unmount_falls_back_to_lazy_detach() {
    let Some(fx) = Fixture::new(SIZE) else { return };
    let dev = &fx.dev.path;
    mkfs(dev, FsType::Ext4, &MkfsOptions::default()).unwrap();
    let mp = fx.mountpoint("mnt");
    mount(dev, &mp, FsType::Ext4, &MountOptions::default()).unwrap();
    let held = File::create(mp.join("held-open")).unwrap();

    // Without the fallback, EBUSY is an error naming the mountpoint.
    let strict = UnmountOptions {
        busy_retries: 1,
        retry_delay: Duration::from_millis(10),
        lazy_fallback: false,
    };
    match unmount_with(&mp, &strict) {
        Err(Error::Unmount { lazy, source, .. }) => {
            assert!(!lazy);
            assert_eq!(source, nix::errno::Errno::EBUSY);
        }
        other => panic!("{other:?}"),
    }
    assert!(is_mountpoint(&mp).unwrap());

    // With it, the mount is detached lazily and the report says so.
    let report = unmount(&mp).unwrap();
    assert_eq!(report.outcome, UnmountOutcome::LazilyDetached);
    assert!(!is_mountpoint(&mp).unwrap());

    // The filesystem is still alive behind the open file: the device is busy, which the
    // exclusive-open check sees even though no mount is listed any more.
    match mkfs(
        dev,
        FsType::Ext4,
        &MkfsOptions {
            force: true,
            ..MkfsOptions::default()
        },
    ) {
        Err(Error::DeviceBusy { .. }) => {}
        other => panic!("mkfs on a lazily detached, still open filesystem: {other:?}"),
    }

    drop(held);
    // Once the last file is closed the filesystem goes away and the device is free.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match fsck(dev, FsType::Ext4, &full_fsck()) {
            Ok(r) => {
                assert_eq!(r.outcome, FsckOutcome::Clean, "{:#?}", r.output);
                break;
            }
            Err(Error::DeviceBusy { .. }) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50))
            }
            Err(e) => panic!("{e}"),
        }
    }
}

#[test]
fn mount_rejects_bad_options_before_the_syscall() {
    let Some(fx) = Fixture::new(SIZE) else { return };
    let dev = &fx.dev.path;
    mkfs(dev, FsType::Ext4, &MkfsOptions::default()).unwrap();
    let mp = fx.mountpoint("mnt");
    let bad = MountOptions {
        read_only: false,
        options: vec!["noatime,nobarrier".into()],
    };
    match mount(dev, &mp, FsType::Ext4, &bad) {
        Err(Error::InvalidMountOption { option, .. }) => assert_eq!(option, "nobarrier"),
        other => panic!("{other:?}"),
    }
    assert!(!is_mountpoint(&mp).unwrap());

    // Allowed fs-specific options reach the kernel.
    let good = MountOptions {
        read_only: false,
        options: vec!["data=journal,commit=30,errors=remount-ro".into()],
    };
    mount(dev, &mp, FsType::Ext4, &good).unwrap();
    let m = find_mount(&mp).unwrap().unwrap();
    assert!(
        m.super_options.contains("data=journal"),
        "{}",
        m.super_options
    );
    assert!(m.super_options.contains("commit=30"), "{}", m.super_options);

    // Asking for the wrong type is caught before the kernel's bare EINVAL.
    unmount(&mp).unwrap();
    match mount(dev, &mp, FsType::Xfs, &MountOptions::default()) {
        Err(e @ Error::FsTypeMismatch { .. }) => {
            assert_eq!(
                e.to_string(),
                format!("{} holds ext4, not xfs", dev.display())
            )
        }
        other => panic!("{other:?}"),
    }
    // A syscall failure reports device, target, type, options and the errno.
    let not_a_dir = fx.dir.path().join("file");
    std::fs::write(&not_a_dir, b"").unwrap();
    let opts = MountOptions {
        read_only: true,
        options: vec!["noatime".into()],
    };
    match mount(dev, &not_a_dir, FsType::Ext4, &opts) {
        Err(e @ Error::Mount { .. }) => {
            let msg = e.to_string();
            assert!(
                msg.contains(dev.to_str().unwrap())
                    && msg.contains("as ext4 with options `ro,noatime`"),
                "{msg}"
            );
            let source = std::error::Error::source(&e).unwrap().to_string();
            assert!(source.contains("ENOTDIR"), "{source}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn probe_partition_tables() {
    let Some(fx) = Fixture::new(64 * MIB) else {
        return;
    };
    let dev = &fx.dev.path;

    // A hand-written MBR: one Linux partition at 1 MiB, 16 MiB long.
    let mut mbr = vec![0u8; 512];
    mbr[440..444].copy_from_slice(&0x1234_5678u32.to_le_bytes());
    mbr[446 + 4] = 0x83;
    mbr[446 + 8..446 + 12].copy_from_slice(&2048u32.to_le_bytes());
    mbr[446 + 12..446 + 16].copy_from_slice(&32768u32.to_le_bytes());
    mbr[510] = 0x55;
    mbr[511] = 0xAA;
    fx.write_at(0, &mbr);
    match probe(dev).unwrap() {
        Probe::PartitionTable(pt) => {
            assert_eq!(pt.scheme, PartitionScheme::Mbr);
            assert_eq!(pt.id, "0x12345678");
            assert_eq!(pt.partitions.len(), 1);
            assert_eq!(pt.partitions[0].start, MIB);
            assert_eq!(pt.partitions[0].size, 16 * MIB);
            assert_eq!(pt.partitions[0].type_id, "0x83");
        }
        other => panic!("{other:?}"),
    }
    if let Some(t) = blkid(dev, "PTTYPE") {
        assert_eq!(t, "dos");
    }
    match mkfs(dev, FsType::Ext4, &MkfsOptions::default()) {
        Err(Error::NotBlank { found, .. }) => {
            assert!(matches!(*found, Probe::PartitionTable(_)))
        }
        other => panic!("mkfs over a partition table: {other:?}"),
    }

    // A GPT written by sgdisk (gdisk is installed by scripts/install-deps.sh).
    if !have("sgdisk") {
        assert!(
            !testkit::in_ci(),
            "sgdisk is required under CI (package gdisk)"
        );
        eprintln!("SKIPPED part: sgdisk not installed: GPT checked by unit tests only");
        return;
    }
    fx.write_at(0, &vec![0u8; MIB as usize]);
    common::run(
        "sgdisk",
        &[
            "-n",
            "1:2048:+8M",
            "-t",
            "1:8300",
            "-c",
            "1:data",
            "-n",
            "2:0:+4M",
            "-t",
            "2:8200",
            dev.to_str().unwrap(),
        ],
    );
    match probe(dev).unwrap() {
        Probe::PartitionTable(pt) => {
            assert_eq!(pt.scheme, PartitionScheme::Gpt);
            assert_eq!(pt.partitions.len(), 2);
            let p = &pt.partitions[0];
            assert_eq!((p.number, p.start, p.size), (1, MIB, 8 * MIB));
            assert_eq!(p.type_id, "0fc63daf-8483-4772-8e79-3d69d8477de4");
            assert_eq!(p.name.as_deref(), Some("data"));
            assert_eq!(
                pt.partitions[1].type_id,
                "0657fd6d-a4ab-43c4-84e5-0933c84b4f4f"
            );
            if let Some(id) = blkid(dev, "PTUUID") {
                assert_eq!(id, pt.id);
            }
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn probe_random_data_and_force() {
    let Some(fx) = Fixture::new(256 * MIB) else {
        return;
    };
    let dev = &fx.dev.path;

    // Data only in a later window (an ext4 4 KiB-block backup superblock location).
    fx.write_at(128 * MIB + 100, &noise(16, 7));
    match probe(dev).unwrap() {
        Probe::UnknownData(d) => assert!(d.offset >= 128 * MIB + 100 && d.offset < 128 * MIB + 116),
        other => panic!("{other:?}"),
    }
    // And only in the last MiB.
    fx.write_at(128 * MIB, &vec![0u8; 4096]);
    fx.write_at(256 * MIB - 10, &[0xFF]);
    match probe(dev).unwrap() {
        Probe::UnknownData(d) => assert_eq!(d.offset, 256 * MIB - 10),
        other => panic!("{other:?}"),
    }
    fx.write_at(256 * MIB - 10, &[0]);
    assert_eq!(probe(dev).unwrap(), Probe::Blank);

    // A MiB of random data at the start.
    fx.write_at(0, &noise(MIB as usize, 42));
    let found = probe(dev).unwrap();
    assert!(matches!(found, Probe::UnknownData(_)), "{found:?}");
    match mkfs(dev, FsType::Btrfs, &MkfsOptions::default()) {
        Err(e @ Error::NotBlank { .. }) => {
            assert!(e.to_string().contains("unrecognised non-zero data"), "{e}")
        }
        other => panic!("mkfs over random data: {other:?}"),
    }
    let forced = mkfs(
        dev,
        FsType::Btrfs,
        &MkfsOptions {
            force: true,
            ..MkfsOptions::default()
        },
    )
    .unwrap();
    assert!(matches!(forced.previous, Probe::UnknownData(_)));
    assert_eq!(
        probe(dev).unwrap().filesystem().unwrap().uuid,
        forced.fs.uuid
    );
}
