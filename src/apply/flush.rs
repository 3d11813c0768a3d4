//! Flushing a set of changed keys: every ghost row with one of those keys is deleted and
//! written again from the original's current row, if it still has one.
//!
//! No row image from the stream is used, so unchanged TOAST values, type changes and key
//! changes (old and new key are both in the set) come out right. The insert is an upsert on
//! the key because a copy chunk may have written the row meanwhile.
//!
//! While the key's is the ghost's only unique index (always during the copy, when the others
//! are set aside), a flush updates rows in place instead: it deletes only the keys gone from
//! the original and upserts the rest, so an unchanged indexed column costs no index entry and
//! the update can stay on its page (HOT). With another unique index, a statement updating
//! rows one by one could trip over a value two changed rows swap, so every key is deleted
//! before any is written again.

use super::park::Parking;
use crate::error::{Context, Result};
use crate::copy::Range;
use crate::ghost::Mapping;
use crate::keysql::{insert_select, KeyCols};
use crate::replication::failover::StandbyWait;
use crate::sql::{ident, QualifiedName};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::GenericClient;

fn shape(columns: &[crate::schema::Column]) -> Vec<(String, String)> {
    columns.iter().map(|c| (c.name.clone(), c.type_sql.clone())).collect()
}

/// A key as text values, one per key column, in key order.
pub type Key = Box<[String]>;

#[derive(Clone, Debug)]
pub struct FlushSql {
    pub delete: String,
    /// In place: upserts the keys the original has and deletes from the ghost those it
    /// returned none for, in one statement.
    pub upsert_then_delete_missing: String,
    pub upsert: String,
    /// Flush by [`FlushSql::upsert_then_delete_missing`]; shared by every clone.
    in_place: Arc<AtomicBool>,
    key_len: usize,
    source_key: KeyCols,
    /// Records the applied LSN in the changelog, in the flush's transaction (for a resume).
    checkpoint: Option<String>,
    /// The revert window's check that every value written back survives the cast back to the
    /// old type unchanged; returns the first key whose row does not (see
    /// [`FlushSql::checking_cast_back`]).
    cast_back: Option<CastBackCheck>,
    /// The table's columns (name, type) when the flushes began, for
    /// [`FlushSql::check_definition`].
    definition: Option<Definition>,
    /// Where keys go while the ghost has no index on its key (see `super::park`).
    parking: Option<Parking>,
    /// The standbys a committed flush waits for before its changes are confirmed (a slot
    /// synchronized to them, see `crate::replication::failover`).
    standbys: Option<StandbyWait>,
}

#[derive(Clone, Debug)]
struct Definition {
    oid: u32,
    name: QualifiedName,
    shape: Vec<(String, String)>,
}

#[derive(Clone, Debug)]
struct CastBackCheck {
    sql: String,
    key_names: Vec<String>,
    columns: Vec<String>,
}

impl FlushSql {
    pub fn new(orig: &QualifiedName, ghost: &QualifiedName, m: &Mapping) -> FlushSql {
        let ghost_key = KeyCols::ghost(m);
        let source_key = KeyCols::source(m);
        let delete = format!("DELETE FROM {} WHERE {}", ghost.sql(), ghost_key.in_set(1));
        let updates: Vec<String> = m
            .ghost_columns
            .iter()
            .filter(|c| !m.conflict_target().contains(&c.as_str()))
            .map(|c| format!("{0} = EXCLUDED.{0}", ident(c)))
            .collect();
        let on_conflict = if updates.is_empty() {
            "DO NOTHING".to_string()
        } else {
            format!("DO UPDATE SET {}", updates.join(", "))
        };
        let upsert = format!(
            "{} WHERE {} ON CONFLICT ({}) {}",
            insert_select(orig, ghost, m),
            source_key.in_set(1),
            crate::sql::ident_list(m.conflict_target()),
            on_conflict
        );
        // The DELETE sees the ghost as it was before the upsert (one snapshot for the whole
        // statement) and spares every key the upsert wrote. With no column to update, a key
        // already in the ghost is not returned: the DELETE then also checks the original.
        // It looks up only the keys left over, mostly none: probing the ghost for every key
        // (`key = ANY(...) AND key NOT IN (...)`) took 14 % of a 15,000-key flush.
        let key_cols = crate::sql::ident_list(m.key_ghost.iter().map(String::as_str));
        let spared = match updates.is_empty() {
            false => format!("SELECT {key_cols} FROM _pg_ghost_written"),
            true => {
                let source_as_ghost: Vec<String> =
                    m.key_source.iter().zip(&m.key_ghost_types).map(|(c, t)| format!("{}::{t}", ident(c))).collect();
                format!("SELECT {} FROM {} WHERE {}", source_as_ghost.join(", "), orig.sql(), source_key.in_set(1))
            }
        };
        let upsert_then_delete_missing = format!(
            "WITH _pg_ghost_written AS ({upsert} RETURNING {key_cols}) DELETE FROM {} WHERE {} IN ({} EXCEPT {spared})",
            ghost.sql(),
            ghost_key.tuple(),
            ghost_key.set(1)
        );
        FlushSql {
            delete,
            upsert_then_delete_missing,
            upsert,
            in_place: Arc::new(AtomicBool::new(false)),
            key_len: m.key_ghost.len(),
            source_key,
            checkpoint: None,
            cast_back: None,
            definition: None,
            parking: None,
            standbys: None,
        }
    }

    /// Flushes park their keys in `changelog` while `active` (the ghost's key index is set
    /// aside for the copy), until [`Parking::stop`].
    pub fn parking_in(mut self, changelog: &QualifiedName, active: bool) -> FlushSql {
        self.parking = Some(Parking::new(changelog, active));
        self
    }

    /// Committed flushes wait for these standbys (see [`StandbyWait`]).
    pub fn waiting_for_standbys(mut self, standbys: StandbyWait) -> FlushSql {
        self.standbys = Some(standbys);
        self
    }

    /// The standbys committed flushes wait for, if any.
    pub fn standbys(&self) -> Option<&StandbyWait> {
        self.standbys.as_ref()
    }

    /// Where keys are parked, when they may be.
    pub fn parking(&self) -> Option<&Parking> {
        self.parking.as_ref()
    }

    /// The number of key columns.
    pub fn key_len(&self) -> usize {
        self.key_len
    }

    /// [`FlushSql::check_definition`] compares the columns of `table` (its source) with these.
    pub fn checking_definition(mut self, table: &crate::schema::TableInfo) -> FlushSql {
        self.definition = Some(Definition { oid: table.oid, name: table.name.clone(), shape: shape(&table.columns) });
        self
    }

    /// Fails with [`crate::error::ErrorKind::SchemaChanged`] when the source table's columns
    /// (names and types) are no longer those the run started with. For a stream that carries
    /// only some columns, whose Relation messages cannot show the others.
    pub async fn check_definition(&self, client: &impl GenericClient) -> Result<()> {
        let Some(d) = &self.definition else { return Ok(()) };
        let now = shape(&crate::inspect::columns(client, d.oid).await?);
        if now == d.shape {
            return Ok(());
        }
        Err(crate::error::Error::new(
            crate::error::ErrorKind::SchemaChanged,
            format!(
                "{}: its definition changed during the run (columns now: {}); pg-ghost stops, the original is untouched",
                d.name,
                now.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(", ")
            ),
        ))
    }

    /// Before writing rows back (the revert window: `orig` is the new table, `m` the reverse
    /// mapping), checks that each retyped column's value comes back unchanged through the
    /// cast to the old type and back (`CAST(CAST(v AS old) AS new) IS NOT DISTINCT FROM v`):
    /// a value past the old type's range fails the cast, a value the old type would round or
    /// cut comes back different. Either way the flush fails with
    /// [`crate::error::ErrorKind::RevertImpossible`], naming the key; nothing is written.
    pub fn checking_cast_back(mut self, orig: &QualifiedName, m: &Mapping, cast_back: &[crate::ghost::CastBack]) -> FlushSql {
        if cast_back.is_empty() {
            return self;
        }
        let changed: Vec<String> = cast_back
            .iter()
            .map(|c| format!("CAST(CAST({0} AS {1}) AS {2}) IS DISTINCT FROM {0}", ident(&c.column), c.old_type, c.new_type))
            .collect();
        let keys: Vec<String> = m.key_source.iter().map(|k| format!("{}::text", ident(k))).collect();
        let sql = format!(
            "SELECT {} FROM {} WHERE {} AND ({}) LIMIT 1",
            keys.join(", "),
            orig.sql(),
            self.source_key.in_set(1),
            changed.join(" OR ")
        );
        self.cast_back = Some(CastBackCheck { sql, key_names: m.key_source.clone(), columns: cast_back.iter().map(|c| c.column.clone()).collect() });
        self
    }

    /// Deletes every key before writing any again, until [`FlushSql::choose_strategy`] says
    /// otherwise: for while unique indexes are being built.
    pub fn delete_first(&self) {
        self.in_place.store(false, Ordering::Relaxed);
    }

    /// Chooses how flushes write: in place when the key's is the ghost's only unique index
    /// (see the module docs); a partitioned ghost's partitions count, with the unique indexes
    /// of their own. Read from the catalog; call it again when the ghost's indexes
    /// change.
    pub async fn choose_strategy(&self, client: &impl GenericClient, ghost_oid: u32, key_ghost: &[String]) -> Result<()> {
        let others: i64 = client
            .query_one(
                "SELECT count(*) FROM pg_index i
                  WHERE (i.indrelid = $1 OR i.indrelid IN (SELECT relid FROM pg_partition_tree($1::oid::regclass))) AND (i.indisunique OR i.indisexclusion)
                    AND NOT (i.indpred IS NULL AND i.indexprs IS NULL AND i.indnkeyatts = cardinality($2::text[])
                             AND (SELECT array_agg(a.attname::text ORDER BY a.attname)
                                    FROM unnest(i.indkey::int2[]) k JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k)
                                 = (SELECT array_agg(x ORDER BY x) FROM unnest($2::text[]) x))",
                &[&ghost_oid, &key_ghost],
            )
            .await
            .context("reading the ghost's unique indexes")?
            .try_get(0)?;
        let in_place = others == 0;
        if self.in_place.swap(in_place, Ordering::Relaxed) != in_place {
            tracing::debug!(in_place, "flush strategy chosen");
        }
        Ok(())
    }

    /// Flushes record the LSN they bring the ghost to in `changelog`.
    pub fn recording_in(mut self, changelog: &QualifiedName) -> FlushSql {
        self.checkpoint = Some(crate::checkpoint::upsert_sql(changelog));
        self
    }

    /// Records that the ghost holds every change up to `lsn`: run it in the flush's
    /// transaction, so the record is true exactly when the flush is visible.
    pub async fn record_applied(&self, client: &impl GenericClient, lsn: crate::lsn::Lsn) -> Result<()> {
        if let Some(sql) = &self.checkpoint {
            let value = lsn.to_string();
            crate::checkpoint::record(client, sql, crate::checkpoint::APPLIED_LSN, &value).await.context("recording the applied LSN")?;
        }
        Ok(())
    }

    /// For each key, the index of the range in `ranges` it falls in, if any; asked of the
    /// server, which orders keys by their type and collation.
    pub async fn ranges_of(&self, client: &impl GenericClient, keys: &[Key], ranges: &[Range]) -> Result<Vec<Option<usize>>> {
        let mut found = vec![None; keys.len()];
        if keys.is_empty() || ranges.is_empty() {
            return Ok(found);
        }
        let n = self.key_len;
        let cols: Vec<String> = (0..n).map(|i| format!("_pg_ghost_k{i}")).collect();
        // The keys typed under their own column names, so that a partition's constraint
        // (written over those names) reads them as the partition's rows.
        let typed: Vec<String> = cols
            .iter()
            .zip(&self.source_key.types)
            .zip(&self.source_key.names)
            .map(|((c, t), name)| format!("{c}::{t} AS {}", crate::sql::ident(name)))
            .collect();
        let key = self.source_key.tuple();
        let mut next = n + 1;
        let mut values: Vec<&str> = Vec::new();
        let mut conditions = Vec::new();
        for range in ranges {
            let mut cond = format!("{key} <= {}", self.source_key.params(next));
            next += n;
            values.extend(range.hi.iter().map(String::as_str));
            if let Some(lo) = &range.lo {
                cond.push_str(&format!(" AND {key} > {}", self.source_key.params(next)));
                next += n;
                values.extend(lo.iter().map(String::as_str));
            }
            if let Some(part) = &range.part {
                cond.push_str(&format!(" AND ({}) IS TRUE", part.predicate));
            }
            conditions.push(cond);
        }
        let arrays: Vec<String> = (1..=n).map(|i| format!("${i}::text[]")).collect();
        let cases: Vec<String> = conditions.iter().enumerate().map(|(i, c)| format!("WHEN {c} THEN {i}")).collect();
        let sql = format!(
            "SELECT _pg_ghost_ord::int8, CASE {} END::int8 \
               FROM (SELECT _pg_ghost_ord, {} FROM unnest({}) WITH ORDINALITY AS _pg_ghost_k({}, _pg_ghost_ord)) AS _pg_ghost_t \
              WHERE {}",
            cases.join(" "),
            typed.join(", "),
            arrays.join(", "),
            cols.join(", "),
            conditions.iter().map(|c| format!("({c})")).collect::<Vec<_>>().join(" OR ")
        );
        let key_cols = self.columns(keys);
        let mut params: Vec<&(dyn ToSql + Sync)> = key_cols.iter().map(|c| c as &(dyn ToSql + Sync)).collect();
        params.extend(values.iter().map(|v| v as &(dyn ToSql + Sync)));
        for row in client.query(&sql, &params).await.context("finding changed keys inside copy chunks in flight")? {
            let ord: i64 = row.try_get(0)?;
            let range: i64 = row.try_get(1)?;
            if let (Some(slot), Ok(range)) = (usize::try_from(ord - 1).ok().and_then(|i| found.get_mut(i)), usize::try_from(range)) {
                *slot = Some(range);
            }
        }
        Ok(found)
    }

    /// Runs the cast-back check inside the caller's transaction (under a savepoint, so that a
    /// cast that fails leaves the transaction usable to find the key it failed on).
    async fn check_cast_back(&self, client: &impl GenericClient, check: &CastBackCheck, keys: &[Key], params: &[&(dyn ToSql + Sync)]) -> Result<()> {
        client.batch_execute("SAVEPOINT pg_ghost_cast_back").await.context("checking the cast back")?;
        let found = match client.query_opt(check.sql.as_str(), params).await.map_err(crate::error::Error::from) {
            Ok(row) => row.map(|r| (0..check.key_names.len()).map(|i| r.try_get::<_, String>(i)).collect::<std::result::Result<Vec<_>, _>>()).transpose()?.map(|key| (key, None)),
            Err(e) if e.is_row_error() => {
                client.batch_execute("ROLLBACK TO SAVEPOINT pg_ghost_cast_back").await.context("checking the cast back")?;
                self.failing_key(client, check, keys).await?.map(|key| (key, Some(e.message().to_string())))
            }
            Err(e) => return Err(e.context("checking that the rows survive the cast back to the old table's types")),
        };
        client.batch_execute("RELEASE SAVEPOINT pg_ghost_cast_back").await.context("checking the cast back")?;
        match found {
            None => Ok(()),
            Some((key, why)) => Err(crate::error::Error::new(
                crate::error::ErrorKind::RevertImpossible,
                format!(
                    "the row with key ({})=({}) cannot be written back to the old table: a value of column(s) {} {}",
                    check.key_names.iter().map(|k| ident(k)).collect::<Vec<_>>().join(", "),
                    key.join(", "),
                    check.columns.iter().map(|c| ident(c)).collect::<Vec<_>>().join(", "),
                    match why {
                        Some(why) => format!("fails the cast back to the old type ({why})"),
                        None => "would not come back unchanged through the old type".to_string(),
                    }
                ),
            )),
        }
    }

    /// A data exception in the revert window's write: a row changed between the cast-back
    /// check and the write (each statement reads its own snapshot) to a value the old type
    /// cannot take. The revert is impossible all the same.
    fn cast_back_failed(&self, e: crate::error::Error) -> crate::error::Error {
        match (&self.cast_back, e.sqlstate()) {
            (Some(check), Some(code)) if code.starts_with("22") => crate::error::Error::new(
                crate::error::ErrorKind::RevertImpossible,
                format!("a value of column(s) {} fails the cast back to the old table's type: {e}", check.columns.iter().map(|c| ident(c)).collect::<Vec<_>>().join(", ")),
            ),
            _ => e,
        }
    }

    /// The first of `keys` whose row fails the cast back, tried one at a time.
    async fn failing_key(&self, client: &impl GenericClient, check: &CastBackCheck, keys: &[Key]) -> Result<Option<Vec<String>>> {
        for key in keys {
            let one = std::slice::from_ref(key);
            let cols = self.columns(one);
            let params: Vec<&(dyn ToSql + Sync)> = cols.iter().map(|c| c as &(dyn ToSql + Sync)).collect();
            client.batch_execute("SAVEPOINT pg_ghost_cast_back_one").await.context("checking the cast back")?;
            match client.query_opt(check.sql.as_str(), &params).await.map_err(crate::error::Error::from) {
                Ok(_) => client.batch_execute("RELEASE SAVEPOINT pg_ghost_cast_back_one").await.context("checking the cast back")?,
                Err(e) if e.is_row_error() => {
                    client.batch_execute("ROLLBACK TO SAVEPOINT pg_ghost_cast_back_one").await.context("checking the cast back")?;
                    return Ok(Some(key.to_vec()));
                }
                Err(e) => return Err(e.context("checking the cast back key by key")),
            }
        }
        Ok(None)
    }

    /// Column-wise arrays of the keys: one `Vec<&str>` per key column.
    fn columns<'k>(&self, keys: &'k [Key]) -> Vec<Vec<&'k str>> {
        let mut cols = vec![Vec::with_capacity(keys.len()); self.key_len];
        for key in keys {
            for (col, value) in cols.iter_mut().zip(key.iter()) {
                col.push(value.as_str());
            }
        }
        cols
    }

    /// Brings the ghost's rows of `keys` up to date on `client` (or parks them, while the
    /// ghost has no key index); the caller owns the transaction.
    pub async fn run(&self, client: &impl GenericClient, keys: &[Key]) -> Result<()> {
        if keys.is_empty() {
            return Ok(());
        }
        let cols = self.columns(keys);
        if let Some(parking) = self.parking.as_ref().filter(|p| p.active()) {
            return parking.park(client, &cols).await;
        }
        let params: Vec<&(dyn ToSql + Sync)> = cols.iter().map(|c| c as &(dyn ToSql + Sync)).collect();
        if let Some(check) = &self.cast_back {
            self.check_cast_back(client, check, keys, &params).await?;
        }
        // One round trip each (no prepare; every parameter is a text[] of one key column):
        // the cut-over's last flush runs under its lock, and across a network a flush's
        // round trips are the apply's pace.
        let typed: Vec<(&(dyn ToSql + Sync), Type)> = cols.iter().map(|c| (c as &(dyn ToSql + Sync), Type::TEXT_ARRAY)).collect();
        if self.in_place.load(Ordering::Relaxed) {
            client
                .execute_typed(&self.upsert_then_delete_missing, &typed)
                .await
                .context("writing changed keys to the ghost and deleting those gone from the original")
                .map_err(|e| self.cast_back_failed(e))?;
            return Ok(());
        }
        client.execute_typed(&self.delete, &typed).await.context("deleting changed keys from the ghost")?;
        client.execute_typed(&self.upsert, &typed).await.context("writing changed keys to the ghost").map_err(|e| self.cast_back_failed(e))?;
        Ok(())
    }
}
