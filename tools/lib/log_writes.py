"""Reads and replays a dm-log-writes log (the kernel's drivers/md/dm-log-writes.c on-disk format).

The log device starts with a super block in its first sector: magic 0x6a736677736872, version 1,
nr_entries, sectorsize (all little-endian: u64, u64, u64, u32). From the second sector on, each entry is
one sector holding its header (u64 sector, nr_sectors, flags, data_len), then nr_sectors sectors of data
(none for a FLUSH, a MARK or a DISCARD). A MARK keeps its name inline in the header sector, after the
32 header bytes (data_len of them). Sectors and counts are in units of sectorsize.

The kernel logs a write only once it completed, and a FLUSH once every write before it did: replaying the
entries before a mark gives the device as it stood when the mark was placed (the flushed state, if the mark
was placed after an acknowledged flush).

    log_writes.py marks LOG                          one line per mark: name, entry index
    log_writes.py replay LOG IMAGE MARK [--short N]  replay onto IMAGE every entry before MARK
                                                     (--short N: stop N entries earlier, to show a
                                                     replay that misses writes is caught)
"""
import struct
import sys

MAGIC = 0x6A736677736872
VERSION = 1
FLUSH = 1 << 0
FUA = 1 << 1
DISCARD = 1 << 2
MARK = 1 << 3
SUPER = struct.Struct("<QQQI")
ENTRY = struct.Struct("<QQQQ")
MAX_ENTRIES = 10_000_000


class LogError(Exception):
    pass


class Entry:
    __slots__ = ("index", "sector", "sector_count", "flags", "mark", "data_offset")

    def __init__(self, index, sector, sector_count, flags, mark, data_offset):
        self.index = index
        self.sector = sector
        self.sector_count = sector_count
        self.flags = flags
        self.mark = mark
        self.data_offset = data_offset


def read_log(path):
    """Returns (sectorsize, [Entry]) for the log in file PATH; raises LogError naming PATH."""
    with open(path, "rb") as log:
        head = log.read(SUPER.size)
        if len(head) < SUPER.size:
            raise LogError(f"{path}: shorter than a log super block")
        magic, version, entry_count, sector_size = SUPER.unpack(head)
        if magic != MAGIC:
            raise LogError(f"{path}: not a dm-log-writes log (magic {magic:#x})")
        if version != VERSION:
            raise LogError(f"{path}: log version {version}, expected {VERSION}")
        if sector_size < ENTRY.size or sector_size & (sector_size - 1):
            raise LogError(f"{path}: bad sector size {sector_size}")
        if entry_count > MAX_ENTRIES:
            raise LogError(f"{path}: {entry_count} entries, more than {MAX_ENTRIES}")
        entries = []
        position = sector_size
        for index in range(entry_count):
            log.seek(position)
            block = log.read(sector_size)
            if len(block) < sector_size:
                raise LogError(f"{path}: entry {index} at byte {position} is past the end")
            sector, sector_count, flags, data_length = ENTRY.unpack_from(block)
            if flags == 0 and sector_count == 0:
                raise LogError(f"{path}: entry {index} at byte {position} is empty")
            mark = None
            if flags & MARK:
                if data_length > sector_size - ENTRY.size:
                    raise LogError(f"{path}: entry {index}: mark of {data_length} bytes")
                mark = block[ENTRY.size:ENTRY.size + data_length].decode("ascii", "replace")
            position += sector_size
            entries.append(Entry(index, sector, sector_count, flags, mark, position))
            if not flags & DISCARD:
                position += sector_count * sector_size
        return sector_size, entries


def mark_index(entries, name):
    """The index of the entry that is mark NAME (replay the entries before it)."""
    for entry in entries:
        if entry.mark == name:
            return entry.index
    raise LogError(f"no mark {name!r} in the log")


def replay(log_path, sector_size, entries, image_path, stop_index):
    """Applies entries [0, stop_index) to the file IMAGE_PATH: data where written, zeros where discarded."""
    with open(log_path, "rb") as log, open(image_path, "r+b") as image:
        for entry in entries[:stop_index]:
            if entry.sector_count == 0:
                continue
            length = entry.sector_count * sector_size
            image.seek(entry.sector * sector_size)
            if entry.flags & DISCARD:
                image.write(bytes(length))
                continue
            log.seek(entry.data_offset)
            data = log.read(length)
            if len(data) != length:
                raise LogError(f"{log_path}: entry {entry.index}: data past the end of the log")
            image.write(data)


class LogWriter:
    """Writes a log the way the kernel target does, for testing the reader without a kernel."""

    def __init__(self, path, sector_size=512):
        self.file = open(path, "w+b")
        self.sector_size = sector_size
        self.entry_count = 0
        self.file.seek(sector_size)

    def _entry(self, sector, flags, data=b"", inline=b""):
        assert len(data) % self.sector_size == 0 and len(inline) <= self.sector_size - ENTRY.size
        head = ENTRY.pack(sector, len(data) // self.sector_size, flags, len(inline)) + inline
        self.file.write(head.ljust(self.sector_size, b"\0") + data)
        self.entry_count += 1

    def write(self, sector, data, fua=False):
        self._entry(sector, FUA if fua else 0, data)

    def flush(self):
        self._entry(0, FLUSH)

    def discard(self, sector, sector_count):
        head = ENTRY.pack(sector, sector_count, DISCARD, 0)
        self.file.write(head.ljust(self.sector_size, b"\0"))
        self.entry_count += 1

    def mark(self, name):
        self._entry(0, MARK, inline=name.encode("ascii"))

    def close(self):
        self.file.seek(0)
        self.file.write(SUPER.pack(MAGIC, VERSION, self.entry_count, self.sector_size))
        self.file.close()


def main(arguments):
    if len(arguments) == 2 and arguments[0] == "marks":
        _, entries = read_log(arguments[1])
        for entry in entries:
            if entry.mark is not None:
                print(entry.mark, entry.index)
        return 0
    if len(arguments) in (4, 6) and arguments[0] == "replay":
        short = 0
        if len(arguments) == 6:
            if arguments[4] != "--short":
                raise LogError(f"unknown option {arguments[4]}")
            short = int(arguments[5])
        sector_size, entries = read_log(arguments[1])
        stop_index = max(0, mark_index(entries, arguments[3]) - short)
        replay(arguments[1], sector_size, entries, arguments[2], stop_index)
        return 0
    print("usage: log_writes.py marks LOG | replay LOG IMAGE MARK [--short N]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except (LogError, OSError, ValueError) as error:
        print(f"log_writes.py: {error}", file=sys.stderr)
        sys.exit(1)
