package config_test

import (
	"strings"
	"testing"

	"github.com/lockstep/lockstep/config"
)

// A bad STRIPE_WEBHOOK_SECRET gets one line saying what is wrong with it
// and what to do, and never repeats the secret.
func TestWebhookSecretMessages(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, secrets string
		want          []string // words the line must hold
	}{
		{"too short", "whsec_abc123", []string{"secret #1 is too short", "6 characters after whsec_", "at least 8"}},
		{"second too short", "whsec_good0123456789,whsec_abc", []string{"secret #2 is too short"}},
		{"semicolon", "whsec_first0123456789;whsec_second0123456789", []string{"secret #1 holds more than one secret", "separate secrets with commas"}},
		{"space", "whsec_first0123456789 whsec_second0123456789", []string{"separate secrets with commas"}},
		{"glued", "whsec_first0123456789whsec_second0123456789", []string{"separate secrets with commas"}},
		{"no prefix", "sk_test_0123456789abcdef", []string{"secret #1 does not start with whsec_"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			env := good()
			env["STRIPE_WEBHOOK_SECRET"] = tc.secrets
			_, err := config.Load(getenv(env), config.NeedServer)
			if err == nil {
				t.Fatalf("Load accepted STRIPE_WEBHOOK_SECRET=%q", tc.secrets)
			}
			msg := err.Error()
			if strings.Contains(msg, "\n") {
				t.Fatalf("more than one line:\n%s", msg)
			}
			if !strings.HasPrefix(msg, "config: STRIPE_WEBHOOK_SECRET ") {
				t.Errorf("the line does not name STRIPE_WEBHOOK_SECRET: %q", msg)
			}
			for _, w := range tc.want {
				if !strings.Contains(msg, w) {
					t.Errorf("%q lacks %q", msg, w)
				}
			}
			for _, s := range strings.FieldsFunc(tc.secrets, func(r rune) bool { return r == ',' || r == ';' || r == ' ' }) {
				if body := strings.TrimPrefix(s, "whsec_"); len(body) > 3 && strings.Contains(msg, body) {
					t.Errorf("the line repeats a secret: %q", msg)
				}
			}
		})
	}
	// Stripe's own shape, and several comma-separated, pass.
	env := good()
	env["STRIPE_WEBHOOK_SECRET"] = "whsec_0123456789abcdefABCDEF0123456789, whsec_rotatedSECRET0123456789"
	if c, err := config.Load(getenv(env), config.NeedServer); err != nil || len(c.WebhookSecrets) != 2 {
		t.Fatalf("two good secrets: %v", err)
	}
}
