//! `--resume`: what a run that died left behind, and whether it can be continued.
//!
//! A run is continued only when everything it relied on is as it left it: the same ALTER,
//! the same table (OID and columns), its ghost (OID and columns), its slot (not in use) and
//! its publication. Anything else is refused with the reason, before anything is written.

use crate::alter;
use crate::checkpoint::{self, Saved};
use crate::config::Config;
use crate::copy::Bound;
use crate::error::{Error, ErrorKind, Result};
use crate::ghost::Ghost;
use crate::inspect::shell_quote;
use crate::names::Names;
use crate::replication::slot;
use crate::schema::TableInfo;
use crate::sql::{ident, QualifiedName};
use std::time::{Duration, Instant};
use tokio_postgres::Client;

/// How long a resume waits for the walsender of a killed run to notice and release the slot.
const SLOT_RELEASE_WAIT: Duration = Duration::from_secs(15);

/// What the earlier run left.
pub enum Found {
    /// The migration can go on from its checkpoint.
    Continue(Resumed),
    /// The cut-over had committed; only the cleanup was left undone. The names are those of
    /// the earlier run (its slot and publication carry the original's OID).
    SwapCommitted { names: Names, run_id: Option<String> },
}

impl Found {
    /// The earlier run's row in the history of runs.
    pub fn run_id(&self) -> Option<String> {
        match self {
            Found::Continue(r) => r.run_id.clone(),
            Found::SwapCommitted { run_id, .. } => run_id.clone(),
        }
    }
}

pub struct Resumed {
    pub ghost: Ghost,
    /// The copy restarts after this key; None: from the start.
    pub copy_after: Option<Bound>,
    /// Partitions copied one by one restart after their own watermarks.
    pub copy_after_parts: std::collections::BTreeMap<String, Bound>,
    pub copy_done: bool,
    pub run_id: Option<String>,
}

pub async fn load(client: &Client, cfg: &Config, info: &TableInfo) -> Result<Found> {
    let names = Names::for_table(&info.name, info.oid);
    let table = shell_quote(&info.name.to_string());
    let Some(saved) = checkpoint::read(client, &names.changelog).await? else {
        return Err(Error::refused(format!(
            "nothing to resume: there is no changelog table {} of an earlier run on {}; start without --resume",
            names.changelog, info.name
        )));
    };
    let Some(plan) = saved.plan.clone() else {
        return Err(Error::refused(format!(
            "the earlier run on {} stopped while preparing, before it recorded its plan (state {}); there is nothing to continue: run `pg-ghost cleanup --table {table}` and start again",
            info.name,
            saved.state.as_deref().unwrap_or("unknown")
        )));
    };
    if plan.table_oid != info.oid {
        if plan.ghost.oid == info.oid {
            return Ok(Found::SwapCommitted { names: Names::for_table(&info.name, plan.table_oid), run_id: saved.run_id });
        }
        return Err(Error::refused(format!(
            "{} is not the table the earlier run worked on (OID {} then, {} now): it was dropped or replaced; run `pg-ghost cleanup --table {table}`",
            info.name, plan.table_oid, info.oid
        )));
    }
    let alter_now = alter::canonical(&cfg.alter)?;
    if alter_now != plan.alter {
        return Err(Error::refused(format!(
            "--alter differs from the earlier run's: it ran `{}`, this run asks for `{}`; resume with the same ALTER, or run `pg-ghost cleanup --table {table}` and start again",
            plan.alter, alter_now
        )));
    }
    check_conversion(cfg.conversion.as_ref(), &plan.ghost, info, &table)?;
    if let (Some(c), Some(tree)) = (&cfg.conversion, &plan.ghost.partitions) {
        check_bounds(client, c, tree, info, &table).await?;
    }
    if checkpoint::shape(client, info.oid).await? != plan.table_shape {
        return Err(Error::refused(format!(
            "the columns of {} changed since the earlier run started; its ghost no longer fits: run `pg-ghost cleanup --table {table}` and start again",
            info.name
        )));
    }
    check_ghost(client, &names.ghost, &plan, &table).await?;
    check_stream(client, &names, &table).await?;
    report(client, &names, &saved).await;
    Ok(Found::Continue(Resumed {
        ghost: plan.ghost,
        copy_after: saved.copy_watermark.clone(),
        copy_after_parts: saved.part_watermarks.clone(),
        copy_done: saved.copy_done(),
        run_id: saved.run_id.clone(),
    }))
}

/// A conversion into a partitioned table resumes with the same `--partition-by` and the same
/// partitions (by name; their bounds are the ghost's), and a run without one resumes none.
fn check_conversion(now: Option<&crate::ghost::Conversion>, ghost: &crate::ghost::Ghost, info: &TableInfo, table: &str) -> Result<()> {
    let then = ghost.partitions.as_ref().filter(|t| t.converted).map(|t| (t.partition_by.clone(), t.partitions.iter().map(|p| p.name.clone()).collect::<Vec<_>>()));
    let now = now.map(|c| (c.partition_by.clone(), c.partitions.iter().map(|p| p.final_name(&info.name)).collect::<Vec<_>>()));
    if then == now {
        return Ok(());
    }
    let describe = |c: &Option<(String, Vec<QualifiedName>)>| match c {
        None => "no conversion".to_string(),
        Some((by, parts)) => format!("--partition-by {by} into {}", parts.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(", ")),
    };
    Err(Error::refused(format!(
        "the conversion differs from the earlier run's: it made {}, this run asks for {}; resume with the same --partition-by and partitions, or run `pg-ghost cleanup --table {table}` and start again",
        describe(&then),
        describe(&now)
    )))
}

/// The same partitions must have the same bounds: each partition the earlier run made on the
/// ghost against what this run's statements make (both as PostgreSQL prints them now).
async fn check_bounds(client: &Client, c: &crate::ghost::Conversion, tree: &crate::ghost::partitions::PartitionTree, info: &TableInfo, table: &str) -> Result<()> {
    let then = crate::ghost::ghost_bounds(client, tree).await?;
    let now = crate::ghost::statement_bounds(client, info, c).await?;
    let mut differ = Vec::new();
    for ((name, was), (_, asked)) in then.iter().zip(&now) {
        match was {
            None => differ.push(format!("partition {name} of the earlier run's ghost is gone")),
            Some(was) if was != asked => differ.push(format!("partition {name} was made {was}, this run asks for {asked}")),
            Some(_) => {}
        }
    }
    if differ.is_empty() {
        return Ok(());
    }
    Err(Error::refused(format!(
        "the conversion differs from the earlier run's: {}; resume with the same partitions, or run `pg-ghost cleanup --table {table}` and start again",
        differ.join("; ")
    )))
}

async fn check_ghost(client: &Client, ghost: &QualifiedName, plan: &checkpoint::Plan, table: &str) -> Result<()> {
    let oid: Option<u32> = client.query_one("SELECT to_regclass($1)::oid", &[&ghost.sql()]).await?.try_get(0)?;
    match oid {
        None => Err(Error::refused(format!(
            "the ghost table {ghost} of the earlier run is gone; run `pg-ghost cleanup --table {table}` and start again"
        ))),
        Some(oid) if oid != plan.ghost.oid => Err(Error::refused(format!(
            "{ghost} is not the ghost table the earlier run created (OID {} then, {oid} now); run `pg-ghost cleanup --table {table}` and start again",
            plan.ghost.oid
        ))),
        Some(oid) if checkpoint::shape(client, oid).await? != plan.ghost_shape => Err(Error::refused(format!(
            "the columns of the ghost table {ghost} changed since the earlier run created it; run `pg-ghost cleanup --table {table}` and start again"
        ))),
        Some(_) => Ok(()),
    }
}

/// The slot must exist (it holds every change the ghost may lack) and be free; a killed
/// run's walsender lets go of it a moment after the process died.
async fn check_stream(client: &Client, names: &Names, table: &str) -> Result<()> {
    let started = Instant::now();
    loop {
        let Some(info) = slot::slot_info(client, &names.slot).await? else {
            return Err(Error::refused(format!(
                "the replication slot {} of the earlier run is gone, and with it the changes made since its checkpoint; run `pg-ghost cleanup --table {table}` and start again",
                ident(&names.slot)
            )));
        };
        match info.active_pid {
            None => break,
            Some(pid) if started.elapsed() > SLOT_RELEASE_WAIT => {
                return Err(Error::new(ErrorKind::Busy, format!(
                    "the replication slot {} is in use by walsender pid {pid}: is the earlier run still running? Stop it before resuming",
                    ident(&names.slot)
                )))
            }
            Some(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    if !slot::publication_exists(client, &names.publication).await? {
        return Err(Error::refused(format!(
            "the publication {} of the earlier run is gone; run `pg-ghost cleanup --table {table}` and start again",
            ident(&names.publication)
        )));
    }
    Ok(())
}

async fn report(client: &Client, names: &Names, saved: &Saved) {
    let confirmed = slot::confirmed_flush_lsn(client, &names.slot).await.ok().flatten();
    tracing::info!(
        state = saved.state.as_deref().unwrap_or("unknown"),
        copy = if saved.copy_done() { "complete".to_string() } else {
            match (&saved.copy_watermark, saved.part_watermarks.len()) {
                (_, n) if n > 0 => format!("continues after the watermarks of {n} partitions"),
                (Some(b), _) => format!("continues after key ({})", b.join(", ")),
                (None, _) => "starts over".into(),
            }
        },
        applied_lsn = saved.applied_lsn.as_deref().unwrap_or("none"),
        slot_confirmed_lsn = %confirmed.map(|l| l.to_string()).unwrap_or_else(|| "none".into()),
        "resuming the earlier run"
    );
}
