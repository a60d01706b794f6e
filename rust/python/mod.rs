//! pyo3 glue: the `tttnn._tttnn` extension module. Nothing here computes anything: it converts
//! Python values to Rust values, releases the GIL, calls the core, and maps errors once.

use pyo3::create_exception;
use pyo3::exceptions::{PyOSError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;

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

#[allow(dead_code)]
pub(crate) fn os_error(msg: String) -> PyErr {
    PyOSError::new_err(msg)
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
