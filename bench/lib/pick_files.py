"""Prints, NUL-separated, a deterministic shuffle of the regular files under the given folders,
as many as fit in a byte budget: the content of bench's base image. Skips files over 64 MiB
(one file would dominate a small image) and anything unreadable."""

import os
import random
import sys

MAX_FILE_BYTE_COUNT = 64 * 1024 * 1024
SEED = 42


def regular_files(roots):
    for root in roots:
        for folder, subfolders, names in os.walk(root):
            subfolders.sort()
            for name in sorted(names):
                path = os.path.join(folder, name)
                try:
                    status = os.lstat(path)
                except OSError:
                    continue
                if os.path.isfile(path) and not os.path.islink(path) and os.access(path, os.R_OK):
                    yield path, status.st_size


def main():
    budget_byte_count = int(sys.argv[1])
    candidates = [(path, size) for path, size in regular_files(sys.argv[2:])
                  if size <= MAX_FILE_BYTE_COUNT]
    random.Random(SEED).shuffle(candidates)
    picked_byte_count = 0
    out = sys.stdout.buffer
    for path, size in candidates:
        if picked_byte_count + size > budget_byte_count:
            continue
        picked_byte_count += size
        out.write(os.path.relpath(path, "/").encode() + b"\0")


if __name__ == "__main__":
    main()
