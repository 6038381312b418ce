// The checkpoint table round-trips, the newer valid copy wins, and damage is refused.

import CowFormat
import Testing

private func sampleTable(generation: UInt64) -> CheckpointTable {
    var table = CheckpointTable()
    table.generation = generation
    table.isOpen = true
    table.slots[3] = Checkpoint(
        name: "nightly-2026.11.25", id: 0x1234_5678_9ABC_DEF0, createdUnixSeconds: 1_790_000_000,
        diskFingerprint: BaseFingerprint(low: 1, high: 2))
    return table
}

private func parse(_ bytes: [UInt8]) throws -> CheckpointTable {
    try bytes.withUnsafeBytes { bytes throws(FormatError) in
        try CheckpointTable(parsing: bytes)
    }
}

@Test func checkpointTableRoundTrips() throws {
    let table = sampleTable(generation: 7)
    #expect(try parse(table.encoded()) == table)
    #expect(table.slot(named: "nightly-2026.11.25") == 3)
    #expect(table.checkpoints.map(\.slot) == [3])
}

@Test func theNewerValidCopyWins() throws {
    let older = sampleTable(generation: 4).encoded()
    var newer = sampleTable(generation: 5)
    newer.slots[3] = nil
    let newerBytes = newer.encoded()
    func current(_ first: [UInt8], _ second: [UInt8]) throws -> CheckpointTable {
        try first.withUnsafeBytes { first in
            try second.withUnsafeBytes { second throws(FormatError) in
                try CheckpointTable.current(of: first, second)
            }
        }
    }
    #expect(try current(older, newerBytes).generation == 5)
    #expect(try current(newerBytes, older).generation == 5)
    var torn = newerBytes
    torn[40] ^= 0xFF
    #expect(try current(older, torn).generation == 4)
    #expect(throws: FormatError.self) { try current(torn, torn) }
}

@Test func damagedTablesAreRefused() throws {
    let good = sampleTable(generation: 1).encoded()
    var flipped = good
    flipped[2000] ^= 1
    #expect(throws: FormatError.self) { try parse(flipped) }
    var badMagic = good
    badMagic[0] = 0
    #expect(throws: FormatError.self) { try parse(badMagic) }
    #expect(throws: FormatError.self) { try parse(Array(good[..<100])) }
}

@Test(arguments: ["", "-x", "a b", "ä", String(repeating: "n", count: 61)])
func badNamesAreRejected(name: String) {
    #expect(Checkpoint.problem(withName: name) != nil)
}

@Test(arguments: ["a", "2026-11-25", "backup_1.full", String(repeating: "n", count: 60)])
func goodNamesAreAccepted(name: String) {
    #expect(Checkpoint.problem(withName: name) == nil)
}
