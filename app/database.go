package app

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"syscall"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/lockstep/lockstep/lockmgr"
	schema "github.com/lockstep/lockstep/sql"
)

// rowQuerier is what reads the schema version: a pool or one connection.
type rowQuerier interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// schemaState reads the version golang-migrate recorded. It only reads:
// found is false on a database never migrated (no schema_migrations, or
// an empty one), and nothing is created.
func schemaState(ctx context.Context, q rowQuerier) (version int64, dirty, found bool, err error) {
	err = q.QueryRow(ctx, `SELECT version, dirty FROM schema_migrations LIMIT 1`).Scan(&version, &dirty)
	switch {
	case lockmgr.SQLState(err) == "42P01" || errors.Is(err, pgx.ErrNoRows):
		return 0, false, false, nil
	case err != nil:
		return 0, false, false, err
	}
	return version, dirty, true, nil
}

// checkSchema is the one check every command that opens the database makes
// before it reads or writes (serve migrates instead): the schema is the one
// this binary knows, else an error that says what to run.
func checkSchema(ctx context.Context, q rowQuerier) error {
	version, dirty, found, err := schemaState(ctx, q)
	latest := int64(schema.Latest)
	switch {
	case err != nil:
		return connectError(fmt.Errorf("read the schema version: %w", err))
	case !found:
		return fmt.Errorf("the database has no lockstep schema yet: run lockstep migrate up (serve migrates at start) to reach version %d", latest)
	case dirty:
		return fmt.Errorf("schema version %d is dirty (migration %d failed part-way): lockstep doctor says how to repair it", version, version)
	case version < latest:
		return fmt.Errorf("schema version %d, this binary needs %d: run lockstep migrate up (serve migrates at start)", version, latest)
	case version > latest:
		return fmt.Errorf("schema version %d is newer than this binary knows (%d): run the newer lockstep", version, latest)
	}
	return nil
}

// explained is an error said for the person at the terminal, in one line:
// what happened and what to do. It unwraps to the error it explains.
type explained struct {
	msg string
	err error
}

func (e *explained) Error() string { return e.msg }
func (e *explained) Unwrap() error { return e.err }

// connectError turns a failed connection (pgconn.ConnectError, from pgx or
// from golang-migrate's driver) into one line naming host:port, the cause
// once (pgx tries TLS, then plain, and reports each attempt: the same dial
// error twice) and what to check. Other errors are returned as they are.
func connectError(err error) error {
	var ce *pgconn.ConnectError
	if !errors.As(err, &ce) {
		return err
	}
	where := fmt.Sprintf("%s:%d", ce.Config.Host, ce.Config.Port)
	if strings.HasPrefix(ce.Config.Host, "/") {
		where = fmt.Sprintf("socket %s/.s.PGSQL.%d", ce.Config.Host, ce.Config.Port)
	}
	cause, advice := connectCause(ce)
	return &explained{
		msg: fmt.Sprintf("cannot connect to the database at %s (DATABASE_URL): %s; %s", where, cause, advice),
		err: err,
	}
}

// connectCause says why a connection failed, and what to check.
func connectCause(ce *pgconn.ConnectError) (cause, advice string) {
	var pgErr *pgconn.PgError
	var dnsErr *net.DNSError
	var netErr net.Error
	inner := errors.Unwrap(ce)
	switch {
	case errors.As(ce, &pgErr):
		cause = fmt.Sprintf("the server refused: %s (SQLSTATE %s)", pgErr.Message, pgErr.Code)
		switch {
		case pgErr.Code == "3D000":
			return cause, "create that database or fix the database name in DATABASE_URL"
		case strings.HasPrefix(pgErr.Code, "28"):
			return cause, "check DATABASE_URL's user and password, and the server's pg_hba.conf"
		}
		return cause, "check DATABASE_URL"
	case errors.As(ce, &dnsErr):
		return fmt.Sprintf("host %q not found", dnsErr.Name), "check DATABASE_URL's host"
	case errors.Is(ce, syscall.ECONNREFUSED):
		return "connection refused", "check that PostgreSQL is running and listens on that host and port"
	case errors.Is(ce, context.DeadlineExceeded) || errors.As(ce, &netErr) && netErr.Timeout():
		return "no answer in time", "check the host, the port and any firewall in between"
	case inner == nil:
		return ce.Error(), "check DATABASE_URL"
	}
	// Something else: each attempt's error once, the last one said.
	lines := strings.Split(inner.Error(), "\n")
	return strings.TrimSpace(lines[len(lines)-1]), "check DATABASE_URL"
}
