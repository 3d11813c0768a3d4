//! Reading the objects that hang on the table by OID, with their definitions as the
//! server deparses them under an empty `search_path` (every name schema-qualified, so the
//! text binds to whatever carries the name when it runs again).
//!
//! Must run inside a transaction: the `search_path` is set with `set_config(.., true)` and
//! put back before returning.

use super::{ForeignKey, Function, Grant, Policy, PublicationMember, Rule, Trigger, View};
use super::{ColumnDependent, Dependents, SecurityLabel};
use crate::error::{Context, Result};
use crate::sql::QualifiedName;
use tokio_postgres::GenericClient;

/// Reads everything that depends on the table `oid`. `own_publication` (pg-ghost's own) is
/// left out.
pub async fn read(tx: &impl GenericClient, oid: u32, own_publication: &str) -> Result<Dependents> {
    with_empty_search_path(tx, read_all(tx, oid, own_publication)).await
}

/// Runs `read` with `search_path` empty for the transaction, so that what the server
/// deparses names every object with its schema; puts it back after.
pub(super) async fn with_empty_search_path<T>(tx: &impl GenericClient, read: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    // One round trip each way (no prepare): this runs under the cut-over's lock. The CTE is
    // read (the setting as it was) before set_config runs.
    let previous: String = tx
        .query_typed_one(
            "WITH was AS MATERIALIZED (SELECT current_setting('search_path') AS path)
             SELECT path, set_config('search_path', '', true) FROM was",
            &[],
        )
        .await
        .context("emptying search_path")?
        .try_get(0)?;
    let read = read.await;
    tx.query_typed("SELECT set_config('search_path', $1, true)", &[(&previous, tokio_postgres::types::Type::TEXT)])
        .await
        .context("restoring search_path")?;
    read
}

async fn read_all(tx: &impl GenericClient, oid: u32, own_publication: &str) -> Result<Dependents> {
    // This runs under the cut-over's lock, where every round trip holds up the writers: the
    // reads are polled together, so that tokio-postgres sends them one after the other
    // without waiting for answers (pipelining), and the server answers them in that order.
    let force_row_security = async {
        let row = tx
            .query_one("SELECT relforcerowsecurity FROM pg_class WHERE oid = $1", &[&oid])
            .await
            .context("reading the table's row security")?;
        Ok::<bool, crate::error::Error>(row.try_get(0)?)
    };
    let (
        (views, foreign_rules, _),
        materialized_views,
        rules,
        triggers,
        policies,
        publications,
        foreign_keys,
        functions,
        row_type_users,
        column_dependents,
        force_row_security,
        security_labels,
        partitions,
    ) = tokio::try_join!(
        biased;
        rewrite_dependents(tx, oid),
        super::materialized::read(tx, oid),
        rules(tx, oid),
        triggers(tx, oid),
        policies(tx, oid),
        publications(tx, oid, own_publication),
        foreign_keys(tx, oid),
        functions(tx, oid),
        row_type_users(tx, oid),
        column_dependents(tx, oid),
        force_row_security,
        security_labels(tx, oid),
        super::partitions::read(tx, oid, own_publication),
    )?;
    Ok(Dependents {
        views,
        materialized_views,
        foreign_rules,
        rules,
        triggers,
        policies,
        publications,
        foreign_keys,
        functions,
        row_type_users,
        column_dependents,
        force_row_security,
        security_labels,
        partitions,
    })
}

/// Views (re-pointed), rules of other relations (replaced) and materialized views, read
/// from the rewrite rules that depend on the table.
pub(super) async fn rewrite_dependents(tx: &impl GenericClient, oid: u32) -> Result<(Vec<View>, Vec<Rule>, Vec<QualifiedName>)> {
    let rows = tx
        .query(
            "SELECT DISTINCT r.oid AS rule, r.rulename::text AS rulename, v.relkind::text AS relkind,
                    n.nspname::text AS schema, v.relname::text AS name,
                    CASE WHEN r.rulename = '_RETURN' AND v.relkind = 'v' THEN pg_get_viewdef(v.oid) END AS viewdef,
                    CASE WHEN r.rulename <> '_RETURN' THEN pg_get_ruledef(r.oid) END AS ruledef,
                    coalesce(v.reloptions, '{}') AS options, pg_has_role(v.relowner, 'USAGE') AS owned
               FROM pg_depend d
               JOIN pg_rewrite r ON r.oid = d.objid
               JOIN pg_class v ON v.oid = r.ev_class
               JOIN pg_namespace n ON n.oid = v.relnamespace
              WHERE d.classid = 'pg_rewrite'::regclass AND d.refclassid = 'pg_class'::regclass
                AND d.refobjid = $1 AND r.ev_class <> $1
              ORDER BY r.oid",
            &[&oid],
        )
        .await
        .context("reading dependent views and rules")?;
    let (mut views, mut rules, mut matviews) = (Vec::new(), Vec::new(), Vec::new());
    for r in rows {
        let name = QualifiedName::new(r.try_get::<_, String>("schema")?, r.try_get::<_, String>("name")?);
        let relkind: String = r.try_get("relkind")?;
        let owned: bool = r.try_get("owned")?;
        if let Some(definition) = r.try_get::<_, Option<String>>("viewdef")? {
            views.push(View { name, definition, options: r.try_get("options")?, owned });
        } else if let Some(definition) = r.try_get::<_, Option<String>>("ruledef")? {
            rules.push(Rule { name: r.try_get("rulename")?, relation: name, definition, enabled: "O".into(), comment: None, owned });
        } else if relkind == "m" {
            matviews.push(name);
        }
    }
    Ok((views, rules, matviews))
}

pub(super) async fn rules(tx: &impl GenericClient, oid: u32) -> Result<Vec<Rule>> {
    let rows = tx
        .query(
            "SELECT r.rulename::text, pg_get_ruledef(r.oid), r.ev_enabled::text, obj_description(r.oid, 'pg_rewrite'),
                    n.nspname::text, c.relname::text
               FROM pg_rewrite r JOIN pg_class c ON c.oid = r.ev_class JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE r.ev_class = $1 AND r.rulename <> '_RETURN' ORDER BY 1",
            &[&oid],
        )
        .await
        .context("reading the table's rules")?;
    rows.iter()
        .map(|r| {
            Ok(Rule {
                name: r.try_get(0)?,
                definition: r.try_get(1)?,
                enabled: r.try_get(2)?,
                comment: r.try_get(3)?,
                relation: QualifiedName::new(r.try_get::<_, String>(4)?, r.try_get::<_, String>(5)?),
                owned: true,
            })
        })
        .collect()
}

pub(super) async fn triggers(tx: &impl GenericClient, oid: u32) -> Result<Vec<Trigger>> {
    // Internal triggers implement foreign keys and come with the constraint; on a partition,
    // the copies of its parent's triggers (`tgparentid`) come with the parent's.
    let rows = tx
        .query(
            "SELECT tgname::text, pg_get_triggerdef(oid), tgenabled::text, obj_description(oid, 'pg_trigger')
               FROM pg_trigger WHERE tgrelid = $1 AND NOT tgisinternal AND tgparentid = 0 ORDER BY 1",
            &[&oid],
        )
        .await
        .context("reading the table's triggers")?;
    rows.iter()
        .map(|r| Ok(Trigger { name: r.try_get(0)?, definition: r.try_get(1)?, enabled: r.try_get(2)?, comment: r.try_get(3)? }))
        .collect()
}

pub(super) async fn policies(tx: &impl GenericClient, oid: u32) -> Result<Vec<Policy>> {
    let rows = tx
        .query(
            "SELECT p.polname::text, p.polpermissive, p.polcmd::text,
                    CASE WHEN p.polroles = '{0}' THEN NULL
                         ELSE ARRAY(SELECT rolname::text FROM pg_roles WHERE oid = ANY (p.polroles) ORDER BY rolname) END,
                    pg_get_expr(p.polqual, p.polrelid), pg_get_expr(p.polwithcheck, p.polrelid),
                    obj_description(p.oid, 'pg_policy')
               FROM pg_policy p WHERE p.polrelid = $1 ORDER BY 1",
            &[&oid],
        )
        .await
        .context("reading the table's policies")?;
    rows.iter()
        .map(|r| {
            Ok(Policy {
                name: r.try_get(0)?,
                permissive: r.try_get(1)?,
                command: r.try_get(2)?,
                roles: r.try_get(3)?,
                using: r.try_get(4)?,
                with_check: r.try_get(5)?,
                comment: r.try_get(6)?,
            })
        })
        .collect()
}

pub(super) async fn publications(tx: &impl GenericClient, oid: u32, own: &str) -> Result<Vec<PublicationMember>> {
    let rows = tx
        .query(
            "SELECT p.pubname::text, pg_has_role(p.pubowner, 'USAGE'),
                    CASE WHEN pr.prattrs IS NULL THEN NULL
                         ELSE ARRAY(SELECT a.attname::text FROM unnest(pr.prattrs::int2[]) WITH ORDINALITY k(n, i)
                                      JOIN pg_attribute a ON a.attrelid = pr.prrelid AND a.attnum = k.n ORDER BY k.i) END,
                    pg_get_expr(pr.prqual, pr.prrelid)
               FROM pg_publication_rel pr JOIN pg_publication p ON p.oid = pr.prpubid
              WHERE pr.prrelid = $1 AND p.pubname <> $2 ORDER BY 1",
            &[&oid, &own],
        )
        .await
        .context("reading the publications that list the table")?;
    rows.iter()
        .map(|r| Ok(PublicationMember { publication: r.try_get(0)?, owned: r.try_get(1)?, columns: r.try_get(2)?, row_filter: r.try_get(3)? }))
        .collect()
}

async fn foreign_keys(tx: &impl GenericClient, oid: u32) -> Result<Vec<ForeignKey>> {
    // conparentid = 0: a foreign key on a partitioned table is cloned onto each partition,
    // and one that references a partitioned table has a copy for each partition it
    // references; only the one the DBA created is moved (the copies follow it). A key that
    // references one partition of a partitioned table is the DBA's own and moves too: added
    // again after the renames, its definition names the new partition.
    let rows = tx
        .query(
            "SELECT con.conname::text, n.nspname::text, c.relname::text, c.relkind::text, pg_get_constraintdef(con.oid),
                    obj_description(con.oid, 'pg_constraint'), con.conrelid = con.confrelid, pg_has_role(c.relowner, 'USAGE'),
                    con.convalidated,
                    ARRAY(SELECT a.attname::text FROM unnest(con.conkey) WITH ORDINALITY k(n, i)
                            JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.n ORDER BY k.i),
                    ARRAY(SELECT a.attname::text FROM unnest(con.confkey) WITH ORDINALITY k(n, i)
                            JOIN pg_attribute a ON a.attrelid = con.confrelid AND a.attnum = k.n ORDER BY k.i),
                    con.oid
               FROM pg_constraint con
               JOIN pg_class c ON c.oid = con.conrelid
               JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE con.contype = 'f' AND con.conparentid = 0
                AND (con.confrelid = $1 OR con.confrelid IN (SELECT relid FROM pg_partition_tree($1::oid::regclass)))
              ORDER BY 2, 3, 1",
            &[&oid],
        )
        .await
        .context("reading incoming foreign keys")?;
    let mut keys = Vec::new();
    for r in &rows {
        let partitioned = r.try_get::<_, String>(3)? == "p";
        let leaves = match partitioned {
            true => leaf_keys(tx, r.try_get(11)?).await?,
            false => Vec::new(),
        };
        keys.push(ForeignKey {
                name: r.try_get(0)?,
                table: QualifiedName::new(r.try_get::<_, String>(1)?, r.try_get::<_, String>(2)?),
                partitioned,
                leaves,
                definition: r.try_get(4)?,
                comment: r.try_get(5)?,
                self_reference: r.try_get(6)?,
                owned: r.try_get(7)?,
                validated: r.try_get(8)?,
                columns: r.try_get(9)?,
                referenced_columns: r.try_get(10)?,
            });
    }
    Ok(keys)
}

/// The copies of a partitioned table's foreign key on its leaf partitions: (partition,
/// constraint name there).
async fn leaf_keys(tx: &impl GenericClient, constraint: u32) -> Result<Vec<(QualifiedName, String)>> {
    let rows = tx
        .query(
            "WITH RECURSIVE copies(oid) AS (
                 SELECT oid FROM pg_constraint WHERE conparentid = $1
                 UNION ALL SELECT c.oid FROM pg_constraint c JOIN copies ON c.conparentid = copies.oid)
             SELECT n.nspname::text, r.relname::text, c.conname::text
               FROM copies JOIN pg_constraint c ON c.oid = copies.oid
               JOIN pg_class r ON r.oid = c.conrelid JOIN pg_namespace n ON n.oid = r.relnamespace
              WHERE r.relkind = 'r' ORDER BY 1, 2",
            &[&constraint],
        )
        .await
        .context("reading the partitions' copies of a foreign key")?;
    rows.iter()
        .map(|r| Ok((QualifiedName::new(r.try_get::<_, String>(0)?, r.try_get::<_, String>(1)?), r.try_get::<_, String>(2)?)))
        .collect()
}

/// The table's row type and its array type.
const ROW_TYPES: &str = "SELECT reltype FROM pg_class WHERE oid = $1
                          UNION ALL SELECT typarray FROM pg_type WHERE oid = (SELECT reltype FROM pg_class WHERE oid = $1)";

async fn functions(tx: &impl GenericClient, oid: u32) -> Result<Vec<Function>> {
    let sql = format!(
        "SELECT p.oid, p.oid::regprocedure::text, p.prokind::text, pg_get_userbyid(p.proowner), pg_has_role(p.proowner, 'USAGE'),
                CASE WHEN p.prokind <> 'a' THEN pg_get_functiondef(p.oid) END,
                obj_description(p.oid, 'pg_proc'), p.proacl IS NOT NULL,
                ARRAY(SELECT a.privilege_type || CASE WHEN a.is_grantable THEN '+' ELSE '' END
                        FROM aclexplode(p.proacl) a ORDER BY a.grantee, a.privilege_type),
                ARRAY(SELECT CASE WHEN a.grantee = 0 THEN NULL ELSE pg_get_userbyid(a.grantee) END
                        FROM aclexplode(p.proacl) a ORDER BY a.grantee, a.privilege_type),
                EXISTS (SELECT 1 FROM pg_depend e WHERE e.classid = 'pg_proc'::regclass AND e.objid = p.oid AND e.deptype = 'e'),
                ARRAY(SELECT pg_describe_object(u.classid, u.objid, u.objsubid) FROM pg_depend u
                       WHERE u.refclassid = 'pg_proc'::regclass AND u.refobjid = p.oid AND u.deptype = 'n' ORDER BY 1),
                ARRAY(SELECT s.provider FROM pg_seclabel s WHERE s.classoid = 'pg_proc'::regclass AND s.objoid = p.oid ORDER BY 1),
                ARRAY(SELECT s.label FROM pg_seclabel s WHERE s.classoid = 'pg_proc'::regclass AND s.objoid = p.oid ORDER BY s.provider)
           FROM pg_proc p
          WHERE p.oid IN (SELECT d.objid FROM pg_depend d
                           WHERE d.classid = 'pg_proc'::regclass AND d.refclassid = 'pg_type'::regclass
                             AND d.deptype = 'n' AND d.refobjid IN ({ROW_TYPES}))
          ORDER BY 2"
    );
    let rows = tx.query(&sql, &[&oid]).await.context("reading functions that use the table's row type")?;
    rows.iter()
        .map(|r| {
            let privileges: Vec<String> = r.try_get(8)?;
            let grantees: Vec<Option<String>> = r.try_get(9)?;
            Ok(Function {
                signature: r.try_get(1)?,
                kind: r.try_get(2)?,
                owner: r.try_get(3)?,
                owned: r.try_get(4)?,
                definition: r.try_get(5)?,
                comment: r.try_get(6)?,
                explicit_acl: r.try_get(7)?,
                grants: privileges
                    .into_iter()
                    .zip(grantees)
                    .map(|(p, grantee)| Grant { grantable: p.ends_with('+'), privilege: p.trim_end_matches('+').to_string(), grantee })
                    .collect(),
                in_extension: r.try_get(10)?,
                used_by: r.try_get(11)?,
                security_labels: r.try_get::<_, Vec<String>>(12)?.into_iter().zip(r.try_get::<_, Vec<String>>(13)?).collect(),
            })
        })
        .collect()
}

/// What else is typed with the table's row type: columns of other tables, domains, casts.
async fn row_type_users(tx: &impl GenericClient, oid: u32) -> Result<Vec<String>> {
    let sql = format!(
        "SELECT pg_describe_object(d.classid, d.objid, d.objsubid) FROM pg_depend d
          WHERE d.refclassid = 'pg_type'::regclass AND d.refobjid IN ({ROW_TYPES})
            AND d.deptype = 'n' AND d.classid <> 'pg_proc'::regclass
          ORDER BY 1"
    );
    let rows = tx.query(&sql, &[&oid]).await.context("reading what uses the table's row type")?;
    rows.iter().map(|r| r.try_get::<_, String>(0).map_err(Into::into)).collect()
}

/// Objects that depend on single columns (what blocks a DROP or a type change of them).
pub(super) async fn column_dependents(tx: &impl GenericClient, oid: u32) -> Result<Vec<ColumnDependent>> {
    let rows = tx
        .query(
            "SELECT a.attname::text, d.classid::regclass::text, pg_describe_object(d.classid, d.objid, d.objsubid)
               FROM pg_depend d JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
              WHERE d.refclassid = 'pg_class'::regclass AND d.refobjid = $1 AND d.refobjsubid > 0 AND d.deptype = 'n'
              ORDER BY 1, 3",
            &[&oid],
        )
        .await
        .context("reading column dependencies")?;
    rows.iter()
        .map(|r| Ok(ColumnDependent { column: r.try_get(0)?, catalog: r.try_get(1)?, object: r.try_get(2)? }))
        .collect()
}

/// The security labels of a relation and its columns.
pub(super) async fn security_labels(tx: &impl GenericClient, oid: u32) -> Result<Vec<SecurityLabel>> {
    let rows = tx
        .query(
            "SELECT s.provider, a.attname::text, s.label FROM pg_seclabel s
               LEFT JOIN pg_attribute a ON a.attrelid = s.objoid AND a.attnum = s.objsubid AND s.objsubid > 0
              WHERE s.classoid = 'pg_class'::regclass AND s.objoid = $1
              ORDER BY s.objsubid, s.provider",
            &[&oid],
        )
        .await
        .context("reading security labels")?;
    rows.iter().map(|r| Ok(SecurityLabel { provider: r.try_get(0)?, column: r.try_get(1)?, label: r.try_get(2)? })).collect()
}
