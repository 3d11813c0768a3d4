use super::*;

fn record() -> Record {
    let origin = Origin { version: "0.1.0".into(), client_host: "h".into(), client_user: "u".into(), pid: 7 };
    Record::new("r1".into(), origin, "orders", "ALTER COLUMN n TYPE bigint", true)
}

fn seconds(v: &Values) -> BTreeMap<String, f64> {
    serde_json::from_str(&v.phase_seconds).unwrap()
}

#[test]
fn phases_accumulate_their_durations() {
    let t0 = Instant::now();
    let mut r = record();
    r.phase_started = t0;
    r.enter(Phase::Prepare, t0 + Duration::from_millis(100));
    r.enter(Phase::Copy, t0 + Duration::from_millis(300));
    let v = r.values(t0 + Duration::from_millis(1300));
    assert_eq!(v.phase, "copy");
    assert_eq!(seconds(&v), BTreeMap::from([("inspect".into(), 0.1), ("prepare".into(), 0.2), ("copy".into(), 1.0)]));
    assert_eq!(v.outcome, None);
}

#[test]
fn a_failure_keeps_the_phase_it_happened_in() {
    let t0 = Instant::now();
    let mut r = record();
    r.phase_started = t0;
    r.enter(Phase::Copy, t0);
    r.enter(Phase::Cleanup, t0 + Duration::from_secs(2));
    let e = Error::new(ErrorKind::Constraint, "could not create unique index");
    r.finish(Err(&e), false, t0 + Duration::from_secs(3));
    let v = r.values(t0 + Duration::from_secs(10));
    assert_eq!((v.phase, v.outcome, v.error_kind), ("copy", Some("failed"), Some("constraint")));
    assert_eq!(v.error.as_deref(), Some("could not create unique index"));
    assert_eq!(seconds(&v)["cleanup"], 1.0, "the cleanup counts, and stops counting at the end");
}

#[test]
fn a_failed_cleanup_after_success_says_cleanup() {
    let t0 = Instant::now();
    let mut r = record();
    r.enter(Phase::CutOver, t0);
    r.enter(Phase::Cleanup, t0);
    r.finish(Err(&Error::new(ErrorKind::Sql, "drop failed")), true, t0);
    assert_eq!(r.values(t0).phase, "cleanup");
}

#[test]
fn success_ends_in_done_and_an_abort_is_aborted() {
    let t0 = Instant::now();
    let mut r = record();
    r.enter(Phase::Cleanup, t0);
    r.finish(Ok(Outcome::DryRun), false, t0);
    let v = r.values(t0);
    assert_eq!((v.phase, v.outcome, v.error), ("done", Some("dry-run"), None));
    assert!(r.is_finished());
    assert_eq!(Outcome::of_error(&Error::new(ErrorKind::Aborted, "panic flag")), Outcome::Aborted);
    assert_eq!(Outcome::of_error(&Error::refused("no key")), Outcome::Failed);
}

#[test]
fn a_resumed_run_adds_to_the_earlier_process() {
    let t0 = Instant::now();
    let mut r = record();
    r.phase_started = t0;
    r.continue_from(Earlier {
        rows_copied: 500,
        phase_seconds: BTreeMap::from([("copy".into(), 2.0), ("inspect".into(), 0.5)]),
        resumes: 1,
        cut_over_attempts: None,
        lock_held_ms: None,
    });
    r.rows_copied = 250;
    r.enter(Phase::Copy, t0 + Duration::from_millis(500));
    let v = r.values(t0 + Duration::from_millis(1500));
    assert_eq!((v.rows_copied, v.resumes), (750, 2));
    assert_eq!(seconds(&v), BTreeMap::from([("inspect".into(), 1.0), ("copy".into(), 3.0)]));
}

#[test]
fn cut_over_figures_in_milliseconds() {
    let mut r = record();
    r.cut_over_attempts = Some(3);
    r.lock_held = Some(Duration::from_micros(12_345));
    let v = r.values(Instant::now());
    assert_eq!((v.cut_over_attempts, v.lock_held_ms), (Some(3), Some(12.345)));
}

#[test]
fn fingerprints_ignore_spelling_and_constants() {
    let a = fingerprint("\"public\".\"orders\"", "add column x int default 1").unwrap();
    let b = fingerprint("\"public\".\"orders\"", "ADD COLUMN   x int DEFAULT 2;").unwrap();
    let c = fingerprint("\"public\".\"orders\"", "ADD COLUMN y int").unwrap();
    assert_eq!(a, b);
    assert_ne!(a, c);
    assert_eq!(a.len(), 16);
    assert_eq!(fingerprint("orders", "ADD COLUMN"), None);
    let mut r = record();
    let before = r.fingerprint.clone();
    r.resolved("public", "orders", "\"public\".\"orders\"");
    assert!(before.is_some() && r.fingerprint.is_some());
    assert_eq!((r.schema.as_deref(), r.table.as_str()), (Some("public"), "orders"));
}

#[test]
fn a_conversion_records_its_partition_key_and_count() {
    let mut r = record();
    let plain = r.fingerprint.clone();
    r.alter = String::new();
    r.conversion("RANGE (\"at\")", 12);
    assert_eq!(r.change(), "PARTITION BY RANGE (\"at\") (12 partitions)");
    let bare = r.fingerprint.clone();
    assert!(bare.is_some() && bare != plain, "{bare:?} {plain:?}");
    r.alter = "ADD COLUMN x int ".into();
    r.conversion("RANGE (\"at\")", 1);
    assert_eq!(r.change(), "PARTITION BY RANGE (\"at\") (1 partition); ADD COLUMN x int");
    let with_alter = r.fingerprint.clone();
    assert!(with_alter.is_some() && with_alter != bare);
    r.resolved("public", "orders", "\"public\".\"orders\"");
    assert_eq!(r.fingerprint, conversion_fingerprint("\"public\".\"orders\"", "RANGE (\"at\")", "ADD COLUMN x int"));
    assert_ne!(r.fingerprint, fingerprint("\"public\".\"orders\"", "ADD COLUMN x int"), "not the ALTER's alone");
    assert_ne!(conversion_fingerprint("t", "RANGE (at)", ""), conversion_fingerprint("t", "LIST (at)", ""));
}

#[test]
fn outcome_names_are_the_documented_ones() {
    let names: Vec<_> = Outcome::ALL.iter().map(|o| o.name()).collect();
    assert_eq!(names, ["success", "dry-run", "replica-test", "failed", "aborted", "reverted"]);
}

#[test]
fn run_ids_differ() {
    let a = new_run_id();
    assert_eq!(a.len(), 16);
    assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
    assert_ne!(a, new_run_id());
}

#[test]
fn this_process_has_a_host_and_a_user() {
    let o = Origin::this_process();
    assert!(!o.client_host.is_empty() && !o.client_user.is_empty(), "{o:?}");
    assert_eq!(o.pid, std::process::id() as i32);
}

#[test]
fn a_direct_run_writes_its_strategy_and_steps() {
    let t0 = Instant::now();
    let mut r = record();
    assert_eq!((r.values(t0).strategy, r.values(t0).steps), ("ghost", None), "the ghost way has no steps");
    r.strategy = STRATEGY_DIRECT;
    r.steps = vec![
        StepRecord::pending("ALTER TABLE t ADD COLUMN x int".into(), "locked".into(), "ACCESS EXCLUSIVE on t".into()),
        StepRecord::pending("ALTER TABLE t VALIDATE CONSTRAINT c".into(), "validate".into(), "SHARE UPDATE EXCLUSIVE on t".into()),
    ];
    r.steps[0].outcome = StepRecord::DONE.into();
    r.steps[0].attempts = 2;
    r.steps[0].seconds = Some(0.25);
    let v = r.values(t0);
    assert_eq!(v.strategy, "direct");
    let steps: Vec<StepRecord> = serde_json::from_str(v.steps.as_deref().unwrap()).unwrap();
    assert_eq!(steps, r.steps);
    let json: serde_json::Value = serde_json::from_str(v.steps.as_deref().unwrap()).unwrap();
    assert_eq!(json[1]["outcome"], "pending");
    assert_eq!(json[0]["lock"], "ACCESS EXCLUSIVE on t");
}
