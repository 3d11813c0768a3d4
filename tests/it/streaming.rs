//! Large transactions streamed before they commit (pgoutput protocol 2): their keys must be
//! applied only once they commit, subtransactions included, and dropped when they abort.

use crate::binary;
use crate::harness::Cluster;
use crate::oracle::*;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_transactions_with_subtransactions_and_aborts() {
    let db = Cluster::primary().fresh_db("streaming");
    // Small enough that every transaction below is streamed in pieces before its commit.
    db.psql(&format!("ALTER DATABASE \"{}\" SET logical_decoding_work_mem = '64kB'", db.name));
    let table = OracleTable::create(&db, "orders", KeyKind::Identity, 3_000).await;
    let flag = std::env::temp_dir().join(format!("pg-ghost-streaming-{}-{}", std::process::id(), rand::random::<u32>()));
    std::fs::write(&flag, b"").unwrap();
    let child = binary::command(
        &db,
        "run",
        &["--table", "orders", "--alter", "ALTER COLUMN n TYPE bigint", "--execute", "--postpone-cut-over-flag-file", flag.to_str().unwrap()],
    )
    .stderr(std::process::Stdio::piped())
    .spawn()
    .unwrap();
    let watcher = db.client().await;
    let state = || async { binary::changelog_value(&watcher, "orders", "state").await.unwrap_or_default() };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while state().await != "postponed" {
        assert!(tokio::time::Instant::now() < deadline, "pg-ghost did not reach the postponed state");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Every statement runs on the table and on its control, in the same transaction.
    let both = |sql: &str| format!("{}; {}", sql.replace("$T", "orders"), sql.replace("$T", "orders_control"));
    let committed = [
        "BEGIN",
        &both("UPDATE $T SET n = n + 1, big = repeat(md5(id::text), 40) WHERE id <= 1500"),
        "SAVEPOINT a",
        &both("UPDATE $T SET label = 'in savepoint a' WHERE id BETWEEN 1000 AND 2500"),
        "RELEASE SAVEPOINT a",
        "SAVEPOINT b",
        &both("DELETE FROM $T WHERE id BETWEEN 2000 AND 2999"),
        "ROLLBACK TO SAVEPOINT b",
        "SAVEPOINT c",
        &both("DELETE FROM $T WHERE id % 7 = 0"),
        "RELEASE SAVEPOINT c",
        "COMMIT",
    ]
    .join(";\n");
    db.psql(&committed);
    let aborted = ["BEGIN", &both("UPDATE $T SET label = 'aborted', big = repeat('x', 9000) WHERE id > 100"), "ROLLBACK"].join(";\n");
    db.psql(&aborted);

    std::fs::remove_file(&flag).unwrap();
    let out = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output()).await.expect("pg-ghost did not finish").unwrap();
    binary::assert_success(&out);
    let client = db.client().await;
    table.assert_matches_control(&client, &table.projection().map("n", "n::bigint")).await;
    assert_no_slots_or_publications(&client).await;
}

/// From PostgreSQL 15 the publication lists only the key column, and the application's
/// UPDATEs and DELETEs still work (the list covers the replica identity); with `REPLICA
/// IDENTITY FULL` the whole row is published. Either way the ghost ends equal to the control.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_publication_carries_the_key_columns_unless_the_identity_is_full() {
    for (full, expected) in [(false, "{id}"), (true, "")] {
        let db = Cluster::primary().fresh_db(if full { "keycols_full" } else { "keycols" });
        let table = OracleTable::create(&db, "orders", KeyKind::Identity, 2_000).await;
        if full {
            db.psql("ALTER TABLE orders REPLICA IDENTITY FULL");
        }
        let flag = std::env::temp_dir().join(format!("pg-ghost-keycols-{}-{}", std::process::id(), rand::random::<u32>()));
        std::fs::write(&flag, b"").unwrap();
        let child = binary::command(
            &db,
            "run",
            &["--table", "orders", "--alter", "ALTER COLUMN n TYPE bigint", "--execute", "--postpone-cut-over-flag-file", flag.to_str().unwrap()],
        )
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
        let watcher = db.client().await;
        let state = || async { binary::changelog_value(&watcher, "orders", "state").await.unwrap_or_default() };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while state().await != "postponed" {
            assert!(tokio::time::Instant::now() < deadline, "pg-ghost did not reach the postponed state");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let columns = db.psql(
            "SELECT CASE WHEN pr.prattrs IS NULL THEN '' ELSE (SELECT array_agg(a.attname ORDER BY a.attnum) FROM pg_attribute a
                     WHERE a.attrelid = pr.prrelid AND a.attnum = ANY(pr.prattrs::int2[]))::text END
               FROM pg_publication_rel pr JOIN pg_publication p ON p.oid = pr.prpubid WHERE p.pubname LIKE 'pg_ghost_%'",
        );
        assert_eq!(columns, expected, "the column list of pg-ghost's publication (REPLICA IDENTITY FULL: {full})");

        let both = |sql: &str| format!("{}; {}", sql.replace("$T", "orders"), sql.replace("$T", "orders_control"));
        let writes = [
            "BEGIN",
            &both("UPDATE $T SET n = n + 1, big = repeat(md5(id::text), 40) WHERE id % 3 = 0"),
            &both("UPDATE $T SET label = 'moved' WHERE id % 5 = 0"),
            &both("DELETE FROM $T WHERE id % 7 = 0"),
            "COMMIT",
        ]
        .join(";\n");
        db.psql(&writes);

        std::fs::remove_file(&flag).unwrap();
        let out = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output()).await.expect("pg-ghost did not finish").unwrap();
        binary::assert_success(&out);
        let client = db.client().await;
        table.assert_matches_control(&client, &table.projection().map("n", "n::bigint")).await;
        assert_no_slots_or_publications(&client).await;
    }
}
