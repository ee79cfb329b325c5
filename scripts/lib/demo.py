#!/usr/bin/env python3
"""The data and the summary of scripts/demo.

  demo.py day DIR [--news N] [--seed S]
      writes DIR/day.jsonl (a trading day as write lines, for catalyst-publish
      write), DIR/broken.tsv (deliberately broken records, for raw-produce:
      KEY<TAB>hex|write<TAB>PAYLOAD) and DIR/expect.json (the rows each table
      holds once the day is applied, and the broken records' keys and the
      reason each must be dead-lettered for)
  demo.py fresh-db URL NAME
      drops and creates database NAME on URL's server, prints its URL
  demo.py flush-redis
      empties the Redis database of CATALYST_REDIS_URL
  demo.py summary DIR
      reads DIR/expect.json, DIR/run.json (what scripts/demo saw: timings,
      lag samples, ports, command ids) and the stack (PostgreSQL primary and
      replica, Redis, the fleet's topics), prints the summary and writes it to
      DIR/summary.json; exits 1 when the fleet did not do its job (primary and
      replica differ, a table or cache key family is short, the backup is not
      verified, the dead letters are not exactly the broken records)

The connection settings come from the environment scripts/stack env sets
(CATALYST_PG_URL, CATALYST_REPLICA_URL, CATALYST_REDIS_URL, ...). Passwords
reach psql and redis-cli through their environment, never their arguments.
"""
import datetime
import json
import os
import random
import subprocess
import sys
import urllib.parse
import urllib.request

import pbwire

TABLES = ["news_raw", "trading_candidates", "trading_signals", "trade_records", "source_metrics"]
PKS = {"news_raw": "news_id", "trading_candidates": "candidate_id", "trading_signals": "signal_id",
       "trade_records": "trade_id", "source_metrics": "source_name"}
SOURCES = [("reuters", 1), ("bloomberg", 1), ("dowjones", 1), ("cnbc", 2), ("marketwatch", 2),
           ("benzinga", 2), ("seekingalpha", 3), ("businesswire", 3), ("prnewswire", 3),
           ("globenewswire", 3), ("sec-edgar", 1), ("social-verified", 4)]
EVENTS = ["beats Q3 earnings estimates", "misses revenue guidance", "announces share buyback",
          "receives FDA approval", "upgraded to Buy", "downgraded to Underperform", "announces merger talks",
          "CEO steps down", "raises full-year outlook", "files 8-K", "prices secondary offering",
          "wins government contract", "recalls product line", "reports record deliveries"]
CATALYSTS = ["earnings", "fda", "merger", "guidance", "analyst", "offering", "contract"]


def iso(t):
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def us(t):
    return int(t.timestamp() * 1_000_000)


# --- the day -------------------------------------------------------------------------


def make_symbols(rng, n):
    seen = set()
    while len(seen) < n:
        seen.add("".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ") for _ in range(rng.choice([2, 3, 3, 4, 4]))))
    return sorted(seen)


def day(out_dir, n_news, seed):
    """A trading day ending now: news over the last 16 hours, a scanner run
    every 15 minutes re-scoring its candidates, signals from the best of them,
    trades opened and closed, the sources' metrics updated hourly."""
    rng = random.Random(seed)
    now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    start = now - datetime.timedelta(hours=16)
    span = (now - start).total_seconds()
    tag = now.strftime("%Y%m%d")
    symbols = make_symbols(rng, 500)
    hot = symbols[:60]  # the symbols the news talks about most
    writes, final = [], {t: {} for t in TABLES}

    def emit(table, row, t):
        row = dict(row, table=table, version=us(t),
                   command_id=f"demo-{tag}-{len(writes)}")
        writes.append((us(t), row))
        final[table][row[PKS[table]]] = row

    # news: pre-market before 14:30 UTC (09:30 New York)
    for i in range(n_news):
        t = start + datetime.timedelta(seconds=rng.random() * span)
        sym = rng.choice(hot) if rng.random() < 0.4 else rng.choice(symbols)
        src, tier = rng.choice(SOURCES)
        emit("news_raw", {
            "news_id": f"news-{tag}-{i:06d}", "symbol": sym,
            "headline": f"{sym} {rng.choice(EVENTS)}", "source": src,
            "url": f"https://news.example.com/{src}/{tag}/{i}",
            "published_timestamp": iso(t), "collected_timestamp": iso(t + datetime.timedelta(seconds=rng.randint(1, 90))),
            "content_snippet": f"{sym}: {rng.choice(EVENTS)}; shares moved {rng.uniform(-9, 9):.2f}% in early trading.",
            "sentiment_score": round(rng.uniform(-1, 1), 4), "catalyst_score": round(rng.betavariate(2, 5), 4),
            "is_pre_market": t.time() < datetime.time(14, 30), "source_tier": tier,
            "confirmation_status": rng.choice(["unconfirmed", "confirmed", "confirmed", "disputed"]),
            "narrative_cluster_id": f"cluster-{sym}-{rng.randint(1, 3)}",
        }, t)

    # the scanner: every 15 minutes its top 20, each re-scored by a later scan
    candidates = {}
    t = start
    scan = 0
    while t < now:
        for sym in rng.sample(hot, 20):
            cid = f"cand-{tag}-{t.hour:02d}-{sym}"  # re-scored by the hour's later scans
            first = cid not in candidates
            candidates.setdefault(cid, (sym, t))
            cat, tech = rng.random(), rng.random()
            emit("trading_candidates", {
                "candidate_id": cid, "symbol": sym, "selection_timestamp": iso(candidates[cid][1] if not first else t),
                "catalyst_score": round(cat, 4), "technical_score": round(tech, 4),
                "combined_score": round((cat + tech) / 2, 4), "primary_catalyst": rng.choice(CATALYSTS),
                "news_count": rng.randint(1, 40), "traded": False,
            }, t)
        scan += 1
        t += datetime.timedelta(minutes=15)

    # signals on a quarter of the candidates, trades on half the signals
    n_sig = n_trade = 0
    for cid, (sym, t0) in sorted(candidates.items()):
        if rng.random() >= 0.25:
            continue
        t = min(t0 + datetime.timedelta(minutes=rng.randint(1, 30)), now)
        price = round(rng.uniform(2, 400), 2)
        side = rng.choice(["buy", "sell"])
        sid = f"sig-{tag}-{n_sig:04d}"
        n_sig += 1
        emit("trading_signals", {
            "signal_id": sid, "candidate_id": cid, "symbol": sym, "signal_type": side,
            "confidence": round(rng.uniform(0.5, 1), 4), "entry_price": price,
            "stop_loss": round(price * (0.97 if side == "buy" else 1.03), 4),
            "take_profit": round(price * (1.06 if side == "buy" else 0.94), 4),
            "generated_timestamp": iso(t), "expires_timestamp": iso(t + datetime.timedelta(hours=2)),
        }, t)
        if rng.random() >= 0.5:
            continue
        trade = {
            "trade_id": f"trade-{tag}-{n_trade:04d}", "signal_id": sid, "symbol": sym,
            "side": "long" if side == "buy" else "short", "quantity": rng.choice([50, 100, 200, 500]),
            "entry_price": price, "entry_timestamp": iso(t),
        }
        n_trade += 1
        emit("trade_records", trade, t)
        final_c = dict(final["trading_candidates"][cid])
        del final_c["table"], final_c["version"], final_c["command_id"]
        emit("trading_candidates", dict(final_c, traded=True), max(t, datetime.datetime.fromtimestamp(
            final["trading_candidates"][cid]["version"] / 1e6, datetime.timezone.utc)) + datetime.timedelta(seconds=1))
        t_exit = t + datetime.timedelta(minutes=rng.randint(5, 240))
        if t_exit < now:
            exit_price = round(price * rng.uniform(0.95, 1.07), 2)
            pnl = (exit_price - price) * trade["quantity"] * (1 if trade["side"] == "long" else -1)
            emit("trade_records", dict(trade, exit_price=exit_price, exit_timestamp=iso(t_exit),
                                       pnl_amount=round(pnl, 2), pnl_percentage=round(100 * pnl / (price * trade["quantity"]), 4),
                                       exit_reason=rng.choice(["take_profit", "stop_loss", "time_exit"])), t_exit)

    # source metrics, hourly
    for h in range(17):
        t = min(start + datetime.timedelta(hours=h), now)
        for src, _tier in SOURCES:
            emit("source_metrics", {
                "source_name": src, "total_articles": 1000 + h * rng.randint(5, 60),
                "accurate_predictions": 400 + h * rng.randint(1, 20), "accuracy_rate": round(rng.uniform(0.4, 0.8), 4),
                "avg_price_impact": round(rng.uniform(-0.02, 0.05), 5), "last_updated": iso(t),
            }, t)

    writes.sort(key=lambda w: w[0])  # as the services would publish them: in time order
    with open(os.path.join(out_dir, "day.jsonl"), "w") as f:
        for _, row in writes:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")

    broken = broken_records(tag, now)
    with open(os.path.join(out_dir, "broken.tsv"), "w") as f:
        for key, fmt, payload, _reason in broken:
            f.write(f"{key}\t{fmt}\t{payload}\n")
    expect = {
        "writes": len(writes), "symbols": len(symbols),
        "rows": {t: len(final[t]) for t in TABLES},
        "news_symbols": len({r["symbol"] for r in final["news_raw"].values()}),
        "signal_symbols": len({r["symbol"] for r in final["trading_signals"].values()}),
        "trade_symbols": len({r["symbol"] for r in final["trade_records"].values()}),
        "broken": {key: reason for key, _fmt, _payload, reason in broken},
    }
    with open(os.path.join(out_dir, "expect.json"), "w") as f:
        json.dump(expect, f, indent=1)
    print(f"{len(writes)} writes ({', '.join(f'{t} {n}' for t, n in expect['rows'].items())} rows), "
          f"{len(symbols)} symbols, {len(broken)} broken records")


def broken_records(tag, now):
    """What a buggy producer sends: values the schema refuses, a symbol longer
    than its column (catalyst-publish would refuse it, so it is built by hand,
    as a service bypassing the validation would), and bytes that are no
    protobuf at all. Each: key, raw-produce format, payload, the reason the
    dead letter must carry (a substring)."""
    v = us(now)
    base = {"command_id": None, "version": v}

    def write(table, key, row):
        r = dict(base, table=table, command_id=f"demo-broken-{key}", **row)
        return json.dumps(r)

    long_cmd = pbwire.news_upsert_command(f"demo-broken-long-{tag}", f"news-{tag}-broken-long", "BRKA.LONGSYM", v)
    return [
        ("broken-sentiment", "write", write("news_raw", "sentiment", {
            "news_id": f"news-{tag}-broken-sentiment", "symbol": "ACME", "headline": "ACME sentiment overflow",
            "published_timestamp": iso(now), "sentiment_score": 3.2}), "sentiment_score"),
        ("broken-side", "write", write("trade_records", "side", {
            "trade_id": f"trade-{tag}-broken-side", "symbol": "ACME", "side": "flat", "quantity": 10,
            "entry_price": 10.5}), "side"),
        ("broken-quantity", "write", write("trade_records", "quantity", {
            "trade_id": f"trade-{tag}-broken-quantity", "symbol": "ACME", "side": "long", "quantity": -5,
            "entry_price": 10.5}), "quantity"),
        ("broken-long-symbol", "hex", long_cmd.hex(), "symbol"),
        ("broken-bytes", "hex", bytes([0xFF, 0xFF, 0xFF, 0xFF, 0x0F, 0x42]).hex(), "decode"),
    ]


# --- the summary ---------------------------------------------------------------------


def pg_env(url):
    """A libpq URL without its password, and the environment carrying it."""
    u = urllib.parse.urlsplit(url)
    env = dict(os.environ)
    if u.password is not None:
        env["PGPASSWORD"] = urllib.parse.unquote(u.password)
        netloc = (u.username or "") + "@" + u.hostname + (f":{u.port}" if u.port else "")
        url = urllib.parse.urlunsplit((u.scheme, netloc, u.path, u.query, u.fragment))
    return url, env


def psql(url, sql, **variables):
    """One statement's result as text; VARIABLES are psql variables the SQL
    quotes as :'name' (values never spliced into SQL)."""
    url, env = pg_env(url)
    env["PGOPTIONS"] = "-c client_min_messages=warning"
    args = ["psql", "-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-d", url]
    for name, value in variables.items():
        args += ["-v", f"{name}={value}"]
    return subprocess.run(args, input=sql, env=env, check=True, capture_output=True, text=True).stdout.strip()


def table_digest(url, table):
    pk = PKS[table]
    return psql(url, f"SELECT count(*) || ':' || coalesce(md5(string_agg(t::text, '|' ORDER BY {pk})), '') "
                     f"FROM {table} t").split(":", 1)


def fresh_db(url, name):
    if not name.replace("_", "").isalnum() or not name.islower():
        raise SystemExit(f"demo.py: bad database name {name!r}")
    psql(url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    psql(url, f"CREATE DATABASE {name}")
    u = urllib.parse.urlsplit(url)
    print(urllib.parse.urlunsplit((u.scheme, u.netloc, "/" + name, u.query, u.fragment)))


def redis_cli(*command):
    u = urllib.parse.urlsplit(os.environ["CATALYST_REDIS_URL"])
    env = dict(os.environ)
    if u.password:
        env["REDISCLI_AUTH"] = urllib.parse.unquote(u.password)
    args = ["redis-cli", "--no-auth-warning", "-h", u.hostname or "127.0.0.1", "-p", str(u.port or 6379)]
    if u.username and u.username != "default":
        args += ["--user", urllib.parse.unquote(u.username)]
    if u.path.strip("/"):
        args += ["-n", u.path.strip("/")]
    return subprocess.run(args + list(command), env=env, check=True, capture_output=True, text=True).stdout


def redis_count(pattern):
    out = redis_cli("--scan", "--pattern", pattern)
    return sum(1 for line in out.splitlines() if line)


def topic_dump(bin_dir, topic, kind):
    args = [os.path.join(bin_dir, "topic-dump"), "--topic", topic, "--type", kind, "--until-end",
            "--timeout-ms", "20000"]
    out = subprocess.run(args, check=True, capture_output=True, text=True).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def metrics(port):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            return r.read().decode()
    except OSError:
        return ""


def histogram_quantile(text, name, q):
    """The q-quantile of a Prometheus histogram (summed over its labels), as
    Prometheus computes it: linear within the bucket."""
    buckets = {}
    for line in text.splitlines():
        if line.startswith(name + "_bucket{"):
            labels, value = line.rsplit(" ", 1)
            le = labels.split('le="', 1)[1].split('"', 1)[0]
            bound = float("inf") if le == "+Inf" else float(le)
            buckets[bound] = buckets.get(bound, 0) + float(value)
    if not buckets or buckets.get(float("inf"), 0) == 0:
        return None
    bounds = sorted(buckets)
    total = buckets[float("inf")]
    rank, prev_b, prev_c = q * total, 0.0, 0.0
    for b in bounds:
        if buckets[b] >= rank:
            if b == float("inf"):
                return prev_b
            return prev_b + (b - prev_b) * ((rank - prev_c) / max(buckets[b] - prev_c, 1e-9))
        prev_b, prev_c = b, buckets[b]
    return prev_b


def summary(out_dir):
    expect = json.load(open(os.path.join(out_dir, "expect.json")))
    run = json.load(open(os.path.join(out_dir, "run.json")))
    bin_dir, prefix = run["bin_dir"], os.environ.get("CATALYST_TOPIC_PREFIX", "catalyst.")
    problems, s = [], {"tables": {}, "cache": {}, "backup": {}, "dead_letters": [], "consistency": {}}

    for t in TABLES:
        n_p, d_p = table_digest(os.environ["CATALYST_PG_URL"], t)
        n_r, d_r = table_digest(os.environ["CATALYST_REPLICA_URL"], t)
        same = d_p == d_r
        s["tables"][t] = {"primary": int(n_p), "replica": int(n_r), "expected": expect["rows"][t], "equal": same}
        if int(n_p) != expect["rows"][t]:
            problems.append(f"{t}: {n_p} rows on the primary, {expect['rows'][t]} expected")
        if not same:
            problems.append(f"{t}: the replica differs from the primary")

    families = [("news:*", "news_raw", None), ("news:symbol:*", None, "news_symbols"),
                ("signals:*", "trading_signals", None), ("signals:symbol:*", None, "signal_symbols"),
                ("trades:*", "trade_records", None), ("trades:symbol:*", None, "trade_symbols"),
                ("sources:*", "source_metrics", None), ("candidates:*", None, None)]
    counts = {p: redis_count(p) for p, _, _ in families}
    for pattern, table, distinct in families:
        n = counts[pattern]
        if pattern.endswith(":symbol:*"):
            want = expect[distinct]
        elif table:  # the value keys: the family minus its symbol sets
            n -= counts.get(pattern[:-1] + "symbol:*", 0)
            want = expect["rows"][table]
        else:
            want = None
        s["cache"][pattern] = {"keys": n, "expected": want}
        if pattern == "candidates:*":  # a handful, named: the generation counter, top-n lists, active
            s["cache"][pattern]["names"] = sorted(redis_cli("--scan", "--pattern", pattern).split())[:8]
        if want is not None and n != want:
            problems.append(f"cache {pattern}: {n} keys, {want} expected")

    events = topic_dump(bin_dir, prefix + "events.v1", "events")
    for e in events:
        if e.get("kind") == "sync.check.report" and e.get("command_id") in run["check_ids"].values():
            a = e.get("attributes", {})
            s["consistency"][a.get("table", "?")] = {"ok": e.get("ok"), "message": e.get("message"),
                                                     "rows_compared": e.get("counters", {}).get("rows_compared")}
    for t in TABLES:
        c = s["consistency"].get(t)
        if not c or not c["ok"]:
            problems.append(f"consistency check of {t}: {c['message'] if c else 'no report'}")

    done = [e for e in events if e.get("kind") == "backup.completed" and e.get("command_id") == run["backup_command"]]
    if done:
        backup_id = done[-1].get("subject")
        row = psql(os.environ["CATALYST_PG_URL"],
                   "SELECT object_key || '|' || bytes_raw || '|' || bytes_compressed || '|' || state "
                   "FROM backup_catalog WHERE backup_id = :'id'", id=backup_id)
        key, raw, comp, state = (row.split("|") + ["", "", "", ""])[:4]
        verified = [e for e in events if e.get("kind") == "backup.verified" and e.get("subject") == backup_id]
        s["backup"] = {"backup_id": backup_id, "object": key, "bytes_raw": int(raw or 0),
                       "bytes_compressed": int(comp or 0), "state": state,
                       "verified": bool(verified and verified[-1].get("ok")),
                       "verify_report": verified[-1].get("message") if verified else None}
        if not s["backup"]["verified"]:
            problems.append(f"backup {backup_id}: not verified ({s['backup']['verify_report']})")
    else:
        problems.append("the table backup did not complete")

    out = subprocess.run([os.path.join(bin_dir, "catalyst-publish"), "dlq", "list", "--json"],
                         check=True, capture_output=True, text=True).stdout
    for line in out.splitlines():
        d = json.loads(line)
        src = d.get("source", {})
        s["dead_letters"].append({"key": d.get("key"), "reason": d.get("reason", ""),
                                  "table": d.get("table"), "kind": d.get("kind"),
                                  "source": f"{src.get('topic')}[{src.get('partition')}]@{src.get('offset')}"})
    got = {d["key"]: d["reason"] for d in s["dead_letters"]}
    for key, reason in expect["broken"].items():
        if key not in got:
            problems.append(f"broken record {key} is not in dlq.v1")
        elif reason not in got[key]:
            problems.append(f"dead letter {key}: reason [{got[key]}] does not name {reason}")
    for key in got:
        if key not in expect["broken"]:
            problems.append(f"dead letter {key} was not one of the broken records")

    persist_metrics = metrics(run["ports"]["persist"])
    s["throughput"] = {
        "writes": expect["writes"], "publish_s": run["publish_s"], "applied_s": run["applied_s"],
        "writes_per_s": round(expect["writes"] / max(run["applied_s"], 1e-3)),
        "max_lag": run["max_lag"],
        "latency_p50_ms": None, "latency_p99_ms": None,
    }
    for q in (50, 99):
        v = histogram_quantile(persist_metrics, "catalyst_end_to_end_latency_seconds", q / 100)
        s["throughput"][f"latency_p{q}_ms"] = round(v * 1000, 1) if v is not None else None
    s["metrics_urls"] = {w: f"http://127.0.0.1:{p}/metrics" for w, p in run["ports"].items()}
    s["problems"] = problems
    s["ok"] = not problems
    with open(os.path.join(out_dir, "summary.json"), "w") as f:
        json.dump(s, f, indent=1)
    print_summary(s)
    return 0 if s["ok"] else 1


def print_summary(s):
    print("\n=== Catalyst DB Fleet demo: summary ===\n")
    print(f"{'table':<20} {'primary':>9} {'replica':>9}  replica = primary   consistency check")
    for t, r in s["tables"].items():
        c = s["consistency"].get(t, {})
        print(f"{t:<20} {r['primary']:>9} {r['replica']:>9}  {'yes' if r['equal'] else 'NO':<18}  "
              f"{'ok' if c.get('ok') else 'FAILED'}: {c.get('message', 'no report')}")
    print("\ncache keys")
    for pattern, c in s["cache"].items():
        want = "" if c["expected"] is None else f" (expected {c['expected']})"
        if c.get("names"):
            want += f" ({', '.join(c['names'])})"
        print(f"  {pattern:<20} {c['keys']:>8}{want}")
    b = s["backup"]
    if b:
        print(f"\nbackup {b['backup_id']}: {b['object']} ({b['bytes_raw']} bytes raw, "
              f"{b['bytes_compressed']} compressed), {b['state']}; verify: "
              f"{'ok' if b['verified'] else 'FAILED'} ({b['verify_report']})")
    print(f"\ndead letters ({len(s['dead_letters'])}; catalyst-publish dlq list|show|replay)")
    for d in s["dead_letters"]:
        print(f"  {d['key']:<20} {d['table'] or '-':<14} from {d['source']}: {d['reason']}")
    t = s["throughput"]
    print(f"\nthroughput: {t['writes']} writes published in {t['publish_s']:.1f} s, all applied on the primary, "
          f"replica and cache {t['applied_s']:.1f} s after the first ({t['writes_per_s']}/s); "
          f"highest lag seen {t['max_lag']}; end-to-end latency p50 {t['latency_p50_ms']} ms, "
          f"p99 {t['latency_p99_ms']} ms")
    print("\nmetrics")
    for w, url in s["metrics_urls"].items():
        print(f"  {w:<8} {url}")
    if s["problems"]:
        print("\nPROBLEMS")
        for p in s["problems"]:
            print(f"  - {p}")
    else:
        print("\nall checks passed: primary = replica, cache complete, backup verified, "
              "exactly the broken records dead-lettered")


def main(argv):
    if len(argv) >= 2 and argv[0] == "day":
        n, seed = 20000, 20261127
        rest = argv[2:]
        while rest:
            if rest[0] == "--news" and len(rest) > 1:
                n = int(rest[1])
            elif rest[0] == "--seed" and len(rest) > 1:
                seed = int(rest[1])
            else:
                break
            rest = rest[2:]
        if not rest:
            day(argv[1], n, seed)
            return 0
    elif len(argv) == 3 and argv[0] == "fresh-db":
        fresh_db(argv[1], argv[2])
        return 0
    elif argv == ["flush-redis"]:
        redis_cli("FLUSHDB")
        return 0
    elif len(argv) == 2 and argv[0] == "summary":
        return summary(argv[1])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
