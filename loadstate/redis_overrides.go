package loadstate

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
)

// Overrides live in one hash per pool (backend → JSON, see encodeOverride)
// and a version counter that every change increments. A replica reads the
// version with each heartbeat and the hash only when the version moved, so
// an operator's change reaches every replica within about a heartbeat, at the
// cost of one GET per heartbeat and none on the request path.

// setOverrideScript replaces one backend's override if it still holds what
// the caller read (compare and set), and bumps the version.
//
//	KEYS[1] overrides hash, KEYS[2] version
//	ARGV[1] backend, ARGV[2] expected value ("" for none), ARGV[3] new value ("" to delete)
//
// Returns {1, version} when written, {0, current value} when the value
// changed since the caller read it.
var setOverrideScript = redis.NewScript(`
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if not cur then cur = '' end
if cur ~= ARGV[2] then
	return {0, cur}
end
if ARGV[3] == '' then
	redis.call('HDEL', KEYS[1], ARGV[1])
else
	redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
end
return {1, redis.call('INCR', KEYS[2])}
`)

// maxOverrideRetries bounds the compare-and-set loop of UpdateOverride
// (the caller's context bounds its time): operators' changes are rare, so
// only a burst of concurrent writers of one backend gets anywhere near it.
const maxOverrideRetries = 200

// errOverrideContention: other writers kept changing the override.
var errOverrideContention = errors.New("the override kept changing under concurrent updates")

// Overrides implements OverrideStore.
func (s *RedisStore) Overrides() map[string]Override { return s.overrides.get() }

// OverridesVersion implements OverrideStore.
func (s *RedisStore) OverridesVersion() uint64 { return s.overrides.version.Load() }

// UpdateOverride implements OverrideStore: a compare-and-set on the
// backend's field in Redis, retried when another replica wrote in between.
// It needs Redis: while Redis is unreachable it fails (an operator's change
// must reach the whole fleet, not this replica alone).
func (s *RedisStore) UpdateOverride(ctx context.Context, backend string, fn func(Override) (Override, error)) (Override, error) {
	if s.closed.Load() {
		return Override{}, errStoreClosed
	}
	cctx, cancel := context.WithTimeout(ctx, s.bgTimeout())
	raw, err := s.client.HGet(cctx, s.keys.overrides(), backend).Result()
	cancel()
	if err != nil && !errors.Is(err, redis.Nil) {
		return Override{}, fmt.Errorf("reading the override of %s: %w", backend, err)
	}
	for attempt := range maxOverrideRetries {
		if attempt > 0 {
			// Another writer won the last round: step aside for a moment,
			// randomly, so that a burst of writers does not collide again.
			select {
			case <-ctx.Done():
				return Override{}, fmt.Errorf("writing the override of %s: %w", backend, ctx.Err())
			case <-time.After(time.Duration(rand.Int64N(int64(min(attempt, 20)) * int64(time.Millisecond)))):
			}
		}
		var cur Override
		if raw != "" {
			if cur, err = decodeOverride(raw); err != nil {
				cur = Override{} // unreadable: replaced by the new value
			}
		}
		next, err := fn(cur.clone())
		if err != nil {
			return Override{}, err
		}
		val := ""
		if !next.IsZero() {
			if val, err = encodeOverride(next); err != nil {
				return Override{}, err
			}
		} else {
			next = Override{}
		}
		cctx, cancel := context.WithTimeout(ctx, s.bgTimeout())
		res, err := setOverrideScript.Run(cctx, s.client, []string{s.keys.overrides(), s.keys.overridesVersion()}, backend, raw, val).Slice()
		cancel()
		if err != nil {
			return Override{}, fmt.Errorf("writing the override of %s: %w", backend, err)
		}
		if len(res) == 2 {
			if ok, _ := res[0].(int64); ok == 1 {
				// Apply it here at once; the others read it on their heartbeat.
				s.refreshOverrides(context.WithoutCancel(ctx), true)
				return next, nil
			}
			raw, _ = res[1].(string)
			continue
		}
		return Override{}, fmt.Errorf("writing the override of %s: unexpected reply %v", backend, res)
	}
	return Override{}, errOverrideContention
}

// refreshOverrides reads the overrides from Redis when their version moved
// since the last read (or always, with force). Called by the heartbeat; a
// failure leaves the known overrides in place until the next one.
func (s *RedisStore) refreshOverrides(ctx context.Context, force bool) {
	ctx, cancel := context.WithTimeout(ctx, s.bgTimeout())
	defer cancel()
	v, err := s.client.Get(ctx, s.keys.overridesVersion()).Int64()
	if err != nil && !errors.Is(err, redis.Nil) {
		return
	}
	if !force && s.overridesRead.Load() && v == s.overridesAt.Load() {
		return
	}
	all, err := s.client.HGetAll(ctx, s.keys.overrides()).Result()
	if err != nil {
		return
	}
	next := make(map[string]Override, len(all))
	for backend, raw := range all {
		o, err := decodeOverride(raw)
		if err != nil {
			if ce := s.opts.Logger.Check(zap.WarnLevel, "ignoring an override that does not decode"); ce != nil {
				ce.Write(zap.String("pool", s.opts.Pool), zap.String("backend", backend), zap.Error(err))
			}
			continue
		}
		if !o.IsZero() {
			next[backend] = o
		}
	}
	// The hash may be newer than v (a write between the two reads): the
	// next heartbeat then reads it again, which is harmless.
	s.overridesAt.Store(v)
	s.overridesRead.Store(true)
	s.overrides.set(next)
}

// Interface guards
var _ OverrideStore = (*RedisStore)(nil)
