package loadstate

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/modelrouter/modelrouter/internal/redistest"
)

// commandCount is what one measured run cost in Redis commands.
type commandCount struct {
	requests   int
	scripts    int64            // EVALSHA + EVAL sent by clients
	background int64            // of which heartbeats, resyncs and renewals
	hotPath    int64            // of which acquires (store counter)
	releases   int64            // of which release batches (store counter)
	other      map[string]int64 // every other command, most run inside the scripts
}

// perRequest is client-issued commands (round trips) per request, background
// excluded.
func (c commandCount) perRequest() float64 {
	return float64(c.scripts-c.background) / float64(c.requests)
}

func (c commandCount) String() string {
	names := make([]string, 0, len(c.other))
	var internal int64
	for k, v := range c.other {
		names = append(names, fmt.Sprintf("%s %.2f", k, float64(v)/float64(c.requests)))
		internal += v
	}
	sort.Strings(names)
	return fmt.Sprintf("%.3f round trips per request (acquire %.3f + release %.3f); background over the run: %d heartbeats/resyncs; "+
		"commands run inside scripts, per request: %.1f total [%s]",
		c.perRequest(), float64(c.hotPath)/float64(c.requests), float64(c.releases)/float64(c.requests),
		c.background, float64(internal)/float64(c.requests), strings.Join(names, ", "))
}

// measureCommands runs requests acquire+release pairs on s from workers
// goroutines and counts the Redis commands they cost, from INFO commandstats.
func measureCommands(t testing.TB, env redisEnv, s *RedisStore, requests, workers int) commandCount {
	ctx := context.Background()
	cands := []Slot{{Backend: "x", Capacity: 1 << 20}, {Backend: "y", Capacity: 1 << 20}}
	run := func(n int, prefix string) {
		var next atomic.Int64
		var wg sync.WaitGroup
		for range workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					i := next.Add(1)
					if i > int64(n) {
						return
					}
					id := fmt.Sprintf("%s-%d", prefix, i)
					idx, err := s.Acquire(ctx, id, cands)
					if err != nil || idx != 0 {
						t.Errorf("acquire = %d, %v", idx, err)
						return
					}
					_ = s.Release(ctx, id, cands[idx].Backend)
				}
			}()
		}
		wg.Wait()
	}
	released := func(want uint64) func() bool {
		return func() bool { return s.Stats().ReleasedLeases >= want }
	}
	run(50, "warm") // scripts loaded, connections open
	waitFor(t, 10*time.Second, "warm-up releases", released(50))

	env.reset()
	before := s.Stats()
	run(requests, "req")
	waitFor(t, 30*time.Second, "every release sent", released(before.ReleasedLeases+uint64(requests)))
	after := s.Stats()
	cs := env.stats()

	c := commandCount{
		requests:   requests,
		scripts:    cs["evalsha"] + cs["eval"],
		background: int64(after.Heartbeats-before.Heartbeats) + int64(after.Resyncs-before.Resyncs) + int64(after.Renewals-before.Renewals),
		hotPath:    int64(after.HotPathCalls - before.HotPathCalls),
		releases:   int64(after.Releases - before.Releases),
		other:      map[string]int64{},
	}
	for k, v := range cs {
		if k != "evalsha" && k != "eval" && k != "config|resetstat" && k != "info" {
			c.other[k] = v
		}
	}
	if got := c.hotPath + c.releases; got != c.scripts-c.background {
		t.Errorf("commandstats shows %d request-path scripts, the store counted %d", c.scripts-c.background, got)
	}
	return c
}

// TestRedisCommandsPerRequest measures, from INFO commandstats, the Redis
// commands one proxied request costs in steady state: one acquire round trip
// and at most one release (batched when requests overlap).
func TestRedisCommandsPerRequest(t *testing.T) {
	envs := map[string]func(t *testing.T) redisEnv{
		"standalone": func(t *testing.T) redisEnv { return standaloneEnv(redistest.Start(t)) },
		"cluster":    func(t *testing.T) redisEnv { return clusterEnv(redistest.StartCluster(t, 3)) },
	}
	for _, name := range []string{"standalone", "cluster"} {
		t.Run(name, func(t *testing.T) {
			env := envs[name](t)
			for _, workers := range []int{1, 16} {
				// Heartbeats are counted apart, but one landing between the
				// store's count and INFO would be counted on one side only:
				// none during the run.
				s := newTestStore(t, env, RedisOptions{Pool: newTestPool(), Lease: time.Hour, Heartbeat: 30 * time.Minute})
				c := measureCommands(t, env, s, 1000, workers)
				t.Logf("%s, %d concurrent: %v", name, workers, c)
				if c.perRequest() > 2 {
					t.Errorf("%.3f Redis round trips per request, want at most 2", c.perRequest())
				}
				if c.hotPath != int64(c.requests) {
					t.Errorf("%d acquire round trips for %d requests, want exactly one each", c.hotPath, c.requests)
				}
				if pubs := c.other["publish"]; pubs > int64(c.requests) {
					t.Errorf("%d PUBLISH for %d requests", pubs, c.requests)
				}
			}
		})
	}
}

func benchmarkAcquireRelease(b *testing.B, s Store, parallel bool) {
	ctx := context.Background()
	cands := []Slot{{Backend: "x", Capacity: 1 << 30}, {Backend: "y", Capacity: 1 << 30}}
	var seq atomic.Int64
	one := func() {
		id := "bench-" + fmt.Sprint(seq.Add(1))
		idx, err := s.Acquire(ctx, id, cands)
		if err != nil || idx < 0 {
			b.Fatalf("acquire = %d, %v", idx, err)
		}
		_ = s.Release(ctx, id, cands[idx].Backend)
	}
	b.ReportAllocs()
	b.ResetTimer()
	if parallel {
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				one()
			}
		})
	} else {
		for range b.N {
			one()
		}
	}
	b.StopTimer()
}

// BenchmarkRedisAcquireRelease is one request's store traffic (acquire on
// the first of two candidates, then release) against a real redis-server,
// reporting Redis round trips and commands run inside scripts per request.
func BenchmarkRedisAcquireRelease(b *testing.B) {
	srv := redistest.Start(b)
	env := standaloneEnv(srv)
	for _, parallel := range []bool{false, true} {
		name := map[bool]string{false: "serial", true: "parallel"}[parallel]
		b.Run(name, func(b *testing.B) {
			s := newTestStore(b, env, RedisOptions{Pool: newTestPool(), Lease: 30 * time.Second, Heartbeat: time.Second})
			before := s.Stats()
			srv.ResetStats()
			benchmarkAcquireRelease(b, s, parallel)
			waitFor(b, 30*time.Second, "every release sent", func() bool {
				return s.Stats().ReleasedLeases-before.ReleasedLeases >= uint64(b.N)
			})
			after := s.Stats()
			cs := srv.CommandStats()
			var internal int64
			for k, v := range cs {
				if k != "evalsha" && k != "eval" && k != "config|resetstat" {
					internal += v
				}
			}
			background := float64(after.Heartbeats - before.Heartbeats)
			n := float64(b.N)
			b.ReportMetric((float64(cs["evalsha"]+cs["eval"])-background)/n, "roundtrips/op")
			b.ReportMetric(float64(after.Releases-before.Releases)/n, "releases/op")
			b.ReportMetric(float64(internal)/n, "scriptcmds/op")
		})
	}
}

// BenchmarkMemoryAcquireRelease is the in-memory baseline for the above.
func BenchmarkMemoryAcquireRelease(b *testing.B) {
	for _, parallel := range []bool{false, true} {
		name := map[bool]string{false: "serial", true: "parallel"}[parallel]
		b.Run(name, func(b *testing.B) { benchmarkAcquireRelease(b, NewMemoryStore(), parallel) })
	}
}
