package main

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/modelrouter/modelrouter/internal/redistest"
)

// adminCall sends a request to a replica's admin API.
func (g *gateway) adminCall(t *testing.T, method, path, body string) (int, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, g.admin+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

type fleetBackendView struct {
	Name     string `json:"name"`
	Capacity int    `json:"capacity"`
	Drained  bool   `json:"drained"`
	Health   string `json:"health"`
	Inflight int    `json:"inflight"`
	Score    struct {
		Weight float64 `json:"weight"`
	} `json:"score"`
}

// backends reads a replica's GET /model_router/backends.
func (g *gateway) backends(t *testing.T) map[string]fleetBackendView {
	t.Helper()
	status, body := g.adminCall(t, http.MethodGet, "/model_router/backends", "")
	if status != http.StatusOK {
		t.Fatalf("GET backends: %d %s", status, body)
	}
	var v struct {
		Backends []fleetBackendView `json:"backends"`
	}
	if err := json.Unmarshal(body, &v); err != nil {
		t.Fatalf("GET backends: %v: %s", err, body)
	}
	out := map[string]fleetBackendView{}
	for _, b := range v.Backends {
		out[b.Name] = b
	}
	return out
}

// TestFleetDrainAndOverrides: a drain and an override made through one
// replica's admin API apply on every replica through Redis: the other
// replica sends the drained backend nothing, shows the new capacity, and
// the change is in the first replica's audit log. The replicas list shows
// the fleet.
func TestFleetDrainAndOverrides(t *testing.T) {
	srv := redistest.Start(t)
	b0, b1 := newStub(t, 2*time.Millisecond), newStub(t, 2*time.Millisecond)
	gws := startFleet(t, srv, []fleetBackend{{b0, 8}, {b1, 8}}, 2, fleetOptions{admin: true})

	var reps struct {
		LiveReplicas int `json:"live_replicas"`
		Replicas     []struct {
			ID   string `json:"id"`
			Self bool   `json:"self"`
		} `json:"replicas"`
	}
	status, body := gws[1].adminCall(t, http.MethodGet, "/model_router/replicas", "")
	if err := json.Unmarshal(body, &reps); err != nil || status != 200 || len(reps.Replicas) != 2 || reps.LiveReplicas != 2 {
		t.Fatalf("replicas: %d %v %s", status, err, body)
	}
	if reps.Replicas[0].Self == reps.Replicas[1].Self {
		t.Errorf("exactly one replica is the one asked: %+v", reps.Replicas)
	}

	if status, body := gws[0].adminCall(t, http.MethodPost, "/model_router/backends/b0/drain", ""); status != 200 {
		t.Fatalf("drain through replica 0: %d %s", status, body)
	}
	waitFor(t, "replica 1 to see the drain", 10*time.Second, func() bool { return gws[1].backends(t)["b0"].Drained })
	if h := gws[1].backends(t)["b0"].Health; h != "draining" {
		t.Errorf("replica 1 shows b0 as %q", h)
	}
	before := b0.total.Load()
	for i := range 20 {
		if code, err := gws[1].chat(context.Background()); err != nil || code != 200 {
			t.Fatalf("replica 1, request %d: %d %v", i, code, err)
		}
	}
	if n := b0.total.Load() - before; n != 0 {
		t.Fatalf("replica 1 sent %d requests to b0, drained through replica 0", n)
	}

	// An override through replica 1, seen by replica 0.
	if status, body := gws[1].adminCall(t, http.MethodPatch, "/model_router/backends/b1", `{"max_inflight":3,"weight":2}`); status != 200 {
		t.Fatalf("PATCH through replica 1: %d %s", status, body)
	}
	waitFor(t, "replica 0 to apply the override", 10*time.Second, func() bool {
		b := gws[0].backends(t)["b1"]
		return b.Capacity == 3 && b.Score.Weight == 2
	})
	// Validated on every replica alike.
	if status, body := gws[0].adminCall(t, http.MethodPatch, "/model_router/backends/b1", `{"max_inflight":0}`); status != 400 || !strings.Contains(string(body), "invalid_override") {
		t.Errorf("invalid PATCH: %d %s", status, body)
	}

	if status, body := gws[1].adminCall(t, http.MethodPost, "/model_router/backends/b0/undrain", ""); status != 200 {
		t.Fatalf("undrain: %d %s", status, body)
	}
	waitFor(t, "replica 0 to see the undrain", 10*time.Second, func() bool { return !gws[0].backends(t)["b0"].Drained })
	waitFor(t, "b0 served again", 10*time.Second, func() bool {
		_, _ = gws[0].chat(context.Background())
		return b0.total.Load() > before
	})

	// The audit log: every change, at info, on the replica that made it.
	logs := gws[0].logs.String()
	if !strings.Contains(logs, `"msg":"backend override changed"`) || !strings.Contains(logs, `"action":"drain"`) || !strings.Contains(logs, `"backend":"b0"`) {
		t.Errorf("replica 0's audit log lacks the drain:\n%s", logs)
	}
	if !strings.Contains(gws[1].logs.String(), `"action":"patch"`) {
		t.Errorf("replica 1's audit log lacks the patch")
	}
}
