#!/usr/bin/env python3
"""Checks what catalyst-cache made of the database, reading Redis over a
small RESP client of its own (no Redis module needed).

  cache_check.py layout PG_URL REDIS_URL
      every row of news_raw, trading_signals, trade_records, source_metrics
      is cached under its key, equal column for column, with a TTL; no value
      key of those prefixes is cached for a row the table does not hold;
      every news:symbol: / signals:symbol: / trades:symbol: set holds exactly
      the ids of its symbol, with a TTL
  cache_check.py warm PG_URL REDIS_URL BEFORE.json
      the news:{id} keys (and nothing else of news:) are exactly the rows the
      seed's market-open query selects, with the warm's TTL (> 3600 s), and
      candidates:active holds exactly the rows of the seed's active-candidates
      query; BEFORE.json (from `warm-expect`, taken just before the warm) and a
      second reading now bound rows that crossed a time boundary meanwhile
  cache_check.py warm-expect PG_URL > BEFORE.json
  cache_check.py present PG_URL REDIS_URL LINES.jsonl...
      every row those write lines touched that the table holds now is cached,
      equal to the row, and in its symbol set
  cache_check.py not-older PG_URL REDIS_URL
      every row value cached under news:/signals:/trades:/sources: is the row
      the table holds now, at the same version: never an older version, never
      a row the table does not hold (keys may be missing)
  cache_check.py redis REDIS_URL CMD ARG...   one command, the reply printed
"""
import json
import os
import socket
import subprocess
import sys
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import records  # noqa: E402

CACHED = {  # table -> (prefix, set prefix)
    "news_raw": ("news:", "news:symbol:"),
    "trading_signals": ("signals:", "signals:symbol:"),
    "trade_records": ("trades:", "trades:symbol:"),
    "source_metrics": ("sources:", None),
}
NEWS_QUERY = ("SELECT news_id FROM news_raw WHERE published_timestamp > NOW() - INTERVAL '4 hours' "
              "AND is_pre_market = TRUE ORDER BY catalyst_score DESC, news_id LIMIT 100")
ACTIVE_QUERY = ("SELECT candidate_id FROM trading_candidates WHERE selection_timestamp > NOW() - "
                "INTERVAL '1 hour' AND NOT traded")


class Redis:
    def __init__(self, url):
        u = urllib.parse.urlparse(url)
        self.sock = socket.create_connection((u.hostname, u.port or 6379))
        self.buf = b""
        if u.password:
            self.call("AUTH", urllib.parse.unquote(u.username or "default"), urllib.parse.unquote(u.password))
        if u.path.strip("/"):
            self.call("SELECT", u.path.strip("/"))

    def send(self, *args):
        out = [b"*%d\r\n" % len(args)]
        for a in args:
            a = a if isinstance(a, bytes) else str(a).encode()
            out.append(b"$%d\r\n%s\r\n" % (len(a), a))
        self.sock.sendall(b"".join(out))

    def line(self):
        while b"\r\n" not in self.buf:
            self.buf += self.sock.recv(1 << 16)
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def exact(self, n):
        while len(self.buf) < n + 2:
            self.buf += self.sock.recv(1 << 16)
        data, self.buf = self.buf[:n], self.buf[n + 2:]
        return data

    def reply(self):
        line = self.line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise RuntimeError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            return None if int(rest) < 0 else self.exact(int(rest))
        if kind == b"*":
            return None if int(rest) < 0 else [self.reply() for _ in range(int(rest))]
        raise RuntimeError("bad reply %r" % line)

    def call(self, *args):
        self.send(*args)
        return self.reply()

    def pipeline(self, commands):
        out = []
        for i in range(0, len(commands), 1000):
            chunk = commands[i:i + 1000]
            for c in chunk:
                self.send(*c)
            out.extend(self.reply() for _ in chunk)
        return out

    def scan(self, pattern):
        cursor, keys = b"0", []
        while True:
            cursor, batch = self.call("SCAN", cursor, "MATCH", pattern, "COUNT", 1000)
            keys.extend(k.decode() for k in batch)
            if cursor == b"0":
                return keys


def psql(url, sql):
    out = subprocess.run(["psql", "-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-d", url, "-c", sql],
                         check=True, capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if line.strip()]


def same_row(table, want, have_json, problems, key):
    have = json.loads(have_json)
    if have.get("table") != table:
        problems.append(f"{key}: table {have.get('table')!r}")
    for col, value in want.items():
        if not records.same_value(col, value, have.get(col)):
            problems.append(f"{key}: {col} is {have.get(col)!r}, the database has {value!r}")
            return
    extra = set(have) - set(want) - {"table"}
    if extra:
        problems.append(f"{key}: columns the table does not have: {sorted(extra)}")


def layout(pg_url, redis_url):
    r = Redis(redis_url)
    rows = records.db_rows(pg_url)
    problems = []
    for table, (prefix, set_prefix) in CACHED.items():
        pk = records.TABLES[table]
        want = {k[1]: v for k, v in rows.items() if k[0] == table}
        ids = sorted(want)
        replies = r.pipeline([c for i in ids for c in (("GET", prefix + i), ("TTL", prefix + i))])
        for n, i in enumerate(ids):
            value, ttl = replies[2 * n], replies[2 * n + 1]
            if value is None:
                problems.append(f"{prefix}{i}: not cached")
                continue
            if ttl <= 0:
                problems.append(f"{prefix}{i}: no TTL ({ttl})")
            same_row(table, want[i], value, problems, prefix + i)
        cached = {k[len(prefix):] for k in r.scan(prefix + "*")
                  if not k.endswith("#v") and not (set_prefix and k.startswith(set_prefix))}
        stray = cached - set(want)
        if stray:
            problems.append(f"{table}: {len(stray)} keys for rows the table does not hold, e.g. "
                            f"{prefix}{sorted(stray)[0]}")
        if set_prefix:
            by_symbol = {}
            for i, row in want.items():
                by_symbol.setdefault(row["symbol"], set()).add(i)
            sets = {k[len(set_prefix):] for k in r.scan(set_prefix + "*")}
            if sets != set(by_symbol):
                problems.append(f"{table}: sets of {len(sets)} symbols, the table has "
                                f"{len(by_symbol)}: {sorted(sets ^ set(by_symbol))[:3]}")
            symbols = sorted(by_symbol)
            replies = r.pipeline([c for s in symbols for c in (("SMEMBERS", set_prefix + s),
                                                                 ("TTL", set_prefix + s))])
            for n, s in enumerate(symbols):
                members = {m.decode() for m in replies[2 * n] or []}
                if members != by_symbol[s]:
                    problems.append(f"{set_prefix}{s}: {len(members)} ids, the table has "
                                    f"{len(by_symbol[s])}: {sorted(members ^ by_symbol[s])[:3]}")
                if replies[2 * n + 1] <= 0:
                    problems.append(f"{set_prefix}{s}: no TTL")
        print(f"{table}: {len(ids)} rows cached as {prefix}{{{pk}}}"
              + (f", {len(by_symbol)} symbol sets" if set_prefix else ""))
    for p in problems[:20]:
        print("MISMATCH:", p, file=sys.stderr)
    return 1 if problems else 0


def present(pg_url, redis_url, paths):
    r = Redis(redis_url)
    rows = records.db_rows(pg_url)
    keys = set()
    for path in paths:
        for line in open(path):
            w = json.loads(line)
            if w["table"] in CACHED:
                keys.add((w["table"], w[records.TABLES[w["table"]]]))
    problems, n = [], 0
    for table, pk in sorted(keys):
        row = rows.get((table, pk))
        if row is None:
            continue
        prefix, set_prefix = CACHED[table]
        value = r.call("GET", prefix + pk)
        n += 1
        if value is None:
            problems.append(f"{prefix}{pk}: not cached")
            continue
        same_row(table, row, value, problems, prefix + pk)
        if set_prefix and not r.call("SISMEMBER", set_prefix + row["symbol"], pk):
            problems.append(f"{set_prefix}{row['symbol']}: without {pk}")
    print(f"present: {n} rows checked")
    for p in problems[:20]:
        print("MISMATCH:", p, file=sys.stderr)
    return 1 if problems or n == 0 else 0


def warm_expect(pg_url):
    print(json.dumps({"news": psql(pg_url, NEWS_QUERY), "active": psql(pg_url, ACTIVE_QUERY)}))
    return 0


def bounded(what, have, before, after, problems):
    if before == after:
        if have != before:
            problems.append(f"{what}: cached {len(have)}, the query selects {len(before)}: "
                            f"{sorted(have ^ before)[:3]}")
    elif not (before & after) <= have <= (before | after):
        problems.append(f"{what}: cached {len(have)}, outside what the query selected before and after")


def warm(pg_url, redis_url, before_path):
    r = Redis(redis_url)
    before = json.load(open(before_path))
    after = {"news": psql(pg_url, NEWS_QUERY), "active": psql(pg_url, ACTIVE_QUERY)}
    problems = []
    news = {k[len("news:"):] for k in r.scan("news:*") if not k.endswith("#v") and
            not k.startswith("news:symbol:")}
    bounded("news", news, set(before["news"]), set(after["news"]), problems)
    rows = records.db_rows(pg_url)
    for i in sorted(news):
        ttl = r.call("TTL", "news:" + i)
        if not 3600 < ttl <= 7200:
            problems.append(f"news:{i}: TTL {ttl}, not the warm's 7200")
        same_row("news_raw", rows[("news_raw", i)], r.call("GET", "news:" + i), problems, "news:" + i)
    active = r.call("GET", "candidates:active")
    if active is None:
        problems.append("candidates:active: not cached")
    else:
        listed = json.loads(active)
        ids = {c["candidate_id"] for c in listed}
        if len(ids) != len(listed):
            problems.append("candidates:active: an id twice")
        bounded("candidates:active", ids, set(before["active"]), set(after["active"]), problems)
        for c in listed:
            same_row("trading_candidates", rows[("trading_candidates", c["candidate_id"])], json.dumps(c),
                     problems, "candidates:active " + c["candidate_id"])
        ttl = r.call("TTL", "candidates:active")
        if not 0 < ttl <= 1800:
            problems.append(f"candidates:active: TTL {ttl}")
    print(f"warm: {len(news)} news (the query: {len(after['news'])}), {len(after['active'])} active candidates")
    for p in problems[:20]:
        print("MISMATCH:", p, file=sys.stderr)
    return 1 if problems else 0


def not_older(pg_url, redis_url):
    r = Redis(redis_url)
    rows = records.db_rows(pg_url)
    problems, n = [], 0
    for table, (prefix, set_prefix) in CACHED.items():
        keys = sorted(k for k in r.scan(prefix + "*")
                      if not k.endswith("#v") and not (set_prefix and k.startswith(set_prefix)))
        values = r.pipeline([("GET", k) for k in keys]) if keys else []
        for key, value in zip(keys, values):
            if value is None:
                continue  # expired meanwhile
            n += 1
            have = json.loads(value)
            want = rows.get((table, key[len(prefix):]))
            if want is None:
                problems.append(f"{key}: cached at version {have.get('version')}, the table has no such row")
            elif str(have.get("version")) != str(want["version"]):
                problems.append(f"{key}: cached at version {have.get('version')}, the primary holds "
                                f"{want['version']}")
    print(f"not-older: {n} cached rows checked")
    for p in problems[:20]:
        print("MISMATCH:", p, file=sys.stderr)
    if len(problems) > 20:
        print(f"... {len(problems)} mismatches in all", file=sys.stderr)
    return 1 if problems else 0


def main(argv):
    if len(argv) == 4 and argv[1] == "layout":
        return layout(argv[2], argv[3])
    if len(argv) == 3 and argv[1] == "warm-expect":
        return warm_expect(argv[2])
    if len(argv) == 5 and argv[1] == "warm":
        return warm(argv[2], argv[3], argv[4])
    if len(argv) == 4 and argv[1] == "not-older":
        return not_older(argv[2], argv[3])
    if len(argv) >= 5 and argv[1] == "present":
        return present(argv[2], argv[3], argv[4:])
    if len(argv) >= 4 and argv[1] == "redis":
        reply = Redis(argv[2]).call(*argv[3:])
        if isinstance(reply, list):
            for x in reply:
                print(x.decode() if isinstance(x, bytes) else x)
        elif reply is not None:
            print(reply.decode() if isinstance(reply, bytes) else reply)
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
