-- Herald history read, protocol version 3 (see docs/PROTOCOL.md).
--
-- KEYS[1] meta, KEYS[2] log, KEYS[3] epochs
-- ARGV[1] first offset wanted, ARGV[2] most entries wanted (0: state only)
--
-- Returns {epoch or false, last offset, first retained offset or 0, entries, at_end,
-- epoch history (HGETALL epochs: epoch, "<first>[:<lost>]", ...)}, read
-- atomically. `entries` is an XRANGE reply starting with the entry that holds ARGV[1] (or the
-- first entry after it), at most ARGV[2] entries; `at_end` is 1 when it reaches the end of the
-- log. Each entry holds the messages of one publish from its ID's offset on (fields n, t, m).
local epoch = redis.call('HGET', KEYS[1], 'epoch')
local last = redis.call('HGET', KEYS[1], 'last') or '0'
local head = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 1)
local first = 0
if head[1] then
  first = tonumber(string.match(head[1][1], '^(%d+)')) or 0
end
local entries = {}
local at_end = 0
local wanted = tonumber(ARGV[2])
if wanted > 0 then
  local start = '-'
  local at = redis.call('XREVRANGE', KEYS[2], ARGV[1] .. '-0', '-', 'COUNT', 1)
  if at[1] then start = at[1][1] end
  local part = redis.call('XRANGE', KEYS[2], start, '+', 'COUNT', wanted)
  for _, e in ipairs(part) do entries[#entries + 1] = e end
  if #part < wanted then at_end = 1 end
end
return {epoch or false, last, first, entries, at_end, redis.call('HGETALL', KEYS[3])}
