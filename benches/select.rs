//! Criterion bench of `select::sift_select` at K = 200 candidates, d = 384 (the default encoder),
//! N = 20 and 50 picks, against the textbook greedy (the whole K×K Gram matrix and rank-1
//! updates of all of it, f64) in the same run.
//!
//! `cargo bench --bench select` (add `-- --quick` for a short run). Prints the full/core ratio.
//! The numpy float64 peer is `python benches/bench_select.py`.

// A bench stops at its first failure, like a test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion};
use tttnn::select::sift_select;
use tttnn::testing::clustered_unit_vectors;

const K: usize = 200;
const D: usize = 384;

/// The literal greedy: G = X·Xᵀ in full, then every entry updated at every pick.
fn full_gram(x: &[f32], q: &[f32], n: usize, lambda: f64) -> (Vec<usize>, Vec<f64>) {
    let d = q.len();
    let k = x.len() / d;
    let xd: Vec<f64> = x.iter().map(|&v| f64::from(v)).collect();
    let qd: Vec<f64> = q.iter().map(|&v| f64::from(v)).collect();
    let row = |l: usize| &xd[l * d..(l + 1) * d];
    let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
    let mut g = vec![0f64; k * k];
    for i in 0..k {
        for j in i..k {
            let v = dot(row(i), row(j));
            g[i * k + j] = v;
            g[j * k + i] = v;
        }
    }
    let mut c: Vec<f64> = (0..k).map(|l| dot(row(l), &qd)).collect();
    let mut s = dot(&qd, &qd);
    let (mut idx, mut var) = (Vec::with_capacity(n), Vec::with_capacity(n));
    let mut gj = vec![0f64; k];
    for _ in 0..n {
        let mut j = 0;
        let mut best = f64::NEG_INFINITY;
        for (l, &cl) in c.iter().enumerate() {
            let gain = cl * cl / (g[l * k + l] + lambda);
            if gain > best {
                best = gain;
                j = l;
            }
        }
        let dj = g[j * k + j] + lambda;
        let cj = c[j];
        s -= cj * cj / dj;
        idx.push(j);
        var.push(s);
        gj.copy_from_slice(&g[j * k..(j + 1) * k]);
        for (l, cl) in c.iter_mut().enumerate() {
            *cl -= cj * gj[l] / dj;
        }
        for (l, grow) in g.chunks_exact_mut(k).enumerate() {
            let f = gj[l] / dj;
            for (gm, &gjm) in grow.iter_mut().zip(&gj) {
                *gm -= f * gjm;
            }
        }
    }
    (idx, var)
}

fn time_per_call(mut f: impl FnMut(), budget: Duration) -> Duration {
    f();
    let (start, mut n) = (Instant::now(), 0u32);
    while start.elapsed() < budget {
        f();
        n += 1;
    }
    start.elapsed() / n.max(1)
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    // Candidates as retrieval returns them: unit vectors from a few clusters; the query is one
    // more point of the same distribution.
    let all = clustered_unit_vectors(K + 1, D, 8, 0.6, 42);
    let (x, q) = all.split_at(K * D);
    let mut ratios = Vec::new();
    for n in [20usize, 50] {
        let core = sift_select(x, q, n, 0.01, None).unwrap();
        let (idx, var) = full_gram(x, q, n, 0.01);
        assert_eq!(
            core.indices, idx,
            "core and full-Gram greedy disagree at n = {n}"
        );
        for (a, b) in core.variances.iter().zip(&var) {
            assert!((a - b).abs() < 1e-9, "variance {a} vs {b}");
        }
        let mut g = c.benchmark_group("sift_select");
        g.bench_with_input(
            BenchmarkId::new("core", format!("K{K}_d{D}_N{n}")),
            &n,
            |b, &n| b.iter(|| sift_select(black_box(x), black_box(q), n, 0.01, None).unwrap()),
        );
        g.bench_with_input(
            BenchmarkId::new("full_gram", format!("K{K}_d{D}_N{n}")),
            &n,
            |b, &n| b.iter(|| full_gram(black_box(x), black_box(q), n, 0.01)),
        );
        g.finish();
        let budget = Duration::from_millis(500);
        let t_core = time_per_call(
            || {
                black_box(sift_select(x, q, n, 0.01, None).unwrap());
            },
            budget,
        );
        let t_full = time_per_call(
            || {
                black_box(full_gram(x, q, n, 0.01));
            },
            budget,
        );
        let distinct = {
            let mut v = core.indices.clone();
            v.sort_unstable();
            v.dedup();
            v.len()
        };
        ratios.push((n, t_core, t_full, distinct));
    }
    c.final_summary();
    println!("\nsift_select, K = {K}, d = {D} (same run, mean per call):");
    for (n, core, full, distinct) in ratios {
        println!(
            "  N = {n:>3}: core {:>8.1} us  full-Gram greedy {:>8.1} us  ratio {:>5.1}x  ({distinct} distinct picks)",
            core.as_secs_f64() * 1e6,
            full.as_secs_f64() * 1e6,
            full.as_secs_f64() / core.as_secs_f64()
        );
    }
}
