//! Bindings for `crate::store`: the `EmbeddingStore` class.
//!
//! The core store sits behind a `RwLock`: searches and reads share it, `append`, `build_hnsw` and
//! `set_meta` take it exclusively. Heavy calls take the lock inside `py.detach`, with the GIL
//! released, after every Python object was turned into plain slices.

use std::path::PathBuf;
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use numpy::{
    PyArray1, PyArray2, PyArrayDescrMethods, PyArrayMethods, PyReadonlyArray1, PyUntypedArray,
    PyUntypedArrayMethods,
};
use pyo3::exceptions::{PyIndexError, PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString};

use super::pack::{pack_options, packed_to_numpy, PackedArrays};
use super::{dtype_str, f32_matrix, to_py, type_name};
use crate::hnsw::HnswParams;
use crate::store::{EmbeddingStore as Core, StoreOptions};
use crate::vectors::{DType, Metric};

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<EmbeddingStore>()?;
    Ok(())
}

/// Append-only, sharded, memory-mapped vectors (f32/f16/i8) with optional per-document text,
/// token ids and records (small JSON bytes). Global ids are 0..len(store) in append order.
///
/// Create with `EmbeddingStore.create(path, dim, ...)`, reopen with `EmbeddingStore.open(path)`
/// (a memory map: constant time, nothing read but headers). Each `append` writes new shards and
/// seals them with an atomic manifest rename, so a crash leaves the last sealed state readable.
#[pyclass(module = "tttnn._tttnn", frozen)]
pub struct EmbeddingStore {
    inner: RwLock<Core>,
    path: String,
    dim: usize,
    dtype: DType,
    metric: Metric,
    shard_size: usize,
}

// The class is shared across threads (GIL released during searches): it must be Send + Sync.
const _: fn() = || {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Core>();
};

/// `(ids (nq, k) int64, scores (nq, k) float32)`.
type SearchArrays<'py> = (Bound<'py, PyArray2<i64>>, Bound<'py, PyArray2<f32>>);

/// A 1-D int64 array of ids from a sequence of ints or an integer array.
fn id_array<'py>(obj: &Bound<'py, PyAny>, len: u64) -> PyResult<PyReadonlyArray1<'py, i64>> {
    let np = obj.py().import("numpy")?;
    let arr = np
        .call_method1("asarray", (obj,))?
        .cast_into::<PyUntypedArray>()?;
    if arr.ndim() != 1 {
        return Err(PyValueError::new_err(format!(
            "ids must be 1-D, got shape {:?}",
            arr.shape()
        )));
    }
    if arr.len() > 0 && !matches!(arr.dtype().kind(), b'i' | b'u') {
        return Err(PyTypeError::new_err(format!(
            "ids must be integers, got dtype {}",
            dtype_str(&arr)
        )));
    }
    let arr = np
        .call_method1("ascontiguousarray", (arr, np.getattr("int64")?))?
        .cast_into::<PyArray1<i64>>()?
        .try_readonly()
        .map_err(|e| PyValueError::new_err(format!("cannot borrow ids: {e}")))?;
    if let Some(bad) = arr.as_slice()?.iter().find(|&&i| i < 0 || i as u64 >= len) {
        return Err(PyIndexError::new_err(format!(
            "id {bad} out of range: the store holds {len} vectors"
        )));
    }
    Ok(arr)
}

/// Borrowed bytes of each item of a sequence of str/bytes (str as UTF-8).
fn byte_items<'a>(name: &str, objs: &'a [Bound<'_, PyAny>]) -> PyResult<Vec<&'a [u8]>> {
    objs.iter()
        .enumerate()
        .map(|(i, o)| {
            if let Ok(b) = o.cast::<PyBytes>() {
                Ok(b.as_bytes())
            } else if let Ok(s) = o.cast::<PyString>() {
                s.to_str().map(str::as_bytes).map_err(|e| {
                    PyValueError::new_err(format!("{name} {i} is not valid UTF-8: {e}"))
                })
            } else {
                Err(PyTypeError::new_err(format!(
                    "{name} {i} must be str or bytes, got {}",
                    type_name(o)
                )))
            }
        })
        .collect()
}

fn sequence<'py>(
    name: &str,
    obj: Option<&Bound<'py, PyAny>>,
) -> PyResult<Option<Vec<Bound<'py, PyAny>>>> {
    let Some(obj) = obj else { return Ok(None) };
    if obj.is_none() {
        return Ok(None);
    }
    if obj.is_instance_of::<PyString>() || obj.is_instance_of::<PyBytes>() {
        return Err(PyTypeError::new_err(format!(
            "{name} must be a sequence (one item per vector), not a single str/bytes"
        )));
    }
    obj.try_iter()
        .map_err(|_| {
            PyTypeError::new_err(format!("{name} must be a sequence, got {}", type_name(obj)))
        })?
        .collect::<PyResult<Vec<_>>>()
        .map(Some)
}

/// Token ids of one document: uint32 arrays are borrowed, other integers range-checked and copied.
enum Tokens<'py> {
    Borrowed(PyReadonlyArray1<'py, u32>),
    Owned(Vec<u32>),
}

fn token_item<'py>(i: usize, obj: &Bound<'py, PyAny>) -> PyResult<Tokens<'py>> {
    if obj.is_instance_of::<PyString>() || obj.is_instance_of::<PyBytes>() {
        return Err(PyTypeError::new_err(format!(
            "tokens {i} is a str/bytes; pass token ids (a 1-D integer array or list of ints)"
        )));
    }
    let np = obj.py().import("numpy")?;
    let arr = np
        .call_method1("asarray", (obj,))?
        .cast_into::<PyUntypedArray>()?;
    if arr.ndim() != 1 {
        return Err(PyValueError::new_err(format!(
            "tokens {i} must be 1-D, got shape {:?}",
            arr.shape()
        )));
    }
    if arr.len() == 0 {
        return Ok(Tokens::Owned(Vec::new()));
    }
    let kind = arr.dtype().kind();
    if !matches!(kind, b'i' | b'u') {
        return Err(PyValueError::new_err(format!(
            "tokens {i} must be integers (uint32), got dtype {}",
            dtype_str(&arr)
        )));
    }
    if kind == b'u' && arr.dtype().itemsize() == 4 {
        let a = np
            .call_method1("ascontiguousarray", (arr,))?
            .cast_into::<PyArray1<u32>>()?;
        return a
            .try_readonly()
            .map(Tokens::Borrowed)
            .map_err(|e| PyValueError::new_err(format!("cannot borrow tokens {i}: {e}")));
    }
    let wide = if kind == b'u' && arr.dtype().itemsize() == 8 {
        "uint64"
    } else {
        "int64"
    };
    let a = np.call_method1("ascontiguousarray", (arr, np.getattr(wide)?))?;
    let vals: Vec<i128> = if wide == "uint64" {
        let a = a.cast_into::<PyArray1<u64>>()?;
        let r = a.readonly();
        r.as_slice()?.iter().map(|&v| i128::from(v)).collect()
    } else {
        let a = a.cast_into::<PyArray1<i64>>()?;
        let r = a.readonly();
        r.as_slice()?.iter().map(|&v| i128::from(v)).collect()
    };
    vals.iter()
        .enumerate()
        .map(|(p, &v)| {
            u32::try_from(v).map_err(|_| {
                PyValueError::new_err(format!(
                    "tokens {i}: id {v} at position {p} is outside 0..={}",
                    u32::MAX
                ))
            })
        })
        .collect::<PyResult<Vec<u32>>>()
        .map(Tokens::Owned)
}

impl EmbeddingStore {
    fn wrap(core: Core) -> Self {
        EmbeddingStore {
            path: core.path().to_string_lossy().into_owned(),
            dim: core.dim(),
            dtype: core.dtype(),
            metric: core.metric(),
            shard_size: core.shard_size(),
            inner: RwLock::new(core),
        }
    }

    fn read(&self) -> PyResult<RwLockReadGuard<'_, Core>> {
        self.inner
            .read()
            .map_err(|_| PyRuntimeError::new_err("store lock poisoned by a panic"))
    }

    fn write(&self) -> PyResult<RwLockWriteGuard<'_, Core>> {
        self.inner
            .write()
            .map_err(|_| PyRuntimeError::new_err("store lock poisoned by a panic"))
    }

    fn check_id(&self, id: i64) -> PyResult<u64> {
        let n = self.read()?.len();
        if id < 0 || id as u64 >= n {
            return Err(PyIndexError::new_err(format!(
                "id {id} out of range: the store holds {n} vectors"
            )));
        }
        Ok(id as u64)
    }
}

#[pymethods]
impl EmbeddingStore {
    /// Create an empty store in `path` (a new or empty directory; FileExistsError otherwise).
    ///
    /// `dtype`: "f32", "f16" or "i8" (symmetric per-vector scale max|x|/127). `metric`: "cosine",
    /// "ip" or "l2". `shard_size`: vectors per shard at most. `hnsw=True` builds an HNSW graph for
    /// every appended shard. `with_text/with_tokens/with_records`: which per-document columns
    /// `append` requires. `meta`: a JSON object string kept in the manifest.
    #[staticmethod]
    #[pyo3(signature = (path, dim, *, dtype="f32", metric="cosine", shard_size=100_000, hnsw=false,
        hnsw_connectivity=16, hnsw_expansion_add=128, hnsw_expansion_search=64,
        with_text=false, with_tokens=false, with_records=false, meta="{}"))]
    #[allow(clippy::too_many_arguments)]
    fn create(
        py: Python<'_>,
        path: PathBuf,
        dim: i64,
        dtype: &str,
        metric: &str,
        shard_size: i64,
        hnsw: bool,
        hnsw_connectivity: i64,
        hnsw_expansion_add: i64,
        hnsw_expansion_search: i64,
        with_text: bool,
        with_tokens: bool,
        with_records: bool,
        meta: &str,
    ) -> PyResult<Self> {
        let positive = |name: &str, v: i64| {
            usize::try_from(v)
                .ok()
                .filter(|&v| v > 0)
                .ok_or_else(|| PyValueError::new_err(format!("{name} must be positive, got {v}")))
        };
        let options = StoreOptions {
            dim: positive("dim", dim)?,
            dtype: DType::parse(dtype).map_err(to_py)?,
            metric: Metric::parse(metric).map_err(to_py)?,
            shard_size: positive("shard_size", shard_size)?,
            hnsw: if hnsw {
                Some(HnswParams {
                    connectivity: positive("hnsw_connectivity", hnsw_connectivity)?,
                    expansion_add: positive("hnsw_expansion_add", hnsw_expansion_add)?,
                    expansion_search: positive("hnsw_expansion_search", hnsw_expansion_search)?,
                })
            } else {
                None
            },
            with_text,
            with_tokens,
            with_records,
        };
        let core = py
            .detach(|| Core::create(&path, &options, meta))
            .map_err(to_py)?;
        Ok(Self::wrap(core))
    }

    /// Open an existing store (memory maps; reads only headers and file sizes).
    #[staticmethod]
    fn open(py: Python<'_>, path: PathBuf) -> PyResult<Self> {
        let core = py.detach(|| Core::open(&path)).map_err(to_py)?;
        Ok(Self::wrap(core))
    }

    /// Append `n × dim` vectors (and n texts/tokens/records when the store has them); splits
    /// into shards of at most `shard_size`, each sealed by an atomic manifest write. Returns the
    /// ids of the shards written.
    ///
    /// float16/float64 arrays are converted to float32; other dtypes, NaN/inf, a wrong
    /// dimension, invalid UTF-8 text and mismatched counts raise ValueError naming the row.
    #[pyo3(signature = (vectors, *, texts=None, tokens=None, records=None))]
    fn append(
        &self,
        py: Python<'_>,
        vectors: &Bound<'_, PyAny>,
        texts: Option<&Bound<'_, PyAny>>,
        tokens: Option<&Bound<'_, PyAny>>,
        records: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Vec<u32>> {
        let arr = f32_matrix(vectors, "vectors", Some(self.dim), false)?;
        let x = arr.as_slice()?;
        let text_objs = sequence("texts", texts)?;
        let text_b = text_objs
            .as_deref()
            .map(|o| byte_items("text", o))
            .transpose()?;
        let rec_objs = sequence("records", records)?;
        let rec_b = rec_objs
            .as_deref()
            .map(|o| byte_items("record", o))
            .transpose()?;
        let tok_objs = sequence("tokens", tokens)?;
        let tok_items = tok_objs
            .as_deref()
            .map(|o| {
                o.iter()
                    .enumerate()
                    .map(|(i, t)| token_item(i, t))
                    .collect::<PyResult<Vec<_>>>()
            })
            .transpose()?;
        let tok_s = tok_items
            .as_deref()
            .map(|items| {
                items
                    .iter()
                    .map(|t| match t {
                        Tokens::Borrowed(a) => a.as_slice().map_err(PyErr::from),
                        Tokens::Owned(v) => Ok(v.as_slice()),
                    })
                    .collect::<PyResult<Vec<&[u32]>>>()
            })
            .transpose()?;
        py.detach(|| {
            let mut store = self.write()?;
            store
                .append(x, text_b.as_deref(), tok_s.as_deref(), rec_b.as_deref())
                .map_err(to_py)
        })
    }

    /// `queries` is `(nq, dim)` or `(dim,)`; returns `(ids, scores)` of shape `(nq, k)`, best
    /// first; missing hits are id -1 / score NaN. `exact=False` uses the HNSW graphs (`ef` is
    /// the search expansion).
    #[pyo3(signature = (queries, k, *, exact=true, ef=None))]
    fn search<'py>(
        &self,
        py: Python<'py>,
        queries: &Bound<'py, PyAny>,
        k: i64,
        exact: bool,
        ef: Option<i64>,
    ) -> PyResult<SearchArrays<'py>> {
        if k < 1 {
            return Err(PyValueError::new_err(format!(
                "k must be positive, got {k}"
            )));
        }
        let ef = match ef {
            None => None,
            Some(e) if e >= 1 => Some(e as usize),
            Some(e) => {
                return Err(PyValueError::new_err(format!(
                    "ef must be positive, got {e}"
                )))
            }
        };
        let arr = f32_matrix(queries, "queries", Some(self.dim), true)?;
        let q = arr.as_slice()?;
        let k = k as usize;
        let r = py.detach(|| {
            let store = self.read()?;
            store.search(q, k, exact, ef).map_err(to_py)
        })?;
        let ids = PyArray1::from_vec(py, r.ids).reshape([r.nq, r.k])?;
        let scores = PyArray1::from_vec(py, r.scores).reshape([r.nq, r.k])?;
        Ok((ids, scores))
    }

    /// Build the HNSW graph of every shard that lacks one (resumable); returns how many.
    /// `threads=0` uses all cores. Later appends build their shard's graph when sealing.
    #[pyo3(signature = (*, threads=0))]
    fn build_hnsw(&self, py: Python<'_>, threads: usize) -> PyResult<usize> {
        py.detach(|| {
            let mut store = self.write()?;
            store.build_hnsw(threads).map_err(to_py)
        })
    }

    /// Read every file and check its checksum; raises CorruptIndexError on a mismatch.
    fn verify(&self, py: Python<'_>) -> PyResult<()> {
        py.detach(|| {
            let store = self.read()?;
            store.verify().map_err(to_py)
        })
    }

    /// Dequantized vectors of the given ids, `(len(ids), dim)` float32.
    fn get_vectors<'py>(
        &self,
        py: Python<'py>,
        ids: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyArray2<f32>>> {
        let n = self.read()?.len();
        let ids = id_array(ids, n)?;
        let ids: Vec<u64> = ids.as_slice()?.iter().map(|&i| i as u64).collect();
        let v = py.detach(|| {
            let store = self.read()?;
            store.get_vectors(&ids).map_err(to_py)
        })?;
        PyArray1::from_vec(py, v).reshape([ids.len(), self.dim])
    }

    /// Text of `id` (str).
    fn text(&self, id: i64) -> PyResult<String> {
        let id = self.check_id(id)?;
        Ok(self.read()?.text(id).map_err(to_py)?.to_owned())
    }

    /// UTF-8 bytes of the text of `id`.
    fn text_bytes<'py>(&self, py: Python<'py>, id: i64) -> PyResult<Bound<'py, PyBytes>> {
        let id = self.check_id(id)?;
        let store = self.read()?;
        Ok(PyBytes::new(py, store.text_bytes(id).map_err(to_py)?))
    }

    /// Token ids of `id` (a uint32 copy of the memory-mapped slice).
    fn tokens<'py>(&self, py: Python<'py>, id: i64) -> PyResult<Bound<'py, PyArray1<u32>>> {
        let id = self.check_id(id)?;
        let store = self.read()?;
        Ok(PyArray1::from_slice(py, store.tokens(id).map_err(to_py)?))
    }

    /// Record bytes of `id`.
    fn record<'py>(&self, py: Python<'py>, id: i64) -> PyResult<Bound<'py, PyBytes>> {
        let id = self.check_id(id)?;
        let store = self.read()?;
        Ok(PyBytes::new(py, store.record(id).map_err(to_py)?))
    }

    /// Stored token ids of `ids` (in that order) cut into training windows; same options and
    /// result as `tttnn.pack_windows`: `(input_ids (W, L), lengths (W,), doc_index (W,))` int64,
    /// `doc_index` indexing into `ids`.
    #[pyo3(signature = (ids, context_length, *, eos_id=None, pack_short=false,
        max_windows_per_doc=None, pad_id=0))]
    #[allow(clippy::too_many_arguments)]
    fn pack_windows<'py>(
        &self,
        py: Python<'py>,
        ids: &Bound<'py, PyAny>,
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
        let n = self.read()?.len();
        let ids = id_array(ids, n)?;
        let ids = ids.as_slice()?;
        let packed = py.detach(|| {
            let store = self.read()?;
            let docs = ids
                .iter()
                .map(|&i| store.tokens(i as u64))
                .collect::<crate::Result<Vec<&[u32]>>>()
                .map_err(to_py)?;
            crate::pack::pack_windows_as::<i64>(&docs, &opts).map_err(to_py)
        })?;
        packed_to_numpy(py, packed)
    }

    /// Replace the user metadata (a JSON object string), atomically.
    fn set_meta(&self, meta: &str) -> PyResult<()> {
        self.write()?.set_meta(meta).map_err(to_py)
    }

    #[getter]
    fn path(&self) -> &str {
        &self.path
    }

    #[getter]
    fn dim(&self) -> usize {
        self.dim
    }

    #[getter]
    fn dtype(&self) -> &'static str {
        self.dtype.as_str()
    }

    #[getter]
    fn metric(&self) -> &'static str {
        self.metric.as_str()
    }

    #[getter]
    fn shard_size(&self) -> usize {
        self.shard_size
    }

    #[getter]
    fn num_shards(&self) -> PyResult<usize> {
        Ok(self.read()?.num_shards())
    }

    /// True when every shard has an HNSW graph (and there is at least one shard).
    #[getter]
    fn has_hnsw(&self) -> PyResult<bool> {
        Ok(self.read()?.has_hnsw())
    }

    /// The user metadata, a JSON object string.
    #[getter]
    fn meta(&self) -> PyResult<String> {
        Ok(self.read()?.meta())
    }

    /// Number of vectors in each shard, in id order.
    fn shard_counts(&self) -> PyResult<Vec<u64>> {
        Ok(self.read()?.shard_counts())
    }

    /// Ids of the rows no HNSW walk reaches; HNSW searches score them exactly.
    fn hnsw_stranded(&self) -> PyResult<Vec<u64>> {
        Ok(self.read()?.hnsw_stranded())
    }

    fn __len__(&self) -> PyResult<usize> {
        Ok(self.read()?.len() as usize)
    }

    fn __repr__(&self) -> PyResult<String> {
        let s = self.read()?;
        Ok(format!(
            "EmbeddingStore(path={:?}, len={}, dim={}, dtype={:?}, metric={:?}, shards={})",
            self.path,
            s.len(),
            self.dim,
            self.dtype.as_str(),
            self.metric.as_str(),
            s.num_shards()
        ))
    }
}
