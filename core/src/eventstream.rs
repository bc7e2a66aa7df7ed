//! Incremental AWS EventStream decoding (being written).
