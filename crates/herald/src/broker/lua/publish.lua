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
local have_settings = redis.call('EXISTS', settings) == 1
local s = redis.call('HMGET', settings, 'max_len', 'max_age_ms', 'dedup_ms', 'max_size')
local max_len = tonumber(s[1]) or tonumber(ARGV[4])
local max_age = tonumber(s[2]) or tonumber(ARGV[5])
local dedup_ms = tonumber(s[3]) or tonumber(ARGV[6])
local max_size = tonumber(s[4]) or tonumber(ARGV[7])
for i = 0, n - 1 do
  local size = #ARGV[11 + i * 3]
  if size > max_size then
    return redis.error_reply('HERALD_TOO_LARGE ' .. i .. ' ' .. size .. ' ' .. max_size)
  end
end
local epoch = redis.call('HGET', meta, 'epoch')
local last = 0
if epoch then
  last = tonumber(redis.call('HGET', meta, 'last'))
  if not last then
    return redis.error_reply('HERALD_CORRUPT meta field "last" is not a number')
  end
  local top = redis.call('XREVRANGE', log, '+', '-', 'COUNT', 1)
  if top[1] then
    local top_offset = tonumber(string.match(top[1][1], '^(%d+)%-0$'))
    if top_offset == nil or top_offset > last then
      return redis.error_reply('HERALD_CORRUPT log entry ' .. top[1][1] .. ' was not written by Herald (last offset is ' .. last .. ')')
    end
  end
else
  redis.call('XLEN', log) -- fails with WRONGTYPE before any write if the log key is foreign
end
local prev = {}
for i = 1, n do
  prev[i] = redis.call('GET', KEYS[3 + i])
end

-- Writes.
local t = redis.call('TIME')
local now_ms = string.format('%d', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
if not have_settings then
  redis.call('HSET', settings, 'max_len', max_len, 'max_age_ms', max_age, 'dedup_ms', dedup_ms, 'max_size', max_size)
end
if not epoch then
  epoch = t[1] .. string.format('%06d', tonumber(t[2]))
  redis.call('DEL', log)
  redis.call('HSET', meta, 'epoch', epoch, 'last', 0)
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
    if headers == '' then
      redis.call('XADD', log, offset .. '-0', 'k', key, 'n', node, 't', now_ms, 'd', data)
    else
      redis.call('XADD', log, offset .. '-0', 'k', key, 'n', node, 't', now_ms, 'h', headers, 'd', data)
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

if count > 0 then
  redis.call('HSET', meta, 'last', string.format('%d', last))
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
