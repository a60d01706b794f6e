//! pyo3 glue: the `tttnn._tttnn` extension module. Nothing here computes anything: it converts
//! Python values to Rust values, releases the GIL, calls the core, and maps errors once.

use numpy::{
    PyArray2, PyArrayDescrMethods, PyArrayMethods, PyReadonlyArray2, PyUntypedArray,
    PyUntypedArrayMethods,
};
use pyo3::create_exception;
use pyo3::exceptions::{PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString};

use crate::error::Error;

mod knn;
mod pack;
mod store;

create_exception!(
    _tttnn,
    CorruptIndexError,
    PyValueError,
    "A store or index file is truncated, corrupted, inconsistent with its manifest, or written by an unsupported format version."
);

/// The single place where core errors become Python exceptions.
pub(crate) fn to_py(err: Error) -> PyErr {
    let msg = err.to_string();
    match err {
        Error::Io { source, .. } => {
            // Keep errno-based subclasses (FileNotFoundError, PermissionError, ...).
            PyErr::from(std::io::Error::new(source.kind(), msg))
        }
        Error::Shape(_) | Error::DType(_) | Error::InvalidArgument(_) => PyValueError::new_err(msg),
        Error::Corrupt { .. } | Error::Version { .. } => CorruptIndexError::new_err(msg),
        Error::Index(_) => PyRuntimeError::new_err(msg),
    }
}

pub(crate) fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_default()
}

pub(crate) fn dtype_str(arr: &Bound<'_, PyUntypedArray>) -> String {
    arr.dtype().str().map(|s| s.to_string()).unwrap_or_default()
}

/// A C-contiguous float32 `(n, dim)` array from `obj`: float32 arrays are borrowed as they are,
/// float16/float64 arrays and nested lists of numbers are converted; other dtypes are rejected.
/// A 1-D array becomes one row when `allow_1d`; `dim`, when given, is checked.
pub(crate) fn f32_matrix<'py>(
    obj: &Bound<'py, PyAny>,
    name: &str,
    dim: Option<usize>,
    allow_1d: bool,
) -> PyResult<PyReadonlyArray2<'py, f32>> {
    let py = obj.py();
    let np = py.import("numpy")?;
    let f32_dtype = np.getattr("float32")?;
    let arr = if let Ok(arr) = obj.cast::<PyUntypedArray>() {
        let kind = arr.dtype().kind();
        if kind != b'f' {
            return Err(PyValueError::new_err(format!(
                "{name} must be a floating-point array (float32, float16 or float64 are \
                 converted to float32), got dtype {}",
                dtype_str(arr)
            )));
        }
        np.call_method1("ascontiguousarray", (arr, &f32_dtype))?
    } else if obj.is_instance_of::<PyString>() || obj.is_instance_of::<PyBytes>() {
        return Err(PyTypeError::new_err(format!(
            "{name} must be a float array, got {}",
            type_name(obj)
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
                "{name} must be a 2-D array{}{}, got shape {:?}",
                dim.map(|d| format!(" (n, {d})")).unwrap_or_default(),
                if allow_1d { " or 1-D (dim,)" } else { "" },
                arr.shape()
            )))
        }
    };
    let arr = arr.cast_into::<PyArray2<f32>>()?;
    let shape = arr.shape();
    if let Some(dim) = dim {
        if shape[1] != dim {
            return Err(PyValueError::new_err(format!(
                "{name} have dimension {}, the store has dim {dim} (shape {:?})",
                shape[1], shape
            )));
        }
    }
    arr.try_readonly()
        .map_err(|e| PyValueError::new_err(format!("cannot borrow {name}: {e}")))
}

#[pymodule]
#[pyo3(name = "_tttnn")]
fn tttnn_ext(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("CorruptIndexError", m.py().get_type::<CorruptIndexError>())?;
    store::register(m)?;
    knn::register(m)?;
    pack::register(m)?;
    Ok(())
}
