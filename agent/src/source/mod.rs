//! Ingest: where points come from.
//!
//! Each source is a task that parses what it receives into [`crate::point::Batch`]es and
//! hands them to the store, waiting when the store is behind. Bad input is
//! counted per source and reason, logged at most once per 10 s, never fatal.

pub mod bench;
pub mod guard;
pub mod lp;
pub mod modbus;
pub mod mqtt;
pub mod parse;
pub mod relay;
pub mod serial;
pub mod sparkplug;
pub mod topic;
