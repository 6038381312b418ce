// `merge --in-place` when the store's lower layer is a store (qemu-img commit): random chains
// checked against the model, the lower (frozen or not) taking the top's chunks, and every
// refusal (another upper holding the lower, a lower with a merge, a grown top) changing nothing.

import CowFormat
import CowStore
import Foundation
import SystemPackage
import Testing

@Test(arguments: [31, 32, 33, 34] as [UInt64])
func anInPlaceMergeIntoALowerStoreKeepsTheTopsDisk(seed: UInt64) throws {
    let scratch = try Scratch()
    var generator = SplitMix64(seed: seed)
    let chain = try RandomChain(
        in: scratch, storeCount: 2 + Int(generator.next() % 4), seed: seed, &generator)
    let lower = chain.layers[0]
    let lowerHeaderBefore = try StoreFile(path: FilePath(lower), access: .unlockedRead).header
    let before = try chain.topBytes()
    let below = Array(chain.layers.dropFirst()) + [scratch.path("base.img")]
    let untouched = try fileDigests(below)
    let summary = try mergeInPlace(chain.top)
    #expect(!summary.alreadyDone)
    let after = try chain.topBytes()
    #expect(after == before, "seed \(seed): the top's disk changed")
    if let mismatch = chain.model.firstMismatch(after, at: 0) {
        Issue.record("seed \(seed): byte \(mismatch) differs from the model")
    }
    let top = try StoreFile(path: FilePath(chain.top), access: .unlockedRead)
    #expect(top.writtenChunkCount == 0)
    let lowerHeader = try StoreFile(path: FilePath(lower), access: .unlockedRead).header
    #expect(
        lowerHeader.isFrozen == lowerHeaderBefore.isFrozen, "the lower stays as frozen as it was")
    // The lower's own disk is now the top's.
    let lowerDisk = try VirtualDisk.open(storePath: FilePath(lower), readOnly: true)
    #expect(try lowerDisk.readBytes(at: 0, count: Int(lowerDisk.byteCount)) == before)
    lowerDisk.close()
    #expect(try fileDigests(below) == untouched)
}

/// Runs `merge --in-place` on the store at `path`; its files are closed on return.
private func mergeInPlace(_ path: String) throws -> StoreMerge.Summary {
    let merge = try StoreMerge(storePath: FilePath(path), destination: .inPlace)
    defer { merge.close() }
    return try merge.run()
}

/// base.img <- lower.cow (64 KiB chunks) <- top.cow (4 KiB chunks), both with changes.
private func twoStoreChain(_ scratch: Scratch) throws -> (top: String, lower: String) {
    _ = try makeBase(at: scratch.path("base.img"), byteCount: 1 << 20, seed: 41)
    let lower = scratch.path("lower.cow")
    let top = scratch.path("top.cow")
    try createLayer(at: lower, over: scratch.path("base.img"), chunkByteCount: 65536)
    var generator = SplitMix64(seed: 42)
    for path in [lower, top] {
        if path == top { try createLayer(at: top, over: lower) }
        let disk = try VirtualDisk.open(storePath: FilePath(path))
        try applyRandomChanges(to: disk, count: 20, &generator)
        try disk.flush()
        disk.close()
    }
    return (top, lower)
}

/// Requires `body` to throw one line that names `path`, and every file in `paths` unchanged.
private func expectRefusal(
    naming path: String, unchanged paths: [String], _ body: () throws -> Void,
    sourceLocation: SourceLocation = #_sourceLocation
) throws {
    let digests = try fileDigests(paths)
    do {
        try body()
        Issue.record("not refused", sourceLocation: sourceLocation)
    } catch {
        let text = "\(error)"
        #expect(text.contains(path), "\(text)", sourceLocation: sourceLocation)
        #expect(!text.contains("\n"), "\(text)", sourceLocation: sourceLocation)
    }
    #expect(try fileDigests(paths) == digests, "a file changed", sourceLocation: sourceLocation)
}

@Test func anInPlaceMergeIsRefusedWhileAnotherUpperHoldsTheLowerOpen() throws {
    let scratch = try Scratch()
    let (top, lower) = try twoStoreChain(scratch)
    try createLayer(at: scratch.path("other.cow"), over: lower)
    do {
        let other = try VirtualDisk.open(storePath: FilePath(scratch.path("other.cow")))
        try expectRefusal(naming: lower, unchanged: [top, lower]) {
            _ = try mergeInPlace(top)
        }
        withExtendedLifetime(other) {}
    }
    // Closed, the other upper no longer holds it: the merge goes ahead, and the other upper,
    // made over the old lower, is then refused by its fingerprint binding (as qemu's would be).
    _ = try mergeInPlace(top)
    #expect(throws: StoreError.self) {
        try VirtualDisk.open(storePath: FilePath(scratch.path("other.cow")))
    }
}

@Test func anInPlaceMergeIntoALowerWithAMergeUnderWayIsRefused() throws {
    let scratch = try Scratch()
    let (top, lower) = try twoStoreChain(scratch)
    // lower.cow as a merge into target.img interrupted after its record left it.
    try FileManager.default.copyItem(
        atPath: scratch.path("base.img"), toPath: scratch.path("target.img"))
    var bytes = try fileBytes(lower)
    var header = try Array(bytes[..<4096]).withUnsafeBytes { try StoreHeader(parsing: $0) }
    header.setMerge(
        try MergeRecord(
            flags: 0, targetByteCount: header.virtualByteCount,
            targetFingerprint: BaseFingerprint(low: 1, high: 2),
            targetPath: scratch.path("target.img")))
    bytes.replaceSubrange(0..<4096, with: header.encoded())
    try Data(bytes).write(to: URL(fileURLWithPath: lower))
    try expectRefusal(naming: lower, unchanged: [top, lower]) {
        _ = try StoreMerge(storePath: FilePath(top), destination: .inPlace).run()
    }
}

@Test func anInPlaceMergeOfATopGrownPastItsLowerStoreIsRefused() throws {
    let scratch = try Scratch()
    _ = try makeBase(at: scratch.path("base.img"), byteCount: 1 << 20, seed: 43)
    try createLayer(at: scratch.path("lower.cow"), over: scratch.path("base.img"))
    try createLayer(
        at: scratch.path("top.cow"), over: scratch.path("lower.cow"),
        virtualByteCount: 2 << 20)
    try expectRefusal(
        naming: scratch.path("top.cow"),
        unchanged: [scratch.path("top.cow"), scratch.path("lower.cow")]
    ) {
        _ = try StoreMerge(storePath: FilePath(scratch.path("top.cow")), destination: .inPlace)
            .run()
    }
}

/// An interrupted merge into a lower store (its record written, part of the chunks copied in)
/// is finished by a rerun, or taken back with --abort --force; either way the top's disk is
/// the same.
@Test(arguments: [false, true])
func anInterruptedMergeIntoALowerStoreIsFinishedOrTakenBack(abort: Bool) throws {
    let scratch = try Scratch()
    let (top, lower) = try twoStoreChain(scratch)
    let before = try RandomChain.bytes(of: top)
    // Record the merge as the first step would, then copy half the chunks by hand.
    var bytes = try fileBytes(top)
    var header = try Array(bytes[..<4096]).withUnsafeBytes { try StoreHeader(parsing: $0) }
    let fingerprint = try VirtualDisk.open(storePath: FilePath(top), readOnly: true).fingerprint()
    header.setMerge(
        try MergeRecord(
            flags: MergeRecord.inPlaceFlag, targetByteCount: header.virtualByteCount,
            targetFingerprint: fingerprint, targetPath: lower))
    bytes.replaceSubrange(0..<4096, with: header.encoded())
    try Data(bytes).write(to: URL(fileURLWithPath: top))
    do {
        let lowerDisk = try VirtualDisk.open(storePath: FilePath(lower))
        try lowerDisk.writeBytes(
            Array(before[..<(1 << 19)]), at: 0, scratch: lowerDisk.makeScratch())
        try lowerDisk.flush()
        lowerDisk.close()
    }
    #expect(throws: StoreError.self) { try VirtualDisk.open(storePath: FilePath(top)) }
    if abort {
        _ = try StoreMerge.abort(storePath: FilePath(top), force: true)
    } else {
        let summary = try mergeInPlace(top)
        #expect(summary.resumed)
    }
    #expect(try RandomChain.bytes(of: top) == before)
}
