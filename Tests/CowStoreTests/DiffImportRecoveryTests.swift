// import-diff interrupted part-way (a test hook stops the applying pass after N records, with
// or without making them durable first) and run again: it finishes without --force, and the
// target equals the disk byte for byte. And a diff file changed between the verifying and the
// applying pass: none of the changed bytes reach the target.

import CowFormat
import CowStore
import Foundation
import SystemPackage
import Testing

private struct Interrupted: Error {}

/// Writes the diff of `store` (since `checkpoint` if given) in `format` to the file `name`.
private func exportDiff(
    _ scratch: Scratch, _ format: StoreDiffExport.Format, store: String = "cow",
    since checkpoint: String? = nil, to name: String
) throws {
    let job = try retryingWhileInUse {
        try StoreDiffExport(storePath: FilePath(scratch.path(store)), sinceCheckpoint: checkpoint)
    }
    defer { job.close() }
    let descriptor = try FileDescriptor.open(
        FilePath(scratch.path(name)), .writeOnly, options: [.create, .truncate],
        permissions: .ownerReadWrite)
    defer { try? descriptor.close() }
    _ = try job.write(format: format, to: descriptor, name: name)
}

private func makeImport(_ scratch: Scratch, _ diff: String, into target: String, force: Bool)
    throws -> DiffImport
{
    try retryingWhileInUse {
        try DiffImport(
            diffPath: scratch.path(diff), targetPath: FilePath(scratch.path(target)), force: force)
    }
}

/// Runs an import that stops after `recordCount` records, durable first when `durable`.
private func interruptedImport(
    _ scratch: Scratch, _ diff: String, into target: String, force: Bool = false,
    after recordCount: UInt64, durable: Bool
) throws {
    let job = try makeImport(scratch, diff, into: target, force: force)
    job.afterRecordApplied = { [unowned job] count in
        guard count == recordCount else { return }
        if durable { try job.syncTarget() }
        throw Interrupted()
    }
    #expect(throws: Interrupted.self) { try job.run() }
}

private func storeDiskBytes(_ path: String) throws -> [UInt8] {
    let disk = try retryingWhileInUse {
        try VirtualDisk.open(storePath: FilePath(path), readOnly: true)
    }
    defer { disk.close() }
    return try disk.readBytes(at: 0, count: Int(disk.byteCount))
}

@Test(arguments: [1, 7, 30] as [UInt64])
func anImportIntoARawImageStoppedPartWayFinishesWhenRunAgainWithoutForce(recordCount: UInt64)
    throws
{
    let scratch = try Scratch()
    let expected = try storeWithRandomChanges(scratch, seed: 40 + recordCount, grow: true)
    try exportDiff(scratch, .native, to: "diff")
    try FileManager.default.copyItem(atPath: scratch.path("base"), toPath: scratch.path("raw"))
    try interruptedImport(scratch, "diff", into: "raw", after: recordCount, durable: false)
    let record = scratch.path(".raw.cowbd-import")
    #expect(FileManager.default.fileExists(atPath: record), "the record outlives the interruption")
    let summary = try makeImport(scratch, "diff", into: "raw", force: false).run()
    #expect(summary.resumed)
    #expect(try fileBytes(scratch.path("raw")) == expected, "after \(recordCount) records")
    #expect(!FileManager.default.fileExists(atPath: record), "a finished import drops its record")
}

@Test func anotherDiffIsRefusedOntoATargetLeftPartlyWrittenByAnInterruptedImport() throws {
    let scratch = try Scratch()
    _ = try storeWithRandomChanges(scratch, seed: 45)
    try exportDiff(scratch, .native, to: "diff")
    try exportDiff(scratch, .rbd, to: "rbd")
    try FileManager.default.copyItem(atPath: scratch.path("base"), toPath: scratch.path("raw"))
    try interruptedImport(scratch, "diff", into: "raw", after: 3, durable: false)
    let partly = try fileBytes(scratch.path("raw"))
    #expect(throws: StoreError.self) {
        try makeImport(scratch, "rbd", into: "raw", force: false).run()
    }
    #expect(try fileBytes(scratch.path("raw")) == partly)
}

/// A store "cow" with a checkpoint "monday" taken over its untouched base, then seeded changes;
/// the incremental diff since monday is written to "inc". Returns the disk's bytes.
private func incrementalDiff(_ scratch: Scratch, seed: UInt64) throws -> [UInt8] {
    _ = try makeBase(at: scratch.path("base"), byteCount: 3 << 20 + 321, seed: seed)
    try createStore(at: scratch.path("cow"), base: scratch.path("base"))
    let disk = try VirtualDisk.open(storePath: FilePath(scratch.path("cow")))
    try disk.store.addCheckpoint(
        Checkpoint(
            name: "monday", id: 77, createdUnixSeconds: 0, diskFingerprint: try disk.fingerprint()))
    var generator = SplitMix64(seed: seed)
    try applyRandomChanges(to: disk, count: 200, &generator)
    try disk.flush()
    let expected = try disk.readBytes(at: 0, count: Int(disk.byteCount))
    disk.close()
    try exportDiff(scratch, .native, since: "monday", to: "inc")
    return expected
}

@Test(arguments: [(1, true), (9, true), (9, false)] as [(UInt64, Bool)])
func anIncrementalImportIntoAStoreStoppedPartWayFinishesWhenRunAgain(
    recordCount: UInt64, durable: Bool
) throws {
    let scratch = try Scratch()
    let expected = try incrementalDiff(scratch, seed: 50 + recordCount)
    try createStore(at: scratch.path("other"), base: scratch.path("base"))
    try interruptedImport(scratch, "inc", into: "other", after: recordCount, durable: durable)
    #expect(try makeImport(scratch, "inc", into: "other", force: false).run().resumed)
    #expect(try storeDiskBytes(scratch.path("other")) == expected, "after \(recordCount) records")
}

@Test func anIncrementalImportIntoARawImageStoppedPartWayFinishesWhenRunAgain() throws {
    let scratch = try Scratch()
    let expected = try incrementalDiff(scratch, seed: 61)
    try FileManager.default.copyItem(atPath: scratch.path("base"), toPath: scratch.path("raw"))
    try interruptedImport(scratch, "inc", into: "raw", after: 5, durable: false)
    _ = try makeImport(scratch, "inc", into: "raw", force: false).run()
    #expect(try fileBytes(scratch.path("raw")) == expected)
}

/// The file offset and length of the first data record's payload in a native or rbd v1 diff.
private func firstDataPayload(_ bytes: [UInt8]) -> Range<Int> {
    func u64(_ at: Int) -> Int {
        Int(bytes[at..<(at + 8)].reversed().reduce(UInt64(0)) { $0 << 8 | UInt64($1) })
    }
    if bytes.starts(with: Array("COWBDDIF".utf8)) {
        var cursor = DiffHeader.byteCount
        while bytes[cursor] != 1 { cursor += DiffRecord.byteCount }
        return (cursor + 32)..<(cursor + 32 + u64(cursor + 16))
    }
    var cursor = 12 + 9  // banner, size record
    while bytes[cursor] != UInt8(ascii: "w") { cursor += 17 }
    return (cursor + 17)..<(cursor + 17 + u64(cursor + 9))
}

@Test(arguments: [StoreDiffExport.Format.native, .rbd])
func aDiffChangedBetweenTheVerifyingAndTheApplyingPassNeverReachesTheTarget(
    format: StoreDiffExport.Format
) throws {
    let scratch = try Scratch()
    _ = try storeWithRandomChanges(scratch, seed: 70)
    try exportDiff(scratch, format, to: "diff")
    try FileManager.default.copyItem(atPath: scratch.path("base"), toPath: scratch.path("raw"))
    let base = try fileBytes(scratch.path("raw"))
    let job = try makeImport(scratch, "diff", into: "raw", force: format == .rbd)
    job.betweenPasses = {
        // Another writer changes 16 bytes of the first data record.
        var bytes = try fileBytes(scratch.path("diff"))
        let payload = firstDataPayload(bytes)
        for index in payload.lowerBound..<min(payload.upperBound, payload.lowerBound + 16) {
            bytes[index] ^= 0xFF
        }
        try Data(bytes).write(to: URL(fileURLWithPath: scratch.path("diff")))
    }
    #expect(throws: StoreError.self) { try job.run() }
    #expect(try fileBytes(scratch.path("raw")) == base, "nothing of the changed diff applied")
}
