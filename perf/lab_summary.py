"""Markdown summary of a perf/lab.sh run, from its lab.csv (standard library only).

Usage: python lab_summary.py [--brief] [--scenarios FILE] lab.csv

Prints, in markdown: an overview (req/s and x nginx for every server and
scenario, then CPU us per request), Spindle against the project's targets, one
table per scenario, and notes (errors, a client-bound wrk, a machine that was
not quiet). --brief prints only the overview and the targets (for the
terminal). --scenarios names a file of "name<TAB>description" lines.
"""

import csv
import sys

NGINX = "nginx"
SPINDLES = ("spindle-uring", "spindle-inline", "spindle-epoll")
PEERS = ("gunicorn-sync", "gunicorn-gthread", "uwsgi", "granian", "bjoern", "waitress")
WRK_BUSY_LIMIT = 90  # % of wrk's core: above it the client, not the server, sets req/s
OTHER_LOAD_LIMIT = 10  # % of a core used by something else: the machine was not quiet


def num(row, key):
    value = row.get(key, "")
    try:
        return float(value)
    except ValueError:
        return None


def ok(row):
    return row is not None and row["status"] == "ok"


def clean(row):
    """Measured, and without errors: fit to be a reference."""
    return ok(row) and num(row, "errors") == 0


def fmt_rps(v):
    return "—" if v is None else "%.0f" % v


def fmt_ms(v):
    if v is None:
        return "—"
    if v < 10:
        return "%.2f" % v
    if v < 100:
        return "%.1f" % v
    return "%.0f" % v


def fmt_us(v):
    return "—" if v is None else ("%.2f" % v if v < 10 else "%.1f" % v)


def fmt_ratio(v):
    return "—" if v is None else "%.2f" % v


def ratio(a, b):
    if a is None or b is None or b == 0:
        return None
    return a / b


class Run:
    def __init__(self, path):
        with open(path, newline="") as f:
            self.rows = list(csv.DictReader(f))
        self.servers = []
        self.scenarios = []
        self.by = {}
        for row in self.rows:
            if row["server"] not in self.servers:
                self.servers.append(row["server"])
            if row["scenario"] not in self.scenarios:
                self.scenarios.append(row["scenario"])
            self.by[(row["scenario"], row["server"])] = row

    def get(self, scenario, server):
        return self.by.get((scenario, server))

    def value(self, scenario, server, key):
        row = self.get(scenario, server)
        return num(row, key) if ok(row) else None

    def vs_nginx(self, scenario, server):
        nginx = self.get(scenario, NGINX)
        if not clean(nginx):
            return None
        return ratio(self.value(scenario, server, "rps"), num(nginx, "rps"))

    def best_peer(self, scenario, key="rps", lowest=False, need=clean):
        """The peer with the best KEY among rows passing NEED: (name, value)."""
        best = None
        for server in PEERS:
            row = self.get(scenario, server)
            if not need(row):
                continue
            v = num(row, key)
            if v is None:
                continue
            if best is None or (v < best[1] if lowest else v > best[1]):
                best = (server, v)
        return best


def overview(run):
    out = ["## Overview", "", "req/s (× nginx in the same scenario):", ""]
    out.append("| server | " + " | ".join(run.scenarios) + " |")
    out.append("|---|" + "---:|" * len(run.scenarios))
    for server in run.servers:
        cells = []
        for scenario in run.scenarios:
            row = run.get(scenario, server)
            if row is None:
                cells.append("")
            elif not ok(row):
                cells.append(row["status"])
            else:
                r = run.vs_nginx(scenario, server)
                cell = fmt_rps(num(row, "rps"))
                if r is not None and server != NGINX:
                    cell += " (%s)" % fmt_ratio(r)
                if num(row, "errors") or row["served_all"] == "no":
                    cell += " ⚠"
                cells.append(cell)
        out.append("| %s | %s |" % (server, " | ".join(cells)))
    out += ["", "⚠: errors, or connections left unserved, in that run (see its table). Server CPU µs per request:", ""]
    out.append("| server | " + " | ".join(run.scenarios) + " |")
    out.append("|---|" + "---:|" * len(run.scenarios))
    for server in run.servers:
        cells = []
        for scenario in run.scenarios:
            row = run.get(scenario, server)
            cells.append("" if row is None else (fmt_us(num(row, "cpu_us_per_req")) if ok(row) else row["status"]))
        out.append("| %s | %s |" % (server, " | ".join(cells)))
    return out


def targets(run):
    """Each Spindle build against the bars the project set itself."""
    spindles = [s for s in SPINDLES if s in run.servers]
    if not spindles:
        return []
    checks = []

    def rps_vs(scenario, other, bar):
        def f(s):
            r = ratio(run.value(scenario, s, "rps"), run.value(scenario, other, "rps"))
            if r is None or not clean(run.get(scenario, other)):
                return None
            return "%.2f×" % r, r >= bar

        checks.append(("%s req/s ≥ %g× %s" % (scenario, bar, other), f))

    def rps_vs_best(scenario):
        best = run.best_peer(scenario)

        def f(s):
            if best is None:
                return None
            r = ratio(run.value(scenario, s, "rps"), best[1])
            return None if r is None else ("%.2f× (%s)" % (r, best[0]), r >= 1.0)

        checks.append(("%s req/s ≥ 1.0× best peer" % scenario, f))

    def cpu_vs(scenario, other, bar, fallback=None):
        """CPU per request against OTHER's in SCENARIO, or in FALLBACK when
        OTHER could not run SCENARIO (bjoern cannot pipeline)."""

        def f(s):
            mine = run.value(scenario, s, "cpu_us_per_req")
            theirs = run.value(scenario, other, "cpu_us_per_req")
            where = ""
            if theirs is None and fallback:
                theirs = run.value(fallback, other, "cpu_us_per_req")
                where = " (vs its %s: it cannot run %s)" % (fallback, scenario)
            r = ratio(mine, theirs)
            return None if r is None else ("%.2f×%s" % (r, where), r <= bar)

        checks.append(("%s CPU µs/req ≤ %g× %s" % (scenario, bar, other), f))

    for scenario in ("hello-c64", "hello-c256"):
        rps_vs(scenario, "bjoern", 1.2)
        rps_vs(scenario, NGINX, 0.95)
    # Issue 13: one connection at bjoern's CPU per request or less, its p99 no worse.
    cpu_vs("hello-c1", "bjoern", 1.0)

    def p99_c1(s):
        mine = run.value("hello-c1", s, "p99_ms")
        theirs = run.value("hello-c1", "bjoern", "p99_ms")
        if mine is None or theirs is None:
            return None
        return "%s vs %s ms" % (fmt_ms(mine), fmt_ms(theirs)), mine <= theirs

    checks.append(("hello-c1 p99 ≤ bjoern's", p99_c1))
    cpu_vs("pipeline16-c64", NGINX, 1.25)
    cpu_vs("pipeline16-c64", "bjoern", 0.7, fallback="hello-c64")
    rps_vs_best("64k-c64")
    rps_vs_best("post4k-c64")
    rps_vs("close-c64", NGINX, 0.95)

    def p99(s):
        best = run.best_peer("hello-c256", "p99_ms", lowest=True,
                             need=lambda row: ok(row) and row["served_all"] == "yes")
        mine = run.value("hello-c256", s, "p99_ms")
        if best is None or mine is None:
            return None
        served = run.get("hello-c256", s)["served_all"] == "yes"
        return "%s vs %s ms (%s)" % (fmt_ms(mine), fmt_ms(best[1]), best[0]), served and mine <= best[1]

    checks.append(("hello-c256 p99 ≤ best peer's (peers that served every connection)", p99))

    def rss(s):
        mine = run.value("hello-c256", s, "peak_rss_mib")
        theirs = run.value("hello-c256", "granian", "peak_rss_mib")
        if mine is None or theirs is None:
            return None
        return "%.1f vs %.1f MiB" % (mine, theirs), mine <= theirs

    checks.append(("hello-c256 peak RSS ≤ Granian's", rss))

    out = ["## Spindle against the targets", ""]
    out.append("| target | " + " | ".join(spindles) + " |")
    out.append("|---|" + "---|" * len(spindles))
    met = {s: [0, 0] for s in spindles}
    for label, f in checks:
        cells = []
        for s in spindles:
            got = f(s)
            if got is None:
                cells.append("— (not measured)")
                continue
            text, passed = got
            met[s][1] += 1
            met[s][0] += passed
            cells.append("%s %s" % (text, "met" if passed else "**missed**"))
        out.append("| %s | %s |" % (label, " | ".join(cells)))
    out.append("")
    out.append("Met: " + ", ".join("%s %d of %d" % (s, m[0], m[1]) for s, m in met.items()) + ".")
    out.append("Peers: %s; \"best peer\" is the fastest of them without errors in that scenario." % ", ".join(PEERS))
    return out


def served(row):
    """Every connection served: yes, or why not."""
    if row["served_all"] == "yes":
        return "yes"
    if row["served_all"] != "no":
        return "—"
    starved, open_ = int(num(row, "conns_starved") or 0), int(num(row, "conns_open") or 0)
    if starved:
        return "**no**: %d of %d starved" % (starved, open_)
    if num(row, "errors"):
        return "**no**: errors"
    return "**no**: max latency"


def scenario_tables(run, descriptions):
    out = ["## Per scenario", "",
           "**all served**: no connection starved (received nothing) between two `ss` snapshots 1 s in and",
           "1 s before the end, no socket error or 4xx/5xx, and the slowest response within wrk's timeout."]
    for scenario in run.scenarios:
        out += ["", "### %s" % scenario, ""]
        if scenario in descriptions:
            out += [descriptions[scenario], ""]
        out += ["| server | req/s | × nginx | p50 ms | p99 ms | max ms | errors | all served | CPU µs/req "
                "| peak RSS MiB | wrk core | note |",
                "|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---|"]
        for server in run.servers:
            row = run.get(scenario, server)
            if row is None:
                continue
            if not ok(row):
                cells = [row["status"]] + [""] * 10 + [row["reason"]]
                out.append("| %s | %s |" % (server, " | ".join(cells)))
                continue
            errors = int(num(row, "errors") or 0)
            err = str(errors)
            if errors:
                parts = []
                if num(row, "timeouts"):
                    parts.append("%d timeouts" % num(row, "timeouts"))
                other = int(num(row, "socket_errors") - (num(row, "timeouts") or 0))
                if other:
                    parts.append("%d socket" % other)
                if num(row, "non2xx"):
                    parts.append("%d 4xx/5xx" % num(row, "non2xx"))
                err = "**%d** (%s)" % (errors, ", ".join(parts))
            notes = []
            wrk = num(row, "wrk_busy_pct") or 0
            if wrk >= WRK_BUSY_LIMIT:
                notes.append("client-bound: req/s is a floor")
            if scenario.startswith("pipeline"):
                notes.append("wrk has no percentiles for pipelined runs")
            r = run.vs_nginx(scenario, server)
            cells = [
                fmt_rps(num(row, "rps")),
                "" if server == NGINX else fmt_ratio(r),
                fmt_ms(num(row, "p50_ms")),
                fmt_ms(num(row, "p99_ms")),
                fmt_ms(num(row, "max_ms")),
                err,
                served(row),
                fmt_us(num(row, "cpu_us_per_req")),
                "%.1f" % num(row, "peak_rss_mib"),
                "%.0f%%" % wrk,
                "; ".join(notes),
            ]
            out.append("| %s | %s |" % (server, " | ".join(cells)))
    return out


def notes(run):
    out = []
    for row in run.rows:
        where = "%s / %s" % (row["server"], row["scenario"])
        if row["status"] in ("failed", "died"):
            out.append("- %s %s: %s" % (where, row["status"], row["reason"]))
            continue
        if not ok(row):
            continue
        if num(row, "errors"):
            out.append("- %s: %d errors (socket errors + non-2xx): its req/s and latency are not comparable."
                       % (where, num(row, "errors")))
        if row.get("attempts") == "2":
            out.append("- %s: measured twice; something else disturbed the first attempt (its wrk output: raw/%s--%s.try1.wrk)."
                       % (where, row["server"], row["scenario"]))
        if num(row, "conns_starved"):
            out.append("- %s: %d of %d connections received nothing for the whole snapshot interval (starved)."
                       % (where, num(row, "conns_starved"), num(row, "conns_open")))
        o0, o1 = num(row, "other0_pct") or 0, num(row, "other1_pct") or 0
        if o0 >= OTHER_LOAD_LIMIT or o1 >= OTHER_LOAD_LIMIT:
            out.append("- %s: something else (not the measured processes, not interrupts) kept the server/client "
                       "cores %.0f%%/%.0f%% busy: the machine was not quiet."
                       % (where, o0, o1))
    client_bound = [("%s / %s" % (r["server"], r["scenario"])) for r in run.rows
                    if ok(r) and (num(r, "wrk_busy_pct") or 0) >= WRK_BUSY_LIMIT]
    if client_bound:
        out.append("- wrk's core was %d%%+ busy (the client was the limit; compare CPU µs/req instead) in: %s."
                   % (WRK_BUSY_LIMIT, ", ".join(client_bound)))
    if not out:
        return []
    return ["## Notes", ""] + out


def main(argv):
    brief = "--brief" in argv
    args = [a for a in argv if a != "--brief"]
    descriptions = {}
    if "--scenarios" in args:
        i = args.index("--scenarios")
        with open(args[i + 1]) as f:
            for line in f:
                name, _, desc = line.rstrip("\n").partition("\t")
                descriptions[name] = desc
        del args[i : i + 2]
    run = Run(args[0])
    out = overview(run) + [""] + targets(run)
    if not brief:
        out += [""] + scenario_tables(run, descriptions)
        extra = notes(run)
        if extra:
            out += [""] + extra
    print("\n".join(out))


if __name__ == "__main__":
    main(sys.argv[1:])
