package stripefake

import (
	"net/http"
	"testing"
)

// Start and StartOn serve outside tests (the load command) until Close.
func TestStartAndStartOn(t *testing.T) {
	s := Start()
	s.PutCustomer(Customer{ID: "cus_start"})
	res, err := http.Get(s.URL + "/v1/customers/cus_start")
	if err != nil {
		t.Fatal(err)
	}
	_ = res.Body.Close()
	if res.StatusCode != http.StatusUnauthorized { // no key: the fake answers like Stripe
		t.Errorf("status %d, want 401", res.StatusCode)
	}
	s.Close()
	s.Close() // twice is harmless
	if _, err := http.Get(s.URL + "/v1/customers/cus_start"); err == nil {
		t.Error("a closed server still answers")
	}

	on, err := StartOn("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer on.Close()
	if on.URL == "" || on.URL == s.URL {
		t.Errorf("StartOn URL %q", on.URL)
	}
	if _, err := StartOn("not-an-address"); err == nil {
		t.Error("StartOn accepted a bad address")
	}
}
