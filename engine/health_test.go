package engine

import (
	"sync"
	"testing"
	"time"
)

func TestHealth(t *testing.T) {
	t0 := time.Unix(1_700_000_000, 0)
	at := func(s float64) time.Time { return t0.Add(time.Duration(s * float64(time.Second))) }
	type step struct {
		op   string // "fail", "ok" or "check"
		at   float64
		want bool // for "check": CoolingDown
	}
	tests := []struct {
		name     string
		maxFails int
		cooldown time.Duration
		steps    []step
	}{
		{"below threshold stays up", 3, 10 * time.Second, []step{
			{"fail", 0, false}, {"fail", 1, false}, {"check", 1, false},
		}},
		{"threshold cools down until now+cooldown", 3, 10 * time.Second, []step{
			{"fail", 0, false}, {"fail", 1, false}, {"fail", 2, false},
			{"check", 2, true}, {"check", 11.9, true}, {"check", 12, false},
		}},
		{"success resets the count", 3, 10 * time.Second, []step{
			{"fail", 0, false}, {"fail", 1, false}, {"ok", 2, false}, {"fail", 3, false}, {"fail", 4, false},
			{"check", 4, false}, {"fail", 5, false}, {"check", 5, true},
		}},
		{"half-open: one failure after cooldown cools again", 3, 10 * time.Second, []step{
			{"fail", 0, false}, {"fail", 0, false}, {"fail", 0, false},
			{"check", 10, false}, {"fail", 10, false}, {"check", 10, true}, {"check", 19.9, true}, {"check", 20, false},
		}},
		{"half-open: a success closes the breaker", 3, 10 * time.Second, []step{
			{"fail", 0, false}, {"fail", 0, false}, {"fail", 0, false},
			{"ok", 10, false}, {"fail", 11, false}, {"check", 11, false},
		}},
		{"failures during cooldown do not extend it", 2, 10 * time.Second, []step{
			{"fail", 0, false}, {"fail", 0, false}, {"fail", 5, false}, {"fail", 9, false}, {"check", 10, false},
		}},
		{"success ends a cooldown early", 1, 10 * time.Second, []step{
			{"fail", 0, false}, {"check", 1, true}, {"ok", 2, false}, {"check", 2, false},
		}},
		{"defaults: 3 fails, 10s", 0, 0, []step{
			{"fail", 0, false}, {"fail", 0, false}, {"check", 0, false}, {"fail", 0, false},
			{"check", 9.9, true}, {"check", 10, false},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := NewHealth(tt.maxFails, tt.cooldown)
			for k, s := range tt.steps {
				switch s.op {
				case "fail":
					h.Fail("a", at(s.at))
				case "ok":
					h.Succeed("a")
				case "check":
					if got := h.CoolingDown("a", at(s.at)); got != s.want {
						t.Fatalf("step %d: CoolingDown at %vs = %v, want %v", k, s.at, got, s.want)
					}
				}
				if h.CoolingDown("other", at(s.at)) {
					t.Fatalf("step %d: state leaked to another backend", k)
				}
			}
		})
	}
}

func TestHealthConcurrent(t *testing.T) {
	h := NewHealth(3, time.Second)
	now := time.Unix(0, 0)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			name := []string{"a", "b"}[g%2]
			for i := range 500 {
				switch i % 3 {
				case 0:
					h.Fail(name, now)
				case 1:
					h.Succeed(name)
				default:
					h.CoolingDown(name, now)
				}
			}
		})
	}
	wg.Wait()
	h.Succeed("a")
	if h.CoolingDown("a", now) {
		t.Fatal("Succeed did not close the breaker")
	}
}
