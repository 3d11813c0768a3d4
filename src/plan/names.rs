//! The names PostgreSQL would give, on the table itself, to the constraints and indexes the
//! ALTER adds without naming them.
//!
//! The trial runs on an empty clone in the session's temporary schema, where none of the
//! relations and constraints of the table's schema is: a name the clone takes freely may be in
//! use there, and PostgreSQL would then number it (`orders_pad_key` in use:
//! `orders_pad_key1`). An index's name (a UNIQUE's, a PRIMARY KEY's) must be free among the
//! schema's relations and constraints, a CHECK's or a FOREIGN KEY's among its constraints,
//! as PostgreSQL chooses them. A name the DBA gave is left as given.

use super::{Clause, Observation};
use crate::error::Result;
use crate::schema_names::SchemaNames;
use crate::sql::{first_free_name, QualifiedName, MAX_IDENT_BYTES};
use crate::sqltree::retarget_index;
use tokio_postgres::Client;

/// Renames, in `observations`, what each clause of `clauses` creates without a name to the
/// name PostgreSQL would choose on `table`.
pub(super) async fn as_on_table(client: &Client, table: &QualifiedName, clauses: &[Clause], observations: &mut [Observation]) -> Result<()> {
    let unnamed = |(c, o): &(&Clause, &mut Observation)| !c.named && !o.new_constraints.is_empty();
    if !clauses.iter().zip(observations.iter_mut()).any(|p| unnamed(&p)) {
        return Ok(());
    }
    let mut in_use = SchemaNames::read(client, &table.sql(), &[]).await?;
    for (clause, o) in clauses.iter().zip(observations.iter_mut()) {
        let Some(wanted) = o.new_constraints.first().cloned().filter(|_| !clause.named) else { continue };
        let index = !o.new_indexes.is_empty();
        let name = first_free_name(&wanted, |n| in_use.taken(n, index));
        // Past 63 bytes PostgreSQL cuts a name its own way: left as the trial gave it, for the
        // direct way to refuse with the advice to name it.
        let name = if name.len() > MAX_IDENT_BYTES { wanted.clone() } else { name };
        in_use.constraints.insert(name.clone());
        if index {
            in_use.relations.insert(name.clone());
        }
        if name == wanted {
            continue;
        }
        o.new_constraints[0] = name.clone();
        if let Some(def) = o.new_indexes.first_mut() {
            *def = retarget_index(def, &name, table)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_index_definition_takes_its_new_name() {
        let def = "CREATE UNIQUE INDEX \"Orders_pad_key\" ON public.\"Orders\" USING btree (pad)";
        let renamed = retarget_index(def, "Orders_pad_key1", &QualifiedName::new("public", "Orders")).ok();
        assert_eq!(renamed.as_deref(), Some("CREATE UNIQUE INDEX \"Orders_pad_key1\" ON public.\"Orders\" USING btree (pad)"));
    }
}
