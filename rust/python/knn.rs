//! Bindings for `crate::knn`: `exact_search` over an in-memory float32 matrix.

use numpy::{
    PyArray1, PyArray2, PyArrayDescrMethods, PyArrayMethods, PyReadonlyArray2, PyUntypedArray,
    PyUntypedArrayMethods,
};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString};

use super::to_py;
use crate::knn;
use crate::vectors::{Metric, VectorData, VectorsRef};

/// A C-contiguous float32 2-D array from `obj` (float arrays of other widths and nested lists are
/// converted; a 1-D array becomes one row when `allow_1d`).
fn f32_matrix<'py>(
    obj: &Bound<'py, PyAny>,
    name: &str,
    allow_1d: bool,
) -> PyResult<PyReadonlyArray2<'py, f32>> {
    let py = obj.py();
    let np = py.import("numpy")?;
    let f32_dtype = np.getattr("float32")?;
    let arr = if let Ok(arr) = obj.cast::<PyUntypedArray>() {
        if arr.dtype().kind() != b'f' {
            return Err(PyValueError::new_err(format!(
                "{name} must be a floating-point array, got dtype {}",
                arr.dtype()
            )));
        }
        np.call_method1("ascontiguousarray", (arr, &f32_dtype))?
    } else if obj.is_instance_of::<PyString>() || obj.is_instance_of::<PyBytes>() {
        return Err(PyTypeError::new_err(format!(
            "{name} must be a float array"
        )));
    } else {
        np.call_method1("asarray", (obj, &f32_dtype)).map_err(|e| {
            PyValueError::new_err(format!(
                "{name} must be a float array or a nested list of numbers: {e}"
            ))
        })?
    };
    let arr = arr.cast_into::<PyUntypedArray>()?;
    let arr = match arr.ndim() {
        2 => arr.into_any(),
        1 if allow_1d => arr.call_method1("reshape", ((1, arr.shape()[0]),))?,
        _ => {
            return Err(PyValueError::new_err(format!(
                "{name} must be a 2-D array{}, got shape {:?}",
                if allow_1d { " or a 1-D vector" } else { "" },
                arr.shape()
            )))
        }
    };
    let arr = arr.cast_into::<PyArray2<f32>>()?;
    arr.try_readonly()
        .map_err(|e| PyValueError::new_err(format!("cannot borrow {name}: {e}")))
}

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
    if k < 1 {
        return Err(PyValueError::new_err(format!(
            "k must be positive, got {k}"
        )));
    }
    let x = f32_matrix(vectors, "vectors", false)?;
    let q = f32_matrix(queries, "queries", true)?;
    let (n, dim) = (x.shape()[0], x.shape()[1]);
    if q.shape()[1] != dim {
        return Err(PyValueError::new_err(format!(
            "queries have dimension {}, vectors have dimension {dim}",
            q.shape()[1]
        )));
    }
    let xs = x.as_slice()?;
    let qs = q.as_slice()?;
    let k = k as usize;
    let r = py
        .detach(|| {
            // One pass: a norm is finite exactly when its row is (barring |x| > 1e19).
            let norms = knn::row_norms(xs, dim);
            if let Some(row) = norms.iter().position(|v| !v.is_finite()) {
                return Err(crate::Error::DType(format!(
                    "vector {row} has a non-finite value (or one too large for float32 norms)"
                )));
            }
            let block = VectorsRef {
                dim,
                count: n,
                data: VectorData::F32(xs),
                norms: &norms,
            };
            knn::exact_search_dim(&[(0, block)], dim, qs, k, metric)
        })
        .map_err(to_py)?;
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
