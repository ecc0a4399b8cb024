"""Instructions per request (callgrind, every thread of the server) of main's build and the
budget's, on the lab's hello and 64k routes: perf/observe.py's method (a run of 12,000
requests minus one of 2,000, over 10,000; h2load, 8 connections), without its variants.

    python perf/runs/2026-12-05-vm-slow-readers/instructions.py MAIN_BIN BUDGET_BIN [REPS] [KEEP_DIR]

Instruction counts of a server move a little from run to run (how replies batch depends on
timing), so each is measured REPS times, interleaved (main, budget, main, ...), and every
count is printed; KEEP_DIR keeps the callgrind files for callgrind_annotate.
"""

import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import harness  # noqa: E402
from observe import server_command  # noqa: E402


def instructions(spindle: str, path: str, requests: int, logdir: Path) -> int:
    port = harness.free_port()
    out = logdir / f"callgrind-{Path(spindle).parent.parent.name}-{path.strip('/') or 'hello'}-{requests}-{port}"
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
    reps = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    print("| route | main, each run | budget, each run | median budget / median main |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        keep = Path(sys.argv[4]) if len(sys.argv) > 4 else Path(tmp)
        keep.mkdir(parents=True, exist_ok=True)
        for path in ("/", "/64k"):
            per: list[list[float]] = [[], []]
            for _ in range(reps):
                for i, spindle in enumerate(sys.argv[1:3]):
                    per[i].append((instructions(spindle, path, high, keep)
                                   - instructions(spindle, path, low, keep)) / (high - low))
            med = [statistics.median(p) for p in per]
            runs = [", ".join(f"{x:.0f}" for x in p) for p in per]
            print(f"| {path} | {runs[0]} | {runs[1]} | {med[1] / med[0]:.4f} |", flush=True)


if __name__ == "__main__":
    main()
