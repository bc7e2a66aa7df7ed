//! Price lookups over the generated litellm table (being written).
