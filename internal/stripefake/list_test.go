package stripefake

import (
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"slices"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/stripe/stripe-go/v76"
	"github.com/stripe/stripe-go/v76/client"
)

// listKind is one list endpoint as the pagination tests drive it.
type listKind struct {
	name string
	// put stores the i-th object created at created and returns its id.
	put func(s *Server, i int, created time.Time) string
	// list starts stripe-go's iterator over all of them, 100 a page.
	list func(api *client.API, since time.Time) stripeIter
}

var listKinds = []listKind{
	{
		name: "customers",
		put: func(s *Server, i int, created time.Time) string {
			id := fmt.Sprintf("cus_%05d", i)
			s.PutCustomer(Customer{ID: id, Created: created})
			return id
		},
		list: func(api *client.API, _ time.Time) stripeIter {
			return api.Customers.List(&stripe.CustomerListParams{ListParams: stripe.ListParams{Limit: stripe.Int64(100)}})
		},
	},
	{
		name: "subscriptions",
		put: func(s *Server, i int, created time.Time) string {
			id := fmt.Sprintf("sub_%05d", i)
			statuses := []string{"active", "canceled", "trialing", "incomplete_expired", "past_due"}
			s.PutSubscription(Subscription{ID: id, Customer: "cus_1", Status: statuses[i%len(statuses)], Created: created})
			return id
		},
		list: func(api *client.API, _ time.Time) stripeIter {
			return api.Subscriptions.List(&stripe.SubscriptionListParams{
				ListParams: stripe.ListParams{Limit: stripe.Int64(100)},
				Status:     stripe.String("all"),
			})
		},
	},
	{
		name: "invoices",
		put: func(s *Server, i int, created time.Time) string {
			id := fmt.Sprintf("in_%05d", i)
			s.PutInvoice(Invoice{ID: id, Customer: "cus_1", Status: "paid", Created: created})
			return id
		},
		list: func(api *client.API, _ time.Time) stripeIter {
			return api.Invoices.List(&stripe.InvoiceListParams{ListParams: stripe.ListParams{Limit: stripe.Int64(100)}})
		},
	},
	{
		name: "events",
		put: func(s *Server, i int, created time.Time) string {
			id, _ := s.EmitAt("customer.created", CustomerJSON(Customer{ID: fmt.Sprintf("cus_%05d", i)}), created)
			return id
		},
		list: func(api *client.API, since time.Time) stripeIter {
			return api.Events.List(&stripe.EventListParams{
				ListParams:   stripe.ListParams{Limit: stripe.Int64(100)},
				CreatedRange: &stripe.RangeQueryParams{GreaterThanOrEqual: since.Unix()},
			})
		},
	},
}

// putShuffled puts n objects of kind k, in index order, with created times
// shuffled and three to a second (so both the sort and its tie-break count),
// and returns their ids in the order Stripe lists them: created descending,
// then the later Put first.
func putShuffled(s *Server, k listKind, n int, base time.Time) []string {
	rng := rand.New(rand.NewPCG(1, uint64(n)))
	perm := rng.Perm(n)
	type put struct {
		id      string
		i       int
		created time.Time
	}
	puts := make([]put, n)
	for i := range n {
		created := base.Add(time.Duration(perm[i]/3) * time.Second)
		puts[i] = put{id: k.put(s, i, created), i: i, created: created}
	}
	slices.SortFunc(puts, func(a, b put) int {
		if c := b.created.Compare(a.created); c != 0 {
			return c
		}
		return b.i - a.i
	})
	ids := make([]string, n)
	for i, p := range puts {
		ids[i] = p.id
	}
	return ids
}

// stripe-go's own iterators page through every list and see each object
// exactly once, newest first, in as many requests as there are pages.
func TestListPagination(t *testing.T) {
	t.Parallel()
	base := time.Now().Add(-24 * time.Hour).Truncate(time.Second)
	for _, k := range listKinds {
		for _, n := range []int{0, 1, 100, 101, 250} {
			t.Run(fmt.Sprintf("%s/%d", k.name, n), func(t *testing.T) {
				t.Parallel()
				s := New(t)
				want := putShuffled(s, k, n, base)
				before := s.Requests()
				got := drain(t, k.list(newClient(s), base))
				if diff := cmp.Diff(want, got); diff != "" {
					t.Errorf("ids (-want +got):\n%s", diff)
				}
				if pages, want := s.Requests()-before, max(1, (n+99)/100); pages != want {
					t.Errorf("%d requests, want %d pages", pages, want)
				}
			})
		}
	}
}

// starting_after answers the page just after the cursor, in list order, and
// has_more says whether older objects remain.
func TestListStartingAfter(t *testing.T) {
	t.Parallel()
	s := New(t)
	for i := range 7 {
		s.PutCustomer(Customer{ID: fmt.Sprintf("cus_%d", i), Created: t0.Add(time.Duration(i) * time.Second)})
	}
	// List order: cus_6 ... cus_0.
	for _, tc := range []struct {
		query string
		want  []string
		more  bool
	}{
		{"limit=2", []string{"cus_6", "cus_5"}, true},
		{"limit=2&starting_after=cus_5", []string{"cus_4", "cus_3"}, true},
		{"limit=3&starting_after=cus_3", []string{"cus_2", "cus_1", "cus_0"}, false},
		{"limit=2&starting_after=cus_0", []string{}, false},
		{"", []string{"cus_6", "cus_5", "cus_4", "cus_3", "cus_2", "cus_1", "cus_0"}, false},
	} {
		ids, more := listIDs(t, s, "/v1/customers?"+tc.query, "")
		if diff := cmp.Diff(tc.want, ids); diff != "" || more != tc.more {
			t.Errorf("%s: has_more %v, want %v; ids (-want +got):\n%s", tc.query, more, tc.more, diff)
		}
	}
}

// The default limit is 10, as Stripe's.
func TestListDefaultLimit(t *testing.T) {
	t.Parallel()
	s := New(t)
	for i := range 11 {
		s.PutInvoice(Invoice{ID: fmt.Sprintf("in_%02d", i)})
	}
	ids, more := listIDs(t, s, "/v1/invoices", "")
	if len(ids) != 10 || !more || ids[0] != "in_10" {
		t.Errorf("ids %v, has_more %v; want in_10..in_01 and more", ids, more)
	}
}

func TestListEnvelope(t *testing.T) {
	t.Parallel()
	s := New(t)
	seed(s)
	for _, path := range []string{"/v1/customers", "/v1/subscriptions", "/v1/invoices", "/v1/events"} {
		m := getJSON(t, s, path, "")
		if m["object"] != "list" || m["url"] != path || m["has_more"] != false {
			t.Errorf("%s: envelope %v", path, m)
		}
		if _, ok := m["data"].([]any); !ok {
			t.Errorf("%s: data = %#v, want an array", path, m["data"])
		}
	}
}

func TestListCustomers(t *testing.T) {
	t.Parallel()
	s := New(t)
	s.PutCustomer(Customer{ID: "cus_a", Email: "a@example.com", Created: t0})
	s.PutCustomer(Customer{ID: "cus_gone", Email: "a@example.com", Created: t0.Add(time.Second), Deleted: true})
	s.PutCustomer(Customer{ID: "cus_b", Email: "B@example.com", Created: t0.Add(2 * time.Second)})
	for _, tc := range []struct {
		query string
		want  []string
	}{
		{"", []string{"cus_b", "cus_a"}}, // deleted customers are not listed
		{"starting_after=cus_gone", []string{"cus_a"}},
	} {
		ids, _ := listIDs(t, s, "/v1/customers?"+tc.query, "")
		if diff := cmp.Diff(tc.want, ids); diff != "" {
			t.Errorf("%q (-want +got):\n%s", tc.query, diff)
		}
	}
	var c stripe.Customer
	roundTrip(t, getJSON(t, s, "/v1/customers", "")["data"].([]any)[1].(map[string]any), &c)
	if c.ID != "cus_a" || c.Email != "a@example.com" || c.Created != t0.Unix() {
		t.Errorf("listed customer = %+v", c)
	}
}

func TestListSubscriptionStatus(t *testing.T) {
	t.Parallel()
	s := New(t)
	statuses := []string{"active", "trialing", "past_due", "unpaid", "canceled", "incomplete", "incomplete_expired", "paused", ""}
	for i, st := range statuses {
		customer := "cus_1"
		if i%2 == 1 {
			customer = "cus_2"
		}
		s.PutSubscription(Subscription{ID: "sub_" + orDefault(st, "default"), Customer: customer, Status: st,
			Created: t0.Add(time.Duration(-i) * time.Second)})
	}
	s.PutSubscription(Subscription{ID: "sub_priced", Customer: "cus_3", PriceID: "price_x", Created: t0.Add(-time.Hour)})
	for _, tc := range []struct {
		query string
		want  []string
	}{
		{"", []string{"sub_active", "sub_trialing", "sub_past_due", "sub_unpaid", "sub_incomplete", "sub_paused", "sub_default", "sub_priced"}},
		{"status=all", []string{"sub_active", "sub_trialing", "sub_past_due", "sub_unpaid", "sub_canceled", "sub_incomplete", "sub_incomplete_expired", "sub_paused", "sub_default", "sub_priced"}},
		{"status=ended", []string{"sub_canceled", "sub_incomplete_expired"}},
		{"status=canceled", []string{"sub_canceled"}},
		{"status=active", []string{"sub_active", "sub_default", "sub_priced"}},
		{"status=incomplete_expired", []string{"sub_incomplete_expired"}},
		{"customer=cus_2", []string{"sub_trialing", "sub_unpaid", "sub_incomplete", "sub_paused"}},
		{"customer=cus_1&status=all", []string{"sub_active", "sub_past_due", "sub_canceled", "sub_incomplete_expired", "sub_default"}},
		{"customer=cus_none", []string{}},
		{"status=all&limit=2&starting_after=sub_unpaid", []string{"sub_canceled", "sub_incomplete"}},
	} {
		ids, _ := listIDs(t, s, "/v1/subscriptions?"+tc.query, "")
		if diff := cmp.Diff(tc.want, ids); diff != "" {
			t.Errorf("%q (-want +got):\n%s", tc.query, diff)
		}
	}
}

// Listed subscriptions take the request's version shape, like a single GET.
func TestListSubscriptionShapes(t *testing.T) {
	t.Parallel()
	s := New(t)
	seed(s)
	old := getJSON(t, s, "/v1/subscriptions", DefaultAPIVersion)["data"].([]any)[0].(map[string]any)
	if old["current_period_end"] != float64(periodEnd.Unix()) {
		t.Errorf("2023-10-16: current_period_end = %v", old["current_period_end"])
	}
	basil := getJSON(t, s, "/v1/subscriptions", BasilAPIVersion)["data"].([]any)[0].(map[string]any)
	if _, ok := basil["current_period_end"]; ok {
		t.Errorf("basil: top-level current_period_end present")
	}
	if firstItem(t, basil)["current_period_end"] != float64(periodEnd.Unix()) {
		t.Errorf("basil: item lacks current_period_end")
	}
	if basil["customer"] != "cus_A" {
		t.Errorf("customer = %v", basil["customer"])
	}

	params := &stripe.SubscriptionListParams{Customer: stripe.String("cus_A")}
	it := newClient(s).Subscriptions.List(params)
	if !it.Next() {
		t.Fatalf("no subscription: %v", it.Err())
	}
	if sub := it.Subscription(); sub.ID != "sub_A" || sub.Customer == nil || sub.Customer.ID != "cus_A" || sub.CurrentPeriodEnd != periodEnd.Unix() {
		t.Errorf("stripe-go: subscription = %+v", sub)
	}
}

func TestListInvoices(t *testing.T) {
	t.Parallel()
	s := New(t)
	seed(s)
	s.PutInvoice(Invoice{ID: "in_1", Customer: "cus_A", Subscription: "sub_A", Status: "paid", Created: t0})
	s.PutInvoice(Invoice{ID: "in_2", Customer: "cus_A", Status: "open", Created: t0.Add(time.Second)})
	s.PutInvoice(Invoice{ID: "in_3", Customer: "cus_B", Subscription: "sub_B", Created: t0.Add(2 * time.Second)})
	for _, tc := range []struct {
		query string
		want  []string
	}{
		{"", []string{"in_3", "in_2", "in_1"}},
		{"customer=cus_A", []string{"in_2", "in_1"}},
	} {
		ids, _ := listIDs(t, s, "/v1/invoices?"+tc.query, BasilAPIVersion)
		if diff := cmp.Diff(tc.want, ids); diff != "" {
			t.Errorf("%q (-want +got):\n%s", tc.query, diff)
		}
	}
	params := &stripe.InvoiceListParams{Customer: stripe.String("cus_A")}
	params.Filters.AddFilter("limit", "", "1")
	it := newClient(s).Invoices.List(params)
	if !it.Next() {
		t.Fatalf("no invoice: %v", it.Err())
	}
	if inv := it.Invoice(); inv.ID != "in_2" || inv.Customer == nil || inv.Customer.ID != "cus_A" || inv.Status != "open" {
		t.Errorf("stripe-go: invoice = %+v", inv)
	}
}

func TestListCreatedFilter(t *testing.T) {
	t.Parallel()
	s := New(t)
	for i := range 5 {
		s.PutCustomer(Customer{ID: fmt.Sprintf("cus_%d", i), Created: t0.Add(time.Duration(i) * time.Second)})
	}
	at := func(i int) int64 { return t0.Unix() + int64(i) }
	for _, tc := range []struct {
		query string
		want  []string
	}{
		{fmt.Sprintf("created[gte]=%d", at(3)), []string{"cus_4", "cus_3"}},
		{fmt.Sprintf("created[gte]=%d", at(5)), []string{}},
	} {
		ids, _ := listIDs(t, s, "/v1/customers?"+tc.query, "")
		if diff := cmp.Diff(tc.want, ids); diff != "" {
			t.Errorf("%q (-want +got):\n%s", tc.query, diff)
		}
	}
	it := newClient(s).Customers.List(&stripe.CustomerListParams{CreatedRange: &stripe.RangeQueryParams{GreaterThanOrEqual: at(3)}})
	if diff := cmp.Diff([]string{"cus_4", "cus_3"}, drain(t, it)); diff != "" {
		t.Errorf("stripe-go CreatedRange (-want +got):\n%s", diff)
	}
}

// Bad parameters answer 400 invalid_request_error naming the parameter, as
// Stripe does; an unknown cursor is "No such <object>".
func TestListErrors(t *testing.T) {
	t.Parallel()
	s := New(t)
	seed(s)
	for _, tc := range []struct {
		path, param, message string
	}{
		{"/v1/customers?limit=0", "limit", "This value must be greater than or equal to 1."},
		{"/v1/customers?limit=101", "limit", "This value must be less than or equal to 100 (it currently is '101')."},
		{"/v1/customers?limit=ten", "limit", "Invalid integer: ten"},
		{"/v1/customers?starting_after=cus_nope", "starting_after", "No such customer: 'cus_nope'"},
		{"/v1/subscriptions?starting_after=sub_nope", "starting_after", "No such subscription: 'sub_nope'"},
		{"/v1/invoices?starting_after=in_nope", "starting_after", "No such invoice: 'in_nope'"},
		{"/v1/events?starting_after=evt_nope", "starting_after", "No such event: 'evt_nope'"},
		{"/v1/customers?ending_before=cus_A", "ending_before", "Received unknown parameter: ending_before"},
		{"/v1/customers?created[gt]=1", "created[gt]", "Received unknown parameter: created[gt]"},
		{"/v1/customers?created[gte]=yesterday", "created[gte]", "Invalid integer: yesterday"},
		{"/v1/customers?created[since]=1", "created[since]", "Received unknown parameter: created[since]"},
		{"/v1/customers?status=active", "status", "Received unknown parameter: status"},
		{"/v1/subscriptions?status=gone", "status", "Invalid status: must be one of active, all, canceled, ended, incomplete, incomplete_expired, past_due, paused, trialing, or unpaid"},
		{"/v1/invoices?status=paid", "status", "Received unknown parameter: status"},
		{"/v1/events?type=a", "type", "Received unknown parameter: type"},
	} {
		status, e := getError(t, s, tc.path)
		if status != http.StatusBadRequest || e.Type != stripe.ErrorTypeInvalidRequest || e.Param != tc.param || e.Msg != tc.message {
			t.Errorf("%s: %d %+v, want 400 param %s %q", tc.path, status, e, tc.param, tc.message)
		}
	}

	// Through stripe-go the unknown cursor surfaces as the iterator's error.
	it := newClient(s).Customers.List(&stripe.CustomerListParams{ListParams: stripe.ListParams{StartingAfter: stripe.String("cus_x")}})
	var se *stripe.Error
	if it.Next() || !errors.As(it.Err(), &se) || se.HTTPStatusCode != 400 || se.Code != stripe.ErrorCodeResourceMissing {
		t.Errorf("iterator err = %v", it.Err())
	}
}

// A sync of ten thousand objects is not dominated by the fake: one sort,
// then pages that cost their own length. (Read with a plain decoder:
// stripe-go's own decoding costs more than the fake's rendering.)
func TestListTenThousand(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	t.Parallel()
	s := New(t)
	const n = 10_000
	for i := range n {
		s.PutCustomer(Customer{ID: fmt.Sprintf("cus_%05d", i), Created: t0.Add(time.Duration(i/7) * time.Second)})
	}
	start := time.Now()
	var ids []string
	for after := ""; ; {
		res := get(t, s, "/v1/customers?limit=100&starting_after="+after)
		var page struct {
			HasMore bool `json:"has_more"`
			Data    []struct {
				ID string `json:"id"`
			} `json:"data"`
		}
		err := json.NewDecoder(res.Body).Decode(&page)
		_ = res.Body.Close()
		if err != nil || len(page.Data) == 0 {
			t.Fatalf("page after %q: %d objects, %v", after, len(page.Data), err)
		}
		for _, o := range page.Data {
			ids = append(ids, o.ID)
		}
		if !page.HasMore {
			break
		}
		after = ids[len(ids)-1]
	}
	if len(ids) != n || ids[0] != fmt.Sprintf("cus_%05d", n-1) || ids[n-1] != "cus_00000" {
		t.Fatalf("%d ids, first %s, last %s", len(ids), ids[0], ids[len(ids)-1])
	}
	t.Logf("listed %d customers in %v", n, time.Since(start))
}
