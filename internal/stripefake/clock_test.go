package stripefake

import (
	"net/http"
	"testing"
	"time"
)

// Every answer's Date header is Stripe's clock, ahead of or behind the real
// one by the offset; 401s and injected failures too.
func TestDateHeaderFollowsOffset(t *testing.T) {
	t.Parallel()
	s := New(t)
	seed(s)
	for _, offset := range []time.Duration{0, 90 * time.Minute, -90 * time.Minute, 26 * time.Hour} {
		s.SetClockOffset(offset)
		for _, tc := range []struct {
			name string
			do   func() *http.Response
		}{
			{"200", func() *http.Response { return get(t, s, "/v1/customers/cus_A") }},
			{"list", func() *http.Response { return get(t, s, "/v1/customers") }},
			{"401", func() *http.Response {
				res, err := http.Get(s.URL + "/v1/customers/cus_A")
				if err != nil {
					t.Fatal(err)
				}
				return res
			}},
			{"503", func() *http.Response { s.FailNext(1, 503); return get(t, s, "/v1/customers/cus_A") }},
		} {
			before := time.Now().Add(offset).Truncate(time.Second)
			res := tc.do()
			after := time.Now().Add(offset)
			_ = res.Body.Close()
			date, err := http.ParseTime(res.Header.Get("Date"))
			if err != nil {
				t.Fatalf("offset %v %s: Date %q: %v", offset, tc.name, res.Header.Get("Date"), err)
			}
			if date.Before(before) || date.After(after) {
				t.Errorf("offset %v %s: Date %v, want within [%v, %v]", offset, tc.name, date, before, after)
			}
		}
	}
}

// Now is the real time plus the offset; Put objects default to it, in whole
// seconds.
func TestClockDefaults(t *testing.T) {
	t.Parallel()
	s := New(t)
	const offset = -3 * time.Hour
	s.SetClockOffset(offset)
	if d := s.Now().Sub(time.Now().Add(offset)); d < -time.Second || d > time.Second {
		t.Errorf("Now is %v from real time plus offset", d)
	}
	before := s.Now().Truncate(time.Second).Unix()
	s.PutCustomer(Customer{ID: "cus_clock"})
	s.PutSubscription(Subscription{ID: "sub_clock", Customer: "cus_clock"})
	s.PutInvoice(Invoice{ID: "in_clock", Customer: "cus_clock"})
	s.PutSession(Session{ID: "cs_clock"})
	after := s.Now().Unix()
	for _, path := range []string{"/v1/customers/cus_clock", "/v1/subscriptions/sub_clock", "/v1/invoices/in_clock", "/v1/checkout/sessions/cs_clock"} {
		created := int64(getJSON(t, s, path, "")["created"].(float64))
		if created < before || created > after {
			t.Errorf("%s: created %d, want within [%d, %d] (Stripe's clock)", path, created, before, after)
		}
	}
}
