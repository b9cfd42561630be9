//! relais: a real-time relay. Webhooks from Grist and the DiagPV hub become normalized
//! events, published on a bus and streamed to JWT-authenticated Server-Sent-Events
//! subscribers with the Mercure protocol; urgent items go to a Matrix room.
//!
//! The modules follow the path of an event:
//! - [`ingest`]: webhook sources turned into events (pure parsing and normalization);
//! - [`store`]: where events and record states are kept (memory, disk, or Redis for
//!   several instances), behind one seam;
//! - [`hub`]: topics, history and fan-out to subscribers;
//! - [`alerts`]: Matrix / Tchap notices when a record enters an alert state;
//! - [`http`]: SSE subscribe, publish, webhooks, auth and operations endpoints;
//! - [`auth`]: JWT verification and minting;
//! - [`config`]: the TOML file and environment overrides;
//! - [`server`] and [`telemetry`]: running it all.

#![warn(missing_docs)]

pub mod alerts;
pub mod auth;
pub mod config;
pub mod http;
pub mod hub;
pub mod ingest;
pub mod server;
pub mod store;
pub mod telemetry;
