package billing

import (
	"context"
	"errors"
	"fmt"
	"iter"
	"time"

	"github.com/jackc/pgx/v5"
	"golang.org/x/sync/errgroup"

	"github.com/lockstep/lockstep/stripeapi"
)

// Lister is the part of Stripe's API that bulk work reads: sync, verify and
// the sweeper. Each list is newest first, as Stripe returns it, and dates
// each object by the answer that carried it.
type Lister interface {
	Stripe
	Customer(ctx context.Context, id string) (*stripeapi.Customer, time.Time, error)
	Customers(ctx context.Context, p stripeapi.ListParams) iter.Seq2[stripeapi.Dated[*stripeapi.Customer], error]
	Products(ctx context.Context, p stripeapi.ListParams) iter.Seq2[stripeapi.Dated[*stripeapi.Product], error]
	Prices(ctx context.Context, p stripeapi.ListParams) iter.Seq2[stripeapi.Dated[*stripeapi.Price], error]
	Subscriptions(ctx context.Context, p stripeapi.ListParams) iter.Seq2[stripeapi.Dated[*stripeapi.Subscription], error]
	Invoices(ctx context.Context, p stripeapi.ListParams) iter.Seq2[stripeapi.Dated[*stripeapi.Invoice], error]
	Events(ctx context.Context, p stripeapi.ListParams, types []string) iter.Seq2[*stripeapi.Event, error]
}

// SyncOptions says what `lockstep sync` backfills.
type SyncOptions struct {
	Customer string    // one customer; "" for the whole account
	Since    time.Time // only objects created since; zero for all
	// SinceAsked is how Since was asked for ("30d", "2026-01-31"): an
	// interrupted run asked for the same way continues, with its own cut.
	SinceAsked string
	DryRun     bool // say what would change, write nothing (and keep no cursor)
	// InvoicesPerCustomer is how many of each customer's newest invoices
	// are kept when Since is zero (default 10). With Since, every invoice
	// created since is.
	InvoicesPerCustomer int
	// PageSize is the number of objects asked for per list call (default
	// 100, Stripe's largest).
	PageSize int
	// Workers apply the objects of one page at once (default 4); pages
	// are read one after another, so the cursor is always a whole page.
	Workers int
	// Progress, when set, is called after each page and at the end.
	Progress func(SyncProgress)
	// Change, when set, is called for every change written (or, in a dry
	// run, that would be), and Note for every refused mapping.
	Change func(Change)
	Note   func(id, note string)
	// Unreadable, when set, is told of each object Stripe listed that
	// lockstep cannot read (else it is logged); the run goes on to its
	// end, and then returns ErrUnreadable.
	Unreadable func(Unreadable)
	// Owner names this run in the scope's lease (host:pid); one sync per
	// scope runs at a time (ErrSyncRunning).
	Owner string
}

// SyncProgress is where a sync stands.
type SyncProgress struct {
	Phase   string // products, prices, customers, subscriptions, invoices, entitlements, done
	Read    int64  // objects read from Stripe, this run and the runs it resumes
	Written int64  // objects whose stored state changed
	Resumed bool   // this run continues an interrupted one
	Elapsed time.Duration
	ReadNow int64 // objects read by this process, for the rate
}

var syncPhases = []string{"products", "prices", "customers", "subscriptions", "invoices", "entitlements", "done"}

// syncRun is a row of stripe_sync_runs: where a sync stands.
type syncRun struct {
	id      int64
	phase   string
	after   string
	read    int64
	written int64
	resumed bool
	since   time.Time // the cut the run was started with
}

// Sync backfills products and prices (the whole account's, before the
// customers, so that subscriptions find their plan; not for one customer),
// customers, subscriptions and invoices from Stripe's list endpoints into
// the store, and then each stored customer's active entitlements, each
// customer's objects under its lock with the same rules as a webhook, so it
// is safe while webhooks and checkout-success calls race it. Progress is
// kept after every page in stripe_sync_runs: a run that was interrupted
// continues where it stopped, and a run that finishes leaves nothing
// behind. A second full sync changes nothing.
func (b *Bulk) Sync(ctx context.Context, o SyncOptions) (SyncProgress, error) {
	if o.InvoicesPerCustomer <= 0 {
		o.InvoicesPerCustomer = 10
	}
	if o.Workers <= 0 {
		o.Workers = 4
	}
	if o.PageSize <= 0 || o.PageSize > 100 {
		o.PageSize = 100
	}
	scope := "all"
	if o.Customer != "" {
		if !stripeapi.ValidID(o.Customer, "cus_") {
			return SyncProgress{}, fmt.Errorf("sync: %q is not a Stripe customer id", o.Customer)
		}
		scope = o.Customer
	}
	if o.Owner == "" {
		o.Owner = SyncOwner()
	}
	release, err := b.takeSyncLease(ctx, scope, o.Owner)
	if err != nil {
		return SyncProgress{}, err
	}
	defer release()
	run := &syncRun{phase: syncPhases[0]}
	if !o.DryRun {
		var err error
		if run, err = b.openSyncRun(ctx, scope, o.Since, o.SinceAsked); err != nil {
			return SyncProgress{}, err
		}
		o.Since = run.since
	}
	st := &syncState{s: b.Service, api: b.api, o: o, run: run, start: time.Now(), scope: scope, renewed: time.Now()}
	for _, phase := range syncPhases[:len(syncPhases)-1] {
		if phaseIndex(run.phase) > phaseIndex(phase) {
			continue
		}
		if run.phase != phase {
			run.phase, run.after = phase, ""
		}
		var err error
		switch phase {
		case "products":
			err = st.products(ctx)
		case "prices":
			err = st.prices(ctx)
		case "customers":
			err = st.customers(ctx)
		case "subscriptions":
			err = st.subscriptions(ctx)
		case "invoices":
			err = st.invoices(ctx)
		case "entitlements":
			err = st.entitlements(ctx)
		}
		if err != nil {
			return st.progress(), err
		}
	}
	run.phase, run.after = "done", ""
	if err := st.save(ctx, true); err != nil {
		return st.progress(), err
	}
	p := st.progress()
	if o.Progress != nil {
		o.Progress(p)
	}
	return p, unreadableError(st.unreadable)
}

func phaseIndex(p string) int {
	for i, q := range syncPhases {
		if q == p {
			return i
		}
	}
	return 0
}

// openSyncRun continues the unfinished run of this scope and cut (as it
// was asked for), or starts one.
func (s *Service) openSyncRun(ctx context.Context, scope string, since time.Time, asked string) (*syncRun, error) {
	const q = `
WITH found AS (
    SELECT id, phase, after, read, written, true AS resumed, since FROM stripe_sync_runs
    WHERE scope = $1 AND since_asked = $3 AND finished_at IS NULL
), made AS (
    INSERT INTO stripe_sync_runs (scope, since, since_asked, phase)
    SELECT $1, $2, $3, 'products' WHERE NOT EXISTS (SELECT 1 FROM found)
    ON CONFLICT DO NOTHING
    RETURNING id, phase, after, read, written, false AS resumed, since
)
SELECT * FROM found UNION ALL SELECT * FROM made`
	r := &syncRun{}
	var cut *time.Time
	err := s.db.QueryRow(ctx, q, scope, nullTime(since), asked).Scan(&r.id, &r.phase, &r.after, &r.read, &r.written, &r.resumed, &cut)
	if cut != nil {
		r.since = *cut
	}
	if isNoRows(err) {
		return nil, errors.New("sync: another sync of the same scope started at the same moment; run again")
	}
	if err != nil {
		return nil, fmt.Errorf("sync: open run: %w", err)
	}
	return r, nil
}

// syncState is one Sync call at work.
type syncState struct {
	s       *Service
	api     Lister
	o       SyncOptions
	run     *syncRun
	start   time.Time
	readNow int64
	object  string // the kind being listed: product, price, customer, subscription, invoice
	// scope's lease, renewed after a page (see saveProgress)
	scope   string
	renewed time.Time
	// objects listed that could not be read, reported and skipped
	unreadable int
}

func (st *syncState) progress() SyncProgress {
	return SyncProgress{Phase: st.run.phase, Read: st.run.read, Written: st.run.written, Resumed: st.run.resumed,
		Elapsed: time.Since(st.start), ReadNow: st.readNow}
}

// save records where the run stands; finished closes it.
func (st *syncState) save(ctx context.Context, finished bool) error {
	if st.o.DryRun {
		return nil
	}
	const q = `UPDATE stripe_sync_runs SET phase = $2, after = $3, read = $4, written = $5, updated_at = now(),
    finished_at = CASE WHEN $6 THEN now() END
WHERE id = $1`
	// The cursor is written even when ctx is done: it is what lets the
	// next run continue.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	r := st.run
	if _, err := st.s.db.Exec(ctx, q, r.id, r.phase, r.after, r.read, r.written, finished); err != nil {
		return fmt.Errorf("sync: save progress: %w", err)
	}
	return nil
}

func (st *syncState) params() stripeapi.ListParams {
	return stripeapi.ListParams{Customer: st.o.Customer, CreatedGTE: st.o.Since, StartingAfter: st.run.after, PageSize: st.o.PageSize}
}

// pages reads seq a page at a time (the objects of one answer: at most
// PageSize, sharing its Date), applies each page, then saves the cursor: the
// id of the page's last (oldest) object.
func pages[T any](ctx context.Context, st *syncState, seq iter.Seq2[stripeapi.Dated[T], error], id func(T) string,
	apply func(ctx context.Context, d stripeapi.Dated[T]) (int, error)) error {
	var page []stripeapi.Dated[T]
	flush := func() error {
		if len(page) == 0 {
			return nil
		}
		if err := applyPage(ctx, st, page, apply); err != nil {
			return err
		}
		st.run.after = id(page[len(page)-1].Obj)
		page = page[:0]
		return st.saveProgress(ctx)
	}
	for d, err := range seq {
		if u, ok := unreadableOf(st.object, err); ok {
			st.unreadable++
			st.s.reportUnreadable(ctx, st.o.Unreadable, u)
			continue
		}
		if err != nil {
			if ferr := flush(); ferr != nil {
				return ferr
			}
			return err
		}
		if len(page) > 0 && (!d.At.Equal(page[0].At) || len(page) >= st.o.PageSize) {
			if err := flush(); err != nil {
				return err
			}
		}
		page = append(page, d)
	}
	if err := flush(); err != nil {
		return err
	}
	return ctx.Err()
}

// applyPage applies page's objects, up to o.Workers at once (each under its
// own customer's lock), and counts them.
func applyPage[T any](ctx context.Context, st *syncState, page []stripeapi.Dated[T], apply func(ctx context.Context, d stripeapi.Dated[T]) (int, error)) error {
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(st.o.Workers)
	written := make([]int, len(page))
	for i, d := range page {
		g.Go(func() error {
			n, err := apply(gctx, d)
			written[i] = n
			return err
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}
	for _, n := range written {
		st.run.written += int64(n)
	}
	st.run.read += int64(len(page))
	st.readNow += int64(len(page))
	return nil
}

// saveProgress saves the cursor and reports progress.
func (st *syncState) saveProgress(ctx context.Context) error {
	if err := st.save(ctx, false); err != nil {
		return err
	}
	if time.Since(st.renewed) > syncLease/4 {
		st.renewed = time.Now()
		if err := st.s.renewSyncLease(ctx, st.scope, st.o.Owner); err != nil {
			return err
		}
	}
	if st.o.Progress != nil {
		st.o.Progress(st.progress())
	}
	return nil
}

func (st *syncState) opts() ApplyOptions { return ApplyOptions{Writer: "sync", DryRun: st.o.DryRun} }

func (st *syncState) report(changes []Change) int {
	if st.o.Change != nil {
		for _, c := range changes {
			st.o.Change(c)
		}
	}
	if len(changes) > 0 {
		return 1
	}
	return 0
}

func (st *syncState) customers(ctx context.Context) error {
	st.object = "customer"
	apply := func(ctx context.Context, d stripeapi.Dated[*stripeapi.Customer]) (int, error) {
		changes, note, err := st.s.ApplyCustomer(ctx, d, st.opts())
		if err != nil {
			return 0, err
		}
		if note != "" && st.o.Note != nil {
			st.o.Note(d.Obj.ID, note)
		}
		return st.report(changes), nil
	}
	// One customer (p.Customer): the list reads it by id, a deleted one
	// too, which lists omit.
	read := st.run.read
	err := pages(ctx, st, st.api.Customers(ctx, st.params()), customerID, apply)
	if err == nil && st.o.Customer != "" && st.run.read == read && st.run.after == "" && st.o.Since.IsZero() {
		return fmt.Errorf("sync: Stripe has no customer %s", st.o.Customer)
	}
	return err
}

func customerID(c *stripeapi.Customer) string { return c.ID }

func (st *syncState) subscriptions(ctx context.Context) error {
	st.object = "subscription"
	return pages(ctx, st, st.api.Subscriptions(ctx, st.params()), func(s *stripeapi.Subscription) string { return s.ID },
		func(ctx context.Context, d stripeapi.Dated[*stripeapi.Subscription]) (int, error) {
			st.s.noteUnknownStatus(ctx, d.Obj)
			changes, err := st.s.ApplySubscription(ctx, d, st.opts())
			return st.report(changes), err
		})
}

func (st *syncState) applyInvoice(ctx context.Context, d stripeapi.Dated[*stripeapi.Invoice]) (int, error) {
	changes, err := st.s.ApplyInvoice(ctx, d, st.opts())
	return st.report(changes), err
}

// invoices reads the invoices created since the cut, or else each
// customer's newest few: the list is newest first across the account, so
// it keeps the first few of each customer (one list for the account costs
// far fewer calls than one per customer unless customers average over a
// page of invoices). A resumed run forgets the counts, and may keep a few
// more of some customers: harmless.
func (st *syncState) invoices(ctx context.Context) error {
	st.object = "invoice"
	seq := st.api.Invoices(ctx, st.params())
	if st.o.Since.IsZero() {
		seq = newestPerCustomer(seq, st.o.InvoicesPerCustomer)
	}
	return pages(ctx, st, seq, func(i *stripeapi.Invoice) string { return i.ID }, st.applyInvoice)
}

// newestPerCustomer keeps the first n invoices of each customer in seq.
func newestPerCustomer(seq iter.Seq2[stripeapi.Dated[*stripeapi.Invoice], error], n int) iter.Seq2[stripeapi.Dated[*stripeapi.Invoice], error] {
	return func(yield func(stripeapi.Dated[*stripeapi.Invoice], error) bool) {
		seen := map[string]int{}
		for d, err := range seq {
			if err == nil {
				if seen[d.Obj.CustomerID] >= n {
					continue
				}
				seen[d.Obj.CustomerID]++
			}
			if !yield(d, err) {
				return
			}
		}
	}
}

func collectStrings(rows pgx.Rows) ([]string, error) {
	return pgx.CollectRows(rows, pgx.RowTo[string])
}
