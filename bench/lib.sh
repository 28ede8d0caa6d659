# bench/lib.sh - helpers shared by compare.sh and backlog.sh (sourced, not run).
#
# Everything here is loopback only and every wait has a deadline.

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$BENCH_DIR/.." && pwd)
OUTPOST_BIN="${OUTPOST_BIN:-$REPO_DIR/target/release/outpost}"
OUTPOST_START_TIMEOUT="${OUTPOST_START_TIMEOUT:-30}"   # s to wait for the listener
OUTPOST_STOP_TIMEOUT="${OUTPOST_STOP_TIMEOUT:-30}"     # s to wait after SIGINT before SIGKILL
OUTPOST_PID=""

log() { echo "[$(date +%H:%M:%S)] $*"; }
die() { echo "$(basename "$0"): $*" >&2; exit 1; }
now() { echo "${EPOCHREALTIME:-$(date +%s.%N)}"; }
calc() { awk "BEGIN { printf \"$1\", $2 }"; }          # calc FORMAT EXPR
later_than() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a > b) }'; }   # true if $1 > $2

port_listening() { ss -Hltn "sport = :$1" 2>/dev/null | grep -q .; }
tcp_connects() { timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null; }

# wait_port_free PORT SECONDS: true once nothing listens on PORT
wait_port_free() {
    local end; end=$(calc "%.3f" "$(now) + $2")
    while port_listening "$1"; do
        later_than "$(now)" "$end" && return 1
        sleep 0.2
    done
}

# --- /proc readers -----------------------------------------------------------------
proc_state() {     # R/S/D/Z/... or empty if gone
    local s; s=$(cat "/proc/$1/stat" 2>/dev/null) || return 0
    s="${s##*) }"; echo "${s%% *}"
}
proc_cpu_s() {     # utime+stime of a live pid (all threads), seconds
    local s; s=$(cat "/proc/$1/stat" 2>/dev/null) || { echo 0; return; }
    s="${s##*) }"
    # shellcheck disable=SC2086
    set -- $s      # after "pid (comm) ": $1=state ... $12=utime $13=stime
    calc "%.2f" "(${12} + ${13}) / $(getconf CLK_TCK)"
}
proc_kb() {        # proc_kb PID FIELD  (VmHWM, VmRSS, ...) -> kB, 0 if unknown
    awk -v f="$2:" '$1 == f { print $2; found=1 } END { if (!found) print 0 }' "/proc/$1/status" 2>/dev/null || echo 0
}

# --- Outpost -----------------------------------------------------------------------
# write_outpost_config FILE DATA_DIR LISTEN_PORT ROUTE_PORT [EXTRA_TOML]
write_outpost_config() {
    cat > "$1" <<EOF
hostname = "relay.bench.test"
data_dir = "$2"
[[listeners]]
addr = "127.0.0.1:$3"
mode = "relay"
[relay]
trusted_networks = ["127.0.0.0/8"]
[[routes]]
domain = "*"
to = "127.0.0.1:$4"
tls = "none"
${5:-}
EOF
}

# start_outpost CONFIG LOG PORT: starts `outpost serve` at RUST_LOG=warn, sets OUTPOST_PID,
# and waits (bounded) until PORT accepts TCP connections.
start_outpost() {
    local cfg=$1 logf=$2 port=$3 end
    [[ -x "$OUTPOST_BIN" ]] || die "no Outpost binary at $OUTPOST_BIN (cargo build --release)"
    RUST_LOG="${OUTPOST_RUST_LOG:-warn}" "$OUTPOST_BIN" --config "$cfg" serve 2>> "$logf" &
    OUTPOST_PID=$!
    end=$(calc "%.3f" "$(now) + $OUTPOST_START_TIMEOUT")
    until tcp_connects "$port"; do
        if [[ -z "$(proc_state "$OUTPOST_PID")" || "$(proc_state "$OUTPOST_PID")" == Z ]]; then
            wait "$OUTPOST_PID" 2>/dev/null; OUTPOST_PID=""
            echo "outpost exited during start-up; log $logf:" >&2; tail -20 "$logf" >&2; return 1
        fi
        if later_than "$(now)" "$end"; then
            echo "outpost did not listen on 127.0.0.1:$port within ${OUTPOST_START_TIMEOUT}s; log $logf:" >&2
            tail -20 "$logf" >&2; stop_outpost; return 1
        fi
        sleep 0.1
    done
}

# stop_outpost: SIGINT, wait up to OUTPOST_STOP_TIMEOUT, then SIGKILL. Sets OUTPOST_RC.
stop_outpost() {
    OUTPOST_RC=""
    [[ -n "$OUTPOST_PID" ]] || return 0
    local pid=$OUTPOST_PID end st
    OUTPOST_PID=""
    kill -INT "$pid" 2>/dev/null
    end=$(calc "%.3f" "$(now) + $OUTPOST_STOP_TIMEOUT")
    while st=$(proc_state "$pid"); [[ -n "$st" && "$st" != Z ]]; do
        if later_than "$(now)" "$end"; then
            echo "outpost (pid $pid) still running ${OUTPOST_STOP_TIMEOUT}s after SIGINT: SIGKILL" >&2
            kill -KILL "$pid" 2>/dev/null; break
        fi
        sleep 0.1
    done
    wait "$pid" 2>/dev/null; OUTPOST_RC=$?
}

# outpost_rev: the commit the binary was built from, as far as git can tell
outpost_rev() {
    local r; r=$(git -C "$REPO_DIR" rev-parse --short HEAD 2>/dev/null) || { echo unknown; return; }
    git -C "$REPO_DIR" diff --quiet HEAD -- src Cargo.toml Cargo.lock 2>/dev/null || r="$r-dirty"
    echo "$r"
}

build_outpost() {
    if [[ "${BUILD:-1}" == 1 ]]; then
        log "cargo build --release (BUILD=0 skips)"
        (cd "$REPO_DIR" && cargo build --release --quiet) || die "cargo build --release failed"
    fi
    [[ -x "$OUTPOST_BIN" ]] || die "no Outpost binary at $OUTPOST_BIN"
}

# --- smtp-source / smtp-sink ---------------------------------------------------------
findtool() {       # findtool NAME -> path
    local t
    t=$(command -v "$1" 2>/dev/null) && { echo "$t"; return; }
    for d in /usr/sbin /usr/lib/postfix/sbin /usr/libexec/postfix /usr/local/sbin; do
        [[ -x $d/$1 ]] && { echo "$d/$1"; return; }
    done
    return 1
}
last_counter() {   # last number in the tail of an smtp-source -c / smtp-sink -c output file
    local c; c=$(tail -c 64 "$1" 2>/dev/null)
    if [[ $c =~ ([0-9]+)[^0-9]*$ ]]; then echo "${BASH_REMATCH[1]}"; else echo 0; fi
}
sink_counter() {   # last "mesg=N" of smtp-sink -c
    local c; c=$(tail -c 64 "$1" 2>/dev/null)
    if [[ $c =~ .*mesg=([0-9]+) ]]; then echo "${BASH_REMATCH[1]}"; else echo 0; fi
}

median() {         # median of the arguments (empty if none)
    printf '%s\n' "$@" | awk 'NF { v[n++] = $1 } END { if (!n) exit;
        for (i = 0; i < n; i++) for (j = i + 1; j < n; j++) if (v[j] < v[i]) { t = v[i]; v[i] = v[j]; v[j] = t }
        if (n % 2) print v[(n - 1) / 2]; else print (v[n / 2 - 1] + v[n / 2]) / 2 }'
}
