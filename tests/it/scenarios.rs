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
