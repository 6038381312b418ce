"""Checks `qemu-img map --output=json` of an NBD export opened with
x-dirty-bitmap=qemu:allocation-depth. qemu folds the depth into three states (its commit
"nbd: Add new qemu:allocation-depth metadata context"): depth 0 reads as data true, zero false
("unallocated"); depth 1 as data false, zero false ("local"); depth 2 and more as data true,
zero true ("backing"). Usage: allocation_depth_map.py MAP.json OFFSET:STATE..."""

import json
import sys

STATES = {
    (True, False): "unallocated",
    (False, False): "local",
    (True, True): "backing",
}


def main():
    with open(sys.argv[1]) as file:
        extents = json.load(file)
    failures = []
    for expectation in sys.argv[2:]:
        offset_text, expected = expectation.split(":")
        offset = int(offset_text)
        covering = [extent for extent in extents
                    if extent["start"] <= offset < extent["start"] + extent["length"]]
        if len(covering) != 1:
            failures.append(f"{offset}: {len(covering)} extents cover it")
            continue
        extent = covering[0]
        state = STATES.get((extent["data"], extent["zero"]), "unknown")
        if state != expected:
            failures.append(f"{offset}: {state} ({extent}), expected {expected}")
    if failures:
        sys.exit("allocation_depth_map: " + "; ".join(failures))


if __name__ == "__main__":
    main()
