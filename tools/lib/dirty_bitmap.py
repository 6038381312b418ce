"""Prints the dirty ranges of NBD context qemu:dirty-bitmap:NAME as JSON [[start, end], ...],
read with python3-libnbd's block_status (an independent client of cowbd's dirty bitmaps).
Usage: dirty_bitmap.py SOCKET NAME"""
import json
import sys

import nbd


def main():
    sock, name = sys.argv[1], sys.argv[2]
    context = "qemu:dirty-bitmap:" + name
    handle = nbd.NBD()
    handle.add_meta_context(context)
    handle.connect_unix(sock)
    if not handle.can_meta_context(context):
        sys.exit("the server did not agree to " + context)
    size = handle.get_size()
    ranges = []
    offset = 0

    def extents(meta, start, entries, err):
        nonlocal offset
        if meta != context:
            return 0
        for index in range(0, len(entries), 2):
            length, flags = entries[index], entries[index + 1]
            if flags & 1:
                if ranges and ranges[-1][1] == offset:
                    ranges[-1][1] = offset + length
                else:
                    ranges.append([offset, offset + length])
            offset += length
        return 0

    rounds = 0
    while offset < size:
        rounds += 1
        if rounds > 1000000:
            sys.exit("block status makes no progress")
        handle.block_status(min(size - offset, 1 << 30), offset, extents)
    handle.shutdown()
    print(json.dumps(ranges))


main()
