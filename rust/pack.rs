//! Neighbor token ids -> training windows, and neighbor de-duplication.
//!
//! CONTRACT (owned by the pack helper; relied on by `store` and the bindings):

use crate::error::Result;

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

/// `n_windows` rows of `context_length` token ids (row-major, padded with `pad_id`), the number of
/// real tokens in each row, and the index (into the input) of the document each row starts in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Packed {
    pub n_windows: usize,
    pub context_length: usize,
    pub input_ids: Vec<u32>,
    pub lengths: Vec<u32>,
    pub doc_index: Vec<u32>,
}

pub fn pack_windows(docs: &[&[u32]], opts: &PackOptions) -> Result<Packed> {
    let _ = (docs, opts);
    todo!("pack::pack_windows")
}
