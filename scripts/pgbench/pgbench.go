// Package pgbench holds the pgbench scripts that mirror lockstep's SQL, the
// reference `lockstep bench` measures lockstep against. They are embedded so
// the command runs them from any directory.
package pgbench

import _ "embed"

// EventSQL is event.sql: the transaction one new webhook event costs.
//
//go:embed event.sql
var EventSQL string
