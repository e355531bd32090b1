//! Criterion benches of rbd-core's hot paths.
//!
//! ```sh
//! eval "$(scripts/dev-cluster.sh up)"
//! cargo bench -p benches --bench hot_paths
//! ```
//!
//! Pure code (error construction and conversion) always runs. The round trips to the
//! cluster (4K aio and sync reads and writes, 16 aio reads in flight, omap set and get)
//! need the dev cluster through `CEPH_CONF`; without it they are skipped with a message.

// criterion_group! generates an undocumented public function.
#![allow(missing_docs)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use rbd_core::rbd::{self, ImageOptions};
use rbd_core::{ConnectOptions, Context, Error, Image, IoCtx, OpenOptions, Rados};

const POOL: &str = "rbd";

fn pure(c: &mut Criterion) {
    let mut g = c.benchmark_group("error");
    g.bench_function("from_errno_with_context", |b| {
        b.iter(|| {
            Error::from_errno(
                "rbd_aio_read2",
                black_box(libc_eio()),
                Context::pool("rbd").with_image("volume-1"),
            )
        })
    });
    g.bench_function("into_io_error", |b| {
        b.iter_batched(
            || Error::from_errno("rbd_aio_read2", libc_eio(), Context::pool("rbd")),
            std::io::Error::from,
            criterion::BatchSize::SmallInput,
        )
    });
    g.bench_function("check_ok", |b| {
        b.iter(|| rbd_core::error::check(black_box(0), "rbd_flush", Context::none))
    });
    g.finish();
}

fn libc_eio() -> i32 {
    5
}

/// A connection and a scratch image plus object, removed on drop.
struct Cluster {
    rados: Rados,
    io: IoCtx,
    image: String,
    object: String,
}

impl Cluster {
    fn connect() -> Option<Cluster> {
        let conf = std::env::var_os("CEPH_CONF")?;
        let rados = Rados::connect(&ConnectOptions::new().conf_file(conf)).ok()?;
        let io = rados.ioctx(POOL).ok()?;
        let image = testkit::unique("bench-hot");
        rbd::create(&io, &image, 64 << 20, &ImageOptions::new()).ok()?;
        let object = testkit::unique("bench-hot-omap");
        io.write_full(&object, b"").ok()?;
        Some(Cluster {
            rados,
            io,
            image,
            object,
        })
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.io.remove_object(&self.object);
        let _ = rbd::remove(&self.io, &self.image);
        let _ = &self.rados;
    }
}

fn cluster(c: &mut Criterion) {
    let Some(cl) = Cluster::connect() else {
        eprintln!("SKIPPED cluster benches: CEPH_CONF is not set or the cluster is unreachable");
        return;
    };
    let img = Image::open(&cl.io, &cl.image, &OpenOptions::new()).expect("open bench image");
    img.write_at(0, &vec![0x11; 1 << 20]).expect("prefill");
    // No I/O driver: a parked runtime is woken with a futex, not an eventfd write.
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("tokio runtime");

    let mut g = c.benchmark_group("image");
    g.bench_function("size", |b| b.iter(|| img.size().expect("size")));
    g.finish();

    let mut g = c.benchmark_group("image_4k");
    g.throughput(Throughput::Elements(1));
    g.bench_function("aio_write_roundtrip", |b| {
        let mut buf = Some(vec![0x22u8; 4096]);
        b.iter(|| {
            let data = buf.take().unwrap_or_else(|| vec![0x22; 4096]);
            buf = Some(
                rt.block_on(img.aio_write_buf(8192, data))
                    .expect("aio write"),
            );
        })
    });
    g.bench_function("aio_read_roundtrip", |b| {
        let mut buf = Some(vec![0u8; 4096]);
        b.iter(|| {
            let data = buf.take().unwrap_or_else(|| vec![0; 4096]);
            buf = Some(rt.block_on(img.aio_read(4096, data)).expect("aio read"));
        })
    });
    let rt_io = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    g.bench_function("aio_read_roundtrip_tokio_io_driver", |b| {
        let mut buf = Some(vec![0u8; 4096]);
        b.iter(|| {
            let data = buf.take().unwrap_or_else(|| vec![0; 4096]);
            buf = Some(rt_io.block_on(img.aio_read(4096, data)).expect("aio read"));
        })
    });
    g.bench_function("aio_read_wait", |b| {
        let mut buf = Some(vec![0u8; 4096]);
        b.iter(|| {
            let data = buf.take().unwrap_or_else(|| vec![0; 4096]);
            buf = Some(img.aio_read(4096, data).wait().expect("aio read"));
        })
    });
    g.bench_function("aio_read_buffer_wait", |b| {
        b.iter(|| {
            img.aio_read_buffer(4096, 4096)
                .wait()
                .expect("zero-copy read")
        })
    });
    g.bench_function("aio_write_buffer_wait", |b| {
        let data = rbd_core::Buffer::from_slice(&[0x44u8; 4096]).expect("buffer");
        b.iter(|| {
            img.aio_write_buffer(8192, &data)
                .wait()
                .expect("zero-copy write")
        })
    });
    g.bench_function("sync_read", |b| {
        let mut buf = vec![0u8; 4096];
        b.iter(|| img.read_at(4096, &mut buf).expect("read"))
    });
    g.bench_function("sync_write", |b| {
        let buf = vec![0x33u8; 4096];
        b.iter(|| img.write_at(12_288, &buf).expect("write"))
    });
    g.finish();

    let mut g = c.benchmark_group("image_4k_qd16");
    g.throughput(Throughput::Elements(16));
    g.bench_function("aio_read_16_in_flight", |b| {
        let mut bufs: Vec<Vec<u8>> = (0..16).map(|_| vec![0u8; 4096]).collect();
        b.iter(|| {
            let futs: Vec<_> = bufs
                .drain(..)
                .enumerate()
                .map(|(i, buf)| img.aio_read(i as u64 * 65_536, buf))
                .collect();
            for r in rt.block_on(futures::future::join_all(futs)) {
                bufs.push(r.expect("aio read"));
            }
        })
    });
    g.finish();

    let mut g = c.benchmark_group("omap");
    g.bench_function("set_then_get", |b| {
        b.iter(|| {
            cl.io
                .omap_set(&cl.object, &[("volume-1", b"node-a".as_slice())])
                .expect("omap set");
            cl.io.omap_get(&cl.object, "volume-1").expect("omap get")
        })
    });
    g.finish();
    img.close().expect("close bench image");
}

fn config() -> Criterion {
    // Short runs: the machine is shared and the cluster is a RAM-backed single OSD.
    Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
}

criterion_group! {
    name = benches;
    config = config();
    targets = pure, cluster
}
criterion_main!(benches);
