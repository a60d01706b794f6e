//! Flat files of variable-length records with u64 offsets, plus the small file toolkit the store
//! shares (64-byte checksummed headers, memory maps, hashing; writing files is `files.rs`).
//!
//! A ragged column is two files:
//! * `NAME.bin`: the elements of every record back to back (u8 for text and records, u16 or u32
//!   for token ids, little-endian), no header, so it can be memory-mapped and cast as is;
//! * `NAME.off`: a 64-byte header (magic `TTTNNOFF`, version, element size, record count, element
//!   total, xxh3 of the offsets, xxh3 of the data file, header xxh3) then `count + 1` u64 element
//!   offsets starting at 0. Record `i` is `data[off[i]..off[i + 1]]`. Byte offsets (not character
//!   offsets) make random access right for any UTF-8 text.

use std::borrow::Cow;
use std::fs::File;
use std::io::Read;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use bytemuck::Pod;
use memmap2::Mmap;
use xxhash_rust::xxh3::{xxh3_64, Xxh3};

use crate::error::{Error, Result};
use crate::files::write_new;

/// Size of every header, and the alignment of every payload section.
pub const HEADER_LEN: usize = 64;
/// Format version of the binary files (vectors and offsets) this build writes and reads.
pub const FILE_VERSION: u32 = 1;
const OFF_MAGIC: &[u8; 8] = b"TTTNNOFF";

/// Round up to a multiple of 64 bytes.
pub(crate) fn align64(x: u64) -> u64 {
    x.div_ceil(64) * 64
}

/// Size and whole-file xxh3 of a written file (what the manifest records).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FileSum {
    pub bytes: u64,
    #[serde(with = "hex_u64")]
    pub xxh3: u64,
}

/// u64 checksums as 16 hex digits in JSON (JSON numbers lose precision above 2^53 in many readers).
mod hex_u64 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{v:016x}"))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        let s = String::deserialize(d)?;
        u64::from_str_radix(&s, 16).map_err(serde::de::Error::custom)
    }
}

/// The common 64-byte header: magic, version, a tag, four u64 fields, and the xxh3 of bytes 0..56.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Header {
    pub magic: [u8; 8],
    pub version: u32,
    pub tag: u32,
    pub a: u64,
    pub b: u64,
    pub c: u64,
    pub d: u64,
}

impl Header {
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[0..8].copy_from_slice(&self.magic);
        h[8..12].copy_from_slice(&self.version.to_le_bytes());
        h[12..16].copy_from_slice(&self.tag.to_le_bytes());
        h[16..24].copy_from_slice(&self.a.to_le_bytes());
        h[24..32].copy_from_slice(&self.b.to_le_bytes());
        h[32..40].copy_from_slice(&self.c.to_le_bytes());
        h[40..48].copy_from_slice(&self.d.to_le_bytes());
        let sum = xxh3_64(&h[0..56]);
        h[56..64].copy_from_slice(&sum.to_le_bytes());
        h
    }

    /// Parse and check magic, version (before the checksum, so a newer layout is reported as a
    /// version problem, not as corruption) and header checksum.
    pub fn decode(path: &Path, bytes: &[u8], magic: &[u8; 8], what: &str) -> Result<Header> {
        if bytes.len() < HEADER_LEN {
            return Err(Error::corrupt(
                path,
                format!(
                    "truncated: {} bytes, shorter than the {HEADER_LEN}-byte header",
                    bytes.len()
                ),
            ));
        }
        if &bytes[0..8] != magic {
            return Err(Error::corrupt(
                path,
                format!("bad magic number, not a tttnn {what} file"),
            ));
        }
        let u32_at =
            |o: usize| u32::from_le_bytes([bytes[o], bytes[o + 1], bytes[o + 2], bytes[o + 3]]);
        let u64_at = |o: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&bytes[o..o + 8]);
            u64::from_le_bytes(b)
        };
        let version = u32_at(8);
        if version != FILE_VERSION {
            return Err(Error::Version {
                path: path.to_path_buf(),
                found: version,
                supported: FILE_VERSION,
            });
        }
        if xxh3_64(&bytes[0..56]) != u64_at(56) {
            return Err(Error::corrupt(path, "header checksum mismatch"));
        }
        Ok(Header {
            magic: *magic,
            version,
            tag: u32_at(12),
            a: u64_at(16),
            b: u64_at(24),
            c: u64_at(32),
            d: u64_at(40),
        })
    }
}

/// A read-only memory map of a whole file (an empty file maps to an empty slice).
///
/// Sealed store files are never modified in place (the store is append-only and writes new files
/// under temporary names), which is what makes holding these maps sound.
pub(crate) struct Mapped {
    map: Option<Mmap>,
}

impl Mapped {
    pub fn open(path: &Path) -> Result<Mapped> {
        Ok(Self::open_with_head(path, 0)?.0)
    }

    /// Map the file and also return its first `head` bytes (fewer if the file is shorter), read
    /// with a plain read: a header read through the map would fault in, and read ahead, a much
    /// larger range of a cold file.
    pub fn open_with_head(path: &Path, head: usize) -> Result<(Mapped, Vec<u8>)> {
        let mut file = File::open(path).map_err(|e| Error::io(path, e))?;
        let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        let mut buf = vec![0u8; head.min(usize::try_from(len).unwrap_or(usize::MAX))];
        file.read_exact(&mut buf).map_err(|e| Error::io(path, e))?;
        Ok((Self::map(path, &file, len)?, buf))
    }

    fn map(path: &Path, file: &File, len: u64) -> Result<Mapped> {
        if len == 0 {
            return Ok(Mapped { map: None });
        }
        // SAFETY: see the type documentation; the file is immutable once sealed.
        let map = unsafe { Mmap::map(file) }.map_err(|e| Error::io(path, e))?;
        Ok(Mapped { map: Some(map) })
    }

    pub fn bytes(&self) -> &[u8] {
        self.map.as_deref().unwrap_or(&[])
    }
}

/// Size of a file, with its path in the error.
/// A check made once per process, its outcome (an error message) remembered.
pub(crate) type CheckedOnce = OnceLock<std::result::Result<(), String>>;

/// Once per process, remembered in `cell`: `bytes` hash (xxh3) to `want`, the value that
/// `source` records for them. A mismatch (or no recorded value) is a corrupt-file error naming
/// `path`, now and at every later call.
pub(crate) fn check_sum_once(
    cell: &CheckedOnce,
    path: &Path,
    bytes: &[u8],
    want: Option<u64>,
    source: &str,
) -> Result<()> {
    cell.get_or_init(|| {
        let got = xxh3_64(bytes);
        match want {
            Some(w) if w == got => Ok(()),
            Some(w) => Err(format!(
                "checksum mismatch: the data hashes to xxh3 {got:016x}, {source} says {w:016x}"
            )),
            None => Err(format!("{source} records no checksum")),
        }
    })
    .clone()
    .map_err(|msg| Error::corrupt(path, msg))
}

pub(crate) fn file_len(path: &Path) -> Result<u64> {
    std::fs::metadata(path)
        .map(|m| m.len())
        .map_err(|e| Error::io(path, e))
}

/// Stream a file once: its size, the xxh3 of the whole file and the xxh3 of everything after the
/// first `skip` bytes (a header). Reads through a buffer, so it does not grow resident memory.
pub(crate) fn hash_file(path: &Path, skip: u64) -> Result<(u64, u64, u64)> {
    let mut file = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut whole = Xxh3::new();
    let mut tail = Xxh3::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut pos = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        let chunk = &buf[..n];
        whole.update(chunk);
        let start = skip.saturating_sub(pos).min(n as u64) as usize;
        tail.update(&chunk[start..]);
        pos += n as u64;
    }
    Ok((pos, whole.digest(), tail.digest()))
}

/// Element types of ragged files: `u8` (text, records), `u16` and `u32` (token ids).
pub trait RaggedElem: Pod {}
impl RaggedElem for u8 {}
impl RaggedElem for u16 {}
impl RaggedElem for u32 {}

/// Write records to `data_path` and their offsets to `off_path`, two new files (see
/// [`write_new`]), both fsynced.
/// Returns the (data, offsets) file sums.
pub fn write_ragged<T: RaggedElem>(
    data_path: &Path,
    off_path: &Path,
    items: &[&[T]],
) -> Result<(FileSum, FileSum)> {
    let mut offsets = Vec::with_capacity(items.len() + 1);
    let mut total = 0u64;
    offsets.push(0u64);
    for it in items {
        total += it.len() as u64;
        offsets.push(total);
    }
    let sections: Vec<&[u8]> = items.iter().map(|it| bytemuck::cast_slice(it)).collect();
    let data = write_new(data_path, &sections)?;
    let off_bytes: &[u8] = bytemuck::cast_slice(&offsets);
    let header = Header {
        magic: *OFF_MAGIC,
        version: FILE_VERSION,
        tag: std::mem::size_of::<T>() as u32,
        a: items.len() as u64,
        b: total,
        c: xxh3_64(off_bytes),
        d: data.xxh3,
    };
    let off = write_new(off_path, &[&header.encode(), off_bytes])?;
    Ok((data, off))
}

/// A memory-mapped ragged column: random access to record `i` without reading the others.
pub struct Ragged<T: RaggedElem> {
    data: Mapped,
    offsets: Mapped,
    count: usize,
    total: u64,
    offsets_xxh3: u64,
    data_xxh3: u64,
    data_path: PathBuf,
    off_path: PathBuf,
    /// The outcome of [`Ragged::check_offsets`], once per process (a corrupt-file message).
    offsets_ok: OnceLock<std::result::Result<(), String>>,
    /// The outcome of [`Ragged::check_data`], once per process (a corrupt-file message).
    data_ok: CheckedOnce,
    _elem: PhantomData<T>,
}

impl<T: RaggedElem> Ragged<T> {
    /// Map both files and check the offsets header and both file sizes (reads no records).
    pub fn open(data_path: &Path, off_path: &Path) -> Result<Self> {
        let (offsets, head) = Mapped::open_with_head(off_path, HEADER_LEN)?;
        let h = Header::decode(off_path, &head, OFF_MAGIC, "offsets")?;
        let esize = std::mem::size_of::<T>() as u64;
        if u64::from(h.tag) != esize {
            return Err(Error::corrupt(
                off_path,
                format!("element size {} in header, expected {esize}", h.tag),
            ));
        }
        let want_off =
            h.a.checked_add(1)
                .and_then(|n| n.checked_mul(8))
                .and_then(|n| n.checked_add(HEADER_LEN as u64))
                .ok_or_else(|| Error::corrupt(off_path, "record count out of range"))?;
        let have_off = offsets.bytes().len() as u64;
        if have_off != want_off {
            return Err(Error::corrupt(
                off_path,
                format!("truncated or oversized: {have_off} bytes, header says {want_off}"),
            ));
        }
        let data = Mapped::open(data_path)?;
        let want_data =
            h.b.checked_mul(esize)
                .ok_or_else(|| Error::corrupt(off_path, "element total out of range"))?;
        let have_data = data.bytes().len() as u64;
        if have_data != want_data {
            return Err(Error::corrupt(
                data_path,
                format!(
                    "truncated or oversized: {have_data} bytes, offsets header says {want_data}"
                ),
            ));
        }
        let count = usize::try_from(h.a)
            .map_err(|_| Error::corrupt(off_path, "record count out of range"))?;
        Ok(Ragged {
            data,
            offsets,
            count,
            total: h.b,
            offsets_xxh3: h.c,
            data_xxh3: h.d,
            data_path: data_path.to_path_buf(),
            off_path: off_path.to_path_buf(),
            offsets_ok: OnceLock::new(),
            data_ok: OnceLock::new(),
            _elem: PhantomData,
        })
    }

    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// xxh3 of the data file as recorded in the offsets header.
    pub fn data_xxh3(&self) -> u64 {
        self.data_xxh3
    }

    /// xxh3 of the offsets array (the offsets file after its header).
    pub fn offsets_xxh3(&self) -> u64 {
        self.offsets_xxh3
    }

    fn offsets(&self) -> Result<&[u64]> {
        bytemuck::try_cast_slice(&self.offsets.bytes()[HEADER_LEN..])
            .map_err(|e| Error::corrupt(&self.off_path, format!("misaligned offsets: {e}")))
    }

    /// All offsets: their xxh3 is the header's, they start at 0, never decrease and end at the
    /// element total. Once per process, at the first access (8 bytes per record, not done at
    /// open, which must stay constant time): an offset moved by a few bytes but still in order
    /// would otherwise shift every record after it without an error.
    pub fn check_offsets(&self) -> Result<()> {
        self.offsets_ok
            .get_or_init(|| {
                let off = self.offsets().map_err(|e| e.to_string())?;
                if xxh3_64(bytemuck::cast_slice(off)) != self.offsets_xxh3 {
                    return Err("offsets checksum differs from the header".into());
                }
                let ordered = off.first() == Some(&0)
                    && off.windows(2).all(|w| w[0] <= w[1])
                    && off.last() == Some(&self.total);
                if !ordered {
                    return Err(format!(
                        "offsets are not increasing from 0 to the element total {}",
                        self.total
                    ));
                }
                Ok(())
            })
            .clone()
            .map_err(|msg| Error::corrupt(&self.off_path, msg))
    }

    /// The xxh3 of the data file equals the one the offsets header records (itself checked
    /// against the manifest at open). Once per process, at the first access: a changed byte of
    /// a record would otherwise be returned without an error.
    pub fn check_data(&self) -> Result<()> {
        let want = Some(self.data_xxh3);
        check_sum_once(
            &self.data_ok,
            &self.data_path,
            self.data.bytes(),
            want,
            "the offsets header",
        )
    }

    /// Record `i`, borrowed from the memory map. The offsets and the data's checksum are checked
    /// at the first access ([`Ragged::check_offsets`], [`Ragged::check_data`]), and the bounds
    /// of each record at every access: a corrupt offset gives an error, never an out-of-bounds
    /// read or a shifted record.
    pub fn get(&self, i: usize) -> Result<&[T]> {
        if i >= self.count {
            return Err(Error::InvalidArgument(format!(
                "record {i} out of range (0..{})",
                self.count
            )));
        }
        self.check_offsets()?;
        self.check_data()?;
        let off = self.offsets()?;
        let (lo, hi) = (off[i], off[i + 1]);
        if lo > hi || hi > self.total {
            return Err(Error::corrupt(
                &self.off_path,
                format!(
                    "bad offsets for record {i}: {lo}..{hi} (total {})",
                    self.total
                ),
            ));
        }
        if lo == hi {
            return Ok(&[]);
        }
        let data: &[T] = bytemuck::try_cast_slice(self.data.bytes())
            .map_err(|e| Error::corrupt(&self.data_path, format!("misaligned data: {e}")))?;
        // lo <= hi <= total == data.len(), checked above and at open.
        Ok(&data[lo as usize..hi as usize])
    }
}

/// A column of token ids, stored as u16 or u32 (a store's `token_bits`) and read as u32.
pub enum TokenColumn {
    U16(Ragged<u16>),
    U32(Ragged<u32>),
}

impl TokenColumn {
    /// Record `i` as u32 ids: borrowed from the map when stored as u32, widened from u16.
    pub fn get(&self, i: usize) -> Result<Cow<'_, [u32]>> {
        Ok(match self {
            TokenColumn::U16(r) => Cow::Owned(r.get(i)?.iter().map(|&t| u32::from(t)).collect()),
            TokenColumn::U32(r) => Cow::Borrowed(r.get(i)?),
        })
    }

    /// xxh3 of the offsets array ([`Ragged::offsets_xxh3`]).
    pub fn offsets_xxh3(&self) -> u64 {
        match self {
            TokenColumn::U16(r) => r.offsets_xxh3(),
            TokenColumn::U32(r) => r.offsets_xxh3(),
        }
    }

    /// [`Ragged::check_offsets`].
    pub fn check_offsets(&self) -> Result<()> {
        match self {
            TokenColumn::U16(r) => r.check_offsets(),
            TokenColumn::U32(r) => r.check_offsets(),
        }
    }
}

/// Token id lists narrowed to u16, for a store of 16-bit ids; an id above 65,535 is an error
/// naming its list and position.
pub fn narrow_tokens(items: &[&[u32]]) -> Result<Vec<Vec<u16>>> {
    items
        .iter()
        .enumerate()
        .map(|(i, ids)| {
            ids.iter()
                .enumerate()
                .map(|(j, &t)| {
                    u16::try_from(t).map_err(|_| {
                        Error::InvalidArgument(format!(
                            "token id {t} (tokens {i}, position {j}) does not fit this store's \
                             16-bit token ids (at most 65535): create it with token_bits=32"
                        ))
                    })
                })
                .collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_text(dir: &Path, texts: &[&str]) -> (PathBuf, PathBuf) {
        let d = dir.join("text.bin");
        let o = dir.join("text.off");
        let items: Vec<&[u8]> = texts.iter().map(|t| t.as_bytes()).collect();
        write_ragged(&d, &o, &items).unwrap();
        (d, o)
    }

    #[test]
    fn text_roundtrip_multibyte() {
        let tmp = tempfile::tempdir().unwrap();
        let texts = ["naïve 東京 🙂", "", "plain ascii", "é"];
        let (d, o) = write_text(tmp.path(), &texts);
        let r = Ragged::<u8>::open(&d, &o).unwrap();
        assert_eq!(r.len(), 4);
        for (i, t) in texts.iter().enumerate() {
            assert_eq!(std::str::from_utf8(r.get(i).unwrap()).unwrap(), *t);
        }
        assert!(r.get(4).is_err());
    }

    #[test]
    fn tokens_roundtrip_and_all_empty() {
        let tmp = tempfile::tempdir().unwrap();
        let toks: Vec<Vec<u32>> = vec![vec![1, 2, 3], vec![], vec![u32::MAX, 0]];
        let items: Vec<&[u32]> = toks.iter().map(|t| t.as_slice()).collect();
        let (d, o) = (tmp.path().join("t.bin"), tmp.path().join("t.off"));
        let (ds, _) = write_ragged(&d, &o, &items).unwrap();
        assert_eq!(ds.bytes, 20);
        let r = Ragged::<u32>::open(&d, &o).unwrap();
        for (i, t) in toks.iter().enumerate() {
            assert_eq!(r.get(i).unwrap(), t.as_slice());
        }
        // Zero-length data file.
        let empty: Vec<&[u32]> = vec![&[], &[]];
        let (d, o) = (tmp.path().join("e.bin"), tmp.path().join("e.off"));
        write_ragged(&d, &o, &empty).unwrap();
        let r = Ragged::<u32>::open(&d, &o).unwrap();
        assert_eq!(r.get(1).unwrap(), &[] as &[u32]);
        // Wrong element type is detected.
        assert!(matches!(
            Ragged::<u8>::open(&d, &o),
            Err(Error::Corrupt { .. })
        ));
    }

    #[test]
    fn truncated_and_bad_version() {
        let tmp = tempfile::tempdir().unwrap();
        let (d, o) = write_text(tmp.path(), &["abc", "defg"]);
        let bytes = std::fs::read(&d).unwrap();
        std::fs::write(&d, &bytes[..5]).unwrap();
        assert!(matches!(
            Ragged::<u8>::open(&d, &o),
            Err(Error::Corrupt { .. })
        ));
        std::fs::write(&d, &bytes).unwrap();
        let mut off = std::fs::read(&o).unwrap();
        off[8] = 7;
        std::fs::write(&o, &off).unwrap();
        assert!(matches!(
            Ragged::<u8>::open(&d, &o),
            Err(Error::Version { found: 7, .. })
        ));
        off[8] = 1;
        off[20] ^= 1; // a header field: header checksum fails
        std::fs::write(&o, &off).unwrap();
        assert!(matches!(
            Ragged::<u8>::open(&d, &o),
            Err(Error::Corrupt { .. })
        ));
    }

    #[test]
    fn hash_file_matches_write() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("f");
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let sum = write_new(&p, &[&data[..100], &data[100..]]).unwrap();
        let (n, whole, tail) = hash_file(&p, 64).unwrap();
        assert_eq!(n, sum.bytes);
        assert_eq!(whole, sum.xxh3);
        assert_eq!(whole, xxh3_64(&data));
        assert_eq!(tail, xxh3_64(&data[64..]));
    }
}
