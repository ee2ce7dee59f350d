package integration_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/lockstep/lockstep/app"
	"github.com/lockstep/lockstep/internal/stripefake"
	"github.com/lockstep/lockstep/logging"
)

// secretsIn lists what of secrets appears in logs, and any Stripe secret
// prefix at all (a masked secret still means one reached a log call).
func secretsIn(logs string, secrets []string) []string {
	var found []string
	for _, s := range secrets {
		if s != "" && strings.Contains(logs, s) {
			found = append(found, s)
		}
	}
	for _, m := range regexp.MustCompile(`\b(whsec_|sk_|rk_)\S{0,12}|v1=\S{0,12}`).FindAllString(logs, -1) {
		found = append(found, m)
	}
	return found
}

// Logs never carry a secret, a signature, a token or an email, whatever
// the traffic: signed and badly signed webhooks, payloads full of emails,
// wrong and right tokens, failures (a stuck customer, Stripe refusing the
// API key, an event the database cannot store), admin calls and replays.
func TestLogsNoSecretsMixedWorkload(t *testing.T) {
	t.Parallel()
	b := setup(t, withMaxConns(6), withLockTimeout(200*time.Millisecond), withRetryBudget(600*time.Millisecond))
	const (
		wrongSecret = "whsec_attacker_guess_0123456789"
		wrongToken  = "wrong-token-guess-0123456789"
		emailCus    = "alice.customer@example.com"
		emailMeta   = "bob.metadata@example.org"
		emailUser   = "carol.user@example.net"
		emailPath   = "dave.path@example.com"
	)
	var sigMu sync.Mutex
	var signatures []string // every v1 value sent
	sign := func(body []byte, secret string) string {
		h := stripefake.SignatureHeader(body, secret, time.Now())
		sigMu.Lock()
		signatures = append(signatures, h[strings.Index(h, "v1=")+3:], h)
		sigMu.Unlock()
		return h
	}
	created := time.Now().Add(-time.Hour).Truncate(time.Second)

	// Webhooks carrying emails, signed right and wrong.
	cus := stripefake.Customer{ID: stripefake.NewID("cus_"), Email: emailCus,
		Metadata: map[string]string{"user_id": emailUser, "email": emailMeta, "contact": emailCus}, Created: created}
	for _, typ := range []string{"customer.created", "customer.updated"} {
		ev := event(stripefake.NewID("evt_"), typ, created, stripefake.CustomerJSON(cus))
		must200(t, typ, b.postWebhookHeader(ev, sign(ev, secretNew)))
		if r := b.postWebhookHeader(ev, sign(ev, wrongSecret)); r.code != http.StatusBadRequest {
			t.Errorf("wrong secret: %d", r.code)
		}
		if r := b.postWebhookHeader(ev, sign(ev, secretOld)); r.code != http.StatusOK {
			t.Errorf("second secret: %d", r.code)
		}
	}
	// A checkout whose user id is an email: the webhook and the success call.
	fx := b.paidCheckout(emailUser+".2", created)
	sess := sessionCompleted(fx, created)
	must200(t, "session completed", b.postWebhookHeader(sess, sign(sess, secretNew)))
	must200(t, "checkout success", b.checkout(fx.session, fx.user))
	if r := b.checkout(fx.session, emailPath); r.code != http.StatusForbidden {
		t.Errorf("checkout for another user: %d", r.code)
	}
	// Wrong and missing tokens, secrets and emails in paths and headers.
	for _, req := range []struct{ method, path, token string }{
		{http.MethodGet, "/api/users/" + emailPath + "/billing", wrongToken},
		{http.MethodGet, "/api/users/" + emailPath + "/billing?token=" + appToken, ""},
		{http.MethodGet, "/api/users/" + emailUser + ".2/billing", appToken},
		{http.MethodGet, "/admin/locks", appToken},
		{http.MethodGet, "/admin/events?status=failed", wrongToken},
		{http.MethodGet, "/admin/events?status=failed", adminToken},
		{http.MethodPost, "/api/checkout/success", secretNew},
		{http.MethodGet, "/nowhere/" + secretNew + "/" + emailPath, adminToken},
	} {
		httpReq, _ := http.NewRequest(req.method, b.srv.URL+req.path, strings.NewReader(`{"session_id":"`+stripeKey+`","user_id":"`+emailPath+`"}`))
		if req.token != "" {
			httpReq.Header.Set("Authorization", "Bearer "+req.token)
		}
		httpReq.Header.Set("X-Request-Id", emailPath)
		b.do(httpReq)
	}
	// A transient failure: the customer's lock is held; the webhook gives up
	// (503) and its error is logged; then the admin replays it.
	hold := newFixture("logs-stuck", created)
	stuckEv := subUpdate(hold, "active", created)
	holder, err := pgx.Connect(context.Background(), b.db.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Close(context.Background())
	tx, err := holder.Begin(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(context.Background(), `SELECT pg_advisory_xact_lock(hashtext($1))`, hold.customer); err != nil {
		t.Fatal(err)
	}
	if r := b.postWebhookHeader(stuckEv, sign(stuckEv, secretNew)); r.code != http.StatusServiceUnavailable {
		t.Errorf("stuck webhook: %d %s", r.code, r.body)
	}
	_ = tx.Rollback(context.Background())
	if r := b.api(http.MethodPost, "/admin/events/"+eventID(t, stuckEv)+"/replay", adminToken, nil); r.code != http.StatusOK {
		t.Errorf("replay: %d %s", r.code, r.body)
	}
	// An event the database cannot store (a permanent failure, or a 400).
	weird := hostileEvent(stripefake.NewID("evt_"), "customer.updated",
		`{"id":"cus_weird","object":"customer","email":"`+emailCus+`","description":"\ud800"}`)
	b.postWebhookHeader(weird, sign(weird, secretNew))
	// Stripe refusing the API key, in its own words (it quotes the key's
	// prefix and last characters).
	evil := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusUnauthorized)
		key := stripeKey
		_ = json.NewEncoder(w).Encode(map[string]any{"error": map[string]string{"type": "invalid_request_error",
			"message": "Invalid API Key provided: " + key[:8] + strings.Repeat("*", len(key)-12) + key[len(key)-4:]}})
	}))
	defer evil.Close()
	cfg := *b.cfg
	cfg.StripeAPIBase = evil.URL
	refused := app.NewServer(&cfg, b.db.Pool, logging.New(b.logs, slog.LevelDebug))
	rec := httptest.NewRecorder()
	req := httptest.NewRequest(http.MethodPost, "/api/checkout/success", strings.NewReader(`{"session_id":"cs_test_refused","user_id":"`+emailUser+`"}`))
	req.Header.Set("Authorization", "Bearer "+appToken)
	refused.Handler.ServeHTTP(rec, req)
	if rec.Code != http.StatusServiceUnavailable {
		t.Errorf("checkout with the key refused: %d %s", rec.Code, rec.Body)
	}

	logs := b.logs.String()
	secrets := append([]string{secretNew, secretOld, wrongSecret, stripeKey, appToken, adminToken, wrongToken,
		emailCus, emailMeta, emailUser, emailPath, stripeKey[len(stripeKey)-8:]}, signatures...)
	found := secretsIn(logs, secrets)
	t.Logf("%d log lines, %d bytes; %d secret, signature, token and email values checked; found %d", strings.Count(logs, "\n"), len(logs), len(secrets), len(found))
	for _, f := range found {
		for _, line := range strings.Split(logs, "\n") {
			if strings.Contains(line, f) {
				t.Errorf("the logs carry %q:\n%s", f, line)
				break
			}
		}
	}
}

// serve's own logs (startup, configuration, shutdown) name no secret: the
// configuration line masks them.
func TestLogsNoSecretsServe(t *testing.T) {
	t.Parallel()
	b := setup(t, withMaxConns(2))
	var logs syncBuffer
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	vars := map[string]string{
		"DATABASE_URL":          b.db.URL,
		"LISTEN_ADDR":           addr,
		"STRIPE_WEBHOOK_SECRET": secretNew + "," + secretOld,
		"STRIPE_SECRET_KEY":     stripeKey,
		"STRIPE_API_BASE":       b.stripe.URL,
		"APP_API_TOKEN":         appToken,
		"ADMIN_TOKEN":           adminToken,
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- app.Run(ctx, []string{"serve"}, app.Env{Getenv: func(k string) string { return vars[k] }, Stdout: &logs, Stderr: &logs})
	}()
	client := &http.Client{Timeout: 5 * time.Second}
	deadline := time.Now().Add(30 * time.Second)
	for {
		res, err := client.Get("http://" + addr + "/readyz")
		if err == nil {
			_ = res.Body.Close()
			if res.StatusCode == http.StatusOK {
				break
			}
		}
		if time.Now().After(deadline) {
			cancel()
			t.Fatalf("serve not ready after 30s: %v\n%s", err, logs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	body := subUpdate(newFixture("serve-logs", time.Now().Add(-time.Minute).Truncate(time.Second)), "active", time.Now().Add(-time.Minute))
	req, _ := http.NewRequest(http.MethodPost, "http://"+addr+"/webhooks/stripe", bytes.NewReader(body))
	header := stripefake.SignatureHeader(body, secretOld, time.Now())
	req.Header.Set("Stripe-Signature", header)
	if res, err := client.Do(req); err != nil || res.StatusCode != http.StatusOK {
		t.Errorf("webhook: %v %v", res, err)
	} else {
		_ = res.Body.Close()
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("serve: %v", err)
	}
	out := logs.String()
	secrets := []string{secretNew, secretOld, stripeKey, appToken, adminToken, header, header[strings.Index(header, "v1=")+3:],
		secretNew[len(secretNew)-6:], stripeKey[len(stripeKey)-6:]}
	var found []string
	for _, s := range secrets {
		if strings.Contains(out, s) {
			found = append(found, s)
		}
	}
	// Masked secrets keep their kind (whsec_****); nothing after the prefix
	// may be a secret's own character.
	found = append(found, regexp.MustCompile(`\b(whsec_|sk_test_|sk_live_|rk_)[A-Za-z0-9]`).FindAllString(out, -1)...)
	t.Logf("serve logged %d lines; found %d secrets; the configuration line: %s", strings.Count(out, "\n"), len(found), configLine(out))
	for _, f := range found {
		t.Errorf("serve's logs carry %q", f)
	}
}

func configLine(logs string) string {
	for _, line := range strings.Split(logs, "\n") {
		if strings.Contains(line, `"starting"`) || strings.Contains(line, "msg=starting") {
			return line
		}
	}
	return "(none)"
}

// jsonLogLines parses JSON log lines; every line must be one JSON object
// whose top-level keys are not repeated.
func jsonLogLines(t *testing.T, logs string) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, l := range strings.Split(strings.TrimSpace(logs), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("log line is not JSON: %v: %s", err, l)
		}
		var raw map[string]json.RawMessage
		_ = json.Unmarshal([]byte(l), &raw)
		dec := json.NewDecoder(strings.NewReader(l))
		keys, depth := 0, 0
		for {
			tok, err := dec.Token()
			if err != nil {
				break
			}
			switch tok {
			case json.Delim('{'), json.Delim('['):
				depth++
			case json.Delim('}'), json.Delim(']'):
				depth--
			default:
				// At depth 1 a string token is a key; its value, nested
				// or not, is read whole and skipped.
				if depth == 1 {
					if _, isKey := tok.(string); isKey {
						keys++
						var skip json.RawMessage
						if err := dec.Decode(&skip); err != nil {
							t.Fatalf("log line: %v: %s", err, l)
						}
					}
				}
			}
		}
		if keys != len(raw) {
			t.Errorf("log line repeats a key (%d keys, %d distinct): %s", keys, len(raw), l)
		}
		out = append(out, m)
	}
	return out
}

// Logs are JSON, carry the request id and the event id, and hold no secret,
// token or signature, whatever the requests sent.
func TestLogsCarryIDsNotSecrets(t *testing.T) {
	t.Parallel()
	b := setup(t, withLockTimeout(100*time.Millisecond), withRetryBudget(300*time.Millisecond))
	now := time.Now().Add(-time.Minute).Truncate(time.Second)
	fx := b.paidCheckout(uniqueUser("ops-logs"), now)
	var sent []string // every secret-ish value a request carried

	post := func(reqID string, payload []byte, sig string) response {
		req, _ := http.NewRequest(http.MethodPost, b.srv.URL+"/webhooks/stripe", bytes.NewReader(payload))
		req.Header.Set("X-Request-Id", reqID)
		if sig != "" {
			req.Header.Set("Stripe-Signature", sig)
			sent = append(sent, sig[strings.Index(sig, "v1=")+3:])
		}
		return b.do(req)
	}
	ev := sessionCompleted(fx, now)
	evID := eventID(t, ev)
	must200(t, "signed webhook", post("ops-logs-good", ev, stripefake.SignatureHeader(ev, secretNew, time.Now())))
	post("ops-logs-badsig", ev, stripefake.SignatureHeader(ev, "whsec_attacker_guess_0000", time.Now()))
	post("ops-logs-garbage", ev, "t=notanumber,v1=deadbeef")
	post("ops-logs-unsigned", ev, "")
	post("ops-logs-old", ev, stripefake.SignatureHeader(ev, secretNew, time.Now().Add(-time.Hour)))
	notEvent := []byte(`{"object":"customer","id":"cus_x"}`)
	post("ops-logs-notevent", notEvent, stripefake.SignatureHeader(notEvent, secretNew, time.Now()))
	for _, tok := range []string{"wrong-app-token-zzz", appToken} {
		req, _ := http.NewRequest(http.MethodPost, b.srv.URL+"/api/checkout/success",
			strings.NewReader(fmt.Sprintf(`{"session_id":%q,"user_id":%q}`, fx.session, fx.user)))
		req.Header.Set("Authorization", "Bearer "+tok)
		req.Header.Set("X-Request-Id", "ops-logs-checkout")
		b.do(req)
	}
	b.api(http.MethodGet, "/admin/locks", "wrong-admin-token-zzz", nil)
	b.api(http.MethodGet, "/admin/locks", adminToken, nil)
	b.api(http.MethodGet, "/api/users/"+fx.user+"/billing", appToken, nil)
	failing := subEvent(fx, "customer.subscription.updated", "past_due", now.Add(time.Second))
	b.failEvent(fx.customer, failing)
	sent = append(sent, secretNew, secretOld, stripeKey, appToken, adminToken,
		"wrong-app-token-zzz", "wrong-admin-token-zzz", "whsec_", "sk_test", "Bearer", "deadbeef")

	logs := b.logs.String()
	lines := jsonLogLines(t, logs)
	for _, s := range sent {
		if strings.Contains(logs, s) {
			t.Errorf("logs contain %q", s)
		}
	}
	// No user id either: it is personal data.
	if strings.Contains(logs, fx.user) {
		t.Errorf("logs contain the user id %q", fx.user)
	}

	find := func(msg string, attrs map[string]any) map[string]any {
		for _, l := range lines {
			if l["msg"] != msg {
				continue
			}
			match := true
			for k, v := range attrs {
				if l[k] != v {
					match = false
				}
			}
			if match {
				return l
			}
		}
		t.Errorf("no %q log line with %v", msg, attrs)
		return nil
	}
	find("http request", map[string]any{"request_id": "ops-logs-good", "event_id": evID,
		"event_type": "checkout.session.completed", "route": "/webhooks/stripe", "status": float64(200)})
	find("http request", map[string]any{"request_id": "ops-logs-badsig", "status": float64(400)})
	// A refused webhook's line says why (never with the signature: above).
	for id, why := range map[string][2]string{
		"ops-logs-badsig":   {"signature", "no valid signature for any configured secret"},
		"ops-logs-unsigned": {"signature", "missing Stripe-Signature header"},
		"ops-logs-old":      {"too_old", "signature timestamp outside the tolerance"},
		"ops-logs-notevent": {"malformed", "not a valid stripe object: event: object is not \"event\""},
	} {
		find("http request", map[string]any{"request_id": id, "status": float64(400), "refused": why[0], "reason": why[1]})
	}
	if l := find("http request", map[string]any{"request_id": "ops-logs-garbage", "refused": "signature"}); l != nil {
		if r, _ := l["reason"].(string); !strings.HasPrefix(r, "malformed Stripe-Signature header") {
			t.Errorf("garbage signature's reason: %q", r)
		}
	}
	find("http request", map[string]any{"request_id": "ops-logs-checkout", "session_id": fx.session, "status": float64(200)})
	find("http request", map[string]any{"request_id": "ops-logs-checkout", "status": float64(401)})
	failedLine := find("webhook event failed", map[string]any{"event_id": eventID(t, failing), "status": float64(503)})
	if failedLine != nil && failedLine["request_id"] == nil {
		t.Errorf("failure line lacks the request id: %v", failedLine)
	}
	find("transient database error, retrying", map[string]any{"customer": fx.customer, "sqlstate": "55P03"})
	// Every request line carries a request id.
	for _, l := range lines {
		if l["msg"] == "http request" && l["request_id"] == nil {
			t.Errorf("request line without request_id: %v", l)
		}
	}
}
