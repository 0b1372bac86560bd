package loadstate

import (
	"context"

	"github.com/redis/go-redis/v9"
)

// The Lua scripts of the Redis store. Each runs atomically on the server, takes
// every key it touches in KEYS (all in the pool's hash slot) and reads time
// from Redis's clock (TIME), never from the replicas', so leases expire at the
// same moment for every replica. Scores are expiry times in Unix milliseconds.
//
// Epoch: each script that decides on counts first checks the pool's epoch key.
// A Redis that restarted empty has none: the first script to notice creates a
// new one, the caller's random prefix followed by Redis's TIME, so that it
// differs from every earlier epoch even when the same replica creates it
// again, and every replica whose trusted epoch differs (its creator included)
// learns that the counts in Redis lack leases that are still in flight.

// queueLua is shared by the scripts that free or take slots: the pool's
// fleet-wide wait queue (see RedisStore's queue: tickets in one hash, a sorted
// set per backend ordered by place in line) and serve, which hands a backend's
// free room to the tickets waiting for it.
//
// A ticket is "replica|member|expiry ms|token cost|name:cap:tcap:score,...":
// the replica to tell, the lease member it will hold, when it lapses (its
// waiter gave up or died), its tokens, and for each backend it can use that
// backend's capacities (as its waiter saw them) and how well it suits the
// request (the optimal assignment). Queue entries of tickets that are gone
// are dropped lazily, when they reach the head of a queue.
const queueLua = `
local function tokens(m)
  local h = string.find(m, '#', 1, true)
  if h then
    return tonumber(string.sub(m, h + 1)) or 0
  end
  return 0
end
local function parse_ticket(raw)
  local replica, member, expiry, cost, wants = string.match(raw, '^([^|]*)|([^|]*)|([^|]*)|([^|]*)|(.*)$')
  if not replica then
    return nil
  end
  local w = {}
  for name, cap, tcap, score in string.gmatch(wants, '([^:,]+):(%d+):(%d+):([^,]*)') do
    w[name] = {cap = tonumber(cap), tcap = tonumber(tcap), score = tonumber(score) or 0}
  end
  return {replica = replica, member = member, expiry = tonumber(expiry) or 0, cost = tonumber(cost) or 0, wants = w}
end
-- serve hands free room on one backend to the tickets waiting for it, best
-- first: first in line, or in assign mode the one it is worth most to (its
-- score less one point per AssignAging it is behind the first). It grants until the
-- backend is full or the queue empty, and returns whether it granted selfid
-- (the caller's own ticket, not announced: the caller learns it from the
-- reply). Grants are announced on the ticket's replica's channel only.
local function serve(ctx, lkey, qkey, name, selfid)
  local self = false
  redis.call('ZREMRANGEBYSCORE', lkey, '-inf', ctx.now)
  while true do
    local heads
    if ctx.assign then
      heads = redis.call('ZRANGE', qkey, 0, 63, 'WITHSCORES')
    else
      heads = redis.call('ZRANGE', qkey, 0, 0, 'WITHSCORES')
    end
    if #heads == 0 then
      return self
    end
    local first = tonumber(heads[2])
    local best, bestv, bestrec
    for j = 1, #heads, 2 do
      local id = heads[j]
      local raw = redis.call('HGET', ctx.tickets, id)
      local rec = raw and parse_ticket(raw)
      if not rec or rec.expiry <= ctx.now or not rec.wants[name] then
        redis.call('ZREM', qkey, id)
        if raw and (not rec or rec.expiry <= ctx.now) then
          redis.call('HDEL', ctx.tickets, id)
        end
      else
        local v = 0
        if ctx.assign then
          v = rec.wants[name].score - (tonumber(heads[j + 1]) - first) / ctx.aging
        end
        if not best or v > bestv then
          best, bestv, bestrec = id, v, rec
        end
        if not ctx.assign then
          break
        end
      end
    end
    if best then
      local w = bestrec.wants[name]
      if redis.call('ZCARD', lkey) >= w.cap then
        return self
      end
      if w.tcap > 0 then
        local sum = 0
        for _, m in ipairs(redis.call('ZRANGE', lkey, 0, -1)) do
          sum = sum + tokens(m)
        end
        if sum > 0 and sum + bestrec.cost > w.tcap then
          return self
        end
      end
      redis.call('ZADD', lkey, ctx.now + ctx.lease, bestrec.member)
      redis.call('PEXPIRE', lkey, 2 * ctx.lease)
      redis.call('HDEL', ctx.tickets, best)
      redis.call('ZREM', qkey, best)
      if best == selfid then
        self = true
      else
        redis.call('PUBLISH', ctx.prefix .. bestrec.replica, best .. '\0' .. name .. '\0' .. bestrec.member)
      end
    end
  end
end
`

// acquireScript takes a slot on the first candidate with room, after serving
// the fleet-wide queue; when none has room it can put the request in the
// queue (a ticket), in the same round trip.
//
//	KEYS[1]      epoch key
//	KEYS[2]      the pool's probe claims (hash: backend → member|expiry ms)
//	KEYS[3]      the pool's tickets (hash: id → ticket)
//	KEYS[3+i]    lease set of the i-th backend (i = 1..n)
//	KEYS[3+n+i]  queue of the i-th backend
//	ARGV[1]  lease member
//	ARGV[2]  lease length, ms
//	ARGV[3]  epoch the caller trusts ("" when it has none yet)
//	ARGV[4]  prefix of the epoch to create when Redis has none
//	ARGV[5]  pub/sub channel of released slots
//	ARGV[6]  prefix of the replicas' grant channels
//	ARGV[7]  ticket id ("": do not queue)
//	ARGV[8]  this replica's id
//	ARGV[9]  the ticket's place in line relative to now, ms (its class's
//	         aging, less how long it has waited already)
//	ARGV[10] how long the ticket lives, ms
//	ARGV[11] "1" for assign mode
//	ARGV[12] the assignment's age scale (AssignAging), ms
//	ARGV[12+i]   capacity of the i-th backend
//	ARGV[12+n+i] its name
//	ARGV[12+2n+i] its token capacity (0: none)
//	ARGV[12+3n+i] "1" when it may only be taken as its half-open probe
//	ARGV[12+4n+i] its place in the caller's ranking (1 = best; 0: not to take)
//	ARGV[12+5n+i] its score for the ticket ("": the ticket does not want it)
//
// It drops expired leases of every backend (announcing freed slots: rare, as
// it takes a dead replica or a leak), returns the backend already holding this
// member if any, with its lease extended to a full one (a retry of an attempt
// whose reply was lost: idempotent). Otherwise it serves each backend's queue
// (waiting tickets take free room first: a newcomer never overtakes them) and
// adds the member to the best-ranked backend whose queue is empty, whose live
// lease count is below its capacity and, with a token capacity, whose live
// leases' tokens leave room for the member's (see leaseMember: a member ending
// in "#<tokens>" carries them; a request alone on a backend always fits). A
// probe candidate is taken only if no live claim on it exists, and taking it
// claims it (the release of the lease gives the claim back; a crashed
// replica's claim expires with its lease): one probe per backend at a time,
// fleet-wide. When nothing was taken and a ticket id is given, the ticket
// joins the queue of every backend it wants, which are then served (it may be
// granted at once). Reply: {chosen index (0-based; -1 = none), epoch, count
// of each backend, tokens in flight on each (0 without a token capacity),
// 1 when the ticket waits in the queue} or {-2, epoch} when the epoch differs
// from the trusted one (nothing taken).
var acquireScript = redis.NewScript(queueLua + `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local epoch = redis.call('GET', KEYS[1])
if not epoch then
  epoch = ARGV[4] .. '.' .. t[1] .. '.' .. t[2]
  redis.call('SET', KEYS[1], epoch, 'PX', 86400000)
end
if ARGV[3] ~= '' and epoch ~= ARGV[3] then
  return {-2, epoch}
end
local member, lease = ARGV[1], tonumber(ARGV[2])
local cost = tokens(member)
local n = (#KEYS - 3) / 2
local probes, tickets = KEYS[2], KEYS[3]
local ctx = {tickets = tickets, now = now, lease = lease, prefix = ARGV[6], assign = ARGV[11] == '1', aging = math.max(tonumber(ARGV[12]) or 1, 1)}
local ticket = ARGV[7]
local counts, sums = {}, {}
local chosen, queued = -1, 0
for i = 1, n do
  local key = KEYS[3 + i]
  if redis.call('ZREMRANGEBYSCORE', key, '-inf', now) > 0 then
    redis.call('PUBLISH', ARGV[5], ARGV[12 + n + i] .. '\0')
  end
  if chosen < 0 and redis.call('ZSCORE', key, member) then
    chosen = i - 1
    redis.call('ZADD', key, 'XX', now + lease, member)
    redis.call('PEXPIRE', key, 2 * lease)
  end
end
local function sum_tokens(i)
  local sum = 0
  if tonumber(ARGV[12 + 2 * n + i]) > 0 then
    for _, m in ipairs(redis.call('ZRANGE', KEYS[3 + i], 0, -1)) do
      sum = sum + tokens(m)
    end
  end
  return sum
end
if chosen < 0 then
  -- The caller's ranking: backends to try, best first.
  local order = {}
  for i = 1, n do
    local rank = tonumber(ARGV[12 + 4 * n + i]) or 0
    if rank > 0 then
      order[#order + 1] = {rank = rank, i = i}
    end
  end
  table.sort(order, function(a, b) return a.rank < b.rank end)
  for _, o in ipairs(order) do
    local i = o.i
    local qkey = KEYS[3 + n + i]
    serve(ctx, KEYS[3 + i], qkey, ARGV[12 + n + i], nil)
    local tcap = tonumber(ARGV[12 + 2 * n + i])
    local probe = ARGV[12 + 3 * n + i] == '1'
    local count, sum = redis.call('ZCARD', KEYS[3 + i]), sum_tokens(i)
    local ok = redis.call('ZCARD', qkey) == 0 and count < tonumber(ARGV[12 + i]) and (tcap <= 0 or sum <= 0 or sum + cost <= tcap)
    if ok and probe then
      local claim = redis.call('HGET', probes, ARGV[12 + n + i])
      if claim then
        local bar = string.find(claim, '|', 1, true)
        ok = not bar or (tonumber(string.sub(claim, bar + 1)) or 0) <= now
      end
    end
    if ok then
      redis.call('ZADD', KEYS[3 + i], now + lease, member)
      redis.call('PEXPIRE', KEYS[3 + i], 2 * lease)
      if probe then
        redis.call('HSET', probes, ARGV[12 + n + i], member .. '|' .. (now + lease))
        redis.call('PEXPIRE', probes, 86400000)
      end
      chosen = i - 1
      break
    end
  end
end
if chosen < 0 and ticket ~= '' then
  local wants = {}
  for i = 1, n do
    local score = ARGV[12 + 5 * n + i]
    if score ~= '' then
      wants[#wants + 1] = ARGV[12 + n + i] .. ':' .. ARGV[12 + i] .. ':' .. ARGV[12 + 2 * n + i] .. ':' .. score
    end
  end
  if #wants > 0 then
    local ttl = tonumber(ARGV[10])
    redis.call('HSET', tickets, ticket, ARGV[8] .. '|' .. member .. '|' .. (now + ttl) .. '|' .. cost .. '|' .. table.concat(wants, ','))
    redis.call('PEXPIRE', tickets, math.max(2 * ttl, 86400000))
    local place = now + tonumber(ARGV[9])
    queued = 1
    for i = 1, n do
      if ARGV[12 + 5 * n + i] ~= '' then
        redis.call('ZADD', KEYS[3 + n + i], place, ticket)
        redis.call('PEXPIRE', KEYS[3 + n + i], math.max(2 * ttl, 86400000))
      end
    end
    for i = 1, n do
      if chosen < 0 and ARGV[12 + 5 * n + i] ~= '' and serve(ctx, KEYS[3 + i], KEYS[3 + n + i], ARGV[12 + n + i], ticket) then
        chosen, queued = i - 1, 0
      end
    end
  end
end
local reply = {chosen, epoch}
for i = 1, n do
  reply[i + 2] = redis.call('ZCARD', KEYS[3 + i])
  reply[n + i + 2] = sum_tokens(i)
end
reply[2 * n + 3] = queued
return reply
`)

// releaseScript removes a batch of leases, gives back the half-open probes
// they held, hands each freed slot to the best ticket waiting for it (see
// queueLua), announces the slots no ticket took, and shares this replica's
// passive-health news (see HealthEvent), all in one round trip.
//
//	KEYS[1]      the pool's probe claims (hash: backend → member|expiry ms)
//	KEYS[2]      the pool's tickets
//	KEYS[2+i]    lease set of the i-th lease (i = 1..n)
//	KEYS[2+n+i]  queue of its backend
//	ARGV[1]      pub/sub channel of released slots
//	ARGV[2]      this replica's id (appended to each announcement)
//	ARGV[3]      encoded health events ("" for none)
//	ARGV[4]      prefix of the replicas' grant channels
//	ARGV[5]      lease length, ms (of granted slots)
//	ARGV[6]      "1" for assign mode
//	ARGV[7]      the assignment's age scale (AssignAging), ms
//	ARGV[7+i]    member of the i-th lease
//	ARGV[7+n+i]  backend name of the i-th lease
//
// Each backend that lost at least one lease and has no ticket left waiting
// for it is published once, as "<backend>\0<replica id>"; the health events as
// "\1<replica id>\0<events>". Reply: {leases removed, announcements}.
var releaseScript = redis.NewScript(queueLua + `
local n = (#KEYS - 2) / 2
local probes, tickets = KEYS[1], KEYS[2]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ctx = {tickets = tickets, now = now, lease = tonumber(ARGV[5]), prefix = ARGV[4], assign = ARGV[6] == '1', aging = math.max(tonumber(ARGV[7]) or 1, 1)}
local removed, published = 0, 0
local freed, order = {}, {}
for i = 1, n do
  local member, backend = ARGV[7 + i], ARGV[7 + n + i]
  if redis.call('ZREM', KEYS[2 + i], member) == 1 then
    removed = removed + 1
    if not freed[backend] then
      freed[backend] = i
      order[#order + 1] = backend
    end
  end
  local claim = redis.call('HGET', probes, backend)
  if claim and string.sub(claim, 1, #member + 1) == member .. '|' then
    redis.call('HDEL', probes, backend)
  end
end
for _, backend in ipairs(order) do
  local i = freed[backend]
  serve(ctx, KEYS[2 + i], KEYS[2 + n + i], backend, nil)
  if redis.call('ZCARD', KEYS[2 + n + i]) == 0 then
    redis.call('PUBLISH', ARGV[1], backend .. '\0' .. ARGV[2])
    published = published + 1
  end
end
if ARGV[3] ~= '' then
  redis.call('PUBLISH', ARGV[1], '\1' .. ARGV[2] .. '\0' .. ARGV[3])
  published = published + 1
end
return {removed, published}
`)

// renewScript extends one lease to a full lease from now, only if Redis still
// has it (ZADD XX): a renewal racing with the release of the same lease must
// never bring it back. A lease Redis lost is re-added by resync instead, which
// runs in order with releases.
//
//	KEYS[1]  lease set
//	ARGV[1]  lease length, ms
//	ARGV[2]  lease member
//
// Reply: 1 when extended, 0 when Redis no longer has the lease.
var renewScript = redis.NewScript(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[1])
if not redis.call('ZSCORE', KEYS[1], ARGV[2]) then
  return 0
end
redis.call('ZADD', KEYS[1], 'XX', now + lease, ARGV[2])
redis.call('PEXPIRE', KEYS[1], 2 * lease)
return 1
`)

// readdScript (re-)adds leases with a full lease from now, whether or not
// Redis still has them: after an outage or a data loss, this replica's requests
// that are still in flight must be counted by the fleet again, whatever the
// capacity says. It runs only on the background goroutine, in order with
// releases, so it cannot resurrect a released lease.
//
//	KEYS[i]     lease set of the i-th lease
//	ARGV[2i-1]  member of the i-th lease
//	ARGV[2i]    its lease length, ms
//
// Reply: how many leases Redis no longer had.
var readdScript = redis.NewScript(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local added = 0
for i = 1, #KEYS do
  local lease = tonumber(ARGV[2 * i])
  added = added + redis.call('ZADD', KEYS[i], now + lease, ARGV[2 * i - 1])
  redis.call('PEXPIRE', KEYS[i], 2 * lease)
end
return added
`)

// heartbeatScript registers this replica as alive, with whether all its live
// leases are in Redis, drops replicas that missed their heartbeats for a whole
// lease, reclaims expired leases of the known backends (announcing the freed
// slots, since no release will) and reports the pool's state.
//
//	KEYS[1]    epoch key
//	KEYS[2]    live replicas (sorted set)
//	KEYS[3]    replica info (hash)
//	KEYS[4]    known backends (set)
//	KEYS[5]    replica sync marks (hash)
//	KEYS[6]    the pool's tickets
//	KEYS[6+i]  lease set of the i-th known backend (i = 1..nb)
//	KEYS[6+nb+i] its queue
//	ARGV[1]    replica id
//	ARGV[2]    replica info (encoded)
//	ARGV[3]    lease length, ms
//	ARGV[4]    sync mark: the epoch under which every live lease of this
//	           replica is in Redis, "" when some may not be, "*" when it
//	           holds none (stored as the current epoch)
//	ARGV[5]    prefix of the epoch to create when Redis has none
//	ARGV[6]    pub/sub channel
//	ARGV[6+i]  name of the i-th known backend
//	ARGV[6+nb+i] "1" to add up its tokens in flight
//	ARGV[7+2nb] prefix of the replicas' grant channels
//	ARGV[8+2nb] "1" for assign mode
//	ARGV[9+2nb] the assignment's age scale (AssignAging), ms
//
// Room freed on a backend without a release (expired leases) is handed to
// the tickets waiting for it (see queueLua).
//
// Reply: {epoch, Redis time in ms, live replicas as {id, last beat ms, sync
// mark} triples flattened, count of each backend, ids of replicas found dead}.
var heartbeatScript = redis.NewScript(queueLua + `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[3])
local epoch = redis.call('GET', KEYS[1])
if not epoch then
  epoch = ARGV[5] .. '.' .. t[1] .. '.' .. t[2]
  redis.call('SET', KEYS[1], epoch, 'PX', 86400000)
else
  redis.call('PEXPIRE', KEYS[1], 86400000)
end
redis.call('ZADD', KEYS[2], now, ARGV[1])
redis.call('HSET', KEYS[3], ARGV[1], ARGV[2])
local mark = ARGV[4]
if mark == '*' then
  mark = epoch
end
redis.call('HSET', KEYS[5], ARGV[1], mark)
local dead = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', '(' .. (now - lease))
if #dead > 0 then
  redis.call('ZREM', KEYS[2], unpack(dead))
  redis.call('HDEL', KEYS[3], unpack(dead))
  redis.call('HDEL', KEYS[5], unpack(dead))
end
redis.call('PEXPIRE', KEYS[2], 10 * lease)
redis.call('PEXPIRE', KEYS[3], 10 * lease)
redis.call('PEXPIRE', KEYS[5], 10 * lease)
local beats = redis.call('ZRANGE', KEYS[2], 0, -1, 'WITHSCORES')
local live = {}
for i = 1, #beats, 2 do
  live[#live + 1] = beats[i]
  live[#live + 1] = tonumber(beats[i + 1])
  live[#live + 1] = redis.call('HGET', KEYS[5], beats[i]) or ''
end
local counts, sums = {}, {}
local nb = (#KEYS - 6) / 2
local ctx = {tickets = KEYS[6], now = now, lease = lease, prefix = ARGV[7 + 2 * nb], assign = ARGV[8 + 2 * nb] == '1', aging = math.max(tonumber(ARGV[9 + 2 * nb]) or 1, 1)}
for k = 1, nb do
  local key, backend = KEYS[6 + k], ARGV[6 + k]
  if redis.call('ZREMRANGEBYSCORE', key, '-inf', now) > 0 then
    -- no origin: every replica, this one included, wakes its waiters
    redis.call('PUBLISH', ARGV[6], backend .. '\0')
  end
  -- Room freed without a release (expired leases, a capacity raised)
  -- goes to the tickets waiting for it.
  if redis.call('EXISTS', KEYS[6 + nb + k]) == 1 then
    serve(ctx, key, KEYS[6 + nb + k], backend, nil)
  end
  counts[k] = redis.call('ZCARD', key)
  sums[k] = 0
  if ARGV[6 + nb + k] == '1' then
    for _, m in ipairs(redis.call('ZRANGE', key, 0, -1)) do
      local h = string.find(m, '#', 1, true)
      if h then
        sums[k] = sums[k] + (tonumber(string.sub(m, h + 1)) or 0)
      end
    end
  end
  redis.call('SADD', KEYS[4], backend)
end
if nb > 0 then
  redis.call('PEXPIRE', KEYS[4], 86400000)
end
return {epoch, now, live, counts, dead, sums, redis.call('HLEN', KEYS[6])}
`)

// replaceEpochScript gives the pool a new epoch when it still has the one the
// caller trusts: the caller found leases missing that it knows it holds, and
// every replica must treat that as a data loss.
//
//	KEYS[1]  epoch key
//	ARGV[1]  the epoch the caller trusts
//	ARGV[2]  prefix of the new epoch
//
// Reply: the epoch now in force (the new one, or whatever another replica set).
var replaceEpochScript = redis.NewScript(`
local t = redis.call('TIME')
local epoch = redis.call('GET', KEYS[1])
if not epoch or epoch == ARGV[1] then
  epoch = ARGV[2] .. '.' .. t[1] .. '.' .. t[2]
  redis.call('SET', KEYS[1], epoch, 'PX', 86400000)
end
return epoch
`)

// countScript returns the live lease count of each given lease set (expired
// leases are not counted, whether or not they were dropped yet).
var countScript = redis.NewScript(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local counts = {}
for i = 1, #KEYS do
  counts[i] = redis.call('ZCOUNT', KEYS[i], '(' .. now, '+inf')
end
return counts
`)

// loadScripts loads the scripts into Redis (every master of a cluster), so
// that the request path does not pay a NOSCRIPT round trip after Redis
// restarted. Failures are ignored: Run falls back to EVAL.
func (s *RedisStore) loadScripts() {
	ctx, cancel := context.WithTimeout(context.Background(), s.bgTimeout())
	defer cancel()
	for _, sc := range []*redis.Script{acquireScript, releaseScript, renewScript, readdScript, heartbeatScript} {
		if sc.Load(ctx, s.client).Err() != nil {
			return
		}
	}
}
