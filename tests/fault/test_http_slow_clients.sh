#!/usr/bin/env bash
# Slow HTTP clients (slowloris) cannot starve a worker's probes: catalyst-persist
# (cat_http_serve, default limits, as every worker) while 200 connections from
# 127.0.0.2 send their headers a line a second and never finish them:
#   - at most CATALYST_HTTP_MAX_CONNECTIONS_PER_IP (16) of them are kept, the
#     rest are closed at once;
#   - meanwhile /healthz, /readyz and /metrics answer a client at 127.0.0.1
#     (the kubelet, Prometheus);
#   - the kept ones are closed once their headers are overdue
#     (CATALYST_HTTP_TIMEOUT_S, 5 s), although they never go idle that long;
#   - then 127.0.0.2 is served again.
# (On Linux all of 127.0.0.0/8 is loopback: the second address is a second
# client.)
# ctest: beside others (it restarts none of the stack's services)
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=tests/integration/lib.sh
. "$here/../integration/lib.sh"

bin=$CATALYST_BIN_DIR
persist=$bin/catalyst-persist
[[ -x $persist ]] || fail "$persist not built"
work=$(mktemp -d)
on_exit "rm -rf '$work'"
export CATALYST_TOPIC_PREFIX="test.httpslow.$$.$RANDOM."
export CATALYST_PERSIST_GROUP="catalyst-persist-httpslow-$$"
export CATALYST_PERSIST_BIND=127.0.0.1 CATALYST_LOG_LEVEL=info
export CATALYST_MIGRATIONS_DIR=$CATALYST_SOURCE_DIR/migrations
on_exit "'$bin/topic-admin' delete >/dev/null 2>&1 || true"
"$bin/topic-admin" create
scratch_db "httpslow_$$"
export CATALYST_PG_URL=$SCRATCH_PG_URL
"$bin/catalyst-migrate" up 2>/dev/null

port=$(free_port)
CATALYST_PERSIST_PORT=$port "$persist" 2>"$work/persist.log" &
persist_pid=$!
on_exit "kill -9 $persist_pid 2>/dev/null"
base="http://127.0.0.1:$port"
wait_for 30 "catalyst-persist to listen" curl -sf -m 5 "$base/healthz"

# probe URL [curl args]: the HTTP status, 000 when there was no answer
probe() {
	local url=$1
	shift
	curl -s -o "$work/body" -w '%{http_code}' -m 10 "$@" "$url" || true
}
state() { # state KEY: a count from the slow clients' state file
	awk -v k="$1" '$1 == k { print $2 }' "$work/state"
}
all_closed() { [[ $(state open) == 0 ]]; }

# --- 200 slow connections from 127.0.0.2 ----------------------------------------------
python3 "$here/slow_clients.py" --port "$port" --source 127.0.0.2 --count 200 --interval 1 --hold 120 \
	--state "$work/state" &
slow_pid=$!
on_exit "kill $slow_pid 2>/dev/null"
wait_for 60 "the slow clients to connect" test -s "$work/state"

# while they are held open, another address is served
(($(state open) >= 1)) || fail "the slow connections were closed before the probes"
assert_eq 200 "$(probe "$base/healthz")" "/healthz from 127.0.0.1 while slow clients hold connections"
assert_eq "ok" "$(cat "$work/body")" "/healthz body"
code=$(probe "$base/readyz")
[[ $code == 200 || $code == 503 ]] || fail "/readyz from 127.0.0.1 while slow clients hold connections: $code"
assert_eq 200 "$(probe "$base/metrics")" "/metrics from 127.0.0.1 while slow clients hold connections"
assert_contains "$(cat "$work/body")" "catalyst_ready"
# the attacker's address is at its limit
assert_eq 000 "$(probe "$base/healthz" --interface 127.0.0.2)" "a further connection from 127.0.0.2"

opened=$(state opened)
refused=$(state refused)
((opened >= 1)) || fail "no slow connection was kept open"
((opened <= 16)) || fail "$opened connections from one address kept open, the limit is 16"
assert_eq 200 $((opened + refused)) "kept + refused connections"

# the server closes them although a line arrives every second (an idle
# timeout alone would never fire)
wait_for 90 "the server to close the slow connections" all_closed
wait "$slow_pid" || fail "slow_clients.py failed"
assert_eq "$opened" "$(state closed)" "slow connections closed by the server"
(($(state lines_max) >= 2)) || fail "the slow clients sent fewer than 2 header lines: not trickling"
assert_contains "$(cat "$work/persist.log")" "request headers not complete within 5 s" "the worker's log"

# and the address is served again
assert_eq 200 "$(probe "$base/healthz" --interface 127.0.0.2)" "/healthz from 127.0.0.2 after the attack"
kill -0 "$persist_pid" || fail "catalyst-persist died"

# --- every log line is JSON -----------------------------------------------------------------
grep '^{' "$work/persist.log" | python3 -c 'import json, sys; [json.loads(l) for l in sys.stdin]' ||
	fail "a log line is not JSON"
kill -TERM "$persist_pid"
set +e
wait "$persist_pid"
persist_rc=$?
set -e
assert_eq 0 "$persist_rc" "catalyst-persist exit code after SIGTERM: $(tail -3 "$work/persist.log")"
echo "ok: $opened slow connections kept of 200, $refused refused, probes served, all closed when overdue"
