package caddymodule

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
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
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	tok, err := dec.Token()
	if err != nil {
		return c, malformed(err)
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		return c, malformed(errNotObject)
	}
	seenModel := false
	for dec.More() {
		keyTok, err := dec.Token()
		if err != nil {
			return c, malformed(err)
		}
		key, _ := keyTok.(string)
		switch {
		case strings.EqualFold(key, "model"):
			if seenModel || key != "model" {
				return c, invalidRequest(400, "invalid_request_body", "model", `the body must have exactly one "model" key, in lower case`)
			}
			seenModel = true
			before := dec.InputOffset()
			v, err := dec.Token()
			if err != nil {
				return c, malformed(err)
			}
			s, ok := v.(string)
			if !ok {
				return c, invalidRequest(400, "invalid_type", "model", `"model" must be a string`)
			}
			c.req.Model = s
			c.modelEnd = int(dec.InputOffset())
			c.modelStart = bytes.IndexByte(body[before:c.modelEnd], '"') + int(before)
		case key == "stream":
			v, err := dec.Token()
			if err != nil {
				return c, malformed(err)
			}
			switch b := v.(type) {
			case bool:
				c.req.Stream = b
			case nil:
			default:
				if d, ok := v.(json.Delim); ok {
					if err := skip(dec, d, 1); err != nil {
						return c, malformed(err)
					}
				}
				return c, invalidRequest(400, "invalid_type", "stream", `"stream" must be a boolean`)
			}
		case key == "max_tokens" || key == "max_completion_tokens" || key == "max_output_tokens":
			v, err := dec.Token()
			if err != nil {
				return c, malformed(err)
			}
			switch n := v.(type) {
			case json.Number:
				i, err := n.Int64()
				if err != nil || i < 0 {
					return c, invalidRequest(400, "invalid_value", key, fmt.Sprintf("%q must be a non-negative integer", key))
				}
				c.req.MaxTokens = int(min(i, 1<<31-1))
			case nil:
			default:
				if d, ok := v.(json.Delim); ok {
					if err := skip(dec, d, 1); err != nil {
						return c, malformed(err)
					}
				}
				return c, invalidRequest(400, "invalid_type", key, fmt.Sprintf("%q must be an integer", key))
			}
		case key == "messages" || key == "prompt" || key == "input" || key == "instructions" || key == "system":
			n, err := countText(dec)
			if err != nil {
				return c, malformed(err)
			}
			c.req.PromptTokens += estimateTokens(n)
		default:
			v, err := dec.Token()
			if err != nil {
				return c, malformed(err)
			}
			if d, ok := v.(json.Delim); ok {
				if err := skip(dec, d, 1); err != nil {
					return c, malformed(err)
				}
			}
		}
	}
	if _, err := dec.Token(); err != nil { // the closing brace
		return c, malformed(err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return c, malformed(errors.New("unexpected data after the JSON object"))
	}
	if !seenModel || c.req.Model == "" {
		return c, invalidRequest(400, "missing_model", "model", `you must provide a model parameter`)
	}
	return c, nil
}

// estimateTokens turns a byte count into a token estimate: about four bytes a
// token for English text with BPE tokenizers, rounded up.
func estimateTokens(bytes int) int { return (bytes + 3) / 4 }

// countText walks one JSON value and returns the bytes of text in its string
// values (object keys are structure, not prompt).
func countText(dec *json.Decoder) (int, error) {
	total, depth := 0, 0
	// inObject[d] says the container at depth d is an object; keyNext[d] that
	// its next token is a key.
	var inObject, keyNext [maxJSONDepth + 1]bool
	for {
		tok, err := dec.Token()
		if err != nil {
			return 0, err
		}
		isKey := depth > 0 && inObject[depth] && keyNext[depth]
		if depth > 0 && inObject[depth] {
			keyNext[depth] = !keyNext[depth]
		}
		switch t := tok.(type) {
		case json.Delim:
			switch t {
			case '{', '[':
				depth++
				if depth > maxJSONDepth {
					return 0, errTooDeep
				}
				inObject[depth], keyNext[depth] = t == '{', true
			default:
				depth--
				if depth > 0 && inObject[depth] {
					// the container we just closed was a value: a key comes next
					keyNext[depth] = true
				}
			}
		case string:
			if !isKey {
				total += len(t)
			}
		}
		if depth == 0 {
			return total, nil
		}
	}
}

var errTooDeep = fmt.Errorf("JSON nested deeper than %d levels", maxJSONDepth)

// skip consumes the rest of a value whose opening delimiter was just read.
func skip(dec *json.Decoder, _ json.Delim, depth int) error {
	for depth > 0 {
		tok, err := dec.Token()
		if err != nil {
			return err
		}
		if d, ok := tok.(json.Delim); ok {
			if d == '{' || d == '[' {
				depth++
				if depth > maxJSONDepth {
					return errTooDeep
				}
			} else {
				depth--
			}
		}
	}
	return nil
}

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
