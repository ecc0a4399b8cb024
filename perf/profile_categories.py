#!/usr/bin/env python3
"""perf/profile.sh's summary: each `perf record` profile in RUN_DIR/data summed into
categories (a symbol's category is the first pattern it matches, in the order below), one
table per connection count, with each server's req/s under the profiler and its top
symbols. Usage: perf/profile_categories.py RUN_DIR
"""
import re
import subprocess
import sys
from pathlib import Path
CATS = [
 ("kernel: scheduling and wake-ups", r"\[k\] (finish_task_switch|__schedule|_raw_spin_unlock_irq|_raw_spin_unlock_irqrestore|do_sched_yield|try_to_wake_up|schedule|pick_next|update_curr|dequeue|enqueue|select_task_rq|ttwu|__switch_to|psi_|update_load|set_next_entity|put_prev|native_sched_clock|sched_|futex|__futex|wake_up|ep_poll|__wake_up|reweight|newidle|load_balance|rcu_note|cpuacct|__update|switch_mm|pick_|check_preempt|yield|hrtimer|task_|prepare_task|raw_spin_rq|_raw_spin_lock)"),
 ("kernel: TCP/IP and socket", r"\[k\] (tcp_|__tcp|ip_|__ip|skb|__skb|kfree_skb|__dev|dev_|net_|__netif|netif|process_backlog|__napi|napi|loopback|sock_|__sock|sk_|release_sock|lock_sock|inet_|__inet|__kfree_skb|kmem|__kmalloc|kmalloc|__alloc_skb|alloc_skb|copy_|_copy|__copy|memcpy|csum|__sys_send|__sys_recv|__x64_sys_send|__x64_sys_recv|__local_bh|do_softirq|__do_softirq|validate_xmit|eth_|ipv4|ip6|raw_|__check_object|check_heap|__virt|page_frag|__page|skb_|rb_|__xfrm|nf_|security_socket|__build_skb|bpf|__sk)"),
 ("kernel: epoll / io_uring", r"\[k\] (ep_|__ep|do_epoll|__x64_sys_epoll|io_|__io|__x64_sys_io_uring|eventfd|__x64_sys_write|ksys_write|vfs_write|fdget|__fdget|__fget|fput|__fput)"),
 ("kernel: syscall entry/exit and other", r"\[k\] "),
 ("CPython", r"libpython"),
 ("Spindle (Rust) and monoio", r"_native\.cpython"),
 ("libc (malloc, memcpy, syscall wrappers)", r"libc\.so|ld-linux"),
 ("nginx / bjoern / libev", r"nginx|_bjoern|libev|bjoern"),
 ("other", r"."),
]
def report(path):
    return subprocess.run(["perf", "report", "-i", str(path), "--no-children", "--sort", "dso,sym", "--stdio"],
                          capture_output=True, text=True).stdout


def cats(out):
    tot = {c:0.0 for c,_ in CATS}
    for line in out.splitlines():
        m = re.match(r"\s+([\d.]+)%\s+(.*)", line)
        if not m: continue
        pct, rest = float(m.group(1)), m.group(2)
        for c, rx in CATS:
            if re.search(rx, rest):
                tot[c] += pct; break
    return tot
def main() -> None:
    run = Path(sys.argv[1])
    servers = ["spindle-epoll", "spindle-uring", "bjoern", "nginx"]
    print("# Where a hello request's CPU goes (perf/profile.sh)\n")
    print("Share of the server process's samples (every thread) by category; wrk -t1 on core 1, "
          "server on core 0. Shares, not times: multiply by a lab run's CPU µs per request.\n")
    for c in (1, 64):
        names = [n for n in servers if (run / "data" / f"{n}-c{c}.data").exists()]
        reports = {n: report(run / "data" / f"{n}-c{c}.data") for n in names}
        res = {n: cats(reports[n]) for n in names}
        print(f"## {c} connection{'s' if c > 1 else ''}\n")
        print("| where | " + " | ".join(names) + " |")
        print("|---|" + "---:|" * len(names))
        for cat, _ in CATS:
            row = [f"{res[n][cat]:.0f}%" for n in names]
            if any(r != "0%" for r in row):
                print(f"| {cat} | " + " | ".join(row) + " |")
        rps = []
        for n in names:
            m = re.search(r"Requests/sec:\s+([\d.]+)", (run / "data" / f"{n}-c{c}.wrk").read_text())
            rps.append(f"{float(m.group(1)):,.0f}" if m else "?")
        print("| req/s under perf | " + " | ".join(rps) + " |\n")
        for n in names:
            top = [line for line in reports[n].splitlines() if re.match(r"\s+[\d.]+%", line)][:12]
            print(f"Top symbols, {n}, c{c}:\n\n```\n" + "\n".join(top) + "\n```\n")


if __name__ == "__main__":
    main()
