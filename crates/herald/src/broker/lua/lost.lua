-- Herald loss report, protocol version 3 (see docs/PROTOCOL.md).
--
-- A party (a subscriber, a durable cursor) that saw offset ARGV[3] of epoch ARGV[2] exist
-- reports it; the call is idempotent, so several parties noticing one loss at once make one
-- record and at most one epoch change.
--
-- KEYS[1] meta, KEYS[2] epochs (as in publish.lua)
-- ARGV[1] protocol version ("3"), ARGV[2] epoch, ARGV[3] offset
--
-- - The topic's current epoch is ARGV[2] but its `last` is below ARGV[3]: the log went back
--   under one writer. A new epoch opens, continuing from `last + 1` (offsets are never reused
--   under one epoch), and ARGV[3] is recorded as the old epoch's lost maximum.
-- - ARGV[2] is an older epoch of the history that ended before ARGV[3]: ARGV[3] is recorded
--   as its lost maximum, if larger than the one recorded.
-- - ARGV[2] is an epoch the history does not hold, older than some epoch S it holds (the
--   server that wrote it died before this one got any of its writes: a promoted replica that
--   never received the topic, or an epoch the old primary opened alone): none of its offsets
--   survived. It is recorded as an empty epoch placed right before S, "<first of S>:<ARGV[3]>",
--   so readers crossing into S get a Lost gap of it from S's first offset to ARGV[3]. (Its
--   offsets all lie at or after S's first: S continues from the last offset this server had,
--   and the old server only wrote past what it had replicated.)
-- - Otherwise (nothing lost, no log, an epoch newer than every epoch of the history) nothing
--   changes.
--
-- Returns {changed (0/1), current epoch or false}.
--
-- The epoch procedures below are publish.lua's (which does the first case itself when given
-- the publisher's floor): Herald inlines them from publish.lua in place of this next line.
--@EPOCHS@

if ARGV[1] ~= '3' then
  return redis.error_reply('HERALD_PROTOCOL this script speaks protocol 3, not ' .. tostring(ARGV[1]))
end
local meta, epochs = KEYS[1], KEYS[2]
local e, o = ARGV[2], tonumber(ARGV[3])
if #KEYS ~= 2 or tonumber(e) == nil or o == nil then
  return redis.error_reply('HERALD_ARGS expected 2 KEYS, an epoch and an offset')
end
local m = redis.call('HMGET', meta, 'epoch', 'last')
local current, last = m[1], tonumber(m[2])
if not current or not last then return {0, current or false} end

if current == e then
  if last >= o then return {0, current} end
  local first, lost = parse_epoch(current, redis.call('HGET', epochs, current) or '1')
  if not first then return lost end
  local fresh = next_epoch_id(redis.call('TIME'), current)
  continue_epoch(meta, epochs, current, first, lost, last, o, fresh, server_id())
  return {1, fresh}
end

local rec = redis.call('HGET', epochs, e)
-- The epoch ends where the next one (the smallest larger id) begins.
local next_first = nil
local flat = redis.call('HGETALL', epochs)
local best = nil
for i = 1, #flat, 2 do
  local id = tonumber(flat[i])
  if id > tonumber(e) and (best == nil or id < best) then
    best = id
    next_first = tonumber(string.match(flat[i + 1], '^(%d+)'))
  end
end
if not rec then
  if not next_first or o < next_first then return {0, current} end
  redis.call('HSET', epochs, e, string.format('%d', next_first) .. ':' .. string.format('%d', o))
  trim_history(epochs)
  return {1, current}
end
if not next_first or o < next_first then return {0, current} end
local first, lost = parse_epoch(e, rec)
if not first then return lost end
if lost >= o then return {0, current} end
redis.call('HSET', epochs, e, first .. ':' .. string.format('%d', o))
return {1, current}
