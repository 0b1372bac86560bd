package loadstate

import (
	"context"
	"fmt"
	"sort"
	"time"
)

// Inflight implements Store, without I/O: the fleet-wide count at the last
// reply from Redis (adjusted by this replica's own acquires and releases since),
// or while Redis is down this replica's own count plus what the others held at
// the last contact.
func (s *RedisStore) Inflight(backend string) int {
	st := (*s.backends.Load())[backend]
	if st == nil {
		return 0
	}
	now := s.opts.Now()
	local := st.own.Load() + st.othersHeld(now, s.tun().Lease)
	if s.down.Load() {
		return int(local)
	}
	if !s.trusted() {
		return int(max(local, st.fleet.Load()))
	}
	return int(st.fleet.Load())
}

// Tokens implements Store, without I/O: the tokens in flight on backend
// fleet-wide at the last acquire reply (adjusted by this replica's own since),
// or while Redis is down this replica's own.
func (s *RedisStore) Tokens(backend string) int {
	st := (*s.backends.Load())[backend]
	if st == nil {
		return 0
	}
	if s.down.Load() {
		return int(st.ownTokens.Load())
	}
	return int(max(st.fleetTokens.Load(), st.ownTokens.Load()))
}

// Snapshot implements Store: live lease counts from Redis, of every backend
// any replica of the pool has used. While Redis is unusable it returns the
// local estimate with an error wrapping ErrUnavailable.
func (s *RedisStore) Snapshot(ctx context.Context) (map[string]int, error) {
	if s.down.Load() || s.closed.Load() {
		return s.localSnapshot(), fmt.Errorf("reading in-flight counts: %w", ErrUnavailable)
	}
	start := time.Now()
	cctx, cancel := context.WithTimeout(ctx, s.bgTimeout())
	defer cancel()
	counts, err := s.readCounts(cctx)
	if err != nil {
		if !callerEnded(ctx) {
			s.callFailed("snapshot", start, err)
		} else {
			s.stats.errors.Add(1)
		}
		return s.localSnapshot(), fmt.Errorf("reading in-flight counts: %w: %w", ErrUnavailable, err)
	}
	s.callSucceeded()
	s.stats.snapshots.Add(1)
	return counts, nil
}

func (s *RedisStore) readCounts(ctx context.Context) (map[string]int, error) {
	names, err := s.client.SMembers(ctx, s.keys.backends()).Result()
	if err != nil {
		return nil, err
	}
	seen := make(map[string]bool, len(names))
	for _, n := range names {
		seen[n] = true
	}
	for name := range *s.backends.Load() {
		seen[name] = true
	}
	names = names[:0]
	for n := range seen {
		names = append(names, n)
	}
	sort.Strings(names)
	out := make(map[string]int, len(names))
	if len(names) == 0 {
		return out, nil
	}
	keys := make([]string, len(names))
	for i, n := range names {
		keys[i] = s.keys.lease(n)
	}
	counts, err := countScript.Run(ctx, s.client, keys).Int64Slice()
	if err != nil {
		return nil, err
	}
	for i, n := range names {
		if i < len(counts) && counts[i] > 0 {
			out[n] = int(counts[i])
		}
	}
	return out, nil
}

func (s *RedisStore) localSnapshot() map[string]int {
	out := make(map[string]int)
	for name := range *s.backends.Load() {
		if n := s.Inflight(name); n > 0 {
			out[name] = n
		}
	}
	return out
}
