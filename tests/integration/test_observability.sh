#!/usr/bin/env bash
# The Grafana dashboard and the Prometheus alert rules of deploy/ against what
# the workers really export: the rules pass `promtool check rules` and their
# unit tests (`promtool test rules`); every dashboard expression is valid
# PromQL (checked by promtool as a recording rule); each worker (persist,
# cache, sync, backup, migrate serve) started on a scratch database and
# topics of its own serves /metrics, and every metric name the dashboard and
# the rules reference is one of the series names some worker defines
# (histograms only through _bucket/_sum/_count; a family with no series yet
# through its # TYPE line); a dashboard and rules with misspelled names are
# caught, naming exactly those names.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=tests/integration/lib.sh
. "$here/lib.sh"

bin=$CATALYST_BIN_DIR
dashboard=$CATALYST_SOURCE_DIR/deploy/grafana/catalyst-fleet.json
rules=$CATALYST_SOURCE_DIR/deploy/prometheus/catalyst-alerts.yml
rules_test=$CATALYST_SOURCE_DIR/deploy/prometheus/catalyst-alerts.test.yml
names=$here/promql_names.py
command -v promtool >/dev/null || fail "promtool not found (Debian package prometheus: .ci/install)"
work=$(mktemp -d)
on_exit "rm -rf '$work'"

# --- the rules: syntax, then their unit tests ------------------------------------------
run promtool check rules "$rules"
assert_eq 0 "$rc" "promtool check rules: $out $err"
run promtool test rules "$rules_test"
assert_eq 0 "$rc" "promtool test rules: $out $err"
assert_contains "$out" "SUCCESS" "promtool test rules"

# --- the dashboard: every expression parses as PromQL -------------------------------------
# Grafana's variables take a plain value first, as Grafana would interpolate them
python3 - "$dashboard" "$work/dashboard-rules.yml" <<'PY'
import json, sys
sys.path.insert(0, sys.argv[0] and __import__("os").path.dirname(sys.argv[0]))
dash = json.load(open(sys.argv[1]))
exprs = []
def walk(panels):
    for p in panels:
        exprs.extend(t["expr"] for t in p.get("targets", []))
        walk(p.get("panels", []))
walk(dash["panels"])
subst = {"$__rate_interval": "1m", "$job": ".+", "$instance": ".+", "${datasource}": "x"}
rules = []
for i, e in enumerate(exprs):
    for k, v in subst.items():
        e = e.replace(k, v)
    if "$" in e:
        sys.exit(f"an unknown Grafana variable in {e}")
    rules.append({"record": f"dashboard:expr_{i}", "expr": e})
with open(sys.argv[2], "w") as f:
    json.dump({"groups": [{"name": "dashboard", "rules": rules}]}, f)  # JSON is YAML
print(f"{len(rules)} dashboard expressions")
PY
run promtool check rules "$work/dashboard-rules.yml"
assert_eq 0 "$rc" "the dashboard's expressions as PromQL: $out $err"

# --- the workers, each on its own scratch database, topics and groups -------------------
export CATALYST_TOPIC_PREFIX="test.obs.$$.$RANDOM."
export CATALYST_PERSIST_GROUP="test-obs-persist-$$" CATALYST_CACHE_GROUP="test-obs-cache-$$"
export CATALYST_BACKUP_GROUP="test-obs-backup-$$" CATALYST_REPLICA_NAME="obs$$"
export CATALYST_PERSIST_PORT=0 CATALYST_CACHE_PORT=0 CATALYST_SYNC_PORT=0 CATALYST_BACKUP_PORT=0
export CATALYST_MIGRATE_PORT=0 CATALYST_PERSIST_BIND=127.0.0.1 CATALYST_CACHE_BIND=127.0.0.1
export CATALYST_SYNC_BIND=127.0.0.1 CATALYST_BACKUP_BIND=127.0.0.1 CATALYST_MIGRATE_BIND=127.0.0.1
export CATALYST_MIGRATE_TOKEN="obs-token-$$-$RANDOM" CATALYST_LOG_LEVEL=info
export CATALYST_MIGRATIONS_DIR=$CATALYST_SOURCE_DIR/migrations
export CATALYST_REDIS_URL="${CATALYST_REDIS_URL%/*}/5"
on_exit "'$bin/topic-admin' delete >/dev/null 2>&1 || true"
"$bin/topic-admin" create
scratch_db "obs_$$"
scratch_replica_db "obs_$$"
export CATALYST_PG_URL=$SCRATCH_PG_URL CATALYST_REPLICA_URL=$SCRATCH_REPLICA_URL
"$bin/catalyst-migrate" up 2>/dev/null
CATALYST_PG_URL=$SCRATCH_REPLICA_URL "$bin/catalyst-migrate" up 2>/dev/null

pids=()
on_exit 'for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null; wait "$p" 2>/dev/null; done; true'
declare -A base
start() { # NAME ARGV...: starts a worker, records its /metrics base URL
	local name=$1
	shift
	"$@" 2>"$work/$name.log" &
	pids+=($!)
	wait_for 60 "$name to listen" grep -q '"port":' "$work/$name.log"
	base[$name]="http://127.0.0.1:$(grep -o '"port":[0-9]*' "$work/$name.log" | head -1 | cut -d: -f2)"
}
start persist "$bin/catalyst-persist"
start cache "$bin/catalyst-cache"
start sync "$bin/catalyst-sync"
start backup "$bin/catalyst-backup"
start migrate "$bin/catalyst-migrate" serve
ready() { [[ $(curl -s -o /dev/null -w '%{http_code}' "$1/readyz") == 200 ]]; }
for name in persist cache sync backup migrate; do
	wait_for 90 "catalyst-$name to be ready" ready "${base[$name]}"
done
# one record through persist, so the consumers have handled something
echo '{"table":"news_raw","news_id":"obs-1","symbol":"OBS","version":1}' | "$bin/catalyst-publish" write - \
	>/dev/null 2>&1
applied() { grep -q '^catalyst_messages_applied_total 1$' <<<"$(curl -s "${base[persist]}/metrics")"; }
wait_for 60 "the record to be applied" applied

for name in persist cache sync backup migrate; do
	curl -sf "${base[$name]}/metrics" >"$work/$name.prom" || fail "no /metrics from catalyst-$name"
	grep -qx 'catalyst_ready 1' "$work/$name.prom" || fail "catalyst-$name's /metrics has no catalyst_ready 1"
done
# a labelled family whose series come later is there by its HELP and TYPE
assert_contains "$(cat "$work/backup.prom")" \
	"# TYPE catalyst_backup_last_success_timestamp_seconds gauge" "catalyst-backup before any backup"
assert_not_contains "$(cat "$work/backup.prom")" "catalyst_backup_last_success_timestamp_seconds{" \
	"catalyst-backup before any backup"
grep -qF "catalyst_consumer_lag{group=\"$CATALYST_PERSIST_GROUP\",topic=\"${CATALYST_TOPIC_PREFIX}write.v1\",partition=\"" \
	"$work/persist.prom" || fail "catalyst-persist has no lag series with its group, topic and partition"

python3 "$names" exported "$work"/*.prom >"$work/exported"
# series Prometheus makes itself, for every target
echo up >>"$work/exported"
sort -u -o "$work/exported" "$work/exported"

# unknown_names FILE...: the names FILEs reference that no worker exports
unknown_names() {
	python3 "$names" names "$@" >"$work/referenced" || fail "promql_names.py refused $*"
	comm -23 "$work/referenced" "$work/exported"
}

# --- every name of the dashboard and of the rules is exported ----------------------------
unknown=$(unknown_names "$dashboard" "$rules")
[[ -z $unknown ]] || fail "the dashboard or the rules reference metrics no worker exports: $(echo $unknown)"
n_referenced=$(wc -l <"$work/referenced")
((n_referenced >= 30)) || fail "only $n_referenced names referenced: the extraction lost some"
for name in catalyst_consumer_lag catalyst_end_to_end_latency_seconds_bucket catalyst_messages_dead_lettered_total \
	catalyst_retries_total catalyst_ready catalyst_sync_replication_lag_seconds \
	catalyst_cache_pipeline_depth_bucket catalyst_backup_last_success_timestamp_seconds up; do
	grep -qx "$name" "$work/referenced" || fail "$name is not referenced by the dashboard or the rules"
done

# --- the check fails on unknown names: a misspelled counter, a histogram's bare
# name, a counter taken for a histogram, a name in a rule -----------------------------------
python3 - "$dashboard" "$work/bad-dashboard.json" <<'PY'
import json, sys
dash = json.load(open(sys.argv[1]))
bad = {"catalyst_messages_consumed_total": "catalyst_messages_consumed_totl",
       "catalyst_end_to_end_latency_seconds_bucket": "catalyst_end_to_end_latency_seconds",
       "catalyst_retries_total": "catalyst_retries_total_bucket"}
def walk(panels):
    for p in panels:
        for t in p.get("targets", []):
            for good, wrong in bad.items():
                t["expr"] = t["expr"].replace(good + "{", wrong + "{")
        walk(p.get("panels", []))
walk(dash["panels"])
json.dump(dash, open(sys.argv[2], "w"))
PY
sed 's/catalyst_sync_replication_lag_seconds)/catalyst_sync_replica_lag_seconds)/' "$rules" >"$work/bad-rules.yml"
unknown=$(unknown_names "$work/bad-dashboard.json" "$work/bad-rules.yml" | tr '\n' ' ')
assert_eq "catalyst_end_to_end_latency_seconds catalyst_messages_consumed_totl catalyst_retries_total_bucket catalyst_sync_replica_lag_seconds " \
	"$unknown" "the names the check reports for the misspelled dashboard and rules"

echo "dashboard and alert rules: $n_referenced metric names, all exported by the workers"
