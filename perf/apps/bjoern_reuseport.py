"""Runs a perf/apps app under bjoern on a SO_REUSEPORT socket, so that several of these
processes, started one by one on the same port, share it: the kernel spreads new
connections over their sockets (bjoern is one thread in one process; this is how it uses
more than one core). perf/machine.py starts two for "bjoern x2".

Prints `listening on HOST:PORT` (flushed) once its socket listens, so the script that
started it knows this process, not just the port, is ready.

Usage: python bjoern_reuseport.py MODULE:APP HOST PORT
"""

import importlib
import sys

import bjoern

if __name__ == "__main__":
    spec, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    module, _, name = spec.partition(":")
    app = getattr(importlib.import_module(module), name or "app")
    bjoern.listen(app, host, port, reuse_port=True)
    print(f"listening on {host}:{port}", flush=True)
    bjoern.run()
