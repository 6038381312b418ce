# One harness for the scripts that need the kernel, root, a VM, qemu or nbdfuse, and for bench/:
# a work folder removed on every exit path, servers started under a timeout and waited for until
# `nbdinfo` answers, stopped by pid with their exit status checked, and checks counted to the
# closing line "N passed, N failed". What needs only cowbd and libnbd is a Swift test instead.
# Sourced, not run. A script calls harness_init first; bench sets HARNESS_WORK itself.
# shellcheck shell=bash

# shellcheck disable=SC1091  # a path known at run time
source "$(dirname "${BASH_SOURCE[0]}")/packages.sh"

# Debian's python3, which has python3-libnbd (a pyenv one first on PATH may not).
HARNESS_PYTHON=/usr/bin/python3
# No server outlives this many seconds, even if the script dies before its trap runs.
HARNESS_SERVER_MAX_SECONDS=${HARNESS_SERVER_MAX_SECONDS:-3600}
# How long a server may take to answer nbdinfo, and to exit after SIGTERM.
HARNESS_START_SECONDS=20
HARNESS_STOP_SECONDS=30

declare -gA SERVER_PIDS=()
# Commands harness_clean_up runs first (unmounting, detaching), each a string to eval.
CLEAN_UP_COMMANDS=()
passed=0 failed=0

# skip_or_fail MESSAGE: a missing prerequisite. Under CI it fails the run; elsewhere it skips
# (exit 77, which tools/test counts as skipped).
skip_or_fail() {
    if [ -n "${CI:-}" ]; then
        echo "$1 (CI: failing, not skipping)" >&2
        exit 1
    fi
    echo "skipping: $1" >&2
    exit 77
}

require_root() { [ "$(id -u)" -eq 0 ] || skip_or_fail "${1:-this test} needs root"; }

# require_python_nbd: Debian's python3 with libnbd's binding (python3-libnbd).
require_python_nbd() {
    require_tool "$HARNESS_PYTHON"
    "$HARNESS_PYTHON" -c 'import nbd' 2>/dev/null || skip_or_fail "python3-libnbd is missing"
}

# harness_init NAME: makes the work folder $work (on tmpfs with --shm), sets the EXIT trap and
# PYTHONPATH (tools/lib, for the shared Python helpers).
harness_init() {
    local name=$1 parent=/tmp
    [ "${2:-}" = --shm ] && [ -d /dev/shm ] && parent=/dev/shm
    work=$(mktemp -d "$parent/cowbd-$name.XXXXXX")
    HARNESS_WORK=$work
    export PYTHONPATH PYTHONDONTWRITEBYTECODE=1
    PYTHONPATH="$(realpath "$(dirname "${BASH_SOURCE[0]}")")${PYTHONPATH:+:$PYTHONPATH}"
    trap 'harness_clean_up; rm -rf "$work"' EXIT
}

# wait_until SECONDS COMMAND...: polls COMMAND every 50 ms until it succeeds (0) or SECONDS pass (1).
wait_until() {
    local deadline=$((SECONDS + $1))
    shift
    until "$@"; do
        [ "$SECONDS" -lt "$deadline" ] || return 1
        sleep 0.05
    done
}

# nbd_uri ADDRESS: a socket path becomes an nbd+unix URI; a URI is kept.
nbd_uri() { case $1 in nbd*://*) echo "$1" ;; *) echo "nbd+unix:///?socket=$1" ;; esac; }

# socket_of ADDRESS: the unix socket path of ADDRESS (a path, or a URI with ?socket=), or nothing.
socket_of() {
    case $1 in
        *socket=*) local path=${1#*socket=}; echo "${path%%&*}" ;;
        nbd*://*) ;;
        *) echo "$1" ;;
    esac
}

# nbd_answers URI: nbdinfo can open the export.
nbd_answers() { nbdinfo --size "$1" >/dev/null 2>&1; }

# start_server NAME ADDRESS COMMAND...: runs COMMAND in the background under `timeout`, waits
# until nbdinfo answers at ADDRESS (a unix socket path or an NBD URI) and records the pid in
# SERVER_PIDS[NAME] and a file (test functions run in subshells). Its stdout goes to
# $HARNESS_WORK/NAME.out, its stderr is appended to NAME.log. Fails (1) if it exits or does not
# answer within HARNESS_START_SECONDS.
start_server() {
    local name=$1 address=$2
    shift 2
    local uri socket
    uri=$(nbd_uri "$address")
    socket=$(socket_of "$address")
    [ -z "$socket" ] || rm -f "$socket"  # a killed server's; waiting must mean the new one's
    timeout --kill-after=5 "$HARNESS_SERVER_MAX_SECONDS" "$@" >"$HARNESS_WORK/$name.out" \
        2>>"$HARNESS_WORK/$name.log" &
    local timeout_pid=$! server_pid=""
    local deadline=$((SECONDS + HARNESS_START_SECONDS))
    while [ "$SECONDS" -lt "$deadline" ] && kill -0 "$timeout_pid" 2>/dev/null; do
        [ -n "$server_pid" ] || server_pid=$(pgrep -P "$timeout_pid" || true)
        if [ -n "$server_pid" ] && nbd_answers "$uri"; then
            SERVER_PIDS[$name]=$server_pid
            echo "$server_pid $timeout_pid $address" >"$HARNESS_WORK/$name.pid"
            return 0
        fi
        sleep 0.05
    done
    echo "$name did not start serving at $address (command: $*); its log:" >&2
    tail -5 "$HARNESS_WORK/$name.log" >&2
    [ -z "$server_pid" ] || kill -KILL "$server_pid" 2>/dev/null || true
    wait "$timeout_pid" 2>/dev/null || true
    return 1
}

# serve_store STORE [ARGS...]: `$cowbd serve STORE` (both $cowbd and $sock set by the script) as
# export "disk" on the unix socket $sock, logging at $serve_log_level (default info) to
# $work/serve.log, recorded as server "serve" (stop it with `stop_server serve`).
serve_store() {
    local store=$1
    shift
    start_server serve "nbd+unix:///disk?socket=$sock" "$cowbd" serve "$store" \
        --listen "unix:$sock" --export-name disk --log-level "${serve_log_level:-info}" "$@"
}

# make_tls_credentials DIR: fresh TLS credentials made by GnuTLS's certtool and psktool (never
# committed, never expiring mid-run): DIR/server (ca-cert.pem, server-cert.pem, server-key.pem for
# `serve --tls-certificates`), DIR/client (ca-cert.pem, client-cert.pem, client-key.pem: qemu's
# tls-creds-x509 dir, libnbd's tls-certificates), DIR/psk/keys.psk (user alice: `serve --tls-psk`,
# qemu's tls-creds-psk dir) and DIR/wrong-psk/keys.psk (alice with another key).
make_tls_credentials() {
    local dir=$1 pki=$1/pki
    mkdir -p "$pki" "$dir/server" "$dir/client" "$dir/psk" "$dir/wrong-psk"
    printf 'cn = cowbd test CA\nca\ncert_signing_key\nexpiration_days = 3650\n' >"$pki/ca.info"
    printf 'cn = localhost\ndns_name = localhost\nip_address = 127.0.0.1\ntls_www_server\nencryption_key\nsigning_key\nexpiration_days = 3650\n' >"$pki/server.info"
    printf 'cn = client\ntls_www_client\nencryption_key\nsigning_key\nexpiration_days = 3650\n' >"$pki/client.info"
    local name
    for name in ca server client; do
        certtool --generate-privkey --key-type=ecdsa --outfile "$pki/$name-key.pem" 2>/dev/null
    done
    certtool --generate-self-signed --load-privkey "$pki/ca-key.pem" --template "$pki/ca.info" \
        --outfile "$pki/ca-cert.pem" >/dev/null 2>&1
    for name in server client; do
        certtool --generate-certificate --load-privkey "$pki/$name-key.pem" \
            --load-ca-certificate "$pki/ca-cert.pem" --load-ca-privkey "$pki/ca-key.pem" \
            --template "$pki/$name.info" --outfile "$pki/$name-cert.pem" >/dev/null 2>&1
        cp "$pki/ca-cert.pem" "$pki/$name-cert.pem" "$pki/$name-key.pem" "$dir/$name/"
    done
    psktool -u alice -p "$dir/psk/keys.psk" >/dev/null
    psktool -u alice -p "$dir/wrong-psk/keys.psk" >/dev/null
}

# server_pid NAME: the pid of a server start_server started.
server_pid() { cut -d' ' -f1 "$HARNESS_WORK/$1.pid"; }

# stop_server NAME [--leaves-socket]: SIGTERM; the server must exit 0 within
# HARNESS_STOP_SECONDS and remove its unix socket (not checked with --leaves-socket: nbdkit 1.32
# leaves it). KILLs it otherwise. Returns 1 on any of those failures.
stop_server() {
    local name=$1 leaves_socket=${2:-} pid timeout_pid address status=0
    [ -s "$HARNESS_WORK/$name.pid" ] || return 0
    read -r pid timeout_pid address <"$HARNESS_WORK/$name.pid"
    rm -f "$HARNESS_WORK/$name.pid"
    unset "SERVER_PIDS[$name]"
    kill -TERM "$pid" 2>/dev/null || { echo "$name (pid $pid) had already exited" >&2; return 1; }
    if ! wait_until "$HARNESS_STOP_SECONDS" harness_exited "$pid"; then
        echo "$name (pid $pid) ignored SIGTERM for $HARNESS_STOP_SECONDS s; killing it" >&2
        kill -KILL "$pid" 2>/dev/null || true
        status=1
    fi
    # The exit status is known only to the shell that started it (not in a subshell).
    if wait "$timeout_pid" 2>/dev/null; then :; else
        local exit_status=$?
        [ "$exit_status" -ne 127 ] && { echo "$name exited $exit_status" >&2; status=1; }
    fi
    local socket
    socket=$(socket_of "$address")
    if [ "$leaves_socket" = --leaves-socket ]; then
        rm -f "$socket"
    elif [ -n "$socket" ] && [ -e "$socket" ]; then
        echo "$name left its socket $socket" >&2
        status=1
    fi
    [ "$status" -eq 0 ] || tail -5 "$HARNESS_WORK/$name.log" >&2
    return "$status"
}

# kill_server NAME: SIGKILL (a crash), waited for; its socket is left, as a crash leaves it.
kill_server() {
    local name=$1 pid timeout_pid address
    [ -s "$HARNESS_WORK/$name.pid" ] || return 0
    read -r pid timeout_pid address <"$HARNESS_WORK/$name.pid"
    rm -f "$HARNESS_WORK/$name.pid"
    unset "SERVER_PIDS[$name]"
    kill -KILL "$pid" 2>/dev/null || true
    wait_until 10 harness_exited "$pid" || true
    wait "$timeout_pid" 2>/dev/null || true
}

# harness_exited PID: the process is gone (or a zombie awaiting its parent's wait).
harness_exited() { ! kill -0 "$1" 2>/dev/null || [ "$(ps -o stat= -p "$1")" = Z ]; }

# stop_all_servers: stops every server still recorded (any subshell's), without checking them.
stop_all_servers() {
    local file
    for file in "$HARNESS_WORK"/*.pid; do
        [ -e "$file" ] || continue
        stop_server "$(basename "$file" .pid)" 2>/dev/null || true
    done
}

# harness_clean_up: the EXIT trap. Runs CLEAN_UP_COMMANDS, then stops every server.
harness_clean_up() {
    local command
    for command in "${CLEAN_UP_COMMANDS[@]}"; do eval "$command" || true; done
    [ -n "${HARNESS_WORK:-}" ] && stop_all_servers
}

# check NAME FUNCTION [ARGS...]: runs a test function in a subshell under set -e, its output in
# $work/NAME.log; counts it, prints its "note:" lines, or its last lines if it failed. Servers it
# left running are killed.
check() {
    local name=$1 started=$SECONDS
    shift
    # Not inside `if`: bash ignores set -e in a condition, and any failing step must fail the test.
    ( set -e; "$@" ) >"$work/$name.log" 2>&1
    local status=$?
    local file
    for file in "$work"/*.pid; do [ -e "$file" ] && kill_server "$(basename "$file" .pid)"; done
    if [ "$status" -eq 0 ]; then
        passed=$((passed + 1)); echo "ok   $name ($((SECONDS - started)) s)"
        sed -n 's/^note: /     /p' "$work/$name.log"
    else
        failed=$((failed + 1)); echo "FAIL $name"; sed 's/^/     /' "$work/$name.log" | tail -15
        local command
        for command in "${CLEAN_UP_COMMANDS[@]}"; do eval "$command" >/dev/null 2>&1 || true; done
    fi
}

# result STATUS NAME: counts one inline check by the status of what came before it.
result() {
    if [ "$1" -eq 0 ]; then
        passed=$((passed + 1)); echo "ok   $2"
    else
        failed=$((failed + 1)); echo "FAIL $2"
    fi
}

# fails COMMAND...: succeeds only if COMMAND fails (set -e ignores a bare `! COMMAND`).
fails() {
    if "$@"; then echo "unexpectedly succeeded: $*" >&2; return 1; fi
}

# harness_finish: the closing line "N passed, N failed"; exits 1 if any failed.
harness_finish() {
    echo "$passed passed, $failed failed"
    [ "$failed" -eq 0 ] || exit 1
    exit 0
}
