//! Append-only, sharded, memory-mapped embedding store. (Owned by the store helper.)
