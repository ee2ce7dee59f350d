package app

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"

	"github.com/lockstep/lockstep/billing"
	"github.com/lockstep/lockstep/userid"
)

const accessUsage = `usage: lockstep access USER_ID [--feature KEY]

Prints the paywall's decision for a user, the same JSON as
GET /api/users/{user_id}/access, computed from what is stored with the
database's clock (no Stripe call), for support staff.

flags:
  --feature KEY   also answer whether the user has this feature (a Stripe
                  Entitlements feature lookup key)
`

func accessCmd(ctx context.Context, args []string, env Env) error {
	fs := newFlags("access", accessUsage, env)
	feature := fs.String("feature", "", "feature lookup key")
	rest, err := parseArgs(fs, args, 1) // the user id may come before or after the flags
	if err != nil {
		return err
	}
	featureSet := isSet(fs, "feature")
	var user string
	if len(rest) == 1 {
		user = rest[0]
		if user == "" {
			return &UsageError{Msg: "access: USER_ID must not be empty"}
		}
	}
	switch {
	case user == "":
		return &UsageError{Msg: "access takes a USER_ID"}
	case !userid.Valid(user):
		return &UsageError{Msg: "access: USER_ID must be 1 to 255 characters without control characters"}
	}
	if featureSet {
		if err := billing.CheckFeatureKey(*feature); err != nil {
			return &UsageError{Msg: "access: --" + strings.TrimPrefix(err.Error(), billing.ErrInvalidFeature.Error()+": ")}
		}
	}
	cfg, pool, err := openForCommand(ctx, env, 0, 2)
	if err != nil {
		return err
	}
	defer pool.Close()
	a, err := billing.ReadAccess(ctx, pool, user, *feature, cfg.AccessPastDueGrace)
	if err != nil {
		return fmt.Errorf("access: %w", err)
	}
	enc := json.NewEncoder(env.Stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(a)
}
