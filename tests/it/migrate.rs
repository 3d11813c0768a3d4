//! `pg-ghost migrate`: an expand → migrate → contract directory applied under the
//! control-table workload (the whole database ends as the files run plainly on a twin leave
//! it, the data equal the control table), `--phase expand` stopping before the rest,
//! `--status` and `--plan` (which changes nothing); an applied file whose checksum changed
//! stops everything with both values; a failed statement is recorded and the next run
//! resumes at it.

use crate::binary;
use crate::harness::{Cluster, TestDb};
use crate::oracle::*;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

/// An expand → migrate → contract directory on the oracle table `orders` (the fleet's tests
/// apply it to many tenants).
pub const FILES: [(&str, &str); 4] = [
    (
        "V1__add_region.sql",
        "-- pg-ghost: phase=expand\n\
         ALTER TABLE orders ADD COLUMN region text;\n\
         ALTER TABLE orders ALTER COLUMN region SET DEFAULT 'eu';\n\
         CREATE INDEX orders_region_idx ON orders (region);\n",
    ),
    (
        "V2__backfill_region.sql",
        "-- pg-ghost: phase=migrate\n\
         -- in batches, one statement each: a failure resumes at the batch that failed\n\
         UPDATE orders SET region = 'eu' WHERE id BETWEEN 1 AND 1000 AND region IS NULL;\n\
         UPDATE orders SET region = 'eu' WHERE id BETWEEN 1001 AND 2000 AND region IS NULL;\n\
         UPDATE orders SET region = 'eu' WHERE region IS NULL;\n",
    ),
    ("V10__widen_n.sql", "-- pg-ghost: phase=migrate\nALTER TABLE orders ALTER COLUMN n TYPE bigint;\n"),
    (
        "V11__contract.sql",
        "-- pg-ghost: phase=contract\n\
         ALTER TABLE orders ADD CONSTRAINT orders_region_set CHECK (region IS NOT NULL);\n\
         ALTER TABLE orders DROP COLUMN spare;\n",
    ),
];

pub fn migrations_dir(name: &str, files: &[(&str, &str)]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("pg-ghost-migrate-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create the migrations directory");
    for (file, text) in files {
        std::fs::write(dir.join(file), text).expect("write a migration file");
    }
    dir
}

async fn migrate(db: &TestDb<'_>, dir: &Path, args: &[&str]) -> Output {
    let dir = dir.to_str().expect("a UTF-8 path");
    let mut all = vec!["--dir", dir, "--lock-timeout", "500ms"];
    all.extend(args);
    binary::command(db, "migrate", &all).output().await.expect("start pg-ghost migrate")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// version → status, statements done, as `pgghost.migrations` holds them.
pub fn recorded(db: &TestDb<'_>) -> String {
    db.psql("SELECT string_agg(version || ':' || status || ':' || statements_done, ' ' ORDER BY string_to_array(version, '.')::int[]) FROM pgghost.migrations")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expand_migrate_contract_under_load_ends_as_the_plain_files() {
    let db = Cluster::primary().fresh_db("migrate_load");
    let table = OracleTable::create(&db, "orders", KeyKind::Identity, 3_000).await;
    let before = WholeSchema::take(&db).await;
    let dir = migrations_dir("load", &FILES);
    let workload = Workload::start(&db, &table, WorkloadOptions::new(3).rate(Some(80))).await;
    workload.wait_for_more_commits(30, Duration::from_secs(30)).await;

    // --plan changes nothing, and says how each statement would run.
    let out = migrate(&db, &dir, &["--plan"]).await;
    binary::assert_success(&out);
    let plan = stdout(&out);
    assert!(plan.contains("V1__add_region.sql [expand]") && plan.contains("V11__contract.sql [contract]"), "{plan}");
    assert!(plan.contains("CREATE INDEX CONCURRENTLY orders_region_idx"), "{plan}");
    assert!(plan.contains("online (pg-ghost run --strategy auto)"), "{plan}");
    assert_eq!(db.psql("SELECT to_regclass('pgghost.migrations') IS NULL"), "t", "--plan created the migrations table");
    assert_eq!(db.psql("SELECT count(*) FROM pg_attribute WHERE attrelid = 'orders'::regclass AND attname = 'region'"), "0");

    // --phase expand stops before the migrate and contract files.
    let out = migrate(&db, &dir, &["--phase", "expand"]).await;
    binary::assert_success(&out);
    assert_eq!(recorded(&db), "1:applied:3");
    let status = stdout(&migrate(&db, &dir, &["--status"]).await);
    assert!(status.lines().any(|l| l.starts_with("V1 ") && l.contains("applied")), "{status}");
    assert!(status.lines().any(|l| l.starts_with("V11 ") && l.contains("pending")), "{status}");
    assert_eq!(db.psql("SELECT count(*) FROM pg_index WHERE NOT indisvalid"), "0");

    workload.wait_for_more_commits(30, Duration::from_secs(30)).await;
    let out = migrate(&db, &dir, &[]).await;
    binary::assert_success(&out);
    assert_eq!(recorded(&db), "1:applied:3 2:applied:3 10:applied:1 11:applied:2");
    let run_ids = db.psql("SELECT count(*) FROM pgghost.migrations m JOIN pgghost.runs r ON r.run_id = ANY (m.run_ids)");
    assert_eq!(run_ids, db.psql("SELECT sum(cardinality(run_ids)) FROM pgghost.migrations"), "every run id names a run");
    assert_eq!(db.psql("SELECT count(*) FROM pgghost.runs"), "5", "one run per ALTER TABLE");
    assert_eq!(stdout(&migrate(&db, &dir, &[]).await), "nothing to apply\n");

    workload.wait_for_more_commits(30, Duration::from_secs(30)).await;
    let report = workload.stop().await;
    assert!(report.errors.is_empty(), "workload errors (seed {}): {:#?}", report.seed, report.errors);
    let client = db.client().await;
    table.assert_matches_control(&client, &table.projection().add("region", "'eu'::text").map("n", "n::bigint").drop("spare")).await;
    let plain: String = FILES.iter().map(|(_, text)| *text).collect();
    let twin = before.twin_after_plain_sql(&db, &plain).await;
    assert_whole_schema_equal(&db, &twin, "the migration files").await;
    assert_no_slots_or_publications(&client).await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_applied_file_that_changed_stops_everything_with_both_checksums() {
    let db = Cluster::primary().fresh_db("migrate_checksum");
    let dir = migrations_dir("checksum", &[("V1__t.sql", "CREATE TABLE t (id int PRIMARY KEY);\n"), ("V2__u.sql", "CREATE TABLE u (id int);\n")]);
    binary::assert_success(&migrate(&db, &dir, &["--target", "1"]).await);
    assert_eq!(recorded(&db), "1:applied:1");
    let old = db.psql("SELECT checksum FROM pgghost.migrations WHERE version = '1'");
    let text = "CREATE TABLE t (id bigint PRIMARY KEY);\n";
    std::fs::write(dir.join("V1__t.sql"), text).unwrap();
    let new = db.psql(&format!("SELECT encode(sha256(convert_to({}, 'UTF8')), 'hex')", literal(text)));
    let out = migrate(&db, &dir, &[]).await;
    binary::assert_failure(&out, 3, &format!("V1__t.sql was applied with checksum {old} but the file now has checksum {new}"));
    assert_eq!(db.psql("SELECT to_regclass('u') IS NULL"), "t", "nothing ran after the changed file was found");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_statement_is_recorded_and_the_next_run_resumes_at_it() {
    let db = Cluster::primary().fresh_db("migrate_resume");
    let file = "CREATE TABLE a (id int PRIMARY KEY);\n\
                INSERT INTO b VALUES (1);\n\
                CREATE INDEX a_id_idx ON a (id);\n";
    let dir = migrations_dir("resume", &[("V1__tables.sql", file)]);
    let out = migrate(&db, &dir, &[]).await;
    binary::assert_failure(&out, 1, "V1__tables.sql, statement 2 of 3");
    assert_eq!(recorded(&db), "1:failed:1");
    assert!(db.psql("SELECT error FROM pgghost.migrations").contains("\"b\" does not exist"));
    let status = stdout(&migrate(&db, &dir, &["--status"]).await);
    assert!(status.contains("failed") && status.contains("at statement 2 of 3"), "{status}");

    // CREATE TABLE a would fail if it ran again: the resumed run starts at the INSERT.
    db.psql("CREATE TABLE b (id int)");
    let out = migrate(&db, &dir, &[]).await;
    binary::assert_success(&out);
    assert_eq!(recorded(&db), "1:applied:3");
    assert_eq!(db.psql("SELECT count(*) FROM b"), "1");
    assert_eq!(db.psql("SELECT to_regclass('a_id_idx') IS NOT NULL"), "t");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_block_with_an_online_step_is_refused() {
    let db = Cluster::primary().fresh_db("migrate_atomic");
    db.psql("CREATE TABLE t (id int PRIMARY KEY)");
    let dir = migrations_dir("atomic", &[("V1__mixed.sql", "BEGIN;\nINSERT INTO t VALUES (1);\nALTER TABLE t ADD COLUMN c int;\nCOMMIT;\n")]);
    let out = migrate(&db, &dir, &[]).await;
    binary::assert_failure(&out, 3, "statement 3 (ALTER TABLE t ADD COLUMN c int) would run online");
    assert_eq!(db.psql("SELECT count(*) FROM t"), "0");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn target_stops_at_its_version_and_status_and_plan_speak_json() {
    let db = Cluster::primary().fresh_db("migrate_target");
    db.psql("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t SELECT generate_series(1, 50)");
    let dir = migrations_dir(
        "target",
        &[
            ("V1__a.sql", "-- pg-ghost: phase=expand\nALTER TABLE t ADD COLUMN a int;\n"),
            ("V2__b.sql", "ALTER TABLE t ADD COLUMN b int;\nCREATE INDEX t_b_idx ON t (b);\n"),
            ("V3__c.sql", "-- pg-ghost: phase=contract\nALTER TABLE t DROP COLUMN a;\n"),
        ],
    );
    binary::assert_success(&migrate(&db, &dir, &["--target", "V2"]).await);
    assert_eq!(recorded(&db), "1:applied:1 2:applied:2");
    assert_eq!(db.psql("SELECT string_agg(attname, ',' ORDER BY attnum) FROM pg_attribute WHERE attrelid = 't'::regclass AND attnum > 0 AND NOT attisdropped"), "id,a,b");

    // --status as JSON: every version, V3 still pending.
    let out = migrate(&db, &dir, &["--status", "--format", "json"]).await;
    binary::assert_success(&out);
    let status: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("--status --format json is JSON");
    let states: Vec<String> = status.as_array().unwrap().iter().map(|r| format!("{}:{}", r["version"].as_str().unwrap(), r["state"].as_str().unwrap())).collect();
    assert_eq!(states, ["1:applied", "2:applied", "3:pending"]);
    assert_eq!(status[0]["phase"], "expand");
    assert_eq!(status[1]["statements_done"], 2);
    assert_eq!(status[2]["applied_at"], serde_json::Value::Null);

    // --plan as JSON: the pending file, its statement online, with what `plan` says of it.
    let out = migrate(&db, &dir, &["--plan", "--format", "json"]).await;
    binary::assert_success(&out);
    let plan: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("--plan --format json is JSON");
    assert_eq!(plan.as_array().unwrap().len(), 1, "{plan}");
    assert_eq!(plan[0]["file"], "V3__c.sql");
    let s = &plan[0]["statements"][0];
    assert_eq!(s["how"], "online (pg-ghost run --strategy auto)");
    assert!(s["plan"].is_object() && s["plan_error"].is_null(), "{s}");
    assert_eq!(db.psql("SELECT count(*) FROM pg_attribute WHERE attrelid = 't'::regclass AND attname = 'a' AND NOT attisdropped"), "1", "--plan changed the table");

    binary::assert_success(&migrate(&db, &dir, &[]).await);
    assert_eq!(recorded(&db), "1:applied:1 2:applied:2 3:applied:1");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_marked_direct_runs_as_written() {
    let db = Cluster::primary().fresh_db("migrate_direct");
    db.psql("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t SELECT generate_series(1, 50)");
    let dir = migrations_dir(
        "direct",
        &[
            (
                "V1__steps.sql",
                "ALTER TABLE t ADD COLUMN a int;\n\
                 -- pg-ghost: direct\n\
                 ALTER TABLE t ADD COLUMN b int;\n",
            ),
            // Atomic together: only possible because every statement runs as written.
            (
                "V2__atomic.sql",
                "BEGIN;\n\
                 INSERT INTO t VALUES (51);\n\
                 -- pg-ghost: direct\n\
                 ALTER TABLE t ADD COLUMN c int NOT NULL DEFAULT 7;\n\
                 COMMIT;\n",
            ),
        ],
    );
    let plan = stdout(&migrate(&db, &dir, &["--plan"]).await);
    assert!(plan.contains("1. ALTER TABLE t ADD COLUMN a int\n     how: online"), "{plan}");
    assert!(plan.contains("2. ALTER TABLE t ADD COLUMN b int\n     how: direct"), "{plan}");
    binary::assert_success(&migrate(&db, &dir, &[]).await);
    assert_eq!(recorded(&db), "1:applied:2 2:applied:0");
    // One online change (recorded as a run), the statement marked direct none.
    assert_eq!(db.psql("SELECT string_agg(alter_clauses, ' | ') FROM pgghost.runs"), "ADD COLUMN a int");
    assert_eq!(db.psql("SELECT cardinality(run_ids) FROM pgghost.migrations WHERE version = '1'"), "1");
    assert_eq!(db.psql("SELECT string_agg(attname, ',' ORDER BY attnum) FROM pg_attribute WHERE attrelid = 't'::regclass AND attnum > 0 AND NOT attisdropped"), "id,a,b,c");
    assert_eq!(db.psql("SELECT count(*) FILTER (WHERE c = 7) || '/' || count(*) FROM t"), "51/51");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signal_stops_between_statements_and_the_next_run_resumes_there() {
    let db = Cluster::primary().fresh_db("migrate_signal");
    db.psql("CREATE TABLE held (id int)");
    let dir = migrations_dir(
        "signal",
        &[("V1__three.sql", "CREATE TABLE a (id int);\nINSERT INTO held VALUES (1);\nCREATE TABLE b (id int);\n")],
    );
    // The second statement waits for a lock the test holds; SIGTERM comes meanwhile.
    let holder = db.client().await;
    holder.batch_execute("BEGIN; LOCK TABLE held IN ACCESS EXCLUSIVE MODE").await.unwrap();
    let dir_s = dir.to_str().unwrap();
    let child = binary::command(&db, "migrate", &["--dir", dir_s, "--lock-timeout", "500ms"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start pg-ghost migrate");
    for _ in 0..600 {
        let waiting = db.psql("SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'pg-ghost%' AND wait_event_type = 'Lock'");
        if waiting != "0" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(recorded(&db), "1:running:1", "the second statement is not the one waiting");
    let pid = child.id().expect("the pid").to_string();
    let killed = std::process::Command::new("kill").args(["-TERM", &pid]).status().expect("run kill");
    assert!(killed.success());
    holder.batch_execute("COMMIT").await.unwrap();
    let out = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output()).await.expect("migrate stops").unwrap();
    binary::assert_failure(&out, 4, "V1__three.sql, statement 3 of 3 (CREATE TABLE b (id int)): stopped by SIGTERM before this statement");
    assert_eq!(recorded(&db), "1:failed:2");
    assert_eq!(db.psql("SELECT to_regclass('b') IS NULL"), "t");

    binary::assert_success(&migrate(&db, &dir, &[]).await);
    assert_eq!(recorded(&db), "1:applied:3");
    assert_eq!(db.psql("SELECT count(*) FROM held"), "1", "the statement done before the signal ran again");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A migrate killed (SIGKILL) while an online ALTER copies: the next migrate takes the
/// change up where it stopped (the earlier run resumed, not refused for what it left), the
/// file ends applied, the rows are the original's with the change, nothing is left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migrate_killed_during_an_online_change_takes_it_up_again() {
    use crate::run_faults::{wait_for_state, Running};
    let db = Cluster::primary().fresh_db("mig_killed");
    binary::narrow_table(&db, "big", 300_000);
    let dir = migrations_dir("killed", &[("V1__retype.sql", "ALTER TABLE big ALTER COLUMN n TYPE bigint;\n")]);
    let client = db.client().await;
    let mut run = Running::spawn(&db, "migrate", &["--dir", dir.to_str().unwrap()]);
    wait_for_state(&client, &mut run, "big", "copy", Duration::from_secs(60)).await;
    run.kill9().await;
    crate::resume::wait_slot_released(&client).await;

    let out = migrate(&db, &dir, &[]).await;
    binary::assert_success(&out);
    let log = binary::stderr(&out);
    assert!(log.contains("an earlier run of this change was cut short: resuming it") && log.contains("resuming the earlier run"), "{log}");
    assert_eq!(db.psql("SELECT status FROM pgghost.migrations WHERE version = '1'"), "applied");
    assert_eq!(db.psql("SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'big'::regclass AND attname = 'n'"), "bigint");
    let differ = db.psql(
        "SELECT count(*) FROM ((SELECT id, n::bigint, pad FROM big_before EXCEPT ALL SELECT id, n, pad FROM big)
                               UNION ALL (SELECT id, n, pad FROM big EXCEPT ALL SELECT id, n::bigint, pad FROM big_before)) d",
    );
    assert_eq!(differ, "0", "the migrated rows differ from the original's");
    assert_no_slots_or_publications(&client).await;
    for t in ["_big_ghc", "_big_gho"] {
        assert!(!crate::run_refusals::relation_exists(&client, "public", t).await, "pg-ghost left {t} behind");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A `CREATE INDEX CONCURRENTLY` of a migration whose connection drops on pg-ghost's side
/// while the server goes on building (held back by a transaction of the test's): the next
/// attempt waits for that build and keeps its index, instead of failing on it ("already
/// exists") or dropping it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_index_build_whose_connection_drops_is_waited_for_and_kept() {
    let db = Cluster::primary().fresh_db("migrate_cic_drop");
    db.psql("CREATE TABLE t (id int PRIMARY KEY, n int); INSERT INTO t SELECT g, g FROM generate_series(1, 500) g");
    let dir = migrations_dir("cic_drop", &[("V1__index.sql", "CREATE INDEX CONCURRENTLY t_n_idx ON t (n);\n")]);
    let blocker = db.client().await;
    blocker.batch_execute("BEGIN; UPDATE t SET n = n WHERE id = 1").await.unwrap();
    let dir_s = dir.to_str().unwrap();
    let mut run = crate::run_faults::Running::spawn(&db, "migrate", &["--dir", dir_s, "--lock-timeout", "60s"]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let (pid, port) = loop {
        let found = db.psql(
            "SELECT pid || ' ' || client_port FROM pg_stat_activity
              WHERE datname = current_database() AND state = 'active' AND query LIKE 'CREATE INDEX CONCURRENTLY%' AND to_regclass('t_n_idx') IS NOT NULL",
        );
        if let Some((pid, port)) = found.split_once(' ') {
            break (pid.to_string(), port.parse::<i32>().unwrap());
        }
        run.assert_running("the index build").await;
        assert!(std::time::Instant::now() < deadline, "the index build never waited for the blocker");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    crate::reconnect::drop_connection(&db, port);
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(db.psql(&format!("SELECT state FROM pg_stat_activity WHERE pid = {pid}")), "active", "the server stopped the build: test nothing");
    blocker.batch_execute("COMMIT").await.unwrap();
    let out = run.wait(std::time::Duration::from_secs(90)).await;
    binary::assert_success(&out);
    assert!(binary::stderr(&out).contains("is built and valid: kept"), "{}", binary::stderr(&out));
    assert_eq!(recorded(&db), "1:applied:1");
    assert_eq!(db.psql("SELECT indisvalid::text FROM pg_index WHERE indexrelid = 't_n_idx'::regclass"), "true");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A statement run as written (here a transaction block) whose connection drops while the
/// server goes on with it: it commits by itself, so it is not run again (it was, and did its
/// work twice); the migration stops at it, saying that the server may have carried it out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_whose_connection_drops_is_not_run_again() {
    let db = Cluster::primary().fresh_db("migrate_direct_drop");
    db.psql("CREATE TABLE log (n int)");
    let dir = migrations_dir("direct_drop", &[("V1__log.sql", "BEGIN;\nSELECT pg_sleep(1);\nINSERT INTO log VALUES (1);\nCOMMIT;\n")]);
    let mut run = crate::run_faults::Running::spawn(&db, "migrate", &["--dir", dir.to_str().unwrap()]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let port = loop {
        let found = db.psql("SELECT client_port FROM pg_stat_activity WHERE datname = current_database() AND state = 'active' AND query LIKE '%pg_sleep(1)%' AND pid <> pg_backend_pid()");
        if let Ok(port) = found.parse::<i32>() {
            break port;
        }
        run.assert_running("the statement").await;
        assert!(std::time::Instant::now() < deadline, "the statement never ran");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    crate::reconnect::drop_connection(&db, port);
    let out = run.wait(std::time::Duration::from_secs(60)).await;
    crate::binary::assert_failure(&out, 1, "may have carried it out");
    assert_eq!(db.psql("SELECT count(*) FROM log"), "1", "the statement ran twice:\n{}", binary::stderr(&out));
    assert!(recorded(&db).starts_with("1:failed"), "{}", recorded(&db));
    let _ = std::fs::remove_dir_all(&dir);
}
