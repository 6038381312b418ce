# The remote-base section of bench/run: the base on an NBD server (nbdkit's file plugin,
# read-only, on a unix socket: one server for every target, in the same run) under three
# overlays: cowbd (`create --base nbd+unix://...`), nbdkit's cow filter over its nbd plugin, and
# qemu-nbd over a qcow2 overlay whose backing file is the nbd:// URI. Random 4 KiB reads at QD32
# and 1 MiB sequential reads, each cold (a fresh overlay and server: nothing fetched yet) and
# then warm (the same job again at once, same seed). Sourced by bench/run.
# shellcheck shell=bash disable=SC2154  # set by bench/run, which sources this

remote_targets=(cowbd-remote nbdkit-cow-remote qemu-nbd-remote)
remote_jobs=(rand-read-cold rand-read-warm seq-read-cold seq-read-warm)

remote_base_socket() { echo "$WORK_DIR/remote-base.sock"; }
remote_base_uri() { echo "nbd+unix:///?socket=$(remote_base_socket)"; }

remote_description() {
    local when="cold: a fresh overlay and server, nothing of the base fetched yet"
    [[ "$1" == *-warm ]] && when="warm: right after the cold job, the same seed"
    case "$1" in
        rand-read-*) echo "random 4 KiB reads, QD32, of the untouched base over NBD; $when" ;;
        seq-read-*) echo "1 MiB sequential reads, QD8, of the untouched base over NBD; $when" ;;
    esac
}

remote_fio_arguments() {
    case "$1" in
        rand-read-*)
            echo --rw=randread --bs=4k --iodepth=32 --time_based --runtime="$runtime_seconds"
            ;;
        seq-read-*)
            echo --rw=read --bs=1M --iodepth=8 --time_based --runtime="$runtime_seconds"
            ;;
    esac
}

remote_meta() {
    echo "remote.targets=${remote_targets[*]}"
    echo "remote.jobs=${remote_jobs[*]}"
    echo "remote.base_server=nbdkit --readonly file (unix socket)"
    local job
    for job in "${remote_jobs[@]}"; do
        echo "remote.job.$job.description=$(remote_description "$job")"
        echo "remote.job.$job.fio=$(remote_fio_arguments "$job")"
    done
}

# start_remote_target TARGET: its overlay over the base server, on its own socket.
start_remote_target() {
    local target="$1" socket
    socket=$(socket_of "$target")
    case "$target" in
        cowbd-remote)
            "$cowbd" create "$WORK_DIR/$target.cow" --base "$(remote_base_uri)" >/dev/null
            start_server "$target" "$socket" "$cowbd" serve "$WORK_DIR/$target.cow" \
                --listen "unix:$socket" --log-level warning \
                ${cowbd_threads:+--threads "$cowbd_threads"}
            ;;
        nbdkit-cow-remote)
            mkdir -p "$WORK_DIR/$target-tmp"
            start_server "$target" "$socket" env TMPDIR="$WORK_DIR/$target-tmp" nbdkit \
                --foreground --unix "$socket" --filter=cow nbd socket="$(remote_base_socket)"
            ;;
        qemu-nbd-remote)
            qemu-img create -q -f qcow2 -b "$(remote_base_uri)" -F raw "$WORK_DIR/$target.qcow2"
            start_server "$target" "$socket" qemu-nbd --persistent --shared=16 \
                --socket="$socket" --format=qcow2 "$WORK_DIR/$target.qcow2"
            ;;
    esac
}

run_remote_section() {
    local round kind target job
    local fio_arguments=()
    say "section remote: ${remote_jobs[*]} against ${remote_targets[*]}, base served by nbdkit"
    warm_page_cache "$base"
    start_server remote-base "$(remote_base_socket)" nbdkit --foreground --readonly \
        --unix "$(remote_base_socket)" file file="$base"
    for round in $(seq "$round_count"); do
        for kind in rand-read seq-read; do
            for target in "${remote_targets[@]}"; do
                # Cold: a new overlay and a new server, so no client side cache holds the base.
                stop_target "$target"
                start_remote_target "$target"
                for job in "$kind-cold" "$kind-warm"; do
                    say "remote, round $round/$round_count, $job, $target"
                    read -r -a fio_arguments <<<"$(remote_fio_arguments "$job")"
                    measure_fio_job remote "$job" "$target" "$round" "${fio_arguments[@]}"
                done
            done
        done
    done
    for target in "${remote_targets[@]}"; do stop_target "$target"; done
    stop_server remote-base
}
