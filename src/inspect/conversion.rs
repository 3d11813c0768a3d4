//! The checks of a conversion into a partitioned table (`--partition-by`), before anything
//! is created: the partition key's columns are the table's, each statement's parent is the
//! table itself, each partition's name is free,
//! the table has no storage parameters (a partitioned table takes none). What needs the
//! ghost (keys that lack the partition key, rows no partition takes, foreign keys that could
//! not reference the partitioned table) is refused by the trial ghost (`crate::ghost`).

use crate::error::{Context, Error, Result};
use crate::ghost::Conversion;
use crate::schema::TableInfo;

/// `--partition-by` on a table that is partitioned already.
pub fn already_partitioned(table: &crate::sql::QualifiedName, partition_by: &str) -> Error {
    Error::refused(format!("--partition-by: {table} is already a partitioned table (by {partition_by}); change it with --alter alone"))
}

pub async fn check(client: &tokio_postgres::Client, table: &TableInfo, c: &Conversion) -> Result<()> {
    let t = &table.name;
    let mut problems = Vec::new();
    for column in c.columns.iter().filter(|col| table.column(col).is_none()) {
        problems.push(format!("the partition key names column {}, which {t} does not have", crate::sql::ident(column)));
    }
    // Every partition's two reads go out at once: a conversion may name a thousand.
    let reads = c.partitions.iter().map(|p| async move {
        let name = p.final_name(t);
        let parent = async {
            let row = client.query_one("SELECT to_regclass($1)::oid", &[&p.parent_sql()]).await.context("resolving the parent of a partition")?;
            Ok::<Option<u32>, Error>(row.try_get(0)?)
        };
        let taken = async {
            client
                .query_opt(
                    "SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relname = $2",
                    &[&name.schema, &name.name],
                )
                .await
                .context("reading whether a partition's name is taken")
        };
        let (parent, taken) = tokio::try_join!(biased; parent, taken)?;
        let mut found = Vec::new();
        if parent != Some(table.oid) {
            found.push(format!("partition {name} is made PARTITION OF {}, which is not {t}", p.parent_sql()));
        }
        if taken.is_some() {
            found.push(format!("the name of partition {name} is taken (the partitions are new tables: give another name)"));
        }
        Ok::<_, Error>(found)
    });
    problems.extend(futures_util::future::try_join_all(reads).await?.concat());
    let row = client
        .query_one(
            "SELECT coalesce(c.reloptions, '{}') || coalesce(t.reloptions, '{}') FROM pg_class c LEFT JOIN pg_class t ON t.oid = c.reltoastrelid WHERE c.oid = $1",
            &[&table.oid],
        )
        .await
        .context("reading the table's storage parameters")?;
    let options: Vec<String> = row.try_get(0)?;
    if !options.is_empty() {
        problems.push(format!(
            "{t} has storage parameters ({}), which a partitioned table does not take: give them to the partitions in their statements (WITH (...)) and reset them on {t} for the run",
            options.join(", ")
        ));
    }
    if !problems.is_empty() {
        return Err(Error::refused(format!("{t} cannot be converted to a table partitioned by {}: {}", c.partition_by, problems.join("; "))));
    }
    let plain = super::lock_capacity::LockCapacity::read(client, table.oid).await?;
    super::lock_capacity::check(t, &plain.converted_into(c.partitions.len()))
}
