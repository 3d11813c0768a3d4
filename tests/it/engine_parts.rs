//! The engine's parts driven one by one on a real table: ghost creation, chunked copy,
//! key flush and the swap, without the stream (the full runs are in the scenario tests).

use crate::harness::Cluster;
use pg_ghost::apply::{FlushSql, Key, InFlight};
use pg_ghost::conn::ConnInfo;
use pg_ghost::copy::{copy_table, CopyJob, CopyProgress, GateState};
use pg_ghost::ghost;
use pg_ghost::inspect;
use pg_ghost::names::Names;
use std::time::Duration;

const SCHEMA: &str = r#"
CREATE SCHEMA "Sales Dept";
CREATE TABLE "Sales Dept"."Order ""Items""" (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    n int NOT NULL CHECK (n >= 0),
    label text DEFAULT 'none',
    email text UNIQUE,
    serial_no serial,
    body text
);
CREATE INDEX items_label_idx ON "Sales Dept"."Order ""Items""" (label) WHERE label IS NOT NULL;
COMMENT ON TABLE "Sales Dept"."Order ""Items""" IS 'order items';
COMMENT ON COLUMN "Sales Dept"."Order ""Items""".n IS 'quantity';
ALTER TABLE "Sales Dept"."Order ""Items""" SET (fillfactor = 90);
INSERT INTO "Sales Dept"."Order ""Items""" (n, label, email, body)
SELECT i % 100, CASE WHEN i % 7 = 0 THEN NULL ELSE 'l' || i END, 'e' || i || '@x', repeat(md5(i::text), 300)
  FROM generate_series(1, 5000) i;
"#;

fn catalog_names(db: &crate::harness::TestDb, table: &str) -> String {
    db.psql(&format!(
        "SELECT string_agg(x, ',' ORDER BY x) FROM (
           SELECT relname::text AS x FROM pg_class WHERE oid IN (SELECT indexrelid FROM pg_index WHERE indrelid = '{table}'::regclass)
           UNION ALL SELECT conname::text FROM pg_constraint WHERE conrelid = '{table}'::regclass
           UNION ALL SELECT pg_get_serial_sequence('{table}', attname) FROM pg_attribute WHERE attrelid = '{table}'::regclass AND attnum > 0 AND NOT attisdropped AND pg_get_serial_sequence('{table}', attname) IS NOT NULL
         ) s"
    ))
}

#[tokio::test]
async fn ghost_copy_flush_and_swap_keep_data_and_names() {
    let db = Cluster::primary().fresh_db("parts");
    db.psql(SCHEMA);
    let table_sql = r#""Sales Dept"."Order ""Items""""#;
    let before_names = catalog_names(&db, table_sql);
    let conn = ConnInfo::parse(&db.conninfo()).unwrap();
    let mut client = conn.connect().await.unwrap();
    let name = inspect::resolve_table(&client, table_sql).await.unwrap();
    let info = inspect::table_info(&client, &name, None).await.unwrap();
    let names = Names::for_table(&name, info.oid);
    let g = ghost::create(&mut client, &info, &names.ghost, "ALTER COLUMN n TYPE bigint, ADD COLUMN f boolean NOT NULL DEFAULT false")
        .await
        .unwrap();
    // No index exists during the copy, the key's included (built first after it).
    assert_eq!(db.psql(&format!("SELECT count(*) FROM pg_index WHERE indrelid = {}", g.oid)), "0");
    assert!(g.key_index.is_some(), "the key's index was not set aside");

    let job = CopyJob {
        conn: conn.clone(),
        orig: name.clone(),
        ghost: g.name.clone(),
        mapping: g.mapping.clone(),
        workers: 2,
        chunk_time: Duration::from_millis(50),
        changelog: None,
        resume_after: None,
        fresh: true,
        parts: Vec::new(),
        resume_parts: Default::default(),
        origins: None,
    };
    let progress = CopyProgress::new(300);
    let (_gate_tx, gate) = tokio::sync::watch::channel(GateState::Open);
    copy_table(job, InFlight::new(), progress.clone(), gate).await.unwrap();
    assert_eq!(db.psql(&format!("SELECT count(*) FROM {}", g.name.sql())), "5000");
    assert_eq!(progress.rows.load(std::sync::atomic::Ordering::Relaxed), 5000);
    ghost::rebuild_deferred(&client, &g).await.unwrap();

    // Changes after the copy reach the ghost through a key flush.
    db.psql(&format!(
        "UPDATE {table_sql} SET n = n + 1000, body = 'short' WHERE id % 10 = 0;
         DELETE FROM {table_sql} WHERE id % 10 = 1;
         INSERT INTO {table_sql} (n, label, email) VALUES (1, 'new', 'new@x');"
    ));
    let ids = db.psql(&format!("SELECT string_agg(id::text, ',') FROM generate_series(1, 5001) id WHERE id % 10 IN (0, 1) OR id = 5001"));
    let keys: Vec<Key> = ids.split(',').map(|s| vec![s.to_string()].into_boxed_slice()).collect();
    let flush = FlushSql::new(&name, &g.name, &g.mapping);
    flush.run(&client, &keys).await.unwrap();

    let control = db.psql(&format!("SELECT md5(string_agg(t::text, '|' ORDER BY id)) FROM (SELECT id, n::bigint, label, email, serial_no, body, false AS f FROM {table_sql}) t"));
    client.batch_execute("BEGIN").await.unwrap();
    client.batch_execute(&format!("LOCK TABLE {table_sql} IN ACCESS EXCLUSIVE MODE")).await.unwrap();
    pg_ghost::cutover::swap::swap(&client, &info, &g, &names.old.name, Some(&[])).await.unwrap();
    client.batch_execute("COMMIT").await.unwrap();

    let after = db.psql(&format!("SELECT md5(string_agg(t::text, '|' ORDER BY id)) FROM (SELECT id, n, label, email, serial_no, body, f FROM {table_sql}) t"));
    assert_eq!(after, control);
    // From PostgreSQL 18 the added NOT NULL column has a not-null constraint, named as a plain
    // ALTER names it.
    let mut expected: Vec<&str> = before_names.split(',').collect();
    if db.psql("SELECT current_setting('server_version_num')::int >= 180000") == "t" {
        expected.push(r#"Order "Items"_f_not_null"#);
        expected.sort_unstable();
    }
    assert_eq!(catalog_names(&db, table_sql), expected.join(","));
    assert_eq!(db.psql(&format!("SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = '{table_sql}'::regclass AND attname = 'n'")), "bigint");
    assert_eq!(db.psql(&format!("SELECT obj_description('{table_sql}'::regclass, 'pg_class')")), "order items");
    // Inserts through the identity and serial defaults continue past the original's values.
    let row = db.psql(&format!("INSERT INTO {table_sql} (n, email) VALUES (5, 'after@x') RETURNING id, serial_no"));
    assert_eq!(row, "5002|5002");
    // Serial ownership moved: dropping the old table keeps the sequence.
    db.psql(&format!("DROP TABLE \"Sales Dept\".{}", pg_ghost::sql::ident(&names.old.name)));
    db.psql(&format!("INSERT INTO {table_sql} (n, email) VALUES (6, 'after2@x')"));
}
