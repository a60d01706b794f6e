//! Append-only, sharded, memory-mapped embedding store.
//!
//! Layout of a store directory:
//! ```text
//! DIR/manifest.json             format "tttnn-store", version, dim, dtype, metric, shard_size,
//!                               hnsw params or null, has_text/has_tokens/has_records, count,
//!                               user meta, shards [{id, dir, start, count, files {name: {bytes, xxh3}}}]
//! DIR/shards/00000/vectors.bin  header + vectors (+ i8 scales) + f32 norms, 64-byte aligned sections
//! DIR/shards/00000/text.{bin,off} tokens.{bin,off} records.{bin,off}   ragged columns (optional)
//! DIR/shards/00000/hnsw.usearch HNSW graph (optional)
//! ```
//! `vectors.bin` header (64 bytes, little-endian): magic `TTTNNVEC`, version u32, dtype code u32,
//! dim u64, count u64, xxh3 of everything after the header u64, 16 reserved bytes, xxh3 of bytes
//! 0..56. Then the data (`count × dim` elements of the dtype), then for i8 the per-vector f32
//! scales, then the f32 L2 norms of the dequantized vectors; each section starts on a multiple of
//! 64 bytes, so slices of the (page-aligned) memory map cast safely.
//!
//! A shard becomes visible only when sealed: it is written into `shards/NNNNN.tmp/` (every file
//! fsynced), renamed to `shards/NNNNN/`, and then listed in a new `manifest.json` written to
//! `manifest.json.tmp`, fsynced and renamed over the old one (directory fsynced). A crash at any
//! point leaves the last sealed state readable; leftovers (`.tmp` dirs, unlisted shard dirs) are
//! ignored by [`EmbeddingStore::open`] and replaced by the next append.
//!
//! Opening maps the files and reads only headers, file sizes and the manifest (whose xxh3 it
//! checks), plus the level of every HNSW node (2 bytes a node): constant time in the size of the
//! vectors. Files that resolve outside the directory (symlinks) are refused. What a read depends
//! on is checked once per process before it is first used (a failed check is remembered and
//! returned as the same error at every later use): the xxh3 of a shard's `vectors.bin` (against
//! its header) and its norms (and i8 scales) before the first search of the shard, the xxh3 of
//! its HNSW graph (against the manifest) and every link before its first HNSW search, the xxh3
//! of a ragged column's data and its offsets before its first read; cosine scores outside
//! [-1, 1] and non-finite stored values found by a search are errors naming the file. So no
//! file, however damaged, crashes the process or moves a result without an error: every answer
//! is right or an error. [`EmbeddingStore::verify`] still reads every file from disk and checks
//! all of them at once. Cost at 1M × 384 f16 (`benches/bench_open.py`, page cache, 2 loaded
//! cores): first exact search 38 → 83 ms, first HNSW search 80 → 161 ms (768 MB of vectors and
//! the 533 MB graph hashed in parallel), first text read 1.3 → 3 ms, open unchanged, later
//! searches unchanged; paid once per process, it is the price of no silently wrong answer.
//!
//! One writer at a time: the first write of a handle takes an advisory lock on `DIR/.lock`
//! (`lock.rs`), released when the handle is dropped or its process dies; readers of sealed
//! shards never wait.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use half::f16;
use half::slice::HalfFloatSliceExt;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::hnsw::{HnswIndex, HnswParams};
use crate::lock::WriterLock;
use crate::ragged::{
    align64, check_sum_once, file_len, fsync_dir, hash_file, write_hashed, write_ragged,
    CheckedOnce, FileSum, Header, Mapped, Ragged, FILE_VERSION, HEADER_LEN,
};
use crate::vectors::{check_k, check_queries, DType, Metric, SearchResult, VectorData, VectorsRef};

/// Value of `format` in `manifest.json`.
pub const MANIFEST_FORMAT: &str = "tttnn-store";
/// Version of `manifest.json` this build writes and reads.
pub const MANIFEST_VERSION: u32 = 1;
const VEC_MAGIC: &[u8; 8] = b"TTTNNVEC";
const MANIFEST: &str = "manifest.json";
const VECTORS: &str = "vectors.bin";
const HNSW_FILE: &str = "hnsw.usearch";
/// Largest magnitude representable in f16.
const F16_MAX: f32 = 65504.0;

/// Settings fixed when a store is created.
#[derive(Clone, Debug, PartialEq)]
pub struct StoreOptions {
    pub dim: usize,
    pub dtype: DType,
    pub metric: Metric,
    /// Maximum number of vectors per shard.
    pub shard_size: usize,
    /// Build an HNSW graph for every appended shard.
    pub hnsw: Option<HnswParams>,
    pub with_text: bool,
    pub with_tokens: bool,
    pub with_records: bool,
}

impl StoreOptions {
    pub fn new(dim: usize) -> Self {
        StoreOptions {
            dim,
            dtype: DType::F32,
            metric: Metric::Cosine,
            shard_size: 100_000,
            hnsw: None,
            with_text: false,
            with_tokens: false,
            with_records: false,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct ShardEntry {
    id: u32,
    dir: String,
    start: u64,
    count: u64,
    files: BTreeMap<String, FileSum>,
    /// Scale of the HNSW graph's i8 codes (see `hnsw.rs`); absent without a graph.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    hnsw_scale: Option<f32>,
    /// Rows of the shard no walk of its HNSW graph reaches; searches score them exactly.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    hnsw_stranded: Vec<u64>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Manifest {
    format: String,
    version: u32,
    dim: usize,
    dtype: DType,
    metric: Metric,
    shard_size: usize,
    hnsw: Option<HnswParams>,
    has_text: bool,
    has_tokens: bool,
    has_records: bool,
    count: u64,
    meta: serde_json::Value,
    shards: Vec<ShardEntry>,
    /// xxh3 of the manifest serialised without this field (compact JSON, fields in this order),
    /// as 16 hex digits: a hand edit of `metric` or `hnsw_scale` is a corrupt manifest, not a
    /// different store. Manifests written before it have none and are not checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    checksum: Option<String>,
}

impl Manifest {
    fn digest(&self) -> Result<String> {
        let bare = Manifest {
            checksum: None,
            ..self.clone()
        };
        let json = serde_json::to_vec(&bare)
            .map_err(|e| Error::InvalidArgument(format!("cannot serialize manifest: {e}")))?;
        Ok(format!("{:016x}", xxhash_rust::xxh3::xxh3_64(&json)))
    }
}

/// Byte layout of a `vectors.bin` file.
#[derive(Clone, Copy, Debug)]
struct VecLayout {
    data_off: u64,
    data_len: u64,
    scales_off: u64,
    scales_len: u64,
    norms_off: u64,
    norms_len: u64,
    total: u64,
}

fn vec_layout(dtype: DType, dim: u64, count: u64) -> Option<VecLayout> {
    let n = count.checked_mul(dim)?;
    let data_off = HEADER_LEN as u64;
    let data_len = n.checked_mul(dtype.size() as u64)?;
    let data_end = align64(data_off.checked_add(data_len)?);
    let scales_len = if dtype == DType::I8 {
        count.checked_mul(4)?
    } else {
        0
    };
    let scales_off = data_end;
    let norms_off = align64(scales_off.checked_add(scales_len)?);
    let norms_len = count.checked_mul(4)?;
    Some(VecLayout {
        data_off,
        data_len,
        scales_off,
        scales_len,
        norms_off,
        norms_len,
        total: norms_off.checked_add(norms_len)?,
    })
}

/// Vectors encoded in the store dtype, in memory (before writing).
enum Encoded<'a> {
    F32(&'a [f32]),
    F16(Vec<f16>),
    I8 { q: Vec<i8>, scales: Vec<f32> },
}

fn row_norm(row: impl Iterator<Item = f32>) -> f32 {
    row.map(|v| f64::from(v) * f64::from(v)).sum::<f64>().sqrt() as f32
}

/// Quantize `x` (`n × dim`, already validated finite) and compute the norms of what is stored.
fn encode(dtype: DType, dim: usize, x: &[f32]) -> (Encoded<'_>, Vec<f32>) {
    match dtype {
        DType::F32 => {
            let norms = x
                .par_chunks(dim)
                .map(|r| row_norm(r.iter().copied()))
                .collect();
            (Encoded::F32(x), norms)
        }
        DType::F16 => {
            // Slice conversion uses F16C when the CPU has it (runtime detection).
            let mut h = vec![f16::ZERO; x.len()];
            h.par_chunks_mut(dim * 256)
                .zip(x.par_chunks(dim * 256))
                .for_each(|(o, i)| o.convert_from_f32_slice(i));
            let norms = h
                .par_chunks(dim)
                .map(|r| row_norm(r.iter().map(|v| v.to_f32())))
                .collect();
            (Encoded::F16(h), norms)
        }
        DType::I8 => {
            let n = x.len() / dim;
            let mut q = vec![0i8; x.len()];
            let mut scales = vec![0f32; n];
            let mut norms = vec![0f32; n];
            q.par_chunks_mut(dim)
                .zip(scales.par_iter_mut().zip(norms.par_iter_mut()))
                .zip(x.par_chunks(dim))
                .for_each(|((qr, (scale, norm)), r)| {
                    let amax = r.iter().fold(0f32, |m, v| m.max(v.abs()));
                    let s = amax / 127.0;
                    if s > 0.0 {
                        for (o, v) in qr.iter_mut().zip(r) {
                            *o = (v / s).round().clamp(-127.0, 127.0) as i8;
                        }
                    }
                    *scale = s;
                    *norm = row_norm(qr.iter().map(|&v| f32::from(v) * s));
                });
            (Encoded::I8 { q, scales }, norms)
        }
    }
}

impl Encoded<'_> {
    fn view<'a>(&'a self, dim: usize, norms: &'a [f32]) -> VectorsRef<'a> {
        let data = match self {
            Encoded::F32(x) => VectorData::F32(x),
            Encoded::F16(h) => VectorData::F16(h),
            Encoded::I8 { q, scales } => VectorData::I8 { q, scales },
        };
        VectorsRef {
            dim,
            count: norms.len(),
            data,
            norms,
        }
    }

    fn data_bytes(&self) -> &[u8] {
        match self {
            Encoded::F32(x) => bytemuck::cast_slice(x),
            Encoded::F16(h) => bytemuck::cast_slice(h),
            Encoded::I8 { q, .. } => bytemuck::cast_slice(q),
        }
    }

    fn scales_bytes(&self) -> &[u8] {
        match self {
            Encoded::I8 { scales, .. } => bytemuck::cast_slice(scales),
            _ => &[],
        }
    }
}

/// Write a `vectors.bin` file; returns its sum and the payload xxh3 recorded in the header.
fn write_vectors(
    path: &Path,
    dtype: DType,
    dim: usize,
    enc: &Encoded<'_>,
    norms: &[f32],
) -> Result<FileSum> {
    let count = norms.len() as u64;
    let lay = vec_layout(dtype, dim as u64, count)
        .ok_or_else(|| Error::Shape("store too large for this platform".into()))?;
    let zeros = [0u8; 64];
    let pad = |from: u64, to: u64| &zeros[..(to - from) as usize];
    let data = enc.data_bytes();
    let scales = enc.scales_bytes();
    let norms_b: &[u8] = bytemuck::cast_slice(norms);
    let sections: [&[u8]; 5] = [
        data,
        pad(lay.data_off + lay.data_len, lay.scales_off),
        scales,
        pad(lay.scales_off + lay.scales_len, lay.norms_off),
        norms_b,
    ];
    let mut payload = xxhash_rust::xxh3::Xxh3::new();
    for s in &sections {
        payload.update(s);
    }
    let header = Header {
        magic: *VEC_MAGIC,
        version: FILE_VERSION,
        tag: dtype.code(),
        a: dim as u64,
        b: count,
        c: payload.digest(),
        d: 0,
    };
    let h = header.encode();
    let mut all: Vec<&[u8]> = vec![&h];
    all.extend_from_slice(&sections);
    write_hashed(path, &all)
}

/// A memory-mapped `vectors.bin`.
struct VecFile {
    map: Mapped,
    dtype: DType,
    dim: usize,
    count: usize,
    layout: VecLayout,
    payload_xxh3: u64,
    path: PathBuf,
}

impl VecFile {
    fn open(path: &Path) -> Result<VecFile> {
        let (map, head) = Mapped::open_with_head(path, HEADER_LEN)?;
        let h = Header::decode(path, &head, VEC_MAGIC, "vectors")?;
        let dtype = DType::from_code(h.tag)
            .ok_or_else(|| Error::corrupt(path, format!("unknown dtype code {}", h.tag)))?;
        let layout = vec_layout(dtype, h.a, h.b)
            .ok_or_else(|| Error::corrupt(path, "dimension/count out of range"))?;
        let have = map.bytes().len() as u64;
        if have != layout.total {
            return Err(Error::corrupt(
                path,
                format!(
                    "truncated or oversized: {have} bytes, header says {}",
                    layout.total
                ),
            ));
        }
        let dim = usize::try_from(h.a).map_err(|_| Error::corrupt(path, "dim out of range"))?;
        let count = usize::try_from(h.b).map_err(|_| Error::corrupt(path, "count out of range"))?;
        Ok(VecFile {
            map,
            dtype,
            dim,
            count,
            layout,
            payload_xxh3: h.c,
            path: path.to_path_buf(),
        })
    }

    fn section(&self, off: u64, len: u64) -> &[u8] {
        // In bounds: the file size equals the layout total (checked at open).
        &self.map.bytes()[off as usize..(off + len) as usize]
    }

    fn view(&self) -> Result<VectorsRef<'_>> {
        let l = &self.layout;
        let cast_err = |e: bytemuck::PodCastError| {
            Error::corrupt(&self.path, format!("misaligned section: {e}"))
        };
        let data_b = self.section(l.data_off, l.data_len);
        let data = match self.dtype {
            DType::F32 => VectorData::F32(bytemuck::try_cast_slice(data_b).map_err(cast_err)?),
            DType::F16 => VectorData::F16(bytemuck::try_cast_slice(data_b).map_err(cast_err)?),
            DType::I8 => VectorData::I8 {
                q: bytemuck::try_cast_slice(data_b).map_err(cast_err)?,
                scales: bytemuck::try_cast_slice(self.section(l.scales_off, l.scales_len))
                    .map_err(cast_err)?,
            },
        };
        Ok(VectorsRef {
            dim: self.dim,
            count: self.count,
            data,
            norms: bytemuck::try_cast_slice(self.section(l.norms_off, l.norms_len))
                .map_err(cast_err)?,
        })
    }
}

/// One sealed shard, memory-mapped.
struct Shard {
    entry: ShardEntry,
    dir: PathBuf,
    vectors: VecFile,
    text: Option<Ragged<u8>>,
    tokens: Option<Ragged<u32>>,
    records: Option<Ragged<u8>>,
    hnsw: Option<HnswIndex>,
    /// The outcome of [`Shard::check_values`], once per process (a corrupt-file message).
    values: std::sync::OnceLock<std::result::Result<(), String>>,
    /// The outcome of [`Shard::check_vectors_sum`], once per process.
    vectors_sum: CheckedOnce,
    /// The outcome of [`Shard::check_graph_sum`], once per process (reset when a graph is built).
    graph_sum: CheckedOnce,
}

impl Shard {
    /// The xxh3 of `vectors.bin` after its header equals the one its header records. Once per
    /// process, before the first search or vector read of the shard: a changed value in the
    /// data (which no structure check sees) is an error, never a moved result.
    fn check_vectors_sum(&self) -> Result<()> {
        let v = &self.vectors;
        let bytes = v.map.bytes().get(HEADER_LEN..).unwrap_or(&[]);
        check_sum_once(
            &self.vectors_sum,
            &v.path,
            bytes,
            Some(v.payload_xxh3),
            "its header",
        )
    }

    /// Every link of the HNSW graph is checked ([`HnswIndex::check_links`]), then the xxh3 of
    /// its file against the manifest's. Once per process, before the first HNSW search of the
    /// shard: a changed code would otherwise move results without an error.
    fn check_graph_sum(&self) -> Result<()> {
        let Some(h) = &self.hnsw else { return Ok(()) };
        let Some((path, bytes)) = h.file_bytes() else {
            return Ok(()); // built in this process, not read from a file
        };
        h.check_links()?;
        let want = self.entry.files.get(HNSW_FILE).map(|s| s.xxh3);
        check_sum_once(&self.graph_sum, path, bytes, want, "the manifest")
    }

    /// Everything a search of this shard reads is checked (once per process): the vectors'
    /// checksum and values, and with `graph` the HNSW graph's checksum and links, the two files
    /// hashed in parallel.
    fn check_for_search(&self, graph: bool) -> Result<()> {
        // The specific checks first: their errors say more than a checksum mismatch.
        let vectors = || self.check_values().and_then(|()| self.check_vectors_sum());
        if !(graph && self.hnsw.is_some()) {
            return vectors();
        }
        if self.graph_sum.get().is_some() && self.vectors_sum.get().is_some() {
            // Both checked already: read the remembered outcomes without a rayon::join per
            // search (measured: +0.04 ms on a 0.2 ms HNSW query).
            return vectors().and_then(|()| self.check_graph_sum());
        }
        let (a, b) = rayon::join(vectors, || self.check_graph_sum());
        a.and(b)
    }

    /// The per-row values every search relies on are sane: norms (and i8 scales) finite and
    /// non-negative. One pass over 4 (or 8) bytes per row, at the first search of the shard; a
    /// flipped bit there would otherwise make one row win or vanish from every query.
    fn check_values(&self) -> Result<()> {
        let path = &self.vectors.path;
        self.values
            .get_or_init(|| {
                let v = self.vectors.view().map_err(|e| e.to_string())?;
                let bad = |what: &str, x: &[f32]| {
                    x.iter()
                        .position(|x| !(x.is_finite() && *x >= 0.0))
                        .map(|i| format!("row {i} has {what} {}", x[i]))
                };
                let scales = match v.data {
                    VectorData::I8 { scales, .. } => scales,
                    _ => &[],
                };
                match bad("norm", v.norms).or_else(|| bad("scale", scales)) {
                    Some(msg) => Err(msg),
                    None => Ok(()),
                }
            })
            .clone()
            .map_err(|msg| Error::corrupt(path, msg))
    }

    /// A search error about row `id` of this shard names its file.
    fn name_row_error(&self, e: Error) -> Error {
        match e {
            Error::NonFinite { id } => Error::corrupt(
                &self.vectors.path,
                format!("row {id} has a non-finite stored value (NaN or inf)"),
            ),
            other => other,
        }
    }
}

fn shard_dir_name(id: u32) -> String {
    format!("shards/{id:05}")
}

fn ragged_names(column: &str) -> (String, String) {
    (format!("{column}.bin"), format!("{column}.off"))
}

/// Parse a user metadata string: it must be a JSON object.
fn parse_meta(meta: &str) -> Result<serde_json::Value> {
    let v: serde_json::Value = serde_json::from_str(meta)
        .map_err(|e| Error::InvalidArgument(format!("meta is not valid JSON: {e}")))?;
    if !v.is_object() {
        return Err(Error::InvalidArgument(
            "meta must be a JSON object (e.g. \"{}\")".into(),
        ));
    }
    Ok(v)
}

/// Read and check `manifest.json`: format, version, fields, and its checksum when it has one.
fn read_manifest(mpath: &Path) -> Result<Manifest> {
    let bytes = std::fs::read(mpath).map_err(|e| Error::io(mpath, e))?;
    let text = std::str::from_utf8(&bytes)
        .map_err(|e| Error::corrupt(mpath, format!("not UTF-8 text: {e}")))?;
    let raw: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| Error::corrupt(mpath, format!("invalid JSON: {e}")))?;
    if raw.get("format").and_then(|v| v.as_str()) != Some(MANIFEST_FORMAT) {
        return Err(Error::corrupt(
            mpath,
            format!("not a tttnn store manifest (format must be {MANIFEST_FORMAT:?})"),
        ));
    }
    let version = raw.get("version").and_then(|v| v.as_u64());
    if version != Some(u64::from(MANIFEST_VERSION)) {
        return Err(Error::Version {
            path: mpath.to_path_buf(),
            found: version.map_or(u32::MAX, |v| u32::try_from(v).unwrap_or(u32::MAX)),
            supported: MANIFEST_VERSION,
        });
    }
    let mut manifest: Manifest = serde_json::from_value(raw)
        .map_err(|e| Error::corrupt(mpath, format!("invalid manifest: {e}")))?;
    if let Some(recorded) = manifest.checksum.take() {
        let actual = manifest.digest()?;
        if recorded != actual {
            return Err(Error::corrupt(
                mpath,
                format!("checksum mismatch: xxh3 {actual}, the manifest says {recorded} (edited by hand?)"),
            ));
        }
    }
    if manifest.dim == 0 || manifest.shard_size == 0 {
        return Err(Error::corrupt(mpath, "dim and shard_size must be positive"));
    }
    Ok(manifest)
}

/// `path` must resolve inside the store directory `root` (canonical): a symlink to a file
/// elsewhere would make the store read, and its checksums vouch for, data it does not own.
fn inside(root: &Path, path: &Path) -> Result<()> {
    let real = path.canonicalize().map_err(|e| Error::io(path, e))?;
    if real.starts_with(root) {
        Ok(())
    } else {
        Err(Error::corrupt(
            path,
            format!(
                "resolves to {}, outside the store directory {} (symlinks out of a store are \
                 refused)",
                real.display(),
                root.display()
            ),
        ))
    }
}

fn not_found(path: &Path, what: &str) -> Error {
    Error::io(
        path,
        std::io::Error::new(std::io::ErrorKind::NotFound, what.to_string()),
    )
}

/// Append-only, sharded, memory-mapped store of vectors with optional text, token ids and records.
/// Global ids are `0..len()` in append order.
pub struct EmbeddingStore {
    dir: PathBuf,
    manifest: Manifest,
    /// The opened shards, in shard order: all of them, or those given to
    /// [`EmbeddingStore::open_shards`].
    shards: Vec<Shard>,
    /// Opened with a subset of the shards: reads only, of those shards only.
    partial: bool,
    /// Taken by the first write of this handle (or its creation) and held until it is dropped.
    lock: Option<WriterLock>,
}

impl EmbeddingStore {
    /// Create a new, empty store in `dir` (which must not exist or be an empty directory).
    pub fn create(dir: &Path, options: &StoreOptions, meta: &str) -> Result<Self> {
        if options.dim == 0 {
            return Err(Error::Shape("dim must be positive".into()));
        }
        if options.shard_size == 0 {
            return Err(Error::InvalidArgument("shard_size must be positive".into()));
        }
        if let Some(p) = &options.hnsw {
            p.check()?;
        }
        let meta = parse_meta(meta)?;
        if dir.join(MANIFEST).exists() {
            return Err(Error::io(
                dir,
                std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    "a store already exists here (open it instead)",
                ),
            ));
        }
        if dir.exists() {
            let mut it = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
            if it.next().is_some() {
                return Err(Error::io(
                    dir,
                    std::io::Error::new(
                        std::io::ErrorKind::AlreadyExists,
                        "directory exists and is not empty",
                    ),
                ));
            }
        }
        let shards_dir = dir.join("shards");
        std::fs::create_dir_all(&shards_dir).map_err(|e| Error::io(&shards_dir, e))?;
        let lock = Some(WriterLock::acquire(dir)?);
        let store = EmbeddingStore {
            dir: dir.to_path_buf(),
            manifest: Manifest {
                format: MANIFEST_FORMAT.into(),
                version: MANIFEST_VERSION,
                dim: options.dim,
                dtype: options.dtype,
                metric: options.metric,
                shard_size: options.shard_size,
                hnsw: options.hnsw,
                has_text: options.with_text,
                has_tokens: options.with_tokens,
                has_records: options.with_records,
                count: 0,
                meta,
                shards: Vec::new(),
                checksum: None,
            },
            shards: Vec::new(),
            partial: false,
            lock,
        };
        store.write_manifest(&store.manifest)?;
        Ok(store)
    }

    /// Open an existing store: reads the manifest and the file headers, maps the files, checks
    /// sizes and headers against the manifest. Does not read the vectors.
    pub fn open(dir: &Path) -> Result<Self> {
        Self::open_shards(dir, None)
    }

    /// [`EmbeddingStore::open`] of the shards `only` (None: all): the other shards' files are
    /// neither opened nor checked, and need not be there (a node serving some shards holds only
    /// their directories and `manifest.json`). Such a handle reads and searches its shards
    /// only, with global ids and shard numbers, and cannot write.
    pub fn open_shards(dir: &Path, only: Option<&[usize]>) -> Result<Self> {
        if !dir.is_dir() {
            return Err(not_found(dir, "store directory not found"));
        }
        let root = dir.canonicalize().map_err(|e| Error::io(dir, e))?;
        let mpath = dir.join(MANIFEST);
        inside(&root, &mpath)?;
        let manifest = read_manifest(&mpath)?;
        let mut shards = Vec::with_capacity(manifest.shards.len());
        let mut start = 0u64;
        for (i, e) in manifest.shards.iter().enumerate() {
            if e.id as usize != i || e.dir != shard_dir_name(e.id) || e.start != start {
                return Err(Error::corrupt(
                    &mpath,
                    format!(
                        "shard list inconsistent at position {i} (id {}, dir {:?}, start {})",
                        e.id, e.dir, e.start
                    ),
                ));
            }
            start = start
                .checked_add(e.count)
                .ok_or_else(|| Error::corrupt(&mpath, "shard counts overflow"))?;
        }
        let chosen: Vec<usize> = match only {
            None => (0..manifest.shards.len()).collect(),
            Some(list) => {
                let mut list = list.to_vec();
                list.sort_unstable();
                list.dedup();
                if let Some(&bad) = list.iter().find(|&&i| i >= manifest.shards.len()) {
                    return Err(Error::OutOfRange(format!(
                        "shard {bad} out of range: the store has {} shards, numbered from 0",
                        manifest.shards.len()
                    )));
                }
                list
            }
        };
        for i in chosen {
            shards.push(Self::open_shard(
                dir,
                &root,
                &manifest,
                manifest.shards[i].clone(),
            )?);
        }
        if start != manifest.count {
            return Err(Error::corrupt(
                &mpath,
                format!(
                    "count {} differs from the sum of shard counts {start}",
                    manifest.count
                ),
            ));
        }
        Ok(EmbeddingStore {
            dir: dir.to_path_buf(),
            manifest,
            shards,
            partial: only.is_some(),
            lock: None,
        })
    }

    /// The opened shard numbered `i`, or why not.
    fn shard(&self, i: usize) -> Result<&Shard> {
        if i >= self.manifest.shards.len() {
            return Err(Error::OutOfRange(format!(
                "shard {i} out of range: the store has {} shards, numbered from 0",
                self.manifest.shards.len()
            )));
        }
        let at = self.shards.partition_point(|s| (s.entry.id as usize) < i);
        match self.shards.get(at) {
            Some(s) if s.entry.id as usize == i => Ok(s),
            _ => Err(self.not_opened(i)),
        }
    }

    fn not_opened(&self, i: usize) -> Error {
        let opened: Vec<u32> = self.shards.iter().map(|s| s.entry.id).collect();
        Error::InvalidArgument(format!(
            "shard {i} of {} was not opened by this handle (opened with shards {opened:?})",
            self.dir.display()
        ))
    }

    /// Release the writer lock now instead of when the handle is dropped; the handle stays
    /// usable, and its next write takes the lock again.
    pub fn release_lock(&mut self) {
        self.lock = None;
    }

    /// Take the writer lock before the first write of this handle. The manifest on disk must
    /// still be the one this handle read: otherwise another writer changed the store since.
    fn lock_for_writing(&mut self) -> Result<()> {
        if self.partial {
            return Err(Error::InvalidArgument(format!(
                "{}: this handle opened some shards only, for reading; open the whole store to \
                 write",
                self.dir.display()
            )));
        }
        if self.lock.is_some() {
            return Ok(());
        }
        let lock = WriterLock::acquire(&self.dir)?;
        let now = read_manifest(&self.dir.join(MANIFEST))?;
        if now.digest()? != self.manifest.digest()? {
            return Err(Error::Index(format!(
                "{}: the store was changed by another writer after this handle opened it; open \
                 it again to write",
                self.dir.display()
            )));
        }
        self.lock = Some(lock);
        Ok(())
    }

    fn open_shard(root: &Path, canon: &Path, m: &Manifest, entry: ShardEntry) -> Result<Shard> {
        let dir = root.join(&entry.dir);
        inside(canon, &dir)?;
        // Every listed file must exist with the recorded size (cheap: metadata only).
        for (name, sum) in &entry.files {
            if name.contains('/') || name.contains('\\') || name.starts_with('.') {
                return Err(Error::corrupt(
                    root.join(MANIFEST),
                    format!("bad file name {name:?}"),
                ));
            }
            let p = dir.join(name);
            if !p.exists() {
                return Err(not_found(&p, "file listed in manifest.json is missing"));
            }
            inside(canon, &p)?;
            let have = file_len(&p)?;
            if have != sum.bytes {
                return Err(Error::corrupt(
                    &p,
                    format!(
                        "truncated or oversized: {have} bytes, manifest says {}",
                        sum.bytes
                    ),
                ));
            }
        }
        let need = |name: &str| -> Result<PathBuf> {
            if entry.files.contains_key(name) {
                Ok(dir.join(name))
            } else {
                Err(Error::corrupt(
                    root.join(MANIFEST),
                    format!("shard {} does not list {name}", entry.id),
                ))
            }
        };
        let vectors = VecFile::open(&need(VECTORS)?)?;
        if vectors.dtype != m.dtype || vectors.dim != m.dim || vectors.count as u64 != entry.count {
            return Err(Error::corrupt(
                &vectors.path,
                format!(
                    "header says {} × {} {}, manifest says {} × {} {}",
                    vectors.count,
                    vectors.dim,
                    vectors.dtype.as_str(),
                    entry.count,
                    m.dim,
                    m.dtype.as_str()
                ),
            ));
        }
        fn column<T: crate::ragged::RaggedElem>(
            on: bool,
            col: &str,
            entry: &ShardEntry,
            need: &dyn Fn(&str) -> Result<PathBuf>,
        ) -> Result<Option<Ragged<T>>> {
            if !on {
                return Ok(None);
            }
            let (b, o) = ragged_names(col);
            let (bp, op) = (need(&b)?, need(&o)?);
            let r = Ragged::<T>::open(&bp, &op)?;
            if r.len() as u64 != entry.count {
                return Err(Error::corrupt(
                    &op,
                    format!("{} records, manifest says {}", r.len(), entry.count),
                ));
            }
            if entry.files.get(&b).map(|s| s.xxh3) != Some(r.data_xxh3()) {
                return Err(Error::corrupt(
                    &bp,
                    "checksum in the offsets header differs from manifest.json",
                ));
            }
            Ok(Some(r))
        }
        let text = column::<u8>(m.has_text, "text", &entry, &need)?;
        let tokens = column::<u32>(m.has_tokens, "tokens", &entry, &need)?;
        let records = column::<u8>(m.has_records, "records", &entry, &need)?;
        let hnsw = match (&m.hnsw, entry.files.contains_key(HNSW_FILE)) {
            (Some(p), true) => Some(HnswIndex::view(
                &dir.join(HNSW_FILE),
                vectors.count,
                m.dim,
                m.metric,
                p,
                entry.hnsw_scale,
                &entry.hnsw_stranded,
            )?),
            _ => None,
        };
        Ok(Shard {
            entry,
            dir,
            vectors,
            text,
            tokens,
            records,
            hnsw,
            values: std::sync::OnceLock::new(),
            vectors_sum: CheckedOnce::new(),
            graph_sum: CheckedOnce::new(),
        })
    }

    /// Write `m` as the manifest: `manifest.json.tmp`, fsync, rename, fsync the directory.
    fn write_manifest(&self, m: &Manifest) -> Result<()> {
        let tmp = self.dir.join("manifest.json.tmp");
        let m = Manifest {
            checksum: Some(m.digest()?),
            ..m.clone()
        };
        let json = serde_json::to_vec_pretty(&m)
            .map_err(|e| Error::InvalidArgument(format!("cannot serialize manifest: {e}")))?;
        write_hashed(&tmp, &[&json])?;
        let dst = self.dir.join(MANIFEST);
        std::fs::rename(&tmp, &dst).map_err(|e| Error::io(&dst, e))?;
        fsync_dir(&self.dir)
    }

    /// Append `vectors` (`n × dim`, row-major) and, when the store has them, `n` texts (UTF-8),
    /// token id lists and records. Splits into shards of at most `shard_size`, each sealed by an
    /// atomic manifest write. Returns the ids of the shards written.
    pub fn append(
        &mut self,
        vectors: &[f32],
        texts: Option<&[&[u8]]>,
        tokens: Option<&[&[u32]]>,
        records: Option<&[&[u8]]>,
    ) -> Result<Vec<u32>> {
        self.lock_for_writing()?;
        let dim = self.manifest.dim;
        if vectors.len() % dim != 0 {
            return Err(Error::Shape(format!(
                "vectors hold {} values, not a multiple of the store dimension {dim}",
                vectors.len()
            )));
        }
        let n = vectors.len() / dim;
        if let Some(pos) = vectors.iter().position(|v| !v.is_finite()) {
            return Err(Error::DType(format!(
                "vector row {} has a non-finite value ({}) at column {}",
                pos / dim,
                vectors[pos],
                pos % dim
            )));
        }
        if self.manifest.dtype == DType::F16 {
            if let Some(pos) = vectors.iter().position(|v| v.abs() > F16_MAX) {
                return Err(Error::DType(format!(
                    "vector row {} has value {} at column {}, beyond the f16 range (±{F16_MAX})",
                    pos / dim,
                    vectors[pos],
                    pos % dim
                )));
            }
        }
        let check_col = |name: &str, has: bool, len: Option<usize>| -> Result<()> {
            match (has, len) {
                (true, None) => Err(Error::InvalidArgument(format!(
                    "this store keeps {name}: pass {name} for every vector"
                ))),
                (false, Some(_)) => Err(Error::InvalidArgument(format!(
                    "this store was created without {name} (with_{name}=False)"
                ))),
                (true, Some(l)) if l != n => {
                    Err(Error::Shape(format!("got {l} {name} for {n} vectors")))
                }
                _ => Ok(()),
            }
        };
        check_col("text", self.manifest.has_text, texts.map(|t| t.len()))?;
        check_col("tokens", self.manifest.has_tokens, tokens.map(|t| t.len()))?;
        check_col(
            "records",
            self.manifest.has_records,
            records.map(|t| t.len()),
        )?;
        if let Some(texts) = texts {
            for (i, t) in texts.iter().enumerate() {
                if let Err(e) = std::str::from_utf8(t) {
                    return Err(Error::DType(format!("text {i} is not valid UTF-8: {e}")));
                }
            }
        }
        let mut written = Vec::new();
        let step = self.manifest.shard_size;
        let mut lo = 0;
        while lo < n {
            let hi = (lo + step).min(n);
            let id = self.write_shard(
                &vectors[lo * dim..hi * dim],
                texts.map(|t| &t[lo..hi]),
                tokens.map(|t| &t[lo..hi]),
                records.map(|t| &t[lo..hi]),
            )?;
            written.push(id);
            lo = hi;
        }
        Ok(written)
    }

    fn write_shard(
        &mut self,
        vectors: &[f32],
        texts: Option<&[&[u8]]>,
        tokens: Option<&[&[u32]]>,
        records: Option<&[&[u8]]>,
    ) -> Result<u32> {
        let m = &self.manifest;
        let id = u32::try_from(self.shards.len())
            .map_err(|_| Error::InvalidArgument("too many shards".into()))?;
        let name = shard_dir_name(id);
        let final_dir = self.dir.join(&name);
        let tmp_dir = self.dir.join(format!("{name}.tmp"));
        // Leftovers of an interrupted append are not listed in the manifest: replace them.
        for d in [&tmp_dir, &final_dir] {
            if d.exists() {
                std::fs::remove_dir_all(d).map_err(|e| Error::io(d, e))?;
            }
        }
        std::fs::create_dir_all(&tmp_dir).map_err(|e| Error::io(&tmp_dir, e))?;
        let mut files = BTreeMap::new();
        let (enc, norms) = encode(m.dtype, m.dim, vectors);
        files.insert(
            VECTORS.to_string(),
            write_vectors(&tmp_dir.join(VECTORS), m.dtype, m.dim, &enc, &norms)?,
        );
        let mut col_u8 = |col: &str, items: Option<&[&[u8]]>| -> Result<()> {
            if let Some(items) = items {
                let (b, o) = ragged_names(col);
                let (bs, os) = write_ragged(&tmp_dir.join(&b), &tmp_dir.join(&o), items)?;
                files.insert(b, bs);
                files.insert(o, os);
            }
            Ok(())
        };
        col_u8("text", texts)?;
        col_u8("records", records)?;
        if let Some(items) = tokens {
            let (b, o) = ragged_names("tokens");
            let (bs, os) = write_ragged(&tmp_dir.join(&b), &tmp_dir.join(&o), items)?;
            files.insert(b, bs);
            files.insert(o, os);
        }
        let (mut hnsw_scale, mut hnsw_stranded) = (None, Vec::new());
        if let Some(params) = &m.hnsw {
            let view = enc.view(m.dim, &norms);
            let index = HnswIndex::build(view, m.metric, params, 0)?;
            let p = tmp_dir.join(HNSW_FILE);
            index.save(&p)?;
            files.insert(HNSW_FILE.to_string(), sum_existing(&p)?);
            hnsw_scale = Some(index.scale());
            hnsw_stranded = index.stranded().to_vec();
        }
        fsync_dir(&tmp_dir)?;
        std::fs::rename(&tmp_dir, &final_dir).map_err(|e| Error::io(&final_dir, e))?;
        fsync_dir(&self.dir.join("shards"))?;
        let entry = ShardEntry {
            id,
            dir: name,
            start: m.count,
            count: norms.len() as u64,
            files,
            hnsw_scale,
            hnsw_stranded,
        };
        let mut next = m.clone();
        next.count += entry.count;
        next.shards.push(entry.clone());
        // The shard is sealed (visible) once this rename lands.
        self.write_manifest(&next)?;
        let canon = self
            .dir
            .canonicalize()
            .map_err(|e| Error::io(&self.dir, e))?;
        let shard = Self::open_shard(&self.dir, &canon, &next, entry)?;
        self.manifest = next;
        self.shards.push(shard);
        Ok(id)
    }

    /// Build the HNSW graph of every shard that lacks one; each graph is saved, fsynced and then
    /// listed in the manifest, so an interrupted build resumes where it stopped. Returns how many
    /// graphs were built. Later appends build their graphs as they seal.
    pub fn build_hnsw(&mut self, threads: usize) -> Result<usize> {
        self.lock_for_writing()?;
        let params = self.manifest.hnsw.unwrap_or_default();
        let mut built = 0;
        for i in 0..self.shards.len() {
            if self.shards[i].hnsw.is_some() {
                continue;
            }
            let shard = &self.shards[i];
            let index = HnswIndex::build(
                shard.vectors.view()?,
                self.manifest.metric,
                &params,
                threads,
            )?;
            let tmp = shard.dir.join(format!("{HNSW_FILE}.tmp"));
            let dst = shard.dir.join(HNSW_FILE);
            index.save(&tmp)?;
            let scale = Some(index.scale());
            let stranded = index.stranded().to_vec();
            drop(index);
            let sum = sum_existing(&tmp)?;
            std::fs::rename(&tmp, &dst).map_err(|e| Error::io(&dst, e))?;
            fsync_dir(&shard.dir)?;
            let mut next = self.manifest.clone();
            next.hnsw = Some(params);
            next.shards[i].files.insert(HNSW_FILE.to_string(), sum);
            next.shards[i].hnsw_scale = scale;
            next.shards[i].hnsw_stranded = stranded;
            self.write_manifest(&next)?;
            let view = HnswIndex::view(
                &dst,
                shard.vectors.count,
                next.dim,
                next.metric,
                &params,
                scale,
                &next.shards[i].hnsw_stranded,
            )?;
            self.shards[i].entry = next.shards[i].clone();
            self.shards[i].hnsw = Some(view);
            self.shards[i].graph_sum = CheckedOnce::new();
            self.manifest = next;
            built += 1;
        }
        if self.manifest.hnsw.is_none() {
            // An empty store: remember that future shards get graphs.
            let mut next = self.manifest.clone();
            next.hnsw = Some(params);
            self.write_manifest(&next)?;
            self.manifest = next;
        }
        Ok(built)
    }

    /// Read every file and check sizes and xxh3 checksums (manifest and headers), and the
    /// structure of every HNSW graph: [`EmbeddingStore::verify_shard`] for every shard.
    pub fn verify(&self) -> Result<()> {
        self.opened_shards()
            .into_par_iter()
            .try_for_each(|i| self.verify_shard(i))
    }

    /// Verify shard `i` (its files in parallel): sizes and xxh3 of every file against the
    /// manifest and the headers, norms and scales, ragged offsets, and every link of its HNSW
    /// graph. Callers can show progress shard by shard.
    pub fn verify_shard(&self, i: usize) -> Result<()> {
        let s = self.shard(i)?;
        let payload_of = |name: &str| match name {
            VECTORS => Some(s.vectors.payload_xxh3),
            "text.off" => s.text.as_ref().map(|r| r.offsets_xxh3()),
            "records.off" => s.records.as_ref().map(|r| r.offsets_xxh3()),
            "tokens.off" => s.tokens.as_ref().map(|r| r.offsets_xxh3()),
            _ => None,
        };
        let jobs: Vec<(PathBuf, FileSum, Option<u64>)> = s
            .entry
            .files
            .iter()
            .map(|(name, sum)| (s.dir.join(name), *sum, payload_of(name)))
            .collect();
        jobs.par_iter().try_for_each(|(path, sum, payload)| {
            let (bytes, whole, tail) = hash_file(path, HEADER_LEN as u64)?;
            if bytes != sum.bytes {
                return Err(Error::corrupt(
                    path,
                    format!(
                        "truncated or oversized: {bytes} bytes, manifest says {}",
                        sum.bytes
                    ),
                ));
            }
            if whole != sum.xxh3 {
                return Err(Error::corrupt(
                    path,
                    format!(
                        "checksum mismatch: xxh3 {whole:016x}, manifest says {:016x}",
                        sum.xxh3
                    ),
                ));
            }
            if payload.is_some_and(|p| p != tail) {
                return Err(Error::corrupt(
                    path,
                    "payload checksum differs from the header",
                ));
            }
            Ok(())
        })?;
        s.check_values()?;
        for col in [&s.text, &s.records] {
            col.as_ref().map(Ragged::check_offsets).transpose()?;
        }
        s.tokens.as_ref().map(Ragged::check_offsets).transpose()?;
        s.hnsw.as_ref().map(HnswIndex::check_links).transpose()?;
        Ok(())
    }

    /// Replace the user metadata (a JSON object string), atomically.
    pub fn set_meta(&mut self, meta: &str) -> Result<()> {
        self.lock_for_writing()?;
        let mut next = self.manifest.clone();
        next.meta = parse_meta(meta)?;
        self.write_manifest(&next)?;
        self.manifest = next;
        Ok(())
    }

    pub fn meta(&self) -> String {
        self.manifest.meta.to_string()
    }

    /// Adopt the sealed shards of another store, `unit` (a store directory written by a build
    /// worker), as the next shards of this one: each shard directory is renamed into
    /// `shards/` under its new number, its `start` rebased onto this store's count, and one
    /// manifest listing them all (with `meta`, when given, replacing the user metadata) is written
    /// atomically. Shards keep their own counts (at most this store's `shard_size`), so a store
    /// may hold shards of varying sizes. The unit must match this store: dimension, dtype, metric,
    /// columns, HNSW settings, and every shard with a graph when this store builds graphs.
    ///
    /// The unit is left without its shards (its manifest, now dangling, is the caller's to
    /// remove); a unit with no shard only updates the metadata. If a rename fails midway the
    /// shards already moved are moved back; a crash midway leaves this store as it was (the moved
    /// directories are unlisted, replaced by the next append) and the unit unopenable.
    /// Returns the ids of the adopted shards.
    pub fn adopt(&mut self, unit: &Path, meta: Option<&str>) -> Result<Vec<u32>> {
        self.lock_for_writing()?;
        let meta = meta.map(parse_meta).transpose()?;
        let same_dir = |a: &Path, b: &Path| match (a.canonicalize(), b.canonicalize()) {
            (Ok(a), Ok(b)) => a == b,
            _ => false,
        };
        if same_dir(unit, &self.dir) {
            return Err(Error::InvalidArgument(
                "a store cannot adopt its own shards".into(),
            ));
        }
        let src = EmbeddingStore::open(unit)?;
        // No writer may be adding to the unit while its shards move.
        let _unit_lock = WriterLock::acquire(unit)?;
        let (m, u) = (&self.manifest, &src.manifest);
        let mismatch = |what: &str, ours: String, theirs: String| {
            Error::InvalidArgument(format!(
                "cannot adopt {}: its {what} is {theirs}, this store's is {ours}",
                unit.display()
            ))
        };
        if u.dim != m.dim {
            return Err(mismatch("dimension", m.dim.to_string(), u.dim.to_string()));
        }
        if u.dtype != m.dtype {
            return Err(mismatch(
                "dtype",
                m.dtype.as_str().into(),
                u.dtype.as_str().into(),
            ));
        }
        if u.metric != m.metric {
            return Err(mismatch(
                "metric",
                format!("{:?}", m.metric),
                format!("{:?}", u.metric),
            ));
        }
        let cols = |s: &Manifest| {
            format!(
                "text={} tokens={} records={}",
                s.has_text, s.has_tokens, s.has_records
            )
        };
        if cols(u) != cols(m) {
            return Err(mismatch("columns", cols(m), cols(u)));
        }
        if u.hnsw != m.hnsw {
            return Err(mismatch(
                "HNSW settings",
                format!("{:?}", m.hnsw),
                format!("{:?}", u.hnsw),
            ));
        }
        for (i, s) in src.shards.iter().enumerate() {
            if s.entry.count as usize > m.shard_size {
                return Err(mismatch(
                    &format!("shard {i}"),
                    format!("shard_size {}", m.shard_size),
                    format!("{} entries", s.entry.count),
                ));
            }
            if m.hnsw.is_some() && s.hnsw.is_none() {
                return Err(Error::InvalidArgument(format!(
                    "cannot adopt {}: its shard {i} has no HNSW graph and this store builds them",
                    unit.display()
                )));
            }
        }
        let base = u32::try_from(self.shards.len())
            .map_err(|_| Error::InvalidArgument("too many shards".into()))?;
        let mut next = m.clone();
        let mut moves: Vec<(PathBuf, PathBuf)> = Vec::new();
        let mut ids = Vec::new();
        for (i, s) in src.shards.iter().enumerate() {
            let id = u32::try_from(i)
                .ok()
                .and_then(|i| base.checked_add(i))
                .ok_or_else(|| Error::InvalidArgument("too many shards".into()))?;
            let name = shard_dir_name(id);
            let entry = ShardEntry {
                id,
                dir: name.clone(),
                start: next.count,
                ..s.entry.clone()
            };
            next.count = next
                .count
                .checked_add(entry.count)
                .ok_or_else(|| Error::InvalidArgument("store count overflows".into()))?;
            next.shards.push(entry);
            moves.push((s.dir.clone(), self.dir.join(name)));
            ids.push(id);
        }
        if let Some(meta) = meta {
            next.meta = meta;
        }
        drop(src); // unmap the unit's files before they move
        for (n, (from, to)) in moves.iter().enumerate() {
            // Leftovers of an interrupted append or adoption are not listed: replace them.
            let step = if to.exists() {
                std::fs::remove_dir_all(to).map_err(|e| Error::io(to, e))
            } else {
                Ok(())
            }
            .and_then(|()| std::fs::rename(from, to).map_err(|e| Error::io(to, e)));
            if let Err(e) = step {
                undo_moves(&moves[..n]);
                return Err(e);
            }
        }
        fsync_dir(&self.dir.join("shards"))?;
        fsync_dir(&unit.join("shards"))?;
        let canon = self
            .dir
            .canonicalize()
            .map_err(|e| Error::io(&self.dir, e))?;
        let opened = next.shards[self.shards.len()..]
            .iter()
            .map(|e| Self::open_shard(&self.dir, &canon, &next, e.clone()))
            .collect::<Result<Vec<_>>>();
        let opened = match opened {
            Ok(o) => o,
            Err(e) => {
                undo_moves(&moves);
                return Err(e);
            }
        };
        // The shards belong to this store once this rename lands.
        self.write_manifest(&next)?;
        self.manifest = next;
        self.shards.extend(opened);
        Ok(ids)
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    pub fn len(&self) -> u64 {
        self.manifest.count
    }

    pub fn is_empty(&self) -> bool {
        self.manifest.count == 0
    }

    pub fn dim(&self) -> usize {
        self.manifest.dim
    }

    pub fn dtype(&self) -> DType {
        self.manifest.dtype
    }

    pub fn metric(&self) -> Metric {
        self.manifest.metric
    }

    pub fn shard_size(&self) -> usize {
        self.manifest.shard_size
    }

    /// Shards of the store (opened or not).
    pub fn num_shards(&self) -> usize {
        self.manifest.shards.len()
    }

    pub fn shard_counts(&self) -> Vec<u64> {
        self.manifest.shards.iter().map(|e| e.count).collect()
    }

    /// Numbers of the shards this handle opened (all but after `open_shards`).
    pub fn opened_shards(&self) -> Vec<usize> {
        self.shards.iter().map(|s| s.entry.id as usize).collect()
    }

    /// Ids of the rows no walk of their shard's HNSW graph reaches; every HNSW search scores
    /// them exactly (for inner product, those that can still make the top k).
    pub fn hnsw_stranded(&self) -> Vec<u64> {
        self.manifest
            .shards
            .iter()
            .flat_map(|e| e.hnsw_stranded.iter().map(|&k| e.start + k))
            .collect()
    }

    pub fn has_text(&self) -> bool {
        self.manifest.has_text
    }

    pub fn has_tokens(&self) -> bool {
        self.manifest.has_tokens
    }

    pub fn has_records(&self) -> bool {
        self.manifest.has_records
    }

    /// HNSW parameters when the store builds graphs.
    pub fn hnsw_params(&self) -> Option<HnswParams> {
        self.manifest.hnsw
    }

    /// True when every shard has an HNSW graph (and there is at least one shard), opened or not.
    pub fn has_hnsw(&self) -> bool {
        self.manifest.hnsw.is_some()
            && !self.manifest.shards.is_empty()
            && self
                .manifest
                .shards
                .iter()
                .all(|e| e.files.contains_key(HNSW_FILE))
    }

    /// `(global start id, vectors)` of every shard, borrowed from the memory maps.
    pub fn views(&self) -> Result<Vec<(u64, VectorsRef<'_>)>> {
        self.shards
            .iter()
            .map(|s| Ok((s.entry.start, s.vectors.view()?)))
            .collect()
    }

    /// Top-`k` of each of the `nq × dim` queries. `exact` scans every vector; otherwise each
    /// shard's HNSW graph is searched (`ef` = expansion) and the per-shard lists are merged
    /// (shards without a graph are scanned exactly).
    pub fn search(
        &self,
        queries: &[f32],
        k: usize,
        exact: bool,
        ef: Option<usize>,
    ) -> Result<SearchResult> {
        self.search_shards(queries, k, exact, ef, None)
    }

    /// [`EmbeddingStore::search`] over the shards numbered `shards` only (`None`: all), ids
    /// global. Every search is the per-shard top-`k` lists merged by [`crate::knn::merge_topk`]
    /// (score, then id), so searching groups of shards and merging their lists gives exactly the
    /// search of all of them: what a search spread over processes relies on. A shard number
    /// out of range is an error; repeats count once.
    pub fn search_shards(
        &self,
        queries: &[f32],
        k: usize,
        exact: bool,
        ef: Option<usize>,
        shards: Option<&[usize]>,
    ) -> Result<SearchResult> {
        let nq = check_queries(queries, self.manifest.dim)?;
        let chosen: Vec<&Shard> = match shards {
            None => self.shards.iter().collect(),
            Some(list) => {
                if list.is_empty() {
                    return Err(Error::InvalidArgument(
                        "shards is empty: give at least one shard number".into(),
                    ));
                }
                let mut list = list.to_vec();
                list.sort_unstable();
                list.dedup();
                list.iter()
                    .map(|&i| self.shard(i))
                    .collect::<Result<Vec<_>>>()?
            }
        };
        let available: u64 = chosen.iter().map(|s| s.entry.count).sum();
        check_k(k, nq, available as usize)?;
        if chosen.is_empty() || nq == 0 {
            return Ok(SearchResult::empty(nq, k));
        }
        let metric = self.manifest.metric;
        if !exact && !self.shards.iter().any(|s| s.hnsw.is_some()) {
            return Err(Error::InvalidArgument(
                "this store has no HNSW graphs: create it with hnsw=True, call build_hnsw(), or search with exact=True".into(),
            ));
        }
        chosen
            .par_iter()
            .try_for_each(|s| s.check_for_search(!exact))?;
        // A non-finite stored value found by a search names the shard's file.
        let named = |e: Error| match e {
            Error::NonFinite { id } => match self.locate(id) {
                Ok((s, _)) => s.name_row_error(e),
                Err(_) => e,
            },
            other => other,
        };
        let one = |s: &Shard| -> Result<SearchResult> {
            let start = s.entry.start as i64;
            // No padding per shard (the merge pads), so no shard refuses a `k` the store takes.
            let k = k.min(s.entry.count as usize).max(1);
            match (&s.hnsw, exact) {
                (Some(h), false) => {
                    let mut r =
                        h.search(s.vectors.view()?, queries, k, ef)
                            .map_err(|e| match e {
                                Error::NonFinite { id } => {
                                    s.name_row_error(Error::NonFinite { id: id + start })
                                }
                                other => other,
                            })?;
                    for id in r.ids.iter_mut().filter(|id| **id >= 0) {
                        *id += start;
                    }
                    Ok(r)
                }
                _ => crate::knn::exact_search(
                    &[(s.entry.start, s.vectors.view()?)],
                    queries,
                    k,
                    metric,
                )
                .map_err(named),
            }
        };
        // Exact: shards in parallel (each scan is parallel too); HNSW: one after another, as
        // before (each graph search parallelises over the queries).
        let parts = if exact {
            chosen
                .par_iter()
                .map(|s| one(s))
                .collect::<Result<Vec<_>>>()?
        } else {
            chosen.iter().map(|s| one(s)).collect::<Result<Vec<_>>>()?
        };
        let result = crate::knn::merge_topk(&parts, k, metric);
        if metric == Metric::Cosine {
            self.check_cosine(&result)?;
        }
        Ok(result)
    }

    /// Cosine scores are within [-1, 1] up to rounding. One outside means the row's stored norm
    /// does not match its vector (a norm of 0.001 would make the row win every query).
    fn check_cosine(&self, r: &SearchResult) -> Result<()> {
        const SLACK: f32 = 1e-3;
        let bad = r
            .ids
            .iter()
            .zip(&r.scores)
            .find(|(&id, s)| id >= 0 && s.abs() > 1.0 + SLACK);
        if let Some((&id, score)) = bad {
            let (s, local) = self.locate(id)?;
            return Err(Error::corrupt(
                &s.vectors.path,
                format!(
                    "row {local} (id {id}) scores {score} under cosine, outside [-1, 1]: its \
                     stored norm does not match its vector"
                ),
            ));
        }
        Ok(())
    }

    fn locate(&self, id: i64) -> Result<(&Shard, usize)> {
        let id = u64::try_from(id)
            .ok()
            .filter(|&i| i < self.manifest.count)
            .ok_or_else(|| {
                Error::OutOfRange(format!(
                    "id {id} out of range: the store holds {} vectors",
                    self.manifest.count
                ))
            })?;
        let i = self
            .manifest
            .shards
            .partition_point(|e| e.start + e.count <= id);
        let s = self.shard(i)?;
        Ok((s, (id - s.entry.start) as usize))
    }

    /// Dequantized vectors of `ids`, row-major `len(ids) × dim`.
    pub fn get_vectors(&self, ids: &[i64]) -> Result<Vec<f32>> {
        let d = self.manifest.dim;
        let mut out = vec![0f32; ids.len() * d];
        for (row, &id) in out.chunks_mut(d).zip(ids) {
            let (s, local) = self.locate(id)?;
            s.check_values()?;
            s.check_vectors_sum()?;
            s.vectors.view()?.row_f32(local, row);
        }
        Ok(out)
    }

    fn column<'a, T: crate::ragged::RaggedElem>(
        &'a self,
        id: i64,
        name: &str,
        pick: impl Fn(&'a Shard) -> Option<&'a Ragged<T>>,
    ) -> Result<&'a [T]> {
        let (s, local) = self.locate(id)?;
        let col = pick(s).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "this store was created without {name} (with_{name}=False)"
            ))
        })?;
        col.get(local)
    }

    /// UTF-8 bytes of the text of `id`.
    pub fn text_bytes(&self, id: i64) -> Result<&[u8]> {
        self.column(id, "text", |s| s.text.as_ref())
    }

    /// Text of `id` (validated as UTF-8 on read too).
    pub fn text(&self, id: i64) -> Result<&str> {
        let b = self.text_bytes(id)?;
        std::str::from_utf8(b).map_err(|e| {
            let (s, _) = self
                .locate(id)
                .map_or((PathBuf::new(), 0), |(s, l)| (s.dir.join("text.bin"), l));
            Error::corrupt(s, format!("text {id} is not valid UTF-8: {e}"))
        })
    }

    /// Token ids of `id`, borrowed from the memory map.
    pub fn tokens(&self, id: i64) -> Result<&[u32]> {
        self.column(id, "tokens", |s| s.tokens.as_ref())
    }

    /// Record bytes of `id`.
    pub fn record(&self, id: i64) -> Result<&[u8]> {
        self.column(id, "records", |s| s.records.as_ref())
    }
}

/// Move adopted shard directories back to their unit, last first (best effort: the adoption
/// failed before the manifest listed them).
fn undo_moves(moves: &[(PathBuf, PathBuf)]) {
    for (from, to) in moves.iter().rev() {
        let _ = std::fs::rename(to, from);
    }
}

/// Size and xxh3 of a file written by someone else (the HNSW graph).
fn sum_existing(path: &Path) -> Result<FileSum> {
    let (bytes, xxh3, _) = hash_file(path, 0)?;
    Ok(FileSum { bytes, xxh3 })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::test_matrix;

    fn opts(dim: usize, dtype: DType) -> StoreOptions {
        StoreOptions {
            dtype,
            shard_size: 7,
            with_text: true,
            with_tokens: true,
            with_records: true,
            ..StoreOptions::new(dim)
        }
    }

    fn fill(store: &mut EmbeddingStore, n: usize, seed: u64) -> Vec<f32> {
        let x = test_matrix(n, store.dim(), seed);
        let texts: Vec<String> = (0..n)
            .map(|i| format!("doc {seed}/{i} naïve 東京 🙂"))
            .collect();
        let tb: Vec<&[u8]> = texts.iter().map(|t| t.as_bytes()).collect();
        let toks: Vec<Vec<u32>> = (0..n).map(|i| (0..i as u32).collect()).collect();
        let tk: Vec<&[u32]> = toks.iter().map(|t| t.as_slice()).collect();
        let recs: Vec<Vec<u8>> = (0..n).map(|i| vec![i as u8; i % 3]).collect();
        let rk: Vec<&[u8]> = recs.iter().map(|t| t.as_slice()).collect();
        store.append(&x, Some(&tb), Some(&tk), Some(&rk)).unwrap();
        x
    }

    /// A store of `n` filled rows in a new temporary directory (kept alive by the returned guard).
    fn filled(dim: usize, dtype: DType, n: usize) -> (tempfile::TempDir, PathBuf, EmbeddingStore) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("s");
        let mut store = EmbeddingStore::create(&dir, &opts(dim, dtype), "{}").unwrap();
        fill(&mut store, n, 1);
        (tmp, dir, store)
    }

    #[test]
    fn roundtrip_every_dtype() {
        for (dtype, tol) in [
            (DType::F32, 0.0),
            (DType::F16, 1e-3),
            (DType::I8, 1.0 / 127.0),
        ] {
            let tmp = tempfile::tempdir().unwrap();
            let dir = tmp.path().join("s");
            let mut store = EmbeddingStore::create(&dir, &opts(5, dtype), "{\"a\": 1}").unwrap();
            let x = fill(&mut store, 17, 3);
            assert_eq!(store.shard_counts(), vec![7, 7, 3]);
            let store = EmbeddingStore::open(&dir).unwrap();
            store.verify().unwrap();
            assert_eq!(store.len(), 17);
            assert_eq!(store.meta(), "{\"a\":1}");
            let ids: Vec<i64> = (0..17).rev().collect();
            let got = store.get_vectors(&ids).unwrap();
            for (r, &id) in ids.iter().enumerate() {
                let want = &x[id as usize * 5..(id as usize + 1) * 5];
                let row = &got[r * 5..(r + 1) * 5];
                let amax = want.iter().fold(0f32, |m, v| m.max(v.abs()));
                for (a, b) in row.iter().zip(want) {
                    assert!(
                        (a - b).abs() <= tol * amax.max(1.0) + 1e-7,
                        "{dtype:?} {a} {b}"
                    );
                }
            }
            // Norms are those of the stored (dequantized) vectors.
            let mut row = vec![0f32; 5];
            for (start, v) in store.views().unwrap() {
                for i in 0..v.count {
                    v.row_f32(i, &mut row);
                    let n = row.iter().map(|a| a * a).sum::<f32>().sqrt();
                    assert!((n - v.norms[i]).abs() < 1e-5, "row {}", start as usize + i);
                }
            }
            assert_eq!(store.text(9).unwrap(), "doc 3/9 naïve 東京 🙂");
            assert_eq!(store.tokens(9).unwrap(), &(0..9).collect::<Vec<u32>>()[..]);
            assert_eq!(store.record(8).unwrap(), &[8u8, 8][..]);
            assert!(store.text(17).is_err());
        }
    }

    #[test]
    fn bad_input() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("s");
        let mut store = EmbeddingStore::create(&dir, &opts(4, DType::F16), "{}").unwrap();
        assert!(matches!(
            store.append(&[0.0; 6], None, None, None),
            Err(Error::Shape(_))
        ));
        let mut x = vec![0.5f32; 8];
        x[5] = f32::NAN;
        let t: Vec<&[u8]> = vec![b"a", b"b"];
        let k: Vec<&[u32]> = vec![&[1], &[2]];
        let err = store.append(&x, Some(&t), Some(&k), Some(&t)).unwrap_err();
        assert!(err.to_string().contains("row 1"), "{err}");
        x[5] = 1e6; // beyond f16
        assert!(store.append(&x, Some(&t), Some(&k), Some(&t)).is_err());
        x[5] = 0.0;
        let bad: Vec<&[u8]> = vec![b"a", b"\xff"];
        assert!(store.append(&x, Some(&bad), Some(&k), Some(&t)).is_err());
        assert!(store.append(&x, Some(&t[..1]), Some(&k), Some(&t)).is_err());
        assert!(store.append(&x, None, Some(&k), Some(&t)).is_err());
        assert!(store.is_empty());
        assert!(matches!(
            EmbeddingStore::create(&dir, &opts(4, DType::F16), "{}"),
            Err(Error::Io { .. })
        ));
        assert!(
            EmbeddingStore::create(&tmp.path().join("t"), &opts(4, DType::F16), "[1]").is_err()
        );
        assert!(matches!(
            EmbeddingStore::open(&tmp.path().join("nope")),
            Err(Error::Io { .. })
        ));
    }

    #[test]
    fn truncated_flipped_and_bad_version() {
        let (_tmp, dir, store) = filled(8, DType::I8, 10);
        drop(store);
        let vec_path = dir.join("shards/00001/vectors.bin");
        let orig = std::fs::read(&vec_path).unwrap();

        // Truncated: detected at open.
        std::fs::write(&vec_path, &orig[..orig.len() - 1]).unwrap();
        assert!(matches!(
            EmbeddingStore::open(&dir),
            Err(Error::Corrupt { .. })
        ));

        // Flipped payload byte: open is fine (it does not read vectors); the first search (and
        // every later one) and the first vector read fail on the checksum, and so does verify.
        let mut flipped = orig.clone();
        flipped[HEADER_LEN + 3] ^= 0x40;
        std::fs::write(&vec_path, &flipped).unwrap();
        let store = EmbeddingStore::open(&dir).unwrap();
        for _ in 0..2 {
            let err = store.search(&[0.5; 8], 3, true, None).unwrap_err();
            assert!(matches!(err, Error::Corrupt { .. }), "{err}");
            assert!(err.to_string().contains("checksum"), "{err}");
        }
        assert!(matches!(
            EmbeddingStore::open(&dir).unwrap().get_vectors(&[8]),
            Err(Error::Corrupt { .. })
        ));
        assert!(store.get_vectors(&[0]).is_ok()); // another shard
        assert!(matches!(store.verify(), Err(Error::Corrupt { .. })));
        drop(store);
        std::fs::write(&vec_path, &orig).unwrap();

        // Flipped text byte: the first read of the column fails, and every later read.
        let text_path = dir.join("shards/00001/text.bin");
        let text = std::fs::read(&text_path).unwrap();
        let mut flipped = text.clone();
        flipped[2] ^= 0x01;
        std::fs::write(&text_path, &flipped).unwrap();
        let store = EmbeddingStore::open(&dir).unwrap();
        assert!(store.text(0).is_ok()); // shard 0
        for id in [9, 8] {
            let err = store.text(id).unwrap_err();
            assert!(err.to_string().contains("text.bin"), "{err}");
        }
        drop(store);
        std::fs::write(&text_path, &text).unwrap();

        // Flipped header byte: detected at open by the header checksum.
        let mut flipped = orig.clone();
        flipped[17] ^= 1;
        std::fs::write(&vec_path, &flipped).unwrap();
        assert!(matches!(
            EmbeddingStore::open(&dir),
            Err(Error::Corrupt { .. })
        ));

        // Unknown file version.
        let mut v = orig.clone();
        v[8] = 2;
        std::fs::write(&vec_path, &v).unwrap();
        let err = EmbeddingStore::open(&dir).err().unwrap();
        assert!(matches!(err, Error::Version { found: 2, .. }), "{err}");
        std::fs::write(&vec_path, &orig).unwrap();
        EmbeddingStore::open(&dir).unwrap().verify().unwrap();

        // Unknown manifest version.
        let mpath = dir.join(MANIFEST);
        let m = std::fs::read_to_string(&mpath).unwrap();
        std::fs::write(&mpath, m.replace("\"version\": 1", "\"version\": 9")).unwrap();
        let err = EmbeddingStore::open(&dir).err().unwrap();
        assert!(matches!(err, Error::Version { found: 9, .. }), "{err}");
        std::fs::write(&mpath, &m).unwrap();

        // Missing file listed in the manifest.
        std::fs::remove_file(dir.join("shards/00000/text.off")).unwrap();
        assert!(matches!(EmbeddingStore::open(&dir), Err(Error::Io { .. })));
    }

    #[test]
    fn manifest_checksum_and_writer_lock() {
        let (_tmp, dir, store) = filled(3, DType::F32, 5);
        // A second handle may read, but not write while `store` lives.
        let mut other = EmbeddingStore::open(&dir).unwrap();
        assert!(matches!(other.set_meta("{}"), Err(Error::Locked { .. })));
        drop(store);
        other.set_meta("{\"b\": 2}").unwrap();
        drop(other);
        let mpath = dir.join(MANIFEST);
        let m = std::fs::read_to_string(&mpath).unwrap();
        std::fs::write(&mpath, m.replace("\"cosine\"", "\"l2\"")).unwrap();
        let err = EmbeddingStore::open(&dir).err().unwrap();
        assert!(err.to_string().contains("checksum mismatch"), "{err}");
        // Manifests written before the checksum open as they are.
        let mut v: serde_json::Value = serde_json::from_str(&m).unwrap();
        v.as_object_mut().unwrap().remove("checksum");
        std::fs::write(&mpath, serde_json::to_string(&v).unwrap()).unwrap();
        assert_eq!(EmbeddingStore::open(&dir).unwrap().meta(), "{\"b\":2}");
    }

    /// Searching groups of shards and merging their lists (what a search spread over
    /// processes does) is bitwise the search of all shards, ties across shards included; a
    /// subset is the full ranking restricted to its shards.
    #[test]
    fn shard_groups_merge_to_the_full_search() {
        let dim = 8;
        for hnsw in [false, true] {
            let tmp = tempfile::tempdir().unwrap();
            let dir = tmp.path().join("s");
            let o = StoreOptions {
                shard_size: 7,
                hnsw: hnsw.then(HnswParams::default),
                ..StoreOptions::new(dim)
            };
            let mut store = EmbeddingStore::create(&dir, &o, "{}").unwrap();
            // Rows i, i + 7 and i + 14 are equal: every score ties across three shards.
            let base = test_matrix(7, dim, 5);
            let mut x: Vec<f32> = base.iter().cycle().take(21 * dim).copied().collect();
            x.extend(test_matrix(5, dim, 6));
            store.append(&x, None, None, None).unwrap();
            assert_eq!(store.shard_counts(), vec![7, 7, 7, 5]);
            let mut q = base[..3 * dim].to_vec();
            q.extend(test_matrix(3, dim, 7));
            let bits = |r: &SearchResult| r.scores.iter().map(|s| s.to_bits()).collect::<Vec<_>>();
            for k in [1, 4, 9, 26] {
                let full = store.search(&q, k, !hnsw, None).unwrap();
                for groups in [
                    vec![vec![0], vec![1, 2], vec![3]],
                    vec![vec![2, 0], vec![3, 1]],
                ] {
                    let parts: Vec<SearchResult> = groups
                        .iter()
                        .map(|g| store.search_shards(&q, k, !hnsw, None, Some(g)).unwrap())
                        .collect();
                    let merged = crate::knn::merge_topk(&parts, k, Metric::Cosine);
                    assert_eq!(merged.ids, full.ids, "k {k} groups {groups:?}");
                    assert_eq!(bits(&merged), bits(&full), "k {k} groups {groups:?}");
                }
                // The first query's ties come out by id, one per shard holding the row.
                if k >= 3 {
                    assert_eq!(&full.ids[..3], &[0, 7, 14]);
                }
            }
            if !hnsw {
                let all = store.search(&q, 26, true, None).unwrap();
                for subset in [vec![1usize], vec![3, 0], vec![0, 0, 2]] {
                    let got = store
                        .search_shards(&q, 4, true, None, Some(&subset))
                        .unwrap();
                    let starts = [0i64, 7, 14, 21, 26];
                    let inside = |id: i64| {
                        subset
                            .iter()
                            .any(|&s| (starts[s]..starts[s + 1]).contains(&id))
                    };
                    for row in 0..6 {
                        let want: Vec<i64> = all.ids[row * 26..(row + 1) * 26]
                            .iter()
                            .copied()
                            .filter(|&id| inside(id))
                            .take(4)
                            .collect();
                        assert_eq!(&got.ids[row * 4..row * 4 + want.len()], &want[..]);
                    }
                }
            }
            let err = store
                .search_shards(&q, 3, true, None, Some(&[1, 4]))
                .unwrap_err();
            assert!(matches!(err, Error::OutOfRange(_)), "{err}");
            assert!(err.to_string().contains("shard 4"), "{err}");
            assert!(store.search_shards(&q, 3, true, None, Some(&[])).is_err());
        }
    }

    #[test]
    fn a_handle_of_some_shards_needs_and_serves_those_only() {
        for hnsw in [false, true] {
            let tmp = tempfile::tempdir().unwrap();
            let dir = tmp.path().join("s");
            let o = StoreOptions {
                hnsw: hnsw.then(HnswParams::default),
                ..opts(6, DType::F16)
            };
            let mut store = EmbeddingStore::create(&dir, &o, "{}").unwrap();
            let x = fill(&mut store, 26, 4); // shards of 7, 7, 7, 5
            let q = test_matrix(3, 6, 9);
            let want = store
                .search_shards(&q, 5, !hnsw, None, Some(&[1, 3]))
                .unwrap();
            drop(store);
            // the node serving shards 1 and 3 holds only their directories and the manifest
            for gone in [0u32, 2] {
                std::fs::remove_dir_all(dir.join(shard_dir_name(gone))).unwrap();
            }
            assert!(EmbeddingStore::open(&dir).is_err());
            let mut part = EmbeddingStore::open_shards(&dir, Some(&[3, 1, 3])).unwrap();
            assert_eq!(part.opened_shards(), vec![1, 3]);
            assert_eq!((part.num_shards(), part.len()), (4, 26));
            assert_eq!(part.shard_counts(), vec![7, 7, 7, 5]);
            assert_eq!(part.has_hnsw(), hnsw);
            let got = part.search(&q, 5, !hnsw, None).unwrap();
            assert_eq!(got.ids, want.ids);
            assert_eq!(got.scores, want.scores);
            let again = part.search_shards(&q, 5, !hnsw, None, Some(&[3])).unwrap();
            assert!(again.ids.iter().all(|&id| (21..26).contains(&id)));
            // reads by global id: 7..14 and 21..26 are here, the rest is not
            assert_eq!(part.text(8).unwrap(), "doc 4/8 naïve 東京 🙂");
            assert_eq!(part.tokens(22).unwrap().len(), 22);
            let v = part.get_vectors(&[25]).unwrap();
            assert!((v[0] - x[25 * 6]).abs() < 1e-2);
            for (id, shard) in [(0i64, 0), (15, 2)] {
                let err = part.text(id).unwrap_err().to_string();
                assert!(err.contains(&format!("shard {shard} ")), "{err}");
                assert!(err.contains("not opened"), "{err}");
            }
            assert!(part.text(26).is_err());
            let err = part
                .search_shards(&q, 2, true, None, Some(&[0]))
                .unwrap_err();
            assert!(err.to_string().contains("not opened"), "{err}");
            assert!(part.verify_shard(2).is_err());
            part.verify().unwrap();
            // reads only: no append, meta, graph or adoption through it
            let err = part.set_meta("{}").unwrap_err().to_string();
            assert!(err.contains("some shards only"), "{err}");
            assert!(part
                .append(&test_matrix(1, 6, 1), None, None, None)
                .is_err());
            assert!(EmbeddingStore::open_shards(&dir, Some(&[4])).is_err());
            assert!(EmbeddingStore::open_shards(&dir, Some(&[0])).is_err()); // its files are gone
            let none = EmbeddingStore::open_shards(&dir, Some(&[])).unwrap();
            assert_eq!((none.len(), none.num_shards()), (26, 4));
            assert!(none.opened_shards().is_empty());
        }
    }

    #[test]
    fn orphan_tmp_and_unlisted_dirs_are_ignored_and_replaced() {
        let (_tmp, dir, store) = filled(3, DType::F32, 7);
        drop(store);
        // An interrupted append: half a tmp dir and an unlisted sealed dir with junk.
        std::fs::create_dir_all(dir.join("shards/00001.tmp")).unwrap();
        std::fs::write(dir.join("shards/00001.tmp/vectors.bin"), b"junk").unwrap();
        std::fs::create_dir_all(dir.join("shards/00002")).unwrap();
        std::fs::write(dir.join("manifest.json.tmp"), b"{half").unwrap();
        let mut store = EmbeddingStore::open(&dir).unwrap();
        assert_eq!(store.len(), 7);
        let x = fill(&mut store, 9, 2);
        let store = EmbeddingStore::open(&dir).unwrap();
        store.verify().unwrap();
        assert_eq!(store.len(), 16);
        assert_eq!(store.get_vectors(&[15]).unwrap(), x[8 * 3..9 * 3].to_vec());
        assert!(!dir.join("shards/00001.tmp").exists());
    }

    /// A store in `dir` holding `n` rows of `fill(.., seed)` with shards of `shard_size`.
    fn unit(dir: &Path, dim: usize, shard_size: usize, n: usize, seed: u64) -> Vec<f32> {
        let o = StoreOptions {
            shard_size,
            ..opts(dim, DType::F16)
        };
        let mut s = EmbeddingStore::create(dir, &o, "{}").unwrap();
        if n == 0 {
            return Vec::new();
        }
        fill(&mut s, n, seed)
    }

    #[test]
    fn adopt_units_of_varying_counts() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("s");
        let mut store = EmbeddingStore::create(&dir, &opts(4, DType::F16), "{}").unwrap();
        let mut reference =
            EmbeddingStore::create(&tmp.path().join("r"), &opts(4, DType::F16), "{}").unwrap();
        let mut all = Vec::new();
        for (u, (n, seed)) in [(10, 1), (0, 2), (5, 3)].into_iter().enumerate() {
            let udir = tmp.path().join(format!("u{u}"));
            all.extend(unit(&udir, 4, 7, n, seed));
            if n > 0 {
                fill(&mut reference, n, seed);
            }
            let meta = format!("{{\"units\": {}}}", u + 1);
            let ids = store.adopt(&udir, Some(&meta)).unwrap();
            assert_eq!(ids.len(), n.div_ceil(7));
            // The unit keeps its (now dangling) manifest and no shard.
            assert!(!udir.join("shards/00000").exists());
        }
        assert_eq!(store.shard_counts(), vec![7, 3, 5]);
        assert_eq!(store.meta(), "{\"units\":3}");
        // Appends after an adoption continue the ids; a reopened store sees it all.
        all.extend(fill(&mut store, 9, 4));
        fill(&mut reference, 9, 4);
        drop(store);
        let store = EmbeddingStore::open(&dir).unwrap();
        store.verify().unwrap();
        assert_eq!(store.shard_counts(), vec![7, 3, 5, 7, 2]);
        assert_eq!(store.len(), 24);
        let ids: Vec<i64> = (0..24).collect();
        assert_eq!(
            store.get_vectors(&ids).unwrap(),
            reference.get_vectors(&ids).unwrap()
        );
        for id in 0..24 {
            assert_eq!(store.text(id).unwrap(), reference.text(id).unwrap(), "{id}");
            assert_eq!(store.tokens(id).unwrap(), reference.tokens(id).unwrap());
            assert_eq!(store.record(id).unwrap(), reference.record(id).unwrap());
        }
        assert!(store.text(24).is_err());
        let q = &all[5 * 4..8 * 4];
        let (a, b) = (
            store.search(q, 6, true, None).unwrap(),
            reference.search(q, 6, true, None).unwrap(),
        );
        assert_eq!((a.ids, a.scores), (b.ids, b.scores));
    }

    #[test]
    fn adopt_with_hnsw_graphs() {
        let tmp = tempfile::tempdir().unwrap();
        let o = StoreOptions {
            hnsw: Some(HnswParams::default()),
            ..opts(4, DType::F32)
        };
        let mut store = EmbeddingStore::create(&tmp.path().join("s"), &o, "{}").unwrap();
        let mut u = EmbeddingStore::create(&tmp.path().join("u"), &o, "{}").unwrap();
        let x = fill(&mut u, 9, 1);
        drop(u);
        store.adopt(&tmp.path().join("u"), None).unwrap();
        assert!(store.has_hnsw());
        drop(store);
        let store = EmbeddingStore::open(&tmp.path().join("s")).unwrap();
        store.verify().unwrap();
        let r = store.search(&x[8 * 4..9 * 4], 1, false, None).unwrap();
        assert_eq!(r.ids, vec![8]);
        // A unit without graphs cannot join a store that builds them.
        let mut v =
            EmbeddingStore::create(&tmp.path().join("v"), &opts(4, DType::F32), "{}").unwrap();
        fill(&mut v, 3, 2);
        drop(v);
        let mut store = EmbeddingStore::open(&tmp.path().join("s")).unwrap();
        let err = store.adopt(&tmp.path().join("v"), None).unwrap_err();
        assert!(err.to_string().contains("HNSW"), "{err}");
    }

    #[test]
    fn adopt_refuses_a_unit_that_does_not_match() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("s");
        let mut store = EmbeddingStore::create(&dir, &opts(4, DType::F16), "{}").unwrap();
        fill(&mut store, 3, 1);
        let cases: [(&str, StoreOptions, &str); 4] = [
            ("dim", opts(5, DType::F16), "dimension"),
            ("dtype", opts(4, DType::I8), "dtype"),
            (
                "cols",
                StoreOptions {
                    with_tokens: false,
                    ..opts(4, DType::F16)
                },
                "columns",
            ),
            (
                "big",
                StoreOptions {
                    shard_size: 8,
                    ..opts(4, DType::F16)
                },
                "shard 0",
            ),
        ];
        for (name, o, what) in cases {
            let udir = tmp.path().join(name);
            let mut u = EmbeddingStore::create(&udir, &o, "{}").unwrap();
            let x = test_matrix(8, o.dim, 2);
            let t: Vec<&[u8]> = vec![b"t"; 8];
            let k: Vec<&[u32]> = vec![&[1]; 8];
            let toks = o.with_tokens.then_some(&k[..]);
            u.append(&x, Some(&t), toks, Some(&t)).unwrap();
            drop(u);
            let err = store.adopt(&udir, Some("{\"x\": 1}")).unwrap_err();
            assert!(err.to_string().contains(what), "{name}: {err}");
            // Nothing moved: the unit still opens whole, the store is unchanged.
            EmbeddingStore::open(&udir).unwrap().verify().unwrap();
        }
        assert!(store.adopt(&dir, None).is_err());
        // A unit missing a file is refused before anything moves.
        let udir = tmp.path().join("broken");
        unit(&udir, 4, 7, 10, 3);
        std::fs::remove_file(udir.join("shards/00001/text.off")).unwrap();
        assert!(store.adopt(&udir, None).is_err());
        assert!(udir.join("shards/00000").exists());
        drop(store);
        let store = EmbeddingStore::open(&dir).unwrap();
        assert_eq!((store.len(), store.meta()), (3, "{}".to_string()));
        store.verify().unwrap();
    }
}
