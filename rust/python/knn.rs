//! Bindings for `crate::knn`: `exact_search` over an in-memory float32 matrix.

use numpy::{PyArray1, PyArray2, PyArrayMethods, PyUntypedArrayMethods};
use pyo3::prelude::*;

use super::convert::{count, f32_matrix};
use super::{detach, to_py};
use crate::knn;
use crate::vectors::Metric;

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
    k: i64,
    metric: &str,
) -> PyResult<(Bound<'py, PyArray2<i64>>, Bound<'py, PyArray2<f32>>)> {
    let metric = Metric::parse(metric).map_err(to_py)?;
    let x = f32_matrix(vectors, "vectors", None, false)?;
    let q = f32_matrix(queries, "queries", None, true)?;
    let dim = x.shape()[1];
    let (xs, qs) = (x.as_slice()?, q.as_slice()?);
    let r = detach(py, || {
        knn::exact_search_matrix(xs, dim, qs, count(k), metric)
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
    m.add_function(wrap_pyfunction!(_simd_kernels, m)?)?;
    Ok(())
}
