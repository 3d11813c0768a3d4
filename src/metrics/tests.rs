use super::http::respond;
use super::*;
use std::collections::BTreeMap;

fn snapshot() -> Snapshot {
    let progress = Progress {
        rows_copied: 1_234,
        rows_estimated: Some(10_000),
        copy_rate: Some(250.5),
        applied: 77,
        backlog_keys: 12,
        parked_keys: 34,
        lag: None,
        lag_bytes: Some(4096),
        stream_lag: Some(Duration::from_secs(2)),
        slot_retained_wal: Some(1 << 20),
        old_table_bytes: Some(8192),
        throttle_reason: Some("throttle flag file /tmp/x exists".into()),
        throttle_cause: Some(Cause::FlagFile),
        standby_wait: Some(Duration::from_millis(2_500)),
        ..Progress::new(Phase::Copy)
    };
    Snapshot {
        phase: Phase::Copy,
        progress,
        checksum: ChecksumCounts { ranges: 3, rows: 900, differing_ranges: 1, repaired_ranges: 1 },
        cut_over_attempts: 2,
        cut_over_locks: Some((Duration::from_millis(15), Duration::from_millis(250))),
        reconnects: vec![("pg-ghost".into(), 1), ("pg-ghost stream".into(), 4)],
    }
}

/// The samples of a page: `name{labels}` → value; each family's TYPE by name.
struct Page {
    samples: BTreeMap<String, f64>,
    types: BTreeMap<String, String>,
}

fn parse(text: &str) -> Page {
    let mut page = Page { samples: BTreeMap::new(), types: BTreeMap::new() };
    let mut helped = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').expect("HELP name text");
            assert!(!help.is_empty(), "{line}");
            helped.push(name.to_string());
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
            assert_eq!(helped.last().map(String::as_str), Some(name), "TYPE follows its HELP: {line}");
            page.types.insert(name.into(), kind.into());
        } else {
            assert!(!line.starts_with('#'), "unexpected comment: {line}");
            let (series, value) = line.rsplit_once(' ').expect("series value");
            let value: f64 = value.parse().unwrap_or_else(|_| panic!("not a number: {line}"));
            let name = series.split('{').next().unwrap();
            assert!(page.types.contains_key(name), "{name} sampled before its TYPE");
            assert!(page.samples.insert(series.into(), value).is_none(), "{series} repeats");
        }
    }
    page
}

#[test]
fn a_page_follows_the_conventions() {
    let page = parse(&render(&snapshot()));
    for (name, kind) in &page.types {
        assert!(name.starts_with("pg_ghost_"), "{name}");
        assert!(name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'), "{name}");
        assert_eq!(kind == "counter", name.ends_with("_total"), "{name} is a {kind}");
        assert!(!name.contains("_ms") && !name.contains("millis"), "{name}: base units only");
        assert!(page.samples.keys().any(|s| s.split('{').next() == Some(name.as_str())), "{name} has no sample");
    }
}

#[test]
fn values_come_from_the_snapshot() {
    let page = parse(&render(&snapshot()));
    let want = [
        ("pg_ghost_rows_copied_total", 1_234.0),
        ("pg_ghost_rows_estimated", 10_000.0),
        ("pg_ghost_copy_rows_per_second", 250.5),
        ("pg_ghost_applied_changes_total", 77.0),
        ("pg_ghost_apply_backlog_keys", 12.0),
        ("pg_ghost_apply_parked_keys", 34.0),
        ("pg_ghost_stream_lag_bytes", 4096.0),
        ("pg_ghost_stream_lag_seconds", 2.0),
        ("pg_ghost_slot_retained_wal_bytes", 1_048_576.0),
        ("pg_ghost_revert_window_old_table_bytes", 8192.0),
        ("pg_ghost_apply_standby_wait_seconds", 2.5),
        ("pg_ghost_throttled", 1.0),
        ("pg_ghost_checksum_ranges_total", 3.0),
        ("pg_ghost_checksum_rows_total", 900.0),
        ("pg_ghost_checksum_differing_ranges_total", 1.0),
        ("pg_ghost_checksum_repaired_ranges_total", 1.0),
        ("pg_ghost_cutover_attempts_total", 2.0),
        ("pg_ghost_cutover_lock_wait_seconds", 0.015),
        ("pg_ghost_cutover_lock_held_seconds", 0.25),
        ("pg_ghost_phase{phase=\"copy\"}", 1.0),
        ("pg_ghost_phase{phase=\"build-indexes\"}", 0.0),
        ("pg_ghost_throttle_cause{cause=\"flag-file\"}", 1.0),
        ("pg_ghost_throttle_cause{cause=\"lag\"}", 0.0),
        ("pg_ghost_reconnects_total{session=\"main\"}", 1.0),
        ("pg_ghost_reconnects_total{session=\"stream\"}", 4.0),
    ];
    for (series, value) in want {
        assert_eq!(page.samples.get(series), Some(&value), "{series}");
    }
    let phases: Vec<_> = page.samples.iter().filter(|(k, _)| k.starts_with("pg_ghost_phase{")).collect();
    assert_eq!(phases.len(), Phase::ALL.len());
    assert_eq!(phases.iter().map(|(_, v)| **v).sum::<f64>(), 1.0, "exactly one phase is current");
    let causes = page.samples.keys().filter(|k| k.starts_with("pg_ghost_throttle_cause{")).count();
    assert_eq!(causes, Cause::ALL.len());
}

#[test]
fn unknown_values_are_left_out_not_zero() {
    let s = Snapshot {
        phase: Phase::Inspect,
        progress: Progress::new(Phase::Inspect),
        checksum: ChecksumCounts::default(),
        cut_over_attempts: 0,
        cut_over_locks: None,
        reconnects: Vec::new(),
    };
    let page = parse(&render(&s));
    for absent in [
        "pg_ghost_rows_estimated",
        "pg_ghost_copy_rows_per_second",
        "pg_ghost_stream_lag_bytes",
        "pg_ghost_stream_lag_seconds",
        "pg_ghost_replica_lag_seconds",
        "pg_ghost_slot_retained_wal_bytes",
        "pg_ghost_revert_window_old_table_bytes",
        "pg_ghost_cutover_lock_wait_seconds",
        "pg_ghost_cutover_lock_held_seconds",
        "pg_ghost_reconnects_total",
    ] {
        assert!(!page.types.contains_key(absent), "{absent} shown without a value");
    }
    assert_eq!(page.samples.get("pg_ghost_throttled"), Some(&0.0));
    assert_eq!(page.samples.get("pg_ghost_phase{phase=\"inspect\"}"), Some(&1.0));
    assert!(page.samples.iter().filter(|(k, _)| k.starts_with("pg_ghost_throttle_cause{")).all(|(_, v)| *v == 0.0));
}

#[test]
fn the_total_is_the_status_lines() {
    // Once the copy is over the status line's total is the rows copied, not the estimate.
    let p = Progress { rows_copied: 990, rows_estimated: Some(1_000), ..Progress::new(Phase::CatchUp) };
    let page = parse(&render(&Snapshot { phase: Phase::CatchUp, progress: p, ..snapshot() }));
    assert_eq!(page.samples.get("pg_ghost_rows_estimated"), Some(&990.0));
}

#[test]
fn sessions_are_labelled_without_the_common_prefix() {
    assert_eq!(session_label("pg-ghost"), "main");
    assert_eq!(session_label("pg-ghost apply"), "apply");
    assert_eq!(session_label("pg-ghost cut-over"), "cut-over");
    assert_eq!(session_label("myapp"), "myapp");
}

fn answer(request: &str) -> super::http::Response {
    respond(request.as_bytes(), || "pg_ghost_x 1\n".into())
}

#[test]
fn http_answers_get_and_head_on_metrics_only() {
    let ok = answer("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!((ok.status, ok.body.as_str(), ok.content_type), (200, "pg_ghost_x 1\n", CONTENT_TYPE));
    let bytes = String::from_utf8(ok.to_bytes()).unwrap();
    assert!(bytes.starts_with("HTTP/1.1 200 OK\r\n"), "{bytes}");
    assert!(bytes.contains("\r\nContent-Length: 13\r\n") && bytes.contains("\r\nConnection: close\r\n"), "{bytes}");
    assert!(bytes.ends_with("\r\n\r\npg_ghost_x 1\n"), "{bytes}");

    assert_eq!(answer("GET /metrics?x=1 HTTP/1.0\r\n\r\n").status, 200);
    let head = answer("HEAD /metrics HTTP/1.1\r\n\r\n");
    let bytes = String::from_utf8(head.to_bytes()).unwrap();
    assert!(bytes.contains("Content-Length: 13\r\n") && bytes.ends_with("\r\n\r\n"), "{bytes}");

    for (request, status) in [
        ("GET / HTTP/1.1\r\n\r\n", 404),
        ("GET /metricsx HTTP/1.1\r\n\r\n", 404),
        ("POST /metrics HTTP/1.1\r\n\r\n", 405),
        ("GET /metrics HTTP/2.0\r\n\r\n", 505),
        ("GET /metrics\r\n\r\n", 400),
        ("GET  /metrics HTTP/1.1\r\n\r\n", 400),
        ("\r\n\r\n", 400),
        ("GET /\u{ff}metrics HTTP/1.1\r\n\r\n", 404),
    ] {
        assert_eq!(answer(request).status, status, "{request:?}");
    }
    assert!(String::from_utf8(answer("PUT /metrics HTTP/1.1\r\n\r\n").to_bytes()).unwrap().contains("\r\nAllow: GET, HEAD\r\n"));
    assert_eq!(respond(b"GET /metrics HTTP/1.1\xff\r\n\r\n", String::new).status, 400, "not UTF-8");
}

fn sources() -> (Sources, watch::Sender<Phase>, watch::Sender<Progress>) {
    let (phase_tx, phase) = watch::channel(Phase::Inspect);
    let (progress_tx, progress) = watch::channel(Progress::new(Phase::Inspect));
    let sources = Sources {
        phase,
        progress,
        checksum: Arc::default(),
        cut_over: Arc::default(),
        reconnects: Reconnects::default(),
    };
    (sources, phase_tx, progress_tx)
}

async fn get(addr: SocketAddr, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    answer
}

use std::net::SocketAddr;

#[tokio::test]
async fn scrapes_over_tcp_see_the_sources_as_they_are() {
    let mut server = MetricsServer::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = server.addr();
    assert_ne!(addr.port(), 0, "the kernel's port is told");
    let (sources, phase, progress) = sources();
    server.serve(sources).unwrap();
    let first = get(addr, "GET /metrics HTTP/1.1\r\nHost: pg-ghost\r\n\r\n").await;
    assert!(first.starts_with("HTTP/1.1 200 OK\r\n"), "{first}");
    assert!(first.contains("\npg_ghost_phase{phase=\"inspect\"} 1\n"), "{first}");
    phase.send_replace(Phase::Copy);
    progress.send_modify(|p| p.rows_copied = 5);
    let second = get(addr, "GET /metrics HTTP/1.1\n\n").await;
    assert!(second.contains("\npg_ghost_phase{phase=\"copy\"} 1\n"), "{second}");
    assert!(second.contains("\npg_ghost_rows_copied_total 5\n"), "{second}");
    assert!(get(addr, "GET /nothing HTTP/1.1\r\n\r\n").await.starts_with("HTTP/1.1 404 "));
    // A head that never ends is cut off at the limit (sent whole, one byte over it, so that
    // the server has read everything when it answers and closes).
    let start = "GET /metrics HTTP/1.1\r\nX: ";
    let long = format!("{start}{}", "a".repeat(http::MAX_HEAD + 1 - start.len()));
    assert!(get(addr, &long).await.starts_with("HTTP/1.1 431 "));
}

#[tokio::test]
async fn a_port_in_use_is_refused_naming_the_flag() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let err = MetricsServer::bind(addr).err().expect("the port is in use");
    let text = err.to_string();
    assert!(text.contains("--metrics-listen") && text.contains(&addr.to_string()), "{text}");
}
