"""Spindle as a Python package: the `spindle` console script and `python -m spindle` run
the server inside the venv's own Python (no VIRTUAL_ENV, no --venv), `spindle.run()` and
`spindle.serve()` reach the same entry point, and sub-interpreters never load the
extension module `spindle._native`."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import APPS, SPINDLE_BIN, base_args, child_env

HAS_SUB = sys.version_info >= (3, 12)


def python(code: str, timeout: float = 20) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout, env=child_env(), stdin=subprocess.DEVNULL)


def test_console_script_is_this_venvs():
    # scripts/test.sh installed the wheel here; the command is the venv's own.
    assert SPINDLE_BIN.parent == Path(sys.prefix) / "bin", SPINDLE_BIN
    first = SPINDLE_BIN.read_text().splitlines()[0]
    assert first == "#!" + sys.executable or first.startswith("#!" + sys.prefix), first


def test_python_dash_m_version():
    result = subprocess.run([sys.executable, "-m", "spindle", "--version"], capture_output=True, text=True,
                            timeout=20, env=child_env())
    assert result.returncode == 0, result
    assert re.search(r"^spindle \d+\.\d+\.\d+$", result.stdout, re.M), result.stdout
    assert re.search(r"^Python %s$" % re.escape(".".join(map(str, sys.version_info[:3]))),
                     result.stdout, re.M), result.stdout


def test_importing_spindle_loads_no_native_code():
    result = python("""
        import sys, spindle
        print(spindle.__version__, "spindle._native" in sys.modules)
    """)
    assert result.returncode == 0, result.stderr
    version, loaded = result.stdout.split()
    assert re.fullmatch(r"\d+\.\d+\.\d+", version) and loaded == "False", result.stdout


def test_app_imports_from_the_venv_it_runs_in(spindle):
    # Flask is installed in this venv only (scripts/test.sh): the app finds it there,
    # with nothing but the console script's own Python telling Spindle where that is.
    srv = spindle("flask_app:app")
    where = json.loads(srv.get("/where").body)
    assert where["executable"] == sys.executable, where
    assert Path(where["flask"]).is_relative_to(sys.prefix), where
    base = subprocess.run([sys._base_executable, "-c", "import flask"], capture_output=True, timeout=20)
    if base.returncode == 0:
        pytest.skip(f"{sys._base_executable} has Flask too (the app's came from the venv, shown above)")


@pytest.mark.parametrize("mode", ["sub", "main"] if HAS_SUB else ["main"])
def test_sub_interpreters_never_load_the_extension(spindle, mode):
    srv = spindle("interp_app:app", "--interpreters", mode)
    seen = [json.loads(srv.get("/spindle").body) for _ in range(4)]
    for answer in seen:
        assert answer["executable"] == sys.executable and answer["prefix"] == sys.prefix, answer
        # The app may import the spindle package anywhere; only the main interpreter (the
        # one running `spindle`) has the extension loaded.
        assert answer["native_loaded"] is (mode == "main"), answer


def test_run_from_python_is_the_command(spindle):
    args = base_args() + ["wsgi_app:app"]
    script = "import spindle, sys; sys.exit(spindle.run(sys.argv[1:]))"
    srv = spindle(None, *args, base=False, command=[sys.executable, "-c", script])
    srv.assert_serving()


def test_serve_an_app_object(spindle):
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(APPS)!r})
        import spindle
        from wsgi_app import app
        # auto (not the SPINDLE_INTERPRETERS the suite may run under): an object runs on main.
        spindle.serve(app, bind="127.0.0.1:0", log_level="debug", io_threads=2, py_threads=2,
                      interpreters="auto")
        print("serve returned", flush=True)
    """)
    srv = spindle(None, base=False, command=[sys.executable, "-c", script])
    srv.assert_serving()
    srv.wait_for_log(r"main interpreter", 1, what="the mode line")
    assert srv.stop() == 0
    # serve() returned to the program after a clean stop, which then went on.
    assert "serve returned" in srv.log_since(), srv.log_since()


def test_serve_an_app_object_refuses_sub_interpreters():
    result = python(f"""
        import sys
        sys.path.insert(0, {str(APPS)!r})
        import spindle
        from wsgi_app import app
        spindle.serve(app, bind="127.0.0.1:0", interpreters="sub")
    """)
    assert result.returncode == 1, result
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "import string" in errors[0], result.stderr


def test_serve_with_a_bad_setting_exits_2():
    result = python("""
        import spindle
        spindle.serve("wsgi_app:app", no_such_setting=1)
    """)
    assert result.returncode == 2, result
    assert "--no-such-setting" in result.stderr, result.stderr


def test_run_off_the_main_thread_is_refused():
    result = python("""
        import threading, spindle
        failure = []
        def go():
            try:
                spindle.run(["--bind", "127.0.0.1:0", "wsgi_app:app"])
            except RuntimeError as exc:
                failure.append(str(exc))
        t = threading.Thread(target=go)
        t.start(); t.join()
        print(failure[0])
    """)
    assert result.returncode == 0, result.stderr
    assert "main thread" in result.stdout, result.stdout


def test_signals_go_back_to_python_after_serve(spindle):
    # After serve() returns, SIGINT is Python's again: KeyboardInterrupt, not Spindle.
    script = textwrap.dedent(f"""
        import os, signal, sys, time
        sys.path.insert(0, {str(APPS)!r})
        import spindle
        spindle.run(["--bind", "127.0.0.1:0", "wsgi_app:app"])
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)
            print("no KeyboardInterrupt", flush=True)
        except KeyboardInterrupt:
            print("KeyboardInterrupt after serve", flush=True)
    """)
    srv = spindle(None, base=False, command=[sys.executable, "-c", script])
    srv.proc.send_signal(signal.SIGTERM)
    srv.wait_for_log(r"KeyboardInterrupt after serve|no KeyboardInterrupt", 10, what="the program's own SIGINT")
    assert "KeyboardInterrupt after serve" in srv.log_since()
    assert srv.proc.wait(10) == 0, srv.log_since()
