import CowFormat
import CowStore
import Foundation
import SystemPackage
import Testing

@Test func aStoreMadeOverTheRawImageOpensOverItsCompressedTwin() throws {
    let scratch = try Scratch()
    let source = try makeMixedImage(
        at: scratch.path("golden.img"), byteCount: 3 << 20 + 5, seed: 21)
    try createStore(at: scratch.path("vm.cow"), base: scratch.path("golden.img"))
    var model = source
    do {
        let disk = try VirtualDisk.open(storePath: FilePath(scratch.path("vm.cow")))
        let chunkScratch = disk.makeScratch()
        for (offset, count) in [(100, 5000), (1 << 20 + 3, 70000), (3 << 20 - 10, 15)] {
            let bytes = [UInt8](repeating: UInt8(count % 251), count: count)
            try disk.writeBytes(bytes, at: UInt64(offset), scratch: chunkScratch)
            model.replaceSubrange(offset..<(offset + count), with: bytes)
        }
        try disk.flush()
        disk.close()
    }
    // Swap the raw base for its compressed twin under the same name: the store accepts it.
    try compressImage(scratch.path("golden.img"), to: scratch.path("golden.lz4"))
    try FileManager.default.removeItem(atPath: scratch.path("golden.img"))
    try FileManager.default.moveItem(
        atPath: scratch.path("golden.lz4"), toPath: scratch.path("golden.img"))
    let disk = try VirtualDisk.open(storePath: FilePath(scratch.path("vm.cow")))
    #expect(disk.base.kindName == "cowbd-lz4")
    #expect(try disk.readBytes(at: 0, count: model.count) == model)
    // Copy-up of a partial chunk reads the rest of the chunk through the compressed base.
    try disk.writeBytes([9, 9, 9], at: 2 << 20 + 1, scratch: disk.makeScratch())
    model.replaceSubrange((2 << 20 + 1)..<(2 << 20 + 4), with: [9, 9, 9])
    #expect(
        try disk.readBytes(at: 2 << 20 - 4096, count: 3 * 4096)
            == Array(model[(2 << 20 - 4096)..<(2 << 20 + 8192)]))
    disk.close()
}

@Test func aStoreCanBeCreatedOverACompressedBase() throws {
    let scratch = try Scratch()
    let source = try makeMixedImage(at: scratch.path("raw"), byteCount: 1 << 20, seed: 22)
    try compressImage(scratch.path("raw"), to: scratch.path("golden.lz4"))
    let base = try BaseLocator.openImage(at: FilePath(scratch.path("golden.lz4")), options: .quiet)
    #expect(base.kindName == "cowbd-lz4")
    try StoreFile.create(
        at: FilePath(scratch.path("vm.cow")), base: base, basePathGiven: scratch.path("golden.lz4"),
        options: .init(geometry: try ChunkGeometry(chunkByteCount: 4096), createdUnixSeconds: 0))
    let disk = try VirtualDisk.open(storePath: FilePath(scratch.path("vm.cow")), readOnly: true)
    #expect(try disk.readBytes(at: 0, count: source.count) == source)
    let extents = try disk.extents(at: 0, byteCount: 1 << 20, maxExtentCount: 1000)
    #expect(extents.reduce(0) { $0 + $1.byteCount } == 1 << 20)
    disk.close()
}

@Test func compressingAStoreFlattensItsVirtualDisk() throws {
    let scratch = try Scratch()
    let source = try makeMixedImage(at: scratch.path("base"), byteCount: 2 << 20, seed: 23)
    try createStore(
        at: scratch.path("vm.cow"), base: scratch.path("base"), virtualByteCount: 3 << 20)
    var model = source + [UInt8](repeating: 0, count: 1 << 20)
    do {
        let disk = try VirtualDisk.open(storePath: FilePath(scratch.path("vm.cow")))
        let bytes = (0..<300_000).map { UInt8(truncatingIfNeeded: $0 * 7) }
        try disk.writeBytes(bytes, at: 1_900_000, scratch: disk.makeScratch())
        model.replaceSubrange(1_900_000..<2_200_000, with: bytes)
        try disk.flush()
        disk.close()
    }
    try compressImage(scratch.path("vm.cow"), to: scratch.path("flat.lz4"), level: .high)
    let image = try openCompressed(scratch.path("flat.lz4"))
    #expect(image.byteCount == 3 << 20)
    #expect(try image.readBytes(at: 0, count: model.count) == model)
    let storeImage = try VirtualDiskImage(
        storePath: FilePath(scratch.path("vm.cow")), options: .quiet)
    #expect(try image.fingerprint() == storeImage.fingerprint())
    storeImage.disk.close()
}

@Test func anExistingDestinationIsRefusedUnlessReplacing() throws {
    let scratch = try Scratch()
    let source = try makeMixedImage(at: scratch.path("raw"), byteCount: 300_000, seed: 24)
    try Data("precious".utf8).write(to: URL(fileURLWithPath: scratch.path("dst")))
    #expect {
        try compressImage(scratch.path("raw"), to: scratch.path("dst"))
    } throws: {
        if case .exists = $0 as? StoreError { return true }
        return false
    }
    #expect(try fileBytes(scratch.path("dst")) == Array("precious".utf8))
    try compressImage(scratch.path("raw"), to: scratch.path("dst"), replacesExisting: true)
    #expect(try openCompressed(scratch.path("dst")).readBytes(at: 0, count: source.count) == source)
}

@Test func aFailedCompressionLeavesNothingBehind() throws {
    let scratch = try Scratch()
    let failing = FailingImage(byteCount: 8 << 20, failingByteOffset: 5 << 20)
    #expect(throws: StoreError.self) {
        try ImageCompressor.compress(
            failing, to: FilePath(scratch.path("dst")),
            options: .init(
                geometry: try LZ4BlockGeometry(blockByteCount: 65536), level: .fast,
                threadCount: 4, replacesExisting: false))
    }
    #expect(try FileManager.default.contentsOfDirectory(atPath: scratch.url.path) == [])
}

@Test func compressionIsDeterministicWhateverTheThreadCount() throws {
    let scratch = try Scratch()
    _ = try makeMixedImage(at: scratch.path("raw"), byteCount: 5 << 20 + 1, seed: 25)
    try compressImage(scratch.path("raw"), to: scratch.path("one"), threadCount: 1)
    try compressImage(scratch.path("raw"), to: scratch.path("many"), threadCount: 8)
    #expect(try fileBytes(scratch.path("one")) == fileBytes(scratch.path("many")))
    let image = try openCompressed(scratch.path("many"))
    #expect(image.verify().isIntact)
}
