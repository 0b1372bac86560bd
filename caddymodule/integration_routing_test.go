package caddymodule

import (
	"encoding/json"
	"io"
	"net/http"
	"sort"
	"strings"
	"testing"
)

// routingCaddyfile puts two echo backends behind the router, with the
// non-/v1 paths falling through to a respond handler. route keeps the order
// as written: respond is ordered before model_router by default.
const routingCaddyfile = `
{{url "gw"}} {
	route {
		model_router {
			pool {{.Pool}}
			strategy greedy
			backend alpha {{index .Up "alpha"}} {
				models small=vendor/small-v1 shared
				capabilities chat=0.9 coding=0.1
				max_inflight 4
			}
			backend beta {{index .Up "beta"}} {
				models big coder-x=org/coder-x-7b shared
				capabilities coding=0.95 chat=0.2
				max_inflight 4
			}
		}
		respond "fell through to the next handler" 200
	}
}
`

func startRoutingGateway(t *testing.T) (*gateway, *upstream, *upstream) {
	alpha := newUpstream(t, "alpha", 0, false)
	beta := newUpstream(t, "beta", 0, false)
	g := startGateway(t, gatewayOptions{}, routingCaddyfile, map[string]string{
		"alpha": alpha.srv.URL, "beta": beta.srv.URL,
	})
	return g, alpha, beta
}

func TestIntegrationRouting(t *testing.T) {
	g, alpha, beta := startRoutingGateway(t)
	backends := map[string]*upstream{"alpha": alpha, "beta": beta}

	tests := []struct {
		name       string
		body       string
		capability string
		wantBack   string
		wantModel  string // what the upstream must receive
	}{
		{name: "model on one backend", body: chatBody("big"), wantBack: "beta", wantModel: "big"},
		{name: "model renamed upstream", body: chatBody("small"), wantBack: "alpha", wantModel: "vendor/small-v1"},
		{name: "renamed model on the other backend", body: chatBody("coder-x"), wantBack: "beta", wantModel: "org/coder-x-7b"},
		{
			name:      "model key not first, spaces around the value",
			body:      `{"messages":[{"role":"user","content":"say \"model\": \"big\""}], "model" :  "small" ,"temperature":0.5}`,
			wantBack:  "alpha",
			wantModel: "vendor/small-v1",
		},
		{name: "shared model goes to the best at chat", body: chatBody("shared"), wantBack: "alpha", wantModel: "shared"},
		{name: "shared model by capability", body: chatBody("shared"), capability: "coding", wantBack: "beta", wantModel: "shared"},
		{name: "auto defaults to chat, first model upstream", body: chatBody("auto"), wantBack: "alpha", wantModel: "vendor/small-v1"},
		{name: "auto by capability", body: chatBody("auto"), capability: "coding", wantBack: "beta", wantModel: "big"},
		{name: "capability header is case-insensitive", body: chatBody("auto"), capability: " Coding ", wantBack: "beta", wantModel: "big"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := map[string]int64{"alpha": alpha.total.Load(), "beta": beta.total.Load()}
			hdr := []string{"Authorization", "Bearer client-secret-for-the-gateway"}
			if tt.capability != "" {
				hdr = append(hdr, capabilityHeader, tt.capability)
			}
			resp, body := post(t, g.url("gw")+"/v1/chat/completions", tt.body, hdr...)
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("status %d: %s", resp.StatusCode, body)
			}
			if got := resp.Header.Get(backendHeader); got != tt.wantBack {
				t.Errorf("%s = %q, want %q", backendHeader, got, tt.wantBack)
			}
			if n := len(resp.Header.Values(backendHeader)); n != 1 {
				t.Errorf("%d %s headers; the upstream's own must be dropped", n, backendHeader)
			}
			var answer struct {
				Model   string `json:"model"`
				Choices []struct {
					Message struct{ Content string } `json:"message"`
				} `json:"choices"`
			}
			if err := json.Unmarshal(body, &answer); err != nil {
				t.Fatalf("decoding answer: %v: %s", err, body)
			}
			if answer.Model != tt.wantModel {
				t.Errorf("upstream received model %q, want %q", answer.Model, tt.wantModel)
			}
			for name, u := range backends {
				want := before[name]
				if name == tt.wantBack {
					want++
				}
				if got := u.total.Load(); got != want {
					t.Errorf("backend %s saw %d requests, want %d", name, got, want)
				}
			}

			// What reached the upstream: the same body with only the model
			// changed, and neither the client's credentials nor our header.
			bodies, heads := backends[tt.wantBack].received()
			got, head := bodies[len(bodies)-1], heads[len(heads)-1]
			var sent, recv map[string]any
			if err := json.Unmarshal([]byte(tt.body), &sent); err != nil {
				t.Fatal(err)
			}
			if err := json.Unmarshal(got, &recv); err != nil {
				t.Fatalf("upstream received invalid JSON: %v: %s", err, got)
			}
			sent["model"] = tt.wantModel
			sentJSON, _ := json.Marshal(sent)
			recvJSON, _ := json.Marshal(recv)
			if string(sentJSON) != string(recvJSON) {
				t.Errorf("upstream body\n got %s\nwant %s", recvJSON, sentJSON)
			}
			if a := head.Get("Authorization"); a != "" {
				t.Errorf("the client's Authorization header reached the upstream: %q", a)
			}
			if c := head.Get(capabilityHeader); c != "" {
				t.Errorf("%s reached the upstream: %q", capabilityHeader, c)
			}
		})
	}
	g.waitIdle()
}

func TestIntegrationModelsAndPaths(t *testing.T) {
	g, alpha, beta := startRoutingGateway(t)

	t.Run("list models from config", func(t *testing.T) {
		resp, body := get(t, g.url("gw")+"/v1/models")
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("status %d: %s", resp.StatusCode, body)
		}
		var list struct {
			Object string `json:"object"`
			Data   []struct {
				ID     string `json:"id"`
				Object string `json:"object"`
			} `json:"data"`
		}
		if err := json.Unmarshal(body, &list); err != nil {
			t.Fatalf("decoding: %v: %s", err, body)
		}
		var ids []string
		for _, m := range list.Data {
			ids = append(ids, m.ID)
			if m.Object != "model" {
				t.Errorf("model %s has object %q", m.ID, m.Object)
			}
		}
		want := []string{"big", "coder-x", "shared", "small"}
		if list.Object != "list" || !sort.StringsAreSorted(ids) || strings.Join(ids, ",") != strings.Join(want, ",") {
			t.Errorf("got object %q ids %v, want list of %v", list.Object, ids, want)
		}
	})

	t.Run("one model", func(t *testing.T) {
		resp, body := get(t, g.url("gw")+"/v1/models/coder-x")
		if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), `"id":"coder-x"`) {
			t.Errorf("status %d: %s", resp.StatusCode, body)
		}
	})

	t.Run("one unknown model", func(t *testing.T) {
		resp, body := get(t, g.url("gw")+"/v1/models/org/coder-x-7b") // upstream names are not public
		if resp.StatusCode != http.StatusNotFound {
			t.Fatalf("status %d: %s", resp.StatusCode, body)
		}
		if e := parseAPIError(t, body); e.Code != "model_not_found" {
			t.Errorf("code %q", e.Code)
		}
	})

	for _, path := range []string{"/v1/audio/speech", "/v1", "/v1/chat/completions/extra"} {
		t.Run("unknown "+path, func(t *testing.T) {
			resp, body := post(t, g.url("gw")+path, chatBody("big"))
			if resp.StatusCode != http.StatusNotFound {
				t.Fatalf("status %d: %s", resp.StatusCode, body)
			}
			if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
				t.Errorf("Content-Type %q", ct)
			}
			if e := parseAPIError(t, body); e.Code != "unknown_url" {
				t.Errorf("code %q", e.Code)
			}
		})
	}

	for _, path := range []string{"/", "/healthz", "/v2/chat/completions", "/v1x"} {
		t.Run("next handler for "+path, func(t *testing.T) {
			resp, body := get(t, g.url("gw")+path)
			if resp.StatusCode != http.StatusOK || string(body) != "fell through to the next handler" {
				t.Errorf("status %d body %q", resp.StatusCode, body)
			}
		})
	}

	if n := alpha.total.Load() + beta.total.Load(); n != 0 {
		t.Errorf("backends saw %d requests; none of these should reach them", n)
	}
}

func get(t *testing.T, url string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	return do(t, req)
}

// TestIntegrationUpstreamCredentials: a backend's api_key (here from an
// environment placeholder) is what the upstream sees as Authorization; the
// client's own credentials for the gateway never reach an upstream. A body
// sent chunked, without a Content-Length, is routed like any other.
func TestIntegrationUpstreamCredentials(t *testing.T) {
	t.Setenv("MR_IT_UPSTREAM_KEY", "sk-upstream-from-env")
	keyed := newUpstream(t, "keyed", 0, false)
	g := startGateway(t, gatewayOptions{}, `
{{url "gw"}} {
	model_router {
		pool {{.Pool}}
		backend keyed {{index .Up "keyed"}} {
			models m=vendor/m
			max_inflight 2
			api_key {env.MR_IT_UPSTREAM_KEY}
		}
	}
}
`, map[string]string{"keyed": keyed.srv.URL})

	req, err := http.NewRequest(http.MethodPost, g.url("gw")+"/v1/chat/completions",
		io.MultiReader(strings.NewReader(chatBody("m")))) // unknown length: sent chunked
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer client-key-for-the-gateway")
	resp, body := do(t, req)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d: %s", resp.StatusCode, body)
	}
	bodies, heads := keyed.received()
	if got := heads[0].Get("Authorization"); got != "Bearer sk-upstream-from-env" {
		t.Errorf("upstream Authorization %q, want the backend's api_key", got)
	}
	if !strings.Contains(string(bodies[0]), `"model":"vendor/m"`) {
		t.Errorf("upstream body %s", bodies[0])
	}
	g.waitIdle()
}
