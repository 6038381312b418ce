/* The compressed-image curve (bench/compressed-curve): how big an image of independently
 * LZ4-compressed blocks is, and what a random 4 KiB read that misses the cache costs, per block
 * size and per variant, without building a cowbd image. It models cowbd-lz4's read path: pread
 * the block's stored bytes, XXH3 them, decompress the prefix up to the end of the read, copy the
 * 4 KiB out. Not a reader of cowbd images, and not a benchmark of wall time: run `read` under
 * valgrind --tool=callgrind and count instructions, which a busy machine does not change.
 *
 *   lz4_curve compress IMAGE BLOCK_BYTES fast|high OUT [DICT]   image -> OUT (index + blocks)
 *   lz4_curve read OUT READ_COUNT                               random 4 KiB reads of OUT
 *   lz4_curve sample IMAGE EVERY_NTH OUT                        non-zero 4 KiB pieces for a trainer
 *   lz4_curve read-cowbd IMAGE READ_COUNT                       the same reads of a cowbd-lz4 image
 *                                                               (version 1 or 2, docs/FORMAT.md)
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <lz4.h>
#include <lz4hc.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>
#include <xxhash.h>

enum { DICT_MAX = 65536, READ_BYTES = 4096, HIGH_LEVEL = 9 };

struct entry {
    uint64_t offset;
    uint32_t stored;
    uint32_t flags; /* 0 lz4, 1 zero, 2 raw */
    uint64_t checksum;
};

struct header {
    uint64_t magic, virtual_size, block_bytes, block_count, dict_bytes;
};

static void die(const char *what) {
    perror(what);
    exit(1);
}

static void pread_all(int fd, void *buffer, size_t count, off_t offset) {
    size_t done = 0;
    while (done < count) {
        ssize_t n = pread(fd, (char *)buffer + done, count - done, offset + done);
        if (n <= 0) die("pread");
        done += n;
    }
}

static double cpu_seconds(void) {
    struct rusage usage;
    getrusage(RUSAGE_SELF, &usage);
    return usage.ru_utime.tv_sec + usage.ru_stime.tv_sec
        + (usage.ru_utime.tv_usec + usage.ru_stime.tv_usec) / 1e6;
}

static int is_zero(const char *bytes, size_t count) {
    for (size_t i = 0; i < count; i++)
        if (bytes[i]) return 0;
    return 1;
}

/* Compresses one block against the dictionary (if any): the dictionary's stream state is made
 * once and copied per block, so every block starts from the same history. */
static int compress_block(int high, const char *source, int source_bytes, char *destination,
                          int capacity, const void *fast_template, const void *high_template) {
    static LZ4_stream_t fast_state;
    static LZ4_streamHC_t high_state;
    if (!fast_template && !high_template)
        return high ? LZ4_compress_HC(source, destination, source_bytes, capacity, HIGH_LEVEL)
                    : LZ4_compress_default(source, destination, source_bytes, capacity);
    if (high) {
        memcpy(&high_state, high_template, sizeof high_state);
        return LZ4_compress_HC_continue(&high_state, source, destination, source_bytes,
                                        capacity);
    }
    memcpy(&fast_state, fast_template, sizeof fast_state);
    return LZ4_compress_fast_continue(&fast_state, source, destination, source_bytes, capacity,
                                      1);
}

static int compress_image(const char *image_path, uint64_t block_bytes, int high,
                          const char *out_path, const char *dict_path) {
    int in = open(image_path, O_RDONLY);
    if (in < 0) die(image_path);
    uint64_t virtual_size = lseek(in, 0, SEEK_END);
    uint64_t block_count = (virtual_size + block_bytes - 1) / block_bytes;
    static char dict[DICT_MAX];
    int dict_bytes = 0;
    if (dict_path) {
        int d = open(dict_path, O_RDONLY);
        if (d < 0) die(dict_path);
        off_t size = lseek(d, 0, SEEK_END);
        dict_bytes = size > DICT_MAX ? DICT_MAX : (int)size;
        pread_all(d, dict, dict_bytes, size - dict_bytes); /* LZ4 uses the last 64 KiB */
        close(d);
    }
    static LZ4_stream_t fast_template;
    static LZ4_streamHC_t high_template;
    if (dict_bytes) {
        LZ4_initStream(&fast_template, sizeof fast_template);
        LZ4_loadDict(&fast_template, dict, dict_bytes);
        LZ4_initStreamHC(&high_template, sizeof high_template);
        LZ4_resetStreamHC_fast(&high_template, HIGH_LEVEL);
        LZ4_loadDictHC(&high_template, dict, dict_bytes);
    }
    struct entry *index = calloc(block_count, sizeof *index);
    char *source = malloc(block_bytes), *destination = malloc(block_bytes);
    int out = open(out_path, O_RDWR | O_CREAT | O_TRUNC, 0644);
    if (out < 0) die(out_path);
    struct header header = {0x5643343a5a4c, virtual_size, block_bytes, block_count, dict_bytes};
    uint64_t data_offset = sizeof header + dict_bytes + block_count * sizeof *index;
    uint64_t cursor = data_offset, stored_total = 0;
    double start = cpu_seconds();
    for (uint64_t block = 0; block < block_count; block++) {
        uint64_t bytes = virtual_size - block * block_bytes;
        if (bytes > block_bytes) bytes = block_bytes;
        pread_all(in, source, bytes, block * block_bytes);
        struct entry *e = &index[block];
        if (is_zero(source, bytes)) {
            e->flags = 1;
            continue;
        }
        int n = compress_block(high, source, (int)bytes, destination, (int)bytes - 1,
                               dict_bytes ? &fast_template : NULL,
                               dict_bytes ? &high_template : NULL);
        const char *stored = n > 0 ? destination : source;
        e->stored = n > 0 ? (uint32_t)n : (uint32_t)bytes;
        e->flags = n > 0 ? 0 : 2;
        e->offset = cursor;
        e->checksum = XXH3_64bits(stored, e->stored);
        if (pwrite(out, stored, e->stored, cursor) != (ssize_t)e->stored) die("pwrite");
        cursor += e->stored;
        stored_total += e->stored;
    }
    double seconds = cpu_seconds() - start;
    if (pwrite(out, &header, sizeof header, 0) != sizeof header) die("pwrite");
    if (dict_bytes && pwrite(out, dict, dict_bytes, sizeof header) != dict_bytes) die("pwrite");
    if (pwrite(out, index, block_count * sizeof *index, sizeof header + dict_bytes)
        != (ssize_t)(block_count * sizeof *index))
        die("pwrite");
    /* What cowbd-lz4 would take: 4 KiB header, 32-byte entries rounded to 4 KiB, blocks,
     * the dictionary, the 128-byte footer. */
    uint64_t image_bytes = 4096 + (block_count * 32 + 4095) / 4096 * 4096 + stored_total
        + (uint64_t)dict_bytes + 128;
    printf("image_bytes=%llu compress_cpu_seconds=%.2f\n", (unsigned long long)image_bytes,
           seconds);
    close(out);
    close(in);
    return 0;
}

/* One random read that misses the cache, as cowbd-lz4 serves it. Its own function, so that
 * callgrind can count it alone (--toggle-collect=read_one). */
__attribute__((noinline)) static void read_one(int fd, const struct header *header,
                                               const struct entry *index, const char *dict,
                                               uint64_t offset, char *slot, char *reply) {
    uint64_t block = offset / header->block_bytes;
    uint64_t in_block = offset - block * header->block_bytes;
    const struct entry *e = &index[block];
    if (e->flags == 1) {
        memset(reply, 0, READ_BYTES);
        return;
    }
    uint64_t bytes = header->virtual_size - block * header->block_bytes;
    if (bytes > header->block_bytes) bytes = header->block_bytes;
    char *stored = e->flags == 2 ? slot : slot + header->block_bytes * 2 - e->stored;
    pread_all(fd, stored, e->stored, e->offset);
    if (XXH3_64bits(stored, e->stored) != e->checksum) {
        fprintf(stderr, "checksum mismatch, block %llu\n", (unsigned long long)block);
        exit(1);
    }
    if (e->flags == 0) {
        int target = (int)(in_block + READ_BYTES);
        int n = header->dict_bytes
            ? LZ4_decompress_safe_partial_usingDict(stored, slot, (int)e->stored, target,
                                                    (int)bytes, dict, (int)header->dict_bytes)
            : LZ4_decompress_safe_partial(stored, slot, (int)e->stored, target, (int)bytes);
        if (n != target) {
            fprintf(stderr, "decompression failed, block %llu\n", (unsigned long long)block);
            exit(1);
        }
    }
    memcpy(reply, slot + in_block, READ_BYTES);
}

static int read_image(const char *path, long read_count) {
    int fd = open(path, O_RDONLY);
    if (fd < 0) die(path);
    struct header header;
    pread_all(fd, &header, sizeof header, 0);
    static char dict[DICT_MAX];
    pread_all(fd, dict, header.dict_bytes, sizeof header);
    struct entry *index = malloc(header.block_count * sizeof *index);
    pread_all(fd, index, header.block_count * sizeof *index, sizeof header + header.dict_bytes);
    char *slot = malloc(header.block_bytes * 2), reply[READ_BYTES];
    uint64_t state = 42, read_slots = header.virtual_size / READ_BYTES, stored_bytes = 0;
    for (long i = 0; i < read_count; i++) {
        state = state * 6364136223846793005ULL + 1442695040888963407ULL; /* seeded: same reads */
        uint64_t offset = ((state >> 17) % read_slots) * READ_BYTES;
        read_one(fd, &header, index, dict, offset, slot, reply);
        stored_bytes += index[offset / header.block_bytes].stored;
    }
    printf("reads=%ld stored_bytes_per_read=%.0f\n", read_count,
           (double)stored_bytes / read_count);
    return 0;
}

static uint64_t le(const unsigned char *bytes, int width) {
    uint64_t value = 0;
    for (int i = width - 1; i >= 0; i--) value = value << 8 | bytes[i];
    return value;
}

/* A cowbd-lz4 image's header, dictionary and index in this tool's terms, then the same reads:
 * the instructions of a miss on the real image `cowbd compress` made. */
static int read_cowbd_image(const char *path, long read_count) {
    int fd = open(path, O_RDONLY);
    if (fd < 0) die(path);
    unsigned char record[128];
    pread_all(fd, record, sizeof record, 0);
    if (memcmp(record, "COWBDLZ4", 8)) {
        fprintf(stderr, "%s: not a cowbd-lz4 image\n", path);
        return 1;
    }
    struct header header = {0, le(record + 24, 8), 1ULL << le(record + 16, 4), le(record + 32, 8),
                            le(record + 8, 4) >= 2 ? le(record + 100, 4) : 0};
    uint64_t index_offset = le(record + 64, 8), data_offset = le(record + 80, 8);
    static char dict[DICT_MAX];
    if (header.dict_bytes > DICT_MAX) return 1;
    pread_all(fd, dict, header.dict_bytes, data_offset);
    unsigned char *stored_index = malloc(header.block_count * 32);
    pread_all(fd, stored_index, header.block_count * 32, index_offset);
    struct entry *index = malloc(header.block_count * sizeof *index);
    for (uint64_t i = 0; i < header.block_count; i++) {
        const unsigned char *e = stored_index + i * 32;
        index[i] = (struct entry){le(e, 8), (uint32_t)le(e + 8, 4), (uint32_t)le(e + 12, 4),
                                  le(e + 16, 8)};
    }
    char *slot = malloc(header.block_bytes * 2), reply[READ_BYTES];
    uint64_t state = 42, read_slots = header.virtual_size / READ_BYTES, stored_bytes = 0;
    for (long i = 0; i < read_count; i++) {
        state = state * 6364136223846793005ULL + 1442695040888963407ULL; /* as read_image */
        uint64_t offset = ((state >> 17) % read_slots) * READ_BYTES;
        read_one(fd, &header, index, dict, offset, slot, reply);
        stored_bytes += index[offset / header.block_bytes].stored;
    }
    printf("reads=%ld stored_bytes_per_read=%.0f block_bytes=%llu dict_bytes=%llu\n", read_count,
           (double)stored_bytes / read_count, (unsigned long long)header.block_bytes,
           (unsigned long long)header.dict_bytes);
    return 0;
}

static int sample_image(const char *image_path, long every, const char *out_path) {
    int in = open(image_path, O_RDONLY);
    if (in < 0) die(image_path);
    FILE *out = fopen(out_path, "w");
    if (!out) die(out_path);
    uint64_t size = lseek(in, 0, SEEK_END);
    char piece[READ_BYTES];
    for (uint64_t offset = 0; offset + READ_BYTES <= size; offset += READ_BYTES * (uint64_t)every) {
        pread_all(in, piece, READ_BYTES, offset);
        if (!is_zero(piece, READ_BYTES)) fwrite(piece, 1, READ_BYTES, out);
    }
    fclose(out);
    return 0;
}

int main(int argc, char **argv) {
    if (argc >= 6 && !strcmp(argv[1], "compress"))
        return compress_image(argv[2], strtoull(argv[3], 0, 10), !strcmp(argv[4], "high"),
                              argv[5], argc > 6 ? argv[6] : NULL);
    if (argc == 4 && !strcmp(argv[1], "read")) return read_image(argv[2], atol(argv[3]));
    if (argc == 4 && !strcmp(argv[1], "read-cowbd"))
        return read_cowbd_image(argv[2], atol(argv[3]));
    if (argc == 5 && !strcmp(argv[1], "sample"))
        return sample_image(argv[2], atol(argv[3]), argv[4]);
    fprintf(stderr, "usage: see the comment at the top of lz4_curve.c\n");
    return 2;
}
