package integration_test

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/lockstep/lockstep/internal/stripefake"
)

// The signature table, through HTTP: lockstep is configured with two
// secrets (secretNew, then secretOld, as during a rotation). Every rejection
// answers 400 and writes nothing; every acceptance processes the event.
func TestSignatureTable(t *testing.T) {
	t.Parallel()
	b := setup(t, withMaxConns(4))
	const wrongSecret = "whsec_not_configured_anywhere_42"
	now := time.Now()
	hexOf := func(h string) string { return h[strings.Index(h, "v1=")+3:] }

	cases := []struct {
		name   string
		header func(body []byte) string
		mutate func(body []byte) []byte // the body sent, when not the one signed
		want   int
	}{
		{name: "no header", header: func([]byte) string { return "" }, want: 400},
		{name: "timestamp only", header: func([]byte) string { return fmt.Sprintf("t=%d", now.Unix()) }, want: 400},
		{name: "signature without timestamp", header: func(body []byte) string {
			return "v1=" + hexOf(stripefake.SignatureHeader(body, secretNew, now))
		}, want: 400},
		{name: "garbage header", header: func([]byte) string { return "not a signature header" }, want: 400},
		{name: "bad hex", header: func([]byte) string { return fmt.Sprintf("t=%d,v1=zz%s", now.Unix(), strings.Repeat("g", 62)) }, want: 400},
		{name: "truncated hex", header: func(body []byte) string { return stripefake.SignatureHeader(body, secretNew, now)[:40] }, want: 400},
		{name: "wrong secret", header: func(body []byte) string { return stripefake.SignatureHeader(body, wrongSecret, now) }, want: 400},
		{name: "v0 scheme only (Stripe's test scheme)", header: func(body []byte) string {
			return strings.Replace(stripefake.SignatureHeader(body, secretNew, now), "v1=", "v0=", 1)
		}, want: 400},
		{name: "timestamp changed after signing", header: func(body []byte) string {
			h := stripefake.SignatureHeader(body, secretNew, now)
			return strings.Replace(h, fmt.Sprintf("t=%d", now.Unix()), fmt.Sprintf("t=%d", now.Unix()-1), 1)
		}, want: 400},
		{name: "one byte of the body changed", header: func(body []byte) string { return stripefake.SignatureHeader(body, secretNew, now) },
			mutate: func(body []byte) []byte {
				out := bytes.Clone(body)
				i := bytes.Index(out, []byte(`"active"`)) + 1
				out[i] = 'A'
				return out
			}, want: 400},
		{name: "one byte appended to the body", header: func(body []byte) string { return stripefake.SignatureHeader(body, secretNew, now) },
			mutate: func(body []byte) []byte { return append(bytes.Clone(body), ' ') }, want: 400},
		{name: "timestamp 301 s old", header: func(body []byte) string {
			return stripefake.SignatureHeader(body, secretNew, now.Add(-301*time.Second))
		}, want: 400},
		{name: "timestamp 301 s old, signed by the second secret", header: func(body []byte) string {
			return stripefake.SignatureHeader(body, secretOld, now.Add(-301*time.Second))
		}, want: 400},
		{name: "timestamp 299 s old", header: func(body []byte) string {
			return stripefake.SignatureHeader(body, secretNew, time.Now().Add(-299*time.Second))
		}, want: 200},
		{name: "current", header: func(body []byte) string { return stripefake.SignatureHeader(body, secretNew, now) }, want: 200},
		{name: "rotation: two v1, old and new secrets", header: func(body []byte) string {
			return stripefake.SignatureHeaderMulti(body, now, secretOld, secretNew)
		}, want: 200},
		{name: "rotation: two v1, new and old secrets", header: func(body []byte) string {
			return stripefake.SignatureHeaderMulti(body, now, secretNew, secretOld)
		}, want: 200},
		{name: "signed only by the second configured secret", header: func(body []byte) string {
			return stripefake.SignatureHeader(body, secretOld, now)
		}, want: 200},
		{name: "two v1: an unknown secret, then the second configured one", header: func(body []byte) string {
			return stripefake.SignatureHeaderMulti(body, now, wrongSecret, secretOld)
		}, want: 200},
		{name: "two v1: a bad hex, then the primary", header: func(body []byte) string {
			return fmt.Sprintf("t=%d,v1=nothex,v1=%s", now.Unix(), hexOf(stripefake.SignatureHeader(body, secretNew, now)))
		}, want: 200},
		{name: "the header in another order, with a v0", header: func(body []byte) string {
			return fmt.Sprintf("v0=abc,v1=%s,t=%d", hexOf(stripefake.SignatureHeader(body, secretNew, now)), now.Unix())
		}, want: 200},
	}
	created := time.Now().Add(-time.Hour).Truncate(time.Second)
	for i, c := range cases {
		fx := newFixture(fmt.Sprintf("sig%d", i), created)
		body := subUpdate(fx, "active", created)
		sent := body
		if c.mutate != nil {
			sent = c.mutate(body)
		}
		before := b.rowsWritten()
		start := time.Now()
		r := b.postWebhookHeader(sent, c.header(body))
		d := time.Since(start)
		after := b.rowsWritten()
		switch {
		case r.code != c.want:
			t.Errorf("%s: %d %s, want %d", c.name, r.code, r.body, c.want)
		case c.want == http.StatusOK:
			if st := b.scalar(`SELECT status FROM stripe_events WHERE event_id = $1`, eventID(t, body)); st != "processed" {
				t.Errorf("%s: accepted but the event is %s", c.name, st)
			}
		case after != before:
			t.Errorf("%s: rejected but wrote %d rows", c.name, after-before)
		}
		t.Logf("%-62s %d %-60.60s %s", c.name, r.code, strings.TrimSpace(r.body), d.Round(100*time.Microsecond))
	}

	// Which secret matched is counted by position, so a rotated-out secret
	// can be retired once its counter stops moving.
	res, err := b.client.Get(b.srv.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(res.Body)
	_ = res.Body.Close()
	for _, line := range strings.Split(string(metrics), "\n") {
		if strings.HasPrefix(line, "lockstep_webhook_secret_matched_total") || strings.HasPrefix(line, "lockstep_webhook_rejected_total") {
			t.Logf("%s", line)
		}
	}
	if !strings.Contains(string(metrics), `lockstep_webhook_secret_matched_total{secret="2"}`) {
		t.Errorf("no webhook counted as matching the second secret")
	}
}
