package caddymodule

// Request framing: content codings, chunked bodies with trailers, Expect:
// 100-continue, declared lengths over max_body, and the memory a body costs
// before it arrives. Framing tests speak raw HTTP/1.1 over net.Dial, since Go's
// client would normalise what a hostile client sends.

import (
	"bufio"
	"bytes"
	"compress/flate"
	"compress/gzip"
	"compress/zlib"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
)

// rawTimeout bounds every raw-socket read and write, so that a server that
// never answers fails the test instead of hanging it. It is not a timing
// assertion: a healthy server answers long before.
const rawTimeout = 30 * time.Second

// framingGateway is a gateway with two backends: "plain" (model m1, no
// api_key) and "keyed" (model m2, called vendor/m2 upstream, api_key
// upstream-key).
func framingGateway(t *testing.T, maxBody string, plain, keyed string) *gateway {
	t.Helper()
	return startGateway(t, gatewayOptions{}, `
{{url "gw"}} {
	model_router {
		pool {{.Pool}}
		max_body `+maxBody+`
		backend plain {{index .Up "plain"}} {
			models m1
			max_inflight 8
		}
		backend keyed {{index .Up "keyed"}} {
			models m2=vendor/m2
			max_inflight 8
			api_key upstream-key
		}
	}
}
`, map[string]string{"plain": plain, "keyed": keyed})
}

func gzipped(t testing.TB, b []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	if _, err := zw.Write(b); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func zlibbed(t testing.TB, b []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := zlib.NewWriter(&buf)
	if _, err := zw.Write(b); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func deflated(t testing.TB, b []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	fw, err := flate.NewWriter(&buf, flate.DefaultCompression)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := fw.Write(b); err != nil {
		t.Fatal(err)
	}
	if err := fw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func zstded(t testing.TB, b []byte, opts ...zstd.EOption) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw, err := zstd.NewWriter(&buf, opts...)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := zw.Write(b); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// upstreamBody is body as the upstream gets it: m2 is renamed.
func upstreamBody(body string) string {
	return strings.Replace(body, `"model":"m2"`, `"model":"vendor/m2"`, 1)
}

// rejectedCount reads model_router_rejected_total{code}.
func rejectedCount(t *testing.T, code string) float64 {
	t.Helper()
	return metricValue(t, theMetrics().rejected.WithLabelValues(code))
}

// TestIntegrationFramingEncodedBodies: gzip, deflate (zlib and raw), zstd and
// stacked bodies are routed by their decoded model, and the upstream gets the
// plain JSON with its exact Content-Length and no Content-Encoding, also when
// the model is renamed for the backend (m2 is vendor/m2 upstream).
func TestIntegrationFramingEncodedBodies(t *testing.T) {
	plain := newUpstream(t, "plain", 0, false)
	keyed := newUpstream(t, "keyed", 0, false)
	g := framingGateway(t, "64KiB", plain.srv.URL, keyed.srv.URL)

	// Large enough that a wrong length or a truncated body shows.
	content := strings.Repeat("route me by my model, please. ", 200)
	for _, model := range []string{"m1", "m2"} {
		plainJSON := []byte(`{"model":"` + model + `","messages":[{"role":"user","content":"` + content + `"}]}`)
		tests := []struct {
			name     string
			encoding string
			body     []byte
		}{
			{"gzip", "gzip", gzipped(t, plainJSON)},
			{"x-gzip", "x-gzip", gzipped(t, plainJSON)},
			{"case and whitespace", " \tGZip ", gzipped(t, plainJSON)},
			{"deflate as zlib", "deflate", zlibbed(t, plainJSON)},
			{"deflate raw", "deflate", deflated(t, plainJSON)},
			{"zstd", "zstd", zstded(t, plainJSON)},
			{"identity", "identity", plainJSON},
			{"gzip, gzip", "gzip, gzip", gzipped(t, gzipped(t, plainJSON))},
			{"zstd then gzip", "zstd, gzip", gzipped(t, zstded(t, plainJSON))},
			{"identity and empty elements", "identity, ,deflate,", zlibbed(t, plainJSON)},
		}
		for _, tt := range tests {
			t.Run(model+"/"+tt.name, func(t *testing.T) {
				up := plain
				if model == "m2" {
					up = keyed
				}
				before, _ := up.received()
				req, err := http.NewRequest(http.MethodPost, g.url("gw")+"/v1/chat/completions", bytes.NewReader(tt.body))
				if err != nil {
					t.Fatal(err)
				}
				req.Header.Set("Content-Type", "application/json")
				req.Header.Set("Content-Encoding", tt.encoding)
				resp, body := do(t, req)
				if resp.StatusCode != http.StatusOK {
					t.Fatalf("status %d: %s", resp.StatusCode, body)
				}
				bodies, heads := up.received()
				if len(bodies) != len(before)+1 {
					t.Fatalf("backend %s saw %d new requests, want 1", up.name, len(bodies)-len(before))
				}
				got, h := bodies[len(bodies)-1], heads[len(heads)-1]
				if want := upstreamBody(string(plainJSON)); string(got) != want {
					t.Errorf("upstream body is not the decoded JSON (%d bytes, want %d): %.80q", len(got), len(want), got)
				}
				if cl := h.Get("Content-Length"); cl != strconv.Itoa(len(got)) {
					t.Errorf("upstream Content-Length %q for a %d-byte body", cl, len(got))
				}
				for _, f := range []string{"Content-Encoding", "Transfer-Encoding", "Expect"} {
					if v, ok := h[f]; ok {
						t.Errorf("upstream got %s %q", f, v)
					}
				}
			})
		}
	}
	g.waitIdle()
}

// TestIntegrationFramingBadEncodings: an unsupported coding is 415 with
// Accept-Encoding, a body that does not decode is 400, and each is counted in
// model_router_rejected_total; none reaches a backend.
func TestIntegrationFramingBadEncodings(t *testing.T) {
	plain := newUpstream(t, "plain", 0, false)
	keyed := newUpstream(t, "keyed", 0, false)
	g := framingGateway(t, "64KiB", plain.srv.URL, keyed.srv.URL)

	good := []byte(chatBody("m1"))
	gz := gzipped(t, good)
	tests := []struct {
		name     string
		encoding string
		body     []byte
		status   int
		code     string
	}{
		{"br", "br", good, 415, "unsupported_content_encoding"},
		{"compress", "compress", good, 415, "unsupported_content_encoding"},
		{"gzip then br", "gzip, br", good, 415, "unsupported_content_encoding"},
		{"a parameter", "gzip;q=1", gz, 415, "unsupported_content_encoding"},
		{"four layers", "gzip, gzip, gzip, gzip", gzipped(t, gzipped(t, gzipped(t, gz))), 415, "unsupported_content_encoding"},
		{"corrupt gzip", "gzip", append(append([]byte{}, gz[:10]...), bytes.Repeat([]byte{0xff}, 40)...), 400, "invalid_compressed_body"},
		{"truncated gzip", "gzip", gz[:len(gz)-6], 400, "invalid_compressed_body"},
		{"gzip checksum", "gzip", append(append([]byte{}, gz[:len(gz)-8]...), 0, 0, 0, 0, 0, 0, 0, 0), 400, "invalid_compressed_body"},
		{"gzip label on plain JSON", "gzip", good, 400, "invalid_compressed_body"},
		{"garbage after gzip", "gzip", append(append([]byte{}, gz...), "junk"...), 400, "invalid_compressed_body"},
		{"garbage after zlib", "deflate", append(zlibbed(t, good), "junk"...), 400, "invalid_compressed_body"},
		{"garbage after raw deflate", "deflate", append(deflated(t, good), "junk"...), 400, "invalid_compressed_body"},
		{"corrupt zstd", "zstd", []byte("\x28\xb5\x2f\xfd definitely not zstd"), 400, "invalid_compressed_body"},
		{"stacked in the wrong order", "gzip, zstd", gzipped(t, zstded(t, good)), 400, "invalid_compressed_body"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rejected := rejectedCount(t, tt.code)
			req, err := http.NewRequest(http.MethodPost, g.url("gw")+"/v1/chat/completions", bytes.NewReader(tt.body))
			if err != nil {
				t.Fatal(err)
			}
			req.Header.Set("Content-Type", "application/json")
			req.Header.Set("Content-Encoding", tt.encoding)
			resp, body := do(t, req)
			if resp.StatusCode != tt.status {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, tt.status, body)
			}
			e := parseAPIError(t, body)
			if e.Code != tt.code || e.Type != "invalid_request_error" {
				t.Errorf("code %q type %q, want %q invalid_request_error (%s)", e.Code, e.Type, tt.code, e.Message)
			}
			if tt.status == 415 {
				if ae := resp.Header.Get("Accept-Encoding"); ae != "gzip, deflate, zstd" {
					t.Errorf("415 with Accept-Encoding %q", ae)
				}
				if e.Param == nil || *e.Param != "Content-Encoding" {
					t.Errorf("415 param %v, want Content-Encoding", e.Param)
				}
			}
			if got := rejectedCount(t, tt.code); got != rejected+1 {
				t.Errorf("rejected_total{code=%q} went from %v to %v, want +1", tt.code, rejected, got)
			}
		})
	}
	if n := plain.total.Load() + keyed.total.Load(); n != 0 {
		t.Errorf("backends saw %d requests; undecodable ones must not reach them", n)
	}
	g.waitIdle()
}

// gzipBomb is decoded bytes of zeros as concatenated gzip members (a valid
// gzip body, RFC 1952 section 2.2) of 1 MiB each: about a kilobyte sent per
// MiB decoded.
func gzipBomb(t testing.TB, decoded int) []byte {
	t.Helper()
	var member bytes.Buffer
	zw, err := gzip.NewWriterLevel(&member, gzip.BestCompression)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := zw.Write(make([]byte, 1<<20)); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return bytes.Repeat(member.Bytes(), decoded>>20)
}

// zstdBomb is decoded bytes of zeros as concatenated zstd frames of 1 MiB.
func zstdBomb(t testing.TB, decoded int) []byte {
	t.Helper()
	enc, err := zstd.NewWriter(nil)
	if err != nil {
		t.Fatal(err)
	}
	frame := enc.EncodeAll(make([]byte, 1<<20), nil)
	return bytes.Repeat(frame, decoded>>20)
}

// TestIntegrationFramingBomb: 1 GiB of zeros, sent as about a megabyte of gzip
// or zstd, is refused with 413 once the decoded size passes max_body (4 MiB),
// and decoding it allocated nothing near its decoded size.
func TestIntegrationFramingBomb(t *testing.T) {
	plain := newUpstream(t, "plain", 0, false)
	keyed := newUpstream(t, "keyed", 0, false)
	g := framingGateway(t, "4MiB", plain.srv.URL, keyed.srv.URL)

	const decoded = 1 << 30
	bombs := []struct {
		name, encoding string
		body           []byte
	}{
		{"gzip", "gzip", gzipBomb(t, decoded)},
		{"zstd", "zstd", zstdBomb(t, decoded)},
		{"gzip of the gzip bomb", "gzip, gzip", gzipped(t, gzipBomb(t, decoded))},
	}
	for _, b := range bombs {
		t.Run(b.name, func(t *testing.T) {
			if len(b.body) > 4<<20 {
				t.Fatalf("the bomb is %d bytes; it must fit max_body to test the decoded limit", len(b.body))
			}
			rejected := rejectedCount(t, "request_too_large")
			req, err := http.NewRequest(http.MethodPost, g.url("gw")+"/v1/chat/completions", bytes.NewReader(b.body))
			if err != nil {
				t.Fatal(err)
			}
			req.Header.Set("Content-Type", "application/json")
			req.Header.Set("Content-Encoding", b.encoding)

			var m0, m1 runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&m0)
			resp, body := do(t, req)
			runtime.ReadMemStats(&m1)

			if resp.StatusCode != http.StatusRequestEntityTooLarge {
				t.Fatalf("status %d, want 413: %s", resp.StatusCode, body)
			}
			if e := parseAPIError(t, body); e.Code != "request_too_large" {
				t.Errorf("code %q", e.Code)
			}
			if got := rejectedCount(t, "request_too_large"); got != rejected+1 {
				t.Errorf("rejected_total{code=request_too_large} went from %v to %v, want +1", rejected, got)
			}
			// TotalAlloc counts every byte allocated in the process while
			// the request ran (the test's client and Caddy's work included),
			// freed or not: decoding the bomb would be over 1 GiB.
			allocated := m1.TotalAlloc - m0.TotalAlloc
			t.Logf("%s: %d bytes sent, %d decoded if let through; %d bytes allocated while it was handled",
				b.name, len(b.body), decoded, allocated)
			if allocated > 64<<20 {
				t.Errorf("handling the bomb allocated %d MiB; max_body is 4 MiB", allocated>>20)
			}
		})
	}
	if n := plain.total.Load() + keyed.total.Load(); n != 0 {
		t.Errorf("backends saw %d requests", n)
	}
	g.waitIdle()
}

// wireUpstream is a backend that records each request as it arrived on the
// wire, framing and trailers included, and answers a chat completion.
type wireUpstream struct {
	ln net.Listener
	mu sync.Mutex
	rs []wireRequest
	wg sync.WaitGroup
}

type wireRequest struct {
	raw              []byte // the request's bytes as they arrived
	header, trailer  http.Header
	transferEncoding []string
	contentLength    int64
	body             []byte
	err              error
}

func newWireUpstream(t *testing.T) *wireUpstream {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	u := &wireUpstream{ln: ln}
	u.wg.Add(1)
	go u.accept()
	t.Cleanup(func() {
		ln.Close()
		u.wg.Wait()
	})
	return u
}

func (u *wireUpstream) url() string { return "http://" + u.ln.Addr().String() }

func (u *wireUpstream) accept() {
	defer u.wg.Done()
	var conns sync.WaitGroup
	defer conns.Wait()
	for {
		c, err := u.ln.Accept()
		if err != nil {
			return
		}
		conns.Add(1)
		go func() {
			defer conns.Done()
			u.serve(c)
		}()
	}
}

func (u *wireUpstream) serve(c net.Conn) {
	defer c.Close()
	var raw bytes.Buffer
	br := bufio.NewReader(io.TeeReader(c, &raw))
	for {
		_ = c.SetDeadline(time.Now().Add(rawTimeout))
		req, err := http.ReadRequest(br)
		if err != nil {
			return // the gateway closed its pooled connection
		}
		body, err := io.ReadAll(req.Body)
		// Keep what this request took; what the reader buffered beyond it
		// belongs to the next one (the proxy does not pipeline).
		taken := raw.Len() - br.Buffered()
		wr := wireRequest{
			raw: append([]byte(nil), raw.Bytes()[:taken]...), header: req.Header, trailer: req.Trailer,
			transferEncoding: req.TransferEncoding, contentLength: req.ContentLength, body: body, err: err,
		}
		rest := append([]byte(nil), raw.Bytes()[taken:]...)
		raw.Reset()
		raw.Write(rest)
		u.mu.Lock()
		u.rs = append(u.rs, wr)
		u.mu.Unlock()
		answer := `{"id":"chatcmpl-wire","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,"finish_reason":"stop","message":{"role":"assistant","content":"ok"}}]}`
		if _, err := fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s", len(answer), answer); err != nil {
			return
		}
	}
}

func (u *wireUpstream) requests() []wireRequest {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]wireRequest(nil), u.rs...)
}

// checkPlainFraming fails unless the upstream got body as a plain body with
// its Content-Length: no chunking, no trailers, no framing or credential
// fields from the client. wantAuth is the only Authorization allowed ("" for
// none).
func checkPlainFraming(t *testing.T, r wireRequest, body, wantAuth string) {
	t.Helper()
	if r.err != nil {
		t.Errorf("upstream could not read the body: %v", r.err)
	}
	if string(r.body) != body {
		t.Errorf("upstream body %q, want %q", r.body, body)
	}
	if r.contentLength != int64(len(body)) || r.header.Get("Content-Length") != strconv.Itoa(len(body)) {
		t.Errorf("upstream Content-Length %q (parsed %d), want %d", r.header.Get("Content-Length"), r.contentLength, len(body))
	}
	if len(r.transferEncoding) != 0 {
		t.Errorf("upstream Transfer-Encoding %v", r.transferEncoding)
	}
	if len(r.trailer) != 0 {
		t.Errorf("upstream got trailers %v", r.trailer)
	}
	for _, f := range []string{"Trailer", "Expect", "Content-Encoding", "Proxy-Authorization", "Transfer-Encoding"} {
		if v, ok := r.header[f]; ok {
			t.Errorf("upstream got %s %q", f, v)
		}
	}
	if got := r.header.Values("Authorization"); (wantAuth == "" && len(got) != 0) || (wantAuth != "" && (len(got) != 1 || got[0] != wantAuth)) {
		t.Errorf("upstream Authorization %q, want %q", got, wantAuth)
	}
	for _, secret := range []string{"secret", "client-header", "proxy-secret"} {
		if bytes.Contains(r.raw, []byte(secret)) {
			t.Errorf("the client's credential %q reached the upstream:\n%s", secret, r.raw)
		}
	}
}

// dialGateway opens a raw connection to the gateway, closed when the test ends.
func dialGateway(t *testing.T, g *gateway) (net.Conn, *bufio.Reader) {
	t.Helper()
	c, err := net.Dial("tcp", strings.TrimPrefix(g.url("gw"), "http://"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if err := c.SetDeadline(time.Now().Add(rawTimeout)); err != nil {
		t.Fatal(err)
	}
	return c, bufio.NewReader(c)
}

func write(t *testing.T, c net.Conn, s string) {
	t.Helper()
	if _, err := io.WriteString(c, s); err != nil {
		t.Fatalf("writing to the gateway: %v", err)
	}
}

// readResponse reads one response and its body.
func readResponse(t *testing.T, br *bufio.Reader) (*http.Response, []byte) {
	t.Helper()
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("reading the response: %v", err)
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("reading the response body: %v", err)
	}
	return resp, body
}

// expectClosed waits for the server to close the connection: the next read
// finds the end of the stream (or a reset), not a timeout.
func expectClosed(t *testing.T, br *bufio.Reader) {
	t.Helper()
	b, err := br.ReadByte()
	var ne net.Error
	switch {
	case err == nil:
		t.Errorf("the server sent more after the answer: %q", b)
	case errors.As(err, &ne) && ne.Timeout():
		t.Errorf("the server did not close the connection within %s", rawTimeout)
	}
}

func host(g *gateway) string { return strings.TrimPrefix(g.url("gw"), "http://") }

// TestIntegrationFramingChunkedTrailers: a chunked request whose trailer
// carries Authorization reaches the upstream as a plain body with a
// Content-Length, with no trailer and none of the client's credentials (the
// keyed backend gets its api_key and nothing else).
func TestIntegrationFramingChunkedTrailers(t *testing.T) {
	plain := newWireUpstream(t)
	keyed := newWireUpstream(t)
	g := framingGateway(t, "64KiB", plain.url(), keyed.url())

	for _, tt := range []struct {
		model    string
		up       *wireUpstream
		wantAuth string
	}{{"m1", plain, ""}, {"m2", keyed, "Bearer upstream-key"}} {
		t.Run(tt.model, func(t *testing.T) {
			body := chatBody(tt.model)
			c, br := dialGateway(t, g)
			// The body in two chunks, then trailers.
			write(t, c, "POST /v1/chat/completions HTTP/1.1\r\nHost: "+host(g)+"\r\n"+
				"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n"+
				"Authorization: Bearer client-header\r\nProxy-Authorization: Basic proxy-secret\r\n"+
				"Trailer: Authorization, X-Checksum\r\n\r\n"+
				fmt.Sprintf("%x\r\n%s\r\n%x\r\n%s\r\n", 10, body[:10], len(body)-10, body[10:])+
				"0\r\nAuthorization: Bearer secret\r\nX-Checksum: abc\r\n\r\n")
			resp, answer := readResponse(t, br)
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("status %d: %s", resp.StatusCode, answer)
			}
			rs := tt.up.requests()
			if len(rs) != 1 {
				t.Fatalf("upstream saw %d requests, want 1", len(rs))
			}
			checkPlainFraming(t, rs[0], upstreamBody(body), tt.wantAuth)
			if _, ok := rs[0].header["X-Checksum"]; ok {
				t.Errorf("a trailer field became a header upstream")
			}
		})
	}
	g.waitIdle()
}

// TestIntegrationFramingExpectContinue: with Expect: 100-continue the client
// gets its 100 when the router reads the body, and the upstream sees no
// Expect; with a Content-Length over max_body (or a coding it cannot decode)
// it gets 413 (415) at once instead of a 100, and the connection closes.
func TestIntegrationFramingExpectContinue(t *testing.T) {
	plain := newWireUpstream(t)
	keyed := newWireUpstream(t)
	g := framingGateway(t, "4MiB", plain.url(), keyed.url())

	t.Run("accepted", func(t *testing.T) {
		body := chatBody("m1")
		c, br := dialGateway(t, g)
		write(t, c, "POST /v1/chat/completions HTTP/1.1\r\nHost: "+host(g)+"\r\n"+
			"Content-Type: application/json\r\nExpect: 100-continue\r\nContent-Length: "+strconv.Itoa(len(body))+"\r\n\r\n")
		line, err := br.ReadString('\n')
		if err != nil {
			t.Fatalf("waiting for 100 Continue: %v", err)
		}
		if !strings.HasPrefix(line, "HTTP/1.1 100 ") {
			t.Fatalf("first line %q, want a 100 Continue", line)
		}
		if blank, err := br.ReadString('\n'); err != nil || blank != "\r\n" {
			t.Fatalf("after the 100: %q %v", blank, err)
		}
		write(t, c, body)
		resp, answer := readResponse(t, br)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("status %d: %s", resp.StatusCode, answer)
		}
		rs := plain.requests()
		if len(rs) != 1 {
			t.Fatalf("upstream saw %d requests, want 1", len(rs))
		}
		checkPlainFraming(t, rs[0], body, "")
	})

	t.Run("too large", func(t *testing.T) {
		rejected := rejectedCount(t, "request_too_large")
		c, br := dialGateway(t, g)
		write(t, c, "POST /v1/chat/completions HTTP/1.1\r\nHost: "+host(g)+"\r\n"+
			"Content-Type: application/json\r\nExpect: 100-continue\r\nContent-Length: "+strconv.Itoa(4<<20+1)+"\r\n\r\n")
		resp, answer := readResponse(t, br) // a 100 here would be read as the response
		if resp.StatusCode != http.StatusRequestEntityTooLarge {
			t.Fatalf("status %d, want 413 before any 100: %s", resp.StatusCode, answer)
		}
		if e := parseAPIError(t, answer); e.Code != "request_too_large" {
			t.Errorf("code %q", e.Code)
		}
		if !resp.Close {
			t.Errorf("413 without Connection: close (header %q)", resp.Header.Get("Connection"))
		}
		expectClosed(t, br)
		if got := rejectedCount(t, "request_too_large"); got != rejected+1 {
			t.Errorf("rejected_total{code=request_too_large} went from %v to %v, want +1", rejected, got)
		}
	})
	t.Run("unsupported encoding", func(t *testing.T) {
		rejected := rejectedCount(t, "unsupported_content_encoding")
		c, br := dialGateway(t, g)
		write(t, c, "POST /v1/chat/completions HTTP/1.1\r\nHost: "+host(g)+"\r\n"+
			"Content-Type: application/json\r\nContent-Encoding: br\r\nExpect: 100-continue\r\nContent-Length: 100\r\n\r\n")
		resp, answer := readResponse(t, br)
		if resp.StatusCode != http.StatusUnsupportedMediaType {
			t.Fatalf("status %d, want 415 before any 100: %s", resp.StatusCode, answer)
		}
		if !resp.Close {
			t.Errorf("415 without Connection: close (header %q)", resp.Header.Get("Connection"))
		}
		expectClosed(t, br)
		if got := rejectedCount(t, "unsupported_content_encoding"); got != rejected+1 {
			t.Errorf("rejected_total{code=unsupported_content_encoding} went from %v to %v, want +1", rejected, got)
		}
	})
	if n := len(plain.requests()) + len(keyed.requests()); n != 1 {
		t.Errorf("upstreams saw %d requests, want 1", n)
	}
	g.waitIdle()
}

// TestIntegrationFramingDeclaredTooLarge: a Content-Length over max_body is
// answered 413 before the client sends a byte of its body, and the connection
// is closed: also when the rest is small enough that net/http would otherwise
// wait to read it (max_body 1KiB), when the client waits for a 100 Continue,
// and when the client sends the body anyway.
func TestIntegrationFramingDeclaredTooLarge(t *testing.T) {
	for _, tt := range []struct {
		name     string
		maxBody  string
		declared int
		sendBody bool
		expect   bool // send Expect: 100-continue
	}{
		{"default max_body, no body sent", "4MiB", 4<<20 + 1, false, false},
		{"small max_body, no body sent", "1KiB", 2048, false, false},
		{"small max_body, body sent", "1KiB", 2048, true, false},
		{"small max_body, Expect: 100-continue", "1KiB", 2048, false, true},
		{"just over 256KiB, no body sent", "256KiB", 256<<10 + 1, false, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			plain := newUpstream(t, "plain", 0, false)
			keyed := newUpstream(t, "keyed", 0, false)
			g := framingGateway(t, tt.maxBody, plain.srv.URL, keyed.srv.URL)
			rejected := rejectedCount(t, "request_too_large")

			c, br := dialGateway(t, g)
			head := "POST /v1/chat/completions HTTP/1.1\r\nHost: " + host(g) + "\r\n" +
				"Content-Type: application/json\r\nContent-Length: " + strconv.Itoa(tt.declared) + "\r\n"
			if tt.expect {
				head += "Expect: 100-continue\r\n"
			}
			head += "\r\n"
			if tt.sendBody {
				head += strings.Repeat("x", tt.declared)
			}
			write(t, c, head)
			resp, answer := readResponse(t, br)
			if resp.StatusCode != http.StatusRequestEntityTooLarge {
				t.Fatalf("status %d, want 413: %s", resp.StatusCode, answer)
			}
			if e := parseAPIError(t, answer); e.Code != "request_too_large" {
				t.Errorf("code %q", e.Code)
			}
			if !resp.Close {
				t.Errorf("413 without Connection: close (header %q)", resp.Header.Get("Connection"))
			}
			expectClosed(t, br)
			if got := rejectedCount(t, "request_too_large"); got != rejected+1 {
				t.Errorf("rejected_total{code=request_too_large} went from %v to %v, want +1", rejected, got)
			}
			if n := plain.total.Load(); n != 0 {
				t.Errorf("backend saw %d requests", n)
			}
			g.waitIdle()
		})
	}
}

// goroutinesIn counts the goroutines whose stack is inside fn (a function
// name as a stack trace prints it).
func goroutinesIn(fn string) int {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			return strings.Count(string(buf[:n]), fn+"(")
		}
		buf = make([]byte, 2*len(buf))
	}
}

// TestIntegrationFramingMemoryFollowsBytes: 200 clients that declare a 4 MiB
// body and send none of it cost the gateway nothing like 800 MiB: buffers
// grow with the bytes that arrive, not with what a client declares.
func TestIntegrationFramingMemoryFollowsBytes(t *testing.T) {
	plain := newUpstream(t, "plain", 0, false)
	keyed := newUpstream(t, "keyed", 0, false)
	g := framingGateway(t, "4MiB", plain.srv.URL, keyed.srv.URL)
	const (
		clients  = 200
		declared = 4 << 20
		readBody = "caddymodule.(*Handler).readBody"
	)
	head := "POST /v1/chat/completions HTTP/1.1\r\nHost: " + host(g) + "\r\n" +
		"Content-Type: application/json\r\nContent-Length: " + strconv.Itoa(declared) + "\r\n\r\n"

	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)

	conns := make([]net.Conn, 0, clients)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for range clients {
		c, err := net.Dial("tcp", host(g))
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
		write(t, c, head)
	}
	// Every handler has read the headers and is waiting for the body.
	eventually(t, 2*rawTimeout, "every request to wait in readBody", func() bool { return goroutinesIn(readBody) == clients })

	runtime.GC()
	runtime.ReadMemStats(&after)
	growth := int64(after.HeapInuse) - int64(before.HeapInuse)
	t.Logf("%d clients declaring %d MiB each (%d MiB in all): heap in use %d MiB -> %d MiB (%+d MiB)",
		clients, declared>>20, clients*declared>>20, before.HeapInuse>>20, after.HeapInuse>>20, growth>>20)
	if growth > 64<<20 {
		t.Errorf("heap in use grew by %d MiB for bodies not sent", growth>>20)
	}

	for _, c := range conns {
		c.Close()
	}
	eventually(t, 2*rawTimeout, "the handlers to give up on the closed connections", func() bool { return goroutinesIn(readBody) == 0 })
	if n := plain.total.Load(); n != 0 {
		t.Errorf("backend saw %d requests", n)
	}
	g.waitIdle()
}

// TestIntegrationFramingSlowBody: a body dripped a byte at a time, with a
// Content-Length or chunked, is cut once it falls behind body_timeout plus a
// second per 500 bytes: 408 request_timeout, the connection closed, nothing
// sent upstream, no slot taken. A body sent at once goes through.
func TestIntegrationFramingSlowBody(t *testing.T) {
	plain := newUpstream(t, "plain", 0, false)
	g := startGateway(t, gatewayOptions{}, `
{{url "gw"}} {
	model_router {
		pool {{.Pool}}
		body_timeout 2s
		backend plain {{index .Up "plain"}} {
			models m1
			max_inflight 8
		}
	}
}
`, map[string]string{"plain": plain.srv.URL})
	body := `{"model":"m1","messages":[{"role":"user","content":"` + strings.Repeat("x", 4000) + `"}]}`

	for _, chunked := range []bool{false, true} {
		t.Run(fmt.Sprintf("chunked=%v", chunked), func(t *testing.T) {
			rejected := rejectedCount(t, "request_timeout")
			c, br := dialGateway(t, g)
			head := "POST /v1/chat/completions HTTP/1.1\r\nHost: " + host(g) + "\r\nContent-Type: application/json\r\n"
			if chunked {
				head += "Transfer-Encoding: chunked\r\n\r\n"
			} else {
				head += "Content-Length: " + strconv.Itoa(len(body)) + "\r\n\r\n"
			}
			write(t, c, head)
			// One byte every 20ms earns 2ms of deadline: the body falls
			// behind after about 2.2s, long before its 4000 bytes are sent
			// (80s). Without the bound the whole body arrives and is served.
			stop := make(chan struct{})
			dripped := make(chan struct{})
			go func() {
				defer close(dripped)
				tick := time.NewTicker(20 * time.Millisecond)
				defer tick.Stop()
				for i := 0; i < len(body); i++ {
					select {
					case <-stop:
						return
					case <-tick.C:
					}
					b := body[i : i+1]
					if chunked {
						b = "1\r\n" + b + "\r\n"
					}
					if _, err := io.WriteString(c, b); err != nil {
						return // the gateway closed the connection
					}
				}
				if chunked {
					_, _ = io.WriteString(c, "0\r\n\r\n")
				}
			}()
			resp, answer := readResponse(t, br)
			close(stop)
			<-dripped
			if resp.StatusCode != http.StatusRequestTimeout {
				t.Fatalf("status %d, want 408: %s", resp.StatusCode, answer)
			}
			if e := parseAPIError(t, answer); e.Code != "request_timeout" {
				t.Errorf("code %q", e.Code)
			}
			if !resp.Close {
				t.Errorf("408 without Connection: close")
			}
			expectClosed(t, br)
			if got := rejectedCount(t, "request_timeout"); got != rejected+1 {
				t.Errorf("rejected_total{code=request_timeout} went from %v to %v, want +1", rejected, got)
			}
			if n := plain.total.Load(); n != 0 {
				t.Errorf("backend saw %d requests", n)
			}
			g.waitIdle()
		})
	}

	// The same body sent at once is served, on a connection that then
	// carries a second request: the lifted deadline does not cut it.
	c, br := dialGateway(t, g)
	req := "POST /v1/chat/completions HTTP/1.1\r\nHost: " + host(g) + "\r\nContent-Type: application/json\r\nContent-Length: " +
		strconv.Itoa(len(body)) + "\r\n\r\n" + body
	for i := range 2 {
		write(t, c, req)
		if resp, answer := readResponse(t, br); resp.StatusCode != http.StatusOK {
			t.Fatalf("request %d sent at once: status %d: %s", i, resp.StatusCode, answer)
		}
	}
}
