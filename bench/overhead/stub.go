package main

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// stubAnswer is the fixed, small chat.completion every stub request gets.
var stubAnswer = []byte(`{"id":"chatcmpl-bench","object":"chat.completion","created":1700000000,"model":"bench",` +
	`"choices":[{"index":0,"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}],` +
	`"usage":{"prompt_tokens":9,"completion_tokens":1,"total_tokens":10}}`)

// serveStub is the stub backend: the benchmark re-executes itself with
// -serve-stub so the stub has a Go runtime of its own, apart from the load
// generator's and Caddy's. It answers every request on every address with
// stubAnswer, as fast as net/http can, and never returns.
func serveStub(addrs string) error {
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		h := w.Header()
		h["Content-Type"] = []string{"application/json"}
		h["Content-Length"] = []string{strconv.Itoa(len(stubAnswer))}
		_, _ = w.Write(stubAnswer)
	})
	errs := make(chan error)
	for _, addr := range strings.Split(addrs, ",") {
		l, err := net.Listen("tcp", addr)
		if err != nil {
			return fmt.Errorf("stub listening on %s: %w", addr, err)
		}
		srv := &http.Server{Handler: handler, ReadHeaderTimeout: 10 * time.Second}
		go func() { errs <- srv.Serve(l) }()
	}
	return <-errs
}
