// Copy-on-read and hydration against a model (the base's bytes plus the writes): hydrated
// chunks read the same, never reach a diff or a merge, let the disk read with its base gone,
// and survive an interrupted hydrate that a rerun completes. A store never hydrated keeps the
// header an older cowbd reads.

import CowFormat
import CowStore
import Foundation
import SystemPackage
import Testing

/// Seeded writes of up to 20,000 bytes applied to `disk` and to `model`.
private func writeRandomly(
    _ disk: VirtualDisk, _ model: inout [UInt8], count: Int, _ generator: inout SplitMix64
) throws {
    let scratch = disk.makeScratch()
    for _ in 0..<count {
        let offset = generator.next() % (disk.byteCount - 1)
        let length = Int(min(disk.byteCount - offset, 1 + generator.next() % 20_000))
        let bytes = randomBytes(length, &generator)
        try disk.writeBytes(bytes, at: offset, scratch: scratch)
        model.replaceSubrange(Int(offset)..<(Int(offset) + length), with: bytes)
    }
}

/// A store "cow" over a fresh base "base" (grown past it with `grow`); returns the model.
private func makeStore(_ scratch: Scratch, seed: UInt64, grow: Bool = false) throws -> [UInt8] {
    var model = try makeBase(at: scratch.path("base"), byteCount: 3 << 20 + 321, seed: seed)
    try createStore(
        at: scratch.path("cow"), base: scratch.path("base"),
        virtualByteCount: grow ? UInt64(4 << 20) : nil)
    if grow { model += [UInt8](repeating: 0, count: (4 << 20) - model.count) }
    return model
}

private func diskBytes(_ scratch: Scratch, store: String = "cow") throws -> [UInt8] {
    let disk = try VirtualDisk.open(storePath: FilePath(scratch.path(store)), readOnly: true)
    defer { disk.close() }
    return try disk.readBytes(at: 0, count: Int(disk.byteCount))
}

@Test(arguments: [1, 2] as [UInt64])
func copyOnReadThenExportDiffHoldsOnlyTheClientsWrites(seed: UInt64) throws {
    let scratch = try Scratch()
    var model = try makeStore(scratch, seed: seed, grow: seed == 2)
    try FileManager.default.copyItem(atPath: scratch.path("cow"), toPath: scratch.path("plain"))
    // The same writes into two stores; only "cow" keeps what it reads, between the writes.
    var generators = (SplitMix64(seed: seed), SplitMix64(seed: seed))
    var plainModel = model
    let disk = try VirtualDisk.open(storePath: FilePath(scratch.path("cow")))
    try disk.enableCopyOnRead()
    let plain = try VirtualDisk.open(storePath: FilePath(scratch.path("plain")))
    try writeRandomly(disk, &model, count: 40, &generators.0)
    try writeRandomly(plain, &plainModel, count: 40, &generators.1)
    #expect(try disk.readBytes(at: 0, count: Int(disk.byteCount)) == model)
    #expect(disk.store.hydratedChunkCount > 0)
    // These writes land in hydrated chunks, which turn written.
    try writeRandomly(disk, &model, count: 40, &generators.0)
    try writeRandomly(plain, &plainModel, count: 40, &generators.1)
    #expect(try disk.readBytes(at: 0, count: Int(disk.byteCount)) == model)
    #expect(disk.store.writtenChunkCount == plain.store.writtenChunkCount)
    try disk.flush()
    try plain.flush()
    disk.close()
    plain.close()
    #expect(try diskBytes(scratch) == model)
    try export(scratch, .native, to: "diff")
    try export(scratch, .native, to: "plain-diff", store: "plain")
    #expect(try fileBytes(scratch.path("diff")) == fileBytes(scratch.path("plain-diff")))
    let merge = try StoreMerge(
        storePath: FilePath(scratch.path("cow")),
        destination: .output(FilePath(scratch.path("flat")), overwrite: false))
    _ = try merge.run()
    #expect(try fileBytes(scratch.path("flat")) == model)
}

@Test func mergeIntoACopyOfTheBaseGivesTheDiskAndForgetsHydratedChunks() throws {
    let scratch = try Scratch()
    var model = try makeStore(scratch, seed: 5)
    var generator = SplitMix64(seed: 5)
    let disk = try VirtualDisk.open(storePath: FilePath(scratch.path("cow")))
    try disk.enableCopyOnRead()
    _ = try disk.readBytes(at: 0, count: Int(disk.byteCount))
    try writeRandomly(disk, &model, count: 30, &generator)
    try disk.flush()
    disk.close()
    try FileManager.default.copyItem(atPath: scratch.path("base"), toPath: scratch.path("target"))
    _ = try StoreMerge(
        storePath: FilePath(scratch.path("cow")),
        destination: .into(FilePath(scratch.path("target")))
    ).run()
    #expect(try fileBytes(scratch.path("target")) == model)
    #expect(try diskBytes(scratch) == model)
    let store = try StoreFile(path: FilePath(scratch.path("cow")), access: .unlockedRead)
    defer { store.close() }
    #expect(store.hydratedChunkCount == 0)
    #expect(store.writtenChunkCount == 0)
}

@Test(arguments: [false, true])
func aHydratedStoreReadsRightWithItsBaseGone(grow: Bool) throws {
    let scratch = try Scratch()
    var model = try makeStore(scratch, seed: 11, grow: grow)
    var generator = SplitMix64(seed: 11)
    let disk = try VirtualDisk.open(storePath: FilePath(scratch.path("cow")))
    try writeRandomly(disk, &model, count: 20, &generator)
    let summary = try StoreHydrate.run(disk)
    #expect(summary.isSelfContained)
    #expect(summary.chunksHydrated + summary.chunksWritten >= summary.chunksCopied)
    try writeRandomly(disk, &model, count: 20, &generator)
    try disk.flush()
    disk.close()
    try FileManager.default.moveItem(atPath: scratch.path("base"), toPath: scratch.path("moved"))
    #expect(try diskBytes(scratch) == model)
    // Writable too: a write into any chunk finds it in the store, never in the base.
    let reopened = try VirtualDisk.open(storePath: FilePath(scratch.path("cow")))
    try writeRandomly(reopened, &model, count: 20, &generator)
    #expect(try reopened.readBytes(at: 0, count: Int(reopened.byteCount)) == model)
    try reopened.flush()
    reopened.close()
    try FileManager.default.removeItem(atPath: scratch.path("moved"))
    #expect(try diskBytes(scratch) == model)
    let report = try StoreCheck.run(storePath: FilePath(scratch.path("cow")), repair: true)
    #expect(report.leakedChunkCount == 0, "hydrated chunks are not leaked")
    #expect(try diskBytes(scratch) == model)
}

@Test func hydrateInterruptedByAFailedWriteResumesAndCompletes() throws {
    let scratch = try Scratch()
    let model = try makeStore(scratch, seed: 21)
    let (disk, io) = try openDiskWithTestIO(at: scratch.path("cow"))
    let dataByteOffset = disk.store.header.dataByteOffset
    // The data region's writes fail from 2 MiB on; bitmap pages still reach the file.
    let failing = (dataByteOffset + (2 << 20))..<(dataByteOffset + disk.byteCount)
    io.inject { operation, byteOffset in
        operation == .write && failing.contains(byteOffset) ? .ioError : nil
    }
    #expect(throws: StoreError.self) {
        try StoreHydrate.run(disk, flushByteCount: 256 << 10)
    }
    disk.close()
    let rerun = try VirtualDisk.open(storePath: FilePath(scratch.path("cow")))
    let kept = rerun.store.hydratedChunkCount
    #expect(kept > 0, "flushed chunks survive the failure")
    let summary = try StoreHydrate.run(rerun)
    #expect(summary.chunksCopied + kept == rerun.store.header.chunkCount, "the rerun continues")
    #expect(summary.isSelfContained)
    rerun.close()
    try FileManager.default.removeItem(atPath: scratch.path("base"))
    #expect(try diskBytes(scratch) == model)
}

@Test func aStoreNeverHydratedKeepsTheOldFeatureBits() throws {
    let scratch = try Scratch()
    var model = try makeStore(scratch, seed: 31)
    var generator = SplitMix64(seed: 31)
    let disk = try VirtualDisk.open(storePath: FilePath(scratch.path("cow")))
    try disk.enableCopyOnRead()
    try writeRandomly(disk, &model, count: 10, &generator)
    // No read covers a whole chunk the store lacks.
    #expect(try disk.readBytes(at: 10, count: 100) == Array(model[10..<110]))
    try disk.flush()
    disk.close()
    var header = try fileBytes(scratch.path("cow"))[0..<StoreHeader.byteCount]
    #expect(header.loadLittleEndianUInt32(at: 8) == 1, "version")
    #expect(header.loadLittleEndianUInt32(at: 20) == 0, "incompatible features")
    let reopened = try VirtualDisk.open(storePath: FilePath(scratch.path("cow")))
    try reopened.enableCopyOnRead()
    _ = try reopened.readBytes(at: 0, count: 8192)
    try reopened.flush()
    reopened.close()
    header = try fileBytes(scratch.path("cow"))[0..<StoreHeader.byteCount]
    #expect(header.loadLittleEndianUInt32(at: 8) == 1, "version")
    #expect(header.loadLittleEndianUInt32(at: 20) == StoreHeader.hydrationFeature)
    #expect(try diskBytes(scratch) == model)
}

@Test func aWriteToAHydratedChunkMakesItsWrittenBitDurableBeforeItsBytes() throws {
    let scratch = try Scratch()
    _ = try makeStore(scratch, seed: 41)
    let (disk, io) = try openDiskWithTestIO(at: scratch.path("cow"))
    defer { disk.close() }
    try disk.enableCopyOnRead()
    _ = try disk.readBytes(at: 0, count: 4096)
    try disk.flush()
    let before = io.events.count
    try disk.writeBytes([1, 2, 3], at: 100, scratch: disk.makeScratch())
    let events = Array(io.events[before...])
    let dataWrite = try #require(
        events.firstIndex {
            if case .write(let byteOffset, _) = $0 {
                return byteOffset == disk.store.header.dataByteOffset + 100
            }
            return false
        })
    let bitmapWrite = try #require(
        events.firstIndex {
            if case .write(let byteOffset, let bytes) = $0 {
                return byteOffset == disk.store.header.bitmapByteOffset && bytes[0] & 1 == 1
            }
            return false
        })
    #expect(bitmapWrite < dataWrite)
    #expect(events[bitmapWrite..<dataWrite].contains(.synchronizeData))
}

extension ArraySlice<UInt8> {
    fileprivate func loadLittleEndianUInt32(at byteOffset: Int) -> UInt32 {
        (0..<4).reduce(UInt32(0)) { value, index in
            value | UInt32(self[startIndex + byteOffset + index]) << (8 * index)
        }
    }
}

/// The chunks `export-diff --since NAME` would ship, as (byte offset, byte count) pairs.
private func changedSince(_ scratch: Scratch, _ name: String) throws -> [UInt64] {
    let job = try StoreDiffExport(
        storePath: FilePath(scratch.path("cow")), sinceCheckpoint: name)
    defer { job.close() }
    var extents: [UInt64] = []
    try job.forEachChangedExtent { extents += [$0.byteOffset, $0.byteCount] }
    return extents
}

private func addCheckpoint(_ disk: VirtualDisk, _ name: String, id: UInt64) throws {
    try disk.store.addCheckpoint(
        Checkpoint(
            name: name, id: id, createdUnixSeconds: 0,
            diskFingerprint: BaseFingerprint(low: 0, high: 0)))
}

/// Checkpoints before and after hydration: hydrated chunks are not changes, so a diff since a
/// checkpoint holds only the writes; the hydration bitmap survives the checkpoint area coming
/// and going (the last checkpoint deleted), and `check` finds nothing wrong.
@Test func checkpointsAndHydrationWorkTogetherAndDiffsSinceHoldOnlyWrites() throws {
    let scratch = try Scratch()
    var model = try makeStore(scratch, seed: 51)
    var disk = try VirtualDisk.open(storePath: FilePath(scratch.path("cow")))
    try addCheckpoint(disk, "before", id: 1)
    try disk.enableCopyOnRead()
    #expect(try disk.readBytes(at: 0, count: 1 << 20) == Array(model[..<(1 << 20)]))
    let written = [UInt8](repeating: 0xE7, count: 4096)
    try disk.writeBytes(written, at: 40960, scratch: disk.makeScratch())
    model.replaceSubrange(40960..<(40960 + 4096), with: written)
    try disk.flush()
    let hydratedAfterReads = disk.store.hydratedChunkCount
    #expect(hydratedAfterReads > 0)
    disk.close()
    #expect(try changedSince(scratch, "before") == [40960, 4096])
    disk = try VirtualDisk.open(storePath: FilePath(scratch.path("cow")))
    _ = try StoreHydrate.run(disk)
    #expect(disk.store.isSelfContained)
    disk.close()
    #expect(try changedSince(scratch, "before") == [40960, 4096], "after hydrate")

    disk = try VirtualDisk.open(storePath: FilePath(scratch.path("cow")))
    try addCheckpoint(disk, "after", id: 2)
    try disk.writeBytes(written, at: 2 << 20, scratch: disk.makeScratch())
    model.replaceSubrange((2 << 20)..<((2 << 20) + 4096), with: written)
    try disk.flush()
    disk.close()
    #expect(try changedSince(scratch, "after") == [2 << 20, 4096])
    #expect(try changedSince(scratch, "before") == [40960, 4096, 2 << 20, 4096])
    #expect(
        try StoreCheck.run(storePath: FilePath(scratch.path("cow")), repair: false).findings.isEmpty
    )

    disk = try VirtualDisk.open(storePath: FilePath(scratch.path("cow")))
    let hydrated = disk.store.hydratedChunkCount
    try disk.store.deleteCheckpoint(named: "before")
    try disk.store.deleteCheckpoint(named: "after")
    disk.close()
    disk = try VirtualDisk.open(storePath: FilePath(scratch.path("cow")))
    #expect(disk.store.hydratedChunkCount == hydrated)
    #expect(disk.store.checkpointTable == nil)
    disk.close()
    let report = try StoreCheck.run(storePath: FilePath(scratch.path("cow")), repair: false)
    #expect(report.findings.isEmpty, "\(report.findings.map(\.message))")
    #expect(try diskBytes(scratch) == model)
}
