#!/usr/bin/env python3
"""Test records for the integration tests: generate write lines, and check
what came back from Kafka against them.

  records.py gen N SEED            > lines.jsonl     N mixed records, all five tables
  records.py check lines.jsonl dump.jsonl            every input decoded equal, keys as designed
"""
import datetime
import json
import random
import sys

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


def record(i, rng):
    table = list(TABLES)[i % 5]
    r = {"table": table, "command_id": f"cmd-{i:08d}", "version": 1_700_000_000_000_000 + i}
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


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "gen":
        rng = random.Random(int(sys.argv[3]))
        for i in range(int(sys.argv[2])):
            print(json.dumps(record(i, rng), ensure_ascii=False))
    elif len(sys.argv) == 4 and sys.argv[1] == "check":
        check(sys.argv[2], sys.argv[3])
    else:
        sys.exit(__doc__)
