#!/usr/bin/env python3
"""Where a pg-ghost run spent its time: seconds per phase, from the `phase phase="..."`
lines of its text log (their timestamps), plus the copy and index-build figures it logs.

  phases.py LOG...            -> one line per log: phase=secs ...
  phases.py --to-cut-over LOG -> seconds from the first phase to the cut-over phase
  phases.py --cut-over LOG    -> "attempts wait_ms held_ms last_held_ms": every cut-over
                                 attempt counted, the failed ones too (pg-ghost's own
                                 `lock_held_ms` is the successful attempt's only); held is
                                 from `cut-over lock acquired` to the attempt's end
"""
import re
import sys
from datetime import datetime

TS = re.compile(r'^(\S+Z)\s+\w+\s+(.*)$')


def ts(s):
    return datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()


def phases(path):
    marks = []
    last = None
    with open(path) as f:
        for line in f:
            m = TS.match(line.strip())
            if not m:
                continue
            t, rest = ts(m.group(1)), m.group(2)
            last = t
            p = re.search(r'phase phase="([^"]+)"', rest)
            if p and "rows_copied" not in rest:
                marks.append((p.group(1), t))
    out = []
    for (name, t), nxt in zip(marks, marks[1:] + [("end", last)]):
        out.append(f"{name}={nxt[1] - t:.2f}")
    if marks:
        out.append(f"total={last - marks[0][1]:.2f}")
    return " ".join(out)


def to_cut_over(path):
    first = None
    with open(path) as f:
        for line in f:
            m = TS.match(line.strip())
            if not m:
                continue
            p = re.search(r'phase phase="([^"]+)"', m.group(2))
            if p and "rows_copied" not in m.group(2):
                t = ts(m.group(1))
                first = t if first is None else first
                if p.group(1) == "cut-over":
                    return f"{t - first:.3f}"
    return "nan"


def cut_over(path):
    attempts, wait_ms, held, last, since = 0, 0, 0.0, 0.0, None
    with open(path) as f:
        for line in f:
            m = TS.match(line.strip())
            if not m:
                continue
            t, rest = ts(m.group(1)), m.group(2)
            if "cut-over lock acquired" in rest:
                attempts += 1
                w = re.search(r"wait_ms=(\d+)", rest)
                wait_ms += int(w.group(1)) if w else 0
                since = t
            elif since is not None and ("cut-over attempt failed" in rest or "cut-over committed" in rest):
                last = (t - since) * 1000.0
                held += last
                since = None
    return f"{attempts} {wait_ms} {held:.0f} {last:.0f}"


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--to-cut-over":
        print(to_cut_over(sys.argv[2]))
        sys.exit(0)
    if len(sys.argv) > 2 and sys.argv[1] == "--cut-over":
        print(cut_over(sys.argv[2]))
        sys.exit(0)
    for path in sys.argv[1:]:
        print(f"{path}: {phases(path)}")
