package simfleet

import (
	"math"
	"strings"
	"testing"
	"time"

	"github.com/modelrouter/modelrouter/bench/internal/workload"
)

func TestCapacity(t *testing.T) {
	fixed, _ := workload.Named("fixed", 10)
	sims := []Sim{{Slots: 2, TTFT: 10 * time.Millisecond, PerToken: 10 * time.Millisecond}} // 10 tokens: 100ms
	if got := Capacity(sims, fixed); math.Abs(got-20) > 1e-9 {
		t.Errorf("capacity = %v, want 20 req/s", got)
	}
	// wide: mean answer 136 tokens, mean prompt 901.0866 tokens.
	wide, _ := workload.Named("wide", 0)
	s := Sim{Slots: 4, TTFT: 20 * time.Millisecond, PerToken: 2 * time.Millisecond, Prefill: 20 * time.Microsecond}
	want := 20*time.Millisecond + time.Duration(901.0866*20e3) + 135*2*time.Millisecond
	if got := s.MeanService(wide); (got - want).Abs() > time.Microsecond {
		t.Errorf("mean service = %s, want %s", got, want)
	}
	if got, want := Capacity([]Sim{s, s}, wide), 8/want.Seconds(); math.Abs(got-want) > 1e-3 {
		t.Errorf("capacity = %v, want %v", got, want)
	}
}

func TestCaddyfile(t *testing.T) {
	got := Caddyfile([]Sim{
		{Name: "A", Slots: 4, TTFT: 20 * time.Millisecond, PerToken: 2 * time.Millisecond, Prefill: 20 * time.Microsecond, Tokens: 1024, Addr: "127.0.0.1:1"},
		{Name: "B", Slots: 2, TTFT: 80 * time.Millisecond, PerToken: 12 * time.Millisecond, Tokens: 32, Addr: "127.0.0.1:2"},
	})
	for _, want := range []string{
		"http://127.0.0.1:1 {\n\tmodel_router_sim {\n\t\tname A\n\t\tslots 4\n\t\tttft 20ms\n\t\tper_token 2ms\n\t\tprefill_per_token 20µs\n\t\ttokens 1024\n",
		"http://127.0.0.1:2 {\n\tmodel_router_sim {\n\t\tname B\n\t\tslots 2\n\t\tttft 80ms\n\t\tper_token 12ms\n\t\ttokens 32\n",
		"admin off",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("Caddyfile lacks %q:\n%s", want, got)
		}
	}
}
