-- Herald replicated map changes, map protocol 2 (see docs/PROTOCOL.md, "Replicated maps").
--
-- A map M lives on the ordinary topic `__map/M`. This script applies N changes of one map in
-- order, each checked on its own (compare-and-set expectation, limits, size) against the state
-- the changes before it left, appends the applied ones to the topic exactly as publish.lua
-- appends messages with their own idempotency keys (the body of publish.lua is inlined below
-- as the local function `publish`, so the entry and notification formats are publish's), and
-- writes the map's state in the same atomic call: snapshot and tail are always consistent.
--
-- KEYS[1..6] the topic's publish keys: meta, log, settings, dedup, dedup_old, epochs
-- KEYS[7] state   hash: key -> "<epoch>:<offset>:<value>" (the key's revision, then its value)
--                 and the empty field "" -> "<epoch>:<offset>", the map's revision (the
--                 position of the last change applied)
-- KEYS[8] limits  hash {max_keys, max_value}, both optional (absent: no limit)
-- ARGV[1] map protocol version ("2")
-- ARGV[2..8] as publish.lua's ARGV[2..8]: live channel, node, the four topic defaults, notify
-- ARGV[9] N, the number of changes (1..1000)
-- ARGV[10 ..] 5 per change, in order: PUT or DEL, the key (1-512 bytes of UTF-8 without
--          control characters, checked by the client), the value (PUT; "" for DEL), the
--          expectation ("" none, "absent", or "<epoch>:<offset>" the key's current revision),
--          the change's idempotency key (unique; a retry repeats it)
--
-- A change is a message: its idempotency key, headers
-- {"herald-map":"1","op":"put"|"del","key":<key>,"base":"<epoch>:<offset>" or ""} where base
-- is the map's revision before the change, payload the value (PUT) or empty (DEL).
--
-- Returns one reply per change, in order: {"ok", epoch, offset, dup} (dup 1 when its
-- idempotency key was already applied: nothing written, offset is the earlier change's),
-- {"conflict", current revision or ""}, {"absent"} (DEL of a missing key without expectation),
-- {"limit", "keys"|"value", size, max} or {"too_large", size, max_size} (nothing written for
-- that change).

-- INFO server, read once per call (the inlined publish reads it through this as well).
local info_cache = nil
local function server_info()
  if not info_cache then info_cache = redis.call('INFO', 'server') end
  return info_cache
end

--@PUBLISH@

if ARGV[1] ~= '2' then
  return redis.error_reply('HERALD_PROTOCOL this script speaks map protocol 2, not ' .. tostring(ARGV[1]))
end
local n = tonumber(ARGV[9])
if #KEYS ~= 8 or n == nil or n < 1 or n > 1000 or n ~= math.floor(n) or #ARGV ~= 9 + 5 * n then
  return redis.error_reply('HERALD_ARGS expected 8 KEYS, a change count of 1 to 1000 in ARGV[9] and 5 ARGV per change')
end
local meta, settings, dedup, dedup_old, epochs, state, limits =
  KEYS[1], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8]

local ops, keys, values, expects, idems = {}, {}, {}, {}, {}
local seen = {}
local any_put = false
for i = 1, n do
  local a = 9 + (i - 1) * 5
  local op, key, idem = ARGV[a + 1], ARGV[a + 2], ARGV[a + 5]
  if (op ~= 'PUT' and op ~= 'DEL') or #key == 0 or #idem == 0 or seen[idem] then
    return redis.error_reply('HERALD_ARGS change ' .. i .. ' needs op PUT or DEL, a key and an idempotency key of its own')
  end
  seen[idem] = true
  if op == 'PUT' then any_put = true end
  ops[i], keys[i], values[i], expects[i], idems[i] = op, key, ARGV[a + 3], ARGV[a + 4], idem
end

-- A retry of a change that was applied (its reply lost) finds its idempotency key and gets
-- the earlier change back, without a compare-and-set check that would now fail.
-- The change may predate the current epoch (the log changed writer since, e.g. a retry on a
-- promoted replica): its revision names the epoch whose range holds its offset.
local function epoch_of(o)
  local best, best_first = nil, nil
  local flat = redis.call('HGETALL', epochs)
  for k = 1, #flat, 2 do
    local f = tonumber(string.match(flat[k + 1], '^(%d+)'))
    if f and f <= o and (best_first == nil or f > best_first
        or (f == best_first and tonumber(flat[k]) > tonumber(best))) then
      best, best_first = flat[k], f
    end
  end
  return best or redis.call('HGET', meta, 'epoch') or '0'
end
local known = redis.call('HMGET', dedup, unpack(idems))
local known_old = redis.call('HMGET', dedup_old, unpack(idems))

-- The keys' current revisions (WRONGTYPE here, before any write): key -> revision or false.
local cur = {}
local stored = redis.call('HMGET', state, unpack(keys))
for i = 1, n do
  local s = stored[i]
  if s then
    local rev = string.match(s, '^(%d+:%d+):')
    if not rev then
      return redis.error_reply('HERALD_CORRUPT map entry ' .. keys[i] .. ' has no revision')
    end
    cur[keys[i]] = rev
  else
    cur[keys[i]] = false
  end
end
local map_rev = redis.call('HGET', state, '') or ''

local max_keys, max_value, count = nil, nil, nil
if any_put then
  local l = redis.call('HMGET', limits, 'max_keys', 'max_value')
  max_keys, max_value = tonumber(l[1]), tonumber(l[2])
  if max_keys then
    count = redis.call('HLEN', state)
    if map_rev ~= '' then count = count - 1 end
  end
end
local max_size = tonumber(redis.call('HGET', settings, 'max_size')) or tonumber(ARGV[7])

-- The epoch the appends go to. publish opens a new one when the topic has none or another
-- server process wrote it (see publish.lua); then the first append goes alone, and the
-- others follow it in the epoch it opened.
local function writer_now()
  local info = server_info()
  local at = string.find(info, 'run_id:', 1, true)
  return at and string.match(string.sub(info, at + 7, at + 56), '^%x+') or ''
end
local writer = writer_now()
local m = redis.call('HMGET', meta, 'epoch', 'last', 'writer')
local epoch, last = m[1], tonumber(m[2]) or 0
local opening = (not epoch) or m[3] ~= writer

local results = {}
-- The pending appends: change indexes, pieces, the per-message arguments of publish.
local pend, pieces, keyed, size, largest, largest_at = {}, {}, {}, 0, -1, 0
local function flush()
  if #pend == 0 then return nil end
  local args = {'3', ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8],
    tostring(#pend), '', tostring(largest), tostring(largest_at), table.concat(pieces)}
  for j = 1, #keyed do args[#args + 1] = keyed[j] end
  local reply = publish({KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]}, args)
  if type(reply) == 'table' and reply.err then
    return reply
  end
  local first = last + 1
  if #reply ~= 2 or tonumber(reply[2]) ~= first or (epoch and not opening and reply[1] ~= epoch) then
    -- publish saw fewer duplicates than the lookup above (it checks a subset of the same
    -- windows) and keeps the epoch it was given: this cannot happen.
    return redis.error_reply('HERALD_CORRUPT the map append was not placed at ' .. tostring(epoch) .. ':' .. first)
  end
  epoch = reply[1]
  local writes, dels, final = {}, {}, {}
  for j = 1, #pend do
    local i = pend[j]
    local offset = first + j - 1
    results[i] = {'ok', epoch, offset, 0}
    final[keys[i]] = j
  end
  for j = 1, #pend do
    local i = pend[j]
    if final[keys[i]] == j then
      if ops[i] == 'PUT' then
        writes[#writes + 1] = keys[i]
        writes[#writes + 1] = epoch .. ':' .. string.format('%d', first + j - 1) .. ':' .. values[i]
      else
        dels[#dels + 1] = keys[i]
      end
    end
  end
  last = first + #pend - 1
  writes[#writes + 1] = ''
  writes[#writes + 1] = epoch .. ':' .. string.format('%d', last)
  if #dels > 0 then redis.call('HDEL', state, unpack(dels)) end
  redis.call('HSET', state, unpack(writes))
  opening = false
  pend, pieces, keyed, size, largest, largest_at = {}, {}, {}, 0, -1, 0
  return nil
end

for i = 1, n do
  local op, key, value, expect = ops[i], keys[i], values[i], expects[i]
  local current = cur[key]
  local o = tonumber(known[i] or known_old[i])
  if o then
    results[i] = {'ok', epoch_of(o), o, 1}
  elseif expect == 'absent' and current then
    results[i] = {'conflict', current}
  elseif expect ~= '' and expect ~= 'absent' and current ~= expect then
    results[i] = {'conflict', current or ''}
  elseif op == 'DEL' and not current then
    results[i] = {'absent'}
  elseif op == 'PUT' and max_value and #value > max_value then
    results[i] = {'limit', 'value', #value, max_value}
  elseif op == 'PUT' and max_keys and not current and count >= max_keys then
    results[i] = {'limit', 'keys', count + 1, max_keys}
  elseif max_size and #value > max_size then
    results[i] = {'too_large', #value, max_size}
  else
    if count then
      if op == 'PUT' and not current then count = count + 1 end
      if op == 'DEL' then count = count - 1 end
    end
    local headers = '{"herald-map":"1","op":"' .. ((op == 'PUT') and 'put' or 'del') .. '","key":'
      .. cjson.encode(key) .. ',"base":"' .. map_rev .. '"}'
    -- The message piece `<len>:<key><len>:<headers><len>:<payload>`, built in one
    -- concatenation; the inlined publish takes its numbers as numbers.
    local idem = idems[i]
    local piece = #idem .. ':' .. idem .. #headers .. ':' .. headers .. #value .. ':' .. value
    local k = #keyed
    keyed[k + 1] = #pend
    keyed[k + 2] = idem
    keyed[k + 3] = size
    keyed[k + 4] = #piece
    if #value > largest then largest, largest_at = #value, #pend end
    pend[#pend + 1] = i
    pieces[#pieces + 1] = piece
    size = size + #piece
    if opening then
      local err = flush()
      if err then return err end
      map_rev = epoch .. ':' .. string.format('%d', last)
    else
      map_rev = epoch .. ':' .. string.format('%d', last + #pend)
    end
    if op == 'PUT' then cur[key] = map_rev else cur[key] = false end
  end
end
local err = flush()
if err then return err end
return results
