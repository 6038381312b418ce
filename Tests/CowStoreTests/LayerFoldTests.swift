// Folding the layers under a top into one (LayerFold, `cowbd collapse`): random chains checked
// against the model and against the disk before the fold, the layers left byte for byte as
// they were, and every refused fold changing nothing.

import CowFormat
import CowStore
import Foundation
import SystemPackage
import Testing

/// A chain built at random over a raw base: the top's path, the layers under it (top's lower
/// first), the model of the top's disk and the base's bytes.
struct RandomChain {
    var top: String
    var layers: [String]
    var model: DiskModel

    /// `storeCount` stores (the top included), each made by `snapshot` or by moving the top
    /// aside and creating a new one over it (of a random chunk size, maybe larger), with random
    /// changes at every level.
    init(
        in scratch: Scratch, storeCount: Int, seed: UInt64, _ generator: inout SplitMix64
    ) throws {
        let baseBytes = try makeBase(
            at: scratch.path("base.img"), byteCount: 2 << 20 + 333, seed: seed)
        model = DiskModel(base: baseBytes, virtualByteCount: baseBytes.count)
        top = scratch.path("top.cow")
        layers = []
        let chunkSizes: [UInt64] = [4096, 16384, 65536]
        try createLayer(
            at: top, over: scratch.path("base.img"),
            chunkByteCount: chunkSizes[Int(generator.next() % 3)])
        for level in 1...storeCount {
            let disk = try VirtualDisk.open(storePath: FilePath(top))
            try applyModelledChanges(to: disk, model: &model, count: 20, &generator)
            disk.close()
            guard level < storeCount else { break }
            let layer = scratch.path("layer\(level).cow")
            if generator.next() % 2 == 0 {
                _ = try StoreSnapshot.run(
                    storePath: FilePath(top), layerPath: FilePath(layer), createdUnixSeconds: 0)
            } else {
                try FileManager.default.moveItem(atPath: top, toPath: layer)
                let grow = generator.next() % 3 == 0 ? UInt64(generator.next() % 100_000) : 0
                try createLayer(
                    at: top, over: layer, chunkByteCount: chunkSizes[Int(generator.next() % 3)],
                    virtualByteCount: UInt64(model.bytes.count) + grow)
                model.bytes += [UInt8](repeating: 0, count: Int(grow))
                model.trimmed += [Bool](repeating: false, count: Int(grow))
            }
            layers.insert(layer, at: 0)
        }
    }

    /// The top's whole disk, read now.
    func topBytes() throws -> [UInt8] { try Self.bytes(of: top) }

    /// The whole disk of the store at `path`, read now.
    static func bytes(of path: String) throws -> [UInt8] {
        let disk = try VirtualDisk.open(storePath: FilePath(path), readOnly: true)
        defer { disk.close() }
        return try disk.readBytes(at: 0, count: Int(disk.byteCount))
    }
}

/// Every file in `paths`, by path: what must not change.
func fileDigests(_ paths: [String]) throws -> [String: [UInt8]] {
    var digests: [String: [UInt8]] = [:]
    for path in paths { digests[path] = try fileBytes(path) }
    return digests
}

@Test(arguments: [21, 22, 23, 24] as [UInt64])
func foldingRandomLayersKeepsTheTopsDiskAndTheOldLayers(seed: UInt64) throws {
    let scratch = try Scratch()
    var generator = SplitMix64(seed: seed)
    let chain = try RandomChain(
        in: scratch, storeCount: 3 + Int(generator.next() % 5), seed: seed, &generator)
    let before = try chain.topBytes()
    let depth = 2 + Int(generator.next() % UInt64(chain.layers.count - 1))
    let untouched = try fileDigests(chain.layers + [scratch.path("base.img")])
    let fold = try LayerFold(topPath: FilePath(chain.top), depth: depth, outputPath: nil)
    let plan = try fold.plan()
    let summary = try fold.build(createdUnixSeconds: 0)
    fold.close()
    #expect(summary.foldedByteCount == plan.foldedByteCount)
    #expect(
        summary.outputPath
            == FilePath(
                scratch.path(
                    "\(layerStem(chain.layers[0]))+\(layerStem(chain.layers[depth - 1])).cow")))
    #expect(try LayerFold.rebind(topPath: FilePath(chain.top), to: summary.outputPath))
    let after = try chain.topBytes()
    #expect(after == before, "seed \(seed), depth \(depth): the top's disk changed")
    if let mismatch = chain.model.firstMismatch(after, at: 0) {
        Issue.record("seed \(seed), depth \(depth): byte \(mismatch) differs from the model")
    }
    #expect(try fileDigests(chain.layers + [scratch.path("base.img")]) == untouched)
    let listed = LayerChain.list(topStorePath: FilePath(chain.top))
    #expect(listed.count == chain.layers.count + 2 - (depth - 1))
    #expect(listed[1].isFrozen)
    // Bound already: a second rebind writes nothing.
    #expect(try !LayerFold.rebind(topPath: FilePath(chain.top), to: summary.outputPath))
}

private func layerStem(_ path: String) -> String {
    FilePath(path).lastComponent?.stem ?? ""
}

/// base.img <- s1.cow <- s2.cow <- top.cow, every store with changes.
private func threeStoreChain(_ scratch: Scratch) throws -> [String] {
    _ = try makeBase(at: scratch.path("base.img"), byteCount: 1 << 20, seed: 51)
    var generator = SplitMix64(seed: 52)
    var lower = scratch.path("base.img")
    var paths: [String] = []
    for name in ["s1.cow", "s2.cow", "top.cow"] {
        let path = scratch.path(name)
        try createLayer(at: path, over: lower)
        let disk = try VirtualDisk.open(storePath: FilePath(path))
        try applyRandomChanges(to: disk, count: 10, &generator)
        try disk.flush()
        disk.close()
        paths.append(path)
        lower = path
    }
    return paths + [scratch.path("base.img")]
}

/// Requires folding `depth` layers under `top` into `output` to fail with one line naming
/// `name`, and every file of the folder to be unchanged, with no new file.
private func expectFoldRefused(
    _ scratch: Scratch, top: String, depth: Int, output: String? = nil, naming name: String,
    sourceLocation: SourceLocation = #_sourceLocation
) throws {
    let names = try FileManager.default.contentsOfDirectory(atPath: scratch.path(""))
    let digests = try fileDigests(names.map { scratch.path($0) })
    do {
        let fold = try LayerFold(
            topPath: FilePath(top), depth: depth, outputPath: output.map { FilePath($0) })
        defer { fold.close() }
        _ = try fold.build(createdUnixSeconds: 0)
        Issue.record("not refused", sourceLocation: sourceLocation)
    } catch {
        let text = "\(error)"
        #expect(
            text.contains(name) && !text.contains("\n"), "\(text)", sourceLocation: sourceLocation)
    }
    let after = try FileManager.default.contentsOfDirectory(atPath: scratch.path(""))
    #expect(
        after.sorted() == names.sorted(), "files made or removed", sourceLocation: sourceLocation)
    #expect(
        try fileDigests(names.map { scratch.path($0) }) == digests, sourceLocation: sourceLocation)
}

@Test func foldsThatCannotBeMadeAreRefusedWithOneLineAndChangeNothing() throws {
    let scratch = try Scratch()
    let paths = try threeStoreChain(scratch)
    let (s1, top, base) = (paths[0], paths[2], paths[3])
    // Deeper than the chain, and a store right over a raw image.
    try expectFoldRefused(scratch, top: top, depth: 3, naming: top)
    try expectFoldRefused(scratch, top: s1, depth: 2, naming: s1)
    // An output that is a layer of the chain, or any other existing file.
    try expectFoldRefused(scratch, top: top, depth: 2, output: s1, naming: s1)
    try expectFoldRefused(scratch, top: top, depth: 2, output: base, naming: base)
}

@Test func aFoldOverALayerWithAMergeUnderWayIsRefused() throws {
    let scratch = try Scratch()
    let paths = try threeStoreChain(scratch)
    let s1 = paths[0]
    try FileManager.default.copyItem(
        atPath: scratch.path("base.img"), toPath: scratch.path("target.img"))
    var bytes = try fileBytes(s1)
    var header = try Array(bytes[..<4096]).withUnsafeBytes { try StoreHeader(parsing: $0) }
    header.setMerge(
        try MergeRecord(
            flags: 0, targetByteCount: header.virtualByteCount,
            targetFingerprint: BaseFingerprint(low: 1, high: 2),
            targetPath: scratch.path("target.img")))
    bytes.replaceSubrange(0..<4096, with: header.encoded())
    try Data(bytes).write(to: URL(fileURLWithPath: s1))
    try expectFoldRefused(scratch, top: paths[2], depth: 2, naming: s1)
}

@Test func aFoldOfAChainWithACycleIsRefused() throws {
    let scratch = try Scratch()
    let paths = try threeStoreChain(scratch)
    // s2's lower s1 is now s2 itself.
    try FileManager.default.removeItem(atPath: paths[0])
    try FileManager.default.linkItem(atPath: paths[1], toPath: paths[0])
    try expectFoldRefused(scratch, top: paths[2], depth: 2, naming: "s2.cow")
}

/// A chain grown and shortened at random: changes to the top, snapshots, merges of the top
/// into its lower store and collapses of random depth, in any order. After each step the top's
/// disk agrees with the model, and a merge or a collapse leaves it byte for byte as it was.
@Test(arguments: [61, 62, 63, 64] as [UInt64])
func randomSnapshotsMergesAndCollapsesAgreeWithTheModel(seed: UInt64) throws {
    let scratch = try Scratch()
    var generator = SplitMix64(seed: seed)
    let baseBytes = try makeBase(at: scratch.path("base.img"), byteCount: 1 << 20, seed: seed)
    var model = DiskModel(base: baseBytes, virtualByteCount: baseBytes.count)
    let top = scratch.path("top.cow")
    try createLayer(at: top, over: scratch.path("base.img"), chunkByteCount: 16384)
    var steps: [String] = []
    for step in 0..<14 {
        let storesUnderTop = LayerChain.list(topStorePath: FilePath(top)).count - 2
        let before = try RandomChain.bytes(of: top)
        switch generator.next() % 5 {
        case 0, 1:
            steps.append("write")
            let disk = try VirtualDisk.open(storePath: FilePath(top))
            try applyModelledChanges(to: disk, model: &model, count: 12, &generator)
            disk.close()
        case 2 where storesUnderTop < 7:
            steps.append("snapshot")
            _ = try StoreSnapshot.run(
                storePath: FilePath(top), layerPath: FilePath(scratch.path("snap\(step).cow")),
                createdUnixSeconds: 0)
        case 3 where storesUnderTop >= 1:
            steps.append("merge")
            let merge = try StoreMerge(storePath: FilePath(top), destination: .inPlace)
            _ = try merge.run()
            merge.close()
        case 4 where storesUnderTop >= 2:
            let depth = 2 + Int(generator.next() % UInt64(storesUnderTop - 1))
            steps.append("collapse \(depth)")
            let fold = try LayerFold(
                topPath: FilePath(top), depth: depth,
                outputPath: FilePath(scratch.path("fold\(step).cow")))
            let summary = try fold.build(createdUnixSeconds: 0)
            fold.close()
            #expect(try LayerFold.rebind(topPath: FilePath(top), to: summary.outputPath))
            #expect(
                LayerChain.list(topStorePath: FilePath(top)).count - 2
                    == storesUnderTop - (depth - 1))
        default:
            continue
        }
        let after = try RandomChain.bytes(of: top)
        let context = "seed \(seed), steps \(steps)"
        if steps.last != "write" { #expect(after == before, "\(context): the disk changed") }
        if let mismatch = model.firstMismatch(after, at: 0) {
            Issue.record("\(context): byte \(mismatch) differs from the model")
            return
        }
    }
    print("seed \(seed): \(steps.joined(separator: ", "))")
}
