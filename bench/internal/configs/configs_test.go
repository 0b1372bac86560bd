package configs

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/modelrouter/modelrouter/bench/internal/simfleet"
)

var sims = []simfleet.Sim{{Name: "A", Slots: 4, Addr: "127.0.0.1:1"}, {Name: "B", Slots: 8, Addr: "127.0.0.1:2"}}

func TestRouter(t *testing.T) {
	got := Router("127.0.0.1:9", sims, RouterOptions{Strategy: "fastest", MaxWait: 5 * time.Second, ExplainHeader: "X-Bench-Explain"})
	for _, want := range []string{"http://127.0.0.1:9 {", "strategy fastest\n", "max_wait 5s\n", "explain_header X-Bench-Explain\n",
		"backend A http://127.0.0.1:1 {\n\t\t\tmodels bench\n\t\t\tcapabilities chat=0.8\n\t\t\tmax_inflight 4\n", "max_inflight 8\n"} {
		if !strings.Contains(got, want) {
			t.Errorf("config lacks %q:\n%s", want, got)
		}
	}
	plain := Router("127.0.0.1:9", sims, RouterOptions{Strategy: "balanced", MaxWait: time.Second})
	if strings.Contains(plain, "explain_header") || strings.Contains(plain, "redis") || strings.Contains(plain, "assign_aging") {
		t.Errorf("options not asked for are set:\n%s", plain)
	}
}

func TestStock(t *testing.T) {
	var cfg struct {
		Apps struct {
			HTTP struct {
				Servers map[string]struct {
					Routes []struct {
						Handle []struct {
							Upstreams []struct {
								Dial        string `json:"dial"`
								MaxRequests int    `json:"max_requests"`
							} `json:"upstreams"`
							LoadBalancing map[string]any `json:"load_balancing"`
						} `json:"handle"`
					} `json:"routes"`
				} `json:"servers"`
			} `json:"http"`
		} `json:"apps"`
	}
	if err := json.Unmarshal([]byte(Stock("127.0.0.1:9", sims, true, 5*time.Second)), &cfg); err != nil {
		t.Fatal(err)
	}
	h := cfg.Apps.HTTP.Servers["bench"].Routes[0].Handle[0]
	if len(h.Upstreams) != 2 || h.Upstreams[1].Dial != "127.0.0.1:2" || h.Upstreams[1].MaxRequests != 8 || h.LoadBalancing["try_duration"] != "5s" {
		t.Errorf("capped stock config: %+v", h)
	}
}

// TestRouterCapabilities: a sim with capabilities declares each of them,
// sorted by name, so model auto can choose by them; the others keep chat=0.8.
func TestRouterCapabilities(t *testing.T) {
	mixed := []simfleet.Sim{
		{Name: "A", Slots: 4, Addr: "127.0.0.1:1", Capabilities: map[string]float64{"reasoning": 0.5, "chat": 0.6, "coding": 0.95}},
		{Name: "B", Slots: 8, Addr: "127.0.0.1:2"},
	}
	got := Router("127.0.0.1:9", mixed, RouterOptions{Strategy: "optimal", MaxWait: 5 * time.Second, Redis: "127.0.0.1:7", AssignAging: 2 * time.Second})
	for _, want := range []string{
		"strategy optimal\n",
		"assign_aging 2s\n",
		"backend A http://127.0.0.1:1 {\n\t\t\tmodels bench\n\t\t\tcapabilities chat=0.6 coding=0.95 reasoning=0.5\n\t\t\tmax_inflight 4\n",
		"backend B http://127.0.0.1:2 {\n\t\t\tmodels bench\n\t\t\tcapabilities chat=0.8\n\t\t\tmax_inflight 8\n",
		"pool bench\n\t\tredis redis://127.0.0.1:7/0\n",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("config lacks %q:\n%s", want, got)
		}
	}
}
