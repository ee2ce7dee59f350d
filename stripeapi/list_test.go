package stripeapi

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// t0 is the fake Stripe's clock at its first answer; each answer after
// it is a second later, so every page carries a Date of its own.
var t0 = time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC)

// fakeItem is one object of a list the fake serves.
type fakeItem struct {
	id, customer, status, typ string
	created                   int64
	raw                       string
}

// listServer speaks Stripe's list shape ({"object":"list","url",
// "has_more","data"}, newest first, limit and starting_after, Stripe's
// default page of 10) for the lists it holds, filters by customer,
// created[gte], types[] and status (without status=all, canceled
// subscriptions are left out, as Stripe does), serves GET /v1/customers/id,
// and dates each answer.
type listServer struct {
	*httptest.Server
	mu      sync.Mutex
	lists   map[string][]fakeItem // by path, newest first
	queries []url.Values          // of each request, in order
	answers int
	noDate  bool
	// stuck, when set, makes every list misbehave: "repeat" answers the
	// first page again whatever the cursor, "overlap" starts each page at
	// the cursor itself, "empty" answers no items and has_more, "endless"
	// says has_more after the last page.
	stuck string
}

func newListServer(t *testing.T) *listServer {
	t.Helper()
	s := &listServer{lists: map[string][]fakeItem{}}
	s.Server = httptest.NewServer(s)
	t.Cleanup(s.Close)
	return s
}

func (s *listServer) requests() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.queries)
}

func (s *listServer) query(i int) url.Values {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.queries[i]
}

func (s *listServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	q := r.URL.Query()
	s.queries = append(s.queries, q)
	if !s.noDate {
		w.Header().Set("Date", t0.Add(time.Duration(s.answers)*time.Second).Format(http.TimeFormat))
	} else {
		w.Header()["Date"] = nil // net/http would add one
	}
	s.answers++
	w.Header().Set("Request-Id", fmt.Sprintf("req_%d", s.answers))
	if dir, id, ok := strings.Cut(strings.TrimPrefix(r.URL.Path, "/v1/"), "/"); ok {
		for _, it := range s.lists["/v1/"+dir] {
			if it.id == id {
				fmt.Fprint(w, it.raw)
				return
			}
		}
		stripeError(w, http.StatusNotFound, "resource_missing", "No such object: "+id)
		return
	}
	items, ok := s.lists[r.URL.Path]
	if !ok {
		stripeError(w, http.StatusNotFound, "", "Unrecognized request URL")
		return
	}
	var gte int64
	if v := q.Get("created[gte]"); v != "" {
		gte, _ = strconv.ParseInt(v, 10, 64)
	}
	var kept []fakeItem
	for _, it := range items {
		switch {
		case q.Has("customer") && it.customer != q.Get("customer"),
			it.created < gte,
			q.Has("types[]") && !slices.Contains(q["types[]"], it.typ),
			it.status == "canceled" && q.Get("status") != "all":
			continue
		}
		kept = append(kept, it)
	}
	start := 0
	if after := q.Get("starting_after"); after != "" && s.stuck != "repeat" {
		i := slices.IndexFunc(kept, func(it fakeItem) bool { return it.id == after })
		if i < 0 {
			stripeError(w, http.StatusBadRequest, "resource_missing", "No such object: '"+after+"' (key sk_test_SECRET)")
			return
		}
		start = i + 1
		if s.stuck == "overlap" {
			start = i
		}
	}
	limit := 10
	if v := q.Get("limit"); v != "" {
		if n, err := strconv.Atoi(v); err != nil || n < 1 || n > 100 {
			stripeError(w, http.StatusBadRequest, "parameter_invalid_integer", "bad limit")
			return
		} else {
			limit = n
		}
	}
	end := min(start+limit, len(kept))
	data := make([]string, 0, end-start)
	for _, it := range kept[start:end] {
		data = append(data, it.raw)
	}
	more := end < len(kept)
	switch s.stuck {
	case "repeat":
		more = true
	case "empty":
		data, more = nil, true
	case "endless":
		more = true
	}
	fmt.Fprintf(w, `{"object":"list","url":%q,"has_more":%t,"data":[%s]}`, r.URL.Path, more, strings.Join(data, ","))
}

// stripeError answers as Stripe does, with a message that quotes a secret
// the client must never repeat.
func stripeError(w http.ResponseWriter, status int, code, msg string) {
	w.WriteHeader(status)
	fmt.Fprintf(w, `{"error":{"type":"invalid_request_error","code":%q,"message":%q}}`, code, msg+" sk_test_SECRET")
}

// created of the i-th newest object: one a minute, newest at t0.
func created(i int) int64 { return t0.Unix() - int64(i)*60 }

func (s *listServer) addCustomers(n int) {
	s.lists["/v1/customers"] = s.lists["/v1/customers"][:0:0]
	for i := range n {
		id := fmt.Sprintf("cus_%04d", i)
		s.lists["/v1/customers"] = append(s.lists["/v1/customers"], fakeItem{id: id, created: created(i),
			raw: fmt.Sprintf(`{"id":%q,"object":"customer","created":%d,"metadata":{"user_id":"u%d"}}`, id, created(i), i)})
	}
}

func (s *listServer) addSubscriptions(n int, customer string) {
	statuses := []string{"active", "canceled", "past_due", "incomplete_expired", "canceled"}
	for i := range n {
		id := fmt.Sprintf("sub_%04d", i)
		st := statuses[i%len(statuses)]
		s.lists["/v1/subscriptions"] = append(s.lists["/v1/subscriptions"], fakeItem{id: id, customer: customer, status: st, created: created(i),
			raw: fmt.Sprintf(`{"id":%q,"object":"subscription","customer":%q,"status":%q,"created":%d,"items":{"data":[]}}`, id, customer, st, created(i))})
	}
}

func (s *listServer) addInvoices(n int, customer string) {
	for i := range n {
		id := fmt.Sprintf("in_%04d", i)
		s.lists["/v1/invoices"] = append(s.lists["/v1/invoices"], fakeItem{id: id, customer: customer, created: created(i),
			raw: fmt.Sprintf(`{"id":%q,"object":"invoice","customer":%q,"status":"paid","created":%d}`, id, customer, created(i))})
	}
}

// addEvents adds n events cycling through types; their bodies carry
// spacing and key order a re-encoding would not keep.
func (s *listServer) addEvents(n int, types ...string) {
	for i := range n {
		id, typ := fmt.Sprintf("evt_%04d", i), types[i%len(types)]
		s.lists["/v1/events"] = append(s.lists["/v1/events"], fakeItem{id: id, typ: typ, created: created(i),
			raw: fmt.Sprintf(`{ "type" : %q, "id":%q,"object":"event","api_version":"2023-10-16","created":%d,
				"data":{"object":{"id":"cus_1","object":"customer"}}}`, typ, id, created(i))})
	}
}

// collect ranges over a list to its end and returns the ids, the dates
// and the errors it yielded.
func collect[T any](seq func(func(Dated[T], error) bool), id func(T) string) (ids []string, ats []time.Time, errs []error) {
	for d, err := range seq {
		if err != nil {
			errs = append(errs, err)
			continue // a second error, or an item after one, is a bug the test sees
		}
		ids = append(ids, id(d.Obj))
		ats = append(ats, d.At)
	}
	return ids, ats, errs
}

func customerID(c *Customer) string { return c.ID }

func TestListPaginates(t *testing.T) {
	t.Parallel()
	for _, n := range []int{0, 1, 100, 101, 250} {
		t.Run(strconv.Itoa(n), func(t *testing.T) {
			t.Parallel()
			srv := newListServer(t)
			srv.addCustomers(n)
			c := NewClient(srv.URL, "sk_test_x", Options{})
			ids, ats, errs := collect(c.Customers(context.Background(), ListParams{}), customerID)
			if len(errs) > 0 {
				t.Fatal(errs)
			}
			var want []string
			var wantAts []time.Time
			for i := range n {
				want = append(want, fmt.Sprintf("cus_%04d", i))
				wantAts = append(wantAts, t0.Add(time.Duration(i/100)*time.Second))
			}
			if diff := cmp.Diff(want, ids); diff != "" {
				t.Fatalf("ids (-want +got)\n%s", diff)
			}
			if diff := cmp.Diff(wantAts, ats); diff != "" {
				t.Fatalf("dates (-want +got)\n%s", diff)
			}
			pages := max(1, (n+99)/100)
			if got := srv.requests(); got != pages {
				t.Fatalf("%d requests, want %d", got, pages)
			}
			for p := range pages {
				q := srv.query(p)
				wantAfter := ""
				if p > 0 {
					wantAfter = fmt.Sprintf("cus_%04d", p*100-1)
				}
				if q.Get("limit") != "100" || q.Get("starting_after") != wantAfter {
					t.Fatalf("page %d query %v", p, q)
				}
			}
		})
	}
}

func TestListResumesAfter(t *testing.T) {
	t.Parallel()
	srv := newListServer(t)
	srv.addInvoices(250, "cus_1")
	c := NewClient(srv.URL, "sk_test_x", Options{})
	ids, _, errs := collect(c.Invoices(context.Background(), ListParams{StartingAfter: "in_0120", PageSize: 50, Customer: "cus_1"}),
		func(in *Invoice) string { return in.ID })
	if len(errs) > 0 {
		t.Fatal(errs)
	}
	if len(ids) != 129 || ids[0] != "in_0121" || ids[128] != "in_0249" {
		t.Fatalf("resumed at %v..., %d ids", ids[:min(len(ids), 3)], len(ids))
	}
	if q := srv.query(0); q.Get("starting_after") != "in_0120" || q.Get("limit") != "50" || q.Get("customer") != "cus_1" {
		t.Fatalf("first query %v", q)
	}
	if got := srv.requests(); got != 3 {
		t.Fatalf("%d requests, want 3", got)
	}
}

func TestSubscriptionsListEveryStatus(t *testing.T) {
	t.Parallel()
	srv := newListServer(t)
	srv.addSubscriptions(12, "cus_1")
	c := NewClient(srv.URL, "sk_test_x", Options{})
	since := time.Unix(created(9), 999e6) // rounded down: the 10th newest is in
	var statuses []string
	for d, err := range c.Subscriptions(context.Background(), ListParams{Customer: "cus_1", CreatedGTE: since, PageSize: 4}) {
		if err != nil {
			t.Fatal(err)
		}
		statuses = append(statuses, d.Obj.Status)
	}
	if len(statuses) != 10 || !slices.Contains(statuses, "canceled") {
		t.Fatalf("statuses %v, want 10 with the canceled", statuses)
	}
	for i := range srv.requests() {
		q := srv.query(i)
		if q.Get("status") != "all" || q.Get("customer") != "cus_1" || q.Get("created[gte]") != strconv.FormatInt(created(9), 10) {
			t.Fatalf("query %d: %v", i, q)
		}
	}
}

func TestEventsFilterAndKeepTheBody(t *testing.T) {
	t.Parallel()
	srv := newListServer(t)
	srv.addEvents(30, "customer.updated", "invoice.paid", "charge.succeeded")
	c := NewClient(srv.URL, "sk_test_x", Options{})
	since := time.Unix(created(20), 0)
	types := []string{"customer.updated", "invoice.paid"}
	var got []string
	for ev, err := range c.Events(context.Background(), ListParams{CreatedGTE: since, PageSize: 5}, types) {
		if err != nil {
			t.Fatal(err)
		}
		i, _ := strconv.Atoi(strings.TrimPrefix(ev.ID, "evt_"))
		if string(ev.Payload) != srv.lists["/v1/events"][i].raw {
			t.Fatalf("%s: payload %s is not the item's raw JSON", ev.ID, ev.Payload)
		}
		if ev.Type == "charge.succeeded" || ev.Created.Unix() < since.Unix() {
			t.Fatalf("%s: %s created %s should be filtered out", ev.ID, ev.Type, ev.Created)
		}
		got = append(got, ev.ID)
	}
	if len(got) != 14 || !slices.IsSortedFunc(got, func(a, b string) int { return strings.Compare(a, b) }) {
		t.Fatalf("events %v, want 14 newest first", got)
	}
	q := srv.query(0)
	if diff := cmp.Diff(types, q["types[]"]); diff != "" || q.Get("created[gte]") != strconv.FormatInt(since.Unix(), 10) {
		t.Fatalf("query %v: types (-want +got)\n%s", q, diff)
	}

	// More types than Stripe's types[] takes: one list of all, filtered here.
	many := append([]string{"invoice.paid"}, make([]string, MaxEventTypes)...)
	for i := range MaxEventTypes {
		many[i+1] = fmt.Sprintf("other.type%d", i)
	}
	before := srv.requests()
	got = got[:0]
	for ev, err := range c.Events(context.Background(), ListParams{PageSize: 100}, many) {
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, ev.Type)
	}
	if len(got) != 10 || slices.ContainsFunc(got, func(s string) bool { return s != "invoice.paid" }) {
		t.Fatalf("types %v, want the 10 invoice.paid", got)
	}
	if q := srv.query(before); q.Has("types[]") {
		t.Fatalf("sent types[] for %d types: %v", len(many), q)
	}
}

func TestListStopsWhenTheConsumerDoes(t *testing.T) {
	t.Parallel()
	srv := newListServer(t)
	srv.addCustomers(250)
	c := NewClient(srv.URL, "sk_test_x", Options{})
	n := 0
	for _, err := range c.Customers(context.Background(), ListParams{PageSize: 10}) {
		if err != nil {
			t.Fatal(err)
		}
		if n++; n == 15 {
			break
		}
	}
	if got := srv.requests(); got != 2 {
		t.Fatalf("%d requests after reading 15 of pages of 10, want 2", got)
	}
}

func TestListErrors(t *testing.T) {
	t.Parallel()
	t.Run("no Date header", func(t *testing.T) {
		t.Parallel()
		srv := newListServer(t)
		srv.addCustomers(3)
		srv.noDate = true
		ids, _, errs := collect(NewClient(srv.URL, "sk_test_x", Options{}).Customers(context.Background(), ListParams{}), customerID)
		if len(ids) != 0 || len(errs) != 1 || !errors.Is(errs[0], ErrUnavailable) || !strings.Contains(errs[0].Error(), "Date") {
			t.Fatalf("ids %v errs %v, want one ErrUnavailable about the Date", ids, errs)
		}
	})
	t.Run("stripe's error", func(t *testing.T) {
		t.Parallel()
		srv := newListServer(t)
		srv.addCustomers(3)
		ids, _, errs := collect(NewClient(srv.URL, "sk_test_x", Options{}).Customers(context.Background(), ListParams{StartingAfter: "cus_gone"}), customerID)
		if len(ids) != 0 || len(errs) != 1 || !errors.Is(errs[0], ErrUnavailable) {
			t.Fatalf("ids %v errs %v, want one ErrUnavailable", ids, errs)
		}
		if msg := errs[0].Error(); strings.Contains(msg, "SECRET") || strings.Contains(msg, "No such") ||
			!strings.Contains(msg, "HTTP 400 invalid_request_error resource_missing (request req_1)") {
			t.Fatalf("error %q: want status, type, code and request id, never Stripe's message", msg)
		}
	})
	t.Run("a bad item is reported by id and the list goes on", func(t *testing.T) {
		t.Parallel()
		srv := newListServer(t)
		srv.addCustomers(5)
		srv.lists["/v1/customers"][3] = fakeItem{id: "cus_bad'", raw: `{"id":"cus_bad'","object":"customer"}`}
		srv.lists["/v1/customers"][1].raw = `{"id":"cus_0001","object":"customer","created":"yesterday"}`
		ids, _, errs := collect(NewClient(srv.URL, "sk_test_x", Options{}).Customers(context.Background(), ListParams{PageSize: 2}), customerID)
		var ie *ItemError
		if diff := cmp.Diff([]string{"cus_0000", "cus_0002", "cus_0004"}, ids); diff != "" || len(errs) != 2 ||
			!errors.As(errs[0], &ie) || ie.ID != "cus_0001" || !errors.Is(errs[0], ErrMalformed) ||
			!errors.As(errs[1], &ie) || ie.ID != "cus_bad'" || !strings.Contains(errs[1].Error(), `"cus_bad'"`) {
			t.Fatalf("ids %v errs %v, want the three good ones and both bad ones by id", ids, errs)
		}
		if got := srv.requests(); got != 3 {
			t.Fatalf("%d requests, want 3 (the bad items move the cursor too)", got)
		}
	})
	t.Run("a subscription without a customer is an item error", func(t *testing.T) {
		t.Parallel()
		srv := newListServer(t)
		srv.addSubscriptions(3, "cus_1")
		srv.lists["/v1/subscriptions"][1].raw = strings.Replace(srv.lists["/v1/subscriptions"][1].raw, `"customer":"cus_1"`, `"customer":null`, 1)
		ids, _, errs := collect(NewClient(srv.URL, "sk_test_x", Options{}).Subscriptions(context.Background(), ListParams{}),
			func(s *Subscription) string { return s.ID })
		var ie *ItemError
		if len(ids) != 2 || len(errs) != 1 || !errors.As(errs[0], &ie) || ie.ID != srv.lists["/v1/subscriptions"][1].id ||
			!strings.Contains(errs[0].Error(), "customer") {
			t.Fatalf("ids %v errs %v, want 2 and the one without a customer", ids, errs)
		}
	})
	t.Run("events have no customer filter", func(t *testing.T) {
		t.Parallel()
		srv := newListServer(t)
		n := 0
		for _, err := range NewClient(srv.URL, "sk_test_x", Options{}).Events(context.Background(), ListParams{Customer: "cus_1"}, nil) {
			if err == nil {
				t.Fatal("listed events by customer")
			}
			n++
		}
		if n != 1 || srv.requests() != 0 {
			t.Fatalf("%d errors, %d requests; want 1 and 0", n, srv.requests())
		}
	})
}

func TestCustomersOfOneCustomer(t *testing.T) {
	t.Parallel()
	srv := newListServer(t)
	srv.addCustomers(3)
	c := NewClient(srv.URL, "sk_test_x", Options{})
	for _, tc := range []struct {
		p    ListParams
		want []string
	}{
		{ListParams{Customer: "cus_0001"}, []string{"cus_0001"}},
		{ListParams{Customer: "cus_0001", CreatedGTE: time.Unix(created(0), 0)}, nil},
		{ListParams{Customer: "cus_0001", StartingAfter: "cus_0001"}, nil},
		{ListParams{Customer: "cus_0404"}, nil},
	} {
		ids, ats, errs := collect(c.Customers(context.Background(), tc.p), customerID)
		if len(errs) > 0 || !slices.Equal(ids, tc.want) {
			t.Errorf("%+v: ids %v errs %v, want %v", tc.p, ids, errs, tc.want)
		}
		if len(ats) > 0 && ats[0].IsZero() {
			t.Errorf("%+v: undated", tc.p)
		}
	}
}

// A list that does not move forward stops with ErrListStuck naming the
// list and the id, after at most the pages it takes to see it.
func TestListMustMoveForward(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		stuck, want string
		pages       int // requests before the error
		items       int // items yielded before it
	}{
		{"repeat", `GET /v1/customers: the page after "cus_0009" repeats "cus_0000"`, 2, 10},
		{"overlap", `GET /v1/customers: the page after "cus_0009" repeats "cus_0009"`, 2, 10},
		{"empty", `GET /v1/customers: the first page is empty and says more will come`, 1, 0},
		{"endless", `GET /v1/customers: the page after "cus_0024" is empty and says more will come`, 4, 25},
	} {
		t.Run(tc.stuck, func(t *testing.T) {
			t.Parallel()
			srv := newListServer(t)
			srv.addCustomers(25)
			srv.stuck = tc.stuck
			ids, _, errs := collect(NewClient(srv.URL, "sk_test_x", Options{}).Customers(context.Background(), ListParams{PageSize: 10}), customerID)
			if len(errs) != 1 || !errors.Is(errs[0], ErrListStuck) || !strings.Contains(errs[0].Error(), tc.want) {
				t.Fatalf("errs %v, want one ErrListStuck saying %s", errs, tc.want)
			}
			if len(ids) != tc.items || srv.requests() != tc.pages {
				t.Fatalf("%d items in %d requests, want %d in %d", len(ids), srv.requests(), tc.items, tc.pages)
			}
		})
	}
	t.Run("a resumed list that answers its cursor", func(t *testing.T) {
		t.Parallel()
		srv := newListServer(t)
		srv.addCustomers(25)
		srv.stuck = "overlap"
		_, _, errs := collect(NewClient(srv.URL, "sk_test_x", Options{}).Customers(context.Background(),
			ListParams{PageSize: 10, StartingAfter: "cus_0004"}), customerID)
		if len(errs) != 1 || !errors.Is(errs[0], ErrListStuck) || !strings.Contains(errs[0].Error(), `repeats "cus_0004"`) {
			t.Fatalf("errs %v", errs)
		}
	})
	t.Run("every list is bounded", func(t *testing.T) {
		t.Parallel()
		srv := newListServer(t)
		srv.addCustomers(25)
		c := NewClient(srv.URL, "sk_test_x", Options{MaxListPages: 2})
		ids, _, errs := collect(c.Customers(context.Background(), ListParams{PageSize: 10}), customerID)
		if len(ids) != 20 || len(errs) != 1 || !errors.Is(errs[0], ErrListStuck) || !strings.Contains(errs[0].Error(), `more than 2 pages, stopped after "cus_0019"`) {
			t.Fatalf("ids %d errs %v", len(ids), errs)
		}
		ids, _, errs = collect(NewClient(srv.URL, "sk_test_x", Options{MaxListPages: 3}).Customers(context.Background(), ListParams{PageSize: 10}), customerID)
		if len(ids) != 25 || len(errs) != 0 {
			t.Fatalf("a list of exactly the bound: %d ids, errs %v", len(ids), errs)
		}
	})
	t.Run("events", func(t *testing.T) {
		t.Parallel()
		srv := newListServer(t)
		srv.addEvents(30, "customer.updated")
		srv.stuck = "repeat"
		n := 0
		var last error
		for _, err := range NewClient(srv.URL, "sk_test_x", Options{}).Events(context.Background(), ListParams{}, []string{"customer.updated"}) {
			if err != nil {
				last = err
				continue
			}
			n++
		}
		if n != 30 || !errors.Is(last, ErrListStuck) || srv.requests() != 2 {
			t.Fatalf("events: %d, then %v after %d requests; want 30, then stuck after 2", n, last, srv.requests())
		}
	})
}
