//! `vectors.bin`: the vectors of one shard, their norms, and for i8 their scales.
//!
//! Header (64 bytes, little-endian): magic `TTTNNVEC`, version u32, dtype code u32, dim u64,
//! count u64, xxh3 of everything after the header u64, 16 reserved bytes, xxh3 of bytes 0..56.
//! Then the data (`count × dim` elements of the dtype), then for i8 the per-vector f32 scales
//! (symmetric, `max|x| / 127`), then the f32 L2 norms of the dequantized vectors; each section
//! starts on a multiple of 64 bytes, so slices of the (page-aligned) memory map cast safely.
//! Norms are those of what is stored, not of the input, so a search's scores are the scores of
//! the stored vectors.
//!
//! Opening reads the header only and checks the file size against it; the payload's xxh3 is
//! checked once, before the first read (`shard.rs`).

use std::path::{Path, PathBuf};

use half::f16;
use half::slice::HalfFloatSliceExt;
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::files::write_new;
use crate::ragged::{align64, FileSum, Header, Mapped, FILE_VERSION, HEADER_LEN};
use crate::vectors::{DType, VectorData, VectorsRef};

const VEC_MAGIC: &[u8; 8] = b"TTTNNVEC";
/// Name of the vectors file in a shard directory.
pub(super) const VECTORS: &str = "vectors.bin";

/// Byte layout of a `vectors.bin` file.
#[derive(Clone, Copy, Debug)]
struct VecLayout {
    data_off: u64,
    data_len: u64,
    scales_off: u64,
    scales_len: u64,
    norms_off: u64,
    norms_len: u64,
    total: u64,
}

fn vec_layout(dtype: DType, dim: u64, count: u64) -> Option<VecLayout> {
    let n = count.checked_mul(dim)?;
    let data_off = HEADER_LEN as u64;
    let data_len = n.checked_mul(dtype.size() as u64)?;
    let data_end = align64(data_off.checked_add(data_len)?);
    let scales_len = if dtype == DType::I8 {
        count.checked_mul(4)?
    } else {
        0
    };
    let scales_off = data_end;
    let norms_off = align64(scales_off.checked_add(scales_len)?);
    let norms_len = count.checked_mul(4)?;
    Some(VecLayout {
        data_off,
        data_len,
        scales_off,
        scales_len,
        norms_off,
        norms_len,
        total: norms_off.checked_add(norms_len)?,
    })
}

/// Vectors encoded in the store dtype, in memory (before writing).
pub(super) enum Encoded<'a> {
    F32(&'a [f32]),
    F16(Vec<f16>),
    I8 { q: Vec<i8>, scales: Vec<f32> },
}

fn row_norm(row: impl Iterator<Item = f32>) -> f32 {
    row.map(|v| f64::from(v) * f64::from(v)).sum::<f64>().sqrt() as f32
}

/// Quantize `x` (`n × dim`, already validated finite) and compute the norms of what is stored.
pub(super) fn encode(dtype: DType, dim: usize, x: &[f32]) -> (Encoded<'_>, Vec<f32>) {
    match dtype {
        DType::F32 => {
            let norms = x
                .par_chunks(dim)
                .map(|r| row_norm(r.iter().copied()))
                .collect();
            (Encoded::F32(x), norms)
        }
        DType::F16 => {
            // Slice conversion uses F16C when the CPU has it (runtime detection).
            let mut h = vec![f16::ZERO; x.len()];
            h.par_chunks_mut(dim * 256)
                .zip(x.par_chunks(dim * 256))
                .for_each(|(o, i)| o.convert_from_f32_slice(i));
            let norms = h
                .par_chunks(dim)
                .map(|r| row_norm(r.iter().map(|v| v.to_f32())))
                .collect();
            (Encoded::F16(h), norms)
        }
        DType::I8 => {
            let n = x.len() / dim;
            let mut q = vec![0i8; x.len()];
            let mut scales = vec![0f32; n];
            let mut norms = vec![0f32; n];
            q.par_chunks_mut(dim)
                .zip(scales.par_iter_mut().zip(norms.par_iter_mut()))
                .zip(x.par_chunks(dim))
                .for_each(|((qr, (scale, norm)), r)| {
                    let amax = r.iter().fold(0f32, |m, v| m.max(v.abs()));
                    let s = amax / 127.0;
                    if s > 0.0 {
                        for (o, v) in qr.iter_mut().zip(r) {
                            *o = (v / s).round().clamp(-127.0, 127.0) as i8;
                        }
                    }
                    *scale = s;
                    *norm = row_norm(qr.iter().map(|&v| f32::from(v) * s));
                });
            (Encoded::I8 { q, scales }, norms)
        }
    }
}

impl Encoded<'_> {
    pub(super) fn view<'a>(&'a self, dim: usize, norms: &'a [f32]) -> VectorsRef<'a> {
        let data = match self {
            Encoded::F32(x) => VectorData::F32(x),
            Encoded::F16(h) => VectorData::F16(h),
            Encoded::I8 { q, scales } => VectorData::I8 { q, scales },
        };
        VectorsRef {
            dim,
            count: norms.len(),
            data,
            norms,
        }
    }

    fn data_bytes(&self) -> &[u8] {
        match self {
            Encoded::F32(x) => bytemuck::cast_slice(x),
            Encoded::F16(h) => bytemuck::cast_slice(h),
            Encoded::I8 { q, .. } => bytemuck::cast_slice(q),
        }
    }

    fn scales_bytes(&self) -> &[u8] {
        match self {
            Encoded::I8 { scales, .. } => bytemuck::cast_slice(scales),
            _ => &[],
        }
    }
}

/// Write a `vectors.bin` file; returns its sum and the payload xxh3 recorded in the header.
pub(super) fn write_vectors(
    path: &Path,
    dtype: DType,
    dim: usize,
    enc: &Encoded<'_>,
    norms: &[f32],
) -> Result<FileSum> {
    let count = norms.len() as u64;
    let lay = vec_layout(dtype, dim as u64, count)
        .ok_or_else(|| Error::Shape("store too large for this platform".into()))?;
    let zeros = [0u8; 64];
    let pad = |from: u64, to: u64| &zeros[..(to - from) as usize];
    let data = enc.data_bytes();
    let scales = enc.scales_bytes();
    let norms_b: &[u8] = bytemuck::cast_slice(norms);
    let sections: [&[u8]; 5] = [
        data,
        pad(lay.data_off + lay.data_len, lay.scales_off),
        scales,
        pad(lay.scales_off + lay.scales_len, lay.norms_off),
        norms_b,
    ];
    let mut payload = xxhash_rust::xxh3::Xxh3::new();
    for s in &sections {
        payload.update(s);
    }
    let header = Header {
        magic: *VEC_MAGIC,
        version: FILE_VERSION,
        tag: dtype.code(),
        a: dim as u64,
        b: count,
        c: payload.digest(),
        d: 0,
    };
    let h = header.encode();
    let mut all: Vec<&[u8]> = vec![&h];
    all.extend_from_slice(&sections);
    write_new(path, &all)
}

/// A memory-mapped `vectors.bin`.
pub(super) struct VecFile {
    pub(super) map: Mapped,
    pub(super) dtype: DType,
    pub(super) dim: usize,
    pub(super) count: usize,
    layout: VecLayout,
    pub(super) payload_xxh3: u64,
    pub(super) path: PathBuf,
}

impl VecFile {
    pub(super) fn open(path: &Path) -> Result<VecFile> {
        let (map, head) = Mapped::open_with_head(path, HEADER_LEN)?;
        let h = Header::decode(path, &head, VEC_MAGIC, "vectors")?;
        let dtype = DType::from_code(h.tag)
            .ok_or_else(|| Error::corrupt(path, format!("unknown dtype code {}", h.tag)))?;
        let layout = vec_layout(dtype, h.a, h.b)
            .ok_or_else(|| Error::corrupt(path, "dimension/count out of range"))?;
        let have = map.bytes().len() as u64;
        if have != layout.total {
            return Err(Error::corrupt(
                path,
                format!(
                    "truncated or oversized: {have} bytes, header says {}",
                    layout.total
                ),
            ));
        }
        let dim = usize::try_from(h.a).map_err(|_| Error::corrupt(path, "dim out of range"))?;
        let count = usize::try_from(h.b).map_err(|_| Error::corrupt(path, "count out of range"))?;
        Ok(VecFile {
            map,
            dtype,
            dim,
            count,
            layout,
            payload_xxh3: h.c,
            path: path.to_path_buf(),
        })
    }

    fn section(&self, off: u64, len: u64) -> &[u8] {
        // In bounds: the file size equals the layout total (checked at open).
        &self.map.bytes()[off as usize..(off + len) as usize]
    }

    pub(super) fn view(&self) -> Result<VectorsRef<'_>> {
        let l = &self.layout;
        let cast_err = |e: bytemuck::PodCastError| {
            Error::corrupt(&self.path, format!("misaligned section: {e}"))
        };
        let data_b = self.section(l.data_off, l.data_len);
        let data = match self.dtype {
            DType::F32 => VectorData::F32(bytemuck::try_cast_slice(data_b).map_err(cast_err)?),
            DType::F16 => VectorData::F16(bytemuck::try_cast_slice(data_b).map_err(cast_err)?),
            DType::I8 => VectorData::I8 {
                q: bytemuck::try_cast_slice(data_b).map_err(cast_err)?,
                scales: bytemuck::try_cast_slice(self.section(l.scales_off, l.scales_len))
                    .map_err(cast_err)?,
            },
        };
        Ok(VectorsRef {
            dim: self.dim,
            count: self.count,
            data,
            norms: bytemuck::try_cast_slice(self.section(l.norms_off, l.norms_len))
                .map_err(cast_err)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::{fill, opts};
    use super::super::EmbeddingStore;
    use crate::vectors::DType;

    #[test]
    fn roundtrip_every_dtype() {
        for (dtype, tol) in [
            (DType::F32, 0.0),
            (DType::F16, 1e-3),
            (DType::I8, 1.0 / 127.0),
        ] {
            let tmp = tempfile::tempdir().unwrap();
            let dir = tmp.path().join("s");
            let mut store = EmbeddingStore::create(&dir, &opts(5, dtype), "{\"a\": 1}").unwrap();
            let x = fill(&mut store, 17, 3);
            assert_eq!(store.shard_counts(), vec![7, 7, 3]);
            let store = EmbeddingStore::open(&dir).unwrap();
            store.verify().unwrap();
            assert_eq!(store.len(), 17);
            assert_eq!(store.meta(), "{\"a\":1}");
            let ids: Vec<i64> = (0..17).rev().collect();
            let got = store.get_vectors(&ids).unwrap();
            for (r, &id) in ids.iter().enumerate() {
                let want = &x[id as usize * 5..(id as usize + 1) * 5];
                let row = &got[r * 5..(r + 1) * 5];
                let amax = want.iter().fold(0f32, |m, v| m.max(v.abs()));
                for (a, b) in row.iter().zip(want) {
                    assert!(
                        (a - b).abs() <= tol * amax.max(1.0) + 1e-7,
                        "{dtype:?} {a} {b}"
                    );
                }
            }
            // Norms are those of the stored (dequantized) vectors.
            let mut row = vec![0f32; 5];
            for (start, v) in store.views().unwrap() {
                for i in 0..v.count {
                    v.row_f32(i, &mut row);
                    let n = row.iter().map(|a| a * a).sum::<f32>().sqrt();
                    assert!((n - v.norms[i]).abs() < 1e-5, "row {}", start as usize + i);
                }
            }
            assert_eq!(store.text(9).unwrap(), "doc 3/9 naïve 東京 🙂");
            assert_eq!(store.tokens(9).unwrap(), &(0..9).collect::<Vec<u32>>()[..]);
            assert_eq!(store.record(8).unwrap(), &[8u8, 8][..]);
            assert!(store.text(17).is_err());
        }
    }
}
