# shellcheck shell=bash disable=SC2034
# perf/lib.sh: what the end-to-end harnesses (compare.sh, lab.sh) share.
#
# Source it from a bash script that has `set -euo pipefail`; it sets ROOT
# (the repository) and PERF_DIR, makes a scratch folder $WORK, and installs
# traps so that on any exit (Ctrl-C included) the server being measured
# ($SERVER_PID and everything it started, matched by PID and start time) is
# stopped, `lib_cleanup_hook` runs if the script defines it, and $WORK is
# removed. Nothing here kills by name.
#
# Contents: logging; process trees from /proc (CPU ticks, peak RSS, stop);
# starting a server and polling it until it answers; core busy time; wrk
# output parsing; tools from apt; the Python every server runs on and the Spindle (a wheel installed in the venv);
# the perf venv.

PERF_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$PERF_DIR/.." && pwd)

SERVER_CORE=${SERVER_CORE:-0}
CLIENT_CORE=${CLIENT_CORE:-1}
READY_TIMEOUT_S=${READY_TIMEOUT_S:-20}
STOP_TIMEOUT_S=${STOP_TIMEOUT_S:-10}
CLK_TCK=$(getconf CLK_TCK)
LOADAVG_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)

# The server being measured, so the EXIT trap can stop it on any path, and the
# signal that stops it (most servers: TERM; uWSGI without a master: INT).
SERVER_PID=
SERVER_STOP_SIGNAL=TERM
WORK=$(mktemp -d "${TMPDIR:-/tmp}/spindle-perf.XXXXXX")

log() { printf '==> %s\n' "$*" >&2; }
warn() { printf 'WARNING: %s\n' "$*" >&2; }
die() {
    printf 'error: %s\n' "$*" >&2
    exit 1
}

lib_cleanup() {
    local status=$?
    trap - EXIT INT TERM HUP
    stop_server || true
    if declare -F lib_cleanup_hook >/dev/null; then lib_cleanup_hook || true; fi
    rm -rf "$WORK"
    exit "$status"
}
trap lib_cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

# ---------------------------------------------------------------- processes

# /proc/PID/stat fields after the ")" that closes comm, zero-based, into STAT:
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

# Resets the peak RSS (VmHWM) of PID and its descendants to their current RSS
# (`5` to /proc/PID/clear_refs, Linux >= 4.0), so that a later tree_peak_rss_kib
# covers only what came after. Silently does nothing where it is refused.
tree_reset_peak_rss() {
    local pid _start
    while read -r pid _start; do
        { echo 5 >"/proc/$pid/clear_refs"; } 2>/dev/null || true
    done < <(tree_pids "$1")
}

# Sum of VmHWM (peak resident set, KiB) over PID and its descendants. Pages
# shared between processes (a pre-fork master and its worker) count in each.
tree_peak_rss_kib() {
    local total=0 pid _start kib
    while read -r pid _start; do
        kib=$(awk '/^VmHWM:/ { print $2 }' "/proc/$pid/status" 2>/dev/null || true)
        total=$((total + ${kib:-0}))
    done < <(tree_pids "$1")
    echo "$total"
}

# User+system seconds of this shell's reaped children (wrk, once it has
# exited), from the output of the `times` builtin. `times` itself must run in
# this shell, not in a $(...) subshell, which has no children of its own.
children_cpu_secs() {
    awk 'NR == 2 { t = 0; for (i = 1; i <= 2; i++) { split($i, a, "m"); sub("s", "", a[2]); t += a[1] * 60 + a[2] } print t }' "$1"
}

# Busy clock ticks of each core so far, "server_core client_core": everything
# but idle and iowait, so steal (time the hypervisor gave to another guest)
# counts too.
core_busy_ticks() {
    awk -v a="cpu$SERVER_CORE" -v b="cpu$CLIENT_CORE" '
        $1 == a || $1 == b { busy[$1] = $2 + $3 + $4 + $7 + $8 + $9 }
        END { print busy[a], busy[b] }' /proc/stat
}

# Interrupt and softirq ticks of each core so far, "server_core client_core".
# Loopback traffic is largely processed in softirq context, which the kernel
# (with IRQ time accounting) charges to no process: part of both sides' cost
# that /proc/PID/stat does not show.
core_irq_ticks() {
    awk -v a="cpu$SERVER_CORE" -v b="cpu$CLIENT_CORE" '
        $1 == a || $1 == b { irq[$1] = $7 + $8 }
        END { print irq[a], irq[b] }' /proc/stat
}

# conn_snapshot PORT: one line per established client connection to
# 127.0.0.1:PORT (wrk's side), "LOCAL_PORT/COOKIE BYTES_RECEIVED", from ss
# -tie. The socket cookie tells a connection from a later one that reuses its
# local port (with a new connection per request, ports come round in seconds).
conn_snapshot() {
    taskset -c "$CLIENT_CORE" ss -tineH state established "( dport = :$1 )" 2>/dev/null | awk '
        /^[^ \t]/ {
            if (key != "") print key, got
            n = split($3, a, ":"); key = a[n]; got = 0
            for (i = 5; i <= NF; i++) if ($i ~ /^sk:/) key = key "/" substr($i, 4)
            next
        }
        { if (match($0, /bytes_received:[0-9]+/)) got = substr($0, RSTART + 15, RLENGTH - 15) }
        END { if (key != "") print key, got }'
}

# conn_progress SNAPSHOT1 SNAPSHOT2: "OPEN STUCK": connections open at the
# second snapshot, and how many of those already open at the first received
# nothing in between (starved for the whole interval).
conn_progress() {
    awk 'FILENAME == ARGV[1] { seen[$1] = $2; next }
         { open++; if (($1 in seen) && $2 <= seen[$1]) stuck++ }
         END { print open + 0, stuck + 0 }' "$1" "$2"
}

free_port() {
    "${PY:-python3}" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# start_server LOGFILE DIR COMMAND...: runs COMMAND in DIR, output to LOGFILE,
# in the background; its PID (the command's own: the subshell execs it) goes
# to SERVER_PID. Set SERVER_STOP_SIGNAL before, if TERM is not the right one.
start_server() {
    local logfile=$1 dir=$2
    shift 2
    (cd "$dir" && exec "$@") >"$logfile" 2>&1 </dev/null &
    SERVER_PID=$!
}

# wait_ready URL LOGFILE: polls URL with curl until it answers 200, at most
# READY_TIMEOUT_S. Returns 1 with the reason in READY_ERROR if the server
# exits first or the time runs out.
wait_ready() {
    local url=$1 logfile=$2 code deadline=$((EPOCHSECONDS + READY_TIMEOUT_S))
    READY_ERROR=
    while :; do
        if ! alive "$SERVER_PID"; then
            READY_ERROR="exited before it answered on $url; log: $(tail -n 5 "$logfile" | tr '\n' ' ')"
            return 1
        fi
        code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "$url" || true)
        [[ $code == 200 ]] && return 0
        if ((EPOCHSECONDS >= deadline)); then
            READY_ERROR="did not answer 200 on $url within ${READY_TIMEOUT_S}s (last status: $code); log: $(tail -n 5 "$logfile" | tr '\n' ' ')"
            return 1
        fi
        sleep 0.1
    done
}

# SERVER_STOP_SIGNAL (TERM unless set), up to STOP_TIMEOUT_S for the server and
# everything it started to exit, then SIGKILL whatever of that tree is left
# (matched by start time, so a recycled PID is never hit).
stop_server() {
    local pid=$SERVER_PID p start deadline left
    [[ -n $pid ]] || return 0
    local -a tree
    mapfile -t tree < <(tree_pids "$pid")
    kill -"${SERVER_STOP_SIGNAL:-TERM}" "$pid" 2>/dev/null || true
    deadline=$((EPOCHSECONDS + STOP_TIMEOUT_S))
    while :; do
        left=0
        for p in "${tree[@]}"; do
            if alive "${p% *}"; then left=1; fi
        done
        ((left && EPOCHSECONDS < deadline)) || break
        sleep 0.05
    done
    for p in "${tree[@]}"; do
        start=${p#* }
        p=${p% *}
        if alive "$p" && [[ ${STAT[19]} == "$start" ]]; then
            warn "PID $p still running ${STOP_TIMEOUT_S}s after SIG${SERVER_STOP_SIGNAL:-TERM}: SIGKILL"
            kill -KILL "$p" 2>/dev/null || true
        fi
    done
    wait "$pid" 2>/dev/null || true
    SERVER_PID=
    SERVER_STOP_SIGNAL=TERM
}

# ---------------------------------------------------------------- measuring

# measure OUTFILE TIMEOUT_S WRK_COMMAND...: runs the wrk command (already
# pinned) once, bounded by `timeout`, output to OUTFILE, and around it reads
# the server tree's CPU ticks, its peak RSS (reset just before), wrk's own CPU
# time and both cores' busy ticks. Sets M_TICKS, M_WALL (s), M_WRK_SECS,
# M_CORES0, M_CORES1 ("server client" busy ticks before/after), M_IRQ0,
# M_IRQ1 (the same for irq + softirq) and M_PEAK_RSS_KIB. Returns wrk's status (124 when it overran).
measure() {
    local out=$1 limit=$2 before after t0 t1 c0 c1 status=0
    shift 2
    tree_reset_peak_rss "$SERVER_PID"
    before=$(tree_ticks "$SERVER_PID")
    times >"$WORK/times0"
    M_CORES0=$(core_busy_ticks)
    M_IRQ0=$(core_irq_ticks)
    t0=$EPOCHREALTIME
    timeout -k 5 "$limit" "$@" >"$out" 2>&1 || status=$?
    t1=$EPOCHREALTIME
    M_CORES1=$(core_busy_ticks)
    M_IRQ1=$(core_irq_ticks)
    times >"$WORK/times1"
    c0=$(children_cpu_secs "$WORK/times0")
    c1=$(children_cpu_secs "$WORK/times1")
    after=$(tree_ticks "$SERVER_PID")
    M_PEAK_RSS_KIB=$(tree_peak_rss_kib "$SERVER_PID")
    M_TICKS=$((after - before))
    M_WALL=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')
    M_WRK_SECS=$(awk -v a="$c0" -v b="$c1" 'BEGIN { printf "%.3f", b - a }')
    return "$status"
}

# Busy percentages from the last measure, "server wrk other0 other1", where
# otherN is the busy time of that core that neither the server (server core)
# nor wrk (client core) accounts for: other processes, interrupts, steal. A
# few percent is the kernel's own share of the traffic.
measured_busy() {
    awk -v ticks="$M_TICKS" -v hz="$CLK_TCK" -v wall="$M_WALL" -v wrk="$M_WRK_SECS" \
        -v cores0="$M_CORES0" -v cores1="$M_CORES1" '
        BEGIN {
            wrk_ticks = wrk * hz
            split(cores0, k0, " "); split(cores1, k1, " ")
            other0 = (k1[1] - k0[1]) - ticks; other1 = (k1[2] - k0[2]) - wrk_ticks
            if (other0 < 0) other0 = 0
            if (other1 < 0) other1 = 0
            printf "%.0f %.0f %.0f %.0f\n", 100 * ticks / hz / wall, 100 * wrk_ticks / hz / wall,
                100 * other0 / hz / wall, 100 * other1 / hz / wall
        }'
}

# Interrupt + softirq share of each core over the last measure, "irq0 irq1" (%).
measured_irq() {
    awk -v hz="$CLK_TCK" -v wall="$M_WALL" -v i0="$M_IRQ0" -v i1="$M_IRQ1" '
        BEGIN {
            split(i0, a, " "); split(i1, b, " ")
            printf "%.0f %.0f\n", 100 * (b[1] - a[1]) / hz / wall, 100 * (b[2] - a[2]) / hz / wall
        }'
}

# wrk's summary lines to numbers.
wrk_requests() { awk '/ requests in / { print $1 }' "$1"; }
wrk_rps() { awk '/^Requests\/sec:/ { print $2 }' "$1"; }
# Socket errors (connect, read, write, timeout) and responses with a status
# above 399 (wrk's "Non-2xx or 3xx"). wrk 4 counts a "timeout" for each
# response slower than --timeout; a request never answered at all counts
# nothing (see conn_progress for that).
wrk_socket_errors() { awk '/Socket errors:/ { gsub(",", ""); n += $4 + $6 + $8 + $10 } END { print n + 0 }' "$1"; }
wrk_timeouts() { awk '/Socket errors:/ { gsub(",", ""); n += $10 } END { print n + 0 }' "$1"; }
wrk_non2xx() { awk '/Non-2xx or 3xx responses:/ { n += $NF } END { print n + 0 }' "$1"; }
wrk_errors() { echo $(($(wrk_socket_errors "$1") + $(wrk_non2xx "$1"))); }
# Milliseconds: wrk_latency_ms FILE 50|75|90|99 (needs --latency), or max.
wrk_latency_ms() {
    awk -v want="$2" '
        function ms(v) {
            if (v ~ /us$/) return v / 1000
            if (v ~ /ms$/) return v + 0
            if (v ~ /m$/) return v * 60000
            if (v ~ /s$/) return v * 1000
            return v + 0
        }
        want == "max" && $1 == "Latency" && NF >= 5 { printf "%.3f\n", ms($4); exit }
        want != "max" && $1 == want "%" { printf "%.3f\n", ms($2); exit }' "$1"
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

# The arguments as one line a shell would read back as the same words.
shell_words() {
    local line
    printf -v line '%q ' "$@"
    echo "${line% }"
}

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

# apt-get install, with one `apt-get update` per run the first time a
# package is not found.
APT_UPDATED=
apt_install() {
    command -v apt-get >/dev/null || die "apt-get is not available: install $* by hand"
    log "installing $* with apt-get"
    if as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >>"$WORK/apt.log" 2>&1; then
        return 0
    fi
    if [[ -z $APT_UPDATED ]]; then
        as_root apt-get update -q >>"$WORK/apt.log" 2>&1 || true
        APT_UPDATED=1
        if as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >>"$WORK/apt.log" 2>&1; then
            return 0
        fi
    fi
    tail -n 20 "$WORK/apt.log" >&2
    return 1
}

# need_cmd COMMAND [PACKAGE...]: installs the first package that provides
# COMMAND when it is missing (several: alternatives, e.g. nginx-light nginx).
need_cmd() {
    local cmd=$1 pkg
    shift
    (($#)) || set -- "$cmd"
    command -v "$cmd" >/dev/null && return 0
    for pkg in "$@"; do
        if apt_install "$pkg" && command -v "$cmd" >/dev/null; then return 0; fi
    done
    die "could not install $* (for $cmd)"
}

# need_pkg PACKAGE: installs a Debian package (a library, headers) if absent.
need_pkg() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed' && return 0
    apt_install "$1" || die "could not install $1"
}

# Cores SERVER_CORE and CLIENT_CORE must exist: server and wrk each get one.
need_cores() {
    taskset -c "$SERVER_CORE,$CLIENT_CORE" true 2>/dev/null ||
        die "this harness needs cores $SERVER_CORE and $CLIENT_CORE (server and wrk each on their own); this machine has $(nproc)"
}

# ---------------------------------------------------------------- spindle

# The Python every server runs on, PY: SPINDLE_PYTHON; else, when SPINDLE_BIN names a
# `spindle` command, the Python of its venv; else the newest CPython found
# (scripts/find-python.sh --any). Sets PY (the real interpreter, not a shim), PY_SOURCE,
# PY_VERSION (X.Y.Z) and PY_MINOR (X.Y).
runs_python() { [[ -n $1 ]] && "$1" -c 'import sys' >/dev/null 2>&1; }
pick_python() {
    local shebang
    PY=
    if [[ -n ${SPINDLE_PYTHON:-} ]]; then
        runs_python "$SPINDLE_PYTHON" || die "SPINDLE_PYTHON=$SPINDLE_PYTHON does not run"
        PY=$SPINDLE_PYTHON PY_SOURCE="SPINDLE_PYTHON"
    elif [[ -n ${SPINDLE_BIN:-} ]]; then
        [[ -x $SPINDLE_BIN ]] || die "SPINDLE_BIN=$SPINDLE_BIN is not an executable file"
        shebang=$(head -n 1 "$SPINDLE_BIN")
        PY=${shebang#\#!}
        runs_python "$PY" || die "SPINDLE_BIN=$SPINDLE_BIN is not a spindle console script (its first line: $shebang)"
        PY_SOURCE="the venv of SPINDLE_BIN"
    else
        PY=$("$ROOT/scripts/find-python.sh" --any) || die "no CPython >= 3.11 found: set SPINDLE_PYTHON"
        PY_SOURCE="scripts/find-python.sh --any"
    fi
    PY=$("$PY" -c 'import sys; print(sys.executable)')
    PY_VERSION=$(py_version "$PY")
    PY_MINOR=${PY_VERSION%.*}
}

# install_spindle VENV: the Spindle to measure. SPINDLE_BIN when set; else this checkout's
# wheel for $PY (scripts/wheel.sh), installed into VENV, whose `spindle` it then is. Sets
# SPINDLE_BIN, SPINDLE_LIB (the extension module it loads), SPINDLE_VERSION and
# SPINDLE_FINGERPRINT.
install_spindle() {
    local venv=$1 wheel
    if [[ -z ${SPINDLE_BIN:-} ]]; then
        log "building Spindle's wheel for Python $PY_VERSION"
        wheel=$("$ROOT/scripts/wheel.sh" "$PY" 2>"$WORK/wheel.log") ||
            die "scripts/wheel.sh failed: $(tail -n 20 "$WORK/wheel.log")"
        "$venv/bin/python" -m pip install -q --disable-pip-version-check --force-reinstall --no-deps "$wheel" \
            >"$WORK/pip-spindle.log" 2>&1 || die "installing $wheel failed: $(tail -n 5 "$WORK/pip-spindle.log")"
        SPINDLE_BIN=$venv/bin/spindle
    fi
    SPINDLE_BIN=$(cd "$(dirname "$SPINDLE_BIN")" && pwd)/$(basename "$SPINDLE_BIN")
    local shebang
    shebang=$(head -n 1 "$SPINDLE_BIN")
    SPINDLE_LIB=$("${shebang#\#!}" -c 'import spindle._native as m; print(m.__file__)') ||
        die "$SPINDLE_BIN: its Python cannot load spindle._native"
    # Fingerprint the extension now: a build or install beside the benchmark can replace
    # it, and the report must name the one that was measured.
    SPINDLE_FINGERPRINT=$(spindle_fingerprint)
    SPINDLE_VERSION=$(timeout -k 2 5 "$SPINDLE_BIN" --version 2>&1 </dev/null | tr '\n' ' ' || true)
    SPINDLE_VERSION=${SPINDLE_VERSION% }
}
spindle_fingerprint() { echo "sha256 $(sha256sum "$SPINDLE_LIB" | cut -c1-16); built $(date -u -r "$SPINDLE_LIB" '+%F %T UTC')"; }

# Prints a warning line (markdown list item) if the extension changed since
# install_spindle, nothing otherwise.
spindle_changed_note() {
    if [[ $(spindle_fingerprint) != "$SPINDLE_FINGERPRINT" ]]; then
        echo "- WARNING: $SPINDLE_LIB was replaced during the run (a build beside it?): the spindle rows may mix two builds; rerun."
    fi
}

py_version() { "$1" -c 'import sys; print(sys.version.split()[0])'; }

# ---------------------------------------------------------------- perf venv

# ensure_venv VENV PIP_NAME...: a venv at VENV made with $PY (recreated when
# its Python version differs), holding each distribution; only missing ones
# are installed, one pip call each, so one that fails to build does not stop
# the others. Sets VENV_MISSING to those that could not be installed.
ensure_venv() {
    local venv=$1 dist
    shift
    if [[ -x $venv/bin/python ]] && [[ $(py_version "$venv/bin/python" 2>/dev/null || true) != "$PY_VERSION" ]]; then
        [[ -f $venv/pyvenv.cfg ]] || die "$venv exists but is not a venv: remove it or set PERF_VENV"
        log "recreating $venv for Python $PY_VERSION"
        "$PY" -m venv --clear "$venv" || die "could not recreate the venv $venv with $PY"
    elif [[ ! -x $venv/bin/python ]]; then
        log "creating $venv with $PY ($PY_VERSION, from $PY_SOURCE)"
        mkdir -p "$(dirname "$venv")"
        "$PY" -m venv "$venv" || die "could not create a venv with $PY (on Debian's python3: apt-get install python3-venv)"
    fi
    VENV_MISSING=()
    for dist in "$@"; do
        venv_has "$venv" "$dist" && continue
        log "installing $dist into $venv"
        if ! "$venv/bin/pip" install -q "$dist" >"$WORK/pip-$dist.log" 2>&1; then
            warn "pip install $dist failed: $(tail -n 3 "$WORK/pip-$dist.log" | tr '\n' ' ')"
            VENV_MISSING+=("$dist")
        fi
    done
}
venv_has() { "$1/bin/python" -c 'import importlib.metadata, sys; importlib.metadata.version(sys.argv[1])' "$2" >/dev/null 2>&1; }
venv_version() { "$1/bin/python" -c 'import importlib.metadata, sys; print(importlib.metadata.version(sys.argv[1]))' "$2" 2>/dev/null || echo "not installed"; }
