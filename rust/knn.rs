//! Exact k-nearest-neighbor search over memory-mapped blocks of vectors.
//!
//! CONTRACT (owned by the knn helper; signatures are relied on by `store` and the bindings):
//! - `exact_search(blocks, queries, k, metric)`: `blocks` are `(global_start_id, VectorsRef)`,
//!   `queries` is row-major `nq × dim` f32. Returns the exact global top-k per query, best first,
//!   scores as described on [`Metric`]. Parallel over blocks/row ranges (rayon), SIMD dot kernels
//!   per dtype, batched queries as a blocked matrix product.
//! - `merge_topk(parts, metric)`: merge several `SearchResult`s (same nq, global ids) into one
//!   exact top-k.

use crate::error::Result;
use crate::vectors::{Metric, SearchResult, VectorsRef};

pub fn exact_search(
    blocks: &[(u64, VectorsRef<'_>)],
    queries: &[f32],
    k: usize,
    metric: Metric,
) -> Result<SearchResult> {
    let _ = (blocks, queries, k, metric);
    todo!("knn::exact_search")
}

pub fn merge_topk(parts: &[SearchResult], k: usize, metric: Metric) -> SearchResult {
    let _ = (parts, k, metric);
    todo!("knn::merge_topk")
}
