package caddymodule

import (
	"bytes"
	"io"
	"net/http"
)

// readBody reads the whole body, at most MaxBody bytes, once: it is needed to
// classify the request and is replayed on a retry.
func (h *Handler) readBody(r *http.Request) ([]byte, *apiError) {
	if r.ContentLength > h.MaxBody {
		return nil, invalidRequest(http.StatusRequestEntityTooLarge, "request_too_large", "", "the request body is larger than the gateway accepts")
	}
	if r.ContentLength > 0 {
		// The usual case: one exact allocation, then a check that the body
		// really ends where the client said it would.
		body := make([]byte, r.ContentLength)
		if _, err := io.ReadFull(r.Body, body); err != nil {
			return nil, invalidRequest(http.StatusBadRequest, "invalid_body", "", "reading the request body failed")
		}
		var probe [1]byte
		if n, _ := r.Body.Read(probe[:]); n > 0 {
			return nil, invalidRequest(http.StatusBadRequest, "invalid_body", "", "the request body is longer than its Content-Length")
		}
		return body, nil
	}
	var buf bytes.Buffer
	n, err := buf.ReadFrom(io.LimitReader(r.Body, h.MaxBody+1))
	if err != nil {
		return nil, invalidRequest(http.StatusBadRequest, "invalid_body", "", "reading the request body failed")
	}
	if n > h.MaxBody {
		return nil, invalidRequest(http.StatusRequestEntityTooLarge, "request_too_large", "", "the request body is larger than the gateway accepts")
	}
	return buf.Bytes(), nil
}

// setBody gives the request a fresh copy of the buffered body for this
// attempt, with the model renamed to what this backend expects.
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
}
