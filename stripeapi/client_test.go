package stripeapi

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// TestGetErrorsNeverQuoteTheAnswer: an answer that is not Stripe's error
// shape reaches stripe-go's error as a sample of the body; the client's
// error must not carry it.
func TestGetErrorsNeverQuoteTheAnswer(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusBadRequest)
		fmt.Fprint(w, `{"message":"Invalid API Key provided: sk_test_SECRET"}`)
	}))
	t.Cleanup(srv.Close)
	_, _, err := NewClient(srv.URL, "sk_test_x", Options{}).Customer(context.Background(), "cus_1")
	if !errors.Is(err, ErrUnavailable) || strings.Contains(err.Error(), "SECRET") || strings.Contains(err.Error(), "Invalid") {
		t.Fatalf("err %v: want ErrUnavailable without the body's text", err)
	}
}

func TestGetWithoutDateIsAnError(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header()["Date"] = nil // net/http would add one
		fmt.Fprint(w, `{"id":"cus_1","object":"customer"}`)
	}))
	t.Cleanup(srv.Close)
	if _, _, err := NewClient(srv.URL, "sk_test_x", Options{}).Customer(context.Background(), "cus_1"); !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "Date") {
		t.Fatalf("err %v: want ErrUnavailable about the Date header", err)
	}
}
