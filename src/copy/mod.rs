//! Copying the original's rows into the ghost in keyset chunks, by one or more workers on
//! disjoint ranges (a partitioned table's partitions each on its own), with a chunk size that
//! adapts to a target time per chunk.

pub mod chunker;
mod copier;
mod partitions;
mod sizing;
mod watermark;

pub use chunker::{Bound, Chunker, Cursor, Part, Range};
pub use copier::{copy_table, CopyJob, CopyProgress, Gate, GateState};
pub use partitions::walks as partition_walks;
pub use sizing::next_chunk_size;
pub use watermark::Watermark;
