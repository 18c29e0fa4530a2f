-- Herald publish, protocol version 1 (see docs/PROTOCOL.md).
--
-- KEYS[1] meta      hash   {epoch, last}
-- KEYS[2] log       stream entries with ID "<offset>-0" and fields k n t [h] d
-- KEYS[3] settings  hash   {max_len, max_age_ms, dedup_ms, max_size}
-- KEYS[4..3+N]      one dedup key per message: string "<epoch>:<offset>" with a TTL
-- ARGV[1] protocol version ("1")
-- ARGV[2] live channel
-- ARGV[3] publishing node id
-- ARGV[4..7] defaults for a topic without settings: max_len, max_age_ms, dedup_ms, max_size
-- ARGV[8] notify command: PUBLISH or SPUBLISH
-- ARGV[9..] per message: idempotency key, headers (JSON object or ""), data
--
-- Returns {epoch, offset_1, duplicate_1, ..., offset_N, duplicate_N}.
-- All checks run before the first write, so a failed publish writes nothing.
-- Redis >= 6.2 (XTRIM MINID); SPUBLISH needs Redis >= 7.0.

if ARGV[1] ~= '1' then
  return redis.error_reply('HERALD_PROTOCOL this script speaks protocol 1, not ' .. tostring(ARGV[1]))
end
local meta, log, settings = KEYS[1], KEYS[2], KEYS[3]
local channel, node, notify = ARGV[2], ARGV[3], ARGV[8]
local n = (#ARGV - 8) / 3
if n < 1 or n ~= math.floor(n) or #KEYS ~= 3 + n then
  return redis.error_reply('HERALD_ARGS expected 3 KEYS + one dedup key per message and 8 + 3 ARGV per message')
end

-- Reads and checks (no writes yet).
if notify ~= 'PUBLISH' and notify ~= 'SPUBLISH' then
  return redis.error_reply('HERALD_ARGS ARGV[8] must be PUBLISH or SPUBLISH')
end
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
for i = 0, n - 1 do
  local key, headers, data = ARGV[9 + i * 3], ARGV[10 + i * 3], ARGV[11 + i * 3]
  if #key == 0 then
    return redis.error_reply('HERALD_ARGS message ' .. i .. ' has an empty idempotency key')
  end
  if #data > max_size then
    return redis.error_reply('HERALD_TOO_LARGE ' .. i .. ' ' .. #data .. ' ' .. max_size)
  end
  if headers ~= '' then
    local ok, h = pcall(cjson.decode, headers)
    if not ok or type(h) ~= 'table' then
      return redis.error_reply('HERALD_ARGS message ' .. i .. ' headers are not a JSON object')
    end
  end
end
local epoch = redis.call('HGET', meta, 'epoch')
local last = 0
if epoch then
  last = tonumber(redis.call('HGET', meta, 'last'))
  if not last then
    return redis.error_reply('HERALD_CORRUPT meta field "last" is not a number')
  end
else
  redis.call('XLEN', log) -- fails with WRONGTYPE before any write if the log key is foreign
end
local prev = {}
for i = 1, n do
  prev[i] = redis.call('GET', KEYS[3 + i])
end

-- Writes. The first XADD is the first write for an existing epoch; it is checked, so that a
-- log holding foreign entries past `last` refuses the publish before anything is written.
local t = redis.call('TIME')
local now_ms = string.format('%d', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
local new_epoch = not epoch
if new_epoch then
  epoch = t[1] .. string.format('%06d', tonumber(t[2]))
  redis.call('DEL', log)
end

local function field(x)
  return #x .. ':' .. x
end
local result = {epoch}
local frame = {}
local first_new = nil
local count = 0
local seen = {}
for i = 1, n do
  local key, headers, data = ARGV[6 + i * 3], ARGV[7 + i * 3], ARGV[8 + i * 3]
  local dup = seen[key]
  if not dup and prev[i] then
    local pe, po = string.match(prev[i], '^(%d+):(%d+)$')
    if pe == epoch then
      dup = tonumber(po)
    end
  end
  if dup then
    result[#result + 1] = dup
    result[#result + 1] = 1
  else
    last = last + 1
    local offset = string.format('%d', last)
    local added
    if headers == '' then
      added = redis.pcall('XADD', log, offset .. '-0', 'k', key, 'n', node, 't', now_ms, 'd', data)
    else
      added = redis.pcall('XADD', log, offset .. '-0', 'k', key, 'n', node, 't', now_ms, 'h', headers, 'd', data)
    end
    if type(added) == 'table' and added.err then
      -- Only the first XADD can fail (later IDs are higher still): nothing is written yet.
      if string.sub(added.err, 1, 9) == 'WRONGTYPE' then
        return redis.error_reply(added.err) -- a foreign type, not foreign entries
      end
      return redis.error_reply('HERALD_CORRUPT the log holds entries Herald did not write past offset ' .. (last - 1) .. ': ' .. added.err)
    end
    redis.call('SET', KEYS[3 + i], epoch .. ':' .. offset, 'PX', dedup_ms)
    seen[key] = last
    first_new = first_new or offset
    count = count + 1
    frame[#frame + 1] = field(key) .. field(node) .. field(now_ms) .. field(headers) .. field(data)
    result[#result + 1] = last
    result[#result + 1] = 0
  end
end

if not have_settings then
  redis.call('HSET', settings, 'max_len', max_len, 'max_age_ms', max_age, 'dedup_ms', dedup_ms, 'max_size', max_size)
end
if new_epoch then
  redis.call('HSET', meta, 'epoch', epoch, 'last', string.format('%d', last))
elseif count > 0 then
  redis.call('HSET', meta, 'last', string.format('%d', last))
end
if count > 0 then
  redis.call('XTRIM', log, 'MAXLEN', max_len)
  if max_age > 0 then
    -- Trim by age, a bounded amount of work per publish.
    local cutoff = tonumber(now_ms) - max_age
    for _ = 1, 8 do
      local head = redis.call('XRANGE', log, '-', '+', 'COUNT', 128)
      local keep = nil
      local last_old = nil
      for _, e in ipairs(head) do
        local ts = nil
        for j = 1, #e[2], 2 do
          if e[2][j] == 't' then ts = tonumber(e[2][j + 1]) end
        end
        if ts and ts < cutoff then last_old = e[1] else keep = e[1]; break end
      end
      if keep then
        redis.call('XTRIM', log, 'MINID', keep)
        break
      elseif last_old then
        local o = tonumber(string.match(last_old, '^(%d+)'))
        redis.call('XTRIM', log, 'MINID', string.format('%d', o + 1) .. '-0')
      else
        break
      end
    end
  end
  redis.call(notify, channel, field('h1') .. field(epoch) .. field(first_new) .. field(tostring(count)) .. table.concat(frame))
end
return result
