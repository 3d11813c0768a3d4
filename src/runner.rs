//! Placeholder so the binary compiles; the engine's runner replaces this file.

use crate::config::{CleanupConfig, Config};
use crate::error::{Error, Result};

/// How a successful run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The swap committed.
    CutOver,
    /// Without `--execute`: everything but the swap checked out and was cleaned up.
    DryRunComplete,
}

pub async fn run(_config: Config) -> Result<Outcome> {
    Err(Error::internal("not wired yet"))
}

pub async fn cleanup(_config: CleanupConfig) -> Result<()> {
    Err(Error::internal("not wired yet"))
}
