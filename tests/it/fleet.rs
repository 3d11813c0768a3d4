//! `pg-ghost fleet`: tenant databases listed by a registry query or a targets file, each
//! changed in the pg-ghost process through `migrate` or `run`: smallest first, the
//! control-table workload running on one tenant while its change runs online (its data
//! equal the control table, its schema what the files leave when run plainly on a twin), a
//! failing tenant named in the report while the others finish, the canary and
//! `--max-failures` stop rules, `--per-server` across two clusters (forty tenants), the window held by a
//! clock the test controls, a killed fleet resumed without running a target twice, the
//! webhook received by a listener in the test, the hooks; bad input (a query without the
//! columns, an unreachable target, a malformed file) refused before anything changes.

use crate::harness::{Cluster, TestDb};
use crate::migrate::{migrations_dir, recorded, FILES};
use crate::oracle::*;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

fn command(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pg-ghost"));
    cmd.arg("fleet").args(args);
    cmd.env_remove("PGHOST").env_remove("PGPORT").env_remove("PGUSER").env_remove("PGPASSWORD").env_remove("PGDATABASE");
    cmd.kill_on_drop(true);
    cmd
}

async fn fleet(args: &[&str]) -> Output {
    command(args).output().await.expect("start pg-ghost fleet")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn temp_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("pg-ghost-fleet-{}-{name}", std::process::id()))
}

/// A registry database with `tenants (name, conninfo, size_bytes, server, active)`.
fn registry<'c>(cluster: &'c Cluster, tenants: &[(&str, &TestDb<'_>, i64)]) -> TestDb<'c> {
    let db = cluster.fresh_db("fleet_registry");
    db.psql("CREATE TABLE tenants (name text PRIMARY KEY, conninfo text NOT NULL, size_bytes bigint, server text, active boolean NOT NULL DEFAULT true)");
    for (name, tenant, size) in tenants {
        db.psql(&format!("INSERT INTO tenants (name, conninfo, size_bytes) VALUES ({}, {}, {size})", literal(name), literal(&tenant.conninfo())));
    }
    db
}

fn targets_file(name: &str, lines: &[(&str, String)]) -> PathBuf {
    let path = temp_path(name);
    let text: String = lines.iter().map(|(n, c)| format!("{n} {c}\n")).collect();
    std::fs::write(&path, format!("# tenants of the test\n{text}")).expect("write the targets file");
    path
}

fn untouched(db: &TestDb<'_>) -> bool {
    db.psql("SELECT to_regclass('pgghost.migrations') IS NULL") == "t"
}

fn report_json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).expect("read the report")).expect("the report is JSON")
}

/// `name:status` of every target of the report, in its order.
fn statuses(report: &serde_json::Value) -> Vec<String> {
    report["results"].as_array().expect("results").iter().map(|r| format!("{}:{}", r["name"].as_str().unwrap_or(""), r["status"].as_str().unwrap_or(""))).collect()
}

/// An HTTP listener that accepts one POST, answers 200 and returns its body.
async fn webhook_listener() -> (u16, tokio::task::JoinHandle<String>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the webhook listener");
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.expect("the webhook is called");
        let mut got = Vec::new();
        let mut buf = vec![0; 8192];
        loop {
            let n = s.read(&mut buf).await.expect("read the webhook request");
            assert!(n > 0, "the request ended early: {}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&got).to_string();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                assert!(head.starts_with("POST /hook HTTP/1.1"), "{head}");
                assert!(head.contains("Content-Type: application/json"), "{head}");
                let len: usize = head.lines().find_map(|l| l.strip_prefix("Content-Length: ")).expect("a Content-Length").parse().unwrap();
                if body.len() >= len {
                    s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await.unwrap();
                    return body.to_string();
                }
            }
        }
    });
    (port, task)
}

fn size(db: &TestDb<'_>) -> i64 {
    db.psql("SELECT pg_database_size(current_database())").parse().unwrap()
}

/// Polls until `sql` on `db` returns `want` (waiting for a state, never timing anything).
async fn wait_for(db: &TestDb<'_>, sql: &str, want: &str, what: &str) {
    for _ in 0..600 {
        if db.psql(sql) == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}: {sql} is {:?}", db.psql(sql));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migration_directory_across_tenants_smallest_first_one_under_load_one_failing() {
    let cluster = Cluster::primary();
    let small = cluster.fresh_db("fleet_small");
    let medium = cluster.fresh_db("fleet_medium");
    let busy = cluster.fresh_db("fleet_busy");
    let broken = cluster.fresh_db("fleet_broken");
    let inactive = cluster.fresh_db("fleet_inactive");
    let small_t = OracleTable::create(&small, "orders", KeyKind::Identity, 20).await;
    let medium_t = OracleTable::create(&medium, "orders", KeyKind::Identity, 300).await;
    let busy_t = OracleTable::create(&busy, "orders", KeyKind::Identity, 2_000).await;
    OracleTable::create(&inactive, "orders", KeyKind::Identity, 20).await;
    // No `orders`: V1 fails there. Sized between the others, so the failure is mid-fleet.
    broken.psql("CREATE TABLE junk AS SELECT g AS id, repeat(md5(g::text), 8) AS pad FROM generate_series(1, 3000) g");
    let mut by_size = vec![("small", size(&small)), ("medium", size(&medium)), ("busy", size(&busy)), ("broken", size(&broken))];
    by_size.sort_by_key(|(_, s)| *s);
    assert!(by_size.windows(2).all(|w| w[1].1 - w[0].1 > 100_000), "the tenants' sizes must be apart for the order to be certain: {by_size:?}");
    let expected_order: Vec<&str> = by_size.iter().map(|(n, _)| *n).collect();

    let reg = registry(cluster, &[("small", &small, 0), ("medium", &medium, 0), ("busy", &busy, 0), ("broken", &broken, 0), ("inactive", &inactive, 0)]);
    reg.psql("UPDATE tenants SET active = false WHERE name = 'inactive'");
    let dir = migrations_dir("fleet-load", &FILES);
    let before = WholeSchema::take(&busy).await;
    let workload = Workload::start(&busy, &busy_t, WorkloadOptions::new(2).rate(Some(60))).await;
    workload.wait_for_more_commits(30, Duration::from_secs(30)).await;

    // --plan: the order by measured size, and nothing changes (not even the registry).
    let query = "SELECT name, conninfo FROM tenants WHERE active";
    let reg_conn = reg.conninfo();
    let dir_s = dir.to_str().unwrap();
    let out = fleet(&["--registry", &reg_conn, "--targets-query", query, "--dir", dir_s, "--plan"]).await;
    crate::binary::assert_success(&out);
    let plan = stdout(&out);
    let listed: Vec<&str> = plan.lines().skip(3).filter_map(|l| l.split_whitespace().nth(1)).collect();
    assert_eq!(listed, expected_order, "{plan}");
    assert_eq!(reg.psql("SELECT to_regnamespace('pgghost') IS NULL"), "t", "--plan created the fleet tables");
    assert!(untouched(&small) && untouched(&busy));

    let report = temp_path("load-report.json");
    let (port, webhook) = webhook_listener().await;
    let url = format!("http://127.0.0.1:{port}/hook");
    let out = fleet(&[
        "--registry", &reg_conn, "--targets-query", query, "--dir", dir_s, "--lock-timeout", "500ms",
        "--concurrency", "2", "--report", report.to_str().unwrap(), "--notify-webhook", &url,
    ])
    .await;
    crate::binary::assert_failure(&out, 1, "1 of 4 targets failed: broken");
    let text = stdout(&out);
    assert!(text.lines().any(|l| l.starts_with("broken ") && l.contains("failed") && l.contains("orders") && l.contains("does not exist")), "{text}");

    // The report: every target in size order, the failure with its error.
    let json = report_json(&report);
    let want: Vec<String> = expected_order.iter().map(|n| format!("{n}:{}", if *n == "broken" { "failed" } else { "succeeded" })).collect();
    assert_eq!(statuses(&json), want);
    assert_eq!((json["succeeded"].as_u64(), json["failed"].as_u64(), json["not_started"].as_u64()), (Some(3), Some(1), Some(0)));
    let fleet_id = json["fleet_id"].as_str().unwrap().to_string();
    for r in json["results"].as_array().unwrap() {
        let expected_after = if r["name"] == "broken" { serde_json::Value::Null } else { serde_json::json!("11") };
        assert_eq!(r["version_after"], expected_after, "{r}");
    }

    // The registry: the same, and targets started in size order (two at a time, in order).
    let targets = reg.psql(&format!("SELECT string_agg(name || ':' || status, ' ' ORDER BY position) FROM pgghost.fleet_targets WHERE fleet_id = {}", literal(&fleet_id)));
    assert_eq!(targets, want.join(" "));
    let started = reg.psql("SELECT string_agg(name, ' ' ORDER BY started_at) FROM pgghost.fleet_targets");
    assert_eq!(started, expected_order.join(" "));
    assert_eq!(reg.psql("SELECT status FROM pgghost.fleet_runs"), "failed");
    assert!(reg.psql("SELECT error FROM pgghost.fleet_targets WHERE name = 'broken'").contains("V1__add_region.sql, statement 1 of 3"));

    // The webhook: Slack's `text` names the failure; the report rides along.
    let body: serde_json::Value = serde_json::from_str(&webhook.await.expect("the webhook listener")).expect("the webhook body is JSON");
    let chat = body["text"].as_str().expect("a text field");
    assert!(chat.contains("4 targets, 3 succeeded, 1 failed") && chat.contains("- broken failed:"), "{chat}");
    assert_eq!(body["report"]["fleet_id"], fleet_id.as_str());

    // The tenants: every file applied, the data as the control table says, and the busy one's
    // schema as the files leave it when run plainly.
    for db in [&small, &medium, &busy] {
        assert_eq!(recorded(db), "1:applied:3 2:applied:3 10:applied:1 11:applied:2", "{}", db.name);
    }
    assert!(untouched(&inactive), "a target the query did not return was changed");
    assert_eq!(broken.psql("SELECT status || ':' || statements_done FROM pgghost.migrations"), "failed:0");
    workload.wait_for_more_commits(30, Duration::from_secs(30)).await;
    let wl = workload.stop().await;
    assert!(wl.errors.is_empty(), "workload errors (seed {}): {:#?}", wl.seed, wl.errors);
    let projection = |t: &OracleTable| t.projection().add("region", "'eu'::text").map("n", "n::bigint").drop("spare");
    for (db, t) in [(&small, &small_t), (&medium, &medium_t), (&busy, &busy_t)] {
        t.assert_matches_control(&db.client().await, &projection(t)).await;
    }
    let plain: String = FILES.iter().map(|(_, text)| *text).collect();
    let twin = before.twin_after_plain_sql(&busy, &plain).await;
    assert_whole_schema_equal(&busy, &twin, "the migration files through the fleet").await;
    assert_no_slots_or_publications(&busy.client().await).await;

    // --plan shows where each target stands.
    let plan = stdout(&fleet(&["--registry", &reg_conn, "--targets-query", query, "--dir", dir_s, "--plan"]).await);
    let version_of = |name: &str| plan.lines().find(|l| l.split_whitespace().nth(1) == Some(name)).and_then(|l| l.split_whitespace().nth(4)).map(str::to_string);
    assert_eq!([version_of("small"), version_of("busy"), version_of("broken")], [Some("11".into()), Some("11".into()), Some("-".into())], "{plan}");

    // Again: every target is at the version (or still failing), nothing runs twice.
    let out = fleet(&["--registry", &reg_conn, "--targets-query", query, "--dir", dir_s, "--report", report.to_str().unwrap()]).await;
    crate::binary::assert_failure(&out, 1, "1 of 4 targets failed: broken");
    // In the order of the tenants' sizes now, which the first run changed (the busy one's
    // old table, its workload): compared as sets.
    let mut again = statuses(&report_json(&report));
    let mut want: Vec<String> = expected_order.iter().map(|n| format!("{n}:{}", if *n == "broken" { "failed" } else { "skipped" })).collect();
    again.sort();
    want.sort();
    assert_eq!(again, want);
    assert_eq!(busy.psql("SELECT count(*) FROM pgghost.runs"), "5", "one run per ALTER TABLE, none again");
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_file(&report);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_canary_stops_the_fleet_and_max_failures_stops_new_starts() {
    let cluster = Cluster::primary();
    let dbs: Vec<TestDb<'_>> = (0..4).map(|i| cluster.fresh_db(&format!("fleet_stop{i}"))).collect();
    for db in &dbs[1..] {
        db.psql("CREATE TABLE t (id int PRIMARY KEY)");
    }
    let dir = migrations_dir("fleet-stop", &[("V1__add.sql", "ALTER TABLE t ADD COLUMN c int;\n")]);
    let dir_s = dir.to_str().unwrap();

    // The canary is the smallest (by the registry's size_bytes): tenant 0, which has no table.
    let reg = registry(cluster, &[("t0", &dbs[0], 10), ("t1", &dbs[1], 20), ("t2", &dbs[2], 30), ("t3", &dbs[3], 40)]);
    let reg_conn = reg.conninfo();
    let query = "SELECT name, conninfo, size_bytes FROM tenants";
    let report = temp_path("stop-report.json");
    let out = fleet(&["--registry", &reg_conn, "--targets-query", query, "--dir", dir_s, "--canary", "1", "--concurrency", "3", "--report", report.to_str().unwrap()]).await;
    crate::binary::assert_failure(&out, 4, "stopped early, a canary target failed; 1 of 4 targets failed: t0, 3 not started");
    assert_eq!(statuses(&report_json(&report)), ["t0:failed", "t1:not-started", "t2:not-started", "t3:not-started"]);
    assert!(dbs[1..].iter().all(untouched), "a target started after the canary failed");
    assert_eq!(reg.psql("SELECT status || ':' || stopped_reason FROM pgghost.fleet_runs"), "stopped:a canary target failed");

    // Without a canary, --max-failures 1: t0 fails first, then nothing else starts.
    let out = fleet(&["--registry", &reg_conn, "--targets-query", query, "--dir", dir_s, "--max-failures", "1", "--report", report.to_str().unwrap()]).await;
    crate::binary::assert_failure(&out, 4, "--max-failures 1");
    assert_eq!(statuses(&report_json(&report)), ["t0:failed", "t1:not-started", "t2:not-started", "t3:not-started"]);
    assert!(dbs[1..].iter().all(untouched));

    // Reordered so that the failure comes second: the first succeeded, the rest did not start.
    reg.psql("UPDATE tenants SET size_bytes = 25 WHERE name = 't0'");
    let out = fleet(&["--registry", &reg_conn, "--targets-query", query, "--dir", dir_s, "--max-failures", "1", "--report", report.to_str().unwrap()]).await;
    crate::binary::assert_failure(&out, 4, "1 of 4 targets failed: t0, 2 not started");
    assert_eq!(statuses(&report_json(&report)), ["t1:succeeded", "t0:failed", "t2:not-started", "t3:not-started"]);
    assert_eq!(dbs[1].psql("SELECT count(*) FROM pg_attribute WHERE attrelid = 't'::regclass AND attname = 'c'"), "1");
    assert!(untouched(&dbs[2]) && untouched(&dbs[3]));
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_file(&report);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_by_name_and_changes_nothing() {
    let cluster = Cluster::primary();
    let tenant = cluster.fresh_db("fleet_bad");
    tenant.psql("CREATE TABLE t (id int PRIMARY KEY)");
    let dir = migrations_dir("fleet-bad", &[("V1__add.sql", "ALTER TABLE t ADD COLUMN c int;\n")]);
    let dir_s = dir.to_str().unwrap();
    let reg = registry(cluster, &[("t", &tenant, 1)]);
    let reg_conn = reg.conninfo();
    let no_fleet_tables = || reg.psql("SELECT to_regnamespace('pgghost') IS NULL") == "t";

    // The query's columns, checked before it runs: each missing one named.
    let out = fleet(&["--registry", &reg_conn, "--targets-query", "SELECT name AS tenant, conninfo AS dsn FROM tenants", "--dir", dir_s]).await;
    crate::binary::assert_failure(&out, 2, "--targets-query: it returns no column \"name\" and no column \"conninfo\"");
    let out = fleet(&["--registry", &reg_conn, "--targets-query", "SELECT name, conninfo, 'x' AS size_bytes FROM tenants", "--dir", dir_s]).await;
    crate::binary::assert_failure(&out, 2, "column \"size_bytes\" is text but must be an integer");

    // An unreachable target stops everything before the first change.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    reg.psql(&format!("INSERT INTO tenants (name, conninfo) VALUES ('gone', 'host=127.0.0.1 port={closed} user=ghost dbname=gone connect_timeout=5')"));
    let out = fleet(&["--registry", &reg_conn, "--targets-query", "SELECT name, conninfo FROM tenants", "--dir", dir_s]).await;
    crate::binary::assert_failure(&out, 1, "reaching every target before starting (nothing was changed): target gone: connecting to 127.0.0.1");
    assert!(untouched(&tenant), "a reachable target was changed though another could not be reached");

    // A malformed targets file: the line is named.
    let file = targets_file("bad-targets", &[("t", tenant.conninfo()), ("lonely", String::new())]);
    let out = fleet(&["--targets-file", file.to_str().unwrap(), "--dir", dir_s]).await;
    crate::binary::assert_failure(&out, 2, "line 3: expected `name conninfo`");
    let file2 = targets_file("bad-conninfo", &[("t", "host=127.0.0.1 colour=blue".into())]);
    let out = fleet(&["--targets-file", file2.to_str().unwrap(), "--dir", dir_s]).await;
    crate::binary::assert_failure(&out, 2, "target t: its conninfo");
    assert!(untouched(&tenant));
    assert!(no_fleet_tables(), "bad input created the fleet tables");

    // A time zone PostgreSQL does not know.
    let out = fleet(&["--registry", &reg_conn, "--targets-query", "SELECT name, conninfo FROM tenants WHERE name = 't'", "--dir", dir_s, "--window", "02:00-06:00", "--timezone", "Mars/Olympus_Mons"]).await;
    crate::binary::assert_failure(&out, 2, "--timezone \"Mars/Olympus_Mons\": PostgreSQL knows no such time zone");
    assert!(untouched(&tenant));
    assert!(no_fleet_tables(), "an unknown time zone left the fleet's tables behind");

    // A resume of a fleet that does not exist.
    let out = fleet(&["--registry", &reg_conn, "--targets-query", "SELECT name, conninfo FROM tenants WHERE name = 't'", "--dir", dir_s, "--resume", "nope"]).await;
    crate::binary::assert_failure(&out, 2, "--resume nope: the registry has no fleet run with this id");
    assert!(untouched(&tenant));
    for f in [file, file2] {
        let _ = std::fs::remove_file(f);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_fleet_resumes_without_running_a_target_twice() {
    let cluster = Cluster::primary();
    let dbs: Vec<TestDb<'_>> = (0..3).map(|i| cluster.fresh_db(&format!("fleet_resume{i}"))).collect();
    for db in &dbs {
        db.psql("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t SELECT generate_series(1, 100)");
    }
    let dir = migrations_dir("fleet-resume", &[("V1__add.sql", "ALTER TABLE t ADD COLUMN c int;\n"), ("V2__fill.sql", "UPDATE t SET c = id;\n")]);
    let dir_s = dir.to_str().unwrap();
    let reg = registry(cluster, &[("r0", &dbs[0], 1), ("r1", &dbs[1], 2), ("r2", &dbs[2], 3)]);
    let reg_conn = reg.conninfo();
    let query = "SELECT name, conninfo, size_bytes FROM tenants";

    // A long interval holds the fleet after its first target: killed there, as by kill -9.
    let mut child = command(&["--registry", &reg_conn, "--targets-query", query, "--dir", dir_s, "--interval", "1h"]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("start the fleet");
    wait_for(&reg, "SELECT to_regclass('pgghost.fleet_targets') IS NOT NULL", "t", "the fleet's tables").await;
    wait_for(&reg, "SELECT count(*) FILTER (WHERE status = 'succeeded') FROM pgghost.fleet_targets", "1", "the first target").await;
    child.kill().await.expect("kill the fleet");
    let fleet_id = reg.psql("SELECT fleet_id FROM pgghost.fleet_runs");
    assert_eq!(reg.psql("SELECT string_agg(name || ':' || status, ' ' ORDER BY position) FROM pgghost.fleet_targets"), "r0:succeeded r1:pending r2:pending");
    let first_applied = dbs[0].psql("SELECT string_agg(applied_at::text, ' ') FROM pgghost.migrations");

    // A resume with another job is refused; the same job continues.
    let out = fleet(&["--registry", &reg_conn, "--targets-query", query, "--dir", dir_s, "--target", "1", "--resume", &fleet_id]).await;
    crate::binary::assert_failure(&out, 2, &format!("--resume {fleet_id}: that fleet ran `migrate --dir"));
    let report = temp_path("resume-report.json");
    let out = fleet(&["--registry", &reg_conn, "--targets-query", query, "--dir", dir_s, "--resume", &fleet_id, "--report", report.to_str().unwrap()]).await;
    crate::binary::assert_success(&out);
    let resumed = report_json(&report);
    assert_eq!(statuses(&resumed), ["r0:skipped", "r1:succeeded", "r2:succeeded"]);
    assert_eq!(resumed["results"][0]["note"], "succeeded by an earlier run of this fleet");
    assert_eq!(resumed["fleet_id"], fleet_id.as_str());
    assert_eq!(reg.psql("SELECT string_agg(name || ':' || status || ':' || attempts, ' ' ORDER BY position) FROM pgghost.fleet_targets"), "r0:succeeded:1 r1:succeeded:1 r2:succeeded:1");
    assert_eq!(reg.psql("SELECT status FROM pgghost.fleet_runs"), "succeeded");
    assert_eq!(dbs[0].psql("SELECT string_agg(applied_at::text, ' ') FROM pgghost.migrations"), first_applied, "the first target ran again");
    for db in &dbs {
        assert_eq!(recorded(db), "1:applied:1 2:applied:1");
        assert_eq!(db.psql("SELECT count(*) FROM t WHERE c IS DISTINCT FROM id"), "0");
    }
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_file(&report);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_target_starts_outside_the_window() {
    let cluster = Cluster::primary();
    let tenant = cluster.fresh_db("fleet_window");
    tenant.psql("CREATE TABLE t (id int PRIMARY KEY)");
    let dir = migrations_dir("fleet-window", &[("V1__add.sql", "ALTER TABLE t ADD COLUMN c int;\n")]);
    let file = targets_file("window-targets", &[("w", tenant.conninfo())]);
    let clock = temp_path("clock");
    std::fs::write(&clock, "01:30\n").unwrap();
    let mut child = command(&["--targets-file", file.to_str().unwrap(), "--dir", dir.to_str().unwrap(), "--window", "02:00-06:00", "--timezone", "Europe/Paris"])
        .env("PG_GHOST_TEST_CLOCK_FILE", &clock)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the fleet");
    let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let mut log = String::new();
    loop {
        let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line()).await.expect("the fleet logs its wait").expect("read stderr").unwrap_or_else(|| panic!("the fleet ended without waiting:\n{log}"));
        log.push_str(&line);
        log.push('\n');
        if line.contains("outside the maintenance window") {
            assert!(line.contains("no target starts until 02:00 Europe/Paris (in 30m)"), "{line}");
            break;
        }
    }
    assert!(untouched(&tenant), "a target started outside the window");
    std::fs::write(&clock, "02:00\n").unwrap();
    let rest = tokio::spawn(async move {
        let mut more = String::new();
        while let Ok(Some(l)) = lines.next_line().await {
            more.push_str(&l);
            more.push('\n');
        }
        more
    });
    let status = tokio::time::timeout(Duration::from_secs(120), child.wait()).await.expect("the fleet ends once the window opens").unwrap();
    let more = rest.await.unwrap();
    assert!(status.success(), "{log}{more}");
    assert!(more.contains("the maintenance window is open"), "{more}");
    assert_eq!(recorded(&tenant), "1:applied:1");

    // The server's clock, in a named zone: a window open now lets the target start.
    let hour: u32 = tenant.psql("SELECT extract(hour FROM now() AT TIME ZONE 'Asia/Kolkata')::int").parse().unwrap();
    let open_now = format!("{hour:02}:00-{:02}:00", (hour + 2) % 24);
    std::fs::write(dir.join("V2__more.sql"), "ALTER TABLE t ADD COLUMN d int;\n").unwrap();
    let out = command(&["--targets-file", file.to_str().unwrap(), "--dir", dir.to_str().unwrap(), "--window", &open_now, "--timezone", "Asia/Kolkata"]).output().await.unwrap();
    crate::binary::assert_success(&out);
    assert!(!crate::binary::stderr(&out).contains("outside the maintenance window"), "{}", crate::binary::stderr(&out));
    assert_eq!(recorded(&tenant), "1:applied:1 2:applied:1");
    for p in [file, clock] {
        let _ = std::fs::remove_file(p);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_online_change_across_two_servers_at_most_one_per_server_with_hooks() {
    let primary = Cluster::primary();
    let second = Cluster::start("fleet_second");
    let a0 = primary.fresh_db("fleet_a0");
    let a1 = primary.fresh_db("fleet_a1");
    let b0 = second.fresh_db("fleet_b0");
    let b1 = second.fresh_db("fleet_b1");
    let mut tables = Vec::new();
    for db in [&a0, &a1, &b0, &b1] {
        tables.push(OracleTable::create(db, "orders", KeyKind::Identity, 300).await);
    }
    let alter = "ALTER COLUMN n TYPE bigint";
    let original = OriginalDump::take(&a1, "public", "orders").await;
    let workload = Workload::start(&a1, &tables[1], WorkloadOptions::new(2).rate(Some(60))).await;
    workload.wait_for_more_commits(30, Duration::from_secs(30)).await;

    let hooks = temp_path("hooks");
    let _ = std::fs::remove_dir_all(&hooks);
    std::fs::create_dir_all(&hooks).unwrap();
    let seen = hooks.join("seen");
    for (name, line) in [
        ("pg-ghost-on-target-success", "target $PG_GHOST_TARGET_NAME $PG_GHOST_TARGET_STATUS"),
        ("pg-ghost-on-fleet-complete", "fleet $PG_GHOST_FLEET_SUCCEEDED of $PG_GHOST_FLEET_TARGETS"),
    ] {
        let script = hooks.join(name);
        std::fs::write(&script, format!("#!/bin/sh\necho \"{line}\" >> {}\n", seen.display())).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let file = targets_file("two-servers", &[("a0", a0.conninfo()), ("a1", a1.conninfo()), ("b0", b0.conninfo()), ("b1", b1.conninfo())]);
    let reg = primary.fresh_db("fleet_state");
    let report = temp_path("servers-report.json");
    let out = fleet(&[
        "--registry", &reg.conninfo(), "--targets-file", file.to_str().unwrap(), "--table", "orders", "--alter", alter,
        "--concurrency", "4", "--per-server", "1", "--hooks-path", hooks.to_str().unwrap(), "--report", report.to_str().unwrap(),
    ])
    .await;
    crate::binary::assert_success(&out);
    let json = report_json(&report);
    assert_eq!(json["succeeded"].as_u64(), Some(4), "{json}");

    // Never two targets of one server at once: their recorded spans do not overlap.
    let servers = reg.psql("SELECT count(DISTINCT server) FROM pgghost.fleet_targets");
    assert_eq!(servers, "2");
    let overlaps = reg.psql(
        "SELECT count(*) FROM pgghost.fleet_targets x JOIN pgghost.fleet_targets y
            ON x.server = y.server AND x.name < y.name AND x.started_at < y.ended_at AND y.started_at < x.ended_at",
    );
    assert_eq!(overlaps, "0", "{}", reg.psql("SELECT string_agg(name || ' ' || server || ' ' || started_at || ' ' || ended_at, E'\\n') FROM pgghost.fleet_targets"));

    // Every tenant changed online; the busy one's data and table as a plain ALTER leaves them.
    workload.wait_for_more_commits(30, Duration::from_secs(30)).await;
    let wl = workload.stop().await;
    assert!(wl.errors.is_empty(), "workload errors (seed {}): {:#?}", wl.seed, wl.errors);
    for (db, t) in [&a0, &a1, &b0, &b1].into_iter().zip(&tables) {
        let client = db.client().await;
        t.assert_matches_control(&client, &t.projection().map("n", "n::bigint")).await;
        assert_eq!(db.psql("SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'orders'::regclass AND attname = 'n'"), "bigint");
        assert_no_slots_or_publications(&client).await;
    }
    let expected = expected_after_plain_alter(&a1, &original, alter, ExpectedData::Query(tables[1].control_rows_query())).await;
    assert_dump_equal(&a1, "public", "orders", &expected).await;

    // The hooks: one per target, then the fleet's.
    let seen_text = std::fs::read_to_string(&seen).expect("the hooks ran");
    let mut lines: Vec<&str> = seen_text.lines().collect();
    assert_eq!(lines.pop(), Some("fleet 4 of 4"), "{seen_text}");
    lines.sort();
    assert_eq!(lines, ["target a0 succeeded", "target a1 succeeded", "target b0 succeeded", "target b1 succeeded"]);

    // A second fleet with the same change (not a resume) skips every target: each one's
    // history of runs says the change was made, and nothing runs again.
    let again = temp_path("servers-report-again.json");
    let out = fleet(&[
        "--registry", &reg.conninfo(), "--targets-file", file.to_str().unwrap(), "--table", "orders", "--alter", alter,
        "--report", again.to_str().unwrap(),
    ])
    .await;
    crate::binary::assert_success(&out);
    let json = report_json(&again);
    assert_eq!(statuses(&json).iter().filter(|s| s.ends_with(":skipped")).count(), 4, "{json}");
    for db in [&a0, &a1, &b0, &b1] {
        assert_eq!(db.psql("SELECT count(*) FROM pgghost.runs WHERE outcome = 'success'"), "1", "{} changed twice", db.name);
    }
    let _ = std::fs::remove_file(&again);
    drop(b0);
    drop(b1);
    let _ = std::fs::remove_dir_all(&hooks);
    let _ = std::fs::remove_file(&file);
    let _ = std::fs::remove_file(&report);
}

/// Sends one command to the fleet's socket and returns the answer.
async fn send(socket: &Path, command: &str) -> String {
    let mut s = tokio::net::UnixStream::connect(socket).await.unwrap_or_else(|e| panic!("connect to {}: {e}", socket.display()));
    s.write_all(format!("{command}\n").as_bytes()).await.unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).await.unwrap();
    answer
}

/// Sends `status` until the answer contains `want`.
async fn wait_for_status(socket: &Path, want: &str) -> String {
    for _ in 0..600 {
        if socket.exists() {
            let status = send(socket, "status").await;
            if status.contains(want) {
                return status;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the fleet's status never said {want:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_socket_pauses_resumes_and_panics_the_fleet_and_the_metrics_say_so() {
    let cluster = Cluster::primary();
    let tenant = cluster.fresh_db("fleet_socket");
    tenant.psql("CREATE TABLE t (id int PRIMARY KEY)");
    let dir = migrations_dir("fleet-socket", &[("V1__add.sql", "ALTER TABLE t ADD COLUMN c int;\n")]);
    let file = targets_file("socket-targets", &[("s", tenant.conninfo())]);
    let clock = temp_path("socket-clock");
    let socket = temp_path("fleet.sock");
    let metrics_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let metrics_addr = format!("127.0.0.1:{metrics_port}");
    let start = |clock_time: &str| {
        std::fs::write(&clock, clock_time).unwrap();
        command(&["--targets-file", file.to_str().unwrap(), "--dir", dir.to_str().unwrap(), "--window", "02:00-06:00", "--serve-socket-file", socket.to_str().unwrap(), "--metrics-listen", &metrics_addr])
            .env("PG_GHOST_TEST_CLOCK_FILE", &clock)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the fleet")
    };

    // Held by the window, then paused: the window opens and still nothing starts.
    let child = start("01:00");
    wait_for_status(&socket, "waiting: outside the window 02:00-06:00").await;
    assert!(send(&socket, "pause").await.starts_with("paused"));
    std::fs::write(&clock, "03:00").unwrap();
    let status = wait_for_status(&socket, "pending; paused (send resume to continue)\n").await;
    assert!(status.contains("0/1 ended") && status.contains("running: none; 1 pending"), "{status}");
    assert!(untouched(&tenant), "a target started while the fleet was paused");
    // The metrics say the same as the socket.
    let mut http = tokio::net::TcpStream::connect(&metrics_addr).await.expect("the metrics endpoint");
    http.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut page = String::new();
    http.read_to_string(&mut page).await.unwrap();
    for line in ["pg_ghost_fleet_paused 1", "pg_ghost_fleet_waiting_for_window 0", "pg_ghost_fleet_targets{status=\"pending\"} 1", "pg_ghost_fleet_targets{status=\"succeeded\"} 0"] {
        assert!(page.lines().any(|l| l == line), "{line} missing:\n{page}");
    }
    assert!(send(&socket, "resume").await.starts_with("resumed"));
    let out = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output()).await.expect("the fleet ends after resume").unwrap();
    crate::binary::assert_success(&out);
    assert_eq!(recorded(&tenant), "1:applied:1");
    assert!(!socket.exists(), "the socket file is removed at the end");

    // panic: the fleet stops, the target not started.
    tenant.psql("DROP SCHEMA pgghost CASCADE; ALTER TABLE t DROP COLUMN c");
    let child = start("01:00");
    wait_for_status(&socket, "waiting: outside the window").await;
    assert!(send(&socket, "panic").await.starts_with("panic"));
    let out = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output()).await.expect("the fleet ends after panic").unwrap();
    crate::binary::assert_failure(&out, 4, "stopped early, the panic command received; 0 of 1 targets failed, 1 not started");
    assert!(stdout(&out).lines().any(|l| l.starts_with("s ") && l.contains("not-started")), "{}", stdout(&out));
    assert!(untouched(&tenant));
    for p in [file, clock] {
        let _ = std::fs::remove_file(p);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The fleet: forty tenant databases, half on each of two clusters.
const TENANTS: usize = 40;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forty_tenants_on_two_servers_start_smallest_first_at_most_two_per_server() {
    let primary = Cluster::primary();
    let second = Cluster::start("fleet_forty");
    let mut tenants = Vec::new();
    for i in 0..TENANTS {
        let cluster = if i % 2 == 0 { primary } else { &second };
        let db = cluster.fresh_db(&format!("fleet_t{i}"));
        db.psql("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t SELECT generate_series(1, 10)");
        tenants.push(db);
    }
    // Sizes from the registry, shuffled against the names: the order is the sizes'.
    let sizes: Vec<i64> = (0..TENANTS as i64).map(|i| ((i * 7) % TENANTS as i64 + 1) * 1000).collect();
    let names: Vec<String> = (0..TENANTS).map(|i| format!("t{i:02}")).collect();
    let rows: Vec<(&str, &TestDb<'_>, i64)> = (0..TENANTS).map(|i| (names[i].as_str(), &tenants[i], sizes[i])).collect();
    let reg = registry(primary, &rows);
    reg.psql(&format!("UPDATE tenants SET server = CASE WHEN conninfo LIKE '%port={} %' THEN 'primary' ELSE 'second' END", primary.port));
    assert_eq!(reg.psql("SELECT string_agg(server || ':' || n, ' ' ORDER BY server) FROM (SELECT server, count(*) n FROM tenants GROUP BY 1) s"), "primary:20 second:20");
    let dir = migrations_dir("fleet-twenty", &[("V1__add.sql", "ALTER TABLE t ADD COLUMN c int;\nUPDATE t SET c = id;\n")]);
    let report = temp_path("twenty-report.json");
    let out = fleet(&[
        "--registry", &reg.conninfo(), "--targets-query", "SELECT name, conninfo, size_bytes, server FROM tenants", "--dir", dir.to_str().unwrap(),
        "--concurrency", "6", "--per-server", "2", "--report", report.to_str().unwrap(),
    ])
    .await;
    crate::binary::assert_success(&out);
    let mut by_size: Vec<usize> = (0..TENANTS).collect();
    by_size.sort_by_key(|&i| sizes[i]);
    let want: Vec<String> = by_size.iter().map(|&i| format!("{}:succeeded", names[i])).collect();
    assert_eq!(statuses(&report_json(&report)), want);

    // At most two at once on a server, counted at every start; on each server, smallest first.
    let crowded = reg.psql(
        "SELECT count(*) FROM pgghost.fleet_targets x
          WHERE (SELECT count(*) FROM pgghost.fleet_targets y
                  WHERE y.server = x.server AND y.started_at <= x.started_at AND y.ended_at > x.started_at) > 2",
    );
    assert_eq!(crowded, "0", "{}", reg.psql("SELECT string_agg(name || ' ' || server || ' ' || started_at || ' ' || ended_at, E'\\n' ORDER BY started_at) FROM pgghost.fleet_targets"));
    for server in ["primary", "second"] {
        let started = reg.psql(&format!("SELECT string_agg(size_bytes::text, ' ' ORDER BY started_at) FROM pgghost.fleet_targets WHERE server = '{server}'"));
        let mut expected: Vec<i64> = started.split(' ').map(|s| s.parse().unwrap()).collect();
        expected.sort();
        assert_eq!(started, expected.iter().map(i64::to_string).collect::<Vec<_>>().join(" "), "{server} did not start smallest first");
    }
    for db in &tenants {
        assert_eq!(recorded(db), "1:applied:2", "{}", db.name);
        assert_eq!(db.psql("SELECT count(*) FROM t WHERE c IS DISTINCT FROM id"), "0");
    }
    drop(tenants);
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_file(&report);
}
