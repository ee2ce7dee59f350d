package billing

import (
	"cmp"
	"errors"
	"fmt"
	"slices"
	"time"
	"unicode/utf8"
)

// The paywall's decision: may this user in, on which plan, with which
// features, and if not, what to show them. Decide is a pure function of
// what the access read gathers in one statement (access_read.go), so every
// caller (the access read, the success call, the access command) gives the
// same answer for the same stored state and the same database clock.

// ErrInvalidFeature: a ?feature= or --feature value that cannot be a
// feature's lookup key.
var ErrInvalidFeature = errors.New("invalid feature key")

// States of a decision besides a subscription status passed through as
// Stripe names it (a status Stripe adds later).
const (
	StateNone       = "none"
	StateActive     = "active"
	StateGrace      = "grace"
	StateTrialing   = "trialing"
	StatePastDue    = "past_due"
	StateIncomplete = "incomplete"
	StateUnpaid     = "unpaid"
	StatePaused     = "paused"
	StateEnded      = "ended"
)

// Actions: the next step the app offers a user.
const (
	ActionNone                = "none"
	ActionSubscribe           = "subscribe"
	ActionResubscribe         = "resubscribe"
	ActionUpdatePaymentMethod = "update_payment_method"
	ActionConfirmPayment      = "confirm_payment"
)

// AccessStates are the states Decide gives for the statuses Stripe
// documents; any other state is a status Stripe added later.
var AccessStates = []string{StateNone, StateActive, StateGrace, StateTrialing, StatePastDue,
	StateIncomplete, StateUnpaid, StatePaused, StateEnded}

// Access is the paywall's decision, as GET /api/users/{user_id}/access,
// the success call and `lockstep access` print it.
type Access struct {
	UserID       string        `json:"user_id"`
	Access       bool          `json:"access"`
	State        string        `json:"state"`
	Until        *time.Time    `json:"until"`
	Subscription *string       `json:"subscription"`
	Plan         *Plan         `json:"plan"`
	Features     []string      `json:"features"`
	Feature      *FeatureCheck `json:"feature,omitempty"`
	Action       string        `json:"action"`
	ActionURL    *string       `json:"action_url"`
	// Reason is one sentence for support staff: ids, statuses and times,
	// never personal data.
	Reason string `json:"reason"`

	// CustomerID is the Stripe customer decided on ("" when none), for logs.
	CustomerID string `json:"-"`
}

// Plan is the deciding subscription's price and its product. What lockstep
// has not stored yet is null; the price id is always known.
type Plan struct {
	Product   *string `json:"product"`
	Name      *string `json:"name"`
	Price     string  `json:"price"`
	LookupKey *string `json:"lookup_key"`
	Interval  *string `json:"interval"`
}

// FeatureCheck answers ?feature=KEY: granted only when the key is among the
// customer's active entitlements and access is true.
type FeatureCheck struct {
	Key     string `json:"key"`
	Granted bool   `json:"granted"`
}

// AccessInputs is everything the decision reads, as stored, with the
// database's clock of the same statement.
type AccessInputs struct {
	UserID string
	// Now is the database's now() of the statement that read the rest.
	Now time.Time
	// PastDueGrace is ACCESS_PAST_DUE_GRACE: how long a past_due
	// subscription keeps access from the start of its unpaid period.
	PastDueGrace time.Duration
	// CustomerID is the user's Stripe customer, "" when none is mapped.
	CustomerID      string
	CustomerDeleted bool
	Subscriptions   []AccessSubscription
	// Features are the lookup keys of the customer's active entitlements.
	Features []string
	// Feature is the key asked about ("" for none).
	Feature string
}

// AccessSubscription is one of the customer's subscriptions with what its
// plan and next step need.
type AccessSubscription struct {
	ID                 string
	Status             string
	CancelAtPeriodEnd  bool
	CurrentPeriodStart *time.Time
	CurrentPeriodEnd   *time.Time
	TrialEnd           *time.Time
	// StoredAt is when lockstep first stored it: the last tiebreak of
	// "most recent".
	StoredAt time.Time
	PriceID  string
	// LatestInvoiceStatus and LatestInvoiceURL are the stored
	// latest_invoice's status and hosted_invoice_url ("" when unknown).
	LatestInvoiceStatus string
	LatestInvoiceURL    string
	// OpenInvoiceURL is the hosted_invoice_url of the subscription's newest
	// open invoice ("" when none is known).
	OpenInvoiceURL string
	// The price and product rows, when stored.
	PriceKnown  bool
	LookupKey   *string
	Interval    *string
	ProductID   *string
	ProductName *string
}

// MaxFeatureKeyLength bounds a feature key asked about, as the schema
// bounds a stored one.
const MaxFeatureKeyLength = 255

// CheckFeatureKey says why key cannot be a feature's lookup key, or nil.
func CheckFeatureKey(key string) error {
	switch {
	case key == "":
		return fmt.Errorf("%w: feature must not be empty", ErrInvalidFeature)
	case len(key) > MaxFeatureKeyLength:
		return fmt.Errorf("%w: feature must be at most %d bytes", ErrInvalidFeature, MaxFeatureKeyLength)
	case !utf8.ValidString(key):
		return fmt.Errorf("%w: feature must be valid UTF-8", ErrInvalidFeature)
	}
	for _, r := range key {
		if r < 0x20 || r == 0x7f {
			return fmt.Errorf("%w: feature must not hold control characters", ErrInvalidFeature)
		}
	}
	return nil
}

// verdict is one subscription's answer.
type verdict struct {
	sub    *AccessSubscription
	state  string
	access bool
	until  *time.Time
	action string
	url    string
	reason string
}

// Decide is the contract's state table. Several subscriptions: the one
// that grants access with the latest until decides; when none does, the
// most recent one.
func Decide(in AccessInputs) *Access {
	a := &Access{UserID: in.UserID, Features: []string{}, CustomerID: in.CustomerID}
	var v verdict
	switch {
	case in.CustomerID == "":
		v = verdict{state: StateNone, action: ActionSubscribe, reason: "No Stripe customer is linked to this user."}
	case in.CustomerDeleted:
		v = verdict{state: StateNone, action: ActionSubscribe,
			reason: fmt.Sprintf("Stripe customer %s was deleted.", in.CustomerID)}
	case len(in.Subscriptions) == 0:
		v = verdict{state: StateNone, action: ActionSubscribe,
			reason: fmt.Sprintf("Stripe customer %s has no subscription.", in.CustomerID)}
	default:
		v = pick(in)
	}
	if in.CustomerID != "" && !in.CustomerDeleted {
		a.Features = append(a.Features, in.Features...)
		slices.Sort(a.Features)
		a.Features = slices.Compact(a.Features)
	}
	a.State, a.Access, a.Action, a.Reason = v.state, v.access, v.action, v.reason
	if v.until != nil {
		t := v.until.UTC()
		a.Until = &t
	}
	if v.url != "" {
		u := v.url
		a.ActionURL = &u
	}
	if s := v.sub; s != nil {
		id := s.ID
		a.Subscription = &id
		if s.PriceID != "" {
			a.Plan = &Plan{Price: s.PriceID}
			if s.PriceKnown {
				a.Plan.LookupKey, a.Plan.Interval, a.Plan.Product = s.LookupKey, s.Interval, s.ProductID
				if s.ProductID != nil {
					a.Plan.Name = s.ProductName
				}
			}
		}
	}
	if in.Feature != "" {
		a.Feature = &FeatureCheck{Key: in.Feature, Granted: a.Access && slices.Contains(a.Features, in.Feature)}
	}
	return a
}

// pick decides each subscription and returns the deciding verdict.
func pick(in AccessInputs) verdict {
	vs := make([]verdict, len(in.Subscriptions))
	for i := range in.Subscriptions {
		vs[i] = decideOne(&in.Subscriptions[i], in.Now, in.PastDueGrace)
	}
	// Most recent first: the later period start, then period end, then the
	// later first sight, then the greater id (a total order, so the answer
	// never depends on the order rows came in).
	slices.SortStableFunc(vs, func(x, y verdict) int {
		if c := cmpTimeDesc(x.sub.CurrentPeriodStart, y.sub.CurrentPeriodStart); c != 0 {
			return c
		}
		if c := cmpTimeDesc(x.sub.CurrentPeriodEnd, y.sub.CurrentPeriodEnd); c != 0 {
			return c
		}
		if c := y.sub.StoredAt.Compare(x.sub.StoredAt); c != 0 {
			return c
		}
		return cmp.Compare(y.sub.ID, x.sub.ID)
	})
	best := -1
	for i, v := range vs {
		// The latest until among those granting access; an unknown until
		// ranks below any known one; on a tie the most recent (first) wins.
		if v.access && (best < 0 || cmpTimeDesc(v.until, vs[best].until) < 0) {
			best = i
		}
	}
	if best < 0 {
		best = 0
	}
	return vs[best]
}

// cmpTimeDesc orders later times first and nil last.
func cmpTimeDesc(x, y *time.Time) int {
	switch {
	case x == nil && y == nil:
		return 0
	case x == nil:
		return 1
	case y == nil:
		return -1
	}
	return y.Compare(*x)
}

// decideOne is one row of the table for one subscription.
func decideOne(s *AccessSubscription, now time.Time, grace time.Duration) verdict {
	v := verdict{sub: s}
	end := s.CurrentPeriodEnd
	switch s.Status {
	case "canceled":
		v.state, v.action = StateEnded, ActionResubscribe
		v.reason = fmt.Sprintf("Subscription %s is canceled.", s.ID)
		return v
	case "incomplete_expired":
		v.state, v.action = StateEnded, ActionResubscribe
		v.reason = fmt.Sprintf("Subscription %s expired before its first payment was completed.", s.ID)
		return v
	case "active", "trialing", "past_due", "incomplete", "unpaid", "paused":
		if s.CancelAtPeriodEnd && end != nil && !end.After(now) {
			v.state, v.action = StateEnded, ActionResubscribe
			v.reason = fmt.Sprintf("Subscription %s was set to cancel at its period end, %s, which has passed (status %s).",
				s.ID, stamp(*end), s.Status)
			return v
		}
	default:
		v.state, v.action = s.Status, ActionNone
		v.reason = fmt.Sprintf("Subscription %s has status %q, which this version of lockstep does not know; it gives no access.",
			s.ID, s.Status)
		return v
	}
	switch s.Status {
	case "active":
		v.access, v.until = true, end
		if s.CancelAtPeriodEnd {
			v.state, v.action = StateGrace, ActionResubscribe
			v.reason = fmt.Sprintf("Subscription %s is set to cancel; access runs until its period end, %s.", s.ID, stampOr(end))
		} else {
			v.state, v.action = StateActive, ActionNone
			v.reason = fmt.Sprintf("Subscription %s is active; its current period ends %s.", s.ID, stampOr(end))
		}
	case "trialing":
		v.state, v.access, v.action = StateTrialing, true, ActionNone
		v.until = s.TrialEnd
		if v.until == nil {
			v.until = end // Stripe ends a trial's period with the trial
		}
		v.reason = fmt.Sprintf("Subscription %s is trialing until %s.", s.ID, stampOr(v.until))
	case "past_due":
		v.state, v.action, v.url = StatePastDue, ActionUpdatePaymentMethod, s.OpenInvoiceURL
		if v.url == "" && payable(s.LatestInvoiceStatus) {
			v.url = s.LatestInvoiceURL
		}
		switch start := s.CurrentPeriodStart; {
		case grace <= 0:
			v.reason = fmt.Sprintf("Subscription %s is past due and no past-due grace is configured.", s.ID)
		case start == nil:
			v.reason = fmt.Sprintf("Subscription %s is past due and the start of its period is not known, so no grace applies.", s.ID)
		case now.Before(start.Add(grace)):
			t := start.Add(grace)
			v.access, v.until = true, &t
			v.reason = fmt.Sprintf("Subscription %s is past due; the past-due grace of %s from its period start keeps access until %s.",
				s.ID, grace, stamp(t))
		default:
			v.reason = fmt.Sprintf("Subscription %s is past due and its past-due grace of %s ended at %s.",
				s.ID, grace, stamp(start.Add(grace)))
		}
	case "incomplete":
		v.state, v.action = StateIncomplete, ActionConfirmPayment
		v.url = s.LatestInvoiceURL
		if !payable(s.LatestInvoiceStatus) || v.url == "" {
			v.url = s.OpenInvoiceURL
		}
		v.reason = fmt.Sprintf("Subscription %s is waiting for its first payment to be confirmed (for example 3-D Secure).", s.ID)
	case "unpaid":
		v.state, v.action = StateUnpaid, ActionUpdatePaymentMethod
		v.url = s.OpenInvoiceURL
		if v.url == "" && payable(s.LatestInvoiceStatus) {
			v.url = s.LatestInvoiceURL
		}
		v.reason = fmt.Sprintf("Subscription %s is unpaid: Stripe's payment retries ran out.", s.ID)
	case "paused":
		v.state, v.action = StatePaused, ActionUpdatePaymentMethod
		v.reason = fmt.Sprintf("Subscription %s is paused (a trial ended without a payment method, or payment collection is paused).", s.ID)
	}
	return v
}

// payable says whether an invoice of this status can still be paid on its
// hosted page ("" when the invoice is not stored: its URL is then unknown
// too).
func payable(status string) bool {
	return status == "open" || status == "uncollectible"
}

func stamp(t time.Time) string { return t.UTC().Format(time.RFC3339) }

func stampOr(t *time.Time) string {
	if t == nil {
		return "(not known)"
	}
	return stamp(*t)
}
