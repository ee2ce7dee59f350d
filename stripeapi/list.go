package stripeapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"iter"
	"net/http"
	"strconv"
	"time"

	"github.com/stripe/stripe-go/v76"
	"github.com/stripe/stripe-go/v76/form"
)

// Dated is an object with Stripe's time of the answer that carried it (the
// Date header of the response, whole seconds, UTC).
type Dated[T any] struct {
	Obj T
	At  time.Time
}

// ListParams filters a list. Zero values mean no filter.
type ListParams struct {
	Customer      string    // customer=
	CreatedGTE    time.Time // created[gte]= (unix seconds, rounded down)
	StartingAfter string    // resume after this id (the last one handled)
	PageSize      int       // 0 (or above 100) = 100, Stripe's max
}

// MaxEventTypes is how many types[] Stripe's events list accepts.
const MaxEventTypes = 20

// Customers lists customers, newest first, each dated by its page's Date
// header. Stripe's customers list has no customer filter: with p.Customer
// set, it yields that one customer (a deleted one as its stub), fetched
// by id, unless it is p.StartingAfter, was created before p.CreatedGTE,
// or does not exist.
//
// Like every list here it goes through stripe-go's list iterator, page by
// page, parsing items with lockstep's own parsers. An item that does not
// parse is yielded as an *ItemError (naming it by id, with the reason) and
// the list goes on after it; any other error ends the iteration, yielded
// once. A list must move forward (see ErrListStuck) and ends after
// Options.MaxListPages pages. A consumer that stops early stops the paging.
func (c *Client) Customers(ctx context.Context, p ListParams) iter.Seq2[Dated[*Customer], error] {
	if p.Customer != "" {
		return func(yield func(Dated[*Customer], error) bool) {
			cu, at, err := c.Customer(ctx, p.Customer)
			switch {
			case errors.Is(err, ErrNotFound):
			case err != nil:
				yield(Dated[*Customer]{}, err)
			case cu.ID == p.StartingAfter:
			case !cu.Created.IsZero() && !p.CreatedGTE.IsZero() && cu.Created.Unix() < p.CreatedGTE.Unix():
			default:
				yield(Dated[*Customer]{Obj: cu, At: at}, nil)
			}
		}
	}
	return list(ctx, c, "/v1/customers", p, nil, ParseCustomer, func(cu *Customer) string { return cu.ID })
}

// Subscriptions lists subscriptions of every status (status=all, canceled
// included), newest first, each dated by its page's Date header.
func (c *Client) Subscriptions(ctx context.Context, p ListParams) iter.Seq2[Dated[*Subscription], error] {
	all := func(f *stripe.Filters) { f.AddFilter("status", "", "all") }
	return list(ctx, c, "/v1/subscriptions", p, all, ParseSubscription, func(s *Subscription) string { return s.ID })
}

// Invoices lists invoices, newest first, each dated by its page's Date
// header.
func (c *Client) Invoices(ctx context.Context, p ListParams) iter.Seq2[Dated[*Invoice], error] {
	return list(ctx, c, "/v1/invoices", p, nil, ParseInvoice, func(in *Invoice) string { return in.ID })
}

// Events lists /v1/events created at or after p.CreatedGTE of the given
// types (exact names; none = every type), newest first. Each *Event is
// parsed with ParseEvent from the item's exact raw JSON, which is its
// Payload, as a webhook body would carry it. Stripe's types[] takes up to
// 20 types; with more, Events lists every type and keeps those asked for,
// so that one list keeps its order and p.StartingAfter its meaning. The
// events list has no customer filter: p.Customer set is an error.
func (c *Client) Events(ctx context.Context, p ListParams, types []string) iter.Seq2[*Event, error] {
	if p.Customer != "" {
		return func(yield func(*Event, error) bool) {
			yield(nil, errors.New("list /v1/events: stripe's events list has no customer filter"))
		}
	}
	var want map[string]bool // nil: Stripe filters by types[]
	typesFilter := func(f *stripe.Filters) {
		for _, t := range types {
			f.AddFilter("types[]", "", t)
		}
	}
	if len(types) > MaxEventTypes {
		typesFilter, want = nil, make(map[string]bool, len(types))
		for _, t := range types {
			want[t] = true
		}
	}
	events := list(ctx, c, "/v1/events", p, typesFilter, ParseEvent, func(e *Event) string { return e.ID })
	return func(yield func(*Event, error) bool) {
		for ev, err := range events {
			if err == nil && want != nil && !want[ev.Obj.Type] {
				continue
			}
			var ie *ItemError
			if !yield(ev.Obj, err) || err != nil && !errors.As(err, &ie) {
				return
			}
		}
	}
}

// listItem is one item of a page for stripe-go's iterator, which pages on
// by the ID field of the last item it handed out; err is set for an item
// that did not parse (it still moves the cursor).
type listItem[T any] struct {
	ID string
	Dated[T]
	err error
}

// rawPage is one page of a list as Stripe sent it, each item's raw JSON
// kept for lockstep's parsers.
type rawPage struct {
	stripe.APIResource
	stripe.ListMeta
	Object string            `json:"object"`
	Data   []json.RawMessage `json:"data"`
}

// list yields the items of the list at path, page by page through
// stripe-go's iterator, newest first as Stripe returns them.
func list[T any](ctx context.Context, c *Client, path string, p ListParams, filter func(*stripe.Filters),
	parse func([]byte) (T, error), id func(T) string) iter.Seq2[Dated[T], error] {
	return func(yield func(Dated[T], error) bool) {
		lp := &stripe.ListParams{Context: ctx, Limit: stripe.Int64(pageSize(p.PageSize))}
		if p.StartingAfter != "" {
			lp.StartingAfter = stripe.String(p.StartingAfter)
		}
		if p.Customer != "" {
			lp.Filters.AddFilter("customer", "", p.Customer)
		}
		if !p.CreatedGTE.IsZero() {
			lp.Filters.AddFilter("created", "gte", strconv.FormatInt(p.CreatedGTE.Unix(), 10))
		}
		if filter != nil {
			filter(&lp.Filters)
		}
		fw := newForward(path, p.StartingAfter, c.maxPages)
		it := stripe.GetIter(lp, func(sp *stripe.Params, f *form.Values) ([]any, stripe.ListContainer, error) {
			return c.page(ctx, path, f, sp, fw, func(raw []byte, at time.Time) (any, string, error) {
				obj, err := parse(raw)
				if err != nil {
					rid := rawID(raw)
					return &listItem[T]{ID: rid, err: &ItemError{List: path, ID: rid, Err: err}}, rid, nil
				}
				oid := id(obj)
				return &listItem[T]{ID: oid, Dated: Dated[T]{Obj: obj, At: at}}, oid, nil
			})
		})
		for it.Next() {
			li := it.Current().(*listItem[T])
			if li.err != nil {
				if !yield(Dated[T]{}, li.err) {
					return
				}
				continue
			}
			if !yield(li.Dated, nil) {
				return
			}
		}
		if err := it.Err(); err != nil {
			yield(Dated[T]{}, err)
		}
	}
}

// ItemError is one object of a list that lockstep cannot read (bad JSON
// for its kind, no customer, a bad id): the list yields it and goes on.
type ItemError struct {
	List string // the list's path, /v1/subscriptions
	ID   string // the object's id as Stripe sent it (quoted when shown)
	Err  error  // why; wraps ErrMalformed
}

func (e *ItemError) Error() string {
	return fmt.Sprintf("list %s: object %q: %v", e.List, e.ID, e.Err)
}

func (e *ItemError) Unwrap() error { return e.Err }

// rawID is the "id" of an item that did not parse, "" when it has none
// (bounded, so a hostile one does not fill a log line).
func rawID(raw []byte) string {
	var w struct {
		ID any `json:"id"`
	}
	if json.Unmarshal(raw, &w) != nil {
		return ""
	}
	id, _ := w.ID.(string)
	if len(id) > 64 {
		id = id[:64]
	}
	return id
}

// ErrListStuck means a list did not move forward: a page repeated the
// previous page's items, or was empty yet said more would come, or the
// list went on past Options.MaxListPages. Reading it again would not end.
var ErrListStuck = errors.New("list does not advance")

// DefaultMaxListPages bounds every list: 100,000 pages of 100 objects.
const DefaultMaxListPages = 100_000

// forward checks that a list moves forward, page after page: each page's
// ids are new (none of the previous page's, nor the cursor it was asked
// after), and the list ends within max pages. It keeps one page of ids.
type forward struct {
	path  string
	after string          // the cursor: the previous page's last id
	prev  map[string]bool // the previous page's ids
	pages int
	max   int
}

func newForward(path, after string, max int) *forward {
	if max <= 0 {
		max = DefaultMaxListPages
	}
	f := &forward{path: path, after: after, prev: map[string]bool{}, max: max}
	if after != "" {
		f.prev[after] = true
	}
	return f
}

func (f *forward) where() string {
	if f.after == "" {
		return "the first page"
	}
	return fmt.Sprintf("the page after %q", f.after)
}

// check takes the ids of the next page and whether it says more will come.
func (f *forward) check(ids []string, more bool) error {
	f.pages++
	switch {
	case more && len(ids) == 0:
		return fmt.Errorf("%w: GET %s: %s is empty and says more will come", ErrListStuck, f.path, f.where())
	}
	for _, id := range ids {
		if f.prev[id] {
			return fmt.Errorf("%w: GET %s: %s repeats %q", ErrListStuck, f.path, f.where(), id)
		}
	}
	clear(f.prev)
	for _, id := range ids {
		f.prev[id] = true
	}
	if len(ids) > 0 {
		f.after = ids[len(ids)-1]
	}
	return nil
}

// bound is the error after the page check took, when the list says more
// would come past its bound of pages.
func (f *forward) bound(more bool) error {
	if more && f.pages >= f.max {
		return fmt.Errorf("%w: GET %s: more than %d pages, stopped after %q", ErrListStuck, f.path, f.max, f.after)
	}
	return nil
}

// page fetches one page and makes its items. On an error it returns a page
// without more, so that the iterator stops with the error: with no items,
// but for the last page a bounded list may read.
func (c *Client) page(ctx context.Context, path string, f *form.Values, sp *stripe.Params, fw *forward,
	item func(raw []byte, at time.Time) (any, string, error)) ([]any, stripe.ListContainer, error) {
	pg := &rawPage{}
	if err := c.backend.CallRaw(http.MethodGet, path, c.key, f, sp, pg); err != nil {
		return nil, &rawPage{}, callError(ctx, path, err)
	}
	fail := func(format string, a ...any) ([]any, stripe.ListContainer, error) {
		return nil, &rawPage{}, fmt.Errorf("%w: GET %s: "+format, append([]any{ErrUnavailable, path}, a...)...)
	}
	if pg.LastResponse == nil {
		return fail("empty response")
	}
	at, err := responseTime(pg.LastResponse.Header)
	switch {
	case err != nil:
		return fail("%v", err)
	case pg.Object != "list":
		return fail("answer is not a list")
	}
	items := make([]any, 0, len(pg.Data))
	ids := make([]string, 0, len(pg.Data))
	for _, raw := range pg.Data {
		it, id, err := item(raw, at)
		if err != nil {
			return fail("%v", err)
		}
		if id == "" {
			return fail("an object without an id after %d of the page's", len(ids))
		}
		items = append(items, it)
		ids = append(ids, id)
	}
	if err := fw.check(ids, pg.HasMore); err != nil {
		return nil, &rawPage{}, err
	}
	if err := fw.bound(pg.HasMore); err != nil {
		pg.HasMore = false // hand out this page's items, then the error
		return items, pg, err
	}
	return items, pg, nil
}

func pageSize(n int) int64 {
	if n <= 0 || n > 100 {
		return 100
	}
	return int64(n)
}
