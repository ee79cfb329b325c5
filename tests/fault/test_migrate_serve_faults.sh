#!/usr/bin/env bash
# catalyst-migrate serve under hostile clients and a database outage (real
# PostgreSQL primary of the stack, a scratch database):
#   - 100 GETs (unauthenticated and authenticated /api/migrations, /readyz,
#     /metrics) open no database session: the server's one session stays
#     the only one of its application_name;
#   - /api/migrations without the token: 401, no checksum or file name;
#   - the primary stopped: /readyz says "database unreachable" and nothing
#     of libpq's message (host, port, user), /api/migrations 503 the same;
#     the details are in the log; the primary back: ready again on a new
#     connection, still one session;
#   - its session hanging (the backend stopped): not ready, "database
#     unreachable", until it answers again.
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=tests/integration/lib.sh
. "$here/../integration/lib.sh"

migrate=$CATALYST_BIN_DIR/catalyst-migrate
[[ -x $migrate ]] || fail "$migrate not built"
work=$(mktemp -d)
on_exit "rm -rf '$work'"
export CATALYST_MIGRATIONS_DIR=$CATALYST_SOURCE_DIR/migrations
# whatever happens, the shared PostgreSQL is left running
on_exit "'$CATALYST_SOURCE_DIR/scripts/stack' start-service pg-primary >/dev/null 2>&1 || true"

scratch_db "mserve_$$"
db=$SCRATCH_PG_URL
db_name=$SCRATCH_DB
app="catalyst-migrate-fault-$$"
token="test-token-$RANDOM$RANDOM"
pg_user=$(python3 -c 'import sys, urllib.parse; print(urllib.parse.urlparse(sys.argv[1]).username or "")' "$db")
pg_port=$(python3 -c 'import sys, urllib.parse; print(urllib.parse.urlparse(sys.argv[1]).port or "")' "$db")
[[ -n $pg_user && -n $pg_port ]] || fail "could not read user and port from the stack's PostgreSQL URL"

# the URL names the application: its sessions are told from anyone else's
sep='?'
[[ $db == *\?* ]] && sep='&'
CATALYST_PG_URL="$db${sep}application_name=$app" CATALYST_MIGRATE_TOKEN=$token CATALYST_MIGRATE_PORT=0 \
	CATALYST_MIGRATE_BIND=127.0.0.1 CATALYST_MIGRATE_STATUS_REFRESH_S=1 CATALYST_PG_CONNECT_TIMEOUT_S=2 \
	"$migrate" serve 2>"$work/serve.log" &
serve_pid=$!
on_exit "kill -9 $serve_pid 2>/dev/null"
wait_for 20 "catalyst-migrate serve to listen" grep -q '"port":' "$work/serve.log"
port=$(grep -o '"port":[0-9]*' "$work/serve.log" | head -1 | cut -d: -f2)
base="http://127.0.0.1:$port"

# http METHOD PATH [curl args...]: sets code and body
http() {
	local method=$1 path=$2
	shift 2
	code=$(curl -s -o "$work/body" -w '%{http_code}' -m 10 -X "$method" "$@" "$base$path" || true)
	body=$(cat "$work/body" 2>/dev/null || true)
}
sessions() { # open sessions of the server
	psql_at "$LIB_ADMIN_PG_URL" "SELECT count(*) FROM pg_stat_activity WHERE application_name = '$app'"
}
sessions_total() { # sessions ever opened on the scratch database (PostgreSQL 14+)
	psql_at "$LIB_ADMIN_PG_URL" "SELECT sessions FROM pg_stat_database WHERE datname = '$db_name'"
}
is_ready() { [[ $(curl -s -o /dev/null -w '%{http_code}' -m 5 "$base/readyz") == 200 ]]; }
not_ready() { [[ $(curl -s -o /dev/null -w '%{http_code}' -m 5 "$base/readyz") == 503 ]]; }

http POST /api/migrations/up -H "Authorization: Bearer $token"
assert_eq 200 "$code" "POST up: $body"
wait_for 30 "serve to be ready" is_ready
assert_eq 1 "$(sessions)" "sessions of the server before the requests"

# --- 100 GETs open no session -------------------------------------------------------------
before=$(sessions_total)
pids_seen=$work/pids
: >"$pids_seen"
(
	while :; do
		psql_at "$LIB_ADMIN_PG_URL" "SELECT pid FROM pg_stat_activity WHERE application_name = '$app'" \
			>>"$pids_seen" 2>/dev/null || true
		sleep 0.05
	done
) &
sampler=$!
on_exit "kill $sampler 2>/dev/null"
gets() { # gets N PATH [curl args]: N GETs one after the other
	local n=$1 path=$2 i
	shift 2
	for ((i = 0; i < n; i++)); do
		curl -s -o /dev/null -m 10 "$@" "$base$path" || return 1
	done
}
gets 25 /api/migrations -H "Authorization: Bearer $token" &
g1=$!
gets 25 /api/migrations &
g2=$!
gets 25 /readyz &
g3=$!
gets 25 /metrics &
g4=$!
for g in $g1 $g2 $g3 $g4; do
	wait "$g" || fail "a GET failed"
done
kill "$sampler" 2>/dev/null || true
wait "$sampler" 2>/dev/null || true
after=$(sessions_total)
distinct=$(sort -u "$pids_seen" | grep -c . || true)
echo "100 GETs: $((after - before)) new sessions on the database, $distinct distinct server sessions seen"
((after - before <= 2)) || fail "100 GETs opened $((after - before)) database sessions"
((distinct <= 2)) || fail "the server used $distinct database sessions during 100 GETs"
assert_eq 1 "$(sessions)" "sessions of the server after 100 GETs"

# --- the token guards the status ------------------------------------------------------------
http GET /api/migrations
assert_eq 401 "$code" "GET /api/migrations without a token"
assert_not_contains "$body" "checksum" "the 401 body"
assert_not_contains "$body" "initial_schema" "the 401 body"
http GET /api/migrations -H "Authorization: Bearer $token"
assert_eq 200 "$code" "GET /api/migrations with the token"
assert_contains "$body" '"checksum"' "the status"

# --- the primary stopped: readiness says only "database unreachable" -----------------------------
"$CATALYST_SOURCE_DIR/scripts/stack" stop-service pg-primary >/dev/null
wait_for 60 "/readyz to say not ready" not_ready
http GET /readyz
assert_eq 503 "$code" "/readyz with the primary stopped"
assert_eq "not ready: database unreachable" "$body" "/readyz body with the primary stopped"
http GET /api/migrations -H "Authorization: Bearer $token"
assert_eq 503 "$code" "/api/migrations with the primary stopped"
assert_eq '{"error":"database unreachable"}' "$body" "/api/migrations body with the primary stopped"
for leak in 127.0.0.1 localhost "$pg_port" "$pg_user" "connection to server"; do
	http GET /readyz
	assert_not_contains "$body" "$leak" "/readyz body"
	http GET /api/migrations -H "Authorization: Bearer $token"
	assert_not_contains "$body" "$leak" "/api/migrations body"
done
http GET /healthz
assert_eq 200 "$code" "/healthz with the primary stopped"
# the details went to the log
assert_contains "$(cat "$work/serve.log")" "could not read the migration status" "the log"

"$CATALYST_SOURCE_DIR/scripts/stack" start-service pg-primary >/dev/null
wait_for 60 "/readyz to say ready again" is_ready
assert_eq 1 "$(sessions)" "sessions of the server after the primary came back"
assert_contains "$(cat "$work/serve.log")" "migration status readable again" "the log"

# --- its session hangs (the backend stopped, as on a dead network): not ready -------------------
backend=$(psql_at "$LIB_ADMIN_PG_URL" "SELECT pid FROM pg_stat_activity WHERE application_name = '$app'")
[[ $backend =~ ^[0-9]+$ ]] || fail "no single session of the server: [$backend]"
kill -STOP "$backend"
on_exit "kill -CONT $backend 2>/dev/null"
wait_for 60 "/readyz to say not ready while the status query hangs" not_ready
http GET /readyz
assert_eq "not ready: database unreachable" "$body" "/readyz body while the status query hangs"
http GET /healthz
assert_eq 200 "$code" "/healthz while the status query hangs"
kill -CONT "$backend"
wait_for 60 "/readyz to say ready again after the hang" is_ready

kill -TERM "$serve_pid"
set +e
wait "$serve_pid"
serve_rc=$?
set -e
assert_eq 0 "$serve_rc" "serve exit code after SIGTERM: $(tail -3 "$work/serve.log")"
grep '^{' "$work/serve.log" | python3 -c 'import json, sys; [json.loads(l) for l in sys.stdin]' ||
	fail "a log line is not JSON"
echo "ok: one session for 100 GETs, the token guards the status, readiness tells nothing of the database"
