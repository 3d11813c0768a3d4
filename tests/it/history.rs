//! The history of runs through the binary: a success, a dry run, a failure at the index
//! build, a refusal, an abort by the panic flag, a SIGKILL then `--resume` continuing the
//! same row; `--no-history` and `--history-table`; a role that may not create the table and a
//! publication that would publish it (both: the run goes on without history); and what
//! `pg-ghost history` prints, as text and as JSON.

use crate::binary::{self, changelog_value, narrow_table};
use crate::harness::{Cluster, TestDb};
use crate::oracle::ident;
use crate::run_faults::{flag_path, wait_for_copy_past, wait_for_state, Running};
use crate::run_refusals::{assert_exit, relation_exists};
use std::process::Output;
use std::time::Duration;
use tokio_postgres::{Client, Row};

const ALTER: &str = "ALTER COLUMN n TYPE bigint";
/// Small chunks with a pause as long as each: a copy of 20,000 rows lasts long enough to be
/// interrupted in the middle.
const SLOW_COPY: [&str; 6] = ["--chunk-size", "100", "--chunk-time", "1ms", "--nice-ratio", "1"];

/// The rows of `pgghost.runs` for `table`, oldest first, with durations and times as text.
async fn runs(client: &Client, table: &str) -> Vec<Row> {
    client
        .query(
            "SELECT run_id, database, schema_name, table_name, alter_clauses, fingerprint, strategy, version, client_host,
                    client_user, role, pid, execute, ended_at IS NOT NULL AS ended, ended_at >= started_at AS ordered, phase,
                    outcome, error, error_kind, rows_copied, phase_seconds::text AS phase_seconds, cut_over_attempts,
                    lock_held_ms, resumes
               FROM pgghost.runs WHERE table_name = $1 ORDER BY started_at",
            &[&table],
        )
        .await
        .expect("reading pgghost.runs")
}

async fn only_run(client: &Client, table: &str) -> Row {
    let mut rows = runs(client, table).await;
    assert_eq!(rows.len(), 1, "expected one run recorded for {table}");
    rows.remove(0)
}

fn phase_seconds(row: &Row) -> serde_json::Map<String, serde_json::Value> {
    serde_json::from_str(row.get("phase_seconds")).expect("phase_seconds is a JSON object")
}

fn text(row: &Row, column: &str) -> Option<String> {
    row.get(column)
}

async fn history(db: &TestDb<'_>, args: &[&str]) -> Output {
    let out = binary::command(db, "history", args).output().await.expect("start pg-ghost history");
    binary::assert_success(&out);
    out
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

// ---- a success and what `pg-ghost history` prints ------------------------------------------

#[tokio::test]
async fn a_success_is_recorded_with_phases_rows_and_the_cut_over() {
    let db = Cluster::primary().fresh_db("hi_success");
    narrow_table(&db, "t", 2_000);
    let client = db.client().await;
    binary::assert_success(&binary::run(&db, &["--table", "t", "--alter", ALTER, "--execute"]).await);

    let row = only_run(&client, "t").await;
    assert_eq!(text(&row, "outcome").as_deref(), Some("success"));
    assert_eq!(text(&row, "phase").as_deref(), Some("done"));
    assert!(row.get::<_, bool>("ended") && row.get::<_, bool>("ordered"));
    assert_eq!(row.get::<_, String>("database"), db.name);
    assert_eq!((text(&row, "schema_name").as_deref(), row.get::<_, &str>("table_name")), (Some("public"), "t"));
    assert_eq!(row.get::<_, &str>("alter_clauses"), ALTER);
    assert_eq!(text(&row, "fingerprint"), pg_ghost::history::fingerprint("\"public\".\"t\"", ALTER));
    assert_eq!(row.get::<_, &str>("strategy"), "ghost");
    assert_eq!(row.get::<_, &str>("version"), env!("CARGO_PKG_VERSION"));
    assert_eq!(row.get::<_, &str>("role"), crate::harness::ROLE);
    assert!(!row.get::<_, &str>("client_host").is_empty() && !row.get::<_, &str>("client_user").is_empty());
    assert!(row.get::<_, bool>("execute"));
    assert_eq!((text(&row, "error"), text(&row, "error_kind")), (None, None));
    assert_eq!(row.get::<_, i64>("rows_copied"), 2_000);
    let attempts: Option<i32> = row.get("cut_over_attempts");
    assert!(attempts.is_some_and(|a| a >= 1), "cut-over attempts: {attempts:?}");
    let lock_held: Option<f64> = row.get("lock_held_ms");
    assert!(lock_held.is_some_and(|ms| ms > 0.0 && ms < 60_000.0), "lock held: {lock_held:?}");
    assert_eq!(row.get::<_, i32>("resumes"), 0);
    let phases = phase_seconds(&row);
    for phase in ["inspect", "prepare", "stream", "copy", "build-indexes", "catch-up", "cut-over", "cleanup"] {
        assert!(phases.get(phase).and_then(|v| v.as_f64()).is_some_and(|s| s >= 0.0), "no duration for {phase}: {phases:?}");
    }
    assert!(!phases.contains_key("done") && !phases.contains_key("postponed"), "{phases:?}");

    // The history table is nobody's publication, and pg-ghost left none.
    let published: i64 = client.query_one("SELECT count(*) FROM pg_publication_tables WHERE schemaname = 'pgghost'", &[]).await.unwrap().get(0);
    assert_eq!(published, 0);

    let run_id: String = row.get("run_id");
    let out = history(&db, &["--table", "t"]).await;
    let table = stdout(&out);
    assert!(table.starts_with("RUN ID"), "{table}");
    let line = table.lines().find(|l| l.starts_with(&run_id)).unwrap_or_else(|| panic!("no line for {run_id}:\n{table}"));
    assert!(line.contains("public.t") && line.contains("success") && line.contains("2000") && line.ends_with(ALTER), "{line}");

    let out = history(&db, &["--table", "public.t", "--format", "json"]).await;
    let json: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("history --format json prints JSON");
    let runs = json.as_array().expect("a JSON array");
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0]["run_id"], run_id.as_str());
    assert_eq!(runs[0]["outcome"], "success");
    assert_eq!(runs[0]["rows_copied"], 2_000);
    assert_eq!(runs[0]["alter"], ALTER);
    assert!(runs[0]["phase_seconds"]["copy"].is_number(), "{}", runs[0]);

    // Another table's filter shows nothing of it.
    let out = history(&db, &["--table", "other", "--format", "json"]).await;
    assert_eq!(stdout(&out).trim(), "[]");
}

// ---- a dry run ------------------------------------------------------------------------------

#[tokio::test]
async fn a_dry_run_is_recorded_as_such() {
    let db = Cluster::primary().fresh_db("hi_dry");
    narrow_table(&db, "t", 1_000);
    let client = db.client().await;
    binary::assert_success(&binary::run(&db, &["--table", "t", "--alter", ALTER]).await);

    let row = only_run(&client, "t").await;
    assert_eq!((text(&row, "outcome").as_deref(), text(&row, "phase").as_deref()), (Some("dry-run"), Some("done")));
    assert!(!row.get::<_, bool>("execute") && row.get::<_, bool>("ended"));
    assert_eq!(row.get::<_, i64>("rows_copied"), 1_000);
    assert_eq!(row.get::<_, Option<i32>>("cut_over_attempts"), None);
    assert!(!phase_seconds(&row).contains_key("cut-over"));
}

/// A history table an earlier pg-ghost created checks for fewer outcomes: its check is
/// brought up to date, and a `reverted` run can be recorded in it.
#[tokio::test]
async fn an_earlier_history_table_learns_the_newer_outcomes() {
    let db = Cluster::primary().fresh_db("hi_upgrade");
    narrow_table(&db, "t", 100);
    let client = db.client().await;
    binary::assert_success(&binary::run(&db, &["--table", "t", "--alter", ALTER]).await);
    client
        .batch_execute(
            "ALTER TABLE pgghost.runs DROP CONSTRAINT runs_outcome_check,
               ADD CONSTRAINT runs_outcome_check CHECK (outcome IN ('success', 'dry-run', 'replica-test', 'failed', 'aborted'))",
        )
        .await
        .unwrap();
    binary::assert_success(&binary::run(&db, &["--table", "t", "--alter", ALTER]).await);
    let outcomes: Vec<Option<String>> =
        client.query("SELECT outcome FROM pgghost.runs ORDER BY started_at", &[]).await.unwrap().iter().map(|r| r.get(0)).collect();
    assert_eq!(outcomes, [Some("dry-run".to_string()), Some("dry-run".to_string())]);
    client.batch_execute("UPDATE pgghost.runs SET outcome = 'reverted'").await.expect("the check takes the newer outcome");
}

// ---- the direct way -------------------------------------------------------------------------

/// The direct way's runs: strategy `direct`, and each step with its SQL, kind, lock, tries,
/// duration and outcome, for a dry run (locks taken and released), a success, and a failure
/// (the step that failed with PostgreSQL's reason, the ones after it still pending); `pg-ghost
/// history` shows them under each run, as text and as JSON.
#[tokio::test]
async fn a_direct_run_records_its_steps() {
    let db = Cluster::primary().fresh_db("hi_direct");
    narrow_table(&db, "t", 1_000);
    let client = db.client().await;
    let alter = "ADD COLUMN x int, ADD CONSTRAINT n_small CHECK (n < 1000)";
    binary::assert_success(&binary::run(&db, &["--table", "t", "--alter", alter, "--strategy", "auto"]).await);
    binary::assert_success(&binary::run(&db, &["--table", "t", "--alter", alter, "--strategy", "auto", "--execute"]).await);
    let failing = "ADD CONSTRAINT n_negative CHECK (n < 0), ADD COLUMN y int";
    let out = binary::run(&db, &["--table", "t", "--alter", failing, "--strategy", "auto", "--execute", "--skip-data-checks"]).await;
    assert!(!out.status.success(), "{}", binary::stderr(&out));

    let rows = client
        .query("SELECT run_id, strategy, outcome, phase, error, phase_seconds::text, steps::text FROM pgghost.runs WHERE table_name = 't' ORDER BY started_at", &[])
        .await
        .unwrap();
    assert_eq!(rows.len(), 3);
    let steps = |row: &Row| -> Vec<serde_json::Value> { serde_json::from_str(row.get::<_, Option<&str>>(6).expect("steps recorded")).expect("steps is a JSON array") };
    let field = |step: &serde_json::Value, name: &str| step[name].as_str().unwrap_or_default().to_string();
    for row in &rows {
        assert_eq!(row.get::<_, &str>(1), "direct");
        let phases: serde_json::Map<String, serde_json::Value> = serde_json::from_str(row.get(5)).unwrap();
        assert!(phases.contains_key("direct") && !phases.contains_key("copy") && !phases.contains_key("prepare"), "{phases:?}");
    }

    // The plan's three steps: the column, the CHECK added NOT VALID, its validation.
    let want = [
        ("locked", "ADD COLUMN x", "ACCESS EXCLUSIVE on \"public\".\"t\""),
        ("locked", "NOT VALID", "ACCESS EXCLUSIVE on \"public\".\"t\""),
        ("validate", "VALIDATE CONSTRAINT \"n_small\"", "SHARE UPDATE EXCLUSIVE on \"public\".\"t\""),
    ];
    for (row, outcome) in [(&rows[0], "dry-run"), (&rows[1], "done")] {
        let run_outcome = if outcome == "done" { "success" } else { "dry-run" };
        assert_eq!((row.get::<_, Option<&str>>(2), row.get::<_, &str>(3)), (Some(run_outcome), "done"));
        let got = steps(row);
        assert_eq!(got.len(), want.len(), "{got:?}");
        for (step, (kind, sql, lock)) in got.iter().zip(want) {
            assert_eq!(field(step, "kind"), kind, "{step}");
            assert!(field(step, "sql").contains(sql), "{step}");
            assert_eq!(field(step, "lock"), lock, "{step}");
            assert_eq!(field(step, "outcome"), outcome, "{step}");
            assert_eq!(step["attempts"], 1, "{step}");
            assert!(step["seconds"].as_f64().is_some_and(|s| s >= 0.0), "{step}");
            assert!(step["error"].is_null(), "{step}");
        }
    }

    let failed = &rows[2];
    assert_eq!((failed.get::<_, Option<&str>>(2), failed.get::<_, &str>(3)), (Some("failed"), "direct"));
    assert!(failed.get::<_, Option<&str>>(4).is_some_and(|e| e.contains("n_negative")), "{:?}", failed.get::<_, Option<&str>>(4));
    let got = steps(failed);
    let outcomes: Vec<String> = got.iter().map(|s| field(s, "outcome")).collect();
    assert_eq!(outcomes, ["done", "failed", "pending"], "{got:?}");
    assert!(field(&got[1], "sql").contains("VALIDATE CONSTRAINT \"n_negative\"") && field(&got[1], "error").contains("violated"), "{}", got[1]);
    assert!(field(&got[1], "error").ends_with("; undone: ALTER TABLE \"public\".\"t\" DROP CONSTRAINT IF EXISTS \"n_negative\""), "{}", got[1]);
    assert!(got[2]["seconds"].is_null() && got[2]["attempts"] == 0, "{}", got[2]);

    let text = stdout(&history(&db, &["--table", "t"]).await);
    let ok: String = rows[1].get(0);
    let bad: String = rows[2].get(0);
    let under = |id: &str| -> Vec<String> {
        text.lines().skip_while(|l| !l.starts_with(id)).skip(1).take_while(|l| l.starts_with("  ")).map(String::from).collect()
    };
    let ok_lines = under(&ok);
    assert_eq!(ok_lines.len(), 3, "{text}");
    assert!(ok_lines[2].starts_with("  step 3/3 done in ") && ok_lines[2].contains("(1 try; validate, SHARE UPDATE EXCLUSIVE on \"public\".\"t\")"), "{text}");
    let bad_lines = under(&bad);
    assert!(bad_lines.iter().any(|l| l.starts_with("  step 2/3 failed in ")), "{text}");
    assert!(bad_lines.iter().any(|l| l.starts_with("  step 3/3 pending (")), "{text}");
    let json: serde_json::Value = serde_json::from_str(&stdout(&history(&db, &["--table", "t", "--format", "json"]).await)).unwrap();
    let runs = json.as_array().unwrap();
    assert_eq!(runs[0]["run_id"], bad.as_str(), "newest first");
    assert_eq!(runs[0]["strategy"], "direct");
    assert_eq!(runs[0]["steps"][1]["outcome"], "failed");
    assert_eq!(runs[1]["steps"].as_array().map(Vec::len), Some(3));
}

// ---- failures -------------------------------------------------------------------------------

/// A UNIQUE constraint the data violates (data checks skipped) fails at the index build: recorded as `failed`, in
/// that phase, with the error as pg-ghost reported it.
#[tokio::test]
async fn a_failure_is_recorded_with_its_phase_and_error() {
    let db = Cluster::primary().fresh_db("hi_failed");
    db.psql(
        "CREATE TABLE dup (id bigint PRIMARY KEY, n int NOT NULL);
         INSERT INTO dup SELECT g, CASE WHEN g = 500 THEN 7 ELSE g END FROM generate_series(1, 1000) g;",
    );
    let client = db.client().await;
    let out = binary::run(&db, &["--table", "dup", "--alter", "ADD CONSTRAINT dup_n_unique UNIQUE (n)", "--execute", "--skip-data-checks"]).await;
    assert!(!out.status.success(), "{}", binary::stderr(&out));

    let row = only_run(&client, "dup").await;
    assert_eq!((text(&row, "outcome").as_deref(), text(&row, "phase").as_deref()), (Some("failed"), Some("build-indexes")));
    let error = text(&row, "error").unwrap_or_default();
    assert!(error.contains("dup_n_unique") && error.contains("(n)=(7)"), "{error}");
    assert!(text(&row, "error_kind").is_some());
    assert!(row.get::<_, bool>("ended"));
    assert_eq!(row.get::<_, i64>("rows_copied"), 1_000);
    assert!(phase_seconds(&row).contains_key("cleanup"));
}

/// Refusals are recorded too: a table without a key (after the table was resolved) and a
/// table that does not exist (with the name as given).
#[tokio::test]
async fn refusals_are_recorded() {
    let db = Cluster::primary().fresh_db("hi_refused");
    db.psql("CREATE TABLE nokey (n int); INSERT INTO nokey VALUES (1);");
    let client = db.client().await;
    let out = binary::run(&db, &["--table", "nokey", "--alter", ALTER, "--execute"]).await;
    assert_eq!(out.status.code(), Some(3), "{}", binary::stderr(&out));
    let row = only_run(&client, "nokey").await;
    assert_eq!((text(&row, "outcome").as_deref(), text(&row, "phase").as_deref()), (Some("failed"), Some("inspect")));
    assert_eq!(text(&row, "error_kind").as_deref(), Some("refused"));
    assert_eq!(text(&row, "schema_name").as_deref(), Some("public"));

    let out = binary::run(&db, &["--table", "Missing.Table", "--alter", ALTER]).await;
    assert!(!out.status.success());
    let row = only_run(&client, "Missing.Table").await;
    assert_eq!(text(&row, "outcome").as_deref(), Some("failed"));
    assert_eq!(text(&row, "schema_name"), None);
    assert!(text(&row, "error").is_some_and(|e| e.contains("missing")), "{:?}", text(&row, "error"));
}

// ---- an abort -------------------------------------------------------------------------------

/// The panic flag during the copy: while the copy runs the row shows it with no end, and the
/// history table is not in pg-ghost's publication; after the abort, `aborted` in `copy`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abort_is_recorded() {
    let db = Cluster::primary().fresh_db("hi_abort");
    narrow_table(&db, "p", 20_000);
    let client = db.client().await;
    let flag = flag_path(&db, "panic");
    let flag_arg = flag.to_str().unwrap();
    let mut args = vec!["--table", "p", "--alter", ALTER, "--execute", "--panic-flag-file", flag_arg];
    args.extend(SLOW_COPY);
    let mut run = Running::spawn(&db, "run", &args);
    wait_for_state(&client, &mut run, "p", "copy", Duration::from_secs(30)).await;
    wait_for_copy_past(&client, &mut run, "p", 500, Duration::from_secs(30)).await;

    let row = wait_for_phase(&client, &mut run, "p", "copy").await;
    assert!(!row.get::<_, bool>("ended") && text(&row, "outcome").is_none());
    let published: Vec<(String, String)> = client
        .query("SELECT schemaname::text, tablename::text FROM pg_publication_tables WHERE pubname LIKE 'pg\\_ghost\\_%'", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(published, [("public".to_string(), "p".to_string())], "pg-ghost's publication lists more than the table");

    std::fs::write(&flag, b"").unwrap();
    let out = run.wait(Duration::from_secs(30)).await;
    let _ = std::fs::remove_file(&flag);
    assert_exit(&out, 4, &["panic flag"]);
    let row = only_run(&client, "p").await;
    assert_eq!((text(&row, "outcome").as_deref(), text(&row, "phase").as_deref()), (Some("aborted"), Some("copy")));
    assert_eq!(text(&row, "error_kind").as_deref(), Some("aborted"));
    assert!(text(&row, "error").is_some_and(|e| e.contains("panic flag")));
    assert!(row.get::<_, bool>("ended"));
}

/// Waits until the run's row says `phase` (it is written from a task of its own).
async fn wait_for_phase(client: &Client, run: &mut Running, table: &str, phase: &str) -> Row {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(row) = runs(client, table).await.pop().filter(|r| r.get::<_, &str>("phase") == phase) {
            return row;
        }
        run.assert_running(&format!("the history to say {phase}")).await;
        assert!(std::time::Instant::now() < deadline, "the history never said phase {phase}");
        tokio::time::sleep(crate::run_faults::POLL).await;
    }
}

// ---- killed, then resumed -------------------------------------------------------------------

/// SIGKILL during the copy leaves the row in `copy` with no end; `--resume` continues the same
/// row (one row for the table, its id the one in the changelog), counts the resume, and ends
/// it as a success with both processes' durations.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_then_resumed_continues_the_same_row() {
    let db = Cluster::primary().fresh_db("hi_resume");
    narrow_table(&db, "k", 20_000);
    let client = db.client().await;
    let mut args = vec!["--table", "k", "--alter", ALTER, "--execute"];
    args.extend(SLOW_COPY);
    let mut run = Running::spawn(&db, "run", &args);
    wait_for_state(&client, &mut run, "k", "copy", Duration::from_secs(30)).await;
    wait_for_copy_past(&client, &mut run, "k", 1_000, Duration::from_secs(60)).await;
    wait_for_phase(&client, &mut run, "k", "copy").await;
    let (status, log) = run.kill9().await;
    assert!(!status.success(), "{log}");

    let killed = only_run(&client, "k").await;
    assert_eq!(text(&killed, "phase").as_deref(), Some("copy"));
    assert!(!killed.get::<_, bool>("ended") && text(&killed, "outcome").is_none());
    let run_id: String = killed.get("run_id");
    assert_eq!(changelog_value(&client, "k", "run_id").await.as_deref(), Some(run_id.as_str()), "the changelog keeps the run id");
    let out = history(&db, &[]).await;
    assert!(stdout(&out).contains("no end recorded"), "{}", stdout(&out));
    crate::resume::wait_slot_released(&client).await;

    args.truncate(5);
    args.push("--resume");
    let out = binary::run(&db, &args).await;
    binary::assert_success(&out);

    let row = only_run(&client, "k").await;
    assert_eq!(row.get::<_, String>("run_id"), run_id, "the resumed run wrote another row");
    assert_eq!((text(&row, "outcome").as_deref(), text(&row, "phase").as_deref()), (Some("success"), Some("done")));
    assert_eq!(row.get::<_, i32>("resumes"), 1);
    assert!(row.get::<_, bool>("ended"));
    assert!(row.get::<_, i64>("rows_copied") > 0);
    let before = phase_seconds(&killed);
    let after = phase_seconds(&row);
    let secs = |m: &serde_json::Map<String, serde_json::Value>, k: &str| m.get(k).and_then(|v| v.as_f64()).unwrap_or(0.0);
    assert!(secs(&after, "inspect") > secs(&before, "inspect"), "the resumed run's inspect was not added: {before:?} → {after:?}");
    assert!(secs(&after, "copy") >= secs(&before, "copy"), "{before:?} → {after:?}");
    let out = history(&db, &["--table", "k"]).await;
    assert!(stdout(&out).contains("resumed 1 time"), "{}", stdout(&out));
}


// ---- where, and whether --------------------------------------------------------------------

#[tokio::test]
async fn no_history_leaves_nothing_and_history_table_chooses_another() {
    let db = Cluster::primary().fresh_db("hi_where");
    narrow_table(&db, "t", 500);
    let client = db.client().await;
    binary::assert_success(&binary::run(&db, &["--table", "t", "--alter", ALTER, "--no-history"]).await);
    let schema: i64 = client.query_one("SELECT count(*) FROM pg_namespace WHERE nspname = 'pgghost'", &[]).await.unwrap().get(0);
    assert_eq!(schema, 0, "--no-history created the history schema");

    binary::assert_success(&binary::run(&db, &["--table", "t", "--alter", ALTER, "--history-table", "ops.\"Migrations\""]).await);
    assert!(relation_exists(&client, "ops", "Migrations").await);
    assert!(!relation_exists(&client, "pgghost", "runs").await);
    let outcome: String = client.query_one("SELECT outcome FROM ops.\"Migrations\"", &[]).await.unwrap().get(0);
    assert_eq!(outcome, "dry-run");
    let out = history(&db, &["--history-table", "ops.\"Migrations\"", "--format", "json"]).await;
    assert_eq!(serde_json::from_str::<serde_json::Value>(&stdout(&out)).unwrap()[0]["outcome"], "dry-run");
    // The default table does not exist: an empty history, not an error.
    let out = history(&db, &["--format", "json"]).await;
    assert_eq!(stdout(&out).trim(), "[]");

    let out = binary::run(&db, &["--table", "t", "--alter", ALTER, "--history-table", "a.b.c"]).await;
    assert_exit(&out, 2, &["--history-table"]);
}

/// A role that may not create the history table (a DBA made schema `pgghost` and granted it
/// nothing there): the run warns and goes on.
#[tokio::test]
async fn a_role_that_may_not_create_the_table_runs_without_history() {
    let db = Cluster::primary().fresh_db("hi_role");
    narrow_table(&db, "t", 500);
    let role = format!("hi_role_{}", std::process::id());
    db.psql(&format!(
        "CREATE ROLE {role} LOGIN REPLICATION PASSWORD 'pw';
         ALTER TABLE t OWNER TO {role};
         GRANT CREATE ON SCHEMA public TO {role}; GRANT CREATE ON DATABASE {db} TO {role};
         CREATE SCHEMA pgghost;",
        db = ident(&db.name)
    ));
    let conn = db.cluster.conninfo_as(&role, "pw", &db.name);
    let out = binary::command_with_conn(&conn, "run", &["--table", "t", "--alter", ALTER]).output().await.unwrap();
    binary::assert_success(&out);
    let log = binary::stderr(&out);
    assert!(log.contains("not recorded in the history") && log.contains("permission denied"), "{log}");
    let client = db.client().await;
    assert!(!relation_exists(&client, "pgghost", "runs").await);
    db.psql(&format!("DROP OWNED BY {role}"));
    db.cluster.psql("postgres", &format!("DROP ROLE {role}"));
}

/// A publication FOR ALL TABLES would publish the history table to subscribers that lack
/// it: no history then (pg-ghost refuses such a table anyway, and that refusal is not
/// recorded either).
#[tokio::test]
async fn a_publication_for_all_tables_keeps_the_history_off() {
    let db = Cluster::primary().fresh_db("hi_allpub");
    narrow_table(&db, "t", 100);
    db.psql("CREATE PUBLICATION everything FOR ALL TABLES");
    let client = db.client().await;
    let out = binary::run(&db, &["--table", "t", "--alter", ALTER]).await;
    assert_eq!(out.status.code(), Some(3), "{}", binary::stderr(&out));
    let log = binary::stderr(&out);
    assert!(log.contains("not recorded in the history") && log.contains("everything"), "{log}");
    let schema: i64 = client.query_one("SELECT count(*) FROM pg_namespace WHERE nspname = 'pgghost'", &[]).await.unwrap().get(0);
    assert_eq!(schema, 0);
}
