#!/usr/bin/env bash
# bench/api_vs_smtp.sh - messages per second accepted through the HTTP API (bulk,
# personalized: `outpost send`, 100 recipients per POST /v1/messages, each rendered
# from templates) and through SMTP (smtp-source, one recipient per message), against
# one Outpost in one run, both delivering to smtp-sink.
#
# Usage: bench/api_vs_smtp.sh          N=20000 rows / messages each
#   N=20000  BATCH=100  SIZE=1024 (SMTP body)  PORT=2525 HTTP_PORT=8125 SINK_PORT=2526
#   BUILD=0 skips cargo build --release.
#
# Prints, for each path: accepted msgs/s (until the client finished) and delivered
# msgs/s (until smtp-sink had them all). Loopback only; every wait has a deadline.
set -uo pipefail
source "$(dirname "$0")/lib.sh"

N="${N:-20000}"; BATCH="${BATCH:-100}"; SIZE="${SIZE:-1024}"
PORT="${PORT:-2525}"; HTTP_PORT="${HTTP_PORT:-8125}"; SINK_PORT="${SINK_PORT:-2526}"
DEADLINE="${DEADLINE:-600}"
SRC=$(findtool smtp-source) || die "smtp-source not found (Debian package postfix)"
SINK=$(findtool smtp-sink) || die "smtp-sink not found (Debian package postfix)"
for p in $PORT $HTTP_PORT $SINK_PORT; do port_listening "$p" && die "port $p is in use"; done

WORK=$(mktemp -d /tmp/outpost-api-bench.XXXXXX)
SINK_PID=""
cleanup() {
    stop_outpost
    [[ -n "$SINK_PID" ]] && kill "$SINK_PID" 2>/dev/null && wait "$SINK_PID" 2>/dev/null
}
trap cleanup EXIT INT TERM
build_outpost

CFG="$WORK/outpost.toml"
write_outpost_config "$CFG" "$WORK/data" "$PORT" "$SINK_PORT" "[http]
addr = \"127.0.0.1:$HTTP_PORT\""
echo 'bench-password-1' | "$OUTPOST_BIN" --config "$CFG" user add bench --domain source.test --password-stdin > /dev/null \
    || die "user add failed"
sink_user=(); [[ $(id -u) -eq 0 ]] && sink_user=(-u nobody)
"$SINK" -c -m 1024 "${sink_user[@]}" "127.0.0.1:$SINK_PORT" 1024 > "$WORK/sink.out" 2> "$WORK/sink.err" &
SINK_PID=$!
start_outpost "$CFG" "$WORK/outpost.log" "$PORT" || die "Outpost did not start"
until tcp_connects "$HTTP_PORT"; do sleep 0.1; done

# wait_sink WANT START: seconds from START until the sink has WANT messages (or the deadline)
wait_sink() {
    local want=$1 start=$2 end; end=$(calc "%.3f" "$(now) + $DEADLINE")
    while (( $(sink_counter "$WORK/sink.out") < want )); do
        later_than "$(now)" "$end" && { echo "sink has $(sink_counter "$WORK/sink.out") of $want" >&2; break; }
        sleep 0.05
    done
    calc "%.3f" "$(now) - $start"
}

{ echo "email,first_name"; for ((i = 0; i < N; i++)); do echo "rcpt$i@example.test,Name$i"; done; } > "$WORK/rows.csv"
printf 'Hello {{ first_name }},\n\nthis is message for {{ email }}.\n' > "$WORK/body.txt"

log "HTTP API: outpost send, $N personalized messages, $BATCH per request"
base=$(sink_counter "$WORK/sink.out"); t0=$(now)
echo 'bench-password-1' | "$OUTPOST_BIN" --config "$CFG" send --api "http://127.0.0.1:$HTTP_PORT" \
    --user bench --password-stdin --from bench@source.test --to-csv "$WORK/rows.csv" \
    --subject 'Hi {{ first_name }}' --text "$WORK/body.txt" --batch-size "$BATCH" > "$WORK/send.out" 2>&1 \
    || { tail -5 "$WORK/send.out" >&2; die "outpost send failed"; }
t1=$(now)
api_inject=$(calc "%.3f" "$t1 - $t0"); api_e2e=$(wait_sink $((base + N)) "$t0")

log "SMTP: smtp-source, $N messages, 20 sessions, ${SIZE} B"
base=$(sink_counter "$WORK/sink.out"); t0=$(now)
timeout "$DEADLINE" "$SRC" -d -c -s 20 -m "$N" -l "$SIZE" -r 1 -f bench@source.test -t rcpt@example.test \
    "127.0.0.1:$PORT" > "$WORK/source.out" 2> "$WORK/source.err" || die "smtp-source failed"
t1=$(now)
smtp_inject=$(calc "%.3f" "$t1 - $t0"); smtp_e2e=$(wait_sink $((base + N)) "$t0")

echo
echo "== $N messages each, outpost $(outpost_rev), logs $WORK"
printf '%-34s accepted %8.1f msgs/s   delivered %8.1f msgs/s\n' \
    "HTTP API (outpost send, $BATCH/request)" "$(calc "%.1f" "$N / $api_inject")" "$(calc "%.1f" "$N / $api_e2e")"
printf '%-34s accepted %8.1f msgs/s   delivered %8.1f msgs/s\n' \
    "SMTP (smtp-source, 20 sessions)" "$(calc "%.1f" "$N / $smtp_inject")" "$(calc "%.1f" "$N / $smtp_e2e")"
