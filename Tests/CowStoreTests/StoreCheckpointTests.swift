// Checkpoints checked against a model: state A, a checkpoint, seeded changes to state B; the
// incremental diff holds only chunks the second round touched, and applied onto an image of A
// gives B byte for byte, also from a store copied mid-session as a crash would leave it.

import CowFormat
import CowStore
import Foundation
import SystemPackage
import Testing

private func addCheckpoint(_ scratch: Scratch, _ name: String, store: String = "cow") throws {
    let disk = try retryingWhileInUse {
        try VirtualDisk.open(storePath: FilePath(scratch.path(store)))
    }
    defer { disk.close() }
    try disk.store.addCheckpoint(
        Checkpoint(
            name: name, id: UInt64.random(in: 1...UInt64.max), createdUnixSeconds: 0,
            diskFingerprint: try disk.fingerprint()))
}

/// Writes `bytes` as a raw image file.
private func writeImage(_ bytes: [UInt8], to path: String) throws {
    try Data(bytes).write(to: URL(fileURLWithPath: path))
}

/// The incremental diff since `name` of `store`, written to `diff`; its extents.
private func exportSince(_ scratch: Scratch, _ name: String, store: String, to diff: String)
    throws -> [ChangedExtent]
{
    let job = try retryingWhileInUse {
        try StoreDiffExport(storePath: FilePath(scratch.path(store)), sinceCheckpoint: name)
    }
    defer { job.close() }
    var extents: [ChangedExtent] = []
    try job.forEachChangedExtent { extents.append($0) }
    let descriptor = try FileDescriptor.open(
        FilePath(scratch.path(diff)), .writeOnly, options: [.create, .truncate],
        permissions: .ownerReadWrite)
    defer { try? descriptor.close() }
    _ = try job.write(format: .native, to: descriptor, name: diff)
    return extents
}

private func applyDiff(_ scratch: Scratch, _ diff: String, onto target: String) throws {
    _ = try DiffImport(
        diffPath: scratch.path(diff), targetPath: FilePath(scratch.path(target)), force: false
    ).run()
}

@Test(arguments: [11, 12, 13] as [UInt64])
func incrementalDiffHoldsOnlyLaterChangesAndAppliesOntoTheCheckpointedDisk(seed: UInt64) throws {
    let scratch = try Scratch()
    let stateA = try storeWithRandomChanges(scratch, seed: seed)
    try writeImage(stateA, to: scratch.path("a.img"))
    try addCheckpoint(scratch, "a")

    let disk = try retryingWhileInUse {
        try VirtualDisk.open(storePath: FilePath(scratch.path("cow")))
    }
    var generator = SplitMix64(seed: seed &+ 100)
    let touched = try applyRandomChanges(to: disk, count: 40, &generator)
    try disk.flush()
    let stateB = try disk.readBytes(at: 0, count: Int(disk.byteCount))
    disk.close()

    let extents = try exportSince(scratch, "a", store: "cow", to: "b.diff")
    let chunk: UInt64 = 4096
    let touchedChunks = Set(
        touched.flatMap { ($0.lowerBound / chunk)...(($0.upperBound - 1) / chunk) })
    for extent in extents {
        for chunkIndex
            in (extent.byteOffset / chunk)...((extent.byteOffset + extent.byteCount - 1)
            / chunk)
        {
            #expect(touchedChunks.contains(chunkIndex), "seed \(seed): chunk \(chunkIndex)")
        }
    }
    try applyDiff(scratch, "b.diff", onto: "a.img")
    #expect(try fileBytes(scratch.path("a.img")) == stateB, "seed \(seed)")
    #expect(
        try StoreCheck.run(storePath: FilePath(scratch.path("cow")), repair: false).isConsistent)
}

@Test func aStoreLeftByACrashCountsEveryHeldChunkAsChanged() throws {
    let scratch = try Scratch()
    let stateA = try storeWithRandomChanges(scratch, seed: 21)
    try writeImage(stateA, to: scratch.path("a.img"))
    try addCheckpoint(scratch, "a")
    let disk = try retryingWhileInUse {
        try VirtualDisk.open(storePath: FilePath(scratch.path("cow")))
    }
    var generator = SplitMix64(seed: 22)
    try applyRandomChanges(to: disk, count: 20, &generator)
    try disk.flush()
    let stateB = try disk.readBytes(at: 0, count: Int(disk.byteCount))
    // A copy while the writer has the store open: what a crash now would leave.
    try FileManager.default.copyItem(atPath: scratch.path("cow"), toPath: scratch.path("crashed"))
    disk.close()

    let cleanExtents = try exportSince(scratch, "a", store: "cow", to: "clean.diff")
    let crashExtents = try exportSince(scratch, "a", store: "crashed", to: "crash.diff")
    let cleanBytes = cleanExtents.reduce(0) { $0 + $1.byteCount }
    let crashBytes = crashExtents.reduce(0) { $0 + $1.byteCount }
    #expect(crashBytes > cleanBytes, "the crashed store's diff covers every held chunk")
    try applyDiff(scratch, "crash.diff", onto: "a.img")
    #expect(try fileBytes(scratch.path("a.img")) == stateB)

    // Reopening for writing keeps the widened bitmap: the next clean diff is still complete.
    let reopened = try retryingWhileInUse {
        try VirtualDisk.open(storePath: FilePath(scratch.path("crashed")))
    }
    reopened.close()
    let afterExtents = try exportSince(scratch, "a", store: "crashed", to: "after.diff")
    #expect(afterExtents == crashExtents)
    let table = try StoreFile(path: FilePath(scratch.path("crashed")), access: .unlockedRead)
    #expect(table.checkpointTable?.isOpen == false)
    table.close()
}

@Test func checkpointsPersistAndTheLastDeletionRestoresThePlainStore() throws {
    let scratch = try Scratch()
    _ = try storeWithRandomChanges(scratch, seed: 31)
    let plainSize =
        try FileManager.default.attributesOfItem(atPath: scratch.path("cow"))[.size]
        as? Int
    for index in 0..<CheckpointTable.slotCount { try addCheckpoint(scratch, "c\(index)") }
    #expect(throws: StoreError.self) { try addCheckpoint(scratch, "one-too-many") }
    #expect(throws: StoreError.self) { try addCheckpoint(scratch, "c0") }

    let disk = try retryingWhileInUse {
        try VirtualDisk.open(storePath: FilePath(scratch.path("cow")))
    }
    try disk.writeBytes([UInt8](repeating: 7, count: 8192), at: 4096, scratch: disk.makeScratch())
    disk.close()
    let store = try retryingWhileInUse {
        try StoreFile(path: FilePath(scratch.path("cow")), access: .exclusiveWrite)
    }
    let names = store.checkpointTable?.checkpoints.map(\.checkpoint.name)
    #expect(names?.count == CheckpointTable.slotCount)
    for (slot, _) in store.checkpointTable?.checkpoints ?? [] {
        #expect(store.changedChunkCount(slot: slot) == 2)
    }
    for index in 0..<CheckpointTable.slotCount { try store.deleteCheckpoint(named: "c\(index)") }
    #expect(throws: StoreError.self) { try store.deleteCheckpoint(named: "c0") }
    store.close()
    let size = try FileManager.default.attributesOfItem(atPath: scratch.path("cow"))[.size] as? Int
    #expect(size == plainSize)
    let report = try StoreCheck.run(storePath: FilePath(scratch.path("cow")), repair: false)
    #expect(report.isConsistent && report.findings.isEmpty)
}

@Test func aDamagedCheckpointTableIsAProblemThatRepairDrops() throws {
    let scratch = try Scratch()
    let expected = try storeWithRandomChanges(scratch, seed: 41)
    try addCheckpoint(scratch, "a")
    let store = try StoreFile(path: FilePath(scratch.path("cow")), access: .unlockedRead)
    let tableOffset = store.header.checkpointAreaByteOffset
    store.close()
    // Both copies damaged: the checkpoints are lost, the disk is not. The byte is inverted, not
    // overwritten: byte 100 lies in the checkpoint's random id and may already hold any value.
    let handle = try FileHandle(forUpdating: URL(fileURLWithPath: scratch.path("cow")))
    for copy in 0..<2 {
        let byteOffset = tableOffset + UInt64(copy * CheckpointTable.byteCount) + 100
        try handle.seek(toOffset: byteOffset)
        let old = try handle.read(upToCount: 1) ?? Data([0])
        try handle.seek(toOffset: byteOffset)
        try handle.write(contentsOf: Data([~old[old.startIndex]]))
    }
    try handle.close()
    #expect(throws: StoreError.self) {
        try retryingWhileInUse { try VirtualDisk.open(storePath: FilePath(scratch.path("cow"))) }
    }
    let found = try retryingWhileInUse {
        try StoreCheck.run(storePath: FilePath(scratch.path("cow")), repair: false)
    }
    #expect(!found.isConsistent && !found.findings(in: .checkpoints).isEmpty)
    let repaired = try StoreCheck.run(storePath: FilePath(scratch.path("cow")), repair: true)
    #expect(repaired.isConsistent)
    let after = try StoreCheck.run(storePath: FilePath(scratch.path("cow")), repair: false)
    #expect(after.isConsistent && after.findings.isEmpty)
    let disk = try VirtualDisk.open(storePath: FilePath(scratch.path("cow")), readOnly: true)
    #expect(try disk.readBytes(at: 0, count: Int(disk.byteCount)) == expected)
    disk.close()
}
