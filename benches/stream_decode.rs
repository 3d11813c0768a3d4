//! Side-by-side benchmark: how fast pg-ghost's transport + pgoutput decoder consume a
//! burst of single-row changes, against `pg_recvlogical` consuming the same burst from an
//! identical slot, in the same run, on a throwaway cluster.
//!
//! Run it with `scripts/bench-decode.sh` (or `cargo bench --bench stream_decode -- --help`).
//!
//! For each run and each burst shape (one big transaction; many single-row transactions)
//! one slot per consumer is created before the burst, so every consumer reads exactly the
//! same WAL. Consumers run one after another (never at once: two cores), in an order that
//! rotates between runs. Figures: changes per second over the time from START_REPLICATION
//! (ours) or process start (pg_recvlogical, which includes its connection setup, a few ms)
//! to the last commit of the burst.

use pg_ghost::conn::ConnInfo;
use pg_ghost::lsn::Lsn;
use pg_ghost::replication::pgoutput::{Decoder, Message};
use pg_ghost::replication::transport::{ReplicationConnection, SlotKind, SlotSnapshot, StreamEvent, StreamOptions, StreamStats};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

struct Args {
    changes: u64,
    runs: usize,
    keep_dir: Option<PathBuf>,
    coalesce: Duration,
    shapes: Vec<Shape>,
    consumers: Vec<Consumer>,
}

fn parse_args() -> Args {
    let mut args = Args {
        changes: 200_000,
        runs: 3,
        keep_dir: None,
        coalesce: StreamOptions::new(["p"]).coalesce_delay,
        shapes: vec![Shape::OneTransaction, Shape::SmallTransactions],
        consumers: Consumer::ALL.to_vec(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--changes" => args.changes = it.next().and_then(|v| v.parse().ok()).expect("--changes N"),
            "--runs" => args.runs = it.next().and_then(|v| v.parse().ok()).expect("--runs N"),
            "--dir" => args.keep_dir = it.next().map(PathBuf::from),
            "--coalesce-us" => {
                let us = it.next().and_then(|v| v.parse().ok()).expect("--coalesce-us MICROSECONDS");
                args.coalesce = Duration::from_micros(us);
            }
            "--shape" => {
                args.shapes = match it.next().as_deref() {
                    Some("big") => vec![Shape::OneTransaction],
                    Some("small") => vec![Shape::SmallTransactions],
                    other => panic!("--shape big|small, not {other:?}"),
                }
            }
            "--consumer" => {
                args.consumers = match it.next().as_deref() {
                    Some("ours") => vec![Consumer::Ours],
                    Some("eager") => vec![Consumer::OursEager],
                    Some("recv") => vec![Consumer::PgRecvlogical],
                    other => panic!("--consumer ours|eager|recv, not {other:?}"),
                }
            }
            "--bench" => {} // added by `cargo bench`
            "--help" | "-h" => {
                println!("stream_decode [--changes N (200000)] [--runs N (3)] [--dir CLUSTER_DIR] [--coalesce-us US (1000)] [--shape big|small] [--consumer ours|eager|recv]");
                std::process::exit(0);
            }
            other => panic!("unknown argument {other:?} (try --help)"),
        }
    }
    args
}

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn pg_local(args: &[&str]) -> String {
    try_pg_local(args).unwrap_or_else(|e| panic!("{e}"))
}

fn try_pg_local(args: &[&str]) -> Result<String, String> {
    let out = Command::new("bash")
        .arg(repo_root().join("scripts/pg-local.sh"))
        .args(args)
        .output()
        .map_err(|e| format!("cannot run scripts/pg-local.sh: {e}"))?;
    if !out.status.success() {
        return Err(format!("pg-local.sh {args:?} failed: {}", String::from_utf8_lossy(&out.stderr)));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// A port the kernel just handed out: unlike probing upwards from a fixed number, two
/// clusters started at the same moment by different processes do not pick the same one.
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local address").port()
}

/// Starts (or reuses) the cluster in `dir`; a failed fresh start leaves nothing behind.
fn start_cluster(dir: &str, fresh: bool) -> String {
    let port = free_port().to_string();
    let args: Vec<&str> = if fresh { vec!["start", dir, &port] } else { vec!["start", dir] };
    match try_pg_local(&args) {
        Ok(conninfo) => conninfo,
        Err(e) => {
            if fresh {
                let _ = try_pg_local(&["destroy", dir]);
            }
            panic!("{e}")
        }
    }
}

fn pg_bindir() -> PathBuf {
    if let Some(d) = std::env::var_os("PG_BINDIR") {
        return d.into();
    }
    for d in [
        "/usr/lib/postgresql/15/bin",
        "/usr/lib/postgresql/16/bin",
        "/usr/lib/postgresql/17/bin",
    ] {
        if PathBuf::from(d).join("pg_recvlogical").exists() {
            return d.into();
        }
    }
    PathBuf::from("/usr/bin")
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shape {
    /// One INSERT of N rows.
    OneTransaction,
    /// N transactions of one row each.
    SmallTransactions,
}

impl Shape {
    fn label(self) -> &'static str {
        match self {
            Shape::OneTransaction => "1 transaction x N rows",
            Shape::SmallTransactions => "N transactions x 1 row",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Consumer {
    /// Our transport with its default 1 ms read coalescing, every message decoded.
    Ours,
    /// The same, reading eagerly (coalesce_delay = 0), to show what coalescing buys.
    OursEager,
    PgRecvlogical,
}

impl Consumer {
    const ALL: [Consumer; 3] = [Consumer::Ours, Consumer::OursEager, Consumer::PgRecvlogical];

    fn label(self) -> &'static str {
        match self {
            Consumer::Ours => "pg-ghost transport+decoder",
            Consumer::OursEager => "pg-ghost, eager reads (no coalescing)",
            Consumer::PgRecvlogical => "pg_recvlogical -f /dev/null",
        }
    }

    fn slot_suffix(self) -> &'static str {
        match self {
            Consumer::Ours => "ours",
            Consumer::OursEager => "eager",
            Consumer::PgRecvlogical => "recv",
        }
    }
}

struct Sample {
    shape: Shape,
    consumer: Consumer,
    elapsed: Duration,
    stats: Option<StreamStats>,
    /// CPU time of the consumer process while it consumed.
    client_cpu: Duration,
    /// CPU time of the walsender serving it, when known.
    server_cpu: Option<Duration>,
    /// Times our threads were woken while consuming, when known.
    wakeups: Option<u64>,
}

/// One consumer's measurements.
struct Measured {
    elapsed: Duration,
    stats: Option<StreamStats>,
    client_cpu: Duration,
    server_cpu: Option<Duration>,
    wakeups: Option<u64>,
}

/// Voluntary context switches of all our threads so far (each one a wake-up from a wait).
fn our_wakeups() -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("status")).ok())
        .filter_map(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:")?.trim().parse::<u64>().ok())
        })
        .sum()
}

/// utime+stime (or, with `children`, cutime+cstime: waited-for children) of a process,
/// from /proc/PID/stat, in clock ticks of 10 ms.
fn proc_cpu(pid: &str, children: bool) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime is field 14 of the whole line, i.e. index 11 after "pid (comm)".
    let (a, b) = if children { (13, 14) } else { (11, 12) };
    let ticks: u64 = fields.get(a)?.parse::<u64>().ok()? + fields.get(b)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

struct Bench {
    info: ConnInfo,
    conninfo: String,
    client: tokio_postgres::Client,
    changes: u64,
    coalesce: Duration,
}

impl Bench {
    async fn setup(&self) {
        self.client
            .batch_execute(
                "DROP TABLE IF EXISTS t; CREATE TABLE t(id int PRIMARY KEY, v text);
                 DROP PUBLICATION IF EXISTS pub; CREATE PUBLICATION pub FOR TABLE t",
            )
            .await
            .expect("setup");
    }

    async fn burst(&self, shape: Shape) -> Lsn {
        let n = self.changes;
        self.client.batch_execute("TRUNCATE t").await.expect("truncate");
        let sql = match shape {
            Shape::OneTransaction => {
                format!("INSERT INTO t SELECT g, 'value-' || g FROM generate_series(1, {n}) g")
            }
            // COMMIT inside DO: one transaction per row, generated server-side in seconds.
            Shape::SmallTransactions => {
                format!("DO $$ BEGIN FOR i IN 1..{n} LOOP INSERT INTO t VALUES (i, 'value-' || i); COMMIT; END LOOP; END $$")
            }
        };
        self.client.batch_execute(&sql).await.expect("burst");
        let row = self.client.query_one("SELECT pg_current_wal_lsn()::text", &[]).await.expect("lsn");
        row.get::<_, String>(0).parse().expect("an LSN")
    }

    async fn create_slot(&self, name: &str) {
        let mut conn = ReplicationConnection::connect(&self.info).await.expect("connect");
        conn.create_slot(name, SlotKind::Persistent, SlotSnapshot::Nothing)
            .await
            .expect("create slot");
        conn.close().await.expect("close");
    }

    async fn drop_slot(&self, name: &str) {
        pg_ghost::replication::slot::drop_slot(&self.client, name, &Default::default())
            .await
            .expect("drop slot");
    }

    /// Streams until the Commit that follows the N-th Insert; returns the time from
    /// START_REPLICATION to that Commit.
    async fn ours(&self, slot: &str, coalesce: Duration) -> Measured {
        let conn = ReplicationConnection::connect(&self.info).await.expect("connect");
        let walsender = conn.backend_pid().to_string();
        let mut options = StreamOptions::new(["pub"]);
        options.coalesce_delay = coalesce;
        let server_before = proc_cpu(&walsender, false);
        let client_before = proc_cpu("self", false).unwrap_or_default();
        let wakeups_before = our_wakeups();
        let started = Instant::now();
        let mut stream = conn.start_replication(slot, Lsn::ZERO, &options).await.expect("start");
        let mut decoder = Decoder::new();
        let mut inserts = 0u64;
        'outer: while let Some(batch) = stream.recv().await.expect("stream") {
            for event in batch {
                if let StreamEvent::XLogData { data, .. } = event {
                    match decoder.decode(&data).expect("decode") {
                        Message::Insert(_) => inserts += 1,
                        Message::Commit(c) if inserts >= self.changes => {
                            stream.set_flushed(c.end_lsn);
                            break 'outer;
                        }
                        _ => {}
                    }
                }
            }
        }
        let elapsed = started.elapsed();
        let wakeups = our_wakeups().saturating_sub(wakeups_before);
        let client_cpu = proc_cpu("self", false).unwrap_or_default().saturating_sub(client_before);
        let server_cpu = proc_cpu(&walsender, false).zip(server_before).map(|(a, b)| a.saturating_sub(b));
        assert_eq!(inserts, self.changes, "every change arrived");
        let stats = stream.stats();
        stream.stop().await.expect("stop").close().await.expect("close");
        Measured {
            elapsed,
            stats: Some(stats),
            client_cpu,
            server_cpu,
            wakeups: Some(wakeups),
        }
    }

    fn pg_recvlogical(&self, slot: &str, endpos: Lsn) -> Measured {
        let client_before = proc_cpu("self", true).unwrap_or_default();
        let started = Instant::now();
        let out = Command::new(pg_bindir().join("pg_recvlogical"))
            .args(["-d", &self.conninfo, "--slot", slot, "--start", "--no-loop", "-f", "/dev/null"])
            .args([
                "-o",
                "proto_version=1",
                "-o",
                "publication_names=pub",
                "--endpos",
                &endpos.to_string(),
            ])
            .output()
            .expect("run pg_recvlogical");
        let elapsed = started.elapsed();
        assert!(out.status.success(), "pg_recvlogical: {}", String::from_utf8_lossy(&out.stderr));
        let client_cpu = proc_cpu("self", true).unwrap_or_default().saturating_sub(client_before);
        Measured {
            elapsed,
            stats: None,
            client_cpu,
            server_cpu: None,
            wakeups: None,
        }
    }

    async fn run_once(&self, shape: Shape, run: usize, consumers: &[Consumer], samples: &mut Vec<Sample>) {
        let slot = |c: Consumer| format!("bench_{}_{run}", c.slot_suffix());
        for &c in consumers {
            self.create_slot(&slot(c)).await;
        }
        let endpos = self.burst(shape).await;
        let mut order = consumers.to_vec();
        let first = run % order.len();
        order.rotate_left(first);
        for c in order {
            let m = match c {
                Consumer::Ours => self.ours(&slot(c), self.coalesce).await,
                Consumer::OursEager => self.ours(&slot(c), Duration::ZERO).await,
                Consumer::PgRecvlogical => self.pg_recvlogical(&slot(c), endpos),
            };
            eprintln!(
                "  run {run} {:<24} {:<40} {:>7.3} s {:>10.0} changes/s  client cpu {:.2} s{}{}",
                shape.label(),
                c.label(),
                m.elapsed.as_secs_f64(),
                self.changes as f64 / m.elapsed.as_secs_f64(),
                m.client_cpu.as_secs_f64(),
                m.server_cpu
                    .map(|s| format!(", walsender cpu {:.2} s", s.as_secs_f64()))
                    .unwrap_or_default(),
                m.stats.map(|s| format!(", {} reads", s.reads)).unwrap_or_default()
                    + &m.wakeups.map(|w| format!(", {w} wake-ups")).unwrap_or_default()
            );
            samples.push(Sample {
                shape,
                consumer: c,
                elapsed: m.elapsed,
                stats: m.stats,
                client_cpu: m.client_cpu,
                server_cpu: m.server_cpu,
                wakeups: m.wakeups,
            });
        }
        for &c in consumers {
            self.drop_slot(&slot(c)).await;
        }
    }
}

fn report(changes: u64, runs: usize, samples: &[Sample]) {
    println!("\n{changes} single-row changes, {runs} runs each; changes/s over START_REPLICATION .. last commit");
    println!("(reads, wake-ups of the consumer's threads, CPU: medians; client cpu = consumer process user+sys,");
    println!(" walsnd cpu = the walsender serving it; CPU at 10 ms resolution; '-' = not measurable for pg_recvlogical)");
    println!(
        "{:<24} {:<40} {:>10} {:>10} {:>10} {:>9} {:>8} {:>8} {:>11} {:>11}",
        "burst", "consumer", "median/s", "min/s", "max/s", "median s", "reads", "wake-ups", "client cpu", "walsnd cpu"
    );
    for shape in [Shape::OneTransaction, Shape::SmallTransactions] {
        for c in Consumer::ALL {
            let mut secs: Vec<f64> = samples
                .iter()
                .filter(|s| s.shape == shape && s.consumer == c)
                .map(|s| s.elapsed.as_secs_f64())
                .collect();
            if secs.is_empty() {
                continue;
            }
            secs.sort_by(f64::total_cmp);
            let median = secs[secs.len() / 2];
            let rate = |s: f64| changes as f64 / s;
            let count = |f: &dyn Fn(&Sample) -> Option<u64>| {
                let mut v: Vec<u64> = samples
                    .iter()
                    .filter(|s| s.shape == shape && s.consumer == c)
                    .filter_map(f)
                    .collect();
                v.sort_unstable();
                v.get(v.len() / 2).map(|r| r.to_string()).unwrap_or_else(|| "-".into())
            };
            let reads = count(&|s| s.stats.map(|st| st.reads));
            let wakeups = count(&|s| s.wakeups);
            let cpu = |f: &dyn Fn(&Sample) -> Option<Duration>| {
                let mut v: Vec<Duration> = samples
                    .iter()
                    .filter(|s| s.shape == shape && s.consumer == c)
                    .filter_map(f)
                    .collect();
                v.sort_unstable();
                v.get(v.len() / 2)
                    .map(|d| format!("{:.2} s", d.as_secs_f64()))
                    .unwrap_or_else(|| "-".into())
            };
            println!(
                "{:<24} {:<40} {:>10.0} {:>10.0} {:>10.0} {:>9.3} {:>8} {:>8} {:>11} {:>11}",
                shape.label(),
                c.label(),
                rate(median),
                rate(secs[secs.len() - 1]),
                rate(secs[0]),
                median,
                reads,
                wakeups,
                cpu(&|s| Some(s.client_cpu)),
                cpu(&|s| s.server_cpu)
            );
        }
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = parse_args();
    let dir = args
        .keep_dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join(format!("pg-ghost-bench-{}", std::process::id())));
    let fresh = !dir.join("PG_VERSION").exists();
    let cluster_conninfo = start_cluster(dir.to_str().expect("utf-8 path"), fresh);
    // Whatever happens to this process, the cluster goes with it (unless --dir keeps it).
    if args.keep_dir.is_none() {
        pg_local(&["watch", dir.to_str().expect("utf-8 path"), &std::process::id().to_string()]);
    }
    let conninfo = cluster_conninfo.replace("dbname=postgres", "dbname=bench");
    let admin = ConnInfo::parse(&cluster_conninfo)
        .expect("conninfo")
        .connect()
        .await
        .expect("connect");
    admin.batch_execute("DROP DATABASE IF EXISTS bench").await.expect("drop db");
    admin.batch_execute("CREATE DATABASE bench").await.expect("create db");
    let info = ConnInfo::parse(&conninfo)
        .expect("conninfo")
        .with_application_name("pg-ghost-bench");
    let client = info.connect().await.expect("connect bench db");
    let bench = Bench {
        info,
        conninfo,
        client,
        changes: args.changes,
        coalesce: args.coalesce,
    };
    bench.setup().await;

    let version = bench
        .client
        .query_one("SHOW server_version", &[])
        .await
        .expect("version")
        .get::<_, String>(0);
    eprintln!("PostgreSQL {version}, cluster in {}", dir.display());
    let mut samples = Vec::new();
    for &shape in &args.shapes {
        for run in 0..args.runs {
            bench.run_once(shape, run, &args.consumers, &mut samples).await;
        }
    }
    report(args.changes, args.runs, &samples);
    if args.keep_dir.is_none() {
        pg_local(&["destroy", dir.to_str().expect("utf-8 path")]);
    }
}
