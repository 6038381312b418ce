# The depth section of bench/run: reads through chains of overlays 1, 4, 16 and 64 deep. cowbd:
# a store over the base, then each next store `create --base` over the one below; qemu-nbd: a
# qcow2 chain built the same way (`qemu-img create -b` each over the one below). Every layer,
# while it is the top, gets the same scattered 4 KiB writes in both chains (the same count and
# seed: half the disk's blocks in all, shared out between the layers), so the same bytes sit at
# the same depths. Then random 4 KiB reads at QD32 and 1 MiB sequential reads of each chain's
# top. Sourced by bench/run.
# shellcheck shell=bash disable=SC2154  # set by bench/run, which sources this

depth_levels=(1 4 16 64)
depth_jobs=(rand-read seq-read)
depth_targets=()
for depth in "${depth_levels[@]}"; do depth_targets+=("cowbd-d$depth" "qemu-nbd-d$depth"); done

depth_description() {
    case "$1" in
        rand-read) echo "random 4 KiB reads, QD32, of the top of the chain" ;;
        seq-read) echo "1 MiB sequential reads, QD8, of the top of the chain" ;;
    esac
}

depth_fio_arguments() {
    case "$1" in
        rand-read) echo --rw=randread --bs=4k --iodepth=32 --time_based --runtime="$runtime_seconds" ;;
        seq-read) echo --rw=read --bs=1M --iodepth=8 --time_based --runtime="$runtime_seconds" ;;
    esac
}

depth_meta() {
    echo "depth.targets=${depth_targets[*]}"
    echo "depth.jobs=${depth_jobs[*]}"
    echo "depth.levels=${depth_levels[*]}"
    local job
    for job in "${depth_jobs[@]}"; do
        echo "depth.job.$job.description=$(depth_description "$job")"
        echo "depth.job.$job.fio=$(depth_fio_arguments "$job")"
    done
}

# depth_write_layer NAME SOCKET LAYER DEPTH COMMAND...: serves one layer with COMMAND on SOCKET,
# writes its share of scattered blocks (seeded by LAYER), stops it.
depth_write_layer() {
    local name="$1" socket="$2" layer="$3" depth="$4"
    shift 4
    local block_count=$((disk_byte_count / 4096))
    start_server "$name" "$socket" "$@"
    "$PYTHON" "$BENCH_DIR/lib/scatter_writes.py" "$socket" $((block_count / 2 / depth)) "$layer"
    stop_server "$name"
    rm -f "$socket"
}

# build_depth_chains DEPTH: both chains of DEPTH layers over the base, in $WORK_DIR/depth-DEPTH/.
build_depth_chains() {
    local depth="$1" layer lower_cow="$base" lower_qcow2="$base" lower_format=raw
    local folder="$WORK_DIR/depth-$depth" socket="$WORK_DIR/depth-writer.sock"
    mkdir -p "$folder"
    for layer in $(seq "$depth"); do
        "$cowbd" create "$folder/l$layer.cow" --base "$lower_cow" >/dev/null
        depth_write_layer depth-writer "$socket" "$layer" "$depth" \
            "$cowbd" serve "$folder/l$layer.cow" --listen "unix:$socket" --log-level warning
        lower_cow="$folder/l$layer.cow"
        qemu-img create -q -f qcow2 -b "$lower_qcow2" -F "$lower_format" "$folder/q$layer.qcow2"
        depth_write_layer depth-writer "$socket" "$layer" "$depth" \
            qemu-nbd --persistent --socket="$socket" --format=qcow2 "$folder/q$layer.qcow2"
        lower_qcow2="$folder/q$layer.qcow2"
        lower_format=qcow2
    done
}

# start_depth_target TARGET: the top of its chain (cowbd-dN or qemu-nbd-dN) on its own socket.
start_depth_target() {
    local target="$1" socket depth folder
    socket=$(socket_of "$target")
    depth=${target##*-d}
    folder="$WORK_DIR/depth-$depth"
    case "$target" in
        cowbd-d*)
            start_server "$target" "$socket" "$cowbd" serve "$folder/l$depth.cow" \
                --listen "unix:$socket" --log-level warning \
                ${cowbd_threads:+--threads "$cowbd_threads"}
            ;;
        qemu-nbd-d*)
            start_server "$target" "$socket" qemu-nbd --persistent --shared=16 \
                --socket="$socket" --format=qcow2 "$folder/q$depth.qcow2"
            ;;
    esac
}

run_depth_section() {
    local round depth job target
    local fio_arguments=()
    say "section depth: ${depth_jobs[*]} through chains ${depth_levels[*]} deep, cowbd and qemu-nbd"
    for depth in "${depth_levels[@]}"; do
        say "depth: building both chains of $depth layers"
        build_depth_chains "$depth"
    done
    warm_page_cache "$base" "$WORK_DIR"/depth-*/*
    for round in $(seq "$round_count"); do
        for target in "${depth_targets[@]}"; do
            start_depth_target "$target"
            for job in "${depth_jobs[@]}"; do
                say "depth, round $round/$round_count, $job, $target"
                read -r -a fio_arguments <<<"$(depth_fio_arguments "$job")"
                measure_fio_job depth "$job" "$target" "$round" "${fio_arguments[@]}"
            done
            stop_server "$target"
            rm -f "$(socket_of "$target")"
        done
    done
    rm -rf "$WORK_DIR"/depth-*
}
