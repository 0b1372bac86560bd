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

// acquireScript takes a slot on the first candidate with room.
//
//	KEYS[1]    epoch key
//	KEYS[2..]  lease set of each candidate, in rank order
//	ARGV[1]    lease member
//	ARGV[2]    lease length, ms
//	ARGV[3]    epoch the caller trusts ("" when it has none yet)
//	ARGV[4]    prefix of the epoch to create when Redis has none
//	ARGV[5]    pub/sub channel
//	ARGV[5+i]  capacity of the i-th candidate
//	ARGV[5+n+i] name of the i-th candidate (for announcements)
//	ARGV[5+2n+i] token capacity of the i-th candidate (0: none)
//	ARGV[5+3n+i] "1" when the i-th candidate may only be taken as its
//	           half-open breaker's probe
//	KEYS[n+2]  the pool's probe claims (hash: backend → member|expiry ms)
//
// A probe candidate is taken only if no live claim on it exists, and taking
// it claims it (the release of the lease gives the claim back; a crashed
// replica's claim expires with its lease): one probe per backend at a time,
// fleet-wide.
//
// It drops expired leases from every candidate (announcing the freed slots:
// rare, as it takes a dead replica or a leak), returns the candidate already
// holding this member if any, with its lease extended to a full one (a retry
// of an attempt whose reply was lost: idempotent), else adds the member to the
// first candidate whose live lease count is below its capacity and, with a
// token capacity, whose live leases' tokens leave room for the member's (see
// leaseMember: a member ending in "#<tokens>" carries them; a request alone on
// a backend always fits). Reply: {chosen index (0-based; -1 = none has room),
// epoch, count of each candidate, tokens in flight on each candidate (0
// without a token capacity)} or {-2, epoch} when the epoch differs from the
// trusted one (nothing taken).
var acquireScript = redis.NewScript(`
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
local function tokens(m)
  local h = string.find(m, '#', 1, true)
  if h then
    return tonumber(string.sub(m, h + 1)) or 0
  end
  return 0
end
local cost = tokens(member)
local n = #KEYS - 2
local probes = KEYS[n + 2]
local counts, sums = {}, {}
local chosen = -1
for i = 1, n do
  local key = KEYS[i + 1]
  if redis.call('ZREMRANGEBYSCORE', key, '-inf', now) > 0 then
    redis.call('PUBLISH', ARGV[5], ARGV[5 + n + i] .. '\0')
  end
  if chosen < 0 and redis.call('ZSCORE', key, member) then
    chosen = i - 1
    redis.call('ZADD', key, 'XX', now + lease, member)
    redis.call('PEXPIRE', key, 2 * lease)
  end
  counts[i] = redis.call('ZCARD', key)
  sums[i] = 0
  if tonumber(ARGV[5 + 2 * n + i]) > 0 then
    for _, m in ipairs(redis.call('ZRANGE', key, 0, -1)) do
      sums[i] = sums[i] + tokens(m)
    end
  end
end
if chosen < 0 then
  for i = 1, n do
    local tcap = tonumber(ARGV[5 + 2 * n + i])
    local probe = ARGV[5 + 3 * n + i] == '1'
    local ok = counts[i] < tonumber(ARGV[5 + i]) and (tcap <= 0 or sums[i] <= 0 or sums[i] + cost <= tcap)
    if ok and probe then
      local claim = redis.call('HGET', probes, ARGV[5 + n + i])
      if claim then
        local bar = string.find(claim, '|', 1, true)
        ok = not bar or (tonumber(string.sub(claim, bar + 1)) or 0) <= now
      end
    end
    if ok then
      redis.call('ZADD', KEYS[i + 1], now + lease, member)
      redis.call('PEXPIRE', KEYS[i + 1], 2 * lease)
      counts[i] = counts[i] + 1
      if tcap > 0 then
        sums[i] = sums[i] + cost
      end
      if probe then
        redis.call('HSET', probes, ARGV[5 + n + i], member .. '|' .. (now + lease))
        redis.call('PEXPIRE', probes, 86400000)
      end
      chosen = i - 1
      break
    end
  end
end
local reply = {chosen, epoch}
for i = 1, n do
  reply[i + 2] = counts[i]
  reply[n + i + 2] = sums[i]
end
return reply
`)

// releaseScript removes a batch of leases, gives back the half-open probes
// they held, announces freed slots, and shares this replica's passive-health
// news (see HealthEvent) in the same round trip.
//
//	KEYS[i]     lease set of the i-th lease (i = 1..n)
//	KEYS[n+1]   the pool's probe claims (hash: backend → member|expiry ms)
//	ARGV[1]     pub/sub channel
//	ARGV[2]     this replica's id (appended to each announcement)
//	ARGV[3]     encoded health events ("" for none)
//	ARGV[3+i]   member of the i-th lease
//	ARGV[3+n+i] backend name of the i-th lease
//
// Each backend that lost at least one lease is published once, as
// "<backend>\0<replica id>"; the health events as "\1<replica id>\0<events>".
// Reply: {leases removed, announcements}.
var releaseScript = redis.NewScript(`
local n = #KEYS - 1
local probes = KEYS[n + 1]
local removed, published = 0, 0
local freed = {}
for i = 1, n do
  local member, backend = ARGV[3 + i], ARGV[3 + n + i]
  if redis.call('ZREM', KEYS[i], member) == 1 then
    removed = removed + 1
    freed[backend] = true
  end
  local claim = redis.call('HGET', probes, backend)
  if claim and string.sub(claim, 1, #member + 1) == member .. '|' then
    redis.call('HDEL', probes, backend)
  end
end
for backend in pairs(freed) do
  redis.call('PUBLISH', ARGV[1], backend .. '\0' .. ARGV[2])
  published = published + 1
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
//	KEYS[5+i]  lease set of the i-th known backend
//	ARGV[1]    replica id
//	ARGV[2]    replica info (encoded)
//	ARGV[3]    lease length, ms
//	ARGV[4]    sync mark: the epoch under which every live lease of this
//	           replica is in Redis, "" when some may not be, "*" when it
//	           holds none (stored as the current epoch)
//	ARGV[5]    prefix of the epoch to create when Redis has none
//	ARGV[6]    pub/sub channel
//	ARGV[6+i]  name of the i-th known backend
//
// Reply: {epoch, Redis time in ms, live replicas as {id, last beat ms, sync
// mark} triples flattened, count of each backend, ids of replicas found dead}.
var heartbeatScript = redis.NewScript(`
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
local nb = #KEYS - 5
for i = 6, #KEYS do
  local backend = ARGV[1 + i]
  if redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now) > 0 then
    -- no origin: every replica, this one included, wakes its waiters
    redis.call('PUBLISH', ARGV[6], backend .. '\0')
  end
  counts[i - 5] = redis.call('ZCARD', KEYS[i])
  sums[i - 5] = 0
  if ARGV[1 + i + nb] == '1' then
    for _, m in ipairs(redis.call('ZRANGE', KEYS[i], 0, -1)) do
      local h = string.find(m, '#', 1, true)
      if h then
        sums[i - 5] = sums[i - 5] + (tonumber(string.sub(m, h + 1)) or 0)
      end
    end
  end
  redis.call('SADD', KEYS[4], backend)
end
if #KEYS > 5 then
  redis.call('PEXPIRE', KEYS[4], 86400000)
end
return {epoch, now, live, counts, dead, sums}
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
