# shellcheck shell=bash
# Shell helpers shared by scripts/test and scripts/dev. Source it, don't run it:
#
#   . "$(dirname "$0")/lib.sh"
#
# ensure_* make sure a tool is installed (installing the Debian package when running as root,
# otherwise printing the command to run) and never fail silently. pg_* manage a throwaway
# PostgreSQL cluster in a directory; as root, postgres runs as `nobody` because it refuses root.

set -euo pipefail

# Settings for a cluster that only lives for a test run: durability traded for speed.
# shellcheck disable=SC2034 # used by the scripts that source this file
PG_FAST_SETTINGS=(fsync=off full_page_writes=off synchronous_commit=off max_connections=500)

log() { printf '==> %s\n' "$*" >&2; }
warn() { printf 'warning: %s\n' "$*" >&2; }
die() {
	printf 'error: %s\n' "$*" >&2
	exit 1
}

# run_logged CMD...: prints CMD, then runs it.
run_logged() {
	log "$*"
	"$@"
}

is_root() { [ "$(id -u)" -eq 0 ]; }

# install_package PACKAGE BINARY: installs PACKAGE with apt-get as root, else says how and exits.
install_package() {
	local package=$1 binary=$2
	if ! is_root; then
		die "$binary not found; install it with: sudo apt-get install -y $package"
	fi
	if ! command -v apt-get >/dev/null; then
		die "$binary not found and apt-get is not available; install the $package package"
	fi
	log "$binary not found; installing the Debian package $package"
	# The lock timeout waits for another apt run (e.g. unattended upgrades) instead of failing.
	apt-get -o DPkg::Lock::Timeout=600 update -qq >&2 ||
		die "apt-get update failed; install $package by hand: apt-get install -y $package"
	DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "$package" >&2 ||
		die "apt-get install $package failed; install it by hand: apt-get install -y $package"
}

# ensure_rust: cargo must be on PATH.
ensure_rust() {
	if ! command -v cargo >/dev/null; then
		[ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
	fi
	command -v cargo >/dev/null ||
		die "cargo not found; install Rust with rustup: curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh"
}

# find_nats_server: prints the nats-server to use: EBB_NATS_SERVER, else PATH, else /usr/sbin or
# /usr/local/sbin (Debian's package puts it in /usr/sbin, which is not on a normal user's PATH).
find_nats_server() {
	local candidate
	if [ -n "${EBB_NATS_SERVER:-}" ]; then
		[ -x "$EBB_NATS_SERVER" ] || return 1
		printf '%s\n' "$EBB_NATS_SERVER"
		return 0
	fi
	if candidate=$(command -v nats-server); then
		printf '%s\n' "$candidate"
		return 0
	fi
	for candidate in /usr/sbin/nats-server /usr/local/sbin/nats-server; do
		if [ -x "$candidate" ]; then
			printf '%s\n' "$candidate"
			return 0
		fi
	done
	return 1
}

# ensure_nats_server: nats-server found by find_nats_server (installing it if need be); one off
# PATH is exported as EBB_NATS_SERVER, which `ebb dev` and the test kit read.
ensure_nats_server() {
	local found
	if [ -n "${EBB_NATS_SERVER:-}" ]; then
		[ -x "$EBB_NATS_SERVER" ] ||
			die "EBB_NATS_SERVER=$EBB_NATS_SERVER is not an executable file (unset it to use nats-server from PATH)"
		return 0
	fi
	if ! found=$(find_nats_server); then
		install_package nats-server nats-server
		found=$(find_nats_server) || die "nats-server is still not found on PATH or in /usr/sbin after installing nats-server"
	fi
	command -v nats-server >/dev/null || export EBB_NATS_SERVER=$found
}

# ensure_promtool: promtool, from Debian's prometheus package, for the alert-rule tests
# (services/ebb/tests/it/alerts.rs runs `promtool check rules` and `promtool test rules`). An
# EBB_PROMTOOL already set is used as is.
ensure_promtool() {
	if [ -n "${EBB_PROMTOOL:-}" ]; then
		[ -x "$EBB_PROMTOOL" ] ||
			die "EBB_PROMTOOL=$EBB_PROMTOOL is not an executable file (unset it to use promtool from PATH)"
		return 0
	fi
	command -v promtool >/dev/null && return 0
	install_package prometheus promtool
	command -v promtool >/dev/null || die "promtool is still not found on PATH after installing prometheus"
}

# The pyasic release services/minersim/tests/pyasic.rs is written against (PyPI).
PYASIC_VERSION=0.79.0

# ensure_pyasic: a Python with pyasic==$PYASIC_VERSION, exported as EBB_PYASIC_PYTHON for
# services/minersim/tests/pyasic.rs. An EBB_PYASIC_PYTHON already set is used as is; otherwise
# a virtualenv in ${XDG_CACHE_HOME:-$HOME/.cache}/ebb/pyasic-venv, created with pip (from PyPI)
# when missing or holding another release. Works as any user; needs Python 3.11 or newer.
ensure_pyasic() {
	if [ -n "${EBB_PYASIC_PYTHON:-}" ]; then
		[ -x "$EBB_PYASIC_PYTHON" ] ||
			die "EBB_PYASIC_PYTHON=$EBB_PYASIC_PYTHON is not an executable file (unset it to use a virtualenv made by scripts/test)"
		export EBB_PYASIC_PYTHON
		return 0
	fi
	local cache=${XDG_CACHE_HOME:-$HOME/.cache}/ebb
	local venv=$cache/pyasic-venv have base candidate pyasic_lock=''
	mkdir -p "$cache" || die "cannot create $cache for the pyasic virtualenv"
	if command -v flock >/dev/null; then
		# Another scripts/test may be installing into the same virtualenv.
		exec {pyasic_lock}>"$cache/pyasic-venv.lock"
		flock "$pyasic_lock"
	fi
	have=$("$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("pyasic"))' 2>/dev/null) || have=
	if [ "$have" != "$PYASIC_VERSION" ]; then
		if ! "$venv/bin/python" -m pip --version >/dev/null 2>&1; then
			base=
			for candidate in python3.13 python3.12 python3.11 python3; do
				if "$candidate" -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1; then
					base=$candidate
					break
				fi
			done
			if [ -z "$base" ] && command -v python3 >/dev/null &&
				python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
				# Debian's python3 makes virtualenvs only with python3-venv (ensurepip).
				install_package python3-venv "python3 -m venv"
				base=python3
			fi
			[ -n "$base" ] ||
				die "pyasic $PYASIC_VERSION needs Python 3.11 or newer with the venv module; install it (Debian: apt-get install -y python3 python3-venv) or set EBB_PYASIC_PYTHON to a Python that has pyasic==$PYASIC_VERSION"
			log "creating a virtualenv for pyasic in $venv with $base ($("$base" --version 2>&1))"
			rm -rf "$venv"
			"$base" -m venv "$venv" >&2 || die "$base -m venv $venv failed"
		fi
		log "installing pyasic==$PYASIC_VERSION into $venv${have:+ (it had $have)} with pip"
		"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "pyasic==$PYASIC_VERSION" >&2 ||
			die "pip install pyasic==$PYASIC_VERSION into $venv failed (is PyPI reachable?); or set EBB_PYASIC_PYTHON to a Python that has it"
		have=$("$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("pyasic"))' 2>/dev/null) || have=
		[ "$have" = "$PYASIC_VERSION" ] ||
			die "pip installed pyasic ${have:-nothing} into $venv instead of $PYASIC_VERSION"
	fi
	if [ -n "$pyasic_lock" ]; then exec {pyasic_lock}>&-; fi
	export EBB_PYASIC_PYTHON=$venv/bin/python
}

# find_pg_bindir: prints the directory holding initdb, postgres and pg_ctl: EBB_PG_BINDIR, else
# PATH, else the newest /usr/lib/postgresql/*/bin (where Debian puts them, off PATH).
find_pg_bindir() {
	local dir candidates=()
	if [ -n "${EBB_PG_BINDIR:-}" ]; then
		candidates=("$EBB_PG_BINDIR")
	else
		if command -v initdb >/dev/null; then
			candidates+=("$(dirname "$(command -v initdb)")")
		fi
		while IFS= read -r dir; do
			candidates+=("$dir")
		done < <(find /usr/lib/postgresql -mindepth 2 -maxdepth 2 -name bin -type d 2>/dev/null | sort -t/ -k5,5 -n -r)
	fi
	for dir in "${candidates[@]}"; do
		if [ -x "$dir/initdb" ] && [ -x "$dir/postgres" ] && [ -x "$dir/pg_ctl" ]; then
			printf '%s\n' "$dir"
			return 0
		fi
	done
	return 1
}

# ensure_postgres: initdb, postgres and pg_ctl on PATH (adding Debian's bindir if needed).
ensure_postgres() {
	local dir
	if [ -n "${EBB_PG_BINDIR:-}" ]; then
		dir=$(find_pg_bindir) ||
			die "EBB_PG_BINDIR=$EBB_PG_BINDIR does not contain initdb, postgres and pg_ctl"
	elif ! dir=$(find_pg_bindir); then
		install_package postgresql initdb
		dir=$(find_pg_bindir) ||
			die "initdb/postgres/pg_ctl still not found on PATH or in /usr/lib/postgresql/*/bin after installing postgresql"
	fi
	case ":$PATH:" in
	*":$dir:"*) ;;
	*) export PATH="$dir:$PATH" ;;
	esac
}

# as_pg_user CMD...: runs CMD as the current user, or as `nobody` when root (postgres refuses
# to run as root).
as_pg_user() {
	if ! is_root; then
		"$@"
	elif command -v setpriv >/dev/null; then
		setpriv --reuid="$(id -u nobody)" --regid="$(id -g nobody)" --clear-groups -- "$@"
	elif command -v runuser >/dev/null; then
		runuser -u nobody -- "$@"
	else
		die "running as root, and neither setpriv nor runuser (package util-linux) is available to run postgres as nobody"
	fi
}

# pg_init DIR: creates a cluster in DIR/data (trust auth, superuser `postgres`, UTF8).
pg_init() {
	local dir=$1
	mkdir -p "$dir"
	if is_root; then chown "$(id -u nobody):$(id -g nobody)" "$dir"; fi
	if ! (cd "$dir" && as_pg_user initdb -D "$dir/data" -A trust -U postgres -E UTF8 --locale=C \
		--no-sync --no-instructions >"$dir/initdb.log" 2>&1); then
		cat "$dir/initdb.log" >&2
		die "initdb failed (log above)"
	fi
}

# pg_start DIR [SETTING...]: starts the cluster in DIR on a free loopback port, with its unix
# socket in DIR and its log in DIR/postgres.log, and sets PG_PORT. Retries if the port is taken.
pg_start() {
	local dir=$1 attempt port opts setting
	shift
	for attempt in 1 2 3 4 5; do
		port=$(pick_port)
		opts="-h 127.0.0.1 -p $port -k '$dir'"
		for setting in "$@"; do
			opts+=" -c $setting"
		done
		: >"$dir/postgres.log"
		if is_root; then chown "$(id -u nobody):$(id -g nobody)" "$dir/postgres.log"; fi
		if (cd "$dir" && as_pg_user pg_ctl -D "$dir/data" -l "$dir/postgres.log" -w -t 60 -o "$opts" start >/dev/null); then
			# shellcheck disable=SC2034 # the caller's result
			PG_PORT=$port
			return 0
		fi
		grep -qE 'could not bind|Address already in use' "$dir/postgres.log" || break
		warn "port $port is taken (attempt $attempt), trying another"
	done
	tail -n 30 "$dir/postgres.log" >&2
	die "postgres did not start (log above, from $dir/postgres.log)"
}

# pg_stop DIR: immediate shutdown; quiet if it is not running.
pg_stop() {
	local dir=$1
	[ -f "$dir/data/postmaster.pid" ] || return 0
	(cd "$dir" && as_pg_user pg_ctl -D "$dir/data" -m immediate -w stop >/dev/null 2>&1) || true
}

# pick_port: a random port in 20000-59999 that nothing on 127.0.0.1 answers on.
pick_port() {
	local port
	while :; do
		port=$((20000 + RANDOM % 40000))
		if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
			printf '%s\n' "$port"
			return 0
		fi
	done
}

# fast_tmp_parent: /dev/shm when it has at least 1 GiB free (tmpfs makes CREATE DATABASE ~5x
# faster), else ${TMPDIR:-/tmp}. Docker's default /dev/shm is only 64 MiB.
fast_tmp_parent() {
	local free_kib
	free_kib=$(df -Pk /dev/shm 2>/dev/null | awk 'NR == 2 { print $4 }') || free_kib=0
	if [ -w /dev/shm ] && [ "${free_kib:-0}" -ge 1048576 ] 2>/dev/null; then
		printf '/dev/shm\n'
	else
		printf '%s\n' "${TMPDIR:-/tmp}"
	fi
}
