//! Criterion bench of `knn` and `hnsw`: exact search (one query, a 64-query batch) over
//! 100,000 × 384 vectors of each dtype, and HNSW build + search, each with a peer measured in the
//! same run: a naive scalar loop (dot product per row, then a full sort) for exact search, and
//! exact search itself for HNSW. Prints `ratio = tttnn / peer` lines before criterion's report.
//!
//! `cargo bench --bench knn` (set `TTTNN_BENCH_N` to change the number of vectors).

// A bench stops at its first failure, like a test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use half::f16;
use tttnn::hnsw::{HnswIndex, HnswParams};
use tttnn::knn::{exact_search, row_norms, simd_kernel_name};
use tttnn::testing::{clustered_unit_vectors, naive_dot, recall_at_k};
use tttnn::vectors::{Metric, VectorData, VectorsRef};

const DIM: usize = 384;
const K: usize = 20;

struct Data {
    n: usize,
    f32s: Vec<f32>,
    f16s: Vec<f16>,
    q8: Vec<i8>,
    scales: Vec<f32>,
    norms: Vec<f32>,
    queries: Vec<f32>,
}

impl Data {
    fn new(n: usize) -> Self {
        let all = clustered_unit_vectors(n + 64, DIM, 2000, 1.0, 7);
        let (x, q) = all.split_at(n * DIM);
        let f16s = x.iter().map(|&v| f16::from_f32(v)).collect();
        let mut q8 = Vec::with_capacity(x.len());
        let mut scales = Vec::with_capacity(n);
        for r in x.chunks(DIM) {
            let s = r.iter().fold(0f32, |a, v| a.max(v.abs())).max(1e-12) / 127.0;
            scales.push(s);
            q8.extend(r.iter().map(|v| (v / s).round() as i8));
        }
        Data {
            n,
            norms: row_norms(x, DIM),
            f32s: x.to_vec(),
            f16s,
            q8,
            scales,
            queries: q.to_vec(),
        }
    }

    fn view(&self, dtype: &str) -> VectorsRef<'_> {
        let data = match dtype {
            "f32" => VectorData::F32(&self.f32s),
            "f16" => VectorData::F16(&self.f16s),
            _ => VectorData::I8 {
                q: &self.q8,
                scales: &self.scales,
            },
        };
        VectorsRef {
            dim: DIM,
            count: self.n,
            data,
            norms: &self.norms,
        }
    }
}

/// The peer: one thread, a scalar dot per (query, row), then sort every row of scores.
fn naive_search(v: &VectorsRef<'_>, queries: &[f32], k: usize) -> Vec<usize> {
    let mut row = vec![0f32; DIM];
    let mut out = Vec::new();
    for q in queries.chunks(DIM) {
        let mut s: Vec<(f32, usize)> = (0..v.count)
            .map(|i| {
                v.row_f32(i, &mut row);
                (naive_dot(q, &row) / v.norms[i], i)
            })
            .collect();
        s.sort_by(|a, b| b.0.total_cmp(&a.0));
        out.extend(s.iter().take(k).map(|p| p.1));
    }
    out
}

/// Median wall time of `reps` runs.
fn time<T>(reps: usize, mut f: impl FnMut() -> T) -> Duration {
    let mut t: Vec<Duration> = (0..reps)
        .map(|_| {
            let s = Instant::now();
            black_box(f());
            s.elapsed()
        })
        .collect();
    t.sort();
    t[t.len() / 2]
}

fn report(name: &str, ours: Duration, peer: Duration, peer_name: &str) {
    println!(
        "{name:<32} tttnn {:>10.3} ms   {peer_name} {:>10.3} ms   ratio = {:.3}",
        ours.as_secs_f64() * 1e3,
        peer.as_secs_f64() * 1e3,
        ours.as_secs_f64() / peer.as_secs_f64()
    );
}

fn bench(c: &mut Criterion) {
    let n: usize = std::env::var("TTTNN_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let data = Data::new(n);
    println!(
        "knn bench: {n} x {DIM}, k = {K}, kernels = {}, threads = {}",
        simd_kernel_name(),
        rayon::current_num_threads()
    );

    let mut g = c.benchmark_group("exact");
    g.sample_size(10).measurement_time(Duration::from_secs(3));
    for dtype in ["f32", "f16", "i8"] {
        let v = data.view(dtype);
        let blocks = [(0u64, v)];
        for nq in [1usize, 64] {
            let q = &data.queries[..nq * DIM];
            let ours = time(5, || exact_search(&blocks, q, K, Metric::Cosine));
            // The naive peer is slow: time it on one query and scale by nq.
            let peer = time(3, || naive_search(&v, &q[..DIM], K)) * nq as u32;
            report(&format!("exact {dtype} nq={nq}"), ours, peer, "naive");
            g.bench_function(format!("{dtype}/nq{nq}"), |b| {
                b.iter(|| exact_search(&blocks, black_box(q), K, Metric::Cosine))
            });
        }
    }
    g.finish();

    // HNSW on a smaller slice (the build dominates): build time vs exact search of all queries.
    let nh = n.min(20_000);
    let v = VectorsRef {
        dim: DIM,
        count: nh,
        data: VectorData::F32(&data.f32s[..nh * DIM]),
        norms: &data.norms[..nh],
    };
    let params = HnswParams::default();
    let t = Instant::now();
    let idx = HnswIndex::build(v, Metric::Cosine, &params, 0).expect("build");
    let build = t.elapsed();
    println!(
        "hnsw build {nh} x {DIM}: {:.2} s ({:.0} vectors/s)",
        build.as_secs_f64(),
        nh as f64 / build.as_secs_f64()
    );
    let q = &data.queries[..64 * DIM];
    let exact = exact_search(&[(0, v)], q, K, Metric::Cosine).expect("exact");
    let approx = idx.search(v, q, K, None).expect("search");
    println!("hnsw recall@{K} = {:.4}", recall_at_k(&approx, &exact));
    let ours = time(5, || idx.search(v, &q[..DIM], K, None));
    let peer = time(5, || exact_search(&[(0, v)], &q[..DIM], K, Metric::Cosine));
    report("hnsw search nq=1", ours, peer, "exact");
    let mut g = c.benchmark_group("hnsw");
    g.sample_size(10).measurement_time(Duration::from_secs(3));
    g.bench_function("search/nq1", |b| {
        b.iter(|| idx.search(v, black_box(&q[..DIM]), K, None))
    });
    g.bench_function("search/nq64", |b| {
        b.iter(|| idx.search(v, black_box(q), K, None))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
