"""Writes PATCH at three offsets of the export "disk" on SOCK and zeroes 5 MB at 40 MB, flushes,
and applies the same changes to the model file MODEL (the disk's expected bytes).
Usage: write_model.py SOCK PATCH MODEL
"""
import sys

from client import connect

handle = connect(sys.argv[1])
patch = open(sys.argv[2], "rb").read()
model = bytearray(open(sys.argv[3], "rb").read())
for offset in (12345, 30_000_001, len(model) - len(patch)):
    handle.pwrite(patch, offset)
    model[offset:offset + len(patch)] = patch
handle.zero(5_000_000, 40_000_000)
model[40_000_000:45_000_000] = bytes(5_000_000)
handle.flush()
handle.shutdown()
open(sys.argv[3], "wb").write(model)
