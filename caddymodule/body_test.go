package caddymodule

import (
	"bytes"
	"compress/gzip"
	"compress/zlib"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"testing"
	"testing/iotest"

	"github.com/klauspost/compress/zstd"
)

func TestParseContentEncoding(t *testing.T) {
	tests := []struct {
		name   string
		values []string
		want   []coding
		ok     bool
	}{
		{"absent", nil, nil, true},
		{"empty", []string{""}, nil, true},
		{"identity", []string{"identity"}, nil, true},
		{"gzip", []string{"gzip"}, []coding{codingGzip}, true},
		{"x-gzip", []string{"x-gzip"}, []coding{codingGzip}, true},
		{"case", []string{"GZip"}, []coding{codingGzip}, true},
		{"whitespace", []string{" \tzstd\t "}, []coding{codingZstd}, true},
		{"deflate", []string{"Deflate"}, []coding{codingDeflate}, true},
		{"stacked, in order applied", []string{"deflate, zstd ,gzip"}, []coding{codingDeflate, codingZstd, codingGzip}, true},
		{"field lines join", []string{"gzip", "zstd"}, []coding{codingGzip, codingZstd}, true},
		{"empty elements and identity", []string{",gzip,, identity ,"}, []coding{codingGzip}, true},
		{"as many layers as allowed", []string{"gzip, gzip, gzip"}, []coding{codingGzip, codingGzip, codingGzip}, true},
		{"identity does not count as a layer", []string{"gzip, identity, gzip, identity, gzip"}, []coding{codingGzip, codingGzip, codingGzip}, true},
		{"too many layers", []string{"gzip, gzip, gzip, gzip"}, nil, false},
		{"too many across lines", []string{"gzip, gzip", "zstd, deflate"}, nil, false},
		{"br", []string{"br"}, nil, false},
		{"compress", []string{"compress"}, nil, false},
		{"x-compress", []string{"x-compress"}, nil, false},
		{"known then unknown", []string{"gzip, br"}, nil, false},
		{"a parameter", []string{"gzip; q=1"}, nil, false},
		{"space inside a token", []string{"g zip"}, nil, false},
		{"a near miss", []string{"gzipp"}, nil, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, apiErr := parseContentEncoding(tt.values)
			if !tt.ok {
				if apiErr == nil {
					t.Fatalf("accepted %q as %v", tt.values, got.applied())
				}
				if apiErr.Status != http.StatusUnsupportedMediaType || apiErr.Code != "unsupported_content_encoding" || apiErr.Param != "Content-Encoding" {
					t.Errorf("error %+v", apiErr)
				}
				return
			}
			if apiErr != nil {
				t.Fatalf("refused %q: %v", tt.values, apiErr)
			}
			if fmt.Sprint(got.applied()) != fmt.Sprint(tt.want) {
				t.Errorf("got %v, want %v", got.applied(), tt.want)
			}
		})
	}
}

// chunks is a reader that returns its chunks one Read at a time.
type chunks struct{ parts [][]byte }

func (c *chunks) Read(p []byte) (int, error) {
	if len(c.parts) == 0 {
		return 0, io.EOF
	}
	n := copy(p, c.parts[0])
	c.parts[0] = c.parts[0][n:]
	if len(c.parts[0]) == 0 {
		c.parts = c.parts[1:]
	}
	return n, nil
}

func TestReadLimited(t *testing.T) {
	data := bytes.Repeat([]byte("0123456789abcdef"), 20000) // 320,000 bytes
	small := data[:1000]
	tests := []struct {
		name     string
		r        io.Reader
		limit    int64
		declared int64
		want     []byte
		err      error
		maxCap   int
	}{
		{"declared, exact buffer", bytes.NewReader(small), 4 << 20, 1000, small, nil, 1000},
		{"declared, one byte a read", iotest.OneByteReader(bytes.NewReader(small)), 4 << 20, 1000, small, nil, 1000},
		{"declared, data with EOF", iotest.DataErrReader(bytes.NewReader(small)), 4 << 20, 1000, small, nil, 1000},
		{"declared and large: grows to exactly it", bytes.NewReader(data), 4 << 20, int64(len(data)), data, nil, len(data)},
		{"unknown length", bytes.NewReader(data), 4 << 20, -1, data, nil, 2 * len(data)},
		{"unknown length, small", bytes.NewReader(small), 4 << 20, -1, small, nil, initialBodyBuffer},
		{"empty", bytes.NewReader(nil), 4 << 20, 0, []byte{}, nil, 0},
		{"empty, unknown length", bytes.NewReader(nil), 4 << 20, -1, []byte{}, nil, 0},
		{"declared far more than sent", bytes.NewReader(small), 4 << 20, 4 << 20, small, nil, initialBodyBuffer},
		{"sent more than declared", bytes.NewReader(data), 4 << 20, 1000, data, nil, 2 * len(data)},
		{"exactly the limit", bytes.NewReader(small), 1000, -1, small, nil, 1000},
		{"one byte over the limit", bytes.NewReader(data[:1001]), 1000, -1, nil, errBodyTooLarge, 0},
		{"over the limit, declared within it", bytes.NewReader(data), 1000, 1000, nil, errBodyTooLarge, 0},
		{"over the limit in one read", iotest.DataErrReader(bytes.NewReader(data)), 100000, -1, nil, errBodyTooLarge, 0},
		{"read error", io.MultiReader(bytes.NewReader(small), iotest.ErrReader(io.ErrUnexpectedEOF)), 4 << 20, 2000, nil, io.ErrUnexpectedEOF, 0},
		{"chunks", &chunks{parts: [][]byte{small[:1], small[1:500], small[500:]}}, 4 << 20, -1, small, nil, initialBodyBuffer},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := readLimited(tt.r, tt.limit, tt.declared)
			if !errors.Is(err, tt.err) {
				t.Fatalf("error %v, want %v", err, tt.err)
			}
			if tt.err != nil {
				return
			}
			if !bytes.Equal(got, tt.want) {
				t.Errorf("got %d bytes, want %d", len(got), len(tt.want))
			}
			if cap(got) > tt.maxCap {
				t.Errorf("buffer capacity %d for %d bytes, want at most %d", cap(got), len(got), tt.maxCap)
			}
		})
	}
}

// blockingReader hands out its data, then blocks until released: a client
// that stopped sending.
type blockingReader struct {
	data    []byte
	reached chan struct{}
	release chan struct{}
}

func (b *blockingReader) Read(p []byte) (int, error) {
	if len(b.data) > 0 {
		n := copy(p, b.data)
		b.data = b.data[n:]
		return n, nil
	}
	close(b.reached)
	<-b.release
	return 0, io.ErrUnexpectedEOF
}

// TestReadLimitedHoldsWhatArrived: while a client that declared 4 MiB has
// sent nothing, or 100 KiB, the buffer is nothing, or about what arrived.
func TestReadLimitedHoldsWhatArrived(t *testing.T) {
	for _, sent := range []int{0, 1, 100 << 10} {
		t.Run(fmt.Sprint(sent), func(t *testing.T) {
			r := &blockingReader{data: bytes.Repeat([]byte{'x'}, sent), reached: make(chan struct{}), release: make(chan struct{})}
			var m0, m1 runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&m0)
			done := make(chan error, 1)
			go func() {
				_, err := readLimited(r, 4<<20, 4<<20)
				done <- err
			}()
			<-r.reached
			runtime.ReadMemStats(&m1)
			close(r.release)
			if err := <-done; !errors.Is(err, io.ErrUnexpectedEOF) {
				t.Errorf("error %v", err)
			}
			// Doubling allocates at most twice the final buffer, which is at
			// most twice what arrived; 16 KiB is room for the goroutine's
			// other small change.
			allocated := m1.TotalAlloc - m0.TotalAlloc
			limit := uint64(16 << 10)
			if sent > 0 {
				limit += uint64(max(4*sent, initialBodyBuffer))
			}
			if allocated > limit {
				t.Errorf("%d bytes allocated while %d bytes had arrived of 4 MiB declared (want at most %d)", allocated, sent, limit)
			}
		})
	}
}

// TestReadLimitedCommonPathAllocs: a small body with its Content-Length is
// read into one buffer of exactly its size, with nothing else on the heap but
// the one-byte probe.
func TestReadLimitedCommonPathAllocs(t *testing.T) {
	body := []byte(chatBody("m1"))
	r := bytes.NewReader(body)
	var got []byte
	allocs := testing.AllocsPerRun(100, func() {
		r.Reset(body)
		got, _ = readLimited(r, 4<<20, int64(len(body)))
	})
	if allocs > 2 {
		t.Errorf("%v allocations per body, want at most 2 (the buffer, the probe)", allocs)
	}
	if !bytes.Equal(got, body) || cap(got) != len(body) {
		t.Errorf("got %d bytes in a buffer of %d, want %d in one of exactly that", len(got), cap(got), len(body))
	}
}

// zstdAll encodes b as one zstd frame with EncodeAll (where
// WithSingleSegment applies).
func zstdAll(t testing.TB, b []byte, opts ...zstd.EOption) []byte {
	t.Helper()
	enc, err := zstd.NewWriter(nil, opts...)
	if err != nil {
		t.Fatal(err)
	}
	defer enc.Close()
	return enc.EncodeAll(b, nil)
}

// zstdFrameWithWindow is content (at most 128 KiB) as one zstd frame that
// declares a window of 1<<windowLog bytes (RFC 8878, section 3.1.1): one raw
// block. Encoders shrink the window to small content; this does not.
func zstdFrameWithWindow(windowLog int, content []byte) []byte {
	b := []byte{0x28, 0xb5, 0x2f, 0xfd, 0x00, byte(windowLog-10) << 3}
	h := uint32(1) | uint32(len(content))<<3 // last block, raw
	b = append(b, byte(h), byte(h>>8), byte(h>>16))
	return append(b, content...)
}

// skippableFrame is a zstd skippable frame (RFC 8878, section 3.1.2): n bytes
// that decode to nothing.
func skippableFrame(n int) []byte {
	b := make([]byte, 8+n)
	binary.LittleEndian.PutUint32(b, 0x184D2A50)
	binary.LittleEndian.PutUint32(b[4:], uint32(n))
	return b
}

func TestDecodeBody(t *testing.T) {
	plain := []byte(`{"model":"m1","messages":[{"role":"user","content":"` + strings.Repeat("compress me ", 500) + `"}]}`)
	tests := []struct {
		name    string
		codings []coding
		body    []byte
		limit   int64
		want    []byte
		err     error // nil: want; errAny: some error other than errBodyTooLarge
	}{
		{"gzip", []coding{codingGzip}, gzipped(t, plain), 1 << 20, plain, nil},
		{"gzip members", []coding{codingGzip}, append(gzipped(t, plain[:10]), gzipped(t, plain[10:])...), 1 << 20, plain, nil},
		{"deflate as zlib", []coding{codingDeflate}, zlibbed(t, plain), 1 << 20, plain, nil},
		{"deflate raw", []coding{codingDeflate}, deflated(t, plain), 1 << 20, plain, nil},
		{"zstd", []coding{codingZstd}, zstded(t, plain), 1 << 20, plain, nil},
		{"zstd with a skippable frame", []coding{codingZstd}, append(skippableFrame(100), zstded(t, plain)...), 1 << 20, plain, nil},
		{"gzip, gzip", []coding{codingGzip, codingGzip}, gzipped(t, gzipped(t, plain)), 1 << 20, plain, nil},
		{"deflate, zstd, gzip", []coding{codingDeflate, codingZstd, codingGzip}, gzipped(t, zstded(t, zlibbed(t, plain))), 1 << 20, plain, nil},
		{"raw deflate inside gzip", []coding{codingDeflate, codingGzip}, gzipped(t, deflated(t, plain)), 1 << 20, plain, nil},
		{"empty gzip stream", []coding{codingGzip}, gzipped(t, nil), 1 << 20, []byte{}, nil},

		{"decoded exactly the limit", []coding{codingGzip}, gzipped(t, plain), int64(len(plain)), plain, nil},
		{"decoded one over the limit", []coding{codingGzip}, gzipped(t, plain), int64(len(plain)) - 1, nil, errBodyTooLarge},
		{"zstd over the limit", []coding{codingZstd}, zstded(t, plain), 1000, nil, errBodyTooLarge},
		{"deflate over the limit", []coding{codingDeflate}, zlibbed(t, plain), 1000, nil, errBodyTooLarge},
		{"gzip bomb, many members", []coding{codingGzip}, gzipBomb(t, 256<<20), 1 << 20, nil, errBodyTooLarge},
		// The final output is small; the layer between is not.
		{"inner layer over the limit", []coding{codingZstd, codingGzip}, gzipped(t, append(skippableFrame(4<<20), zstded(t, plain)...)), 1 << 20, nil, errBodyTooLarge},

		{"not gzip", []coding{codingGzip}, plain, 1 << 20, nil, errAny},
		{"truncated gzip", []coding{codingGzip}, gzipped(t, plain)[:40], 1 << 20, nil, errAny},
		{"truncated zstd", []coding{codingZstd}, zstded(t, plain)[:40], 1 << 20, nil, errAny},
		{"truncated deflate", []coding{codingDeflate}, zlibbed(t, plain)[:40], 1 << 20, nil, errAny},
		{"data after zlib", []coding{codingDeflate}, append(zlibbed(t, plain), 0), 1 << 20, nil, errTrailingData},
		{"data after raw deflate", []coding{codingDeflate}, append(deflated(t, plain), 'x'), 1 << 20, nil, errTrailingData},
		{"data after gzip", []coding{codingGzip}, append(gzipped(t, plain), 'x'), 1 << 20, nil, errAny},
		{"data after zstd", []coding{codingZstd}, append(zstded(t, plain), 'x'), 1 << 20, nil, errAny},
		{"zlib with a preset dictionary", []coding{codingDeflate}, []byte{0x78, 0xbb, 0, 0, 0, 1, 0}, 1 << 20, nil, errAny},
		{"layers in the wrong order", []coding{codingZstd, codingGzip}, zstded(t, gzipped(t, plain)), 1 << 20, nil, errAny},
		{"zstd window of 8 MiB", []coding{codingZstd}, zstdFrameWithWindow(23, plain), 1 << 20, plain, nil},
		{"zstd window over 8 MiB", []coding{codingZstd}, zstdFrameWithWindow(24, plain), 1 << 20, nil, zstd.ErrWindowSizeExceeded},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := decodeBody(tt.body, tt.codings, tt.limit)
			switch {
			case tt.err == nil:
				if err != nil {
					t.Fatalf("error %v", err)
				}
				if !bytes.Equal(got, tt.want) {
					t.Errorf("decoded %d bytes, want %d", len(got), len(tt.want))
				}
				if int64(cap(got)) > tt.limit {
					t.Errorf("buffer of %d over the limit %d", cap(got), tt.limit)
				}
			case tt.err == errAny:
				if err == nil || errors.Is(err, errBodyTooLarge) {
					t.Fatalf("error %v, want a decoding error", err)
				}
			default:
				if !errors.Is(err, tt.err) {
					t.Fatalf("error %v, want %v", err, tt.err)
				}
			}
		})
	}
}

var errAny = errors.New("any decoding error")

// fastBomb is n zeros as one stream of coding, compressed at the fastest
// level (the others take seconds for this under -race).
func fastBomb(t *testing.T, c coding, n int) []byte {
	t.Helper()
	var buf bytes.Buffer
	var w io.WriteCloser
	var err error
	switch c {
	case codingGzip:
		w, err = gzip.NewWriterLevel(&buf, gzip.BestSpeed)
	case codingDeflate:
		w, err = zlib.NewWriterLevel(&buf, zlib.BestSpeed)
	case codingZstd:
		w, err = zstd.NewWriter(&buf, zstd.WithEncoderLevel(zstd.SpeedFastest))
	}
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(make([]byte, n)); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// TestDecodeBodyBombMemory: a single-stream bomb is refused after about limit
// bytes, without allocating anything near its decoded size.
func TestDecodeBodyBombMemory(t *testing.T) {
	const decoded = 64 << 20
	for _, b := range []struct {
		name    string
		codings []coding
		body    []byte
	}{
		{"gzip", []coding{codingGzip}, fastBomb(t, codingGzip, decoded)},
		{"zstd", []coding{codingZstd}, fastBomb(t, codingZstd, decoded)},
		{"deflate", []coding{codingDeflate}, fastBomb(t, codingDeflate, decoded)},
	} {
		t.Run(b.name, func(t *testing.T) {
			var m0, m1 runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&m0)
			_, err := decodeBody(b.body, b.codings, 4<<20)
			runtime.ReadMemStats(&m1)
			if !errors.Is(err, errBodyTooLarge) {
				t.Fatalf("error %v", err)
			}
			// The output buffer doubles up to 4 MiB (8 MiB in all), plus
			// decoder state (a zstd window of up to 8 MiB).
			allocated := m1.TotalAlloc - m0.TotalAlloc
			t.Logf("%d bytes of %s decoding to %d MiB: %d bytes allocated", len(b.body), b.name, decoded>>20, allocated)
			if allocated > 32<<20 {
				t.Errorf("allocated %d MiB refusing a %d MiB bomb with a 4 MiB limit", allocated>>20, decoded>>20)
			}
		})
	}
}

// TestDecodeBodyConcurrent: pooled decoders shared by concurrent requests
// give each its own body (run with -race).
func TestDecodeBodyConcurrent(t *testing.T) {
	type job struct {
		codings []coding
		body    []byte
		want    []byte
	}
	var jobs []job
	for i := range 12 {
		plain := []byte(fmt.Sprintf(`{"model":"m%d","messages":[{"role":"user","content":"%s"}]}`, i, strings.Repeat("x", 100*i)))
		switch i % 4 {
		case 0:
			jobs = append(jobs, job{[]coding{codingGzip}, gzipped(t, plain), plain})
		case 1:
			jobs = append(jobs, job{[]coding{codingDeflate}, zlibbed(t, plain), plain})
		case 2:
			jobs = append(jobs, job{[]coding{codingZstd}, zstded(t, plain), plain})
		case 3:
			jobs = append(jobs, job{[]coding{codingDeflate, codingGzip}, gzipped(t, deflated(t, plain)), plain})
		}
	}
	var wg sync.WaitGroup
	errs := make(chan error, 8*len(jobs))
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := range 50 {
				j := jobs[(w+k)%len(jobs)]
				got, err := decodeBody(j.body, j.codings, 1<<20)
				if err != nil || !bytes.Equal(got, j.want) {
					errs <- fmt.Errorf("decoding %v: %v, %d bytes, want %d", j.codings, err, len(got), len(j.want))
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// strictBody fails the test if the handler reads it: the answer must not wait
// for a body it refuses.
type strictBody struct{ read bool }

func (b *strictBody) Read([]byte) (int, error) { b.read = true; return 0, io.ErrUnexpectedEOF }
func (b *strictBody) Close() error             { return nil }

func TestReadBody(t *testing.T) {
	h := &Handler{}
	h.MaxBody = 1 << 20
	plain := chatBody("m1")
	tests := []struct {
		name      string
		proto     int // HTTP major version; 1 unless set
		declared  int64
		encoding  string
		body      io.Reader // nil: a body that must not be read
		status    int       // 0: accepted
		code      string
		wantClose bool
	}{
		{name: "plain", declared: int64(len(plain)), body: strings.NewReader(plain)},
		{name: "plain, chunked", declared: -1, body: strings.NewReader(plain)},
		{name: "gzip", declared: -1, encoding: "gzip", body: bytes.NewReader(gzipped(t, []byte(plain)))},
		{name: "empty body with a coding", declared: 0, encoding: "gzip", body: strings.NewReader("")},
		{name: "declared over max_body", declared: 1<<20 + 1, status: 413, code: "request_too_large", wantClose: true},
		{name: "declared over max_body, HTTP/2", proto: 2, declared: 1<<20 + 1, status: 413, code: "request_too_large"},
		{name: "unsupported coding", declared: 10, encoding: "br", status: 415, code: "unsupported_content_encoding", wantClose: true},
		{name: "sent over max_body", declared: -1, body: bytes.NewReader(make([]byte, 1<<20+1)), status: 413, code: "request_too_large", wantClose: true},
		{name: "decoded over max_body", declared: -1, encoding: "gzip", body: bytes.NewReader(gzipped(t, make([]byte, 1<<20+1))), status: 413, code: "request_too_large"},
		{name: "zstd frame declaring over 8 MiB", declared: -1, encoding: "zstd", body: bytes.NewReader(zstdAll(t, make([]byte, 9<<20), zstd.WithSingleSegment(true))), status: 413, code: "request_too_large"},
		{name: "zstd window over 8 MiB", declared: -1, encoding: "zstd", body: bytes.NewReader(zstdFrameWithWindow(24, []byte(plain))), status: 400, code: "invalid_compressed_body"},
		{name: "corrupt", declared: -1, encoding: "gzip", body: strings.NewReader(plain), status: 400, code: "invalid_compressed_body"},
		{name: "read error", declared: 2000, body: iotest.ErrReader(io.ErrUnexpectedEOF), status: 400, code: "invalid_body", wantClose: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := httptest.NewRequest(http.MethodPost, "/v1/chat/completions", nil)
			if tt.proto != 0 {
				r.ProtoMajor = tt.proto
			}
			strict := &strictBody{}
			r.Body = strict
			if tt.body != nil {
				r.Body = io.NopCloser(tt.body)
			}
			r.ContentLength = tt.declared
			if tt.encoding != "" {
				r.Header.Set("Content-Encoding", tt.encoding)
			}
			w := httptest.NewRecorder()
			got, apiErr := h.readBody(w, r)
			if strict.read {
				t.Errorf("the body was read before refusing it")
			}
			if tt.status == 0 {
				if apiErr != nil {
					t.Fatalf("refused: %v", apiErr)
				}
				if want := map[bool]string{true: "", false: plain}[tt.declared == 0]; string(got) != want {
					t.Errorf("body %q, want %q", got, want)
				}
			} else {
				if apiErr == nil || apiErr.Status != tt.status || apiErr.Code != tt.code {
					t.Fatalf("got %v, want %d %s", apiErr, tt.status, tt.code)
				}
				if apiErr.Type != "invalid_request_error" || apiErr.Message == "" {
					t.Errorf("error %+v", apiErr)
				}
			}
			if c := w.Header().Get("Connection"); (c == "close") != tt.wantClose {
				t.Errorf("Connection %q, want close: %v", c, tt.wantClose)
			}
			if ae := w.Header().Get("Accept-Encoding"); (ae != "") != (tt.status == 415) {
				t.Errorf("Accept-Encoding %q on a %d", ae, tt.status)
			}
		})
	}
}

// BenchmarkReadBody is the common path: a small JSON body with its
// Content-Length.
func BenchmarkReadBody(b *testing.B) {
	h := &Handler{}
	h.MaxBody = 4 << 20
	body := []byte(chatBody("m1"))
	rd := bytes.NewReader(body)
	r := httptest.NewRequest(http.MethodPost, "/v1/chat/completions", nil)
	r.Body = io.NopCloser(rd)
	r.ContentLength = int64(len(body))
	w := httptest.NewRecorder()
	b.ReportAllocs()
	for b.Loop() {
		rd.Reset(body)
		if _, apiErr := h.readBody(w, r); apiErr != nil {
			b.Fatal(apiErr)
		}
	}
}

// BenchmarkDecodeBody decodes a gzip body: pooled decoders keep this to the
// output buffer and small change.
func BenchmarkDecodeBody(b *testing.B) {
	plain := []byte(`{"model":"m1","messages":[{"role":"user","content":"` + strings.Repeat("compress me ", 500) + `"}]}`)
	for _, c := range []struct {
		name    string
		coding  coding
		encoded []byte
	}{{"gzip", codingGzip, gzipped(b, plain)}, {"deflate", codingDeflate, zlibbed(b, plain)}, {"zstd", codingZstd, zstded(b, plain)}} {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := decodeBody(c.encoded, []coding{c.coding}, 4<<20); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
