//! Ingestion: webhook sources (Grist, the DiagPV hub) turned into normalized events.
//!
//! Parsing, normalization, diffs and signature checks are pure functions, free of I/O,
//! so they can be unit-tested and fuzzed:
//! - [`grist`]: Grist webhook bodies, column mapping, `intervention` events;
//! - [`diagpv`]: DiagPV hub module updates, last write wins, `module` events;
//! - [`record`]: stored record state and the add/update diff;
//! - [`topics`]: per-source topic templates;
//! - [`signature`]: Standard Webhooks verification;
//! - [`replay`]: recently accepted Standard Webhooks message IDs (replays refused);
//! - [`error`]: payload errors naming the row and field.
//!
//! [`pipeline`] runs a request through the store (`crate::store`): load the known
//! states, diff, commit the events with the new states. The HTTP handlers are in
//! `http::hooks`.

pub mod diagpv;
pub mod error;
pub mod grist;
pub mod pipeline;
pub mod record;
pub mod replay;
pub mod signature;
pub mod topics;

pub use error::InputError;
pub use pipeline::{check_sources, IngestError, Ingestor, Source, Summary};
