# Shared by bench/run and bench/chunk-size: installing and building, the cached base image,
# starting and stopping NBD servers, and one fio job with the server's CPU and memory around it.
# Sourced, not run; the caller sets `set -euo pipefail`, BENCH_DIR, REPO_DIR and WORK_DIR.
# shellcheck shell=bash

readonly FIO_SEED=42
# Debian's python3: the pyenv one first on PATH has no matplotlib.
readonly PYTHON=/usr/bin/python3
# No server outlives this many seconds, even if the script is killed before its trap runs.
readonly SERVER_MAX_SECONDS=3600
# A fio job that runs this long is stuck: it is killed and the run fails.
FIO_MAX_SECONDS=300
# Before each job, wait up to this long for the rest of the machine to calm down (0: don't).
QUIET_WAIT_SECONDS=${QUIET_WAIT_SECONDS:-30}
# "Calm": everything else together uses under this share of the machine's CPU.
readonly QUIET_BUSY_PERCENT=15

say() { printf '\033[1m== %s\033[0m\n' "$*" >&2; }
die() { echo "bench: $*" >&2; exit 1; }

# install_bench_tools: the load generator, the peers, the chart, and what builds cowbd.
install_bench_tools() {
    # shellcheck disable=SC1091  # a path known at run time
    source "$REPO_DIR/tools/lib/packages.sh"
    # fuse3, util-linux: the kernel section (nbdfuse, losetup); xz-utils: the compressed one.
    # shellcheck disable=SC2086  # a list of package names, split on purpose
    ensure_packages $COWBD_BUILD_PACKAGES fio nbdkit qemu-utils libnbd-bin python3-matplotlib \
        e2fsprogs fuse3 util-linux xz-utils
}

# build_cowbd [BINARY]: prints the path of the cowbd to measure. With BINARY, checks it and
# builds nothing; otherwise builds the work tree in release mode, in a scratch path of its own.
build_cowbd() {
    local given="${1:-}"
    if [ -n "$given" ]; then
        [ -x "$given" ] || die "--cowbd $given: not an executable"
        realpath "$given"
        return
    fi
    say "building cowbd (release, scratch path .build-bench)"
    (cd "$REPO_DIR" && swift build -c release --product cowbd --scratch-path .build-bench 2>&1 \
        | tail -n 3 >&2) || die "swift build failed"
    [ -x "$REPO_DIR/.build-bench/release/cowbd" ] || die "swift build made no cowbd binary"
    echo "$REPO_DIR/.build-bench/release/cowbd"
}

# size_in_bytes SIZE: 256M, 1G, 1GiB, 4096 -> bytes (binary units).
size_in_bytes() {
    local text="${1%iB}"
    text="${text%B}"
    numfmt --from=iec "$text" 2>/dev/null || die "cannot read size '$1' (try 256M or 1G)"
}

# make_base BYTES: prints the path of a cached raw base image of BYTES. Its first 7/8 are an
# ext4 file system about 60% full of copies of system files (a deterministic shuffle of
# /usr/share and /usr/lib), the last 1/8 seeded random bytes, as a partition would follow it.
make_base() {
    local byte_count="$1"
    local cache_dir="$BENCH_DIR/.cache"
    local image="$cache_dir/base-$byte_count.img"
    if [ -f "$image" ]; then
        echo "$image"
        return
    fi
    mkdir -p "$cache_dir"
    local random_byte_count=$((byte_count / 8 / 1048576 * 1048576))
    local filesystem_byte_count=$((byte_count - random_byte_count))
    local file_budget_byte_count=$((filesystem_byte_count * 60 / 100))
    local staging="$cache_dir/staging-$byte_count.tmp"
    local partial="$image.tmp"
    say "making a $(numfmt --to=iec "$byte_count") base: ext4 with $(numfmt --to=iec \
"$file_budget_byte_count") of system files, then $(numfmt --to=iec "$random_byte_count") random"
    rm -rf "$staging" "$partial"
    mkdir -p "$staging"
    "$PYTHON" "$BENCH_DIR/lib/pick_files.py" "$file_budget_byte_count" /usr/share /usr/lib \
        | tar -C / --null --files-from=- --no-recursion -cf - 2>/dev/null \
        | tar -C "$staging" -xf -
    truncate -s "$byte_count" "$partial"
    mkfs.ext4 -q -F -E root_owner=0:0 -d "$staging" "$partial" "$((filesystem_byte_count / 1024))k"
    "$PYTHON" - "$partial" "$filesystem_byte_count" "$random_byte_count" <<'EOF'
import random, sys
path, offset, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
generator = random.Random(42)  # the same bytes on every machine
with open(path, "r+b") as image:
    image.seek(offset)
    for _ in range(count // 1048576):
        image.write(generator.randbytes(1048576))
EOF
    rm -rf "$staging"
    mv "$partial" "$image"
    echo "$image"
}

# warm_page_cache FILE...: reads them so every target starts from a cached base.
warm_page_cache() { cat "$@" >/dev/null; }

# --- servers -----------------------------------------------------------------------------
# Each server runs under `timeout` (a bound if this script dies uncleanly); SERVER_PIDS holds
# the server's own pid (the child of timeout), which is what /proc is read for and TERM sent to.

declare -gA SERVER_PIDS=()

# start_server NAME SOCKET COMMAND...: starts it in the background, waits for its socket to
# answer NBD (SERVER_START_TRIES times 50 ms, 10 s unless set), and records its pid. Its stderr
# goes to $WORK_DIR/NAME.log.
start_server() {
    local name="$1" socket="$2"
    shift 2
    timeout --kill-after=5 "$SERVER_MAX_SECONDS" "$@" >"$WORK_DIR/$name.out" \
        2>"$WORK_DIR/$name.log" &
    local timeout_pid=$!
    local server_pid=""
    for _ in $(seq "${SERVER_START_TRIES:-200}"); do
        [ -z "$server_pid" ] && server_pid=$(pgrep -P "$timeout_pid" || true)
        if [ -n "$server_pid" ] && [ -S "$socket" ] \
            && nbdinfo --size "nbd+unix:///?socket=$socket" >/dev/null 2>&1; then
            SERVER_PIDS[$name]=$server_pid
            return
        fi
        kill -0 "$timeout_pid" 2>/dev/null || break
        sleep 0.05
    done
    cat "$WORK_DIR/$name.log" >&2
    [ -n "$server_pid" ] && kill -TERM "$server_pid" 2>/dev/null
    die "$name did not start serving on $socket (command: $*)"
}

# stop_server NAME: TERM, then KILL after 10 s; waits for it.
stop_server() {
    local name="$1"
    local pid="${SERVER_PIDS[$name]:-}"
    [ -n "$pid" ] || return 0
    unset "SERVER_PIDS[$name]"
    kill -TERM "$pid" 2>/dev/null || return 0
    for _ in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    echo "bench: $name (pid $pid) ignored SIGTERM for 10 s; killing it" >&2
    kill -KILL "$pid" 2>/dev/null || true
}

stop_all_servers() {
    local name
    for name in "${!SERVER_PIDS[@]}"; do stop_server "$name"; done
}

FIO_PID=""
# Commands clean_up runs first (e.g. unmounting what a section mounted), each a string to eval.
CLEAN_UP_COMMANDS=()

# clean_up: the EXIT trap of both scripts. Runs CLEAN_UP_COMMANDS, ends a fio still running (its
# timeout process), stops every server, removes the work folder.
clean_up() {
    local command
    for command in "${CLEAN_UP_COMMANDS[@]}"; do eval "$command" || true; done
    if [ -n "$FIO_PID" ]; then
        kill -TERM "$FIO_PID" 2>/dev/null || true
        wait "$FIO_PID" 2>/dev/null || true
    fi
    stop_all_servers
    rm -rf "$WORK_DIR"
}

# --- measuring -----------------------------------------------------------------------------

# cpu_ticks PID: user + system CPU of the whole process (every thread, live or exited), in
# clock ticks. Fields 14 and 15 of /proc/PID/stat, counted after the ")" that ends comm.
cpu_ticks() { sed 's/^.*) //' "/proc/$1/stat" | awk '{ print $12 + $13 }'; }

# reset_peak_rss PID: "5" to clear_refs resets VmHWM, so it becomes the peak of the next job.
reset_peak_rss() { echo 5 >"/proc/$1/clear_refs" 2>/dev/null || true; }

peak_rss_kib() { awk '/^VmHWM:/ { print $2 }' "/proc/$1/status"; }

# busy_ticks: CPU time the whole machine spent busy (user, nice, system, irq, softirq, steal),
# in clock ticks, from the first line of /proc/stat.
busy_ticks() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9; exit }' /proc/stat; }

# machine_activity: the machine's CPU use over one second and its busiest processes, one line.
machine_activity() {
    top -b -n 2 -d 1 -w 200 | awk '
        /^top -/ { block++ }
        block == 2 && /^%Cpu/ { idle = $8 }
        block == 2 && header && $9 + 0 >= 5 && count < 5 {
            busiest = busiest (count++ ? ", " : "") $12 " " $9 "%"
        }
        block == 2 && $1 == "PID" { header = 1 }
        END { printf "%s%% idle; busiest: %s\n", idle, (busiest == "" ? "none" : busiest) }'
}

# wait_for_quiet: samples the machine's CPU use for half a second at a time until it is under
# QUIET_BUSY_PERCENT (our servers are idle between jobs) or QUIET_WAIT_SECONDS have passed.
# Prints the seconds waited.
wait_for_quiet() {
    local started=$SECONDS before after busy_percent
    local tick_count=$(($(getconf CLK_TCK) * $(nproc)))
    while :; do
        before=$(busy_ticks)
        sleep 0.5
        after=$(busy_ticks)
        busy_percent=$(((after - before) * 200 / tick_count))
        if [ "$busy_percent" -lt "$QUIET_BUSY_PERCENT" ] \
            || [ $((SECONDS - started)) -ge "$QUIET_WAIT_SECONDS" ]; then
            echo $((SECONDS - started))
            return
        fi
    done
}

# run_fio_job RECORD_PREFIX SOCKET PID FIO_ARGUMENT...: one fio job (one connection, nbd engine)
# against the export on SOCKET. Writes RECORD_PREFIX.fio.json (fio's report) and
# RECORD_PREFIX.env (the server's CPU ticks before/after and peak RSS). With FLUSH_AFTER_FIO set,
# then one FLUSH timed apart (flush_ns; the CPU ticks and wall time include it). Then sync, so
# the next job does not pay for this one's writeback.
run_fio_job() {
    local prefix="$1" socket="$2" pid="$3"
    shift 3
    local ticks_before ticks_after machine_before machine_after started_ns waited_seconds
    sync
    waited_seconds=$(wait_for_quiet)
    reset_peak_rss "$pid"
    ticks_before=$(cpu_ticks "$pid")
    machine_before=$(busy_ticks)
    started_ns=$(date +%s%N)
    # In the background with `wait`, so a signal to this script is handled at once, not after fio.
    timeout --kill-after=10 "$FIO_MAX_SECONDS" fio --name=job --ioengine=nbd \
        --uri="nbd+unix:///?socket=$socket" --randrepeat=1 --randseed="$FIO_SEED" \
        --output-format=json --output="$prefix.fio.json" "$@" >"$prefix.fio.log" 2>&1 &
    FIO_PID=$!
    wait "$FIO_PID" || { cat "$prefix.fio.log" >&2; die "fio failed: $prefix (fio $*)"; }
    FIO_PID=""
    local flush_ns=""
    if [ -n "${FLUSH_AFTER_FIO:-}" ]; then
        flush_ns=$("$PYTHON" "$BENCH_DIR/lib/timed_flush.py" "$socket") \
            || die "the FLUSH after $prefix failed"
    fi
    ticks_after=$(cpu_ticks "$pid")
    machine_after=$(busy_ticks)
    {
        echo "wall_ns=$(($(date +%s%N) - started_ns))"
        echo "quiet_wait_seconds=$waited_seconds"
        echo "cpu_count=$(nproc)"
        echo "machine_busy_ticks_before=$machine_before"
        echo "machine_busy_ticks_after=$machine_after"
        echo "clock_ticks_per_second=$(getconf CLK_TCK)"
        echo "server_cpu_ticks_before=$ticks_before"
        echo "server_cpu_ticks_after=$ticks_after"
        echo "server_peak_rss_kib=$(peak_rss_kib "$pid")"
        [ -z "$flush_ns" ] || echo "flush_ns=$flush_ns"
    } >"$prefix.env"
}

# allocated_bytes_on_disk FILE: what the file system allocated for FILE (du --block-size=1).
allocated_bytes_on_disk() { du --block-size=1 "$1" | cut -f1; }
