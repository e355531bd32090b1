//! One run of [`benches::run_ours`] on an existing image, and nothing else: the process
//! to put under `perf stat` / valgrind when counting what rbd-core costs per request
//! (instructions, context switches, mallocs), against `rbd bench` doing the same requests.
//!
//! ```sh
//! eval "$(scripts/dev-cluster.sh up)"
//! cargo build --release -p benches --bin aio_op_cost
//! target/release/aio_op_cost --image rbd/cost --ops 200000 [--api zero-copy|copy]
//! ```
//!
//! `benches/aio-op-cost.sh` runs it and `rbd bench` at two request counts and divides the
//! difference by the difference in requests, so that connecting, opening the image and
//! exiting cancel out. Throughput printed here is only a sanity check: the machine is
//! shared, so compare counts, not rates.

use std::path::PathBuf;

use anyhow::{Context as _, bail};
use benches::{Api, IoType, Pattern, Workload, run_ours};
use rbd_core::{ConnectOptions, Image, OpenOptions, Rados};

struct Args {
    image: String,
    ops: u64,
    depth: usize,
    io_size: u64,
    write: bool,
    api: Api,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut a = Args {
        image: String::new(),
        ops: 200_000,
        depth: 16,
        io_size: 4096,
        write: false,
        api: Api::ZeroCopy,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = |name: &str| -> anyhow::Result<String> {
            it.next().with_context(|| format!("{name} needs a value"))
        };
        match flag.as_str() {
            "--image" => a.image = value("--image")?,
            "--ops" => a.ops = value("--ops")?.parse().context("--ops")?,
            "--depth" => a.depth = value("--depth")?.parse().context("--depth")?,
            "--io-size" => a.io_size = value("--io-size")?.parse().context("--io-size")?,
            "--write" => a.write = true,
            "--api" => {
                a.api = match value("--api")?.as_str() {
                    "zero-copy" => Api::ZeroCopy,
                    "copy" => Api::Copy,
                    other => bail!("--api takes zero-copy or copy, not {other:?}"),
                }
            }
            "-h" | "--help" => {
                println!(
                    "usage: aio_op_cost --image POOL/NAME [--ops N (200000)] [--depth D (16)] \
                     [--io-size BYTES (4096)] [--write] [--api zero-copy|copy (zero-copy)]\n\
                     Random requests of --io-size on an existing image, as rbd bench --io-pattern rand."
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (try --help)"),
        }
    }
    if a.image.is_empty() || a.ops == 0 || a.depth == 0 || a.io_size == 0 {
        bail!("--image is required; --ops, --depth and --io-size must be at least 1");
    }
    Ok(a)
}

fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let (pool, name) = args
        .image
        .split_once('/')
        .with_context(|| format!("--image {:?}: expected POOL/NAME", args.image))?;
    let conf = PathBuf::from(
        std::env::var_os("CEPH_CONF")
            .context("CEPH_CONF is not set: run `eval \"$(scripts/dev-cluster.sh up)\"` first")?,
    );
    let rados = Rados::connect(&ConnectOptions::new().conf_file(&conf))?;
    let io = rados.ioctx(pool)?;
    let img = Image::open(&io, name, &OpenOptions::new())?;
    let w = Workload {
        name: "cost",
        io_type: if args.write {
            IoType::Write
        } else {
            IoType::Read
        },
        io_size: args.io_size,
        pattern: Pattern::Rand,
        total: args.ops * args.io_size,
    };
    let rt = tokio::runtime::Builder::new_current_thread().build()?;
    let m = rt.block_on(run_ours(&img, &w, args.depth, 0xC057, args.api))?;
    img.close()?;
    eprintln!(
        "{} ops of {} bytes, {:.0} ops/s (sanity check only)",
        args.ops, args.io_size, m.ops_per_sec
    );
    Ok(())
}
