// Package pgbench holds the pgbench scripts that mirror lockstep's SQL, the
// reference `lockstep bench` measures lockstep against. They are embedded so
// the command runs them from any directory.
package pgbench

import (
	_ "embed"
	"strings"
)

// EventSQL is event.sql: the transaction one new webhook event costs, sent
// in the round trips lockstep sends it in (BEGIN, the lock and the event's
// statements pipelined, then COMMIT).
//
//go:embed event.sql
var EventSQL string

// EventStepwiseSQL is event.sql without its pipeline: the same statements,
// one per round trip, as a plain client (and pgbench by default) runs a
// transaction.
var EventStepwiseSQL = stepwise(EventSQL)

// pipelineCommands are the meta-commands that group a script's statements
// into pipelined round trips.
var pipelineCommands = map[string]bool{`\startpipeline`: true, `\syncpipeline`: true, `\endpipeline`: true}

// stepwise returns script without its pipeline meta-command lines, so that
// pgbench sends each statement in a round trip of its own. Everything else,
// comments and other meta-commands included, is kept as it is.
func stepwise(script string) string {
	var b strings.Builder
	for line := range strings.Lines(script) {
		if !isPipelineCommand(line) {
			b.WriteString(line)
		}
	}
	return b.String()
}

// isPipelineCommand says whether a script line is \startpipeline,
// \syncpipeline or \endpipeline.
func isPipelineCommand(line string) bool {
	return pipelineCommands[strings.TrimSpace(line)]
}
