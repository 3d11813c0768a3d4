//! The relation itself: what kind it is, how it is persisted, where it sits in a partition or
//! inheritance tree. pg-ghost swaps one ordinary, WAL-logged table by rename; everything
//! else is refused here, before anything else is read.

use super::get;
use crate::error::{Context, Error, Result};
use crate::sql::QualifiedName;
use tokio_postgres::Client;

#[derive(Clone, Debug, PartialEq)]
pub(super) struct Relation {
    pub oid: u32,
    pub name: QualifiedName,
    pub owner: String,
    /// `pg_class.relkind`: `r` table, `p` partitioned, `v` view, `m` materialized view, ...
    pub kind: String,
    /// `pg_class.relpersistence`: `p` permanent, `u` unlogged, `t` temporary.
    pub persistence: String,
    pub is_partition: bool,
    /// Tables this one inherits from (for a partition: its partitioned table).
    pub parents: Vec<QualifiedName>,
    /// Tables that inherit from this one.
    pub children: Vec<QualifiedName>,
    pub reltuples: f32,
    /// `pg_class.relreplident`: `d`, `n`, `f` or `i`.
    pub replica_identity: String,
}

impl Relation {
    /// Reads the relation by its exact schema and name; a missing one is refused.
    pub async fn read(client: &Client, table: &QualifiedName) -> Result<Relation> {
        let row = client
            .query_opt(
                "SELECT c.oid, pg_get_userbyid(c.relowner)::text AS owner, c.relkind::text AS kind,
                        c.relpersistence::text AS persistence, c.relispartition, c.reltuples,
                        c.relreplident::text AS replident
                   FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                  WHERE n.nspname = $1 AND c.relname = $2",
                &[&table.schema, &table.name],
            )
            .await
            .with_context(|| format!("reading pg_class for {table}"))?
            .ok_or_else(|| Error::refused(format!("table {table} does not exist")))?;
        let oid: u32 = get(&row, "oid")?;
        Ok(Relation {
            oid,
            name: table.clone(),
            owner: get(&row, "owner")?,
            kind: get(&row, "kind")?,
            persistence: get(&row, "persistence")?,
            is_partition: get(&row, "relispartition")?,
            parents: inheritance(client, oid, Direction::Parents).await?,
            children: inheritance(client, oid, Direction::Children).await?,
            reltuples: get(&row, "reltuples")?,
            replica_identity: get(&row, "replident")?,
        })
    }
}

enum Direction {
    Parents,
    Children,
}

async fn inheritance(client: &Client, oid: u32, direction: Direction) -> Result<Vec<QualifiedName>> {
    // The two queries differ only in which side of pg_inherits is ours.
    let sql = match direction {
        Direction::Parents => {
            "SELECT n.nspname::text AS schema, c.relname::text AS name
               FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhparent JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE i.inhrelid = $1 ORDER BY 1, 2"
        }
        Direction::Children => {
            "SELECT n.nspname::text AS schema, c.relname::text AS name
               FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE i.inhparent = $1 ORDER BY 1, 2"
        }
    };
    let rows = client.query(sql, &[&oid]).await.context("reading pg_inherits")?;
    rows.iter().map(|r| Ok(QualifiedName::new(get::<String>(r, "schema")?, get::<String>(r, "name")?))).collect()
}

fn list(names: &[QualifiedName]) -> String {
    names.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(", ")
}

/// Refuses every relation but an ordinary, permanent table outside any hierarchy.
pub(super) fn check_relation(rel: &Relation) -> Result<()> {
    let t = &rel.name;
    let schema = rel.name.schema.as_str();
    if schema == "pg_catalog" || schema == "information_schema" || schema.starts_with("pg_toast") {
        return Err(Error::refused(format!("{t} is a system catalog: pg-ghost changes user tables only")));
    }
    let refusal = match rel.kind.as_str() {
        // A partitioned table is changed with its whole tree (see `crate::ghost::partitions`);
        // its partitions are checked by `super::partitions`.
        "r" | "p" => None,
        "v" => Some(format!("{t} is a view, not a table: it holds no rows; change it with CREATE OR REPLACE VIEW")),
        "m" => Some(format!("{t} is a materialized view, not a table: recreate it with the new definition")),
        "f" => Some(format!("{t} is a foreign table: its rows live on another server; change the remote table there")),
        "S" => Some(format!("{t} is a sequence, not a table")),
        "i" | "I" => Some(format!("{t} is an index, not a table")),
        "c" => Some(format!("{t} is a composite type, not a table")),
        "t" => Some(format!("{t} is a TOAST table, not a user table")),
        other => Some(format!("{t} is not an ordinary table (relkind {other:?})")),
    };
    if let Some(message) = refusal {
        return Err(Error::refused(message));
    }
    if rel.is_partition {
        return Err(Error::refused(format!(
            "{t} is a partition of {}: a partition cannot be swapped by rename while attached; \
             detach it first (ALTER TABLE {} DETACH PARTITION {t}) or change the partitioned table with a plain ALTER TABLE",
            list(&rel.parents),
            rel.parents.first().map(|p| p.to_string()).unwrap_or_default(),
        )));
    }
    if !rel.parents.is_empty() {
        return Err(Error::refused(format!(
            "{t} inherits from {}: the ghost table would not take its place in the inheritance tree; \
             remove the inheritance (ALTER TABLE {t} NO INHERIT ...) or use a plain ALTER TABLE",
            list(&rel.parents)
        )));
    }
    if !rel.children.is_empty() && rel.kind != "p" {
        return Err(Error::refused(format!(
            "{t} has inheritance children {}: queries on it also read them, and pg-ghost would copy only its own rows; \
             use a plain ALTER TABLE, which recurses to the children",
            list(&rel.children)
        )));
    }
    match rel.persistence.as_str() {
        "u" => Err(Error::refused(format!(
            "{t} is UNLOGGED: its changes are not written to the WAL, so logical decoding cannot stream them; \
             make it permanent first (ALTER TABLE {t} SET LOGGED) or use a plain ALTER TABLE"
        ))),
        "t" => Err(Error::refused(format!(
            "{t} is a temporary table: it exists only in its own session, which pg-ghost's other connections cannot see"
        ))),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    fn table() -> Relation {
        Relation {
            oid: 1,
            name: QualifiedName::new("public", "t"),
            owner: "o".into(),
            kind: "r".into(),
            persistence: "p".into(),
            is_partition: false,
            parents: vec![],
            children: vec![],
            reltuples: -1.0,
            replica_identity: "d".into(),
        }
    }

    fn refusal(rel: Relation) -> String {
        let e = check_relation(&rel).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Refused);
        e.message().to_string()
    }

    #[test]
    fn accepts_an_ordinary_table() {
        assert!(check_relation(&table()).is_ok());
    }

    #[test]
    fn refuses_other_kinds() {
        assert!(refusal(Relation { kind: "v".into(), ..table() }).contains("is a view"));
        assert!(refusal(Relation { kind: "m".into(), ..table() }).contains("materialized view"));
        assert!(refusal(Relation { kind: "f".into(), ..table() }).contains("foreign table"));
        assert!(check_relation(&Relation { kind: "p".into(), children: vec![QualifiedName::new("public", "t_1")], ..table() }).is_ok());
        assert!(refusal(Relation { name: QualifiedName::new("pg_catalog", "pg_class"), ..table() }).contains("system"));
    }

    #[test]
    fn refuses_hierarchies_and_unlogged() {
        let parent = QualifiedName::new("public", "p");
        let m = refusal(Relation { is_partition: true, parents: vec![parent.clone()], ..table() });
        assert!(m.contains("partition of \"public\".\"p\""), "{m}");
        let m = refusal(Relation { parents: vec![parent.clone()], ..table() });
        assert!(m.contains("inherits from \"public\".\"p\""), "{m}");
        let m = refusal(Relation { children: vec![parent], ..table() });
        assert!(m.contains("inheritance children \"public\".\"p\""), "{m}");
        assert!(refusal(Relation { persistence: "u".into(), ..table() }).contains("UNLOGGED"));
        assert!(refusal(Relation { persistence: "t".into(), ..table() }).contains("temporary"));
    }
}
