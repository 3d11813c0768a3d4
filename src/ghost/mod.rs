//! The ghost table: created empty in the original's image, the ALTER applied to it, every
//! index but the key's set aside to be built after the copy.
//!
//! Invariants: the ghost always has a unique index on the (mapped) key, so copy and apply
//! can use `ON CONFLICT (key)` (on the key and the partition key's columns for a table
//! converted into a partitioned one, which can have no unique index on the key alone: see
//! [`convert`] and [`Mapping::conflict_target`]); the original is only read; everything is created in one
//! transaction, so a failing ALTER leaves nothing behind.

pub mod autovacuum;
mod build_session;
mod conversion;
pub mod convert;
mod create;
mod locks;
mod mapping;
mod partition_own;
pub mod partitions;
pub mod statistics;

pub(crate) use build_session::BuildSession;
pub(crate) use create::grant_statements;
pub use conversion::{count_unrouted, ghost_bounds, statement_bounds, ConversionFindings, StandIn, Unrouted};
pub use create::{build_key_index, create, create_with_conversion, has_key_index, explain_conversion, trial_with_conversion, rebuild_deferred, rebuild_deferred_beside, rebuild_deferred_waiting, temp_name, trial, trial_with_dependents, Deferred, Ghost, Trial};
pub use convert::Conversion;
pub use locks::LockWait;
pub(crate) use locks::again as retry_after_lock_timeout;
pub use mapping::{CastBack, Mapping, Reverse};
