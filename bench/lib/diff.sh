# The diff section of bench/run: the same scattered 64 KiB writes on a large sparse disk, sent
# through cowbd serve and through qemu-nbd over a qcow2 overlay, then each tool's ways out: the
# changes as a file (cowbd export-diff native and rbd; qemu-img convert of the overlay's own
# clusters), a new flat image (merge --output; qemu-img convert -O raw), and folded into a copy of
# the base (merge --into; qemu-img commit). Each from a cold page cache when root (it drops the
# machine's). Outputs are compared with cmp. Sourced by bench/run.
# shellcheck shell=bash disable=SC2154  # set by bench/run, which sources this

# diff_step NAME COMMAND...: runs COMMAND once, cold, timed; appends NAME_wall_seconds and
# NAME_cpu_seconds to the section's record.
diff_step() {
    local name="$1"
    shift
    local TIMEFORMAT='%R %U %S'
    local wall user system
    drop_page_cache
    { time "$@" >"$WORK_DIR/diff-step.out" 2>"$WORK_DIR/diff-step.log"; } \
        2>"$WORK_DIR/diff-step.time" \
        || { cat "$WORK_DIR/diff-step.log" >&2; die "diff step $name failed: $*"; }
    read -r wall user system <"$WORK_DIR/diff-step.time"
    {
        echo "${name}_wall_seconds=$wall"
        echo "${name}_cpu_seconds=$(awk -v u="$user" -v s="$system" 'BEGIN { print u + s }')"
        echo "${name}_command=$*"
    } >>"$diff_record"
}

# drop_page_cache: as root, writes back and drops the page cache so a step reads from disk.
drop_page_cache() {
    sync
    if [ "$(id -u)" -eq 0 ]; then echo 3 >/proc/sys/vm/drop_caches; fi
}

# diff_output_sizes NAME FILE: appends the file's apparent and allocated bytes to the record.
diff_output_sizes() {
    {
        echo "${1}_output_bytes=$(stat --format=%s "$2")"
        echo "${1}_output_allocated_bytes=$(allocated_bytes_on_disk "$2")"
    } >>"$diff_record"
}

diff_meta() {
    echo "diff.disk_bytes=$diff_byte_count"
    echo "diff.change_count=$diff_change_count"
}

run_diff_section() {
    local folder="$WORK_DIR/diff"
    diff_record="$run_dir/raw/diff.env"
    mkdir -p "$folder"
    # The base: sparse, its first 1/16 (at most 512 MiB) random bytes, the rest a hole.
    local random_mib=$((diff_byte_count / 16 / 1048576))
    [ "$random_mib" -le 512 ] || random_mib=512
    say "section diff: $diff_change_count x 64 KiB changes on a $(numfmt --to=iec \
"$diff_byte_count") sparse base ($random_mib MiB of it data)"
    truncate -s "$diff_byte_count" "$folder/base.img"
    head -c "${random_mib}M" /dev/urandom | dd of="$folder/base.img" conv=notrunc status=none
    # Scattered 64 KiB writes, each a different pattern byte, over the whole disk (Knuth's
    # multiplicative hash spreads them; the same list for both servers).
    local writes=() index
    local slot_count=$((diff_byte_count / 65536 - 1))
    for index in $(seq 0 $((diff_change_count - 1))); do
        writes+=(-c "write -P $((index % 250 + 1)) $(((index * 2654435761 % slot_count) \
* 65536)) 65536")
    done
    "$cowbd" create "$folder/d.cow" --base "$folder/base.img" >/dev/null
    start_server diff-cowbd "$folder/cowbd.sock" "$cowbd" serve "$folder/d.cow" \
        --listen "unix:$folder/cowbd.sock" --log-level warning
    qemu-io -f raw "${writes[@]}" "nbd+unix:///?socket=$folder/cowbd.sock" >/dev/null
    stop_server diff-cowbd
    qemu-img create -q -f qcow2 -b "$folder/base.img" -F raw "$folder/ov.qcow2"
    start_server diff-qemu-nbd "$folder/qemu.sock" qemu-nbd --persistent --shared=16 \
        --socket="$folder/qemu.sock" --format=qcow2 "$folder/ov.qcow2"
    qemu-io -f raw "${writes[@]}" "nbd+unix:///?socket=$folder/qemu.sock" >/dev/null
    stop_server diff-qemu-nbd
    {
        echo "disk_bytes=$diff_byte_count"
        echo "change_count=$diff_change_count"
        echo "change_bytes=$((diff_change_count * 65536))"
        echo "base_data_bytes=$((random_mib * 1048576))"
        echo "cold_cache=$([ "$(id -u)" -eq 0 ] && echo yes || echo no)"
        echo "cowbd_store_allocated_bytes=$(allocated_bytes_on_disk "$folder/d.cow")"
        echo "qcow2_overlay_allocated_bytes=$(allocated_bytes_on_disk "$folder/ov.qcow2")"
    } >"$diff_record"

    # The changes as a file.
    diff_step export_native "$cowbd" export-diff "$folder/d.cow" "$folder/diff.native"
    diff_output_sizes export_native "$folder/diff.native"
    diff_step export_rbd "$cowbd" export-diff "$folder/d.cow" "$folder/diff.rbd" --format rbd
    diff_output_sizes export_rbd "$folder/diff.rbd"
    # The overlay's own clusters, without its backing file: qcow2's diff.
    diff_step qemu_convert_overlay qemu-img convert -O qcow2 \
        "json:{\"driver\":\"qcow2\",\"backing\":null,\"file\":{\"driver\":\"file\",\
\"filename\":\"$folder/ov.qcow2\"}}" "$folder/ov-data.qcow2"
    diff_output_sizes qemu_convert_overlay "$folder/ov-data.qcow2"

    # A new flat image of the whole disk.
    diff_step merge_output "$cowbd" merge "$folder/d.cow" --output "$folder/flat-cowbd.img"
    diff_output_sizes merge_output "$folder/flat-cowbd.img"
    diff_step qemu_convert_flat qemu-img convert -f qcow2 -O raw "$folder/ov.qcow2" \
        "$folder/flat-qemu.img"
    diff_output_sizes qemu_convert_flat "$folder/flat-qemu.img"
    cmp "$folder/flat-cowbd.img" "$folder/flat-qemu.img" \
        || die "diff: merge --output and qemu-img convert made different disks"
    rm -f "$folder/flat-cowbd.img" "$folder/flat-qemu.img"

    # Folded into a copy of the base.
    cp --sparse=always "$folder/base.img" "$folder/t-cowbd.img"
    cp --sparse=always "$folder/base.img" "$folder/t-qemu.img"
    qemu-img rebase -q -u -b "$folder/t-qemu.img" -F raw "$folder/ov.qcow2"
    diff_step merge_into "$cowbd" merge "$folder/d.cow" --into "$folder/t-cowbd.img"
    diff_step qemu_commit qemu-img commit -q "$folder/ov.qcow2"
    cmp "$folder/t-cowbd.img" "$folder/t-qemu.img" \
        || die "diff: merge --into and qemu-img commit made different disks"
    echo "outputs_identical=yes" >>"$diff_record"
    rm -rf "$folder"
    "$PYTHON" "$BENCH_DIR/lib/report_sections.py" --diff-table "$diff_record" >&2
}
