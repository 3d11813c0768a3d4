use super::*;
use crate::schema::Key;
use crate::ErrorKind;

fn table() -> TableInfo {
    TableInfo {
        oid: 16384,
        name: QualifiedName::new("public", "orders"),
        owner: "app".into(),
        columns: vec![],
        key: Key {
            index_name: "orders_pkey".into(),
            is_primary: true,
            columns: vec!["id".into()],
            types: vec!["bigint".into()],
        },
        estimated_rows: -1,
        replica_identity: ReplicaIdentity::Default,
    }
}

fn opts(initially_drop_ghost_table: bool) -> PreflightOptions {
    let t = table();
    PreflightOptions::new(&Names::for_table(&t.name, t.oid), initially_drop_ghost_table)
}

fn server(superuser: bool, replication: bool) -> ServerInfo {
    ServerInfo {
        server_version_num: 150000,
        server_version: "15.0".into(),
        wal_level: "logical".into(),
        in_recovery: false,
        max_replication_slots: 10,
        used_replication_slots: 0,
        max_wal_senders: 10,
        used_wal_senders: 0,
        current_user: "bob".into(),
        is_superuser: superuser,
        has_replication: replication,
    }
}

fn refusal(r: Result<()>) -> String {
    let e = r.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Refused, "{e}");
    e.message().to_string()
}

#[test]
fn privileges() {
    let all = Privileges { owns_table: true, create_on_schema: true, create_on_database: true, database: "d".into() };
    let none =
        Privileges { owns_table: false, create_on_schema: false, create_on_database: false, database: "d".into() };
    assert!(check_privileges(&table(), &server(true, false), &none).is_ok());
    assert!(check_privileges(&table(), &server(false, true), &all).is_ok());
    let m = refusal(check_privileges(&table(), &server(false, false), &none));
    for part in [
        "role \"bob\"",
        "ALTER ROLE \"bob\" REPLICATION",
        "owned by \"app\": GRANT \"app\" TO \"bob\"",
        "GRANT CREATE ON SCHEMA \"public\" TO \"bob\"",
        "GRANT CREATE ON DATABASE \"d\" TO \"bob\"",
    ] {
        assert!(m.contains(part), "{part} missing from {m}");
    }
}

#[test]
fn the_direct_way_needs_only_the_owner() {
    let owner = Privileges { owns_table: true, create_on_schema: false, create_on_database: false, database: "d".into() };
    let stranger = Privileges { owns_table: false, ..owner.clone() };
    let t = table().name;
    // No REPLICATION, no CREATE anywhere: the direct way creates nothing and streams nothing.
    assert!(check_owner(&t, "app", &server(false, false), &owner).is_ok());
    assert!(check_owner(&t, "app", &server(true, false), &stranger).is_ok());
    let m = refusal(check_owner(&t, "app", &server(false, true), &stranger));
    for part in ["role \"bob\" may not alter \"public\".\"orders\"", "owned by \"app\"", "GRANT \"app\" TO \"bob\""] {
        assert!(m.contains(part), "{part} missing from {m}");
    }
    assert!(!m.contains("REPLICATION") && !m.contains("CREATE"), "{m}");
}

#[test]
fn replica_identity() {
    let unique_key = Key { index_name: "orders_code_key".into(), is_primary: false, ..table().key };
    assert!(check_replica_identity(&table()).is_ok());
    assert!(check_replica_identity(&TableInfo {
        replica_identity: ReplicaIdentity::Full,
        key: unique_key.clone(),
        ..table()
    })
    .is_ok());
    let using = ReplicaIdentity::Index("orders_code_key".into());
    assert!(check_replica_identity(&TableInfo { replica_identity: using, key: unique_key.clone(), ..table() }).is_ok());

    let m = refusal(check_replica_identity(&TableInfo { key: unique_key, ..table() }));
    assert!(m.contains("REPLICA IDENTITY USING INDEX \"orders_code_key\""), "{m}");
    let m = refusal(check_replica_identity(&TableInfo { replica_identity: ReplicaIdentity::Nothing, ..table() }));
    assert!(m.contains("is NOTHING") && m.contains("REPLICA IDENTITY DEFAULT"), "{m}");
}

#[test]
fn covering_publications() {
    assert!(check_covering_publications(&table(), &[]).is_ok());
    let m = refusal(check_covering_publications(&table(), &[("everything".into(), "FOR ALL TABLES")]));
    assert!(m.contains("publication \"everything\" (FOR ALL TABLES)"), "{m}");
}

#[test]
fn leftovers() {
    let none = Leftovers::default();
    assert!(check_leftovers(&table(), &opts(false), &none).is_ok());

    let ghost = Leftovers { ghost: true, ..none.clone() };
    let m = refusal(check_leftovers(&table(), &opts(false), &ghost));
    assert!(m.contains("ghost table \"public\".\"_orders_gho\""), "{m}");
    assert!(m.contains("--initially-drop-ghost-table"), "{m}");
    assert!(m.contains("pg-ghost cleanup --table '\"public\".\"orders\"'"), "{m}");
    assert!(check_leftovers(&table(), &opts(true), &ghost).is_ok());

    let stream =
        Leftovers { ghost: true, slot: Some(Some("db".into())), publication: true, changelog: true, ..none.clone() };
    let m = refusal(check_leftovers(&table(), &opts(true), &stream));
    assert!(!m.contains("_orders_gho"), "{m}");
    assert!(m.contains("replication slot \"pg_ghost_16384\" (database \"db\")"), "{m}");
    assert!(m.contains("publication \"pg_ghost_16384\""), "{m}");
    assert!(m.contains("changelog table \"public\".\"_orders_ghc\""), "{m}");
    assert!(m.contains("pg-ghost cleanup"), "{m}");

    let old = Leftovers { old: true, ..none };
    let m = refusal(check_leftovers(&table(), &opts(true), &old));
    assert!(m.contains("old table \"public\".\"_orders_del\"") && m.contains("--timestamp-old-table"), "{m}");
}
