package stripeapi

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"
	"unicode/utf8"
)

// This file is the fast path of the parsers: a small JSON scanner that, in
// one pass over the text, checks its syntax and everything ParseEvent asks
// of a body (valid UTF-8, no \u0000, no unpaired surrogate, only storable
// numbers) and fills a parser's wire struct with the handful of fields it
// reads, skipping the rest.
//
// The scanner never rejects anything itself. It either vouches for a
// result that encoding/json would have produced from the same bytes, or it
// declines (returns false) and the parser falls back to encoding/json,
// whose result or error is then the answer. It declines whenever it is not
// certain: any error, a known field given twice (encoding/json merges
// repeated objects and arrays into the earlier value), a key encoding/json
// could match case-insensitively or only after unescaping, integers that
// are not plain, nesting deeper than maxScanDepth. Hostile and odd input
// thus costs what it did before; Stripe's own events take the fast path.
// scan_test.go checks the two paths agree.
//
// When it can go: the scanner exists because encoding/json (v1) costs 29-46
// µs per event against its 3 µs. encoding/json/v2 is still behind
// GOEXPERIMENT=jsonv2 in Go 1.26; measured that way (a 3.3 KB event into
// eventWire, on a shared 2-vCPU machine), it took 13-30 µs and 3.2 KB
// against the scanner's 3.4-6.6 µs and 232 B. Once v2 leaves GOEXPERIMENT,
// measure again (BenchmarkParseEvent against json/v2's Unmarshal into
// eventWire): if it comes within about twice the scanner, drop this file and
// keep the fallback, on v2, with unstorable's checks. v2 rejects invalid
// UTF-8 and duplicate names by itself, two of the checks made here.

// unmarshalWire is the parsers' fallback: encoding/json decodes b into a
// wire struct, its error marked malformed and named for what. Run alone
// (fast unset), it is each parser as it was before the scanner; the tests
// hold the two paths to the same answers.
func unmarshalWire[W any](b []byte, what string) (W, error) {
	var w W
	if err := json.Unmarshal(b, &w); err != nil {
		return w, fmt.Errorf("%w: %s: %v", ErrMalformed, what, err)
	}
	return w, nil
}

// maxScanDepth bounds the nesting the scanner follows (encoding/json's
// own limit is 10000); deeper text is left to encoding/json.
const maxScanDepth = 512

// scanner reads the JSON text b from offset i.
type scanner struct {
	b []byte
	i int
}

// atEnd reports whether only whitespace is left: a parser's wire struct
// scans one object, and the text must hold nothing else.
func (s *scanner) atEnd() bool {
	s.skipSpace()
	return s.i == len(s.b)
}

func (s *scanner) skipSpace() {
	b, i := s.b, s.i // locals, which the compiler keeps in registers
	for i < len(b) && isSpace[b[i]] {
		i++
	}
	s.i = i
}

var isSpace = [256]bool{' ': true, '\t': true, '\n': true, '\r': true}

// next skips whitespace and returns the byte there without consuming it, 0
// at the end of the text (a NUL byte is never valid JSON either).
func (s *scanner) next() byte {
	s.skipSpace()
	if s.i < len(s.b) {
		return s.b[s.i]
	}
	return 0
}

// value checks and skips any JSON value.
func (s *scanner) value(depth int) bool {
	switch c := s.next(); {
	case c == '{':
		return s.object(depth, func([]byte) bool { return s.value(depth + 1) })
	case c == '[':
		return s.array(depth, func() bool { return s.value(depth + 1) })
	case c == '"':
		_, _, ok := s.str()
		return ok
	case c == '-' || '0' <= c && c <= '9':
		_, ok := s.number()
		return ok
	case c == 't':
		return s.literal("true")
	case c == 'f':
		return s.literal("false")
	case c == 'n':
		return s.literal("null")
	}
	return false
}

// object reads an object, calling member with each key (its text between
// the quotes, escapes left as they are) when the scanner is at the value,
// which member must consume.
func (s *scanner) object(depth int, member func(key []byte) bool) bool {
	if depth >= maxScanDepth || s.next() != '{' {
		return false
	}
	s.i++
	if s.next() == '}' {
		s.i++
		return true
	}
	for {
		if s.next() != '"' {
			return false
		}
		key, _, ok := s.str()
		if !ok || s.next() != ':' {
			return false
		}
		s.i++
		if !member(key) {
			return false
		}
		switch s.next() {
		case ',':
			s.i++
		case '}':
			s.i++
			return true
		default:
			return false
		}
	}
}

// array reads an array, calling elem at each element, which it must
// consume.
func (s *scanner) array(depth int, elem func() bool) bool {
	if depth >= maxScanDepth || s.next() != '[' {
		return false
	}
	s.i++
	if s.next() == ']' {
		s.i++
		return true
	}
	for {
		if !elem() {
			return false
		}
		switch s.next() {
		case ',':
			s.i++
		case ']':
			s.i++
			return true
		default:
			return false
		}
	}
}

// plainStringByte marks the bytes a string can hold as they are: printable
// ASCII other than the quote and the backslash.
var plainStringByte = func() (t [256]bool) {
	for c := 0x20; c < utf8.RuneSelf; c++ {
		t[c] = c != '"' && c != '\\'
	}
	return t
}()

// str reads the string at the scanner (at its opening quote) and returns
// the text between the quotes and whether it holds escapes. It refuses
// what encoding/json refuses (control characters, bad escapes, no closing
// quote) and what jsonb cannot store: invalid UTF-8, \u0000 and unpaired
// surrogates.
func (s *scanner) str() (body []byte, escaped, ok bool) {
	b := s.b
	start := s.i + 1 // after the quote
	for i := start; i < len(b); {
		if plainStringByte[b[i]] {
			i++
			continue
		}
		switch c := b[i]; {
		case c == '"':
			s.i = i + 1
			return b[start:i], escaped, true
		case c == '\\':
			n := escapeLen(b, i)
			if n == 0 {
				return nil, false, false
			}
			escaped = true
			i += n
		case c < 0x20:
			return nil, false, false
		default: // a multi-byte character
			r, n := utf8.DecodeRune(b[i:])
			if r == utf8.RuneError && n == 1 {
				return nil, false, false
			}
			i += n
		}
	}
	return nil, false, false
}

// escapeLen returns the length of the escape sequence at b[i] (a
// backslash), or 0 if it is invalid or, judged as unstorable does, a \u
// escape jsonb cannot store.
func escapeLen(b []byte, i int) int {
	if i+1 >= len(b) {
		return 0
	}
	switch b[i+1] {
	case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
		return 2
	case 'u':
		bad, n := unicodeEscape(b, i)
		if bad != "" || n < 6 { // n == 2: not four hex digits
			return 0
		}
		return n
	}
	return 0
}

// number reads a number, which must also be storable (storableNumber).
func (s *scanner) number() ([]byte, bool) {
	b, i := s.b, s.i
	if i < len(b) && b[i] == '-' {
		i++
	}
	switch {
	case i < len(b) && b[i] == '0':
		i++
	case i < len(b) && '1' <= b[i] && b[i] <= '9':
		i = skipDigits(b, i)
	default:
		return nil, false
	}
	if i < len(b) && b[i] == '.' {
		j := skipDigits(b, i+1)
		if j == i+1 {
			return nil, false // no digit after the point
		}
		i = j
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		j := skipDigits(b, i)
		if j == i {
			return nil, false // no digit in the exponent
		}
		i = j
	}
	n := b[s.i:i]
	if !storableNumber(n) {
		return nil, false
	}
	s.i = i
	return n, true
}

func skipDigits(b []byte, i int) int {
	for i < len(b) && '0' <= b[i] && b[i] <= '9' {
		i++
	}
	return i
}

func (s *scanner) literal(lit string) bool {
	if !bytes.HasPrefix(s.b[s.i:], []byte(lit)) {
		return false
	}
	s.i += len(lit)
	return true
}

// null consumes a null if one is next.
func (s *scanner) null() bool {
	return s.next() == 'n' && s.literal("null")
}

// The readers below store a value into a wire struct's field as
// encoding/json would, and decline whatever encoding/json would refuse
// for that field's type. A null leaves a string, integer or boolean as it
// is, which for a field seen once is its zero value.

// stringInto reads a string field.
func (s *scanner) stringInto(dst *string) bool {
	if s.null() {
		return true
	}
	if s.next() != '"' {
		return false
	}
	start := s.i
	body, escaped, ok := s.str()
	switch {
	case !ok:
		return false
	case escaped:
		// Rare in what Stripe sends: let encoding/json unescape it. The
		// scanner has refused what it would replace with U+FFFD.
		v, err := unquote(s.b[start:s.i])
		if err != nil {
			return false
		}
		*dst = v
		return true
	}
	// str has checked body is valid UTF-8, so it is the string's value.
	*dst = string(body)
	return true
}

func unquote(quoted []byte) (string, error) {
	var v string
	err := json.Unmarshal(quoted, &v)
	return v, err
}

// stringPtrInto reads a *string field: null sets it to nil.
func (s *scanner) stringPtrInto(dst **string) bool {
	if s.null() {
		*dst = nil
		return true
	}
	v := new(string)
	if !s.stringInto(v) {
		return false
	}
	*dst = v
	return true
}

// intInto reads an int64 field, with strconv.ParseInt as encoding/json
// does, so 1.0, 1e3 and numbers past int64 are declined.
func (s *scanner) intInto(dst *int64) bool {
	if s.null() {
		return true
	}
	if c := s.next(); c != '-' && (c < '0' || c > '9') {
		return false
	}
	n, ok := s.number()
	if !ok {
		return false
	}
	v, err := strconv.ParseInt(string(n), 10, 64)
	if err != nil {
		return false
	}
	*dst = v
	return true
}

// boolInto reads a bool field.
func (s *scanner) boolInto(dst *bool) bool {
	switch s.next() {
	case 'n':
		return s.literal("null")
	case 't':
		*dst = true
		return s.literal("true")
	case 'f':
		*dst = false
		return s.literal("false")
	}
	return false
}

// expandableInto reads an expandable field as its UnmarshalJSON would:
// null, an id, or an object whose id it takes. Raw is then the object's
// text, a sub-slice of the scanned bytes (which the parsers never modify)
// rather than a copy.
func (s *scanner) expandableInto(dst *expandable, depth int) bool {
	switch s.next() {
	case 'n':
		*dst = expandable{}
		return s.literal("null")
	case '"':
		return s.stringInto(&dst.ID)
	case '{':
		start := s.i
		var id string
		if !s.fields(depth, idField, func(string) bool { return s.stringInto(&id) }) {
			return false
		}
		dst.ID, dst.Raw = id, s.b[start:s.i]
		return true
	}
	return false
}

var idField = []string{"id"}

// metadataInto reads a map[string]string field. Only metadata.user_id is
// ever read, so that is all *dst gets (encoding/json would store every
// entry); every value must still be a string or null.
func (s *scanner) metadataInto(dst *map[string]string, depth int) bool {
	if s.null() {
		*dst = nil
		return true
	}
	var userID string
	found := false
	ok := s.object(depth, func(key []byte) bool {
		if bytes.IndexByte(key, '\\') >= 0 {
			return false // an escaped key might spell user_id
		}
		var v string // a null value is stored as ""
		if !s.stringInto(&v) {
			return false
		}
		if string(key) == "user_id" {
			userID, found = v, true // the last one wins
		}
		return true
	})
	if !ok {
		return false
	}
	if found {
		*dst = map[string]string{"user_id": userID}
	}
	return true
}

// fields reads an object whose keys of interest are names: read is called
// at the value of each, which it must consume; the values of other keys are
// checked and skipped. It declines where fieldSet.match does.
func (s *scanner) fields(depth int, names []string, read func(name string) bool) bool {
	f := fieldSet{names: names}
	return s.object(depth, func(key []byte) bool {
		name, ok := f.match(key)
		switch {
		case !ok:
			return false
		case name == "":
			return s.value(depth + 1)
		}
		return read(name)
	})
}

// fieldSet matches the keys of an object to the JSON names of a wire
// struct's fields, and remembers which fields it has seen.
type fieldSet struct {
	names []string // at most 64
	seen  uint64
}

// match returns the name of the field key stands for, or "" for a key
// encoding/json ignores. ok is false when the scanner must decline: the
// field was already seen, or encoding/json might match the key to a field
// other than by its exact bytes (it compares names case-insensitively,
// with Unicode folding, after unescaping).
func (f *fieldSet) match(key []byte) (name string, ok bool) {
	for i, n := range f.names {
		switch {
		case len(key) != len(n):
		case string(key) == n:
			if f.seen&(1<<i) != 0 {
				return "", false
			}
			f.seen |= 1 << i
			return n, true
		case asciiEqualFold(key, n):
			return "", false
		}
	}
	for _, c := range key {
		if c >= utf8.RuneSelf || c == '\\' {
			return "", false
		}
	}
	return "", true
}

// asciiEqualFold compares a and b, of the same length, ignoring ASCII case.
func asciiEqualFold(a []byte, b string) bool {
	for i := range len(a) {
		x, y := a[i], b[i]
		if 'A' <= x && x <= 'Z' {
			x += 'a' - 'A'
		}
		if 'A' <= y && y <= 'Z' {
			y += 'a' - 'A'
		}
		if x != y {
			return false
		}
	}
	return true
}

// The per-type scanners: each fills the wire struct its parser declares
// (eventWire in event.go, the others in objects.go), field by field, with
// the readers above. A wire struct's fields and its scanner change together;
// FuzzParsersAgree and the tests in scan_test.go catch a scanner that
// drifts from encoding/json's reading of the struct.

var eventFields = []string{"id", "object", "type", "api_version", "created", "data"}

// scanEvent is the fast counterpart of decodeEvent.
func scanEvent(s *scanner, depth int, w *eventWire) bool {
	return s.fields(depth, eventFields, func(name string) bool {
		switch name {
		case "id":
			return s.stringInto(&w.ID)
		case "object":
			return s.stringInto(&w.Object)
		case "type":
			return s.stringInto(&w.Type)
		case "api_version":
			return s.stringPtrInto(&w.APIVersion)
		case "created":
			return s.intInto(&w.Created)
		case "data":
			if s.null() {
				w.Data = nil
				return true
			}
			w.Data = new(eventData)
			return scanEventData(s, depth+1, w.Data)
		}
		return false
	})
}

var eventDataFields = []string{"object"}

func scanEventData(s *scanner, depth int, d *eventData) bool {
	return s.fields(depth, eventDataFields, func(name string) bool {
		switch name {
		case "object":
			// A json.RawMessage takes any value's text, null included
			// (which ParseEvent then refuses).
			s.skipSpace()
			start := s.i
			if !s.value(depth + 1) {
				return false
			}
			d.Object = s.b[start:s.i]
			return true
		}
		return false
	})
}

var sessionFields = []string{"id", "object", "customer", "subscription", "client_reference_id",
	"metadata", "status", "payment_status", "mode", "created"}

func scanSession(s *scanner, depth int, w *sessionWire) bool {
	return s.fields(depth, sessionFields, func(name string) bool {
		switch name {
		case "id":
			return s.stringInto(&w.ID)
		case "object":
			return s.stringInto(&w.Object)
		case "customer":
			return s.expandableInto(&w.Customer, depth+1)
		case "subscription":
			return s.expandableInto(&w.Subscription, depth+1)
		case "client_reference_id":
			return s.stringPtrInto(&w.ClientReferenceID)
		case "metadata":
			return s.metadataInto(&w.Metadata, depth+1)
		case "status":
			return s.stringPtrInto(&w.Status)
		case "payment_status":
			return s.stringInto(&w.PaymentStatus)
		case "mode":
			return s.stringInto(&w.Mode)
		case "created":
			return s.intInto(&w.Created)
		}
		return false
	})
}

var subscriptionFields = []string{"id", "object", "customer", "status", "cancel_at_period_end",
	"current_period_start", "current_period_end", "trial_end", "latest_invoice", "created", "items"}

func scanSubscription(s *scanner, depth int, w *subscriptionWire) bool {
	return s.fields(depth, subscriptionFields, func(name string) bool {
		switch name {
		case "id":
			return s.stringInto(&w.ID)
		case "object":
			return s.stringInto(&w.Object)
		case "customer":
			return s.expandableInto(&w.Customer, depth+1)
		case "status":
			return s.stringInto(&w.Status)
		case "cancel_at_period_end":
			return s.boolInto(&w.CancelAtPeriodEnd)
		case "current_period_start":
			return s.intInto(&w.CurrentPeriodStart)
		case "current_period_end":
			return s.intInto(&w.CurrentPeriodEnd)
		case "trial_end":
			return s.intInto(&w.TrialEnd)
		case "latest_invoice":
			return s.expandableInto(&w.LatestInvoice, depth+1)
		case "created":
			return s.intInto(&w.Created)
		case "items":
			return s.null() || scanItemList(s, depth+1, &w.Items) // null leaves a struct as it is
		}
		return false
	})
}

var itemListFields = []string{"data"}

func scanItemList(s *scanner, depth int, l *itemList) bool {
	return s.fields(depth, itemListFields, func(name string) bool {
		switch name {
		case "data":
			if s.null() {
				l.Data = nil
				return true
			}
			l.Data = []subscriptionItem{}
			return s.array(depth+1, func() bool {
				var it subscriptionItem // a null element stays zero
				if !s.null() && !scanSubscriptionItem(s, depth+2, &it) {
					return false
				}
				l.Data = append(l.Data, it)
				return true
			})
		}
		return false
	})
}

var subscriptionItemFields = []string{"price", "current_period_start", "current_period_end"}

func scanSubscriptionItem(s *scanner, depth int, it *subscriptionItem) bool {
	return s.fields(depth, subscriptionItemFields, func(name string) bool {
		switch name {
		case "price":
			return s.expandableInto(&it.Price, depth+1)
		case "current_period_start":
			return s.intInto(&it.CurrentPeriodStart)
		case "current_period_end":
			return s.intInto(&it.CurrentPeriodEnd)
		}
		return false
	})
}

var customerFields = []string{"id", "object", "deleted", "metadata", "created"}

func scanCustomer(s *scanner, depth int, w *customerWire) bool {
	return s.fields(depth, customerFields, func(name string) bool {
		switch name {
		case "id":
			return s.stringInto(&w.ID)
		case "object":
			return s.stringInto(&w.Object)
		case "deleted":
			return s.boolInto(&w.Deleted)
		case "metadata":
			return s.metadataInto(&w.Metadata, depth+1)
		case "created":
			return s.intInto(&w.Created)
		}
		return false
	})
}

var invoiceFields = []string{"id", "object", "customer", "subscription", "parent",
	"status", "amount_due", "amount_paid", "currency", "created", "hosted_invoice_url"}

func scanInvoice(s *scanner, depth int, w *invoiceWire) bool {
	return s.fields(depth, invoiceFields, func(name string) bool {
		switch name {
		case "id":
			return s.stringInto(&w.ID)
		case "object":
			return s.stringInto(&w.Object)
		case "customer":
			return s.expandableInto(&w.Customer, depth+1)
		case "subscription":
			return s.expandableInto(&w.Subscription, depth+1)
		case "parent":
			if s.null() {
				w.Parent = nil
				return true
			}
			w.Parent = new(invoiceParent)
			return scanInvoiceParent(s, depth+1, w.Parent)
		case "status":
			return s.stringPtrInto(&w.Status)
		case "amount_due":
			return s.intInto(&w.AmountDue)
		case "amount_paid":
			return s.intInto(&w.AmountPaid)
		case "currency":
			return s.stringInto(&w.Currency)
		case "created":
			return s.intInto(&w.Created)
		case "hosted_invoice_url":
			return s.stringPtrInto(&w.HostedInvoiceURL)
		}
		return false
	})
}

var invoiceParentFields = []string{"subscription_details"}

func scanInvoiceParent(s *scanner, depth int, p *invoiceParent) bool {
	return s.fields(depth, invoiceParentFields, func(name string) bool {
		switch name {
		case "subscription_details":
			if s.null() {
				p.SubscriptionDetails = nil
				return true
			}
			p.SubscriptionDetails = new(subscriptionDetails)
			return scanSubscriptionDetails(s, depth+1, p.SubscriptionDetails)
		}
		return false
	})
}

var subscriptionDetailsFields = []string{"subscription"}

func scanSubscriptionDetails(s *scanner, depth int, d *subscriptionDetails) bool {
	return s.fields(depth, subscriptionDetailsFields, func(name string) bool {
		switch name {
		case "subscription":
			return s.expandableInto(&d.Subscription, depth+1)
		}
		return false
	})
}
