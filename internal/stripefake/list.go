package stripefake

import (
	"cmp"
	"fmt"
	"math"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
)

// Lists answer in Stripe's shape, {"object":"list","url","has_more","data"},
// newest first: created descending, objects created in the same second in
// the reverse order of their first Put. A page is chosen by limit (1-100,
// default 10) and starting_after, the id of an object of the listed kind;
// created[gte]=t filters on created. Only what lockstep's client sends is
// implemented: any other parameter is answered as Stripe answers an unknown
// one (400), so a filter is never silently ignored.

const (
	defaultLimit = 10
	maxLimit     = 100
)

// ordering is the list order of one kind of object. The sorted ids are kept
// until an object is added or its created time changes, so paging through n
// objects costs one sort, and each page costs its own length (plus whatever
// a filter skips).
type ordering struct {
	keys   map[string]orderKey
	seq    uint64
	sorted []string       // nil when stale
	pos    map[string]int // index of each id in sorted
}

type orderKey struct {
	created int64
	seq     uint64 // first Put of the id
}

// put records id with its created time (Unix seconds).
func (o *ordering) put(id string, created int64) {
	if o.keys == nil {
		o.keys = map[string]orderKey{}
	}
	k, ok := o.keys[id]
	if ok && k.created == created {
		return
	}
	if !ok {
		o.seq++
		k.seq = o.seq
	}
	k.created = created
	o.keys[id] = k
	o.sorted, o.pos = nil, nil
}

// list returns the ids in list order and the index of each.
func (o *ordering) list() ([]string, map[string]int) {
	if o.sorted == nil {
		ids := make([]string, 0, len(o.keys))
		for id := range o.keys {
			ids = append(ids, id)
		}
		slices.SortFunc(ids, func(a, b string) int {
			ka, kb := o.keys[a], o.keys[b]
			if c := cmp.Compare(kb.created, ka.created); c != 0 {
				return c
			}
			return cmp.Compare(kb.seq, ka.seq)
		})
		pos := make(map[string]int, len(ids))
		for i, id := range ids {
			pos[id] = i
		}
		o.sorted, o.pos = ids, pos
	}
	return o.sorted, o.pos
}

// listParams are the parameters every list takes.
type listParams struct {
	limit         int
	startingAfter string
	createdMin    int64 // inclusive
	// other holds the endpoint's own parameters by name, the values of an
	// array parameter (types[]=a, types[0]=a) gathered under its bare name.
	other map[string][]string
}

var arrayParam = regexp.MustCompile(`^([a-z_]+)\[\d*\]$`)

// parseList reads the common list parameters from q, and those named in own
// into other. expand parameters are left to expansions.
func parseList(q url.Values, own ...string) (listParams, *stripeError) {
	p := listParams{
		limit:      defaultLimit,
		createdMin: math.MinInt64,
		other:      map[string][]string{},
	}
	keys := make([]string, 0, len(q))
	for k := range q {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, key := range keys {
		vals := q[key]
		last := vals[len(vals)-1]
		name := key
		if m := arrayParam.FindStringSubmatch(key); m != nil {
			name = m[1]
		}
		switch {
		case expandKey.MatchString(key):
		case key == "limit":
			n, err := strconv.Atoi(last)
			switch {
			case err != nil:
				return p, invalidParam(key, "parameter_invalid_integer", "Invalid integer: %s", last)
			case n < 1:
				return p, invalidParam(key, "parameter_invalid_integer", "This value must be greater than or equal to 1.")
			case n > maxLimit:
				return p, invalidParam(key, "parameter_invalid_integer", "This value must be less than or equal to %d (it currently is '%d').", maxLimit, n)
			}
			p.limit = n
		case key == "starting_after":
			p.startingAfter = last
		case key == "created[gte]":
			t, err := strconv.ParseInt(last, 10, 64)
			if err != nil {
				return p, invalidParam(key, "parameter_invalid_integer", "Invalid integer: %s", last)
			}
			p.createdMin = t
		case slices.Contains(own, name):
			p.other[name] = append(p.other[name], vals...)
		default:
			return p, unknownParam(key)
		}
	}
	return p, nil
}

// one returns the value of the endpoint parameter name, "" when absent.
func (p listParams) one(name string) string {
	v := p.other[name]
	if len(v) == 0 {
		return ""
	}
	return v[len(v)-1]
}

// createdIn reports whether created (Unix seconds) passes the created filter.
func (p listParams) createdIn(created int64) bool {
	return created >= p.createdMin
}

// page walks o from the cursor and returns the first limit ids that keep
// accepts, in list order, and whether another accepted id lies beyond them.
// object names the kind in the error for an unknown cursor.
func (p listParams) page(o *ordering, object string, keep func(id string) bool) ([]string, bool, *stripeError) {
	ids, pos := o.list()
	start := 0
	if p.startingAfter != "" {
		i, ok := pos[p.startingAfter]
		if !ok {
			return nil, false, noSuchCursor(object, p.startingAfter, "starting_after")
		}
		start = i + 1
	}
	out := make([]string, 0, min(p.limit, len(ids)))
	more := false
	for i := start; i < len(ids); i++ {
		if !keep(ids[i]) {
			continue
		}
		if len(out) == p.limit {
			more = true
			break
		}
		out = append(out, ids[i])
	}
	return out, more, nil
}

// listJSON is Stripe's list envelope.
func listJSON(url string, more bool, data any) map[string]any {
	return map[string]any{
		"object":   "list",
		"url":      url,
		"has_more": more,
		"data":     data,
	}
}

// The list handlers below run with s.mu held.

// listCustomers answers GET /v1/customers. Deleted customers are not
// listed.
func (s *Server) listCustomers(q url.Values) (map[string]any, int, *stripeError) {
	p, apiErr := parseList(q)
	if apiErr != nil {
		return nil, http.StatusBadRequest, apiErr
	}
	ids, more, apiErr := p.page(&s.customerOrder, "customer", func(id string) bool {
		c := s.customers[id]
		return !c.Deleted && p.createdIn(c.Created.Unix())
	})
	if apiErr != nil {
		return nil, http.StatusBadRequest, apiErr
	}
	data := make([]any, len(ids))
	for i, id := range ids {
		data[i] = CustomerJSON(s.customers[id])
	}
	return listJSON("/v1/customers", more, data), http.StatusOK, nil
}

// subscriptionStatuses are the values of the status filter; "" lists all
// but the ended ones.
var subscriptionStatuses = []string{"active", "all", "canceled", "ended", "incomplete", "incomplete_expired", "past_due", "paused", "trialing", "unpaid"}

// subscriptionListed reports whether a subscription in status passes the
// list's status filter. Stripe's default (no status) leaves out subscriptions
// that have ended, canceled and incomplete_expired; status=ended lists only
// those, status=all everything.
func subscriptionListed(filter, status string) bool {
	ended := status == "canceled" || status == "incomplete_expired"
	switch filter {
	case "":
		return !ended
	case "all":
		return true
	case "ended":
		return ended
	default:
		return status == filter
	}
}

// listSubscriptions answers GET /v1/subscriptions (customer, status), each
// subscription in apiVersion's shape.
func (s *Server) listSubscriptions(q url.Values, apiVersion string) (map[string]any, int, *stripeError) {
	p, apiErr := parseList(q, "customer", "status")
	if apiErr != nil {
		return nil, http.StatusBadRequest, apiErr
	}
	status := p.one("status")
	if status != "" && !slices.Contains(subscriptionStatuses, status) {
		return nil, http.StatusBadRequest, invalidParam("status", "",
			"Invalid status: must be one of %s, or %s",
			strings.Join(subscriptionStatuses[:len(subscriptionStatuses)-1], ", "), subscriptionStatuses[len(subscriptionStatuses)-1])
	}
	customer := p.one("customer")
	ids, more, apiErr := p.page(&s.subscriptionOrder, "subscription", func(id string) bool {
		sub := s.subscriptions[id]
		return p.createdIn(sub.Created.Unix()) &&
			subscriptionListed(status, orDefault(sub.Status, "active")) &&
			(customer == "" || sub.Customer == customer)
	})
	if apiErr != nil {
		return nil, http.StatusBadRequest, apiErr
	}
	data := make([]any, len(ids))
	for i, id := range ids {
		obj, status, apiErr := s.subscription(id, apiVersion)
		if apiErr != nil {
			return nil, status, apiErr
		}
		data[i] = obj
	}
	return listJSON("/v1/subscriptions", more, data), http.StatusOK, nil
}

// listInvoices answers GET /v1/invoices (customer), each invoice in
// apiVersion's shape.
func (s *Server) listInvoices(q url.Values, apiVersion string) (map[string]any, int, *stripeError) {
	p, apiErr := parseList(q, "customer")
	if apiErr != nil {
		return nil, http.StatusBadRequest, apiErr
	}
	customer := p.one("customer")
	ids, more, apiErr := p.page(&s.invoiceOrder, "invoice", func(id string) bool {
		inv := s.invoices[id]
		return p.createdIn(inv.Created.Unix()) && (customer == "" || inv.Customer == customer)
	})
	if apiErr != nil {
		return nil, http.StatusBadRequest, apiErr
	}
	data := make([]any, len(ids))
	for i, id := range ids {
		obj, status, apiErr := s.invoice(id, apiVersion)
		if apiErr != nil {
			return nil, status, apiErr
		}
		data[i] = obj
	}
	return listJSON("/v1/invoices", more, data), http.StatusOK, nil
}

// subscriptionPrice is the price id SubscriptionJSON renders for sub.
func subscriptionPrice(sub Subscription) string {
	if sub.PriceID != "" {
		return sub.PriceID
	}
	return "price_" + derivedID("price:"+sub.ID)
}

func invalidParam(param, code, format string, args ...any) *stripeError {
	return &stripeError{
		Type:    "invalid_request_error",
		Code:    code,
		Message: fmt.Sprintf(format, args...),
		Param:   param,
	}
}

func unknownParam(key string) *stripeError {
	return invalidParam(key, "parameter_unknown", "Received unknown parameter: %s", key)
}

func noSuchCursor(object, id, param string) *stripeError {
	e := noSuch(object, id)
	e.Param = param
	return e
}
