"""Damages one LZ4 block of a cowbd-lz4 image (docs/FORMAT.md) where the base fingerprint does not
look: flips a byte in the middle of the first block, from FIRST_BLOCK on, that is stored
compressed (flags 0) and lies outside the bytes the fingerprint samples, so a store can still be
made over the image. Prints "BLOCK STORED_BYTE_OFFSET"; exits 1 if no block qualifies.
Usage: lz4_damage.py IMAGE [FIRST_BLOCK|middle]
"""
import struct
import sys

BLOCK_BYTE_COUNT = 65536  # the images the tests damage are made with --block-size 64K


def sampled_ranges(size):
    """The byte ranges the base fingerprint reads: the first and last 64 KiB and 64 pages."""
    ranges = [(0, 65536), (size - 65536, size)]
    ranges += [((((size - 4096) // 63) * i) & ~4095,) * 2 for i in range(64)]
    return [(start, end if end > start else start + 4096) for start, end in ranges]


def main():
    with open(sys.argv[1], "r+b") as image:
        size, block_count = struct.unpack_from("<QQ", image.read(128), 24)
        first = sys.argv[2] if len(sys.argv) > 2 else "0"
        first = block_count // 2 if first == "middle" else int(first)
        sampled = sampled_ranges(size)
        image.seek(4096)
        index = image.read(block_count * 32)
        for block in range(first, block_count):
            offset, stored, flags = struct.unpack_from("<QII", index, block * 32)
            start, end = block * BLOCK_BYTE_COUNT, (block + 1) * BLOCK_BYTE_COUNT
            if flags != 0 or any(s < end and start < e for s, e in sampled):
                continue
            image.seek(offset + stored // 2)
            byte = image.read(1)[0]
            image.seek(offset + stored // 2)
            image.write(bytes([byte ^ 0x40]))
            print(block, offset)
            return 0
    return 1


sys.exit(main())
