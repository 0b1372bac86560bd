package caddymodule

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
)

// Webhook delivery: transitions are queued (bounded: when the receiver is
// down for long, the newest transitions beyond webhookQueue are dropped and
// counted, never blocking the evaluator, let alone a request) and sent one at
// a time by the pool's sender, each retried with exponential backoff.
const (
	webhookQueue        = 64
	webhookAttempts     = 6
	webhookFirstBackoff = 200 * time.Millisecond
	webhookMaxBackoff   = 10 * time.Second
	webhookTimeout      = 5 * time.Second
)

type webhookItem struct {
	url string
	ev  alertEvent
}

type webhook struct {
	queue   chan webhookItem
	client  *http.Client
	logger  *zap.Logger
	dropped atomic.Int64 // transitions dropped because the queue was full
	failed  atomic.Int64 // transitions given up on after every attempt
	sent    atomic.Int64
}

func newWebhook(logger *zap.Logger) *webhook {
	return &webhook{
		queue:  make(chan webhookItem, webhookQueue),
		client: &http.Client{Timeout: webhookTimeout},
		logger: logger,
	}
}

// enqueue queues a transition without blocking.
func (w *webhook) enqueue(target string, ev alertEvent) {
	select {
	case w.queue <- webhookItem{url: target, ev: ev}:
	default:
		if w.dropped.Add(1) == 1 || w.dropped.Load()%100 == 0 {
			w.logger.Warn("alert webhook queue full: dropping transitions", zap.Int64("dropped", w.dropped.Load()))
		}
	}
}

// run sends queued transitions until stop closes.
func (w *webhook) run(stop <-chan struct{}) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		<-stop
		cancel()
	}()
	for {
		select {
		case <-stop:
			return
		case it := <-w.queue:
			w.deliver(ctx, it)
		}
	}
}

// deliver POSTs one transition, retrying failures (no answer, or a status
// other than 2xx) with exponential backoff.
func (w *webhook) deliver(ctx context.Context, it webhookItem) {
	body, err := json.Marshal(it.ev)
	if err != nil {
		return
	}
	backoff := webhookFirstBackoff
	var lastErr error
	for attempt := 1; attempt <= webhookAttempts; attempt++ {
		if lastErr = w.post(ctx, it.url, body); lastErr == nil {
			w.sent.Add(1)
			return
		}
		if attempt == webhookAttempts {
			break
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, webhookMaxBackoff)
	}
	w.failed.Add(1)
	// The URL is the operator's; it is logged without its query, which may
	// carry a token.
	w.logger.Warn("alert webhook failed: transition dropped", zap.String("alert", it.ev.Alert),
		zap.String("backend", it.ev.Backend), zap.String("state", it.ev.State), zap.Error(lastErr))
}

func (w *webhook) post(ctx context.Context, target string, body []byte) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, target, bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("building the webhook request: %w", err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "model-router-alerts")
	resp, err := w.client.Do(req)
	if err != nil {
		return fmt.Errorf("posting the alert: %w", redactURLError(err))
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return fmt.Errorf("the webhook answered %s", resp.Status)
	}
	return nil
}

// redactURLError drops the URL from a client error: its query may carry a
// token.
func redactURLError(err error) error {
	if ue, ok := err.(*url.Error); ok {
		return fmt.Errorf("%s: %w", ue.Op, ue.Err)
	}
	return err
}
