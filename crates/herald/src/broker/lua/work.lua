-- Herald work group procedure (work protocol version 1, with ACKS since 1.1, TAKE since 1.2). See
-- docs/PROTOCOL.md, "Work groups (v1)".
--
-- KEYS[1]  <ns>:{<topic>}:work:<group>          hash: v, epoch, next, acked, dead, lost, resets, dlq
-- KEYS[2]  <ns>:{<topic>}:work:<group>:jobs     hash: offset -> JSON job record
-- KEYS[3]  <ns>:{<topic>}:work:<group>:due      sorted set: offset -> when it may be handed out
-- KEYS[4]  <ns>:{<topic>}:work:<group>:holders  sorted set: holder -> expires_at_ms
-- KEYS[5]  <ns>:{<topic>}:groups                set: the topic's group names
-- KEYS[6]  <ns>:{<topic>}:work:<group>:done     sorted set: "<offset>:<holder>:<attempt>" -> when
--          it was acked or dead-lettered (kept 10 minutes), so that a retried outcome whose
--          first reply was lost is answered 'ok' again rather than 'stale'
-- KEYS[7]  <ns>:{<topic>}:work:<group>:keys     hash: order key -> the offset holding it
-- KEYS[8]  <ns>:{<topic>}:meta, KEYS[9] <ns>:{<topic>}:log: the topic's own keys, read (never
--          written) by TAKE only
-- ARGV[1]  operation: REGISTER | HEARTBEAT | LEAVE | CLAIM | TAKE | ACK | ACKS | NAK | DEFER | PROGRESS |
--          TERM | DEADDONE | LOST | STATE
--
-- A job record is {"s":state,"a":attempt,"h":holder,"d":deadline_ms,"t":first_ms,"e":error,"k":key}
-- with state "run" (leased to h until d), "wait" (a retry, due at d), "dead" (to be
-- dead-lettered by h, leased until d) or "blocked" (waiting for the order key "k", not due).
-- A record with an order key "k" holds that key (keys[k] = its offset) unless blocked.
-- Every time is the Redis server clock (TIME).
-- A holder is "<member id>#<incarnation>"; it is live while its score is not in the past.
-- The group never writes the topic's own keys.

local state, jobs, due, holders, groups, done = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local keys = KEYS[7]
local DONE_KEEP_MS = 600000
local op = ARGV[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local function fmt(n)
  return string.format('%d', n)
end

-- A string that goes into a job record as it is: no quote, backslash, control character or
-- non-ASCII byte (anything else is left to cjson); `absent`: nil is fine too.
local function plain(v, absent)
  if v == nil then
    return absent
  end
  return type(v) == 'string' and not string.find(v, '[%c"\\\128-\255]')
end

local function whole(v)
  return type(v) == 'number' and v == math.floor(v) and v > -1e15 and v < 1e15
end

-- The JSON of a job record: for the usual records written here with the fields always in
-- this order (no cjson), any other one by cjson; both are the same record to every reader.
local function encode(r)
  if plain(r.s) and plain(r.h) and plain(r.e, true) and plain(r.k, true) and whole(r.a)
    and whole(r.d) and whole(r.t) then
    local k = ''
    if r.k then
      k = ',"k":"' .. r.k .. '"'
    end
    return string.format('{"s":"%s","a":%d,"h":"%s","d":%d,"t":%d,"e":"%s"%s}', r.s, r.a, r.h,
      r.d, r.t, r.e or '', k)
  end
  return cjson.encode(r)
end

-- A job record read back: the order `encode` writes is matched directly, any other JSON (a
-- record with escapes, or one another member's cjson wrote) goes to cjson.
local function decode(raw)
  if not raw then
    return nil
  end
  local s, a, h, d, tt, e, rest = string.match(raw,
    '^{"s":"(%a+)","a":(%-?%d+),"h":"([^"\\]*)","d":(%-?%d+),"t":(%-?%d+),"e":"([^"\\]*)"(.*)$')
  if s then
    local r = {s = s, a = tonumber(a), h = h, d = tonumber(d), t = tonumber(tt), e = e}
    if rest == '}' then
      return r
    end
    local k = string.match(rest, '^,"k":"([^"\\]*)"}$')
    if k then
      r.k = k
      return r
    end
  end
  local ok, r = pcall(cjson.decode, raw)
  if ok and type(r) == 'table' and type(r.a) == 'number' then
    return r
  end
  return nil
end

local function get(offset)
  return decode(redis.call('HGET', jobs, offset))
end

local function put(offset, r, at)
  redis.call('HSET', jobs, offset, encode(r))
  redis.call('ZADD', due, at, offset)
end

-- `redis.call(cmd, key, ...)` with the items of `list` as the rest, in calls of at most 1000
-- items (Lua's unpack limit); nothing when `list` is empty.
local function call_many(cmd, key, list)
  for i = 1, #list, 1000 do
    redis.call(cmd, key, unpack(list, i, math.min(#list, i + 999)))
  end
end

-- Removes a finished record; its order key passes to the lowest offset blocked on it.
local function drop(offset, r)
  redis.call('HDEL', jobs, offset)
  redis.call('ZREM', due, offset)
  if r and r.k and r.k ~= '' and redis.call('HGET', keys, r.k) == offset then
    local best, best_r = nil, nil
    local all = redis.call('HGETALL', jobs)
    for i = 1, #all, 2 do
      local b = decode(all[i + 1])
      if b and b.s == 'blocked' and b.k == r.k
        and (best == nil or tonumber(all[i]) < tonumber(best)) then
        best, best_r = all[i], b
      end
    end
    if best then
      redis.call('HSET', keys, r.k, best)
      best_r.s = 'wait'
      best_r.d = now
      redis.call('HSET', jobs, best, encode(best_r))
      redis.call('ZADD', due, now, best)
    else
      redis.call('HDEL', keys, r.k)
    end
  end
end

-- A holder is gone: what it held becomes due now (the attempt it had is spent).
local function release(holder, why)
  redis.call('ZREM', holders, holder)
  local all = redis.call('HGETALL', jobs)
  for i = 1, #all, 2 do
    local r = decode(all[i + 1])
    if r and r.h == holder and (r.s == 'run' or r.s == 'dead') then
      r.h = ''
      if r.s == 'run' then
        r.e = why
      end
      r.d = now
      put(all[i], r, now)
    end
  end
end

local function reap()
  local gone = redis.call('ZRANGEBYSCORE', holders, '-inf', '(' .. now, 'LIMIT', 0, 100)
  for _, h in ipairs(gone) do
    release(h, 'member ' .. h .. ' expired')
  end
end

local function alive(holder)
  local exp = redis.call('ZSCORE', holders, holder)
  return exp and tonumber(exp) >= now
end

-- The claim of CLAIM and TAKE; `from` (ordered mode) with the order keys in ARGV[keybase] on.
--   -> {'gone'} | {'epoch', current} | {'ok', now, reset, lost, next, offset, attempt, kind, error, ...}
local function claim(holder, n, lease, max, ttl, epoch, first, last, start, prev, boundary, from, keybase)
  if not alive(holder) then
    return {'gone'}
  end
  redis.call('ZADD', holders, now + ttl, holder)
  local reset = 0
  local cur = tonumber(redis.call('HGET', state, 'epoch') or '0')
  if cur == 0 then
    redis.call('HSET', state, 'epoch', fmt(epoch), 'next', fmt(start))
  elseif epoch > cur and cur == prev and boundary > 0 then
    -- The log continues: offsets from `boundary` on were lost (or never written) under
    -- `cur`; jobs for them are dropped and handed out again as the new epoch's messages.
    local all = redis.call('HKEYS', jobs)
    for _, o in ipairs(all) do
      if tonumber(o) >= boundary then
        drop(o, get(o))
        reset = 1
      end
    end
    local nxt = tonumber(redis.call('HGET', state, 'next') or '1')
    if nxt > boundary then
      nxt = boundary
      reset = 1
    end
    redis.call('HSET', state, 'epoch', fmt(epoch), 'next', fmt(nxt), 'prev', fmt(cur),
      'boundary', fmt(boundary))
    if reset == 1 then
      redis.call('HINCRBY', state, 'resets', 1)
    end
  elseif epoch > cur then
    redis.call('DEL', jobs, due, done, keys)
    redis.call('HDEL', state, 'prev', 'boundary')
    redis.call('HSET', state, 'epoch', fmt(epoch), 'next', fmt(first))
    redis.call('HINCRBY', state, 'resets', 1)
    reset = 1
  elseif epoch < cur then
    return {'epoch', fmt(cur)}
  end
  reap()
  local out = {'ok', fmt(now), fmt(reset), '0', '0'}
  local nkeys = 0
  if from then
    nkeys = #ARGV - keybase + 1
  end
  local count = 0
  local function grant(offset, r, kind, attempt)
    out[#out + 1] = offset
    out[#out + 1] = attempt or fmt(r.a)
    out[#out + 1] = kind
    out[#out + 1] = r.e or ''
    count = count + 1
  end
  for _, o in ipairs(redis.call('ZRANGEBYSCORE', due, '-inf', now, 'LIMIT', 0, n)) do
    local r = get(o)
    if not r then
      redis.call('ZREM', due, o)
    else
      if r.s == 'run' and r.h ~= '' then
        r.e = 'lease expired'
      end
      if r.s ~= 'dead' and r.a >= max then
        r.s = 'dead'
      end
      r.h = holder
      r.d = now + lease
      if r.s == 'dead' then
        put(o, r, r.d)
        grant(o, r, 'dead')
      else
        r.s = 'run'
        r.a = r.a + 1
        put(o, r, r.d)
        grant(o, r, 'job')
      end
    end
  end
  local nxt = tonumber(redis.call('HGET', state, 'next') or '1')
  if nxt < first then
    out[4] = fmt(first - nxt)
    redis.call('HINCRBY', state, 'lost', first - nxt)
    nxt = first
  end
  local upto = last
  if from then
    if nxt < from then
      upto = -1
    else
      upto = math.min(last, from + nkeys - 1)
    end
  end
  -- Fresh records without an order key are all the same: written together, one HSET and one
  -- ZADD for all of them.
  local fresh = {s = 'run', a = 1, h = holder, d = now + lease, t = now, e = ''}
  local fresh_raw, fresh_d = encode(fresh), fmt(fresh.d)
  local fresh_jobs, fresh_due = {}, {}
  while count < n and nxt <= upto do
    local o = fmt(nxt)
    local k = ''
    if from then
      k = ARGV[keybase + nxt - from]
    end
    if k ~= '' and redis.call('HEXISTS', keys, k) == 1 then
      redis.call('HSET', jobs, o, encode({s = 'blocked', a = 0, h = '', d = 0, t = now, e = '', k = k}))
    elseif k ~= '' then
      local r = {s = 'run', a = 1, h = holder, d = now + lease, t = now, e = '', k = k}
      redis.call('HSET', keys, k, o)
      put(o, r, r.d)
      grant(o, r, 'job')
    else
      fresh_jobs[#fresh_jobs + 1] = o
      fresh_jobs[#fresh_jobs + 1] = fresh_raw
      fresh_due[#fresh_due + 1] = fresh_d
      fresh_due[#fresh_due + 1] = o
      grant(o, fresh, 'job', '1')
    end
    nxt = nxt + 1
  end
  call_many('HSET', jobs, fresh_jobs)
  call_many('ZADD', due, fresh_due)
  redis.call('HSET', state, 'next', fmt(nxt))
  out[5] = fmt(nxt)
  return out
end

-- An ACK of `holder` in `epoch` for each of the `count` pairs (offset, attempt) from ARGV[at]
-- on: {'ok' | 'stale', ...}, each answered as that ACK alone would be, in order. The records
-- are read, removed and added to `done` with one command each for all the pairs.
local function ack_all(holder, epoch, at, count)
  local out = {}
  if count <= 0 then
    return out
  end
  local st = redis.call('HMGET', state, 'epoch', 'prev', 'boundary')
  local current = st[1] == epoch
  local prev = st[2] == epoch
  local boundary = tonumber(st[3] or '0')
  local asked = {}
  for i = 1, count do
    out[i] = 'stale'
    local offset = ARGV[at + 2 * i - 2]
    if current or (prev and tonumber(offset) < boundary) then
      asked[#asked + 1] = i
    end
  end
  if #asked == 0 then
    return out
  end
  local raws = {}
  for c = 1, #asked, 1000 do
    local fields = {}
    for j = c, math.min(#asked, c + 999) do
      fields[#fields + 1] = ARGV[at + 2 * asked[j] - 2]
    end
    local got = redis.call('HMGET', jobs, unpack(fields))
    if c == 1 then
      raws = got
    else
      for j = 1, #fields do
        raws[c + j - 1] = got[j]
      end
    end
  end
  -- What this call acks: `removed` offsets (plain records), `keyed` ones (hand their key on),
  -- the `tags` for `done`, and each tag acked here (a pair given twice is answered 'ok' twice).
  -- A record as `encode` writes it, without a backslash (so every quote in it is JSON's own),
  -- is recognised by its start: `prefixes[attempt]`; any other goes through `decode`.
  local removed, keyed, tags, acked_here, prefixes = {}, {}, {}, {}, {}
  local when = fmt(now)
  for j, i in ipairs(asked) do
    local offset, a = ARGV[at + 2 * i - 2], ARGV[at + 2 * i - 1]
    local raw = raws[j]
    local mine, r = false, nil
    if raw and not acked_here[offset] then
      local p = prefixes[a]
      if not p then
        p = '{"s":"run","a":' .. a .. ',"h":"' .. holder .. '","d":'
        prefixes[a] = p
      end
      if string.find(raw, p, 1, true) == 1 and not string.find(raw, '\\', 1, true) then
        mine = true
        if string.find(raw, ',"k":', 1, true) then
          r = decode(raw)
        end
      else
        r = decode(raw)
        mine = r ~= nil and r.h == holder and r.a == tonumber(a) and r.s == 'run'
      end
    end
    local tag = offset .. ':' .. holder .. ':' .. a
    if mine then
      acked_here[offset] = tag
      if r and r.k and r.k ~= '' then
        keyed[#keyed + 1] = {offset, r}
      else
        removed[#removed + 1] = offset
      end
      tags[#tags + 1] = when
      tags[#tags + 1] = tag
      out[i] = 'ok'
    elseif acked_here[offset] == tag or redis.call('ZSCORE', done, tag) then
      out[i] = 'ok'
    end
  end
  if #tags > 0 then
    redis.call('ZREMRANGEBYSCORE', done, '-inf', '(' .. (now - DONE_KEEP_MS))
    call_many('HDEL', jobs, removed)
    call_many('ZREM', due, removed)
    for _, kr in ipairs(keyed) do
      drop(kr[1], kr[2])
    end
    call_many('ZADD', done, tags)
    redis.call('HINCRBY', state, 'acked', #tags / 2)
  end
  return out
end

if op == 'REGISTER' then
  -- REGISTER id ttl_ms dlq group -> holder
  local id, ttl, dlq, group = ARGV[2], tonumber(ARGV[3]), ARGV[4], ARGV[5]
  local prefix = id .. '#'
  for _, h in ipairs(redis.call('ZRANGE', holders, 0, -1)) do
    if string.sub(h, 1, #prefix) == prefix then
      release(h, 'member ' .. h .. ' restarted')
    end
  end
  local holder = prefix .. t[1] .. string.format('%06d', tonumber(t[2]))
  redis.call('ZADD', holders, now + ttl, holder)
  redis.call('SADD', groups, group)
  redis.call('HSET', state, 'v', '1', 'dlq', dlq)
  return holder
elseif op == 'HEARTBEAT' then
  -- HEARTBEAT holder ttl_ms -> 1 (alive, refreshed) | 0 (gone: register again)
  local holder, ttl = ARGV[2], tonumber(ARGV[3])
  if alive(holder) then
    redis.call('ZADD', holders, now + ttl, holder)
    return 1
  end
  if redis.call('ZSCORE', holders, holder) then
    release(holder, 'member ' .. holder .. ' expired')
  end
  return 0
elseif op == 'LEAVE' then
  -- LEAVE holder -> 1
  release(ARGV[2], 'member ' .. ARGV[2] .. ' left')
  return 1
elseif op == 'CLAIM' then
  -- CLAIM holder n lease_ms max_deliveries ttl_ms epoch first last start prev boundary
  --       [from key...]
  -- `prev`/`boundary` (0 when not): the topic's epoch before `epoch` and the first offset of
  -- `epoch`, when `epoch` continues `prev`'s log (a change of writing server, see
  -- "Epochs"): a group still on `prev` keeps its jobs below `boundary` and continues.
  --   -> {'gone'} | {'epoch', current} |
  --      {'ok', now, reset, lost, next, offset1, attempt1, kind1, error1, ...}
  -- With `from` (ordered mode), the caller gives the order keys ('' for none) of the offsets
  -- from, from+1, ...: fresh offsets are handed out only within them, one per key at a time.
  local holder, n, lease, max = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
  local ttl, epoch, first, last = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9])
  local start = tonumber(ARGV[10])
  local prev, boundary = tonumber(ARGV[11]), tonumber(ARGV[12])
  return claim(holder, n, lease, max, ttl, epoch, first, last, start, prev, boundary,
    tonumber(ARGV[13]), 14)
elseif op == 'ACKS' then
  -- ACKS holder epoch offset attempt [offset attempt ...] -> {'ok' | 'stale', ...}: one ACK
  -- per pair, in order, each answered as ACK would answer it alone (protocol 1.1).
  return ack_all(ARGV[2], ARGV[3], 4, math.floor((#ARGV - 3) / 2))
elseif op == 'TAKE' then
  -- TAKE holder n lease_ms max_deliveries ttl_ms epoch start prev boundary nacks
  --      [offset attempt]... (protocol 1.2; KEYS[8] the topic's meta, KEYS[9] its log)
  -- ACKS of the `nacks` pairs, then CLAIM on the topic's state as this call reads it, and
  -- the stream entries holding the granted offsets. `start` 0: the first retained offset.
  --   -> {'head', acks} (the topic is not in `epoch`: read it, then call again) |
  --      {'gone', acks} | {'epoch', acks, current} |
  --      {'ok', acks, now, reset, lost_now, next, first, last, entries, offset, attempt, kind, error, ...}
  local holder, n, lease, max = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
  local ttl, epoch, start = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
  local prev, boundary, nacks = tonumber(ARGV[9]), tonumber(ARGV[10]), tonumber(ARGV[11])
  local acked = ack_all(holder, ARGV[7], 12, nacks)
  local meta = redis.call('HMGET', KEYS[8], 'epoch', 'last')
  if meta[1] ~= ARGV[7] then
    return {'head', acked}
  end
  local last = tonumber(meta[2] or '0')
  local first = last + 1
  local head = redis.call('XRANGE', KEYS[9], '-', '+', 'COUNT', 1)
  if head[1] then
    first = tonumber(string.match(head[1][1], '^(%d+)')) or first
  end
  if start == 0 then
    start = first
  end
  local out = claim(holder, n, lease, max, ttl, epoch, first, last, start, prev, boundary, nil, 0)
  if out[1] ~= 'ok' then
    return {out[1], acked, out[2]}
  end
  local offsets = {}
  for i = 6, #out, 4 do
    offsets[#offsets + 1] = tonumber(out[i])
  end
  table.sort(offsets)
  local entries, seen = {}, {}
  local i = 1
  while i <= #offsets do
    local a, b = offsets[i], offsets[i]
    while i < #offsets and offsets[i + 1] == b + 1 do
      i = i + 1
      b = offsets[i]
    end
    i = i + 1
    local from = fmt(a) .. '-0'
    local at = redis.call('XREVRANGE', KEYS[9], from, '-', 'COUNT', 1)
    if at[1] then
      from = at[1][1]
    end
    for _, e in ipairs(redis.call('XRANGE', KEYS[9], from, fmt(b) .. '-0')) do
      if not seen[e[1]] then
        seen[e[1]] = true
        entries[#entries + 1] = e
      end
    end
  end
  local reply = {'ok', acked, out[2], out[3], out[4], out[5], fmt(first), fmt(last), entries}
  for j = 6, #out do
    reply[#reply + 1] = out[j]
  end
  return reply
elseif op == 'STATE' then
  -- STATE -> {now, {state field, value, ...}, {offset, record, ...}, {holder, expiry, ...}}
  return {
    fmt(now),
    redis.call('HGETALL', state),
    redis.call('HGETALL', jobs),
    redis.call('ZRANGE', holders, 0, -1, 'WITHSCORES'),
  }
end

-- Outcomes: OP holder epoch offset attempt [args] -> 'ok' | 'dead' | 'stale'
local holder, epoch, offset, attempt = ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])
-- Fencing by epoch: the group's epoch, or the one it continued for offsets below the boundary.
if redis.call('HGET', state, 'epoch') ~= epoch
  and not (redis.call('HGET', state, 'prev') == epoch
    and tonumber(offset) < tonumber(redis.call('HGET', state, 'boundary') or '0')) then
  return 'stale'
end
local r = get(offset)
local tag = offset .. ':' .. holder .. ':' .. ARGV[5]
if (op == 'ACK' or op == 'DEADDONE') and redis.call('ZSCORE', done, tag) then
  return 'ok'
end
if not r or r.h ~= holder or r.a ~= attempt then
  return 'stale'
end
local function finished()
  redis.call('ZREMRANGEBYSCORE', done, '-inf', '(' .. (now - DONE_KEEP_MS))
  redis.call('ZADD', done, now, tag)
end
if op == 'DEADDONE' then
  if r.s ~= 'dead' then
    return 'stale'
  end
  drop(offset, r)
  finished()
  redis.call('HINCRBY', state, 'dead', 1)
  return 'ok'
elseif op == 'LOST' then
  drop(offset, r)
  redis.call('HINCRBY', state, 'lost', 1)
  return 'ok'
end
if r.s ~= 'run' then
  return 'stale'
end
if op == 'ACK' then
  drop(offset, r)
  finished()
  redis.call('HINCRBY', state, 'acked', 1)
  return 'ok'
elseif op == 'NAK' then
  -- NAK ... delay_ms max_deliveries lease_ms error
  local delay, max, lease = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
  r.e = ARGV[9]
  if r.a >= max then
    r.s = 'dead'
    r.d = now + lease
    put(offset, r, r.d)
    return 'dead'
  end
  r.s = 'wait'
  r.h = ''
  r.d = now + delay
  put(offset, r, r.d)
  return 'ok'
elseif op == 'DEFER' then
  -- DEFER ... until_ms: not before until_ms, and this delivery does not count
  r.s = 'wait'
  r.h = ''
  r.a = r.a - 1
  r.d = tonumber(ARGV[6])
  put(offset, r, r.d)
  return 'ok'
elseif op == 'PROGRESS' then
  -- PROGRESS ... lease_ms
  r.d = now + tonumber(ARGV[6])
  put(offset, r, r.d)
  return 'ok'
elseif op == 'TERM' then
  -- TERM ... lease_ms error
  r.s = 'dead'
  r.e = ARGV[7]
  r.d = now + tonumber(ARGV[6])
  put(offset, r, r.d)
  return 'dead'
end
return redis.error_reply('HERALD_BAD_INPUT unknown work operation ' .. tostring(op))
