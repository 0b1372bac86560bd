package loadstate

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/modelrouter/modelrouter/internal/redistest"
)

// TestRedisLongOutageKeepsFleetAndShares: Redis is gone for longer than a
// lease, then comes back (empty) while two of three replicas still cannot
// reach it. The replica that is back first must neither take the others for
// dead (it heard nothing from anyone for a lease, but only because it could
// not read the registry) nor trust Redis's counts, which lack the leases the
// others hold locally: it keeps admitting by its share until the others are
// back and have re-added their leases.
func TestRedisLongOutageKeepsFleetAndShares(t *testing.T) {
	srv := redistest.Start(t)
	pool := newTestPool()
	const lease = time.Second
	opts := func(id string) RedisOptions {
		return RedisOptions{Pool: pool, ReplicaID: id, Lease: lease, Heartbeat: 100 * time.Millisecond, Timeout: 100 * time.Millisecond}
	}
	a := newTestStore(t, standaloneEnv(srv), opts("a"))
	pb, pc := redistest.NewProxy(t, srv.Addr), redistest.NewProxy(t, srv.Addr)
	b, c := proxiedStore(t, pb, opts("b")), proxiedStore(t, pc, opts("c"))
	stores := []*RedisStore{a, b, c}
	for _, s := range stores {
		waitFor(t, 10*time.Second, "three live replicas, counts trusted", func() bool {
			return s.LiveReplicas() == 3 && s.Mode() == ModeRedis
		})
	}
	x := Slot{Backend: "x", Capacity: 3}

	srv.Stop()
	stopped := time.Now()
	for _, s := range stores {
		waitFor(t, 10*time.Second, "local mode", func() bool {
			_, _ = s.Acquire(context.Background(), "probe", []Slot{{Backend: "unused", Capacity: 0}})
			return s.Mode() == ModeLocal
		})
	}
	// Longer than a lease without contact: every lease of the last contact
	// has expired, so each replica admits exactly its share (1 of 3) locally.
	waitFor(t, 10*time.Second, "an outage longer than a lease", func() bool { return time.Since(stopped) > lease*3/2 })
	var holding []held
	for i, s := range stores {
		ids := admitAll(t, s, fmt.Sprintf("s%d-", i), x)
		if len(ids) != 1 {
			t.Fatalf("replica %d admitted %d locally, want its share 1", i, len(ids))
		}
		holding = append(holding, held{s, ids[0], "x"})
	}
	defer renewInBackground(t, lease/4, holding)()

	pb.SetCut(true)
	pc.SetCut(true)
	srv.Restart()
	waitFor(t, 10*time.Second, "a to be back on redis", func() bool { return !a.down.Load() })
	if n := a.LiveReplicas(); n != 3 {
		t.Errorf("a counts %d live replicas right after the outage, want 3: the others only could not beat", n)
	}
	// Several heartbeats later, b and c are still cut off: a must still admit
	// by its share, whatever the (incomplete) counts in Redis say.
	beats := a.Stats().Heartbeats
	waitFor(t, 10*time.Second, "five more heartbeats of a", func() bool { return a.Stats().Heartbeats >= beats+5 })
	mustAcquire(t, a, "a-extra", []Slot{x}, -1)
	if m := a.Mode(); m != ModeLocal {
		t.Errorf("a's mode while the others have not resynced = %q, want %q", m, ModeLocal)
	}
	if n := a.LiveReplicas(); n != 3 {
		t.Errorf("a counts %d live replicas while the others are cut off for less than a lease of contact, want 3", n)
	}

	pb.SetCut(false)
	pc.SetCut(false)
	for _, s := range stores {
		waitFor(t, 15*time.Second, "every replica back and trusting redis", func() bool { return s.Mode() == ModeRedis })
	}
	waitFor(t, 5*time.Second, "every lease in redis", snapshotIs(a, map[string]int{"x": 3}))
	for _, s := range stores {
		mustAcquire(t, s, "late", []Slot{x}, -1)
	}
}

// TestRedisEpochNewOnEveryCreation: every key of the pool is deleted while
// replicas hold leases (as FLUSHALL, or a restart without persistence, would);
// the replica that made the first epoch recreates it on its next acquire. The
// new value must differ, so that every replica, the creator included, notices
// the loss and re-adds its leases, and none admits on top of them.
func TestRedisEpochNewOnEveryCreation(t *testing.T) {
	srv := redistest.Start(t)
	pool := newTestPool()
	// Heartbeats too rare to matter: the acquires below are the only calls.
	opts := func(id string) RedisOptions {
		return RedisOptions{Pool: pool, ReplicaID: id, Lease: 60 * time.Second, Heartbeat: 30 * time.Second}
	}
	a := newTestStore(t, standaloneEnv(srv), opts("a")) // creates the first epoch
	direct := srv.Client()
	ctx := context.Background()
	first, err := direct.Get(ctx, a.epochKey).Result()
	if err != nil {
		t.Fatal(err)
	}
	b := newTestStore(t, standaloneEnv(srv), opts("b"))
	x := Slot{Backend: "x", Capacity: 2}
	mustAcquire(t, a, "a1", []Slot{x}, 0)
	mustAcquire(t, a, "a2", []Slot{x}, 0)
	mustAcquire(t, b, "b-full", []Slot{x}, -1) // b's last contact: x full
	if a.Mode() != ModeRedis || b.Mode() != ModeRedis {
		t.Fatalf("modes %q, %q; want both trusting redis", a.Mode(), b.Mode())
	}

	keys, err := direct.Keys(ctx, "mr:{"+pool+"}:*").Result()
	if err != nil || len(keys) == 0 {
		t.Fatalf("pool keys: %v, %v", keys, err)
	}
	if err := direct.Del(ctx, keys...).Err(); err != nil {
		t.Fatal(err)
	}
	// a's acquire recreates the epoch: it must see a new one, and not
	// admit a third request on a backend of capacity 2 that holds two.
	mustAcquire(t, a, "a3", []Slot{x}, -1)
	second, err := direct.Get(ctx, a.epochKey).Result()
	if err != nil || second == first {
		t.Fatalf("epoch after the loss = %q (%v), before %q: want a new value", second, err, first)
	}
	if st := a.Stats(); st.DataLosses != 1 {
		t.Errorf("a: %d data losses seen, want 1", st.DataLosses)
	}
	waitFor(t, 10*time.Second, "a's leases re-added", snapshotIs(a, map[string]int{"x": 2}))
	// b learns it on its next acquire, and x is full by a's leases.
	mustAcquire(t, b, "b1", []Slot{x}, -1)
	if st := b.Stats(); st.DataLosses != 1 {
		t.Errorf("b: %d data losses seen, want 1", st.DataLosses)
	}
}

// TestRedisLostLeasesDetected: the lease keys are deleted (a careless DEL, or
// eviction) while the epoch key survives. The replica holding the leases must
// notice on its heartbeat that Redis has fewer than it holds, and every
// replica must treat it as a data loss, so that nobody admits on top of the
// leases that are still in flight.
func TestRedisLostLeasesDetected(t *testing.T) {
	srv := redistest.Start(t)
	pool := newTestPool()
	opts := func(id string) RedisOptions {
		return RedisOptions{Pool: pool, ReplicaID: id, Lease: 10 * time.Second, Heartbeat: 100 * time.Millisecond}
	}
	a, b := newTestStore(t, standaloneEnv(srv), opts("a")), newTestStore(t, standaloneEnv(srv), opts("b"))
	x := Slot{Backend: "x", Capacity: 2}
	mustAcquire(t, a, "a1", []Slot{x}, 0)
	mustAcquire(t, a, "a2", []Slot{x}, 0)
	mustAcquire(t, b, "b-full", []Slot{x}, -1)
	ctx := context.Background()
	direct := srv.Client()
	if err := direct.Del(ctx, a.keys.lease("x")).Err(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "a to notice its leases missing", func() bool { return a.Stats().LostLeases >= 1 })
	waitFor(t, 10*time.Second, "a's leases back in redis", snapshotIs(a, map[string]int{"x": 2}))
	mustAcquire(t, b, "b1", []Slot{x}, -1)
	for name, s := range map[string]*RedisStore{"a": a, "b": b} {
		if st := s.Stats(); st.DataLosses != 1 {
			t.Errorf("%s: %d data losses seen, want 1 (the lost leases, as a new epoch)", name, st.DataLosses)
		}
	}
	// No false alarm: leases renewed, released and taken while heartbeats
	// run do not look lost.
	losses := a.Stats().LostLeases
	stopRenew := renewInBackground(t, 50*time.Millisecond, []held{{a, "a1", "x"}, {a, "a2", "x"}})
	beats := a.Stats().Heartbeats
	for i := 0; a.Stats().Heartbeats < beats+10; i++ {
		id := fmt.Sprintf("r%d", i)
		if got, err := a.Acquire(ctx, id, []Slot{{Backend: "y", Capacity: 3}}); err == nil && got == 0 {
			mustRelease(t, a, id, "y")
		}
	}
	stopRenew()
	if st := a.Stats(); st.LostLeases != losses {
		t.Errorf("%d lost-lease alarms without any loss", st.LostLeases-losses)
	}
}
