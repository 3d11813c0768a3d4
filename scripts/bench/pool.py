#!/usr/bin/env python3
"""Pools the raw runs of several sessions of one driver into its table (median, min, max
over all runs), as RESULTS.md does with two sessions each of copy, apply and impact.

  pool.py copy   OUT_DIR...   (copy.tsv and the pg-ghost logs of each copy.sh --runs session)
  pool.py apply  OUT_DIR...   (apply.tsv; 200,000 changes)
  pool.py impact OUT_DIR...   (impact.tsv)
  pool.py partitioned OUT_DIR...   (partitioned.tsv; 1,000,000 rows, the default)

Sizes are those of the defaults (2,000,000 rows, 179 MB of heap and TOAST, 200,000 changes).
"""
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROWS, HEAP_MB, CHANGES = 2000000, 179.0, 200000


def phases(*args):
    return subprocess.check_output([sys.executable, os.path.join(HERE, "phases.py"), *args]).decode()


def m(xs, fmt="{:.1f}"):
    return f"{fmt.format(statistics.median(xs))} ({fmt.format(min(xs))}–{fmt.format(max(xs))})"


def copy(dirs):
    data = {}
    for sess in dirs:
        for line in open(f"{sess}/copy.tsv"):
            f = line.rstrip("\n").split("\t")
            c, run, secs, wal = f[0], f[1], float(f[2]), int(f[3])
            d = data.setdefault(c, {"secs": [], "wal": [], "copy": [], "idx": [], "held": [], "ideal": [], "att": []})
            d["secs"].append(secs)
            d["wal"].append(wal / 1048576)
            if c.startswith("ghost"):
                log = f"{sess}/copy-{c}-{run}.log"
                kv = dict(x.split("=") for x in phases(log).split()[1:])
                co = phases("--cut-over", log).split()
                to = float(phases("--to-cut-over", log))
                d["copy"].append(float(kv["copy"]))
                d["idx"].append(float(kv["build-indexes"]))
                d["held"].append(float(co[2]))
                d["att"].append(int(co[0]))
                d["ideal"].append(to + float(co[3]) / 1000)
    labels = {"limit": "physical limit (CREATE TABLE LIKE + INSERT ... SELECT + 3 index builds)",
              "alter": "plain ALTER TABLE (blocking)", "repack": "pg_repack --table (rebuild, no type change)"}
    print("| contender | wall time s | rows/s | MB/s | WAL written MB |")
    print("| --- | --- | --- | --- | --- |")
    for c in [k for k in ["limit", "alter", "repack"] if k in data] + sorted(k for k in data if k.startswith("ghost")):
        d = data[c]
        med = statistics.median(d["secs"])
        print(f"| {labels.get(c, 'pg-ghost run --execute, --copy-workers ' + c[6:])} | {m(d['secs'])} | {ROWS / med:,.0f} | {HEAP_MB / med:.1f} | {m(d['wal'], '{:.0f}')} |")
    print()
    print("| pg-ghost | row copy s | index builds s | runs with failed cut-over attempts | cut-over lock held, all attempts, ms | time had the first cut-over attempt succeeded s |")
    print("| --- | --- | --- | --- | --- | --- |")
    for c in sorted(k for k in data if k.startswith("ghost")):
        d = data[c]
        print(f"| --copy-workers {c[6:]} | {m(d['copy'])} | {m(d['idx'])} | {sum(1 for a in d['att'] if a > 1)} of {len(d['att'])} | {m(d['held'], '{:.0f}')} | {m(d['ideal'])} |")


def apply(dirs):
    # apply.tsv: contender, rows per transaction, run, seconds, and (newer drivers) walsender,
    # apply and pg-ghost CPU seconds, load, walsender CPU seconds while the burst was written.
    d = {}
    for sess in dirs:
        for line in open(f"{sess}/apply.tsv"):
            f = line.rstrip("\n").split("\t")
            d.setdefault((f[0], f[1]), []).append(f)
    extra = any(len(r) > 4 for rows in d.values() for r in rows)
    head = "| consumer | rows per transaction | time s | changes/s |"
    if extra:
        head += " walsender CPU s | of which while the burst was written | apply backend CPU s | pg-ghost CPU s | load |"
    print(head)
    print("|" + " --- |" * (head.count("|") - 1))
    labels = {
        "ghost": "pg-ghost (copy done, cut-over postponed)",
        "before": "pg-ghost, earlier build (copy done, cut-over postponed)",
        "native": "native logical replication (subscriber, second cluster)",
    }
    for p in sorted({p for _, p in d}, key=int):
        for c in [c for c in ["before", "ghost", "native"] if (c, p) in d]:
            rows = d[(c, p)]
            x = [float(r[3]) for r in rows]
            r = [CHANGES / v for v in x]
            line = f"| {labels[c]} | {p} | {m(x, '{:.2f}')} | {m(r, '{:,.0f}')} |"
            if extra:
                for i in (4, 8, 5, 6, 7):
                    vals = [float(r[i]) for r in rows if len(r) > i and r[i] != ""]
                    line += f" {m(vals, '{:.2f}') if vals else ''} |"
            print(line)


def impact(dirs):
    d = {}
    for sess in dirs:
        for line in open(f"{sess}/impact.tsv"):
            f = line.rstrip("\n").split("\t")
            d.setdefault(f[0], []).append(f)
    lab = {"alone": "nothing (workload alone)", "ghost": "pg-ghost run --execute", "alter": "plain ALTER TABLE", "repack": "pg_repack --table"}
    print("| during | operation s | p50 ms | p99 ms | max ms | longest stall ms | pgbench errors |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for c in [k for k in ["alone", "ghost", "alter", "repack"] if k in d]:
        r = d[c]
        col = lambda k: [float(x[k]) for x in r]
        print(f"| {lab[c]} | {m(col(2))} | {m(col(4), '{:,.2f}')} | {m(col(5), '{:,.1f}')} | {m(col(6), '{:,.0f}')} | {m(col(7), '{:,.0f}')} | {sum(int(x[8]) for x in r)} |")
    for x in d.get("ghost", []):
        print(f"pg-ghost cut-over (attempts, wait ms, held ms all attempts, held ms last): {x[9]}; workload max latency {x[6]} ms")


def partitioned(dirs, rows=1000000):
    d = {}
    for sess in dirs:
        for line in open(f"{sess}/partitioned.tsv"):
            f = line.rstrip("\n").split("\t")
            d.setdefault((f[0], f[1]), []).append(f)
    print("| table | contender | runs | wall time s | row copy s | rows/s copied | checksum s | cut-over lock held ms |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for (shape, c), r in d.items():
        fig = lambda i: [float(x[4].split(" ")[i]) for x in r if x[4].split(" ")[i] not in ("-", "?")]
        wall = m([float(x[3]) for x in r])
        if c == "alter":
            print(f"| {shape} | {c} | {len(r)} | {wall} | | | | |")
            continue
        copy_s = fig(0)
        rate = f"{rows / statistics.median(copy_s):,.0f}"
        print(f"| {shape} | {c} | {len(r)} | {wall} | {m(copy_s, '{:.2f}')} | {rate} | {m(fig(3), '{:.2f}')} | {m(fig(1), '{:.0f}')} |")


if __name__ == "__main__":
    drivers = {"copy": copy, "apply": apply, "impact": impact, "partitioned": partitioned}
    if len(sys.argv) < 3 or sys.argv[1] not in drivers:
        print(__doc__)
        sys.exit(2)
    drivers[sys.argv[1]](sys.argv[2:])
