# lockstep. `make` (or `make help`) lists the targets.
#
# Targets that need PostgreSQL run through internal/dbtest/cmd/pgenv, which
# uses TEST_DATABASE_URL / DATABASE_URL when set, else a server on
# 127.0.0.1:5432, else a private cluster it starts itself (see its doc comment).

SHELL := /bin/bash
.DEFAULT_GOAL := help

GO ?= go
PG = $(GO) run ./internal/dbtest/cmd/pgenv

# Extra flags for `make test`, e.g. make test TEST_FLAGS='-run TestWebhook -v'.
TEST_FLAGS ?=
# How long `make fuzz` runs each fuzz target.
FUZZTIME ?= 20s
# How long the fuzzer may spend shrinking an input it keeps. 0 (off) for a
# short run: the fuzzer otherwise spends most of FUZZTIME minimizing the
# first few inputs that add coverage, and those runs are not counted (a
# failing input is still written, unminimized; go test -run replays it).
# FUZZMINIMIZETIME=60s is Go's default, for a long local run.
FUZZMINIMIZETIME ?= 0
# Fuzz targets as package:FuncName; add one for every parser of outside input.
FUZZ_TARGETS ?= ./handlers:FuzzWebhook ./stripeapi:FuzzParse ./stripeapi:FuzzParsersAgree

# Go files gofmt checks: everything but testdata, vendor and the dev cluster.
GO_FILES = $(shell find . -type d \( -name .git -o -name .dev -o -name testdata -o -name vendor -o -name bin \) -prune -o -type f -name '*.go' -print)

.PHONY: help
help: ## list the targets
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | \
		awk 'BEGIN {FS = ":.*## "} {printf "  %-12s %s\n", $$1, $$2}'

# `make run STRIPE=fake` (or LOCKSTEP_FAKE_STRIPE=1 make run) serves against
# the built-in fake Stripe (cmd/lockstep-stripefake, on 127.0.0.1:12111 unless
# FAKE_STRIPE_FLAGS='-listen ...'), which forwards its events to lockstep and
# prints how to play a checkout and the success call with curl.
FAKE_STRIPE_FLAGS ?=
RUN_UNDER = $(if $(filter fake,$(STRIPE))$(filter 1 true yes,$(LOCKSTEP_FAKE_STRIPE)),$(GO) run ./cmd/lockstep-stripefake $(FAKE_STRIPE_FLAGS) --)

.PHONY: run
run: ## serve on 127.0.0.1:8080 with a local development database and printed development secrets (STRIPE=fake: no Stripe account)
	LOCKSTEP_ENV="$${LOCKSTEP_ENV:-development}" $(PG) dev -- $(RUN_UNDER) $(GO) run . serve

# Flags for `make demo`, e.g. DEMO_FLAGS='-storm 20 -v'.
DEMO_FLAGS ?=

.PHONY: demo
demo: ## watch the race lockstep solves, against a built-in fake Stripe (no account; under a minute)
	$(PG) test -- sh -c 'DATABASE_URL="$$TEST_DATABASE_URL" exec $(GO) run ./cmd/lockstep-demo $(DEMO_FLAGS)'

.PHONY: db-stop
db-stop: ## stop the private development cluster in .dev/pgdata, if `make run` started one
	$(PG) dev-stop

.PHONY: test
test: ## run every test, integration tests included, with -race against PostgreSQL (TEST_FLAGS=...)
	$(PG) test -- $(GO) test -race -count=1 -p 2 -timeout 15m $(TEST_FLAGS) ./...

# The slow fault tests (-tags faults): dropped connections at volume, a
# database restart on a private cluster, a stuck lock holder, PgBouncer
# (which must be installed: they fail, never skip, without it).
FAULT_TESTS ?= ^(TestFault|TestPgBouncer)

.PHONY: test-faults
test-faults: ## run the slow fault tests: dropped connections, restarts, stuck holder, PgBouncer (-tags faults)
	$(PG) test -- $(GO) test -race -count=1 -timeout 20m -tags faults -run '$(FAULT_TESTS)' $(TEST_FLAGS) ./integration_test/

.PHONY: fuzz
fuzz: ## run each fuzz target in FUZZ_TARGETS for FUZZTIME (default 20s)
	$(PG) test -- $(MAKE) --no-print-directory fuzz-each

# fuzz-each runs inside pgenv, so all targets share one database server.
# Go 1.26 can end a -fuzztime run with "context deadline exceeded" and no
# failing input (a race in its fuzz coordinator, go.dev/issue/75804, fixed
# in 1.27): that alone does not fail the run; a written failing input does.
.PHONY: fuzz-each
fuzz-each:
	@set -eo pipefail; for target in $(FUZZ_TARGETS); do \
		pkg=$${target%%:*}; name=$${target#*:}; \
		if ! $(GO) test -list "^$$name\$$" "$$pkg" | grep -x "$$name" >/dev/null; then \
			echo "fuzz target $$name not found in $$pkg (FUZZ_TARGETS)"; exit 1; \
		fi; \
		echo "fuzz $$name in $$pkg for $(FUZZTIME)"; \
		log=$$(mktemp); \
		if ! $(GO) test -run '^$$' -fuzz "^$$name\$$" -fuzztime $(FUZZTIME) -fuzzminimizetime $(FUZZMINIMIZETIME) "$$pkg" 2>&1 | tee "$$log"; then \
			if grep -qx '[[:space:]]*context deadline exceeded' "$$log" && ! grep -q 'Failing input written' "$$log"; then \
				echo "fuzz $$name: 'context deadline exceeded' with no failing input is Go 1.26's fuzztime race (go.dev/issue/75804), not a finding"; \
			else rm -f "$$log"; exit 1; fi; \
		fi; \
		rm -f "$$log"; \
	done

# `make bench` runs cmd/lockstep-bench, which serves lockstep in its own process
# beside the pgbench reference, each on a scratch database on the server
# pgenv finds or starts; report.md and report.json land in BENCH_OUT.
# Other shapes: BENCH_FLAGS='-hot', '-storm -concurrency 16,64'.
BENCH_OUT ?= bench-out
BENCH_FLAGS ?= -concurrency 1,4,16 -duration 5s

.PHONY: bench
bench: ## load lockstep beside the pgbench reference; report in BENCH_OUT (BENCH_FLAGS='-hot' ...)
	$(PG) test -- sh -c 'DATABASE_URL="$$TEST_DATABASE_URL" exec $(GO) run ./cmd/lockstep-bench -scratch $(BENCH_FLAGS) -out $(BENCH_OUT)'

# bench-docs reruns every load docs/bench reports (about 8 minutes), into
# BENCH_DOCS_OUT; run it from a clean checkout on a quiet machine.
BENCH_DOCS_OUT ?= docs/bench

.PHONY: bench-docs
bench-docs: ## rerun every load docs/bench reports, about 8 minutes (BENCH_DOCS_OUT=dir)
	$(PG) test -- scripts/bench-docs.sh $(BENCH_DOCS_OUT)

.PHONY: bench-go
bench-go: ## run the Go benchmarks with allocations (signature check, parsing, the webhook handler)
	$(PG) test -- $(GO) test -run '^$$' -bench . -benchmem ./...

.PHONY: lint
lint: fmt-check vet ## gofmt, go vet, and golangci-lint when installed
	@if command -v golangci-lint >/dev/null 2>&1; then \
		golangci-lint run ./...; \
	else \
		echo "golangci-lint not found, skipped; install it with:"; \
		echo "  go install github.com/golangci/golangci-lint/v2/cmd/golangci-lint@latest"; \
		echo "  (or see https://golangci-lint.run/welcome/install/)"; \
	fi

.PHONY: fmt-check
fmt-check: ## fail if any Go file is not gofmt-formatted
	@out="$$(gofmt -l $(GO_FILES))"; \
	if [ -n "$$out" ]; then echo "these files need gofmt (make fmt):"; echo "$$out"; exit 1; fi

.PHONY: fmt
fmt: ## format the Go files with gofmt
	gofmt -w $(GO_FILES)

.PHONY: vet
vet: ## go vet ./...
	$(GO) vet ./...
	$(GO) vet -tags faults ./integration_test/

# The alert rules and the dashboard (deploy/): promtool checks the rules,
# runs their unit tests, and parses the dashboard's queries. promtool comes
# with Debian's prometheus package (.ci/run installs it when missing).
# Whether every metric they name is exported is checked by make test
# (TestDeployQueriesUseExportedMetrics, against a running server).
PROMTOOL ?= promtool

.PHONY: check-alerts
check-alerts: ## promtool: check the alert rules, run their tests, parse the dashboard's queries
	$(PROMTOOL) check rules deploy/prometheus/lockstep-rules.yml
	$(PROMTOOL) test rules deploy/prometheus/lockstep-rules.test.yml
	PROMTOOL="$$(command -v $(PROMTOOL))" $(GO) test -count=1 -run '^TestDeploy(DashboardQueriesParse|EveryAlertIsTested)$$' ./integration_test/

.PHONY: build
build: ## build the binary into bin/lockstep
	$(GO) build -o bin/lockstep .

# `make cli` runs bin/lockstep on the database `make run` serves from, found
# the same way (pgenv dev) and in the same development mode.
ARGS ?= help

.PHONY: cli
cli: build ## run bin/lockstep on `make run`'s database: make cli ARGS='locks' (ARGS='sync --dry-run' ...)
	LOCKSTEP_ENV="$${LOCKSTEP_ENV:-development}" $(PG) dev -- bin/lockstep $(ARGS)

.PHONY: tidy
tidy: ## go mod tidy
	$(GO) mod tidy
