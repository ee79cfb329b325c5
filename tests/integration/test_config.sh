#!/usr/bin/env bash
# Configuration is read and validated completely before anything connects:
# with every service address pointing at a closed port (no stack needed), a
# bad setting stops each binary at once with exit 2 and one line naming the
# variable, never with a connection error; the S3 settings are required
# only with CATALYST_BACKUP_STORE=s3 (catalyst-backup starts on a directory
# without them).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
CATALYST_SOURCE_DIR=${CATALYST_SOURCE_DIR:-$(cd "$here/../.." && pwd)}
bin=${CATALYST_BIN_DIR:-$CATALYST_SOURCE_DIR/build/bin}
work=$(mktemp -d)
pid=
trap '[[ -z $pid ]] || kill -9 "$pid" 2>/dev/null; rm -rf "$work"' EXIT

fail() {
	echo "FAIL: $*" >&2
	exit 1
}

# a port nothing listens on: bound, never listened to, closed again
closed_port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
closed_env=(env -i "PATH=$PATH" "CATALYST_BROKERS=127.0.0.1:$closed_port"
	"CATALYST_PG_URL=postgresql://u:hunter2@127.0.0.1:$closed_port/db?connect_timeout=5"
	"CATALYST_REDIS_URL=redis://:hunter2@127.0.0.1:$closed_port/0"
	"CATALYST_REPLICA_URL=postgresql://u:hunter2@127.0.0.1:$closed_port/replica" CATALYST_REPLICA_NAME=r1)

# expect_usage_error "WORKER [ARG...]" VARIABLE [NAME=VALUE...]: exit 2 within
# 2 s, one line "catalyst-WORKER: VARIABLE: ...", no password, no connection
# attempt
expect_usage_error() {
	local command worker variable=$2 rc=0 err
	read -ra command <<<"$1"
	worker=${command[0]}
	shift 2
	timeout 2 "${closed_env[@]}" CATALYST_LOG_LEVEL=debug "$@" "$bin/catalyst-$worker" "${command[@]:1}" \
		>"$work/out" 2>"$work/err" || rc=$?
	err=$(cat "$work/err")
	[[ $rc == 2 ]] || fail "catalyst-$worker $*: exit $rc, not 2 ($err)"
	[[ $(wc -l <"$work/err") == 1 ]] || fail "catalyst-$worker $*: not one line: $err"
	[[ $err == "catalyst-$worker: $variable: "* ]] || fail "catalyst-$worker $*: $err"
	[[ $err != *hunter2* ]] || fail "catalyst-$worker $*: a password in $err"
	[[ $err != *connect* ]] || fail "catalyst-$worker $*: tried to connect: $err"
}

# catalyst-cache: the candidate limits are validated with the rest
for bad in 5,x abc 0 1001 1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17; do
	expect_usage_error cache CATALYST_CACHE_TOP_LIMITS "CATALYST_CACHE_TOP_LIMITS=$bad"
done
expect_usage_error cache CATALYST_CACHE_KEY_NAMESPACE "CATALYST_CACHE_KEY_NAMESPACE=a*"
expect_usage_error cache CATALYST_CACHE_NEWS_TTL_S CATALYST_CACHE_NEWS_TTL_S=-1

# catalyst-backup: S3 settings only for the s3 store, the directory only for dir
expect_usage_error backup CATALYST_S3_ENDPOINT
expect_usage_error backup CATALYST_S3_BUCKET CATALYST_S3_ENDPOINT=http://127.0.0.1:1
expect_usage_error backup CATALYST_BACKUP_DIR CATALYST_BACKUP_STORE=dir
for bad in "a=postgresql://u:hunter2@h/db;=x" "a=postgresql://u:hunter2@h/db;b" "a=postgresql://u:hunter2@[::1/db"; do
	expect_usage_error backup CATALYST_BACKUP_RESTORE_TARGETS "CATALYST_BACKUP_RESTORE_TARGETS=$bad"
done
expect_usage_error backup CATALYST_BACKUP_GZIP_LEVEL CATALYST_BACKUP_STORE=dir "CATALYST_BACKUP_DIR=$work" \
	CATALYST_BACKUP_GZIP_LEVEL=99
# (no broker: its consumer is never assigned, and such a consumer is left to
# the process's end on purpose, since librdkafka 2.0 aborts destroying it; so
# the sanitizer build's leak check is off for this one start)
"${closed_env[@]}" "ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0" CATALYST_BACKUP_STORE=dir \
	"CATALYST_BACKUP_DIR=$work" CATALYST_BACKUP_PORT=0 \
	CATALYST_BACKUP_BIND=127.0.0.1 "$bin/catalyst-backup" 2>"$work/backup.log" &
pid=$!
for _ in $(seq 100); do
	grep -q '"port":' "$work/backup.log" && break
	kill -0 "$pid" 2>/dev/null || fail "catalyst-backup on a directory without S3 settings: $(cat "$work/backup.log")"
	sleep 0.1
done
grep -q '"port":' "$work/backup.log" || fail "catalyst-backup on a directory did not start: $(cat "$work/backup.log")"
kill -TERM "$pid"
wait "$pid" || fail "catalyst-backup: SIGTERM exit $?"
pid=

# max.poll.interval.ms: each worker's default from its table, the operator's
# CATALYST_KAFKA_MAX_POLL_INTERVAL_MS wins (librdkafka's configuration dump
# says what it was given)
max_poll() { # WORKER [NAME=VALUE...]: the value librdkafka's consumer got
	local worker=$1
	shift
	timeout 3 "${closed_env[@]}" CATALYST_BACKUP_STORE=dir "CATALYST_BACKUP_DIR=$work" CATALYST_LOG_LEVEL=debug \
		CATALYST_KAFKA_DEBUG=conf "CATALYST_${worker^^}_PORT=0" "CATALYST_${worker^^}_BIND=127.0.0.1" "$@" \
		"$bin/catalyst-$worker" 2>&1 | grep -o -m1 'max.poll.interval.ms = [0-9]*' | cut -d' ' -f3 || true
}
for case in "cache 3600000" "sync 3600000" "backup 21600000" \
	"backup 120000 CATALYST_BACKUP_MAX_COMMAND_S=120" "cache 70000 CATALYST_KAFKA_MAX_POLL_INTERVAL_MS=70000" \
	"sync 70000 CATALYST_KAFKA_MAX_POLL_INTERVAL_MS=70000" "backup 70000 CATALYST_KAFKA_MAX_POLL_INTERVAL_MS=70000"; do
	read -r worker expect settings <<<"$case"
	# shellcheck disable=SC2086
	got=$(max_poll "$worker" $settings)
	[[ $got == "$expect" ]] || fail "catalyst-$worker $settings: max.poll.interval.ms $got, not $expect"
done
expect_usage_error cache CATALYST_KAFKA_MAX_POLL_INTERVAL_MS CATALYST_KAFKA_MAX_POLL_INTERVAL_MS=soon

# the other consumers: a bad shared consumer setting, a bad setting of their own
for worker in persist sync cache backup; do
	expect_usage_error "$worker" CATALYST_BATCH_SIZE CATALYST_BATCH_SIZE=0
done
expect_usage_error sync CATALYST_SYNC_CHECK_CHUNK_SIZE CATALYST_SYNC_CHECK_CHUNK_SIZE=1
expect_usage_error persist CATALYST_CHANGES_TIMEOUT_MS CATALYST_CHANGES_TIMEOUT_MS=999

# catalyst-migrate: the migrations directory is checked with the rest of the
# table (before serve's own requirement of a token), whatever the command
touch "$work/not-a-dir"
for command in up "down 1" status validate serve "reset-version news_raw n1 1"; do
	expect_usage_error "migrate $command" CATALYST_MIGRATIONS_DIR "CATALYST_MIGRATIONS_DIR=$work/none"
done
expect_usage_error "migrate status" CATALYST_MIGRATIONS_DIR "CATALYST_MIGRATIONS_DIR=$work/not-a-dir"
expect_usage_error "migrate serve" CATALYST_MIGRATE_TOKEN "CATALYST_MIGRATIONS_DIR=$work"

# catalyst-publish: its own settings, whatever the subcommand
for command in write "dlq list" "cache delete k"; do
	expect_usage_error "publish $command" CATALYST_PUBLISH_TIMEOUT_MS CATALYST_PUBLISH_TIMEOUT_MS=999
done
echo "ok"
