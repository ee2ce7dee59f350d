package main

import "testing"

func TestRedact(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		"postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable": "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable",
		"postgres://u:s3cret@db:5432/x?sslmode=require":               "postgres://u:xxxxx@db:5432/x?sslmode=require",
		"postgres://u@db/x?password=s3cret&sslmode=disable":           "postgres://u@db/x?password=xxxxx&sslmode=disable",
		"host=db user=u password=s3cret dbname=x":                     "host=db user=u password=xxxxx dbname=x",
		"password=s3cret host=db":                                     "password=xxxxx host=db",
	} {
		if got := redact(in); got != want {
			t.Errorf("redact(%q) = %q, want %q", in, got, want)
		}
	}
}
