//! pyo3 glue: the `tttnn._tttnn` extension module. Nothing here computes anything: it converts
//! Python values to Rust values (`convert`), releases the GIL, calls the core, and maps errors
//! once (`to_py`).

use pyo3::create_exception;
use pyo3::exceptions::{PyBlockingIOError, PyIndexError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;

use crate::error::Error;

mod convert;
mod files;
mod knn;
mod lock;
mod pack;
mod select;
mod store;

create_exception!(
    _tttnn,
    CorruptIndexError,
    PyValueError,
    "A store or index file is truncated, corrupted, inconsistent with its manifest, or written by an unsupported format version."
);

create_exception!(
    _tttnn,
    StoreLockedError,
    PyBlockingIOError,
    "Another writer (this or another process) holds the writer lock of the directory (a store or a run)."
);

/// The single place where core errors become Python exceptions.
pub(crate) fn to_py(err: Error) -> PyErr {
    let msg = err.to_string();
    match err {
        Error::Io { source, .. } => {
            // Keep errno-based subclasses (FileNotFoundError, PermissionError, ...), and the
            // errno itself (`e.errno == errno.ENOSPC`); the message, naming the file, stays the
            // text of the exception (setting `strerror` or `filename` would replace it).
            let errno = source.raw_os_error();
            let err = PyErr::from(std::io::Error::new(source.kind(), msg));
            if let Some(errno) = errno {
                Python::attach(|py| {
                    let _ = err.value(py).setattr("errno", errno);
                });
            }
            err
        }
        Error::Shape(_) | Error::DType(_) | Error::InvalidArgument(_) => PyValueError::new_err(msg),
        Error::OutOfRange(_) => PyIndexError::new_err(msg),
        Error::Corrupt { .. } | Error::Version { .. } | Error::NonFinite { .. } => {
            CorruptIndexError::new_err(msg)
        }
        Error::Locked { .. } => StoreLockedError::new_err(msg),
        Error::Index(_) => PyRuntimeError::new_err(msg),
    }
}

/// Run core work with the GIL released. Core errors go through [`to_py`]; a panic (a bug) is
/// caught here and raised as a RuntimeError, so none crosses into Python as a
/// `PanicException` (which `except Exception` does not catch).
pub(crate) fn detach<T: Send>(
    py: Python<'_>,
    work: impl FnOnce() -> crate::Result<T> + Send,
) -> PyResult<T> {
    py.detach(|| std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)))
        .map_err(|panic| {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            PyRuntimeError::new_err(format!(
                "internal error in tttnn (please report it): {what}"
            ))
        })?
        .map_err(to_py)
}

#[pymodule]
#[pyo3(name = "_tttnn")]
fn tttnn_ext(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("CorruptIndexError", m.py().get_type::<CorruptIndexError>())?;
    m.add("StoreLockedError", m.py().get_type::<StoreLockedError>())?;
    store::register(m)?;
    files::register(m)?;
    knn::register(m)?;
    lock::register(m)?;
    pack::register(m)?;
    select::register(m)?;
    Ok(())
}
