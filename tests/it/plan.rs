//! `pg-ghost plan` against PostgreSQL: for each clause kind, what the plan says PostgreSQL
//! does (rewrite, scan, lock, on which tables) must be what PostgreSQL does when the clause
//! runs on the real table, full of rows (in a transaction rolled back). The plan itself
//! leaves nothing behind.

use crate::binary;
use crate::harness::{Cluster, TestDb};
use crate::oracle::*;
use pg_ghost::conn::ConnInfo;
use pg_ghost::plan::{self, Format, PlanConfig, Strategy};

const SCHEMA: &str = "
    CREATE TABLE cust (id int PRIMARY KEY);
    INSERT INTO cust SELECT g FROM generate_series(1, 100) g;
    CREATE TABLE t (id int PRIMARY KEY, a int NOT NULL, b text, v varchar(20), n int, c int, doc jsonb);
    INSERT INTO t SELECT g, g, md5(g::text), left(md5(g::text), 10), g, g % 100 + 1, '{}' FROM generate_series(1, 5000) g;
    ALTER TABLE t ADD CONSTRAINT t_a_check CHECK (a > 0);
    ALTER TABLE t ADD CONSTRAINT t_c_fk FOREIGN KEY (c) REFERENCES cust NOT VALID;
    CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$;
    CREATE TRIGGER t_touch BEFORE UPDATE ON t FOR EACH ROW EXECUTE FUNCTION touch();
    ANALYZE t;";

/// (clause, rewrites, reads the table): a rewrite reads it too
const CLAUSES: &[(&str, bool, bool)] = &[
    ("ADD COLUMN x int", false, false),
    ("ADD COLUMN x int DEFAULT 0", false, false),
    ("ADD COLUMN x int NOT NULL DEFAULT 0", false, false),
    ("ADD COLUMN x timestamptz DEFAULT now()", false, false),
    ("ADD COLUMN x float8 DEFAULT random()", true, true),
    ("ADD COLUMN x serial", true, true),
    ("ADD COLUMN x int GENERATED ALWAYS AS IDENTITY", true, true),
    ("ADD COLUMN x int GENERATED ALWAYS AS (a * 2) STORED", true, true),
    ("DROP COLUMN b", false, false),
    ("ALTER COLUMN a TYPE bigint", true, true),
    ("ALTER COLUMN a TYPE int USING a + 1", true, true),
    ("ALTER COLUMN v TYPE varchar(40)", false, false),
    ("ALTER COLUMN v TYPE text", false, false),
    ("ALTER COLUMN v TYPE varchar(15)", true, true),
    ("ALTER COLUMN a SET DEFAULT 5", false, false),
    ("ALTER COLUMN a DROP DEFAULT", false, false),
    ("ALTER COLUMN n SET NOT NULL", false, true),
    ("ALTER COLUMN a DROP NOT NULL", false, false),
    ("ALTER COLUMN a SET STATISTICS 500", false, false),
    ("ALTER COLUMN b SET STORAGE EXTERNAL", false, false),
    ("ALTER COLUMN a SET (n_distinct = 100)", false, false),
    ("ADD CHECK (n > -1)", false, true),
    ("ADD CHECK (n > -1) NOT VALID", false, false),
    ("ADD CONSTRAINT t_c_fk2 FOREIGN KEY (c) REFERENCES cust", false, true),
    ("ADD CONSTRAINT t_c_fk2 FOREIGN KEY (c) REFERENCES cust NOT VALID", false, false),
    ("ADD UNIQUE (b)", false, true),
    ("ADD CONSTRAINT t_a_b UNIQUE (a, b)", false, true),
    ("RENAME COLUMN b TO bb", false, false),
    ("RENAME CONSTRAINT t_a_check TO t_a_positive", false, false),
    ("SET (fillfactor = 70)", false, false),
    ("SET (autovacuum_enabled = false)", false, false),
    ("REPLICA IDENTITY FULL", false, false),
    ("CLUSTER ON t_pkey", false, false),
    ("DROP CONSTRAINT t_a_check", false, false),
    ("VALIDATE CONSTRAINT t_c_fk", false, true),
    ("DROP CONSTRAINT t_c_fk", false, false),
    ("ENABLE REPLICA TRIGGER t_touch", false, false),
    ("DISABLE TRIGGER t_touch", false, false),
];

/// What PostgreSQL does when `clause` runs on the real table: (rewrites, reads it, the lock
/// on it, the locks on other user tables). Rolled back.
async fn truth(db: &TestDb<'_>, clause: &str) -> (bool, bool, String, Vec<(String, String)>) {
    let client = db.client().await;
    client.batch_execute("BEGIN").await.unwrap();
    let before = client
        .query_one("SELECT pg_relation_filenode('t'), coalesce((SELECT seq_scan FROM pg_stat_xact_user_tables WHERE relid = 't'::regclass), 0), (SELECT count(*) FROM pg_index WHERE indrelid = 't'::regclass)", &[])
        .await
        .unwrap();
    client.batch_execute(&format!("ALTER TABLE t {clause}")).await.unwrap_or_else(|e| panic!("{clause}: {e}"));
    let after = client
        .query_one("SELECT pg_relation_filenode('t'), coalesce((SELECT seq_scan FROM pg_stat_xact_user_tables WHERE relid = 't'::regclass), 0), (SELECT count(*) FROM pg_index WHERE indrelid = 't'::regclass)", &[])
        .await
        .unwrap();
    let locks = client
        .query(
            "SELECT c.relname::text, l.mode FROM pg_locks l JOIN pg_class c ON c.oid = l.relation
              WHERE l.pid = pg_backend_pid() AND l.granted AND c.relkind = 'r' AND c.relnamespace = 'public'::regnamespace",
            &[],
        )
        .await
        .unwrap();
    client.batch_execute("ROLLBACK").await.unwrap();
    let strongest = |rel: &str| {
        locks
            .iter()
            .filter(|r| r.get::<_, String>(0) == rel)
            .map(|r| r.get::<_, String>(1))
            .max_by_key(|m| pg_ghost_lock_strength(m))
    };
    let rewrites = before.get::<_, Option<u32>>(0) != after.get::<_, Option<u32>>(0);
    let reads = after.get::<_, i64>(1) > before.get::<_, i64>(1) || after.get::<_, i64>(2) > before.get::<_, i64>(2);
    let others = ["cust"].iter().filter_map(|r| strongest(r).map(|m| (r.to_string(), m))).collect();
    (rewrites, reads, strongest("t").unwrap_or_default(), others)
}

fn pg_ghost_lock_strength(mode: &str) -> usize {
    ["AccessShareLock", "RowShareLock", "RowExclusiveLock", "ShareUpdateExclusiveLock", "ShareLock", "ShareRowExclusiveLock", "ExclusiveLock", "AccessExclusiveLock"]
        .iter()
        .position(|m| *m == mode)
        .unwrap_or(0)
}

fn config(db: &TestDb<'_>, alter: &str) -> PlanConfig {
    PlanConfig { conn: ConnInfo::parse(&db.conninfo()).unwrap(), table: "t".into(), alter: alter.into(), conversion: None, key: None, format: Format::Json, check_data: None }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_clause_is_classified_as_postgres_does_it() {
    let db = Cluster::primary().fresh_db("plan_kinds");
    db.psql(SCHEMA);
    let mut wrong = Vec::new();
    for (clause, rewrites, reads) in CLAUSES {
        let (t_rewrites, t_reads, t_lock, t_others) = truth(&db, clause).await;
        // The table's own expectations first: they document PostgreSQL 15 and catch a
        // probe that agrees with a broken truth.
        assert_eq!((t_rewrites, t_reads), (*rewrites, *reads), "PostgreSQL itself on {clause:?}");
        let p = plan::plan(&config(&db, clause)).await.unwrap_or_else(|e| panic!("plan {clause}: {e}"));
        let c = &p.clauses[0];
        let got = (c.observed.rewrites, c.observed.scans || c.observed.builds_index, c.observed.lock.clone().unwrap_or_default());
        let others: Vec<(String, String)> = c.observed.other_locks.iter().map(|(t, m)| (t.trim_matches('"').to_string(), m.clone())).collect();
        if got != (t_rewrites, t_reads, t_lock.clone()) || others != t_others {
            wrong.push(format!("{clause}: plan says {got:?} {others:?}, PostgreSQL does {:?} {t_others:?}", (t_rewrites, t_reads, t_lock)));
        }
        let want = if t_rewrites { Strategy::Ghost } else { Strategy::Direct };
        if p.strategy != want {
            wrong.push(format!("{clause}: strategy {:?}, want {want:?}", p.strategy));
        }
    }
    assert!(wrong.is_empty(), "{} of {} clauses misread:\n{}", wrong.len(), CLAUSES.len(), wrong.join("\n"));
}

/// What existing rows can do: the plan's word against a plain ALTER on rows that break it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_existing_rows_can_break_is_said() {
    let db = Cluster::primary().fresh_db("plan_fail");
    db.psql(SCHEMA);
    db.psql("UPDATE t SET b = 'same' WHERE id <= 2; UPDATE t SET n = NULL WHERE id = 3; UPDATE t SET v = 'abc' WHERE id = 4");
    let cases = [
        ("ADD COLUMN x int NOT NULL", true),
        ("ADD UNIQUE (b)", true),
        ("ALTER COLUMN n SET NOT NULL", true),
        ("ALTER COLUMN v TYPE int USING v::int", true),
        ("ADD CHECK (n > 1)", true),
        ("ALTER COLUMN v TYPE varchar(40)", false),
        ("ADD COLUMN x int DEFAULT 0", false),
        ("ADD CHECK (n > 1) NOT VALID", false),
    ];
    for (clause, fails) in cases {
        let p = plan::plan(&PlanConfig { check_data: Some(5), ..config(&db, clause) }).await.unwrap();
        assert_eq!(p.clauses[0].can_fail_on.is_some(), fails, "{clause}: {:?}", p.clauses[0].can_fail_on);
        // --check-data reads the rows: it finds what breaks, and only that.
        assert_eq!(matches!(p.data, Some(Err(_))), fails, "{clause}: --check-data says {:?}", p.data);
        // And pg-ghost's own run fails where a plain ALTER does, no sooner.
        let out = binary::run(&db, &["--table", "t", "--alter", clause, "--skip-data-checks"]).await;
        assert_eq!(!out.status.success(), fails, "pg-ghost run (dry) --alter {clause:?}:\n{}", binary::stderr(&out));
        let client = db.client().await;
        let r = client.batch_execute(&format!("BEGIN; ALTER TABLE t {clause}; ROLLBACK")).await;
        assert_eq!(r.is_err(), fails, "a plain ALTER TABLE t {clause} on these rows");
    }
}

/// The command as a DBA runs it: text and JSON, and nothing left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plan_reads_only() {
    let db = Cluster::primary().fresh_db("plan_cli");
    db.psql(SCHEMA);
    let client = db.client().await;
    let before = CatalogSnapshot::take(&client).await;
    let alter = "ALTER COLUMN a TYPE bigint, ADD CONSTRAINT t_c_fk2 FOREIGN KEY (c) REFERENCES cust";
    let out = binary::command(&db, "plan", &["--table", "t", "--alter", alter]).output().await.unwrap();
    binary::assert_success(&out);
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in ["rewrites the table", "ACCESS EXCLUSIVE on \"public\".\"t\"", "SHARE ROW EXCLUSIVE on \"cust\"", "Strategy: ghost", "pg-ghost run --conn", "--execute"] {
        assert!(text.contains(needle), "{needle:?} not in:\n{text}");
    }
    assert!(!text.contains(crate::harness::PASSWORD) || !text.contains("password"), "{text}");

    let out = binary::command(&db, "plan", &["--table", "t", "--alter", "ADD CHECK (n > 0), ALTER COLUMN n SET NOT NULL", "--format", "json"]).output().await.unwrap();
    binary::assert_success(&out);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("plan --format json is JSON");
    assert_eq!(json["strategy"], "direct");
    assert_eq!(json["clauses"].as_array().map(Vec::len), Some(2));
    let steps: Vec<String> = json["steps"].as_array().unwrap().iter().map(|v| v["sql"].as_str().unwrap().to_string()).collect();
    assert!(steps.iter().any(|s| s.contains("NOT VALID")) && steps.iter().any(|s| s.contains("VALIDATE CONSTRAINT")), "{steps:?}");
    assert!(json["run"][0].as_str().unwrap().contains("--strategy direct --execute"), "{}", json["run"]);

    // The direct steps it prints do the change.
    for s in &steps {
        client.batch_execute(s).await.unwrap_or_else(|e| panic!("{s}: {e}"));
    }
    assert_eq!(db.psql("SELECT attnotnull FROM pg_attribute WHERE attrelid = 't'::regclass AND attname = 'n'"), "t");
    db.psql("ALTER TABLE t DROP CONSTRAINT t_n_check; ALTER TABLE t ALTER COLUMN n DROP NOT NULL");
    assert_catalog_unchanged(&before, &CatalogSnapshot::take(&client).await);

    let out = binary::command(&db, "plan", &["--table", "nope", "--alter", "ADD COLUMN x int"]).output().await.unwrap();
    assert!(!out.status.success());
    let out = binary::command(&db, "plan", &["--table", "t", "--alter", "ADD COLUMN"]).output().await.unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", binary::stderr(&out));
}

/// A table with no primary key but a unique NOT NULL index: the plan refuses the ghost way as
/// `run` does, and with `--key` it says what `run --key` does, which then goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_names_the_index_run_would_use() {
    let db = Cluster::primary().fresh_db("plan_key");
    db.psql(
        "CREATE TABLE k (code text NOT NULL, n int);
         CREATE UNIQUE INDEX k_code ON k (code);
         ALTER TABLE k REPLICA IDENTITY USING INDEX k_code;
         INSERT INTO k SELECT 'c' || g, g FROM generate_series(1, 500) g;",
    );
    let alter = "ALTER COLUMN n TYPE bigint";
    let plan = |extra: &'static [&'static str]| {
        let db = &db;
        async move {
            let out = binary::command(db, "plan", &[&["--table", "k", "--alter", alter, "--format", "json"][..], extra].concat()).output().await.unwrap();
            assert!(out.status.success(), "{}", binary::stderr(&out));
            serde_json::from_slice::<serde_json::Value>(&out.stdout).expect("plan --format json is JSON")
        }
    };
    let without = plan(&[]).await;
    assert_eq!(without["strategy"], "ghost", "{without}");
    let refused = without["refused"].as_str().unwrap_or_default().to_string();
    assert!(refused.contains("primary key") && refused.contains("--key"), "{without}");
    let out = binary::run(&db, &["--table", "k", "--alter", alter]).await;
    binary::assert_failure(&out, 3, &refused);

    let with = plan(&["--key", "k_code"]).await;
    assert_eq!(with["refused"], serde_json::Value::Null, "{with}");
    let command = with["run"][0].as_str().unwrap_or_default();
    assert!(command.contains("--key 'k_code' --execute"), "the command the plan gives lacks the key: {command}");
    binary::assert_success(&binary::run(&db, &["--table", "k", "--alter", alter, "--key", "k_code"]).await);
    let missing = plan(&["--key", "nope"]).await;
    assert!(missing["refused"].as_str().unwrap_or_default().contains("nope"), "{missing}");
}

/// `events` keyed by `id` alone, dated in 2023 and 2024: a conversion by month of 2024 leaves
/// the 2023 rows without a partition, and needs the primary key replaced.
const EVENTS: &str = "
    CREATE TABLE events (id int PRIMARY KEY, created_at timestamptz NOT NULL, body text);
    INSERT INTO events SELECT g, timestamptz '2024-01-01 12:00+00' + (g % 90) * interval '1 day', md5(g::text) FROM generate_series(1, 3000) g;
    UPDATE events SET created_at = created_at - interval '1 year' WHERE id % 7 = 0;
    ANALYZE events;";
const BY_MONTH: [&str; 4] = ["--partition-by", "RANGE (created_at)", "--partitions-auto", "monthly from 2024-01 to 2024-04"];
const NEW_KEY: &str = "DROP CONSTRAINT events_pkey, ADD PRIMARY KEY (id, created_at)";

async fn plan_json(db: &TestDb<'_>, args: &[&str]) -> serde_json::Value {
    let out = binary::command(db, "plan", &[&["--table", "events", "--format", "json"][..], args].concat()).output().await.unwrap();
    binary::assert_success(&out);
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("plan --format json is not JSON ({e}):\n{}", String::from_utf8_lossy(&out.stdout)))
}

/// `plan --partition-by`: the way (a copy into a new partitioned table), each partition with
/// its bound, the key that lacks the partition key and the `--alter` that replaces it, the
/// rows no partition takes counted as PostgreSQL counts them, and what `pg-ghost run` would
/// refuse (held against the run's own refusal); then, with the key replaced and a DEFAULT
/// partition, nothing to refuse, and the run it prints converts as a dry run. Nothing is left
/// on the server: no relation, no slot, no publication.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conversion_is_planned_without_changing_anything() {
    let db = Cluster::primary().fresh_db("plan_convert");
    db.psql(EVENTS);
    let client = db.client().await;
    let before = CatalogSnapshot::take(&client).await;
    let unrouted: i64 = db.psql("SELECT count(*) FROM events WHERE created_at < '2024-01-01 00:00+00' OR created_at >= '2024-04-01 00:00+00'").parse().unwrap();
    assert!(unrouted > 0);

    // As given: the key lacks created_at (refused first, as run refuses it first), and the
    // 2023 rows have no partition.
    let json = plan_json(&db, &BY_MONTH).await;
    assert_eq!(json["strategy"], "ghost");
    let c = &json["conversion"];
    assert_eq!(c["partition_by"], "RANGE (\"created_at\")");
    assert!(c["method"].as_str().unwrap().starts_with("a copy through a new partitioned table"), "{c}");
    assert_eq!(c["partition_count"], 3);
    let names: Vec<&str> = c["partitions"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["\"public\".\"events_p2024_01\"", "\"public\".\"events_p2024_02\"", "\"public\".\"events_p2024_03\""]);
    let first_bound = c["partitions"][0]["bound"].as_str().unwrap_or_default();
    assert!(first_bound.starts_with("FOR VALUES FROM ('2024-01-01") && first_bound.contains(") TO ('2024-02-01"), "{first_bound}");
    assert_eq!(c["keys_include_partition_key"], false);
    assert_eq!(c["keys"][0]["constraint"], "events_pkey");
    assert_eq!(c["keys"][0]["replaced_by_alter"], false);
    assert_eq!(c["keys"][0]["replacement"], "DROP CONSTRAINT \"events_pkey\", ADD PRIMARY KEY (\"id\", \"created_at\")");
    assert_eq!(c["rows_without_partition"]["count"], unrouted, "{c}");
    let refused = json["refused"].as_str().unwrap_or_default();
    assert!(refused.contains("primary key \"events_pkey\" (\"id\") lacks partition key column(s) \"created_at\""), "{refused}");
    // The plan alone left nothing: no relation, slot or publication.
    assert_catalog_unchanged(&before, &CatalogSnapshot::take(&client).await);
    let out = binary::run(&db, &[&["--table", "events"][..], &BY_MONTH[..]].concat()).await;
    binary::assert_failure(&out, 3, refused);

    // The key replaced: the rows without a partition are what run refuses, by their number.
    let json = plan_json(&db, &[&BY_MONTH[..], &["--alter", NEW_KEY][..]].concat()).await;
    assert_eq!(json["conversion"]["keys"][0]["replaced_by_alter"], true);
    let refused = json["refused"].as_str().unwrap_or_default();
    assert!(refused.starts_with(&format!("{unrouted} row(s) of \"public\".\"events\" would have no partition")), "{refused}");
    let out = binary::run(&db, &[&["--table", "events", "--alter", NEW_KEY][..], &BY_MONTH[..]].concat()).await;
    binary::assert_failure(&out, 3, refused);

    // With a DEFAULT partition: nothing refused; the text names the way, the partitions and
    // the run to make, whose dry run converts.
    let with_default = ["--partition-by", "RANGE (created_at)", "--partitions-auto", "monthly from 2024-01 to 2024-04, default", "--alter", NEW_KEY];
    let json = plan_json(&db, &with_default).await;
    assert_eq!(json["refused"], serde_json::Value::Null, "{json}");
    assert_eq!(json["conversion"]["partitions"][3]["bound"], "DEFAULT");
    assert_eq!(json["conversion"]["rows_without_partition"], serde_json::Value::Null);
    assert!(json["chosen"]["seconds"].as_f64().unwrap() > 0.0, "{}", json["chosen"]);
    let out = binary::command(&db, "plan", &[&["--table", "events"][..], &with_default[..]].concat()).output().await.unwrap();
    binary::assert_success(&out);
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "Conversion into a table partitioned by RANGE (\"created_at\")",
        "method: a copy through a new partitioned table",
        "partitions to create: 4 (one DEFAULT)",
        "primary key \"events_pkey\" (\"id\") lacks partition key column(s) \"created_at\"; the --alter replaces it",
        "rows without a partition: none: a partition takes every row",
        "Strategy: ghost",
        "offline copy",
    ] {
        assert!(text.contains(needle), "{needle:?} not in:\n{text}");
    }
    assert!(text.lines().any(|l| l.trim_start().starts_with("\"public\".\"events_default\"") && l.trim_end().ends_with(" DEFAULT")), "{text}");
    assert!(!text.contains("would refuse"), "{text}");
    assert_catalog_unchanged(&before, &CatalogSnapshot::take(&client).await);
    assert_no_slots_or_publications(&client).await;
    let command = json["run"][0].as_str().unwrap();
    assert!(command.contains("--partition-by 'RANGE (created_at)' --partitions-auto 'monthly from 2024-01 to 2024-04, default'") && command.ends_with(&format!("--alter '{NEW_KEY}' --execute")), "{command}");
    let out = binary::run(&db, &[&["--table", "events"][..], &with_default[..]].concat()).await;
    binary::assert_success(&out);

    // Nor after the runs (the dry run cleaned up).
    assert_catalog_unchanged(&before, &CatalogSnapshot::take(&client).await);
    assert_no_slots_or_publications(&client).await;
}

/// Bad conversion flags: a usage error, or a refusal that names the problem; nothing changes.
#[tokio::test]
async fn a_conversion_plan_refuses_bad_input_clearly() {
    let db = Cluster::primary().fresh_db("plan_convert_bad");
    db.psql(EVENTS);
    let client = db.client().await;
    let before = CatalogSnapshot::take(&client).await;
    let plan = |args: &'static [&'static str]| {
        let db = &db;
        async move { binary::command(db, "plan", &[&["--table", "events"][..], args].concat()).output().await.unwrap() }
    };
    // Usage: partitions without a key, a key without partitions, both sources.
    let out = plan(&["--partition-by", "RANGE (created_at)"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", binary::stderr(&out));
    let out = plan(&["--partitions-auto", "monthly from 2024-01 to 2024-02"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", binary::stderr(&out));
    let out = plan(&["--partition-by", "RANGE (created_at)", "--partitions-auto", "weekly from 2024-01 to 2024-02"]).await;
    binary::assert_failure(&out, 2, "--partitions-auto \"weekly from 2024-01 to 2024-02\": unknown step \"weekly\"");
    let out = plan(&["--partition-by", "RANGE (lower(body))", "--partitions-auto", "monthly from 2024-01 to 2024-02"]).await;
    binary::assert_failure(&out, 2, "the partition key must be plain columns");
    // A column the table does not have: refused, named, as run refuses it.
    let out = plan(&["--partition-by", "RANGE (nope)", "--partitions-auto", "monthly from 2024-01 to 2024-02", "--alter", NEW_KEY, "--format", "json"]).await;
    binary::assert_success(&out);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let refused = json["refused"].as_str().unwrap_or_default();
    assert!(refused.contains("the partition key names column \"nope\", which \"public\".\"events\" does not have"), "{refused}");
    let out = binary::run(&db, &["--table", "events", "--partition-by", "RANGE (nope)", "--partitions-auto", "monthly from 2024-01 to 2024-02", "--alter", NEW_KEY]).await;
    binary::assert_failure(&out, 3, refused);
    // A partition of another table: what run refuses, said by the plan.
    db.psql("CREATE TABLE other (id int)");
    let file = crate::run_faults::flag_path(&db, "other.sql");
    std::fs::write(&file, "CREATE TABLE events_all PARTITION OF other DEFAULT;").unwrap();
    let out = binary::command(&db, "plan", &["--table", "events", "--partition-by", "RANGE (created_at)", "--partitions", file.to_str().unwrap(), "--alter", NEW_KEY, "--format", "json"])
        .output()
        .await
        .unwrap();
    binary::assert_success(&out);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let refused = json["refused"].as_str().unwrap_or_default();
    assert!(refused.contains("partition \"public\".\"events_all\" is made PARTITION OF \"other\", which is not \"public\".\"events\""), "{refused}");
    db.psql("DROP TABLE other");
    assert_catalog_unchanged(&before, &CatalogSnapshot::take(&client).await);
    assert_no_slots_or_publications(&client).await;
}
