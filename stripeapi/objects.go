// Package stripeapi is lockstep's edge to Stripe: it verifies webhook
// signatures, parses events and the objects lockstep reads (checkout
// sessions, subscriptions, customers, invoices) whatever API version they
// were rendered in, and fetches objects through stripe-go's HTTP backend.
//
// The objects are lockstep's own small structs rather than stripe-go's:
// stripe-go v76 pins API version 2023-10-16, while webhooks arrive in the
// account's version, and since 2025-03-31 fields such as current_period_end
// moved from the subscription to its items. Parsing reads both shapes.
package stripeapi

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/lockstep/lockstep/userid"
)

// Errors of parsing and of the API.
var (
	ErrMalformed   = errors.New("not a valid stripe object")
	ErrNotFound    = errors.New("stripe object not found")
	ErrUnavailable = errors.New("stripe api unavailable")
	// ErrUnauthorized and ErrForbidden are Stripe refusing the key itself
	// (401: unknown, revoked or expired; 403: a restricted key without the
	// permission). Running again does not help; the key must change. Each
	// also matches ErrUnavailable: for an HTTP caller the API is just as
	// unavailable.
	ErrUnauthorized = errors.New("stripe rejected the api key")
	ErrForbidden    = errors.New("stripe api key lacks a permission")
	// ErrTimeout: Stripe did not answer within a live request's deadline
	// (WithDeadline). Errors that are ErrTimeout are also ErrUnavailable.
	ErrTimeout = errors.New("stripe did not answer in time")
)

// MaxIDLength bounds every Stripe id lockstep accepts; Stripe's are shorter.
const MaxIDLength = 255

// ValidID reports whether s looks like a Stripe id with the given prefix:
// the prefix, then letters, digits and underscores, at most MaxIDLength.
func ValidID(s, prefix string) bool {
	if len(s) <= len(prefix) || len(s) > MaxIDLength || s[:len(prefix)] != prefix {
		return false
	}
	for i := len(prefix); i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_') {
			return false
		}
	}
	return true
}

// expandable is a field Stripe renders as an id, as an object with an id
// (when expanded), or as null. UnmarshalJSON serves encoding/json; the
// scanner reads it with expandableInto.
type expandable struct {
	ID  string
	Raw json.RawMessage // the whole object when expanded
}

func (e *expandable) UnmarshalJSON(b []byte) error {
	b = bytes.TrimSpace(b)
	switch {
	case bytes.Equal(b, []byte("null")):
		*e = expandable{}
		return nil
	case len(b) > 0 && b[0] == '"':
		return json.Unmarshal(b, &e.ID)
	case len(b) > 0 && b[0] == '{':
		var obj struct {
			ID string `json:"id"`
		}
		if err := json.Unmarshal(b, &obj); err != nil {
			return err
		}
		e.ID, e.Raw = obj.ID, append(json.RawMessage(nil), b...)
		return nil
	}
	return fmt.Errorf("expandable field: unexpected %.20q", b)
}

// maxUnix is 2200-01-01: Stripe times past it are garbage, and far larger
// ones overflow PostgreSQL's timestamptz.
const maxUnix = 7258118400

// unixTime converts a Stripe timestamp; absent or impossible ones are zero.
func unixTime(sec int64) time.Time {
	if sec <= 0 || sec > maxUnix {
		return time.Time{}
	}
	return time.Unix(sec, 0).UTC()
}

// CheckoutSession is the part of a Checkout Session lockstep uses.
type CheckoutSession struct {
	ID                string
	CustomerID        string // "" when the session created no customer
	SubscriptionID    string
	Subscription      *Subscription // set when the subscription was expanded
	ClientReferenceID string
	MetadataUserID    string
	Status            string // open, complete, expired
	PaymentStatus     string // paid, unpaid, no_payment_required
	Mode              string
	Created           time.Time
}

// Paid reports whether the session is complete and needs no more payment.
func (s *CheckoutSession) Paid() bool {
	return s.Status == "complete" && (s.PaymentStatus == "paid" || s.PaymentStatus == "no_payment_required")
}

// ClaimedUsers lists the users the session names (client_reference_id, then
// metadata.user_id), without repeats.
func (s *CheckoutSession) ClaimedUsers() []string {
	var users []string
	for _, u := range []string{s.ClientReferenceID, s.MetadataUserID} {
		if u != "" && (len(users) == 0 || users[0] != u) {
			users = append(users, u)
		}
	}
	return users
}

// ParseCheckoutSession parses a checkout.session object.
func ParseCheckoutSession(b []byte) (*CheckoutSession, error) { return parseCheckoutSession(b, true) }

// parseCheckoutSession is ParseCheckoutSession, on the scanner's fast path when fast is set.
func parseCheckoutSession(b []byte, fast bool) (*CheckoutSession, error) {
	var w sessionWire
	if s := (scanner{b: b}); !fast || !scanSession(&s, 0, &w) || !s.atEnd() {
		var err error // the scanner declined (see scan.go): encoding/json decides
		if w, err = unmarshalWire[sessionWire](b, "checkout session"); err != nil {
			return nil, err
		}
	}
	if w.Object != "checkout.session" || !ValidID(w.ID, "cs_") {
		return nil, fmt.Errorf("%w: checkout session: bad object or id", ErrMalformed)
	}
	if w.Customer.ID != "" && !ValidID(w.Customer.ID, "cus_") {
		return nil, fmt.Errorf("%w: checkout session %s: bad customer id", ErrMalformed, w.ID)
	}
	s := &CheckoutSession{
		ID:             w.ID,
		CustomerID:     w.Customer.ID,
		SubscriptionID: w.Subscription.ID,
		MetadataUserID: w.Metadata["user_id"],
		PaymentStatus:  w.PaymentStatus,
		Mode:           w.Mode,
		Created:        unixTime(w.Created),
	}
	if w.ClientReferenceID != nil {
		s.ClientReferenceID = *w.ClientReferenceID
	}
	if w.Status != nil {
		s.Status = *w.Status
	}
	for _, u := range s.ClaimedUsers() {
		if !userid.Valid(u) {
			return nil, fmt.Errorf("%w: checkout session %s: bad user id", ErrMalformed, w.ID)
		}
	}
	if w.Subscription.Raw != nil {
		sub, err := parseSubscription(w.Subscription.Raw, fast)
		if err != nil {
			return nil, err
		}
		s.Subscription = sub
	}
	return s, nil
}

// sessionWire is the part of a checkout session ParseCheckoutSession reads.
// Like each wire struct, it is filled by the scanner (scan.go) or, when
// that declines, by encoding/json.
type sessionWire = struct {
	ID                string            `json:"id"`
	Object            string            `json:"object"`
	Customer          expandable        `json:"customer"`
	Subscription      expandable        `json:"subscription"`
	ClientReferenceID *string           `json:"client_reference_id"`
	Metadata          map[string]string `json:"metadata"`
	Status            *string           `json:"status"`
	PaymentStatus     string            `json:"payment_status"`
	Mode              string            `json:"mode"`
	Created           int64             `json:"created"`
}

// Subscription is the part of a subscription lockstep stores.
type Subscription struct {
	ID                 string
	CustomerID         string
	Status             string // as Stripe names it, values it adds later included
	PriceID            string
	CurrentPeriodStart time.Time // zero when Stripe gave none
	CurrentPeriodEnd   time.Time // zero when Stripe gave none
	TrialEnd           time.Time // zero when there is no trial
	CancelAtPeriodEnd  bool
	LatestInvoiceID    string // "" when Stripe gave none
	Created            time.Time
}

// Terminal reports whether a subscription in this status can never change
// again (Stripe does not revive canceled or expired subscriptions).
func Terminal(status string) bool {
	return status == "canceled" || status == "incomplete_expired"
}

// SubscriptionStatuses are the subscription statuses Stripe documents
// today. Stripe adds values: one not listed here is stored as Stripe names
// it (KnownSubscriptionStatus tells them apart, for a metric and a warning),
// and the access decision gives it no access.
var SubscriptionStatuses = []string{"incomplete", "incomplete_expired", "trialing", "active",
	"past_due", "canceled", "unpaid", "paused"}

// KnownSubscriptionStatus reports whether status is one Stripe documents today.
func KnownSubscriptionStatus(status string) bool {
	return slices.Contains(SubscriptionStatuses, status)
}

// maxEnumLength bounds a status or other enum value lockstep stores. It is
// not a list of allowed values: Stripe adds values, and lockstep stores
// them as Stripe names them.
const maxEnumLength = 64

// validEnum reports whether s can be stored as an enum value: not empty, at
// most maxEnumLength, and only lower-case letters, digits and underscores,
// as every Stripe enum is.
func validEnum(s string) bool {
	if s == "" || len(s) > maxEnumLength {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_') {
			return false
		}
	}
	return true
}

// ParseSubscription parses a subscription object of any API version:
// current_period_end is read from the subscription (before 2025-03-31) or
// from its items (since), whichever is present.
func ParseSubscription(b []byte) (*Subscription, error) { return parseSubscription(b, true) }

// parseSubscription is ParseSubscription, on the scanner's fast path when fast is set.
func parseSubscription(b []byte, fast bool) (*Subscription, error) {
	var w subscriptionWire
	if s := (scanner{b: b}); !fast || !scanSubscription(&s, 0, &w) || !s.atEnd() {
		var err error // the scanner declined (see scan.go): encoding/json decides
		if w, err = unmarshalWire[subscriptionWire](b, "subscription"); err != nil {
			return nil, err
		}
	}
	if w.Object != "subscription" || !ValidID(w.ID, "sub_") {
		return nil, fmt.Errorf("%w: subscription: bad object or id", ErrMalformed)
	}
	if !ValidID(w.Customer.ID, "cus_") {
		return nil, fmt.Errorf("%w: subscription %s: bad customer id", ErrMalformed, w.ID)
	}
	if !validEnum(w.Status) {
		return nil, fmt.Errorf("%w: subscription %s: bad status %.40q", ErrMalformed, w.ID, w.Status)
	}
	if w.LatestInvoice.ID != "" && !ValidID(w.LatestInvoice.ID, "in_") {
		return nil, fmt.Errorf("%w: subscription %s: bad latest_invoice", ErrMalformed, w.ID)
	}
	s := &Subscription{
		ID:                 w.ID,
		CustomerID:         w.Customer.ID,
		Status:             w.Status,
		CancelAtPeriodEnd:  w.CancelAtPeriodEnd,
		CurrentPeriodStart: unixTime(w.CurrentPeriodStart),
		CurrentPeriodEnd:   unixTime(w.CurrentPeriodEnd),
		TrialEnd:           unixTime(w.TrialEnd),
		LatestInvoiceID:    w.LatestInvoice.ID,
		Created:            unixTime(w.Created),
	}
	for i, it := range w.Items.Data {
		if i == 0 && it.Price.ID != "" {
			if len(it.Price.ID) > MaxIDLength {
				return nil, fmt.Errorf("%w: subscription %s: price id too long", ErrMalformed, w.ID)
			}
			s.PriceID = it.Price.ID
		}
		if w.CurrentPeriodEnd == 0 && it.CurrentPeriodEnd > 0 {
			if end := unixTime(it.CurrentPeriodEnd); end.After(s.CurrentPeriodEnd) {
				s.CurrentPeriodEnd = end
			}
		}
		if w.CurrentPeriodStart == 0 && it.CurrentPeriodStart > 0 {
			if start := unixTime(it.CurrentPeriodStart); start.After(s.CurrentPeriodStart) {
				s.CurrentPeriodStart = start
			}
		}
	}
	return s, nil
}

// subscriptionWire is the part of a subscription ParseSubscription reads.
type subscriptionWire = struct {
	ID                 string     `json:"id"`
	Object             string     `json:"object"`
	Customer           expandable `json:"customer"`
	Status             string     `json:"status"`
	CancelAtPeriodEnd  bool       `json:"cancel_at_period_end"`
	CurrentPeriodStart int64      `json:"current_period_start"`
	CurrentPeriodEnd   int64      `json:"current_period_end"`
	TrialEnd           int64      `json:"trial_end"`
	LatestInvoice      expandable `json:"latest_invoice"`
	Created            int64      `json:"created"`
	Items              itemList   `json:"items"`
}

type itemList = struct {
	Data []subscriptionItem `json:"data"`
}

type subscriptionItem = struct {
	Price              expandable `json:"price"`
	CurrentPeriodStart int64      `json:"current_period_start"`
	CurrentPeriodEnd   int64      `json:"current_period_end"`
}

// Customer is the part of a customer lockstep stores.
type Customer struct {
	ID             string
	MetadataUserID string
	Deleted        bool
	Created        time.Time
}

// ParseCustomer parses a customer object (or a deleted customer's stub).
func ParseCustomer(b []byte) (*Customer, error) { return parseCustomer(b, true) }

// parseCustomer is ParseCustomer, on the scanner's fast path when fast is set.
func parseCustomer(b []byte, fast bool) (*Customer, error) {
	var w customerWire
	if s := (scanner{b: b}); !fast || !scanCustomer(&s, 0, &w) || !s.atEnd() {
		var err error // the scanner declined (see scan.go): encoding/json decides
		if w, err = unmarshalWire[customerWire](b, "customer"); err != nil {
			return nil, err
		}
	}
	if w.Object != "customer" || !ValidID(w.ID, "cus_") {
		return nil, fmt.Errorf("%w: customer: bad object or id", ErrMalformed)
	}
	c := &Customer{ID: w.ID, MetadataUserID: w.Metadata["user_id"], Deleted: w.Deleted, Created: unixTime(w.Created)}
	if c.MetadataUserID != "" && !userid.Valid(c.MetadataUserID) {
		return nil, fmt.Errorf("%w: customer %s: bad metadata.user_id", ErrMalformed, w.ID)
	}
	return c, nil
}

// customerWire is the part of a customer ParseCustomer reads.
type customerWire = struct {
	ID       string            `json:"id"`
	Object   string            `json:"object"`
	Deleted  bool              `json:"deleted"`
	Metadata map[string]string `json:"metadata"`
	Created  int64             `json:"created"`
}

// Invoice is the part of an invoice lockstep stores.
type Invoice struct {
	ID             string
	CustomerID     string
	SubscriptionID string
	Status         string
	AmountDue      int64
	AmountPaid     int64
	Currency       string
	// HostedInvoiceURL is Stripe's page where the customer pays or
	// confirms the invoice; "" until the invoice is finalized.
	HostedInvoiceURL string
	Created          time.Time
}

// maxURLLength bounds a URL lockstep stores (hosted_invoice_url).
const maxURLLength = 2048

// ParseInvoice parses an invoice of any API version: the subscription is
// invoice.subscription before 2025-03-31 and
// invoice.parent.subscription_details.subscription since.
func ParseInvoice(b []byte) (*Invoice, error) { return parseInvoice(b, true) }

// parseInvoice is ParseInvoice, on the scanner's fast path when fast is set.
func parseInvoice(b []byte, fast bool) (*Invoice, error) {
	var w invoiceWire
	if s := (scanner{b: b}); !fast || !scanInvoice(&s, 0, &w) || !s.atEnd() {
		var err error // the scanner declined (see scan.go): encoding/json decides
		if w, err = unmarshalWire[invoiceWire](b, "invoice"); err != nil {
			return nil, err
		}
	}
	if w.Object != "invoice" || !ValidID(w.ID, "in_") {
		return nil, fmt.Errorf("%w: invoice: bad object or id", ErrMalformed)
	}
	if !ValidID(w.Customer.ID, "cus_") {
		return nil, fmt.Errorf("%w: invoice %s: bad customer id", ErrMalformed, w.ID)
	}
	inv := &Invoice{
		ID: w.ID, CustomerID: w.Customer.ID, SubscriptionID: w.Subscription.ID,
		Status: "draft", AmountDue: w.AmountDue, AmountPaid: w.AmountPaid,
		Currency: w.Currency, Created: unixTime(w.Created),
	}
	if inv.SubscriptionID == "" && w.Parent != nil && w.Parent.SubscriptionDetails != nil {
		inv.SubscriptionID = w.Parent.SubscriptionDetails.Subscription.ID
	}
	if w.Status != nil && *w.Status != "" {
		inv.Status = *w.Status
	}
	if w.HostedInvoiceURL != nil {
		u := *w.HostedInvoiceURL
		if len(u) > maxURLLength || !strings.HasPrefix(u, "https://") && !strings.HasPrefix(u, "http://") {
			return nil, fmt.Errorf("%w: invoice %s: bad hosted_invoice_url", ErrMalformed, w.ID)
		}
		inv.HostedInvoiceURL = u
	}
	if len(inv.Status) > 40 || len(inv.Currency) > 10 || len(inv.SubscriptionID) > MaxIDLength {
		return nil, fmt.Errorf("%w: invoice %s: field too long", ErrMalformed, w.ID)
	}
	return inv, nil
}

// invoiceWire is the part of an invoice ParseInvoice reads.
type invoiceWire = struct {
	ID           string         `json:"id"`
	Object       string         `json:"object"`
	Customer     expandable     `json:"customer"`
	Subscription expandable     `json:"subscription"`
	Parent       *invoiceParent `json:"parent"`
	Status       *string        `json:"status"`
	AmountDue    int64          `json:"amount_due"`
	AmountPaid   int64          `json:"amount_paid"`
	Currency     string         `json:"currency"`
	Created      int64          `json:"created"`

	HostedInvoiceURL *string `json:"hosted_invoice_url"`
}

type invoiceParent = struct {
	SubscriptionDetails *subscriptionDetails `json:"subscription_details"`
}

type subscriptionDetails = struct {
	Subscription expandable `json:"subscription"`
}
