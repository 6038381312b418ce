"""Reads through the export "disk" on SOCK around a damaged 64 KiB block BLOCK of its compressed
base: reads of the block fail with EIO every time, its neighbours read as RAW (the undamaged
image). Usage: damaged_block_reads.py SOCK BLOCK RAW
"""
import errno
import sys

from client import connect, expect_errno

BLOCK_BYTE_COUNT = 65536
handle = connect(sys.argv[1])
block = int(sys.argv[2])
raw = open(sys.argv[3], "rb").read()
for attempt in range(3):
    expect_errno(handle, errno.EIO, handle.pread, 4096, block * BLOCK_BYTE_COUNT + 8192)
for neighbour in sorted({0, block - 1, block + 1, block + 2} - {block}):
    start = neighbour * BLOCK_BYTE_COUNT
    assert handle.pread(BLOCK_BYTE_COUNT, start) == raw[start:start + BLOCK_BYTE_COUNT], neighbour
