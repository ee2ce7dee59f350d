package config

import "github.com/lockstep/lockstep/redact"

// Redact masks a secret, keeping only its kind: whsec_****, sk_test_****,
// or **** for a value of no known kind. See redact.Secret.
func Redact(s string) string { return redact.Secret(s) }

// MaskSecrets masks every secret in s (an error message that quoted one,
// say): Stripe secrets and connection-string passwords. See redact.String.
func MaskSecrets(s string) string { return redact.String(s) }

// RedactURL hides the password of a database connection string in any
// shape (user:pass@, ?password=, keyword/value). See redact.String.
func RedactURL(s string) string { return redact.String(s) }
