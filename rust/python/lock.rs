//! Bindings for `crate::lock`: `DirLock`, the writer lock of a directory, for the directories
//! Python writes itself (evaluation runs). Stores take the same lock through their handles.

use std::path::PathBuf;
use std::sync::Mutex;

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;

use super::to_py;
use crate::lock::WriterLock;

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<DirLock>()?;
    Ok(())
}

/// The writer lock of a directory (it must exist): `DIR/.lock`, the lock a store's writer takes,
/// so one convention serves indexes and runs. `with DirLock(run, what="run"):` holds it for
/// the block; a second writer (this or another process) gets `StoreLockedError` at once, naming
/// the holder's pid and host. The kernel releases the lock when the holder's process ends, even
/// when killed. Readers take no lock and never wait. A symbolic link in place of the lock file
/// is refused (OSError). Not re-entrant.
#[pyclass(module = "tttnn._tttnn", frozen)]
pub struct DirLock {
    path: PathBuf,
    what: String,
    held: Mutex<Option<WriterLock>>,
}

impl DirLock {
    fn state(&self) -> PyResult<std::sync::MutexGuard<'_, Option<WriterLock>>> {
        self.held
            .lock()
            .map_err(|_| PyRuntimeError::new_err("DirLock state poisoned by a panic"))
    }
}

#[pymethods]
impl DirLock {
    /// `what` names the directory in the message a second writer gets ("run", "index").
    #[new]
    #[pyo3(signature = (path, *, what = "directory"))]
    fn new(path: PathBuf, what: &str) -> Self {
        DirLock {
            path,
            what: what.to_string(),
            held: Mutex::new(None),
        }
    }

    /// Take the lock without waiting; StoreLockedError when another writer holds it,
    /// RuntimeError when this object holds it already.
    fn acquire(&self) -> PyResult<()> {
        let mut held = self.state()?;
        if held.is_some() {
            return Err(PyRuntimeError::new_err(format!(
                "the lock of {} is already held by this DirLock",
                self.path.display()
            )));
        }
        *held = Some(WriterLock::acquire(&self.path, &self.what).map_err(to_py)?);
        Ok(())
    }

    /// Let the lock go (nothing happens when it is not held).
    fn release(&self) -> PyResult<()> {
        self.state()?.take();
        Ok(())
    }

    /// Whether this object holds the lock.
    #[getter]
    fn held(&self) -> PyResult<bool> {
        Ok(self.state()?.is_some())
    }

    /// The locked directory.
    #[getter]
    fn path(&self) -> String {
        self.path.to_string_lossy().into_owned()
    }

    /// Entering a `with` block takes the lock (see `acquire`).
    fn __enter__(slf: Py<Self>) -> PyResult<Py<Self>> {
        slf.get().acquire()?;
        Ok(slf)
    }

    /// Leaving the `with` block releases the lock.
    fn __exit__(
        &self,
        _exc_type: &Bound<'_, PyAny>,
        _exc: &Bound<'_, PyAny>,
        _tb: &Bound<'_, PyAny>,
    ) -> PyResult<bool> {
        self.release()?;
        Ok(false)
    }

    fn __repr__(&self) -> PyResult<String> {
        Ok(format!(
            "DirLock(path={:?}, what={:?}, held={})",
            self.path.to_string_lossy(),
            self.what,
            self.held()?
        ))
    }
}
