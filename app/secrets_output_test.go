package app_test

import (
	"context"
	"fmt"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/lockstep/lockstep/app"
	"github.com/lockstep/lockstep/internal/dbtest"
	"github.com/lockstep/lockstep/internal/stripefake"
)

// Every command that prints the configuration, a URL or an error that may
// quote one is run with a database password in each shape libpq and pgx
// take it, against a reachable database (trust authentication: the password
// is sent and ignored) and an unreachable one; neither its stdout, its
// stderr (logs included) nor its error holds the password.
func TestNoCommandPrintsTheDatabasePassword(t *testing.T) {
	t.Parallel()
	const pw = "Hunter2Secret"
	db := dbtest.New(t)
	fake := stripefake.New(t)
	u, err := url.Parse(db.URL)
	if err != nil || u.Host == "" {
		t.Fatalf("the test database URL is not a postgres:// URL with a host: %v", err)
	}
	user := u.User.Username()
	dbname := strings.TrimPrefix(u.Path, "/")

	type target struct{ name, hostport string }
	targets := []target{{"reachable", u.Host}, {"unreachable", "127.0.0.1:1"}}
	shapes := func(hostport string) map[string]string {
		host, port, _ := strings.Cut(hostport, ":")
		return map[string]string{
			"userinfo":             fmt.Sprintf("postgres://%s:%s@%s/%s?sslmode=disable&connect_timeout=2", user, pw, hostport, dbname),
			"query password":       fmt.Sprintf("postgres://%s@%s/%s?sslmode=disable&connect_timeout=2&password=%s", user, hostport, dbname, pw),
			"query first":          fmt.Sprintf("postgres://%s@%s/%s?password=%s&sslmode=disable&connect_timeout=2", user, hostport, dbname, pw),
			"query sslpassword":    fmt.Sprintf("postgres://%s@%s/%s?sslmode=disable&connect_timeout=2&sslpassword=%s", user, hostport, dbname, pw),
			"keyword/value":        fmt.Sprintf("host=%s port=%s user=%s password=%s dbname=%s sslmode=disable", host, port, user, pw, dbname),
			"keyword/value quoted": fmt.Sprintf("host=%s port=%s user=%s password='%s x' dbname=%s sslmode=disable", host, port, user, pw, dbname),
		}
	}
	commands := [][]string{
		{"serve"}, {"migrate", "version"}, {"migrate", "up"}, {"locks"}, {"doctor"},
		{"sync"}, {"verify"}, {"sweep"}, {"replay", "--failed"}, {"prune", "--older-than", "90d", "--dry-run"},
	}
	for _, tg := range targets {
		for shape, dbURL := range shapes(tg.hostport) {
			for _, args := range commands {
				t.Run(tg.name+"/"+shape+"/"+strings.Join(args, " "), func(t *testing.T) {
					env := map[string]string{
						"DATABASE_URL":          dbURL,
						"LISTEN_ADDR":           "127.0.0.1:0",
						"LOG_LEVEL":             "debug",
						"STRIPE_WEBHOOK_SECRET": "whsec_0123456789abcdef",
						"STRIPE_SECRET_KEY":     "sk_test_0123456789",
						"STRIPE_API_BASE":       fake.URL,
						"STRIPE_SWEEP_INTERVAL": "0",
						"APP_API_TOKEN":         "app-token-0123456789",
						"ADMIN_TOKEN":           "admin-token-0123456789",
						"METRICS_TOKEN":         "metrics-token-0123456789",
					}
					out := runCommand(t, args, env)
					for _, secret := range []string{pw, "0123456789abcdef", "metrics-token-0123456789", "app-token-0123456789"} {
						if strings.Contains(out, secret) {
							t.Fatalf("lockstep %s printed %q:\n%s", strings.Join(args, " "), secret, out)
						}
					}
					if args[0] == "serve" && tg.name == "reachable" && strings.HasPrefix(dbURL, "postgres://") &&
						!strings.Contains(out, `"starting"`) {
						t.Fatalf("serve did not print its starting line:\n%s", out)
					}
				})
			}
		}
	}
}

// runCommand runs lockstep with args and returns everything it printed
// (stdout, stderr with its logs, and the error). serve is stopped once it
// serves, or after a few seconds.
func runCommand(t *testing.T, args []string, env map[string]string) string {
	t.Helper()
	var out dbtest.SyncBuffer
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	e := app.Env{Getenv: func(k string) string { return env[k] }, Stdout: &out, Stderr: &out}
	done := make(chan error, 1)
	go func() { done <- app.Run(ctx, args, e) }()
	var err error
	if args[0] == "serve" {
		deadline := time.NewTimer(10 * time.Second)
		defer deadline.Stop()
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
	wait:
		for {
			select {
			case err = <-done:
				break wait
			case <-tick.C:
				if strings.Contains(out.String(), `"serving"`) {
					cancel()
				}
			case <-deadline.C:
				cancel()
			}
		}
	} else {
		err = <-done
	}
	s := out.String()
	if err != nil {
		s += "\nerror: " + err.Error()
	}
	return s
}
