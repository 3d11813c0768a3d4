//! Inspect on a real server: every refusal with its message, the description of a table,
//! names that need quoting, and proof that inspect changes nothing.

use crate::harness::{Cluster, TestDb};
use pg_ghost::inspect::{self, PreflightOptions, ServerInfo};
use pg_ghost::names::Names;
use pg_ghost::schema::{Identity, ReplicaIdentity, TableInfo};
use pg_ghost::sql::QualifiedName;
use pg_ghost::{ErrorKind, Result};
use std::io::Write;
use tokio_postgres::{Client, NoTls};

/// The three steps as the engine runs them, on a session that cannot write: any write
/// inspect attempted would fail with "cannot execute ... in a read-only transaction".
async fn inspect_table(
    client: &Client,
    arg: &str,
    key: Option<&str>,
    initially_drop_ghost_table: bool,
) -> Result<(TableInfo, ServerInfo)> {
    client.batch_execute("SET default_transaction_read_only = on").await.expect("set read-only");
    let name = inspect::resolve_table(client, arg).await?;
    let info = inspect::table_info(client, &name, key).await?;
    let names = Names::for_table(&info.name, info.oid);
    let server = inspect::preflight(client, &info, &PreflightOptions::new(&names, initially_drop_ghost_table)).await?;
    Ok((info, server))
}

fn refusal<T: std::fmt::Debug>(result: Result<T>) -> String {
    match result {
        Ok(v) => panic!("expected a refusal, got {v:?}"),
        Err(e) => {
            assert_eq!(e.kind(), ErrorKind::Refused, "{e}");
            e.to_string()
        }
    }
}

fn assert_mentions(message: &str, parts: &[&str]) {
    for part in parts {
        assert!(message.contains(part), "{part:?} is missing from: {message}");
    }
}

/// The catalog state inspect must leave alone: relations with their kind, persistence,
/// identity and owner, publications and their tables, this database's slots, triggers,
/// rules, policies.
fn snapshot(db: &TestDb) -> String {
    db.psql(
        "SELECT concat_ws(' | ',
           (SELECT string_agg(concat_ws(':', oid, relname, relkind, relpersistence, relreplident, relowner), ',' ORDER BY oid) FROM pg_class),
           (SELECT string_agg(pubname, ',' ORDER BY pubname) FROM pg_publication),
           (SELECT count(*) FROM pg_publication_rel),
           (SELECT string_agg(slot_name, ',' ORDER BY slot_name) FROM pg_replication_slots WHERE database = current_database()),
           (SELECT count(*) FROM pg_trigger), (SELECT count(*) FROM pg_rewrite), (SELECT count(*) FROM pg_policy))",
    )
}

/// Sets up `sql` in a fresh database, runs inspect on `arg` and returns its refusal, having
/// checked that the catalogs are as they were.
async fn refused_after(prefix: &str, sql: &str, arg: &str, key: Option<&str>) -> String {
    let db = Cluster::primary().fresh_db(prefix);
    db.psql(sql);
    let before = snapshot(&db);
    let client = db.client().await;
    let message = refusal(inspect_table(&client, arg, key, false).await);
    assert_eq!(snapshot(&db), before, "inspect changed the catalogs");
    message
}

async fn oid_of(client: &Client, table: &str) -> u32 {
    client.query_one("SELECT to_regclass($1)::oid", &[&table]).await.unwrap().get(0)
}

// ---- resolving names ----

#[tokio::test]
async fn resolves_quoted_unicode_and_search_path_names() {
    let db = Cluster::primary().fresh_db("inspect_names");
    db.psql(
        r#"CREATE SCHEMA "My Schema";
           CREATE TABLE "My Schema"."Order ""Items""" (id int PRIMARY KEY, "Qty ""x""" int);
           CREATE TABLE "Ünïcødé Tàble" (id int PRIMARY KEY);
           CREATE TABLE "MixedCase" (id int PRIMARY KEY);
           CREATE TABLE mixedcase (id int PRIMARY KEY);
           CREATE SCHEMA app;
           CREATE TABLE app.widgets (id int PRIMARY KEY);
           CREATE TABLE public.widgets (id int PRIMARY KEY);"#,
    );
    let client = db.client().await;
    let resolve = |arg: &'static str| {
        let client = &client;
        async move { inspect::resolve_table(client, arg).await.unwrap_or_else(|e| panic!("{arg}: {e}")) }
    };
    assert_eq!(resolve(r#""My Schema"."Order ""Items""""#).await, QualifiedName::new("My Schema", "Order \"Items\""));
    assert_eq!(resolve(r#""Ünïcødé Tàble""#).await, QualifiedName::new("public", "Ünïcødé Tàble"));
    assert_eq!(resolve("MixedCase").await, QualifiedName::new("public", "mixedcase"));
    assert_eq!(resolve(r#""MixedCase""#).await, QualifiedName::new("public", "MixedCase"));
    assert_eq!(resolve("PUBLIC.WIDGETS").await, QualifiedName::new("public", "widgets"));
    assert_eq!(resolve("widgets").await, QualifiedName::new("public", "widgets"));
    client.batch_execute("SET search_path = app, public").await.unwrap();
    assert_eq!(resolve("widgets").await, QualifiedName::new("app", "widgets"));

    // Every later query copes with the quoted names too.
    let (info, _) = inspect_table(&client, r#""My Schema"."Order ""Items""""#, None, false).await.unwrap();
    assert_eq!(info.columns[1].name, "Qty \"x\"");
    let (info, _) = inspect_table(&client, r#""Ünïcødé Tàble""#, None, false).await.unwrap();
    assert_eq!(info.key.index_name, "Ünïcødé Tàble_pkey");
}

#[tokio::test]
async fn names_cannot_inject_sql() {
    let db = Cluster::primary().fresh_db("inspect_inject");
    db.psql(
        r#"CREATE TABLE victim (id int PRIMARY KEY); CREATE TABLE "x""; DROP TABLE victim; --" (id int PRIMARY KEY);"#,
    );
    let before = snapshot(&db);
    let client = db.client().await;
    for arg in ["victim; DROP TABLE victim; --", "public.victim'); DROP TABLE victim; --", "victim\"", "a.b.c.d"] {
        let e = inspect::resolve_table(&client, arg).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Config, "{arg}: {e}");
    }
    let e = inspect::resolve_table(&client, r#""victim""; DROP TABLE victim; --""#).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Refused, "{e}");

    let (info, _) = inspect_table(&client, r#""x""; DROP TABLE victim; --""#, None, false).await.unwrap();
    assert_eq!(info.name, QualifiedName::new("public", "x\"; DROP TABLE victim; --"));
    let e = inspect_table(&client, "victim", Some("victim_pkey; DROP TABLE victim"), false).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config, "{e}");

    assert_eq!(db.psql("SELECT count(*) FROM victim"), "0");
    assert_eq!(snapshot(&db), before);
}

#[tokio::test]
async fn missing_table_is_refused() {
    let db = Cluster::primary().fresh_db("inspect_missing");
    let client = db.client().await;
    let m = refusal(inspect::resolve_table(&client, "public.nope").await);
    assert_mentions(&m, &[r#"table "public"."nope" does not exist"#]);
    let m = refusal(inspect::resolve_table(&client, "Nope").await);
    assert_mentions(&m, &[r#"table "nope" does not exist"#, "search_path"]);
    let m = refusal(inspect::resolve_table(&client, "no_schema.t").await);
    assert_mentions(&m, &[r#""no_schema"."t""#]);
}

// ---- describing a table ----

#[tokio::test]
async fn describes_columns_key_rows_and_server() {
    let db = Cluster::primary().fresh_db("inspect_describe");
    db.psql(
        "CREATE TABLE orders (
           id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
           seq int GENERATED BY DEFAULT AS IDENTITY,
           gone text,
           amount numeric(10,2) NOT NULL,
           total numeric GENERATED ALWAYS AS (amount * 2) STORED,
           tags text[]);
         ALTER TABLE orders DROP COLUMN gone;
         INSERT INTO orders (amount) SELECT g FROM generate_series(1, 1000) g;
         ANALYZE orders;
         CREATE TABLE never_analyzed (b text, a int, PRIMARY KEY (b, a));",
    );
    let client = db.client().await;
    let (info, server) = inspect_table(&client, "orders", None, false).await.unwrap();
    assert_eq!(info.oid, oid_of(&client, "orders").await);
    assert_eq!(info.owner, "ghost");
    let summary: Vec<(i16, &str, &str, bool, Identity, bool)> = info
        .columns
        .iter()
        .map(|c| (c.attnum, c.name.as_str(), c.type_sql.as_str(), c.not_null, c.identity, c.generated))
        .collect();
    assert_eq!(
        summary,
        [
            (1, "id", "bigint", true, Identity::Always, false),
            (2, "seq", "integer", true, Identity::ByDefault, false),
            (4, "amount", "numeric(10,2)", true, Identity::None, false),
            (5, "total", "numeric", false, Identity::None, true),
            (6, "tags", "text[]", false, Identity::None, false),
        ]
    );
    assert_eq!(info.columns[0].type_oid, 20);
    assert_eq!(info.key.index_name, "orders_pkey");
    assert!(info.key.is_primary);
    assert_eq!(info.key.columns, ["id"]);
    assert_eq!(info.key.types, ["bigint"]);
    assert_eq!(info.estimated_rows, 1000);
    assert_eq!(info.replica_identity, ReplicaIdentity::Default);
    assert_eq!(inspect::columns(&client, info.oid).await.unwrap(), info.columns);

    assert_eq!(server.wal_level, "logical");
    assert!(server.server_version_num >= 130000, "{server:?}");
    assert!(server.is_superuser && server.has_replication);
    assert_eq!(server.current_user, "ghost");
    assert!(server.used_replication_slots < server.max_replication_slots);

    // Composite keys keep index order, not column order.
    let (info, _) = inspect_table(&client, "never_analyzed", None, false).await.unwrap();
    assert_eq!(info.key.columns, ["b", "a"]);
    assert_eq!(info.key.types, ["text", "integer"]);
    assert_eq!(info.estimated_rows, -1);
}

// ---- the key ----

const KEYS: &str = r#"
    CREATE TABLE k (id int NOT NULL, code text NOT NULL, maybe text, grp int NOT NULL, "Mixed Code" text NOT NULL);
    CREATE INDEX k_grp_idx ON k (grp);
    CREATE UNIQUE INDEX k_maybe_key ON k (maybe);
    CREATE UNIQUE INDEX k_code_partial ON k (code) WHERE id > 0;
    CREATE UNIQUE INDEX k_lower_code ON k (lower(code));
    ALTER TABLE k ADD CONSTRAINT k_grp_deferred UNIQUE (grp) DEFERRABLE;
    CREATE UNIQUE INDEX "K Code Key" ON k (code, "Mixed Code");
    ALTER TABLE k REPLICA IDENTITY USING INDEX "K Code Key";"#;

#[tokio::test]
async fn no_primary_key_and_no_key_is_refused() {
    let m = refused_after("inspect_nokey", KEYS, "k", None).await;
    assert_mentions(&m, &[r#""public"."k" has no primary key"#, "--key", r#"usable with --key: "K Code Key""#]);
}

#[tokio::test]
async fn key_on_a_unique_not_null_index_is_accepted() {
    let db = Cluster::primary().fresh_db("inspect_goodkey");
    db.psql(KEYS);
    let client = db.client().await;
    let (info, _) = inspect_table(&client, "k", Some(r#""K Code Key""#), false).await.unwrap();
    assert_eq!(info.key.index_name, "K Code Key");
    assert!(!info.key.is_primary);
    assert_eq!(info.key.columns, ["code", "Mixed Code"]);
    assert_eq!(info.replica_identity, ReplicaIdentity::Index("K Code Key".into()));
}

#[tokio::test]
async fn key_on_a_non_unique_index_is_refused() {
    let m = refused_after("inspect_key_nonunique", KEYS, "k", Some("k_grp_idx")).await;
    assert_mentions(&m, &[r#"--key "k_grp_idx" on "public"."k" cannot serve as the key"#, "not unique"]);
}

#[tokio::test]
async fn key_on_a_nullable_column_is_refused() {
    let m = refused_after("inspect_key_nullable", KEYS, "k", Some("k_maybe_key")).await;
    assert_mentions(&m, &[r#""k_maybe_key""#, r#"column "maybe" may be NULL"#]);
}

#[tokio::test]
async fn key_on_a_partial_index_is_refused() {
    let m = refused_after("inspect_key_partial", KEYS, "k", Some("k_code_partial")).await;
    assert_mentions(&m, &[r#""k_code_partial""#, "partial"]);
}

#[tokio::test]
async fn key_on_an_expression_or_deferrable_index_is_refused() {
    let m = refused_after("inspect_key_expr", KEYS, "k", Some("k_lower_code")).await;
    assert_mentions(&m, &[r#""k_lower_code""#, "expressions"]);
    let m = refused_after("inspect_key_deferrable", KEYS, "k", Some("k_grp_deferred")).await;
    assert_mentions(&m, &[r#""k_grp_deferred""#, "DEFERRABLE"]);
}

#[tokio::test]
async fn key_that_does_not_exist_is_refused() {
    let m = refused_after("inspect_key_missing", KEYS, "k", Some("nope")).await;
    assert_mentions(&m, &[r#"--key "nope""#, "no index of that name"]);
    let m = refused_after("inspect_key_schema", KEYS, "k", Some("other.k_grp_idx")).await;
    assert_mentions(&m, &[r#""other"."k_grp_idx""#, "schema"]);
}

// ---- replica identity ----

#[tokio::test]
async fn key_that_is_not_the_replica_identity_is_refused() {
    let sql = "CREATE TABLE r (id int PRIMARY KEY, code text NOT NULL UNIQUE)";
    let m = refused_after("inspect_ri_key", sql, "r", Some("r_code_key")).await;
    assert_mentions(
        &m,
        &["replica identity of \"public\".\"r\" is DEFAULT", "REPLICA IDENTITY USING INDEX \"r_code_key\""],
    );

    let db = Cluster::primary().fresh_db("inspect_ri_fixed");
    db.psql(sql);
    db.psql("ALTER TABLE r REPLICA IDENTITY USING INDEX r_code_key");
    let client = db.client().await;
    inspect_table(&client, "r", Some("r_code_key"), false).await.unwrap();
    db.psql("ALTER TABLE r REPLICA IDENTITY FULL");
    inspect_table(&client, "r", Some("r_code_key"), false).await.unwrap();
}

#[tokio::test]
async fn replica_identity_nothing_is_refused() {
    let sql = "CREATE TABLE r (id int PRIMARY KEY); ALTER TABLE r REPLICA IDENTITY NOTHING";
    let m = refused_after("inspect_ri_nothing", sql, "r", None).await;
    assert_mentions(&m, &["is NOTHING", "ALTER TABLE \"public\".\"r\" REPLICA IDENTITY DEFAULT"]);
}

// ---- relation kinds ----

#[tokio::test]
async fn view_is_refused() {
    let m = refused_after(
        "inspect_view",
        "CREATE TABLE t (id int PRIMARY KEY); CREATE VIEW v AS SELECT * FROM t",
        "v",
        None,
    )
    .await;
    assert_mentions(&m, &[r#""public"."v" is a view"#]);
}

#[tokio::test]
async fn materialized_view_is_refused() {
    let sql = "CREATE TABLE t (id int PRIMARY KEY); CREATE MATERIALIZED VIEW mv AS SELECT * FROM t";
    let m = refused_after("inspect_matview", sql, "mv", None).await;
    assert_mentions(&m, &[r#""public"."mv" is a materialized view"#]);
}

#[tokio::test]
async fn foreign_table_is_refused() {
    let sql = "CREATE FOREIGN DATA WRAPPER dummy; CREATE SERVER elsewhere FOREIGN DATA WRAPPER dummy;
               CREATE FOREIGN TABLE ft (id int) SERVER elsewhere";
    let m = refused_after("inspect_foreign", sql, "ft", None).await;
    assert_mentions(&m, &[r#""public"."ft" is a foreign table"#]);
}

const PARTITIONS: &str = "CREATE TABLE p (id int PRIMARY KEY) PARTITION BY RANGE (id);
                          CREATE TABLE p1 PARTITION OF p FOR VALUES FROM (0) TO (10)";

#[tokio::test]
async fn a_partitioned_table_is_accepted_with_its_tree() {
    let db = Cluster::primary().fresh_db("inspect_partitioned");
    db.psql(PARTITIONS);
    let client = db.client().await;
    let (info, _) = inspect_table(&client, "p", None, false).await.unwrap();
    assert!(info.partitioned);
    assert_eq!(info.key.columns, vec!["id".to_string()]);
}

/// What pg-ghost cannot carry from one partition to the new one is refused, each named; what
/// it carries (a partition's own trigger, rule, keys, CHECK, statistics target, a view or
/// another table's rule reading it) is not.
#[tokio::test]
async fn a_partition_tree_with_what_pg_ghost_does_not_carry_is_refused() {
    let sql = format!(
        "{PARTITIONS};
         CREATE TABLE p2 PARTITION OF p FOR VALUES FROM (10) TO (20);
         ALTER TABLE p2 REPLICA IDENTITY NOTHING;
         CREATE FUNCTION nothing() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$;
         CREATE TRIGGER p1_own BEFORE INSERT ON p1 FOR EACH ROW EXECUTE FUNCTION nothing();
         CREATE VIEW p1_view AS SELECT * FROM p1;
         CREATE MATERIALIZED VIEW p1_snapshot AS SELECT * FROM p1;
         CREATE RULE p1_quiet AS ON DELETE TO p1 DO INSTEAD NOTHING;
         CREATE TABLE audit (id int);
         CREATE RULE audit_reads_p1 AS ON INSERT TO audit DO ALSO SELECT count(*) FROM p1;
         ALTER TABLE p1 ADD CONSTRAINT p1_small UNIQUE (id);
         ALTER TABLE p1 ADD CONSTRAINT p1_checked CHECK (id < 10);
         CREATE TABLE r (p_id int REFERENCES p (id));
         CREATE TABLE p3 PARTITION OF p FOR VALUES FROM (20) TO (30) PARTITION BY RANGE (id);
         CREATE UNLOGGED TABLE p3_a PARTITION OF p3 FOR VALUES FROM (20) TO (25);
         ALTER TABLE p3_a ALTER COLUMN id SET STATISTICS 500"
    );
    let m = refused_after("inspect_partition_tree", &sql, "p", None).await;
    assert_mentions(
        &m,
        &[
            r#""public"."p" is a partitioned table"#,
            "partition public.p1 is read by materialized view p1_snapshot",
            "partition public.p2 has replica identity NOTHING",
            "partition public.p3_a is UNLOGGED",
        ],
    );
    for carried in ["r_p_id_fkey", "p1_checked", "p1_own", "p1_quiet", "p1_view", "audit_reads_p1", "p1_small", "statistics target"] {
        assert!(!m.contains(carried), "{carried} is carried over, not refused: {m}");
    }
}

#[tokio::test]
async fn partition_is_refused() {
    let m = refused_after("inspect_partition", PARTITIONS, "p1", None).await;
    assert_mentions(&m, &[r#""public"."p1" is a partition of "public"."p""#, "DETACH PARTITION"]);
}

const INHERITANCE: &str = "CREATE TABLE parent (id int PRIMARY KEY);
                           CREATE TABLE child (extra text) INHERITS (parent);
                           ALTER TABLE child ADD PRIMARY KEY (id)";

#[tokio::test]
async fn inheritance_parent_is_refused() {
    let m = refused_after("inspect_inh_parent", INHERITANCE, "parent", None).await;
    assert_mentions(&m, &[r#""public"."parent" has inheritance children "public"."child""#]);
}

#[tokio::test]
async fn inheritance_child_is_refused() {
    let m = refused_after("inspect_inh_child", INHERITANCE, "child", None).await;
    assert_mentions(&m, &[r#""public"."child" inherits from "public"."parent""#]);
}

#[tokio::test]
async fn unlogged_table_is_refused() {
    let m = refused_after("inspect_unlogged", "CREATE UNLOGGED TABLE u (id int PRIMARY KEY)", "u", None).await;
    assert_mentions(&m, &[r#""public"."u" is UNLOGGED"#, "SET LOGGED"]);
}

#[tokio::test]
async fn temporary_table_is_refused() {
    let db = Cluster::primary().fresh_db("inspect_temp");
    let client = db.client().await;
    // Only the session that created it can see it, so it is created on inspect's session.
    client.batch_execute("CREATE TEMP TABLE scratch (id int PRIMARY KEY)").await.unwrap();
    let m = refusal(inspect_table(&client, "scratch", None, false).await);
    assert_mentions(&m, &["\"scratch\" is a temporary table"]);
}

// ---- server ----

/// A cluster of its own with `settings` appended to postgresql.conf and a restart.
fn cluster_with(name: &str, settings: &str) -> Cluster {
    let cluster = Cluster::start(name);
    let mut conf = std::fs::OpenOptions::new().append(true).open(cluster.dir.join("postgresql.conf")).unwrap();
    writeln!(conf, "{settings}").unwrap();
    cluster.restart();
    cluster
}

#[tokio::test]
async fn wal_level_not_logical_is_refused() {
    let cluster = cluster_with("walminimal", "wal_level = replica");
    let db = cluster.fresh_db("inspect_wal");
    db.psql("CREATE TABLE t (id int PRIMARY KEY)");
    let client = db.client().await;
    let m = refusal(inspect_table(&client, "t", None, false).await);
    assert_mentions(&m, &["wal_level is \"replica\"", "wal_level = logical", "restart"]);
}

#[tokio::test]
async fn no_free_replication_slot_is_refused() {
    let cluster = cluster_with("oneslot", "max_replication_slots = 1");
    cluster.psql("postgres", "SELECT pg_create_physical_replication_slot('hog')");
    let db = cluster.fresh_db("inspect_slots");
    db.psql("CREATE TABLE t (id int PRIMARY KEY)");
    let client = db.client().await;
    let m = refusal(inspect_table(&client, "t", None, false).await);
    assert_mentions(&m, &["no free replication slot", "1 of max_replication_slots = 1"]);
}

#[tokio::test]
async fn standby_is_refused() {
    let primary = Cluster::start("inspect_primary");
    primary.psql("postgres", "CREATE TABLE t (id int PRIMARY KEY)");
    let standby = primary.standby("inspect");
    let client = standby.client("postgres").await;
    let m = refusal(inspect_table(&client, "t", None, false).await);
    assert_mentions(&m, &["standby", "primary"]);
}

// ---- privileges ----

const ROLE_PASSWORD: &str = "inspect-pw";

/// A login role for one test, dropped with whatever it owns or was granted afterwards.
struct Role<'a, 'c> {
    db: &'a TestDb<'c>,
    name: String,
}

impl<'a, 'c> Role<'a, 'c> {
    fn create(db: &'a TestDb<'c>, tag: &str, attributes: &str) -> Self {
        // Roles are cluster-wide: the process id keeps parallel test runs apart.
        let name = format!("inspect_{tag}_{}", std::process::id());
        db.psql(&format!("CREATE ROLE {name} PASSWORD '{ROLE_PASSWORD}' {attributes}"));
        Role { db, name }
    }

    async fn client(&self) -> Client {
        let conninfo = self.db.cluster.conninfo_as(&self.name, ROLE_PASSWORD, &self.db.name);
        let (client, conn) = tokio_postgres::connect(&conninfo, NoTls).await.expect("connect as test role");
        tokio::spawn(conn);
        client
    }
}

impl Drop for Role<'_, '_> {
    fn drop(&mut self) {
        let _ = std::panic::catch_unwind(|| {
            self.db.psql(&format!("DROP OWNED BY {}", self.name));
            self.db.cluster.psql("postgres", &format!("DROP ROLE IF EXISTS {}", self.name));
        });
    }
}

#[tokio::test]
async fn role_without_replication_is_refused() {
    let db = Cluster::primary().fresh_db("inspect_norepl");
    let role = Role::create(&db, "norepl", "LOGIN NOREPLICATION");
    db.psql(&format!(
        "CREATE TABLE t (id int PRIMARY KEY); ALTER TABLE t OWNER TO {0};
         GRANT CREATE ON SCHEMA public TO {0}; GRANT CREATE ON DATABASE {1} TO {0}",
        role.name, db.name
    ));
    let before = snapshot(&db);
    let m = refusal(inspect_table(&role.client().await, "t", None, false).await);
    assert_mentions(&m, &[&format!("role \"{}\"", role.name), "REPLICATION attribute", "superuser"]);
    assert!(!m.contains("ownership"), "{m}");
    assert_eq!(snapshot(&db), before);
}

#[tokio::test]
async fn role_that_does_not_own_the_table_is_refused() {
    let db = Cluster::primary().fresh_db("inspect_notowner");
    let role = Role::create(&db, "notowner", "LOGIN REPLICATION");
    db.psql("CREATE TABLE t (id int PRIMARY KEY)");
    let m = refusal(inspect_table(&role.client().await, "t", None, false).await);
    assert_mentions(
        &m,
        &[
            "ownership of \"public\".\"t\"",
            "owned by \"ghost\"",
            &format!("GRANT \"ghost\" TO \"{}\"", role.name),
            "CREATE on schema \"public\"",
            &format!("CREATE on database \"{}\"", db.name),
        ],
    );
    assert!(!m.contains("REPLICATION attribute"), "{m}");
}

#[tokio::test]
async fn member_of_the_owner_with_replication_passes() {
    let db = Cluster::primary().fresh_db("inspect_member");
    let owner = Role::create(&db, "owner", "NOLOGIN");
    let role = Role::create(&db, "member", "LOGIN REPLICATION");
    db.psql(&format!(
        "CREATE TABLE t (id int PRIMARY KEY); ALTER TABLE t OWNER TO {owner};
         GRANT {owner} TO {member}; GRANT CREATE ON SCHEMA public TO {member}; GRANT CREATE ON DATABASE {db} TO {member}",
        owner = owner.name,
        member = role.name,
        db = db.name
    ));
    let (info, server) = inspect_table(&role.client().await, "t", None, false).await.unwrap();
    assert_eq!(info.owner, owner.name);
    assert!(!server.is_superuser && server.has_replication);
}

// ---- publications and dependents ----

#[tokio::test]
async fn for_all_tables_publication_is_refused() {
    let sql = "CREATE TABLE t (id int PRIMARY KEY); CREATE PUBLICATION everything FOR ALL TABLES";
    let m = refused_after("inspect_alltables", sql, "t", None).await;
    assert_mentions(&m, &["publication \"everything\" (FOR ALL TABLES)", "ghost"]);
}

#[tokio::test]
async fn tables_in_schema_publication_is_refused() {
    let sql = "CREATE TABLE t (id int PRIMARY KEY); CREATE PUBLICATION whole_schema FOR TABLES IN SCHEMA public";
    let m = refused_after("inspect_schemapub", sql, "t", None).await;
    assert_mentions(&m, &["publication \"whole_schema\" (FOR TABLES IN SCHEMA)"]);
}

#[tokio::test]
async fn dependent_objects_are_read_with_qualified_definitions() {
    let sql = r#"
        CREATE TABLE orders (id int PRIMARY KEY, parent int REFERENCES orders (id), owner_name text);
        CREATE TABLE "Line Items" (id int PRIMARY KEY, order_id int CONSTRAINT "Items Order FK" REFERENCES orders (id));
        CREATE VIEW open_orders AS SELECT id FROM orders;
        CREATE MATERIALIZED VIEW order_count AS SELECT count(*) FROM orders;
        CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN RETURN NEW; END$$;
        CREATE TRIGGER orders_touch BEFORE UPDATE ON orders FOR EACH ROW EXECUTE FUNCTION touch();
        CREATE RULE orders_keep AS ON DELETE TO orders DO INSTEAD NOTHING;
        ALTER TABLE orders ENABLE ROW LEVEL SECURITY;
        CREATE POLICY own_rows ON orders USING (owner_name = current_user);
        CREATE PUBLICATION orders_pub FOR TABLE orders;"#;
    let db = Cluster::primary().fresh_db("inspect_dependents_info");
    db.psql(sql);
    let mut client = db.client().await;
    let oid_of = |name: &'static str| db.psql(&format!("SELECT '{name}'::regclass::oid")).trim().parse::<u32>().unwrap();
    let (orders, items) = (oid_of("orders"), oid_of("\"Line Items\""));
    // The referencing side's own foreign key is not a dependent of the referenced table.
    assert_eq!(read_dependents(&mut client, items).await.count(), 0);
    let d = read_dependents(&mut client, orders).await;
    assert_eq!(d.views.len(), 1);
    assert!(d.views[0].definition.contains("FROM public.orders"), "{:?}", d.views[0]);
    assert_eq!(d.materialized_views.iter().map(|m| m.name.clone()).collect::<Vec<_>>(), [QualifiedName::new("public", "order_count")]);
    assert_eq!(d.triggers.len(), 1);
    assert!(d.triggers[0].definition.contains("ON public.orders"), "{:?}", d.triggers[0]);
    assert!(d.triggers[0].definition.contains("public.touch()"), "{:?}", d.triggers[0]);
    assert_eq!(d.rules.len(), 1);
    assert_eq!(d.policies[0].name, "own_rows");
    assert_eq!(d.publications[0].publication, "orders_pub");
    let fks: Vec<(&str, bool)> = d.foreign_keys.iter().map(|f| (f.name.as_str(), f.self_reference)).collect();
    assert_eq!(fks, [("Items Order FK", false), ("orders_parent_fkey", true)]);
    assert_eq!(d.referencing_tables(), [QualifiedName::new("public", "Line Items")]);
}

async fn read_dependents(client: &mut tokio_postgres::Client, oid: u32) -> pg_ghost::dependents::Dependents {
    let tx = client.transaction().await.unwrap();
    let d = pg_ghost::dependents::read(&tx, oid, "pg_ghost_0").await.unwrap();
    tx.rollback().await.unwrap();
    d
}

// ---- leftovers ----

/// A table `orders` and, by the given statements, leftovers under its run's names.
async fn with_leftovers(prefix: &str, leftovers: impl Fn(&Names) -> Vec<String>) -> (TestDb<'static>, Client) {
    let db = Cluster::primary().fresh_db(prefix);
    db.psql("CREATE TABLE orders (id int PRIMARY KEY)");
    let client = db.client().await;
    let names = Names::for_table(&QualifiedName::new("public", "orders"), oid_of(&client, "orders").await);
    // One statement per psql call: a slot cannot be created in a transaction that wrote.
    for statement in leftovers(&names) {
        db.psql(&statement);
    }
    (db, client)
}

#[tokio::test]
async fn leftover_ghost_is_refused_unless_initially_dropped() {
    let (db, client) =
        with_leftovers("inspect_left_ghost", |n| vec![format!("CREATE TABLE {} (id int)", n.ghost)]).await;
    let before = snapshot(&db);
    let m = refusal(inspect_table(&client, "orders", None, false).await);
    assert_mentions(
        &m,
        &["ghost table \"public\".\"_orders_gho\"", "--initially-drop-ghost-table", "pg-ghost cleanup"],
    );
    inspect_table(&client, "orders", None, true).await.unwrap();
    assert_eq!(snapshot(&db), before, "the ghost is the engine's to drop, not inspect's");
}

#[tokio::test]
async fn leftover_changelog_is_refused_even_with_initially_drop() {
    let (_db, client) = with_leftovers("inspect_left_ghc", |n| {
        vec![format!("CREATE TABLE {} (id int)", n.ghost), format!("CREATE TABLE {} (id int)", n.changelog)]
    })
    .await;
    let m = refusal(inspect_table(&client, "orders", None, true).await);
    assert_mentions(
        &m,
        &["changelog table \"public\".\"_orders_ghc\"", "pg-ghost cleanup --table '\"public\".\"orders\"'"],
    );
    assert!(!m.contains("_orders_gho"), "the ghost may be dropped: {m}");
}

#[tokio::test]
async fn leftover_slot_and_publication_are_refused() {
    let (_db, client) = with_leftovers("inspect_left_stream", |n| {
        vec![
            format!("CREATE PUBLICATION {} FOR TABLE orders", pg_ghost::sql::ident(&n.publication)),
            format!("SELECT pg_create_logical_replication_slot({}, 'pgoutput')", pg_ghost::sql::literal(&n.slot)),
        ]
    })
    .await;
    let oid = oid_of(&client, "orders").await;
    let m = refusal(inspect_table(&client, "orders", None, true).await);
    assert_mentions(
        &m,
        &[
            &format!("replication slot \"pg_ghost_{oid}\""),
            &format!("publication \"pg_ghost_{oid}\""),
            "pg-ghost cleanup",
        ],
    );
    assert!(!m.contains("dependent"), "our publication is a leftover, not a dependent: {m}");
}

#[tokio::test]
async fn leftover_old_table_is_refused() {
    let (_db, client) = with_leftovers("inspect_left_old", |n| vec![format!("CREATE TABLE {} (id int)", n.old)]).await;
    let m = refusal(inspect_table(&client, "orders", None, true).await);
    assert_mentions(&m, &["old table \"public\".\"_orders_del\"", "--timestamp-old-table"]);
}

// ---- read-only ----

#[tokio::test]
async fn inspect_changes_nothing() {
    let db = Cluster::primary().fresh_db("inspect_readonly");
    db.psql(
        "CREATE TABLE a (id int PRIMARY KEY, v text); INSERT INTO a SELECT g, 'x' FROM generate_series(1, 100) g;
         CREATE TABLE b (id int); CREATE VIEW bv AS SELECT * FROM b;",
    );
    let before = snapshot(&db);
    let data = db.psql("SELECT md5(string_agg(id || v, ',' ORDER BY id)) FROM a");
    let client = db.client().await;
    inspect_table(&client, "a", None, false).await.unwrap();
    refusal(inspect_table(&client, "b", None, false).await);
    refusal(inspect_table(&client, "bv", None, false).await);
    assert_eq!(snapshot(&db), before);
    assert_eq!(db.psql("SELECT md5(string_agg(id || v, ',' ORDER BY id)) FROM a"), data);
}
