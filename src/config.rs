//! The second stage of the command line: the flags of [`crate::cli`] validated and turned
//! into typed values (`Duration`, byte counts, [`LoadLimits`], [`ConnInfo`]).
//!
//! Invariants: a [`Config`] is only ever built through [`Config::from_cli`], so every value
//! in it has been checked; it is immutable for the whole run, and each component receives
//! its own part (`config.copy`, `config.cut_over`, ...). What a DBA may change while the run
//! is under way is [`Tunables`]: `config.tunables` holds the starting values, which the
//! runner moves into a `tokio::sync::watch`. Every error is [`ErrorKind::Config`] and names
//! the flag and the value (never the connection string: it may hold a password).
//!
//! [`ErrorKind::Config`]: crate::error::ErrorKind::Config

mod load;
mod replicas;
mod tunables;
mod units;

pub use load::{LoadLimit, LoadLimits, LoadMetric};
pub use replicas::{format_replicas, parse_replicas, replica_conn};
pub use tunables::{chunk_size, max_lag, nice_ratio, throttle_query, Tunables, MAX_CHUNK_SIZE, TUNABLE_NAMES};
pub use units::{format_bytes, parse_bytes, parse_duration, Bare};

use crate::cli::{CleanupArgs, HistoryArgs, RunArgs, Target};
pub use crate::cli::HistoryFormat;
use crate::conn::ConnInfo;
use crate::error::{Error, Result};
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// The most copy workers: each holds a connection and a transaction at a time.
pub const MAX_COPY_WORKERS: u32 = 64;

/// The most checksum workers: each holds a connection reading both tables.
pub const MAX_CHECKSUM_WORKERS: u32 = 64;

/// The most offending rows a data check reports: the refusal is one message.
pub const MAX_DATA_CHECK_LIMIT: u32 = 1000;

/// Everything `pg-ghost run` was asked to do, validated.
#[derive(Clone)]
pub struct Config {
    pub conn: ConnInfo,
    /// `--table` as given (`[schema.]name` in SQL syntax); `inspect` resolves it.
    pub table: String,
    /// The clauses that follow `ALTER TABLE name`; empty only for a conversion into a
    /// partitioned table given without `--alter`.
    pub alter: String,
    /// Index to copy and apply by; `None`: the primary key.
    pub key: Option<String>,
    /// `--partition-by` with its partitions: the table becomes a partitioned table.
    pub conversion: Option<crate::ghost::Conversion>,
    /// `false`: dry run, everything but the cut-over, then cleanup.
    pub execute: bool,
    /// `--strategy`.
    pub strategy: crate::cli::StrategyArg,
    pub resume: bool,
    pub initially_drop_ghost_table: bool,
    pub skip_checksum: bool,
    /// `--failover-slot`: the slot is synchronized to standbys (`crate::replication::failover`).
    pub failover_slot: bool,
    /// Key ranges the checksum compares at once; at least 1, at most [`MAX_CHECKSUM_WORKERS`].
    pub checksum_workers: usize,
    /// `--history-table` as given (resolved on the server); `None` with `--no-history`.
    pub history_table: Option<String>,
    pub status_interval: Duration,
    /// Checked in every phase; when it appears the run aborts.
    pub panic_flag_file: Option<PathBuf>,
    pub copy: CopyConfig,
    pub data_checks: DataCheckConfig,
    pub cut_over: CutOverConfig,
    pub throttle: ThrottleConfig,
    pub control: ControlConfig,
    /// `--metrics-listen`: where to serve `/metrics`.
    pub metrics_listen: Option<SocketAddr>,
    pub hooks: HooksConfig,
    /// `Some` with `--test-on-replica`.
    pub test_on_replica: Option<ReplicaTest>,
    /// `--revertible-for`: how long the old table is kept current after the swap.
    pub revertible_for: Option<Duration>,
    /// The id the run records itself under in the history of runs; None: a new one. Given by
    /// `migrate`, which links its migrations to their runs.
    pub run_id: Option<String>,
    /// Starting values of the hot-tunable settings.
    pub tunables: Tunables,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CopyConfig {
    /// Target time per chunk; the chunk size adapts towards it.
    pub chunk_time: Duration,
    /// At least 1, at most [`MAX_COPY_WORKERS`].
    pub workers: usize,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataCheckConfig {
    /// `--skip-data-checks`: the copy and the index builds find offending rows instead.
    pub skip: bool,
    /// Offending rows (or duplicate values) to report; 1 to [`MAX_DATA_CHECK_LIMIT`].
    pub limit: usize,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CutOverConfig {
    /// `lock_timeout` for the swap's lock; at least 1 ms (PostgreSQL reads 0 as "wait forever").
    pub lock_timeout: Duration,
    /// Attempts at the lock before giving up; at least 1.
    pub retries: u32,
    /// Terminate blockers that held the lock this long; `None`: only report them.
    pub kill_blockers_after: Option<Duration>,
    pub ok_to_drop_table: bool,
    pub timestamp_old_table: bool,
    pub postpone_flag_file: Option<PathBuf>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ThrottleConfig {
    /// How often the heartbeat row is written; below `tunables.max_lag` when that is set.
    pub heartbeat_interval: Duration,
    /// On critical load, pause this long and check again; `None`: abort.
    pub critical_load_hibernate: Option<Duration>,
    pub flag_file: Option<PathBuf>,
    /// Shared by all runs on the host; `None` when given as empty.
    pub additional_flag_file: Option<PathBuf>,
    /// Throttle while this run's slot retains more WAL (bytes); `None`: off.
    pub max_retained_wal: Option<u64>,
    /// Abort before the slot retains this much WAL (bytes); above `max_retained_wal`.
    pub critical_retained_wal: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControlConfig {
    pub socket_file: Option<PathBuf>,
    /// A port on 127.0.0.1, never 0.
    pub tcp_port: Option<u16>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HooksConfig {
    /// `None`: no hooks run.
    pub path: Option<PathBuf>,
    pub timeout: Duration,
    pub status_interval: Duration,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaTest {
    /// Disable the subscriptions feeding the table at the cut-over; `false` with
    /// `--test-on-replica-skip-replica-stop`: wait until someone else has disabled them.
    pub stop_replication: bool,
    /// With `--execute`: swap and swap back. Without it, as gh-ost does, a dry run on the
    /// replica that stops before any swap.
    pub swap: bool,
}

/// What `pg-ghost cleanup` needs.
#[derive(Clone)]
pub struct CleanupConfig {
    pub conn: ConnInfo,
    /// `--table` as given; resolved like `run`'s.
    pub table: String,
}

impl Config {
    /// Validates the flags of `run`; the libpq environment fills what `--conn` leaves out.
    pub fn from_cli(args: &RunArgs) -> Result<Config> {
        Config::from_cli_with_env(args, |k| std::env::var(k).ok())
    }

    /// [`Config::from_cli`] with the environment given, for tests.
    pub fn from_cli_with_env(args: &RunArgs, env: impl Fn(&str) -> Option<String>) -> Result<Config> {
        let (conn, table) = run_target(args, env)?;
        let tunables = tunables_from(args)?;
        let throttle = throttle_from(args, &tunables)?;
        let conversion = conversion_from(&args.conversion, &table)?;
        Ok(Config {
            conn,
            table,
            alter: match (&args.alter, &conversion) {
                (Some(alter), _) => required("alter", alter)?,
                (None, Some(_)) => String::new(),
                (None, None) => return Err(Error::config("--alter is missing: give the clauses that follow ALTER TABLE <name>")),
            },
            key: args.key.as_deref().map(|k| required("key", k)).transpose()?,
            conversion,
            execute: args.execute,
            strategy: strategy(args)?,
            resume: resume(args)?,
            initially_drop_ghost_table: args.initially_drop_ghost_table,
            skip_checksum: args.skip_checksum,
            failover_slot: args.failover_slot,
            checksum_workers: checksum_workers(args)?,
            history_table: (!args.no_history).then(|| required("history-table", &args.history_table)).transpose()?,
            status_interval: positive("status-interval", &args.status_interval, Bare::Refuse)?,
            panic_flag_file: args.panic_flag_file.clone(),
            copy: copy_from(args)?,
            data_checks: data_checks_from(args)?,
            cut_over: cut_over_from(args)?,
            throttle,
            control: control_from(args)?,
            metrics_listen: args.metrics_listen.as_deref().map(metrics_listen).transpose()?,
            hooks: hooks_from(args)?,
            test_on_replica: test_on_replica(args)?,
            revertible_for: revertible_for(args)?,
            run_id: None,
            tunables,
        })
    }

    /// The run `migrate` makes for one `ALTER TABLE` of a file: `run --execute --strategy auto`
    /// with `run`'s defaults, on the connection `migrate` resolved, under `migrate`'s lock
    /// timeout and retries. The old table is dropped after the swap unless `keep_old_tables`
    /// (then it keeps a timestamped name, so that several changes of one table keep theirs).
    pub fn for_migration(conn: ConnInfo, table: &str, clauses: &str, how: &MigrationRuns, run_id: String) -> Result<Config> {
        use clap::Parser;
        let timeout = format!("{}ms", how.lock_timeout.as_millis().max(1));
        let retries = how.lock_retries.to_string();
        // The connection is `migrate`'s, put in below; run's parser only needs one to accept.
        let mut argv = vec!["pg-ghost", "run", "--conn", "user=migrate", "--table", table, "--alter", clauses, "--execute", "--strategy", "auto"];
        argv.extend(["--cut-over-lock-timeout", &timeout, "--cut-over-retries", &retries]);
        argv.push(if how.keep_old_tables { "--timestamp-old-table" } else { "--ok-to-drop-table" });
        if how.failover_slot {
            argv.push("--failover-slot");
        }
        let cli = crate::cli::Cli::try_parse_from(argv).map_err(|e| Error::internal(format!("the run of a migration: {e}")))?;
        let crate::cli::Command::Run(args) = cli.command else { return Err(Error::internal("the run of a migration is not a run")) };
        let config = Config::from_cli_with_env(&args, |_| None)?;
        let mut conn = conn;
        conn.reconnect_timeout = config.conn.reconnect_timeout;
        Ok(Config { conn, run_id: Some(run_id), ..config })
    }
}

/// What `migrate` and `fleet` give each online change they make.
#[derive(Clone, Debug)]
pub struct MigrationRuns {
    /// How long a statement or a cut-over may wait for its lock.
    pub lock_timeout: Duration,
    /// How many times one is tried when its lock is not had in time.
    pub lock_retries: u32,
    pub keep_old_tables: bool,
    /// `--failover-slot` for the changes that go through a ghost.
    pub failover_slot: bool,
}

/// `pg-ghost plan`'s flags.
pub fn plan_config(args: &crate::cli::PlanArgs) -> Result<crate::plan::PlanConfig> {
    let (conn, table) = target(&args.target, |k| std::env::var(k).ok())?;
    let conversion = conversion_from(&args.conversion, &table)?;
    Ok(crate::plan::PlanConfig {
        conn,
        alter: match (&args.alter, &conversion) {
            (Some(alter), _) => required("alter", alter)?,
            (None, Some(_)) => String::new(),
            (None, None) => return Err(Error::config("--alter is missing: give the clauses that follow ALTER TABLE <name>")),
        },
        conversion: conversion.map(|conversion| crate::plan::PlanConversion { conversion, flags: conversion_flags(&args.conversion) }),
        table,
        key: args.key.as_deref().map(|k| required("key", k)).transpose()?,
        check_data: match (args.check_data, args.data_check_limit) {
            (false, _) => None,
            (true, 1..=1000) => Some(args.data_check_limit),
            (true, n) => return Err(Error::config(format!("--data-check-limit {n}: give between 1 and 1000"))),
        },
        format: match args.format {
            crate::cli::PlanFormat::Text => crate::plan::Format::Text,
            crate::cli::PlanFormat::Json => crate::plan::Format::Json,
        },
    })
}

/// `pg-ghost migrate`'s flags.
pub fn migrate_config(args: &crate::cli::MigrateArgs) -> Result<crate::migrate::MigrateConfig> {
    migrate_config_with_env(args, |k| std::env::var(k).ok())
}

pub fn migrate_config_with_env(args: &crate::cli::MigrateArgs, env: impl Fn(&str) -> Option<String>) -> Result<crate::migrate::MigrateConfig> {
    use crate::cli::PhaseArg;
    use crate::migrate::{files::Phase, files::Version, Mode};
    let conn = ConnInfo::parse_with_env(&args.conn, env).map_err(|e| e.context("--conn"))?;
    if !args.dir.is_dir() {
        return Err(Error::config(format!("--dir {}: not a directory", args.dir.display())));
    }
    let target = match args.target.as_deref() {
        None => None,
        Some(t) => Some(Version::parse(t.trim_start_matches('V')).ok_or_else(|| Error::config(format!("--target {t:?}: give a version, e.g. 3 or 1.2")))?),
    };
    if args.lock_retries == 0 {
        return Err(Error::config("--lock-retries 0: give at least 1"));
    }
    Ok(crate::migrate::MigrateConfig {
        conn,
        dir: args.dir.clone(),
        target,
        phase: args.phase.map(|p| match p {
            PhaseArg::Expand => Phase::Expand,
            PhaseArg::Migrate => Phase::Migrate,
            PhaseArg::Contract => Phase::Contract,
        }),
        mode: match (args.plan, args.status) {
            (true, _) => Mode::Plan,
            (_, true) => Mode::Status,
            _ => Mode::Apply,
        },
        runs: MigrationRuns {
            lock_timeout: positive("lock-timeout", &args.lock_timeout, Bare::Refuse)?,
            lock_retries: args.lock_retries,
            keep_old_tables: args.keep_old_tables,
            failover_slot: args.failover_slot,
        },
        out_of_order: args.out_of_order,
        format: match args.format {
            crate::cli::PlanFormat::Text => crate::plan::Format::Text,
            crate::cli::PlanFormat::Json => crate::plan::Format::Json,
        },
    })
}

impl CleanupConfig {
    pub fn from_cli(args: &CleanupArgs) -> Result<CleanupConfig> {
        CleanupConfig::from_cli_with_env(args, |k| std::env::var(k).ok())
    }

    pub fn from_cli_with_env(args: &CleanupArgs, env: impl Fn(&str) -> Option<String>) -> Result<CleanupConfig> {
        let (conn, table) = target(&args.target, env)?;
        Ok(CleanupConfig { conn, table })
    }
}

/// What `pg-ghost history` needs.
#[derive(Clone)]
pub struct HistoryConfig {
    pub conn: ConnInfo,
    /// `--table` as given: only the runs on it.
    pub table: Option<String>,
    pub history_table: String,
    pub format: HistoryFormat,
    pub limit: i64,
}

impl HistoryConfig {
    pub fn from_cli(args: &HistoryArgs) -> Result<HistoryConfig> {
        HistoryConfig::from_cli_with_env(args, |k| std::env::var(k).ok())
    }

    pub fn from_cli_with_env(args: &HistoryArgs, env: impl Fn(&str) -> Option<String>) -> Result<HistoryConfig> {
        let conn = ConnInfo::parse_with_env(&args.conn, env).map_err(|e| e.context("--conn"))?;
        if args.limit == 0 {
            return Err(Error::config("--limit 0: give at least 1"));
        }
        Ok(HistoryConfig {
            conn,
            table: args.table.as_deref().map(|t| required("table", t)).transpose()?,
            history_table: required("history-table", &args.history_table)?,
            format: args.format,
            limit: i64::from(args.limit),
        })
    }
}

/// The connection of `run`, with `--reconnect-timeout` (which `cleanup` has not: it just
/// stops and can be run again).
fn run_target(args: &RunArgs, env: impl Fn(&str) -> Option<String>) -> Result<(ConnInfo, String)> {
    let (mut conn, table) = target(&args.target, env)?;
    conn.reconnect_timeout = parse_duration("reconnect-timeout", &args.reconnect_timeout, Bare::Refuse)?;
    Ok((conn, table))
}

fn target(t: &Target, env: impl Fn(&str) -> Option<String>) -> Result<(ConnInfo, String)> {
    // The error must not repeat the connection string: it may carry a password.
    let conn = ConnInfo::parse_with_env(&t.conn, env).map_err(|e| e.context("--conn"))?;
    Ok((conn, required("table", &t.table)?))
}

fn tunables_from(args: &RunArgs) -> Result<Tunables> {
    Ok(Tunables {
        chunk_size: chunk_size("chunk-size", args.chunk_size)?,
        nice_ratio: nice_ratio("nice-ratio", args.nice_ratio)?,
        max_lag: max_lag("max-lag-millis", &args.max_lag_millis)?,
        max_load: LoadLimits::parse("max-load", &args.max_load)?,
        critical_load: LoadLimits::parse("critical-load", &args.critical_load)?,
        throttle_query: args
            .throttle_query
            .as_deref()
            .map(|q| throttle_query("throttle-query", q))
            .transpose()?
            .flatten(),
        throttle_control_replicas: match &args.throttle_control_replicas {
            Some(list) => parse_replicas("throttle-control-replicas", list)?,
            None => Vec::new(),
        },
    })
}

fn copy_from(args: &RunArgs) -> Result<CopyConfig> {
    if !(1..=MAX_COPY_WORKERS).contains(&args.copy_workers) {
        return Err(Error::config(format!(
            "--copy-workers {}: give between 1 and {MAX_COPY_WORKERS} workers",
            args.copy_workers
        )));
    }
    Ok(CopyConfig {
        chunk_time: positive("chunk-time", &args.chunk_time, Bare::Refuse)?,
        workers: args.copy_workers as usize,
    })
}

fn checksum_workers(args: &RunArgs) -> Result<usize> {
    if !(1..=MAX_CHECKSUM_WORKERS).contains(&args.checksum_workers) {
        return Err(Error::config(format!(
            "--checksum-workers {}: give between 1 and {MAX_CHECKSUM_WORKERS} workers",
            args.checksum_workers
        )));
    }
    Ok(args.checksum_workers as usize)
}

fn data_checks_from(args: &RunArgs) -> Result<DataCheckConfig> {
    if !(1..=MAX_DATA_CHECK_LIMIT).contains(&args.data_check_limit) {
        return Err(Error::config(format!(
            "--data-check-limit {}: give between 1 and {MAX_DATA_CHECK_LIMIT} rows (the refusal's query lists them all)",
            args.data_check_limit
        )));
    }
    Ok(DataCheckConfig { skip: args.skip_data_checks, limit: args.data_check_limit as usize })
}

fn cut_over_from(args: &RunArgs) -> Result<CutOverConfig> {
    let lock_timeout = parse_duration("cut-over-lock-timeout", &args.cut_over_lock_timeout, Bare::Refuse)?;
    if lock_timeout < Duration::from_millis(1) {
        // lock_timeout counts whole milliseconds and 0 disables it: the lock would queue
        // for ever and stall every query on the table behind it.
        return Err(Error::config(format!(
            "--cut-over-lock-timeout {:?}: give at least 1ms; a lock_timeout of 0 waits for ever",
            args.cut_over_lock_timeout
        )));
    }
    if args.cut_over_retries == 0 {
        return Err(Error::config("--cut-over-retries 0: give at least 1 attempt"));
    }
    let kill_blockers_after = match &args.cut_over_kill_blockers_after {
        Some(text) => Some(positive("cut-over-kill-blockers-after", text, Bare::Refuse)?),
        None => None,
    };
    Ok(CutOverConfig {
        lock_timeout,
        retries: args.cut_over_retries,
        kill_blockers_after,
        ok_to_drop_table: args.ok_to_drop_table,
        timestamp_old_table: args.timestamp_old_table,
        postpone_flag_file: args.postpone_cut_over_flag_file.clone(),
    })
}

fn throttle_from(args: &RunArgs, tunables: &Tunables) -> Result<ThrottleConfig> {
    let heartbeat_interval = positive("heartbeat-interval-millis", &args.heartbeat_interval_millis, Bare::Millis)?;
    if let Some(max_lag) = tunables.max_lag {
        // Lag read from a heartbeat is up to one interval old even on an idle, current
        // replica: with an interval at or above the limit, the copy would never run.
        if heartbeat_interval >= max_lag {
            return Err(Error::config(format!(
                "--heartbeat-interval-millis {:?} must be below --max-lag-millis {:?}",
                args.heartbeat_interval_millis, args.max_lag_millis
            )));
        }
    }
    let hibernate =
        parse_duration("critical-load-hibernate-seconds", &args.critical_load_hibernate_seconds, Bare::Seconds)?;
    let max_retained_wal = non_zero(parse_bytes("max-retained-wal", &args.max_retained_wal)?);
    let critical_retained_wal = match &args.critical_retained_wal {
        Some(text) => non_zero(parse_bytes("critical-retained-wal", text)?),
        None => None,
    };
    if let (Some(max), Some(critical)) = (max_retained_wal, critical_retained_wal) {
        if critical <= max {
            return Err(Error::config(format!(
                "--critical-retained-wal {} must be above --max-retained-wal {}: throttling has to come first",
                format_bytes(critical),
                format_bytes(max)
            )));
        }
    }
    Ok(ThrottleConfig {
        heartbeat_interval,
        critical_load_hibernate: Some(hibernate).filter(|d| !d.is_zero()),
        flag_file: args.throttle_flag_file.clone(),
        additional_flag_file: Some(args.throttle_additional_flag_file.trim())
            .filter(|p| !p.is_empty())
            .map(PathBuf::from),
        max_retained_wal,
        critical_retained_wal,
    })
}

fn control_from(args: &RunArgs) -> Result<ControlConfig> {
    if args.serve_tcp_port == Some(0) {
        return Err(Error::config("--serve-tcp-port 0: give a port between 1 and 65535"));
    }
    Ok(ControlConfig { socket_file: args.serve_socket_file.clone(), tcp_port: args.serve_tcp_port })
}

pub fn metrics_listen(text: &str) -> Result<SocketAddr> {
    text.trim().parse().map_err(|_| {
        Error::config(format!(
            "--metrics-listen {text:?}: expected an IP address and a port, such as 127.0.0.1:9187 or [::1]:9187 (host names are not resolved)"
        ))
    })
}

fn hooks_from(args: &RunArgs) -> Result<HooksConfig> {
    Ok(HooksConfig {
        path: args.hooks_path.clone(),
        timeout: positive("hooks-timeout", &args.hooks_timeout, Bare::Refuse)?,
        status_interval: positive("hooks-status-interval", &args.hooks_status_interval, Bare::Refuse)?,
    })
}

fn revertible_for(args: &RunArgs) -> Result<Option<Duration>> {
    let Some(text) = args.revertible_for.as_deref() else { return Ok(None) };
    let d = positive("revertible-for", text, Bare::Refuse)?;
    if !args.execute {
        return Err(Error::config("--revertible-for needs --execute: a dry run never swaps, so there is nothing to revert"));
    }
    if args.test_on_replica {
        return Err(Error::config("--revertible-for cannot be used with --test-on-replica, which swaps straight back itself"));
    }
    if args.strategy == crate::cli::StrategyArg::Direct {
        return Err(Error::config("--revertible-for needs the ghost: --strategy direct changes the table in place and leaves no old table to go back to"));
    }
    Ok(Some(d))
}

/// What `pg-ghost revert` and `pg-ghost finalize` need.
#[derive(Clone)]
pub struct WindowConfig {
    pub conn: ConnInfo,
    pub table: String,
    pub wait: Duration,
    /// The target as given, for a window no pg-ghost serves: it is taken up here, as `run
    /// --resume` would.
    pub target: crate::cli::Target,
}

impl WindowConfig {
    pub fn from_cli(args: &crate::cli::WindowArgs) -> Result<WindowConfig> {
        let (conn, table) = target(&args.target, |k| std::env::var(k).ok())?;
        Ok(WindowConfig { conn, table, wait: positive("wait", &args.wait, Bare::Refuse)?, target: args.target.clone() })
    }

    /// The configuration of `pg-ghost run --execute --resume --revertible-for` on this target,
    /// as the command line would give it: `alter` is the earlier run's ALTER. The window's end
    /// is the one the earlier run set; the length given here is not used.
    pub fn take_up(&self, alter: &str) -> Result<Config> {
        use clap::Parser;
        let argv = ["pg-ghost", "run", "--conn", &self.target.conn, "--table", &self.target.table, "--alter", alter, "--execute", "--resume", "--revertible-for", "1s"];
        match crate::cli::Cli::try_parse_from(argv) {
            Ok(crate::cli::Cli { command: crate::cli::Command::Run(args), .. }) => Config::from_cli(&args),
            Ok(_) => Err(Error::internal("taking up the revert window: not a run")),
            Err(e) => Err(Error::internal(format!("taking up the revert window: {e}"))),
        }
    }
}

fn test_on_replica(args: &RunArgs) -> Result<Option<ReplicaTest>> {
    match (args.test_on_replica, args.test_on_replica_skip_replica_stop) {
        (false, true) => Err(Error::config("--test-on-replica-skip-replica-stop needs --test-on-replica")),
        (false, false) => Ok(None),
        // As gh-ost reads the pair: --execute makes the rehearsal real (swap, then swap
        // back); without it nothing is swapped.
        (true, skip) => Ok(Some(ReplicaTest { stop_replication: !skip, swap: args.execute })),
    }
}

/// `--strategy direct` changes the table itself: nothing to resume, no ghost to rehearse with.
fn strategy(args: &RunArgs) -> Result<crate::cli::StrategyArg> {
    if args.strategy == crate::cli::StrategyArg::Direct {
        if args.resume {
            return Err(Error::config("--strategy direct and --resume contradict each other: only a ghost run can be resumed"));
        }
        if args.test_on_replica {
            return Err(Error::config("--strategy direct and --test-on-replica contradict each other: the rehearsal swaps a ghost in and back"));
        }
    }
    Ok(args.strategy)
}

fn resume(args: &RunArgs) -> Result<bool> {
    if args.resume && args.initially_drop_ghost_table {
        // Resuming continues with the ghost table; dropping it first would lose the copy.
        return Err(Error::config("--resume and --initially-drop-ghost-table contradict each other: choose one"));
    }
    Ok(args.resume)
}

/// `--partition-by` with `--partitions FILE` or `--partitions-auto SPEC` (of `run` and `plan`).
fn conversion_from(args: &crate::cli::ConversionArgs, table: &str) -> Result<Option<crate::ghost::Conversion>> {
    use crate::ghost::convert;
    let Some(spec) = &args.partition_by else { return Ok(None) };
    let (partition_by, columns) = convert::partition_by(spec)?;
    let text = match (&args.partitions, &args.partitions_auto) {
        (Some(file), None) => std::fs::read_to_string(file)
            .map_err(|e| Error::config(format!("--partitions {}: cannot read it: {e}", file.display())))?,
        (None, Some(auto)) => convert::auto_partitions(auto, table, &partition_by, &columns)?,
        _ => return Err(Error::config("--partition-by needs --partitions FILE or --partitions-auto SPEC (one of them)")),
    };
    let partitions = convert::read_partitions(&text)?;
    Ok(Some(crate::ghost::Conversion { partition_by, columns, partitions }))
}

/// The conversion flags as given, to repeat in the `pg-ghost run` command a plan prints.
fn conversion_flags(args: &crate::cli::ConversionArgs) -> Vec<(String, String)> {
    let mut flags = Vec::new();
    if let Some(by) = &args.partition_by {
        flags.push(("--partition-by".to_string(), by.clone()));
    }
    if let Some(file) = &args.partitions {
        flags.push(("--partitions".to_string(), file.display().to_string()));
    }
    if let Some(auto) = &args.partitions_auto {
        flags.push(("--partitions-auto".to_string(), auto.clone()));
    }
    flags
}

fn required(flag: &str, text: &str) -> Result<String> {
    if text.trim().is_empty() {
        return Err(Error::config(format!("--{flag} is empty")));
    }
    Ok(text.to_string())
}

/// A duration above zero: intervals and timeouts of 0 would spin or never wait.
fn positive(flag: &str, text: &str, bare: Bare) -> Result<Duration> {
    let d = parse_duration(flag, text, bare)?;
    if d.is_zero() {
        return Err(Error::config(format!("--{flag} {text:?}: must be more than 0")));
    }
    Ok(d)
}

fn non_zero(bytes: u64) -> Option<u64> {
    Some(bytes).filter(|b| *b != 0)
}

impl fmt::Debug for Config {
    /// Shows where pg-ghost connects, briefly, and never the password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("conn", &Redacted(&self.conn))
            .field("table", &self.table)
            .field("alter", &self.alter)
            .field("key", &self.key)
            .field("execute", &self.execute)
            .field("strategy", &self.strategy)
            .field("resume", &self.resume)
            .field("initially_drop_ghost_table", &self.initially_drop_ghost_table)
            .field("skip_checksum", &self.skip_checksum)
            .field("failover_slot", &self.failover_slot)
            .field("checksum_workers", &self.checksum_workers)
            .field("history_table", &self.history_table)
            .field("status_interval", &self.status_interval)
            .field("panic_flag_file", &self.panic_flag_file)
            .field("copy", &self.copy)
            .field("data_checks", &self.data_checks)
            .field("cut_over", &self.cut_over)
            .field("throttle", &self.throttle)
            .field("revertible_for", &self.revertible_for)
            .field("control", &self.control)
            .field("metrics_listen", &self.metrics_listen)
            .field("hooks", &self.hooks)
            .field("test_on_replica", &self.test_on_replica)
            .field("tunables", &self.tunables)
            .finish()
    }
}

impl fmt::Debug for HistoryConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HistoryConfig")
            .field("conn", &Redacted(&self.conn))
            .field("table", &self.table)
            .field("history_table", &self.history_table)
            .field("format", &self.format)
            .field("limit", &self.limit)
            .finish()
    }
}

impl fmt::Debug for CleanupConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CleanupConfig").field("conn", &Redacted(&self.conn)).field("table", &self.table).finish()
    }
}

struct Redacted<'a>(&'a ConnInfo);

impl fmt::Debug for Redacted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = self.0;
        write!(f, "{} user={} dbname={}", c.endpoint.describe(), c.user, c.dbname)
    }
}

#[cfg(test)]
mod tests;
