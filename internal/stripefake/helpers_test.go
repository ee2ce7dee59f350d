package stripefake

import (
	"encoding/json"
	"io"
	"net/http"
	"testing"

	"github.com/stripe/stripe-go/v76"
)

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
