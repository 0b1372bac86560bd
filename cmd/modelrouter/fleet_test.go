package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/modelrouter/modelrouter/internal/redistest"
)

// The fleet tests run three gateway processes (the real binary) sharing one
// real redis-server, in front of stub backends that record their peak
// concurrency: the number a backend's max_inflight promises to bound.

const fleetLease = time.Second

// stub is an OpenAI-ish backend that counts the requests inside it at once.
type stub struct {
	srv       *httptest.Server
	cur, peak atomic.Int64
	served    atomic.Int64
	total     atomic.Int64 // requests that arrived
	delay     atomic.Int64 // nanoseconds each request takes
	hold      atomic.Bool  // when set, requests stay until the client goes
	fail      atomic.Int32 // when set, the status every request gets at once
}

func newStub(t *testing.T, delay time.Duration) *stub {
	s := &stub{}
	s.delay.Store(int64(delay))
	s.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		s.total.Add(1)
		if code := s.fail.Load(); code != 0 {
			w.WriteHeader(int(code))
			return
		}
		n := s.cur.Add(1)
		defer s.cur.Add(-1)
		for {
			p := s.peak.Load()
			if n <= p || s.peak.CompareAndSwap(p, n) {
				break
			}
		}
		if s.hold.Load() {
			<-r.Context().Done()
			return
		}
		select {
		case <-time.After(time.Duration(s.delay.Load())):
		case <-r.Context().Done():
			return
		}
		s.served.Add(1)
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}]}`)
	}))
	t.Cleanup(s.srv.Close)
	return s
}

// gateway is one replica: the modelrouter binary as its own process.
type gateway struct {
	cmd   *exec.Cmd
	base  string
	admin string // admin endpoint base URL; "" when off
	model string // the model chat asks for; "m" when empty
	logs  *syncBuffer
	done  chan struct{}
}

type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

type fleetBackend struct {
	stub *stub
	cap  int
}

// fleetOptions are what a fleet test changes in its replicas' config.
type fleetOptions struct {
	admin  bool     // an admin endpoint (metrics) on a free port
	router []string // extra model_router lines
}

func startGateway(t *testing.T, redisURL string, backends []fleetBackend, opts ...fleetOptions) *gateway {
	t.Helper()
	var o fleetOptions
	if len(opts) > 0 {
		o = opts[0]
	}
	dir := t.TempDir()
	port := freePort(t)
	admin := "off"
	adminBase := ""
	if o.admin {
		ap := freePort(t)
		admin = "127.0.0.1:" + ap
		adminBase = "http://127.0.0.1:" + ap
	}
	var b strings.Builder
	fmt.Fprintf(&b, "{\n\tadmin %s\n\tpersist_config off\n\tmetrics\n}\nhttp://127.0.0.1:%s {\n\tmodel_router {\n", admin, port)
	fmt.Fprintf(&b, "\t\tstrategy least_load\n\t\tpool fleet\n\t\tmax_wait 15s\n\t\tmax_queue 2000\n")
	for _, line := range o.router {
		fmt.Fprintf(&b, "\t\t%s\n", line)
	}
	fmt.Fprintf(&b, "\t\tredis %s {\n\t\t\tlease %s\n\t\t\theartbeat 200ms\n\t\t\ttimeout 50ms\n\t\t}\n", redisURL, fleetLease)
	for i, be := range backends {
		fmt.Fprintf(&b, "\t\tbackend b%d %s {\n\t\t\tmodels m\n\t\t\tmax_inflight %d\n\t\t}\n", i, be.stub.srv.URL, be.cap)
	}
	b.WriteString("\t}\n}\n")
	config := filepath.Join(dir, "Caddyfile")
	if err := os.WriteFile(config, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	g := &gateway{base: "http://127.0.0.1:" + port, admin: adminBase, logs: &syncBuffer{}, done: make(chan struct{})}
	g.cmd = exec.Command(gatewayBin, "run", "--config", config)
	g.cmd.Env = append(os.Environ(), "HOME="+dir, "XDG_DATA_HOME="+dir, "XDG_CONFIG_HOME="+dir)
	g.cmd.Stdout, g.cmd.Stderr = g.logs, g.logs
	if err := g.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = g.cmd.Wait(); close(g.done) }()
	t.Cleanup(func() {
		g.kill()
		if t.Failed() {
			t.Logf("gateway %s output:\n%s", g.base, g.logs.String())
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get(g.base + "/v1/models")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return g
			}
		}
		select {
		case <-g.done:
			t.Fatalf("gateway exited at start:\n%s", g.logs.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("gateway did not come up: %v\n%s", err, g.logs.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// kill is kill -9: the replica gets no chance to release anything.
func (g *gateway) kill() {
	_ = g.cmd.Process.Signal(syscall.SIGKILL)
	<-g.done
}

var fleetClient = &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 256}, Timeout: 60 * time.Second}

func (g *gateway) chat(ctx context.Context) (int, error) {
	model := g.model
	if model == "" {
		model = "m"
	}
	req, _ := http.NewRequestWithContext(ctx, "POST", g.base+"/v1/chat/completions",
		strings.NewReader(`{"model":"`+model+`","messages":[{"role":"user","content":"hi"}]}`))
	req.Header.Set("Content-Type", "application/json")
	resp, err := fleetClient.Do(req)
	if err != nil {
		return 0, err
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		// The router's own answer says why: worth seeing in a failure.
		return resp.StatusCode, fmt.Errorf("%.200s", body)
	}
	return resp.StatusCode, nil
}

func startFleet(t *testing.T, srv *redistest.Server, backends []fleetBackend, n int, opts ...fleetOptions) []*gateway {
	gws := make([]*gateway, n)
	for i := range gws {
		gws[i] = startGateway(t, srv.URL(), backends, opts...)
	}
	waitFleetInSync(t, srv, n)
	return gws
}

// waitFleetInSync waits until the registry in Redis shows n replicas, each of
// which has beaten since all n were registered (so each has seen the others)
// with a sync mark equal to the pool's epoch (all its leases are in Redis:
// every replica then trusts the shared counts).
func waitFleetInSync(t *testing.T, srv *redistest.Server, n int) {
	t.Helper()
	c := srv.Client()
	ctx := context.Background()
	var allSince int64 // Redis ms by which all n were registered
	waitFor(t, fmt.Sprintf("%d replicas in sync in the registry", n), 30*time.Second, func() bool {
		beats, err := c.ZRangeWithScores(ctx, "mr:{fleet}:replicas", 0, -1).Result()
		if err != nil || len(beats) != n {
			allSince = 0
			return false
		}
		if allSince == 0 {
			tm, err := c.Time(ctx).Result()
			if err != nil {
				return false
			}
			allSince = tm.UnixMilli()
			return false
		}
		epoch, err := c.Get(ctx, "mr:{fleet}:epoch").Result()
		if err != nil {
			return false
		}
		marks, err := c.HGetAll(ctx, "mr:{fleet}:replica-sync").Result()
		if err != nil {
			return false
		}
		for _, b := range beats {
			id, _ := b.Member.(string)
			if int64(b.Score) <= allSince || marks[id] != epoch {
				return false
			}
		}
		return true
	})
}

// leaseCount sums the live leases the pool holds in Redis.
func leaseCount(t *testing.T, srv *redistest.Server) int64 {
	c := srv.Client()
	ctx := context.Background()
	keys, err := c.Keys(ctx, "mr:{fleet}:lease:*").Result()
	if err != nil {
		t.Fatalf("listing lease keys: %v", err)
	}
	var total int64
	now := time.Now().UnixMilli()
	for _, k := range keys {
		n, err := c.ZCount(ctx, k, fmt.Sprint(now), "+inf").Result()
		if err != nil {
			t.Fatalf("counting %s: %v", k, err)
		}
		total += n
	}
	return total
}

func waitFor(t *testing.T, what string, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestFleetNeverExceedsCapacity: bursts spread over three replicas never put
// more than max_inflight requests on any backend, and every request is served.
func TestFleetNeverExceedsCapacity(t *testing.T) {
	srv := redistest.Start(t)
	backends := []fleetBackend{{newStub(t, 30*time.Millisecond), 3}, {newStub(t, 30*time.Millisecond), 2}}
	gws := startFleet(t, srv, backends, 3)

	const clients, each = 60, 4
	var wg sync.WaitGroup
	var failures atomic.Int64
	for c := 0; c < clients; c++ {
		wg.Add(1)
		go func(c int) {
			defer wg.Done()
			for i := 0; i < each; i++ {
				code, err := gws[(c+i)%len(gws)].chat(context.Background())
				if err != nil || code != 200 {
					failures.Add(1)
					t.Logf("request: status %d err %v", code, err)
				}
			}
		}(c)
	}
	wg.Wait()
	if f := failures.Load(); f != 0 {
		t.Fatalf("%d of %d requests failed", f, clients*each)
	}
	for i, b := range backends {
		t.Logf("backend b%d: peak %d, cap %d, served %d", i, b.stub.peak.Load(), b.cap, b.stub.served.Load())
		if p := b.stub.peak.Load(); p > int64(b.cap) {
			t.Errorf("backend b%d had %d requests in flight at once, max_inflight %d", i, p, b.cap)
		}
	}
	if served := backends[0].stub.served.Load() + backends[1].stub.served.Load(); served != clients*each {
		t.Errorf("backends served %d requests, want %d (none lost or doubled)", served, clients*each)
	}
	waitFor(t, "every lease released", 5*time.Second, func() bool { return leaseCount(t, srv) == 0 })
}

// TestFleetReplicaKilledHoldingSlots: a replica killed with kill -9 while it
// holds every slot blocks the others only until its leases expire.
func TestFleetReplicaKilledHoldingSlots(t *testing.T) {
	srv := redistest.Start(t)
	st := newStub(t, 10*time.Millisecond)
	gws := startFleet(t, srv, []fleetBackend{{st, 2}}, 3)

	st.hold.Store(true)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for i := 0; i < 2; i++ {
		go func() { _, _ = gws[0].chat(ctx) }()
	}
	waitFor(t, "replica 0 to hold both slots", 10*time.Second, func() bool { return st.cur.Load() == 2 })
	st.hold.Store(false)

	// Replica 1's request must wait: the fleet is full.
	result := make(chan error, 1)
	go func() {
		code, err := gws[1].chat(context.Background())
		if err == nil && code != 200 {
			err = fmt.Errorf("status %d", code)
		}
		result <- err
	}()
	// It is in the fleet's line (its ticket in Redis) and not served.
	waitFor(t, "replica 1's request to wait in the fleet queue", 10*time.Second, func() bool {
		n, err := srv.Client().HLen(context.Background(), "mr:{fleet}:tickets").Result()
		return err == nil && n == 1
	})
	select {
	case err := <-result:
		t.Fatalf("replica 1 was served while replica 0 held every slot (err %v)", err)
	default:
	}

	killed := time.Now()
	gws[0].kill()
	select {
	case err := <-result:
		if err != nil {
			t.Fatalf("replica 1's request after the kill: %v", err)
		}
	case <-time.After(10 * fleetLease):
		t.Fatalf("replica 1 still not served %v after replica 0 was killed (lease %v)", 10*fleetLease, fleetLease)
	}
	t.Logf("capacity back %v after kill -9 (lease %v, heartbeat 200ms)", time.Since(killed).Round(time.Millisecond), fleetLease)
	if p := st.peak.Load(); p > 2 {
		t.Errorf("peak %d over max_inflight 2", p)
	}
	waitFor(t, "every lease released", 5*time.Second, func() bool { return leaseCount(t, srv) == 0 })
}

// runLoad keeps workers busy on every replica until stop is closed and
// returns the statuses seen; served counts the requests answered 200 so far.
func runLoad(gws []*gateway, workers int, stop <-chan struct{}) (served *atomic.Int64, wait func() (ok, failed int64, errs []string)) {
	var wg sync.WaitGroup
	var okN, failN atomic.Int64
	var mu sync.Mutex
	var errs []string
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				code, err := gws[(w+i)%len(gws)].chat(context.Background())
				if err != nil || code != 200 {
					failN.Add(1)
					mu.Lock()
					if len(errs) < 10 {
						errs = append(errs, fmt.Sprintf("status %d err %v", code, err))
					}
					mu.Unlock()
					continue
				}
				okN.Add(1)
			}
		}(w)
	}
	return &okN, func() (int64, int64, []string) {
		wg.Wait()
		return okN.Load(), failN.Load(), errs
	}
}

// servedMore waits until served has grown by n.
func servedMore(t *testing.T, what string, served *atomic.Int64, n int64) {
	t.Helper()
	from := served.Load()
	waitFor(t, what, 60*time.Second, func() bool { return served.Load() >= from+n })
}

// TestFleetRedisRestartUnderLoad: Redis dies (SHUTDOWN NOSAVE) and comes back
// empty while three replicas serve; no request fails because of it, the cap
// holds through both transitions within the bounds the store states, and the
// counts resync.
func TestFleetRedisRestartUnderLoad(t *testing.T) {
	srv := redistest.Start(t)
	backends := []fleetBackend{{newStub(t, 20*time.Millisecond), 4}, {newStub(t, 20*time.Millisecond), 4}}
	gws := startFleet(t, srv, backends, 3)

	stop := make(chan struct{})
	served, wait := runLoad(gws, 24, stop)
	servedMore(t, "load through redis", served, 200)
	srv.Stop()
	stopped := time.Now()
	// Served during the outage, for longer than a lease: every lease of the
	// last contact has expired, each replica is down to its share.
	servedMore(t, "load during the outage", served, 200)
	waitFor(t, "an outage longer than a lease", 30*time.Second, func() bool { return time.Since(stopped) > fleetLease*3/2 })
	// The way into local mode is over (its requests take 20ms): the peaks
	// from here on are those of the way back.
	entry := make([]int64, len(backends))
	for i, b := range backends {
		entry[i] = b.stub.peak.Swap(b.stub.cur.Load())
	}
	srv.Restart()
	// Back to shared counts: every replica re-added its leases and trusts
	// Redis again.
	waitFleetInSync(t, srv, len(gws))
	servedMore(t, "load after the resync", served, 200)
	close(stop)
	ok, failed, errs := wait()
	t.Logf("served %d requests across the outage", ok)
	if failed != 0 {
		t.Fatalf("%d requests failed across the Redis restart: %v", failed, errs)
	}
	// On the way into local mode each replica knows what the others held
	// at its last reply from Redis; slots they took after it are unknown to
	// it, so it may admit up to its share on top of them. The replica that
	// heard from Redis last missed nothing, so the overshoot is at most the
	// other replicas' shares: cap − ⌊cap ÷ replicas⌋ (loadstate.RedisStore's
	// doc). On the way back every replica admits by its share until all are
	// back in Redis, then Redis decides: no overshoot at all.
	for i, b := range backends {
		entryBound := 2*b.cap - b.cap/len(gws)
		back := b.stub.peak.Load()
		t.Logf("backend b%d: cap %d; peak on the way into local mode %d (bound %d), on the way back %d (bound %d)",
			i, b.cap, entry[i], entryBound, back, b.cap)
		if entry[i] > int64(entryBound) {
			t.Errorf("backend b%d had %d requests in flight at once entering local mode, over the bound %d (max_inflight %d)", i, entry[i], entryBound, b.cap)
		}
		if back > int64(b.cap) {
			t.Errorf("backend b%d had %d requests in flight at once on the way back from the outage, max_inflight %d", i, back, b.cap)
		}
	}
	waitFor(t, "every lease released", 5*time.Second, func() bool { return leaseCount(t, srv) == 0 })
}

// TestFleetRedisPaused: with Redis alive but not answering (CLIENT PAUSE),
// requests keep being served without waiting out the pause: every one of them
// completes before the pause is over, as Redis itself reports it.
func TestFleetRedisPaused(t *testing.T) {
	srv := redistest.Start(t)
	backends := []fleetBackend{{newStub(t, 10*time.Millisecond), 6}, {newStub(t, 10*time.Millisecond), 6}}
	gws := startFleet(t, srv, backends, 3)

	const pause = 10 * time.Second
	over := srv.PauseWatch(pause)
	paused := time.Now()
	var wg sync.WaitGroup
	var failures, late atomic.Int64
	for w := 0; w < 12; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; i < 10; i++ {
				code, err := gws[(w+i)%len(gws)].chat(context.Background())
				select {
				case <-over:
					late.Add(1)
				default:
				}
				if err != nil || code != 200 {
					failures.Add(1)
				}
			}
		}(w)
	}
	wg.Wait()
	t.Logf("120 requests during a %v pause took %v", pause, time.Since(paused).Round(time.Millisecond))
	if failures.Load() != 0 {
		t.Fatalf("%d requests failed while Redis was paused", failures.Load())
	}
	if n := late.Load(); n != 0 {
		t.Fatalf("%d requests completed only after the pause was over: they waited on the paused Redis", n)
	}
	for i, b := range backends {
		if p := b.stub.peak.Load(); p > int64(b.cap) {
			t.Errorf("backend b%d peaked at %d, max_inflight %d", i, p, b.cap)
		}
	}
	// CLIENT UNPAUSE would itself wait behind the pause; let it run out.
	<-over
	waitFor(t, "every lease released", 10*time.Second, func() bool { return leaseCount(t, srv) == 0 })
}

// metric reads one series of a replica's /metrics (admin endpoint) by its
// full name with labels, e.g. `model_router_redis_calls_total{kind="health_received",pool="fleet"}`;
// 0 when absent.
func (g *gateway) metric(t *testing.T, series string) float64 {
	t.Helper()
	resp, err := http.Get(g.admin + "/metrics")
	if err != nil {
		t.Fatalf("scraping %s: %v", g.admin, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(body), "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			var f float64
			fmt.Sscan(v, &f)
			return f
		}
	}
	return 0
}

// TestFleetSharesPassiveHealth: failures one replica sees put the backend in
// cooldown on every replica: once replica 1 has heard replica 0's evidence,
// none of its requests tries the failing backend, though it never saw it fail.
func TestFleetSharesPassiveHealth(t *testing.T) {
	srv := redistest.Start(t)
	bad, good := newStub(t, 5*time.Millisecond), newStub(t, 5*time.Millisecond)
	gws := startFleet(t, srv, []fleetBackend{{bad, 8}, {good, 8}}, 2,
		fleetOptions{admin: true, router: []string{"max_fails 2", "fail_cooldown 1m", "retries 1"}})
	bad.fail.Store(http.StatusServiceUnavailable)
	// Through replica 0 until bad has failed twice there (each request is
	// retried on good, so clients see no error).
	for bad.total.Load() < 2 {
		if code, err := gws[0].chat(context.Background()); err != nil || code != 200 {
			t.Fatalf("replica 0: status %d err %v", code, err)
		}
	}
	const heard = `model_router_redis_calls_total{kind="health_received",pool="fleet"}`
	waitFor(t, "replica 1 to hear of both failures", 10*time.Second, func() bool { return gws[1].metric(t, heard) >= 2 })
	before := bad.total.Load()
	for i := range 10 {
		if code, err := gws[1].chat(context.Background()); err != nil || code != 200 {
			t.Fatalf("replica 1, request %d: status %d err %v", i, code, err)
		}
	}
	if n := bad.total.Load() - before; n != 0 {
		t.Fatalf("replica 1 sent %d requests to the backend replica 0 found failing", n)
	}
	if n := good.served.Load(); n < 10 {
		t.Fatalf("the healthy backend served %d", n)
	}
}
