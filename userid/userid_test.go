package userid_test

import (
	"strings"
	"testing"

	"github.com/lockstep/lockstep/userid"
)

func TestValid(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		id   string
		want bool
	}{
		{"user_1", true},
		{"42", true},
		{"ünïcödé@example", true},
		{strings.Repeat("u", 255), true},
		{"", false},
		{strings.Repeat("u", 256), false},
		{"tab\there", false},
		{"nul\x00", false},
		{"del\x7f", false},
		{"bad utf-8 \xff", false},
	} {
		if got := userid.Valid(tc.id); got != tc.want {
			t.Errorf("Valid(%q) = %v, want %v", tc.id, got, tc.want)
		}
	}
}
