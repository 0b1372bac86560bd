package loadstate

import (
	"context"
	"testing"
	"time"

	"github.com/modelrouter/modelrouter/internal/redistest"
)

// TestRedisTuneAppliesLive: Tune changes a running store's timeout, lease,
// heartbeat and on-down mode without a new client and without touching the
// leases it holds; invalid values are refused and change nothing.
func TestRedisTuneAppliesLive(t *testing.T) {
	srv := redistest.Start(t)
	proxy := redistest.NewProxy(t, srv.Addr)
	// The client's own bound is a ceiling well above the timeouts below: the
	// store's per-call deadline is what applies.
	client := testClient(t, RedisConfig{URL: "redis://" + proxy.Addr, Timeout: 5 * time.Second})
	// Heartbeats rare at first: none falls into the slow replies below (three
	// failed rounds would open the breaker), and the tuned period shows.
	s, err := NewRedisStore(client, RedisOptions{Pool: newTestPool(), ReplicaID: "a", Lease: 10 * time.Second,
		Heartbeat: 5 * time.Second, Timeout: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	waitFor(t, 10*time.Second, "redis mode", func() bool { return s.Mode() == ModeRedis })
	ctx := context.Background()
	x := Slot{Backend: "x", Capacity: 5}
	mustAcquire(t, s, "held", []Slot{x}, 0)
	key := s.keys.lease("x")
	direct := srv.Client()

	if err := s.Tune(RedisTunables{Lease: time.Second, Heartbeat: time.Second}); err == nil {
		t.Fatal("Tune accepted a heartbeat not shorter than the lease")
	}
	if s.LeaseTTL() != 10*time.Second {
		t.Fatalf("a refused Tune changed the lease to %v", s.LeaseTTL())
	}

	// Replies 300ms late: over the timeout of 100ms, under one of 2s.
	proxy.SetReplyDelay(300 * time.Millisecond)
	short, cancel := context.WithTimeout(ctx, 150*time.Millisecond) // one attempt's worth of budget
	if _, err := s.Acquire(short, "slow", []Slot{x}); err == nil {
		t.Fatal("an acquire answered after 300ms succeeded under a 100ms timeout")
	}
	cancel()
	if err := s.Tune(RedisTunables{Lease: 3 * time.Second, Heartbeat: 200 * time.Millisecond, Timeout: 2 * time.Second, OnDown: FailClosed}); err != nil {
		t.Fatal(err)
	}
	calls := s.Stats().HotPathCalls
	mustAcquire(t, s, "tuned", []Slot{x}, 0)
	proxy.SetReplyDelay(0)
	if st := s.Stats(); st.HotPathCalls != calls+1 || st.Trips != 0 {
		t.Fatalf("the acquire after tuning the timeout to 2s took %d calls (want 1, no retry): %+v", st.HotPathCalls-calls, st)
	}

	// The lease applies to new slots; a held one keeps its longer length.
	if s.LeaseTTL() != 3*time.Second {
		t.Fatalf("LeaseTTL after Tune = %v", s.LeaseTTL())
	}
	if err := s.Renew(ctx, "held", "x"); err != nil {
		t.Fatal(err)
	}
	tm, err := direct.Time(ctx).Result()
	if err != nil {
		t.Fatal(err)
	}
	for id, atLeast := range map[string]time.Duration{"held": 9 * time.Second, "tuned": 2 * time.Second} {
		var member string
		s.mu.Lock()
		member = s.held[id].member
		s.mu.Unlock()
		score, err := direct.ZScore(ctx, key, member).Result()
		if err != nil {
			t.Fatalf("%s: %v", id, err)
		}
		if left := time.Duration(int64(score)-tm.UnixMilli()) * time.Millisecond; left < atLeast {
			t.Errorf("%s: lease left %v, want at least %v", id, left, atLeast)
		}
	}
	if s.Mode() != ModeRedis {
		t.Fatalf("mode %q", s.Mode())
	}
	// The new heartbeat period (200ms, was 5s) is in force.
	beats := s.Stats().Heartbeats
	waitFor(t, 4*time.Second, "heartbeats at the new period", func() bool { return s.Stats().Heartbeats >= beats+3 })
	if got := s.tun().OnDown; got != FailClosed {
		t.Fatalf("on-down mode after Tune = %q", got)
	}
}
