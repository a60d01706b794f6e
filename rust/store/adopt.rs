//! Adopting the sealed shards of another store: how a build spread over workers becomes one store.
//!
//! A build worker writes its part of the corpus as a store of its own (a unit). The driver
//! adopts the units in order: each unit shard directory is renamed into this store's `shards/`
//! under the next shard number, its `start` rebased onto this store's count, and one manifest
//! listing them all is written atomically, so the adopted rows appear at once or not at all. No
//! vector is copied or re-encoded: a store built by workers is the store one process appending
//! the same rows in the same order would write, except that shards keep the unit's counts.
//!
//! A unit must match the store (dimension, dtype, metric, columns, HNSW settings, shard sizes,
//! every shard with a graph when the store builds graphs) and open cleanly before anything
//! moves; its writer lock is held while its shards move.

use std::path::{Path, PathBuf};

use super::manifest::{parse_meta, shard_dir_name, Manifest, ShardEntry, SHARDS};
use super::shard::Shard;
use super::EmbeddingStore;
use crate::error::{Error, Result};
use crate::files::{fsync_dir, remove_leftover};
use crate::lock::WriterLock;

impl EmbeddingStore {
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
        let _unit_lock = WriterLock::acquire(unit, "store")?;
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
                "text={} tokens={} ({}-bit) records={}",
                s.has_text, s.has_tokens, s.token_bits, s.has_records
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
        let shards_dir = self.shards_dir()?;
        for (n, (from, to)) in moves.iter().enumerate() {
            // Leftovers of an interrupted append or adoption are not listed: replace them.
            let step = remove_leftover(to)
                .and_then(|()| std::fs::rename(from, to).map_err(|e| Error::io(to, e)));
            if let Err(e) = step {
                undo_moves(&moves[..n]);
                return Err(e);
            }
        }
        fsync_dir(&shards_dir)?;
        fsync_dir(&unit.join(SHARDS))?;
        let canon = self
            .dir
            .canonicalize()
            .map_err(|e| Error::io(&self.dir, e))?;
        let opened = next.shards[self.shards.len()..]
            .iter()
            .map(|e| Shard::open(&self.dir, &canon, &next, e.clone()))
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
}

/// Move adopted shard directories back to their unit, last first (best effort: the adoption
/// failed before the manifest listed them).
fn undo_moves(moves: &[(PathBuf, PathBuf)]) {
    for (from, to) in moves.iter().rev() {
        let _ = std::fs::rename(to, from);
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::{fill, opts};
    use super::super::StoreOptions;
    use super::*;
    use crate::hnsw::HnswParams;
    use crate::testing::test_matrix;
    use crate::vectors::DType;

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
        let cases: [(&str, StoreOptions, &str); 5] = [
            ("dim", opts(5, DType::F16), "dimension"),
            (
                "bits",
                StoreOptions {
                    token_bits: 16,
                    ..opts(4, DType::F16)
                },
                "tokens=true (16-bit)",
            ),
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
