#!/usr/bin/env bash
# auth_submission.sh - authenticated submission with a new connection per message:
# connect, EHLO, STARTTLS, EHLO, AUTH PLAIN, one 1 KB message, QUIT, from N clients at
# once on one address (fsync on in both relays). Three relays in the same run,
# alternating:
#
#   postfix-dovecot  Postfix (the shared anchor set-up, postfix-setup.sh) with STARTTLS
#                    and SASL from Debian's dovecot-core (`smtpd_sasl_type = dovecot`),
#                    the password hashed with Dovecot's default scheme (`doveadm pw`:
#                    {CRYPT}, bcrypt), Dovecot's auth cache as shipped (off);
#   outpost-auth     Outpost's submission listener (STARTTLS + AUTH PLAIN);
#   outpost-tls      Outpost's relay listener, trusted loopback: the same STARTTLS
#                    traffic without AUTH (what AUTH costs on top).
#
# Usage: bench/auth_submission.sh            REPS=3, CLIENTS="20 100", MESSAGES=2000
# Environment: REPS, CLIENTS, MESSAGES, RELAYS="postfix-dovecot outpost-auth outpost-tls",
#   PORT=2525 SINK_PORT=2526 PLAIN_PORT=2527, BUILD=1 (0: use the existing release build),
#   RESULTS_CSV (default bench/results/<date>-auth.csv), WORKDIR.
# Needs root (postfix-setup.sh rewrites /etc/postfix), postfix, dovecot-core, openssl.
# The load is bench/smtp_latency.rs with --per-connection --starttls --auth.
set -uo pipefail
source "$(dirname "$0")/lib.sh"

REPS="${REPS:-3}"; CLIENTS="${CLIENTS:-20 100}"; MESSAGES="${MESSAGES:-2000}"; SIZE=1024
RELAYS="${RELAYS:-postfix-dovecot outpost-auth outpost-tls}"
PORT="${PORT:-2525}"; SINK_PORT="${SINK_PORT:-2526}"; PLAIN_PORT="${PLAIN_PORT:-2527}"
RUN_ID=$(date +%Y%m%dT%H%M%S)
RESULTS_CSV="${RESULTS_CSV:-$BENCH_DIR/results/$(date +%Y-%m-%d)-auth.csv}"
WORKDIR="${WORKDIR:-$(mktemp -d /tmp/outpost-auth-bench.XXXXXX)}"
LOADGEN="${LOADGEN:-$REPO_DIR/target/release/examples/smtp_latency}"
BENCH_USER=bench
BENCH_PASSWORD=benchSubmissionPassword42
# Dovecot's files outside /tmp: its auth process refuses world-writable parents.
DOVECOT_DIR="${DOVECOT_DIR:-/var/lib/outpost-bench-dovecot}"
DOVECOT_SOCKET=private/outpost-bench-auth     # relative to Postfix's queue directory

[[ $(id -u) == 0 ]] || die "needs root (postfix-setup.sh rewrites /etc/postfix)"
command -v dovecot >/dev/null && command -v doveadm >/dev/null || die "needs dovecot-core (apt-get install dovecot-core)"
command -v openssl >/dev/null || die "needs openssl"
SINK=$(findtool smtp-sink) || die "smtp-sink not found (Debian package postfix)"
build_outpost
if [[ "${BUILD:-1}" == 1 ]]; then
    (cd "$REPO_DIR" && cargo build --release --quiet --example smtp_latency) || die "building smtp_latency failed"
fi
[[ -x "$LOADGEN" ]] || die "no load generator at $LOADGEN"
postfix status >/dev/null 2>&1 && die "Postfix is already running; stop it with '$POSTFIX_SETUP stop'"
for p in $PORT $SINK_PORT $PLAIN_PORT; do port_listening $p && die "port $p is in use"; done
mkdir -p "$(dirname "$RESULTS_CSV")" "$WORKDIR"
REV=$(outpost_rev)

SINK_PID=""; DOVECOT_UP=0
stop_dovecot() {
    [[ $DOVECOT_UP == 1 ]] || return 0
    doveadm -c "$DOVECOT_DIR/dovecot.conf" stop >/dev/null 2>&1; DOVECOT_UP=0
}
cleanup() {
    trap - EXIT INT TERM
    [[ -n "$SINK_PID" ]] && { kill "$SINK_PID" 2>/dev/null; wait "$SINK_PID" 2>/dev/null; }
    relay_cleanup
    stop_dovecot
}
trap cleanup EXIT
trap 'echo "auth_submission: interrupted" >&2; exit 130' INT TERM

# The same kind of certificate for both relays: ECDSA P-256, as Outpost generates.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 -subj /CN=relay.bench.test \
    -keyout "$WORKDIR/key.pem" -out "$WORKDIR/cert.pem" 2>/dev/null || die "openssl req failed"

start_postfix_dovecot() {  # DIR
    local dir=$1 end
    rm -rf "$DOVECOT_DIR"; mkdir -p -m 755 "$DOVECOT_DIR"
    echo "$BENCH_USER:$(doveadm pw -p "$BENCH_PASSWORD")" > "$DOVECOT_DIR/users"
    cat > "$DOVECOT_DIR/dovecot.conf" <<EOF
protocols =
base_dir = $DOVECOT_DIR/run
state_dir = $DOVECOT_DIR/state
log_path = $dir/dovecot.log
ssl = no
auth_mechanisms = plain login
passdb {
  driver = passwd-file
  args = $DOVECOT_DIR/users
}
userdb {
  driver = static
  args = uid=nobody gid=nogroup home=/nonexistent
}
service auth {
  unix_listener /var/spool/postfix/$DOVECOT_SOCKET {
    mode = 0660
    user = postfix
    group = postfix
  }
}
EOF
    relay_start postfix "$dir" "$PORT" "$SINK_PORT"
    dovecot -c "$DOVECOT_DIR/dovecot.conf" || die "dovecot did not start"
    DOVECOT_UP=1
    end=$(calc "%.3f" "$(now) + 30")
    until [[ -S /var/spool/postfix/$DOVECOT_SOCKET ]]; do
        later_than "$(now)" "$end" && die "dovecot's auth socket did not appear"; sleep 0.1
    done
    cp "$WORKDIR/cert.pem" "$WORKDIR/key.pem" /etc/postfix/ && chmod 600 /etc/postfix/key.pem
    postconf -e "smtpd_tls_security_level = may" "smtpd_tls_cert_file = /etc/postfix/cert.pem" \
        "smtpd_tls_key_file = /etc/postfix/key.pem" "smtpd_tls_auth_only = yes" \
        "smtpd_sasl_auth_enable = yes" "smtpd_sasl_type = dovecot" "smtpd_sasl_path = $DOVECOT_SOCKET" \
        "smtpd_relay_restrictions = permit_sasl_authenticated, reject" || die "postconf failed"
    postfix reload >/dev/null 2>&1 || die "postfix reload failed"
    end=$(calc "%.3f" "$(now) + 30")
    until grep -q 'reload -- version' /tmp/postfix-bench/maillog 2>/dev/null; do
        later_than "$(now)" "$end" && die "Postfix did not log its reload"; sleep 0.1
    done
}

start_outpost_submission() {  # DIR
    local dir=$1
    write_outpost_config "$dir/outpost.toml" "$dir/data" "$PLAIN_PORT" "$SINK_PORT" "
[[listeners]]
addr = \"127.0.0.1:$PORT\"
mode = \"submission\"
[tls]
cert = \"$WORKDIR/cert.pem\"
key = \"$WORKDIR/key.pem\""
    echo "$BENCH_PASSWORD" | "$OUTPOST_BIN" --config "$dir/outpost.toml" user add "$BENCH_USER" \
        --domain source.test --password-stdin > "$dir/user-add.out" 2>&1 || { cat "$dir/user-add.out" >&2; die "user add failed"; }
    start_outpost "$dir/outpost.toml" "$dir/outpost.log" "$PORT" || die "Outpost did not start"
    RELAY_CPU0=$(relay_cpu_s outpost)
}

FIELDS="accepted_per_s accept_p50_ms accept_p99_ms transaction_p50_ms transaction_p99_ms"
[[ -s "$RESULTS_CSV" ]] ||
    echo "run_id,relay,clients,rep,messages,size,accepted,rejected,failed_sessions,${FIELDS// /,},relay_cpu_s,retried_or_undelivered,loadavg1,outpost_rev,rc" > "$RESULTS_CSV"

run_one() {  # RELAY CLIENTS REP
    local relay=$1 n=$2 rep=$3 load rc end f out values="" target=$PORT auth=(--auth "$BENCH_USER:$BENCH_PASSWORD")
    local dir="$WORKDIR/${relay}_c${n}_$rep" kind=outpost
    mkdir -p "$dir"
    for p in $PORT $SINK_PORT $PLAIN_PORT; do wait_port_free $p 30 || die "port $p still in use before $dir"; done
    read -r load _ < /proc/loadavg
    case $relay in
        postfix-dovecot) kind=postfix; start_postfix_dovecot "$dir" ;;
        outpost-auth) start_outpost_submission "$dir" ;;
        outpost-tls) start_outpost_submission "$dir"; target=$PLAIN_PORT; auth=() ;;
        *) die "unknown relay $relay" ;;
    esac
    "$SINK" -c -u nobody "127.0.0.1:$SINK_PORT" 1024 > "$dir/sink.out" 2>&1 &
    SINK_PID=$!
    end=$(calc "%.3f" "$(now) + 30")
    until tcp_connects $SINK_PORT; do later_than "$(now)" "$end" && die "smtp-sink did not start"; sleep 0.1; done

    log "${relay} c$n rep $rep: $n clients, a connection per message, STARTTLS${auth:+ + AUTH PLAIN}, $MESSAGES x $SIZE B, load $load"
    "$LOADGEN" --target "127.0.0.1:$target" --sessions "$n" --messages "$MESSAGES" --size "$SIZE" \
        --per-connection --starttls "${auth[@]}" > "$dir/load.out" 2> "$dir/load.err"
    rc=$?
    end=$(calc "%.3f" "$(now) + 120")
    until (( $(sink_counter "$dir/sink.out") >= MESSAGES )); do
        later_than "$(now)" "$end" && { echo "    WARNING: sink has $(sink_counter "$dir/sink.out") of $MESSAGES"; break; }
        sleep 0.2
    done
    kill "$SINK_PID" 2>/dev/null; wait "$SINK_PID" 2>/dev/null; SINK_PID=""
    relay_stop "$kind" "$dir"
    [[ $kind == postfix ]] && { cp "$DOVECOT_DIR/dovecot.conf" "$dir/"; stop_dovecot; }
    [[ -n "$RELAY_ERR" ]] && echo "    WARNING: $RELAY_ERR"
    [[ $rc == 0 ]] || { echo "    load generator failed (rc=$rc):"; sort "$dir/load.err" | uniq -c | sort -rn | head -3 | sed 's/^/    /'; }
    for f in accepted rejected failed_sessions $FIELDS; do
        out=$(sed -n "s/^$f=//p" "$dir/load.out")
        values+=",$out"
    done
    echo "$RUN_ID,$relay,$n,$rep,$MESSAGES,$SIZE$values,$RELAY_CPU,$RELAY_RETRIED,$load,$REV,$rc" >> "$RESULTS_CSV"
    echo "    $(grep -E '^(accepted_per_s|accept_p50_ms|transaction_p99_ms)=' "$dir/load.out" | tr '\n' ' ') cpu ${RELAY_CPU}s"
    sleep 3
}

log "auth submission run $RUN_ID: REPS=$REPS clients: $CLIENTS, relays: $RELAYS, outpost $REV; results $RESULTS_CSV, logs $WORKDIR"
for n in $CLIENTS; do
    for rep in $(seq 1 "$REPS"); do
        for relay in $RELAYS; do run_one "$relay" "$n" "$rep"; done
    done
done
cleanup

col() { head -1 "$RESULTS_CSV" | tr ',' '\n' | grep -nx "$1" | cut -d: -f1; }
values() {  # RELAY CLIENTS COLUMN -> one value per successful run of this invocation
    awk -F, -v run="$RUN_ID" -v r="$1" -v n="$2" -v c="$(col "$3")" -v crc="$(col rc)" \
        'NR > 1 && $1 == run && $2 == r && $3 == n && $crc == 0 && $c != "" { print $c }' "$RESULTS_CSV"
}
echo
echo "== summary of run $RUN_ID (medians over successful runs; msgs/s accepted, a connection per message)"
for n in $CLIENTS; do
    declare -A rate=()
    for relay in $RELAYS; do
        rate[$relay]=$(median $(values "$relay" "$n" accepted_per_s))
        printf '%-6s %-16s %10s msgs/s   transaction p99 %s ms\n' "c$n" "$relay" "${rate[$relay]}" \
            "$(median $(values "$relay" "$n" transaction_p99_ms))"
    done
    [[ -n "${rate[outpost-auth]:-}" && -n "${rate[postfix-dovecot]:-}" ]] &&
        echo "c$n outpost-auth / postfix-dovecot: $(calc "%.2f" "${rate[outpost-auth]} / ${rate[postfix-dovecot]}")"
    [[ -n "${rate[outpost-auth]:-}" && -n "${rate[outpost-tls]:-}" ]] &&
        echo "c$n outpost-auth / outpost-tls (no AUTH): $(calc "%.2f" "${rate[outpost-auth]} / ${rate[outpost-tls]}")"
    unset rate
done
echo "results: $RESULTS_CSV   logs: $WORKDIR"
