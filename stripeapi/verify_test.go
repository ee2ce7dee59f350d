package stripeapi

import (
	"errors"
	"testing"
	"time"

	"github.com/stripe/stripe-go/v76/webhook"
)

func TestVerifyPicksTheMatchingSecret(t *testing.T) {
	payload := []byte(`{"id":"evt_1"}`)
	v := NewVerifier([]string{"whsec_new_secret_1", "whsec_old_secret_2"})
	sign := func(secret string, ts time.Time) string {
		return webhook.GenerateTestSignedPayload(&webhook.UnsignedPayload{Payload: payload, Secret: secret, Timestamp: ts}).Header
	}
	now := time.Now()
	for _, tc := range []struct {
		name   string
		header string
		want   int
		err    error
	}{
		{"first secret", sign("whsec_new_secret_1", now), 0, nil},
		{"second secret", sign("whsec_old_secret_2", now), 1, nil},
		{"299 s old", sign("whsec_new_secret_1", now.Add(-299*time.Second)), 0, nil},
		{"301 s old", sign("whsec_new_secret_1", now.Add(-301*time.Second)), -1, ErrTooOld},
		{"unknown secret", sign("whsec_other", now), -1, ErrBadSignature},
		{"empty", "", -1, ErrNotSigned},
		{"no v1 (stripe-go: no valid signature)", "t=123", -1, ErrBadSignature},
		{"bad timestamp", "t=abc,v1=00", -1, ErrBadHeader},
	} {
		got, err := v.Verify(payload, tc.header)
		if got != tc.want || !errors.Is(err, tc.err) && !(err == nil && tc.err == nil) {
			t.Errorf("%s: Verify = %d, %v; want %d, %v", tc.name, got, err, tc.want, tc.err)
		}
	}
}
