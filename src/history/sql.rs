//! The SQL text of the history table, built from its quoted name.

use crate::sql::{ident, QualifiedName};

/// The table's definition. Outcomes are checked; everything else is free text, so that a
/// later pg-ghost can write what an earlier one did not know.
pub fn create_table(table: &QualifiedName) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {t} (
            run_id text PRIMARY KEY,
            database text NOT NULL,
            schema_name text,
            table_name text NOT NULL,
            alter_clauses text NOT NULL,
            fingerprint text,
            strategy text NOT NULL,
            version text NOT NULL,
            client_host text NOT NULL,
            client_user text NOT NULL,
            role text NOT NULL,
            pid integer NOT NULL,
            execute boolean NOT NULL,
            started_at timestamptz NOT NULL DEFAULT clock_timestamp(),
            updated_at timestamptz NOT NULL DEFAULT clock_timestamp(),
            ended_at timestamptz,
            phase text NOT NULL,
            outcome text CONSTRAINT {outcome_constraint} {check},
            error text,
            error_kind text,
            rows_copied bigint NOT NULL DEFAULT 0,
            phase_seconds jsonb NOT NULL DEFAULT '{{}}',
            cut_over_attempts integer,
            lock_held_ms double precision,
            resumes integer NOT NULL DEFAULT 0,
            steps jsonb
        );
        COMMENT ON TABLE {t} IS 'pg-ghost: one row per run (pg-ghost history)'",
        t = table.sql(),
        outcome_constraint = ident(&outcome_constraint(table)),
        check = outcome_check(),
    )
}

/// The check of the outcome column, listing every outcome this pg-ghost records.
fn outcome_check() -> String {
    let names: Vec<String> = super::record::Outcome::ALL.iter().map(|o| format!("'{}'", o.name())).collect();
    format!("CHECK (outcome IN ({}))", names.join(", "))
}

/// The name PostgreSQL gives the column's check (`runs_outcome_check`), kept by the tables
/// earlier pg-ghosts created.
fn outcome_constraint(table: &QualifiedName) -> String {
    crate::sql::fit_ident(&format!("{}_outcome_check", table.name))
}

/// `$1` the table: the name of its outcome check when it lacks an outcome of this pg-ghost
/// (a table made by an earlier one), else no row.
pub const OUTDATED_OUTCOME_CHECK: &str = "SELECT conname::text FROM pg_constraint
      WHERE conrelid = $1::text::regclass AND contype = 'c' AND pg_get_constraintdef(oid) LIKE '%outcome%'
        AND pg_get_constraintdef(oid) NOT LIKE $2";

/// The `LIKE` pattern an up-to-date outcome check matches (`$2` of [`OUTDATED_OUTCOME_CHECK`]).
pub fn newest_outcome_pattern() -> String {
    let newest = super::record::Outcome::ALL.last().map(|o| o.name()).unwrap_or("success");
    format!("%'{newest}'%")
}

/// Replaces an outdated outcome check (`constraint`) with this pg-ghost's.
pub fn replace_outcome_check(table: &QualifiedName, constraint: &str) -> String {
    format!("ALTER TABLE {} DROP CONSTRAINT {c}, ADD CONSTRAINT {c} {}", table.sql(), outcome_check(), c = ident(constraint))
}

pub fn create_schema(table: &QualifiedName) -> String {
    format!("CREATE SCHEMA IF NOT EXISTS {}", ident(&table.schema))
}

/// Serialises the creation between runs starting together (`IF NOT EXISTS` alone races).
pub const CREATE_LOCK: &str = "SELECT pg_advisory_xact_lock(hashtext('pg-ghost history'))";

/// `$1` run id, `$2` table, `$3` ALTER, `$4` strategy, `$5` version, `$6` host, `$7` user,
/// `$8` pid, `$9` execute, `$10` phase.
pub fn insert(table: &QualifiedName) -> String {
    format!(
        "INSERT INTO {} (run_id, database, table_name, alter_clauses, strategy, version, client_host, client_user, role, pid, execute, phase)
         VALUES ($1, current_database(), $2, $3, $4, $5, $6, $7, current_user, $8, $9, $10)
         ON CONFLICT (run_id) DO NOTHING",
        table.sql()
    )
}

/// A resumed run takes the earlier row over: `$1` run id, `$2` pid, `$3` host, `$4` user,
/// `$5` version. Returns what the earlier process recorded.
pub fn take_over(table: &QualifiedName) -> String {
    format!(
        "UPDATE {} SET pid = $2, client_host = $3, client_user = $4, version = $5, role = current_user,
                ended_at = NULL, outcome = NULL, error = NULL, error_kind = NULL, updated_at = clock_timestamp()
          WHERE run_id = $1
      RETURNING rows_copied, phase_seconds::text, resumes, cut_over_attempts, lock_held_ms",
        table.sql()
    )
}

/// The column a table made by an earlier pg-ghost lacks: added once, catalog only.
pub fn add_steps_column(table: &QualifiedName) -> String {
    format!("ALTER TABLE {} ADD COLUMN IF NOT EXISTS steps jsonb", table.sql())
}

/// `$1` run id; then the [`super::record::Values`] in their order, `$2` to `$15`.
pub fn update(table: &QualifiedName) -> String {
    format!(
        "UPDATE {} SET schema_name = $2, table_name = $3, fingerprint = $4, phase = $5, rows_copied = $6,
                phase_seconds = $7::text::jsonb, cut_over_attempts = $8, lock_held_ms = $9, resumes = $10,
                outcome = $11, error = $12, error_kind = $13, strategy = $14, steps = $15::text::jsonb,
                ended_at = CASE WHEN $11::text IS NULL THEN NULL ELSE coalesce(ended_at, clock_timestamp()) END,
                updated_at = clock_timestamp()
          WHERE run_id = $1",
        table.sql()
    )
}

/// Publications that publish (or would publish, once created) the history table: its
/// rows would reach subscribers that do not have it, and stop their apply.
pub fn publishing(table: &QualifiedName, schema_publications: bool) -> String {
    let mut sql = format!(
        "SELECT pubname::text FROM pg_publication WHERE puballtables
         UNION SELECT pubname::text FROM pg_publication_tables WHERE schemaname = {s} AND tablename = {n}",
        s = literal(&table.schema),
        n = literal(&table.name)
    );
    if schema_publications {
        sql.push_str(&format!(
            "
         UNION SELECT p.pubname::text FROM pg_publication_namespace pn
                 JOIN pg_publication p ON p.oid = pn.pnpubid
                 JOIN pg_namespace n ON n.oid = pn.pnnspid
                WHERE n.nspname = {s}",
            s = literal(&table.schema)
        ));
    }
    sql.push_str(" ORDER BY 1");
    sql
}

/// The rows `pg-ghost history` shows, newest first: `$1` the table's name parts (NULL: every
/// table), `$2` how many.
pub fn select(table: &QualifiedName) -> String {
    const TS: &str = "'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'";
    format!(
        "SELECT run_id, database, schema_name, table_name, alter_clauses, fingerprint, strategy, version,
                client_host, client_user, role, pid, execute,
                to_char(started_at AT TIME ZONE 'UTC', {TS}) AS started_at,
                to_char(updated_at AT TIME ZONE 'UTC', {TS}) AS updated_at,
                to_char(ended_at AT TIME ZONE 'UTC', {TS}) AS ended_at,
                extract(epoch FROM coalesce(ended_at, updated_at) - started_at)::float8 AS seconds,
                phase, outcome, error, error_kind, rows_copied, phase_seconds::text AS phase_seconds,
                cut_over_attempts, lock_held_ms, resumes, steps::text AS steps
           FROM {t}
          WHERE $1::text[] IS NULL
             OR (table_name = $1[cardinality($1)] AND (cardinality($1) = 1 OR schema_name = $1[1]))
          ORDER BY started_at DESC, run_id
          LIMIT $2",
        t = table.sql()
    )
}

/// A string literal (for names in catalog queries built once).
fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_quoted_everywhere() {
        let t = QualifiedName::new("my \"h\"", "runs'x");
        assert!(create_table(&t).contains("\"my \"\"h\"\"\".\"runs'x\""));
        assert_eq!(create_schema(&t), "CREATE SCHEMA IF NOT EXISTS \"my \"\"h\"\"\"");
        for sql in [insert(&t), take_over(&t), update(&t), select(&t), add_steps_column(&t)] {
            assert!(sql.contains("\"my \"\"h\"\"\".\"runs'x\""), "{sql}");
        }
        let p = publishing(&t, true);
        assert!(p.contains("schemaname = 'my \"h\"'") && p.contains("tablename = 'runs''x'"), "{p}");
        assert!(p.contains("pg_publication_namespace"));
        assert!(!publishing(&t, false).contains("pg_publication_namespace"));
    }

    #[test]
    fn the_outcome_check_lists_every_outcome() {
        let sql = create_table(&QualifiedName::new("pgghost", "runs"));
        for o in super::super::record::Outcome::ALL {
            assert!(sql.contains(&format!("'{}'", o.name())), "{}", o.name());
        }
        assert!(sql.contains("DEFAULT '{}'"), "the braces of the default survive format!");
        assert!(sql.contains("CONSTRAINT \"runs_outcome_check\" CHECK (outcome IN ('success',"), "{sql}");
        assert_eq!(newest_outcome_pattern(), "%'reverted'%");
        assert_eq!(
            replace_outcome_check(&QualifiedName::new("pgghost", "runs"), "runs_outcome_check"),
            "ALTER TABLE \"pgghost\".\"runs\" DROP CONSTRAINT \"runs_outcome_check\", ADD CONSTRAINT \"runs_outcome_check\" \
             CHECK (outcome IN ('success', 'dry-run', 'replica-test', 'failed', 'aborted', 'reverted'))"
        );
    }
}
