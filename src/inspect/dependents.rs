//! Objects that reference the table by OID and so would stay with the original (renamed to
//! `_del`) after the swap instead of following the new table: views, incoming foreign keys,
//! user triggers, rules, row-level security policies, publications listing the table.

use super::{get, texts};
use crate::error::{Context, Result};
use crate::schema::Dependents;
use crate::sql::{ident, QualifiedName};
use tokio_postgres::Client;

pub(super) async fn read(client: &Client, oid: u32) -> Result<Dependents> {
    Ok(Dependents {
        views: views(client, oid).await?,
        incoming_foreign_keys: incoming_foreign_keys(client, oid).await?,
        triggers: quoted(
            texts(
                client,
                // Internal triggers implement foreign keys; they come with the constraint.
                "SELECT tgname::text FROM pg_trigger WHERE tgrelid = $1 AND NOT tgisinternal ORDER BY 1",
                &[&oid],
            )
            .await
            .context("reading triggers")?,
        ),
        rules: quoted(
            texts(
                client,
                // A view's own _RETURN rule sits on the view, never on a table; skip it anyway.
                "SELECT rulename::text FROM pg_rewrite WHERE ev_class = $1 AND rulename <> '_RETURN' ORDER BY 1",
                &[&oid],
            )
            .await
            .context("reading rules")?,
        ),
        policies: quoted(
            texts(client, "SELECT polname::text FROM pg_policy WHERE polrelid = $1 ORDER BY 1", &[&oid])
                .await
                .context("reading policies")?,
        ),
        publications: quoted(
            texts(
                client,
                "SELECT p.pubname::text FROM pg_publication_rel pr JOIN pg_publication p ON p.oid = pr.prpubid
                  WHERE pr.prrelid = $1 ORDER BY 1",
                &[&oid],
            )
            .await
            .context("reading publications")?,
        ),
    })
}

fn quoted(names: Vec<String>) -> Vec<String> {
    names.iter().map(|n| ident(n)).collect()
}

/// Views and materialized views whose rewrite rule depends on the table.
async fn views(client: &Client, oid: u32) -> Result<Vec<String>> {
    let rows = client
        .query(
            "SELECT DISTINCT n.nspname::text AS schema, v.relname::text AS name
               FROM pg_depend d
               JOIN pg_rewrite r ON r.oid = d.objid
               JOIN pg_class v ON v.oid = r.ev_class
               JOIN pg_namespace n ON n.oid = v.relnamespace
              WHERE d.classid = 'pg_rewrite'::regclass AND d.refclassid = 'pg_class'::regclass
                AND d.refobjid = $1 AND r.ev_class <> $1
              ORDER BY 1, 2",
            &[&oid],
        )
        .await
        .context("reading dependent views")?;
    rows.iter()
        .map(|r| Ok(QualifiedName::new(get::<String>(r, "schema")?, get::<String>(r, "name")?).to_string()))
        .collect()
}

/// Foreign keys of any table (this one included) that reference the table.
async fn incoming_foreign_keys(client: &Client, oid: u32) -> Result<Vec<String>> {
    // conparentid = 0: a foreign key on a partitioned table is cloned onto each partition;
    // name only the one the DBA created.
    let rows = client
        .query(
            "SELECT con.conname::text AS constraint, n.nspname::text AS schema, c.relname::text AS name
               FROM pg_constraint con
               JOIN pg_class c ON c.oid = con.conrelid
               JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE con.contype = 'f' AND con.confrelid = $1 AND con.conparentid = 0
              ORDER BY 2, 3, 1",
            &[&oid],
        )
        .await
        .context("reading incoming foreign keys")?;
    rows.iter()
        .map(|r| {
            let table = QualifiedName::new(get::<String>(r, "schema")?, get::<String>(r, "name")?);
            Ok(format!("{} on {table}", ident(&get::<String>(r, "constraint")?)))
        })
        .collect()
}
