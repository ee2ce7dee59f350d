// Command lockstep-stripefake serves the built-in fake Stripe API
// (internal/stripefake) on a loopback port, for trying lockstep by hand
// without a Stripe account: `make run STRIPE=fake` runs serve under it.
//
//	lockstep-stripefake [-listen ADDR] [-forward-to URL] [-- CMD...]
//
// It forwards the events the fake emits to lockstep's webhook endpoint,
// signed with the webhook secret, as `stripe listen --forward-to` does, and
// prints how to create a paid checkout in the fake, call the success
// endpoint and read the paywall's decision. With CMD, it runs CMD with STRIPE_API_BASE set to the fake and
// STRIPE_SECRET_KEY to the development key, and stops when CMD exits;
// without, it serves until interrupted. It is a command of its own so that
// lockstep's binary links nothing of the fake.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/lockstep/lockstep/config"
	"github.com/lockstep/lockstep/internal/dbtest"
	"github.com/lockstep/lockstep/internal/stripefake"
)

func main() {
	os.Exit(run(os.Args[1:], os.Getenv, os.Stderr))
}

func run(args []string, getenv func(string) string, stderr io.Writer) int {
	fs := flag.NewFlagSet("lockstep-stripefake", flag.ContinueOnError)
	fs.SetOutput(stderr)
	listen := fs.String("listen", "127.0.0.1:12111", "the fake's address (loopback)")
	lockstepAddr := or(getenv("LISTEN_ADDR"), "127.0.0.1:8080")
	forward := fs.String("forward-to", "http://"+lockstepAddr+"/webhooks/stripe", "where to deliver the fake's events (\"\" to keep them)")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: lockstep-stripefake [-listen ADDR] [-forward-to URL] [-- CMD...]\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	cmd := fs.Args()
	if host, _, err := net.SplitHostPort(*listen); err != nil || !loopback(host) {
		fmt.Fprintf(stderr, "lockstep-stripefake: -listen must be a loopback host:port (127.0.0.1:12111), got %q\n", *listen)
		return 2
	}
	log := log.New(stderr, "stripefake: ", 0)
	secret := strings.TrimSpace(strings.Split(getenv("STRIPE_WEBHOOK_SECRET"), ",")[0])
	if secret == "" {
		secret = config.DevWebhookSecret
	}
	// The try-it lines show the development token itself, never another:
	// a real APP_API_TOKEN exported in this shell stays out of the terminal.
	token := "$APP_API_TOKEN"
	if t := getenv("APP_API_TOKEN"); t == "" || t == config.DevAppAPIToken {
		token = config.DevAppAPIToken
	}

	fake, err := stripefake.StartOn(*listen)
	if err != nil {
		log.Printf("%v (choose another -listen)", err)
		return 1
	}
	defer fake.Close()
	log.Printf("fake Stripe API on %s: STRIPE_API_BASE=%s STRIPE_SECRET_KEY=%s (nothing reaches Stripe)", fake.URL, fake.URL, config.DevSecretKey)

	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	if *forward != "" {
		log.Printf("its events go to %s, signed with STRIPE_WEBHOOK_SECRET (as `stripe listen` forwards them)", *forward)
		f := &forwarder{fake: fake.URL, to: *forward, secret: secret, client: &http.Client{Timeout: 10 * time.Second}, log: log}
		go f.loop(ctx)
	}
	fmt.Fprint(stderr, tryIt(fake.URL, "http://"+lockstepAddr, token))

	if len(cmd) == 0 {
		sigs := make(chan os.Signal, 1)
		signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
		<-sigs
		return 0
	}
	return dbtest.RunForeground(log, cmd, "STRIPE_API_BASE="+fake.URL, "STRIPE_SECRET_KEY="+config.DevSecretKey)
}

// tryIt is the walk-through printed at start.
func tryIt(fake, lockstep, token string) string {
	return fmt.Sprintf(`
Try the race by hand (in another terminal, once lockstep says "serving"):
  # a user pays: the fake stores the checkout and sends its two webhooks
  session=$(curl -s -u %[4]s: -d user_id=user_1 %[1]s/_fake/checkout/sessions | sed -n 's/.*"session_id": "\([^"]*\)".*/\1/p')
  # your success page's server tells lockstep, racing the webhooks
  curl -s -H 'Authorization: Bearer %[3]s' -d '{"session_id":"'$session'","user_id":"user_1"}' %[2]s/api/checkout/success
  # the paywall's decision (access, state, until, plan, action): the same the success call answered
  curl -s -H 'Authorization: Bearer %[3]s' %[2]s/api/users/user_1/access
  # the stored rows behind it
  curl -s -H 'Authorization: Bearer %[3]s' %[2]s/api/users/user_1/billing
  (add -d paid=false to the first call for a checkout whose payment is still processing: the
   success call answers 202 /checkout/processing, and access says incomplete, confirm_payment)

`, fake, lockstep, token, config.DevSecretKey)
}

// forwarder delivers the fake's events to lockstep, oldest first, each
// until it is answered 2xx (at most maxTries times).
type forwarder struct {
	fake, to, secret string
	client           *http.Client
	log              *log.Logger
	done             map[string]bool
	tries            map[string]int
}

const maxTries = 20

func (f *forwarder) loop(ctx context.Context) {
	f.done, f.tries = map[string]bool{}, map[string]int{}
	t := time.NewTicker(200 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		events, err := f.list(ctx)
		if err != nil {
			continue
		}
		for i := len(events) - 1; i >= 0; i-- { // the list is newest first
			f.deliver(ctx, events[i])
		}
	}
}

// list reads the fake's latest events.
func (f *forwarder) list(ctx context.Context) ([]json.RawMessage, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, f.fake+"/v1/events?limit=100", nil)
	if err != nil {
		return nil, err
	}
	req.SetBasicAuth(config.DevSecretKey, "")
	res, err := f.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer res.Body.Close()
	var list struct {
		Data []json.RawMessage `json:"data"`
	}
	if err := json.NewDecoder(res.Body).Decode(&list); err != nil {
		return nil, err
	}
	return list.Data, nil
}

func (f *forwarder) deliver(ctx context.Context, raw json.RawMessage) {
	var ev struct {
		ID   string `json:"id"`
		Type string `json:"type"`
	}
	if json.Unmarshal(raw, &ev) != nil || ev.ID == "" || f.done[ev.ID] {
		return
	}
	f.tries[ev.ID]++
	if f.tries[ev.ID] > maxTries {
		return
	}
	payload := []byte(raw)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, f.to, bytes.NewReader(payload))
	if err != nil {
		return
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Stripe-Signature", stripefake.SignatureHeader(payload, f.secret, time.Now()))
	res, err := f.client.Do(req)
	if err != nil {
		if f.tries[ev.ID] == 1 || f.tries[ev.ID] == maxTries {
			f.log.Printf("%s %s -> %v (try %d of %d)", ev.ID, ev.Type, err, f.tries[ev.ID], maxTries)
		}
		return
	}
	body, _ := io.ReadAll(io.LimitReader(res.Body, 512))
	res.Body.Close()
	f.log.Printf("%s %s -> %d %s", ev.ID, ev.Type, res.StatusCode, strings.TrimSpace(string(body)))
	if res.StatusCode < 300 {
		f.done[ev.ID] = true
	}
}

// loopback reports whether host names this machine only.
func loopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func or(v, def string) string {
	if v = strings.TrimSpace(v); v != "" {
		return v
	}
	return def
}
