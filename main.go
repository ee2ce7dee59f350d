// Command lockstep keeps a Postgres copy of each user's Stripe billing state
// correct while webhooks and the checkout-success page race for the same
// customer. See the README.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/lockstep/lockstep/app"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := app.Run(ctx, os.Args[1:], app.Env{Getenv: os.Getenv, Stdout: os.Stdout, Stderr: os.Stderr})
	stop()
	if err != nil && err.Error() != "" {
		fmt.Fprintln(os.Stderr, "lockstep:", err)
	}
	os.Exit(app.ExitCode(err))
}
