// Chains of stores (a store over a store) checked against an in-memory model, and every way
// a chain is refused: a cycle, a missing or changed lower, too deep, a lower with a merge.

import CowFormat
import CowStore
import Foundation
import Synchronization
import SystemPackage
import Testing

/// Creates a store at `path` over whatever is at `lower` (raw, compressed or a store).
func createLayer(
    at path: String, over lower: String, chunkByteCount: UInt64 = 4096,
    virtualByteCount: UInt64? = nil
) throws {
    let image = try BaseLocator.openImage(at: FilePath(lower), options: .quiet)
    try LayerChain.checkRoom(over: image, newStorePath: FilePath(path))
    try StoreFile.create(
        at: FilePath(path), base: image, basePathGiven: lower,
        options: .init(
            geometry: try ChunkGeometry(chunkByteCount: chunkByteCount),
            virtualByteCount: virtualByteCount, createdUnixSeconds: 0))
}

/// Random writes, zeroes and trims on `disk`, mirrored in `model`.
func applyModelledChanges(
    to disk: VirtualDisk, model: inout DiskModel, count: Int, _ generator: inout SplitMix64
) throws {
    let scratch = disk.makeScratch()
    let size = Int(disk.byteCount)
    for _ in 0..<count {
        let offset = Int(generator.next() % UInt64(size))
        let length = min(size - offset, 1 + Int(generator.next() % 150_000))
        let range = offset..<(offset + length)
        switch generator.next() % 5 {
        case 0:
            try disk.trim(at: UInt64(offset), byteCount: UInt64(length))
            model.trimmed.replaceSubrange(range, with: repeatElement(true, count: length))
        case 1:
            try disk.writeZeroes(
                at: UInt64(offset), byteCount: UInt64(length),
                mayPunch: generator.next() % 2 == 0, scratch: scratch)
            model.bytes.replaceSubrange(range, with: repeatElement(0, count: length))
            model.trimmed.replaceSubrange(range, with: repeatElement(false, count: length))
        default:
            let data = randomBytes(length, &generator)
            try disk.writeBytes(data, at: UInt64(offset), scratch: scratch)
            model.bytes.replaceSubrange(range, with: data)
            model.trimmed.replaceSubrange(range, with: repeatElement(false, count: length))
        }
    }
    try disk.flush()
}

/// Builds a chain of random depth (1 to 8 stores) by `create` and `snapshot` over a raw base,
/// with random changes at every level, and compares the top's disk with the model after each
/// level and after reopening; every frozen layer and the base stay as they were.
@Test(arguments: [11, 12, 13, 14, 15, 16] as [UInt64])
func randomChainsAgreeWithTheModel(seed: UInt64) throws {
    let scratch = try Scratch()
    var generator = SplitMix64(seed: seed)
    let baseBytes = try makeBase(at: scratch.path("base.img"), byteCount: 2 << 20 + 333, seed: seed)
    let basePath = scratch.path("base.img")
    var model = DiskModel(base: baseBytes, virtualByteCount: baseBytes.count)
    let top = scratch.path("top.cow")
    let chunkSizes: [UInt64] = [4096, 16384, 65536]
    try createLayer(
        at: top, over: basePath, chunkByteCount: chunkSizes[Int(generator.next() % 3)])
    let depth = 1 + Int(generator.next() % 8)
    var frozen: [(path: String, bytes: [UInt8])] = []
    for level in 1...depth {
        let context = "seed \(seed), level \(level) of \(depth)"
        let disk = try VirtualDisk.open(storePath: FilePath(top))
        try applyModelledChanges(to: disk, model: &model, count: 40, &generator)
        let whole = try disk.readBytes(at: 0, count: Int(disk.byteCount))
        if let mismatch = model.firstMismatch(whole, at: 0) {
            Issue.record("\(context): byte \(mismatch) differs from the model")
            return
        }
        disk.close()
        guard level < depth else { break }
        let layer = scratch.path("layer\(level).cow")
        if generator.next() % 2 == 0 {
            _ = try StoreSnapshot.run(
                storePath: FilePath(top), layerPath: FilePath(layer), createdUnixSeconds: 0)
        } else {
            // The same by hand: the top becomes a lower, a new top goes over it (maybe larger).
            try FileManager.default.moveItem(atPath: top, toPath: layer)
            let grow = generator.next() % 3 == 0 ? UInt64(generator.next() % 100_000) : 0
            let lowerSize = UInt64(model.bytes.count)
            try createLayer(
                at: top, over: layer, chunkByteCount: chunkSizes[Int(generator.next() % 3)],
                virtualByteCount: lowerSize + grow)
            model.bytes += [UInt8](repeating: 0, count: Int(grow))
            model.trimmed += [Bool](repeating: false, count: Int(grow))
        }
        frozen.append((layer, (try fileBytes(layer))))
    }
    let disk = try VirtualDisk.open(storePath: FilePath(top), readOnly: true)
    defer { disk.close() }
    let whole = try disk.readBytes(at: 0, count: Int(disk.byteCount))
    if let mismatch = model.firstMismatch(whole, at: 0) {
        Issue.record("seed \(seed): after reopen, byte \(mismatch) differs from the model")
    }
    #expect(LayerChain.list(topStorePath: FilePath(top)).count == depth + 1)
    for layer in frozen {
        #expect((try fileBytes(layer.path)) == layer.bytes, "\(layer.path) changed")
    }
    #expect(try fileBytes(basePath) == baseBytes)
}

/// Two uppers over one lower, written by two threads at once, each reading back its own
/// writes; the lower's file stays byte for byte the same.
@Test func twoUppersOverOneLowerWriteConcurrentlyAndLeaveTheLowerUnchanged() throws {
    let scratch = try Scratch()
    _ = try makeBase(at: scratch.path("base.img"), byteCount: 1 << 20, seed: 5)
    try createLayer(at: scratch.path("lower.cow"), over: scratch.path("base.img"))
    do {
        let lower = try VirtualDisk.open(storePath: FilePath(scratch.path("lower.cow")))
        var generator = SplitMix64(seed: 6)
        try applyRandomChanges(to: lower, count: 50, &generator)
        try lower.flush()
        lower.close()
    }
    let lowerDigest = (try fileBytes(scratch.path("lower.cow")))
    let lowerDisk = try VirtualDisk.open(
        storePath: FilePath(scratch.path("lower.cow")), readOnly: true)
    let lowerBytes = try lowerDisk.readBytes(at: 0, count: 1 << 20)
    lowerDisk.close()
    for name in ["a.cow", "b.cow"] {
        try createLayer(at: scratch.path(name), over: scratch.path("lower.cow"))
    }
    let disks = try ["a.cow", "b.cow"].map {
        try VirtualDisk.open(storePath: FilePath(scratch.path($0)))
    }
    // While the uppers are open, the lower cannot be opened to write (their shared locks).
    #expect(throws: StoreError.self) {
        try VirtualDisk.open(storePath: FilePath(scratch.path("lower.cow")))
    }
    let failures = Mutex<[String]>([])
    DispatchQueue.concurrentPerform(iterations: 2) { index in
        do {
            var model = DiskModel(base: lowerBytes, virtualByteCount: 1 << 20)
            var generator = SplitMix64(seed: 100 + UInt64(index))
            try applyModelledChanges(to: disks[index], model: &model, count: 60, &generator)
            let whole = try disks[index].readBytes(at: 0, count: 1 << 20)
            if let mismatch = model.firstMismatch(whole, at: 0) {
                failures.withLock { $0.append("upper \(index): byte \(mismatch) differs") }
            }
        } catch {
            failures.withLock { $0.append("upper \(index): \(error)") }
        }
    }
    for disk in disks { disk.close() }
    #expect(failures.withLock { $0 } == [])
    #expect((try fileBytes(scratch.path("lower.cow"))) == lowerDigest)
}

@Test func aLayerThatIsItsOwnLowerIsRefusedAsACycle() throws {
    let scratch = try Scratch()
    _ = try makeBase(at: scratch.path("base.img"), byteCount: 1 << 20, seed: 1)
    try createLayer(at: scratch.path("a.cow"), over: scratch.path("base.img"))
    try createLayer(at: scratch.path("b.cow"), over: scratch.path("a.cow"))
    // b's lower is now b itself.
    try FileManager.default.removeItem(atPath: scratch.path("a.cow"))
    try FileManager.default.linkItem(atPath: scratch.path("b.cow"), toPath: scratch.path("a.cow"))
    #expect(throws: ChainError.self) {
        try VirtualDisk.open(storePath: FilePath(scratch.path("b.cow")), readOnly: true)
    }
    do {
        _ = try VirtualDisk.open(storePath: FilePath(scratch.path("b.cow")))
    } catch let error as ChainError {
        guard case .cycle = error else { throw error }
        #expect("\(error)".contains("b.cow") && "\(error)".contains("cycle"))
    }
}

@Test func aCycleFurtherDownIsRefused() throws {
    let scratch = try Scratch()
    _ = try makeBase(at: scratch.path("base.img"), byteCount: 1 << 20, seed: 1)
    try createLayer(at: scratch.path("c.cow"), over: scratch.path("base.img"))
    try createLayer(at: scratch.path("b.cow"), over: scratch.path("c.cow"))
    try createLayer(at: scratch.path("a.cow"), over: scratch.path("b.cow"))
    // c becomes a second name of a: a -> b -> c (= a) -> b ...
    try FileManager.default.removeItem(atPath: scratch.path("c.cow"))
    try FileManager.default.linkItem(atPath: scratch.path("a.cow"), toPath: scratch.path("c.cow"))
    #expect {
        _ = try VirtualDisk.open(storePath: FilePath(scratch.path("a.cow")), readOnly: true)
    } throws: { error in
        guard case ChainError.cycle = error else { return false }
        return true
    }
}

@Test func aSixtyFifthStoreIsRefusedAtCreateAndSixtyFourOpen() throws {
    let scratch = try Scratch()
    _ = try makeBase(at: scratch.path("base.img"), byteCount: 64 << 10, seed: 2)
    var lower = scratch.path("base.img")
    for index in 1...LayerChain.maxStoreCount {
        let path = scratch.path("s\(index).cow")
        try createLayer(at: path, over: lower)
        lower = path
    }
    let top = try VirtualDisk.open(storePath: FilePath(lower), readOnly: true)
    #expect(
        try top.readBytes(at: 0, count: 4096)
            == Array(try fileBytes(scratch.path("base.img"))[..<4096]))
    top.close()
    #expect {
        try createLayer(at: scratch.path("s65.cow"), over: lower)
    } throws: { error in
        guard case ChainError.tooDeep(let store, 65) = error else { return false }
        return store.string.hasSuffix("s65.cow")
    }
    #expect(!FileManager.default.fileExists(atPath: scratch.path("s65.cow")))
}

@Test func aMissingLowerIsRefusedNamingTheLayerThatNeedsIt() throws {
    let scratch = try Scratch()
    _ = try makeBase(at: scratch.path("base.img"), byteCount: 1 << 20, seed: 3)
    try createLayer(at: scratch.path("lower.cow"), over: scratch.path("base.img"))
    try createLayer(at: scratch.path("top.cow"), over: scratch.path("lower.cow"))
    try FileManager.default.removeItem(atPath: scratch.path("base.img"))
    #expect {
        _ = try VirtualDisk.open(storePath: FilePath(scratch.path("top.cow")))
    } throws: { error in
        guard case StoreError.baseMissing(let path, _) = error else { return false }
        return path.string.hasSuffix("lower.cow")
    }
}

@Test func aLowerChangedOfflineIsRefusedAndNothingChanges() throws {
    let scratch = try Scratch()
    _ = try makeBase(at: scratch.path("base.img"), byteCount: 1 << 20, seed: 4)
    try createLayer(at: scratch.path("lower.cow"), over: scratch.path("base.img"))
    try createLayer(at: scratch.path("top.cow"), over: scratch.path("lower.cow"))
    let topBefore = try fileBytes(scratch.path("top.cow"))
    let lower = try VirtualDisk.open(storePath: FilePath(scratch.path("lower.cow")))
    try lower.writeBytes([1, 2, 3], at: 500_000, scratch: lower.makeScratch())
    try lower.flush()
    lower.close()
    #expect {
        _ = try VirtualDisk.open(storePath: FilePath(scratch.path("top.cow")))
    } throws: { error in
        guard case StoreError.baseMismatch(let path, let base, _) = error else { return false }
        return path.string.hasSuffix("top.cow") && base.string.hasSuffix("lower.cow")
    }
    #expect(try fileBytes(scratch.path("top.cow")) == topBefore)
}

@Test func aLowerOfAnotherChunkSizeReadsThroughAtAnyAlignment() throws {
    let scratch = try Scratch()
    let base = try makeBase(at: scratch.path("base.img"), byteCount: 1 << 20, seed: 7)
    try createLayer(
        at: scratch.path("lower.cow"), over: scratch.path("base.img"), chunkByteCount: 65536)
    var model = DiskModel(base: base, virtualByteCount: 1 << 20)
    var generator = SplitMix64(seed: 8)
    let lower = try VirtualDisk.open(storePath: FilePath(scratch.path("lower.cow")))
    try applyModelledChanges(to: lower, model: &model, count: 30, &generator)
    lower.close()
    try createLayer(
        at: scratch.path("top.cow"), over: scratch.path("lower.cow"), chunkByteCount: 4096)
    let top = try VirtualDisk.open(storePath: FilePath(scratch.path("top.cow")))
    defer { top.close() }
    try applyModelledChanges(to: top, model: &model, count: 30, &generator)
    #expect(model.firstMismatch(try top.readBytes(at: 0, count: 1 << 20), at: 0) == nil)
}

@Test func aLowerWithAMergeUnderWayIsRefused() throws {
    let scratch = try Scratch()
    _ = try makeBase(at: scratch.path("base.img"), byteCount: 1 << 20, seed: 9)
    try createLayer(at: scratch.path("lower.cow"), over: scratch.path("base.img"))
    try createLayer(at: scratch.path("top.cow"), over: scratch.path("lower.cow"))
    // Mark a merge under way in the lower's header, as an interrupted merge leaves it.
    let store = try StoreFile(path: FilePath(scratch.path("lower.cow")), access: .unlockedRead)
    var header = store.header
    store.close()
    header.setMerge(
        try MergeRecord(
            flags: 0, targetByteCount: header.virtualByteCount,
            targetFingerprint: header.baseFingerprint, targetPath: "/nowhere.img"))
    let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: scratch.path("lower.cow")))
    try handle.write(contentsOf: Data(header.encoded()))
    try handle.close()
    #expect {
        _ = try VirtualDisk.open(storePath: FilePath(scratch.path("top.cow")))
    } throws: { error in
        guard case StoreError.mergeInProgress(let path, _) = error else { return false }
        return path.string.hasSuffix("lower.cow")
    }
}

/// The depth of each layer's chunks, as NBD's qemu:allocation-depth reports it.
@Test func extentsReportTheDepthOfTheLayerThatHoldsEachRange() throws {
    let scratch = try Scratch()
    _ = try makeBase(at: scratch.path("base.img"), byteCount: 1 << 20, seed: 10)
    try createLayer(at: scratch.path("l2.cow"), over: scratch.path("base.img"))
    let write: (String, UInt64) throws -> Void = { name, offset in
        let disk = try VirtualDisk.open(storePath: FilePath(scratch.path(name)))
        try disk.writeBytes(
            [UInt8](repeating: 7, count: 4096), at: offset, scratch: disk.makeScratch())
        try disk.flush()
        disk.close()
    }
    try write("l2.cow", 8192)
    try createLayer(at: scratch.path("top.cow"), over: scratch.path("l2.cow"))
    try write("top.cow", 0)
    let disk = try VirtualDisk.open(storePath: FilePath(scratch.path("top.cow")), readOnly: true)
    defer { disk.close() }
    let extents = try disk.extents(at: 0, byteCount: 16384, maxExtentCount: 8)
    #expect(extents.map(\.depth) == [1, 3, 2, 3])
    #expect(extents.map(\.byteCount) == [4096, 4096, 4096, 4096])
}

/// Reads at random offsets and lengths through a chain up to 12 stores deep (chunk sizes mixed,
/// disks grown on the way up, trims leaving holes) agree with the model, by each path a read
/// can take: the top's disk, its lower layer as a block source (which finds each chunk's layer
/// from the index built at open), the same only from memory, and the lower's own disk (which
/// asks each layer in turn).
@Test(arguments: [41, 42, 43, 44] as [UInt64])
func readsAtAnyOffsetThroughADeepChainAgreeWithTheModel(seed: UInt64) throws {
    let scratch = try Scratch()
    var generator = SplitMix64(seed: seed)
    let baseBytes = try makeBase(at: scratch.path("base.img"), byteCount: 1 << 20 + 777, seed: seed)
    var model = DiskModel(base: baseBytes, virtualByteCount: baseBytes.count)
    var lower = scratch.path("base.img")
    let chunkSizes: [UInt64] = [4096, 16384, 65536]
    let depth = 4 + Int(generator.next() % 9)
    for level in 1...depth {
        let path = scratch.path("l\(level).cow")
        let grow = generator.next() % 3 == 0 ? Int(generator.next() % 50_000) : 0
        try createLayer(
            at: path, over: lower, chunkByteCount: chunkSizes[Int(generator.next() % 3)],
            virtualByteCount: UInt64(model.bytes.count + grow))
        model.bytes += [UInt8](repeating: 0, count: grow)
        model.trimmed += [Bool](repeating: false, count: grow)
        if level < depth {
            let disk = try VirtualDisk.open(storePath: FilePath(path))
            try applyModelledChanges(to: disk, model: &model, count: 12, &generator)
            disk.close()
        }
        lower = path
    }
    let top = try VirtualDisk.open(storePath: FilePath(lower), readOnly: true)
    defer { top.close() }
    let chain = try #require(top.base as? VirtualDiskImage)
    let lowerByteCount = Int(chain.byteCount)
    for trial in 0..<300 {
        let offset = Int(generator.next() % UInt64(lowerByteCount))
        let count = min(lowerByteCount - offset, 1 + Int(generator.next() % 200_000))
        let context = "seed \(seed), depth \(depth), trial \(trial): \(count) bytes at \(offset)"
        let throughTop = try top.readBytes(at: UInt64(offset), count: count)
        #expect(model.firstMismatch(throughTop, at: offset) == nil, "top: \(context)")
        var indexed = [UInt8](repeating: 0xEE, count: count)
        try indexed.withUnsafeMutableBytes { try chain.read(at: UInt64(offset), into: $0) }
        #expect(indexed == throughTop, "the chain as a source: \(context)")
        #expect(
            try chain.disk.readBytes(at: UInt64(offset), count: count) == throughTop,
            "the lower's own disk: \(context)")
        var cached = [UInt8](repeating: 0xEE, count: count)
        if cached.withUnsafeMutableBytes({ chain.readIfReady(at: UInt64(offset), into: $0) }) {
            #expect(cached == throughTop, "from memory: \(context)")
        }
    }
    // Past the lower's end, the top reads zeros (its own grown tail).
    let tail = Int(top.byteCount) - lowerByteCount
    if tail > 0 {
        #expect(
            try top.readBytes(at: UInt64(lowerByteCount), count: tail)
                == [UInt8](repeating: 0, count: tail))
    }
}
