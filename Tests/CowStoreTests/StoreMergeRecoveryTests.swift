// A merge that cannot finish is refused before it records itself (the store stays servable),
// and `merge --abort` takes an interrupted merge back.

import CowFormat
import CowStore
import Foundation
import SystemPackage
import Testing

/// A 17 TiB disk over a 1 MiB base on ext4 (whose files end at 16 TiB), the store on tmpfs.
@Test(arguments: [false, true])
func aMergeIntoATargetThatCannotGrowWritesNoRecordAndTheStoreStillServes(inPlace: Bool) throws {
    let ext4 = try Scratch(onDisk: true)
    let memory = try Scratch()
    let base = try makeBase(at: ext4.path("base"), byteCount: 1 << 20, seed: 91)
    let virtualByteCount: UInt64 = 17 << 40
    try createStore(
        at: memory.path("cow"), base: ext4.path("base"), chunkByteCount: 1 << 20,
        virtualByteCount: virtualByteCount)
    let written = [UInt8](repeating: 0x5A, count: 8192)
    do {
        let disk = try VirtualDisk.open(storePath: FilePath(memory.path("cow")))
        let scratch = disk.makeScratch()
        try disk.writeBytes(written, at: 4096, scratch: scratch)
        try disk.writeBytes(written, at: virtualByteCount - 8192, scratch: scratch)
        try disk.flush()
        disk.close()
    }
    try FileManager.default.copyItem(atPath: ext4.path("base"), toPath: ext4.path("target"))
    #expect(throws: StoreError.self) {
        try StoreMerge(
            storePath: FilePath(memory.path("cow")),
            destination: inPlace ? .inPlace : .into(FilePath(ext4.path("target")))
        ).run()
    }
    let disk = try VirtualDisk.open(storePath: FilePath(memory.path("cow")))
    defer { disk.close() }
    #expect(disk.store.header.merge == nil)
    #expect(try disk.readBytes(at: 4096, count: 8192) == written)
    #expect(try disk.readBytes(at: virtualByteCount - 8192, count: 8192) == written)
    #expect(try fileBytes(ext4.path("target")) == base)
    #expect(try fileBytes(ext4.path("base")) == base)
}

/// Leaves the store "cow" as a merge interrupted after it recorded itself would: the header
/// holds the record (state 1 of docs/FORMAT.md, "Merge"). The caller writes into the target
/// what the merge had copied.
private func recordMerge(_ scratch: Scratch, into target: String, inPlace: Bool) throws {
    let path = scratch.path("cow")
    var bytes = try fileBytes(path)
    var header = try Array(bytes[..<4096]).withUnsafeBytes { try StoreHeader(parsing: $0) }
    header.setMerge(
        try MergeRecord(
            flags: inPlace ? MergeRecord.inPlaceFlag : 0, targetByteCount: header.virtualByteCount,
            targetFingerprint: BaseFingerprint(low: 1, high: 2), targetPath: target))
    bytes.replaceSubrange(0..<4096, with: header.encoded())
    let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: path))
    try handle.write(contentsOf: Data(bytes[0..<4096]))
    try handle.close()
    #expect(throws: StoreError.self) { try VirtualDisk.open(storePath: FilePath(path)) }
}

private func diskBytes(_ scratch: Scratch) throws -> [UInt8] {
    let disk = try VirtualDisk.open(storePath: FilePath(scratch.path("cow")))
    defer { disk.close() }
    #expect(disk.store.header.merge == nil)
    return try disk.readBytes(at: 0, count: Int(disk.byteCount))
}

@Test func abortAfterAnInterruptedMergeIntoServesTheSameDiskAgain() throws {
    let scratch = try Scratch()
    let expected = try storeWithRandomChanges(scratch, seed: 92, grow: true)
    let base = try fileBytes(scratch.path("base"))
    // The merge had copied the first half of the disk into the target, and grown it.
    var target = base + [UInt8](repeating: 0, count: expected.count - base.count)
    target.replaceSubrange(0..<(expected.count / 2), with: expected[0..<(expected.count / 2)])
    try Data(target).write(to: URL(fileURLWithPath: scratch.path("target")))
    try recordMerge(scratch, into: scratch.path("target"), inPlace: false)
    let summary = try StoreMerge.abort(storePath: FilePath(scratch.path("cow")), force: false)
    #expect(!summary.wasInPlace)
    #expect(try diskBytes(scratch) == expected)
    #expect(try fileBytes(scratch.path("base")) == base)
    #expect(throws: StoreError.self, "nothing left to abort") {
        try StoreMerge.abort(storePath: FilePath(scratch.path("cow")), force: false)
    }
}

@Test func abortOfAnInPlaceMergeNeedsForceAndThenServesTheSameDiskOverTheChangedBase() throws {
    let scratch = try Scratch()
    let expected = try storeWithRandomChanges(scratch, seed: 93, grow: true)
    // The merge had copied the first half of the disk into the base, and grown it.
    var base = try fileBytes(scratch.path("base"))
    base += [UInt8](repeating: 0, count: expected.count - base.count)
    base.replaceSubrange(0..<(expected.count / 2), with: expected[0..<(expected.count / 2)])
    try Data(base).write(to: URL(fileURLWithPath: scratch.path("base")))
    try recordMerge(scratch, into: scratch.path("base"), inPlace: true)
    #expect(throws: StoreError.self) {
        try StoreMerge.abort(storePath: FilePath(scratch.path("cow")), force: false)
    }
    #expect(throws: StoreError.self, "still recorded") {
        try VirtualDisk.open(storePath: FilePath(scratch.path("cow")))
    }
    let summary = try StoreMerge.abort(storePath: FilePath(scratch.path("cow")), force: true)
    #expect(summary.wasInPlace)
    #expect(try diskBytes(scratch) == expected)
}

@Test func abortIsRefusedOnceTheMergeHasEmptiedTheStore() throws {
    let scratch = try Scratch()
    _ = try makeBase(at: scratch.path("base"), byteCount: 1 << 20, seed: 94)
    try createStore(at: scratch.path("cow"), base: scratch.path("base"))
    try FileManager.default.copyItem(atPath: scratch.path("base"), toPath: scratch.path("target"))
    try recordMerge(scratch, into: scratch.path("target"), inPlace: false)
    #expect(throws: StoreError.self) {
        try StoreMerge.abort(storePath: FilePath(scratch.path("cow")), force: true)
    }
    #expect(throws: StoreError.self, "the record stays: the merge can only be finished") {
        try VirtualDisk.open(storePath: FilePath(scratch.path("cow")))
    }
}

/// A merge --into killed after its last step (the store emptied and bound to the target) but
/// before it exited: the same command again finds the work done and changes nothing, rather
/// than meet the shared lock it holds itself on the target, now its base.
@Test func aMergeIntoRunAgainAfterItFinishedSaysItIsDoneAndChangesNothing() throws {
    let scratch = try Scratch()
    let expected = try storeWithRandomChanges(scratch, seed: 95)
    try FileManager.default.copyItem(atPath: scratch.path("base"), toPath: scratch.path("target"))
    let destination = StoreMerge.Destination.into(FilePath(scratch.path("target")))
    let first = try StoreMerge(storePath: FilePath(scratch.path("cow")), destination: destination)
        .run()
    #expect(!first.alreadyDone)
    let files = try fileDigests([scratch.path("cow"), scratch.path("target")])
    let again: StoreMerge.Summary
    do {
        again = try StoreMerge(
            storePath: FilePath(scratch.path("cow")), destination: destination
        ).run()
    } catch {
        Issue.record("the rerun failed: \(error)")
        return
    }
    #expect(again.alreadyDone)
    #expect(again.dataByteCount == 0)
    #expect(try fileDigests([scratch.path("cow"), scratch.path("target")]) == files)
    #expect(try diskBytes(scratch) == expected)
}
