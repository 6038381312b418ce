# The multi-connection section of bench/run: random 4 KiB reads and writes over 1, 2 and 4 NBD
# connections at once. fio's nbd engine opens one connection per job, so N connections are
# `--numjobs=N` (fio processes) reported as one group; each job gets its own 1/N of the disk
# (`--offset_increment`), so writes never overlap. Sourced by bench/run.
# shellcheck shell=bash disable=SC2154  # set by bench/run, which sources this

multiconn_targets=(cowbd nbdkit-file nbdkit-cow qemu-nbd)
# Writes in all, whatever the connection count: 32768 x 4 KiB = 128 MiB, long enough to time.
readonly MULTICONN_WRITE_COUNT=32768

# multiconn_jobs: rand-read-Nconn for each count, then rand-write-Nconn for each count.
multiconn_jobs() {
    local count
    for count in "${connection_counts[@]}"; do echo "rand-read-${count}conn"; done
    for count in "${connection_counts[@]}"; do echo "rand-write-${count}conn"; done
}

multiconn_description() {
    local count="${1##*-}"
    count="${count%conn}"
    local connections="each of $count connections"
    [ "$count" -gt 1 ] || connections="1 connection"
    case "$1" in
        rand-read-*) echo "random 4 KiB reads, QD32 on $connections" ;;
        rand-write-*)
            echo "$MULTICONN_WRITE_COUNT random 4 KiB writes in all, QD32 on $connections" \
                "(disjoint slices), then FLUSH on each"
            ;;
    esac
}

multiconn_fio_arguments() {
    local count="${1##*-}"
    count="${count%conn}"
    # Slices of whole MiBs, so every job's 4 KiB blocks stay aligned.
    local slice_byte_count=$((disk_byte_count / count / 1048576 * 1048576))
    local spread=(--numjobs="$count" --group_reporting --size="$slice_byte_count"
        --offset_increment="$slice_byte_count")
    case "$1" in
        rand-read-*)
            echo --rw=randread --bs=4k --iodepth=32 --time_based --runtime="$runtime_seconds" \
                "${spread[@]}"
            ;;
        rand-write-*)
            echo --rw=randwrite --bs=4k --iodepth=32 \
                --number_ios=$((MULTICONN_WRITE_COUNT / count)) --end_fsync=1 "${spread[@]}"
            ;;
    esac
}

multiconn_meta() {
    echo "multiconn.targets=${multiconn_targets[*]}"
    echo "multiconn.jobs=$(multiconn_jobs | tr '\n' ' ' | sed 's/ $//')"
    local job
    for job in $(multiconn_jobs); do
        echo "multiconn.job.$job.description=$(multiconn_description "$job")"
        echo "multiconn.job.$job.fio=$(multiconn_fio_arguments "$job")"
    done
}

# Reads first, on the untouched base; each write job on fresh overlays, so every write
# allocates.
run_multiconn_section() {
    local target round job
    local fio_arguments=()
    say "section multiconn: $(multiconn_jobs | tr '\n' ' ')against ${multiconn_targets[*]}"
    for target in "${multiconn_targets[@]}"; do start_target "$target"; done
    warm_page_cache "$base"
    if [ -f "$WORK_DIR/base-copy.img" ]; then warm_page_cache "$WORK_DIR/base-copy.img"; fi
    for round in $(seq "$round_count"); do
        for job in $(multiconn_jobs); do
            if [[ "$job" == rand-write-* ]] || { [ "$round" -gt 1 ] \
                && [ "$job" = "rand-read-${connection_counts[0]}conn" ]; }; then
                for target in "${multiconn_targets[@]}"; do fresh_overlay "$target"; done
            fi
            say "multiconn, round $round/$round_count, $job: $(multiconn_description "$job")"
            read -r -a fio_arguments <<<"$(multiconn_fio_arguments "$job")"
            for target in "${multiconn_targets[@]}"; do
                measure_fio_job multiconn "$job" "$target" "$round" "${fio_arguments[@]}"
            done
        done
    done
    for target in "${multiconn_targets[@]}"; do stop_target "$target"; done
}
