//! The checksum before cut-over on real tables: a ghost built and copied the way the engine
//! does it, then compared with the original; corruptions planted in the ghost are found and
//! repaired, a difference that survives its repair stops the run naming keys. No stream runs
//! here, so `catch_up` has nothing to wait for.

use crate::harness::{Cluster, TestDb};
use futures_util::future::BoxFuture;
use pg_ghost::apply::InFlight;
use pg_ghost::checksum::{verify, ChecksumJob, ChecksumReport};
use pg_ghost::conn::ConnInfo;
use pg_ghost::copy::{copy_table, partition_walks, CopyJob, CopyProgress, GateState, Part};
use pg_ghost::ghost::{self, Ghost};
use pg_ghost::inspect;
use pg_ghost::names::Names;
use pg_ghost::sql::QualifiedName;
use pg_ghost::{ErrorKind, Result};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A table, its ghost after the copy and the deferred indexes, as the runner leaves them
/// before the checksum.
pub(crate) struct Built<'c> {
    pub(crate) db: TestDb<'c>,
    pub(crate) conn: ConnInfo,
    pub(crate) orig: QualifiedName,
    pub(crate) ghost: Ghost,
    copy_time: Duration,
    /// The leaves copied (and to be checked) one by one; empty for a plain table.
    parts: Vec<Arc<Part>>,
}

impl Built<'_> {
    /// Ranges of `range_rows` rows each, whatever time they take.
    fn job(&self, range_rows: u64) -> ChecksumJob {
        let mut job = ChecksumJob::new(self.conn.clone(), self.orig.clone(), self.ghost.name.clone(), self.ghost.mapping.clone());
        job.range_rows = range_rows;
        job.range_time = None;
        job.parts = self.parts.clone();
        job
    }

    fn ghost_sql(&self) -> String {
        self.ghost.name.sql()
    }

    /// Asserts, independently of the checksum, that the ghost holds exactly the rows of
    /// `expected` (a SELECT over the original written out by the test) as `ghost_cols`.
    fn assert_ghost_equals(&self, expected: &str, ghost_cols: &str) {
        let g = self.ghost_sql();
        let diff = self.db.psql(&format!(
            "SELECT count(*) FROM (({expected} EXCEPT ALL SELECT {ghost_cols} FROM {g})
                                   UNION ALL (SELECT {ghost_cols} FROM {g} EXCEPT ALL {expected})) d"
        ));
        assert_eq!(diff, "0", "ghost and original differ");
    }
}

pub(crate) async fn build<'c>(prefix: &str, schema: &str, table: &str, alter: &str) -> Built<'c> {
    build_with(prefix, schema, table, alter, false).await
}

/// `by_partition`: a partitioned table's leaves are copied one by one, as the runner does.
async fn build_with<'c>(prefix: &str, schema: &str, table: &str, alter: &str, by_partition: bool) -> Built<'c> {
    let db = Cluster::primary().fresh_db(prefix);
    db.psql(schema);
    let conn = ConnInfo::parse(&db.conninfo()).unwrap();
    let mut client = conn.connect().await.unwrap();
    let orig = inspect::resolve_table(&client, table).await.unwrap();
    let info = inspect::table_info(&client, &orig, None).await.unwrap();
    let names = Names::for_table(&orig, info.oid);
    let ghost = ghost::create(&mut client, &info, &names.ghost, alter).await.unwrap();
    let parts = match (&ghost.partitions, by_partition) {
        (Some(tree), true) => partition_walks(&client, info.oid, tree, &ghost.mapping.key_source).await.unwrap().unwrap(),
        _ => Vec::new(),
    };
    let job = CopyJob {
        conn: conn.clone(),
        orig: orig.clone(),
        ghost: ghost.name.clone(),
        mapping: ghost.mapping.clone(),
        workers: 2,
        chunk_time: Duration::from_millis(200),
        changelog: None,
        resume_after: None,
        fresh: true,
        parts: parts.clone(),
        resume_parts: Default::default(),
        origins: None,
    };
    let (_gate_tx, gate) = tokio::sync::watch::channel(GateState::Open);
    let started = Instant::now();
    copy_table(job, InFlight::new(), CopyProgress::new(1_000), gate).await.unwrap();
    ghost::rebuild_deferred(&client, &ghost).await.unwrap();
    let copy_time = started.elapsed();
    Built { db, conn, orig, ghost, copy_time, parts }
}

/// Nothing streams in these tests: the apply is always caught up.
fn caught_up() -> impl Fn() -> BoxFuture<'static, Result<()>> {
    || Box::pin(async { Ok(()) })
}

/// Counts the catch-ups the checksum asks for.
fn counting(calls: Arc<AtomicU32>) -> impl Fn() -> BoxFuture<'static, Result<()>> {
    move || {
        calls.fetch_add(1, Ordering::Relaxed);
        Box::pin(async { Ok(()) })
    }
}

const ITEMS: &str = r#"
CREATE TABLE "Items" (
    id int PRIMARY KEY,
    n int NOT NULL,
    label text,
    price numeric(10, 2),
    at timestamptz,
    tags text[],
    body text,
    body_length int GENERATED ALWAYS AS (length(body)) STORED
);
INSERT INTO "Items" (id, n, label, price, at, tags, body)
SELECT i, i % 97,
       CASE WHEN i % 7 = 0 THEN NULL ELSE 'label ' || i END,
       CASE WHEN i % 5 = 0 THEN NULL ELSE i / 3.0 END,
       '2024-01-01 00:00:00+00'::timestamptz + i * interval '1 minute',
       ARRAY['t' || i, NULL, 'quote"d'],
       CASE WHEN i % 500 = 0 THEN repeat(md5(i::text), 200) ELSE 'b' || i END
  FROM generate_series(1, 5000) i;
"#;

#[tokio::test]
async fn a_clean_copy_verifies_clean() {
    let b = build("checksum_clean", ITEMS, "\"Items\"", "ADD COLUMN added boolean NOT NULL DEFAULT false").await;
    let report = verify(&b.job(1_000), &InFlight::new(), caught_up()).await.unwrap();
    assert_eq!(report.rows, 5_000);
    // Five ranges up to the maximum, and the open one above it.
    assert_eq!(report.ranges, 6);
    assert_eq!((report.differing_ranges, report.repaired_ranges), (0, 0));
}

/// Ranges sized by time grow from a small first one while they are fast, and shrink when
/// they are slow. Ranges are found ahead of the workers, so each size follows a range
/// compared one or two ranges before.
#[tokio::test]
async fn ranges_are_sized_by_the_time_they_take() {
    let b = build("checksum_sized", ITEMS, "\"Items\"", "ALTER COLUMN n TYPE bigint").await;
    let mut job = b.job(100);
    job.range_time = Some(Duration::from_secs(10));
    let report = verify(&job, &InFlight::new(), caught_up()).await.unwrap();
    assert_eq!((report.rows, report.differing_ranges), (5_000, 0));
    // Ranges of 100 rows each would be 51.
    assert!(report.ranges <= 20, "{report:?}");
    job.range_rows = 500;
    job.range_time = Some(Duration::from_nanos(1));
    let report = verify(&job, &InFlight::new(), caught_up()).await.unwrap();
    assert_eq!((report.rows, report.differing_ranges), (5_000, 0));
    // Ranges of 500 rows each would be 11; they halve down to 100 rows.
    assert!(report.ranges > 25, "{report:?}");
}

#[tokio::test]
async fn type_changing_alters_verify_clean_and_repair_in_the_new_types() {
    let alter = "ALTER COLUMN id TYPE bigint, ALTER COLUMN n TYPE bigint, ALTER COLUMN label TYPE int USING length(label)";
    let b = build("checksum_types", ITEMS, "\"Items\"", alter).await;
    let job = b.job(1_000);
    let report = verify(&job, &InFlight::new(), caught_up()).await.unwrap();
    assert_eq!((report.rows, report.differing_ranges), (5_000, 0));

    b.db.psql(&format!("UPDATE {} SET label = label + 1 WHERE id = 1234", b.ghost_sql()));
    let report = verify(&job, &InFlight::new(), caught_up()).await.unwrap();
    assert_eq!((report.differing_ranges, report.repaired_ranges), (1, 1));
    b.assert_ghost_equals(
        r#"SELECT id::bigint, n::bigint, length(label), price, at, tags, body FROM "Items""#,
        "id, n, label, price, at, tags, body",
    );
}

const LINES: &str = r#"
CREATE TABLE lines (
    tenant int,
    id int,
    qty int NOT NULL,
    note text,
    PRIMARY KEY (tenant, id)
);
INSERT INTO lines SELECT t, i, (t * i) % 13, CASE WHEN i % 3 = 0 THEN NULL ELSE 'n' || t || '-' || i END
  FROM generate_series(1, 4) t, generate_series(1, 1000) i;
"#;

#[tokio::test]
async fn a_changed_value_a_missing_row_and_extra_rows_are_found_and_repaired() {
    let b = build("checksum_repair", LINES, "lines", "ALTER COLUMN note TYPE varchar(50), ALTER COLUMN qty TYPE bigint").await;
    let g = b.ghost_sql();
    // Ranges of 500 rows: (start, (1,500)], ((1,500), (1,1000)], ..., then ((4,1000), end).
    b.db.psql(&format!(
        "UPDATE {g} SET qty = qty + 1 WHERE (tenant, id) = (1, 100);
         DELETE FROM {g} WHERE (tenant, id) = (2, 600);
         INSERT INTO {g} VALUES (3, 5000, 1, 'extra');
         INSERT INTO {g} VALUES (9, 1, 1, 'beyond the maximum');"
    ));
    let catch_ups = Arc::new(AtomicU32::new(0));
    let mut job = b.job(500);
    job.rechecks = 2;
    // Two ranges at a time: the totals and the repairs are those of one worker.
    job.workers = 2;
    let report = verify(&job, &InFlight::new(), counting(catch_ups.clone())).await.unwrap();
    assert_eq!(report.ranges, 9);
    assert_eq!(report.rows, 4_000);
    assert_eq!((report.differing_ranges, report.repaired_ranges), (4, 4));
    // Each differing range was re-checked after a catch-up before it was repaired.
    assert_eq!(catch_ups.load(Ordering::Relaxed), 4 * 2);
    b.assert_ghost_equals("SELECT tenant, id, qty::bigint, note::varchar(50) FROM lines", "tenant, id, qty, note");

    let report = verify(&job, &InFlight::new(), caught_up()).await.unwrap();
    assert_eq!((report.rows, report.differing_ranges), (4_000, 0));
}

/// A list-partitioned table with a hash-partitioned level and a default partition; 6,000 rows,
/// 1,200 in each of regions 0 to 4.
const LEDGER: &str = "
CREATE TABLE ledger (id int, region int, amount int, PRIMARY KEY (id, region)) PARTITION BY LIST (region);
CREATE TABLE ledger_a PARTITION OF ledger FOR VALUES IN (1, 2);
CREATE TABLE ledger_b PARTITION OF ledger FOR VALUES IN (3) PARTITION BY HASH (id);
CREATE TABLE ledger_b0 PARTITION OF ledger_b FOR VALUES WITH (MODULUS 2, REMAINDER 0);
CREATE TABLE ledger_b1 PARTITION OF ledger_b FOR VALUES WITH (MODULUS 2, REMAINDER 1);
CREATE TABLE ledger_rest PARTITION OF ledger DEFAULT;
INSERT INTO ledger SELECT i, i % 5, i * 3 FROM generate_series(1, 6000) i;";

#[tokio::test]
async fn partitions_are_copied_and_checked_one_by_one() {
    let b = build_with("checksum_parts", LEDGER, "ledger", "ALTER COLUMN amount TYPE bigint", true).await;
    let leaves: Vec<String> = b.parts.iter().map(|p| p.orig.to_string()).collect();
    assert_eq!(leaves.len(), 4, "{leaves:?}");
    b.assert_ghost_equals("SELECT id, region, amount::bigint FROM ledger", "id, region, amount");
    // Each ghost leaf holds exactly its original leaf's rows: they were written there directly.
    for p in &b.parts {
        let (o, g) = (p.orig.sql(), p.ghost.sql());
        let diff = b.db.psql(&format!(
            "SELECT count(*) FROM ((SELECT id, region, amount::bigint FROM {o} EXCEPT ALL SELECT id, region, amount FROM {g})
                                   UNION ALL (SELECT id, region, amount FROM {g} EXCEPT ALL SELECT id, region, amount::bigint FROM {o})) d"
        ));
        assert_eq!(diff, "0", "{o} and {g} differ");
    }
    let g = b.ghost_sql();
    b.db.psql(&format!(
        "UPDATE {g} SET amount = -1 WHERE (id, region) IN ((6, 1), (8, 3), (9, 3));
         DELETE FROM {g} WHERE (id, region) = (10, 0);
         INSERT INTO {g} VALUES (7000, 4, 1), (7001, 9, 1);"
    ));
    let mut job = b.job(400);
    job.workers = 2;
    let report = verify(&job, &InFlight::new(), caught_up()).await.unwrap();
    assert_eq!(report.rows, 6_000);
    // Every leaf's ranges and the open range above each leaf's maximum: 2,400 rows in
    // ledger_a, 1,200 in ledger_b's two leaves, 2,400 in ledger_rest (regions 0 and 4).
    assert!(report.ranges >= 6 + 3 + 6 + 4, "{report:?}");
    // The two bad rows of ledger_b are in one range or in one of each of its leaves.
    assert!((4..=5).contains(&report.repaired_ranges), "{report:?}");
    b.assert_ghost_equals("SELECT id, region, amount::bigint FROM ledger", "id, region, amount");
    let report = verify(&job, &InFlight::new(), caught_up()).await.unwrap();
    assert_eq!((report.rows, report.differing_ranges), (6_000, 0));
}

#[tokio::test]
async fn a_repair_releases_its_range_for_the_flusher() {
    let b = build("checksum_inflight", LINES, "lines", "ALTER COLUMN qty TYPE bigint").await;
    b.db.psql(&format!("DELETE FROM {} WHERE (tenant, id) = (4, 2)", b.ghost_sql()));
    let inflight = InFlight::new();
    let report = verify(&b.job(1_000), &inflight, caught_up()).await.unwrap();
    assert_eq!(report.repaired_ranges, 1);
    assert_eq!(inflight.chunks_in_flight(), 0);
    // The flusher is told the repaired range ended, so it flushes the keys it deferred.
    assert_eq!(inflight.take_ended().len(), 1);
}

#[tokio::test]
async fn a_difference_that_survives_its_repair_stops_the_run_naming_keys() {
    let b = build("checksum_persistent", ITEMS, "\"Items\"", "ALTER COLUMN n TYPE bigint").await;
    let g = b.ghost_sql();
    b.db.psql(&format!(
        "UPDATE {g} SET label = 'corrupt' WHERE id = 42;
         CREATE FUNCTION tamper() RETURNS trigger LANGUAGE plpgsql AS $$
           BEGIN IF NEW.id IN (42, 77) THEN NEW.label := 'tampered'; END IF; RETURN NEW; END $$;
         CREATE TRIGGER tamper BEFORE INSERT ON {g} FOR EACH ROW EXECUTE FUNCTION tamper();"
    ));
    let inflight = InFlight::new();
    let err = verify(&b.job(1_000), &inflight, caught_up()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Aborted);
    let msg = err.to_string();
    assert!(msg.contains("key range (start, 1000]"), "{msg}");
    assert!(msg.contains("2 key(s) differ: 42, 77"), "{msg}");
    assert!(!msg.contains("tampered") && !msg.contains("corrupt") && !msg.contains("label 77"), "row values leaked: {msg}");
    // The failed repair was rolled back and its range released.
    assert_eq!(b.db.psql(&format!("SELECT label FROM {g} WHERE id = 42")), "corrupt");
    assert_eq!(b.db.psql(&format!("SELECT count(*) FROM {g}")), "5000");
    assert_eq!(inflight.chunks_in_flight(), 0);
}

const CODES: &str = r#"
CREATE TABLE codes (code text PRIMARY KEY, v int NOT NULL);
INSERT INTO codes SELECT CASE WHEN i % 2 = 0 THEN upper(md5(i::text)) ELSE md5(i::text) END, i FROM generate_series(1, 3000) i;
"#;

const NUMBERED: &str = r#"
CREATE TABLE numbered (id int PRIMARY KEY, v text);
INSERT INTO numbered SELECT 2 * i, 'v' || i FROM generate_series(1, 3000) i;
"#;

/// Plants a changed value, a missing row and an extra row, then expects all three repaired.
async fn corrupt_and_repair(b: &Built<'_>, corruption: &str, expected: &str, ghost_cols: &str) -> ChecksumReport {
    let job = b.job(700);
    let clean = verify(&job, &InFlight::new(), caught_up()).await.unwrap();
    assert_eq!((clean.rows, clean.differing_ranges), (3_000, 0));
    b.db.psql(corruption);
    let report = verify(&job, &InFlight::new(), caught_up()).await.unwrap();
    assert!(report.repaired_ranges >= 1, "{report:?}");
    b.assert_ghost_equals(expected, ghost_cols);
    let again = verify(&job, &InFlight::new(), caught_up()).await.unwrap();
    assert_eq!(again.differing_ranges, 0);
    report
}

#[tokio::test]
async fn a_key_whose_collation_changes_is_compared_in_the_original_order() {
    let b = build("checksum_collation", CODES, "codes", "ALTER COLUMN code TYPE text COLLATE \"und-x-icu\"").await;
    let g = b.ghost_sql();
    corrupt_and_repair(
        &b,
        &format!(
            "UPDATE {g} SET v = -v WHERE v = 1;
             DELETE FROM {g} WHERE v = 1700;
             INSERT INTO {g} VALUES ('Zz-extra', 1);"
        ),
        "SELECT code COLLATE \"C\", v FROM codes",
        "code COLLATE \"C\", v",
    )
    .await;
}

#[tokio::test]
async fn a_key_type_without_cross_type_operators_is_compared_in_the_original_order() {
    let b = build("checksum_key_text", NUMBERED, "numbered", "ALTER COLUMN id TYPE text").await;
    let g = b.ghost_sql();
    // In text order '1000' < '2' < '998': the ranges must still follow the integers, 700
    // rows each: (start, 1400], (1400, 2800], (2800, 4200], ...
    let report = corrupt_and_repair(
        &b,
        &format!(
            "UPDATE {g} SET v = 'changed' WHERE id = '2';
             INSERT INTO {g} VALUES ('1501', 'extra');
             DELETE FROM {g} WHERE id = '3000';"
        ),
        "SELECT id::text, v FROM numbered",
        "id, v",
    )
    .await;
    assert_eq!(report.repaired_ranges, 3, "{report:?}");
    // Each range scans the whole ghost: ranges are not sized by time there (they would
    // shrink to a scan each for a hundred rows), but have the fixed size for such tables.
    let mut job = b.job(100);
    job.range_time = Some(Duration::from_nanos(1));
    let report = verify(&job, &InFlight::new(), caught_up()).await.unwrap();
    assert_eq!((report.rows, report.ranges), (3_000, 2), "{report:?}");
}

/// Rows are hashed by their types where equality is identity, numeric by its binary form, and by
/// their text elsewhere: a value equal by its type but printed otherwise (numeric 1.0 and
/// 1.000, in a domain or cast from an integer too; interval 1 day and 24 hours, json spacing,
/// bpchar trailing spaces) is still a difference, found and repaired; so are a numeric's sign
/// and NaN, Infinity, -Infinity or NULL, which numeric's own hash does not tell apart, and a
/// changed integer or text.
#[tokio::test]
async fn values_equal_by_type_but_printed_otherwise_are_told_apart() {
    let schema = r#"
        CREATE DOMAIN price AS numeric CHECK (VALUE IS DISTINCT FROM -1);
        CREATE TABLE mixed (id int PRIMARY KEY, n int, amount numeric, span interval, doc json, code bpchar, label text,
                            cost price, special numeric);
        INSERT INTO mixed SELECT i, i, i / 4.0, make_interval(days => 1 + i % 3), json_build_object('i', i), 'c' || i, 'l' || i,
                                 i / 8.0, (ARRAY['NaN', 'Infinity', '-Infinity', NULL])[1 + i % 4]::numeric
          FROM generate_series(1, 3000) i;"#;
    let b = build("checksum_mixed", schema, "mixed", "ADD COLUMN extra int, ALTER COLUMN n TYPE numeric(12, 3)").await;
    let g = b.ghost_sql();
    let job = b.job(500);
    let clean = verify(&job, &InFlight::new(), caught_up()).await.unwrap();
    assert_eq!((clean.rows, clean.differing_ranges), (3_000, 0));
    let special = "coalesce(special::text, 'null')";
    let cases = [
        ("amount = amount::numeric(30, 25)", 4, "amount::text"),
        ("cost = cost::numeric(30, 10)", 1500, "cost::text"),
        ("special = NULL", 1000, special),
        ("special = 'NaN'", 1003, special),
        ("special = '-Infinity'", 1001, special),
        ("special = 'NaN'", 1002, special),
        ("special = 'Infinity'", 1004, special),
        ("span = '24 hours'", 3, "span::text"),
        (r#"doc = '{"i" :  700}'"#, 700, "doc::text"),
        ("code = 'c1200 '", 1200, "octet_length(code)::text"),
        ("amount = -amount", 1800, "amount::text"),
        ("n = -n", 2100, "n::numeric(12, 3)::text"),
        ("label = 'L2900'", 2900, "label"),
    ];
    for (set, id, read) in cases {
        let want = b.db.psql(&format!("SELECT {read} FROM mixed WHERE id = {id}"));
        b.db.psql(&format!("UPDATE {g} SET {set} WHERE id = {id}"));
        assert_ne!(b.db.psql(&format!("SELECT {read} FROM {g} WHERE id = {id}")), want, "{set} changed nothing");
        let report = verify(&job, &InFlight::new(), caught_up()).await.unwrap();
        assert_eq!(report.repaired_ranges, 1, "{set} was not found: {report:?}");
        assert_eq!(b.db.psql(&format!("SELECT {read} FROM {g} WHERE id = {id}")), want, "{set} was not repaired");
    }
}

/// bigint's own hash folds its two 32-bit halves into one, so a value and its twin extended
/// with zeros instead of its sign (-1 and 4294967295: what a wrong int to bigint conversion
/// writes) hash alike; the checksum hashes the high half too, and finds them.
#[tokio::test]
async fn a_bigint_extended_with_zeros_instead_of_its_sign_is_found() {
    let schema = r#"
        CREATE DOMAIN counter AS bigint;
        CREATE TABLE wide (id int PRIMARY KEY, n int, big bigint, c counter);
        INSERT INTO wide SELECT i, i - 1500, (i - 1500) * 3, 1500 - i FROM generate_series(1, 3000) i;"#;
    let b = build("checksum_wide", schema, "wide", "ALTER COLUMN n TYPE bigint").await;
    let g = b.ghost_sql();
    let job = b.job(500);
    let clean = verify(&job, &InFlight::new(), caught_up()).await.unwrap();
    assert_eq!((clean.rows, clean.differing_ranges), (3_000, 0));
    for (column, id) in [("n", 1499), ("big", 1000), ("c", 2000)] {
        let want = b.db.psql(&format!("SELECT {column} FROM {g} WHERE id = {id}"));
        assert!(want.starts_with('-'), "{column} of row {id} is not negative: {want}");
        b.db.psql(&format!("UPDATE {g} SET {column} = {column} + 4294967296 WHERE id = {id}"));
        let folded = format!("SELECT hash_record_extended(ROW({column}::int8), 0) FROM {g} WHERE id = {id}");
        let before = b.db.psql(&format!("SELECT hash_record_extended(ROW({want}::int8), 0)"));
        assert_eq!(b.db.psql(&folded), before, "the planted value does not hash like the right one: the test plants nothing hidden");
        let report = verify(&job, &InFlight::new(), caught_up()).await.unwrap();
        assert_eq!(report.repaired_ranges, 1, "{column} + 2^32 was not found: {report:?}");
        assert_eq!(b.db.psql(&format!("SELECT {column} FROM {g} WHERE id = {id}")), want, "{column} was not repaired");
    }
}

/// Checksum time beside copy time on a few hundred thousand rows:
/// `cargo test --release --test it checksum_timing -- --ignored --nocapture`.
#[tokio::test]
#[ignore]
async fn checksum_timing() {
    let schema = r#"
        CREATE TABLE big (id bigint PRIMARY KEY, n int NOT NULL, label text, at timestamptz, body text);
        INSERT INTO big SELECT i, i % 1000, 'label ' || i, now(), repeat('x', 100) FROM generate_series(1, 400000) i;
        CREATE INDEX big_n ON big (n);
        ANALYZE big;"#;
    let b = build("checksum_timing", schema, "big", "ALTER COLUMN n TYPE bigint, ADD COLUMN f boolean").await;
    println!("rows=400000 copy (2 workers) + indexes: {:.2}s", b.copy_time.as_secs_f64());
    for workers in [1, 2] {
        let mut job = b.job(ChecksumJob::DEFAULT_RANGE_ROWS);
        job.range_time = Some(ChecksumJob::DEFAULT_RANGE_TIME);
        job.workers = workers;
        let report = verify(&job, &InFlight::new(), caught_up()).await.unwrap();
        println!("checksum, {workers} worker(s): {:.2}s over {} ranges", report.elapsed.as_secs_f64(), report.ranges);
        assert_eq!((report.rows, report.differing_ranges), (400_000, 0));
    }
}

const HOT: &str = r#"
CREATE TABLE hot (id int PRIMARY KEY, v int NOT NULL, note text);
INSERT INTO hot SELECT i, 0, 'n' || i FROM generate_series(1, 20000) i;
"#;

/// The rows of `hot` the live test corrupts on the ghost.
const CORRUPTED: [i32; 4] = [10, 1500, 2000, 2900];

/// Changes the original without a stream: each transaction's keys are handed to the writer
/// after it commits, as the stream would, at increasing LSNs.
struct Workload {
    sent: Arc<std::sync::atomic::AtomicU64>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<u64>,
}

impl Workload {
    fn start(client: tokio_postgres::Client, items: tokio::sync::mpsc::Sender<pg_ghost::apply::StreamItem>) -> Workload {
        use pg_ghost::apply::{Key, StreamItem};
        use rand::Rng;
        let sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (sent2, stop2) = (sent.clone(), stop.clone());
        let task = tokio::spawn(async move {
            let mut next_id = 20_001;
            let mut transactions = 0;
            while !stop2.load(Ordering::Relaxed) {
                // Half the updates hit the first ranges, where the ghost was corrupted, but never
                // the corrupted rows themselves: a flush would mend them before the checksum
                // could find them.
                let ids: Vec<i32> = (0..20)
                    .map(|i| if i % 2 == 0 { rand::thread_rng().gen_range(1..3_000) } else { rand::thread_rng().gen_range(1..20_000) })
                    .filter(|id| !CORRUPTED.contains(id))
                    .collect();
                let gone = rand::thread_rng().gen_range(1..20_000);
                if CORRUPTED.contains(&gone) {
                    continue;
                }
                client
                    .batch_execute(&format!(
                        "BEGIN;
                         UPDATE hot SET v = v + 1, note = md5(random()::text) WHERE id = ANY('{{{}}}'::int[]);
                         DELETE FROM hot WHERE id = {gone};
                         INSERT INTO hot VALUES ({next_id}, 0, 'new');
                         COMMIT;",
                        ids.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(",")
                    ))
                    .await
                    .unwrap();
                let mut keys: Vec<Key> = ids.iter().map(|i| vec![i.to_string()].into_boxed_slice()).collect();
                keys.push(vec![gone.to_string()].into_boxed_slice());
                keys.push(vec![next_id.to_string()].into_boxed_slice());
                next_id += 1;
                transactions += 1;
                let lsn = pg_ghost::lsn::Lsn(transactions);
                items.send(StreamItem::Committed { keys, end_lsn: lsn, xid: None }).await.unwrap();
                sent2.store(transactions, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            transactions
        });
        Workload { sent, stop, task }
    }

    /// The runner's catch-up: the writer received everything sent so far and its backlog is small.
    fn catch_up(&self, stats: tokio::sync::watch::Receiver<pg_ghost::apply::ApplyStats>) -> impl Fn() -> BoxFuture<'static, Result<()>> {
        let sent = self.sent.clone();
        move || {
            let target = pg_ghost::lsn::Lsn(sent.load(Ordering::Relaxed));
            let mut stats = stats.clone();
            Box::pin(async move {
                stats
                    .wait_for(|s| s.received >= target && s.backlog_keys < 50)
                    .await
                    .map(|_| ())
                    .map_err(|_| pg_ghost::Error::internal("the writer stopped"))
            })
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repairs_under_streamed_changes_lose_nothing() {
    use pg_ghost::apply::{FlushSql, Writer};
    let b = build("checksum_live", HOT, "hot", "ALTER COLUMN v TYPE bigint").await;
    let g = b.ghost_sql();
    b.db.psql(&format!(
        "UPDATE {g} SET v = -1 WHERE id IN (10, 1500, 2900);
         DELETE FROM {g} WHERE id = 2000;
         INSERT INTO {g} VALUES (25000, 0, 'extra');"
    ));
    let inflight = InFlight::new();
    let (items_tx, items_rx) = tokio::sync::mpsc::channel(1024);
    let (writer, writer_task) = Writer::spawn(
        pg_ghost::reconnect::Session::connect(b.conn.clone()).await.unwrap(),
        FlushSql::new(&b.orig, &b.ghost.name, &b.ghost.mapping),
        inflight.clone(),
        Arc::new(|_| {}),
        items_rx,
    );
    // A sender kept here: the writer ends when the stream's channel closes.
    let workload = Workload::start(b.conn.connect().await.unwrap(), items_tx.clone());
    tokio::time::sleep(Duration::from_millis(200)).await;

    let mut job = b.job(1_000);
    job.workers = 2;
    let report = verify(&job, &inflight, workload.catch_up(writer.stats.clone())).await.unwrap();
    // Ranges of the corruption, and perhaps others the workload kept ahead of the apply.
    assert!(report.repaired_ranges >= 4, "{report:?}");

    workload.stop.store(true, Ordering::Relaxed);
    let last = pg_ghost::lsn::Lsn(workload.task.await.unwrap());
    let mut stats = writer.stats.clone();
    tokio::time::timeout(
        Duration::from_secs(30),
        stats.wait_for(|s| s.received >= last && s.acked >= last && s.backlog_keys == 0 && !s.flushing),
    )
    .await
    .expect("the writer did not catch up")
    .unwrap();
    writer.stop().await.unwrap();
    writer_task.await.unwrap().unwrap();
    drop(items_tx);
    b.assert_ghost_equals("SELECT id, v::bigint, note FROM hot", "id, v, note");
    println!("{report:?}");
}
