package loadstate

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/modelrouter/modelrouter/engine"
	"github.com/modelrouter/modelrouter/internal/redistest"
)

func TestHealthEventsEncoding(t *testing.T) {
	events := []HealthEvent{
		{Backend: "a", Outcome: engine.OutcomeFailed},
		{Backend: "gpu-1.b_2", Outcome: engine.OutcomeRateLimited, RetryAfter: 7 * time.Second},
		{Backend: "c", Outcome: engine.OutcomeSuccess, Probe: true},
	}
	if got := decodeHealthEvents(encodeHealthEvents(events)); !slices.Equal(got, events) {
		t.Fatalf("round trip: %+v, want %+v", got, events)
	}
	if encodeHealthEvents(nil) != "" {
		t.Error("no events encode to something")
	}
	// What cannot be read is skipped, the rest kept.
	got := decodeHealthEvents("a,3,0,0;bad;b:c,3,0,0;d,99,0,0;e,1,0,-5;f,4,1,250,extra")
	want := []HealthEvent{{Backend: "a", Outcome: engine.OutcomeFailed}, {Backend: "f", Outcome: engine.OutcomeBroken, Probe: true, RetryAfter: 250 * time.Millisecond}}
	if !slices.Equal(got, want) {
		t.Fatalf("lenient decode: %+v, want %+v", got, want)
	}
}

// TestRedisHealthSharing: one replica's passive-health news reaches the
// others (not itself), in the release batch's round trip.
func TestRedisHealthSharing(t *testing.T) {
	srv := redistest.Start(t)
	env := standaloneEnv(srv)
	pool := newTestPool()
	opts := func(id string) RedisOptions {
		return RedisOptions{Pool: pool, ReplicaID: id, Heartbeat: 100 * time.Millisecond}
	}
	a, b := newTestStore(t, env, opts("a")), newTestStore(t, env, opts("b"))
	var mu sync.Mutex
	var atA, atB []HealthEvent
	a.SetHealthSink(func(ev HealthEvent) { mu.Lock(); atA = append(atA, ev); mu.Unlock() })
	b.SetHealthSink(func(ev HealthEvent) { mu.Lock(); atB = append(atB, ev); mu.Unlock() })
	waitFor(t, 5*time.Second, "redis mode", func() bool { return a.Mode() == ModeRedis && b.Mode() == ModeRedis })

	releasesBefore := a.Stats().Releases
	mustAcquire(t, a, "r1", []Slot{{Backend: "x", Capacity: 2}}, 0)
	ev := HealthEvent{Backend: "x", Outcome: engine.OutcomeRateLimited, RetryAfter: 3 * time.Second}
	a.ShareHealth(ev)
	mustRelease(t, a, "r1", "x")
	waitFor(t, 5*time.Second, "b to hear", func() bool { mu.Lock(); defer mu.Unlock(); return len(atB) == 1 })
	mu.Lock()
	if atB[0] != ev || len(atA) != 0 {
		t.Errorf("b heard %+v, a heard %+v; want b the event and a nothing", atB, atA)
	}
	mu.Unlock()
	if n := a.Stats().Releases - releasesBefore; n > 2 {
		t.Errorf("%d release round trips for one release and one event", n)
	}
	if b.Stats().HealthReceived != 1 {
		t.Errorf("b counted %d events", b.Stats().HealthReceived)
	}
}

// TestRedisProbeClaim: one half-open probe per backend at a time, across the
// fleet; a released probe frees the claim, a crashed replica's claim ends
// with its lease; requests that are not probes are not held back.
func TestRedisProbeClaim(t *testing.T) {
	srv := redistest.Start(t)
	env := standaloneEnv(srv)
	pool := newTestPool()
	const lease = time.Second
	opts := func(id string) RedisOptions {
		return RedisOptions{Pool: pool, ReplicaID: id, Lease: lease, Heartbeat: 100 * time.Millisecond}
	}
	a, b := newTestStore(t, env, opts("a")), newTestStore(t, env, opts("b"))
	probe := []Slot{{Backend: "x", Capacity: 4, Probe: true}}
	plain := []Slot{{Backend: "x", Capacity: 4}}
	mustAcquire(t, a, "p1", probe, 0)
	mustAcquire(t, b, "p2", probe, -1) // a holds the probe
	mustAcquire(t, b, "n1", plain, 0)  // not a probe: room is room
	mustRelease(t, a, "p1", "x")
	waitFor(t, 5*time.Second, "the claim freed by the release", func() bool {
		got, _ := b.Acquire(context.Background(), "p2", probe)
		return got == 0
	})
	// b dies holding the probe: its claim lasts only as long as its lease.
	b.abandon()
	c := newTestStore(t, env, opts("c"))
	mustAcquire(t, c, "p3", probe, -1)
	waitFor(t, lease+10*time.Second, "the dead replica's claim to expire", func() bool {
		got, _ := c.Acquire(context.Background(), "p3", probe)
		return got == 0
	})
}
