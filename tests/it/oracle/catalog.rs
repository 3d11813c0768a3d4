//! A snapshot of what a database's catalogs define, to prove that a dry run or a refusal
//! changed nothing.
//!
//! Only definitions are captured, never OIDs, sizes, statistics or sequence positions:
//! a run that creates and then drops its objects must compare equal, and a run that leaves
//! anything behind (a ghost table, a slot, a publication, a renamed index, a trigger, a
//! changed default or grant) must not. System schemas, TOAST tables (named after OIDs) and
//! temporary schemas are left out. Replication slots are those of this database only (the
//! cluster is shared by parallel tests).

use std::fmt::Debug;

use tokio_postgres::Client;

use super::compare::db_message;

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Relation {
    pub schema: String,
    pub name: String,
    /// `relkind`: r table, i index, S sequence, v view, m materialized view, p partitioned, ...
    pub kind: String,
    pub persistence: String,
    pub owner: String,
    pub acl: Option<String>,
    pub options: Option<String>,
    pub replica_identity: String,
    pub row_security: bool,
    pub comment: Option<String>,
    /// View and materialized view definitions.
    pub definition: Option<String>,
    pub columns: Vec<Column>,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Column {
    pub attnum: i16,
    pub name: String,
    pub type_name: String,
    pub not_null: bool,
    pub default: Option<String>,
    /// `a` always, `d` by default, empty if not an identity column.
    pub identity: String,
    /// `s` stored generated column, empty otherwise.
    pub generated: String,
    pub storage: String,
    pub compression: String,
    pub collation: Option<String>,
    pub comment: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Index {
    pub schema: String,
    pub table: String,
    pub name: String,
    pub definition: String,
    pub primary: bool,
    pub unique: bool,
    pub replica_identity: bool,
    pub clustered: bool,
    pub valid: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Constraint {
    pub schema: String,
    /// The table, or the domain for a domain constraint.
    pub on: String,
    pub name: String,
    pub kind: String,
    pub definition: String,
    pub validated: bool,
    pub deferrable: bool,
    pub comment: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Sequence {
    pub schema: String,
    pub name: String,
    pub type_name: String,
    pub start: i64,
    pub increment: i64,
    pub min: i64,
    pub max: i64,
    pub cache: i64,
    pub cycle: bool,
    /// `schema.table.column` for an `OWNED BY` or identity sequence, with the dependency type.
    pub owned_by: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Publication {
    pub name: String,
    pub owner: String,
    pub all_tables: bool,
    /// insert, update, delete, truncate, via_root
    pub actions: String,
    /// `schema.table (columns) WHERE filter` per published table.
    pub tables: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Slot {
    pub name: String,
    pub plugin: Option<String>,
    pub slot_type: String,
    pub temporary: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Trigger {
    pub schema: String,
    pub table: String,
    pub name: String,
    pub definition: String,
    pub enabled: String,
}

/// `schema.table name: definition` for policies and rules.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Named {
    pub on: String,
    pub name: String,
    pub definition: String,
}

/// Everything [`CatalogSnapshot::take`] captures, each list sorted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CatalogSnapshot {
    pub relations: Vec<Relation>,
    pub indexes: Vec<Index>,
    pub constraints: Vec<Constraint>,
    pub sequences: Vec<Sequence>,
    pub publications: Vec<Publication>,
    pub slots: Vec<Slot>,
    pub triggers: Vec<Trigger>,
    pub policies: Vec<Named>,
    pub rules: Vec<Named>,
}

/// Schema `pgghost` holds the history of runs, which every run writes to (dry runs and
/// refusals included): the snapshot is of everything else.
const USER_SCHEMAS: &str = "n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast', 'pgghost') \
                            AND n.nspname NOT LIKE 'pg\\_temp\\_%' AND n.nspname NOT LIKE 'pg\\_toast\\_temp\\_%'";

async fn query(client: &Client, what: &str, sql: &str) -> Vec<tokio_postgres::Row> {
    client.query(sql, &[]).await.unwrap_or_else(|e| panic!("catalog snapshot ({what}): {}\n{sql}", db_message(&e)))
}

impl CatalogSnapshot {
    /// Reads the catalogs of the database `client` is connected to.
    pub async fn take(client: &Client) -> CatalogSnapshot {
        let mut relations: Vec<(u32, Relation)> = query(
            client,
            "relations",
            &format!(
                "SELECT c.oid, n.nspname::text, c.relname::text, c.relkind::text, c.relpersistence::text,
                        pg_get_userbyid(c.relowner)::text, c.relacl::text, array_to_string(c.reloptions, ','),
                        c.relreplident::text, c.relrowsecurity, obj_description(c.oid, 'pg_class'),
                        CASE WHEN c.relkind IN ('v', 'm') THEN pg_get_viewdef(c.oid) END
                   FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                  WHERE {USER_SCHEMAS}"
            ),
        )
        .await
        .iter()
        .map(|r| {
            let rel = Relation {
                schema: r.get(1),
                name: r.get(2),
                kind: r.get(3),
                persistence: r.get(4),
                owner: r.get(5),
                acl: r.get(6),
                options: r.get(7),
                replica_identity: r.get(8),
                row_security: r.get(9),
                comment: r.get(10),
                definition: r.get(11),
                columns: Vec::new(),
            };
            (r.get::<_, u32>(0), rel)
        })
        .collect();
        let columns = query(
            client,
            "columns",
            &format!(
                "SELECT a.attrelid, a.attnum, a.attname::text, format_type(a.atttypid, a.atttypmod), a.attnotnull,
                        pg_get_expr(d.adbin, d.adrelid), a.attidentity::text, a.attgenerated::text,
                        a.attstorage::text, a.attcompression::text,
                        CASE WHEN a.attcollation <> 0 THEN (SELECT collname::text FROM pg_collation WHERE oid = a.attcollation) END,
                        col_description(a.attrelid, a.attnum)
                   FROM pg_attribute a
                   JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
                   LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
                  WHERE a.attnum > 0 AND NOT a.attisdropped AND {USER_SCHEMAS}
                  ORDER BY a.attrelid, a.attnum"
            ),
        )
        .await;
        for (oid, rel) in &mut relations {
            rel.columns = columns
                .iter()
                .filter(|r| r.get::<_, u32>(0) == *oid)
                .map(|r| Column {
                    attnum: r.get(1),
                    name: r.get(2),
                    type_name: r.get(3),
                    not_null: r.get(4),
                    default: r.get(5),
                    identity: r.get(6),
                    generated: r.get(7),
                    storage: r.get(8),
                    compression: r.get(9),
                    collation: r.get(10),
                    comment: r.get(11),
                })
                .collect();
        }
        // OIDs differ between a table and its re-creation: they are not part of the snapshot.
        let mut relations: Vec<Relation> = relations.into_iter().map(|(_, rel)| rel).collect();
        relations.sort();

        let mut indexes: Vec<Index> = query(
            client,
            "indexes",
            &format!(
                "SELECT n.nspname::text, t.relname::text, c.relname::text, pg_get_indexdef(c.oid),
                        i.indisprimary, i.indisunique, i.indisreplident, i.indisclustered, i.indisvalid
                   FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_class t ON t.oid = i.indrelid
                   JOIN pg_namespace n ON n.oid = c.relnamespace
                  WHERE {USER_SCHEMAS}"
            ),
        )
        .await
        .iter()
        .map(|r| Index {
            schema: r.get(0),
            table: r.get(1),
            name: r.get(2),
            definition: r.get(3),
            primary: r.get(4),
            unique: r.get(5),
            replica_identity: r.get(6),
            clustered: r.get(7),
            valid: r.get(8),
        })
        .collect();
        indexes.sort();

        let mut constraints: Vec<Constraint> = query(
            client,
            "constraints",
            &format!(
                "SELECT n.nspname::text, coalesce(t.relname, ty.typname)::text, co.conname::text, co.contype::text,
                        pg_get_constraintdef(co.oid), co.convalidated, co.condeferrable,
                        obj_description(co.oid, 'pg_constraint')
                   FROM pg_constraint co JOIN pg_namespace n ON n.oid = co.connamespace
                   LEFT JOIN pg_class t ON t.oid = co.conrelid LEFT JOIN pg_type ty ON ty.oid = co.contypid
                  WHERE {USER_SCHEMAS}"
            ),
        )
        .await
        .iter()
        .map(|r| Constraint {
            schema: r.get(0),
            on: r.get(1),
            name: r.get(2),
            kind: r.get(3),
            definition: r.get(4),
            validated: r.get(5),
            deferrable: r.get(6),
            comment: r.get(7),
        })
        .collect();
        constraints.sort();

        let mut sequences: Vec<Sequence> = query(
            client,
            "sequences",
            &format!(
                "SELECT n.nspname::text, c.relname::text, format_type(s.seqtypid, NULL), s.seqstart, s.seqincrement,
                        s.seqmin, s.seqmax, s.seqcache, s.seqcycle,
                        (SELECT tn.nspname || '.' || t.relname || '.' || a.attname || ' (' || d.deptype::text || ')'
                           FROM pg_depend d JOIN pg_class t ON t.oid = d.refobjid
                           JOIN pg_namespace tn ON tn.oid = t.relnamespace
                           JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
                          WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
                            AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i') AND d.refobjsubid > 0
                          LIMIT 1)
                   FROM pg_sequence s JOIN pg_class c ON c.oid = s.seqrelid JOIN pg_namespace n ON n.oid = c.relnamespace
                  WHERE {USER_SCHEMAS}"
            ),
        )
        .await
        .iter()
        .map(|r| Sequence {
            schema: r.get(0),
            name: r.get(1),
            type_name: r.get(2),
            start: r.get(3),
            increment: r.get(4),
            min: r.get(5),
            max: r.get(6),
            cache: r.get(7),
            cycle: r.get(8),
            owned_by: r.get(9),
        })
        .collect();
        sequences.sort();

        let mut publications: Vec<Publication> = query(
            client,
            "publications",
            "SELECT p.pubname::text, pg_get_userbyid(p.pubowner)::text, p.puballtables,
                    concat_ws(',', CASE WHEN p.pubinsert THEN 'insert' END, CASE WHEN p.pubupdate THEN 'update' END,
                              CASE WHEN p.pubdelete THEN 'delete' END, CASE WHEN p.pubtruncate THEN 'truncate' END,
                              CASE WHEN p.pubviaroot THEN 'via_root' END),
                    coalesce((SELECT array_agg(pt.schemaname || '.' || pt.tablename
                                               || coalesce(' (' || array_to_string(pt.attnames, ',') || ')', '')
                                               || coalesce(' WHERE ' || pt.rowfilter, '')
                                               ORDER BY pt.schemaname, pt.tablename)
                                FROM pg_publication_tables pt WHERE pt.pubname = p.pubname), '{}')
               FROM pg_publication p",
        )
        .await
        .iter()
        .map(|r| Publication { name: r.get(0), owner: r.get(1), all_tables: r.get(2), actions: r.get(3), tables: r.get(4) })
        .collect();
        publications.sort();

        let mut slots: Vec<Slot> = query(
            client,
            "replication slots",
            "SELECT slot_name::text, plugin::text, slot_type, temporary
               FROM pg_replication_slots WHERE database = current_database()",
        )
        .await
        .iter()
        .map(|r| Slot { name: r.get(0), plugin: r.get(1), slot_type: r.get(2), temporary: r.get(3) })
        .collect();
        slots.sort();

        let mut triggers: Vec<Trigger> = query(
            client,
            "triggers",
            &format!(
                "SELECT n.nspname::text, c.relname::text, tg.tgname::text, pg_get_triggerdef(tg.oid), tg.tgenabled::text
                   FROM pg_trigger tg JOIN pg_class c ON c.oid = tg.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace
                  WHERE NOT tg.tgisinternal AND {USER_SCHEMAS}"
            ),
        )
        .await
        .iter()
        .map(|r| Trigger { schema: r.get(0), table: r.get(1), name: r.get(2), definition: r.get(3), enabled: r.get(4) })
        .collect();
        triggers.sort();

        let mut policies: Vec<Named> = query(
            client,
            "policies",
            "SELECT schemaname || '.' || tablename, policyname::text,
                    concat_ws(' ', permissive, cmd, array_to_string(roles, ','), 'USING', qual, 'CHECK', with_check)
               FROM pg_policies",
        )
        .await
        .iter()
        .map(|r| Named { on: r.get(0), name: r.get(1), definition: r.get(2) })
        .collect();
        policies.sort();

        let mut rules: Vec<Named> = query(
            client,
            "rules",
            "SELECT schemaname || '.' || tablename, rulename::text, definition FROM pg_rules
              WHERE schemaname NOT IN ('pg_catalog', 'information_schema')",
        )
        .await
        .iter()
        .map(|r| Named { on: r.get(0), name: r.get(1), definition: r.get(2) })
        .collect();
        rules.sort();

        CatalogSnapshot { relations, indexes, constraints, sequences, publications, slots, triggers, policies, rules }
    }

    /// `- before` / `+ after` lines for every item that is not in both, per category.
    pub fn diff(&self, after: &CatalogSnapshot) -> Vec<String> {
        let mut out = Vec::new();
        diff_list(&mut out, "relation", &self.relations, &after.relations);
        diff_list(&mut out, "index", &self.indexes, &after.indexes);
        diff_list(&mut out, "constraint", &self.constraints, &after.constraints);
        diff_list(&mut out, "sequence", &self.sequences, &after.sequences);
        diff_list(&mut out, "publication", &self.publications, &after.publications);
        diff_list(&mut out, "slot", &self.slots, &after.slots);
        diff_list(&mut out, "trigger", &self.triggers, &after.triggers);
        diff_list(&mut out, "policy", &self.policies, &after.policies);
        diff_list(&mut out, "rule", &self.rules, &after.rules);
        out
    }
}

fn diff_list<T: Debug + PartialEq>(out: &mut Vec<String>, what: &str, before: &[T], after: &[T]) {
    for b in before {
        if !after.contains(b) {
            out.push(format!("- {what} {b:?}"));
        }
    }
    for a in after {
        if !before.contains(a) {
            out.push(format!("+ {what} {a:?}"));
        }
    }
}

/// `after` is the same catalog as `before`; panics listing what appeared and disappeared.
pub fn assert_catalog_unchanged(before: &CatalogSnapshot, after: &CatalogSnapshot) {
    let diff = before.diff(after);
    assert!(diff.is_empty(), "the catalogs changed ({} differences):\n{}", diff.len(), diff.join("\n"));
}

/// No replication slot in this database and no publication: what every run must leave.
pub async fn assert_no_slots_or_publications(client: &Client) {
    let snap = CatalogSnapshot::take(client).await;
    assert!(
        snap.slots.is_empty() && snap.publications.is_empty(),
        "left behind: slots {:?}, publications {:?}",
        snap.slots,
        snap.publications
    );
}
