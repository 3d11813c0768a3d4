#!/usr/bin/env python3
"""Where a pg-ghost run spent its time: seconds per phase, from the `phase phase="..."`
lines of its text log (their timestamps), plus the copy and index-build figures it logs.

  phases.py LOG...      -> one line per log: phase=secs ...
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


if __name__ == "__main__":
    for path in sys.argv[1:]:
        print(f"{path}: {phases(path)}")
