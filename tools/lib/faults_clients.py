"""The libnbd clients and file edits of tools/test-faults, one function a step, run as
`faults_clients.py NAME ARGS...` (argv[1] is the first of ARGS, as it was in the script).
tools/lib is on PYTHONPATH, for client.py.
"""
import sys


def disk_full_round(argv):
    import errno, nbd, os, random, sys
    from client import connect, expect_errno
    h = connect(argv[1]); model = bytearray(open(argv[2], "rb").read())
    rng = random.Random(int(argv[3])); size = h.get_size()
    block = (256 << 10, 1 << 20, 61440)[(int(argv[3]) - 1) % 3]  # one size a round
    written = []  # (offset, length) acknowledged and flushed
    failure = None
    for n in range(size // block):
        # Unaligned starts: partial chunks need a copy-up from the base.
        offset = n * block + rng.randrange(0, 4096)
        length = min(block, size - offset)
        data = os.urandom(length)
        try:
            h.pwrite(data, offset)
            h.flush()
        except nbd.Error as e:
            failure = (e, offset, data)
            break
        model[offset:offset + length] = data
        written.append((offset, length))
    assert failure, "the 24 MiB filesystem never filled up"
    e, offset, data = failure
    assert e.errnum == errno.ENOSPC, f"write at {offset}: errno {e.errnum} ({e}), expected ENOSPC"
    print(f"note: round {argv[3]}: ENOSPC after {len(written)} flushed writes of {block} bytes")
    # The failed write may have landed chunk by chunk: each 4 KiB chunk of its range holds the old
    # or the new bytes, nothing else.
    got = h.pread(len(data), offset)
    end = offset + len(data)
    for chunk in range(offset // 4096 * 4096, end, 4096):
        start, stop = max(chunk, offset), min(chunk + 4096, end)
        now = got[start - offset:stop - offset]
        assert now == model[start:stop] or now == data[start - offset:stop - offset], \
            f"chunk at byte {chunk}: neither old nor new data"
    model[offset:offset + len(data)] = got
    # Still ENOSPC (not EIO) for more writes that need new chunks.
    for n in range(3):
        expect_errno(h, errno.ENOSPC, h.pwrite, os.urandom(8192), size - (n + 1) * 65536 + 100)
    # Chunks already in the store are overwritten in place: no space needed.
    first_offset, first_length = written[0]
    patch = os.urandom(first_length)
    h.pwrite(patch, first_offset); h.flush()
    model[first_offset:first_offset + first_length] = patch
    # Every byte reads back: flushed writes, the base elsewhere.
    for start in range(0, size, 1 << 20):
        assert h.pread(1 << 20, start) == model[start:start + (1 << 20)], f"wrong bytes at {start}"
    h.shutdown()
    open(argv[2], "wb").write(model)


def write_after_space_freed(argv):
    import os, sys
    from client import connect
    h = connect(argv[1]); model = bytearray(open(argv[2], "rb").read()); size = h.get_size()
    offset = size - (2 << 20) + 12345
    data = os.urandom(1 << 20)
    h.pwrite(data, offset); h.flush()
    model[offset:offset + len(data)] = data
    for start in range(0, size, 1 << 20):
        assert h.pread(1 << 20, start) == model[start:start + (1 << 20)], f"wrong bytes at {start}"
    h.shutdown()


def flush_on_full_disk(argv):
    import errno, nbd, os, sys
    from client import connect, expect_errno
    h = connect(argv[1]); page_span = 128 << 20
    # Fill the filesystem inside bitmap page 0, flushing as we go, to the last 4 KiB.
    offset = 0
    for block in (65536, 4096):
        while True:
            try:
                h.pwrite(os.urandom(block), offset); h.flush(); offset += block
            except nbd.Error as e:
                assert e.errnum == errno.ENOSPC, e
                break
    # Free one chunk, then write one chunk under a page never written: the data fits, the page not.
    h.trim(4096, 0); h.flush()
    data = os.urandom(4096)
    h.pwrite(data, 3 * page_span)
    expect_errno(h, errno.ENOSPC, h.flush)
    assert h.pread(4096, 3 * page_span) == data
    # Room again: the same server's next flush writes the page.
    h.trim(1 << 20, 1 << 20); h.flush()
    h.shutdown()
    open(argv[2], "wb").write(data)
    print("note: flush failed with ENOSPC, then succeeded after a trim freed space")


def flushed_page_survives(argv):
    import sys
    from client import connect
    h = connect(argv[1])
    assert h.pread(4096, 3 * (128 << 20)) == open(argv[2], "rb").read(), "flushed write lost"
    h.shutdown()


def base_truncated_reads(argv):
    import errno, os, sys
    from client import connect, expect_errno
    h = connect(argv[1]); raw = open(argv[3], "rb").read(); MiB = 1 << 20
    assert h.pread(MiB, 40 * MiB) == raw[40 * MiB:41 * MiB]
    os.truncate(argv[2], 32 * MiB)
    for attempt in range(2):
        for offset, length in ((40 * MiB, MiB), (48 * MiB + 17, 4096), (32 * MiB - 4096, 8192), (64 * MiB - 512, 512)):
            expect_errno(h, errno.EIO, h.pread, length, offset)
    expect_errno(h, errno.EIO, h.pwrite, b"x" * 100, 50 * MiB + 10)
    for offset in (0, MiB + 3, 16 * MiB, 32 * MiB - MiB):
        assert h.pread(MiB, offset) == raw[offset:offset + MiB], offset
    # A whole chunk needs no base bytes: it is written, and reads back.
    h.pwrite(b"w" * 4096, 56 * MiB); h.flush()
    assert h.pread(4096, 56 * MiB) == b"w" * 4096
    h.shutdown()
    print("note: base cut from 64 to 32 MiB: 8 reads and a partial write past the end gave EIO")


def make_compressible_base(argv):
    import os, sys
    with open(argv[1], "wb") as f:
        for n in range(int(argv[2]) >> 16):
            f.write(os.urandom(64) * 1024)


def damaged_block_reads(argv):
    import errno, sys
    from client import connect, expect_errno
    h = connect(argv[1]); block = int(argv[2]) * 65536; raw = open(argv[3], "rb").read()
    for attempt in range(3):
        expect_errno(h, errno.EIO, h.pread, 4096, block + 8192)
        expect_errno(h, errno.EIO, h.pread, 65536 * 3, block - 65536)
        expect_errno(h, errno.EIO, h.pread, 1, block + 65535)
        expect_errno(h, errno.EIO, h.pwrite, b"p" * 10, block + 100)  # a copy-up of that block
    for offset in (0, block - 65536, block + 65536, block + 65536 * 2, len(raw) - 65536):
        assert h.pread(65536, offset) == raw[offset:offset + 65536], offset
    h.pwrite(b"c" * 4096, block + 4096); h.flush()
    assert h.pread(4096, block + 4096) == b"c" * 4096
    h.shutdown()
    print(f"note: block {argv[2]} damaged: 12 reads and writes touching it gave EIO")


def injected_read_errors(argv):
    import errno, sys
    from client import connect, expect_errno
    h = connect(argv[1]); raw = open(argv[2], "rb").read(); MiB = 1 << 20
    inject, trials = argv[3], int(argv[4])
    # Offsets halfway between the fingerprint's samples (about 1 MiB apart), each used by one trial,
    # so the kernel has not cached them.
    for trial in range(trials):
        good, bad = (2 * trial + 3) * MiB + MiB // 2, (2 * trial + 4) * MiB + MiB // 2
        assert h.pread(65536, good) == raw[good:good + 65536], good
        open(inject, "w").close()
        expect_errno(h, errno.EIO, h.pread, 65536, bad)
        expect_errno(h, errno.EIO, h.pread, 100, bad + 200)
        expect_errno(h, errno.EIO, h.pwrite, b"e" * 100, bad + 300000)  # copy-up reads the base
        assert h.pread(65536, good) == raw[good:good + 65536], "cached bytes while failing"
        import os; os.unlink(inject)
        assert h.pread(65536, bad) == raw[bad:bad + 65536], bad
        h.pwrite(b"e" * 100, bad + 300000)
        h.flush()
        expect = raw[bad + 300000 - 50:bad + 300000] + b"e" * 100 + raw[bad + 300100:bad + 300150]
        assert h.pread(200, bad + 300000 - 50) == expect
    h.shutdown()
    print(f"note: {trials} trials: EIO while nbdkit failed reads, right bytes once it stopped")


def write_before_base_change(argv):
    import sys
    from client import connect
    h = connect(argv[1]); h.pwrite(b"s" * 10000, 1000); h.flush(); h.shutdown()


def flip_byte(argv):
    import sys
    with open(argv[1], "r+b") as f:
        f.seek(int(argv[2])); byte = f.read(1)[0]; f.seek(int(argv[2])); f.write(bytes([byte ^ 1]))


def writeback_error_flushes(argv):
    """SOCK SAVED TRIGGER: writes A and flushes it; creates TRIGGER (the device's writes fail),
    writes B and requires FLUSH to fail with EIO; removes TRIGGER (the device works again) and
    requires the next FLUSH to fail too (the kernel reported the lost writeback once: a retried
    fsync succeeds without B's data), and a WRITE and a FLUSH after it. Saves A and B (offset,
    length, bytes) to SAVED for the read-back after the restart."""
    import errno, nbd, os, random
    from client import connect
    h = connect(argv[1]); MiB = 1 << 20
    a_offset, a = 3 * MiB + 1234, random.Random(13).randbytes(6 * MiB)
    b_offset, b = 20 * MiB + 77, random.Random(14).randbytes(8 * MiB)
    h.pwrite(a, a_offset); h.flush()
    with open(argv[2], "wb") as f:
        for offset, data in ((a_offset, a), (b_offset, b)):
            f.write(offset.to_bytes(8, "little") + len(data).to_bytes(8, "little") + data)
    open(argv[3], "w").close()
    h.pwrite(b, b_offset)  # into the page cache; its writeback fails
    outcomes = []
    for attempt in ("FLUSH", "FLUSH after the device recovered", "WRITE", "last FLUSH"):
        if attempt == "FLUSH after the device recovered":
            os.remove(argv[3])
        try:
            if attempt == "WRITE":
                h.pwrite(b"c" * 4096, 40 * MiB)
            else:
                h.flush()
            outcomes.append(f"{attempt}: succeeded")
        except nbd.Error as e:
            outcomes.append(f"{attempt}: errno {e.errnum}")
    print("note: " + "; ".join(outcomes))
    expected = [f"{attempt}: errno {errno.EIO}"
                for attempt in ("FLUSH", "FLUSH after the device recovered", "WRITE", "last FLUSH")]
    assert outcomes == expected, f"expected {expected}, got {outcomes}"
    h.shutdown()


def flushed_bytes_read_back(argv):
    """SOCK SAVED BASE: every byte of A (flushed before the fault) reads back; each 4 KiB chunk
    of B (written, never flushed) holds the base's bytes or B's, nothing else."""
    from client import connect
    h = connect(argv[1]); saved = open(argv[2], "rb").read(); base = open(argv[3], "rb").read()
    regions = []
    while saved:
        offset, length = (int.from_bytes(saved[i:i + 8], "little") for i in (0, 8))
        regions.append((offset, saved[16:16 + length])); saved = saved[16 + length:]
    (a_offset, a), (b_offset, b) = regions
    assert h.pread(len(a), a_offset) == a, "bytes flushed before the writeback error changed"
    got = h.pread(len(b), b_offset); end = b_offset + len(b); kept = 0
    for chunk in range(b_offset // 4096 * 4096, end, 4096):
        start, stop = max(chunk, b_offset), min(chunk + 4096, end)
        now = got[start - b_offset:stop - b_offset]
        new = b[start - b_offset:stop - b_offset]
        assert now == base[start:stop] or now == new, \
            f"chunk at {chunk} of B holds neither the base's bytes nor B's"
        kept += now == new
    h.shutdown()
    print(f"note: after a remount the {len(a)} flushed bytes read back; of the unflushed write,"
          f" {kept} chunks new, the rest the base's")


if __name__ == "__main__":
    globals()[sys.argv[1]](sys.argv[1:])
