//! Changed-extent iteration against the real dev cluster, cross-checked with `rbd diff`.

mod common;
mod mgmt;

use std::ops::ControlFlow;
use std::path::PathBuf;

use mgmt::{TestImage, bench_write};
use rbd_core::ErrorKind;
use rbd_core::rbd::{self, CloneFormat, DiffExtent, DiffOptions, ImageOptions, Shrink};

const MIB: u64 = 1 << 20;

/// Imports a 16 MiB image (1 MiB objects) holding data only in `[0, 1M)` and
/// `[8M, 8M + 512K)`; `rbd import` skips the zeros, so the rest is unallocated.
fn import_sparse(rados: &rbd_core::Rados, conf: &PathBuf) -> TestImage {
    let name = testkit::unique("mgmt-diff");
    let path = std::env::temp_dir().join(format!("{name}.img"));
    let mut data = vec![0u8; 16 * MIB as usize];
    data[..MIB as usize].fill(0xab);
    data[8 * MIB as usize..(8 * MIB + 512 * 1024) as usize].fill(0xcd);
    std::fs::write(&path, &data).unwrap();
    let guard = TestImage::adopt(rados, &name);
    let spec = guard.spec();
    common::cli(
        conf,
        "rbd",
        &[
            "import",
            "--no-progress",
            "--image-feature",
            "layering",
            "--object-size",
            "1M",
            path.to_str().unwrap(),
            &spec,
        ],
    );
    let _ = std::fs::remove_file(&path);
    guard
}

/// `rbd diff` as extents.
fn cli_diff(conf: &PathBuf, spec: &str, extra: &[&str]) -> Vec<DiffExtent> {
    let mut args = vec!["diff", spec];
    args.extend_from_slice(extra);
    common::cli_json(conf, "rbd", &args)
        .as_array()
        .unwrap()
        .iter()
        .map(|e| DiffExtent {
            offset: e["offset"].as_u64().unwrap(),
            length: e["length"].as_u64().unwrap(),
            exists: e["exists"] == "true",
        })
        .collect()
}

/// Merges adjacent extents with the same `exists`, so chunking does not matter.
fn merged(v: &[DiffExtent]) -> Vec<DiffExtent> {
    let mut out: Vec<DiffExtent> = Vec::new();
    for e in v {
        match out.last_mut() {
            Some(l) if l.offset + l.length == e.offset && l.exists == e.exists => {
                l.length += e.length;
            }
            _ => out.push(*e),
        }
    }
    out
}

#[test]
fn diff_against_nothing_and_a_snapshot() {
    let Some((rados, conf)) = common::connect() else {
        return;
    };
    let t = import_sparse(&rados, &conf);
    let img = t.open();

    let all = img.diff(&DiffOptions::new()).unwrap();
    assert_eq!(
        merged(&all),
        vec![
            DiffExtent {
                offset: 0,
                length: MIB,
                exists: true
            },
            DiffExtent {
                offset: 8 * MIB,
                length: 512 * 1024,
                exists: true
            },
        ]
    );
    assert_eq!(merged(&all), merged(&cli_diff(&conf, &t.spec(), &[])));

    // A byte range.
    let part = img
        .diff(&DiffOptions::new().range(8 * MIB + 256 * 1024, 8 * MIB))
        .unwrap();
    assert_eq!(
        merged(&part),
        vec![DiffExtent {
            offset: 8 * MIB + 256 * 1024,
            length: 256 * 1024,
            exists: true
        }]
    );

    // Changes since a snapshot: a 4 KiB write at 0, then a shrink and regrow that
    // discards the second data region.
    img.snap_create("s1").unwrap();
    assert!(
        img.diff(&DiffOptions::new().from_snapshot("s1"))
            .unwrap()
            .is_empty()
    );
    bench_write(&conf, &t.spec(), "4K", "4K");
    let since = img.diff(&DiffOptions::new().from_snapshot("s1")).unwrap();
    assert_eq!(
        merged(&since),
        vec![DiffExtent {
            offset: 0,
            length: 4096,
            exists: true
        }]
    );
    let whole = img
        .diff(&DiffOptions::new().from_snapshot("s1").whole_object(true))
        .unwrap();
    assert_eq!(
        merged(&whole),
        vec![DiffExtent {
            offset: 0,
            length: MIB,
            exists: true
        }]
    );
    assert_eq!(
        merged(&whole),
        merged(&cli_diff(
            &conf,
            &t.spec(),
            &["--from-snap", "s1", "--whole-object"]
        ))
    );

    img.resize(4 * MIB, Shrink::Allow).unwrap();
    img.resize(16 * MIB, Shrink::Forbid).unwrap();
    let since = img.diff(&DiffOptions::new().from_snapshot("s1")).unwrap();
    assert!(
        since
            .iter()
            .any(|e| !e.exists && e.offset <= 8 * MIB && e.offset + e.length > 8 * MIB),
        "the discarded region shows as not existing: {since:?}"
    );
    assert_eq!(
        merged(&since),
        merged(&cli_diff(&conf, &t.spec(), &["--from-snap", "s1"]))
    );

    let e = img
        .diff(&DiffOptions::new().from_snapshot("missing"))
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
}

#[test]
fn stopping_early_and_panics() {
    let Some((rados, conf)) = common::connect() else {
        return;
    };
    let t = import_sparse(&rados, &conf);
    let img = t.open();
    let total = img.diff(&DiffOptions::new()).unwrap().len();
    assert!(total >= 2);

    let mut seen = Vec::new();
    img.diff_iterate(&DiffOptions::new(), |o, _, _| {
        seen.push(o);
        ControlFlow::Break(())
    })
    .unwrap();
    assert_eq!(seen, vec![0]);

    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        img.diff_iterate(&DiffOptions::new(), |_, _, _| panic!("diff boom"))
    }));
    let p = r.expect_err("panic resumed");
    assert_eq!(p.downcast_ref::<&str>(), Some(&"diff boom"));
    // The handle still works afterwards.
    assert_eq!(img.diff(&DiffOptions::new()).unwrap().len(), total);
}

#[test]
fn clones_include_parent_extents_on_request() {
    let Some((rados, conf)) = common::connect() else {
        return;
    };
    let parent = import_sparse(&rados, &conf);
    let p = parent.open();
    p.snap_create("base").unwrap();
    let child = TestImage::adopt(&rados, &testkit::unique("mgmt-diffchild"));
    rbd::clone_image(
        &parent.io,
        &parent.name,
        "base",
        &child.io,
        &child.name,
        &ImageOptions::new().clone_format(CloneFormat::V2),
    )
    .unwrap();
    let c = child.open();
    let with = c.diff(&DiffOptions::new()).unwrap();
    assert_eq!(merged(&with), merged(&p.diff(&DiffOptions::new()).unwrap()));
    let without = c.diff(&DiffOptions::new().include_parent(false)).unwrap();
    assert!(without.is_empty(), "{without:?}");
}
