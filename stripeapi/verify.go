package stripeapi

import (
	"errors"
	"fmt"
	"time"

	"github.com/stripe/stripe-go/v76/webhook"
)

// Signature errors. None of them says which secret was tried.
var (
	ErrNotSigned    = errors.New("missing Stripe-Signature header")
	ErrBadSignature = errors.New("no valid signature for any configured secret")
	ErrBadHeader    = errors.New("malformed Stripe-Signature header")
	ErrTooOld       = errors.New("signature timestamp outside the tolerance")
)

// tolerance is how old a signed timestamp may be (Stripe's default).
const tolerance = 300 * time.Second

// Verifier checks Stripe-Signature headers against one or more endpoint
// secrets, so a secret can be rotated without dropping events.
type Verifier struct {
	secrets []string
}

// NewVerifier returns a verifier for the given whsec_ secrets, tried in order.
func NewVerifier(secrets []string) *Verifier {
	return &Verifier{secrets: append([]string(nil), secrets...)}
}

// Verify checks payload against header and returns the index of the secret
// whose signature matched.
func (v *Verifier) Verify(payload []byte, header string) (int, error) {
	if header == "" {
		return -1, ErrNotSigned
	}
	for i, secret := range v.secrets {
		err := webhook.ValidatePayloadWithTolerance(payload, header, secret, tolerance)
		switch {
		case err == nil:
			return i, nil
		case errors.Is(err, webhook.ErrNoValidSignature):
			continue
		case errors.Is(err, webhook.ErrTooOld):
			return -1, ErrTooOld
		case errors.Is(err, webhook.ErrNotSigned):
			return -1, ErrNotSigned
		default:
			return -1, fmt.Errorf("%w: %v", ErrBadHeader, err)
		}
	}
	return -1, ErrBadSignature
}
