package config

import (
	"fmt"
	"reflect"
	"testing"
)

// sample is a valid value for every setting of the table.
var sample = map[string]string{
	"LOCKSTEP_ENV":          "production",
	"DATABASE_URL":          "postgres://lockstep:pw-0123@db:5432/lockstep",
	"MIGRATE_DATABASE_URL":  "postgres://lockstep:pw-0123@db-direct:5432/lockstep",
	"LISTEN_ADDR":           "0.0.0.0:9090",
	"STRIPE_WEBHOOK_SECRET": "whsec_primary0123456789, whsec_rotated0123456789",
	"APP_API_TOKEN":         "app-token-0123456789",
	"ADMIN_TOKEN":           "admin-token-0123456789",
	"METRICS_TOKEN":         "metrics-token-0123456789",
	"STRIPE_API_BASE":       "http://127.0.0.1:12111",
	"STRIPE_SECRET_KEY":     "sk_test_0123456789",
	"LOCK_TIMEOUT":          "250ms",
	"RETRY_BUDGET":          "2s",
	"SHUTDOWN_TIMEOUT":      "20s",
	"STRIPE_SWEEP_INTERVAL": "10m",
	"STRIPE_SWEEP_LOOKBACK": "7d",
	"LEDGER_RETENTION":      "90d",
	"ACCESS_PAST_DUE_GRACE": "3d",
	"STRIPE_API_RPS":        "50",
	"DB_MAX_CONNS":          "8",
}

const everything = NeedDatabase | NeedStripe | NeedServer

// One trimming rule for every setting: a value with whitespace around it
// reads as the value without, and a value of only whitespace is unset.
// A setting added to the table without a sample fails here.
func TestEverySettingTrimmedAlike(t *testing.T) {
	t.Parallel()
	plain, err := Load(func(k string) string { return sample[k] }, everything)
	if err != nil {
		t.Fatalf("the samples: %v", err)
	}
	for _, s := range (&Config{}).settings() {
		v, ok := sample[s.name]
		if !ok {
			t.Errorf("%s has no sample value in this test", s.name)
			continue
		}
		padded, err := Load(func(k string) string {
			if k == s.name {
				return " \t" + v + " \n"
			}
			return sample[k]
		}, everything)
		if err != nil {
			t.Errorf("%s=%q with whitespace around it: %v", s.name, v, err)
			continue
		}
		if !reflect.DeepEqual(padded, plain) {
			t.Errorf("%s with whitespace around it reads differently:\n got %+v\nwant %+v", s.name, padded, plain)
		}

		// Only whitespace is the same as unset.
		without := func(blank string) func(string) string {
			return func(k string) string {
				if k == s.name {
					return blank
				}
				return sample[k]
			}
		}
		unset, errUnset := Load(without(""), everything)
		blank, errBlank := Load(without(" \t\n"), everything)
		if !reflect.DeepEqual(unset, blank) || !sameError(errUnset, errBlank) {
			t.Errorf("%s of only whitespace is not the same as unset: %v, %v / %v, %v", s.name, blank, errBlank, unset, errUnset)
		}
	}
}

func sameError(a, b error) bool {
	if a == nil || b == nil {
		return a == b
	}
	return a.Error() == b.Error()
}

// A check's reason never quotes a secret setting's value, even if the
// check quotes what it was given; other settings' reasons may.
func TestBadSecretNotQuoted(t *testing.T) {
	t.Parallel()
	quoting := func(v string, bad func(string)) { bad(fmt.Sprintf("is bad, got %q", v)) }
	env := map[string]string{"A_TOKEN": " sk_test_Hunter2Secret ", "A_LEVEL": "loud"}
	var c Config
	err := c.load([]setting{
		{name: "A_TOKEN", secret: true, parse: quoting},
		{name: "A_LEVEL", parse: quoting},
	}, func(k string) string { return env[k] }, 0)
	want := "config: A_TOKEN is bad, got \"sk_test_****\"\nconfig: A_LEVEL is bad, got \"loud\""
	if err == nil || err.Error() != want {
		t.Fatalf("got %v\nwant %s", err, want)
	}
}
