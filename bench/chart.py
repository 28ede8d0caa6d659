#!/usr/bin/env python3
"""Chart and tables of bench/ results: Outpost against Postfix, by scenario.

Usage:
  bench/chart.py --compare results/DATE-compare.csv [--runs ID,ID...]
                 [--latency results/DATE-latency.csv] [--latency-runs ID,...]
                 --out results/DATE-throughput.png

Reads the CSV lines compare.sh and latency.sh append (every run kept), takes the
medians over the successful runs (bench_rc / rc = 0) of the selected run ids (all
ids in the file when none are given; a scenario measured in several selected runs
takes the last), draws accepted and delivered msgs/s per scenario for both relays
with the Outpost/Postfix ratio over each pair (and accept latency percentiles when a
latency CSV is given), and prints the same figures as Markdown tables for
bench/RESULTS.md. Needs matplotlib (pip install matplotlib).
"""

import argparse
import csv
import statistics
import sys
from collections import defaultdict

RELAYS = ("postfix", "outpost")
COLOURS = {"postfix": "#9e9e9e", "outpost": "#1565c0"}


def load(path, runs, ok_column):
    """{scenario: {relay: [row, ...]}} for the successful rows of the chosen runs,
    each scenario from the last run id (in file order) that measured it."""
    by_run = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    order = []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            if runs and row["run_id"] not in runs:
                continue
            if row[ok_column] != "0":
                continue
            if row["run_id"] not in order:
                order.append(row["run_id"])
            by_run[row["run_id"]][row["scenario"]][row["relay"]].append(row)
    chosen = {}
    for run in order:
        for scenario, relays in by_run[run].items():
            if all(relays.get(r) for r in RELAYS):
                chosen[scenario] = (run, relays)
    return chosen


def median(rows, column):
    values = [float(r[column]) for r in rows if r.get(column)]
    return statistics.median(values) if values else None


def scenario_key(name):
    """Plain scenarios before DKIM ones; within each, 1 KB, 10 KB, 100 KB, 20 then
    100 sessions, connection-per-message last."""
    size = 2 if "100k" in name else 0 if "_1k" in name else 1
    sessions = 1 if name.startswith("s100") else 0
    return ("dkim" in name, "conn1" in name, size, sessions, name)


def ratio(a, b):
    return f"{a / b:.2f}×" if a and b else "-"


def throughput(compare, out_rows):
    names = sorted(compare, key=scenario_key)
    out_rows.append(
        "| scenario | Postfix accepted / delivered msgs/s | Outpost accepted / delivered msgs/s "
        "| ratio accepted / delivered | CPU s per 1000 msgs (Postfix / Outpost) | Outpost peak RSS | runs |"
    )
    out_rows.append("|---|---|---|---|---|---|---|")
    figures = {}
    for name in names:
        run, relays = compare[name]
        m = {
            (relay, col): median(relays[relay], col)
            for relay in RELAYS
            for col in ("accepted_per_s", "delivered_per_s", "cpu_s_per_1k_msgs", "peak_rss_kb")
        }
        figures[name] = m
        rss = m[("outpost", "peak_rss_kb")]
        out_rows.append(
            f"| {name} | {m[('postfix', 'accepted_per_s')]:.0f} / {m[('postfix', 'delivered_per_s')]:.0f} "
            f"| {m[('outpost', 'accepted_per_s')]:.0f} / {m[('outpost', 'delivered_per_s')]:.0f} "
            f"| **{ratio(m[('outpost', 'accepted_per_s')], m[('postfix', 'accepted_per_s')])} / "
            f"{ratio(m[('outpost', 'delivered_per_s')], m[('postfix', 'delivered_per_s')])}** "
            f"| {m[('postfix', 'cpu_s_per_1k_msgs')]:.2f} / {m[('outpost', 'cpu_s_per_1k_msgs')]:.2f} "
            f"| {rss / 1024:.0f} MB | {len(relays['outpost'])}+{len(relays['postfix'])} ({run}) |"
        )
    return names, figures


def latency_table(latency, out_rows):
    names = sorted(latency, key=scenario_key)
    out_rows.append(
        "| scenario | relay | msgs/s | accept p50 | accept p90 | accept p99 | accept p99.9 "
        "| transaction p99 | runs |"
    )
    out_rows.append("|---|---|---|---|---|---|---|---|---|")
    figures = {}
    for name in names:
        run, relays = latency[name]
        for relay in RELAYS:
            rows = relays[relay]
            m = {
                col: median(rows, col)
                for col in (
                    "accepted_per_s",
                    "accept_p50_ms",
                    "accept_p90_ms",
                    "accept_p99_ms",
                    "accept_p999_ms",
                    "transaction_p99_ms",
                )
            }
            figures[(name, relay)] = m
            out_rows.append(
                f"| {name} | {relay} | {m['accepted_per_s']:.0f} | {m['accept_p50_ms']:.1f} ms "
                f"| {m['accept_p90_ms']:.1f} ms | {m['accept_p99_ms']:.1f} ms "
                f"| {m['accept_p999_ms']:.1f} ms | {m['transaction_p99_ms']:.1f} ms | {len(rows)} ({run}) |"
            )
    return names, figures


def bars(ax, names, values, title, ylabel, annotate_ratio):
    width = 0.38
    xs = range(len(names))
    for i, relay in enumerate(RELAYS):
        heights = [values[(name, relay)] or 0 for name in names]
        ax.bar(
            [x + (i - 0.5) * width for x in xs],
            heights,
            width,
            label="Postfix 3.7" if relay == "postfix" else "Outpost",
            color=COLOURS[relay],
        )
    if annotate_ratio:
        for x, name in zip(xs, names):
            o, p = values[(name, "outpost")], values[(name, "postfix")]
            if o and p:
                ax.annotate(
                    ratio(o, p),
                    (x + 0.5 * width, o),
                    ha="center",
                    va="bottom",
                    fontsize=8,
                    fontweight="bold",
                )
    ax.set_title(title, fontsize=11)
    ax.set_ylabel(ylabel)
    ax.set_xticks(list(xs))
    ax.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compare", required=True)
    parser.add_argument("--runs", default="")
    parser.add_argument("--latency")
    parser.add_argument("--latency-runs", default="")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = {r for r in args.runs.split(",") if r}
    compare = load(args.compare, runs, "bench_rc")
    if not compare:
        sys.exit(f"{args.compare}: no scenario with successful runs of both relays")
    tables = []
    names, figures = throughput(compare, tables)
    latency_names = []
    if args.latency:
        tables.append("")
        latency = load(args.latency, {r for r in args.latency_runs.split(",") if r}, "rc")
        latency_names, latency_figures = latency_table(latency, tables)

    panels = 3 if latency_names else 2
    fig, axes = plt.subplots(
        panels, 1, figsize=(max(8, 0.9 * len(names) + 3), 4.2 * panels), constrained_layout=True
    )
    for ax, column, title in (
        (axes[0], "accepted_per_s", "Accepted (SMTP 250 after fsync), msgs/s"),
        (axes[1], "delivered_per_s", "Delivered end to end (relay → sink), msgs/s"),
    ):
        values = {(n, r): figures[n][(r, column)] for n in names for r in RELAYS}
        bars(ax, names, values, title, "msgs/s", annotate_ratio=True)
    axes[0].legend(loc="upper right")
    if latency_names:
        labels, values = [], {}
        for name in latency_names:
            for p in ("p50", "p99"):
                label = f"{name} {p}"
                labels.append(label)
                for relay in RELAYS:
                    values[(label, relay)] = latency_figures[(name, relay)][f"accept_{p}_ms"]
        bars(axes[2], labels, values, "Accept latency under load (lower is better)", "ms", False)
        axes[2].set_yscale("log")
    fig.suptitle(
        "Outpost vs Postfix on one 2-vCPU VM, loopback, fsync on; ratio = Outpost / Postfix, same run",
        fontsize=12,
    )
    fig.savefig(args.out, dpi=110)
    print("\n".join(tables))


if __name__ == "__main__":
    main()
