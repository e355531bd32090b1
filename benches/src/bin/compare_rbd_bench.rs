//! rbd-core's aio against `rbd bench`, in one run, on one image of the dev cluster.
//!
//! ```sh
//! eval "$(scripts/dev-cluster.sh up)"
//! cargo run --release -p benches --bin compare_rbd_bench [-- --runs N --depth D]
//! ```
//!
//! For each workload (4M sequential write and read, 4K random write and read) it runs
//! `rbd bench --io-threads D` and our side (rbd-core aio with D requests in flight, the
//! same offsets pattern, op flags, total bytes and final flush) N times each, alternating
//! which goes first, and prints a markdown table of the medians and their ratio. The
//! image is filled once before the reads, so both sides read real data.
//!
//! Both sides run with the same librbd cache settings (`--cache`):
//!
//! * `off` (default): librbd's cache off on both sides, as `Rados::connect` sets it, and
//!   `rbd bench --rbd-cache=false`. Both then have exactly D writes in flight.
//! * `on`: the `rbd` CLI's own defaults on both sides: the write-around cache with
//!   `rbd_cache_writethrough_until_flush=false` (which the CLI sets), so writes are
//!   acknowledged before the OSD has them and far more than D are in flight.
//!
//! `--api zero-copy|copy` picks our side's calls (`Buffer` I/O through rbd-core's C++
//! shim, or librbd's copying C API). `--anchor-timeouts` gives `rbd bench` the same
//! `rados_osd_op_timeout` that rbd-core always sets (each OSD op then carries a timer
//! event, which costs small random I/O a few percent), to compare like with like.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use benches::{Api, IoType, Measurement, Pattern, Workload, median, run_ours, run_rbd_bench};
use rbd_core::rbd::{self, ImageOptions};
use rbd_core::{ConnectOptions, Image, IoCtx, OpenOptions, Rados};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
const POOL: &str = "rbd";
const IMAGE_SIZE: u64 = GIB;

const WORKLOADS: [Workload; 4] = [
    Workload {
        name: "4M seq write",
        io_type: IoType::Write,
        io_size: 4 * MIB,
        pattern: Pattern::Seq,
        total: GIB,
    },
    Workload {
        name: "4M seq read",
        io_type: IoType::Read,
        io_size: 4 * MIB,
        pattern: Pattern::Seq,
        total: 4 * GIB,
    },
    Workload {
        name: "4K rand write",
        io_type: IoType::Write,
        io_size: 4096,
        pattern: Pattern::Rand,
        total: 128 * MIB,
    },
    Workload {
        name: "4K rand read",
        io_type: IoType::Read,
        io_size: 4096,
        pattern: Pattern::Rand,
        total: 256 * MIB,
    },
];

/// Removes the benchmark image when dropped, even on error.
struct Cleanup {
    io: IoCtx,
    name: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for _ in 0..20 {
            match rbd::remove(&self.io, &self.name) {
                Err(e) if e.kind() == rbd_core::ErrorKind::Busy => {
                    std::thread::sleep(Duration::from_millis(500))
                }
                Err(e) if e.kind() != rbd_core::ErrorKind::NotFound => {
                    eprintln!("removing benchmark image {}: {e}", self.name);
                    return;
                }
                _ => return,
            }
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Cache {
    Off,
    On,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Executor {
    /// A tokio current-thread runtime (no I/O driver: nothing here needs one).
    Tokio,
    /// `futures::executor::block_on`: parks the thread with a futex.
    BlockOn,
}

struct Args {
    api: Api,
    anchor_timeouts: bool,
    cache: Cache,
    executor: Executor,
    runs: usize,
    depth: usize,
    only: Option<String>,
    options: Vec<(String, String)>,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut a = Args {
        api: Api::ZeroCopy,
        anchor_timeouts: false,
        cache: Cache::Off,
        executor: Executor::Tokio,
        runs: 3,
        depth: 16,
        only: None,
        options: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = |name: &str| -> anyhow::Result<usize> {
            let v = it.next().with_context(|| format!("{name} needs a value"))?;
            v.parse()
                .with_context(|| format!("{name}: {v:?} is not a positive number"))
        };
        match flag.as_str() {
            "--runs" => a.runs = value("--runs")?,
            "--depth" => a.depth = value("--depth")?,
            "--cache" => {
                a.cache = match it.next().as_deref() {
                    Some("off") => Cache::Off,
                    Some("on") => Cache::On,
                    other => bail!("--cache takes on or off, not {other:?}"),
                }
            }
            "--anchor-timeouts" => a.anchor_timeouts = true,
            "--api" => {
                a.api = match it.next().as_deref() {
                    Some("zero-copy") => Api::ZeroCopy,
                    Some("copy") => Api::Copy,
                    other => bail!("--api takes zero-copy or copy, not {other:?}"),
                }
            }
            "--executor" => {
                a.executor = match it.next().as_deref() {
                    Some("tokio") => Executor::Tokio,
                    Some("block-on") => Executor::BlockOn,
                    other => bail!("--executor takes tokio or block-on, not {other:?}"),
                }
            }
            "--only" => a.only = Some(it.next().context("--only needs a workload name")?),
            "--option" => {
                let kv = it.next().context("--option needs KEY=VALUE")?;
                let (k, v) = kv
                    .split_once('=')
                    .with_context(|| format!("--option {kv:?}: expected KEY=VALUE"))?;
                a.options.push((k.to_owned(), v.to_owned()));
            }
            "-h" | "--help" => {
                println!(
                    "usage: compare_rbd_bench [--runs N (3)] [--depth D (16)] [--cache off|on (off)] \
                     [--executor tokio|block-on (tokio)] [--api zero-copy|copy (zero-copy)] [--anchor-timeouts] [--only WORKLOAD] [--option KEY=VALUE]...\n\
                     WORKLOAD is a substring of a row name, e.g. \"4K rand\"; each --option \
                     is a Ceph option for our connection only"
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (try --help)"),
        }
    }
    if a.runs == 0 || a.depth == 0 {
        bail!("--runs and --depth must be at least 1");
    }
    Ok(a)
}

fn fmt_rate(w: &Workload, m: f64) -> String {
    if w.report_iops() {
        format!("{m:.0} IOPS")
    } else {
        format!("{:.0} MiB/s", m / MIB as f64)
    }
}

fn value(w: &Workload, m: &Measurement) -> f64 {
    if w.report_iops() {
        m.ops_per_sec
    } else {
        m.bytes_per_sec
    }
}

fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let conf = PathBuf::from(
        std::env::var_os("CEPH_CONF")
            .context("CEPH_CONF is not set: run `eval \"$(scripts/dev-cluster.sh up)\"` first")?,
    );
    if !conf.is_file() {
        bail!("CEPH_CONF={} does not exist", conf.display());
    }
    let mut opts = ConnectOptions::new().conf_file(&conf);
    let mut anchor_args: Vec<String> = match args.cache {
        Cache::Off => vec!["--rbd-cache=false".into()],
        Cache::On => {
            opts = opts
                .option("rbd_cache", "true")
                .option("rbd_cache_writethrough_until_flush", "false");
            vec![
                "--rbd-cache=true".into(),
                "--rbd-cache-writethrough-until-flush=false".into(),
            ]
        }
    };
    for (k, v) in &args.options {
        opts = opts.option(k, v);
    }
    let rados = Rados::connect(&opts)?;
    if args.anchor_timeouts {
        let t = rados.conf_get("rados_osd_op_timeout")?;
        anchor_args.push(format!("--rados-osd-op-timeout={t}"));
    }
    let io = rados.ioctx(POOL)?;
    let name = testkit::unique("bench-compare");
    rbd::create(&io, &name, IMAGE_SIZE, &ImageOptions::new())?;
    let _cleanup = Cleanup {
        io: rados.ioctx(POOL)?,
        name: name.clone(),
    };
    let spec = format!("{POOL}/{name}");
    let rt = tokio::runtime::Builder::new_current_thread().build()?;

    // Fill the image once so that reads on both sides read stored data.
    {
        let img = Image::open(&io, &name, &OpenOptions::new())?;
        let fill = Workload {
            name: "fill",
            io_type: IoType::Write,
            io_size: 4 * MIB,
            pattern: Pattern::Seq,
            total: IMAGE_SIZE,
        };
        let t = Instant::now();
        rt.block_on(async {
            let chunks = IMAGE_SIZE / fill.io_size;
            let data = vec![0x5a; fill.io_size as usize];
            let mut futs = Vec::new();
            for c in 0..chunks {
                futs.push(img.aio_write(c * fill.io_size, data.clone()));
                if futs.len() == args.depth {
                    for f in futs.drain(..) {
                        f.await?;
                    }
                }
            }
            for f in futs {
                f.await?;
            }
            img.aio_flush().await
        })?;
        img.close()?;
        eprintln!("filled {spec} ({IMAGE_SIZE} bytes) in {:?}", t.elapsed());
    }

    let limit = Duration::from_secs(600);
    let mut rows = Vec::new();
    for (wi, w) in WORKLOADS.iter().enumerate() {
        if args.only.as_deref().is_some_and(|o| !w.name.contains(o)) {
            continue;
        }
        let mut ours = Vec::new();
        let mut theirs = Vec::new();
        for run in 0..args.runs {
            let anchor_first = (run + wi) % 2 == 0;
            for side in 0..2 {
                let anchor = (side == 0) == anchor_first;
                if anchor {
                    let m = run_rbd_bench(&conf, &spec, w, args.depth, &anchor_args, limit)?;
                    eprintln!(
                        "{:>14} run {run}: rbd bench {}",
                        w.name,
                        fmt_rate(w, value(w, &m))
                    );
                    theirs.push(value(w, &m));
                } else {
                    // A fresh handle per run, as rbd bench opens one per invocation (and
                    // so the exclusive lock is not held across the anchor's runs).
                    let img = Image::open(&io, &name, &OpenOptions::new())?;
                    let seed = 0xB0B0 + (wi * 100 + run) as u64;
                    let fut = run_ours(&img, w, args.depth, seed, args.api);
                    let m = match args.executor {
                        Executor::Tokio => rt.block_on(fut)?,
                        Executor::BlockOn => futures::executor::block_on(fut)?,
                    };
                    img.close()?;
                    eprintln!(
                        "{:>14} run {run}: rbd-core   {}",
                        w.name,
                        fmt_rate(w, value(w, &m))
                    );
                    ours.push(value(w, &m));
                }
            }
        }
        rows.push((w, median(&ours), median(&theirs), ours, theirs));
    }

    let v = rbd_core::lib_versions();
    let ours_opts: Vec<String> = match args.cache {
        Cache::Off => vec!["rbd_cache=false".into()],
        Cache::On => vec![
            "rbd_cache=true".into(),
            "rbd_cache_writethrough_until_flush=false".into(),
        ],
    }
    .into_iter()
    .chain(args.options.iter().map(|(k, v)| format!("{k}={v}")))
    .collect();
    println!(
        "rbd-core aio ({:?} API, {} in flight, {:?} executor; {}) vs `rbd bench --io-threads {} {}`, \
         {} runs each, alternating, medians; librbd {}.{}.{}, image {spec} ({} MiB, default \
         features).\n",
        args.api,
        args.depth,
        args.executor,
        ours_opts.join(", "),
        args.depth,
        anchor_args.join(" "),
        args.runs,
        v.librbd.0,
        v.librbd.1,
        v.librbd.2,
        IMAGE_SIZE / MIB
    );
    println!("| workload | total | rbd-core | rbd bench | ratio | runs (rbd-core / rbd bench) |");
    println!("|---|---|---|---|---|---|");
    for (w, ours, theirs, all_ours, all_theirs) in &rows {
        let list = |v: &[f64]| {
            v.iter()
                .map(|x| {
                    if w.report_iops() {
                        format!("{x:.0}")
                    } else {
                        format!("{:.0}", x / MIB as f64)
                    }
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        println!(
            "| {} | {} MiB | {} | {} | {:.2}x | {} / {} |",
            w.name,
            w.total / MIB,
            fmt_rate(w, *ours),
            fmt_rate(w, *theirs),
            ours / theirs,
            list(all_ours),
            list(all_theirs)
        );
    }
    Ok(())
}
