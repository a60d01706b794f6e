//! Writing a store: appending rows, building HNSW graphs, replacing the metadata.
//!
//! A shard becomes visible only when sealed: it is written into `shards/NNNNN.tmp/` (every file
//! fsynced), renamed to `shards/NNNNN/`, and then listed in a new `manifest.json` written to a
//! temporary file, fsynced and renamed over the old one (directory fsynced). A crash at any
//! point leaves the last sealed state readable; leftovers (`.tmp` dirs, unlisted shard dirs) are
//! ignored by [`EmbeddingStore::open`] and replaced by the next append. Appends never change a
//! sealed file; a graph built later is written beside the vectors and listed the same way.
//!
//! Every file is created new (`O_EXCL|O_NOFOLLOW`) or replaced through a fresh temporary name
//! (`files.rs`), and a symbolic link where the store writes (`shards/`, a leftover shard
//! directory, the manifest) is an error: a link planted in a store never makes it write
//! elsewhere.
//!
//! Every write first takes the writer lock (`DIR/.lock`, `lock.rs`) and checks that the
//! manifest on disk is still the one the handle read, so two handles never interleave writes.
//! Rows are checked before anything is written: finite values, within the f16 range for an f16
//! store, valid UTF-8 text, one item of every column the store keeps per vector.

use std::collections::BTreeMap;
use std::path::Path;

use super::manifest::{
    parse_meta, ragged_names, read_manifest, shard_dir_name, Manifest, ShardEntry, MANIFEST, SHARDS,
};
use super::shard::{Shard, HNSW_FILE};
use super::vecfile::{encode, write_vectors, VECTORS};
use super::EmbeddingStore;
use crate::error::{Error, Result};
use crate::files::{fsync_dir, refuse_symlink, remove_leftover, replace};
use crate::hnsw::HnswIndex;
use crate::lock::WriterLock;
use crate::ragged::{narrow_tokens, write_ragged, CheckedOnce, FileSum};
use crate::vectors::DType;

/// Token id lists as the store writes them: narrowed to u16 in a store of 16-bit ids, as given
/// otherwise.
#[derive(Clone, Copy)]
enum TokenLists<'a> {
    U16(&'a [&'a [u16]]),
    U32(&'a [&'a [u32]]),
}

impl<'a> TokenLists<'a> {
    /// The lists `lo..hi` (one shard's).
    fn rows(self, lo: usize, hi: usize) -> Self {
        match self {
            TokenLists::U16(t) => TokenLists::U16(&t[lo..hi]),
            TokenLists::U32(t) => TokenLists::U32(&t[lo..hi]),
        }
    }
}

/// Largest magnitude representable in f16.
const F16_MAX: f32 = 65504.0;

impl EmbeddingStore {
    /// Release the writer lock now instead of when the handle is dropped; the handle stays
    /// usable, and its next write takes the lock again.
    pub fn release_lock(&mut self) {
        self.lock = None;
    }

    /// Take the writer lock before the first write of this handle. The manifest on disk must
    /// still be the one this handle read: otherwise another writer changed the store since.
    pub(super) fn lock_for_writing(&mut self) -> Result<()> {
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
        let lock = WriterLock::acquire(&self.dir, "store")?;
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
        // Narrowed once, for the whole append: an id that does not fit is refused before any file.
        let owned = match (tokens, self.manifest.token_bits) {
            (Some(t), 16) => Some(narrow_tokens(t)?),
            _ => None,
        };
        let narrow: Option<Vec<&[u16]>> = owned
            .as_ref()
            .map(|n| n.iter().map(Vec::as_slice).collect());
        let tokens = match (&narrow, tokens) {
            (Some(n), _) => Some(TokenLists::U16(n)),
            (None, t) => t.map(TokenLists::U32),
        };
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
                tokens.map(|t| t.rows(lo, hi)),
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
        tokens: Option<TokenLists<'_>>,
        records: Option<&[&[u8]]>,
    ) -> Result<u32> {
        let m = &self.manifest;
        let id = u32::try_from(self.shards.len())
            .map_err(|_| Error::InvalidArgument("too many shards".into()))?;
        let name = shard_dir_name(id);
        let final_dir = self.dir.join(&name);
        let tmp_dir = self.dir.join(format!("{name}.tmp"));
        let shards_dir = self.shards_dir()?;
        // Leftovers of an interrupted append are not listed in the manifest: replace them.
        for d in [&tmp_dir, &final_dir] {
            remove_leftover(d)?;
        }
        std::fs::create_dir_all(&shards_dir).map_err(|e| Error::io(&shards_dir, e))?;
        std::fs::create_dir(&tmp_dir).map_err(|e| Error::io(&tmp_dir, e))?;
        let written = write_shard_files(&tmp_dir, m, vectors, texts, tokens, records);
        let shard_files = match written {
            Ok(w) => w,
            Err(e) => {
                // A failed write (a full disk, say) frees its space now, not at the next append.
                let _ = std::fs::remove_dir_all(&tmp_dir);
                return Err(e);
            }
        };
        fsync_dir(&tmp_dir)?;
        std::fs::rename(&tmp_dir, &final_dir).map_err(|e| Error::io(&final_dir, e))?;
        fsync_dir(&shards_dir)?;
        let entry = ShardEntry {
            id,
            dir: name,
            start: m.count,
            count: shard_files.count,
            files: shard_files.files,
            hnsw_scale: shard_files.hnsw_scale,
            hnsw_stranded: shard_files.hnsw_stranded,
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
        let shard = Shard::open(&self.dir, &canon, &next, entry)?;
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
            let dst = shard.dir.join(HNSW_FILE);
            let sum = replace(&dst, &[&index.to_bytes()?])?;
            let scale = Some(index.scale());
            let stranded = index.stranded().to_vec();
            drop(index);
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

    /// `DIR/shards`, where shards are written: a symbolic link there is refused, since the
    /// store would write (and remove leftovers) wherever it points.
    pub(super) fn shards_dir(&self) -> Result<std::path::PathBuf> {
        let d = self.dir.join(SHARDS);
        refuse_symlink(&d)?;
        Ok(d)
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
}

/// The files of one shard, written into `tmp_dir`: what the manifest will list.
struct ShardFiles {
    files: BTreeMap<String, FileSum>,
    count: u64,
    hnsw_scale: Option<f32>,
    hnsw_stranded: Vec<u64>,
}

/// Write the vectors, the columns and the graph of one shard into the new directory `tmp_dir`,
/// each file created new (`files::write_new`), as the store `m` keeps them.
fn write_shard_files(
    tmp_dir: &Path,
    m: &Manifest,
    vectors: &[f32],
    texts: Option<&[&[u8]]>,
    tokens: Option<TokenLists<'_>>,
    records: Option<&[&[u8]]>,
) -> Result<ShardFiles> {
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
        let (b_path, o_path) = (tmp_dir.join(&b), tmp_dir.join(&o));
        let (bs, os) = match items {
            TokenLists::U16(t) => write_ragged(&b_path, &o_path, t)?,
            TokenLists::U32(t) => write_ragged(&b_path, &o_path, t)?,
        };
        files.insert(b, bs);
        files.insert(o, os);
    }
    let (mut hnsw_scale, mut hnsw_stranded) = (None, Vec::new());
    if let Some(params) = &m.hnsw {
        let view = enc.view(m.dim, &norms);
        let index = HnswIndex::build(view, m.metric, params, 0)?;
        files.insert(HNSW_FILE.to_string(), index.save(&tmp_dir.join(HNSW_FILE))?);
        hnsw_scale = Some(index.scale());
        hnsw_stranded = index.stranded().to_vec();
    }
    Ok(ShardFiles {
        files,
        count: norms.len() as u64,
        hnsw_scale,
        hnsw_stranded,
    })
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::{fill, filled, opts};
    use super::*;
    use crate::testing::test_matrix;
    use std::path::Path;

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

    #[cfg(unix)]
    #[test]
    fn links_planted_in_a_store_are_never_written_through() {
        use std::os::unix::fs::symlink;
        let (tmp, dir, store) = filled(3, DType::F32, 7);
        drop(store);
        let victim = tmp.path().join("victim");
        std::fs::write(&victim, b"keep").unwrap();
        // At the manifest's old temporary name, among a leftover shard's files, at the graph's
        // old temporary name: skipped or replaced, never followed.
        symlink(&victim, dir.join("manifest.json.tmp")).unwrap();
        std::fs::create_dir_all(dir.join("shards/00001.tmp")).unwrap();
        symlink(&victim, dir.join("shards/00001.tmp/vectors.bin")).unwrap();
        let mut store = EmbeddingStore::open(&dir).unwrap();
        fill(&mut store, 3, 2);
        symlink(&victim, dir.join("shards/00000/hnsw.usearch.tmp")).unwrap();
        assert_eq!(store.build_hnsw(1).unwrap(), 2);
        drop(store);
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
        let is_link = |p: &Path| {
            std::fs::symlink_metadata(p)
                .unwrap()
                .file_type()
                .is_symlink()
        };
        assert!(!is_link(&dir.join(MANIFEST)));
        EmbeddingStore::open(&dir).unwrap().verify().unwrap();
        // A link where the store writes (the next shard's directory, `shards/`, the manifest)
        // is an error naming it, even one that stays inside the store.
        let elsewhere = tmp.path().join("elsewhere");
        std::fs::create_dir(&elsewhere).unwrap();
        let one_row = |store: &mut EmbeddingStore| {
            let x = test_matrix(1, 3, 5);
            store
                .append(&x, Some(&[b"t"]), Some(&[&[1u32]]), Some(&[b"r"]))
                .map(|_| ())
        };
        let next = dir.join("shards/00002");
        symlink(&elsewhere, &next).unwrap();
        let err = one_row(&mut EmbeddingStore::open(&dir).unwrap()).unwrap_err();
        assert!(
            err.to_string().contains("shards/00002: is a symbolic link"),
            "{err}"
        );
        std::fs::remove_file(&next).unwrap();
        for (name, real) in [("shards", "shards.real"), (MANIFEST, "manifest.real")] {
            let (p, real) = (dir.join(name), dir.join(real));
            std::fs::rename(&p, &real).unwrap();
            symlink(&real, &p).unwrap();
            let mut store = EmbeddingStore::open(&dir).unwrap();
            let err = if name == MANIFEST {
                store.set_meta("{}").unwrap_err()
            } else {
                one_row(&mut store).unwrap_err()
            };
            let want = format!("{}: is a symbolic link", p.display());
            assert!(err.to_string().contains(&want), "{err}");
            drop(store);
            std::fs::remove_file(&p).unwrap();
            std::fs::rename(&real, &p).unwrap();
        }
        assert!(std::fs::read_dir(&elsewhere).unwrap().next().is_none());
        let store = EmbeddingStore::open(&dir).unwrap();
        assert_eq!((store.len(), store.meta()), (10, "{}".to_string()));
    }
}
