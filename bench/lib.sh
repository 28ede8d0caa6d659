# bench/lib.sh - helpers shared by the bench scripts (sourced, not run).
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

# --- either relay, Postfix or Outpost --------------------------------------------------
SHARED_BENCH="${SHARED_BENCH:-$(cd "$BENCH_DIR/../../shared/bench" 2>/dev/null && pwd)}"
POSTFIX_SETUP="$SHARED_BENCH/postfix-setup.sh"
POSTFIX_UP=0; OPENDKIM_PID=""; RELAY_CPU0=0

postfix_cpu_s() {  # cumulative CPU of the Postfix master tree (live processes + reaped children)
    local m tck; m=$(tr -d ' ' < /var/spool/postfix/pid/master.pid 2>/dev/null) || { echo 0; return; }
    tck=$(getconf CLK_TCK)
    { cat "/proc/$m/stat"; for p in $(pgrep -P "$m"); do cat "/proc/$p/stat" 2>/dev/null; done; } 2>/dev/null |
        awk -v t="$tck" '{ sub(/^.*\) /, ""); s += $12 + $13; if (NR == 1) s += $14 + $15 } END { printf "%.2f", s / t }'
}
postfix_queue_len() { find /var/spool/postfix/{incoming,active,deferred,maildrop,hold} -type f 2>/dev/null | wc -l; }

# start_opendkim: an OpenDKIM signer for source.test (RSA-2048), its CPU counted with
# Postfix's (OPENDKIM_PID). OpenDKIM refuses a key or configuration under a directory
# others may write (such as /tmp), hence OPENDKIM_DIR. It listens on a UNIX socket in
# Postfix's chroot, as Debian sets them up: over TCP loopback, the milter's small
# writes met delayed ACKs and held every smtpd to ~11 messages/s with the CPUs idle.
OPENDKIM_DIR="${OPENDKIM_DIR:-/var/lib/outpost-bench-opendkim}"
OPENDKIM_SOCKET_DIR=/var/spool/postfix/outpost-bench-opendkim   # /outpost-bench-opendkim in the chroot
start_opendkim() {
    local dir=$OPENDKIM_DIR end
    rm -rf "$OPENDKIM_SOCKET_DIR"; mkdir -p -m 755 "$OPENDKIM_SOCKET_DIR"; chown opendkim "$OPENDKIM_SOCKET_DIR"
    command -v opendkim >/dev/null || die "DKIM=1 needs OpenDKIM for Postfix: apt-get install opendkim opendkim-tools"
    rm -rf "$dir"; mkdir -p -m 700 "$dir"
    opendkim-genkey -b 2048 -d source.test -s bench -D "$dir" || die "opendkim-genkey failed"
    chown -R opendkim "$dir"
    printf '%s\n' "Syslog no" "Mode s" "Domain source.test" "Selector bench" "KeyFile $dir/bench.private" \
        "Canonicalization relaxed/relaxed" "SignatureAlgorithm rsa-sha256" \
        "Socket local:$OPENDKIM_SOCKET_DIR/sock" "UMask 000" "InternalHosts 127.0.0.0/8" "UserID opendkim" \
        > "$dir/opendkim.conf"
    opendkim -f -x "$dir/opendkim.conf" 2> "$dir/opendkim.log" &
    OPENDKIM_PID=$!
    end=$(calc "%.3f" "$(now) + 30")
    until [[ -S "$OPENDKIM_SOCKET_DIR/sock" ]]; do
        later_than "$(now)" "$end" && { cat "$dir/opendkim.log" >&2; die "opendkim did not listen on $OPENDKIM_SOCKET_DIR/sock"; }
        sleep 0.1
    done
}
stop_opendkim() {
    [[ -n "$OPENDKIM_PID" ]] || return 0
    kill -TERM "$OPENDKIM_PID" 2>/dev/null; wait "$OPENDKIM_PID" 2>/dev/null; OPENDKIM_PID=""
}
relay_cpu_s() {    # relay_cpu_s RELAY: CPU seconds of the running relay (Postfix: with OpenDKIM)
    if [[ $1 == postfix ]]; then
        local c; c=$(postfix_cpu_s)
        [[ -n "$OPENDKIM_PID" ]] && c=$(calc "%.2f" "$c + $(proc_cpu_s "$OPENDKIM_PID")")
        echo "$c"
    else
        proc_cpu_s "$OUTPOST_PID"
    fi
}

# relay_start RELAY DIR PORT SINK_PORT: a fresh Postfix (postfix-setup.sh, queue emptied)
# or Outpost (new data dir DIR/data) relaying everything from loopback to SINK_PORT.
# With DKIM=1 both sign every message From: bench@source.test with an RSA-2048 key:
# Outpost after `outpost domain add source.test`, Postfix through OpenDKIM as a milter
# (Debian package opendkim), the usual way of giving Postfix DKIM. Sets RELAY_CPU0.
relay_start() {
    local relay=$1 dir=$2 port=$3 sink_port=$4 end
    mkdir -p "$dir"
    if [[ $relay == postfix ]]; then
        postsuper -d ALL >/dev/null 2>&1     # no mail left over from an earlier run
        mkdir -p /tmp/postfix-bench && : > /tmp/postfix-bench/maillog
        "$POSTFIX_SETUP" "127.0.0.1:$port" "$sink_port" > "$dir/postfix-setup.log" 2>&1 ||
            { cat "$dir/postfix-setup.log" >&2; die "postfix-setup.sh failed"; }
        POSTFIX_UP=1
        if [[ "${DKIM:-0}" == 1 ]]; then
            start_opendkim
            postconf -e "smtpd_milters = unix:/${OPENDKIM_SOCKET_DIR##*/}/sock" "non_smtpd_milters = \$smtpd_milters" \
                "milter_default_action = tempfail" || die "postconf (milter) failed"
            postfix reload >/dev/null 2>&1 || die "postfix reload failed"
            # only smtpd processes started after the master re-read main.cf use the milter
            end=$(calc "%.3f" "$(now) + 30")
            until grep -q 'reload -- version' /tmp/postfix-bench/maillog 2>/dev/null; do
                later_than "$(now)" "$end" && die "Postfix did not log its reload"
                sleep 0.1
            done
        fi
        end=$(calc "%.3f" "$(now) + 30")
        until tcp_connects "$port"; do later_than "$(now)" "$end" && die "Postfix does not listen on $port"; sleep 0.1; done
    else
        write_outpost_config "$dir/outpost.toml" "$dir/data" "$port" "$sink_port"
        if [[ "${DKIM:-0}" == 1 ]]; then
            "$OUTPOST_BIN" --config "$dir/outpost.toml" domain add source.test > "$dir/domain-add.out" 2>&1 ||
                { cat "$dir/domain-add.out" >&2; die "outpost domain add failed"; }
        fi
        start_outpost "$dir/outpost.toml" "$dir/outpost.log" "$port" || die "Outpost did not start"
    fi
    RELAY_CPU0=$(relay_cpu_s "$relay")
}

# relay_stop RELAY DIR: stops what relay_start started. Sets RELAY_CPU (seconds used
# since relay_start), RELAY_HWM (Outpost's peak RSS in kB; empty for Postfix),
# RELAY_RETRIED (deliveries deferred at least once or not delivered) and RELAY_ERR.
relay_stop() {
    local relay=$1 dir=$2 cpu1 q
    RELAY_HWM=""; RELAY_RETRIED=""; RELAY_ERR=""
    cpu1=$(relay_cpu_s "$relay")
    if [[ $relay == postfix ]]; then
        RELAY_RETRIED=$(grep -c 'status=deferred' /tmp/postfix-bench/maillog 2>/dev/null)
        gzip -c /tmp/postfix-bench/maillog > "$dir/maillog.gz" 2>/dev/null
        q=$(postfix_queue_len)
        [[ $q -ne 0 ]] && RELAY_ERR="postfix queue not empty: $q"
        "$POSTFIX_SETUP" stop >/dev/null 2>&1; POSTFIX_UP=0
        stop_opendkim
    else
        RELAY_HWM=$(proc_kb "$OUTPOST_PID" VmHWM)
        # the store's accept stage histograms (bench/stages.py reads them)
        curl -s --max-time 5 "http://127.0.0.1:8025/metrics" > "$dir/metrics.txt" 2>/dev/null
        stop_outpost
        [[ "$OUTPOST_RC" == 0 ]] || RELAY_ERR="outpost exit status $OUTPOST_RC"
        if command -v sqlite3 >/dev/null && [[ -f "$dir/data/outpost.db" ]]; then
            RELAY_RETRIED=$(sqlite3 -readonly "$dir/data/outpost.db" \
                "SELECT count(*) FROM recipients WHERE attempts > 1 OR status <> 'delivered'" 2>/dev/null)
        fi
        grep -E ' (ERROR|WARN) ' "$dir/outpost.log" | grep -v 'self-signed certificate' | head -3 | sed 's/^/    outpost log: /'
        [[ "${KEEP_DATA:-0}" == 1 ]] || rm -rf "$dir/data"
    fi
    RELAY_CPU=$(calc "%.2f" "$cpu1 - $RELAY_CPU0")
}

# relay_cleanup: for EXIT traps; stops whichever relay is up and drops Postfix's queue
relay_cleanup() {
    stop_outpost
    if [[ $POSTFIX_UP == 1 ]]; then
        "$POSTFIX_SETUP" stop >/dev/null 2>&1; postsuper -d ALL >/dev/null 2>&1
    fi
    POSTFIX_UP=0
    stop_opendkim
}

# check_signed PORT SINK_PORT DIR: one message through the relay on PORT into a
# temporary dumping smtp-sink on SINK_PORT must arrive with a DKIM-Signature (run
# before the measured load, so a relay that does not sign is caught, not measured)
check_signed() {
    local port=$1 sink_port=$2 pid end f=""
    # smtp-sink writes as nobody, who may not enter the caller's (mktemp, 0700) directory
    local dir; dir=$(mktemp -d /tmp/outpost-signed.XXXXXX) && chmod 777 "$dir" || die "check_signed: mktemp failed"
    "$(findtool smtp-sink)" -u nobody -d "$dir/%M" "127.0.0.1:$sink_port" 16 2> "$dir/sink.err" &
    pid=$!
    end=$(calc "%.3f" "$(now) + 30")
    until tcp_connects "$sink_port"; do later_than "$(now)" "$end" && die "check_signed: smtp-sink did not start"; sleep 0.1; done
    "$(findtool smtp-source)" -m 1 -l 1024 -f bench@source.test -t rcpt@example.test "127.0.0.1:$port" ||
        die "check_signed: smtp-source failed"
    end=$(calc "%.3f" "$(now) + 60")
    until f=$(find "$dir" -type f ! -name sink.err | head -1); [[ -n "$f" ]]; do
        later_than "$(now)" "$end" && { kill "$pid"; cat "$dir/sink.err" >&2; die "check_signed: the message did not reach the sink"; }
        sleep 0.1
    done
    kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null
    grep -q '^DKIM-Signature:' "$f" || die "check_signed: the relay on $port did not sign ($f)"
    cp "$f" "$3/signed-check.eml"; rm -rf "$dir"
}
