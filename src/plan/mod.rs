//! `pg-ghost plan`: what PostgreSQL would do for each clause of the ALTER, which way pg-ghost
//! would make the change and why, and what each way costs. Read-only: the only objects it
//! creates are temporary tables of its own session, dropped before it ends.

pub(crate) mod clauses;
mod conversion;
mod estimate;
mod names;
mod probe;
mod report;
mod steps;

pub use clauses::{split, Clause};
pub use conversion::{ConversionPlan, KeyPlan, PartitionPlan, PlanConversion};
pub use estimate::{Cost, Rates, Sizes};
pub use probe::Observation;
pub use report::sql_lock as lock_mode_sql;
pub use steps::{Step, StepKind};

use crate::conn::ConnInfo;
use crate::error::{Context, Error, ErrorKind, Result};
use crate::sql::QualifiedName;

#[derive(Clone, Debug)]
pub struct PlanConfig {
    pub conn: ConnInfo,
    pub table: String,
    /// Empty only for a conversion given without `--alter`.
    pub alter: String,
    /// `--partition-by` with its partitions: a conversion into a partitioned table.
    pub conversion: Option<PlanConversion>,
    /// `--key`: the unique index `run --key` would use instead of the primary key.
    pub key: Option<String>,
    pub format: Format,
    /// `--check-data`: read the rows too, showing at most this many offending ones.
    pub check_data: Option<usize>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
}

/// The way pg-ghost makes the change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    /// Every clause in a ghost table copied and fed online, then swapped in.
    Ghost,
    /// No copy: catalog-only steps under a short lock, validations online.
    Direct,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct ClausePlan {
    pub statement: String,
    pub kind: String,
    /// In words: catalog only, scans the table, builds an index, rewrites the table.
    pub action: String,
    /// Observed on a clone of the table, or a rule (when the clause cannot run on a clone).
    pub source: &'static str,
    #[serde(flatten)]
    pub observed: Observation,
    pub can_fail_on: Option<&'static str>,
}

impl ClausePlan {
    /// PostgreSQL refused it on the clone, which has all it can meet: it would refuse it on
    /// the table too.
    fn refused_on_clone(&self) -> bool {
        self.source == REFUSED_ON_CLONE
    }
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct Plan {
    pub table: String,
    pub sizes: Sizes,
    pub rates: Rates,
    pub clauses: Vec<ClausePlan>,
    pub strategy: Strategy,
    pub why: String,
    pub chosen: Cost,
    pub plain_alter: Cost,
    /// What to run: a pg-ghost command, or the statements of the direct way.
    pub run: Vec<String>,
    /// The direct way's steps (empty for the ghost way).
    pub steps: Vec<Step>,
    /// With `--check-data`: `None` when the rows were not read, else what was found
    /// (`Ok` when every row passes, else the refusal `pg-ghost run` would give).
    pub data: Option<std::result::Result<(), String>>,
    /// What `pg-ghost run` would refuse before changing anything, for the way chosen here:
    /// the ghost way's missing key or logical WAL, a role that does not own the table, ...
    /// None when that way's checks pass.
    pub refused: Option<String>,
    /// With `--partition-by`: the conversion into a partitioned table.
    pub conversion: Option<ConversionPlan>,
}

pub async fn plan(cfg: &PlanConfig) -> Result<Plan> {
    let conn = cfg.conn.clone().resolve().await?;
    let mut client = conn.with_application_name("pg-ghost plan").connect().await?;
    // Nothing the plan does may wait long for a lock: it only reads the table.
    client.batch_execute("SET lock_timeout = '2s'; SET client_min_messages = warning").await?;
    let table = crate::inspect::resolve_table(&client, &cfg.table).await?;
    let (clauses, clause_plans) = match cfg.alter.trim().is_empty() {
        true => (Vec::new(), Vec::new()),
        false => analyse(&client, &table, &cfg.alter).await?,
    };
    let sizes = Sizes::read(&client, &table).await?;
    let oid: u32 = client.query_one("SELECT $1::text::regclass::oid", &[&table.sql()]).await?.try_get(0)?;
    let columns: Vec<String> = crate::inspect::columns(&client, oid).await?.into_iter().filter(|c| !c.generated).map(|c| c.name).collect();
    // The sample is written into the clone, which `observe` dropped: make it again.
    client
        .batch_execute(&format!("CREATE TEMP TABLE {} (LIKE {} INCLUDING ALL)", crate::sql::ident(clauses::CLONE), table.sql()))
        .await
        .context("making the clone for the sample")?;
    let rates = Rates::measure(&client, &table, &columns, &sizes).await?;
    client.batch_execute(&format!("DROP TABLE pg_temp.{}", crate::sql::ident(clauses::CLONE))).await?;

    let mut plan = match &cfg.conversion {
        None => decide(&table, &conn, &cfg.alter, sizes, rates, clause_plans, &clauses),
        Some(c) => decide_conversion(&table, &conn, &cfg.alter, c, sizes, rates, clause_plans),
    };
    if let Some(key) = &cfg.key {
        let flag = format!(" --key {}", crate::inspect::shell_quote(key));
        for command in &mut plan.run {
            if let Some(at) = command.rfind(" --execute") {
                command.insert_str(at, &flag);
            }
        }
    }
    match &cfg.conversion {
        None => plan.refused = would_refuse(&client, &table, cfg.key.as_deref(), plan.strategy).await?,
        Some(c) => {
            let (explained, refused) = conversion::explain(&mut client, &table, cfg.key.as_deref(), &cfg.alter, &c.conversion).await?;
            plan.conversion = Some(explained);
            plan.refused = refused;
        }
    }
    if let Some(limit) = cfg.check_data.filter(|_| !cfg.alter.trim().is_empty()) {
        plan.data = check_data(client, &conn, &table, cfg.key.as_deref(), &cfg.alter, limit).await?;
    }
    Ok(plan)
}

/// The checks `pg-ghost run` makes for `strategy` (read-only): the refusal it would give.
pub(super) async fn would_refuse(client: &tokio_postgres::Client, table: &QualifiedName, key: Option<&str>, strategy: Strategy) -> Result<Option<String>> {
    let refusal = |e: Error| match e.kind() {
        ErrorKind::Refused => Ok(Some(e.message().to_string())),
        _ => Err(e),
    };
    let described = match crate::inspect::describe(client, table, key).await {
        Ok(d) => d,
        Err(e) => return refusal(e),
    };
    let checked = match (strategy, described.keyed) {
        (Strategy::Direct, _) => crate::inspect::preflight_shared(client, &described.name, described.oid, &described.owner).await.map(|_| ()),
        (Strategy::Ghost, Err(no_key)) => Err(no_key),
        (Strategy::Ghost, Ok(info)) => {
            let names = crate::names::Names::for_table(&info.name, info.oid);
            crate::inspect::preflight(client, &info, &crate::inspect::PreflightOptions::new(&names, false)).await.map(|_| ())
        }
    };
    match checked {
        Ok(()) => Ok(None),
        Err(e) => refusal(e),
    }
}

/// The data checks of `pg-ghost run`, unthrottled (a plan is run by hand, and reads).
/// None when the rows cannot be read in chunks (no key: as `run`, which then leaves them to
/// the direct way's validation steps).
async fn check_data(
    mut client: tokio_postgres::Client,
    conn: &ConnInfo,
    table: &QualifiedName,
    key: Option<&str>,
    alter: &str,
    limit: usize,
) -> Result<Option<std::result::Result<(), String>>> {
    let info = match crate::inspect::describe(&client, table, key).await?.keyed {
        Ok(info) => info,
        Err(no_key) => {
            tracing::warn!(reason = %no_key.message(), "--check-data: the rows are not read (no key to read them by in chunks)");
            return Ok(None);
        }
    };
    let names = crate::names::Names::for_table(table, info.oid);
    let (_, trial) = crate::ghost::trial_with_dependents(&mut client, &info, &names, alter, None, &crate::ghost::LockWait::default()).await?;
    let limits = crate::datacheck::Limits {
        report: limit,
        chunk_size: 10_000,
        chunk_time: std::time::Duration::from_millis(500),
        nice_ratio: 0.0,
        log_every: std::time::Duration::from_secs(30),
    };
    let (_open, gate) = tokio::sync::watch::channel(crate::copy::GateState::Open);
    let original = crate::datacheck::Original::of(&info);
    Ok(Some(match crate::datacheck::run(conn, &original, &trial.data_checks.checks, &limits, gate).await? {
        None => Ok(()),
        Some(finding) => Err(crate::datacheck::refusal(&info.name, &info.key.columns, &finding, limit).to_string()),
    }))
}

/// Each clause, and what PostgreSQL does for it.
pub async fn analyse(client: &tokio_postgres::Client, table: &QualifiedName, alter: &str) -> Result<(Vec<Clause>, Vec<ClausePlan>)> {
    let clauses = split(alter, table)?;
    let mut observations = probe::observe(client, table, &clauses).await?;
    names::as_on_table(client, table, &clauses, &mut observations).await?;
    let mut plans = Vec::new();
    for (clause, observed) in clauses.iter().zip(observations) {
        let referenced = match (observed.observed, &clause.column) {
            (false, Some(name)) => referenced_by(client, table, name).await?,
            _ => None,
        };
        plans.push(clause_plan(clause, observed, referenced));
    }
    Ok((clauses, plans))
}

/// The direct way's steps, or the numbers of the clauses that rewrite the table (then
/// only the ghost way keeps the table available); a refusal with PostgreSQL's reason when a
/// clause on the table's own columns failed on the clone (it would fail on the table too).
pub async fn direct_steps(client: &tokio_postgres::Client, table: &QualifiedName, alter: &str) -> Result<std::result::Result<Vec<Step>, Vec<usize>>> {
    let (clauses, plans) = analyse(client, table, alter).await?;
    if let Some((i, p)) = plans.iter().enumerate().find(|(_, p)| p.refused_on_clone()) {
        return Err(Error::refused(format!(
            "PostgreSQL rejected the ALTER on a clone of the table, clause {} ({}): {}; nothing was changed",
            i + 1,
            p.statement,
            p.observed.error.as_deref().unwrap_or("refused")
        )));
    }
    let rewriting = rewriting(&plans);
    Ok(match rewriting.is_empty() {
        true => Ok(steps::direct(table, &plans, &clauses)),
        false => Err(rewriting),
    })
}

fn rewriting(plans: &[ClausePlan]) -> Vec<usize> {
    plans.iter().enumerate().filter(|(_, c)| c.observed.rewrites || c.observed.rebuilds_indexes).map(|(i, _)| i + 1).collect()
}

/// The table a foreign key of the table references, for a clause that names the key.
async fn referenced_by(client: &tokio_postgres::Client, table: &QualifiedName, constraint: &str) -> Result<Option<String>> {
    let row = client
        .query_opt(
            "SELECT confrelid::regclass::text FROM pg_constraint WHERE conrelid = $1::text::regclass AND conname = $2 AND contype = 'f'",
            &[&table.sql(), &constraint],
        )
        .await
        .context("reading the foreign key the clause names")?;
    Ok(row.map(|r| r.try_get(0)).transpose()?)
}

/// Clauses that touch only the table's own columns: the clone (`LIKE ... INCLUDING ALL`) has
/// all they can meet, so its refusal is PostgreSQL's answer for the table too.
const OWN_COLUMN_CLAUSES: [&str; 12] = [
    "AtAddColumn",
    "AtDropColumn",
    "AtAlterColumnType",
    "AtColumnDefault",
    "AtSetNotNull",
    "AtDropNotNull",
    "AtSetExpression",
    "AtDropExpression",
    "AtAddIdentity",
    "AtSetIdentity",
    "AtDropIdentity",
    "AtSetCompression",
];

const REFUSED_ON_CLONE: &str = "refused on a clone, which has all it can meet";

fn clause_plan(clause: &Clause, observed: Observation, referenced: Option<String>) -> ClausePlan {
    let refused = !observed.observed && OWN_COLUMN_CLAUSES.contains(&clause.kind.as_str());
    let source = match (observed.observed, refused) {
        (true, _) => "observed on a clone",
        (false, true) => REFUSED_ON_CLONE,
        (false, false) => "rule (the clause names something a clone has not)",
    };
    let mut observed = match observed.observed {
        true => observed,
        false => steps::rule_for(&clause.kind, observed.error.clone(), referenced),
    };
    // Never made directly: the direct way would try it on the table itself, after the clauses
    // before it. `run` refuses it up front ([`direct_steps`]); the plan shows the ghost way.
    observed.rewrites |= refused;
    let action = match refused {
        true => "refuses it (see below); `pg-ghost run` stops with the reason before changing anything".to_string(),
        false => action(&observed),
    };
    ClausePlan { statement: clause.statement.clone(), kind: clause.kind.clone(), action, source, can_fail_on: clause.can_fail.filter(|_| observed.rewrites || observed.scans || clause.kind != "AtAlterColumnType"), observed }
}

fn action(o: &Observation) -> String {
    let mut what = Vec::new();
    if o.rewrites {
        what.push("rewrites the table and its indexes");
    } else if o.builds_index {
        what.push("builds an index (reads the whole table)");
    } else if o.scans {
        what.push("scans the whole table");
    }
    if o.rebuilds_indexes && !o.rewrites {
        what.push("rebuilds indexes");
    }
    if what.is_empty() {
        "catalog only".to_string()
    } else {
        what.join(", ")
    }
}

fn decide(table: &QualifiedName, conn: &ConnInfo, alter: &str, sizes: Sizes, rates: Rates, clauses: Vec<ClausePlan>, details: &[Clause]) -> Plan {
    let rewriting = rewriting(&clauses);
    let scanning: Vec<usize> = clauses.iter().enumerate().filter(|(_, c)| c.observed.scans || c.observed.builds_index).map(|(i, _)| i + 1).collect();
    let copy = estimate::copy_seconds(&sizes, &rates, estimate::GHOST_SLOWDOWN);
    let rewrite = estimate::copy_seconds(&sizes, &rates, estimate::REWRITE_SLOWDOWN);
    let scan = estimate::scan_seconds(sizes.heap_bytes + sizes.toast_bytes, &rates) * scanning.len() as f64;
    // A new index: about 32 bytes an entry (tuple header, key, line pointer, fill factor).
    let new_index_bytes = clauses.iter().filter(|c| c.observed.builds_index).count() as i64 * sizes.rows * 32;
    let refused: Vec<usize> = clauses.iter().enumerate().filter(|(_, c)| c.refused_on_clone()).map(|(i, _)| i + 1).collect();
    let (strategy, why, chosen, plain_alter) = if !rewriting.is_empty() {
        let copy_cost = Cost { seconds: copy, wal_bytes: sizes.copy_bytes(), extra_disk_bytes: sizes.copy_bytes(), writes_blocked: "milliseconds, at the swap".into() };
        let plain = Cost { seconds: rewrite, wal_bytes: sizes.copy_bytes(), extra_disk_bytes: sizes.copy_bytes(), writes_blocked: "the whole time, reads too (ACCESS EXCLUSIVE)".into() };
        let why = match refused.is_empty() {
            true => format!(
                "clause {} rewrites the table: a plain ALTER TABLE would hold ACCESS EXCLUSIVE (no reads, no writes) for the whole rewrite",
                list(&rewriting)
            ),
            false => format!(
                "PostgreSQL refuses clause {} on a clone of the table: `pg-ghost run` stops with its reason before changing anything",
                list(&refused)
            ),
        };
        (
            Strategy::Ghost,
            why,
            copy_cost,
            plain,
        )
    } else {
        let blocked = match scanning.is_empty() {
            true => "milliseconds (each step under a short lock_timeout)".to_string(),
            false => "milliseconds; validations and index builds let writes go on".to_string(),
        };
        let why = match scanning.is_empty() {
            true => "no clause rewrites or reads the table: PostgreSQL changes only its catalog, in milliseconds once it has the lock; a copy would be hours of WAL for nothing".to_string(),
            false => format!(
                "no clause rewrites the table; clause {} reads it, which can be done online (NOT VALID then VALIDATE, CREATE INDEX CONCURRENTLY) without a copy",
                list(&scanning)
            ),
        };
        let plain_blocked = match scanning.is_empty() {
            true => "milliseconds once the lock is granted, but the waiting ALTER queues every query behind it".to_string(),
            false => "the whole scan (the ALTER holds its lock while it reads the table)".to_string(),
        };
        (
            Strategy::Direct,
            why,
            Cost { seconds: scan, wal_bytes: new_index_bytes, extra_disk_bytes: new_index_bytes, writes_blocked: blocked },
            Cost { seconds: scan, wal_bytes: new_index_bytes, extra_disk_bytes: new_index_bytes, writes_blocked: plain_blocked },
        )
    };
    let steps = match strategy {
        Strategy::Ghost => Vec::new(),
        Strategy::Direct => steps::direct(table, &clauses, details),
    };
    let flag = match strategy {
        Strategy::Ghost => "",
        Strategy::Direct => " --strategy direct",
    };
    let run = vec![format!(
        "pg-ghost run --conn {} --table {} --alter {}{flag} --execute",
        crate::inspect::shell_quote(&conn.redacted()),
        crate::inspect::shell_quote(&table.sql()),
        crate::inspect::shell_quote(alter.trim())
    )];
    Plan { table: table.to_string(), sizes, rates, clauses, strategy, why, chosen, plain_alter, run, steps, data: None, refused: None, conversion: None }
}

/// A conversion into a partitioned table: always a copy into a new (partitioned) table,
/// whatever the clauses do; the plain way to compare with is the same copy made offline.
fn decide_conversion(table: &QualifiedName, conn: &ConnInfo, alter: &str, c: &PlanConversion, sizes: Sizes, rates: Rates, clauses: Vec<ClausePlan>) -> Plan {
    let copy = estimate::copy_seconds(&sizes, &rates, estimate::GHOST_SLOWDOWN);
    let offline = estimate::copy_seconds(&sizes, &rates, estimate::REWRITE_SLOWDOWN);
    let chosen = Cost { seconds: copy, wal_bytes: sizes.copy_bytes(), extra_disk_bytes: sizes.copy_bytes(), writes_blocked: "milliseconds, at the swap".into() };
    let plain_alter = Cost {
        seconds: offline,
        wal_bytes: sizes.copy_bytes(),
        extra_disk_bytes: sizes.copy_bytes(),
        writes_blocked: "the whole time (no ALTER TABLE partitions a table: offline, it is CREATE TABLE ... PARTITION BY, INSERT ... SELECT and renames in one transaction)".into(),
    };
    let why = format!(
        "--partition-by converts {table} into a partitioned table, which pg-ghost does through a ghost table: PostgreSQL cannot make a table partitioned in place"
    );
    let mut command = format!("pg-ghost run --conn {} --table {}", crate::inspect::shell_quote(&conn.redacted()), crate::inspect::shell_quote(&table.sql()));
    for (flag, value) in &c.flags {
        command.push_str(&format!(" {flag} {}", crate::inspect::shell_quote(value)));
    }
    if !alter.trim().is_empty() {
        command.push_str(&format!(" --alter {}", crate::inspect::shell_quote(alter.trim())));
    }
    command.push_str(" --execute");
    Plan {
        table: table.to_string(),
        sizes,
        rates,
        clauses,
        strategy: Strategy::Ghost,
        why,
        chosen,
        plain_alter,
        run: vec![command],
        steps: Vec::new(),
        data: None,
        refused: None,
        conversion: None,
    }
}

fn list(numbers: &[usize]) -> String {
    numbers.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(", ")
}

/// The plan as the DBA reads it, or as JSON.
pub fn render(plan: &Plan, format: Format) -> Result<String> {
    match format {
        Format::Text => Ok(report::text(plan)),
        Format::Json => serde_json::to_string_pretty(plan).map_err(|e| crate::error::Error::internal(format!("cannot write the plan as JSON: {e}"))),
    }
}
