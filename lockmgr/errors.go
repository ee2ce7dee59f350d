package lockmgr

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"syscall"

	"github.com/jackc/pgx/v5/pgconn"
)

var (
	// ErrEmptyCustomer is returned for a transaction asked to lock no customer.
	ErrEmptyCustomer = errors.New("lockmgr: empty customer id")
	// ErrCustomerBusy is returned when the retry budget ran out while the
	// writer queued behind others of this process for the same customer. It
	// is transient: the customer's lock was held all that time.
	ErrCustomerBusy = errors.New("lockmgr: customer busy: retry budget spent waiting for its lock")
)

// RetryError is returned when transient failures outlived the retry budget.
type RetryError struct {
	Attempts int
	Err      error
}

func (e *RetryError) Error() string {
	return fmt.Sprintf("gave up after %d attempts: %v", e.Attempts, e.Err)
}

func (e *RetryError) Unwrap() error { return e.Err }

// Class is what lockmgr makes of a database error: whether trying the same
// transaction again can succeed.
type Class int

const (
	// Permanent errors never succeed on retry: bad data (22xxx), integrity
	// (23xxx), syntax or schema (42xxx), or an error of the application.
	Permanent Class = iota
	// Transient errors are worth another attempt: serialization failure,
	// deadlock, lock timeout, a terminated backend, a dropped connection.
	Transient
)

// transientStates are the SQLSTATEs retried. Everything else is permanent.
var transientStates = map[string]bool{
	"40001": true,                                                             // serialization_failure
	"40P01": true,                                                             // deadlock_detected
	"55P03": true,                                                             // lock_not_available (lock_timeout)
	"57014": true,                                                             // query_canceled (statement_timeout; a cancelled context stops the retry loop first)
	"57P01": true,                                                             // admin_shutdown (pg_terminate_backend, fast shutdown)
	"57P02": true,                                                             // crash_shutdown
	"57P03": true,                                                             // cannot_connect_now (starting up, shutting down)
	"53300": true,                                                             // too_many_connections
	"08000": true, "08003": true, "08006": true, "08001": true, "08004": true, // connection exceptions
}

// SQLState returns the SQLSTATE of the PostgreSQL error in err's chain, or ""
// when there is none.
func SQLState(err error) string {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Code
	}
	return ""
}

// Classify says whether err is worth retrying. It is the one place lockstep
// decides that; it walks wrapped errors.
func Classify(err error) Class {
	switch {
	case err == nil:
		return Permanent
	case errors.Is(err, ErrCustomerBusy): // the lock was held all along: a 503, Stripe redelivers
		return Transient
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return Permanent
	}
	if code := SQLState(err); code != "" {
		if transientStates[code] {
			return Transient
		}
		return Permanent
	}
	// A connection that failed under the transaction, by the types pgx
	// returns: a lock on a closed connection (pgconn.ErrConnClosed, "conn
	// closed"), a write that sent nothing (SafeToRetry), a failed connect, a
	// socket error (*net.OpError around ECONNRESET "connection reset" or
	// EPIPE "broken pipe"; a net.Error), and a read cut short (io.EOF, or
	// io.ErrUnexpectedEOF as pgproto3 reports a stream that ended inside a
	// message). pgx reports none of these as text only.
	var connectErr *pgconn.ConnectError
	var netErr net.Error
	switch {
	case pgconn.SafeToRetry(err),
		errors.Is(err, pgconn.ErrConnClosed),
		errors.As(err, &connectErr),
		errors.Is(err, syscall.ECONNRESET),
		errors.Is(err, syscall.EPIPE),
		errors.As(err, &netErr),
		errors.Is(err, io.EOF),
		errors.Is(err, io.ErrUnexpectedEOF),
		errors.Is(err, net.ErrClosed):
		return Transient
	}
	return Permanent
}

// IsTransient reports whether err is worth retrying.
func IsTransient(err error) bool { return Classify(err) == Transient }

// retryLabel is the label a retry is counted under: the SQLSTATE, or
// "connection" for a connection that failed without one.
func retryLabel(err error) string {
	if code := SQLState(err); code != "" {
		return code
	}
	return "connection"
}
