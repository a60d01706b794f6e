//! Store benchmarks: append throughput (vectors/s) per dtype, against the raw-I/O bound of writing
//! the same f32 bytes with `std::fs::write` + fsync (the peer), and open time of a 10-shard store.
//!
//! `cargo bench --bench store`. Prints `ratio append/raw-write` per dtype at the end.

// A bench stops at its first failure, like a test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use tttnn::store::{EmbeddingStore, StoreOptions};
use tttnn::testing::test_matrix;
use tttnn::DType;

const N: usize = 20_000;
const DIM: usize = 384;

fn opts(dtype: DType) -> StoreOptions {
    StoreOptions {
        dtype,
        shard_size: N,
        ..StoreOptions::new(DIM)
    }
}

fn append_once(root: &Path, dtype: DType, x: &[f32]) {
    let mut s = EmbeddingStore::create(root, &opts(dtype), "{}").expect("create");
    black_box(s.append(x, None, None, None).expect("append"));
}

fn raw_write_once(root: &Path, x: &[f32]) {
    std::fs::create_dir_all(root).expect("mkdir");
    let p = root.join("raw.bin");
    std::fs::write(&p, bytemuck::cast_slice::<f32, u8>(x)).expect("write");
    std::fs::File::open(&p)
        .and_then(|f| f.sync_all())
        .expect("fsync");
}

/// Mean seconds of `f` over `iters` runs in fresh temp directories.
fn mean_secs(iters: u32, mut f: impl FnMut(&Path)) -> f64 {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path().join("s");
        let t = Instant::now();
        f(&root);
        total += t.elapsed();
    }
    total.as_secs_f64() / f64::from(iters)
}

fn bench(c: &mut Criterion) {
    let x = test_matrix(N, DIM, 1);
    let mut g = c.benchmark_group("append_20k_x_384");
    g.throughput(Throughput::Elements(N as u64));
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(5));
    g.bench_function("raw_fs_write_f32_peer", |b| {
        b.iter_batched(
            || tempfile::tempdir().expect("tempdir"),
            |tmp| raw_write_once(&tmp.path().join("s"), &x),
            BatchSize::PerIteration,
        )
    });
    for dtype in [DType::F32, DType::F16, DType::I8] {
        g.bench_function(dtype.as_str(), |b| {
            b.iter_batched(
                || tempfile::tempdir().expect("tempdir"),
                |tmp| append_once(&tmp.path().join("s"), dtype, &x),
                BatchSize::PerIteration,
            )
        });
    }
    g.finish();

    // Open: a 10-shard store (200k × 384 f32, 300 MB); open reads only headers.
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("s");
    let mut s = EmbeddingStore::create(&root, &opts(DType::F32), "{}").expect("create");
    for _ in 0..10 {
        s.append(&x, None, None, None).expect("append");
    }
    drop(s);
    c.bench_function("open_10_shards_200k_x_384_f32", |b| {
        b.iter(|| black_box(EmbeddingStore::open(&root).expect("open")))
    });

    // The ratio, measured in this same run (same data, same disk).
    let raw = mean_secs(5, |r| raw_write_once(r, &x));
    for dtype in [DType::F32, DType::F16, DType::I8] {
        let t = mean_secs(5, |r| append_once(r, dtype, &x));
        println!(
            "store append {:>3}: {:>10.0} vectors/s, raw f32 fs::write+fsync {:>10.0} vectors/s, \
             ratio append/raw-write time = {:.2}",
            dtype.as_str(),
            N as f64 / t,
            N as f64 / raw,
            t / raw
        );
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
