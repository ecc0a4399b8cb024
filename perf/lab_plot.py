"""Plots of a perf/lab.sh run: req/s and server CPU per request, grouped bars.

Usage: python lab_plot.py lab.csv OUT_DIR   (writes OUT_DIR/lab-rps.png, lab-cpu.png)

One group per scenario (four per row of panels), one bar per server, in the
order of the CSV. The value axes are logarithmic: the servers span two orders of magnitude. Each bar
carries its value; a server that could not run a scenario gets "n/a" at the
foot of its slot, one that failed gets "failed". Hatched bars: the run had errors or left
connections unserved (see lab.md), so the figure is not comparable.
"""

import csv
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402

COLORS = {
    "spindle-uring": "#c0392b",
    "spindle-inline": "#78281f",
    "spindle-epoll": "#f1948a",
    "gunicorn-sync": "#7fb3d5",
    "gunicorn-gthread": "#2471a3",
    "uwsgi": "#76d7c4",
    "granian": "#27ae60",
    "bjoern": "#f5b041",
    "waitress": "#a569bd",
    "nginx": "#424949",
}


def si(v, _pos=None):
    if v >= 1e6:
        return "%gM" % (v / 1e6)
    if v >= 1e3:
        return "%gk" % (v / 1e3)
    return "%g" % v


def short(v):
    if v >= 1e5:
        return "%.0fk" % (v / 1e3)
    if v >= 1e3:
        return "%.1fk" % (v / 1e3)
    if v >= 100:
        return "%.0f" % v
    if v >= 10:
        return "%.1f" % v
    return "%.2f" % v


def load(path):
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    servers, scenarios, by = [], [], {}
    for r in rows:
        if r["server"] not in servers:
            servers.append(r["server"])
        if r["scenario"] not in scenarios:
            scenarios.append(r["scenario"])
        by[(r["scenario"], r["server"])] = r
    return servers, scenarios, by


PER_ROW = 4  # scenarios per row of panels


def plot(servers, scenarios, by, key, title, ylabel, out, lower_better):
    values = [float(r[key]) for r in by.values() if r["status"] == "ok" and r[key]]
    if not values:
        return
    n = len(servers)
    width = 0.8 / n
    rows = [scenarios[i : i + PER_ROW] for i in range(0, len(scenarios), PER_ROW)]
    cols = max(len(r) for r in rows)
    fig_w = max(7.0, 1.2 + cols * (0.9 + 0.32 * n))
    fig, axes = plt.subplots(len(rows), 1, figsize=(fig_w, 0.9 + 4.6 * len(rows)), dpi=110, squeeze=False)
    floor, top = min(values) / 3, max(values) * 4
    for ax, row in zip(axes[:, 0], rows):
        for i, server in enumerate(servers):
            xs, ys, flagged = [], [], []
            for j, scenario in enumerate(row):
                x = j + (i - (n - 1) / 2) * width
                r = by.get((scenario, server))
                if r is None:
                    continue
                if r["status"] == "ok" and r[key]:
                    v = float(r[key])
                    xs.append(x)
                    ys.append(v)
                    flagged.append(r.get("served_all") == "no" or float(r.get("errors") or 0) > 0)
                    ax.text(x, v * 1.06, short(v), ha="center", va="bottom", rotation=90, fontsize=7)
                else:
                    label = "n/a" if r["status"] == "n/a" else r["status"]
                    ax.text(x, floor * 1.15, label, ha="center", va="bottom", rotation=90, fontsize=7,
                            color="#777777")
            bars = ax.bar(xs, ys, width=width * 0.92, color=COLORS.get(server, "#999999"),
                          edgecolor="white", linewidth=0.3)
            for bar, flag in zip(bars, flagged):
                if flag:
                    bar.set_hatch("///")
        ax.set_yscale("log")
        ax.set_ylim(bottom=floor, top=top)
        ax.yaxis.set_major_formatter(FuncFormatter(si))
        ax.set_xticks(range(len(row)))
        ax.set_xticklabels(row, fontsize=10)
        ax.set_xlim(-0.55, cols - 0.45)
        ax.set_ylabel(ylabel, fontsize=9)
        ax.grid(axis="y", which="major", alpha=0.35)
        ax.grid(axis="y", which="minor", alpha=0.12)
        ax.set_axisbelow(True)
    fig.suptitle(title + (" (lower is better)" if lower_better else " (higher is better)")
                 + "\nhatched: errors, or connections left unserved, in that run", fontsize=11)
    handles = [Patch(facecolor=COLORS.get(s, "#999999"), label=s) for s in servers]
    fig.legend(handles=handles, ncol=min(n, 5), fontsize=9, loc="lower center", frameon=False)
    fig.tight_layout(rect=(0, 0.06 if n > 5 else 0.04, 1, 1))
    fig.savefig(out)
    plt.close(fig)


def main():
    path, out_dir = sys.argv[1], sys.argv[2]
    servers, scenarios, by = load(path)
    run = os.path.basename(os.path.abspath(out_dir))
    plot(servers, scenarios, by, "rps", "req/s per scenario, server on one core, wrk on another — %s" % run,
         "requests per second (log)", os.path.join(out_dir, "lab-rps.png"), False)
    plot(servers, scenarios, by, "cpu_us_per_req", "server CPU time per request — %s" % run,
         "server CPU µs (user + sys) per request (log)", os.path.join(out_dir, "lab-cpu.png"), True)


if __name__ == "__main__":
    main()
