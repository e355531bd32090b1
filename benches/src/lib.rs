//! Benchmarks for the workspace: criterion benches of the hot paths (`benches/`) and
//! comparison runners (`src/bin/`) that measure our code against Ceph's own tools in one run
//! on the same cluster, and print ratios for `BENCHMARKS.md`.
//!
//! This library holds what the runners share: the `rbd bench`-style workloads
//! ([`Workload`]), our side of them over rbd-core's aio ([`run_ours`]), the anchor's side
//! ([`run_rbd_bench`]), and small statistics helpers.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Poll, Wake, Waker};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures::task::AtomicWaker;
use rbd_core::{Image, IoFlags};

/// Read or write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoType {
    /// `--io-type read`.
    Read,
    /// `--io-type write`.
    Write,
}

/// Where each request goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pattern {
    /// `--io-pattern seq`: one cursor from a random aligned start, wrapping at the end.
    Seq,
    /// `--io-pattern rand`: uniformly random aligned offsets.
    Rand,
}

/// One `rbd bench` workload.
#[derive(Debug, Clone, Copy)]
pub struct Workload {
    /// Row label, e.g. `4M seq write`.
    pub name: &'static str,
    /// Read or write.
    pub io_type: IoType,
    /// Bytes per request (`--io-size`).
    pub io_size: u64,
    /// Offsets (`--io-pattern`).
    pub pattern: Pattern,
    /// Bytes in all (`--io-total`).
    pub total: u64,
}

impl Workload {
    /// Requests in the workload.
    pub fn ops(&self) -> u64 {
        self.total / self.io_size
    }

    /// Whether the natural unit is IOPS (small requests) rather than MiB/s.
    pub fn report_iops(&self) -> bool {
        self.io_size < (1 << 20)
    }

    /// The hint `rbd bench` passes with every request, which we pass too.
    pub fn flags(&self) -> IoFlags {
        match self.pattern {
            Pattern::Seq => IoFlags::FADVISE_SEQUENTIAL,
            Pattern::Rand => IoFlags::FADVISE_RANDOM,
        }
    }

    /// The `rbd bench` arguments for this workload with `threads` ops in flight.
    pub fn rbd_bench_args(&self, threads: usize) -> Vec<String> {
        vec![
            "bench".into(),
            "--io-type".into(),
            match self.io_type {
                IoType::Read => "read",
                IoType::Write => "write",
            }
            .into(),
            "--io-size".into(),
            self.io_size.to_string(),
            "--io-pattern".into(),
            match self.pattern {
                Pattern::Seq => "seq",
                Pattern::Rand => "rand",
            }
            .into(),
            "--io-threads".into(),
            threads.to_string(),
            "--io-total".into(),
            self.total.to_string(),
        ]
    }
}

/// One measured run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Measurement {
    /// Requests per second.
    pub ops_per_sec: f64,
    /// Bytes per second.
    pub bytes_per_sec: f64,
}

impl Measurement {
    /// From a request count, a request size and the time they took.
    pub fn from_ops(ops: u64, io_size: u64, elapsed: Duration) -> Self {
        let s = elapsed.as_secs_f64().max(1e-9);
        Self {
            ops_per_sec: ops as f64 / s,
            bytes_per_sec: (ops * io_size) as f64 / s,
        }
    }
}

/// A small, fast, deterministic PRNG (xorshift64*), for offsets and data patterns.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// Seeded; a zero seed is replaced by a fixed non-zero one.
    pub fn new(seed: u64) -> Self {
        Self(if seed == 0 {
            0x9E37_79B9_7F4A_7C15
        } else {
            seed
        })
    }

    /// The next value.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (`n > 0`), by rejection so it has no modulo bias.
    pub fn below(&mut self, n: u64) -> u64 {
        let zone = u64::MAX - (u64::MAX % n);
        loop {
            let v = self.next_u64();
            if v < zone {
                return v % n;
            }
        }
    }
}

/// Request offsets as `rbd bench` issues them: for `Seq`, one cursor from a random
/// aligned start, advancing by `io_size` and wrapping to 0 when the next request would
/// not fit; for `Rand`, uniform aligned offsets.
#[derive(Debug, Clone)]
pub struct Offsets {
    pattern: Pattern,
    io_size: u64,
    slots: u64,
    next: u64,
    rng: Rng,
}

impl Offsets {
    /// Offsets for `w` on an image of `image_size` bytes (at least one request long).
    pub fn new(w: &Workload, image_size: u64, seed: u64) -> Self {
        let slots = (image_size / w.io_size).max(1);
        let mut rng = Rng::new(seed);
        let next = rng.below(slots) * w.io_size;
        Self {
            pattern: w.pattern,
            io_size: w.io_size,
            slots,
            next,
            rng,
        }
    }
}

impl Iterator for Offsets {
    type Item = u64;

    fn next(&mut self) -> Option<u64> {
        Some(match self.pattern {
            Pattern::Rand => self.rng.below(self.slots) * self.io_size,
            Pattern::Seq => {
                let off = self.next;
                let n = off + self.io_size;
                self.next = if n + self.io_size > self.slots * self.io_size {
                    0
                } else {
                    n
                };
                off
            }
        })
    }
}

/// Which rbd-core aio calls [`run_ours`] uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Api {
    /// [`Image::aio_write_buffer`] from one shared [`rbd_core::Buffer`] and
    /// [`Image::aio_read_buffer`] (librbd's C++ bufferlist API, no copy of the data; what
    /// `rbd bench` itself does).
    ZeroCopy,
    /// [`Image::aio_write_buf_with`] / [`Image::aio_read_with`] with one reused `Vec` per
    /// request in flight (librbd's C API, which copies every byte once).
    Copy,
}

/// Runs workload `w` on `img` through rbd-core's aio with `depth` requests in flight, as
/// `rbd bench` does (same offsets, same op flags, one flush at the end, timed from the
/// first request to the end of that flush), with the calls `api` names. Write data is
/// made once: one shared buffer for [`Api::ZeroCopy`] (as `rbd bench` writes one
/// bufferlist), one reused buffer per request in flight for [`Api::Copy`].
pub async fn run_ours(
    img: &Image,
    w: &Workload,
    depth: usize,
    seed: u64,
    api: Api,
) -> anyhow::Result<Measurement> {
    let size = img.size()?;
    if w.io_size > size {
        bail!(
            "io size {} is larger than the image ({size} bytes)",
            w.io_size
        );
    }
    let mut offsets = Offsets::new(w, size, seed);
    let mut rng = Rng::new(seed ^ 0x5555);
    let fill = (rng.next_u64() & 0xff) as u8;
    let io_size = w.io_size as usize;
    let shared = match api {
        Api::ZeroCopy => Some(rbd_core::Buffer::from_slice(&vec![fill; io_size])?),
        Api::Copy => None,
    };
    let mut pool: Vec<Vec<u8>> = match api {
        Api::ZeroCopy => Vec::new(),
        Api::Copy => (0..depth).map(|_| vec![fill; io_size]).collect(),
    };
    let flags = w.flags();
    let total_ops = w.ops();
    let mut submitted = 0u64;
    let mut completed = 0u64;
    let mut slots = InFlight::new(depth);
    let start = Instant::now();
    futures::future::poll_fn(|cx| {
        let r = slots.poll_ready(cx, |slot, scx| {
            loop {
                let fut = match slot {
                    Some(f) => f,
                    None if submitted == total_ops => return Ok(()),
                    None => {
                        let off = offsets.next().unwrap_or(0);
                        submitted += 1;
                        slot.insert(match (api, w.io_type, &shared) {
                            (Api::ZeroCopy, IoType::Read, _) => {
                                Request::Buffer(img.aio_read_buffer_with(off, io_size, flags))
                            }
                            (Api::ZeroCopy, IoType::Write, Some(data)) => {
                                Request::Len(img.aio_write_buffer_with(off, data, flags))
                            }
                            (_, io_type, _) => {
                                let buf = pool.pop().expect("one buffer per request in flight");
                                Request::Vec(match io_type {
                                    IoType::Read => img.aio_read_with(off, buf, flags),
                                    IoType::Write => img.aio_write_buf_with(off, buf, flags),
                                })
                            }
                        })
                    }
                };
                let Poll::Ready(r) = Pin::new(fut).poll(scx) else {
                    return Ok(());
                };
                *slot = None;
                let (n, buf) = r.context("benchmark request failed")?;
                if n != io_size {
                    bail!("short request: {n} of {io_size} bytes");
                }
                pool.extend(buf);
                completed += 1;
            }
        });
        match r {
            Err(e) => Poll::Ready(Err(e)),
            Ok(()) if completed == total_ops => Poll::Ready(Ok(())),
            Ok(()) => Poll::Pending,
        }
    })
    .await?;
    img.aio_flush().await?;
    Ok(Measurement::from_ops(total_ops, w.io_size, start.elapsed()))
}

/// One request of [`run_ours`] in flight: resolves to the bytes moved and, for the copying
/// API, the buffer to reuse.
enum Request {
    Vec(rbd_core::AioFuture<Vec<u8>>),
    Len(rbd_core::AioFuture<usize>),
    Buffer(rbd_core::AioFuture<rbd_core::Buffer>),
}

impl Future for Request {
    type Output = rbd_core::Result<(usize, Option<Vec<u8>>)>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        // Every variant is Unpin (AioFuture is).
        match self.get_mut() {
            Request::Vec(f) => std::pin::Pin::new(f)
                .poll(cx)
                .map(|r| r.map(|v| (v.len(), Some(v)))),
            Request::Len(f) => std::pin::Pin::new(f).poll(cx).map(|r| r.map(|n| (n, None))),
            Request::Buffer(f) => std::pin::Pin::new(f)
                .poll(cx)
                .map(|r| r.map(|b| (b.len(), None))),
        }
    }
}

/// `depth` slots of requests in flight, driven by one task without an allocation per
/// request (`FuturesUnordered` allocates a task for every future pushed): each slot has
/// its own waker, made once, which marks the slot ready and wakes the driving task.
struct InFlight<F> {
    slots: Vec<Option<F>>,
    wakers: Vec<Waker>,
    ready: Arc<Ready>,
}

/// Which slots of an [`InFlight`] were woken, and the task to wake for them.
struct Ready {
    bits: Vec<AtomicU64>,
    task: AtomicWaker,
}

/// The waker of one slot.
struct SlotWaker {
    slot: usize,
    ready: Arc<Ready>,
}

impl Wake for SlotWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.ready.bits[self.slot / 64].fetch_or(1 << (self.slot % 64), Ordering::AcqRel);
        self.ready.task.wake();
    }
}

impl<F> InFlight<F> {
    /// `depth` empty slots, all marked ready (to be filled on the first poll).
    fn new(depth: usize) -> Self {
        let ready = Arc::new(Ready {
            bits: (0..depth.div_ceil(64))
                .map(|w| {
                    let n = (depth - w * 64).min(64);
                    AtomicU64::new(if n == 64 { u64::MAX } else { (1 << n) - 1 })
                })
                .collect(),
            task: AtomicWaker::new(),
        });
        Self {
            slots: (0..depth).map(|_| None).collect(),
            wakers: (0..depth)
                .map(|slot| {
                    Waker::from(Arc::new(SlotWaker {
                        slot,
                        ready: Arc::clone(&ready),
                    }))
                })
                .collect(),
            ready,
        }
    }

    /// Registers the driving task's waker, then calls `f` with each slot marked ready
    /// (and a context holding that slot's waker), until none is; stops at `f`'s first
    /// error.
    fn poll_ready(
        &mut self,
        cx: &std::task::Context<'_>,
        mut f: impl FnMut(&mut Option<F>, &mut std::task::Context<'_>) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        self.ready.task.register(cx.waker());
        loop {
            let mut any = false;
            for (w, word) in self.ready.bits.iter().enumerate() {
                let mut bits = word.swap(0, Ordering::AcqRel);
                while bits != 0 {
                    any = true;
                    let i = w * 64 + bits.trailing_zeros() as usize;
                    bits &= bits - 1;
                    f(
                        &mut self.slots[i],
                        &mut std::task::Context::from_waker(&self.wakers[i]),
                    )?;
                }
            }
            if !any {
                return Ok(());
            }
        }
    }
}

/// Runs `rbd bench` for `w` on `spec` (`pool/image`) with `threads` in flight and `extra`
/// arguments (e.g. `--rbd-cache=false`), under a `timeout` of `limit`, and reads its own
/// final `ops/sec` (timed by rbd from after the image is open to after its final flush,
/// like [`run_ours`]).
pub fn run_rbd_bench(
    conf: &Path,
    spec: &str,
    w: &Workload,
    threads: usize,
    extra: &[String],
    limit: Duration,
) -> anyhow::Result<Measurement> {
    let out = Command::new("timeout")
        .arg(limit.as_secs().max(1).to_string())
        .arg("rbd")
        .arg("-c")
        .arg(conf)
        .args(extra)
        .args(w.rbd_bench_args(threads))
        .arg(spec)
        .output()
        .context("running rbd bench")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "rbd bench {:?} failed ({}): {}{}",
            w.name,
            out.status,
            stdout,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let ops = parse_rbd_bench_ops_per_sec(&stdout)
        .with_context(|| format!("no final ops/sec in rbd bench output: {stdout}"))?;
    Ok(Measurement {
        ops_per_sec: ops,
        bytes_per_sec: ops * w.io_size as f64,
    })
}

/// Extracts the final `ops/sec:` figure from `rbd bench` output
/// (`elapsed: 3   ops: 256   ops/sec: 80.95   bytes/sec: 323 MiB/s`).
pub fn parse_rbd_bench_ops_per_sec(out: &str) -> Option<f64> {
    let line = out
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with("elapsed:"))?;
    let rest = line.split("ops/sec:").nth(1)?;
    rest.split_whitespace().next()?.parse().ok()
}

/// The median of some values (the mean of the middle two for an even count).
pub fn median(values: &[f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: Workload = Workload {
        name: "t",
        io_type: IoType::Write,
        io_size: 4096,
        pattern: Pattern::Seq,
        total: 4096 * 10,
    };

    #[test]
    fn parses_rbd_bench_output() {
        let out = "bench  type write io_size 4194304 io_threads 16 bytes 268435456 pattern sequential\n  SEC       OPS   OPS/SEC   BYTES/SEC\n    1        48   47.9     192 MiB/s\nelapsed: 1   ops: 64   ops/sec: 43.7158   bytes/sec: 175 MiB/s\n";
        assert_eq!(parse_rbd_bench_ops_per_sec(out), Some(43.7158));
        assert_eq!(parse_rbd_bench_ops_per_sec("nothing"), None);
    }

    #[test]
    fn seq_offsets_wrap_and_stay_aligned() {
        let offs: Vec<u64> = Offsets::new(&W, 4096 * 4, 7).take(9).collect();
        for w in offs.windows(2) {
            assert!(w[1] == w[0] + 4096 || w[1] == 0, "{offs:?}");
        }
        assert!(offs.iter().all(|o| o % 4096 == 0 && *o < 4096 * 4));
        assert!(offs.contains(&0));
    }

    #[test]
    fn rand_offsets_cover_the_image() {
        let w = Workload {
            pattern: Pattern::Rand,
            ..W
        };
        let offs: Vec<u64> = Offsets::new(&w, 4096 * 8, 3).take(400).collect();
        assert!(offs.iter().all(|o| o % 4096 == 0 && *o < 4096 * 8));
        for slot in 0..8 {
            assert!(offs.contains(&(slot * 4096)), "slot {slot} never hit");
        }
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0]), 2.5);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn args_match_rbd_bench() {
        let a = W.rbd_bench_args(16).join(" ");
        assert_eq!(
            a,
            "bench --io-type write --io-size 4096 --io-pattern seq --io-threads 16 --io-total 40960"
        );
        assert_eq!(W.ops(), 10);
    }
}
