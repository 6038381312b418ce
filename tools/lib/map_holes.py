"""Checks an `nbdinfo --map` listing against the raw image: every extent it calls a hole reads as
zeros in IMAGE, and there is at least one. Usage: map_holes.py IMAGE MAP
"""
import sys

image = open(sys.argv[1], "rb").read()
holes = 0
for line in open(sys.argv[2]):
    fields = line.split()
    if len(fields) >= 4 and "hole" in fields[3]:
        start, length = int(fields[0]), int(fields[1])
        assert image[start:start + length].count(0) == length, f"hole at {start} is not zeros"
        holes += length
assert holes > 0, "no hole reported"
print(f"{holes} bytes reported as holes, all zeros in the raw image")
