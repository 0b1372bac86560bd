package loadstate

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/modelrouter/modelrouter/internal/redistest"
)

// proxiedStore opens a store whose client reaches srv through proxy.
func proxiedStore(t *testing.T, proxy *redistest.Proxy, opts RedisOptions) *RedisStore {
	t.Helper()
	s, err := NewRedisStore(testClient(t, RedisConfig{URL: "redis://" + proxy.Addr, Timeout: opts.Timeout}), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// slowMoment delays every reply of proxy by delay until some store has seen
// a call fail, then lets replies through again: Redis ran the calls, their
// replies came too late.
func slowMoment(t *testing.T, proxy *redistest.Proxy, delay time.Duration, stores ...*RedisStore) {
	t.Helper()
	errorsBefore := uint64(0)
	for _, s := range stores {
		errorsBefore += s.Stats().Errors
	}
	proxy.SetReplyDelay(delay)
	defer proxy.SetReplyDelay(0)
	deadline := time.Now().Add(30 * time.Second)
	for {
		var errs uint64
		for _, s := range stores {
			errs += s.Stats().Errors
		}
		if errs > errorsBefore {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("no call failed while replies were delayed")
		}
		time.Sleep(time.Millisecond)
	}
}

// TestRedisSlowReplyIsNotAnOutage: replies held back a little longer than the
// timeout, once, while three replicas acquire concurrently against a small
// cap. No replica may switch to local mode for it (a lone timeout is not an
// outage), the in-doubt acquires are retried with their own member (a retry
// finds what the lost reply took, so nothing is left behind), and the number
// of slots held at once never exceeds the cap.
func TestRedisSlowReplyIsNotAnOutage(t *testing.T) {
	srv := redistest.Start(t)
	proxy := redistest.NewProxy(t, srv.Addr)
	pool := newTestPool()
	const timeout = 200 * time.Millisecond
	var stores []*RedisStore
	for i := range 3 {
		stores = append(stores, proxiedStore(t, proxy, RedisOptions{Pool: pool, ReplicaID: fmt.Sprintf("r%d", i),
			Lease: 10 * time.Second, Heartbeat: 200 * time.Millisecond, Timeout: timeout}))
	}
	for _, s := range stores {
		waitFor(t, 10*time.Second, "three live replicas, counts trusted", func() bool {
			return s.LiveReplicas() == 3 && s.Mode() == ModeRedis
		})
	}
	const capacity = 3
	x := Slot{Backend: "x", Capacity: capacity}

	var inside, peak, admitted, failed atomic.Int64
	var modes sync.Map // modes seen other than redis
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := range 12 {
		s := stores[w%len(stores)]
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				id := fmt.Sprintf("w%d-%d", w, i)
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second) // the request's wait budget
				got, err := s.Acquire(ctx, id, []Slot{x})
				cancel()
				if m := s.Mode(); m != ModeRedis {
					modes.Store(m, true)
				}
				if err != nil {
					failed.Add(1)
					continue
				}
				if got != 0 {
					continue
				}
				admitted.Add(1)
				n := inside.Add(1)
				for {
					p := peak.Load()
					if n <= p || peak.CompareAndSwap(p, n) {
						break
					}
				}
				time.Sleep(2 * time.Millisecond) // the request's work
				inside.Add(-1)
				_ = s.Release(context.Background(), id, "x")
			}
		}()
	}
	waitFor(t, 10*time.Second, "requests served", func() bool { return admitted.Load() > 20 })
	for range 3 {
		slowMoment(t, proxy, timeout*3/2, stores...)
		before := admitted.Load()
		waitFor(t, 10*time.Second, "requests served after the slow moment", func() bool { return admitted.Load() > before+20 })
	}
	close(stop)
	wg.Wait()

	var retries, trips uint64
	for i, s := range stores {
		st := s.Stats()
		t.Logf("replica %d: %+v", i, st)
		retries += st.InDoubtRetries
		trips += st.Trips
	}
	t.Logf("admitted %d, peak %d of cap %d, %d in-doubt retries, %d acquires failed", admitted.Load(), peak.Load(), capacity, retries, failed.Load())
	if trips != 0 {
		t.Errorf("the breaker opened %d times for slow replies", trips)
	}
	modes.Range(func(m, _ any) bool {
		t.Errorf("a replica switched to mode %v for a slow reply", m)
		return true
	})
	if retries == 0 {
		t.Error("no acquire was in doubt: the test did not exercise a lost reply")
	}
	if failed.Load() != 0 {
		t.Errorf("%d acquires failed although their budget outlasted the slow moment", failed.Load())
	}
	if p := peak.Load(); p > capacity {
		t.Errorf("%d slots held at once, cap %d", p, capacity)
	}
	waitFor(t, 10*time.Second, "no lease left behind", snapshotIs(stores[0], map[string]int{}))
}

// TestRedisInDoubtAcquireFindsItsLease: an acquire whose reply was lost is
// retried with the same member and gets the slot the lost reply took: one
// lease in Redis, not two, and no switch to local mode.
func TestRedisInDoubtAcquireFindsItsLease(t *testing.T) {
	srv := redistest.Start(t)
	proxy := redistest.NewProxy(t, srv.Addr)
	const timeout = 200 * time.Millisecond
	s := proxiedStore(t, proxy, RedisOptions{Pool: newTestPool(), ReplicaID: "a", Lease: 10 * time.Second,
		Heartbeat: 200 * time.Millisecond, Timeout: timeout})
	waitFor(t, 10*time.Second, "redis mode", func() bool { return s.Mode() == ModeRedis })
	key := s.keys.lease("x")
	direct := srv.Client()

	got := make(chan int, 1)
	errs := s.Stats().Errors
	proxy.SetReplyDelay(timeout * 3 / 2)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		i, _ := s.Acquire(ctx, "req", []Slot{{Backend: "x", Capacity: 1}, {Backend: "y", Capacity: 1}})
		got <- i
	}()
	waitFor(t, 10*time.Second, "the first attempt to time out", func() bool { return s.Stats().Errors > errs })
	proxy.SetReplyDelay(0)
	if i := <-got; i != 0 {
		t.Fatalf("in-doubt acquire = %d, want 0", i)
	}
	members, err := direct.ZRange(context.Background(), key, 0, -1).Result()
	if err != nil || len(members) != 1 || !strings.HasPrefix(members[0], "req:") {
		t.Fatalf("leases on x = %v, %v; want the one of req", members, err)
	}
	if n, _ := direct.ZCard(context.Background(), s.keys.lease("y")).Result(); n != 0 {
		t.Fatalf("%d leases on y: the retry took a second slot", n)
	}
	if st := s.Stats(); st.Trips != 0 || st.InDoubtRetries == 0 || st.Mode != ModeRedis {
		t.Fatalf("stats after one lost reply: %+v", st)
	}
	mustRelease(t, s, "req", "x")
	waitFor(t, 5*time.Second, "released", snapshotIs(s, map[string]int{}))
}

// TestRedisInDoubtBudgetRunsOut: an acquire whose budget (its context's
// deadline) runs out while Redis stays slow returns an error wrapping the
// context's, takes no local slot, and its member is removed from Redis once
// Redis answers.
func TestRedisInDoubtBudgetRunsOut(t *testing.T) {
	srv := redistest.Start(t)
	proxy := redistest.NewProxy(t, srv.Addr)
	const timeout = 200 * time.Millisecond
	s := proxiedStore(t, proxy, RedisOptions{Pool: newTestPool(), ReplicaID: "a", Lease: 10 * time.Second,
		Heartbeat: 200 * time.Millisecond, Timeout: timeout})
	waitFor(t, 10*time.Second, "redis mode", func() bool { return s.Mode() == ModeRedis })
	direct := srv.Client()
	key := s.keys.lease("x")

	proxy.SetReplyDelay(time.Second)
	// Shorter than breakerRounds timeouts: the budget ends before the breaker
	// could open.
	ctx, cancel := context.WithTimeout(context.Background(), timeout*3/2)
	got, err := s.Acquire(ctx, "req", []Slot{{Backend: "x", Capacity: 5}})
	cancel()
	if got != -1 || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("acquire with its budget run out = %d, %v; want -1 and the deadline", got, err)
	}
	if st := s.Stats(); st.Trips != 0 || st.LocalDecisions != 0 {
		t.Fatalf("stats: %+v; want no trip, no local decision", st)
	}
	waitFor(t, 10*time.Second, "the timed-out script to have run", func() bool {
		n, _ := direct.ZCard(context.Background(), key).Result()
		return n == 1
	})
	proxy.SetReplyDelay(0)
	waitFor(t, 10*time.Second, "its member removed from redis", func() bool {
		n, _ := direct.ZCard(context.Background(), key).Result()
		return n == 0
	})
}

// replyError is an error reply of Redis, as go-redis returns them (its own
// type is internal).
type replyError string

func (e replyError) Error() string { return string(e) }
func (replyError) RedisError()     {}

var _ redis.Error = replyError("")

// TestOutageEvidence: which failures open the breaker at once.
func TestOutageEvidence(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	_ = ln.Close()
	_, refused := net.Dial("tcp", addr)

	srv := redistest.Start(t)
	conn, err := net.Dial("tcp", srv.Addr)
	if err != nil {
		t.Fatal(err)
	}
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Millisecond))
	_, timeout := conn.Read(make([]byte, 1))
	_ = conn.Close()
	ctx := context.Background()
	scriptErr := srv.Client().Eval(ctx, "return redis.call('NOSUCHCOMMAND')", nil).Err()
	replica := redistest.Start(t, "--replicaof", "127.0.0.1", fmt.Sprint(srv.Port))
	readonly := replica.Client().Set(ctx, "k", "v", 0).Err()

	for _, c := range []struct {
		name string
		err  error
		want bool
	}{
		{"refused", refused, true},
		{"reset", &net.OpError{Op: "read", Err: syscall.ECONNRESET}, true},
		{"eof", fmt.Errorf("reading reply: %w", io.EOF), true},
		{"loading", replyError("LOADING Redis is loading the dataset in memory"), true},
		{"readonly", readonly, true},
		{"read timeout", timeout, false},
		{"deadline", context.DeadlineExceeded, false},
		{"script error", scriptErr, false},
	} {
		if c.err == nil {
			t.Fatalf("%s: no error to classify", c.name)
		}
		if got := outageEvidence(c.err); got != c.want {
			t.Errorf("outageEvidence(%s: %v) = %v, want %v", c.name, c.err, got, c.want)
		}
	}
}
