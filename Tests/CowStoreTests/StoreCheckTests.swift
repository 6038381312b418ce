import CowFormat
import CowStore
import Foundation
import SystemPackage
import Testing

// MARK: Helpers

private func check(_ path: String, repair: Bool = false) throws -> StoreCheckReport {
    try StoreCheck.run(storePath: FilePath(path), repair: repair)
}

/// Writes `chunkIndexes` (whole 4 KiB chunks of `fill`) through a disk that is then closed
/// without a flush, as a crash would leave it; flushes first the ones in `flushed`.
private func writeChunks(
    store path: String, flushed: [UInt64] = [], unflushed: [UInt64] = [], chunkByteCount: Int = 4096
) throws {
    let disk = try VirtualDisk.open(storePath: FilePath(path))
    let scratch = disk.makeScratch()
    for chunkIndex in flushed {
        try disk.writeBytes(
            [UInt8](repeating: 0x5A, count: chunkByteCount),
            at: chunkIndex * UInt64(chunkByteCount), scratch: scratch)
    }
    try disk.flush()
    for chunkIndex in unflushed {
        // A partial write: the copy-up still writes the whole chunk.
        try disk.writeBytes(
            [UInt8](repeating: 0xC3, count: 100), at: chunkIndex * UInt64(chunkByteCount) + 7,
            scratch: scratch)
    }
}

private func patchFile(_ path: String, at byteOffset: UInt64, with bytes: [UInt8]) throws {
    let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: path))
    try handle.seek(toOffset: byteOffset)
    try handle.write(contentsOf: Data(bytes))
    try handle.close()
}

private func resizeFile(_ path: String, to byteCount: UInt64) throws {
    let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: path))
    try handle.truncate(atOffset: byteCount)
    try handle.close()
}

private func header(_ path: String) throws -> StoreHeader {
    try StoreFile(path: FilePath(path), access: .unlockedRead).header
}

// MARK: Consistent stores

@Test func checkPassesOnAFreshStore() throws {
    let scratch = try Scratch()
    _ = try makeBase(at: scratch.path("base"), byteCount: 3 << 20, seed: 21)
    try createStore(at: scratch.path("cow"), base: scratch.path("base"))
    let report = try check(scratch.path("cow"))
    #expect(report.isConsistent)
    #expect(report.findings.isEmpty)
    #expect(report.checkedAreas == StoreCheckReport.Area.allCases)
    #expect(report.writtenChunkCount == 0)
    #expect(report.base?.isOK == true)
}

@Test func checkPassesAfterWritesAndAFlush() throws {
    let scratch = try Scratch()
    _ = try makeBase(at: scratch.path("base"), byteCount: 3 << 20, seed: 22)
    try createStore(at: scratch.path("cow"), base: scratch.path("base"), virtualByteCount: 4 << 20)
    try writeChunks(store: scratch.path("cow"), flushed: [0, 1, 5, 700, 1023])
    let report = try check(scratch.path("cow"))
    #expect(report.isConsistent)
    #expect(report.findings.isEmpty)
    #expect(report.writtenChunkCount == 5)
    #expect(report.leakedChunkCount == 0)
}

@Test func checkFailsWhileAServerHoldsTheStore() throws {
    let scratch = try Scratch()
    _ = try makeBase(at: scratch.path("base"), byteCount: 1 << 20, seed: 23)
    try createStore(at: scratch.path("cow"), base: scratch.path("base"))
    let server = try VirtualDisk.open(storePath: FilePath(scratch.path("cow")))
    #expect {
        try check(scratch.path("cow"))
    } throws: { error in
        "\(error)".contains("in use by another cowbd")
    }
    #expect(throws: StoreError.self) { try check(scratch.path("cow"), repair: true) }
    _ = server
}

// MARK: The base

@Test func checkReportsAChangedBaseAndRepairLeavesIt() throws {
    let scratch = try Scratch()
    _ = try makeBase(at: scratch.path("base"), byteCount: 4 << 20, seed: 24)
    try createStore(at: scratch.path("cow"), base: scratch.path("base"))
    try patchFile(scratch.path("base"), at: 100, with: [1, 2, 3])
    for repair in [false, true] {
        let report = try check(scratch.path("cow"), repair: repair)
        #expect(!report.isConsistent)
        let findings = report.findings(in: .base)
        #expect(findings.count == 1)
        #expect(findings.first?.message.contains("has changed") == true)
        guard case .impossible = findings.first?.repair else {
            Issue.record("a changed base must not look repairable")
            continue
        }
    }
}

@Test func checkReportsAMissingBase() throws {
    let scratch = try Scratch()
    _ = try makeBase(at: scratch.path("base"), byteCount: 1 << 20, seed: 25)
    try createStore(at: scratch.path("cow"), base: scratch.path("base"))
    try FileManager.default.removeItem(atPath: scratch.path("base"))
    let report = try check(scratch.path("cow"))
    #expect(report.remainingProblemCount == 1)
    #expect(report.base?.summary == "missing")
}

// MARK: Bitmap and file size

@Test func checkFindsABitPastTheLastChunkAndRepairClearsIt() throws {
    let scratch = try Scratch()
    _ = try makeBase(at: scratch.path("base"), byteCount: (1 << 20) + 3 * 4096, seed: 26)
    try createStore(at: scratch.path("cow"), base: scratch.path("base"))
    // 259 chunks: bits 259 and up of the only bitmap page must be clear. Set bit 300.
    let bitmapByteOffset = try header(scratch.path("cow")).bitmapByteOffset
    try patchFile(scratch.path("cow"), at: bitmapByteOffset + 300 / 8, with: [1 << (300 % 8)])
    #expect(throws: StoreError.self) {
        try StoreFile(path: FilePath(scratch.path("cow")), access: .unlockedRead)
    }
    let found = try check(scratch.path("cow"))
    #expect(found.remainingProblemCount == 1)
    #expect(found.findings(in: .bitmap).first?.repair == .available("clear the stray bits"))
    let repaired = try check(scratch.path("cow"), repair: true)
    #expect(repaired.isConsistent)
    #expect(repaired.findings(in: .bitmap).first?.isRepaired == true)
    #expect(try check(scratch.path("cow")).findings.isEmpty)
    _ = try StoreFile(path: FilePath(scratch.path("cow")), access: .unlockedRead)
}

@Test func checkFindsAWrongFileSizeAndRepairFixesItWhenNoDataIsLost() throws {
    let scratch = try Scratch()
    _ = try makeBase(at: scratch.path("base"), byteCount: 1 << 20, seed: 27)
    try createStore(at: scratch.path("cow"), base: scratch.path("base"))
    try writeChunks(store: scratch.path("cow"), flushed: [3])
    let storeHeader = try header(scratch.path("cow"))
    let expected = storeHeader.dataByteOffset + storeHeader.virtualByteCount
    for wrongSize in [expected + 4096, expected - 8192] {
        try resizeFile(scratch.path("cow"), to: wrongSize)
        #expect(try check(scratch.path("cow")).findings(in: .fileSize).count == 1)
        #expect(try check(scratch.path("cow"), repair: true).isConsistent)
        #expect(
            try FileManager.default.attributesOfItem(atPath: scratch.path("cow"))[.size] as? UInt64
                == expected)
    }
    // Cutting into written chunk 3 loses its data: extending would make it read as zeros.
    try resizeFile(scratch.path("cow"), to: storeHeader.dataByteOffset + 3 * 4096 + 100)
    let report = try check(scratch.path("cow"), repair: true)
    #expect(!report.isConsistent)
    guard case .impossible = report.findings(in: .fileSize).first?.repair else {
        Issue.record("a file cut short of written data must not look repairable")
        return
    }
}

@Test func checkReportsADamagedHeaderAndChecksNothingElse() throws {
    let scratch = try Scratch()
    _ = try makeBase(at: scratch.path("base"), byteCount: 1 << 20, seed: 28)
    try createStore(at: scratch.path("cow"), base: scratch.path("base"))
    try patchFile(scratch.path("cow"), at: 24, with: [0xFF])
    let report = try check(scratch.path("cow"))
    #expect(report.remainingProblemCount == 1)
    #expect(report.checkedAreas == [.header])
    #expect(report.header == nil)
}

// MARK: Leaked data

@Test func leakedDataIsANoteAndRepairPunchesIt() throws {
    let scratch = try Scratch()
    let base = try makeBase(at: scratch.path("base"), byteCount: 2 << 20, seed: 29)
    try createStore(at: scratch.path("cow"), base: scratch.path("base"))
    try writeChunks(store: scratch.path("cow"), flushed: [2, 9], unflushed: [4, 5, 6, 100])
    let found = try check(scratch.path("cow"))
    #expect(found.isConsistent, "leaked data is harmless: not a problem")
    #expect(found.leakedChunkCount == 4)
    #expect(found.leakedByteCount == 4 * 4096)
    #expect(found.findings(in: .leakedData).first?.severity == .note)
    #expect(found.writtenChunkCount == 2)

    let repaired = try check(scratch.path("cow"), repair: true)
    #expect(repaired.findings(in: .leakedData).first?.isRepaired == true)
    let after = try check(scratch.path("cow"))
    #expect(after.findings.isEmpty)
    let disk = try VirtualDisk.open(storePath: FilePath(scratch.path("cow")), readOnly: true)
    #expect(try disk.store.allocatedDataByteCount() == 2 * 4096)
    #expect(
        try disk.readBytes(at: 4 * 4096, count: 3 * 4096) == Array(base[(4 * 4096)..<(7 * 4096)]))
    #expect(try disk.readBytes(at: 2 * 4096, count: 4096) == [UInt8](repeating: 0x5A, count: 4096))
}

@Test func leakedDataInLargeChunksCountsEachChunkOnce() throws {
    let scratch = try Scratch()
    _ = try makeBase(at: scratch.path("base"), byteCount: 4 << 20, seed: 30)
    try createStore(at: scratch.path("cow"), base: scratch.path("base"), chunkByteCount: 65536)
    try writeChunks(store: scratch.path("cow"), unflushed: [1, 7], chunkByteCount: 65536)
    let report = try check(scratch.path("cow"))
    #expect(report.leakedChunkCount == 2)
    #expect(report.leakedByteCount <= 2 * 65536)
    #expect(report.leakedByteCount > 0)
}

// MARK: Not a store; never changes without repair

@Test func truncatedOrGarbageFilesCannotBeChecked() throws {
    let scratch = try Scratch()
    _ = try makeBase(at: scratch.path("base"), byteCount: 1 << 20, seed: 31)
    try createStore(at: scratch.path("cow"), base: scratch.path("base"))
    for length: UInt64 in [100_000, 4096, 2000, 0] {
        try resizeFile(scratch.path("cow"), to: length)
        #expect(throws: StoreError.self, "truncated to \(length) bytes") {
            try check(scratch.path("cow"))
        }
    }
    var generator = SplitMix64(seed: 32)
    let garbage = (0..<(1 << 20)).map { _ in UInt8(truncatingIfNeeded: generator.next()) }
    _ = FileManager.default.createFile(atPath: scratch.path("garbage"), contents: Data(garbage))
    #expect(throws: StoreError.self) { try check(scratch.path("garbage")) }
    #expect(throws: StoreError.self) { try check(scratch.path("garbage"), repair: true) }
    #expect(try fileBytes(scratch.path("garbage")) == garbage)
    #expect(throws: StoreError.self) { try check(scratch.path("missing")) }
}

@Test func checkWithoutRepairNeverModifiesTheFile() throws {
    let scratch = try Scratch()
    _ = try makeBase(at: scratch.path("base"), byteCount: (2 << 20) + 4096, seed: 33)
    try createStore(at: scratch.path("cow"), base: scratch.path("base"))
    try writeChunks(store: scratch.path("cow"), flushed: [1], unflushed: [3, 8])
    let bitmapByteOffset = try header(scratch.path("cow")).bitmapByteOffset
    try patchFile(scratch.path("cow"), at: bitmapByteOffset + 600 / 8, with: [0x80])
    try patchFile(scratch.path("base"), at: 0, with: [9, 9, 9])
    let before = try fileBytes(scratch.path("cow"))
    let report = try check(scratch.path("cow"))
    #expect(report.findings.count == 3, "stray bit, leaked data, changed base")
    #expect(try fileBytes(scratch.path("cow")) == before)
}
