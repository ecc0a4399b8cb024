"""Runs perf/apps/lab.py:app under bjoern (which has no command line of its own).

Usage: python bjoern_run.py HOST PORT
"""

import sys

import bjoern

from lab import app

if __name__ == "__main__":
    host, port = sys.argv[1], int(sys.argv[2])
    bjoern.run(app, host, port)
