//! Usage extraction from responses (being written).
