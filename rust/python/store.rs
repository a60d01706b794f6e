//! Bindings for `crate::store`: the `EmbeddingStore` class, and `check_shards`.
//!
//! The core store sits behind a `RwLock`: searches and reads share it, `append`, `build_hnsw` and
//! `set_meta` take it exclusively. Heavy calls take the lock inside `py.detach`, with the GIL
//! released, after every Python object was turned into plain slices.

use std::borrow::Cow;
use std::path::PathBuf;
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use numpy::{PyArray1, PyArray2, PyArrayMethods};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use super::convert::{count, f32_matrix, int_array, sequence, slices, text_bytes, Int, Ints};
use super::pack::{pack_options, packed_to_numpy, PackedArrays};
use super::{detach, to_py};
use crate::error::Error;
use crate::hnsw::HnswParams;
use crate::store::{check_shards, EmbeddingStore as Core, StoreOptions};
use crate::vectors::{DType, Metric};

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<EmbeddingStore>()?;
    m.add_function(wrap_pyfunction!(py_check_shards, m)?)?;
    Ok(())
}

/// The shard numbers `shards` of a store of `num_shards` shards, sorted and distinct: the check
/// every search of some shards makes. ValueError when `shards` is empty, IndexError naming the
/// smallest number outside `0..num_shards` and how many shards there are.
#[pyfunction]
#[pyo3(name = "check_shards")]
fn py_check_shards(shards: &Bound<'_, PyAny>, num_shards: Int) -> PyResult<Vec<usize>> {
    let items = sequence(Some(shards), "shards")?.unwrap_or_default();
    let numbers = items
        .iter()
        .map(|s| s.extract::<Int>())
        .collect::<PyResult<Vec<Int>>>()?;
    let numbers = Int::get_all(&numbers, "shards")?;
    check_shards(&numbers, count(num_shards.get("num_shards")?)).map_err(to_py)
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

    fn read(&self) -> crate::Result<RwLockReadGuard<'_, Core>> {
        self.inner
            .read()
            .map_err(|_| Error::Index("store lock poisoned by a panic".into()))
    }

    fn write(&self) -> crate::Result<RwLockWriteGuard<'_, Core>> {
        self.inner
            .write()
            .map_err(|_| Error::Index("store lock poisoned by a panic".into()))
    }
}

/// The bytes of each item of a per-document column (texts, records).
fn column_bytes<'a>(items: &'a [Bound<'_, PyAny>], what: &str) -> PyResult<Vec<Cow<'a, [u8]>>> {
    items
        .iter()
        .enumerate()
        .map(|(i, o)| text_bytes(o, &|| format!("{what} {i}")))
        .collect()
}

#[pymethods]
impl EmbeddingStore {
    /// Create an empty store in `path` (a new or empty directory; FileExistsError otherwise).
    ///
    /// `dtype`: "f32", "f16" or "i8" (symmetric per-vector scale max|x|/127). `metric`: "cosine",
    /// "ip" or "l2". `shard_size`: vectors per shard at most. `hnsw=True` builds an HNSW graph for
    /// every appended shard. `with_text/with_tokens/with_records`: which per-document columns
    /// `append` requires. `token_bits`: 16 stores token ids as u16 (half the bytes; for
    /// vocabularies of at most 65,536 ids, a larger id is a ValueError at `append`) or 32 as
    /// u32; `tokens` reads uint32 either way. `meta`: a JSON object string kept in the manifest.
    #[staticmethod]
    #[pyo3(signature = (path, dim, *, dtype="f32", metric="cosine", shard_size=Int::Fits(100_000), hnsw=false,
        hnsw_connectivity=Int::Fits(16), hnsw_expansion_add=Int::Fits(128), hnsw_expansion_search=Int::Fits(64),
        with_text=false, with_tokens=false, token_bits=Int::Fits(32), with_records=false, meta="{}"),
        text_signature = "(path, dim, *, dtype=\"f32\", metric=\"cosine\", shard_size=100000, \
        hnsw=False, hnsw_connectivity=16, hnsw_expansion_add=128, hnsw_expansion_search=64, \
        with_text=False, with_tokens=False, token_bits=32, with_records=False, meta=\"{}\")")]
    #[allow(clippy::too_many_arguments)]
    fn create(
        py: Python<'_>,
        path: PathBuf,
        dim: Int,
        dtype: &str,
        metric: &str,
        shard_size: Int,
        hnsw: bool,
        hnsw_connectivity: Int,
        hnsw_expansion_add: Int,
        hnsw_expansion_search: Int,
        with_text: bool,
        with_tokens: bool,
        token_bits: Int,
        with_records: bool,
        meta: &str,
    ) -> PyResult<Self> {
        let params = HnswParams {
            connectivity: count(hnsw_connectivity.get("hnsw_connectivity")?),
            expansion_add: count(hnsw_expansion_add.get("hnsw_expansion_add")?),
            expansion_search: count(hnsw_expansion_search.get("hnsw_expansion_search")?),
        };
        let bits = token_bits.get("token_bits")?;
        let token_bits = u32::try_from(bits).map_err(|_| {
            PyValueError::new_err(format!("token_bits must be 16 or 32, not {bits}"))
        })?;
        let options = StoreOptions {
            dim: count(dim.get("dim")?),
            dtype: DType::parse(dtype).map_err(to_py)?,
            metric: Metric::parse(metric).map_err(to_py)?,
            shard_size: count(shard_size.get("shard_size")?),
            hnsw: hnsw.then_some(params),
            with_text,
            with_tokens,
            token_bits,
            with_records,
        };
        let core = detach(py, || Core::create(&path, &options, meta))?;
        Ok(Self::wrap(core))
    }

    /// Open an existing store (memory maps; reads only headers and file sizes). `shards`: open
    /// only these shards (the others' files need not exist); the handle then searches and reads
    /// them only, by global ids and shard numbers, and cannot write.
    #[staticmethod]
    #[pyo3(signature = (path, *, shards=None))]
    fn open(py: Python<'_>, path: PathBuf, shards: Option<Vec<Int>>) -> PyResult<Self> {
        let shards = shards.map(|s| Int::get_all(&s, "shards")).transpose()?;
        let core = detach(py, || Core::open_shards(&path, shards.as_deref()))?;
        Ok(Self::wrap(core))
    }

    /// Numbers of the shards this handle opened (all of them unless opened with `shards`).
    fn opened_shards(&self) -> PyResult<Vec<usize>> {
        Ok(self.read().map_err(to_py)?.opened_shards())
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
        let text_objs = sequence(texts, "texts")?;
        let text_c = text_objs
            .as_deref()
            .map(|o| column_bytes(o, "text"))
            .transpose()?;
        let text_b = text_c.as_deref().map(slices);
        let rec_objs = sequence(records, "records")?;
        let rec_c = rec_objs
            .as_deref()
            .map(|o| column_bytes(o, "record"))
            .transpose()?;
        let rec_b = rec_c.as_deref().map(slices);
        let tok_objs = sequence(tokens, "tokens")?;
        let tok_items = tok_objs
            .as_deref()
            .map(|o| {
                o.iter()
                    .enumerate()
                    .map(|(i, t)| int_array::<u32>(t, &format!("tokens {i}"), "token id"))
                    .collect::<PyResult<Vec<_>>>()
            })
            .transpose()?;
        let tok_s = tok_items
            .as_deref()
            .map(|items| {
                items
                    .iter()
                    .map(Ints::as_slice)
                    .collect::<PyResult<Vec<_>>>()
            })
            .transpose()?;
        detach(py, || {
            self.write()?
                .append(x, text_b.as_deref(), tok_s.as_deref(), rec_b.as_deref())
        })
    }

    /// `queries` is `(nq, dim)` or `(dim,)`; returns `(ids, scores)` of shape `(nq, k)`, best
    /// first; missing hits are id -1 / score NaN (`k` beyond the store only pads, up to 2**26
    /// result entries). `exact=False` uses the HNSW graphs (`ef` is the search expansion). A
    /// corrupt stored value or graph raises CorruptIndexError naming the file. `shards` (shard
    /// numbers) searches only those shards, ids still global: exactly the full search's ranking
    /// restricted to them (IndexError for a shard that does not exist).
    #[pyo3(signature = (queries, k, *, exact=true, ef=None, shards=None))]
    fn search<'py>(
        &self,
        py: Python<'py>,
        queries: &Bound<'py, PyAny>,
        k: Int,
        exact: bool,
        ef: Option<Int>,
        shards: Option<Vec<Int>>,
    ) -> PyResult<SearchArrays<'py>> {
        let k = count(k.get("k")?);
        let ef = Int::get_opt(ef.as_ref(), "ef")?.map(count);
        let shards = shards.map(|s| Int::get_all(&s, "shards")).transpose()?;
        let arr = f32_matrix(queries, "queries", Some(self.dim), true)?;
        let q = arr.as_slice()?;
        let r = detach(py, || {
            self.read()?
                .search_shards(q, k, exact, ef, shards.as_deref())
        })?;
        let ids = PyArray1::from_vec(py, r.ids).reshape([r.nq, r.k])?;
        let scores = PyArray1::from_vec(py, r.scores).reshape([r.nq, r.k])?;
        Ok((ids, scores))
    }

    /// Build the HNSW graph of every shard that lacks one (resumable); returns how many.
    /// `threads=0` uses all cores. Later appends build their shard's graph when sealing.
    #[pyo3(signature = (*, threads=Int::Fits(0)), text_signature = "($self, *, threads=0)")]
    fn build_hnsw(&self, py: Python<'_>, threads: Int) -> PyResult<usize> {
        let threads = usize::try_from(threads.get("threads")?)
            .map_err(|_| PyValueError::new_err("threads must be >= 0 (0 uses all cores)"))?;
        detach(py, || self.write()?.build_hnsw(threads))
    }

    /// Read every file and check its checksum, the norms, the ragged offsets and every link of
    /// the HNSW graphs; raises CorruptIndexError naming the file on the first problem.
    fn verify(&self, py: Python<'_>) -> PyResult<()> {
        detach(py, || self.read()?.verify())
    }

    /// `verify()` for shard `i` only (0 <= i < num_shards), so a caller can show progress.
    fn verify_shard(&self, py: Python<'_>, i: Int) -> PyResult<()> {
        let i = i.get("i")?;
        detach(py, || {
            let store = self.read()?;
            let i = check_shards(&[i], store.num_shards())?[0];
            store.verify_shard(i)
        })
    }

    /// Dequantized vectors of the given ids, `(len(ids), dim)` float32.
    fn get_vectors<'py>(
        &self,
        py: Python<'py>,
        ids: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyArray2<f32>>> {
        let ids = int_array::<i64>(ids, "ids", "id")?;
        let ids = ids.as_slice()?;
        let v = detach(py, || self.read()?.get_vectors(ids))?;
        PyArray1::from_vec(py, v).reshape([ids.len(), self.dim])
    }

    /// Text of `id` (str).
    fn text(&self, id: Int) -> PyResult<String> {
        let id = id.get("id")?;
        let store = self.read().map_err(to_py)?;
        Ok(store.text(id).map_err(to_py)?.to_owned())
    }

    /// UTF-8 bytes of the text of `id`.
    fn text_bytes<'py>(&self, py: Python<'py>, id: Int) -> PyResult<Bound<'py, PyBytes>> {
        let id = id.get("id")?;
        let store = self.read().map_err(to_py)?;
        Ok(PyBytes::new(py, store.text_bytes(id).map_err(to_py)?))
    }

    /// Token ids of `id` (a uint32 copy of the memory-mapped slice).
    fn tokens<'py>(&self, py: Python<'py>, id: Int) -> PyResult<Bound<'py, PyArray1<u32>>> {
        let id = id.get("id")?;
        let store = self.read().map_err(to_py)?;
        Ok(PyArray1::from_slice(py, &store.tokens(id).map_err(to_py)?))
    }

    /// Record bytes of `id`.
    fn record<'py>(&self, py: Python<'py>, id: Int) -> PyResult<Bound<'py, PyBytes>> {
        let id = id.get("id")?;
        let store = self.read().map_err(to_py)?;
        Ok(PyBytes::new(py, store.record(id).map_err(to_py)?))
    }

    /// Stored token ids of `ids` (in that order) cut into training windows; same options and
    /// result as `tttnn.pack_windows`: `(input_ids (W, L), lengths (W,), doc_index (W,))` int64,
    /// `doc_index` indexing into `ids`.
    #[pyo3(signature = (ids, context_length, *, eos_id=None, pack_short=false,
        max_windows_per_doc=None, pad_id=Int::Fits(0)),
        text_signature = "($self, ids, context_length, *, eos_id=None, pack_short=False, \
        max_windows_per_doc=None, pad_id=0)")]
    #[allow(clippy::too_many_arguments)]
    fn pack_windows<'py>(
        &self,
        py: Python<'py>,
        ids: &Bound<'py, PyAny>,
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
        let ids = int_array::<i64>(ids, "ids", "id")?;
        let ids = ids.as_slice()?;
        let packed = detach(py, || {
            let store = self.read()?;
            let docs = ids
                .iter()
                .map(|&i| store.tokens(i))
                .collect::<crate::Result<Vec<_>>>()?;
            let docs: Vec<&[u32]> = docs.iter().map(|d| &d[..]).collect();
            crate::pack::pack_windows_as::<i64>(&docs, &opts)
        })?;
        packed_to_numpy(py, packed)
    }

    /// Release this handle's writer lock now (it is otherwise held until the handle is
    /// garbage-collected); the handle stays usable and its next write takes the lock again.
    fn release_lock(&self) -> PyResult<()> {
        self.write().map(|mut s| s.release_lock()).map_err(to_py)
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    /// Leaving a `with` block releases the writer lock (see `release_lock`).
    fn __exit__(
        &self,
        _exc_type: &Bound<'_, PyAny>,
        _exc: &Bound<'_, PyAny>,
        _tb: &Bound<'_, PyAny>,
    ) -> PyResult<bool> {
        self.release_lock()?;
        Ok(false)
    }

    /// Adopt the sealed shards of the store in `unit` as the next shards of this one (renamed
    /// into its `shards/`, ids continuing from `len(self)`), with `meta` (a JSON object string)
    /// replacing the user metadata in the same atomic manifest write. The unit must match:
    /// dim, dtype, metric, columns, HNSW settings, shards of at most `shard_size`. Returns the
    /// ids of the adopted shards; the unit is left with no shard (remove its directory).
    #[pyo3(signature = (unit, *, meta=None))]
    fn adopt(&self, py: Python<'_>, unit: PathBuf, meta: Option<&str>) -> PyResult<Vec<u32>> {
        detach(py, || self.write()?.adopt(&unit, meta))
    }

    /// Replace the user metadata (a JSON object string), atomically.
    fn set_meta(&self, meta: &str) -> PyResult<()> {
        self.write()
            .and_then(|mut s| s.set_meta(meta))
            .map_err(to_py)
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

    /// Width of a stored token id, 16 or 32 (`create`'s `token_bits`).
    #[getter]
    fn token_bits(&self) -> PyResult<u32> {
        Ok(self.read().map_err(to_py)?.token_bits())
    }

    #[getter]
    fn num_shards(&self) -> PyResult<usize> {
        Ok(self.read().map_err(to_py)?.num_shards())
    }

    /// True when every shard has an HNSW graph (and there is at least one shard).
    #[getter]
    fn has_hnsw(&self) -> PyResult<bool> {
        Ok(self.read().map_err(to_py)?.has_hnsw())
    }

    /// The user metadata, a JSON object string.
    #[getter]
    fn meta(&self) -> PyResult<String> {
        Ok(self.read().map_err(to_py)?.meta())
    }

    /// Number of vectors in each shard, in id order.
    fn shard_counts(&self) -> PyResult<Vec<u64>> {
        Ok(self.read().map_err(to_py)?.shard_counts())
    }

    /// Ids of the rows no HNSW walk reaches; HNSW searches score them exactly.
    fn hnsw_stranded(&self) -> PyResult<Vec<u64>> {
        Ok(self.read().map_err(to_py)?.hnsw_stranded())
    }

    fn __len__(&self) -> PyResult<usize> {
        Ok(self.read().map_err(to_py)?.len() as usize)
    }

    fn __repr__(&self) -> PyResult<String> {
        let s = self.read().map_err(to_py)?;
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
