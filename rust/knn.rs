//! Exact k-nearest-neighbor search over memory-mapped blocks of vectors.
//!
//! [`exact_search`] returns the exact global top-k per query over `(global start id, block)`
//! pairs, best first, scores as described on [`Metric`]; [`merge_topk`] merges per-shard results
//! with global ids into one top-k. The store and the HNSW re-ranking build on both.
//!
//! How it works. Every metric is reduced to one "key" per (query, row), larger is better:
//! `key = dot(q, x_raw) * a[row] + b[row]`, where `x_raw` is the stored payload (f32, f16, or the
//! i8 codes without their scale) and `a`, `b` come from the precomputed norms and scales:
//! inner product `a = scale`; cosine `a = scale / |x|` (the query norm is applied at the end);
//! L2 `a = 2 scale`, `b = -|x|²` (the final distance is `|q|² - key`). Two scanning strategies:
//! - few queries (< [`GEMM_MIN_QUERIES`]): each row is read once from memory and dotted with every
//!   query by a SIMD kernel (AVX2+FMA+F16C with runtime dispatch, portable fallback). This path is
//!   memory-bandwidth bound, so 512-bit kernels would not pay (and their intrinsics need Rust 1.89,
//!   above the crate's MSRV 1.80).
//! - many queries: tiles of rows (f16/i8 converted to f32 tile by tile) against tiles of queries
//!   as an sgemm (`gemm` crate, its own AVX-512 kernels), then a top-k pass over the score tile.
//!   Compute bound.
//!
//! Both run in parallel over chunks of rows of all blocks (rayon `fold` + `reduce`), with one
//! bounded min-heap per query per worker, merged at the end.

use half::f16;
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::vectors::{check_k, check_queries, Metric, SearchResult, VectorData, VectorsRef};

/// From this many queries on, the batch is scored with a blocked matrix product.
pub const GEMM_MIN_QUERIES: usize = 12;
/// Rows per parallel task on the bandwidth-bound path.
const SCAN_CHUNK_ROWS: usize = 8192;
/// Rows per tile of the gemm path (converted to f32 for f16/i8 blocks).
const TILE_ROWS: usize = 256;
/// Queries per tile of the gemm path.
const TILE_QUERIES: usize = 256;
/// Rows per parallel task on the gemm path (a multiple of `TILE_ROWS`).
const GEMM_CHUNK_ROWS: usize = 4 * TILE_ROWS;

/// Exact top-`k` of every query over all `blocks`; ids are `block start + row`. The dimension is
/// taken from the first block (pass an empty block, `count == 0`, for an empty store).
pub fn exact_search(
    blocks: &[(u64, VectorsRef<'_>)],
    queries: &[f32],
    k: usize,
    metric: Metric,
) -> Result<SearchResult> {
    let Some((_, first)) = blocks.first() else {
        return Err(Error::InvalidArgument(
            "exact_search needs at least one block to know the dimension (an empty block is fine)"
                .into(),
        ));
    };
    exact_search_dim(blocks, first.dim, queries, k, metric)
}

/// [`exact_search`] with an explicit dimension, so an empty list of blocks is allowed (every row
/// of the result is then padding).
pub fn exact_search_dim(
    blocks: &[(u64, VectorsRef<'_>)],
    dim: usize,
    queries: &[f32],
    k: usize,
    metric: Metric,
) -> Result<SearchResult> {
    let nq = check_queries(queries, dim)?;
    for (i, (_, b)) in blocks.iter().enumerate() {
        check_block(i, b, dim)?;
    }
    let total: usize = blocks.iter().map(|(_, b)| b.count).sum();
    check_k(k, nq, total)?;
    if nq == 0 || total == 0 {
        return Ok(SearchResult::empty(nq, k));
    }
    let gemm_path = nq >= GEMM_MIN_QUERIES;
    let chunk = if gemm_path {
        GEMM_CHUNK_ROWS
    } else {
        SCAN_CHUNK_ROWS
    };
    let tasks: Vec<(usize, usize, usize)> = blocks
        .iter()
        .enumerate()
        .flat_map(|(bi, (_, b))| {
            (0..b.count)
                .step_by(chunk)
                .map(move |s| (bi, s, (s + chunk).min(b.count)))
        })
        .collect();
    let kk = k.min(total);
    let level = simd_level();
    let heaps = tasks
        .par_iter()
        .fold(
            || TopKSet::new(nq, kk),
            |mut acc, &(bi, r0, r1)| {
                let (start, b) = &blocks[bi];
                if gemm_path {
                    scan_gemm(b, *start, r0, r1, queries, metric, &mut acc);
                } else {
                    scan_rows(level, b, *start, r0, r1, queries, metric, &mut acc);
                }
                acc
            },
        )
        .reduce(|| TopKSet::new(nq, kk), TopKSet::merge);
    if let Some(id) = heaps.nan_row {
        return Err(Error::NonFinite { id });
    }
    Ok(heaps.finish(queries, dim, k, metric))
}

/// Exact top-`k` over an in-memory row-major `n × dim` f32 matrix, ids `0..n`; the norms are
/// computed here, and a row with a non-finite value is an error.
pub fn exact_search_matrix(
    x: &[f32],
    dim: usize,
    queries: &[f32],
    k: usize,
    metric: Metric,
) -> Result<SearchResult> {
    if dim == 0 || x.len() % dim != 0 {
        return Err(Error::Shape(format!(
            "vectors hold {} values, not a whole number of rows of dimension {dim}",
            x.len()
        )));
    }
    // One pass: a norm is finite exactly when its row is (barring |x| > 1e19).
    let norms = row_norms(x, dim);
    if let Some(row) = norms.iter().position(|v| !v.is_finite()) {
        return Err(Error::DType(format!(
            "vector {row} has a non-finite value (or one too large for float32 norms)"
        )));
    }
    let block = VectorsRef {
        dim,
        count: norms.len(),
        data: VectorData::F32(x),
        norms: &norms,
    };
    exact_search_dim(&[(0, block)], dim, queries, k, metric)
}

/// The message of a shape error without its "shape error: " prefix, to re-prefix it.
fn shape_msg(e: Error) -> String {
    match e {
        Error::Shape(m) => m,
        other => other.to_string(),
    }
}

fn check_block(i: usize, b: &VectorsRef<'_>, dim: usize) -> Result<()> {
    if b.dim != dim {
        return Err(Error::Shape(format!(
            "block {i} has dimension {}, queries have dimension {dim}",
            b.dim
        )));
    }
    b.check_payload()
        .map_err(|e| Error::Shape(format!("block {i}: {}", shape_msg(e))))?;
    let n = b.count;
    if b.norms.len() != n {
        return Err(Error::Shape(format!(
            "block {i}: {} norms for {n} vectors",
            b.norms.len()
        )));
    }
    Ok(())
}

/// Per-row affine factors turning a raw dot product into a key (see the module docs).
#[inline]
fn row_factors(metric: Metric, norm: f32, scale: f32) -> (f32, f32) {
    match metric {
        Metric::InnerProduct => (scale, 0.0),
        Metric::Cosine => (if norm > 0.0 { scale / norm } else { 0.0 }, 0.0),
        Metric::L2 => (2.0 * scale, -(norm * norm)),
    }
}

// ---------------------------------------------------------------------------------------------
// Top-k bookkeeping.

/// One bounded min-heap per query (worst kept element at the root), flat storage.
struct TopKSet {
    k: usize,
    len: Vec<usize>,
    keys: Vec<f32>,
    ids: Vec<i64>,
    /// The smallest id whose key was NaN: a stored value is not finite (a corrupt file; appends
    /// refuse them). Such a row would silently never be found, so the search fails instead.
    nan_row: Option<i64>,
}

impl TopKSet {
    fn new(nq: usize, k: usize) -> Self {
        TopKSet {
            k,
            len: vec![0; nq],
            keys: vec![f32::NEG_INFINITY; nq * k],
            ids: vec![-1; nq * k],
            nan_row: None,
        }
    }

    fn flag_nan(&mut self, id: i64) {
        self.nan_row = Some(self.nan_row.map_or(id, |r| r.min(id)));
    }

    /// Smallest key that may still enter query `q`'s heap.
    #[inline]
    fn threshold(&self, q: usize) -> f32 {
        if self.len[q] < self.k {
            f32::NEG_INFINITY
        } else {
            self.keys[q * self.k]
        }
    }

    /// Insert (caller checked `key > threshold(q)`).
    #[inline]
    fn push(&mut self, q: usize, key: f32, id: i64) {
        let k = self.k;
        let keys = &mut self.keys[q * k..(q + 1) * k];
        let ids = &mut self.ids[q * k..(q + 1) * k];
        let len = &mut self.len[q];
        if *len < k {
            // Sift up.
            let mut i = *len;
            *len += 1;
            while i > 0 {
                let p = (i - 1) / 2;
                if worse(key, id, keys[p], ids[p]) {
                    keys[i] = keys[p];
                    ids[i] = ids[p];
                    i = p;
                } else {
                    break;
                }
            }
            keys[i] = key;
            ids[i] = id;
        } else {
            if !worse(keys[0], ids[0], key, id) {
                return;
            }
            // Replace the root and sift down.
            let mut i = 0;
            loop {
                let l = 2 * i + 1;
                if l >= k {
                    break;
                }
                let r = l + 1;
                let c = if r < k && worse(keys[r], ids[r], keys[l], ids[l]) {
                    r
                } else {
                    l
                };
                if worse(keys[c], ids[c], key, id) {
                    keys[i] = keys[c];
                    ids[i] = ids[c];
                    i = c;
                } else {
                    break;
                }
            }
            keys[i] = key;
            ids[i] = id;
        }
    }

    fn merge(mut self, other: TopKSet) -> TopKSet {
        if let Some(id) = other.nan_row {
            self.flag_nan(id);
        }
        let k = self.k;
        for q in 0..self.len.len() {
            for j in 0..other.len[q] {
                let (key, id) = (other.keys[q * k + j], other.ids[q * k + j]);
                if self.len[q] < k || worse(self.keys[q * k], self.ids[q * k], key, id) {
                    self.push(q, key, id);
                }
            }
        }
        self
    }

    /// Sorted results (best first) with final scores, padded to `k_out` columns.
    fn finish(self, queries: &[f32], dim: usize, k_out: usize, metric: Metric) -> SearchResult {
        let nq = self.len.len();
        let mut out = SearchResult::empty(nq, k_out);
        let k = self.k;
        let mut row: Vec<(f32, i64)> = Vec::with_capacity(k);
        for q in 0..nq {
            row.clear();
            row.extend((0..self.len[q]).map(|j| (self.keys[q * k + j], self.ids[q * k + j])));
            row.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
            let qv = &queries[q * dim..(q + 1) * dim];
            let qq: f32 = qv.iter().map(|v| v * v).sum();
            for (j, &(key, id)) in row.iter().enumerate() {
                out.ids[q * k_out + j] = id;
                out.scores[q * k_out + j] = key_to_score(metric, key, qq);
            }
        }
        out
    }
}

/// The reported score of a key, given the query's squared norm `qq` (see the module docs).
#[inline]
fn key_to_score(metric: Metric, key: f32, qq: f32) -> f32 {
    match metric {
        Metric::InnerProduct => key,
        Metric::Cosine => {
            if qq > 0.0 {
                key / qq.sqrt()
            } else {
                0.0
            }
        }
        Metric::L2 => (qq - key).max(0.0),
    }
}

/// Exact re-ranking of one query's candidate rows (local row numbers of `block`; negative or
/// out-of-range entries are skipped): the best `ids.len()` are written as `start + row` with
/// their exact scores, best first, in [`exact_search`]'s order and score convention (padding:
/// id -1, score NaN). This is what turns an approximate candidate list into exact scores.
/// A candidate whose score is NaN (a non-finite stored value) is an error.
pub fn rerank_one(
    block: &VectorsRef<'_>,
    start: u64,
    query: &[f32],
    cands: &[i64],
    metric: Metric,
    ids: &mut [i64],
    scores: &mut [f32],
) -> Result<()> {
    let d = block.dim;
    let level = simd_level();
    let mut row: Vec<(f32, i64)> = cands
        .iter()
        .filter(|&&r| r >= 0 && (r as usize) < block.count)
        .map(|&r| {
            let i = r as usize;
            let (dot, scale) = match block.data {
                VectorData::F32(x) => (dot_f32(level, query, &x[i * d..(i + 1) * d]), 1.0),
                VectorData::F16(x) => (dot_f16(level, query, &x[i * d..(i + 1) * d]), 1.0),
                VectorData::I8 { q, scales } => {
                    (dot_i8(level, query, &q[i * d..(i + 1) * d]), scales[i])
                }
            };
            let (a, c) = row_factors(metric, block.norms[i], scale);
            (dot.mul_add(a, c), start as i64 + r)
        })
        .collect();
    if let Some(&(_, id)) = row.iter().find(|e| e.0.is_nan()) {
        return Err(Error::NonFinite { id });
    }
    row.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    row.dedup_by_key(|e| e.1);
    let qq: f32 = query.iter().map(|v| v * v).sum();
    ids.fill(-1);
    scores.fill(f32::NAN);
    for ((id, score), &(key, i)) in ids.iter_mut().zip(scores.iter_mut()).zip(&row) {
        *id = i;
        *score = key_to_score(metric, key, qq);
    }
    Ok(())
}

/// True when (ka, ia) ranks strictly below (kb, ib): lower key, or equal key and larger id.
#[inline]
fn worse(ka: f32, ia: i64, kb: f32, ib: i64) -> bool {
    ka < kb || (ka == kb && ia > ib)
}

/// Merge per-shard results (global ids, same queries) into one exact top-`k`, best first.
/// Parts may have different `k`; padding (id -1) is skipped. `nq` is the largest `nq` of the
/// parts (a part with fewer rows contributes nothing to the missing ones).
pub fn merge_topk(parts: &[SearchResult], k: usize, metric: Metric) -> SearchResult {
    merge_ranked(parts, k, metric.higher_is_better())
}

/// [`merge_topk`] of lists that come from outside the core (the searches of shard groups in
/// other processes): every part holds `nq × k_i` ids and scores for the same `nq` queries, and
/// `k` passes [`check_k`] against the candidates there are. `higher_is_better`: scores are
/// similarities (cosine, inner product), else distances (L2). The order is the core's: score by
/// IEEE total order, then smaller id; padding (id -1, or a NaN score) is skipped, and a query
/// with fewer than `k` candidates is padded with id -1 / score NaN.
pub fn merge_lists(
    parts: &[SearchResult],
    k: usize,
    higher_is_better: bool,
) -> Result<SearchResult> {
    let Some(first) = parts.first() else {
        return Err(Error::InvalidArgument(
            "no lists to merge: give at least one (ids, scores) pair".into(),
        ));
    };
    for (i, p) in parts.iter().enumerate() {
        if p.nq != first.nq {
            return Err(Error::Shape(format!(
                "list {i} has {} queries, list 0 has {}: every list answers the same queries",
                p.nq, first.nq
            )));
        }
        let entries = p.nq.checked_mul(p.k);
        if entries != Some(p.ids.len()) || entries != Some(p.scores.len()) {
            return Err(Error::Shape(format!(
                "list {i}: {} ids and {} scores for {} queries × {}",
                p.ids.len(),
                p.scores.len(),
                p.nq,
                p.k
            )));
        }
    }
    let candidates = parts
        .iter()
        .map(|p| p.k)
        .fold(0usize, usize::saturating_add);
    check_k(k, first.nq, candidates)?;
    Ok(merge_ranked(parts, k, higher_is_better))
}

/// The merge itself: [`merge_topk`] with the direction of the scores given.
fn merge_ranked(parts: &[SearchResult], k: usize, higher_is_better: bool) -> SearchResult {
    let nq = parts.iter().map(|p| p.nq).max().unwrap_or(0);
    let mut out = SearchResult::empty(nq, k);
    let mut row: Vec<(f32, i64)> = Vec::new();
    for q in 0..nq {
        row.clear();
        for p in parts.iter().filter(|p| q < p.nq) {
            for j in 0..p.k {
                let (id, s) = (p.ids[q * p.k + j], p.scores[q * p.k + j]);
                if id >= 0 && !s.is_nan() {
                    row.push((s, id));
                }
            }
        }
        if higher_is_better {
            row.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        } else {
            row.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        }
        for (j, &(s, id)) in row.iter().take(k).enumerate() {
            out.ids[q * k + j] = id;
            out.scores[q * k + j] = s;
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Bandwidth-bound path: every row read once, dotted with each query.

#[allow(clippy::too_many_arguments)]
fn scan_rows(
    level: SimdLevel,
    b: &VectorsRef<'_>,
    start: u64,
    r0: usize,
    r1: usize,
    queries: &[f32],
    metric: Metric,
    acc: &mut TopKSet,
) {
    let d = b.dim;
    match b.data {
        VectorData::F32(x) => scan_rows_with(b, start, r0, r1, queries, metric, acc, |i, q| {
            (dot_f32(level, q, &x[i * d..(i + 1) * d]), 1.0)
        }),
        VectorData::F16(x) => scan_rows_with(b, start, r0, r1, queries, metric, acc, |i, q| {
            (dot_f16(level, q, &x[i * d..(i + 1) * d]), 1.0)
        }),
        VectorData::I8 { q: x, scales } => {
            scan_rows_with(b, start, r0, r1, queries, metric, acc, |i, q| {
                (dot_i8(level, q, &x[i * d..(i + 1) * d]), scales[i])
            })
        }
    }
}

/// `row_dot(i, q)` returns the raw dot of row `i` with query `q` and the row's scale.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn scan_rows_with(
    b: &VectorsRef<'_>,
    start: u64,
    r0: usize,
    r1: usize,
    queries: &[f32],
    metric: Metric,
    acc: &mut TopKSet,
    row_dot: impl Fn(usize, &[f32]) -> (f32, f32),
) {
    let d = b.dim;
    let nq = queries.len() / d;
    for i in r0..r1 {
        let id = start as i64 + i as i64;
        for qi in 0..nq {
            let (dot, scale) = row_dot(i, &queries[qi * d..(qi + 1) * d]);
            let (a, c) = row_factors(metric, b.norms[i], scale);
            let key = dot.mul_add(a, c);
            if key > acc.threshold(qi) {
                acc.push(qi, key, id);
            } else if key.is_nan() {
                acc.flag_nan(id);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Compute-bound path: tiles of rows × tiles of queries through sgemm.

thread_local! {
    static TILE_BUF: std::cell::RefCell<(Vec<f32>, Vec<f32>)> =
        const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
}

fn scan_gemm(
    b: &VectorsRef<'_>,
    start: u64,
    r0: usize,
    r1: usize,
    queries: &[f32],
    metric: Metric,
    acc: &mut TopKSet,
) {
    let d = b.dim;
    let nq = queries.len() / d;
    let level = simd_level();
    TILE_BUF.with(|cell| {
        let mut bufs = cell.borrow_mut();
        let (xbuf, cbuf) = &mut *bufs;
        cbuf.resize(TILE_QUERIES * TILE_ROWS, 0.0);
        let mut a = [0f32; TILE_ROWS];
        let mut c = [0f32; TILE_ROWS];
        let mut t0 = r0;
        while t0 < r1 {
            let t1 = (t0 + TILE_ROWS).min(r1);
            let n = t1 - t0;
            // The f32 view of the row tile: borrowed for f32 blocks, converted otherwise.
            let xt: &[f32] = match b.data {
                VectorData::F32(x) => &x[t0 * d..t1 * d],
                VectorData::F16(x) => {
                    xbuf.resize(n * d, 0.0);
                    f16_to_f32(level, &x[t0 * d..t1 * d], &mut xbuf[..n * d]);
                    &xbuf[..n * d]
                }
                VectorData::I8 { q, .. } => {
                    xbuf.resize(n * d, 0.0);
                    i8_to_f32(level, &q[t0 * d..t1 * d], &mut xbuf[..n * d]);
                    &xbuf[..n * d]
                }
            };
            for j in 0..n {
                let scale = match b.data {
                    VectorData::I8 { scales, .. } => scales[t0 + j],
                    _ => 1.0,
                };
                (a[j], c[j]) = row_factors(metric, b.norms[t0 + j], scale);
            }
            let mut q0 = 0;
            while q0 < nq {
                let q1 = (q0 + TILE_QUERIES).min(nq);
                let m = q1 - q0;
                let dst = &mut cbuf[..m * n];
                // SAFETY: dst is m×n row-major (m*n elements); lhs is the m×d query tile
                // (row-major); rhs is X_tileᵀ, d×n, read from the n×d row-major tile with row
                // stride 1 and column stride d. All pointers are valid for these extents.
                unsafe {
                    gemm::gemm(
                        m,
                        n,
                        d,
                        dst.as_mut_ptr(),
                        1,
                        n as isize,
                        false,
                        queries[q0 * d..].as_ptr(),
                        1,
                        d as isize,
                        xt.as_ptr(),
                        d as isize,
                        1,
                        0.0f32,
                        1.0f32,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    );
                }
                for qi in 0..m {
                    let srow = &dst[qi * n..(qi + 1) * n];
                    let gq = q0 + qi;
                    let base = start as i64 + t0 as i64;
                    let thr = acc.threshold(gq);
                    let mut hit = |j: usize, key: f32| {
                        if key.is_nan() {
                            acc.flag_nan(base + j as i64);
                        } else {
                            acc.push(gq, key, base + j as i64);
                        }
                        acc.threshold(gq)
                    };
                    scan_keys(level, srow, &a[..n], &c[..n], thr, &mut hit);
                }
                q0 = q1;
            }
            t0 = t1;
        }
    });
}

// ---------------------------------------------------------------------------------------------
// SIMD kernels with runtime dispatch.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SimdLevel {
    Scalar,
    #[cfg(target_arch = "x86_64")]
    Avx2,
}

fn simd_level() -> SimdLevel {
    static LEVEL: std::sync::OnceLock<SimdLevel> = std::sync::OnceLock::new();
    *LEVEL.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            if std::env::var_os("TTTNN_NO_SIMD").is_some() {
                return SimdLevel::Scalar;
            }
            if is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
                && is_x86_feature_detected!("f16c")
            {
                return SimdLevel::Avx2;
            }
        }
        SimdLevel::Scalar
    })
}

/// Name of the kernel set chosen at runtime ("avx2" or "scalar").
pub fn simd_kernel_name() -> &'static str {
    match simd_level() {
        SimdLevel::Scalar => "scalar",
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx2 => "avx2",
    }
}

#[inline]
fn dot_f32(level: SimdLevel, q: &[f32], x: &[f32]) -> f32 {
    debug_assert_eq!(q.len(), x.len());
    match level {
        // SAFETY: `Avx2` is chosen only on a CPU with AVX2, FMA and F16C (`simd_level`).
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx2 => unsafe { x86::dot_f32_avx2(q, x) },
        SimdLevel::Scalar => scalar_dot(q, x.iter().copied()),
    }
}

#[inline]
fn dot_f16(level: SimdLevel, q: &[f32], x: &[f16]) -> f32 {
    debug_assert_eq!(q.len(), x.len());
    match level {
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx2 => unsafe { x86::dot_f16_avx2(q, x) },
        SimdLevel::Scalar => scalar_dot(q, x.iter().map(|v| v.to_f32())),
    }
}

#[inline]
fn dot_i8(level: SimdLevel, q: &[f32], x: &[i8]) -> f32 {
    debug_assert_eq!(q.len(), x.len());
    match level {
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx2 => unsafe { x86::dot_i8_avx2(q, x) },
        SimdLevel::Scalar => scalar_dot(q, x.iter().map(|&v| f32::from(v))),
    }
}

/// Keys `s[j]·a[j] + c[j]` (one rounding, as `f32::mul_add`) of a row of scores; `hit(j, key)`
/// is called for every key above the running threshold and returns the new threshold. Most
/// keys fall below it, so the kernel compares eight at a time and rarely leaves SIMD.
#[inline]
fn scan_keys(
    level: SimdLevel,
    s: &[f32],
    a: &[f32],
    c: &[f32],
    thr: f32,
    hit: &mut dyn FnMut(usize, f32) -> f32,
) -> f32 {
    debug_assert!(s.len() == a.len() && s.len() == c.len());
    match level {
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx2 => unsafe { x86::scan_keys_avx2(s, a, c, thr, hit) },
        SimdLevel::Scalar => scan_keys_scalar(s, a, c, 0, thr, hit),
    }
}

fn scan_keys_scalar(
    s: &[f32],
    a: &[f32],
    c: &[f32],
    from: usize,
    mut thr: f32,
    hit: &mut dyn FnMut(usize, f32) -> f32,
) -> f32 {
    for j in from..s.len().min(a.len()).min(c.len()) {
        let key = s[j].mul_add(a[j], c[j]);
        // NaN keys are handed over too: the caller flags the row (a corrupt stored value).
        if key > thr || key.is_nan() {
            thr = hit(j, key);
        }
    }
    thr
}

fn f16_to_f32(level: SimdLevel, x: &[f16], out: &mut [f32]) {
    match level {
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx2 => unsafe { x86::f16_to_f32_f16c(x, out) },
        SimdLevel::Scalar => {
            for (o, v) in out.iter_mut().zip(x) {
                *o = v.to_f32();
            }
        }
    }
}

fn i8_to_f32(_level: SimdLevel, x: &[i8], out: &mut [f32]) {
    // A plain conversion loop auto-vectorizes well enough (it is a small part of the gemm tile).
    for (o, &v) in out.iter_mut().zip(x) {
        *o = f32::from(v);
    }
}

/// Portable dot product with 8 independent accumulators (lets the compiler vectorize).
fn scalar_dot(q: &[f32], x: impl Iterator<Item = f32>) -> f32 {
    let mut acc = [0f32; 8];
    for (i, (a, b)) in q.iter().zip(x).enumerate() {
        acc[i & 7] = a.mul_add(b, acc[i & 7]);
    }
    acc.iter().sum()
}

/// The AVX2 kernels. Every one is an `unsafe fn` only because of its target features: the
/// caller must have checked at run time that the CPU has them (`simd_level` does, once). The
/// slices may have any lengths: a kernel reads and writes only the first `n` elements, `n` the
/// length of the shortest, and every pointer it offsets stays below `n`.
#[cfg(target_arch = "x86_64")]
mod x86 {
    use half::f16;
    use std::arch::x86_64::*;

    /// Sum of the eight lanes of `v`.
    ///
    /// # Safety
    /// The CPU must support AVX (callers are AVX2 kernels, whose callers checked it).
    #[target_feature(enable = "avx2,fma")]
    unsafe fn hsum256(v: __m256) -> f32 {
        // SAFETY: register-only intrinsics, the target features are the caller's obligation.
        // The block is needed up to Rust 1.86 (the crate's MSRV is 1.80), where every intrinsic
        // is an unsafe fn; later compilers see these calls as safe in an AVX2 function.
        #[allow(unused_unsafe)]
        unsafe {
            let lo = _mm256_castps256_ps128(v);
            let hi = _mm256_extractf128_ps(v, 1);
            let s = _mm_add_ps(lo, hi);
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
            _mm_cvtss_f32(s)
        }
    }

    /// See `scan_keys`.
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA. The slices may differ in length (the shortest counts).
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn scan_keys_avx2(
        s: &[f32],
        a: &[f32],
        c: &[f32],
        mut thr: f32,
        hit: &mut dyn FnMut(usize, f32) -> f32,
    ) -> f32 {
        let n = s.len().min(a.len()).min(c.len());
        let (sp, ap, cp) = (s.as_ptr(), a.as_ptr(), c.as_ptr());
        let mut keys = [0f32; 8];
        let mut j = 0;
        // SAFETY: the loads read elements j..j + 8 < n of each slice; `keys` holds 8 floats;
        // the target features are the caller's obligation.
        unsafe {
            let mut t8 = _mm256_set1_ps(thr);
            while j + 8 <= n {
                let k8 = _mm256_fmadd_ps(
                    _mm256_loadu_ps(sp.add(j)),
                    _mm256_loadu_ps(ap.add(j)),
                    _mm256_loadu_ps(cp.add(j)),
                );
                // Greater than the threshold, or NaN (unordered): see `scan_keys_scalar`.
                let mut m = _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_NLE_UQ>(k8, t8)) as u32;
                if m != 0 {
                    _mm256_storeu_ps(keys.as_mut_ptr(), k8);
                    while m != 0 {
                        let b = m.trailing_zeros() as usize;
                        if keys[b] > thr || keys[b].is_nan() {
                            thr = hit(j + b, keys[b]);
                        }
                        m &= m - 1;
                    }
                    t8 = _mm256_set1_ps(thr);
                }
                j += 8;
            }
        }
        super::scan_keys_scalar(s, a, c, j, thr, hit)
    }

    /// Dot product of the first `min(q.len(), x.len())` elements.
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dot_f32_avx2(q: &[f32], x: &[f32]) -> f32 {
        let n = q.len().min(x.len());
        let (qp, xp) = (q.as_ptr(), x.as_ptr());
        // SAFETY: every load reads elements below `n` of both slices (the loop bounds); the
        // target features are the caller's obligation.
        unsafe {
            let mut acc = [_mm256_setzero_ps(); 4];
            let mut i = 0;
            while i + 32 <= n {
                for (u, a) in acc.iter_mut().enumerate() {
                    let o = i + 8 * u;
                    *a =
                        _mm256_fmadd_ps(_mm256_loadu_ps(qp.add(o)), _mm256_loadu_ps(xp.add(o)), *a);
                }
                i += 32;
            }
            while i + 8 <= n {
                acc[0] = _mm256_fmadd_ps(
                    _mm256_loadu_ps(qp.add(i)),
                    _mm256_loadu_ps(xp.add(i)),
                    acc[0],
                );
                i += 8;
            }
            let mut s = hsum256(_mm256_add_ps(
                _mm256_add_ps(acc[0], acc[1]),
                _mm256_add_ps(acc[2], acc[3]),
            ));
            while i < n {
                s += *qp.add(i) * *xp.add(i);
                i += 1;
            }
            s
        }
    }

    /// Dot product of the first `min(q.len(), x.len())` elements, `x` widened from f16.
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dot_f16_avx2(q: &[f32], x: &[f16]) -> f32 {
        let n = q.len().min(x.len());
        let (qp, xp) = (q.as_ptr(), x.as_ptr() as *const u16);
        // SAFETY: every load reads elements below `n` of both slices (8 f16 = 16 bytes for each
        // `_mm_loadu_si128`); the target features are the caller's obligation.
        unsafe {
            let mut acc = [_mm256_setzero_ps(); 4];
            let mut i = 0;
            while i + 32 <= n {
                for (u, a) in acc.iter_mut().enumerate() {
                    let o = i + 8 * u;
                    let h = _mm_loadu_si128(xp.add(o) as *const __m128i);
                    *a = _mm256_fmadd_ps(_mm256_loadu_ps(qp.add(o)), _mm256_cvtph_ps(h), *a);
                }
                i += 32;
            }
            while i + 8 <= n {
                let h = _mm_loadu_si128(xp.add(i) as *const __m128i);
                acc[0] = _mm256_fmadd_ps(_mm256_loadu_ps(qp.add(i)), _mm256_cvtph_ps(h), acc[0]);
                i += 8;
            }
            let mut s = hsum256(_mm256_add_ps(
                _mm256_add_ps(acc[0], acc[1]),
                _mm256_add_ps(acc[2], acc[3]),
            ));
            while i < n {
                s += *qp.add(i) * (*x.get_unchecked(i)).to_f32();
                i += 1;
            }
            s
        }
    }

    /// Dot product of the first `min(q.len(), x.len())` elements, `x` widened from i8.
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dot_i8_avx2(q: &[f32], x: &[i8]) -> f32 {
        let n = q.len().min(x.len());
        let (qp, xp) = (q.as_ptr(), x.as_ptr());
        // SAFETY: every load reads elements below `n` of both slices (8 i8 = 8 bytes for each
        // `_mm_loadl_epi64`); the target features are the caller's obligation.
        unsafe {
            let mut acc = [_mm256_setzero_ps(); 4];
            let mut i = 0;
            while i + 32 <= n {
                for (u, a) in acc.iter_mut().enumerate() {
                    let o = i + 8 * u;
                    let b = _mm_loadl_epi64(xp.add(o) as *const __m128i);
                    let f = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b));
                    *a = _mm256_fmadd_ps(_mm256_loadu_ps(qp.add(o)), f, *a);
                }
                i += 32;
            }
            while i + 8 <= n {
                let b = _mm_loadl_epi64(xp.add(i) as *const __m128i);
                let f = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b));
                acc[0] = _mm256_fmadd_ps(_mm256_loadu_ps(qp.add(i)), f, acc[0]);
                i += 8;
            }
            let mut s = hsum256(_mm256_add_ps(
                _mm256_add_ps(acc[0], acc[1]),
                _mm256_add_ps(acc[2], acc[3]),
            ));
            while i < n {
                s += *qp.add(i) * f32::from(*xp.add(i));
                i += 1;
            }
            s
        }
    }

    /// Widen the first `min(x.len(), out.len())` f16 values of `x` into `out`.
    ///
    /// # Safety
    /// The CPU must support AVX and F16C.
    #[target_feature(enable = "avx2,f16c")]
    pub(super) unsafe fn f16_to_f32_f16c(x: &[f16], out: &mut [f32]) {
        let n = x.len().min(out.len());
        let (xp, op) = (x.as_ptr() as *const u16, out.as_mut_ptr());
        // SAFETY: every load and store touches elements below `n` of its slice; the target
        // features are the caller's obligation.
        unsafe {
            let mut i = 0;
            while i + 8 <= n {
                let h = _mm_loadu_si128(xp.add(i) as *const __m128i);
                _mm256_storeu_ps(op.add(i), _mm256_cvtph_ps(h));
                i += 8;
            }
            while i < n {
                *op.add(i) = (*x.get_unchecked(i)).to_f32();
                i += 1;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------

/// L2 norms of `n × dim` row-major f32 vectors (parallel); what the store precomputes.
pub fn row_norms(x: &[f32], dim: usize) -> Vec<f32> {
    if dim == 0 {
        return Vec::new();
    }
    let level = simd_level();
    x.par_chunks(dim)
        .map(|r| dot_f32(level, r, r).sqrt())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::naive_dot;
    use rand::{Rng, SeedableRng};

    struct Owned {
        dim: usize,
        f32s: Vec<f32>,
        f16s: Vec<f16>,
        q: Vec<i8>,
        scales: Vec<f32>,
        norms32: Vec<f32>,
        norms16: Vec<f32>,
        norms8: Vec<f32>,
    }

    impl Owned {
        fn random(n: usize, dim: usize, seed: u64) -> Self {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let f32s: Vec<f32> = (0..n * dim).map(|_| rng.gen_range(-1.0..1.0)).collect();
            let f16s: Vec<f16> = f32s.iter().map(|&v| f16::from_f32(v)).collect();
            let mut q = Vec::new();
            let mut scales = Vec::new();
            for r in f32s.chunks(dim) {
                let m = r.iter().fold(0f32, |a, v| a.max(v.abs())).max(1e-12);
                let s = m / 127.0;
                scales.push(s);
                q.extend(r.iter().map(|v| (v / s).round() as i8));
            }
            let norm = |it: &mut dyn Iterator<Item = f32>| it.map(|v| v * v).sum::<f32>().sqrt();
            let norms32 = f32s
                .chunks(dim)
                .map(|r| norm(&mut r.iter().copied()))
                .collect();
            let norms16 = f16s
                .chunks(dim)
                .map(|r| norm(&mut r.iter().map(|v| v.to_f32())))
                .collect();
            let norms8 = q
                .chunks(dim)
                .zip(&scales)
                .map(|(r, s)| norm(&mut r.iter().map(|&v| f32::from(v) * s)))
                .collect();
            Owned {
                dim,
                f32s,
                f16s,
                q,
                scales,
                norms32,
                norms16,
                norms8,
            }
        }

        fn view(&self, dt: usize, r0: usize, r1: usize) -> VectorsRef<'_> {
            let d = self.dim;
            let (data, norms) = match dt {
                0 => (VectorData::F32(&self.f32s[r0 * d..r1 * d]), &self.norms32),
                1 => (VectorData::F16(&self.f16s[r0 * d..r1 * d]), &self.norms16),
                _ => (
                    VectorData::I8 {
                        q: &self.q[r0 * d..r1 * d],
                        scales: &self.scales[r0..r1],
                    },
                    &self.norms8,
                ),
            };
            VectorsRef {
                dim: d,
                count: r1 - r0,
                data,
                norms: &norms[r0..r1],
            }
        }
    }

    /// Brute force in f64 on the dequantized rows.
    fn reference(v: &VectorsRef<'_>, queries: &[f32], k: usize, metric: Metric) -> Vec<Vec<i64>> {
        let d = v.dim;
        let mut row = vec![0f32; d];
        let rows: Vec<Vec<f32>> = (0..v.count)
            .map(|i| {
                v.row_f32(i, &mut row);
                row.clone()
            })
            .collect();
        queries
            .chunks(d)
            .map(|q| {
                let mut s: Vec<(f64, i64)> = rows
                    .iter()
                    .enumerate()
                    .map(|(i, x)| {
                        let dot: f64 = q.iter().zip(x).map(|(a, b)| *a as f64 * *b as f64).sum();
                        let qq: f64 = q.iter().map(|a| (*a as f64).powi(2)).sum();
                        let xx: f64 = x.iter().map(|a| (*a as f64).powi(2)).sum();
                        let key = match metric {
                            Metric::InnerProduct => dot,
                            Metric::Cosine => dot / (qq.sqrt() * xx.sqrt()),
                            Metric::L2 => -(qq - 2.0 * dot + xx),
                        };
                        (key, i as i64)
                    })
                    .collect();
                s.sort_by(|a, b| b.0.total_cmp(&a.0));
                s.iter().take(k).map(|p| p.1).collect()
            })
            .collect()
    }

    #[test]
    fn matches_brute_force_every_dtype_metric_and_path() {
        // dim 37 exercises the SIMD tails; 3 blocks exercise global ids.
        for &dim in &[37usize, 64] {
            let n = 700;
            let data = Owned::random(n, dim, 7);
            let qs = Owned::random(20, dim, 8).f32s;
            for dt in 0..3 {
                let whole = data.view(dt, 0, n);
                let blocks = vec![
                    (0u64, data.view(dt, 0, 300)),
                    (300u64, data.view(dt, 300, 301)),
                    (301u64, data.view(dt, 301, n)),
                ];
                for metric in [Metric::Cosine, Metric::InnerProduct, Metric::L2] {
                    for nq in [1usize, 3, 20] {
                        let q = &qs[..nq * dim];
                        let k = 10;
                        let got = exact_search(&blocks, q, k, metric).unwrap();
                        let want = reference(&whole, q, k, metric);
                        for (qi, w) in want.iter().enumerate() {
                            let g = &got.ids[qi * k..(qi + 1) * k];
                            let overlap = g.iter().filter(|i| w.contains(i)).count();
                            assert!(overlap >= k - 1, "dt {dt} {metric:?} nq {nq}: {g:?} {w:?}");
                            assert_eq!(g[0], w[0], "dt {dt} {metric:?} nq {nq}");
                        }
                        // Scores are sorted best first.
                        for qi in 0..nq {
                            let s = &got.scores[qi * k..(qi + 1) * k];
                            for p in s.windows(2) {
                                if metric.higher_is_better() {
                                    assert!(p[0] >= p[1]);
                                } else {
                                    assert!(p[0] <= p[1]);
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn scores_follow_the_metric_convention() {
        let dim = 5;
        let x = [1.0f32, 0.0, 0.0, 0.0, 0.0, 0.0, 2.0, 0.0, 0.0, 0.0];
        let norms = [1.0f32, 2.0];
        let v = VectorsRef {
            dim,
            count: 2,
            data: VectorData::F32(&x),
            norms: &norms,
        };
        let q = [0.0f32, 1.0, 0.0, 0.0, 0.0];
        let r = exact_search(&[(10, v)], &q, 3, Metric::InnerProduct).unwrap();
        assert_eq!(r.ids, vec![11, 10, -1]);
        assert_eq!(&r.scores[..2], &[2.0, 0.0]);
        assert!(r.scores[2].is_nan());
        let r = exact_search(&[(10, v)], &q, 2, Metric::Cosine).unwrap();
        assert_eq!(r.scores, vec![1.0, 0.0]);
        let r = exact_search(&[(10, v)], &q, 2, Metric::L2).unwrap();
        assert_eq!(r.ids, vec![11, 10]);
        assert_eq!(r.scores, vec![1.0, 2.0]);
    }

    #[test]
    fn merge_equals_global_topk() {
        let dim = 16;
        let n = 1000;
        let data = Owned::random(n, dim, 3);
        let qs = Owned::random(4, dim, 4).f32s;
        for metric in [Metric::Cosine, Metric::L2] {
            let global = exact_search(&[(0, data.view(0, 0, n))], &qs, 15, metric).unwrap();
            let parts: Vec<SearchResult> = [(0usize, 400usize), (400, 999), (999, 1000)]
                .iter()
                .map(|&(a, b)| {
                    exact_search(&[(a as u64, data.view(0, a, b))], &qs, 15, metric).unwrap()
                })
                .collect();
            let merged = merge_topk(&parts, 15, metric);
            assert_eq!(merged.ids, global.ids);
        }
    }

    #[test]
    fn merge_breaks_ties_by_id() {
        // Equal scores in several parts, listed in any order: smaller id first, whatever the
        // order of the parts, and the k-th place goes to the smaller id too.
        let part = |ids: Vec<i64>, scores: Vec<f32>| SearchResult {
            nq: 1,
            k: ids.len(),
            ids,
            scores,
        };
        let a = part(vec![30, 12, 5], vec![0.9, 0.5, 0.5]);
        let b = part(vec![2, 40, 7], vec![0.9, 0.5, 0.1]);
        let c = part(vec![11, -1], vec![0.5, f32::NAN]);
        for parts in [vec![a.clone(), b.clone(), c.clone()], vec![c, b, a]] {
            let m = merge_topk(&parts, 5, Metric::Cosine);
            assert_eq!(m.ids, vec![2, 30, 5, 11, 12]);
            assert_eq!(m.scores, vec![0.9, 0.9, 0.5, 0.5, 0.5]);
            let m = merge_topk(&parts, 4, Metric::L2);
            assert_eq!(m.ids, vec![7, 5, 11, 12]);
        }
    }

    #[test]
    fn merge_lists_checks_the_lists_then_merges_like_merge_topk() {
        let part = |nq: usize, ids: Vec<i64>, scores: Vec<f32>| SearchResult {
            nq,
            k: ids.len() / nq,
            ids,
            scores,
        };
        let a = part(2, vec![4, 1, 9, -1], vec![0.5, 0.7, 0.2, f32::NAN]);
        let b = part(2, vec![3, 8, 6, 2], vec![0.7, 0.1, 0.2, 0.3]);
        let parts = [a.clone(), b.clone()];
        for (higher, metric) in [(true, Metric::Cosine), (false, Metric::L2)] {
            let m = merge_lists(&parts, 5, higher).unwrap();
            let want = merge_topk(&parts, 5, metric);
            assert_eq!((&m.ids, m.nq, m.k), (&want.ids, 2, 5));
        }
        // five candidates for two places each: padded past them, never beyond
        let m = merge_lists(&parts, 5, true).unwrap();
        assert_eq!(m.ids, vec![1, 3, 4, 8, -1, 2, 6, 9, -1, -1]);
        assert!(m.scores[4].is_nan() && m.scores[8].is_nan());
        let short = part(1, vec![1], vec![0.5]);
        let err = merge_lists(&[a.clone(), short], 2, true).unwrap_err();
        assert!(matches!(err, Error::Shape(_)), "{err}");
        let torn = SearchResult {
            scores: vec![0.5],
            ..b
        };
        assert!(matches!(
            merge_lists(&[a.clone(), torn], 2, true),
            Err(Error::Shape(_))
        ));
        assert!(matches!(
            merge_lists(&[], 2, true),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            merge_lists(&[a], 0, true),
            Err(Error::InvalidArgument(_))
        ));
    }

    #[test]
    fn bad_inputs_are_clear_errors() {
        let data = Owned::random(10, 8, 1);
        let b = [(0u64, data.view(0, 0, 10))];
        let q = vec![0.5f32; 8];
        assert!(matches!(
            exact_search(&b, &q, 0, Metric::Cosine),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            exact_search(&b, &q[..7], 1, Metric::Cosine),
            Err(Error::Shape(_))
        ));
        let mut bad = q.clone();
        bad[3] = f32::NAN;
        assert!(matches!(
            exact_search(&b, &bad, 1, Metric::Cosine),
            Err(Error::DType(_))
        ));
        let other = Owned::random(10, 4, 1);
        let mixed = [(0u64, data.view(0, 0, 10)), (10u64, other.view(0, 0, 10))];
        assert!(matches!(
            exact_search(&mixed, &q, 1, Metric::Cosine),
            Err(Error::Shape(_))
        ));
        assert!(exact_search(&[], &q, 1, Metric::Cosine).is_err());
        let r = exact_search_dim(&[], 8, &q, 2, Metric::Cosine).unwrap();
        assert_eq!(r.ids, vec![-1, -1]);
    }

    #[test]
    fn kernels_agree_with_scalar() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        for n in [1usize, 7, 16, 63, 64, 65, 384, 391] {
            let a: Vec<f32> = (0..n).map(|_| rng.gen_range(-1.0..1.0)).collect();
            let b: Vec<f32> = (0..n).map(|_| rng.gen_range(-1.0..1.0)).collect();
            let h: Vec<f16> = b.iter().map(|&v| f16::from_f32(v)).collect();
            let c: Vec<i8> = (0..n).map(|_| rng.gen_range(-127..=127)).collect();
            let want32 = naive_dot(&a, &b);
            let hf: Vec<f32> = h.iter().map(|v| v.to_f32()).collect();
            let cf: Vec<f32> = c.iter().map(|&v| f32::from(v)).collect();
            let level = simd_level();
            assert!((dot_f32(level, &a, &b) - want32).abs() < 1e-4);
            assert!((dot_f16(level, &a, &h) - naive_dot(&a, &hf)).abs() < 1e-4);
            assert!((dot_i8(level, &a, &c) - naive_dot(&a, &cf)).abs() < 1e-2);
            let mut out = vec![0f32; n];
            f16_to_f32(level, &h, &mut out);
            assert_eq!(out, hf);
            // The threshold scan sees exactly the hits of a plain loop, with the same keys.
            let thr0 = if n > 8 { 0.2 } else { f32::NEG_INFINITY };
            let record = |v: &mut Vec<(usize, f32)>, j: usize, key: f32| {
                v.push((j, key));
                // Raise the bar after each hit, as a filling heap does.
                key.min(0.5)
            };
            let (mut got, mut want) = (Vec::new(), Vec::new());
            let t1 = scan_keys(level, &a, &b, &cf, thr0, &mut |j, k| record(&mut got, j, k));
            let t2 = scan_keys_scalar(&a, &b, &cf, 0, thr0, &mut |j, k| record(&mut want, j, k));
            assert_eq!(got, want);
            assert_eq!(t1, t2);
        }
    }
}
