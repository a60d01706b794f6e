//! One sealed shard: its files opened, and everything a read depends on checked once.
//!
//! A shard directory holds `vectors.bin` ([`super::vecfile`]), the ragged columns the store keeps
//! (`text`, `tokens`, `records`: `NAME.bin` + `NAME.off`, see `ragged.rs`) and, when the store
//! builds graphs, `hnsw.usearch`. Opening checks what is cheap: every file the manifest lists
//! exists with its recorded size and resolves inside the store directory, and every header
//! agrees with the manifest.
//!
//! What a read depends on is checked once per process before it is first used (a failed check
//! is remembered and returned as the same error at every later use): the xxh3 of a shard's
//! `vectors.bin` (against its header) and its norms (and i8 scales) before the first search of
//! the shard, the xxh3 of its HNSW graph (against the manifest) and every link before its first
//! HNSW search, the xxh3 of a ragged column's data and its offsets before its first read; cosine
//! scores outside [-1, 1] and non-finite stored values found by a search are errors naming the
//! file. So no file, however damaged, crashes the process or moves a result without an error:
//! every answer is right or an error. [`EmbeddingStore::verify`] still reads every file from disk
//! and checks all of them at once. Cost at 1M × 384 f16 (`benches/bench_open.py`, page cache, 2
//! loaded cores): first exact search 38 → 83 ms, first HNSW search 80 → 161 ms (768 MB of
//! vectors and the 533 MB graph hashed in parallel), first text read 1.3 → 3 ms, open unchanged,
//! later searches unchanged; paid once per process, it is the price of no silently wrong answer.

use std::path::{Path, PathBuf};

use rayon::prelude::*;

use super::manifest::{ragged_names, Manifest, ShardEntry, MANIFEST};
use super::vecfile::{VecFile, VECTORS};
use super::{inside, not_found, EmbeddingStore};
use crate::error::{Error, Result};
use crate::hnsw::HnswIndex;
use crate::ragged::{
    check_sum_once, file_len, hash_file, CheckedOnce, FileSum, Ragged, TokenColumn, HEADER_LEN,
};
use crate::vectors::VectorData;

/// Name of the HNSW graph file in a shard directory.
pub(super) const HNSW_FILE: &str = "hnsw.usearch";

/// One sealed shard, memory-mapped.
pub(super) struct Shard {
    pub(super) entry: ShardEntry,
    pub(super) dir: PathBuf,
    pub(super) vectors: VecFile,
    pub(super) text: Option<Ragged<u8>>,
    pub(super) tokens: Option<TokenColumn>,
    pub(super) records: Option<Ragged<u8>>,
    pub(super) hnsw: Option<HnswIndex>,
    /// The outcome of [`Shard::check_values`], once per process (a corrupt-file message).
    pub(super) values: std::sync::OnceLock<std::result::Result<(), String>>,
    /// The outcome of [`Shard::check_vectors_sum`], once per process.
    pub(super) vectors_sum: CheckedOnce,
    /// The outcome of [`Shard::check_graph_sum`], once per process (reset when a graph is built).
    pub(super) graph_sum: CheckedOnce,
}

impl Shard {
    /// Open the shard `entry` of the store in `root` (`canon`: its canonical path) as `m`
    /// describes it: every listed file present with its recorded size and inside the store,
    /// headers matching the manifest. Reads headers and sizes only.
    pub(super) fn open(
        root: &Path,
        canon: &Path,
        m: &Manifest,
        entry: ShardEntry,
    ) -> Result<Shard> {
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
        let tokens = if m.token_bits == 16 {
            column::<u16>(m.has_tokens, "tokens", &entry, &need)?.map(TokenColumn::U16)
        } else {
            column::<u32>(m.has_tokens, "tokens", &entry, &need)?.map(TokenColumn::U32)
        };
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

    /// The xxh3 of `vectors.bin` after its header equals the one its header records. Once per
    /// process, before the first search or vector read of the shard: a changed value in the
    /// data (which no structure check sees) is an error, never a moved result.
    pub(super) fn check_vectors_sum(&self) -> Result<()> {
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
    pub(super) fn check_graph_sum(&self) -> Result<()> {
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
    pub(super) fn check_for_search(&self, graph: bool) -> Result<()> {
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
    pub(super) fn check_values(&self) -> Result<()> {
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
    pub(super) fn name_row_error(&self, e: Error) -> Error {
        match e {
            Error::NonFinite { id } => Error::corrupt(
                &self.vectors.path,
                format!("row {id} has a non-finite stored value (NaN or inf)"),
            ),
            other => other,
        }
    }
}

impl EmbeddingStore {
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
        s.tokens
            .as_ref()
            .map(TokenColumn::check_offsets)
            .transpose()?;
        s.hnsw.as_ref().map(HnswIndex::check_links).transpose()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::filled;
    use super::*;
    use crate::vectors::DType;

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
}
