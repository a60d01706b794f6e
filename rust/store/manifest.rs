//! `manifest.json`: what a store holds, and the only record of which shards are sealed.
//!
//! Fields: format `"tttnn-store"`, version, dim, dtype, metric, shard_size, HNSW parameters or
//! null, which per-document columns exist (`has_text`, `has_tokens`, `has_records`), the total
//! count, the user metadata (a JSON object) and the shards in id order, each with its directory
//! (`shards/NNNNN`), its first global id (`start`, the sum of the counts before it), its count, the
//! size and xxh3 of every file, and for a shard with a graph the scale of its i8 codes and the
//! rows no walk of the graph reaches. A shard not listed here does not exist for a reader.
//!
//! The manifest is never edited in place: a new one is written to `manifest.json.tmp`, fsynced
//! and renamed over the old one (the directory fsynced), so a reader sees the old or the new
//! list, never half of one. It carries the xxh3 of its own content (`checksum`), so a hand edit
//! of, say, `metric` is a corrupt store rather than a different one.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::EmbeddingStore;
use crate::error::{Error, Result};
use crate::hnsw::HnswParams;
use crate::ragged::{fsync_dir, write_hashed, FileSum};
use crate::vectors::{DType, Metric};

/// Value of `format` in `manifest.json`.
pub const MANIFEST_FORMAT: &str = "tttnn-store";
/// Version of `manifest.json` this build writes and reads.
pub const MANIFEST_VERSION: u32 = 1;
/// Name of the manifest file in a store directory.
pub(super) const MANIFEST: &str = "manifest.json";

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
    pub(super) has_records: bool,
    pub(super) count: u64,
    pub(super) meta: serde_json::Value,
    pub(super) shards: Vec<ShardEntry>,
    /// xxh3 of the manifest serialised without this field (compact JSON, fields in this order),
    /// as 16 hex digits: a hand edit of `metric` or `hnsw_scale` is a corrupt manifest, not a
    /// different store. Manifests written before it have none and are not checked.
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

pub(super) fn shard_dir_name(id: u32) -> String {
    format!("shards/{id:05}")
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

/// Read and check `manifest.json`: format, version, fields, and its checksum when it has one.
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
    if let Some(recorded) = manifest.checksum.take() {
        let actual = manifest.digest()?;
        if recorded != actual {
            return Err(Error::corrupt(
                mpath,
                format!("checksum mismatch: xxh3 {actual}, the manifest says {recorded} (edited by hand?)"),
            ));
        }
    }
    if manifest.dim == 0 || manifest.shard_size == 0 {
        return Err(Error::corrupt(mpath, "dim and shard_size must be positive"));
    }
    Ok(manifest)
}

impl EmbeddingStore {
    /// Write `m` as the manifest: `manifest.json.tmp`, fsync, rename, fsync the directory.
    pub(super) fn write_manifest(&self, m: &Manifest) -> Result<()> {
        let tmp = self.dir.join("manifest.json.tmp");
        let m = Manifest {
            checksum: Some(m.digest()?),
            ..m.clone()
        };
        let json = serde_json::to_vec_pretty(&m)
            .map_err(|e| Error::InvalidArgument(format!("cannot serialize manifest: {e}")))?;
        write_hashed(&tmp, &[&json])?;
        let dst = self.dir.join(MANIFEST);
        std::fs::rename(&tmp, &dst).map_err(|e| Error::io(&dst, e))?;
        fsync_dir(&self.dir)
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
        // Manifests written before the checksum open as they are.
        let mut v: serde_json::Value = serde_json::from_str(&m).unwrap();
        v.as_object_mut().unwrap().remove("checksum");
        std::fs::write(&mpath, serde_json::to_string(&v).unwrap()).unwrap();
        assert_eq!(EmbeddingStore::open(&dir).unwrap().meta(), "{\"b\":2}");
    }
}
