//! `rbdctl bench` against the dev cluster: it does the I/O it reports (checked with
//! `rbd du` and `rbd export`), in both output formats, and rejects bad parameters.
//! Rates are printed, never asserted.

mod common;

use common::Cleanup;

const MIB: u64 = 1 << 20;

#[test]
fn write_then_read_bench() {
    let Some(e) = common::env() else { return };
    let c = Cleanup::new(&e);
    let img = c.image("bench");
    e.rbd(&["create", "--size", "32M", &img]);

    let r = e
        .rbdctl(&[
            "bench",
            "--io-type",
            "write",
            "--io-size",
            "64K",
            "--io-total",
            "16M",
            "--io-threads",
            "8",
            "--format",
            "json",
            &img,
        ])
        .ok();
    assert!(r.err.is_empty(), "{}", r.err);
    let j = r.json();
    assert_eq!(j["ops"], 256);
    assert_eq!(j["write_ops"], 256);
    assert_eq!(j["io_total"], 16 * MIB);
    assert!(j["elapsed_secs"].as_f64().unwrap() > 0.0);
    eprintln!(
        "rbdctl bench write 64K x8: {:.0} ops/s",
        j["ops_per_sec"].as_f64().unwrap()
    );
    // Sequential writes covered the first 16 MiB with data; the rest is untouched.
    let data = e.rbd_export(&img);
    let first = &data[..16 * MIB as usize];
    assert!(
        first.chunks(64 << 10).all(|c| c.iter().any(|&b| b != 0)),
        "every written block holds data"
    );
    assert!(data[16 * MIB as usize..].iter().all(|&b| b == 0));
    let du = e.rbd_json(&["du", &img]);
    let used = du["images"][0]["used_size"].as_u64().unwrap();
    assert!(used >= 16 * MIB, "{du}");

    // Random reads, table output: header, summary, nothing on stderr.
    let r = e
        .rbdctl(&[
            "bench",
            "--io-type",
            "read",
            "--io-size",
            "4K",
            "--io-total",
            "4M",
            "--io-pattern",
            "rand",
            &img,
        ])
        .ok();
    assert!(r.err.is_empty(), "{}", r.err);
    let out = r.stdout();
    let mut lines = out.lines();
    assert_eq!(
        lines.next(),
        Some("bench  type read io_size 4096 io_threads 16 bytes 4194304 pattern random")
    );
    assert_eq!(lines.next(), Some("  SEC       OPS   OPS/SEC   BYTES/SEC"));
    let last = out.lines().last().unwrap();
    assert!(
        last.starts_with("elapsed: ") && last.contains("ops: 1024 "),
        "{out}"
    );

    let j = e
        .rbdctl(&[
            "bench",
            "--io-type",
            "readwrite",
            "--rw-mix-read",
            "70",
            "--io-size",
            "4K",
            "--io-total",
            "2M",
            "--format",
            "json",
            &img,
        ])
        .ok()
        .json();
    assert_eq!(j["ops"], 512);
    assert_eq!(
        j["read_ops"].as_u64().unwrap() + j["write_ops"].as_u64().unwrap(),
        512
    );
}

#[test]
fn bench_rejects_bad_parameters() {
    let Some(e) = common::env() else { return };
    let c = Cleanup::new(&e);
    let img = c.image("bench-bad");
    e.rbd(&["create", "--size", "1M", &img]);
    for (args, named) in [
        (vec!["--io-size", "2Q"], "2Q"),
        (vec!["--io-size", "0"], "\"0\""),
        (vec!["--io-size", "4M"], "4M"),
        (vec!["--io-total", "1K", "--io-size", "4K"], "1K"),
    ] {
        let mut a = vec!["bench", "--io-type", "write"];
        a.extend(&args);
        a.push(&img);
        let r = e.rbdctl(&a).code(2);
        assert!(r.err.contains(named), "{args:?}: {}", r.err);
    }
    e.rbdctl(&["bench", "--io-type", "sideways", &img]).code(2);
    e.rbdctl(&["bench", "--io-type", "write", "--io-threads", "0", &img])
        .code(2);
    e.rbdctl(&["bench", "--io-type", "read", &c.image("bench-missing")])
        .code(3);
    // Nothing was written by the refused runs.
    assert!(e.rbd_export(&img).iter().all(|&b| b == 0));
}
