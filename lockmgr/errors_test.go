package lockmgr_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/lockstep/lockstep/lockmgr"
)

// Classify is the one place SQL errors are judged: transient SQLSTATEs and
// dropped connections are retried, whatever wraps them; data, integrity and
// schema errors, and a finished context, never are.
func TestFaultClassifyTable(t *testing.T) {
	t.Parallel()
	pg := func(code string) error { return &pgconn.PgError{Code: code, Message: "x"} }
	wrap := func(err error) error { return fmt.Errorf("upsert subscription sub_1: %w", err) }
	opErr := &net.OpError{Op: "read", Net: "tcp", Err: os.NewSyscallError("read", syscall.ECONNRESET)}
	pipeErr := &net.OpError{Op: "write", Net: "tcp", Err: os.NewSyscallError("write", syscall.EPIPE)}
	cases := []struct {
		name string
		err  error
		want lockmgr.Class
	}{
		{"nil", nil, lockmgr.Permanent},
		{"serialization_failure", pg("40001"), lockmgr.Transient},
		{"deadlock_detected", pg("40P01"), lockmgr.Transient},
		{"lock_not_available (lock_timeout)", pg("55P03"), lockmgr.Transient},
		{"query_canceled (statement_timeout)", pg("57014"), lockmgr.Transient},
		{"admin_shutdown (pg_terminate_backend)", pg("57P01"), lockmgr.Transient},
		{"crash_shutdown", pg("57P02"), lockmgr.Transient},
		{"cannot_connect_now (starting up)", pg("57P03"), lockmgr.Transient},
		{"too_many_connections", pg("53300"), lockmgr.Transient},
		{"connection_failure", pg("08006"), lockmgr.Transient},
		{"wrapped admin_shutdown", wrap(wrap(pg("57P01"))), lockmgr.Transient},
		{"joined with another error", errors.Join(errors.New("rollback failed"), pg("40001")), lockmgr.Transient},
		{"string_data_right_truncation", pg("22001"), lockmgr.Permanent},
		{"invalid_text_representation (jsonb input)", pg("22P02"), lockmgr.Permanent},
		{"numeric_value_out_of_range", pg("22003"), lockmgr.Permanent},
		{"unique_violation", pg("23505"), lockmgr.Permanent},
		{"check_violation", pg("23514"), lockmgr.Permanent},
		{"undefined_table", pg("42P01"), lockmgr.Permanent},
		{"duplicate_prepared_statement (pgbouncer without exec mode)", pg("42P05"), lockmgr.Permanent},
		{"invalid_sql_statement_name (pgbouncer without exec mode)", pg("26000"), lockmgr.Permanent},
		{"wrapped unique_violation", wrap(pg("23505")), lockmgr.Permanent},
		{"connect error", &pgconn.ConnectError{}, lockmgr.Transient},
		{"EOF", wrap(io.EOF), lockmgr.Transient},
		{"unexpected EOF", wrap(io.ErrUnexpectedEOF), lockmgr.Transient},
		{"use of closed connection", wrap(net.ErrClosed), lockmgr.Transient},
		{"connection reset", wrap(opErr), lockmgr.Transient},
		{"conn closed (pgconn.ErrConnClosed)", fmt.Errorf("commit: %w", pgconn.ErrConnClosed), lockmgr.Transient},
		{"broken pipe", wrap(pipeErr), lockmgr.Transient},
		{"bare ECONNRESET", wrap(syscall.ECONNRESET), lockmgr.Transient},
		{"bare EPIPE", wrap(syscall.EPIPE), lockmgr.Transient},
		{"text that names a failure but has no type", errors.New("commit: conn closed: connection reset: broken pipe: unexpected EOF"), lockmgr.Permanent},
		{"customer busy (queued out the budget)", wrap(lockmgr.ErrCustomerBusy), lockmgr.Transient},
		{"retry error around a lock timeout", &lockmgr.RetryError{Attempts: 3, Err: pg("55P03")}, lockmgr.Transient},
		{"context canceled", wrap(context.Canceled), lockmgr.Permanent},
		{"deadline exceeded", context.DeadlineExceeded, lockmgr.Permanent},
		{"backoff.Permanent of an application error", backoff.Permanent(errors.New("bad event")), lockmgr.Permanent},
		{"application error", errors.New("subscription snapshot ties"), lockmgr.Permanent},
		{"empty customer", lockmgr.ErrEmptyCustomer, lockmgr.Permanent},
	}
	for _, c := range cases {
		if got := lockmgr.Classify(c.err); got != c.want {
			t.Errorf("%s: Classify(%v) = %v, want %v", c.name, c.err, got, c.want)
		}
		if got := lockmgr.IsTransient(c.err); got != (c.want == lockmgr.Transient) {
			t.Errorf("%s: IsTransient = %v", c.name, got)
		}
	}
	if got := lockmgr.SQLState(wrap(wrap(pg("40P01")))); got != "40P01" {
		t.Errorf("SQLState of a twice-wrapped deadlock = %q", got)
	}
	if got := lockmgr.SQLState(io.EOF); got != "" {
		t.Errorf("SQLState(EOF) = %q, want empty", got)
	}
}

// The connection failures pgx itself returns are classified by their types,
// not their text: a query on a connection pgx closed ("conn closed"), and a
// server that closed or reset the connection after reading the query.
func TestClassifyPgconnConnectionErrors(t *testing.T) {
	t.Parallel()
	construct := func(t *testing.T, c net.Conn) *pgconn.PgConn {
		t.Helper()
		cfg, err := pgconn.ParseConfig("postgres://lockstep@127.0.0.1/lockstep")
		if err != nil {
			t.Fatalf("parse config: %v", err)
		}
		conn, err := pgconn.Construct(&pgconn.HijackedConn{Conn: c, Config: cfg, TxStatus: 'I', ParameterStatuses: map[string]string{}})
		if err != nil {
			t.Fatalf("construct: %v", err)
		}
		return conn
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	client, server := net.Pipe()
	conn := construct(t, client)
	server.Close()
	_ = conn.Close(ctx)
	_, err := conn.Exec(ctx, "SELECT 1").ReadAll()
	if !errors.Is(err, pgconn.ErrConnClosed) || !lockmgr.IsTransient(err) {
		t.Errorf("query on a closed connection: %v (ErrConnClosed %v), want transient", err, errors.Is(err, pgconn.ErrConnClosed))
	}

	for _, c := range []struct {
		name  string
		serve func(*net.TCPConn)
	}{
		{"server gone after reading the query", func(s *net.TCPConn) {
			_, _ = s.Read(make([]byte, 1024))
			s.Close()
		}},
		{"server reset the connection", func(s *net.TCPConn) {
			_, _ = s.Read(make([]byte, 1024))
			_ = s.SetLinger(0)
			s.Close()
		}},
	} {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		go func() {
			if s, err := ln.Accept(); err == nil {
				c.serve(s.(*net.TCPConn))
			}
		}()
		client, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		conn := construct(t, client)
		_, err = conn.Exec(ctx, "SELECT 1").ReadAll()
		if err == nil || !lockmgr.IsTransient(err) {
			t.Errorf("%s: %v, want a transient error", c.name, err)
		}
		_ = conn.Close(ctx)
		ln.Close()
	}
}
