//! The `PG_GHOST_*` environment a hook runs with, built without I/O.
//!
//! The runner fills a [`HookEnv`] as the run learns things (the resolved table and the
//! names of the objects after inspection, a progress snapshot, the error at the end);
//! [`HookEnv::vars`] turns it into variables for one event. A variable is set only where it
//! applies: `PG_GHOST_STATUS` for `on-status`, `PG_GHOST_COMMAND` for
//! `on-interactive-command`, `PG_GHOST_ERROR` for `on-failure` and `on-revert-impossible`, and values the run does not
//! know yet are left out rather than set to a made-up value.

use super::HookEvent;
use crate::names::Names;
use crate::sql::QualifiedName;
use crate::status::{Eta, Progress};
use std::time::Duration;

/// Every variable pg-ghost may set. Hooks start without any inherited copy of these, so a
/// variable from pg-ghost's own environment never poses as one that applies.
pub const ENV_NAMES: [&str; 20] = [
    "PG_GHOST_DATABASE_NAME",
    "PG_GHOST_SCHEMA_NAME",
    "PG_GHOST_TABLE_NAME",
    "PG_GHOST_GHOST_TABLE_NAME",
    "PG_GHOST_OLD_TABLE_NAME",
    "PG_GHOST_DDL",
    "PG_GHOST_PARTITION_BY",
    "PG_GHOST_PARTITION_COUNT",
    "PG_GHOST_STRATEGY",
    "PG_GHOST_ELAPSED_SECONDS",
    "PG_GHOST_ELAPSED_COPY_SECONDS",
    "PG_GHOST_ESTIMATED_ROWS",
    "PG_GHOST_COPIED_ROWS",
    "PG_GHOST_PROGRESS",
    "PG_GHOST_ETA_SECONDS",
    "PG_GHOST_HEARTBEAT_LAG",
    "PG_GHOST_DRY_RUN",
    "PG_GHOST_STATUS",
    "PG_GHOST_COMMAND",
    "PG_GHOST_ERROR",
];

/// What the hooks are told about the run. Names are bare (unquoted) as in the catalog; the
/// schema is given apart, as gh-ost gives the database apart.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HookEnv {
    pub database: String,
    /// `None` until inspection has resolved the table.
    pub schema: Option<String>,
    /// `--table` as given until inspection, then the table's name.
    pub table: String,
    pub ghost_table: Option<String>,
    /// With `--timestamp-old-table` the name is chosen at the cut-over; set it then.
    pub old_table: Option<String>,
    /// The ALTER clauses, as given.
    pub ddl: String,
    /// For a conversion into a partitioned table: the partition key (`RANGE ("created_at")`)
    /// and how many partitions the new table gets.
    pub partition_by: Option<(String, usize)>,
    /// `ghost` or `direct`, once the run has chosen.
    pub strategy: Option<&'static str>,
    pub dry_run: bool,
    /// Counters and times; `None` before the run has any.
    pub progress: Option<Progress>,
    /// Replica lag as the heartbeat measured it; `None` when not measured.
    pub heartbeat_lag: Option<Duration>,
    /// For `on-status`: the status line.
    pub status: Option<String>,
    /// For `on-interactive-command`: the command as typed.
    pub command: Option<String>,
    /// For `on-failure`: the error, with its context.
    pub error: Option<String>,
}

impl HookEnv {
    /// What is known when the run starts.
    pub fn new(database: &str, table_arg: &str, ddl: &str, dry_run: bool) -> HookEnv {
        HookEnv { database: database.to_string(), table: table_arg.to_string(), ddl: ddl.to_string(), dry_run, ..HookEnv::default() }
    }

    /// Once inspection has resolved the table and named the objects of the run.
    pub fn resolved(mut self, table: &QualifiedName, names: &Names) -> HookEnv {
        self.schema = Some(table.schema.clone());
        self.table = table.name.clone();
        self.ghost_table = Some(names.ghost.name.clone());
        self.old_table = Some(names.old.name.clone());
        self
    }

    /// The direct way: the table is changed where it is; no ghost, no old table.
    pub fn resolved_in_place(mut self, table: &QualifiedName) -> HookEnv {
        self.schema = Some(table.schema.clone());
        self.table = table.name.clone();
        self.ghost_table = None;
        self.old_table = None;
        self
    }

    /// The run converts the table into one partitioned by `partition_by`, in `partitions`.
    pub fn with_conversion(mut self, partition_by: &str, partitions: usize) -> HookEnv {
        self.partition_by = Some((partition_by.to_string(), partitions));
        self
    }

    pub fn with_strategy(mut self, strategy: &'static str) -> HookEnv {
        self.strategy = Some(strategy);
        self
    }

    pub fn with_progress(mut self, progress: &Progress) -> HookEnv {
        self.progress = Some(progress.clone());
        self
    }

    pub fn with_status(mut self, line: impl Into<String>) -> HookEnv {
        self.status = Some(line.into());
        self
    }

    pub fn with_command(mut self, command: impl Into<String>) -> HookEnv {
        self.command = Some(command.into());
        self
    }

    pub fn with_error(mut self, error: impl Into<String>) -> HookEnv {
        self.error = Some(error.into());
        self
    }

    /// The variables for `event`, in [`ENV_NAMES`] order.
    pub fn vars(&self, event: HookEvent) -> Vec<(&'static str, String)> {
        let mut vars = vec![("PG_GHOST_DATABASE_NAME", self.database.clone())];
        if let Some(schema) = &self.schema {
            vars.push(("PG_GHOST_SCHEMA_NAME", schema.clone()));
        }
        vars.push(("PG_GHOST_TABLE_NAME", self.table.clone()));
        if let Some(ghost) = &self.ghost_table {
            vars.push(("PG_GHOST_GHOST_TABLE_NAME", ghost.clone()));
        }
        if let Some(old) = &self.old_table {
            vars.push(("PG_GHOST_OLD_TABLE_NAME", old.clone()));
        }
        vars.push(("PG_GHOST_DDL", self.ddl.clone()));
        if let Some((by, count)) = &self.partition_by {
            vars.push(("PG_GHOST_PARTITION_BY", by.clone()));
            vars.push(("PG_GHOST_PARTITION_COUNT", count.to_string()));
        }
        if let Some(strategy) = self.strategy {
            vars.push(("PG_GHOST_STRATEGY", strategy.to_string()));
        }
        if let Some(p) = &self.progress {
            progress_vars(p, &mut vars);
        }
        if let Some(lag) = self.heartbeat_lag {
            vars.push(("PG_GHOST_HEARTBEAT_LAG", seconds(lag)));
        }
        vars.push(("PG_GHOST_DRY_RUN", self.dry_run.to_string()));
        let only_for = |wanted: HookEvent, value: &Option<String>| value.clone().filter(|_| event == wanted);
        if let Some(status) = only_for(HookEvent::Status, &self.status) {
            vars.push(("PG_GHOST_STATUS", status));
        }
        if let Some(command) = only_for(HookEvent::InteractiveCommand, &self.command) {
            vars.push(("PG_GHOST_COMMAND", command));
        }
        let error_event = matches!(event, HookEvent::Failure | HookEvent::RevertImpossible);
        if let Some(error) = self.error.clone().filter(|_| error_event) {
            vars.push(("PG_GHOST_ERROR", error));
        }
        vars
    }
}

fn progress_vars(p: &Progress, vars: &mut Vec<(&'static str, String)>) {
    vars.push(("PG_GHOST_ELAPSED_SECONDS", seconds(p.elapsed)));
    if p.direct_step.is_some() {
        // The direct way copies nothing: no copy counters, rather than zeros that mean nothing.
        return;
    }
    vars.push(("PG_GHOST_ELAPSED_COPY_SECONDS", seconds(p.copy_elapsed)));
    if let Some(estimated) = p.rows_estimated {
        vars.push(("PG_GHOST_ESTIMATED_ROWS", estimated.to_string()));
    }
    vars.push(("PG_GHOST_COPIED_ROWS", p.rows_copied.to_string()));
    if let Some(percent) = p.percent() {
        vars.push(("PG_GHOST_PROGRESS", format!("{percent:.1}")));
    }
    match p.eta() {
        Eta::Remaining(d) => vars.push(("PG_GHOST_ETA_SECONDS", d.as_secs().to_string())),
        Eta::Due => vars.push(("PG_GHOST_ETA_SECONDS", "0".into())),
        Eta::Unknown => {}
    }
}

/// Seconds with millisecond precision, as scripts compare them (`12.345`).
fn seconds(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::phase::Phase;

    fn names(vars: &[(&'static str, String)]) -> Vec<&'static str> {
        vars.iter().map(|(n, _)| *n).collect()
    }

    fn get<'a>(vars: &'a [(&'static str, String)], name: &str) -> Option<&'a str> {
        vars.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str())
    }

    #[test]
    fn at_startup_only_what_is_known() {
        let env = HookEnv::new("shop", "orders", "ADD COLUMN note text", true);
        let vars = env.vars(HookEvent::Startup);
        assert_eq!(
            vars,
            [
                ("PG_GHOST_DATABASE_NAME", "shop".to_string()),
                ("PG_GHOST_TABLE_NAME", "orders".into()),
                ("PG_GHOST_DDL", "ADD COLUMN note text".into()),
                ("PG_GHOST_DRY_RUN", "true".into()),
            ]
        );
    }

    #[test]
    fn after_inspection_names_are_bare_and_the_schema_apart() {
        let table = QualifiedName::new("Sales Dept", "Order \"Items\"");
        let env = HookEnv::new("shop", r#""Sales Dept"."Order ""Items""""#, "x", false).resolved(&table, &Names::for_table(&table, 7));
        let vars = env.vars(HookEvent::Validated);
        assert_eq!(get(&vars, "PG_GHOST_SCHEMA_NAME"), Some("Sales Dept"));
        assert_eq!(get(&vars, "PG_GHOST_TABLE_NAME"), Some("Order \"Items\""));
        assert_eq!(get(&vars, "PG_GHOST_GHOST_TABLE_NAME"), Some("_Order \"Items\"_gho"));
        assert_eq!(get(&vars, "PG_GHOST_OLD_TABLE_NAME"), Some("_Order \"Items\"_del"));
        assert_eq!(get(&vars, "PG_GHOST_DRY_RUN"), Some("false"));
    }

    #[test]
    fn progress_fills_counters_times_and_eta() {
        let mut p = Progress::new(Phase::Copy);
        p.rows_copied = 250;
        p.rows_estimated = Some(1000);
        p.copy_rate = Some(50.0);
        p.elapsed = Duration::from_millis(12_345);
        p.copy_elapsed = Duration::from_secs(5);
        let mut env = HookEnv::new("db", "t", "x", false).with_progress(&p);
        env.heartbeat_lag = Some(Duration::from_millis(1500));
        let vars = env.vars(HookEvent::Status);
        assert_eq!(get(&vars, "PG_GHOST_ELAPSED_SECONDS"), Some("12.345"));
        assert_eq!(get(&vars, "PG_GHOST_ELAPSED_COPY_SECONDS"), Some("5.000"));
        assert_eq!(get(&vars, "PG_GHOST_ESTIMATED_ROWS"), Some("1000"));
        assert_eq!(get(&vars, "PG_GHOST_COPIED_ROWS"), Some("250"));
        assert_eq!(get(&vars, "PG_GHOST_PROGRESS"), Some("25.0"));
        assert_eq!(get(&vars, "PG_GHOST_ETA_SECONDS"), Some("15"));
        assert_eq!(get(&vars, "PG_GHOST_HEARTBEAT_LAG"), Some("1.500"));

        p.phase = Phase::Postponed;
        let vars = HookEnv::new("db", "t", "x", false).with_progress(&p).vars(HookEvent::BeginPostponed);
        assert_eq!(get(&vars, "PG_GHOST_ETA_SECONDS"), Some("0"));
        assert_eq!(get(&vars, "PG_GHOST_PROGRESS"), Some("100.0"));

        let unknown = Progress::new(Phase::Copy);
        let vars = HookEnv::new("db", "t", "x", false).with_progress(&unknown).vars(HookEvent::BeforeRowCopy);
        for absent in ["PG_GHOST_ESTIMATED_ROWS", "PG_GHOST_PROGRESS", "PG_GHOST_ETA_SECONDS", "PG_GHOST_HEARTBEAT_LAG"] {
            assert_eq!(get(&vars, absent), None, "{absent}");
        }
        assert_eq!(get(&vars, "PG_GHOST_COPIED_ROWS"), Some("0"));
    }

    #[test]
    fn the_direct_way_names_no_ghost_and_counts_no_copy() {
        let table = QualifiedName::new("s", "t");
        let p = Progress { direct_step: Some(crate::status::StepOf { number: 1, of: 2 }), elapsed: Duration::from_secs(2), ..Progress::new(Phase::Direct) };
        let env = HookEnv::new("db", "t", "x", false)
            .resolved(&table, &Names::for_table(&table, 1))
            .resolved_in_place(&table)
            .with_strategy("direct")
            .with_progress(&p);
        let vars = env.vars(HookEvent::Status);
        assert_eq!(get(&vars, "PG_GHOST_STRATEGY"), Some("direct"));
        assert_eq!(get(&vars, "PG_GHOST_SCHEMA_NAME"), Some("s"));
        assert_eq!(get(&vars, "PG_GHOST_ELAPSED_SECONDS"), Some("2.000"));
        for absent in ["PG_GHOST_GHOST_TABLE_NAME", "PG_GHOST_OLD_TABLE_NAME", "PG_GHOST_COPIED_ROWS", "PG_GHOST_ELAPSED_COPY_SECONDS", "PG_GHOST_PROGRESS"] {
            assert_eq!(get(&vars, absent), None, "{absent}");
        }
    }

    #[test]
    fn a_conversion_says_its_partition_key_and_count_to_every_event() {
        let plain = HookEnv::new("db", "t", "ADD COLUMN x int", false);
        for event in HookEvent::ALL {
            assert_eq!(get(&plain.vars(event), "PG_GHOST_PARTITION_BY"), None, "{event}");
        }
        let env = HookEnv::new("db", "t", "", false).with_conversion("RANGE (\"created_at\")", 60);
        for event in HookEvent::ALL {
            let vars = env.vars(event);
            assert_eq!(get(&vars, "PG_GHOST_PARTITION_BY"), Some("RANGE (\"created_at\")"), "{event}");
            assert_eq!(get(&vars, "PG_GHOST_PARTITION_COUNT"), Some("60"), "{event}");
            assert_eq!(get(&vars, "PG_GHOST_DDL"), Some(""), "{event}");
        }
    }

    #[test]
    fn status_command_and_error_only_for_their_event() {
        let env = HookEnv::new("db", "t", "x", false).with_status("Copy: 1/2").with_command("throttle").with_error("boom");
        for event in HookEvent::ALL {
            let vars = env.vars(event);
            assert_eq!(get(&vars, "PG_GHOST_STATUS").is_some(), event == HookEvent::Status, "{event}");
            assert_eq!(get(&vars, "PG_GHOST_COMMAND").is_some(), event == HookEvent::InteractiveCommand, "{event}");
            assert_eq!(get(&vars, "PG_GHOST_ERROR").is_some(), matches!(event, HookEvent::Failure | HookEvent::RevertImpossible), "{event}");
        }
        assert_eq!(get(&env.vars(HookEvent::Failure), "PG_GHOST_ERROR"), Some("boom"));
    }

    #[test]
    fn every_variable_set_is_listed_and_in_order() {
        let table = QualifiedName::new("s", "t");
        let mut env = HookEnv::new("db", "t", "x", false)
            .resolved(&table, &Names::for_table(&table, 1))
            .with_conversion("RANGE (\"at\")", 3)
            .with_strategy("ghost")
            .with_progress(&Progress { rows_estimated: Some(1), copy_rate: Some(1.0), ..Progress::new(Phase::Copy) })
            .with_status("s")
            .with_command("c")
            .with_error("e");
        env.heartbeat_lag = Some(Duration::ZERO);
        let mut all: Vec<&str> = HookEvent::ALL.iter().flat_map(|e| names(&env.vars(*e))).collect();
        all.sort_by_key(|n| ENV_NAMES.iter().position(|l| l == n));
        all.dedup();
        assert_eq!(all, ENV_NAMES);
        for event in HookEvent::ALL {
            let got = names(&env.vars(event));
            let mut sorted = got.clone();
            sorted.sort_by_key(|n| ENV_NAMES.iter().position(|l| l == n));
            assert_eq!(got, sorted, "{event}");
        }
    }
}
