// export-diff and import-diff checked byte for byte against the disk: after seeded random
// writes, zeroes and trims, each format is exported and imported onto a copy of the base and
// onto another store over the base; damaged diffs and diffs for another base are refused and
// leave the target unchanged.

import CowFormat
import CowStore
import Foundation
import SystemPackage
import Testing

/// Exports the store "cow" (or `store`) in `format` to the file `name`.
@discardableResult
func export(
    _ scratch: Scratch, _ format: StoreDiffExport.Format, to name: String, store: String = "cow"
) throws -> StoreDiffExport.Summary {
    let job = try StoreDiffExport(storePath: FilePath(scratch.path(store)))
    defer { job.close() }
    let descriptor = try FileDescriptor.open(
        FilePath(scratch.path(name)), .writeOnly, options: [.create, .truncate],
        permissions: .ownerReadWrite)
    defer { try? descriptor.close() }
    return try job.write(format: format, to: descriptor, name: name)
}

private func importDiff(_ scratch: Scratch, _ diff: String, into target: String, force: Bool)
    throws -> DiffImport.Summary
{
    try DiffImport(
        diffPath: scratch.path(diff), targetPath: FilePath(scratch.path(target)), force: force
    ).run()
}

private func storeDiskBytes(_ path: String) throws -> [UInt8] {
    let disk = try VirtualDisk.open(storePath: FilePath(path), readOnly: true)
    defer { disk.close() }
    return try disk.readBytes(at: 0, count: Int(disk.byteCount))
}

@Test(arguments: [1, 2, 3] as [UInt64])
func everyDiffFormatImportsOntoACopyOfTheBaseAndOntoAStoreAsTheDisk(seed: UInt64) throws {
    let scratch = try Scratch()
    let expected = try storeWithRandomChanges(scratch, seed: seed, grow: seed == 2)
    let native = try export(scratch, .native, to: "diff")
    let rbd = try export(scratch, .rbd, to: "rbd")
    #expect(native.dataByteCount == rbd.dataByteCount)
    #expect(native.zeroByteCount == rbd.zeroByteCount)
    for (diff, force) in [("diff", false), ("rbd", true)] {
        try FileManager.default.copyItem(atPath: scratch.path("base"), toPath: scratch.path("raw"))
        let summary = try importDiff(scratch, diff, into: "raw", force: force)
        #expect(summary.dataByteCount == native.dataByteCount, "seed \(seed)")
        #expect(try fileBytes(scratch.path("raw")) == expected, "seed \(seed), \(diff) onto raw")
        try FileManager.default.removeItem(atPath: scratch.path("raw"))
        try createStore(
            at: scratch.path("other"), base: scratch.path("base"),
            virtualByteCount: seed == 2 ? UInt64(4 << 20) : nil)
        _ = try importDiff(scratch, diff, into: "other", force: force)
        #expect(try storeDiskBytes(scratch.path("other")) == expected, "seed \(seed), \(diff)")
        try FileManager.default.removeItem(atPath: scratch.path("other"))
    }
}

@Test func jsonListsTheSameExtentsTheNativeDiffCarries() throws {
    let scratch = try Scratch()
    _ = try storeWithRandomChanges(scratch, seed: 7, grow: false)
    let job = try StoreDiffExport(storePath: FilePath(scratch.path("cow")))
    var extents: [ChangedExtent] = []
    try job.forEachChangedExtent { extents.append($0) }
    job.close()
    let json = try export(scratch, .json, to: "json")
    #expect(json.extentCount == UInt64(extents.count))
    let text = try String(contentsOfFile: scratch.path("json"), encoding: .utf8)
    let parsed = try #require(
        try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [[String: Any]])
    #expect(parsed.count == extents.count)
    for (object, extent) in zip(parsed, extents) {
        #expect(object["offset"] as? UInt64 == extent.byteOffset)
        #expect(object["length"] as? UInt64 == extent.byteCount)
        #expect(object["zero"] as? Bool == extent.isZero)
    }
    for (earlier, later) in zip(extents, extents.dropFirst()) {
        #expect(earlier.byteOffset + earlier.byteCount <= later.byteOffset, "ascending, apart")
    }
}

@Test func damagedDiffsAreRefusedAndLeaveTheTargetUnchanged() throws {
    let scratch = try Scratch()
    _ = try storeWithRandomChanges(scratch, seed: 11, grow: false)
    try export(scratch, .native, to: "diff")
    let good = try fileBytes(scratch.path("diff"))
    try FileManager.default.copyItem(atPath: scratch.path("base"), toPath: scratch.path("raw"))
    let before = try fileBytes(scratch.path("raw"))
    var damaged: [(String, [UInt8])] = [
        ("no trailer", Array(good.dropLast(DiffRecord.byteCount))),
        ("half", Array(good.prefix(good.count / 2))),
        ("header only", Array(good.prefix(DiffHeader.byteCount))),
        ("trailing byte", good + [0]),
    ]
    for byteOffset in [3, 20, DiffHeader.byteCount + 9, DiffHeader.byteCount + 40, good.count - 2] {
        var bytes = good
        bytes[byteOffset] ^= 0x5A
        damaged.append(("byte \(byteOffset) flipped", bytes))
    }
    for (name, bytes) in damaged {
        try Data(bytes).write(to: URL(fileURLWithPath: scratch.path("bad")))
        #expect(throws: (any Error).self, "\(name)") {
            _ = try importDiff(scratch, "bad", into: "raw", force: true)
        }
        #expect(try fileBytes(scratch.path("raw")) == before, "\(name): target unchanged")
    }
}

@Test func rbdV2ExtentOfAlmostTwoToTheSixtyFourBytesIsRefused() throws {
    // Its record length (16 + extent length) would overflow: the import must refuse the
    // record, not trap (found by the diff-rbd fuzz target).
    let scratch = try Scratch()
    var bytes = RBDDiff.bannerV2 + [RBDDiff.size]
    for value: UInt64 in [8, 1 << 20] { withUnsafeBytes(of: value.littleEndian) { bytes += $0 } }
    bytes.append(RBDDiff.write)
    for value: UInt64 in [15, 0, .max] { withUnsafeBytes(of: value.littleEndian) { bytes += $0 } }
    bytes.append(RBDDiff.end)
    try Data(bytes).write(to: URL(fileURLWithPath: scratch.path("rbd")))
    try Data(count: 1 << 20).write(to: URL(fileURLWithPath: scratch.path("raw")))
    #expect(throws: StoreError.self) {
        _ = try importDiff(scratch, "rbd", into: "raw", force: true)
    }
}

@Test func aDiffForAnotherBaseIsRefusedUnlessForced() throws {
    let scratch = try Scratch()
    let expected = try storeWithRandomChanges(scratch, seed: 5, grow: false)
    try export(scratch, .native, to: "diff")
    _ = try makeBase(at: scratch.path("raw"), byteCount: 3 << 20 + 321, seed: 99)
    let before = try fileBytes(scratch.path("raw"))
    #expect(throws: (any Error).self) {
        _ = try importDiff(scratch, "diff", into: "raw", force: false)
    }
    #expect(try fileBytes(scratch.path("raw")) == before)
    // Forced onto an image that differs only where the diff writes: the disk all the same.
    try FileManager.default.removeItem(atPath: scratch.path("raw"))
    try FileManager.default.copyItem(atPath: scratch.path("base"), toPath: scratch.path("raw"))
    let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: scratch.path("raw")))
    try handle.write(contentsOf: Data([0xEE]))
    try handle.close()
    #expect(throws: (any Error).self) {
        _ = try importDiff(scratch, "diff", into: "raw", force: false)
    }
    _ = try importDiff(scratch, "diff", into: "raw", force: true)
    var patched = try fileBytes(scratch.path("raw"))
    patched[0] = expected[0]
    #expect(patched == expected)
}

@Test func theDiffOfOneChangedChunkIsSmall() throws {
    let scratch = try Scratch()
    _ = try makeBase(at: scratch.path("base"), byteCount: 64 << 20, seed: 3)
    try createStore(at: scratch.path("cow"), base: scratch.path("base"))
    let disk = try VirtualDisk.open(storePath: FilePath(scratch.path("cow")))
    try disk.writeBytes([UInt8](repeating: 7, count: 4096), at: 40960, scratch: disk.makeScratch())
    try disk.flush()
    disk.close()
    let summary = try export(scratch, .native, to: "diff")
    #expect(summary.extentCount == 1)
    #expect(summary.streamByteCount < 2 * 4096 + 256)
    #expect(summary.streamByteCount == UInt64(try fileBytes(scratch.path("diff")).count))
}

@Test func exportIsRefusedWhileTheStoreIsOpenForWriting() throws {
    let scratch = try Scratch()
    _ = try makeBase(at: scratch.path("base"), byteCount: 1 << 20, seed: 4)
    try createStore(at: scratch.path("cow"), base: scratch.path("base"))
    let disk = try VirtualDisk.open(storePath: FilePath(scratch.path("cow")))
    defer { disk.close() }
    #expect(throws: (any Error).self) {
        _ = try StoreDiffExport(storePath: FilePath(scratch.path("cow")))
    }
}
