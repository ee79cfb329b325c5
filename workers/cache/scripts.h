/*
 * catalyst-cache: the server-side scripts (loaded once, called by SHA1,
 * reloaded on NOSCRIPT by cat_redis_wait).
 *
 * Versions. A row's value (the JSON of changes.v1 and warms) carries its
 * version in its "version" column, so one key holds both and a reader GETs
 * plain JSON. Next to a value KEY, KEY#v exists only when needed:
 * "d<version>" after a delete (a tombstone, so that an older upsert arriving
 * late does not bring the row back), "<version>" for a value set through
 * cache.v1 with an explicit version (its value is not ours to parse), "0"
 * for one set without a version (replaced by any version). A value is
 * replaced only by a higher version than both its own and a tombstone's; a
 * value that is gone (expired, evicted, invalidated) counts as absent.
 * Versions are decimal integers >= 1 without leading zeros, compared as
 * strings (length first), so every int64 compares exactly.
 *
 * Where "version": a row's JSON is a flat object written by
 * cat_codec_record_json: inside a JSON string every '"' is escaped, so the
 * text "version": (quote, name, quote, colon) occurs only as that key.
 */
#ifndef CACHE_SCRIPTS_H
#define CACHE_SCRIPTS_H

/* PUT: ARGV[1] the TTL of symbol sets (seconds, 0: none), ARGV[2..10] nine
 * TTL slots (seconds, 0: no expiry), ARGV[11] the items' ops, then 4 ARGV
 * per item. Every argument costs Redis a string of its own (Redis' Lua
 * hashes every byte of each), so an item passes only what the script cannot
 * derive, and the TTLs stay strings (a Lua number would be formatted back
 * into one for every command). ARGV[11] holds 3 bytes per item:
 *   op       a letter: "u" upsert of a row, "w" the same from a warm (the
 *            same version extends the TTL), "d" delete of a row; upper case
 *            ("U", "W", "D"): the row is also a member of its symbol's set,
 *            the key being prefix..member and the set prefix..'symbol:'..
 *            symbol; "s" a value of cache.v1 with an explicit version (kept
 *            in KEY#v)
 *   slot     the digit of its TTL slot (0-8)
 *   prefix   the length of the key's prefix, as a byte (its member is the
 *            rest of the key)
 * and each item:
 *   key      the value's key
 *   version
 *   value    the JSON (upserts; "" for deletes)
 *   set      upserts: the key of its symbol's set ("" none); deletes: ""
 *            (the symbol is read from the cached value)
 * A call holds each key once (queue.c ends a call at a key it holds
 * already, so the next call reads its result). One MGET reads every value,
 * one EXISTS (and an MGET only when some exist) every KEY#v; items then
 * apply in order; the members
 * added to a set go out as one SADD per set (before any SREM, so that the
 * order of set changes stays) and each set's TTL is renewed once.
 * Returns one entry per item: 1 applied, 0 older than what is cached, or the
 * error of a set command on a key of another type (that item only); a SET
 * that fails (OOM) fails the call. */
#define CACHE_SCRIPT_PUT \
	"local A = ARGV\n"                                                                                                               \
	"local sub, byte = string.sub, string.byte\n"                                                                                    \
	"local set_ttl, ops = A[1], A[11]\n"                                                                                             \
	"local ttls = {A[2], A[3], A[4], A[5], A[6], A[7], A[8], A[9], A[10]}\n"                                                         \
	"local n = (#A - 11) / 4\n"                                                                                                      \
	"local keys, vkeys = {}, {}\n"                                                                                                   \
	"for i = 1, n do local k = A[4 * i + 8]; keys[i] = k; vkeys[i] = k .. '#v' end\n"                                                \
	"local vals = redis.call('MGET', unpack(keys))\n"                                                                                \
	"local vers = {}\n"                                                                                                              \
	"if redis.call('EXISTS', unpack(vkeys)) > 0 then vers = redis.call('MGET', unpack(vkeys)) end\n"                                 \
	"local adds, touched = {}, {}\n"                                                                                                 \
	"local out = {}\n"                                                                                                               \
	"local function newer(a, b)\n"                                                                                                   \
	"  if #a ~= #b then return #a > #b end\n"                                                                                        \
	"  return a > b\n"                                                                                                               \
	"end\n"                                                                                                                          \
	"local function row_version(v)\n"                                                                                                \
	"  local _, e = string.find(v, '\"version\":', 1, true)\n"                                                                       \
	"  if e then return string.match(v, '^%d+', e + 1) end\n"                                                                        \
	"  return nil\n"                                                                                                                 \
	"end\n"                                                                                                                          \
	"local function row_symbol(v)\n"                                                                                                 \
	"  local _, e = string.find(v, '\"symbol\":\"', 1, true)\n"                                                                      \
	"  if not e then return nil end\n"                                                                                               \
	"  local s = string.match(v, '^[^\"\\\\]*', e + 1)\n"                                                                            \
	"  if byte(v, e + 1 + #s) == 34 then return s end\n"                                                                             \
	"  local ok, obj = pcall(cjson.decode, v)\n"                                                                                     \
	"  if ok and type(obj) == 'table' and type(obj.symbol) == 'string' then return obj.symbol end\n"                                 \
	"  return nil\n"                                                                                                                 \
	"end\n"                                                                                                                          \
	"local function flush_adds()\n"                                                                                                  \
	"  for sk, members in pairs(adds) do\n"                                                                                          \
	"    local r = redis.pcall('SADD', sk, unpack(members))\n"                                                                       \
	"    if type(r) == 'table' and r.err then\n"                                                                                     \
	"      for i = 1, n do\n"                                                                                                        \
	"        if out[i] == 1 and A[4 * i + 11] == sk then out[i] = r end\n"                                                           \
	"      end\n"                                                                                                                    \
	"    end\n"                                                                                                                      \
	"  end\n"                                                                                                                        \
	"  adds = {}\n"                                                                                                                  \
	"end\n"                                                                                                                          \
	"local function srem(i, k, plen, s)\n"                                                                                           \
	"  flush_adds()\n"                                                                                                               \
	"  local r = redis.pcall('SREM', sub(k, 1, plen) .. 'symbol:' .. s, sub(k, plen + 1))\n"                                         \
	"  if type(r) == 'table' and r.err then out[i] = r end\n"                                                                        \
	"end\n"                                                                                                                          \
	"for i = 1, n do\n"                                                                                                              \
	"  local b, o = 4 * i + 8, 3 * i - 2\n"                                                                                          \
	"  local op, k, ver = byte(ops, o), A[b], A[b + 1]\n"                                                                            \
	"  local ttl = ttls[byte(ops, o + 1) - 47]\n"                                                                                    \
	"  local v, vv = vals[i], vers[i]\n"                                                                                             \
	"  local tomb, cur = nil, nil\n"                                                                                                 \
	"  if vv then\n"                                                                                                                 \
	"    if byte(vv, 1) == 100 then tomb = sub(vv, 2) elseif v then cur = vv end\n"                                                  \
	"  end\n"                                                                                                                        \
	"  if v and not cur then cur = row_version(v) or '0' end\n"                                                                      \
	"  local hasset = op < 97\n"                                                                                                     \
	"  if hasset then op = op + 32 end\n"                                                                                            \
	"  out[i] = 1\n"                                                                                                                 \
	"  if op == 100 then\n"                                                                                                          \
	"    if (cur and newer(cur, ver)) or (tomb and not newer(ver, tomb)) then\n"                                                     \
	"      out[i] = 0\n"                                                                                                             \
	"    else\n"                                                                                                                     \
	"      if hasset and v then\n"                                                                                                   \
	"        local s = row_symbol(v)\n"                                                                                              \
	"        if s then srem(i, k, byte(ops, o + 2), s) end\n"                                                                        \
	"      end\n"                                                                                                                    \
	"      if v then redis.call('DEL', k) end\n"                                                                                     \
	"      if ttl ~= '0' then redis.call('SET', vkeys[i], 'd' .. ver, 'EX', ttl) else redis.call('SET', vkeys[i], 'd' .. ver) end\n" \
	"    end\n"                                                                                                                      \
	"  elseif (tomb and not newer(ver, tomb)) or (cur and not newer(ver, cur)) then\n"                                               \
	"    if op == 119 and v and cur == ver and ttl ~= '0' then\n"                                                                    \
	"      local r = redis.pcall('EXPIRE', k, ttl, 'GT')\n"                                                                          \
	"      if type(r) == 'table' and r.err then out[i] = r end\n"                                                                    \
	"      if vv and not tomb then\n"                                                                                                \
	"        r = redis.pcall('EXPIRE', vkeys[i], ttl, 'GT')\n"                                                                       \
	"        if type(r) == 'table' and r.err then out[i] = r end\n"                                                                  \
	"      end\n"                                                                                                                    \
	"    end\n"                                                                                                                      \
	"    out[i] = 0\n"                                                                                                               \
	"  else\n"                                                                                                                       \
	"    local sk = A[b + 3]\n"                                                                                                      \
	"    if hasset and v then\n"                                                                                                     \
	"      local s = row_symbol(v)\n"                                                                                                \
	"      if s and sk ~= sub(k, 1, byte(ops, o + 2)) .. 'symbol:' .. s then srem(i, k, byte(ops, o + 2), s) end\n"                  \
	"    end\n"                                                                                                                      \
	"    if ttl ~= '0' then redis.call('SET', k, A[b + 2], 'EX', ttl) else redis.call('SET', k, A[b + 2]) end\n"                     \
	"    if op == 115 then\n"                                                                                                        \
	"      if ttl ~= '0' then redis.call('SET', vkeys[i], ver, 'EX', ttl) else redis.call('SET', vkeys[i], ver) end\n"               \
	"    elseif vv then\n"                                                                                                           \
	"      redis.call('DEL', vkeys[i])\n"                                                                                            \
	"    end\n"                                                                                                                      \
	"    if hasset and sk ~= '' then\n"                                                                                              \
	"      local m = adds[sk]\n"                                                                                                     \
	"      if not m then\n"                                                                                                          \
	"        m = {}; adds[sk] = m\n"                                                                                                 \
	"        if not touched[sk] then touched[sk] = true; touched[#touched + 1] = sk end\n"                                           \
	"      end\n"                                                                                                                    \
	"      m[#m + 1] = sub(k, byte(ops, o + 2) + 1)\n"                                                                               \
	"    end\n"                                                                                                                      \
	"  end\n"                                                                                                                        \
	"end\n"                                                                                                                          \
	"flush_adds()\n"                                                                                                                 \
	"if set_ttl ~= '0' then\n"                                                                                                       \
	"  for _, sk in ipairs(touched) do redis.pcall('EXPIRE', sk, set_ttl) end\n"                                                     \
	"end\n"                                                                                                                          \
	"return out\n"

/* INVALIDATE_CANDIDATES: a candidate changed, so every derived candidates
 * key goes: candidates:top:{n} for each n of ARGV, the top keys registered
 * in candidates:top:keys, candidates:active; and candidates:generation
 * moves on, so that a warm that read the primary before the change does not
 * store what it read. Returns the number of keys removed. */
#define CACHE_SCRIPT_INVALIDATE_CANDIDATES                                                         \
	"local keys = redis.call('SMEMBERS', 'candidates:top:keys')\n"                            \
	"for i = 1, #ARGV do keys[#keys + 1] = 'candidates:top:' .. ARGV[i] end\n"                \
	"keys[#keys + 1] = 'candidates:top:keys'\n"                                               \
	"keys[#keys + 1] = 'candidates:active'\n"                                                 \
	"local removed = 0\n"                                                                       \
	"for i = 1, #keys, 500 do\n"                                                                \
	"  removed = removed + redis.call('UNLINK', unpack(keys, i, math.min(i + 499, #keys)))\n"  \
	"end\n"                                                                                     \
	"redis.call('INCR', 'candidates:generation')\n"                                           \
	"return removed\n"

/* SET_IF_GENERATION: ARGV[1] the candidates:generation a warm read before
 * its query ("0" when absent), then key, value, ttl triples. Stores them only
 * if no candidate changed meanwhile; returns 1 stored, 0 not. */
#define CACHE_SCRIPT_SET_IF_GENERATION                                                             \
	"local g = redis.call('GET', 'candidates:generation') or '0'\n"                           \
	"if g ~= ARGV[1] then return 0 end\n"                                                      \
	"for i = 2, #ARGV, 3 do\n"                                                                  \
	"  local ttl = tonumber(ARGV[i + 2])\n"                                                    \
	"  if ttl > 0 then redis.call('SET', ARGV[i], ARGV[i + 1], 'EX', ttl)\n"                   \
	"  else redis.call('SET', ARGV[i], ARGV[i + 1]) end\n"                                     \
	"end\n"                                                                                     \
	"return 1\n"

/* HEAL_CHECK (heal.c, every CATALYST_CACHE_HEAL_CHECK_MS): KEYS[1] the
 * sentinel (the run_id of the Redis server that holds our data), KEYS[2] the
 * unfinished mark (set while a rebuild runs, removed when it completes),
 * KEYS[3] the rebuilder's lease; ARGV[1] the server's run_id, ARGV[2] this
 * worker's owner id, ARGV[3] the lease in ms, ARGV[4] "1" when this worker may
 * start a rebuild now (its rate limit). Returns "ok" (the data is ours and
 * complete), "busy" (another worker holds the lease), "wait:<reason>" (a
 * rebuild is needed, not allowed yet) or "claim:<reason>" (a rebuild is
 * needed and this worker now owns it: sentinel, mark and lease are set, so a
 * FLUSHDB during the rebuild removes them and is noticed again). Reasons:
 * data_lost (no sentinel: a first start, a restart without persistence, a
 * failover to an empty replica, a FLUSHDB), restart (another server's
 * run_id: restarted from a snapshot, or a failover, that may miss the latest
 * writes), unfinished (a rebuild that did not complete). */
#define CACHE_SCRIPT_HEAL_CHECK                                                                    \
	"local s = redis.call('GET', KEYS[1])\n"                                                  \
	"local u = redis.call('EXISTS', KEYS[2])\n"                                               \
	"if s == ARGV[1] and u == 0 then return 'ok' end\n"                                        \
	"local reason = 'unfinished'\n"                                                             \
	"if not s then reason = 'data_lost' elseif s ~= ARGV[1] then reason = 'restart' end\n"    \
	"local o = redis.call('GET', KEYS[3])\n"                                                  \
	"if o and o ~= ARGV[2] then return 'busy' end\n"                                          \
	"if ARGV[4] ~= '1' then return 'wait:' .. reason end\n"                                    \
	"redis.call('SET', KEYS[3], ARGV[2], 'PX', ARGV[3])\n"                                    \
	"redis.call('SET', KEYS[1], ARGV[1])\n"                                                   \
	"redis.call('SET', KEYS[2], reason)\n"                                                    \
	"return 'claim:' .. reason\n"

/* HEAL_DONE: KEYS as HEAL_CHECK's; ARGV[1] the owner id. The rebuild
 * completed: removes the mark and the lease if the lease is still ours (a
 * FLUSHDB meanwhile removed them, and the next check starts again). Returns
 * 1 done, 0 the lease was lost. */
#define CACHE_SCRIPT_HEAL_DONE                                                                     \
	"if redis.call('GET', KEYS[3]) ~= ARGV[1] then return 0 end\n"                            \
	"redis.call('DEL', KEYS[2], KEYS[3])\n"                                                   \
	"return 1\n"

#endif /* CACHE_SCRIPTS_H */
