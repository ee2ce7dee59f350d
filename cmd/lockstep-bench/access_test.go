package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/lockstep/lockstep/billing"
)

// GETs on one connection: each is the request net/http's server parses,
// with its query and header, and the connection is kept.
func TestHTTPClientGet(t *testing.T) {
	t.Parallel()
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet || r.ContentLength > 0 || r.Header.Get("Authorization") != "Bearer tok" {
			http.Error(w, "bad request", 400)
			return
		}
		fmt.Fprintf(w, "%s?%s", r.URL.Path, r.URL.RawQuery)
	}))
	conns := countConns(srv)
	srv.Start()
	defer srv.Close()
	c := newTestConn(t, srv.URL)
	for i := range 50 {
		path := fmt.Sprintf("/api/users/u%d/access?feature=f%d", i, i)
		code, body, err := c.Get(context.Background(), path, "Authorization", "Bearer tok")
		if err != nil || code != 200 || string(body) != path {
			t.Fatalf("GET %s: %d %q %v", path, code, body, err)
		}
	}
	if n := conns.Load(); n != 1 {
		t.Fatalf("%d connections, want 1", n)
	}
}

// The reference runs billing.AccessQuery itself, its one parameter a
// random seeded user.
func TestAccessScript(t *testing.T) {
	t.Parallel()
	s := accessScript("bench_1234")
	q := strings.TrimSpace(billing.AccessQuery)
	if strings.Count(q, "$1") != 1 || strings.Contains(s.sql, "$1") {
		t.Fatalf("the script must replace AccessQuery's one parameter:\n%s", s.sql)
	}
	if !strings.Contains(s.sql, strings.Replace(q, "$1", "('user_bench_1234_' || CAST(:u AS text))", 1)+";") ||
		!strings.Contains(s.sql, `\set u random(1, :customers)`) {
		t.Fatalf("script drifted from billing.AccessQuery:\n%s", s.sql)
	}
}

func TestAccessFlags(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{{"-access", "-target", "http://127.0.0.1:1"}, {"-access", "-hot"}, {"-access", "-storm"}} {
		if _, err := ParseArgs(args, io.Discard); err == nil {
			t.Errorf("%v accepted", args)
		}
	}
	o, err := ParseArgs([]string{"-access", "-customers", "10000"}, io.Discard)
	if err != nil || !o.Access || o.Customers != 10000 {
		t.Fatalf("%+v %v", o, err)
	}
}

// The CPU ratio is pgbench's CPU per transaction over lockstep's per read,
// each with its backends; a side not measured gives none.
func TestAccessCPURatio(t *testing.T) {
	lockstep := CPU{Process: 140 * time.Microsecond, DB: 150 * time.Microsecond}
	ref := CPU{Process: 25 * time.Microsecond, DB: 120 * time.Microsecond}
	if got := cpuRatio(lockstep, ref); got != 0.5 {
		t.Errorf("cpuRatio = %v, want 0.5", got)
	}
	if got := cpuRatio(CPU{Process: time.Millisecond}, ref); got != 0 {
		t.Errorf("without lockstep's backends: %v, want 0", got)
	}
	if got := cpuRatio(lockstep, CPU{}); got != 0 {
		t.Errorf("without the reference: %v, want 0", got)
	}
}
