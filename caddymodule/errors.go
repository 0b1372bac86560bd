package caddymodule

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"strconv"
	"time"
)

// apiError is an error answered to the client in OpenAI's error shape:
// {"error":{"message","type","param","code"}}.
type apiError struct {
	Status  int
	Message string
	Type    string // invalid_request_error, server_error, ...
	Param   string
	Code    string
	// RetryAfter, when set, is sent as a Retry-After header in whole
	// seconds, rounded up; spread over [d, 2d] when Jitter is set, so that
	// clients told to come back do not return all at once.
	RetryAfter time.Duration
	Jitter     bool
}

func (e *apiError) Error() string { return fmt.Sprintf("%d %s: %s", e.Status, e.Code, e.Message) }

func invalidRequest(status int, code, param, msg string) *apiError {
	return &apiError{Status: status, Message: msg, Type: "invalid_request_error", Param: param, Code: code}
}

func serverError(status int, code, msg string) *apiError {
	return &apiError{Status: status, Message: msg, Type: "server_error", Code: code}
}

type errorBody struct {
	Error errorFields `json:"error"`
}

type errorFields struct {
	Message string  `json:"message"`
	Type    string  `json:"type"`
	Param   *string `json:"param"`
	Code    string  `json:"code"`
}

// write answers the error. The handler then returns nil rather than a
// caddyhttp.HandlerError: the answer is already complete, and Caddy's access log
// records its status.
func (e *apiError) write(w http.ResponseWriter) {
	body := errorBody{Error: errorFields{Message: e.Message, Type: e.Type, Code: e.Code}}
	if e.Param != "" {
		p := e.Param
		body.Error.Param = &p
	}
	buf, _ := json.Marshal(body)
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Content-Length", strconv.Itoa(len(buf)+1))
	h.Del("X-Model-Router-Backend")
	if e.RetryAfter > 0 {
		secs := int((e.RetryAfter + time.Second - 1) / time.Second)
		if e.Jitter {
			secs = jitterSeconds(e.RetryAfter)
		}
		h.Set("Retry-After", strconv.Itoa(secs))
	}
	w.WriteHeader(e.Status)
	_, _ = w.Write(append(buf, '\n'))
}

// jitterSeconds spreads Retry-After over [d, 2d] (at least 1s) so that clients
// told to come back do not return all at once.
func jitterSeconds(d time.Duration) int {
	base := max(1, int(d.Round(time.Second)/time.Second))
	return base + rand.IntN(base+1)
}
