package app

import "context"

func benchCmd(ctx context.Context, args []string, env Env) error {
	return &UsageError{Msg: "bench: not built yet"}
}
