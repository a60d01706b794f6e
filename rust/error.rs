//! One error enum for the whole core. The Python layer maps it to exceptions in one place
//! (`rust/python/mod.rs`): `Io` -> `OSError`, `Shape`/`DType`/`InvalidArgument` -> `ValueError`,
//! `OutOfRange` -> `IndexError`, `Corrupt`/`Version` -> `tttnn.CorruptIndexError` (a
//! `ValueError`), `Locked` -> `tttnn.StoreLockedError` (a `BlockingIOError`), `Index` ->
//! `RuntimeError`.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Wrong dimension, wrong number of elements, mismatched lengths.
    #[error("shape error: {0}")]
    Shape(String),
    /// Unknown or unsupported dtype, non-finite values.
    #[error("dtype error: {0}")]
    DType(String),
    /// Any other argument that is out of range.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A row id outside `0..len`.
    #[error("{0}")]
    OutOfRange(String),
    /// A file that exists but does not hold what its header or manifest says (truncated, checksum
    /// mismatch, bad magic, inconsistent manifest).
    #[error("{path}: corrupt: {msg}")]
    Corrupt { path: PathBuf, msg: String },
    /// A stored value that is not finite, found by a search (stores refuse them at append, so
    /// the file is corrupt); the store names the file.
    #[error("row {id} has a non-finite stored value (NaN or inf): the store is corrupt")]
    NonFinite { id: i64 },
    /// A file written by a format version this build does not read.
    #[error("{path}: unsupported format version {found} (this build reads version {supported})")]
    Version {
        path: PathBuf,
        found: u32,
        supported: u32,
    },
    /// Another handle (in this or another process) holds the writer lock of a directory (a
    /// store or a run).
    #[error("{path}: {msg}")]
    Locked { path: PathBuf, msg: String },
    /// Failures inside the ANN index (usearch) or other runtime failures.
    #[error("index error: {0}")]
    Index(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// Attach a path to an I/O error.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub fn corrupt(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Corrupt {
            path: path.into(),
            msg: msg.into(),
        }
    }
}
