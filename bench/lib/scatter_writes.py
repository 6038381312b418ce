"""Writes COUNT 4 KiB blocks at distinct seeded-random 4 KiB-aligned offsets over a whole NBD
export, up to 32 in flight on one connection, then FLUSH: the scale section's bitmap growth.
Not fio: fio's random offsets from different seeds repeat each other (543 of 1024 in one test),
so fio could not say how many new chunks it made. Usage: scatter_writes.py SOCKET COUNT SEED"""

import random
import sys

import nbd

BLOCK_BYTE_COUNT = 4096
MAX_IN_FLIGHT = 32


def main():
    socket, count, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    handle = nbd.NBD()
    handle.connect_unix(socket)
    block_count = handle.get_size() // BLOCK_BYTE_COUNT
    generator = random.Random(seed)
    offsets = [index * BLOCK_BYTE_COUNT for index in generator.sample(range(block_count), count)]
    buffer = nbd.Buffer.from_bytearray(bytearray(generator.randbytes(BLOCK_BYTE_COUNT)))
    failures = []

    def retire(error):
        """Completion callback: notes a failed write; returning 1 retires the command."""
        if error.value:
            failures.append(error.value)
        return 1

    for offset in offsets:
        while handle.aio_in_flight() >= MAX_IN_FLIGHT:
            handle.poll(-1)
        handle.aio_pwrite(buffer, offset, completion=retire)
    while handle.aio_in_flight() > 0:
        handle.poll(-1)
    if failures:
        sys.exit(f"scatter_writes: {len(failures)} writes failed (errno {failures[0]})")
    handle.flush()
    handle.shutdown()


if __name__ == "__main__":
    main()
