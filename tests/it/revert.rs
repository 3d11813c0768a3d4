//! The revert window (`--revertible-for`): after the swap the old table is kept current by a
//! reverse stream, `pg-ghost revert` swaps it back losing nothing, `pg-ghost finalize` ends
//! the window, and a value the old table cannot take makes the revert impossible, loudly.

use crate::binary;
use crate::harness::{Cluster, TestDb};
use crate::oracle::*;
use std::os::unix::fs::PermissionsExt;
use std::process::Output;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_postgres::Client;

/// Starts `pg-ghost run` in the background; its output once it ends.
fn spawn_run(db: &TestDb<'_>, args: &[&str]) -> JoinHandle<Output> {
    let mut cmd = binary::command(db, "run", args);
    tokio::spawn(async move { cmd.output().await.expect("start pg-ghost") })
}

/// Waits until the run's changelog says the revert window is open (or the run ended).
async fn wait_for_window(client: &Client, table: &str, run: &mut JoinHandle<Output>) {
    let deadline = std::time::Instant::now() + Duration::from_secs(180);
    loop {
        if binary::changelog_value(client, table, "state").await.as_deref() == Some("revert-window") {
            return;
        }
        if run.is_finished() {
            let out = run.await.expect("pg-ghost task");
            panic!("pg-ghost ended ({}) before its revert window opened:\n{}", out.status, binary::stderr(&out));
        }
        assert!(std::time::Instant::now() < deadline, "the revert window did not open within 180 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `pg-ghost run --table <table> <args> --execute --revertible-for 10m --ok-to-drop-table`
/// under `workload`, which has written before: once the window is open and the application
/// has committed 60 more transactions, `pg-ghost revert`; both must succeed. Then the
/// workload writes on the original and stops, without an error. The run's output and the
/// workload's report.
async fn revert_after_writes(db: &TestDb<'_>, workload: Workload, table: &str, args: &[&str]) -> (Output, WorkloadReport) {
    workload.wait_for_more_commits(30, Duration::from_secs(30)).await;
    let mut all = vec!["--table", table];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--execute", "--revertible-for", "10m", "--ok-to-drop-table"]);
    let mut run = spawn_run(db, &all);
    let client = db.client().await;
    wait_for_window(&client, table, &mut run).await;
    // The application keeps writing to the new table during the window.
    let after_swap = workload.committed_after_swap();
    while workload.committed_after_swap() < after_swap + 60 {
        assert!(!run.is_finished(), "pg-ghost ended during its window");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let out = revert_now(db, table, run).await;
    // And on the original, once it is back.
    workload.wait_for_more_commits(30, Duration::from_secs(30)).await;
    let report = workload.stop().await;
    assert!(report.errors.is_empty(), "workload errors (seed {}): {:#?}", report.seed, report.errors);
    (out, report)
}

/// `pg-ghost revert --table <table>` while `run` serves the window; both must succeed. The
/// run's output.
async fn revert_now(db: &TestDb<'_>, table: &str, run: JoinHandle<Output>) -> Output {
    let revert = binary::command(db, "revert", &["--table", table]).output().await.expect("start pg-ghost revert");
    let out = finish(run).await;
    assert!(revert.status.success(), "the revert failed:\n{}\nthe window's run:\n{}", binary::stderr(&revert), binary::stderr(&out));
    binary::assert_success(&out);
    out
}

/// The whole database's schema is as in `before` again (`what`: after what), and pg-ghost
/// left no slot or publication.
async fn assert_as_before_the_run(db: &TestDb<'_>, before: &WholeSchema, what: &str) {
    let twin = before.twin_after_plain_sql(db, "SELECT 1").await;
    assert_whole_schema_equal(db, &twin, what).await;
    assert_no_slots_or_publications(&db.client().await).await;
}

async fn finish(run: JoinHandle<Output>) -> Output {
    tokio::time::timeout(Duration::from_secs(120), run).await.expect("pg-ghost did not end").expect("pg-ghost task")
}

/// Replication slots left in the test's database, by name.
async fn slots(client: &Client) -> Vec<String> {
    client
        .query("SELECT slot_name::text FROM pg_replication_slots WHERE database = current_database()", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// The outcomes the history of runs recorded for `table`, oldest first.
async fn recorded_outcomes(client: &Client, table: &str) -> Vec<Option<String>> {
    client
        .query("SELECT outcome FROM pgghost.runs WHERE table_name = $1 ORDER BY started_at", &[&table])
        .await
        .expect("reading pgghost.runs")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

async fn wait_until(client: &Client, what: &str, sql: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !client.query_one(sql, &[]).await.unwrap().get::<_, bool>(0) {
        assert!(std::time::Instant::now() < deadline, "{what}: not seen within 60 s ({sql})");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revert_under_load_gives_back_the_original_with_every_write() {
    let db = Cluster::primary().fresh_db("revert_load");
    let table = OracleTable::create(&db, "orders", KeyKind::Identity, 3_000).await;
    let before = WholeSchema::take(&db).await;
    let workload = Workload::start(&db, &table, WorkloadOptions::new(3).rate(Some(80))).await;

    let alter = "ALTER COLUMN n TYPE bigint, ADD COLUMN flag boolean NOT NULL DEFAULT true";
    let (_, report) = revert_after_writes(&db, workload, "orders", &["--alter", alter, "--chunk-size", "500", "--status-interval", "1s"]).await;
    let client = db.client().await;
    assert!(report.committed_after_swap_by_op.get("insert").copied().unwrap_or(0) > 0, "no inserts in the window: {report:?}");

    table.assert_matches_control(&client, &table.projection()).await;
    assert_sequences_ahead(&client, &table.qualified()).await;
    assert_eq!(slots(&client).await, Vec::<String>::new(), "replication slots left behind");
    assert_as_before_the_run(&db, &before, "after a revert, the database is as before the run").await;
    assert_eq!(recorded_outcomes(&client, "orders").await, [Some("reverted".to_string())]);
    let history = binary::command(&db, "history", &[]).output().await.expect("start pg-ghost history");
    binary::assert_success(&history);
    let shown = String::from_utf8_lossy(&history.stdout).into_owned();
    assert!(shown.lines().any(|l| l.contains("public.orders") && l.contains("reverted")), "{shown}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finalize_ends_the_window_and_drops_the_reverse_slot() {
    let db = Cluster::primary().fresh_db("revert_finalize");
    binary::narrow_table(&db, "items", 2_000);
    let mut run = spawn_run(&db, &["--table", "items", "--alter", "DROP COLUMN pad, ADD COLUMN note text DEFAULT 'x'", "--execute", "--revertible-for", "10m"]);
    let client = db.client().await;
    wait_for_window(&client, "items", &mut run).await;

    // Writes to the new table reach the old one in its old shape: the dropped column keeps
    // its value on an existing row and takes its default (NULL) on a new one.
    client
        .batch_execute(
            "UPDATE items SET n = -7, note = 'changed' WHERE id = 3;
             INSERT INTO items (id, n, note) VALUES (900001, 42, 'new');
             DELETE FROM items WHERE id = 5;",
        )
        .await
        .unwrap();
    wait_until(
        &client,
        "the window's writes on the old table",
        "SELECT (SELECT n FROM _items_del WHERE id = 3) = -7
            AND EXISTS (SELECT 1 FROM _items_del WHERE id = 900001)
            AND NOT EXISTS (SELECT 1 FROM _items_del WHERE id = 5)",
    )
    .await;
    let rows = client.query("SELECT id, n, pad FROM _items_del WHERE id IN (3, 900001) ORDER BY id", &[]).await.unwrap();
    let got: Vec<(i64, i32, Option<String>)> = rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect();
    let pad_3: String = client.query_one("SELECT pad FROM items_before WHERE id = 3", &[]).await.unwrap().get(0);
    assert_eq!(got, vec![(3, -7, Some(pad_3)), (900001, 42, None)]);
    // Row for row, the old table is the new one in the old shape (the dropped column aside).
    let diff = compare_rows(&client, "SELECT id, n FROM _items_del", "SELECT id, n::int FROM items").await;
    assert!(diff.is_empty(), "{diff:?}");

    let finalize = binary::command(&db, "finalize", &["--table", "items"]).output().await.expect("start pg-ghost finalize");
    binary::assert_success(&finalize);
    let out = finish(run).await;
    binary::assert_success(&out);
    // What the window costs is said on its status line.
    let log = binary::stderr(&out);
    let line = log.lines().find(|l| l.contains("(revert window); the old table")).unwrap_or_else(|| panic!("no window status line:\n{log}"));
    assert!(line.contains("retained_wal_bytes=") && line.contains("old_table_bytes="), "{line}");
    assert_eq!(slots(&client).await, Vec::<String>::new(), "replication slots left behind");
    assert_no_slots_or_publications(&client).await;
    // The new table stays; the old one is kept (no --ok-to-drop-table); the changelog is gone.
    let kept: Vec<Option<String>> = client
        .query_one("SELECT to_regclass('items')::text, to_regclass('_items_del')::text, to_regclass('_items_ghc')::text", &[])
        .await
        .map(|r| vec![r.get(0), r.get(1), r.get(2)])
        .unwrap();
    assert_eq!(kept, vec![Some("items".to_string()), Some("_items_del".to_string()), None]);
    assert_eq!(recorded_outcomes(&client, "items").await, [Some("success".to_string())], "a finalized run is a success");
    let revert = binary::command(&db, "revert", &["--table", "items"]).output().await.unwrap();
    binary::assert_failure(&revert, 3, "no revert window is open");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_the_old_type_cannot_hold_makes_the_revert_impossible() {
    let db = Cluster::primary().fresh_db("revert_impossible");
    binary::narrow_table(&db, "wide", 1_000);
    let dir = tempfile::tempdir().unwrap();
    let said = dir.path().join("said");
    let hook = dir.path().join("pg-ghost-on-revert-impossible");
    std::fs::write(&hook, format!("#!/bin/sh\nprintf '%s' \"$PG_GHOST_ERROR\" > '{}'\n", said.display())).unwrap();
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
    let hooks = dir.path().to_str().unwrap().to_string();
    let mut run = spawn_run(
        &db,
        &["--table", "wide", "--alter", "ALTER COLUMN n TYPE bigint", "--execute", "--revertible-for", "10m", "--ok-to-drop-table", "--hooks-path", &hooks],
    );
    let client = db.client().await;
    wait_for_window(&client, "wide", &mut run).await;
    client.batch_execute("UPDATE wide SET n = 5000000000 WHERE id = 7; UPDATE wide SET n = 12 WHERE id = 8").await.unwrap();

    // The window ends on its own, saying why and naming the key.
    let out = finish(run).await;
    binary::assert_success(&out);
    let log = binary::stderr(&out);
    assert!(log.contains("REVERT IMPOSSIBLE"), "{log}");
    assert!(log.contains("(\"id\")=(7)"), "the key is not named:\n{log}");
    let hook_said = std::fs::read_to_string(&said).expect("the on-revert-impossible hook did not run");
    assert!(hook_said.contains("(\"id\")=(7)"), "{hook_said}");

    // The new table keeps the value; the old table is kept despite --ok-to-drop-table, its
    // row 7 untouched (nothing truncated), and no slot is left.
    let n: i64 = client.query_one("SELECT n FROM wide WHERE id = 7", &[]).await.unwrap().get(0);
    assert_eq!(n, 5_000_000_000);
    let old: (i32, i32) = client
        .query_one("SELECT (SELECT n FROM _wide_del WHERE id = 7), (SELECT n FROM wide_before WHERE id = 7)", &[])
        .await
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    assert_eq!(old.0, old.1, "the old table's row 7 changed");
    assert_eq!(slots(&client).await, Vec::<String>::new(), "replication slots left behind");
    assert_no_slots_or_publications(&client).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_the_window_cannot_serve_is_refused_up_front() {
    let db = Cluster::primary().fresh_db("revert_refused");
    binary::narrow_table(&db, "typed", 100);
    binary::narrow_table(&db, "unique2", 100);
    db.psql("ALTER TABLE unique2 ADD UNIQUE (n)");
    db.psql("CREATE TABLE numbered (id int PRIMARY KEY, seq bigint GENERATED ALWAYS AS IDENTITY)");
    // A partition's own unique constraint counts; the partitions' copies of the key do not.
    db.psql(
        "CREATE TABLE parted (id bigint PRIMARY KEY, n int NOT NULL, pad text) PARTITION BY RANGE (id);
         CREATE TABLE parted_1 PARTITION OF parted FOR VALUES FROM (0) TO (1000);
         ALTER TABLE parted_1 ADD CONSTRAINT parted_1_zz_n UNIQUE (n);
         INSERT INTO parted SELECT g, g, md5(g::text) FROM generate_series(1, 100) g;",
    );
    let client = db.client().await;
    let before = CatalogSnapshot::take(&client).await;
    let out = binary::run(&db, &["--table", "typed", "--alter", "ALTER COLUMN pad TYPE int USING length(pad)", "--execute", "--revertible-for", "1h"]).await;
    binary::assert_failure(&out, 3, "USING");
    // A dropped column with another unique index: the old table could not keep its values.
    let out = binary::run(&db, &["--table", "unique2", "--alter", "DROP COLUMN pad", "--execute", "--revertible-for", "1h"]).await;
    binary::assert_failure(&out, 3, "unique index \"unique2_n_key\"");
    let out = binary::run(&db, &["--table", "parted", "--alter", "DROP COLUMN pad", "--execute", "--revertible-for", "1h"]).await;
    binary::assert_failure(&out, 3, "unique index \"parted_1_zz_n\"");
    let out = binary::run(&db, &["--table", "numbered", "--alter", "ADD COLUMN x int", "--execute", "--revertible-for", "1h"]).await;
    binary::assert_failure(&out, 3, "GENERATED ALWAYS");
    assert_catalog_unchanged(&before, &CatalogSnapshot::take(&client).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_whose_run_was_killed_is_ended_by_cleanup_resume_or_finalize() {
    let db = Cluster::primary().fresh_db("revert_killed");
    binary::narrow_table(&db, "gone", 500);
    binary::narrow_table(&db, "again", 500);
    binary::narrow_table(&db, "closed", 500);
    let client = db.client().await;
    for (table, end_with) in [("gone", "cleanup"), ("again", "resume"), ("closed", "finalize")] {
        let alter = "ADD COLUMN note text";
        let mut run = spawn_run(&db, &["--table", table, "--alter", alter, "--execute", "--revertible-for", "10m"]);
        wait_for_window(&client, table, &mut run).await;
        // SIGKILL (kill_on_drop): nothing is cleaned up; the reverse slot stays behind.
        run.abort();
        let _ = run.await;
        let reverse = format!("pg_ghost_{}_rev", client.query_one(&format!("SELECT '_{table}_del'::regclass::oid"), &[]).await.unwrap().get::<_, u32>(0));
        wait_until(&client, "the killed run's walsender gone", "SELECT NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE active)").await;
        assert_eq!(slots(&client).await, vec![reverse.clone()], "{table}");

        let out = match end_with {
            "cleanup" => binary::cleanup(&db, &["--table", table]).await,
            // No pg-ghost serves the window: finalize takes it up and ends it.
            "finalize" => binary::command(&db, "finalize", &["--table", table]).output().await.expect("start pg-ghost finalize"),
            _ => binary::run(&db, &["--table", table, "--alter", alter, "--execute", "--resume"]).await,
        };
        binary::assert_success(&out);
        assert_eq!(slots(&client).await, Vec::<String>::new(), "{table}: the {end_with} left a slot behind");
        let columns: i64 = client
            .query_one(&format!("SELECT count(*) FROM information_schema.columns WHERE table_name = '{table}' AND column_name = 'note'"), &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(columns, 1, "{table}: the new table keeps the name");
    }
    assert_no_slots_or_publications(&client).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revert_on_the_control_socket_swaps_back() {
    let db = Cluster::primary().fresh_db("revert_socket");
    binary::narrow_table(&db, "sock", 1_000);
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("pg-ghost.sock");
    let client = db.client().await;
    let original: u32 = client.query_one("SELECT 'sock'::regclass::oid", &[]).await.unwrap().get(0);
    let mut run = spawn_run(
        &db,
        &["--table", "sock", "--alter", "ALTER COLUMN n TYPE bigint", "--execute", "--revertible-for", "10m", "--serve-socket-file", socket.to_str().unwrap()],
    );
    wait_for_window(&client, "sock", &mut run).await;
    client.batch_execute("UPDATE sock SET n = n + 1 WHERE id <= 10; DELETE FROM sock WHERE id = 20; INSERT INTO sock VALUES (5000, 1, 'new')").await.unwrap();
    let answer = crate::controls_e2e::ask(&socket, "revert").await;
    assert!(answer.starts_with("revert:"), "{answer}");
    binary::assert_success(&finish(run).await);

    let now: u32 = client.query_one("SELECT 'sock'::regclass::oid", &[]).await.unwrap().get(0);
    assert_eq!(now, original, "the original is not back under its name");
    let expected = "SELECT id, CASE WHEN id <= 10 THEN n + 1 ELSE n END, pad FROM sock_before WHERE id <> 20 UNION ALL SELECT 5000, 1, 'new'";
    let diff = compare_rows(&client, "SELECT id, n, pad FROM sock", expected).await;
    assert!(diff.is_empty(), "{diff:?}");
    let n_type: String = client.query_one("SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'sock'::regclass AND attname = 'n'", &[]).await.unwrap().get(0);
    assert_eq!(n_type, "integer");
    assert_eq!(slots(&client).await, Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_the_old_type_would_cut_makes_the_revert_impossible_too() {
    let db = Cluster::primary().fresh_db("revert_cut");
    db.psql(
        "CREATE TABLE codes (id int PRIMARY KEY, code varchar(5) NOT NULL);
         INSERT INTO codes SELECT g, 'c' || g % 1000 FROM generate_series(1, 500) g;",
    );
    let mut run = spawn_run(&db, &["--table", "codes", "--alter", "ALTER COLUMN code TYPE varchar(20)", "--execute", "--revertible-for", "10m"]);
    let client = db.client().await;
    wait_for_window(&client, "codes", &mut run).await;
    // An explicit cast to varchar(5) would cut it without an error: the check must see it.
    client.batch_execute("UPDATE codes SET code = 'abcdefghij' WHERE id = 42").await.unwrap();
    let out = finish(run).await;
    binary::assert_success(&out);
    let log = binary::stderr(&out);
    assert!(log.contains("REVERT IMPOSSIBLE") && log.contains("(\"id\")=(42)"), "{log}");
    assert!(log.contains("would not come back unchanged"), "{log}");
    let old: String = client.query_one("SELECT code FROM _codes_del WHERE id = 42", &[]).await.unwrap().get(0);
    assert_eq!(old, "c42", "the old table's row was changed");
    assert_eq!(slots(&client).await, Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_in_the_window_resumes_it_and_reverts_losing_nothing() {
    let db = Cluster::primary().fresh_db("revert_resume");
    let table = OracleTable::create(&db, "orders", KeyKind::Identity, 2_000).await;
    let before = WholeSchema::take(&db).await;
    let workload = Workload::start(&db, &table, WorkloadOptions::new(3).rate(Some(80))).await;
    workload.wait_for_more_commits(20, Duration::from_secs(30)).await;
    let alter = "ALTER COLUMN n TYPE bigint, ADD COLUMN flag boolean NOT NULL DEFAULT true";
    let args = ["--table", "orders", "--alter", alter, "--execute", "--revertible-for", "10m", "--chunk-size", "500", "--ok-to-drop-table"];
    let mut run = spawn_run(&db, &args);
    let client = db.client().await;
    wait_for_window(&client, "orders", &mut run).await;
    let after_swap = workload.committed_after_swap();
    while workload.committed_after_swap() < after_swap + 30 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // SIGKILL in the window: the reverse slot stays where it was confirmed.
    run.abort();
    let _ = run.await;
    wait_until(&client, "the killed run's walsender gone", "SELECT NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE active)").await;
    // The application keeps writing the new table while no pg-ghost runs.
    let killed_at = workload.committed_after_swap();
    while workload.committed_after_swap() < killed_at + 30 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let mut resumed_args = args.to_vec();
    resumed_args.push("--resume");
    let mut resumed = spawn_run(&db, &resumed_args);
    wait_until(&client, "the resumed window streaming", "SELECT EXISTS (SELECT 1 FROM pg_replication_slots WHERE active AND slot_name LIKE '%_rev')").await;
    assert!(!resumed.is_finished());
    wait_for_window(&client, "orders", &mut resumed).await;
    let resumed_at = workload.committed_after_swap();
    while workload.committed_after_swap() < resumed_at + 30 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let revert = binary::command(&db, "revert", &["--table", "orders"]).output().await.unwrap();
    binary::assert_success(&revert);
    binary::assert_success(&finish(resumed).await);
    workload.wait_for_more_commits(20, Duration::from_secs(30)).await;
    let report = workload.stop().await;
    assert!(report.errors.is_empty(), "workload errors (seed {}): {:#?}", report.seed, report.errors);

    table.assert_matches_control(&client, &table.projection()).await;
    assert_sequences_ahead(&client, &table.qualified()).await;
    assert_eq!(slots(&client).await, Vec::<String>::new());
    assert_as_before_the_run(&db, &before, "after a resumed window and a revert, the database is as before the run").await;
}

/// Each kind of ALTER, reverted after writes in the window: the table is what the original
/// plus those writes make, and the whole database's schema is as before the run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_alter_reverts_to_the_original() {
    // (ALTER, the window's writes on the new table, the same writes on the original's shape)
    let cases: [(&str, &str, &str); 5] = [
        ("ADD COLUMN flag boolean NOT NULL DEFAULT false", "UPDATE t SET flag = true, n = n + 1 WHERE id <= 5", "UPDATE t SET n = n + 1 WHERE id <= 5"),
        ("DROP COLUMN pad", "UPDATE t SET n = -n WHERE id <= 5", "UPDATE t SET n = -n WHERE id <= 5"),
        ("ALTER COLUMN n TYPE bigint", "UPDATE t SET n = n * 2 WHERE id <= 5", "UPDATE t SET n = n * 2 WHERE id <= 5"),
        ("RENAME COLUMN pad TO filler", "UPDATE t SET filler = 'x' || id WHERE id <= 5", "UPDATE t SET pad = 'x' || id WHERE id <= 5"),
        ("ADD CONSTRAINT n_small CHECK (n < 1000000)", "UPDATE t SET n = 7 WHERE id <= 5", "UPDATE t SET n = 7 WHERE id <= 5"),
    ];
    for (i, (alter, on_new, on_original)) in cases.iter().enumerate() {
        let db = Cluster::primary().fresh_db(&format!("revert_kind{i}"));
        binary::narrow_table(&db, "t", 300);
        // Extended statistics are renamed by the swap too, and must come back.
        db.psql("CREATE STATISTICS t_n_id (dependencies) ON n, id FROM t; CREATE TABLE expected AS TABLE t");
        let before = WholeSchema::take(&db).await;
        let client = db.client().await;
        let mut run = spawn_run(&db, &["--table", "t", "--alter", alter, "--execute", "--revertible-for", "10m", "--ok-to-drop-table"]);
        wait_for_window(&client, "t", &mut run).await;
        let writes = format!("{on_new}; DELETE FROM t WHERE id = 9; INSERT INTO t (id, n) VALUES (1000, 1000)");
        client.batch_execute(&writes).await.unwrap_or_else(|e| panic!("{alter}: {e}"));
        let revert = binary::command(&db, "revert", &["--table", "t"]).output().await.unwrap();
        binary::assert_success(&revert);
        binary::assert_success(&finish(run).await);

        db.psql(&format!(
            "{}; DELETE FROM expected WHERE id = 9; INSERT INTO expected (id, n) VALUES (1000, 1000)",
            on_original.replacen("UPDATE t", "UPDATE expected", 1)
        ));
        let diff = compare_rows(&client, "SELECT * FROM t", "SELECT * FROM expected").await;
        assert!(diff.is_empty(), "{alter}: {diff:?}");
        db.psql("DROP TABLE expected");
        let twin = before.twin_after_plain_sql(&db, "DROP TABLE expected").await;
        assert_whole_schema_equal(&db, &twin, alter).await;
        assert_eq!(slots(&client).await, Vec::<String>::new(), "{alter}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revert_that_cannot_get_its_lock_leaves_the_window_open() {
    let db = Cluster::primary().fresh_db("revert_locked");
    binary::narrow_table(&db, "busy", 300);
    let args = ["--table", "busy", "--alter", "ADD COLUMN note text", "--execute", "--revertible-for", "10m", "--cut-over-lock-timeout", "100ms", "--cut-over-retries", "2"];
    let mut run = spawn_run(&db, &args);
    let client = db.client().await;
    wait_for_window(&client, "busy", &mut run).await;

    // A long transaction holds the new table: the swap back cannot have its lock.
    let blocker = db.client().await;
    blocker.batch_execute("BEGIN; SELECT count(*) FROM busy").await.unwrap();
    let revert = binary::command(&db, "revert", &["--table", "busy"]).output().await.unwrap();
    binary::assert_failure(&revert, 3, "revert-failed");
    assert!(!run.is_finished(), "the window closed after a failed revert");
    blocker.batch_execute("COMMIT").await.unwrap();
    client.batch_execute("UPDATE busy SET n = -1 WHERE id = 1").await.unwrap();

    let revert = binary::command(&db, "revert", &["--table", "busy"]).output().await.unwrap();
    binary::assert_success(&revert);
    let out = finish(run).await;
    binary::assert_success(&out);
    let log = binary::stderr(&out);
    assert!(log.contains("the revert failed; the new table keeps the name"), "{log}");
    assert!(log.contains("blocker_pid="), "the blocker is not named:\n{log}");
    let diff = compare_rows(&client, "SELECT * FROM busy", "SELECT id, CASE WHEN id = 1 THEN -1 ELSE n END, pad FROM busy_before").await;
    assert!(diff.is_empty(), "{diff:?}");
    assert_eq!(slots(&client).await, Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_window_ends_by_itself_when_its_time_is_up() {
    let db = Cluster::primary().fresh_db("revert_elapsed");
    binary::narrow_table(&db, "brief", 300);
    let run = spawn_run(&db, &["--table", "brief", "--alter", "ADD COLUMN note text", "--execute", "--revertible-for", "2s", "--ok-to-drop-table"]);
    let out = finish(run).await;
    binary::assert_success(&out);
    assert!(binary::stderr(&out).contains("revert window ended (its time is up)"), "{}", binary::stderr(&out));
    let client = db.client().await;
    assert_eq!(slots(&client).await, Vec::<String>::new());
    assert_no_slots_or_publications(&client).await;
    // The old table goes as --ok-to-drop-table says, with the changelog; the new one stays.
    let left: (Option<String>, Option<String>, Option<String>) = client
        .query_one("SELECT to_regclass('brief')::text, to_regclass('_brief_del')::text, to_regclass('_brief_ghc')::text", &[])
        .await
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .unwrap();
    assert_eq!(left, (Some("brief".to_string()), None, None));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_right_after_the_swap_back_a_resume_refuses_to_make_the_change_again() {
    let db = Cluster::primary().fresh_db("revert_killed_back");
    binary::narrow_table(&db, "back", 300);
    let client = db.client().await;
    let original: u32 = client.query_one("SELECT 'back'::regclass::oid", &[]).await.unwrap().get(0);
    let args = ["--table", "back", "--alter", "ADD COLUMN note text", "--execute", "--revertible-for", "10m"];
    // The second commit of a cut-over is the revert's swap back.
    let mut cmd = binary::command(&db, "run", &args);
    cmd.env("PG_GHOST_FAULT", "cut-over-after-commit@2");
    let mut run = tokio::spawn(async move { cmd.output().await.expect("start pg-ghost") });
    wait_for_window(&client, "back", &mut run).await;
    let _ = binary::command(&db, "revert", &["--table", "back", "--wait", "10s"]).output().await.unwrap();
    let out = finish(run).await;
    assert!(!out.status.success(), "pg-ghost was not killed:\n{}", binary::stderr(&out));
    let now: u32 = client.query_one("SELECT 'back'::regclass::oid", &[]).await.unwrap().get(0);
    assert_eq!(now, original, "the swap back had committed");

    let mut resumed = args.to_vec();
    resumed.push("--resume");
    let out = binary::run(&db, &resumed).await;
    binary::assert_failure(&out, 3, "was reverted");
    let columns: i64 = client
        .query_one("SELECT count(*) FROM information_schema.columns WHERE table_name = 'back' AND column_name = 'note'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(columns, 0, "the change was made again");
    binary::assert_success(&binary::cleanup(&db, &["--table", "back"]).await);
    assert_eq!(slots(&client).await, Vec::<String>::new());
}

/// Every kind of dependent the swap moves (views on views, incoming foreign keys, triggers
/// with their states, a rule, policies with row security forced, a publication with a column
/// list and a row filter, a function of the row type, a materialized view with an index and a
/// view on it) and an outgoing foreign key: after a
/// revert under the control-table workload the whole database's schema is as before the run,
/// and the table equals its control, `last_update` included (the old table's
/// `last_update = now()` trigger must not fire on the reverse stream's writes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revert_moves_every_dependent_back() {
    let db = Cluster::primary().fresh_db("revert_deps");
    let table = OracleTable::create(&db, "orders", KeyKind::Identity, 3_000).await;
    db.psql(crate::dependents::APP_SCHEMA);
    db.psql(
        "CREATE TABLE public.spares (id int PRIMARY KEY);
         INSERT INTO public.spares SELECT g FROM generate_series(0, 999) g;
         ALTER TABLE public.orders ADD CONSTRAINT orders_spare_fkey FOREIGN KEY (spare) REFERENCES public.spares (id);
         CREATE MATERIALIZED VIEW reporting.order_buckets AS SELECT id % 10 AS bucket, count(*) AS orders FROM public.orders GROUP BY 1;
         CREATE UNIQUE INDEX order_buckets_bucket ON reporting.order_buckets (bucket);
         CREATE VIEW reporting.bucket_list AS SELECT bucket FROM reporting.order_buckets;",
    );
    let before = WholeSchema::take(&db).await;
    let workload = Workload::start(&db, &table, WorkloadOptions::new(3).rate(Some(80))).await;

    let alter = "ALTER COLUMN spare TYPE bigint, ADD COLUMN flag boolean NOT NULL DEFAULT true";
    let (_, report) = revert_after_writes(&db, workload, "orders", &["--alter", alter, "--chunk-size", "500"]).await;
    let client = db.client().await;
    assert!(report.committed_after_swap_by_op.get("update_columns").copied().unwrap_or(0) > 0, "no updates in the window: {report:?}");

    table.assert_matches_control(&client, &table.projection().add("last_update", "last_update")).await;
    assert_eq!(crate::dependents::foreign_keys_not_valid(&client).await, Vec::<String>::new(), "every foreign key moved back is validated");
    let twin = before.twin_after_plain_sql(&db, "SELECT 1").await;
    assert_whole_schema_equal(&db, &twin, "after a revert, every dependent is back on the original").await;
    // Built again on the original before the swap back: it holds what its query returned then.
    let buckets: i64 = client.query_one("SELECT count(*) FROM reporting.order_buckets", &[]).await.unwrap().get(0);
    assert_eq!(buckets, 10, "the materialized view built again on the original is populated");
    crate::dependents::assert_no_slots_or_publications_but(&client, &["app_pub"]).await;
}

/// A view created during the window on a column the ALTER added cannot move back: the revert
/// is refused naming it and changes nothing; the window stays open, and once the view is gone
/// the revert goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dependent_on_an_added_column_refuses_the_revert_and_changes_nothing() {
    let db = Cluster::primary().fresh_db("revert_added_dep");
    binary::narrow_table(&db, "flagged", 1_000);
    db.psql("CREATE VIEW flagged_n AS SELECT id, n FROM flagged");
    let client = db.client().await;
    let original: u32 = client.query_one("SELECT 'flagged'::regclass::oid", &[]).await.unwrap().get(0);
    let before = WholeSchema::take(&db).await;
    let mut run = spawn_run(&db, &["--table", "flagged", "--alter", "ADD COLUMN flag boolean NOT NULL DEFAULT true", "--execute", "--revertible-for", "10m", "--ok-to-drop-table"]);
    wait_for_window(&client, "flagged", &mut run).await;
    client.batch_execute("CREATE VIEW public.flags AS SELECT id, flag FROM public.flagged; UPDATE flagged SET n = -n WHERE id <= 10").await.unwrap();

    let in_window = CatalogSnapshot::take(&client).await;
    let new_oid: u32 = client.query_one("SELECT 'flagged'::regclass::oid", &[]).await.unwrap().get(0);
    let refused = binary::command(&db, "revert", &["--table", "flagged"]).output().await.expect("start pg-ghost revert");
    binary::assert_failure(&refused, 3, "flags");
    assert!(binary::stderr(&refused).contains("\"flag\""), "{}", binary::stderr(&refused));
    assert_catalog_unchanged(&in_window, &CatalogSnapshot::take(&client).await);
    let now: u32 = client.query_one("SELECT 'flagged'::regclass::oid", &[]).await.unwrap().get(0);
    assert_eq!(now, new_oid, "the refused revert moved the table");
    assert!(!run.is_finished(), "a refused revert ended the window");

    client.batch_execute("DROP VIEW public.flags").await.unwrap();
    binary::assert_success(&binary::command(&db, "revert", &["--table", "flagged"]).output().await.expect("start pg-ghost revert"));
    binary::assert_success(&finish(run).await);
    let now: u32 = client.query_one("SELECT 'flagged'::regclass::oid", &[]).await.unwrap().get(0);
    assert_eq!(now, original, "the original is not back under its name");
    let diff = compare_rows(&client, "SELECT id, n, pad FROM flagged", "SELECT id, CASE WHEN id <= 10 THEN -n ELSE n END, pad FROM flagged_before").await;
    assert!(diff.is_empty(), "{diff:?}");
    let twin = before.twin_after_plain_sql(&db, "SELECT 1").await;
    assert_whole_schema_equal(&db, &twin, "after the revert, the view is back on the original").await;
}

/// The ALTER renames a column that a view, a trigger, a policy and a publication's column
/// list use (and a constraint trigger moves too): after the revert they name it by its old name again. A view created during the
/// window on the renamed column comes back reading the old one, and a trigger dropped during
/// the window stays dropped: the old table ends with the new table's dependents.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renamed_column_is_named_back_in_the_dependents_the_revert_moves() {
    let db = Cluster::primary().fresh_db("revert_rename_deps");
    binary::narrow_table(&db, "t", 300);
    db.psql(
        "CREATE TABLE expected AS TABLE t;
         CREATE VIEW t_pads AS SELECT id, pad FROM t WHERE pad IS NOT NULL;
         CREATE FUNCTION keep() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$;
         CREATE TRIGGER t_pad_changed BEFORE UPDATE OF pad ON t FOR EACH ROW WHEN (OLD.pad IS DISTINCT FROM NEW.pad) EXECUTE FUNCTION keep();
         CREATE TRIGGER t_dropped_in_window BEFORE INSERT ON t FOR EACH ROW EXECUTE FUNCTION keep();
         CREATE FUNCTION checked() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NULL; END $$;
         CREATE CONSTRAINT TRIGGER t_checked AFTER UPDATE ON t DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION checked();
         ALTER TABLE t ENABLE ROW LEVEL SECURITY;
         CREATE POLICY t_pad_rows ON t FOR SELECT USING (pad IS NULL OR pad <> '');
         CREATE PUBLICATION t_pub FOR TABLE t (id, pad);
         CREATE TABLE t_refs (id int PRIMARY KEY, t_id bigint REFERENCES t (id) ON DELETE CASCADE);
         INSERT INTO t_refs SELECT id, id FROM t WHERE id % 10 = 0;",
    );
    let before = WholeSchema::take(&db).await;
    let client = db.client().await;
    let mut run = spawn_run(&db, &["--table", "t", "--alter", "RENAME COLUMN pad TO filler", "--execute", "--revertible-for", "10m", "--ok-to-drop-table"]);
    wait_for_window(&client, "t", &mut run).await;
    client
        .batch_execute(
            "UPDATE t SET filler = 'x' || id WHERE id <= 5; DELETE FROM t WHERE id = 20; INSERT INTO t (id, n) VALUES (1000, 1000);
             CREATE VIEW t_fillers AS SELECT id, filler FROM t;
             DROP TRIGGER t_dropped_in_window ON t;",
        )
        .await
        .unwrap();
    let revert = binary::command(&db, "revert", &["--table", "t", "--wait", "60s"]).output().await.expect("start pg-ghost revert");
    let out = finish(run).await;
    binary::assert_success(&revert);
    binary::assert_success(&out);

    db.psql("UPDATE expected SET pad = 'x' || id WHERE id <= 5; DELETE FROM expected WHERE id = 20; INSERT INTO expected (id, n) VALUES (1000, 1000)");
    let diff = compare_rows(&client, "SELECT * FROM t", "SELECT * FROM expected").await;
    assert!(diff.is_empty(), "{diff:?}");
    let refs = compare_rows(&client, "SELECT id, t_id FROM t_refs", "SELECT id, id FROM expected WHERE id % 10 = 0 AND id <= 300").await;
    assert!(refs.is_empty(), "the cascade of the window's delete: {refs:?}");
    let twin = before
        .twin_after_plain_sql(
            &db,
            "CREATE VIEW public.t_fillers AS SELECT id, pad AS filler FROM public.t;
             DROP TRIGGER t_dropped_in_window ON public.t",
        )
        .await;
    assert_whole_schema_equal(&db, &twin, "the dependents are back on the original, under its column names").await;
    assert_eq!(crate::dependents::foreign_keys_not_valid(&client).await, Vec::<String>::new());
    assert_eq!(slots(&client).await, Vec::<String>::new());
}

/// The pg-ghost serving the window is killed; `pg-ghost revert` then takes the window up
/// itself (as `run --resume` would), catches the reverse stream up with the writes made
/// while no pg-ghost ran, and swaps back, under the control-table workload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revert_takes_up_a_window_no_pg_ghost_serves() {
    let db = Cluster::primary().fresh_db("revert_take_up");
    let table = OracleTable::create(&db, "orders", KeyKind::Identity, 2_000).await;
    let before = WholeSchema::take(&db).await;
    let workload = Workload::start(&db, &table, WorkloadOptions::new(3).rate(Some(80))).await;
    workload.wait_for_more_commits(20, Duration::from_secs(30)).await;
    let alter = "ALTER COLUMN n TYPE bigint, ADD COLUMN flag boolean NOT NULL DEFAULT true";
    let mut run = spawn_run(&db, &["--table", "orders", "--alter", alter, "--execute", "--revertible-for", "10m", "--chunk-size", "500"]);
    let client = db.client().await;
    wait_for_window(&client, "orders", &mut run).await;
    run.abort();
    let _ = run.await;
    wait_until(&client, "the killed run's walsender gone", "SELECT NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE active)").await;
    let killed_at = workload.committed_after_swap();
    while workload.committed_after_swap() < killed_at + 40 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let revert = binary::command(&db, "revert", &["--table", "orders"]).output().await.expect("start pg-ghost revert");
    binary::assert_success(&revert);
    assert!(binary::stderr(&revert).contains("taking it up here"), "{}", binary::stderr(&revert));
    workload.wait_for_more_commits(20, Duration::from_secs(30)).await;
    let report = workload.stop().await;
    assert!(report.errors.is_empty(), "workload errors (seed {}): {:#?}", report.seed, report.errors);

    table.assert_matches_control(&client, &table.projection()).await;
    assert_sequences_ahead(&client, &table.qualified()).await;
    // Without the first run's --ok-to-drop-table the table that carried the change is kept;
    // nothing points at it.
    client.batch_execute("DROP TABLE public._orders_gho").await.expect("the kept table drops without CASCADE");
    assert_as_before_the_run(&db, &before, "after a revert that took the window up, the database is as before the run").await;
    assert_eq!(recorded_outcomes(&client, "orders").await, [Some("reverted".to_string())]);
}

/// SIGTERM in the window (a restart) leaves it open: the reverse slot stays, and `pg-ghost
/// revert` takes the window up and swaps back with every write, those made while no pg-ghost
/// ran included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_in_the_window_leaves_it_open_for_revert() {
    let db = Cluster::primary().fresh_db("revert_sigterm");
    binary::narrow_table(&db, "t", 500);
    let client = db.client().await;
    let original: u32 = client.query_one("SELECT 't'::regclass::oid", &[]).await.unwrap().get(0);
    let before = WholeSchema::take(&db).await;
    let mut run = spawn_run(&db, &["--table", "t", "--alter", "ALTER COLUMN n TYPE bigint", "--execute", "--revertible-for", "10m", "--ok-to-drop-table"]);
    wait_for_window(&client, "t", &mut run).await;
    client.batch_execute("UPDATE t SET n = n + 1 WHERE id <= 10").await.unwrap();
    let pid: i32 = client.query_one("SELECT pid FROM pgghost.runs WHERE table_name = 't'", &[]).await.unwrap().get(0);
    let killed = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status().expect("run kill");
    assert!(killed.success());
    let out = finish(run).await;
    binary::assert_failure(&out, 4, "left open");

    let reverse = format!("pg_ghost_{original}_rev");
    wait_until(&client, "the stopped run's walsender gone", "SELECT NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE active)").await;
    assert_eq!(slots(&client).await, vec![reverse], "the reverse slot is kept");
    assert_eq!(binary::changelog_value(&client, "t", "state").await.as_deref(), Some("revert-window"));
    client.batch_execute("DELETE FROM t WHERE id = 20; INSERT INTO t VALUES (5000, 5000000000, 'big but reverted away')").await.unwrap();
    client.batch_execute("DELETE FROM t WHERE id = 5000").await.unwrap();

    binary::assert_success(&binary::command(&db, "revert", &["--table", "t"]).output().await.expect("start pg-ghost revert"));
    let now: u32 = client.query_one("SELECT 't'::regclass::oid", &[]).await.unwrap().get(0);
    assert_eq!(now, original, "the original is not back under its name");
    let expected = "SELECT id, CASE WHEN id <= 10 THEN n + 1 ELSE n END, pad FROM t_before WHERE id <> 20";
    let diff = compare_rows(&client, "SELECT id, n, pad FROM t", expected).await;
    assert!(diff.is_empty(), "{diff:?}");
    client.batch_execute("DROP TABLE public._t_gho").await.expect("the kept table drops without CASCADE");
    assert_as_before_the_run(&db, &before, "after SIGTERM in the window and a revert").await;
    assert_eq!(recorded_outcomes(&client, "t").await, [Some("reverted".to_string())]);
}

/// A partitioned table (a range level with a default, a hash sub-level, a partition's own
/// index) under a workload that moves rows between partitions: the reverse stream comes
/// through the new tree's root, the revert gives every partition of the old tree its name
/// back, and the database is as before the run with every write of the window kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_table_reverts_with_its_partitions() {
    use crate::partitioned::{BY_TENANT, TENANT_TREE};
    let db = Cluster::primary().fresh_db("revert_part");
    let table = OracleTable::create_partitioned(&db, "orders", KeyKind::Composite, 3_000, BY_TENANT, TENANT_TREE).await;
    db.psql("CREATE INDEX orders_t1_n ON public.orders_t1 (n)");
    let before = WholeSchema::take(&db).await;
    let workload = Workload::start(&db, &table, WorkloadOptions::new(3).rate(Some(80))).await;

    // The CHECK without a name is copied to every partition, whose copies follow the parent's
    // name through the swap and back.
    let alter = "ALTER COLUMN n TYPE bigint, ADD COLUMN flag boolean NOT NULL DEFAULT true, ADD CHECK (n = n OR n IS NULL)";
    let (out, report) = revert_after_writes(&db, workload, "orders", &["--alter", alter, "--chunk-size", "500"]).await;
    let log = binary::stderr(&out);
    assert!(log.lines().any(|l| l.contains("publication created (via the partition root)") && l.contains("_rev")), "the reverse publication is not the root's:\n{log}");
    let client = db.client().await;
    assert!(report.committed_after_swap_by_op.get("insert").copied().unwrap_or(0) > 0, "no inserts in the window: {report:?}");

    table.assert_matches_control(&client, &table.projection()).await;
    assert_eq!(db.psql("SELECT count(*) FROM pg_attribute WHERE attname = 'flag' AND NOT attisdropped"), "0", "a partition kept the ALTER's column");
    assert_as_before_the_run(&db, &before, "after a revert, the database is as before the run").await;
}

/// Partitions with objects of their own (keys, triggers in each state, row security and a
/// policy, statistics, column settings, views, publications) under the workload: during the
/// window the old partitions' own triggers fire on none of the reverse stream's writes, and the
/// revert gives them back the objects that moved to the new partitions, leaving the database as
/// before the run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_with_objects_of_their_own_revert() {
    use crate::partitioned::{BY_TENANT, PARTITIONS_OWN, PARTITIONS_OWN_DEPENDENTS, TENANT_TREE};
    let db = Cluster::primary().fresh_db("revert_part_own");
    let table = OracleTable::create_partitioned(&db, "orders", KeyKind::Composite, 3_000, BY_TENANT, TENANT_TREE).await;
    db.psql(&format!("{PARTITIONS_OWN} {PARTITIONS_OWN_DEPENDENTS}"));
    let before = WholeSchema::take(&db).await;
    let workload = Workload::start(&db, &table, WorkloadOptions::new(3).rate(Some(80))).await;

    let alter = "ALTER COLUMN spare TYPE bigint, ADD COLUMN note text NOT NULL DEFAULT 'none'";
    let (out, _) = revert_after_writes(&db, workload, "orders", &["--alter", alter, "--chunk-size", "500"]).await;
    let log = binary::stderr(&out);
    let client = db.client().await;
    table.assert_matches_control(&client, &table.projection()).await;
    assert_eq!(db.psql("SELECT count(*) FROM public.trigger_log WHERE app LIKE 'pg-ghost%'"), "0", "a partition's trigger fired on pg-ghost's writes:\n{log}");
    let twin = before.twin_after_plain_sql(&db, "SELECT 1").await;
    assert_whole_schema_equal(&db, &twin, "after a revert, the partitions have their own objects as before the run").await;
    crate::dependents::assert_no_slots_or_publications_but(&client, &["rest_inserts", "t1_pub"]).await;
}

/// A conversion into a partitioned table, reverted while a new partition has a trigger of its
/// own: the plain table has no partition to take it back, so the revert is refused, naming the
/// partition, and changes nothing; once the trigger is gone the revert goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_partitions_own_trigger_refuses_the_revert_of_a_conversion() {
    let db = Cluster::primary().fresh_db("revert_conv_own");
    OracleTable::create(&db, "orders", KeyKind::Composite, 500).await;
    db.psql("ALTER TABLE public.orders RESET (fillfactor); CREATE FUNCTION public.nothing() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$;");
    let client = db.client().await;
    let before = WholeSchema::take(&db).await;
    let file = two_tenant_partitions(&db);
    let args = ["--table", "orders", "--partition-by", "RANGE (tenant)", "--partitions", &file, "--execute", "--revertible-for", "10m", "--ok-to-drop-table"];
    let mut run = spawn_run(&db, &args);
    wait_for_window(&client, "orders", &mut run).await;
    client.batch_execute("CREATE TRIGGER low_touch BEFORE UPDATE ON public.orders_low FOR EACH ROW EXECUTE FUNCTION public.nothing()").await.unwrap();

    let in_window = CatalogSnapshot::take(&client).await;
    let refused = binary::command(&db, "revert", &["--table", "orders"]).output().await.expect("start pg-ghost revert");
    binary::assert_failure(&refused, 3, "partition \"public\".\"orders_low\" of the new table");
    assert_catalog_unchanged(&in_window, &CatalogSnapshot::take(&client).await);
    assert!(!run.is_finished(), "a refused revert ended the window");

    client.batch_execute("DROP TRIGGER low_touch ON public.orders_low").await.unwrap();
    revert_now(&db, "orders", run).await;
    assert_eq!(db.psql("SELECT relkind FROM pg_class WHERE oid = 'public.orders'::regclass"), "r", "the plain table is not back");
    assert_as_before_the_run(&db, &before, "after reverting a conversion, the database is as before the run").await;
}

/// A table with a foreign key to itself (`ON DELETE CASCADE`): during the window the old table
/// does without it (the reverse stream deletes a key before writing it again, which the key
/// would refuse mid-batch) while the new table enforces it; the revert adds it back on the old
/// table and validates it. Writes in the window insert children of new and old rows and delete
/// a parent whose children cascade; afterwards the rows equal the same writes on a copy, and
/// the database is as before the run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_with_a_foreign_key_to_itself_reverts() {
    let db = Cluster::primary().fresh_db("revert_selfref");
    let tables = |name: &str| {
        format!(
            "CREATE TABLE {name} (id bigint PRIMARY KEY, parent bigint, n int NOT NULL);
             ALTER TABLE {name} ADD CONSTRAINT {name}_parent_fkey FOREIGN KEY (parent) REFERENCES {name} (id) ON DELETE CASCADE;
             INSERT INTO {name} SELECT g, CASE WHEN g > 10 THEN g % 10 + 1 END, g FROM generate_series(1, 500) g;"
        )
    };
    db.psql(&tables("tree"));
    let client = db.client().await;
    let before = WholeSchema::take(&db).await;
    db.psql(&tables("tree_expected"));

    let mut run = spawn_run(&db, &["--table", "tree", "--alter", "ALTER COLUMN n TYPE bigint", "--execute", "--revertible-for", "10m", "--ok-to-drop-table"]);
    wait_for_window(&client, "tree", &mut run).await;
    let writes = "INSERT INTO {t} VALUES (1001, 3, 1), (1002, 1001, 2);
                  UPDATE {t} SET parent = 1002, n = n + 1 WHERE id BETWEEN 20 AND 40;
                  DELETE FROM {t} WHERE id = 4;
                  INSERT INTO {t} VALUES (1003, 1002, 3);";
    db.psql(&writes.replace("{t}", "tree"));
    db.psql(&writes.replace("{t}", "tree_expected"));
    // The new table enforces the key meanwhile.
    let refused = client.batch_execute("INSERT INTO tree VALUES (2000, 99999, 0)").await;
    assert!(refused.is_err(), "the new table took a row whose parent does not exist");
    wait_until(&client, "the old table caught up", "SELECT count(*) = (SELECT count(*) FROM tree_expected) FROM _tree_del").await;

    let out = revert_now(&db, "tree", run).await;

    let differing = db.psql(
        "SELECT count(*) FROM ((TABLE tree EXCEPT TABLE tree_expected) UNION ALL (TABLE tree_expected EXCEPT TABLE tree)) d",
    );
    assert_eq!(differing, "0", "the reverted table differs from the same writes on a copy:\n{}", binary::stderr(&out));
    assert_eq!(db.psql("SELECT convalidated FROM pg_constraint WHERE conname = 'tree_parent_fkey' AND conrelid = 'tree'::regclass"), "t");
    db.psql("DROP TABLE tree_expected");
    assert_as_before_the_run(&db, &before, "after a revert, the database is as before the run").await;
}

/// A conversion into a partitioned table reverted: the reverse stream comes from the
/// partitioned table's root and writes back into the plain table by the original key; the
/// revert gives the plain table its name back and the database is as before the run, every
/// write of the window kept (the workload moves rows between the partitions meanwhile).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conversion_into_a_partitioned_table_reverts() {
    let db = Cluster::primary().fresh_db("revert_conv");
    let table = OracleTable::create(&db, "orders", KeyKind::Composite, 3_000).await;
    // A partitioned table takes no storage parameters of its own.
    db.psql("ALTER TABLE public.orders RESET (fillfactor); CREATE VIEW public.orders_small AS SELECT tenant, id, n FROM public.orders WHERE n < 1000;");
    let before = WholeSchema::take(&db).await;
    let file = two_tenant_partitions(&db);
    let workload = Workload::start(&db, &table, WorkloadOptions::new(3).rate(Some(80))).await;

    let args = ["--partition-by", "RANGE (tenant)", "--partitions", &file, "--alter", "ADD COLUMN note text NOT NULL DEFAULT 'none'", "--chunk-size", "500"];
    revert_after_writes(&db, workload, "orders", &args).await;

    let client = db.client().await;
    assert_eq!(db.psql("SELECT relkind FROM pg_class WHERE oid = 'public.orders'::regclass"), "r", "the plain table is not back");
    table.assert_matches_control(&client, &table.projection()).await;
    assert_as_before_the_run(&db, &before, "after reverting a conversion, the database is as before the run").await;
}

/// A `--partitions` file splitting `orders` by tenant into two partitions; returns its path.
fn two_tenant_partitions(db: &TestDb<'_>) -> String {
    let file = crate::run_faults::flag_path(db, "partitions.sql");
    std::fs::write(
        &file,
        "CREATE TABLE orders_low PARTITION OF orders FOR VALUES FROM (1) TO (5);
         CREATE TABLE orders_high PARTITION OF orders FOR VALUES FROM (5) TO (9);",
    )
    .unwrap();
    file.to_string_lossy().into_owned()
}
