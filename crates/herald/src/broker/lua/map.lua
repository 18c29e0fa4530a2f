-- Herald replicated map change, map protocol 1 (see docs/PROTOCOL.md, "Replicated maps (v1)").
--
-- A map M lives on the ordinary topic `__map/M`. This script checks a change (compare-and-set
-- expectation, limits), appends it to the topic exactly as publish.lua appends one message
-- with its own idempotency key (the body of publish.lua is inlined below as the local function
-- `publish`, so the entry and notification formats are publish's), and writes the map's state
-- in the same atomic call: snapshot and tail are always consistent.
--
-- KEYS[1..6] the topic's publish keys: meta, log, settings, dedup, dedup_old, epochs
-- KEYS[7] state   hash: key -> "<epoch>:<offset>:<value>" (the key's revision, then its value)
--                 and the empty field "" -> "<epoch>:<offset>", the map's revision (the
--                 position of the last change applied)
-- KEYS[8] limits  hash {max_keys, max_value}, both optional (absent: no limit)
-- ARGV[1] map protocol version ("1")
-- ARGV[2..8] as publish.lua's ARGV[2..8]: live channel, node, the four topic defaults, notify
-- ARGV[9] PUT or DEL
-- ARGV[10] the key (1-512 bytes of UTF-8 without control characters, checked by the client)
-- ARGV[11] the value (PUT; "" for DEL)
-- ARGV[12] expectation: "" none, "absent", or "<epoch>:<offset>" the key's current revision
-- ARGV[13] the change's idempotency key (unique per call; a retry repeats it)
--
-- The change is the message: idempotency key ARGV[13], headers
-- {"herald-map":"1","op":"put"|"del","key":<key>,"base":"<epoch>:<offset>" or ""} where base
-- is the map's revision before the change, payload the value (PUT) or empty (DEL).
--
-- Returns {"ok", epoch, offset, dup} (dup 1 when ARGV[13] was already applied: nothing
-- written, offset is the earlier change's), {"conflict", current revision or ""},
-- {"absent"} (DEL of a missing key without expectation: nothing written), or
-- {"limit", "keys"|"value", size, max} (nothing written).

--@PUBLISH@

if ARGV[1] ~= '1' then
  return redis.error_reply('HERALD_PROTOCOL this script speaks map protocol 1, not ' .. tostring(ARGV[1]))
end
if #KEYS ~= 8 or #ARGV ~= 13 or (ARGV[9] ~= 'PUT' and ARGV[9] ~= 'DEL') or #ARGV[10] == 0 or #ARGV[13] == 0 then
  return redis.error_reply('HERALD_ARGS expected 8 KEYS and 13 ARGV (op PUT or DEL, a key, an idempotency key)')
end
local state, limits = KEYS[7], KEYS[8]
local op, key, value, expect, idem = ARGV[9], ARGV[10], ARGV[11], ARGV[12], ARGV[13]

-- A retry of a change that was applied (its reply lost) finds its idempotency key and gets
-- the earlier change back, without a compare-and-set check that would now fail.
-- The change may predate the current epoch (the log changed writer since, e.g. a retry on a
-- promoted replica): its revision names the epoch whose range holds its offset.
local function epoch_of(o)
  local best, best_first = nil, nil
  local flat = redis.call('HGETALL', KEYS[6])
  for k = 1, #flat, 2 do
    local f = tonumber(string.match(flat[k + 1], '^(%d+)'))
    if f and f <= o and (best_first == nil or f > best_first
        or (f == best_first and tonumber(flat[k]) > tonumber(best))) then
      best, best_first = flat[k], f
    end
  end
  return best or redis.call('HGET', KEYS[1], 'epoch') or '0'
end
local known = redis.call('HGET', KEYS[4], idem) or redis.call('HGET', KEYS[5], idem)
if known and tonumber(known) then
  return {'ok', epoch_of(tonumber(known)), tonumber(known), 1}
end

local current = redis.call('HGET', state, key) -- WRONGTYPE here, before any write
local current_rev = current and string.match(current, '^(%d+:%d+):') or nil
if current and not current_rev then
  return redis.error_reply('HERALD_CORRUPT map entry ' .. key .. ' has no revision')
end
if expect == 'absent' then
  if current then return {'conflict', current_rev} end
elseif expect ~= '' then
  if current_rev ~= expect then return {'conflict', current_rev or ''} end
end
if op == 'DEL' and not current then
  return {'absent'}
end
if op == 'PUT' then
  local l = redis.call('HMGET', limits, 'max_keys', 'max_value')
  local max_keys, max_value = tonumber(l[1]), tonumber(l[2])
  if max_value and #value > max_value then
    return {'limit', 'value', #value, max_value}
  end
  if max_keys and not current then
    local count = redis.call('HLEN', state)
    if redis.call('HEXISTS', state, '') == 1 then count = count - 1 end
    if count >= max_keys then
      return {'limit', 'keys', count + 1, max_keys}
    end
  end
end

local base = redis.call('HGET', state, '') or ''
local headers = cjson.encode({['herald-map'] = '1', op = (op == 'PUT') and 'put' or 'del', key = key, base = base})
local function field(x)
  return #x .. ':' .. x
end
local piece = field(idem) .. field(headers) .. field(value)
local reply = publish({KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]}, {
  '3', ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8],
  '1', '', tostring(#value), '0', piece, '0', idem, '0', tostring(#piece)})
if type(reply) == 'table' and reply.err then
  return reply
end
if #reply ~= 2 then
  -- A duplicate after all (the dedup check above saw every window publish checks).
  return {'ok', (tonumber(reply[3]) or 1) > 1 and reply[3] or reply[1], reply[2], 1}
end
local rev = tostring(reply[1]) .. ':' .. string.format('%d', reply[2])
if op == 'PUT' then
  redis.call('HSET', state, key, rev .. ':' .. value, '', rev)
else
  redis.call('HDEL', state, key)
  redis.call('HSET', state, '', rev)
end
return {'ok', reply[1], reply[2], 0}
