//! The fleet's metrics (`--metrics-listen`), in the Prometheus text format on the same
//! endpoint a run serves (`crate::metrics`): the targets by status, and whether the fleet is
//! paused, waiting for its window or stopped. Rendered from the progress snapshot behind the
//! status line, so a scrape and `status` on the socket say the same. Pure.

use super::progress::FleetProgress;
use std::fmt::Write as _;

pub fn render(p: &FleetProgress) -> String {
    let mut out = String::new();
    let gauge = |out: &mut String, name: &str, help: &str| {
        let _ = writeln!(out, "# HELP pg_ghost_fleet_{name} {help}\n# TYPE pg_ghost_fleet_{name} gauge");
    };
    gauge(&mut out, "info", "The fleet run, by id (always 1).");
    let _ = writeln!(out, "pg_ghost_fleet_info{{fleet_id=\"{}\"}} 1", escape(&p.fleet_id));
    gauge(&mut out, "targets", "Targets of this run of the fleet, by status.");
    for (status, n) in [("pending", p.pending()), ("running", p.running.len()), ("succeeded", p.succeeded), ("failed", p.failed), ("skipped", p.skipped)] {
        let _ = writeln!(out, "pg_ghost_fleet_targets{{status=\"{status}\"}} {n}");
    }
    for (name, help, on) in [
        ("paused", "1 while paused from the control socket (no target starts).", p.paused),
        ("waiting_for_window", "1 while outside the maintenance window (no target starts).", p.waiting.is_some()),
        ("stopped", "1 once no target starts any more (canary, --max-failures, signal, panic).", p.stopped.is_some()),
    ] {
        gauge(&mut out, name, help);
        let _ = writeln!(out, "pg_ghost_fleet_{name} {}", u8::from(on));
    }
    out
}

/// A label value as the text format wants it.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_by_status_and_the_fleet_s_state() {
        let p = FleetProgress { fleet_id: "f1".into(), total: 5, succeeded: 1, failed: 1, running: vec!["a".into()], paused: true, ..Default::default() };
        let text = render(&p);
        for line in [
            "pg_ghost_fleet_info{fleet_id=\"f1\"} 1",
            "pg_ghost_fleet_targets{status=\"pending\"} 2",
            "pg_ghost_fleet_targets{status=\"running\"} 1",
            "pg_ghost_fleet_targets{status=\"failed\"} 1",
            "pg_ghost_fleet_paused 1",
            "pg_ghost_fleet_waiting_for_window 0",
            "# TYPE pg_ghost_fleet_stopped gauge",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
        }
    }
}
