package sim

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

func TestParseFault(t *testing.T) {
	for mode, want := range map[string]fault{
		"hang":            {mode: "hang"},
		"abort_midstream": {mode: "abort_midstream"},
		"slow_headers":    {mode: "slow_headers"},
		"500":             {mode: "500", status: 500},
		"503":             {mode: "503", status: 503},
		"429":             {mode: "429", status: 429},
	} {
		if got, err := parseFault(mode); err != nil || got != want {
			t.Errorf("parseFault(%q) = %+v, %v", mode, got, err)
		}
	}
	for _, mode := range []string{"", "200", "399", "600", "Hang", "abort", "5OO"} {
		if _, err := parseFault(mode); err == nil {
			t.Errorf("parseFault(%q) accepted", mode)
		}
	}
}

// armFault posts a fault to the sim and returns the armed one it reports.
func armFault(t *testing.T, url, body string) map[string]any {
	t.Helper()
	resp := post(t, url+"/sim/fault", body)
	if resp.StatusCode != 200 {
		t.Fatalf("POST /sim/fault %s: status %d", body, resp.StatusCode)
	}
	return decode(t, resp)
}

func TestStatusFaults(t *testing.T) {
	h := provision(t, &Handler{wait: noWait})
	srv := serve(t, h)
	chat := func(header ...string) int {
		resp := post(t, srv.URL+"/v1/chat/completions", `{}`, header...)
		if resp.StatusCode != 200 {
			e := wantOpenAIError(t, resp, resp.StatusCode)
			if want := errorType(resp.StatusCode); e["type"] != want {
				t.Errorf("error type %v, want %s", e["type"], want)
			}
		}
		return resp.StatusCode
	}

	if got := armFault(t, srv.URL, `{"mode":"503","count":2}`); got["mode"] != "503" || got["count"] != 2.0 {
		t.Errorf("armed = %v", got)
	}
	// The header wins over the armed fault and does not use it up.
	if got := chat(FaultHeader, "429"); got != 429 {
		t.Errorf("with header: %d", got)
	}
	for i, want := range []int{503, 503, 200, 200} {
		if got := chat(); got != want {
			t.Errorf("request %d after arming 503 x2: %d, want %d", i, got, want)
		}
	}
	resp, _ := http.Get(srv.URL + "/sim/fault")
	if got := decode(t, resp); got["mode"] != "" || got["count"] != 0.0 {
		t.Errorf("used-up fault still armed: %v", got)
	}

	armFault(t, srv.URL, `{"mode":"500"}`) // count 0: until cleared
	for i := range 5 {
		if got := chat(); got != 500 {
			t.Errorf("request %d with 500 until cleared: %d", i, got)
		}
	}
	armFault(t, srv.URL, `{"mode":"","count":3}`)
	if got := chat(); got != 200 {
		t.Errorf("after clearing: %d", got)
	}

	// Models and the /sim/ endpoints ignore armed faults.
	armFault(t, srv.URL, `{"mode":"500"}`)
	if resp, _ := http.Get(srv.URL + "/v1/models"); resp.StatusCode != 200 {
		t.Errorf("/v1/models with an armed fault: %d", resp.StatusCode)
	}
	st := h.state.Snapshot()
	if st.Requests != 11 || st.Failed != 1+2+5 || st.Served != 2+1 {
		t.Errorf("stats = %+v", st)
	}
}

func TestFaultRequestErrors(t *testing.T) {
	h := provision(t, &Handler{wait: noWait})
	srv := serve(t, h)
	for _, body := range []string{`{"mode":"boom"}`, `{"mode":"500","count":-1}`, `{"mode":500}`, `{"mode":"500","cnt":1}`, `not json`} {
		wantOpenAIError(t, post(t, srv.URL+"/sim/fault", body), http.StatusBadRequest)
	}
	resp := post(t, srv.URL+"/v1/chat/completions", `{}`, FaultHeader, "sometimes")
	e := wantOpenAIError(t, resp, http.StatusBadRequest)
	if !strings.Contains(e["message"].(string), FaultHeader) {
		t.Errorf("message %q does not name the header", e["message"])
	}
}

func TestFailStatus(t *testing.T) {
	h := provision(t, &Handler{FailStatus: 502, wait: noWait})
	srv := serve(t, h)
	wantOpenAIError(t, post(t, srv.URL+"/v1/chat/completions", `{"stream":true}`), 502)
	wantOpenAIError(t, post(t, srv.URL+"/v1/embeddings", `{"input":"x"}`), 502)
	wantOpenAIError(t, post(t, srv.URL+"/v1/chat/completions", `{}`, FaultHeader, "slow_headers"), 502)
	resp, err := http.Get(srv.URL + "/v1/models")
	if err != nil {
		t.Fatal(err)
	}
	wantOpenAIError(t, resp, 502)
	resp, err = http.Get(srv.URL + "/sim/stats")
	if err != nil {
		t.Fatal(err)
	}
	if got := decode(t, resp); resp.StatusCode != 200 || got["failed"] != 3.0 {
		t.Errorf("/sim/stats: %d %v", resp.StatusCode, got)
	}
}

func TestHang(t *testing.T) {
	h := provision(t, &Handler{Slots: 1, wait: noWait})
	srv := serve(t, h)
	armFault(t, srv.URL, `{"mode":"hang","count":1}`)

	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "POST", srv.URL+"/v1/chat/completions", strings.NewReader(`{}`))
	if resp, err := http.DefaultClient.Do(req); err == nil {
		resp.Body.Close()
		t.Fatalf("hung request answered %d", resp.StatusCode)
	} else if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("hung request: %v", err)
	}
	eventually(t, "the hung request ends after its client left", func() bool { return h.state.Snapshot().Canceled == 1 })
	// It held no slot: the single slot serves the next request.
	if resp := post(t, srv.URL+"/v1/chat/completions", `{}`); resp.StatusCode != 200 {
		t.Errorf("next request: %d", resp.StatusCode)
	}
}

func TestAbortMidstream(t *testing.T) {
	h := provision(t, &Handler{Tokens: 10, wait: noWait})
	srv := serve(t, h)

	t.Run("stream", func(t *testing.T) {
		resp := post(t, srv.URL+"/v1/chat/completions", `{"stream":true}`, FaultHeader, FaultAbortMidstream)
		if resp.StatusCode != 200 {
			t.Fatalf("status %d", resp.StatusCode)
		}
		r := bufio.NewReader(resp.Body)
		var got int
		var err error
		for {
			var ev sseEvent
			if ev, err = readEvent(r); err != nil {
				break
			}
			if ev.data == "[DONE]" {
				t.Fatal("aborted stream ended cleanly")
			}
			got++
		}
		if got != abortAfterEvents || !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Errorf("got %d events then %v; want %d then an unexpected EOF", got, err, abortAfterEvents)
		}
	})

	for _, path := range []string{"/v1/completions", "/v1/embeddings"} {
		t.Run("non-stream "+path, func(t *testing.T) {
			req, _ := http.NewRequest("POST", srv.URL+path, strings.NewReader(`{"input":"x"}`))
			req.Header.Set(FaultHeader, FaultAbortMidstream)
			if resp, err := http.DefaultClient.Do(req); err == nil {
				resp.Body.Close()
				t.Fatalf("aborted request answered %d", resp.StatusCode)
			}
		})
	}

	if st := h.state.Snapshot(); st.Failed != 3 || st.Inflight != 0 || st.Served != 0 {
		t.Errorf("stats = %+v", st)
	}
}

func TestSlowHeaders(t *testing.T) {
	t.Run("answers after the delay", func(t *testing.T) {
		clock := newStepClock()
		clock.Open()
		h := provision(t, &Handler{wait: clock.wait})
		srv := serve(t, h)
		resp := post(t, srv.URL+"/v1/chat/completions", `{}`, FaultHeader, FaultSlowHeaders)
		if resp.StatusCode != 200 {
			t.Errorf("status %d", resp.StatusCode)
		}
		if waits := clock.Waits(); len(waits) != 2 || waits[0] != slowHeadersDelay {
			t.Errorf("waits = %v, want the %s header delay first", waits, slowHeadersDelay)
		}
	})

	t.Run("client gives up", func(t *testing.T) {
		h := provision(t, &Handler{}) // the real clock and the real 10s delay
		srv := serve(t, h)
		client := &http.Client{Transport: &http.Transport{ResponseHeaderTimeout: 100 * time.Millisecond}}
		defer client.CloseIdleConnections()
		req, _ := http.NewRequest("POST", srv.URL+"/v1/chat/completions", strings.NewReader(`{}`))
		req.Header.Set(FaultHeader, FaultSlowHeaders)
		if resp, err := client.Do(req); err == nil {
			resp.Body.Close()
			t.Fatalf("answered %d before the header timeout", resp.StatusCode)
		}
		// A handler that slept through its client leaving would count the
		// request served, 10s later.
		eventually(t, "the handler gives up with its client", func() bool {
			st := h.state.Snapshot()
			return st.Canceled == 1 && st.Inflight == 0
		})
		if st := h.state.Snapshot(); st.Served != 0 {
			t.Errorf("served %d: the handler slept through its client leaving", st.Served)
		}
	})
}

// TestStallMidstream: the answer starts and then goes silent without ending,
// until the client leaves; the request counts as failed.
func TestStallMidstream(t *testing.T) {
	h := provision(t, &Handler{Tokens: 10, wait: noWait})
	srv := serve(t, h)
	for _, tt := range []struct{ name, body string }{{"stream", `{"stream":true}`}, {"non-stream", `{}`}} {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			req, _ := http.NewRequestWithContext(ctx, "POST", srv.URL+"/v1/chat/completions", strings.NewReader(tt.body))
			req.Header.Set(FaultHeader, FaultStallMidstream)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			if resp.StatusCode != 200 {
				t.Fatalf("status %d", resp.StatusCode)
			}
			// Read what was sent; the next read blocks until we cancel.
			r := bufio.NewReader(resp.Body)
			if tt.name == "stream" {
				for range abortAfterEvents {
					if _, err := readEvent(r); err != nil {
						t.Fatalf("reading the events before the stall: %v", err)
					}
				}
			} else if _, err := r.Peek(1); err != nil {
				t.Fatalf("reading the start of the answer: %v", err)
			}
			if st := h.state.Snapshot(); st.Inflight != 1 {
				t.Fatalf("the stalled request is not in its slot: %+v", st)
			}
			cancel()
			eventually(t, "the stalled request ends with its client", func() bool { return h.state.Snapshot().Inflight == 0 })
		})
	}
	if st := h.state.Snapshot(); st.Failed != 2 || st.Served != 0 {
		t.Errorf("stats = %+v, want 2 failed", st)
	}
}

// TestStatusFaultRetryAfter: a status fault's answer carries Retry-After when
// the request asks for one.
func TestStatusFaultRetryAfter(t *testing.T) {
	h := provision(t, &Handler{wait: noWait})
	srv := serve(t, h)
	resp := post(t, srv.URL+"/v1/chat/completions", `{}`, FaultHeader, "429", RetryAfterHeader, "7")
	if resp.StatusCode != 429 || resp.Header.Get("Retry-After") != "7" {
		t.Errorf("status %d Retry-After %q, want 429 and 7", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
	resp = post(t, srv.URL+"/v1/chat/completions", `{}`, FaultHeader, "503")
	if resp.StatusCode != 503 || resp.Header.Get("Retry-After") != "" {
		t.Errorf("status %d Retry-After %q, want 503 and none", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
}
