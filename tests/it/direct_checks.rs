//! The checks of each way: the direct way asks only for what it needs (a primary, a role that
//! may alter the table), so a table without a key, or a server without logical WAL, takes a
//! change that rewrites nothing directly; the ghost way still needs a key and logical WAL and
//! refuses without them, naming what is missing and why the ghost way was chosen, having
//! changed nothing.

use crate::binary;
use crate::harness::{Cluster, TestDb};
use crate::oracle::*;
use crate::run_refusals::assert_exit;
use pg_ghost::plan::{self, Format, PlanConfig, Strategy};
use std::io::Write;

/// Changes only the catalog: a column with a constant default, a default, statistics.
const CATALOG_ONLY: &str = "ADD COLUMN flag boolean NOT NULL DEFAULT true, ALTER COLUMN pad SET DEFAULT 'none', ALTER COLUMN n SET STATISTICS 200";
/// Rewrites the table.
const REWRITING: &str = "ALTER COLUMN n TYPE bigint";

/// A table without any key or unique index, with repeated ids and whole rows repeated, and a
/// copy of it, `<name>_before`.
fn keyless_table(db: &TestDb<'_>, name: &str, rows: i64) {
    db.psql(&format!(
        "CREATE TABLE {t} (id bigint, n int NOT NULL, pad text);
         INSERT INTO {t} SELECT g % {half}, g % 1000, md5(g::text) FROM generate_series(1, {rows}) g;
         INSERT INTO {t} SELECT * FROM {t} ORDER BY id, n LIMIT 25;
         CREATE TABLE {b} AS TABLE {t};
         ANALYZE {t};",
        t = ident(name),
        b = ident(&format!("{name}_before")),
        half = rows / 2
    ));
}

/// `pg-ghost plan` for `alter` on `table`: the way, and what `run` would refuse for it.
async fn plan_of(db: &TestDb<'_>, table: &str, alter: &str) -> (Strategy, Option<String>) {
    let cfg = PlanConfig { conn: pg_ghost::conn::ConnInfo::parse(&db.conninfo()).unwrap(), table: table.into(), alter: alter.into(), conversion: None, key: None, format: Format::Text, check_data: None };
    let p = plan::plan(&cfg).await.unwrap_or_else(|e| panic!("plan {alter}: {e}"));
    let text = plan::render(&p, Format::Text).unwrap();
    assert_eq!(p.refused.as_ref().map(|r| text.contains(&format!("pg-ghost run would refuse: {r}"))), p.refused.as_ref().map(|_| true), "{text}");
    (p.strategy, p.refused)
}

/// A cluster of its own with `settings` appended to postgresql.conf and a restart.
fn cluster_with(name: &str, settings: &str) -> Cluster {
    let cluster = Cluster::start(name);
    let mut conf = std::fs::OpenOptions::new().append(true).open(cluster.dir.join("postgresql.conf")).unwrap();
    writeln!(conf, "{settings}").unwrap();
    cluster.restart();
    cluster
}

/// `t` holds the rows of `t_before` once a plain ALTER has made the same change there
/// (compared as multisets: a keyless table may hold a row twice).
async fn assert_rows_as_after_plain_alter(db: &TestDb<'_>, alter: &str) {
    let client = db.client().await;
    client.batch_execute(&format!("ALTER TABLE t_before {alter}")).await.unwrap_or_else(|e| panic!("plain ALTER on t_before: {}", crate::oracle::compare::db_message(&e)));
    let diff = compare_rows(&client, "SELECT id, n, pad, flag FROM t", "SELECT id, n, pad, flag FROM t_before").await;
    assert!(diff.is_empty(), "t does not hold what a plain ALTER leaves:\n{diff}");
}

/// A keyless table: a change that rewrites nothing is made directly under `auto` and leaves
/// what a plain ALTER leaves; the ghost way (asked for, or chosen by `auto` for a rewriting
/// change) is refused naming the missing key, and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_without_a_key_takes_the_direct_way_only() {
    let db = Cluster::primary().fresh_db("direct_keyless");
    keyless_table(&db, "t", 2_000);
    let client = db.client().await;
    let before = WholeSchema::take(&db).await;
    let catalog = CatalogSnapshot::take(&client).await;

    // The plan says so before any run.
    let (way, refused) = plan_of(&db, "t", REWRITING).await;
    assert_eq!(way, Strategy::Ghost);
    assert!(refused.as_deref().is_some_and(|r| r.contains("has no primary key")), "{refused:?}");
    assert_eq!(plan_of(&db, "t", CATALOG_ONLY).await, (Strategy::Direct, None));

    let out = binary::run(&db, &["--table", "t", "--alter", REWRITING, "--execute", "--strategy", "auto"]).await;
    assert_exit(&out, 3, &["clause 1 rewrites the table, so pg-ghost copies it into a ghost table", "has no primary key"]);
    let out = binary::run(&db, &["--table", "t", "--alter", CATALOG_ONLY, "--execute", "--strategy", "ghost"]).await;
    assert_exit(&out, 3, &["has no primary key"]);
    assert!(!binary::stderr(&out).contains("clause 1 rewrites"), "{}", binary::stderr(&out));
    assert_catalog_unchanged(&catalog, &CatalogSnapshot::take(&client).await);
    let unchanged = compare_rows(&client, "SELECT id, n, pad FROM t", "SELECT id, n, pad FROM t_before").await;
    assert!(unchanged.is_empty(), "a refused run changed rows:\n{unchanged}");

    let out = binary::run(&db, &["--table", "t", "--alter", CATALOG_ONLY, "--execute", "--strategy", "auto"]).await;
    binary::assert_success(&out);
    let log = binary::stderr(&out);
    assert!(log.contains("changed directly"), "{log}");
    assert!(log.contains("no key to read it by in chunks"), "{log}");
    let twin = before.twin_after_plain_alter(&db, "public.t", CATALOG_ONLY).await;
    assert_whole_schema_equal(&db, &twin, CATALOG_ONLY).await;
    assert_no_slots_or_publications(&client).await;
    assert_rows_as_after_plain_alter(&db, CATALOG_ONLY).await;
}

/// A server with `wal_level = replica` cannot stream logical changes: a change that rewrites
/// nothing is still made directly (on a table with a key and on one without); the ghost way
/// is refused naming wal_level, and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_logical_wal_only_the_direct_way_runs() {
    let cluster = cluster_with("walreplica", "wal_level = replica");
    let db = cluster.fresh_db("direct_replica_wal");
    assert_eq!(db.psql("SHOW wal_level"), "replica");
    binary::narrow_table(&db, "keyed", 1_000);
    keyless_table(&db, "t", 1_000);
    let client = db.client().await;
    let before = WholeSchema::take(&db).await;
    let catalog = CatalogSnapshot::take(&client).await;

    let (way, refused) = plan_of(&db, "keyed", REWRITING).await;
    assert_eq!(way, Strategy::Ghost);
    assert!(refused.as_deref().is_some_and(|r| r.contains("wal_level is \"replica\"")), "{refused:?}");
    assert_eq!(plan_of(&db, "keyed", "ADD COLUMN x int").await, (Strategy::Direct, None));

    let out = binary::run(&db, &["--table", "keyed", "--alter", REWRITING, "--execute", "--strategy", "auto"]).await;
    assert_exit(&out, 3, &["clause 1 rewrites the table, so pg-ghost copies it into a ghost table", "wal_level is \"replica\""]);
    let out = binary::run(&db, &["--table", "keyed", "--alter", "ADD COLUMN x int", "--execute", "--strategy", "ghost"]).await;
    assert_exit(&out, 3, &["wal_level is \"replica\""]);
    assert_catalog_unchanged(&catalog, &CatalogSnapshot::take(&client).await);
    crate::run_faults::assert_unchanged_rows(&client, "keyed", &["id", "n", "pad"]).await;

    // Both tables, directly: the same result as plain ALTERs on a twin.
    let keyed_alter = "ADD COLUMN flag boolean NOT NULL DEFAULT true, ADD CONSTRAINT n_bounded CHECK (n < 1000)";
    for (table, alter) in [("keyed", keyed_alter), ("t", CATALOG_ONLY)] {
        let out = binary::run(&db, &["--table", table, "--alter", alter, "--execute", "--strategy", "auto"]).await;
        binary::assert_success(&out);
        assert!(binary::stderr(&out).contains("changed directly"), "{table}: {}", binary::stderr(&out));
    }
    let twin = before.twin_after_plain_sql(&db, &format!("ALTER TABLE public.keyed {keyed_alter}; ALTER TABLE public.t {CATALOG_ONLY}")).await;
    assert_whole_schema_equal(&db, &twin, "both ALTERs").await;
    let keyed = compare_rows(&client, "SELECT id, n, pad, flag FROM keyed", "SELECT id, n, pad, true FROM keyed_before").await;
    assert!(keyed.is_empty(), "keyed does not hold what a plain ALTER leaves:\n{keyed}");
    assert_rows_as_after_plain_alter(&db, CATALOG_ONLY).await;
}

/// The direct way checks the rows first too (on a table with a key): NULLs for SET NOT NULL
/// and duplicates for a UNIQUE refuse it with their keys, before any step, nothing changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rows_are_checked_before_a_direct_change() {
    let db = Cluster::primary().fresh_db("direct_datacheck");
    db.psql(
        "CREATE TABLE t (id int PRIMARY KEY, note text, n int);
         INSERT INTO t SELECT g, 'n' || g, g FROM generate_series(1, 300) g;
         UPDATE t SET note = NULL WHERE id IN (10, 250);
         UPDATE t SET n = 7 WHERE id = 120;",
    );
    let client = db.client().await;
    let before = CatalogSnapshot::take(&client).await;
    for (alter, needles) in [
        ("ALTER COLUMN note SET NOT NULL", ["\"note\" NOT NULL", "2 NULLs found", "key \"id\"='10'; key \"id\"='250'"]),
        ("ADD CONSTRAINT t_n_key UNIQUE (n)", ["UNIQUE", "duplicate value", "'7'"]),
    ] {
        let out = binary::run(&db, &["--table", "t", "--alter", alter, "--execute", "--strategy", "auto"]).await;
        let mut want = vec!["data check: existing rows of", "Nothing was created"];
        want.extend(needles);
        assert_exit(&out, 3, &want);
        assert!(!binary::stderr(&out).contains("direct step"), "{alter}: a step ran: {}", binary::stderr(&out));
        assert!(binary::stderr(&out).contains("no clause rewrites the table"), "{alter}: not the direct way: {}", binary::stderr(&out));
        assert_catalog_unchanged(&before, &CatalogSnapshot::take(&client).await);
    }
    assert_eq!(db.psql("SELECT count(*) FROM pg_index WHERE NOT indisvalid"), "0");
    // The history says which way was refused.
    assert_eq!(db.psql("SELECT string_agg(strategy || ' ' || outcome || ' ' || error_kind, ', ') FROM pgghost.runs"), "direct failed refused, direct failed refused");
}

/// A `FOR ALL TABLES` publication would publish a ghost and a changelog, so the ghost way
/// refuses it; the direct way creates neither and goes on, then warns that the publication
/// sends rows of the new shape (logical replication does not carry the ALTER).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_published_for_all_tables_is_changed_directly_with_a_warning() {
    let db = Cluster::primary().fresh_db("direct_published");
    binary::narrow_table(&db, "t", 200);
    db.psql("CREATE PUBLICATION everything FOR ALL TABLES");
    let client = db.client().await;
    let catalog = CatalogSnapshot::take(&client).await;
    let out = binary::run(&db, &["--table", "t", "--alter", REWRITING, "--execute", "--strategy", "auto"]).await;
    assert_exit(&out, 3, &["clause 1 rewrites the table", "publication \"everything\" (FOR ALL TABLES)"]);
    assert_catalog_unchanged(&catalog, &CatalogSnapshot::take(&client).await);

    let out = binary::run(&db, &["--table", "t", "--alter", "ADD COLUMN x int", "--execute", "--strategy", "auto"]).await;
    binary::assert_success(&out);
    let log = binary::stderr(&out);
    assert!(log.contains("changed directly"), "{log}");
    let warning = log.lines().find(|l| l.contains("logical replication does not carry DDL")).unwrap_or_else(|| panic!("no warning:\n{log}"));
    assert!(warning.contains("publication=everything"), "{warning}");
    assert_eq!(db.psql("SELECT count(*) FROM pg_attribute WHERE attrelid = 't'::regclass AND attname = 'x'"), "1");
    db.psql("DROP PUBLICATION everything");
}

/// Login roles for one test, dropped with whatever they own afterwards.
struct Roles<'a, 'c> {
    db: &'a TestDb<'c>,
    names: Vec<String>,
}

impl Drop for Roles<'_, '_> {
    fn drop(&mut self) {
        let _ = std::panic::catch_unwind(|| {
            for name in &self.names {
                self.db.psql(&format!("DROP OWNED BY {name}"));
                self.db.cluster.psql("postgres", &format!("DROP ROLE IF EXISTS {name}"));
            }
        });
    }
}

/// The direct way asks only for the table's owner: a role without REPLICATION and without
/// CREATE on the schema or the database makes a change that rewrites nothing; the ghost way
/// is refused to it naming REPLICATION; a role that does not own the table is refused either
/// way, naming the owner, and nothing changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_direct_way_needs_only_the_owner_of_the_table() {
    let db = Cluster::primary().fresh_db("direct_roles");
    binary::narrow_table(&db, "t", 200);
    let owner = format!("direct_owner_{}", std::process::id());
    let stranger = format!("direct_stranger_{}", std::process::id());
    db.psql(&format!(
        "CREATE ROLE {owner} PASSWORD 'pw' LOGIN NOREPLICATION; CREATE ROLE {stranger} PASSWORD 'pw' LOGIN REPLICATION;
         ALTER TABLE t OWNER TO {owner}; REVOKE CREATE ON SCHEMA public FROM PUBLIC; REVOKE CREATE ON DATABASE {} FROM PUBLIC;
         GRANT USAGE ON SCHEMA public TO {stranger};",
        db.name
    ));
    let _roles = Roles { db: &db, names: vec![owner.clone(), stranger.clone()] };
    let client = db.client().await;
    let catalog = CatalogSnapshot::take(&client).await;
    let run_as = |role: &str, alter: &str| {
        let conninfo = db.cluster.conninfo_as(role, "pw", &db.name);
        binary::command_with_conn(&conninfo, "run", &["--table", "t", "--alter", alter, "--execute", "--strategy", "auto"]).output()
    };

    let out = run_as(&stranger, "ADD COLUMN x int").await.unwrap();
    assert_exit(&out, 3, &[&format!("role \"{stranger}\" may not alter \"public\".\"t\""), &format!("owned by \"{owner}\"")]);
    let out = run_as(&owner, REWRITING).await.unwrap();
    assert_exit(&out, 3, &["clause 1 rewrites the table", "REPLICATION attribute"]);
    assert_catalog_unchanged(&catalog, &CatalogSnapshot::take(&client).await);

    let out = run_as(&owner, "ADD COLUMN x int DEFAULT 3").await.unwrap();
    binary::assert_success(&out);
    let log = binary::stderr(&out);
    assert!(log.contains("changed directly"), "{log}");
    assert!(log.contains("the rows are not checked before the change (that needs CREATE on the table's schema"), "{log}");
    let rows = compare_rows(&client, "SELECT id, n, pad, x FROM t", "SELECT id, n, pad, 3 FROM t_before").await;
    assert!(rows.is_empty(), "{rows}");
}
