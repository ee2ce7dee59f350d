// Package sql holds lockstep's schema as golang-migrate migrations, embedded
// in the binary, and the functions that apply them.
//
// Migrations take golang-migrate's session-level advisory lock, so they must
// run over a direct connection to PostgreSQL, never through a transaction
// pooler such as PgBouncer (see MIGRATE_DATABASE_URL in the README).
package sql

import (
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"sort"
	"strconv"
	"strings"

	"github.com/golang-migrate/migrate/v4"
	_ "github.com/golang-migrate/migrate/v4/database/pgx/v5" // pgx5:// driver
	"github.com/golang-migrate/migrate/v4/source/iofs"
)

//go:embed *.sql
var files embed.FS

// Latest is the newest schema version the embedded migrations define.
var Latest = latestVersion()

func latestVersion() uint {
	names, err := fs.Glob(files, "*.up.sql")
	if err != nil || len(names) == 0 {
		panic("sql: no embedded migrations")
	}
	sort.Strings(names)
	last := names[len(names)-1]
	v, err := strconv.ParseUint(strings.SplitN(last, "_", 2)[0], 10, 32)
	if err != nil {
		panic("sql: bad migration name " + last)
	}
	return uint(v)
}

// newMigrate opens golang-migrate on the embedded files for databaseURL.
func newMigrate(databaseURL string) (*migrate.Migrate, error) {
	src, err := iofs.New(files, ".")
	if err != nil {
		return nil, fmt.Errorf("open embedded migrations: %w", err)
	}
	u, err := url.Parse(databaseURL)
	if err != nil {
		return nil, fmt.Errorf("parse database url: %w", err)
	}
	u.Scheme = "pgx5"
	// pgx options golang-migrate does not understand would be sent to the
	// server as run-time parameters; drop them.
	q := u.Query()
	q.Del("default_query_exec_mode")
	q.Del("pool_max_conns")
	q.Del("pool_min_conns")
	u.RawQuery = q.Encode()
	m, err := migrate.NewWithSourceInstance("iofs", src, u.String())
	if err != nil {
		return nil, fmt.Errorf("open migrations: %w", err)
	}
	return m, nil
}

func closeMigrate(m *migrate.Migrate, err error) error {
	srcErr, dbErr := m.Close()
	return errors.Join(err, srcErr, dbErr)
}

// Up migrates the database to the latest version. No change is success.
func Up(databaseURL string) error {
	m, err := newMigrate(databaseURL)
	if err != nil {
		return err
	}
	err = m.Up()
	if errors.Is(err, migrate.ErrNoChange) {
		err = nil
	}
	if err != nil {
		err = fmt.Errorf("migrate up: %w", err)
	}
	return closeMigrate(m, err)
}

// Down rolls back n migrations.
func Down(databaseURL string, n int) error {
	if n <= 0 {
		return fmt.Errorf("migrate down: N must be a positive number, got %d", n)
	}
	m, err := newMigrate(databaseURL)
	if err != nil {
		return err
	}
	err = m.Steps(-n)
	if err != nil {
		err = fmt.Errorf("migrate down %d: %w", n, err)
	}
	return closeMigrate(m, err)
}

// Version reports the database's schema version and whether a failed
// migration left it dirty. A database never migrated is version 0.
func Version(databaseURL string) (version uint, dirty bool, err error) {
	m, err := newMigrate(databaseURL)
	if err != nil {
		return 0, false, err
	}
	version, dirty, err = m.Version()
	if errors.Is(err, migrate.ErrNilVersion) {
		version, dirty, err = 0, false, nil
	}
	if err != nil {
		err = fmt.Errorf("migrate version: %w", err)
	}
	return version, dirty, closeMigrate(m, err)
}
