#!/usr/bin/env bash
# catalyst-cache against Redis servers it must not trust blindly (fakes the
# test runs; Kafka and PostgreSQL are the stack's):
#   1. a server that says it is Redis 6.2: the worker refuses it at start,
#      exit 1, one line naming the minimum version (7.0: EXPIRE ... GT);
#   2. a server that answers every command one byte every half second,
#      never finishing: the readiness probe's PING gives up within
#      CATALYST_REDIS_TIMEOUT_MS and /readyz says why (before, every byte
#      restarted the timeout and the probe hung for good).
# ctest: beside others (it restarts none of the stack's services)
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=tests/integration/lib.sh
. "$here/../integration/lib.sh"

bin=$CATALYST_BIN_DIR
work=$(mktemp -d)
on_exit "rm -rf '$work'"
export CATALYST_TOPIC_PREFIX="test.rhostile.$$.$RANDOM."
export CATALYST_CACHE_GROUP="catalyst-cache-rhostile-$$" CATALYST_CACHE_BIND=127.0.0.1
export CATALYST_LOG_LEVEL=info CATALYST_REDIS_CONNECT_TIMEOUT_MS=2000 CATALYST_REDIS_TIMEOUT_MS=1000
export CATALYST_MIGRATIONS_DIR=$CATALYST_SOURCE_DIR/migrations
on_exit "'$bin/topic-admin' delete >/dev/null 2>&1 || true"
"$bin/topic-admin" create
scratch_db "rhostile_$$"
export CATALYST_PG_URL=$SCRATCH_PG_URL
"$bin/catalyst-migrate" up 2>/dev/null

cat >"$work/fake_redis.py" <<'EOF'
"""A fake Redis: `old` says it is 6.2.14; `trickle` answers the log-in and
INFO, then every other command one byte every 0.5 s, never finishing."""
import os
import socket
import sys
import threading
import time

mode, port_file = sys.argv[1], sys.argv[2]


def read_command(f):
    line = f.readline()
    if not line:
        return None
    args = []
    for _ in range(int(line[1:])):
        n = int(f.readline()[1:])
        args.append(f.read(n + 2)[:-2])
    return args


def serve(conn):
    f = conn.makefile("rb")
    try:
        while True:
            args = read_command(f)
            if args is None:
                return
            cmd = args[0].upper()
            if cmd == b"INFO":
                version = b"6.2.14" if mode == "old" else b"7.0.15"
                body = b"# Server\r\nredis_version:" + version + b"\r\nredis_mode:standalone\r\n"
                conn.sendall(b"$%d\r\n%s\r\n" % (len(body), body))
            elif cmd in (b"AUTH", b"SELECT", b"CLIENT") or mode != "trickle":
                conn.sendall(b"+OK\r\n")
            else:
                conn.sendall(b"+")
                while True:
                    time.sleep(0.5)
                    conn.sendall(b"P")
    except OSError:
        pass
    finally:
        conn.close()


srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", 0))
srv.listen(16)
with open(port_file + ".tmp", "w") as out:
    out.write(str(srv.getsockname()[1]))
os.rename(port_file + ".tmp", port_file)
while True:
    c, _ = srv.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
EOF

pids=()
on_exit 'for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null; done; true'
# fake MODE: starts a fake server; sets fake_port
fake() {
	rm -f "$work/$1.port"
	python3 "$work/fake_redis.py" "$1" "$work/$1.port" &
	pids+=($!)
	wait_for 10 "the fake Redis ($1)" test -s "$work/$1.port"
	fake_port=$(cat "$work/$1.port")
}

# --- 1. Redis older than 7.0: refused at start, one line -----------------------------------
fake old
run timeout 60 env CATALYST_REDIS_URL="redis://127.0.0.1:$fake_port/0" CATALYST_CACHE_PORT=0 "$bin/catalyst-cache"
assert_eq 1 "$rc" "catalyst-cache against Redis 6.2"
assert_eq 1 "$(grep -c 'is version 6.2.14; catalyst needs Redis 7.0 or newer' <<<"$err")" \
	"the refusal, one line: $err"

# --- 2. a reply trickled a byte at a time: the probe gives up within the deadline ------------
fake trickle
port=$(free_port)
CATALYST_REDIS_URL="redis://127.0.0.1:$fake_port/0" CATALYST_CACHE_PORT=$port \
	"$bin/catalyst-cache" 2>"$work/cache.log" &
cache_pid=$!
pids+=("$cache_pid")
# each probe is bounded by curl itself: a hung one reads as "000", never as the answer
readyz_says() {
	local body
	body=$(curl -s -m 10 "http://127.0.0.1:$port/readyz") || return 1
	[[ $body == *"no reply in time"* ]]
}
wait_for 60 "/readyz to report the Redis that never finishes a reply" readyz_says
kill -0 "$cache_pid" || fail "catalyst-cache exited: $(tail -3 "$work/cache.log")"

echo "test_redis_hostile: ok"
