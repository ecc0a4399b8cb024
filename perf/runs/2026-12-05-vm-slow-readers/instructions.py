"""Instructions per request (callgrind, every thread of the server) of main's build and the
budget's, on the lab's hello and 64k routes: perf/observe.py's method (a run of 12,000
requests minus one of 2,000, over 10,000; h2load, 8 connections), without its variants.

    python perf/runs/2026-12-05-vm-slow-readers/instructions.py MAIN_BIN BUDGET_BIN
"""

import re
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import harness  # noqa: E402
from observe import server_command  # noqa: E402


def instructions(spindle: str, path: str, requests: int, logdir: Path) -> int:
    port = harness.free_port()
    out = logdir / f"callgrind-{requests}-{port}"
    proc = harness.start(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
                          *server_command(spindle, "off", port, logdir)])
    try:
        harness.wait_ready(port, proc, timeout=120)
        subprocess.run(["h2load", "-n", str(requests), "-c", "8", "--h1", f"http://127.0.0.1:{port}{path}"],
                       check=True, capture_output=True, timeout=600)
    finally:
        harness.stop(proc)
    return int(re.search(r"^summary: (\d+)", out.read_text(), re.M).group(1))


def main() -> None:
    low, high = 2_000, 12_000
    print("| route | main | budget | budget / main |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for path in ("/", "/64k"):
            per = []
            for spindle in sys.argv[1:3]:
                per.append((instructions(spindle, path, high, Path(tmp))
                            - instructions(spindle, path, low, Path(tmp))) / (high - low))
            print(f"| {path} | {per[0]:.0f} | {per[1]:.0f} | {per[1] / per[0]:.4f} |", flush=True)


if __name__ == "__main__":
    main()
