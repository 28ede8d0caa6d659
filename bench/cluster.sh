#!/usr/bin/env bash
# cluster.sh - Outpost on PostgreSQL with 1, 2 and 3 nodes, beside Outpost on SQLite and
# Postfix, in one run on this machine (issue #13's benchmark).
#
# Usage: bench/cluster.sh [SESSIONS:MESSAGES:SIZE ...]      default: 20:20000:10240 100:20000:10240
#
# For every load, REPS times in turn: Postfix, Outpost on SQLite, Outpost on PostgreSQL
# with 1, 2 and 3 nodes. One smtp-sink counts what arrives on SINK_PORT. With N nodes,
# N smtp-source processes run at once, one against each node's port, each with
# SESSIONS/N sessions and MESSAGES/N messages; so every configuration gets the same
# total load. Rates:
#   accepted/s  = messages / (time until every smtp-source finished)
#   delivered/s = messages / (time until the sink counted every message)
# CPU per 1,000 messages is the relay's CPU: the Outpost processes (all nodes), plus for
# PostgreSQL the CPU of every postgres server process during the run (the database is part
# of the relay there; other clients of the shared server, if any, count too: say so).
# "busy" is the whole machine's CPU use over the run, from /proc/stat.
#
# Each PostgreSQL run gets a fresh schema (bench_<pid>_<n>) in database $PGDATABASE,
# dropped afterwards, via the URL's search_path.
#
# Environment: REPS=1, CONFIGS="postfix sqlite pg1 pg2 pg3", OUTPOST_BIN, BUILD=1,
#   SHARED_BENCH, PG_URL=postgres://postgres@127.0.0.1:5432/test, PORT=2525 (node i listens
#   on PORT+i, its HTTP on 18025+i), SINK_PORT=2526, DELIVERY_TIMEOUT=300,
#   RESULTS_CSV (default bench/results/<date>-cluster.csv), WORKDIR.
set -uo pipefail
source "$(dirname "$0")/lib.sh"

REPS="${REPS:-1}"
CONFIGS="${CONFIGS:-postfix sqlite pg1 pg2 pg3}"
PG_URL="${PG_URL:-postgres://postgres@127.0.0.1:5432/test}"
PORT="${PORT:-2525}"; SINK_PORT="${SINK_PORT:-2526}"
DELIVERY_TIMEOUT="${DELIVERY_TIMEOUT:-300}"
RESULTS_CSV="${RESULTS_CSV:-$BENCH_DIR/results/$(date +%Y-%m-%d)-cluster.csv}"
WORKDIR="${WORKDIR:-$(mktemp -d /tmp/outpost-cluster.XXXXXX)}"
SOURCE=$(findtool smtp-source) || die "smtp-source not found (apt-get install postfix)"
SINK=$(findtool smtp-sink) || die "smtp-sink not found (apt-get install postfix)"
command -v psql >/dev/null || die "psql not found (apt-get install postgresql-client)"
LOADS=("$@"); [[ ${#LOADS[@]} -gt 0 ]] || LOADS=(20:20000:10240 100:20000:10240)

NODE_PIDS=(); SINK_PID=""; SCHEMA=""
cleanup() {
    local p
    for p in "${NODE_PIDS[@]}"; do kill -INT "$p" 2>/dev/null; done
    for p in "${NODE_PIDS[@]}"; do wait "$p" 2>/dev/null; done
    NODE_PIDS=()
    [[ -n "$SINK_PID" ]] && { kill "$SINK_PID" 2>/dev/null; wait "$SINK_PID" 2>/dev/null; SINK_PID=""; }
    [[ -n "$SCHEMA" ]] && psql -q "$PG_URL" -c "DROP SCHEMA IF EXISTS $SCHEMA CASCADE" >/dev/null 2>&1
    SCHEMA=""
    relay_cleanup
}
trap cleanup EXIT

machine_jiffies() { awk '/^cpu / { print $2+$3+$4+$5+$6+$7+$8, $5+$6 }' /proc/stat; }   # total idle
postgres_cpu_s() {
    local p s=0
    # live server processes only: the nodes' backends are measured before the nodes stop
    for p in $(pgrep -u postgres); do s=$(calc "%.2f" "$s + $(proc_cpu_s "$p")"); done
    echo "$s"
}

# start_nodes N URL DIR: N `outpost serve` on URL (empty: SQLite), node i on PORT+i
start_nodes() {
    local n=$1 url=$2 dir=$3 i extra
    for ((i = 0; i < n; i++)); do
        extra=$'[server]\n'"node_name = \"bench-$i\""$'\n[http]\n'"addr = \"127.0.0.1:$((18025 + i))\""
        [[ -n "$url" ]] && extra+=$'\n[store]\n'"url = \"$url\""
        write_outpost_config "$dir/node$i.toml" "$dir/data$i" "$((PORT + i))" "$SINK_PORT" "$extra"
        start_outpost "$dir/node$i.toml" "$dir/node$i.log" "$((PORT + i))" || die "node $i did not start"
        NODE_PIDS+=("$OUTPOST_PID"); OUTPOST_PID=""
    done
}
nodes_cpu_s() { local p s=0; for p in "${NODE_PIDS[@]}"; do s=$(calc "%.2f" "$s + $(proc_cpu_s "$p")"); done; echo "$s"; }

# run_config CONFIG SESSIONS MESSAGES SIZE: one measured run; appends a CSV line
run_config() {
    local config=$1 sessions=$2 messages=$3 size=$4 nodes=1 dir url="" t0 t_acc t_del cpu0 pg0 j0 j1 i0 i1
    dir="$WORKDIR/$config-$sessions-$size-$(date +%H%M%S)"; mkdir -p "$dir"
    "$SINK" -c -m 1024 -u nobody "127.0.0.1:$SINK_PORT" 1024 > "$dir/sink.out" 2> "$dir/sink.err" &
    SINK_PID=$!
    until tcp_connects "$SINK_PORT"; do sleep 0.1; done
    case $config in
        postfix) relay_start postfix "$dir" "$PORT" "$SINK_PORT" ;;
        sqlite) start_nodes 1 "" "$dir" ;;
        pg*)
            nodes=${config#pg}
            SCHEMA="bench_$$_$RANDOM"
            psql -q "$PG_URL" -c "CREATE SCHEMA $SCHEMA" >/dev/null || die "cannot create schema $SCHEMA"
            url="$PG_URL?options=-csearch_path%3D$SCHEMA"
            start_nodes "$nodes" "$url" "$dir"
            ;;
    esac
    if [[ $config == postfix ]]; then cpu0=$(relay_cpu_s postfix); else cpu0=$(nodes_cpu_s); fi
    pg0=$(postgres_cpu_s)
    read -r j0 i0 < <(machine_jiffies)
    t0=$(now)
    local pids=() i per_s=$((sessions / nodes)) per_m=$((messages / nodes)) failed=0
    for ((i = 0; i < nodes; i++)); do
        "$SOURCE" -d -c -s "$per_s" -m "$per_m" -l "$size" -r 1 -f bench@source.test \
            -t rcpt@example.test "127.0.0.1:$((PORT + i))" > "$dir/source$i.out" 2>&1 &
        pids+=($!)
    done
    for i in "${pids[@]}"; do wait "$i" || failed=1; done
    t_acc=$(now)
    local total=$((per_m * nodes)) end; end=$(calc "%.3f" "$t0 + $DELIVERY_TIMEOUT")
    until [[ $(sink_counter "$dir/sink.out") -ge $total ]]; do
        later_than "$(now)" "$end" && { failed=1; break; }
        sleep 0.05
    done
    t_del=$(now)
    read -r j1 i1 < <(machine_jiffies)
    local cpu pg busy
    if [[ $config == postfix ]]; then
        cpu=$(calc "%.2f" "$(relay_cpu_s postfix) - $cpu0")
        relay_stop postfix "$dir"
    else
        cpu=$(calc "%.2f" "$(nodes_cpu_s) - $cpu0")
    fi
    pg=$(calc "%.2f" "$(postgres_cpu_s) - $pg0")
    [[ $config == pg* ]] || pg=0
    busy=$(calc "%.0f" "100 * (1 - ($i1 - $i0) / ($j1 - $j0))")
    cleanup
    local acc del cpum
    acc=$(calc "%.0f" "$total / ($t_acc - $t0)"); del=$(calc "%.0f" "$total / ($t_del - $t0)")
    cpum=$(calc "%.2f" "($cpu + $pg) * 1000 / $total")
    [[ -s $RESULTS_CSV ]] || echo "run,config,nodes,sessions,messages,size,accepted_per_s,delivered_per_s,relay_cpu_s,postgres_cpu_s,cpu_per_1000_s,busy_pct,load_avg,failed" > "$RESULTS_CSV"
    echo "$RUN_ID,$config,$nodes,$sessions,$total,$size,$acc,$del,$cpu,$pg,$cpum,$busy,$(cut -d' ' -f1 /proc/loadavg),$failed" >> "$RESULTS_CSV"
    log "$config sessions=$sessions size=$size: accepted $acc/s delivered $del/s, CPU/1000 msgs ${cpum}s (postgres ${pg}s), busy ${busy}%$([[ $failed == 1 ]] && echo ' FAILED: not every message accepted and delivered')"
}

RUN_ID=$(date +%Y%m%dT%H%M%S)
build_outpost
mkdir -p "$(dirname "$RESULTS_CSV")"
log "results: $RESULTS_CSV, logs: $WORKDIR, binary $(outpost_rev)"
for load in "${LOADS[@]}"; do
    IFS=: read -r sessions messages size <<< "$load"
    for ((rep = 0; rep < REPS; rep++)); do
        for config in $CONFIGS; do
            run_config "$config" "$sessions" "$messages" "$size"
            sleep 3   # Postfix's connection cache and TIME_WAIT settle
        done
    done
done
# means over the reps of this run, and each configuration's rate against Postfix's
awk -F, -v run="$RUN_ID" 'NR > 1 && $1 == run { k = $2 " " $4 " " $6; acc[k] += $7; n[k]++; cpu[k] += $11
        if ($2 == "postfix") { pf[$4 " " $6] += $7; pn[$4 " " $6]++ } }
    END { for (k in acc) { split(k, f, " "); l = f[2] " " f[3]; p = pn[l] ? pf[l] / pn[l] : 0
        printf "%-8s sessions=%-4s size=%-6s accepted %6.0f/s  %5.2fx Postfix  CPU/1000 msgs %.2fs\n",
            f[1], f[2], f[3], acc[k] / n[k], p ? acc[k] / n[k] / p : 0, cpu[k] / n[k] } }' "$RESULTS_CSV" | sort
