-- Herald publish, protocol version 4, also accepting version 3 calls (see docs/PROTOCOL.md).
--
-- KEYS[1] meta      hash   {epoch, last, dedup_at, writer}; writer is the run_id of the Redis
--                   server process that opened the epoch (INFO server)
-- KEYS[2] log       stream, one entry per group of up to 1000 messages of a publish (ARGV
--                   groups, duplicates left out): ID "<first offset>-0", fields n <node>
--                   t <publish time ms> m <messages>, where <messages> is the concatenation of
--                   the new messages' pieces; the i-th (from 0) has offset first + i
-- KEYS[3] settings  hash   {max_len, max_age_ms, dedup_ms, max_size}
-- KEYS[4] dedup     hash   idempotency key -> record (see below), keys of the current window
-- KEYS[5] dedup_old hash   the same for the previous window
-- KEYS[6] epochs    hash   epoch -> "<first offset>" or "<first offset>:<lost>", the epoch
--                   history (at most 64 epochs): an epoch covers its first offset up to the
--                   next epoch's first offset - 1; <lost> is the largest offset of it that
--                   some party saw acknowledged or delivered and that was lost
-- ARGV[1] protocol version: "4", or "3" (a call without the floor arguments below)
-- ARGV[2] live channel
-- ARGV[3] publishing node id
-- ARGV[4..7] defaults for a topic without settings: max_len, max_age_ms, dedup_ms, max_size
-- ARGV[8] notify command: PUBLISH or SPUBLISH
-- ARGV[9] N, the number of messages (1..10000)
-- ARGV[10] call key: the idempotency key of the call, which covers every message that has no
--          key of its own ("" when each message has its own key)
-- ARGV[11] the largest payload size in bytes, ARGV[12] the index (from 0) of that message
-- ARGV[13 .. 12+G] the pieces, G = ceil(N / 1000) groups: group g holds the pieces of messages
--          1000g .. 1000g+999 concatenated, each piece field(key) field(headers JSON or "")
--          field(payload) where field(x) = #x ":" x
-- ARGV[13+G ..] per message with its own idempotency key, in increasing index order: index
--          (from 0), key, start of its piece in its group (from 0), length of its piece
-- ARGV[#ARGV-1], ARGV[#ARGV] (version 4 only) the floor: the epoch and offset of the highest
--          position the publishing handle was acknowledged on this topic, or "" "" for none.
--          If the topic's current epoch is the floor's and `last` is below its offset, the log
--          went back under one writer: before writing, the script does what lost.lua does for
--          that position (records it as the epoch's lost maximum, opens a new epoch continuing
--          from `last + 1`), so that no (epoch, offset) of a receipt is ever reused. When the
--          writer changed too, the epoch change happens anyway, and the floor is recorded as
--          the old epoch's lost maximum.
--
-- Dedup records: a message's own key -> its offset; a call key -> the offset of the call's
-- first message when the call appended all its messages, else the offsets of all N messages
-- separated by commas. A call whose key is known was already published: it appends nothing
-- and gets its recorded offsets back, all flagged duplicate. A retry MUST repeat the call
-- exactly (same N), as the single-offset record does not hold N.
--
-- Returns {epoch, first} when every message was appended (offsets first .. first+N-1), else
-- {epoch, offset_1, flag_1, ..., offset_N, flag_N}: flag 0 for an appended message, 1 for a
-- duplicate in `epoch`, or for a duplicate whose offset belongs to an older epoch (the log
-- changed writer since), that epoch.
-- All checks run before the first write, so a failed publish writes nothing.
-- Redis >= 6.2 (XTRIM MINID, exclusive ranges); SPUBLISH needs Redis >= 7.0.

-- >>> epoch procedures, shared with lost.lua: Herald builds lost.lua by putting the lines from
-- this one to the "<<<" line in place of its placeholder line (docs/PROTOCOL.md §5.1).

-- The id of the epoch that follows `current` (nil: none), from TIME `t`: the time-based id, or
-- `current + 1` when the clock says otherwise (epoch ids increase).
local function next_epoch_id(t, current)
  local fresh = t[1] .. string.format('%06d', tonumber(t[2]))
  if current and tonumber(fresh) <= tonumber(current) then
    fresh = string.format('%d', tonumber(current) + 1)
  end
  return fresh
end

-- The run_id of this server process (INFO server), the writer of the epochs it opens. (A plain
-- find, then a pattern over the id only: cheaper than a pattern over the section.)
local function server_id()
  local info = redis.call('INFO', 'server')
  local at = string.find(info, 'run_id:', 1, true)
  return at and string.match(string.sub(info, at + 7, at + 56), '^%x+') or ''
end

-- Keeps the 64 largest epoch ids of the history `epochs`.
local function trim_history(epochs)
  if redis.call('HLEN', epochs) > 64 then
    local ids = redis.call('HKEYS', epochs)
    table.sort(ids, function(a, b) return tonumber(a) < tonumber(b) end)
    redis.call('HDEL', epochs, unpack(ids, 1, #ids - 64))
  end
end

-- Epoch `id`'s history record `rec` ("<first>" or "<first>:<lost>"): its first offset (a
-- string) and lost maximum (0: none), or nil and an error reply.
local function parse_epoch(id, rec)
  local first, lost = string.match(rec, '^(%d+):?(%d*)$')
  if not first then
    return nil, redis.error_reply('HERALD_CORRUPT epoch history entry ' .. id .. ' holds ' .. rec)
  end
  return first, tonumber(lost) or 0
end

-- Ends epoch `current` (its record parsed: `first`, `lost`) at `last`: opens epoch `fresh`,
-- written by `writer`, continuing the offsets from `last + 1`; when `o` is given (an offset
-- of `current` past `last` that some party saw), records it as `current`'s lost maximum.
-- Writes the history and meta's epoch and writer (not `last`).
local function continue_epoch(meta, epochs, current, first, lost, last, o, fresh, writer)
  if o and lost < o then
    redis.call('HSET', epochs, current, first .. ':' .. string.format('%d', o))
  else
    -- A log written before protocol 3 has no history: its epoch began at offset 1.
    redis.call('HSETNX', epochs, current, first)
  end
  redis.call('HSET', epochs, fresh, string.format('%d', last + 1))
  trim_history(epochs)
  redis.call('HSET', meta, 'epoch', fresh, 'writer', writer)
end

-- <<< end of the epoch procedures shared with lost.lua

local version = ARGV[1]
if version ~= '4' and version ~= '3' then
  return redis.error_reply('HERALD_PROTOCOL this script speaks protocol 4 (and 3), not ' .. tostring(version))
end
-- Version 4 ends with the two floor arguments.
local floor_args = version == '4' and 2 or 0
local meta, log, settings, dedup, dedup_old, epochs = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local channel, node, notify = ARGV[2], ARGV[3], ARGV[8]
local n = tonumber(ARGV[9])
if #KEYS ~= 6 or n == nil or n < 1 or n > 10000 or n ~= math.floor(n) then
  return redis.error_reply('HERALD_ARGS expected 6 KEYS and a message count of 1 to 10000 in ARGV[9]')
end
local groups = math.ceil(n / 1000)
local nkeyed = (#ARGV - 12 - groups - floor_args) / 4
if nkeyed < 0 or nkeyed ~= math.floor(nkeyed) or nkeyed > n then
  return redis.error_reply('HERALD_ARGS expected 12 + ceil(N/1000) ARGV, 4 per message with its own key and (version 4) 2 for the floor')
end
local floor_epoch, floor_offset = nil, nil
if floor_args > 0 and #ARGV[#ARGV - 1] > 0 then
  floor_epoch, floor_offset = ARGV[#ARGV - 1], tonumber(ARGV[#ARGV])
  if not string.find(floor_epoch, '^%d+$') or floor_offset == nil then
    return redis.error_reply('HERALD_ARGS the floor must be an epoch and an offset, or two empty strings')
  end
end
if notify ~= 'PUBLISH' and notify ~= 'SPUBLISH' then
  return redis.error_reply('HERALD_ARGS ARGV[8] must be PUBLISH or SPUBLISH')
end
local call_key = ARGV[10]
-- A notification whose body is at least this long is sent split (step 5).
local SPLIT_BYTES = 2048
if nkeyed < n and #call_key == 0 then
  return redis.error_reply('HERALD_ARGS ARGV[10] must name the call: some messages have no key of their own')
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
local s = redis.call('HMGET', settings, 'max_len', 'max_age_ms', 'dedup_ms', 'max_size')
local have_settings = s[1] or s[2] or s[3] or s[4]
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

local largest = tonumber(ARGV[11])
if largest == nil or tonumber(ARGV[12]) == nil then
  return redis.error_reply('HERALD_ARGS ARGV[11] and ARGV[12] must be the largest payload size and its index')
end
if largest > max_size then
  return redis.error_reply('HERALD_TOO_LARGE ' .. ARGV[12] .. ' ' .. ARGV[11] .. ' ' .. max_size)
end

-- The messages with keys of their own: {index, key, start, length}, checked.
local keyed = {}
local lookup = {}
if nkeyed < n then lookup[1] = call_key end
local previous = -1
for j = 1, nkeyed do
  local a = 12 + groups + (j - 1) * 4
  local index, key, start, len = tonumber(ARGV[a + 1]), ARGV[a + 2], tonumber(ARGV[a + 3]), tonumber(ARGV[a + 4])
  if index == nil or index <= previous or index >= n then
    return redis.error_reply('HERALD_ARGS message indexes must increase and be below N')
  end
  if #key == 0 then
    return redis.error_reply('HERALD_ARGS message ' .. index .. ' has an empty idempotency key')
  end
  local group = ARGV[13 + math.floor(index / 1000)]
  if start == nil or len == nil or start < 0 or len < 1 or start + len > #group then
    return redis.error_reply('HERALD_ARGS message ' .. index .. ' has no valid piece bounds')
  end
  previous = index
  keyed[j] = {index, key, start, len}
  lookup[#lookup + 1] = key
end

local m = redis.call('HMGET', meta, 'epoch', 'last', 'dedup_at', 'writer')
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
if age < 2 * dedup_ms then prev = hmget(dedup, lookup) end
if age < dedup_ms then prev_old = hmget(dedup_old, lookup) end
local function known(j)
  return prev[j] or prev_old[j]
end

-- 2. Assign offsets. A message is a duplicate when its own key is known or repeats within the
-- call, or when the call's key is known (the call was published before); a duplicate gets the
-- original offset and writes nothing.
-- An epoch is a log incarnation written by one Redis server process. A log whose epoch another
-- process opened (a promoted replica, a restart) continues under a new epoch from `last + 1`,
-- so that no offset is ever reused under one epoch: the writes of the old process that this
-- one lacks keep their names, and readers past `last` in the old epoch learn of the loss.
-- The floor (ARGV, version 4) is the highest position this publisher was acknowledged: a log
-- of that epoch whose `last` is below it went back (under one writer, or the writer changed
-- too), and continues under a new epoch as well, with the floor recorded as lost.
local writer = server_id()
local new_epoch = not epoch
local continued = epoch and m[4] ~= writer
local floor_lost = epoch and floor_offset and floor_epoch == epoch and last < floor_offset
local old_epoch = epoch
local old_first, old_lost = '1', 0 -- the old epoch's history record, when it changes
if floor_lost then
  continued = true
  local rec_first, second = parse_epoch(epoch, redis.call('HGET', epochs, epoch) or '1')
  if not rec_first then return second end
  old_first, old_lost = rec_first, second
end
if new_epoch or continued then
  epoch = next_epoch_id(t, old_epoch)
end
local first = last + 1
local dup_at = {} -- index -> original offset, for duplicates
local dups = 0
local remember = {}
local retry = nkeyed < n and known(1)
if retry then
  local record = known(1)
  if string.find(record, '^%d+$') then
    local o = tonumber(record)
    for i = 0, n - 1 do dup_at[i] = o + i end
  else
    local i = 0
    for o in string.gmatch(record, '%d+') do dup_at[i] = tonumber(o); i = i + 1 end
    if i ~= n then
      return redis.error_reply('HERALD_CORRUPT the dedup record of call key ' .. call_key .. ' does not hold ' .. n .. ' offsets')
    end
  end
  dups = n
else
  local seen = {}
  local base = #lookup - nkeyed
  for j = 1, nkeyed do
    local index, key = keyed[j][1], keyed[j][2]
    local o = seen[key] or tonumber(known(base + j))
    if o then
      dup_at[index] = o
      dups = dups + 1
    else
      o = first + index - dups
      seen[key] = o
      remember[#remember + 1] = key
      remember[#remember + 1] = o
    end
  end
end
local count = n - dups
last = last + count

local result = {epoch}
local offsets = nil -- offsets of all N messages, when not first .. first+N-1
-- A duplicate whose offset lies before the current epoch's first belongs to an older epoch:
-- its flag is that epoch (see the reply below).
local cur_first = first
if dups > 0 and not continued and not new_epoch then
  cur_first = tonumber(string.match(redis.call('HGET', epochs, epoch) or '1', '^(%d+)')) or 1
end
local function dup_flag(o)
  if o >= cur_first then return 1 end
  local flat = redis.call('HGETALL', epochs)
  local best, best_first = nil, nil
  for k = 1, #flat, 2 do
    local f = tonumber(string.match(flat[k + 1], '^(%d+)'))
    -- On a tie the larger id: an empty epoch (all lost, see lost.lua) shares its successor's first.
    if f and f <= o and (best_first == nil or f > best_first
        or (f == best_first and tonumber(flat[k]) > tonumber(best))) then
      best, best_first = flat[k], f
    end
  end
  if best == nil and continued then best = old_epoch end
  return best or 1
end
if dups == 0 then
  result[2] = first
else
  offsets = {}
  local next_new = first
  for i = 0, n - 1 do
    local o = dup_at[i]
    if o then
      result[#result + 1] = o
      result[#result + 1] = dup_flag(o)
    else
      o = next_new
      next_new = next_new + 1
      result[#result + 1] = o
      result[#result + 1] = 0
    end
    offsets[i + 1] = string.format('%d', o)
  end
end
if nkeyed < n and not retry then
  remember[#remember + 1] = call_key
  remember[#remember + 1] = offsets and table.concat(offsets, ',') or first
end

-- The stream entries: per group, its pieces without the duplicates' and the offset of its
-- first new message.
local bodies, ids = {}, {}
if count > 0 then
  local cuts = {} -- group -> list of {start, length} of its duplicates' pieces
  if dups > 0 then
    for j = 1, nkeyed do
      local index = keyed[j][1]
      if dup_at[index] then
        local g = math.floor(index / 1000)
        cuts[g] = cuts[g] or {}
        table.insert(cuts[g], {keyed[j][3], keyed[j][4]})
      end
    end
  end
  local new_before = 0
  for g = 0, groups - 1 do
    local group = ARGV[13 + g]
    local size = math.min(1000, n - 1000 * g)
    local body = group
    local removed = 0
    if cuts[g] then
      local kept, at = {}, 1
      for _, c in ipairs(cuts[g]) do
        if c[1] + 1 < at then
          return redis.error_reply('HERALD_ARGS the pieces of messages with their own keys overlap')
        end
        kept[#kept + 1] = string.sub(group, at, c[1])
        at = c[1] + c[2] + 1
      end
      kept[#kept + 1] = string.sub(group, at)
      body = table.concat(kept)
      removed = #cuts[g]
    end
    if size > removed then
      bodies[#bodies + 1] = body
      ids[#ids + 1] = string.format('%d', first + new_before) .. '-0'
    end
    new_before = new_before + size - removed
  end
end

-- 3. Write. For an existing epoch the first write is the first XADD, and it is checked: if the
-- stream's last ID is past `last` (entries Herald did not write), nothing has been written.
if new_epoch then
  redis.call('DEL', log, dedup, dedup_old)
end
for k = 1, #bodies do
  local added = redis.pcall('XADD', log, ids[k], 'n', node, 't', now_ms, 'm', bodies[k])
  if type(added) == 'table' and added.err then
    if string.sub(added.err, 1, 9) == 'WRONGTYPE' then
      return redis.error_reply(added.err) -- a foreign type, not foreign entries
    end
    return redis.error_reply('HERALD_CORRUPT the log holds entries Herald did not write past offset ' .. (first - 1) .. ': ' .. added.err)
  end
end
if not have_settings then
  redis.call('HSET', settings, 'max_len', max_len, 'max_age_ms', max_age, 'dedup_ms', dedup_ms, 'max_size', max_size)
end

-- Rotate the dedup windows, then remember the new records in the current one.
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
if #remember > 0 then
  hset(dedup, remember)
  redis.call('PEXPIRE', dedup, 2 * dedup_ms)
end
local last_s = string.format('%d', last)
if new_epoch then
  redis.call('DEL', epochs)
  redis.call('HSET', epochs, epoch, '1')
  redis.call('HSET', meta, 'epoch', epoch, 'last', last_s, 'dedup_at', dedup_at, 'writer', writer)
elseif continued then
  continue_epoch(meta, epochs, old_epoch, old_first, old_lost, first - 1, floor_lost and floor_offset or nil, epoch, writer)
  redis.call('HSET', meta, 'last', last_s)
  if dedup_at then redis.call('HSET', meta, 'dedup_at', dedup_at) end
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
  -- By age: drop the oldest entries while they are older than max_age, at most 1024 per
  -- publish. They are read from the oldest on, one entry first and then twice as many per
  -- read (up to 128): a log whose oldest entry has not expired costs a read of that entry only
  -- (entries are whole publish groups, up to 1000 messages each), and one XTRIM ends it.
  if max_age > 0 then
    local cutoff = now - max_age
    local budget, size, from = 1024, 1, '-'
    local keep, past = nil, nil -- the first entry to keep; the last expired one read
    while budget > 0 do
      local want = math.min(size, budget)
      local head = redis.call('XRANGE', log, from, '+', 'COUNT', want)
      for _, e in ipairs(head) do
        if tonumber(e[2][4]) and tonumber(e[2][4]) >= cutoff then keep = e[1]; break end
        past = e[1]
      end
      if keep or #head < want then break end
      budget = budget - want
      from = '(' .. past
      size = math.min(2 * size, 128)
    end
    if keep then
      if past then redis.call('XTRIM', log, 'MINID', keep) end
    elseif past then
      local o = tonumber(string.match(past, '^(%d+)'))
      redis.call('XTRIM', log, 'MINID', string.format('%d', o + 1) .. '-0')
    end
  end

  -- 5. Notify: one notification carries every message appended by this call. Every Lua
  -- string is hashed over all its bytes, so a large body that is an argument as it is (one
  -- group, no duplicates) is not copied into a new string: its header goes first, tagged h2,
  -- and the body follows as the next message on the channel. Otherwise one h1 frame.
  local header = field(epoch) .. field(string.format('%d', first)) .. field(string.format('%d', count)) .. field(node) .. field(now_ms)
  if #bodies == 1 and bodies[1] == ARGV[13] and #ARGV[13] >= SPLIT_BYTES then
    redis.call(notify, channel, '2:h2' .. header)
    redis.call(notify, channel, ARGV[13])
  else
    redis.call(notify, channel, '2:h1' .. header .. table.concat(bodies))
  end
end
return result
