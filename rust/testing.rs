//! Data generators and references for tests and benches; compiled for `cargo test` and with the
//! `testing` feature (which the benches turn on through the crate's dev-dependency on itself),
//! never into the Python extension.

use rayon::prelude::*;

use crate::vectors::SearchResult;

/// Reference scalar dot product (benchmark peer and tests).
pub fn naive_dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// A cheap deterministic pseudo-random `n × dim` matrix, values in [-1, 1).
pub fn test_matrix(n: usize, dim: usize, seed: u64) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n * dim)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// Fraction of the exact neighbors (ids >= 0) found by the approximate search, averaged over
/// queries: recall@k as usually reported.
pub fn recall_at_k(approx: &SearchResult, exact: &SearchResult) -> f64 {
    let k = exact.k.min(approx.k);
    let (mut hit, mut total) = (0usize, 0usize);
    for q in 0..exact.nq.min(approx.nq) {
        let truth = &exact.ids[q * exact.k..q * exact.k + k];
        let got = &approx.ids[q * approx.k..q * approx.k + k];
        for id in truth.iter().filter(|&&i| i >= 0) {
            total += 1;
            if got.contains(id) {
                hit += 1;
            }
        }
    }
    if total == 0 {
        1.0
    } else {
        hit as f64 / total as f64
    }
}

/// Clustered unit vectors for recall tests and benchmarks: `clusters` Gaussian centres on the
/// sphere, each point a centre plus noise of relative size `spread`, normalised. Deterministic
/// in `seed` (a small xorshift generator, so no dependency is needed outside dev builds).
pub fn clustered_unit_vectors(
    n: usize,
    dim: usize,
    clusters: usize,
    spread: f32,
    seed: u64,
) -> Vec<f32> {
    let centres: Vec<f32> = {
        let mut g = Gauss::new(seed);
        let mut c: Vec<f32> = (0..clusters.max(1) * dim).map(|_| g.next()).collect();
        for r in c.chunks_mut(dim) {
            normalize(r);
        }
        c
    };
    let mut out = vec![0f32; n * dim];
    out.par_chunks_mut(dim).enumerate().for_each(|(i, r)| {
        let mut g = Gauss::new(seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xABCD);
        let c = (g.next_u64() % clusters.max(1) as u64) as usize;
        let s = spread / (dim as f32).sqrt();
        for (j, v) in r.iter_mut().enumerate() {
            *v = centres[c * dim + j] + s * g.next();
        }
        normalize(r);
    });
    out
}

fn normalize(r: &mut [f32]) {
    let n = r.iter().map(|v| v * v).sum::<f32>().sqrt();
    if n > 0.0 {
        r.iter_mut().for_each(|v| *v /= n);
    }
}

/// xorshift64* + Box-Muller.
struct Gauss(u64);

impl Gauss {
    fn new(seed: u64) -> Self {
        Gauss(seed.wrapping_mul(0x2545_F491_4F6C_DD1D) | 1)
    }
    fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn uniform(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 + 0.5) / (1u64 << 24) as f32
    }
    fn next(&mut self) -> f32 {
        let (u1, u2) = (self.uniform(), self.uniform());
        (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
    }
}
