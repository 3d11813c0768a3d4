//! The command line as the user types it: gh-ost's flag names, no logic.
//!
//! This is the first of two stages. Values that carry units (durations, byte sizes) and
//! lists (`--max-load`, `--throttle-control-replicas`) are kept as the text given, and
//! [`crate::config`] turns them into typed values with messages that name the flag. Only
//! plain numbers and switches are parsed here, by clap, so a usage error and a bad value
//! both end with exit code 2.

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "pg-ghost",
    version,
    about = "Online schema changes for PostgreSQL: a ghost table fed by logical replication, \
             chunked copy, atomic cut-over",
    propagate_version = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,

    /// Log format on stderr: `text` for people, `json` for one JSON object per line.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,

    /// More detail in pg-ghost's log: `-v` for debug, `-vv` for trace. Without -v, RUST_LOG
    /// (when set) chooses the levels.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Change a table's schema online. Without --execute this is a dry run: every step
    /// but the swap, then a full cleanup.
    Run(Box<RunArgs>),
    /// Remove the leftovers of a run that died: slot, publication, ghost and changelog tables
    /// (and a revert window's reverse slot and publication, ending the window).
    Cleanup(CleanupArgs),
    /// During a `run --revertible-for` window: swap the old table back in, with every write
    /// made since the swap, and end the run. Waits until the running pg-ghost has done it.
    Revert(WindowArgs),
    /// During a `run --revertible-for` window: end the window now, keeping the new table
    /// (the old one is dropped or kept as the run's --ok-to-drop-table says).
    Finalize(WindowArgs),
    /// Say what PostgreSQL does for each clause of the ALTER (asked of PostgreSQL on an empty
    /// temporary clone), which way pg-ghost would make the change, and what it costs.
    /// Read-only.
    Plan(PlanArgs),
    /// Print the history of runs recorded in the database, newest first.
    History(HistoryArgs),
    /// Apply a directory of versioned SQL files (`V<version>__<description>.sql`) in version
    /// order, each statement the safest way: ALTER TABLE online, CREATE INDEX CONCURRENTLY,
    /// the rest under a short lock_timeout with retries. Recorded in `pgghost.migrations`.
    Migrate(MigrateArgs),
    /// Apply one `migrate --dir DIR` or one change (`--table T --alter CLAUSES`) to many
    /// databases (tenants), listed by a query on a registry database or in a file: smallest
    /// first, a few at a time, with canaries, stop rules and a maintenance window; state in
    /// the registry (`pgghost.fleet_runs`, `pgghost.fleet_targets`), a report at the end.
    Fleet(Box<FleetArgs>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum PhaseArg {
    Expand,
    Migrate,
    Contract,
}

#[derive(Clone, Debug, Args)]
pub struct MigrateArgs {
    /// Connection, as for `run`.
    #[arg(long, value_name = "CONNINFO", default_value = "")]
    pub conn: String,

    /// The directory of migration files.
    #[arg(long, value_name = "DIR")]
    pub dir: PathBuf,

    /// Apply pending files up to this version, included.
    #[arg(long, value_name = "VERSION")]
    pub target: Option<String>,

    /// Apply pending files up to the first one of a later phase (a file's phase is its
    /// first-line header `-- pg-ghost: phase=expand|migrate|contract`).
    #[arg(long, value_enum, value_name = "PHASE")]
    pub phase: Option<PhaseArg>,

    /// Print what would run for every pending file and statement, and how (with what
    /// `pg-ghost plan` says of each ALTER TABLE); change nothing.
    #[arg(long, conflicts_with = "status")]
    pub plan: bool,

    /// List the applied, failed and pending versions; change nothing.
    #[arg(long)]
    pub status: bool,

    /// How long a statement may wait for its lock before it is retried (and the lock
    /// timeout of each online change's cut-over). Units: ms, s.
    #[arg(long, value_name = "DURATION", default_value = "1s")]
    pub lock_timeout: String,

    /// How many times a statement is tried when its lock is not had in time.
    #[arg(long, value_name = "N", default_value_t = 60)]
    pub lock_retries: u32,

    /// Keep the old table of each online change that went through a ghost (as
    /// `_<table>_<timestamp>_del`). Default: dropped after the swap.
    #[arg(long)]
    pub keep_old_tables: bool,

    /// Each online change that goes through a ghost creates its slot with FAILOVER, as `run
    /// --failover-slot` does (PostgreSQL 17+): migrate again on the promoted standby after a
    /// failover, and the change cut short goes on.
    #[arg(long)]
    pub failover_slot: bool,

    /// Apply a pending file even when a later version is applied already (it was added behind
    /// the others, by a merge say): it then runs after what it was written before.
    #[arg(long)]
    pub out_of_order: bool,

    /// How --status and --plan print: `text` for people, `json` for tools.
    #[arg(long, value_enum, default_value_t = PlanFormat::Text)]
    pub format: PlanFormat,
}

#[derive(Clone, Debug, Args)]
pub struct FleetArgs {
    // ---- targets ------------------------------------------------------------------------
    /// The registry database: where --targets-query runs and where the fleet keeps its state
    /// (`pgghost.fleet_runs`, `pgghost.fleet_targets`, created on first use), for --resume.
    #[arg(long, value_name = "CONNINFO", help_heading = "Targets")]
    pub registry: Option<String>,

    /// The targets, as a query on the registry returning `name` and `conninfo` (text) and
    /// optionally `size_bytes` (bigint, else measured) and `server` (text, for --per-server,
    /// else the target's host:port).
    #[arg(long, value_name = "SELECT", requires = "registry", conflicts_with = "targets_file", help_heading = "Targets")]
    pub targets_query: Option<String>,

    /// The targets, as a file of `name conninfo` lines (`#` starts a comment).
    #[arg(long, value_name = "FILE", help_heading = "Targets")]
    pub targets_file: Option<PathBuf>,

    // ---- what runs on each target -------------------------------------------------------
    /// Run `pg-ghost migrate --dir DIR` on every target.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["table", "alter"], help_heading = "Job")]
    pub dir: Option<PathBuf>,

    /// With --dir: apply pending files up to this version, included.
    #[arg(long, value_name = "VERSION", requires = "dir", help_heading = "Job")]
    pub target: Option<String>,

    /// With --dir: apply pending files up to the first one of a later phase.
    #[arg(long, value_enum, value_name = "PHASE", requires = "dir", help_heading = "Job")]
    pub phase: Option<PhaseArg>,

    /// With --dir: apply a pending file even when a later version is applied already.
    #[arg(long, requires = "dir", help_heading = "Job")]
    pub out_of_order: bool,

    /// Run one online change on every target: the table, `[schema.]name` (with --alter).
    #[arg(long, value_name = "[SCHEMA.]NAME", requires = "alter", help_heading = "Job")]
    pub table: Option<String>,

    /// The change: the clauses that follow `ALTER TABLE name` (with --table), made as
    /// `pg-ghost run --execute --strategy auto` makes it.
    #[arg(long, value_name = "CLAUSES", requires = "table", help_heading = "Job")]
    pub alter: Option<String>,

    /// How long a statement (or a cut-over) may wait for its lock before it is retried.
    /// Units: ms, s.
    #[arg(long, value_name = "DURATION", default_value = "1s", help_heading = "Job")]
    pub lock_timeout: String,

    /// How many times a statement (or a cut-over) is tried when its lock is not had in time.
    #[arg(long, value_name = "N", default_value_t = 60, help_heading = "Job")]
    pub lock_retries: u32,

    /// Keep the old table of each change that went through a ghost (timestamped).
    #[arg(long, help_heading = "Job")]
    pub keep_old_tables: bool,

    /// Each change that goes through a ghost creates its slot with FAILOVER, as `run
    /// --failover-slot` does (PostgreSQL 17+).
    #[arg(long, help_heading = "Job")]
    pub failover_slot: bool,

    // ---- order and pace -----------------------------------------------------------------
    /// Targets changed at once.
    #[arg(long, value_name = "N", default_value_t = 1, help_heading = "Order and pace")]
    pub concurrency: u32,

    /// At most this many targets at once on one server (0: no limit beyond --concurrency).
    #[arg(long, value_name = "M", default_value_t = 0, help_heading = "Order and pace")]
    pub per_server: u32,

    /// Change the N smallest targets first, one at a time, and stop if any of them fails.
    #[arg(long, value_name = "N", default_value_t = 0, help_heading = "Order and pace")]
    pub canary: u32,

    /// Stop starting targets once this many have failed (0: never stop; the running ones
    /// finish either way).
    #[arg(long, value_name = "K", default_value_t = 0, help_heading = "Order and pace")]
    pub max_failures: u32,

    /// Pause after each target before the next starts. Units: ms, s, m, h.
    #[arg(long, value_name = "DURATION", default_value = "0s", help_heading = "Order and pace")]
    pub interval: String,

    /// Start targets only inside this daily window, `HH:MM-HH:MM` (may span midnight); a
    /// running target finishes after it closes.
    #[arg(long, value_name = "HH:MM-HH:MM", help_heading = "Order and pace")]
    pub window: Option<String>,

    /// The time zone of --window, as PostgreSQL names it (`Europe/Paris`, `UTC`).
    #[arg(long, value_name = "ZONE", default_value = "UTC", requires = "window", help_heading = "Order and pace")]
    pub timezone: String,

    /// Continue the fleet run with this id (printed when it started; see
    /// pgghost.fleet_runs) where it stopped: targets already done are not run again.
    #[arg(long, value_name = "FLEET_ID", requires = "registry", help_heading = "Order and pace")]
    pub resume: Option<String>,

    /// List the targets in the order they would run, with their size and server, and what
    /// would run; change nothing.
    #[arg(long, help_heading = "Order and pace")]
    pub plan: bool,

    // ---- report -------------------------------------------------------------------------
    /// Also write the report as JSON to this file.
    #[arg(long, value_name = "FILE", help_heading = "Report")]
    pub report: Option<PathBuf>,

    /// POST the report to this https:// (or http://) URL at the end, as JSON a
    /// Slack-compatible incoming webhook accepts (`text`, plus the whole report under
    /// `report`).
    #[arg(long, value_name = "URL", help_heading = "Report")]
    pub notify_webhook: Option<String>,

    /// Verify an https webhook against the CA certificates of this PEM file instead of the
    /// system's trusted CAs.
    #[arg(long, value_name = "FILE", help_heading = "Report")]
    pub notify_webhook_ca: Option<PathBuf>,

    /// Directory of hooks: `pg-ghost-on-target-success*`, `pg-ghost-on-target-failure*` after
    /// each target, `pg-ghost-on-fleet-complete*` at the end (PG_GHOST_FLEET_* variables).
    #[arg(long, value_name = "DIR", help_heading = "Report")]
    pub hooks_path: Option<PathBuf>,

    /// Kill a hook that runs longer than this. Units: ms, s, m.
    #[arg(long, value_name = "DURATION", default_value = "60s", help_heading = "Report")]
    pub hooks_timeout: String,

    /// How often to log the fleet's progress (targets ended, running, pending). Units: s, m.
    #[arg(long, value_name = "DURATION", default_value = "30s", help_heading = "Report")]
    pub status_interval: String,

    /// Serve the fleet's commands on this Unix socket (mode 0600): `status`, `pause` (no
    /// target starts until `resume`), `resume`, `panic` (every running target stops, cleanly,
    /// and none starts), `help`.
    #[arg(long, value_name = "PATH", help_heading = "Report")]
    pub serve_socket_file: Option<PathBuf>,

    /// Serve the fleet's metrics (targets by status, paused, waiting for the window,
    /// stopped) in the Prometheus text format at http://ADDR:PORT/metrics.
    #[arg(long, value_name = "ADDR:PORT", help_heading = "Report")]
    pub metrics_listen: Option<String>,
}

#[derive(Clone, Debug, Args)]
pub struct PlanArgs {
    #[command(flatten)]
    pub target: Target,

    /// The change, as the clauses that follow `ALTER TABLE name`. Optional with
    /// --partition-by.
    #[arg(long, value_name = "CLAUSES", required_unless_present = "partition_by")]
    pub alter: Option<String>,

    /// The unique NOT NULL index `pg-ghost run --key` would copy and apply rows by, by name.
    /// Default: the primary key.
    #[arg(long, value_name = "INDEX")]
    pub key: Option<String>,

    #[command(flatten)]
    pub conversion: ConversionArgs,

    /// `text` for people, `json` for tools.
    #[arg(long, value_enum, default_value_t = PlanFormat::Text)]
    pub format: PlanFormat,

    /// Also read the table for rows the ALTER's clauses would refuse (duplicates, orphans,
    /// NULLs, CHECK violations, failing casts), as `pg-ghost run` does before its copy.
    #[arg(long)]
    pub check_data: bool,

    /// With --check-data: how many offending rows to show.
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub data_check_limit: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum StrategyArg {
    Auto,
    Direct,
    Ghost,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum PlanFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// The connection and the table, shared by `run` and `cleanup`.
#[derive(Clone, Debug, Args)]
pub struct Target {
    /// Connection: a libpq `key=value` string (`host=db1 user=dba dbname=app`) or a
    /// `postgresql://` URI. As with psql, a service (`service=`, PGSERVICE), libpq's
    /// variables (PGHOST, PGUSER, ...) and the password file (~/.pgpass, PGPASSFILE) fill in
    /// what it leaves out; libpq keys pg-ghost does not act on are refused.
    #[arg(long, value_name = "CONNINFO", default_value = "")]
    pub conn: String,

    /// The table, `[schema.]name`, in SQL syntax: unquoted parts fold to lower case, quote
    /// the rest (`'"Sales"."Orders 2024"'`). Without a schema, the search_path decides.
    #[arg(long, value_name = "[SCHEMA.]NAME")]
    pub table: String,
}

#[derive(Clone, Debug, Args)]
pub struct WindowArgs {
    #[command(flatten)]
    pub target: Target,

    /// How long to wait for the running pg-ghost to carry the request out. Units: ms, s, m.
    #[arg(long, value_name = "DURATION", default_value = "5m")]
    pub wait: String,
}

#[derive(Clone, Debug, Args)]
pub struct CleanupArgs {
    #[command(flatten)]
    pub target: Target,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum HistoryFormat {
    Text,
    Json,
}

#[derive(Clone, Debug, Args)]
pub struct HistoryArgs {
    /// Connection, as for `run`.
    #[arg(long, value_name = "CONNINFO", default_value = "")]
    pub conn: String,

    /// Only the runs on this table, `[schema.]name` in SQL syntax (without a schema: in any
    /// schema). Default: every table.
    #[arg(long, value_name = "[SCHEMA.]NAME")]
    pub table: Option<String>,

    /// `text`, a table for people; `json`, an array of objects with every column.
    #[arg(long, value_enum, default_value_t = HistoryFormat::Text)]
    pub format: HistoryFormat,

    /// The history table to read, as given to `run --history-table`.
    #[arg(long, value_name = "[SCHEMA.]NAME", default_value = crate::history::DEFAULT_TABLE)]
    pub history_table: String,

    /// At most this many runs, the newest.
    #[arg(long, value_name = "N", default_value_t = 50)]
    pub limit: u32,
}

/// `--partition-by` and its partitions, shared by `run` and `plan`.
#[derive(Clone, Debug, Default, Args)]
pub struct ConversionArgs {
    /// Convert the (plain) table into a partitioned table with this partition key, e.g.
    /// "RANGE (created_at)", its partitions given by --partitions or --partitions-auto. Every
    /// primary key and unique constraint must include the key's columns, as PostgreSQL
    /// requires: replace them in --alter ("DROP CONSTRAINT t_pkey, ADD PRIMARY KEY (id,
    /// created_at)"); rows are still found by the original key. Always through a ghost.
    #[arg(long, value_name = "KEY", requires = "partitions_source", help_heading = "Conversion into a partitioned table")]
    pub partition_by: Option<String>,

    /// With --partition-by: a file of `CREATE TABLE <name> PARTITION OF <table> <bound>;`
    /// statements. The names are the partitions' final names (an unqualified one is in the
    /// table's schema; a name already taken is refused); the parent must be the table itself.
    #[arg(long, value_name = "FILE", group = "partitions_source", requires = "partition_by", help_heading = "Conversion into a partitioned table")]
    pub partitions: Option<PathBuf>,

    /// With --partition-by "RANGE (column)": make the partitions, e.g. "monthly from 2022-01
    /// to 2027-01, default" (daily YYYY-MM-DD, monthly YYYY-MM or yearly YYYY; START
    /// included, END excluded), named <table>_p2022_01 (_p2022, _p2022_01_31) and
    /// <table>_default.
    #[arg(long, value_name = "SPEC", group = "partitions_source", requires = "partition_by", help_heading = "Conversion into a partitioned table")]
    pub partitions_auto: Option<String>,
}

#[derive(Clone, Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub target: Target,

    /// The change, as the clauses that follow `ALTER TABLE name`; several separated by
    /// commas (`ALTER COLUMN id TYPE bigint, ADD COLUMN flag boolean NOT NULL DEFAULT false`).
    /// Optional with --partition-by.
    #[arg(long, value_name = "CLAUSES", required_unless_present = "partition_by")]
    pub alter: Option<String>,

    /// Really swap the tables. Without it, pg-ghost does everything but the cut-over, then
    /// cleans up, and the database ends exactly as it started.
    #[arg(long)]
    pub execute: bool,

    /// How to make the change: `ghost` copies the table into a ghost fed by the change
    /// stream and swaps it in; `direct` changes the table itself when no clause rewrites it
    /// (catalog steps under a short lock, validations online; see `pg-ghost plan`); `auto`,
    /// the default, takes `direct` when it can, else `ghost`.
    #[arg(long, value_enum, default_value_t = StrategyArg::Auto)]
    pub strategy: StrategyArg,

    /// The unique NOT NULL index to copy and apply rows by, by name. Default: the primary key.
    #[arg(long, value_name = "INDEX")]
    pub key: Option<String>,

    #[command(flatten)]
    pub conversion: ConversionArgs,

    /// Continue an interrupted run from its checkpoint (copy cursor and confirmed LSN in the
    /// changelog table) instead of starting over.
    #[arg(long)]
    pub resume: bool,

    /// Drop a ghost table left by an earlier run before starting, instead of refusing.
    #[arg(long)]
    pub initially_drop_ghost_table: bool,

    /// The table every run records itself in (created on first use): `[schema.]name`, in
    /// schema `pgghost` when none is given. See `pg-ghost history`.
    #[arg(long, value_name = "[SCHEMA.]NAME", default_value = crate::history::DEFAULT_TABLE)]
    pub history_table: String,

    /// Do not record this run in the history table.
    #[arg(long)]
    pub no_history: bool,

    /// Skip the row-for-row checksum of the ghost against the original before the swap.
    #[arg(long)]
    pub skip_checksum: bool,

    /// Checksum workers (1 to 64): key ranges compared at once before the swap. Each worker
    /// is one more connection reading both tables.
    #[arg(long, value_name = "N", default_value_t = 2)]
    pub checksum_workers: u32,

    /// How often to print the status line on stderr. Units: ms, s, m, h (`5s`, `1m30s`).
    #[arg(long, value_name = "DURATION", default_value = "5s")]
    pub status_interval: String,

    /// How long to keep trying to get a lost connection back (a terminated backend, a server
    /// restart) before the run stops; the work it was doing is then done again. `0s` stops
    /// the run at the first lost connection. Units: ms, s, m.
    #[arg(long, value_name = "DURATION", default_value = "60s")]
    pub reconnect_timeout: String,

    /// Create the replication slot with FAILOVER (PostgreSQL 17+), so that standbys running
    /// with `sync_replication_slots = on` keep a copy of it: a run cut short by a failover is
    /// then resumed on the promoted standby (`--resume`). Needs `synchronized_standby_slots`
    /// set on the primary; each flush is confirmed only once those standbys have it.
    #[arg(long)]
    pub failover_slot: bool,

    // ---- copy -------------------------------------------------------------------------
    /// Rows per copy chunk to start with (1 to 1,000,000); the size then adapts to
    /// --chunk-time. Hot-tunable through the socket (`chunk-size=N`).
    #[arg(long, value_name = "ROWS", default_value_t = 10_000, help_heading = "Copy")]
    pub chunk_size: u64,

    /// The time one copy chunk should take; the chunk size grows or shrinks towards it.
    /// Units: ms, s, m (`500ms`, `2s`).
    #[arg(long, value_name = "DURATION", default_value = "500ms", help_heading = "Copy")]
    pub chunk_time: String,

    /// Copy workers (1 to 64), each on its own connection and a disjoint key range.
    #[arg(long, value_name = "N", default_value_t = 1, help_heading = "Copy")]
    pub copy_workers: u32,

    // ---- data checks ------------------------------------------------------------------
    /// How many offending rows (or duplicate values) a data check shows when it refuses the
    /// ALTER (1 to 1000); the refusal also gives a query that lists them all.
    #[arg(long, value_name = "N", default_value_t = 10, help_heading = "Data checks")]
    pub data_check_limit: u32,

    /// Do not scan the table before creating anything for rows the ALTER's UNIQUE, PRIMARY
    /// KEY, FOREIGN KEY, NOT NULL, CHECK or type change would reject; the copy or the index
    /// builds then find them (and stop the run, the original untouched).
    #[arg(long, help_heading = "Data checks")]
    pub skip_data_checks: bool,

    // ---- cut-over ---------------------------------------------------------------------
    /// How long the swap's ACCESS EXCLUSIVE lock may wait. Keep it short: a waiting lock
    /// request stalls every later query on the table. When referencing tables are locked too,
    /// the wait is also kept under half the server's deadlock_timeout. Units: ms, s.
    #[arg(long, value_name = "DURATION", default_value = "1s", help_heading = "Cut-over")]
    pub cut_over_lock_timeout: String,

    /// How many times to try the cut-over lock (with back-off between tries) before giving up.
    #[arg(long, value_name = "N", default_value_t = 60, help_heading = "Cut-over")]
    pub cut_over_retries: u32,

    /// Once the cut-over has been trying to lock the table this long (across retries),
    /// terminate the sessions its waiting lock is blocked by (pg_terminate_backend) and
    /// proceed. Default: never, only report them. Units: ms, s, m.
    #[arg(long, value_name = "DURATION", help_heading = "Cut-over")]
    pub cut_over_kill_blockers_after: Option<String>,

    /// Drop the old table after a successful cut-over. Default: keep it as `_<table>_del`.
    #[arg(long, help_heading = "Cut-over")]
    pub ok_to_drop_table: bool,

    /// Name the old table `_<table>_<YYYYMMDDhhmmss>_del`, so that several runs can keep theirs.
    #[arg(long, help_heading = "Cut-over")]
    pub timestamp_old_table: bool,

    /// After the swap, keep the old table current for this long (`2h`): every change to the
    /// new table is applied to it in its old shape through a second replication slot, so that
    /// `pg-ghost revert` can swap it back without losing a write. `pg-ghost finalize` ends the
    /// window early. Refused for tables with dependents the swap moves and for type changes
    /// with USING. Units: s, m, h.
    #[arg(long, value_name = "DURATION", help_heading = "Cut-over")]
    pub revertible_for: Option<String>,

    /// While this file exists after the copy, keep applying changes and wait before the
    /// cut-over. Remove it (or send `unpostpone` to the socket) to proceed.
    #[arg(long, value_name = "PATH", help_heading = "Cut-over")]
    pub postpone_cut_over_flag_file: Option<PathBuf>,

    /// When this file appears, abort at once in any phase: roll back, drop slot and
    /// publication, leave the original untouched, keep the ghost for inspection.
    #[arg(long, value_name = "PATH", help_heading = "Cut-over")]
    pub panic_flag_file: Option<PathBuf>,

    // ---- throttling -------------------------------------------------------------------
    /// Throttle the copy while replica replay lag exceeds this. A plain number is
    /// milliseconds (units work too: `2s`); `0` turns the check off. Hot-tunable
    /// (`max-lag-millis=N`).
    #[arg(long, value_name = "MILLIS", default_value = "1500", help_heading = "Throttling")]
    pub max_lag_millis: String,

    /// Physical standbys to measure lag on, `host[:port],...` (port 5432 when left out; a
    /// host starting with `/` is a socket directory). User, password and database are
    /// those of --conn. Default: `replay_lag` from pg_stat_replication.
    #[arg(long, value_name = "HOST:PORT,...", help_heading = "Throttling")]
    pub throttle_control_replicas: Option<String>,

    /// How often to write the heartbeat row that replicas are checked with. A plain number
    /// is milliseconds. Must be below --max-lag-millis.
    #[arg(long, value_name = "MILLIS", default_value = "100", help_heading = "Throttling")]
    pub heartbeat_interval_millis: String,

    /// Throttle the copy while a server metric reaches its threshold: `name=threshold,...`.
    /// Metrics: active_sessions, waiting_sessions, replication_slot_lag_bytes (of other
    /// slots), wal_bytes_per_sec; byte metrics take units (`1GB`). Hot-tunable.
    #[arg(long, value_name = "NAME=THRESHOLD,...", default_value = "", help_heading = "Throttling")]
    pub max_load: String,

    /// Abort (or hibernate, see --critical-load-hibernate-seconds) when a metric reaches
    /// its threshold. Same syntax as --max-load. Hot-tunable.
    #[arg(long, value_name = "NAME=THRESHOLD,...", default_value = "", help_heading = "Throttling")]
    pub critical_load: String,

    /// On critical load, pause everything for this long and check again instead of
    /// aborting. A plain number is seconds; `0` means abort.
    #[arg(long, value_name = "SECONDS", default_value = "0", help_heading = "Throttling")]
    pub critical_load_hibernate_seconds: String,

    /// Throttle while this single SELECT returns a positive number in its first column.
    /// Hot-tunable.
    #[arg(long, value_name = "SELECT", help_heading = "Throttling")]
    pub throttle_query: Option<String>,

    /// Throttle while this file exists.
    #[arg(long, value_name = "PATH", help_heading = "Throttling")]
    pub throttle_flag_file: Option<PathBuf>,

    /// Throttle while this file exists; shared by all runs on the host, to pause them all.
    /// Give an empty value to ignore it.
    #[arg(long, value_name = "PATH", default_value = "/tmp/pg-ghost.throttle", help_heading = "Throttling")]
    pub throttle_additional_flag_file: String,

    /// After each chunk, sleep this fraction of the time it took (`0.5`: copy runs at most
    /// two thirds of the time). Hot-tunable (`nice-ratio=X`).
    #[arg(long, value_name = "RATIO", default_value_t = 0.0, help_heading = "Throttling")]
    pub nice_ratio: f64,

    /// Throttle the copy while this run's slot retains more WAL than this (the apply is
    /// behind). Units as in postgresql.conf, powers of 1024: kB, MB, GB, TB; `0` turns it off.
    #[arg(long, value_name = "BYTES", default_value = "10GB", help_heading = "Throttling")]
    pub max_retained_wal: String,

    /// Abort, dropping the slot, before it retains more WAL than this, so the disk never
    /// fills. Same units as --max-retained-wal; default: off.
    #[arg(long, value_name = "BYTES", help_heading = "Throttling")]
    pub critical_retained_wal: Option<String>,

    // ---- control ----------------------------------------------------------------------
    /// Serve the interactive commands (`status`, `sup`, `throttle`, `chunk-size=N`, `panic`,
    /// `help`, ...) on this Unix socket (mode 0600, removed at exit).
    #[arg(long, value_name = "PATH", help_heading = "Control")]
    pub serve_socket_file: Option<PathBuf>,

    /// Serve the same commands on this TCP port, on 127.0.0.1 only.
    #[arg(long, value_name = "PORT", help_heading = "Control")]
    pub serve_tcp_port: Option<u16>,

    /// Directory of hook executables (`pg-ghost-on-startup*`, `-on-before-cut-over*`, ...),
    /// run with PG_GHOST_* environment variables; a hook exiting non-zero fails the run.
    #[arg(long, value_name = "DIR", help_heading = "Control")]
    pub hooks_path: Option<PathBuf>,

    /// Kill a hook that runs longer than this, and fail the run. Units: ms, s, m.
    #[arg(long, value_name = "DURATION", default_value = "60s", help_heading = "Control")]
    pub hooks_timeout: String,

    /// How often to run the `on-status` hooks. Units: ms, s, m.
    #[arg(long, value_name = "DURATION", default_value = "60s", help_heading = "Control")]
    pub hooks_status_interval: String,

    /// Serve the run's metrics in the Prometheus text format at http://ADDR:PORT/metrics
    /// (`127.0.0.1:9187`, `[::1]:9187`, `0.0.0.0:9187` for every interface). An IP address,
    /// not a host name; port 0 lets the system choose, and the log says which.
    #[arg(long, value_name = "ADDR:PORT", help_heading = "Control")]
    pub metrics_listen: Option<String>,

    // ---- testing on a replica ---------------------------------------------------------
    /// Rehearse on a writable replica (a logical subscriber of production; --conn points at
    /// it): run the change there, disable the subscriptions feeding the table at the
    /// cut-over, swap and swap straight back, compare both tables, and leave them (the
    /// migrated one as _<table>_gho) with the subscriptions disabled. Not with --execute.
    #[arg(long, help_heading = "Testing on a replica")]
    pub test_on_replica: bool,

    /// With --test-on-replica: do not disable the subscriptions; at the cut-over, wait until
    /// someone else has (e.g. an on-before-cut-over hook running ALTER SUBSCRIPTION ... DISABLE).
    #[arg(long, help_heading = "Testing on a replica")]
    pub test_on_replica_skip_replica_stop: bool,
}
