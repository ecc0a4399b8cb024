#!/usr/bin/env bash
# perf/compare.sh: Spindle against gunicorn (gthread) on the hello app, keep-alive.
#
# Both servers serve perf/apps/hello.py one after the other in the same run,
# pinned to core 0; wrk is pinned to core 1. For each server: a warm-up, then
# one measured wrk run, and the server's CPU time (all threads, all processes)
# read from /proc around that run. Prints a summary and archives it, with the
# exact commands, versions, responses and raw wrk output, in
# perf/runs/<date>-<host>/compare-hello.md. See perf/README.md.
#
# Knobs (environment):
#   DURATION       measured wrk run, wrk syntax: 10s, 1m (default 10s)
#   WARMUP         warm-up wrk run before it (default 2s)
#   CONNECTIONS    wrk connections, one wrk thread (default 64)
#   SPINDLE_BIN    the server binary (default: newest target/*/release/spindle)
#   SPINDLE_ARGS   extra Spindle flags, split on spaces, e.g. "--driver epoll"
#   SPINDLE_PYTHON python for gunicorn's venv (default: the python Spindle links,
#                  else python<X.Y> from target/py<X.Y>/, else python3)
#   PERF_VENV      venv holding gunicorn (default build/perf-venv)
#   RUN_DIR        where the report goes (default perf/runs/<date>-<host>)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
CONNECTIONS=${CONNECTIONS:-64}
SPINDLE_ARGS=${SPINDLE_ARGS:-}
VENV=${PERF_VENV:-$ROOT/build/perf-venv}
RUN_DIR=${RUN_DIR:-$ROOT/perf/runs/$(date +%F)-$(hostname)}
APP_DIR=$ROOT/perf/apps
SERVER_CORE=0
CLIENT_CORE=1
READY_TIMEOUT_S=20
STOP_TIMEOUT_S=10
CLK_TCK=$(getconf CLK_TCK)
LOADAVG_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)

# The server being measured, so the EXIT trap can stop it on any path.
SERVER_PID=
WORK=$(mktemp -d "${TMPDIR:-/tmp}/spindle-perf.XXXXXX")

log() { printf '==> %s\n' "$*" >&2; }
warn() { printf 'WARNING: %s\n' "$*" >&2; }
die() {
    printf 'error: %s\n' "$*" >&2
    exit 1
}

cleanup() {
    local status=$?
    trap - EXIT INT TERM HUP
    stop_server || true
    rm -rf "$WORK"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

# ---------------------------------------------------------------- processes

# /proc/PID/stat fields after the ")" that closes comm, zero-based:
# 0 state, 1 ppid, 11 utime, 12 stime, 13 cutime, 14 cstime, 19 starttime.
stat_fields() {
    local line
    { read -r line <"/proc/$1/stat"; } 2>/dev/null || return 1
    read -r -a STAT <<<"${line##*) }"
}

alive() { stat_fields "$1" && [[ ${STAT[0]} != Z ]]; }

# Prints "PID STARTTIME" for PID and each of its live descendants.
tree_pids() {
    local root=$1 f line pid
    local -a fields queue
    local -A kids=()
    for f in /proc/[0-9]*/stat; do
        { read -r line <"$f"; } 2>/dev/null || continue
        pid=${line%% *}
        read -r -a fields <<<"${line##*) }"
        kids[${fields[1]}]+=" $pid"
    done
    queue=("$root")
    while ((${#queue[@]})); do
        pid=${queue[0]}
        queue=("${queue[@]:1}")
        if stat_fields "$pid"; then echo "$pid ${STAT[19]}"; fi
        read -r -a fields <<<"${kids[$pid]:-}"
        queue+=("${fields[@]}")
    done
}

# CPU time, in clock ticks, of PID and its descendants: every thread (a
# process's stat sums its threads, exited ones included) plus children it has
# already reaped (cutime/cstime), so a worker that dies mid-run still counts.
tree_ticks() {
    local total=0 pid _start
    while read -r pid _start; do
        stat_fields "$pid" || continue
        total=$((total + STAT[11] + STAT[12] + STAT[13] + STAT[14]))
    done < <(tree_pids "$1")
    echo "$total"
}

# User+system seconds of this shell's reaped children (wrk, once it has
# exited), from the output of the `times` builtin. `times` itself must run in
# this shell, not in a $(...) subshell, which has no children of its own.
children_cpu_secs() {
    awk 'NR == 2 { t = 0; for (i = 1; i <= 2; i++) { split($i, a, "m"); sub("s", "", a[2]); t += a[1] * 60 + a[2] } print t }' "$1"
}

# Busy clock ticks of each core so far, "core0 core1": everything but idle and
# iowait, so steal (time the hypervisor gave to another guest) counts too.
core_busy_ticks() {
    awk -v a="cpu$SERVER_CORE" -v b="cpu$CLIENT_CORE" '
        $1 == a || $1 == b { busy[$1] = $2 + $3 + $4 + $7 + $8 + $9 }
        END { print busy[a], busy[b] }' /proc/stat
}

free_port() {
    "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# SIGTERM, up to STOP_TIMEOUT_S for the server and everything it started to
# exit, then SIGKILL whatever of that tree is left (matched by start time, so
# a recycled PID is never hit).
stop_server() {
    local pid=$SERVER_PID p start deadline left
    [[ -n $pid ]] || return 0
    local -a tree
    mapfile -t tree < <(tree_pids "$pid")
    kill -TERM "$pid" 2>/dev/null || true
    deadline=$((EPOCHSECONDS + STOP_TIMEOUT_S))
    while :; do
        left=0
        for p in "${tree[@]}"; do
            if alive "${p% *}"; then left=1; fi
        done
        ((left && EPOCHSECONDS < deadline)) || break
        sleep 0.1
    done
    for p in "${tree[@]}"; do
        start=${p#* }
        p=${p% *}
        if alive "$p" && [[ ${STAT[19]} == "$start" ]]; then
            warn "PID $p still running ${STOP_TIMEOUT_S}s after SIGTERM: SIGKILL"
            kill -KILL "$p" 2>/dev/null || true
        fi
    done
    wait "$pid" 2>/dev/null || true
    SERVER_PID=
}

# ---------------------------------------------------------------- arguments

# wrk time syntax (N, Ns, Nm, Nh) to whole seconds, for the outer timeouts.
duration_secs() {
    local d=$1
    [[ $d =~ ^([0-9]+)([smh]?)$ ]] || die "bad duration '$d': use wrk syntax such as 10s or 1m"
    case ${BASH_REMATCH[2]} in
    m) echo $((BASH_REMATCH[1] * 60)) ;;
    h) echo $((BASH_REMATCH[1] * 3600)) ;;
    *) echo $((BASH_REMATCH[1])) ;;
    esac
}
DURATION_S=$(duration_secs "$DURATION")
WARMUP_S=$(duration_secs "$WARMUP")
((DURATION_S > 0)) || die "DURATION must be at least 1s"
[[ $CONNECTIONS =~ ^[1-9][0-9]*$ ]] || die "CONNECTIONS must be a positive integer, got '$CONNECTIONS'"
read -r -a SPINDLE_EXTRA <<<"$SPINDLE_ARGS"

# ---------------------------------------------------------------- tools

as_root() {
    if ((EUID == 0)); then
        "$@"
    elif command -v sudo >/dev/null; then
        sudo "$@"
    else
        die "need root to run: $*"
    fi
}

# Installs a Debian package when its command is missing.
need_cmd() {
    local cmd=$1 pkg=${2:-$1}
    command -v "$cmd" >/dev/null && return 0
    log "installing $pkg (for $cmd)"
    command -v apt-get >/dev/null || die "$cmd is missing and apt-get is not available: install $pkg by hand"
    if ! as_root apt-get install -y -q "$pkg" >"$WORK/apt.log" 2>&1; then
        as_root apt-get update -q >>"$WORK/apt.log" 2>&1 || true
        as_root apt-get install -y -q "$pkg" >>"$WORK/apt.log" 2>&1 ||
            { tail -n 20 "$WORK/apt.log" >&2; die "could not install $pkg"; }
    fi
    command -v "$cmd" >/dev/null || die "$pkg installed but $cmd is still not on PATH"
}

need_cmd wrk
need_cmd curl
need_cmd taskset util-linux
need_cmd timeout coreutils
taskset -c "$SERVER_CORE,$CLIENT_CORE" true 2>/dev/null ||
    die "this harness needs cores $SERVER_CORE and $CLIENT_CORE (server and wrk each on their own); this machine has $(nproc)"

# ---------------------------------------------------------------- spindle

find_spindle() {
    if [[ -n ${SPINDLE_BIN:-} ]]; then
        [[ -x $SPINDLE_BIN ]] || die "SPINDLE_BIN=$SPINDLE_BIN is not an executable file"
        return 0
    fi
    local f newest=
    for f in "$ROOT"/target/*/release/spindle; do
        [[ -x $f ]] || continue
        if [[ -z $newest || $f -nt $newest ]]; then newest=$f; fi
    done
    [[ -n $newest ]] ||
        die "no Spindle binary in target/*/release/spindle: run scripts/build.sh first (or set SPINDLE_BIN)"
    SPINDLE_BIN=$newest
}
find_spindle
SPINDLE_BIN=$(cd "$(dirname "$SPINDLE_BIN")" && pwd)/$(basename "$SPINDLE_BIN")
# Fingerprint the binary now: a build running beside the benchmark can replace
# it, and the report must name the one that was measured.
spindle_fingerprint() { echo "sha256 $(sha256sum "$SPINDLE_BIN" | cut -c1-16); built $(date -u -r "$SPINDLE_BIN" '+%F %T UTC')"; }
SPINDLE_FINGERPRINT=$(spindle_fingerprint)
SPINDLE_VERSION=$(timeout -k 2 5 "$SPINDLE_BIN" --version 2>&1 </dev/null | head -n 1 || true)

# Gunicorn runs on the Python Spindle embeds, so the two run the same app code
# on the same interpreter. Sources, in order: SPINDLE_PYTHON; the libpython the
# binary links (its ../bin/pythonX.Y); the target/pyX.Y/ folder name; python3.
runs_python() { [[ -n $1 ]] && "$1" -c 'import sys' >/dev/null 2>&1; }
pick_python() {
    if [[ -n ${SPINDLE_PYTHON:-} ]]; then
        runs_python "$SPINDLE_PYTHON" || die "SPINDLE_PYTHON=$SPINDLE_PYTHON does not run"
        PY=$SPINDLE_PYTHON PY_SOURCE="SPINDLE_PYTHON"
        return 0
    fi
    local lib ver candidate
    lib=$(ldd "$SPINDLE_BIN" 2>/dev/null | grep -oE '/[^ ]*/libpython3\.[0-9]+[^ ]*' | head -n 1 || true)
    if [[ $lib =~ libpython(3\.[0-9]+) ]]; then
        ver=${BASH_REMATCH[1]}
        candidate=$(dirname "$(dirname "$lib")")/bin/python$ver
        if runs_python "$candidate"; then
            PY=$candidate PY_SOURCE="libpython linked by the binary"
            return 0
        fi
    fi
    if [[ $SPINDLE_BIN =~ /target/py(3\.[0-9]+)/ ]]; then
        ver=${BASH_REMATCH[1]}
        if runs_python "python$ver"; then
            PY=python$ver PY_SOURCE="target folder py$ver"
            return 0
        fi
        warn "Spindle was built for Python $ver but python$ver does not run here; gunicorn will use python3"
    fi
    runs_python python3 || die "no python3 found: set SPINDLE_PYTHON"
    PY=python3 PY_SOURCE="default python3"
}
pick_python
# The real interpreter, not a pyenv shim or a name on PATH, so the venv and
# the report name the same Python whatever PATH says later.
PY=$("$PY" -c 'import sys; print(sys.executable)')

# ---------------------------------------------------------------- gunicorn venv

py_version() { "$1" -c 'import sys; print(sys.version.split()[0])'; }
PY_VERSION=$(py_version "$PY")
if [[ -x $VENV/bin/python ]] && [[ $(py_version "$VENV/bin/python" 2>/dev/null || true) != "$PY_VERSION" ]]; then
    [[ -f $VENV/pyvenv.cfg ]] || die "$VENV exists but is not a venv: remove it or set PERF_VENV"
    log "recreating $VENV for Python $PY_VERSION"
    "$PY" -m venv --clear "$VENV" || die "could not recreate the venv $VENV with $PY"
elif [[ ! -x $VENV/bin/python ]]; then
    log "creating $VENV with $PY ($PY_VERSION, from $PY_SOURCE)"
    mkdir -p "$(dirname "$VENV")"
    "$PY" -m venv "$VENV" || die "could not create a venv with $PY (on Debian's python3: apt-get install python3-venv)"
fi
if [[ ! -x $VENV/bin/gunicorn ]]; then
    log "installing gunicorn into $VENV"
    "$VENV/bin/pip" install -q gunicorn || die "pip install gunicorn failed"
fi
GUNICORN_VERSION=$("$VENV/bin/gunicorn" --version 2>&1 | head -n 1 || true)

# ---------------------------------------------------------------- one server

# The arguments as one line a shell would read back as the same words.
shell_words() {
    local line
    printf -v line '%q ' "$@"
    echo "${line% }"
}

# wrk's summary lines to numbers.
wrk_requests() { awk '/ requests in / { print $1 }' "$1"; }
wrk_rps() { awk '/^Requests\/sec:/ { print $2 }' "$1"; }
wrk_errors() {
    awk '/Socket errors:/ { gsub(",", ""); n += $4 + $6 + $8 + $10 }
         /Non-2xx or 3xx responses:/ { n += $NF }
         END { print n + 0 }' "$1"
}

# bench NAME COMMAND...: the command must contain 127.0.0.1:PORT, where PORT
# is replaced by a free port. Results land in $WORK/NAME.*.
bench() {
    local name=$1
    shift
    local port url before after t0 t1 c0 c1 requests cores0 cores1
    port=$(free_port)
    url=http://127.0.0.1:$port/
    local -a cmd=("${@//127.0.0.1:PORT/127.0.0.1:$port}")
    local wrk_timeout=$((DURATION_S + 30)) warm_timeout=$((WARMUP_S + 30))
    local -a wrk_cmd=(taskset -c "$CLIENT_CORE" wrk -t1 -c"$CONNECTIONS" -d"$DURATION" --latency "$url")
    shell_words "${cmd[@]}" >"$WORK/$name.cmd"
    shell_words "${wrk_cmd[@]}" >"$WORK/$name.wrkcmd"

    log "$name: starting on port $port"
    "${cmd[@]}" >"$WORK/$name.log" 2>&1 &
    SERVER_PID=$!

    local deadline=$((EPOCHSECONDS + READY_TIMEOUT_S)) code
    while :; do
        if ! alive "$SERVER_PID"; then
            tail -n 30 "$WORK/$name.log" >&2
            die "$name exited before it answered on $url (its log is above)"
        fi
        code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "$url" || true)
        [[ $code == 200 ]] && break
        if ((EPOCHSECONDS >= deadline)); then
            tail -n 30 "$WORK/$name.log" >&2
            die "$name did not answer 200 on $url within ${READY_TIMEOUT_S}s (last status: $code; its log is above)"
        fi
        sleep 0.1
    done

    curl -sS -i --max-time 5 "$url" >"$WORK/$name.response" || die "$name: could not fetch $url"
    [[ $(curl -sS --max-time 5 "$url") == "Hello, World!" ]] ||
        die "$name does not answer 'Hello, World!' on $url; got: $(head -c 200 "$WORK/$name.response")"

    log "$name: warm-up ${WARMUP}"
    timeout -k 5 "$warm_timeout" taskset -c "$CLIENT_CORE" wrk -t1 -c"$CONNECTIONS" -d"$WARMUP" "$url" \
        >"$WORK/$name.warmup" 2>&1 || die "$name: warm-up wrk failed: $(cat "$WORK/$name.warmup")"
    alive "$SERVER_PID" || die "$name died during the warm-up"

    log "$name: measuring ${DURATION}, ${CONNECTIONS} connections"
    before=$(tree_ticks "$SERVER_PID")
    times >"$WORK/$name.times0"
    cores0=$(core_busy_ticks)
    t0=$EPOCHREALTIME
    timeout -k 5 "$wrk_timeout" "${wrk_cmd[@]}" >"$WORK/$name.wrk" 2>&1 ||
        die "$name: wrk failed or overran ${wrk_timeout}s: $(cat "$WORK/$name.wrk")"
    t1=$EPOCHREALTIME
    cores1=$(core_busy_ticks)
    times >"$WORK/$name.times1"
    c0=$(children_cpu_secs "$WORK/$name.times0")
    c1=$(children_cpu_secs "$WORK/$name.times1")
    alive "$SERVER_PID" || die "$name died during the measured run"
    after=$(tree_ticks "$SERVER_PID")

    stop_server

    requests=$(wrk_requests "$WORK/$name.wrk")
    [[ $requests =~ ^[0-9]+$ && $requests -gt 0 ]] || die "$name: no requests completed; wrk said: $(cat "$WORK/$name.wrk")"
    # One line: name rps requests errors cpu_us_per_req server_busy% wrk_busy%
    # other0% other1%, where otherN% is the busy time of that core that neither
    # the server (core 0) nor wrk (core 1) accounts for: other processes,
    # interrupts, steal. A few percent is the kernel's own share of the traffic.
    awk -v n="$name" -v rps="$(wrk_rps "$WORK/$name.wrk")" -v req="$requests" \
        -v err="$(wrk_errors "$WORK/$name.wrk")" -v ticks=$((after - before)) -v hz="$CLK_TCK" \
        -v t0="$t0" -v t1="$t1" -v c0="$c0" -v c1="$c1" -v cores0="$cores0" -v cores1="$cores1" '
        BEGIN {
            wall = t1 - t0; wrk = (c1 - c0) * hz
            split(cores0, k0, " "); split(cores1, k1, " ")
            other0 = (k1[1] - k0[1]) - ticks; other1 = (k1[2] - k0[2]) - wrk
            if (other0 < 0) other0 = 0
            if (other1 < 0) other1 = 0
            printf "%s %s %d %d %.2f %.0f %.0f %.0f %.0f\n", n, rps, req, err, ticks / hz * 1e6 / req,
                100 * ticks / hz / wall, 100 * wrk / hz / wall, 100 * other0 / hz / wall, 100 * other1 / hz / wall
        }' >"$WORK/$name.result"
}

# ---------------------------------------------------------------- run

bench spindle taskset -c "$SERVER_CORE" "$SPINDLE_BIN" --bind 127.0.0.1:PORT --io-threads 1 --py-threads 1 \
    --pythonpath "$APP_DIR" "${SPINDLE_EXTRA[@]}" hello:app
bench gunicorn taskset -c "$SERVER_CORE" "$VENV/bin/gunicorn" -k gthread --threads 4 -w 1 -b 127.0.0.1:PORT \
    --chdir "$APP_DIR" hello:app

# ---------------------------------------------------------------- report

read -r _ S_RPS S_REQ S_ERR S_US S_BUSY S_WRK S_OTHER0 S_OTHER1 <"$WORK/spindle.result"
read -r _ G_RPS G_REQ G_ERR G_US G_BUSY G_WRK G_OTHER0 G_OTHER1 <"$WORK/gunicorn.result"
RATIO=$(awk -v s="$S_RPS" -v g="$G_RPS" 'BEGIN { printf "%.2f", s / g }')
CPU_RATIO=$(awk -v s="$S_US" -v g="$G_US" 'BEGIN { printf "%.2f", s / g }')

summary() {
    echo "| server | req/s | µs CPU/request | ratio | requests | errors | server core busy | wrk core busy | other load core 0 / 1 |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    printf '| spindle | %.0f | %s | %s | %s | %s | %s%% | %s%% | %s%% / %s%% |\n' \
        "$S_RPS" "$S_US" "$RATIO" "$S_REQ" "$S_ERR" "$S_BUSY" "$S_WRK" "$S_OTHER0" "$S_OTHER1"
    printf '| gunicorn gthread | %.0f | %s | 1.00 | %s | %s | %s%% | %s%% | %s%% / %s%% |\n' \
        "$G_RPS" "$G_US" "$G_REQ" "$G_ERR" "$G_BUSY" "$G_WRK" "$G_OTHER0" "$G_OTHER1"
    echo
    echo "spindle/gunicorn: ${RATIO}x the requests per second, ${CPU_RATIO}x the server CPU per request."
}

notes() {
    local name err busy other0 other1
    for name in spindle gunicorn; do
        read -r _ _ _ err _ _ busy other0 other1 <"$WORK/$name.result"
        ((err == 0)) || echo "- WARNING: $name had $err socket errors or non-2xx responses: its req/s is not comparable."
        ((busy < 90)) || echo "- WARNING: wrk's core was ${busy}% busy during the $name run: the client may be the limit there, not the server."
        ((other0 < 10 && other1 < 10)) ||
            echo "- WARNING: something else kept cores 0/1 ${other0}%/${other1}% busy during the $name run: the machine was not quiet; rerun."
    done
}

if [[ $(spindle_fingerprint) != "$SPINDLE_FINGERPRINT" ]]; then
    BINARY_CHANGED="- WARNING: $SPINDLE_BIN was replaced during the run (a build beside it?): the spindle row may mix two builds; rerun."
    warn "${BINARY_CHANGED#- WARNING: }"
else
    BINARY_CHANGED=
fi
COMMIT=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo "none")
DIRTY=$(git -C "$ROOT" --no-optional-locks status --porcelain 2>/dev/null | wc -l || echo "?")

mkdir -p "$RUN_DIR"
OUT=$RUN_DIR/compare-hello.md
{
    echo "# Spindle vs gunicorn (gthread): hello, keep-alive, $CONNECTIONS connections"
    echo
    echo "- date: $(date -u '+%F %T UTC')"
    echo "- host: $(hostname), $(nproc) cores ($(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)), kernel $(uname -r)"
    echo "- load average before: $LOADAVG_BEFORE"
    echo "- commit: $COMMIT ($DIRTY changed or untracked paths)"
    echo "- spindle: \`$SPINDLE_BIN\` (${SPINDLE_VERSION:-no --version}; $SPINDLE_FINGERPRINT)"
    echo "- gunicorn: $GUNICORN_VERSION on Python $PY_VERSION (\`$PY\`, from $PY_SOURCE)"
    echo "- wrk: $(wrk -v 2>&1 | head -n 1 || true)"
    echo "- method: server on core $SERVER_CORE, wrk on core $CLIENT_CORE; warm-up $WARMUP, then $DURATION measured; server CPU = utime+stime of its process tree from /proc, ${CLK_TCK} ticks/s, over the measured run"
    echo
    echo "## Summary"
    echo
    summary
    notes
    [[ -z $BINARY_CHANGED ]] || echo "$BINARY_CHANGED"
    for name in spindle gunicorn; do
        echo
        echo "## $name"
        echo
        echo '```'
        cat "$WORK/$name.cmd" "$WORK/$name.wrkcmd"
        echo '```'
        echo
        echo "Response:"
        echo
        echo '```'
        tr -d '\r' <"$WORK/$name.response"
        echo
        echo '```'
        echo
        echo "Server log (first 20 lines):"
        echo
        echo '```'
        head -n 20 "$WORK/$name.log"
        echo '```'
        echo
        echo "wrk:"
        echo
        echo '```'
        cat "$WORK/$name.wrk"
        echo '```'
    done
} >"$OUT"

echo
summary
notes
[[ -z $BINARY_CHANGED ]] || echo "$BINARY_CHANGED"
echo
echo "report: ${OUT#"$ROOT"/}"
