package caddymodule

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"

	"github.com/modelrouter/modelrouter/engine"
)

// maxJSONDepth bounds nesting while walking a request body, so a hostile body
// of a million brackets costs nothing but its own bytes.
const maxJSONDepth = 64

// classified is what the router learns from a request body.
type classified struct {
	req engine.Request
	// modelStart and modelEnd delimit the "model" value (quotes included) in the
	// body, so that it can be rewritten to the upstream's name without
	// re-encoding the rest of the body.
	modelStart, modelEnd int
}

var errNotObject = errors.New("request body must be a JSON object")

// classify decodes only what routing needs from an OpenAI request body: model,
// stream, the completion token limit and an estimate of the prompt's size. The
// prompt itself is never kept. Duplicate "model" keys, including ones that differ
// only in case, are rejected: upstreams disagree about which one wins, and
// routing by one while the upstream reads the other would bypass the router.
func classify(body []byte, kind engine.Kind) (classified, *apiError) {
	c := classified{req: engine.Request{Kind: kind}, modelStart: -1}
	s := jsonScanner{b: body}
	switch s.peek() {
	case '{':
	case 0:
		return c, malformed(errUnexpectedEnd)
	default:
		if _, err := s.value(); err != nil {
			return c, malformed(err)
		}
		return c, malformed(errNotObject)
	}
	s.i++
	s.depth = 1
	seenModel := false
	if s.peek() == '}' {
		s.i++
	} else {
		for {
			ks, ke, kesc, err := s.str()
			if err != nil {
				return c, malformed(err)
			}
			key := body[ks:ke]
			if kesc {
				k, err := unquote(body, ks, ke, kesc)
				if err != nil {
					return c, malformed(err)
				}
				key = []byte(k)
			}
			if err := s.expect(':', "after object key"); err != nil {
				return c, malformed(err)
			}
			if apiErr := c.field(&s, key, &seenModel); apiErr != nil {
				return c, apiErr
			}
			if ch := s.peek(); ch == ',' {
				s.i++
				continue
			} else if ch == '}' {
				s.i++
				break
			}
			return c, malformed(s.syntaxErr("after object key:value pair"))
		}
	}
	if s.peek() != 0 {
		return c, malformed(s.syntaxErr("after top-level value"))
	}
	if !seenModel || c.req.Model == "" {
		return c, invalidRequest(400, "missing_model", "model", `you must provide a model parameter`)
	}
	return c, nil
}

// field reads the value of one top-level key.
func (c *classified) field(s *jsonScanner, key []byte, seenModel *bool) *apiError {
	switch k := string(key); { // no allocation: the conversion only feeds comparisons
	case strings.EqualFold(k, "model"):
		if *seenModel || k != "model" {
			return invalidRequest(400, "invalid_request_body", "model", `the body must have exactly one "model" key, in lower case`)
		}
		*seenModel = true
		if s.peek() != '"' {
			if _, err := s.value(); err != nil {
				return malformed(err)
			}
			return invalidRequest(400, "invalid_type", "model", `"model" must be a string`)
		}
		c.modelStart = s.i
		start, end, escaped, err := s.str()
		if err != nil {
			return malformed(err)
		}
		c.modelEnd = s.i
		if c.req.Model, err = unquote(s.b, start, end, escaped); err != nil {
			return malformed(err)
		}
	case k == "stream":
		switch s.peek() {
		case 't':
			c.req.Stream = true
			return malformedIf(s.literal("true"))
		case 'f':
			return malformedIf(s.literal("false"))
		case 'n':
			return malformedIf(s.literal("null"))
		}
		if _, err := s.value(); err != nil {
			return malformed(err)
		}
		return invalidRequest(400, "invalid_type", "stream", `"stream" must be a boolean`)
	case k == "max_tokens" || k == "max_completion_tokens" || k == "max_output_tokens":
		switch ch := s.peek(); {
		case ch == 'n':
			return malformedIf(s.literal("null"))
		case ch == '-' || isDigit(ch):
			start, end, integer, err := s.number()
			if err != nil {
				return malformed(err)
			}
			// A JSON number: 100, 1e2 and 100.0 are the same count; one too
			// large for any context is kept as the largest (and fits none).
			x, perr := strconv.ParseFloat(string(s.b[start:end]), 64)
			if perr != nil && !errors.Is(perr, strconv.ErrRange) {
				return malformed(perr)
			}
			if x < 0 || (!integer && x != math.Trunc(x)) {
				return invalidRequest(400, "invalid_value", k, fmt.Sprintf("%q must be a whole number of 0 or more", k))
			}
			c.req.MaxTokens = int(min(x, 1<<31-1))
		default:
			if _, err := s.value(); err != nil {
				return malformed(err)
			}
			return invalidRequest(400, "invalid_type", k, fmt.Sprintf("%q must be an integer", k))
		}
	case k == "messages" || k == "prompt" || k == "input" || k == "instructions" || k == "system":
		n, err := s.value()
		if err != nil {
			return malformed(err)
		}
		c.req.PromptTokens += estimateTokens(n)
	default:
		if _, err := s.value(); err != nil {
			return malformed(err)
		}
	}
	return nil
}

func malformedIf(err error) *apiError {
	if err != nil {
		return malformed(err)
	}
	return nil
}

// estimateTokens turns a byte count into a token estimate: about four bytes a
// token for English text with BPE tokenizers, rounded up.
func estimateTokens(bytes int) int { return (bytes + 3) / 4 }

func malformed(err error) *apiError {
	return invalidRequest(400, "invalid_json", "", "the request body is not valid JSON: "+err.Error())
}

// rewriteModel returns body with the model value replaced by name.
func rewriteModel(body []byte, c *classified, name string) []byte {
	quoted, _ := json.Marshal(name)
	out := make([]byte, 0, len(body)-(c.modelEnd-c.modelStart)+len(quoted))
	out = append(out, body[:c.modelStart]...)
	out = append(out, quoted...)
	return append(out, body[c.modelEnd:]...)
}
