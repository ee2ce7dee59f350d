package lockmgr

import (
	"context"
	"fmt"
	"net/url"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// OpenPool connects to databaseURL. Options in the URL win (for PgBouncer in
// transaction mode add default_query_exec_mode=exec); maxConns applies when
// the URL sets no pool_max_conns. Each configure function, if any, may then
// change the pool's configuration (lockstep-bench adds a tracer).
func OpenPool(ctx context.Context, databaseURL string, maxConns int32, configure ...func(*pgxpool.Config)) (*pgxpool.Pool, error) {
	cfg, err := pgxpool.ParseConfig(databaseURL)
	if err != nil {
		return nil, fmt.Errorf("parse DATABASE_URL: %w", err)
	}
	if maxConns > 0 && !hasParam(databaseURL, "pool_max_conns") {
		cfg.MaxConns = maxConns
	}
	if cfg.ConnConfig.RuntimeParams["application_name"] == "" {
		cfg.ConnConfig.RuntimeParams["application_name"] = "lockstep"
	}
	cfg.ConnConfig.ConnectTimeout = 5 * time.Second
	for _, f := range configure {
		f(cfg)
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("open database pool: %w", err)
	}
	return pool, nil
}

func hasParam(databaseURL, name string) bool {
	u, err := url.Parse(databaseURL)
	return err == nil && u.Query().Has(name)
}
