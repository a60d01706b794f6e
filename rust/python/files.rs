//! Bindings for `crate::files`: `atomic_write` and `append_bytes`, so the files Python writes
//! (run configs, results rows, plots, the model cache) follow the store's one rule: never
//! written through a symbolic link, replaced atomically.

use std::path::PathBuf;

use pyo3::prelude::*;

use super::convert::text_bytes;
use super::detach;
use crate::files;

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(atomic_write, m)?)?;
    m.add_function(wrap_pyfunction!(append_bytes, m)?)?;
    Ok(())
}

/// Replace the file `path` with `data` (bytes, or str written as UTF-8) atomically: a fresh
/// temporary file beside it (`.NAME.PID.N.tmp`, created exclusively and without following a
/// symbolic link) is written, fsynced and renamed over `path`, and the directory fsynced. A
/// reader sees the old content or the new, never a mix. OSError naming the path when `path` is
/// a symbolic link (never written through) or on any I/O error (disk full included).
#[pyfunction]
fn atomic_write(py: Python<'_>, path: PathBuf, data: &Bound<'_, PyAny>) -> PyResult<()> {
    let data = text_bytes(data, &|| "data".to_string())?;
    detach(py, || files::replace(&path, &[&data]).map(|_| ()))
}

/// Append `data` (bytes, or str written as UTF-8) to the file `path`, created when absent, and
/// fsync it (and its directory when the file was new). The file is opened without following a
/// symbolic link (`O_APPEND|O_NOFOLLOW`): a link at `path` is an OSError naming it, and so is
/// any I/O error (disk full included).
#[pyfunction]
fn append_bytes(py: Python<'_>, path: PathBuf, data: &Bound<'_, PyAny>) -> PyResult<()> {
    let data = text_bytes(data, &|| "data".to_string())?;
    detach(py, || files::append(&path, &data))
}
