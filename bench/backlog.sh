#!/usr/bin/env bash
# backlog.sh - the 1,000,000-message backlog test.
#
# 1. Outpost relays everything to 127.0.0.1:SINK_PORT, where nothing listens yet, so
#    every delivery fails fast (connection refused) and is deferred.
# 2. smtp-source injects N messages (SESSIONS sessions, SIZE-byte bodies). Recorded:
#    injection rate, Outpost's peak RSS (VmHWM), CPU, and the store size on disk.
# 3. smtp-sink is started on SINK_PORT, `outpost queue retry --all` makes everything
#    due, and the drain is timed until the sink has N messages, sampling RSS.
#
# Usage: bench/backlog.sh            (N=1000000; a few minutes per 100k on this VM)
#        N=50000 bench/backlog.sh    (quick check)
#
# Environment:
#   N=1000000  SESSIONS=20  SIZE=1024    injection (smtp-source -d -s SESSIONS -m N -l SIZE)
#   DRAIN_MODE=restart | live
#       restart (default): after injection Outpost is stopped (SIGINT), the sink started,
#         `queue retry --all` run against the store, and Outpost started again: the drain
#         is a fresh process working through the backlog.
#       live: Outpost keeps running. Outpost suspends a failing destination in memory for
#         delivery.retry[0], and `queue retry --all` cannot lift that suspension: mail made
#         due while the destination is suspended is deferred again without an attempt.
#         So live mode sets delivery.retry = [SUSPEND, "24h"]: every message is deferred
#         on arrival, retried (and deferred again, to +24 h) SUSPEND later while the sink
#         is still down. Once no "destination suspended" warning has been logged for
#         SUSPEND + 2 s, the suspension has lapsed and nothing is due: the sink is
#         started and `queue retry --all` run against the running server.
#   SUSPEND=30s            live mode only (see above)
#   DEADLINE=7200          seconds for the whole test; phases that run out are cut short
#   PROGRESS=10            seconds between progress lines
#   PORT=2525 SINK_PORT=2526
#   OUTPOST_BIN, BUILD=1   as in compare.sh
#   WORKDIR=dir            data dir + logs (default: new /tmp/outpost-backlog.XXXXXX)
#   KEEP_DATA=0            1: keep the store afterwards (N x ~1.5 KB and more)
#   RESULTS_CSV=file       default <repo>/bench/results/<date>-backlog.csv (one line per run;
#                          restart mode adds the restarted server's time to listen and
#                          to first delivery, restart_listen_s and restart_first_delivery_s)
set -uo pipefail
source "$(dirname "$0")/lib.sh"

N="${N:-1000000}"; SESSIONS="${SESSIONS:-20}"; SIZE="${SIZE:-1024}"
DRAIN_MODE="${DRAIN_MODE:-restart}"; SUSPEND="${SUSPEND:-30s}"
DEADLINE="${DEADLINE:-7200}"; PROGRESS="${PROGRESS:-10}"
PORT="${PORT:-2525}"; SINK_PORT="${SINK_PORT:-2526}"
RESULTS_CSV="${RESULTS_CSV:-$BENCH_DIR/results/$(date +%Y-%m-%d)-backlog.csv}"
WORKDIR="${WORKDIR:-$(mktemp -d /tmp/outpost-backlog.XXXXXX)}"
DATA="$WORKDIR/data"; CFG="$WORKDIR/outpost.toml"; OLOG="$WORKDIR/outpost.log"
SRC_OUT="$WORKDIR/source.out"; SINK_OUT="$WORKDIR/sink.out"

[[ "$N" =~ ^[1-9][0-9]*$ && "$SESSIONS" =~ ^[1-9][0-9]*$ && "$SIZE" =~ ^[0-9]+$ ]] || die "N, SESSIONS, SIZE must be integers"
[[ "$DRAIN_MODE" == restart || "$DRAIN_MODE" == live ]] || die "DRAIN_MODE must be restart or live"
SRC=$(findtool smtp-source) || die "smtp-source not found (apt-get install postfix)"
SINK=$(findtool smtp-sink) || die "smtp-sink not found (apt-get install postfix)"
build_outpost
for p in $PORT $SINK_PORT; do port_listening "$p" && die "port $p is in use: $(ss -Hltnp "sport = :$p" | head -1)"; done
mkdir -p "$WORKDIR" "$(dirname "$RESULTS_CSV")"
# the store holds each message once (~SIZE + 600 B of headers and rows), plus WAL and indexes
need_kb=$(( N * (SIZE + 1500) * 2 / 1024 + 1048576 ))
avail_kb=$(df -Pk "$WORKDIR" | awk 'NR == 2 { print $4 }')
(( avail_kb > need_kb )) || die "not enough space in $WORKDIR: ${avail_kb} kB free, want ~${need_kb} kB"

T_START=$(now); T_END=$(calc "%.3f" "$T_START + $DEADLINE")
remaining() { calc "%d" "$T_END - $(now)"; }
store_bytes() { du -sb "$DATA" 2>/dev/null | cut -f1; }            # apparent size
store_disk_kb() { du -sk "$DATA" 2>/dev/null | cut -f1; }          # blocks on disk
mb() { calc "%.1f" "${1:-0} / 1048576"; }
queue_states() {   # "deferred=N delivered=K ... due=D" from the store, if sqlite3 is here
    command -v sqlite3 >/dev/null || { echo "(sqlite3 not installed)"; return; }
    sqlite3 -readonly -cmd ".timeout 5000" "$DATA/outpost.db" \
        "SELECT status || '=' || count(*) FROM recipients GROUP BY status;
         SELECT 'due=' || count(*) FROM recipients WHERE status IN ('queued', 'deferred')
             AND next_attempt <= CAST(strftime('%s', 'now') AS INTEGER) * 1000" 2>/dev/null | paste -sd' ' -
}

SRC_PID=""; SINK_PID=""
cleanup() {
    trap - EXIT INT TERM
    [[ -n "$SRC_PID" ]] && { kill "$SRC_PID" 2>/dev/null; wait "$SRC_PID" 2>/dev/null; }
    stop_outpost
    [[ -n "$SINK_PID" ]] && { kill "$SINK_PID" 2>/dev/null; wait "$SINK_PID" 2>/dev/null; }
    SRC_PID=""; SINK_PID=""
    if [[ "${KEEP_DATA:-0}" != 1 && -d "$DATA" ]]; then rm -rf "$DATA"; fi
}
trap cleanup EXIT
trap 'echo "backlog: interrupted" >&2; exit 130' INT TERM

extra_toml=""
[[ $DRAIN_MODE == live ]] && extra_toml=$'[delivery]\nretry = ["'"$SUSPEND"'", "24h"]'
write_outpost_config "$CFG" "$DATA" "$PORT" "$SINK_PORT" "$extra_toml"
log "backlog test: N=$N, $SESSIONS sessions, ${SIZE} B bodies, drain mode $DRAIN_MODE, deadline ${DEADLINE}s, outpost $(outpost_rev)"
log "work dir $WORKDIR (config, logs, store)"

# ---------------------------------------------------------------- 1. injection, sink down
start_outpost "$CFG" "$OLOG" "$PORT" || die "Outpost did not start"
cpu0=$(proc_cpu_s "$OUTPOST_PID")
log "injecting $N messages into 127.0.0.1:$PORT; deliveries go to 127.0.0.1:$SINK_PORT (nothing listening)"
t0=$(now)
timeout "$(remaining)" "$SRC" -d -c -s "$SESSIONS" -m "$N" -l "$SIZE" -r 1 \
    -f bench@source.test -t rcpt@example.test "127.0.0.1:$PORT" > "$SRC_OUT" 2> "$WORKDIR/source.err" &
SRC_PID=$!
inj_rss_max=0; last=$t0; last_n=0
while st=$(proc_state "$SRC_PID"); [[ -n "$st" && "$st" != Z ]]; do
    sleep 1
    rss=$(proc_kb "$OUTPOST_PID" VmRSS); (( rss > inj_rss_max )) && inj_rss_max=$rss
    if later_than "$(now)" "$(calc "%.3f" "$last + $PROGRESS")"; then
        n=$(last_counter "$SRC_OUT"); t=$(now)
        log "  injected $n/$N ($(calc "%.0f" "($n - $last_n) / ($t - $last)") msg/s now), outpost RSS $((rss / 1024)) MB," \
            "store $(mb "$(store_bytes)") MB, $(remaining)s left"
        last=$t; last_n=$n
    fi
done
wait "$SRC_PID"; src_rc=$?; SRC_PID=""
t1=$(now)
injected=$(last_counter "$SRC_OUT")
inj_s=$(calc "%.1f" "$t1 - $t0"); inj_rate=$(calc "%.1f" "$injected / ($t1 - $t0)")
if [[ $src_rc -ne 0 ]]; then
    log "smtp-source exited with status $src_rc (124 = deadline) after $injected messages:"; tail -3 "$WORKDIR/source.err"
fi
# let the last deferrals reach the store before measuring it
sleep 2
inj_cpu=$(calc "%.1f" "$(proc_cpu_s "$OUTPOST_PID") - $cpu0")
inj_hwm=$(proc_kb "$OUTPOST_PID" VmHWM)
inj_store=$(store_bytes); inj_disk=$(store_disk_kb)
log "injection done: $injected/$N accepted in ${inj_s}s = $inj_rate msg/s; outpost cpu ${inj_cpu}s," \
    "peak RSS (VmHWM) $((inj_hwm / 1024)) MB; store $(mb "$inj_store") MB ($((inj_disk / 1024)) MB on disk)"
ls -l "$DATA" | grep outpost.db | awk '{ printf "    %-16s %10.1f MB\n", $NF, $5 / 1048576 }'
log "  queue: $(queue_states)"
(( injected > 0 )) || die "nothing was injected"

# ---------------------------------------------------------------- 2. drain
sink_user=(); [[ $(id -u) -eq 0 ]] && sink_user=(-u nobody)
if [[ $DRAIN_MODE == restart ]]; then
    stop_outpost
    log "outpost stopped (exit status $OUTPOST_RC)"
else
    # Still with the sink down: wait until the destination's suspension has lapsed and
    # every message has had its SUSPEND retry (deferred again, to +24h), i.e. until no
    # "destination suspended" warning has appeared for SUSPEND + 2 s.
    sus_s=$(awk -v d="$SUSPEND" 'BEGIN { n = d + 0; u = substr(d, length(d));
        print (u == "m") ? n * 60 : (u == "h") ? n * 3600 : (u == "d") ? n * 86400 : n }')
    quiet=$(( sus_s + 2 ))
    log "live mode: sink still down; waiting until no 'destination suspended' warning for ${quiet}s"
    lines=$(grep -c 'destination suspended' "$OLOG"); quiet_since=$(now); last=$(now)
    while ! later_than "$(now)" "$(calc "%.3f" "$quiet_since + $quiet")"; do
        (( $(remaining) > 0 )) || die "deadline reached while waiting for the suspension to lapse"
        sleep 1
        l=$(grep -c 'destination suspended' "$OLOG")
        [[ $l -ne $lines ]] && { lines=$l; quiet_since=$(now); }
        if later_than "$(now)" "$(calc "%.3f" "$last + $PROGRESS")"; then
            log "  waiting: queue $(queue_states), $(remaining)s left"; last=$(now)
        fi
    done
    log "  queue: $(queue_states)"
fi
"$SINK" -c -m 1024 "${sink_user[@]}" "127.0.0.1:$SINK_PORT" 1024 > "$SINK_OUT" 2> "$WORKDIR/sink.err" &
SINK_PID=$!
end=$(calc "%.3f" "$(now) + 10")
until port_listening "$SINK_PORT"; do
    later_than "$(now)" "$end" && { cat "$WORKDIR/sink.err" >&2; die "smtp-sink did not start"; }
    sleep 0.05
done
log "smtp-sink listening on 127.0.0.1:$SINK_PORT"

log "outpost queue retry --all"
td0=$(now)
retry_out=$(RUST_LOG=warn timeout "$(remaining)" "$OUTPOST_BIN" --config "$CFG" queue retry --all 2>&1); retry_rc=$?
echo "    $retry_out ($(calc "%.1f" "$(now) - $td0")s)"
[[ $retry_rc -eq 0 ]] || die "queue retry --all failed (status $retry_rc)"

base=$(sink_counter "$SINK_OUT")
listen_s=""; first_s=""
if [[ $DRAIN_MODE == restart ]]; then
    # Start-up with the backlog in the store: time from exec to the relay port
    # accepting connections, then to the first message at the sink.
    tr0=$(now)
    start_outpost "$CFG" "$OLOG" "$PORT" || die "Outpost did not restart"
    listen_s=$(calc "%.2f" "$(now) - $tr0")
fi
cpu_d0=$(proc_cpu_s "$OUTPOST_PID")
if [[ $DRAIN_MODE == restart ]]; then
    while (( $(sink_counter "$SINK_OUT") <= base )); do
        (( $(remaining) > 0 )) || break
        st=$(proc_state "$OUTPOST_PID"); [[ -z "$st" || "$st" == Z ]] && break
        sleep 0.02
    done
    (( $(sink_counter "$SINK_OUT") > base )) && first_s=$(calc "%.2f" "$(now) - $tr0")
    log "outpost restarted: listening after ${listen_s}s, first delivery after ${first_s:-(none)}s" \
        "(start-up with $injected messages queued)"
fi
drain_rss_max=0; last=$td0; last_n=$base; got=$base; timed_out=0
while (( got < injected )); do
    if (( $(remaining) <= 0 )); then timed_out=1; log "DEADLINE: the sink has $got of $injected"; break; fi
    st=$(proc_state "$OUTPOST_PID")
    [[ -z "$st" || "$st" == Z ]] && { log "outpost died during the drain"; tail -5 "$OLOG"; break; }
    sleep 0.2
    got=$(sink_counter "$SINK_OUT")
    rss=$(proc_kb "$OUTPOST_PID" VmRSS); (( rss > drain_rss_max )) && drain_rss_max=$rss
    if later_than "$(now)" "$(calc "%.3f" "$last + $PROGRESS")"; then
        t=$(now)
        log "  delivered $got/$injected ($(calc "%.0f" "($got - $last_n) / ($t - $last)") msg/s now), outpost RSS $((rss / 1024)) MB," \
            "cpu $(calc "%.1f" "$(proc_cpu_s "$OUTPOST_PID") - $cpu_d0")s, $(remaining)s left"
        last=$t; last_n=$got
    fi
done
td1=$(now)
drained=$(( got - base ))
drain_s=$(calc "%.1f" "$td1 - $td0"); drain_rate=$(calc "%.1f" "$drained / ($td1 - $td0)")
drain_cpu=$(calc "%.1f" "$(proc_cpu_s "$OUTPOST_PID") - $cpu_d0")
drain_hwm=$(proc_kb "$OUTPOST_PID" VmHWM)
sleep 2   # let the last outcomes reach the store
extra=$(( $(sink_counter "$SINK_OUT") - got ))
end_store=$(store_bytes)
states=$(queue_states)
restart_line=""
[[ $DRAIN_MODE == restart ]] &&
    restart_line="restart   : listening after ${listen_s}s, first delivery after ${first_s:-(none)}s (from exec, with the backlog queued)"
stop_outpost
total_s=$(calc "%.0f" "$(now) - $T_START")

# ---------------------------------------------------------------- report
cat <<EOF

== backlog test: N=$N, ${SIZE} B bodies, $SESSIONS sessions, drain mode $DRAIN_MODE, outpost $(outpost_rev)
injection : $injected/$N accepted in ${inj_s}s = $inj_rate msg/s (smtp-source rc=$src_rc); outpost cpu ${inj_cpu}s
memory    : peak RSS (VmHWM) after injection $((inj_hwm / 1024)) MB (max sampled VmRSS $((inj_rss_max / 1024)) MB)
store     : $(mb "$inj_store") MB after injection ($((inj_disk / 1024)) MB on disk, $(calc "%.0f" "$inj_store / $injected") B/msg); $(mb "$end_store") MB after the drain
drain     : $drained delivered in ${drain_s}s = $drain_rate msg/s (from queue retry --all$([[ $DRAIN_MODE == restart ]] && echo " + restart") to the last message at the sink)$( ((base > 0)) && echo "; $base were delivered before retry --all")$( ((extra > 0)) && echo "; $extra more after (duplicates?)")
            outpost cpu ${drain_cpu}s ($(calc "%.3f" "$drain_cpu / ($drained > 0 ? $drained : 1) * 1000") s/1000 msgs)
            RSS during drain: max sampled VmRSS $((drain_rss_max / 1024)) MB, VmHWM $((drain_hwm / 1024)) MB$([[ $DRAIN_MODE == live ]] && echo " (includes injection)")
queue     : $states${restart_line:+
$restart_line}
total     : ${total_s}s$( ((timed_out)) && echo " (DEADLINE reached: incomplete)")
EOF

header="date,outpost_rev,n,size,sessions,drain_mode,injected,inject_s,inject_per_s,inject_cpu_s,inject_vmhwm_kb,store_bytes,store_disk_kb,drained,drain_s,drain_per_s,drain_cpu_s,drain_rss_max_kb,drain_vmhwm_kb,end_store_bytes,total_s,complete,restart_listen_s,restart_first_delivery_s"
if [[ ! -s "$RESULTS_CSV" ]]; then
    echo "$header" > "$RESULTS_CSV"
elif old=$(head -1 "$RESULTS_CSV"); [[ "$old" != "$header" && "$header" == "$old,"* ]]; then
    # A file from before columns were added: give its rows empty values for them.
    pad=$(( $(tr -cd , <<< "$header" | wc -c) - $(tr -cd , <<< "$old" | wc -c) ))
    awk -v h="$header" -v pad="$pad" 'NR == 1 { print h; next }
        { s = $0; for (i = 0; i < pad; i++) s = s ","; print s }' "$RESULTS_CSV" > "$RESULTS_CSV.tmp" &&
        mv "$RESULTS_CSV.tmp" "$RESULTS_CSV"
fi
echo "$(date -Is),$(outpost_rev),$N,$SIZE,$SESSIONS,$DRAIN_MODE,$injected,$inj_s,$inj_rate,$inj_cpu,$inj_hwm,$inj_store,$inj_disk,$drained,$drain_s,$drain_rate,$drain_cpu,$drain_rss_max,$drain_hwm,$end_store,$total_s,$(( !timed_out && got >= injected && injected == N )),$listen_s,$first_s" >> "$RESULTS_CSV"
echo "results: $RESULTS_CSV   logs: $WORKDIR"
(( !timed_out && got >= injected && injected == N ))
