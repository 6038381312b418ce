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
