//! Applying streamed changes to the ghost: changed keys are collected and flushed in
//! batches by re-reading the original (see `flush`), kept away from copy chunks in flight
//! (`inflight`), by one loop with explicit priorities (`writer`).

pub mod changes;
pub mod flush;
pub mod pump;
pub mod inflight;
pub mod park;
pub mod writer;

pub use flush::{FlushSql, Key};
pub use inflight::InFlight;
pub use writer::{Acker, ApplyStats, StreamItem, Writer, WriterHandle};
