"""The Lua scripts of the Redis store: one atomic step per queue state change.

A result (or a lease renewal) is written only while the delivery's `lease` field still
holds the caller's token; otherwise the lease expired and another worker owns the delivery,
and the script does nothing and answers 0. Keys of one delivery are derived inside `lease`
from the shared prefix, all in the same hash slot. `SHAS` are the scripts' SHA1s, for
`EVALSHA` without asking Redis (a script it does not know is loaded on NOSCRIPT).
"""

from __future__ import annotations

import hashlib

_HELD = """
if redis.call('HGET', KEYS[2], 'lease') ~= ARGV[2] or redis.call('HGET', KEYS[2], 'dead') ~= '0' then
  return 0
end
"""

SCRIPTS: dict[str, str] = {
    # KEYS q, d, depth, idem|q   ARGV id, route, meta, body, due, has_idem, ttl_ms
    "enqueue": """
if ARGV[6] == '1' then
  local first = redis.call('GET', KEYS[4])
  if first then return {first, 1} end
  redis.call('SET', KEYS[4], ARGV[1], 'PX', ARGV[7])
end
redis.call('HSET', KEYS[2], 'meta', ARGV[3], 'body', ARGV[4], 'route', ARGV[2], 'lease', '', 'dead', '0')
redis.call('ZADD', KEYS[1], ARGV[5], ARGV[1])
redis.call('HINCRBY', KEYS[3], ARGV[2], 1)
return {ARGV[1], 0}
""",
    # KEYS q   ARGV now, limit, deadline, token base, prefix
    "lease": """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
local out = {}
for i, id in ipairs(ids) do
  local key = ARGV[5] .. ':d:' .. id
  local v = redis.call('HMGET', key, 'meta', 'body')
  if v[1] then
    local token = ARGV[4] .. ':' .. i
    redis.call('HSET', key, 'lease', token)
    redis.call('ZADD', KEYS[1], ARGV[3], id)
    table.insert(out, {token, v[1], v[2]})
  else
    redis.call('ZREM', KEYS[1], id)
  end
end
return out
""",
    # KEYS q, d, depth   ARGV id, token
    "complete": _HELD
    + """
local route = redis.call('HGET', KEYS[2], 'route')
redis.call('DEL', KEYS[2])
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HINCRBY', KEYS[3], route, -1)
return 1
""",
    # KEYS q, d   ARGV id, token, deadline: the holder's lease runs on until `deadline` (an
    # expired lease nobody took yet is the holder's still: renewed as well)
    "renew": """
if ARGV[2] == '' then return 0 end
"""
    + _HELD
    + """
redis.call('ZADD', KEYS[1], 'XX', ARGV[3], ARGV[1])
return 1
""",
    # KEYS q, d   ARGV id, token, meta, due
    "reschedule": _HELD
    + """
redis.call('HSET', KEYS[2], 'meta', ARGV[3], 'lease', '')
redis.call('ZADD', KEYS[1], ARGV[4], ARGV[1])
return 1
""",
    # KEYS q, d, depth, dead, dead:route   ARGV id, token, meta, failed_at
    "bury": _HELD
    + """
local route = redis.call('HGET', KEYS[2], 'route')
redis.call('HSET', KEYS[2], 'meta', ARGV[3], 'lease', '', 'dead', '1')
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HINCRBY', KEYS[3], route, -1)
redis.call('ZADD', KEYS[4], ARGV[4], ARGV[1])
redis.call('ZADD', KEYS[5], ARGV[4], ARGV[1])
return 1
""",
    # KEYS q, d   ARGV id, token, now
    "release": _HELD
    + """
redis.call('HSET', KEYS[2], 'lease', '')
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
return 1
""",
    # KEYS q, d, depth, dead, dead:route   ARGV id, meta, now, route
    "replay": """
if redis.call('HGET', KEYS[2], 'dead') ~= '1' then return 0 end
redis.call('HSET', KEYS[2], 'meta', ARGV[2], 'dead', '0', 'lease', '')
redis.call('ZREM', KEYS[4], ARGV[1])
redis.call('ZREM', KEYS[5], ARGV[1])
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
redis.call('HINCRBY', KEYS[3], ARGV[4], 1)
return 1
""",
    # KEYS d, dead, dead:route   ARGV id
    "delete": """
if redis.call('HGET', KEYS[1], 'dead') ~= '1' then return 0 end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
return 1
""",
}

SHAS: dict[str, str] = {
    name: hashlib.sha1(source.encode()).hexdigest() for name, source in SCRIPTS.items()
}
