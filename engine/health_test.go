package engine

import (
	"sync"
	"testing"
	"time"
)

func TestHealth(t *testing.T) {
	t0 := time.Unix(1_700_000_000, 0)
	at := func(s float64) time.Time { return t0.Add(time.Duration(s * float64(time.Second))) }
	const (
		av = Available
		pr = ProbeAvailable
		un = Unavailable
	)
	// Steps: "fail", "broken", "ok", "client" (client error), "gone" (client
	// gone), "429" (with d seconds of Retry-After): record an outcome, as a
	// probe when probe is set. "check" / "alone": Check (alone: no other
	// candidate) must say want, and retry (when > 0) is the retry time in
	// seconds. "probe" / "probe-alone": TryProbe must report ok. "end": EndProbe.
	type step struct {
		op    string
		at    float64
		want  Availability
		retry float64
		probe bool
		ok    bool
		d     float64
	}
	tests := []struct {
		name     string
		maxFails int
		cooldown time.Duration
		steps    []step
	}{
		{"below threshold stays up", 3, 10 * time.Second, []step{
			{op: "fail", at: 0}, {op: "fail", at: 1}, {op: "check", at: 1, want: av},
		}},
		{"threshold opens until now+cooldown, then half-open", 3, 10 * time.Second, []step{
			{op: "fail", at: 0}, {op: "fail", at: 1}, {op: "fail", at: 2},
			{op: "check", at: 2, want: un, retry: 12}, {op: "check", at: 11.9, want: un, retry: 12},
			{op: "check", at: 12, want: pr},
		}},
		{"broken streams count like failures", 2, 10 * time.Second, []step{
			{op: "broken", at: 0}, {op: "fail", at: 0}, {op: "check", at: 0, want: un},
		}},
		{"success resets the count", 3, 10 * time.Second, []step{
			{op: "fail", at: 0}, {op: "fail", at: 1}, {op: "ok", at: 2}, {op: "fail", at: 3}, {op: "fail", at: 4},
			{op: "check", at: 4, want: av}, {op: "fail", at: 5}, {op: "check", at: 5, want: un},
		}},
		{"client errors and clients gone are no evidence", 2, 10 * time.Second, []step{
			{op: "fail", at: 0}, {op: "client", at: 1}, {op: "gone", at: 1}, {op: "check", at: 1, want: av},
			{op: "fail", at: 2}, {op: "check", at: 2, want: un},
			{op: "client", at: 3}, {op: "gone", at: 3}, {op: "check", at: 3, want: un},
		}},
		{"half-open: one probe at a time", 3, 10 * time.Second, []step{
			{op: "fail"}, {op: "fail"}, {op: "fail"},
			{op: "check", at: 10, want: pr}, {op: "probe", at: 10, ok: true},
			{op: "check", at: 10, want: un, retry: 11}, {op: "probe", at: 10, ok: false},
			{op: "alone", at: 10.5, want: un},
		}},
		{"half-open: a failed probe opens it again", 3, 10 * time.Second, []step{
			{op: "fail"}, {op: "fail"}, {op: "fail"},
			{op: "probe", at: 10, ok: true}, {op: "fail", at: 10, probe: true},
			{op: "check", at: 10, want: un, retry: 20}, {op: "check", at: 19.9, want: un}, {op: "check", at: 20, want: pr},
		}},
		{"half-open: a successful probe closes the breaker", 3, 10 * time.Second, []step{
			{op: "fail"}, {op: "fail"}, {op: "fail"},
			{op: "probe", at: 10, ok: true}, {op: "ok", at: 10.2, probe: true},
			{op: "check", at: 10.2, want: av}, {op: "fail", at: 11}, {op: "check", at: 11, want: av},
		}},
		{"half-open: a probe ended without verdict frees the next probe", 3, 10 * time.Second, []step{
			{op: "fail"}, {op: "fail"}, {op: "fail"},
			{op: "probe", at: 10, ok: true}, {op: "gone", at: 10, probe: true}, {op: "probe", at: 10, ok: true},
			{op: "end", at: 10}, {op: "probe", at: 10, ok: true}, {op: "client", at: 10, probe: true},
			{op: "check", at: 10, want: pr},
		}},
		{"cooling down alone: a probe per interval, not a cooldown-long refusal", 3, 10 * time.Second, []step{
			{op: "fail", at: 0}, {op: "fail", at: 0}, {op: "fail", at: 0},
			{op: "alone", at: 0.5, want: un, retry: 1}, {op: "probe-alone", at: 0.5, ok: false},
			{op: "check", at: 1, want: un, retry: 10}, // others can serve: no probe before the cooldown ends
			{op: "alone", at: 1, want: pr}, {op: "probe-alone", at: 1, ok: true},
			{op: "alone", at: 1.2, want: un}, {op: "probe-alone", at: 1.2, ok: false},
			{op: "fail", at: 1.5, probe: true}, // failed probe: open again, next probe a second later
			{op: "alone", at: 2.4, want: un, retry: 2.5}, {op: "check", at: 2.4, want: un, retry: 11.5},
			{op: "probe-alone", at: 2.5, ok: true}, {op: "ok", at: 2.6, probe: true},
			{op: "check", at: 2.6, want: av},
		}},
		{"failures of requests sent before the breaker opened do not extend it", 2, 10 * time.Second, []step{
			{op: "fail", at: 0}, {op: "fail", at: 0}, {op: "fail", at: 5}, {op: "broken", at: 9}, {op: "check", at: 10, want: pr},
		}},
		{"a success ends a cooldown early", 1, 10 * time.Second, []step{
			{op: "fail", at: 0}, {op: "check", at: 1, want: un}, {op: "ok", at: 2}, {op: "check", at: 2, want: av},
		}},
		{"429 skips the backend for its Retry-After", 3, 10 * time.Second, []step{
			{op: "429", at: 0, d: 7}, {op: "check", at: 0, want: un, retry: 7}, {op: "alone", at: 6.9, want: un, retry: 7},
			{op: "probe-alone", at: 6.9, ok: false}, {op: "check", at: 7, want: av},
		}},
		{"429 without Retry-After: the default backoff", 3, 10 * time.Second, []step{
			{op: "429", at: 0}, {op: "check", at: 4.9, want: un, retry: 5}, {op: "check", at: 5, want: av},
		}},
		{"429 Retry-After is bounded", 3, 10 * time.Second, []step{
			{op: "429", at: 0, d: 86400}, {op: "check", at: 59, want: un, retry: 60}, {op: "check", at: 60, want: av},
			{op: "429", at: 100, d: 0.01}, {op: "check", at: 100.5, want: un, retry: 101}, {op: "check", at: 101, want: av},
		}},
		{"a later, shorter 429 does not shorten a rate limit", 3, 10 * time.Second, []step{
			{op: "429", at: 0, d: 30}, {op: "429", at: 1, d: 2}, {op: "check", at: 10, want: un, retry: 30},
		}},
		{"a success does not lift a rate limit", 3, 10 * time.Second, []step{
			{op: "429", at: 0, d: 10}, {op: "ok", at: 1}, {op: "check", at: 1, want: un, retry: 10},
		}},
		{"429 does not count toward the breaker", 2, 10 * time.Second, []step{
			{op: "429", at: 0, d: 1}, {op: "429", at: 1, d: 1}, {op: "429", at: 2, d: 1}, {op: "check", at: 3, want: av},
			{op: "fail", at: 3}, {op: "check", at: 3, want: av},
		}},
		{"defaults: 3 fails, 10s", 0, 0, []step{
			{op: "fail"}, {op: "fail"}, {op: "check", want: av}, {op: "fail"},
			{op: "check", at: 9.9, want: un}, {op: "check", at: 10, want: pr},
		}},
	}
	outcomes := map[string]Outcome{"fail": OutcomeFailed, "broken": OutcomeBroken, "ok": OutcomeSuccess,
		"client": OutcomeClientError, "gone": OutcomeClientGone, "429": OutcomeRateLimited}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := NewHealth(tt.maxFails, tt.cooldown)
			for k, s := range tt.steps {
				now := at(s.at)
				switch s.op {
				case "check", "alone":
					got, retry := h.Check("a", now, s.op == "alone")
					if got != s.want {
						t.Fatalf("step %d: %s at %vs = %v, want %v", k, s.op, s.at, got, s.want)
					}
					if s.retry > 0 && !retry.Equal(at(s.retry)) {
						t.Fatalf("step %d: %s at %vs: retry at %v, want %v", k, s.op, s.at, retry.Sub(t0), at(s.retry).Sub(t0))
					}
					if wantCD := s.want == Unavailable; s.op == "check" && h.CoolingDown("a", now) != wantCD {
						t.Fatalf("step %d: CoolingDown = %v, want %v", k, !wantCD, wantCD)
					}
				case "probe", "probe-alone":
					if got := h.TryProbe("a", now, s.op == "probe-alone"); got != s.ok {
						t.Fatalf("step %d: %s at %vs = %v, want %v", k, s.op, s.at, got, s.ok)
					}
				case "end":
					h.EndProbe("a")
				default:
					o, ok := outcomes[s.op]
					if !ok {
						t.Fatalf("step %d: unknown op %q", k, s.op)
					}
					h.Record("a", o, now, s.probe, time.Duration(s.d*float64(time.Second)))
				}
				if a, _ := h.Check("other", now, true); a != Available {
					t.Fatalf("step %d: state leaked to another backend", k)
				}
			}
		})
	}
}

func TestHealthState(t *testing.T) {
	t0 := time.Unix(1_700_000_000, 0)
	h := NewHealth(1, 10*time.Second)
	if st, _ := h.State("a", t0); st != StateHealthy {
		t.Fatalf("fresh backend: %v", st)
	}
	h.Record("a", OutcomeFailed, t0, false, 0)
	if st, until := h.State("a", t0.Add(time.Second)); st != StateCoolingDown || !until.Equal(t0.Add(10*time.Second)) {
		t.Fatalf("after a failure: %v until %v", st, until)
	}
	if st, _ := h.State("a", t0.Add(10*time.Second)); st != StateHalfOpen {
		t.Fatalf("after the cooldown: %v", st)
	}
	h.Record("b", OutcomeRateLimited, t0, false, 3*time.Second)
	if st, until := h.State("b", t0); st != StateRateLimited || !until.Equal(t0.Add(3*time.Second)) {
		t.Fatalf("after a 429: %v until %v", st, until)
	}
	if st, _ := h.State("b", t0.Add(3*time.Second)); st != StateHealthy {
		t.Fatalf("after the rate limit: %v", st)
	}
	for s, want := range map[HealthState]string{StateHealthy: "ok", StateCoolingDown: "cooling_down", StateHalfOpen: "half_open", StateRateLimited: "rate_limited"} {
		if s.String() != want {
			t.Errorf("%d.String() = %q, want %q", s, s.String(), want)
		}
	}
}

// TestHealthForgetsRecoveredBackends: the state map, and with it the lock on
// the request path, empties once every backend is healthy again.
func TestHealthForgetsRecoveredBackends(t *testing.T) {
	t0 := time.Unix(1_700_000_000, 0)
	h := NewHealth(2, time.Second)
	h.Record("a", OutcomeFailed, t0, false, 0)
	h.Record("b", OutcomeRateLimited, t0, false, time.Second)
	if h.tracked.Load() != 2 {
		t.Fatalf("tracked %d, want 2", h.tracked.Load())
	}
	h.Record("a", OutcomeSuccess, t0, false, 0)
	h.Record("b", OutcomeSuccess, t0.Add(2*time.Second), false, 0)
	if n := h.tracked.Load(); n != 0 {
		t.Fatalf("tracked %d after both recovered, want 0", n)
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
				switch i % 4 {
				case 0:
					h.Record(name, OutcomeFailed, now, false, 0)
				case 1:
					h.Record(name, OutcomeSuccess, now, false, 0)
				case 2:
					if h.TryProbe(name, now, true) {
						h.Record(name, OutcomeClientGone, now, true, 0)
					}
				default:
					h.Check(name, now, i%8 == 3)
				}
			}
		})
	}
	wg.Wait()
	h.Record("a", OutcomeSuccess, now, false, 0)
	if h.CoolingDown("a", now) {
		t.Fatal("a success did not close the breaker")
	}
}

func TestStatusOutcome(t *testing.T) {
	tests := []struct {
		status int
		want   Outcome
	}{
		{200, OutcomeSuccess}, {204, OutcomeSuccess}, {301, OutcomeSuccess},
		{400, OutcomeClientError}, {401, OutcomeClientError}, {404, OutcomeClientError}, {413, OutcomeClientError},
		{408, OutcomeFailed}, {429, OutcomeRateLimited},
		{500, OutcomeFailed}, {502, OutcomeFailed}, {503, OutcomeFailed}, {504, OutcomeFailed}, {599, OutcomeFailed},
	}
	for _, tt := range tests {
		if got := StatusOutcome(tt.status); got != tt.want {
			t.Errorf("StatusOutcome(%d) = %v, want %v", tt.status, got, tt.want)
		}
	}
	table := []struct {
		o                           Outcome
		against, teaches, retryable bool
	}{
		{OutcomeSuccess, false, true, false},
		{OutcomeClientGone, false, false, false},
		{OutcomeRateLimited, true, false, true},
		{OutcomeFailed, true, false, true},
		{OutcomeBroken, true, false, false},
		{OutcomeClientError, false, false, false},
	}
	for _, tt := range table {
		if tt.o.AgainstBackend() != tt.against || tt.o.Teaches() != tt.teaches || tt.o.Retryable() != tt.retryable {
			t.Errorf("%v: against %v teaches %v retryable %v, want %v %v %v", tt.o,
				tt.o.AgainstBackend(), tt.o.Teaches(), tt.o.Retryable(), tt.against, tt.teaches, tt.retryable)
		}
	}
	if len(OutcomeNames()) != len(table) {
		t.Errorf("OutcomeNames has %d names for %d outcomes", len(OutcomeNames()), len(table))
	}
}

// TestHealthRecordReportsNews: what other replicas need to hear — failures,
// rate limits, and a success that clears state — is reported; the usual
// success of a healthy backend and client-side outcomes are not.
func TestHealthRecordReportsNews(t *testing.T) {
	t0 := time.Unix(1_700_000_000, 0)
	h := NewHealth(3, time.Second)
	for _, tt := range []struct {
		o    Outcome
		want bool
	}{
		{OutcomeSuccess, false}, {OutcomeClientGone, false}, {OutcomeClientError, false},
		{OutcomeFailed, true}, {OutcomeClientGone, false}, {OutcomeSuccess, true}, {OutcomeSuccess, false},
		{OutcomeRateLimited, true}, {OutcomeBroken, true},
	} {
		if got := h.Record("a", tt.o, t0, false, 0); got != tt.want {
			t.Errorf("Record(%v) = %v, want %v", tt.o, got, tt.want)
		}
	}
}
