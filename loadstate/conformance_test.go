package loadstate

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// newReplicasFunc returns n stores sharing one fresh, empty state, as the
// replicas of one pool do. A store that cannot share state (the in-memory one)
// returns the same instance n times.
type newReplicasFunc func(t *testing.T, n int) []Store

// runStoreConformance is the behaviour every Store must have. It runs against
// the in-memory store, a real redis-server and a real Redis Cluster.
func runStoreConformance(t *testing.T, newReplicas newReplicasFunc) {
	ctx := context.Background()
	one := func(t *testing.T) Store { return newReplicas(t, 1)[0] }

	t.Run("FirstWithRoom", func(t *testing.T) {
		s := one(t)
		cands := []Slot{{Backend: "a", Capacity: 1}, {Backend: "b", Capacity: 2}}
		for i, want := range []int{0, 1, 1, -1} {
			got, err := s.Acquire(ctx, fmt.Sprintf("r%d", i), cands)
			if err != nil || got != want {
				t.Fatalf("acquire %d = %d, %v; want %d", i, got, err, want)
			}
		}
		if a, b := s.Inflight("a"), s.Inflight("b"); a != 1 || b != 2 {
			t.Fatalf("inflight a=%d b=%d, want 1 and 2", a, b)
		}
		// Order is the caller's ranking, not alphabetical.
		if err := s.Release(ctx, "r1", "b"); err != nil {
			t.Fatal(err)
		}
		// A shared store may apply the release asynchronously.
		waitFor(t, 5*time.Second, "the released slot on b", func() bool {
			got, _ := s.Acquire(ctx, "r4", []Slot{{Backend: "b", Capacity: 2}, {Backend: "a", Capacity: 1}})
			return got == 0
		})
	})

	t.Run("Idempotent", func(t *testing.T) {
		s := one(t)
		cands := []Slot{{Backend: "a", Capacity: 2}, {Backend: "b", Capacity: 2}}
		if got, _ := s.Acquire(ctx, "x", cands); got != 0 {
			t.Fatalf("first acquire = %d", got)
		}
		for range 3 {
			if got, err := s.Acquire(ctx, "x", cands); got != 0 || err != nil {
				t.Fatalf("repeated acquire = %d, %v; want the same slot 0", got, err)
			}
		}
		// Same id, candidates in another order: still the slot it holds.
		if got, _ := s.Acquire(ctx, "x", []Slot{{Backend: "b", Capacity: 2}, {Backend: "a", Capacity: 2}}); got != 1 {
			t.Fatalf("acquire with reordered candidates = %d, want 1 (a)", got)
		}
		// Held on a backend that is no longer a candidate: no second slot.
		if got, _ := s.Acquire(ctx, "x", []Slot{{Backend: "b", Capacity: 2}}); got != -1 {
			t.Fatalf("acquire without the held backend = %d, want -1", got)
		}
		if a, b := s.Inflight("a"), s.Inflight("b"); a != 1 || b != 0 {
			t.Fatalf("inflight a=%d b=%d after repeats, want 1 and 0", a, b)
		}
		// Concurrent acquires of one id take one slot.
		var wg sync.WaitGroup
		results := make([]int, 16)
		for i := range results {
			wg.Add(1)
			go func() {
				defer wg.Done()
				results[i], _ = s.Acquire(ctx, "y", []Slot{{Backend: "c", Capacity: 10}})
			}()
		}
		wg.Wait()
		for i, r := range results {
			if r != 0 {
				t.Fatalf("concurrent acquire %d of one id = %d, want 0", i, r)
			}
		}
		waitFor(t, 5*time.Second, "one slot on c for one id", func() bool {
			snap, err := s.Snapshot(ctx)
			return err == nil && snap["c"] == 1
		})
	})

	t.Run("ExactRelease", func(t *testing.T) {
		s := one(t)
		cands := []Slot{{Backend: "a", Capacity: 3}}
		for _, id := range []string{"1", "2", "3"} {
			if got, _ := s.Acquire(ctx, id, cands); got != 0 {
				t.Fatalf("acquire %s = %d", id, got)
			}
		}
		mustRelease(t, s, "2", "a")
		if n := s.Inflight("a"); n != 2 {
			t.Fatalf("inflight after one release = %d, want 2", n)
		}
		mustRelease(t, s, "2", "a")         // twice: no-op
		mustRelease(t, s, "1", "b")         // wrong backend: no-op
		mustRelease(t, s, "unknown", "a")   // never taken: no-op
		mustRelease(t, s, "unknown", "zzz") // unknown backend too
		if n := s.Inflight("a"); n != 2 {
			t.Fatalf("inflight after no-op releases = %d, want 2", n)
		}
		waitFor(t, 5*time.Second, "snapshot a=2", func() bool {
			snap, err := s.Snapshot(ctx)
			return err == nil && snap["a"] == 2
		})
		// The freed slot is usable again, exactly once.
		waitFor(t, 5*time.Second, "the released slot", func() bool {
			got, _ := s.Acquire(ctx, "4", cands)
			return got == 0
		})
		if got, _ := s.Acquire(ctx, "5", cands); got != -1 {
			t.Fatalf("acquire over capacity = %d, want -1", got)
		}
		for _, id := range []string{"1", "3", "4"} {
			mustRelease(t, s, id, "a")
		}
		waitFor(t, 5*time.Second, "empty snapshot", func() bool {
			snap, err := s.Snapshot(ctx)
			return err == nil && len(snap) == 0
		})
		if n := s.Inflight("a"); n != 0 {
			t.Fatalf("inflight after releasing all = %d", n)
		}
	})

	t.Run("CapacityChange", func(t *testing.T) {
		s := one(t)
		for _, id := range []string{"1", "2"} {
			if got, _ := s.Acquire(ctx, id, []Slot{{Backend: "a", Capacity: 2}}); got != 0 {
				t.Fatalf("acquire %s = %d", id, got)
			}
		}
		if got, _ := s.Acquire(ctx, "3", []Slot{{Backend: "a", Capacity: 2}}); got != -1 {
			t.Fatalf("acquire at capacity 2 = %d", got)
		}
		if got, _ := s.Acquire(ctx, "3", []Slot{{Backend: "a", Capacity: 3}}); got != 0 {
			t.Fatalf("acquire after raising capacity to 3 = %d", got)
		}
		// Lowered below what is in flight: nothing new until it drains.
		if got, _ := s.Acquire(ctx, "4", []Slot{{Backend: "a", Capacity: 1}}); got != -1 {
			t.Fatalf("acquire after lowering capacity to 1 = %d", got)
		}
		mustRelease(t, s, "1", "a")
		mustRelease(t, s, "2", "a")
		if got, _ := s.Acquire(ctx, "4", []Slot{{Backend: "a", Capacity: 1}}); got != -1 {
			t.Fatalf("acquire with 1 in flight at capacity 1 = %d", got)
		}
		mustRelease(t, s, "3", "a")
		waitFor(t, 5*time.Second, "room on a at capacity 1", func() bool {
			got, _ := s.Acquire(ctx, "4", []Slot{{Backend: "a", Capacity: 1}})
			return got == 0
		})
		if got, _ := s.Acquire(ctx, "5", []Slot{{Backend: "a", Capacity: 0}, {Backend: "b", Capacity: 0}}); got != -1 {
			t.Fatalf("acquire at capacity 0 = %d", got)
		}
	})

	t.Run("Renew", func(t *testing.T) {
		s := one(t)
		if got, _ := s.Acquire(ctx, "1", []Slot{{Backend: "a", Capacity: 1}}); got != 0 {
			t.Fatal("acquire failed")
		}
		if err := s.Renew(ctx, "1", "a"); err != nil {
			t.Fatalf("renew of a held lease: %v", err)
		}
		if err := s.Renew(ctx, "nope", "a"); err != nil {
			t.Fatalf("renew of an unknown lease: %v", err)
		}
		if n := s.Inflight("a"); n != 1 {
			t.Fatalf("inflight after renew = %d", n)
		}
		if s.LeaseTTL() < 0 {
			t.Fatal("negative lease TTL")
		}
	})

	t.Run("Watch", func(t *testing.T) {
		replicas := newReplicas(t, 2)
		a, b := replicas[0], replicas[1]
		onA, onB := make(chan string, 16), make(chan string, 16)
		stopA := a.Watch(func(backend string) { onA <- backend })
		stopB := b.Watch(func(backend string) { onB <- backend })
		defer stopB()
		if got, _ := a.Acquire(ctx, "1", []Slot{{Backend: "w", Capacity: 1}}); got != 0 {
			t.Fatal("acquire failed")
		}
		mustRelease(t, a, "1", "w")
		expectWake(t, onA, "w", "the releasing store")
		expectWake(t, onB, "w", "another replica")
		stopA()
		stopA() // idempotent
		if got, _ := a.Acquire(ctx, "2", []Slot{{Backend: "w", Capacity: 1}}); got != 0 {
			t.Fatal("acquire failed")
		}
		mustRelease(t, a, "2", "w")
		expectWake(t, onB, "w", "another replica, again")
		select {
		case got := <-onA:
			t.Fatalf("stopped watcher called with %q", got)
		case <-time.After(200 * time.Millisecond):
		}
	})

	t.Run("Snapshot", func(t *testing.T) {
		replicas := newReplicas(t, 2)
		a, b := replicas[0], replicas[1]
		for i := range 3 {
			if got, _ := a.Acquire(ctx, fmt.Sprintf("a%d", i), []Slot{{Backend: "s1", Capacity: 5}}); got != 0 {
				t.Fatal("acquire failed")
			}
		}
		if got, _ := b.Acquire(ctx, "b0", []Slot{{Backend: "s2", Capacity: 5}}); got != 0 {
			t.Fatal("acquire failed")
		}
		// Any replica sees the whole pool, backends it never used included.
		for _, s := range replicas {
			waitFor(t, 5*time.Second, "snapshot s1=3 s2=1", func() bool {
				snap, err := s.Snapshot(ctx)
				return err == nil && len(snap) == 2 && snap["s1"] == 3 && snap["s2"] == 1
			})
		}
		mustRelease(t, b, "b0", "s2")
		waitFor(t, 5*time.Second, "s2 gone from the snapshot", func() bool {
			snap, err := a.Snapshot(ctx)
			_, has := snap["s2"]
			return err == nil && !has && snap["s1"] == 3
		})
	})

	t.Run("ConcurrencyProperty", func(t *testing.T) {
		testConcurrencyProperty(t, newReplicas(t, 3))
	})

	t.Run("TokenCapacity", func(t *testing.T) {
		s := one(t)
		slot := func(tokens int) []Slot {
			return []Slot{{Backend: "t", Capacity: 10, Tokens: tokens, TokenCapacity: 100}, {Backend: "u", Capacity: 1}}
		}
		for _, step := range []struct {
			id     string
			tokens int
			want   int
		}{
			{"a", 60, 0},
			{"b", 50, 1}, // 110 > 100: the next candidate, which has no token limit
			{"c", 40, 0}, // exactly 100
			{"d", 1, -1}, // t has no token room, u no slot
			{"a", 60, 0}, // idempotent: the same slot, nothing more
		} {
			if got, err := s.Acquire(ctx, step.id, slot(step.tokens)); err != nil || got != step.want {
				t.Fatalf("acquire %s (%d tokens) = %d, %v; want %d", step.id, step.tokens, got, err, step.want)
			}
		}
		if got := s.Tokens("t"); got != 100 {
			t.Fatalf("tokens in flight on t = %d, want 100", got)
		}
		mustRelease(t, s, "a", "t")
		waitFor(t, 5*time.Second, "a's tokens back", func() bool {
			got, _ := s.Acquire(ctx, "f", slot(55))
			return got == 0
		})
		mustRelease(t, s, "c", "t")
		mustRelease(t, s, "f", "t")
		mustRelease(t, s, "b", "u")
		// Larger than the whole token capacity: admitted alone only.
		waitFor(t, 5*time.Second, "t empty", func() bool {
			got, _ := s.Acquire(ctx, "big", slot(500)[:1])
			return got == 0
		})
		if got, _ := s.Acquire(ctx, "small", slot(1)[:1]); got != -1 {
			t.Fatalf("a request beside an oversized one got %d, want -1", got)
		}
		mustRelease(t, s, "big", "t")
		waitFor(t, 5*time.Second, "tokens back to 0", func() bool { return s.Tokens("t") == 0 })
	})

	t.Run("TokenProperty", func(t *testing.T) {
		testTokenProperty(t, newReplicas(t, 3))
	})
}

// testTokenProperty: goroutines across the stores acquire requests of random
// token costs (some larger than the whole capacity) and release them; the
// true token sum in flight on a backend, tracked like the concurrency in
// testConcurrencyProperty, never exceeds its token capacity except by a single
// oversized request alone, and ends at 0.
func testTokenProperty(t *testing.T, stores []Store) {
	ctx := context.Background()
	const tokenCap = 200
	backends := []Slot{{Backend: "tk0", Capacity: 4, TokenCapacity: tokenCap}, {Backend: "tk1", Capacity: 8, TokenCapacity: tokenCap}}
	var tokens, count [2]atomic.Int64
	var violations, admitted, refused, oversized atomic.Int64
	opsPer := 200
	if testing.Short() {
		opsPer = 50
	}
	var wg sync.WaitGroup
	for si, s := range stores {
		for g := range 6 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				rng := rand.New(rand.NewPCG(uint64(si)+100, uint64(g)))
				for op := range opsPer {
					cost := 10 + rng.IntN(120)
					if rng.IntN(20) == 0 {
						cost = tokenCap + 50 // larger than the capacity
					}
					perm := rng.Perm(len(backends))
					cands := make([]Slot, len(perm))
					for i, p := range perm {
						cands[i] = backends[p]
						cands[i].Tokens = cost
					}
					id := fmt.Sprintf("tk-s%d-g%d-op%d", si, g, op)
					idx, err := s.Acquire(ctx, id, cands)
					if err != nil {
						t.Errorf("acquire: %v", err)
						return
					}
					if idx < 0 {
						refused.Add(1)
						continue
					}
					admitted.Add(1)
					if cost > tokenCap {
						oversized.Add(1)
					}
					b := perm[idx]
					n := count[b].Add(1)
					sum := tokens[b].Add(int64(cost))
					if sum > tokenCap && n > 1 {
						violations.Add(1)
					}
					if rng.IntN(3) == 0 {
						time.Sleep(time.Duration(rng.IntN(200)) * time.Microsecond)
					}
					tokens[b].Add(-int64(cost))
					count[b].Add(-1)
					if err := s.Release(ctx, id, cands[idx].Backend); err != nil {
						t.Errorf("release: %v", err)
					}
				}
			}()
		}
	}
	wg.Wait()
	t.Logf("%d stores: %d admitted (%d oversized, alone), %d refused", len(stores), admitted.Load(), oversized.Load(), refused.Load())
	if v := violations.Load(); v > 0 {
		t.Fatalf("token capacity exceeded %d times", v)
	}
	if admitted.Load() == 0 || refused.Load() == 0 {
		t.Fatalf("no contention: %d admitted, %d refused", admitted.Load(), refused.Load())
	}
	for _, s := range stores {
		for _, b := range backends {
			waitFor(t, 10*time.Second, "tokens back to 0 on "+b.Backend, func() bool { return s.Tokens(b.Backend) == 0 })
		}
	}
}

// testConcurrencyProperty has many goroutines across the given stores acquire
// and release at random, tracking the true concurrency of every backend with
// atomics: incremented after a successful acquire, decremented before the
// release. It must never exceed the capacity and must end at zero, in the
// stores too.
func testConcurrencyProperty(t *testing.T, stores []Store) {
	ctx := context.Background()
	backends := []Slot{{Backend: "p0", Capacity: 1}, {Backend: "p1", Capacity: 2}, {Backend: "p2", Capacity: 3}, {Backend: "p3", Capacity: 5}}
	var inflight, peak [4]atomic.Int64
	var violations, admitted, refused atomic.Int64
	const perStore = 8
	opsPer := 250
	if testing.Short() {
		opsPer = 60
	}
	var wg sync.WaitGroup
	for si, s := range stores {
		for g := range perStore {
			wg.Add(1)
			go func() {
				defer wg.Done()
				rng := rand.New(rand.NewPCG(uint64(si), uint64(g)))
				for op := range opsPer {
					// A random ranking of a random non-empty subset.
					perm := rng.Perm(len(backends))[:1+rng.IntN(len(backends))]
					cands := make([]Slot, len(perm))
					for i, p := range perm {
						cands[i] = backends[p]
					}
					id := fmt.Sprintf("s%d-g%d-op%d", si, g, op)
					idx, err := s.Acquire(ctx, id, cands)
					if err != nil {
						t.Errorf("acquire: %v", err)
						return
					}
					if idx < 0 {
						refused.Add(1)
						continue
					}
					admitted.Add(1)
					b := perm[idx]
					n := inflight[b].Add(1)
					if n > int64(backends[b].Capacity) {
						violations.Add(1)
					}
					for {
						p := peak[b].Load()
						if n <= p || peak[b].CompareAndSwap(p, n) {
							break
						}
					}
					if rng.IntN(4) == 0 { // a retry of the same request: same slot, nothing more
						if again, _ := s.Acquire(ctx, id, cands); again != idx {
							t.Errorf("re-acquire of a held id = %d, want %d", again, idx)
						}
					}
					if rng.IntN(3) == 0 {
						time.Sleep(time.Duration(rng.IntN(300)) * time.Microsecond)
					}
					inflight[b].Add(-1)
					if err := s.Release(ctx, id, cands[idx].Backend); err != nil {
						t.Errorf("release: %v", err)
					}
					if rng.IntN(5) == 0 {
						_ = s.Release(ctx, id, cands[idx].Backend) // double release: no-op
					}
				}
			}()
		}
	}
	wg.Wait()
	t.Logf("%d stores × %d goroutines: %d admitted, %d refused; peaks %d/%d %d/%d %d/%d %d/%d",
		len(stores), perStore, admitted.Load(), refused.Load(),
		peak[0].Load(), backends[0].Capacity, peak[1].Load(), backends[1].Capacity,
		peak[2].Load(), backends[2].Capacity, peak[3].Load(), backends[3].Capacity)
	if v := violations.Load(); v > 0 {
		t.Fatalf("capacity exceeded %d times", v)
	}
	if admitted.Load() == 0 || refused.Load() == 0 {
		t.Fatalf("the test did not exercise contention: %d admitted, %d refused", admitted.Load(), refused.Load())
	}
	for i := range inflight {
		if n := inflight[i].Load(); n != 0 {
			t.Fatalf("true concurrency of %s ended at %d", backends[i].Backend, n)
		}
	}
	for _, s := range stores {
		waitFor(t, 10*time.Second, "every store's snapshot empty", func() bool {
			snap, err := s.Snapshot(ctx)
			return err == nil && len(snap) == 0
		})
		for _, b := range backends {
			if n := s.Inflight(b.Backend); n < 0 {
				t.Fatalf("negative inflight %d on %s", n, b.Backend)
			}
		}
	}
}

func mustRelease(t *testing.T, s Store, id, backend string) {
	t.Helper()
	if err := s.Release(context.Background(), id, backend); err != nil {
		t.Fatalf("release %s on %s: %v", id, backend, err)
	}
}

func expectWake(t *testing.T, ch <-chan string, backend, who string) {
	t.Helper()
	deadline := time.After(5 * time.Second)
	for {
		select {
		case got := <-ch:
			if got == backend {
				return
			}
		case <-deadline:
			t.Fatalf("%s was not told that a slot on %s was released", who, backend)
		}
	}
}

// waitFor polls cond until it holds, failing the test after timeout. Bounds are
// generous: a loaded 2-core machine running -race is slow.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestConformanceMemory(t *testing.T) {
	runStoreConformance(t, func(t *testing.T, n int) []Store {
		m := NewMemoryStore()
		out := make([]Store, n)
		for i := range out {
			out[i] = m
		}
		return out
	})
}
