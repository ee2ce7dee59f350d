package config

import (
	"net/url"
	"regexp"
	"strings"
)

// secretPrefixes are the kinds of Stripe secret lockstep is configured with
// (STRIPE_WEBHOOK_SECRET, STRIPE_SECRET_KEY), a longer kind before a shorter
// one it starts with. Masking keeps the kind, so a reader knows what was
// there, and hides the rest.
var secretPrefixes = []string{"whsec_", "sk_live_", "sk_test_", "rk_live_", "rk_test_", "sk_", "rk_"}

// secretPattern finds a word that starts with a kind of secret.
var secretPattern = regexp.MustCompile(`\b(?:` + strings.Join(secretPrefixes, "|") + `)[A-Za-z0-9_]*`)

// secretKind returns the longest kind s starts with, or "".
func secretKind(s string) string {
	for _, p := range secretPrefixes {
		if strings.HasPrefix(s, p) {
			return p
		}
	}
	return ""
}

// Redact masks a secret, keeping only its kind: whsec_****, sk_test_****,
// or **** for a value of no known kind.
func Redact(s string) string {
	if s == "" {
		return ""
	}
	return secretKind(s) + "****"
}

// MaskSecrets replaces the body of every Stripe secret in s (an error
// message that quoted one, say) with ****, keeping its kind. A kind with
// nothing after it ("sk_", or an already masked "sk_live_****") is left as
// it is.
func MaskSecrets(s string) string {
	if !strings.Contains(s, "whsec_") && !strings.Contains(s, "sk_") && !strings.Contains(s, "rk_") {
		return s // every kind holds one of these: the common case costs no regexp
	}
	return secretPattern.ReplaceAllStringFunc(s, func(m string) string {
		kind := secretKind(m)
		if len(m) == len(kind) {
			return m
		}
		return kind + "****"
	})
}

// RedactURL hides the password of a database URL.
func RedactURL(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		return "(unparseable URL)"
	}
	return u.Redacted()
}
