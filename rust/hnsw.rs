//! Approximate search: usearch HNSW over i8 codes, exact re-ranking from the store's vectors.
//!
//! How it works:
//! - **Graph on i8 codes.** The graph stores each row as 8-bit codes with one scale for the
//!   whole block: `code = round(row × 127 / max|row|)`, the maximum taken over the block. For
//!   cosine, rows are first normalised (cosine becomes an inner product). Distances are then the
//!   integer dot product (cosine, inner product) or squared L2 in usearch's SIMD kernels. A
//!   common scale preserves the order of inner products and L2 distances. usearch's own f32→i8
//!   cast rescales every vector by its norm, which is wrong for inner product and L2. The codes
//!   take a quarter of the memory of f32, and the graph walk reads a quarter of the bytes.
//! - **Exact re-ranking.** A search walks the graph with a beam of `ef` (at least `k`) and takes
//!   all `ef` candidates. It scores them exactly against the store's own rows (f32, f16 or i8,
//!   with the stored norms) and returns the best `k`. Scores equal [`crate::knn::exact_search`]'s
//!   in convention and value. Recall is that of the candidate list, which is why `ef` is the one
//!   knob.
//!
//! [`HnswIndex::build`] returns the block scale, and the store records it in its manifest. A view
//! of the graph needs that scale back ([`HnswIndex::view`]). A view is validated before usearch
//! walks it (see `hnsw_file`): headers and levels when opened, every link before the first search.
//!
//! Thread safety: `usearch::Index` is `Send + Sync` (the crate says so with `unsafe impl`; the C++
//! index takes a per-call thread slot under its own lock), so `HnswIndex` is `Send + Sync` too and
//! can sit in a `#[pyclass]` that releases the GIL. The index's own expansion setting is pinned
//! to 1: usearch explores `max(expansion, wanted)` candidates, so asking for `ef` candidates
//! explores exactly `ef`. Searches with different `ef` share no mutable state.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use rayon::prelude::*;
use usearch::{Index, IndexOptions, MetricKind, ScalarKind};

use crate::error::{Error, Result};
use crate::files::write_new;
use crate::hnsw_file::GraphLayout;
use crate::knn::rerank_one;
use crate::ragged::{FileSum, Mapped};
use crate::vectors::{check_k, check_queries, Metric, SearchResult, VectorsRef};

/// HNSW construction and search settings (usearch names). `expansion_search` is the default
/// `ef`: the beam width of a search, which is also the number of candidates re-ranked exactly.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HnswParams {
    pub connectivity: usize,
    pub expansion_add: usize,
    pub expansion_search: usize,
}

impl Default for HnswParams {
    fn default() -> Self {
        HnswParams {
            connectivity: 16,
            expansion_add: 128,
            expansion_search: 64,
        }
    }
}

/// Largest connectivity accepted: usearch sizes per-search buffers by it, and real graphs use
/// 8 to 64.
const MAX_CONNECTIVITY: usize = 1024;

impl HnswParams {
    /// The one check of HNSW parameters (at store creation, build and open).
    pub fn check(&self) -> Result<()> {
        if !(2..=MAX_CONNECTIVITY).contains(&self.connectivity)
            || self.expansion_add == 0
            || self.expansion_search == 0
        {
            return Err(Error::InvalidArgument(format!(
                "HNSW parameters out of range (connectivity in 2..={MAX_CONNECTIVITY}, \
                 expansions >= 1): connectivity {}, expansion_add {}, expansion_search {}",
                self.connectivity, self.expansion_add, self.expansion_search
            )));
        }
        Ok(())
    }
}

pub struct HnswIndex {
    index: Index,
    metric: Metric,
    dim: usize,
    default_ef: usize,
    /// The codes are the rows (normalised for cosine) times `scale`, rounded to i8.
    scale: f32,
    /// Sorted keys no graph walk reaches (see [`HnswIndex::build`]); every search scores them
    /// (for inner product, those whose `|q|·|x|` can beat the k-th best).
    stranded: Vec<u64>,
    /// A view's file, checked link by link before its first search (`None`: built here).
    file: Option<ViewedFile>,
}

struct ViewedFile {
    path: PathBuf,
    map: Mapped,
    layout: GraphLayout,
    /// The outcome of the link check, once per process (the message of a corrupt-file error).
    links: OnceLock<std::result::Result<(), String>>,
}

/// The usearch metric over i8 codes: cosine rows are normalised first, so an inner product.
fn code_metric(metric: Metric) -> MetricKind {
    match metric {
        Metric::Cosine | Metric::InnerProduct => MetricKind::IP,
        Metric::L2 => MetricKind::L2sq,
    }
}

fn index_err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Index(format!("usearch {what}: {e}"))
}

/// Row `i` of `v` as f32, normalised when the metric is cosine (a zero row stays zero).
fn prepared_row(v: &VectorsRef<'_>, metric: Metric, i: usize, out: &mut [f32]) {
    v.row_f32(i, out);
    if metric == Metric::Cosine {
        divide_by_norm(out, v.norms[i]);
    }
}

/// `x / norm` in place; a zero norm gives a zero vector.
fn divide_by_norm(x: &mut [f32], norm: f32) {
    let f = if norm > 0.0 { 1.0 / norm } else { 0.0 };
    x.iter_mut().for_each(|v| *v *= f);
}

/// Add row `i` of `v` to the graph under key `i`, as i8 codes at `scale` (`buf`, `code`: scratch).
fn add_row(
    index: &Index,
    v: &VectorsRef<'_>,
    metric: Metric,
    scale: f32,
    i: usize,
    buf: &mut [f32],
    code: &mut [i8],
) -> Result<()> {
    prepared_row(v, metric, i, buf);
    encode(buf, scale, code);
    index.add(i as u64, code).map_err(|e| index_err("add", e))
}

/// i8 codes of `x` at `scale` (clamped to ±127, so a query outside the block's range still maps).
fn encode(x: &[f32], scale: f32, out: &mut [i8]) {
    for (o, &v) in out.iter_mut().zip(x) {
        *o = (v * scale).round().clamp(-127.0, 127.0) as i8;
    }
}

/// Keys `0..n` that a graph walk from the entry point never reaches: a breadth-first walk over
/// the base-level links, starting at the node of the highest level (usearch's entry point; every
/// search descends from it and then walks the base level). A node nobody links to is invisible
/// to every search, whatever its `ef`. About 0.2 s for 200,000 nodes.
fn unreachable_keys(index: &Index, n: usize) -> Vec<u64> {
    if n == 0 {
        return Vec::new();
    }
    let levels: Vec<usize> = (0..n as u64)
        .into_par_iter()
        .map(|k| index.level_of_key(k))
        .collect();
    let entry = (0..n)
        .max_by_key(|&k| (levels[k], std::cmp::Reverse(k)))
        .unwrap_or(0);
    let mut seen = vec![false; n];
    let mut queue = std::collections::VecDeque::from([entry]);
    seen[entry] = true;
    while let Some(k) = queue.pop_front() {
        for nb in index.neighbors(k as u64, 0) {
            let nb = nb as usize;
            if nb < n && !seen[nb] {
                seen[nb] = true;
                queue.push_back(nb);
            }
        }
    }
    (0..n as u64).filter(|&k| !seen[k as usize]).collect()
}

impl HnswIndex {
    /// Build over all vectors of one block; keys are local row numbers 0..count.
    /// `threads == 0` uses rayon's current pool size.
    pub fn build(
        vectors: VectorsRef<'_>,
        metric: Metric,
        params: &HnswParams,
        threads: usize,
    ) -> Result<Self> {
        params.check()?;
        let d = vectors.dim;
        if d == 0 {
            return Err(Error::Shape("dimension must be positive".into()));
        }
        vectors.check_payload()?;
        if vectors.norms.len() != vectors.count {
            return Err(Error::Shape(format!(
                "{} norms for {} vectors",
                vectors.norms.len(),
                vectors.count
            )));
        }
        let n = vectors.count;
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(if threads == 0 {
                rayon::current_num_threads()
            } else {
                threads
            })
            .build()
            .map_err(|e| Error::Index(format!("thread pool: {e}")))?;
        // One scale for the block: the largest magnitude of any (prepared) component maps to 127.
        let max_abs = pool.install(|| {
            (0..n)
                .into_par_iter()
                .with_min_len(256)
                .fold(
                    || (vec![0f32; d], 0f32),
                    |(mut buf, m), i| {
                        prepared_row(&vectors, metric, i, &mut buf);
                        let r = buf.iter().fold(m, |m, v| m.max(v.abs()));
                        (buf, r)
                    },
                )
                .map(|(_, m)| m)
                .reduce(|| 0.0, f32::max)
        });
        let scale = if max_abs > 0.0 && max_abs.is_finite() {
            127.0 / max_abs
        } else {
            1.0
        };
        let options = IndexOptions {
            dimensions: d,
            metric: code_metric(metric),
            quantization: ScalarKind::I8,
            connectivity: params.connectivity,
            expansion_add: params.expansion_add,
            expansion_search: params.expansion_search,
            multi: false,
        };
        let index = Index::new(&options).map_err(|e| index_err("new", e))?;
        // Thread slots must cover every thread that may call `add` concurrently.
        index
            .reserve_capacity_and_threads(n.max(1), pool.current_num_threads())
            .map_err(|e| index_err("reserve", e))?;
        pool.install(|| {
            (0..n).into_par_iter().with_min_len(64).try_for_each_init(
                || (vec![0f32; d], vec![0i8; d]),
                |(buf, code), i| add_row(&index, &vectors, metric, scale, i, buf, code),
            )
        })?;
        // Some nodes end up with no link leading to them, so no search can return them:
        // - concurrent inserts race (usearch issue #735, open upstream);
        // - an outlier links only to its nearest node (the neighbour heuristic prunes the rest),
        //   and that node's full list has no room for the way back. hnswlib does the same.
        // One round re-inserts them one at a time, which mends the first kind; whatever is still
        // unreachable is kept in `stranded` and scored exactly by every search.
        let lost = unreachable_keys(&index, n);
        if !lost.is_empty() {
            let (mut buf, mut code) = (vec![0f32; d], vec![0i8; d]);
            for &key in &lost {
                // `remove` frees the slot and `add` reuses it, forming fresh links both ways.
                index.remove(key).map_err(|e| index_err("remove", e))?;
                add_row(
                    &index,
                    &vectors,
                    metric,
                    scale,
                    key as usize,
                    &mut buf,
                    &mut code,
                )?;
            }
        }
        let stranded = if lost.is_empty() {
            lost
        } else {
            unreachable_keys(&index, n)
        };
        index.change_expansion_search(1);
        Ok(HnswIndex {
            index,
            metric,
            dim: d,
            default_ef: params.expansion_search,
            scale,
            stranded,
            file: None,
        })
    }

    /// Keys no graph walk reaches; every search scores them exactly. The store keeps them in
    /// its manifest and passes them back to [`HnswIndex::view`].
    pub fn stranded(&self) -> &[u64] {
        &self.stranded
    }

    /// The block scale of the i8 codes; the store keeps it in its manifest and passes it back
    /// to [`HnswIndex::view`].
    pub fn scale(&self) -> f32 {
        self.scale
    }

    /// The saved form of the graph (what [`HnswIndex::view`] opens), in memory: the store
    /// writes it with its own file rules (`files.rs`), so a disk-full error is the system's,
    /// naming the file, and a symbolic link is never written through.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; self.index.serialized_length()];
        self.index
            .save_to_buffer(&mut buf)
            .map_err(|e| Error::Index(format!("serializing the HNSW graph: {e}")))?;
        Ok(buf)
    }

    /// Save to the new file `path` (which must not exist: [`crate::files::write_new`]); the
    /// store writes to a temporary name and renames. Returns its size and xxh3.
    pub fn save(&self, path: &Path) -> Result<FileSum> {
        write_new(path, &[&self.to_bytes()?])
    }

    /// Open a saved index as a memory-mapped view (no copy of the graph into memory) of a block
    /// of `count` rows. `scale` and `stranded` are what [`HnswIndex::scale`] and
    /// [`HnswIndex::stranded`] returned at build time. The headers and node levels are checked
    /// here, every link before the first search ([`HnswIndex::check_links`]).
    pub fn view(
        path: &Path,
        count: usize,
        dim: usize,
        metric: Metric,
        params: &HnswParams,
        scale: Option<f32>,
        stranded: &[u64],
    ) -> Result<Self> {
        params.check()?;
        let p = path_str(path)?;
        let map = Mapped::open(path)?;
        let layout = GraphLayout::parse(path, map.bytes(), count, dim, params.connectivity)?;
        let scale = match scale {
            Some(s) if s.is_finite() && s > 0.0 => s,
            _ => {
                return Err(Error::corrupt(
                    path,
                    "HNSW graph holds i8 codes but the manifest has no valid scale for them",
                ))
            }
        };
        let meta = Index::metadata(p)
            .map_err(|e| Error::corrupt(path, format!("unreadable HNSW header: {e}")))?;
        if meta.quantization != ScalarKind::I8 || meta.metric != code_metric(metric) {
            return Err(Error::corrupt(
                path,
                format!(
                    "HNSW graph of {:?} codes under {:?}, expected i8 codes for {}",
                    meta.quantization,
                    meta.metric,
                    metric.as_str()
                ),
            ));
        }
        let options = IndexOptions {
            dimensions: dim,
            metric: meta.metric,
            quantization: meta.quantization,
            connectivity: params.connectivity,
            expansion_add: params.expansion_add,
            expansion_search: params.expansion_search,
            multi: false,
        };
        let index = Index::new(&options).map_err(|e| index_err("new", e))?;
        index
            .view(p)
            .map_err(|e| Error::corrupt(path, format!("cannot map the HNSW index: {e}")))?;
        let mut stranded = stranded.to_vec();
        stranded.sort_unstable();
        stranded.dedup();
        if let Some(&k) = stranded.last().filter(|&&k| k >= count as u64) {
            return Err(Error::corrupt(
                path,
                format!("stranded key {k} is outside the HNSW graph of {count} nodes"),
            ));
        }
        index.change_expansion_search(1);
        Ok(HnswIndex {
            index,
            metric,
            dim,
            default_ef: params.expansion_search,
            scale,
            stranded,
            file: Some(ViewedFile {
                path: path.to_path_buf(),
                map,
                layout,
                links: OnceLock::new(),
            }),
        })
    }

    /// Path and bytes of the file a viewed graph maps (`None`: built in this process).
    pub fn file_bytes(&self) -> Option<(&Path, &[u8])> {
        self.file
            .as_ref()
            .map(|f| (f.path.as_path(), f.map.bytes()))
    }

    /// Check every link of a viewed graph (once per process; later calls return the first
    /// outcome). Searches call it first, so usearch never walks a corrupt graph.
    pub fn check_links(&self) -> Result<()> {
        let Some(f) = &self.file else { return Ok(()) };
        f.links
            .get_or_init(|| f.layout.check_links(f.map.bytes()))
            .clone()
            .map_err(|msg| Error::corrupt(&f.path, msg))
    }

    /// Search `nq × dim` queries over the graph of `vectors` (the block it was built from):
    /// walk with a beam of `max(ef, k)` candidates, re-rank them exactly against `vectors`,
    /// return local ids (row numbers) and scores per [`Metric`], best first. `ef` overrides the
    /// default beam width for this call (`None`: the index's setting).
    pub fn search(
        &self,
        vectors: VectorsRef<'_>,
        queries: &[f32],
        k: usize,
        ef: Option<usize>,
    ) -> Result<SearchResult> {
        if ef == Some(0) {
            return Err(Error::InvalidArgument("ef must be positive".into()));
        }
        let nq = check_queries(queries, self.dim)?;
        check_k(k, nq, self.index.size())?;
        if vectors.dim != self.dim || vectors.count != self.index.size() {
            return Err(Error::Shape(format!(
                "the HNSW graph holds {} vectors of dimension {}, the block {} of dimension {}",
                self.index.size(),
                self.dim,
                vectors.count,
                vectors.dim
            )));
        }
        let mut out = SearchResult::empty(nq, k);
        if nq == 0 || self.index.size() == 0 {
            return Ok(out);
        }
        self.check_links()?;
        // A beam wider than the graph finds nothing more.
        let wanted = ef.unwrap_or(self.default_ef).max(k).min(self.index.size());
        let d = self.dim;
        out.ids
            .par_chunks_mut(k)
            .zip(out.scores.par_chunks_mut(k))
            .zip(queries.par_chunks(d))
            .try_for_each_init(
                || {
                    (
                        vec![0f32; d],
                        vec![0i8; d],
                        Vec::with_capacity(wanted + self.stranded.len()),
                    )
                },
                |(buf, code, cands), ((ids, scores), q)| {
                    buf.copy_from_slice(q);
                    if self.metric == Metric::Cosine {
                        let n = q.iter().map(|v| v * v).sum::<f32>().sqrt();
                        divide_by_norm(buf, n);
                    }
                    encode(buf, self.scale, code);
                    let m = self
                        .index
                        .search(&code[..], wanted)
                        .map_err(|e| index_err("search", e))?;
                    cands.clear();
                    cands.extend(m.keys.iter().map(|&key| key as i64));
                    // No walk returns a stranded key, so they cannot repeat a candidate.
                    if self.metric != Metric::InnerProduct || self.stranded.is_empty() {
                        cands.extend(self.stranded.iter().map(|&key| key as i64));
                        rerank_one(&vectors, 0, q, cands, self.metric, ids, scores)?;
                        return Ok(());
                    }
                    // Inner product strands rows of small norm by the thousand (HNSW's
                    // neighbour heuristic under a non-metric). q·x ≤ |q|·|x| bounds what each
                    // can score, so only those that could beat the k-th best are scored.
                    rerank_one(&vectors, 0, q, cands, self.metric, ids, scores)?;
                    let qn = q.iter().map(|v| v * v).sum::<f32>().sqrt();
                    let bar = if ids[k - 1] >= 0 {
                        scores[k - 1]
                    } else {
                        f32::NEG_INFINITY
                    };
                    cands.clear();
                    cands.extend(ids.iter().copied().filter(|&i| i >= 0));
                    let found = cands.len();
                    cands.extend(
                        self.stranded
                            .iter()
                            .filter(|&&s| {
                                // The norms are those of the stored rows (dequantised), so
                                // the bound holds up to float rounding; 1e-4 covers that.
                                (1.0 + 1e-4) * qn * vectors.norms[s as usize] + 1e-6 >= bar
                            })
                            .map(|&s| s as i64),
                    );
                    if cands.len() > found {
                        rerank_one(&vectors, 0, q, cands, self.metric, ids, scores)?;
                    }
                    Ok(())
                },
            )?;
        Ok(out)
    }
}

#[cfg(test)]
impl HnswIndex {
    fn len(&self) -> usize {
        self.index.size()
    }

    /// Keys that a walk from the entry point does not reach right now (a full pass over the
    /// graph's links). After [`HnswIndex::build`] these are exactly [`HnswIndex::stranded`].
    fn unreachable(&self) -> Vec<u64> {
        unreachable_keys(&self.index, self.index.size())
    }
}

fn path_str(path: &Path) -> Result<&str> {
    path.to_str().ok_or_else(|| {
        Error::InvalidArgument(format!("path {} is not valid UTF-8", path.display()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::knn::{exact_search, row_norms};
    use crate::testing::{clustered_unit_vectors, recall_at_k};
    use crate::vectors::VectorData;
    use half::f16;

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn index_is_send_and_sync() {
        assert_send_sync::<HnswIndex>();
    }

    fn f32_block<'a>(x: &'a [f32], norms: &'a [f32], dim: usize) -> VectorsRef<'a> {
        VectorsRef {
            dim,
            count: x.len() / dim,
            data: VectorData::F32(x),
            norms,
        }
    }

    #[test]
    fn build_save_view_search_every_metric() {
        let (n, dim) = (3000, 32);
        let all = clustered_unit_vectors(n + 50, dim, 50, 0.5, 1);
        let (x, q) = all.split_at(n * dim);
        let norms = row_norms(x, dim);
        let dir = tempfile::tempdir().unwrap();
        for metric in [Metric::Cosine, Metric::InnerProduct, Metric::L2] {
            let v = f32_block(x, &norms, dim);
            let idx = HnswIndex::build(v, metric, &HnswParams::default(), 2).unwrap();
            assert_eq!(idx.len(), n);
            // Nodes no walk reaches are exactly the stranded ones, and every row, searched for
            // with a beam as wide as the graph, comes back first.
            assert_eq!(idx.unreachable(), idx.stranded());
            let own = idx.search(v, x, 1, Some(n)).unwrap();
            let lost: Vec<usize> = (0..n).filter(|&i| own.ids[i] != i as i64).collect();
            assert!(
                lost.is_empty(),
                "{metric:?}: rows not found by themselves: {lost:?}"
            );
            let exact = exact_search(&[(0, v)], q, 10, metric).unwrap();
            let approx = idx.search(v, q, 10, None).unwrap();
            assert!(recall_at_k(&approx, &exact) > 0.95);
            // Candidates are re-ranked exactly: wherever an id is found, its score is the exact
            // one, and each row is sorted best first.
            for qi in 0..50 {
                for j in 0..10 {
                    let id = approx.ids[qi * 10 + j];
                    if let Some(e) = exact.ids[qi * 10..qi * 10 + 10]
                        .iter()
                        .position(|&x| x == id)
                    {
                        let (a, b) = (approx.scores[qi * 10 + j], exact.scores[qi * 10 + e]);
                        assert!(
                            (a - b).abs() <= 1e-5 * b.abs().max(1.0),
                            "{metric:?} {a} {b}"
                        );
                    }
                    if j > 0 {
                        let (prev, cur) =
                            (approx.scores[qi * 10 + j - 1], approx.scores[qi * 10 + j]);
                        assert!(if metric.higher_is_better() {
                            prev >= cur
                        } else {
                            prev <= cur
                        });
                    }
                }
            }
            let path = dir.path().join(format!("{}.usearch", metric.as_str()));
            idx.save(&path).unwrap();
            let p = HnswParams::default();
            let st = idx.stranded();
            let viewed = HnswIndex::view(&path, n, dim, metric, &p, Some(idx.scale()), st).unwrap();
            assert_eq!(viewed.stranded(), st);
            assert_eq!(viewed.len(), n);
            assert_eq!(viewed.search(v, q, 10, None).unwrap().ids, approx.ids);
            // A wider beam finds at least as much, and the default is unaffected afterwards.
            let wide = viewed.search(v, q, 10, Some(400)).unwrap();
            assert!(recall_at_k(&wide, &exact) >= recall_at_k(&approx, &exact) - 0.01);
            assert!(recall_at_k(&wide, &exact) > 0.99);
            assert_eq!(viewed.search(v, q, 10, None).unwrap().ids, approx.ids);
            // Wrong dimension, a missing scale, or the wrong block are clear errors.
            assert!(matches!(
                HnswIndex::view(&path, n, dim + 1, metric, &p, Some(idx.scale()), st),
                Err(Error::Corrupt { .. })
            ));
            assert!(matches!(
                HnswIndex::view(&path, n, dim, metric, &p, None, st),
                Err(Error::Corrupt { .. })
            ));
            assert!(matches!(
                HnswIndex::view(&path, n, dim, metric, &p, Some(idx.scale()), &[n as u64]),
                Err(Error::Corrupt { .. })
            ));
            let short = f32_block(&x[..dim * 10], &norms[..10], dim);
            assert!(matches!(
                viewed.search(short, q, 10, None),
                Err(Error::Shape(_))
            ));
        }
        assert!(matches!(
            HnswIndex::view(
                &dir.path().join("missing"),
                n,
                dim,
                Metric::L2,
                &HnswParams::default(),
                Some(1.0),
                &[]
            ),
            Err(Error::Io { .. })
        ));
    }

    /// Under inner product with rows of different norms, HNSW's neighbour heuristic strands
    /// many small rows. Searches stay exact where the walk is exhaustive: the stranded rows that
    /// can still make the top k (by the Cauchy–Schwarz bound) are scored, the rest skipped.
    #[test]
    fn inner_product_stranded_rows_keep_search_exact() {
        let (n, dim, nq, k) = (5000, 64, 100, 10);
        let mut x = clustered_unit_vectors(n + nq, dim, 50, 0.7, 11);
        for (i, r) in x.chunks_mut(dim).enumerate() {
            let f = 0.5
                + 2.5 * ((i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40) as f32
                    / (1u64 << 24) as f32;
            r.iter_mut().for_each(|v| *v *= f);
        }
        let (x, q) = x.split_at(n * dim);
        let norms = row_norms(x, dim);
        let v = f32_block(x, &norms, dim);
        let idx = HnswIndex::build(v, Metric::InnerProduct, &HnswParams::default(), 2).unwrap();
        assert!(!idx.stranded().is_empty(), "the case this test is about");
        assert_eq!(idx.unreachable(), idx.stranded());
        let exact = exact_search(&[(0, v)], q, k, Metric::InnerProduct).unwrap();
        let all = idx.search(v, q, k, Some(n)).unwrap();
        assert_eq!(all.ids, exact.ids);
        // The default beam: stranded rows may be among the results, with exact scores.
        let approx = idx.search(v, q, k, None).unwrap();
        assert!(recall_at_k(&approx, &exact) > 0.95);
        // A deep top k reaches into the stranded rows: the bound must let in exactly those
        // that belong, at any depth, and for queries against the data (negative products).
        let neg: Vec<f32> = q.iter().map(|v| -v).collect();
        for (qs, deep) in [(q, 1000), (&neg[..], 1000), (q, n)] {
            let exact = exact_search(&[(0, v)], qs, deep, Metric::InnerProduct).unwrap();
            let st: std::collections::HashSet<i64> =
                idx.stranded().iter().map(|&s| s as i64).collect();
            assert!(exact.ids.iter().any(|i| st.contains(i)));
            // Rank by rank the same scores (ids may swap where two scores differ by rounding).
            let got = idx.search(v, qs, deep, Some(n)).unwrap();
            for (a, b) in got.scores.iter().zip(&exact.scores) {
                assert!(
                    (a - b).abs() <= 1e-5 * b.abs().max(1.0),
                    "{deep}: {a} vs {b}"
                );
            }
        }
    }

    #[test]
    fn f16_and_i8_blocks_and_padding() {
        let (n, dim) = (500, 16);
        let x = clustered_unit_vectors(n, dim, 10, 0.5, 3);
        let h: Vec<f16> = x.iter().map(|&v| f16::from_f32(v)).collect();
        let norms = row_norms(&x, dim);
        let q8: Vec<i8> = x.iter().map(|&v| (v * 127.0).round() as i8).collect();
        let scales = vec![1.0f32 / 127.0; n];
        for data in [
            VectorData::F16(&h),
            VectorData::I8 {
                q: &q8,
                scales: &scales,
            },
        ] {
            let v = VectorsRef {
                dim,
                count: n,
                data,
                norms: &norms,
            };
            let idx = HnswIndex::build(v, Metric::Cosine, &HnswParams::default(), 0).unwrap();
            let exact = exact_search(&[(0, v)], &x[..10 * dim], 5, Metric::Cosine).unwrap();
            let approx = idx.search(v, &x[..10 * dim], 5, None).unwrap();
            assert!(recall_at_k(&approx, &exact) > 0.9);
        }
        // k larger than the index: padded.
        let small = &x[..3 * dim];
        let v = f32_block(small, &norms[..3], dim);
        let idx = HnswIndex::build(v, Metric::L2, &HnswParams::default(), 1).unwrap();
        let r = idx.search(v, &x[..dim], 5, None).unwrap();
        assert_eq!(r.ids[0], 0);
        assert_eq!(&r.ids[3..], &[-1, -1]);
        assert!(r.scores[4].is_nan());
        assert!(idx.search(v, &x[..dim - 1], 5, None).is_err());
        assert!(idx.search(v, &x[..dim], 0, None).is_err());
        assert!(idx.search(v, &x[..dim], 5, Some(0)).is_err());
    }
}

#[cfg(test)]
mod recall_tests {
    use super::*;
    use crate::knn::{exact_search, row_norms};
    use crate::testing::{clustered_unit_vectors, recall_at_k};
    use crate::vectors::VectorData;

    /// recall@20 on 200,000 × 384 clustered unit vectors (2,000 Gaussian clusters, 100 points
    /// each, fixed seed) at the default search settings, expansion_add 64 to halve the build.
    /// Sized for `cargo test --release` (about 20 s on 2 idle cores: the graph build is C++ at
    /// -O3 in every profile, but data generation and the exact ground truth are Rust). A debug
    /// build runs the same density (100 points per cluster) at 20,000 vectors to stay bounded;
    /// `TTTNN_RECALL_N` overrides. The 200k figure is also asserted by tests/test_knn.py (slow).
    #[test]
    fn recall_at_20_on_200k_clustered() {
        let n: usize = std::env::var("TTTNN_RECALL_N")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(if cfg!(debug_assertions) {
                20_000
            } else {
                200_000
            });
        let spread: f32 = std::env::var("TTTNN_RECALL_SPREAD")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1.0);
        let (dim, nq, k) = (384, 200, 20);
        let t = std::time::Instant::now();
        // Queries: further points of the same clusters, not in the index.
        let all = clustered_unit_vectors(n + nq, dim, (n / 100).max(1), spread, 42);
        let (x, q) = all.split_at(n * dim);
        let norms = row_norms(x, dim);
        let v = VectorsRef {
            dim,
            count: n,
            data: VectorData::F32(x),
            norms: &norms,
        };
        eprintln!("data {:?}", t.elapsed());
        let t = std::time::Instant::now();
        let mut params = HnswParams {
            expansion_add: 64,
            ..HnswParams::default()
        };
        if let Some(e) = std::env::var("TTTNN_RECALL_EF_ADD")
            .ok()
            .and_then(|v| v.parse().ok())
        {
            params.expansion_add = e;
        }
        let idx = HnswIndex::build(v, Metric::Cosine, &params, 0).unwrap();
        eprintln!("build {:?}", t.elapsed());
        let t = std::time::Instant::now();
        let exact = exact_search(&[(0, v)], q, k, Metric::Cosine).unwrap();
        eprintln!("exact {:?}", t.elapsed());
        let t = std::time::Instant::now();
        let approx = idx.search(v, q, k, None).unwrap();
        eprintln!("search {:?}", t.elapsed());
        let r = recall_at_k(&approx, &exact);
        eprintln!("recall@{k} = {r:.4} (n = {n}, spread = {spread})");
        // Outliers the graph strands are scored by every search: each one finds itself.
        let stranded = idx.stranded();
        eprintln!("stranded: {stranded:?}");
        assert_eq!(idx.unreachable(), stranded);
        let own: Vec<f32> = stranded
            .iter()
            .flat_map(|&s| x[s as usize * dim..(s as usize + 1) * dim].iter().copied())
            .collect();
        let found = idx.search(v, &own, 1, None).unwrap();
        let want: Vec<i64> = stranded.iter().map(|&s| s as i64).collect();
        assert_eq!(found.ids, want);
        assert!(r >= 0.95, "recall@{k} = {r}");
    }
}
