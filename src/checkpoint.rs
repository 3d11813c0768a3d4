//! What a run writes into its changelog table so that `pg-ghost run --resume` can continue
//! after a crash, and reading it back.
//!
//! Rows of the changelog (`key` → `value`):
//! - `plan`: the ALTER (canonical form), the original's OID and column shape, the ghost's
//!   OID, column shape and the whole ghost plan (mapping, indexes set aside, replica
//!   identity), written once the ghost exists;
//! - `copy_watermark`: a key at or below which every row of the original was copied, written
//!   in the same transaction as the chunk that completes that prefix; a partitioned table's
//!   partitions are copied each on its own, with a watermark each:
//!   `copy_watermark:<schema>.<partition>` (quoted as in SQL);
//! - `applied_lsn`: the end of the last transaction whose changes are in the ghost, written
//!   in the same transaction as the flush that put them there;
//! - `state`: the phase the run was in;
//! - `run_id`: the run's row in the history of runs, which a resumed run continues.
//!
//! The slot's `confirmed_flush_lsn` never passes a change that is not in the ghost yet, so a
//! resumed run streams everything it may have missed; the copy restarts at the watermark,
//! and chunks it copies again skip rows the ghost already has.

use crate::copy::Bound;
use crate::error::{Context, Error, Result};
use crate::ghost::Ghost;
use crate::sql::QualifiedName;
use serde::{Deserialize, Serialize};
use tokio_postgres::GenericClient;

/// Bumped when the layout of [`Plan`] changes: a resume across versions is refused.
const PLAN_VERSION: u32 = 1;

pub const PLAN: &str = "plan";
pub const COPY_WATERMARK: &str = "copy_watermark";

/// The changelog key of a partition's own copy watermark.
pub fn part_watermark_key(partition: &QualifiedName) -> String {
    format!("{COPY_WATERMARK}:{}", partition.sql())
}
pub const APPLIED_LSN: &str = "applied_lsn";
pub const STATE: &str = "state";
pub const RUN_ID: &str = "run_id";
/// The revert window: the names of both tables before the swap (see `cutover::swap_back`).
pub const REVERT_NAMES: &str = "revert_names";
/// The revert window: the logical message the swap's transaction emitted.
pub const REVERT_MARKER: &str = "revert_marker";
/// The revert window: the position of the marker in the WAL, written by the swap itself.
pub const REVERT_MARKER_LSN: &str = "revert_marker_lsn";
/// The revert window: the reverse slot's (and publication's) name.
pub const REVERT_SLOT: &str = "revert_slot";
/// The revert window: when it ends (RFC 3339, the server's clock), and what the DBA asked
/// of it (`revert` or `finalize`, written by `pg-ghost revert` / `finalize`).
pub const WINDOW_ENDS: &str = "window_ends";
pub const WINDOW_REQUEST: &str = "window_request";
/// The state a revert's swap back records in its own transaction: a run killed right after
/// it is not resumed into making the change again.
pub const STATE_REVERTED: &str = "reverted";

/// The states after which the row copy is complete.
const COPY_DONE_STATES: [&str; 4] = ["build-indexes", "checksum", "postponed", "cut-over"];

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Plan {
    pub version: u32,
    /// The ALTER as PostgreSQL's parser reads it (see [`crate::alter::canonical`]).
    pub alter: String,
    pub table_oid: u32,
    pub table_shape: String,
    pub ghost_shape: String,
    pub ghost: Ghost,
}

impl Plan {
    pub fn new(alter: String, table_oid: u32, table_shape: String, ghost_shape: String, ghost: Ghost) -> Plan {
        Plan { version: PLAN_VERSION, alter, table_oid, table_shape, ghost_shape, ghost }
    }
}

/// Everything a changelog holds for a resume.
#[derive(Clone, Debug, Default)]
pub struct Saved {
    pub plan: Option<Plan>,
    pub state: Option<String>,
    pub copy_watermark: Option<Bound>,
    /// Partitions' own watermarks, by [`part_watermark_key`].
    pub part_watermarks: std::collections::BTreeMap<String, Bound>,
    pub applied_lsn: Option<String>,
    pub run_id: Option<String>,
}

impl Saved {
    pub fn copy_done(&self) -> bool {
        self.state.as_deref().is_some_and(|s| COPY_DONE_STATES.contains(&s))
    }
}

/// The statement that sets one changelog row: `$1` is the key, `$2` the value.
pub fn upsert_sql(changelog: &QualifiedName) -> String {
    format!(
        "INSERT INTO {} (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, updated_at = clock_timestamp()",
        changelog.sql()
    )
}

/// Sets `key` to `value` with `sql` (an [`upsert_sql`]) in one round trip (no prepare: it
/// runs in every copy chunk and flush, and under the cut-over's lock).
pub async fn record(client: &impl GenericClient, sql: &str, key: &str, value: &str) -> std::result::Result<u64, tokio_postgres::Error> {
    use tokio_postgres::types::Type;
    client.execute_typed(sql, &[(&key, Type::TEXT), (&value, Type::TEXT)]).await
}

pub async fn write_plan(client: &impl GenericClient, changelog: &QualifiedName, plan: &Plan) -> Result<()> {
    let json = serde_json::to_string(plan).map_err(|e| Error::internal(format!("cannot encode the ghost plan: {e}")))?;
    client.execute(&upsert_sql(changelog), &[&PLAN, &json]).await.context("recording the ghost plan in the changelog table")?;
    Ok(())
}

pub fn encode_bound(bound: &Bound) -> String {
    serde_json::to_string(bound).unwrap_or_default()
}

/// Reads the changelog; `None` when the table does not exist.
pub async fn read(client: &impl GenericClient, changelog: &QualifiedName) -> Result<Option<Saved>> {
    let exists: bool = client
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&changelog.sql()])
        .await
        .context("looking for the changelog table")?
        .try_get(0)?;
    if !exists {
        return Ok(None);
    }
    let rows = client
        .query(&format!("SELECT key, value FROM {} WHERE NOT starts_with(key, $1)", changelog.sql()), &[&crate::apply::park::PREFIX])
        .await
        .context("reading the changelog table")?;
    let mut saved = Saved::default();
    for row in rows {
        let key: String = row.try_get(0)?;
        let value: String = row.try_get(1)?;
        match key.as_str() {
            PLAN => saved.plan = Some(decode_plan(&value)?),
            COPY_WATERMARK => {
                let bound = serde_json::from_str(&value)
                    .map_err(|e| Error::refused(format!("the changelog's copy watermark {value:?} is unreadable: {e}")))?;
                saved.copy_watermark = Some(bound);
            }
            k if k.starts_with(COPY_WATERMARK) && k.as_bytes().get(COPY_WATERMARK.len()) == Some(&b':') => {
                let bound = serde_json::from_str(&value)
                    .map_err(|e| Error::refused(format!("the changelog's copy watermark {key} = {value:?} is unreadable: {e}")))?;
                saved.part_watermarks.insert(key.clone(), bound);
            }
            APPLIED_LSN => saved.applied_lsn = Some(value),
            STATE => saved.state = Some(value),
            RUN_ID => saved.run_id = Some(value),
            _ => {}
        }
    }
    Ok(Some(saved))
}

fn decode_plan(json: &str) -> Result<Plan> {
    #[derive(Deserialize)]
    struct Versioned {
        version: u32,
    }
    let version = serde_json::from_str::<Versioned>(json)
        .map_err(|e| Error::refused(format!("the changelog's ghost plan is unreadable: {e}")))?
        .version;
    if version != PLAN_VERSION {
        return Err(Error::refused(format!(
            "the changelog was written by another version of pg-ghost (plan version {version}, this one reads {PLAN_VERSION}); finish or clean up with that version"
        )));
    }
    serde_json::from_str(json).map_err(|e| Error::refused(format!("the changelog's ghost plan is unreadable: {e}")))
}

/// A table's columns as one comparable string: attnum, name, type, default, generation and
/// identity of every live column. NOT NULL is left out: building a primary key the copy set
/// aside adds it to the ghost's columns.
pub async fn shape(client: &impl GenericClient, oid: u32) -> Result<String> {
    let row = client
        .query_one(
            "SELECT coalesce(string_agg(format('%s %I %s%s%s%s', a.attnum, a.attname, format_type(a.atttypid, a.atttypmod),
                        coalesce(' default ' || pg_get_expr(d.adbin, d.adrelid), ''),
                        CASE WHEN a.attgenerated <> '' THEN ' generated' ELSE '' END,
                        CASE WHEN a.attidentity <> '' THEN ' identity ' || a.attidentity::text ELSE '' END), '; ' ORDER BY a.attnum), '')
               FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
              WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped",
            &[&oid],
        )
        .await
        .context("reading the table's columns")?;
    Ok(row.try_get(0)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_is_done_only_after_the_copy_phase() {
        let saved = |s: &str| Saved { state: Some(s.into()), ..Default::default() };
        assert!(!saved("prepare").copy_done());
        assert!(!saved("copy").copy_done());
        assert!(saved("build-indexes").copy_done());
        assert!(saved("cut-over").copy_done());
        assert!(!Saved::default().copy_done());
    }

    #[test]
    fn refuses_a_plan_of_another_version() {
        let e = decode_plan(r#"{"version": 99}"#).unwrap_err();
        assert!(e.to_string().contains("another version of pg-ghost"), "{e}");
        assert!(decode_plan("not json").unwrap_err().to_string().contains("unreadable"));
    }

    #[test]
    fn bounds_round_trip() {
        let b: Bound = vec!["42".into(), "a \"quoted\", text".into()];
        assert_eq!(serde_json::from_str::<Bound>(&encode_bound(&b)).unwrap(), b);
    }
}
