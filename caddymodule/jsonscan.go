package caddymodule

import (
	"encoding/json"
	"errors"
	"fmt"
)

// jsonScanner walks a JSON document in place, without building values or
// allocating: the classifier needs a handful of top-level fields from bodies
// that may be megabytes of prompt. It validates what it walks as strictly as
// encoding/json.Valid (the fuzz test holds it to that).
type jsonScanner struct {
	b     []byte
	i     int
	depth int
}

var (
	errUnexpectedEnd = errors.New("unexpected end of JSON input")
	errTooDeep       = fmt.Errorf("JSON nested deeper than %d levels", maxJSONDepth)
)

func (s *jsonScanner) syntaxErr(what string) error {
	if s.i >= len(s.b) {
		return errUnexpectedEnd
	}
	return fmt.Errorf("invalid character %q %s at offset %d", s.b[s.i], what, s.i)
}

func (s *jsonScanner) ws() {
	for s.i < len(s.b) {
		switch s.b[s.i] {
		case ' ', '\t', '\n', '\r':
			s.i++
		default:
			return
		}
	}
}

// peek returns the next non-space byte, or 0 at the end.
func (s *jsonScanner) peek() byte {
	s.ws()
	if s.i >= len(s.b) {
		return 0
	}
	return s.b[s.i]
}

func (s *jsonScanner) expect(c byte, what string) error {
	if s.peek() != c {
		return s.syntaxErr(what)
	}
	s.i++
	return nil
}

// str scans a string starting at its opening quote and returns the bounds of
// its raw content (between the quotes) and whether it holds escapes.
func (s *jsonScanner) str() (start, end int, escaped bool, err error) {
	if s.peek() != '"' {
		return 0, 0, false, s.syntaxErr("looking for beginning of string")
	}
	s.i++
	start = s.i
	for s.i < len(s.b) {
		c := s.b[s.i]
		switch {
		case c == '"':
			end = s.i
			s.i++
			return start, end, escaped, nil
		case c == '\\':
			escaped = true
			s.i++
			if s.i >= len(s.b) {
				return 0, 0, false, errUnexpectedEnd
			}
			switch s.b[s.i] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				s.i++
			case 'u':
				s.i++
				for k := 0; k < 4; k++ {
					if s.i >= len(s.b) {
						return 0, 0, false, errUnexpectedEnd
					}
					if !isHex(s.b[s.i]) {
						return 0, 0, false, s.syntaxErr("in \\u hexadecimal character escape")
					}
					s.i++
				}
			default:
				return 0, 0, false, s.syntaxErr("in string escape code")
			}
		case c < 0x20:
			return 0, 0, false, s.syntaxErr("in string literal")
		default:
			s.i++
		}
	}
	return 0, 0, false, errUnexpectedEnd
}

func isHex(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F'
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

// number scans a number and reports whether it is a plain integer (no
// fraction or exponent).
func (s *jsonScanner) number() (start, end int, integer bool, err error) {
	start = s.i
	integer = true
	if s.i < len(s.b) && s.b[s.i] == '-' {
		s.i++
	}
	switch {
	case s.i < len(s.b) && s.b[s.i] == '0':
		s.i++
	case s.i < len(s.b) && s.b[s.i] >= '1' && s.b[s.i] <= '9':
		for s.i < len(s.b) && isDigit(s.b[s.i]) {
			s.i++
		}
	default:
		return 0, 0, false, s.syntaxErr("in numeric literal")
	}
	if s.i < len(s.b) && s.b[s.i] == '.' {
		integer = false
		s.i++
		if s.i >= len(s.b) || !isDigit(s.b[s.i]) {
			return 0, 0, false, s.syntaxErr("after decimal point in numeric literal")
		}
		for s.i < len(s.b) && isDigit(s.b[s.i]) {
			s.i++
		}
	}
	if s.i < len(s.b) && (s.b[s.i] == 'e' || s.b[s.i] == 'E') {
		integer = false
		s.i++
		if s.i < len(s.b) && (s.b[s.i] == '+' || s.b[s.i] == '-') {
			s.i++
		}
		if s.i >= len(s.b) || !isDigit(s.b[s.i]) {
			return 0, 0, false, s.syntaxErr("in exponent of numeric literal")
		}
		for s.i < len(s.b) && isDigit(s.b[s.i]) {
			s.i++
		}
	}
	return start, s.i, integer, nil
}

func (s *jsonScanner) literal(word string) error {
	if len(s.b)-s.i < len(word) || string(s.b[s.i:s.i+len(word)]) != word {
		return s.syntaxErr("in literal " + word)
	}
	s.i += len(word)
	return nil
}

// value scans any value and returns the bytes of text in its string values
// (object keys are structure, not prompt).
func (s *jsonScanner) value() (text int, err error) {
	switch s.peek() {
	case '"':
		start, end, _, err := s.str()
		return end - start, err
	case '{':
		return s.container('}', true)
	case '[':
		return s.container(']', false)
	case 't':
		return 0, s.literal("true")
	case 'f':
		return 0, s.literal("false")
	case 'n':
		return 0, s.literal("null")
	case 0:
		return 0, errUnexpectedEnd
	default:
		if c := s.b[s.i]; c == '-' || isDigit(c) {
			_, _, _, err := s.number()
			return 0, err
		}
		return 0, s.syntaxErr("looking for beginning of value")
	}
}

func (s *jsonScanner) container(closer byte, object bool) (text int, err error) {
	s.depth++
	if s.depth > maxJSONDepth {
		return 0, errTooDeep
	}
	s.i++ // the opening bracket
	if s.peek() == closer {
		s.i++
		s.depth--
		return 0, nil
	}
	for {
		if object {
			if _, _, _, err := s.str(); err != nil {
				return 0, err
			}
			if err := s.expect(':', "after object key"); err != nil {
				return 0, err
			}
		}
		n, err := s.value()
		if err != nil {
			return 0, err
		}
		text += n
		switch s.peek() {
		case ',':
			s.i++
		case closer:
			s.i++
			s.depth--
			return text, nil
		default:
			return 0, s.syntaxErr("after element")
		}
	}
}

// unquote decodes a string whose raw content is b[start:end].
func unquote(b []byte, start, end int, escaped bool) (string, error) {
	if !escaped {
		return string(b[start:end]), nil
	}
	var v string
	err := json.Unmarshal(b[start-1:end+1], &v)
	return v, err
}
