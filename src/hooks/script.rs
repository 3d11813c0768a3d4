//! Hooks as executables in `--hooks-path`: for an event, every executable regular file whose
//! name starts with `pg-ghost-on-<event>` runs, in byte order of the names, one after the
//! other, with the `PG_GHOST_*` variables added to pg-ghost's own environment.
//!
//! Invariants:
//! - the directory is read again at every event, so hooks can be added during a run;
//! - a hook runs in a process group of its own; when it outlives `--hooks-timeout`, or the
//!   run stops waiting for it, the whole group is killed, so nothing it started lingers;
//! - a hook that exits non-zero, is killed by a signal or times out stops the event: later
//!   hooks of the event do not run, and the error names the hook, its exit and the tail of
//!   its stderr;
//! - output is read to the end (a full pipe would block the hook) but only the last
//!   [`OUTPUT_KEPT`] bytes of each stream are kept, and logged at debug.

use super::{HookEnv, HookEvent, HookFuture, Hooks, ENV_NAMES, SCRIPT_PREFIX};
use crate::error::{Error, ErrorKind, Result};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Bytes kept from the end of each of a hook's output streams.
pub const OUTPUT_KEPT: usize = 8 * 1024;
/// Bytes of stderr quoted in an error.
const ERROR_TAIL: usize = 500;
/// After a hook exits, how long to wait for the rest of its output: a process it left in
/// the background may hold the pipes open for ever.
const OUTPUT_GRACE: Duration = Duration::from_secs(1);
/// Attempts at starting a hook that another process is still writing (ETXTBSY).
const SPAWN_ATTEMPTS: u32 = 5;

#[derive(Clone, Debug)]
pub struct ScriptHooks {
    dir: PathBuf,
    timeout: Duration,
}

impl ScriptHooks {
    /// Checks that `dir` is a directory, and warns about files that look like hooks but
    /// will never run.
    pub fn new(dir: &Path, timeout: Duration) -> Result<ScriptHooks> {
        let flag = |why: &str| Error::config(format!("--hooks-path {}: {why}", dir.display()));
        match std::fs::metadata(dir) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(flag("is not a directory")),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(flag("does not exist")),
            Err(e) => return Err(flag(&e.to_string())),
        }
        let hooks = ScriptHooks { dir: dir.to_path_buf(), timeout };
        for (name, executable) in hooks.entries().map_err(|e| flag(&e.to_string()))? {
            if let Some(why) = never_runs(&name, executable) {
                tracing::warn!(hook = %name, dir = %dir.display(), "{why}");
            }
        }
        Ok(hooks)
    }

    /// The hooks `event` runs, in the order they run.
    pub fn scripts(&self, event: HookEvent) -> Result<Vec<PathBuf>> {
        let prefix = event.script_prefix();
        let entries = self
            .entries()
            .map_err(|e| Error::with_source(ErrorKind::Io, format!("reading --hooks-path {}: {e}", self.dir.display()), e))?;
        let mut names: Vec<String> =
            entries.into_iter().filter(|(name, executable)| *executable && name.starts_with(&prefix)).map(|(n, _)| n).collect();
        names.sort();
        Ok(names.into_iter().map(|n| self.dir.join(n)).collect())
    }

    /// Regular files (symlinks followed) with a UTF-8 name, and whether they are executable.
    fn entries(&self) -> std::io::Result<Vec<(String, bool)>> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            // A name that is not UTF-8 cannot be a hook's name: every prefix is ASCII.
            let Ok(name) = entry.file_name().into_string() else { continue };
            match std::fs::metadata(entry.path()) {
                Ok(m) if m.is_file() => out.push((name, m.permissions().mode() & 0o111 != 0)),
                _ => {}
            }
        }
        Ok(out)
    }

    /// Runs the hooks whose names start with `prefix`, in order, with `vars`: the fleet's
    /// events (`pg-ghost-on-fleet-complete`, `pg-ghost-on-target-*`), which are not a run's.
    pub async fn run_prefixed(&self, prefix: &str, vars: &[(&'static str, String)]) -> Result<()> {
        let entries = self
            .entries()
            .map_err(|e| Error::with_source(ErrorKind::Io, format!("reading --hooks-path {}: {e}", self.dir.display()), e))?;
        let mut names: Vec<String> = entries.into_iter().filter(|(name, executable)| *executable && name.starts_with(prefix)).map(|(n, _)| n).collect();
        names.sort();
        for name in names {
            self.run_one(&self.dir.join(name), vars).await?;
        }
        Ok(())
    }

    async fn run_all(&self, event: HookEvent, env: &HookEnv) -> Result<()> {
        let vars = env.vars(event);
        for script in self.scripts(event)? {
            self.run_one(&script, &vars).await?;
        }
        Ok(())
    }

    async fn run_one(&self, script: &Path, vars: &[(&'static str, String)]) -> Result<()> {
        let name = script.file_name().map_or_else(|| script.display().to_string(), |n| n.to_string_lossy().into_owned());
        tracing::info!(hook = %name, "running hook");
        let started = Instant::now();
        let mut command = tokio::process::Command::new(script);
        for var in ENV_NAMES {
            command.env_remove(var);
        }
        // A hook is told about the run, never given its password.
        command.env_remove("PGPASSWORD");
        command
            .envs(vars.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own group, so a timeout can kill whatever the hook started as well.
            .process_group(0)
            .kill_on_drop(true);
        let mut child = spawn(&mut command)
            .await
            .map_err(|e| Error::with_source(ErrorKind::Io, format!("hook {name} could not be started: {e}"), e))?;
        // Declared after `child`, so dropped before it: the group is killed while its
        // leader is still unreaped and the group id cannot have been reused.
        let mut group = GroupKill::new(child.id());
        let stdout = tokio::spawn(keep_tail(child.stdout.take()));
        let stderr = tokio::spawn(keep_tail(child.stderr.take()));
        let deadline = started + self.timeout;
        let status = match tokio::time::timeout_at(deadline, child.wait()).await {
            Ok(status) => {
                group.disarm();
                status.map_err(|e| Error::with_source(ErrorKind::Io, format!("waiting for hook {name}: {e}"), e))?
            }
            Err(_) => {
                group.kill();
                if let Err(e) = child.wait().await {
                    tracing::debug!(hook = %name, error = %e, "reaping a killed hook");
                }
                let (out, err) = collect(stdout, stderr).await;
                log_output(&name, &out, &err);
                return Err(Error::new(
                    ErrorKind::Aborted,
                    format!(
                        "hook {name} did not finish within {:?} (--hooks-timeout); it and its process group were killed{}",
                        self.timeout,
                        stderr_tail(&err)
                    ),
                ));
            }
        };
        let (out, err) = collect(stdout, stderr).await;
        log_output(&name, &out, &err);
        tracing::debug!(hook = %name, secs = started.elapsed().as_secs_f64(), status = %status, "hook finished");
        check_status(&name, status, &err)
    }
}

impl Hooks for ScriptHooks {
    fn fire<'a>(&'a self, event: HookEvent, env: &'a HookEnv) -> HookFuture<'a> {
        Box::pin(self.run_all(event, env))
    }
}

/// The fleet's hooks (see `crate::fleet`): not a run's events, but not strays either.
pub const FLEET_PREFIXES: [&str; 2] = ["pg-ghost-on-fleet-", "pg-ghost-on-target-"];

/// Why a file in the hooks directory that looks like a hook will never run, if it won't.
fn never_runs(name: &str, executable: bool) -> Option<String> {
    if !name.starts_with(SCRIPT_PREFIX) {
        return None;
    }
    if !HookEvent::ALL.iter().any(|e| name.starts_with(&e.script_prefix())) && !FLEET_PREFIXES.iter().any(|p| name.starts_with(p)) {
        let events: Vec<String> = HookEvent::ALL.iter().map(|e| e.script_prefix()).collect();
        return Some(format!("this hook matches no event and never runs; names start with one of: {}", events.join(", ")));
    }
    if !executable {
        return Some("this hook is not executable and will not run (chmod +x to enable it)".into());
    }
    None
}

/// Starts the hook, retrying while the file is busy: a hook being written (by the DBA, or
/// a just-written file inherited open by a process forked meanwhile) fails with ETXTBSY
/// for a moment.
async fn spawn(command: &mut tokio::process::Command) -> std::io::Result<tokio::process::Child> {
    let mut attempt = 1;
    loop {
        match command.spawn() {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && attempt < SPAWN_ATTEMPTS => {
                tokio::time::sleep(Duration::from_millis(20 * u64::from(attempt))).await;
                attempt += 1;
            }
            result => return result,
        }
    }
}

/// Kills a process group when asked or when dropped, unless disarmed.
struct GroupKill {
    pgid: Option<libc::pid_t>,
}

impl GroupKill {
    fn new(pid: Option<u32>) -> GroupKill {
        GroupKill { pgid: pid.and_then(|p| libc::pid_t::try_from(p).ok()).filter(|p| *p > 0) }
    }

    fn kill(&mut self) {
        if let Some(pgid) = self.pgid.take() {
            // SAFETY: kill(2) has no memory effects; a negative pid addresses the process
            // group the hook leads (process_group(0) made its pid the group id), and the
            // leader is not reaped yet, so the id still names that group.
            let rc = unsafe { libc::kill(-pgid, libc::SIGKILL) };
            if rc != 0 {
                tracing::debug!(pgid, error = %std::io::Error::last_os_error(), "killing a hook's process group");
            }
        }
    }

    fn disarm(&mut self) {
        self.pgid = None;
    }
}

impl Drop for GroupKill {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The end of one output stream: its last bytes and how many there were in all.
#[derive(Debug, Default)]
struct Tail {
    kept: Vec<u8>,
    total: usize,
}

async fn keep_tail<R: AsyncRead + Unpin>(stream: Option<R>) -> Tail {
    let mut tail = Tail::default();
    let Some(mut stream) = stream else { return tail };
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                tail.total += n;
                tail.kept.extend_from_slice(&buf[..n]);
                // Trim in batches, not on every read, so a chatty hook costs little.
                if tail.kept.len() > 2 * OUTPUT_KEPT {
                    tail.kept.drain(..tail.kept.len() - OUTPUT_KEPT);
                }
            }
        }
    }
    if tail.kept.len() > OUTPUT_KEPT {
        tail.kept.drain(..tail.kept.len() - OUTPUT_KEPT);
    }
    tail
}

/// The output read so far, waiting at most [`OUTPUT_GRACE`] for the rest.
async fn collect(stdout: JoinHandle<Tail>, stderr: JoinHandle<Tail>) -> (Tail, Tail) {
    let grace = Instant::now() + OUTPUT_GRACE;
    (finish(stdout, grace).await, finish(stderr, grace).await)
}

async fn finish(reader: JoinHandle<Tail>, deadline: Instant) -> Tail {
    let abort = reader.abort_handle();
    match tokio::time::timeout_at(deadline, reader).await {
        Ok(Ok(tail)) => tail,
        Ok(Err(_)) => Tail::default(),
        Err(_) => {
            tracing::debug!("a process started by a hook keeps its output open; not waiting for it");
            abort.abort();
            Tail::default()
        }
    }
}

fn log_output(name: &str, out: &Tail, err: &Tail) {
    for (stream, tail) in [("stdout", out), ("stderr", err)] {
        if tail.total > 0 {
            tracing::debug!(hook = %name, stream, bytes = tail.total, output = %String::from_utf8_lossy(&tail.kept), "hook output");
        }
    }
}

fn check_status(name: &str, status: ExitStatus, err: &Tail) -> Result<()> {
    use std::os::unix::process::ExitStatusExt;
    if status.success() {
        return Ok(());
    }
    let how = match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with code {code}"),
        (None, Some(signal)) => format!("was killed by signal {signal}"),
        (None, None) => format!("ended with {status}"),
    };
    Err(Error::new(ErrorKind::Aborted, format!("hook {name} {how}{}", stderr_tail(err))))
}

/// `: <the last of stderr>` on one line, or nothing when the hook wrote none.
fn stderr_tail(err: &Tail) -> String {
    let text = String::from_utf8_lossy(&err.kept);
    let one_line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.is_empty() {
        return String::new();
    }
    let mut cut = one_line.len().saturating_sub(ERROR_TAIL);
    while !one_line.is_char_boundary(cut) {
        cut += 1;
    }
    let ellipsis = if cut > 0 || err.total > err.kept.len() { "..." } else { "" };
    format!(": {ellipsis}{}", &one_line[cut..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warns_only_about_hooks_that_never_run() {
        assert_eq!(never_runs("pg-ghost-on-success", true), None);
        assert_eq!(never_runs("pg-ghost-on-success-slack.sh", true), None);
        assert_eq!(never_runs("README", false), None);
        assert_eq!(never_runs("gh-ost-on-success", true), None);
        assert!(never_runs("pg-ghost-on-success", false).unwrap().contains("not executable"));
        assert!(never_runs("pg-ghost-on-sucess", true).unwrap().contains("matches no event"));
    }

    #[test]
    fn error_tail_is_one_bounded_line() {
        let tail = |s: &str, total: usize| Tail { kept: s.as_bytes().to_vec(), total };
        assert_eq!(stderr_tail(&tail("", 0)), "");
        assert_eq!(stderr_tail(&tail("  \n", 3)), "");
        assert_eq!(stderr_tail(&tail("no\nway\n", 7)), ": no way");
        assert_eq!(stderr_tail(&tail("end", 9000)), ": ...end");
        let long = format!("{}é{}", "a".repeat(600), "b".repeat(400));
        let got = stderr_tail(&tail(&long, long.len()));
        assert!(got.starts_with(": ...") && got.ends_with('b') && got.len() <= ERROR_TAIL + 6, "{got}");
    }

    #[tokio::test]
    async fn keeps_the_end_of_long_output() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let tail = keep_tail(Some(&data[..])).await;
        assert_eq!(tail.total, data.len());
        assert_eq!(tail.kept, &data[data.len() - OUTPUT_KEPT..]);
        let none = keep_tail(None::<&[u8]>).await;
        assert_eq!((none.total, none.kept.len()), (0, 0));
    }
}
