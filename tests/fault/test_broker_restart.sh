#!/usr/bin/env bash
# catalyst-persist and catalyst-sync across Kafka restarts, with static
# group membership (CATALYST_GROUP_INSTANCE_ID, as deploy/ recommends), on
# the real stack (topics, a scratch primary and replica database):
#   1. SIGTERM at once and at moments of the first join (librdkafka 2.0
#      aborts when it destroys a consumer that joined but was never
#      assigned): exit 0 every time;
#   2. the broker restarted 10 times (CATALYST_BROKER_RESTARTS; scaled by
#      CATALYST_TEST_SCALE_PCT, at least twice) while
#      writes, stale versions and deletes flow: no worker exits (a fenced
#      consumer is made again), nothing is lost, nothing applied out of
#      version order (the primary holds what applying the writes one at a
#      time leaves, the replica equals the primary), and SIGTERM still
#      exits 0.
# Whatever happens, the stack's Kafka is left running.
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=tests/integration/lib.sh
. "$here/../integration/lib.sh"

bin=$CATALYST_BIN_DIR
records=$CATALYST_SOURCE_DIR/tests/integration/records.py
# the stack's own commands see the stack's topic prefix, not this test's
# (a restarted broker would otherwise be asked to create this test's topics
# while it loads its metadata)
stack() { env -u CATALYST_TOPIC_PREFIX "$CATALYST_SOURCE_DIR/scripts/stack" "$@"; }
work=$(mktemp -d)
on_exit "rm -rf '$work'"
export CATALYST_TOPIC_PREFIX="test.brokerfault.$$.$RANDOM."
export CATALYST_PERSIST_GROUP="catalyst-persist-brokerfault-$$"
export CATALYST_REPLICA_NAME="brokerfault$$"
export CATALYST_PERSIST_PORT=0 CATALYST_PERSIST_BIND=127.0.0.1 CATALYST_SYNC_PORT=0 CATALYST_SYNC_BIND=127.0.0.1
export CATALYST_LOG_LEVEL=info CATALYST_COMMIT_INTERVAL_MS=300 CATALYST_BATCH_SIZE=500
export CATALYST_RETRY_BACKOFF_MS=100 CATALYST_RETRY_BACKOFF_MAX_MS=2000 CATALYST_SHUTDOWN_GRACE_MS=10000
export CATALYST_KAFKA_SESSION_TIMEOUT_MS=10000 CATALYST_KAFKA_HEARTBEAT_INTERVAL_MS=1000
export CATALYST_MIGRATIONS_DIR=$CATALYST_SOURCE_DIR/migrations
sync_group=catalyst-sync-$CATALYST_REPLICA_NAME
n_restarts=${CATALYST_BROKER_RESTARTS:-$(scaled 10)}
((n_restarts >= 2)) || n_restarts=2
on_exit "stack start-service kafka >/dev/null 2>&1 || true"
on_exit "'$bin/topic-admin' delete >/dev/null 2>&1 || true"
"$bin/topic-admin" create

scratch_db "brokerfault_$$"
primary=$SCRATCH_PG_URL
scratch_replica_db "brokerfault_$$"
replica=$SCRATCH_REPLICA_URL
export CATALYST_PG_URL=$primary CATALYST_REPLICA_URL=$replica
"$bin/catalyst-migrate" up 2>/dev/null
CATALYST_PG_URL=$replica "$bin/catalyst-migrate" up 2>/dev/null

pids=()
on_exit 'for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null; done; true'

# --- 1. SIGTERM at once and during the first join -----------------------------------
handles_term() { # handles_term PID: the process catches SIGTERM (before that, it is the loader's)
	local mask
	mask=$(awk '$1 == "SigCgt:" { print $2 }' "/proc/$1/status" 2>/dev/null) || return 1
	[[ -n $mask ]] && (((16#$mask >> 14) & 1))
}
for delay in 0 0.2 0.5 1 1.5 2 2.5 3 4; do
	CATALYST_GROUP_INSTANCE_ID="persist-early-$$" CATALYST_PERSIST_GROUP="early-$$-$delay" \
		"$bin/catalyst-persist" 2>"$work/early.log" &
	pid=$!
	pids+=("$pid")
	wait_for 10 "catalyst-persist to catch SIGTERM" handles_term "$pid"
	sleep "$delay"
	kill -TERM "$pid"
	rc=0
	wait "$pid" || rc=$?
	[[ $rc == 0 ]] || fail "catalyst-persist exited $rc on SIGTERM $delay s after its start: $(tail -3 "$work/early.log")"
done
echo "SIGTERM right after start: exit 0 at every moment tried"

# --- 2. the broker restarted under load ------------------------------------------------
CATALYST_GROUP_INSTANCE_ID="persist-$$-0" "$bin/catalyst-persist" 2>"$work/persist.log" &
persist_pid=$!
pids+=("$persist_pid")
CATALYST_GROUP_INSTANCE_ID="sync-$$-0" "$bin/catalyst-sync" 2>"$work/sync.log" &
sync_pid=$!
pids+=("$sync_pid")

n=$(scaled 40000)
python3 "$records" gen "$n" 11 >"$work/base.jsonl"
python3 "$records" derive older "$work/base.jsonl" >"$work/older.jsonl"
python3 "$records" derive deletes-keyed "$work/base.jsonl" >"$work/deletes.jsonl"
python3 "$records" derive stale "$work/base.jsonl" >"$work/stale.jsonl"
python3 "$records" derive revive "$work/base.jsonl" >"$work/revive.jsonl"
cat "$work"/{base,older,deletes,stale,revive}.jsonl >"$work/all.jsonl"
# slices published one after another, each again until the broker took it
# all (a slice published twice changes nothing: every effect is versioned)
split -l $(($(wc -l <"$work/all.jsonl") / 40 + 1)) -d -a 3 "$work/all.jsonl" "$work/slice."
(
	for f in "$work"/slice.*; do
		until "$bin/catalyst-publish" write "$f" >"$work/publish.out" 2>&1; do sleep 1; done
		sleep 0.5
	done
) &
publisher=$!
pids+=("$publisher")

alive() { # alive: both workers still running
	kill -0 "$persist_pid" 2>/dev/null || fail "catalyst-persist exited: $(tail -5 "$work/persist.log")"
	kill -0 "$sync_pid" 2>/dev/null || fail "catalyst-sync exited: $(tail -5 "$work/sync.log")"
}
for ((i = 1; i <= n_restarts; i++)); do
	sleep "$((1 + RANDOM % 3)).$((RANDOM % 10))"
	stack restart-service kafka >/dev/null || fail "could not restart Kafka ($i)"
	echo "kafka restarted ($i of $n_restarts)"
	alive
done
wait "$publisher" || fail "publishing failed"
"$bin/group-lag" --group "$CATALYST_PERSIST_GROUP" --topic "${CATALYST_TOPIC_PREFIX}write.v1" --wait-ms 240000 \
	>/dev/null || fail "catalyst-persist did not catch up: $(tail -5 "$work/persist.log")"
"$bin/group-lag" --group "$sync_group" --topic "${CATALYST_TOPIC_PREFIX}changes.v1" --wait-ms 240000 \
	>/dev/null || fail "catalyst-sync did not catch up: $(tail -5 "$work/sync.log")"
alive
echo "consumers made again: persist $(grep -c 'making it again' "$work/persist.log" || true)," \
	"sync $(grep -c 'making it again' "$work/sync.log" || true)"

python3 "$records" db-check "$primary" "$work/all.jsonl" || fail "the primary lost or misapplied writes"
table_dump "$primary" >"$work/primary.dump"
table_dump "$replica" >"$work/replica.dump"
cmp -s "$work/primary.dump" "$work/replica.dump" ||
	fail "the replica differs from the primary: $(diff "$work/primary.dump" "$work/replica.dump" | head -5)"

for w in persist sync; do
	pid_var=${w}_pid
	kill -TERM "${!pid_var}"
	rc=0
	wait "${!pid_var}" || rc=$?
	[[ $rc == 0 ]] || fail "catalyst-$w exited $rc on SIGTERM after the restarts"
done
echo "ok: $n_restarts broker restarts, nothing lost, replica = primary, both workers up until SIGTERM"
