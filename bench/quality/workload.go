package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"sync"
	"time"
)

// arrival is one request of the workload.
type arrival struct {
	index  int           // position in the whole workload; picks the replica
	offset time.Duration // from the start of its round
	stream bool
}

// schedule draws n Poisson arrivals at rate per second from seed, a fraction
// streamFrac of them streaming (exactly rounded, shuffled), and cuts them into
// rounds consecutive chunks, each with offsets from its own start. Every
// contender gets the same chunks.
func schedule(n, rounds int, rate, streamFrac float64, seed uint64) [][]arrival {
	rng := rand.New(rand.NewPCG(seed, 0x6d6f64656c726f75)) // fixed stream: the seed alone decides
	streams := make([]bool, n)
	for i := range int(float64(n)*streamFrac + 0.5) {
		streams[i] = true
	}
	rng.Shuffle(n, func(i, j int) { streams[i], streams[j] = streams[j], streams[i] })

	all := make([]arrival, n)
	var t float64
	for i := range all {
		t += rng.ExpFloat64() / rate
		all[i] = arrival{index: i, offset: time.Duration(t * float64(time.Second)), stream: streams[i]}
	}
	chunks := make([][]arrival, 0, rounds)
	for r := range rounds {
		lo, hi := r*n/rounds, (r+1)*n/rounds
		if lo == hi {
			continue
		}
		chunk := append([]arrival(nil), all[lo:hi]...)
		base := chunk[0].offset
		for i := range chunk {
			chunk[i].offset -= base
		}
		chunks = append(chunks, chunk)
	}
	return chunks
}

// outcome is how one request went. Times run from the request's scheduled
// arrival, so a late send counts against the result (no coordinated omission).
type outcome struct {
	stream  bool
	ok      bool
	latency time.Duration // to the end of the answer
	ttft    time.Duration // streams: to the first data line
	lag     time.Duration // how late the generator sent it
	failure string        // why it failed
}

var (
	chatBody   = []byte(`{"model":"bench","messages":[{"role":"user","content":"Write a haiku about load balancing."}]}`)
	streamBody = []byte(`{"model":"bench","messages":[{"role":"user","content":"Write a haiku about load balancing."}],"stream":true}`)
)

func newClient() *http.Client {
	return &http.Client{Transport: &http.Transport{
		Proxy:               nil, // loopback only, whatever the environment says
		MaxIdleConnsPerHost: 1024,
		IdleConnTimeout:     90 * time.Second,
		DisableCompression:  true,
	}}
}

// openLoop sends each arrival at its offset from now, whatever is still
// outstanding, arrival i to urls[i.index % len(urls)], and returns when every
// request has ended (each bounded by timeout). When ctx is done it stops
// sending, cancels what is outstanding and returns the outcomes so far.
func openLoop(ctx context.Context, client *http.Client, urls []string, chunk []arrival, timeout time.Duration) []outcome {
	out := make([]outcome, len(chunk))
	var wg sync.WaitGroup
	start := time.Now()
	for i, a := range chunk {
		at := start.Add(a.offset)
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
			out[i] = send(ctx, client, urls[a.index%len(urls)], a.stream, at, timeout)
			out[i].lag = lag
		}()
	}
	wg.Wait()
	return out
}

func send(ctx context.Context, client *http.Client, url string, stream bool, at time.Time, timeout time.Duration) outcome {
	o := outcome{stream: stream}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	body := chatBody
	if stream {
		body = streamBody
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		o.failure = err.Error()
		return o
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		o.failure = "transport: " + err.Error()
		o.latency = time.Since(at)
		return o
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		snippet, _ := io.ReadAll(io.LimitReader(resp.Body, 300))
		o.failure = fmt.Sprintf("status %d: %s", resp.StatusCode, bytes.TrimSpace(snippet))
		o.latency = time.Since(at)
		return o
	}
	if stream {
		o.ok, o.failure = readStream(resp.Body, at, &o.ttft)
	} else {
		var answer struct {
			Choices []json.RawMessage `json:"choices"`
		}
		if err := json.NewDecoder(resp.Body).Decode(&answer); err != nil {
			o.failure = "decoding answer: " + err.Error()
		} else if len(answer.Choices) == 0 {
			o.failure = "answer without choices"
		} else {
			o.ok = true
		}
	}
	o.latency = time.Since(at)
	return o
}

// readStream reads an SSE chat stream to its end, noting when the first data
// line arrived; a stream is complete when it ends with "data: [DONE]".
func readStream(body io.Reader, at time.Time, ttft *time.Duration) (ok bool, failure string) {
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
