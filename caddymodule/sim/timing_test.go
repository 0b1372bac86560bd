package sim

import (
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
)

const ms = time.Millisecond

// text40 is 40 bytes of prompt text: 10 prompt tokens to the sim.
const text40 = "0123456789012345678901234567890123456789"

// serveOnce sends one request straight to h and returns the delays it asked
// of clock (opened, so they all end at once).
func serveOnce(t *testing.T, h *Handler, clock *stepClock, path, body string) []time.Duration {
	t.Helper()
	before := len(clock.Waits())
	rec := httptest.NewRecorder()
	_ = h.ServeHTTP(rec, httptest.NewRequest("POST", path, strings.NewReader(body)), nil)
	if rec.Code != 200 {
		t.Fatalf("%s %s: status %d: %s", path, body, rec.Code, rec.Body)
	}
	return clock.Waits()[before:]
}

// TestPrefillDelays checks that the time to the first token grows by
// prefill_per_token for each prompt token, estimated as text bytes ÷ 4, for
// every kind of request, and that the later tokens do not.
func TestPrefillDelays(t *testing.T) {
	ttft, per, prefill := caddy.Duration(50*ms), caddy.Duration(5*ms), caddy.Duration(ms)
	for _, tc := range []struct {
		name, path, body string
		want             []time.Duration
	}{
		{"chat, empty prompt", "/v1/chat/completions", `{"messages":[]}`, []time.Duration{50*ms + 3*5*ms}},
		{"chat", "/v1/chat/completions", `{"messages":[{"role":"user","content":"` + text40 + `"}]}`, []time.Duration{60*ms + 3*5*ms}},
		{"chat, two messages and parts", "/v1/chat/completions",
			`{"messages":[{"role":"system","content":"` + text40 + `"},{"role":"user","content":[{"type":"text","text":"` + text40 + `"}]}]}`,
			[]time.Duration{70*ms + 3*5*ms}},
		{"chat stream", "/v1/chat/completions", `{"stream":true,"messages":[{"role":"user","content":"` + text40 + `"}]}`,
			[]time.Duration{60 * ms, 5 * ms, 5 * ms, 5 * ms}},
		{"completion stream, rounded up", "/v1/completions", `{"stream":true,"max_tokens":2,"prompt":"` + text40 + `x"}`,
			[]time.Duration{61 * ms, 5 * ms}},
		{"responses", "/v1/responses", `{"instructions":"` + text40 + `","input":"` + text40 + `","max_output_tokens":1}`, []time.Duration{70 * ms}},
		{"embeddings", "/v1/embeddings", `{"input":"` + text40 + `"}`, []time.Duration{60 * ms}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clock := newStepClock()
			clock.Open()
			h := provision(t, &Handler{TTFT: &ttft, PerToken: &per, PrefillPerToken: &prefill, Tokens: 4, wait: clock.wait})
			if got := serveOnce(t, h, clock, tc.path, tc.body); !equalDurations(got, tc.want) {
				t.Errorf("waits = %v, want %v", got, tc.want)
			}
		})
	}
}

// getConfig reads GET /sim/config.
func getConfig(t *testing.T, url string) map[string]any {
	t.Helper()
	resp, err := http.Get(url + "/sim/config")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("GET /sim/config: status %d", resp.StatusCode)
	}
	return decode(t, resp)
}

// setConfig posts body to /sim/config, wants 200 and returns the answer.
func setConfig(t *testing.T, url, body string) map[string]any {
	t.Helper()
	resp := post(t, url+"/sim/config", body)
	if resp.StatusCode != 200 {
		t.Fatalf("POST /sim/config %s: status %d: %v", body, resp.StatusCode, decode(t, resp))
	}
	return decode(t, resp)
}

// wantConfig compares a /sim/config answer with the expected fields.
func wantConfig(t *testing.T, got map[string]any, ttft, perToken, prefill string, slowdown float64, changed ...string) {
	t.Helper()
	want := map[string]any{"ttft": ttft, "per_token": perToken, "prefill_per_token": prefill, "slowdown": slowdown, "changed": []any{}}
	for _, c := range changed {
		want["changed"] = append(want["changed"].([]any), c)
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("config = %v, want %v", got, want)
	}
}

// TestConfigEndpoint changes the timing at run time: the answer and GET show
// it, the next requests' delays follow it, fields left out stay, POST
// /sim/reset leaves it alone and {"reset":true} returns to the configuration.
func TestConfigEndpoint(t *testing.T) {
	ttft, per := caddy.Duration(50*ms), caddy.Duration(5*ms)
	clock := newStepClock()
	clock.Open()
	h := provision(t, &Handler{TTFT: &ttft, PerToken: &per, Tokens: 3, wait: clock.wait})
	srv := serve(t, h)
	stream := `{"stream":true,"messages":[{"role":"user","content":"` + text40 + `"}]}`
	check := func(want ...time.Duration) {
		t.Helper()
		if got := serveOnce(t, h, clock, "/v1/chat/completions", stream); !equalDurations(got, want) {
			t.Errorf("waits = %v, want %v", got, want)
		}
	}

	wantConfig(t, getConfig(t, srv.URL), "50ms", "5ms", "0s", 1)
	check(50*ms, 5*ms, 5*ms)

	got := setConfig(t, srv.URL, `{"ttft":"80ms","per_token":"12ms","prefill_per_token":"1ms","slowdown":3}`)
	wantConfig(t, got, "80ms", "12ms", "1ms", 3, "ttft", "per_token", "prefill_per_token", "slowdown")
	wantConfig(t, getConfig(t, srv.URL), "80ms", "12ms", "1ms", 3, "ttft", "per_token", "prefill_per_token", "slowdown")
	check(3*(80*ms+10*ms), 36*ms, 36*ms) // 10 prompt tokens × 1ms of prefill

	// Left-out fields stay; integer nanoseconds are durations too.
	wantConfig(t, setConfig(t, srv.URL, `{"slowdown":1.5,"ttft":20000000}`), "20ms", "12ms", "1ms", 1.5,
		"ttft", "per_token", "prefill_per_token", "slowdown")
	check(45*ms, 18*ms, 18*ms)

	// Zeroing the counters is not undoing the slowdown.
	if resp := post(t, srv.URL+"/sim/reset", ""); resp.StatusCode != 200 {
		t.Fatalf("POST /sim/reset: status %d", resp.StatusCode)
	}
	wantConfig(t, getConfig(t, srv.URL), "20ms", "12ms", "1ms", 1.5, "ttft", "per_token", "prefill_per_token", "slowdown")
	check(45*ms, 18*ms, 18*ms)

	// reset drops the changes first; the request's other fields then apply.
	wantConfig(t, setConfig(t, srv.URL, `{"reset":true,"slowdown":2}`), "50ms", "5ms", "0s", 2, "slowdown")
	check(100*ms, 10*ms, 10*ms)
	wantConfig(t, setConfig(t, srv.URL, `{"reset":true}`), "50ms", "5ms", "0s", 1)
	check(50*ms, 5*ms, 5*ms)
	// An empty change changes nothing.
	wantConfig(t, setConfig(t, srv.URL, `{}`), "50ms", "5ms", "0s", 1)
}

// TestConfigAppliesToRequestsArrivingAfter slows the sim down while a
// stream is in its first delay: that stream keeps its timing to the end, and
// the next request gets the new one.
func TestConfigAppliesToRequestsArrivingAfter(t *testing.T) {
	ttft, per := caddy.Duration(50*ms), caddy.Duration(5*ms)
	clock := newStepClock()
	h := provision(t, &Handler{TTFT: &ttft, PerToken: &per, Tokens: 3, wait: clock.wait})
	srv := serve(t, h)

	done := make(chan []time.Duration)
	go func() {
		rec := httptest.NewRecorder()
		_ = h.ServeHTTP(rec, httptest.NewRequest("POST", "/v1/chat/completions", strings.NewReader(`{"stream":true}`)), nil)
		done <- clock.Waits()
	}()
	eventually(t, "the stream waits for its first token", func() bool { return len(clock.Waits()) == 1 })
	setConfig(t, srv.URL, `{"slowdown":3}`)
	clock.Open()
	if got, want := <-done, []time.Duration{50 * ms, 5 * ms, 5 * ms}; !equalDurations(got, want) {
		t.Errorf("the stream under way: waits %v, want %v", got, want)
	}
	if got, want := serveOnce(t, h, clock, "/v1/chat/completions", `{"stream":true}`), []time.Duration{150 * ms, 15 * ms, 15 * ms}; !equalDurations(got, want) {
		t.Errorf("the next stream: waits %v, want %v", got, want)
	}
}

// TestConfigSurvivesReload: the changes live in the shared state of the
// sim's name, so the handler of a reloaded config keeps them over its own
// configuration, and a reset returns to the new configuration.
func TestConfigSurvivesReload(t *testing.T) {
	name := uniqueName(t)
	ttft, per := caddy.Duration(50*ms), caddy.Duration(5*ms)
	first := provision(t, &Handler{Name: name, TTFT: &ttft, PerToken: &per, wait: noWait})
	setConfig(t, serve(t, first).URL, `{"per_token":"7ms","slowdown":2}`)

	newTTFT := caddy.Duration(30 * ms)
	reloaded := provision(t, &Handler{Name: name, TTFT: &newTTFT, PerToken: &per, wait: noWait})
	other := provision(t, &Handler{Name: name + "-other", TTFT: &ttft, PerToken: &per, wait: noWait})
	url := serve(t, reloaded).URL
	wantConfig(t, getConfig(t, url), "30ms", "7ms", "0s", 2, "per_token", "slowdown")
	wantConfig(t, getConfig(t, serve(t, other).URL), "50ms", "5ms", "0s", 1)
	wantConfig(t, setConfig(t, url, `{"reset":true}`), "30ms", "5ms", "0s", 1)
}

// TestConfigRejects: bad changes get an OpenAI error naming the parameter,
// and change nothing, not even their valid fields.
func TestConfigRejects(t *testing.T) {
	h := provision(t, &Handler{wait: noWait})
	srv := serve(t, h)
	for _, tc := range []struct{ body, param string }{
		{`{"ttft":"-1ms"}`, "ttft"},
		{`{"per_token":-5}`, "per_token"},
		{`{"ttft":"10ms","prefill_per_token":"-1us"}`, "prefill_per_token"},
		{`{"ttft":"10ms","slowdown":0}`, "slowdown"},
		{`{"slowdown":-2}`, "slowdown"},
		{`{"slowdown":1001}`, "slowdown"},
		{`{"ttft":"fast"}`, ""},
		{`{"slowness":3}`, ""},
		{`{"slowdown":"3"}`, ""},
		{`[]`, ""},
		{`{`, ""},
	} {
		t.Run(tc.body, func(t *testing.T) {
			e := wantOpenAIError(t, post(t, srv.URL+"/sim/config", tc.body), http.StatusBadRequest)
			if tc.param == "" && e["param"] != nil || tc.param != "" && e["param"] != tc.param {
				t.Errorf("param = %v, want %q", e["param"], tc.param)
			}
			wantConfig(t, getConfig(t, srv.URL), "20ms", "2ms", "0s", 1)
		})
	}
	req, err := http.NewRequest(http.MethodPut, srv.URL+"/sim/config", strings.NewReader(`{}`))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	wantOpenAIError(t, resp, http.StatusMethodNotAllowed)
}

// TestTimingScale checks the arithmetic, non-integer slowdowns included.
func TestTimingScale(t *testing.T) {
	tm := timing{ttft: 40 * ms, perToken: 10 * ms, prefill: 100 * time.Microsecond, slowdown: 2.5}
	if got, want := tm.firstToken(200), 150*ms; got != want { // (40ms + 200 × 100µs) × 2.5
		t.Errorf("firstToken(200) = %s, want %s", got, want)
	}
	if got, want := tm.firstToken(-3), 100*ms; got != want {
		t.Errorf("firstToken(-3) = %s, want %s", got, want)
	}
	if got, want := tm.nextToken(), 25*ms; got != want {
		t.Errorf("nextToken = %s, want %s", got, want)
	}
}
