//! libpq's connection conventions through the `pg-ghost` binary: the password file, a
//! connection service, several hosts with `target_session_attrs`, and refusals. No test
//! gives a password on the command line; one checks that the password shows up in nothing
//! a run prints, hands to its hooks or answers on its socket.

use crate::binary::narrow_table;
use crate::harness::{Cluster, TestDb};
use crate::oracle::ident;
use crate::run_refusals::relation_exists;
use pg_ghost::hooks::HookEvent;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

/// A login role of its own with a password nothing else contains, dropped at the end (after
/// the database: declare it first).
struct Role<'c> {
    cluster: &'c Cluster,
    name: String,
    password: String,
}

impl<'c> Role<'c> {
    fn create(cluster: &'c Cluster) -> Role<'c> {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let name = format!("libpq_role_{}_{n}", std::process::id());
        let password = format!("Qz{}x{n}-pgpass-only", std::process::id());
        cluster.psql("postgres", &format!("CREATE ROLE {} LOGIN SUPERUSER REPLICATION PASSWORD '{password}'", ident(&name)));
        Role { cluster, name, password }
    }
}

impl Drop for Role<'_> {
    fn drop(&mut self) {
        let _ = std::panic::catch_unwind(|| self.cluster.psql("postgres", &format!("DROP ROLE IF EXISTS {}", ident(&self.name))));
    }
}

/// The table the runs alter, owned by `role` so that it may alter it.
fn table(db: &TestDb<'_>, role: &Role<'_>) {
    narrow_table(db, "t", 2000);
    db.psql(&format!("ALTER TABLE t OWNER TO {}", ident(&role.name)));
}

/// A password file at `path` with `lines`, mode `mode`.
fn passfile(path: &Path, lines: &str, mode: u32) {
    std::fs::write(path, lines).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// `pg-ghost <subcommand> --conn <conn> <args>` with none of libpq's variables inherited and
/// a home of its own (no `~/.pgpass` or `~/.pg_service.conf` of whoever runs the tests).
fn pg_ghost(home: &Path, subcommand: &str, conn: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pg-ghost"));
    cmd.arg(subcommand).arg("--conn").arg(conn).args(args);
    if subcommand == "run" && !args.contains(&"--strategy") {
        // These runs are about the ghost's sessions (see binary::command_with_conn).
        cmd.args(["--strategy", "ghost"]);
    }
    for (k, _) in std::env::vars() {
        if k.starts_with("PG") && k != "PG_BINDIR" {
            cmd.env_remove(k);
        }
    }
    cmd.env("HOME", home).env("PGSYSCONFDIR", home);
    cmd.kill_on_drop(true);
    cmd
}

async fn output(mut cmd: Command) -> Output {
    let run = cmd.stdin(Stdio::null()).output();
    tokio::time::timeout(Duration::from_secs(120), run).await.expect("pg-ghost did not end within 120 s").expect("start pg-ghost")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn assert_success(out: &Output) {
    assert!(out.status.success(), "pg-ghost failed ({}):\n{}", out.status, stderr(out));
}

async fn has_column(db: &TestDb<'_>, column: &str) -> bool {
    let client = db.client().await;
    client
        .query_one("SELECT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'public.t'::regclass AND attname = $1)", &[&column])
        .await
        .unwrap()
        .get(0)
}

/// One command on the control socket, its answer to EOF.
async fn ask(path: &Path, line: &str) -> String {
    let exchange = async {
        let mut s = tokio::net::UnixStream::connect(path).await.unwrap_or_else(|e| panic!("connect to {}: {e}", path.display()));
        s.write_all(format!("{line}\n").as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    };
    tokio::time::timeout(Duration::from_secs(10), exchange).await.unwrap_or_else(|_| panic!("no answer to {line:?} within 10 s"))
}

#[tokio::test]
async fn a_run_with_the_password_in_pgpass_never_shows_it() {
    let cluster = Cluster::primary();
    let role = Role::create(cluster);
    let db = cluster.fresh_db("libpq_pgpass");
    table(&db, &role);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pgpass");
    passfile(&file, &format!("# pg-ghost's test\n127.0.0.1:{}:{}:{}:{}\n", cluster.port, db.name, role.name, role.password), 0o600);
    // Every hook records its whole environment.
    let hooks = dir.path().join("hooks");
    std::fs::create_dir(&hooks).unwrap();
    let env_log = dir.path().join("hook-env");
    for event in HookEvent::ALL {
        let script = hooks.join(format!("{}-dump", event.script_prefix()));
        std::fs::write(&script, format!("#!/bin/sh\n{{ echo \"== $0\"; env; }} >> '{}'\n", env_log.display())).unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let socket = dir.path().join("pg-ghost.sock");
    let postpone = dir.path().join("postpone");
    std::fs::write(&postpone, "").unwrap();
    let conn = format!("host=127.0.0.1 port={} user={} dbname={} application_name=nightly", cluster.port, role.name, db.name);
    let (hooks_s, socket_s, postpone_s) = (hooks.display().to_string(), socket.display().to_string(), postpone.display().to_string());
    let mut cmd = pg_ghost(
        dir.path(),
        "run",
        &conn,
        &[
            "--table", "t", "--alter", "ADD COLUMN note text", "--execute", "-vv",
            "--hooks-path", &hooks_s, "--serve-socket-file", &socket_s, "--postpone-cut-over-flag-file", &postpone_s,
            "--status-interval", "1s", "--throttle-additional-flag-file", "",
        ],
    );
    cmd.env("PGPASSFILE", &file);
    let child = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("start pg-ghost");

    // While the cut-over is postponed, ask the socket everything it answers.
    let mut answers = String::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(Instant::now() < deadline, "the run did not reach the postponed cut-over within 60 s");
        if socket.exists() {
            let status = ask(&socket, "status").await;
            if status.contains("postpon") {
                answers.push_str(&status);
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for command in ["sup", "info", "coordinates", "help", "chunk-size=?", "max-lag-millis=?", "throttle-control-replicas=?"] {
        answers.push_str(&ask(&socket, command).await);
    }
    std::fs::remove_file(&postpone).unwrap();
    let out = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output()).await.expect("pg-ghost did not end").unwrap();
    assert_success(&out);
    assert!(has_column(&db, "note").await, "the ALTER was applied");
    let hook_env = std::fs::read_to_string(&env_log).expect("the hooks ran");
    assert!(hook_env.contains("PG_GHOST_DATABASE_NAME"), "{hook_env}");
    assert!(answers.contains("coordinates") || answers.contains("slot"), "{answers}");
    for (what, text) in [
        ("stderr", stderr(&out)),
        ("stdout", String::from_utf8_lossy(&out.stdout).into_owned()),
        ("the hooks' environment", hook_env),
        ("the socket's answers", answers),
    ] {
        assert!(!text.contains(&role.password), "the password appears in {what}:\n{text}");
    }
}

#[tokio::test]
async fn a_service_file_and_pgpass_give_the_whole_connection() {
    let cluster = Cluster::primary();
    let role = Role::create(cluster);
    let db = cluster.fresh_db("libpq_service");
    table(&db, &role);
    let dir = tempfile::tempdir().unwrap();
    let services = dir.path().join("services.conf");
    std::fs::write(&services, format!("# test\n[other]\nhost=nowhere.invalid\n\n[ghostsvc]\nhost=127.0.0.1\nport={}\nuser={}\ndbname={}\n", cluster.port, role.name, db.name))
        .unwrap();
    // ~/.pgpass itself this time, with wildcards.
    passfile(&dir.path().join(".pgpass"), &format!("127.0.0.1:*:*:{}:{}\n", role.name, role.password), 0o600);
    let mut cmd = pg_ghost(dir.path(), "run", "service=ghostsvc", &["--table", "t", "--alter", "ADD COLUMN note text", "--execute", "--ok-to-drop-table"]);
    cmd.env("PGSERVICEFILE", &services);
    let out = output(cmd).await;
    assert_success(&out);
    assert!(has_column(&db, "note").await);

    // PGSERVICE names it as well; a service that exists nowhere is an error naming it.
    let mut cmd = pg_ghost(dir.path(), "run", "", &["--table", "t", "--alter", "DROP COLUMN note", "--execute", "--ok-to-drop-table"]);
    cmd.env("PGSERVICEFILE", &services).env("PGSERVICE", "ghostsvc");
    assert_success(&output(cmd).await);
    assert!(!has_column(&db, "note").await);
    let mut cmd = pg_ghost(dir.path(), "run", "service=missing", &["--table", "t", "--alter", "ADD COLUMN x int"]);
    cmd.env("PGSERVICEFILE", &services);
    let out = output(cmd).await;
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("definition of service \"missing\" not found"), "{}", stderr(&out));
}

#[tokio::test]
async fn a_password_file_others_can_read_is_ignored_with_libpqs_warning() {
    let cluster = Cluster::primary();
    let role = Role::create(cluster);
    let db = cluster.fresh_db("libpq_loose");
    table(&db, &role);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pgpass");
    passfile(&file, &format!("*:*:*:{}:{}\n", role.name, role.password), 0o644);
    let conn = format!("host=127.0.0.1 port={} user={} dbname={}", cluster.port, role.name, db.name);
    let mut cmd = pg_ghost(dir.path(), "run", &conn, &["--table", "t", "--alter", "ADD COLUMN note text"]);
    cmd.env("PGPASSFILE", &file);
    let out = output(cmd).await;
    let err = stderr(&out);
    assert!(!out.status.success(), "connected without a password:\n{err}");
    assert!(
        err.contains(&format!("password file \"{}\" has group or world access; permissions should be u=rw (0600) or less", file.display())),
        "{err}"
    );
    assert!(!has_column(&db, "note").await);

    // The same file, made private, is used.
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut cmd = pg_ghost(dir.path(), "run", &conn, &["--table", "t", "--alter", "ADD COLUMN note text"]);
    cmd.env("PGPASSFILE", &file);
    assert_success(&output(cmd).await);
}

#[tokio::test]
async fn an_unsupported_key_is_refused_before_anything_is_done() {
    let cluster = Cluster::primary();
    let db = cluster.fresh_db("libpq_refuse");
    narrow_table(&db, "t", 100);
    let dir = tempfile::tempdir().unwrap();
    for (extra, needle) in [
        ("gssencmode=require", "gssencmode=require"),
        ("target_session_attrs=standby", "target_session_attrs=standby"),
        ("options='-c work_mem=1GB'", "options"),
        ("colour=blue", "invalid connection option \"colour\""),
    ] {
        let conn = format!("{} {extra}", db.conninfo());
        let out = output(pg_ghost(dir.path(), "run", &conn, &["--table", "t", "--alter", "ADD COLUMN note text", "--execute"])).await;
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{extra}: {err}");
        let reason = err.lines().rev().find(|l| l.starts_with("pg-ghost: ")).unwrap_or_default();
        assert!(reason.contains(needle), "{extra}: the reason does not name it: {reason}");
        assert!(!err.contains("password="), "the connection string is repeated:\n{err}");
    }
    let client = db.client().await;
    assert!(!relation_exists(&client, "public", "_t_gho").await);
    assert!(!relation_exists(&client, "public", "_t_ghc").await);
    let slots: i64 = client.query_one("SELECT count(*) FROM pg_replication_slots WHERE database = current_database()", &[]).await.unwrap().get(0);
    assert_eq!(slots, 0);
}

/// A port nothing listens on.
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[tokio::test]
async fn several_hosts_lead_to_the_primary() {
    let cluster = Cluster::primary();
    let standby = cluster.standby("libpq");
    let role = Role::create(cluster);
    let db = cluster.fresh_db("libpq_hosts");
    table(&db, &role);
    let dir = tempfile::tempdir().unwrap();
    passfile(&dir.path().join(".pgpass"), &format!("*:*:*:{}:{}\n", role.name, role.password), 0o600);
    let dead = closed_port();
    for attrs in ["read-write", "primary"] {
        let conn = format!(
            "postgresql://{}@127.0.0.1:{dead},127.0.0.1:{},127.0.0.1:{}/{}?target_session_attrs={attrs}&connect_timeout=5",
            role.name, standby.port, cluster.port, db.name
        );
        let out = output(pg_ghost(dir.path(), "run", &conn, &["--table", "t", "--alter", "ADD COLUMN note text"])).await;
        assert_success(&out);
        let err = stderr(&out);
        assert!(err.contains(&format!("connecting to 127.0.0.1:{}", cluster.port)), "{attrs}: the log does not say which host:\n{err}");
    }
    // The standby alone is no host for a run.
    let conn = format!("host=127.0.0.1 port={} user={} dbname={} target_session_attrs=read-write", standby.port, role.name, db.name);
    let out = output(pg_ghost(dir.path(), "run", &conn, &["--table", "t", "--alter", "ADD COLUMN note text"])).await;
    assert!(!out.status.success());
    assert!(stderr(&out).contains("read-only"), "{}", stderr(&out));
}

/// The seconds left on a socket's keepalive timer in a line of `ss -o`
/// (`timer:(keepalive,6.2sec,0)`, `...,750ms,...`, `...,119min,...`); None when it has none.
fn keepalive_secs(line: &str) -> Option<f64> {
    let left = line.split("timer:(keepalive,").nth(1)?.split(',').next()?;
    let (minutes, rest) = match left.split_once("min") {
        Some((m, rest)) => (m.parse::<f64>().ok()?, rest),
        None => (0.0, left),
    };
    let secs = match rest {
        "" => 0.0,
        r if r.ends_with("ms") => r.strip_suffix("ms")?.parse::<f64>().ok()? / 1000.0,
        r => r.strip_suffix("sec")?.parse::<f64>().ok()?,
    };
    Some(minutes * 60.0 + secs)
}

/// `keepalives_idle` and friends in the connection string reach every socket of the run, the
/// replication connection's included (its own socket, not tokio-postgres's): while the run
/// waits on the postpone flag, each of its TCP connections to the server has a keepalive
/// timer of at most the 7 s given (the system's default is two hours).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_settings_reach_every_connection() {
    let cluster = Cluster::primary();
    let db = cluster.fresh_db("libpq_keepalive");
    narrow_table(&db, "t", 1_000);
    let client = db.client().await;
    let flag = crate::run_faults::flag_path(&db, "postpone");
    std::fs::write(&flag, b"").unwrap();
    let conn = format!("{} keepalives_idle=7 keepalives_interval=3 keepalives_count=2", db.conninfo());
    let args = ["--table", "t", "--alter", "ALTER COLUMN n TYPE bigint", "--execute", "--postpone-cut-over-flag-file", flag.to_str().unwrap()];
    let mut run = crate::run_faults::Running::spawn_command(crate::binary::command_with_conn(&conn, "run", &args));
    crate::run_faults::wait_for_state(&client, &mut run, "t", "postponed", Duration::from_secs(60)).await;
    let pid = run.pid().expect("the run's pid");
    let walsender_port: i32 = client
        .query_one("SELECT client_port FROM pg_stat_activity WHERE backend_type = 'walsender' AND datname = current_database()", &[])
        .await
        .unwrap()
        .get(0);

    // A socket with data in flight shows its retransmission timer instead, for a moment: look
    // again until every one is idle.
    let deadline = Instant::now() + Duration::from_secs(10);
    let listed = loop {
        let ss = std::process::Command::new("ss").args(["-tnpoH", "state", "established", "dport", "=", &format!(":{}", cluster.port)]).output().expect("cannot run ss");
        let listed = String::from_utf8_lossy(&ss.stdout).into_owned();
        let ours: Vec<&str> = listed.lines().filter(|l| l.contains(&format!("pid={pid},"))).collect();
        for line in &ours {
            assert!(keepalive_secs(line).is_none_or(|s| s <= 7.0), "a socket of pg-ghost's with a keepalive past the 7 s given: {line}");
        }
        if ours.iter().all(|l| keepalive_secs(l).is_some()) {
            break listed;
        }
        assert!(Instant::now() < deadline, "a socket of pg-ghost's without a keepalive timer for 10 s:\n{listed}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let ours: Vec<&str> = listed.lines().filter(|l| l.contains(&format!("pid={pid},"))).collect();
    assert!(ours.len() >= 3, "fewer sockets of pg-ghost's than its sessions:\n{listed}");
    assert!(ours.iter().any(|l| l.contains(&format!(":{walsender_port} "))), "the replication connection's socket is not among them:\n{listed}");

    std::fs::remove_file(&flag).unwrap();
    assert_success(&run.wait(Duration::from_secs(60)).await);
}
