//! What `pg-ghost plan` says of a conversion into a partitioned table (`--partition-by`): the
//! way (a copy into a new partitioned table), the partitions and their bounds, whether the
//! keys include the partition key, and the rows no partition would take. Found as `pg-ghost
//! run` finds them, in the order it checks them: its preflight, the trial ghost built in a
//! transaction that is rolled back, then one read of the table for the rows no partition
//! takes. Nothing is left on the server.

use crate::error::{Error, ErrorKind, Result};
use crate::ghost::{Conversion, ConversionFindings, Unrouted};
use crate::sql::QualifiedName;
use std::fmt::Write;
use tokio_postgres::Client;

/// `--partition-by` and its partitions as `plan` got them.
#[derive(Clone, Debug)]
pub struct PlanConversion {
    pub conversion: Conversion,
    /// The flags as given (`--partition-by`, `--partitions` or `--partitions-auto`), repeated
    /// in the `pg-ghost run` command the plan prints.
    pub flags: Vec<(String, String)>,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct ConversionPlan {
    /// `RANGE ("created_at")`
    pub partition_by: String,
    /// How pg-ghost makes it, in words.
    pub method: String,
    pub partitions: Vec<PartitionPlan>,
    pub partition_count: usize,
    pub default_partition: bool,
    /// Whether every primary key and unique constraint of the table includes the partition
    /// key's columns (as PostgreSQL requires of a partitioned table) before the ALTER; `None`
    /// when the trial did not get as far as reading them.
    pub keys_include_partition_key: Option<bool>,
    /// The keys that do not, and whether the ALTER replaces them.
    pub keys: Vec<KeyPlan>,
    /// The rows no partition would take; `None` when not counted (see `rows_note`).
    pub rows_without_partition: Option<Unrouted>,
    /// Why the rows were not counted, when they were not.
    pub rows_note: Option<String>,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct PartitionPlan {
    pub name: String,
    /// As PostgreSQL prints it (`FOR VALUES FROM (1) TO (5)`, `DEFAULT`); `None` when the
    /// trial did not get as far as creating the partitions.
    pub bound: Option<String>,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct KeyPlan {
    pub constraint: String,
    pub kind: &'static str,
    pub columns: Vec<String>,
    pub missing: Vec<String>,
    /// Whether the ALTER replaces it; `None` when the trial did not get as far as the ALTER.
    pub replaced_by_alter: Option<bool>,
    /// The `--alter` clauses that replace it with a key that includes the partition key.
    pub replacement: String,
}

/// Explains the conversion of `table` and says what `pg-ghost run` would refuse first.
pub async fn explain(client: &mut Client, table: &QualifiedName, key: Option<&str>, alter: &str, c: &Conversion) -> Result<(ConversionPlan, Option<String>)> {
    let mut plan = from_statements(c, table);
    let refusal = |e: Error| match e.kind() {
        ErrorKind::Refused => Ok(Some(e.message().to_string())),
        _ => Err(e),
    };
    let described = match crate::inspect::describe(client, table, key).await {
        Ok(d) => d,
        Err(e) => return Ok((plan, refusal(e)?)),
    };
    if described.partitioned {
        let refused = crate::inspect::conversion::already_partitioned(&described.name, &c.partition_by);
        plan.rows_note = Some("not counted: the table is partitioned already".into());
        return Ok((plan, Some(refused.message().to_string())));
    }
    let mut first = super::would_refuse(client, table, key, super::Strategy::Ghost).await?;
    let info = match described.keyed {
        Ok(info) => info,
        Err(_) => {
            plan.rows_note = Some("not counted: the table has no key to name them by".into());
            return Ok((plan, first));
        }
    };
    if let Err(e) = crate::inspect::conversion::check(client, &info, c).await {
        first = first.or(refusal(e)?);
    }
    let names = crate::names::Names::for_table(&info.name, info.oid);
    let (findings, trial_refused) = match crate::ghost::explain_conversion(client, &info, &names, alter, c).await {
        Ok(found) => found,
        // Refused already, for what the trial trips on too (a partition key column the table
        // does not have, say): the refusal says it.
        Err(e) if first.is_some() => {
            tracing::debug!(error = %e.chain(), "the trial ghost failed after a refusal");
            (ConversionFindings::default(), None)
        }
        Err(e) => return Err(e),
    };
    if let Some(e) = trial_refused {
        first = first.or(Some(e.message().to_string()));
    }
    fill(&mut plan, &findings);
    match (&findings.unrouted, findings.partitions.is_empty()) {
        (_, true) => plan.rows_note = Some("not counted: the trial did not get as far as creating the partitions".into()),
        (None, false) => plan.rows_note = Some("none: a partition takes every row (a DEFAULT partition, say)".into()),
        (Some(condition), false) => {
            let unrouted = crate::ghost::count_unrouted(&*client, &info, condition).await?;
            if let Some(e) = unrouted.refusal(&info) {
                first = first.or(Some(e.message().to_string()));
            }
            plan.rows_without_partition = Some(unrouted);
        }
    }
    Ok((plan, first))
}

/// What the flags alone tell: the partitions by name, no bound, no key, no rows.
fn from_statements(c: &Conversion, table: &QualifiedName) -> ConversionPlan {
    ConversionPlan {
        partition_by: c.partition_by.clone(),
        method: "a copy through a new partitioned table: the rows are copied into a partitioned ghost table with these partitions, \
                 fed by the change stream, which is swapped in (PostgreSQL cannot make a table partitioned in place)"
            .into(),
        partitions: c.partitions.iter().map(|p| PartitionPlan { name: p.final_name(table).to_string(), bound: None }).collect(),
        partition_count: c.partitions.len(),
        default_partition: c.partitions.iter().any(|p| p.is_default),
        keys_include_partition_key: None,
        keys: Vec::new(),
        rows_without_partition: None,
        rows_note: None,
    }
}

fn fill(plan: &mut ConversionPlan, f: &ConversionFindings) {
    if !f.partitions.is_empty() {
        plan.partitions = f.partitions.iter().map(|(name, bound)| PartitionPlan { name: name.to_string(), bound: Some(bound.clone()) }).collect();
    }
    let Some(lacking) = &f.lacking else { return };
    plan.keys_include_partition_key = Some(lacking.is_empty());
    plan.keys = lacking
        .iter()
        .map(|s| KeyPlan {
            constraint: s.constraint.clone(),
            kind: s.kind,
            columns: s.columns.clone(),
            missing: s.missing.clone(),
            replaced_by_alter: f.kept.as_ref().map(|kept| !kept.iter().any(|k| k.index == s.index)),
            replacement: s.replacement(),
        })
        .collect();
}

/// At most this many partitions are listed one by one in the text (JSON has them all).
const LISTED: usize = 24;

/// The conversion in a DBA's words.
pub fn text(out: &mut String, c: &ConversionPlan) {
    let _ = writeln!(out, "Conversion into a table partitioned by {}", c.partition_by);
    let _ = writeln!(out, "  method: {}", c.method);
    let _ = writeln!(out, "  partitions to create: {}{}", c.partition_count, if c.default_partition { " (one DEFAULT)" } else { "" });
    let width = c.partitions.iter().map(|p| p.name.len()).max().unwrap_or(0);
    let listed: Vec<&PartitionPlan> = match c.partitions.len() > LISTED {
        false => c.partitions.iter().collect(),
        true => c.partitions.iter().take(LISTED / 2).chain(c.partitions.iter().skip(c.partitions.len() - LISTED / 2)).collect(),
    };
    for (i, p) in listed.iter().enumerate() {
        if c.partitions.len() > LISTED && i == LISTED / 2 {
            let _ = writeln!(out, "    ... {} more", c.partitions.len() - LISTED);
        }
        let _ = writeln!(out, "    {:<width$}  {}", p.name, p.bound.as_deref().unwrap_or("(bound not read: see the refusal)"));
    }
    match c.keys_include_partition_key {
        Some(true) => {
            let _ = writeln!(out, "  keys: the primary key and unique constraints include the partition key");
        }
        None => {
            let _ = writeln!(out, "  keys: not read (see the refusal)");
        }
        Some(false) => {}
    }
    for k in &c.keys {
        let what = format!(
            "{} {} ({}) lacks partition key column(s) {}",
            if k.kind == "PRIMARY KEY" { "primary key" } else { "unique constraint" },
            crate::sql::ident(&k.constraint),
            crate::sql::ident_list(k.columns.iter().map(String::as_str)),
            crate::sql::ident_list(k.missing.iter().map(String::as_str))
        );
        let verdict = match k.replaced_by_alter {
            Some(true) => "the --alter replaces it".to_string(),
            _ => format!("replace it: --alter {}", crate::inspect::shell_quote(&k.replacement)),
        };
        let _ = writeln!(out, "  keys: {what}; {verdict}");
    }
    match (&c.rows_without_partition, &c.rows_note) {
        (Some(u), _) if u.count == 0 => {
            let _ = writeln!(out, "  rows without a partition: none");
        }
        (Some(u), _) => {
            let _ = writeln!(
                out,
                "  rows without a partition: {} (key {}{}): pg-ghost run refuses",
                crate::status::thousands(u.count.max(0) as u64),
                u.samples.join(", "),
                if u.count > u.samples.len() as i64 { ", ..." } else { "" }
            );
        }
        (None, Some(note)) => {
            let _ = writeln!(out, "  rows without a partition: {note}");
        }
        (None, None) => {}
    }
}
