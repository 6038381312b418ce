"""Writes a patch of LENGTH bytes at each OFFSET through the export "disk" on SOCK (patch i holds
the byte i + 1), flushes, and applies the same patches to the model file MODEL.
Usage: write_patches.py SOCK MODEL LENGTH OFFSET...
"""
import sys

from client import connect

sock, model_path, length = sys.argv[1], sys.argv[2], int(sys.argv[3])
handle = connect(sock)
model = bytearray(open(model_path, "rb").read())
for index, offset in enumerate(int(argument) for argument in sys.argv[4:]):
    patch = bytes([index + 1]) * length
    handle.pwrite(patch, offset)
    model[offset:offset + length] = patch
handle.flush()
handle.shutdown()
open(model_path, "wb").write(model)
