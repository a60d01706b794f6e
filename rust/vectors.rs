//! Shared vocabulary of the core: element types, metrics, borrowed views of stored vectors and
//! search results. `store` produces [`VectorsRef`]s (memory-mapped), `knn` and `hnsw` consume them.

use half::f16;

use crate::error::{Error, Result};

/// How vectors are stored on disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    F32,
    F16,
    /// Symmetric per-vector quantization: `x ≈ scale[i] * q[i]`, `q` in [-127, 127].
    I8,
}

impl DType {
    pub fn parse(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "float32" => Ok(DType::F32),
            "f16" | "float16" => Ok(DType::F16),
            "i8" | "int8" => Ok(DType::I8),
            other => Err(Error::DType(format!(
                "unknown dtype {other:?}; expected one of \"f32\", \"f16\", \"i8\""
            ))),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::I8 => "i8",
        }
    }

    /// Bytes per element of the vector payload.
    pub fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 => 2,
            DType::I8 => 1,
        }
    }

    pub fn code(self) -> u32 {
        match self {
            DType::F32 => 0,
            DType::F16 => 1,
            DType::I8 => 2,
        }
    }

    pub fn from_code(code: u32) -> Option<Self> {
        match code {
            0 => Some(DType::F32),
            1 => Some(DType::F16),
            2 => Some(DType::I8),
            _ => None,
        }
    }
}

/// Similarity / distance used for search. Scores are always "higher is better" for `Cosine` and
/// `InnerProduct` (the similarity itself) and the squared Euclidean distance ("lower is better")
/// for `L2`. Results are sorted best first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Metric {
    Cosine,
    #[serde(rename = "ip")]
    InnerProduct,
    L2,
}

impl Metric {
    pub fn parse(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "cos" | "cosine" => Ok(Metric::Cosine),
            "ip" | "dot" | "inner_product" => Ok(Metric::InnerProduct),
            "l2" | "l2sq" | "euclidean" => Ok(Metric::L2),
            other => Err(Error::InvalidArgument(format!(
                "unknown metric {other:?}; expected one of \"cosine\", \"ip\", \"l2\""
            ))),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Metric::Cosine => "cosine",
            Metric::InnerProduct => "ip",
            Metric::L2 => "l2",
        }
    }

    /// True when a larger score is better.
    pub fn higher_is_better(self) -> bool {
        !matches!(self, Metric::L2)
    }
}

/// The payload of one block of stored vectors (one shard), borrowed from a memory map.
#[derive(Clone, Copy, Debug)]
pub enum VectorData<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
    /// Quantized values and one scale per vector.
    I8 {
        q: &'a [i8],
        scales: &'a [f32],
    },
}

/// A borrowed, row-major block of `count` vectors of `dim` elements, with the L2 norm of each
/// (dequantized) vector precomputed at write time, so cosine and L2 cost no extra pass.
#[derive(Clone, Copy, Debug)]
pub struct VectorsRef<'a> {
    pub dim: usize,
    pub count: usize,
    pub data: VectorData<'a>,
    pub norms: &'a [f32],
}

impl VectorsRef<'_> {
    pub fn dtype(&self) -> DType {
        match self.data {
            VectorData::F32(_) => DType::F32,
            VectorData::F16(_) => DType::F16,
            VectorData::I8 { .. } => DType::I8,
        }
    }

    /// Check that the payload holds `count × dim` values (and, for i8, one scale per vector).
    pub fn check_payload(&self) -> Result<()> {
        let n = self.count;
        let payload = match self.data {
            VectorData::F32(x) => x.len(),
            VectorData::F16(x) => x.len(),
            VectorData::I8 { q, scales } => {
                if scales.len() != n {
                    return Err(Error::Shape(format!(
                        "{} scales for {n} vectors",
                        scales.len()
                    )));
                }
                q.len()
            }
        };
        if payload != n * self.dim {
            return Err(Error::Shape(format!(
                "{payload} values for {n} vectors of dimension {}",
                self.dim
            )));
        }
        Ok(())
    }

    /// Row `i` dequantized to f32 (slow path: tests, HNSW build, re-ranking).
    pub fn row_f32(&self, i: usize, out: &mut [f32]) {
        let d = self.dim;
        match self.data {
            VectorData::F32(x) => out.copy_from_slice(&x[i * d..(i + 1) * d]),
            VectorData::F16(x) => {
                for (o, v) in out.iter_mut().zip(&x[i * d..(i + 1) * d]) {
                    *o = v.to_f32();
                }
            }
            VectorData::I8 { q, scales } => {
                let s = scales[i];
                for (o, v) in out.iter_mut().zip(&q[i * d..(i + 1) * d]) {
                    *o = f32::from(*v) * s;
                }
            }
        }
    }
}

/// Results of a batch of queries: `nq` rows of `k` (id, score) pairs, best first. Rows with fewer
/// than `k` hits (a store smaller than `k`) are padded with id `-1` and score NaN.
#[derive(Clone, Debug, PartialEq)]
pub struct SearchResult {
    pub nq: usize,
    pub k: usize,
    pub ids: Vec<i64>,
    pub scores: Vec<f32>,
}

/// Most result entries (`nq × k`) a search pads beyond the rows it searched: asking for more
/// neighbors than exist only adds padding, and past this it is a mistake (k = 2**62), not a
/// request to allocate.
pub const MAX_PADDED_RESULT: usize = 1 << 26;

/// The one check of `k` for every search: positive, and a result of `nq × k` that can exist.
/// `available` is how many rows the search covers; `k` beyond it is padding.
pub fn check_k(k: usize, nq: usize, available: usize) -> Result<()> {
    if k == 0 {
        return Err(Error::InvalidArgument("k must be positive".into()));
    }
    let entries = nq.checked_mul(k).filter(|&e| e <= isize::MAX as usize / 8);
    if k > available && entries.map_or(true, |e| e > MAX_PADDED_RESULT) {
        return Err(Error::InvalidArgument(format!(
            "k = {k} is more than the {available} vectors searched: the {nq} × {k} result would \
             be padding; ask for at most {available}"
        )));
    }
    if entries.is_none() {
        return Err(Error::InvalidArgument(format!(
            "k = {k} with {nq} queries: the result does not fit in memory"
        )));
    }
    Ok(())
}

impl SearchResult {
    /// All padding; callers checked the size with [`check_k`].
    pub fn empty(nq: usize, k: usize) -> Self {
        SearchResult {
            nq,
            k,
            ids: vec![-1; nq * k],
            scores: vec![f32::NAN; nq * k],
        }
    }
}

/// Check that a flat query buffer holds a whole number of finite `dim`-vectors; returns `nq`.
pub fn check_queries(queries: &[f32], dim: usize) -> Result<usize> {
    if dim == 0 {
        return Err(Error::Shape("dimension must be positive".into()));
    }
    if queries.len() % dim != 0 {
        return Err(Error::Shape(format!(
            "queries hold {} values, not a multiple of the store dimension {dim}",
            queries.len()
        )));
    }
    if let Some(pos) = queries.iter().position(|v| !v.is_finite()) {
        return Err(Error::DType(format!(
            "query {} has a non-finite value at position {}",
            pos / dim,
            pos % dim
        )));
    }
    Ok(queries.len() / dim)
}
