//! A plain table converted into a partitioned one (`--partition-by` with `--partitions FILE`
//! or `--partitions-auto`), under the control-table workload. The contract: afterwards the
//! whole database's `pg_dump --schema-only` equals a twin's on which the same partitioned
//! table was created plainly (the same partitions, the ALTER run on it, the same dependents),
//! the table equals its control row for row, and each partition holds exactly the control's
//! rows of its range. Refusals (rows no partition takes, a key without the partition key, a
//! foreign key the partitioned table cannot take, storage parameters, a name taken) create
//! nothing.

use crate::binary;
use crate::harness::{Cluster, TestDb};
use crate::oracle::*;
use crate::run_faults::{flag_path, wait_for_copy_past, wait_for_state, Running};
use std::time::Duration;

const BY_TENANT: &str = "RANGE (tenant)";
/// The workload writes tenants 1 to 8 and moves rows between them.
const WITH_DEFAULT: &str = "
    CREATE TABLE orders_t1 PARTITION OF public.orders FOR VALUES FROM (1) TO (3);
    CREATE TABLE public.orders_t3 PARTITION OF orders FOR VALUES FROM (3) TO (5) WITH (fillfactor = 80);
    CREATE TABLE orders_rest PARTITION OF orders DEFAULT;";
/// Every tenant has a partition, none is DEFAULT.
const COVERING: &str = "
    CREATE TABLE orders_low PARTITION OF orders FOR VALUES FROM (1) TO (5);
    CREATE TABLE orders_high PARTITION OF orders FOR VALUES FROM (5) TO (9);";
/// Tenants 5 to 8 have no partition.
const NOT_COVERING: &str = "
    CREATE TABLE orders_t1 PARTITION OF orders FOR VALUES FROM (1) TO (3);
    CREATE TABLE orders_t3 PARTITION OF orders FOR VALUES FROM (3) TO (5);";
/// Partitions and the range each takes, for the row-by-row check of each partition.
const WITH_DEFAULT_RANGES: &[(&str, &str)] =
    &[("orders_t1", "tenant >= 1 AND tenant < 3"), ("orders_t3", "tenant >= 3 AND tenant < 5"), ("orders_rest", "NOT (tenant >= 1 AND tenant < 5)")];
const COVERING_RANGES: &[(&str, &str)] = &[("orders_low", "tenant >= 1 AND tenant < 5"), ("orders_high", "tenant >= 5 AND tenant < 9")];

/// A view and a foreign key from another table that read the table; both must follow it.
const DEPENDENTS: &str = "
    CREATE VIEW public.orders_small AS SELECT tenant, id, n FROM public.orders WHERE n < 1000;
    CREATE TABLE public.order_notes (tenant int NOT NULL, id bigint NOT NULL, note text,
        CONSTRAINT order_notes_order FOREIGN KEY (tenant, id) REFERENCES public.orders (tenant, id) ON UPDATE CASCADE ON DELETE CASCADE);";

/// Writes the partition statements where `--partitions` reads them.
fn partitions_file(db: &TestDb<'_>, what: &str, statements: &str) -> String {
    let path = flag_path(db, &format!("{what}.sql"));
    std::fs::write(&path, statements).unwrap();
    path.to_string_lossy().into_owned()
}

/// The twin: the same partitioned table created plainly, in a fresh database, then `extra`.
async fn plain_twin<'c>(db: &TestDb<'c>, kind: KeyKind, partitions: &str, extra: &str) -> TestDb<'c> {
    let twin = db.cluster.fresh_db("convert_twin");
    let tree = partitions.replace("PARTITION OF public.orders", "PARTITION OF {t}").replace("PARTITION OF orders", "PARTITION OF {t}");
    OracleTable::create_partitioned(&twin, "orders", kind, 10, BY_TENANT, &tree).await;
    if !extra.is_empty() {
        twin.psql(extra);
    }
    twin
}

/// The oracle table as a plain table, without the storage parameter a partitioned table
/// cannot take.
async fn plain_table(db: &TestDb<'_>, rows: i64) -> OracleTable {
    let table = OracleTable::create(db, "orders", KeyKind::Composite, rows).await;
    db.psql("ALTER TABLE public.orders RESET (fillfactor)");
    table
}

struct Conversion<'a> {
    prefix: &'a str,
    partitions: &'a str,
    ranges: &'a [(&'a str, &'a str)],
    /// SQL on the original before the run.
    extra: &'a str,
    /// SQL on the twin after its table is created: what the plain way does.
    twin: &'a str,
    alter: &'a str,
    flags: &'a [&'a str],
    project: fn(Projection) -> Projection,
}

async fn convert_under_workload(c: Conversion<'_>) {
    let db = Cluster::primary().fresh_db(c.prefix);
    let table = plain_table(&db, 3_000).await;
    db.psql(&format!("{DEPENDENTS} {}", c.extra));
    let oid_before = db.psql("SELECT 'public.orders'::regclass::oid");
    let file = partitions_file(&db, "partitions", c.partitions);
    let workload = Workload::start(&db, &table, WorkloadOptions::new(3).rate(Some(80))).await;
    workload.wait_for_more_commits(30, Duration::from_secs(30)).await;

    let mut args = vec!["--table", "orders", "--partition-by", BY_TENANT, "--partitions", &file, "--alter", c.alter, "--execute", "--chunk-size", "500"];
    args.extend(c.flags);
    let out = binary::run(&db, &args).await;
    binary::assert_success(&out);
    let log = binary::stderr(&out);

    workload.wait_for_more_commits(30, Duration::from_secs(30)).await;
    let report = workload.stop().await;
    assert!(report.errors.is_empty(), "workload errors (seed {}): {:#?}", report.seed, report.errors);
    assert!(report.committed_after_swap > 0, "nothing written after the swap: {report:?}");
    assert_converted(&db, &table, c.ranges, &(c.project)(table.projection()), &log).await;
    assert_ne!(db.psql("SELECT 'public.orders'::regclass::oid"), oid_before, "the partitioned table has the name");

    let twin = plain_twin(&db, KeyKind::Composite, c.partitions, &format!("{DEPENDENTS} {}", c.twin)).await;
    assert_whole_schema_equal(&db, &twin, "a plain table converted into a partitioned one").await;
}

/// The table is partitioned and equals its control; each partition holds the control's rows
/// of its range; the old table drops without CASCADE; no slot or publication is left.
async fn assert_converted(db: &TestDb<'_>, table: &OracleTable, ranges: &[(&str, &str)], projection: &Projection, log: &str) {
    let client = db.client().await;
    assert_eq!(db.psql("SELECT relkind FROM pg_class WHERE oid = 'public.orders'::regclass"), "p", "not partitioned:\n{log}");
    table.assert_matches_control(&client, projection).await;
    for (partition, range) in ranges {
        let diff = compare::compare_rows(
            &client,
            &format!("SELECT {} FROM ONLY public.{partition}", projection.table_select_list()),
            &format!("SELECT {} FROM ONLY {} WHERE {range}", projection.control_select_list(), table.control_qualified()),
        )
        .await;
        assert!(diff.is_empty(), "partition {partition} does not hold the control's rows of {range}:\n{diff}");
    }
    client
        .batch_execute("DROP TABLE public._orders_del")
        .await
        .unwrap_or_else(|e| panic!("the old table must drop without CASCADE: {}\n{log}", compare::db_message(&e)));
    assert_no_slots_or_publications(&client).await;
}

/// With a DEFAULT partition (it takes tenants 5 to 8); the view and the foreign key from
/// another table follow the partitioned table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn converted_with_a_default_partition() {
    convert_under_workload(Conversion {
        prefix: "conv_default",
        partitions: WITH_DEFAULT,
        ranges: WITH_DEFAULT_RANGES,
        extra: "",
        twin: "ALTER TABLE public.orders ADD COLUMN note text NOT NULL DEFAULT 'none'",
        alter: "ADD COLUMN note text NOT NULL DEFAULT 'none'",
        flags: &[],
        project: |p| p.add("note", "'none'::text"),
    })
    .await;
}

/// Without a DEFAULT partition, every row taken by one; the rows are found by a key without
/// the partition key (`--key` on a unique constraint on `id` alone, which the ALTER drops, as
/// PostgreSQL allows none on a partitioned table): the writes conflict on the key and the
/// partition key, and the workload's updates of `tenant` move rows between partitions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn converted_without_a_default_partition_finding_rows_by_another_key() {
    convert_under_workload(Conversion {
        prefix: "conv_cover",
        partitions: COVERING,
        ranges: COVERING_RANGES,
        extra: "ALTER TABLE public.orders ADD CONSTRAINT orders_id_key UNIQUE (id); ALTER TABLE public.orders REPLICA IDENTITY FULL;",
        twin: "ALTER TABLE public.orders REPLICA IDENTITY FULL;",
        alter: "DROP CONSTRAINT orders_id_key",
        flags: &["--key", "orders_id_key", "--copy-workers", "2"],
        project: |p| p,
    })
    .await;
}

/// Runs a conversion that must be refused with `needle`, and checks that nothing was created.
async fn assert_refused(db: &TestDb<'_>, args: &[&str], needle: &str) {
    let client = db.client().await;
    let snapshot = CatalogSnapshot::take(&client).await;
    let out = binary::run(db, args).await;
    binary::assert_failure(&out, 3, needle);
    assert_catalog_unchanged(&snapshot, &CatalogSnapshot::take(&client).await);
}

/// Rows of tenants 5 to 8 would have no partition: refused, counting them and naming some;
/// the same partitions with a DEFAULT one are accepted, without `--alter` (the primary key
/// has the partition key already): a dry run, then the conversion.
#[tokio::test]
async fn rows_without_a_partition_are_refused() {
    let db = Cluster::primary().fresh_db("conv_unrouted");
    let table = plain_table(&db, 400).await;
    // The seed writes tenants 1 to 4 only.
    db.psql("UPDATE public.orders SET tenant = 5 + id % 4 WHERE id % 3 = 0; UPDATE public.orders_control SET tenant = 5 + id % 4 WHERE id % 3 = 0");
    let expected = db.psql("SELECT count(*) FROM public.orders WHERE tenant >= 5");
    assert_ne!(expected, "0");
    let file = partitions_file(&db, "not_covering", NOT_COVERING);
    let args = ["--table", "orders", "--partition-by", BY_TENANT, "--partitions", &file, "--alter", "ADD COLUMN x int", "--execute"];
    assert_refused(&db, &args, &format!("{expected} row(s) of \"public\".\"orders\" would have no partition")).await;

    let file = partitions_file(&db, "with_default", &format!("{NOT_COVERING} CREATE TABLE orders_rest PARTITION OF orders DEFAULT;"));
    let args = ["--table", "orders", "--partition-by", BY_TENANT, "--partitions", &file];
    binary::assert_success(&binary::run(&db, &args).await);
    assert_eq!(db.psql("SELECT relkind FROM pg_class WHERE oid = 'public.orders'::regclass"), "r", "a dry run converts nothing");
    assert_eq!(
        db.psql("SELECT string_agg(relname, ', ' ORDER BY relname) FROM pg_class WHERE relnamespace = 'public'::regnamespace AND relkind IN ('r', 'p')"),
        "orders, orders_control",
        "the dry run's ghost and its partitions are gone"
    );
    let out = binary::run(&db, &[&args[..], &["--execute"][..]].concat()).await;
    binary::assert_success(&out);
    let ranges = [("orders_t1", "tenant >= 1 AND tenant < 3"), ("orders_t3", "tenant >= 3 AND tenant < 5"), ("orders_rest", "NOT (tenant >= 1 AND tenant < 5)")];
    assert_converted(&db, &table, &ranges, &table.projection(), &binary::stderr(&out)).await;
}

/// The primary key lacks the partition key: refused, naming both and how to replace the key;
/// a foreign key that references the key alone cannot reference the partitioned table:
/// refused, naming it. Storage parameters and a partition name already taken are refused too.
#[tokio::test]
async fn what_a_partitioned_table_cannot_have_is_refused() {
    let db = Cluster::primary().fresh_db("conv_refusals");
    OracleTable::create(&db, "orders", KeyKind::Identity, 300).await;
    let auto = "monthly from 2024-01 to 2025-01, default";
    let by_at = ["--table", "orders", "--partition-by", "RANGE (at)", "--partitions-auto", auto, "--execute"];
    let with = |alter: &'static str| [&by_at[..], &["--alter", alter][..]].concat();

    assert_refused(&db, &with("ADD COLUMN x int"), "has storage parameters (fillfactor=90), which a partitioned table does not take").await;
    db.psql("ALTER TABLE public.orders RESET (fillfactor)");
    assert_refused(
        &db,
        &with("ADD COLUMN x int"),
        "primary key \"orders_pkey\" (\"id\") lacks partition key column(s) \"at\"; PostgreSQL requires every primary key and unique constraint of a partitioned table to include the partition key: replace it in --alter, e.g. --alter 'DROP CONSTRAINT \"orders_pkey\", ADD PRIMARY KEY (\"id\", \"at\")'; nothing was created",
    )
    .await;

    db.psql("CREATE TABLE public.order_refs (order_id bigint REFERENCES public.orders (id))");
    assert_refused(&db, &with("DROP CONSTRAINT orders_pkey, ADD PRIMARY KEY (id, at)"), "foreign key \"order_refs_order_id_fkey\" on \"public\".\"order_refs\" references \"public\".\"orders\" (\"id\") and could not reference it once it is partitioned").await;
    db.psql("DROP TABLE public.order_refs; CREATE TABLE public.orders_p2024_03 (x int)");
    assert_refused(&db, &with("DROP CONSTRAINT orders_pkey, ADD PRIMARY KEY (id, at)"), "the name of partition \"public\".\"orders_p2024_03\" is taken").await;
}

/// A conversion killed in its copy, then resumed.
struct Killed<'a> {
    prefix: &'a str,
    kind: KeyKind,
    /// SQL on the original before the run.
    extra: &'a str,
    by: &'a str,
    partitions: &'a str,
    ranges: &'a [(&'a str, &'a str)],
    alter: &'a str,
    flags: &'a [&'a str],
    /// How the resume refusals name the partitions: `<by> into <names>`.
    named: &'a str,
    /// The same partitions with other bounds, and how the refusal to resume with them starts.
    moved: &'a str,
    moved_refusal: &'a str,
}

/// SIGKILL in the middle of a conversion's copy, then `--resume`: the original is intact
/// meanwhile; resuming without the conversion or with other partitions is refused; the
/// resumed run (its copy meeting rows already there) converts the table.
async fn killed_then_resumed(c: Killed<'_>) {
    let db = Cluster::primary().fresh_db(c.prefix);
    let table = OracleTable::create(&db, "orders", c.kind, 10_000).await;
    db.psql(&format!("ALTER TABLE public.orders RESET (fillfactor); {}", c.extra));
    let oid_before = db.psql("SELECT 'public.orders'::regclass::oid");
    let file = partitions_file(&db, "partitions", c.partitions);
    let client = db.client().await;
    let workload = Workload::start(&db, &table, WorkloadOptions::new(3).rate(Some(50))).await;
    workload.wait_for_more_commits(20, Duration::from_secs(30)).await;

    let base = ["--table", "orders", "--partition-by", c.by, "--partitions", &file, "--alter", c.alter, "--execute", "--status-interval", "1s"];
    let args = [&base[..], c.flags].concat();
    let slow = ["--chunk-size", "100", "--chunk-time", "1ms", "--nice-ratio", "1"];
    let mut run = Running::spawn(&db, "run", &[&args[..], &slow[..]].concat());
    wait_for_state(&client, &mut run, "orders", "copy", Duration::from_secs(30)).await;
    wait_for_copy_past(&client, &mut run, "orders", 3_000, Duration::from_secs(60)).await;
    let (status, log) = run.kill9().await;
    assert!(!status.success(), "pg-ghost was not killed: {status}\n{log}");
    assert_eq!(db.psql("SELECT 'public.orders'::regclass::oid"), oid_before, "the original was swapped out");
    assert_eq!(db.psql("SELECT relkind FROM pg_class WHERE oid = 'public.orders'::regclass"), "r");
    workload.wait_for_more_commits(30, Duration::from_secs(30)).await;
    crate::resume::wait_slot_released(&client).await;

    // Resuming without the conversion, or with other partitions, is refused, naming both.
    let out = binary::run(&db, &[&["--table", "orders", "--alter", c.alter, "--execute", "--resume"][..], c.flags].concat()).await;
    binary::assert_failure(&out, 3, &format!("the conversion differs from the earlier run's: it made --partition-by {}, this run asks for no conversion", c.named));
    let other = partitions_file(&db, "other", "CREATE TABLE orders_all PARTITION OF orders DEFAULT;");
    let out = binary::run(&db, &[&["--table", "orders", "--partition-by", c.by, "--partitions", &other, "--alter", c.alter, "--execute", "--resume"][..], c.flags].concat()).await;
    binary::assert_failure(&out, 3, "this run asks for --partition-by");
    assert!(binary::stderr(&out).contains("into \"public\".\"orders_all\""), "{}", binary::stderr(&out));
    let moved = partitions_file(&db, "moved", c.moved);
    let out = binary::run(&db, &[&["--table", "orders", "--partition-by", c.by, "--partitions", &moved, "--alter", c.alter, "--execute", "--resume"][..], c.flags].concat()).await;
    binary::assert_failure(&out, 3, &format!("the conversion differs from the earlier run's: {}", c.moved_refusal));
    assert_eq!(db.psql("SELECT relkind FROM pg_class WHERE oid = 'public._orders_gho'::regclass"), "p", "the refusals left the ghost");

    let out = binary::run(&db, &[&args[..], &["--resume"][..]].concat()).await;
    binary::assert_success(&out);
    let log = binary::stderr(&out);
    assert!(log.contains("resuming the earlier run"), "the run did not say it resumed:\n{log}");
    workload.wait_for_more_commits(30, Duration::from_secs(30)).await;
    let report = workload.stop().await;
    assert!(report.errors.is_empty(), "workload errors (seed {}): {:#?}", report.seed, report.errors);
    assert!(report.committed_after_swap > 0, "no writes after the swap: {report:?}");
    let projection = table.projection().map("n", "n::bigint");
    assert_converted(&db, &table, c.ranges, &projection, &log).await;
}

/// Partitioned by the key itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_during_a_conversion_copy_resumes() {
    killed_then_resumed(Killed {
        prefix: "conv_resume",
        kind: KeyKind::Identity,
        extra: "",
        by: "RANGE (id)",
        partitions: "
            CREATE TABLE orders_a PARTITION OF orders FOR VALUES FROM (MINVALUE) TO (5000);
            CREATE TABLE orders_b PARTITION OF orders FOR VALUES FROM (5000) TO (MAXVALUE);",
        ranges: &[("orders_a", "id < 5000"), ("orders_b", "id >= 5000")],
        alter: "ALTER COLUMN n TYPE bigint",
        flags: &[],
        named: "RANGE (\"id\") into \"public\".\"orders_a\", \"public\".\"orders_b\"",
        moved: "
            CREATE TABLE orders_a PARTITION OF orders FOR VALUES FROM (MINVALUE) TO (6000);
            CREATE TABLE orders_b PARTITION OF orders FOR VALUES FROM (6000) TO (MAXVALUE);",
        moved_refusal: "partition \"public\".\"orders_a\" was made FOR VALUES FROM (MINVALUE) TO ('5000'), this run asks for FOR VALUES FROM (MINVALUE) TO ('6000'); \
                        partition \"public\".\"orders_b\" was made FOR VALUES FROM ('5000') TO (MAXVALUE), this run asks for FOR VALUES FROM ('6000') TO (MAXVALUE); \
                        resume with the same partitions",
    })
    .await;
}

/// Partitioned by a column outside the key (rows found by `id`, `--key`), copied by two
/// workers: the resumed copy meets rows written above its watermark and skips them by the
/// key and the partition key, while the workload moves rows between partitions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_during_a_conversion_copy_by_another_key_resumes() {
    killed_then_resumed(Killed {
        prefix: "conv_resume_key",
        kind: KeyKind::Composite,
        extra: "ALTER TABLE public.orders ADD CONSTRAINT orders_id_key UNIQUE (id); ALTER TABLE public.orders REPLICA IDENTITY FULL;",
        by: BY_TENANT,
        partitions: COVERING,
        ranges: COVERING_RANGES,
        alter: "ALTER COLUMN n TYPE bigint, DROP CONSTRAINT orders_id_key",
        flags: &["--key", "orders_id_key", "--copy-workers", "2"],
        named: "RANGE (\"tenant\") into \"public\".\"orders_low\", \"public\".\"orders_high\"",
        moved: "
            CREATE TABLE orders_low PARTITION OF orders FOR VALUES FROM (1) TO (4);
            CREATE TABLE orders_high PARTITION OF orders FOR VALUES FROM (4) TO (9);",
        moved_refusal: "partition \"public\".\"orders_low\" was made FOR VALUES FROM (1) TO (5), this run asks for FOR VALUES FROM (1) TO (4)",
    })
    .await;
}

/// The cut-over of a conversion postponed, then the panic flag: the run stops at once, the
/// original stays a plain table with its rows; `pg-ghost cleanup` removes the ghost with its
/// partitions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postponed_conversion_panics_and_leaves_the_original() {
    let db = Cluster::primary().fresh_db("conv_panic");
    let table = plain_table(&db, 2_000).await;
    let oid_before = db.psql("SELECT 'public.orders'::regclass::oid");
    let file = partitions_file(&db, "partitions", WITH_DEFAULT);
    let (postpone, panic) = (flag_path(&db, "postpone"), flag_path(&db, "panic"));
    std::fs::write(&postpone, b"").unwrap();
    let workload = Workload::start(&db, &table, WorkloadOptions::new(2).rate(Some(60))).await;
    let args = [
        "--table", "orders", "--partition-by", BY_TENANT, "--partitions", &file, "--alter", "ADD COLUMN note text", "--execute",
        "--postpone-cut-over-flag-file", postpone.to_str().unwrap(), "--panic-flag-file", panic.to_str().unwrap(),
    ];
    let mut run = Running::spawn(&db, "run", &args);
    let client = db.client().await;
    wait_for_state(&client, &mut run, "orders", "postponed", Duration::from_secs(60)).await;
    assert_eq!(
        db.psql("SELECT string_agg(c.relname || ' ' || c.relkind::text, ', ' ORDER BY c.relname) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'public._orders_gho'::regclass"),
        "_orders_rest_gho r, _orders_t1_gho r, _orders_t3_gho r",
        "while postponed, the ghost is partitioned under temporary names"
    );
    std::fs::write(&panic, b"").unwrap();
    let out = run.wait(Duration::from_secs(30)).await;
    binary::assert_failure(&out, 4, "panic");
    let _ = std::fs::remove_file(&postpone);
    let _ = std::fs::remove_file(&panic);

    workload.wait_for_more_commits(20, Duration::from_secs(30)).await;
    let report = workload.stop().await;
    assert!(report.errors.is_empty(), "workload errors (seed {}): {:#?}", report.seed, report.errors);
    assert_eq!(db.psql("SELECT 'public.orders'::regclass::oid"), oid_before, "the original keeps its name");
    assert_eq!(db.psql("SELECT relkind FROM pg_class WHERE oid = 'public.orders'::regclass"), "r");
    table.assert_matches_control(&client, &table.projection()).await;
    assert_no_slots_or_publications(&client).await;
    // A failed run keeps its ghost for inspection; `pg-ghost cleanup` removes it with its
    // partitions.
    let tables = "SELECT string_agg(relname, ', ' ORDER BY relname) FROM pg_class WHERE relnamespace = 'public'::regnamespace AND relkind IN ('r', 'p')";
    assert_eq!(db.psql(tables), "_orders_gho, _orders_rest_gho, _orders_t1_gho, _orders_t3_gho, orders, orders_control");
    binary::assert_success(&binary::cleanup(&db, &["--table", "orders"]).await);
    assert_eq!(db.psql(tables), "orders, orders_control", "the ghost and its partitions are gone");
}

/// The common case: `events` keyed by `id` alone, converted to monthly partitions on
/// `created_at` (`--partitions-auto`, no DEFAULT) with the primary key replaced by one that
/// includes it, under writes that insert, delete and move rows between months (each written
/// to a control table in the same statement). Rows are found by `id` throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn primary_key_replaced_and_rows_moving_between_months() {
    const ALTER: &str = "DROP CONSTRAINT events_pkey, ADD PRIMARY KEY (id, created_at)";
    const AUTO: &str = "monthly from 2024-01 to 2025-01";
    const TABLES: &str = "
        CREATE TABLE public.events_control (id bigint PRIMARY KEY, created_at timestamptz NOT NULL, payload text);
        COMMENT ON TABLE public.events IS 'events by month';";
    let db = Cluster::primary().fresh_db("conv_pkey");
    db.psql(&format!(
        "SET TimeZone = 'UTC';
         CREATE TABLE public.events (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, created_at timestamptz NOT NULL, payload text);
         CREATE INDEX ON public.events (created_at);
         {TABLES}
         INSERT INTO public.events (created_at, payload)
           SELECT timestamptz '2024-01-01 00:00:00+00' + (g * 7919 % 360) * interval '1 day' + g * interval '1 second', 'e' || g
           FROM generate_series(1, 4000) g;
         INSERT INTO public.events_control SELECT * FROM public.events;"
    ));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = tokio::spawn(move_events(db.client().await, stop.clone()));
    tokio::time::sleep(Duration::from_millis(300)).await;

    let args = ["--table", "events", "--partition-by", "RANGE (created_at)", "--partitions-auto", AUTO, "--alter", ALTER, "--execute", "--chunk-size", "300"];
    let out = binary::run(&db, &args).await;
    binary::assert_success(&out);
    let log = binary::stderr(&out);
    assert!(log.contains("converting into a partitioned table"), "{log}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (writes, after_swap) = writer.await.unwrap();
    assert!(writes > 50 && after_swap > 0, "too few writes ({writes}, {after_swap} after the swap)");

    let client = db.client().await;
    let cols = "id, created_at, payload";
    let diff = compare::compare_rows(&client, &format!("SELECT {cols} FROM public.events"), &format!("SELECT {cols} FROM public.events_control")).await;
    assert!(diff.is_empty(), "events does not hold the control's rows:\n{diff}\n{log}");
    assert_eq!(db.psql("SELECT count(*) FROM pg_inherits WHERE inhparent = 'public.events'::regclass"), "12");
    client.batch_execute("DROP TABLE public._events_del").await.unwrap_or_else(|e| panic!("the old table must drop without CASCADE: {}", compare::db_message(&e)));
    assert_no_slots_or_publications(&client).await;

    let twin = db.cluster.fresh_db("convert_twin");
    let months: Vec<String> = (1..=12)
        .map(|m| {
            let next = if m == 12 { "2025-01-01".to_string() } else { format!("2024-{:02}-01", m + 1) };
            format!("CREATE TABLE public.events_p2024_{m:02} PARTITION OF public.events FOR VALUES FROM ('2024-{m:02}-01') TO ('{next}');")
        })
        .collect();
    twin.psql(&format!(
        "SET TimeZone = 'UTC';
         CREATE TABLE public.events (id bigint GENERATED ALWAYS AS IDENTITY, created_at timestamptz NOT NULL, payload text, PRIMARY KEY (id, created_at))
           PARTITION BY RANGE (created_at);
         {}
         CREATE INDEX ON public.events (created_at);
         {TABLES}",
        months.join("\n")
    ));
    assert_whole_schema_equal(&db, &twin, ALTER).await;
}

/// Inserts, deletes and moves events between months (by key, one statement for the table and
/// its control) until `stop`; returns how many writes it made, and how many after the swap.
async fn move_events(client: tokio_postgres::Client, stop: std::sync::Arc<std::sync::atomic::AtomicBool>) -> (u64, u64) {
    use rand::{Rng, SeedableRng};
    let seed: u64 = rand::random();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let (mut writes, mut after_swap) = (0u64, 0u64);
    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
        let id: i64 = rng.gen_range(1..4_200);
        let day: i64 = rng.gen_range(0..365);
        let sql = match rng.gen_range(0..10) {
            0..=2 => format!(
                "WITH i AS (INSERT INTO public.events (created_at, payload) VALUES (timestamptz '2024-01-01 00:00:00+00' + {day} * interval '1 day', 'new') RETURNING *)
                 INSERT INTO public.events_control SELECT id, created_at, payload FROM i"
            ),
            3 => format!("WITH d AS (DELETE FROM public.events WHERE id = {id} RETURNING id) DELETE FROM public.events_control c USING d WHERE c.id = d.id"),
            _ => format!(
                "WITH u AS (UPDATE public.events SET created_at = timestamptz '2024-01-01 00:00:00+00' + {day} * interval '1 day', payload = payload || '.'
                             WHERE id = {id} RETURNING id, created_at, payload)
                 UPDATE public.events_control c SET created_at = u.created_at, payload = u.payload FROM u WHERE c.id = u.id"
            ),
        };
        if let Err(e) = client.batch_execute(&sql).await {
            panic!("a write failed (seed {seed}): {}\n{sql}", compare::db_message(&e));
        }
        writes += 1;
        let swapped: bool = client.query_one("SELECT relkind = 'p' FROM pg_class WHERE oid = 'public.events'::regclass", &[]).await.unwrap().get(0);
        after_swap += u64::from(swapped);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    (writes, after_swap)
}

/// A conversion given without `--alter` is recorded in the history as what it does (the
/// partition key and the number of partitions), with a fingerprint of its own, and its hooks
/// are told the partition key and the count (`PG_GHOST_PARTITION_BY`,
/// `PG_GHOST_PARTITION_COUNT`) from startup on.
#[tokio::test]
async fn a_conversion_is_recorded_and_told_to_hooks() {
    let db = Cluster::primary().fresh_db("conv_history_hooks");
    plain_table(&db, 200).await;
    let file = partitions_file(&db, "partitions", WITH_DEFAULT);
    let hooks = flag_path(&db, "hooks");
    std::fs::create_dir_all(&hooks).unwrap();
    let log = hooks.join("log");
    for name in ["pg-ghost-on-startup", "pg-ghost-on-validated", "pg-ghost-on-success"] {
        crate::hooks::recorder(&hooks, name, &log);
    }
    let out = binary::run(&db, &["--table", "orders", "--partition-by", BY_TENANT, "--partitions", &file, "--hooks-path", hooks.to_str().unwrap()]).await;
    binary::assert_success(&out);

    let client = db.client().await;
    let row = client.query_one("SELECT alter_clauses, fingerprint, outcome FROM pgghost.runs", &[]).await.unwrap();
    assert_eq!(row.get::<_, &str>(0), "PARTITION BY RANGE (\"tenant\") (3 partitions)");
    assert!(row.get::<_, Option<&str>>(1).is_some_and(|f| f.len() == 16), "{:?}", row.get::<_, Option<&str>>(1));
    assert_eq!(row.get::<_, &str>(2), "dry-run");

    let ran = crate::hooks::blocks(&log);
    let names: Vec<&str> = ran.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["pg-ghost-on-startup", "pg-ghost-on-validated", "pg-ghost-on-success"]);
    for (name, vars) in &ran {
        for wanted in ["PG_GHOST_PARTITION_BY=RANGE (\"tenant\")", "PG_GHOST_PARTITION_COUNT=3", "PG_GHOST_DDL="] {
            assert!(vars.iter().any(|v| v == wanted), "{name} was not told {wanted:?}: {vars:?}");
        }
    }
    let _ = std::fs::remove_dir_all(&hooks);
}
