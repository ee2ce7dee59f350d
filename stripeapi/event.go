package stripeapi

import (
	"bytes"
	"encoding/json"
	"fmt"
	"time"
	"unicode/utf8"
)

// Event is a Stripe event envelope; Object is data.object, left raw for the
// processor to parse by type.
type Event struct {
	ID         string
	Type       string
	APIVersion string
	Created    time.Time
	Object     json.RawMessage
	Payload    []byte // the whole event as received
}

// ParseEvent parses and checks a webhook body. It rejects what PostgreSQL
// could not store (invalid UTF-8, NUL characters, unpaired
// surrogates, numbers beyond numeric) as well as anything that
// is not a Stripe event, so a rejected body never reaches the database.
// Event.Object is a sub-slice of payload, which must not be modified.
func ParseEvent(payload []byte) (*Event, error) { return parseEvent(payload, true) }

// parseEvent is ParseEvent, on the scanner's fast path when fast is set.
// The scanner checks in one pass what decodeEvent checks in four.
func parseEvent(payload []byte, fast bool) (*Event, error) {
	var w eventWire
	if s := (scanner{b: payload}); !fast || !scanEvent(&s, 0, &w) || !s.atEnd() {
		var err error // the scanner declined (see scan.go): decodeEvent decides
		if w, err = decodeEvent(payload); err != nil {
			return nil, err
		}
	}
	switch {
	case w.Object != "event":
		return nil, fmt.Errorf("%w: event: object is not \"event\"", ErrMalformed)
	case !ValidID(w.ID, "evt_"):
		return nil, fmt.Errorf("%w: event: bad id", ErrMalformed)
	case !validType(w.Type):
		return nil, fmt.Errorf("%w: event %s: bad type", ErrMalformed, w.ID)
	case w.Created <= 0 || w.Created > maxUnix:
		return nil, fmt.Errorf("%w: event %s: bad created", ErrMalformed, w.ID)
	case w.Data == nil || len(w.Data.Object) == 0 || w.Data.Object[0] != '{':
		return nil, fmt.Errorf("%w: event %s: data.object is not an object", ErrMalformed, w.ID)
	}
	ev := &Event{ID: w.ID, Type: w.Type, Created: unixTime(w.Created), Object: w.Data.Object, Payload: payload}
	if w.APIVersion != nil {
		if len(*w.APIVersion) > 64 {
			return nil, fmt.Errorf("%w: event %s: bad api_version", ErrMalformed, w.ID)
		}
		ev.APIVersion = *w.APIVersion
	}
	return ev, nil
}

// eventWire is the part of an event envelope ParseEvent reads. Like every
// wire struct it is an alias of an unnamed struct type, as the parsers
// declared before the scanner, so encoding/json's errors read as they did
// ("Go struct field .created of type int64").
type eventWire = struct {
	ID         string     `json:"id"`
	Object     string     `json:"object"`
	Type       string     `json:"type"`
	APIVersion *string    `json:"api_version"`
	Created    int64      `json:"created"`
	Data       *eventData `json:"data"`
}

type eventData = struct {
	Object json.RawMessage `json:"object"`
}

// decodeEvent is ParseEvent's decoding for the bodies the scanner
// declines: each check is a pass of its own over the body.
func decodeEvent(payload []byte) (eventWire, error) {
	if !utf8.Valid(payload) {
		return eventWire{}, fmt.Errorf("%w: event: body is not valid UTF-8", ErrMalformed)
	}
	if bad := unstorable(payload); bad != "" {
		return eventWire{}, fmt.Errorf("%w: event: body contains %s", ErrMalformed, bad)
	}
	return unmarshalWire[eventWire](payload, "event")
}

func validType(t string) bool {
	if t == "" || len(t) > 100 {
		return false
	}
	for i := 0; i < len(t); i++ {
		c := t[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_' || c == '.') {
			return false
		}
	}
	return true
}

// unstorable reports what in the JSON text jsonb cannot store: a raw NUL
// byte, the escape \u0000, a UTF-16 surrogate escape without its pair, or
// a number beyond PostgreSQL's numeric (Stripe sends none of these). It
// walks the text once, string escapes pair by pair, so an escaped backslash
// before "u0000" is text, not an escape. Syntax errors are left to
// json.Unmarshal. The scanner (scan.go) makes the same checks.
func unstorable(b []byte) string {
	if bytes.IndexByte(b, 0) >= 0 {
		return "a NUL character"
	}
	inString := false
	for i := 0; i < len(b); i++ {
		c := b[i]
		switch {
		case !inString && c == '"':
			inString = true
		case !inString && (c == '-' || c >= '0' && c <= '9'):
			j := i
			for j < len(b) && bytes.IndexByte([]byte("+-.0123456789eE"), b[j]) >= 0 {
				j++
			}
			if !storableNumber(b[i:j]) {
				return "a number out of range"
			}
			i = j - 1
		case !inString:
		case c == '"':
			inString = false
		case c != '\\':
		case i+1 >= len(b) || b[i+1] != 'u':
			i++ // a two-byte escape such as \\ or \"
		default:
			bad, n := unicodeEscape(b, i)
			if bad != "" {
				return bad
			}
			i += n - 1
		}
	}
	return ""
}

// unicodeEscape checks the \uXXXX escape at b[i:] and returns its length
// (12 for a surrogate pair).
func unicodeEscape(b []byte, i int) (bad string, n int) {
	r, ok := hex4(b, i+2)
	switch {
	case !ok:
		return "", 2
	case r == 0:
		return "a NUL character", 0
	case r >= 0xDC00 && r <= 0xDFFF:
		return "an unpaired UTF-16 surrogate", 0
	case r >= 0xD800 && r <= 0xDBFF:
		lo, ok := rune(0), i+7 < len(b) && b[i+6] == '\\' && b[i+7] == 'u'
		if ok {
			lo, ok = hex4(b, i+8)
		}
		if !ok || lo < 0xDC00 || lo > 0xDFFF {
			return "an unpaired UTF-16 surrogate", 0
		}
		return "", 12
	}
	return "", 6
}

// storableNumber bounds a JSON number: at most 64 characters and an
// exponent within ±1000, far inside numeric's range and Stripe's use.
func storableNumber(n []byte) bool {
	if len(n) > 64 {
		return false
	}
	if e := bytes.IndexAny(n, "eE"); e >= 0 {
		exp := bytes.TrimLeft(n[e+1:], "+-")
		exp = bytes.TrimLeft(exp, "0")
		return len(exp) <= 3
	}
	return true
}

func hex4(b []byte, at int) (rune, bool) {
	if at+4 > len(b) {
		return 0, false
	}
	var r rune
	for _, c := range b[at : at+4] {
		switch {
		case c >= '0' && c <= '9':
			r = r<<4 | rune(c-'0')
		case c >= 'a' && c <= 'f':
			r = r<<4 | rune(c-'a'+10)
		case c >= 'A' && c <= 'F':
			r = r<<4 | rune(c-'A'+10)
		default:
			return 0, false
		}
	}
	return r, true
}
