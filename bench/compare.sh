#!/usr/bin/env bash
# compare.sh - Outpost against the Postfix anchor, in the same run, alternating.
#
# Usage: bench/compare.sh [SCENARIO ...]
#   SCENARIO: s20_10k (20 sessions, 20000 msgs, 10240 B)   s100_10k (100 sessions)
#             s20_1k, s100_1k (1024 B)   s20_100k, s100_100k (5000 msgs of 102400 B)
#             conn1 / s20_10k_conn1 (as s20_10k, PER_CONN=1: a new connection per message)
#             any of these + "_dkim" (s20_10k_dkim, ...): both relays sign with DKIM
#             (RSA-2048; Postfix through OpenDKIM, see lib.sh relay_start)
#             or a custom NAME:SESSIONS:MESSAGES:SIZE:PER_CONN[:dkim] (PER_CONN = all | 1)
#   default: s20_10k s100_10k  (or $SCENARIOS)
#
# For every scenario, REPS times: Postfix run, then Outpost run. Each run is one
# ../shared/bench/relay-bench.sh against 127.0.0.1:2525 with the sink on 2526.
#   Postfix: postfix-setup.sh (fresh start, queue emptied first) ... postfix-setup.sh stop
#   Outpost: fresh data dir, `outpost serve` (RUST_LOG=warn) ... SIGINT and wait
# A DKIM scenario first sends one message through the relay to a dumping sink and
# stops unless it arrives signed.
# Every run is one CSV line in bench/results/<date>-compare.csv; a summary of medians
# and Outpost/Postfix ratios is printed at the end.
#
# Environment:
#   REPS=3                 runs per relay per scenario
#   SCENARIOS="..."        scenarios when none are given as arguments
#   SHARED_BENCH=dir       relay-bench.sh + postfix-setup.sh (default: <repo>/../shared/bench)
#   OUTPOST_BIN=path       default <repo>/target/release/outpost
#   BUILD=1                run `cargo build --release` first (0: use the binary as it is)
#   RESULTS_CSV=file       default <repo>/bench/results/<date>-compare.csv
#   WORKDIR=dir            logs of every run (default: new /tmp/outpost-compare.XXXXXX, kept)
#   KEEP_DATA=0            1: keep each Outpost data dir (20000 x 10 KB is ~250 MB each)
#   PAUSE=3                seconds of rest between runs (Postfix's connection cache is 2 s)
#   DELIVERY_TIMEOUT=300   passed to relay-bench.sh
#   RELAYS="postfix outpost"  order within a rep (either may be dropped)
#   PORT=2525 SINK_PORT=2526  relay port and sink port (both relays use the same pair)
set -uo pipefail
source "$(dirname "$0")/lib.sh"

RELAY_BENCH="$SHARED_BENCH/relay-bench.sh"
REPS="${REPS:-3}"
PAUSE="${PAUSE:-3}"
RELAYS="${RELAYS:-postfix outpost}"
PORT="${PORT:-2525}"; SINK_PORT="${SINK_PORT:-2526}"
RUN_ID=$(date +%Y%m%dT%H%M%S)
RESULTS_CSV="${RESULTS_CSV:-$BENCH_DIR/results/$(date +%Y-%m-%d)-compare.csv}"
WORKDIR="${WORKDIR:-$(mktemp -d /tmp/outpost-compare.XXXXXX)}"
export DELIVERY_TIMEOUT="${DELIVERY_TIMEOUT:-300}"

scenario_spec() {  # NAME -> NAME:SESSIONS:MESSAGES:SIZE:PER_CONN:OPTIONS
    local base=$1 opts=""
    [[ $1 != *:* && $1 == *_dkim ]] && { base=${1%_dkim}; opts=dkim; }
    case "$base" in
        s20_10k) echo "$1:20:20000:10240:all:$opts" ;;
        s100_10k) echo "$1:100:20000:10240:all:$opts" ;;
        s20_1k) echo "$1:20:20000:1024:all:$opts" ;;
        s100_1k) echo "$1:100:20000:1024:all:$opts" ;;
        s20_100k) echo "$1:20:5000:102400:all:$opts" ;;
        s100_100k) echo "$1:100:5000:102400:all:$opts" ;;
        conn1|s20_10k_conn1) echo "s20_10k_conn1${opts:+_dkim}:20:20000:10240:1:$opts" ;;
        *:*:*:*:*:*) echo "$1" ;;
        *:*:*:*:*) echo "$1:" ;;
        *) return 1 ;;
    esac
}

# ---------------------------------------------------------------- preflight
[[ -x "$RELAY_BENCH" && -x "$POSTFIX_SETUP" ]] ||
    die "relay-bench.sh / postfix-setup.sh not found in '$SHARED_BENCH' (set SHARED_BENCH)"
[[ "$REPS" =~ ^[1-9][0-9]*$ ]] || die "REPS must be a positive integer"
specs=()
for s in "${@:-${SCENARIOS:-s20_10k s100_10k}}"; do
    for name in $s; do
        spec=$(scenario_spec "$name") || die "unknown scenario '$name'"
        specs+=("$spec")
    done
done
for r in $RELAYS; do [[ $r == postfix || $r == outpost ]] || die "RELAYS: unknown relay '$r'"; done
if [[ " $RELAYS " == *" outpost "* ]]; then build_outpost; fi
if [[ " $RELAYS " == *" postfix "* ]]; then
    command -v postfix >/dev/null || die "postfix is not installed"
    [[ " ${specs[*]} " == *:dkim\ * ]] && { command -v opendkim >/dev/null ||
        die "DKIM scenarios need OpenDKIM for Postfix: apt-get install opendkim opendkim-tools"; }
fi
postfix status >/dev/null 2>&1 && die "Postfix is already running (someone else's benchmark?); stop it with '$POSTFIX_SETUP stop'"
for p in $PORT $SINK_PORT; do port_listening $p && die "port $p is in use: $(ss -Hltnp "sport = :$p" | head -1)"; done
mkdir -p "$(dirname "$RESULTS_CSV")" "$WORKDIR"
REV=$(outpost_rev)

# ---------------------------------------------------------------- cleanup
BENCH_PID=""
cleanup() {
    trap - EXIT INT TERM
    [[ -n "$BENCH_PID" ]] && { kill -TERM "$BENCH_PID" 2>/dev/null; wait "$BENCH_PID" 2>/dev/null; }
    relay_cleanup
}
trap cleanup EXIT
trap 'echo "compare: interrupted" >&2; exit 130' INT TERM

# ---------------------------------------------------------------- one run
# run_one RELAY NAME REP SESSIONS MESSAGES SIZE PER_CONN OPTIONS
run_one() {
    local relay=$1 name=$2 rep=$3 s=$4 m=$5 z=$6 pc=$7 opts=$8
    local label="${relay}_${name}_$rep" dir="$WORKDIR/${relay}_${name}_$rep"
    local load rc dkim=0
    [[ $opts == *dkim* ]] && dkim=1
    mkdir -p "$dir"
    wait_port_free $PORT 30 || die "port $PORT still in use before $label"
    wait_port_free $SINK_PORT 30 || die "port $SINK_PORT still in use before $label"
    read -r load _ < /proc/loadavg

    DKIM=$dkim relay_start "$relay" "$dir" $PORT $SINK_PORT
    if [[ $dkim == 1 ]]; then
        check_signed $PORT $SINK_PORT "$dir"
        wait_port_free $SINK_PORT 30 || die "port $SINK_PORT still in use after the signing check"
    fi

    log "$label: $s sessions, $m msgs, $z B, per_conn=$pc (load $load)"
    PER_CONN=$pc LABEL=$label RESULTS_CSV="$dir/run.csv" OUTDIR="$dir" \
        "$RELAY_BENCH" "127.0.0.1:$PORT" $SINK_PORT "$s" "$m" "$z" > "$dir/relay-bench.out" 2>&1 &
    BENCH_PID=$!
    wait "$BENCH_PID"; rc=$?; BENCH_PID=""
    sed -n '/^injection/,/^cpu/p' "$dir/relay-bench.out" | sed 's/^/    /'
    grep -E '^relay-bench: (DELIVERY|smtp-source|port|smtp-sink)' "$dir/relay-bench.out" | sed 's/^/    /'

    relay_stop "$relay" "$dir"
    [[ -n "$RELAY_ERR" ]] && echo "    WARNING: $RELAY_ERR"

    local cpu=$RELAY_CPU accepted cpu_per_1k="" line header
    line=$(tail -n +2 "$dir/run.csv" 2>/dev/null | tail -1)
    header=$(head -1 "$dir/run.csv" 2>/dev/null)
    if [[ -z "$line" ]]; then   # relay-bench died before writing its line
        header="label,target,sessions,messages,size,per_conn,accepted,delivered,inject_s,e2e_s,accepted_per_s,delivered_per_s,busy_inject_pct,busy_run_pct,source_cpu_s,sink_cpu_s,source_rc"
        line="$label,127.0.0.1:$PORT,$s,$m,$z,$pc,0,0,,,,,,,,,"
    fi
    accepted=$(cut -d, -f7 <<< "$line")
    [[ "$accepted" -gt 0 ]] && cpu_per_1k=$(calc "%.3f" "$cpu / $accepted * 1000")
    [[ -s "$RESULTS_CSV" ]] ||
        echo "run_id,relay,scenario,rep,$header,relay_cpu_s,cpu_s_per_1k_msgs,peak_rss_kb,retried_or_undelivered,loadavg1,outpost_rev,bench_rc,note" > "$RESULTS_CSV"
    echo "$RUN_ID,$relay,$name,$rep,$line,$cpu,$cpu_per_1k,$RELAY_HWM,$RELAY_RETRIED,$load,$REV,$rc,$RELAY_ERR" >> "$RESULTS_CSV"
    echo "    rates: $(grep -E '^(accepted|delivered)_msgs_per_s=' "$dir/relay-bench.out" | tr '\n' ' ')" \
        "| $relay cpu ${cpu}s (${cpu_per_1k:-?} s/1000 msgs)${RELAY_HWM:+, peak RSS $((RELAY_HWM / 1024)) MB} | rc=$rc"
    sleep "$PAUSE"
}

# ---------------------------------------------------------------- the runs
log "compare run $RUN_ID: REPS=$REPS, relays: $RELAYS, outpost $REV, ${#specs[@]} scenario(s)"
log "results: $RESULTS_CSV   logs: $WORKDIR"
for spec in "${specs[@]}"; do
    IFS=: read -r name s m z pc opts <<< "$spec"
    log "== $name: sessions=$s messages=$m size=$z per_conn=$pc${opts:+ options=$opts}"
    for rep in $(seq 1 "$REPS"); do
        for relay in $RELAYS; do
            run_one "$relay" "$name" "$rep" "$s" "$m" "$z" "$pc" "$opts"
        done
    done
done
cleanup

# ---------------------------------------------------------------- summary
col() { head -1 "$RESULTS_CSV" | tr ',' '\n' | grep -nx "$1" | cut -d: -f1; }
C_RUN=$(col run_id); C_RELAY=$(col relay); C_SCEN=$(col scenario); C_RC=$(col bench_rc)
C_ACC=$(col accepted_per_s); C_DEL=$(col delivered_per_s); C_CPU=$(col cpu_s_per_1k_msgs); C_RSS=$(col peak_rss_kb)
values() {  # values RELAY SCENARIO COLUMN -> one value per successful run of this invocation
    awk -F, -v run="$RUN_ID" -v r="$1" -v s="$2" -v c="$3" -v cr="$C_RUN" -v crel="$C_RELAY" -v cs="$C_SCEN" -v crc="$C_RC" \
        'NR > 1 && $cr == run && $crel == r && $cs == s && $crc == 0 && $c != "" { print $c }' "$RESULTS_CSV"
}
nruns() { awk -F, -v run="$RUN_ID" -v r="$1" -v s="$2" -v cr="$C_RUN" -v crel="$C_RELAY" -v cs="$C_SCEN" -v crc="$C_RC" \
        'NR > 1 && $cr == run && $crel == r && $cs == s { n++; if ($crc == 0) ok++ } END { printf "%d/%d", ok, n }' "$RESULTS_CSV"; }
range() { printf '%s\n' "$@" | sort -g | sed -n '1p;$p' | paste -sd- -; }
ratio() { [[ -n "$1" && -n "$2" ]] && calc "%.2f" "$1 / $2" || echo "-"; }

echo
echo "== summary of run $RUN_ID (medians over runs with bench_rc=0; [min-max]; ok/total runs)"
printf '%-14s %-8s %-6s %-24s %-24s %-12s %s\n' scenario relay ok/n "accepted msgs/s" "delivered msgs/s" "cpu s/1k msg" "peak RSS MB"
for spec in "${specs[@]}"; do
    IFS=: read -r name _ <<< "$spec"
    declare -A med_acc=() med_del=()
    for relay in $RELAYS; do
        mapfile -t acc < <(values "$relay" "$name" "$C_ACC")
        mapfile -t del < <(values "$relay" "$name" "$C_DEL")
        mapfile -t cpu < <(values "$relay" "$name" "$C_CPU")
        mapfile -t rss < <(values "$relay" "$name" "$C_RSS")
        med_acc[$relay]=$(median "${acc[@]}"); med_del[$relay]=$(median "${del[@]}")
        rss_mb=""; [[ ${#rss[@]} -gt 0 ]] && rss_mb="$(calc "%.0f" "$(median "${rss[@]}") / 1024") [$(range "${rss[@]}" | awk -F- '{printf "%.0f-%.0f", $1/1024, $2/1024}')]"
        printf '%-14s %-8s %-6s %-24s %-24s %-12s %s\n' "$name" "$relay" "$(nruns "$relay" "$name")" \
            "${med_acc[$relay]:--} [$(range "${acc[@]}")]" "${med_del[$relay]:--} [$(range "${del[@]}")]" \
            "$(median "${cpu[@]}")" "${rss_mb:--}"
    done
    if [[ " $RELAYS " == *" postfix "* && " $RELAYS " == *" outpost "* ]]; then
        echo "$name ratio outpost/postfix: accepted $(ratio "${med_acc[outpost]}" "${med_acc[postfix]}")" \
             " delivered $(ratio "${med_del[outpost]}" "${med_del[postfix]}")"
    fi
    unset med_acc med_del
done
echo "(cpu s/1k msg: Outpost = its process; Postfix = master process tree. Peak RSS = Outpost VmHWM.)"
echo "results: $RESULTS_CSV   logs: $WORKDIR"
bad=$(awk -F, -v run="$RUN_ID" -v cr="$C_RUN" -v crc="$C_RC" 'NR > 1 && $cr == run && $crc != 0 { n++ } END { print n + 0 }' "$RESULTS_CSV")
[[ $bad -eq 0 ]] || { echo "WARNING: $bad run(s) had a non-zero relay-bench status (not all accepted or delivered); see the CSV"; exit 1; }
