#!/usr/bin/env bash
# latency.sh - accept latency under load, Outpost against the Postfix anchor, alternating.
#
# Usage: bench/latency.sh [SCENARIO ...]
#   SCENARIO: sat20_10k  20 sessions as fast as the relay answers (closed loop), 20000 x 10 KB:
#                        latency at each relay's own saturation
#             r500_10k   20 sessions offering 500 msgs/s in all, 10000 x 10 KB: latency at
#                        a load both relays carry (Postfix's ceiling here is ~1000 msgs/s)
#             either + "_dkim": both relays sign (see lib.sh relay_start)
#             or a custom NAME:SESSIONS:MESSAGES:SIZE:RATE[:dkim] (RATE 0 = closed loop)
#   default: sat20_10k r500_10k
#
# The load is bench/smtp_latency.rs (`cargo build --release --example smtp_latency`): it
# times every message from its final "." to the relay's reply (accept latency: the
# relay's fsync and answer) and from its scheduled start to that reply (transaction).
# The relay delivers to Postfix's smtp-sink on SINK_PORT during the run, as in
# compare.sh. Each run is one line in bench/results/<date>-latency.csv.
#
# Environment: REPS=3 PAUSE=3 RELAYS="postfix outpost" PORT=2525 SINK_PORT=2526 BUILD=1
#   OUTPOST_BIN, RESULTS_CSV, WORKDIR as in compare.sh.
set -uo pipefail
source "$(dirname "$0")/lib.sh"

REPS="${REPS:-3}"; PAUSE="${PAUSE:-3}"; RELAYS="${RELAYS:-postfix outpost}"
PORT="${PORT:-2525}"; SINK_PORT="${SINK_PORT:-2526}"
RUN_ID=$(date +%Y%m%dT%H%M%S)
RESULTS_CSV="${RESULTS_CSV:-$BENCH_DIR/results/$(date +%Y-%m-%d)-latency.csv}"
WORKDIR="${WORKDIR:-$(mktemp -d /tmp/outpost-latency.XXXXXX)}"
LOADGEN="$REPO_DIR/target/release/examples/smtp_latency"

scenario_spec() {  # NAME -> NAME:SESSIONS:MESSAGES:SIZE:RATE:OPTIONS
    local base=$1 opts=""
    [[ $1 != *:* && $1 == *_dkim ]] && { base=${1%_dkim}; opts=dkim; }
    case "$base" in
        sat20_10k) echo "$1:20:20000:10240:0:$opts" ;;
        r500_10k) echo "$1:20:10000:10240:500:$opts" ;;
        *:*:*:*:*:*) echo "$1" ;;
        *:*:*:*:*) echo "$1:" ;;
        *) return 1 ;;
    esac
}

specs=()
for name in ${@:-sat20_10k r500_10k}; do
    spec=$(scenario_spec "$name") || die "unknown scenario '$name'"
    specs+=("$spec")
done
[[ "$REPS" =~ ^[1-9][0-9]*$ ]] || die "REPS must be a positive integer"
build_outpost
if [[ "${BUILD:-1}" == 1 ]]; then
    (cd "$REPO_DIR" && cargo build --release --quiet --example smtp_latency) || die "building smtp_latency failed"
fi
[[ -x "$LOADGEN" ]] || die "no load generator at $LOADGEN"
SINK=$(findtool smtp-sink) || die "smtp-sink not found (Debian package postfix)"
postfix status >/dev/null 2>&1 && die "Postfix is already running; stop it with '$POSTFIX_SETUP stop'"
for p in $PORT $SINK_PORT; do port_listening $p && die "port $p is in use"; done
mkdir -p "$(dirname "$RESULTS_CSV")" "$WORKDIR"
REV=$(outpost_rev)

SINK_PID=""
cleanup() {
    trap - EXIT INT TERM
    [[ -n "$SINK_PID" ]] && { kill "$SINK_PID" 2>/dev/null; wait "$SINK_PID" 2>/dev/null; }
    relay_cleanup
}
trap cleanup EXIT
trap 'echo "latency: interrupted" >&2; exit 130' INT TERM

FIELDS="accepted_per_s accept_p50_ms accept_p90_ms accept_p99_ms accept_p999_ms accept_max_ms transaction_p50_ms transaction_p99_ms"
[[ -s "$RESULTS_CSV" ]] ||
    echo "run_id,relay,scenario,rep,sessions,messages,size,rate,accepted,${FIELDS// /,},relay_cpu_s,loadavg1,outpost_rev,rc" > "$RESULTS_CSV"

run_one() {  # RELAY NAME REP SESSIONS MESSAGES SIZE RATE OPTIONS
    local relay=$1 name=$2 rep=$3 s=$4 m=$5 z=$6 rate=$7 opts=$8 dkim=0 load rc end f out values=""
    local dir="$WORKDIR/${relay}_${name}_$rep"
    [[ $opts == *dkim* ]] && dkim=1
    mkdir -p "$dir"
    wait_port_free $PORT 30 && wait_port_free $SINK_PORT 30 || die "ports still in use before $dir"
    read -r load _ < /proc/loadavg
    DKIM=$dkim relay_start "$relay" "$dir" $PORT $SINK_PORT
    if [[ $dkim == 1 ]]; then
        check_signed $PORT $SINK_PORT "$dir"
        wait_port_free $SINK_PORT 30 || die "port $SINK_PORT still in use after the signing check"
    fi
    "$SINK" -c -u nobody "127.0.0.1:$SINK_PORT" 1024 > "$dir/sink.out" 2>&1 &
    SINK_PID=$!
    end=$(calc "%.3f" "$(now) + 30")
    until tcp_connects $SINK_PORT; do later_than "$(now)" "$end" && die "smtp-sink did not start"; sleep 0.1; done

    log "${relay}_${name}_$rep: $s sessions, $m msgs, $z B, rate ${rate} msgs/s (0 = closed loop), load $load"
    "$LOADGEN" --target "127.0.0.1:$PORT" --sessions "$s" --messages "$m" --size "$z" --rate "$rate" \
        > "$dir/load.out" 2> "$dir/load.err"
    rc=$?
    # let the relay deliver what it accepted before it is stopped (bounded)
    end=$(calc "%.3f" "$(now) + 120")
    until (( $(sink_counter "$dir/sink.out") >= m )); do
        later_than "$(now)" "$end" && { echo "    WARNING: sink has $(sink_counter "$dir/sink.out") of $m"; break; }
        sleep 0.2
    done
    kill "$SINK_PID" 2>/dev/null; wait "$SINK_PID" 2>/dev/null; SINK_PID=""
    relay_stop "$relay" "$dir"
    [[ -n "$RELAY_ERR" ]] && echo "    WARNING: $RELAY_ERR"
    [[ $rc == 0 ]] || { echo "    load generator failed (rc=$rc):"; tail -3 "$dir/load.err" | sed 's/^/    /'; }
    for f in accepted $FIELDS; do
        out=$(sed -n "s/^$f=//p" "$dir/load.out")
        values+=",$out"
    done
    echo "$RUN_ID,$relay,$name,$rep,$s,$m,$z,$rate$values,$RELAY_CPU,$load,$REV,$rc" >> "$RESULTS_CSV"
    echo "    $(grep -E '^(accepted_per_s|accept_p50_ms|accept_p99_ms|transaction_p99_ms)=' "$dir/load.out" | tr '\n' ' ')"
    sleep "$PAUSE"
}

log "latency run $RUN_ID: REPS=$REPS, relays: $RELAYS, outpost $REV; results $RESULTS_CSV, logs $WORKDIR"
for spec in "${specs[@]}"; do
    IFS=: read -r name s m z rate opts <<< "$spec"
    for rep in $(seq 1 "$REPS"); do
        for relay in $RELAYS; do run_one "$relay" "$name" "$rep" "$s" "$m" "$z" "$rate" "$opts"; done
    done
done
cleanup

col() { head -1 "$RESULTS_CSV" | tr ',' '\n' | grep -nx "$1" | cut -d: -f1; }
values() {  # RELAY SCENARIO COLUMN -> one value per successful run of this invocation
    awk -F, -v run="$RUN_ID" -v r="$1" -v s="$2" -v c="$(col "$3")" -v crc="$(col rc)" \
        'NR > 1 && $1 == run && $2 == r && $3 == s && $crc == 0 && $c != "" { print $c }' "$RESULTS_CSV"
}
echo
echo "== summary of run $RUN_ID (medians over successful runs)"
printf '%-16s %-8s %-12s %-12s %-12s %-14s\n' scenario relay "msgs/s" "accept p50" "accept p99" "transaction p99"
for spec in "${specs[@]}"; do
    IFS=: read -r name _ <<< "$spec"
    for relay in $RELAYS; do
        printf '%-16s %-8s %-12s %-12s %-12s %-14s\n' "$name" "$relay" \
            "$(median $(values "$relay" "$name" accepted_per_s))" \
            "$(median $(values "$relay" "$name" accept_p50_ms)) ms" \
            "$(median $(values "$relay" "$name" accept_p99_ms)) ms" \
            "$(median $(values "$relay" "$name" transaction_p99_ms)) ms"
    done
done
echo "results: $RESULTS_CSV   logs: $WORKDIR"
