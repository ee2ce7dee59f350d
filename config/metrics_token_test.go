package config_test

import (
	"strings"
	"testing"

	"github.com/lockstep/lockstep/config"
)

// METRICS_TOKEN is optional, read trimmed, and printed masked.
func TestLoadMetricsToken(t *testing.T) {
	t.Parallel()
	env := good()
	env["LOCK_TIMEOUT"] = "1500ms"
	c, err := config.Load(getenv(env), config.NeedDatabase|config.NeedServer)
	if err != nil || c.MetricsToken != "" {
		t.Fatalf("unset: %v, token %q; want no error, no token", err, c.MetricsToken)
	}
	// Unset, it prints as nothing; masked for the log as serve logs it, the
	// setting after it must not be taken for its value.
	if s := config.MaskSecrets(c.String()); !strings.Contains(s, " lock_timeout=1.5s ") {
		t.Fatalf("unset token, masked for the log: %s", s)
	}
	env["METRICS_TOKEN"] = "  metrics-token-0123456789 \n"
	if c, err = config.Load(getenv(env), config.NeedDatabase|config.NeedServer); err != nil || c.MetricsToken != "metrics-token-0123456789" {
		t.Fatalf("set: %v, token %q", err, c.MetricsToken)
	}
	if s := c.String(); strings.Contains(s, "metrics-token") || !strings.Contains(s, "metrics_token=****") {
		t.Fatalf("String() = %s: want metrics_token=**** and no token", s)
	}
}

// The configuration's database URL is printed without its password, in
// each shape config accepts.
func TestStringMasksDatabasePassword(t *testing.T) {
	t.Parallel()
	for _, u := range []string{
		"postgres://u:Hunter2Secret@db/x",
		"postgres://u@db/x?sslmode=disable&password=Hunter2Secret",
		"postgresql://db/x?sslpassword=Hunter2Secret&password=Hunter2Secret",
	} {
		env := good()
		env["DATABASE_URL"] = u
		c, err := config.Load(getenv(env), config.NeedDatabase|config.NeedServer)
		if err != nil {
			t.Fatalf("%s: %v", u, err)
		}
		if s := c.String(); strings.Contains(s, "Hunter2Secret") {
			t.Errorf("String() shows the password: %s", s)
		}
	}
}
