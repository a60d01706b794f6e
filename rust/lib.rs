//! tttnn core: the parts of test-time training on nearest neighbors that must be fast.
//!
//! * [`store`]: append-only, sharded, memory-mapped embedding store (f32, f16, i8) with text and
//!   token ids per document.
//! * [`ragged`]: flat files of variable-length records (document bytes, token ids) with u64 offsets.
//! * [`knn`]: exact search (SIMD, rayon, blocked matrix products) and top-k merging.
//! * [`hnsw`]: approximate search with usearch HNSW, saved and reopened as a memory-mapped view.
//! * [`pack`]: neighbor token ids into training windows, and neighbor de-duplication.
//! * [`select`]: which retrieved candidates to train on, in what order: nearest first, or SIFT.
//! * [`files`]: creating, replacing and appending to files without writing through a symbolic
//!   link: the one rule for every file the store, and the Python layer, writes.
//!
//! This crate has no Python in it unless the `python` feature is on: the pyo3 glue lives in
//! `rust/python/` only.

pub mod error;
pub mod files;
pub mod hnsw;
mod hnsw_file;
pub mod knn;
mod lock;
pub mod pack;
pub mod ragged;
pub mod select;
pub mod store;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod vectors;

#[cfg(feature = "python")]
mod python;

pub use error::{Error, Result};
pub use vectors::{DType, Metric, SearchResult, VectorsRef};
