//! The names in use in a table's schema, which PostgreSQL steps around when it names a
//! constraint or an index itself (`orders_pad_key` in use: `orders_pad_key1`): an index's
//! name among the schema's relations and constraints, a constraint's among its constraints.

use crate::error::{Context, Result};
use std::collections::HashSet;
use tokio_postgres::GenericClient;

#[derive(Debug, Default)]
pub struct SchemaNames {
    pub relations: HashSet<String>,
    pub constraints: HashSet<String>,
}

impl SchemaNames {
    /// The names of the relations and constraints of `table`'s schema (`table` as SQL text),
    /// but those of the tables in `apart`, their partitions and their indexes.
    pub async fn read(client: &impl GenericClient, table: &str, apart: &[u32]) -> Result<SchemaNames> {
        let rows = client
            .query(
                "WITH apart AS (SELECT t.oid FROM unnest($2::oid[]) AS t(oid)
                                UNION SELECT p.relid FROM unnest($2::oid[]) AS t(oid), pg_partition_tree(t.oid::regclass) AS p),
                      schema AS (SELECT relnamespace AS oid FROM pg_class WHERE oid = $1::text::regclass)
                 SELECT c.relname::text, true FROM pg_class c
                  WHERE c.relnamespace = (SELECT oid FROM schema) AND c.oid NOT IN (SELECT oid FROM apart)
                    AND NOT EXISTS (SELECT 1 FROM pg_index i WHERE i.indexrelid = c.oid AND i.indrelid IN (SELECT oid FROM apart))
                 UNION ALL
                 SELECT conname::text, false FROM pg_constraint
                  WHERE connamespace = (SELECT oid FROM schema) AND conrelid NOT IN (SELECT oid FROM apart)",
                &[&table, &apart],
            )
            .await
            .context("reading the names in use in the table's schema")?;
        let mut names = SchemaNames::default();
        for row in rows {
            let (name, relation): (String, bool) = (row.try_get(0)?, row.try_get(1)?);
            match relation {
                true => names.relations.insert(name),
                false => names.constraints.insert(name),
            };
        }
        Ok(names)
    }

    /// Whether an object PostgreSQL names would have to step around `name`; `index`: the name
    /// of an index (a relation), else of a constraint.
    pub fn taken(&self, name: &str, index: bool) -> bool {
        self.constraints.contains(name) || (index && self.relations.contains(name))
    }
}
