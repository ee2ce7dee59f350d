package redact

import (
	"strings"
	"testing"
)

func TestString(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ name, in, want string }{
		{"nothing secret", "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable",
			"postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"},
		{"plain text", "stripe api unavailable, try again", "stripe api unavailable, try again"},
		{"userinfo", "postgres://u:s3cret@db:5432/x?sslmode=require", "postgres://u:xxxxx@db:5432/x?sslmode=require"},
		{"userinfo postgresql scheme", "postgresql://u:s3cret@db/x", "postgresql://u:xxxxx@db/x"},
		{"userinfo with unescaped @", "postgres://u:p@ss@db/x", "postgres://u:xxxxx@db/x"},
		{"userinfo escaped", "postgres://u:p%40ss%2Fw@db/x", "postgres://u:xxxxx@db/x"},
		{"userinfo no host", "postgres://u:s3cret@/x?host=/tmp", "postgres://u:xxxxx@/x?host=/tmp"},
		{"query password", "postgres://u@db/x?password=s3cret&sslmode=disable", "postgres://u@db/x?password=xxxxx&sslmode=disable"},
		{"query password last", "postgres://u@db/x?sslmode=disable&password=s3cret", "postgres://u@db/x?sslmode=disable&password=xxxxx"},
		{"query password and fragment", "postgres://db/x?password=s3cret#frag", "postgres://db/x?password=xxxxx#frag"},
		{"query sslpassword", "postgres://db/x?sslpassword=s3cret&sslkey=/k/client.key", "postgres://db/x?sslpassword=xxxxx&sslkey=xxxxx"},
		{"query upper case", "postgres://db/x?PASSWORD=s3cret", "postgres://db/x?PASSWORD=xxxxx"},
		{"both shapes", "postgres://u:one@db/x?password=two", "postgres://u:xxxxx@db/x?password=xxxxx"},
		{"keyword/value", "host=db user=u password=s3cret dbname=x", "host=db user=u password=xxxxx dbname=x"},
		{"keyword/value first", "password=s3cret host=db", "password=xxxxx host=db"},
		{"keyword/value spaced", "host=db password = s3cret dbname=x", "host=db password = xxxxx dbname=x"},
		{"keyword/value quoted", `host=db password='s3 cr\'et' dbname=x`, `host=db password='xxxxx' dbname=x`},
		{"keyword/value double quoted", `host=db password="s3 cret" dbname=x`, `host=db password="xxxxx" dbname=x`},
		{"keyword/value empty", "host=db password=", "host=db password="},
		{"keyword/value space after =", "host=db password= s3cret", "host=db password= xxxxx"}, // libpq skips the space
		{"in an error message", "connect `postgres://u:s3cret@db/x?password=s3cret`: refused",
			"connect `postgres://u:xxxxx@db/x?password=xxxxx`: refused"},
		{"quoted in an error", `parse "host=db password=s3cret": bad`, `parse "host=db password=xxxxx": bad`},
		{"env style token", "METRICS_TOKEN=tok3n-value x", "METRICS_TOKEN=xxxxx x"},
		{"config line, already masked", "webhook_secrets=[whsec_****,whsec_****] stripe_key=sk_test_**** app_token=**** metrics_token=",
			"webhook_secrets=[whsec_****,whsec_****] stripe_key=sk_test_**** app_token=**** metrics_token="},
		{"already masked", "postgres://u:xxxxx@db/x?password=xxxxx", "postgres://u:xxxxx@db/x?password=xxxxx"},
		{"a word with password, no value", "password authentication failed for user u", "password authentication failed for user u"},
		{"stripe key", "key sk_test_abcdef012 rejected", "key sk_test_**** rejected"},
		{"webhook secret", "secret whsec_abcdef0123456789", "secret whsec_****"},
		{"restricted key", "rk_live_abcdef", "rk_live_****"},
		{"stripe kind alone", "must start with sk_ or rk_", "must start with sk_ or rk_"},
		{"stripe already masked", "sk_live_****", "sk_live_****"},
	} {
		if got := String(tc.in); got != tc.want {
			t.Errorf("%s: String(%q) = %q, want %q", tc.name, tc.in, got, tc.want)
		}
	}
}

// TestStringHidesEveryPassword checks the one property that matters over
// many shapes: the password is gone, whatever else the text holds.
func TestStringHidesEveryPassword(t *testing.T) {
	t.Parallel()
	const pw = "Pa55wordZ"
	for _, in := range []string{
		"postgres://u:" + pw + "@h/db",
		"postgres://u:" + pw + "@h:5432,h2:5433/db?target_session_attrs=read-write",
		"postgres://h/db?sslmode=disable&password=" + pw,
		"postgres://h/db?password=" + pw + "&sslmode=disable",
		"postgres://h/db?sslpassword=" + pw,
		"host=h password=" + pw,
		"host=h password='" + pw + " with space'",
		"host=h\tpassword=" + pw + "\tdbname=x",
		"DATABASE_URL=postgres://u:" + pw + "@h/db",
		`failed to connect to "host=h user=u password=` + pw + `": dial`,
		"open migrations: parse \"pgx5://u:" + pw + "@h/db?password=" + pw + "\": bad",
	} {
		if got := String(in); strings.Contains(got, pw) || strings.Contains(got, "with space") {
			t.Errorf("String(%q) = %q: the password shows", in, got)
		}
	}
}

func TestSecret(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		"":                       "",
		"whsec_abcdef0123456789": "whsec_****",
		"sk_test_abcdef":         "sk_test_****",
		"rk_live_abcdef":         "rk_live_****",
		"something-else":         "****",
	} {
		if got := Secret(in); got != want {
			t.Errorf("Secret(%q) = %q, want %q", in, got, want)
		}
	}
}

func BenchmarkStringPlain(b *testing.B) {
	for b.Loop() {
		String("checkout success failed: stripe api unavailable, try again")
	}
}
