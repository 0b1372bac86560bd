package loadstate

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/modelrouter/modelrouter/engine"
	"github.com/modelrouter/modelrouter/internal/redistest"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

func mustAcquire(t *testing.T, s Store, id string, cands []Slot, want int) {
	t.Helper()
	got, err := s.Acquire(context.Background(), id, cands)
	if err != nil || got != want {
		t.Fatalf("acquire %s = %d, %v; want %d", id, got, err, want)
	}
}

// admitAll acquires on one backend until refused and returns the ids taken.
func admitAll(t *testing.T, s Store, prefix string, slot Slot) []string {
	t.Helper()
	var ids []string
	for i := 0; i <= slot.Capacity; i++ {
		id := fmt.Sprintf("%s%d", prefix, i)
		got, err := s.Acquire(context.Background(), id, []Slot{slot})
		if err != nil {
			t.Fatalf("acquire %s: %v", id, err)
		}
		if got < 0 {
			return ids
		}
		ids = append(ids, id)
	}
	t.Fatalf("%s admitted more than the capacity %d of %s", prefix, slot.Capacity, slot.Backend)
	return nil
}

func snapshotIs(s Store, want map[string]int) func() bool {
	return func() bool {
		snap, err := s.Snapshot(context.Background())
		if err != nil || len(snap) != len(want) {
			return false
		}
		for k, v := range want {
			if snap[k] != v {
				return false
			}
		}
		return true
	}
}

type held struct {
	s           Store
	id, backend string
}

// renewInBackground renews the given leases every interval until the returned
// function is called (leases not held are skipped by Renew itself).
func renewInBackground(t *testing.T, every time.Duration, leases []held) (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			for _, h := range leases {
				_ = h.s.Renew(context.Background(), h.id, h.backend)
			}
			select {
			case <-done:
				return
			case <-time.After(every):
			}
		}
	}()
	var once sync.Once
	return func() { once.Do(func() { close(done); wg.Wait() }) }
}

func TestKeyPart(t *testing.T) {
	for _, name := range []string{"default", "gpu-a.1_x", strings.Repeat("a", 64)} {
		if got := keyPart(name); got != name {
			t.Errorf("keyPart(%q) = %q, want it unchanged", name, got)
		}
	}
	for _, name := range []string{"", "a:b", "{pool}", "a b", "é", strings.Repeat("a", 65), "x\x00y"} {
		got := keyPart(name)
		if !strings.HasPrefix(got, "~") || len(got) != 25 || strings.ContainsAny(got, ":{} \x00") {
			t.Errorf("keyPart(%q) = %q, want a hash", name, got)
		}
	}
	if keyPart("a:b") == keyPart("a:c") {
		t.Error("different names hash alike")
	}
	k := newKeyspace("mr", "default")
	if got, want := k.lease("gpu-1"), "mr:{default}:lease:gpu-1"; got != want {
		t.Errorf("lease key = %q, want %q", got, want)
	}
	// A hostile pool name cannot move keys out of the hash tag.
	if got := newKeyspace("mr", "x}{y").lease("b"); strings.Count(got, "{") != 1 || strings.Count(got, "}") != 1 {
		t.Errorf("escaped key %q has extra braces", got)
	}
}

func TestRedisKeyLayout(t *testing.T) {
	srv := redistest.Start(t)
	pool := newTestPool()
	s := newTestStore(t, standaloneEnv(srv), RedisOptions{Pool: pool, Sketches: NewSketches(0, 0, nil)})
	s.opts.Sketches.Record("gpu-1", EndToEnd, 10*time.Millisecond)
	ctx := context.Background()
	odd := "odd:name{x}"
	for i := range 200 { // many requests, distinct ids: the key count must not grow with them
		mustAcquire(t, s, fmt.Sprintf("req-%d", i), []Slot{{Backend: "gpu-1", Capacity: 1000}, {Backend: odd, Capacity: 1}}, 0)
	}
	mustAcquire(t, s, "odd", []Slot{{Backend: odd, Capacity: 1}}, 0)
	waitFor(t, 5*time.Second, "a heartbeat with sketches", func() bool { return s.Stats().SketchSyncs > 0 })
	keys, err := srv.Client().Keys(ctx, "*").Result()
	if err != nil {
		t.Fatal(err)
	}
	base := "mr:{" + pool + "}:"
	want := map[string]bool{
		base + "lease:gpu-1": true, base + "lease:" + keyPart(odd): true, base + "epoch": true,
		base + "replicas": true, base + "replica-info": true, base + "replica-sync": true, base + "backends": true,
		base + "sketch:gpu-1:latency": true,
	}
	for _, k := range keys {
		if !want[k] {
			t.Errorf("unexpected key %q", k)
		}
		delete(want, k)
	}
	for k := range want {
		t.Errorf("missing key %q", k)
	}
	t.Logf("keys after 201 requests: %v", keys)
}

func TestRedisLeaseExpiryReclaimsDeadReplica(t *testing.T) {
	srv := redistest.Start(t)
	env := standaloneEnv(srv)
	pool := newTestPool()
	const lease = 1500 * time.Millisecond
	opts := func(id string) RedisOptions {
		return RedisOptions{Pool: pool, ReplicaID: id, Lease: lease, Heartbeat: 100 * time.Millisecond}
	}
	a := newTestStore(t, env, opts("a"))
	b := newTestStore(t, env, opts("b"))
	x := Slot{Backend: "x", Capacity: 3}
	held := admitAll(t, a, "a", x)
	if len(held) != 3 {
		t.Fatalf("a took %d slots, want 3", len(held))
	}
	mustAcquire(t, b, "b0", []Slot{x}, -1)
	woke := make(chan string, 16)
	defer b.Watch(func(backend string) { woke <- backend })()
	waitFor(t, 5*time.Second, "two live replicas", func() bool { return b.LiveReplicas() == 2 })

	a.abandon() // as kill -9: no release, no deregistration, no more heartbeats
	killed := time.Now()
	waitFor(t, lease+10*time.Second, "b to get a's slots back", func() bool {
		got, _ := b.Acquire(context.Background(), "b0", []Slot{x})
		return got == 0
	})
	took := time.Since(killed)
	t.Logf("a dead replica's slots came back after %v (lease %v)", took.Round(time.Millisecond), lease)
	if took < lease/3 {
		t.Fatalf("slots came back after %v, well before the lease %v expired", took, lease)
	}
	expectWake(t, woke, "x", "the surviving replica")
	// a took its slots one after the other, so they come back one after
	// the other.
	for _, id := range []string{"b1", "b2"} {
		waitFor(t, lease+10*time.Second, "b to get another of a's slots", func() bool {
			got, _ := b.Acquire(context.Background(), id, []Slot{x})
			return got == 0
		})
	}
	mustAcquire(t, b, "b3", []Slot{x}, -1)
	waitFor(t, lease+10*time.Second, "the dead replica to leave the registry", func() bool { return b.LiveReplicas() == 1 })
}

func TestRedisRestartEmptyResyncs(t *testing.T) {
	srv := redistest.Start(t)
	env := standaloneEnv(srv)
	pool := newTestPool()
	const lease = 4 * time.Second
	opts := func(id string) RedisOptions {
		return RedisOptions{Pool: pool, ReplicaID: id, Lease: lease, Heartbeat: 100 * time.Millisecond, Timeout: time.Second}
	}
	a := newTestStore(t, env, opts("a"))
	b := newTestStore(t, env, opts("b"))
	x := Slot{Backend: "x", Capacity: 4}
	mustAcquire(t, a, "a1", []Slot{x}, 0)
	mustAcquire(t, a, "a2", []Slot{x}, 0)
	mustAcquire(t, b, "b1", []Slot{x}, 0)
	// The requests outlive the lease, so they renew, as long streams do.
	renewing := renewInBackground(t, lease/4, []held{{a, "a1", "x"}, {a, "a2", "x"}, {b, "b1", "x"}, {b, "b2", "x"}})
	defer renewing()
	waitFor(t, 5*time.Second, "two live replicas on both", func() bool { return a.LiveReplicas() == 2 && b.LiveReplicas() == 2 })
	// Both have seen the counts since a's acquires.
	waitFor(t, 5*time.Second, "fresh counts", func() bool { return a.Inflight("x") == 3 && b.Inflight("x") == 3 })

	srv.Stop() // SHUTDOWN NOSAVE: everything in Redis is gone
	for i := range 20 {
		// Requests keep being answered, without errors, while Redis is away.
		if _, err := a.Acquire(context.Background(), fmt.Sprintf("down%d", i), []Slot{{Backend: "other", Capacity: 0}}); err != nil {
			t.Fatalf("acquire while redis is down: %v", err)
		}
	}
	srv.Restart()

	waitFor(t, 10*time.Second, "both replicas to notice the data loss", func() bool {
		return a.Stats().DataLosses >= 1 && b.Stats().DataLosses >= 1
	})
	// Counts not trusted yet: admission by local share (2 each), counting what
	// the other replica held before the restart.
	for _, s := range []*RedisStore{a, b} {
		if m := s.Mode(); m != ModeLocal {
			t.Fatalf("mode right after the data loss = %q, want %q", m, ModeLocal)
		}
	}
	mustAcquire(t, a, "a3", []Slot{x}, -1) // a holds its share already
	mustAcquire(t, b, "b2", []Slot{x}, 0)  // b has one more
	mustAcquire(t, b, "b3", []Slot{x}, -1)
	waitFor(t, 10*time.Second, "the live leases re-added", snapshotIs(a, map[string]int{"x": 4}))

	waitFor(t, lease+10*time.Second, "redis trusted again", func() bool {
		return a.Mode() == ModeRedis && b.Mode() == ModeRedis
	})
	mustAcquire(t, a, "a3", []Slot{x}, -1) // full, now by Redis's count
	for _, r := range []struct {
		s  Store
		id string
	}{{a, "a1"}, {a, "a2"}, {b, "b1"}, {b, "b2"}} {
		mustRelease(t, r.s, r.id, "x")
	}
	waitFor(t, 5*time.Second, "everything released", snapshotIs(b, map[string]int{}))
	if st := a.Stats(); st.ResyncedLeases < 2 {
		t.Fatalf("a re-added %d leases, want its 2", st.ResyncedLeases)
	}
}

func TestRedisPauseServesLocalShares(t *testing.T) {
	srv := redistest.Start(t)
	env := standaloneEnv(srv)
	pool := newTestPool()
	const timeout = 100 * time.Millisecond
	logs, observed := observer.New(zapcore.InfoLevel)
	opts := func(id string, log *zap.Logger) RedisOptions {
		return RedisOptions{Pool: pool, ReplicaID: id, Lease: 10 * time.Second, Heartbeat: 200 * time.Millisecond,
			Timeout: timeout, Logger: log}
	}
	a := newTestStore(t, env, opts("a", zap.New(logs)))
	b := newTestStore(t, env, opts("b", nil))
	x, y := Slot{Backend: "x", Capacity: 4}, Slot{Backend: "y", Capacity: 5}
	for _, s := range []Store{a, b} {
		mustAcquire(t, s, "warm", []Slot{x, y}, 0)
		mustRelease(t, s, "warm", "x")
	}
	waitFor(t, 5*time.Second, "two live replicas on both", func() bool { return a.LiveReplicas() == 2 && b.LiveReplicas() == 2 })
	waitFor(t, 5*time.Second, "warm-up released", snapshotIs(a, map[string]int{}))
	waitFor(t, 5*time.Second, "counts seen as zero", func() bool { return a.Inflight("x") == 0 && b.Inflight("x") == 0 })

	over := srv.PauseWatch(6 * time.Second)
	start := time.Now()
	got, err := a.Acquire(context.Background(), "first", []Slot{x})
	t.Logf("first acquire during CLIENT PAUSE returned after %v (timeout %v)", time.Since(start).Round(time.Millisecond), timeout)
	if err != nil || got != 0 {
		t.Fatalf("first acquire during the pause = %d, %v", got, err)
	}
	mustRelease(t, a, "first", "x")

	var slowest time.Duration
	admitted := map[string]int{}
	var holding []held
	for _, r := range []struct {
		name string
		s    Store
	}{{"a", a}, {"b", b}} {
		for _, slot := range []Slot{x, y} {
			t0 := time.Now()
			ids := admitAll(t, r.s, r.name+slot.Backend, slot)
			slowest = max(slowest, time.Since(t0)/time.Duration(len(ids)+1))
			admitted[r.name+"/"+slot.Backend] = len(ids)
			for _, id := range ids {
				holding = append(holding, held{r.s, id, slot.Backend})
			}
		}
	}
	select {
	case <-over:
		t.Fatal("the local-mode requests ended after the pause: they waited on the paused Redis")
	default:
	}
	t.Logf("local shares during the pause: %v; slowest average acquire %v", admitted, slowest)
	if admitted["a/x"] != 2 || admitted["b/x"] != 2 {
		t.Errorf("x (capacity 4, 2 replicas): shares %d and %d, want 2 and 2", admitted["a/x"], admitted["b/x"])
	}
	if sum := admitted["a/y"] + admitted["b/y"]; sum != 5 || min(admitted["a/y"], admitted["b/y"]) != 2 {
		t.Errorf("y (capacity 5, 2 replicas): shares %d and %d, want 3 and 2", admitted["a/y"], admitted["b/y"])
	}
	if a.Mode() != ModeLocal || b.Mode() != ModeLocal {
		t.Errorf("modes during the pause: %q, %q; want local", a.Mode(), b.Mode())
	}

	<-over
	waitFor(t, 15*time.Second, "both back on redis", func() bool { return a.Mode() == ModeRedis && b.Mode() == ModeRedis })
	waitFor(t, 5*time.Second, "local-mode leases re-added", snapshotIs(a, map[string]int{"x": 4, "y": 5}))
	mustAcquire(t, a, "after", []Slot{x, y}, -1)
	for _, h := range holding {
		mustRelease(t, h.s, h.id, h.backend)
	}
	waitFor(t, 5*time.Second, "everything released", snapshotIs(b, map[string]int{}))

	warnings := observed.FilterLevelExact(zapcore.WarnLevel).Len()
	if warnings != 1 {
		t.Errorf("%d warnings logged for one outage, want 1: %v", warnings, observed.All())
	}
	if observed.FilterMessageSnippet("reachable again").Len() != 1 {
		t.Errorf("recovery not logged once: %v", observed.All())
	}
	st := a.Stats()
	t.Logf("a: %+v", st)
	if st.Trips < 1 || st.LocalDecisions < 3 {
		t.Errorf("stats do not show the outage: %+v", st)
	}
}

func TestRedisFailClosedAndOpen(t *testing.T) {
	srv := redistest.Start(t)
	env := standaloneEnv(srv)
	pool := newTestPool()
	opts := func(id string, mode OnDown) RedisOptions {
		return RedisOptions{Pool: pool, ReplicaID: id, Lease: 10 * time.Second, Heartbeat: 200 * time.Millisecond,
			Timeout: 100 * time.Millisecond, OnDown: mode}
	}
	closed := newTestStore(t, env, opts("closed", FailClosed))
	open := newTestStore(t, env, opts("open", FailOpen))
	x := Slot{Backend: "x", Capacity: 3}
	mustAcquire(t, closed, "held", []Slot{x}, 0)
	mustRelease(t, closed, "held", "x")
	mustAcquire(t, closed, "held", []Slot{x}, 0)
	mustAcquire(t, open, "warm", []Slot{{Backend: "z", Capacity: 1}}, 0)
	waitFor(t, 5*time.Second, "two live replicas", func() bool { return open.LiveReplicas() == 2 && closed.LiveReplicas() == 2 })

	over := srv.PauseWatch(5 * time.Second)
	mustAcquire(t, closed, "c1", []Slot{x}, -1)
	if closed.Mode() != ModeClosed {
		t.Errorf("fail_closed mode = %q", closed.Mode())
	}
	mustRelease(t, closed, "held", "x") // releases still work locally
	mustAcquire(t, closed, "c2", []Slot{x}, -1)

	// fail_open: the full capacity on this replica alone, although 2 replicas
	// are alive and the other (closed) holds one.
	ids := admitAll(t, open, "o", Slot{Backend: "y", Capacity: 3})
	if len(ids) != 3 {
		t.Errorf("fail_open admitted %d of capacity 3", len(ids))
	}
	if open.Mode() != ModeOpen {
		t.Errorf("fail_open mode = %q", open.Mode())
	}
	select {
	case <-over:
		t.Fatal("the requests ended after the pause: they waited on the paused Redis")
	default:
	}
	<-over
	waitFor(t, 15*time.Second, "back on redis", func() bool { return closed.Mode() == ModeRedis && open.Mode() == ModeRedis })
	waitFor(t, 5*time.Second, "fail_open leases re-added", snapshotIs(open, map[string]int{"y": 3, "z": 1}))
}

func TestRedisReplicaRegistry(t *testing.T) {
	srv := redistest.Start(t)
	env := standaloneEnv(srv)
	pool := newTestPool()
	const lease = 1500 * time.Millisecond
	opts := func(id, addr string) RedisOptions {
		return RedisOptions{Pool: pool, ReplicaID: id, ReplicaAddr: addr, Version: "v1.2.3", Lease: lease, Heartbeat: 100 * time.Millisecond}
	}
	redisNow := func() time.Time {
		tm, err := srv.Client().Time(context.Background()).Result()
		if err != nil {
			t.Fatal(err)
		}
		return tm
	}
	registered := redisNow().Truncate(time.Millisecond)
	a := newTestStore(t, env, opts("a", "10.0.0.1:443"))
	b := newTestStore(t, env, opts("b", "10.0.0.2:443"))
	c := newTestStore(t, env, opts("c", "10.0.0.3:443"))
	waitFor(t, 5*time.Second, "three live replicas", func() bool { return a.LiveReplicas() == 3 })
	reps, err := a.Replicas(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	read := redisNow()
	if len(reps) != 3 {
		t.Fatalf("replicas = %+v", reps)
	}
	for i, r := range reps {
		wantID := []string{"a", "b", "c"}[i]
		if r.ID != wantID || r.Addr != fmt.Sprintf("10.0.0.%d:443", i+1) || r.Version != "v1.2.3" || r.Self != (i == 0) {
			t.Errorf("replica %d = %+v", i, r)
		}
		if r.LastBeat.Before(registered) || r.LastBeat.After(read) {
			t.Errorf("replica %s last beat at %v, not between its registration %v and the read %v (Redis time)", r.ID, r.LastBeat, registered, read)
		}
	}
	_ = b.Close() // a clean shutdown leaves the registry at once
	reps, _ = a.Replicas(context.Background())
	if len(reps) != 2 || reps[1].ID != "c" {
		t.Fatalf("after closing b: %+v", reps)
	}
	c.abandon() // a dead one after its lease
	waitFor(t, lease+10*time.Second, "c to be dropped", func() bool {
		reps, err := a.Replicas(context.Background())
		return err == nil && len(reps) == 1 && a.LiveReplicas() == 1
	})
}

func TestRedisSketchSharing(t *testing.T) {
	srv := redistest.Start(t)
	env := standaloneEnv(srv)
	pool := newTestPool()
	skA, skB := NewSketches(time.Minute, 6, nil), NewSketches(time.Minute, 6, nil)
	for range 100 {
		skA.Record("x", EndToEnd, 100*time.Millisecond)
		skB.Record("x", EndToEnd, 300*time.Millisecond)
	}
	skA.Record("x", TTFT, 20*time.Millisecond)
	opts := func(id string, sk *Sketches) RedisOptions {
		return RedisOptions{Pool: pool, ReplicaID: id, Heartbeat: 100 * time.Millisecond, Sketches: sk}
	}
	newTestStore(t, env, opts("a", skA))
	newTestStore(t, env, opts("b", skB))
	waitFor(t, 10*time.Second, "each replica to see the other's latencies", func() bool {
		return skA.Count("x", EndToEnd) == 200 && skB.Count("x", EndToEnd) == 200 && skB.Count("x", TTFT) == 1
	})
	for name, sk := range map[string]*Sketches{"a": skA, "b": skB} {
		p25, p90 := sk.Quantile("x", EndToEnd, 0.25), sk.Quantile("x", EndToEnd, 0.9)
		if p25 < 95*time.Millisecond || p25 > 105*time.Millisecond || p90 < 290*time.Millisecond || p90 > 310*time.Millisecond {
			t.Errorf("%s: fleet-wide p25 %v, p90 %v; want about 100ms and 300ms", name, p25, p90)
		}
	}
}

// TestRedisLearnerSharing: each replica's learner fits the fleet's
// observations: one replica saw only failures of a backend, the other only
// successes; both end up with the fleet's error rate and latency model.
func TestRedisLearnerSharing(t *testing.T) {
	srv := redistest.Start(t)
	env := standaloneEnv(srv)
	pool := newTestPool()
	lrA, lrB := NewLearner(time.Minute, 6, nil), NewLearner(time.Minute, 6, nil)
	for i := range 40 {
		lrA.Record(LearnSample{Backend: "x", Model: "m", Outcome: engine.OutcomeFailed, Total: time.Millisecond})
		out := 10 + i
		lrB.Record(LearnSample{Backend: "x", Model: "m", Outcome: engine.OutcomeSuccess, Prompt: 100 * (i * 7 % 11), Output: out,
			Total: 20*time.Millisecond + time.Duration(out-1)*5*time.Millisecond})
	}
	opts := func(id string, lr *Learner) RedisOptions {
		return RedisOptions{Pool: pool, ReplicaID: id, Heartbeat: 100 * time.Millisecond, Learner: lr}
	}
	newTestStore(t, env, opts("a", lrA))
	newTestStore(t, env, opts("b", lrB))
	waitFor(t, 10*time.Second, "each replica to see the other's observations", func() bool {
		return lrA.Backend("x", "m").Attempts == 80 && lrB.Backend("x", "m").Attempts == 80
	})
	for name, lr := range map[string]*Learner{"a": lrA, "b": lrB} {
		got := lr.Backend("x", "m")
		if got.Errors != 40 || got.Perf.Samples != 40 {
			t.Errorf("%s: %d errors, %d samples; want the fleet's 40 and 40", name, got.Errors, got.Perf.Samples)
		}
		if tpot := got.Perf.TPOT; tpot < 4900*time.Microsecond || tpot > 5100*time.Microsecond {
			t.Errorf("%s: TPOT %v, want the 5ms replica b observed", name, tpot)
		}
	}
}

func TestRedisRenewKeepsLease(t *testing.T) {
	srv := redistest.Start(t)
	env := standaloneEnv(srv)
	pool := newTestPool()
	const lease = time.Second
	opts := func(id string) RedisOptions {
		return RedisOptions{Pool: pool, ReplicaID: id, Lease: lease, Heartbeat: 100 * time.Millisecond}
	}
	a, b := newTestStore(t, env, opts("a")), newTestStore(t, env, opts("b"))
	x := Slot{Backend: "x", Capacity: 1}
	mustAcquire(t, a, "stream", []Slot{x}, 0)
	until := time.Now().Add(3 * lease)
	for time.Now().Before(until) {
		if err := a.Renew(context.Background(), "stream", "x"); err != nil {
			t.Fatalf("renew: %v", err)
		}
		mustAcquire(t, b, "other", []Slot{x}, -1)
		time.Sleep(lease / 5)
	}
	// No more renewals: the lease runs out, on both sides.
	waitFor(t, lease+10*time.Second, "the unrenewed lease to expire", func() bool {
		got, _ := b.Acquire(context.Background(), "other", []Slot{x})
		return got == 0
	})
	waitFor(t, 5*time.Second, "a to drop it locally", func() bool { return a.Stats().ExpiredLeases == 1 })
	mustRelease(t, a, "stream", "x") // late release: no-op
	if st := a.Stats(); st.Renewals == 0 {
		t.Fatalf("renewals not counted: %+v", st)
	}
}

// TestRedisTimedOutAcquireIsCleanedUp makes an acquire time out after Redis ran
// it (replies delayed by a proxy): the store must remove that attempt's lease
// itself, or the slot would stay taken until the lease expires.
func TestRedisTimedOutAcquireIsCleanedUp(t *testing.T) {
	srv := redistest.Start(t)
	proxy := redistest.NewProxy(t, srv.Addr)
	pool := newTestPool()
	s, err := NewRedisStore(testClient(t, RedisConfig{URL: "redis://" + proxy.Addr, Timeout: 200 * time.Millisecond}),
		RedisOptions{Pool: pool, ReplicaID: "a", Lease: 5 * time.Second, Heartbeat: 100 * time.Millisecond, Timeout: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	waitFor(t, 5*time.Second, "redis mode", func() bool { return s.Mode() == ModeRedis })
	direct := srv.Client()
	key := s.keys.lease("x")

	proxy.SetReplyDelay(time.Second)
	mustAcquire(t, s, "req", []Slot{{Backend: "x", Capacity: 5}}, 0) // decided locally after the timeout
	if s.Mode() != ModeLocal {
		t.Fatalf("mode after a timed-out acquire = %q", s.Mode())
	}
	waitFor(t, 5*time.Second, "the timed-out script to have run on Redis", func() bool {
		n, err := direct.ZCard(context.Background(), key).Result()
		t.Logf("zcard %d %v %+v", n, err, s.Stats())
		return n == 1
	})
	proxy.SetReplyDelay(0)
	waitFor(t, 15*time.Second, "redis mode again", func() bool { return s.Mode() == ModeRedis })
	// Exactly one lease for the one request: the timed-out attempt's member
	// removed, the locally admitted one re-added.
	members, err := direct.ZRange(context.Background(), key, 0, -1).Result()
	if err != nil || len(members) != 1 || !strings.HasPrefix(members[0], "req:") {
		t.Fatalf("leases after recovery = %v, %v; want one for req", members, err)
	}
	mustRelease(t, s, "req", "x")
	waitFor(t, 5*time.Second, "the release", func() bool {
		n, _ := direct.ZCard(context.Background(), key).Result()
		return n == 0
	})
}

// TestRedisStartsWhileDown: a gateway must start, and serve, during an outage.
func TestRedisStartsWhileDown(t *testing.T) {
	srv := redistest.Start(t)
	srv.Stop()
	start := time.Now()
	s := newTestStore(t, standaloneEnv(srv), RedisOptions{Pool: newTestPool(), Timeout: 200 * time.Millisecond})
	t.Logf("NewRedisStore returned after %v with Redis down", time.Since(start).Round(time.Millisecond))
	if s.Mode() != ModeLocal {
		t.Fatalf("mode = %q, want local", s.Mode())
	}
	mustAcquire(t, s, "r", []Slot{{Backend: "x", Capacity: 2}}, 0)
	srv.Restart()
	waitFor(t, 15*time.Second, "redis mode", func() bool { return s.Mode() == ModeRedis })
	waitFor(t, 5*time.Second, "the local lease in redis", snapshotIs(s, map[string]int{"x": 1}))
}

// TestRedisOutageBoundLongStreams measures the one bound the local mode
// cannot close. When Redis goes away, a replica counts what the others held at
// the last contact only until those leases would have expired: it cannot know
// that they are long streams that go on. If another replica held more than its
// share in such streams, the fleet can then exceed the capacity by that excess:
// at most capacity + Σ max(0, held_i − share_i) over replicas, for requests
// that outlive a lease while Redis is unreachable.
func TestRedisOutageBoundLongStreams(t *testing.T) {
	srv := redistest.Start(t)
	env := standaloneEnv(srv)
	pool := newTestPool()
	const lease = 1500 * time.Millisecond
	opts := func(id string) RedisOptions {
		return RedisOptions{Pool: pool, ReplicaID: id, Lease: lease, Heartbeat: 100 * time.Millisecond, Timeout: 100 * time.Millisecond}
	}
	a, b := newTestStore(t, env, opts("a")), newTestStore(t, env, opts("b"))
	x := Slot{Backend: "x", Capacity: 4}
	streams := admitAll(t, a, "a", x) // a holds all 4: long streams
	waitFor(t, 5*time.Second, "two live replicas", func() bool { return a.LiveReplicas() == 2 && b.LiveReplicas() == 2 })
	mustAcquire(t, b, "b-probe", []Slot{x}, -1) // b's last contact: 4 held by others

	var leases []held
	for _, id := range streams {
		leases = append(leases, held{a, id, "x"})
	}
	defer renewInBackground(t, lease/5, leases)() // a's streams go on throughout

	srv.Pause(3 * lease)
	outage := time.Now()
	// Within the lease after the last contact, b admits nothing: a's slots count.
	for time.Since(outage) < lease/3 {
		mustAcquire(t, b, "b-early", []Slot{x}, -1)
		time.Sleep(20 * time.Millisecond)
	}
	// After it, b admits its share, while a's streams go on.
	waitFor(t, 2*lease+2*time.Second, "b to admit by its share", func() bool {
		got, _ := b.Acquire(context.Background(), "b1", []Slot{x})
		return got == 0
	})
	extra := 1 + len(admitAll(t, b, "b-more", x))
	shareA := a.fleet.Load().share("x", x.Capacity)
	shareB := b.fleet.Load().share("x", x.Capacity)
	total := len(streams) + extra
	bound := x.Capacity + max(0, len(streams)-shareA)
	t.Logf("known bound: %d in flight on a backend of capacity %d after a %v outage with long streams (a held %d, share %d; b admitted %d, share %d); bound capacity + excess = %d",
		total, x.Capacity, lease, len(streams), shareA, extra, shareB, bound)
	if extra != shareB {
		t.Errorf("b admitted %d, want its share %d", extra, shareB)
	}
	if total > bound {
		t.Fatalf("%d in flight exceeds the stated bound %d", total, bound)
	}
	srv.Unpause()
}

// TestRedisOutageBoundStaleContact measures the second bound of local mode.
// A replica counts what the others held at its last contact with Redis (its
// last acquire reply or heartbeat for that backend, at most one heartbeat
// old); slots the others took through Redis after that contact and before the
// outage are invisible to it, so it may admit its share on top of them: the
// overshoot is at most its share, for requests admitted in that window.
func TestRedisOutageBoundStaleContact(t *testing.T) {
	srv := redistest.Start(t)
	env := standaloneEnv(srv)
	pool := newTestPool()
	opts := func(id string) RedisOptions {
		return RedisOptions{Pool: pool, ReplicaID: id, Lease: 10 * time.Second, Heartbeat: 2 * time.Second, Timeout: 100 * time.Millisecond}
	}
	a, b := newTestStore(t, env, opts("a")), newTestStore(t, env, opts("b"))
	x := Slot{Backend: "x", Capacity: 4}
	for _, s := range []Store{a, b} {
		mustAcquire(t, s, "warm", []Slot{x}, 0)
		mustRelease(t, s, "warm", "x")
	}
	waitFor(t, 10*time.Second, "two live replicas", func() bool { return a.LiveReplicas() == 2 && b.LiveReplicas() == 2 })
	// Right after one of b's heartbeats (which saw x empty), a fills x.
	beats := b.Stats().Heartbeats
	waitFor(t, 10*time.Second, "a heartbeat of b", func() bool { return b.Stats().Heartbeats > beats })
	streams := admitAll(t, a, "a", x)
	srv.Pause(3 * time.Second)
	defer srv.Unpause()
	late := admitAll(t, b, "b", x)
	shareB := b.fleet.Load().share("x", x.Capacity)
	total := len(streams) + len(late)
	t.Logf("stale-contact bound: %d in flight on capacity %d (a took %d after b's last contact; b then admitted %d locally, share %d)",
		total, x.Capacity, len(streams), len(late), shareB)
	if len(late) > shareB || total > x.Capacity+shareB {
		t.Fatalf("%d in flight exceeds the stated bound capacity + share = %d", total, x.Capacity+shareB)
	}
}

// TestRedisRenewRacingRelease: the gateway's renewal timer can fire as the
// request ends. A renewal that loses the race must not bring the lease back
// (the slot would stay taken for a whole lease), and a lease Redis lost while
// the request still runs must be counted again.
func TestRedisRenewRacingRelease(t *testing.T) {
	srv := redistest.Start(t)
	s := newTestStore(t, standaloneEnv(srv), RedisOptions{Pool: newTestPool(), Lease: 30 * time.Second, Heartbeat: 100 * time.Millisecond})
	ctx := context.Background()
	x := Slot{Backend: "x", Capacity: 1000}
	var wg sync.WaitGroup
	for i := range 300 {
		id := fmt.Sprintf("r%d", i)
		mustAcquire(t, s, id, []Slot{x}, 0)
		wg.Add(2)
		go func() { defer wg.Done(); _ = s.Renew(ctx, id, "x") }()
		go func() { defer wg.Done(); _ = s.Release(ctx, id, "x") }()
	}
	wg.Wait()
	waitFor(t, 5*time.Second, "no lease left behind (a ghost would stay 30s)", snapshotIs(s, map[string]int{}))

	// A lease Redis lost (as after a stall longer than the lease) comes back
	// on the next renewal, through the background resync.
	mustAcquire(t, s, "stream", []Slot{x}, 0)
	if err := srv.Client().Del(ctx, s.keys.lease("x")).Err(); err != nil {
		t.Fatal(err)
	}
	if err := s.Renew(ctx, "stream", "x"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the lost lease re-added", snapshotIs(s, map[string]int{"x": 1}))
}
