package loadstate

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/modelrouter/modelrouter/internal/redistest"
)

// runOverrideConformance checks one OverrideStore implementation, given two
// replicas of one pool (the same store twice for the memory store).
func runOverrideConformance(t *testing.T, a, b OverrideStore, waitSeen func(what string, cond func() bool)) {
	ctx := context.Background()
	if len(a.Overrides()) != 0 {
		t.Fatalf("a new pool has overrides: %v", a.Overrides())
	}
	v0 := a.OverridesVersion()

	// Drain, then a weight on top: the second update sees the first.
	if _, err := a.UpdateOverride(ctx, "x", func(o Override) (Override, error) { o.Drained = true; return o, nil }); err != nil {
		t.Fatal(err)
	}
	got, err := a.UpdateOverride(ctx, "x", func(o Override) (Override, error) {
		if !o.Drained {
			return o, fmt.Errorf("the update does not see the drain: %+v", o)
		}
		o.Weight, o.Capabilities = 2.5, map[string]float64{"coding": 0.9}
		return o, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if !got.Drained || got.Weight != 2.5 || got.Capabilities["coding"] != 0.9 {
		t.Fatalf("stored %+v", got)
	}
	if a.OverridesVersion() == v0 {
		t.Fatal("the version did not move with a change")
	}
	if o := a.Overrides()["x"]; !o.Drained || o.Weight != 2.5 {
		t.Fatalf("the writer's own view: %+v", o)
	}
	waitSeen("the other replica sees the override", func() bool {
		o := b.Overrides()["x"]
		return o.Drained && o.Weight == 2.5 && o.Capabilities["coding"] == 0.9
	})

	// An error from fn writes nothing.
	v1 := a.OverridesVersion()
	boom := errors.New("invalid")
	if _, err := a.UpdateOverride(ctx, "x", func(Override) (Override, error) { return Override{MaxInflight: 9}, boom }); !errors.Is(err, boom) {
		t.Fatalf("fn's error not returned: %v", err)
	}
	if a.OverridesVersion() != v1 || a.Overrides()["x"].MaxInflight != 0 {
		t.Fatal("a failed update changed something")
	}

	// Concurrent updates from both replicas are never lost.
	const n = 20
	var wg sync.WaitGroup
	for i := range n {
		s := a
		if i%2 == 1 {
			s = b
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := s.UpdateOverride(ctx, "y", func(o Override) (Override, error) { o.MaxInflight++; return o, nil }); err != nil {
				t.Errorf("update %d: %v", i, err)
			}
		}()
	}
	wg.Wait()
	waitSeen("every concurrent update counted", func() bool {
		return a.Overrides()["y"].MaxInflight == n && b.Overrides()["y"].MaxInflight == n
	})

	// A zero override removes the entry.
	if _, err := b.UpdateOverride(ctx, "x", func(Override) (Override, error) { return Override{}, nil }); err != nil {
		t.Fatal(err)
	}
	waitSeen("the removal reaches both", func() bool {
		_, inA := a.Overrides()["x"]
		_, inB := b.Overrides()["x"]
		return !inA && !inB
	})
}

func TestOverridesMemory(t *testing.T) {
	m := NewMemoryStore()
	runOverrideConformance(t, m, m, func(what string, cond func() bool) {
		if !cond() {
			t.Fatalf("%s: not at once", what)
		}
	})
}

func TestOverridesRedis(t *testing.T) {
	srv := redistest.Start(t)
	env := standaloneEnv(srv)
	pool := newTestPool()
	a := newTestStore(t, env, RedisOptions{Pool: pool, ReplicaID: "a", Heartbeat: 100 * time.Millisecond})
	b := newTestStore(t, env, RedisOptions{Pool: pool, ReplicaID: "b", Heartbeat: 100 * time.Millisecond})
	runOverrideConformance(t, a, b, func(what string, cond func() bool) {
		waitFor(t, 10*time.Second, what, cond)
	})

	// Overrides outlive the stores (a reload, a restart): a new replica
	// reads them when it starts, before any heartbeat.
	if _, err := a.UpdateOverride(context.Background(), "z", func(o Override) (Override, error) { o.Drained = true; return o, nil }); err != nil {
		t.Fatal(err)
	}
	c := newTestStore(t, env, RedisOptions{Pool: pool, ReplicaID: "c", Heartbeat: time.Hour, Lease: 2 * time.Hour})
	if !c.Overrides()["z"].Drained {
		t.Fatalf("a new replica does not see the drain at start: %v", c.Overrides())
	}

	// A value written by hand that is not an override is ignored, not fatal.
	if err := srv.Client().HSet(context.Background(), "mr:{"+pool+"}:overrides", "junk", "{not json").Err(); err != nil {
		t.Fatal(err)
	}
	if err := srv.Client().Incr(context.Background(), "mr:{"+pool+"}:overrides-version").Err(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the junk value read and skipped", func() bool {
		_, junk := a.Overrides()["junk"]
		return !junk && a.overridesAt.Load() == mustVersion(t, srv, pool)
	})
	if !a.Overrides()["z"].Drained {
		t.Fatal("a junk value hid the other overrides")
	}
}

func mustVersion(t *testing.T, srv *redistest.Server, pool string) int64 {
	v, err := srv.Client().Get(context.Background(), "mr:{"+pool+"}:overrides-version").Int64()
	if err != nil {
		t.Errorf("reading the version: %v", err)
	}
	return v
}
