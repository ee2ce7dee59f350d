package stripefake

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"strconv"
	"strings"
	"time"
)

const (
	idAlphabet = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
	idLen      = 14
)

// NewID returns prefix followed by 14 random alphanumerics from crypto/rand,
// e.g. NewID("cus_") = "cus_N3x9QaBf0LkT2z".
func NewID(prefix string) string {
	// 62 letters: reject bytes >= 248 (4*62) so every letter is equally likely.
	const limit = 256 - 256%len(idAlphabet)
	out := make([]byte, 0, idLen)
	buf := make([]byte, 2*idLen)
	for len(out) < idLen {
		if _, err := rand.Read(buf); err != nil {
			panic("stripefake: crypto/rand: " + err.Error())
		}
		for _, c := range buf {
			if int(c) < limit && len(out) < idLen {
				out = append(out, idAlphabet[int(c)%len(idAlphabet)])
			}
		}
	}
	return prefix + string(out)
}

// EventJSON builds a Stripe event envelope around obj, as Stripe posts it to
// a webhook endpoint:
//
//	{"id","object":"event","api_version","created","livemode":false,
//	 "pending_webhooks":1,"request":{"id":null,"idempotency_key":null},
//	 "type","data":{"object":obj}}
//
// An empty apiVersion means DefaultAPIVersion. obj is usually built with
// SessionJSON, SubscriptionJSON, CustomerJSON or InvoiceJSON using the same
// apiVersion. The payload is indented like Stripe's; sign exactly these bytes.
func EventJSON(id, typ string, created time.Time, apiVersion string, obj map[string]any) []byte {
	if apiVersion == "" {
		apiVersion = DefaultAPIVersion
	}
	if obj == nil {
		obj = map[string]any{}
	}
	ev := map[string]any{
		"id":               id,
		"object":           "event",
		"api_version":      apiVersion,
		"created":          orNow(created).Unix(),
		"livemode":         false,
		"pending_webhooks": 1,
		"request":          map[string]any{"id": nil, "idempotency_key": nil},
		"type":             typ,
		"data":             map[string]any{"object": obj},
	}
	b, err := json.MarshalIndent(ev, "", "  ")
	if err != nil {
		panic("stripefake: EventJSON: " + err.Error())
	}
	return b
}

// SignatureHeader returns the Stripe-Signature header Stripe would send for
// payload at time ts: "t=<unix>,v1=<hex HMAC-SHA256 of "<unix>.<payload>">".
// The secret is the raw HMAC key, whsec_ prefix included, exactly as
// stripe-go's webhook.ComputeSignature uses it.
func SignatureHeader(payload []byte, secret string, ts time.Time) string {
	return SignatureHeaderMulti(payload, ts, secret)
}

// SignatureHeaderMulti signs payload with each secret, as Stripe does while
// an endpoint secret is being rolled: "t=<unix>,v1=<sig1>,v1=<sig2>...".
func SignatureHeaderMulti(payload []byte, ts time.Time, secrets ...string) string {
	unix := strconv.FormatInt(ts.Unix(), 10)
	var b strings.Builder
	b.WriteString("t=")
	b.WriteString(unix)
	for _, secret := range secrets {
		mac := hmac.New(sha256.New, []byte(secret))
		mac.Write([]byte(unix))
		mac.Write([]byte("."))
		mac.Write(payload)
		b.WriteString(",v1=")
		b.WriteString(hex.EncodeToString(mac.Sum(nil)))
	}
	return b.String()
}
