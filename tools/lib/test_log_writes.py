"""Tests log_writes.py on logs written here in the kernel target's format: random writes (some FUA),
discards, FLUSHes, and a mark after every FLUSH and FUA, each mark with the model's bytes at that point.
Replaying to each mark onto a copy of the initial image must give exactly those bytes; replaying one entry
short, or without the FUA writes' data, must not.
Usage: [LOG_WRITES_SEED=N] python3 tools/lib/test_log_writes.py [-v]
"""
import os
import pathlib
import random
import shutil
import tempfile
import unittest

import log_writes

SECTOR_SIZE = 512
IMAGE_SECTORS = 512
OPERATIONS = 400
SEED = int(os.environ.get("LOG_WRITES_SEED", "1"))


class ReplayTests(unittest.TestCase):
    def setUp(self):
        self.directory = tempfile.mkdtemp(prefix="log-writes-test.")
        self.random = random.Random(SEED)
        self.initial = os.path.join(self.directory, "initial.img")
        self.log = os.path.join(self.directory, "log.img")
        model = bytearray(self.random.randbytes(IMAGE_SECTORS * SECTOR_SIZE))
        pathlib.Path(self.initial).write_bytes(model)
        writer = log_writes.LogWriter(self.log, SECTOR_SIZE)
        self.states = {}
        for operation in range(OPERATIONS):
            choice = self.random.random()
            if choice < 0.1:
                writer.flush()
            elif choice < 0.15:
                sector = self.random.randrange(IMAGE_SECTORS - 8)
                count = self.random.randint(1, 8)
                writer.discard(sector, count)
                model[sector * SECTOR_SIZE:(sector + count) * SECTOR_SIZE] = bytes(count * SECTOR_SIZE)
                continue
            else:
                sector = self.random.randrange(IMAGE_SECTORS - 16)
                data = self.random.randbytes(self.random.randint(1, 16) * SECTOR_SIZE)
                fua = self.random.random() < 0.2
                writer.write(sector, data, fua)
                model[sector * SECTOR_SIZE:sector * SECTOR_SIZE + len(data)] = data
                if not fua:
                    continue
            name = f"m{operation}"
            writer.mark(name)
            self.states[name] = bytes(model)
        writer.close()

    def tearDown(self):
        shutil.rmtree(self.directory)

    def replayed(self, name, stop_index=None, entries=None):
        sector_size, all_entries = log_writes.read_log(self.log)
        self.assertEqual(sector_size, SECTOR_SIZE)
        entries = all_entries if entries is None else entries
        if stop_index is None:
            stop_index = log_writes.mark_index(entries, name)
        image = os.path.join(self.directory, "replay.img")
        shutil.copyfile(self.initial, image)
        log_writes.replay(self.log, sector_size, entries, image, stop_index)
        return pathlib.Path(image).read_bytes()

    def test_every_mark_replays_to_the_model(self):
        self.assertGreater(len(self.states), 50)
        for name, state in self.states.items():
            replayed = self.replayed(name)
            if replayed != state:
                wrong = [offset for offset in range(len(state)) if replayed[offset] != state[offset]]
                self.fail(f"mark {name}: {len(wrong)} wrong bytes, the first at {wrong[0]}")

    def test_replay_one_entry_short_differs(self):
        _, entries = log_writes.read_log(self.log)
        differing = 0
        for name, state in self.states.items():
            before = entries[log_writes.mark_index(entries, name) - 1]
            if before.sector_count and not before.flags & log_writes.DISCARD:
                differing += self.replayed(name, before.index) != state
        self.assertGreater(differing, 20)

    def test_replay_without_fua_data_differs(self):
        _, entries = log_writes.read_log(self.log)
        kept = [entry for entry in entries if not entry.flags & log_writes.FUA]
        for position, entry in enumerate(kept):
            entry.index = position
        wrong = sum(self.replayed(name, entries=kept) != state for name, state in self.states.items())
        self.assertGreater(wrong, 10)

    def test_bad_logs_fail_with_one_line(self):
        bad = os.path.join(self.directory, "bad.img")
        pathlib.Path(bad).write_bytes(bytes(4096))
        with self.assertRaisesRegex(log_writes.LogError, "not a dm-log-writes log"):
            log_writes.read_log(bad)
        data = pathlib.Path(self.log).read_bytes()
        pathlib.Path(bad).write_bytes(data[:len(data) // 2])
        with self.assertRaisesRegex(log_writes.LogError, "past the end"):
            sector_size, entries = log_writes.read_log(bad)
            log_writes.replay(bad, sector_size, entries, self.initial, len(entries))


if __name__ == "__main__":
    unittest.main()
