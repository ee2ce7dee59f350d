package stripefake

import (
	"encoding/json"
	"io"
	"net/http"
	"testing"

	"github.com/stripe/stripe-go/v76"
)

// stripe-go's list iterators (customer.Iter, event.Iter, ...) all have these.
type stripeIter interface {
	Next() bool
	Current() interface{}
	Err() error
}

// drain runs it to the end and returns the ids it yields, in order.
func drain(t *testing.T, it stripeIter) []string {
	t.Helper()
	ids := []string{}
	for it.Next() {
		switch v := it.Current().(type) {
		case *stripe.Customer:
			ids = append(ids, v.ID)
		case *stripe.Subscription:
			ids = append(ids, v.ID)
		case *stripe.Invoice:
			ids = append(ids, v.ID)
		case *stripe.Event:
			ids = append(ids, v.ID)
		default:
			t.Fatalf("iterator yields %T", v)
		}
	}
	if err := it.Err(); err != nil {
		t.Fatalf("iterator: %v", err)
	}
	return ids
}

// listIDs GETs a list and returns the ids on the page and has_more.
func listIDs(t *testing.T, s *Server, path, apiVersion string) ([]string, bool) {
	t.Helper()
	m := getJSON(t, s, path, apiVersion)
	ids := []string{}
	for _, o := range m["data"].([]any) {
		ids = append(ids, o.(map[string]any)["id"].(string))
	}
	return ids, m["has_more"].(bool)
}

// getError GETs path with a valid key and decodes Stripe's error body.
func getError(t *testing.T, s *Server, path string) (int, stripe.Error) {
	t.Helper()
	res := get(t, s, path)
	defer func() { _ = res.Body.Close() }()
	body, _ := io.ReadAll(res.Body)
	var e struct {
		Error stripe.Error `json:"error"`
	}
	if err := json.Unmarshal(body, &e); err != nil || e.Error.Msg == "" {
		t.Fatalf("GET %s: %d %s: not an error body", path, res.StatusCode, body)
	}
	return res.StatusCode, e.Error
}

// get GETs path with a valid key; the caller closes the body.
func get(t *testing.T, s *Server, path string) *http.Response {
	t.Helper()
	req, err := http.NewRequest("GET", s.URL+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer sk_test_x")
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	return res
}
