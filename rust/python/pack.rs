//! Bindings for `crate::pack`: `pack_windows` and `dedup_neighbors`.
//!
//! Documents arrive as numpy integer arrays (uint32 borrowed, zero-copy) or sequences of ints
//! (range-checked and converted, see `convert::int_array`).
//! Results are numpy arrays that take ownership of the core's `Vec`s (no copy).

use numpy::{PyArray1, PyArray2, PyArrayMethods, PyUntypedArray, PyUntypedArrayMethods};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use super::convert::{count, int_array, sequence, slices, text_bytes, Int, Ints};
use super::detach;
use crate::pack::{self, PackOptions, PackedAs};

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(pack_windows, m)?)?;
    m.add_function(wrap_pyfunction!(dedup_neighbors, m)?)?;
    Ok(())
}

/// [`PackOptions`] from the Python keyword arguments (shared with `EmbeddingStore`); the core
/// checks them.
pub(crate) fn pack_options(
    context_length: &Int,
    eos_id: Option<&Int>,
    pack_short: bool,
    max_windows_per_doc: Option<&Int>,
    pad_id: &Int,
) -> PyResult<PackOptions> {
    let token = |name: &str, v: i64| {
        u32::try_from(v).map_err(|_| {
            PyValueError::new_err(format!("{name} must be in 0..={}, got {v}", u32::MAX))
        })
    };
    Ok(PackOptions {
        context_length: count(context_length.get("context_length")?),
        eos_id: Int::get_opt(eos_id, "eos_id")?
            .map(|e| token("eos_id", e))
            .transpose()?,
        pack_short,
        max_windows_per_doc: Int::get_opt(max_windows_per_doc, "max_windows_per_doc")?.map(count),
        pad_id: token("pad_id", pad_id.get("pad_id")?)?,
    })
}

pub(crate) type PackedArrays<'py> = (
    Bound<'py, PyArray2<i64>>,
    Bound<'py, PyArray1<i64>>,
    Bound<'py, PyArray1<i64>>,
);

/// `(input_ids (W, L), lengths (W,), doc_index (W,))` owning the core's vectors.
pub(crate) fn packed_to_numpy<'py>(
    py: Python<'py>,
    p: PackedAs<i64>,
) -> PyResult<PackedArrays<'py>> {
    let ids = PyArray1::from_vec(py, p.input_ids).reshape([p.n_windows, p.context_length])?;
    Ok((
        ids,
        PyArray1::from_vec(py, p.lengths),
        PyArray1::from_vec(py, p.doc_index),
    ))
}

/// Cut documents (in order) into non-overlapping windows of `context_length` tokens, one
/// optimizer step per window as in Hardt & Sun (2500 tokens, context 1024 -> 1024, 1024, 452).
///
/// `docs` is a sequence of 1-D integer arrays (uint32 is borrowed without a copy; other integer
/// dtypes and lists of ints are range-checked and converted). Empty documents give no window.
/// `max_windows_per_doc=N` keeps each document's first N windows. `pack_short=True` (needs
/// `eos_id`) packs short documents and tails greedily, in order, into a shared window after an
/// `eos_id` separator when they fit in the space left; a full window closes the shared one, so
/// windows stay in document order and a short document is never split.
///
/// Returns `(input_ids (W, L) int64 padded with pad_id, lengths (W,) int64, doc_index (W,) int64)`:
/// row i holds `lengths[i]` real tokens; `doc_index[i]` is the document row i starts in.
#[pyfunction]
#[pyo3(signature = (docs, context_length, *, eos_id=None, pack_short=false, max_windows_per_doc=None, pad_id=Int::Fits(0)),
    text_signature = "(docs, context_length, *, eos_id=None, pack_short=False, \
    max_windows_per_doc=None, pad_id=0)")]
fn pack_windows<'py>(
    py: Python<'py>,
    docs: &Bound<'py, PyAny>,
    context_length: Int,
    eos_id: Option<Int>,
    pack_short: bool,
    max_windows_per_doc: Option<Int>,
    pad_id: Int,
) -> PyResult<PackedArrays<'py>> {
    let opts = pack_options(
        &context_length,
        eos_id.as_ref(),
        pack_short,
        max_windows_per_doc.as_ref(),
        &pad_id,
    )?;
    if let Ok(arr) = docs.cast::<PyUntypedArray>() {
        if arr.ndim() != 2 {
            return Err(PyValueError::new_err(format!(
                "docs must be a sequence of 1-D token id arrays (or a 2-D array of rows), got an \
                 array of shape {:?}",
                arr.shape()
            )));
        }
    }
    let items = sequence(Some(docs), "docs")?.unwrap_or_default();
    let docs = items
        .iter()
        .enumerate()
        .map(|(i, d)| int_array::<u32>(d, &format!("document {i}"), "token id"))
        .collect::<PyResult<Vec<_>>>()?;
    let slices = docs
        .iter()
        .map(Ints::as_slice)
        .collect::<PyResult<Vec<_>>>()?;
    let packed = detach(py, || pack::pack_windows_as::<i64>(&slices, &opts))?;
    packed_to_numpy(py, packed)
}

/// `(kept indices, [(dropped index, reason)])`.
type DedupResult = (Vec<usize>, Vec<(usize, &'static str)>);

/// Leakage guard: drop candidates identical to the query or to an earlier kept candidate after
/// normalisation (Unicode lowercase, whitespace collapsed; compared by xxh3-64 hash), or whose
/// similarity to either is `>= threshold`. Similarity is the overlap coefficient
/// `|A∩B| / min(|A|,|B|)` of hashed word 5-shingle sets (word sets when a text has < 5 words), so
/// lightly edited copies and excerpts/supersets are both caught. Whitespace-only candidates are
/// dropped as "empty"; an empty query matches nothing.
///
/// Returns `(kept indices, [(dropped index, reason)])` in input order; reasons are "empty",
/// "exact-duplicate-of-query", "near-duplicate-of-query", "exact-duplicate", "near-duplicate".
#[pyfunction]
#[pyo3(signature = (query, candidates, *, threshold=0.9))]
fn dedup_neighbors(
    py: Python<'_>,
    query: &Bound<'_, PyAny>,
    candidates: &Bound<'_, PyAny>,
    threshold: f64,
) -> PyResult<DedupResult> {
    let q = text_bytes(query, &|| "query".to_string())?;
    let items = sequence(Some(candidates), "candidates")?.unwrap_or_default();
    let texts = items
        .iter()
        .enumerate()
        .map(|(i, o)| text_bytes(o, &|| format!("candidate {i}")))
        .collect::<PyResult<Vec<_>>>()?;
    let texts = slices(&texts);
    let r = detach(py, || pack::dedup_neighbors_utf8(&q, &texts, threshold))?;
    Ok((
        r.kept,
        r.dropped
            .into_iter()
            .map(|(i, d)| (i, d.as_str()))
            .collect(),
    ))
}
