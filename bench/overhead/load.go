package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"sync"
	"time"
)

// chatBody is the small chat request every worker posts.
var chatBody = []byte(`{"model":"bench","messages":[{"role":"user","content":"Say ok."}],"max_tokens":8}`)

// roundResult is one contender's share of one round.
type roundResult struct {
	requests  int             // answered with 200
	errors    int             // transport errors and non-200 answers
	elapsed   time.Duration   // from the first request to the last answer
	latencies []time.Duration // of the 200 answers
	firstErr  string
}

func (r roundResult) throughput() float64 {
	if r.elapsed <= 0 {
		return 0
	}
	return float64(r.requests) / r.elapsed.Seconds()
}

// newClient returns a client with its own connection pool, big enough that
// every worker keeps its keep-alive connection.
func newClient(concurrency int) *http.Client {
	return &http.Client{
		Transport: &http.Transport{
			Proxy:               nil, // loopback only, whatever the environment says
			MaxIdleConns:        0,
			MaxIdleConnsPerHost: concurrency,
			IdleConnTimeout:     90 * time.Second,
			DisableCompression:  true,
		},
		Timeout: 30 * time.Second,
	}
}

// closedLoop runs concurrency workers, each posting chatBody and waiting for
// the whole answer before posting again, until d has passed or ctx is done.
// Worker i sends to urls[i % len(urls)].
func closedLoop(ctx context.Context, client *http.Client, urls []string, concurrency int, d time.Duration) roundResult {
	type worker struct {
		n, errs   int
		latencies []time.Duration
		firstErr  string
	}
	workers := make([]worker, concurrency)
	start := time.Now()
	deadline := start.Add(d)
	var wg sync.WaitGroup
	for i := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			w := &workers[i]
			w.latencies = make([]time.Duration, 0, 4096)
			url := urls[i%len(urls)]
			for time.Now().Before(deadline) && ctx.Err() == nil {
				t0 := time.Now()
				err := post(ctx, client, url)
				if err != nil {
					if ctx.Err() != nil {
						return
					}
					w.errs++
					if w.firstErr == "" {
						w.firstErr = err.Error()
					}
					time.Sleep(time.Millisecond) // no hot loop against a dead contender
					continue
				}
				w.latencies = append(w.latencies, time.Since(t0))
				w.n++
			}
		}()
	}
	wg.Wait()
	res := roundResult{elapsed: time.Since(start)}
	for _, w := range workers {
		res.requests += w.n
		res.errors += w.errs
		res.latencies = append(res.latencies, w.latencies...)
		if res.firstErr == "" {
			res.firstErr = w.firstErr
		}
	}
	return res
}

func post(ctx context.Context, client *http.Client, url string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(chatBody))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		snippet, _ := io.ReadAll(io.LimitReader(resp.Body, 300))
		return fmt.Errorf("status %d: %s", resp.StatusCode, bytes.TrimSpace(snippet))
	}
	_, err = io.Copy(io.Discard, resp.Body)
	return err
}
