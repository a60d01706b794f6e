//! `manifest.json`: what a store holds, and the only record of which shards are sealed.
//!
//! Fields: format `"tttnn-store"`, version, dim, dtype, metric, shard_size, HNSW parameters or
//! null, which per-document columns exist (`has_text`, `has_tokens`, `has_records`; with
//! `token_bits` 16 when token ids are stored as u16, absent for u32), the total
//! count, the user metadata (a JSON object) and the shards in id order, each with its directory
//! (`shards/NNNNN`), its first global id (`start`, the sum of the counts before it), its count, the
//! size and xxh3 of every file, and for a shard with a graph the scale of its i8 codes and the
//! rows no walk of the graph reaches. A shard not listed here does not exist for a reader.
//!
//! The manifest is never edited in place: a new one is written to a fresh temporary file beside
//! it, fsynced and renamed over the old one (the directory fsynced; `files::replace`), so a
//! reader sees the old or the new list, never half of one. It carries the xxh3 of its own content
//! (`checksum`), so a hand edit of, say, `metric` is a corrupt store rather than a different
//! one; a manifest without its checksum is corrupt too (every manifest of this version has one),
//! or deleting the key would let any edit through.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::EmbeddingStore;
use crate::error::{Error, Result};
use crate::files::replace;
use crate::hnsw::HnswParams;
use crate::ragged::FileSum;
use crate::vectors::{DType, Metric};

/// Value of `format` in `manifest.json`.
pub const MANIFEST_FORMAT: &str = "tttnn-store";
/// Version of `manifest.json` this build writes and reads.
pub const MANIFEST_VERSION: u32 = 1;
/// Name of the manifest file in a store directory.
pub(super) const MANIFEST: &str = "manifest.json";

/// Token ids are u32 unless a store was created with 16-bit ones.
pub const TOKEN_BITS_DEFAULT: u32 = 32;

fn token_bits_default() -> u32 {
    TOKEN_BITS_DEFAULT
}

fn is_token_bits_default(bits: &u32) -> bool {
    *bits == TOKEN_BITS_DEFAULT
}

/// The widths a token id may be stored in: 16 or 32, else why not.
pub(crate) fn check_token_bits(bits: u32) -> Result<()> {
    match bits {
        16 | 32 => Ok(()),
        _ => Err(Error::InvalidArgument(format!(
            "token_bits must be 16 or 32, not {bits}"
        ))),
    }
}

/// One sealed shard, as the manifest lists it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) struct ShardEntry {
    pub(super) id: u32,
    pub(super) dir: String,
    pub(super) start: u64,
    pub(super) count: u64,
    pub(super) files: BTreeMap<String, FileSum>,
    /// Scale of the HNSW graph's i8 codes (see `hnsw.rs`); absent without a graph.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) hnsw_scale: Option<f32>,
    /// Rows of the shard no walk of its HNSW graph reaches; searches score them exactly.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(super) hnsw_stranded: Vec<u64>,
}

/// The content of `manifest.json`, fields in the order they are written (and hashed).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) struct Manifest {
    pub(super) format: String,
    pub(super) version: u32,
    pub(super) dim: usize,
    pub(super) dtype: DType,
    pub(super) metric: Metric,
    pub(super) shard_size: usize,
    pub(super) hnsw: Option<HnswParams>,
    pub(super) has_text: bool,
    pub(super) has_tokens: bool,
    /// Width of a stored token id: 16 (u16, for vocabularies of at most 65,536 ids) or 32.
    /// Written only when 16, so a store of u32 ids keeps the manifest (and checksum) it had
    /// before 16-bit ids existed.
    #[serde(
        default = "token_bits_default",
        skip_serializing_if = "is_token_bits_default"
    )]
    pub(super) token_bits: u32,
    pub(super) has_records: bool,
    pub(super) count: u64,
    pub(super) meta: serde_json::Value,
    pub(super) shards: Vec<ShardEntry>,
    /// xxh3 of the manifest serialised without this field (compact JSON, fields in this order),
    /// as 16 hex digits: a hand edit of `metric` or `hnsw_scale` is a corrupt manifest, not a
    /// different store. Always written; one read without it is corrupt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) checksum: Option<String>,
}

impl Manifest {
    pub(super) fn digest(&self) -> Result<String> {
        let bare = Manifest {
            checksum: None,
            ..self.clone()
        };
        let json = serde_json::to_vec(&bare)
            .map_err(|e| Error::InvalidArgument(format!("cannot serialize manifest: {e}")))?;
        Ok(format!("{:016x}", xxhash_rust::xxh3::xxh3_64(&json)))
    }
}

/// Name of the directory of shard directories in a store directory.
pub(super) const SHARDS: &str = "shards";

pub(super) fn shard_dir_name(id: u32) -> String {
    format!("{SHARDS}/{id:05}")
}

pub(super) fn ragged_names(column: &str) -> (String, String) {
    (format!("{column}.bin"), format!("{column}.off"))
}

/// Parse a user metadata string: it must be a JSON object.
pub(super) fn parse_meta(meta: &str) -> Result<serde_json::Value> {
    let v: serde_json::Value = serde_json::from_str(meta)
        .map_err(|e| Error::InvalidArgument(format!("meta is not valid JSON: {e}")))?;
    if !v.is_object() {
        return Err(Error::InvalidArgument(
            "meta must be a JSON object (e.g. \"{}\")".into(),
        ));
    }
    Ok(v)
}

/// Read and check `manifest.json`: format, version, fields, and its checksum.
pub(super) fn read_manifest(mpath: &Path) -> Result<Manifest> {
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
    let Some(recorded) = manifest.checksum.take() else {
        return Err(Error::corrupt(
            mpath,
            "no checksum: every manifest of this format version records the xxh3 of its \
             content, so its key was deleted (by hand?) and nothing in it can be trusted",
        ));
    };
    let actual = manifest.digest()?;
    if recorded != actual {
        return Err(Error::corrupt(
            mpath,
            format!(
                "checksum mismatch: xxh3 {actual}, the manifest says {recorded} (edited by hand?)"
            ),
        ));
    }
    if manifest.dim == 0 || manifest.shard_size == 0 {
        return Err(Error::corrupt(mpath, "dim and shard_size must be positive"));
    }
    if check_token_bits(manifest.token_bits).is_err() {
        return Err(Error::corrupt(
            mpath,
            format!("token_bits {} is neither 16 nor 32", manifest.token_bits),
        ));
    }
    Ok(manifest)
}

impl EmbeddingStore {
    /// Write `m` as the manifest, with its checksum, atomically (`files::replace`).
    pub(super) fn write_manifest(&self, m: &Manifest) -> Result<()> {
        let m = Manifest {
            checksum: Some(m.digest()?),
            ..m.clone()
        };
        let json = serde_json::to_vec_pretty(&m)
            .map_err(|e| Error::InvalidArgument(format!("cannot serialize manifest: {e}")))?;
        replace(&self.dir.join(MANIFEST), &[&json])?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::filled;
    use super::*;

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
        // Without its checksum, the same edit would pass: a manifest without one is corrupt.
        let mut v: serde_json::Value =
            serde_json::from_str(&m.replace("\"cosine\"", "\"l2\"")).unwrap();
        v.as_object_mut().unwrap().remove("checksum");
        std::fs::write(&mpath, serde_json::to_string(&v).unwrap()).unwrap();
        let err = EmbeddingStore::open(&dir).err().unwrap();
        assert!(matches!(err, Error::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains("no checksum"), "{err}");
        std::fs::write(&mpath, &m).unwrap();
        assert_eq!(EmbeddingStore::open(&dir).unwrap().meta(), "{\"b\":2}");
    }

    /// Edit the manifest in `dir` and give it the checksum of its new content, as someone who
    /// recomputes the xxh3 would.
    fn reseal(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
        let mpath = dir.join(MANIFEST);
        let mut v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&mpath).unwrap()).unwrap();
        v.as_object_mut().unwrap().remove("checksum");
        edit(&mut v);
        let mut m: Manifest = serde_json::from_value(v).unwrap();
        m.checksum = Some(m.digest().unwrap());
        std::fs::write(&mpath, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
    }

    #[test]
    fn a_manifest_resealed_after_an_edit_is_still_checked_for_sense() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("s");
        let o = super::super::StoreOptions {
            hnsw: Some(HnswParams::default()),
            ..super::super::fixtures::opts(3, DType::F32)
        };
        let mut store = EmbeddingStore::create(&dir, &o, "{}").unwrap();
        super::super::fixtures::fill(&mut store, 9, 1);
        drop(store);
        let saved = std::fs::read(dir.join(MANIFEST)).unwrap();
        type Edit = fn(&mut serde_json::Value);
        let cases: [(&str, Edit); 5] = [
            ("differs from the sum of shard counts", |v| {
                v["count"] = 11.into()
            }),
            ("no valid scale", |v| {
                v["shards"][0].as_object_mut().unwrap().remove("hnsw_scale");
            }),
            ("stranded key 7", |v| {
                v["shards"][0]["hnsw_stranded"] = vec![7].into()
            }),
            ("token_bits 8 is neither 16 nor 32", |v| {
                v["token_bits"] = 8.into()
            }),
            // the column holds u32 ids; a manifest that says 16 is refused by its header
            ("element size 4 in header, expected 2", |v| {
                v["token_bits"] = 16.into()
            }),
        ];
        for (want, edit) in cases {
            reseal(&dir, edit);
            let err = EmbeddingStore::open(&dir).err().unwrap();
            assert!(matches!(err, Error::Corrupt { .. }), "{err}");
            assert!(err.to_string().contains(want), "{want}: {err}");
            std::fs::write(dir.join(MANIFEST), &saved).unwrap();
        }
        reseal(&dir, |_| ());
        EmbeddingStore::open(&dir).unwrap().verify().unwrap();
    }
}
