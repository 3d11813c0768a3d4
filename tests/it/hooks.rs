//! Hook scripts for real: shell scripts in a temporary directory that record their name and
//! environment, fail, hang, or flood their output.

use pg_ghost::error::ErrorKind;
use pg_ghost::hooks::{HookEnv, HookEvent, Hooks, ScriptHooks};
use pg_ghost::names::Names;
use pg_ghost::phase::Phase;
use pg_ghost::sql::QualifiedName;
use pg_ghost::status::Progress;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

fn script(dir: &Path, name: &str, body: &str, mode: u32) {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Appends `== <its name>` and its sorted PG_GHOST_* variables to `log`.
pub(crate) fn recorder(dir: &Path, name: &str, log: &Path) {
    script(dir, name, &format!("{{ echo \"== $(basename \"$0\")\"; env | grep '^PG_GHOST_' | sort; }} >> '{}'", log.display()), 0o755);
}

/// The log as (hook name, its variables) in the order the hooks ran.
pub(crate) fn blocks(log: &Path) -> Vec<(String, Vec<String>)> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for line in text.lines() {
        match line.strip_prefix("== ") {
            Some(name) => out.push((name.to_string(), Vec::new())),
            None => out.last_mut().expect("a variable before any hook name").1.push(line.to_string()),
        }
    }
    out
}

fn env() -> HookEnv {
    let table = QualifiedName::new("public", "orders");
    let mut p = Progress::new(Phase::Copy);
    p.rows_copied = 40;
    p.rows_estimated = Some(100);
    let mut env = HookEnv::new("shop", "orders", "ADD COLUMN note text", false)
        .resolved(&table, &Names::for_table(&table, 42))
        .with_progress(&p)
        .with_status("Copy: 40/100 40.0%")
        .with_command("throttle")
        .with_error("boom");
    env.heartbeat_lag = Some(Duration::from_millis(250));
    env
}

#[tokio::test]
async fn every_event_runs_its_hooks_in_order_with_their_environment() {
    let dir = tempfile::tempdir().unwrap();
    let hooks_dir = dir.path().join("hooks");
    std::fs::create_dir(&hooks_dir).unwrap();
    let log = dir.path().join("log");
    // Created before the scripts exist: the directory is read again at every event.
    let hooks = ScriptHooks::new(&hooks_dir, Duration::from_secs(30)).unwrap();
    for event in HookEvent::ALL {
        recorder(&hooks_dir, &format!("{}-record", event.script_prefix()), &log);
    }
    recorder(&hooks_dir, "pg-ghost-on-startup-0-first", &log);
    // Not executable, not a hook's name, a directory: none of them runs.
    script(&hooks_dir, "pg-ghost-on-startup-9-disabled", &format!("echo disabled >> '{}'", log.display()), 0o644);
    recorder(&hooks_dir, "gh-ost-on-startup", &log);
    std::fs::create_dir(hooks_dir.join("pg-ghost-on-startup-dir")).unwrap();

    let env = env();
    for event in HookEvent::ALL {
        hooks.fire(event, &env).await.unwrap_or_else(|e| panic!("{event}: {e}"));
    }

    let ran = blocks(&log);
    let mut want = vec!["pg-ghost-on-startup-0-first".to_string()];
    want.extend(HookEvent::ALL.iter().map(|e| format!("{}-record", e.script_prefix())));
    assert_eq!(ran.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>(), want);

    for (name, vars) in &ran {
        let has = |v: &str| vars.iter().any(|l| l == v);
        for always in [
            "PG_GHOST_DATABASE_NAME=shop",
            "PG_GHOST_SCHEMA_NAME=public",
            "PG_GHOST_TABLE_NAME=orders",
            "PG_GHOST_GHOST_TABLE_NAME=_orders_gho",
            "PG_GHOST_OLD_TABLE_NAME=_orders_del",
            "PG_GHOST_DDL=ADD COLUMN note text",
            "PG_GHOST_COPIED_ROWS=40",
            "PG_GHOST_ESTIMATED_ROWS=100",
            "PG_GHOST_PROGRESS=40.0",
            "PG_GHOST_HEARTBEAT_LAG=0.250",
            "PG_GHOST_DRY_RUN=false",
        ] {
            assert!(has(always), "{name}: {always} missing from {vars:?}");
        }
        assert!(vars.iter().any(|l| l.starts_with("PG_GHOST_ELAPSED_SECONDS=")), "{name}");
        assert_eq!(has("PG_GHOST_STATUS=Copy: 40/100 40.0%"), name.starts_with("pg-ghost-on-status"), "{name}");
        assert_eq!(has("PG_GHOST_COMMAND=throttle"), name.starts_with("pg-ghost-on-interactive-command"), "{name}");
        let told_the_error = name.starts_with("pg-ghost-on-failure") || name.starts_with("pg-ghost-on-revert-impossible");
        assert_eq!(has("PG_GHOST_ERROR=boom"), told_the_error, "{name}");
    }
}

#[tokio::test]
async fn a_failing_hook_stops_its_event_and_names_itself() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("after-ran");
    let hooks_dir = dir.path().join("hooks");
    std::fs::create_dir(&hooks_dir).unwrap();
    script(&hooks_dir, "pg-ghost-on-before-cut-over-1-check", "echo 'checking replicas'\necho 'replica2 is not ready' >&2\nexit 3", 0o755);
    script(&hooks_dir, "pg-ghost-on-before-cut-over-2-after", &format!("touch '{}'", marker.display()), 0o755);
    let hooks = ScriptHooks::new(&hooks_dir, Duration::from_secs(30)).unwrap();

    let e = hooks.fire(HookEvent::BeforeCutOver, &env()).await.expect_err("the hook exits 3");
    assert_eq!(e.kind(), ErrorKind::Aborted);
    assert_eq!(e.to_string(), "hook pg-ghost-on-before-cut-over-1-check exited with code 3: replica2 is not ready");
    assert!(!marker.exists(), "a hook after the failing one ran");

    script(&hooks_dir, "pg-ghost-on-success-signal", "kill -TERM $$", 0o755);
    let e = hooks.fire(HookEvent::Success, &env()).await.expect_err("the hook kills itself");
    assert_eq!(e.to_string(), "hook pg-ghost-on-success-signal was killed by signal 15");

    // No `#!` line: the kernel cannot run it, and the error says so.
    std::fs::write(hooks_dir.join("pg-ghost-on-failure-noshebang"), "echo hi\n").unwrap();
    std::fs::set_permissions(hooks_dir.join("pg-ghost-on-failure-noshebang"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let e = hooks.fire(HookEvent::Failure, &env()).await.expect_err("not an executable format");
    assert_eq!(e.kind(), ErrorKind::Io);
    assert!(e.to_string().starts_with("hook pg-ghost-on-failure-noshebang could not be started: "), "{e}");
}

/// Whether a process is gone: absent, or a zombie nobody has reaped yet (containers often
/// run without an init that reaps orphans).
fn is_gone(pid: &str) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // The state follows the command name in parentheses, which may itself hold spaces.
        Ok(stat) => stat.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('Z')),
    }
}

#[tokio::test]
async fn a_hanging_hook_is_killed_with_everything_it_started() {
    let dir = tempfile::tempdir().unwrap();
    let hooks_dir = dir.path().join("hooks");
    std::fs::create_dir(&hooks_dir).unwrap();
    let (pid_file, bg_file) = (dir.path().join("pid"), dir.path().join("bg"));
    script(
        &hooks_dir,
        "pg-ghost-on-status-hang",
        &format!("sleep 600 &\necho $! > '{}'\necho $$ > '{}'\necho 'still here' >&2\nsleep 600", bg_file.display(), pid_file.display()),
        0o755,
    );
    let timeout = Duration::from_secs(1);
    let hooks = ScriptHooks::new(&hooks_dir, timeout).unwrap();
    let started = Instant::now();
    let e = hooks.fire(HookEvent::Status, &env()).await.expect_err("the hook hangs");
    let took = started.elapsed();
    assert_eq!(e.kind(), ErrorKind::Aborted);
    assert!(e.to_string().starts_with("hook pg-ghost-on-status-hang did not finish within 1s (--hooks-timeout)"), "{e}");
    assert!(e.to_string().ends_with(": still here"), "{e}");
    assert!(took >= timeout && took < timeout + Duration::from_secs(4), "took {took:?}");

    let pids: Vec<String> = [&pid_file, &bg_file].iter().map(|f| std::fs::read_to_string(f).unwrap().trim().to_string()).collect();
    // SIGKILL is delivered at once but a process takes a moment to finish dying; there is
    // no event to wait on for another process's end, so poll it with a deadline.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !pids.iter().all(|p| is_gone(p)) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for pid in &pids {
        assert!(is_gone(pid), "process {pid} of the hook's group survived");
    }
}

#[tokio::test]
async fn a_hook_flooding_its_output_does_not_block() {
    let dir = tempfile::tempdir().unwrap();
    // Far more than a pipe holds (64 KiB): unread, the hook would block on write for ever.
    script(dir.path(), "pg-ghost-on-row-copy-complete", "head -c 1000000 /dev/zero\nhead -c 1000000 /dev/zero >&2", 0o755);
    let hooks = ScriptHooks::new(dir.path(), Duration::from_secs(30)).unwrap();
    hooks.fire(HookEvent::RowCopyComplete, &env()).await.unwrap();
}

#[tokio::test]
async fn a_hook_is_killed_when_the_run_stops_waiting_for_it() {
    let dir = tempfile::tempdir().unwrap();
    let hooks_dir = dir.path().join("hooks");
    std::fs::create_dir(&hooks_dir).unwrap();
    let pid_file = dir.path().join("pid");
    script(&hooks_dir, "pg-ghost-on-begin-postponed", &format!("echo $$ > '{}'\nexec sleep 600", pid_file.display()), 0o755);
    let hooks = ScriptHooks::new(&hooks_dir, Duration::from_secs(600)).unwrap();
    // The run aborts (panic) while the hook runs: its guard drops the `fire` future.
    let env = env();
    let fire = hooks.fire(HookEvent::BeginPostponed, &env);
    let wait_for_pid = async {
        loop {
            if let Ok(pid) = std::fs::read_to_string(&pid_file) {
                if pid.ends_with('\n') {
                    return pid.trim().to_string();
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    let pid = tokio::select! {
        _ = fire => panic!("the hook should still be running"),
        pid = wait_for_pid => pid,
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while !is_gone(&pid) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(is_gone(&pid), "the hook outlived the future that ran it");
}
