//! `pg-ghost migrate`: a directory of versioned SQL files applied in version order, each
//! statement the safest way ([`statements`]), recorded in `pgghost.migrations` ([`table`]).
//!
//! Invariants:
//! - An applied file never changes: a checksum that differs from the recorded one stops
//!   everything before anything runs, with both values.
//! - A failed file is recorded as failed and the next `migrate` resumes it at the statement
//!   that failed; the statements done before it are not run again (and must be unchanged).
//! - `--phase P` applies pending files up to the first one of a later phase, so a contract
//!   file never runs with the expand files by accident. A file without a phase header runs
//!   with any phase.
//! - `--plan` and `--status` change nothing (they do not even create the table).

pub mod files;
mod run;
pub mod show;
pub mod statements;
pub mod table;

pub use run::{migrate, MigrateConfig, Mode, NOTHING_TO_APPLY};
