-- Herald membership procedure (protocol version 1). See docs/PROTOCOL.md, "Membership".
--
-- KEYS[1]  <ns>:{__members/<group>}:members  hash: member id -> JSON record
-- KEYS[2]  <ns>:{__members/<group>}:expiry   sorted set: member id -> expires_at_ms
-- ARGV[1]  operation: JOIN | EXPIRED | REMOVE | LIST
--
-- Times come from the Redis server clock (TIME), so that nodes with skewed clocks agree on
-- who has expired.
--
-- JOIN id meta_json ttl_ms   -> {status, record}
--   status "created": no record existed; a new incarnation (joined_at_ms = now) was written.
--   status "alive":   the record was live; heartbeat, expiry and meta were refreshed.
--   status "expired": the record has expired but was not reaped yet; nothing was written
--                     (the caller announces the expiry, removes it, then joins again).
-- EXPIRED limit              -> {id1, record1, id2, record2, ...} (expired, not removed)
-- REMOVE id joined_at_ms     -> 1 when the record of that incarnation was removed, else 0
-- LIST                       -> {now_ms, id1, record1, ...} (every record, expired or not)

local members, expiry = KEYS[1], KEYS[2]
local op = ARGV[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local function record(joined, ttl, meta)
  return '{"joined_at_ms":' .. string.format('%d', joined)
    .. ',"heartbeat_ms":' .. string.format('%d', now)
    .. ',"expires_at_ms":' .. string.format('%d', now + ttl)
    .. ',"ttl_ms":' .. string.format('%d', ttl)
    .. ',"meta":' .. meta .. '}'
end

local function joined_at(raw)
  local ok, r = pcall(cjson.decode, raw)
  if ok and type(r) == 'table' and type(r.joined_at_ms) == 'number' then
    return r.joined_at_ms
  end
  return nil
end

if op == 'JOIN' then
  local id, meta, ttl = ARGV[2], ARGV[3], tonumber(ARGV[4])
  if not ttl or ttl < 1 then
    return redis.error_reply('HERALD_BAD_INPUT ttl_ms must be a positive integer')
  end
  local old = redis.call('HGET', members, id)
  if old then
    local exp = tonumber(redis.call('ZSCORE', expiry, id) or '0')
    local joined = joined_at(old)
    if joined and exp >= now then
      local rec = record(joined, ttl, meta)
      redis.call('HSET', members, id, rec)
      redis.call('ZADD', expiry, now + ttl, id)
      return {'alive', rec}
    end
    if joined then
      return {'expired', old}
    end
    -- A record Herald cannot read: replace it with a new incarnation.
  end
  local rec = record(now, ttl, meta)
  redis.call('HSET', members, id, rec)
  redis.call('ZADD', expiry, now + ttl, id)
  return {'created', rec}
elseif op == 'EXPIRED' then
  local ids = redis.call('ZRANGEBYSCORE', expiry, '-inf', '(' .. now, 'LIMIT', 0, tonumber(ARGV[2]) or 100)
  local out = {}
  for _, id in ipairs(ids) do
    local rec = redis.call('HGET', members, id)
    if rec then
      out[#out + 1] = id
      out[#out + 1] = rec
    else
      redis.call('ZREM', expiry, id)
    end
  end
  return out
elseif op == 'REMOVE' then
  local id, joined = ARGV[2], tonumber(ARGV[3])
  local old = redis.call('HGET', members, id)
  if old and joined_at(old) == joined then
    redis.call('HDEL', members, id)
    redis.call('ZREM', expiry, id)
    return 1
  end
  return 0
elseif op == 'LIST' then
  local out = {now}
  local all = redis.call('HGETALL', members)
  for i = 1, #all, 2 do
    out[#out + 1] = all[i]
    out[#out + 1] = all[i + 1]
  end
  return out
end
return redis.error_reply('HERALD_BAD_INPUT unknown membership operation ' .. tostring(op))
