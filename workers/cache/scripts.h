/*
 * catalyst-cache: the server-side scripts (loaded once, called by SHA1,
 * reloaded on NOSCRIPT by cat_redis_pipeline).
 *
 * Versions. Next to each version-checked value KEY lives KEY#v: "<version>"
 * while the value is live, "d<version>" after a delete (a tombstone, so that
 * an older upsert arriving late does not bring the value back). A value is
 * replaced only by a higher version; a live version whose value is gone
 * (expired, evicted, invalidated) counts as absent. Versions are decimal
 * integers >= 1 without leading zeros, compared as strings (length first),
 * so every int64 compares exactly.
 */
#ifndef CACHE_SCRIPTS_H
#define CACHE_SCRIPTS_H

/* PUT: any number of items, 9 ARGV each:
 *   op       "u" upsert, "w" upsert from a warm (the same version extends the
 *            TTL), "d" delete
 *   key      the value's key
 *   version
 *   ttl      seconds, 0: no expiry
 *   value    the JSON (upserts; "" for deletes)
 *   set      prefix of the value's set ("news:symbol:"), "" for none
 *   member   its member in the set (the row's id)
 *   symbol   upserts: the set suffix; deletes: "" (read from the old value)
 *   set_ttl  seconds, 0: no expiry
 * Returns one entry per item: 1 applied, 0 older than what is cached, or an
 * error (that item only). */
#define CACHE_SCRIPT_PUT                                                                           \
	"local function newer(a, b)\n"                                                             \
	"  if #a ~= #b then return #a > #b end\n"                                                 \
	"  return a > b\n"                                                                          \
	"end\n"                                                                                     \
	"local function setx(k, v, ttl)\n"                                                         \
	"  if ttl > 0 then redis.call('SET', k, v, 'EX', ttl) else redis.call('SET', k, v) end\n"  \
	"end\n"                                                                                     \
	"local function symbol_of(value)\n"                                                        \
	"  if not value then return nil end\n"                                                     \
	"  local ok, obj = pcall(cjson.decode, value)\n"                                           \
	"  if ok and type(obj) == 'table' and type(obj.symbol) == 'string' then return obj.symbol end\n" \
	"  return nil\n"                                                                            \
	"end\n"                                                                                     \
	"local function item(op, key, ver, ttl, value, set, member, symbol, set_ttl)\n"           \
	"  local vkey = key .. '#v'\n"                                                             \
	"  local cur = redis.call('GET', vkey)\n"                                                  \
	"  local tomb, cv = false, nil\n"                                                          \
	"  if cur then\n"                                                                           \
	"    tomb = string.sub(cur, 1, 1) == 'd'\n"                                                \
	"    if tomb then cv = string.sub(cur, 2) else cv = cur end\n"                             \
	"  end\n"                                                                                   \
	"  if op == 'd' then\n"                                                                     \
	"    if cur and (newer(cv, ver) or (tomb and cv == ver)) then return 0 end\n"              \
	"    if set ~= '' then\n"                                                                   \
	"      local s = symbol_of(redis.call('GET', key))\n"                                      \
	"      if s then redis.call('SREM', set .. s, member) end\n"                               \
	"    end\n"                                                                                 \
	"    redis.call('DEL', key)\n"                                                             \
	"    setx(vkey, 'd' .. ver, ttl)\n"                                                        \
	"    return 1\n"                                                                            \
	"  end\n"                                                                                   \
	"  local old = nil\n"                                                                      \
	"  if cur and not tomb then\n"                                                             \
	"    if set ~= '' then old = redis.call('GET', key)\n"                                     \
	"    elseif redis.call('EXISTS', key) == 1 then old = true end\n"                          \
	"  end\n"                                                                                   \
	"  if (tomb and not newer(ver, cv)) or (old and not newer(ver, cv)) then\n"               \
	"    if op == 'w' and old and ver == cv and ttl > 0 then\n"                                \
	"      redis.call('EXPIRE', key, ttl, 'GT')\n"                                             \
	"      redis.call('EXPIRE', vkey, ttl, 'GT')\n"                                            \
	"    end\n"                                                                                 \
	"    return 0\n"                                                                            \
	"  end\n"                                                                                   \
	"  if set ~= '' and old then\n"                                                            \
	"    local s = symbol_of(old)\n"                                                           \
	"    if s and s ~= symbol then redis.call('SREM', set .. s, member) end\n"                 \
	"  end\n"                                                                                   \
	"  setx(key, value, ttl)\n"                                                                \
	"  setx(vkey, ver, ttl)\n"                                                                 \
	"  if set ~= '' and symbol ~= '' then\n"                                                   \
	"    redis.call('SADD', set .. symbol, member)\n"                                          \
	"    if set_ttl > 0 then redis.call('EXPIRE', set .. symbol, set_ttl) end\n"               \
	"  end\n"                                                                                   \
	"  return 1\n"                                                                              \
	"end\n"                                                                                     \
	"local out = {}\n"                                                                          \
	"for i = 1, #ARGV, 9 do\n"                                                                  \
	"  local ok, res = pcall(item, ARGV[i], ARGV[i + 1], ARGV[i + 2], tonumber(ARGV[i + 3]),\n" \
	"    ARGV[i + 4], ARGV[i + 5], ARGV[i + 6], ARGV[i + 7], tonumber(ARGV[i + 8]))\n"          \
	"  if ok then out[#out + 1] = res\n"                                                       \
	"  elseif type(res) == 'table' and res.err then out[#out + 1] = redis.error_reply(res.err)\n" \
	"  else out[#out + 1] = redis.error_reply(tostring(res)) end\n"                            \
	"end\n"                                                                                     \
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

#endif /* CACHE_SCRIPTS_H */
