"""Runs a WSGI app under bjoern (which has no command line of its own).

Usage: python bjoern_run.py HOST PORT [MODULE:CALLABLE]

MODULE:CALLABLE defaults to lab:app (perf/lab.sh). The working directory goes first on
sys.path, as gunicorn's --chdir does, so perf/frameworks.py starts it from the Django
project's folder for djangoapp.wsgi:application.
"""

import importlib
import os
import sys

import bjoern

if __name__ == "__main__":
    host, port = sys.argv[1], int(sys.argv[2])
    spec = sys.argv[3] if len(sys.argv) > 3 else "lab:app"
    module, _, name = spec.partition(":")
    sys.path.insert(0, os.getcwd())
    app = getattr(importlib.import_module(module), name or "application")
    bjoern.run(app, host, port)
