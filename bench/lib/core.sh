# The core section of bench/run: five fio jobs (one connection each) against every raw-base
# target, round by round, on fresh overlays. Also the job definitions the compressed and
# multi-connection sections reuse. Sourced by bench/run, which sets runtime_seconds,
# disk_byte_count, round_count, targets and run_dir.
# shellcheck shell=bash disable=SC2154  # set by bench/run, which sources this

# The jobs, in the order they run; every target sees the same sequence. Overlays start fresh at
# the start of each round and again before seq-write, so both write jobs allocate into an empty
# overlay (their write amplification is comparable) and read-after-write reads a disk that is
# half overlay (what seq-write wrote), half base.
core_jobs=(seq-read rand-read rand-write seq-write read-after-write)
core_fresh_overlay_before_job=seq-write

job_description() {
    case "$1" in
        seq-read) echo "sequential 1 MiB reads, QD8, of the untouched base" ;;
        rand-read) echo "random 4 KiB reads, QD32, of the untouched base" ;;
        rand-write) echo "8192 scattered random 4 KiB writes, QD32, then FLUSH" ;;
        seq-write)
            echo "sequential 1 MiB writes, QD8, over the first half of the disk, then a FLUSH" \
                "timed apart"
            ;;
        read-after-write)
            echo "random 4 KiB reads, QD32, of the disk seq-write left half overlay, half base"
            ;;
    esac
}

job_fio_arguments() {
    local timed=(--time_based --runtime="$runtime_seconds")
    case "$1" in
        seq-read) echo --rw=read --bs=1M --iodepth=8 "${timed[@]}" ;;
        rand-read) echo --rw=randread --bs=4k --iodepth=32 "${timed[@]}" ;;
        rand-write) echo --rw=randwrite --bs=4k --iodepth=32 --number_ios=8192 --end_fsync=1 ;;
        seq-write)
            echo --rw=write --bs=1M --iodepth=8 --size=$((disk_byte_count / 2)) \
                --runtime="$runtime_seconds"
            ;;
        read-after-write) echo --rw=randread --bs=4k --iodepth=32 "${timed[@]}" ;;
    esac
}

# Jobs whose final FLUSH is timed apart (bench/lib/timed_flush.py on a connection of its own,
# right after fio): their report gives the rate without it and with it. A peer whose FLUSH
# makes nothing durable (nbdkit-cow's temporary overlay, nbdkit-memory) would otherwise be
# compared with cowbd's durable one in a single figure.
core_flush_after_jobs=(seq-write)

core_meta() {
    echo "targets=${targets[*]}"
    echo "jobs=${core_jobs[*]}"
    local job
    for job in "${core_jobs[@]}"; do
        echo "job.$job.description=$(job_description "$job")"
        echo "job.$job.fio=$(job_fio_arguments "$job")"
    done
}

# Round by round, job by job, each target in turn: targets see the same machine, job for job.
run_core_section() {
    local round job target
    local fio_arguments=()
    say "section core: ${core_jobs[*]} against ${targets[*]}"
    for target in "${targets[@]}"; do start_target "$target"; done
    warm_page_cache "$base"
    if [ -f "$WORK_DIR/base-copy.img" ]; then warm_page_cache "$WORK_DIR/base-copy.img"; fi
    for round in $(seq "$round_count"); do
        for job in "${core_jobs[@]}"; do
            if [ "$job" = "$core_fresh_overlay_before_job" ] || { [ "$round" -gt 1 ] \
                && [ "$job" = "${core_jobs[0]}" ]; }; then
                say "fresh overlays for every target"
                for target in "${targets[@]}"; do fresh_overlay "$target"; done
            fi
            say "round $round/$round_count, $job: $(job_description "$job")"
            read -r -a fio_arguments <<<"$(job_fio_arguments "$job")"
            local flush_after=""
            [[ " ${core_flush_after_jobs[*]} " == *" $job "* ]] && flush_after=1
            for target in "${targets[@]}"; do
                FLUSH_AFTER_FIO=$flush_after measure_fio_job core "$job" "$target" "$round" \
                    "${fio_arguments[@]}"
            done
        done
    done
    for target in "${targets[@]}"; do stop_target "$target"; done
}
