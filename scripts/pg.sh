#!/usr/bin/env bash
# pg.sh finds or starts a PostgreSQL server and runs a command with it.
#
#   scripts/pg.sh test -- CMD...   run CMD with TEST_DATABASE_URL set to a maintenance
#                                  database on which tests may CREATE DATABASE
#   scripts/pg.sh dev -- CMD...    run CMD with DATABASE_URL set to a development database
#   scripts/pg.sh dev-stop         stop the private development cluster in .dev/pgdata
#   scripts/pg.sh probe            say which server `test` would use; start nothing.
#                                  Exits 1 if there is none and no initdb to start one.
#
# Where the server comes from, first match wins:
#   test: TEST_DATABASE_URL, DATABASE_URL, a server answering on LOCKSTEP_PG_PROBE
#         (default 127.0.0.1:5432, user postgres without password), else a throwaway
#         cluster in a temporary directory, removed when CMD exits.
#   dev:  DATABASE_URL, database lockstep_dev on the server at LOCKSTEP_PG_PROBE
#         (created if missing), else a persistent cluster in .dev/pgdata on
#         127.0.0.1:54329 (started if needed, left running; stop it with dev-stop).
#
# initdb refuses to run as root; as root the private clusters run as the
# `postgres` user through runuser.
set -euo pipefail

readonly PROBE=${LOCKSTEP_PG_PROBE:-127.0.0.1:5432}
readonly PROBE_HOST=${PROBE%:*}
readonly PROBE_PORT=${PROBE##*:}
REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
readonly REPO_ROOT
readonly DEV_DIR=$REPO_ROOT/.dev
readonly DEV_DATA=$DEV_DIR/pgdata
readonly DEV_PORT=54329
readonly DEV_DB=lockstep_dev
readonly TEST_PORT_FIRST=54330
readonly TEST_PORT_TRIES=20

PG_BIN=""      # directory holding initdb and pg_ctl, set by find_pg_bin
TMP_CLUSTER="" # throwaway cluster's directory, removed on exit
TMP_URL=""     # throwaway cluster's maintenance database URL

say() { printf 'pg.sh: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }

usage() {
	cat >&2 <<'EOF'
usage: scripts/pg.sh test -- CMD...
       scripts/pg.sh dev -- CMD...
       scripts/pg.sh dev-stop
       scripts/pg.sh probe
EOF
	exit 2
}

# redact prints a connection string without its password.
redact() {
	sed -E -e 's#^([A-Za-z0-9+.-]+://[^:/@?]*):[^@/?]*@#\1@#' \
		-e 's#(^|[ ?&])password=[^ &]*#\1password=REDACTED#g' <<<"$1"
}

# find_pg_bin sets PG_BIN to a directory with initdb and pg_ctl: the one behind
# initdb on PATH first, then the newest /usr/lib/postgresql/*/bin (Debian,
# Ubuntu) or /usr/pgsql-*/bin (RHEL). It returns 1 if there is none.
find_pg_bin() {
	local candidates=() installed=() d p
	if p=$(command -v initdb 2>/dev/null); then
		candidates+=("$(dirname "$(readlink -f "$p")")" "$(dirname "$p")")
	fi
	shopt -s nullglob
	installed=(/usr/lib/postgresql/*/bin /usr/pgsql-*/bin)
	shopt -u nullglob
	if ((${#installed[@]} > 0)); then
		while IFS= read -r d; do
			candidates+=("$d")
		done < <(printf '%s\n' "${installed[@]}" | sort -V -r)
	fi
	for d in "${candidates[@]}"; do
		if [[ -x $d/initdb && -x $d/pg_ctl ]]; then
			PG_BIN=$d
			return 0
		fi
	done
	return 1
}

no_initdb() {
	die "no PostgreSQL server answers on $PROBE and no initdb was found (PATH, /usr/lib/postgresql/*/bin) to start one. Install PostgreSQL (Debian/Ubuntu: sudo apt-get install postgresql; the service need not run) or set TEST_DATABASE_URL (or DATABASE_URL for 'make run') to a server's postgres:// URL."
}

# pg_tool prints the path of a PostgreSQL client program (psql, pg_isready),
# looking on PATH, then next to initdb.
pg_tool() {
	local p
	if p=$(command -v "$1" 2>/dev/null); then
		printf '%s\n' "$p"
		return 0
	fi
	if [[ -n $PG_BIN ]] || find_pg_bin; then
		if [[ -x $PG_BIN/$1 ]]; then
			printf '%s\n' "$PG_BIN/$1"
			return 0
		fi
	fi
	return 1
}

# probe_url prints the URL of database $1 on the probed server.
probe_url() {
	printf 'postgres://postgres@%s:%s/%s?sslmode=disable\n' "$PROBE_HOST" "$PROBE_PORT" "$1"
}

# server_answers reports whether a server answers on $PROBE and lets user
# postgres in without a password.
server_answers() {
	local isready psql
	if isready=$(pg_tool pg_isready); then
		"$isready" -q -h "$PROBE_HOST" -p "$PROBE_PORT" -t 3 2>/dev/null || return 1
	fi
	if psql=$(pg_tool psql); then
		if ! PGCONNECT_TIMEOUT=3 "$psql" "$(probe_url postgres)" -XAtqc 'select 1' >/dev/null 2>&1; then
			[[ -n $isready ]] && say "a server answers on $PROBE, but user postgres cannot connect without a password; not using it"
			return 1
		fi
		return 0
	fi
	[[ -n $isready ]] # pg_isready alone said yes; with neither tool, say no
}

# as_pg runs a command as the user owning the private clusters: the caller,
# or the postgres user when the caller is root (initdb refuses root).
as_pg() {
	if [[ $EUID -eq 0 ]]; then
		(cd / && "$(runuser_path)" -u postgres -- "$@")
	else
		"$@"
	fi
}

# runuser_path prints runuser's path: root's PATH may lack /usr/sbin.
runuser_path() {
	local p
	for p in "$(command -v runuser 2>/dev/null)" /usr/sbin/runuser /sbin/runuser; do
		if [[ -n $p && -x $p ]]; then
			printf '%s\n' "$p"
			return 0
		fi
	done
	die "running as root, and initdb refuses root, but runuser (util-linux) is missing; install util-linux, run as another user, or set TEST_DATABASE_URL / DATABASE_URL"
}

# own_for_pg hands a directory (or file) to the user from as_pg.
own_for_pg() {
	if [[ $EUID -eq 0 ]]; then
		chown -R postgres: "$@"
	fi
}

check_pg_user() {
	if [[ $EUID -eq 0 ]]; then
		id postgres >/dev/null 2>&1 ||
			die "running as root, and initdb refuses root, but there is no 'postgres' user to run it as. Create one (useradd --system --create-home postgres), run as another user, or set TEST_DATABASE_URL / DATABASE_URL."
		runuser_path >/dev/null
	fi
}

# init_cluster DATA [initdb options...] creates a cluster owned by user
# postgres with trust authentication, listening only on 127.0.0.1.
init_cluster() {
	local data=$1 sockets out
	shift
	if ! out=$(as_pg "$PG_BIN/initdb" -D "$data" -U postgres -A trust -E UTF8 --locale=C "$@" 2>&1); then
		printf '%s\n' "$out" >&2
		die "initdb $data failed"
	fi
	# Unix sockets live in the data directory, so clusters never collide in
	# /var/run/postgresql; a path too long for a socket (107 bytes) gets none.
	sockets=$data
	if ((${#data} > 90)); then
		sockets=""
	fi
	as_pg tee -a "$data/postgresql.conf" >/dev/null <<EOF

# written by scripts/pg.sh
listen_addresses = '127.0.0.1'
unix_socket_directories = '${sockets//\'/\'\'}'
EOF
}

# start_cluster DATA PORT LOG starts the cluster and waits until it accepts
# connections. It returns 3 if the port is taken, 1 on other failures.
start_cluster() {
	local data=$1 port=$2 log=$3 out
	if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
		return 3
	fi
	if out=$(as_pg "$PG_BIN/pg_ctl" start -D "$data" -l "$log" -w -t 60 -o "-p $port" 2>&1); then
		return 0
	fi
	if grep -qE 'could not bind|Address already in use|could not create any TCP/IP sockets' "$log" 2>/dev/null; then
		return 3
	fi
	printf '%s\n' "$out" >&2
	tail -n 20 "$log" >&2 2>/dev/null || true
	return 1
}

stop_tmp_cluster() {
	if [[ -n $TMP_CLUSTER && -d $TMP_CLUSTER ]]; then
		if [[ -f $TMP_CLUSTER/data/postmaster.pid ]]; then
			as_pg "$PG_BIN/pg_ctl" stop -D "$TMP_CLUSTER/data" -m immediate -w -t 30 >/dev/null 2>&1 ||
				say "could not stop the throwaway cluster in $TMP_CLUSTER"
		fi
		rm -rf "$TMP_CLUSTER"
	fi
}

# start_tmp_cluster starts a throwaway cluster and sets TMP_CLUSTER and
# TMP_URL. It runs in the main shell so the EXIT trap knows what to remove.
start_tmp_cluster() {
	local base=${TMPDIR:-/tmp} port rc
	check_pg_user
	TMP_CLUSTER=$(mktemp -d "$base/lockstep-pg.XXXXXX")
	own_for_pg "$TMP_CLUSTER"
	if [[ $EUID -eq 0 ]] && ! as_pg test -w "$TMP_CLUSTER"; then
		# TMPDIR is not reachable by user postgres (say, under /root).
		rm -rf "$TMP_CLUSTER"
		TMP_CLUSTER=$(mktemp -d /tmp/lockstep-pg.XXXXXX)
		own_for_pg "$TMP_CLUSTER"
	fi
	init_cluster "$TMP_CLUSTER/data" --no-sync
	as_pg tee -a "$TMP_CLUSTER/data/postgresql.conf" >/dev/null <<'EOF'
# throwaway test cluster: durability off, room for parallel test packages
fsync = off
synchronous_commit = off
full_page_writes = off
max_connections = 200
EOF
	as_pg touch "$TMP_CLUSTER/postgres.log"
	for ((port = TEST_PORT_FIRST; port < TEST_PORT_FIRST + TEST_PORT_TRIES; port++)); do
		rc=0
		start_cluster "$TMP_CLUSTER/data" "$port" "$TMP_CLUSTER/postgres.log" || rc=$?
		case $rc in
		0)
			TMP_URL="postgres://postgres@127.0.0.1:$port/postgres?sslmode=disable"
			return 0
			;;
		3) continue ;;
		*) die "could not start a throwaway PostgreSQL cluster in $TMP_CLUSTER (log above)" ;;
		esac
	done
	die "no free port for a throwaway PostgreSQL cluster in $TEST_PORT_FIRST-$((TEST_PORT_FIRST + TEST_PORT_TRIES - 1))"
}

# run_with_cleanup runs CMD in the foreground (so Ctrl-C reaches it), then
# stops the throwaway cluster through the EXIT trap and exits with CMD's status.
run_with_cleanup() {
	local rc=0
	"$@" || rc=$?
	exit "$rc"
}

cmd_test() {
	local url
	if [[ -n ${TEST_DATABASE_URL:-} ]]; then
		url=$TEST_DATABASE_URL
		say "using test database server from TEST_DATABASE_URL: $(redact "$url")"
	elif [[ -n ${DATABASE_URL:-} ]]; then
		url=$DATABASE_URL
		say "using test database server from DATABASE_URL: $(redact "$url")"
	elif server_answers; then
		url=$(probe_url postgres)
		say "using test database server $url (answering on $PROBE)"
	else
		find_pg_bin || no_initdb
		trap stop_tmp_cluster EXIT
		trap 'exit 129' HUP
		trap 'exit 130' INT
		trap 'exit 143' TERM
		start_tmp_cluster
		url=$TMP_URL
		say "using test database server $url (throwaway cluster in $TMP_CLUSTER, $PG_BIN; removed on exit)"
		export TEST_DATABASE_URL=$url
		run_with_cleanup "$@"
	fi
	export TEST_DATABASE_URL=$url
	exec "$@"
}

# psql_at URL SQL runs one statement, quietly.
psql_at() {
	local psql
	psql=$(pg_tool psql) || die "psql not found; install the PostgreSQL client (Debian: apt-get install postgresql-client) or set DATABASE_URL"
	PGCONNECT_TIMEOUT=5 "$psql" "$1" -XAtqv ON_ERROR_STOP=1 -c "$2"
}

# ensure_dev_db URL creates lockstep_dev on the server at URL (a maintenance
# database) and prints "created" or "existing".
ensure_dev_db() {
	local exists out
	exists=$(psql_at "$1" "SELECT 1 FROM pg_database WHERE datname = '$DEV_DB'")
	if [[ $exists == 1 ]]; then
		echo existing
		return 0
	fi
	if out=$(psql_at "$1" "CREATE DATABASE $DEV_DB" 2>&1); then
		echo created
	elif [[ $out == *"already exists"* ]]; then
		echo existing
	else
		printf '%s\n' "$out" >&2
		die "could not create database $DEV_DB"
	fi
}

dev_running() {
	[[ -f $DEV_DATA/PG_VERSION ]] && as_pg "$PG_BIN/pg_ctl" status -D "$DEV_DATA" >/dev/null 2>&1
}

# start_dev_cluster starts (creating it if needed) the cluster in .dev/pgdata
# and prints how it found it.
start_dev_cluster() {
	local rc=0
	find_pg_bin || no_initdb
	check_pg_user
	mkdir -p "$DEV_DIR"
	if [[ $EUID -eq 0 ]] && ! as_pg test -x "$DEV_DIR"; then
		die "user postgres cannot reach $DEV_DIR (a parent directory is closed to it); set DATABASE_URL, or move the repository"
	fi
	if dev_running; then
		echo "private cluster in .dev/pgdata, already running"
		return 0
	fi
	if [[ ! -f $DEV_DATA/PG_VERSION ]]; then
		if [[ -e $DEV_DATA ]] && [[ -n $(ls -A "$DEV_DATA" 2>/dev/null) ]]; then
			die "$DEV_DATA exists but is not a PostgreSQL data directory; remove it and try again"
		fi
		mkdir -p "$DEV_DATA"
		chmod 700 "$DEV_DATA"
		own_for_pg "$DEV_DATA"
		say "creating a private development cluster in .dev/pgdata ($PG_BIN)"
		init_cluster "$DEV_DATA"
	fi
	touch "$DEV_DIR/postgres.log"
	own_for_pg "$DEV_DIR/postgres.log"
	start_cluster "$DEV_DATA" "$DEV_PORT" "$DEV_DIR/postgres.log" || rc=$?
	case $rc in
	0) echo "started private cluster in .dev/pgdata" ;;
	3) die "port $DEV_PORT is taken by another program; stop it or set DATABASE_URL" ;;
	*) die "could not start the development cluster in .dev/pgdata (log: .dev/postgres.log)" ;;
	esac
}

cmd_dev() {
	local url how
	if [[ -n ${DATABASE_URL:-} ]]; then
		say "using DATABASE_URL: $(redact "$DATABASE_URL")"
		exec "$@"
	fi
	if server_answers; then
		how=$(ensure_dev_db "$(probe_url postgres)")
		url=$(probe_url "$DEV_DB")
	else
		how=$(start_dev_cluster)
		how="$(ensure_dev_db "postgres://postgres@127.0.0.1:$DEV_PORT/postgres?sslmode=disable"), $how"
		url="postgres://postgres@127.0.0.1:$DEV_PORT/$DEV_DB?sslmode=disable"
	fi
	say "using local development database $url ($how)"
	export DATABASE_URL=$url
	exec "$@"
}

cmd_dev_stop() {
	if [[ ! -f $DEV_DATA/PG_VERSION ]]; then
		say "no development cluster in .dev/pgdata"
		return 0
	fi
	find_pg_bin || no_initdb
	check_pg_user
	if ! dev_running; then
		say "the development cluster in .dev/pgdata is not running"
		return 0
	fi
	as_pg "$PG_BIN/pg_ctl" stop -D "$DEV_DATA" -m fast -w -t 60 >/dev/null
	say "stopped the development cluster in .dev/pgdata (data kept; rm -rf .dev to delete it)"
}

cmd_probe() {
	if [[ -n ${TEST_DATABASE_URL:-} ]]; then
		say "would use TEST_DATABASE_URL: $(redact "$TEST_DATABASE_URL")"
	elif [[ -n ${DATABASE_URL:-} ]]; then
		say "would use DATABASE_URL: $(redact "$DATABASE_URL")"
	elif server_answers; then
		say "would use the server answering on $PROBE"
	elif find_pg_bin; then
		say "would start a throwaway cluster with $PG_BIN"
	else
		say "no PostgreSQL server answers on $PROBE and no initdb was found"
		return 1
	fi
}

main() {
	local mode=${1:-}
	[[ $# -gt 0 ]] && shift
	case $mode in
	test | dev)
		[[ ${1:-} == -- ]] && shift
		[[ $# -gt 0 ]] || usage
		"cmd_$mode" "$@"
		;;
	dev-stop) cmd_dev_stop ;;
	probe) cmd_probe ;;
	*) usage ;;
	esac
}

main "$@"
