//! `--metrics-listen` end to end through the binary: a run under a concurrent workload is
//! scraped during the copy, while postponed and after the swap, and what `/metrics` says is
//! checked against what the run says itself: the socket's `sup` (the status line) and the
//! log lines of the copy, the checksum and the cut-over. Bad addresses are refused before
//! anything is created.
//!
//! A scrape is compared with a `sup` only when the `sup` before it and the one after it are
//! the same line: then the scrape was taken from the same progress snapshot (it is refreshed
//! once a second), and every value the line shows must be equal.

use crate::binary;
use crate::controls_e2e::{ask, script, temp_path, wait_for_socket, wait_for_state, Running, SLOW_COPY};
use crate::harness::Cluster;
use crate::oracle::*;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const POLL: Duration = Duration::from_millis(50);

/// The samples of one scrape, `name{labels}` → value.
#[derive(Debug)]
struct Page(BTreeMap<String, f64>);

impl Page {
    fn parse(body: &str) -> Page {
        let mut samples = BTreeMap::new();
        let mut types = BTreeMap::new();
        for line in body.lines().filter(|l| !l.is_empty()) {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap_or_else(|| panic!("bad TYPE line: {line}"));
                types.insert(name.to_string(), kind.to_string());
                continue;
            }
            if line.starts_with('#') {
                continue;
            }
            let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("bad sample line: {line}"));
            let value: f64 = value.parse().unwrap_or_else(|_| panic!("bad value: {line}"));
            let name = series.split('{').next().unwrap_or_default();
            let kind = types.get(name).unwrap_or_else(|| panic!("{name} sampled without a TYPE:\n{body}"));
            assert!(name.starts_with("pg_ghost_"), "{line}");
            assert_eq!(kind == "counter", name.ends_with("_total"), "{name} is a {kind}");
            assert!(samples.insert(series.to_string(), value).is_none(), "{series} twice:\n{body}");
        }
        Page(samples)
    }

    fn get(&self, series: &str) -> Option<f64> {
        self.0.get(series).copied()
    }

    fn value(&self, series: &str) -> f64 {
        self.get(series).unwrap_or_else(|| panic!("no {series} in {self:#?}"))
    }

    fn count(&self, series: &str) -> u64 {
        let v = self.value(series);
        assert!(v >= 0.0 && v.fract() == 0.0, "{series} = {v} is not a count");
        v as u64
    }

    /// The phase whose series is 1; exactly one must be.
    fn phase(&self) -> String {
        let current: Vec<_> = self
            .0
            .iter()
            .filter_map(|(k, v)| k.strip_prefix("pg_ghost_phase{phase=\"").filter(|_| *v == 1.0))
            .map(|rest| rest.trim_end_matches("\"}").to_string())
            .collect();
        assert_eq!(current.len(), 1, "not one current phase: {self:#?}");
        current[0].clone()
    }
}

/// `GET /metrics` on a connection of its own.
async fn scrape(addr: SocketAddr) -> Page {
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: pg-ghost\r\nAccept: text/plain\r\n\r\n").await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    };
    let answer = tokio::time::timeout(Duration::from_secs(10), exchange).await.expect("a scrape within 10 s");
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no head in {answer:?}"));
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(head.contains("\r\nContent-Type: text/plain; version=0.0.4"), "{head}");
    Page::parse(body)
}

/// What the status line says, as numbers where it shows numbers.
#[derive(Debug, PartialEq)]
struct Status {
    copied: u64,
    /// `None` for `N/A`.
    total: Option<u64>,
    applied: u64,
    backlog: u64,
    /// The lag in seconds as shown (`N/A` or `0.3s`), and the WAL in parentheses.
    lag_time: String,
    lag_bytes: Option<String>,
    state: String,
}

fn number(text: &str) -> u64 {
    text.replace(',', "").parse().unwrap_or_else(|_| panic!("not a number: {text:?}"))
}

/// `Copy: 1,234/10,000 12.3%; Applied: 45; Backlog: 120 keys; Lag: N/A (1.5MB); State: copying; ETA: 9s`
fn parse_status(line: &str) -> Status {
    let parts: BTreeMap<&str, &str> =
        line.trim_end().split("; ").map(|p| p.split_once(": ").unwrap_or_else(|| panic!("{p:?} in {line:?}"))).collect();
    let field = |k: &str| *parts.get(k).unwrap_or_else(|| panic!("no {k} in {line:?}"));
    let copy = field("Copy");
    let (copied, rest) = copy.split_once('/').unwrap_or_else(|| panic!("{copy:?}"));
    let total = match rest.starts_with("N/A") {
        true => None,
        false => Some(number(rest.split(' ').next().unwrap_or_default())),
    };
    let lag = field("Lag");
    let (lag_time, lag_bytes) = match lag.split_once(" (") {
        Some((t, b)) => (t.to_string(), Some(b.trim_end_matches(')').to_string())),
        None => (lag.to_string(), None),
    };
    Status {
        copied: number(copied),
        total,
        applied: number(field("Applied")),
        backlog: number(field("Backlog").trim_end_matches(" keys")),
        lag_time,
        lag_bytes,
        state: field("State").to_string(),
    }
}

/// A scrape and the status line of the same progress snapshot (see the module's doc).
async fn consistent(run: &mut Running, addr: SocketAddr, socket: &Path) -> (Status, Page) {
    for _ in 0..50 {
        let before = ask(socket, "sup").await;
        let page = scrape(addr).await;
        let after = ask(socket, "sup").await;
        if before == after {
            return (parse_status(&before), page);
        }
        run.assert_running("a scrape between two equal status lines").await;
    }
    panic!("the status line changed around every one of 50 scrapes:\n{}", run.log());
}

/// Every value the status line shows is the scrape's.
fn assert_same(status: &Status, page: &Page) {
    assert_eq!(page.count("pg_ghost_rows_copied_total"), status.copied, "{status:?}\n{page:#?}");
    assert_eq!(page.get("pg_ghost_rows_estimated").map(|v| v as u64), status.total, "{status:?}\n{page:#?}");
    assert_eq!(page.count("pg_ghost_applied_changes_total"), status.applied, "{status:?}\n{page:#?}");
    assert_eq!(page.count("pg_ghost_apply_backlog_keys"), status.backlog, "{status:?}\n{page:#?}");
    let bytes = page.get("pg_ghost_stream_lag_bytes").map(|b| pg_ghost::status::human_bytes(b as u64));
    assert_eq!(bytes, status.lag_bytes, "{status:?}\n{page:#?}");
    let replica = page.get("pg_ghost_replica_lag_seconds").map(|s| format!("{s:.1}s")).unwrap_or_else(|| "N/A".into());
    assert_eq!(replica, status.lag_time, "{status:?}\n{page:#?}");
    let throttled = status.state.starts_with("throttled");
    assert_eq!(page.value("pg_ghost_throttled") == 1.0, throttled, "{status:?}\n{page:#?}");
}

/// The number after ` name=` in a log line.
fn log_field(line: &str, name: &str) -> u64 {
    let at = line.find(&format!(" {name}=")).unwrap_or_else(|| panic!("no {name}= in {line}"));
    let digits: String = line[at + name.len() + 2..].chars().take_while(char::is_ascii_digit).collect();
    digits.parse().unwrap_or_else(|_| panic!("{name}= is not a number in {line}"))
}

/// The address the run serves its metrics on (it chose the port).
async fn metrics_addr(run: &mut Running) -> SocketAddr {
    let line = run.wait_log("serving metrics at http://", Duration::from_secs(30)).await;
    let rest = &line[line.find("http://").unwrap() + 7..];
    rest.split('/').next().unwrap().parse().unwrap_or_else(|e| panic!("{e}: {line}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrapes_follow_a_run_under_load_and_match_its_status() {
    let db = Cluster::primary().fresh_db("metrics_run");
    let rows = 10_000;
    let table = OracleTable::create(&db, "orders", KeyKind::Identity, rows).await;
    let client = db.client().await;
    let socket = temp_path(&db, "sock");
    let postpone = temp_path(&db, "postpone");
    std::fs::write(&postpone, b"").unwrap();
    // The success hook holds the process until this goes, so the final values can be read.
    let hold = temp_path(&db, "hold");
    std::fs::write(&hold, b"").unwrap();
    let hooks = tempfile::Builder::new().prefix(&format!("pgg-metrics-{}", db.name)).tempdir().unwrap();
    script(hooks.path(), "pg-ghost-on-success", &format!("while [ -e '{}' ]; do sleep 0.05; done", hold.display()));

    let workload = Workload::start(&db, &table, WorkloadOptions::new(3).rate(Some(50))).await;
    workload.wait_for_more_commits(20, Duration::from_secs(30)).await;
    let mut args = vec![
        "--table",
        "orders",
        "--alter",
        "ALTER COLUMN n TYPE bigint",
        "--execute",
        "--metrics-listen",
        "127.0.0.1:0",
        "--serve-socket-file",
        socket.to_str().unwrap(),
        "--postpone-cut-over-flag-file",
        postpone.to_str().unwrap(),
        "--hooks-path",
        hooks.path().to_str().unwrap(),
    ];
    args.extend_from_slice(&SLOW_COPY);
    let mut run = Running::spawn(&db, &args);
    let addr = metrics_addr(&mut run).await;

    // During the copy: the rows copied grow, scrape after scrape, and match the status line.
    wait_for_state(&client, &mut run, "orders", "copy", Duration::from_secs(60)).await;
    wait_for_socket(&mut run, &socket).await;
    let mut copied = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while copied.len() < 3 && Instant::now() < deadline {
        let (status, page) = consistent(&mut run, addr, &socket).await;
        if status.state != "copying" {
            break;
        }
        assert_same(&status, &page);
        assert_eq!(page.phase(), "copy");
        assert_eq!(page.value("pg_ghost_throttle_cause{cause=\"lag\"}"), 0.0);
        if copied.last() != Some(&status.copied) {
            copied.push(status.copied);
        }
        tokio::time::sleep(POLL).await;
    }
    assert!(copied.len() >= 2, "the rows copied did not move in the scrapes during the copy: {copied:?}\n{}", run.log());
    assert!(copied.windows(2).all(|w| w[0] < w[1]), "{copied:?}");

    // Postponed: the copy and the checksum are done, the workload's changes keep being applied.
    wait_for_state(&client, &mut run, "orders", "postponed", Duration::from_secs(120)).await;
    let copy_line = run.wait_log("row copy complete", Duration::from_secs(5)).await;
    let checksum_line = run.wait_log("checksum complete", Duration::from_secs(5)).await;
    let (first, page) = loop {
        let (status, page) = consistent(&mut run, addr, &socket).await;
        if status.state == "postponing cut-over" {
            break (status, page);
        }
        tokio::time::sleep(POLL).await;
    };
    assert_same(&first, &page);
    assert_eq!(page.phase(), "postponed");
    assert_eq!(page.count("pg_ghost_rows_copied_total"), log_field(&copy_line, "rows"));
    assert_eq!(page.get("pg_ghost_rows_estimated"), Some(page.value("pg_ghost_rows_copied_total")), "the total is the rows copied");
    assert_eq!(page.count("pg_ghost_checksum_ranges_total"), log_field(&checksum_line, "ranges"));
    assert_eq!(page.count("pg_ghost_checksum_rows_total"), log_field(&checksum_line, "rows"));
    // The workload deletes rows as well as inserting them: about the table's size, not exactly.
    assert!(page.count("pg_ghost_checksum_rows_total") > rows as u64 / 2, "{checksum_line}");
    assert_eq!(page.count("pg_ghost_checksum_differing_ranges_total"), log_field(&checksum_line, "differing_ranges"));
    assert_eq!(page.count("pg_ghost_cutover_attempts_total"), 0);
    assert_eq!(page.get("pg_ghost_cutover_lock_held_seconds"), None);
    assert!(page.get("pg_ghost_slot_retained_wal_bytes").is_some(), "{page:#?}");
    assert!(page.get("pg_ghost_stream_lag_seconds").is_some_and(|s| s >= 0.0), "{page:#?}");
    let deadline = Instant::now() + Duration::from_secs(30);
    let later = loop {
        let (status, page) = consistent(&mut run, addr, &socket).await;
        assert_same(&status, &page);
        if status.applied > first.applied {
            break status;
        }
        assert!(Instant::now() < deadline, "applied changes stayed at {} under the workload:\n{}", first.applied, run.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(later.applied > first.applied);

    // The swap: the final values stay readable while the success hook holds the process.
    std::fs::remove_file(&postpone).unwrap();
    let cut_line = run.wait_log("cut-over complete", Duration::from_secs(60)).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let done = loop {
        let page = scrape(addr).await;
        if page.phase() == "done" {
            break page;
        }
        run.assert_running("phase done in the metrics").await;
        assert!(Instant::now() < deadline, "the metrics never said done:\n{}", run.log());
        tokio::time::sleep(POLL).await;
    };
    assert_eq!(done.count("pg_ghost_cutover_attempts_total"), log_field(&cut_line, "attempts"));
    for (series, field) in [("pg_ghost_cutover_lock_wait_seconds", "lock_wait_ms"), ("pg_ghost_cutover_lock_held_seconds", "lock_held_ms")] {
        // The log truncates to whole milliseconds.
        let ms = done.value(series) * 1000.0;
        let logged = log_field(&cut_line, field) as f64;
        assert!(ms >= logged - 0.001 && ms < logged + 1.0, "{series} = {ms} ms, the log says {logged} ms: {cut_line}");
    }
    assert!(done.value("pg_ghost_cutover_lock_held_seconds") > 0.0);
    assert!(done.count("pg_ghost_rows_copied_total") >= copied[copied.len() - 1]);
    std::fs::remove_file(&hold).unwrap();
    let out = run.wait(Duration::from_secs(60)).await;
    binary::assert_success(&out);
    assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "the endpoint outlived the run");

    workload.wait_for_more_commits(20, Duration::from_secs(30)).await;
    let report = workload.stop().await;
    assert!(report.errors.is_empty(), "workload errors (seed {}): {:#?}", report.seed, report.errors);
    table.assert_matches_control(&client, &table.projection().map("n", "n::bigint")).await;
    assert_no_slots_or_publications(&client).await;
}

/// An address that cannot be used stops the run before it connects: exit code and message
/// name the flag, and the database is as before.
#[tokio::test]
async fn unusable_addresses_are_refused_before_anything_is_created() {
    let db = Cluster::primary().fresh_db("metrics_refused");
    binary::narrow_table(&db, "t", 100);
    let client = db.client().await;
    let before = CatalogSnapshot::take(&client).await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let in_use = taken.local_addr().unwrap().to_string();
    let in_use_reason = format!("cannot listen on {in_use} for metrics (--metrics-listen)");
    for (addr, code, needle) in [
        ("localhost:9187", 2, "--metrics-listen \"localhost:9187\": expected an IP address and a port"),
        ("127.0.0.1", 2, "--metrics-listen \"127.0.0.1\""),
        (in_use.as_str(), 1, in_use_reason.as_str()),
    ] {
        let out = binary::run(&db, &["--table", "t", "--alter", "ADD COLUMN x int", "--execute", "--metrics-listen", addr]).await;
        binary::assert_failure(&out, code, needle);
        assert_catalog_unchanged(&before, &CatalogSnapshot::take(&client).await);
    }
}
