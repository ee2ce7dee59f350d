package stripefake

import (
	"crypto/sha256"
	"time"
)

// DefaultAPIVersion is the API version stripe-go v76 pins and sends in its
// Stripe-Version header. The fake answers in this shape when a request names
// no version.
const DefaultAPIVersion = "2023-10-16"

// BasilAPIVersion is the first API version ("basil") in which Stripe moved
// current_period_start/current_period_end from the subscription to its items
// and invoice.subscription to invoice.parent.subscription_details.subscription.
const BasilAPIVersion = "2025-03-31.basil"

// IsBasil reports whether apiVersion is 2025-03-31 or later, i.e. whether
// objects take the "basil" shape. Versions compare as strings on their date
// part, so "2025-03-31.basil" and "2025-04-30.basil" are both basil and ""
// (no version) is not.
func IsBasil(apiVersion string) bool {
	return apiVersion >= "2025-03-31"
}

// Session is a Checkout Session as the fake stores it. Zero values take
// Stripe-like defaults when rendered: Mode "subscription", Status "open",
// PaymentStatus "unpaid", Created now (fixed at PutSession time).
type Session struct {
	ID                string
	Customer          string // "" renders as null
	Subscription      string // "" renders as null
	ClientReferenceID string // "" renders as null
	Metadata          map[string]string
	Status            string // open | complete | expired
	PaymentStatus     string // paid | unpaid | no_payment_required
	Mode              string // subscription (default) | payment | setup
	Created           time.Time
}

// Subscription is a Stripe subscription with a single item. Zero values take
// defaults when rendered: Status "active", Created now (fixed at
// PutSubscription time), CurrentPeriodEnd Created plus one month, PriceID a
// "price_..." id derived from the subscription id. current_period_start is
// always CurrentPeriodEnd minus one month.
type Subscription struct {
	ID                string
	Customer          string // "" renders as null
	Status            string // active | trialing | past_due | canceled | unpaid | incomplete | incomplete_expired | paused
	PriceID           string
	CurrentPeriodEnd  time.Time
	CancelAtPeriodEnd bool
	Created           time.Time
	Metadata          map[string]string
	// CurrentPeriodStart, when set, replaces CurrentPeriodEnd minus one
	// month; TrialEnd renders trial_end (and trial_start = Created);
	// LatestInvoice renders latest_invoice ("" as null).
	CurrentPeriodStart time.Time
	TrialEnd           time.Time
	LatestInvoice      string
}

// Customer is a Stripe customer. A Deleted customer renders as Stripe's
// deleted stub {"id":..,"object":"customer","deleted":true}.
type Customer struct {
	ID       string
	Email    string // "" renders as null
	Metadata map[string]string
	Created  time.Time
	Deleted  bool
}

// Invoice is a Stripe invoice, used by webhook builders (invoice.paid,
// invoice.payment_failed, ...). Zero values render as Status "draft",
// Currency "usd", Created now.
type Invoice struct {
	ID, Customer, Subscription, Status, Currency string
	AmountDue, AmountPaid                        int64
	Created                                      time.Time
	// HostedInvoiceURL renders hosted_invoice_url; "" renders Stripe's
	// https://invoice.stripe.com/i/<id> once the invoice is not a draft,
	// null for a draft.
	HostedInvoiceURL string
}

// SessionJSON renders a checkout.session as Stripe sends it. subscription is
// the expanded subscription object when expandedSub is non-nil, otherwise the
// id string (or null). customer is always the id string (or null); the
// server replaces it with the customer object on expand[]=customer.
func SessionJSON(sess Session, expandedSub *Subscription, apiVersion string) map[string]any {
	created := orNow(sess.Created)
	m := map[string]any{
		"id":                    sess.ID,
		"object":                "checkout.session",
		"after_expiration":      nil,
		"allow_promotion_codes": nil,
		"amount_subtotal":       nil,
		"amount_total":          nil,
		"automatic_tax": map[string]any{
			"enabled":   false,
			"liability": nil,
			"status":    nil,
		},
		"billing_address_collection": nil,
		"cancel_url":                 nil,
		"client_reference_id":        nullable(sess.ClientReferenceID),
		"client_secret":              nil,
		"consent":                    nil,
		"consent_collection":         nil,
		"created":                    created.Unix(),
		"currency":                   "usd",
		"currency_conversion":        nil,
		"custom_fields":              []any{},
		"custom_text": map[string]any{
			"after_submit":                nil,
			"shipping_address":            nil,
			"submit":                      nil,
			"terms_of_service_acceptance": nil,
		},
		"customer":                             nullable(sess.Customer),
		"customer_creation":                    nil,
		"customer_details":                     nil,
		"customer_email":                       nil,
		"expires_at":                           created.Add(24 * time.Hour).Unix(),
		"invoice":                              nil,
		"invoice_creation":                     nil,
		"livemode":                             false,
		"locale":                               nil,
		"metadata":                             metadataJSON(sess.Metadata),
		"mode":                                 orDefault(sess.Mode, "subscription"),
		"payment_intent":                       nil,
		"payment_link":                         nil,
		"payment_method_collection":            "always",
		"payment_method_configuration_details": nil,
		"payment_method_options":               map[string]any{},
		"payment_method_types":                 []any{"card"},
		"payment_status":                       orDefault(sess.PaymentStatus, "unpaid"),
		"phone_number_collection":              map[string]any{"enabled": false},
		"recovered_from":                       nil,
		"setup_intent":                         nil,
		"shipping_address_collection":          nil,
		"shipping_cost":                        nil,
		"shipping_options":                     []any{},
		"status":                               orDefault(sess.Status, "open"),
		"submit_type":                          nil,
		"subscription":                         nullable(sess.Subscription),
		"success_url":                          "https://example.com/checkout/success?session_id={CHECKOUT_SESSION_ID}",
		"total_details":                        nil,
		"ui_mode":                              "hosted",
		"url":                                  nil,
	}
	if IsBasil(apiVersion) {
		m["collected_information"] = nil
		m["discounts"] = []any{}
	} else {
		m["shipping_details"] = nil
	}
	if expandedSub != nil {
		m["subscription"] = SubscriptionJSON(*expandedSub, apiVersion)
	}
	return m
}

// SubscriptionJSON renders a subscription as Stripe sends it. For API
// versions before 2025-03-31 current_period_start/end are top-level fields
// (the 2023-10-16 shape stripe-go v76 decodes); from 2025-03-31 on they appear
// only on the subscription items.
func SubscriptionJSON(sub Subscription, apiVersion string) map[string]any {
	created := orNow(sub.Created)
	periodEnd := sub.CurrentPeriodEnd
	if periodEnd.IsZero() {
		periodEnd = created.AddDate(0, 1, 0)
	}
	periodStart := periodEnd.AddDate(0, -1, 0)
	if !sub.CurrentPeriodStart.IsZero() {
		periodStart = sub.CurrentPeriodStart
	}
	var trialStart, trialEnd any
	if !sub.TrialEnd.IsZero() {
		trialStart, trialEnd = created.Unix(), sub.TrialEnd.Unix()
	}
	priceID := subscriptionPrice(sub)
	status := orDefault(sub.Status, "active")
	basil := IsBasil(apiVersion)

	item := map[string]any{
		"id":                 "si_" + derivedID("si:"+sub.ID),
		"object":             "subscription_item",
		"billing_thresholds": nil,
		"created":            created.Unix(),
		"metadata":           map[string]any{},
		"price": map[string]any{
			"id":             priceID,
			"object":         "price",
			"active":         true,
			"billing_scheme": "per_unit",
			"created":        created.Unix(),
			"currency":       "usd",
			"livemode":       false,
			"lookup_key":     nil,
			"metadata":       map[string]any{},
			"nickname":       nil,
			"product":        "prod_" + derivedID("prod:"+priceID),
			"recurring": map[string]any{
				"aggregate_usage": nil,
				"interval":        "month",
				"interval_count":  1,
				"usage_type":      "licensed",
			},
			"tax_behavior": "unspecified",
			"type":         "recurring",
			"unit_amount":  nil,
		},
		"quantity":     1,
		"subscription": sub.ID,
		"tax_rates":    []any{},
	}
	if basil {
		item["current_period_start"] = periodStart.Unix()
		item["current_period_end"] = periodEnd.Unix()
		item["discounts"] = []any{}
	}

	var cancelAt, canceledAt, endedAt any
	if sub.CancelAtPeriodEnd {
		cancelAt = periodEnd.Unix()
	}
	if status == "canceled" || status == "incomplete_expired" {
		canceledAt = periodStart.Unix()
		endedAt = periodStart.Unix()
	}

	m := map[string]any{
		"id":                      sub.ID,
		"object":                  "subscription",
		"application":             nil,
		"application_fee_percent": nil,
		"automatic_tax":           map[string]any{"enabled": false, "liability": nil},
		"billing_cycle_anchor":    periodStart.Unix(),
		"billing_thresholds":      nil,
		"cancel_at":               cancelAt,
		"cancel_at_period_end":    sub.CancelAtPeriodEnd,
		"canceled_at":             canceledAt,
		"cancellation_details": map[string]any{
			"comment":  nil,
			"feedback": nil,
			"reason":   nil,
		},
		"collection_method":      "charge_automatically",
		"created":                created.Unix(),
		"currency":               "usd",
		"customer":               nullable(sub.Customer),
		"days_until_due":         nil,
		"default_payment_method": nil,
		"default_source":         nil,
		"default_tax_rates":      []any{},
		"description":            nil,
		"discounts":              []any{},
		"ended_at":               endedAt,
		"items": map[string]any{
			"object":      "list",
			"data":        []any{item},
			"has_more":    false,
			"total_count": 1,
			"url":         "/v1/subscription_items?subscription=" + sub.ID,
		},
		"latest_invoice":                    nullable(sub.LatestInvoice),
		"livemode":                          false,
		"metadata":                          metadataJSON(sub.Metadata),
		"next_pending_invoice_item_invoice": nil,
		"on_behalf_of":                      nil,
		"pause_collection":                  nil,
		"payment_settings": map[string]any{
			"payment_method_options":      nil,
			"payment_method_types":        nil,
			"save_default_payment_method": "off",
		},
		"pending_invoice_item_interval": nil,
		"pending_setup_intent":          nil,
		"pending_update":                nil,
		"schedule":                      nil,
		"start_date":                    created.Unix(),
		"status":                        status,
		"test_clock":                    nil,
		"transfer_data":                 nil,
		"trial_end":                     trialEnd,
		"trial_start":                   trialStart,
	}
	if !basil {
		m["current_period_start"] = periodStart.Unix()
		m["current_period_end"] = periodEnd.Unix()
		m["discount"] = nil
	}
	return m
}

// CustomerJSON renders a customer as Stripe sends it; a Deleted customer is
// Stripe's stub {"id","object":"customer","deleted":true}. The customer shape
// does not differ between the API versions the fake models; an apiVersion
// argument is accepted (and ignored) so the call reads like its siblings.
func CustomerJSON(c Customer, apiVersion ...string) map[string]any {
	_ = apiVersion
	if c.Deleted {
		return map[string]any{"id": c.ID, "object": "customer", "deleted": true}
	}
	return map[string]any{
		"id":             c.ID,
		"object":         "customer",
		"address":        nil,
		"balance":        0,
		"created":        orNow(c.Created).Unix(),
		"currency":       nil,
		"default_source": nil,
		"delinquent":     false,
		"description":    nil,
		"discount":       nil,
		"email":          nullable(c.Email),
		"invoice_prefix": derivedID("invprefix:" + c.ID)[:8],
		"invoice_settings": map[string]any{
			"custom_fields":          nil,
			"default_payment_method": nil,
			"footer":                 nil,
			"rendering_options":      nil,
		},
		"livemode":              false,
		"metadata":              metadataJSON(c.Metadata),
		"name":                  nil,
		"next_invoice_sequence": 1,
		"phone":                 nil,
		"preferred_locales":     []any{},
		"shipping":              nil,
		"tax_exempt":            "none",
		"test_clock":            nil,
	}
}

// InvoiceJSON renders an invoice as Stripe sends it. Before 2025-03-31 the
// subscription id is the top-level "subscription" field; from 2025-03-31 on it
// is parent.subscription_details.subscription (parent is null for an invoice
// without a subscription) and "subscription"/"paid" are gone.
func InvoiceJSON(inv Invoice, apiVersion string) map[string]any {
	created := orNow(inv.Created)
	status := orDefault(inv.Status, "draft")
	remaining := inv.AmountDue - inv.AmountPaid
	if remaining < 0 {
		remaining = 0
	}
	var hosted any
	switch {
	case inv.HostedInvoiceURL != "":
		hosted = inv.HostedInvoiceURL
	case status != "draft":
		hosted = "https://invoice.stripe.com/i/" + inv.ID
	}
	var billingReason any
	if inv.Subscription != "" {
		billingReason = "subscription_cycle"
	} else {
		billingReason = "manual"
	}
	m := map[string]any{
		"id":                 inv.ID,
		"object":             "invoice",
		"account_country":    "US",
		"amount_due":         inv.AmountDue,
		"amount_paid":        inv.AmountPaid,
		"amount_remaining":   remaining,
		"attempt_count":      0,
		"attempted":          status == "paid",
		"auto_advance":       status == "draft" || status == "open",
		"billing_reason":     billingReason,
		"collection_method":  "charge_automatically",
		"created":            created.Unix(),
		"currency":           orDefault(inv.Currency, "usd"),
		"customer":           nullable(inv.Customer),
		"customer_email":     nil,
		"description":        nil,
		"hosted_invoice_url": hosted,
		"lines": map[string]any{
			"object":      "list",
			"data":        []any{},
			"has_more":    false,
			"total_count": 0,
			"url":         "/v1/invoices/" + inv.ID + "/lines",
		},
		"livemode":     false,
		"metadata":     map[string]any{},
		"number":       nil,
		"period_end":   created.Unix(),
		"period_start": created.Unix(),
		"status":       status,
		"subtotal":     inv.AmountDue,
		"total":        inv.AmountDue,
	}
	if IsBasil(apiVersion) {
		if inv.Subscription != "" {
			m["parent"] = map[string]any{
				"type":          "subscription_details",
				"quote_details": nil,
				"subscription_details": map[string]any{
					"metadata":     map[string]any{},
					"subscription": inv.Subscription,
				},
			}
		} else {
			m["parent"] = nil
		}
	} else {
		m["subscription"] = nullable(inv.Subscription)
		m["paid"] = status == "paid"
		m["charge"] = nil
		m["payment_intent"] = nil
	}
	return m
}

// nullable renders "" as JSON null.
func nullable(s string) any {
	if s == "" {
		return nil
	}
	return s
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

func orNow(t time.Time) time.Time {
	if t.IsZero() {
		return time.Now()
	}
	return t
}

// metadataJSON renders metadata as a JSON object, {} when empty (Stripe never
// sends null metadata).
func metadataJSON(md map[string]string) map[string]any {
	m := make(map[string]any, len(md))
	for k, v := range md {
		m[k] = v
	}
	return m
}

func copyMetadata(md map[string]string) map[string]string {
	if md == nil {
		return nil
	}
	c := make(map[string]string, len(md))
	for k, v := range md {
		c[k] = v
	}
	return c
}

// derivedID returns 14 alphanumerics determined by seed, so nested objects
// (subscription items, prices, products) get stable ids across renders.
func derivedID(seed string) string {
	sum := sha256.Sum256([]byte(seed))
	b := make([]byte, idLen)
	for i := range b {
		b[i] = idAlphabet[int(sum[i])%len(idAlphabet)]
	}
	return string(b)
}
