//! Large transactions streamed before they commit (pgoutput protocol 2): their keys must be
//! applied only once they commit, subtransactions included, and dropped when they abort.

use crate::binary;
use crate::harness::{Cluster, TestDb};
use crate::oracle::*;
use crate::run_faults::{flag_path, wait_for_state, Running};
use std::path::PathBuf;
use std::time::Duration;

/// `pg-ghost run` changing `orders`, held at its postponed cut-over by a flag file; the run
/// and the flag, whose removal lets it cut over.
async fn postponed_run(db: &TestDb<'_>) -> (Running, PathBuf) {
    let flag = flag_path(db, "postpone");
    std::fs::write(&flag, b"").unwrap();
    let args = ["--table", "orders", "--alter", "ALTER COLUMN n TYPE bigint", "--execute", "--postpone-cut-over-flag-file", flag.to_str().unwrap()];
    let mut run = Running::spawn(db, "run", &args);
    wait_for_state(&db.client().await, &mut run, "orders", "postponed", Duration::from_secs(60)).await;
    (run, flag)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_transactions_with_subtransactions_and_aborts() {
    let db = Cluster::primary().fresh_db("streaming");
    // Small enough that every transaction below is streamed in pieces before its commit.
    db.psql(&format!("ALTER DATABASE \"{}\" SET logical_decoding_work_mem = '64kB'", db.name));
    let table = OracleTable::create(&db, "orders", KeyKind::Identity, 3_000).await;
    let (run, flag) = postponed_run(&db).await;

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
    let out = run.wait(Duration::from_secs(120)).await;
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
        let (run, flag) = postponed_run(&db).await;
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
        let out = run.wait(Duration::from_secs(120)).await;
        binary::assert_success(&out);
        let client = db.client().await;
        table.assert_matches_control(&client, &table.projection().map("n", "n::bigint")).await;
        assert_no_slots_or_publications(&client).await;
    }
}
