use super::*;

fn copying(copied: u64, estimated: Option<u64>, rate: Option<f64>) -> Progress {
    Progress { rows_copied: copied, rows_estimated: estimated, copy_rate: rate, ..Progress::new(Phase::Copy) }
}

#[test]
fn the_line_in_gh_osts_shape() {
    let p = Progress {
        applied: 45_678,
        backlog_keys: 120,
        lag: Some(Duration::from_millis(300)),
        ..copying(1_234_567, Some(10_000_000), Some(15_880.0))
    };
    assert_eq!(
        status_line(&p),
        "Copy: 1,234,567/10,000,000 12.3%; Applied: 45,678; Backlog: 120 keys; Lag: 0.3s; State: copying; ETA: 9m12s"
    );
}

#[test]
fn lines_across_phases_and_states() {
    let cases = [
        (Progress::new(Phase::Inspect), "Copy: 0/N/A; Applied: 0; Backlog: 0 keys; Lag: N/A; State: inspecting; ETA: N/A"),
        (
            Progress { rows_estimated: Some(500), ..Progress::new(Phase::Stream) },
            "Copy: 0/500 0.0%; Applied: 0; Backlog: 0 keys; Lag: N/A; State: starting the stream; ETA: N/A",
        ),
        (
            Progress { throttle_reason: Some("lag 2.3s > 1.5s on replica1".into()), ..copying(10, Some(100), Some(0.0)) },
            "Copy: 10/100 10.0%; Applied: 0; Backlog: 0 keys; Lag: N/A; State: throttled, lag 2.3s > 1.5s on replica1; ETA: N/A",
        ),
        (
            Progress { lag: Some(Duration::from_millis(1_240)), lag_bytes: Some(1536 * 1024), ..Progress::new(Phase::Postponed) },
            "Copy: 0/0 100.0%; Applied: 0; Backlog: 0 keys; Lag: 1.2s (1.5MB); State: postponing cut-over; ETA: due",
        ),
        (
            Progress { rows_copied: 1_000, rows_estimated: Some(1_200), ..Progress::new(Phase::CutOver) },
            "Copy: 1,000/1,000 100.0%; Applied: 0; Backlog: 0 keys; Lag: N/A; State: cutting over; ETA: due",
        ),
        (
            Progress { parked_keys: 1_234, ..copying(10, Some(100), Some(1.0)) },
            "Copy: 10/100 10.0%; Applied: 0; Parked: 1,234 keys; Backlog: 0 keys; Lag: N/A; State: copying; ETA: 1m30s",
        ),
        (
            Progress { lag_bytes: Some(100), ..copying(5, None, Some(1.0)) },
            "Copy: 5/N/A; Applied: 0; Backlog: 0 keys; Lag: N/A (100B); State: copying; ETA: N/A",
        ),
        (
            Progress { standby_wait: Some(Duration::from_secs(75)), backlog_keys: 40, ..Progress::new(Phase::Postponed) },
            "Copy: 0/0 100.0%; Applied: 0; Backlog: 40 keys; Lag: N/A; Standbys: waited 1m15s; State: postponing cut-over; ETA: due",
        ),
        (
            Progress { standby_wait: Some(Duration::from_millis(3)), ..Progress::new(Phase::Postponed) },
            "Copy: 0/0 100.0%; Applied: 0; Backlog: 0 keys; Lag: N/A; State: postponing cut-over; ETA: due",
        ),
    ];
    for (p, want) in cases {
        assert_eq!(status_line(&p), want);
    }
}

#[test]
fn percent_is_truncated_and_bounded() {
    for (copied, est, phase, want) in [
        (0, Some(10), Phase::Copy, Some(0.0)),
        (9_999, Some(10_000), Phase::Copy, Some(99.9)),
        (1, Some(3), Phase::Copy, Some(33.3)),
        (150, Some(100), Phase::Copy, Some(100.0)),
        (0, Some(0), Phase::Copy, Some(100.0)),
        (5, None, Phase::Copy, None),
        (80, Some(100), Phase::CatchUp, Some(100.0)),
        (80, None, Phase::Done, Some(100.0)),
    ] {
        let p = Progress { phase, ..copying(copied, est, None) };
        assert_eq!(p.percent(), want, "{copied}/{est:?} in {phase:?}");
    }
}

#[test]
fn eta_from_rate() {
    for (copied, est, rate, phase, want) in [
        (0, Some(1_000), Some(10.0), Phase::Copy, Eta::Remaining(Duration::from_secs(100))),
        (999, Some(1_000), Some(10.0), Phase::Copy, Eta::Remaining(Duration::from_secs(1))),
        (0, Some(7_200), Some(1.0), Phase::Copy, Eta::Remaining(Duration::from_secs(7_200))),
        (1_000, Some(1_000), Some(10.0), Phase::Copy, Eta::Due),
        (1_200, Some(1_000), None, Phase::Copy, Eta::Due),
        (0, Some(1_000), None, Phase::Copy, Eta::Unknown),
        (0, Some(1_000), Some(0.0), Phase::Copy, Eta::Unknown),
        (0, Some(1_000), Some(f64::NAN), Phase::Copy, Eta::Unknown),
        (0, Some(1_000), Some(-3.0), Phase::Copy, Eta::Unknown),
        (0, Some(u64::MAX), Some(1e-300), Phase::Copy, Eta::Unknown),
        (0, None, Some(10.0), Phase::Copy, Eta::Unknown),
        (0, Some(1_000), Some(10.0), Phase::Prepare, Eta::Unknown),
        (0, Some(1_000), Some(10.0), Phase::Failed, Eta::Unknown),
        (500, Some(1_000), None, Phase::BuildIndexes, Eta::Due),
        (500, Some(1_000), None, Phase::Done, Eta::Due),
    ] {
        let p = Progress { phase, ..copying(copied, est, rate) };
        assert_eq!(p.eta(), want, "{copied}/{est:?} at {rate:?} in {phase:?}");
    }
}

#[test]
fn formats() {
    for (n, want) in
        [(0, "0"), (7, "7"), (999, "999"), (1_000, "1,000"), (123_456, "123,456"), (1_234_567, "1,234,567")]
    {
        assert_eq!(thousands(n), want);
    }
    assert_eq!(thousands(u64::MAX), "18,446,744,073,709,551,615");
    for (secs, want) in
        [(0, "0s"), (59, "59s"), (60, "1m00s"), (552, "9m12s"), (3_600, "1h00m00s"), (93_784, "26h03m04s")]
    {
        assert_eq!(format_duration(Duration::from_secs(secs)), want);
    }
    assert_eq!(format_duration(Duration::from_millis(1_999)), "1s");
    for (b, want) in [
        (0, "0B"),
        (1_023, "1023B"),
        (1_024, "1.0kB"),
        (1_536 << 10, "1.5MB"),
        (10 << 30, "10.0GB"),
        (u64::MAX, "16384.0PB"),
    ] {
        assert_eq!(human_bytes(b), want);
    }
    for (eta, want) in [(Eta::Unknown, "N/A"), (Eta::Due, "due"), (Eta::Remaining(Duration::from_secs(61)), "1m01s")] {
        assert_eq!(eta.to_string(), want);
    }
}

fn at(base: Instant, ms: u64) -> Instant {
    base + Duration::from_millis(ms)
}

#[test]
fn rate_needs_two_instants() {
    let t0 = Instant::now();
    let mut r = RateEstimator::new(Duration::from_secs(10));
    assert_eq!(r.rate(), None);
    r.record(t0, 100);
    assert_eq!(r.rate(), None);
    r.record(t0, 200);
    assert_eq!(r.rate(), None, "no time has passed");
    r.record(at(t0, 2_000), 300);
    assert_eq!(r.rate(), Some(100.0));
}

#[test]
fn rate_follows_the_window_not_the_whole_history() {
    let t0 = Instant::now();
    let mut r = RateEstimator::new(Duration::from_secs(10));
    // 1,000 rows/s for 20 s, then 100 rows/s for 20 s.
    let mut rows = 0;
    for s in 1..=20 {
        rows += 1_000;
        r.record(at(t0, s * 1_000), rows);
    }
    assert_eq!(r.rate(), Some(1_000.0));
    for s in 21..=40 {
        rows += 100;
        r.record(at(t0, s * 1_000), rows);
    }
    assert_eq!(r.rate(), Some(100.0));
    assert!(r.samples.len() <= 12, "old samples are dropped: {}", r.samples.len());
}

#[test]
fn a_pause_lowers_the_rate_to_zero() {
    let t0 = Instant::now();
    let mut r = RateEstimator::new(Duration::from_secs(10));
    r.record(t0, 0);
    r.record(at(t0, 1_000), 1_000);
    // Throttled: the count stands still while samples keep coming.
    r.record(at(t0, 6_000), 1_000);
    assert_eq!(r.rate(), Some(1_000.0 / 6.0));
    r.record(at(t0, 30_000), 1_000);
    assert_eq!(r.rate(), Some(0.0));
}

#[test]
fn sparse_samples_keep_one_before_the_window() {
    let t0 = Instant::now();
    let mut r = RateEstimator::new(Duration::from_secs(5));
    r.record(t0, 0);
    r.record(at(t0, 60_000), 6_000);
    // Both samples are older than the window's start, but the older one is all there is.
    assert_eq!(r.rate(), Some(100.0));
}

#[test]
fn restarts_and_stale_samples() {
    let t0 = Instant::now();
    let mut r = RateEstimator::new(Duration::from_secs(10));
    r.record(t0, 5_000);
    r.record(at(t0, 1_000), 6_000);
    // The counter restarted: history before it is dropped.
    r.record(at(t0, 2_000), 10);
    assert_eq!(r.rate(), None);
    r.record(at(t0, 3_000), 510);
    assert_eq!(r.rate(), Some(500.0));
    // An instant before the last one is ignored.
    r.record(at(t0, 2_500), 9_999_999);
    assert_eq!(r.rate(), Some(500.0));
}

#[test]
fn stream_lag_is_the_age_of_the_oldest_unacknowledged_wal() {
    let t0 = Instant::now();
    let at = |secs: u64| t0 + Duration::from_secs(secs);
    let mut clock = StreamLagClock::new();
    assert_eq!(clock.update(at(0), Lsn::ZERO, Lsn::ZERO), None, "no WAL end reported yet");
    assert_eq!(clock.update(at(1), Lsn(100), Lsn::ZERO), Some(Duration::ZERO), "just seen");
    assert_eq!(clock.update(at(2), Lsn(200), Lsn(50)), Some(Duration::from_secs(1)), "WAL up to 100 existed at 1 s");
    assert_eq!(clock.update(at(3), Lsn(200), Lsn(100)), Some(Duration::from_secs(1)), "past 100: the WAL end 200 was seen at 2 s");
    assert_eq!(clock.update(at(7), Lsn(300), Lsn(150)), Some(Duration::from_secs(5)));
    assert_eq!(clock.update(at(8), Lsn(300), Lsn(300)), Some(Duration::ZERO), "all acknowledged");
    assert_eq!(clock.update(at(9), Lsn(300), Lsn(300)), Some(Duration::ZERO), "no new WAL");
    assert_eq!(clock.update(at(12), Lsn(400), Lsn(300)), Some(Duration::ZERO));
    assert_eq!(clock.update(at(15), Lsn(400), Lsn(300)), Some(Duration::from_secs(3)), "stuck since 12 s");
}

#[test]
fn stream_lag_samples_are_bounded_and_stay_a_lower_bound() {
    let t0 = Instant::now();
    let mut clock = StreamLagClock::new();
    let n = StreamLagClock::MAX_SAMPLES as u64 + 10;
    for i in 1..=n {
        clock.update(t0 + Duration::from_secs(i), Lsn(i * 10), Lsn::ZERO);
    }
    assert_eq!(clock.samples.len(), StreamLagClock::MAX_SAMPLES);
    // The oldest sample is kept: the lag still counts from it.
    let now = t0 + Duration::from_secs(n + 1);
    assert_eq!(clock.update(now, Lsn(n * 10), Lsn::ZERO), Some(Duration::from_secs(n)));
    // Past every sample but the newest: the newest's age, never more than the truth.
    assert_eq!(clock.update(now, Lsn(n * 10), Lsn(n * 10 - 1)), Some(Duration::from_secs(1)));
}

#[test]
fn the_direct_way_shows_its_step_not_a_copy() {
    let p = Progress { direct_step: Some(StepOf { number: 2, of: 4 }), elapsed: Duration::from_secs(75), ..Progress::new(Phase::Direct) };
    assert_eq!(status_line(&p), "Direct: step 2/4; Elapsed: 1m15s; State: changing it directly");
    let throttled = Progress { throttle_reason: Some("flag file /tmp/t exists".into()), ..p };
    assert_eq!(status_line(&throttled), "Direct: step 2/4; Elapsed: 1m15s; State: throttled, flag file /tmp/t exists");
}
