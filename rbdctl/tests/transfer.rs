//! `rbdctl export` / `rbdctl import` against the dev cluster, byte for byte against
//! `rbd import` / `rbd export`, through files and pipes; sparseness; nothing left behind on
//! failure.

mod common;

use std::os::unix::fs::MetadataExt;

use common::{Cleanup, Env};

const MIB: usize = 1 << 20;

#[test]
fn export_matches_rbd_import_byte_for_byte() {
    let Some(e) = common::env() else { return };
    let c = Cleanup::new(&e);
    let img = c.image("exp");
    let src = c.file("exp-src");
    let dst = c.file("exp-dst");
    // Not a multiple of the object size, to cover the tail.
    let data = Env::random(9 * MIB + 12345);
    common::write_file(&src, &data);
    e.rbd(&["import", "--no-progress", src.to_str().unwrap(), &img]);

    let r = e.rbdctl(&["export", &img, dst.to_str().unwrap()]).ok();
    assert!(r.err.is_empty(), "no progress off a terminal: {}", r.err);
    assert!(
        r.stdout()
            .starts_with(&format!("exported rbd/{img} to {}", dst.display())),
        "{}",
        r.stdout()
    );
    assert_eq!(std::fs::read(&dst).unwrap(), data);

    // To stdout: exactly the image's bytes and nothing else.
    let r = e.rbdctl(&["export", &img, "-"]).ok();
    assert!(r.err.is_empty(), "{}", r.err);
    assert_eq!(r.out.len(), data.len());
    assert!(r.out == data, "stdout export differs");

    // An existing file is not overwritten without --force (4), and is left as it was.
    common::write_file(&dst, b"keep me");
    let r = e.rbdctl(&["export", &img, dst.to_str().unwrap()]).code(4);
    assert!(r.err.contains("--force"), "{}", r.err);
    assert_eq!(std::fs::read(&dst).unwrap(), b"keep me");
    e.rbdctl(&["export", "--force", &img, dst.to_str().unwrap()])
        .ok();
    assert_eq!(std::fs::read(&dst).unwrap(), data);
}

#[test]
fn import_matches_rbd_export_byte_for_byte() {
    let Some(e) = common::env() else { return };
    let c = Cleanup::new(&e);
    let from_file = c.image("imp-file");
    let from_stdin = c.image("imp-stdin");
    let src = c.file("imp-src");
    let data = Env::random(7 * MIB + 999);
    common::write_file(&src, &data);

    let r = e
        .rbdctl(&[
            "import",
            src.to_str().unwrap(),
            &from_file,
            "--object-size",
            "1M",
        ])
        .ok();
    assert!(r.err.is_empty(), "{}", r.err);
    assert!(
        r.stdout()
            .starts_with(&format!("imported {} into rbd/{from_file}", src.display())),
        "{}",
        r.stdout()
    );
    let info = e.rbd_json(&["info", &from_file]);
    assert_eq!(info["size"], data.len(), "size from the file");
    assert_eq!(info["order"], 20);
    assert_eq!(e.rbd_export(&from_file), data);

    // From stdin, the size is what was read.
    let r = e
        .rbdctl_stdin(&["import", "-", &from_stdin, "--format", "json"], &data)
        .ok();
    let j = r.json();
    assert_eq!(j["size"], data.len());
    assert_eq!(e.rbd_json(&["info", &from_stdin])["size"], data.len());
    assert_eq!(e.rbd_export(&from_stdin), data);

    // Round trip through both tools: rbdctl export of an rbdctl import.
    let r = e.rbdctl(&["export", &from_stdin, "-"]).ok();
    assert!(r.out == data);
}

#[test]
fn import_sizes_and_failures_leave_nothing_behind() {
    let Some(e) = common::env() else { return };
    let c = Cleanup::new(&e);
    let img = c.image("imp-size");
    let small = c.image("imp-small");
    let existing = c.image("imp-exists");
    let src = c.file("imp-size");
    let data = Env::random(3 * MIB);
    common::write_file(&src, &data);

    // --size larger than the input: the rest reads as zeros.
    e.rbdctl(&["import", "--size", "8M", src.to_str().unwrap(), &img])
        .ok();
    assert_eq!(e.rbd_json(&["info", &img])["size"], 8 * MIB);
    let back = e.rbd_export(&img);
    assert_eq!(&back[..data.len()], &data[..]);
    assert!(back[data.len()..].iter().all(|&b| b == 0));

    // --size smaller than a file: 2 before anything is created.
    let r = e
        .rbdctl(&["import", "--size", "1M", src.to_str().unwrap(), &small])
        .code(2);
    assert!(r.err.contains("1M"), "{}", r.err);
    assert!(!e.rbd_ls().contains(&small));
    // ... and from stdin, found out while reading: the partial image is removed.
    let r = e
        .rbdctl_stdin(&["import", "--size", "1M", "-", &small], &data)
        .code(2);
    assert!(r.err.contains("more than"), "{}", r.err);
    assert!(!e.rbd_ls().contains(&small));
    // Bad size values: 2, named.
    let r = e
        .rbdctl(&["import", "--size", "2Q", src.to_str().unwrap(), &small])
        .code(2);
    assert!(r.err.contains("\"2Q\""), "{}", r.err);
    assert!(!e.rbd_ls().contains(&small));

    // An existing image: 4, and its data untouched.
    e.rbd(&["create", "--size", "1M", &existing]);
    e.rbdctl(&["import", src.to_str().unwrap(), &existing])
        .code(4);
    assert_eq!(e.rbd_json(&["info", &existing])["size"], MIB);
    // A missing input file: 3, nothing created.
    let missing = c.file("imp-missing");
    e.rbdctl(&["import", missing.to_str().unwrap(), &small])
        .code(3);
    assert!(!e.rbd_ls().contains(&small));
}

#[test]
fn sparse_both_ways() {
    let Some(e) = common::env() else { return };
    let c = Cleanup::new(&e);
    let img = c.image("sparse");
    let back = c.image("sparse-back");
    let src = c.file("sparse-src");
    let out = c.file("sparse-out");
    // 64 MiB with data in three places only.
    let size = 64 * MIB;
    let mut data = vec![0u8; size];
    for (off, len) in [(0, 4096), (20 * MIB + 8192, 100_000), (size - 5000, 5000)] {
        data[off..off + len].copy_from_slice(&Env::random(len));
    }
    common::write_file(&src, &data);
    e.rbd(&["import", "--no-progress", src.to_str().unwrap(), &img]);

    e.rbdctl(&["export", &img, out.to_str().unwrap()]).ok();
    let m = std::fs::metadata(&out).unwrap();
    assert_eq!(m.len(), size as u64);
    assert_eq!(std::fs::read(&out).unwrap(), data);
    // Holes stay holes: far less than the 64 MiB is allocated.
    assert!(
        m.blocks() * 512 < 4 * MIB as u64,
        "{} bytes allocated",
        m.blocks() * 512
    );

    // Import skips the zeros: rbd du reports only a few objects in use.
    e.rbdctl(&["import", out.to_str().unwrap(), &back]).ok();
    assert_eq!(e.rbd_export(&back), data);
    let du = e.rbd_json(&["du", &back]);
    let used = du["images"][0]["used_size"].as_u64().unwrap();
    assert!(used <= 3 * 4 * MIB as u64, "used {used} of {size}: {du}");
}

#[test]
fn export_of_a_snapshot_and_of_a_clone() {
    let Some(e) = common::env() else { return };
    let c = Cleanup::new(&e);
    let img = c.image("exps");
    let child = c.image("exps-child");
    let src = c.file("exps");
    let data = Env::random(5 * MIB + 3);
    common::write_file(&src, &data);
    e.rbd(&["import", "--no-progress", src.to_str().unwrap(), &img]);
    e.rbd(&["snap", "create", "--no-progress", &format!("{img}@s")]);
    e.rbd(&[
        "bench",
        "--io-type",
        "write",
        "--io-size",
        "4K",
        "--io-total",
        "256K",
        "--io-pattern",
        "rand",
        &img,
    ]);
    // The snapshot still has the original bytes, the head has rbd's.
    let r = e.rbdctl(&["export", &format!("{img}@s"), "-"]).ok();
    assert!(r.out == data, "snapshot export differs");
    let r = e.rbdctl(&["export", &img, "-"]).ok();
    assert!(
        r.out == e.rbd_export(&img),
        "head export differs from rbd's"
    );

    // A clone's export includes what it inherits from its parent.
    e.rbd(&["snap", "protect", &format!("{img}@s")]);
    e.rbd(&["clone", &format!("{img}@s"), &child]);
    let r = e.rbdctl(&["export", &child, "-"]).ok();
    assert!(r.out == data, "clone export lacks parent data");
}
