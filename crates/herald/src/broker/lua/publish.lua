-- Herald publish, protocol version 1 (see docs/PROTOCOL.md).
--
-- KEYS[1] meta      hash   {epoch, last, dedup_at}
-- KEYS[2] log       stream, one entry per publish of up to 1000 messages: ID "<first offset>-0",
--                   fields n <node> t <publish time ms> m <messages>, where <messages> is the
--                   concatenation of the messages' pieces; the i-th (from 0) has offset first + i
-- KEYS[3] settings  hash   {max_len, max_age_ms, dedup_ms, max_size}
-- KEYS[4] dedup     hash   idempotency key -> offset, keys of the current dedup window
-- KEYS[5] dedup_old hash   the same for the previous window
-- ARGV[1] protocol version ("1")
-- ARGV[2] live channel
-- ARGV[3] publishing node id
-- ARGV[4..7] defaults for a topic without settings: max_len, max_age_ms, dedup_ms, max_size
-- ARGV[8] notify command: PUBLISH or SPUBLISH
-- ARGV[9..] per message: idempotency key, payload size in bytes, piece, where piece is
--           field(key) field(headers JSON or "") field(payload) and field(x) = #x ":" x
--
-- Returns {epoch, offset_1, duplicate_1, ..., offset_N, duplicate_N}.
-- All checks run before the first write, so a failed publish writes nothing.
-- Redis >= 6.2 (XTRIM MINID, exclusive ranges); SPUBLISH needs Redis >= 7.0.

if ARGV[1] ~= '1' then
  return redis.error_reply('HERALD_PROTOCOL this script speaks protocol 1, not ' .. tostring(ARGV[1]))
end
local meta, log, settings, dedup, dedup_old = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local channel, node, notify = ARGV[2], ARGV[3], ARGV[8]
local n = (#ARGV - 8) / 3
if n < 1 or n ~= math.floor(n) or #KEYS ~= 5 then
  return redis.error_reply('HERALD_ARGS expected 5 KEYS and 8 + 3 ARGV per message')
end
if notify ~= 'PUBLISH' and notify ~= 'SPUBLISH' then
  return redis.error_reply('HERALD_ARGS ARGV[8] must be PUBLISH or SPUBLISH')
end

-- HMGET / HSET over long lists, in slices that Lua's unpack can take.
local function hmget(key, list)
  local out = {}
  for s = 1, #list, 1000 do
    local part = redis.call('HMGET', key, unpack(list, s, math.min(s + 999, #list)))
    for j = 1, #part do out[s + j - 1] = part[j] end
  end
  return out
end
local function hset(key, list)
  for s = 1, #list, 1000 do
    redis.call('HSET', key, unpack(list, s, math.min(s + 999, #list)))
  end
end
local function field(x)
  return #x .. ':' .. x
end

-- 1. Read and check; nothing is written before every check has passed.
local have_settings = redis.call('EXISTS', settings) == 1
local s = redis.call('HMGET', settings, 'max_len', 'max_age_ms', 'dedup_ms', 'max_size')
local function setting(stored, default, min, name)
  local v = tonumber(stored)
  if stored and (v == nil or v < min or v ~= math.floor(v)) then
    return nil, 'HERALD_CORRUPT setting ' .. name .. ' holds ' .. tostring(stored)
  end
  v = v or tonumber(default)
  if v == nil or v < min or v ~= math.floor(v) then
    return nil, 'HERALD_ARGS default ' .. name .. ' must be an integer >= ' .. min
  end
  return v
end
local max_len, max_age, dedup_ms, max_size, bad
max_len, bad = setting(s[1], ARGV[4], 1, 'max_len')
if bad then return redis.error_reply(bad) end
max_age, bad = setting(s[2], ARGV[5], 0, 'max_age_ms')
if bad then return redis.error_reply(bad) end
dedup_ms, bad = setting(s[3], ARGV[6], 1, 'dedup_ms')
if bad then return redis.error_reply(bad) end
max_size, bad = setting(s[4], ARGV[7], 1, 'max_size')
if bad then return redis.error_reply(bad) end

local keys = {}
for i = 1, n do
  local key, size = ARGV[6 + i * 3], tonumber(ARGV[7 + i * 3])
  if #key == 0 then
    return redis.error_reply('HERALD_ARGS message ' .. (i - 1) .. ' has an empty idempotency key')
  end
  if size == nil or size > #ARGV[8 + i * 3] then
    return redis.error_reply('HERALD_ARGS message ' .. (i - 1) .. ' has no valid payload size')
  end
  if size > max_size then
    return redis.error_reply('HERALD_TOO_LARGE ' .. (i - 1) .. ' ' .. size .. ' ' .. max_size)
  end
  keys[i] = key
end

local m = redis.call('HMGET', meta, 'epoch', 'last', 'dedup_at')
local epoch = m[1]
local last = 0
if epoch then
  last = tonumber(m[2])
  if not last then
    return redis.error_reply('HERALD_CORRUPT meta field "last" is not a number')
  end
else
  redis.call('XLEN', log) -- fails with WRONGTYPE before any write if the log key is foreign
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local now_ms = string.format('%d', now)

-- Dedup: the current window's hash holds the keys published since `dedup_at`, the previous
-- window's hash those of the window before. A key is remembered for at least `dedup_ms` (and
-- less than three times that). Which hashes still count depends on the current window's age.
local age = now - (tonumber(m[3]) or 0)
if not epoch then age = math.huge end -- a new epoch starts with no keys
local prev, prev_old = {}, {}
if age < 2 * dedup_ms then prev = hmget(dedup, keys) end
if age < dedup_ms then prev_old = hmget(dedup_old, keys) end

-- 2. Assign offsets. Duplicates (known keys, or a key repeated in this call) get the
-- original offset and write nothing.
local new_epoch = not epoch
if new_epoch then
  epoch = t[1] .. string.format('%06d', tonumber(t[2]))
end
local result = {epoch}
local pieces = {}
local remember = {}
local seen = {}
local first = last + 1
for i = 1, n do
  local key = keys[i]
  local dup = seen[key] or tonumber(prev[i]) or tonumber(prev_old[i])
  if dup then
    result[#result + 1] = dup
    result[#result + 1] = 1
  else
    last = last + 1
    seen[key] = last
    pieces[#pieces + 1] = ARGV[8 + i * 3]
    remember[#remember + 1] = key
    remember[#remember + 1] = last
    result[#result + 1] = last
    result[#result + 1] = 0
  end
end
local count = #pieces

-- 3. Write. For an existing epoch the first write is the first XADD, and it is checked: if the
-- stream's last ID is past `last` (entries Herald did not write), nothing has been written.
if new_epoch then
  redis.call('DEL', log, dedup, dedup_old)
end
local frame_body = {}
for c = 1, count, 1000 do
  local body = table.concat(pieces, '', c, math.min(c + 999, count))
  local id = string.format('%d', first + c - 1) .. '-0'
  local added = redis.pcall('XADD', log, id, 'n', node, 't', now_ms, 'm', body)
  if type(added) == 'table' and added.err then
    if string.sub(added.err, 1, 9) == 'WRONGTYPE' then
      return redis.error_reply(added.err) -- a foreign type, not foreign entries
    end
    return redis.error_reply('HERALD_CORRUPT the log holds entries Herald did not write past offset ' .. (first - 1) .. ': ' .. added.err)
  end
  frame_body[#frame_body + 1] = body
end
if not have_settings then
  redis.call('HSET', settings, 'max_len', max_len, 'max_age_ms', max_age, 'dedup_ms', dedup_ms, 'max_size', max_size)
end

-- Rotate the dedup windows, then remember the new keys in the current one.
local dedup_at = nil
if age >= 2 * dedup_ms then
  if not new_epoch then redis.call('DEL', dedup, dedup_old) end
  dedup_at = now_ms
elseif age >= dedup_ms then
  if redis.call('EXISTS', dedup) == 1 then
    redis.call('RENAME', dedup, dedup_old)
  else
    redis.call('DEL', dedup_old)
  end
  dedup_at = now_ms
end
if count > 0 then
  hset(dedup, remember)
  redis.call('PEXPIRE', dedup, 2 * dedup_ms)
end
local last_s = string.format('%d', last)
if new_epoch then
  redis.call('HSET', meta, 'epoch', epoch, 'last', last_s, 'dedup_at', dedup_at)
elseif dedup_at then
  redis.call('HSET', meta, 'last', last_s, 'dedup_at', dedup_at)
elseif count > 0 then
  redis.call('HSET', meta, 'last', last_s)
end

if count > 0 then
  -- 4. Retention. By length: drop the entries that hold only offsets older than the newest
  -- max_len (an entry straddling the boundary stays whole: at least max_len are kept).
  if last - max_len >= 1 then
    local boundary = redis.call('XREVRANGE', log, string.format('%d', last - max_len + 1) .. '-0', '-', 'COUNT', 1)
    if boundary[1] then
      redis.call('XTRIM', log, 'MINID', boundary[1][1])
    end
  end
  -- By age: drop whole entries older than max_age, a bounded amount of work per publish.
  if max_age > 0 then
    local cutoff = now - max_age
    for _ = 1, 8 do
      local head = redis.call('XRANGE', log, '-', '+', 'COUNT', 128)
      local keep = nil
      for _, e in ipairs(head) do
        if tonumber(e[2][4]) and tonumber(e[2][4]) >= cutoff then keep = e[1]; break end
      end
      if keep then
        redis.call('XTRIM', log, 'MINID', keep)
        break
      elseif #head > 0 then
        local o = tonumber(string.match(head[#head][1], '^(%d+)'))
        redis.call('XTRIM', log, 'MINID', string.format('%d', o + 1) .. '-0')
      else
        break
      end
    end
  end

  -- 5. Notify: one frame carries every message appended by this call.
  redis.call(notify, channel, field('h1') .. field(epoch) .. field(string.format('%d', first)) .. field(tostring(count)) .. field(node) .. field(now_ms) .. table.concat(frame_body))
end
return result
