"""An independent reader of rbd diff v1 (interop-formats.md), for CLITests.DiffTests: applies
the stream to TARGET, checks it against cowbd's JSON extent list, and rewrites it as rbd diff v2.
Usage: rbd_diff_reader.py DIFF TARGET LISTING V2_OUT
"""
import json, struct, sys
diff, target, listing, v2 = sys.argv[1:5]
data = open(diff, "rb").read()
assert data[:12] == b"rbd diff v1\n", "banner"
pos, size, extents, out = 12, None, [], [b"rbd diff v2\n"]
with open(target, "r+b") as image:
    while True:
        tag = data[pos:pos + 1]; pos += 1
        if tag == b"e":
            assert pos == len(data), "bytes after e"; out.append(b"e"); break
        if tag == b"s":
            (size,) = struct.unpack_from("<Q", data, pos); pos += 8
            image.truncate(size); out.append(b"s" + struct.pack("<QQ", 8, size))
        elif tag in (b"w", b"z"):
            offset, length = struct.unpack_from("<QQ", data, pos); pos += 16
            assert size is not None and offset + length <= size, "range"
            image.seek(offset)
            if tag == b"w":
                payload = data[pos:pos + length]; pos += length
                assert len(payload) == length, "truncated"
                image.write(payload)
                out.append(b"w" + struct.pack("<QQQ", 16 + length, offset, length) + payload)
            else:
                image.write(bytes(length))
                out.append(b"z" + struct.pack("<QQQ", 16, offset, length))
            extents.append((offset, length, tag == b"z"))
        else:
            raise SystemExit("unknown tag %r" % tag)
merged = []
for offset, length, zero in extents:
    if merged and merged[-1][2] == zero and merged[-1][0] + merged[-1][1] == offset:
        merged[-1] = (merged[-1][0], merged[-1][1] + length, zero)
    else:
        merged.append((offset, length, zero))
listed = [(e["offset"], e["length"], e["zero"]) for e in json.load(open(listing))]
assert listed == merged, "json extents differ from the rbd records"
open(v2, "wb").write(b"".join(out))
