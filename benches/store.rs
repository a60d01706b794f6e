//! Store benchmarks: append throughput (vectors/s) per dtype, against the raw-I/O bound of writing
//! the same f32 bytes with `std::fs::write` + fsync (the peer), the open time of a 10-shard store,
//! and reading and packing the token ids of 20 neighbors from a store of 16-bit ids against one
//! of 32-bit ids (the peer: ids borrowed from the map as they are, no widening).
//!
//! `cargo bench --bench store`. Prints `ratio append/raw-write` per dtype and `ratio u16/u32`
//! (time and bytes of `tokens.bin`) at the end.

// A bench stops at its first failure, like a test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use tttnn::pack::{pack_windows_as, PackOptions};
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

/// A store of `DOCS` documents of 500-5,000 token ids below 49,152 (SmolLM2's vocabulary),
/// with token ids of `bits` bits; the bytes of its `tokens.bin` files.
fn token_store(root: &Path, bits: u32) -> (EmbeddingStore, u64) {
    const DOCS: usize = 2_000;
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let docs: Vec<Vec<u32>> = (0..DOCS)
        .map(|_| {
            let len = 500 + (next() % 4_501) as usize;
            (0..len).map(|_| (next() % 49_152) as u32).collect()
        })
        .collect();
    let slices: Vec<&[u32]> = docs.iter().map(Vec::as_slice).collect();
    let o = StoreOptions {
        shard_size: 500,
        with_tokens: true,
        token_bits: bits,
        ..StoreOptions::new(4)
    };
    let mut s = EmbeddingStore::create(root, &o, "{}").expect("create");
    s.append(&test_matrix(DOCS, 4, 2), None, Some(&slices), None)
        .expect("append");
    let bytes = (0..4)
        .map(|i| {
            let f = root.join(format!("shards/{i:05}/tokens.bin"));
            std::fs::metadata(f).expect("tokens.bin").len()
        })
        .sum();
    (s, bytes)
}

/// What a TTT step reads: the token ids of 20 neighbors, packed into 1024-token windows.
fn read_and_pack(store: &EmbeddingStore, ids: &[i64]) -> usize {
    let docs = ids
        .iter()
        .map(|&i| store.tokens(i))
        .collect::<tttnn::Result<Vec<_>>>()
        .expect("tokens");
    let docs: Vec<&[u32]> = docs.iter().map(|d| &d[..]).collect();
    let packed = pack_windows_as::<i64>(&docs, &PackOptions::new(1024)).expect("pack");
    black_box(packed.n_windows)
}

fn bench_tokens(c: &mut Criterion) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let ids: Vec<i64> = (0..20).map(|i| i * 97 + 13).collect();
    let stores: Vec<(u32, EmbeddingStore, u64)> = [32u32, 16]
        .into_iter()
        .map(|bits| {
            let (s, bytes) = token_store(&tmp.path().join(format!("t{bits}")), bits);
            read_and_pack(&s, &ids); // the column's checks, once per process, before timing
            (bits, s, bytes)
        })
        .collect();
    let mut g = c.benchmark_group("read_and_pack_20_neighbors");
    for (bits, s, _) in &stores {
        g.bench_function(format!("u{bits}"), |b| b.iter(|| read_and_pack(s, &ids)));
    }
    g.finish();
    // The ratio, measured in this same run: the median of 31 rounds of 200 reads each.
    let mut per_read = Vec::new();
    for (_, s, _) in &stores {
        let mut rounds: Vec<f64> = (0..31)
            .map(|_| {
                let t = Instant::now();
                for _ in 0..200 {
                    read_and_pack(s, &ids);
                }
                t.elapsed().as_secs_f64() / 200.0
            })
            .collect();
        rounds.sort_by(f64::total_cmp);
        per_read.push(rounds[15]);
    }
    let (b32, b16) = (stores[0].2, stores[1].2);
    println!(
        "read and pack 20 neighbors: u32 {:.1} us, u16 {:.1} us, ratio u16/u32 time = {:.2}; \
         tokens.bin {b32} / {b16} bytes, ratio u16/u32 bytes = {:.2}",
        per_read[0] * 1e6,
        per_read[1] * 1e6,
        per_read[1] / per_read[0],
        b16 as f64 / b32 as f64
    );
}

criterion_group!(benches, bench, bench_tokens);
criterion_main!(benches);
