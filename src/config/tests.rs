//! Both stages together: argv → clap → `Config`, with a fixed environment.

use super::*;
use crate::cli::{Cli, Command};
use crate::conn::Endpoint;
use crate::error::ErrorKind;
use clap::Parser;

const ENV: [(&str, &str); 2] = [("PGUSER", "dba"), ("PGHOST", "db1")];

fn env(k: &str) -> Option<String> {
    ENV.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
}

fn run_args(extra: &[&str]) -> RunArgs {
    let mut argv = vec!["pg-ghost", "run", "--table", "orders", "--alter", "ADD COLUMN f int"];
    argv.extend_from_slice(extra);
    match Cli::try_parse_from(argv).unwrap_or_else(|e| panic!("{extra:?}: {e}")).command {
        Command::Run(args) => *args,
        _ => unreachable!("the argv says run"),
    }
}

fn config(extra: &[&str]) -> Result<Config> {
    Config::from_cli_with_env(&run_args(extra), env)
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[test]
fn defaults() {
    let c = config(&[]).unwrap();
    assert_eq!(c.conn.endpoint, Endpoint::Tcp { host: "db1".into(), port: 5432 });
    assert_eq!(c.conn.user, "dba");
    assert_eq!((c.table.as_str(), c.alter.as_str()), ("orders", "ADD COLUMN f int"));
    assert!(!c.execute && !c.resume && !c.skip_checksum && !c.initially_drop_ghost_table);
    assert_eq!(c.checksum_workers, 2);
    assert_eq!(c.key, None);
    assert_eq!(c.status_interval, ms(5_000));
    assert_eq!(c.conn.reconnect_timeout, ms(60_000));
    assert_eq!(c.copy, CopyConfig { chunk_time: ms(500), workers: 1 });
    assert_eq!(c.data_checks, DataCheckConfig { skip: false, limit: 10 });
    assert_eq!(
        c.cut_over,
        CutOverConfig {
            lock_timeout: ms(1_000),
            retries: 60,
            kill_blockers_after: None,
            ok_to_drop_table: false,
            timestamp_old_table: false,
            postpone_flag_file: None,
        }
    );
    assert_eq!(
        c.throttle,
        ThrottleConfig {
            heartbeat_interval: ms(100),
            critical_load_hibernate: None,
            flag_file: None,
            additional_flag_file: Some("/tmp/pg-ghost.throttle".into()),
            max_retained_wal: Some(10 << 30),
            critical_retained_wal: None,
        }
    );
    assert_eq!(c.control, ControlConfig { socket_file: None, tcp_port: None });
    assert_eq!(c.metrics_listen, None);
    assert_eq!(c.hooks, HooksConfig { path: None, timeout: ms(60_000), status_interval: ms(60_000) });
    assert_eq!(c.test_on_replica, None);
    assert_eq!(
        c.tunables,
        Tunables {
            chunk_size: 10_000,
            nice_ratio: 0.0,
            max_lag: Some(ms(1_500)),
            max_load: LoadLimits::default(),
            critical_load: LoadLimits::default(),
            throttle_query: None,
            throttle_control_replicas: vec![],
        }
    );
}

/// Flag and value pairs on one line, as a DBA would write them.
#[rustfmt::skip]
const EVERY_FLAG: &[&str] = &[
    "--conn", "host=10.0.0.1 port=6000 user=u dbname=app",
    "--execute", "--key", "orders_uk", "--resume", "--skip-checksum", "--failover-slot", "--checksum-workers", "3", "--history-table", "ops.runs",
    "--status-interval", "2s", "--reconnect-timeout", "90s",
    "--chunk-size", "2000", "--chunk-time", "1.5s", "--copy-workers", "4",
    "--data-check-limit", "25", "--skip-data-checks",
    "--cut-over-lock-timeout", "250ms", "--cut-over-retries", "5",
    "--cut-over-kill-blockers-after", "30s", "--ok-to-drop-table", "--timestamp-old-table", "--revertible-for", "2h",
    "--postpone-cut-over-flag-file", "/tmp/p", "--panic-flag-file", "/tmp/x",
    "--max-lag-millis", "3000", "--throttle-control-replicas", "r1:5433,r2",
    "--heartbeat-interval-millis", "250", "--max-load", "active_sessions=40",
    "--critical-load", "waiting_sessions=100", "--critical-load-hibernate-seconds", "30",
    "--throttle-query", "SELECT 0", "--throttle-flag-file", "/tmp/t",
    "--throttle-additional-flag-file", "", "--nice-ratio", "0.5",
    "--max-retained-wal", "512MB", "--critical-retained-wal", "20GB",
    "--serve-socket-file", "/tmp/s.sock", "--serve-tcp-port", "9001",
    "--hooks-path", "/etc/hooks", "--hooks-timeout", "10s", "--hooks-status-interval", "1m",
    "--metrics-listen", "127.0.0.1:9187", "--strategy", "auto",
    "--partition-by", "RANGE (at)", "--partitions-auto", "yearly from 2023 to 2024",
];

#[test]
fn every_flag_reaches_its_field() {
    let c = config(EVERY_FLAG).unwrap();
    assert_eq!(c.conn.endpoint, Endpoint::Tcp { host: "10.0.0.1".into(), port: 6000 });
    assert_eq!((c.conn.user.as_str(), c.conn.dbname.as_str()), ("u", "app"));
    assert!(c.execute && c.resume && c.skip_checksum && c.failover_slot);
    assert_eq!(c.checksum_workers, 3);
    assert_eq!(c.strategy, crate::cli::StrategyArg::Auto);
    assert_eq!(c.key.as_deref(), Some("orders_uk"));
    assert_eq!(c.conversion.as_ref().map(|c| c.partitions.len()), Some(1));
    assert_eq!(c.revertible_for, Some(Duration::from_secs(7200)));
    assert_eq!(c.history_table.as_deref(), Some("ops.runs"));
    assert_eq!(c.status_interval, ms(2_000));
    assert_eq!(c.conn.reconnect_timeout, ms(90_000));
    assert_eq!(c.copy, CopyConfig { chunk_time: ms(1_500), workers: 4 });
    assert_eq!(c.data_checks, DataCheckConfig { skip: true, limit: 25 });
    assert_eq!(c.cut_over.lock_timeout, ms(250));
    assert_eq!(c.cut_over.retries, 5);
    assert_eq!(c.cut_over.kill_blockers_after, Some(ms(30_000)));
    assert!(c.cut_over.ok_to_drop_table && c.cut_over.timestamp_old_table);
    assert_eq!(c.cut_over.postpone_flag_file, Some("/tmp/p".into()));
    assert_eq!(c.panic_flag_file, Some("/tmp/x".into()));
    assert_eq!(c.tunables.max_lag, Some(ms(3_000)));
    assert_eq!(
        c.tunables.throttle_control_replicas,
        [Endpoint::Tcp { host: "r1".into(), port: 5433 }, Endpoint::Tcp { host: "r2".into(), port: 5432 }]
    );
    assert_eq!(c.throttle.heartbeat_interval, ms(250));
    assert_eq!(c.tunables.max_load.get(LoadMetric::ActiveSessions), Some(40));
    assert_eq!(c.tunables.critical_load.get(LoadMetric::WaitingSessions), Some(100));
    assert_eq!(c.throttle.critical_load_hibernate, Some(ms(30_000)));
    assert_eq!(c.tunables.throttle_query.as_deref(), Some("SELECT 0"));
    assert_eq!(c.throttle.flag_file, Some("/tmp/t".into()));
    assert_eq!(c.throttle.additional_flag_file, None);
    assert_eq!(c.tunables.nice_ratio, 0.5);
    assert_eq!(c.tunables.chunk_size, 2_000);
    assert_eq!((c.throttle.max_retained_wal, c.throttle.critical_retained_wal), (Some(512 << 20), Some(20 << 30)));
    assert_eq!(c.control, ControlConfig { socket_file: Some("/tmp/s.sock".into()), tcp_port: Some(9001) });
    assert_eq!(c.metrics_listen, Some(SocketAddr::from(([127, 0, 0, 1], 9187))));
    assert_eq!(
        c.hooks,
        HooksConfig { path: Some("/etc/hooks".into()), timeout: ms(10_000), status_interval: ms(60_000) }
    );
}

#[test]
fn test_on_replica_stops_the_subscription_unless_told_not_to() {
    let c = config(&["--test-on-replica", "--execute"]).unwrap();
    assert_eq!(c.test_on_replica, Some(ReplicaTest { stop_replication: true, swap: true }));
    let c = config(&["--test-on-replica", "--test-on-replica-skip-replica-stop", "--execute"]).unwrap();
    assert_eq!(c.test_on_replica, Some(ReplicaTest { stop_replication: false, swap: true }));
    // As in gh-ost, without --execute the test is a dry run: nothing is swapped.
    let c = config(&["--test-on-replica"]).unwrap();
    assert_eq!(c.test_on_replica, Some(ReplicaTest { stop_replication: true, swap: false }));
    assert!(!c.execute);
}

#[test]
fn zero_turns_optional_checks_off() {
    let c = config(&["--max-lag-millis", "0", "--max-retained-wal", "0", "--critical-retained-wal", "0"]).unwrap();
    assert_eq!(c.tunables.max_lag, None);
    assert_eq!((c.throttle.max_retained_wal, c.throttle.critical_retained_wal), (None, None));
    // Without a lag limit, any heartbeat interval is acceptable.
    assert!(config(&["--max-lag-millis", "0", "--heartbeat-interval-millis", "5000"]).is_ok());
    assert_eq!(config(&["--reconnect-timeout", "0s"]).unwrap().conn.reconnect_timeout, Duration::ZERO);
}

/// Each case: the flags, and what the message must contain (it always names a flag).
#[test]
fn metrics_listen_takes_an_address_and_a_port() {
    for (text, want) in [("127.0.0.1:9187", "127.0.0.1:9187"), ("[::1]:9187", "[::1]:9187"), ("0.0.0.0:0", "0.0.0.0:0")] {
        let c = config(&["--metrics-listen", text]).unwrap();
        assert_eq!(c.metrics_listen, Some(want.parse().unwrap()), "{text}");
    }
}

#[test]
fn invalid_values_are_config_errors_naming_the_flag() {
    let cases: &[(&[&str], &str)] = &[
        (&["--chunk-size", "0"], "--chunk-size 0: give between 1 and 1000000 rows"),
        (&["--metrics-listen", "9187"], "--metrics-listen \"9187\": expected an IP address and a port"),
        (&["--metrics-listen", "localhost:9187"], "--metrics-listen \"localhost:9187\": expected an IP address"),
        (&["--metrics-listen", "127.0.0.1:99999"], "--metrics-listen \"127.0.0.1:99999\""),
        (&["--metrics-listen", ""], "--metrics-listen \"\""),
        (&["--chunk-size", "1000001"], "--chunk-size 1000001"),
        (&["--chunk-time", "500"], "--chunk-time \"500\": a unit is required"),
        (&["--chunk-time", "0s"], "--chunk-time \"0s\": must be more than 0"),
        (&["--chunk-time", "fast"], "--chunk-time \"fast\""),
        (&["--copy-workers", "0"], "--copy-workers 0: give between 1 and 64"),
        (&["--copy-workers", "65"], "--copy-workers 65"),
        (&["--checksum-workers", "0"], "--checksum-workers 0: give between 1 and 64"),
        (&["--checksum-workers", "65"], "--checksum-workers 65"),
        (&["--data-check-limit", "0"], "--data-check-limit 0: give between 1 and 1000 rows"),
        (&["--data-check-limit", "1001"], "--data-check-limit 1001"),
        (&["--cut-over-lock-timeout", "0ms"], "--cut-over-lock-timeout \"0ms\": give at least 1ms"),
        (&["--cut-over-lock-timeout", "0.5ms"], "give at least 1ms"),
        (&["--cut-over-lock-timeout", "1"], "--cut-over-lock-timeout \"1\": a unit is required"),
        (&["--cut-over-retries", "0"], "--cut-over-retries 0"),
        (&["--cut-over-kill-blockers-after", "0s"], "--cut-over-kill-blockers-after \"0s\": must be more than 0"),
        (&["--status-interval", "0s"], "--status-interval \"0s\""),
        (&["--status-interval", "5 parsecs"], "unknown unit \"parsecs\""),
        (&["--nice-ratio=-0.5"], "--nice-ratio -0.5: give a number of 0 or more"),
        (&["--nice-ratio", "NaN"], "--nice-ratio NaN"),
        (&["--max-lag-millis", "lots"], "--max-lag-millis \"lots\""),
        (&["--heartbeat-interval-millis", "0"], "--heartbeat-interval-millis \"0\": must be more than 0"),
        (
            &["--heartbeat-interval-millis", "1500"],
            "--heartbeat-interval-millis \"1500\" must be below --max-lag-millis \"1500\"",
        ),
        (&["--max-load", "load_average=5"], "--max-load \"load_average=5\": unknown metric"),
        (&["--max-load", "active_sessions=0"], "at least 1"),
        (&["--critical-load", "active_sessions"], "--critical-load \"active_sessions\": expected name=threshold"),
        (&["--critical-load-hibernate-seconds", "soon"], "--critical-load-hibernate-seconds \"soon\""),
        (&["--throttle-query", "DROP TABLE orders"], "--throttle-query \"DROP TABLE orders\": must be a SELECT"),
        (&["--throttle-control-replicas", "r1:http"], "--throttle-control-replicas \"r1:http\""),
        (&["--max-retained-wal", "10 parsecs"], "--max-retained-wal \"10 parsecs\": unknown unit"),
        (&["--max-retained-wal=-1"], "--max-retained-wal \"-1\""),
        (&["--critical-retained-wal", "5GB"], "--critical-retained-wal 5GB must be above --max-retained-wal 10GB"),
        (&["--critical-retained-wal", "10GB"], "must be above"),
        (&["--serve-tcp-port", "0"], "--serve-tcp-port 0"),
        (&["--hooks-timeout", "0s"], "--hooks-timeout"),
        (&["--hooks-status-interval", "1"], "--hooks-status-interval \"1\": a unit is required"),
        (&["--reconnect-timeout", "60"], "--reconnect-timeout \"60\": a unit is required"),
        (&["--test-on-replica-skip-replica-stop"], "needs --test-on-replica"),
        (&["--resume", "--initially-drop-ghost-table"], "--resume and --initially-drop-ghost-table"),
        (&["--key", " "], "--key is empty"),
        (&["--conn", "host='unterminated"], "--conn: unterminated quoted string in the connection string"),
    ];
    for (flags, want) in cases {
        let e = config(flags).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Config, "{flags:?}");
        assert!(e.to_string().contains(want), "{flags:?}: got {e:?}, want {want:?}");
    }
}

#[test]
fn empty_table_and_alter_are_refused() {
    for (table, alter, want) in [("", "ADD COLUMN f int", "--table is empty"), ("t", "  ", "--alter is empty")] {
        let cli = Cli::try_parse_from(["pg-ghost", "run", "--table", table, "--alter", alter]).unwrap();
        let Command::Run(args) = cli.command else { unreachable!() };
        let e = Config::from_cli_with_env(&args, env).unwrap_err();
        assert_eq!(e.to_string(), want);
    }
}

#[test]
fn connection_errors_never_echo_the_password() {
    let e = config(&["--conn", "postgres://u:s3cret@h:notaport/db"]).unwrap_err();
    assert!(!e.to_string().contains("s3cret"), "{e}");
    let c = config(&["--conn", "host=h user=u password=s3cret"]).unwrap();
    let shown = format!("{c:?}");
    assert!(!shown.contains("s3cret") && shown.contains("h:5432 user=u"), "{shown}");
}

#[test]
fn clap_refuses_what_it_cannot_read_with_usage_errors() {
    for argv in [
        vec!["pg-ghost", "run", "--alter", "x"],
        vec!["pg-ghost", "run", "--table", "t"],
        vec!["pg-ghost", "run", "--table", "t", "--alter", "x", "--chunk-size", "-5"],
        vec!["pg-ghost", "run", "--table", "t", "--alter", "x", "--copy-workers", "many"],
        vec!["pg-ghost", "run", "--table", "t", "--alter", "x", "--log-format", "xml"],
        vec!["pg-ghost", "run", "--table", "t", "--alter", "x", "--serve-tcp-port", "70000"],
        vec!["pg-ghost", "cleanup", "--table", "t", "--alter", "x"],
    ] {
        let e = Cli::try_parse_from(&argv).unwrap_err();
        assert_eq!(e.exit_code(), 2, "{argv:?}");
    }
}

#[test]
fn cleanup_takes_conn_table_and_log_format() {
    let cli = Cli::try_parse_from([
        "pg-ghost",
        "cleanup",
        "--conn",
        "user=u",
        "--table",
        "s.t",
        "--log-format",
        "json",
        "-v",
    ])
    .unwrap();
    assert_eq!(cli.log_format, crate::cli::LogFormat::Json);
    assert_eq!(cli.verbose, 1);
    let Command::Cleanup(args) = cli.command else { unreachable!() };
    let c = CleanupConfig::from_cli_with_env(&args, env).unwrap();
    assert_eq!((c.conn.user.as_str(), c.table.as_str()), ("u", "s.t"));
}

#[test]
fn the_clap_definition_is_consistent() {
    use clap::CommandFactory;
    Cli::command().debug_assert();
}

/// Flags that cannot join [`EVERY_FLAG`] (it has `--resume` and `--execute`; `--partitions`
/// excludes its `--partitions-auto`), with their own tests.
const TESTED_ALONE: [&str; 7] = [
    "--partitions",
    "--table",
    "--alter",
    "--initially-drop-ghost-table",
    "--test-on-replica",
    "--test-on-replica-skip-replica-stop",
    "--no-history",
];

#[test]
fn revertible_for_needs_a_real_swap_through_the_ghost() {
    assert_eq!(config(&[]).unwrap().revertible_for, None);
    for (extra, needle) in [
        (&["--revertible-for", "1h"][..], "--execute"),
        (&["--revertible-for", "1h", "--execute", "--strategy", "direct"][..], "--strategy direct"),
        (&["--revertible-for", "0s", "--execute"][..], "more than 0"),
    ] {
        let e = config(extra).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Config, "{extra:?}");
        assert!(e.to_string().contains(needle), "{extra:?}: {e}");
    }
    let e = config(&["--revertible-for", "1h", "--execute", "--test-on-replica"]).unwrap_err();
    assert!(e.to_string().contains("--test-on-replica"), "{e}");
}

#[test]
fn initially_drop_ghost_table() {
    assert!(config(&["--initially-drop-ghost-table"]).unwrap().initially_drop_ghost_table);
}

/// A flag added to `run` without a value in [`EVERY_FLAG`] would go untested.
#[test]
fn every_run_flag_is_exercised() {
    use clap::CommandFactory;
    let cli = Cli::command();
    let run = cli.find_subcommand("run").unwrap();
    let global = ["help", "version", "log-format", "verbose"];
    for long in run.get_arguments().filter_map(|a| a.get_long()).filter(|l| !global.contains(l)) {
        let flag = format!("--{long}");
        let covered = EVERY_FLAG.contains(&flag.as_str()) || TESTED_ALONE.contains(&flag.as_str());
        assert!(covered, "{flag} is missing from EVERY_FLAG");
    }
}

#[test]
fn history_is_on_by_default_and_off_with_no_history() {
    assert_eq!(config(&[]).unwrap().history_table.as_deref(), Some("pgghost.runs"));
    assert_eq!(config(&["--history-table", "ops.\"Runs\""]).unwrap().history_table.as_deref(), Some("ops.\"Runs\""));
    assert_eq!(config(&["--no-history"]).unwrap().history_table, None);
    assert_eq!(config(&["--history-table", " "]).unwrap_err().kind(), ErrorKind::Config);
}

#[test]
fn history_command_takes_table_format_and_limit() {
    let parse = |extra: &[&str]| {
        let mut argv = vec!["pg-ghost", "history", "--conn", "dbname=app"];
        argv.extend_from_slice(extra);
        match Cli::try_parse_from(argv).unwrap_or_else(|e| panic!("{extra:?}: {e}")).command {
            Command::History(args) => HistoryConfig::from_cli_with_env(&args, env),
            _ => unreachable!(),
        }
    };
    let c = parse(&[]).unwrap();
    assert_eq!((c.table, c.history_table.as_str(), c.format, c.limit), (None, "pgghost.runs", HistoryFormat::Text, 50));
    let c = parse(&["--table", "public.orders", "--format", "json", "--limit", "5", "--history-table", "ops.runs"]).unwrap();
    assert_eq!((c.table.as_deref(), c.history_table.as_str(), c.format, c.limit), (Some("public.orders"), "ops.runs", HistoryFormat::Json, 5));
    assert_eq!(parse(&["--limit", "0"]).unwrap_err().kind(), ErrorKind::Config);
    assert!(Cli::try_parse_from(["pg-ghost", "history", "--format", "yaml"]).is_err());
}

#[test]
fn partition_by_takes_a_file_or_an_automatic_spec() {
    assert_eq!(config(&[]).unwrap().conversion, None);
    let c = config(&["--partition-by", "RANGE (at)", "--partitions-auto", "yearly from 2023 to 2025, default"]).unwrap();
    let conv = c.conversion.expect("a conversion");
    assert_eq!((conv.partition_by.as_str(), conv.columns.as_slice()), ("RANGE (\"at\")", &["at".to_string()][..]));
    let names: Vec<&str> = conv.partitions.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["orders_p2023", "orders_p2024", "orders_default"]);

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("parts.sql");
    std::fs::write(&file, "CREATE TABLE orders_eu PARTITION OF orders FOR VALUES IN ('eu');").unwrap();
    let c = config(&["--partition-by", "LIST (region)", "--partitions", file.to_str().unwrap()]).unwrap();
    assert_eq!(c.conversion.expect("a conversion").partitions[0].name, "orders_eu");

    let missing = dir.path().join("missing.sql");
    let e = config(&["--partition-by", "LIST (region)", "--partitions", missing.to_str().unwrap()]).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config);
    assert!(e.to_string().contains("cannot read it"), "{e}");
    let e = config(&["--partition-by", "LIST (region)", "--partitions-auto", "monthly from 2024-01 to 2024-03"]).unwrap_err();
    assert!(e.to_string().contains("needs --partition-by \"RANGE (column)\""), "{e}");
}

#[test]
fn alter_is_optional_with_partition_by_only() {
    let argv = ["pg-ghost", "run", "--table", "orders", "--partition-by", "RANGE (at)", "--partitions-auto", "yearly from 2023 to 2024"];
    let Command::Run(args) = Cli::try_parse_from(argv).unwrap().command else { unreachable!("the argv says run") };
    let c = Config::from_cli_with_env(&args, env).unwrap();
    assert_eq!(c.alter, "");
    assert!(c.conversion.is_some());
    assert!(Cli::try_parse_from(["pg-ghost", "run", "--table", "orders"]).is_err(), "--alter is required without --partition-by");
}

#[test]
fn partition_flags_go_together() {
    let parse = |extra: &[&str]| {
        let mut argv = vec!["pg-ghost", "run", "--table", "orders", "--alter", "ADD COLUMN f int"];
        argv.extend_from_slice(extra);
        Cli::try_parse_from(argv).map(|_| ())
    };
    assert!(parse(&["--partition-by", "RANGE (at)"]).is_err(), "--partition-by alone");
    assert!(parse(&["--partitions", "f.sql"]).is_err(), "--partitions without --partition-by");
    assert!(parse(&["--partitions-auto", "yearly from 2023 to 2025"]).is_err());
    assert!(parse(&["--partition-by", "RANGE (at)", "--partitions", "f.sql", "--partitions-auto", "yearly from 2023 to 2025"]).is_err(), "both");
    assert!(parse(&["--partition-by", "RANGE (at)", "--partitions", "f.sql"]).is_ok());
}

#[test]
fn plan_takes_the_partition_flags_of_run() {
    let plan_args = |extra: &[&str]| {
        let mut argv = vec!["pg-ghost", "plan", "--conn", "host=db1 user=dba dbname=app", "--table", "orders"];
        argv.extend_from_slice(extra);
        Cli::try_parse_from(argv).map(|cli| match cli.command {
            Command::Plan(args) => args,
            _ => unreachable!("the argv says plan"),
        })
    };
    // The same pairing rules as run's.
    assert!(plan_args(&[]).is_err(), "--alter is required without --partition-by");
    assert!(plan_args(&["--alter", "ADD COLUMN f int", "--partition-by", "RANGE (at)"]).is_err(), "--partition-by alone");
    assert!(plan_args(&["--alter", "ADD COLUMN f int", "--partitions-auto", "yearly from 2023 to 2025"]).is_err());
    assert!(plan_args(&["--partition-by", "RANGE (at)", "--partitions", "f.sql", "--partitions-auto", "yearly from 2023 to 2025"]).is_err(), "both");

    let spec = "yearly from 2023 to 2025, default";
    let c = crate::config::plan_config(&plan_args(&["--partition-by", "RANGE (at)", "--partitions-auto", spec]).unwrap()).unwrap();
    assert_eq!(c.alter, "");
    let conv = c.conversion.expect("a conversion");
    assert_eq!(conv.conversion.partition_by, "RANGE (\"at\")");
    assert_eq!(conv.conversion.partitions.len(), 3);
    assert_eq!(conv.flags, [("--partition-by".to_string(), "RANGE (at)".to_string()), ("--partitions-auto".to_string(), spec.to_string())]);
    // The same validation as run's, with the same messages.
    let e = crate::config::plan_config(&plan_args(&["--partition-by", "LIST (region)", "--partitions-auto", "monthly from 2024-01 to 2024-03"]).unwrap()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config);
    assert!(e.to_string().contains("needs --partition-by \"RANGE (column)\""), "{e}");
    let c = crate::config::plan_config(&plan_args(&["--alter", "ADD COLUMN f int"]).unwrap()).unwrap();
    assert!(c.conversion.is_none());
}
