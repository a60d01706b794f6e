//! Bindings for `crate::knn`: `exact_search` over an in-memory float32 matrix, and `merge_topk`,
//! the core's merge of per-shard lists for searches spread over processes.

use numpy::{PyArray1, PyArray2, PyArrayMethods, PyUntypedArrayMethods};
use pyo3::prelude::*;

use pyo3::exceptions::PyValueError;

use super::convert::{count, f32_matrix, i64_matrix, Int};
use super::{detach, to_py};
use crate::knn;
use crate::vectors::{Metric, SearchResult};

/// Exact top-k over an in-memory `(n, dim)` f32 array (same kernels as the store).
///
/// `queries` is `(nq, dim)` or `(dim,)`; returns `(ids int64 (nq, k), scores float32 (nq, k))`,
/// best first: cosine and "ip" scores are similarities, "l2" scores squared distances. Rows with
/// fewer than k hits are padded with id -1 and score NaN.
#[pyfunction]
#[pyo3(signature = (vectors, queries, k, *, metric = "cosine"))]
#[allow(clippy::type_complexity)]
fn exact_search<'py>(
    py: Python<'py>,
    vectors: &Bound<'py, PyAny>,
    queries: &Bound<'py, PyAny>,
    k: Int,
    metric: &str,
) -> PyResult<(Bound<'py, PyArray2<i64>>, Bound<'py, PyArray2<f32>>)> {
    let k = count(k.get("k")?);
    let metric = Metric::parse(metric).map_err(to_py)?;
    let x = f32_matrix(vectors, "vectors", None, false)?;
    let q = f32_matrix(queries, "queries", None, true)?;
    let dim = x.shape()[1];
    let (xs, qs) = (x.as_slice()?, q.as_slice()?);
    let r = detach(py, || knn::exact_search_matrix(xs, dim, qs, k, metric))?;
    let ids = PyArray1::from_vec(py, r.ids).reshape([r.nq, r.k])?;
    let scores = PyArray1::from_vec(py, r.scores).reshape([r.nq, r.k])?;
    Ok((ids, scores))
}

/// Merge per-group top-k lists of the same queries into the top `k` of each query, in the order
/// of every search of the core: score by IEEE total order (best first: highest similarity, or
/// with `higher_is_better=False` smallest distance), ties by smaller id. `ids[i]` (int64) and
/// `scores[i]` (float32) are `(nq, k_i)`, global ids; entries with id -1 or a NaN score are
/// padding and skipped. Returns `(ids int64 (nq, k), scores float32 (nq, k))`, padded with id
/// -1 / score NaN where there are fewer than `k` candidates. Merging the searches of groups of
/// shards gives the search of all of them, bitwise.
#[pyfunction]
#[pyo3(signature = (ids, scores, k, *, higher_is_better = true))]
#[allow(clippy::type_complexity)]
fn merge_topk<'py>(
    py: Python<'py>,
    ids: Vec<Bound<'py, PyAny>>,
    scores: Vec<Bound<'py, PyAny>>,
    k: Int,
    higher_is_better: bool,
) -> PyResult<(Bound<'py, PyArray2<i64>>, Bound<'py, PyArray2<f32>>)> {
    let k = k.get("k")?;
    if ids.len() != scores.len() {
        return Err(PyValueError::new_err(format!(
            "{} id lists for {} score lists: give one of each per group",
            ids.len(),
            scores.len()
        )));
    }
    let mut arrays = Vec::with_capacity(ids.len());
    for (i, (ids, scores)) in ids.iter().zip(&scores).enumerate() {
        let a = i64_matrix(ids, &format!("ids[{i}]"))?;
        let s = f32_matrix(scores, &format!("scores[{i}]"), None, false)?;
        if a.shape() != s.shape() {
            return Err(PyValueError::new_err(format!(
                "ids[{i}] has shape {:?}, scores[{i}] {:?}: they must match",
                a.shape(),
                s.shape()
            )));
        }
        arrays.push((a, s));
    }
    let lists = arrays
        .iter()
        .map(|(a, s)| Ok((a.shape()[0], a.shape()[1], a.as_slice()?, s.as_slice()?)))
        .collect::<PyResult<Vec<_>>>()?;
    let r = detach(py, || {
        let parts: Vec<SearchResult> = lists
            .iter()
            .map(|&(nq, k, ids, scores)| SearchResult {
                nq,
                k,
                ids: ids.to_vec(),
                scores: scores.to_vec(),
            })
            .collect();
        knn::merge_lists(&parts, count(k), higher_is_better)
    })?;
    let ids = PyArray1::from_vec(py, r.ids).reshape([r.nq, r.k])?;
    let scores = PyArray1::from_vec(py, r.scores).reshape([r.nq, r.k])?;
    Ok((ids, scores))
}

/// The SIMD kernel set chosen at runtime for exact search ("avx2" or "scalar").
#[pyfunction]
fn _simd_kernels() -> &'static str {
    knn::simd_kernel_name()
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(exact_search, m)?)?;
    m.add_function(wrap_pyfunction!(merge_topk, m)?)?;
    m.add_function(wrap_pyfunction!(_simd_kernels, m)?)?;
    Ok(())
}
