use crate::harness::Cluster;

#[tokio::test]
async fn cluster_is_logical_and_databases_are_fresh() {
    let db = Cluster::primary().fresh_db("smoke");
    let client = db.client().await;
    let row = client.query_one("SHOW wal_level", &[]).await.unwrap();
    assert_eq!(row.get::<_, String>(0), "logical");
    let tables: i64 = client
        .query_one("SELECT count(*) FROM pg_class WHERE relnamespace = 'public'::regnamespace", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(tables, 0);
}

#[tokio::test]
async fn standby_replays_the_primary() {
    let primary = Cluster::primary();
    let db = primary.fresh_db("standby");
    db.psql("CREATE TABLE t(id int primary key); INSERT INTO t VALUES (1),(2)");
    let standby = primary.standby("smoke");
    assert_eq!(standby.psql(&db.name, "SELECT pg_is_in_recovery()"), "t");
    assert_eq!(standby.psql(&db.name, "SELECT count(*) FROM t"), "2");
}
