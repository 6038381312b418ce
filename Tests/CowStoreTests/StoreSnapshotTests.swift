// `snapshot` stopped after each of its durable steps (as a kill there leaves the files), then
// run again: COW always opens and reads the same bytes, and the rerun finishes the snapshot.

import CowFormat
import CowStore
import Foundation
import SystemPackage
import Testing

/// What stopping the run after a step throws.
struct StoppedForTest: Error {}

/// A chain base <- lower.cow <- cow, each with changes; returns the disk's bytes.
private func storeOverAStore(_ scratch: Scratch, seed: UInt64) throws -> [UInt8] {
    let base = try makeBase(at: scratch.path("base.img"), byteCount: 1 << 20, seed: seed)
    var generator = SplitMix64(seed: seed)
    var model = DiskModel(base: base, virtualByteCount: 1 << 20)
    try createLayer(at: scratch.path("lower.cow"), over: scratch.path("base.img"))
    let lower = try VirtualDisk.open(storePath: FilePath(scratch.path("lower.cow")))
    try applyModelledChanges(to: lower, model: &model, count: 20, &generator)
    lower.close()
    try createLayer(at: scratch.path("cow"), over: scratch.path("lower.cow"))
    let disk = try VirtualDisk.open(storePath: FilePath(scratch.path("cow")))
    try applyModelledChanges(to: disk, model: &model, count: 20, &generator)
    let bytes = try disk.readBytes(at: 0, count: 1 << 20)
    disk.close()
    return bytes
}

@Test(arguments: StoreSnapshot.Step.allCases)
func snapshotStoppedAfterAStepLeavesTheSameDiskAndARerunFinishes(step: StoreSnapshot.Step)
    throws
{
    let scratch = try Scratch()
    let expected = try storeOverAStore(scratch, seed: 21)
    let cow = FilePath(scratch.path("cow"))
    let layer = FilePath(scratch.path("layer.cow"))
    #expect(throws: StoppedForTest.self) {
        _ = try StoreSnapshot.run(
            storePath: cow, layerPath: layer, createdUnixSeconds: 0,
            afterStep: { if $0 == step { throw StoppedForTest() } })
    }
    do {
        let disk = try VirtualDisk.open(storePath: cow, readOnly: true)
        #expect(try disk.readBytes(at: 0, count: 1 << 20) == expected, "after \(step)")
        disk.close()
    }
    let summary = try StoreSnapshot.run(storePath: cow, layerPath: layer, createdUnixSeconds: 0)
    #expect(summary.alreadyDone == (step == .replaced))
    let disk = try VirtualDisk.open(storePath: cow)
    defer { disk.close() }
    #expect(disk.store.writtenChunkCount == 0)
    #expect(try disk.readBytes(at: 0, count: 1 << 20) == expected)
    #expect(LayerChain.list(topStorePath: cow).map(\.isFrozen) == [false, true, false, false])
}

@Test func aFrozenLayerIsRefusedForWritingAndServedReadOnly() throws {
    let scratch = try Scratch()
    let expected = try storeOverAStore(scratch, seed: 22)
    let cow = FilePath(scratch.path("cow"))
    let layer = FilePath(scratch.path("layer.cow"))
    _ = try StoreSnapshot.run(storePath: cow, layerPath: layer, createdUnixSeconds: 0)
    #expect {
        _ = try VirtualDisk.open(storePath: layer)
    } throws: { error in
        guard case ChainError.frozen(let path) = error else { return false }
        return path == layer
    }
    let frozen = try VirtualDisk.open(storePath: layer, readOnly: true)
    #expect(try frozen.readBytes(at: 0, count: 1 << 20) == expected)
    frozen.close()
    // A snapshot of the frozen layer itself would put a writable store under its name.
    #expect(throws: ChainError.self) {
        _ = try StoreSnapshot.run(
            storePath: layer, layerPath: FilePath(scratch.path("x.cow")), createdUnixSeconds: 0)
    }
}

@Test func snapshotRefusesAnExistingLayerAndChangesNothing() throws {
    let scratch = try Scratch()
    _ = try storeOverAStore(scratch, seed: 23)
    let before = try fileBytes(scratch.path("cow"))
    #expect(throws: StoreError.self) {
        _ = try StoreSnapshot.run(
            storePath: FilePath(scratch.path("cow")),
            layerPath: FilePath(scratch.path("lower.cow")), createdUnixSeconds: 0)
    }
    #expect(try fileBytes(scratch.path("cow")) == before)
}

/// Snapshots by the cowbd binary killed at random instants, then rerun: every time COW opens
/// and reads the same bytes, and the chain ends as one snapshot makes it.
@Test func snapshotKilledAtRandomInstantsThenRerunKeepsTheDisk() throws {
    guard let binary = cowbdBinaryPath() else {
        throw StoppedForTest()  // build cowbd first: swift build --build-tests
    }
    var generator = SplitMix64(seed: 31)
    for trial in 0..<6 {
        let scratch = try Scratch(onDisk: true)
        let expected = try storeOverAStore(scratch, seed: 40 + UInt64(trial))
        let process = Process()
        process.executableURL = URL(fileURLWithPath: binary)
        process.arguments = ["snapshot", scratch.path("cow"), scratch.path("layer.cow")]
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        usleep(useconds_t(generator.next() % 300_000))
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
        let cow = FilePath(scratch.path("cow"))
        let disk = try retryingWhileInUse { try VirtualDisk.open(storePath: cow, readOnly: true) }
        #expect(try disk.readBytes(at: 0, count: 1 << 20) == expected, "trial \(trial)")
        disk.close()
        _ = try retryingWhileInUse {
            try StoreSnapshot.run(
                storePath: cow, layerPath: FilePath(scratch.path("layer.cow")),
                createdUnixSeconds: 0)
        }
        let after = try VirtualDisk.open(storePath: cow)
        #expect(try after.readBytes(at: 0, count: 1 << 20) == expected, "trial \(trial) rerun")
        #expect(after.store.writtenChunkCount == 0)
        after.close()
    }
}

/// The debug or release cowbd next to the test bundle, if built.
func cowbdBinaryPath() -> String? {
    var folder = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
    for _ in 0..<4 {
        let candidate = folder.appendingPathComponent("cowbd").path
        if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
        folder = folder.deletingLastPathComponent()
    }
    return nil
}
