# The servers bench/run measures, by target name: each over a fresh overlay of its own, on a unix
# socket in WORK_DIR. Raw-base targets (cowbd, nbdkit-file, nbdkit-memory, nbdkit-cow, qemu-nbd)
# and compressed-base ones (cowbd-lz4-fast|high, qemu-nbd-zlib|zstd, nbdkit-xz), whose images
# come from compressed.sh. Sourced by bench/run; the caller sets cowbd, base, disk_byte_count,
# cowbd_threads and WORK_DIR.
# shellcheck shell=bash disable=SC2154  # set by bench/run, which sources this

socket_of() { echo "$WORK_DIR/$1.sock"; }

# COMPRESSED_IMAGE[target]: the compressed base a compressed-base target serves (compressed.sh).
declare -gA COMPRESSED_IMAGE=()

start_target() {
    local target="$1"
    local socket
    socket=$(socket_of "$target")
    case "$target" in
        cowbd | cowbd-lz4-*)
            local target_base="$base"
            [ "$target" = cowbd ] || target_base="${COMPRESSED_IMAGE[$target]}"
            "$cowbd" create "$WORK_DIR/$target.cow" --base "$target_base" >/dev/null
            start_server "$target" "$socket" "$cowbd" serve "$WORK_DIR/$target.cow" \
                --listen "unix:$socket" --log-level warning \
                ${cowbd_threads:+--threads "$cowbd_threads"}
            ;;
        nbdkit-file)
            # Writes land in place, so it gets a copy of the base: the no-COW ceiling.
            if [ ! -f "$WORK_DIR/base-copy.img" ]; then
                cp "$base" "$WORK_DIR/base-copy.img"
                sync "$WORK_DIR/base-copy.img"
            fi
            start_server nbdkit-file "$socket" nbdkit --foreground --unix "$socket" \
                file file="$WORK_DIR/base-copy.img"
            ;;
        nbdkit-memory)
            # Sparse RAM that reads as zeros: the transport's ceiling, no storage at all.
            start_server nbdkit-memory "$socket" nbdkit --foreground --unix "$socket" \
                memory size="$disk_byte_count"
            ;;
        nbdkit-cow | nbdkit-xz)
            # The cow filter keeps its overlay in an unlinked file in TMPDIR; ours, to find it.
            # Filters run client side first: cow over xz over the file.
            local filters=(--filter=cow) image="$base"
            if [ "$target" = nbdkit-xz ]; then
                filters+=(--filter=xz)
                image="${COMPRESSED_IMAGE[$target]}"
            fi
            mkdir -p "$WORK_DIR/$target-tmp"
            start_server "$target" "$socket" env TMPDIR="$WORK_DIR/$target-tmp" nbdkit \
                --foreground --unix "$socket" "${filters[@]}" file file="$image"
            ;;
        qemu-nbd | qemu-nbd-*)
            if [ "$target" = qemu-nbd ]; then
                qemu-img create -q -f qcow2 -b "$base" -F raw "$WORK_DIR/$target.qcow2"
            else
                qemu-img create -q -f qcow2 -b "${COMPRESSED_IMAGE[$target]}" -F qcow2 \
                    "$WORK_DIR/$target.qcow2"
            fi
            start_server "$target" "$socket" qemu-nbd --persistent --shared=16 \
                --socket="$socket" --format=qcow2 "$WORK_DIR/$target.qcow2"
            ;;
        *-remote) start_remote_target "$target" ;;
        *) die "unknown target '$target'" ;;
    esac
}

# fresh_overlay TARGET: stops its server, drops its overlay, starts again on an empty one.
fresh_overlay() {
    local target="$1"
    stop_server "$target"
    rm -f "$WORK_DIR/$target.cow" "$WORK_DIR/$target.qcow2" "$(socket_of "$target")"
    start_target "$target"
}

# stop_target TARGET: stops its server and drops its overlay.
stop_target() {
    local target="$1"
    stop_server "$target"
    rm -f "$WORK_DIR/$target.cow" "$WORK_DIR/$target.qcow2" "$(socket_of "$target")"
}

# overlay_bytes TARGET: "ALLOCATED FILE": the overlay's allocated data bytes (the numerator of
# write amplification) and its whole file's allocation; "" where there is no overlay to measure.
overlay_bytes() {
    local target="$1"
    case "$target" in
        cowbd-d[0-9]* | qemu-nbd-d[0-9]*) ;; # the depth section reads only
        cowbd | cowbd-lz4-* | cowbd-remote)
            local allocated
            allocated=$("$cowbd" info "$WORK_DIR/$target.cow" --json \
                | "$PYTHON" -c 'import json, sys; print(json.load(sys.stdin)["allocated_bytes"])')
            echo "$allocated $(allocated_bytes_on_disk "$WORK_DIR/$target.cow")"
            ;;
        qemu-nbd | qemu-nbd-*)
            local allocated
            allocated=$(allocated_bytes_on_disk "$WORK_DIR/$target.qcow2")
            echo "$allocated $allocated"
            ;;
        nbdkit-cow | nbdkit-xz | nbdkit-cow-remote)
            local descriptor
            for descriptor in /proc/"${SERVER_PIDS[$target]}"/fd/*; do
                if [[ "$(readlink "$descriptor")" == "$WORK_DIR/$target-tmp/"* ]]; then
                    local allocated
                    allocated=$(stat -L --format='%b %B' "$descriptor" | awk '{ print $1 * $2 }')
                    echo "$allocated $allocated"
                    return
                fi
            done
            ;;
    esac
}

# measure_fio_job SECTION JOB TARGET ROUND FIO_ARGUMENT...: one fio job against TARGET's server,
# with the overlay's growth around it; records raw/[SECTION.]JOB.TARGET.roundROUND.* and prints
# the progress line. The core section keeps the unprefixed names of earlier runs.
measure_fio_job() {
    local section="$1" job="$2" target="$3" round="$4"
    shift 4
    local prefix="$run_dir/raw/$job.$target.round$round"
    [ "$section" = core ] || prefix="$run_dir/raw/$section.$job.$target.round$round"
    local before after allocated_before file_before allocated_after file_after
    before=$(overlay_bytes "$target")
    run_fio_job "$prefix" "$(socket_of "$target")" "${SERVER_PIDS[$target]}" "$@"
    after=$(overlay_bytes "$target")
    if [ -n "$before" ] && [ -n "$after" ]; then
        read -r allocated_before file_before <<<"$before"
        read -r allocated_after file_after <<<"$after"
        {
            echo "overlay_allocated_bytes_before=$allocated_before"
            echo "overlay_allocated_bytes_after=$allocated_after"
            echo "overlay_file_bytes_before=$file_before"
            echo "overlay_file_bytes_after=$file_after"
        } >>"$prefix.env"
    fi
    "$PYTHON" "$BENCH_DIR/lib/report.py" --line "$prefix" "$target" >&2
}
