//! Applying streamed changes to the ghost: changed keys are collected and flushed in
//! batches by re-reading the original (see `flush`), guarded against the copy race
//! (`race`), by one loop with explicit priorities (`writer`).

pub mod changes;
pub mod flush;
pub mod pump;
pub mod race;
pub mod writer;

pub use flush::{FlushSql, Key};
pub use race::RaceGuard;
pub use writer::{Acker, ApplyStats, StreamItem, Writer, WriterHandle};
