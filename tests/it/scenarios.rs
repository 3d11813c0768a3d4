//! The contract, scenario by scenario: under a concurrent workload that writes every change
//! to the table and to a control table in one transaction, pg-ghost runs to completion; the
//! migrated table then equals the control (with the ALTER applied) row for row, and its
//! schema dump and data equal what a plain ALTER TABLE leaves.

use crate::binary;
use crate::harness::Cluster;
use crate::oracle::*;
use std::time::Duration;

struct Scenario<'a> {
    prefix: &'a str,
    schema: &'a str,
    table: &'a str,
    kind: KeyKind,
    rows: i64,
    alter: &'a str,
    /// Columns the workload stops writing at the swap (the ALTER changes them incompatibly).
    freeze: &'a [&'a str],
    extra_args: &'a [&'a str],
    project: fn(Projection) -> Projection,
}

impl Default for Scenario<'_> {
    fn default() -> Self {
        Scenario {
            prefix: "scenario",
            schema: "public",
            table: "orders",
            kind: KeyKind::Identity,
            rows: 5_000,
            alter: "",
            freeze: &[],
            extra_args: &[],
            project: |p| p,
        }
    }
}

async fn run_scenario(s: Scenario<'_>) {
    let db = Cluster::primary().fresh_db(s.prefix);
    let table = OracleTable::create_in(&db, s.schema, s.table, s.kind, s.rows).await;
    let original = OriginalDump::take(&db, s.schema, s.table).await;
    let workload = Workload::start(&db, &table, WorkloadOptions::new(3).rate(Some(80)).freeze_at_swap(s.freeze)).await;
    workload.wait_for_more_commits(30, Duration::from_secs(30)).await;

    let qualified = table.qualified();
    let mut args = vec!["--table", qualified.as_str(), "--alter", s.alter, "--execute", "--chunk-size", "500", "--status-interval", "1s"];
    args.extend_from_slice(s.extra_args);
    let out = binary::run(&db, &args).await;
    binary::assert_success(&out);
    binary::assert_checksum_repaired_nothing(&out);

    workload.wait_for_more_commits(30, Duration::from_secs(30)).await;
    let report = workload.stop().await;
    assert!(report.errors.is_empty(), "workload errors (seed {}): {:#?}", report.seed, report.errors);
    assert!(report.committed_after_swap_by_op.get("insert").copied().unwrap_or(0) > 0, "no inserts after the swap: {report:?}");

    let client = db.client().await;
    table.assert_matches_control(&client, &(s.project)(table.projection())).await;
    assert_sequences_ahead(&client, &qualified).await;
    let expected = expected_after_plain_alter(&db, &original, s.alter, ExpectedData::Query(table.control_rows_query())).await;
    assert_dump_equal(&db, s.schema, s.table, &expected).await;
    assert_no_slots_or_publications(&client).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn int_to_bigint() {
    run_scenario(Scenario {
        prefix: "sc_bigint",
        alter: "ALTER COLUMN n TYPE bigint",
        project: |p| p.map("n", "n::bigint"),
        ..Default::default()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn type_change_with_using() {
    run_scenario(Scenario {
        prefix: "sc_using",
        alter: "ALTER COLUMN label TYPE int USING length(label)",
        freeze: &["label"],
        project: |p| p.map("label", "length(label)"),
        extra_args: &["--copy-workers", "2"],
        ..Default::default()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_column_with_default() {
    run_scenario(Scenario {
        prefix: "sc_add",
        alter: "ADD COLUMN flag boolean NOT NULL DEFAULT true, ADD COLUMN note text",
        project: |p| p.add("flag", "true").add("note", "NULL::text"),
        ..Default::default()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_column() {
    run_scenario(Scenario { prefix: "sc_drop", alter: "DROP COLUMN spare", project: |p| p.drop("spare"), ..Default::default() })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rename_column() {
    run_scenario(Scenario {
        prefix: "sc_rename",
        alter: "RENAME COLUMN spare TO reserve",
        project: |p| p.rename("spare", "reserve"),
        ..Default::default()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_check_constraint() {
    run_scenario(Scenario {
        prefix: "sc_check",
        alter: "ADD CONSTRAINT amount_bounded CHECK (amount < 1000000), ADD CHECK (n > -5000)",
        ..Default::default()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn composite_key_with_quoted_unicode_names() {
    run_scenario(Scenario {
        prefix: "sc_composite",
        schema: "Sales \"Dept\"",
        table: "Order Items ✓",
        kind: KeyKind::Composite,
        alter: "ALTER COLUMN n TYPE bigint",
        project: |p| p.map("n", "n::bigint"),
        extra_args: &["--copy-workers", "2"],
        ..Default::default()
    })
    .await;
}

/// A `GENERATED ALWAYS` identity column that is not the key, and a serial column the ALTER
/// adds: the changes made while the ghost is fed (updates write every column again) reach it,
/// the identity is ALWAYS again after the swap, and the new sequence has the name a plain
/// ALTER gives it (`t_s_seq`), so the whole schema is what a plain ALTER leaves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_columns_are_fed_and_new_sequences_take_their_plain_names() {
    use crate::run_faults::{flag_path, wait_for_state, Running};
    let db = Cluster::primary().fresh_db("sc_identity");
    db.psql(
        "CREATE TABLE t (id int PRIMARY KEY, seq bigint GENERATED ALWAYS AS IDENTITY, v text NOT NULL);
         INSERT INTO t (id, v) SELECT g, 'v' || g FROM generate_series(1, 3000) g;",
    );
    let before = WholeSchema::take(&db).await;
    let alter = "ALTER COLUMN v TYPE varchar(40), ADD COLUMN s serial";
    let flag = flag_path(&db, "postpone");
    std::fs::write(&flag, b"").unwrap();
    let args = ["--table", "t", "--alter", alter, "--execute", "--ok-to-drop-table", "--postpone-cut-over-flag-file", flag.to_str().unwrap()];
    let mut run = Running::spawn(&db, "run", &args);
    let watcher = db.client().await;
    wait_for_state(&watcher, &mut run, "t", "postponed", Duration::from_secs(60)).await;
    db.psql(
        "UPDATE t SET v = v || '!' WHERE id % 7 = 0;
         DELETE FROM t WHERE id % 11 = 0;
         INSERT INTO t (id, v) SELECT g, 'new' || g FROM generate_series(3001, 3100) g;",
    );
    let rows = "SELECT md5(string_agg(format('%s,%s,%s', id, seq, v), ';' ORDER BY id)) || ' ' || count(*) FROM t";
    let expected = db.psql(rows);
    std::fs::remove_file(&flag).unwrap();
    binary::assert_success(&run.wait(Duration::from_secs(120)).await);

    assert_eq!(db.psql(rows), expected);
    assert_eq!(db.psql("SELECT count(DISTINCT s) FROM t WHERE s IS NOT NULL"), db.psql("SELECT count(*) FROM t"));
    let twin = before.twin_after_plain_alter(&db, "public.t", alter).await;
    assert_whole_schema_equal(&db, &twin, alter).await;
}
