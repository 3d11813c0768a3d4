//! Materialized views that read the table, directly or through other materialized views.
//!
//! A view can be pointed at the new table in place; a materialized view cannot: its rows
//! were computed from the old table, and its query is fixed when it is created. So each is
//! built again on the ghost before the cut-over, under a temporary name (`_<name>_gho`),
//! populated (or `WITH NO DATA`, as the original), with its indexes, owner, grants,
//! comments, storage parameters, tablespace, column settings and `CLUSTER ON`. The swap
//! then gives it the original's name and index names, points the views that read the
//! original at it, and drops the original, so the old table has nothing left on it.
//!
//! Its rows are what its query returned on the ghost when it was built, just before the
//! cut-over: as if refreshed then. A plain `ALTER TABLE` keeps the rows of the last refresh;
//! no tool can keep those (PostgreSQL fills a materialized view only from its query).
//!
//! The query is the server's own text (`pg_get_viewdef`, names qualified) with the table's
//! (and rebuilt materialized views') names replaced through the parse tree
//! ([`crate::sqltree::retarget_relations`]); the built view's dependencies are then checked
//! in the catalog: it must read the ghost and nothing it replaces.

use super::View;
use crate::error::{Context, Error, ErrorKind, Result};
use crate::ghost::temp_name;
use crate::sql::{fit_ident, ident, literal, QualifiedName};
use tokio_postgres::GenericClient;

/// A materialized view that reads the table, as the checks and the swap need it: what moves
/// with it and what stops it. How to build it again is a [`Recipe`], read only where it is
/// built (not under the cut-over's lock).
#[derive(Clone, Debug)]
pub struct MaterializedView {
    pub oid: u32,
    pub name: QualifiedName,
    pub owned: bool,
    /// Views that read it: pointed at the rebuilt one in the swap.
    pub views: Vec<View>,
    /// What else depends on it and cannot follow, as PostgreSQL describes it.
    pub others: Vec<String>,
}

/// Everything it takes to build a materialized view again as it is.
#[derive(Clone, Debug)]
pub struct Recipe {
    pub oid: u32,
    pub name: QualifiedName,
    /// `pg_get_viewdef`, names qualified.
    pub definition: String,
    pub populated: bool,
    pub owner: String,
    /// `reloptions`: `fillfactor=70`, `autovacuum_enabled=false`, ...
    pub options: Vec<String>,
    pub tablespace: Option<String>,
    pub comment: Option<String>,
    pub security_labels: Vec<super::SecurityLabel>,
    /// GRANT statements for the rebuilt view, `{}` standing for its name.
    pub grants: Vec<String>,
    pub columns: Vec<ColumnSettings>,
    pub indexes: Vec<Index>,
}

#[derive(Clone, Debug, Default)]
pub struct ColumnSettings {
    pub name: String,
    pub comment: Option<String>,
    /// `attstattarget` when set (not -1).
    pub statistics: Option<i32>,
}

#[derive(Clone, Debug)]
pub struct Index {
    pub name: String,
    /// `pg_get_indexdef`.
    pub definition: String,
    pub comment: Option<String>,
    pub clustered: bool,
}

/// A materialized view built on the ghost, waiting for the swap.
#[derive(Clone, Debug)]
pub struct Built {
    pub view: Recipe,
    pub temp: QualifiedName,
}

impl Recipe {
    /// The name it is built under before the swap.
    pub fn temp_name(&self) -> QualifiedName {
        self.name.sibling(fit_ident(&format!("_{}_gho", self.name.name)))
    }

    /// What the original is called between the renames and its drop, in the swap.
    fn old_name(&self) -> String {
        fit_ident(&format!("_{}_del", self.name.name))
    }

    /// Builds it under `temp` from `query` (the definition already retargeted).
    pub fn build_sql(&self, temp: &QualifiedName, query: &str) -> Result<Vec<String>> {
        let t = temp.sql();
        let with = match self.options.is_empty() {
            true => String::new(),
            false => format!(" WITH ({})", storage_options(&self.options)),
        };
        let tablespace = self.tablespace.as_deref().map(|ts| format!(" TABLESPACE {}", ident(ts))).unwrap_or_default();
        let data = if self.populated { "WITH DATA" } else { "WITH NO DATA" };
        let query = query.trim().trim_end_matches(';');
        let mut sql = vec![
            format!("CREATE MATERIALIZED VIEW {t}{with}{tablespace} AS {query} {data}"),
            format!("ALTER MATERIALIZED VIEW {t} OWNER TO {}", ident(&self.owner)),
        ];
        sql.extend(self.grants.iter().map(|g| g.replace("{}", &t)));
        if let Some(c) = &self.comment {
            sql.push(format!("COMMENT ON MATERIALIZED VIEW {t} IS {}", literal(c)));
        }
        sql.extend(self.security_labels.iter().map(|l| l.sql("MATERIALIZED VIEW", temp)));
        for c in &self.columns {
            if let Some(comment) = &c.comment {
                sql.push(format!("COMMENT ON COLUMN {t}.{} IS {}", ident(&c.name), literal(comment)));
            }
            if let Some(n) = c.statistics {
                sql.push(format!("ALTER MATERIALIZED VIEW {t} ALTER COLUMN {} SET STATISTICS {n}", ident(&c.name)));
            }
        }
        for index in &self.indexes {
            let name = temp_name(&index.name);
            sql.push(crate::sqltree::retarget_index(&index.definition, &name, temp)?);
            if let Some(c) = &index.comment {
                sql.push(format!("COMMENT ON INDEX {} IS {}", temp.sibling(name.clone()).sql(), literal(c)));
            }
            if index.clustered {
                sql.push(format!("ALTER MATERIALIZED VIEW {t} CLUSTER ON {}", ident(&name)));
            }
        }
        if self.populated {
            sql.push(format!("ANALYZE {t}"));
        }
        Ok(sql)
    }

    /// Takes ACCESS EXCLUSIVE on the original and leaves it as it was (`LOCK TABLE` refuses
    /// materialized views): renamed away and back, so the cut-over bounds the wait for its
    /// readers as it bounds the wait for the table's.
    pub fn lock_sql(&self) -> [String; 2] {
        let aside = self.name.sibling(self.old_name());
        [
            format!("ALTER MATERIALIZED VIEW {} RENAME TO {}", self.name.sql(), ident(&aside.name)),
            format!("ALTER MATERIALIZED VIEW {} RENAME TO {}", aside.sql(), ident(&self.name.name)),
        ]
    }
}

impl Built {
    /// In the swap, before the views are pointed at it: the original steps aside and the
    /// rebuilt one takes its names.
    pub fn rename_sql(&self) -> Vec<String> {
        let v = &self.view;
        let mut sql = Vec::new();
        for index in &v.indexes {
            let old = crate::cutover::swap::old_object_name(&index.name);
            sql.push(format!("ALTER INDEX {} RENAME TO {}", v.name.sibling(index.name.clone()).sql(), ident(&old)));
        }
        sql.push(format!("ALTER MATERIALIZED VIEW {} RENAME TO {}", v.name.sql(), ident(&v.old_name())));
        sql.push(format!("ALTER MATERIALIZED VIEW {} RENAME TO {}", self.temp.sql(), ident(&v.name.name)));
        for index in &v.indexes {
            sql.push(format!("ALTER INDEX {} RENAME TO {}", v.name.sibling(temp_name(&index.name)).sql(), ident(&index.name)));
        }
        sql
    }

    /// In the swap, after every view reads the rebuilt one: the original goes.
    pub fn drop_sql(&self) -> String {
        format!("DROP MATERIALIZED VIEW {}", self.view.name.sibling(self.view.old_name()).sql())
    }
}

fn storage_options(options: &[String]) -> String {
    options
        .iter()
        .filter_map(|o| o.split_once('='))
        .map(|(k, v)| format!("{} = {}", ident(k), literal(v)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The materialized views that read the table `oid` directly or through one another, each
/// after those it reads.
pub async fn read(tx: &impl GenericClient, oid: u32) -> Result<Vec<MaterializedView>> {
    let rows = tx
        .query(
            "WITH RECURSIVE reads(oid, depth) AS (
                 SELECT r.ev_class, 1 FROM pg_depend d JOIN pg_rewrite r ON r.oid = d.objid JOIN pg_class c ON c.oid = r.ev_class
                  WHERE d.classid = 'pg_rewrite'::regclass AND d.refclassid = 'pg_class'::regclass AND d.refobjid = $1
                    AND c.relkind = 'm'
                 UNION
                 SELECT r.ev_class, reads.depth + 1 FROM reads
                   JOIN pg_depend d ON d.refobjid = reads.oid AND d.classid = 'pg_rewrite'::regclass AND d.refclassid = 'pg_class'::regclass
                   JOIN pg_rewrite r ON r.oid = d.objid JOIN pg_class c ON c.oid = r.ev_class
                  WHERE c.relkind = 'm' AND r.ev_class <> reads.oid)
             SELECT m.oid, n.nspname::text, m.relname::text, pg_has_role(m.relowner, 'USAGE')
               FROM (SELECT oid, max(depth) AS depth FROM reads GROUP BY oid) o
               JOIN pg_class m ON m.oid = o.oid JOIN pg_namespace n ON n.oid = m.relnamespace
              ORDER BY o.depth, m.oid",
            &[&oid],
        )
        .await
        .context("reading the materialized views that read the table")?;
    let mut out = Vec::new();
    for r in rows {
        let oid: u32 = r.try_get(0)?;
        let name = QualifiedName::new(r.try_get::<_, String>(1)?, r.try_get::<_, String>(2)?);
        let (views, foreign_rules, _) = super::catalog::rewrite_dependents(tx, oid).await?;
        let mut others = other_dependents(tx, oid).await?;
        others.extend(foreign_rules.iter().map(|r| format!("rule {} on {}", ident(&r.name), r.relation)));
        out.push(MaterializedView { oid, name, owned: r.try_get(3)?, views, others });
    }
    Ok(out)
}

/// How to build each of `views` again, in their order. Definitions are read with an empty
/// `search_path`, so every name in them is qualified.
pub async fn recipes(tx: &impl GenericClient, views: &[MaterializedView]) -> Result<Vec<Recipe>> {
    super::catalog::with_empty_search_path(tx, async {
        let mut out = Vec::new();
        for m in views {
            let r = tx
                .query_one(
                    "SELECT pg_get_viewdef(m.oid), m.relispopulated, pg_get_userbyid(m.relowner), coalesce(m.reloptions, '{}'),
                            (SELECT spcname::text FROM pg_tablespace WHERE oid = m.reltablespace), obj_description(m.oid, 'pg_class')
                       FROM pg_class m WHERE m.oid = $1",
                    &[&m.oid],
                )
                .await
                .with_context(|| format!("reading the definition of materialized view {}", m.name))?;
            out.push(Recipe {
                oid: m.oid,
                name: m.name.clone(),
                definition: r.try_get(0)?,
                populated: r.try_get(1)?,
                owner: r.try_get(2)?,
                options: r.try_get(3)?,
                tablespace: r.try_get(4)?,
                comment: r.try_get(5)?,
                security_labels: super::catalog::security_labels(tx, m.oid).await?,
                grants: crate::ghost::grant_statements(tx, m.oid, "{}").await?,
                columns: columns(tx, m.oid).await?,
                indexes: indexes(tx, m.oid).await?,
            });
        }
        Ok(out)
    })
    .await
}

async fn columns(tx: &impl GenericClient, oid: u32) -> Result<Vec<ColumnSettings>> {
    let rows = tx
        .query(
            "SELECT attname::text, col_description(attrelid, attnum), NULLIF(attstattarget, -1)::int
               FROM pg_attribute WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped
                AND (col_description(attrelid, attnum) IS NOT NULL OR attstattarget >= 0)
              ORDER BY attnum",
            &[&oid],
        )
        .await
        .context("reading a materialized view's columns")?;
    rows.iter().map(|r| Ok(ColumnSettings { name: r.try_get(0)?, comment: r.try_get(1)?, statistics: r.try_get(2)? })).collect()
}

async fn indexes(tx: &impl GenericClient, oid: u32) -> Result<Vec<Index>> {
    let rows = tx
        .query(
            "SELECT c.relname::text, pg_get_indexdef(i.indexrelid), obj_description(i.indexrelid, 'pg_class'), i.indisclustered
               FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid WHERE i.indrelid = $1 ORDER BY i.indexrelid",
            &[&oid],
        )
        .await
        .context("reading a materialized view's indexes")?;
    rows.iter().map(|r| Ok(Index { name: r.try_get(0)?, definition: r.try_get(1)?, comment: r.try_get(2)?, clustered: r.try_get(3)? })).collect()
}

/// The recipes of the materialized views that read the table now, read in one transaction.
pub async fn read_recipes(client: &mut tokio_postgres::Client, oid: u32) -> Result<Vec<Recipe>> {
    let tx = client.transaction().await.context("starting to read the materialized views")?;
    let views = read(&tx, oid).await?;
    let recipes = recipes(&tx, &views).await?;
    tx.commit().await.context("ending the read of the materialized views")?;
    Ok(recipes)
}

/// What depends on the materialized view other than its own parts (rule, type, indexes),
/// views and materialized views, which follow it: functions of its row type, extended
/// statistics and the like.
async fn other_dependents(tx: &impl GenericClient, oid: u32) -> Result<Vec<String>> {
    let rows = tx
        .query(
            "SELECT pg_describe_object(d.classid, d.objid, d.objsubid) FROM pg_depend d
              WHERE ((d.refclassid = 'pg_class'::regclass AND d.refobjid = $1)
                  OR (d.refclassid = 'pg_type'::regclass AND d.refobjid IN (
                        SELECT reltype FROM pg_class WHERE oid = $1
                        UNION ALL SELECT typarray FROM pg_type WHERE oid = (SELECT reltype FROM pg_class WHERE oid = $1))))
                AND (d.deptype = 'n' OR d.classid = 'pg_statistic_ext'::regclass)
                AND d.classid <> 'pg_rewrite'::regclass
              ORDER BY 1",
            &[&oid],
        )
        .await
        .context("reading what depends on a materialized view")?;
    rows.iter().map(|r| r.try_get::<_, String>(0).map_err(Into::into)).collect()
}

/// The retargeted query of each view in `views` (in build order): the table is replaced by
/// the ghost, and each view by its rebuilt twin, which is built before it.
pub fn retargeted(views: &[Recipe], table: &QualifiedName, ghost: &QualifiedName) -> Result<Vec<String>> {
    let mut renames = vec![(table.clone(), ghost.name.clone())];
    renames.extend(views.iter().map(|m| (m.name.clone(), m.temp_name().name)));
    views
        .iter()
        .map(|m| {
            crate::sqltree::retarget_relations(&m.definition, &renames).map_err(|e| {
                Error::refused(format!(
                    "materialized view {} reads {table} in a way pg-ghost cannot point at the new table ({}); drop it and create it again after the change",
                    m.name,
                    e.message()
                ))
            })
        })
        .collect()
}

/// Builds every view in `views` on the ghost (in order), and checks that each reads what it
/// must. `views` come from [`read`]; a leftover of an earlier run is dropped first.
pub async fn build(client: &impl GenericClient, views: &[Recipe], table: &QualifiedName, table_oid: u32, ghost: &QualifiedName) -> Result<Vec<Built>> {
    drop_leftovers(client, ghost).await?;
    let mut built = Vec::new();
    for (m, query) in views.iter().zip(retargeted(views, table, ghost)?) {
        let started = std::time::Instant::now();
        let b = build_one(client, m, &query, views, table_oid).await?;
        tracing::info!(view = %m.name, on = %ghost, temp = %b.temp, populated = m.populated, secs = started.elapsed().as_secs_f64(), "materialized view built again, on the table that takes the name in the swap");
        built.push(b);
    }
    Ok(built)
}

/// Builds them all on the trial ghost, in the caller's transaction (rolled back): what
/// PostgreSQL rejects there (a column the ALTER renames, drops or retypes in a way the query
/// cannot take) is refused before anything is created.
pub async fn trial(tx: &impl GenericClient, views: &[MaterializedView], table: &QualifiedName, table_oid: u32, ghost: &QualifiedName) -> Result<()> {
    let views = recipes(tx, views).await?;
    for (m, query) in views.iter().zip(retargeted(&views, table, ghost)?) {
        build_one(tx, m, &query, &views, table_oid).await.map_err(|e| {
            Error::refused(format!(
                "materialized view {} reads {table} and cannot be built again on the changed table: {} (pg-ghost rebuilds materialized views from their query)",
                m.name,
                e.message()
            ))
        })?;
    }
    Ok(())
}

async fn build_one(client: &impl GenericClient, m: &Recipe, query: &str, views: &[Recipe], table_oid: u32) -> Result<Built> {
    let temp = m.temp_name();
    for sql in m.build_sql(&temp, query)? {
        client
            .batch_execute(&sql)
            .await
            .with_context(|| format!("building materialized view {} on the new table as {temp}", m.name))?;
    }
    let mut replaced: Vec<u32> = views.iter().map(|v| v.oid).collect();
    replaced.push(table_oid);
    check_reads(client, &temp, &replaced).await?;
    Ok(Built { view: m.clone(), temp })
}

/// The rebuilt view must depend on none of the relations it replaces (nor their row types).
async fn check_reads(client: &impl GenericClient, temp: &QualifiedName, replaced: &[u32]) -> Result<()> {
    let wrong: Vec<String> = client
        .query(
            "SELECT DISTINCT pg_describe_object(d.refclassid, d.refobjid, 0) FROM pg_depend d JOIN pg_rewrite r ON r.oid = d.objid
              WHERE d.classid = 'pg_rewrite'::regclass AND r.ev_class = $1::text::regclass
                AND ((d.refclassid = 'pg_class'::regclass AND d.refobjid = ANY ($2))
                  OR (d.refclassid = 'pg_type'::regclass AND d.refobjid IN (SELECT reltype FROM pg_class WHERE oid = ANY ($2))))",
            &[&temp.sql(), &replaced],
        )
        .await
        .context("checking what a rebuilt materialized view reads")?
        .iter()
        .map(|r| r.try_get::<_, String>(0))
        .collect::<std::result::Result<_, _>>()?;
    if wrong.is_empty() {
        return Ok(());
    }
    Err(Error::new(ErrorKind::Internal, format!("{temp} was built to replace a materialized view but still reads {}", wrong.join(", "))))
}

/// Materialized views built on the ghost by an earlier attempt (they depend on it, so
/// nothing else can have made them), dropped with those built on them, last built first.
pub async fn drop_leftovers(client: &impl GenericClient, ghost: &QualifiedName) -> Result<()> {
    let Some(oid) = client.query_one("SELECT to_regclass($1)::oid", &[&ghost.sql()]).await?.try_get::<_, Option<u32>>(0)? else {
        return Ok(());
    };
    let leftovers = read(client, oid).await?;
    for m in leftovers.iter().rev() {
        client
            .batch_execute(&format!("DROP MATERIALIZED VIEW {}", m.name.sql()))
            .await
            .with_context(|| format!("dropping {}, built on the ghost by an earlier attempt", m.name))?;
        tracing::info!(view = %m.name, "dropped a materialized view an earlier attempt built on the ghost");
    }
    Ok(())
}

#[cfg(test)]
impl MaterializedView {
    pub(crate) fn example(name: QualifiedName) -> MaterializedView {
        MaterializedView { oid: 1, name, owned: true, views: Vec::new(), others: Vec::new() }
    }
}

#[cfg(test)]
impl Recipe {
    fn example(name: QualifiedName) -> Recipe {
        Recipe {
            oid: 1,
            name,
            definition: " SELECT orders.id FROM public.orders;".into(),
            populated: true,
            owner: "app".into(),
            options: vec!["fillfactor=70".into()],
            tablespace: None,
            comment: Some("it's daily".into()),
            security_labels: Vec::new(),
            grants: vec!["GRANT SELECT ON {} TO \"reader\"".into()],
            columns: vec![ColumnSettings { name: "id".into(), comment: None, statistics: Some(500) }],
            indexes: vec![Index {
                name: "daily_id".into(),
                definition: "CREATE UNIQUE INDEX daily_id ON rep.\"daily totals\" USING btree (id)".into(),
                comment: None,
                clustered: true,
            }],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mv() -> Recipe {
        Recipe::example(QualifiedName::new("rep", "daily totals"))
    }

    #[test]
    fn builds_under_a_temporary_name_with_everything_that_shows() {
        let m = mv();
        let temp = m.temp_name();
        assert_eq!(temp, QualifiedName::new("rep", "_daily totals_gho"));
        let q = retargeted(std::slice::from_ref(&m), &QualifiedName::new("public", "orders"), &QualifiedName::new("public", "_orders_gho")).unwrap();
        let sql = m.build_sql(&temp, &q[0]).unwrap();
        assert_eq!(
            sql[0],
            "CREATE MATERIALIZED VIEW \"rep\".\"_daily totals_gho\" WITH (\"fillfactor\" = '70') AS SELECT \"_orders_gho\".id FROM public.\"_orders_gho\" WITH DATA"
        );
        assert!(sql.contains(&"GRANT SELECT ON \"rep\".\"_daily totals_gho\" TO \"reader\"".to_string()), "{sql:#?}");
        assert!(sql.contains(&"ALTER MATERIALIZED VIEW \"rep\".\"_daily totals_gho\" CLUSTER ON \"_daily_id_gho\"".to_string()), "{sql:#?}");
        assert!(sql.contains(&"CREATE UNIQUE INDEX _daily_id_gho ON rep.\"_daily totals_gho\" USING btree (id)".to_string()), "{sql:#?}");
        assert_eq!(sql.last().map(String::as_str), Some("ANALYZE \"rep\".\"_daily totals_gho\""));
        let unpopulated = Recipe { populated: false, ..m };
        let sql = unpopulated.build_sql(&temp, &q[0]).unwrap();
        assert!(sql[0].ends_with("WITH NO DATA") && !sql.iter().any(|s| s.starts_with("ANALYZE")), "{sql:#?}");
    }

    #[test]
    fn swaps_names_then_drops_the_original() {
        let m = mv();
        let b = Built { temp: m.temp_name(), view: m };
        assert_eq!(
            b.rename_sql(),
            vec![
                "ALTER INDEX \"rep\".\"daily_id\" RENAME TO \"_daily_id_del\"".to_string(),
                "ALTER MATERIALIZED VIEW \"rep\".\"daily totals\" RENAME TO \"_daily totals_del\"".to_string(),
                "ALTER MATERIALIZED VIEW \"rep\".\"_daily totals_gho\" RENAME TO \"daily totals\"".to_string(),
                "ALTER INDEX \"rep\".\"_daily_id_gho\" RENAME TO \"daily_id\"".to_string(),
            ]
        );
        assert_eq!(b.drop_sql(), "DROP MATERIALIZED VIEW \"rep\".\"_daily totals_del\"");
    }
}
