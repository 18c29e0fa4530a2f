-- Herald history read, protocol version 1 (see docs/PROTOCOL.md).
--
-- KEYS[1] meta, KEYS[2] log
-- ARGV[1] first offset wanted, ARGV[2] most entries to return (0: state only)
--
-- Returns {epoch or false, last offset, first retained offset or 0, entries}
-- where entries is the XRANGE reply from "<from>-0", read atomically with the state.
local epoch = redis.call('HGET', KEYS[1], 'epoch')
local last = redis.call('HGET', KEYS[1], 'last') or '0'
local head = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 1)
local first = 0
if head[1] then
  first = tonumber(string.match(head[1][1], '^(%d+)')) or 0
end
local entries = {}
local count = tonumber(ARGV[2])
if count > 0 then
  entries = redis.call('XRANGE', KEYS[2], ARGV[1] .. '-0', '+', 'COUNT', count)
end
return {epoch or false, last, first, entries}
