// Command lockstep-demo plays the race lockstep exists for, on this machine,
// with no Stripe account: lockstep in this process, on a scratch database,
// against the built-in fake Stripe (internal/stripefake), both on loopback
// ports. For one customer each it plays the success page first with the
// webhooks right behind, the webhooks first with the success page behind,
// and a duplicate storm, and prints what each writer did, who waited on
// whose lock (the stripe_customer_locks view, sampled live), the rows that
// are left and where the user lands: the success call's redirect and its
// paywall decision ("access"), beside what GET /api/users/{id}/access reads
// afterwards. A scenario ends equal only when the rows are right and the two
// decisions agree (state, access, until, subscription). It exits 0 when
// every scenario ended equal, 1 (with the reason) otherwise, 2 for a usage
// error.
//
//	DATABASE_URL=postgres://... lockstep-demo [-storm N] [-hold D] [-v]
//
// DATABASE_URL names the server: the demo creates its own database there
// (lockstep_demo_<hex>_<pid>, lockstep's schema) and drops it at the end.
// `make demo` finds or starts the server as `make test` does.
package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/lockstep/lockstep/internal/dbtest"
	"github.com/lockstep/lockstep/sql"
)

// timeLimit bounds the whole run, scratch database included.
const timeLimit = 50 * time.Second

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr))
}

func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("lockstep-demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	o := Options{Out: stdout}
	fs.IntVar(&o.Storm, "storm", 6, "how many times the storm delivers each of its two events (1-50)")
	fs.DurationVar(&o.Hold, "hold", 600*time.Millisecond, "how long the demo's slow writer holds each customer's lock (50ms-1s)")
	verbose := fs.Bool("v", false, "print lockstep's own logs to stderr")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: DATABASE_URL=postgres://... lockstep-demo [-storm N] [-hold D] [-v]\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	switch {
	case fs.NArg() > 0:
		fmt.Fprintf(stderr, "lockstep-demo: unexpected argument %q\n", fs.Arg(0))
		return 2
	case o.Storm < 1 || o.Storm > 50:
		fmt.Fprintf(stderr, "lockstep-demo: -storm must be from 1 to 50, got %d\n", o.Storm)
		return 2
	case o.Hold < 50*time.Millisecond || o.Hold > time.Second:
		fmt.Fprintf(stderr, "lockstep-demo: -hold must be from 50ms to 1s, got %s\n", o.Hold)
		return 2
	}
	if *verbose {
		o.Log = stderr
	}
	server := strings.TrimSpace(getenv("DATABASE_URL"))
	if server == "" {
		fmt.Fprintln(stderr, "lockstep-demo: DATABASE_URL is required (a postgres:// URL of the server for the scratch database); `make demo` sets it")
		return 2
	}

	ctx, cancel := context.WithTimeout(ctx, timeLimit)
	defer cancel()
	name, err := scratchName()
	if err != nil {
		fmt.Fprintf(stderr, "lockstep-demo: %v\n", err)
		return 1
	}
	if err := dbtest.CreateDatabase(server, name); err != nil {
		fmt.Fprintf(stderr, "lockstep-demo: %v\n", err)
		return 1
	}
	defer func() {
		if err := dbtest.DropDatabase(server, name); err != nil {
			fmt.Fprintf(stderr, "lockstep-demo: could not drop the scratch database: %v\n", err)
		}
	}()
	o.DatabaseURL = dbtest.URLFor(server, name)
	o.DatabaseName = name
	if err := sql.Up(o.DatabaseURL); err != nil {
		fmt.Fprintf(stderr, "lockstep-demo: migrate %s: %v\n", name, err)
		return 1
	}

	verdicts, err := Play(ctx, o)
	if err != nil {
		fmt.Fprintf(stderr, "lockstep-demo: %v\n", err)
		return 1
	}
	for _, v := range verdicts {
		if !v.Equal {
			fmt.Fprintf(stderr, "lockstep-demo: scenario %s did not end equal: %s\n", v.Scenario, v.Reason)
			return 1
		}
	}
	return 0
}

// scratchName is lockstep_demo_<8 hex>_<pid>, as dbtest names test databases.
func scratchName() (string, error) {
	var b [4]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("random database name: %w", err)
	}
	return fmt.Sprintf("lockstep_demo_%s_%d", hex.EncodeToString(b[:]), os.Getpid()), nil
}
