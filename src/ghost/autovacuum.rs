//! The ghost's autovacuum, off while pg-ghost writes it.
//!
//! The copy's inserts make the ghost a fresh, large table, which autovacuum soon picks for a
//! `VACUUM ANALYZE`. Such a worker holds SHARE UPDATE EXCLUSIVE on the ghost and blocks the
//! cut-over's LOCK: measured at 4M rows, seven attempts in a row failed on it. So autovacuum
//! is off on the ghost (and its TOAST table) from its creation; pg-ghost vacuums and analyzes
//! the ghost itself before the cut-over, and the swap gives the new table back the settings
//! it had before they were turned off (the original's, or what the ALTER made them), so the
//! table ends exactly as a plain `ALTER TABLE` leaves it.
//!
//! An anti-wraparound vacuum runs even with autovacuum off, and nobody may cancel it. A
//! freeze age lowered on the original (`autovacuum_freeze_max_age`, ...) is reset on the
//! ghost while it is fed, so the ghost, whose oldest transaction is the run's own, is held
//! to the server's (two hundred million by default) rather than the table's, which a long
//! postponement could pass. The swap sets it back with the rest.

use crate::error::{Context, Result};
use crate::sql::{ident, literal, QualifiedName};
use tokio_postgres::GenericClient;

/// The ghost's storage parameters (`key=value`, its TOAST table's apart) before pg-ghost
/// turned its autovacuum off. All of them are set again at the swap, in their order:
/// `pg_dump` lists them in the order they are stored, and setting one moves it to the end.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AutovacuumSettings {
    pub table: Vec<String>,
    pub toast: Vec<String>,
}

/// Turns the ghost's autovacuum off and returns its storage parameters as they were.
pub async fn turn_off(tx: &impl GenericClient, ghost: &QualifiedName, ghost_oid: u32) -> Result<AutovacuumSettings> {
    let (settings, sql) = turn_off_sql(tx, ghost, ghost_oid).await?;
    tx.batch_execute(&sql).await.context("turning the ghost's autovacuum off while pg-ghost writes it")?;
    Ok(settings)
}

/// What [`turn_off`] reads, and the statements it runs.
pub async fn turn_off_sql(tx: &impl GenericClient, ghost: &QualifiedName, ghost_oid: u32) -> Result<(AutovacuumSettings, String)> {
    let row = tx
        .query_one(
            "SELECT coalesce(c.reloptions, '{}'), coalesce(t.reloptions, '{}')
               FROM pg_class c LEFT JOIN pg_class t ON t.oid = c.reltoastrelid
              WHERE c.oid = $1",
            &[&ghost_oid],
        )
        .await
        .context("reading the ghost's storage parameters")?;
    let settings = AutovacuumSettings { table: row.try_get(0)?, toast: row.try_get(1)? };
    let g = ghost.sql();
    let sql = format!(
        "ALTER TABLE {g} SET (autovacuum_enabled = false, toast.autovacuum_enabled = false);
         ALTER TABLE {g} RESET (autovacuum_freeze_max_age, autovacuum_multixact_freeze_max_age,
                                toast.autovacuum_freeze_max_age, toast.autovacuum_multixact_freeze_max_age)"
    );
    Ok((settings, sql))
}

/// The statements that give `table` back `settings`. Run in the swap, on the ghost, under
/// its ACCESS EXCLUSIVE lock (resetting some parameters needs it).
pub fn restore_sql(table: &QualifiedName, settings: &AutovacuumSettings) -> Vec<String> {
    let split = |opt: &String| opt.split_once('=').map(|(k, v)| (k.to_string(), v.to_string()));
    let table_opts: Vec<(String, String)> = settings.table.iter().filter_map(split).collect();
    let toast_opts: Vec<(String, String)> =
        settings.toast.iter().filter_map(split).map(|(k, v)| (format!("toast.{}", ident(&k)), v)).collect();
    let table_opts: Vec<(String, String)> = table_opts.into_iter().map(|(k, v)| (ident(&k), v)).collect();
    let mut reset = vec![ident("autovacuum_enabled"), format!("toast.{}", ident("autovacuum_enabled"))];
    for (k, _) in table_opts.iter().chain(&toast_opts) {
        if !reset.contains(k) {
            reset.push(k.clone());
        }
    }
    let mut sql = vec![format!("ALTER TABLE {} RESET ({})", table.sql(), reset.join(", "))];
    let set: Vec<String> = table_opts.iter().chain(&toast_opts).map(|(k, v)| format!("{k} = {}", literal(v))).collect();
    if !set.is_empty() {
        sql.push(format!("ALTER TABLE {} SET ({})", table.sql(), set.join(", ")));
    }
    sql
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t() -> QualifiedName {
        QualifiedName::new("public".to_string(), "_t_gho".to_string())
    }

    #[test]
    fn restoring_no_parameters_only_resets_pg_ghosts() {
        assert_eq!(restore_sql(&t(), &AutovacuumSettings::default()), vec![
            r#"ALTER TABLE "public"."_t_gho" RESET ("autovacuum_enabled", toast."autovacuum_enabled")"#.to_string()
        ]);
    }

    #[test]
    fn restoring_sets_every_parameter_again_in_its_order() {
        let s = AutovacuumSettings {
            table: vec!["autovacuum_enabled=false".into(), "fillfactor=90".into()],
            toast: vec!["autovacuum_vacuum_cost_delay=50".into()],
        };
        assert_eq!(restore_sql(&t(), &s), vec![
            r#"ALTER TABLE "public"."_t_gho" RESET ("autovacuum_enabled", toast."autovacuum_enabled", "fillfactor", toast."autovacuum_vacuum_cost_delay")"#.to_string(),
            r#"ALTER TABLE "public"."_t_gho" SET ("autovacuum_enabled" = 'false', "fillfactor" = '90', toast."autovacuum_vacuum_cost_delay" = '50')"#.to_string(),
        ]);
    }
}
