//! Bindings for `crate::pack`: `pack_windows` and `dedup_neighbors`.
//!
//! Documents arrive as numpy integer arrays (borrowed, zero-copy, when 1-D and contiguous) or
//! sequences of ints; non-`uint32` ids are range-checked and converted with the GIL released.
//! Results are numpy arrays that take ownership of the core's `Vec`s (no copy).

use std::borrow::Cow;

use numpy::{
    PyArray1, PyArray2, PyArrayDescrMethods, PyArrayMethods, PyReadonlyArray1, PyUntypedArray,
    PyUntypedArrayMethods,
};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString};

use super::to_py;
use crate::pack::{self, PackOptions, PackedAs};

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(pack_windows, m)?)?;
    m.add_function(wrap_pyfunction!(dedup_neighbors, m)?)?;
    Ok(())
}

/// Validated [`PackOptions`] from the Python keyword arguments (shared with `EmbeddingStore`).
pub(crate) fn pack_options(
    context_length: i64,
    eos_id: Option<i64>,
    pack_short: bool,
    max_windows_per_doc: Option<i64>,
    pad_id: i64,
) -> PyResult<PackOptions> {
    let token = |name: &str, v: i64| {
        u32::try_from(v).map_err(|_| {
            PyValueError::new_err(format!("{name} must be in 0..={}, got {v}", u32::MAX))
        })
    };
    if context_length < 1 {
        return Err(PyValueError::new_err(format!(
            "context_length must be at least 1, got {context_length}"
        )));
    }
    let context_length = usize::try_from(context_length)
        .map_err(|_| PyValueError::new_err("context_length is too large"))?;
    let max_windows_per_doc = match max_windows_per_doc {
        None => None,
        Some(n) if n >= 1 => Some(usize::try_from(n).unwrap_or(usize::MAX)),
        Some(n) => {
            return Err(PyValueError::new_err(format!(
                "max_windows_per_doc must be at least 1 (or None for no cap), got {n}"
            )))
        }
    };
    Ok(PackOptions {
        context_length,
        eos_id: eos_id.map(|e| token("eos_id", e)).transpose()?,
        pack_short,
        max_windows_per_doc,
        pad_id: token("pad_id", pad_id)?,
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

/// A borrowed (or, for Python sequences, extracted) document, before conversion to u32.
enum Guard<'py> {
    U32(PyReadonlyArray1<'py, u32>),
    U64(PyReadonlyArray1<'py, u64>),
    I64(PyReadonlyArray1<'py, i64>),
    I32(PyReadonlyArray1<'py, i32>),
    U16(PyReadonlyArray1<'py, u16>),
    I16(PyReadonlyArray1<'py, i16>),
    U8(PyReadonlyArray1<'py, u8>),
    I8(PyReadonlyArray1<'py, i8>),
    List(Vec<i64>),
}

/// Plain slices (Send): what crosses into the GIL-free closure.
enum Src<'a> {
    U32(&'a [u32]),
    U64(&'a [u64]),
    I64(&'a [i64]),
    I32(&'a [i32]),
    U16(&'a [u16]),
    I16(&'a [i16]),
    U8(&'a [u8]),
    I8(&'a [i8]),
}

impl Guard<'_> {
    fn src(&self) -> PyResult<Src<'_>> {
        let err = |e: numpy::AsSliceError| PyValueError::new_err(e.to_string());
        Ok(match self {
            Guard::U32(a) => Src::U32(a.as_slice().map_err(err)?),
            Guard::U64(a) => Src::U64(a.as_slice().map_err(err)?),
            Guard::I64(a) => Src::I64(a.as_slice().map_err(err)?),
            Guard::I32(a) => Src::I32(a.as_slice().map_err(err)?),
            Guard::U16(a) => Src::U16(a.as_slice().map_err(err)?),
            Guard::I16(a) => Src::I16(a.as_slice().map_err(err)?),
            Guard::U8(a) => Src::U8(a.as_slice().map_err(err)?),
            Guard::I8(a) => Src::I8(a.as_slice().map_err(err)?),
            Guard::List(v) => Src::I64(v),
        })
    }
}

fn checked<T>(doc: usize, s: &[T]) -> Result<Vec<u32>, String>
where
    T: Copy + TryInto<u32> + std::fmt::Display,
{
    let mut out = Vec::with_capacity(s.len());
    for (pos, &v) in s.iter().enumerate() {
        match v.try_into() {
            Ok(t) => out.push(t),
            Err(_) => {
                return Err(format!(
                    "document {doc}: token id {v} at position {pos} is outside 0..={}",
                    u32::MAX
                ))
            }
        }
    }
    Ok(out)
}

impl Src<'_> {
    fn to_u32(&self, doc: usize) -> Result<Cow<'_, [u32]>, String> {
        Ok(match self {
            Src::U32(s) => Cow::Borrowed(*s),
            Src::U64(s) => Cow::Owned(checked(doc, s)?),
            Src::I64(s) => Cow::Owned(checked(doc, s)?),
            Src::I32(s) => Cow::Owned(checked(doc, s)?),
            Src::U16(s) => Cow::Owned(s.iter().map(|&v| u32::from(v)).collect()),
            Src::I16(s) => Cow::Owned(checked(doc, s)?),
            Src::U8(s) => Cow::Owned(s.iter().map(|&v| u32::from(v)).collect()),
            Src::I8(s) => Cow::Owned(checked(doc, s)?),
        })
    }
}

fn doc_guard<'py>(
    i: usize,
    obj: &Bound<'py, PyAny>,
    keep: &mut Vec<Bound<'py, PyAny>>,
) -> PyResult<Guard<'py>> {
    let Ok(arr) = obj.cast::<PyUntypedArray>() else {
        if obj.is_instance_of::<PyString>() || obj.is_instance_of::<PyBytes>() {
            return Err(PyTypeError::new_err(format!(
                "document {i} is a str/bytes; pass token ids (a 1-D integer array or list of ints)"
            )));
        }
        return obj.extract::<Vec<i64>>().map(Guard::List).map_err(|e| {
            PyTypeError::new_err(format!(
                "document {i} must be a 1-D integer numpy array or a sequence of ints \
                 (got {}: {e})",
                obj.get_type()
                    .name()
                    .map(|n| n.to_string())
                    .unwrap_or_default()
            ))
        });
    };
    if arr.ndim() != 1 {
        return Err(PyValueError::new_err(format!(
            "document {i} must be a 1-D array of token ids, got shape {:?}",
            arr.shape()
        )));
    }
    let dtype = arr.dtype();
    let (kind, size) = (dtype.kind(), dtype.itemsize());
    if !matches!(kind, b'u' | b'i') {
        return Err(PyValueError::new_err(format!(
            "document {i} has dtype {}; token ids must be integers (uint32 preferred)",
            dtype.str().map(|s| s.to_string()).unwrap_or_default()
        )));
    }
    // Non-contiguous views (e.g. a[::2]) are copied to contiguous arrays, kept alive in `keep`.
    let arr = if arr.is_contiguous() {
        arr.clone()
    } else {
        let copy = arr.call_method0("copy")?;
        keep.push(copy.clone());
        copy.cast_into::<PyUntypedArray>()?
    };
    macro_rules! typed {
        ($t:ty, $v:ident) => {{
            let a = arr.cast::<PyArray1<$t>>().map_err(|_| {
                PyValueError::new_err(format!(
                    "document {i}: unsupported integer dtype {} (non-native byte order?)",
                    dtype.str().map(|s| s.to_string()).unwrap_or_default()
                ))
            })?;
            Guard::$v(a.try_readonly().map_err(|e| {
                PyValueError::new_err(format!("document {i}: cannot borrow the array: {e}"))
            })?)
        }};
    }
    Ok(match (kind, size) {
        (b'u', 4) => typed!(u32, U32),
        (b'u', 8) => typed!(u64, U64),
        (b'i', 8) => typed!(i64, I64),
        (b'i', 4) => typed!(i32, I32),
        (b'u', 2) => typed!(u16, U16),
        (b'i', 2) => typed!(i16, I16),
        (b'u', 1) => typed!(u8, U8),
        (b'i', 1) => typed!(i8, I8),
        _ => {
            return Err(PyValueError::new_err(format!(
                "document {i}: unsupported integer dtype of {size} bytes"
            )))
        }
    })
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
#[pyo3(signature = (docs, context_length, *, eos_id=None, pack_short=false, max_windows_per_doc=None, pad_id=0))]
fn pack_windows<'py>(
    py: Python<'py>,
    docs: &Bound<'py, PyAny>,
    context_length: i64,
    eos_id: Option<i64>,
    pack_short: bool,
    max_windows_per_doc: Option<i64>,
    pad_id: i64,
) -> PyResult<PackedArrays<'py>> {
    let opts = pack_options(
        context_length,
        eos_id,
        pack_short,
        max_windows_per_doc,
        pad_id,
    )?;
    if docs.is_instance_of::<PyString>() || docs.is_instance_of::<PyBytes>() {
        return Err(PyTypeError::new_err(
            "docs must be a sequence of token id arrays, not a str/bytes",
        ));
    }
    if let Ok(arr) = docs.cast::<PyUntypedArray>() {
        if arr.ndim() != 2 {
            return Err(PyValueError::new_err(format!(
                "docs must be a sequence of 1-D token id arrays (or a 2-D array of rows), got an \
                 array of shape {:?}",
                arr.shape()
            )));
        }
    }
    let mut keep = Vec::new();
    let mut guards = Vec::new();
    for (i, obj) in docs.try_iter()?.enumerate() {
        guards.push(doc_guard(i, &obj?, &mut keep)?);
    }
    let srcs = guards
        .iter()
        .map(Guard::src)
        .collect::<PyResult<Vec<_>>>()?;
    let packed = py.detach(|| {
        let owned = srcs
            .iter()
            .enumerate()
            .map(|(i, s)| s.to_u32(i))
            .collect::<Result<Vec<_>, String>>()
            .map_err(PyValueError::new_err)?;
        let slices: Vec<&[u32]> = owned.iter().map(|c| c.as_ref()).collect();
        pack::pack_windows_as::<i64>(&slices, &opts).map_err(to_py)
    })?;
    packed_to_numpy(py, packed)
}

fn text_of<'a>(what: &dyn Fn() -> String, obj: &'a Bound<'_, PyAny>) -> PyResult<&'a str> {
    if let Ok(s) = obj.cast::<PyString>() {
        return s
            .to_str()
            .map_err(|e| PyValueError::new_err(format!("{} is not valid UTF-8: {e}", what())));
    }
    if let Ok(b) = obj.cast::<PyBytes>() {
        return std::str::from_utf8(b.as_bytes())
            .map_err(|e| PyValueError::new_err(format!("{} is not valid UTF-8: {e}", what())));
    }
    Err(PyTypeError::new_err(format!(
        "{} must be str or bytes, got {}",
        what(),
        obj.get_type()
            .name()
            .map(|n| n.to_string())
            .unwrap_or_default()
    )))
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
    if candidates.is_instance_of::<PyString>() || candidates.is_instance_of::<PyBytes>() {
        return Err(PyTypeError::new_err(
            "candidates must be a sequence of str or bytes, not a single str/bytes",
        ));
    }
    let q = text_of(&|| "query".to_string(), query)?;
    let objs = candidates
        .try_iter()?
        .collect::<PyResult<Vec<Bound<'_, PyAny>>>>()?;
    let texts = objs
        .iter()
        .enumerate()
        .map(|(i, o)| text_of(&|| format!("candidate {i}"), o))
        .collect::<PyResult<Vec<&str>>>()?;
    let r = py
        .detach(|| pack::dedup_neighbors(q, &texts, threshold))
        .map_err(to_py)?;
    Ok((
        r.kept,
        r.dropped
            .into_iter()
            .map(|(i, d)| (i, d.as_str()))
            .collect(),
    ))
}
