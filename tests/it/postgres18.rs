//! What PostgreSQL 18 adds to a table: not-null constraints that are named
//! (`<table>_<column>_not_null`) and may be `NOT VALID`, sparing the NULLs the table held when
//! added; constraints `NOT ENFORCED`; virtual generated columns, computed when read; and
//! (from 17) `SET EXPRESSION` of a generated column. On older
//! servers none exists and these tests say so and end; `scripts/test.sh` runs this module on 18
//! too.

use crate::binary;
use crate::harness::{Cluster, TestDb};
use crate::oracle::{assert_whole_schema_equal, WholeSchema};

fn server_is_18_or_later(db: &TestDb<'_>) -> bool {
    let yes = db.psql("SELECT current_setting('server_version_num')::int >= 180000") == "t";
    if !yes {
        eprintln!("what this test checks exists from PostgreSQL 18 only: nothing to check on this server");
    }
    yes
}

/// Runs `alter` on `public.<table>` and requires its rows, each read as `row`, to be what they
/// were; returns the schema dump taken before, for the plain ALTER's twin.
async fn run_keeping_rows(db: &TestDb<'_>, table: &str, alter: &str, row: &str) -> WholeSchema {
    let before = WholeSchema::take(db).await;
    let rows = format!("SELECT string_agg({row}, ';' ORDER BY id) FROM public.{table}");
    let expected_rows = db.psql(&rows);
    let out = binary::run(db, &["--table", table, "--alter", alter, "--execute", "--ok-to-drop-table"]).await;
    binary::assert_success(&out);
    assert_eq!(db.psql(&rows), expected_rows, "the rows are not the original's");
    before
}

/// Runs pg-ghost with `args` while `writes` times an UPDATE (`a = a + 1` where `id = 7i + 1`)
/// and an INSERT (`id = 10000 + i`, `a = i`) go to `public.<table>`, 10 ms apart: spread
/// over the run, some come through the copy, the rest through the stream.
async fn run_under_writes(db: &TestDb<'_>, table: &str, args: &[&str], writes: i64) -> std::process::Output {
    let run = binary::run(db, args);
    let write = async {
        let client = db.client().await;
        for i in 0..writes {
            let sql = format!("UPDATE public.{table} SET a = a + 1 WHERE id = {}; INSERT INTO public.{table} (id, a) VALUES ({}, {i})", i * 7 + 1, 10_000 + i);
            client.batch_execute(&sql).await.unwrap();
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    };
    let (out, ()) = tokio::join!(run, write);
    out
}

const TABLE: &str = "CREATE TABLE public.nv (id int PRIMARY KEY, a int, b text);
     INSERT INTO public.nv SELECT g, CASE WHEN g % 3 = 0 THEN NULL ELSE g END, 'x' || g FROM generate_series(1, 3000) g;
     ALTER TABLE public.nv ADD CONSTRAINT nv_a_present NOT NULL a NOT VALID;
     COMMENT ON CONSTRAINT nv_a_present ON public.nv IS 'old rows may lack it';";

/// A column whose not-null constraint was added `NOT VALID` holds NULLs: the copy carries
/// them, and the constraint stays `NOT VALID` under its name and comment, as under a plain
/// ALTER; a column the ALTER adds `NOT NULL` gets the constraint name a plain ALTER gives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_not_null_constraint_added_not_valid_keeps_its_nulls_and_stays_not_valid() {
    let db = Cluster::primary().fresh_db("nn_not_valid");
    if !server_is_18_or_later(&db) {
        return;
    }
    db.psql(TABLE);
    let alter = "ALTER COLUMN b TYPE varchar(10), ADD COLUMN c int NOT NULL DEFAULT 1";
    let before = run_keeping_rows(&db, "nv", alter, "format('%s,%s,%s', id, a, b)").await;
    assert_eq!(db.psql("SELECT count(*) FROM public.nv WHERE a IS NULL"), "1000");
    assert_eq!(
        db.psql("SELECT string_agg(format('%s %s', conname, convalidated), ', ' ORDER BY conname) FROM pg_constraint WHERE conrelid = 'public.nv'::regclass AND contype = 'n'"),
        "nv_a_present f, nv_c_not_null t, nv_id_not_null t"
    );
    let twin = before.twin_after_plain_alter(&db, "public.nv", alter).await;
    assert_whole_schema_equal(&db, &twin, alter).await;
}

/// `SET NOT NULL` on that column must check the rows the `NOT VALID` constraint spared: the
/// data check finds its NULLs and refuses before anything is made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_not_null_over_a_not_valid_constraint_finds_the_nulls() {
    let db = Cluster::primary().fresh_db("nn_set_not_null");
    if !server_is_18_or_later(&db) {
        return;
    }
    db.psql(TABLE);
    let before = WholeSchema::take(&db).await;
    let out = binary::run(&db, &["--table", "nv", "--alter", "ALTER COLUMN a SET NOT NULL, ALTER COLUMN b TYPE varchar(10)", "--execute"]).await;
    assert!(!out.status.success(), "a SET NOT NULL over NULLs went through:\n{}", binary::stderr(&out));
    let log = binary::stderr(&out);
    assert!(log.contains("\"a\" NOT NULL") && log.contains("NULLs found"), "the refusal does not name the NULLs:\n{log}");
    let unchanged = before.twin_after_plain_sql(&db, "SELECT 1").await;
    assert_whole_schema_equal(&db, &unchanged, "nothing (refused)").await;
}

/// A virtual generated column is neither copied nor applied (the server refuses a value for
/// it): the run goes through under writes, and the table reads as under a plain ALTER.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn virtual_generated_columns_are_computed_not_copied() {
    let db = Cluster::primary().fresh_db("virtual_generated");
    if !server_is_18_or_later(&db) {
        return;
    }
    db.psql(
        "CREATE TABLE public.vg (id int PRIMARY KEY, a int, twice int GENERATED ALWAYS AS (a * 2) VIRTUAL,
                                 next int GENERATED ALWAYS AS (a + 1) STORED);
         INSERT INTO public.vg (id, a) SELECT g, g FROM generate_series(1, 3000) g;
         CREATE INDEX ON public.vg (next);",
    );
    let alter = "ALTER COLUMN id TYPE bigint, ADD COLUMN d text NOT NULL DEFAULT 'x'";
    let before = WholeSchema::take(&db).await;
    let args = ["--table", "vg", "--alter", alter, "--execute", "--ok-to-drop-table", "--chunk-size", "200"];
    binary::assert_success(&run_under_writes(&db, "vg", &args, 200).await);
    let wrong = db.psql("SELECT count(*) FROM public.vg WHERE twice IS DISTINCT FROM a * 2 OR next IS DISTINCT FROM a + 1 OR d <> 'x'");
    assert_eq!(wrong, "0");
    // Every write made during the run is there: ids 1, 8, ..., 1394 went up by one.
    let rows = |from: &str| db.psql(&format!("SELECT string_agg(format('%s,%s', id, a), ';' ORDER BY id) FROM {from}"));
    let expected = "(SELECT g AS id, g + (g % 7 = 1 AND g <= 1394)::int AS a FROM generate_series(1, 3000) g
                     UNION ALL SELECT 10000 + i, i FROM generate_series(0, 199) i) e";
    assert_eq!(rows("public.vg"), rows(expected));
    let twin = before.twin_after_plain_alter(&db, "public.vg", alter).await;
    assert_whole_schema_equal(&db, &twin, alter).await;
}

/// Constraints `NOT ENFORCED` (a CHECK, a foreign key of the table's, one from another table
/// to it) spare rows that break them: those rows are copied, and each constraint stays
/// `NOT ENFORCED` (never validated) under its name, as under a plain ALTER.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn constraints_not_enforced_stay_so_and_spare_their_rows() {
    let db = Cluster::primary().fresh_db("not_enforced");
    if !server_is_18_or_later(&db) {
        return;
    }
    db.psql(
        "CREATE TABLE public.ne_ref (id int PRIMARY KEY);
         INSERT INTO public.ne_ref SELECT g FROM generate_series(1, 10) g;
         CREATE TABLE public.ne (id int PRIMARY KEY, a int, r int, b int);
         INSERT INTO public.ne SELECT g, g - 500, g, g FROM generate_series(1, 2000) g;
         ALTER TABLE public.ne ADD CONSTRAINT ne_a_positive CHECK (a > 0) NOT ENFORCED;
         ALTER TABLE public.ne ADD CONSTRAINT ne_r_fkey FOREIGN KEY (r) REFERENCES public.ne_ref (id) NOT ENFORCED;
         CREATE TABLE public.ne_child (id int PRIMARY KEY, ne_id int REFERENCES public.ne (id) NOT ENFORCED);
         INSERT INTO public.ne_child VALUES (1, 5000), (2, 3);",
    );
    let alter = "ALTER COLUMN b TYPE bigint";
    let before = run_keeping_rows(&db, "ne", alter, "format('%s,%s,%s,%s', id, a, r, b)").await;
    let twin = before.twin_after_plain_alter(&db, "public.ne", alter).await;
    assert_whole_schema_equal(&db, &twin, alter).await;
}

/// `SET EXPRESSION` (PostgreSQL 17+) on a stored generated column rewrites the table under
/// ACCESS EXCLUSIVE: pg-ghost takes it through a ghost, whose rows get the new expression's
/// values, writes during the run included; on a virtual column it changes the catalog only,
/// and `--strategy auto` does it directly. Both end as under a plain ALTER.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_expression_on_a_stored_column_goes_through_a_ghost() {
    let db = Cluster::primary().fresh_db("set_expression");
    if !server_is_18_or_later(&db) {
        return;
    }
    db.psql(
        "CREATE TABLE public.se (id int PRIMARY KEY, a int, tripled int GENERATED ALWAYS AS (a * 2) STORED,
                                 shown int GENERATED ALWAYS AS (a + 1) VIRTUAL);
         INSERT INTO public.se (id, a) SELECT g, g FROM generate_series(1, 3000) g;
         CREATE INDEX ON public.se (tripled);",
    );
    let alter = "ALTER COLUMN tripled SET EXPRESSION AS (a * 3)";
    let before = WholeSchema::take(&db).await;
    let oid = db.psql("SELECT 'public.se'::regclass::oid");
    let args = ["--table", "se", "--alter", alter, "--execute", "--ok-to-drop-table", "--strategy", "auto", "--chunk-size", "200"];
    binary::assert_success(&run_under_writes(&db, "se", &args, 100).await);
    assert_ne!(db.psql("SELECT 'public.se'::regclass::oid"), oid, "the table was not swapped for a ghost");
    assert_eq!(db.psql("SELECT count(*) FROM public.se WHERE tripled IS DISTINCT FROM a * 3 OR shown IS DISTINCT FROM a + 1"), "0");
    assert_eq!(db.psql("SELECT count(*) FROM public.se"), "3100");
    let twin = before.twin_after_plain_alter(&db, "public.se", alter).await;
    assert_whole_schema_equal(&db, &twin, alter).await;

    let alter = "ALTER COLUMN shown SET EXPRESSION AS (a + 5)";
    let before = WholeSchema::take(&db).await;
    let oid = db.psql("SELECT 'public.se'::regclass::oid");
    let out = binary::run(&db, &["--table", "se", "--alter", alter, "--execute", "--strategy", "auto"]).await;
    binary::assert_success(&out);
    assert_eq!(db.psql("SELECT 'public.se'::regclass::oid"), oid, "a catalog-only change went through a ghost");
    assert_eq!(db.psql("SELECT count(*) FROM public.se WHERE shown IS DISTINCT FROM a + 5"), "0");
    let twin = before.twin_after_plain_alter(&db, "public.se", alter).await;
    assert_whole_schema_equal(&db, &twin, alter).await;
}
