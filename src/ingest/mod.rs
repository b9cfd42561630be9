//! Ingestion: webhook sources (Grist, the DiagPV hub) turned into normalized events.
//!
//! Parsing, normalization and signature checks are pure functions, free of I/O, so they
//! can be unit-tested and fuzzed; the HTTP handlers in `http::hooks` call them.

pub mod signature;
