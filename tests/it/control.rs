//! The control socket end to end: a real listener (Unix socket and 127.0.0.1 TCP) over a
//! context of real channels, and `coordinates` read from a real slot.

use crate::harness::Cluster;
use pg_ghost::config::{ControlConfig, LoadLimits, Tunables};
use pg_ghost::conn::ConnInfo;
use pg_ghost::control::{ControlContext, ControlEvent, ControlHandle, ControlServer, CoordinatesSource, TableGuard, ThrottleOverride};
use pg_ghost::phase::Phase;
use pg_ghost::sql::QualifiedName;
use pg_ghost::status::Progress;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, watch};

fn tunables() -> Tunables {
    Tunables {
        chunk_size: 1000,
        nice_ratio: 0.0,
        max_lag: None,
        max_load: LoadLimits::default(),
        critical_load: LoadLimits::default(),
        throttle_query: None,
        throttle_control_replicas: Vec::new(),
    }
}

/// The runner's side of the channels the socket acts on.
struct RunnerSide {
    tunables: watch::Receiver<Tunables>,
    progress: watch::Sender<Progress>,
    phase: watch::Sender<Phase>,
    events: mpsc::Receiver<ControlEvent>,
}

fn context(coordinates: Option<CoordinatesSource>) -> (ControlContext, RunnerSide) {
    let (tunables_tx, tunables) = watch::channel(tunables());
    let (progress, progress_rx) = watch::channel(Progress::new(Phase::Copy));
    let (phase, phase_rx) = watch::channel(Phase::Copy);
    let (events_tx, events) = mpsc::channel(64);
    let ctx = ControlContext {
        tunables: tunables_tx,
        progress: progress_rx,
        phase: phase_rx,
        coordinates,
        table: TableGuard::new("orders", &QualifiedName::new("public", "orders")),
        events: events_tx,
    };
    (ctx, RunnerSide { tunables, progress, phase, events })
}

fn config(socket: Option<PathBuf>, tcp: bool) -> ControlConfig {
    ControlConfig { socket_file: socket, tcp_port: tcp.then_some(0) }
}

async fn ask_unix(path: &Path, line: &str) -> String {
    let mut s = tokio::net::UnixStream::connect(path).await.unwrap_or_else(|e| panic!("connect {}: {e}", path.display()));
    exchange(&mut s, line).await
}

async fn ask_tcp(handle: &ControlHandle, line: &str) -> String {
    let addr = handle.tcp_addr().expect("a TCP port");
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    exchange(&mut s, line).await
}

async fn exchange<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(s: &mut S, line: &str) -> String {
    s.write_all(format!("{line}\n").as_bytes()).await.unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).await.unwrap();
    answer
}

/// Asks over both transports; the answers must agree.
async fn ask(handle: &ControlHandle, line: &str) -> String {
    let path = handle.socket_file().expect("a socket file");
    let by_unix = ask_unix(path, line).await;
    let by_tcp = ask_tcp(handle, line).await;
    assert_eq!(by_unix, by_tcp, "{line}: the transports answered differently");
    by_unix
}

fn drain(events: &mut mpsc::Receiver<ControlEvent>) -> Vec<ControlEvent> {
    std::iter::from_fn(|| events.try_recv().ok()).collect()
}

#[tokio::test]
async fn every_command_over_unix_socket_and_tcp() {
    let db = Cluster::primary().fresh_db("control");
    let slot = format!("ctl_{}", db.name);
    db.psql(&format!("SELECT pg_create_logical_replication_slot('{slot}', 'pgoutput')"));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pg-ghost.sock");
    let source = CoordinatesSource { conn: ConnInfo::parse(&db.conninfo()).unwrap(), slot: slot.clone() };
    let (ctx, mut runner) = context(Some(source));
    let handle = ControlServer::spawn(&config(Some(path.clone()), true), ctx).unwrap();

    let meta = std::fs::symlink_metadata(&path).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert!(handle.tcp_addr().unwrap().ip().is_loopback());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "the private bind directory is left behind");

    assert!(ask(&handle, "help").await.starts_with("commands (one per connection):\n"));

    // Reads and sets of every tunable; each set is visible on the runner's watch.
    for (set, read_back) in [
        ("chunk-size=500", "500"),
        ("nice-ratio=0.5", "0.5"),
        ("max-lag-millis=2s", "2000"),
        ("max-load=active_sessions=40", "active_sessions=40"),
        ("critical-load=waiting_sessions=100", "waiting_sessions=100"),
        ("throttle-query=\"SELECT 0\"", "SELECT 0"),
        ("throttle-control-replicas=r1:5433", "r1:5433"),
    ] {
        let name = set.split('=').next().unwrap();
        assert_eq!(ask_unix(&path, set).await, format!("{name}={read_back}\n"), "{set}");
        assert!(runner.tunables.has_changed().unwrap(), "{set} did not reach the watch");
        runner.tunables.borrow_and_update();
        assert_eq!(ask(&handle, &format!("{name}=?")).await, format!("{read_back}\n"), "{name}");
    }
    let now = runner.tunables.borrow().clone();
    assert_eq!((now.chunk_size, now.nice_ratio, now.throttle_query.as_deref()), (500, 0.5, Some("SELECT 0")));
    // A bad value is refused over TCP as well, and changes nothing.
    let refused = ask_tcp(&handle, "chunk-size=0").await;
    assert!(refused.starts_with("error: --chunk-size 0:") && refused.lines().count() == 1, "{refused}");
    assert!(!runner.tunables.has_changed().unwrap());

    // Status and sup read the runner's progress.
    let mut p = Progress::new(Phase::Copy);
    p.rows_copied = 1_500;
    p.rows_estimated = Some(3_000);
    p.throttle_reason = Some("commanded by user".into());
    runner.progress.send_replace(p);
    let status = ask(&handle, "status").await;
    for line in [
        "table: \"public\".\"orders\"",
        "phase: copying",
        "copied: 1,500/3,000 rows (50.0%)",
        "throttle: commanded by user",
        "  chunk-size=500",
    ] {
        assert!(status.contains(line), "{line:?} missing from:\n{status}");
    }
    let sup = ask(&handle, "sup").await;
    assert!(sup.starts_with("Copy: 1,500/3,000 50.0%;") && sup.contains("State: throttled, commanded by user"), "{sup}");
    assert_eq!(sup.lines().count(), 1);

    // Coordinates from the real slot: it exists, nobody streams from it, positions parse.
    let coords = ask_unix(&path, "coordinates").await;
    assert!(coords.starts_with(&format!("slot: {slot} (not streaming)\nconfirmed_flush_lsn: ")), "{coords}");
    assert!(coords.contains("\ncurrent_wal_lsn: ") && coords.contains("\nretained: "), "{coords}");
    // help, status and sup twice (both transports), 7 sets, 7 reads twice, coordinates.
    assert_eq!(drain(&mut runner.events).len(), 2 + 2 + 2 + 7 + 7 * 2 + 1, "one report per command carried out");

    // Actions reach the runner, each followed by its report.
    assert!(ask_unix(&path, "throttle").await.starts_with("throttling:"));
    assert!(ask_tcp(&handle, "no-throttle orders").await.starts_with("no longer throttling"));
    assert!(ask_unix(&path, "unpostpone").await.starts_with("refused: the cut-over is not being postponed now"));
    runner.phase.send_replace(Phase::Postponed);
    assert_eq!(ask_unix(&path, "unpostpone=public.orders").await, "unpostponed: the cut-over starts\n");
    assert!(ask_tcp(&handle, "panic users").await.starts_with("refused: `panic` names table \"users\""));
    assert!(ask_unix(&path, "panic").await.starts_with("panic: aborting the run"));
    assert_eq!(
        drain(&mut runner.events),
        [
            ControlEvent::Throttle(ThrottleOverride::Force),
            ControlEvent::Command("throttle".into()),
            ControlEvent::Throttle(ThrottleOverride::Release),
            ControlEvent::Command("no-throttle orders".into()),
            ControlEvent::Unpostpone,
            ControlEvent::Command("unpostpone=public.orders".into()),
            ControlEvent::Panic,
            ControlEvent::Command("panic".into()),
        ]
    );

    handle.shutdown().await;
    assert!(!path.exists(), "the socket file outlived the server");
}

#[tokio::test]
async fn malformed_input_gets_an_error_line_and_the_server_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.sock");
    let (ctx, mut runner) = context(None);
    let handle = ControlServer::spawn(&config(Some(path.clone()), true), ctx).unwrap();
    for line in ["", "bogus", "chunk-size", "status please", "chunk-size=lots", "coordinates=0/0"] {
        let answer = ask(&handle, line).await;
        assert!(answer.starts_with("error: ") && answer.lines().count() == 1, "{line:?}: {answer:?}");
    }
    assert_eq!(ask(&handle, "coordinates").await, "refused: the slot is not known yet; try again once the stream has started\n");

    // Raw bytes: not UTF-8, an overlong line, a client that closes without a newline.
    let mut s = tokio::net::UnixStream::connect(&path).await.unwrap();
    assert_eq!(exchange(&mut s, "sta\u{fffd}tus").await.lines().count(), 1);
    let mut s = tokio::net::UnixStream::connect(&path).await.unwrap();
    s.write_all(b"st\xffatus\n").await.unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).await.unwrap();
    assert_eq!(answer, "error: the command is not UTF-8\n");
    // Input beyond the line is discarded, not left unread: closing on unread input resets
    // the connection and the client could lose its answer.
    let mut s = tokio::net::UnixStream::connect(&path).await.unwrap();
    s.write_all(&vec![b'x'; 10_000]).await.unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).await.unwrap();
    assert_eq!(answer, "error: the command is longer than 4096 bytes\n");
    let mut s = tokio::net::TcpStream::connect(handle.tcp_addr().unwrap()).await.unwrap();
    s.write_all(&vec![b'y'; 100_000]).await.unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).await.unwrap();
    assert_eq!(answer, "error: the command is longer than 4096 bytes\n");
    // One command per connection: a second line is ignored, as gh-ost does.
    let mut s = tokio::net::TcpStream::connect(handle.tcp_addr().unwrap()).await.unwrap();
    assert_eq!(exchange(&mut s, "bogus\nchunk-size=5").await, "error: unknown command \"bogus\"; send `help` for the list\n");
    let mut s = tokio::net::UnixStream::connect(&path).await.unwrap();
    s.write_all(b"chunk-size=?").await.unwrap();
    s.shutdown().await.unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).await.unwrap();
    assert_eq!(answer, "1000\n");

    assert_eq!(ask(&handle, "sup").await.lines().count(), 1, "still serving");
    let reported = drain(&mut runner.events);
    // Only what was carried out: the refused `coordinates` and the errors are not reported.
    assert_eq!(reported, ["chunk-size=?", "sup", "sup"].map(|c| ControlEvent::Command(c.into())));
    drop(handle);
    assert!(!path.exists(), "dropping the handle must remove the socket file too");
}

#[tokio::test]
async fn a_live_socket_is_refused_a_stale_one_replaced_and_other_files_kept() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.sock");
    let (ctx, _runner) = context(None);
    let first = ControlServer::spawn(&config(Some(path.clone()), false), ctx).unwrap();
    let (ctx, _runner2) = context(None);
    let e = ControlServer::spawn(&config(Some(path.clone()), false), ctx).err().expect("a second server on a live socket");
    assert!(e.to_string().contains("another process is listening on it"), "{e}");
    assert_eq!(ask_unix(&path, "chunk-size=?").await, "1000\n", "the first server was disturbed");
    first.shutdown().await;

    // A killed run leaves its socket file behind: nobody listens on it any more.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let (ctx, _runner) = context(None);
    let second = ControlServer::spawn(&config(Some(path.clone()), false), ctx).unwrap();
    assert_eq!(ask_unix(&path, "chunk-size=?").await, "1000\n");
    drop(second);

    std::fs::write(&path, "not a socket").unwrap();
    let (ctx, _runner) = context(None);
    let e = ControlServer::spawn(&config(Some(path.clone()), false), ctx).err().expect("a regular file in the way");
    assert!(e.to_string().contains("exists and is not a socket"), "{e}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "not a socket");
}

#[tokio::test]
async fn the_socket_file_is_removed_only_if_it_is_still_ours() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.sock");
    let (ctx, _runner) = context(None);
    let handle = ControlServer::spawn(&config(Some(path.clone()), false), ctx).unwrap();
    // Someone replaced the file during the run: it is theirs now.
    std::fs::remove_file(&path).unwrap();
    std::fs::write(&path, "theirs").unwrap();
    handle.shutdown().await;
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "theirs");
}

#[tokio::test(start_paused = true)]
async fn a_silent_client_is_answered_after_the_read_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.sock");
    let (ctx, _runner) = context(None);
    let _handle = ControlServer::spawn(&config(Some(path.clone()), false), ctx).unwrap();
    // Paused time advances by itself once every task waits, so the timeout passes at once.
    let mut s = tokio::net::UnixStream::connect(&path).await.unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).await.unwrap();
    assert_eq!(answer, "error: no command within 5s\n");
}

#[tokio::test]
async fn a_port_in_use_fails_the_start_and_leaves_no_socket_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.sock");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let cfg = ControlConfig { socket_file: Some(path.clone()), tcp_port: Some(taken.local_addr().unwrap().port()) };
    let (ctx, _runner) = context(None);
    let e = ControlServer::spawn(&cfg, ctx).err().expect("the port is taken");
    assert!(e.to_string().contains("(--serve-tcp-port)"), "{e}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "something was left in the socket's directory");
}
