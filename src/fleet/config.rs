//! `pg-ghost fleet`'s flags, checked and typed: where the targets come from, what runs on
//! each, the limits, the window, the report. Everything that can be checked without a
//! connection is checked here (the migration files are read once), so a typo costs nothing.

use super::notify::Webhook;
use super::schedule::Limits;
use super::window::Window;
use crate::cli::{FleetArgs, PhaseArg};
use crate::config::{parse_duration, Bare};
use crate::conn::ConnInfo;
use crate::error::{Error, Result};
use crate::hooks::ScriptHooks;
use crate::migrate::files::{self, Phase, Version};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Clone, Debug)]
pub enum Source {
    Query(String),
    File(PathBuf),
}

/// What runs on each target.
#[derive(Clone, Debug)]
pub enum Job {
    Migrate { dir: PathBuf, target: Option<Version>, phase: Option<Phase>, out_of_order: bool },
    Alter { table: String, clauses: String },
}

/// No `Debug`: the registry's connection may hold a password.
#[derive(Clone)]
pub struct FleetConfig {
    pub registry: Option<ConnInfo>,
    pub source: Source,
    pub job: Job,
    /// Lock timeout and retries of each statement, and what each online change is given.
    pub runs: crate::config::MigrationRuns,
    pub limits: Limits,
    pub interval: Duration,
    pub window: Option<Window>,
    pub timezone: String,
    pub resume: Option<String>,
    pub plan: bool,
    pub report: Option<PathBuf>,
    pub webhook: Option<Webhook>,
    pub hooks: Option<ScriptHooks>,
    /// `--serve-socket-file`: the fleet's control socket.
    pub control: Option<crate::config::ControlConfig>,
    /// How often the fleet's progress is logged.
    pub status_interval: Duration,
    /// `--metrics-listen`: where the fleet's metrics are served.
    pub metrics_listen: Option<std::net::SocketAddr>,
}

impl Job {
    /// How the job is named in the report and the registry; a resumed fleet must have the same.
    pub fn describe(&self) -> String {
        match self {
            Job::Migrate { dir, target, phase, out_of_order } => {
                let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.clone());
                let mut s = format!("migrate --dir {}", dir.display());
                if let Some(t) = target {
                    s.push_str(&format!(" --target {t}"));
                }
                if let Some(p) = phase {
                    s.push_str(&format!(" --phase {}", p.as_str()));
                }
                if *out_of_order {
                    s.push_str(" --out-of-order");
                }
                s
            }
            Job::Alter { table, clauses } => format!("ALTER TABLE {table} {clauses}"),
        }
    }
}

pub fn from_args(args: &FleetArgs) -> Result<FleetConfig> {
    let registry = match &args.registry {
        Some(c) => Some(ConnInfo::parse(c).map_err(|e| e.context("--registry"))?),
        None => None,
    };
    let source = match (&args.targets_query, &args.targets_file) {
        (Some(q), None) if !q.trim().is_empty() => Source::Query(q.clone()),
        (Some(_), None) => return Err(Error::config("--targets-query is empty")),
        (None, Some(f)) => Source::File(f.clone()),
        (None, None) => return Err(Error::config("give the targets: --registry CONN --targets-query \"SELECT name, conninfo FROM ...\", or --targets-file FILE")),
        (Some(_), Some(_)) => return Err(Error::config("--targets-query and --targets-file: choose one")),
    };
    let job = match (&args.dir, &args.table, &args.alter) {
        (Some(dir), None, None) => {
            if !dir.is_dir() {
                return Err(Error::config(format!("--dir {}: not a directory", dir.display())));
            }
            // Read now: a bad file name or header stops the fleet before any target is touched.
            let found = files::discover(dir)?;
            if found.is_empty() {
                return Err(Error::config(format!("--dir {}: no migration files (V<version>__<description>.sql)", dir.display())));
            }
            let target = match args.target.as_deref() {
                None => None,
                Some(t) => Some(Version::parse(t.trim_start_matches('V')).ok_or_else(|| Error::config(format!("--target {t:?}: give a version, e.g. 3 or 1.2")))?),
            };
            let phase = args.phase.map(|p| match p {
                PhaseArg::Expand => Phase::Expand,
                PhaseArg::Migrate => Phase::Migrate,
                PhaseArg::Contract => Phase::Contract,
            });
            Job::Migrate { dir: dir.clone(), target, phase, out_of_order: args.out_of_order }
        }
        (None, Some(table), Some(alter)) if !table.trim().is_empty() && !alter.trim().is_empty() => Job::Alter { table: table.clone(), clauses: alter.clone() },
        (None, Some(_), Some(_)) => return Err(Error::config("--table and --alter must not be empty")),
        _ => return Err(Error::config("give what runs on each target: --dir DIR (migration files), or --table T --alter CLAUSES")),
    };
    if args.lock_retries == 0 {
        return Err(Error::config("--lock-retries 0: give at least 1"));
    }
    let lock_timeout = parse_duration("lock-timeout", &args.lock_timeout, Bare::Refuse)?;
    if lock_timeout.is_zero() {
        return Err(Error::config("--lock-timeout must be more than 0"));
    }
    if args.concurrency == 0 {
        return Err(Error::config("--concurrency 0: give at least 1"));
    }
    let hooks_timeout = parse_duration("hooks-timeout", &args.hooks_timeout, Bare::Refuse)?;
    Ok(FleetConfig {
        registry,
        source,
        job,
        runs: crate::config::MigrationRuns { lock_timeout, lock_retries: args.lock_retries, keep_old_tables: args.keep_old_tables, failover_slot: args.failover_slot },
        limits: Limits {
            concurrency: args.concurrency as usize,
            per_server: (args.per_server > 0).then_some(args.per_server as usize),
            canary: args.canary as usize,
            max_failures: (args.max_failures > 0).then_some(args.max_failures as usize),
        },
        interval: parse_duration("interval", &args.interval, Bare::Refuse)?,
        window: args.window.as_deref().map(Window::parse).transpose()?,
        timezone: args.timezone.clone(),
        resume: args.resume.clone(),
        plan: args.plan,
        report: args.report.clone(),
        webhook: match args.notify_webhook.as_deref() {
            Some(url) => Some(Webhook::parse(url)?.trusting(args.notify_webhook_ca.clone())?),
            None if args.notify_webhook_ca.is_some() => return Err(Error::config("--notify-webhook-ca needs --notify-webhook")),
            None => None,
        },
        hooks: args.hooks_path.as_deref().map(|p| ScriptHooks::new(p, hooks_timeout)).transpose()?,
        metrics_listen: args.metrics_listen.as_deref().map(crate::config::metrics_listen).transpose()?,
        control: args.serve_socket_file.clone().map(|path| crate::config::ControlConfig { socket_file: Some(path), tcp_port: None }),
        status_interval: {
            let d = parse_duration("status-interval", &args.status_interval, Bare::Refuse)?;
            if d.is_zero() {
                return Err(Error::config("--status-interval must be more than 0"));
            }
            d
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn parse(args: &[&str]) -> Result<FleetConfig> {
        let mut argv = vec!["pg-ghost", "fleet"];
        argv.extend(args);
        let cli = crate::cli::Cli::try_parse_from(argv).map_err(|e| Error::config(e.to_string()))?;
        let crate::cli::Command::Fleet(a) = cli.command else { panic!("not fleet") };
        from_args(&a)
    }

    fn dir() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("V1__a.sql"), "ALTER TABLE t ADD COLUMN a int;\n").unwrap();
        d
    }

    #[test]
    fn a_job_and_targets_are_required_and_checked() {
        let d = dir();
        let dir = d.path().to_str().unwrap();
        let ok = parse(&["--targets-file", "/tmp/x", "--dir", dir, "--concurrency", "3", "--per-server", "1", "--canary", "2", "--window", "22:00-04:00"]).unwrap();
        assert_eq!(ok.limits, Limits { concurrency: 3, per_server: Some(1), canary: 2, max_failures: None });
        assert!(ok.job.describe().starts_with("migrate --dir /"));
        let alter = parse(&["--targets-file", "/tmp/x", "--table", "t", "--alter", "ADD COLUMN a int"]).unwrap();
        assert_eq!(alter.job.describe(), "ALTER TABLE t ADD COLUMN a int");
        for (args, why) in [
            (vec!["--dir", dir], "give the targets"),
            (vec!["--targets-file", "/tmp/x"], "give what runs on each target"),
            (vec!["--targets-file", "/tmp/x", "--dir", dir, "--table", "t", "--alter", "x"], "cannot be used with"),
            (vec!["--targets-query", "SELECT 1", "--dir", dir], "--registry"),
            (vec!["--targets-file", "/tmp/x", "--dir", "/nonexistent"], "not a directory"),
            (vec!["--targets-file", "/tmp/x", "--dir", dir, "--concurrency", "0"], "--concurrency 0"),
            (vec!["--targets-file", "/tmp/x", "--dir", dir, "--window", "2-6"], "--window"),
            (vec!["--targets-file", "/tmp/x", "--dir", dir, "--notify-webhook", "ftp://x"], "give an https:// or http:// URL"),
            (vec!["--targets-file", "/tmp/x", "--dir", dir, "--notify-webhook", "http://x", "--notify-webhook-ca", "/ca.pem"], "is for an https:// webhook"),
            (vec!["--targets-file", "/tmp/x", "--dir", dir, "--notify-webhook-ca", "/ca.pem"], "needs --notify-webhook"),
            (vec!["--targets-file", "/tmp/x", "--dir", dir, "--target", "x1"], "--target"),
        ] {
            let e = parse(&args).err().unwrap_or_else(|| panic!("{args:?} accepted"));
            assert!(e.to_string().contains(why), "{args:?}: {e}");
        }
    }
}
