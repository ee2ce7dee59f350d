// Command pgenv finds or starts a PostgreSQL server and runs a command with
// it. The Makefile runs every target that needs a database through it.
//
//	pgenv test -- CMD...   run CMD with TEST_DATABASE_URL set to a maintenance
//	                       database on which tests may CREATE DATABASE
//	pgenv dev -- CMD...    run CMD with DATABASE_URL set to a development database
//	pgenv dev-stop         stop the private development cluster in .dev/pgdata
//	pgenv probe            say which server `test` would use; start nothing.
//	                       Exits 1 if there is none and no initdb to start one.
//
// Where the server comes from, first match wins:
//
//	test: TEST_DATABASE_URL, DATABASE_URL, a server answering on LOCKSTEP_PG_PROBE
//	      (default 127.0.0.1:5432, user postgres without password), else a
//	      throwaway cluster in a temporary directory, removed when CMD exits.
//	dev:  DATABASE_URL, database lockstep_dev on the server at LOCKSTEP_PG_PROBE
//	      (created if missing), else a persistent cluster in .dev/pgdata on
//	      127.0.0.1:54329 (started if needed, left running; stop it with dev-stop).
//
// The private clusters are dbtest.Cluster: the system's initdb and pg_ctl,
// run as the postgres user when pgenv runs as root (initdb refuses root).
package main

import (
	"context"
	"errors"
	"fmt"
	"log"
	"os"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/lockstep/lockstep/internal/dbtest"
	redactpkg "github.com/lockstep/lockstep/redact"
)

const (
	devDir  = ".dev" // the development cluster: .dev/pgdata, .dev/postgres.log
	devPort = 54329
	devDB   = "lockstep_dev"
)

const usage = `usage: pgenv test -- CMD...
       pgenv dev -- CMD...
       pgenv dev-stop
       pgenv probe
`

func main() {
	log.SetFlags(0)
	log.SetPrefix("pgenv: ")
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	mode := ""
	if len(args) > 0 {
		mode, args = args[0], args[1:]
	}
	if len(args) > 0 && args[0] == "--" {
		args = args[1:]
	}
	probe := os.Getenv("LOCKSTEP_PG_PROBE")
	if probe == "" {
		probe = "127.0.0.1:5432"
	}
	var code int
	var err error
	switch {
	case mode == "test" && len(args) > 0:
		code, err = testEnv(probe, args)
	case mode == "dev" && len(args) > 0:
		code, err = devEnv(probe, args)
	case mode == "dev-stop" && len(args) == 0:
		err = devStop()
	case mode == "probe" && len(args) == 0:
		err = probeOnly(probe)
	default:
		fmt.Fprint(os.Stderr, usage)
		return 2
	}
	if err != nil {
		log.Print(err)
		return 1
	}
	return code
}

// testEnv runs cmd with TEST_DATABASE_URL set.
func testEnv(probe string, cmd []string) (int, error) {
	var server string
	switch {
	case os.Getenv("TEST_DATABASE_URL") != "":
		server = os.Getenv("TEST_DATABASE_URL")
		log.Printf("using test database server from TEST_DATABASE_URL: %s", redact(server))
	case os.Getenv("DATABASE_URL") != "":
		server = os.Getenv("DATABASE_URL")
		log.Printf("using test database server from DATABASE_URL: %s", redact(server))
	case serverAnswers(probe):
		server = probeURL(probe, "postgres")
		log.Printf("using test database server %s (answering on %s)", server, probe)
	default:
		if _, err := dbtest.FindBin(); err != nil {
			return 0, noServer(probe)
		}
		c, err := dbtest.StartThrowaway()
		if err != nil {
			return 0, fmt.Errorf("could not start a throwaway PostgreSQL cluster: %w", err)
		}
		server = c.URL("postgres")
		log.Printf("using test database server %s (throwaway cluster in %s, %s; removed on exit)", server, c.Dir, c.Bin())
		code := runWith(cmd, "TEST_DATABASE_URL", server)
		if err := c.Remove(); err != nil {
			log.Printf("could not remove the throwaway cluster in %s: %v", c.Dir, err)
		}
		return code, nil
	}
	return runWith(cmd, "TEST_DATABASE_URL", server), nil
}

// devEnv runs cmd with DATABASE_URL set to a development database.
func devEnv(probe string, cmd []string) (int, error) {
	if u := os.Getenv("DATABASE_URL"); u != "" {
		log.Printf("using DATABASE_URL: %s", redact(u))
		return runWith(cmd, "DATABASE_URL", u), nil
	}
	server, started := probeURL(probe, "postgres"), ""
	if !serverAnswers(probe) {
		c, how, err := startDevCluster(probe)
		if err != nil {
			return 0, err
		}
		server, started = c.URL("postgres"), ", "+how
	}
	how := "created"
	if err := dbtest.CreateDatabase(server, devDB); err != nil {
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != "42P04" { // duplicate_database
			return 0, fmt.Errorf("could not create database %s: %w", devDB, err)
		}
		how = "existing"
	}
	dbURL := dbtest.URLFor(server, devDB)
	log.Printf("using local development database %s (%s%s)", dbURL, how, started)
	return runWith(cmd, "DATABASE_URL", dbURL), nil
}

// startDevCluster starts (creating it if needed) the cluster in .dev and
// says how it found it.
func startDevCluster(probe string) (*dbtest.Cluster, string, error) {
	c := &dbtest.Cluster{Dir: devDir, Port: devPort}
	if _, err := dbtest.FindBin(); err != nil {
		return nil, "", noServer(probe)
	}
	if c.Running() {
		return c, "private cluster in .dev/pgdata, already running", nil
	}
	if !c.Exists() {
		if err := c.Init(""); err != nil {
			return nil, "", err
		}
		log.Printf("created a private development cluster in .dev/pgdata (%s)", c.Bin())
	}
	err := c.Start()
	switch {
	case errors.Is(err, dbtest.ErrPortTaken):
		return nil, "", fmt.Errorf("port %d is taken by another program; stop it or set DATABASE_URL", devPort)
	case err != nil:
		return nil, "", fmt.Errorf("could not start the development cluster in .dev/pgdata (log: .dev/postgres.log): %w", err)
	}
	return c, "started private cluster in .dev/pgdata", nil
}

func devStop() error {
	c := &dbtest.Cluster{Dir: devDir, Port: devPort}
	switch {
	case !c.Exists():
		log.Print("no development cluster in .dev/pgdata")
	case !c.Running():
		log.Print("the development cluster in .dev/pgdata is not running")
	default:
		if err := c.Stop("fast"); err != nil {
			return err
		}
		log.Print("stopped the development cluster in .dev/pgdata (data kept; rm -rf .dev to delete it)")
	}
	return nil
}

func probeOnly(probe string) error {
	switch {
	case os.Getenv("TEST_DATABASE_URL") != "":
		log.Printf("would use TEST_DATABASE_URL: %s", redact(os.Getenv("TEST_DATABASE_URL")))
	case os.Getenv("DATABASE_URL") != "":
		log.Printf("would use DATABASE_URL: %s", redact(os.Getenv("DATABASE_URL")))
	case serverAnswers(probe):
		log.Printf("would use the server answering on %s", probe)
	default:
		bin, err := dbtest.FindBin()
		if err != nil {
			return fmt.Errorf("no PostgreSQL server answers on %s and no initdb was found", probe)
		}
		log.Printf("would start a throwaway cluster with %s", bin)
	}
	return nil
}

// noServer is the one line that says how to get a database.
func noServer(probe string) error {
	return fmt.Errorf("no PostgreSQL server answers on %s and no initdb was found (PATH, /usr/lib/postgresql/*/bin) to start one. "+
		"Install PostgreSQL (Debian/Ubuntu: sudo apt-get install postgresql; the service need not run) "+
		"or set TEST_DATABASE_URL (or DATABASE_URL for 'make run') to a server's postgres:// URL.", probe)
}

func probeURL(probe, db string) string {
	return "postgres://postgres@" + probe + "/" + db + "?sslmode=disable"
}

// serverAnswers reports whether a server answers on probe and lets user
// postgres in without a password.
func serverAnswers(probe string) bool {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, probeURL(probe, "postgres"))
	if err != nil {
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) { // a server answered, and refused
			log.Printf("a server answers on %s, but user postgres cannot connect without a password (%s); not using it", probe, pgErr.Message)
		}
		return false
	}
	defer conn.Close(ctx)
	return conn.Ping(ctx) == nil
}

// redact prints a connection string without its password, in any shape.
func redact(s string) string { return redactpkg.String(s) }

// runWith runs argv with key=value added to its environment (see
// dbtest.RunForeground).
func runWith(argv []string, key, value string) int {
	return dbtest.RunForeground(log.Default(), argv, key+"="+value)
}
