//! How flushes write the ghost once it has unique indexes besides the key's: two rows that
//! swap values of a UNIQUE column in one transaction must reach the ghost without a
//! duplicate-key error (rows updated one by one in a single statement would meet the value
//! the other still holds), and without losing either row.

use crate::binary;
use crate::harness::Cluster;
use crate::run_faults::{flag_path, wait_for_state, Running};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_swapping_unique_values_reach_the_ghost() {
    let db = Cluster::primary().fresh_db("fl_swap");
    db.psql(
        "CREATE TABLE accounts (id bigint PRIMARY KEY, email text NOT NULL UNIQUE, n int);
         INSERT INTO accounts SELECT g, 'user' || g || '@example.com', g FROM generate_series(1, 2000) g;
         CREATE TABLE accounts_control AS SELECT * FROM accounts;",
    );
    let client = db.client().await;
    let flag = flag_path(&db, "postpone");
    std::fs::write(&flag, b"").unwrap();
    let flag_arg = flag.to_str().unwrap().to_string();
    let mut run = Running::spawn(
        &db,
        "run",
        &["--table", "accounts", "--alter", "ALTER COLUMN n TYPE bigint", "--execute", "--postpone-cut-over-flag-file", &flag_arg],
    );
    // Postponed: the copy is done and the ghost has its UNIQUE (email) index again.
    wait_for_state(&client, &mut run, "accounts", "postponed", Duration::from_secs(60)).await;

    for pair in 0..100i64 {
        let (a, b) = (1 + pair * 2, 2 + pair * 2);
        // The application's way to swap unique values: through a placeholder.
        let swap = format!(
            "BEGIN;
             UPDATE accounts SET email = 'swapping' WHERE id = {a};
             UPDATE accounts SET email = 'user{a}@example.com' WHERE id = {b};
             UPDATE accounts SET email = 'user{b}@example.com', n = n + 1 WHERE id = {a};
             UPDATE accounts_control SET email = 'user{a}@example.com' WHERE id = {b};
             UPDATE accounts_control SET email = 'user{b}@example.com', n = n + 1 WHERE id = {a};
             COMMIT;"
        );
        client.batch_execute(&swap).await.unwrap();
    }
    std::fs::remove_file(&flag).unwrap();
    let out = run.wait(Duration::from_secs(60)).await;
    binary::assert_success(&out);

    let differing: i64 = client
        .query_one(
            "SELECT count(*) FROM ((SELECT id, email, n FROM accounts EXCEPT ALL SELECT id, email, n FROM accounts_control)
                                   UNION ALL
                                   (SELECT id, email, n FROM accounts_control EXCEPT ALL SELECT id, email, n FROM accounts)) d",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(differing, 0, "the migrated table differs from the control in {differing} rows");
    let n_type: String = client
        .query_one("SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'accounts'::regclass AND attname = 'n'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n_type, "bigint", "no swap happened");
}
