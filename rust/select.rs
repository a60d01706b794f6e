//! Which of the retrieved candidates a document trains on, and in what order.
//!
//! # Nearest ([`nearest`])
//!
//! Hardt & Sun: the first `n` candidates in retrieval order, nearest first (the identity order).
//!
//! # SIFT ([`sift_select`])
//!
//! Hübotter et al., "Efficiently Learning at Test-Time: Active Fine-Tuning of LLMs" (ICLR 2025),
//! as `jonhue/activeft` computes it (`sift.Retriever` with its default `VTL` acquisition,
//! `noise_std = √λ`, one target: the query). Model the quantity to be learned as a Gaussian
//! process with the linear kernel `k(x, x') = x·x'` over the embeddings, observed with noise of
//! variance `λ`; greedily pick the candidate whose observation most reduces the posterior
//! variance at the query `q`:
//!
//! ```text
//! G = X·Xᵀ (K×K), c = X·q, s = q·q
//! repeat n times:
//!     j = argmax_l c[l]² / (G[l,l] + λ)        (ties: the lowest l)
//!     d = G[j,j] + λ;  s -= c[j]² / d;  record (j, s)
//!     c -= c[j]·G[:,j]/d;  G -= G[:,j]·G[j,:]/d  (rank-1 update: condition on the pick)
//! ```
//!
//! `s` after pick `t` is the posterior variance `σ²_t(q)` (activeft's acquisition value of the
//! pick, negated). A small `λ` makes redundancy expensive (a second copy of a direction already
//! observed reduces little); with a large one each observation moves the posterior little, so
//! the most relevant candidates are picked again and again. Measured on the shared corpus (40 test
//! documents, K = 200, N = 20, `benches/bench_select.py --test`): 99% of the picks are distinct at
//! λ = 0.01, 93% at 0.1, 62% at 1.
//!
//! **Repeats.** The same candidate can be picked again: with `λ > 0` a second noisy observation
//! of it still reduces the variance, and activeft conditions every candidate, the picked one
//! included, so it does not exclude picks either. What a repeat trains on is the packer's rule
//! (`tttnn.pack.pack_neighbors`: the k-th pick of a neighbor trains on its next windows).
//!
//! **Adaptive stop** (`alpha`, activeft's `Retriever(alpha=...)`): after the `n` picks, pick `t`
//! (1-based) is dropped when `√s_t > 1/(α·t)`. It is a mask over the full greedy, as in
//! activeft: the kept picks and their variances are those of the run without it.
//!
//! **Numerics.** f64 throughout: the inputs are f32 (dequantized rows), the product of two f32 is
//! exact in f64, and the updates subtract nearly equal numbers (`s` falls by orders of
//! magnitude). Diagonal entries are clamped at 0 (a posterior variance, which rounding could
//! take a hair below 0), so every denominator is at least `λ`.
//!
//! **Cost.** The greedy reads only `c`, the diagonal of `G` and the column `G[:, j]` of each
//! pick, so only those are formed: with `G_t = G_0 − Σ_{s<t} v_s v_sᵀ`, `v_s = G_s[:, j_s]/√d_s`,
//! the column is `X·x_j − Σ_s v_s·v_s[j]` (left-looking, as in a pivoted Cholesky). That is
//! `O(n·K·d + n²·K)` instead of the `O(K²·d)` of the full Gram matrix. The dot products run in
//! an AVX2/FMA kernel when the CPU has one (f32 widened to f64). Measured by
//! `cargo bench --bench select` at K = 200, d = 384 on 2 shared cores: 0.42 ms for n = 20 and
//! 0.98 ms for n = 50, against 17 and 14 ms for the greedy written with the whole Gram matrix
//! (same picks); the portable loop took 1.9 ms for n = 20. Sequential: a thread hand-off is not
//! worth it at this size on a loaded machine.

use crate::error::{Error, Result};

/// What a selection picked: candidate rows (indices into the K candidates) in pick order, and
/// the posterior variance of the query after each pick.
#[derive(Clone, Debug, PartialEq)]
pub struct Selection {
    /// Candidate rows in pick order; a row may appear more than once (SIFT repeats).
    pub indices: Vec<usize>,
    /// `s_t`, the posterior variance at the query after each kept pick (same length as
    /// `indices`; empty for [`nearest`], which computes none).
    pub variances: Vec<f64>,
    /// `q·q`, the variance before any pick (0 for [`nearest`]).
    pub prior_variance: f64,
    /// Picks removed by the adaptive stop (`alpha`); 0 without it.
    pub dropped: usize,
}

/// The paper's rule: the first `min(n, n_candidates)` candidates, nearest first.
pub fn nearest(n_candidates: usize, n: usize) -> Selection {
    Selection {
        indices: (0..n.min(n_candidates)).collect(),
        variances: Vec::new(),
        prior_variance: 0.0,
        dropped: 0,
    }
}

/// SIFT: `n` greedy picks among the `K = candidates.len() / query.len()` rows of `candidates`
/// (row-major `K × d`), minimising the posterior variance at `query` (see the
/// [module documentation](self)). `lambda` is the observation noise variance (activeft's
/// default 0.01); `alpha`, when given, drops pick `t` where `√s_t > 1/(α·t)`.
///
/// Errors: `Shape` for an empty query, no candidates, or a candidate buffer that is not a whole
/// number of rows; `DType` for a NaN or infinite value; `InvalidArgument` for `n == 0`, a
/// `lambda` or `alpha` that is not a positive finite number, or `n × K` too large to hold.
pub fn sift_select(
    candidates: &[f32],
    query: &[f32],
    n: usize,
    lambda: f64,
    alpha: Option<f64>,
) -> Result<Selection> {
    let k = check_inputs(candidates, query, n, lambda, alpha)?;
    let d = query.len();
    let rows = |l: usize| &candidates[l * d..(l + 1) * d];
    let kernel = Kernel::detect();
    let dot = |a: &[f32], b: &[f32]| kernel.dot(a, b);

    let prior_variance = dot(query, query);
    let mut c: Vec<f64> = (0..k).map(|l| dot(rows(l), query)).collect();
    let mut diag: Vec<f64> = (0..k).map(|l| dot(rows(l), rows(l))).collect();
    let mut s = prior_variance;
    // v_0, v_1, ... one after the other (K each): G_t = G_0 − Σ v vᵀ.
    let too_large = || {
        Error::InvalidArgument(format!(
            "{n} picks among {k} candidates do not fit in memory"
        ))
    };
    let mut factors: Vec<f64> = Vec::new();
    factors
        .try_reserve_exact(n.checked_mul(k).ok_or_else(too_large)?)
        .map_err(|_| too_large())?;
    let mut col = vec![0f64; k];
    let mut indices = Vec::with_capacity(n);
    let mut variances = Vec::with_capacity(n);

    for _ in 0..n {
        let j = argmax_gain(&c, &diag, lambda);
        // G_t[:, j] = X·x_j − Σ_s v_s·v_s[j]
        let xj = rows(j);
        for (l, g) in col.iter_mut().enumerate() {
            *g = dot(rows(l), xj);
        }
        for v in factors.chunks_exact(k) {
            let vj = v[j];
            for (g, &vl) in col.iter_mut().zip(v) {
                *g -= vl * vj;
            }
        }
        let dj = diag[j] + lambda;
        let cj = c[j];
        s -= cj * cj / dj;
        indices.push(j);
        variances.push(s);
        let scale = 1.0 / dj.sqrt();
        for ((cl, gl), &g) in c.iter_mut().zip(diag.iter_mut()).zip(&col) {
            *cl -= cj * g / dj;
            *gl = (*gl - g * g / dj).max(0.0);
        }
        factors.extend(col.iter().map(|&g| g * scale));
    }

    let mut dropped = 0;
    if let Some(a) = alpha {
        let keep: Vec<bool> = variances
            .iter()
            .enumerate()
            .map(|(t, &v)| v.max(0.0).sqrt() <= 1.0 / (a * (t + 1) as f64))
            .collect();
        dropped = keep.iter().filter(|&&kept| !kept).count();
        let mut it = keep.iter();
        indices.retain(|_| it.next().copied().unwrap_or(false));
        let mut it = keep.iter();
        variances.retain(|_| it.next().copied().unwrap_or(false));
    }
    Ok(Selection {
        indices,
        variances,
        prior_variance,
        dropped,
    })
}

/// The posterior variance at `query` after observing the candidate rows `order` one after the
/// other (`s_t` for t = 1..), with noise `lambda`: what [`sift_select`] records, for any order
/// (e.g. nearest first, to compare). Same checks as [`sift_select`]; `OutOfRange` for a row
/// beyond the candidates.
pub fn posterior_variances(
    candidates: &[f32],
    query: &[f32],
    order: &[usize],
    lambda: f64,
) -> Result<Vec<f64>> {
    let k = check_inputs(candidates, query, order.len().max(1), lambda, None)?;
    if let Some(&bad) = order.iter().find(|&&j| j >= k) {
        return Err(Error::OutOfRange(format!(
            "candidate row {bad} out of range for {k} candidates"
        )));
    }
    // Direct form: s_t = q·q − cᵀ (X_S X_Sᵀ + λI)⁻¹ c over the rows S picked so far, by an
    // incremental Cholesky factor of X_S X_Sᵀ + λI (independent of the greedy's updates).
    let d = query.len();
    let rows = |l: usize| &candidates[l * d..(l + 1) * d];
    let dot = dot_portable;
    let q2 = dot(query, query);
    let mut chol: Vec<Vec<f64>> = Vec::with_capacity(order.len()); // rows of L
    let mut z: Vec<f64> = Vec::with_capacity(order.len()); // L⁻¹ c_S
    let mut out = Vec::with_capacity(order.len());
    for (t, &j) in order.iter().enumerate() {
        let mut row = vec![0f64; t + 1];
        for i in 0..t {
            let gij = dot(rows(order[i]), rows(j));
            let dotl: f64 = (0..i).map(|m| chol[i][m] * row[m]).sum();
            row[i] = (gij - dotl) / chol[i][i];
        }
        let gjj = dot(rows(j), rows(j)) + lambda;
        let sq: f64 = row[..t].iter().map(|x| x * x).sum();
        row[t] = (gjj - sq).max(lambda * f64::EPSILON).sqrt();
        let cj = dot(rows(j), query);
        let zt = (cj - (0..t).map(|m| row[m] * z[m]).sum::<f64>()) / row[t];
        z.push(zt);
        chol.push(row);
        out.push(q2 - z.iter().map(|x| x * x).sum::<f64>());
    }
    Ok(out)
}

/// `argmax_l c[l]² / (diag[l] + λ)`, the lowest `l` among equal maxima.
fn argmax_gain(c: &[f64], diag: &[f64], lambda: f64) -> usize {
    let mut best = 0;
    let mut best_gain = f64::NEG_INFINITY;
    for (l, (&cl, &gl)) in c.iter().zip(diag).enumerate() {
        let gain = cl * cl / (gl + lambda);
        if gain > best_gain {
            best = l;
            best_gain = gain;
        }
    }
    best
}

/// Checks shared by the entry points; returns K.
fn check_inputs(
    candidates: &[f32],
    query: &[f32],
    n: usize,
    lambda: f64,
    alpha: Option<f64>,
) -> Result<usize> {
    let d = query.len();
    if d == 0 {
        return Err(Error::Shape("the query is empty (dimension 0)".into()));
    }
    if candidates.len() % d != 0 {
        return Err(Error::Shape(format!(
            "{} candidate values are not a whole number of rows of dimension {d}",
            candidates.len()
        )));
    }
    let k = candidates.len() / d;
    if k == 0 {
        return Err(Error::Shape("no candidates to select from".into()));
    }
    if n == 0 {
        return Err(Error::InvalidArgument(
            "n (picks) must be at least 1".into(),
        ));
    }
    if !(lambda.is_finite() && lambda > 0.0) {
        return Err(Error::InvalidArgument(format!(
            "lambda must be a positive number, got {lambda}"
        )));
    }
    if let Some(a) = alpha {
        if !(a.is_finite() && a > 0.0) {
            return Err(Error::InvalidArgument(format!(
                "alpha must be a positive number, got {a}"
            )));
        }
    }
    if let Some(i) = query.iter().position(|v| !v.is_finite()) {
        return Err(Error::DType(format!(
            "the query has a non-finite value (NaN or inf) at position {i}"
        )));
    }
    if let Some(i) = candidates.iter().position(|v| !v.is_finite()) {
        return Err(Error::DType(format!(
            "candidate row {} has a non-finite value (NaN or inf) at position {}",
            i / d,
            i % d
        )));
    }
    Ok(k)
}

/// How dot products are computed: chosen once per call, at run time.
#[derive(Clone, Copy, Debug)]
enum Kernel {
    Portable,
    #[cfg(target_arch = "x86_64")]
    Avx2,
}

impl Kernel {
    fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                return Kernel::Avx2;
            }
        }
        Kernel::Portable
    }

    /// Dot product of two f32 rows of equal length, accumulated in f64 (each product is exact
    /// in f64, so the kernels differ only in the order of the sums).
    #[inline]
    fn dot(self, a: &[f32], b: &[f32]) -> f64 {
        debug_assert_eq!(a.len(), b.len());
        match self {
            Kernel::Portable => dot_portable(a, b),
            // SAFETY: AVX2 and FMA were detected at run time (`detect`).
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => unsafe { x86::dot_f64_avx2(a, b) },
        }
    }
}

fn dot_portable(a: &[f32], b: &[f32]) -> f64 {
    let mut acc = [0f64; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f64 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(&x, &y)| f64::from(x) * f64::from(y))
        .sum();
    for (x, y) in ca.zip(cb) {
        for ((a, &xi), &yi) in acc.iter_mut().zip(x).zip(y) {
            *a += f64::from(xi) * f64::from(yi);
        }
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// 16 f32 per step, widened to f64 four at a time into four f64x4 sums. The portable loop
    /// ran at about 1/8 of this speed (measured in `benches/select.rs`: 1.9 ms for a K = 200,
    /// N = 20 selection). Reads the first `min(a.len(), b.len())` elements.
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA (checked at run time by `Kernel::detect`).
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dot_f64_avx2(a: &[f32], b: &[f32]) -> f64 {
        let n = a.len().min(b.len());
        let (ap, bp) = (a.as_ptr(), b.as_ptr());
        // SAFETY: every load reads elements below `n` of both slices (the loop bounds), the
        // store writes the 4 lanes of `lanes`; the target features are the caller's obligation.
        unsafe {
            let mut acc = [_mm256_setzero_pd(); 4];
            let mut i = 0;
            while i + 16 <= n {
                for (k, s) in acc.iter_mut().enumerate() {
                    let x = _mm256_cvtps_pd(_mm_loadu_ps(ap.add(i + 4 * k)));
                    let y = _mm256_cvtps_pd(_mm_loadu_ps(bp.add(i + 4 * k)));
                    *s = _mm256_fmadd_pd(x, y, *s);
                }
                i += 16;
            }
            let s = _mm256_add_pd(_mm256_add_pd(acc[0], acc[1]), _mm256_add_pd(acc[2], acc[3]));
            let mut lanes = [0f64; 4];
            _mm256_storeu_pd(lanes.as_mut_ptr(), s);
            let mut total = (lanes[0] + lanes[1]) + (lanes[2] + lanes[3]);
            while i < n {
                total += f64::from(*ap.add(i)) * f64::from(*bp.add(i));
                i += 1;
            }
            total
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// The textbook greedy: the whole Gram matrix, rank-1 updates of all of it (f64).
    fn reference(x: &[f32], q: &[f32], n: usize, lambda: f64) -> (Vec<usize>, Vec<f64>) {
        let d = q.len();
        let k = x.len() / d;
        let xr =
            |l: usize| -> Vec<f64> { x[l * d..(l + 1) * d].iter().map(|&v| v as f64).collect() };
        let qd: Vec<f64> = q.iter().map(|&v| v as f64).collect();
        let dotd = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
        let mut g = vec![vec![0f64; k]; k];
        for (i, gi) in g.iter_mut().enumerate() {
            for (j, gij) in gi.iter_mut().enumerate() {
                *gij = dotd(&xr(i), &xr(j));
            }
        }
        let mut c: Vec<f64> = (0..k).map(|l| dotd(&xr(l), &qd)).collect();
        let mut s = dotd(&qd, &qd);
        let (mut idx, mut var) = (vec![], vec![]);
        for _ in 0..n {
            let mut j = 0;
            for l in 1..k {
                if c[l] * c[l] / (g[l][l] + lambda) > c[j] * c[j] / (g[j][j] + lambda) {
                    j = l;
                }
            }
            let dj = g[j][j] + lambda;
            let cj = c[j];
            s -= cj * cj / dj;
            idx.push(j);
            var.push(s);
            let gj: Vec<f64> = (0..k).map(|l| g[l][j]).collect();
            for l in 0..k {
                c[l] -= cj * gj[l] / dj;
                for m in 0..k {
                    g[l][m] -= gj[l] * gj[m] / dj;
                }
            }
        }
        (idx, var)
    }

    fn random(k: usize, d: usize, seed: u64) -> (Vec<f32>, Vec<f32>) {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let x = (0..k * d).map(|_| rng.gen_range(-1.0..1.0)).collect();
        let q = (0..d).map(|_| rng.gen_range(-1.0..1.0)).collect();
        (x, q)
    }

    #[test]
    fn hand_checked_two_by_two() {
        // x0 = (1, 0), x1 = (1, 1), x2 = (0, 1); q = (1, 0); λ = 1.
        // Gains c²/(G_ll+λ): 1/2, 1/3, 0 -> pick 0; s = 1 - 1/2 = 1/2.
        // After conditioning on x0 (d = 2): c = (1/2, 1/2, 0); G00 = 1/2, G11 = 2 - 1/2 = 3/2,
        // G22 = 1. Gains: (1/4)/(3/2) = 1/6, (1/4)/(5/2) = 1/10, 0 -> pick 0 again (a repeat);
        // s = 1/2 - 1/6 = 1/3.
        let x = [1.0, 0.0, 1.0, 1.0, 0.0, 1.0];
        let q = [1.0, 0.0];
        let sel = sift_select(&x, &q, 2, 1.0, None).unwrap();
        assert_eq!(sel.indices, vec![0, 0]);
        assert!((sel.variances[0] - 0.5).abs() < 1e-15);
        assert!((sel.variances[1] - 1.0 / 3.0).abs() < 1e-15);
        assert_eq!(sel.prior_variance, 1.0);
        // With a small λ the first observation of x0 nearly pins f(q): x1 then adds little, but
        // more than observing x0 a third time.
        let sel = sift_select(&x, &q, 3, 0.01, None).unwrap();
        assert_eq!(sel.indices[0], 0);
        assert!(sel.variances[0] < 0.01);
    }

    #[test]
    fn redundant_copies_are_passed_over() {
        // Two identical rows nearest the query, and a less similar row in another direction:
        // nearest order takes both copies; SIFT takes one copy, then the other direction.
        let x = [1.0, 0.2, 1.0, 0.2, 0.7, -0.7];
        let q = [1.0, 0.0];
        let sel = sift_select(&x, &q, 2, 0.01, None).unwrap();
        assert_eq!(sel.indices, vec![0, 2]);
        assert_eq!(nearest(3, 2).indices, vec![0, 1]);
        assert_eq!(nearest(3, 5).indices, vec![0, 1, 2]);
    }

    #[test]
    fn ties_pick_the_lowest_row() {
        // Rows 1 and 3 equal and best; row 0 orthogonal to the query.
        let x = [0.0, 1.0, 1.0, 0.0, 0.5, 0.0, 1.0, 0.0];
        let q = [1.0, 0.0];
        let sel = sift_select(&x, &q, 1, 0.1, None).unwrap();
        assert_eq!(sel.indices, vec![1]);
        // A query orthogonal to every candidate: every gain is 0, so row 0 each time.
        let x = [0.0, 1.0, 0.0, 2.0];
        let sel = sift_select(&x, &q, 3, 0.1, None).unwrap();
        assert_eq!(sel.indices, vec![0, 0, 0]);
        assert_eq!(sel.variances, vec![1.0, 1.0, 1.0]);
    }

    #[test]
    fn repeats_when_one_candidate() {
        let x = [0.5, 0.5];
        let q = [0.5, 0.5];
        let sel = sift_select(&x, &q, 4, 0.5, None).unwrap();
        assert_eq!(sel.indices, vec![0, 0, 0, 0]);
        // n observations of f(x) = f(q), prior variance 0.5, noise 0.5:
        // s_n = 1 / (1/0.5 + n/0.5) = 0.5 / (1 + n).
        for (t, v) in sel.variances.iter().enumerate() {
            let want = 0.5 / (1.0 + (t + 1) as f64);
            assert!((v - want).abs() < 1e-12, "{t}: {v} vs {want}");
        }
    }

    #[test]
    fn random_against_reference() {
        for seed in 0..40 {
            let mut rng = rand::rngs::StdRng::seed_from_u64(1000 + seed);
            let k = rng.gen_range(1..40);
            let d = rng.gen_range(1..24);
            let n = rng.gen_range(1..60);
            let lambda = [1e-3, 0.01, 0.1, 1.0][rng.gen_range(0..4)];
            let (x, q) = random(k, d, seed);
            let sel = sift_select(&x, &q, n, lambda, None).unwrap();
            let (idx, var) = reference(&x, &q, n, lambda);
            assert_eq!(sel.indices, idx, "seed {seed} k {k} d {d} n {n} λ {lambda}");
            for (a, b) in sel.variances.iter().zip(&var) {
                assert!(
                    (a - b).abs() <= 1e-9 * sel.prior_variance,
                    "seed {seed}: {a} vs {b}"
                );
            }
            // The recorded variances are those of the picks, computed directly.
            let direct = posterior_variances(&x, &q, &sel.indices, lambda).unwrap();
            for (a, b) in sel.variances.iter().zip(&direct) {
                assert!(
                    (a - b).abs() <= 1e-8 * sel.prior_variance,
                    "seed {seed}: {a} vs {b}"
                );
            }
            // Variance never rises, and never goes below 0 by more than rounding.
            for w in sel.variances.windows(2) {
                assert!(w[1] <= w[0] + 1e-12 * sel.prior_variance);
            }
        }
    }

    #[test]
    fn first_pick_is_the_best_single_row() {
        // Pick 1 is the row with the lowest posterior variance, checked against every row.
        let (x, q) = random(30, 8, 5);
        let sel = sift_select(&x, &q, 1, 0.05, None).unwrap();
        let single: Vec<f64> = (0..30)
            .map(|j| posterior_variances(&x, &q, &[j], 0.05).unwrap()[0])
            .collect();
        let best = (0..30)
            .min_by(|&a, &b| single[a].total_cmp(&single[b]))
            .unwrap();
        assert_eq!(sel.indices, vec![best]);
        assert!((sel.variances[0] - single[best]).abs() < 1e-12);
    }

    #[test]
    fn alpha_drops_uncertain_picks() {
        let (x, q) = random(20, 6, 9);
        let full = sift_select(&x, &q, 10, 0.01, None).unwrap();
        for alpha in [1e-3, 0.1, 0.5, 1.0, 3.0, 1e3] {
            let sel = sift_select(&x, &q, 10, 0.01, Some(alpha)).unwrap();
            let want: Vec<(usize, f64)> = full
                .indices
                .iter()
                .zip(&full.variances)
                .enumerate()
                .filter(|(t, (_, &v))| v.sqrt() <= 1.0 / (alpha * (*t + 1) as f64))
                .map(|(_, (&j, &v))| (j, v))
                .collect();
            let got: Vec<(usize, f64)> = sel.indices.iter().copied().zip(sel.variances).collect();
            assert_eq!(got, want, "alpha {alpha}");
            assert_eq!(sel.dropped, 10 - want.len());
        }
        // Tiny alpha keeps everything; huge alpha drops everything.
        assert_eq!(
            sift_select(&x, &q, 10, 0.01, Some(1e-6)).unwrap().dropped,
            0
        );
        let all = sift_select(&x, &q, 10, 0.01, Some(1e6)).unwrap();
        assert!(all.indices.is_empty() && all.dropped == 10);
        // By hand: one candidate equal to q (|q|² = 1), λ = 1: s_t = 1/(1+t); keep t when
        // sqrt(1/(1+t)) <= 1/(α t). With α = 0.5: t=1: 0.707 <= 2 keep; t=2: 0.577 <= 1 keep;
        // t=3: 0.5 <= 0.667 keep; t=4: 0.447 <= 0.5 keep; t=5: 0.408 > 0.4 drop.
        let sel = sift_select(&[1.0, 0.0], &[1.0, 0.0], 6, 1.0, Some(0.5)).unwrap();
        assert_eq!(sel.indices.len(), 4);
        assert_eq!(sel.dropped, 2);
    }

    #[test]
    fn bad_inputs_are_errors() {
        let x = [1.0f32, 0.0, 0.0, 1.0];
        let q = [1.0f32, 0.0];
        let shape = |r: Result<Selection>| matches!(r, Err(Error::Shape(_)));
        let invalid = |r: Result<Selection>| matches!(r, Err(Error::InvalidArgument(_)));
        assert!(shape(sift_select(&x, &[], 1, 0.01, None)));
        assert!(shape(sift_select(&[], &q, 1, 0.01, None)));
        assert!(shape(sift_select(&x[..3], &q, 1, 0.01, None)));
        assert!(invalid(sift_select(&x, &q, 0, 0.01, None)));
        for lambda in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert!(invalid(sift_select(&x, &q, 1, lambda, None)), "{lambda}");
        }
        for alpha in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert!(
                invalid(sift_select(&x, &q, 1, 0.01, Some(alpha))),
                "{alpha}"
            );
        }
        let err = sift_select(&[1.0, f32::NAN, 0.0, 1.0], &q, 1, 0.01, None).unwrap_err();
        assert!(matches!(err, Error::DType(_)));
        assert!(err.to_string().contains("row 0"), "{err}");
        let err = sift_select(&x, &[f32::INFINITY, 0.0], 1, 0.01, None).unwrap_err();
        assert!(matches!(err, Error::DType(_)), "{err}");
        assert!(invalid(sift_select(&x, &q, usize::MAX, 0.01, None)));
        assert!(matches!(
            posterior_variances(&x, &q, &[2], 0.01),
            Err(Error::OutOfRange(_))
        ));
    }

    #[test]
    fn kernels_agree() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let kernel = Kernel::detect();
        for n in [0, 1, 7, 15, 16, 17, 100, 383, 384, 1000] {
            let a: Vec<f32> = (0..n).map(|_| rng.gen_range(-1.0..1.0)).collect();
            let b: Vec<f32> = (0..n).map(|_| rng.gen_range(-1.0..1.0)).collect();
            let exact: f64 = a.iter().zip(&b).map(|(&x, &y)| x as f64 * y as f64).sum();
            for got in [dot_portable(&a, &b), kernel.dot(&a, &b)] {
                assert!(
                    (got - exact).abs() <= 1e-12 * (1.0 + n as f64),
                    "{n}: {got} vs {exact}"
                );
            }
        }
    }

    #[test]
    fn extreme_magnitudes_stay_finite() {
        let x = [3e38f32, 3e38, -3e38, 1e-38, 1e-30, 0.0];
        let q = [3e38f32, -1e-38];
        let sel = sift_select(&x, &q, 5, 1e-6, None).unwrap();
        assert!(sel.variances.iter().all(|v| v.is_finite()));
        assert_eq!(sel.indices.len(), 5);
    }
}
