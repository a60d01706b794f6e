//! Flat files of variable-length records with u64 offsets. (Owned by the store helper.)
