// Package redact masks secrets in text lockstep prints: Stripe keys and
// webhook secrets, and the password of a database connection string in
// every shape libpq and pgx take it (a URL's user:pass@, a URL's
// ?password=, a keyword/value string's password=..., quoted or not).
//
// It imports only the standard library, so that both config (which prints
// the configuration) and logging (which masks every string it writes) use
// the same rules without logging linking the rest of lockstep.
package redact

import (
	"regexp"
	"strings"
)

// Mask is what replaces a password in a connection string; url.Redacted and
// pgconn mask with the same.
const Mask = "xxxxx"

// stripePrefixes are the kinds of Stripe secret lockstep is configured with
// (STRIPE_WEBHOOK_SECRET, STRIPE_SECRET_KEY), a longer kind before a shorter
// one it starts with. Masking keeps the kind, so a reader knows what was
// there, and hides the rest.
var stripePrefixes = []string{"whsec_", "sk_live_", "sk_test_", "rk_live_", "rk_test_", "sk_", "rk_"}

var (
	// stripePattern finds a word that starts with a kind of Stripe secret.
	stripePattern = regexp.MustCompile(`\b(?:` + strings.Join(stripePrefixes, "|") + `)[A-Za-z0-9_]*`)

	// userinfoPattern finds a URL's user:password@. The password runs to
	// the authority's last @ (an unescaped @ in it is common).
	userinfoPattern = regexp.MustCompile(`([A-Za-z][A-Za-z0-9+.\-]*://[^:/?#@\s]*):[^/?#\s]*@`)

	// paramPattern finds a secret-ish parameter, in a URL's query
	// (?password=x&...) or a keyword/value string (password=x, password =
	// 'a b\'c'): its value is a quoted string with backslash escapes, or
	// runs to the next space, &, # or quote.
	paramPattern = regexp.MustCompile(`(?i)(^|[\s?&;,(\[{"'` + "`" + `])` +
		`([a-z0-9_.\-]*(?:password|passwd|secret|token|pwd|sslkey)[a-z0-9_.\-]*)` +
		`(\s*=\s*)` +
		`('(?:[^'\\]|\\.)*'?|"(?:[^"\\]|\\.)*"?|[^\s&#'"` + "`" + `]*)`)
)

// String masks every secret in s: Stripe secrets keep their kind
// (sk_test_****), a connection string's password becomes xxxxx whatever
// its shape, and so does the value of a parameter named like a secret
// (password, sslpassword, *_token, *secret*). It is meant for anything
// printed: the configuration, an error message quoting a URL, a log line.
// Text with none of the markers costs a few substring searches.
func String(s string) string {
	if hasAny(s, "whsec_", "sk_", "rk_") {
		s = stripePattern.ReplaceAllStringFunc(s, func(m string) string {
			kind := kindOf(m)
			if len(m) == len(kind) {
				return m // a kind with nothing after it, or already masked
			}
			return kind + "****"
		})
	}
	if strings.Contains(s, "://") && strings.Contains(s, "@") {
		s = userinfoPattern.ReplaceAllString(s, "${1}:"+Mask+"@")
	}
	if strings.Contains(s, "=") && hasAnyFold(s, "password", "passwd", "secret", "token", "pwd", "sslkey") {
		s = paramPattern.ReplaceAllStringFunc(s, maskParam)
	}
	return s
}

// maskParam masks the value of one paramPattern match, keeping the
// separator before it, its name, and the quotes around it.
func maskParam(m string) string {
	sub := paramPattern.FindStringSubmatch(m)
	lead, name, eq, val := sub[1], sub[2], sub[3], sub[4]
	switch {
	case val == "" || val == Mask || strings.Contains(val, "****"):
		return m // nothing, or already masked (webhook_secrets=[whsec_****,...])
	case val[0] == '\'' || val[0] == '"':
		return lead + name + eq + val[:1] + Mask + val[:1]
	}
	return lead + name + eq + Mask
}

// Secret masks a whole secret value (a Stripe key, a token), keeping only
// its kind: whsec_****, sk_test_****, or **** for a value of no known kind.
func Secret(s string) string {
	if s == "" {
		return ""
	}
	return kindOf(s) + "****"
}

// kindOf returns the longest Stripe secret kind s starts with, or "".
func kindOf(s string) string {
	for _, p := range stripePrefixes {
		if strings.HasPrefix(s, p) {
			return p
		}
	}
	return ""
}

func hasAny(s string, subs ...string) bool {
	for _, sub := range subs {
		if strings.Contains(s, sub) {
			return true
		}
	}
	return false
}

// hasAnyFold is hasAny ignoring ASCII case, without allocating for the
// common short log value.
func hasAnyFold(s string, subs ...string) bool {
	for _, sub := range subs {
		for i := 0; i+len(sub) <= len(s); i++ {
			if strings.EqualFold(s[i:i+len(sub)], sub) {
				return true
			}
		}
	}
	return false
}
