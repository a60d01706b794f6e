//! Append-only, sharded, memory-mapped embedding store.
//!
//! Layout of a store directory:
//! ```text
//! DIR/manifest.json             format "tttnn-store", version, dim, dtype, metric, shard_size,
//!                               hnsw params or null, has_text/has_tokens/has_records (and
//!                               token_bits 16 when token ids are u16; absent: u32), count,
//!                               user meta, shards [{id, dir, start, count, files {name: {bytes, xxh3}}}]
//! DIR/shards/00000/vectors.bin  header + vectors (+ i8 scales) + f32 norms, 64-byte aligned sections
//! DIR/shards/00000/text.{bin,off} tokens.{bin,off} records.{bin,off}   ragged columns (optional)
//! DIR/shards/00000/hnsw.usearch HNSW graph (optional)
//! DIR/.lock                     the writer lock (`lock.rs`)
//! ```
//! One concern per module, each opening with its rules:
//! * `manifest.rs`: `manifest.json`, the list of sealed shards, checksummed and replaced
//!   atomically;
//! * `vecfile.rs`: the `vectors.bin` format (header, 64-byte aligned sections, quantization);
//! * `shard.rs`: one sealed shard's files, opened in constant time, checked once before first
//!   use, and all at once by [`EmbeddingStore::verify`];
//! * `write.rs`: appending (a shard sealed by atomic renames), building graphs, the writer lock;
//! * `adopt.rs`: taking over the sealed shards of another store (a build worker's unit);
//! * `search.rs`: searches (per-shard lists merged by score, then id) and reads by global id.
//!
//! Opening maps the files and reads only headers, file sizes and the manifest (whose xxh3 it
//! checks), plus the level of every HNSW node (2 bytes a node): constant time in the size of the
//! vectors. Files that resolve outside the directory (symlinks) are refused, and no write
//! follows a symbolic link (`files.rs`). No file, however
//! damaged, crashes the process or moves a result without an error: every answer is right or an
//! error (`shard.rs` says what is checked when).
//!
//! One writer at a time: the first write of a handle takes an advisory lock on `DIR/.lock`
//! (`lock.rs`), released when the handle is dropped or its process dies; readers of sealed
//! shards never wait. A handle opened with some shards only ([`EmbeddingStore::open_shards`], a
//! node serving part of a store) reads and searches those, and never writes.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::hnsw::HnswParams;
use crate::lock::WriterLock;
use crate::vectors::{DType, Metric, VectorsRef};

mod adopt;
mod manifest;
mod search;
mod shard;
mod vecfile;
mod write;

use manifest::{
    check_token_bits, parse_meta, read_manifest, shard_dir_name, Manifest, MANIFEST, SHARDS,
};
pub use manifest::{MANIFEST_FORMAT, MANIFEST_VERSION, TOKEN_BITS_DEFAULT};
use shard::{Shard, HNSW_FILE};

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
    /// Width of a stored token id, 16 or 32 (see [`EmbeddingStore::token_bits`]).
    pub token_bits: u32,
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
            token_bits: TOKEN_BITS_DEFAULT,
            with_records: false,
        }
    }
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
        check_token_bits(options.token_bits)?;
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
        let shards_dir = dir.join(SHARDS);
        std::fs::create_dir_all(&shards_dir).map_err(|e| Error::io(&shards_dir, e))?;
        let lock = Some(WriterLock::acquire(dir, "store")?);
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
                token_bits: options.token_bits,
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
    pub fn open_shards(dir: &Path, only: Option<&[i64]>) -> Result<Self> {
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
            // Empty is allowed here: a handle of no shard still describes the store.
            Some(list) => sorted_shards(list.iter().copied(), manifest.shards.len())?,
        };
        for i in chosen {
            shards.push(Shard::open(
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
            return Err(shard_out_of_range(i, self.manifest.shards.len()));
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

    pub fn meta(&self) -> String {
        self.manifest.meta.to_string()
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

    /// Width of a stored token id: 16 (u16 on disk, half the bytes, for vocabularies of at most
    /// 65,536 ids) or 32. Reads give u32 ids either way.
    pub fn token_bits(&self) -> u32 {
        self.manifest.token_bits
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
}

/// The shard numbers `shards` of a store of `num_shards` shards, sorted and distinct (repeats
/// count once): the one check of the shard numbers a search names, here and in every process
/// that spreads a search over shard groups. Empty is an error (`InvalidArgument`), and so is a
/// number outside `0..num_shards` (`OutOfRange`, naming the smallest such number and how many
/// shards there are).
pub fn check_shards(shards: &[i64], num_shards: usize) -> Result<Vec<usize>> {
    if shards.is_empty() {
        return Err(Error::InvalidArgument(
            "shards is empty: give at least one shard number".into(),
        ));
    }
    sorted_shards(shards.iter().copied(), num_shards)
}

/// `shards` sorted and distinct, every one in `0..num_shards`; may be empty.
fn sorted_shards(shards: impl Iterator<Item = i64>, num_shards: usize) -> Result<Vec<usize>> {
    let mut list: Vec<i64> = shards.collect();
    list.sort_unstable();
    list.dedup();
    list.into_iter()
        .map(|i| {
            usize::try_from(i)
                .ok()
                .filter(|&u| u < num_shards)
                .ok_or_else(|| shard_out_of_range(i, num_shards))
        })
        .collect()
}

fn shard_out_of_range(i: impl std::fmt::Display, num_shards: usize) -> Error {
    Error::OutOfRange(format!(
        "shard {i} out of range: the store has {num_shards} shards, numbered from 0"
    ))
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

#[cfg(test)]
mod fixtures {
    //! Stores filled with rows of every column, shared by the tests of every module.
    use super::*;
    use crate::testing::test_matrix;

    pub(super) fn opts(dim: usize, dtype: DType) -> StoreOptions {
        StoreOptions {
            dtype,
            shard_size: 7,
            with_text: true,
            with_tokens: true,
            with_records: true,
            ..StoreOptions::new(dim)
        }
    }

    pub(super) fn fill(store: &mut EmbeddingStore, n: usize, seed: u64) -> Vec<f32> {
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
    pub(super) fn filled(
        dim: usize,
        dtype: DType,
        n: usize,
    ) -> (tempfile::TempDir, PathBuf, EmbeddingStore) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("s");
        let mut store = EmbeddingStore::create(&dir, &opts(dim, dtype), "{}").unwrap();
        fill(&mut store, n, 1);
        (tmp, dir, store)
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::{fill, opts};
    use super::*;
    use crate::testing::test_matrix;

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
    fn check_shards_sorts_dedups_and_names_the_bad_shard() {
        assert_eq!(check_shards(&[3, 0, 3, 1], 4).unwrap(), vec![0, 1, 3]);
        for (list, bad) in [(&[1i64, 4][..], "shard 4 "), (&[2, -1, 9][..], "shard -1 ")] {
            let err = check_shards(list, 4).unwrap_err();
            assert!(matches!(err, Error::OutOfRange(_)), "{err}");
            let msg = err.to_string();
            assert!(msg.contains(bad) && msg.contains("has 4 shards"), "{msg}");
        }
        let err = check_shards(&[], 4).unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
        assert!(check_shards(&[0], 0).is_err());
    }

    /// 16-bit token ids: half the bytes of `tokens.bin`, the same u32 ids read back, packed
    /// windows unchanged; an id that does not fit is refused before anything is written; a
    /// store of u32 ids writes the manifest it wrote before 16-bit ids existed (no key).
    #[test]
    fn sixteen_bit_token_ids_read_back_as_stored_and_refuse_what_does_not_fit() {
        let tmp = tempfile::tempdir().unwrap();
        let ids: Vec<Vec<u32>> = vec![vec![0, 1, 65_535, 7], vec![], vec![49_151; 5]];
        let tk: Vec<&[u32]> = ids.iter().map(Vec::as_slice).collect();
        let x = test_matrix(3, 4, 2);
        let mut sizes = Vec::new();
        for bits in [16u32, 32] {
            let dir = tmp.path().join(format!("s{bits}"));
            let o = StoreOptions {
                with_tokens: true,
                token_bits: bits,
                ..StoreOptions::new(4)
            };
            let mut store = EmbeddingStore::create(&dir, &o, "{}").unwrap();
            store.append(&x, None, Some(&tk), None).unwrap();
            drop(store);
            let store = EmbeddingStore::open(&dir).unwrap();
            store.verify().unwrap();
            assert_eq!(store.token_bits(), bits);
            for (i, want) in ids.iter().enumerate() {
                assert_eq!(&store.tokens(i as i64).unwrap()[..], &want[..]);
            }
            let manifest = std::fs::read_to_string(dir.join(MANIFEST)).unwrap();
            assert_eq!(manifest.contains("token_bits"), bits == 16, "{manifest}");
            sizes.push(
                std::fs::metadata(dir.join("shards/00000/tokens.bin"))
                    .unwrap()
                    .len(),
            );
        }
        assert_eq!(sizes, vec![2 * 9, 4 * 9]);

        let dir = tmp.path().join("s16");
        let mut store = EmbeddingStore::open(&dir).unwrap();
        let big: Vec<&[u32]> = vec![&[1, 2], &[3, 65_536]];
        let err = store
            .append(&test_matrix(2, 4, 3), None, Some(&big), None)
            .unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
        let msg = err.to_string();
        assert!(msg.contains("65536 (tokens 1, position 1)"), "{msg}");
        assert_eq!((store.len(), store.num_shards()), (3, 1));
        assert!(!dir.join(shard_dir_name(1)).exists());

        for bits in [0u32, 8, 24, 64] {
            let o = StoreOptions {
                token_bits: bits,
                ..StoreOptions::new(4)
            };
            let bad = tmp.path().join(format!("bad{bits}"));
            let err = EmbeddingStore::create(&bad, &o, "{}").err().unwrap();
            assert!(err.to_string().contains("16 or 32"), "{err}");
            assert!(!bad.exists());
        }
    }
}
