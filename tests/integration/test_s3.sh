#!/usr/bin/env bash
# common/cat_s3 against the stack's moto (signatures checked): refused keys
# and a missing bucket give a clear fatal error; put/get/list/delete; a
# multipart upload of several parts reads back byte for byte; an aborted
# upload and an interrupted one leave no upload behind once cleaned; a
# prefix with '/' lists (canonical query string); a listing of two pages.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=tests/integration/lib.sh
. "$here/lib.sh"

bin=$CATALYST_BIN_DIR
work=$(mktemp -d)
prefix="test-s3/$$-$RANDOM"
on_exit "rm -rf '$work'"
export CATALYST_S3_PART_SIZE_MB=5 CATALYST_S3_MAX_RETRIES=1 CATALYST_S3_RETRY_BACKOFF_MS=10

# --- failure paths first -------------------------------------------------------
set +e
out=$(CATALYST_S3_SECRET_KEY=wrong-secret "$bin/s3-tool" check 2>&1); rc=$?
set -e
assert_eq 1 "$rc" "check with a wrong secret key"
assert_contains "$out" "HTTP 403 SignatureDoesNotMatch"
assert_contains "$out" "(fatal)"
assert_not_contains "$out" "wrong-secret"

set +e
out=$(CATALYST_S3_ACCESS_KEY=AKIANOSUCHKEY0000000 "$bin/s3-tool" check 2>&1); rc=$?
set -e
assert_eq 1 "$rc" "check with an unknown access key"
assert_contains "$out" "HTTP 403 InvalidAccessKeyId"

set +e
out=$(CATALYST_S3_BUCKET=no-such-bucket-$$ "$bin/s3-tool" check 2>&1); rc=$?
set -e
assert_eq 1 "$rc" "check of a missing bucket"
assert_contains "$out" "NoSuchBucket"
assert_contains "$out" "(fatal)"

set +e
out=$(CATALYST_S3_ENDPOINT=ftp://x "$bin/s3-tool" check 2>&1); rc=$?
set -e
assert_eq 2 "$rc" "a malformed endpoint is a configuration error"

# a wrong secret on a write: refused, nothing stored
set +e
echo data | CATALYST_S3_SECRET_KEY=wrong "$bin/s3-tool" put "$prefix/refused" 2>/dev/null; rc=$?
set -e
assert_eq 1 "$rc" "put with a wrong secret"

# --- the happy paths -------------------------------------------------------------
"$bin/s3-tool" check
printf 'hello\n' | "$bin/s3-tool" put "$prefix/small.txt"
assert_eq "hello" "$("$bin/s3-tool" get "$prefix/small.txt")" "small object read back"

head -c $((12 * 1024 * 1024 + 12345)) /dev/urandom >"$work/big"
out=$("$bin/s3-tool" upload "$prefix/dir/big.bin" <"$work/big" 2>&1)
assert_contains "$out" "3 parts"
"$bin/s3-tool" get "$prefix/dir/big.bin" >"$work/big.back"
cmp "$work/big" "$work/big.back" || fail "multipart object differs from what was uploaded"

# an empty upload still makes an (empty) object
"$bin/s3-tool" upload "$prefix/empty" </dev/null 2>/dev/null
assert_eq "0" "$("$bin/s3-tool" get "$prefix/empty" | wc -c)" "empty object"

listing=$("$bin/s3-tool" ls "$prefix/")
assert_eq 3 "$(lines "$listing")" "objects under the prefix"
assert_contains "$listing" "$((12 * 1024 * 1024 + 12345)) $prefix/dir/big.bin"
assert_eq 1 "$(lines "$("$bin/s3-tool" ls "$prefix/dir/")")" "objects under a nested prefix"

# aborted upload: no object, no upload left
"$bin/s3-tool" upload-abort "$prefix/aborted" 11 2>/dev/null
assert_eq "" "$("$bin/s3-tool" uploads "$prefix/")" "uploads after an abort"
assert_not_contains "$("$bin/s3-tool" ls "$prefix/")" "aborted"

# an upload whose process dies leaves an upload in progress, listed by prefix
# (the feeder holds the upload open; it is killed too, or it would hold the
# test's output open for its whole sleep)
mkfifo "$work/feed"
(head -c $((6 * 1024 * 1024)) /dev/zero && exec sleep 30) >"$work/feed" 2>/dev/null &
feeder=$!
on_exit "kill $feeder 2>/dev/null; true"
"$bin/s3-tool" upload "$prefix/killed" <"$work/feed" 2>/dev/null &
pid=$!
wait_for 20 "the interrupted upload to be listed" \
	bash -c "[ -n \"\$('$bin/s3-tool' uploads '$prefix/')\" ]"
kill -9 "$pid" 2>/dev/null || true
wait "$pid" 2>/dev/null || true
kill "$feeder" 2>/dev/null || true
wait "$feeder" 2>/dev/null || true
assert_contains "$("$bin/s3-tool" uploads "$prefix/")" "$prefix/killed"
"$bin/s3-tool" abort-uploads "$prefix/"
assert_eq "" "$("$bin/s3-tool" uploads "$prefix/")" "uploads after abort-uploads"

# delete (idempotent)
for key in small.txt dir/big.bin empty; do
	"$bin/s3-tool" rm "$prefix/$key"
done
"$bin/s3-tool" rm "$prefix/small.txt"
assert_eq "" "$("$bin/s3-tool" ls "$prefix/")" "objects after delete"
set +e
out=$("$bin/s3-tool" get "$prefix/small.txt" 2>&1); rc=$?
set -e
assert_eq 1 "$rc" "get of a deleted object"
assert_contains "$out" "HTTP 404 NoSuchKey"
# a listing of several pages (1,000 keys a page): every key once, in order
# (each page continues after the last; the checks against a store that
# repeats or cycles are in tests/unit/test_s3.c)
seq -f "$prefix-pages/%04g" 0 1004 | xargs -P 4 -I{} sh -c 'echo x | "$0" put "$1"' "$bin/s3-tool" {}
listing=$("$bin/s3-tool" ls "$prefix-pages/")
assert_eq 1005 "$(lines "$listing")" "objects listed over two pages"
assert_eq "$(seq -f "2 $prefix-pages/%04g" 0 1004)" "$listing" "the two pages in key order"

echo "test_s3: ok"
