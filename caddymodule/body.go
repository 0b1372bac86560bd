package caddymodule

import (
	"bufio"
	"bytes"
	"compress/flate"
	"compress/gzip"
	"compress/zlib"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/textproto"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/klauspost/compress/zstd"
)

// The router reads the request body itself (to classify the request, and to
// replay it on a retry), so the request's framing is its job: it undoes the
// body's Content-Encoding, bounds what it holds by max_body before and after
// decoding, and hands the upstream a plain body with a Content-Length (see
// setBody, and the request header operations in newBackendProxy).

const (
	// maxContentCodings bounds how many content codings may be stacked on a
	// body ("gzip, gzip" is two). Each layer costs a decoder; real clients
	// send one.
	maxContentCodings = 3

	// initialBodyBuffer is the first buffer for a body whose length is not
	// known or is larger: the buffer then doubles as bytes arrive. A body of
	// a declared length up to this size gets a buffer of exactly its size.
	initialBodyBuffer = 32 << 10

	// zstdMaxWindow is the largest zstd window decoded. RFC 9659 limits the
	// "zstd" content coding to an 8 MB window (decoders must accept up to
	// that); the decoder allocates about the window when a frame starts.
	zstdMaxWindow = 8 << 20

	// bodyLingerTimeout bounds how long an HTTP/1 connection whose body was
	// left unread is kept reading after the answer: net/http then reads up
	// to 256 KiB of the rest of the body before it closes (so that a client
	// still sending gets the answer, not a reset), and would wait for a
	// client that sends nothing for as long as the server lets it.
	bodyLingerTimeout = 2 * time.Second

	// bodyMinRate is the rate, in bytes per second, a request body must keep
	// up after its first BodyTimeout: each bodyMinRate bytes received add a
	// second to the body's deadline (Apache's mod_reqtimeout MinRate).
	bodyMinRate = 500
)

// acceptedEncodings is the Accept-Encoding of a 415 answer: the content
// codings a request body may have (RFC 9110, section 15.5.16).
const acceptedEncodings = "gzip, deflate, zstd"

// errBodyTooLarge is a body, or one of its decoded layers, over max_body.
var errBodyTooLarge = errors.New("request body larger than max_body")

// errTrailingData is data after the end of a deflate stream.
var errTrailingData = errors.New("data after the end of the compressed stream")

// aLongTimeAgo is a read deadline that has already passed.
var aLongTimeAgo = time.Unix(1, 0)

// readBody reads the whole body once, at most MaxBody bytes as sent and
// MaxBody bytes decoded, and returns it without its Content-Encoding. Its
// errors are answers: 413 request_too_large (a declared Content-Length over
// MaxBody is refused before any byte is read, so no "100 Continue" is sent),
// 415 unsupported_content_encoding, 400 invalid_compressed_body, 400
// invalid_body (the client's body could not be read). When it answers
// without having read the body to its end, the HTTP/1 connection is closed
// after the answer (abandonBody).
func (h *Handler) readBody(w http.ResponseWriter, r *http.Request) ([]byte, *apiError) {
	if r.ContentLength > h.MaxBody {
		abandonBody(w, r, false)
		return nil, bodyTooLarge()
	}
	codings, apiErr := parseContentEncoding(r.Header.Values("Content-Encoding"))
	if apiErr != nil {
		w.Header().Set("Accept-Encoding", acceptedEncodings)
		abandonBody(w, r, false)
		return nil, apiErr
	}
	in := newRateReader(w, r.Body, time.Duration(h.BodyTimeout))
	body, err := readLimited(in, h.MaxBody, r.ContentLength)
	in.done()
	if err != nil {
		abandonBody(w, r, true)
		switch {
		case errors.Is(err, errBodyTooLarge):
			return nil, bodyTooLarge()
		case errors.Is(err, os.ErrDeadlineExceeded):
			return nil, invalidRequest(http.StatusRequestTimeout, "request_timeout", "",
				"the request body did not arrive in time: send it faster than 500 bytes per second after the first body_timeout")
		}
		return nil, invalidRequest(http.StatusBadRequest, "invalid_body", "", "reading the request body failed")
	}
	if codings.n == 0 || len(body) == 0 {
		// An empty body has nothing to decode; classify answers it.
		return body, nil
	}
	decoded, err := decodeBody(body, codings.applied(), h.MaxBody)
	switch {
	case err == nil:
		return decoded, nil
	case errors.Is(err, errBodyTooLarge), errors.Is(err, zstd.ErrDecoderSizeExceeded):
		// ErrDecoderSizeExceeded: a zstd frame declared a size over the
		// 8 MiB we decode (RFC 9659).
		return nil, bodyTooLarge()
	case errors.Is(err, zstd.ErrWindowSizeExceeded):
		return nil, invalidRequest(http.StatusBadRequest, "invalid_compressed_body", "",
			"the zstd request body needs a window over 8 MiB, the limit of the zstd content coding (RFC 9659)")
	default:
		return nil, invalidRequest(http.StatusBadRequest, "invalid_compressed_body", "",
			"the request body does not decode as its Content-Encoding says: "+err.Error())
	}
}

func bodyTooLarge() *apiError {
	return invalidRequest(http.StatusRequestEntityTooLarge, "request_too_large", "", "the request body is larger than the gateway accepts")
}

// rateReader reads a request body under a read deadline that starts at
// timeout from now and moves one second later for every bodyMinRate bytes
// received, so a body that keeps a reasonable pace always arrives and one
// dripped a byte at a time is cut. With a writer that does not unwrap to
// net/http's (no read deadlines), it reads without one: net/http's own
// server timeouts apply.
type rateReader struct {
	r        io.Reader
	rc       *http.ResponseController
	deadline time.Time
	on       bool
}

func newRateReader(w http.ResponseWriter, r io.Reader, timeout time.Duration) *rateReader {
	b := &rateReader{r: r, rc: http.NewResponseController(w), deadline: time.Now().Add(timeout)}
	b.on = b.rc.SetReadDeadline(b.deadline) == nil
	return b
}

func (b *rateReader) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	if n > 0 && b.on {
		b.deadline = b.deadline.Add(time.Duration(n) * time.Second / bodyMinRate)
		_ = b.rc.SetReadDeadline(b.deadline)
	}
	return n, err
}

// done lifts the deadline once the body is read: the connection is then
// watched for the client going away, for as long as the answer takes.
func (b *rateReader) done() {
	if b.on {
		_ = b.rc.SetReadDeadline(time.Time{})
	}
}

// abandonBody makes an HTTP/1 connection end with the answer when the body
// was not read to its end (started: some of it was read): the rest of the
// body is unread on the wire, or a client that sent "Expect: 100-continue" is
// waiting to be asked for it. "Connection: close" also stops net/http from
// reading that rest before it writes the answer, which it would do (up to 256
// KiB) because Caddy's wrapping of r.Body hides how much is left; the read
// deadline bounds the reading net/http does after the answer (see
// bodyLingerTimeout), and ends it at once for a client that waits for a 100
// that was never sent. HTTP/2 and 3 end the request's stream instead; there a
// Connection header would be wrong (Go's HTTP/2 server turns it into a GOAWAY
// for the whole connection).
func abandonBody(w http.ResponseWriter, r *http.Request, started bool) {
	if r.ProtoMajor != 1 {
		return
	}
	w.Header().Set("Connection", "close")
	deadline := time.Now().Add(bodyLingerTimeout)
	if !started && strings.EqualFold(textproto.TrimString(r.Header.Get("Expect")), "100-continue") {
		deadline = aLongTimeAgo
	}
	// Not supported by a writer that does not unwrap to net/http's: then
	// net/http's own read timeouts apply.
	_ = http.NewResponseController(w).SetReadDeadline(deadline)
}

// coding is a content coding the router decodes.
type coding uint8

const (
	codingGzip coding = iota + 1
	codingDeflate
	codingZstd
)

func (c coding) String() string {
	switch c {
	case codingGzip:
		return "gzip"
	case codingDeflate:
		return "deflate"
	case codingZstd:
		return "zstd"
	}
	return "unknown"
}

// codingList is a body's content codings in the order they were applied
// (the order of the Content-Encoding header), without "identity".
type codingList struct {
	c [maxContentCodings]coding
	n int
}

func (l *codingList) applied() []coding { return l.c[:l.n] }

// parseContentEncoding reads the Content-Encoding field lines: a
// comma-separated list of case-insensitive codings, empty elements ignored
// (RFC 9110, sections 5.6.1 and 8.4). gzip and its alias x-gzip, deflate and
// zstd are decoded, identity is no coding; anything else, or more than
// maxContentCodings codings, is 415 unsupported_content_encoding.
func parseContentEncoding(values []string) (codingList, *apiError) {
	var list codingList
	for _, v := range values {
		for token := range strings.SplitSeq(v, ",") {
			token = textproto.TrimString(token)
			var c coding
			switch {
			case token == "", strings.EqualFold(token, "identity"):
				continue
			case strings.EqualFold(token, "gzip"), strings.EqualFold(token, "x-gzip"):
				c = codingGzip
			case strings.EqualFold(token, "deflate"):
				c = codingDeflate
			case strings.EqualFold(token, "zstd"):
				c = codingZstd
			default:
				return list, invalidRequest(http.StatusUnsupportedMediaType, "unsupported_content_encoding", "Content-Encoding",
					"the request body's Content-Encoding is not supported: use "+acceptedEncodings+" or none")
			}
			if list.n == maxContentCodings {
				return list, invalidRequest(http.StatusUnsupportedMediaType, "unsupported_content_encoding", "Content-Encoding",
					fmt.Sprintf("the request body has more than %d content codings", maxContentCodings))
			}
			list.c[list.n] = c
			list.n++
		}
	}
	return list, nil
}

// readLimited reads r to its end into one buffer. The buffer grows with the
// bytes that arrive, never ahead of them from a length the client declared:
// an idle client holds no buffer, and a large one only what it sent (at most
// twice that while doubling). declared (the Content-Length, -1 when unknown)
// only caps the growth, so that a body of its declared length ends in a buffer
// of exactly that size, read without a copy. More than limit bytes is
// errBodyTooLarge.
func readLimited(r io.Reader, limit, declared int64) ([]byte, error) {
	var buf []byte
	var probe [1]byte
	for {
		if len(buf) == cap(buf) {
			// Full, or nothing read yet: see whether the body goes on before
			// making room for it.
			n, err := r.Read(probe[:])
			if n > 0 {
				if int64(len(buf)) >= limit {
					return nil, errBodyTooLarge
				}
				buf = append(grow(buf, limit, declared), probe[0])
			}
			switch {
			case err == io.EOF:
				return buf, nil
			case err != nil:
				return nil, err
			}
			continue
		}
		n, err := r.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		switch {
		case err == io.EOF:
			return buf, nil
		case err != nil:
			return nil, err
		}
	}
}

// grow returns buf in a buffer with room for more: twice as large (at least
// initialBodyBuffer), but no larger than declared when more is declared, and
// never larger than limit. len(buf) < limit.
func grow(buf []byte, limit, declared int64) []byte {
	size := max(2*int64(cap(buf)), initialBodyBuffer)
	if declared > int64(len(buf)) {
		size = min(size, declared)
	}
	size = min(size, limit)
	next := make([]byte, len(buf), size)
	copy(next, buf)
	return next
}

// decodeBody undoes codings (in the order they were applied) on body. Each
// decoded layer, not only the last, is bounded by limit: a small body that
// inflates to gigabytes costs at most about limit bytes and the CPU to decode
// limit bytes per layer. The encoded body is buffered whole before decoding
// starts, so that decoder state (a zstd window is up to 8 MiB) is held only
// while decoding runs, never while waiting on a slow client.
func decodeBody(body []byte, codings []coding, limit int64) ([]byte, error) {
	var ds decoders
	defer ds.release()
	var in io.Reader = bytes.NewReader(body)
	for i := len(codings) - 1; i >= 0; i-- {
		// A bufio.Reader is an io.ByteReader: the flate readers then take
		// no more bytes than their stream has, so what follows can be
		// checked, and deflate's two framings told apart by a Peek.
		src := bufio.NewReader(in)
		ds.srcs[ds.n] = src
		out, err := ds.open(codings[i], src)
		if err != nil {
			return nil, err
		}
		l := &ds.limits[i]
		*l = layerLimit{r: out, n: limit, c: codings[i]}
		in = l
	}
	decoded, err := readLimited(in, limit, -1)
	if err != nil && ds.overLimit() {
		// A decoder may report its source's error as a truncated stream.
		return nil, errBodyTooLarge
	}
	return decoded, err
}

// layerLimit reads one decoded layer: at most limit bytes, then
// errBodyTooLarge.
type layerLimit struct {
	r io.Reader
	n int64
	c coding
}

func (l *layerLimit) Read(p []byte) (int, error) {
	if l.n < 0 {
		return 0, errBodyTooLarge
	}
	if int64(len(p)) > l.n+1 {
		p = p[:l.n+1]
	}
	n, err := l.r.Read(p)
	l.n -= int64(n)
	if l.n < 0 {
		return n, errBodyTooLarge
	}
	if err != nil && err != io.EOF && l.c == codingZstd {
		// The other decoders' errors already name their format.
		err = fmt.Errorf("zstd: %w", err)
	}
	return n, err
}

// Decoders are pooled: each holds tens of kilobytes of tables and window
// (gzip, deflate) or more (zstd), which a request would otherwise allocate.
var (
	gzipReaders  sync.Pool // *gzip.Reader
	zlibReaders  sync.Pool // io.ReadCloser that is a zlib.Resetter
	flateReaders sync.Pool // io.ReadCloser that is a flate.Resetter
	zstdReaders  = sync.Pool{New: func() any {
		// Synchronous (concurrency 1: no goroutines, nothing to Close),
		// low-memory, window bounded per RFC 9659. The options are
		// constants, so an error is a bug.
		d, err := zstd.NewReader(nil,
			zstd.WithDecoderConcurrency(1),
			zstd.WithDecoderLowmem(true),
			zstd.WithDecoderMaxWindow(zstdMaxWindow),
			zstd.WithDecoderMaxMemory(zstdMaxWindow))
		if err != nil {
			panic("creating a zstd decoder: " + err.Error())
		}
		return d
	}}
)

// decoders are one body's decoder layers, returned to their pools by
// release.
type decoders struct {
	n      int
	limits [maxContentCodings]layerLimit
	srcs   [maxContentCodings]*bufio.Reader
	gz     [maxContentCodings]*gzip.Reader
	rc     [maxContentCodings]io.ReadCloser
	rcOf   [maxContentCodings]*sync.Pool
	zd     [maxContentCodings]*zstd.Decoder
}

// open starts decoding coding from src as the next layer.
func (ds *decoders) open(c coding, src *bufio.Reader) (io.Reader, error) {
	i := ds.n
	ds.n++
	switch c {
	case codingGzip:
		zr, _ := gzipReaders.Get().(*gzip.Reader)
		if zr == nil {
			zr = new(gzip.Reader)
		}
		ds.gz[i] = zr
		if err := zr.Reset(src); err != nil {
			return nil, err
		}
		return zr, nil
	case codingDeflate:
		// RFC 9110 says "deflate" is a zlib stream (RFC 1950), but some
		// clients send a raw deflate stream (RFC 1951): a zlib header
		// tells them apart. (A raw stream that starts with a non-final
		// stored block can look like one; it then fails to decode.)
		head, _ := src.Peek(2)
		var rc io.ReadCloser
		if isZlibHeader(head) {
			pooled, _ := zlibReaders.Get().(io.ReadCloser)
			if pooled == nil {
				var err error
				if rc, err = zlib.NewReader(src); err != nil {
					return nil, err
				}
			} else {
				rc = pooled
				if err := rc.(zlib.Resetter).Reset(src, nil); err != nil {
					zlibReaders.Put(rc)
					return nil, err
				}
			}
			ds.rc[i], ds.rcOf[i] = rc, &zlibReaders
		} else {
			if pooled, _ := flateReaders.Get().(io.ReadCloser); pooled == nil {
				rc = flate.NewReader(src)
			} else {
				rc = pooled
				_ = rc.(flate.Resetter).Reset(src, nil) // errors only for a dictionary
			}
			ds.rc[i], ds.rcOf[i] = rc, &flateReaders
		}
		return &streamEnd{r: rc, src: src}, nil
	case codingZstd:
		d := zstdReaders.Get().(*zstd.Decoder)
		ds.zd[i] = d
		if err := d.Reset(src); err != nil {
			return nil, err
		}
		return d, nil
	}
	return nil, fmt.Errorf("no decoder for content coding %d", c)
}

// overLimit reports whether a decoded layer went over its limit.
func (ds *decoders) overLimit() bool {
	for i := range ds.limits {
		if ds.limits[i].n < 0 {
			return true
		}
	}
	return false
}

// release returns the decoders to their pools. Their sources are pointed at
// nothing first, so that a pooled decoder keeps no request's body alive.
func (ds *decoders) release() {
	for i := range ds.n {
		if ds.srcs[i] != nil {
			ds.srcs[i].Reset(eofReader{})
		}
		switch {
		case ds.gz[i] != nil:
			gzipReaders.Put(ds.gz[i])
		case ds.rc[i] != nil:
			ds.rcOf[i].Put(ds.rc[i])
		case ds.zd[i] != nil:
			_ = ds.zd[i].Reset(nil)
			zstdReaders.Put(ds.zd[i])
		}
	}
}

type eofReader struct{}

func (eofReader) Read([]byte) (int, error) { return 0, io.EOF }

// isZlibHeader reports whether b starts with a zlib header (RFC 1950,
// section 2.2): method 8 (deflate), a window of at most 32 KiB, and a check
// that makes the first two bytes a multiple of 31.
func isZlibHeader(b []byte) bool {
	return len(b) >= 2 && b[0]&0x0f == 8 && b[0]>>4 <= 7 && (uint16(b[0])<<8|uint16(b[1]))%31 == 0
}

// streamEnd makes data after the end of a deflate stream an error: the flate
// and zlib readers stop at the stream's end and would drop it silently.
type streamEnd struct {
	r   io.Reader
	src *bufio.Reader
}

func (s *streamEnd) Read(p []byte) (int, error) {
	n, err := s.r.Read(p)
	if err == io.EOF {
		if _, perr := s.src.Peek(1); perr == nil {
			return n, errTrailingData
		} else if perr != io.EOF {
			return n, perr
		}
	}
	return n, err
}

// setBody gives the request a fresh copy of the buffered body for this
// attempt, with the model renamed to what this backend expects. The upstream
// gets it as a plain body of known length: whatever framing the client used
// (chunked, trailers, a content coding) ended with readBody.
func (rt *routing) setBody(r *http.Request, backend int) {
	body := rt.body
	if up := rt.h.backends[backend].UpstreamModel(rt.req.Model); up != "" && up != rt.req.Model && rt.c.modelStart >= 0 {
		body = rewriteModel(rt.body, &rt.c, up)
	}
	r.Body = io.NopCloser(bytes.NewReader(body))
	r.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(body)), nil }
	r.ContentLength = int64(len(body))
	r.Header.Del("Transfer-Encoding")
	r.TransferEncoding = nil
	// The client's trailers: Caddy's proxy forwards r.Trailer (and then
	// sends the body chunked to carry them).
	r.Trailer = nil
}
