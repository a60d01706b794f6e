//! Searching a store, and reading its rows by global id.
//!
//! Every search is per-shard top-`k` lists merged by [`crate::knn::merge_topk`] (score by total
//! order, then smaller id; padding id -1 / score NaN), whether it covers all shards or some: so
//! searching groups of shards (in other processes) and merging their lists gives exactly the
//! search of all of them. Each shard is asked for at most its own count (the merge pads), so no
//! shard refuses a `k` the store takes. Exact search scans the shards in parallel (each scan is
//! parallel too); HNSW search walks one graph after another (each walk is parallel over the
//! queries), and a shard without a graph is scanned exactly.
//!
//! Before a shard is first searched or read, what the read depends on is checked once (see
//! [`super::shard`]). After a cosine search every score must lie in [-1, 1] (up to rounding): one
//! outside means a stored norm that does not match its vector, reported as a corrupt file.

use std::borrow::Cow;
use std::path::PathBuf;

use rayon::prelude::*;

use super::shard::Shard;
use super::{check_shards, EmbeddingStore};
use crate::error::{Error, Result};
use crate::ragged::Ragged;
use crate::vectors::{check_k, check_queries, Metric, SearchResult};

impl EmbeddingStore {
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
        shards: Option<&[i64]>,
    ) -> Result<SearchResult> {
        let nq = check_queries(queries, self.manifest.dim)?;
        let chosen: Vec<&Shard> = match shards {
            None => self.shards.iter().collect(),
            Some(list) => check_shards(list, self.manifest.shards.len())?
                .into_iter()
                .map(|i| self.shard(i))
                .collect::<Result<Vec<_>>>()?,
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
        pick(s).ok_or_else(|| without(name))?.get(local)
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

    /// Token ids of `id`: borrowed from the memory map in a store of u32 ids, widened to u32
    /// in one of u16 ids ([`EmbeddingStore::token_bits`]).
    pub fn tokens(&self, id: i64) -> Result<Cow<'_, [u32]>> {
        let (s, local) = self.locate(id)?;
        s.tokens
            .as_ref()
            .ok_or_else(|| without("tokens"))?
            .get(local)
    }

    /// Record bytes of `id`.
    pub fn record(&self, id: i64) -> Result<&[u8]> {
        self.column(id, "records", |s| s.records.as_ref())
    }
}

/// The error of a read of a column the store does not keep.
fn without(name: &str) -> Error {
    Error::InvalidArgument(format!(
        "this store was created without {name} (with_{name}=False)"
    ))
}

#[cfg(test)]
mod tests {
    use super::super::StoreOptions;
    use super::*;
    use crate::hnsw::HnswParams;
    use crate::testing::test_matrix;

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
                for subset in [vec![1i64], vec![3, 0], vec![0, 0, 2]] {
                    let got = store
                        .search_shards(&q, 4, true, None, Some(&subset))
                        .unwrap();
                    let starts = [0i64, 7, 14, 21, 26];
                    let inside = |id: i64| {
                        subset
                            .iter()
                            .any(|&s| (starts[s as usize]..starts[s as usize + 1]).contains(&id))
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
}
