package sim

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
)

func TestProvisionDefaults(t *testing.T) {
	h := provision(t, &Handler{})
	if h.Slots != 4 || h.ttft != 20*time.Millisecond || h.perToken != 2*time.Millisecond || h.prefill != 0 ||
		h.Tokens != 16 || h.slots.maxQueue != 1000 || h.FailStatus != 0 {
		t.Errorf("defaults: slots=%d ttft=%s per_token=%s prefill_per_token=%s tokens=%d max_queue=%d fail_status=%d",
			h.Slots, h.ttft, h.perToken, h.prefill, h.Tokens, h.slots.maxQueue, h.FailStatus)
	}
	var unnamed Handler
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()
	if err := unnamed.Provision(ctx); err != nil || unnamed.Name != "sim" {
		t.Errorf("default name = %q (err %v), want sim", unnamed.Name, err)
	}

	zero := caddy.Duration(0)
	noQueue := 0
	h = provision(t, &Handler{TTFT: &zero, PerToken: &zero, MaxQueue: &noQueue})
	if h.ttft != 0 || h.perToken != 0 || h.slots.maxQueue != 0 {
		t.Errorf("explicit zeros: ttft=%s per_token=%s max_queue=%d", h.ttft, h.perToken, h.slots.maxQueue)
	}
}

func TestValidateRejects(t *testing.T) {
	neg := caddy.Duration(-time.Millisecond)
	negQueue := -1
	for name, h := range map[string]Handler{
		"negative slots":             {Slots: -1},
		"negative ttft":              {TTFT: &neg},
		"negative per_token":         {PerToken: &neg},
		"negative prefill_per_token": {PrefillPerToken: &neg},
		"negative tokens":            {Tokens: -2},
		"negative max_queue":         {MaxQueue: &negQueue},
		"fail_status 200":            {FailStatus: 200},
		"fail_status 600":            {FailStatus: 600},
	} {
		t.Run(name, func(t *testing.T) {
			h.Name = uniqueName(t)
			ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
			defer cancel()
			if err := h.Provision(ctx); err != nil {
				t.Fatal(err)
			}
			if err := h.Validate(); err == nil {
				t.Error("Validate accepted it")
			}
		})
	}
}

func TestEndpoints(t *testing.T) {
	h := provision(t, &Handler{Name: "fast", Tokens: 5, wait: noWait})
	srv := serve(t, h)
	const prompt = "Say hello to the gateway" // 24 bytes: 6 prompt tokens

	t.Run("chat", func(t *testing.T) {
		resp := post(t, srv.URL+"/v1/chat/completions", `{"model":"m-chat","messages":[{"role":"user","content":"`+prompt+`"}]}`)
		if resp.StatusCode != 200 || resp.Header.Get("X-Sim-Name") != "fast" {
			t.Fatalf("status %d, X-Sim-Name %q", resp.StatusCode, resp.Header.Get("X-Sim-Name"))
		}
		var got chatCompletion
		if err := json.NewDecoder(resp.Body).Decode(&got); err != nil {
			t.Fatal(err)
		}
		if got.Object != "chat.completion" || got.Model != "m-chat" || !strings.HasPrefix(got.ID, "chatcmpl-") || got.Created == 0 {
			t.Errorf("header fields: %+v", got)
		}
		if len(got.Choices) != 1 || got.Choices[0].Message.Role != "assistant" || got.Choices[0].FinishReason != "stop" {
			t.Fatalf("choices: %+v", got.Choices)
		}
		if c := got.Choices[0].Message.Content; c != "[fast] token token token token" {
			t.Errorf("content = %q", c)
		}
		if *got.Usage != (usage{PromptTokens: 6, CompletionTokens: 5, TotalTokens: 11}) {
			t.Errorf("usage = %+v", *got.Usage)
		}
	})

	t.Run("completion", func(t *testing.T) {
		resp := post(t, srv.URL+"/v1/completions", `{"model":"m-text","prompt":"`+prompt+`","max_tokens":3}`)
		var got textCompletion
		if err := json.NewDecoder(resp.Body).Decode(&got); err != nil {
			t.Fatal(err)
		}
		if got.Object != "text_completion" || got.Model != "m-text" || len(got.Choices) != 1 {
			t.Fatalf("got %+v", got)
		}
		if c := got.Choices[0]; c.Text != "[fast] token token" || *c.FinishReason != "length" {
			t.Errorf("choice = %q / %v; max_tokens 3 should cut 5 tokens to 3", c.Text, *c.FinishReason)
		}
		if *got.Usage != (usage{PromptTokens: 6, CompletionTokens: 3, TotalTokens: 9}) {
			t.Errorf("usage = %+v", *got.Usage)
		}
	})

	t.Run("max_tokens above tokens does not raise it", func(t *testing.T) {
		resp := post(t, srv.URL+"/v1/chat/completions", `{"model":"m","messages":[],"max_completion_tokens":100}`)
		var got chatCompletion
		if err := json.NewDecoder(resp.Body).Decode(&got); err != nil {
			t.Fatal(err)
		}
		if got.Usage.CompletionTokens != 5 || got.Choices[0].FinishReason != "stop" {
			t.Errorf("usage %+v finish %q", *got.Usage, got.Choices[0].FinishReason)
		}
	})

	t.Run("responses", func(t *testing.T) {
		resp := post(t, srv.URL+"/v1/responses", `{"model":"m-resp","input":"`+prompt+`","instructions":"Be brief"}`)
		var got response
		if err := json.NewDecoder(resp.Body).Decode(&got); err != nil {
			t.Fatal(err)
		}
		if got.Object != "response" || got.Status != "completed" || got.Model != "m-resp" || !strings.HasPrefix(got.ID, "resp_") {
			t.Errorf("got %+v", got)
		}
		if len(got.Output) != 1 || len(got.Output[0].Content) != 1 || got.Output[0].Content[0].Text != "[fast] token token token token" {
			t.Fatalf("output = %+v", got.Output)
		}
		// 24 bytes of input + 8 of instructions.
		if got.Usage.InputTokens != 8 || got.Usage.OutputTokens != 5 || got.Usage.TotalTokens != 13 {
			t.Errorf("usage = %+v", *got.Usage)
		}
	})

	t.Run("responses cut short", func(t *testing.T) {
		resp := post(t, srv.URL+"/v1/responses", `{"model":"m","input":[{"role":"user","content":[{"type":"input_text","text":"hi"}]}],"max_output_tokens":2}`)
		var got response
		if err := json.NewDecoder(resp.Body).Decode(&got); err != nil {
			t.Fatal(err)
		}
		if got.Status != "incomplete" || got.IncompleteDetails == nil || got.Usage.OutputTokens != 2 || got.Usage.InputTokens != 1 {
			t.Errorf("got %+v usage %+v", got, got.Usage)
		}
	})

	t.Run("embeddings", func(t *testing.T) {
		resp := post(t, srv.URL+"/v1/embeddings", `{"model":"m-emb","input":["alpha","beta","alpha"]}`)
		var got struct {
			Object string
			Model  string
			Data   []struct {
				Object    string
				Index     int
				Embedding []float64
			}
			Usage struct{ PromptTokens, TotalTokens int } `json:"usage"`
		}
		if err := json.NewDecoder(resp.Body).Decode(&got); err != nil {
			t.Fatal(err)
		}
		if got.Object != "list" || got.Model != "m-emb" || len(got.Data) != 3 {
			t.Fatalf("got %+v", got)
		}
		for i, d := range got.Data {
			if d.Object != "embedding" || d.Index != i || len(d.Embedding) != defaultEmbeddingDims {
				t.Errorf("data[%d] = %+v", i, d)
			}
			var norm float64
			for _, x := range d.Embedding {
				norm += x * x
			}
			if norm < 0.999 || norm > 1.001 {
				t.Errorf("data[%d] has squared norm %v, want 1", i, norm)
			}
		}
		if !equalFloats(got.Data[0].Embedding, got.Data[2].Embedding) || equalFloats(got.Data[0].Embedding, got.Data[1].Embedding) {
			t.Error("equal inputs must embed equally, different ones differently")
		}
	})

	t.Run("embeddings base64 with dimensions", func(t *testing.T) {
		resp := post(t, srv.URL+"/v1/embeddings", `{"model":"m","input":[1,2,3],"dimensions":3,"encoding_format":"base64"}`)
		got := decode(t, resp)
		data := got["data"].([]any)
		if len(data) != 1 {
			t.Fatalf("a token array is one input; got %d embeddings", len(data))
		}
		raw, err := base64.StdEncoding.DecodeString(data[0].(map[string]any)["embedding"].(string))
		if err != nil || len(raw) != 3*4 {
			t.Errorf("embedding decodes to %d bytes (err %v), want 3 float32s", len(raw), err)
		}
	})

	t.Run("models", func(t *testing.T) {
		resp, err := http.Get(srv.URL + "/v1/models")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var got modelList
		if err := json.NewDecoder(resp.Body).Decode(&got); err != nil {
			t.Fatal(err)
		}
		if got.Object != "list" || len(got.Data) != 1 || got.Data[0].ID != "fast" || got.Data[0].Object != "model" {
			t.Errorf("got %+v", got)
		}
	})

	t.Run("no model falls back to the sim's name", func(t *testing.T) {
		resp := post(t, srv.URL+"/v1/chat/completions", `{"messages":[]}`)
		if got := decode(t, resp)["model"]; got != "fast" {
			t.Errorf("model = %v", got)
		}
	})
}

func equalFloats(a, b []float64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestBadRequests(t *testing.T) {
	h := provision(t, &Handler{wait: noWait})
	srv := serve(t, h)
	for _, tc := range []struct {
		name, method, path, body string
		status                   int
		param                    any
	}{
		{"malformed JSON", "POST", "/v1/chat/completions", `{"model":`, 400, nil},
		{"not an object", "POST", "/v1/completions", `[1,2]`, 400, nil},
		{"empty body", "POST", "/v1/responses", ``, 400, nil},
		{"wrong type", "POST", "/v1/chat/completions", `{"stream":"yes"}`, 400, nil},
		{"zero max_tokens", "POST", "/v1/chat/completions", `{"max_tokens":0}`, 400, "max_tokens"},
		{"embeddings without input", "POST", "/v1/embeddings", `{"model":"m"}`, 400, "input"},
		{"too many dimensions", "POST", "/v1/embeddings", `{"input":"x","dimensions":100000}`, 400, "dimensions"},
		{"bad encoding", "POST", "/v1/embeddings", `{"input":"x","encoding_format":"hex"}`, 400, "encoding_format"},
		{"GET on chat", "GET", "/v1/chat/completions", ``, 405, nil},
		{"POST on models", "POST", "/v1/models", `{}`, 405, nil},
		{"unknown path", "POST", "/v1/images/generations", `{}`, 404, nil},
		{"too large", "POST", "/v1/chat/completions", `{"model":"` + strings.Repeat("x", maxRequestBody) + `"}`, 413, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequest(tc.method, srv.URL+tc.path, strings.NewReader(tc.body))
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			e := wantOpenAIError(t, resp, tc.status)
			if e["param"] != tc.param {
				t.Errorf("param = %v, want %v", e["param"], tc.param)
			}
		})
	}
	// Inference requests turned away for their content count as failed;
	// others (405 and 404 before any inference started) are not counted.
	if st := h.state.Snapshot(); st.Requests != 9 || st.Failed != 9 || st.Served != 0 {
		t.Errorf("stats = %+v, want 9 requests, all failed", st)
	}
}

// TestDelays checks which delays each kind of request asks for: the first
// token after TTFT, each further one PerToken later, embeddings TTFT only.
func TestDelays(t *testing.T) {
	ttft, per := caddy.Duration(50*time.Millisecond), caddy.Duration(5*time.Millisecond)
	for _, tc := range []struct {
		name, path, body string
		want             []time.Duration
	}{
		{"chat", "/v1/chat/completions", `{"messages":[]}`, []time.Duration{50*time.Millisecond + 3*5*time.Millisecond}},
		{"chat capped", "/v1/chat/completions", `{"max_tokens":2}`, []time.Duration{55 * time.Millisecond}},
		{"chat stream", "/v1/chat/completions", `{"stream":true}`, []time.Duration{50 * time.Millisecond, 5 * time.Millisecond, 5 * time.Millisecond, 5 * time.Millisecond}},
		{"responses stream", "/v1/responses", `{"stream":true,"max_output_tokens":1}`, []time.Duration{50 * time.Millisecond}},
		{"embeddings", "/v1/embeddings", `{"input":"x"}`, []time.Duration{50 * time.Millisecond}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clock := newStepClock()
			clock.Open()
			h := provision(t, &Handler{TTFT: &ttft, PerToken: &per, Tokens: 4, wait: clock.wait})
			rec := httptest.NewRecorder()
			_ = h.ServeHTTP(rec, httptest.NewRequest("POST", tc.path, strings.NewReader(tc.body)), nil)
			if rec.Code != 200 {
				t.Fatalf("status %d: %s", rec.Code, rec.Body)
			}
			if got := clock.Waits(); !equalDurations(got, tc.want) {
				t.Errorf("waits = %v, want %v", got, tc.want)
			}
		})
	}
}

func equalDurations(a, b []time.Duration) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// TestRealDelays checks the real clock is used: a 5-token answer with 30ms
// to the first token and 10ms per further one takes at least 70ms.
func TestRealDelays(t *testing.T) {
	ttft, per := caddy.Duration(30*time.Millisecond), caddy.Duration(10*time.Millisecond)
	h := provision(t, &Handler{TTFT: &ttft, PerToken: &per, Tokens: 5})
	srv := serve(t, h)
	for _, stream := range []string{"false", "true"} {
		start := time.Now()
		resp := post(t, srv.URL+"/v1/chat/completions", `{"stream":`+stream+`}`)
		readEvents(t, resp.Body)
		if elapsed := time.Since(start); elapsed < 70*time.Millisecond {
			t.Errorf("stream=%s took %s, want at least 70ms", stream, elapsed)
		}
	}
}

// TestSlotsBoundConcurrency holds every request in its first delay, so
// exactly Slots of them get in and the rest queue in arrival order.
func TestSlotsBoundConcurrency(t *testing.T) {
	clock := newStepClock()
	h := provision(t, &Handler{Slots: 2, wait: clock.wait})
	srv := serve(t, h)

	var wg sync.WaitGroup
	start := func(n int) {
		for range n {
			wg.Go(func() {
				resp := post(t, srv.URL+"/v1/chat/completions", `{"messages":[]}`)
				if resp.StatusCode != 200 {
					t.Errorf("status %d", resp.StatusCode)
				}
			})
		}
	}
	start(6)
	eventually(t, "2 requests are in slots and 4 queue", func() bool {
		st := h.state.Snapshot()
		return st.Inflight == 2 && st.Queued == 4
	})
	st := h.state.Snapshot()
	if st.Requests != 6 || st.ReachedFull != 4 || st.PeakInflight != 2 || st.PeakConcurrent != 6 {
		t.Errorf("while held: %+v; want 6 requests, 4 reached_full, peak_inflight 2, peak_concurrent 6", st)
	}
	if busy, queued := h.slots.Busy(); busy != 2 || queued != 4 {
		t.Errorf("pool: busy %d queued %d", busy, queued)
	}

	clock.Open()
	wg.Wait()
	st = h.state.Snapshot()
	want := Stats{Name: h.Name, Requests: 6, ReachedFull: 4, PeakInflight: 2, PeakConcurrent: 6, Served: 6}
	if st != want {
		t.Errorf("after: %+v, want %+v", st, want)
	}
}

func TestQueueLimit(t *testing.T) {
	for _, tc := range []struct {
		maxQueue    int
		wantWaiting int64
	}{{0, 0}, {1, 1}, {3, 3}} {
		t.Run(fmt.Sprint("max_queue=", tc.maxQueue), func(t *testing.T) {
			clock := newStepClock()
			h := provision(t, &Handler{Slots: 1, MaxQueue: &tc.maxQueue, wait: clock.wait})
			srv := serve(t, h)
			defer clock.Open()

			var wg sync.WaitGroup
			for range 1 + tc.maxQueue {
				wg.Go(func() { post(t, srv.URL+"/v1/completions", `{}`) })
			}
			eventually(t, "the slot and the queue fill", func() bool {
				st := h.state.Snapshot()
				return st.Inflight == 1 && st.Queued == tc.wantWaiting
			})
			resp := post(t, srv.URL+"/v1/completions", `{}`)
			wantOpenAIError(t, resp, http.StatusServiceUnavailable)
			st := h.state.Snapshot()
			if st.ReachedFull != int64(tc.maxQueue)+1 || st.Failed != 1 {
				t.Errorf("stats %+v: want reached_full %d (queued and rejected), failed 1", st, tc.maxQueue+1)
			}
			clock.Open()
			wg.Wait()
		})
	}
}

// TestClientLeaves checks a request whose client goes away stops at once,
// whether it waits for a slot or is generating, and leaks no slot.
func TestClientLeaves(t *testing.T) {
	clock := newStepClock()
	h := provision(t, &Handler{Slots: 1, wait: clock.wait})

	serveCanceled := func(name string, until func(Stats) bool) {
		t.Run(name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan struct{})
			go func() {
				defer close(done)
				req := httptest.NewRequestWithContext(ctx, "POST", "/v1/chat/completions", strings.NewReader(`{}`))
				_ = h.ServeHTTP(httptest.NewRecorder(), req, nil)
			}()
			eventually(t, "the request is in place", func() bool { return until(h.state.Snapshot()) })
			cancel()
			select {
			case <-done:
			case <-time.After(5 * time.Second):
				t.Fatal("handler still running 5s after its client left")
			}
		})
	}
	// The first request holds the slot; the second queues and leaves, then
	// the first leaves mid-generation.
	holderCtx, holderCancel := context.WithCancel(context.Background())
	holderDone := make(chan struct{})
	go func() {
		defer close(holderDone)
		req := httptest.NewRequestWithContext(holderCtx, "POST", "/v1/chat/completions", strings.NewReader(`{}`))
		_ = h.ServeHTTP(httptest.NewRecorder(), req, nil)
	}()
	eventually(t, "the first request holds the slot", func() bool { return h.state.Snapshot().Inflight == 1 })
	serveCanceled("queued", func(st Stats) bool { return st.Queued == 1 })
	holderCancel()
	<-holderDone

	st := h.state.Snapshot()
	if st.Canceled != 2 || st.Inflight != 0 || st.Queued != 0 || st.Served != 0 {
		t.Errorf("stats = %+v, want 2 canceled and nothing left in flight", st)
	}
	if busy, queued := h.slots.Busy(); busy != 0 || queued != 0 {
		t.Errorf("pool busy %d queued %d, want a free slot", busy, queued)
	}
	clock.Open()
	rec := httptest.NewRecorder()
	_ = h.ServeHTTP(rec, httptest.NewRequest("POST", "/v1/chat/completions", strings.NewReader(`{}`)), nil)
	if rec.Code != 200 {
		t.Errorf("next request: status %d", rec.Code)
	}
}

// TestCountedBeforeAnswered checks a request has left the counters before
// the last bytes of its answer are written: a client that has read the whole
// answer may send its next request at once, and if it bounds its own
// concurrency the sim must never seem to exceed that bound.
func TestCountedBeforeAnswered(t *testing.T) {
	h := provision(t, &Handler{Slots: 1, wait: noWait})
	for i, tc := range []struct{ path, body, last string }{
		{"/v1/chat/completions", `{}`, `"chat.completion"`},
		{"/v1/completions", `{}`, `"text_completion"`},
		{"/v1/responses", `{}`, `"response"`},
		{"/v1/embeddings", `{"input":"x"}`, `"embedding"`},
		{"/v1/chat/completions", `{"stream":true}`, `"finish_reason":"stop"`},
		{"/v1/completions", `{"stream":true}`, `"finish_reason":"stop"`},
		{"/v1/responses", `{"stream":true}`, `response.completed`},
	} {
		w := &snapshotWriter{ResponseRecorder: httptest.NewRecorder(), last: tc.last, state: h.state}
		_ = h.ServeHTTP(w, httptest.NewRequest("POST", tc.path, strings.NewReader(tc.body)), nil)
		if w.atLast == nil {
			t.Fatalf("%s %s: never wrote %s:\n%s", tc.path, tc.body, tc.last, w.Body)
		}
		if st := *w.atLast; st.Served != int64(i+1) || st.Inflight != 0 {
			t.Errorf("%s %s: while writing its end the counters were %+v", tc.path, tc.body, st)
		}
	}
}

// snapshotWriter records the counters when the answer's ending is written.
type snapshotWriter struct {
	*httptest.ResponseRecorder
	last   string
	state  *simState
	atLast *Stats
}

func (w *snapshotWriter) Write(p []byte) (int, error) {
	if w.atLast == nil && strings.Contains(string(p), w.last) {
		st := w.state.Snapshot()
		w.atLast = &st
	}
	return w.ResponseRecorder.Write(p)
}

func TestStatsEndpointsAndSharing(t *testing.T) {
	name := uniqueName(t)
	first := provision(t, &Handler{Name: name, wait: noWait})
	other := provision(t, &Handler{Name: name + "-other", wait: noWait})
	srv := serve(t, first)
	post(t, srv.URL+"/v1/chat/completions", `{}`)
	post(t, srv.URL+"/v1/completions", `{}`, FaultHeader, "500")

	// A reload provisions a new handler; it must see the old counts.
	reloaded := provision(t, &Handler{Name: name, Slots: 9, wait: noWait})
	srv2 := serve(t, reloaded)
	resp, err := http.Get(srv2.URL + "/sim/stats")
	if err != nil {
		t.Fatal(err)
	}
	got := decode(t, resp)
	want := map[string]any{
		"name": name, "requests": 2.0, "reached_full": 0.0, "peak_inflight": 1.0, "peak_concurrent": 1.0,
		"inflight": 0.0, "queued": 0.0, "served": 1.0, "failed": 1.0, "canceled": 0.0,
	}
	if len(got) != len(want) {
		t.Errorf("stats keys: got %v, want %v", got, want)
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("stats[%q] = %v, want %v", k, got[k], v)
		}
	}
	if st := other.state.Snapshot(); st.Requests != 0 {
		t.Errorf("a sim with another name shares counts: %+v", st)
	}

	resp = post(t, srv2.URL+"/sim/reset", "")
	if got := decode(t, resp); got["requests"] != 0.0 || got["served"] != 0.0 || got["peak_inflight"] != 0.0 {
		t.Errorf("after reset: %v", got)
	}
	if st := first.state.Snapshot(); st != (Stats{Name: name}) {
		t.Errorf("after reset: %+v", st)
	}
	resp, err = http.Get(srv2.URL + "/sim/reset")
	if err != nil {
		t.Fatal(err)
	}
	wantOpenAIError(t, resp, http.StatusMethodNotAllowed)
}

// TestResetKeepsLiveGauges resets while a request holds a slot: inflight and
// the peaks stay consistent and never go negative when it finishes.
func TestResetKeepsLiveGauges(t *testing.T) {
	clock := newStepClock()
	h := provision(t, &Handler{wait: clock.wait})
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest("POST", "/v1/chat/completions", strings.NewReader(`{}`)), nil)
	}()
	eventually(t, "the request is in its slot", func() bool { return h.state.Snapshot().Inflight == 1 })
	h.state.Reset()
	if st := h.state.Snapshot(); st.Inflight != 1 || st.PeakInflight != 1 || st.PeakConcurrent != 1 || st.Requests != 0 {
		t.Errorf("after reset: %+v", st)
	}
	clock.Open()
	<-done
	if st := h.state.Snapshot(); st.Inflight != 0 || st.Served != 1 || st.Requests != 0 {
		t.Errorf("after the request: %+v", st)
	}
}

// TestParseTokenCounts: max_tokens and its aliases take any JSON number with
// a whole value, as the router does; fractions, strings and counts under 1
// are the client's error.
func TestParseTokenCounts(t *testing.T) {
	for _, tt := range []struct {
		body string
		want int // 0: an error
	}{
		{`{"model":"m","max_tokens":3}`, 3},
		{`{"model":"m","max_tokens":1e2}`, 100},
		{`{"model":"m","max_completion_tokens":64.0}`, 64},
		{`{"model":"m","max_output_tokens":7}`, 7},
		{`{"model":"m","max_tokens":1.5}`, 0},
		{`{"model":"m","max_tokens":"9"}`, 0},
		{`{"model":"m","max_tokens":0}`, 0},
		{`{"model":"m","max_tokens":1e999}`, 0},
	} {
		req, err := parseRequest(kindChat, []byte(tt.body))
		switch {
		case tt.want == 0 && err == nil:
			t.Errorf("%s: accepted, want an error", tt.body)
		case tt.want != 0 && err != nil:
			t.Errorf("%s: %v", tt.body, err)
		case tt.want != 0 && req.tokenLimit() != tt.want:
			t.Errorf("%s: limit %d, want %d", tt.body, req.tokenLimit(), tt.want)
		}
	}
}
