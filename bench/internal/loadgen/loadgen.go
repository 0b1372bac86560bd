// Package loadgen sends a workload open-loop: each request at its scheduled
// time whatever is still outstanding, timed from that schedule (so a late
// send counts against the contender: no coordinated omission), chat answers
// decoded and streams read to their end.
package loadgen

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sync"
	"time"

	"github.com/modelrouter/modelrouter/bench/internal/workload"
)

// SimHeader is the response header in which a model_router_sim names
// itself; proxies pass it through, so it tells which backend answered.
const SimHeader = "X-Sim-Name"

// ExplainHeader is the response header in which model_router explains its
// decision, to requests that carry its configured explain_header.
const ExplainHeader = "X-Model-Router-Explain"

// Outcome is how one request went. Times run from the request's scheduled
// arrival.
type Outcome struct {
	Arrival workload.Arrival
	OK      bool
	Latency time.Duration // to the end of the answer
	TTFT    time.Duration // streams: to the first data line
	Lag     time.Duration // how late the generator sent it
	Failure string        // why it failed
	Sim     string        // the backend that answered (SimHeader), "" if none said
	Explain string        // the router's explanation (ExplainHeader), if it gave one
}

// NewClient returns an HTTP client for loopback load: no proxy from the
// environment, plenty of idle connections, no transparent compression.
func NewClient() *http.Client {
	return &http.Client{Transport: &http.Transport{
		Proxy:               nil, // loopback only, whatever the environment says
		MaxIdleConnsPerHost: 1024,
		IdleConnTimeout:     90 * time.Second,
		DisableCompression:  true,
	}}
}

// OpenLoop sends each arrival at start + its offset, whatever is still
// outstanding, arrival a to urls[a.Index % len(urls)] with the extra header
// (may be nil), and returns when every request has ended (each bounded by
// timeout). When ctx is done it stops sending, cancels what is outstanding
// and returns the outcomes so far.
func OpenLoop(ctx context.Context, client *http.Client, urls []string, header http.Header, chunk []workload.Arrival, start time.Time, timeout time.Duration) []Outcome {
	out := make([]Outcome, len(chunk))
	var wg sync.WaitGroup
	for i, a := range chunk {
		at := start.Add(a.Offset)
		if d := time.Until(at); d > 0 {
			select {
			case <-time.After(d):
			case <-ctx.Done():
			}
		}
		if ctx.Err() != nil {
			out = out[:i]
			break
		}
		lag := time.Since(at)
		wg.Add(1)
		go func() {
			defer wg.Done()
			out[i] = Send(ctx, client, urls[a.Index%len(urls)], header, a, at, timeout)
			out[i].Lag = lag
		}()
	}
	wg.Wait()
	return out
}

// Send sends one chat request, with the extra header (may be nil) and, for a
// request with a task, the capability header naming it, and reads its answer; at is its scheduled arrival, which its times count from.
func Send(ctx context.Context, client *http.Client, url string, header http.Header, a workload.Arrival, at time.Time, timeout time.Duration) Outcome {
	o := Outcome{Arrival: a}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(a.Body()))
	if err != nil {
		o.Failure = err.Error()
		return o
	}
	for k, vs := range header {
		req.Header[k] = vs
	}
	req.Header.Set("Content-Type", "application/json")
	if a.Task != "" {
		req.Header.Set(workload.CapabilityHeader, a.Task)
	}
	resp, err := client.Do(req)
	if err != nil {
		o.Failure = "transport: " + err.Error()
		o.Latency = time.Since(at)
		return o
	}
	defer resp.Body.Close()
	o.Sim = resp.Header.Get(SimHeader)
	o.Explain = resp.Header.Get(ExplainHeader)
	if resp.StatusCode != http.StatusOK {
		snippet, _ := io.ReadAll(io.LimitReader(resp.Body, 300))
		o.Failure = fmt.Sprintf("status %d: %s", resp.StatusCode, bytes.TrimSpace(snippet))
		o.Latency = time.Since(at)
		return o
	}
	if a.Stream {
		o.OK, o.Failure = ReadStream(resp.Body, at, &o.TTFT)
	} else {
		var answer struct {
			Choices []json.RawMessage `json:"choices"`
		}
		if err := json.NewDecoder(resp.Body).Decode(&answer); err != nil {
			o.Failure = "decoding answer: " + err.Error()
		} else if len(answer.Choices) == 0 {
			o.Failure = "answer without choices"
		} else {
			o.OK = true
		}
	}
	o.Latency = time.Since(at)
	return o
}

// ReadStream reads an SSE chat stream to its end, noting when the first data
// line arrived; a stream is complete when it ends with "data: [DONE]".
func ReadStream(body io.Reader, at time.Time, ttft *time.Duration) (ok bool, failure string) {
	r := bufio.NewReader(body)
	done := false
	for {
		line, err := r.ReadSlice('\n')
		if bytes.HasPrefix(line, []byte("data:")) {
			payload := bytes.TrimSpace(line[len("data:"):])
			if bytes.Equal(payload, []byte("[DONE]")) {
				done = true
			} else if *ttft == 0 {
				*ttft = time.Since(at)
			}
		}
		if err == bufio.ErrBufferFull {
			continue // a long line; its prefix was looked at already
		}
		if err == io.EOF {
			if !done {
				return false, "stream ended without [DONE]"
			}
			return true, ""
		}
		if err != nil {
			return false, "reading stream: " + err.Error()
		}
	}
}
