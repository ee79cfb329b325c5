#!/usr/bin/env bash
# The consumer core's at-least-once contract, on a real broker, with the
# core-probe handler (no database): transient failures retried and never
# skipped, permanent ones isolated and dead-lettered with their reasons, a
# downstream outage survived in the group, SIGTERM leaving nothing to
# process twice, kill -9 losing nothing, two workers sharing partitions.
# ctest: beside others (it restarts none of the stack's services)
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=tests/integration/lib.sh
. "$here/../integration/lib.sh"

bin=$CATALYST_BIN_DIR
work=$(mktemp -d)
export CATALYST_TOPIC_PREFIX="test.core.$$.$RANDOM."
export CATALYST_GROUP="core-probe-$$"
export CATALYST_BATCH_SIZE=50 CATALYST_BATCH_LINGER_MS=20 CATALYST_COMMIT_INTERVAL_MS=200
export CATALYST_RETRY_BACKOFF_MS=50 CATALYST_RETRY_BACKOFF_MAX_MS=500 CATALYST_LOG_LEVEL=info
on_exit "rm -rf '$work'"
on_exit "'$bin/topic-admin' delete >/dev/null 2>&1 || true"
"$bin/topic-admin" create
pids=()
on_exit 'for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null; done; true'

start_probe() { # start_probe NAME [PORT]: starts a consumer, pid in $probe_pid
	CATALYST_PROBE_PORT=${2:-0} "$bin/core-probe" consume write.v1 "$work/applied" 2>>"$work/$1.log" &
	probe_pid=$!
	pids+=("$probe_pid")
}
applied_count() { [ -f "$work/applied" ] && awk '{print $3}' "$work/applied" | sort -u | wc -l || echo 0; }
has_applied() { [ "$(applied_count)" -ge "$1" ]; }

# --- 1. mixed traffic: 2,000 good, flaky batches, 20 poison, 10 hidden poison --------
{
	for i in $(seq 1 2000); do
		k="SYM$((i % 37))"
		case $((i % 100)) in
		7) echo "$k:poison-$i" ;;
		13) [ $((i % 200)) = 13 ] && echo "$k:hidden-$i" || echo "$k:poison-$i" ;;
		50) echo "$k:flaky-$i" ;;
		esac
		echo "$k:good-$i"
	done
} >"$work/input"
n_good=$(grep -c -v -E ':(poison|hidden)' "$work/input")
n_bad=$(grep -c -E ':(poison|hidden)' "$work/input")
"$bin/core-probe" produce write.v1 <"$work/input"
start_probe first 0
wait_for 120 "all $n_good good messages applied" has_applied "$n_good"
kill -TERM "$probe_pid"
wait "$probe_pid" || fail "core-probe did not exit 0 on SIGTERM"

# every good message applied, no bad one
assert_eq "" "$(awk '{print $3}' "$work/applied" | grep -E ':(poison|hidden)' || true)" "bad messages applied"
diff <(grep -v -E ':(poison|hidden)' "$work/input" | sort) <(awk '{print $3}' "$work/applied" | sort -u) >/dev/null ||
	fail "applied set differs from the good input"
grep -q 'transient failure' "$work/first.log" || fail "no transient failure was retried (flaky messages)"
grep -q 'isolating a bad message' "$work/first.log" || fail "no batch was split (hidden poison)"

# exactly the bad ones dead-lettered, each with its reason and source headers
"$bin/topic-dump" --topic "${CATALYST_TOPIC_PREFIX}dlq.v1" --type raw --headers --count "$n_bad" \
	--idle-ms 5000 --timeout-ms 60000 >"$work/dlq"
assert_eq "$n_bad" "$(wc -l <"$work/dlq")" "dead letters"
python3 - "$work/dlq" "$work/input" "$CATALYST_TOPIC_PREFIX" <<'PY'
import json, sys
dlq = [json.loads(l) for l in open(sys.argv[1])]
bad = sorted(l.strip() for l in open(sys.argv[2]) if ":poison" in l or ":hidden" in l)
got = sorted(m["value_text"] for m in dlq)
if got != bad:
    sys.exit(f"dead letters differ from the bad input: {got[:3]} vs {bad[:3]}")
for m in dlq:
    h = m["headers"]
    want = {"x-catalyst-source-topic": sys.argv[3] + "write.v1", "x-catalyst-worker": "core-probe"}
    for k, v in want.items():
        if h.get(k) != v:
            sys.exit(f"header {k}={h.get(k)!r}, expected {v!r}")
    for k in ("x-catalyst-error", "x-catalyst-source-partition", "x-catalyst-source-offset", "x-catalyst-failed-at"):
        if not h.get(k):
            sys.exit(f"header {k} missing on {m['value_text']}")
    reason = "poison message" if ":poison" in m["value_text"] else "hidden poison in the batch"
    if h["x-catalyst-error"] != reason:
        sys.exit(f"reason {h['x-catalyst-error']!r} for {m['value_text']}")
    if m["key"] != m["value_text"].split(":")[0]:
        sys.exit("dead letter lost its key")
print(f"{len(dlq)} dead letters, each with reason and source headers")
PY

# --- 2. after a clean SIGTERM, a restart processes nothing twice ------------------------------
lines_before=$(wc -l <"$work/applied")
start_probe second 0
sleep 8 # long enough to be assigned and fetch anything uncommitted
kill -TERM "$probe_pid"
wait "$probe_pid" || fail "second core-probe did not exit 0"
assert_eq "$lines_before" "$(wc -l <"$work/applied")" "messages processed again after a clean shutdown"

# --- 3. a downstream outage: retried in the group, not ready, caught up after -----------------
port=$(free_port)
touch "$work/down"
start_probe third "$port"
printf 'SYMX:down-while %s\nSYMX:after-outage\n' "$work/down" | "$bin/core-probe" produce write.v1
# (retrying, not the "not polling yet" of a worker still starting)
wait_for 60 "readiness to drop during the outage" \
	bash -c "curl -s http://127.0.0.1:$port/readyz | grep -q '^not ready: retrying'"
sleep 12 # longer than a session timeout would allow if the member stopped polling
kill -0 "$probe_pid" || fail "core-probe exited during the outage"
grep -q "after-outage" "$work/applied" && fail "a message behind the failing one was applied out of order"
rm "$work/down"
wait_for 60 "catch-up after the outage" grep -q "after-outage" "$work/applied"
wait_for 30 "readiness after the outage" \
	bash -c "[ \"\$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:$port/readyz)\" = 200 ]"
# (read whole first: under pipefail, grep -q leaving early fails curl's
# next write, and so the pipeline)
metrics=$(curl -s "http://127.0.0.1:$port/metrics")
grep -q '^catalyst_retries_total [1-9]' <<<"$metrics" ||
	fail "retries not counted: $(grep -E '^catalyst_(retries|messages)_' <<<"$metrics" | tr '\n' ' ')"
kill -TERM "$probe_pid"
wait "$probe_pid" || fail "third core-probe did not exit 0"

# --- 4. two workers share the partitions; kill -9 of one loses nothing ----------------------------
: >"$work/applied"
for i in $(seq 1 3000); do echo "K$((i % 53)):late-$i"; done >"$work/late"
start_probe fourth 0; a=$probe_pid
start_probe fifth 0; b=$probe_pid
sleep 5
"$bin/core-probe" produce write.v1 <"$work/late"
sleep 1
kill -9 "$a"
wait "$a" 2>/dev/null || true
wait_for 120 "the survivor to apply every message" has_applied 3000
grep -q 'assigned' "$work/fifth.log" || fail "survivor logged no assignment"
diff <(sort "$work/late") <(awk '{print $3}' "$work/applied" | sort -u) >/dev/null ||
	fail "messages lost after kill -9 of one worker"
kill -TERM "$b"
wait "$b" || fail "survivor did not exit 0"

# --- 5. a prefetch queue far smaller than the backlog -------------------------------------------
# librdkafka (2.0) stops fetching when the queue is full and looks again only
# up to a second later; the loop wakes it when the queue runs dry. Here each
# fetch overfills a 16 KiB queue, which the handler (0.2 ms a message) drains
# well within that second; no periodic commit (a request to the same broker)
# wakes the fetcher meanwhile. The seeks that wake it must lose and double
# nothing. (No fsync here: beside other tests on a busy disk, a handler timed
# by fsync took longer than that second, and the fetcher woke by itself.)
: >"$work/applied"
for i in $(seq 1 4000); do echo "Q$((i % 41)):slow-$i"; done >"$work/queued"
"$bin/core-probe" produce write.v1 <"$work/queued"
port=$(free_port)
CATALYST_KAFKA_QUEUED_MAX_MESSAGES_KBYTES=16 CATALYST_KAFKA_MAX_PARTITION_FETCH_BYTES=4096 \
	CATALYST_COMMIT_INTERVAL_MS=600000 CATALYST_PROBE_FSYNC=false start_probe sixth "$port"
wait_for 120 "every queued message applied" has_applied 4000
assert_eq 4000 "$(wc -l <"$work/applied")" "messages applied (a message applied twice)"
diff <(sort "$work/queued") <(awk '{print $3}' "$work/applied" | sort) >/dev/null ||
	fail "applied messages differ from the queued ones"
wakes=$(curl -s "http://127.0.0.1:$port/metrics" | awk '$1 == "catalyst_fetch_wakeups_total" { print int($2) }')
if [ "${wakes:-0}" -eq 0 ]; then
	tail -n 20 "$work/sixth.log" >&2
	fail "the fetcher was never woken (catalyst_fetch_wakeups_total ${wakes:-missing})"
fi
kill -TERM "$probe_pid"
wait "$probe_pid" || fail "sixth core-probe did not exit 0"

# --- 6. the topic deleted under a running worker: SIGTERM still ends it ---------------------------
# (librdkafka 2.0's teardown then waits forever for an unassign that cannot
# complete; the worker gives it 10 s)
: >"$work/applied"
(
	export CATALYST_TOPIC_PREFIX="${CATALYST_TOPIC_PREFIX}gone."
	"$bin/topic-admin" create >/dev/null
	start_probe seventh 0
	echo "G:before-delete" | "$bin/core-probe" produce write.v1
	wait_for 60 "the message before the deletion applied" grep -q before-delete "$work/applied"
	"$bin/topic-admin" delete >/dev/null
	sleep 5
	kill -TERM "$probe_pid"
	wait_for 40 "the worker to exit after SIGTERM" bash -c "! kill -0 $probe_pid 2>/dev/null"
	wait "$probe_pid" || fail "core-probe did not exit 0 after its topic was deleted"
)
echo "ok: consumer core"
