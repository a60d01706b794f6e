//! Bindings for `crate::select`: `sift_select` over the retrieved candidates' rows.

use numpy::{PyArray1, PyUntypedArrayMethods};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use super::convert::{count, f32_matrix, Int};
use super::detach;
use crate::select;

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(sift_select, m)?)?;
    Ok(())
}

/// SIFT (Hübotter et al., ICLR 2025): `n` greedy picks among the rows of `candidates` `(K, d)`
/// that minimise the posterior variance at `query` `(d,)` of a linear-kernel Gaussian process
/// with noise variance `lam`; ties go to the lowest row. A row can be picked again. With
/// `alpha`, pick t (1-based) is dropped where sqrt(variance_t) > 1 / (alpha * t).
///
/// Returns `(indices int64 (m,), variances float64 (m,))`: candidate rows in pick order and the
/// posterior variance after each pick (m = n, or fewer with `alpha`). ValueError for shapes that
/// do not match, NaN/inf, n < 1, or lam / alpha that are not positive numbers.
#[pyfunction]
#[pyo3(signature = (candidates, query, n, *, lam=0.01, alpha=None))]
#[allow(clippy::type_complexity)]
fn sift_select<'py>(
    py: Python<'py>,
    candidates: &Bound<'py, PyAny>,
    query: &Bound<'py, PyAny>,
    n: Int,
    lam: f64,
    alpha: Option<f64>,
) -> PyResult<(Bound<'py, PyArray1<i64>>, Bound<'py, PyArray1<f64>>)> {
    let n = count(n.get("n")?);
    let x = f32_matrix(candidates, "candidates", None, false)?;
    let dim = x.shape()[1];
    let q = f32_matrix(query, "query", Some(dim), true)?;
    if q.shape()[0] != 1 {
        return Err(PyValueError::new_err(format!(
            "query must be one vector of shape ({dim},), got shape {:?}",
            q.shape()
        )));
    }
    let (xs, qs) = (x.as_slice()?, q.as_slice()?);
    let sel = detach(py, || select::sift_select(xs, qs, n, lam, alpha))?;
    // Candidate rows are < K <= isize::MAX, so they fit in i64.
    let indices: Vec<i64> = sel.indices.iter().map(|&j| j as i64).collect();
    Ok((
        PyArray1::from_vec(py, indices),
        PyArray1::from_vec(py, sel.variances),
    ))
}
