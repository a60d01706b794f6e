//! The usearch file layout of a saved HNSW graph, and its validation before usearch touches it.
//!
//! usearch (2.x) trusts the file it maps: a link slot pointing past the node array makes a search
//! read unmapped memory (SIGSEGV), and a corrupt connectivity makes it allocate absurd buffers in
//! `noexcept` code (SIGABRT). So no graph is handed to usearch before these checks:
//! - [`GraphLayout::parse`], at open: the headers (sizes, types, connectivity equal to the
//!   store's parameters, entry point) and the level of every node (2 bytes per node), and the
//!   file size those imply. A corrupt connectivity is caught here, before usearch reads it.
//! - [`GraphLayout::check_links`], before the first search of the graph in a process: every link
//!   slot is a node, the linked node has the level of the link, every list is within capacity.
//!   One pass over the graph section (about 1/3 of the file for 384-d i8 codes). Measured at
//!   1M × 384 (`benches/bench_open.py`, warm page cache, 2 loaded cores): open 78 ms against
//!   76 ms before (usearch's own view is O(n) too), the first HNSW search 77 ms against 8 ms, so
//!   open + first search is 2.0× the previous open. A parallel check gained nothing there.
//!
//! Layout (little-endian; what `index_dense_gt::save_to_stream` writes with default options):
//! ```text
//! u32 rows, u32 bytes per vector      the codes: rows × bytes
//! 64-byte dense head                  "usearch", version u16 × 3, metric u8, scalar u8,
//!                                     key kind u8, slot kind u8, present u64, deleted u64,
//!                                     dimensions u64, multi u8
//! graph header (5 × u64)              size, connectivity, connectivity_base, max_level, entry
//! level i16 per node
//! nodes, back to back                 key u64, level i16, then for each level l in 0..=level:
//!                                     count u32 + capacity(l) u32 slots
//!                                     (capacity: connectivity_base at l = 0, connectivity above)
//! ```

use std::path::Path;

use crate::error::{Error, Result};

const MAGIC: &[u8; 7] = b"usearch";
/// usearch's `scalar_kind_t` codes of the key (u64) and slot (u32) types this crate builds with.
const KIND_U64: u8 = 14;
const KIND_U32: u8 = 15;
const DENSE_HEAD: usize = 64;
const GRAPH_HEADER: usize = 40;
/// Levels are geometric with ratio 1/connectivity: 64 is beyond any real graph.
const MAX_LEVEL: u64 = 64;

fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}

fn u64_at(b: &[u8], o: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[o..o + 8]);
    u64::from_le_bytes(x)
}

fn i16_at(b: &[u8], o: usize) -> i16 {
    i16::from_le_bytes([b[o], b[o + 1]])
}

/// Where everything is in a graph file whose headers and levels were checked.
#[derive(Clone, Debug)]
pub(crate) struct GraphLayout {
    nodes: usize,
    connectivity: usize,
    connectivity_base: usize,
    levels_off: usize,
    nodes_off: usize,
}

impl GraphLayout {
    /// Check the headers and node levels of `bytes` (a whole graph file) against what the store
    /// expects: `nodes` rows of `dim` i8 codes, built with `connectivity`.
    pub fn parse(
        path: &Path,
        bytes: &[u8],
        nodes: usize,
        dim: usize,
        connectivity: usize,
    ) -> Result<GraphLayout> {
        let bad = |msg: String| Error::corrupt(path, format!("HNSW graph: {msg}"));
        let len = bytes.len();
        if len < 8 {
            return Err(bad(format!("{len} bytes, shorter than its header")));
        }
        let (rows, cols) = (u32_at(bytes, 0) as usize, u32_at(bytes, 4) as usize);
        if rows != nodes || cols != dim {
            return Err(bad(format!(
                "holds {rows} codes of {cols} bytes, the shard has {nodes} vectors of dimension {dim}"
            )));
        }
        let head = 8 + rows * cols;
        let graph = head + DENSE_HEAD;
        let levels_off = graph + GRAPH_HEADER;
        let nodes_off = nodes
            .checked_mul(2)
            .and_then(|l| l.checked_add(levels_off))
            .filter(|&end| end <= len)
            .ok_or_else(|| bad(format!("truncated: {len} bytes")))?;
        let h = &bytes[head..graph];
        if &h[0..7] != MAGIC {
            return Err(bad("bad magic number".into()));
        }
        let (key_kind, slot_kind) = (h[15], h[16]);
        let (present, deleted, dims, multi) = (u64_at(h, 17), u64_at(h, 25), u64_at(h, 33), h[41]);
        if key_kind != KIND_U64 || slot_kind != KIND_U32 || multi != 0 {
            return Err(bad(format!(
                "key kind {key_kind}, slot kind {slot_kind}, multi {multi}: not a graph this \
                 build writes"
            )));
        }
        if present != nodes as u64 || deleted != 0 || dims != dim as u64 {
            return Err(bad(format!(
                "header says {present} vectors ({deleted} deleted) of dimension {dims}, the shard \
                 has {nodes} of dimension {dim}"
            )));
        }
        let g = &bytes[graph..levels_off];
        let (size, conn, conn_base, max_level, entry) = (
            u64_at(g, 0),
            u64_at(g, 8),
            u64_at(g, 16),
            u64_at(g, 24),
            u64_at(g, 32),
        );
        if size != nodes as u64 {
            return Err(bad(format!("{size} nodes, the shard has {nodes} vectors")));
        }
        // usearch's own rule: the base level holds twice the links of the levels above.
        if conn != connectivity as u64 || conn_base != 2 * connectivity as u64 {
            return Err(bad(format!(
                "connectivity {conn} (base {conn_base}), the store was built with {connectivity}"
            )));
        }
        if max_level > MAX_LEVEL || (nodes > 0 && entry >= nodes as u64) {
            return Err(bad(format!(
                "max level {max_level}, entry node {entry} of {nodes}"
            )));
        }
        let layout = GraphLayout {
            nodes,
            connectivity,
            connectivity_base: 2 * connectivity,
            levels_off,
            nodes_off,
        };
        // The node sizes follow from the levels: they must add up to the file.
        let mut end = nodes_off;
        let mut top = -1i16;
        for i in 0..nodes {
            let level = i16_at(bytes, levels_off + 2 * i);
            if level < 0 || level as u64 > max_level {
                return Err(bad(format!(
                    "node {i} has level {level}, max level {max_level}"
                )));
            }
            top = top.max(level);
            end += layout.node_bytes(level as usize);
        }
        if nodes > 0 && (top as u64 != max_level || layout.level(bytes, entry as usize) != top) {
            return Err(bad(format!(
                "max level {max_level}, highest node level {top}, entry node {entry} is not on it"
            )));
        }
        if end != len {
            return Err(bad(format!(
                "{len} bytes, its nodes need {end} (truncated or oversized)"
            )));
        }
        Ok(layout)
    }

    fn level(&self, bytes: &[u8], i: usize) -> i16 {
        i16_at(bytes, self.levels_off + 2 * i)
    }

    fn list_bytes(&self, level: usize) -> usize {
        4 + 4 * if level == 0 {
            self.connectivity_base
        } else {
            self.connectivity
        }
    }

    fn node_bytes(&self, level: usize) -> usize {
        10 + self.list_bytes(0) + level * self.list_bytes(1)
    }

    /// Check every node of `bytes` (the file [`GraphLayout::parse`] accepted): its key is a row,
    /// its level is the one in the level table, and each of its link lists is within capacity
    /// and links only to nodes that have that level. After this a walk cannot leave the graph.
    /// The error is the message of a corrupt-file error.
    pub fn check_links(&self, bytes: &[u8]) -> std::result::Result<(), String> {
        let bad = |msg: String| format!("HNSW graph: {msg}");
        let mut off = self.nodes_off;
        for i in 0..self.nodes {
            let level = self.level(bytes, i);
            let key = u64_at(bytes, off);
            if key >= self.nodes as u64 || i16_at(bytes, off + 8) != level {
                return Err(bad(format!(
                    "node {i}: key {key}, level {} (level table: {level})",
                    i16_at(bytes, off + 8)
                )));
            }
            let mut list = off + 10;
            for l in 0..=level as usize {
                let cap = if l == 0 {
                    self.connectivity_base
                } else {
                    self.connectivity
                };
                let n = u32_at(bytes, list) as usize;
                if n > cap {
                    return Err(bad(format!(
                        "node {i} has {n} links at level {l}, at most {cap} fit"
                    )));
                }
                for s in 0..n {
                    let to = u32_at(bytes, list + 4 + 4 * s) as usize;
                    if to >= self.nodes || (self.level(bytes, to) as usize) < l {
                        return Err(bad(format!(
                            "node {i} links at level {l} to slot {to}, not a node of that level \
                             ({} nodes)",
                            self.nodes
                        )));
                    }
                }
                list += self.list_bytes(l);
            }
            off += self.node_bytes(level as usize);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hnsw::{HnswIndex, HnswParams};
    use crate::knn::row_norms;
    use crate::testing::clustered_unit_vectors;
    use crate::vectors::{Metric, VectorData, VectorsRef};

    /// A saved graph of 300 × 8 rows, and where its graph header and first node start.
    fn saved_graph() -> (Vec<u8>, usize, usize) {
        let (n, dim) = (300, 8);
        let x = clustered_unit_vectors(n, dim, 5, 0.5, 1);
        let norms = row_norms(&x, dim);
        let v = VectorsRef {
            dim,
            count: n,
            data: VectorData::F32(&x),
            norms: &norms,
        };
        let idx = HnswIndex::build(v, Metric::Cosine, &HnswParams::default(), 1).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.usearch");
        idx.save(&path).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let graph = 8 + n * dim + DENSE_HEAD;
        (bytes, graph, graph + GRAPH_HEADER + 2 * n)
    }

    #[test]
    fn a_saved_graph_passes_and_each_corruption_is_named() {
        let (bytes, graph, node0) = saved_graph();
        let p = Path::new("g.usearch");
        let layout = GraphLayout::parse(p, &bytes, 300, 8, 16).unwrap();
        layout.check_links(&bytes).unwrap();
        // Wrong expectations are refused before usearch sees the file.
        assert!(GraphLayout::parse(p, &bytes, 299, 8, 16).is_err());
        assert!(GraphLayout::parse(p, &bytes, 300, 8, 12).is_err());
        assert!(GraphLayout::parse(p, &bytes[..bytes.len() - 1], 300, 8, 16).is_err());
        let header_err = |field: usize, value: u64| {
            let mut b = bytes.clone();
            b[graph + 8 * field..graph + 8 * field + 8].copy_from_slice(&value.to_le_bytes());
            GraphLayout::parse(p, &b, 300, 8, 16)
                .err()
                .unwrap()
                .to_string()
        };
        assert!(header_err(1, 1 << 40).contains("connectivity"));
        assert!(header_err(3, 1 << 40).contains("max level"));
        assert!(header_err(4, 300).contains("entry node"));
        // A link to a slot past the nodes, and a list longer than its capacity.
        let mut b = bytes.clone();
        b[node0 + 14..node0 + 18].copy_from_slice(&1_000_000u32.to_le_bytes());
        let err = layout.check_links(&b).unwrap_err();
        assert!(
            err.contains("node 0 links at level 0 to slot 1000000"),
            "{err}"
        );
        let mut b = bytes.clone();
        b[node0 + 10..node0 + 14].copy_from_slice(&33u32.to_le_bytes());
        assert!(layout.check_links(&b).unwrap_err().contains("33 links"));
    }
}
