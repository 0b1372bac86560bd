package caddymodule

import (
	"bytes"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/modelrouter/modelrouter/engine"
)

// holdLimit bounds the part of a retryable answer (5xx, 408, 429) that an
// attempt writer holds back while a retry on another backend is still
// possible. Error answers are small; a longer one is passed on as it comes
// (and then not retried), so a hostile upstream cannot make us buffer much.
const holdLimit = 64 << 10

// attemptWriter sits between one proxy attempt and the client. When a retry is
// possible it holds back a retryable answer (5xx, 408, 429: status, headers and
// up to holdLimit of body) so that the client never sees an answer that will be
// retried, and can still be given it when no retry happens after all. It notes
// when the first body byte went out (time to first token for streams), and
// runs the attempt's idle watch (see idleWatch).
type attemptWriter struct {
	http.ResponseWriter
	header       http.Header
	backend      string
	backendValue []string // the X-Model-Router-Backend value, shared per backend
	start        time.Time

	holdBack    bool // a retry is possible: hold back a retryable answer
	status      int
	wroteHeader bool
	held        bool         // the answer is held back, not yet sent
	heldBody    bytes.Buffer // what the upstream wrote of a held answer
	firstByte   time.Duration
	// clientClosed: the proxy reported the client gone (a 499) before any
	// answer; 499 is a log-only status and is never sent.
	clientClosed bool
	// writeFailed: writing to the client failed (client gone or too slow).
	writeFailed bool
	// streamEnded: the stream's terminal event (see endsStream) reached the
	// client: the answer is complete even if the connection is not closed yet.
	streamEnded bool
	// events counts the SSE events of a streamed answer; usage is the output
	// token count the backend reported (0: none seen). They measure the
	// answer's length for the latency model.
	events, usage int

	idle *idleWatch
	sig  *attemptSignals
}

// attemptSignals are the attempt's facts shared with its timers, allocated per
// attempt so that a timer of an earlier attempt can never touch a later one.
type attemptSignals struct {
	gotHeader atomic.Bool           // the final response status arrived
	cause     atomic.Pointer[error] // why the router cut the attempt short; nil when it did not
}

// stop records why the router cuts the attempt short; the first cause wins.
func (s *attemptSignals) stop(c error) bool { return s.cause.CompareAndSwap(nil, &c) }

// stopCause returns why the router cut the attempt short, or nil.
func (a *attemptWriter) stopCause() error {
	if a.sig == nil {
		return nil
	}
	if c := a.sig.cause.Load(); c != nil {
		return *c
	}
	return nil
}

func (a *attemptWriter) reset(w http.ResponseWriter, backend string, backendValue []string, start time.Time, holdBack bool) {
	*a = attemptWriter{ResponseWriter: w, header: make(http.Header, 8), backend: backend, backendValue: backendValue,
		start: start, holdBack: holdBack, firstByte: -1}
}

// idleWatch watches one attempt for silence, once the response started:
//   - the backend sent nothing for the timeout (a hung backend must not hold a
//     slot for ever): onIdle(errIdleTimeout);
//   - one write to the client has not completed within the timeout (a client
//     that stopped reading must not hold a slot for ever either): every write
//     carries a write deadline of the timeout, so the stuck write fails, and
//     onIdle(errClientStalled) records why.
//
// The deadline is set from the writing goroutine (Caddy's writers are not
// safe for concurrent use). Otherwise writes only stamp the time; the timer,
// when it fires, re-arms itself for whatever is left, so no timer is reset
// per write.
type idleWatch struct {
	timeout    time.Duration
	onIdle     func(cause error)
	rc         *http.ResponseController // the client's writer, for write deadlines
	deadline   bool                     // a write deadline was set: clear it at the end
	timer      *time.Timer
	lastWrite  atomic.Int64 // unix nanos of the end of the last write
	writeStart atomic.Int64 // unix nanos of the start of the write in progress; 0 when none
}

// watchIdle sets the stream idle timeout for this attempt; the clock starts
// with the response headers.
func (a *attemptWriter) watchIdle(d time.Duration, onIdle func(cause error)) {
	if d > 0 {
		a.idle = &idleWatch{timeout: d, onIdle: onIdle, rc: http.NewResponseController(a.ResponseWriter)}
	}
}

func (w *idleWatch) start() {
	w.lastWrite.Store(time.Now().UnixNano())
	w.timer = time.AfterFunc(time.Duration(1<<62), w.check)
	w.timer.Reset(w.timeout) // armed once w.timer is set, so check always sees it
}

func (w *idleWatch) check() {
	t := time.Now().UnixNano()
	if ws := w.writeStart.Load(); ws != 0 {
		// Time spent writing to the client is not the backend's silence;
		// a write that lasts the whole timeout is a client that stopped
		// reading (its deadline cuts it).
		if stuck := time.Duration(t - ws); stuck < w.timeout {
			w.timer.Reset(w.timeout - stuck)
			return
		}
		w.onIdle(errClientStalled)
		return
	}
	silent := time.Duration(t - w.lastWrite.Load())
	if silent < w.timeout {
		w.timer.Reset(w.timeout - silent)
		return
	}
	w.onIdle(errIdleTimeout)
}

func (w *idleWatch) beginWrite() {
	t := time.Now()
	w.writeStart.Store(t.UnixNano())
	if w.rc.SetWriteDeadline(t.Add(w.timeout)) == nil {
		w.deadline = true
	}
}

func (w *idleWatch) endWrite() {
	w.lastWrite.Store(time.Now().UnixNano())
	w.writeStart.Store(0)
}

// stopIdle disarms the stream idle timeout at the end of the attempt, and
// takes its write deadline off the client's connection.
func (a *attemptWriter) stopIdle() {
	w := a.idle
	if w == nil {
		return
	}
	if w.timer != nil {
		w.timer.Stop()
	}
	if w.deadline {
		_ = w.rc.SetWriteDeadline(time.Time{})
		w.deadline = false
	}
}

func (a *attemptWriter) Header() http.Header { return a.header }

func (a *attemptWriter) WriteHeader(code int) {
	if a.wroteHeader {
		return
	}
	if code == 499 {
		// Caddy's proxy reports a cancelled attempt (client gone, or one of
		// our own timeouts) as 499: the attempt's outcome, not an answer.
		a.clientClosed = true
		return
	}
	if code >= 100 && code < 200 && code != http.StatusSwitchingProtocols {
		copyHeader(a.ResponseWriter.Header(), a.header)
		a.ResponseWriter.WriteHeader(code)
		return
	}
	a.wroteHeader = true
	a.status = code
	if a.sig != nil {
		a.sig.gotHeader.Store(true)
	}
	if a.idle != nil {
		a.idle.start()
	}
	if a.holdBack && engine.StatusOutcome(code).Retryable() {
		a.held = true
		return
	}
	a.sendHeader()
}

func (a *attemptWriter) sendHeader() {
	dst := a.ResponseWriter.Header()
	copyHeader(dst, a.header)
	dst[backendHeader] = a.backendValue
	a.ResponseWriter.WriteHeader(a.status)
}

func (a *attemptWriter) Write(p []byte) (int, error) {
	if !a.wroteHeader {
		a.WriteHeader(http.StatusOK)
	}
	if w := a.idle; w != nil && w.timer != nil {
		// The backend is sending: the idle clock starts again after this write.
		w.beginWrite()
		defer w.endWrite()
	}
	if a.held {
		if a.heldBody.Len()+len(p) <= holdLimit {
			return a.heldBody.Write(p)
		}
		// Too long to hold: pass it on after all (and give up the retry).
		if err := a.release(); err != nil {
			return 0, err
		}
	}
	if a.firstByte < 0 && len(p) > 0 {
		a.firstByte = time.Since(a.start)
	}
	a.measure(p)
	n, err := a.ResponseWriter.Write(p)
	if err != nil {
		a.writeFailed = true
	} else if endsStream(p) {
		a.streamEnded = true
	}
	return n, err
}

// measure notes what a chunk of the answer says about its length.
func (a *attemptWriter) measure(p []byte) {
	a.events += bytes.Count(p, dataField)
	if n := usageTokens(p); n > 0 {
		a.usage = n
	}
}

// outputTokens is the answer's length in tokens: what the backend reported
// in its usage, else for a stream its events less the two that carry no
// token (the finish chunk and [DONE]); 0 when unknown.
func (a *attemptWriter) outputTokens(stream bool) int {
	switch {
	case a.usage > 0:
		return a.usage
	case stream && a.events > 2:
		return a.events - 2
	}
	return 0
}

var (
	dataField = []byte("data:")
	// The usage fields holding the answer's length: chat and text
	// completions report completion_tokens, the Responses API output_tokens.
	usageKeys = [...][]byte{[]byte(`"completion_tokens":`), []byte(`"output_tokens":`)}
)

// usageTokens finds a usage field's value in a chunk of an answer; 0 when
// there is none (or it is split across chunks).
func usageTokens(p []byte) int {
	for _, key := range usageKeys {
		i := bytes.LastIndex(p, key)
		if i < 0 {
			continue
		}
		rest := bytes.TrimLeft(p[i+len(key):], " ")
		n := 0
		for _, c := range rest {
			if c < '0' || c > '9' || n > 1<<24 {
				break
			}
			n = n*10 + int(c-'0')
		}
		return n
	}
	return 0
}

// The terminal events of OpenAI streams: chat and text completions end with
// "data: [DONE]"; Responses API streams with a response.completed event.
var (
	doneEvent      = []byte("data: [DONE]")
	completedEvent = []byte("event: response.completed")
)

// endsStream reports whether a chunk of an SSE answer carries its terminal
// event.
func endsStream(p []byte) bool {
	return bytes.Contains(p, doneEvent) || bytes.Contains(p, completedEvent)
}

// release sends a held answer to the client: its status and headers, and the
// body written so far. The rest, if any, follows as it comes.
func (a *attemptWriter) release() error {
	if !a.held {
		return nil
	}
	a.held = false
	a.sendHeader()
	if a.heldBody.Len() == 0 {
		return nil
	}
	if a.firstByte < 0 {
		a.firstByte = time.Since(a.start)
	}
	a.measure(a.heldBody.Bytes())
	_, err := a.ResponseWriter.Write(a.heldBody.Bytes())
	a.heldBody = bytes.Buffer{}
	if err != nil {
		a.writeFailed = true
	}
	return err
}

// FlushError lets http.ResponseController flush through us; a held answer is
// not flushed, or the client would get the headers we hold back.
func (a *attemptWriter) FlushError() error {
	if a.held {
		return nil
	}
	if !a.wroteHeader {
		a.WriteHeader(http.StatusOK)
	}
	if w := a.idle; w != nil && w.timer != nil {
		w.beginWrite()
		defer w.endWrite()
	}
	err := http.NewResponseController(a.ResponseWriter).Flush()
	if err != nil {
		a.writeFailed = true
	}
	return err
}

// Unwrap exposes the client's writer to http.ResponseController (deadlines,
// hijacking).
func (a *attemptWriter) Unwrap() http.ResponseWriter { return a.ResponseWriter }

// committed reports whether anything of this attempt reached the client.
func (a *attemptWriter) committed() bool { return a.wroteHeader && !a.held }

// retryAfter is the held or sent answer's Retry-After, in seconds or as an
// HTTP date; 0 when absent or unusable.
func (a *attemptWriter) retryAfter() time.Duration {
	v := a.header.Get("Retry-After")
	if v == "" {
		return 0
	}
	return parseRetryAfter(v, now())
}

// copyHeader moves the attempt's headers to the client's writer. The value
// slices are shared, not copied: the attempt's map is dropped right after.
func copyHeader(dst, src http.Header) {
	for k, vv := range src {
		if k == backendHeader {
			continue // ours, set from config; an upstream's copy is dropped
		}
		dst[k] = vv
	}
}

// parseRetryAfter reads a Retry-After value (RFC 9110, section 10.2.3):
// delay-seconds or an HTTP-date, relative to now. It returns 0 for a value
// that is missing, malformed or already past.
func parseRetryAfter(v string, now time.Time) time.Duration {
	v = strings.TrimSpace(v)
	if secs, err := strconv.ParseInt(v, 10, 64); err == nil {
		if secs <= 0 {
			return 0
		}
		return time.Duration(min(secs, 1<<31)) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil {
		if d := t.Sub(now); d > 0 {
			return d
		}
	}
	return 0
}
