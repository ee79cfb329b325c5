#!/usr/bin/env python3
"""Test records for the integration tests: generate write lines, and check
what came back from Kafka, or what a worker made of them, against them.

  records.py gen N SEED [START]    > lines.jsonl     N mixed records, all five tables
                                                     (ids and versions from START, default 0)
  records.py check lines.jsonl dump.jsonl            every input decoded equal, keys as designed
  records.py derive KIND lines.jsonl > more.jsonl    writes about the same keys, same symbols:
      older    every record again, 1000 versions older, other content
      deletes  every 7th key deleted (version + 10)
      deletes-keyed  the same deletes carrying the row's symbol, so that they share the
               partition (and so the order) of the key's other writes, as the producer
               contract asks: needed where the outcome depends on order across
               redeliveries and restarts (news_raw keeps its first insert)
      stale    upserts of the deleted keys at version + 5 (older than the delete)
      revive   every 3rd deleted key upserted at version + 20, other content
      sequences  several writes of one key back to back (so mostly in one batch), in
               news_raw (insert-only) and trading_candidates: on new keys, orders of
               upserts and deletes; on keys of lines.jsonl, delete then newer insert,
               insert then older delete, older insert then delete (news_raw: only the
               programs whose outcome does not depend on where the deletes fall)
  records.py poison N SEED START   > lines.tsv       N good records (as gen) with 1% poison mixed
      in, as raw-produce input (KEY<TAB>FORMAT<TAB>PAYLOAD): undecodable bytes, values
      the schema's CHECK constraints refuse, a symbol longer than its column; poison
      keys start with "poison-"
  records.py db-check PG_URL FILE...                 the database holds exactly the rows that
      applying FILEs (write lines or poison .tsv; poison skipped) in order one at a time
      leaves: every column of every row, nothing more
  records.py changes-check DUMP FILE...              topic-dump --type changes output: what
      decides each key (the write of its row, else its newest delete) is there, no poison,
      and a consumer replaying the changes with version checks ends with the rows
      db-check expects
"""
import datetime
import json
import os
import random
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "scripts", "lib"))
import pbwire  # noqa: E402

TABLES = {
    "news_raw": "news_id",
    "trading_candidates": "candidate_id",
    "trading_signals": "signal_id",
    "trade_records": "trade_id",
    "source_metrics": "source_name",
}
TIMESTAMPS = {
    "published_timestamp", "collected_timestamp", "selection_timestamp", "generated_timestamp",
    "expires_timestamp", "entry_timestamp", "exit_timestamp", "last_updated",
}


def ts(rng):
    base = datetime.datetime(2026, 11, 27, tzinfo=datetime.timezone.utc)
    t = base + datetime.timedelta(microseconds=rng.randrange(0, 86400 * 10**6))
    if rng.random() < 0.2:  # some with an offset, to test conversion
        return t.astimezone(datetime.timezone(datetime.timedelta(hours=8))).isoformat()
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def symbol(rng):
    return "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ") for _ in range(rng.randint(1, 5)))


VERSION_BASE = 1_700_000_000_000_000


def record(i, rng):
    table = list(TABLES)[i % 5]
    r = {"table": table, "command_id": f"cmd-{i:08d}", "version": VERSION_BASE + i * 100}
    if table == "news_raw":
        r.update(news_id=f"news-{i}", symbol=symbol(rng), headline=f"Headline {i} — naïve café ✓",
                 source=rng.choice(["reuters", "bloomberg", "benzinga"]), url=f"https://example.com/{i}",
                 published_timestamp=ts(rng), collected_timestamp=ts(rng),
                 content_snippet="x" * rng.randint(0, 200), sentiment_score=rng.uniform(-1, 1),
                 catalyst_score=rng.random(), is_pre_market=rng.random() < 0.5,
                 source_tier=rng.randint(1, 5), confirmation_status="unconfirmed",
                 narrative_cluster_id=f"cl-{i % 97}")
        if rng.random() < 0.1:
            r["url"] = None
    elif table == "trading_candidates":
        r.update(candidate_id=f"cand-{i}", symbol=symbol(rng), selection_timestamp=ts(rng),
                 catalyst_score=rng.random(), technical_score=rng.random(), combined_score=rng.random(),
                 primary_catalyst="earnings", news_count=rng.randint(0, 50), traded=rng.random() < 0.3)
    elif table == "trading_signals":
        r.update(signal_id=f"sig-{i}", candidate_id=f"cand-{i - 1}", symbol=symbol(rng),
                 signal_type=rng.choice(["buy", "sell"]), confidence=rng.random(),
                 entry_price=round(rng.uniform(1, 500), 4), stop_loss=rng.uniform(1, 500),
                 take_profit=rng.uniform(1, 500), generated_timestamp=ts(rng), expires_timestamp=ts(rng))
    elif table == "trade_records":
        r.update(trade_id=f"trade-{i}", signal_id=f"sig-{i - 1}", symbol=symbol(rng),
                 entry_news_id=f"news-{i - 3}", side=rng.choice(["long", "short"]),
                 quantity=rng.randint(1, 10**12), entry_price=rng.uniform(1, 500),
                 exit_price=rng.uniform(1, 500), entry_timestamp=ts(rng), exit_timestamp=ts(rng),
                 pnl_amount=rng.uniform(-1e4, 1e4), pnl_percentage=rng.uniform(-20, 20),
                 exit_reason="take_profit")
    else:
        r.update(source_name=f"source-{i}", total_articles=rng.randint(0, 10**9),
                 accurate_predictions=rng.randint(0, 10**6), accuracy_rate=rng.random(),
                 avg_price_impact=rng.uniform(-0.1, 0.1), last_updated=ts(rng))
    return r


def parse_ts(text):
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))


def check(lines_path, dump_path):
    inputs = [json.loads(l) for l in open(lines_path) if l.strip()]
    got = {}
    for line in open(dump_path):
        m = json.loads(line)
        if "value" not in m:
            sys.exit(f"undecodable message at partition {m['partition']} offset {m['offset']}: {m.get('error')}")
        cid = m["value"].get("command_id")
        if cid in got:
            sys.exit(f"command {cid} published twice")
        got[cid] = m
    errors = []
    for r in inputs:
        m = got.get(r["command_id"])
        if m is None:
            errors.append(f"{r['command_id']}: not on the topic")
            continue
        v = m["value"]
        pk = TABLES[r["table"]]
        want_key = r.get("symbol") or r[pk]
        if m["key"] != want_key:
            errors.append(f"{r['command_id']}: key {m['key']!r}, expected {want_key!r}")
        for col, want in r.items():
            have = v.get(col)
            if want is None:
                ok = have is None
            elif col in TIMESTAMPS:
                ok = have is not None and parse_ts(have) == parse_ts(want)
            else:
                ok = have == want and type(have) is type(want)
            if not ok:
                errors.append(f"{r['command_id']}: column {col}: got {have!r}, expected {want!r}")
        extra = {c for c in set(v) - set(r) - {"op", "producer", "trace_id", "issued_at_us"} if v[c] is not None}
        if extra:
            errors.append(f"{r['command_id']}: unexpected columns {sorted(extra)}")
        if v.get("op") != "upsert":
            errors.append(f"{r['command_id']}: op {v.get('op')!r}")
    if len(got) != len(inputs):
        errors.append(f"{len(got)} messages on the topic, {len(inputs)} published")
    for e in errors[:20]:
        print(e, file=sys.stderr)
    if errors:
        sys.exit(f"{len(errors)} differences")
    print(f"all {len(inputs)} records decoded equal to their input, keys as designed")


# --- derived writes -------------------------------------------------------------

def pk_of(r):
    return r[TABLES[r["table"]]]


def changed(r, rng, tag):
    """The same key and symbol, other content."""
    r = dict(r)
    for col, value in list(r.items()):
        if col in ("table", "command_id", "version", "symbol", "op") or col == TABLES[r["table"]]:
            continue
        if col in ("headline", "primary_catalyst", "exit_reason", "content_snippet"):
            r[col] = f"{tag} {value}"
        elif col in ("catalyst_score", "confidence", "accuracy_rate", "technical_score", "combined_score"):
            r[col] = rng.random()
        elif col in ("news_count", "total_articles", "accurate_predictions"):
            r[col] = rng.randint(0, 1000)
    return r


def derive(kind, path):
    rng = random.Random(kind)
    base = [json.loads(l) for l in open(path) if l.strip()]
    out = []
    for n, r in enumerate(base):
        deleted = n % 7 == 3
        if kind == "older":
            o = changed(r, rng, "older")
            o.update(version=r["version"] - 1000, command_id=f"{r['command_id']}-older")
            out.append(o)
        elif kind in ("deletes", "deletes-keyed") and deleted:
            d = {"table": r["table"], "op": "delete", TABLES[r["table"]]: pk_of(r),
                 "version": r["version"] + 10, "command_id": f"{r['command_id']}-delete"}
            if kind == "deletes-keyed" and r.get("symbol"):
                d["symbol"] = r["symbol"]
            out.append(d)
        elif kind == "stale" and deleted:
            o = changed(r, rng, "stale")
            o.update(version=r["version"] + 5, command_id=f"{r['command_id']}-stale")
            out.append(o)
        elif kind == "revive" and deleted and n % 3 == 0:
            o = changed(r, rng, "revived")
            o.update(version=r["version"] + 20, command_id=f"{r['command_id']}-revive")
            out.append(o)
    for o in out:
        print(json.dumps(o, ensure_ascii=False))


# (op, version offset) programs run on new keys. These deletes carry no
# symbol (a producer may leave it out), so catalyst-publish keys them by the
# primary key: it travels another
# partition than the key's upserts, and may apply before or after them. The
# versioned table (trading_candidates) ends the same in any such order; the
# insert-only one (news_raw: the first insert stays) only gets the programs
# whose outcome does not depend on where the deletes fall.
SEQUENCES = [  # (program, for news_raw too)
    ([("u", 1), ("u", 2)], True), ([("u", 2), ("u", 1)], True), ([("u", 1), ("d", 2)], True),
    ([("u", 2), ("d", 1)], True), ([("d", 1), ("u", 2)], True), ([("d", 2), ("u", 1)], True),
    ([("u", 1), ("d", 2), ("u", 3)], False), ([("u", 3), ("d", 2), ("u", 4)], True),
    ([("d", 5), ("u", 1), ("u", 6), ("d", 6), ("u", 7)], False), ([("u", 5), ("u", 5)], True),
    ([("d", 3), ("d", 1), ("u", 2)], True), ([("u", 4), ("d", 4), ("d", 9), ("u", 9), ("u", 10)], False),
]
# programs on keys that hold a row (offsets from its version), likewise
SEQUENCES_EXISTING = [([("d", 50), ("u", 60)], False), ([("u", 60), ("d", 55)], False), ([("u", -5), ("d", 1)], True)]


def write_of(r, op, version, tag, rng):
    if op == "d":
        return {"table": r["table"], "op": "delete", TABLES[r["table"]]: pk_of(r), "version": version,
                "command_id": f"{tag}-d{version}"}
    w = changed(r, rng, tag)
    w.update(version=version, command_id=f"{tag}-u{version}-{rng.randrange(10**6)}")
    return w


def sequences(path):
    rng = random.Random("sequences")
    out = []
    for n, (program, insert_only_too) in enumerate(SEQUENCES):
        for copy in range(40):  # enough keys that a round of a table has COPY's size
            for offset in (0, 1) if insert_only_too else (1,):  # news_raw, trading_candidates
                i = 900_000 + (n * 40 + copy) * 5 + offset
                r = record(i, rng)
                base = r["version"]
                for op, delta in program:
                    out.append(write_of(r, op, base + delta, f"seq-{i}", rng))
    base_rows = [json.loads(l) for l in open(path) if l.strip()]
    for k, r in enumerate(base_rows):
        if r["table"] not in ("news_raw", "trading_candidates") or k % 7 == 3 or k % 13:
            continue
        program, insert_only_too = SEQUENCES_EXISTING[(k // 13) % len(SEQUENCES_EXISTING)]
        if r["table"] == "news_raw" and not insert_only_too:
            continue
        for op, delta in program:
            out.append(write_of(r, op, r["version"] + delta, f"seqx-{k}", rng))
    for w in out:
        print(json.dumps(w, ensure_ascii=False))


def long_symbol_command(i):
    """A WriteCommand upserting news_raw with an 11-character symbol, built by
    hand: catalyst-publish refuses to make one."""
    return pbwire.news_upsert_command(f"poison-long-{i}", f"poison-news-{i}", "ABCDEFGHIJK", VERSION_BASE + i)


CHECK_POISON = [
    ("trading_signals", {"signal_type": "hold"}),
    ("trade_records", {"side": "flat"}),
    ("trade_records", {"quantity": -5}),
    ("news_raw", {"sentiment_score": 2.5}),
    ("news_raw", {"catalyst_score": 1.5}),
    ("trading_candidates", {"catalyst_score": -0.5}),
    ("source_metrics", {"accuracy_rate": 1.25}),
]


def poison(n, seed, start):
    rng = random.Random(seed)
    for i in range(start, start + n):
        r = record(i, rng)
        print(f"-\twrite\t{json.dumps(r, ensure_ascii=False)}")
        if i % 100 != 50:
            continue
        kind = (i // 100) % 3
        if kind == 0:
            junk = bytes([0xFF, 0xFF, 0xFF, 0xFF, 0x0F]) + rng.randbytes(rng.randint(0, 40))
            print(f"poison-undecodable-{i}\thex\t{junk.hex()}")
        elif kind == 1:
            table, bad = CHECK_POISON[(i // 300) % len(CHECK_POISON)]
            p = record(i + (list(TABLES).index(table) - i % 5), rng)
            p.update(bad)
            p[TABLES[table]] = f"poison-{table}-{i}"
            p["command_id"] = f"poison-check-{i}"
            print(f"poison-check-{i}\twrite\t{json.dumps(p, ensure_ascii=False)}")
        else:
            print(f"poison-long-{i}\thex\t{long_symbol_command(i).hex()}")


# --- what applying the writes leaves ------------------------------------------------

def load_writes(paths):
    """Write lines of every file in order; poison lines of .tsv files left out."""
    for path in paths:
        for line in open(path):
            line = line.rstrip("\n")
            if not line.strip():
                continue
            if line.startswith("{"):
                yield json.loads(line)
                continue
            key, fmt, payload = line.split("\t", 2)
            if fmt == "write" and not key.startswith("poison"):
                yield json.loads(payload)


def model(writes):
    """Applies writes one at a time as catalyst-persist's contract says:
    rows[(table, pk)] = the row; applied = the writes that changed something
    or were deletes (what must reach changes.v1)."""
    rows, tombs, applied = {}, {}, []
    for w in writes:
        key = (w["table"], pk_of(w))
        v = w["version"]
        if w.get("op") == "delete":
            tombs[key] = max(tombs.get(key, v), v)
            if key in rows and rows[key]["version"] <= v:
                del rows[key]
            applied.append(w)
            continue
        if tombs.get(key, -1) >= v:
            continue
        if key in rows and (w["table"] == "news_raw" or rows[key]["version"] >= v):
            continue
        rows[key] = w
        applied.append(w)
    return rows, applied


NOT_COLUMNS = {"table", "op", "command_id", "producer", "trace_id", "issued_at_us"}


def same_value(col, want, have):
    if want is None or have is None:
        return want is None and have is None
    if col in TIMESTAMPS:
        return parse_ts(want) == parse_ts(have)
    if isinstance(want, float) or isinstance(have, float):
        return float(want) == float(have)
    return want == have and type(want) is type(have)


def row_differences(key, want, have):
    errors = []
    for col in sorted(set(want) | set(have)):
        if col in NOT_COLUMNS:
            continue
        if not same_value(col, want.get(col), have.get(col)):
            errors.append(f"{key}: column {col}: have {have.get(col)!r}, expected {want.get(col)!r}")
    return errors


def compare(want_rows, have_rows, what):
    errors = []
    for key in sorted(set(want_rows) - set(have_rows))[:10]:
        errors.append(f"{key}: missing from {what}")
    for key in sorted(set(have_rows) - set(want_rows))[:10]:
        errors.append(f"{key}: in {what} but not expected")
    for key in sorted(set(want_rows) & set(have_rows)):
        errors.extend(row_differences(key, want_rows[key], have_rows[key]))
        if len(errors) > 20:
            break
    for e in errors[:20]:
        print(e, file=sys.stderr)
    if len(want_rows) != len(have_rows):
        errors.append(f"{what}: {len(have_rows)} rows, expected {len(want_rows)}")
        print(errors[-1], file=sys.stderr)
    return errors


def db_rows(url):
    import subprocess
    rows = {}
    for table, pk in TABLES.items():
        out = subprocess.run(["psql", "-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-d", url, "-c",
                              f"SELECT row_to_json(t) FROM {table} t"],
                             check=True, capture_output=True, text=True).stdout
        for line in out.splitlines():
            if line.strip():
                r = json.loads(line)
                rows[(table, r[pk])] = r
    return rows


def db_check(url, paths):
    want, _ = model(load_writes(paths))
    errors = compare(want, db_rows(url), "the database")
    if errors:
        sys.exit(f"{len(errors)} differences between the database and the expected rows")
    print(f"the database holds exactly the {len(want)} expected rows")


def changes_check(dump_path, paths):
    want, applied = model(load_writes(paths))
    store, tombs, seen, errors = {}, {}, set(), []
    for line in open(dump_path):
        c = json.loads(line)
        if "error" in c:
            sys.exit(f"undecodable change batch at partition {c['partition']} offset {c['offset']}")
        r = c["record"]
        key = (r["table"], pk_of(r))
        v = r["version"]
        if c["key"] is None:
            errors.append(f"{key}: change batch without a key")
        if str(c.get("command_id") or "").startswith("poison"):
            errors.append(f"{key}: a poison write was published: {c['command_id']}")
        seen.add((key, c["op"], v, c.get("command_id")))
        # a consumer that checks versions and remembers deletes
        if c["op"] == "delete":
            tombs[key] = max(tombs.get(key, v), v)
            if key in store and store[key]["version"] <= v:
                del store[key]
        elif tombs.get(key, -1) < v and (key not in store or store[key]["version"] < v):
            store[key] = r
    # what decides each key's final state must be there: the write of the row
    # it holds, or else its newest delete (versions a batch superseded before
    # its commit never were rows, and need not be)
    decisive = {}
    for w in applied:
        key = (w["table"], pk_of(w))
        if key in want:
            decisive[key] = want[key]
        elif w.get("op") == "delete" and (key not in decisive or w["version"] >= decisive[key]["version"]):
            decisive[key] = w
    for key, w in decisive.items():
        if (key, w.get("op", "upsert"), w["version"], w["command_id"]) not in seen:
            errors.append(f"{key}: {w.get('op', 'upsert')} version {w['version']} ({w['command_id']}) "
                          "not on changes.v1")
    for e in errors[:20]:
        print(e, file=sys.stderr)
    errors += compare(want, store, "the rows replayed from changes.v1")
    if errors:
        sys.exit(f"{len(errors)} problems with changes.v1")
    print(f"changes.v1 holds the write that decides each of the {len(decisive)} keys; replayed, it gives "
          f"the {len(want)} expected rows")


if __name__ == "__main__":
    args = sys.argv[1:]
    if len(args) in (3, 4) and args[0] == "gen":
        rng = random.Random(int(args[2]))
        start = int(args[3]) if len(args) == 4 else 0
        for i in range(start, start + int(args[1])):
            print(json.dumps(record(i, rng), ensure_ascii=False))
    elif len(args) == 3 and args[0] == "check":
        check(args[1], args[2])
    elif len(args) == 3 and args[0] == "derive" and args[1] in ("older", "deletes", "deletes-keyed", "stale", "revive"):
        derive(args[1], args[2])
    elif len(args) == 3 and args[0] == "derive" and args[1] == "sequences":
        sequences(args[2])
    elif len(args) == 4 and args[0] == "poison":
        poison(int(args[1]), int(args[2]), int(args[3]))
    elif len(args) >= 3 and args[0] == "db-check":
        db_check(args[1], args[2:])
    elif len(args) >= 3 and args[0] == "changes-check":
        changes_check(args[1], args[2:])
    else:
        sys.exit(__doc__)
