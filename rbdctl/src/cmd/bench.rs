//! `rbdctl bench`: I/O load on an image, like `rbd bench`, with rbd-core's asynchronous
//! I/O keeping `--io-threads` requests in flight.
//!
//! Prints one line per second (ops so far, ops/s and bytes/s in that second) and a
//! summary; with `--format json`, one document with the summary and every interval.

use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use rbd_core::{Image, OpenOptions};
use serde::Serialize;

use crate::Cli;
use crate::cmd::image::parse_named_size;
use crate::error::{CliError, CliResult, WithContext};
use crate::output::{Format, emit, human_size};
use crate::spec::Spec;

/// What each request does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum IoType {
    /// Reads only.
    Read,
    /// Writes only.
    Write,
    /// Reads and writes, mixed by --rw-mix-read.
    #[value(alias = "rw")]
    Readwrite,
}

/// Where requests go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum IoPattern {
    /// One after the other, wrapping at the end of the image.
    Seq,
    /// Uniformly random offsets aligned to --io-size.
    Rand,
}

/// `rbdctl bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// [pool/[namespace/]]image (writes change its data).
    pub image: String,
    /// read, write or readwrite.
    #[arg(long)]
    pub io_type: IoType,
    /// Bytes per request.
    #[arg(long, default_value = "4K", allow_hyphen_values = true)]
    pub io_size: String,
    /// Requests kept in flight.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub io_threads: u32,
    /// Total bytes to transfer.
    #[arg(long, default_value = "1G", allow_hyphen_values = true)]
    pub io_total: String,
    /// seq or rand.
    #[arg(long, default_value = "seq")]
    pub io_pattern: IoPattern,
    /// Percentage of reads for readwrite.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u8).range(0..=100))]
    pub rw_mix_read: u8,
}

/// One second of the run.
#[derive(Debug, Serialize)]
struct Interval {
    sec: u64,
    ops: u64,
    ops_per_sec: f64,
    bytes_per_sec: f64,
}

/// The whole run.
#[derive(Debug, Serialize)]
struct Summary {
    image: String,
    io_type: IoType,
    io_pattern: IoPattern,
    io_size: u64,
    io_threads: u32,
    io_total: u64,
    ops: u64,
    read_ops: u64,
    write_ops: u64,
    elapsed_secs: f64,
    ops_per_sec: f64,
    bytes_per_sec: f64,
    intervals: Vec<Interval>,
}

/// xorshift64*: offsets and mix decisions, not cryptography.
struct Rng(u64);

impl Rng {
    fn new() -> Self {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x9e37_79b9_7f4a_7c15);
        Rng(t ^ u64::from(std::process::id()) << 32 | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

fn rate(n: f64, d: Duration) -> f64 {
    let s = d.as_secs_f64();
    if s > 0.0 { n / s } else { 0.0 }
}

/// Runs the benchmark.
pub fn bench(cli: &Cli, a: &BenchArgs) -> CliResult {
    let spec = Spec::image_only(&a.image)?;
    let io_size = parse_named_size("--io-size", &a.io_size)?;
    let io_total = parse_named_size("--io-total", &a.io_total)?;
    if io_size == 0 || io_size > 1 << 30 {
        return Err(CliError::Usage(format!(
            "--io-size {:?} must be between 1 byte and 1 GiB",
            a.io_size
        )));
    }
    if io_total < io_size {
        return Err(CliError::Usage(format!(
            "--io-total {:?} is smaller than --io-size {:?}",
            a.io_total, a.io_size
        )));
    }
    let rados = cli.connect()?;
    let io = cli.spec_ioctx(&rados, &spec)?;
    let read_only = a.io_type == IoType::Read;
    let img = Image::open(&io, &spec.image, &OpenOptions::new().read_only(read_only))?;
    let size = img.size()?;
    if io_size > size {
        return Err(CliError::Usage(format!(
            "--io-size {:?} ({io_size} bytes) is larger than image {} ({size} bytes)",
            a.io_size,
            spec.display(cli)
        )));
    }
    let slots = size / io_size;
    let total_ops = io_total / io_size;
    let mut rng = Rng::new();
    let mut pattern = vec![0u8; io_size as usize];
    for c in pattern.chunks_mut(8) {
        let v = rng.next().to_le_bytes();
        c.copy_from_slice(&v[..c.len()]);
    }
    let json = cli.format == Format::Json;
    if !json {
        println!(
            "bench  type {} io_size {io_size} io_threads {} bytes {io_total} pattern {}",
            match a.io_type {
                IoType::Read => "read",
                IoType::Write => "write",
                IoType::Readwrite => "readwrite",
            },
            a.io_threads,
            match a.io_pattern {
                IoPattern::Seq => "sequential",
                IoPattern::Rand => "random",
            }
        );
        println!("  SEC       OPS   OPS/SEC   BYTES/SEC");
    }

    type OpFuture = std::pin::Pin<
        Box<dyn std::future::Future<Output = (bool, rbd_core::Result<Vec<u8>>)> + Send>,
    >;
    // Buffers come back from completed requests and are reused: read buffers as they are,
    // write buffers still holding the pattern (librbd does not change them).
    let mut read_bufs: Vec<Vec<u8>> = Vec::new();
    let mut write_bufs: Vec<Vec<u8>> = Vec::new();
    let issue = |i: u64,
                 rng: &mut Rng,
                 read_bufs: &mut Vec<Vec<u8>>,
                 write_bufs: &mut Vec<Vec<u8>>|
     -> OpFuture {
        let slot = match a.io_pattern {
            IoPattern::Seq => i % slots,
            IoPattern::Rand => rng.next() % slots,
        };
        let off = slot * io_size;
        let read = match a.io_type {
            IoType::Read => true,
            IoType::Write => false,
            IoType::Readwrite => rng.next() % 100 < u64::from(a.rw_mix_read),
        };
        if read {
            let buf = read_bufs
                .pop()
                .unwrap_or_else(|| vec![0u8; io_size as usize]);
            let f = img.aio_read(off, buf);
            Box::pin(async move { (true, f.await) })
        } else {
            let buf = write_bufs.pop().unwrap_or_else(|| pattern.clone());
            let f = img.aio_write_buf(off, buf);
            Box::pin(async move { (false, f.await) })
        }
    };

    let start = Instant::now();
    let mut intervals = Vec::new();
    let (mut done_ops, mut read_ops, mut write_ops) = (0u64, 0u64, 0u64);
    let mut last = (start, 0u64);
    let outcome: CliResult = futures::executor::block_on(async {
        let mut pending = FuturesUnordered::new();
        let mut issued = 0u64;
        while issued < total_ops && pending.len() < a.io_threads as usize {
            pending.push(issue(issued, &mut rng, &mut read_bufs, &mut write_bufs));
            issued += 1;
        }
        while let Some((read, r)) = pending.next().await {
            let buf = r.context(|| format!("bench I/O on {}", spec.display(cli)))?;
            done_ops += 1;
            if read {
                read_ops += 1;
                // A short read (image shrank under us) is not reused at the wrong size.
                if buf.len() as u64 == io_size {
                    read_bufs.push(buf);
                }
            } else {
                write_ops += 1;
                write_bufs.push(buf);
            }
            if issued < total_ops {
                pending.push(issue(issued, &mut rng, &mut read_bufs, &mut write_bufs));
                issued += 1;
            }
            let now = Instant::now();
            if now.duration_since(last.0) >= Duration::from_secs(1) {
                let d = now.duration_since(last.0);
                let n = (done_ops - last.1) as f64;
                let iv = Interval {
                    sec: now.duration_since(start).as_secs(),
                    ops: done_ops,
                    ops_per_sec: rate(n, d),
                    bytes_per_sec: rate(n * io_size as f64, d),
                };
                if !json {
                    println!(
                        "{:>5} {:>9} {:>9.2} {:>9}/s",
                        iv.sec,
                        iv.ops,
                        iv.ops_per_sec,
                        human_size(iv.bytes_per_sec as u64)
                    );
                }
                intervals.push(iv);
                last = (now, done_ops);
            }
        }
        Ok(())
    });
    outcome?;
    if !read_only {
        img.flush()?;
    }
    let elapsed = start.elapsed();
    let s = Summary {
        image: spec.display(cli),
        io_type: a.io_type,
        io_pattern: a.io_pattern,
        io_size,
        io_threads: a.io_threads,
        io_total: total_ops * io_size,
        ops: done_ops,
        read_ops,
        write_ops,
        elapsed_secs: elapsed.as_secs_f64(),
        ops_per_sec: rate(done_ops as f64, elapsed),
        bytes_per_sec: rate((done_ops * io_size) as f64, elapsed),
        intervals,
    };
    emit(cli.format, &s, || {
        format!(
            "elapsed: {:.2}   ops: {}   ops/sec: {:.2}   bytes/sec: {}/s\n",
            s.elapsed_secs,
            s.ops,
            s.ops_per_sec,
            human_size(s.bytes_per_sec as u64)
        )
    });
    Ok(())
}
