package caddymodule

import (
	"net/http"
	"sync/atomic"
	"time"
)

// attemptWriter sits between one proxy attempt and the client. It keeps the
// attempt's headers to itself until the status is known, so that a 5xx that
// will be retried on another backend never reaches the client, and it notes
// when the first body byte went out (time to first token for streams).
type attemptWriter struct {
	http.ResponseWriter
	header       http.Header
	backend      string
	backendValue []string // the X-Model-Router-Backend value, shared per backend
	start        time.Time

	swallow5xx  bool // a retry is possible: hide a 5xx from the client
	status      int
	wroteHeader bool
	discarded   bool
	firstByte   time.Duration

	// idle watches for a backend that goes silent mid-response.
	idle *idleWatch
}

func (a *attemptWriter) reset(w http.ResponseWriter, backend string, backendValue []string, start time.Time, swallow bool) {
	*a = attemptWriter{ResponseWriter: w, header: make(http.Header, 8), backend: backend, backendValue: backendValue,
		start: start, swallow5xx: swallow, firstByte: -1}
}

// idleWatch is the stream idle timeout of one attempt: once the response
// started, a backend silent for the whole timeout has onIdle called (it
// cancels the attempt). Writes only stamp the time; the timer, when it fires,
// re-arms itself for whatever is left, so no timer is reset per write.
type idleWatch struct {
	timeout   time.Duration
	onIdle    func()
	timer     *time.Timer
	lastWrite atomic.Int64 // unix nanos
	writing   atomic.Bool  // time spent writing to a slow client is not the backend's
}

// watchIdle sets the stream idle timeout for this attempt; the clock starts
// with the response headers.
func (a *attemptWriter) watchIdle(d time.Duration, onIdle func()) {
	if d > 0 {
		a.idle = &idleWatch{timeout: d, onIdle: onIdle}
	}
}

func (w *idleWatch) start() {
	w.lastWrite.Store(time.Now().UnixNano())
	w.timer = time.AfterFunc(time.Duration(1<<62), w.check)
	w.timer.Reset(w.timeout) // armed once w.timer is set, so check always sees it
}

func (w *idleWatch) check() {
	if w.writing.Load() {
		w.timer.Reset(w.timeout)
		return
	}
	silent := time.Duration(time.Now().UnixNano() - w.lastWrite.Load())
	if silent < w.timeout {
		w.timer.Reset(w.timeout - silent)
		return
	}
	w.onIdle()
}

// stopIdle disarms the stream idle timeout at the end of the attempt.
func (a *attemptWriter) stopIdle() {
	if a.idle != nil && a.idle.timer != nil {
		a.idle.timer.Stop()
	}
}

func (a *attemptWriter) Header() http.Header { return a.header }

func (a *attemptWriter) WriteHeader(code int) {
	if a.wroteHeader {
		return
	}
	if code >= 100 && code < 200 && code != http.StatusSwitchingProtocols {
		copyHeader(a.ResponseWriter.Header(), a.header)
		a.ResponseWriter.WriteHeader(code)
		return
	}
	a.wroteHeader = true
	a.status = code
	if a.idle != nil {
		a.idle.start()
	}
	if code >= 500 && a.swallow5xx {
		a.discarded = true
		return
	}
	dst := a.ResponseWriter.Header()
	copyHeader(dst, a.header)
	dst[backendHeader] = a.backendValue
	a.ResponseWriter.WriteHeader(code)
}

func (a *attemptWriter) Write(p []byte) (int, error) {
	if !a.wroteHeader {
		a.WriteHeader(http.StatusOK)
	}
	if w := a.idle; w != nil && w.timer != nil {
		// The backend is sending: the idle clock starts again after this write.
		w.writing.Store(true)
		defer func() {
			w.lastWrite.Store(time.Now().UnixNano())
			w.writing.Store(false)
		}()
	}
	if a.discarded {
		return len(p), nil
	}
	if a.firstByte < 0 && len(p) > 0 {
		a.firstByte = time.Since(a.start)
	}
	return a.ResponseWriter.Write(p)
}

// FlushError lets http.ResponseController flush through us; a discarded
// attempt must not flush, or the client would get the headers we held back.
func (a *attemptWriter) FlushError() error {
	if a.discarded {
		return nil
	}
	if !a.wroteHeader {
		a.WriteHeader(http.StatusOK)
	}
	return http.NewResponseController(a.ResponseWriter).Flush()
}

// Unwrap exposes the client's writer to http.ResponseController (deadlines,
// hijacking).
func (a *attemptWriter) Unwrap() http.ResponseWriter { return a.ResponseWriter }

// committed reports whether anything of this attempt reached the client.
func (a *attemptWriter) committed() bool { return a.wroteHeader && !a.discarded }

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
