//! The `flotilla` CLI internals (filled in below).
