//! `pg-ghost run --test-on-replica`: the change rehearsed on a logical subscriber.
//!
//! The shared primary is the publisher (a database per test, an oracle table and its control
//! published, a write workload on both); a second cluster is the subscriber, with both tables
//! subscribed. pg-ghost is pointed at the subscriber only. The tests check that the publisher's
//! catalog never changes, that the replicated changes reach the ghost through pg-ghost's own
//! stream on the subscriber, that the original comes out of the rehearsal with its name and
//! definition and the migrated copy beside it, equal row for row, that the subscription is
//! left disabled, and that re-enabling it lets the replica catch up with production.

use crate::binary::{self, changelog_value, narrow_table};
use crate::harness::{Cluster, TestDb};
use crate::oracle::*;
use crate::run_refusals::assert_exit;
use pg_ghost::conn::ConnInfo;
use pg_ghost::copy::{copy_table, CopyJob, CopyProgress, GateState};
use pg_ghost::names::Names;
use pg_ghost::{ghost, inspect};
use std::process::{Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use tokio_postgres::Client;

const ALTER: &str = "ALTER COLUMN n TYPE bigint, ADD COLUMN flag boolean NOT NULL DEFAULT true";
const POLL: Duration = Duration::from_millis(50);
const GHOST: &str = r#""public"."_orders_gho""#;
const ORDERS: &str = r#""public"."orders""#;
const CONTROL: &str = r#""public"."orders_control""#;

/// The subscriber cluster, shared by the tests of this file (a database each), removed when
/// the test process exits.
fn subscriber_cluster() -> &'static Cluster {
    static SUBSCRIBER: OnceLock<Cluster> = OnceLock::new();
    SUBSCRIBER.get_or_init(|| Cluster::start("subscriber"))
}

/// `orders` and `orders_control` on the publisher, replicated into the subscriber database
/// by a subscription named after that database (slot names are per cluster).
struct Replicated {
    subscriber: TestDb<'static>,
    publisher: TestDb<'static>,
    table: OracleTable,
    subscription: String,
}

impl Replicated {
    async fn start(prefix: &str, rows: i64) -> Replicated {
        Replicated::start_with(prefix, rows, None).await
    }

    /// With `partitioned` (`PARTITION BY` and the partitions' SQL), the table is partitioned
    /// alike on both sides, and the publisher publishes its partitions.
    async fn start_with(prefix: &str, rows: i64, partitioned: Option<(&str, &str)>) -> Replicated {
        let create = |db, rows| async move {
            match partitioned {
                None => OracleTable::create(db, "orders", KeyKind::Identity, rows).await,
                Some((by, tree)) => OracleTable::create_partitioned(db, "orders", KeyKind::Composite, rows, by, tree).await,
            }
        };
        let publisher = Cluster::primary().fresh_db(&format!("{prefix}_pub"));
        let table = create(&publisher, rows).await;
        publisher.psql("CREATE PUBLICATION rehearsal FOR TABLE orders, orders_control");
        let subscriber = subscriber_cluster().fresh_db(&format!("{prefix}_sub"));
        create(&subscriber, 0).await;
        let subscription = subscriber.name.clone();
        subscriber.psql(&format!(
            "CREATE SUBSCRIPTION {} CONNECTION {} PUBLICATION rehearsal WITH (copy_data = true)",
            ident(&subscription),
            literal(&publisher.conninfo())
        ));
        let r = Replicated { subscriber, publisher, table, subscription };
        let deadline = Instant::now() + Duration::from_secs(60);
        let ready = "SELECT count(*) FILTER (WHERE srsubstate = 'r') = count(*) AND count(*) >= 2 FROM pg_subscription_rel";
        while r.subscriber.psql(ready) != "t" {
            assert!(Instant::now() < deadline, "the subscription did not finish its initial copy within 60 s");
            tokio::time::sleep(POLL).await;
        }
        r
    }

    fn enabled(&self) -> String {
        self.subscriber.psql(&format!("SELECT subenabled FROM pg_subscription WHERE subname = {}", literal(&self.subscription)))
    }

    fn apply_worker_running(&self) -> bool {
        self.subscriber.psql(&format!(
            "SELECT count(*) FROM pg_stat_subscription WHERE subname = {} AND pid IS NOT NULL",
            literal(&self.subscription)
        )) != "0"
    }

    /// A row written on the publisher to the table and its control in one transaction, as
    /// the workload writes, under the key -1: the workload's updates and deletes aim at keys
    /// from 1 up, so the row stays as written.
    fn insert_marker(&self, label: &str) {
        self.publisher.psql(&format!(
            "BEGIN;
             INSERT INTO orders (id, n, label) OVERRIDING SYSTEM VALUE VALUES (-1, 4242, {l});
             INSERT INTO orders_control (id, n, label) VALUES (-1, 4242, {l});
             COMMIT;",
            l = literal(label)
        ));
    }

    /// The whole table as one hash, to compare the two clusters.
    fn fingerprint(db: &TestDb<'_>) -> String {
        db.psql("SELECT md5(coalesce(string_agg(t::text, '|' ORDER BY id), '')) FROM orders t")
    }
}

impl Drop for Replicated {
    /// The subscription goes first: its database cannot be dropped while it exists, and its
    /// slot on the publisher must be let go before the publisher's database is dropped.
    fn drop(&mut self) {
        let s = ident(&self.subscription);
        let _ = std::panic::catch_unwind(|| {
            self.subscriber.psql(&format!("ALTER SUBSCRIPTION {s} DISABLE"));
            self.subscriber.psql(&format!("ALTER SUBSCRIPTION {s} SET (slot_name = NONE)"));
            self.subscriber.psql(&format!("DROP SUBSCRIPTION {s}"));
        });
    }
}

/// Polls `cond` until it holds; panics after `timeout`, or with pg-ghost's log if it exited.
async fn wait_until(what: &str, run: &mut Background, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        run.assert_running(what).await;
        assert!(Instant::now() < deadline, "waited {timeout:?} for {what}");
        tokio::time::sleep(POLL).await;
    }
}

/// pg-ghost in the background, stdout and stderr both kept.
struct Background(Option<JoinHandle<std::io::Result<Output>>>);

impl Background {
    fn spawn(db: &TestDb<'_>, args: &[&str]) -> Background {
        let child = binary::command(db, "run", args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("start pg-ghost");
        Background(Some(tokio::spawn(child.wait_with_output())))
    }

    async fn assert_running(&mut self, while_waiting_for: &str) {
        if self.0.as_ref().is_some_and(|h| h.is_finished()) {
            let out = self.0.take().unwrap().await.unwrap().unwrap();
            panic!("pg-ghost exited ({}) while the test waited for {while_waiting_for}:\n{}", out.status, binary::stderr(&out));
        }
    }

    async fn wait(mut self, timeout: Duration) -> Output {
        let handle = self.0.take().expect("already waited for");
        tokio::time::timeout(timeout, handle).await.expect("pg-ghost did not finish in time").unwrap().expect("pg-ghost's output")
    }
}

async fn wait_for_state(client: &Client, run: &mut Background, state: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while changelog_value(client, "orders", "state").await.as_deref() != Some(state) {
        run.assert_running(&format!("state {state:?}")).await;
        assert!(Instant::now() < deadline, "the changelog never said state = {state:?}");
        tokio::time::sleep(POLL).await;
    }
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The text after `prefix` on the report line that starts with it.
fn report_line<'a>(report: &'a str, prefix: &str) -> &'a str {
    report
        .lines()
        .find_map(|l| l.strip_prefix(prefix))
        .unwrap_or_else(|| panic!("no {prefix:?} line in the report:\n{report}"))
        .trim()
}

fn migrated(table: &OracleTable) -> Projection {
    table.projection().map("n", "n::bigint").add("flag", "true")
}

/// After the rehearsal on the subscriber: the ghost is the original with the ALTER applied,
/// the original still equals its control (the replica is consistent at the stop), the
/// command the report gives for comparing finds nothing.
async fn assert_rehearsal_result(r: &Replicated, client: &Client, report: &str) {
    assert_same_rows(client, ORDERS, CONTROL, &r.table.projection()).await;
    assert_same_rows(client, GHOST, ORDERS, &migrated(&r.table)).await;
    let types = r.subscriber.psql(
        "SELECT string_agg(c.relname || '.' || a.attname || ' ' || format_type(a.atttypid, a.atttypmod), ', ' ORDER BY c.relname, a.attnum)
           FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
          WHERE c.relname IN ('orders', '_orders_gho') AND a.attname IN ('n', 'flag') AND NOT a.attisdropped",
    );
    assert_eq!(types, "_orders_gho.n bigint, _orders_gho.flag boolean, orders.n integer");
    let compare = report_line(report, "compare:").trim_end_matches(';');
    let rows = client.query(compare, &[]).await.unwrap_or_else(|e| panic!("the report's compare query fails: {e}\n{compare}"));
    assert!(rows.is_empty(), "the report's compare query finds {} rows", rows.len());
}

/// The whole rehearsal under a write workload on the publisher; then re-enabling the
/// subscription lets the replica catch up with production.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rehearses_on_a_subscriber_and_leaves_both_tables() {
    let r = Replicated::start("rt_full", 3_000).await;
    let (pub_client, sub_client) = (r.publisher.client().await, r.subscriber.client().await);
    let workload = Workload::start(&r.publisher, &r.table, WorkloadOptions::new(2).rate(Some(50))).await;
    workload.wait_for_more_commits(20, Duration::from_secs(30)).await;
    let pub_before = CatalogSnapshot::take(&pub_client).await;
    let sub_before = CatalogSnapshot::take(&sub_client).await;

    // Postponed before the cut-over, the run shows that a change replicated after the copy
    // reaches the ghost: only pg-ghost's stream on the subscriber can bring it there.
    let flag = std::env::temp_dir().join(format!("pg-ghost-{}-{}-postpone", std::process::id(), r.subscriber.name));
    std::fs::write(&flag, "").unwrap();
    let mut run = Background::spawn(
        &r.subscriber,
        &[
            "--table", "orders", "--alter", ALTER, "--test-on-replica", "--execute", "--chunk-size", "500", "--status-interval", "1s",
            "--postpone-cut-over-flag-file", flag.to_str().unwrap(),
        ],
    );
    wait_for_state(&sub_client, &mut run, "postponed").await;
    r.insert_marker("replicated while postponed");
    let marker = "SELECT count(*) FROM _orders_gho WHERE id = -1 AND label = 'replicated while postponed'";
    wait_until("the marker in the ghost", &mut run, Duration::from_secs(60), || r.subscriber.psql(marker) == "1").await;
    assert_eq!(r.enabled(), "t", "the subscription was disabled before the cut-over");
    std::fs::remove_file(&flag).unwrap();
    let out = run.wait(Duration::from_secs(180)).await;
    binary::assert_success(&out);
    let report = stdout(&out);

    // The subscription is stopped: production goes on, the replica stays where it was.
    assert_eq!(r.enabled(), "f");
    assert!(!r.apply_worker_running(), "the apply worker still runs");
    let at_stop = Replicated::fingerprint(&r.subscriber);
    workload.wait_for_more_commits(20, Duration::from_secs(30)).await;
    assert_eq!(Replicated::fingerprint(&r.subscriber), at_stop, "the replica changed after the test stopped it");

    assert_rehearsal_result(&r, &sub_client, &report).await;
    assert_eq!(r.subscriber.psql(marker), "1");
    assert!(report.starts_with("test on replica: clean."), "{report}");
    let re_enable = report_line(&report, "re-enable:");
    assert_eq!(re_enable, format!("ALTER SUBSCRIPTION {} ENABLE;", ident(&r.subscription)));

    // The publisher was never written: its catalog is as it was (no ghost, slot or
    // publication of pg-ghost; the table's definition unchanged).
    assert_catalog_unchanged(&pub_before, &CatalogSnapshot::take(&pub_client).await);
    // On the subscriber, dropping the ghost as the report says leaves the catalog exactly as
    // before the run: the original kept its name and every name of its own, nothing of it
    // went with the ghost, and no slot or publication is left.
    r.subscriber.psql(report_line(&report, "clean up:"));
    assert_catalog_unchanged(&sub_before, &CatalogSnapshot::take(&sub_client).await);

    r.subscriber.psql(re_enable);
    workload.wait_for_more_commits(20, Duration::from_secs(30)).await;
    let report = workload.stop().await;
    assert!(report.errors.is_empty(), "workload errors (seed {}): {:#?}", report.seed, report.errors);
    let production = Replicated::fingerprint(&r.publisher);
    let deadline = Instant::now() + Duration::from_secs(60);
    while Replicated::fingerprint(&r.subscriber) != production {
        assert!(Instant::now() < deadline, "the replica did not catch up with the publisher within 60 s of ENABLE");
        tokio::time::sleep(POLL).await;
    }
    assert_same_rows(&sub_client, ORDERS, CONTROL, &r.table.projection()).await;
}

/// A partitioned table (a range level with a default, a hash sub-level) whose partitions are
/// published: the rehearsal finds the subscription through the partitions, swaps the tree and
/// back, and leaves the original's tree with every name it had, the migrated tree beside it.
/// The ALTER adds a CHECK without a name (and, from PostgreSQL 18, a not-null constraint):
/// the partitions' copies of it follow the parent's through the swap and back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rehearses_a_partitioned_table() {
    use crate::partitioned::{BY_TENANT, TENANT_TREE};
    let r = Replicated::start_with("rt_part", 2_000, Some((BY_TENANT, TENANT_TREE))).await;
    let (pub_client, sub_client) = (r.publisher.client().await, r.subscriber.client().await);
    let workload = Workload::start(&r.publisher, &r.table, WorkloadOptions::new(2).rate(Some(40))).await;
    workload.wait_for_more_commits(20, Duration::from_secs(30)).await;
    let pub_before = CatalogSnapshot::take(&pub_client).await;
    let sub_before = CatalogSnapshot::take(&sub_client).await;

    let alter = format!("{ALTER}, ADD CHECK (n = n OR n IS NULL)");
    let out = binary::run(&r.subscriber, &["--table", "orders", "--alter", &alter, "--test-on-replica", "--execute", "--chunk-size", "500"]).await;
    binary::assert_success(&out);
    let report = stdout(&out);
    assert!(report.starts_with("test on replica: clean."), "{report}");
    assert_eq!(r.enabled(), "f");
    let stopped = workload.stop().await;
    assert!(stopped.errors.is_empty(), "workload errors (seed {}): {:#?}", stopped.seed, stopped.errors);

    // The ghost's tree holds the original's rows migrated (the oracle's row compare reads
    // with ONLY, which a partitioned table fails).
    let differing = r.subscriber.psql(
        "SELECT count(*) FROM ((SELECT tenant, id, n::bigint, label, true FROM orders EXCEPT SELECT tenant, id, n, label, flag FROM _orders_gho)
                         UNION ALL (SELECT tenant, id, n, label, flag FROM _orders_gho EXCEPT SELECT tenant, id, n::bigint, label, true FROM orders)) d",
    );
    assert_eq!(differing, "0", "the ghost does not hold the original's rows:\n{}", binary::stderr(&out));
    assert_ne!(r.subscriber.psql("SELECT count(*) FROM orders_t3_h1"), "0");
    assert_catalog_unchanged(&pub_before, &CatalogSnapshot::take(&pub_client).await);
    r.subscriber.psql(report_line(&report, "clean up:"));
    assert_catalog_unchanged(&sub_before, &CatalogSnapshot::take(&sub_client).await);
}

/// A conversion rehearsed: the subscriber's plain table is converted into one partitioned by
/// ranges of its key, swapped and swapped back; the original comes out as it was, the
/// partitioned ghost beside it holds the migrated rows, each in its partition.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rehearses_a_conversion_into_a_partitioned_table() {
    let r = Replicated::start("rt_conv", 2_000).await;
    // A partitioned table takes no storage parameters of its own.
    r.subscriber.psql("ALTER TABLE orders RESET (fillfactor)");
    let sub_client = r.subscriber.client().await;
    let sub_before = CatalogSnapshot::take(&sub_client).await;
    let file = std::env::temp_dir().join(format!("pg-ghost-{}-{}-partitions.sql", std::process::id(), r.subscriber.name));
    std::fs::write(
        &file,
        "CREATE TABLE orders_low PARTITION OF orders FOR VALUES FROM (MINVALUE) TO (1000);
         CREATE TABLE orders_high PARTITION OF orders FOR VALUES FROM (1000) TO (MAXVALUE);",
    )
    .unwrap();
    let out = binary::run(
        &r.subscriber,
        &["--table", "orders", "--alter", ALTER, "--partition-by", "RANGE (id)", "--partitions", file.to_str().unwrap(), "--test-on-replica", "--execute"],
    )
    .await;
    binary::assert_success(&out);
    let report = stdout(&out);
    assert!(report.starts_with("test on replica: clean."), "{report}");
    assert_eq!(r.subscriber.psql("SELECT relkind FROM pg_class WHERE relname = 'orders'"), "r", "the original is not a plain table any more");
    assert_eq!(r.subscriber.psql("SELECT relkind FROM pg_class WHERE relname = '_orders_gho'"), "p");
    assert_eq!(
        r.subscriber.psql("SELECT string_agg(c.relname, ',' ORDER BY c.relname) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = '_orders_gho'::regclass"),
        "_orders_high_gho,_orders_low_gho"
    );
    assert_eq!(r.subscriber.psql("SELECT count(*) FROM _orders_low_gho WHERE id >= 1000"), "0");
    assert_same_rows(&sub_client, GHOST, ORDERS, &migrated(&r.table)).await;
    r.subscriber.psql(report_line(&report, "clean up:"));
    assert_catalog_unchanged(&sub_before, &CatalogSnapshot::take(&sub_client).await);
    let _ = std::fs::remove_file(&file);
}

/// With `--test-on-replica-skip-replica-stop` pg-ghost leaves the subscription alone and
/// waits at the cut-over until someone else has disabled it. Without that flag, a
/// subscription disabled beforehand is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skip_replica_stop_waits_for_the_dba() {
    let r = Replicated::start("rt_skip", 1_000).await;
    let sub_client = r.subscriber.client().await;
    let workload = Workload::start(&r.publisher, &r.table, WorkloadOptions::new(2).rate(Some(50))).await;

    let s = ident(&r.subscription);
    r.subscriber.psql(&format!("ALTER SUBSCRIPTION {s} DISABLE"));
    let before = CatalogSnapshot::take(&sub_client).await;
    let out = binary::run(&r.subscriber, &["--table", "orders", "--alter", ALTER, "--test-on-replica", "--execute"]).await;
    assert_exit(&out, 3, &[&format!("subscription {s}"), "is disabled already", "--test-on-replica-skip-replica-stop"]);
    assert_catalog_unchanged(&before, &CatalogSnapshot::take(&sub_client).await);
    r.subscriber.psql(&format!("ALTER SUBSCRIPTION {s} ENABLE"));

    // Without --execute, as in gh-ost, the test is a dry run: the ghost is built and kept
    // current, then dropped; nothing is swapped and the subscription is left running.
    let out = binary::run(&r.subscriber, &["--table", "orders", "--alter", ALTER, "--test-on-replica"]).await;
    binary::assert_success(&out);
    assert!(binary::stderr(&out).contains("dry run"), "{}", binary::stderr(&out));
    assert_eq!(r.enabled(), "t");
    assert_catalog_unchanged(&before, &CatalogSnapshot::take(&sub_client).await);

    let mut run = Background::spawn(
        &r.subscriber,
        &["--table", "orders", "--alter", ALTER, "--test-on-replica", "--test-on-replica-skip-replica-stop", "--execute", "--chunk-size", "300"],
    );
    wait_for_state(&sub_client, &mut run, "replica-wait").await;
    // pg-ghost waits, and replication goes on meanwhile.
    assert_eq!(r.enabled(), "t");
    r.insert_marker("replicated while pg-ghost waits");
    let marker = "SELECT count(*) FROM orders WHERE id = -1 AND label = 'replicated while pg-ghost waits'";
    wait_until("the marker on the replica", &mut run, Duration::from_secs(60), || r.subscriber.psql(marker) == "1").await;
    run.assert_running("the subscription to be disabled").await;
    assert_eq!(r.enabled(), "t", "pg-ghost disabled the subscription itself");

    r.subscriber.psql(&format!("ALTER SUBSCRIPTION {s} DISABLE"));
    let out = run.wait(Duration::from_secs(120)).await;
    binary::assert_success(&out);
    let report = stdout(&out);
    assert!(report.contains(&format!("subscriptions disabled for the test, left disabled (the publisher keeps WAL for them until re-enabled): {s}")), "{report}");
    assert_rehearsal_result(&r, &sub_client, &report).await;
    assert_eq!(r.subscriber.psql(&marker.replace("FROM orders", "FROM _orders_gho")), "1");
    let report = workload.stop().await;
    assert!(report.errors.is_empty(), "workload errors (seed {}): {:#?}", report.seed, report.errors);
}

/// A table no subscription replicates is not on a logical replica: refused, nothing changed.
/// With `--execute` too: the rehearsal is refused alike.
#[tokio::test]
async fn refuses_a_table_that_is_not_replicated() {
    let db = Cluster::primary().fresh_db("rt_refuse");
    narrow_table(&db, "orders", 500);
    let client = db.client().await;
    let before = CatalogSnapshot::take(&client).await;
    let out = binary::run(&db, &["--table", "orders", "--alter", "ALTER COLUMN n TYPE bigint", "--test-on-replica"]).await;
    assert_exit(&out, 3, &["--test-on-replica", r#"no subscription in this database replicates "public"."orders""#, "not a logical replica"]);
    assert_catalog_unchanged(&before, &CatalogSnapshot::take(&client).await);

    let out = binary::run(&db, &["--table", "orders", "--alter", "ALTER COLUMN n TYPE bigint", "--test-on-replica", "--execute"]).await;
    assert_exit(&out, 3, &["--test-on-replica", "not a logical replica"]);
    assert_catalog_unchanged(&before, &CatalogSnapshot::take(&client).await);
}

/// The ghost of `orders` with `alter` applied, created, copied and with its indexes built, as
/// a run leaves it before its cut-over: the session that made it, the table, its names, the ghost.
async fn copied_ghost(db: &TestDb<'_>, alter: &str) -> (tokio_postgres::Client, pg_ghost::schema::TableInfo, Names, ghost::Ghost) {
    let conn = ConnInfo::parse(&db.conninfo()).unwrap();
    let mut client = conn.connect().await.unwrap();
    let name = inspect::resolve_table(&client, "orders").await.unwrap();
    let info = inspect::table_info(&client, &name, None).await.unwrap();
    let names = Names::for_table(&name, info.oid);
    let g = ghost::create(&mut client, &info, &names.ghost, alter).await.unwrap();
    let job = CopyJob {
        conn: conn.clone(),
        orig: name.clone(),
        ghost: g.name.clone(),
        mapping: g.mapping.clone(),
        workers: 1,
        chunk_time: Duration::from_millis(50),
        changelog: None,
        resume_after: None,
        fresh: true,
        parts: Vec::new(),
        resume_parts: Default::default(),
        origins: None,
    };
    let (_gate_tx, gate) = tokio::sync::watch::channel(GateState::Open);
    copy_table(job, pg_ghost::apply::InFlight::new(), CopyProgress::new(500), gate).await.unwrap();
    ghost::rebuild_deferred(&client, &g).await.unwrap();
    (client, info, names, g)
}

/// The swap and the swap back in one transaction, on a table with an identity key, a serial
/// column, a CHECK, a UNIQUE and a partial index: afterwards every name of both tables is
/// what it was, the ghost holds the migrated rows, and dropping the ghost takes nothing of
/// the original's with it (the serial sequence went back to its owner).
#[tokio::test]
async fn swap_and_back_leaves_every_name_as_it_was() {
    let db = Cluster::primary().fresh_db("rt_swap_back");
    db.psql(
        "CREATE TABLE orders (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, n int NOT NULL CHECK (n >= 0),
                              email text UNIQUE, serial_no serial, label text);
         CREATE INDEX orders_label_idx ON orders (label) WHERE label IS NOT NULL;
         INSERT INTO orders (n, email, label) SELECT i % 50, 'e' || i, CASE WHEN i % 3 = 0 THEN 'l' || i END FROM generate_series(1, 2000) i;",
    );
    let (client, info, names, g) = copied_ghost(&db, "ALTER COLUMN n TYPE bigint, ADD CONSTRAINT n_small CHECK (n < 1000)").await;
    let observer = db.client().await;
    let before = CatalogSnapshot::take(&observer).await;

    client.batch_execute("BEGIN; LOCK TABLE orders, _orders_gho IN ACCESS EXCLUSIVE MODE").await.unwrap();
    let sql = pg_ghost::cutover::swap_back::swap_and_back(&client, &info, &g, &names.old.name).await.unwrap();
    client.batch_execute("COMMIT").await.unwrap();
    assert!(sql.iter().any(|s| s.contains(r#"RENAME TO "orders""#)), "the swap did not run: {sql:#?}");

    // The ghost's GENERATED ALWAYS column was BY DEFAULT while it was fed, and its autovacuum
    // off; the swap gives it back what the ALTER leaves, and swapping back keeps that.
    let mut want = before.clone();
    for r in want.relations.iter_mut().filter(|r| r.name == "_orders_gho") {
        assert_eq!(r.options.as_deref(), Some("autovacuum_enabled=false"), "the ghost's autovacuum is off while it is fed");
        r.options = None;
        for c in r.columns.iter_mut().filter(|c| c.name == "id") {
            assert_eq!(c.identity, "d", "the ghost's identity column is BY DEFAULT while it is fed");
            c.identity = "a".into();
        }
    }
    assert_catalog_unchanged(&want, &CatalogSnapshot::take(&observer).await);
    assert_same_rows(&observer, GHOST, ORDERS, &Projection::identity(&["id", "n", "email", "serial_no", "label"]).map("n", "n::bigint")).await;
    db.psql("DROP TABLE _orders_gho");
    assert_eq!(db.psql("INSERT INTO orders (n, email) VALUES (1, 'after') RETURNING serial_no"), "2001");
}

/// The swap and the swap back on a partitioned table (a range level with a default, a hash
/// sub-level, a partition's own index, unique constraint, statistics and CHECK): every
/// partition, index, constraint and statistics object of both trees carries its old name
/// afterwards, and the ghost's tree holds the migrated rows.
#[tokio::test]
async fn swap_and_back_of_a_partitioned_table_leaves_every_name_as_it_was() {
    let db = Cluster::primary().fresh_db("rt_swap_back_part");
    db.psql(
        "CREATE TABLE orders (tenant int NOT NULL, id bigint NOT NULL, n int NOT NULL CHECK (n >= 0), label text,
                              PRIMARY KEY (tenant, id)) PARTITION BY RANGE (tenant);
         CREATE TABLE orders_t1 PARTITION OF orders FOR VALUES FROM (1) TO (3);
         CREATE TABLE orders_t3 PARTITION OF orders FOR VALUES FROM (3) TO (5) PARTITION BY HASH (id);
         CREATE TABLE orders_t3_h0 PARTITION OF orders_t3 FOR VALUES WITH (MODULUS 2, REMAINDER 0);
         CREATE TABLE orders_t3_h1 PARTITION OF orders_t3 FOR VALUES WITH (MODULUS 2, REMAINDER 1);
         CREATE TABLE orders_rest PARTITION OF orders DEFAULT;
         CREATE INDEX orders_label_idx ON orders (label);
         CREATE INDEX orders_t1_n ON orders_t1 (n);
         ALTER TABLE orders_t1 ADD CONSTRAINT orders_t1_own_key UNIQUE (id, tenant);
         CREATE STATISTICS orders_t1_n_label ON n, label FROM orders_t1;
         INSERT INTO orders SELECT 1 + i % 8, i, i % 50, 'l' || i FROM generate_series(1, 2000) i;",
    );
    let (client, info, names, g) = copied_ghost(&db, "ALTER COLUMN n TYPE bigint, ADD CONSTRAINT n_small CHECK (n < 1000)").await;
    let observer = db.client().await;
    let names_of = |sql: &'static str| {
        let observer = &observer;
        async move {
            observer
                .query(sql, &[])
                .await
                .unwrap()
                .iter()
                .map(|r| r.get::<_, String>(0))
                .collect::<Vec<_>>()
        }
    };
    const PARTITIONS: &str = "SELECT c.relname::text || ' of ' || p.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
                                JOIN pg_class p ON p.oid = i.inhparent WHERE c.relkind IN ('r', 'p') ORDER BY 1";
    const INDEXES: &str = "SELECT c.relname::text || ' on ' || t.relname::text FROM pg_index x JOIN pg_class c ON c.oid = x.indexrelid
                             JOIN pg_class t ON t.oid = x.indrelid JOIN pg_namespace n ON n.oid = t.relnamespace
                            WHERE n.nspname = 'public' ORDER BY 1";
    const CONSTRAINTS: &str = "SELECT k.conname::text || ' on ' || t.relname::text FROM pg_constraint k JOIN pg_class t ON t.oid = k.conrelid
                                JOIN pg_namespace n ON n.oid = t.relnamespace WHERE n.nspname = 'public' ORDER BY 1";
    const STATISTICS: &str = "SELECT s.stxname::text || ' on ' || t.relname::text FROM pg_statistic_ext s JOIN pg_class t ON t.oid = s.stxrelid ORDER BY 1";
    let before = (names_of(PARTITIONS).await, names_of(INDEXES).await, names_of(CONSTRAINTS).await, names_of(STATISTICS).await);
    assert!(before.3.iter().any(|s| s.ends_with(" on _orders_t1_gho")), "the ghost's partition has no statistics: {:?}", before.3);
    assert!(before.0.iter().any(|p| p.ends_with(" of _orders_gho")), "the ghost has no partitions: {:?}", before.0);

    client.batch_execute("BEGIN; LOCK TABLE orders, _orders_gho IN ACCESS EXCLUSIVE MODE").await.unwrap();
    let sql = pg_ghost::cutover::swap_back::swap_and_back(&client, &info, &g, &names.old.name).await.unwrap();
    client.batch_execute("COMMIT").await.unwrap();
    assert!(sql.iter().any(|s| s.contains(r#"RENAME TO "orders_t3_h0""#)), "the swap did not rename the partitions: {sql:#?}");

    let after = (names_of(PARTITIONS).await, names_of(INDEXES).await, names_of(CONSTRAINTS).await, names_of(STATISTICS).await);
    assert_eq!(before, after, "names differ after the swap and back");
    // (The oracle's row compare reads its control with ONLY, which a partitioned table fails.)
    assert_eq!(db.psql("SELECT count(*) FROM _orders_gho"), "2000");
    let differing = db.psql(
        "SELECT count(*) FROM ((SELECT tenant, id, n::bigint, label FROM orders EXCEPT SELECT tenant, id, n, label FROM _orders_gho)
                         UNION ALL (SELECT tenant, id, n, label FROM _orders_gho EXCEPT SELECT tenant, id, n::bigint, label FROM orders)) d",
    );
    assert_eq!(differing, "0", "the ghost does not hold the original's rows");
    assert_eq!(db.psql("SELECT count(*) FROM orders_t1"), db.psql("SELECT count(*) FROM orders WHERE tenant < 3"));
}

/// The table is in a publication a logical subscriber follows: the swap moves the
/// publication's membership to the new table, and the subscriber goes on receiving every
/// change, those written during the run and after the swap, with no refresh on its side.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_of_the_table_keeps_receiving_after_the_swap() {
    let r = Replicated::start("rt_pubmove", 2_000).await;
    let workload = Workload::start(&r.publisher, &r.table, WorkloadOptions::new(2).rate(Some(50))).await;
    workload.wait_for_more_commits(20, Duration::from_secs(30)).await;
    let oid_before = r.publisher.psql("SELECT 'orders'::regclass::oid");
    let out = binary::run(&r.publisher, &["--table", "orders", "--alter", "ALTER COLUMN n TYPE bigint", "--execute", "--ok-to-drop-table"]).await;
    binary::assert_success(&out);
    assert_ne!(r.publisher.psql("SELECT 'orders'::regclass::oid"), oid_before, "no swap");
    workload.wait_for_more_commits(30, Duration::from_secs(30)).await;
    let report = workload.stop().await;
    assert!(report.errors.is_empty(), "workload errors (seed {}): {:#?}", report.seed, report.errors);
    r.insert_marker("after the swap");
    assert_eq!(r.publisher.psql("SELECT count(*) FROM pg_publication_tables WHERE pubname = 'rehearsal' AND tablename = 'orders'"), "1");

    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (p, s) = (Replicated::fingerprint(&r.publisher), Replicated::fingerprint(&r.subscriber));
        if p == s {
            break;
        }
        assert!(Instant::now() < deadline, "the subscriber did not catch up with the publisher within 60 s (rows: {} there, {} here)",
            r.publisher.psql("SELECT count(*) FROM orders"), r.subscriber.psql("SELECT count(*) FROM orders"));
        tokio::time::sleep(POLL * 5).await;
    }
    assert_eq!(r.subscriber.psql("SELECT label FROM orders WHERE id = -1"), "after the swap");
}
