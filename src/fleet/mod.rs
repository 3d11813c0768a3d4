//! `pg-ghost fleet`: one `migrate --dir DIR` or one online change applied to many
//! databases (tenants), each in this process through `migrate`'s and `run`'s own code.
//!
//! The flow: read the targets ([`targets`]: a registry query or a file), reach every one
//! ([`probe`]: connection, size), order them smallest first ([`schedule`]), then start them
//! as the limits allow ([`run`]: `--concurrency`, `--per-server`, `--canary`,
//! `--max-failures`, `--interval`, `--window`), recording each in the registry ([`state`]),
//! and end with a report ([`report`]) printed, written and sent ([`notify`]).
//!
//! Invariants:
//! - Bad input changes nothing: a query without the columns it needs, a malformed targets
//!   file, a target that cannot be reached or a bad migration file stop the fleet before
//!   any target is touched and before the registry's tables are created.
//! - A target is changed at most once per fleet run: a resumed fleet (`--resume`) skips the
//!   targets recorded as succeeded or skipped, and `migrate` itself skips a target already
//!   at the version (so running a fleet again is harmless).
//! - The fleet's outcome is its targets': notifications that fail are logged, never fatal.

pub mod config;
pub mod control;
mod job;
pub mod metrics;
pub mod notify;
pub mod probe;
pub mod progress;
pub mod report;
mod run;
pub mod schedule;
pub mod state;
pub mod targets;
pub mod window;

pub use config::{from_args, FleetConfig, Job, Source};

use crate::error::{Error, ErrorKind, Result};
use probe::Probed;
use report::{Report, Status, TargetReport};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Instant;
use tokio_postgres::Client;

/// What to print on stdout, and the error to exit with when the fleet did not fully succeed.
pub struct FleetOutput {
    pub text: String,
    pub failure: Option<Error>,
}

pub async fn fleet(cfg: FleetConfig) -> Result<FleetOutput> {
    let started = Instant::now();
    // Bound first: an address that cannot be used stops the fleet before anything changes.
    let mut metrics = cfg.metrics_listen.map(crate::metrics::MetricsServer::bind).transpose()?;
    let registry = match &cfg.registry {
        Some(conn) => Some(conn.clone().resolve().await?.with_application_name("pg-ghost fleet").connect().await.map_err(|e| e.context("--registry"))?),
        None => None,
    };
    let listed = match &cfg.source {
        Source::Query(q) => {
            let client = registry.as_ref().ok_or_else(|| Error::config("--targets-query needs --registry"))?;
            targets::from_registry(client, q).await?
        }
        Source::File(path) => targets::read_file(path)?,
    };
    let probed: Vec<Arc<Probed>> = probe::probe_all(listed).await?.into_iter().map(Arc::new).collect();
    let sizes: Vec<(String, i64)> = probed.iter().map(|p| (p.target.name.clone(), p.size_bytes)).collect();
    let job = cfg.job.describe();

    let (fleet_id, order, earlier) = match &cfg.resume {
        None => (crate::history::new_run_id(), schedule::smallest_first(&sizes), HashMap::new()),
        Some(id) => {
            let client = registry.as_ref().ok_or_else(|| Error::config("--resume needs --registry"))?;
            resume_order(client, id, &job, &probed).await?
        }
    };
    if cfg.plan {
        return Ok(FleetOutput { text: plan(&probed, &order, &earlier, &job), failure: None });
    }

    // Everything that can refuse bad input (the time zone, the socket's path) comes before
    // the first write to the registry.
    let clock = match &cfg.window {
        None => None,
        Some(_) => Some(window::Clock::open(clock_session(&cfg, &probed).await?, &cfg.timezone).await?),
    };
    let (progress, progress_rx) = tokio::sync::watch::channel(progress::FleetProgress { fleet_id: fleet_id.clone(), ..Default::default() });
    let (paused_tx, paused) = tokio::sync::watch::channel(false);
    let control = match &cfg.control {
        Some(c) => Some(crate::control::ControlServer::spawn_answering(c, Arc::new(control::FleetControl { progress: progress_rx.clone(), paused: paused_tx }))?),
        None => None,
    };

    let rows = |idx: &[usize]| -> Vec<(String, String, i64)> { idx.iter().map(|&i| (probed[i].target.name.clone(), probed[i].server.clone(), probed[i].size_bytes)).collect() };
    if let Some(client) = &registry {
        state::create(client).await?;
        match &cfg.resume {
            None => state::begin(client, &fleet_id, &job, &rows(&order)).await?,
            Some(_) => {
                let new: Vec<usize> = order.iter().copied().filter(|i| !earlier.contains_key(&probed[*i].target.name)).collect();
                state::add_targets(client, &fleet_id, &rows(&new), earlier.len() as i32).await?;
                state::resumed(client, &fleet_id).await?;
            }
        }
    }
    tracing::info!(fleet = %fleet_id, targets = order.len(), job = %job, "fleet starting (continue it with --resume {fleet_id} if it stops)");

    let to_run: Vec<usize> = order.iter().copied().filter(|i| !earlier.get(&probed[*i].target.name).is_some_and(|r| r.status.is_done())).collect();
    let cfg = Arc::new(cfg);
    if let Some(server) = metrics.as_mut() {
        let progress = progress_rx.clone();
        server.serve_page(Arc::new(move || metrics::render(&progress.borrow())))?;
    }
    let status_line = tokio::spawn(status_line(progress_rx, cfg.status_interval));
    let mut fleet = run::Fleet { cfg: cfg.clone(), fleet_id: fleet_id.clone(), targets: probed.clone(), registry: registry.as_ref(), clock, progress, paused };
    let (mut reports, stopped) = fleet.run(to_run).await;
    status_line.abort();
    drop(metrics);
    if let Some(c) = control {
        c.shutdown().await;
    }

    let mut results = Vec::with_capacity(order.len());
    for &i in &order {
        let p = &probed[i];
        let r = match (reports[i].take(), earlier.get(&p.target.name)) {
            (Some(r), _) => r,
            (None, Some(e)) if e.status.is_done() => TargetReport {
                name: p.target.name.clone(),
                server: p.server.clone(),
                size_bytes: p.size_bytes,
                status: Status::Skipped,
                version_before: e.version_before.clone(),
                version_after: e.version_after.clone(),
                seconds: None,
                error: None,
                note: Some(format!("{} by an earlier run of this fleet", e.status.as_str())),
            },
            (None, _) => {
                let r = TargetReport { name: p.target.name.clone(), server: p.server.clone(), size_bytes: p.size_bytes, status: Status::NotStarted, version_before: None, version_after: None, seconds: None, error: None, note: None };
                if let Some(client) = &registry {
                    if let Err(e) = state::target_ended(client, &fleet_id, &r).await {
                        tracing::error!(error = %e.chain(), "cannot record a target that did not start");
                    }
                }
                r
            }
        };
        results.push(r);
    }
    let report = Report::new(fleet_id.clone(), job, results, stopped, started.elapsed().as_secs_f64());
    if let Some(client) = &registry {
        let status = match (&report.stopped, report.failed) {
            (Some(_), _) => "stopped",
            (None, 0) => "succeeded",
            _ => "failed",
        };
        if let Err(e) = state::finish(client, &fleet_id, status, report.stopped.as_deref()).await {
            tracing::error!(error = %e.chain(), "cannot record the fleet's end in the registry");
        }
    }
    if let Some(path) = &cfg.report {
        std::fs::write(path, report.to_json()).map_err(|e| Error::new(ErrorKind::Io, format!("--report {}: {e}", path.display())))?;
    }
    notify::fleet_complete(cfg.hooks.as_ref(), cfg.webhook.as_ref(), &report, cfg.report.as_deref()).await;
    tracing::info!(fleet = %fleet_id, "{}", report.summary());
    let failure = match (&report.stopped, report.failed) {
        (None, 0) => None,
        (Some(why), _) => Some(Error::new(ErrorKind::Aborted, format!("fleet {fleet_id} stopped early, {why}; {}", failed_names(&report)))),
        (None, _) => Some(Error::new(ErrorKind::Sql, format!("fleet {fleet_id}: {}", failed_names(&report)))),
    };
    Ok(FleetOutput { text: report.to_text(), failure })
}

fn failed_names(report: &Report) -> String {
    let failed: Vec<&str> = report.results.iter().filter(|r| r.status == Status::Failed).map(|r| r.name.as_str()).collect();
    format!("{} of {} targets failed{}{}, {} not started", failed.len(), report.targets, if failed.is_empty() { "" } else { ": " }, failed.join(", "), report.not_started)
}

/// A resumed fleet: the same job, the recorded order, then any target the registry did not
/// list before (smallest first). Targets recorded but no longer listed are left out.
async fn resume_order(client: &Client, fleet_id: &str, job: &str, probed: &[Arc<Probed>]) -> Result<(String, Vec<usize>, HashMap<String, state::Recorded>)> {
    let (recorded_job, recorded) = state::load(client, fleet_id).await?;
    if recorded_job != job {
        return Err(Error::config(format!("--resume {fleet_id}: that fleet ran `{recorded_job}`, not `{job}`; give the same job")));
    }
    let index: HashMap<&str, usize> = probed.iter().enumerate().map(|(i, p)| (p.target.name.as_str(), i)).collect();
    let mut order = Vec::new();
    for r in &recorded {
        match index.get(r.name.as_str()) {
            Some(&i) => order.push(i),
            None => tracing::warn!(tenant = %r.name, "the fleet recorded this target but it is no longer listed; left out"),
        }
    }
    let mut new: Vec<usize> = (0..probed.len()).filter(|i| !order.contains(i)).collect();
    new.sort_by(|&a, &b| probed[a].size_bytes.cmp(&probed[b].size_bytes).then_with(|| probed[a].target.name.cmp(&probed[b].target.name)));
    order.extend(new);
    for r in recorded.iter().filter(|r| r.status == Status::Running) {
        // Killed mid-change: `migrate` resumes a file at its statement, but an online change
        // that died leaves its ghost, slot and publication, and the next run refuses them.
        tracing::warn!(
            tenant = %r.name,
            "this target was running when the fleet stopped; it runs again now, and an online change of it that was cut short is resumed where it stopped"
        );
    }
    let done = recorded.iter().filter(|r| r.status.is_done()).count();
    tracing::info!(fleet = %fleet_id, done, left = order.len() - done.min(order.len()), "resuming the fleet: targets already done are skipped");
    Ok((fleet_id.to_string(), order, recorded.into_iter().map(|r| (r.name.clone(), r)).collect()))
}

/// The fleet's progress in the log every `every`, as a run's status line.
async fn status_line(progress: tokio::sync::watch::Receiver<progress::FleetProgress>, every: std::time::Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let line = progress.borrow().line();
        tracing::info!("{line}");
    }
}

/// A session to read the time of day from: the registry's server, else the first target's.
async fn clock_session(cfg: &FleetConfig, probed: &[Arc<Probed>]) -> Result<Client> {
    match (&cfg.registry, probed.first()) {
        (Some(conn), _) => conn.clone().resolve().await?.with_application_name("pg-ghost fleet clock").connect().await,
        (None, Some(p)) => p.conn.with_application_name("pg-ghost fleet clock").connect().await,
        (None, None) => Err(Error::config("no targets")),
    }
}

/// `--plan`: the order, the sizes, versions and servers, and what would run.
fn plan(probed: &[Arc<Probed>], order: &[usize], earlier: &HashMap<String, state::Recorded>, job: &str) -> String {
    let mut out = format!("job: {job}\n{} targets, smallest first:\n", order.len());
    let w = probed.iter().map(|p| p.target.name.len()).max().unwrap_or(4).max(6);
    let _ = writeln!(out, "{:>4}  {:<w$}  {:>10}  {:<8}  server", "#", "target", "size", "version");
    for (n, &i) in order.iter().enumerate() {
        let p = &probed[i];
        let done = match earlier.get(&p.target.name) {
            Some(r) if r.status.is_done() => "  (done by an earlier run: skipped)",
            _ => "",
        };
        let _ = writeln!(out, "{:>4}  {:<w$}  {:>10}  {:<8}  {}{done}", n + 1, p.target.name, report::pretty_bytes(p.size_bytes), p.version.as_deref().unwrap_or("-"), p.server);
    }
    out
}
