#!/usr/bin/env bash
# scripts/bench-docs.sh OUT: runs every load docs/bench/README.md reports,
# writing each report.md and report.json under OUT (default
# docs/bench). `make bench-docs` runs it through internal/dbtest/cmd/pgenv,
# which sets TEST_DATABASE_URL to a server it found or started; every lockstep and
# reference database is a scratch one, dropped at the end.
#
# About 8 minutes. Run it from a clean checkout (the reports name the
# commit, and list uncommitted changes), on a machine as quiet as you can.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
out=${1:-docs/bench}
export DATABASE_URL=${TEST_DATABASE_URL:-${DATABASE_URL:?set DATABASE_URL or TEST_DATABASE_URL to a PostgreSQL server URL}}

tmp=$(mktemp -d)
bin=$tmp/lockstep bench=$tmp/lockstep-bench
go build -o "$bin" .
go build -o "$bench" ./cmd/lockstep-bench

run() { # run DIR FLAGS...: one bench run into $out/DIR
	local dir=$1
	shift
	printf '\n==> %s: lockstep-bench %s\n' "$dir" "$*"
	"$bench" -scratch "$@" -out "$out/$dir" | sed -n '/^summary/,$p'
}

run . -concurrency 1,4,16 -duration 5s
run like-for-like -concurrency 1,4,16 -duration 5s -dup 0 -success 0
run hot -concurrency 1,4,16 -duration 5s -hot
run hot-like-for-like -concurrency 1,4,16 -duration 5s -hot -dup 0 -success 0
run storm -concurrency 4,16,64 -duration 5s -storm
run memory -concurrency 16 -events 100000 -duration 10m -rounds 1 -reference=false

# The same 100,000 requests against a separate `lockstep serve`, so that its
# peak RSS is lockstep's alone.
db=lockstep_bench_serve_$$
psql -q -d "$DATABASE_URL" -c "CREATE DATABASE $db"
serve_url=$(sed -E "s#^(postgres(ql)?://[^/]*)(/[^?]*)?#\1/$db#" <<<"$DATABASE_URL")
LOCKSTEP_ENV=development LOG_LEVEL=warn LISTEN_ADDR=127.0.0.1:18080 STRIPE_API_BASE=http://127.0.0.1:12112 \
	DATABASE_URL="$serve_url" "$bin" serve 2>/dev/null &
serve=$!
trap 'kill "$serve" 2>/dev/null || true; wait "$serve" 2>/dev/null || true; psql -q -d "$DATABASE_URL" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)"' EXIT
printf '\n==> memory-target: lockstep-bench against lockstep serve (pid %d)\n' "$serve"
"$bench" -target http://127.0.0.1:18080 -concurrency 16 -events 100000 -duration 10m -rounds 1 -reference=false \
	-out "$out/memory-target" | sed -n '/^summary/,$p'
