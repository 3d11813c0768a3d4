//! `--test-on-replica`: the whole change rehearsed on a writable logical replica.
//!
//! The connection given is a subscriber of production; pg-ghost never connects to the
//! publisher. Everything runs on the replica as usual up to the cut-over (the replicated
//! changes are ordinary WAL there, so the slot streams them like any other). Then the
//! subscriptions feeding the table are disabled (with `--test-on-replica-skip-replica-stop`,
//! pg-ghost waits until someone else has disabled them, e.g. an on-before-cut-over hook), so
//! that nothing writes to the table any more; the last changes are applied; the cut-over
//! swaps the ghost in and straight back in its one transaction; and the two tables, both at
//! rest now, are compared once more, without repair. The original keeps its name and its
//! definition, the migrated copy stays as `_<t>_gho`, and the subscriptions stay disabled so
//! that both tables can be inspected as they are; the report says how to compare them, clean
//! up and re-enable.

use super::replication::{Background, Replication};
use super::{guard, Outcome, Run};
use crate::checksum::{self, Audit, ChecksumJob};
use crate::config::ReplicaTest;
use crate::error::{Context, Error, ErrorKind, Result};
use crate::ghost::Ghost;
use crate::hooks::HookEvent;
use crate::names::Names;
use crate::phase::Phase;
use crate::schema::TableInfo;
use crate::sql::{ident, QualifiedName};
use std::fmt;
use std::time::{Duration, Instant};
use tokio_postgres::Client;

/// How long a disabled subscription's workers may take to exit.
const STOP_LIMIT: Duration = Duration::from_secs(60);
/// How often a wait for the subscriptions to stop says what it waits for.
const WAIT_REPORT_EVERY: Duration = Duration::from_secs(10);
/// Differing ranges named in the error of a comparison that found some.
const RANGES_SHOWN: usize = 5;

/// A subscription of this database that replicates the table.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Subscription {
    oid: u32,
    name: String,
    enabled: bool,
    /// `pg_subscription_rel.srsubstate` of the table: `r` ready and `s` synchronized; `i`,
    /// `d`, `f` while its initial copy runs.
    state: String,
    /// The connected role may `ALTER SUBSCRIPTION` it: its owner or a superuser.
    may_alter: bool,
}

/// The publisher's table list is not visible from a subscriber; which subscriptions carry
/// the table is read from their relations instead. A partitioned table is carried through its
/// root or through its partitions (the publisher's `publish_via_partition_root`); a
/// subscription still copying any of them reports that state.
const FEEDING: &str = "SELECT s.oid, s.subname::text, s.subenabled,
            coalesce(max(r.srsubstate::text) FILTER (WHERE r.srsubstate NOT IN ('r', 's')), 'r'),
            pg_has_role(s.subowner, 'USAGE')
       FROM pg_subscription_rel r JOIN pg_subscription s ON s.oid = r.srsubid
      WHERE (r.srrelid = $1 OR r.srrelid IN (SELECT relid FROM pg_partition_tree($1::oid::regclass)))
        AND s.subdbid = (SELECT oid FROM pg_database WHERE datname = current_database())
      GROUP BY s.oid, s.subname, s.subenabled, s.subowner
      ORDER BY s.subname";

/// Subscriptions among `$1` still enabled or with a worker still running.
const RUNNING: &str = "SELECT s.subname::text FROM pg_subscription s
      WHERE s.oid = ANY($1)
        AND (s.subenabled OR EXISTS (SELECT 1 FROM pg_stat_subscription w WHERE w.subid = s.oid AND w.pid IS NOT NULL))
      ORDER BY 1";

async fn feeding(client: &Client, table: u32) -> Result<Vec<Subscription>> {
    let rows = client.query(FEEDING, &[&table]).await.context("reading the subscriptions that replicate the table")?;
    rows.iter()
        .map(|r| {
            Ok(Subscription {
                oid: r.try_get(0)?,
                name: r.try_get(1)?,
                enabled: r.try_get(2)?,
                state: r.try_get(3)?,
                may_alter: r.try_get(4)?,
            })
        })
        .collect()
}

fn listed(subs: &[Subscription]) -> String {
    subs.iter().map(|s| ident(&s.name)).collect::<Vec<_>>().join(", ")
}

/// Checks, before anything is created, that the table is replicated by subscriptions this run
/// can stop. Reads only; `None` (not a test on a replica) checks nothing.
pub(super) async fn preflight(client: &Client, table: &TableInfo, test: Option<&ReplicaTest>) -> Result<()> {
    let Some(test) = test else { return Ok(()) };
    let subs = feeding(client, table.oid).await?;
    check(&table.name, test, &subs)?;
    if !subs.is_empty() {
        tracing::info!(
            table = %table.name,
            subscriptions = %listed(&subs),
            stop = test.stop_replication,
            "test on a replica: the table is replicated here by these subscriptions"
        );
    }
    Ok(())
}

fn check(table: &QualifiedName, test: &ReplicaTest, subs: &[Subscription]) -> Result<()> {
    if subs.is_empty() {
        if test.stop_replication {
            return Err(Error::refused(format!(
                "--test-on-replica: no subscription in this database replicates {table}, so this is not a logical replica of it; \
                 connect to a subscriber of production (never to the publisher), or give --test-on-replica-skip-replica-stop \
                 to rehearse on this copy as it is"
            )));
        }
        tracing::warn!(
            table = %table,
            "--test-on-replica-skip-replica-stop: no subscription in this database replicates the table; the final comparison \
             holds only if nothing writes to it during the cut-over"
        );
        return Ok(());
    }
    if let Some(s) = subs.iter().find(|s| !matches!(s.state.as_str(), "r" | "s")) {
        return Err(Error::refused(format!(
            "--test-on-replica: subscription {} is still copying {table} (pg_subscription_rel.srsubstate '{}'); \
             wait until the table is ready ('r')",
            ident(&s.name),
            s.state
        )));
    }
    if !test.stop_replication {
        return Ok(());
    }
    if let Some(s) = subs.iter().find(|s| !s.enabled) {
        // pg-ghost leaves the subscriptions it stopped disabled and says to re-enable them;
        // for one someone else had disabled, that advice would be wrong.
        return Err(Error::refused(format!(
            "--test-on-replica: subscription {name}, which replicates {table}, is disabled already, so this replica is not \
             following production; enable it (ALTER SUBSCRIPTION {name} ENABLE) and let it catch up, or give \
             --test-on-replica-skip-replica-stop to rehearse on the replica as it is",
            name = ident(&s.name)
        )));
    }
    if let Some(s) = subs.iter().find(|s| !s.may_alter) {
        return Err(Error::refused(format!(
            "--test-on-replica: this role may not disable subscription {}, which replicates {table} (only its owner or a \
             superuser may); connect as one of them, or give --test-on-replica-skip-replica-stop and disable it yourself at \
             the cut-over",
            ident(&s.name)
        )));
    }
    Ok(())
}

/// Waits until every subscription in `subs` is disabled and its workers have exited: only
/// then has the last replicated change to the table committed, and no other will come.
async fn wait_until_stopped(client: &Client, subs: &[Subscription], limit: Option<Duration>) -> Result<()> {
    let oids: Vec<u32> = subs.iter().map(|s| s.oid).collect();
    let started = Instant::now();
    // A DBA who has to disable them is told at once; after pg-ghost's own DISABLE, only a
    // wait that drags on is worth a line.
    let mut report_at = if limit.is_some() { started + Duration::from_secs(2) } else { started };
    loop {
        let running = client
            .query(RUNNING, &[&oids])
            .await
            .context("checking whether the subscriptions have stopped")?
            .iter()
            .map(|r| r.try_get::<_, String>(0))
            .collect::<Result<Vec<_>, _>>()?;
        if running.is_empty() {
            return Ok(());
        }
        let names = running.iter().map(|n| ident(n)).collect::<Vec<_>>().join(", ");
        if let Some(limit) = limit.filter(|l| started.elapsed() > *l) {
            return Err(Error::new(
                ErrorKind::Busy,
                format!("the workers of subscription(s) {names} did not exit within {limit:?} of ALTER SUBSCRIPTION ... DISABLE"),
            ));
        }
        if Instant::now() >= report_at {
            tracing::info!(
                subscriptions = %names,
                "waiting until these subscriptions are disabled and their workers have exited (ALTER SUBSCRIPTION ... DISABLE)"
            );
            report_at += WAIT_REPORT_EVERY;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What a test on a replica found and left, for the DBA.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaReport {
    pub table: QualifiedName,
    pub ghost: QualifiedName,
    /// Rows of the original compared after the cut-over.
    pub rows: u64,
    /// The subscriptions stopped for the test, which stay disabled.
    pub subscriptions: Vec<String>,
    /// `false` with `--test-on-replica-skip-replica-stop`: someone else disabled them.
    pub disabled_by_pg_ghost: bool,
    /// Returns the rows found on one side only; none when the tables agree.
    pub compare_query: String,
}

impl ReplicaReport {
    pub fn cleanup_sql(&self) -> String {
        format!("DROP TABLE {};", self.ghost.sql())
    }

    /// `None` when no subscription feeds the table.
    pub fn re_enable_sql(&self) -> Option<String> {
        re_enable_sql(&self.subscriptions)
    }
}

fn re_enable_sql(subscriptions: &[String]) -> Option<String> {
    if subscriptions.is_empty() {
        return None;
    }
    Some(subscriptions.iter().map(|s| format!("ALTER SUBSCRIPTION {} ENABLE;", ident(s))).collect::<Vec<_>>().join(" "))
}

impl fmt::Display for ReplicaReport {
    /// What `pg-ghost run --test-on-replica` prints on stdout: the verdict, then one command
    /// per line to paste.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "test on replica: clean. {} and {} (the ALTER applied) hold the same {} rows; the cut-over swapped them and straight back.",
            self.table, self.ghost, self.rows
        )?;
        if !self.subscriptions.is_empty() {
            let names = self.subscriptions.iter().map(|s| ident(s)).collect::<Vec<_>>().join(", ");
            let by = if self.disabled_by_pg_ghost { "disabled by pg-ghost" } else { "disabled for the test" };
            writeln!(f, "subscriptions {by}, left disabled (the publisher keeps WAL for them until re-enabled): {names}")?;
        }
        writeln!(f, "compare:   {};", self.compare_query)?;
        writeln!(f, "clean up:  {}", self.cleanup_sql())?;
        if let Some(sql) = self.re_enable_sql() {
            writeln!(f, "re-enable: {sql}")?;
        }
        Ok(())
    }
}

/// The error for a comparison that found differences: the test's verdict, with where to look.
fn differences_found(table: &QualifiedName, ghost: &QualifiedName, audit: &Audit) -> Error {
    let mut shown: Vec<&str> = audit.differences.iter().take(RANGES_SHOWN).map(String::as_str).collect();
    if audit.differences.len() > RANGES_SHOWN {
        shown.push("...");
    }
    Error::new(
        ErrorKind::Internal,
        format!(
            "test on replica: after the cut-over {ghost} differs from {table} with the ALTER applied, in {} of {} key ranges \
             ({}); both tables are left as they are (unless something wrote to either of them after the cut-over, this is a \
             fault of pg-ghost or of a trigger on the ghost); compare them with: {}",
            audit.differences.len(),
            audit.ranges,
            shown.join("; "),
            audit.query
        ),
    )
}

impl Run {
    /// What the cut-over is in a test on a replica; called with the ghost caught up and
    /// checked, in place of the cut-over.
    pub(super) async fn test_on_replica(
        &mut self,
        test: &ReplicaTest,
        info: &TableInfo,
        names: &Names,
        ghost: &Ghost,
        repl: &Replication,
        bg: &mut Background,
    ) -> Result<Outcome> {
        self.fire(HookEvent::BeforeCutOver, Some(&mut *bg)).await?;
        self.enter(Phase::CutOver);
        let subs = feeding(&self.client, info.oid).await?;
        let mut disabled = Vec::new();
        let result = self.rehearse(test, info, names, ghost, repl, bg, &subs, &mut disabled).await;
        if result.is_err() {
            if let Some(sql) = re_enable_sql(&disabled) {
                tracing::warn!(
                    re_enable = %sql,
                    "the test on the replica failed after pg-ghost disabled subscriptions; they stay disabled (the publisher keeps WAL for them meanwhile)"
                );
            }
        }
        result.map(Outcome::ReplicaTested)
    }

    #[allow(clippy::too_many_arguments)]
    async fn rehearse(
        &mut self,
        test: &ReplicaTest,
        info: &TableInfo,
        names: &Names,
        ghost: &Ghost,
        repl: &Replication,
        bg: &mut Background,
        subs: &[Subscription],
        disabled: &mut Vec<String>,
    ) -> Result<ReplicaReport> {
        if test.stop_replication {
            if subs.is_empty() {
                return Err(Error::refused(format!("no subscription replicates {} any more: nothing to stop", info.name)));
            }
            self.record_state(names, "replica-stop").await;
            for s in subs {
                self.client
                    .batch_execute(&format!("ALTER SUBSCRIPTION {} DISABLE", ident(&s.name)))
                    .await
                    .with_context(|| format!("disabling subscription {}", ident(&s.name)))?;
                disabled.push(s.name.clone());
                tracing::info!(subscription = %ident(&s.name), "subscription disabled for the cut-over");
            }
            guard(wait_until_stopped(&self.client, subs, Some(STOP_LIMIT)), &mut self.abort.clone(), Some(&mut *bg)).await?;
        } else if !subs.is_empty() {
            self.record_state(names, "replica-wait").await;
            tracing::info!(
                subscriptions = %listed(subs),
                "--test-on-replica-skip-replica-stop: the cut-over waits until these subscriptions are disabled by someone else"
            );
            guard(wait_until_stopped(&self.client, subs, None), &mut self.abort.clone(), Some(&mut *bg)).await?;
        }
        tracing::info!("replication into the table has stopped: applying the last changes");
        guard(self.catch_up(repl), &mut self.abort.clone(), Some(&mut *bg)).await?;

        self.record_state(names, "cut-over").await;
        let old_table = self.old_table_name(info).await?;
        let cut_over = self.cut_over(info, ghost, &old_table, repl, true);
        self.controls.cut_over_locked.send_replace(true);
        let report = guard(cut_over.run(), &mut self.abort.clone(), Some(&mut *bg)).await;
        self.controls.cut_over_locked.send_replace(false);
        self.history.cut_over(u32::try_from(self.cut_over_tally.attempts()).unwrap_or(u32::MAX), report.as_ref().ok().map(|r| r.lock_held));
        let report = report?;
        tracing::info!(
            attempts = report.attempts,
            lock_wait_ms = report.lock_wait.as_millis() as u64,
            lock_held_ms = report.lock_held.as_millis() as u64,
            final_keys = report.final_keys,
            "cut-over rehearsed: the ghost was swapped in and straight back; {} is the original again, the migrated copy is {}",
            info.name,
            ghost.name
        );

        self.record_state(names, "verify").await;
        if self.cfg.skip_checksum {
            tracing::info!("--skip-checksum skips the check before the cut-over only: comparing the tables is what this test is for");
        }
        let mut job = ChecksumJob::new(self.cfg.conn.clone(), info.name.clone(), ghost.name.clone(), ghost.mapping.clone());
        job.workers = self.cfg.checksum_workers;
        job.parts = self.partition_walks(info, ghost).await?;
        let audit = guard(checksum::audit(&job), &mut self.abort.clone(), Some(&mut *bg)).await?;
        if !audit.clean() {
            return Err(differences_found(&info.name, &ghost.name, &audit));
        }
        tracing::info!(
            ranges = audit.ranges,
            rows = audit.rows,
            secs = audit.elapsed.as_secs_f64(),
            "the ghost holds the original's rows with the ALTER applied"
        );
        Ok(ReplicaReport {
            table: info.name.clone(),
            ghost: ghost.name.clone(),
            rows: audit.rows,
            subscriptions: subs.iter().map(|s| s.name.clone()).collect(),
            disabled_by_pg_ghost: test.stop_replication,
            compare_query: audit.query,
        })
    }

    /// Whether the ghost outlives the run: after a real or rehearsed cut-over it is the
    /// result, after a failure it is kept for inspection; only a dry run drops it.
    pub(super) fn keeps_ghost(&self) -> bool {
        self.cfg.execute
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STOP: ReplicaTest = ReplicaTest { stop_replication: true, swap: true };
    const SKIP: ReplicaTest = ReplicaTest { stop_replication: false, swap: true };

    fn table() -> QualifiedName {
        QualifiedName::new("public", "orders")
    }

    fn sub(name: &str) -> Subscription {
        Subscription { oid: 1, name: name.into(), enabled: true, state: "r".into(), may_alter: true }
    }

    fn refusal(test: &ReplicaTest, subs: &[Subscription]) -> String {
        let e = check(&table(), test, subs).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Refused);
        e.to_string()
    }

    #[test]
    fn a_table_nobody_replicates_is_refused_unless_the_dba_stops_replication() {
        let e = refusal(&STOP, &[]);
        assert!(e.contains(r#"no subscription in this database replicates "public"."orders""#), "{e}");
        assert!(e.contains("--test-on-replica-skip-replica-stop"), "{e}");
        assert!(check(&table(), &SKIP, &[]).is_ok());
    }

    #[test]
    fn a_table_still_being_copied_is_refused_in_both_modes() {
        let copying = Subscription { state: "d".into(), ..sub("prod") };
        for test in [&STOP, &SKIP] {
            let e = refusal(test, &[sub("other"), copying.clone()]);
            assert!(e.contains(r#"subscription "prod" is still copying"#) && e.contains("'d'"), "{e}");
        }
        assert!(check(&table(), &STOP, &[Subscription { state: "s".into(), ..sub("prod") }]).is_ok());
    }

    #[test]
    fn a_disabled_or_foreign_subscription_is_refused_only_when_pg_ghost_must_stop_it() {
        let disabled = Subscription { enabled: false, ..sub("prod") };
        let e = refusal(&STOP, std::slice::from_ref(&disabled));
        assert!(e.contains(r#"subscription "prod", which replicates "public"."orders", is disabled already"#), "{e}");
        assert!(check(&table(), &SKIP, &[disabled]).is_ok());
        let foreign = Subscription { may_alter: false, ..sub("prod") };
        let e = refusal(&STOP, std::slice::from_ref(&foreign));
        assert!(e.contains(r#"may not disable subscription "prod""#), "{e}");
        assert!(check(&table(), &SKIP, &[foreign]).is_ok());
        assert!(check(&table(), &STOP, &[sub("a"), sub("b")]).is_ok());
    }

    fn report(subscriptions: &[&str]) -> ReplicaReport {
        ReplicaReport {
            table: table(),
            ghost: QualifiedName::new("public", "_orders_gho"),
            rows: 42,
            subscriptions: subscriptions.iter().map(|s| s.to_string()).collect(),
            disabled_by_pg_ghost: true,
            compare_query: "SELECT 1".into(),
        }
    }

    #[test]
    fn the_report_gives_a_command_per_line() {
        let text = report(&["prod", "My Sub"]).to_string();
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with(r#"test on replica: clean. "public"."orders" and "public"."_orders_gho""#), "{text}");
        assert!(lines[0].contains("42 rows"), "{text}");
        assert!(lines[1].contains(r#"disabled by pg-ghost"#) && lines[1].ends_with(r#""prod", "My Sub""#), "{text}");
        assert_eq!(lines[2], "compare:   SELECT 1;");
        assert_eq!(lines[3], r#"clean up:  DROP TABLE "public"."_orders_gho";"#);
        assert_eq!(lines[4], r#"re-enable: ALTER SUBSCRIPTION "prod" ENABLE; ALTER SUBSCRIPTION "My Sub" ENABLE;"#);
        let none = report(&[]).to_string();
        assert!(!none.contains("re-enable") && !none.contains("subscriptions"), "{none}");
    }

    #[test]
    fn differences_name_ranges_and_the_query() {
        let audit = Audit {
            ranges: 9,
            rows: 100,
            differences: (1..=7).map(|i| format!("key range ({i}, {}]: 1 key(s) differ: {i}", i + 1)).collect(),
            query: "SELECT 2".into(),
            ..Audit::default()
        };
        let e = differences_found(&table(), &QualifiedName::new("public", "_orders_gho"), &audit).to_string();
        assert!(e.contains("in 7 of 9 key ranges"), "{e}");
        assert!(e.contains("key range (5, 6]") && !e.contains("key range (6, 7]") && e.contains("; ..."), "{e}");
        assert!(e.ends_with("compare them with: SELECT 2"), "{e}");
    }
}
