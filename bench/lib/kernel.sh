# The kernel section of bench/run: a disk as users feel it. nbdfuse shows the export as a file,
# a loop device makes it a block device, then mkfs.ext4, mount, untar a tree of system files,
# sync, umount, each timed. Needs root, /dev/fuse and loop devices. Whatever happens, the trap
# unmounts, detaches and ends nbdfuse (kernel_clean_up). Sourced by bench/run.
# shellcheck shell=bash disable=SC2154  # set by bench/run, which sources this

kernel_targets=(cowbd nbdkit-cow qemu-nbd)
# The tree untarred: about 160 MiB of system files, at most a quarter of the disk.
readonly KERNEL_TREE_MAX_BYTE_COUNT=$((160 * 1048576))
KERNEL_FUSE_PID=""
KERNEL_MOUNT=""
KERNEL_FUSE_DIR=""

kernel_tree_byte_count() {
    local quarter=$((disk_byte_count / 4))
    echo $((quarter < KERNEL_TREE_MAX_BYTE_COUNT ? quarter : KERNEL_TREE_MAX_BYTE_COUNT))
}

# make_tree_tarball: prints the path of a cached tarball of system files (a seeded shuffle of
# /usr/share and /usr/lib, like the base's), made once per size.
make_tree_tarball() {
    local byte_count
    byte_count=$(kernel_tree_byte_count)
    local tarball="$BENCH_DIR/.cache/tree-$byte_count.tar"
    if [ ! -f "$tarball" ]; then
        say "making a $(numfmt --to=iec "$byte_count") tarball of system files"
        mkdir -p "$BENCH_DIR/.cache"
        "$PYTHON" "$BENCH_DIR/lib/pick_files.py" "$byte_count" /usr/share /usr/lib \
            | tar -C / --null --files-from=- --no-recursion -cf "$tarball.partial" 2>/dev/null
        mv "$tarball.partial" "$tarball"
    fi
    echo "$tarball"
}

# kernel_clean_up: unmounts the file system, detaches the loop device and unmounts nbdfuse, if
# they are there; safe to call twice.
kernel_clean_up() {
    if [ -n "$KERNEL_MOUNT" ] && mountpoint -q "$KERNEL_MOUNT"; then
        umount "$KERNEL_MOUNT" || umount -l "$KERNEL_MOUNT"
    fi
    if [ -n "$KERNEL_FUSE_DIR" ]; then
        local loop
        for loop in $(losetup -j "$KERNEL_FUSE_DIR/disk" -O NAME -n 2>/dev/null); do
            losetup -d "$loop"
        done
        if mountpoint -q "$KERNEL_FUSE_DIR"; then
            fusermount3 -u "$KERNEL_FUSE_DIR" || fusermount3 -u -z "$KERNEL_FUSE_DIR"
        fi
    fi
    if [ -n "$KERNEL_FUSE_PID" ]; then
        kill -TERM "$KERNEL_FUSE_PID" 2>/dev/null || true
        wait "$KERNEL_FUSE_PID" 2>/dev/null || true
    fi
    KERNEL_FUSE_PID="" KERNEL_MOUNT="" KERNEL_FUSE_DIR=""
}

# now_ns: nanoseconds since the epoch.
now_ns() { date +%s%N; }

# kernel_run TARGET TARBALL RECORD: the whole sequence against TARGET's fresh server; writes
# RECORD (key=value: each step's nanoseconds, the server's CPU ticks and peak RSS, overlay bytes).
kernel_run() {
    local target="$1" tarball="$2" record="$3"
    local pid="${SERVER_PIDS[$target]}"
    KERNEL_FUSE_DIR="$WORK_DIR/kernel-fuse-$target"
    KERNEL_MOUNT="$WORK_DIR/kernel-mnt-$target"
    mkdir -p "$KERNEL_FUSE_DIR" "$KERNEL_MOUNT"
    local before
    before=$(overlay_bytes "$target")
    sync
    local waited
    waited=$(wait_for_quiet)
    reset_peak_rss "$pid"
    local ticks_before machine_before
    ticks_before=$(cpu_ticks "$pid")
    machine_before=$(busy_ticks)
    local t0 t1 t2 t3 t4 t5 t6
    t0=$(now_ns)
    timeout --kill-after=5 "$SERVER_MAX_SECONDS" nbdfuse "$KERNEL_FUSE_DIR/disk" \
        "nbd+unix:///?socket=$(socket_of "$target")" 2>"$WORK_DIR/nbdfuse-$target.log" &
    KERNEL_FUSE_PID=$!
    for _ in $(seq 200); do
        [ -e "$KERNEL_FUSE_DIR/disk" ] && break
        kill -0 "$KERNEL_FUSE_PID" 2>/dev/null || break
        sleep 0.05
    done
    [ -e "$KERNEL_FUSE_DIR/disk" ] || { cat "$WORK_DIR/nbdfuse-$target.log" >&2; \
        die "nbdfuse did not show $target's export"; }
    local loop
    loop=$(losetup --find --show "$KERNEL_FUSE_DIR/disk")
    t1=$(now_ns)
    mkfs.ext4 -q -F "$loop"
    t2=$(now_ns)
    mount "$loop" "$KERNEL_MOUNT"
    t3=$(now_ns)
    tar -C "$KERNEL_MOUNT" -xf "$tarball"
    t4=$(now_ns)
    sync -f "$KERNEL_MOUNT"
    t5=$(now_ns)
    umount "$KERNEL_MOUNT"
    t6=$(now_ns)
    local ticks_after machine_after
    ticks_after=$(cpu_ticks "$pid")
    machine_after=$(busy_ticks)
    local after
    after=$(overlay_bytes "$target")
    {
        echo "tree_bytes=$(kernel_tree_byte_count)"
        echo "tarball_bytes=$(stat --format=%s "$tarball")"
        echo "attach_ns=$((t1 - t0))"
        echo "mkfs_ns=$((t2 - t1))"
        echo "mount_ns=$((t3 - t2))"
        echo "untar_ns=$((t4 - t3))"
        echo "sync_ns=$((t5 - t4))"
        echo "umount_ns=$((t6 - t5))"
        echo "total_ns=$((t6 - t0))"
        echo "quiet_wait_seconds=$waited"
        echo "cpu_count=$(nproc)"
        echo "clock_ticks_per_second=$(getconf CLK_TCK)"
        echo "machine_busy_ticks_before=$machine_before"
        echo "machine_busy_ticks_after=$machine_after"
        echo "server_cpu_ticks_before=$ticks_before"
        echo "server_cpu_ticks_after=$ticks_after"
        echo "server_peak_rss_kib=$(peak_rss_kib "$pid")"
        if [ -n "$before" ] && [ -n "$after" ]; then
            echo "overlay_allocated_bytes_before=${before% *}"
            echo "overlay_allocated_bytes_after=${after% *}"
            echo "overlay_file_bytes_before=${before#* }"
            echo "overlay_file_bytes_after=${after#* }"
        fi
    } >"$record"
    kernel_clean_up
}

kernel_meta() {
    echo "kernel.targets=${kernel_targets[*]}"
    echo "kernel.tree_bytes=$(kernel_tree_byte_count)"
}

run_kernel_section() {
    local target tarball
    say "section kernel: nbdfuse + loop + mkfs.ext4 + untar + sync against ${kernel_targets[*]}"
    if [ "$(id -u)" -ne 0 ] || [ ! -e /dev/fuse ] || ! command -v nbdfuse >/dev/null; then
        echo "kernel section skipped: needs root, /dev/fuse and nbdfuse" >&2
        echo "skipped=needs root, /dev/fuse and nbdfuse" >"$run_dir/raw/kernel.skipped.env"
        return
    fi
    tarball=$(make_tree_tarball)
    warm_page_cache "$base" "$tarball"
    CLEAN_UP_COMMANDS+=(kernel_clean_up)
    for target in "${kernel_targets[@]}"; do
        start_target "$target"
        say "kernel: $target"
        kernel_run "$target" "$tarball" "$run_dir/raw/kernel.$target.env"
        "$PYTHON" "$BENCH_DIR/lib/report_sections.py" --kernel-line \
            "$run_dir/raw/kernel.$target.env" "$target" >&2
        stop_target "$target"
    done
}
