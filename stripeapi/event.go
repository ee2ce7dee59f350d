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
// could not store (invalid UTF-8, NUL characters) as well as anything that
// is not a Stripe event, so a rejected body never reaches the database.
func ParseEvent(payload []byte) (*Event, error) {
	if !utf8.Valid(payload) {
		return nil, fmt.Errorf("%w: event: body is not valid UTF-8", ErrMalformed)
	}
	if hasNULEscape(payload) {
		return nil, fmt.Errorf("%w: event: body contains a NUL character", ErrMalformed)
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

// hasNULEscape reports whether the JSON text holds the escape \u0000, which
// jsonb cannot store. An escaped backslash before "u0000" does not count.
func hasNULEscape(b []byte) bool {
	for i := 0; ; {
		j := bytes.Index(b[i:], []byte(`\u0000`))
		if j < 0 {
			return bytes.IndexByte(b, 0) >= 0
		}
		j += i
		n := 0
		for k := j - 1; k >= 0 && b[k] == '\\'; k-- {
			n++
		}
		if n%2 == 0 {
			return true
		}
		i = j + 1
	}
}
