package caddymodule

import (
	"context"
	"net/http"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/modelrouter/modelrouter/internal/redistest"
	"github.com/redis/go-redis/v9"
)

// redisReloadCaddyfile is a router with one gated backend of max_inflight 1,
// sharing state in Redis, with the given redis block options.
func redisReloadCaddyfile(redisURL, lease, heartbeat, timeout, onDown string) string {
	return `
{{url "gw"}} {
	model_router {
		pool {{.Pool}}
		max_wait 300ms
		response_header_timeout 20s   # a second request wrongly admitted fails in time
		redis ` + redisURL + ` {
			lease ` + lease + `
			heartbeat ` + heartbeat + `
			timeout ` + timeout + `
			on_redis_down ` + onDown + `
		}
		backend a {{index .Up "a"}} {
			models m
			max_inflight 1
		}
	}
}
`
}

// TestIntegrationRedisReloadKeepsLeases: a reload that changes only one of
// the redis block's tunables (timeout, lease, heartbeat, on_redis_down), or
// the password (rotated: the same Redis, a new client and store), while a
// request is in flight keeps that request's lease in Redis throughout (it is
// renewed past its first expiry), so a second request is not admitted on top
// of it; the first one completes and releases its slot.
func TestIntegrationRedisReloadKeepsLeases(t *testing.T) {
	srv := redistest.Start(t)
	plain := srv.Client()
	// A second server whose default user accepts two passwords, as during a
	// rotation.
	rotating := redistest.Start(t)
	if err := rotating.Client().Do(context.Background(), "ACL", "SETUSER", "default", "on", ">old-secret", ">new-secret").Err(); err != nil {
		t.Fatalf("setting passwords: %v", err)
	}
	authed := redis.NewClient(&redis.Options{Addr: rotating.Addr, Password: "old-secret", MaxRetries: -1, DisableIdentity: true})
	t.Cleanup(func() { _ = authed.Close() })
	rotatingURL := func(password string) string { return "redis://:" + password + "@" + rotating.Addr + "/0" }

	base := []string{"1s", "100ms", "100ms", "fail_local"} // lease, heartbeat, timeout, on_redis_down
	tuned := func(index int, value string) (string, string) {
		changed := append([]string(nil), base...)
		changed[index] = value
		return redisReloadCaddyfile(srv.URL(), base[0], base[1], base[2], base[3]),
			redisReloadCaddyfile(srv.URL(), changed[0], changed[1], changed[2], changed[3])
	}
	type reloadCase struct {
		name          string
		before, after string
		direct        redis.UniversalClient
	}
	var cases []reloadCase
	for _, c := range []struct {
		name  string
		index int
		value string
	}{
		{"timeout", 2, "150ms"},
		{"lease", 0, "600ms"},
		{"heartbeat", 1, "300ms"},
		{"on_redis_down", 3, "fail_closed"},
	} {
		before, after := tuned(c.index, c.value)
		cases = append(cases, reloadCase{c.name, before, after, plain})
	}
	cases = append(cases, reloadCase{"password",
		redisReloadCaddyfile(rotatingURL("old-secret"), base[0], base[1], base[2], base[3]),
		redisReloadCaddyfile(rotatingURL("new-secret"), base[0], base[1], base[2], base[3]),
		authed})

	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			up := newUpstream(t, "a", 0, true)
			g := startGateway(t, gatewayOptions{admin: true}, c.before, map[string]string{"a": up.srv.URL})
			url := g.url("gw") + "/v1/chat/completions"
			ctx := context.Background()
			direct := c.direct
			leaseKey := "mr:{" + g.pool + "}:lease:a"
			redisNow := func() int64 {
				tm, err := direct.Time(ctx).Result()
				if err != nil {
					t.Fatalf("redis TIME: %v", err)
				}
				return tm.UnixMilli()
			}
			live := func() int64 {
				n, err := direct.ZCount(ctx, leaseKey, "("+strconv.FormatInt(redisNow(), 10), "+inf").Result()
				if err != nil {
					t.Fatalf("counting leases: %v", err)
				}
				return n
			}

			first := make(chan int, 1)
			go func() {
				resp, _ := post(t, url, chatBody("m"))
				first <- resp.StatusCode
			}()
			eventually(t, 10*time.Second, "the first request to reach the backend", func() bool { return up.cur.Load() == 1 })
			members, err := direct.ZRangeWithScores(ctx, leaseKey, 0, -1).Result()
			if err != nil || len(members) != 1 {
				t.Fatalf("leases of the first request: %v, %v; want one", members, err)
			}
			firstExpiry := int64(members[0].Score)

			// Watch the lease from now until the request ends.
			var gone atomic.Int64
			stopWatch := make(chan struct{})
			watched := make(chan struct{})
			go func() {
				defer close(watched)
				for {
					select {
					case <-stopWatch:
						return
					case <-time.After(5 * time.Millisecond):
					}
					if n, err := direct.ZCount(ctx, leaseKey, "("+strconv.FormatInt(time.Now().UnixMilli(), 10), "+inf").Result(); err == nil && n == 0 {
						gone.Add(1)
					}
				}
			}()

			if err := g.reload(c.after); err != nil {
				t.Fatalf("reload changing %s: %v", c.name, err)
			}
			resp, body := post(t, url, chatBody("m"))
			if resp.StatusCode != http.StatusServiceUnavailable || parseAPIError(t, body).Code != "capacity_exhausted" {
				t.Fatalf("second request after the reload: status %d (%s), want 503 capacity_exhausted: the first one's slot was lost", resp.StatusCode, body)
			}
			if p := up.peak.Load(); p != 1 {
				t.Fatalf("backend peak %d, want 1", p)
			}
			// Past the first lease's expiry the request still holds it:
			// renewed across the reload, not dropped and not expired.
			eventually(t, 20*time.Second, "Redis time to pass the first lease's expiry", func() bool { return redisNow() > firstExpiry+100 })
			if n := live(); n != 1 {
				t.Fatalf("%d live leases while the first request still runs, want 1", n)
			}
			close(stopWatch)
			<-watched
			if n := gone.Load(); n != 0 {
				t.Fatalf("the lease was missing from Redis %d times while its request ran", n)
			}

			up.openGate()
			if code := <-first; code != http.StatusOK {
				t.Fatalf("first request: status %d", code)
			}
			eventually(t, 10*time.Second, "the first request's lease to be released", func() bool { return live() == 0 })
		})
	}
}
