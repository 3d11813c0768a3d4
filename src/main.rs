//! `pg-ghost`: parse the flags, set up logging, run, and turn the result into an exit code.
//!
//! The one place an error is logged: with its whole chain, once, then a one-line reason on
//! stderr. Logs go to stderr; stdout carries only the report of `--test-on-replica` and what
//! `history` prints. Exit codes: 0 success (cut-over committed, a clean dry run, or a clean
//! test on a replica), 1 failure (a test on a replica that found differences too), 2 usage or
//! configuration error (clap's own usage errors exit 2 too), 3 refused by a preflight check, 4
//! aborted on purpose (panic flag, critical load, signal).

use clap::Parser;
use pg_ghost::cli::{Cli, Command, LogFormat};
use pg_ghost::config::{CleanupConfig, Config, HistoryConfig};
use pg_ghost::error::{Error, ErrorKind, Result};
use pg_ghost::runner::{self, Outcome};
use pg_ghost::signals;
use std::io::IsTerminal;
use std::process::ExitCode;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    // On a usage error clap prints the usage and exits with 2 itself.
    let cli = Cli::parse();
    init_tracing(cli.log_format, cli.verbose);
    // A fleet runs whole migrations in spawned tasks, which the workers poll: their futures nest
    // as deep as the main thread's do, so the workers get the main thread's stack (tokio's
    // default of 2 MiB overflowed there).
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_stack_size(8 * 1024 * 1024)
        .build()
        .map_err(|e| Error::from(e).context("starting the async runtime"))
        .and_then(|runtime| runtime.block_on(dispatch(cli.command)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            report(&e);
            ExitCode::from(exit_code(e.kind()))
        }
    }
}

async fn dispatch(command: Command) -> Result<()> {
    signals::install()?;
    tokio::spawn(exit_on_second_signal());
    match command {
        Command::Run(args) => {
            let config = Config::from_cli(&args)?;
            tracing::debug!(?config, "configuration");
            match runner::run(config).await? {
                Outcome::CutOver => tracing::info!("done: the cut-over committed"),
                Outcome::Reverted => tracing::info!("done: reverted; the table is the original again"),
                Outcome::Direct { steps, attempts } => {
                    tracing::info!(steps, attempts, "done: the table was changed directly, without a copy")
                }
                Outcome::DryRunComplete => {
                    tracing::info!("dry run complete: everything checked out and was cleaned up")
                }
                Outcome::ReplicaTested(report) => {
                    tracing::info!(
                        table = %report.table,
                        ghost = %report.ghost,
                        rows = report.rows,
                        compare = %report.compare_query,
                        cleanup = %report.cleanup_sql(),
                        re_enable = report.re_enable_sql().unwrap_or_default(),
                        "done: the test on the replica is clean; both tables are left, the subscriptions disabled"
                    );
                    // The verdict and the commands to paste, apart from the log.
                    print!("{report}");
                }
            }
        }
        Command::Plan(args) => {
            let config = pg_ghost::config::plan_config(&args)?;
            let plan = pg_ghost::plan::plan(&config).await?;
            print!("{}", pg_ghost::plan::render(&plan, config.format)?);
        }
        Command::Cleanup(args) => {
            let config = CleanupConfig::from_cli(&args)?;
            tracing::debug!(?config, "configuration");
            runner::cleanup(config).await?;
            tracing::info!("cleanup complete");
        }
        Command::Revert(args) => {
            runner::window_request(pg_ghost::config::WindowConfig::from_cli(&args)?, runner::WindowRequest::Revert).await?;
        }
        Command::Finalize(args) => {
            runner::window_request(pg_ghost::config::WindowConfig::from_cli(&args)?, runner::WindowRequest::Finalize).await?;
        }
        Command::History(args) => {
            let config = HistoryConfig::from_cli(&args)?;
            tracing::debug!(?config, "configuration");
            print!("{}", pg_ghost::history::show(&config).await?);
        }
        Command::Migrate(args) => {
            let config = pg_ghost::config::migrate_config(&args)?;
            tracing::debug!(dir = %config.dir.display(), mode = ?config.mode, "configuration");
            print!("{}", pg_ghost::migrate::migrate(&config).await?);
        }
        Command::Fleet(args) => {
            let config = pg_ghost::fleet::from_args(&args)?;
            let out = pg_ghost::fleet::fleet(config).await?;
            // The report first: it names every failure, the error below only sums them up.
            print!("{}", out.text);
            if let Some(failure) = out.failure {
                return Err(failure);
            }
        }
    }
    Ok(())
}

/// The runner handles the first signal (a clean stop takes a moment: roll back, drop the
/// slot); a second one means the operator will not wait for it.
async fn exit_on_second_signal() {
    if let Ok(first) = signals::shutdown_requested().await {
        tracing::warn!(signal = %first.signal, "stopping cleanly: rolling back, dropping slot and publication; signal again to exit at once");
    }
    if let Ok(second) = signals::signals_received(2).await {
        tracing::error!(
            signal = %second.signal,
            "exiting at once; the original table is untouched, run `pg-ghost cleanup` to remove slot, publication and ghost"
        );
        std::process::exit(exit_code(ErrorKind::Aborted).into());
    }
}

fn init_tracing(format: LogFormat, verbose: u8) {
    // Other crates stay at info even with -vv: tokio-postgres logs query parameters at
    // debug, and row values must not reach the log. RUST_LOG can still ask for them.
    let filter = match verbose {
        0 => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        1 => EnvFilter::new("info,pg_ghost=debug"),
        _ => EnvFilter::new("info,pg_ghost=trace"),
    };
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        // Colours only for a terminal: escape codes would garble a log file.
        LogFormat::Text => builder.with_target(verbose > 0).with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// Logs the error with its whole chain, then prints the one-line reason (the same chain:
/// the innermost cause is often the useful part, e.g. which connection option was bad).
fn report(e: &Error) {
    let chain = e.chain();
    tracing::error!(kind = ?e.kind(), sqlstate = e.sqlstate(), error = %chain, "pg-ghost failed");
    eprintln!("pg-ghost: {}", one_line(&chain));
}

/// Server messages may span lines (DETAIL, HINT); the reason on stderr must not.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn exit_code(kind: ErrorKind) -> u8 {
    match kind {
        ErrorKind::Config => 2,
        ErrorKind::Refused => 3,
        ErrorKind::Aborted => 4,
        _ => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes() {
        for (kind, code) in [
            (ErrorKind::Config, 2),
            (ErrorKind::Refused, 3),
            (ErrorKind::Aborted, 4),
            (ErrorKind::Sql, 1),
            (ErrorKind::Connection, 1),
            (ErrorKind::Internal, 1),
            (ErrorKind::Constraint, 1),
        ] {
            assert_eq!(exit_code(kind), code, "{kind:?}");
        }
    }

    #[test]
    fn the_reason_is_one_line() {
        assert_eq!(one_line("syntax error\nDETAIL:  at \"x\"\n"), "syntax error DETAIL: at \"x\"");
    }
}
