package integration_test

import (
	"bytes"
	"io"
	"net/http"
	"strings"
	"testing"
)

// A success-call body over 64 KiB answers 413 with a reason, whether it
// declares its length or comes chunked, and whether its JSON ends before
// the limit or not; it reaches neither Stripe nor the database. One at the
// limit is read.
func TestCheckoutSuccessBodyLimit(t *testing.T) {
	t.Parallel()
	b := setup(t)
	const limit = 64 << 10
	obj := `{"session_id":"cs_test_limit","user_id":"u_limit"}`
	pad := func(n int) []byte { return []byte(obj + strings.Repeat(" ", n-len(obj))) }
	huge := []byte(`{"session_id":"cs_test_limit","user_id":"` + strings.Repeat("u", 1<<20) + `"}`)
	for _, tc := range []struct {
		name    string
		body    []byte
		chunked bool
		want    int
	}{
		{"object then spaces past the limit", pad(limit + 1), false, http.StatusRequestEntityTooLarge},
		{"object then spaces past the limit, chunked", pad(limit + 1), true, http.StatusRequestEntityTooLarge},
		{"1 MiB user id", huge, false, http.StatusRequestEntityTooLarge},
		{"1 MiB user id, chunked", huge, true, http.StatusRequestEntityTooLarge},
		{"exactly at the limit (read: no such session)", pad(limit), false, http.StatusNotFound},
	} {
		before := b.stripe.Requests()
		var body io.Reader = bytes.NewReader(tc.body)
		if tc.chunked {
			body = io.MultiReader(body) // hides the length: sent chunked
		}
		req, _ := http.NewRequest(http.MethodPost, b.srv.URL+"/api/checkout/success", body)
		req.Header.Set("Authorization", "Bearer "+appToken)
		req.Header.Set("Content-Type", "application/json")
		r := b.do(req)
		if r.code != tc.want || !strings.Contains(r.body, `"error"`) {
			t.Errorf("%s: %d %.200s, want %d with a reason", tc.name, r.code, r.body, tc.want)
		}
		if tc.want == http.StatusRequestEntityTooLarge {
			if n := b.stripe.Requests() - before; n != 0 {
				t.Errorf("%s: an oversized body reached Stripe (%d requests)", tc.name, n)
			}
		}
	}
	if n := b.count(`SELECT count(*) FROM stripe_customers`); n != 0 {
		t.Errorf("oversized bodies wrote %d customers", n)
	}
}
