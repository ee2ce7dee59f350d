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
// could not store (invalid UTF-8, NUL characters, unpaired surrogates) as well as anything that
// is not a Stripe event, so a rejected body never reaches the database.
func ParseEvent(payload []byte) (*Event, error) {
	if !utf8.Valid(payload) {
		return nil, fmt.Errorf("%w: event: body is not valid UTF-8", ErrMalformed)
	}
	if bad := badEscape(payload); bad != "" {
		return nil, fmt.Errorf("%w: event: body contains %s", ErrMalformed, bad)
	}
	var w struct {
		ID         string  `json:"id"`
		Object     string  `json:"object"`
		Type       string  `json:"type"`
		APIVersion *string `json:"api_version"`
		Created    int64   `json:"created"`
		Data       *struct {
			Object json.RawMessage `json:"object"`
		} `json:"data"`
	}
	if err := json.Unmarshal(payload, &w); err != nil {
		return nil, fmt.Errorf("%w: event: %v", ErrMalformed, err)
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

// badEscape reports what in the JSON text jsonb cannot store: a raw NUL
// byte, the escape \u0000, or a UTF-16 surrogate escape without its pair.
// Escapes are walked pair by pair, so an escaped backslash before "u0000"
// is text, not an escape.
func badEscape(b []byte) string {
	if bytes.IndexByte(b, 0) >= 0 {
		return "a NUL character"
	}
	for i := 0; i < len(b); i++ {
		if b[i] != '\\' {
			continue
		}
		if i+1 >= len(b) || b[i+1] != 'u' {
			i++ // a two-byte escape such as \\ or \"
			continue
		}
		r, ok := hex4(b, i+2)
		switch {
		case !ok:
			return "" // json.Unmarshal reports the syntax error
		case r == 0:
			return "a NUL character"
		case r >= 0xDC00 && r <= 0xDFFF:
			return "an unpaired UTF-16 surrogate"
		case r >= 0xD800 && r <= 0xDBFF:
			lo, ok := rune(0), i+7 < len(b) && b[i+6] == '\\' && b[i+7] == 'u'
			if ok {
				lo, ok = hex4(b, i+8)
			}
			if !ok || lo < 0xDC00 || lo > 0xDFFF {
				return "an unpaired UTF-16 surrogate"
			}
			i += 6
		}
		i += 5
	}
	return ""
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
