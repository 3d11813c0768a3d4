//! `pg-ghost run` refusing, through the binary as a DBA runs it: every refusal exits with its
//! code and a one-line reason that names the problem, and leaves the database exactly as it
//! was (catalog snapshot before and after, no slot, no publication). Names that need quoting
//! work, and nothing given as a name or an ALTER can run SQL of its own.
//!
//! Also the dry run under a workload: it ends with the catalogs as they were.

use crate::binary;
use crate::harness::Cluster;
use crate::oracle::*;
use std::process::Output;
use std::time::Duration;

/// The one-line reason pg-ghost prints last on stderr (`pg-ghost: ...`), without the prefix.
pub(crate) fn reason(out: &Output) -> String {
    let err = binary::stderr(out);
    err.lines()
        .rev()
        .find_map(|l| l.strip_prefix("pg-ghost: "))
        .unwrap_or_else(|| panic!("no one-line reason on stderr ({}):\n{err}", out.status))
        .to_string()
}

/// pg-ghost exited with `code` and its one-line reason mentions every needle.
pub(crate) fn assert_exit(out: &Output, code: i32, needles: &[&str]) {
    binary::assert_failure(out, code, needles.first().copied().unwrap_or(""));
    let err = binary::stderr(out);
    let reason = reason(out);
    for needle in needles {
        assert!(reason.contains(needle), "the reason does not mention {needle:?}: {reason}\n--- stderr:\n{err}");
    }
}

/// The database holds no replication slot and no publication but those it had before.
fn assert_stream_objects_as_before(before: &CatalogSnapshot, after: &CatalogSnapshot) {
    assert!(after.slots.is_empty(), "replication slots left: {:?}", after.slots);
    assert_eq!(before.publications, after.publications, "publications changed");
}

/// A table name exists (any schema).
pub(crate) async fn relation_exists(client: &tokio_postgres::Client, schema: &str, name: &str) -> bool {
    client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relname = $2)",
            &[&schema, &name],
        )
        .await
        .unwrap()
        .get(0)
}

// ---- refusals, table-driven ------------------------------------------------------------

struct Refusal {
    prefix: &'static str,
    /// Run before the snapshot.
    setup: &'static str,
    table: &'static str,
    alter: &'static str,
    code: i32,
    /// Every one must appear in the one-line reason.
    needles: &'static [&'static str],
    /// Relations (`schema`, `name`) that must still exist afterwards (the catalog snapshot
    /// proves it too; this names the point of the case).
    survivors: &'static [(&'static str, &'static str)],
}

const ORDERS: &str = "CREATE TABLE orders (id bigint PRIMARY KEY, n int, note text);
                      INSERT INTO orders SELECT g, g % 100, 'note ' || g FROM generate_series(1, 2000) g;";

async fn check_refusal(case: Refusal) {
    let db = Cluster::primary().fresh_db(case.prefix);
    db.psql(ORDERS);
    db.psql("CREATE TABLE victim (id int PRIMARY KEY); INSERT INTO victim VALUES (1), (2), (3);");
    if !case.setup.is_empty() {
        db.psql(case.setup);
    }
    let client = db.client().await;
    let before = CatalogSnapshot::take(&client).await;
    let victim_before = db.psql("SELECT string_agg(id::text, ',' ORDER BY id) FROM victim");

    let out = binary::run(&db, &["--table", case.table, "--alter", case.alter, "--execute"]).await;
    assert_exit(&out, case.code, case.needles);

    let after = CatalogSnapshot::take(&client).await;
    assert_catalog_unchanged(&before, &after);
    assert_stream_objects_as_before(&before, &after);
    for (schema, name) in case.survivors {
        assert!(relation_exists(&client, schema, name).await, "{schema}.{name} is gone");
    }
    assert_eq!(db.psql("SELECT string_agg(id::text, ',' ORDER BY id) FROM victim"), victim_before, "victim's rows changed");
    assert_eq!(db.psql("SELECT count(*) FROM orders"), "2000");
}

macro_rules! refusal_tests {
    ($($name:ident: $case:expr;)*) => {
        $(
            #[tokio::test]
            async fn $name() {
                check_refusal($case).await;
            }
        )*
    };
}

refusal_tests! {
    refuses_malformed_alter: Refusal {
        prefix: "rf_malformed", setup: "", table: "orders", alter: "ADD COLUMN", code: 2,
        needles: &["--alter", "not valid SQL"], survivors: &[],
    };
    refuses_two_statements: Refusal {
        prefix: "rf_two", setup: "CREATE TABLE other (id int PRIMARY KEY)", table: "orders",
        alter: "ADD COLUMN x int; DROP TABLE other", code: 2,
        needles: &["one ALTER TABLE statement", "2 statements"], survivors: &[("public", "other")],
    };
    refuses_a_second_statement_that_drops_the_victim: Refusal {
        prefix: "rf_two_victim", setup: "", table: "orders",
        alter: "ADD COLUMN x int; DROP TABLE victim;", code: 2,
        needles: &["one ALTER TABLE statement"], survivors: &[("public", "victim")],
    };
    refuses_an_alter_that_closes_a_parenthesis_to_inject: Refusal {
        prefix: "rf_paren", setup: "", table: "orders",
        alter: "ADD COLUMN x int); DROP TABLE victim; --", code: 2,
        needles: &["--alter"], survivors: &[("public", "victim")],
    };
    refuses_rename_to: Refusal {
        prefix: "rf_rename", setup: "", table: "orders", alter: "RENAME TO x", code: 3,
        needles: &["RENAME TO"], survivors: &[("public", "orders")],
    };
    refuses_set_schema: Refusal {
        prefix: "rf_schema", setup: "CREATE SCHEMA s", table: "orders", alter: "SET SCHEMA s", code: 3,
        needles: &["SET SCHEMA"], survivors: &[("public", "orders")],
    };
    refuses_a_missing_table: Refusal {
        prefix: "rf_missing", setup: "", table: "no_such_table", alter: "ADD COLUMN x int", code: 3,
        needles: &["no_such_table", "does not exist"], survivors: &[],
    };
    refuses_a_missing_qualified_table: Refusal {
        prefix: "rf_missing_q", setup: "", table: "public.no_such_table", alter: "ADD COLUMN x int", code: 3,
        needles: &["no_such_table", "does not exist"], survivors: &[],
    };
    refuses_a_table_without_primary_key: Refusal {
        prefix: "rf_nopk", setup: "CREATE TABLE heap (id int, v text); INSERT INTO heap VALUES (1, 'a');", table: "heap",
        alter: "ADD COLUMN x int", code: 3, needles: &["heap", "no primary key", "--key"], survivors: &[],
    };
    refuses_a_view: Refusal {
        prefix: "rf_view", setup: "CREATE VIEW v_orders AS SELECT id, n FROM orders", table: "v_orders",
        alter: "ADD COLUMN x int", code: 3, needles: &["v_orders", "is a view"], survivors: &[],
    };
    refuses_with_a_for_all_tables_publication: Refusal {
        prefix: "rf_alltables", setup: "CREATE PUBLICATION everything FOR ALL TABLES", table: "orders",
        alter: "ADD COLUMN x int", code: 3, needles: &["everything", "FOR ALL TABLES"], survivors: &[],
    };
    refuses_a_table_with_a_dependent_view: Refusal {
        prefix: "rf_depview", setup: "CREATE VIEW big_orders AS SELECT id, note FROM orders WHERE n > 50", table: "orders",
        alter: "ALTER COLUMN n TYPE bigint", code: 3, needles: &["used by a view or rule", "big_orders", "depends on column \"n\""], survivors: &[],
    };
}

/// A clause on the table's own columns that PostgreSQL refuses on the table's clone, where
/// `--strategy auto` reads what each clause does, stops the run with PostgreSQL's reason and
/// the clause before anything changes (exit 3), where the direct way would have added the
/// column of the first clause and then met the refusal on the table.
#[tokio::test]
async fn a_type_change_postgresql_rejects_is_refused_with_its_reason_under_auto() {
    let db = Cluster::primary().fresh_db("rf_rejected_type");
    db.psql(ORDERS);
    db.psql("ALTER TABLE orders ADD COLUMN twice int GENERATED ALWAYS AS (n * 2) STORED");
    let client = db.client().await;
    let before = CatalogSnapshot::take(&client).await;
    let out = binary::run(&db, &["--table", "orders", "--alter", "ADD COLUMN x int, ALTER COLUMN n TYPE bigint", "--strategy", "auto", "--execute"]).await;
    assert_exit(&out, 3, &["PostgreSQL rejected the ALTER", "clause 2 (ALTER TABLE", "used by a generated column"]);
    assert_catalog_unchanged(&before, &CatalogSnapshot::take(&client).await);
}

// ---- names that need quoting, and injection through --table ------------------------------

const WEIRD_SCHEMA: &str = "S p";
const WEIRD_TABLE: &str = "We \"ird\" Tä ble";

/// Dry run, then a real run, on a table whose schema, table and column names need quoting
/// (spaces, quotes, upper case, non-ASCII); the ALTER names quoted columns too.
#[tokio::test]
async fn quoted_unicode_upper_case_names_work() {
    let db = Cluster::primary().fresh_db("rf_weird");
    let q = qualified(WEIRD_SCHEMA, WEIRD_TABLE);
    db.psql(&format!(
        "CREATE SCHEMA {schema};
         CREATE TABLE {q} (\"Id\" bigint PRIMARY KEY, \"UPPER\" int NOT NULL, \"Näme \"\"x\"\"\" text, \"a;b\" text);
         CREATE INDEX \"Idx Ü\" ON {q} (\"UPPER\");
         INSERT INTO {q} SELECT g, g % 50, 'n''' || g, 'x\"; DROP TABLE victim; --' FROM generate_series(1, 2000) g;
         CREATE TABLE victim (id int PRIMARY KEY); INSERT INTO victim VALUES (1);
         CREATE TABLE before_rows AS SELECT * FROM {q};",
        schema = ident(WEIRD_SCHEMA)
    ));
    let client = db.client().await;
    let alter = "ALTER COLUMN \"UPPER\" TYPE bigint, ADD COLUMN \"nëw \"\"c\"\"\" text DEFAULT 'a''b'";

    // The dry run: succeeds and leaves nothing.
    let before = CatalogSnapshot::take(&client).await;
    let out = binary::run(&db, &["--table", &q, "--alter", alter]).await;
    binary::assert_success(&out);
    assert_catalog_unchanged(&before, &CatalogSnapshot::take(&client).await);

    // The real run: the change is made under the same quoted names.
    let out = binary::run(&db, &["--table", &q, "--alter", alter, "--execute", "--ok-to-drop-table"]).await;
    binary::assert_success(&out);
    let ty = db.psql(&format!(
        "SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = {}::regclass AND attname = 'UPPER'",
        literal(&q)
    ));
    assert_eq!(ty, "bigint");
    let projection =
        Projection::identity(&["Id", "UPPER", "Näme \"x\"", "a;b"]).map("UPPER", "\"UPPER\"::bigint").add("nëw \"c\"", "'a''b'");
    assert_same_rows(&client, &q, &qualified("public", "before_rows"), &projection).await;
    assert!(relation_exists(&client, WEIRD_SCHEMA, "Idx Ü").await, "the index lost its name");
    for leftover in ["_We \"ird\" Tä ble_gho", "_We \"ird\" Tä ble_ghc", "_We \"ird\" Tä ble_del"] {
        assert!(!relation_exists(&client, WEIRD_SCHEMA, leftover).await, "{leftover} left behind");
    }
    assert!(relation_exists(&client, "public", "victim").await);
    assert_no_slots_or_publications(&client).await;
}

/// Tables literally named like SQL injections are changed like any other (dry run), and
/// `victim` survives.
#[tokio::test]
async fn table_names_that_look_like_injections_are_only_names() {
    let db = Cluster::primary().fresh_db("rf_inject_names");
    let names = ["o'; DROP TABLE victim; --", "x\"; DROP TABLE victim; --", "t) ; DROP TABLE victim"];
    for name in names {
        db.psql(&format!(
            "CREATE TABLE {q} (id int PRIMARY KEY, v text); INSERT INTO {q} SELECT g, 'v' || g FROM generate_series(1, 500) g;",
            q = ident(name)
        ));
    }
    db.psql("CREATE TABLE victim (id int PRIMARY KEY); INSERT INTO victim VALUES (1);");
    let client = db.client().await;
    let before = CatalogSnapshot::take(&client).await;
    for name in names {
        let out = binary::run(&db, &["--table", &ident(name), "--alter", "ADD COLUMN w int"]).await;
        binary::assert_success(&out);
    }
    assert_catalog_unchanged(&before, &CatalogSnapshot::take(&client).await);
    assert_eq!(db.psql("SELECT count(*) FROM victim"), "1");
}

/// `--table` values that try to smuggle SQL: each fails, nothing changes, `victim` survives.
#[tokio::test]
async fn injection_through_table_argument_fails_and_changes_nothing() {
    let db = Cluster::primary().fresh_db("rf_inject");
    db.psql(ORDERS);
    db.psql("CREATE TABLE victim (id int PRIMARY KEY); INSERT INTO victim VALUES (1), (2);");
    let client = db.client().await;
    let before = CatalogSnapshot::take(&client).await;
    let attempts = [
        "orders; DROP TABLE victim",
        "public.orders; DROP TABLE victim",
        "orders\"; DROP TABLE victim; --",
        "orders'); DROP TABLE victim; --",
        "\"orders; DROP TABLE victim\"",
        "orders WHERE false; DROP TABLE victim",
    ];
    for table in attempts {
        for execute in [false, true] {
            let mut args = vec!["--table", table, "--alter", "ADD COLUMN x int"];
            if execute {
                args.push("--execute");
            }
            let out = binary::run(&db, &args).await;
            let code = out.status.code();
            assert!(
                matches!(code, Some(2) | Some(3)),
                "--table {table:?}: expected a usage error or a refusal, got {}:\n{}",
                out.status,
                binary::stderr(&out)
            );
            let _ = reason(&out);
            assert_eq!(db.psql("SELECT count(*) FROM victim"), "2", "--table {table:?} dropped or changed victim");
        }
    }
    assert_catalog_unchanged(&before, &CatalogSnapshot::take(&client).await);
}

// ---- the dry run under load --------------------------------------------------------------

/// Without --execute, under a workload: exit 0, and afterwards the catalogs are exactly as
/// before (no ghost, no changelog, no slot, no publication, nothing renamed); the workload
/// saw no error and the table still equals its control.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_under_load_leaves_the_catalogs_as_they_were() {
    let db = Cluster::primary().fresh_db("rf_dryrun");
    let table = OracleTable::create(&db, "orders", KeyKind::Identity, 3_000).await;
    let client = db.client().await;
    let before = CatalogSnapshot::take(&client).await;
    let oid_before = db.psql("SELECT 'orders'::regclass::oid");
    let workload = Workload::start(&db, &table, WorkloadOptions::new(2).rate(Some(60))).await;
    workload.wait_for_more_commits(20, Duration::from_secs(30)).await;

    let out = binary::run(
        &db,
        &["--table", "orders", "--alter", "ALTER COLUMN n TYPE bigint, ADD COLUMN f boolean NOT NULL DEFAULT false", "--chunk-size", "500"],
    )
    .await;
    binary::assert_success(&out);

    workload.wait_for_more_commits(20, Duration::from_secs(30)).await;
    let report = workload.stop().await;
    assert!(report.errors.is_empty(), "workload errors (seed {}): {:#?}", report.seed, report.errors);
    assert_eq!(report.committed_after_swap, 0, "the table was swapped by a dry run");

    let after = CatalogSnapshot::take(&client).await;
    assert_catalog_unchanged(&before, &after);
    assert!(after.slots.is_empty() && after.publications.is_empty());
    assert_eq!(db.psql("SELECT 'orders'::regclass::oid"), oid_before);
    for leftover in ["_orders_gho", "_orders_ghc", "_orders_del"] {
        assert!(!relation_exists(&client, "public", leftover).await, "{leftover} left behind");
    }
    table.assert_matches_control(&client, &table.projection()).await;
}

/// A partition tree whose ghost's creation or cut-over would run the server's lock table out
/// (`max_locks_per_transaction` at its minimum): refused before anything is made, naming the
/// tree's size and the value to set; with that value the same run goes through.
#[tokio::test]
async fn a_tree_the_lock_table_cannot_hold_is_refused_with_the_setting_to_raise() {
    let cluster = Cluster::start("locks");
    let db = cluster.fresh_db("rf_locks");
    db.psql(
        "CREATE TABLE events (id bigint, day int, note text, PRIMARY KEY (id, day)) PARTITION BY RANGE (day);
         DO $$ BEGIN FOR d IN 0 .. 299 LOOP
           EXECUTE format('CREATE TABLE %I PARTITION OF events FOR VALUES FROM (%s) TO (%s)', 'events_' || d, d, d + 1);
         END LOOP; END $$;
         CREATE INDEX events_note_idx ON events (note);
         INSERT INTO events SELECT g, g % 300, 'n' || g FROM generate_series(1, 3000) g;",
    );
    // Lowered once the tree exists: creating it in one statement would not fit either.
    cluster.psql("postgres", "ALTER SYSTEM SET max_locks_per_transaction = 10");
    cluster.restart();
    db.psql(
        "CREATE TABLE visits (id bigint PRIMARY KEY, at timestamptz NOT NULL);
         INSERT INTO visits SELECT g, timestamptz '2000-01-01' + g * interval '1 day' FROM generate_series(1, 3000) g;",
    );
    let client = db.client().await;
    let before = CatalogSnapshot::take(&client).await;
    let args = ["--table", "events", "--alter", "ALTER COLUMN note TYPE varchar(100)", "--execute"];
    let out = binary::run(&db, &args).await;
    assert_exit(&out, 3, &["301 tables and 602 indexes", "max_locks_per_transaction 10", "out of shared memory"]);
    // A plain table converted into 399 monthly partitions: the tree to be is counted.
    let months = "monthly from 2000-01 to 2033-04";
    let convert = ["--table", "visits", "--alter", "DROP CONSTRAINT visits_pkey, ADD PRIMARY KEY (id, at)", "--partition-by", "RANGE (at)", "--partitions-auto", months, "--execute"];
    let converted = binary::run(&db, &convert).await;
    assert_exit(&converted, 3, &["400 tables and 400 indexes", "max_locks_per_transaction 10"]);
    let after = CatalogSnapshot::take(&client).await;
    assert_catalog_unchanged(&before, &after);
    assert_stream_objects_as_before(&before, &after);

    // The value the refusal gives is enough.
    let reason = reason(&out);
    let advised = reason
        .split("max_locks_per_transaction = ")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .unwrap_or_else(|| panic!("no value to set in: {reason}"));
    cluster.psql("postgres", &format!("ALTER SYSTEM SET max_locks_per_transaction = {advised}"));
    cluster.restart();
    let out = binary::run(&db, &args).await;
    binary::assert_success(&out);
    assert_eq!(db.psql("SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'events_7'::regclass AND attname = 'note'"), "character varying(100)");
    assert_eq!(db.psql("SELECT count(*) FROM events"), "3000");
}
