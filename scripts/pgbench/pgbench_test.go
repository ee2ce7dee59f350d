package pgbench

import (
	"slices"
	"strings"
	"testing"
)

// The stepwise script is event.sql's transaction, statement for statement,
// without the pipeline that groups them into one round trip.
func TestEventStepwiseSQL(t *testing.T) {
	t.Parallel()
	if !slices.ContainsFunc(strings.Split(EventSQL, "\n"), isPipelineCommand) {
		t.Fatal(`event.sql has no \startpipeline: nothing to take out`)
	}
	for line := range strings.Lines(EventStepwiseSQL) {
		if strings.Contains(line, "pipeline") && strings.HasPrefix(strings.TrimSpace(line), `\`) {
			t.Errorf("stepwise script keeps a pipeline command: %q", line)
		}
	}
	want, got := statements(EventSQL), statements(EventStepwiseSQL)
	if len(want) < 2 || !slices.Equal(got, want) {
		t.Errorf("stepwise statements differ from event.sql's:\nevent.sql: %q\nstepwise: %q", want, got)
	}
	if !strings.Contains(EventStepwiseSQL, `\set c random(1, :customers)`) {
		t.Error("stepwise script lost event.sql's other meta-commands")
	}
}

func TestStepwise(t *testing.T) {
	t.Parallel()
	in := "\\set x 1\n\\startpipeline\nBEGIN;\nSELECT 1;\n  \\syncpipeline  \nSELECT 2;\r\n\\endpipeline\r\nCOMMIT;"
	want := "\\set x 1\nBEGIN;\nSELECT 1;\nSELECT 2;\r\nCOMMIT;"
	if got := stepwise(in); got != want {
		t.Errorf("stepwise(%q) = %q, want %q", in, got, want)
	}
}

// statements splits a pgbench script into its SQL statements, comments and
// meta-commands left out, whitespace normalized.
func statements(script string) []string {
	var out []string
	var cur strings.Builder
	for line := range strings.Lines(script) {
		trimmed := strings.TrimSpace(line)
		if strings.HasPrefix(trimmed, "--") || strings.HasPrefix(trimmed, `\`) {
			continue
		}
		cur.WriteString(line)
		if strings.HasSuffix(trimmed, ";") {
			out = append(out, strings.Join(strings.Fields(cur.String()), " "))
			cur.Reset()
		}
	}
	if s := strings.Join(strings.Fields(cur.String()), " "); s != "" {
		out = append(out, s)
	}
	return out
}
