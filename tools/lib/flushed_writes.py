"""write: 200 scattered writes and a FLUSH, then one FUA write, through the export "disk" on SOCK
(the caller then kills the server). verify: every one of them reads back.
Usage: flushed_writes.py write|verify SOCK
"""
import sys

import nbd

from client import connect

WRITE_COUNT = 200
FUA_OFFSET = 60_000_000


def pattern(index):
    return bytes([index % 251 + 1]) * 5000


handle = connect(sys.argv[2])
if sys.argv[1] == "write":
    for index in range(WRITE_COUNT):
        handle.pwrite(pattern(index), index * 300_007)
    handle.flush()
    handle.pwrite(b"\xee" * 4096, FUA_OFFSET, nbd.CMD_FLAG_FUA)
else:
    for index in range(WRITE_COUNT):
        assert handle.pread(5000, index * 300_007) == pattern(index), index
    assert handle.pread(4096, FUA_OFFSET) == b"\xee" * 4096
