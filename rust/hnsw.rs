//! Approximate search: usearch HNSW, built in parallel, saved, reopened as a memory-mapped view.
//!
//! CONTRACT (owned by the knn helper; relied on by `store` and the bindings):

use std::path::Path;

use crate::error::Result;
use crate::vectors::{Metric, SearchResult, VectorsRef};

/// HNSW construction and search settings (usearch names).
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
            expansion_search: 128,
        }
    }
}

pub struct HnswIndex {
    _private: (),
}

impl HnswIndex {
    /// Build over all vectors of one block; keys are local row numbers 0..count.
    pub fn build(
        vectors: VectorsRef<'_>,
        metric: Metric,
        params: &HnswParams,
        threads: usize,
    ) -> Result<Self> {
        let _ = (vectors, metric, params, threads);
        todo!("HnswIndex::build")
    }

    /// Save to `path` (the caller writes to a temp path and renames).
    pub fn save(&self, path: &Path) -> Result<()> {
        let _ = path;
        todo!("HnswIndex::save")
    }

    /// Open a saved index as a memory-mapped view (no copy of the graph into memory).
    pub fn view(path: &Path, dim: usize, metric: Metric, params: &HnswParams) -> Result<Self> {
        let _ = (path, dim, metric, params);
        todo!("HnswIndex::view")
    }

    /// Search `nq × dim` queries; local ids (row numbers), scores per [`Metric`], best first.
    pub fn search(&self, queries: &[f32], k: usize, ef: Option<usize>) -> Result<SearchResult> {
        let _ = (queries, k, ef);
        todo!("HnswIndex::search")
    }

    pub fn len(&self) -> usize {
        todo!("HnswIndex::len")
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
