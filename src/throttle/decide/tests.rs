use super::*;
use crate::throttle::inputs::{Load, Reading, ReplicaLag};
use std::path::PathBuf;

const MS: fn(u64) -> Duration = Duration::from_millis;
const GIB: u64 = 1 << 30;

fn load(text: &str) -> LoadLimits {
    LoadLimits::parse("max-load", text).unwrap()
}

fn lag(name: &str, lag: Reading<Duration>) -> ReplicaLag {
    ReplicaLag { name: name.into(), lag }
}

fn all_limits() -> Limits {
    Limits {
        max_lag: Some(MS(1500)),
        max_load: load("active_sessions=40,waiting_sessions=5,replication_slot_lag_bytes=1GB,wal_bytes_per_sec=64MB"),
        critical_load: load("active_sessions=100"),
        critical_load_hibernate: None,
        max_retained_wal: Some(10 * GIB),
        critical_retained_wal: Some(20 * GIB),
    }
}

type Case = (&'static str, fn(&mut Inputs, &mut Limits), &'static [&'static str]);

/// One case per branch: what the inputs and limits are, and every reason expected, in order.
const THROTTLE_CASES: &[Case] = &[
    ("quiet inputs", |_, _| {}, &[]),
    ("lag over the limit", |i, _| i.lags = vec![lag("replica1", Ok(MS(2300)))], &["lag 2.3s > 1.5s on replica1"]),
    ("lag at the limit is fine", |i, _| i.lags = vec![lag("replica1", Ok(MS(1500)))], &[]),
    (
        "sub-second lag",
        |i, l| {
            l.max_lag = Some(MS(150));
            i.lags = vec![lag("r1", Ok(MS(180)))];
        },
        &["lag 180ms > 150ms on r1"],
    ),
    (
        "unmeasured lag fails closed",
        |i, _| i.lags = vec![lag("r2:5432", Err("connection refused".into()))],
        &["lag on r2:5432 cannot be measured: connection refused"],
    ),
    (
        "lag not checked without max-lag",
        |i, l| {
            l.max_lag = None;
            i.lags = vec![lag("r1", Ok(MS(99_000))), lag("r2", Err("down".into()))];
        },
        &[],
    ),
    (
        "every lagging replica, in the order given",
        |i, _| {
            i.lags = vec![lag("r1", Ok(MS(100))), lag("r2", Ok(MS(3000))), lag("r3", Err("no heartbeat yet".into()))]
        },
        &["lag 3.0s > 1.5s on r2", "lag on r3 cannot be measured: no heartbeat yet"],
    ),
    (
        "max-load is reached at its threshold",
        |i, _| i.load.active_sessions = Ok(40),
        &["max-load active_sessions=40 >= 40"],
    ),
    ("max-load above", |i, _| i.load.active_sessions = Ok(45), &["max-load active_sessions=45 >= 40"]),
    ("below max-load", |i, _| i.load.active_sessions = Ok(39), &[]),
    ("waiting sessions", |i, _| i.load.waiting_sessions = Ok(7), &["max-load waiting_sessions=7 >= 5"]),
    (
        "other slots' lag in bytes",
        |i, _| i.load.replication_slot_lag_bytes = Ok(3 * GIB / 2),
        &["max-load replication_slot_lag_bytes=1.5 GiB >= 1.0 GiB"],
    ),
    (
        "WAL rate",
        |i, _| i.load.wal_bytes_per_sec = Ok(80 << 20),
        &["max-load wal_bytes_per_sec=80.0 MiB/s >= 64.0 MiB/s"],
    ),
    (
        "unmeasured load fails closed",
        |i, _| i.load.wal_bytes_per_sec = Err("not measured yet".into()),
        &["max-load wal_bytes_per_sec cannot be measured: not measured yet"],
    ),
    (
        "unmeasured metric without a limit is ignored",
        |i, l| {
            l.max_load = load("active_sessions=40");
            i.load = Load { active_sessions: Ok(1), ..Load::unknown("primary unreachable") };
        },
        &[],
    ),
    (
        "max-load in the order the limits were given",
        |i, l| {
            l.max_load = load("wal_bytes_per_sec=1MB,active_sessions=2");
            i.load.active_sessions = Ok(3);
            i.load.wal_bytes_per_sec = Ok(2 << 20);
        },
        &["max-load wal_bytes_per_sec=2.0 MiB/s >= 1.0 MiB/s", "max-load active_sessions=3 >= 2"],
    ),
    ("throttle-query positive", |i, _| i.throttle_query = Some(Ok(1.0)), &["throttle-query returned 1"]),
    ("throttle-query fraction", |i, _| i.throttle_query = Some(Ok(0.5)), &["throttle-query returned 0.5"]),
    ("throttle-query zero", |i, _| i.throttle_query = Some(Ok(0.0)), &[]),
    ("throttle-query negative", |i, _| i.throttle_query = Some(Ok(-3.0)), &[]),
    (
        "throttle-query error fails closed",
        |i, _| i.throttle_query = Some(Err("division by zero".into())),
        &["throttle-query failed: division by zero"],
    ),
    (
        "flag files",
        |i, _| i.flag_files = vec![PathBuf::from("/tmp/x"), PathBuf::from("/tmp/shared")],
        &["throttle flag file /tmp/x exists", "throttle flag file /tmp/shared exists"],
    ),
    ("retained WAL over", |i, _| i.retained_wal = Ok(12 * GIB), &["retained WAL 12.0 GiB > 10.0 GiB"]),
    ("retained WAL at the limit is fine", |i, _| i.retained_wal = Ok(10 * GIB), &[]),
    (
        "retained WAL unmeasured",
        |i, _| i.retained_wal = Err("connection lost".into()),
        &["retained WAL cannot be measured: connection lost"],
    ),
    (
        "retained WAL unmeasured without a limit",
        |i, l| {
            l.max_retained_wal = None;
            l.critical_retained_wal = None;
            i.retained_wal = Err("connection lost".into());
        },
        &[],
    ),
    ("user", |i, _| i.forced = Override::ForceThrottle, &["commanded by user"]),
    (
        "everything at once, by priority",
        |i, _| {
            i.throttle_query = Some(Ok(2.0));
            i.load.active_sessions = Ok(50);
            i.lags = vec![lag("r1", Ok(MS(5000)))];
            i.retained_wal = Ok(11 * GIB);
            i.flag_files = vec![PathBuf::from("/tmp/x")];
            i.forced = Override::ForceThrottle;
        },
        &[
            "commanded by user",
            "throttle flag file /tmp/x exists",
            "retained WAL 11.0 GiB > 10.0 GiB",
            "lag 5.0s > 1.5s on r1",
            "max-load active_sessions=50 >= 40",
            "throttle-query returned 2",
        ],
    ),
    (
        "hibernating skips load, lag and query, but not flags or WAL",
        |i, _| {
            i.hibernating = Some("hibernating for 30s after critical-load active_sessions=120 >= 100".into());
            i.load = Load::unknown("not collected while hibernating");
            i.lags = vec![lag("r1", Err("not collected while hibernating".into()))];
            i.throttle_query = Some(Err("not run while hibernating".into()));
            i.flag_files = vec![PathBuf::from("/tmp/x")];
            i.retained_wal = Ok(11 * GIB);
        },
        &[
            "hibernating for 30s after critical-load active_sessions=120 >= 100",
            "throttle flag file /tmp/x exists",
            "retained WAL 11.0 GiB > 10.0 GiB",
        ],
    ),
    (
        "cut-over locks: never throttled",
        |i, _| {
            i.cut_over_locked = true;
            i.forced = Override::ForceThrottle;
            i.flag_files = vec![PathBuf::from("/tmp/x")];
            i.lags = vec![lag("r1", Ok(MS(5000)))];
            i.load.active_sessions = Ok(500);
            i.retained_wal = Ok(50 * GIB);
        },
        &[],
    ),
];

#[test]
fn throttle_reasons_for_every_branch() {
    for (name, setup, want) in THROTTLE_CASES {
        let mut inputs = Inputs::quiet();
        let mut limits = all_limits();
        setup(&mut inputs, &mut limits);
        let d = decide(&inputs, &limits);
        let texts: Vec<&str> = d.reasons.iter().map(|r| r.text.as_str()).collect();
        assert_eq!(texts, *want, "{name}");
        assert_eq!(d.throttled, !want.is_empty(), "{name}");
        assert_eq!(d.reason.as_deref(), want.first().copied(), "{name}");
        assert_eq!(d.abort, None, "{name}");
        assert!(!d.hibernate, "{name}");
        // The causes come out in priority order.
        assert!(d.reasons.windows(2).all(|w| w[0].cause <= w[1].cause), "{name}: {:?}", d.reasons);
    }
}

#[test]
fn critical_retained_wal_aborts_before_it_is_reached() {
    let mut i = Inputs::quiet();
    i.retained_wal = Ok(20 * GIB);
    let d = decide(&i, &all_limits());
    assert_eq!(d.abort.as_deref(), Some("critical retained WAL 20.0 GiB >= 20.0 GiB"));
    assert!(d.throttled);
    assert_eq!(d.cause(), Some(Cause::CriticalRetainedWal));
    // The throttle reason for the same WAL comes after the abort.
    assert_eq!(d.reasons[1].text, "retained WAL 20.0 GiB > 10.0 GiB");
    i.retained_wal = Ok(20 * GIB - 1);
    assert_eq!(decide(&i, &all_limits()).abort, None);
}

#[test]
fn unmeasured_values_never_abort() {
    let mut i = Inputs::quiet();
    i.retained_wal = Err("gone".into());
    i.load = Load::unknown("gone");
    let d = decide(&i, &all_limits());
    assert_eq!(d.abort, None);
    assert!(!d.hibernate);
    assert!(d.throttled, "but they throttle");
}

#[test]
fn critical_load_aborts() {
    let mut i = Inputs::quiet();
    i.load.active_sessions = Ok(120);
    let d = decide(&i, &all_limits());
    assert_eq!(d.abort.as_deref(), Some("critical-load active_sessions=120 >= 100"));
    assert!(!d.hibernate);
    assert_eq!(d.reason.as_deref(), Some("critical-load active_sessions=120 >= 100"));
    assert_eq!(d.reasons[1].text, "max-load active_sessions=120 >= 40");
}

#[test]
fn critical_load_reports_the_first_limit_reached_in_order() {
    let mut limits = all_limits();
    limits.critical_load = load("waiting_sessions=10,active_sessions=100");
    let mut i = Inputs::quiet();
    i.load.active_sessions = Ok(120);
    i.load.waiting_sessions = Ok(11);
    assert_eq!(decide(&i, &limits).abort.as_deref(), Some("critical-load waiting_sessions=11 >= 10"));
}

#[test]
fn critical_load_hibernates_when_configured() {
    let mut limits = all_limits();
    limits.critical_load_hibernate = Some(Duration::from_secs(30));
    let mut i = Inputs::quiet();
    i.load.active_sessions = Ok(120);
    let d = decide(&i, &limits);
    assert_eq!(d.abort, None);
    assert!(d.hibernate && d.throttled);
    assert_eq!(d.reason.as_deref(), Some("critical-load active_sessions=120 >= 100"));
    // While hibernating the load is not looked at, so hibernation is not asked for again.
    i.hibernating = Some("hibernating".into());
    let d = decide(&i, &limits);
    assert!(!d.hibernate && d.throttled);
    assert_eq!(d.reason.as_deref(), Some("hibernating"));
}

#[test]
fn critical_retained_wal_aborts_even_when_load_would_hibernate() {
    let mut limits = all_limits();
    limits.critical_load_hibernate = Some(Duration::from_secs(30));
    let mut i = Inputs::quiet();
    i.load.active_sessions = Ok(120);
    i.retained_wal = Ok(25 * GIB);
    let d = decide(&i, &limits);
    assert!(!d.hibernate);
    assert_eq!(d.abort.as_deref(), Some("critical retained WAL 25.0 GiB >= 20.0 GiB"));
    // While hibernating, too.
    i.hibernating = Some("hibernating".into());
    assert!(decide(&i, &limits).abort.is_some());
}

#[test]
fn cut_over_locks_suppress_aborts_too() {
    let mut i = Inputs::quiet();
    i.cut_over_locked = true;
    i.retained_wal = Ok(25 * GIB);
    i.load.active_sessions = Ok(500);
    i.lags = vec![lag("r1", Ok(MS(700)))];
    assert_eq!(decide(&i, &all_limits()), Decision { lag: Some(MS(700)), ..Decision::open() });
}

#[test]
fn reports_the_largest_measured_lag() {
    let mut i = Inputs::quiet();
    assert_eq!(decide(&i, &all_limits()).lag, None);
    i.lags = vec![lag("r1", Ok(MS(300))), lag("r2", Err("down".into())), lag("r3", Ok(MS(900)))];
    assert_eq!(decide(&i, &all_limits()).lag, Some(MS(900)));
    // Reported even when lag is not a limit.
    let limits = Limits { max_lag: None, ..all_limits() };
    assert_eq!(decide(&i, &limits).lag, Some(MS(900)));
}

#[test]
fn limits_come_from_tunables_and_config() {
    let tunables = Tunables {
        chunk_size: 1000,
        nice_ratio: 0.0,
        max_lag: Some(MS(1500)),
        max_load: load("active_sessions=40"),
        critical_load: load("active_sessions=100"),
        throttle_query: None,
        throttle_control_replicas: Vec::new(),
    };
    let cfg = ThrottleConfig {
        heartbeat_interval: MS(100),
        critical_load_hibernate: Some(Duration::from_secs(5)),
        flag_file: None,
        additional_flag_file: None,
        max_retained_wal: Some(GIB),
        critical_retained_wal: Some(2 * GIB),
    };
    let l = Limits::new(&tunables, &cfg);
    assert_eq!(l.max_lag, Some(MS(1500)));
    assert_eq!(l.max_load, tunables.max_load);
    assert_eq!(l.critical_load, tunables.critical_load);
    assert_eq!(l.critical_load_hibernate, Some(Duration::from_secs(5)));
    assert_eq!((l.max_retained_wal, l.critical_retained_wal), (Some(GIB), Some(2 * GIB)));
}

#[test]
fn cause_names_are_distinct_label_values() {
    let mut seen = std::collections::HashSet::new();
    for cause in Cause::ALL {
        let name = cause.name();
        assert!(name.chars().all(|c| c.is_ascii_lowercase() || c == '-'), "{cause:?}: {name}");
        assert!(seen.insert(name), "{cause:?} repeats {name}");
    }
    // ALL lists the causes in priority order, as the enum declares them.
    assert!(Cause::ALL.windows(2).all(|w| w[0] < w[1]));
}
