//! Data checks before the copy, through the binary: each clause existing rows can break
//! (duplicates, orphans, NULLs, CHECK violations, failing casts) is refused with exit code
//! 3, the right keys and values and a query listing them all, and nothing created (catalog
//! snapshot before and after, no slot, no publication); a clean table passes and the run
//! completes; `--skip-data-checks` leaves the finding to the copy; a check waits while the
//! throttle flag file exists.

use crate::binary;
use crate::harness::{Cluster, TestDb};
use crate::oracle::*;
use crate::run_refusals::{assert_exit, reason, relation_exists};
use std::process::Stdio;
use std::time::{Duration, Instant};

/// Every run ignores the host-wide throttle flag file (another test may create it).
const COMMON: [&str; 2] = ["--throttle-additional-flag-file", ""];

/// Runs pg-ghost with `args`, expects a data check refusal naming every needle, and checks
/// that nothing was created. Returns the one-line reason.
async fn refused(db: &TestDb<'_>, args: &[&str], needles: &[&str]) -> String {
    let client = db.client().await;
    let before = CatalogSnapshot::take(&client).await;
    let mut all: Vec<&str> = COMMON.to_vec();
    all.extend_from_slice(args);
    all.push("--execute");
    let out = binary::run(db, &all).await;
    let mut want = vec!["data check: existing rows of", "Nothing was created", "List them all with"];
    want.extend_from_slice(needles);
    assert_exit(&out, 3, &want);
    let after = CatalogSnapshot::take(&client).await;
    assert_catalog_unchanged(&before, &after);
    assert!(after.slots.is_empty(), "replication slots left: {:?}", after.slots);
    assert_eq!(before.publications, after.publications, "publications changed");
    reason(&out)
}

/// The query the refusal gives to list every offending row.
fn listing(reason: &str) -> &str {
    let start = reason.find("List them all with: ").map(|i| i + "List them all with: ".len()).unwrap_or_else(|| panic!("no query: {reason}"));
    let end = reason.rfind(" (or run with --skip-data-checks").unwrap_or_else(|| panic!("no end of the query: {reason}"));
    &reason[start..end]
}

fn assert_absent(reason: &str, needles: &[&str]) {
    for n in needles {
        assert!(!reason.contains(n), "the reason mentions {n:?}: {reason}");
    }
}

#[tokio::test]
async fn duplicates_for_a_new_unique_are_refused_with_their_keys() {
    let db = Cluster::primary().fresh_db("dc_unique");
    db.psql(
        "CREATE TABLE \"Kunden Ä\" (id int PRIMARY KEY, \"E-Mail\" text);
         INSERT INTO \"Kunden Ä\" SELECT g, 'k' || g || '@x' FROM generate_series(1, 300) g;
         UPDATE \"Kunden Ä\" SET \"E-Mail\" = 'dup@x' WHERE id IN (5, 150);
         UPDATE \"Kunden Ä\" SET \"E-Mail\" = 'tri@x' WHERE id IN (7, 8, 290);
         UPDATE \"Kunden Ä\" SET \"E-Mail\" = NULL WHERE id IN (20, 21);",
    );
    let r = refused(
        &db,
        &["--table", "\"Kunden Ä\"", "--alter", "ADD CONSTRAINT \"uq Mail\" UNIQUE (\"E-Mail\")"],
        &[
            "UNIQUE (\"E-Mail\") (constraint \"uq Mail\")",
            "2 duplicate values found",
            "\"E-Mail\"='dup@x' on 2 rows, keys \"id\"='5', \"id\"='150'",
            "='tri@x' on 3 rows, keys \"id\"='7', \"id\"='8', \"id\"='290'",
            "GROUP BY",
        ],
    )
    .await;
    // Two NULLs do not collide.
    assert_absent(&r, &["'20'", "NULL on"]);
    let client = db.client().await;
    let all = client.query(listing(&r), &[]).await.unwrap();
    let counts: Vec<i64> = all.iter().map(|row| row.get(1)).collect();
    assert_eq!(counts, [2, 3]);
}

#[tokio::test]
async fn duplicates_for_a_new_composite_primary_key_are_refused() {
    let db = Cluster::primary().fresh_db("dc_pkey");
    db.psql(
        "CREATE TABLE acc (tenant int, id int, code text NOT NULL, PRIMARY KEY (tenant, id));
         INSERT INTO acc SELECT g % 3, g, 'c' || g FROM generate_series(1, 500) g;
         UPDATE acc SET code = 'A' WHERE (tenant, id) IN ((1, 4), (1, 301));",
    );
    refused(
        &db,
        &["--table", "acc", "--alter", "DROP CONSTRAINT acc_pkey, ADD PRIMARY KEY (tenant, code)"],
        &[
            "PRIMARY KEY (tenant, code)",
            "1 duplicate value found",
            "\"tenant\"='1', \"code\"='A' on 2 rows, keys (\"tenant\", \"id\")=('1', '4'), (\"tenant\", \"id\")=('1', '301')",
        ],
    )
    .await;
}

#[tokio::test]
async fn orphans_for_a_new_foreign_key_are_refused() {
    let db = Cluster::primary().fresh_db("dc_fk");
    db.psql(
        "CREATE TABLE customers (id int PRIMARY KEY);
         INSERT INTO customers SELECT generate_series(1, 10);
         CREATE TABLE orders (id bigint PRIMARY KEY, customer_id int);
         INSERT INTO orders SELECT g, 1 + g % 10 FROM generate_series(1, 400) g;
         UPDATE orders SET customer_id = 42 WHERE id = 17;
         UPDATE orders SET customer_id = 99 WHERE id = 230;
         UPDATE orders SET customer_id = NULL WHERE id = 3;",
    );
    let r = refused(
        &db,
        &[
            "--table",
            "orders",
            "--alter",
            "ADD CONSTRAINT fk_customer FOREIGN KEY (customer_id) REFERENCES customers (id)",
            "--chunk-size",
            "50",
        ],
        &[
            "FOREIGN KEY (customer_id) REFERENCES customers(id) (constraint \"fk_customer\")",
            "2 orphan rows (no referenced row) found",
            "key \"id\"='17': \"customer_id\"='42'",
            "key \"id\"='230': \"customer_id\"='99'",
        ],
    )
    .await;
    // MATCH SIMPLE: a NULL references nothing and passes.
    assert_absent(&r, &["'3'"]);
}

#[tokio::test]
async fn nulls_for_set_not_null_are_refused_up_to_the_limit() {
    let db = Cluster::primary().fresh_db("dc_notnull");
    db.psql(
        "CREATE TABLE t (id int PRIMARY KEY, note text);
         INSERT INTO t SELECT g, 'n' || g FROM generate_series(1, 300) g;
         UPDATE t SET note = NULL WHERE id IN (10, 20, 250);",
    );
    let r = refused(
        &db,
        &["--table", "t", "--alter", "ALTER COLUMN note SET NOT NULL", "--data-check-limit", "2"],
        &["\"note\" NOT NULL", "at least 2 NULLs found, first 2: key \"id\"='10'; key \"id\"='20'", "IS NULL"],
    )
    .await;
    assert_absent(&r, &["'250'"]);
    // Without the limit, all three; a NOT NULL column added without a default is all NULLs.
    let r = refused(&db, &["--table", "t", "--alter", "ALTER COLUMN note SET NOT NULL"], &["3 NULLs found"]).await;
    assert!(r.contains("\"id\"='250'"), "{r}");
    let client = db.client().await;
    let keys: Vec<String> = client.query(listing(&r), &[]).await.unwrap().iter().map(|row| row.get(0)).collect();
    assert_eq!(keys, ["10", "20", "250"]);
    refused(&db, &["--table", "t", "--alter", "ADD COLUMN extra int NOT NULL", "--data-check-limit", "1"], &["\"extra\" NOT NULL", "key \"id\"='1'"]).await;
}

#[tokio::test]
async fn check_violations_are_refused() {
    let db = Cluster::primary().fresh_db("dc_check");
    db.psql(
        "CREATE TABLE stock (id int PRIMARY KEY, qty int, price numeric);
         INSERT INTO stock SELECT g, g, 1 FROM generate_series(1, 300) g;
         UPDATE stock SET qty = 0 WHERE id = 4;
         UPDATE stock SET qty = -3 WHERE id = 209;
         UPDATE stock SET qty = NULL WHERE id = 11;",
    );
    let r = refused(
        &db,
        &["--table", "stock", "--alter", "ADD CONSTRAINT positive CHECK (qty > 0)", "--chunk-size", "64"],
        &[
            "CHECK ((qty > 0)) (constraint \"positive\")",
            "2 rows that violate it found",
            "key \"id\"='4': \"qty\"='0'",
            "key \"id\"='209': \"qty\"='-3'",
        ],
    )
    .await;
    assert_absent(&r, &["'11'"]);
    // A CHECK on a column whose type changes is evaluated on the new type; one whose
    // expression fails for a row reports that row with PostgreSQL's message.
    db.psql("UPDATE stock SET qty = 1 WHERE id IN (4, 209); UPDATE stock SET price = 0 WHERE id = 150;");
    refused(
        &db,
        &["--table", "stock", "--alter", "ADD CONSTRAINT per_unit CHECK (qty / price > 0)", "--chunk-size", "64"],
        &["1 row that violates it found", "key \"id\"='150': \"qty\"='150', \"price\"='0' (division by zero)"],
    )
    .await;
    refused(
        &db,
        &["--table", "stock", "--alter", "ALTER COLUMN price TYPE int USING (price * 10)::int, ADD CHECK (price < 10)"],
        &["CHECK ((price < 10))", "\"price\"='10'"],
    )
    .await;
}

#[tokio::test]
async fn failing_casts_are_refused_with_and_without_using() {
    let db = Cluster::primary().fresh_db("dc_cast");
    db.psql(
        "CREATE TABLE \"Teile\" (id int PRIMARY KEY, \"Code Nr\" text, big bigint, tag text);
         INSERT INTO \"Teile\" SELECT g, g::text, g, 't' FROM generate_series(1, 400) g;
         UPDATE \"Teile\" SET \"Code Nr\" = 'abc' WHERE id = 33;
         UPDATE \"Teile\" SET \"Code Nr\" = '12x' WHERE id = 160;
         UPDATE \"Teile\" SET big = 3000000000 WHERE id = 77;
         UPDATE \"Teile\" SET tag = 'toolong' WHERE id = 5;
         UPDATE \"Teile\" SET tag = 'ab     ' WHERE id = 6;",
    );
    refused(
        &db,
        &["--table", "\"Teile\"", "--alter", "ALTER COLUMN \"Code Nr\" TYPE integer USING \"Code Nr\"::integer", "--chunk-size", "50"],
        &[
            "ALTER COLUMN \"Code Nr\" TYPE integer USING (\"Code Nr\"::int)",
            "2 rows that fail the type change found",
            "key \"id\"='33': \"Code Nr\"='abc' (invalid input syntax for type integer: \"abc\")",
            "key \"id\"='160': \"Code Nr\"='12x'",
            "DO $pg_ghost$",
        ],
    )
    .await;
    refused(
        &db,
        &["--table", "\"Teile\"", "--alter", "ALTER COLUMN big TYPE integer"],
        &["ALTER COLUMN \"big\" TYPE integer", "key \"id\"='77': \"big\"='3000000000' (integer out of range)"],
    )
    .await;
    // The copy's assignment refuses what an explicit cast to varchar(3) would cut; trailing
    // spaces may go.
    let r = refused(
        &db,
        &["--table", "\"Teile\"", "--alter", "ALTER COLUMN tag TYPE varchar(3)"],
        &["1 row that fails the type change found", "key \"id\"='5': \"tag\"='toolong'"],
    )
    .await;
    assert_absent(&r, &["'6'"]);
}

/// Every kind of check on clean rows: the checks pass and the run completes with the change.
#[tokio::test]
async fn a_clean_table_passes_and_the_run_completes() {
    let db = Cluster::primary().fresh_db("dc_clean");
    db.psql(
        "CREATE TABLE customers (id int PRIMARY KEY);
         INSERT INTO customers SELECT generate_series(1, 10);
         CREATE TABLE \"Bestellung ü\" (id int PRIMARY KEY, email text, note text, qty int, code text, cid int, n int);
         INSERT INTO \"Bestellung ü\" SELECT g, 'e' || g, 'n', g, g::text, 1 + g % 10, g FROM generate_series(1, 2000) g;",
    );
    let alter = "ADD CONSTRAINT u UNIQUE (email), ALTER COLUMN note SET NOT NULL, ADD CONSTRAINT c CHECK (qty >= 0), \
                 ALTER COLUMN code TYPE int USING code::int, ADD CONSTRAINT f FOREIGN KEY (cid) REFERENCES customers (id), \
                 ALTER COLUMN n TYPE bigint";
    let mut args: Vec<&str> = COMMON.to_vec();
    args.extend(["--table", "\"Bestellung ü\"", "--alter", alter, "--execute", "--chunk-size", "300"]);
    let out = binary::run(&db, &args).await;
    binary::assert_success(&out);
    let log = binary::stderr(&out);
    assert!(log.contains("data checks passed"), "{log}");
    // integer to bigint cannot fail: no check for it.
    assert!(!log.contains("clause=ALTER COLUMN n TYPE bigint"), "{log}");
    let code_type = db.psql("SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = '\"Bestellung ü\"'::regclass AND attname = 'code'");
    assert_eq!(code_type, "integer");
    assert_eq!(db.psql("SELECT count(*) FROM pg_constraint WHERE conrelid = '\"Bestellung ü\"'::regclass AND conname IN ('u', 'c', 'f')"), "3");
}

/// `--skip-data-checks`: the duplicate is found by the index build after the copy, which
/// stops the run; the original is untouched.
#[tokio::test]
async fn skipping_the_checks_leaves_the_finding_to_the_index_build() {
    let db = Cluster::primary().fresh_db("dc_skip");
    db.psql(
        "CREATE TABLE t (id int PRIMARY KEY, email text);
         INSERT INTO t SELECT g, 'e' || g FROM generate_series(1, 500) g;
         UPDATE t SET email = 'same' WHERE id IN (3, 4);",
    );
    let mut args: Vec<&str> = COMMON.to_vec();
    args.extend(["--table", "t", "--alter", "ADD CONSTRAINT u UNIQUE (email)", "--execute", "--skip-data-checks"]);
    let out = binary::run(&db, &args).await;
    let log = binary::stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{log}");
    assert!(log.contains("--skip-data-checks"), "{log}");
    assert!(!log.contains("data check:"), "{log}");
    assert!(reason(&out).contains("could not create unique index"), "{log}");
    assert_eq!(db.psql("SELECT count(*) FROM pg_constraint WHERE conrelid = 't'::regclass AND conname = 'u'"), "0");
    assert_eq!(db.psql("SELECT count(*) FROM t"), "500");
}

/// A check waits while the throttle flag file exists, with nothing created yet, and goes
/// on to a complete run once it is removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_check_waits_while_the_throttle_flag_file_exists() {
    let db = Cluster::primary().fresh_db("dc_throttle");
    db.psql(
        "CREATE TABLE t (id int PRIMARY KEY, qty int);
         INSERT INTO t SELECT g, g FROM generate_series(1, 1000) g;",
    );
    let flag = std::env::temp_dir().join(format!("pgg-{}-{}-throttle", std::process::id(), db.name));
    std::fs::write(&flag, b"").unwrap();
    let log_path = std::env::temp_dir().join(format!("pgg-{}-{}-log", std::process::id(), db.name));
    let log_file = std::fs::File::create(&log_path).unwrap();
    let mut args: Vec<&str> = COMMON.to_vec();
    let flag_arg = flag.to_str().unwrap().to_string();
    args.extend(["--table", "t", "--alter", "ADD CONSTRAINT c CHECK (qty > 0)", "--throttle-flag-file", &flag_arg]);
    let mut child = binary::command(&db, "run", &args).stdout(Stdio::null()).stderr(log_file).spawn().expect("start pg-ghost");
    let read_log = || std::fs::read_to_string(&log_path).unwrap_or_default();

    let deadline = Instant::now() + Duration::from_secs(30);
    while !read_log().contains("throttled: throttle flag file") {
        assert!(child.try_wait().unwrap().is_none(), "pg-ghost exited:\n{}", read_log());
        assert!(Instant::now() < deadline, "no throttle line:\n{}", read_log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Held in the data check: still running a while later, nothing created yet.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(child.try_wait().unwrap().is_none(), "pg-ghost exited while throttled:\n{}", read_log());
    let log = read_log();
    assert!(log.contains("checking the existing rows") && !log.contains("data checks passed"), "{log}");
    let client = db.client().await;
    assert!(!relation_exists(&client, "public", "_t_ghc").await, "the changelog exists while the data check is held");
    assert!(!relation_exists(&client, "public", "_t_gho").await, "the ghost exists while the data check is held");

    std::fs::remove_file(&flag).unwrap();
    let status = tokio::time::timeout(Duration::from_secs(120), child.wait()).await.expect("pg-ghost did not finish").unwrap();
    let log = read_log();
    let _ = std::fs::remove_file(&log_path);
    assert!(status.success(), "pg-ghost failed:\n{log}");
    assert!(log.contains("throttle lifted") && log.contains("data checks passed"), "{log}");
}
