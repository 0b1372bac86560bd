package caddymodule

import (
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/modelrouter/modelrouter/internal/redistest"
	"github.com/modelrouter/modelrouter/loadstate"
)

// TestIntegrationRedisStoreAndAlert: with a redis block the handler routes
// through the shared store in a real Redis; when Redis goes away requests
// keep being served from local state and the degraded metric (the alert)
// rises; when Redis returns it falls again and the counts are shared anew.
func TestIntegrationRedisStoreAndAlert(t *testing.T) {
	srv := redistest.Start(t)
	up := newUpstream(t, "a", 0, false)
	g := startGateway(t, gatewayOptions{}, `
{{url "gw"}} {
	model_router {
		pool {{.Pool}}
		redis `+srv.URL()+` {
			lease 1s
			heartbeat 100ms
			timeout 50ms
		}
		backend a {{index .Up "a"}} {
			models m
			max_inflight 2
		}
	}
}
`, map[string]string{"a": up.srv.URL})
	url := g.url("gw") + "/v1/chat/completions"
	metric := func(desc *prometheus.Desc, extra ...string) float64 {
		t.Helper()
		labels := map[string]string{"pool": g.pool}
		for i := 0; i+1 < len(extra); i += 2 {
			labels[extra[i]] = extra[i+1]
		}
		v, ok := storeMetric(t, desc, labels)
		if !ok {
			t.Fatalf("no series %s %v", desc, labels)
		}
		return v
	}
	serve := func(step string) {
		t.Helper()
		resp, body := post(t, url, chatBody("m"))
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("%s: status %d: %s", step, resp.StatusCode, body)
		}
	}

	serve("through redis")
	if v := metric(storeDegradedDesc); v != 0 {
		t.Fatalf("degraded = %v with Redis up", v)
	}
	if v := metric(storeModeDesc, "mode", "redis"); v != 1 {
		t.Fatalf("mode redis = %v with Redis up", v)
	}
	if v := metric(redisCallsDesc, "kind", "acquire"); v < 1 {
		t.Fatalf("acquire calls = %v after a routed request", v)
	}
	keys, err := srv.Client().Keys(t.Context(), "mr:{"+g.pool+"}:*").Result()
	if err != nil || len(keys) == 0 {
		t.Fatalf("the pool left no keys in Redis (%v): %v", err, keys)
	}

	srv.Stop()
	for i := 0; i < 5; i++ {
		serve("redis down") // this replica alone: its share is the whole capacity
	}
	eventually(t, 5*time.Second, "the degraded alert", func() bool { return metric(storeDegradedDesc) == 1 })
	if v := metric(storeModeDesc, "mode", "local"); v != 1 {
		t.Fatalf("mode local = %v with Redis down", v)
	}

	srv.Restart()
	eventually(t, 10*time.Second, "the alert to clear after Redis returned", func() bool { return metric(storeDegradedDesc) == 0 })
	serve("redis back")
	g.waitIdle()
	if v, ok := storeMetric(t, inflightDesc, map[string]string{"pool": g.pool, "backend": "a"}); !ok || v != 0 {
		t.Fatalf("in-flight after the outage = %v (series found %v), want 0", v, ok)
	}
}

// TestIntegrationRedisLongRequestKeepsItsLease: a request that runs for
// several lease lifetimes keeps its slot in Redis (the handler renews it), so
// no other request is admitted on top of it, and the slot is gone once it
// ends.
func TestIntegrationRedisLongRequestKeepsItsLease(t *testing.T) {
	const lease = 600 * time.Millisecond
	srv := redistest.Start(t)
	up := newUpstream(t, "a", 0, true)
	g := startGateway(t, gatewayOptions{}, `
{{url "gw"}} {
	model_router {
		pool {{.Pool}}
		max_wait 200ms
		redis `+srv.URL()+` {
			lease `+lease.String()+`
			heartbeat 100ms
		}
		backend a {{index .Up "a"}} {
			models m
			max_inflight 1
		}
	}
}
`, map[string]string{"a": up.srv.URL})
	url := g.url("gw") + "/v1/chat/completions"
	leaseKey := "mr:{" + g.pool + "}:lease:a"
	live := func() int64 {
		n, err := srv.Client().ZCount(t.Context(), leaseKey, strconv.FormatInt(time.Now().UnixMilli(), 10), "+inf").Result()
		if err != nil {
			t.Fatalf("counting leases: %v", err)
		}
		return n
	}

	done := make(chan int, 1)
	go func() {
		resp, _ := post(t, url, chatBody("m"))
		done <- resp.StatusCode
	}()
	eventually(t, 5*time.Second, "the long request to reach the backend", func() bool { return up.cur.Load() == 1 })

	// Redis time well past the first lease's expiry (several renewals due),
	// the lease is still live in Redis...
	members, err := srv.Client().ZRangeWithScores(t.Context(), leaseKey, 0, -1).Result()
	if err != nil || len(members) != 1 {
		t.Fatalf("leases of the long request: %v, %v; want one", members, err)
	}
	firstExpiry := int64(members[0].Score)
	eventually(t, 30*time.Second, "Redis time three leases past the first expiry", func() bool {
		tm, err := srv.Client().Time(t.Context()).Result()
		return err == nil && tm.UnixMilli() > firstExpiry+3*lease.Milliseconds()
	})
	if n := live(); n != 1 {
		t.Fatalf("%d live leases three leases after the first one expired, want 1 (renewed)", n)
	}
	// ...so the fleet is full: another request waits out max_wait.
	resp, body := post(t, url, chatBody("m"))
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("second request: status %d (%s), want 503 while the long one holds the only slot", resp.StatusCode, body)
	}
	if p := up.peak.Load(); p != 1 {
		t.Fatalf("backend peak %d, want 1", p)
	}

	up.openGate()
	if code := <-done; code != http.StatusOK {
		t.Fatalf("long request: status %d", code)
	}
	eventually(t, 5*time.Second, "the lease to be released", func() bool { return live() == 0 })
}

// TestRedisClientKeyHidesSecrets: the key that shares Redis clients (and,
// through it, stores) identifies the connection without carrying its
// credentials, and does not change with the per-call timeout.
func TestRedisClientKeyHidesSecrets(t *testing.T) {
	cfg := loadstate.RedisConfig{URL: "redis://user:hunter2-secret@127.0.0.1:7000/1", Password: "other-secret",
		MasterName: "m", SentinelAddrs: []string{"127.0.0.1:26379"}, SentinelPassword: "sentinel-secret", Timeout: 50 * time.Millisecond}
	key := redisClientKey(cfg)
	for _, secret := range []string{"hunter2", "other-secret", "sentinel-secret", "user:"} {
		if strings.Contains(key, secret) {
			t.Errorf("client key %q contains %q", key, secret)
		}
	}
	slower := cfg
	slower.Timeout = time.Second
	if redisClientKey(slower) != key {
		t.Error("the timeout changes the client key: a reload changing it would build a new client and store")
	}
	rotated := cfg
	rotated.Password = "rotated-secret"
	if redisClientKey(rotated) == key {
		t.Error("a new password keeps the client key: the old client would be reused with the old password")
	}
}
