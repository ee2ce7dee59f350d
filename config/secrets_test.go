package config

import "testing"

func TestRedact(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		"":                       "",
		"whsec_abcdef0123456789": "whsec_****",
		"sk_test_abcdef":         "sk_test_****",
		"rk_live_abcdef":         "rk_live_****",
		"something-else":         "****",
	} {
		if got := Redact(in); got != want {
			t.Errorf("Redact(%q) = %q, want %q", in, got, want)
		}
	}
}
