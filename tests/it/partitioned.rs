//! Partitioned tables changed online, under the control-table workload: a range-partitioned
//! table with a default partition and a sub-partitioned (hash) level, partitions with their
//! own storage parameters, index, comment and grant, changed by each kind of ALTER that
//! reaches the partitions (add column, type change, add a unique index, add constraints); a
//! hash-partitioned table; a partition attached by another session during the run. Each run
//! must leave the table equal to its control row for row (the workload moves rows between
//! partitions by updating the partition key), the old table dropping without CASCADE, and the
//! whole database's schema dump equal to a twin's on which a plain ALTER TABLE ran.

use crate::binary;
use crate::harness::{Cluster, TestDb};
use crate::oracle::*;
use crate::run_faults::{flag_path, wait_for_copy_past, wait_for_state, Running};
use std::time::Duration;

/// By tenant (the workload writes tenants 1 to 8 and moves rows between them): tenants 1-2 in
/// a partition of their own, 3-4 in one partitioned again by hash of the id, the others in the
/// default partition.
pub(crate) const BY_TENANT: &str = "RANGE (tenant)";
pub(crate) const TENANT_TREE: &str = "
    CREATE TABLE public.orders_t1 PARTITION OF {t} FOR VALUES FROM (1) TO (3) WITH (fillfactor = 90);
    CREATE TABLE public.orders_t3 PARTITION OF {t} FOR VALUES FROM (3) TO (5) PARTITION BY HASH (id);
    CREATE TABLE public.orders_t3_h0 PARTITION OF public.orders_t3 FOR VALUES WITH (MODULUS 2, REMAINDER 0) WITH (fillfactor = 80);
    CREATE TABLE public.orders_t3_h1 PARTITION OF public.orders_t3 FOR VALUES WITH (MODULUS 2, REMAINDER 1);
    CREATE TABLE public.orders_rest PARTITION OF {t} DEFAULT;";
/// What partitions have of their own (a leaf with REPLICA IDENTITY FULL: its old rows come
/// whole, converted to the partitioned table's columns; CHECK constraints, one `NOT VALID`, and
/// a foreign key of a leaf).
pub(crate) const PARTITIONS_OWN: &str = "
    CREATE INDEX orders_t1_at_n ON public.orders_t1 (at, n);
    CREATE UNIQUE INDEX orders_rest_id_n ON public.orders_rest (id, tenant, n);
    COMMENT ON TABLE public.orders_t3_h1 IS 'odd hashes';
    ALTER TABLE public.orders_rest SET (autovacuum_vacuum_scale_factor = 0.05);
    REVOKE ALL ON public.orders_t1 FROM PUBLIC;
    GRANT SELECT ON public.orders_rest TO PUBLIC;
    ALTER TABLE public.orders_t3_h0 REPLICA IDENTITY FULL;
    ALTER TABLE public.orders_t1 ADD CONSTRAINT orders_t1_tenant CHECK (tenant >= 1 AND tenant < 3);
    ALTER TABLE public.orders_rest ADD CONSTRAINT orders_rest_tenant CHECK (tenant > 0) NOT VALID;
    CREATE TABLE public.tenant_ids (id int PRIMARY KEY);
    INSERT INTO public.tenant_ids SELECT generate_series(0, 100);
    ALTER TABLE public.orders_t3_h0 ADD CONSTRAINT orders_t3_h0_tenant_fk FOREIGN KEY (tenant) REFERENCES public.tenant_ids (id);
    ANALYZE;";

struct Case<'a> {
    prefix: &'a str,
    kind: KeyKind,
    by: &'a str,
    tree: &'a str,
    /// SQL after the table is created.
    extra: &'a str,
    alter: &'a str,
    project: fn(Projection) -> Projection,
    /// More flags for the run.
    flags: &'a [&'a str],
}

/// Runs the case; returns its database for further checks.
async fn run_case(c: Case<'_>) -> TestDb<'static> {
    let db = Cluster::primary().fresh_db(c.prefix);
    let table = OracleTable::create_partitioned(&db, "orders", c.kind, 3_000, c.by, c.tree).await;
    if !c.extra.is_empty() {
        db.psql(c.extra);
    }
    let before = WholeSchema::take(&db).await;
    let workload = Workload::start(&db, &table, WorkloadOptions::new(3).rate(Some(80))).await;
    workload.wait_for_more_commits(30, Duration::from_secs(30)).await;

    let mut args = vec!["--table", "orders", "--alter", c.alter, "--execute", "--chunk-size", "500"];
    args.extend(c.flags);
    let out = binary::run(&db, &args).await;
    binary::assert_success(&out);
    let log = binary::stderr(&out);
    assert!(log.contains("publication created (via the partition root)"), "{log}");
    assert!(log.contains("copying partition by partition"), "{log}");
    assert!(log.contains("checksum complete"), "{log}");
    binary::assert_checksum_repaired_nothing(&out);

    workload.wait_for_more_commits(30, Duration::from_secs(30)).await;
    let report = workload.stop().await;
    assert!(report.errors.is_empty(), "workload errors (seed {}): {:#?}", report.seed, report.errors);
    assert!(report.committed_after_swap > 0, "nothing written after the swap: {report:?}");
    assert_after_run(&db, &table, &before, c.alter, &(c.project)(table.projection()), &log).await;
    db
}

/// The table equals its control, the old table drops without CASCADE, the whole schema is a
/// plain ALTER's, and pg-ghost left no slot or publication.
async fn assert_after_run(db: &TestDb<'_>, table: &OracleTable, before: &WholeSchema, alter: &str, projection: &Projection, log: &str) {
    let client = db.client().await;
    table.assert_matches_control(&client, projection).await;
    client
        .batch_execute("DROP TABLE public._orders_del")
        .await
        .unwrap_or_else(|e| panic!("the old table must drop without CASCADE: {}\n{log}", compare::db_message(&e)));
    let twin = before.twin_after_plain_alter(db, "public.orders", alter).await;
    assert_whole_schema_equal(db, &twin, alter).await;
    assert_eq!(db.psql("SELECT count(*) FROM pg_replication_slots WHERE database = current_database()"), "0", "a slot was left behind");
    assert_eq!(db.psql("SELECT count(*) FROM pg_publication WHERE pubname LIKE 'pg\\_ghost%'"), "0", "pg-ghost's publication was left behind");
}

async fn tenant_case(prefix: &str, extra: &str, alter: &str, project: fn(Projection) -> Projection) -> TestDb<'static> {
    let extra = format!("{PARTITIONS_OWN} {extra}");
    run_case(Case { prefix, kind: KeyKind::Composite, by: BY_TENANT, tree: TENANT_TREE, extra: &extra, alter, project, flags: &[] }).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn range_partitioned_add_column() {
    tenant_case("part_add_column", "", "ADD COLUMN note text NOT NULL DEFAULT 'none'", |p| p.add("note", "'none'::text")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn range_partitioned_type_change() {
    tenant_case("part_type", "", "ALTER COLUMN spare TYPE bigint, ALTER COLUMN n TYPE bigint", |p| {
        p.map("spare", "spare::bigint").map("n", "n::bigint")
    })
    .await;
}

/// A unique constraint must contain the partition key, as PostgreSQL requires; its index
/// reaches every partition under the name PostgreSQL gives it there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn range_partitioned_add_unique_index() {
    tenant_case("part_index", "", "ADD UNIQUE (tenant, id, n)", |p| p).await;
}

/// A CHECK and a foreign key, both unnamed: each partition carries them under the name a plain
/// ALTER gives them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn range_partitioned_add_constraints() {
    tenant_case(
        "part_constraints",
        "CREATE TABLE public.tenants (id int PRIMARY KEY); INSERT INTO public.tenants SELECT generate_series(1, 8);",
        "ADD CHECK (spare <> -1), ADD FOREIGN KEY (tenant) REFERENCES public.tenants (id)",
        |p| p,
    )
    .await;
}

/// The ALTER drops the primary key: the ghost keeps a unique index on the key for the copy and
/// the apply (it contains the partition key, as PostgreSQL requires on a partitioned table),
/// reaching every partition, and the swap drops it with its partitions' copies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn range_partitioned_drop_primary_key() {
    tenant_case("part_drop_pkey", "", "DROP CONSTRAINT orders_pkey", |p| p).await;
}

/// A view, triggers, a policy, a publication, a foreign key that references the partitioned
/// table and one that references one of its partitions follow it in the swap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dependents_of_a_partitioned_table_follow_it() {
    tenant_case(
        "part_dependents",
        "CREATE VIEW public.orders_small AS SELECT tenant, id, n FROM public.orders WHERE n < 1000;
         CREATE FUNCTION public.nothing() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NULL; END $$;
         CREATE TRIGGER orders_after AFTER UPDATE ON public.orders FOR EACH ROW EXECUTE FUNCTION public.nothing();
         CREATE TRIGGER orders_stmt AFTER DELETE ON public.orders FOR EACH STATEMENT EXECUTE FUNCTION public.nothing();
         ALTER TABLE public.orders ENABLE ROW LEVEL SECURITY;
         CREATE POLICY everyone ON public.orders USING (true);
         CREATE PUBLICATION app_pub FOR TABLE public.orders WITH (publish_via_partition_root = true);
         CREATE TABLE public.order_notes (note_id int PRIMARY KEY, tenant int NOT NULL, order_id bigint NOT NULL,
             CONSTRAINT order_notes_order_fk FOREIGN KEY (tenant, order_id) REFERENCES public.orders (tenant, id)
                 ON DELETE CASCADE ON UPDATE CASCADE);
         INSERT INTO public.order_notes SELECT row_number() OVER (), tenant, id FROM public.orders WHERE id % 7 = 0;
         CREATE TABLE public.t1_flags (tenant int NOT NULL, order_id bigint NOT NULL,
             CONSTRAINT t1_flags_order_fk FOREIGN KEY (tenant, order_id) REFERENCES public.orders_t1 (tenant, id) ON DELETE CASCADE ON UPDATE CASCADE);
         INSERT INTO public.t1_flags SELECT tenant, id FROM public.orders_t1 WHERE id % 5 = 0;",
        "ADD COLUMN flag boolean NOT NULL DEFAULT true",
        |p| p.add("flag", "true"),
    )
    .await;
}

/// What single partitions have of their own besides `PARTITIONS_OWN`: an index equal to one of
/// the partitioned table's (its own, not the table's copy); comments on a column, an index and
/// a foreign key; a unique constraint (on
/// a column the ALTER retypes) and an exclusion constraint, with comments; triggers in each
/// state (one logs who fired it, one that would fail every write is disabled); row level
/// security enabled and forced, with a policy; a statistics object; column defaults, storage,
/// compression, statistics targets and options; views reading a leaf and a sub-partitioned
/// partition, another table's rule reading a leaf; rules of a partition's own (one disabled);
/// publications listing partitions (one with a column list and a row filter).
pub(crate) const PARTITIONS_OWN_DEPENDENTS: &str = "
    CREATE INDEX orders_t1_n_own ON public.orders_t1 (n);
    COMMENT ON INDEX public.orders_label_idx IS 'by label';
    COMMENT ON CONSTRAINT orders_pkey ON public.orders IS 'the key';
    COMMENT ON COLUMN public.orders_t1.n IS 'quantity in t1';
    COMMENT ON INDEX public.orders_t1_at_n IS 'by time';
    COMMENT ON CONSTRAINT orders_t3_h0_tenant_fk ON public.orders_t3_h0 IS 'known tenants';
    ALTER TABLE public.orders_t1 ADD CONSTRAINT orders_t1_key_spare UNIQUE (id, tenant, spare);
    COMMENT ON CONSTRAINT orders_t1_key_spare ON public.orders_t1 IS 'spare per key';
    ALTER TABLE public.orders_rest ADD CONSTRAINT orders_rest_excl EXCLUDE USING btree (id WITH =, tenant WITH =);
    CREATE TABLE public.trigger_log (app text, relid oid, op text);
    CREATE FUNCTION public.log_firing() RETURNS trigger LANGUAGE plpgsql AS $$
      BEGIN INSERT INTO public.trigger_log VALUES (current_setting('application_name'), TG_RELID, TG_OP); RETURN NULL; END $$;
    CREATE FUNCTION public.refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'disabled trigger fired'; END $$;
    CREATE TRIGGER orders_t1_log AFTER INSERT OR UPDATE OR DELETE ON public.orders_t1 FOR EACH ROW EXECUTE FUNCTION public.log_firing();
    CREATE TRIGGER orders_t3_h0_log AFTER UPDATE OF n ON public.orders_t3_h0 FOR EACH ROW WHEN (OLD.n IS DISTINCT FROM NEW.n) EXECUTE FUNCTION public.log_firing();
    ALTER TABLE public.orders_t3_h0 ENABLE REPLICA TRIGGER orders_t3_h0_log;
    CREATE TRIGGER orders_rest_refuse BEFORE INSERT ON public.orders_rest FOR EACH ROW EXECUTE FUNCTION public.refuse();
    ALTER TABLE public.orders_rest DISABLE TRIGGER orders_rest_refuse;
    COMMENT ON TRIGGER orders_t1_log ON public.orders_t1 IS 'who writes';
    ALTER TABLE public.orders_t3_h1 ENABLE ROW LEVEL SECURITY;
    ALTER TABLE public.orders_t3_h1 FORCE ROW LEVEL SECURITY;
    CREATE POLICY h1_visible ON public.orders_t3_h1 AS PERMISSIVE FOR SELECT TO PUBLIC USING (n IS DISTINCT FROM -1);
    ALTER TABLE public.orders_t1 ENABLE ROW LEVEL SECURITY;
    CREATE STATISTICS public.orders_t1_n_at (ndistinct, dependencies) ON n, at FROM public.orders_t1;
    ALTER STATISTICS public.orders_t1_n_at SET STATISTICS 500;
    COMMENT ON STATISTICS public.orders_t1_n_at IS 'n with at';
    ALTER TABLE public.orders_t1 ALTER COLUMN spare SET DEFAULT 7, ALTER COLUMN label SET DEFAULT 'from t1';
    ALTER TABLE public.orders_t3_h0 ALTER COLUMN label SET STORAGE MAIN, ALTER COLUMN n SET STATISTICS 250,
        ALTER COLUMN n SET (n_distinct = 100), ALTER COLUMN doc SET COMPRESSION pglz;
    CREATE VIEW public.t1_small AS SELECT tenant, id, n FROM public.orders_t1 WHERE n < 1000;
    CREATE VIEW public.t3_count AS SELECT count(*) AS rows FROM public.orders_t3;
    CREATE RULE orders_t1_keep AS ON DELETE TO public.orders_t1 WHERE OLD.n = -12345 DO INSTEAD NOTHING;
    CREATE RULE orders_rest_note AS ON UPDATE TO public.orders_rest DO ALSO NOTIFY orders_rest_changed;
    ALTER TABLE public.orders_rest DISABLE RULE orders_rest_note;
    COMMENT ON RULE orders_t1_keep ON public.orders_t1 IS 'never deleted';
    CREATE TABLE public.t1_requests (n int);
    CREATE RULE t1_requests_count AS ON INSERT TO public.t1_requests DO ALSO SELECT count(*) FROM public.orders_t1 WHERE orders_t1.n = NEW.n;
    CREATE PUBLICATION t1_pub FOR TABLE public.orders_t1;
    CREATE PUBLICATION rest_inserts FOR TABLE public.orders_rest (tenant, id, n) WHERE (n > 0) WITH (publish = 'insert');";

/// A partition's own objects are carried over to the new partition of its name, as a plain
/// ALTER on the partitioned table leaves them: the whole schema's dump equals the twin's. No
/// trigger of a partition ever fires on pg-ghost's own writes (none exists on the ghost before
/// the swap), and the triggers that moved fire on the workload's writes after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_carry_their_own_objects() {
    let db = tenant_case(
        "part_own_objects",
        PARTITIONS_OWN_DEPENDENTS,
        "ALTER COLUMN spare TYPE bigint, ADD COLUMN note text NOT NULL DEFAULT 'none'",
        |p| p.map("spare", "spare::bigint").add("note", "'none'::text"),
    )
    .await;
    assert_eq!(db.psql("SELECT count(*) FROM public.trigger_log WHERE app LIKE 'pg-ghost%'"), "0", "a partition's trigger fired on pg-ghost's writes");
    let on_new = db.psql("SELECT count(*) FROM public.trigger_log WHERE relid = 'public.orders_t1'::regclass");
    assert_ne!(on_new, "0", "the trigger that moved to the new partition never fired on the workload's writes");
}

/// The partitioned table has a unique key and no primary key; each leaf has a primary key of
/// its own on it (its replica identity): created on the ghost's leaves, set aside for the copy
/// and built after it, each under its name after the swap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_with_primary_keys_of_their_own() {
    run_case(Case {
        prefix: "part_own_pkey",
        kind: KeyKind::Composite,
        by: BY_TENANT,
        tree: TENANT_TREE,
        extra: "ALTER TABLE public.orders DROP CONSTRAINT orders_pkey;
                ALTER TABLE public.orders ADD CONSTRAINT orders_key UNIQUE (tenant, id);
                ALTER TABLE public.orders REPLICA IDENTITY USING INDEX orders_key;
                ALTER TABLE public.orders_t1 ADD PRIMARY KEY (tenant, id);
                ALTER TABLE public.orders_t3_h0 ADD CONSTRAINT orders_t3_h0_own_pkey PRIMARY KEY (id, tenant);
                COMMENT ON CONSTRAINT orders_t3_h0_own_pkey ON public.orders_t3_h0 IS 'by id first';
                ALTER TABLE public.orders_t3_h1 ADD PRIMARY KEY (tenant, id);
                ALTER TABLE public.orders_rest ADD PRIMARY KEY (tenant, id);",
        alter: "ALTER COLUMN n TYPE bigint",
        project: |p| p.map("n", "n::bigint"),
        flags: &["--key", "orders_key"],
    })
    .await;
}

/// What is not carried from a partition to the new one (a materialized view reading it) is
/// refused before anything is created, named; so is an ALTER that a plain ALTER TABLE would
/// refuse because of a partition's own dependent (a view reading a column it drops). The
/// database is left as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_partition_has_that_is_not_carried_is_refused_by_name() {
    let db = Cluster::primary().fresh_db("part_own_refused");
    let table = OracleTable::create_partitioned(&db, "orders", KeyKind::Composite, 500, BY_TENANT, TENANT_TREE).await;
    db.psql(
        "CREATE RULE orders_t1_keep AS ON DELETE TO public.orders_t1 WHERE OLD.n = -1 DO INSTEAD NOTHING;
         CREATE MATERIALIZED VIEW public.rest_snapshot AS SELECT tenant, id FROM public.orders_rest;
         CREATE VIEW public.t3_h1_spare AS SELECT tenant, id, spare FROM public.orders_t3_h1;",
    );
    let before = WholeSchema::take(&db).await;
    let out = binary::run(&db, &["--table", "orders", "--alter", "ADD COLUMN note text", "--execute"]).await;
    binary::assert_failure(&out, 3, "partition public.orders_rest is read by materialized view rest_snapshot");
    let log = binary::stderr(&out);
    assert!(!log.contains("t3_h1_spare") && !log.contains("orders_t1_keep"), "a view reading a partition and a partition's rule move with it:\n{log}");
    assert_unchanged(&db, &table, &before, "after refusing a materialized view that reads a partition").await;

    db.psql("DROP MATERIALIZED VIEW public.rest_snapshot;");
    let before = WholeSchema::take(&db).await;
    let out = binary::run(&db, &["--table", "orders", "--alter", "DROP COLUMN spare", "--execute"]).await;
    binary::assert_failure(&out, 3, "cannot drop column \"spare\" of table \"public\".\"orders_t3_h1\" because other objects depend on it");
    assert!(binary::stderr(&out).contains("t3_h1_spare"), "{}", binary::stderr(&out));
    assert_unchanged(&db, &table, &before, "after refusing to drop a column a partition's view reads").await;
}

/// Nothing pg-ghost could have left: no slot or publication, the rows as the control has them,
/// the whole schema as before.
async fn assert_unchanged(db: &TestDb<'_>, table: &OracleTable, before: &WholeSchema, what: &str) {
    let client = db.client().await;
    assert_no_slots_or_publications(&client).await;
    table.assert_matches_control(&client, &table.projection()).await;
    let twin = before.twin_after_plain_sql(db, "SELECT 1").await;
    assert_whole_schema_equal(db, &twin, what).await;
}

/// By hash of the id (the workload's key updates move rows between partitions); one
/// partition lives in another schema.
pub(crate) const HASH_TREE: &str = "
    CREATE TABLE public.orders_h0 PARTITION OF {t} FOR VALUES WITH (MODULUS 3, REMAINDER 0);
    CREATE TABLE public.orders_h1 PARTITION OF {t} FOR VALUES WITH (MODULUS 3, REMAINDER 1) WITH (fillfactor = 70);
    CREATE SCHEMA archive;
    CREATE TABLE archive.orders_h2 PARTITION OF {t} FOR VALUES WITH (MODULUS 3, REMAINDER 2);";

/// The workload's key updates (`id = DEFAULT`) move rows between the hash partitions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hash_partitioned_table() {
    run_case(Case {
        prefix: "part_hash",
        kind: KeyKind::Identity,
        by: "HASH (id)",
        tree: HASH_TREE,
        extra: "",
        alter: "ALTER COLUMN n TYPE bigint, ADD COLUMN flag boolean NOT NULL DEFAULT true",
        project: |p| p.map("n", "n::bigint").add("flag", "true"),
        flags: &["--copy-workers", "2"],
    })
    .await;
}

/// pg_partman's maintenance attaches partitions while pg-ghost runs. One attached with a row in
/// it holds rows the ghost never saw: the cut-over is abandoned under its lock and the original
/// is left as it was, the new partition and its row included. A second run carries the
/// partition over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_attached_during_the_run_abandons_the_cut_over() {
    const ALTER: &str = "ALTER COLUMN spare TYPE bigint";
    let db = Cluster::primary().fresh_db("part_attach");
    let table = OracleTable::create_partitioned(&db, "orders", KeyKind::Composite, 2_000, BY_TENANT, TENANT_TREE).await;
    let oid_before = db.psql("SELECT 'public.orders'::regclass::oid");
    let workload = Workload::start(&db, &table, WorkloadOptions::new(2).rate(Some(60))).await;
    workload.wait_for_more_commits(20, Duration::from_secs(30)).await;

    let flag = flag_path(&db, "postpone");
    std::fs::write(&flag, b"").unwrap();
    let args = ["--table", "orders", "--alter", ALTER, "--execute", "--postpone-cut-over-flag-file", flag.to_str().unwrap()];
    let mut run = Running::spawn_command(binary::command(&db, "run", &args));
    let watcher = db.client().await;
    wait_for_state(&watcher, &mut run, "orders", "postponed", Duration::from_secs(60)).await;

    // Another session attaches a partition that already holds a row (the control gets it too).
    let cols = "tenant, id, n, label, amount, doc, tags, at, big, spare";
    let row = "150, 900000, 7, 'attached', 1.50, '{\"a\": 1}', ARRAY['x'], '2024-06-01 00:00:00+00', 'big', 3";
    db.psql(&format!(
        "CREATE TABLE public.orders_t100 (LIKE public.orders INCLUDING CONSTRAINTS INCLUDING STORAGE);
         INSERT INTO public.orders_t100 ({cols}) VALUES ({row});
         INSERT INTO public.orders_control ({cols}) VALUES ({row});
         ALTER TABLE public.orders ATTACH PARTITION public.orders_t100 FOR VALUES FROM (100) TO (200);"
    ));
    std::fs::remove_file(&flag).unwrap();
    let out = run.wait(Duration::from_secs(120)).await;
    binary::assert_failure(&out, 1, "partitions of \"public\".\"orders\" changed during the run");
    let log = binary::stderr(&out);

    let client = db.client().await;
    assert_eq!(db.psql("SELECT 'public.orders'::regclass::oid"), oid_before, "the original keeps its name:\n{log}");
    assert_eq!(db.psql("SELECT count(*) FROM pg_class WHERE relname LIKE '%\\_del'"), "0", "nothing was swapped:\n{log}");
    assert_eq!(db.psql("SELECT tenant || ' ' || id FROM public.orders_t100"), "150 900000", "the attached partition keeps its row");
    assert_no_slots_or_publications(&client).await;
    table.assert_matches_control(&client, &table.projection()).await;

    // The failed run's leftovers (its ghost) go; then a run again, the workload still
    // writing, carries the new partition over.
    binary::assert_success(&binary::cleanup(&db, &["--table", "orders"]).await);
    let before = WholeSchema::take(&db).await;
    let out = binary::run(&db, &["--table", "orders", "--alter", ALTER, "--execute"]).await;
    binary::assert_success(&out);
    let log = binary::stderr(&out);
    workload.wait_for_more_commits(20, Duration::from_secs(30)).await;
    let report = workload.stop().await;
    assert!(report.errors.is_empty(), "workload errors (seed {}): {:#?}", report.seed, report.errors);
    assert_eq!(db.psql("SELECT tenant || ' ' || id || ' ' || spare FROM public.orders_t100"), "150 900000 3");
    assert_after_run(&db, &table, &before, ALTER, &table.projection().map("spare", "spare::bigint"), &log).await;
}

/// A partition of a partitioned table is still refused, and so is the direct way.
#[tokio::test]
async fn a_partition_and_the_direct_way_are_refused() {
    let db = Cluster::primary().fresh_db("part_refusals");
    db.psql(&format!(
        "CREATE TABLE public.orders (tenant int NOT NULL, id bigint NOT NULL, n int, PRIMARY KEY (tenant, id)) PARTITION BY {BY_TENANT};
         CREATE TABLE public.orders_t1 PARTITION OF public.orders FOR VALUES FROM (1) TO (3);"
    ));
    let out = binary::run(&db, &["--table", "orders_t1", "--alter", "ADD COLUMN x int", "--execute"]).await;
    binary::assert_failure(&out, 3, "is a partition of \"public\".\"orders\"");
    let out = binary::run(&db, &["--table", "orders", "--alter", "ADD COLUMN x int", "--execute", "--strategy", "direct"]).await;
    binary::assert_failure(&out, 3, "is a partitioned table, which pg-ghost changes through a ghost only");
    assert_eq!(db.psql("SELECT count(*) FROM pg_attribute WHERE attname = 'x'"), "0");
}

/// SIGKILL in the middle of a partitioned table's copy (or inside the cut-over, before its
/// commit), then `--resume`: the original is intact meanwhile, the resumed run builds what is
/// missing (a partition's own index and unique constraint among it) and swaps every partition.
async fn killed_then_resumed(prefix: &str, fault: Option<&str>) {
    const ALTER: &str = "ALTER COLUMN n TYPE bigint";
    let rows = if fault.is_some() { 2_000 } else { 10_000 };
    let db = Cluster::primary().fresh_db(prefix);
    let table = OracleTable::create_partitioned(&db, "orders", KeyKind::Identity, rows, "HASH (id)", HASH_TREE).await;
    db.psql("CREATE INDEX orders_h1_at ON public.orders_h1 (at); ALTER TABLE public.orders_h0 ADD CONSTRAINT orders_h0_own UNIQUE (id, n);");
    let before = WholeSchema::take(&db).await;
    let oid_before = db.psql("SELECT 'public.orders'::regclass::oid");
    let client = db.client().await;
    let workload = Workload::start(&db, &table, WorkloadOptions::new(3).rate(Some(50))).await;
    workload.wait_for_more_commits(20, Duration::from_secs(30)).await;

    let args = ["--table", "orders", "--alter", ALTER, "--execute", "--status-interval", "1s", "--copy-workers", "2"];
    match fault {
        None => {
            let slow = ["--chunk-size", "100", "--chunk-time", "1ms", "--nice-ratio", "1"];
            let mut run = Running::spawn(&db, "run", &[&args[..], &slow[..]].concat());
            wait_for_state(&client, &mut run, "orders", "copy", Duration::from_secs(30)).await;
            wait_for_copy_past(&client, &mut run, "orders", 3_000, Duration::from_secs(60)).await;
            let (status, log) = run.kill9().await;
            assert!(!status.success(), "pg-ghost was not killed: {status}\n{log}");
        }
        Some(point) => {
            let mut cmd = binary::command(&db, "run", &args);
            cmd.env("PG_GHOST_FAULT", point);
            let out = Running::spawn_command(cmd).wait(Duration::from_secs(90)).await;
            let log = binary::stderr(&out);
            assert!(!out.status.success() && log.contains("fault injection"), "pg-ghost did not die at {point}:\n{log}");
        }
    }
    assert_eq!(db.psql("SELECT 'public.orders'::regclass::oid"), oid_before, "the original was swapped out");
    assert_eq!(db.psql("SELECT count(*) FROM pg_class WHERE relname LIKE '%\\_del'"), "0", "something was swapped");
    if fault.is_none() {
        // Killed mid-copy: the ghost's leaves have no index yet, not even on the key.
        let indexes = db.psql("SELECT count(*) FROM pg_partition_tree('public._orders_gho') t JOIN pg_index i ON i.indrelid = t.relid");
        assert_eq!(indexes, "0", "the ghost had indexes during the copy");
    }
    workload.wait_for_more_commits(30, Duration::from_secs(30)).await;
    crate::resume::wait_slot_released(&db.client().await).await;

    let out = binary::run(&db, &[&args[..], &["--resume"][..]].concat()).await;
    binary::assert_success(&out);
    let log = binary::stderr(&out);
    assert!(log.contains("resuming the earlier run"), "the run did not say it resumed:\n{log}");
    if fault.is_none() {
        assert!(log.contains("the copy of partitions continues after the earlier run's watermarks"), "{log}");
        assert!(log.contains("the ghost has no key index yet: its rows past the watermark were removed"), "{log}");
    }
    workload.wait_for_more_commits(30, Duration::from_secs(30)).await;
    let report = workload.stop().await;
    assert!(report.errors.is_empty(), "workload errors (seed {}): {:#?}", report.seed, report.errors);
    assert!(report.committed_after_swap > 0, "no writes after the swap: {report:?}");
    assert_after_run(&db, &table, &before, ALTER, &table.projection().map("n", "n::bigint"), &log).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_during_a_partitioned_copy_resumes() {
    killed_then_resumed("part_resume_copy", None).await;
}

#[cfg(feature = "fault-injection")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_inside_a_partitioned_cut_over_resumes() {
    killed_then_resumed("part_resume_cut", Some("cut-over-before-commit")).await;
}

/// A partition detached by another session during the run: the ghost still has it, so the
/// cut-over is abandoned and the original stays as the other session left it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_detached_during_the_run_abandons_the_cut_over() {
    let db = Cluster::primary().fresh_db("part_detach");
    let tree = format!("{TENANT_TREE} CREATE TABLE public.orders_t100 PARTITION OF {{t}} FOR VALUES FROM (100) TO (200);");
    let table = OracleTable::create_partitioned(&db, "orders", KeyKind::Composite, 2_000, BY_TENANT, &tree).await;
    let oid_before = db.psql("SELECT 'public.orders'::regclass::oid");
    let workload = Workload::start(&db, &table, WorkloadOptions::new(2).rate(Some(60))).await;
    workload.wait_for_more_commits(20, Duration::from_secs(30)).await;

    let flag = flag_path(&db, "postpone");
    std::fs::write(&flag, b"").unwrap();
    let args = ["--table", "orders", "--alter", "ADD COLUMN note text", "--execute", "--postpone-cut-over-flag-file", flag.to_str().unwrap()];
    let mut run = Running::spawn_command(binary::command(&db, "run", &args));
    let watcher = db.client().await;
    wait_for_state(&watcher, &mut run, "orders", "postponed", Duration::from_secs(60)).await;
    db.psql("ALTER TABLE public.orders DETACH PARTITION public.orders_t100");
    std::fs::remove_file(&flag).unwrap();
    let out = run.wait(Duration::from_secs(120)).await;
    binary::assert_failure(&out, 1, "partitions of \"public\".\"orders\" changed during the run");
    let log = binary::stderr(&out);
    assert!(log.contains("orders_t100"), "the error names the detached partition:\n{log}");

    assert_eq!(db.psql("SELECT 'public.orders'::regclass::oid"), oid_before, "the original keeps its name:\n{log}");
    assert_eq!(db.psql("SELECT count(*) FROM pg_attribute WHERE attname = 'note' AND attrelid = 'public.orders'::regclass"), "0");
    assert_eq!(db.psql("SELECT count(*) FROM pg_inherits WHERE inhrelid = 'public.orders_t100'::regclass"), "0", "still detached");
    workload.wait_for_more_commits(20, Duration::from_secs(30)).await;
    let report = workload.stop().await;
    assert!(report.errors.is_empty(), "workload errors (seed {}): {:#?}", report.seed, report.errors);
    let client = db.client().await;
    table.assert_matches_control(&client, &table.projection()).await;
    assert_eq!(db.psql("SELECT count(*) FROM pg_replication_slots WHERE database = current_database()"), "0");
}

/// Column settings of a partition that has partitions (a default, a storage, a comment),
/// with one of its own partitions going back to the root's: the ghost's tree is built level
/// by level, each partition from its parent's ghost as it stands with its own settings, so
/// every leaf ends as on the original (the schema dump is compared with a plain ALTER's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn column_settings_of_a_partition_with_partitions_reach_them_as_on_the_original() {
    tenant_case(
        "part_levels",
        "ALTER TABLE public.orders_t3 ALTER COLUMN spare SET DEFAULT 7;
         ALTER TABLE public.orders_t3_h1 ALTER COLUMN spare DROP DEFAULT;
         ALTER TABLE public.orders_t3 ALTER COLUMN label SET STORAGE MAIN;
         ALTER TABLE ONLY public.orders_t3_h0 ALTER COLUMN label SET STORAGE EXTENDED;
         COMMENT ON COLUMN public.orders_t3.n IS 'per tenant pair';",
        "ALTER COLUMN n TYPE bigint",
        |p| p.map("n", "n::bigint"),
    )
    .await;
}
