# The compressed section of bench/run: the base compressed by each tool (cowbd compress --level
# fast|high, qemu-img convert -c to qcow2 with zlib|zstd, xz for nbdkit's xz filter), each
# served over a fresh overlay; image size, compress time, and the read jobs of the core section.
# No write jobs: an overlay's writes do not touch the compressed base. Sourced by bench/run.
# shellcheck shell=bash disable=SC2154  # set by bench/run, which sources this

compressed_targets=(cowbd cowbd-lz4-fast cowbd-lz4-high qemu-nbd-zlib qemu-nbd-zstd nbdkit-xz)
compressed_jobs=(seq-read rand-read)
# The cowbd-lz4 format version `cowbd compress` writes (docs/FORMAT.md, "Versioning").
readonly COWBD_LZ4_VERSION=2
# The compression level the header records (docs/FORMAT.md, offset 96) for each cowbd target:
# 0 for fast, the LZ4 HC level of `--level high` (CompressionLevel.highLevel).
declare -A COWBD_LZ4_RECORDED_LEVEL=([cowbd-lz4-fast]=0 [cowbd-lz4-high]=4)
# xz's block: the xz filter decompresses a whole block per read, so it needs many small ones.
readonly XZ_BLOCK_SIZE=1MiB

# compressed_image_path TARGET: where the cached compressed base of TARGET lives.
compressed_image_path() {
    local stem="$BENCH_DIR/.cache/base-$disk_byte_count"
    case "$1" in
        cowbd-lz4-fast) echo "$stem.fast.lz4" ;;
        cowbd-lz4-high) echo "$stem.high.lz4" ;;
        qemu-nbd-zlib) echo "$stem.zlib.qcow2" ;;
        qemu-nbd-zstd) echo "$stem.zstd.qcow2" ;;
        nbdkit-xz) echo "$stem.img.xz" ;;
    esac
}

# compress_command TARGET PARTIAL: the command that compresses the base into PARTIAL.
compress_command() {
    local target="$1" partial="$2"
    case "$target" in
        cowbd-lz4-fast) echo "$cowbd" compress "$base" "$partial" --level fast ;;
        cowbd-lz4-high) echo "$cowbd" compress "$base" "$partial" --level high ;;
        qemu-nbd-zlib)
            echo qemu-img convert -c -f raw -O qcow2 -o compression_type=zlib "$base" "$partial"
            ;;
        qemu-nbd-zstd)
            echo qemu-img convert -c -f raw -O qcow2 -o compression_type=zstd "$base" "$partial"
            ;;
        nbdkit-xz) echo xz -T0 --block-size="$XZ_BLOCK_SIZE" -k -c "$base" ;;
    esac
}

# make_compressed_image TARGET: compresses the (page-cached) base for TARGET once, timing the
# compressor's wall and CPU time; the numbers are kept beside the image in IMAGE.env, so later
# runs reuse both. --recompress (recompress=yes) makes them again.
make_compressed_image() {
    local target="$1"
    local TIMEFORMAT='%R %U %S'
    local image partial command time_file
    image=$(compressed_image_path "$target")
    COMPRESSED_IMAGE["$target"]=$image
    if [ -f "$image" ] && [ -f "$image.env" ] && [ -z "$recompress" ]; then
        # A cached cowbd image made by an older cowbd may no longer be readable: check it
        # (cheap: one decompression of every block) and make it again if not. One of an older
        # format version or level still reads, but is not what `compress` makes now (nor is its
        # compress time): make it again too.
        if [[ "$target" != cowbd-* ]] || { [ "$(od -An -tu4 -j8 -N4 "$image" | tr -d ' ')" = \
            "$COWBD_LZ4_VERSION" ] && [ "$(od -An -tu4 -j96 -N4 "$image" | tr -d ' ')" = \
            "${COWBD_LZ4_RECORDED_LEVEL[$target]}" ] \
            && "$cowbd" compress --verify "$image" >/dev/null 2>&1; }; then
            return
        fi
        say "the cached $image is of an older layout or level, or does not verify: making it again"
    fi
    partial="$image.partial"
    time_file="$WORK_DIR/compress-$target.time"
    rm -f "$image" "$image.env" "$partial"
    read -r -a command <<<"$(compress_command "$target" "$partial")"
    say "compressing the base for $target: ${command[*]}"
    warm_page_cache "$base"
    sync
    local waited
    waited=$(wait_for_quiet)
    local machine_before machine_after
    machine_before=$(busy_ticks)
    # Bash's `time` reports the wall time and the CPU of the command's processes and threads.
    if [ "$target" = nbdkit-xz ]; then
        { time "${command[@]}" >"$partial" 2>"$WORK_DIR/compress.log"; } \
            2>"$time_file"
    else
        { time "${command[@]}" >/dev/null 2>"$WORK_DIR/compress.log"; } \
            2>"$time_file"
    fi || { cat "$WORK_DIR/compress.log" >&2; die "compressing for $target failed"; }
    machine_after=$(busy_ticks)
    sync "$partial"
    local wall user system
    read -r wall user system <"$time_file"
    {
        echo "compress_command=${command[*]}"
        echo "compress_wall_seconds=$wall"
        echo "compress_cpu_seconds=$(awk -v u="$user" -v s="$system" 'BEGIN { print u + s }')"
        echo "compress_quiet_wait_seconds=$waited"
        echo "compress_machine_busy_seconds=$(( (machine_after - machine_before) \
            / $(getconf CLK_TCK) ))"
        echo "compress_cpu_count=$(nproc)"
        echo "compress_tool_version=$(compress_tool_version "$target")"
        echo "compressed_at=$(date --iso-8601=seconds)"
        echo "source_bytes=$disk_byte_count"
    } >"$image.env.partial"
    mv "$partial" "$image"
    mv "$image.env.partial" "$image.env"
}

compress_tool_version() {
    case "$1" in
        cowbd-*) echo "cowbd $(git -C "$REPO_DIR" rev-parse --short HEAD 2>/dev/null || echo ?)" ;;
        qemu-*) qemu-img --version | head -n 1 ;;
        nbdkit-xz) xz --version | head -n 1 ;;
    esac
}

compressed_meta() {
    echo "compressed.targets=${compressed_targets[*]}"
    echo "compressed.jobs=${compressed_jobs[*]}"
    local job
    for job in "${compressed_jobs[@]}"; do
        echo "compressed.job.$job.description=$(job_description "$job")"
        echo "compressed.job.$job.fio=$(job_fio_arguments "$job")"
    done
}

run_compressed_section() {
    local target round job
    local fio_arguments=()
    say "section compressed: ${compressed_jobs[*]} against ${compressed_targets[*]}"
    for target in "${compressed_targets[@]}"; do
        [ "$target" = cowbd ] && continue
        make_compressed_image "$target"
        {
            echo "image_bytes=$(stat --format=%s "${COMPRESSED_IMAGE[$target]}")"
            echo "image_allocated_bytes=$(allocated_bytes_on_disk "${COMPRESSED_IMAGE[$target]}")"
            echo "image_path=${COMPRESSED_IMAGE[$target]}"
            cat "${COMPRESSED_IMAGE[$target]}.env"
        } >"$run_dir/raw/compressed.image.$target.env"
    done
    {
        echo "image_bytes=$disk_byte_count"
        echo "image_allocated_bytes=$(allocated_bytes_on_disk "$base")"
        echo "image_path=$base"
    } >"$run_dir/raw/compressed.image.cowbd.env"
    for target in "${compressed_targets[@]}"; do start_target "$target"; done
    warm_page_cache "$base"
    for target in "${compressed_targets[@]}"; do
        [ "$target" = cowbd ] || warm_page_cache "${COMPRESSED_IMAGE[$target]}"
    done
    for round in $(seq "$round_count"); do
        if [ "$round" -gt 1 ]; then
            for target in "${compressed_targets[@]}"; do fresh_overlay "$target"; done
        fi
        for job in "${compressed_jobs[@]}"; do
            say "compressed, round $round/$round_count, $job: $(job_description "$job")"
            read -r -a fio_arguments <<<"$(job_fio_arguments "$job")"
            for target in "${compressed_targets[@]}"; do
                measure_fio_job compressed "$job" "$target" "$round" "${fio_arguments[@]}"
            done
        done
    done
    for target in "${compressed_targets[@]}"; do stop_target "$target"; done
}
