//! The oracle judged: each check of the kit must pass on a correct result and fail on a
//! wrong one. A check that cannot fail would let a broken pg-ghost through.

use std::time::Duration;

use crate::harness::{Cluster, TestDb};
use crate::oracle::*;

/// Runs the workload for a bounded time (the duration is the point, not a synchronization).
async fn run_for(db: &TestDb<'_>, table: &OracleTable, options: WorkloadOptions, millis: u64) -> WorkloadReport {
    let workload = Workload::start(db, table, options).await;
    tokio::time::sleep(Duration::from_millis(millis)).await;
    let report = workload.stop().await;
    eprintln!("{report:?}");
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workload_writes_table_and_control_alike() {
    let db = Cluster::primary().fresh_db("oracle_workload");
    let table = OracleTable::create(&db, "Orders \"x\" ü", KeyKind::Identity, 2_000).await;
    let client = db.client().await;
    let toasted: i64 =
        client.query_one(&format!("SELECT count(*) FROM {} WHERE length(big) >= 8192", table.qualified()), &[]).await.unwrap().get(0);
    assert!(toasted >= 900, "seed should hold ~1000 values of 8 kB+, has {toasted}");
    table.assert_matches_control(&client, &table.projection()).await;

    let report = run_for(&db, &table, WorkloadOptions::new(4).rate(Some(150)), 2_000).await;
    assert!(report.errors.is_empty(), "workload errors (seed {}): {:#?}", report.seed, report.errors);
    assert!(report.committed_txns > 300, "too few transactions: {report:?}");
    for op in ["insert", "update_columns", "update_big", "update_key", "delete", "update_range", "delete_range"] {
        assert!(report.committed_by_op.get(op).copied().unwrap_or(0) > 0, "no {op} committed: {report:?}");
    }
    assert_eq!(report.committed_after_swap, 0);
    table.assert_matches_control(&client, &table.projection()).await;

    // The workload really changed things: rows were inserted and keys moved past the seed.
    let moved: i64 = client.query_one(&format!("SELECT count(*) FROM {} WHERE id > 2000", table.qualified()), &[]).await.unwrap().get(0);
    assert!(moved > 50, "only {moved} rows have keys past the seed");
    // Inserts still work through the identity default, and keys moved up.
    let max_id: i64 = client.query_one(&format!("SELECT max(id) FROM {}", table.qualified()), &[]).await.unwrap().get(0);
    assert!(max_id > 2_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn composite_key_workload_moves_rows_between_tenants() {
    let db = Cluster::primary().fresh_db("oracle_composite");
    let table = OracleTable::create_in(&db, "Sch ema", "tenants", KeyKind::Composite, 1_000).await;
    let client = db.client().await;
    let before: i64 = client.query_one(&format!("SELECT count(*) FROM {} WHERE tenant > 4", table.qualified()), &[]).await.unwrap().get(0);
    assert_eq!(before, 0, "the seed uses tenants 1..4");
    let report = run_for(&db, &table, WorkloadOptions::new(3).rate(Some(150)), 1_500).await;
    assert!(report.errors.is_empty(), "workload errors (seed {}): {:#?}", report.seed, report.errors);
    let moved: i64 =
        client.query_one(&format!("SELECT count(*) FROM {} WHERE tenant > 4 AND id <= 1000", table.qualified()), &[]).await.unwrap().get(0);
    assert!(moved > 0, "no seeded row changed tenant");
    table.assert_matches_control(&client, &table.projection()).await;
}

/// A swap done right, as a cut-over should: under an exclusive lock, copy everything, move
/// the identity past the original's values, rename. The workload must go on writing the
/// new table without an error, leave the frozen column alone, and still match the control
/// through the ALTER's transformation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workload_survives_a_correct_swap_and_freezes_the_changed_column() {
    let db = Cluster::primary().fresh_db("oracle_swap");
    let table = OracleTable::create(&db, "swapped", KeyKind::Identity, 1_000).await;
    let workload = Workload::start(&db, &table, WorkloadOptions::new(3).rate(Some(150)).freeze_at_swap(&["label"])).await;
    workload.wait_for_more_commits(50, Duration::from_secs(20)).await;
    let client = db.client().await;
    let q = table.qualified();
    client
        .batch_execute(&format!(
            "BEGIN;
             LOCK TABLE {q} IN ACCESS EXCLUSIVE MODE;
             CREATE TABLE ghost (LIKE {q} INCLUDING ALL);
             ALTER TABLE ghost ALTER COLUMN label TYPE int USING length(label);
             INSERT INTO ghost OVERRIDING SYSTEM VALUE
                  SELECT id, n, length(label), amount, doc, tags, at, big, spare FROM {q};
             SELECT setval(pg_get_serial_sequence('ghost', 'id'), (SELECT last_value FROM pg_sequences WHERE sequencename = 'swapped_id_seq'));
             ALTER TABLE {q} RENAME TO swapped_old;
             ALTER TABLE ghost RENAME TO swapped;
             COMMIT;"
        ))
        .await
        .unwrap();
    workload.wait_for_more_commits(100, Duration::from_secs(20)).await;
    let report = workload.stop().await;
    eprintln!("{report:?}");
    assert!(report.errors.is_empty(), "workload errors across the swap (seed {}): {:#?}", report.seed, report.errors);
    assert!(report.committed_after_swap >= 50, "the workload did not go on after the swap: {report:?}");
    for op in ["insert", "update_key"] {
        assert!(report.committed_after_swap_by_op.get(op).copied().unwrap_or(0) > 0, "no {op} after the swap: {report:?}");
    }
    table.assert_matches_control(&client, &table.projection().map("label", "length(label)")).await;
    assert_sequences_ahead(&client, &q).await;
    // Without the transformation the same comparison fails: the projection matters.
    let wrong =
        compare_rows(&client, &format!("SELECT id, label::text FROM {q}"), &format!("SELECT id, label FROM {}", table.control_qualified()))
            .await;
    assert!(wrong.only_in_table > 500 && wrong.only_in_control > 500, "{wrong}");
}

/// A swap done wrong: the copy runs without the lock and nothing applies the changes made
/// between copy and swap. The comparison must catch the lost changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swap_that_misses_concurrent_changes_is_caught() {
    let db = Cluster::primary().fresh_db("oracle_badswap");
    let table = OracleTable::create(&db, "lossy", KeyKind::Identity, 1_000).await;
    let workload = Workload::start(&db, &table, WorkloadOptions::new(3).rate(Some(150))).await;
    let client = db.client().await;
    let q = table.qualified();
    client
        .batch_execute(&format!(
            "CREATE TABLE ghost (LIKE {q} INCLUDING ALL);
             INSERT INTO ghost OVERRIDING SYSTEM VALUE SELECT * FROM {q};"
        ))
        .await
        .unwrap();
    workload.wait_for_more_commits(60, Duration::from_secs(20)).await;
    client
        .batch_execute(&format!(
            "BEGIN;
             LOCK TABLE {q} IN ACCESS EXCLUSIVE MODE;
             SELECT setval(pg_get_serial_sequence('ghost', 'id'), (SELECT last_value FROM pg_sequences WHERE sequencename = 'lossy_id_seq'));
             ALTER TABLE {q} RENAME TO lossy_old;
             ALTER TABLE ghost RENAME TO lossy;
             COMMIT;"
        ))
        .await
        .unwrap();
    let report = workload.stop().await;
    let diff = compare_rows(
        &client,
        &format!("SELECT {} FROM {q}", table.projection().table_select_list()),
        &format!("SELECT {} FROM {}", table.projection().control_select_list(), table.control_qualified()),
    )
    .await;
    assert!(!diff.is_empty(), "60 transactions were lost and the comparison saw nothing (workload {report:?})");
    let identity = table.projection();
    let caught = std::panic::AssertUnwindSafe(table.assert_matches_control(&client, &identity));
    let panic = futures_util::FutureExt::catch_unwind(caught).await.expect_err("assert_matches_control must panic");
    let message = panic.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(message.contains("only in the control"), "unhelpful failure message: {message}");
}

/// The workload's own check: a row missing from the table but present in the control is an
/// error as soon as a statement touches it. `target_range` aims the workload at it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workload_reports_rows_the_table_lost_and_aims_at_the_target_range() {
    let db = Cluster::primary().fresh_db("oracle_target");
    let table = OracleTable::create(&db, "targeted", KeyKind::Identity, 1_000).await;
    let client = db.client().await;
    client.batch_execute(&format!("DELETE FROM {} WHERE id BETWEEN 400 AND 409", table.qualified())).await.unwrap();
    let workload = Workload::start(&db, &table, WorkloadOptions::new(2).rate(Some(200))).await;
    *workload.target_range().lock().unwrap() = Some((400, 409));
    workload.wait_for_errors(1, Duration::from_secs(20)).await;
    let report = workload.stop().await;
    assert!(
        report.errors.iter().any(|e| e.contains("table and control disagree")),
        "expected a row-count disagreement, got {:#?}",
        report.errors
    );
}

/// Writers blocked by a lock show it in `max_txn_latency` (what the lock-contention scenario
/// bounds by pg-ghost's lock timeout), and the workload resumes once the lock goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workload_measures_how_long_writers_waited_for_a_lock() {
    let db = Cluster::primary().fresh_db("oracle_latency");
    let table = OracleTable::create(&db, "locked", KeyKind::Identity, 500).await;
    let workload = Workload::start(&db, &table, WorkloadOptions::new(2).rate(None)).await;
    workload.wait_for_more_commits(20, Duration::from_secs(20)).await;
    let client = db.client().await;
    client.batch_execute(&format!("BEGIN; LOCK TABLE {} IN SHARE MODE", table.qualified())).await.unwrap();
    let committed = workload.committed();
    // The time the lock is held is the quantity under test, not a synchronization.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(workload.committed() <= committed + 2, "writers were not blocked by the SHARE lock");
    client.batch_execute("COMMIT").await.unwrap();
    workload.wait_for_more_commits(20, Duration::from_secs(20)).await;
    let report = workload.stop().await;
    assert!(report.errors.is_empty(), "{:#?}", report.errors);
    assert!(report.max_txn_latency >= Duration::from_millis(450) && report.max_txn_latency < Duration::from_secs(10), "{report:?}");
}

#[tokio::test]
async fn comparison_catches_a_changed_a_deleted_and_an_added_row() {
    let db = Cluster::primary().fresh_db("oracle_compare");
    let table = OracleTable::create(&db, "Corrupt.ed", KeyKind::Identity, 300).await;
    let client = db.client().await;
    let (q, p) = (table.qualified(), table.projection());
    let diff = compare_rows(
        &client,
        &format!("SELECT {} FROM {q}", p.table_select_list()),
        &format!("SELECT {} FROM {}", p.control_select_list(), table.control_qualified()),
    )
    .await;
    assert!(diff.is_empty(), "{diff}");
    assert_eq!((diff.table_rows, diff.control_rows), (300, 300));

    client
        .batch_execute(&format!(
            "UPDATE {q} SET amount = amount + 0.01 WHERE id = 18;
             DELETE FROM {q} WHERE id = 42;
             INSERT INTO {q} (id, n, label) OVERRIDING SYSTEM VALUE VALUES (100000, 1, 'intruder');"
        ))
        .await
        .unwrap();
    let diff = compare_rows(
        &client,
        &format!("SELECT {} FROM {q}", p.table_select_list()),
        &format!("SELECT {} FROM {}", p.control_select_list(), table.control_qualified()),
    )
    .await;
    assert_eq!((diff.only_in_table, diff.only_in_control), (2, 2), "{diff}");
    let shown = diff.to_string();
    for needle in ["id=18", "id=42", "id=100000", "label=intruder"] {
        assert!(shown.contains(needle), "{needle} missing from the report:\n{shown}");
    }

    // One character deep inside an out-of-line 8 kB value.
    client.batch_execute(&format!("UPDATE {} SET big = big WHERE true", table.control_qualified())).await.unwrap();
    client
        .batch_execute(&format!(
            "UPDATE {q} SET amount = amount - 0.01 WHERE id = 18;
             DELETE FROM {q} WHERE id = 100000;
             INSERT INTO {q} OVERRIDING SYSTEM VALUE SELECT * FROM {} WHERE id = 42;
             UPDATE {q} SET big = overlay(big placing 'X' from 5000) WHERE id = 25;",
            table.control_qualified()
        ))
        .await
        .unwrap();
    let diff = compare_rows(
        &client,
        &format!("SELECT {} FROM {q}", p.table_select_list()),
        &format!("SELECT {} FROM {}", p.control_select_list(), table.control_qualified()),
    )
    .await;
    assert_eq!((diff.only_in_table, diff.only_in_control), (1, 1), "{diff}");
    assert!(diff.sample_only_in_table[0].contains("chars, md5"), "{diff}");

    // The identity sequence is ahead of the keys, until it is set back.
    assert_sequences_ahead(&client, &q).await;
    client.batch_execute(&format!("SELECT setval(pg_get_serial_sequence({}, 'id'), 250)", literal(&q))).await.unwrap();
    let behind = futures_util::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(assert_sequences_ahead(&client, &q))).await;
    let message = behind.expect_err("a sequence behind the keys must fail").downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(message.contains("next value") && message.contains("251") && message.contains("300"), "{message}");

    // Multiset semantics: a duplicated row is a difference.
    let dup = compare_rows(&client, "VALUES (1), (1), (2)", "VALUES (1), (2)").await;
    assert_eq!((dup.only_in_table, dup.only_in_control), (1, 0));
    let dup = compare_rows(&client, "VALUES (2)", "VALUES (1), (2)").await;
    assert_eq!((dup.only_in_table, dup.only_in_control), (0, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dump_contract_accepts_a_plain_alter_and_catches_a_renamed_index_and_changed_data() {
    let db = Cluster::primary().fresh_db("oracle_dump");
    // A name pg_dump's pattern matcher would misread unless quoted, and a second table it
    // would also match if `*` and `.` were wildcards.
    let name = "we.i*rd \"T\" ü";
    let table = OracleTable::create(&db, name, KeyKind::Identity, 200).await;
    db.psql("CREATE TABLE \"we.ixxrd \"\"T\"\" ü\" (id int)");
    let alter = "ALTER COLUMN n TYPE bigint, ADD COLUMN flag boolean NOT NULL DEFAULT true";
    let original = OriginalDump::take(&db, "public", name).await;

    // A perfect migration: the same plain ALTER on the source.
    let client = db.client().await;
    client.batch_execute(&format!("ALTER TABLE {} {alter}", table.qualified())).await.unwrap();
    let expected = expected_after_plain_alter(&db, &original, alter, ExpectedData::AsDumped).await;
    assert_dump_equal(&db, "public", name, &expected).await;
    let schema = dump::schema_dump(&db, "public", name).await;
    for needle in [
        "n bigint",
        "flag boolean DEFAULT true NOT NULL",
        "STORAGE EXTERNAL",
        "fillfactor='90'",
        "_label_idx",
        "COMMENT ON COLUMN",
        "GRANT SELECT",
    ] {
        assert!(schema.contains(needle), "the dump should show {needle:?}:\n{schema}");
    }
    assert!(!schema.contains("we.ixxrd"), "the pattern matched another table:\n{schema}");

    // An index under another name: what a cut-over that forgot the renames leaves.
    let index = format!("{name}_label_idx");
    client.batch_execute(&format!("ALTER INDEX {} RENAME TO label_idx_gho", qualified("public", &index))).await.unwrap();
    let diff = compare_dump(&db, "public", name, &expected).await;
    assert!(diff.schema.iter().any(|l| l.starts_with('+') && l.contains("label_idx_gho")), "{diff}");
    assert!(diff.schema.iter().any(|l| l.starts_with('-') && l.contains("_label_idx")), "{diff}");
    assert_eq!((diff.only_in_actual, diff.only_in_expected), (0, 0), "{diff}");
    client.batch_execute(&format!("ALTER INDEX \"label_idx_gho\" RENAME TO {}", ident(&index))).await.unwrap();

    // A changed value, a storage setting and a default.
    client
        .batch_execute(&format!(
            "UPDATE {q} SET doc = '{{\"changed\": true}}' WHERE id = 7;
             ALTER TABLE {q} ALTER COLUMN big SET STORAGE EXTENDED;",
            q = table.qualified()
        ))
        .await
        .unwrap();
    let diff = compare_dump(&db, "public", name, &expected).await;
    assert_eq!((diff.only_in_actual, diff.only_in_expected), (1, 1), "{diff}");
    assert!(diff.sample_only_in_actual[0].contains("changed"), "{diff}");
    assert!(diff.schema.iter().any(|l| l.starts_with('-') && l.contains("STORAGE EXTERNAL")), "{diff}");
}

/// With a workload, the expected rows come from the control at the end; the ALTER is still
/// PostgreSQL's own, so a `USING` expression is applied by the server, not by the kit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dump_contract_takes_the_expected_rows_from_the_control() {
    let db = Cluster::primary().fresh_db("oracle_dumpctl");
    let table = OracleTable::create_in(&db, "Sch.ema \"q\"", "ctl", KeyKind::Composite, 300).await;
    let original = OriginalDump::take(&db, &table.schema, &table.name).await;
    let report = run_for(&db, &table, WorkloadOptions::new(2).rate(Some(100)), 700).await;
    assert!(report.errors.is_empty(), "{:#?}", report.errors);
    let alter = "ALTER COLUMN label TYPE int USING length(label), DROP COLUMN spare";
    db.client().await.batch_execute(&format!("ALTER TABLE {} {alter}", table.qualified())).await.unwrap();
    let expected = expected_after_plain_alter(&db, &original, alter, ExpectedData::Query(table.control_rows_query())).await;
    assert_dump_equal(&db, &table.schema, &table.name, &expected).await;
    // And the dumped rows (the seed) are not the rows at the end.
    let stale = expected_after_plain_alter(&db, &original, alter, ExpectedData::AsDumped).await;
    let diff = compare_dump(&db, &table.schema, &table.name, &stale).await;
    assert!(diff.schema.is_empty() && diff.only_in_actual > 0 && diff.only_in_expected > 0, "{diff}");
}

#[tokio::test]
async fn catalog_snapshot_sees_tables_slots_and_publications_and_nothing_else() {
    let db = Cluster::primary().fresh_db("oracle_catalog");
    let table = OracleTable::create(&db, "cat", KeyKind::Identity, 10).await;
    let client = db.client().await;
    let before = CatalogSnapshot::take(&client).await;
    assert!(before.relations.iter().any(|r| r.name == "cat" && r.columns.len() == 9), "{before:#?}");
    assert!(before.indexes.iter().any(|i| i.name == "cat_pkey" && i.primary));
    assert!(before.constraints.iter().any(|c| c.name == "cat_amount_check"));
    assert!(before.sequences.iter().any(|s| s.name == "cat_id_seq" && s.owned_by.as_deref() == Some("public.cat.id (i)")));
    assert_catalog_unchanged(&before, &CatalogSnapshot::take(&client).await);
    // Data and sequence positions are not catalog.
    client
        .batch_execute(&format!("INSERT INTO {} (n) VALUES (1); DELETE FROM {} WHERE id < 5", table.qualified(), table.qualified()))
        .await
        .unwrap();
    assert_catalog_unchanged(&before, &CatalogSnapshot::take(&client).await);

    let changes = [
        ("CREATE TABLE _cat_gho (LIKE cat INCLUDING ALL)", "DROP TABLE _cat_gho", "relation"),
        ("CREATE PUBLICATION pg_ghost_1 FOR TABLE cat", "DROP PUBLICATION pg_ghost_1", "publication"),
        ("SELECT pg_create_logical_replication_slot('oracle_catalog_slot', 'pgoutput')", "SELECT pg_drop_replication_slot('oracle_catalog_slot')", "slot"),
        ("ALTER INDEX cat_n_idx RENAME TO cat_n_idx2", "ALTER INDEX cat_n_idx2 RENAME TO cat_n_idx", "index"),
        ("ALTER TABLE cat ALTER COLUMN n SET DEFAULT 3", "ALTER TABLE cat ALTER COLUMN n DROP DEFAULT", "relation"),
        ("CREATE FUNCTION f() RETURNS trigger LANGUAGE plpgsql AS 'BEGIN RETURN NEW; END'; CREATE TRIGGER t BEFORE INSERT ON cat FOR EACH ROW EXECUTE FUNCTION f()", "DROP TRIGGER t ON cat; DROP FUNCTION f()", "trigger"),
        ("REVOKE SELECT ON cat FROM PUBLIC", "GRANT SELECT ON cat TO PUBLIC", "relation"),
    ];
    for (change, undo, category) in changes {
        client.batch_execute(change).await.unwrap_or_else(|e| panic!("{change}: {e}"));
        let diff = before.diff(&CatalogSnapshot::take(&client).await);
        assert!(diff.iter().any(|l| l.contains(category)), "{change} not seen as a {category} change: {diff:#?}");
        client.batch_execute(undo).await.unwrap_or_else(|e| panic!("{undo}: {e}"));
        assert_catalog_unchanged(&before, &CatalogSnapshot::take(&client).await);
    }
    assert_no_slots_or_publications(&client).await;
}
