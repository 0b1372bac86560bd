package caddymodule

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/modelrouter/modelrouter/internal/redistest"
)

// orderUpstream answers every request at once, except those whose "user"
// starts with "hold" (they stay until their client leaves), and records the
// order of the "user" fields it saw (all but plain "hold").
type orderUpstream struct {
	srv   *httptest.Server
	mu    sync.Mutex
	order []string
	held  chan struct{}
}

func newOrderUpstream(t *testing.T) *orderUpstream {
	u := &orderUpstream{held: make(chan struct{}, 1)}
	u.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var body struct{ User string }
		raw, _ := io.ReadAll(r.Body)
		_ = json.Unmarshal(raw, &body)
		if body.User != "hold" {
			u.mu.Lock()
			u.order = append(u.order, body.User)
			u.mu.Unlock()
		}
		if strings.HasPrefix(body.User, "hold") {
			u.held <- struct{}{}
			<-r.Context().Done()
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"object":"chat.completion","choices":[]}`)
	}))
	t.Cleanup(u.srv.Close)
	return u
}

func userBody(user string) string {
	return `{"model":"m","user":"` + user + `","messages":[{"role":"user","content":"hi"}]}`
}

// TestIntegrationPriorities: with the only slot taken, waiting requests are
// served by class (a high request that arrived later goes first), a
// sheddable request gets full_status at once instead of waiting, and an
// unknown class is the client's error.
func TestIntegrationPriorities(t *testing.T) {
	up := newOrderUpstream(t)
	g := startGateway(t, gatewayOptions{}, `
{{url "gw"}} {
	model_router {
		pool {{.Pool}}
		max_wait 30s
		priorities high normal low sheddable
		priority_header X-Priority
		backend only {{index .Up "only"}} {
			models m
			max_inflight 1
		}
	}
}
`, map[string]string{"only": up.srv.URL})
	url := g.url("gw") + "/v1/chat/completions"
	ctx, release := context.WithCancel(context.Background())
	t.Cleanup(release) // before the upstream closes: a failing test ends rather than hangs
	holder := make(chan result, 1)
	go func() { holder <- send(ctx, http.DefaultClient, url, userBody("hold")) }()
	<-up.held

	depth := metricValue(t, theMetrics().queueDepth)
	results := make(chan result, 3)
	for _, tt := range []struct{ user, class string }{{"low", "low"}, {"normal", ""}, {"high", "HIGH"}} {
		go func() {
			results <- send(context.Background(), http.DefaultClient, url, userBody(tt.user), "X-Priority", tt.class)
		}()
		want := depth + 1
		eventually(t, drainTimeout, tt.user+" to wait", func() bool { return metricValue(t, theMetrics().queueDepth) == want })
		depth = want
	}
	// Sheddable: refused at once, not queued.
	resp, body := post(t, url, userBody("shed"), "X-Priority", "sheddable")
	if resp.StatusCode != http.StatusServiceUnavailable || parseAPIError(t, body).Code != "capacity_exhausted" || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("sheddable: %d %s, want 503 capacity_exhausted with Retry-After", resp.StatusCode, body)
	}
	resp, body = post(t, url, userBody("x"), "X-Priority", "urgent")
	if resp.StatusCode != http.StatusBadRequest || parseAPIError(t, body).Code != "unknown_priority" {
		t.Fatalf("unknown class: %d %s", resp.StatusCode, body)
	}
	release()
	<-holder
	for range 3 {
		if r := <-results; r.status != 200 {
			t.Fatalf("a waiter got %d: %s", r.status, r.body)
		}
	}
	up.mu.Lock()
	defer up.mu.Unlock()
	if got := up.order; len(got) != 3 || got[0] != "high" || got[1] != "normal" || got[2] != "low" {
		t.Fatalf("served in the order %v, want high, normal, low", got)
	}
	g.waitIdle()
}

// TestIntegrationOptimalAssigns: with strategy optimal, a freed slot goes to
// the waiting request it is worth most to, not to the first in line. Both
// backends are held; a coding request waits first, then a chat request. The
// chat-only backend frees first: first come, first served would hand it to
// the coding request (and the coding backend, freed next, to the chat one);
// the assignment gives it to the chat request and keeps the coding backend
// for the coding one. With Redis the fleet-wide queue assigns the same way.
func TestIntegrationOptimalAssigns(t *testing.T) {
	for _, store := range []string{"memory", "redis"} {
		t.Run(store, func(t *testing.T) {
			redisBlock := ""
			if store == "redis" {
				redisBlock = "redis " + redistest.Start(t).URL()
			}
			coder, chat := newOrderUpstream(t), newOrderUpstream(t)
			g := startGateway(t, gatewayOptions{}, `
{{url "gw"}} {
	model_router {
		pool {{.Pool}}
		strategy optimal
		max_wait 30s
		`+redisBlock+`
		backend coder {{index .Up "coder"}} {
			models m
			capabilities chat=0.9 coding=0.9
			max_inflight 1
		}
		backend chat {{index .Up "chat"}} {
			models m
			capabilities chat=0.8 coding=0.1
			max_inflight 1
		}
	}
}
`, map[string]string{"coder": coder.srv.URL, "chat": chat.srv.URL})
			url := g.url("gw") + "/v1/chat/completions"
			// Hold both: the first holder goes to coder (the better chat
			// backend), the second to chat.
			// Cleanups run before the upstreams close (which waits for
			// held requests): a failing test ends rather than hangs.
			holdCoder, releaseCoder := context.WithCancel(context.Background())
			t.Cleanup(releaseCoder)
			holdChat, releaseChat := context.WithCancel(context.Background())
			t.Cleanup(releaseChat)
			held := make(chan result, 2)
			go func() { held <- send(holdCoder, http.DefaultClient, url, userBody("hold")) }()
			<-coder.held
			go func() { held <- send(holdChat, http.DefaultClient, url, userBody("hold")) }()
			<-chat.held

			depth := metricValue(t, theMetrics().queueDepth)
			coding := make(chan result, 1)
			chatCtx, releaseChatRequest := context.WithCancel(context.Background())
			t.Cleanup(releaseChatRequest)
			chatDone := make(chan result, 1)
			for _, tt := range []struct {
				user, task string
				ctx        context.Context
				out        chan result
			}{
				{"coding-request", "coding", context.Background(), coding},
				// Held once served, so that the chat backend stays busy.
				{"hold-chat-request", "chat", chatCtx, chatDone},
			} {
				go func() {
					tt.out <- send(tt.ctx, http.DefaultClient, url, userBody(tt.user), "X-Model-Router-Capability", tt.task)
				}()
				want := depth + 1
				eventually(t, drainTimeout, tt.user+" to wait", func() bool { return metricValue(t, theMetrics().queueDepth) == want })
				depth = want
			}
			order := func(u *orderUpstream) []string {
				u.mu.Lock()
				defer u.mu.Unlock()
				return append([]string(nil), u.order...)
			}
			releaseChat()
			<-chat.held
			if got := order(chat); len(got) != 1 || got[0] != "hold-chat-request" {
				t.Fatalf("the freed chat backend served %v, want the chat request (the coding one waited longer but suits it less)", got)
			}
			releaseCoder()
			if r := <-coding; r.status != 200 {
				t.Fatalf("coding request: %d %s", r.status, r.body)
			}
			if got := order(coder); len(got) != 1 || got[0] != "coding-request" {
				t.Fatalf("the coder backend served %v, want the coding request", got)
			}
			releaseChatRequest()
			<-chatDone
			<-held
			<-held
			g.waitIdle()
		})
	}
}
