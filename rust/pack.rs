//! Neighbor token ids -> training windows, and neighbor de-duplication (the leakage guard).
//!
//! # Packing ([`pack_windows`])
//!
//! Hardt & Sun train one optimizer step per window: every neighbor is cut, from its own start,
//! into non-overlapping windows of `context_length` tokens (2500 tokens with context 1024 give
//! 1024, 1024, 452). Exactly:
//!
//! 1. **Pieces.** Document `d` of `n` tokens yields the pieces `tokens[k*L .. min((k+1)*L, n)]`
//!    for `k = 0, 1, ...` (`L = context_length`), in order; an empty document yields none. With
//!    `max_windows_per_doc = Some(N)` only the first `N` pieces are kept (the first `N*L`
//!    tokens). A piece is *full* when it has `L` tokens and *short* otherwise (a whole short
//!    document, or the tail of a long one).
//! 2. **Plain mode** (`pack_short = false`): every piece is one window, padded with `pad_id`.
//!    `eos_id` is ignored.
//! 3. **`pack_short = true`** (needs `eos_id`): pieces are laid out greedily, in input order,
//!    with one *open* window:
//!    * a full piece closes the open window (if any) and is emitted as its own window;
//!    * a short piece of `m` tokens is appended to the open window, after one `eos_id`
//!      separator, if it fits (`used + 1 + m <= L`); otherwise the open window is closed and the
//!      piece opens a new one. A short piece is therefore never split across windows.
//!    * The open window is closed at the end. EOS only goes *between* pieces (never first or
//!      last); its positions count in `lengths`.
//!
//! In both modes windows come out in input order (`doc_index` is non-decreasing), so "nearest
//! neighbor first" survives packing, and the real tokens of all windows, EOS separators removed,
//! are the (capped) documents concatenated in order. `doc_index[i]` is the document whose piece
//! starts window `i`. The cap selects the same tokens whether or not `pack_short` is on.
//!
//! # De-duplication ([`dedup_neighbors`])
//!
//! See the function's documentation: normalised exact hashes plus the *overlap coefficient* of
//! word 5-shingle sets, which catches both slightly edited copies and excerpts / supersets.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

use rayon::prelude::*;
use xxhash_rust::xxh3::xxh3_64;

use crate::error::{Error, Result};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PackOptions {
    /// Window length in tokens (the model's context, e.g. 1024).
    pub context_length: usize,
    /// Token written between documents when `pack_short` joins several into one window.
    pub eos_id: Option<u32>,
    /// Join documents (and tails) shorter than a window into shared windows, EOS-separated.
    pub pack_short: bool,
    /// Keep at most this many windows per document (the paper had no cap).
    pub max_windows_per_doc: Option<usize>,
    /// Value for unused positions of a short window (masked out by `lengths`).
    pub pad_id: u32,
}

impl PackOptions {
    /// Plain Hardt & Sun windows of `context_length` tokens, no cap, padded with 0.
    pub fn new(context_length: usize) -> Self {
        PackOptions {
            context_length,
            eos_id: None,
            pack_short: false,
            max_windows_per_doc: None,
            pad_id: 0,
        }
    }

    fn validate(&self) -> Result<()> {
        if self.context_length == 0 {
            return Err(Error::InvalidArgument(
                "context_length must be at least 1".into(),
            ));
        }
        if u32::try_from(self.context_length).is_err() {
            return Err(Error::InvalidArgument(format!(
                "context_length {} is larger than {}",
                self.context_length,
                u32::MAX
            )));
        }
        if self.pack_short && self.eos_id.is_none() {
            return Err(Error::InvalidArgument(
                "pack_short=True needs eos_id (the separator between packed documents)".into(),
            ));
        }
        if self.max_windows_per_doc == Some(0) {
            return Err(Error::InvalidArgument(
                "max_windows_per_doc must be at least 1 (or None for no cap)".into(),
            ));
        }
        Ok(())
    }
}

/// `n_windows` rows of `context_length` token ids (row-major, padded with `pad_id`), the number of
/// real tokens in each row, and the index (into the input) of the document each row starts in.
/// `T` is the element type of all three arrays: `u32` for [`Packed`], `i64` for numpy/torch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PackedAs<T> {
    pub n_windows: usize,
    pub context_length: usize,
    pub input_ids: Vec<T>,
    pub lengths: Vec<T>,
    pub doc_index: Vec<T>,
}

/// Windows with `u32` elements (token ids as stored).
pub type Packed = PackedAs<u32>;

/// Element types a packing can be written in directly (no second conversion pass).
pub trait PackElem: Copy + Send + Sync + From<u32> + 'static {}
impl PackElem for u32 {}
impl PackElem for u64 {}
impl PackElem for i64 {}

/// A contiguous run of one document's tokens.
#[derive(Clone, Copy, Debug)]
struct Piece {
    doc: u32,
    start: usize,
    len: usize,
}

/// Where each window's pieces are: `pieces[first..last]`, and its length with separators.
#[derive(Clone, Copy, Debug)]
struct WindowPlan {
    first: usize,
    last: usize,
    length: usize,
}

/// Cut documents into training windows; see the [module documentation](self) for the exact
/// rules. Errors (`InvalidArgument`) for `context_length == 0`, `pack_short` without `eos_id`,
/// `max_windows_per_doc == Some(0)`, or more than `u32::MAX` documents.
pub fn pack_windows(docs: &[&[u32]], opts: &PackOptions) -> Result<Packed> {
    pack_windows_as::<u32>(docs, opts)
}

/// [`pack_windows`] writing its output as `T` (e.g. `i64` for torch `input_ids`) in one pass.
pub fn pack_windows_as<T: PackElem>(docs: &[&[u32]], opts: &PackOptions) -> Result<PackedAs<T>> {
    opts.validate()?;
    if u32::try_from(docs.len()).is_err() {
        return Err(Error::InvalidArgument(format!(
            "too many documents ({}, at most {})",
            docs.len(),
            u32::MAX
        )));
    }
    let l = opts.context_length;
    let (pieces, plans) = plan(docs, opts);
    let n_windows = plans.len();

    let pad = T::from(opts.pad_id);
    let eos = T::from(opts.eos_id.unwrap_or(opts.pad_id));
    // The size comes from the caller's context_length: too large is an error, not an abort.
    let too_large = || {
        Error::InvalidArgument(format!(
            "{n_windows} windows of context_length {l} do not fit in memory"
        ))
    };
    let total = n_windows.checked_mul(l).ok_or_else(too_large)?;
    let mut input_ids = Vec::new();
    input_ids
        .try_reserve_exact(total)
        .map_err(|_| too_large())?;
    input_ids.resize(total, pad);
    let fill = |(row, w): (&mut [T], &WindowPlan)| {
        let mut pos = 0;
        for (k, p) in pieces[w.first..w.last].iter().enumerate() {
            if k > 0 {
                row[pos] = eos;
                pos += 1;
            }
            let src = &docs[p.doc as usize][p.start..p.start + p.len];
            for (dst, &t) in row[pos..pos + p.len].iter_mut().zip(src) {
                *dst = T::from(t);
            }
            pos += p.len;
        }
        debug_assert_eq!(pos, w.length);
    };
    // Sequential on purpose: the fill is a memory-bound copy whose cost is mostly first-touch
    // page faults of the output; rayon made it slower on a loaded 2-core machine (measured).
    input_ids.chunks_mut(l).zip(plans.iter()).for_each(fill);

    // Both fit in u32: lengths <= context_length <= u32::MAX, doc < docs.len() <= u32::MAX.
    let lengths = plans.iter().map(|w| T::from(w.length as u32)).collect();
    let doc_index = plans.iter().map(|w| T::from(pieces[w.first].doc)).collect();
    Ok(PackedAs {
        n_windows,
        context_length: l,
        input_ids,
        lengths,
        doc_index,
    })
}

/// The layout pass: which pieces go into which window (no token is touched).
fn plan(docs: &[&[u32]], opts: &PackOptions) -> (Vec<Piece>, Vec<WindowPlan>) {
    let l = opts.context_length;
    let cap = opts.max_windows_per_doc.unwrap_or(usize::MAX);
    let n_pieces: usize = docs.iter().map(|d| d.len().div_ceil(l).min(cap)).sum();
    let mut pieces = Vec::with_capacity(n_pieces);
    let mut plans: Vec<WindowPlan> = Vec::with_capacity(n_pieces);
    // The open window of `pack_short` mode is always the last plan when `open` is true.
    let mut open = false;
    for (d, doc) in docs.iter().enumerate() {
        let n_take = doc.len().div_ceil(l).min(cap);
        for k in 0..n_take {
            let start = k * l;
            let len = (doc.len() - start).min(l);
            let idx = pieces.len();
            pieces.push(Piece {
                doc: d as u32,
                start,
                len,
            });
            if opts.pack_short && len < l {
                if open {
                    if let Some(w) = plans.last_mut() {
                        if w.length + 1 + len <= l {
                            w.last = idx + 1;
                            w.length += 1 + len;
                            continue;
                        }
                    }
                }
                open = true;
            } else {
                open = false;
            }
            plans.push(WindowPlan {
                first: idx,
                last: idx + 1,
                length: len,
            });
        }
    }
    (pieces, plans)
}

// ---------------------------------------------------------------------------------------------
// De-duplication
// ---------------------------------------------------------------------------------------------

/// Above this many bytes of candidate text, signatures are computed in parallel.
const PARALLEL_DEDUP_BYTES: usize = 256 * 1024;

/// Words per shingle.
pub const SHINGLE_WORDS: usize = 5;

/// Why [`dedup_neighbors`] dropped a candidate (checked in this order).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// Nothing but whitespace.
    Empty,
    /// Same normalised text as the query.
    ExactDuplicateOfQuery,
    /// Similarity to the query >= threshold.
    NearDuplicateOfQuery,
    /// Same normalised text as an earlier kept candidate.
    ExactDuplicate,
    /// Similarity to an earlier kept candidate >= threshold.
    NearDuplicate,
}

impl DropReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Empty => "empty",
            DropReason::ExactDuplicateOfQuery => "exact-duplicate-of-query",
            DropReason::NearDuplicateOfQuery => "near-duplicate-of-query",
            DropReason::ExactDuplicate => "exact-duplicate",
            DropReason::NearDuplicate => "near-duplicate",
        }
    }
}

/// Result of [`dedup_neighbors`]: kept candidate indices and dropped ones with their reason, both
/// in increasing index order.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Dedup {
    pub kept: Vec<usize>,
    pub dropped: Vec<(usize, DropReason)>,
}

/// What a text is compared by: a hash of its normalised form, its word count, and two sorted,
/// de-duplicated hash sets (word 5-shingles, and single words for the short-text fallback).
#[derive(Clone, Debug)]
pub struct TextSignature {
    pub hash: u64,
    pub n_words: usize,
    shingles: Vec<u64>,
    words: Vec<u64>,
}

impl TextSignature {
    /// Normalise (Unicode lowercase, split on Unicode whitespace, rejoin with one space) and hash.
    pub fn new(text: &str) -> Self {
        let lower = text.to_lowercase();
        let word_hashes: Vec<u64> = lower
            .split_whitespace()
            .map(|w| xxh3_64(w.as_bytes()))
            .collect();
        // Hash of the normalised text " ".join(words), computed without building it.
        let mut norm = Vec::with_capacity(lower.len());
        for (i, w) in lower.split_whitespace().enumerate() {
            if i > 0 {
                norm.push(b' ');
            }
            norm.extend_from_slice(w.as_bytes());
        }
        let hash = xxh3_64(&norm);
        let n_words = word_hashes.len();
        let mut shingles: Vec<u64> = if n_words >= SHINGLE_WORDS {
            word_hashes
                .windows(SHINGLE_WORDS)
                .map(|s| xxh3_64(bytemuck::cast_slice::<u64, u8>(s)))
                .collect()
        } else {
            Vec::new()
        };
        shingles.sort_unstable();
        shingles.dedup();
        let mut words = word_hashes;
        words.sort_unstable();
        words.dedup();
        TextSignature {
            hash,
            n_words,
            shingles,
            words,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.n_words == 0
    }

    /// Overlap coefficient `|A ∩ B| / min(|A|, |B|)` of the word 5-shingle sets, or of the word
    /// sets when either text has fewer than 5 words; 0 when either text is empty.
    pub fn similarity(&self, other: &TextSignature) -> f64 {
        let (a, b) = if self.n_words < SHINGLE_WORDS || other.n_words < SHINGLE_WORDS {
            (&self.words, &other.words)
        } else {
            (&self.shingles, &other.shingles)
        };
        let denom = a.len().min(b.len());
        if denom == 0 {
            return 0.0;
        }
        sorted_intersection_len(a, b) as f64 / denom as f64
    }
}

fn sorted_intersection_len(a: &[u64], b: &[u64]) -> usize {
    // Small set against large set: binary search; similar sizes: merge.
    let (small, large) = if a.len() <= b.len() { (a, b) } else { (b, a) };
    if small.len() * 16 < large.len() {
        return small
            .iter()
            .filter(|x| large.binary_search(x).is_ok())
            .count();
    }
    let (mut i, mut j, mut n) = (0, 0, 0);
    while i < small.len() && j < large.len() {
        match small[i].cmp(&large[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                n += 1;
                i += 1;
                j += 1;
            }
        }
    }
    n
}

/// Leakage guard for retrieved neighbors. Candidates are visited in order; candidate `i` is
/// dropped, with the first reason that applies, when
///
/// 1. `"empty"`: it has no non-whitespace character;
/// 2. `"exact-duplicate-of-query"`: its normalised text equals the query's (normalisation:
///    Unicode lowercase, whitespace runs collapsed to one space, trimmed; compared by xxh3 64-bit
///    hash);
/// 3. `"near-duplicate-of-query"`: its similarity to the query is `>= threshold`;
/// 4. `"exact-duplicate"` / 5. `"near-duplicate"`: the same against any earlier **kept**
///    candidate (so a chain of drops never removes the text it duplicates).
///
/// Similarity is the *overlap coefficient* `|A ∩ B| / min(|A|, |B|)` of the sets of hashed word
/// 5-shingles (consecutive normalised words). Unlike Jaccard it is high both when one text is a
/// lightly edited copy of the other and when one is an excerpt of the other (a test document cut
/// from a longer neighbor, or a neighbor that is a passage of the test document), which are the
/// two ways a test document leaks into its neighbors. When either text has fewer than 5 words,
/// both are compared by their sets of words instead. An empty query matches nothing.
///
/// `threshold` must be in `(0, 1]`. Signatures are computed in parallel (rayon) for large inputs.
/// [`dedup_neighbors`] over UTF-8 bytes (what the bindings receive); invalid UTF-8 is an error
/// naming the query or the candidate.
pub fn dedup_neighbors_utf8(query: &[u8], candidates: &[&[u8]], threshold: f64) -> Result<Dedup> {
    let utf8 = |what: &dyn Fn() -> String, b| {
        std::str::from_utf8(b)
            .map_err(|e| Error::DType(format!("{} is not valid UTF-8: {e}", what())))
    };
    let q = utf8(&|| "query".into(), query)?;
    let texts = candidates
        .iter()
        .enumerate()
        .map(|(i, c)| utf8(&|| format!("candidate {i}"), c))
        .collect::<Result<Vec<&str>>>()?;
    dedup_neighbors(q, &texts, threshold)
}

pub fn dedup_neighbors(query: &str, candidates: &[&str], threshold: f64) -> Result<Dedup> {
    if !(threshold > 0.0 && threshold <= 1.0) {
        return Err(Error::InvalidArgument(format!(
            "threshold must be in (0, 1], got {threshold}"
        )));
    }
    let q = TextSignature::new(query);
    // Signatures cost ~10 ns per byte: below ~256 KB of text, waking rayon threads costs more
    // than it saves (measured on 2 cores).
    let total_bytes: usize = candidates.iter().map(|c| c.len()).sum();
    let sigs: Vec<TextSignature> = if total_bytes >= PARALLEL_DEDUP_BYTES {
        candidates
            .par_iter()
            .map(|c| TextSignature::new(c))
            .collect()
    } else {
        candidates.iter().map(|c| TextSignature::new(c)).collect()
    };
    // Query checks: one sorted-set intersection per candidate (cheap next to the signatures).
    let vs_query: Vec<Option<DropReason>> = sigs
        .iter()
        .map(|s| {
            if s.is_empty() {
                Some(DropReason::Empty)
            } else if q.is_empty() {
                None
            } else if s.hash == q.hash {
                Some(DropReason::ExactDuplicateOfQuery)
            } else if s.similarity(&q) >= threshold {
                Some(DropReason::NearDuplicateOfQuery)
            } else {
                None
            }
        })
        .collect();

    // Candidate-vs-kept checks depend on earlier decisions, so they run in order; an inverted
    // index (shingle -> kept texts holding it) counts intersections with every kept text in one
    // pass over the candidate's shingles, instead of one set merge per kept text.
    let mut out = Dedup::default();
    let mut kept_hashes: HashSet<u64> = HashSet::new();
    // Posting lists as linked lists in one arena (no allocation per shingle):
    // `index[h]` is the head node; a node is (kept slot, next node or NONE).
    const NONE: usize = usize::MAX;
    let total_shingles: usize = sigs.iter().map(|s| s.shingles.len()).sum();
    let mut index: HashMap<u64, usize, BuildHasherDefault<PreHashed>> =
        HashMap::with_capacity_and_hasher(total_shingles, Default::default());
    let mut nodes: Vec<(usize, usize)> = Vec::with_capacity(total_shingles);
    let mut kept_long: Vec<usize> = Vec::new(); // >= 5 words, in `index` (slot = position)
    let mut kept_short: Vec<usize> = Vec::new(); // < 5 words, compared directly
    let mut counts: Vec<u32> = Vec::new();
    for (i, (s, reason)) in sigs.iter().zip(vs_query).enumerate() {
        let reason = reason.or_else(|| {
            if kept_hashes.contains(&s.hash) {
                return Some(DropReason::ExactDuplicate);
            }
            let near = |&k: &usize| sigs[k].similarity(s) >= threshold;
            let dup = if s.n_words < SHINGLE_WORDS {
                kept_long.iter().chain(&kept_short).any(near)
            } else {
                counts.clear();
                counts.resize(kept_long.len(), 0);
                for h in &s.shingles {
                    let mut node = index.get(h).copied().unwrap_or(NONE);
                    while node != NONE {
                        let (slot, next) = nodes[node];
                        counts[slot] += 1;
                        node = next;
                    }
                }
                kept_short.iter().any(near)
                    || counts.iter().zip(&kept_long).any(|(&c, &k)| {
                        let denom = s.shingles.len().min(sigs[k].shingles.len());
                        denom > 0 && c as f64 / denom as f64 >= threshold
                    })
            };
            dup.then_some(DropReason::NearDuplicate)
        });
        match reason {
            Some(r) => out.dropped.push((i, r)),
            None => {
                kept_hashes.insert(s.hash);
                out.kept.push(i);
                if s.n_words < SHINGLE_WORDS {
                    kept_short.push(i);
                } else {
                    let slot = kept_long.len();
                    kept_long.push(i);
                    for &h in &s.shingles {
                        let head = index.entry(h).or_insert(NONE);
                        nodes.push((slot, *head));
                        *head = nodes.len() - 1;
                    }
                }
            }
        }
    }
    Ok(out)
}

/// Hasher for keys that already are xxh3 hashes: use them as they are.
#[derive(Default)]
struct PreHashed(u64);

impl Hasher for PreHashed {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn opts(l: usize) -> PackOptions {
        PackOptions::new(l)
    }

    /// Straightforward reference: per-token pushes, same rules.
    fn reference(docs: &[&[u32]], o: &PackOptions) -> Packed {
        let l = o.context_length;
        let mut rows: Vec<(Vec<u32>, u32)> = Vec::new();
        let mut open = false;
        for (d, doc) in docs.iter().enumerate() {
            for (taken, chunk) in doc.chunks(l).enumerate() {
                if o.max_windows_per_doc.is_some_and(|c| taken >= c) {
                    break;
                }
                if o.pack_short && chunk.len() < l {
                    if open {
                        let row = &mut rows.last_mut().unwrap().0;
                        if row.len() + 1 + chunk.len() <= l {
                            row.push(o.eos_id.unwrap());
                            row.extend_from_slice(chunk);
                            continue;
                        }
                    }
                    open = true;
                } else {
                    open = false;
                }
                rows.push((chunk.to_vec(), d as u32));
            }
        }
        let mut p = Packed {
            n_windows: rows.len(),
            context_length: l,
            input_ids: Vec::new(),
            lengths: Vec::new(),
            doc_index: Vec::new(),
        };
        for (row, d) in rows {
            p.lengths.push(row.len() as u32);
            p.doc_index.push(d);
            let n = row.len();
            p.input_ids.extend(row);
            p.input_ids.extend(std::iter::repeat(o.pad_id).take(l - n));
        }
        p
    }

    #[test]
    fn paper_example_2500_tokens_context_1024() {
        let doc: Vec<u32> = (0..2500).collect();
        let p = pack_windows(&[&doc], &opts(1024)).unwrap();
        assert_eq!(p.n_windows, 3);
        assert_eq!(p.lengths, vec![1024, 1024, 452]);
        assert_eq!(p.doc_index, vec![0, 0, 0]);
        assert_eq!(&p.input_ids[2048..2048 + 452], &doc[2048..]);
        assert!(p.input_ids[2048 + 452..].iter().all(|&t| t == 0));
    }

    #[test]
    fn empty_docs_and_cap() {
        let a: Vec<u32> = (1..=10).collect();
        let e: Vec<u32> = vec![];
        let mut o = opts(4);
        o.pad_id = 99;
        let p = pack_windows(&[&e, &a, &e], &o).unwrap();
        assert_eq!(p.lengths, vec![4, 4, 2]);
        assert_eq!(p.doc_index, vec![1, 1, 1]);
        assert_eq!(&p.input_ids[8..], &[9, 10, 99, 99]);
        o.max_windows_per_doc = Some(2);
        let p = pack_windows(&[&a], &o).unwrap();
        assert_eq!(p.lengths, vec![4, 4]);
        let p = pack_windows(&[], &o).unwrap();
        assert_eq!(p.n_windows, 0);
        assert!(p.input_ids.is_empty());
    }

    #[test]
    fn pack_short_greedy_in_order() {
        let d0: Vec<u32> = vec![1, 2];
        let d1: Vec<u32> = vec![3, 4, 5];
        let d2: Vec<u32> = vec![6, 7, 8, 9, 10, 11, 12]; // 5 + tail 2 with L=5
        let d3: Vec<u32> = vec![13];
        let o = PackOptions {
            context_length: 5,
            eos_id: Some(0),
            pack_short: true,
            max_windows_per_doc: None,
            pad_id: 100,
        };
        let p = pack_windows(&[&d0, &d1, &d2, &d3], &o).unwrap();
        // [1 2 EOS 3 4 ... no: 2+1+3 = 6 > 5] -> [1 2], [3 4 5], [6..10], [11 12 EOS 13]
        assert_eq!(p.lengths, vec![2, 3, 5, 4]);
        assert_eq!(p.doc_index, vec![0, 1, 2, 2]);
        assert_eq!(&p.input_ids[15..20], &[11, 12, 0, 13, 100]);
        let d4: Vec<u32> = vec![20];
        // Exactly full: 1 EOS 20 EOS 20 (5 tokens); the next one opens a new window.
        let d5: Vec<u32> = vec![1];
        let p = pack_windows(&[&d5, &d4, &d4, &d4], &o).unwrap();
        assert_eq!(p.input_ids, vec![1, 0, 20, 0, 20, 20, 100, 100, 100, 100]);
        assert_eq!(p.lengths, vec![5, 1]);
        assert_eq!(p.doc_index, vec![0, 3]);
        assert_eq!(p, reference(&[&d5, &d4, &d4, &d4], &o));
    }

    #[test]
    fn invalid_arguments() {
        let d: Vec<u32> = vec![1];
        assert!(matches!(
            pack_windows(&[&d], &opts(0)),
            Err(Error::InvalidArgument(_))
        ));
        let mut o = opts(4);
        o.pack_short = true;
        let err = pack_windows(&[&d], &o).unwrap_err();
        assert!(err.to_string().contains("eos_id"), "{err}");
        let mut o = opts(4);
        o.max_windows_per_doc = Some(0);
        assert!(pack_windows(&[&d], &o).is_err());
    }

    #[test]
    fn random_against_reference() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for _ in 0..500 {
            let n_docs = rng.gen_range(0..12);
            let l = rng.gen_range(1..20);
            let docs: Vec<Vec<u32>> = (0..n_docs)
                .map(|_| {
                    let n = rng.gen_range(0..3 * l + 2);
                    (0..n).map(|_| rng.gen_range(1..1000)).collect()
                })
                .collect();
            let refs: Vec<&[u32]> = docs.iter().map(|d| d.as_slice()).collect();
            let o = PackOptions {
                context_length: l,
                eos_id: Some(0),
                pack_short: rng.gen_bool(0.5),
                max_windows_per_doc: if rng.gen_bool(0.3) {
                    Some(rng.gen_range(1..4))
                } else {
                    None
                },
                pad_id: rng.gen_range(0..3),
            };
            let got = pack_windows(&refs, &o).unwrap();
            assert_eq!(got, reference(&refs, &o), "{o:?}");
            let wide = pack_windows_as::<i64>(&refs, &o).unwrap();
            let widened: Vec<i64> = got.input_ids.iter().map(|&t| t as i64).collect();
            assert_eq!(wide.input_ids, widened);
        }
    }

    #[test]
    fn many_windows_match_reference() {
        let docs: Vec<Vec<u32>> = (0..300u32)
            .map(|i| (0..(i * 37 % 9000)).collect())
            .collect();
        let refs: Vec<&[u32]> = docs.iter().map(|d| d.as_slice()).collect();
        let mut o = opts(1024);
        o.pack_short = true;
        o.eos_id = Some(7);
        assert_eq!(pack_windows(&refs, &o).unwrap(), reference(&refs, &o));
    }

    fn words(n: usize, seed: u64) -> Vec<String> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        (0..n)
            .map(|_| format!("w{}", rng.gen_range(0..100_000)))
            .collect()
    }

    #[test]
    fn dedup_reasons() {
        let base = words(200, 1).join(" ");
        let mut edited = words(200, 1);
        for i in (0..200).step_by(100) {
            edited[i] = "CHANGED".into(); // 2 edits: ~95% of shingles kept
        }
        let edited = edited.join(" ");
        let excerpt = words(200, 1)[50..150].join(" ");
        let unrelated = words(200, 2).join(" ");
        let spaced = format!("  {}\n", base.to_uppercase().replace(' ', " \t "));
        let cands = [
            spaced.as_str(),
            "",
            " \n ",
            edited.as_str(),
            excerpt.as_str(),
            unrelated.as_str(),
            unrelated.as_str(),
            "Short Text",
            "short   text",
        ];
        let r = dedup_neighbors(&base, &cands, 0.9).unwrap();
        assert_eq!(r.kept, vec![5, 7]);
        let reasons: Vec<(usize, &str)> = r.dropped.iter().map(|&(i, d)| (i, d.as_str())).collect();
        assert_eq!(
            reasons,
            vec![
                (0, "exact-duplicate-of-query"),
                (1, "empty"),
                (2, "empty"),
                (3, "near-duplicate-of-query"),
                (4, "near-duplicate-of-query"),
                (6, "exact-duplicate"),
                (8, "exact-duplicate"),
            ]
        );
        // Near duplicate of an earlier kept candidate (query unrelated).
        let r = dedup_neighbors(&unrelated, &[&base, &edited], 0.9).unwrap();
        assert_eq!(r.kept, vec![0]);
        assert_eq!(r.dropped, vec![(1, DropReason::NearDuplicate)]);
        // Empty query: only candidate-candidate checks.
        let r = dedup_neighbors("", &[&base, &base], 0.9).unwrap();
        assert_eq!(r.kept, vec![0]);
        assert!(dedup_neighbors("x", &[], 0.0).is_err());
        assert!(dedup_neighbors("x", &[], f64::NAN).is_err());
        assert!(dedup_neighbors("x", &[], 1.5).is_err());
    }

    /// Pairwise reference for the candidate-vs-kept checks (no inverted index).
    fn naive_dedup(query: &str, cands: &[&str], t: f64) -> Dedup {
        let q = TextSignature::new(query);
        let sigs: Vec<TextSignature> = cands.iter().map(|c| TextSignature::new(c)).collect();
        let mut out = Dedup::default();
        for (i, s) in sigs.iter().enumerate() {
            let r = if s.is_empty() {
                Some(DropReason::Empty)
            } else if !q.is_empty() && s.hash == q.hash {
                Some(DropReason::ExactDuplicateOfQuery)
            } else if !q.is_empty() && s.similarity(&q) >= t {
                Some(DropReason::NearDuplicateOfQuery)
            } else if out.kept.iter().any(|&k| sigs[k].hash == s.hash) {
                Some(DropReason::ExactDuplicate)
            } else if out.kept.iter().any(|&k| sigs[k].similarity(s) >= t) {
                Some(DropReason::NearDuplicate)
            } else {
                None
            };
            match r {
                Some(r) => out.dropped.push((i, r)),
                None => out.kept.push(i),
            }
        }
        out
    }

    #[test]
    fn dedup_random_against_pairwise() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        for _ in 0..300 {
            let text = |rng: &mut rand::rngs::StdRng| -> String {
                let n = [0, 2, 4, 5, 8, 30][rng.gen_range(0..6)];
                (0..n)
                    .map(|_| format!("v{}", rng.gen_range(0..12)))
                    .collect::<Vec<_>>()
                    .join(" ")
            };
            let q = text(&mut rng);
            let cands: Vec<String> = (0..rng.gen_range(0..15)).map(|_| text(&mut rng)).collect();
            let refs: Vec<&str> = cands.iter().map(|c| c.as_str()).collect();
            let t = [0.3, 0.6, 0.9, 1.0][rng.gen_range(0..4)];
            assert_eq!(
                dedup_neighbors(&q, &refs, t).unwrap(),
                naive_dedup(&q, &refs, t)
            );
        }
    }

    #[test]
    fn similarity_values() {
        let a = TextSignature::new("a b c d e f");
        let b = TextSignature::new("A  b c d e\nf g h");
        // a's 2 shingles are both in b.
        assert_eq!(a.similarity(&b), 1.0);
        let c = TextSignature::new("x y");
        let d = TextSignature::new("x z w v u");
        assert_eq!(c.similarity(&d), 0.5);
        assert_eq!(TextSignature::new("").similarity(&d), 0.0);
        // Unicode lowercase with final sigma, as Python's str.lower().
        assert_eq!(
            TextSignature::new("ΣΑΣ").hash,
            TextSignature::new("σας").hash
        );
    }
}
