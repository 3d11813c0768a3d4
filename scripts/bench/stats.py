#!/usr/bin/env python3
"""Small statistics for the benchmark drivers.

  stats.py mmm                          numbers on stdin -> "median min max"
  stats.py latency FROM TO LOG...       pgbench per-transaction logs (--log, with --rate)
                                        -> "count p50_ms p99_ms max_ms stall_ms"

Latency: pgbench measures it from each transaction's *scheduled* start when --rate is on,
so time spent queued behind a lock counts. Transactions scheduled in [FROM, TO] (Unix
seconds) are counted. The longest stall is the longest interval inside [FROM, TO] in
which no transaction completed (the application saw no write succeed).
"""
import statistics
import sys


def mmm():
    xs = [float(x) for x in sys.stdin.read().split()]
    if not xs:
        print("nan nan nan")
        return
    print(f"{statistics.median(xs):.6g} {min(xs):.6g} {max(xs):.6g}")


def percentile(sorted_xs, p):
    if not sorted_xs:
        return float("nan")
    k = max(0, min(len(sorted_xs) - 1, int(round(p / 100.0 * len(sorted_xs) + 0.5)) - 1))
    return sorted_xs[k]


def latency(t_from, t_to, logs):
    lat = []
    done = []
    for path in logs:
        with open(path) as f:
            for line in f:
                parts = line.split()
                if len(parts) < 6:
                    continue
                if parts[2] in ("skipped", "failed"):
                    continue
                us = int(parts[2])
                end = int(parts[4]) + int(parts[5]) / 1e6
                scheduled = end - us / 1e6
                if t_from <= scheduled <= t_to:
                    lat.append(us / 1000.0)
                if t_from <= end <= t_to:
                    done.append(end)
    lat.sort()
    done.sort()
    points = [t_from] + done + [t_to]
    stall = max(b - a for a, b in zip(points, points[1:])) * 1000.0
    print(f"{len(lat)} {percentile(lat, 50):.2f} {percentile(lat, 99):.2f} {(lat[-1] if lat else float('nan')):.1f} {stall:.1f}")


if __name__ == "__main__":
    cmd = sys.argv[1] if len(sys.argv) > 1 else ""
    if cmd == "mmm":
        mmm()
    elif cmd == "latency":
        latency(float(sys.argv[2]), float(sys.argv[3]), sys.argv[4:])
    else:
        print(__doc__)
        sys.exit(2)
