package stripeapi

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/lockstep/lockstep/internal/stripefake"
)

// The parsers read with a hand-written scanner and fall back to
// encoding/json when it declines (scan.go). The tests below hold each one's
// fast path to its encoding/json path (fast unset: the parser as it was
// before the scanner): on every input both must give the same result, or
// the same error word for word.

// parserPairs lists each parser's fast path with its reference, the same
// parser on encoding/json alone.
var parserPairs = []parserPair{
	pair("ParseEvent", parseEvent),
	pair("ParseCheckoutSession", parseCheckoutSession),
	pair("ParseSubscription", parseSubscription),
	pair("ParseCustomer", parseCustomer),
	pair("ParseInvoice", parseInvoice),
}

type parserPair struct {
	name      string
	fast, ref func([]byte) (any, error)
}

func pair[T any](name string, parse func([]byte, bool) (*T, error)) parserPair {
	path := func(fast bool) func([]byte) (any, error) {
		return func(b []byte) (any, error) {
			v, err := parse(b, fast)
			if v == nil {
				return nil, err // an untyped nil, so results compare across types
			}
			return v, err
		}
	}
	return parserPair{name, path(true), path(false)}
}

// checkAgree fails t if any parser and its reference answer b differently.
func checkAgree(t *testing.T, b []byte) {
	t.Helper()
	for _, p := range parserPairs {
		got, gotErr := p.fast(b)
		want, wantErr := p.ref(b)
		if errText(gotErr) != errText(wantErr) {
			t.Errorf("%s(%.300q):\nerror  %v\nwanted %v", p.name, b, gotErr, wantErr)
			continue
		}
		if gotErr != nil && !errors.Is(gotErr, ErrMalformed) {
			t.Errorf("%s(%.300q): error %v does not wrap ErrMalformed", p.name, b, gotErr)
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("%s(%.300q): result differs from encoding/json's (-want +got)\n%s", p.name, b, diff)
		}
	}
}

func errText(err error) string {
	if err == nil {
		return "<nil>"
	}
	return err.Error()
}

// stripeBodies are events and objects as Stripe sends them, of every type
// and API version lockstep reads.
func stripeBodies(t testing.TB) [][]byte {
	t.Helper()
	created := time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)
	var bodies [][]byte
	add := func(typ, version string, obj map[string]any) {
		ev := stripefake.EventJSON("evt_seed"+fmt.Sprint(len(bodies)), typ, created, version, obj)
		o, err := json.Marshal(obj)
		if err != nil {
			t.Fatal(err)
		}
		bodies = append(bodies, ev, o)
	}
	for _, v := range []string{stripefake.DefaultAPIVersion, stripefake.BasilAPIVersion} {
		sub := stripefake.Subscription{ID: "sub_seed1", Customer: "cus_seed1", Status: "active", PriceID: "price_seed",
			Created: created, Metadata: map[string]string{"plan": "pro"}}
		add("customer.subscription.updated", v, stripefake.SubscriptionJSON(sub, v))
		add("checkout.session.completed", v, stripefake.SessionJSON(stripefake.Session{ID: "cs_seed1", Customer: "cus_seed1",
			Subscription: "sub_seed1", ClientReferenceID: "user-1", Metadata: map[string]string{"user_id": "user-1"},
			Status: "complete", PaymentStatus: "paid", Created: created}, nil, v))
		add("checkout.session.completed", v, stripefake.SessionJSON(stripefake.Session{ID: "cs_seed2", Customer: "cus_seed1",
			Subscription: "sub_seed1", ClientReferenceID: "Zoë 😀", Status: "complete", PaymentStatus: "paid", Created: created}, &sub, v))
		add("customer.updated", v, stripefake.CustomerJSON(stripefake.Customer{ID: "cus_seed1", Email: "a@example.com",
			Metadata: map[string]string{"user_id": "user-1"}, Created: created}, v))
		add("customer.deleted", v, stripefake.CustomerJSON(stripefake.Customer{ID: "cus_seed1", Deleted: true}, v))
		add("invoice.paid", v, stripefake.InvoiceJSON(stripefake.Invoice{ID: "in_seed1", Customer: "cus_seed1",
			Subscription: "sub_seed1", Status: "paid", AmountDue: 1500, AmountPaid: 1500, Created: created}, v))
	}
	return bodies
}

// TestScannerReadsStripeBodies checks the fast path is the one taken for
// what Stripe sends (else the parsers would still be right, but slow).
func TestScannerReadsStripeBodies(t *testing.T) {
	scans := map[string]func(s *scanner) bool{
		"event":            func(s *scanner) bool { var w eventWire; return scanEvent(s, 0, &w) },
		"checkout.session": func(s *scanner) bool { var w sessionWire; return scanSession(s, 0, &w) },
		"subscription":     func(s *scanner) bool { var w subscriptionWire; return scanSubscription(s, 0, &w) },
		"customer":         func(s *scanner) bool { var w customerWire; return scanCustomer(s, 0, &w) },
		"invoice":          func(s *scanner) bool { var w invoiceWire; return scanInvoice(s, 0, &w) },
	}
	for _, b := range stripeBodies(t) {
		var head struct{ Object string }
		if err := json.Unmarshal(b, &head); err != nil {
			t.Fatal(err)
		}
		s := scanner{b: b}
		if !scans[head.Object](&s) || !s.atEnd() {
			t.Errorf("the scanner declined a %s Stripe sends:\n%s", head.Object, b)
		}
		checkAgree(t, b)
	}
}

// trickyObjects are objects that probe where encoding/json's reading is
// easy to get wrong: duplicate keys, keys it matches case-insensitively or
// after unescaping, null and wrong types, number forms, escapes.
var trickyObjects = []string{
	// Keys.
	`{"id":"sub_1","object":"subscription","customer":"cus_1","status":"active","ID":"sub_2"}`,
	`{"Id":"sub_1","OBJECT":"subscription","Customer":"cus_1","Status":"active"}`,
	`{"id":"sub_1","object":"subscription","customer":"cus_1","status":"active","ſtatus":"canceled"}`,
	`{"id":"sub_1","object":"subscription","customer":"cus_1","st\u0061tus":"active"}`,
	`{"id":"sub_1","id":"sub_2","object":"subscription","customer":"cus_1","status":"active"}`,
	`{"id":"sub_1","object":"subscription","customer":"cus_1","customer":null,"status":"active"}`,
	`{"id":"sub_1","object":"subscription","customer":{"id":"cus_1","ID":"cus_2"},"status":"active"}`,
	`{"id":"sub_1","object":"subscription","customer":{"id":"cus_1","id":null},"status":"active"}`,
	`{"id":"sub_1","object":"subscription","customer":{"Id":"cus_1"},"status":"active"}`,
	`{"id":"sub_1","object":"subscription","customer":{"object":"customer"},"status":"active"}`,
	`{"id":"sub_1","object":"subscription","customer":{"id":"cus_1","\u0069d":"cus_2"},"status":"active"}`,
	`{"id":"sub_1","object":"subscription","customer":"cus_1","status":"active","id":null}`,
	`{"id":"sub_1","object":"subscription","customer":"cus_1","status":"active","unknown":{"\u0041":1,"ID":2}}`,
	// Null and wrong types.
	`{"id":"sub_1","object":"subscription","customer":"cus_1","status":null}`,
	`{"id":"sub_1","object":"subscription","customer":["cus_1"],"status":"active"}`,
	`{"id":"sub_1","object":"subscription","customer":7,"status":"active"}`,
	`{"id":"sub_1","object":"subscription","customer":true,"status":"active"}`,
	`{"id":"sub_1","object":"subscription","customer":{"id":7},"status":"active"}`,
	`{"id":7,"object":"subscription","customer":"cus_1","status":"active"}`,
	`{"id":"sub_1","object":"subscription","customer":"cus_1","status":"active","cancel_at_period_end":"true"}`,
	`{"id":"sub_1","object":"subscription","customer":"cus_1","status":"active","cancel_at_period_end":1}`,
	`{"id":"sub_1","object":"subscription","customer":"cus_1","status":"active","cancel_at_period_end":null}`,
	`{"id":"sub_1","object":"subscription","customer":"cus_1","status":"active","cancel_at_period_end":true}`,
	`{"id":"sub_1","object":"subscription","customer":"cus_1","status":"active","items":null}`,
	`{"id":"sub_1","object":"subscription","customer":"cus_1","status":"active","items":[]}`,
	`{"id":"sub_1","object":"subscription","customer":"cus_1","status":"active","items":"x"}`,
	`{"id":"sub_1","object":"subscription","customer":"cus_1","status":"active","items":{"data":null}}`,
	`{"id":"sub_1","object":"subscription","customer":"cus_1","status":"active","items":{"data":{}}}`,
	`{"id":"sub_1","object":"subscription","customer":"cus_1","status":"active","items":{"data":[1]}}`,
	`{"id":"sub_1","object":"subscription","customer":"cus_1","status":"active","items":{"data":[null,{"price":"p2","current_period_end":1767225600}]}}`,
	`{"id":"sub_1","object":"subscription","customer":"cus_1","status":"active","items":{"data":[{"price":{"id":"p1"},"current_period_end":5},{"price":"p2","current_period_end":1767225600}]}}`,
	`{"id":"sub_1","object":"subscription","customer":"cus_1","status":"active","items":{"data":[{"price":"p1","current_period_end":5}]},"items":{"data":[{"price":"p2"}]}}`,
	`{"id":"sub_1","object":"subscription","customer":"cus_1","status":"active","items":{"data":[{"price":"p1","current_period_end":5}],"data":[{"price":"p2"}]}}`,
	`{"id":"sub_1","object":"subscription","customer":"cus_1","status":"active","items":{"data":[{"price":"p1","price":null}]}}`,
	`{"id":"sub_1","object":"subscription","customer":"cus_1","status":"active","items":{"data":[{"price":"` + strings.Repeat("p", 300) + `"}]}}`,
	// Numbers.
	`{"id":"sub_1","object":"subscription","customer":"cus_1","status":"active","created":1.0}`,
	`{"id":"sub_1","object":"subscription","customer":"cus_1","status":"active","created":-0}`,
	`{"id":"sub_1","object":"subscription","customer":"cus_1","status":"active","created":1e3}`,
	`{"id":"sub_1","object":"subscription","customer":"cus_1","status":"active","created":-1}`,
	`{"id":"sub_1","object":"subscription","customer":"cus_1","status":"active","created":9223372036854775807}`,
	`{"id":"sub_1","object":"subscription","customer":"cus_1","status":"active","created":9223372036854775808}`,
	`{"id":"sub_1","object":"subscription","customer":"cus_1","status":"active","created":-9223372036854775808}`,
	`{"id":"sub_1","object":"subscription","customer":"cus_1","status":"active","created":"1700000000"}`,
	`{"id":"sub_1","object":"subscription","customer":"cus_1","status":"active","current_period_end":-5,"items":{"data":[{"current_period_end":1767225600}]}}`,
	`{"id":"sub_1","object":"subscription","customer":"cus_1","status":"active","current_period_end":99999999999}`,
	`{"id":"sub_1","object":"subscription","customer":"cus_1","status":"active","n":[01]}`,
	`{"id":"sub_1","object":"subscription","customer":"cus_1","status":"active","n":[-]}`,
	`{"id":"sub_1","object":"subscription","customer":"cus_1","status":"active","n":[1.]}`,
	`{"id":"sub_1","object":"subscription","customer":"cus_1","status":"active","n":[.5]}`,
	`{"id":"sub_1","object":"subscription","customer":"cus_1","status":"active","n":[1e]}`,
	`{"id":"sub_1","object":"subscription","customer":"cus_1","status":"active","n":[1e+]}`,
	`{"id":"sub_1","object":"subscription","customer":"cus_1","status":"active","n":[+1]}`,
	`{"id":"sub_1","object":"subscription","customer":"cus_1","status":"active","n":[1E400,1e0001,-0.0e-0,1e-999]}`,
	`{"id":"sub_1","object":"subscription","customer":"cus_1","status":"active","n":[1e1000]}`,
	`{"id":"sub_1","object":"subscription","customer":"cus_1","status":"active","n":[1e00001000]}`,
	`{"id":"sub_1","object":"subscription","customer":"cus_1","status":"active","n":[` + strings.Repeat("9", 64) + `]}`,
	`{"id":"sub_1","object":"subscription","customer":"cus_1","status":"active","n":[` + strings.Repeat("9", 65) + `]}`,
	// Strings.
	`{"id":"sub_1","object":"subscription","customer":"cus_1","status":"act\u0069ve"}`,
	`{"id":"sub_1","object":"subscription","customer":"cus_1","status":"active","items":{"data":[{"price":"pr\u00e9\ud83d\ude00\n\"\\\/\b\f\r\t"}]}}`,
	`{"id":"sub_1","object":"subscription","customer":"cus_1","status":"active","s":"\ud800"}`,
	`{"id":"sub_1","object":"subscription","customer":"cus_1","status":"active","s":"\udc00"}`,
	`{"id":"sub_1","object":"subscription","customer":"cus_1","status":"active","s":"\ud800\u0041"}`,
	`{"id":"sub_1","object":"subscription","customer":"cus_1","status":"active","s":"\udbff\udfff"}`,
	`{"id":"sub_1","object":"subscription","customer":"cus_1","status":"active","s":"\u0000"}`,
	`{"id":"sub_1","object":"subscription","customer":"cus_1","status":"active","s":"\\u0000"}`,
	`{"id":"sub_1","object":"subscription","customer":"cus_1","status":"active","s":"\u12"}`,
	`{"id":"sub_1","object":"subscription","customer":"cus_1","status":"active","s":"\uZZZZ"}`,
	`{"id":"sub_1","object":"subscription","customer":"cus_1","status":"active","s":"\x"}`,
	"{\"id\":\"sub_1\",\"object\":\"subscription\",\"customer\":\"cus_1\",\"status\":\"active\",\"s\":\"\x01\"}",
	"{\"id\":\"sub_1\",\"object\":\"subscription\",\"customer\":\"cus_1\",\"status\":\"active\",\"s\":\"\t\x7f\"}",
	"{\"id\":\"sub_1\",\"object\":\"subscription\",\"customer\":\"cus_1\",\"status\":\"active\",\"s\":\"\xff\"}",
	"{\"id\":\"sub_1\",\"object\":\"subscription\",\"customer\":\"cus_1\",\"status\":\"active\",\"s\":\"\xc0\x80\"}",
	"{\"id\":\"sub_1\",\"object\":\"subscription\",\"customer\":\"cus_1\",\"status\":\"active\",\"s\":\"\xed\xa0\x80\"}",
	"{\"id\":\"sub_1\",\"object\":\"subscription\",\"customer\":\"cus_1\",\"status\":\"active\",\"s\":\"\xef\xbf\xbd \xf0\x9f\x98\x80\"}",
	"{\"id\":\"sub_1\",\"object\":\"subscription\",\"customer\":\"cus_1\",\"status\":\"active\",\"s\":\"\xf0\x9f\x98\"}",
	"{\"id\":\"sub_1\",\"object\":\"subscription\",\"customer\":\"cus_1\",\"status\":\"active\",\"s\":\"\x00\"}",
	"{\"id\":\"sub_1\",\"object\":\"subscription\",\"customer\":\"cus_1\",\"status\":\"active\",\"items\":{\"data\":[{\"price\":\"p\xff\"}]}}",
	// Literals, structure, whitespace.
	`{"id":"sub_1","object":"subscription","customer":"cus_1","status":"active","l":[tru]}`,
	`{"id":"sub_1","object":"subscription","customer":"cus_1","status":"active","l":[nul]}`,
	`{"id":"sub_1","object":"subscription","customer":"cus_1","status":"active","l":[nulll]}`,
	`{"id":"sub_1","object":"subscription","customer":"cus_1","status":"active","l":[True]}`,
	`{"id":"sub_1","object":"subscription","customer":"cus_1","status":"active","l":[1,]}`,
	`{"id":"sub_1","object":"subscription","customer":"cus_1","status":"active",}`,
	`{"id":"sub_1","object":"subscription","customer":"cus_1","status":"active"} x`,
	`{"id":"sub_1","object":"subscription","customer":"cus_1","status":"active"}{}`,
	`{"id":"sub_1","object":"subscription","customer":"cus_1","status":"active"`,
	`{"id":"sub_1","object":"subscription","customer":"cus_1","status":"active"]`,
	`{"id":"sub_1" "object":"subscription"}`,
	`{"id":"sub_1","object":"subscription","customer":"cus_1","status":"active","a":{"b" 1}}`,
	"\ufeff" + `{"id":"sub_1","object":"subscription","customer":"cus_1","status":"active"}`,
	" \t\r\n" + `{ "id" : "sub_1" , "object":"subscription","customer":"cus_1","status":"active" }` + " \t\r\n",
	"\v" + `{"id":"sub_1","object":"subscription","customer":"cus_1","status":"active"}`,
	`{"id":"sub_1","object":"subscription","customer":"cus_1","status":"active","deep":` + strings.Repeat("[", 600) + strings.Repeat("]", 600) + `}`,
	`{"id":"sub_1","object":"subscription","customer":"cus_1","status":"active","deep":` + strings.Repeat(`{"a":`, 10001) + "1" + strings.Repeat("}", 10001) + `}`,
	`null`, `[]`, `"sub_1"`, ``, ` `, `{}`,
	// Checkout sessions.
	`{"id":"cs_1","object":"checkout.session","customer":"cus_1","client_reference_id":"u1","metadata":{"user_id":"u1","user_id":"u2"}}`,
	`{"id":"cs_1","object":"checkout.session","customer":"cus_1","metadata":{"user_id":"u1","user_id":null}}`,
	`{"id":"cs_1","object":"checkout.session","metadata":{"user\u005fid":"u3"}}`,
	`{"id":"cs_1","object":"checkout.session","metadata":{"User_id":"u4","user_id":"u5","\u00e9":"x"}}`,
	`{"id":"cs_1","object":"checkout.session","metadata":{"user_id":1}}`,
	`{"id":"cs_1","object":"checkout.session","metadata":{"a":{"b":"c"}}}`,
	`{"id":"cs_1","object":"checkout.session","metadata":null}`,
	`{"id":"cs_1","object":"checkout.session","metadata":[]}`,
	`{"id":"cs_1","object":"checkout.session","metadata":{"user_id":"a\u0007b"}}`,
	`{"id":"cs_1","object":"checkout.session","metadata":{"user_id":"a\u00e9b"}}`,
	`{"id":"cs_1","object":"checkout.session","metadata":{"user_id":""},"client_reference_id":""}`,
	`{"id":"cs_1","object":"checkout.session","client_reference_id":null,"status":null,"payment_status":null,"mode":null}`,
	`{"id":"cs_1","object":"checkout.session","client_reference_id":5}`,
	`{"id":"cs_1","object":"checkout.session","status":"complete","payment_status":"paid","customer":{"id":"cus_1","object":"customer"}}`,
	`{"id":"cs_1","object":"checkout.session","customer":"bob"}`,
	`{"id":"cs_1","object":"checkout.session","subscription":{"id":"sub_1","object":"subscription","customer":"cus_1","status":"active"}}`,
	`{"id":"cs_1","object":"checkout.session","subscription":{"id":"sub_1","object":"subscription","customer":"cus_1","status":"zombie"}}`,
	`{"id":"cs_1","object":"checkout.session","subscription":{"id":"sub_1","object":"subscription","customer":"cus_1","status":"active"},"subscription":"sub_2"}`,
	`{"id":"cs_1","object":"checkout.session","subscription":{},"created":1700000000}`,
	// Customers.
	`{"id":"cus_1","object":"customer","deleted":true}`,
	`{"id":"cus_1","object":"customer","deleted":"true"}`,
	`{"id":"cus_1","object":"customer","deleted":null,"created":null,"metadata":{}}`,
	`{"id":"cus_1","object":"customer","metadata":{"user_id":"u\ud83d\ude00"}}`,
	`{"id":"cus_1","object":"customer","Deleted":true,"deleted":false}`,
	// Invoices.
	`{"id":"in_1","object":"invoice","customer":"cus_1","parent":null}`,
	`{"id":"in_1","object":"invoice","customer":"cus_1","parent":"x"}`,
	`{"id":"in_1","object":"invoice","customer":"cus_1","parent":{"subscription_details":null}}`,
	`{"id":"in_1","object":"invoice","customer":"cus_1","parent":{"subscription_details":[]}}`,
	`{"id":"in_1","object":"invoice","customer":"cus_1","parent":{"type":"subscription_details","subscription_details":{"metadata":{},"subscription":{"id":"sub_1"}}}}`,
	`{"id":"in_1","object":"invoice","customer":"cus_1","subscription":"sub_0","parent":{"subscription_details":{"subscription":"sub_1"}}}`,
	`{"id":"in_1","object":"invoice","customer":"cus_1","parent":{"subscription_details":{"subscription":"sub_1"},"subscription_details":{}}}`,
	`{"id":"in_1","object":"invoice","customer":"cus_1","status":"","amount_due":1e300}`,
	`{"id":"in_1","object":"invoice","customer":"cus_1","status":null,"amount_due":-5,"amount_paid":null,"currency":"eur"}`,
	`{"id":"in_1","object":"invoice","customer":"cus_1","currency":"` + strings.Repeat("e", 11) + `"}`,
	`{"id":"in_1","object":"invoice","customer":"cus_1","status":"` + strings.Repeat("s", 41) + `"}`,
	`{"id":"in_1","object":"invoice","customer":null}`,
}

// trickyEnvelopes probe the event envelope; %s is data.object.
var trickyEnvelopes = []string{
	`{"id":"evt_1","object":"event","type":"customer.subscription.updated","created":1700000000,"data":{"object":%s}}`,
	`{"id":"evt_1","object":"event","type":"customer.subscription.updated","created":1700000000,"api_version":null,"data":{"object":%s,"previous_attributes":{"a":1}}}`,
	`{"id":"evt_1","object":"event","type":"x","created":1700000000,"api_version":"` + strings.Repeat("v", 65) + `","data":{"object":%s}}`,
	`{"id":"evt_1","object":"event","type":"x","created":1700000000,"api_version":5,"data":{"object":%s}}`,
	`{"id":"evt_1","object":"event","type":"x","created":1700000000,"data":{"object":%s,"object":{}}}`,
	`{"id":"evt_1","object":"event","type":"x","created":1700000000,"data":{"Object":%s}}`,
	`{"id":"evt_1","object":"event","type":"x","created":1700000000,"data":{"object":%s},"data":null}`,
	`{"id":"evt_1","object":"event","type":"x","created":1700000000,"data":null,"data":{"object":%s}}`,
	`{"id":"evt_1","object":"event","type":"x","created":"now","data":{"object":%s}}`,
	`{"ID":"evt_1","OBJECT":"event","TYPE":"x","Created":1700000000,"Data":{"object":%s}}`,
	`{"id":"evt_1","object":"event","type":"x","created":1700000000,"d\u0061ta":{"object":%s}}`,
	`{"id":"evt_1","object":"event","type":"x","created":1700000000,"data":{"object":%s}}trailing`,
	`{"id":"evt_1","object":"event","type":"x","created":1700000000,"data":[%s]}`,
	`{"id":"evt_1","object":"event","type":"a b","created":1700000000,"data":{"object":%s}}`,
	`{"id":"evt_1","object":"event","id":"evt_2","type":"x","created":1700000000,"data":{"object":%s}}`,
}

// trickyInputs is every tricky object alone and in every tricky envelope,
// and the envelopes around null and an array.
func trickyInputs() [][]byte {
	var in [][]byte
	for _, o := range append(trickyObjects, "null", "[]", `"x"`) {
		in = append(in, []byte(o))
		for _, e := range trickyEnvelopes {
			in = append(in, fmt.Appendf(nil, e, o))
		}
	}
	return in
}

func TestParsersAgreeOnTrickyInput(t *testing.T) {
	for _, b := range trickyInputs() {
		checkAgree(t, b)
	}
}

// TestParsersAgreeOnWebhookCorpus runs the hostile bodies of the webhook
// handler's fuzz corpus (handlers/testdata) through both paths.
func TestParsersAgreeOnWebhookCorpus(t *testing.T) {
	files, err := filepath.Glob("../handlers/testdata/fuzz/FuzzWebhook/*")
	if err != nil || len(files) == 0 {
		t.Skipf("no corpus: %v", err)
	}
	for _, name := range files {
		text, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		// go test fuzz v1
		// []byte("...")
		_, lit, _ := strings.Cut(strings.TrimSpace(string(text)), "\n")
		lit = strings.TrimSuffix(strings.TrimPrefix(lit, "[]byte("), ")")
		b, err := strconv.Unquote(lit)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		checkAgree(t, []byte(b))
	}
}

// TestParsersAgreeOnMutations mutates Stripe's bodies at random, with a
// fixed seed, towards the cases above: JSON punctuation, escapes, case
// changes, repeated and lost spans.
func TestParsersAgreeOnMutations(t *testing.T) {
	n := 50
	if testing.Short() {
		n = 10
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for _, seed := range stripeBodies(t) {
		for range n {
			checkAgree(t, mutate(rng, seed))
		}
	}
}

var mutationBytes = []byte("{}[]\",:\\ 0123456789-+.eEutrfalsn\x00\x7f\xff\xc3")

func mutate(rng *rand.Rand, seed []byte) []byte {
	b := bytes.Clone(seed)
	for range 1 + rng.IntN(3) {
		i := rng.IntN(len(b))
		j := min(len(b), i+1+rng.IntN(12))
		switch rng.IntN(6) {
		case 0: // overwrite a byte
			b[i] = mutationBytes[rng.IntN(len(mutationBytes))]
		case 1: // insert a byte
			b = slices.Insert(b, i, mutationBytes[rng.IntN(len(mutationBytes))])
		case 2: // delete a span
			b = append(b[:i], b[j:]...)
		case 3: // repeat a span (duplicate keys, among others)
			b = append(b[:j], append(bytes.Clone(b[i:j]), b[j:]...)...)
		case 4: // change the case of a span
			copy(b[i:j], bytes.ToUpper(b[i:j]))
		case 5: // insert an escape
			esc := []string{`\u0000`, `\ud800`, `\udc00`, `\ud83d\ude00`, `\u0041`, `\\`, `\"`, `\n`, `\x`}
			b = append(b[:i], append([]byte(esc[rng.IntN(len(esc))]), b[i:]...)...)
		}
		if len(b) == 0 {
			break
		}
	}
	return b
}

// FuzzParsersAgree is the fuzzing form of the tests above:
//
//	go test -run '^$' -fuzz '^FuzzParsersAgree$' -fuzztime 60s ./stripeapi/
func FuzzParsersAgree(f *testing.F) {
	for _, b := range stripeBodies(f) {
		f.Add(b)
	}
	// Not the whole of trickyInputs (over 2,000, which
	// TestParsersAgreeOnTrickyInput checks anyway): gathering their
	// coverage took longer than the fuzz budget make fuzz gives, so
	// nothing was fuzzed. Each tricky object alone and in one envelope,
	// and each envelope once; the mutator combines the rest.
	objects := append(trickyObjects, "null", "[]", `"x"`)
	for _, o := range objects {
		f.Add([]byte(o))
		f.Add(fmt.Appendf(nil, trickyEnvelopes[0], o))
	}
	for i, e := range trickyEnvelopes[1:] {
		f.Add(fmt.Appendf(nil, e, objects[i%len(objects)]))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		checkAgree(t, b)
	})
}
