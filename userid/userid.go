// Package userid says which of the web app's user ids lockstep accepts:
// what the app sends to the checkout-success and billing calls, and what
// Stripe objects name in client_reference_id and metadata.user_id.
package userid

// MaxLength bounds a user id, as the schema does.
const MaxLength = 255

// Valid reports whether s is acceptable as a user id: 1 to 255 bytes of
// valid UTF-8 with no control characters.
func Valid(s string) bool {
	if s == "" || len(s) > MaxLength {
		return false
	}
	for _, r := range s {
		if r < 0x20 || r == 0x7f || r == '\uFFFD' {
			return false
		}
	}
	return true
}
