import sys, tempfile
from pathlib import Path
sys.path.insert(0, ".")
import observe
low, high = 2000, 12000
bins = {"before (main e53a5ac)": "/tmp/adm-base/venv/bin/spindle",
        "after (admission)": "/work/wt-admission/build/test-venv-3.13/bin/spindle"}
with tempfile.TemporaryDirectory() as tmp:
    for rnd in range(2):
        for name, b in bins.items():
            hi = observe.instructions(b, "off", high, Path(tmp))
            lo = observe.instructions(b, "off", low, Path(tmp))
            print(f"round {rnd+1} {name}: {(hi-lo)/(high-low):.0f} instructions/request (runs: {lo}, {hi})", flush=True)
