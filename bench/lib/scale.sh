# The scale section of bench/run: cowbd over a huge sparse base (1 TiB by default). Times create,
# info and info --json; serve's start-up (exec until a handshake completes); its peak RSS while
# 4 connections read and write 4 KiB blocks all over the disk; its RSS as the written chunks
# grow (the bitmap's memory); start-up again with those chunks. Sourced by bench/run.
# shellcheck shell=bash disable=SC2154  # set by bench/run, which sources this

# scale_time NAME COMMAND...: runs COMMAND once, timed; appends NAME_seconds to the record.
scale_time() {
    local name="$1"
    shift
    local started
    started=$(date +%s%N)
    "$@" >"$WORK_DIR/scale-step.out" 2>"$WORK_DIR/scale-step.log" \
        || { cat "$WORK_DIR/scale-step.log" >&2; die "scale: $name failed: $*"; }
    echo "${name}_seconds=$(awk -v n="$(($(date +%s%N) - started))" 'BEGIN { print n / 1e9 }')" \
        >>"$scale_record"
}

# scale_start_server NAME: starts cowbd serve on the scale store and appends NAME_seconds: from
# exec until nbdinfo (its own exec included) has completed a handshake.
scale_start_server() {
    local name="$1"
    local socket="$WORK_DIR/scale.sock"
    rm -f "$socket"
    local started ended=""
    started=$(date +%s%N)
    timeout --kill-after=5 "$SERVER_MAX_SECONDS" "$cowbd" serve "$WORK_DIR/scale.cow" \
        --listen "unix:$socket" --log-level warning >"$WORK_DIR/scale.out" \
        2>"$WORK_DIR/scale.log" &
    local timeout_pid=$!
    # No sleep between tries: each is an nbdinfo exec, a few ms; bounded at about 30 s.
    for _ in $(seq 3000); do
        if nbdinfo --size "nbd+unix:///?socket=$socket" >/dev/null 2>&1; then
            ended=$(date +%s%N)
            break
        fi
        kill -0 "$timeout_pid" 2>/dev/null || break
        sleep 0.005
    done
    [ -n "$ended" ] || { cat "$WORK_DIR/scale.log" >&2; die "scale: cowbd serve did not start"; }
    SERVER_PIDS[scale]=$(pgrep -P "$timeout_pid")
    {
        echo "${name}_seconds=$(awk -v n="$((ended - started))" 'BEGIN { print n / 1e9 }')"
        echo "${name}_rss_kib=$(awk '/^VmRSS:/ { print $2 }' "/proc/${SERVER_PIDS[scale]}/status")"
    } >>"$scale_record"
}

scale_rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/${SERVER_PIDS[scale]}/status"; }

# scale_written_chunks: chunks the store records as written (as of the server's last flush).
scale_written_chunks() {
    "$cowbd" info "$WORK_DIR/scale.cow" --json \
        | "$PYTHON" -c 'import json, sys; print(json.load(sys.stdin)["chunks_written"])'
}

scale_meta() {
    echo "scale.disk_bytes=$scale_byte_count"
    echo "scale.write_counts=${scale_write_counts[*]}"
}

run_scale_section() {
    scale_record="$run_dir/raw/scale.env"
    local socket="$WORK_DIR/scale.sock"
    say "section scale: cowbd over a $(numfmt --to=iec "$scale_byte_count") sparse base"
    truncate -s "$scale_byte_count" "$WORK_DIR/scale-base.img"
    {
        echo "disk_bytes=$scale_byte_count"
        echo "runtime_seconds=$runtime_seconds"
        echo "cpu_count=$(nproc)"
    } >"$scale_record"
    sync
    echo "quiet_wait_seconds=$(wait_for_quiet)" >>"$scale_record"
    scale_time create "$cowbd" create "$WORK_DIR/scale.cow" --base "$WORK_DIR/scale-base.img"
    {
        echo "store_bytes=$(stat --format=%s "$WORK_DIR/scale.cow")"
        echo "store_allocated_bytes=$(allocated_bytes_on_disk "$WORK_DIR/scale.cow")"
    } >>"$scale_record"
    scale_time info "$cowbd" info "$WORK_DIR/scale.cow"
    scale_time info_json "$cowbd" info "$WORK_DIR/scale.cow" --json
    scale_start_server startup

    # Four connections, each reading and writing 4 KiB blocks anywhere on the disk.
    local prefix="$run_dir/raw/scale.mixed"
    run_fio_job "$prefix" "$socket" "${SERVER_PIDS[scale]}" --rw=randrw --rwmixread=50 --bs=4k \
        --iodepth=8 --numjobs=4 --group_reporting --norandommap --time_based \
        --runtime="$runtime_seconds" --end_fsync=1
    {
        echo "mixed_peak_rss_kib=$(peak_rss_kib "${SERVER_PIDS[scale]}")"
        echo "mixed_rss_kib=$(scale_rss_kib)"
        echo "mixed_chunks_written=$(scale_written_chunks)"
    } >>"$scale_record"
    "$PYTHON" "$BENCH_DIR/lib/report.py" --line "$prefix" cowbd >&2

    # The bitmap's memory: RSS after more and more scattered chunks, each write a new block at a
    # seeded random offset anywhere on the disk (scatter_writes.py: one connection, QD32).
    local count step=0
    for count in "${scale_write_counts[@]}"; do
        step=$((step + 1))
        timeout --kill-after=10 "$FIO_MAX_SECONDS" "$PYTHON" "$BENCH_DIR/lib/scatter_writes.py" \
            "$socket" "$count" "$((FIO_SEED + step))" \
            || die "scale: writing $count scattered blocks failed"
        {
            echo "grow$step.write_count=$count"
            echo "grow$step.rss_kib=$(scale_rss_kib)"
            echo "grow$step.peak_rss_kib=$(peak_rss_kib "${SERVER_PIDS[scale]}")"
            echo "grow$step.chunks_written=$(scale_written_chunks)"
            echo "grow$step.store_allocated_bytes=$(allocated_bytes_on_disk \
                "$WORK_DIR/scale.cow")"
        } >>"$scale_record"
    done
    echo "grow_step_count=$step" >>"$scale_record"
    stop_server scale
    scale_start_server restart
    stop_server scale
    scale_time info_after "$cowbd" info "$WORK_DIR/scale.cow" --json
    rm -f "$WORK_DIR/scale.cow" "$WORK_DIR/scale-base.img"
    "$PYTHON" "$BENCH_DIR/lib/report_sections.py" --scale-table "$scale_record" >&2
}
