package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lockstep/lockstep/internal/stripefake"
)

// The bench's requests: new webhook events, redeliveries of events already
// sent, and checkout-success calls.
const (
	opEvent = iota
	opDuplicate
	opSuccess
)

// EventType is the webhook event the load sends: a subscription change, the
// event Stripe sends most.
const EventType = "customer.subscription.updated"

// subscriptionCreated is the fixed creation time of every bench subscription.
var subscriptionCreated = time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)

// eventTemplate renders a signed event body quickly: the JSON of one event,
// cut where the event id, customer id, subscription id and created time go.
type eventTemplate struct {
	parts []string // len(holes)+1 literal pieces
	holes []int    // holeEvent, holeCustomer, holeSubscription, holeCreated
}

const (
	holeEvent = iota
	holeCustomer
	holeSubscription
	holeCreated
)

// newEventTemplate renders a customer.subscription.updated event with
// stripefake's renderers (the shape Stripe sends, indented) and marks its
// variable parts.
func newEventTemplate() *eventTemplate {
	markers := []string{holeEvent: "evt_TMPLxEVT", holeCustomer: "cus_TMPLxCUS", holeSubscription: "sub_TMPLxSUB", holeCreated: "1999999999"}
	obj := stripefake.SubscriptionJSON(stripefake.Subscription{
		ID: markers[holeSubscription], Customer: markers[holeCustomer], Status: "active", PriceID: "price_bench",
		Created: subscriptionCreated, CurrentPeriodEnd: subscriptionCreated.AddDate(0, 1, 0),
	}, stripefake.DefaultAPIVersion)
	body := string(stripefake.EventJSON(markers[holeEvent], EventType, time.Unix(1999999999, 0), "", obj))
	t := &eventTemplate{}
	for {
		at, which := -1, -1
		for i, m := range markers {
			if j := strings.Index(body, m); j >= 0 && (at < 0 || j < at) {
				at, which = j, i
			}
		}
		if at < 0 {
			t.parts = append(t.parts, body)
			return t
		}
		t.parts = append(t.parts, body[:at])
		t.holes = append(t.holes, which)
		body = body[at+len(markers[which]):]
	}
}

// render appends the event to dst, its id being idPrefix followed by n:
// the load's event ids, without making a string.
func (t *eventTemplate) render(dst []byte, idPrefix string, n int64, customerID, subscriptionID string, created int64) []byte {
	for i, h := range t.holes {
		dst = append(dst, t.parts[i]...)
		switch h {
		case holeEvent:
			dst = strconv.AppendInt(append(dst, idPrefix...), n, 10)
		case holeCustomer:
			dst = append(dst, customerID...)
		case holeSubscription:
			dst = append(dst, subscriptionID...)
		case holeCreated:
			dst = strconv.AppendInt(dst, created, 10)
		}
	}
	return append(dst, t.parts[len(t.parts)-1]...)
}

func (t *eventTemplate) size() int {
	n := 0
	for _, p := range t.parts {
		n += len(p)
	}
	return n + 64*len(t.holes)
}

// sentEvent is enough to send an event again, byte for byte.
type sentEvent struct {
	n        int64
	customer int32
	created  int64
}

// workload makes the requests of one bench run. Its customers, their
// subscriptions and checkout sessions are named after the run, so runs never
// collide, and put into the fake Stripe the target reads.
type workload struct {
	run       string
	customers []customer
	hot       bool
	storm     bool
	dup       float64
	success   float64
	tmpl      *eventTemplate
	idPrefix  string // of the run's event ids, followed by the event's number
	base      int64  // created time of each customer's first event
	next      atomic.Int64

	recentMu sync.Mutex
	recent   [1024]sentEvent
	nrecent  int
}

type customer struct {
	id, sub, session, user string
	seq                    atomic.Int64 // events sent for it: its next event is newer
}

func newWorkload(run string, n int, hot, storm bool, dup, success float64, fake *stripefake.Server) *workload {
	w := &workload{run: run, hot: hot, storm: storm, dup: dup, success: success, tmpl: newEventTemplate(),
		// Event times start a day ahead, so each event is newer than a
		// snapshot a checkout-success call fetched (at now) and is applied,
		// the costliest path and the one the reference runs.
		base: time.Now().Add(24 * time.Hour).Unix()}
	w.idPrefix = "evt_bench_" + run + "_"
	if hot && !storm {
		n = 1
	}
	w.customers = make([]customer, n)
	for i := range w.customers {
		c := &w.customers[i]
		c.id = fmt.Sprintf("cus_bench_%s_%d", run, i)
		c.sub = fmt.Sprintf("sub_bench_%s_%d", run, i)
		c.session = fmt.Sprintf("cs_bench_%s_%d", run, i)
		c.user = fmt.Sprintf("user_bench_%s_%d", run, i)
		fake.PutSubscription(stripefake.Subscription{ID: c.sub, Customer: c.id, Status: "active",
			PriceID: "price_bench", Created: subscriptionCreated, CurrentPeriodEnd: subscriptionCreated.AddDate(0, 1, 0)})
		fake.PutSession(stripefake.Session{ID: c.session, Customer: c.id, Subscription: c.sub,
			ClientReferenceID: c.user, Status: "complete", PaymentStatus: "paid", Created: subscriptionCreated})
	}
	return w
}

// eventCustomer picks the customer of a webhook: the hot one (0) under -hot
// and -storm, else any.
func (w *workload) eventCustomer() int {
	if w.hot || w.storm {
		return 0
	}
	return rand.IntN(len(w.customers))
}

// successCustomer picks the customer of a checkout-success call: under
// -storm any but the hot one.
func (w *workload) successCustomer() int {
	if w.storm {
		return 1 + rand.IntN(len(w.customers)-1)
	}
	return w.eventCustomer()
}

// newEvent makes a new event for customer ci, newer than its last.
func (w *workload) newEvent(ci int) sentEvent {
	c := &w.customers[ci]
	ev := sentEvent{n: w.next.Add(1), customer: int32(ci), created: w.base + c.seq.Add(1)}
	w.recentMu.Lock()
	w.recent[w.nrecent%len(w.recent)] = ev
	w.nrecent++
	w.recentMu.Unlock()
	return ev
}

// redelivery picks a recently sent event to deliver again, or reports false
// when none was sent yet.
func (w *workload) redelivery() (sentEvent, bool) {
	w.recentMu.Lock()
	defer w.recentMu.Unlock()
	n := min(w.nrecent, len(w.recent))
	if n == 0 {
		return sentEvent{}, false
	}
	return w.recent[rand.IntN(n)], true
}

func (w *workload) body(ev sentEvent) []byte {
	return w.appendBody(make([]byte, 0, w.tmpl.size()), ev)
}

// appendBody appends ev's body to dst: the load renders each event into its
// worker's one buffer.
func (w *workload) appendBody(dst []byte, ev sentEvent) []byte {
	c := &w.customers[ev.customer]
	return w.tmpl.render(dst, w.idPrefix, ev.n, c.id, c.sub, ev.created)
}

// samplePayload is an event as the load sends it, for the reference's
// ledger rows.
func (w *workload) samplePayload() []byte {
	return w.body(sentEvent{n: 1, customer: 0, created: w.base})
}

// target is the lockstep under load.
type target struct {
	base   string
	secret string
	token  string
	// metricsToken is sent to /metrics when set (METRICS_TOKEN).
	metricsToken string
	client       *http.Client // waitReady, the metrics scrapes, and the load on a target httpConn does not speak (https)
}

func newHTTPClient(conns int) *http.Client {
	return &http.Client{
		Timeout: 30 * time.Second,
		Transport: &http.Transport{
			Proxy:               nil, // loopback only, whatever HTTP_PROXY says
			MaxIdleConns:        conns + 16,
			MaxIdleConnsPerHost: conns + 16,
			IdleConnTimeout:     90 * time.Second,
			DisableCompression:  true,
		},
	}
}

// answer is one request's outcome.
type answer struct {
	code int
	dup  bool // a webhook answered "duplicate"
}

var duplicateMarker = []byte(`"duplicate"`)

// post sends a request through t.client, net/http's.
func (t *target) post(ctx context.Context, path string, body []byte, header func(http.Header)) answer {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, t.base+path, bytes.NewReader(body))
	if err != nil {
		return answer{}
	}
	req.Header.Set("Content-Type", "application/json")
	header(req.Header)
	res, err := t.client.Do(req)
	if err != nil {
		return answer{}
	}
	defer res.Body.Close()
	b, err := io.ReadAll(io.LimitReader(res.Body, 1<<20))
	if err != nil {
		return answer{}
	}
	return answer{code: res.StatusCode, dup: bytes.Contains(b, duplicateMarker)}
}

// sender sends one load worker's requests, one at a time: on its own
// keep-alive connection (httpConn, so that the load generator costs little
// of the CPU the bench measures), or through t.client on a target httpConn
// does not speak.
type sender struct {
	t    *target
	conn *httpConn // nil: t.client
	body []byte    // the request being sent; reused
	auth string    // the Authorization header
}

func (t *target) newSender() *sender {
	s := &sender{t: t, auth: "Bearer " + t.token}
	if c, err := newHTTPConn(t.base); err == nil {
		s.conn = c
	}
	return s
}

func (s *sender) close() {
	if s.conn != nil {
		_ = s.conn.Close()
	}
}

// post sends s.body to path with the header name: value.
func (s *sender) post(ctx context.Context, path, name, value string) answer {
	if s.conn == nil {
		return s.t.post(ctx, path, s.body, func(h http.Header) { h.Set(name, value) })
	}
	code, b, err := s.conn.Post(ctx, path, "application/json", name, value, s.body)
	if err != nil {
		return answer{}
	}
	return answer{code: code, dup: bytes.Contains(b, duplicateMarker)}
}

// webhook sends s.body, an event, signed now.
func (s *sender) webhook(ctx context.Context) answer {
	sig := stripefake.SignatureHeader(s.body, s.t.secret, time.Now())
	return s.post(ctx, "/webhooks/stripe", "Stripe-Signature", sig)
}

func (s *sender) checkoutSuccess(ctx context.Context, c *customer) answer {
	b := append(s.body[:0], `{"session_id":"`...)
	b = append(b, c.session...)
	b = append(b, `","user_id":"`...)
	b = append(b, c.user...)
	s.body = append(b, `"}`...)
	return s.post(ctx, "/api/checkout/success", "Authorization", s.auth)
}

// waitReady polls /readyz until the target answers 200.
func (t *target) waitReady(ctx context.Context, within time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, within)
	defer cancel()
	var last string
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, t.base+"/readyz", nil)
		res, err := t.client.Do(req)
		if err == nil {
			b, _ := io.ReadAll(io.LimitReader(res.Body, 4096))
			res.Body.Close()
			if res.StatusCode == http.StatusOK {
				return nil
			}
			last = fmt.Sprintf("status %d: %s", res.StatusCode, strings.TrimSpace(string(b)))
		} else {
			last = err.Error()
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("target %s is not ready after %s: %s", t.base, within, last)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// tally is what one worker saw.
type tally struct {
	webhook, success             []time.Duration
	webhookStatus, successStatus map[string]int
	processed, duplicate         int
}

func newTally() *tally {
	return &tally{webhookStatus: map[string]int{}, successStatus: map[string]int{}}
}

func (t *tally) merge(o *tally) {
	t.webhook = append(t.webhook, o.webhook...)
	t.success = append(t.success, o.success...)
	for k, v := range o.webhookStatus {
		t.webhookStatus[k] += v
	}
	for k, v := range o.successStatus {
		t.successStatus[k] += v
	}
	t.processed += o.processed
	t.duplicate += o.duplicate
}

// live counts for the progress line.
type live struct {
	requests atomic.Int64
	errors   atomic.Int64
}

// loadRun is one concurrency level's load.
type loadRun struct {
	w           *workload
	t           *target
	concurrency int
	duration    time.Duration
	maxRequests int64 // 0: no cap
	issued      atomic.Int64
	live        live
}

// ticket reports whether another request may start.
func (r *loadRun) ticket() bool {
	if r.maxRequests <= 0 {
		return true
	}
	return r.issued.Add(1) <= r.maxRequests
}

// run drives the load until the duration is over, the request cap is
// reached or ctx is done, then waits for the requests in flight. Requests
// themselves end only with ctx (or the client's timeout), so the deadline
// does not turn them into errors.
func (r *loadRun) run(ctx context.Context) (*tally, time.Duration) {
	stop, cancel := context.WithTimeout(ctx, r.duration)
	defer cancel()
	workers := r.concurrency
	if r.w.storm {
		workers++ // the success-call goroutine
	}
	tallies := make([]*tally, workers)
	var wg sync.WaitGroup
	start := time.Now()
	for i := range workers {
		tallies[i] = newTally()
		wg.Add(1)
		go func() {
			defer wg.Done()
			r.worker(ctx, stop, tallies[i], r.w.storm && i == r.concurrency)
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	all := newTally()
	for _, t := range tallies {
		all.merge(t)
	}
	return all, elapsed
}

func (r *loadRun) worker(ctx, stop context.Context, t *tally, successOnly bool) {
	s := r.t.newSender()
	defer s.close()
	for stop.Err() == nil && r.ticket() {
		op := opEvent
		switch {
		case successOnly:
			op = opSuccess
		case r.w.storm:
			if rand.Float64() < r.w.dup {
				op = opDuplicate
			}
		case rand.Float64() < r.w.success:
			op = opSuccess
		case rand.Float64() < r.w.dup:
			op = opDuplicate
		}
		var ans answer
		var d time.Duration
		if op == opSuccess {
			c := &r.w.customers[r.w.successCustomer()]
			start := time.Now()
			ans = s.checkoutSuccess(ctx, c)
			d = time.Since(start)
		} else {
			ev, ok := sentEvent{}, false
			if op == opDuplicate {
				ev, ok = r.w.redelivery()
			}
			if !ok {
				ev = r.w.newEvent(r.w.eventCustomer())
			}
			s.body = r.w.appendBody(s.body[:0], ev)
			start := time.Now()
			ans = s.webhook(ctx)
			d = time.Since(start)
		}
		if ctx.Err() != nil {
			return // interrupted: the request's answer says nothing of lockstep
		}
		if op == opSuccess {
			t.success = append(t.success, d)
			t.successStatus[statusKey(ans.code)]++
		} else {
			t.webhook = append(t.webhook, d)
			t.webhookStatus[statusKey(ans.code)]++
			if ans.code == http.StatusOK {
				if ans.dup {
					t.duplicate++
				} else {
					t.processed++
				}
			}
		}
		r.live.requests.Add(1)
		if isError(statusKey(ans.code)) {
			r.live.errors.Add(1)
		}
	}
}
